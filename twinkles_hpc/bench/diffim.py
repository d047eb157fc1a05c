"""`twinkles-hpc bench diffim`: one PSF-matched subtraction of a simulated pair (--nx x --ny, default
4096 x 4096) for three PSF cases (round; elliptical; the science PSF's width varying across the image),
timed (kernel fit, convolution, decorrelation: `subtract_images`, one thread) with its normalised residual
RMS in stamps around bright stars and its 5-sigma false detections per Mpx (the scene has no variables)
against the Gaussian expectation (docs/diffim.md, "Speed"). The peers the issue names (properimage's ZOGY,
sfft) are not run yet.
"""
import time

import numpy as np
from scipy.spatial import cKDTree

from twinkles_hpc.bench.common import time_calls

#: (template moments, science moments at x = 0 and x = nx) in px^2 (ixx, iyy, ixy) of the three cases
CASES = {"round": ((1.5 ** 2, 1.5 ** 2, 0.0), (1.7 ** 2, 1.7 ** 2, 0.0), (1.7 ** 2, 1.7 ** 2, 0.0)),
         "elliptical": ((2.0, 1.6, -0.3), (3.4, 2.6, 0.5), (3.4, 2.6, 0.5)),
         "varying": ((1.3 ** 2, 1.3 ** 2, 0.0), (1.6 ** 2, 1.6 ** 2, 0.0), (1.95 ** 2, 1.95 ** 2, 0.0))}
SKY_SCIENCE, SKY_TEMPLATE, TEMPLATE_DEPTH = 1000.0, 100.0, 10.0
STAMP_HALF = 12


def _render(shape, x, y, flux, moments):
    """Elliptical Gaussian stars (moments (n, 3)) on `shape`, each normalised to its flux on its stamp."""
    ny, nx = shape
    img = np.zeros((ny + 2 * STAMP_HALF, nx + 2 * STAMP_HALF))
    o = np.arange(-STAMP_HALF, STAMP_HALF + 1)
    ix, iy = np.rint(x).astype(int), np.rint(y).astype(int)
    for lo in range(0, x.size, 2000):
        sl = slice(lo, lo + 2000)
        dx = (ix[sl] - x[sl])[:, None] + o
        dy = (iy[sl] - y[sl])[:, None] + o
        a, b, c = (m[:, None, None] for m in moments[sl].T)
        det = a * b - c ** 2
        p = np.exp(-0.5 * (b * dx[:, None, :] ** 2 - 2 * c * dx[:, None, :] * dy[:, :, None]
                           + a * dy[:, :, None] ** 2) / det)
        p *= (flux[sl] / p.sum((1, 2)))[:, None, None]
        for k, (i, j) in enumerate(zip(ix[sl], iy[sl])):
            img[j:j + 2 * STAMP_HALF + 1, i:i + 2 * STAMP_HALF + 1] += p[k]
    return img[STAMP_HALF:-STAMP_HALF, STAMP_HALF:-STAMP_HALF]


def make_pair(case, *, nx, ny, n_stars, seed):
    """A template (deep) and a science image of the same stars with the case's PSFs, their variances and
    the stars."""
    t_mom, s0, s1 = (np.asarray(m, float) for m in CASES[case])
    rng = np.random.default_rng([seed, list(CASES).index(case)])
    x, y = rng.uniform(0, nx - 1, n_stars), rng.uniform(0, ny - 1, n_stars)
    flux = 10 ** rng.uniform(3.0, 5.3, n_stars)
    f = (x / max(nx - 1, 1))[:, None]
    mt = _render((ny, nx), x, y, flux, np.tile(t_mom, (n_stars, 1)))
    ms = _render((ny, nx), x, y, flux, (1 - f) * s0 + f * s1)
    var_t, var_s = (mt / TEMPLATE_DEPTH + SKY_TEMPLATE).astype(np.float32), (ms + SKY_SCIENCE).astype(np.float32)
    template = (mt + rng.standard_normal(mt.shape) * np.sqrt(var_t)).astype(np.float32)
    science = (ms + rng.standard_normal(ms.shape) * np.sqrt(var_s)).astype(np.float32)
    return dict(science=science, template=template, var_s=var_s, var_t=var_t, x=x, y=y, flux=flux)


def candidates(pair, flux_cut=1e4, isolation=15.0):
    """Bright isolated stars: what a pipeline picks from its source table."""
    d, _ = cKDTree(np.c_[pair["x"], pair["y"]]).query(np.c_[pair["x"], pair["y"]], k=2)
    keep = (pair["flux"] > flux_cut) & (d[:, 1] > isolation)
    return pair["x"][keep], pair["y"][keep]


def residual_rms(image, variance, pair, half=3, flux_cut=1e4):
    """RMS of image / sqrt(variance) over (2 half + 1)^2 stamps around the bright stars with finite pixels."""
    ny, nx = image.shape
    ix, iy = np.rint(pair["x"]).astype(int), np.rint(pair["y"]).astype(int)
    inside = (ix >= 40) & (ix < nx - 40) & (iy >= 40) & (iy < ny - 40) & (pair["flux"] > flux_cut)
    o = np.arange(-half, half + 1)
    z = (image / np.sqrt(variance))[(iy[inside, None] + o)[:, :, None], (ix[inside, None] + o)[:, None, :]]
    z = z[np.isfinite(z).all((1, 2))]
    return float(np.sqrt(np.mean(z ** 2))) if z.size else float("nan")


def false_detections(image, variance, psf_stamp):
    """(5-sigma detections per Mpx of finite difference, the Gaussian expectation per Mpx)."""
    from twinkles_hpc.timedomain import dia
    mask = np.zeros(image.shape, np.uint16)
    psf = dia.DiffPSF(psf_stamp)
    scale, lambda2 = dia.noise_scale(image, variance, mask, psf.fwhm_px)
    det = dia.detect_dia_sources(image, variance * np.float32(scale ** 2), mask, psf, threshold=5.0)
    mpx = np.isfinite(image).sum() / 1e6
    return len(det) / mpx, dia.expected_false_per_mpx(5.0, lambda2)


def run(args):
    from twinkles_hpc.timedomain.diffim import DiffimConfig, subtract_images
    nx, ny = (4096, 4096) if (args.nx, args.ny) == (4000, 4072) else (args.nx, args.ny)
    n_stars = args.stars if args.stars != 2000 else int(20000 * nx * ny / 4096 ** 2)
    lines = [f"bench diffim: {nx} x {ny}, {n_stars} Gaussian stars (flux 1e3-2e5 e-), template sky variance "
             f"{SKY_TEMPLATE:g} e-^2, science {SKY_SCIENCE:g}; one thread; best / median of {args.repeat}",
             f"{'case':<11} {'tool':<18} {'best s':>7} {'median s':>8} {'direction':>10} {'resid RMS':>9} "
             f"{'false/Mpx':>9} {'Gauss/Mpx':>9}"]
    for case in CASES:
        t0 = time.perf_counter()
        pair = make_pair(case, nx=nx, ny=ny, n_stars=n_stars, seed=args.seed)
        made = time.perf_counter() - t0
        cx, cy = candidates(pair)
        timer, res = time_calls(lambda: subtract_images(
            pair["science"], pair["template"], cx, cy, science_variance=pair["var_s"],
            template_variance=pair["var_t"], config=DiffimConfig()), args.repeat)
        false, gauss = false_detections(res.image, res.variance, res.psf)
        lines.append(f"{case:<11} {'twinkles-hpc':<18} {timer.best:7.2f} {timer.median:8.2f} "
                     f"{res.summary['direction']:>10} {residual_rms(res.image, res.variance, pair):9.3f} "
                     f"{false:9.2f} {gauss:9.2f}")
        lines.append(f"{'':<11} (pair simulated in {made:.1f} s, {cx.size} kernel candidates)")
    lines.append("properimage's ZOGY and sfft are not run by this benchmark yet (docs/diffim.md, \"Speed\", quotes "
                 "earlier measurements of both on this machine class)")
    return lines
