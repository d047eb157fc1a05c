"""The light-curve monitor: which objects get a page (best-sampled supernovae, lensed quasar systems,
bright stars), and each object's page: light curves against the truth and calexp postage stamps.

Light curves come from the catalogue database (store.db.light_curve: ForcedSource x CcdVisit with the
true flux of the matched truth source); the Object of a transient is the one nearest to it
(ObjectTruthMatch), as `twinkles-hpc lightcurve --truth-id` finds it.
"""
import functools
import os

import numpy as np
import sqlalchemy as sa

from twinkles_hpc.errors import InputError
from twinkles_hpc.report import html as H
from twinkles_hpc.report import images, plots
from twinkles_hpc.rundir import layout
from twinkles_hpc.store import db, schema
from twinkles_hpc.store.atomic import open_read
from twinkles_hpc.instrument import mag_to_njy, njy_to_mag
from twinkles_hpc.validation.metrics import light_curve_chi2

#: Stars brighter than this (true r, AB) saturate in a 30 s visit: not shown as "bright stars".
STAR_BRIGHT_LIMIT = 16.0
#: Largest distance (arcsec) from a star to its Object for the star pages and the flux residuals.
STAR_MATCH_ARCSEC = 0.5


def band_offsets(lc, truth):
    """Per band, the inverse-variance weighted mean of psFlux - truth over the usable epochs: the static
    light under the PSF (host, lens galaxy, neighbours) that the forced flux includes and the truth not."""
    use = usable(lc)
    out = {}
    for b in np.unique(lc["filterName"][use]):
        m = use & (lc["filterName"] == b)
        w = 1.0 / lc["psFlux_Sigma"][m] ** 2
        out[str(b)] = float(np.sum(w * (lc["psFlux"][m] - truth[m])) / np.sum(w))
    return out


def usable(lc):
    return (lc["flags"] == 0) & np.isfinite(lc["psFlux"]) & np.isfinite(lc["psFlux_Sigma"]) & (lc["psFlux_Sigma"] > 0)


def chi2_dof(lc, truth):
    """chi^2/dof of the usable epochs against the truth with one free constant per band (as `validate`)."""
    m = usable(lc)
    chi2, dof = light_curve_chi2(lc["psFlux"][m], lc["psFlux_Sigma"][m], truth[m], lc["filterName"][m])
    return (chi2 / dof if chi2 is not None else None), int(m.sum())


def _stamp_strip(stamps_dir, rel, key, cutter, epochs, ra, dec, half):
    """Calexp stamps around (ra, dec) at the given epochs [(visit_id, band, mjd, caption)] -> HTML."""
    figs = []
    for vid, band, mjd, cap in epochs:
        got = cutter.cutout(vid, band, ra, dec, half)
        if got is None:
            continue
        name = f"{key}-v{int(vid):08d}.png"
        images.write_gray(os.path.join(stamps_dir, name), images.asinh_stretch(got[0], got[1]))
        figs.append(f'<figure><img src="{H.esc(rel + name)}" alt="visit {int(vid)}"><figcaption>'
                    f"{band} MJD {mjd:.1f}<br>{cap}</figcaption></figure>")
    if not figs:
        return H.note("no calexp stamps: no calibrated calexp covers this position")
    return f'<div class="stamps">{"".join(figs)}</div>'


def _coadd_stamp(stamps_dir, rel, key, coadds, ra, dec, marks=(), half=20):
    """A coadd cutout (r, else i, g, z, y, u) with crosses at `marks` [(ra, dec)] -> HTML figure."""
    for b in "rigzyu":
        if b not in coadds:
            continue
        got = images.coadd_cutout(coadds[b], ra, dec, half, marks)
        if got is None:
            continue
        g = images.asinh_stretch(got[0], got[1])
        rgb = np.repeat(g[..., None], 3, axis=2)
        for ox, oy in got[2]:
            ix, iy = round(half + ox), round(half + oy)
            for dx in (-4, -3, 3, 4):          # a red cross with an open centre: the image stays visible
                if 0 <= ix + dx < rgb.shape[1] and 0 <= iy < rgb.shape[0]:
                    rgb[iy, ix + dx] = (1, 0, 0)
                if 0 <= iy + dx < rgb.shape[0] and 0 <= ix < rgb.shape[1]:
                    rgb[iy + dx, ix] = (1, 0, 0)
        name = f"{key}-coadd-{b}.png"
        images.imsave(os.path.join(stamps_dir, name), rgb[::-1])
        return (f'<figure><img src="{H.esc(rel + name)}" alt="{b} coadd" style="width:200px;height:200px">'
                f"<figcaption>{b} coadd, {2 * half + 1} px ({0.2 * (2 * half + 1):.1f}\") square, north up, east left, "
                "asinh stretch" + (", red crosses: true image positions" if marks else "") + "</figcaption></figure>")
    return H.note("no coadd covers this position")


def _write_lc_csv(path, lc):
    cols = [c for c in ("expMidpt", "filterName", "ccdVisitId", "psFlux", "psFlux_Sigma", "truthFlux", "flags")
            if c in lc.colnames]
    lc[cols].write(path, format="ascii.csv", overwrite=True)


# ---- supernovae ------------------------------------------------------------------------------------------

def select_supernovae(run, n_max, m5_of_visit):
    """(summaries of the best-sampled matched supernovae, n matched, reason when none). `m5_of_visit`: visit
    ids -> five-sigma depths (array in, array out). Sampling score: the
    number of visits in which the supernova is brighter than the visit's five-sigma depth and its Object
    has an unflagged forced measurement (counted for the 4 n_max best by depth alone)."""
    if run.engine is None:
        return [], 0, run.missing["database"]
    if not run.has_tables("ObjectTruthMatch", "TruthSupernova", "TruthVariableFlux"):
        return [], 0, "the database has no truth tables (ObjectTruthMatch, TruthSupernova, TruthVariableFlux)"
    m = run.nearest_matches("supernova")
    if len(m["truthId"]) == 0:
        if run.count("TruthSupernova") == 0:
            return [], 0, "no supernovae in the truth ([supernovae] enabled = false or none in the field)"
        return [], 0, "no supernova lies within the match radius of an Object"
    if n_max == 0:
        return [], len(m["truthId"]), "none asked for (--max-sne 0)"
    tf = run.truth_flux(m["truthId"])
    if len(tf["sourceId"]) == 0:
        return [], len(m["truthId"]), "no matched supernova gives light in any visit of the run"
    det = np.nan_to_num(tf["mag"], nan=99.0) < m5_of_visit(tf["visitId"])
    ids, inv = np.unique(tf["sourceId"], return_inverse=True)
    n_det = np.bincount(inv, weights=det, minlength=len(ids))
    peak = np.full(len(ids), -np.inf)
    np.maximum.at(peak, inv, tf["fluxNjy"])
    obj = dict(zip(m["truthId"].tolist(), zip(m["objectId"].tolist(), m["distance_arcsec"].tolist())))
    cand = np.lexsort((-peak, -n_det))[:4 * n_max]
    measured = run.measured_visits([obj[int(ids[k])][0] for k in cand])
    n_meas = np.zeros(len(ids))
    rows = np.flatnonzero(np.isin(inv, cand) & det)        # the candidates' epochs brighter than m5
    for k, v in zip(inv[rows].tolist(), tf["visitId"][rows].tolist()):
        n_meas[k] += v in measured.get(obj[int(ids[k])][0], ())
    order = cand[np.lexsort((-peak[cand], -n_det[cand], -n_meas[cand]))][:n_max]
    out = []
    for k in order:
        sid = int(ids[k])
        out.append({"kind": "sn", "id": sid, "objectId": obj[sid][0], "distance_arcsec": obj[sid][1],
                    "n_detectable": int(n_det[k]), "n_measured_detectable": int(n_meas[k]),
                    "peak_true_mag": float(njy_to_mag(peak[k])) if peak[k] > 0 else None})
    return out, len(m["truthId"]), None


def supernova_page(run, ctx, s, sn_row):
    """Write objects/sn-ID.html (+ PNGs, CSV); fills the summary `s` with chi2/dof, epochs, redshift."""
    key = f"sn-{s['id']}"
    lc = run.light_curve(s["objectId"], truth_id=s["id"])
    truth = np.asarray(lc["truthFlux"], float)
    z, t0 = float(sn_row["redshift"]), float(sn_row["t0"])
    s.update(redshift=z, t0=t0)
    s["chi2_dof"], s["n_epochs"] = chi2_dof(lc, truth)
    use = usable(lc)
    s["peak_true_snr"] = float(np.max(truth[use] / lc["psFlux_Sigma"][use])) if use.any() else None
    off = band_offsets(lc, truth)
    window = (t0 - 40.0 * (1 + z), t0 + 120.0 * (1 + z))
    dense = _sn_model_curves(sn_row, window, np.unique(lc["filterName"]))
    inwin = (lc["expMidpt"] >= window[0]) & (lc["expMidpt"] <= window[1])
    plots.supernova(os.path.join(ctx.obj_dir, key + ".png"), lc[inwin], off, dense, window,
                    f"SN {s['id']} (z = {z:.3f}) on Object {s['objectId']}")
    _write_lc_csv(os.path.join(ctx.obj_dir, key + ".csv"), lc)
    lit = np.flatnonzero(truth > 0)
    pick = list(lit[np.argsort(-truth[lit])][:max(ctx.limits.n_stamps - 1, 1)])
    before = np.flatnonzero((truth <= 0) & (lc["expMidpt"] < t0))
    if len(lit) and (same := before[lc["filterName"][before] == lc["filterName"][pick[0]]]).size:
        before = same                          # the host alone in the band of the brightest epoch
    if len(before):
        pick.append(before[-1])                # the last epoch before the explosion: the host alone
    pick = sorted({int(i) for i in pick}, key=lambda i: lc["expMidpt"][i])
    epochs = [(lc["ccdVisitId"][i], lc["filterName"][i], lc["expMidpt"][i],
               f"true {njy_to_mag(truth[i]):.2f}" if truth[i] > 0 else "no SN light") for i in pick]
    stamps = _stamp_strip(ctx.stamp_dir, "stamps/", key, ctx.cutter, epochs, sn_row["ra"], sn_row["decl"],
                          ctx.limits.stamp_half)
    coadd = _coadd_stamp(ctx.stamp_dir, "stamps/", key, ctx.coadds, sn_row["ra"], sn_row["decl"])
    facts = [("supernova id", s["id"]), ("Object", s["objectId"]), ("distance to Object (arcsec)",
             H.num(s["distance_arcsec"])), ("redshift", H.num(z, "{:.4f}")), ("t0 (MJD of B max)", H.num(t0, "{:.2f}")),
             ("x1", H.num(float(sn_row["x1"]))), ("c", H.num(float(sn_row["c"]))),
             ("M_B", H.num(float(sn_row["MB"]), "{:.2f}")),
             ("host galaxy id", sn_row["hostId"]), ("peak true mag", H.num(s["peak_true_mag"], "{:.2f}")),
             ("usable epochs (all bands, whole run)", s["n_epochs"]), ("epochs brighter than m5", s["n_detectable"]),
             ("chi^2/dof vs truth", H.num(s["chi2_dof"])), ("peak true S/N", H.num(s["peak_true_snr"]))]
    body = (H.table(["quantity", "value"], [(H.esc(a), b) for a, b in facts], table_id="facts")
            + H.figure(key + ".png", "Forced PSF flux at the Object's position (nJy) minus its per-band static "
                       "offset (the inverse-variance weighted mean of flux - truth over the run: host light under the "
                       "PSF), with the supernova's true flux (lines: the simulation's SN Ia model; points: "
                       "ForcedSource). Window: t0 - 40(1+z) d to t0 + 120(1+z) d. Offsets (nJy): "
                       + ", ".join(f"{b} {v:.0f}" for b, v in off.items()))
            + f'<p><a href="{key}.csv">light curve as CSV</a> (all epochs; expMidpt in MJD, fluxes in nJy)</p>'
            + "<h3>Postage stamps</h3>" + coadd + stamps + _dia_section(run, ctx, key, s, sn_row)
            + '<p class="muted">Calexp stamps (electrons, asinh stretch per stamp, resampled to north up, east left '
              "at 0.2\"/px) centred on the supernova's true position: its brightest epochs and the last epoch before "
              "explosion.</p>")
    _write_page(ctx, key, f"Supernova {s['id']}", body)


def _dia_section(run, ctx, key, s, sn_row):
    """The supernova's DIA light curve (the DiaObject nearest to it, DiaObjectTruthMatch; DiaForcedSource on
    the differences) against the truth, and template / calexp / difference stamps at its brightest DIA
    epoch -> HTML; fills s["dia_chi2_dof"], s["diaObjectId"]. A note when the run has no DIA tables."""
    if not run.has_tables("DiaObjectTruthMatch", "DiaForcedSource"):
        return "<h3>Difference imaging</h3>" + H.note("no DIA light curve: the database has no DIA tables "
                                                       "(run with [diaforced] and [ingest] enabled)")
    m = schema.DiaObjectTruthMatch
    near = run.query(sa.select(m.c.diaObjectId, m.c.distance_arcsec).where(m.c.truthId == int(s["id"]))
                     .order_by(m.c.distance_arcsec, m.c.diaObjectId).limit(1))
    if len(near["diaObjectId"]) == 0:
        return "<h3>Difference imaging</h3>" + H.note("no DiaObject within the match radius of this supernova")
    oid = int(near["diaObjectId"][0])
    lc = db.dia_light_curve(run.engine, oid)
    lc.rename_columns(["midPointTai", "psFluxErr"], ["expMidpt", "psFlux_Sigma"])
    truth = np.asarray(lc["truthFlux"], float) if "truthFlux" in lc.colnames else np.zeros(len(lc))
    s["diaObjectId"] = oid
    s["dia_chi2_dof"], _ = chi2_dof(lc, truth)
    off = band_offsets(lc, truth)
    z, t0 = float(sn_row["redshift"]), float(sn_row["t0"])
    window = (t0 - 40.0 * (1 + z), t0 + 120.0 * (1 + z))
    inwin = (lc["expMidpt"] >= window[0]) & (lc["expMidpt"] <= window[1])
    plots.supernova(os.path.join(ctx.obj_dir, key + "-dia.png"), lc[inwin], off,
                    _sn_model_curves(sn_row, window, np.unique(lc["filterName"])), window,
                    f"SN {s['id']}: DiaObject {oid} (DiaForcedSource)")
    figs = []
    use = np.flatnonzero(usable(lc) & (truth > 0))
    if use.size:
        i = use[np.argmax(truth[use])]
        vid, band = int(lc["ccdVisitId"][i]), str(lc["filterName"][i])
        template = [os.path.join(run.rundir, p) for p in _template_patches(run.rundir, vid, band)]
        got = images.coadd_cutout(template, sn_row["ra"], sn_row["decl"], ctx.limits.stamp_half) if template else None
        cuts = [("template", got[:2] if got else None),
                ("calexp", ctx.cutter.cutout(vid, band, sn_row["ra"], sn_row["decl"], ctx.limits.stamp_half)),
                ("difference", ctx.dia_cutter.cutout(vid, band, sn_row["ra"], sn_row["decl"],
                                                     ctx.limits.stamp_half))]
        for what, cut in cuts:
            if cut is None:
                continue
            name = f"{key}-dia-{what}.png"
            images.write_gray(os.path.join(ctx.stamp_dir, name), images.asinh_stretch(cut[0], cut[1]))
            figs.append(f'<figure><img src="stamps/{H.esc(name)}" alt="{what}"><figcaption>{what}<br>{band} '
                        f"visit {vid}</figcaption></figure>")
    stamps = f'<div class="stamps">{"".join(figs)}</div>' if figs else H.note("no stamps at a lit DIA epoch")
    return ("<h3>Difference imaging</h3>"
            + H.figure(key + "-dia.png", f"DIA forced PSF flux (nJy) of DiaObject {oid} "
                       f"({H.num(float(near['distance_arcsec'][0]))}\" from the supernova) minus its per-band "
                       "offset (the supernova's light in the template), with the true flux; chi^2/dof "
                       f"{H.num(s['dia_chi2_dof'])} (one free constant per band)")
            + stamps + '<p class="muted">Template, calexp and difference around the supernova at its brightest '
              "DIA epoch (asinh stretch per stamp; north up, east left).</p>")


def _template_patches(rundir, visit_id, band):
    """The template files a visit's difference used (its `template_patches`), [] without a difference."""
    path = os.path.join(rundir, layout.diffim(visit_id, band))
    if not os.path.exists(path):
        return []
    with open_read(path) as fh:
        return [str(p) for p in np.atleast_1d(fh.attrs.get("template_patches", []))]


def _sn_model_curves(sn_row, window, bands, n=200):
    """{band: (mjd, true flux nJy)} of the simulated SN Ia model over the window (one model call for all
    bands); {} if it cannot be evaluated (the truth at the visits is drawn instead)."""
    from twinkles_hpc.sky.snmodel import SNIaModel
    bands = [str(b) for b in bands]
    if not bands:
        return {}
    t = np.linspace(window[0], window[1], n)
    try:
        mag = SNIaModel().mags(np.repeat(bands, n), np.tile(t, len(bands)), z=float(sn_row["redshift"]),
                               t0=float(sn_row["t0"]), x1=float(sn_row["x1"]), c=float(sn_row["c"]),
                               M_B=float(sn_row["MB"]))
    except InputError:
        return {}
    flux = np.where(np.isfinite(mag), mag_to_njy(np.where(np.isfinite(mag), mag, 99.0)), 0.0).reshape(len(bands), n)
    return {b: (t, flux[k]) for k, b in enumerate(bands)}


# ---- lensed quasars ----------------------------------------------------------------------------------------

def select_lenses(run, n_max):
    """(systems with at least one image matched to an Object, {imageId: (objectId, distance)}, reason)."""
    if run.engine is None:
        return [], {}, run.missing["database"]
    if not run.has_tables("ObjectTruthMatch", "TruthLensSystem", "TruthLensedImage", "TruthVariableFlux"):
        return [], {}, "the database has no truth tables (ObjectTruthMatch, TruthLensSystem, TruthLensedImage)"
    if n_max == 0:
        return [], {}, "none asked for (--max-lenses 0)"
    systems = run.query(sa.select(schema.TruthLensSystem))
    if len(systems["sysId"]) == 0:
        return [], {}, "no lensed quasars in the truth ([lensing] enabled = false or none in the field)"
    imgs = run.query(sa.select(schema.TruthLensedImage))
    m = run.nearest_matches("lensed_image")
    obj = dict(zip(m["truthId"].tolist(), zip(m["objectId"].tolist(), m["distance_arcsec"].tolist())))
    out = []
    for k in np.argsort(systems["iSrcMag"], kind="stable"):
        sid = int(systems["sysId"][k])
        sel = imgs["sysId"] == sid
        ims = [{c: imgs[c][j] for c in imgs} for j in np.flatnonzero(sel)]
        if not any(int(i["imageId"]) in obj for i in ims):
            continue
        out.append({"kind": "lens", "id": sid, "row": {c: systems[c][k] for c in systems}, "images": ims})
    if not out:
        return [], obj, (f"none of the {len(systems['sysId'])} lensed quasar systems has an image within the "
                         "match radius of an Object (off the sensor, or undetected)")
    return out[:n_max], obj, None


@functools.lru_cache(maxsize=2)
def _run_light_curves(rundir):
    """lensphot.run_light_curves of a run, read once per process for all its lens pages."""
    from twinkles_hpc.timedomain.lensphot import run_light_curves
    return run_light_curves(rundir)


def _scene_of_system(run, ims):
    """(lensSystemId, Scene, {lensedImageId: truth image row}) of the scene model whose LensedImages match
    most of the true images `ims` (LensedImageTruthMatch, nearest match), or None."""
    if not run.has_tables("LensedImageTruthMatch", "LensedImageForcedSource", "LensedImage"):
        return None
    path = run.path(layout.LENS_SCENES)
    if not os.path.isfile(path):
        return None
    truth = {int(im["imageId"]): im for im in ims}
    m = schema.LensedImageTruthMatch
    rows = run.query(sa.select(m.c.lensedImageId, m.c.truthId, m.c.distance_arcsec)
                     .where(m.c.truthId.in_(sorted(truth))))
    best = {}
    for iid, tid, d in sorted(zip(rows["lensedImageId"].tolist(), rows["truthId"].tolist(),
                                  rows["distance_arcsec"].tolist()), key=lambda r: (r[0], r[2], r[1])):
        best.setdefault(iid, tid)
    if not best:
        return None
    from twinkles_hpc.timedomain.lensphot import IMAGE_ID_STRIDE, scenes_from_tables
    systems = {}
    for iid in best:
        systems[iid // IMAGE_ID_STRIDE] = systems.get(iid // IMAGE_ID_STRIDE, 0) + 1
    sid = min(systems, key=lambda k: (-systems[k], k))
    with open_read(path) as fh:
        from twinkles_hpc.store.tables import read_table
        t = [read_table(fh[n]) for n in ("systems", "images", "neighbours")]
    t = [x[x["lensSystemId"] == sid] for x in t]
    if not len(t[0]):
        return None
    (_, scene, _), = scenes_from_tables(*t)
    return sid, scene, {iid: truth[tid] for iid, tid in best.items() if iid // IMAGE_ID_STRIDE == sid}


def _scene_part(run, ctx, key, ims):
    """The scene model's part of a lens page (stamps of the coadd, the model and the residual; per-image light
    curves against the truth; measured against true delays) and its figures, or ('', {}) without one."""
    got = _scene_of_system(run, ims)
    if got is None:
        return "", {}
    sid, scene, matched = got
    from twinkles_hpc.timedomain.lensphot import IMAGE_ID_STRIDE, UNUSABLE, coadd_scene
    from twinkles_hpc.timedomain.timedelay import measure_delays
    half = 20
    stamps = ""
    for b in "rigzyu":
        got = next((g for g in (coadd_scene(scene, p, half) for p in ctx.coadds.get(b, [])) if g is not None), None)
        if got is None:
            continue
        data, model, noise = got
        figs, n = [], 2 * half + 1
        strip = images.asinh_stretch(np.hstack([data, model, data - model]), noise)    # one stretch for the three
        for k, name in enumerate(("coadd", "model", "residual")):
            images.write_gray(os.path.join(ctx.stamp_dir, f"{key}-scene-{name}.png"), strip[:, k * n:(k + 1) * n])
            figs.append(f'<figure><img src="stamps/{key}-scene-{name}.png" alt="{name}" '
                        f'style="width:200px;height:200px"><figcaption>{b} {name}</figcaption></figure>')
        stamps = ('<div class="stamps">' + "".join(figs) + "</div>"
                  + f'<p class="muted">{b} coadd, the scene model fitted there (galaxy, {scene.n_images} point images, '
                    f"{len(scene.neighbour_ra)} neighbours, constant) and the residual, {2 * half + 1} px square, "
                    "north up, east left, one asinh stretch for the three.</p>")
        break
    curves, facts = [], []
    for k in range(scene.n_images):
        iid = sid * IMAGE_ID_STRIDE + k
        lc = db.lensed_light_curve(run.engine, iid)
        tr = matched.get(iid)
        ok = (lc["flags"] & UNUSABLE) == 0
        chi2 = None
        if "truthFlux" in lc.colnames and ok.sum() > 1:
            z = (lc["psFlux"][ok] - lc["truthFlux"][ok]) / lc["psFluxErr"][ok]
            chi2 = float(np.nanmean(z ** 2))
        label = f"LensedImage {iid}" + (f" = true image {int(tr['imageIndex'])}" if tr is not None else
                                          " (no true image within the match radius)")
        curves.append((label, lc))
        facts.append((iid, "-" if tr is None else int(tr["imageIndex"]), int(ok.sum()), H.num(chi2)))
    plots.scene_curves(os.path.join(ctx.obj_dir, key + "-scene.png"), curves)
    delays = ""
    found = [(c, ids) for s_id, c, ids in _run_light_curves(run.rundir) if s_id == sid]
    if found:
        c, ids = found[0]
        est = measure_delays(c, "drw")
        tA = matched.get(ids["A"])
        rows = []
        for x, e in est.items():
            tX = matched.get(ids[x])
            true = (float(tX["delay"]) - float(tA["delay"])) if tA is not None and tX is not None else None
            got = f"{e.delay:.1f} +/- {e.error:.1f}" if e.delay is not None else f"no estimate ({H.esc(e.reason)})"
            rows.append((f"{x} - A", ids[x], got, H.num(true, "{:.1f}")))
        delays = ("<h3>Time delays (drw estimator)</h3>"
                  + H.table(["pair", "LensedImage", "measured (d)", "true (d)"], rows, table_id="delays")
                  + f'<p class="muted">Image A is LensedImage {ids["A"]}, the brightest on the coadds; '
                    "`twinkles-hpc timedelay RUNDIR` gives the same.</p>")
    html = (f"<h3>Scene model (lens system {sid})</h3>" + stamps
            + H.table(["LensedImage", "true image", "usable epochs", "chi^2/dof vs truth"], facts,
                      table_id="scene-images")
            + H.figure(key + "-scene.png", "psFlux of each point image from the scene fit on the calexps (points) "
                       "against its true flux (lines), per band: no free constant.")
            + delays)
    return html, {"lens_system_id": sid, "n_scene_images": scene.n_images}


def lens_page(run, ctx, s, image_obj):
    key = f"lens-{s['id']}"
    row, ims = s["row"], s["images"]
    groups = {}
    for im in ims:
        o = image_obj.get(int(im["imageId"]))
        if o is not None:
            groups.setdefault(o[0], []).append(im)
    tf = run.truth_flux([im["imageId"] for im in ims])
    flux = {(int(a), int(v)): f for a, v, f in zip(tf["sourceId"], tf["visitId"], tf["fluxNjy"])}
    curves, chis, n_ep = [], [], 0
    for oid, group in groups.items():
        lc = run.light_curve(oid)
        truth = np.array([sum(flux.get((int(im["imageId"]), int(v)), 0.0) for im in group) for v in lc["ccdVisitId"]])
        c2, n = chi2_dof(lc, truth)
        chis.append(c2)
        n_ep = max(n_ep, n)
        label = "images " + "+".join(str(int(im["imageIndex"])) for im in group) + f" (Object {oid})"
        curves.append((label, lc, band_offsets(lc, truth), truth))
    finite = [c for c in chis if c is not None]
    s.update(n_objects=len(groups), n_epochs=n_ep, redshift=float(row["zSrc"]),
             chi2_dof=float(np.median(finite)) if finite else None)
    plots.lens_curves(os.path.join(ctx.obj_dir, key + ".png"), curves)
    marks = [(float(im["ra"]), float(im["decl"])) for im in ims]
    ra, dec = float(row["ra"]), float(row["decl"])
    coadd = _coadd_stamp(ctx.stamp_dir, "stamps/", key, ctx.coadds, ra, dec, marks)
    stamps = _stamp_strip(ctx.stamp_dir, "stamps/", key, ctx.cutter, ctx.spread_epochs(ra, dec), ra, dec,
                          ctx.limits.stamp_half)
    img_rows = [(int(im["imageIndex"]), H.num(float(im["xArcsec"]), "{:.2f}"), H.num(float(im["yArcsec"]), "{:.2f}"),
                 H.num(float(im["magnification"]), "{:.2f}"), H.num(float(im["delay"]), "{:.1f}"),
                 image_obj.get(int(im["imageId"]), ("none",))[0]) for im in ims]
    facts = [("system id", s["id"]), ("lens galaxy id", row["lensGalaxyId"]),
             ("z lens", H.num(float(row["zLens"]), "{:.3f}")), ("z source", H.num(float(row["zSrc"]), "{:.3f}")),
             ("velocity dispersion (km/s)", H.num(float(row["velDisp"]), "{:.0f}")),
             ("image separation (arcsec)", H.num(float(row["imSep"]), "{:.2f}")),
             ("DRW tau, observed frame (d)", H.num(float(row["tauObs"]), "{:.0f}")),
             ("source i mag (unlensed)", H.num(float(row["iSrcMag"]), "{:.2f}")),
             ("Objects holding its images", s["n_objects"]), ("median chi^2/dof vs truth", H.num(s["chi2_dof"]))]
    blended = any(len(g) > 1 for g in groups.values())
    scene_html, scene_facts = _scene_part(run, ctx, key, ims)
    s.update(scene_facts)
    body = (H.table(["quantity", "value"], [(H.esc(a), b) for a, b in facts], table_id="facts")
            + scene_html
            + "<h3>Images</h3>" + H.table(["image", "x (arcsec)", "y (arcsec)", "magnification", "delay (d)", "Object"],
                                          img_rows, table_id="images")
            + (H.note("Several images fall on one Object (blended at the coadd's resolution): its truth is the sum "
                      "of their true fluxes.") if blended else "")
            + H.figure(key + ".png", "Forced PSF flux (nJy) of each Object holding lensed images, minus its per-band "
                       "static offset (lens galaxy light), against the summed true flux of its images (lines), "
                       "per band.")
            + "<h3>Postage stamps</h3>" + coadd + stamps
            + '<p class="muted">Calexp stamps (electrons, asinh stretch per stamp, resampled to north up, east left) '
              "centred on the lens galaxy, at epochs spread evenly over the run (any band).</p>")
    _write_page(ctx, key, f"Lensed quasar system {s['id']}", body)


# ---- bright stars --------------------------------------------------------------------------------------------

def select_stars(run, n_max):
    if run.engine is None:
        return [], run.missing["database"]
    if not run.has_tables("ObjectTruthMatch", "TruthStar"):
        return [], "the database has no truth tables (ObjectTruthMatch, TruthStar)"
    if n_max == 0:
        return [], "none asked for (--max-stars 0)"
    m = run.nearest_matches("star", STAR_MATCH_ARCSEC)
    if len(m["truthId"]) == 0:
        return [], f"no truth star within {STAR_MATCH_ARCSEC}\" of an Object"
    st = run.rows_by_id("TruthStar", "starId", m["truthId"])
    rmag = dict(zip(st["starId"].tolist(), st["rMag"].tolist()))
    r = np.array([rmag.get(int(i), np.nan) for i in m["truthId"]])
    ok = np.flatnonzero(r >= STAR_BRIGHT_LIMIT)
    kind = run.object_nearest_kind(m["objectId"][ok])
    ok = [k for k in ok if kind.get(int(m["objectId"][k])) == "star"]
    ok = sorted(ok, key=lambda k: r[k])[:4 * n_max]
    # stars near the sensor's edge are measured in few visits (rotation): keep the well-sampled ones
    seen = run.measured_visits(m["objectId"][ok]) if ok else {}
    n_ep = {k: len(seen.get(int(m["objectId"][k]), ())) for k in ok}
    need = max(2, 0.5 * max(n_ep.values(), default=0))
    ok = [k for k in ok if n_ep[k] >= need][:n_max]
    if not ok:
        return [], f"no isolated truth star fainter than r = {STAR_BRIGHT_LIMIT:g} matched to an Object"
    return [{"kind": "star", "id": int(m["truthId"][k]), "objectId": int(m["objectId"][k]),
             "distance_arcsec": float(m["distance_arcsec"][k]), "r_mag": float(r[k])} for k in ok], None


def star_page(run, ctx, s):
    key = f"star-{s['id']}"
    lc = run.light_curve(s["objectId"], truth_id=s["id"])
    truth = np.asarray(lc["truthFlux"], float)
    s["chi2_dof"], s["n_epochs"] = chi2_dof(lc, truth)
    use = usable(lc) & (lc["psFlux"] > 0)
    d = 1e3 * (lc["psMag"][use] - lc["truthMag"][use])
    s["median_dmag_mmag"] = float(np.median(d)) if d.size else None
    s["rms_mmag"] = float(np.std(d, ddof=1)) if d.size > 1 else None
    plots.star(os.path.join(ctx.obj_dir, key + ".png"), lc[use], f"star {s['id']} (r = {s['r_mag']:.2f}) on Object "
               f"{s['objectId']}")
    _write_lc_csv(os.path.join(ctx.obj_dir, key + ".csv"), lc)
    row = run.rows_by_id("TruthStar", "starId", [s["id"]])
    ra, dec = float(row["ra"][0]), float(row["decl"][0])
    coadd = _coadd_stamp(ctx.stamp_dir, "stamps/", key, ctx.coadds, ra, dec)
    stamps = _stamp_strip(ctx.stamp_dir, "stamps/", key, ctx.cutter, ctx.spread_epochs(ra, dec), ra, dec,
                          ctx.limits.stamp_half)
    mags = ", ".join(f"{b} {float(row[b + 'Mag'][0]):.2f}" for b in "ugrizy")
    facts = [("star id", s["id"]), ("Object", s["objectId"]),
             ("distance to Object (arcsec)", H.num(s["distance_arcsec"])),
             ("true magnitudes (AB)", mags), ("usable epochs", s["n_epochs"]),
             ("median psMag - true (mmag)", H.num(s["median_dmag_mmag"], "{:.1f}")),
             ("rms of psMag - true (mmag)", H.num(s["rms_mmag"], "{:.1f}")),
             ("chi^2/dof about the per-band mean", H.num(s["chi2_dof"]))]
    body = (H.table(["quantity", "value"], [(H.esc(a), b) for a, b in facts], table_id="facts")
            + H.figure(key + ".png", "Forced PSF magnitude minus the true magnitude in each visit (mmag), error bars "
                       "from psFlux_Sigma (statistical only).")
            + f'<p><a href="{key}.csv">light curve as CSV</a></p>' + "<h3>Postage stamps</h3>" + coadd + stamps)
    _write_page(ctx, key, f"Star {s['id']}", body)


def _write_page(ctx, key, title, body):
    nav = [("../index.html", "report"), ("../index.html#objects", "object index")]
    with open(os.path.join(ctx.obj_dir, key + ".html"), "w") as fh:
        fh.write(H.page(f"{ctx.run_name}: {title}", body, nav))
