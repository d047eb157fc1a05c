"""`twinkles-hpc bench diffim` on a small pair: its scene, its figures, and its lines."""
from types import SimpleNamespace

import numpy as np

from twinkles_hpc.bench import diffim as bench_diffim


def test_bench_diffim_small_pair_matches_each_case():
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


def test_bench_pair_has_the_case_psfs():
    pair = bench_diffim.make_pair("varying", nx=400, ny=200, n_stars=50, seed=1)
    assert pair["science"].shape == (200, 400) and pair["science"].dtype == np.float32
    assert np.isclose(pair["template"].sum(), pair["flux"].sum(), rtol=0.02)   # flux kept on the stamps
