"""Difference imaging against the truth (docs/validation.md, "dia").

The validation measures, on the run's own products: each supernova's noise on every difference it falls
on (the PSF-flux error at its true position), hence its peak true S/N; which supernovae have a DiaObject
within the match radius (the efficiency per S/N bin); the chi^2/dof of the DiaForcedSource light curve of
its nearest DiaObject against its true fluxes, with one free constant per band (the supernova's light in
the template), apart for the blended ones (another supernova within BLEND_RADIUS: against the group's
PSF-weighted truth); the flux bias of the epochs of true S/N >= 20; duplicates (two DiaObjects within the
radius of one supernova); purity
(DiaObjects within the radius of a true variable); and flux / sigma at blank positions on the differences
and the calexps. Every figure is per S/N bin: a median over supernovae below detection would hide the
answer.
"""
import json
import os

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS
from scipy.spatial import cKDTree

from twinkles_hpc.rundir import layout
from twinkles_hpc.store.atomic import attrs_dict, open_read
from twinkles_hpc.validation.match import has_neighbour, tangent_arcsec
from twinkles_hpc.validation.metrics import light_curve_fit
from twinkles_hpc.validation.products import need, null_metric, read_h5_table, variable_true_fluxes

#: Edges of the peak true S/N bins.
SNR_EDGES = (3.0, 5.0, 7.0, 10.0, 20.0, 50.0, np.inf)
#: Random positions per visit for the blank-sky figures, the candidates drawn for them (most fall near a
#: galaxy: the demo's sky has 275 per square arcminute), and their stream key.
BLANK_PER_VISIT = 400
BLANK_CANDIDATES = 12 * BLANK_PER_VISIT
BLANK_KEY = 0xB1A
#: Blank positions keep this far (arcsec) from every simulated star, galaxy (of any brightness: the light of
#: the galaxies below detection is sky to the pipeline but not blank), supernova and lensed image.
BLANK_CLEARANCE = 3.0
#: A supernova with another supernova (with light in the run) this close (arcsec) is blended: one DiaObject
#: measures both, so its light curve is compared with the sum of the group's true fluxes, each weighted by
#: the PSF's response at its offset (psf_response), and reported apart (`*_blended`, `n_blended`); the bias
#: figure uses unblended supernovae only.
BLEND_RADIUS = 1.5


def _blank_positions(shape, wcs, key, xy_static, ra0, dec0):
    """Up to BLANK_PER_VISIT random pixel positions (30 px from the edges) BLANK_CLEARANCE from `xy_static`."""
    ny, nx = shape
    rng = np.random.default_rng(key)
    x, y = rng.uniform(30, nx - 30, BLANK_CANDIDATES), rng.uniform(30, ny - 30, BLANK_CANDIDATES)
    ra, dec = wcs.all_pix2world(x, y, 0)
    keep = ~has_neighbour(tangent_arcsec(ra, dec, ra0, dec0), BLANK_CLEARANCE, xy_static)
    return x[keep][:BLANK_PER_VISIT], y[keep][:BLANK_PER_VISIT]


def _per_visit_pass(rundir, visits, cfg, truth, sne, lit, true):
    """One pass over the differences: {(sn row, visit_id): PSF-flux error (nJy) at the true position}, and
    flux / sigma at blank positions on the differences, and (z_direct, z_background) on the calexps (_blank)."""
    from twinkles_hpc.level2.background import Background
    from twinkles_hpc.level2.photometry import forced_photometry
    from twinkles_hpc.level2.psf import MixturePSF
    from twinkles_hpc.timedomain import dia
    ra0, dec0 = truth["ra0"], truth["dec0"]
    static = [tangent_arcsec(truth["stars"]["ra"], truth["stars"]["dec"], ra0, dec0)]
    g = truth.get("galaxies")
    if g is not None and len(g):
        static.append(tangent_arcsec(g["ra"], g["dec"], ra0, dec0))
    static.append(tangent_arcsec(sne["ra"], sne["dec"], ra0, dec0))
    li = truth.get("lensed_images")
    if li is not None and len(li):
        static.append(tangent_arcsec(li["ra"], li["dec"], ra0, dec0))
    static = np.concatenate(static)
    sigma, z_diff, z_direct, z_background, geometry = {}, [], [], [], {}
    sid = sne["id"]
    for v in visits:
        vid, band = int(v["visit_id"]), str(v["band"])
        with open_read(os.path.join(rundir, layout.diffim(vid, band))) as fh:
            if not fh.attrs["diffim_ok"]:
                continue
            a = attrs_dict(fh)
            image, variance, mask, psf = (fh[k][...] for k in ("image", "variance", "mask", "psf"))
        wcs = WCS(fits.Header.fromstring(str(a["wcs"])))
        err_scale = float(json.loads(a["summary"])["flux_error_scale"])
        njy = float(a["ap_corr"]) * float(a["flux_njy_per_electron"])
        dpsf = dia.product_psf(a, psf)
        geometry[vid] = (wcs, dpsf)
        rows = np.array([k for k in lit if (int(sid[k]), vid) in true], np.int64)
        if rows.size:
            x, y = wcs.all_world2pix(sne["ra"][rows], sne["dec"][rows], 0)
            ny, nx = image.shape
            on = np.isfinite(x) & np.isfinite(y) & (x > 5) & (y > 5) & (x < nx - 6) & (y < ny - 6)
            if on.any():
                ph = dia.measure(image, variance, mask, x[on], y[on], dpsf)
                for k, e, f in zip(rows[on], ph["psf_flux_err"], ph["flags"]):
                    if f == 0 and np.isfinite(e):
                        sigma[(int(k), vid)] = float(e) * err_scale * njy
        bx, by = _blank_positions(image.shape, wcs, [int(cfg.run.seed), vid, BLANK_KEY], static, ra0, dec0)
        ph = dia.measure(image, variance, mask, bx, by, dpsf)
        ok = (ph["flags"] == 0) & np.isfinite(ph["psf_flux"])
        z_diff.append(ph["psf_flux"][ok] / (ph["psf_flux_err"][ok] * err_scale))
        with open_read(os.path.join(rundir, layout.calexp(vid, band))) as fh:
            cal = attrs_dict(fh)
            img = fh["image"][...]
            rest = (fh["variance"][...], fh["mask"][...], bx, by, MixturePSF.from_dict(cal["psf"]))
            mesh = fh["background"][...]
        ph = forced_photometry(img, *rest, ap_radii=(3.0,))
        ok = (ph["flags"] == 0) & np.isfinite(ph["psf_flux"])
        z_direct.append(ph["psf_flux"][ok] / ph["psf_flux_err"][ok])
        sky = _true_sky(rundir, vid, band)
        if sky is not None:
            # the PSF flux of (true sky - subtracted background): the measurement's error from the background
            err = np.float32(sky) - Background.from_mesh(mesh, img.shape).image(img.shape)
            z_background.append(forced_photometry(err, *rest)["psf_flux"][ok] / ph["psf_flux_err"][ok])
    return sigma, z_diff, (z_direct, z_background), geometry


def _true_sky(rundir, vid, band):
    """The simulated sky level of a visit (electrons per pixel, the eimage's `sky_e`), None if not recorded."""
    path = os.path.join(rundir, layout.eimage(vid, band))
    if not os.path.isfile(path):
        return None
    with open_read(path) as fh:
        return float(fh.attrs["sky_e"]) if "sky_e" in fh.attrs else None


def psf_response(psf, x, y, dx, dy):
    """The PSF flux measured at (x, y) of a unit point source at (x + dx, y + dy) (pixels): the overlap of the
    Gaussian-mixture PSF with itself shifted, sum_ij w_i w_j N(d; C_i + C_j), over its value at d = 0."""
    w, a, b, c = (np.asarray(v, np.float64)[0] for v in psf.components_at(np.array([x]), np.array([y])))
    ww = w[:, None] * w[None, :]
    A, B, C = a[:, None] + a[None, :], b[:, None] + b[None, :], c[:, None] + c[None, :]
    det = A * C - B ** 2
    dx, dy = np.atleast_1d(dx)[:, None, None], np.atleast_1d(dy)[:, None, None]
    q = (C * dx ** 2 - 2 * B * dx * dy + A * dy ** 2) / det
    return (ww / np.sqrt(det) * np.exp(-0.5 * q)).sum((1, 2)) / (ww / np.sqrt(det)).sum()


def _blank(z, z_background=None):
    """n, mean, std and mean_err of flux / sigma at the blank positions; with `z_background` (the calexps'
    background error there, same positions) also mean_background, its mean, and mean_true_sky, the figure
    had the simulated sky been subtracted instead (the light of the scene that is left at the positions)."""
    z = np.concatenate(z) if z else np.zeros(0)
    if z.size < 100:
        return null_metric(f"{z.size} blank positions measured (fewer than 100)")
    out = {"n": int(z.size), "mean": float(z.mean()), "std": float(z.std()),
           "mean_err": float(z.std() / np.sqrt(z.size))}
    zb = np.concatenate(z_background) if z_background else np.zeros(0)
    if zb.size == z.size:
        out.update(mean_background=float(zb.mean()), mean_true_sky=float((z - zb).mean()))
    return out


def dia_section(rundir, truth, visits, cfg, V):
    """The difference-imaging figures of a run (module docstring); a null metric with the reason when the
    run has no DIA forced photometry or no supernovae."""
    if not (cfg.diffim.enabled and cfg.associate.enabled and cfg.diaforced.enabled):
        return null_metric("no DIA light curves: [diffim], [associate] and [diaforced] must be enabled")
    sne = truth.get("supernovae")
    if sne is None or len(sne) == 0:
        return null_metric("no supernovae in truth.h5 ([supernovae] enabled = false or none in the field)")
    objects = read_h5_table(need(os.path.join(rundir, layout.DIA_OBJECT), "the DiaObjects ([associate])"),
                            "dia_object")
    true, peak = variable_true_fluxes(rundir, sne["id"])
    lit = np.flatnonzero([peak.get(int(i), 0.0) > 0 for i in sne["id"]])
    sigma, z_diff, direct, geometry = _per_visit_pass(rundir, visits, cfg, truth, sne, lit, true)
    out = {"blank_difference": _blank(z_diff), "blank_direct": _blank(*direct), "n_dia_objects": len(objects)}
    peak_snr = {}
    for (k, vid), s in sigma.items():
        peak_snr[k] = max(peak_snr.get(k, 0.0), true[(int(sne["id"][k]), vid)] / s)
    seen = np.array(sorted(peak_snr), np.int64)
    if seen.size == 0:
        out.update(null_metric("no supernova with light falls on a difference image"))
        return out
    ra0, dec0 = truth["ra0"], truth["dec0"]
    xy_sn = tangent_arcsec(sne["ra"][seen], sne["dec"][seen], ra0, dec0)
    xy_o = tangent_arcsec(objects["ra"], objects["decl"], ra0, dec0)
    near = cKDTree(xy_o).query_ball_point(xy_sn, V.match_radius_arcsec) if len(objects) else [[] for _ in seen]
    lit_xy = tangent_arcsec(sne["ra"][lit], sne["dec"][lit], ra0, dec0)
    lit_tree = cKDTree(lit_xy)
    n_lit_near = np.array([len(h) for h in lit_tree.query_ball_point(xy_sn, BLEND_RADIUS)])
    xy_var = [lit_xy] + ([tangent_arcsec(truth["lensed_images"]["ra"], truth["lensed_images"]["dec"], ra0, dec0)]
                         if len(truth.get("lensed_images", [])) else [])
    near_var = has_neighbour(xy_o, V.match_radius_arcsec, np.concatenate(xy_var))
    out["purity"] = float(near_var.mean()) if len(objects) else None
    forced = _read_dia_forced(rundir, visits)
    ids = np.ascontiguousarray(forced["diaObjectId"])
    per_sn, bias = [], []
    for j, k in enumerate(seen):
        mine = np.array(sorted(near[j]), np.int64)
        rec = {"id": int(sne["id"][k]), "peak_snr": peak_snr[int(k)], "n_dia_objects": int(mine.size),
               "blended": bool(n_lit_near[j] > 1)}
        if mine.size:
            d = np.hypot(*(xy_o[mine] - xy_sn[j]).T)
            o = mine[np.argmin(d)]
            rows = forced[np.searchsorted(ids, objects["diaObjectId"][o], "left"):
                          np.searchsorted(ids, objects["diaObjectId"][o], "right")]
            if rec["blended"]:       # the DiaObject measures every supernova near it, each through the PSF
                group = lit[lit_tree.query_ball_point(xy_o[o], BLEND_RADIUS)]
                tf = _blend_truth(rows, sne, group, true, geometry)
            else:
                tf = np.array([true.get((rec["id"], int(v)), 0.0) for v in rows["ccdVisitId"]])
            chi2, dof, const = light_curve_fit(rows["psFlux"], rows["psFluxErr"], tf, rows["filterName"])
            if chi2 is not None:
                rec.update(diaObjectId=int(objects["diaObjectId"][o]), offset_arcsec=float(d.min()), dof=dof,
                           chi2_dof=chi2 / dof)
                if not rec["blended"]:
                    strong = tf / rows["psFluxErr"] >= 20
                    bias.extend(((rows["psFlux"] - const)[strong] / tf[strong]).tolist())
        per_sn.append(rec)
    out["supernovae"] = _by_snr(per_sn, V)
    out["flux_bias_snr20"] = float(np.median(bias) - 1.0) if bias else None
    out["n_epochs_snr20"] = len(bias)
    det = [r for r in per_sn if r["n_dia_objects"] and not r["blended"]]
    out["duplicates"] = float(np.mean([r["n_dia_objects"] > 1 for r in det])) if det else None
    out["n_blended"] = int(sum(r["blended"] for r in per_sn))
    out["light_curves"] = per_sn
    return out


def _blend_truth(rows, sne, group, true, geometry):
    """Per DiaForcedSource row: the summed true flux of the supernovae `group` (rows of `sne`), each times
    the PSF flux its light gives at the DiaObject's position in that visit (psf_response)."""
    out = np.zeros(len(rows))
    for i, (v, x, y) in enumerate(zip(rows["ccdVisitId"].tolist(), rows["x"], rows["y"])):
        f = np.array([true.get((int(sne["id"][k]), v), 0.0) for k in group])
        if not f.any() or v not in geometry:
            continue
        wcs, psf = geometry[v]
        sx, sy = wcs.all_world2pix(sne["ra"][group], sne["dec"][group], 0)
        out[i] = float(np.sum(f * psf_response(psf, x, y, sx - x, sy - y)))
    return out


def _by_snr(per_sn, V):
    """Per peak-S/N bin: supernovae, efficiency, light curves, median chi^2/dof, fraction good; and the
    two summary cuts of the checks (S/N >= 10 efficiency, S/N >= 20 good fraction)."""
    snr = np.array([r["peak_snr"] for r in per_sn])
    has = np.array([r["n_dia_objects"] > 0 for r in per_sn])
    blended = np.array([r["blended"] for r in per_sn])
    c2_all = np.array([r.get("chi2_dof", np.nan) for r in per_sn])
    c2 = np.where(blended, np.nan, c2_all)
    bins = []
    for lo, hi in zip(SNR_EDGES[:-1], SNR_EDGES[1:]):
        m = (snr >= lo) & (snr < hi)
        cm = c2[m & np.isfinite(c2)]
        bins.append({"snr": [lo, None if np.isinf(hi) else hi], "n": int(m.sum()),
                     "efficiency": float(has[m].mean()) if m.any() else None, "n_curves": int(cm.size),
                     "median_chi2_dof": float(np.median(cm)) if cm.size else None,
                     "good_fraction": float((cm < V.dia_chi2_max).mean()) if cm.size else None})
    m10, m20 = snr >= 10, (snr >= 20) & np.isfinite(c2)
    alone20 = (snr >= 20) & ~np.array([r["blended"] for r in per_sn])
    good20 = int((c2[m20] < V.dia_chi2_max).sum())
    return {"bins": bins, "n_snr10": int(m10.sum()), "n_snr20_unblended": int(alone20.sum()),
            "good_fraction_snr20_all": good20 / int(alone20.sum()) if alone20.any() else None,
            "efficiency_snr10": float(has[m10].mean()) if m10.any() else None,
            "n_snr20_curves": int(m20.sum()),
            "good_fraction_snr20": float((c2[m20] < V.dia_chi2_max).mean()) if m20.any() else None,
            "median_chi2_dof_snr20": float(np.median(c2[m20])) if m20.any() else None,
            **_blended_figures(snr, blended, c2_all, V)}


def _blended_figures(snr, blended, c2, V):
    """The same light-curve figures for the blended supernovae (against their group's PSF-weighted truth),
    and the good fraction over every light curve above S/N 20, blended or not (what the check uses)."""
    m = blended & (snr >= 20) & np.isfinite(c2)
    every = (snr >= 20) & np.isfinite(c2)
    return {"n_snr20_blended_curves": int(m.sum()), "n_snr20_curves_all": int(every.sum()),
            "good_fraction_snr20_combined": float((c2[every] < V.dia_chi2_max).mean()) if every.any() else None,
            "good_fraction_snr20_blended": float((c2[m] < V.dia_chi2_max).mean()) if m.any() else None,
            "median_chi2_dof_snr20_blended": float(np.median(c2[m])) if m.any() else None}


def _read_dia_forced(rundir, visits):
    """Every visit's unflagged DiaForcedSource rows with a finite flux, sorted by diaObjectId (stable)."""
    parts = [read_h5_table(need(os.path.join(rundir, layout.dia_forced(v["visit_id"], v["band"])),
                                "DIA forced photometry ([diaforced])"), "dia_forced_source") for v in visits]
    f = np.concatenate(parts)
    f = f[(f["flags"] == 0) & np.isfinite(f["psFlux"]) & (f["psFluxErr"] > 0)]
    return f[np.argsort(f["diaObjectId"], kind="stable")]
