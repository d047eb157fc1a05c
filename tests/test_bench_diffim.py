"""`twinkles-hpc bench diffim` on a small pair: its scene, its figures, and its lines."""
import sys
from types import SimpleNamespace

import numpy as np

from twinkles_hpc.bench import diffim as bench_diffim


def _without_peers(monkeypatch):
    """The optional peers as if not installed: their imports fail."""
    for name in ("properimage", "properimage.operations", "sfft", "sfft.CustomizedPacket"):
        monkeypatch.setitem(sys.modules, name, None)


def test_bench_diffim_small_pair_matches_each_case(monkeypatch):
    _without_peers(monkeypatch)
    args = SimpleNamespace(nx=512, ny=512, stars=400, seed=3, repeat=1)
    lines = bench_diffim.run(args)
    rows = [ln.split() for ln in lines if ln.split()[:2] in (["round", "twinkles-hpc"],
                                                             ["elliptical", "twinkles-hpc"],
                                                             ["varying", "twinkles-hpc"])]
    assert len(rows) == 3
    for r in rows:
        seconds, rms, false = float(r[2]), float(r[5]), float(r[6])
        assert seconds > 0 and r[4] == "template"
        assert 0.95 < rms < 1.05, r          # the stars subtract to the noise
        assert false < 10.0, r               # no variables: the detections are noise
    assert sum(ln.startswith(("properimage not run: ", "sfft not run: ")) for ln in lines) == 2


def test_missing_peer_is_one_line_with_its_reason(monkeypatch):
    _without_peers(monkeypatch)
    found = bench_diffim.peers(4096, 4096)
    assert [(name, setup) for name, setup, _ in found] == [("properimage", None), ("sfft", None)]
    for name, _, line in found:
        assert "\n" not in line and line.startswith(f"{name} not run: it is not installed (")


def test_peer_too_big_for_memory_says_what_it_needs():
    line = bench_diffim._memory_short("sfft", 1e6, 4096, 4096)
    if line is not None:                     # None where the machine does not say (no /proc/meminfo)
        assert line.startswith("sfft not run on this 4096 x 4096 pair: it needs about 16778 GB (1000.0 kB a pixel")
    assert bench_diffim._memory_short("sfft", 1.0, 16, 16) is None


def test_zogy_filters_whiten_blank_sky():
    t_mom, s_mom = bench_diffim.centre_moments("elliptical")
    k_s, k_t, psf = bench_diffim.zogy_filters(bench_diffim.psf_stamp(t_mom), bench_diffim.psf_stamp(s_mom))
    sky_var = bench_diffim.SKY_SCIENCE * (k_s ** 2).sum() + bench_diffim.SKY_TEMPLATE * (k_t ** 2).sum()
    assert abs(sky_var - 1.0) < 1e-3         # D has unit variance on blank sky (Zackay et al. 2016)
    assert psf.shape == (2 * bench_diffim.STAMP_HALF + 1,) * 2 and np.unravel_index(psf.argmax(), psf.shape) == (12, 12)


def test_bench_pair_has_the_case_psfs():
    pair = bench_diffim.make_pair("varying", nx=400, ny=200, n_stars=50, seed=1)
    assert pair["science"].shape == (200, 400) and pair["science"].dtype == np.float32
    assert np.isclose(pair["template"].sum(), pair["flux"].sum(), rtol=0.02)   # flux kept on the stamps
