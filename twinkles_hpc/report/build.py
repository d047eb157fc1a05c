"""`twinkles-hpc report RUNDIR`: a static HTML page (PNG figures, no JavaScript, relative paths) of a
run's cadence, coadds, validation, residuals against the truth, light curves and trace.

The report is built in a temporary directory beside its destination and renamed into place at the end,
so a failed render leaves the previous report (or none), never a half-written one.
"""
import glob
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass

import numpy as np

from twinkles_hpc.errors import InputError
from twinkles_hpc.instrument import mag_to_njy
from twinkles_hpc.pipeline import registry
from twinkles_hpc.report import html as H
from twinkles_hpc.report import images, objects, plots
from twinkles_hpc.report.data import BANDS, RunData
from twinkles_hpc.report.trace import per_kind, utilisation
from twinkles_hpc.rundir import layout


@dataclass
class ReportLimits:
    """How much the report shows: caps keep a Run 1 scale database (1000+ visits, 10^4-10^5 Objects)
    within minutes."""
    max_supernovae: int = 30        #: supernova pages: the best-sampled (most epochs brighter than m5)
    max_lenses: int = 50            #: lensed quasar system pages (brightest source first)
    max_stars: int = 10             #: bright-star pages (brightest unsaturated isolated stars)
    n_stamps: int = 8               #: calexp postage stamps per object
    stamp_half: int = 15            #: stamp half-width, pixels (31 x 31 px = 6.2")

    def check(self):
        for k, v in asdict(self).items():
            if not isinstance(v, int) or v < (1 if k in ("stamp_half", "n_stamps") else 0):
                raise InputError("report", k, "a non-negative integer" if k not in ("stamp_half", "n_stamps")
                                 else "a positive integer", v)


class _Context:
    def __init__(self, run, out, limits):
        self.run_name, self.limits, self.out = run.name, limits, out
        self.obj_dir = os.path.join(out, "objects")
        self.stamp_dir = os.path.join(self.obj_dir, "stamps")
        os.makedirs(self.stamp_dir)
        self.cutter = images.CalexpStamps(run.rundir)
        self.dia_cutter = images.CalexpStamps(run.rundir, layout.diffim)
        self.coadds = images.coadd_patches(run.rundir)
        self.visits = run.visits

    def spread_epochs(self, ra, dec):
        """Up to n_stamps calibrated visits (any band) whose calexp holds (ra, dec), evenly spread in time."""
        v = self.visits
        if v is None or len(v) == 0:
            return []
        on = self.cutter.covering(v, ra, dec)
        pick = on[np.unique(np.linspace(0, len(on) - 1, min(self.limits.n_stamps, len(on))).round().astype(int))] \
            if len(on) else []
        return [(v["visit_id"][i], str(v["band"][i]), float(v["mjd"][i]), f"visit {int(v['visit_id'][i])}")
                for i in pick]


def write_report(rundir, out_dir=None, db_url=None, limits=None, validation_json=None, log=None, jobs=None):
    """Write the report of a run directory to `out_dir` (default RUNDIR/report); returns its summary
    (also written as report.json). `validation_json`: a saved `twinkles-hpc validate --json` output
    instead of running the validation. `jobs`: processes that draw the object pages and run the
    validation beside them (default: the usable cores, at most 4; 1 draws everything in this process)."""
    limits = limits or ReportLimits()
    limits.check()
    jobs = default_jobs() if jobs is None else int(jobs)
    if jobs < 1:
        raise InputError("report", "jobs", "a positive integer", jobs)
    t_start = time.time()
    run = RunData(rundir, db_url)
    out_dir = os.path.abspath(out_dir or run.path("report"))
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    _remove_dead_leftovers(out_dir)
    # not NAME.tmp-PID: that is a run's temporary file, which a resumed run deletes with os.remove
    tmp = f"{out_dir}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        summary = _render(run, tmp, limits, validation_json, log or (lambda m: None), jobs)
        summary["seconds"]["total"] = round(time.time() - t_start, 3)
        with open(os.path.join(tmp, "report.json"), "w") as fh:
            json.dump(summary, fh, indent=1, default=_jsonable)
        _swap_into_place(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        run.close()
    summary["index"] = os.path.join(out_dir, "index.html")
    return summary


def _remove_dead_leftovers(out_dir):
    """Delete OUT.partial-PID / OUT.old-PID directories of renders whose process is gone (killed)."""
    for path in glob.glob(f"{glob.escape(out_dir)}.partial-*") + glob.glob(f"{glob.escape(out_dir)}.old-*"):
        pid = path.rsplit("-", 1)[-1]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except PermissionError:          # alive, another user's
            pass


def _swap_into_place(tmp, out_dir):
    old = None
    if os.path.exists(out_dir):
        old = f"{out_dir}.old-{os.getpid()}"
        os.rename(out_dir, old)
    os.rename(tmp, out_dir)
    if old:
        shutil.rmtree(old, ignore_errors=True)


def _jsonable(x):
    if isinstance(x, np.generic):
        return x.item()
    return str(x)


def default_jobs():
    return max(1, min(4, len(os.sched_getaffinity(0))))


def _render(run, out, limits, validation_json, log, jobs):
    ctx = _Context(run, out, limits)
    summary = {"rundir": run.rundir, "name": run.name, "missing": dict(run.missing), "limits": asdict(limits),
               "jobs": jobs}
    steps = [("overview", "Overview", _overview), ("cadence", "Cadence", _cadence), ("coadds", "Coadds", _coadds),
             ("validation", "Validation", _validation), ("residuals", "Residuals against the truth", _residuals),
             ("objects", "Light-curve monitor", _objects), ("trace", "Trace", _trace)]
    # the validation and the object pages take most of the time: they go to worker processes, and the
    # sections that wait for the validation are drawn last
    order = ["overview", "cadence", "coadds", "objects", "trace", "validation", "residuals"]
    secs, bodies = {}, {}
    _STATE.update(run=run, ctx=ctx)
    pool = _start_pool(jobs) if jobs > 1 else None
    try:
        ctx.validation_result = (pool.apply_async(_validate_task, (run.rundir, run.db_url, validation_json))
                                 if pool else None)
        ctx.map = (lambda f, items: pool.map(f, items, chunksize=1)) if pool else (lambda f, items: list(map(f, items)))
        fns = {sid: fn for sid, _, fn in steps}
        for sid in order:
            t0 = time.time()
            bodies[sid] = fns[sid](run, ctx, summary, validation_json)
            secs[sid] = round(time.time() - t0, 3)
            log(f"report: {sid} {secs[sid]:.2f} s")
    finally:
        if pool:
            pool.terminate()
            pool.join()
        _STATE.clear()
    summary["seconds"] = secs
    sections = [H.section(sid, title, bodies[sid]) for sid, title, _ in steps]
    foot = (f'<p class="muted">Written by twinkles-hpc report with {jobs} process(es) ('
            + ", ".join(f"{k} {secs[k]:.1f} s" for k, _, _ in steps) + '). <a href="report.json">report.json</a>: '
            "the numbers of this page.</p>")
    page = H.page(f"Twinkles run {run.name}", "\n".join(sections) + foot, [(f"#{s}", t) for s, t, _ in steps])
    with open(os.path.join(out, "index.html"), "w") as fh:
        fh.write(page)
    return summary


#: What forked workers inherit: the run (its engine re-opened per process) and the context.
_STATE = {}


def _start_pool(jobs):
    import multiprocessing
    return multiprocessing.get_context("fork").Pool(jobs, initializer=_worker_init)


def _worker_init():
    run = _STATE["run"]
    if run.engine is not None:
        run.engine.dispose(close=False)      # the parent's pooled connections stay the parent's


def _validate_task(rundir, db_url, validation_json):
    from twinkles_hpc.validation import validate_run
    try:
        if validation_json:
            with open(validation_json) as fh:
                return json.load(fh), None
        return validate_run(rundir, None, db_url)[0], None
    except (InputError, OSError, json.JSONDecodeError) as exc:
        return None, str(exc)


def _page_task(job):
    """Draw one object page (in a worker or inline); returns the object's filled summary."""
    kind, s, extra = job
    run, ctx = _STATE["run"], _STATE["ctx"]
    if kind == "sn":
        objects.supernova_page(run, ctx, s, extra)
    elif kind == "lens":
        objects.lens_page(run, ctx, s, extra)
    else:
        objects.star_page(run, ctx, s)
    return s


# ---- sections -----------------------------------------------------------------------------------------------

def _overview(run, ctx, summary, _):
    c = run.config
    stages = ", ".join(s.name for s in registry.STAGES if s.optional and c.get(s.name, {}).get("enabled")) or \
        "none (simulation only)"
    rows = [("run directory", H.esc(run.rundir)), ("sensor (pixels)", f"{c['sensor']['nx']} x {c['sensor']['ny']}"),
            ("visits", len(run.visits) if run.visits is not None else "&ndash;"),
            ("Level 2 stages", H.esc(stages)),
            ("supernovae / lensed quasars in the sky", " / ".join(
                "on" if c.get(k, {}).get("enabled") else "off" for k in ("supernovae", "lensing"))),
            ("catalogue database", H.esc(run.engine.url.render_as_string(hide_password=True)) if run.engine
             else "none")]
    miss = "".join(H.note(H.esc(v)) for v in run.missing.values())
    return H.table(None, rows, left=(0, 1)) + miss


def _cadence(run, ctx, summary, _):
    v = run.visits
    if v is None:
        return H.note(H.esc(run.missing["visits"]))
    ccd = run.ccd_visits() if run.engine is not None else None
    plots.cadence(os.path.join(ctx.out, "cadence.png"), v, ccd)
    rows, per = [], {}
    for b in BANDS:
        m = v["band"] == b
        if not m.any():
            continue
        per[b] = {"n_visits": int(m.sum()), "median_fwhm_eff": float(np.median(v["fwhm_eff"][m])),
                  "median_m5": float(np.median(v["five_sigma_depth"][m]))}
        meas = ""
        if ccd is not None and (mc := ccd["filterName"] == b).any():
            per[b]["median_seeing_measured"] = float(np.nanmedian(ccd["seeing"][mc]))
            meas = H.num(per[b]["median_seeing_measured"], "{:.2f}")
        rows.append((b, per[b]["n_visits"], H.num(per[b]["median_fwhm_eff"], "{:.2f}"), meas or "&ndash;",
                     H.num(per[b]["median_m5"], "{:.2f}"),
                     H.num(float(v["mjd"][m].min()), "{:.1f}"), H.num(float(v["mjd"][m].max()), "{:.1f}")))
    summary["cadence"] = per
    return (H.figure("cadence.png", "Top: the visits of each band against time (MJD). Middle: seeing, the OpSim "
                     "FWHMeff of each visit (filled, arcsec) and the PSF FWHM measured on its calexp (open, CcdVisit."
                     "seeing, where the database has it). Bottom: the OpSim five-sigma point-source depth m5 of each "
                     "visit (filled, AB mag) and an estimate from the calexp (open: zero point, sky noise and the "
                     "measured FWHM with a Gaussian's noise-equivalent area 2.266 FWHM^2; the PSF model's core FWHM "
                     "is smaller than OpSim's FWHMeff of a PSF with wings, so these lie a few tenths of a mag deeper).")
            + H.table(["band", "visits", "median FWHMeff (\")", "median measured (\")", "median m5", "first MJD",
                       "last MJD"], rows))


def _coadds(run, ctx, summary, _):
    patches = ctx.coadds
    if not patches:
        return H.note("no coadds in this run ([coadd] enabled = false, or the coadd tasks have not run)")
    os.makedirs(os.path.join(ctx.out, "coadds"))
    figs, noises, planes, info = [], {}, {}, {}
    allpaths = [p for ps in patches.values() for p in ps]
    geom = images.mosaic_geometry(allpaths)
    f = images.mosaic_factor(geom)
    order = [b for b in BANDS if b in patches] + (["det"] if "det" in patches else [])
    for b in order:
        planes[b], noises[b] = images.band_mosaic(patches[b], geom, f)
    crop = images.data_box(list(planes.values()))
    for b in order:
        canvas = planes[b][crop]
        images.write_gray(os.path.join(ctx.out, "coadds", f"{b}.png"), images.asinh_stretch(canvas, noises[b]))
        info[b] = {"n_patches": len(patches[b])}
        unit = "S/N units" if b == "det" else "nJy per pixel"
        figs.append(H.figure(f"coadds/{b}.png", f"<b>{b}</b>: {len(patches[b])} patch(es), {unit}"))
    if all(b in planes for b in "gri") and all(noises[b] for b in "gri"):
        rgb = images.colour_composite([planes[b][crop] for b in "irg"], [noises[b] for b in "irg"])
        images.imsave(os.path.join(ctx.out, "coadds", "gri.png"), rgb[::-1])
        figs.insert(0, H.figure("coadds/gri.png", "<b>gri</b> colour composite (i, r, g as red, green, blue; "
                                "each band in units of its noise, one asinh stretch of the summed intensity)",
                                cls="wide"))
    summary["coadds"] = {"bands": info, "block_factor": f, "tract_bbox": geom}
    return (f'<div class="mosaic">{"".join(figs)}</div>'
            + f'<p class="muted">The union of the patches\' inner boxes in the tract ({geom[2]} x {geom[3]} px, '
              f"{geom[2] * 0.2 / 60:.1f}' x {geom[3] * 0.2 / 60:.1f}'), block-averaged {f} x {f}, north up, east "
              "left; asinh stretch from -1 to +20 or so times the mean noise of a block, per band. "
              "det: the multi-band detection coadd the Objects were detected on.</p>")


def _validation(run, ctx, summary, validation_json):
    job = ctx.validation_result
    rep, err = job.get() if job is not None else _validate_task(run.rundir, run.db_url, validation_json)
    if err is not None:
        summary["validation"] = {"error": err}
        return H.note("the validation could not run: " + H.esc(err))
    ctx.validation = rep
    with open(os.path.join(ctx.out, "validation.json"), "w") as fh:
        json.dump(rep, fh, indent=1)
    rows, classes = [], []
    for c in rep["checks"]:
        state = {True: "pass", False: "fail", None: "null"}[c["ok"]]
        op = c.get("op", "")
        thr = "&ndash;" if c.get("threshold") is None else f"{H.esc(op)} {H.num(c['threshold'], '{:.4g}')}"
        rows.append((H.esc(c["metric"]), H.num(c["value"], "{:.4g}"), thr,
                     {"pass": "PASS", "fail": "FAIL", "null": "n/a"}[state], H.esc(c.get("reason") or "")))
        classes.append(state)
    n_fail = classes.count("fail")
    summary["validation"] = {"passed": rep.get("passed"), "n_checks": len(classes), "n_fail": n_fail,
                             "n_null": classes.count("null")}
    tbl = H.table(["metric", "value", "threshold", "result", "reason (when not measurable)"], rows,
                  row_classes=classes, table_id="validation-checks", left=(0, 4))
    for word in ("PASS", "FAIL", "n/a"):
        tbl = tbl.replace(f"<td>{word}</td>", f'<td class="ok">{word}</td>')
    head = (f"<p><b>{'All checks pass' if n_fail == 0 else f'{n_fail} check(s) fail'}</b> "
            f"({len(classes)} checks, {classes.count('null')} not measurable on this run). Thresholds: the run's "
            '<code>[validate]</code> section; definitions in docs/validation.md. <a href="validation.json">'
            "validation.json</a>: the full report of <code>twinkles-hpc validate</code>.</p>")
    extra = ""
    det = rep.get("detection", {})
    if isinstance(det, dict) and det.get("bins"):
        plots.completeness(os.path.join(ctx.out, "completeness.png"), det["bins"])
        extra = H.figure("completeness.png", "Detection completeness against true r (AB mag, 0.5 mag bins): the "
                         "fraction of truth stars and galaxies in the covered area claimed by a primary Object "
                         f"(within {det.get('radius_arcsec', 1)}\").")
    return head + tbl + extra


def _residuals(run, ctx, summary, _):
    parts = []
    rep = getattr(ctx, "validation", None)
    cal = rep.get("calibration") if rep else None
    if cal and "reason" not in cal and run.visits is not None:
        per_band = {b: c["visits"] for b, c in cal.items() if "visits" in c}
        mjd = dict(zip(run.visits["visit_id"].tolist(), run.visits["mjd"].tolist()))
        plots.calibration(os.path.join(ctx.out, "calibration.png"), per_band, mjd)
        parts.append(H.figure("calibration.png", "Per calexp: fitted zero point minus the true one (mmag; top) and "
                              "the mean angle between the fitted and the true WCS over a 9 x 9 grid of sensor pixels "
                              "(mas; bottom), against the visit's MJD."))
    else:
        why = (cal or {}).get("reason") if cal else "the validation did not run"
        parts.append(H.note("no calibration residuals: " + H.esc(why)))
    if not run.has_tables("ObjectTruthMatch", "TruthStar"):
        parts.append(H.note("no flux residuals: " + H.esc(run.missing.get(
            "database", "the database has no truth tables (ObjectTruthMatch, TruthStar)"))))
        return "".join(parts)
    m = run.nearest_matches("star", objects.STAR_MATCH_ARCSEC)
    if len(m["truthId"]) == 0:
        parts.append(H.note("no flux residuals: no truth star matched to an Object"))
        return "".join(parts)
    st = run.rows_by_id("TruthStar", "starId", m["truthId"])
    ob = run.rows_by_id("Object", "objectId", m["objectId"])
    si = {int(k): i for i, k in enumerate(st["starId"])}
    oi = {int(k): i for i, k in enumerate(ob["objectId"])}
    s_idx = np.array([si[int(t)] for t in m["truthId"]])
    o_idx = np.array([oi[int(o)] for o in m["objectId"]])
    per_band, stats = {}, {}
    for b in BANDS:
        flux, mag = ob[f"{b}PsFlux"][o_idx].astype(float), st[f"{b}Mag"][s_idx].astype(float)
        ok = np.isfinite(flux) & np.isfinite(mag) & (mag >= objects.STAR_BRIGHT_LIMIT) & (mag < 24)
        if ok.any():
            ratio = flux[ok] / mag_to_njy(mag[ok])
            per_band[b] = (mag[ok], ratio)
            bright = mag[ok] < 21.5
            stats[b] = {"n": int(ok.sum()),
                        "median_ratio_17_21.5": float(np.median(ratio[bright])) if bright.any() else None}
    summary["flux_residuals"] = stats
    if per_band:
        plots.flux_ratio(os.path.join(ctx.out, "flux_ratio.png"), per_band)
        parts.append(H.figure("flux_ratio.png", "Object PSF flux on the coadd divided by the true flux of the "
                              f"matched truth star (nearest, within {objects.STAR_MATCH_ARCSEC}\"; neighbours not "
                              "excluded) against the true magnitude, per band (AB mag; dashed: the median). "
                              "validate's isolated-star numbers are in the validation table (phot_bias)."))
    return "".join(parts)


def _objects(run, ctx, summary, _):
    L = ctx.limits
    m5 = _m5_lookup(run.visits)
    out = []
    # supernovae
    sne, n_matched, why = objects.select_supernovae(run, L.max_supernovae, m5)
    lenses, image_obj, why_lens = objects.select_lenses(run, L.max_lenses)
    stars, why_star = objects.select_stars(run, L.max_stars)
    jobs = []
    if sne:
        rows = run.rows_by_id("TruthSupernova", "snId", [s["id"] for s in sne])
        by_id = {int(i): {c: rows[c][k] for c in rows} for k, i in enumerate(rows["snId"])}
        jobs += [("sn", s, by_id[s["id"]]) for s in sne]
    for s in lenses:
        jobs.append(("lens", s, {int(i["imageId"]): image_obj[int(i["imageId"])] for i in s["images"]
                                 if int(i["imageId"]) in image_obj}))
    jobs += [("star", s, None) for s in stars]
    if (lenses or stars) and run.visits is not None:
        ctx.cutter.covering(run.visits, 0.0, 0.0)        # read the calexp footprints once, before forking
    done = ctx.map(_page_task, jobs)
    n_sn, n_lens = len(sne), len(lenses)
    sne, lenses, stars = done[:n_sn], done[n_sn:n_sn + n_lens], done[n_sn + n_lens:]
    if sne:
        trs = [(f'<a href="objects/sn-{s["id"]}.html">{s["id"]}</a>', s["objectId"], H.num(s["redshift"], "{:.3f}"),
                H.num(s["peak_true_mag"], "{:.2f}"), s["n_measured_detectable"], s["n_epochs"], H.num(s["chi2_dof"]),
                H.num(s.get("dia_chi2_dof")), H.num(s["peak_true_snr"], "{:.1f}")) for s in sne]
        out.append(f"<h3 id=\"objects-sn\">Supernovae ({len(sne)} of {n_matched} matched to an Object)</h3>"
                   + H.table(["SN", "Object", "z", "peak true mag", "measured epochs &lt; m5", "usable epochs",
                              "chi^2/dof", "DIA chi^2/dof", "peak true S/N"], trs, table_id="sn-index")
                   + f'<p class="muted">The {len(sne)} best-sampled supernovae (most visits in which the supernova is '
                     "brighter than the visit's m5 and its Object has an unflagged forced measurement) of the "
                     f"{n_matched} with an Object within the match radius (cap: --max-sne). Usable epochs: unflagged "
                     "forced measurements of the Object over the whole run. chi^2/dof: forced flux against the truth "
                     "with one free constant per band (the host light under the PSF), as validate computes it; DIA "
                     "chi^2/dof: the same for the DIA forced flux of the nearest DiaObject (blank without DIA "
                     "tables).</p>")
    else:
        out.append('<h3 id="objects-sn">Supernovae</h3>' + H.note("no supernova pages: " + H.esc(why)))
    summary["supernovae"] = {"n_matched": n_matched, "pages": _strip(sne), "reason": why}
    # lensed quasars
    why = why_lens
    if lenses:
        trs = [(f'<a href="objects/lens-{s["id"]}.html">{s["id"]}</a>', H.num(float(s["row"]["zLens"]), "{:.3f}"),
                H.num(s["redshift"], "{:.3f}"), int(s["row"]["nImg"]), H.num(float(s["row"]["imSep"]), "{:.2f}"),
                s["n_objects"], s["n_epochs"], H.num(s["chi2_dof"])) for s in lenses]
        out.append(f'<h3 id="objects-lens">Lensed quasar systems ({len(lenses)})</h3>'
                   + H.table(["system", "z lens", "z source", "images", "separation (\")", "Objects", "usable epochs",
                              "chi^2/dof"], trs, table_id="lens-index"))
    else:
        out.append('<h3 id="objects-lens">Lensed quasar systems</h3>' + H.note("no lensed quasar pages: " + H.esc(why)))
    summary["lenses"] = {"pages": [{k: v for k, v in s.items() if k not in ("row", "images")} for s in lenses],
                         "reason": why}
    # bright stars
    why = why_star
    if stars:
        trs = [(f'<a href="objects/star-{s["id"]}.html">{s["id"]}</a>', s["objectId"], H.num(s["r_mag"], "{:.2f}"),
                s["n_epochs"], H.num(s["median_dmag_mmag"], "{:.1f}"), H.num(s["rms_mmag"], "{:.1f}"),
                H.num(s["chi2_dof"])) for s in stars]
        out.append(f'<h3 id="objects-star">Bright stars ({len(stars)})</h3>'
                   + H.table(["star", "Object", "true r", "usable epochs", "median &Delta;mag (mmag)", "rms (mmag)",
                              "chi^2/dof"], trs, table_id="star-index"))
    else:
        out.append('<h3 id="objects-star">Bright stars</h3>' + H.note("no star pages: " + H.esc(why)))
    summary["stars"] = {"pages": _strip(stars), "reason": why}
    return "".join(out)


def _m5_lookup(visits, default=24.0):
    """visit ids -> the visits' five-sigma depths (OpSim m5, AB mag); `default` for unknown visits."""
    if visits is None or len(visits) == 0:
        return lambda ids: np.full(len(ids), default)
    order = np.argsort(visits["visit_id"])
    keys, vals = visits["visit_id"][order], visits["five_sigma_depth"][order]

    def lookup(ids):
        ids = np.asarray(ids, np.int64)
        i = np.clip(np.searchsorted(keys, ids), 0, len(keys) - 1)
        return np.where(keys[i] == ids, vals[i], default)
    return lookup


def _strip(rows):
    return [dict(r) for r in rows]


def _trace(run, ctx, summary, _):
    recs = run.trace
    if not recs:
        return H.note(H.esc(run.missing.get("trace", "the trace is empty: no task has finished")))
    util, span = utilisation(recs)
    plots.gantt(os.path.join(ctx.out, "trace.png"), recs, util)
    summary["trace"] = {"span_s": span, "ranks": {str(k): v for k, v in util.items()}, "kinds": per_kind(recs)}
    rows = [(f"rank {r}", u["n_tasks"], H.num(u["busy_s"], "{:.2f}"), H.num(100 * u["utilisation"], "{:.1f}"))
            for r, u in util.items()]
    kinds = sorted(per_kind(recs).items(), key=lambda kv: -kv[1]["seconds"])
    krows = [(H.esc(k), v["n_tasks"], H.num(v["seconds"], "{:.2f}"), H.num(v["seconds"] / v["n_tasks"], "{:.3f}"),
              H.num(v["max_rss_mb"], "{:.0f}")) for k, v in kinds]
    return (H.figure("trace.png", "Each worker rank's tasks against wall time (s since the first task started), "
                     "coloured by kind; the percentage at the right is the rank's utilisation (busy seconds / span). "
                     f"Span {span:.1f} s, {len(recs)} task records (trace.jsonl).")
            + H.table(["rank", "tasks", "busy (s)", "utilisation (%)"], rows, table_id="utilisation")
            + H.table(["kind", "tasks", "total (s)", "mean (s)", "max peak RSS (MiB)"], krows, table_id="task-kinds"))
