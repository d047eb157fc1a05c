"""`twinkles-hpc bench diffim`: one PSF-matched subtraction of a simulated pair (--nx x --ny, default
4096 x 4096) for three PSF cases (round; elliptical; the science PSF's width varying across the image),
timed (kernel fit, convolution, decorrelation: `subtract_images`, one thread) with its normalised residual
RMS in stamps around bright stars and its 5-sigma false detections per Mpx (the scene has no variables)
against the Gaussian expectation (docs/diffim.md, "Speed").

The peers the issue names run on the same pairs in the same run where they are installed (optional extras,
never required; a line says why one does not run): properimage's ZOGY (`operations.subtract`, its
Gaussian-fitted PSFs) and sfft's `Customized_Packet` on its NumPy backend, each on one thread and given the
pair with its sky level. Their differences are measured as ours is: the residual RMS and the detections with
the variance the difference has from the input variance planes through the method's ideal operation (the
simulated PSFs), on the pixels where ours is finite. A peer whose run takes over a minute is timed once.
"""
import io
import os
import tempfile
import time
import warnings
from contextlib import redirect_stdout

import numpy as np
from scipy.signal import fftconvolve
from scipy.spatial import cKDTree

from twinkles_hpc.bench.common import time_calls

#: (template moments, science moments at x = 0 and x = nx) in px^2 (ixx, iyy, ixy) of the three cases
CASES = {"round": ((1.5 ** 2, 1.5 ** 2, 0.0), (1.7 ** 2, 1.7 ** 2, 0.0), (1.7 ** 2, 1.7 ** 2, 0.0)),
         "elliptical": ((2.0, 1.6, -0.3), (3.4, 2.6, 0.5), (3.4, 2.6, 0.5)),
         "varying": ((1.3 ** 2, 1.3 ** 2, 0.0), (1.6 ** 2, 1.6 ** 2, 0.0), (1.95 ** 2, 1.95 ** 2, 0.0))}
SKY_SCIENCE, SKY_TEMPLATE, TEMPLATE_DEPTH = 1000.0, 100.0, 10.0
STAMP_HALF = 12
#: a peer whose first run takes longer (seconds) is not run again; nor started on a case when its runs so far
#: and one more would take longer than PEER_BUDGET_S (the bench stays near 15 minutes)
PEER_REPEAT_S, PEER_BUDGET_S = 60.0, 900.0
#: peak memory of a peer per pixel of the pair (bytes; measured with /usr/bin/time at 512^2 and 1024^2:
#: properimage 0.7.2 0.6 GB at 1024^2, sfft 1.7.3's NumPy backend 1.5 and 5.0 GB)
PROPERIMAGE_BYTES_PER_PIXEL, SFFT_BYTES_PER_PIXEL = 0.5e3, 4.5e3


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


def psf_stamp(moments):
    """A unit-sum elliptical Gaussian stamp, (2 STAMP_HALF + 1)^2, of moments (ixx, iyy, ixy) in px^2."""
    from twinkles_hpc.timedomain.kernel import gaussian_psf
    return gaussian_psf(*moments, half=STAMP_HALF)


def centre_moments(case):
    """(template, science) PSF moments of the case at the image centre."""
    t_mom, s0, s1 = (np.asarray(m, float) for m in CASES[case])
    return t_mom, (s0 + s1) / 2


def zogy_filters(psf_template, psf_science, size=63):
    """(k_science, k_template, psf_d) as size^2 stamps centred at size // 2: ZOGY's D = k_science * science -
    k_template * template for unit-sum PSFs, a flux ratio of 1 and the skies' variances (Zackay, Ofek &
    Gal-Yam 2016, eq. 13; unit variance on blank sky), and D's PSF (eq. 14)."""
    from twinkles_hpc.timedomain.convolve import unwrap_stamp, wrap_stamp
    p_t, p_s = (np.fft.fft2(wrap_stamp(p, (size, size))) for p in (psf_template, psf_science))
    norm = np.sqrt(SKY_SCIENCE * np.abs(p_t) ** 2 + SKY_TEMPLATE * np.abs(p_s) ** 2)
    k_s, k_t, psf_d = (np.fft.ifft2(f).real for f in (p_t / norm, p_s / norm, p_t * p_s / norm))
    return unwrap_stamp(k_s, size // 2), unwrap_stamp(k_t, size // 2), unwrap_stamp(psf_d, STAMP_HALF)


def _zogy(pair, case, workdir):
    """(the timed call, fn(its result) -> (D, its variance, its PSF, what is convolved)): properimage's ZOGY."""
    from properimage.operations import subtract
    from properimage.single_image import SingleImageGaussPSF
    ref, new = pair["template"] + np.float32(SKY_TEMPLATE), pair["science"] + np.float32(SKY_SCIENCE)

    def call():
        with SingleImageGaussPSF(ref) as r, SingleImageGaussPSF(new) as n:
            return subtract(ref=r, new=n, beta=True, shift=False)

    def measured(out):
        d, _, _, mask = out
        k_s, k_t, psf = zogy_filters(*(psf_stamp(m) for m in centre_moments(case)))
        var = fftconvolve(pair["var_s"], k_s ** 2, mode="same") + fftconvolve(pair["var_t"], k_t ** 2, mode="same")
        return np.where(mask, np.nan, d.real), var, psf, "both"
    return call, measured


def _fwhm(moments):
    from twinkles_hpc.timedomain.kernel import FWHM_PER_SIGMA
    return FWHM_PER_SIGMA * np.sqrt((moments[0] + moments[1]) / 2)


def _sfft(pair, case, workdir):
    """(the timed call, fn(its result) -> (difference, its variance, its PSF, what is convolved)): sfft's
    Customized_Packet on the NumPy backend, from FITS files (written here, untimed, as a user has them)."""
    from astropy.io import fits
    from sfft.CustomizedPacket import Customized_Packet
    from sfft.sfftcore.SFFTConfigure import SingleSFFTConfigure
    t_mom, s_mom = centre_moments(case)
    fwhm_t, fwhm_s = _fwhm(t_mom), max(_fwhm(m) for m in CASES[case][1:])
    conv = "REF" if fwhm_s >= fwhm_t else "SCI"                      # its automatic direction
    ker_hw = int(np.clip(2.0 * max(fwhm_t, fwhm_s), 2, 20))          # its automatic kernel half-width
    path = {}
    for name, img, sky in (("ref", pair["template"], SKY_TEMPLATE), ("sci", pair["science"], SKY_SCIENCE)):
        path[name] = os.path.join(workdir, f"{case}-{name}.fits")
        fits.writeto(path[name], img + np.float32(sky), overwrite=True)
    ny, nx = pair["science"].shape
    opts = dict(KerPolyOrder=2, BGPolyOrder=2, ConstPhotRatio=True, BACKEND_4SUBTRACT="Numpy",
                NUM_CPU_THREADS_4SUBTRACT=1, VERBOSE_LEVEL=0)
    # numba compiles its kernels for each image size once and caches them: not timed
    _quietly(lambda: SingleSFFTConfigure.SSC(NX=nx, NY=ny, KerHW=ker_hw, **opts))

    def call():
        return Customized_Packet.CP(FITS_REF=path["ref"], FITS_SCI=path["sci"], FITS_mREF=path["ref"],
                                    FITS_mSCI=path["sci"], ForceConv=conv, GKerHW=ker_hw, **opts)

    def measured(out):
        diff = np.ascontiguousarray(out[1].T)                         # sfft's arrays are (x, y)
        matched, other = ("var_t", "var_s") if conv == "REF" else ("var_s", "var_t")
        kernel = psf_stamp(s_mom - t_mom if conv == "REF" else t_mom - s_mom)   # the matching kernel
        var = pair[other] + fftconvolve(pair[matched], kernel ** 2, mode="same")
        return diff, var, psf_stamp(s_mom if conv == "REF" else t_mom), "template" if conv == "REF" else "science"
    return call, measured


def _quietly(fn):
    """fn(), its prints, warnings and log records kept out of the table."""
    import logging
    level = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        with warnings.catch_warnings(), redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            return fn()
    finally:
        logging.disable(level)


def _memory_short(name, bytes_per_pixel, nx, ny):
    """Why `name` is not run on an nx x ny pair when the memory it needs (measured: `bytes_per_pixel`, and
    0.5 GB) exceeds what this machine has available, else None."""
    need = bytes_per_pixel * nx * ny + 0.5e9
    try:
        with open("/proc/meminfo") as fh:
            avail = next(int(ln.split()[1]) * 1024 for ln in fh if ln.startswith("MemAvailable:"))
    except (OSError, StopIteration):
        return None
    if need <= avail:
        return None
    return (f"{name} not run on this {nx} x {ny} pair: it needs about {need / 1e9:.0f} GB ({bytes_per_pixel / 1e3:.1f} "
            f"kB a pixel, measured), {avail / 1e9:.0f} GB are available")


def _not_imported(name, err):
    what = "it is not installed" if isinstance(err, ImportError) else "it fails on import"
    return f"{name} not run: {what} ({type(err).__name__}: {err}); docs/diffim.md, \"Speed\", says how to install it"


def _load_properimage():
    """Import properimage; the line saying what of it runs."""
    import properimage
    from properimage.operations import subtract  # noqa: F401
    return (f"properimage {properimage.__version__}: ZOGY, operations.subtract(ref, new, beta=True, shift=False) "
            "on SingleImageGaussPSF images (its Gaussian PSF fits; beta: its flux-ratio fit, needed as its fitted "
            "PSFs are not unit-sum; shift off: the pair is registered), timed from the arrays with sky to D")


def _load_sfft():
    """Import sfft on one numba thread; the line saying what of it runs."""
    os.environ.setdefault("NUMBA_NUM_THREADS", "1")
    import sfft
    from numba.np.ufunc.parallel import set_num_threads
    from sfft.CustomizedPacket import Customized_Packet  # noqa: F401
    set_num_threads(1)                                  # sfft's NUM_CPU_THREADS_4SUBTRACT does not reach numba
    return (f"sfft {sfft.__version__}: Customized_Packet.CP, NumPy backend, one thread, its automatic direction "
            "and kernel half-width (2 FWHM), KerPolyOrder 2, BGPolyOrder 2, each image as its own masked image "
            "(nothing saturates: what its crowded flavour's preprocessing gives), timed from FITS files with sky "
            "to the difference, numba compiled before")


def _peer(name, load, bytes_per_pixel, setup, nx, ny):
    """(name, setup or None, the line of what runs or why not) of one optional peer on nx x ny pairs."""
    try:
        what = load()
    except Exception as err:                            # any failure: an optional peer never stops the bench
        return name, None, _not_imported(name, err)
    why = _memory_short(name, bytes_per_pixel, nx, ny)
    return name, None if why else setup, why or what


def peers(nx, ny):
    """[(name, setup or None, a line: what runs and is timed, or why it does not run)] for nx x ny pairs;
    setup(pair, case, workdir) -> (the timed call, fn(its result) -> (difference, variance, PSF, direction))."""
    return [_peer("properimage", _load_properimage, PROPERIMAGE_BYTES_PER_PIXEL, _zogy, nx, ny),
            _peer("sfft", _load_sfft, SFFT_BYTES_PER_PIXEL, _sfft, nx, ny)]


def _time_peer(call, repeat):
    """(Timer, last result) of up to max(1, repeat) runs of call(); one when it takes over PEER_REPEAT_S."""
    timer, out = time_calls(lambda: _quietly(call), 1)
    while len(timer.seconds) < repeat and timer.best < PEER_REPEAT_S:
        out = timer(_quietly, call)
    return timer, out


def _measures(image, variance, psf, pair, footprint):
    """(residual RMS, false detections per Mpx, their Gaussian expectation) of a difference on `footprint`."""
    image = np.where(footprint, image, np.nan)
    return (residual_rms(image, variance, pair), *false_detections(image, variance, psf))


def _row(case, tool, timer, direction, measures, ratio=""):
    rms, false, gauss = measures
    return (f"{case:<11} {tool:<18} {timer.best:7.2f} {timer.median:8.2f} {direction:>10} {rms:9.3f} {false:9.2f} "
            f"{gauss:9.2f} {ratio:>7}").rstrip()


def _peer_rows(name, setup, pair, case, workdir, footprint, ours_best, repeat):
    """(the table's line for one peer on one case, and one when it was timed once; or why it failed), the
    seconds its runs took."""
    t0 = time.perf_counter()
    try:
        call, measured = setup(pair, case, workdir)
        timer, out = _time_peer(call, repeat)
        image, variance, psf, direction = measured(out)
        del out
        rows = [_row(case, name, timer, direction, _measures(image, variance, psf, pair, footprint),
                     f"{timer.best / ours_best:.1f}x")]
    except Exception as err:                            # an optional peer never stops the bench
        return [f"{case:<11} {name} failed: {type(err).__name__}: {err}"], time.perf_counter() - t0
    if len(timer.seconds) < max(1, repeat):
        rows.append(f"{'':<11} ({name} timed once: a run takes {timer.best:.0f} s)")
    return rows, sum(timer.seconds)


def run(args):
    from twinkles_hpc.timedomain.diffim import DiffimConfig, subtract_images
    nx, ny = (4096, 4096) if (args.nx, args.ny) == (4000, 4072) else (args.nx, args.ny)
    n_stars = args.stars if args.stars != 2000 else int(20000 * nx * ny / 4096 ** 2)
    tools = peers(nx, ny)
    lines = [f"bench diffim: {nx} x {ny}, {n_stars} Gaussian stars (flux 1e3-2e5 e-), template sky variance "
             f"{SKY_TEMPLATE:g} e-^2, science {SKY_SCIENCE:g}; one thread; best / median of {args.repeat}",
             *(note for _, _, note in tools),
             f"{'case':<11} {'tool':<18} {'best s':>7} {'median s':>8} {'direction':>10} {'resid RMS':>9} "
             f"{'false/Mpx':>9} {'Gauss/Mpx':>9} {'x ours':>7}"]
    spent, last = {name: 0.0 for name, _, _ in tools}, {name: 0.0 for name, _, _ in tools}
    with tempfile.TemporaryDirectory(prefix="bench-diffim-") as workdir:
        for case in CASES:
            t0 = time.perf_counter()
            pair = make_pair(case, nx=nx, ny=ny, n_stars=n_stars, seed=args.seed)
            made = time.perf_counter() - t0
            cx, cy = candidates(pair)
            timer, res = time_calls(lambda: subtract_images(
                pair["science"], pair["template"], cx, cy, science_variance=pair["var_s"],
                template_variance=pair["var_t"], config=DiffimConfig()), args.repeat)
            footprint = np.isfinite(res.image)
            lines.append(_row(case, "twinkles-hpc", timer, res.summary["direction"],
                              _measures(res.image, res.variance, res.psf, pair, footprint)))
            lines.append(f"{'':<11} (pair simulated in {made:.1f} s, {cx.size} kernel candidates)")
            for name, setup, _ in tools:
                if setup is None:
                    continue
                if spent[name] + last[name] > PEER_BUDGET_S:
                    lines.append(f"{case:<11} {name} not run on this case: its runs took {spent[name]:.0f} s, one "
                                 f"more would pass the {PEER_BUDGET_S:.0f} s the bench gives it")
                    continue
                rows, last[name] = _peer_rows(name, setup, pair, case, workdir, footprint, timer.best, args.repeat)
                spent[name] += last[name]
                lines += rows
    return lines
