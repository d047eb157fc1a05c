import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# One BLAS/OpenMP thread, as the twinkles-hpc executable sets (cli.py), before numpy loads: stages run in
# this process then give the bytes a run gives.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("TWINKLES_SHARED_DATA", ROOT.parent / "shared" / "data"))
BIN = Path(sys.executable).parent
MPIEXEC = shutil.which("mpiexec", path=str(BIN)) or shutil.which("mpiexec")

#: A campaign small enough for tests: 256 x 256 pixels, 12 visits, a 0.03 deg sky to r = 26, with
#: supernovae and (at a boosted density) lensed quasars.
TINY_TOML = """
[run]
name = "tiny"
seed = 7
[cadence]
max_visits = 12
[sky]
radius = 0.03
galaxy_mag_limit = 26.0
star_mag_limit = 25.0
[lensing]
density = 20000.0
[sensor]
nx = 256
ny = 256
[visit]
chunk_objects = 16
checkpoint_interval = 0.0
"""


@pytest.fixture
def tiny_config(tmp_path):
    p = tmp_path / "tiny.toml"
    p.write_text(TINY_TOML)
    return p


def shared_file(name):
    p = SHARED_DATA / name
    if not p.exists():
        pytest.skip(f"shared data {p} not present (set TWINKLES_SHARED_DATA)")
    return p


def cli(*args, mpi=0, env=None, timeout=600, check=False):
    """Run the twinkles-hpc executable (under mpiexec -n MPI when mpi > 0); returns CompletedProcess."""
    cmd = [sys.executable, "-m", "twinkles_hpc", *map(str, args)]
    if mpi:
        assert MPIEXEC, "mpiexec not found next to the Python executable"
        cmd = [MPIEXEC, "-n", str(mpi), *cmd]
    e = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=e, cwd=ROOT)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} -> {r.returncode}\n{r.stdout}\n{r.stderr}")
    return r


def small_field_toml(cadence, stages, *, seed=11, galaxy_mag_limit=25.5, extra=""):
    """A calibratable small field: a 1600 px sensor, the sky within 0.1 deg to r = `galaxy_mag_limit` with
    four times the field's stars, no supernovae or lenses; `cadence` is the body of that section, `stages`
    the stage sections ([calexp] ...), `extra` whole sections placed before them."""
    return f"""
[run]
seed = {seed}
[cadence]
{cadence}
[sky]
radius = 0.1
galaxy_mag_limit = {galaxy_mag_limit}
star_density_scale = 4.0
[supernovae]
enabled = false
[lensing]
enabled = false
[sensor]
nx = 1600
ny = 1600
{extra}{stages}
"""


#: The Level 2 chain on a small field: 3 g + 3 r visits of a 1600 px sensor at different rotations,
#: calexps, coadds on 800 px patches (3 x 3) with the smallest budget (each 1000 px patch in 9
#: sub-regions), Objects and ForcedSource, templates of the 3 visits of each band, the differences, their
#: DiaObjects and DiaForcedSource.
#: One run serves the coadd, Objects, ForcedSource and the bit-identical tests.
#: The difference-imaging stages with their defaults (after [forced], before [ingest]).
DIA_STAGES_TOML = "".join(f"[{s}]\nenabled = true\n" for s in ("template", "diffim", "associate", "diaforced"))

LEVEL2_TOML = small_field_toml('bands = "gr"\nmax_visits = 6', """[calexp]
enabled = true
[coadd]
enabled = true
memory_per_rank = 16777216
patch_size = 800
[objects]
enabled = true
[forced]
enabled = true
""" + DIA_STAGES_TOML + """[ingest]
enabled = true""")

#: The same campaign with every coadd and template cut into tiles (tasks of their own, then assembled:
#: [coadd] task_visits); its products must be the one-task campaign's, bit for bit.
LEVEL2_TILES_TOML = LEVEL2_TOML.replace("patch_size = 800\n", "patch_size = 800\ntask_visits = 0.1\n")
assert LEVEL2_TILES_TOML != LEVEL2_TOML

#: Templates and differences on a sky without variables: 8 r visits of a 1600 px sensor, templates of the
#: 4 best-seeing on 1000 px patches; serves the template and diffim stage tests.
TEMPLATE_TOML = small_field_toml('bands = "r"\nmax_visits = 8', """[calexp]
enabled = true
[coadd]
enabled = true
memory_per_rank = 16777216
patch_size = 1000
[template]
enabled = true
max_visits = 4
min_visits = 2
candidate_factor = 1.5
[diffim]
enabled = true""", seed=31)


def campaign_run(tmp_path_factory, name, toml, mpi=2, timeout=900):
    """Write `toml` to a fresh directory and run it to completion under mpiexec -n `mpi` (0: no
    mpiexec); returns the run directory."""
    d = tmp_path_factory.mktemp(name)
    (d / "c.toml").write_text(toml)
    cli("run", d / "c.toml", "-o", d / "run", mpi=mpi, check=True, timeout=timeout)
    return d / "run"


@pytest.fixture(scope="session")
def template_run(tmp_path_factory):
    """TEMPLATE_TOML under mpiexec -n 2."""
    return campaign_run(tmp_path_factory, "template", TEMPLATE_TOML, mpi=2)


def _level2_run(tmp_path_factory, n, toml=LEVEL2_TOML):
    return campaign_run(tmp_path_factory, f"level2-n{n}", toml, mpi=n, timeout=600)


@pytest.fixture(scope="session")
def level2_run(tmp_path_factory):
    """The Level 2 chain under mpiexec -n 2."""
    return _level2_run(tmp_path_factory, 2)


@pytest.fixture(scope="session")
def level2_run_n3(tmp_path_factory):
    """The same campaign under mpiexec -n 3 with its coadds and templates in tiles
    (LEVEL2_TILES_TOML), for the rank-count and task-split checks."""
    return _level2_run(tmp_path_factory, 3, LEVEL2_TILES_TOML)
