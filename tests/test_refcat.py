import numpy as np

from twinkles_hpc.sky.refcat import make_refcat
from twinkles_hpc.sky.static import build_static_sky


def test_refcat_scatter_matches_stated_errors_and_is_keyed_by_star():
    stars = build_static_sky(3, 53.0, -27.4, 0.15)["stars"]
    ref = make_refcat(3, stars)
    truth = stars[np.isin(stars["id"], ref["id"])]
    assert len(ref) > 50 and np.all(truth["mag_r"] < 23.0)
    ddec = (ref["dec"] - truth["dec"]) * 3.6e6 / ref["pos_err_mas"]
    assert abs(np.std(ddec) - 1) < 0.25 and abs(np.mean(ddec)) < 0.3
    for b in "ugrizy":
        pull = (ref[f"mag_{b}"] - truth[f"mag_{b}"]) / ref[f"mag_err_{b}"]
        assert abs(np.std(pull) - 1) < 0.25 and np.all(np.isfinite(ref[f"mag_{b}"]))
    # keyed by star id: a subset of the stars gives the same rows for those stars
    sub = make_refcat(3, stars[::2])
    assert np.array_equal(sub, ref[np.isin(ref["id"], stars["id"][::2])])
