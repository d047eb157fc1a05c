"""`twinkles-hpc bench detect`: our background and detection against sep (SExtractor as a library) on one
simulated full-sensor image, timed side by side in the same run and compared with the truth
(docs/level2-detect.md). The image is the scene of bench.imsim plus sky and noise.
"""
import numpy as np
from scipy.spatial import cKDTree

from twinkles_hpc import instrument
from twinkles_hpc.bench import imsim as bench_imsim
from twinkles_hpc.bench.common import time_calls
from twinkles_hpc.imsim.noise import add_sky_and_noise, sky_electrons
from twinkles_hpc.imsim.psf import PSFModel
from twinkles_hpc.level2.background import BackgroundConfig, estimate_background
from twinkles_hpc.level2.detect import detect, gaussian_taps, leaves

#: A detection within this distance (pixels) of a true source matches it.
MATCH_RADIUS = 2.0
#: Stars used for centroid errors have no other true source within this distance (pixels).
ISOLATION = 12.0


def simulate(*, nx, ny, n_stars, n_galaxies, seed, fwhm=0.7, band="r", exptime=30.0):
    """(eimage float32 electrons, scene, sky electrons per pixel, psf): the bench scene, sky, noise."""
    scene = bench_imsim.make_scene(nx=nx, ny=ny, n_stars=n_stars, n_galaxies=n_galaxies, seed=seed, band=band,
                                   exptime=exptime)
    psf = PSFModel(fwhm, pixel_scale=instrument.PIXEL_SCALE, nx=nx, ny=ny)
    expected = np.zeros((ny, nx))
    bench_imsim.render_scene(expected, scene, bench_imsim.bench_jacobian(), psf)
    sky = sky_electrons(instrument.DARK_SKY_MAG[band], band, exptime)
    image, _ = add_sky_and_noise(expected, sky, instrument.READ_NOISE, (seed, 0, 17))
    return image, scene, sky, psf


def match(x, y, tx, ty, radius=MATCH_RADIUS):
    """For each true source (tx, ty), the index of the nearest detection within `radius`, else -1."""
    if len(x) == 0:
        return np.full(len(tx), -1)
    d, i = cKDTree(np.c_[x, y]).query(np.c_[tx, ty], distance_upper_bound=radius)
    return np.where(np.isfinite(d), i, -1)


def score(x, y, scene, nx, ny):
    """Detections (x, y) against the truth: dict of counts and star centroid rms (pixels, per axis)."""
    s, g = scene["stars"], scene["galaxies"]
    tx, ty = np.r_[s["x"], g["x"]], np.r_[s["y"], g["y"]]
    ns = len(s["x"])
    mi = match(x, y, tx, ty)
    near = cKDTree(np.c_[tx, ty]).query(np.c_[tx, ty], k=2)[0][:, 1] if len(tx) > 1 else np.full(len(tx), np.inf)
    inside = (tx > 10) & (tx < nx - 11) & (ty > 10) & (ty < ny - 11)
    out = {"n": len(x), "matched_stars": int((mi[:ns] >= 0).sum()), "matched_galaxies": int((mi[ns:] >= 0).sum())}
    used = np.zeros(len(x), bool)
    used[mi[mi >= 0]] = True
    out["unmatched"] = int((~used).sum())
    for name, lo, hi in (("bright", 16.0, 21.0), ("faint", 22.5, 23.5)):
        sel = np.nonzero((mi[:ns] >= 0) & (near[:ns] > ISOLATION) & inside[:ns] & (s["mag"] >= lo) & (s["mag"] < hi))[0]
        dx, dy = x[mi[sel]] - tx[sel], y[mi[sel]] - ty[sel]
        out[f"{name}_n"] = len(sel)
        out[f"{name}_rms"] = float(np.sqrt(0.5 * np.mean(dx ** 2 + dy ** 2))) if len(sel) else float("nan")
    bright = (s["mag"] < 22) & inside[:ns]
    out["completeness_r22"] = float((mi[:ns][bright] >= 0).mean()) if bright.any() else float("nan")
    return out


def bench_detect(nx=4000, ny=4072, n_stars=2000, n_galaxies=5000, seed=1, *, threshold=5.0, fwhm=0.7,
                 mesh_size=128, filter_size=3, repeat=3, sep=None):
    """Time background estimation and detection, ours against sep, on one simulated sensor image.

    Background: estimate_background + Background.image() against sep.Background(bw=bh=mesh_size,
    fw=fh=filter_size) + back(). Extraction, on the same background-subtracted image (ours) with the variance
    max(eimage, 0) + read_noise^2 and the same Gaussian kernel (FWHM = the seeing): detect(threshold sigma)
    against sep.extract with the per-pixel error map (filter_type 'matched': the same significance
    threshold), and with a global rms and the equivalent threshold, threshold sqrt(sum K^2) rms (sep's fast
    path), then sep.winpos (windowed centroids like ours) on the latter. sep: None (use it if importable),
    False (skip), or the module. Returns a dict of numbers and `lines` (a table).
    """
    if sep is None:
        try:
            import sep
        except ImportError:
            sep = False
    image, scene, sky, _ = simulate(nx=nx, ny=ny, n_stars=n_stars, n_galaxies=n_galaxies, seed=seed, fwhm=fwhm)
    fwhm_px = fwhm / instrument.PIXEL_SCALE
    variance = (np.maximum(image, 0) + np.float32(instrument.READ_NOISE ** 2)).astype(np.float32)
    noise = float(np.sqrt(sky + instrument.READ_NOISE ** 2))
    cfg = BackgroundConfig(mesh_size=mesh_size, filter_size=filter_size)
    out = {"nx": nx, "ny": ny, "n_stars": n_stars, "n_galaxies": n_galaxies, "threshold": threshold,
           "fwhm_px": fwhm_px}

    def ours_bkg():
        b = estimate_background(image, config=cfg)
        return b, b.image()

    def bkg_row(name, seconds, bkg_img):
        out[f"{name}_bkg_s"] = seconds
        out[f"{name}_bkg_bias_sigma"] = float((bkg_img.mean(dtype=np.float64) - sky) / noise)
        out[f"{name}_bkg_rms_sigma"] = float(np.std(bkg_img - sky, dtype=np.float64) / noise)
        return (f"    {name:<24s}{seconds:7.3f} s  {out[f'{name}_bkg_bias_sigma']:+.4f}  "
                f"{out[f'{name}_bkg_rms_sigma']:.4f}")

    def det_row(name, seconds, x, y):
        out[f"{name}_s"], out[name] = seconds, score(x, y, scene, nx, ny)
        r = out[name]
        return (f"    {name:<24s}{seconds:7.3f} s {r['n']:6d} {r['matched_stars']:6d} {r['matched_galaxies']:6d} "
                f"{r['unmatched']:5d}   {r['bright_rms']:.4f} / {r['faint_rms']:.3f}   {r['completeness_r22']:.4f}")

    lines = [(f"detect bench: {nx}x{ny} px, {n_stars} stars + {n_galaxies} galaxies, seeing {fwhm}\" "
              f"({fwhm_px:.1f} px), sky {sky:.0f} e-/px, noise {noise:.1f} e-; best of {repeat} runs, 1 core"),
             (f"  background, mesh {mesh_size} px, filter {filter_size}: time, mean(bkg - sky) and rms(bkg - sky) "
              "in units of the pixel noise"),
             f"    {'':<24s}{'time':>9s}  {'bias':>7s}  {'rms':>6s}"]
    t, (bkg, bkg_img) = time_calls(ours_bkg, repeat)
    lines.append(bkg_row("ours", t.best, bkg_img))
    if sep:
        def sep_bkg():
            b = sep.Background(image, bw=mesh_size, bh=mesh_size, fw=filter_size, fh=filter_size)
            return b.back()
        t, sep_img = time_calls(sep_bkg, repeat)
        lines.append(bkg_row("sep", t.best, sep_img)
                     + f"   (ours: speed-up {out['sep_bkg_s'] / out['ours_bkg_s']:.2f}x)")
    sub = image - bkg_img
    taps = gaussian_taps(fwhm_px)
    kernel = np.outer(taps, taps).astype(np.float32)
    lines.append(f"  extraction, {threshold:g} sigma matched filter, >= 5 px: detections, true stars and galaxies "
                 f"matched within {MATCH_RADIUS:g} px,")
    lines.append("  unmatched detections, centroid rms per axis (px) of isolated stars r < 21 / r 22.5-23.5, "
                 "completeness of stars r < 22")
    lines.append(f"    {'':<24s}{'time':>9s} {'found':>6s} {'stars':>6s} {'gals':>6s} {'unm.':>5s}   "
                 f"{'centroids':^15s}   {'compl.':>6s}")
    t, (cat, _) = time_calls(lambda: detect(sub, variance, threshold=threshold, kernel_fwhm_px=fwhm_px), repeat)
    leaf = cat[leaves(cat)]
    lines.append(det_row("ours", t.best, leaf["x"], leaf["y"]))
    out["n_children"] = int((cat["parent"] > 0).sum())
    if sep:
        old = sep.get_extract_pixstack()
        sep.set_extract_pixstack(max(old, nx * ny // 4))
        try:
            err = np.sqrt(variance)
            t, o = time_calls(lambda: sep.extract(sub, threshold, err=err, filter_kernel=kernel,
                                                  filter_type="matched", minarea=5), repeat)
            lines.append(det_row("sep_error_map", t.best, o["x"], o["y"]))
            thr = threshold * float(np.sqrt((kernel.astype(np.float64) ** 2).sum()))
            t, o = time_calls(lambda: sep.extract(sub, thr, err=bkg.global_rms, filter_kernel=kernel, minarea=5),
                              repeat)
            lines.append(det_row("sep_global_rms", t.best, o["x"], o["y"]))
            sig = np.full(len(o), fwhm_px / 2.3548)
            tw, (xw, yw, _) = time_calls(lambda: sep.winpos(sub, o["x"], o["y"], sig), repeat)
            lines.append(det_row("sep_global_rms+winpos", t.best + tw.best, xw, yw))
        finally:
            sep.set_extract_pixstack(old)
        lines.append(f"  ours: speed-up {out['sep_error_map_s'] / out['ours_s']:.1f}x against sep with the error map, "
                     f"{out['sep_global_rms+winpos_s'] / out['ours_s']:.2f}x against its global-rms path + winpos; "
                     f"{out['n_children']} deblended children")
    else:
        lines.append("  sep: not run (not installed or sep=False)")
    out["lines"] = lines
    return out


def run(args):
    """`twinkles-hpc bench detect`: background + detection against sep; returns the lines to print."""
    return bench_detect(nx=args.nx, ny=args.ny, n_stars=args.stars, n_galaxies=args.galaxies, seed=args.seed,
                        repeat=args.repeat)["lines"]
