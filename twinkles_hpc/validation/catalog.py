"""Objects, ForcedSource and the calexp source tables against the truth: completeness and purity,
photometric residuals, PA1, AM1 and supernova light curves (definitions in docs/validation.md)."""

import numpy as np
from scipy.spatial import cKDTree

from twinkles_hpc import instrument
from twinkles_hpc.validation import metrics
from twinkles_hpc.validation.match import brightest_within, has_neighbour, tangent_arcsec
from twinkles_hpc.instrument import mag_to_njy, njy_to_mag
from twinkles_hpc.validation.products import galaxy_mag, null_metric, variable_true_fluxes

#: Isolation for photometric residuals: no other truth source within this radius (arcsec) ...
ISOLATION_ARCSEC = 3.0
#: ... brighter than the star's magnitude + this (10% of its flux).
ISOLATION_DMAG = 2.5
#: Completeness bins: 0.5 mag in r from this magnitude.
BIN_WIDTH, BIN_START = 0.5, 16.0
#: AM1 stars: measured with PSF-flux SNR >= this in the visit (validate_drp's bright-star cut) ...
AM1_SNR_MIN = 50.0
#: ... within this radius (arcsec) of the truth star.
AM1_MATCH_ARCSEC = 0.5
#: Per band when every band has this many pairs, else pooled.
AM1_MIN_PAIRS = 5
_AM1_KEYS = ("am1_mas", "n_pairs", "n_stars", "n_visits")


def detection(truth, objs, cov, V):
    """Completeness per 0.5 mag of true r of the truth stars and galaxies in the covered area (claimed by a
    primary Object), the r where it falls below 90% and 50%, and the purity of the primary Objects."""
    stars, gals = truth["stars"], truth["galaxies"]
    r = np.r_[stars["mag_r"], galaxy_mag(gals, "r")]
    is_star = np.r_[np.ones(len(stars), bool), np.zeros(len(gals), bool)]
    ra, dec = np.r_[stars["ra"], gals["ra"]], np.r_[stars["dec"], gals["dec"]]
    inside = cov(ra, dec)
    r, is_star, ra, dec = r[inside], is_star[inside], ra[inside], dec[inside]
    if len(r) == 0:
        return null_metric("no truth stars or galaxies in the area the coadds cover")
    xy_t = tangent_arcsec(ra, dec, truth["ra0"], truth["dec0"])
    xy_o = tangent_arcsec(objs["psRa"], objs["psDecl"], truth["ra0"], truth["dec0"])
    claimed = brightest_within(xy_o, xy_t, r, V.match_radius_arcsec)
    detected = np.zeros(len(r), bool)
    detected[claimed[claimed >= 0]] = True
    lo = min(BIN_START, np.floor(2 * r.min()) / 2)
    edges = np.arange(lo, np.ceil(2 * r.max()) / 2 + BIN_WIDTH / 2, BIN_WIDTH)
    n, k, frac = metrics.completeness(r, detected, edges)
    ns, _, fs = metrics.completeness(r[is_star], detected[is_star], edges)
    ng, _, fg = metrics.completeness(r[~is_star], detected[~is_star], edges)
    bins = [{"r_lo": float(e), "r_hi": float(e + BIN_WIDTH), "n_truth": int(a), "n_detected": int(b),
             "completeness": f, "completeness_stars": f1, "n_stars": int(a1), "completeness_galaxies": f2,
             "n_galaxies": int(a2)}
            for e, a, b, f, a1, f1, a2, f2 in zip(edges[:-1], n, k, frac, ns, fs, ng, fg)]
    out = {"radius_arcsec": V.match_radius_arcsec, "n_truth": len(r), "n_objects": len(objs),
           "bins": bins}
    for level, key in ((0.5, "mag50"), (0.9, "mag90")):
        m, why = metrics.mag_at_completeness(edges, frac, level, n)
        out[key] = m if why is None else null_metric(why)
    # the checked bin: [completeness_mag - 0.5, completeness_mag)
    sel = (r >= V.completeness_mag - BIN_WIDTH) & (r < V.completeness_mag)
    out["at_mag"] = (
        {"r_lo": V.completeness_mag - BIN_WIDTH, "r_hi": V.completeness_mag, "n_truth": int(sel.sum()),
         "completeness": float(detected[sel].mean())} if sel.any()
        else null_metric(f"no truth stars or galaxies with {V.completeness_mag - BIN_WIDTH:g} <= r < "
                         f"{V.completeness_mag:g} in the covered area"))
    # purity: any truth source (static or variable) within the radius
    parts = [tangent_arcsec(ra, dec, truth["ra0"], truth["dec0"])]
    for k2 in ("supernovae", "lensed_images"):
        t = truth.get(k2)
        if t is not None and len(t):
            parts.append(tangent_arcsec(t["ra"], t["dec"], truth["ra0"], truth["dec0"]))
    xy_all = np.concatenate(parts)
    matched = has_neighbour(xy_o, V.match_radius_arcsec, xy_all)
    out["purity"] = float(matched.mean()) if len(objs) else null_metric("no primary Objects")
    area = out["area_arcmin2"] = cov.area
    # what chance alone would give: truth density x the circle's area
    out["purity_chance"] = float(1 - np.exp(-len(xy_all) / (area * 3600.0) * np.pi * V.match_radius_arcsec ** 2)) \
        if area > 0 else None
    return out


def _stars_matched(truth, objs, band, V, extra_mask=None):
    """Truth stars with pa1_mag_min <= mag_band < pa1_mag_max and the primary Object that claims each
    (brightest truth within the radius): (star rows, object rows)."""
    stars, gals = truth["stars"], truth["galaxies"]
    xy_s = tangent_arcsec(stars["ra"], stars["dec"], truth["ra0"], truth["dec0"])
    xy_g = tangent_arcsec(gals["ra"], gals["dec"], truth["ra0"], truth["dec0"])
    xy_all = np.r_[xy_s, xy_g]
    mag_all = np.r_[stars[f"mag_{band}"], galaxy_mag(gals, band)]
    xy_o = tangent_arcsec(objs["psRa"], objs["psDecl"], truth["ra0"], truth["dec0"])
    claimed = brightest_within(xy_o, xy_all, mag_all, V.match_radius_arcsec)
    is_star = (claimed >= 0) & (claimed < len(stars))
    o_idx = np.flatnonzero(is_star)
    s_idx = claimed[o_idx]
    m = stars[f"mag_{band}"][s_idx]
    keep = (m >= V.pa1_mag_min) & (m < V.pa1_mag_max)
    if extra_mask is not None:
        keep &= extra_mask(o_idx, s_idx, xy_all, mag_all)
    # an Object claims one star; if two Objects claim the same star (a split source) keep neither
    uniq, counts = np.unique(s_idx[keep], return_counts=True)
    keep &= np.isin(s_idx, uniq[counts == 1])
    return s_idx[keep], o_idx[keep]


def photometry(truth, objs, bands, V):
    """Per band: Object PSF flux / true flux of isolated stars (pa1 magnitude range): median, robust scatter."""
    out = {}
    stars = truth["stars"]

    def isolated(o_idx, s_idx, xy_all, mag_all):
        ok = np.ones(len(s_idx), bool)
        tree = cKDTree(xy_all)
        for k, s in enumerate(s_idx):
            near = [j for j in tree.query_ball_point(xy_all[s], ISOLATION_ARCSEC) if j != s]
            ok[k] = not any(mag_all[j] < mag_all[s] + ISOLATION_DMAG for j in near)
        return ok

    for b in bands:
        s_idx, o_idx = _stars_matched(truth, objs, b, V, isolated)
        f = objs[f"{b}PsFlux"][o_idx]
        good = np.isfinite(f) & (objs[f"{b}Flags"][o_idx] == 0)
        ratio = f[good] / mag_to_njy(stars[f"mag_{b}"][s_idx[good]])
        if ratio.size < 3:
            out[b] = null_metric(f"{ratio.size} isolated unflagged stars with {V.pa1_mag_min:g} <= {b} < "
                                 f"{V.pa1_mag_max:g} matched to Objects (need 3)")
            continue
        out[b] = {"median_ratio": float(np.median(ratio)), "robust_scatter": metrics.robust_scatter(ratio),
                  "n_stars": int(ratio.size)}
    return out


def pa1_section(truth, objs, forced, bands, V, seed):
    """Per band: PA1 (metrics.pa1) of the point-like Objects that claim truth stars in the magnitude range."""
    if forced is None:
        return null_metric("no forced photometry: [level2] forced = false")
    out = {}
    for b in bands:
        if b not in forced:
            out[b] = null_metric(f"no visits in band {b}")
            continue
        _, o_idx = _stars_matched(truth, objs, b, V)
        point = objs["extendedness"][o_idx] == 0
        ids = objs["objectId"][o_idx[point]]
        fs = forced[b]
        use = np.isin(fs["objectId"], ids) & (fs["flags"] == 0) & (fs["psFlux"] > 0)
        # bright stars only: a star's median SNR over its visits >= pa1_snr_min
        snr = fs["psFlux"] / fs["psFlux_Sigma"]
        uid, inv = np.unique(fs["objectId"][use], return_inverse=True)
        med = np.array([np.median(snr[use][inv == k]) for k in range(uid.size)])
        use &= np.isin(fs["objectId"], uid[med >= V.pa1_snr_min])
        res = metrics.pa1(fs["objectId"][use], njy_to_mag(fs["psFlux"][use]), shuffles=V.pa1_shuffles,
                          seed=(seed, instrument.BANDS.index(b), 0x50A1))
        if res is None:
            out[b] = null_metric(f"fewer than 2 point-like stars with {V.pa1_mag_min:g} <= {b} < "
                                 f"{V.pa1_mag_max:g} and median SNR >= {V.pa1_snr_min:g} measured unflagged "
                                 "in 2 or more visits")
            continue
        res["n_visits"] = int(np.unique(fs["ccdVisitId"]).size)
        # the photon-noise part of PA1: median single-visit magnitude error of the measurements used
        res["noise_floor_mmag"] = float(1085.7 * np.median(fs["psFlux_Sigma"][use] / fs["psFlux"][use]))
        res["snr_min"] = float(V.pa1_snr_min)
        res["definition"] = ("validate_drp calcPA1: mean over shuffles of IQR/1.349 of per-star random "
                             "two-visit magnitude differences / sqrt(2)")
        out[b] = res
    return out


def am1_section(truth, sources, V, why_none=None):
    """validate_drp AM1 from the calexp source tables (`products.read_sources`: (visit_id, band, table)).

    In each visit, each unflagged source with snr >= AM1_SNR_MIN claims the brightest truth star or galaxy
    within AM1_MATCH_ARCSEC (in the visit's band); a truth star with pa1_mag_min <= mag_B < pa1_mag_max
    claimed by exactly one such source gives that visit's measured position of the star. metrics.am_x
    per band (pairs 4-6' apart, >= 2 common visits, std of the separation, median over pairs); the value
    is the worst band when every band with positions has >= AM1_MIN_PAIRS pairs, else all bands pooled
    (`combined` says which)."""
    if not sources:
        return null_metric(why_none or "no calexp source tables")
    st, gals = truth["stars"], truth["galaxies"]
    xy_all = np.r_[tangent_arcsec(st["ra"], st["dec"], truth["ra0"], truth["dec0"]),
                   tangent_arcsec(gals["ra"], gals["dec"], truth["ra0"], truth["dec0"])]
    rows = []                                          # (band, star, visit, ra, dec)
    for visit_id, band, src in sources:
        src = src[(src["flags"] == 0) & (src["snr"] >= AM1_SNR_MIN)]
        mag_all = np.r_[st[f"mag_{band}"], galaxy_mag(gals, band)]
        claim = brightest_within(tangent_arcsec(src["ra"], src["dec"], truth["ra0"], truth["dec0"]), xy_all,
                                 mag_all, AM1_MATCH_ARCSEC)
        ok = (claim >= 0) & (claim < len(st))
        ok[ok] &= (mag_all[claim[ok]] >= V.pa1_mag_min) & (mag_all[claim[ok]] < V.pa1_mag_max)
        uniq, counts = np.unique(claim[ok], return_counts=True)
        ok &= np.isin(claim, uniq[counts == 1])            # a star split into two sources: neither
        rows += [(band, s, visit_id, r, d) for s, r, d in zip(claim[ok], src["ra"][ok], src["dec"][ok])]
    if not rows:
        return null_metric(f"no unflagged source with snr >= {AM1_SNR_MIN:g} matched a truth star with "
                           f"{V.pa1_mag_min:g} <= mag < {V.pa1_mag_max:g}")
    band, star, visit, ra, dec = (np.array(c) for c in zip(*rows))
    per_band = {}
    for b in sorted(set(band.tolist()), key=instrument.BANDS.index):
        m = band == b
        res, n_annulus = metrics.am_x(star[m], visit[m], ra[m], dec[m])
        per_band[b] = _am1_summary(res, n_annulus, star[m], visit[m])
    pooled, n_annulus = metrics.am_x(star, visit, ra, dec)
    out = {"snr_min": AM1_SNR_MIN, "match_radius_arcsec": AM1_MATCH_ARCSEC, "bands": per_band,
           "pooled": _am1_summary(pooled, n_annulus, star, visit)}
    if all(r.get("n_pairs", 0) >= AM1_MIN_PAIRS for r in per_band.values()):
        worst = max(per_band, key=lambda b: per_band[b]["am1_mas"])
        out.update(combined=f"per band (worst: {worst})", **{k: per_band[worst][k] for k in _AM1_KEYS})
    elif pooled is not None:
        out.update(combined="pooled over bands (a band has fewer than "
                   f"{AM1_MIN_PAIRS} pairs)", **{k: out["pooled"][k] for k in _AM1_KEYS})
    else:
        return null_metric("no pair of bright stars 4-6' apart measured in 2 or more common "
                           "visits (the sensor is too small or holds too few bright stars)", **out)
    out["definition"] = ("validate_drp AM1: per pair of stars 4-6' apart, the std (ddof 1) of their "
                         "separation over the visits that measured both; median over pairs")
    return out


def _am1_summary(res, n_annulus, star, visit):
    out = {"n_pairs_in_annulus": n_annulus, "n_stars": int(np.unique(star).size),
           "n_visits": int(np.unique(visit).size)}
    if res is not None:
        out.update(am1_mas=res["am_mas"], n_pairs=res["n_pairs"])
    return out


def supernovae(rundir, truth, objs, forced, V):
    """Each primary Object claims the brightest supernova (peak true flux in the run) with light in the
    run within the radius; chi^2/dof of the Object's forced light curve against that supernova's truth."""
    sne = truth.get("supernovae")
    if sne is None or len(sne) == 0:
        return null_metric("no supernovae in truth.h5 ([supernovae] enabled = false or none in the field)")
    if forced is None:
        return null_metric("no forced photometry: [level2] forced = false")
    true, peak = variable_true_fluxes(rundir, sne["id"])
    lit = np.flatnonzero([peak.get(int(i), 0.0) > 0 for i in sne["id"]])
    if lit.size == 0:
        return null_metric("no supernova has light in any visit of the run")
    xy_sn = tangent_arcsec(sne["ra"][lit], sne["dec"][lit], truth["ra0"], truth["dec0"])
    xy_o = tangent_arcsec(objs["psRa"], objs["psDecl"], truth["ra0"], truth["dec0"])
    brightness = -np.array([peak[int(i)] for i in sne["id"][lit]])
    claim = brightest_within(xy_o, xy_sn, brightness, V.match_radius_arcsec)
    o_idx = np.flatnonzero(claim >= 0)
    if o_idx.size == 0:
        return null_metric(f"no supernova with light in the run within {V.match_radius_arcsec:g}\" of a "
                           "primary Object")
    fs = np.concatenate([_with_band(forced[b], b) for b in forced])
    fs = fs[(fs["flags"] == 0) & np.isfinite(fs["psFlux"])]
    fs = fs[np.argsort(fs["objectId"], kind="stable")]      # one sort, then each Object's rows by bisection
    fs_ids = np.ascontiguousarray(fs["objectId"])
    curves = []
    for o in o_idx:
        s = lit[claim[o]]
        oid = objs["objectId"][o]
        rows = fs[np.searchsorted(fs_ids, oid, "left"):np.searchsorted(fs_ids, oid, "right")]
        sid = int(sne["id"][s])
        tf = np.array([true.get((sid, int(v)), 0.0) for v in rows["ccdVisitId"]])   # no row: no light
        chi2, dof = metrics.light_curve_chi2(rows["psFlux"], rows["psFlux_Sigma"], tf, rows["band"])
        if chi2 is None:
            continue
        curves.append({"id": sid, "objectId": int(objs["objectId"][o]),
                       "offset_arcsec": float(np.hypot(*(xy_o[o] - xy_sn[claim[o]]))),
                       "n_epochs": len(rows), "dof": dof, "chi2_dof": chi2 / dof,
                       "peak_true_snr": float(np.max(tf / rows["psFlux_Sigma"]))})
    if not curves:
        return null_metric("no matched supernova has more unflagged epochs than bands", n_matched=int(o_idx.size))
    c2 = np.array([c["chi2_dof"] for c in curves])
    bright = np.array([c["peak_true_snr"] > 5 for c in curves])
    return {"n": len(curves), "n_matched": int(o_idx.size), "median_chi2_dof": float(np.median(c2)),
            "n_epochs_total": int(sum(c["n_epochs"] for c in curves)),
            "median_chi2_dof_snr5": float(np.median(c2[bright])) if bright.any() else None,
            "n_snr5": int(bright.sum()),
            "definition": "inverse-variance chi^2 of forced psFlux against the true flux per visit, one free "
                          "constant per band (static light under the PSF); dof = epochs - bands",
            "light_curves": curves}


def _with_band(arr, band):
    out = np.empty(len(arr), dtype=arr.dtype.descr + [("band", "U1")])
    for n in arr.dtype.names:
        out[n] = arr[n]
    out["band"] = band
    return out
