"""The bit-identical guarantee over the lensed-quasar products: lens candidates, scene models and per-visit
scene photometry (lenses/, lensphot/) are the same at 2 and 3 ranks, and after a rank is SIGKILLed in each
of the three lens stages and the run resumed. A small field of two bands over four years with a boosted
density of lensed quasars; the finder's cuts are opened so that every DiaObject group is a candidate and
the scene stages have work."""
import h5py
import pytest
from conftest import MPIEXEC, campaign_run
from test_level2_restart import level2_digests, run_killed_then_resumed

pytestmark = pytest.mark.skipif(MPIEXEC is None, reason="mpiexec not found")

#: the campaign's products: the Level 2 and difference-imaging ones it makes, and the lens stages'
LENS_PRODUCTS = ("calexp", "coadd", "objects", "template", "diffim", "associate", "lenses", "lensphot")

LENS_TOML = """
[run]
seed = 11
[cadence]
bands = "gr"
max_visits = 8
[sky]
radius = 0.1
galaxy_mag_limit = 25.0
star_density_scale = 4.0
[supernovae]
enabled = false
[lensing]
density = 3000.0
[sensor]
nx = 1000
ny = 1000
[calexp]
enabled = true
[coadd]
enabled = true
patch_size = 1000
[objects]
enabled = true
[template]
enabled = true
min_visits = 2
[diffim]
enabled = true
[associate]
enabled = true
[lenses]
enabled = true
min_episodes = 1
min_sign_bands = 1
min_score = 0.0
[lensmodel]
enabled = true
[lensphot]
enabled = true
"""


@pytest.fixture(scope="module")
def lens_run(tmp_path_factory):
    return campaign_run(tmp_path_factory, "lens-n2", LENS_TOML, mpi=2, timeout=600)


def test_lens_products_identical_at_two_and_three_ranks(lens_run, tmp_path_factory):
    with h5py.File(lens_run / "lenses" / "scenes.h5", "r") as fh:
        n_scenes, n_images = len(fh["systems"]), len(fh["images"])
    with h5py.File(lens_run / "lenses" / "candidates.h5", "r") as fh:
        n_candidates = len(fh["candidates"])
    n_rows = 0
    for path in (lens_run / "lensphot").glob("*.h5"):
        with h5py.File(path, "r") as fh:
            n_rows += len(fh["lensed_image_forced_source"])
    assert n_candidates >= 2 and n_scenes >= 2 and n_images >= 2 and n_rows >= 8 * n_images
    other = campaign_run(tmp_path_factory, "lens-n3", LENS_TOML, mpi=3, timeout=600)
    a, b = level2_digests(lens_run, LENS_PRODUCTS), level2_digests(other, LENS_PRODUCTS)
    assert set(a) == set(b) and {k.split("/")[0] for k in a} == set(LENS_PRODUCTS)
    assert [k for k in a if a[k] != b[k]] == []


def test_sigkill_in_each_lens_stage_then_resume_is_bit_identical(lens_run, tmp_path):
    """A rank is SIGKILLed right after the first task of lenses, lensmodel and lensphot has written its
    outputs (the journal has not recorded them); each rerun resumes, the last completes."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(LENS_TOML)
    run = tmp_path / "run"
    run_killed_then_resumed(cfg, run, ["lenses", "lensmodel", "lensphot/"])
    want, got = level2_digests(lens_run, LENS_PRODUCTS), level2_digests(run, LENS_PRODUCTS)
    assert set(got) == set(want)
    assert [k for k in want if want[k] != got[k]] == []
