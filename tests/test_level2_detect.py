"""Level 2 background estimation and detection on images made with twinkles_hpc.imsim: background accuracy,
completeness, false detections against the Gaussian expectation, centroid errors against theory,
deblending, masks and input checks."""
import math

import numpy as np
import pytest
from scipy.spatial import cKDTree
from scipy.special import ndtr

from twinkles_hpc.imsim.noise import add_sky_and_noise
from twinkles_hpc.imsim.psf import PSFModel
from twinkles_hpc.imsim.render import add_gaussians, render_points
from twinkles_hpc.level2.background import Background, BackgroundConfig, estimate_background, mesh_edges
from twinkles_hpc.level2.detect import (DETECTION_DTYPE, FLAG_DEBLENDED, FLAG_EDGE, FLAG_MASKED, FWHM_PER_SIGMA,
                                        detect, filter_variance, leaves, matched_filter)

SKY, RN = 900.0, 8.8                       # electrons per pixel, electrons rms
SIGMA = math.sqrt(SKY + RN ** 2)           # pixel noise, electrons
FWHM_PX = 3.5                              # 0.7" at 0.2"/px
S_PSF = FWHM_PX / FWHM_PER_SIGMA


def psf(n):
    return PSFModel(0.7, nx=n, ny=n, fwhm_gradient=0.0, ellip_gradient=0.0)


def noisy(expected, key, sky=SKY):
    """imsim eimage (float32 electrons) of `expected` object electrons on a flat sky."""
    return add_sky_and_noise(expected, sky, RN, key)[0]


def star_grid(n, size, margin, seed):
    """n positions on a jittered grid (no two closer than (size - 2 margin) / sqrt(n) - 1 px)."""
    k = int(math.ceil(math.sqrt(n)))
    step = (size - 2 * margin) / (k - 1)
    x, y = np.meshgrid(np.arange(k) * step + margin, np.arange(k) * step + margin)
    rng = np.random.default_rng(seed)
    return x.ravel()[:n] + rng.uniform(-0.5, 0.5, n), y.ravel()[:n] + rng.uniform(-0.5, 0.5, n)


def snr_per_electron(draw):
    """Matched-filter detection SNR of a 1-electron source drawn by draw(image, x, y) on noise SIGMA."""
    one = np.zeros((64, 64))
    draw(one, 32.0, 32.0)
    S, V = matched_filter(one, np.full(one.shape, SIGMA ** 2), FWHM_PX)
    return float(S[32, 32] / np.sqrt(V[32, 32]))


def matches(cat, x, y, radius=2.0):
    """(index into the leaves of cat for each true position or -1, leaves)."""
    leaf = cat[leaves(cat)]
    d, i = cKDTree(np.c_[leaf["x"], leaf["y"]]).query(np.c_[x, y], distance_upper_bound=radius)
    return np.where(np.isfinite(d), i, -1), leaf


# ------------------------------------------------------------------ background
@pytest.mark.parametrize("slope", [(0.0, 0.0), (0.01, 0.006)])
def test_background_flat_and_gradient(slope):
    """Pure sky (and a linear gradient of 10 + 6 e- per 1000 px): the background recovered per pixel.

    Achievable: image mean offset about -0.013 sigma with the SExtractor estimator (it finds the mode, and
    the Poisson sky's mode lies gamma sigma / 2 below its mean, gamma = sky / sigma^3), per-pixel errors
    < 0.05 sigma between the outer mesh centres and < 0.1 sigma in the extrapolated half meshes at the edges.
    """
    n = 1024
    yy, xx = np.mgrid[:n, :n]
    extra = slope[0] * xx + slope[1] * yy
    truth = SKY + extra
    sigma = np.sqrt(truth + RN ** 2)
    image = noisy(extra, (1, 2, 0))
    bkg = estimate_background(image)
    assert bkg.mesh.shape == (8, 8)
    d = (bkg.image() - truth) / sigma
    inner = (xx >= 64) & (xx < n - 64) & (yy >= 64) & (yy < n - 64)
    assert -0.02 < d.mean() < -0.005
    assert np.abs(d[inner]).max() < 0.05
    assert np.abs(d).max() < 0.1
    assert bkg.rms_image().dtype == np.float32
    rms = bkg.rms_image() / sigma - 1                      # 0.55% statistical error per mesh
    assert abs(rms.mean()) < 0.003 and np.abs(rms).max() < 0.02
    # the clipped mean has no mode offset: < 0.5% of sigma on average
    mean_bkg = estimate_background(image, config=BackgroundConfig(mode_estimator="mean"))
    assert abs(((mean_bkg.image() - truth) / sigma).mean()) < 0.005


def test_background_with_stars_masks_and_bad_meshes():
    n = 1024
    x, y = star_grid(300, n, 10, seed=1)
    flux = 10 ** np.random.default_rng(2).uniform(3, 6, x.size)      # 1e3-1e6 e-: SNR 5 to saturation
    expected = np.zeros((n, n))
    render_points(expected, x, y, flux, psf(n))
    image = noisy(expected, (1, 2, 1))
    d = (estimate_background(image).image() - SKY) / SIGMA
    assert abs(d.mean()) < 0.05 and np.abs(d).max() < 0.15
    # masked pixels are ignored, whatever they hold (NaN included); a fully masked mesh takes its neighbour's
    mask = np.zeros((n, n), bool)
    mask[300:600, 200:700] = True
    mask[:128, :128] = True
    junk = image.copy()
    junk[mask] = np.nan
    junk[300:400, 200:700] = 1e6
    a = estimate_background(image, mask=mask)
    b = estimate_background(junk, mask=mask)
    np.testing.assert_array_equal(a.mesh, b.mesh)
    assert abs((b.image() - SKY).mean() / SIGMA) < 0.05
    with pytest.raises(ValueError, match=r"image\[\d+, \d+\] is not finite"):
        estimate_background(junk)
    # a stored mesh rebuilds the same image
    np.testing.assert_array_equal(Background.from_mesh(b.mesh.astype(np.float32), (n, n)).image(),
                                  Background(b.mesh.astype(np.float32), b.mesh_rms, (n, n)).image())
    with pytest.raises(ValueError, match="estimated on"):
        b.image((n, n + 1))
    with pytest.raises(ValueError):
        estimate_background(image, mask=np.ones((n, n), bool))
    with pytest.raises(ValueError):
        estimate_background(image, config=BackgroundConfig(mode_estimator="mode"))
    with pytest.raises(ValueError):
        estimate_background(image[None])


def test_mesh_layout_and_quantised_median():
    assert list(mesh_edges(4000, 128)) == list((np.arange(32) * 4000) // 31)
    assert list(mesh_edges(100, 128)) == [0, 100]
    # integer data whose true median sits between integers: bins edged at half-integers interpolate it
    rng = np.random.default_rng(5)
    image = np.round(rng.normal(100.3, 3.0, (512, 512))).astype(np.float32)
    for est in ("median", "sextractor"):
        bkg = estimate_background(image, config=BackgroundConfig(mode_estimator=est))
        assert abs(bkg.global_level - 100.3) < 0.05


# ------------------------------------------------------------------ detection
def test_completeness_snr10_and_no_false_detections():
    n = 1024
    x, y = star_grid(400, n, 16, seed=3)
    p = psf(n)
    per_e = snr_per_electron(lambda im, a, b: render_points(im, a, b, 1.0, p))
    snr = np.linspace(10, 30, x.size)
    expected = np.zeros((n, n))
    render_points(expected, x, y, snr / per_e, p)
    image = noisy(expected, (3, 1, 0)) - np.float32(SKY)
    cat, labels = detect(image, np.full(image.shape, SIGMA ** 2, np.float32))
    idx, leaf = matches(cat, x, y)
    assert (idx >= 0).all()                               # 100% complete at SNR >= 10
    assert len(leaf) == x.size                            # no false detections, no split stars
    assert cat.dtype == np.dtype(DETECTION_DTYPE) and labels.dtype == np.int32
    assert (cat["id"] == np.arange(1, len(cat) + 1)).all()


def test_false_detections_on_pure_noise_match_gaussian_expectation():
    """Pure noise, 4.2 Mpx. Pixels above u sigma of the matched-filter noise: the Gaussian tail Phi(-u) (plus
    ~3% at 3 sigma from the Poisson sky's skewness). Components above 4 sigma: the expected Euler
    characteristic of a Gaussian random field smoothed by a Gaussian of sigma s, A u exp(-u^2/2) /
    ((2 pi)^(3/2) 2 s^2) = 81 here; the pixel lattice finds 10-20% fewer (it misses excursions too small
    to hold a pixel centre; 65 here). At 5 sigma the expectation is 1.1 per 4 Mpx, fewer with >= 5 px."""
    n = 2048
    image = noisy(np.zeros((n, n)), (4, 0, 0)) - np.float32(SKY)
    var = np.full(image.shape, SIGMA ** 2, np.float32)
    _, labels = detect(image, var, threshold=3.0, min_npix=1, deblend=False)
    assert (labels > 0).sum() / (n * n * ndtr(-3.0)) == pytest.approx(1.0, abs=0.1)
    cat, _ = detect(image, var, threshold=4.0, min_npix=1, deblend=False)
    expected = n * n * 4.0 * math.exp(-8.0) / ((2 * math.pi) ** 1.5 * 2 * S_PSF ** 2)
    assert 0.7 * expected < len(cat) < 1.05 * expected
    cat, _ = detect(image, var)
    assert len(cat) <= 2


def test_centroids_bright_and_snr20():
    """Noise-free stars: centroid bias < 1e-4 px. Bright stars (sky SNR 1000, ~1.7e5 e-, so their own
    shot noise dominates): rms error per axis < 0.01 px (about 0.007). SNR 20: rms error per axis
    consistent with sqrt(2) sigma_psf / SNR for a Gaussian PSF (its Cramer-Rao bound), and with the
    Cramer-Rao bound of the Kolmogorov-like imsim PSF."""
    n = 1024
    x, y = star_grid(400, n, 16, seed=4)
    p = psf(n)
    s2 = S_PSF ** 2 + 1.0 / 12.0                           # Gaussian PSF + pixel, px^2

    def gauss(im, a, b, f):
        add_gaussians(im, a, b, f, s2, 0.0, s2, threshold=0.0)

    def kolmo(im, a, b, f):
        render_points(im, a, b, f, p)

    var = np.full((n, n), SIGMA ** 2, np.float32)
    for draw, bound in ((gauss, None), (kolmo, "crb")):
        per_e = snr_per_electron(lambda im, a, b: draw(im, a, b, 1.0))
        expected = np.zeros((n, n))
        draw(expected, x, y, 1000.0 / per_e)
        cat, _ = detect(expected, var)
        idx, leaf = matches(cat, x, y)
        assert np.hypot(leaf["x"][idx] - x, leaf["y"][idx] - y).max() < 1e-4
        cat, _ = detect(noisy(expected, (5, 0, 0)) - np.float32(SKY), var)
        idx, leaf = matches(cat, x, y)
        assert (idx >= 0).all()
        assert np.sqrt(np.mean((leaf["x"][idx] - x) ** 2 + (leaf["y"][idx] - y) ** 2) / 2) < 0.01
        flux = 20.0 / per_e
        expected = np.zeros((n, n))
        draw(expected, x, y, flux)
        err = []
        for k in range(3):
            cat, _ = detect(noisy(expected, (5, 1, k)) - np.float32(SKY), var)
            idx, leaf = matches(cat, x, y)
            ok = idx >= 0
            err.append(np.r_[leaf["x"][idx[ok]] - x[ok], leaf["y"][idx[ok]] - y[ok]])
        rms = np.concatenate(err).std()                    # 2400 samples: 1.5% statistical error
        if bound is None:
            predicted = math.sqrt(2.0 * s2) / 20.0
        else:                                              # 1 / sqrt(Fisher information) per axis
            h = 0.01
            a, b = np.zeros((64, 64)), np.zeros((64, 64))
            draw(a, 32.0 + h, 32.0, flux)
            draw(b, 32.0 - h, 32.0, flux)
            predicted = 1.0 / math.sqrt((((a - b) / (2 * h)) ** 2).sum() / SIGMA ** 2)
        assert rms / predicted == pytest.approx(1.0, abs=0.1)


def test_deblend_two_stars_two_fwhm_apart():
    n = 64
    x, y = np.array([28.3, 28.3 + 2 * FWHM_PX]), np.array([31.6, 32.1])
    expected = np.zeros((n, n))
    render_points(expected, x, y, np.array([60000.0, 40000.0]), psf(n))
    image = noisy(expected, (6, 0, 0)) - np.float32(SKY)
    var = np.maximum(image + np.float32(SKY), 0) + np.float32(RN ** 2)
    cat, labels = detect(image, var)
    assert len(cat) == 3
    parent, kids = cat[0], cat[1:]
    assert parent["flags"] & FLAG_DEBLENDED and parent["parent"] == 0
    assert (kids["parent"] == parent["id"]).all() and not (kids["flags"] & FLAG_DEBLENDED).any()
    assert kids["peak_value"][0] > kids["peak_value"][1]           # children by decreasing peak
    np.testing.assert_allclose(kids["x"], x, atol=0.2)
    np.testing.assert_allclose(kids["y"], y, atol=0.2)
    # labels hold the leaves; fluxes, errors and pixel counts add up
    for r in kids:
        on = labels == r["id"]
        assert on.sum() == r["npix"]
        assert r["flux"] == pytest.approx(image[on].sum(dtype=np.float64), rel=1e-9)
        assert r["flux_err"] == pytest.approx(math.sqrt(var[on].sum(dtype=np.float64)), rel=1e-6)
    assert parent["npix"] == kids["npix"].sum() and parent["flux"] == pytest.approx(kids["flux"].sum())
    assert not (labels == parent["id"]).any()
    assert kids["flux"] / np.array([60000.0, 40000.0]) == pytest.approx(1.0, abs=0.1)
    single, lab1 = detect(image, var, deblend=False)
    assert len(single) == 1 and single["parent"][0] == 0 and single["flags"][0] == 0
    np.testing.assert_array_equal(lab1 > 0, labels > 0)


def test_masks_edges_and_moments():
    n = 128
    x, y = np.array([40.2, 90.7, 1.5]), np.array([60.4, 61.1, 100.2])
    expected = np.zeros((n, n))
    render_points(expected, x, y, np.full(3, 2e4), psf(n))
    add_gaussians(expected, 64.0, 20.0, 3e4, 9.0, 2.0, 4.0, threshold=0.0)    # an elliptical source
    image = noisy(expected, (7, 0, 0)) - np.float32(SKY)
    var = np.full(image.shape, SIGMA ** 2, np.float32)
    mask = np.zeros((n, n), bool)
    mask[50:72, 80:102] = True                             # hides the second star
    mask[60, 44] = True                                    # one pixel inside the first star's window
    image[55:60, 85:90] = np.nan
    var[55:60, 85:90] = -1
    cat, labels = detect(image, var, mask=mask)
    assert not labels[mask].any()
    idx, leaf = matches(cat, x, y)
    assert idx[0] >= 0 and idx[1] < 0 and idx[2] >= 0
    assert leaf["flags"][idx[0]] & FLAG_MASKED and not leaf["flags"][idx[0]] & FLAG_EDGE
    assert leaf["flags"][idx[2]] & FLAG_EDGE
    # pixels are used in mirrored pairs: centroids stay unbiased next to a masked pixel and the edge
    for k in (0, 2):
        assert abs(leaf["x"][idx[k]] - x[k]) < 0.1 and abs(leaf["y"][idx[k]] - y[k]) < 0.1
    (g,) = matches(cat, [64.0], [20.0])[0]
    gal = leaf[g]
    # isophotal moments of the footprint: truncated at the isophote, so smaller than the true (9, 4, 2)
    assert 0.6 * 9 < gal["xx"] < 9 + 1 / 12 and 0.6 * 4 < gal["yy"] < 4 + 1 / 12 and 0.5 * 2 < gal["xy"] < 2


def test_saturated_cores_are_one_source_each():
    """Saturated stars with their cores masked: the ring of peaks around each masked core is one source; a
    companion 4 FWHM from one of them is still deblended."""
    n = 256
    x, y = star_grid(9, n, 40, seed=1)
    expected = np.zeros((n, n))
    render_points(expected, x, y, np.full(9, 3e7), psf(n))
    render_points(expected, x[4] + 4 * FWHM_PX, y[4] + 1.0, 3e5, psf(n))
    image = add_sky_and_noise(expected, SKY, RN, (8, 0, 0), full_well=1e5)[0]
    sat = image >= 1e5
    assert sat.sum() > 9 * 20
    var = (np.maximum(image, 0) + RN ** 2).astype(np.float32)
    cat, labels = detect(image - np.float32(SKY), var, mask=sat)
    idx, leaf = matches(cat, np.r_[x, x[4] + 4 * FWHM_PX], np.r_[y, y[4] + 1.0], radius=1.0)
    assert (idx >= 0).all() and len(leaf) == 10
    assert (cat["flags"] & FLAG_DEBLENDED).sum() == 1


@pytest.mark.parametrize("case", ["nan_image", "inf_variance", "negative_variance", "shape", "ndim", "mask_shape",
                                  "threshold", "fwhm", "min_npix"])
def test_bad_input_raises(case):
    image = np.zeros((32, 40), np.float32)
    var = np.ones((32, 40), np.float32)
    kw = {}
    if case == "nan_image":
        image[3, 5] = np.nan
    elif case == "inf_variance":
        var[4, 6] = np.inf
    elif case == "negative_variance":
        var[4, 6] = -1.0
    elif case == "shape":
        var = var[:, :-1]
    elif case == "ndim":
        image = image[None]
    elif case == "mask_shape":
        kw["mask"] = np.zeros((32, 41), bool)
    elif case in ("threshold", "fwhm", "min_npix"):
        kw[{"threshold": "threshold", "fwhm": "kernel_fwhm_px", "min_npix": "min_npix"}[case]] = \
            {"threshold": np.nan, "fwhm": 0.0, "min_npix": 0}[case]
    with pytest.raises(ValueError) as e:
        detect(image, var, **kw)
    if case == "nan_image":
        assert "image[3, 5]" in str(e.value)
    if case in ("inf_variance", "negative_variance"):
        assert "variance[4, 6]" in str(e.value)


def test_kernels_release_the_gil_and_are_deterministic():
    """Two threads detecting at once give the serial results, bit for bit."""
    from concurrent.futures import ThreadPoolExecutor
    n = 512
    x, y = star_grid(100, n, 10, seed=9)
    expected = np.zeros((n, n))
    render_points(expected, x, y, np.full(x.size, 5e3), psf(n))
    image = noisy(expected, (9, 0, 0))
    var = np.full(image.shape, SIGMA ** 2, np.float32)

    def run(_):
        bkg = estimate_background(image)
        return bkg.mesh, detect(image - bkg.image(), var)

    serial = run(0)
    with ThreadPoolExecutor(2) as pool:
        for mesh, (cat, labels) in pool.map(run, range(4)):
            np.testing.assert_array_equal(mesh, serial[0])
            np.testing.assert_array_equal(cat, serial[1][0])
            np.testing.assert_array_equal(labels, serial[1][1])


def test_empty_image_gives_empty_catalogue():
    cat, labels = detect(np.zeros((50, 60)), np.ones((50, 60)))
    assert len(cat) == 0 and cat.dtype == np.dtype(DETECTION_DTYPE) and not labels.any()


def test_precomputed_filter_gives_the_same_catalogue():
    """detect(filtered=matched_filter(...)) is detect alone, bit for bit; filter_variance is matched_filter's
    V_S; filtered planes of another shape are refused."""
    n = 64
    expected = np.zeros((n, n))
    render_points(expected, np.array([20.5, 40.0, 41.0]), np.array([30.0, 12.5, 50.0]),
                  np.array([30000.0, 15000.0, 20000.0]), psf(n))
    image = noisy(expected, (7, 0, 0)) - np.float32(SKY)
    var = np.maximum(image + np.float32(SKY), 0) + np.float32(RN ** 2)
    mask = np.zeros(image.shape, bool)
    mask[48:52, 38:44] = True                        # on the third star
    s, vs = matched_filter(image, var, FWHM_PX, mask=mask)
    assert np.array_equal(filter_variance(var, FWHM_PX, mask=mask), vs)
    cat, labels = detect(image, var, mask=mask)
    cat2, labels2 = detect(image, var, mask=mask, filtered=(s, vs))
    assert len(cat) == 3 and cat.tobytes() == cat2.tobytes() and np.array_equal(labels, labels2)
    with pytest.raises(ValueError, match="filtered planes"):
        detect(image, var, filtered=(s[1:], vs[1:]))


def test_detection_band_is_the_box_minimum_formula():
    """The Objects' detection image, one band (level2.background.add_detection_band): the source-free
    variance s2 is the (2h + 1)^2 box minimum of the variance over the good pixels with the edges repeated
    (scipy's minimum_filter(mode="nearest")), and D, V, n, the mask are the numpy formula's bit for bit, on
    shapes smaller and larger than the box, with non-finite, zero-variance and NO_DATA pixels."""
    from scipy import ndimage

    from twinkles_hpc.level2.background import add_detection_band
    NO_DATA = 16
    rng = np.random.default_rng(8)
    for shape, h in (((50, 37), 15), ((5, 200), 3), ((300, 4), 2), ((1, 1), 15), ((64, 64), 0), ((97, 600), 15)):
        img = rng.normal(0, 10, shape).astype(np.float32)
        var = rng.uniform(50, 150, shape).astype(np.float32)
        mask = np.where(rng.random(shape) < 0.05, NO_DATA, 0).astype(np.uint16) | np.uint16(2)
        img[rng.random(shape) < 0.03] = np.nan
        var[rng.random(shape) < 0.03] = 0.0
        sums = [np.full(shape, 0.5), np.full(shape, 0.25), np.ones(shape, np.int32), np.full(shape, 4, np.uint16)]
        want = [a.copy() for a in sums]
        add_detection_band(sums, img, var, mask, NO_DATA, h)
        good = np.isfinite(img) & np.isfinite(var) & (var > 0) & ((mask & NO_DATA) == 0)
        s2 = ndimage.minimum_filter(np.where(good, var, np.inf).astype(np.float32), size=2 * h + 1, mode="nearest")
        ok = good & np.isfinite(s2) & (s2 > 0)
        with np.errstate(invalid="ignore", divide="ignore"):
            np.add(want[0], img / np.sqrt(s2), out=want[0], where=ok)
            np.add(want[1], var / s2, out=want[1], where=ok)
        want[2] += ok
        want[3] |= mask
        for got, w in zip(sums, want):
            assert np.array_equal(got, w), (shape, h)
