"""The Gaussian-mixture renderer: kernel exactness, moments, clipping, mixture fits, conventions, GalSim
agreement, input checks and determinism."""
import json

import numpy as np
import pytest

from twinkles_hpc.bench import imsim as bench
from twinkles_hpc.imsim import psf as psf_mod
from twinkles_hpc.imsim import sersic
from twinkles_hpc.imsim.psf import PSFModel
from twinkles_hpc.imsim.render import add_gaussians, render_galaxies, render_points, render_sersic

J_ROT = bench.bench_jacobian(30.0)          # east to the left, +y 30 deg east of north, 5 px / arcsec


def moments(image):
    """Flux, centroid and central second moments (xx, xy, yy) of an image."""
    yy, xx = np.mgrid[:image.shape[0], :image.shape[1]]
    f = image.sum()
    mx, my = (image * xx).sum() / f, (image * yy).sum() / f
    dx, dy = xx - mx, yy - my
    return f, mx, my, (image * dx * dx).sum() / f, (image * dx * dy).sum() / f, (image * dy * dy).sum() / f


def test_single_gaussian_flux_and_moments_exact():
    im = np.zeros((80, 90))
    n = add_gaussians(im, 40.3, 37.8, 1234.5, 9.0, 2.5, 4.0, threshold=0.0)
    assert n > 0
    f, mx, my, cxx, cxy, cyy = moments(im)
    assert f == pytest.approx(1234.5, rel=1e-6)
    assert (mx, my) == pytest.approx((40.3, 37.8), abs=1e-6)
    assert (cxx, cxy, cyy) == pytest.approx((9.0, 2.5, 4.0), rel=1e-5)
    # with the default threshold the truncated component is rescaled: flux is still kept
    im2 = np.zeros((80, 90))
    add_gaussians(im2, 40.3, 37.8, 5.0, 9.0, 2.5, 4.0)
    assert im2.sum() == pytest.approx(5.0, rel=1e-3)


def test_kernel_matches_direct_evaluation():
    rng = np.random.default_rng(0)
    for _ in range(40):
        ny, nx = rng.integers(8, 60, 2)
        x0, y0 = rng.uniform(-10, nx + 10), rng.uniform(-10, ny + 10)
        s1, s2 = np.exp(rng.uniform(np.log(0.2), np.log(15), 2))
        t = rng.uniform(0, np.pi)
        R = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
        C = R @ np.diag([s1 ** 2, s2 ** 2]) @ R.T
        im = np.zeros((ny, nx))
        add_gaussians(im, x0, y0, 100.0, C[0, 0], C[0, 1], C[1, 1], threshold=0.0)
        yy, xx = np.mgrid[:ny, :nx]
        P = np.linalg.inv(C)
        m = P[0, 0] * (xx - x0) ** 2 + 2 * P[0, 1] * (xx - x0) * (yy - y0) + P[1, 1] * (yy - y0) ** 2
        peak = 100.0 / (2 * np.pi * np.sqrt(np.linalg.det(C))) / -np.expm1(-18.0)
        inside = m < 36.0 * (1 - 1e-9)
        assert np.all(im[m > 36.0 * (1 + 1e-9)] == 0)
        np.testing.assert_allclose(im[inside], peak * np.exp(-0.5 * m[inside]), rtol=1e-10, atol=0)


def test_point_source_moments_are_psf_plus_pixel():
    psf = PSFModel(0.8, nx=160, ny=160, fwhm_gradient=0.3, ellip_gradient=0.1)
    x, y = 60.3, 100.6                                      # off centre: elliptical, broadened PSF
    im = np.zeros((160, 160))
    render_points(im, x, y, 1e5, psf, threshold=0.0)
    f, mx, my, cxx, cxy, cyy = moments(im)
    pxx, pxy, pyy = (c[0] for c in psf.covariance_at(x, y))
    assert f == pytest.approx(1e5, rel=1e-6)
    assert (mx, my) == pytest.approx((x, y), abs=1e-6)
    assert cxx == pytest.approx(pxx + 1 / 12, rel=1e-5)
    assert cyy == pytest.approx(pyy + 1 / 12, rel=1e-5)
    assert cxy == pytest.approx(pxy, rel=1e-4, abs=1e-6)
    assert abs(pxy) > 1e-3                                  # the test does see the ellipticity


def test_psf_model_variation_and_roundtrip():
    psf = PSFModel(0.7, nx=4000, ny=4072)
    w, cxx, cxy, cyy = psf.components_at([1999.5, 0.0], [2035.5, 0.0])
    np.testing.assert_allclose(w.sum(1), 1.0)
    assert psf.fwhm_at(1999.5, 2035.5) == pytest.approx(0.7)
    assert psf.fwhm_at(0.0, 0.0) == pytest.approx(0.7 * 1.05)
    g1, g2 = psf.shear_at(0.0, 0.0)
    assert np.hypot(g1, g2) == pytest.approx(0.02)
    assert np.all(cxx * cyy - cxy ** 2 > 0)
    again = PSFModel.from_dict(json.loads(json.dumps(psf.to_dict())))
    assert again.to_dict() == psf.to_dict()
    np.testing.assert_array_equal(again.components_at(10, 20)[1], psf.components_at(10, 20)[1])


def test_edge_clipping_matches_larger_image():
    """Objects on, near and off the edges: the small image equals the matching block of a larger one."""
    psf = PSFModel(0.7, nx=100, ny=80)
    x = np.array([0.0, 99.0, -3.0, 50.0, 102.0, -500.0, 1e12])
    y = np.array([0.0, 79.0, 40.0, -4.0, 81.0, 20.0, 5.0])
    fl = np.full(x.size, 1e4)
    small, big = np.zeros((80, 100)), np.zeros((180, 200))
    for im, origin in ((small, (0, 0)), (big, (-50, -50))):
        render_points(im, x, y, fl, psf, origin=origin)
        render_sersic(im, x, y, fl, 1, 1.5, 0.4, 30.0, J_ROT, psf, origin=origin)
    np.testing.assert_allclose(small, big[50:130, 50:150], rtol=1e-9, atol=1e-12)
    assert small[0, 0] > 0 and small[-1, -1] > 0
    off = np.zeros((80, 100))
    render_points(off, [-500.0, 1e12, 50.0], [20.0, 5.0, 1e9], [1e4] * 3, psf)
    assert not off.any()


def test_sersic_mixtures_fit_quality():
    r = np.geomspace(0.05, 5.0, 200)
    for n, tol in ((1, 5e-4), (4, 2e-3)):
        w, s = sersic.sersic_mixture(n)
        assert w.sum() == pytest.approx(1.0, abs=1e-12)
        assert sersic.mixture_half_light_radius(w, s) == pytest.approx(1.0, rel=1e-3)
        assert np.abs(sersic.mixture_enclosed(r, w, s) - sersic.sersic_enclosed(r, n)).max() < tol


def test_stored_mixtures_rederive():
    """The fitting functions reproduce the stored constants (same enclosed-light curves)."""
    r = np.geomspace(0.05, 8.0, 50)
    for n, (K, rmin, rmax) in sersic.FIT_SETTINGS.items():
        w, s = sersic.fit_sersic_mixture(n, K, rmin, rmax)
        ws, ss = sersic.sersic_mixture(n)
        assert np.abs(sersic.mixture_enclosed(r, w, s) - sersic.mixture_enclosed(r, ws, ss)).max() < 1e-5
    w, s = psf_mod.fit_kolmogorov_mixture(3)
    np.testing.assert_allclose(w, psf_mod.KOLMOGOROV_WEIGHTS, rtol=1e-5)
    np.testing.assert_allclose(s, psf_mod.KOLMOGOROV_SIGMAS, rtol=1e-5)


def test_psf_mixture_fits_kolmogorov():
    w, s = psf_mod.KOLMOGOROV_WEIGHTS, psf_mod.KOLMOGOROV_SIGMAS
    r = np.linspace(0.05, 5.0, 60)
    enclosed = (w * -np.expm1(-0.5 * (r[:, None] / s) ** 2)).sum(1)
    assert np.abs(enclosed - psf_mod.kolmogorov_enclosed(r)).max() < 0.01
    half = (w / s ** 2 * np.exp(-0.5 * (0.5 / s) ** 2)).sum() / (w / s ** 2).sum()
    assert half == pytest.approx(0.5, abs=0.005)          # FWHM of the mixture = 1 (in FWHM units)


@pytest.mark.parametrize("pa, sky_dir", [(0.0, (0.0, 1.0)), (90.0, (1.0, 0.0)), (45.0, (0.5 ** 0.5, 0.5 ** 0.5))])
def test_position_angle_east_of_north(pa, sky_dir):
    psf = PSFModel(0.5, nx=120, ny=120, ellip_gradient=0.0)
    im = np.zeros((120, 120))
    render_sersic(im, 60.0, 60.0, 1e5, 1, 2.0, 0.3, pa, J_ROT, psf)
    _, _, _, cxx, cxy, cyy = moments(im)
    evals, evecs = np.linalg.eigh([[cxx, cxy], [cxy, cyy]])
    major = evecs[:, 1]
    expect = J_ROT @ np.array(sky_dir)
    assert abs(major @ expect) / np.linalg.norm(expect) > 0.9999
    assert evals[1] > 5 * evals[0]


def test_agreement_with_galsim():
    galsim = pytest.importorskip("galsim")
    psf = PSFModel(0.7, nx=400, ny=400)
    stars = dict(x=np.array([100.2, 300.7]), y=np.array([50.5, 320.1]), flux=np.array([2e6, 300.0]))
    gal = dict(x=np.array([200.0, 120.4, 260.3, 330.0]), y=np.array([200.0, 300.6, 90.2, 200.9]),
               bulge_flux=np.array([5e4, 0.0, 2e3, 80.0]), bulge_hlr=np.array([2.0, 0.0, 0.4, 0.2]),
               bulge_q=np.array([0.5, 1.0, 0.8, 0.9]), bulge_pa=np.array([20.0, 0.0, 100.0, 10.0]),
               disk_flux=np.array([0.0, 3e4, 6e3, 120.0]), disk_hlr=np.array([1.0, 3.0, 0.8, 0.3]),
               disk_q=np.array([1.0, 0.25, 0.6, 0.5]), disk_pa=np.array([0.0, 135.0, 95.0, 170.0]))
    scene = dict(stars=stars, galaxies=gal)
    cmp = bench.compare_objects(galsim, scene, J_ROT, psf, n_compare=6)
    assert cmp["flux_ratio"].size == 6
    assert np.abs(cmp["flux_ratio"] - 1).max() < 0.01
    assert np.abs(cmp["size_ratio"] - 1).max() < 0.03
    assert cmp["shape_diff"].max() < 0.01                  # same PA convention and PSF ellipticity


def test_bad_input_raises_value_error():
    psf = PSFModel(0.7, nx=50, ny=50)
    good = np.zeros((50, 50))
    bad_calls = [
        (lambda: render_points(np.zeros((50, 50), np.float32), 1, 1, 1, psf), "float64"),
        (lambda: render_points(np.zeros(50), 1, 1, 1, psf), "2-D"),
        (lambda: render_points(np.zeros((50, 50))[:, ::2], 1, 1, 1, psf), "C-contiguous"),
        (lambda: render_points(good, [1, 2], [1, 2, 3], 1, psf), "expected 2"),
        (lambda: render_points(good, [1, np.nan], [1, 2], 1, psf), "x must be finite"),
        (lambda: render_points(good, 1, 1, -5.0, psf), "flux must be"),
        (lambda: render_points(good, 1, 1, "bright", psf), "numeric"),
        (lambda: render_points(good, 1, 1, 1, psf, threshold=-1), "threshold"),
        (lambda: render_sersic(good, 1, 1, 1, 2, 1.0, 0.5, 0, J_ROT, psf), "Sersic index"),
        (lambda: render_sersic(good, 1, 1, 1, 1, 0.0, 0.5, 0, J_ROT, psf), "hlr_arcsec"),
        (lambda: render_sersic(good, 1, 1, 1, 1, 1.0, 1.5, 0, J_ROT, psf), "q must be"),
        (lambda: render_sersic(good, 1, 1, 1, 1, 1.0, 0.5, np.inf, J_ROT, psf), "pa_deg"),
        (lambda: render_sersic(good, 1, 1, 1, 1, 1.0, 0.5, 0, np.eye(3), psf), "jacobian"),
        (lambda: render_sersic(good, 1, 1, 1, 1, 1.0, 0.5, 0, np.zeros((2, 2)), psf), "jacobian"),
        (lambda: render_galaxies(good, 1, 1, 1, -1.0, 0.5, 0, 0, 0, 0, 0, J_ROT, psf), "bulge_hlr"),
        (lambda: add_gaussians(good, 1, 1, 1, 1e-4, 0, 1e-4), "eigenvalues"),
        (lambda: PSFModel(-0.7), "fwhm_arcsec"),
    ]
    for call, text in bad_calls:
        with pytest.raises(ValueError, match=text):
            call()
    assert not good.any()
    # a galaxy without a disk may carry any finite disk size
    render_galaxies(good, 25, 25, 100.0, 0.5, 0.7, 10, 0.0, 0.0, 0.0, 0.0, J_ROT, psf)
    assert good.sum() > 95


def test_render_is_deterministic():
    scene = bench.make_scene(nx=300, ny=250, n_stars=40, n_galaxies=120, seed=5)
    psf = PSFModel(0.7, nx=300, ny=250)
    a, b = np.zeros((250, 300)), np.zeros((250, 300))
    bench.render_scene(a, scene, J_ROT, psf)
    bench.render_scene(b, scene, J_ROT, psf)
    assert a.tobytes() == b.tobytes()
    assert a.sum() > 0


def test_bench_imsim_small():
    out = bench.bench_imsim(nx=300, ny=250, n_stars=20, n_galaxies=50, repeat=1, galsim=False,
                            extra_steps=[("noop", lambda image: None)])
    assert out["render_best_s"] > 0 and "noop_s" in out and out["lines"]
