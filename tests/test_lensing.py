"""The SIE + shear lens solver: analytic limits, internal consistency, and the 861 OM10 systems."""
import os
import time
from pathlib import Path

import numpy as np
import pytest

from twinkles_hpc.errors import InputError
from twinkles_hpc.sky import lensing
from twinkles_hpc.sky.lensing import (ARCSEC, C_KMS, DAY_S, DEFAULT_COSMOLOGY, MPC_M,
                                      TABLE_DISTANCE_COSMOLOGY, compare_om10, distances,
                                      dynamical_normalization, einstein_radius, read_om10, solve_lens,
                                      solve_lenses)

SHARED_DATA = Path(os.environ.get("TWINKLES_SHARED_DATA", Path(__file__).parents[2] / "shared" / "data"))
OM10_FITS = SHARED_DATA / "twinkles_om10_lenses.fits"
PARAMS = ("VELDISP", "ELLIP", "PHIE", "GAMMA", "PHIG", "ZLENS", "ZSRC", "XSRC", "YSRC")


@pytest.fixture(scope="module")
def om10():
    if not OM10_FITS.exists():
        pytest.skip(f"{OM10_FITS} not present (set TWINKLES_SHARED_DATA to the shared data folder)")
    return read_om10(OM10_FITS)


# --- analytic limits and self-consistency ----------------------------------------------------------
@pytest.mark.parametrize("angle_deg", [0.0, 30.0, 90.0, 215.0])
def test_round_lens_is_the_sis(angle_deg):
    sigma, zl, zs, beta = 250.0, 0.5, 2.0, 0.3
    te = einstein_radius(sigma, zl, zs)
    a = np.radians(angle_deg)
    x, y, mag, delay = solve_lens(sigma, 0.0, 17.0, 0.0, 40.0, zl, zs, beta * np.cos(a), beta * np.sin(a))
    assert len(x) == 2
    along = x * np.cos(a) + y * np.sin(a)                     # signed distance along the source direction
    across = -x * np.sin(a) + y * np.cos(a)
    outer, inner = np.argmax(along), np.argmin(along)
    np.testing.assert_allclose(across, 0.0, atol=1e-9)
    np.testing.assert_allclose(along[[outer, inner]], [beta + te, beta - te], atol=1e-9)
    np.testing.assert_allclose(mag[[outer, inner]], [1 + te / beta, 1 - te / beta], rtol=1e-8)
    dd, ds, dds = distances(zl, zs)
    dt = (1 + zl) / (C_KMS * 1e3) * dd * ds / dds * MPC_M * 2 * te * beta * ARCSEC**2 / DAY_S
    np.testing.assert_allclose(delay[[outer, inner]], [0.0, dt], rtol=1e-8, atol=1e-9)
    assert np.all(np.diff(y) >= 0)                            # OM10 order: ascending y


def test_einstein_radius_value():
    # theta_E = 4 pi (sigma/c)^2 D_ds/D_s; 200 km/s, D_ds/D_s = 1 gives 1.15360 arcsec
    dd, ds, dds = distances(0.3, 1.5)
    assert einstein_radius(200.0, 0.3, 1.5) == pytest.approx(1.15360 * dds / ds, rel=1e-5)
    assert dynamical_normalization(0.0) == 1.0
    assert dynamical_normalization(0.3) == pytest.approx(1.0055, abs=2e-4)


def test_sie_deflection_obeys_poisson():
    q, h = 0.55, 1e-5
    def alpha(x, y):
        r = np.hypot(x, y)
        return lensing._sie_alpha_unit(x / r, y / r, q)
    for x, y in [(0.7, 0.4), (-0.2, 1.3), (0.05, -0.9)]:
        div = ((alpha(x + h, y)[0] - alpha(x - h, y)[0]) + (alpha(x, y + h)[1] - alpha(x, y - h)[1])) / (2 * h)
        curl = ((alpha(x + h, y)[1] - alpha(x - h, y)[1]) - (alpha(x, y + h)[0] - alpha(x, y - h)[0])) / (2 * h)
        assert div / 2 == pytest.approx(0.5 / np.sqrt(q * x * x + y * y / q), rel=1e-6)
        assert abs(curl) < 1e-6


def _model_and_images():
    col = lambda v: np.array([[v]])  # noqa: E731
    m = lensing._Model(col(1.2), col(0.6), col(0.7), col(0.08), col(-0.4), col(0.05), col(-0.03))
    x, y = m.roots()
    return m, x[np.isfinite(x)], y[np.isfinite(y)]


def test_images_satisfy_lens_equation_magnification_and_fermat():
    m, x, y = _model_and_images()
    assert len(x) == 4

    def source(px, py):
        r = np.hypot(px, py)
        ax, ay = m.alpha_sie(px / r, py / r)
        gx = m.gamma * (m.c2 * px + m.s2 * py)       # shear deflection, potential -(g/2) r^2 cos 2(phi - phi_g)
        gy = m.gamma * (m.s2 * px - m.c2 * py)
        return px - ax + gx, py - ay + gy

    bx, by = source(x, y)
    np.testing.assert_allclose(bx, 0.05, atol=1e-10)
    np.testing.assert_allclose(by, -0.03, atol=1e-10)
    h = 1e-6
    j11, j21 = [(a - b) / (2 * h) for a, b in zip(source(x + h, y), source(x - h, y))]
    j12, j22 = [(a - b) / (2 * h) for a, b in zip(source(x, y + h), source(x, y - h))]
    np.testing.assert_allclose(m.magnification(x, y).ravel(), 1 / (j11 * j22 - j12 * j21).ravel(), rtol=1e-5)
    # Fermat's principle: images are stationary points of the arrival-time surface
    gx = (m.fermat(x + h, y) - m.fermat(x - h, y)) / (2 * h)
    gy = (m.fermat(x, y + h) - m.fermat(x, y - h)) / (2 * h)
    np.testing.assert_allclose(np.hypot(gx, gy), 0.0, atol=1e-6)


def test_einstein_ring_is_refused():
    with pytest.raises(ValueError, match="Einstein ring"):
        solve_lens(200.0, 0.0, 0.0, 0.0, 0.0, 0.5, 2.0, 0.0, 0.0)
    x, y, mag, delay = solve_lens(200.0, 0.3, 0.0, 0.0, 0.0, 0.5, 2.0, 0.0, 0.0)   # a symmetric cross
    assert len(x) == 4 and np.allclose(np.sort(np.abs(mag)), np.repeat(np.sort(np.abs(mag))[::2], 2))


def test_unlensed_source_gives_one_image():
    x, y, mag, delay = solve_lens(200.0, 0.2, 10.0, 0.05, 60.0, 0.5, 2.0, 5.0, 3.0)
    assert len(x) == 1 and 0 < mag[0] < 1.5 and delay[0] == 0.0


@pytest.mark.parametrize("kwargs, word", [
    (dict(veldisp=-10.0), "veldisp"), (dict(veldisp=0.0), "veldisp"),
    (dict(zsrc=0.5), "zsrc"), (dict(zsrc=0.3), "zsrc"),
    (dict(ellip=1.0), "ellip"), (dict(ellip=-0.1), "ellip"), (dict(gamma=1.5), "gamma"),
    (dict(xsrc=np.nan), "xsrc")])
def test_bad_input_raises_value_error(kwargs, word):
    args = dict(veldisp=220.0, ellip=0.3, phie=10.0, gamma=0.05, phig=-30.0, zlens=0.5, zsrc=2.0,
                xsrc=0.1, ysrc=0.05)
    args.update(kwargs)
    with pytest.raises(ValueError, match=word):
        solve_lens(**args)
    if "veldisp" in kwargs or "zsrc" in kwargs:
        with pytest.raises(ValueError, match=word):
            einstein_radius(args["veldisp"], args["zlens"], args["zsrc"])


# --- reading ------------------------------------------------------------------------------------
def test_read_om10_errors(tmp_path):
    missing = tmp_path / "nope.fits"
    with pytest.raises(InputError, match="nope.fits") as err:
        read_om10(missing)
    assert "\n" not in str(err.value)
    text = tmp_path / "text.fits"
    text.write_text("not a fits file\n")
    with pytest.raises(InputError, match="FITS") as err:
        read_om10(text)
    assert "\n" not in str(err.value)

    from astropy.table import Table
    cols = {k: np.zeros(2) for k in lensing.OM10_COLUMNS if lensing.OM10_COLUMNS[k] == 1}
    cols.update({k: np.zeros((2, 4)) for k in ("XIMG", "YIMG", "MAG")})     # DELAY left out
    path = tmp_path / "cat.fits"
    Table(cols).write(path)
    with pytest.raises(InputError, match="DELAY: expected an OM10 column, got 'missing'") as err:
        read_om10(path)
    assert err.value.field == "DELAY" and err.value.source == str(path)
    cols["DELAY"] = np.zeros((2, 3))
    Table(cols).write(path, overwrite=True)
    with pytest.raises(InputError, match="DELAY: expected 4 value"):
        read_om10(path)
    cols["DELAY"] = np.zeros((2, 4))
    cols["lens_sed"] = np.array(["a.spec", "b.spec"])
    Table(cols).write(path, overwrite=True)
    t = read_om10(path)
    assert len(t) == 2 and "lens_sed" in t.dtype.names and t["XIMG"].shape == (2, 4)


def test_read_om10_real_catalogue(om10):
    assert len(om10) == 861
    assert set(lensing.OM10_COLUMNS) <= set(om10.dtype.names) and "lens_sed" in om10.dtype.names
    assert om10["XIMG"].shape == (861, 4) and om10.dtype["VELDISP"].isnative


# --- the 861 OM10 systems --------------------------------------------------------------------------
def test_cosmologies(om10):
    """DD/DS/DDS columns: H0 = 70, Om0 = 0.3. OM10's own lensing: H0 = 72, Om0 = 0.26."""
    for cosmo, tol in ((TABLE_DISTANCE_COSMOLOGY, 3e-4), (DEFAULT_COSMOLOGY, None)):
        dd, ds, dds = distances(om10["ZLENS"], om10["ZSRC"], cosmo)
        err = max(np.max(np.abs(a / om10[k] - 1)) for a, k in ((dd, "DD"), (ds, "DS"), (dds, "DDS")))
        assert (err < tol) if tol else (err > 0.01)


def test_einstein_radius_against_image_separation(om10):
    te = einstein_radius(om10["VELDISP"], om10["ZLENS"], om10["ZSRC"])
    ratio = om10["IMSEP"] / (2 * te)
    assert 0.97 < np.median(ratio) < 1.08
    assert np.mean((ratio > 0.8) & (ratio < 1.35)) > 0.98


def test_reproduces_om10(om10):
    """Tolerances from the table's printing: positions to 1e-4 arcsec (rounding alone gives offsets
    up to 7e-5), MAG to 1e-4, DELAY to 1e-3 day. Near-critical images (|mu| > 10) amplify the
    source-plane rounding (~1e-4 arcsec) by |mu|, hence the looser worst-case bounds."""
    start = time.perf_counter()
    s = compare_om10(om10)
    elapsed = time.perf_counter() - start
    print(f"\nOM10 agreement ({elapsed:.2f} s): {s}")
    assert elapsed < 10.0
    assert s["nimg_agree"] >= 0.98, f"image count differs for rows {s['mismatched']}"
    assert s["pos_median"] < 1.5e-4 and s["pos_max"] < 2e-3
    assert s["mag_median"] < 1e-3 and s["mag_max"] < 0.05
    assert s["delay_median"] < 5e-3 and s["delay_max"] < 0.1 and s["delay_rel_median"] < 1e-3
    assert s["order_agree"] > 0.8


def test_solve_lens_row_matches_table(om10):
    """One system through the scalar API, in table order (row 1's table order is ascending y)."""
    row = om10[1]
    x, y, mag, delay = solve_lens(*(row[k] for k in PARAMS))
    k = row["NIMG"]
    assert len(x) == k
    np.testing.assert_allclose(x, row["XIMG"][:k], atol=5e-4)
    np.testing.assert_allclose(y, row["YIMG"][:k], atol=5e-4)
    np.testing.assert_allclose(mag, row["MAG"][:k], rtol=2e-3)
    np.testing.assert_allclose(delay, row["DELAY"][:k], atol=5e-3)


def test_delay_zero_point_is_first_arrival(om10):
    out = solve_lenses(*(om10[k][:50] for k in PARAMS))
    for i in range(50):
        d = out["delay"][i, :out["nimg"][i]]
        assert d.min() == 0.0 and np.sum(d == 0.0) == 1
        assert out["mag"][i, np.argmin(d)] > 0                # the first arrival is a minimum
