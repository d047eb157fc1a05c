"""`twinkles-hpc bench forced`: forced PSF photometry of known stars on one full-sensor image, ours against
photutils' PSFPhotometry with the positions held fixed, and our exact-overlap circular apertures against
sep.sum_circle in exact mode, in the same run.

A benchmark, not Level 2 code: it makes its image with twinkles_hpc.imsim (the Level 2 code never does).
"""
import warnings

import numpy as np
from scipy.spatial import cKDTree

from twinkles_hpc import instrument
from twinkles_hpc.bench.common import Timer, time_calls
from twinkles_hpc.imsim import noise, render
from twinkles_hpc.imsim.psf import PSFModel
from twinkles_hpc.level2.photometry import DEFAULT_AP_RADII, forced_photometry, mixture_image, psf_fwhm
from twinkles_hpc.level2.masks import SAT

#: photutils PSF: a GriddedPSFModel of GRID x GRID ePSFs (our mixture sampled OVERSAMPLING x finer).
GRID, OVERSAMPLING = 5, 4


class PixelPSF:
    """Level 2 view of imsim's PSFModel: components_at with the pixel response (1/12 px^2) added."""

    def __init__(self, model, origin=(0.0, 0.0)):
        self.model, self.origin = model, origin

    def components_at(self, x, y):
        w, cxx, cxy, cyy = self.model.components_at(np.asarray(x) + self.origin[0], np.asarray(y) + self.origin[1])
        return w, cxx + render.PIXEL_VARIANCE, cxy, cyy + render.PIXEL_VARIANCE


def make_image(*, n_objects=5000, nx=4000, ny=4072, seed=1, fwhm=0.7, band="r", exptime=30.0):
    """Stars (r 17-24, dN/dm ~ 10^(0.15 m)) at random positions on a noisy sensor image: dict of image (sky
    subtracted), variance (from the pixels, as a calexp's), mask (SAT), psf, x, y, flux (electrons)."""
    rng = np.random.default_rng(seed)
    u = rng.random(n_objects)
    lo, hi = 10 ** (0.15 * 17.0), 10 ** (0.15 * 24.0)
    mag = np.log10(lo + u * (hi - lo)) / 0.15
    x, y = rng.uniform(0, nx - 1, n_objects), rng.uniform(0, ny - 1, n_objects)
    flux = instrument.counts_from_mag(mag, band, exptime)
    model = PSFModel(fwhm, pixel_scale=instrument.PIXEL_SCALE, nx=nx, ny=ny)
    expected = np.zeros((ny, nx))
    render.render_points(expected, x, y, flux, model)
    sky = noise.sky_electrons(21.2, band, exptime)
    pixels, _ = noise.add_sky_and_noise(expected, sky, instrument.READ_NOISE, (seed, 0, 0))
    del expected
    return {"image": pixels - np.float32(sky),
            "variance": np.maximum(pixels, 0) + np.float32(instrument.READ_NOISE ** 2),
            "mask": np.where(pixels >= noise.FULL_WELL, SAT, 0).astype(np.uint16),
            "psf": PixelPSF(model), "x": x, "y": y, "flux": flux}


def photutils_model(psf, nx, ny, half):
    """GriddedPSFModel of our PSF (pixel response included, unit flux) on a GRID x GRID grid of sensor
    positions, each ePSF sampled OVERSAMPLING x per pixel out to +-half pixels; x_0, y_0 held fixed."""
    from astropy.nddata import NDData
    from photutils.psf import GriddedPSFModel
    off = (np.arange(2 * half * OVERSAMPLING + 1) - half * OVERSAMPLING) / OVERSAMPLING
    dx, dy = np.meshgrid(off, off)
    gx, gy = np.meshgrid(np.linspace(0, nx - 1, GRID), np.linspace(0, ny - 1, GRID))
    comps = psf.components_at(gx.ravel(), gy.ravel())
    stack = np.array([mixture_image(*(a[k] for a in comps), dx, dy) for k in range(gx.size)])
    model = GriddedPSFModel(NDData(stack, meta={"grid_xypos": list(zip(gx.ravel(), gy.ravel())),
                                                "oversampling": OVERSAMPLING}))
    model.x_0.fixed = model.y_0.fixed = True
    return model


def run_photutils(sim, idx, fit_shape):
    """photutils PSFPhotometry (default TRF fitter, initial fluxes from 6 px apertures) of objects idx at
    fixed positions; returns (seconds, flux_fit, ok)."""
    from astropy.table import QTable
    from photutils.psf import PSFPhotometry
    ny, nx = sim["image"].shape
    phot = PSFPhotometry(photutils_model(sim["psf"], nx, ny, fit_shape // 2 + 3), fit_shape, aperture_radius=6)
    init = QTable({"x": sim["x"][idx], "y": sim["y"][idx]})
    timer = Timer()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = timer(phot, sim["image"], mask=sim["mask"] != 0, error=np.sqrt(sim["variance"]), init_params=init)
    flux = np.asarray(res["flux_fit"], dtype=np.float64)
    return timer.best, flux, (np.asarray(res["flags"]) == 0) & np.isfinite(flux)


def bench_apertures(sim, ap_radii=DEFAULT_AP_RADII, repeat=3, snr_min=50.0):
    """Our circular apertures (exact pixel-circle overlap) against sep.sum_circle(subpix=0, exact overlap)
    on the same image, variance and positions, no mask, radius by radius. Ours runs inside
    forced_photometry with a 1 px PSF-fit radius, so its time is the apertures plus the per-object PSF
    mixture it evaluates anyway; sep is called once per radius. Returns (dict, lines)."""
    import sep
    img, var, x, y = sim["image"], sim["variance"], sim["x"], sim["y"]
    t_ours, t_sep = Timer(), Timer()
    for _ in range(max(1, repeat)):                # alternate the two, so that both see the same machine
        ours = t_ours(forced_photometry, img, var, None, x, y, sim["psf"], ap_radii=ap_radii, psf_radius=1.0)
        theirs = t_sep(lambda: [sep.sum_circle(img, x, y, r, var=var, subpix=0) for r in ap_radii])
    out = {"ap_radii": list(ap_radii), "ours_s": t_ours.best, "sep_s": t_sep.best,
           "speedup": t_sep.best / t_ours.best, "radii": {}}
    lines = [(f"  apertures r = {', '.join(f'{r:g}' for r in ap_radii)} px, exact overlap, no mask: ours "
              f"{t_ours.best:.3f} s (forced_photometry, 1 px PSF fit), sep {sep.__version__} "
              f"sum_circle(subpix=0) {t_sep.best:.3f} s ({len(ap_radii)} calls); ours is {out['speedup']:.2f}x "
              f"{'faster' if out['speedup'] >= 1 else 'slower'} (best of {len(t_ours.seconds)})")]
    for k, r in enumerate(ap_radii):
        name = f"ap_flux_{r:g}".replace(".", "p")
        f_ours, e_ours = ours[name], ours[name + "_err"]
        f_sep, e_sep, flag_sep = theirs[k]
        both = np.isfinite(f_ours) & (flag_sep == 0) & (e_sep > 0)   # apertures wholly on the image
        bright = both & (f_sep / e_sep > snr_min)
        ratio = f_ours[bright] / f_sep[bright]
        d = (f_ours[both] - f_sep[both]) / e_sep[both]
        res = {"n": int(both.sum()), "n_bright": int(bright.sum()), "ratio_median": float(np.median(ratio)),
               "ratio_rms": float(np.sqrt(np.mean((ratio - 1) ** 2))),
               "diff_rms_sigma": float(np.sqrt(np.mean(d ** 2))),
               "err_ratio_median": float(np.median(e_ours[both] / e_sep[both]))}
        out["radii"][f"{r:g}"] = res
        lines.append(f"    r = {r:g} px: {res['n']} apertures on the image; SNR > {snr_min:g} "
                     f"({res['n_bright']}): median ours/sep {res['ratio_median']:.7f}, rms(ratio - 1) "
                     f"{res['ratio_rms']:.1e}; all: rms((ours - sep) / err) {res['diff_rms_sigma']:.1e}, "
                     f"median err ratio {res['err_ratio_median']:.6f}")
    lines.append("    errors: ours sqrt(sum a^2 v), the variance of sum a d over independent pixels (a = overlap "
                 "area); sep sqrt(sum a v), larger on the boundary pixels")
    return out, lines


def bench_forced(n_objects=5000, nx=4000, ny=4072, seed=1, *, fwhm=0.7, repeat=3, photutils=None,
                 photutils_objects=None, max_photutils_s=120.0, probe=250):
    """Time forced_photometry on n_objects stars of one simulated nx x ny image against photutils (fixed
    positions, GriddedPSFModel of the same PSF, fit_shape = the square around our PSF-fit circle), in the
    same run; compare the fluxes. photutils: None (if importable) / False. photutils_objects: run photutils
    on that many objects (evenly spaced) and extrapolate linearly; by default all, unless a probe of `probe`
    objects predicts more than max_photutils_s, then 1000. Returns a dict of numbers and `lines`."""
    sim = make_image(n_objects=n_objects, nx=nx, ny=ny, seed=seed, fwhm=fwhm)
    timer, ours = time_calls(lambda: forced_photometry(sim["image"], sim["variance"], sim["mask"], sim["x"],
                                                       sim["y"], sim["psf"]), repeat)
    radius = 3.0 * psf_fwhm(sim["psf"], sim["x"], sim["y"])
    fit_shape = 2 * round(np.median(radius)) + 1
    good = ours["flags"] == 0
    snr = ours["psf_flux"] / ours["psf_flux_err"]
    d, _ = cKDTree(np.c_[sim["x"], sim["y"]]).query(np.c_[sim["x"], sim["y"]], k=2)
    isolated = d[:, 1] > 2 * radius                       # no other star within twice the fit radius
    iso = good & isolated & (snr > 50)
    bias = np.median(ours["psf_flux"][iso] / sim["flux"][iso]) - 1
    out = {"n_objects": n_objects, "nx": nx, "ny": ny, "ours_best_s": timer.best, "ours_median_s": timer.median,
           "n_flag0": int(good.sum()), "ours_bias_isolated": float(bias), "fit_shape": fit_shape}
    lines = [(f"forced photometry bench: {nx}x{ny} px, {n_objects} stars r 17-24, seeing {fwhm}\", "
              f"PSF fit radius 3 x FWHM_eff (median {np.median(radius):.1f} px), apertures 3, 6, 12 px"),
             (f"  ours: best {timer.best:.3f} s, median {timer.median:.3f} s of {len(timer.seconds)} "
              f"({1e6 * timer.best / n_objects:.1f} us/object, 1 core); {good.sum()} unflagged"),
             (f"  ours vs truth, {iso.sum()} isolated unflagged stars with SNR > 50: median ratio - 1 = {bias:+.1e} "
              f"(isolated: no other star within {2 * np.median(radius):.0f} px)")]
    try:                                  # bench_apertures imports sep
        out["apertures"], ap_lines = bench_apertures(sim, repeat=repeat)
        lines += ap_lines
    except ImportError:
        lines.append("  apertures: sep not installed, not compared")
    if photutils is None:
        try:
            import photutils
        except ImportError:
            photutils = False
    if photutils is False:
        out["lines"] = lines + ["  photutils: not run (not installed or photutils=False)"]
        return out
    import photutils as pu
    every = np.arange(n_objects)
    note = ""
    if photutils_objects is None:
        t_probe, _, _ = run_photutils(sim, every[:: max(1, n_objects // probe)][:probe], fit_shape)
        if t_probe / min(probe, n_objects) * n_objects > max_photutils_s:
            photutils_objects = min(1000, n_objects)
    idx = every if photutils_objects is None else every[:: max(1, n_objects // photutils_objects)][:photutils_objects]
    t_pu, f_pu, ok = run_photutils(sim, idx, fit_shape)
    if idx.size < n_objects:
        note = f" (timed on {idx.size} objects, extrapolated linearly)"
        t_pu *= n_objects / idx.size
    both = good[idx] & ok
    ratio = ours["psf_flux"][idx] / f_pu
    clean = both & isolated[idx]
    bright = clean & (snr[idx] > 50)
    diff = (ours["psf_flux"][idx] - f_pu) / ours["psf_flux_err"][idx]
    bias_pu = np.median(f_pu[bright] / sim["flux"][idx][bright]) - 1
    faint = clean & (snr[idx] > 5) & (snr[idx] < 20)
    offs = [((f - sim["flux"][idx])[faint].mean(), (f - sim["flux"][idx])[faint].std() / np.sqrt(faint.sum()))
            for f in (ours["psf_flux"][idx], f_pu)]
    out.update(faint_offset_ours_e=float(offs[0][0]), faint_offset_photutils_e=float(offs[1][0]))
    out.update(photutils_s=t_pu, photutils_objects=int(idx.size), speedup=t_pu / timer.best,
               ratio_median=float(np.median(ratio[both])), ratio_rms_bright=float(np.std(ratio[bright] - 1)),
               diff_rms_sigma=float(np.std(diff[clean])), photutils_bias_isolated=float(bias_pu),
               n_compared=int(both.sum()))
    lines += [(f"  photutils {pu.__version__} PSFPhotometry (GriddedPSFModel {GRID}x{GRID}, oversampling "
               f"{OVERSAMPLING}, x_0/y_0 fixed, fit_shape {fit_shape}, TRF fitter): {t_pu:.2f} s{note}; "
               f"ours is {out['speedup']:.0f}x faster"),
              (f"  agreement: median ratio ours/photutils {out['ratio_median']:.5f} over {both.sum()} objects "
               f"unflagged by both; isolated ones: rms(ratio - 1) {out['ratio_rms_bright']:.1e} at SNR > 50 "
               f"({bright.sum()}), rms((ours - photutils) / err) {out['diff_rms_sigma']:.3f} ({clean.sum()})"),
              f"  photutils vs truth, the same {bright.sum()} isolated SNR > 50: median ratio - 1 = {bias_pu:+.1e}",
              (f"  {faint.sum()} isolated faint stars (SNR 5-20), mean flux - truth: ours {offs[0][0]:+.1f} +- "
               f"{offs[0][1]:.1f} e-, photutils {offs[1][0]:+.1f} +- {offs[1][1]:.1f} e- "
               f"(inverse-variance weights from the noisy variance plane)")]
    out["lines"] = lines
    return out


def run(args):
    """`twinkles-hpc bench forced`: forced photometry of --stars objects against photutils and sep; returns
    the lines to print."""
    return bench_forced(n_objects=args.stars, nx=args.nx, ny=args.ny, seed=args.seed, repeat=args.repeat,
                        photutils=False if args.no_photutils else None,
                        photutils_objects=args.photutils_objects)["lines"]
