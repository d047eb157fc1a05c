"""PSF-matched image subtraction (twinkles_hpc.timedomain.diffim, docs/diffim.md).

Synthetic scenes made here with numpy: a few hundred stars with Gaussian or elliptical Gaussian PSFs
(3 x 3 sub-sampled), Poisson-like Gaussian noise on a sky level (the science a single visit, the template
deeper), a differential background in the science image. The algorithm sees only the pixels, their
variance, and the kernel candidates a pipeline would pick: bright isolated stars from the test's own star
list above a flux cut. Criteria: residual / sigma RMS in 7 x 7 stamps around bright stars <= 1.02; blank
sky flux / sigma mean 0 +- 0.02 and sd 1 +- 0.03; a variable source's flux change within 3 sigma.
"""
import numpy as np
import pytest
from scipy.signal import fftconvolve

from twinkles_hpc.timedomain import convolve, diffim
from twinkles_hpc.timedomain.diffim import DiffimConfig, KernelSolution, subtract_images

N = 512
SKY_SCIENCE, SKY_TEMPLATE = 1000.0, 100.0        # variance of the sky (e-^2): one visit, a deeper coadd
TEMPLATE_DEPTH = 10.0                             # the template's source variance is flux / depth
BACKGROUND = (3.0, 2.0, -1.5)                     # science - template: offset, x and y slopes across the image
EDGE, NO_DATA, CR = 4, 16, 2
#: variable sources at pixel centres: (x, y, template flux, science flux)
VARIABLES = ((140.0, 300.0, 5e4, 8e4), (380.0, 120.0, 3e4, 1e4), (260.0, 420.0, 0.0, 2e4))


def render(x, y, flux, cov, half=14, sub=3):
    """Sum of elliptical Gaussians (cov (n, 3): ixx, iyy, ixy in px^2) averaged over sub x sub points per
    pixel, each normalised to its flux on its stamp."""
    img = np.zeros((N, N))
    ix, iy = np.rint(x).astype(int), np.rint(y).astype(int)
    o = np.arange(-half, half + 1)
    so = (np.arange(sub) + 0.5) / sub - 0.5
    dx = ((ix - x)[:, None] + o)[:, :, None] + so              # (n, S, sub)
    dy = ((iy - y)[:, None] + o)[:, :, None] + so
    ixx, iyy, ixy = (c[:, None, None, None, None] for c in cov.T)
    det = ixx * iyy - ixy ** 2
    ddx, ddy = dx[:, None, :, None, :], dy[:, :, None, :, None]
    p = np.exp(-0.5 * (iyy * ddx ** 2 - 2 * ixy * ddx * ddy + ixx * ddy ** 2) / det).mean((3, 4))
    p *= (flux / p.sum((1, 2)))[:, None, None]
    for k in range(x.size):
        ys, xs = iy[k] + o, ix[k] + o
        my, mx = (ys >= 0) & (ys < N), (xs >= 0) & (xs < N)
        img[np.ix_(ys[my], xs[mx])] += p[k][np.ix_(my, mx)]
    return img


def round_cov(sigma, n):
    s2 = np.broadcast_to(np.asarray(sigma, float) ** 2, (n,))
    return np.stack([s2, s2, np.zeros(n)], axis=1)


def make_scene(cov_template, cov_science, *, seed=1, n_stars=300, variables=False):
    """cov_*: function (x, y) -> (n, 3) PSF moments. Returns a dict of the planes and the star list."""
    rng = np.random.default_rng(seed)
    x, y = rng.uniform(4, N - 5, n_stars), rng.uniform(4, N - 5, n_stars)
    flux = 10 ** rng.uniform(3.0, 5.3, n_stars)
    variable = np.zeros(n_stars, bool)
    if variables:                          # isolated: no other star within 20 px
        v = np.array(VARIABLES)
        far = np.hypot(x[:, None] - v[:, 0], y[:, None] - v[:, 1]).min(1) > 20
        x, y, flux = np.r_[x[far], v[:, 0]], np.r_[y[far], v[:, 1]], np.r_[flux[far], np.maximum(v[:, 2], v[:, 3])]
        variable = np.r_[variable[far], np.ones(len(v), bool)]
    ft, fs = flux.copy(), flux.copy()
    if variables:
        ft[-len(v):], fs[-len(v):] = v[:, 2], v[:, 3]
    mt = render(x, y, ft, cov_template(x, y))
    ms = render(x, y, fs, cov_science(x, y))
    yy, xx = np.mgrid[0:N, 0:N] / (N - 1) - 0.5
    bg = BACKGROUND[0] + BACKGROUND[1] * xx + BACKGROUND[2] * yy
    var_t, var_s = mt / TEMPLATE_DEPTH + SKY_TEMPLATE, ms + SKY_SCIENCE
    template = mt + rng.standard_normal(mt.shape) * np.sqrt(var_t)
    science = ms + bg + rng.standard_normal(ms.shape) * np.sqrt(var_s)
    return dict(science=science.astype(np.float32), template=template.astype(np.float32),
                var_s=var_s.astype(np.float32), var_t=var_t.astype(np.float32), x=x, y=y, flux=flux,
                variable=variable)


def candidates(scene, flux_cut=1e4, isolation=15.0):
    """Bright isolated stars of the test's own list, as a pipeline picks them from its source table."""
    x, y, f = scene["x"], scene["y"], scene["flux"]
    d = np.hypot(x[:, None] - x[None], y[:, None] - y[None])
    np.fill_diagonal(d, np.inf)
    keep = (f > flux_cut) & (d.min(1) > isolation)
    return x[keep], y[keep]


def subtract(scene, **cfg):
    return subtract_images(scene["science"], scene["template"], *candidates(scene),
                           science_variance=scene["var_s"], template_variance=scene["var_t"],
                           config=DiffimConfig(**cfg))


def stamp_rms(image, variance, scene, half=3, flux_cut=1e4):
    """RMS of image / sqrt(variance) over (2 half + 1)^2 stamps around the bright non-variable stars."""
    ix, iy = np.rint(scene["x"]).astype(int), np.rint(scene["y"]).astype(int)
    inside = (ix >= 20) & (ix < N - 20) & (iy >= 20) & (iy < N - 20) & (scene["flux"] > flux_cut) & ~scene["variable"]
    o = np.arange(-half, half + 1)
    z = (image / np.sqrt(variance))[(iy[inside, None] + o)[:, :, None], (ix[inside, None] + o)[:, None, :]]
    z = z[np.isfinite(z).all((1, 2))]
    assert z.shape[0] >= 30
    return float(np.sqrt(np.mean(z ** 2)))


def blank_pixels(result, scene, radius=12.0):
    """flux / sigma of the valid pixels farther than radius from every star."""
    yy, xx = np.mgrid[0:N, 0:N]
    far = np.ones((N, N), bool)
    for x, y in zip(scene["x"], scene["y"]):
        x0, x1, y0, y1 = int(x - radius), int(x + radius) + 2, int(y - radius), int(y + radius) + 2
        sl = (slice(max(y0, 0), max(y1, 0)), slice(max(x0, 0), max(x1, 0)))
        far[sl] &= np.hypot(xx[sl] - x, yy[sl] - y) > radius
    z = result.image / np.sqrt(result.variance)
    return z[far & np.isfinite(z)]


def psf_flux(image, variance, psf, x, y):
    """Linear PSF fit at a pixel centre with constant weights: flux, its sigma from the variance plane."""
    h = psf.shape[0] // 2
    ix, iy = int(x), int(y)
    d = image[iy - h:iy + h + 1, ix - h:ix + h + 1].astype(np.float64)
    v = variance[iy - h:iy + h + 1, ix - h:ix + h + 1].astype(np.float64)
    p = psf.astype(np.float64)
    spp = (p * p).sum()
    return (p * d).sum() / spp, np.sqrt((p * p * v).sum()) / spp


def gaussians(sig):
    return lambda x, y: round_cov(sig, x.size)


@pytest.fixture(scope="module")
def round_scene():
    return make_scene(gaussians(1.3), gaussians(1.7), variables=True)


@pytest.fixture(scope="module")
def round_result(round_scene):
    return subtract(round_scene)


# ---------------------------------------------------------------------------------------- (a) round PSFs
def test_round_psfs_template_sharper(round_scene, round_result):
    res = round_result
    s = res.summary
    assert s["direction"] == "template"
    assert res.image.dtype == res.variance.dtype == np.float32 and res.mask.dtype == np.uint16
    assert s["n_used"] >= 20 and s["n_used"] + s["n_rejected"] == s["n_fitted"] == s["n_usable"]
    assert s["n_usable"] <= s["n_examined"] <= s["n_candidates"]
    assert abs(s["kernel_sum"] - 1.0) < 0.01
    assert abs(s["background"] - BACKGROUND[0]) < 0.5
    assert 0.9 < s["chi2_dof"] < 1.1
    assert abs(s["fwhm_science"] - 1.7 * diffim.FWHM_PER_SIGMA) < 0.1
    assert stamp_rms(res.image, res.variance, round_scene) <= 1.02
    assert abs(res.psf.sum() - 1.0) < 1e-5


def test_criterion_fails_for_a_wrong_kernel(round_scene):
    """The identity kernel (no PSF matching) fails criterion (a) by far."""
    sc = round_scene
    diff = sc["science"] - sc["template"]
    assert stamp_rms(diff, sc["var_s"] + sc["var_t"], sc) > 2.0


# ------------------------------------------------------------------------------------ (b) elliptical PSFs
def test_elliptical_psfs():
    def cov(m):
        return lambda x, y: np.tile(m, (x.size, 1))
    sc = make_scene(cov((2.0, 1.6, -0.3)), cov((3.4, 2.6, 0.5)), seed=2)
    res = subtract(sc)
    assert res.summary["direction"] == "template"
    assert stamp_rms(res.image, res.variance, sc) <= 1.02


# ------------------------------------------------------------------------------- (c) spatially varying PSF
def test_psf_varying_across_the_image():
    """The science PSF's sigma grows linearly from 1.6 to 1.95 px across x: spatial order 2 matches it."""
    sc = make_scene(gaussians(1.3), lambda x, y: round_cov(1.6 + 0.35 * x / N, x.size), seed=3, n_stars=400)
    res = subtract(sc, spatial_order=2)
    assert stamp_rms(res.image, res.variance, sc) <= 1.02
    const = subtract(sc, spatial_order=0)
    assert stamp_rms(const.image, const.variance, sc) > 1.05


# ------------------------------------------------------------------------------- (d) science sharper
@pytest.fixture(scope="module")
def sharp_scene():
    return make_scene(gaussians(1.7), gaussians(1.3), seed=4, variables=True)


@pytest.fixture(scope="module")
def sharp_result(sharp_scene):
    return subtract(sharp_scene)


def test_science_sharper_switches_direction(sharp_scene, sharp_result):
    res = sharp_result
    assert res.summary["direction"] == "science"
    assert abs(res.summary["kernel_sum"] - 1.0) < 0.01
    assert stamp_rms(res.image, res.variance, sharp_scene) <= 1.02
    forced = subtract(sharp_scene, direction="template")      # deconvolution: what Twinkles hit
    assert stamp_rms(forced.image, forced.variance, sharp_scene) > 1.02


# ------------------------------------------------------------------------------- (e) a variable source
@pytest.mark.parametrize("which", ["round", "sharp"])
def test_variable_sources_recovered(which, round_scene, round_result, sharp_scene, sharp_result):
    scene, res = (round_scene, round_result) if which == "round" else (sharp_scene, sharp_result)
    for x, y, f_template, f_science in VARIABLES:
        flux, err = psf_flux(res.image, res.variance, res.psf, x, y)
        assert abs(flux - (f_science - f_template)) < 3 * err, (x, y, flux, err)
    assert res.summary["n_rejected"] >= 1           # the bright variables were candidates, and were clipped


# ------------------------------------------------------------------------------- (f) blank sky
def blank_positions(scene, n=3000, seed=0, radius=15.0):
    """Pixel centres at least `radius` from every star, 40 px inside the image."""
    rng = np.random.default_rng(seed)
    x, y = rng.integers(40, N - 40, n), rng.integers(40, N - 40, n)
    far = np.hypot(x[:, None] - scene["x"], y[:, None] - scene["y"]).min(1) > radius
    return x[far], y[far]


def forced_z(result, scene):
    """PSF flux / sigma at blank positions (forced photometry on blank sky)."""
    fe = np.array([psf_flux(result.image, result.variance, result.psf, x, y) for x, y in zip(*blank_positions(scene))])
    return fe[:, 0] / fe[:, 1]


@pytest.mark.parametrize("which", ["round", "sharp"])
def test_blank_sky_statistics(which, round_scene, round_result, sharp_scene, sharp_result):
    scene, res = (round_scene, round_result) if which == "round" else (sharp_scene, sharp_result)
    z = blank_pixels(res, scene)
    assert z.size > 50000
    assert abs(z.mean()) < 0.02
    assert abs(z.std() - 1.0) < 0.03
    z = forced_z(res, scene)
    assert z.size > 1000
    assert abs(z.mean()) < 0.1 and abs(z.std() - 1.0) < 0.05


def test_forced_photometry_needs_the_decorrelation(sharp_scene):
    """Without decorrelation the pixels are right one by one, but the PSF-flux errors are not."""
    res = subtract(sharp_scene, decorrelate=False)
    assert abs(blank_pixels(res, sharp_scene).std() - 1.0) < 0.03
    assert forced_z(res, sharp_scene).std() > 1.5


def test_preconvolution_against_the_direction_switch(sharp_scene, sharp_result):
    """Science sharper: convolving the science image and decorrelating gives smaller PSF-flux errors than
    pre-convolving it with its own PSF (a matched filter read at the source's pixel); both are unbiased
    with right errors."""
    pre = subtract(sharp_scene, preconvolve=True)
    assert pre.summary["direction"] == "preconvolved" and not pre.summary["decorrelated"]
    assert stamp_rms(pre.image, pre.variance, sharp_scene) <= 1.02
    c = pre.psf.shape[0] // 2
    p2 = float(pre.psf[c, c])                   # (P * P)(0) = sum P^2: the matched filter's response
    x, y = blank_positions(sharp_scene)
    f_pre, e_pre = pre.image[y, x] / p2, np.sqrt(pre.variance[y, x]) / p2
    assert abs(np.std(f_pre / e_pre) - 1.0) < 0.05
    for vx, vy, f_template, f_science in VARIABLES:
        f, e = pre.image[int(vy), int(vx)] / p2, np.sqrt(pre.variance[int(vy), int(vx)]) / p2
        assert abs(f - (f_science - f_template)) < 3 * e
    e_switch = np.array([psf_flux(sharp_result.image, sharp_result.variance, sharp_result.psf, a, b)[1]
                         for a, b in zip(x, y)])
    assert np.median(e_switch) < np.median(e_pre)


# ------------------------------------------------------------------------------- (g) bad input
def test_bad_input_raises(round_scene):
    sc = round_scene
    x, y = candidates(sc)
    kw = dict(science_variance=sc["var_s"], template_variance=sc["var_t"])
    with pytest.raises(ValueError, match="template image has shape"):
        subtract_images(sc["science"], sc["template"][:-1], x, y, **kw)
    with pytest.raises(ValueError, match="no kernel candidates given"):
        subtract_images(sc["science"], sc["template"], [], [], **kw)
    with pytest.raises(ValueError, match="no usable kernel candidates"):
        subtract_images(sc["science"], sc["template"], np.full(5, 2.0), np.full(5, 3.0), science_fwhm=4.0,
                        template_fwhm=3.0, science_psf=diffim.gaussian_psf(2.9, 2.9, 0.0), **kw)
    with pytest.raises(ValueError, match="cannot measure the science PSF"):
        subtract_images(sc["science"], sc["template"], np.full(5, 2.0), np.full(5, 3.0), **kw)
    nan = np.full_like(sc["science"], np.nan)
    with pytest.raises(ValueError, match="science image has no finite pixel"):
        subtract_images(nan, sc["template"], x, y, **kw)
    with pytest.raises(ValueError, match="too few usable kernel candidates"):
        subtract_images(sc["science"], sc["template"], x[:3], y[:3], **kw)
    with pytest.raises(ValueError, match="kernel_size"):
        DiffimConfig(kernel_size=20)


def test_template_without_data_in_a_corner(round_scene):
    """A warped template has no data (NaN image and variance, NO_DATA) where it does not reach: the rest of
    the difference stays defined and right (the typical variances skip the non-finite ones)."""
    sc = dict(round_scene)
    yy, xx = np.mgrid[0:N, 0:N]
    corner = xx + yy < 150
    sc["template"] = np.where(corner, np.float32(np.nan), sc["template"])
    sc["var_t"] = np.where(corner, np.float32(np.nan), sc["var_t"])
    x, y = candidates(sc)
    keep = x + y > 250
    res = subtract_images(sc["science"], sc["template"], x[keep], y[keep], science_variance=sc["var_s"],
                          template_variance=sc["var_t"], template_mask=np.where(corner, NO_DATA, 0).astype(np.uint16))
    inner = (xx + yy > 200) & (np.minimum(xx, yy) >= 20) & (np.maximum(xx, yy) < N - 20)
    assert np.isfinite(res.image[inner]).all() and np.isfinite(res.variance[inner]).all()
    assert (res.mask[corner] & NO_DATA).all()
    z = blank_pixels(res, sc)
    assert abs(z.std() - 1.0) < 0.03


# ------------------------------------------------------------------------------- (h) determinism
def test_bit_identical_twice(sharp_scene, sharp_result):
    again = subtract(sharp_scene)
    for name in ("image", "variance", "mask", "psf"):
        assert getattr(again, name).tobytes() == getattr(sharp_result, name).tobytes(), name
    assert again.summary == sharp_result.summary


# ------------------------------------------------------------------------------- the pieces
def test_basis_sums_and_orthonormal_functions():
    b = diffim.make_basis(3.0, 4.2)
    sums = b.images.sum((1, 2))
    assert abs(sums[0] - 1.0) < 1e-12 and np.abs(sums[1:]).max() < 1e-12
    for g in b.groups:
        f = b.functions[list(g)]
        assert np.allclose(f @ f.T, np.eye(len(g)), atol=1e-6)
    assert b.size == 21 and b.degrees == (6, 4, 2)           # 2 x max(2 FWHM, 4 sigma_widest) + 1


def test_convolution_is_the_spatially_varying_kernel_at_every_pixel(round_result, monkeypatch):
    """The separable passes equal the direct sum of K(x, y) over each pixel's neighbours, and the column
    strips (here 5 px wide, all pixels outside the 16- or 32-pixel vector blocks) change no bit."""
    sol = round_result.kernel
    rng = np.random.default_rng(7)
    sub = KernelSolution(sol.basis, sol.coeffs + rng.normal(0, 0.02, sol.coeffs.shape), sol.order, (48, 56))
    img = rng.normal(100.0, 30.0, (48, 56)).astype(np.float32)
    out, var, mask, _ = diffim.convolve_image(img, np.full_like(img, 4.0), None, sub)
    monkeypatch.setattr(convolve, "STRIP_WIDTH", 5)
    narrow = diffim.convolve_image(img, np.full_like(img, 4.0), None, sub)[0]
    assert narrow.tobytes() == out.tobytes()
    h = sol.basis.half
    ref = np.full(img.shape, np.nan)
    for y in range(h, 48 - h):
        for x in range(h, 56 - h):
            k = sub.kernel_image(x, y)
            ref[y, x] = (k[::-1, ::-1] * img[y - h:y + h + 1, x - h:x + h + 1]).sum()
            if (x, y) == (h + 3, 48 - h - 2):
                assert abs(var[y, x] / (4.0 * (k * k).sum()) - 1) < 0.01
    assert np.array_equal(np.isnan(out), np.isnan(ref))
    assert np.nanmax(np.abs(out - ref)) < 1e-5 * np.nanmax(np.abs(ref))
    assert (mask[:h] == EDGE | NO_DATA).all() and (mask[h:-h, h:-h] == 0).all()


def test_fit_stamps_are_the_valid_convolution_with_each_raw_basis_image():
    b = diffim.make_basis(3.1, 4.2)
    rng = np.random.default_rng(11)
    patches = rng.normal(0.0, 1.0, (3, 2 * b.half + 9, 2 * b.half + 9))
    out = np.full((3, b.pairs.shape[0] + 1, 81), np.nan)
    convolve._convolve_stamps(patches, b, out)
    assert np.isnan(out[:, -1]).all()                        # the row after the raw images is left alone
    for k, (e, j) in enumerate(b.pairs):
        raw = np.outer(b.functions[j], b.functions[e])       # [dv + half, du + half]
        for n in range(3):
            ref = fftconvolve(patches[n], raw, mode="valid").ravel()
            assert np.abs(out[n, k] - ref).max() < 1e-12 * np.abs(ref).max()


def test_box_erosion_of_the_usable_pixels():
    from numpy.lib.stride_tricks import sliding_window_view

    from twinkles_hpc.timedomain.kernel import _box_all
    ok = np.random.default_rng(2).random((4, 25, 25)) > 0.01
    rows = sliding_window_view(ok, 7, axis=2).all(-1)
    assert np.array_equal(_box_all(ok, 7), sliding_window_view(rows, 7, axis=1).all(-1))


@pytest.mark.parametrize("tol", [1e-5, 1e-2])
def test_separable_stamp_within_its_tolerance(tol):
    """The truncated SVD with trimmed ends (fewer taps than the SVD's support) stays within tol of the stamp."""
    k = diffim.gaussian_psf(1.5, 1.1, 0.3, half=9)
    phi = diffim.decorrelation_kernel(k, 1000.0, 100.0)[0]
    for stamp in (phi, k * k / (k * k).sum()):
        xf, yf, terms = convolve._svd_terms(stamp, tol)
        assert np.linalg.norm(np.einsum("ra,rb->ab", yf, xf) - stamp) <= tol * np.linalg.norm(stamp)
        assert (xf == 0).any() and (yf == 0).any()


def test_difference_flags_and_finishes():
    rng = np.random.default_rng(4)
    a, b = (rng.normal(0, 1, (6, 9)).astype(np.float32) for _ in range(2))
    va, vb = np.ones((6, 9), np.float32), np.full((6, 9), 2.0, np.float32)
    b[1, 2], va[3, 4], vb[5, 0] = np.nan, np.inf, np.nan
    bg = np.array([[0.5, 0.25], [-0.5, 0.0]])                  # 0.5 + 0.25 x - 0.5 y (scaled position)
    mask = np.zeros((6, 9), np.uint16)
    plane = convolve.padded_plane((6, 9), 2)
    invalid = convolve.difference(a, b, va, vb, mask, plane, add=bg)
    assert np.array_equal(np.argwhere(invalid), [[1, 2], [3, 4], [5, 0]])
    assert np.array_equal(mask != 0, invalid) and (mask[invalid] == NO_DATA).all()
    expect = a - b
    convolve._poly_op(expect, bg, 0)
    inside = plane[2:-2, 2:-2]
    assert inside[1, 2] == 0 and (plane[:2] == 0).all()
    assert np.array_equal(inside[~np.isnan(expect)], expect[~np.isnan(expect)])
    image, variance = convolve.finish_difference(plane, va, vb, 0.5, 2.0, invalid)
    assert np.isnan(image[invalid]).all() and np.isnan(variance[invalid]).all()
    assert np.array_equal(variance[~invalid], (va * np.float32(0.5) + np.float32(2.0) * vb)[~invalid])


def test_mask_bits_spread_over_the_kernel_footprint(round_result):
    sol = round_result.kernel
    sub = KernelSolution(sol.basis, sol.coeffs, sol.order, (64, 64))
    mask = np.zeros((64, 64), np.uint16)
    mask[30, 33] = CR
    img = np.zeros((64, 64), np.float32)
    img[40, 20] = np.nan
    _, _, out, _ = diffim.convolve_image(img, np.ones_like(img), mask, sub, mask_weight=0.05)
    k = sub.kernel_image(31.5, 31.5)
    fp = np.abs(k) >= 0.05 * np.abs(k).max()
    h = sol.basis.half
    got = (out[30 - h:30 + h + 1, 33 - h:33 + h + 1] & CR) != 0
    assert got[h, h] and got.sum() >= fp.sum() and got.sum() <= (2 * h + 1) ** 2
    assert out[40, 20] & NO_DATA and out[40, 22] & NO_DATA and not out[40, 20] & CR


def test_mask_is_the_or_over_the_footprint_for_any_stamp():
    """Every bit within the footprint (per stamp row, the span from the first to the last pixel with |K| >=
    mask_weight max |K|) reaches the output pixel, and no other: random bits under random, asymmetric
    stamps of 3 to 23 px (rows of every length, empty ones too), against the OR of the shifted masks."""
    rng = np.random.default_rng(17)
    for trial in range(12):
        side = int(rng.integers(1, 12)) * 2 + 1
        stamp = rng.normal(size=(side, side))
        stamp[side // 2, side // 2] = 10.0
        weight = float(rng.choice([0.01, 0.05, 0.2, 0.6]))
        mask = (rng.integers(0, 1 << 15, (40, 46)) * (rng.random((40, 46)) < 0.05)).astype(np.uint16)
        img = np.zeros(mask.shape, np.float32)
        out = diffim.convolve_image(img, np.ones_like(img), mask, stamp, mask_weight=weight)[2]
        h = side // 2
        want = np.zeros((40 - 2 * h, 46 - 2 * h), np.uint16)
        for a, row in enumerate(np.abs(stamp) >= weight * np.abs(stamp).max()):
            cols = np.flatnonzero(row)
            for du in range(cols[0] - h, cols[-1] - h + 1) if cols.size else ():
                want |= mask[2 * h - a:40 - a, h - du:46 - h - du]
        assert np.array_equal(out[h:40 - h, h:46 - h], want), (trial, side, weight)


def test_apply_stamp_is_the_zero_padded_convolution():
    """A stamp applied in real space (truncated SVD) equals the full convolution with zeros beyond the
    image, NaNs counted as 0, to the truncation's 1e-5."""
    rng = np.random.default_rng(5)
    img = rng.normal(0.0, 10.0, (70, 53)).astype(np.float32)
    img[3, 4] = np.nan
    stamp = diffim.decorrelation_kernel(diffim.gaussian_psf(1.5, 1.1, 0.3, half=6), 100.0, 1000.0)[0]
    got = convolve.apply_stamp(img, stamp)
    ref = fftconvolve(np.nan_to_num(img), stamp, mode="same")
    assert got.shape == img.shape and np.isfinite(got).all()
    assert np.abs(got - ref).max() < 1e-4 * np.abs(ref).max()


def test_decorrelation_kernel_keeps_flux_and_whitens():
    """Equal variances: box sums of the convolved difference's noise are 13% wider than independent pixels
    would give; decorrelated, they are white with variance s_r^2 + k(0)^2 s_c^2."""
    k = diffim.gaussian_psf(1.2, 1.2, 0.0, half=9)
    phi, alpha, beta = diffim.decorrelation_kernel(k, 1000.0, 1000.0)
    assert abs(phi.sum() - 1.0) < 1e-6 and phi.shape == (37, 37)
    assert abs(alpha * 1000.0 + beta * (k * k).sum() * 1000.0 - 2000.0) < 1e-6 * 2000
    rng = np.random.default_rng(3)
    noise = rng.normal(0, np.sqrt(1000.0), (512, 512)) - fftconvolve(rng.normal(0, np.sqrt(1000.0), (512, 512)), k,
                                                                     mode="same")
    white = diffim.decorrelate(noise, k, 1000.0, 1000.0)
    box = np.ones((3, 3))
    before = fftconvolve(noise, box, mode="same")[20:-20, 20:-20].std() / np.sqrt(9000 * (1 + (k * k).sum()))
    after = fftconvolve(white, box, mode="same")[20:-20, 20:-20].std() / np.sqrt(9 * 2000.0)
    assert before > 1.08 and abs(after - 1.0) < 0.02


def test_convolution_counts_non_finite_inputs_as_zero_with_no_data():
    """A NaN image pixel or an infinite variance counts as 0 in both planes and carries NO_DATA in the mask
    (with or without the caller's mask): the same planes as the convolution of the zeroed inputs with those
    bits set; the caller's arrays are left as they were."""
    rng = np.random.default_rng(5)
    img = rng.normal(100.0, 5.0, (48, 50)).astype(np.float32)
    var = np.full(img.shape, 25.0, np.float32)
    img[10, 12], var[30, 20] = np.nan, np.inf
    yy, xx = np.mgrid[-3:4, -3:4]
    stamp = np.exp(-0.5 * (xx ** 2 + yy ** 2) / 1.5 ** 2)
    zi, zv = img.copy(), var.copy()
    for y, x in ((10, 12), (30, 20)):
        zi[y, x] = zv[y, x] = 0.0
    bits = np.zeros(img.shape, np.uint16)
    bits[10, 12] = bits[30, 20] = NO_DATA
    for mask in (None, np.where(np.arange(img.size).reshape(img.shape) % 7 == 0, CR, 0).astype(np.uint16)):
        got = diffim.convolve_image(img, var, mask, stamp, no_data_bit=NO_DATA)
        want = diffim.convolve_image(zi, zv, bits | (0 if mask is None else mask), stamp, no_data_bit=NO_DATA)
        for g, w in zip(got[:3], want[:3]):
            assert np.array_equal(g, w, equal_nan=True)
        assert got[2][10, 12] & NO_DATA and got[2][30, 20] & NO_DATA
    assert np.isnan(img[10, 12]) and np.isinf(var[30, 20])
