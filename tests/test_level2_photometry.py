"""Forced photometry (twinkles_hpc.level2.photometry) on images made by the simulation's renderer and noise."""
import numpy as np
import pytest

from twinkles_hpc.imsim import noise, render
from twinkles_hpc.imsim.psf import PSFModel
from twinkles_hpc.level2 import photometry as F
from twinkles_hpc.level2 import masks
from twinkles_hpc.bench.forced import PixelPSF, bench_forced
from twinkles_hpc.level2.photometry import forced_photometry

SKY, READ_NOISE = 883.0, 8.8          # electrons per pixel: r band, 30 s, 21.2 mag/arcsec^2


def grid(n_side, spacing, margin):
    g = margin + spacing * np.arange(n_side)
    x, y = np.meshgrid(g, g)
    rng = np.random.default_rng(n_side)
    return x.ravel() + rng.uniform(-0.5, 0.5, x.size), y.ravel() + rng.uniform(-0.5, 0.5, x.size)


def scene(x, y, flux, shape, *, model=None, origin=(0.0, 0.0), key=None):
    """(image - sky, variance, mask, psf): noiseless when key is None; else sky + read + shot noise, the
    variance plane estimated from the pixels (as a calexp's), saturated pixels masked."""
    model = model or PSFModel(0.7, nx=4000, ny=4072)
    expected = np.zeros(shape)
    render.render_points(expected, np.asarray(x) + origin[0], np.asarray(y) + origin[1], flux, model,
                         origin=origin, threshold=0.0)       # no truncation: exact fluxes
    psf = PixelPSF(model, origin)
    if key is None:
        return expected, np.full(shape, SKY + READ_NOISE ** 2), np.zeros(shape, np.uint16), psf
    pixels, _ = noise.add_sky_and_noise(expected, SKY, READ_NOISE, key)
    mask = np.where(pixels >= noise.FULL_WELL, masks.SAT, 0).astype(np.uint16)
    return pixels - np.float32(SKY), (np.maximum(pixels, 0) + READ_NOISE ** 2).astype(np.float32), mask, psf


def test_aperture_area_exact():
    rng = np.random.default_rng(1)
    x, y = rng.uniform(40, 60, 300), rng.uniform(40, 60, 300)
    radii = (0.3, 0.5, 1.0, 2.2, 3.0, 4.5, 6.0, 12.0, 25.3)
    one = np.ones((100, 100))
    out = forced_photometry(one, one, None, x, y, PixelPSF(PSFModel(0.7)), ap_radii=radii)
    for r in radii:
        name = f"ap_flux_{F._radius_name(r)}"
        np.testing.assert_allclose(out[name], np.pi * r * r, rtol=1e-10, atol=0)
        assert np.all(out[name + "_err"] ** 2 <= np.pi * r * r + 1e-9)      # sum area^2 <= sum area


def test_aperture_weights_match_supersampling():
    rng = np.random.default_rng(2)
    data = rng.normal(size=(30, 30))
    x0, y0, r = 14.37, 15.81, 3.3
    s = (np.arange(400) + 0.5) / 400 - 0.5
    weights = np.zeros_like(data)
    for j in range(10, 21):
        for i in range(10, 20):
            weights[j, i] = (((i + s[None, :] - x0) ** 2 + (j + s[:, None] - y0) ** 2) <= r * r).mean()
    out = forced_photometry(data, np.ones_like(data), None, x0, y0, PixelPSF(PSFModel(0.7)), ap_radii=[r])
    assert out["ap_flux_3p3"][0] == pytest.approx((weights * data).sum(), abs=1e-4)
    assert out["ap_flux_3p3_err"][0] ** 2 == pytest.approx((weights ** 2).sum(), abs=1e-4)


@pytest.mark.parametrize("origin", [(1800.0, 1900.0), (3700.0, 3800.0)])   # sensor centre and a corner
def test_psf_flux_noiseless_exact(origin):
    x, y = grid(5, 40.0, 30.0)
    flux = np.geomspace(1e3, 1e6, x.size)
    model = PSFModel(0.7, nx=4000, ny=4072, fwhm_gradient=0.3, ellip_gradient=0.2)   # elliptical at corners
    image, var, mask, psf = scene(x, y, flux, (230, 230), model=model, origin=origin)
    out = forced_photometry(image, var, mask, x, y, psf)
    assert np.all(out["flags"] == 0)
    np.testing.assert_allclose(out["psf_flux"] / flux, 1.0, atol=1e-5)


def test_psf_flux_bright_stars_unbiased():
    x, y = grid(7, 40.0, 30.0)
    flux = np.full(x.size, 4e5)
    image, var, mask, psf = scene(x, y, flux, (300, 300), key=(1, 2, 3))
    out = forced_photometry(image, var, mask, x, y, psf)
    assert np.all(out["flags"] == 0)
    ratio = out["psf_flux"] / flux
    assert abs(ratio.mean() - 1) < 2e-3
    assert abs(ratio.mean() - 1) < 4 * (out["psf_flux_err"] / flux).mean() / np.sqrt(x.size)
    assert np.all(np.abs(out["psf_flux"] - flux) < 5 * out["psf_flux_err"])


def test_faint_stars_pulls():
    """SNR ~ 10 stars, many noise realisations: mean unbiased within its error, pull scatter 1 within 5%."""
    x, y = grid(10, 30.0, 20.0)
    flux = np.full(x.size, 2100.0)
    expected, _, _, psf = scene(x, y, flux, (310, 310))
    pulls, ap_pulls, snr = [], [], []
    for k in range(40):
        pixels, _ = noise.add_sky_and_noise(expected, SKY, READ_NOISE, (7, k, 1))
        var = (np.maximum(pixels, 0) + READ_NOISE ** 2).astype(np.float32)
        out = forced_photometry(pixels - np.float32(SKY), var, None, x, y, psf)
        pulls.append((out["psf_flux"] - flux) / out["psf_flux_err"])
        ap_pulls.append((out["ap_flux_6"] - flux * F.psf_aperture_fraction(psf, x, y)[:, 1]) / out["ap_flux_6_err"])
        snr.append(out["psf_flux"] / out["psf_flux_err"])
    pulls, ap_pulls = np.concatenate(pulls), np.concatenate(ap_pulls)
    assert 8 < np.median(snr) < 12
    assert abs(pulls.mean()) < 3 / np.sqrt(pulls.size)
    assert abs(pulls.std() - 1) < 0.05
    assert abs(ap_pulls.mean()) < 3 / np.sqrt(ap_pulls.size)
    assert abs(ap_pulls.std() - 1) < 0.05


def test_large_aperture_recovers_total_flux():
    x, y, flux = np.array([60.3, 140.8]), np.array([61.2, 139.6]), np.array([3e5, 5e5])
    image, var, mask, psf = scene(x, y, flux, (200, 200))
    out = forced_photometry(image, var, mask, x, y, psf, ap_radii=(3, 30))
    np.testing.assert_allclose(out["ap_flux_30"] / flux, 1.0, atol=1e-5)
    image, var, mask, psf = scene(x, y, flux, (200, 200), key=(4, 5, 6))
    out = forced_photometry(image, var, mask, x, y, psf, ap_radii=(3, 30))
    assert np.all(np.abs(out["ap_flux_30"] - flux) < 4 * out["ap_flux_30_err"])


def test_aperture_correction_consistency():
    x, y = grid(4, 50.0, 40.0)
    flux = np.full(x.size, 3e5)
    image, var, mask, psf = scene(x, y, flux, (240, 240))
    frac = F.psf_aperture_fraction(psf, x, y)
    assert np.all(np.diff(frac, axis=1) > 0) and np.all(frac < 1) and np.all(frac[:, -1] > 0.99)
    out = forced_photometry(image, var, mask, x, y, psf)
    for k, r in enumerate(F.DEFAULT_AP_RADII):
        np.testing.assert_allclose(out[f"ap_flux_{r:g}"] / out["psf_flux"], frac[:, k], rtol=1e-6)
    image, var, mask, psf = scene(x, y, flux, (240, 240), key=(9, 9, 9))
    out = forced_photometry(image, var, mask, x, y, psf)
    for k, r in enumerate(F.DEFAULT_AP_RADII):
        corrected = out[f"ap_flux_{r:g}"] / frac[:, k]
        err = np.hypot(out[f"ap_flux_{r:g}_err"] / frac[:, k], out["psf_flux_err"])
        assert np.all(np.abs(corrected - out["psf_flux"]) < 5 * err)


def test_edge_and_off_image_flags():
    nx = ny = 240                                      # stars >= 50 px apart: no blending
    x = np.array([-1.0, -0.5, 0.2, 4.0, 120.0, 239.49, 239.5, 120.0, 60.0, 300.0])
    y = np.array([30.0, 80.0, 130.0, 180.0, 120.0, 60.0, 160.0, -0.51, 2.5, 120.0])
    flux = np.full(x.size, 1e5)
    image, var, mask, psf = scene(x, y, flux, (ny, nx))
    out = forced_photometry(image, var, mask, x, y, psf)
    off = np.array([1, 0, 0, 0, 0, 0, 1, 1, 0, 1], bool)
    assert np.all((out["flags"] == F.FLAG_OFF_IMAGE) == off)
    assert np.all(np.isnan(out["psf_flux"][off])) and np.all(np.isnan(out["ap_flux_3"][off]))
    edge = ~off & (np.arange(x.size) != 4)
    assert np.all(out["flags"][edge] == F.FLAG_EDGE) and out["flags"][4] == 0
    np.testing.assert_allclose(out["psf_flux"][~off] / flux[~off], 1.0, atol=1e-5)   # truncated stamps
    # apertures leaving the image are NaN, smaller ones are kept
    assert np.isfinite(out["ap_flux_3"][3]) and np.isnan(out["ap_flux_6"][3]) and np.isnan(out["ap_flux_3"][2])
    # EDGE mask bit in the footprint
    mask[121, 125] = masks.EDGE
    assert forced_photometry(image, var, mask, 120.0, 120.0, psf)["flags"][0] == F.FLAG_EDGE


def test_masked_pixels():
    x, y, flux = np.array([50.2]), np.array([49.7]), np.array([2e5])
    image, var, mask, psf = scene(x, y, flux, (100, 100))
    clean = forced_photometry(image, var, mask, x, y, psf)[0]
    # cosmic ray over the core: left out of the fit, aperture pixels filled with the model
    m = mask.copy()
    m[49:52, 49:52] = masks.CR
    bad = image.copy()
    bad[49:52, 49:52] = 1e6
    out = forced_photometry(bad, var, m, x, y, psf)[0]
    assert out["flags"] == F.FLAG_MASKED | F.FLAG_AP_FILLED
    assert out["psf_flux"] == pytest.approx(flux[0], rel=1e-5)
    assert out["psf_flux_err"] > clean["psf_flux_err"]
    assert out["ap_flux_3"] == pytest.approx(clean["ap_flux_3"], rel=1e-5)
    # non-finite data and bad variance count as masked
    bad = image.copy()
    bad[45, 50] = np.nan
    v = var.copy()
    v[52, 47] = 0.0
    assert forced_photometry(bad, v, mask, x, y, psf)["flags"][0] == F.FLAG_MASKED | F.FLAG_AP_FILLED
    # saturation: flagged; used in the fit only when SAT is not a bad bit
    m = mask.copy()
    m[50, 50] = masks.SAT
    assert forced_photometry(image, var, m, x, y, psf)["flags"][0] == (
        F.FLAG_SATURATED | F.FLAG_MASKED | F.FLAG_AP_FILLED)
    out = forced_photometry(image, var, m, x, y, psf, bad_mask_bits=masks.CR)[0]
    assert out["flags"] == F.FLAG_SATURATED and out["psf_flux"] == clean["psf_flux"]
    # everything masked: no data
    out = forced_photometry(image, var, np.full(image.shape, masks.NO_DATA, np.uint16), x, y, psf)[0]
    assert out["flags"] & F.FLAG_NO_DATA and np.isnan(out["psf_flux"]) and np.isnan(out["ap_flux_6"])


def test_catalogue_layout_and_dtypes():
    x, y, flux = np.array([30.0, 70.4]), np.array([40.0, 66.6]), np.array([1e4, 2e4])
    image, var, mask, psf = scene(x, y, flux, (100, 100))
    out = forced_photometry(image, var, mask, x, y, psf, object_ids=[11, 42], ap_radii=(4.5, 2))
    assert out.dtype == F.forced_dtype((2, 4.5))
    assert F.FORCED_DTYPE.names[:5] == ("object_id", "x", "y", "psf_flux", "psf_flux_err")
    assert "ap_flux_4p5_err" in out.dtype.names and list(out["object_id"]) == [11, 42]
    out32 = forced_photometry(image.astype(np.float32), var.astype(np.float32), mask.astype(np.int32), x, y, psf,
                              object_ids=[11, 42], ap_radii=(4.5, 2))
    np.testing.assert_allclose(out32["psf_flux"], out["psf_flux"], rtol=1e-6)
    assert forced_photometry(image, var, None, [], [], psf).shape == (0,)


@pytest.mark.parametrize("change", [
    dict(image=np.zeros((10, 10, 2))), dict(image="pixels"), dict(variance=np.ones((9, 10))),
    dict(mask=np.ones((10, 10)) * 0.5), dict(mask=np.full((10, 10), 70000)), dict(x=[1.0, 2.0]),
    dict(x=np.nan), dict(psf=object()), dict(object_ids=[1.5]), dict(ap_radii=(3, -1)), dict(ap_radii=()),
    dict(ap_radii=np.nan), dict(ap_radii=range(1, 70)), dict(psf_radius=0.0), dict(psf_radius=[2.0, 3.0]),
    dict(psf_radius=1e4), dict(bad_mask_bits=-1), dict(bad_mask_bits=1 << 16), dict(bad_mask_bits=1.0),
])
def test_bad_inputs(change):
    args = dict(image=np.zeros((10, 10)), variance=np.ones((10, 10)), mask=None, x=5.0, y=5.0,
                psf=PixelPSF(PSFModel(0.7)))
    kw = {k: change.pop(k) for k in list(change) if k not in args}
    args.update(change)
    with pytest.raises(ValueError):
        forced_photometry(*args.values(), **kw)


class BrokenPSF:
    def __init__(self, result):
        self.result = result

    def components_at(self, x, y):
        return self.result


@pytest.mark.parametrize("result", [
    (np.ones((2, 1)),) * 4, (np.ones((1, 2)), np.ones((1, 2)), np.ones((1, 2))),
    (np.ones((1, 1)), np.ones((1, 1)), np.full((1, 1), 2.0), np.ones((1, 1))),      # not positive definite
    (np.ones((1, 1)), np.full((1, 1), np.inf), np.zeros((1, 1)), np.ones((1, 1))), "nonsense",
    (np.full((1, 65), 1 / 65), np.ones((1, 65)), np.zeros((1, 65)), np.ones((1, 65))),      # too many components
])
def test_bad_psf(result):
    with pytest.raises(ValueError):
        forced_photometry(np.zeros((10, 10)), np.ones((10, 10)), None, 5.0, 5.0, BrokenPSF(result))


def test_threads_give_the_serial_answer():
    """The kernel releases the GIL and keeps no shared state: concurrent calls agree with a serial one."""
    from concurrent.futures import ThreadPoolExecutor
    x, y = grid(6, 30.0, 25.0)
    image, var, mask, psf = scene(x, y, np.full(x.size, 5e4), (200, 200), key=(3, 3, 3))
    serial = forced_photometry(image, var, mask, x, y, psf)
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: forced_photometry(image, var, mask, x, y, psf), range(4)))
    for r in results:
        np.testing.assert_array_equal(r, serial)


def test_bench_smoke():
    res = bench_forced(60, 300, 300, 1, repeat=1, photutils=False)
    assert res["ours_best_s"] > 0 and any("ours:" in line for line in res["lines"])
    pytest.importorskip("photutils")
    res = bench_forced(60, 300, 300, 1, repeat=1)
    assert res["speedup"] > 1 and abs(res["ratio_median"] - 1) < 0.02
