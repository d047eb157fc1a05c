"""`twinkles-hpc validate RUNDIR`: a run's Level 2 outputs against its truth, from the HDF5 products.

`validate_run` returns a JSON-ready report and the list of failed checks. A metric the run cannot give
(a stage that was off, no stars in the range, no pairs 5' apart) is None with a `reason` and fails
nothing. A product the run's config says must exist but does not is bad input (InputError: exit 2).
"""
import os

from twinkles_hpc.rundir import layout
from twinkles_hpc.validation import catalog, cost, products
from twinkles_hpc.validation.calibration import calibration
from twinkles_hpc.validation.catalog import BIN_WIDTH
from twinkles_hpc.validation.database import database_counts
from twinkles_hpc.validation.dia import dia_section
from twinkles_hpc.validation.lenses import lenses_section
from twinkles_hpc.validation.lensphot import lensed_images_section, time_delays_section
from twinkles_hpc.validation.products import need, null_metric, read_h5_table


def _check(name, value, op, threshold, reason=None):
    if value is None:
        return {"metric": name, "value": None, "threshold": threshold, "ok": None, "reason": reason}
    ok = value <= threshold if op == "<=" else value >= threshold
    return {"metric": name, "value": value, "op": op, "threshold": threshold, "ok": bool(ok)}


def _val(x, key=None):
    """(value, reason) of a metric that may be a null record."""
    if isinstance(x, dict) and "reason" in x and x.get("value") is None:
        return None, x["reason"]
    return (x if key is None else x[key]), None


def checks(rep, V):
    out = []
    cal = rep["calibration"]
    for b, c in (cal.items() if "reason" not in cal else []):
        if "reason" in c:
            out.append(_check(f"zp_offset_mmag.median_abs[{b}]", None, "<=", V.zp_max_mmag, c["reason"]))
            continue
        out.append(_check(f"zp_offset_mmag.median_abs[{b}]", c["zp_offset_mmag"]["median_abs"], "<=",
                          V.zp_max_mmag))
        out.append(_check(f"astrom_offset_mas.median[{b}]", c["astrom_offset_mas"]["median"], "<=", V.astrom_max_mas))
    if "reason" in cal:
        out.append(_check("calibration", None, "<=", V.zp_max_mmag, cal["reason"]))
    for key, field, thr, metric in (("pa1", "pa1_mmag", V.pa1_max_mmag, "pa1_mmag"),
                                    ("photometry", "median_ratio", V.phot_bias_max, "phot_bias")):
        sec = rep[key]
        if "reason" in sec:
            out.append(_check(metric, None, "<=", thr, sec["reason"]))
            continue
        for b, r in sec.items():
            v, why = _val(r, field)
            if key == "photometry" and v is not None:
                v = abs(v - 1.0)
            out.append(_check(f"{metric}[{b}]", v, "<=", thr, why))
    v, why = _val(rep["am1"], "am1_mas")
    out.append(_check("am1_mas", v, "<=", V.am1_max_mas, why))
    det = rep["detection"]
    if "reason" in det:
        out.append(_check("completeness", None, ">=", V.completeness_min, det["reason"]))
    else:
        v, why = _val(det["at_mag"], "completeness")
        out.append(_check(f"completeness[r {V.completeness_mag - BIN_WIDTH:g}-{V.completeness_mag:g}]", v, ">=",
                          V.completeness_min, why))
        v, why = _val(det["purity"])
        out.append(_check("purity", v, ">=", V.purity_min, why))
    v, why = _val(rep["supernovae"], "median_chi2_dof")
    out.append(_check("sn_median_chi2_dof", v, "<=", V.sn_chi2_max, why))
    dia = rep["dia"]
    sn = dia.get("supernovae", {})
    for name, value, op, thr in (
            ("dia_efficiency[S/N>=10]", sn.get("efficiency_snr10"), ">=", V.dia_efficiency_min),
            ("dia_good_light_curves[S/N>=20]", sn.get("good_fraction_snr20_combined"), ">=", V.dia_good_min),
            ("dia_flux_bias[S/N>=20]", None if dia.get("flux_bias_snr20") is None else abs(dia["flux_bias_snr20"]),
             "<=", V.dia_flux_bias_max),
            ("dia_duplicates", dia.get("duplicates"), "<=", V.dia_duplicates_max)):
        out.append(_check(name, value, op, thr, dia.get("reason") or (None if value is not None else "no supernova "
                                                                        "in the range")))
    for key in ("blank_difference", "blank_direct"):
        b = dia.get(key, {"reason": dia.get("reason")})
        if "reason" in b:
            continue
        out.append(_check(f"dia_{key}.mean", abs(b["mean"]), "<=", V.dia_blank_mean_max))
        out.append(_check(f"dia_{key}.std", abs(b["std"] - 1.0), "<=", V.dia_blank_std_tol))
    out += lens_checks(rep["lenses"], V)
    li = rep["lensed_images"]
    out.append(_check("lens_good_light_curves[S/N>=20, sep>=0.7\"]", li.get("good_fraction"), ">=",
                      V.lens_lc_good_min, li.get("reason") or li.get("good_fraction_reason")))
    dbr = rep["database"]
    if "reason" not in dbr:
        for t, d in dbr["difference"].items():
            if d is not None:
                out.append(_check(f"database_rows[{t}]", abs(d), "<=", 0))
    rss = rep["cost"]["coadd_peak_rss"]
    v, why = _val(rss, "max_mb")
    out.append(_check("coadd_peak_rss_mb", v, "<=", rss.get("limit_mb") if why is None else None, why))
    return out


def lens_checks(lens, V):
    """lens_completeness and lens_purity of the `lenses` section (validation/lenses.py)."""
    return [_check(name, lens.get(key), ">=", thr, lens.get("reason") or lens.get(f"{key}_reason"))
            for name, key, thr in (("lens_completeness", "completeness", V.lens_completeness_min),
                                   ("lens_purity", "purity", V.lens_purity_min))]


def validate_run(rundir, thresholds_toml=None, db_url=None):
    """Compute every metric of a run directory; returns (report, failed checks). thresholds_toml: take
    [validate] from this file; db_url: also check the row counts of this catalogue database."""
    rundir = os.path.abspath(rundir)
    cfg = products.load_config(rundir, thresholds_toml)
    V = cfg.validate
    visits = read_h5_table(need(os.path.join(rundir, layout.VISITS), "the run's cadence (visits.h5)"), "visits")
    truth = products.read_truth(rundir)
    rep = {"rundir": rundir, "thresholds": {k: getattr(V, k) for k in V.__dataclass_fields__},
           "calibration": calibration(rundir, visits, cfg)}
    got = products.read_objects(rundir, cfg)
    objs, forced, cov = None, None, None
    if got is None:
        why = null_metric("no Objects: [objects] enabled = false")
        rep.update(detection=why, photometry=why, pa1=why, supernovae=why)
    else:
        objs, bands = got
        cov = products.Coverage(rundir)
        rep["detection"] = catalog.detection(truth, objs, cov, V)
        rep["photometry"] = catalog.photometry(truth, objs, bands, V)
        forced = products.read_forced(rundir, visits, cfg)
        rep["pa1"] = catalog.pa1_section(truth, objs, forced, bands, V, cfg.run.seed)
        rep["supernovae"] = catalog.supernovae(rundir, truth, objs, forced, V)
    sources, why = products.read_sources(rundir, visits, cfg)
    rep["am1"] = catalog.am1_section(truth, sources, V, why)
    rep["dia"] = dia_section(rundir, truth, visits, cfg, V)
    rep["lenses"] = lenses_section(rundir, cfg, truth["ra0"], truth["dec0"], cov)
    rep["lensed_images"] = lensed_images_section(rundir, cfg, truth, V)
    rep["time_delays"] = time_delays_section(rundir, truth, rep["lensed_images"])
    rep["cost"] = cost.run_cost(rundir, cfg, len(visits), V)
    rep["database"] = database_counts(rundir, cfg, db_url, {
        "CcdVisit": (sum(c.get("n_visits", 0) for c in rep["calibration"].values())   # calibrated ones
                     if cfg.calexp.enabled else None),
        "Object": len(objs) if objs is not None else None,
        "ForcedSource": sum(len(f) for f in forced.values()) if forced is not None else None})
    rep["checks"] = checks(rep, V)
    failed = [c for c in rep["checks"] if c["ok"] is False]
    rep["passed"] = not failed
    return rep, failed
