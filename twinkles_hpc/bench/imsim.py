"""`twinkles-hpc bench imsim`: `bench_imsim` times our Gaussian-mixture renderer on a full-sensor scene
against GalSim's usual per-object drawImage in the same run, compares per-object flux and size, then times
the rest of a visit (sky + noise, HDF5 write). `write_scene_catalog` writes the same scene as a PhoSim
instance catalogue, for `twinkles-hpc imsim` as a whole command (bench startup).
"""
import os
import tempfile

import numpy as np

from twinkles_hpc import instrument
from twinkles_hpc.bench.common import Timer, time_calls
from twinkles_hpc.imsim import noise, render
from twinkles_hpc.imsim.psf import PSFModel
from twinkles_hpc.imsim.wcs import SensorWCS, sky_to_pixel_matrix
from twinkles_hpc.store.atomic import atomic_h5

#: Field rotation of the benchmark scene (degrees), so that PA and the sky-to-pixel Jacobian are exercised.
BENCH_ROT_DEG = 30.0


def bench_jacobian(rot_deg=BENCH_ROT_DEG, pixel_scale=instrument.PIXEL_SCALE):
    """J (pixels per arcsec), (dx, dy) = J @ (d_east, d_north), of a visit with rotSkyPos = rot_deg."""
    return sky_to_pixel_matrix(rot_deg, pixel_scale)


def _power_law_mags(rng, n, lo, hi, slope):
    """Magnitudes in [lo, hi] with dN/dm proportional to 10^(slope m) (number counts)."""
    u = rng.random(n)
    a, b = 10 ** (slope * lo), 10 ** (slope * hi)
    return np.log10(a + u * (b - a)) / slope


def make_scene(*, nx=4000, ny=4072, n_stars=2000, n_galaxies=5000, seed=1, band="r", exptime=30.0):
    """Deterministic benchmark scene: dict of star and galaxy arrays (pixels, electrons, arcsec, degrees).

    Stars r 16-24 (dN/dm ~ 10^(0.15 m)); galaxies r 20-27 (10^(0.35 m)), 30% pure disks, 10% pure bulges,
    otherwise B/T uniform in 0.05-0.6; disk hlr ~ 1.2" x 10^(-0.08 (r - 20)) scattered by 0.15 dex, bulge hlr
    0.3-0.8 x the disk's, all clipped to 0.2-3"; disk q 0.2-1, bulge q 0.5-1.
    """
    rng = np.random.default_rng(seed)
    s_mag = _power_law_mags(rng, n_stars, 16.0, 24.0, 0.15)
    stars = {"x": rng.uniform(0, nx - 1, n_stars), "y": rng.uniform(0, ny - 1, n_stars),
             "flux": instrument.counts_from_mag(s_mag, band, exptime), "mag": s_mag}
    g_mag = _power_law_mags(rng, n_galaxies, 20.0, 27.0, 0.35)
    kind = rng.random(n_galaxies)
    bt = np.where(kind < 0.3, 0.0, np.where(kind < 0.4, 1.0, rng.uniform(0.05, 0.6, n_galaxies)))
    flux = instrument.counts_from_mag(g_mag, band, exptime)
    disk_hlr = np.clip(1.2 * 10 ** (-0.08 * (g_mag - 20.0) + rng.normal(0, 0.15, n_galaxies)), 0.2, 3.0)
    pa = rng.uniform(0, 180, n_galaxies)
    gal = {"x": rng.uniform(0, nx - 1, n_galaxies), "y": rng.uniform(0, ny - 1, n_galaxies), "mag": g_mag,
           "bulge_flux": bt * flux, "bulge_hlr": np.clip(disk_hlr * rng.uniform(0.3, 0.8, n_galaxies), 0.2, 3.0),
           "bulge_q": rng.uniform(0.5, 1.0, n_galaxies), "bulge_pa": (pa + rng.normal(0, 10, n_galaxies)) % 180,
           "disk_flux": (1 - bt) * flux, "disk_hlr": disk_hlr, "disk_q": rng.uniform(0.2, 1.0, n_galaxies),
           "disk_pa": pa}
    return {"stars": stars, "galaxies": gal}


def write_scene_catalog(path, scene, *, nx=4000, ny=4072, band="r", exptime=30.0, fwhm=0.7, seed=230):
    """Write `scene` (make_scene's, same nx, ny, band, exptime) as a PhoSim instance catalogue of a visit
    pointed at the field centre with rotSkyPos = BENCH_ROT_DEG, at the zenith (no extinction), seeing `fwhm`:
    stars as `point`, each galaxy as a bulge (`sersic2d` n = 4) and a disk (n = 1) line where that component
    has light, flat SEDs at z = 0 (magNorm is the band's magnitude). Returns the number of object lines."""
    from twinkles_hpc.sky.instcat import INSTCAT_OBJECT_DTYPE, write_instance_catalog

    w = SensorWCS(instrument.FIELD_RA, instrument.FIELD_DEC, BENCH_ROT_DEG, nx, ny, instrument.PIXEL_SCALE).astropy()
    s, g = scene["stars"], scene["galaxies"]
    parts = []
    o = np.zeros(len(s["x"]), INSTCAT_OBJECT_DTYPE)
    o["ra"], o["dec"] = w.wcs_pix2world(s["x"], s["y"], 0)
    o["mag_norm"], o["source_type"] = s["mag"], "point"
    parts.append(o)
    total = g["bulge_flux"] + g["disk_flux"]
    for comp, n in (("bulge", 4.0), ("disk", 1.0)):
        lit = g[f"{comp}_flux"] > 0
        o = np.zeros(int(lit.sum()), INSTCAT_OBJECT_DTYPE)
        o["ra"], o["dec"] = w.wcs_pix2world(g["x"][lit], g["y"][lit], 0)
        o["mag_norm"] = g["mag"][lit] - 2.5 * np.log10(g[f"{comp}_flux"][lit] / total[lit])
        o["source_type"], o["sersic_n"], o["pa_deg"] = "sersic2d", n, g[f"{comp}_pa"][lit]
        o["major_arcsec"] = g[f"{comp}_hlr"][lit]
        o["minor_arcsec"] = g[f"{comp}_hlr"][lit] * g[f"{comp}_q"][lit]
        parts.append(o)
    objects = np.concatenate(parts)
    objects["id"] = np.arange(len(objects))
    objects["sed"], objects["dust_rest"], objects["dust_lab"] = "flatSED", "none", "none"
    header = {"rightascension": repr(instrument.FIELD_RA), "declination": repr(instrument.FIELD_DEC),
              "mjd": "59580.1", "altitude": "90.0", "filter": str(instrument.BANDS.index(band)),
              "rotskypos": repr(BENCH_ROT_DEG), "seeing": repr(fwhm), "FWHMgeom": repr(fwhm),
              "vistime": repr(float(exptime)), "nsnap": "1", "obshistid": str(seed), "seed": str(seed)}
    write_instance_catalog(path, header, objects)
    return len(objects)


def render_scene(image, scene, jacobian, psf, origin=(0.0, 0.0)):
    """Our renderer: all stars and galaxies of `scene` into `image` (in place)."""
    s, g = scene["stars"], scene["galaxies"]
    render.render_points(image, s["x"], s["y"], s["flux"], psf, origin=origin)
    render.render_galaxies(image, g["x"], g["y"], g["bulge_flux"], g["bulge_hlr"], g["bulge_q"], g["bulge_pa"],
                           g["disk_flux"], g["disk_hlr"], g["disk_q"], g["disk_pa"], jacobian, psf, origin=origin)


def _subset(scene, kind, idx):
    return {k: np.asarray(v)[idx] for k, v in scene[kind].items()}


# ---------------------------------------------------------------- GalSim side
def galsim_object(galsim, scene, kind, i, jacobian, psf):
    """GalSim profile of object i in pixel units: Kolmogorov(fwhm at its position) sheared like our PSF, and
    for galaxies Sersic(n, hlr_major * sqrt(q)) sheared to q with the major axis at PA east of north, mapped
    to pixels by J (flux preserved)."""
    d = scene[kind]
    x, y = d["x"][i], d["y"][i]
    g1, g2 = psf.shear_at(x, y)
    p = galsim.Kolmogorov(fwhm=float(psf.fwhm_at(x, y)) / psf.pixel_scale).shear(g1=float(g1), g2=float(g2))
    if kind == "stars":
        return p.withFlux(float(d["flux"][i]))
    parts = []
    for comp, n in (("bulge", 4), ("disk", 1)):
        f = float(d[comp + "_flux"][i])
        if f > 0:
            q, hlr = float(d[comp + "_q"][i]), float(d[comp + "_hlr"][i])
            s = galsim.Sersic(n, half_light_radius=hlr * np.sqrt(q), flux=f)
            # (u, v) = (east, north); the major axis at PA east of north lies at 90 - PA from +u.
            parts.append(s.shear(q=q, beta=(90.0 - float(d[comp + "_pa"][i])) * galsim.degrees))
    J = jacobian
    gal = galsim.Add(parts).transform(J[0, 0], J[0, 1], J[1, 0], J[1, 1]) / abs(np.linalg.det(J))
    return galsim.Convolve(gal, p)


def galsim_draw(galsim, obj, x, y):
    """GalSim's usual drawImage (default method: pixel-convolved) into its own stamp centred on (x, y)."""
    return obj.drawImage(scale=1.0, center=galsim.PositionD(float(x), float(y)))


def render_galsim_scene(galsim, full, scene, jacobian, psf, limit=None):
    """Draw scene objects with GalSim into the galsim.Image `full` (bounds starting at 0); returns the count.

    With `limit`, draws only `limit` objects evenly spaced through the star and galaxy lists (the same mix).
    """
    ns, ng = len(scene["stars"]["x"]), len(scene["galaxies"]["x"])
    pick = np.arange(ns + ng)
    if limit is not None and limit < ns + ng:
        pick = np.unique(np.linspace(0, ns + ng - 1, max(int(limit), 1)).round().astype(int))
    for j in pick:
        kind, i = ("stars", j) if j < ns else ("galaxies", j - ns)
        stamp = galsim_draw(galsim, galsim_object(galsim, scene, kind, i, jacobian, psf),
                            scene[kind]["x"][i], scene[kind]["y"][i])
        b = stamp.bounds & full.bounds
        if b.isDefined():
            full[b] += stamp[b]
    return len(pick)


def compare_objects(galsim, scene, jacobian, psf, n_compare, seed=0):
    """Draw n_compare randomly chosen objects isolated with GalSim and with us (same stamp bounds, noise-free).

    Returns a dict of arrays: flux_ratio (ours / GalSim, stamp sums), size_ratio (HSM adaptive-moment sigma),
    shape_diff (|g_ours - g_GalSim| of the HSM observed shapes; checks the PA convention) and kind.
    """
    rng = np.random.default_rng(seed)
    ns, ng = len(scene["stars"]["x"]), len(scene["galaxies"]["x"])
    pick = rng.choice(ns + ng, size=min(n_compare, ns + ng), replace=False)
    rows = []
    for j in np.sort(pick):
        kind, i = ("stars", j) if j < ns else ("galaxies", j - ns)
        other = "galaxies" if kind == "stars" else "stars"
        d = scene[kind]
        stamp = galsim_draw(galsim, galsim_object(galsim, scene, kind, i, jacobian, psf), d["x"][i], d["y"][i])
        b = stamp.bounds
        ours = np.zeros((b.ymax - b.ymin + 1, b.xmax - b.xmin + 1))
        render_scene(ours, {kind: _subset(scene, kind, [i]), other: _subset(scene, other, [])}, jacobian, psf,
                     origin=(b.xmin, b.ymin))
        try:
            m_gs = galsim.hsm.FindAdaptiveMom(stamp)
            m_us = galsim.hsm.FindAdaptiveMom(galsim.ImageD(ours, xmin=b.xmin, ymin=b.ymin))
        except galsim.errors.GalSimHSMError:
            continue
        dg = np.hypot(m_us.observed_shape.g1 - m_gs.observed_shape.g1, m_us.observed_shape.g2 - m_gs.observed_shape.g2)
        rows.append((ours.sum() / stamp.array.sum(), m_us.moments_sigma / m_gs.moments_sigma, dg, kind))
    cols = list(zip(*rows)) if rows else [[], [], [], []]
    return {"flux_ratio": np.array(cols[0], float), "size_ratio": np.array(cols[1], float),
            "shape_diff": np.array(cols[2], float), "kind": np.array(cols[3], str)}


def _import_galsim(galsim):
    if galsim is False:
        return None
    if galsim is None or galsim is True:
        try:
            import galsim as gs
        except ImportError:
            return None
        return gs
    return galsim


def bench_imsim(*, nx=4000, ny=4072, n_stars=2000, n_galaxies=5000, seed=1, fwhm=0.7, band="r", exptime=30.0,
                galsim=None, n_compare=200, repeat=3, galsim_objects=None, extra_steps=None):
    """Time our renderer on a deterministic full-sensor scene, and GalSim on the same scene in the same run.

    galsim: None/True (use it if importable), False (skip), or the galsim module. galsim_objects: time GalSim
    on only N objects, evenly spaced through the scene, and extrapolate linearly (said so in the output).
    extra_steps: list of (name, callable(image)) timed, in order, after our render on the rendered image
    (the place for sky + noise and the HDF5 write). Returns a dict of numbers and `lines` (human-readable).
    """
    scene = make_scene(nx=nx, ny=ny, n_stars=n_stars, n_galaxies=n_galaxies, seed=seed, band=band,
                       exptime=exptime)
    J = bench_jacobian()
    psf = PSFModel(fwhm, pixel_scale=instrument.PIXEL_SCALE, nx=nx, ny=ny)

    def blank():
        image = np.empty((ny, nx))
        image.fill(0.0)                       # fault the pages in outside the timing (so for GalSim below)
        return image

    def render_into(image):
        render_scene(image, scene, J, psf)
        return image

    timer, image = time_calls(render_into, repeat, setup=blank)
    out = {"nx": nx, "ny": ny, "n_stars": n_stars, "n_galaxies": n_galaxies, "fwhm": fwhm, "band": band,
           "exptime": exptime, "render_best_s": timer.best, "render_median_s": timer.median,
           "image_sum": float(image.sum())}
    lines = [(f"imsim bench: {nx}x{ny} px, {n_stars} stars + {n_galaxies} bulge+disk galaxies, "
              f"seeing {fwhm}\", {band} band, {exptime:g} s"),
             (f"  ours:   render best {out['render_best_s']:.3f} s, median {out['render_median_s']:.3f} s "
              f"({len(timer.seconds)} runs, 1 core)")]
    for name, step in extra_steps or []:
        step_timer = Timer()
        step_timer(step, image)
        out[f"{name}_s"] = step_timer.best
        lines.append(f"  + {name}: {out[f'{name}_s']:.3f} s")
    if extra_steps:
        out["visit_total_s"] = out["render_best_s"] + sum(out[f"{n}_s"] for n, _ in extra_steps)
        lines.append(f"  visit total: {out['visit_total_s']:.3f} s")

    gs = _import_galsim(galsim)
    if gs is None:
        lines.append("  galsim: not run (not installed or galsim=False)")
        out["lines"] = lines
        return out
    total = n_stars + n_galaxies
    full = gs.ImageD(nx, ny, xmin=0, ymin=0, scale=1.0)
    full.array.fill(0.0)
    gs_timer = Timer()
    done = gs_timer(render_galsim_scene, gs, full, scene, J, psf, galsim_objects)
    t_gs = gs_timer.best
    if done < total:
        out["galsim_measured_s"], out["galsim_objects"] = t_gs, done
        t_gs *= total / max(done, 1)
        note = f" (extrapolated from {done} of {total} objects, {out['galsim_measured_s']:.1f} s measured)"
    else:
        note = ""
        out["galsim_image_sum"] = float(full.array.sum())
    out["galsim_s"] = t_gs
    out["speedup"] = t_gs / out["render_best_s"]
    lines.append(f"  galsim {gs.__version__}: {t_gs:.1f} s{note}; ours is {out['speedup']:.0f}x faster")
    cmp = compare_objects(gs, scene, J, psf, n_compare, seed=seed)
    for key in ("flux", "size"):
        dev = np.abs(cmp[f"{key}_ratio"] - 1)
        out[f"{key}_median_abs_dev"] = float(np.median(dev)) if dev.size else float("nan")
        out[f"{key}_max_abs_dev"] = float(dev.max()) if dev.size else float("nan")
    out["shape_max_abs_dev"] = float(cmp["shape_diff"].max()) if cmp["shape_diff"].size else float("nan")
    out["n_compared"] = int(cmp["flux_ratio"].size)
    lines.append(f"  agreement over {out['n_compared']} isolated objects ({(cmp['kind'] == 'stars').sum()} stars), "
                 f"noise-free, same stamps:")
    lines.append(f"    |flux ratio - 1|: median {out['flux_median_abs_dev']:.2e}, max {out['flux_max_abs_dev']:.2e}")
    lines.append(f"    |size ratio - 1| (HSM sigma): median {out['size_median_abs_dev']:.2e}, "
                 f"max {out['size_max_abs_dev']:.2e}")
    lines.append(f"    |shape difference| (HSM g): max {out['shape_max_abs_dev']:.2e}")
    out["lines"] = lines
    return out


def visit_steps(band="r", exptime=30.0, sky_mag=21.2):
    """The non-render steps of a visit, timed by bench_imsim after the render: sky + noise, write."""
    sky_e = noise.sky_electrons(sky_mag, band, exptime)
    state = {}

    def add_noise(image):
        state["pixels"], _ = noise.add_sky_and_noise(image, sky_e, instrument.READ_NOISE, (1, 1, 1))

    def write(image):
        with tempfile.TemporaryDirectory() as d, atomic_h5(os.path.join(d, "eimage.h5")) as fh:
            fh.create_dataset("image", data=state["pixels"])

    return [("sky+noise", add_noise), ("write HDF5", write)]


def run(args):
    """`twinkles-hpc bench imsim`: a full visit against GalSim; returns the lines to print."""
    res = bench_imsim(nx=args.nx, ny=args.ny, n_stars=args.stars, n_galaxies=args.galaxies, seed=args.seed,
                      repeat=args.repeat, galsim=False if args.no_galsim else None,
                      galsim_objects=args.galsim_objects, extra_steps=visit_steps())
    return res["lines"]
