"""Time delays of lensed-quasar images (timedomain/timedelay.py, lcsim.py, `twinkles-hpc timedelay`,
`bench timedelay`): the likelihood kernel against a dense computation, recovery of a known delay, no estimate
without signal, determinism, the TDC1 metrics, the command line's output and its bad-input errors."""
import json

import numpy as np
import pytest
from astropy.table import Table

from conftest import shared_file
from twinkles_hpc.cli import main
from twinkles_hpc.timedomain import lcsim
from twinkles_hpc.timedomain import timedelay as td


def cadence(seasons=5, step=3.0, bands="gri", m5=24.5):
    """A small synthetic cadence: one visit every `step` days for 150 days a year, bands in turn."""
    mjd = np.concatenate([60000.0 + 365.25 * s + np.arange(0.0, 150.0, step) for s in range(seasons)])
    band = np.array([bands[i % len(bands)] for i in range(mjd.size)])
    return mjd, band, np.full(mjd.size, m5)


BRIGHT = lcsim.DoublePopulation(mag_a=(20.5, 20.5), dmag_b=(0.3, 0.3), delay=(32.0, 32.0), sf_inf=(0.3, 0.3),
                                tau_rest=(150.0, 150.0), redshift=(1.0, 1.0))


def test_likelihood_kernel_matches_dense_algebra():
    rng = np.random.default_rng(3)
    t = np.sort(np.concatenate([rng.uniform(0, 300, 40), [100.0, 100.0]]))      # two samples at one time
    w = 1.0 / rng.uniform(0.01, 0.05, t.size) ** 2
    z = np.column_stack([rng.normal(size=t.size), np.ones(t.size), t / 300.0])
    tau, var = 80.0, 0.03
    cov = var * np.exp(-np.abs(t[:, None] - t[None, :]) / tau) + np.diag(1.0 / w)
    ci_z = np.linalg.solve(cov, z)
    g = z.T @ ci_z
    ff = g[1:, 1:]
    resid = g[0, 0] - g[1:, 0] @ np.linalg.solve(ff, g[1:, 0])
    dense = resid + np.linalg.slogdet(cov)[1] + np.linalg.slogdet(ff)[1]
    ours = td._reml(t, w, np.ascontiguousarray(z), z.T @ (z * w[:, None]), tau, var)
    assert ours == pytest.approx(dense, rel=1e-9, abs=1e-7)


@pytest.mark.parametrize("estimator", ["drw", "difference"])
def test_known_delay_is_recovered_within_its_error(estimator):
    curves, truth = lcsim.simulate_double(*cadence(), BRIGHT, seed=4, index=0)
    est = td.ESTIMATORS[estimator](curves, "B")
    assert est.delay is not None, est.reason
    assert 0.0 < est.error < 5.0
    assert abs(est.delay - truth["delay"]) < 3.0 * est.error, (est, truth["delay"])


def test_drw_errors_are_calibrated_on_a_few_systems():
    pop = lcsim.DoublePopulation(mag_a=(20.5, 21.5), delay=(20.0, 60.0), sf_inf=(0.25, 0.3))
    z = []
    for i in range(6):
        curves, truth = lcsim.simulate_double(*cadence(), pop, seed=8, index=i)
        est = td.drw_delay(curves, "B")
        if est.delay is not None:
            z.append((est.delay - truth["delay"]) / est.error)
    assert len(z) >= 4
    assert np.median(np.abs(z)) < 2.0, z


def test_no_common_variability_gives_no_estimate():
    flat = lcsim.DoublePopulation(sf_inf=(0.002, 0.002))
    curves, _ = lcsim.simulate_double(*cadence(), flat, seed=2, index=0)
    for name, fn in td.ESTIMATORS.items():
        est = fn(curves, "B")
        assert est.delay is None and est.error is None and est.reason, (name, est)


def test_noise_shared_by_the_images_is_not_a_delay():
    """Two images measured on the same visits share each visit's error: with little variability of their
    own and a large common error (calibration, PSF model), the likelihood peaks at zero delay with a tiny
    error. The min_delay gate reports no estimate; without it the drw estimator reports ~0 d."""
    mjd, band, _ = cadence()
    rng = np.random.default_rng(11)
    shared = rng.normal(0.0, 0.05, mjd.size)                  # per-visit error common to both images
    mag = {"A": 20.0 + shared + rng.normal(0.0, 0.005, mjd.size),
           "B": 20.5 + shared + rng.normal(0.0, 0.005, mjd.size)}
    err = {x: np.full(mjd.size, 0.005) for x in mag}
    curves = td.LightCurves(mjd, band, mag, err)
    est = td.drw_delay(curves, "B")
    assert est.delay is None and "below 1 d" in est.reason, est
    raw = td.drw_delay(curves, "B", td.DelayConfig(min_delay=0.0, max_relative_error=0.0))
    assert raw.delay is not None and abs(raw.delay) < 1.0 and raw.error < 0.1, raw


def test_same_seed_same_curves_and_delays():
    one = [lcsim.simulate_double(*cadence(), BRIGHT, seed=5, index=1) for _ in range(2)]
    assert np.array_equal(one[0][0].mag["B"], one[1][0].mag["B"], equal_nan=True)
    other, _ = lcsim.simulate_double(*cadence(), BRIGHT, seed=5, index=2)
    assert not np.array_equal(one[0][0].mag["B"], other.mag["B"], equal_nan=True)
    for fn in td.ESTIMATORS.values():
        a, b = fn(one[0][0], "B"), fn(one[1][0], "B")
        assert (a.delay, a.error) == (b.delay, b.error)


def test_tdc1_metrics():
    m = td.tdc1_metrics([(11.0, 1.0), (None, None), (-18.0, 2.0), (60.0, 5.0)], [10.0, 50.0, -20.0, 30.0])
    assert m["n"] == 4 and m["f"] == pytest.approx(0.75)
    assert m["chi2"] == pytest.approx((1.0 + 1.0 + 36.0) / 3)
    assert m["P"] == pytest.approx((0.1 + 0.1 + 5.0 / 30.0) / 3)
    assert m["A"] == pytest.approx((0.1 - 0.1 + 1.0) / 3)
    assert m["catastrophic"] == pytest.approx(1.0 / 3)


def write_curves(path, curves, images=("A", "B"), fmt="ascii.csv"):
    cols = {"mjd": curves.mjd, "band": curves.band}
    for x in images:
        cols[f"mag_{x}"], cols[f"magerr_{x}"] = curves.mag[x], curves.magerr[x]
    Table(cols).write(path, format=fmt, overwrite=True)
    return str(path)


def test_cli_json_lists_every_file_and_image(tmp_path, capsys):
    curves, truth = lcsim.simulate_double(*cadence(), BRIGHT, seed=4, index=0)
    good = write_curves(tmp_path / "double.csv", curves)
    flat, _ = lcsim.simulate_double(*cadence(), lcsim.DoublePopulation(sf_inf=(0.002, 0.002)), seed=2, index=0)
    flat.mag["C"], flat.magerr["C"] = flat.mag["B"], flat.magerr["B"]
    none = write_curves(tmp_path / "flat.ecsv", flat, ("A", "B", "C"), fmt="ascii.ecsv")
    assert main(["timedelay", good, none, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [f["file"] for f in out] == [good, none]
    b = out[0]["delays"]["B"]
    assert set(b) == {"delay", "error"} and abs(b["delay"] - truth["delay"]) < 3 * b["error"]
    assert out[1]["delays"] == {"B": {"delay": None, "error": None}, "C": {"delay": None, "error": None}}


def test_cli_text_output(tmp_path, capsys):
    curves, _ = lcsim.simulate_double(*cadence(), BRIGHT, seed=4, index=0)
    path = write_curves(tmp_path / "double.csv", curves)
    assert main(["timedelay", path, "--estimator", "difference"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{path}: B - A: ") and "+/-" in line and line.endswith("[difference]")


def bad_inputs(tmp_path):
    ok = "mjd,band,mag_A,magerr_A,mag_B,magerr_B\n1.0,r,21.0,0.02,21.5,0.03\n2.0,r,21.1,0.02,21.6,0.03\n"
    files = {
        "no_mjd.csv": (ok.replace("mjd,", "time,"), "mjd: expected a column mjd (days), got 'missing'"),
        "no_band.csv": (ok.replace(",band,", ",filter,"), "band: expected a column band"),
        "no_a.csv": (ok.replace("mag_A", "mag_E"), "mag_A: expected a column mag_A"),
        "only_a.csv": ("mjd,band,mag_A,magerr_A\n1.0,r,21.0,0.02\n", "mag_B: expected magnitudes of image A and"),
        "text.csv": (ok.replace("21.6", "bright"), "mag_B: expected numbers, got \"'bright' in data row 2\""),
        "no_err.csv": (ok.replace("magerr_B", "sigma_B"), "magerr_B: expected a column magerr_B beside mag_B"),
    }
    for name, (text, _) in files.items():
        (tmp_path / name).write_text(text)
    cases = [(str(tmp_path / n), msg) for n, (_, msg) in files.items()]
    cases.append((str(tmp_path / "missing.csv"), "file: expected a light-curve file (CSV or ECSV), got 'no such file'"))
    cases.append((str(tmp_path), "lenses/scenes.h5: expected the scene models of a run with [lensmodel] enabled"))
    return cases


def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    for path, message in bad_inputs(tmp_path):
        assert main(["timedelay", path]) == 2, path
        captured = capsys.readouterr()
        assert captured.out == ""
        lines = captured.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"twinkles-hpc: error: {path}: "), lines
        assert message in lines[0], (message, lines[0])
    path = bad_inputs(tmp_path)[0][0]
    for flag, value in (("--min-delay", "-1"), ("--min-delay", "200"), ("--max-relative-error", "nan")):
        assert main(["timedelay", path, flag, value]) == 2, (flag, value)
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "--min-delay" in err[0] and "smallest delay >= 0 inside the range" in err[0], err


def test_cli_min_delay(tmp_path, capsys):
    """--min-delay 0 lets a delay under a day through, for light curves whose errors are independent."""
    curves, truth = lcsim.simulate_double(*cadence(), BRIGHT, seed=4, index=0)
    path = write_curves(tmp_path / "double.csv", curves)
    assert main(["timedelay", path, "--json", "--min-delay", str(2.0 * truth["delay"])]) == 0
    b = json.loads(capsys.readouterr().out)[0]["delays"]["B"]
    assert b == {"delay": None, "error": None}
    assert main(["timedelay", path, "--json", "--min-delay", "0"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["delays"]["B"]["delay"] is not None


def test_bench_timedelay_prints_metrics_per_estimator_and_case():
    from types import SimpleNamespace

    from twinkles_hpc.bench import timedelay as bench_td
    opsim = shared_file("twinkles_run1_opsim_visits.csv")
    lines = bench_td.run(SimpleNamespace(systems=2, seed=3, opsim=str(opsim), calibrate=False, pycs3_systems=0))
    rows = {(ln[:22].strip(), ln[23:36].strip()) for ln in lines if ln[:22].strip() in bench_td.cases()}
    assert rows == {(case, name) for case in bench_td.cases() for name in td.ESTIMATORS}
    assert any(ln.startswith("PyCS3") for ln in lines)
