"""Per-image light curves of the lensed quasars against the truth (docs/validation.md, "lensed_images";
docs/lensmodel.md).

Every LensedImage (lenses/scenes.h5) is matched to the nearest true lensed image within IMAGE_MATCH_RADIUS;
its separation bin is the true distance to the nearest other image of its system. Per matched image and per
measurement (psFlux, the one the pipeline uses; directFlux on the calexp; templateFlux + diffFlux from the
difference), over its unflagged visits: the peak true S/N (true flux / error), the chi^2/dof against the
true fluxes with no free constant, and the scatter of the normalised residuals (flux - truth) / error
(1.4826 x their median absolute deviation, so that one bad visit does not hide the photon noise figure).
An image is good when chi^2/dof <= lens_lc_chi2_max and the scatter <= lens_lc_scatter_max. Figures per
separation bin, for images of peak S/N >= LC_MIN_SNR; the check is on the images at least LC_MIN_SEP from
their neighbours.

A supernova in the lens galaxy adds light at an image that its scene, which has no transient, gives to the
image. The visits in which true supernovae within BLEND_RADIUS of an image have as much light as the
measurement's error are left out of that image's figures (counted in `n_sn_visits`); the figures over every
visit are reported beside them (`chi2_dof_all`, `scatter_all`, `good_all`; `good_fraction_all`).
"""
import os

import numpy as np
from scipy.spatial import cKDTree

from twinkles_hpc.rundir import layout
from twinkles_hpc.store.atomic import open_read
from twinkles_hpc.store.tables import read_table
from twinkles_hpc.timedomain.lensphot import UNUSABLE, read_lensphot
from twinkles_hpc.validation.dia import BLEND_RADIUS
from twinkles_hpc.validation.match import tangent_arcsec
from twinkles_hpc.validation.products import need, null_metric, variable_true_fluxes

#: A LensedImage matches a true image this close (arcsec).
IMAGE_MATCH_RADIUS = 0.3
#: Separation bins (arcsec; distance to the nearest other true image of the system).
SEP_EDGES = (0.0, 0.7, 1.0, 1.5, np.inf)
#: The figures and the check count images of peak true S/N at least this ...
LC_MIN_SNR = 20.0
#: ... and the check those at least this far from their neighbours (arcsec).
LC_MIN_SEP = 0.7
#: Measurements compared: name -> (flux, error) columns or "template+diff".
MEASUREMENTS = ("psFlux", "directFlux", "difference")


def _columns(rows, name):
    if name == "difference":
        return rows["templateFlux"] + rows["diffFlux"], rows["diffFluxErr"]
    return rows[name], rows["psFluxErr" if name == "psFlux" else "directFluxErr"]


def image_figures(flux, err, true):
    """(peak S/N, chi^2/dof, robust scatter, n) of one light curve against its true fluxes; Nones when fewer
    than 3 usable visits."""
    ok = np.isfinite(flux) & np.isfinite(err) & (err > 0) & np.isfinite(true)
    if ok.sum() < 3:
        return None, None, None, int(ok.sum())
    z = (flux[ok] - true[ok]) / err[ok]
    mad = np.median(np.abs(z - np.median(z)))
    return (float(np.max(true[ok] / err[ok])), float(np.mean(z * z)), float(1.4826 * mad), int(ok.sum()))


def lensed_images_section(rundir, cfg, truth, V):
    """The per-image light-curve figures of a run (module docstring); a null metric with the reason when
    the lensphot stage is off or nothing was modelled."""
    if not (cfg.lensmodel.enabled and cfg.lensphot.enabled):
        return null_metric("no lensed-image light curves: [lensmodel] and [lensphot] must be enabled")
    ti = truth.get("lensed_images")
    if ti is None or len(ti) == 0:
        return null_metric("no lensed quasars in truth.h5")
    with open_read(need(os.path.join(rundir, layout.LENS_SCENES), "the scene models ([lensmodel])")) as fh:
        images = read_table(fh["images"])
    if len(images) == 0:
        return null_metric("no scene model has a point image")
    rows = read_lensphot(rundir)
    if rows is None or len(rows) == 0:
        return null_metric("no lensphot measurement")
    rows = rows[(rows["flags"] & UNUSABLE) == 0]
    rows = rows[np.argsort(rows["lensedImageId"], kind="stable")]
    ra0, dec0 = truth["ra0"], truth["dec0"]
    xy_t = tangent_arcsec(ti["ra"], ti["dec"], ra0, dec0)
    xy_m = tangent_arcsec(images["ra"], images["decl"], ra0, dec0)
    sne = truth.get("supernovae")
    near_sn = {}
    if sne is not None and len(sne):
        tree = cKDTree(tangent_arcsec(sne["ra"], sne["dec"], ra0, dec0))
        for k, hits in enumerate(tree.query_ball_point(xy_t, BLEND_RADIUS)):
            near_sn[int(ti["image_id"][k])] = sne["id"][hits]
    # one pass over the truth files: the images' fluxes and those of the supernovae near them
    true, _ = variable_true_fluxes(rundir, np.concatenate([ti["image_id"]] + list(near_sn.values())))
    per_image = []
    for m, xy in zip(images, xy_m):
        d = np.hypot(*(xy_t - xy).T)
        k = int(np.argmin(d))
        if d[k] > IMAGE_MATCH_RADIUS:
            continue
        tid = int(ti["image_id"][k])
        sib = (ti["sys_id"] == ti["sys_id"][k]) & (ti["image_id"] != tid)
        sep = float(np.hypot(*(xy_t[sib] - xy_t[k]).T).min()) if sib.any() else np.inf
        lo, hi = np.searchsorted(rows["lensedImageId"], m["lensedImageId"], "left"), \
            np.searchsorted(rows["lensedImageId"], m["lensedImageId"], "right")
        r = rows[lo:hi]
        tf = np.array([true.get((tid, int(v)), np.nan) for v in r["ccdVisitId"]])
        sn_flux = np.array([sum(true.get((int(s), int(v)), 0.0) for s in near_sn.get(tid, ()))
                            for v in r["ccdVisitId"]])
        rec = {"lensedImageId": int(m["lensedImageId"]), "truth_image_id": tid, "offset_arcsec": float(d[k]),
               "separation_arcsec": sep}
        for name in MEASUREMENTS:
            rec[name] = measurement_figures(*_columns(r, name), tf, sn_flux, V)
        per_image.append(rec)
    out = {"n_images_modelled": int(len(images)), "n_matched": len(per_image), "min_snr": LC_MIN_SNR,
           "images": per_image}
    for name in MEASUREMENTS:
        out[name] = _bins(per_image, name)
    strong = [r for r in per_image if (r["psFlux"]["peak_snr"] or 0) >= LC_MIN_SNR
              and r["separation_arcsec"] >= LC_MIN_SEP]
    out["n_checked"] = len(strong)
    out["good_fraction"] = float(np.mean([bool(r["psFlux"]["good"]) for r in strong])) if strong else None
    out["good_fraction_all"] = (float(np.mean([bool(r["psFlux"]["good_all"]) for r in strong])) if strong
                                else None)
    if not strong:
        out["good_fraction_reason"] = (f"no modelled image of peak S/N >= {LC_MIN_SNR:g} at least {LC_MIN_SEP:g}\" "
                                       "from its neighbours")
    return out


def measurement_figures(flux, err, true, sn_flux, V):
    """The figures of one measurement of one image (module docstring): over the visits where the true
    supernovae near the image (`sn_flux`, nJy per visit) have less light than the error, and over all."""
    clean = ~(sn_flux >= err)
    snr, chi2, scatter, n = image_figures(flux[clean], err[clean], true[clean])
    _, chi2_all, scatter_all, _ = image_figures(flux, err, true)
    return {"peak_snr": snr, "chi2_dof": chi2, "scatter": scatter, "n": n,
            "n_sn_visits": int(np.count_nonzero(~clean)), "good": _good(chi2, scatter, V),
            "chi2_dof_all": chi2_all, "scatter_all": scatter_all, "good_all": _good(chi2_all, scatter_all, V)}


def _good(chi2, scatter, V):
    return None if chi2 is None else bool(chi2 <= V.lens_lc_chi2_max and scatter <= V.lens_lc_scatter_max)


def _bins(per_image, name):
    """Per separation bin: images of peak S/N >= LC_MIN_SNR, good fraction, median chi^2/dof and scatter."""
    out = []
    for lo, hi in zip(SEP_EDGES[:-1], SEP_EDGES[1:]):
        sel = [r[name] for r in per_image if lo <= r["separation_arcsec"] < hi
               and (r[name]["peak_snr"] or 0) >= LC_MIN_SNR]
        out.append({"sep_lo": lo, "sep_hi": None if np.isinf(hi) else hi, "n": len(sel),
                    "good_fraction": float(np.mean([s["good"] for s in sel])) if sel else None,
                    "median_chi2_dof": float(np.median([s["chi2_dof"] for s in sel])) if sel else None,
                    "median_scatter": float(np.median([s["scatter"] for s in sel])) if sel else None})
    return out


def time_delays_section(rundir, truth, lensed):
    """TDC1 metrics (timedelay.tdc1_metrics) of the run's own delays against the truth: every pair (X, A) of
    the run's scene models with two or more images (lensphot.run_light_curves, the drw estimator with its
    defaults, as `twinkles-hpc timedelay RUNDIR` gives them), its true delay when X and A match two distinct
    true images of one system (the matches of the `lensed_images` section), else none. The metrics are over
    the pairs with a true delay; `n_estimates_without_truth` counts the delays estimated for the others
    (an image of the scene that matches no true image: a false image, or a supernova)."""
    if lensed.get("images") is None:
        return null_metric(lensed.get("reason") or "no lensed-image matches")
    from twinkles_hpc.timedomain.lensphot import run_light_curves
    from twinkles_hpc.timedomain.timedelay import measure_delays, tdc1_metrics
    ti = truth["lensed_images"]
    delay = dict(zip(ti["image_id"].tolist(), ti["delay"].tolist()))
    system = dict(zip(ti["image_id"].tolist(), ti["sys_id"].tolist()))
    match = {r["lensedImageId"]: r["truth_image_id"] for r in lensed["images"]}
    pairs = []
    for sid, curves, ids in run_light_curves(rundir):
        tA = match.get(ids["A"])
        for x, e in measure_delays(curves, "drw").items():
            tX = match.get(ids[x])
            true = (delay[tX] - delay[tA] if tA is not None and tX is not None and tX != tA
                    and system[tX] == system[tA] else None)
            pairs.append({"lensSystemId": sid, "pair": f"{x}-A", "lensedImageId": ids[x], "lensedImageIdA": ids["A"],
                          "delay": e.delay, "error": e.error, "reason": e.reason, "true_delay": true})
    known = [p for p in pairs if p["true_delay"] is not None]
    out = {"estimator": "drw", "n_pairs": len(pairs), "n_pairs_with_truth": len(known),
           "n_estimates_without_truth": sum(p["delay"] is not None for p in pairs if p["true_delay"] is None),
           "pairs": pairs}
    if not known:
        return dict(out, reason="no pair of the run's scene images matches two images of one true system")
    m = tdc1_metrics([(p["delay"], p["error"]) for p in known], [p["true_delay"] for p in known])
    return dict(out, **{k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in m.items()})
