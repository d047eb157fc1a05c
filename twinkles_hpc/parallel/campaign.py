"""A campaign as a task graph over one run directory.

Run directory layout (docs/design.md):
    config.toml, config.json   the config as given, and its canonical form (a rerun must match it)
    visits.h5                  the selected cadence (written by rank 0 before any task)
    truth.h5                   static sky (stars, galaxies), supernovae, lensed quasars (systems, images),
                               the variable sources and the cadence: task `sky`
    refcat.h5                  the six-band reference catalogue (true stars with realistic errors): task `sky`
    variables/truth-KKKK.h5    true magnitude/flux of every variable source in each visit of chunk KKKK
                               (500 visits a chunk): task `variables/KKKK`
    instcat/                   PhoSim instance catalogues per visit (when [instcat] write = true)
    calexps/vNNNNNNNN-B.h5     calibrated exposure per visit (when [level2] calibrate = true): task
                               `calexp/NNNNNNNN` (docs/data-model.md)
    skymap.json                the tract and its patches (when [level2] coadd = true), from the nominal
                               footprints of all visits (written by rank 0 before any task)
    coadds/B/patch-I-J.h5      coadd of patch (I, J) in band B from the calexps of the visits that overlap
                               it, in sub-regions sized from level2.memory_per_rank: task `coadd/B/I-J`
    objects/patch-I-J.h5       the Objects of patch (I, J) (when [level2] objects = true): multi-band detection,
                               deblending and per-band measurement on its coadds: task `objects/I-J`,
                               which also writes coadds/det/patch-I-J.h5, the detection coadd it detects on
    forced/vNNNNNNNN-B.h5      forced photometry of every primary Object on the calexp of visit NNNNNNNN (when
                               [level2] forced = true), table `forced_source`: task `forced/NNNNNNNN`
    level2.sqlite              the catalogue database (when [level2] ingest = true and [database] url = ""):
                               tasks `ingest/truth`, `ingest/CcdVisit`, `ingest/Object`,
                               `ingest/ObjectTruthMatch`, `ingest/ForcedSource/KKKK` (docs/database.md)
    ingest/STEP.json           each ingest task's receipt (rows inserted per table, database URL)
    eimages/vNNNNNNNN-B.h5     one eimage per visit: task `visit/NNNNNNNN`
    eimages/band-B.h5          per-band virtual datasets over the eimages (after the last visit)
    checkpoints/               partial visits (mid-visit checkpoints), removed when a visit completes
    journal.jsonl, trace.jsonl the append-only journal and the per-task trace
    .lock                      flock held by rank 0 while a run is active
"""
from __future__ import annotations

import json
import os
import shutil

import h5py
import numpy as np

from twinkles_hpc import config as config_mod
from twinkles_hpc.errors import InputError, RunDirError
from twinkles_hpc.faults import fault, ingest_batch_hook, kill_after_task
from twinkles_hpc.parallel.engine import Task
from twinkles_hpc.store.atomic import atomic_h5, atomic_write_bytes, commit, open_read
from twinkles_hpc.store.tables import read_table, write_table

SKY_TASK = "sky"


def visit_task_id(visit_id):
    return f"visit/{int(visit_id):08d}"


def eimage_relpath(visit_id, band):
    return os.path.join("eimages", f"v{int(visit_id):08d}-{band}.h5")


# -- cadence ---------------------------------------------------------------------------------------
def select_cadence(cfg):
    """The visits this run simulates, from the config (synthetic or a real OpSim file)."""
    from twinkles_hpc.sky import cadence
    c = cfg.cadence
    if c.source == "synthetic":
        visits = cadence.synthetic_cadence(cfg.run.seed, years=c.years, ra=c.ra, dec=c.dec)
        what = "the synthetic cadence"
    else:
        path = cfg.resolve_path(c.source)
        visits = cadence.read_opsim(path, field_id=None if c.field_id < 0 else c.field_id, ra=c.ra,
                                    dec=c.dec, radius_deg=c.select_radius, use_dither=c.use_dither)
        what = path
    if c.one_per_night_band:
        visits = cadence.one_per_night_band(visits)
    keep = np.isin(visits["band"], list(c.bands)) & (visits["mjd"] >= c.mjd_min)
    if c.mjd_max:
        keep &= visits["mjd"] < c.mjd_max
    visits = visits[keep]
    if c.max_visits and len(visits) > c.max_visits:
        visits = cadence.subsample(visits, c.max_visits)
    if len(visits) == 0:
        raise InputError(cfg.path, "cadence", f"a selection with at least one visit from {what} "
                         f"(bands {c.bands!r}, mjd {c.mjd_min}..{c.mjd_max or 'end'})", "no visits")
    if c.exptime:
        visits = visits.copy()
        visits["exptime"] = c.exptime
    return visits


# -- the run directory -----------------------------------------------------------------------------
def check_rundir(cfg, rundir):
    """Refuse, touching nothing, a directory made by another config or that is not a run directory."""
    cj = os.path.join(rundir, "config.json")
    if os.path.exists(cj):
        with open(cj) as fh:
            old = json.load(fh)
        new = json.loads(cfg.fingerprint())
        diff = [f"{s}.{k}" for s in new for k in new[s] if old.get(s, {}).get(k) != new[s][k]]
        if diff:
            raise RunDirError(f"{rundir}: run directory was made with a different config "
                              f"({', '.join(diff[:5])} differ{'s' if len(diff) == 1 else ''}); "
                              "use a new run directory")
    elif os.path.isdir(rundir) and os.listdir(rundir):
        raise RunDirError(f"{rundir}: directory exists, is not empty and is not a twinkles-hpc run "
                          "directory (no config.json); choose another -o")


def existing_visits(rundir):
    path = os.path.join(rundir, "visits.h5")
    if not os.path.exists(path):
        return None
    with open_read(path) as fh:
        return read_table(fh["visits"])


def init_rundir(cfg, rundir, config_text, visits, skymap=None):
    """Create the layout and record the config, the cadence and the skymap (first run only)."""
    for d in ("eimages", "checkpoints", "variables"):
        os.makedirs(os.path.join(rundir, d), exist_ok=True)
    path = os.path.join(rundir, "visits.h5")
    if not os.path.exists(path):
        with atomic_h5(path) as fh:
            write_table(fh, "visits", visits)
    path = os.path.join(rundir, SKYMAP_FILE)
    if skymap is not None and not os.path.exists(path):
        atomic_write_bytes(path, json.dumps(skymap.to_dict(), indent=1, sort_keys=True).encode())
    cj = os.path.join(rundir, "config.json")
    if not os.path.exists(cj):
        with open(os.path.join(rundir, "config.toml"), "w") as fh:
            fh.write(config_text)
        with open(cj + ".tmp", "w") as fh:
            json.dump(cfg.to_dict(), fh, indent=1, sort_keys=True)
        os.replace(cj + ".tmp", cj)


def load_rundir_config(rundir):
    cj = os.path.join(rundir, "config.json")
    if not os.path.exists(cj):
        raise InputError(rundir, "config.json", "a twinkles-hpc run directory", "not found")
    with open(cj) as fh:
        return config_mod.from_dict(json.load(fh), path=cj, base_dir=rundir)


# -- the graph -------------------------------------------------------------------------------------
def visit_cost(visit, sensor):
    """Predicted relative cost of a visit: pixels (noise, I/O) plus PSF area (rendering)."""
    npix = sensor.nx * sensor.ny / 16.288e6
    return float(npix * (1.0 + 0.5 * (visit["fwhm_geom"] / 0.7) ** 2))


#: Visits per `variables/KKKK` task (the truth of the variable sky for a range of visits).
VISITS_PER_TRUTH_CHUNK = 500


def truth_chunks(visits):
    """Visit ids split into consecutive chunks (by visit id) for the variables tasks."""
    ids = np.sort(visits["visit_id"])
    return [ids[i:i + VISITS_PER_TRUTH_CHUNK] for i in range(0, len(ids), VISITS_PER_TRUTH_CHUNK)]


def truth_relpath(k):
    return os.path.join("variables", f"truth-{k:04d}.h5")


def has_variables(cfg):
    return cfg.supernovae.enabled or cfg.lensing.enabled


# -- the skymap and the coadd tasks ------------------------------------------------------------------
SKYMAP_FILE = "skymap.json"
#: Pointing and rotator errors within this many sigma are covered by a footprint's margin.
POINTING_SIGMAS = 5.0


def read_skymap(rundir):
    from twinkles_hpc.level2.skymap import SkyMap
    with open(os.path.join(rundir, SKYMAP_FILE)) as fh:
        return SkyMap.from_dict(json.load(fh))


def pointing_margin_px(cfg):
    """Pixels by which a visit's true footprint may stray from its nominal one: POINTING_SIGMAS times the
    pointing error (both axes) plus the rotator error's displacement at the sensor corner, plus one."""
    s, im = cfg.sensor, cfg.imsim
    shift = np.hypot(im.pointing_error, im.pointing_error) / s.pixel_scale
    turn = np.deg2rad(im.rotation_error / 3600.0) * 0.5 * np.hypot(s.nx, s.ny)
    return int(np.ceil(POINTING_SIGMAS * (shift + turn))) + 1


def visit_footprints(cfg, visits):
    """RA, Dec (deg), each (n_visits, 4), of the corners of every visit's nominal footprint grown by
    pointing_margin_px (the same sensor WCS with 2 m more pixels a side: same centre and rotation)."""
    from twinkles_hpc.imsim.wcs import SensorWCS
    s, m = cfg.sensor, pointing_margin_px(cfg)
    c = [SensorWCS(v["ra"], v["dec"], v["rot_sky_pos"], s.nx + 2 * m, s.ny + 2 * m, s.pixel_scale).corners()
         for v in visits]
    return np.array([r for r, _ in c]).reshape(-1, 4), np.array([d for _, d in c]).reshape(-1, 4)


def coadd_skymap(cfg, visits, rundir=None):
    """The run's skymap: None without [level2] coadd; the one stored in rundir (a restart has the same
    graph); else one tract over the footprints of all visits, cut into level2.patch_size patches."""
    if not cfg.level2.coadd:
        return None
    if rundir is not None and os.path.exists(os.path.join(rundir, SKYMAP_FILE)):
        return read_skymap(rundir)
    from twinkles_hpc.level2.skymap import SkyMap
    ra, dec = visit_footprints(cfg, visits)
    return SkyMap.from_footprints(ra, dec, pixel_scale=cfg.sensor.pixel_scale, patch_size=cfg.level2.patch_size,
                                  overlap=cfg.level2.patch_overlap)


def coadd_relpath(band, i, j):
    return os.path.join("coadds", band, f"patch-{i}-{j}.h5")


def coadd_tasks(cfg, visits, skymap):
    """One `coadd/B/I-J` task per (band, patch) that a visit of the band overlaps, after the calexps of
    those visits; cost = patch pixels x inputs in full sensors (16.3 Mpix)."""
    from twinkles_hpc.level2 import coadd
    inputs = {}
    for v, ra, dec in zip(visits, *visit_footprints(cfg, visits)):
        for p in skymap.patches_overlapping(ra, dec):
            inputs.setdefault((str(v["band"]), *p.index), []).append(int(v["visit_id"]))
    tasks = []
    for (band, i, j), ids in sorted(inputs.items()):
        _, _, nx, ny = skymap.patch(i, j).bbox
        tasks.append(Task(f"coadd/{band}/{i}-{j}", "coadd", cost=nx * ny * len(ids) / 16.288e6,
                          deps=tuple(f"calexp/{v:08d}" for v in ids),
                          params={"band": band, "patch": (i, j), "visit_ids": ids}))
    # refuse, before anything runs, a budget that cannot hold the smallest sub-region of the largest stack
    n = max((len(ids) for ids in inputs.values()), default=0)
    need = coadd.subregion_bytes(16, n) + coadd.FIXED_BYTES + coadd.PER_INPUT_BYTES * n
    if need > cfg.level2.memory_per_rank:
        raise InputError(cfg.path, "level2.memory_per_rank", f">= {int(need)} bytes (a 16 px sub-region of "
                         f"{n} calexps, the most that overlap one patch)", cfg.level2.memory_per_rank)
    return tasks


def objects_relpath(i, j):
    return os.path.join("objects", f"patch-{i}-{j}.h5")


def objects_tasks(coadd_task_list):
    """One `objects/I-J` task per patch with a coadd in any band, after that patch's coadd tasks;
    cost = patch pixels x bands / 16.3 Mpix."""
    by_patch = {}
    for t in coadd_task_list:
        by_patch.setdefault(tuple(t.params["patch"]), []).append(t)
    tasks = []
    for (i, j), ts in sorted(by_patch.items()):
        bands = {t.params["band"]: t for t in ts}
        tasks.append(Task(f"objects/{i}-{j}", "objects", cost=ts[0].cost / max(len(ts[0].params["visit_ids"]), 1)
                          * len(bands), deps=tuple(bands[b].id for b in sorted(bands)),
                          params={"patch": (i, j), "bands": sorted(bands)}))
    return tasks


def forced_relpath(visit_id, band):
    return os.path.join("forced", f"v{int(visit_id):08d}-{band}.h5")


def forced_tasks(cfg, visits, objects_task_list):
    """One `forced/NNNNNNNN` task per visit with a calexp, after that visit's calexp task and every objects
    task (a visit reads the Objects of all patches; those off its sensor are skipped); cost = 0.2 x the
    visit's."""
    deps = tuple(t.id for t in objects_task_list)
    return [Task(f"forced/{int(v['visit_id']):08d}", "forced", cost=0.2 * visit_cost(v, cfg.sensor),
                 deps=(f"calexp/{int(v['visit_id']):08d}",) + deps,
                 params={"visit_id": int(v["visit_id"]), "patches": [t.params["patch"] for t in objects_task_list]})
            for v in visits]


#: Visits per `ingest/ForcedSource/KKKK` task (inside it, each visit's file is one transaction).
VISITS_PER_INGEST_CHUNK = 100


def ingest_tasks(cfg, visits, tasks):
    """The ingest stage (store/ingest.py) as a chain, so that one process writes at a time (SQLite has one
    writer): ingest/truth (after sky and variables), ingest/CcdVisit (after the calexps), ingest/Object
    (after the objects tasks), ingest/ObjectTruthMatch, then ingest/ForcedSource/KKKK for each chunk of
    VISITS_PER_INGEST_CHUNK visits after their forced tasks: the database fills while later visits are
    still measured. Cost: 0.05 per visit (ForcedSource), 0.01 per visit (CcdVisit), 0.2 otherwise."""
    ids = {k: [t.id for t in tasks if t.kind == k] for k in ("variables", "calexp", "objects")}
    patches = [t.params["patch"] for t in tasks if t.kind == "objects"]
    steps = [("truth", [SKY_TASK] + ids["variables"], 0.2, {}),
             ("CcdVisit", ids["calexp"], 0.01 * len(visits), {}),
             ("Object", ids["objects"], 0.2, {"patches": patches}),
             ("ObjectTruthMatch", [], 0.2, {"patches": patches})]
    vids = [int(v) for v in np.sort(visits["visit_id"])]
    for k in range(0, len(vids), VISITS_PER_INGEST_CHUNK):
        chunk = vids[k:k + VISITS_PER_INGEST_CHUNK]
        steps.append((f"ForcedSource/{k // VISITS_PER_INGEST_CHUNK:04d}", [f"forced/{v:08d}" for v in chunk],
                      0.05 * len(chunk), {"visit_ids": chunk}))
    out = []
    for name, deps, cost, params in steps:
        chain = (out[-1].id,) if out else ()
        out.append(Task(f"ingest/{name}", "ingest", cost=cost, deps=tuple(deps) + chain,
                        params={"step": name.split("/")[0], **params}))
    return out


INGEST_RECEIPTS = "ingest"


def ingest_receipt_relpath(task_id):
    return os.path.join(INGEST_RECEIPTS, task_id.split("/", 1)[1].replace("/", "-") + ".json")


def forget_lost_database(cfg, rundir):
    """When the run's SQLite database is gone (deleted by hand), remove the ingest receipts: the journal
    then finds the ingest tasks' outputs missing and the rerun ingests again. A server database is the
    user's to manage: delete RUNDIR/ingest/ to ingest into it again (docs/database.md)."""
    from twinkles_hpc.store.db import SQLITE_NAME
    if cfg.level2.ingest and not cfg.database.url and not os.path.exists(os.path.join(rundir, SQLITE_NAME)):
        shutil.rmtree(os.path.join(rundir, INGEST_RECEIPTS), ignore_errors=True)


def run_ingest(cfg, rundir, by_id, task_id, step, patches=(), visit_ids=()):
    """One ingest step into the run's database ([database] url, else RUNDIR/level2.sqlite). Its output is a
    receipt, ingest/<step>.json ({table: rows inserted}, the URL without credentials): the journal's
    record that the step is in the database."""
    from twinkles_hpc.store import db, ingest
    D = cfg.database
    kw = dict(batch_size=D.batch_size, on_batch=ingest_batch_hook(rundir))
    objects = [os.path.join(rundir, objects_relpath(*p)) for p in sorted(tuple(p) for p in patches)]
    engine = db.connect(D.url or None, rundir=rundir)
    try:
        db.create_schema(engine)
        if step == "truth":
            inserted = db.ingest_truth(engine, rundir, **kw)
        elif step == "CcdVisit":
            from twinkles_hpc.level2.calibrate import calexp_ok      # failed calibrations have no CcdVisit
            paths = [os.path.join(rundir, calexp_relpath(v, by_id[v]["band"])) for v in sorted(by_id)]
            inserted = {step: ingest.ingest_ccd_visits(engine, [p for p in paths if calexp_ok(p)], **kw)}
        elif step == "Object":
            inserted = {step: ingest.ingest_objects(engine, objects, **kw)}
        elif step == "ObjectTruthMatch":
            inserted = {step: ingest.ingest_truth_match(engine, objects, os.path.join(rundir, "truth.h5"),
                                                        D.match_radius, **kw)}
        elif step == "ForcedSource":
            inserted = {step: ingest.ingest_forced(engine, [os.path.join(
                rundir, forced_relpath(v, by_id[v]["band"])) for v in visit_ids], **kw)}
        else:
            raise ValueError(f"unknown ingest step {step!r}")
        url = engine.url.render_as_string(hide_password=True)
    finally:
        engine.dispose()
    rel = ingest_receipt_relpath(task_id)
    atomic_write_bytes(os.path.join(rundir, rel), json.dumps({"task": task_id, "database": url,
                                                              "inserted": inserted}, sort_keys=True).encode())
    return {rel: os.path.getsize(os.path.join(rundir, rel))}


def build_tasks(cfg, visits, skymap=None):
    sky_cost = 2.0 * (cfg.sky.radius / 0.3) ** 2
    tasks = [Task(SKY_TASK, "sky", cost=sky_cost)]
    chunk_of = {}
    if has_variables(cfg):
        for k, ids in enumerate(truth_chunks(visits)):
            tid = f"variables/{k:04d}"
            tasks.append(Task(tid, "variables", cost=sky_cost * len(ids) / 1000.0, deps=(SKY_TASK,),
                              params={"chunk": k}))
            chunk_of.update({int(v): (tid, k) for v in ids})
    for v in visits:
        vid = int(v["visit_id"])
        dep, k = chunk_of.get(vid, (SKY_TASK, None))
        tasks.append(Task(visit_task_id(vid), "visit", cost=visit_cost(v, cfg.sensor),
                          deps=(dep,), params={"visit_id": vid, "chunk": k}))
        if cfg.level2.calibrate:
            tasks.append(Task(f"calexp/{vid:08d}", "calexp", cost=2.0 * visit_cost(v, cfg.sensor),
                              deps=(visit_task_id(vid),), params={"visit_id": vid}))
    if cfg.level2.coadd:
        ctasks = coadd_tasks(cfg, visits, skymap or coadd_skymap(cfg, visits))
        tasks += ctasks
        if cfg.level2.objects:
            otasks = objects_tasks(ctasks)
            tasks += otasks
            if cfg.level2.forced:
                tasks += forced_tasks(cfg, visits, otasks)
                if cfg.level2.ingest:
                    tasks += ingest_tasks(cfg, visits, tasks)
    return tasks


def calexp_relpath(visit_id, band):
    return os.path.join("calexps", f"v{int(visit_id):08d}-{band}.h5")


def run_calexp(rundir, visit, log=None):
    """Level 2 calibration of one visit: eimage + reference catalogue -> calexp. A visit that cannot be
    calibrated gets a calexp with calib_ok = False (one log line); later stages skip it."""
    from twinkles_hpc.level2.calibrate import calibrate_visit
    refcat, = _refcat_cache.get(os.path.join(rundir, "refcat.h5"), ("refcat",))
    rel = calexp_relpath(visit["visit_id"], visit["band"])
    out = os.path.join(rundir, rel)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    meta = calibrate_visit(os.path.join(rundir, eimage_relpath(visit["visit_id"], visit["band"])), refcat, out)
    if not meta["calib_ok"] and log:
        log(f"visit {int(visit['visit_id'])} ({visit['band']}): calibration failed: {meta['calib_failure']}")
    return {rel: os.path.getsize(out)}


def run_coadd(cfg, rundir, skymap, band, index, visit_ids):
    """Coadd one patch in one band on this rank alone (comm=None); the budget bounds its peak memory."""
    from twinkles_hpc.level2.calibrate import calexp_ok
    from twinkles_hpc.level2.coadd import CoaddConfig, coadd_patch
    L = cfg.level2
    rel = coadd_relpath(band, *index)
    out = os.path.join(rundir, rel)
    part = f"{out}.tmp-{os.getpid()}"       # complete but unnamed until the run's own attributes are added
    inputs = [os.path.join(rundir, calexp_relpath(v, band)) for v in visit_ids]
    coadd_patch([p for p in inputs if calexp_ok(p)], skymap.patch(*index),     # failed calibrations left out
                CoaddConfig(memory_per_rank=L.memory_per_rank, statistic=L.coadd_statistic), out=part)
    with h5py.File(part, "r+", locking=False) as fh:
        fh.attrs["band"] = band
        fh.attrs["skymap"] = json.dumps(skymap.to_dict(), sort_keys=True)
    commit(part, out)
    return {rel: os.path.getsize(out)}


def run_objects(cfg, rundir, index, bands):
    """Objects of one patch from its coadds in `bands` (the run's other bands get NaN columns)."""
    from twinkles_hpc.level2.objects import measure_patch, object_dtype
    refcat, = _refcat_cache.get(os.path.join(rundir, "refcat.h5"), ("refcat",))
    # a band whose every calexp on the patch failed calibration has an empty coadd: treated as absent
    paths = {b: (os.path.join(rundir, coadd_relpath(b, *index)) if b in bands else None)
             for b in cfg.cadence.bands}
    paths = {b: (p if p is not None and _coadd_has_inputs(p) else None) for b, p in paths.items()}
    if all(p is None for p in paths.values()):         # no calibrated calexp on the patch: an empty table
        return _write_objects(cfg, rundir, index, np.zeros(0, object_dtype(list(cfg.cadence.bands))),
                              read_skymap(rundir).tract,
                              {"calib_ok": False, "reason": "no calibrated calexp on the patch"})
    det_rel = coadd_relpath("det", *index)               # the multi-band detection coadd, written first
    os.makedirs(os.path.join(rundir, os.path.dirname(det_rel)), exist_ok=True)
    objects, meta = measure_patch(paths, refcat, bands=list(cfg.cadence.bands),
                                  detection_out=os.path.join(rundir, det_rel))
    return {det_rel: os.path.getsize(os.path.join(rundir, det_rel)),
            **_write_objects(cfg, rundir, index, objects, meta["tract"], meta)}


def _coadd_has_inputs(path):
    with open_read(path) as fh:
        return len(fh.attrs.get("inputs", [path])) > 0


def _write_objects(cfg, rundir, index, objects, tract, meta):
    """objects/patch-I-J.h5: the table and its attributes, written atomically; returns {relpath: bytes}."""
    rel = objects_relpath(*index)
    out = os.path.join(rundir, rel)
    with atomic_h5(out) as fh:
        write_table(fh, "objects", objects)
        fh.attrs["tract"], fh.attrs["patch"] = tract, list(index)
        fh.attrs["bands"] = list(cfg.cadence.bands)
        fh.attrs["meta"] = json.dumps(meta, sort_keys=True)
    return {rel: os.path.getsize(out)}


def _patch_objects(rundir, index):
    """The Object table of one patch (the columns forced photometry needs), read once per worker."""
    t, = _objects_cache.get(os.path.join(rundir, objects_relpath(*index)), ("objects",))
    return t[["objectId", "psRa", "psDecl", "detect_isPrimary"]]


def run_forced(rundir, visit, patches):
    """Forced photometry of the primary Objects of `patches` on one visit's calexp -> forced/vNNNNNNNN-B.h5."""
    from twinkles_hpc.level2.calibrate import calexp_ok
    from twinkles_hpc.level2.forcedsource import FORCED_SOURCE_DTYPE, force_visit
    calexp = os.path.join(rundir, calexp_relpath(visit["visit_id"], visit["band"]))
    if calexp_ok(calexp):
        objects = [_patch_objects(rundir, tuple(p)) for p in sorted(tuple(p) for p in patches)]
        rows = force_visit(calexp, objects)
    else:                                   # calibration failed: an empty table keeps the graph static
        rows = np.zeros(0, FORCED_SOURCE_DTYPE)
    rel = forced_relpath(visit["visit_id"], visit["band"])
    out = os.path.join(rundir, rel)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with atomic_h5(out) as fh:
        write_table(fh, "forced_source", rows)
        fh.attrs["visit_id"], fh.attrs["band"] = int(visit["visit_id"]), str(visit["band"])
        fh.attrs["ccdVisitId"] = int(visit["visit_id"])
    return {rel: os.path.getsize(out)}


# -- task bodies -----------------------------------------------------------------------------------
def run_sky(cfg, rundir, visits):
    """The static sky, the sprinkled lensed quasars and the supernovae -> truth.h5."""
    from twinkles_hpc.sky import variables as var
    from twinkles_hpc.sky.refcat import make_refcat
    from twinkles_hpc.sky.static import build_static_sky
    s, ra, dec, seed = cfg.sky, cfg.cadence.ra, cfg.cadence.dec, cfg.run.seed
    sky = build_static_sky(seed, ra, dec, s.radius, star_mag_limit_r=s.star_mag_limit,
                           galaxy_mag_limit_r=s.galaxy_mag_limit, star_density_scale=s.star_density_scale,
                           galaxy_density_scale=s.galaxy_density_scale)
    galaxies, systems, images = _lensed_quasars(cfg, sky["galaxies"])
    sne = _supernovae(cfg, galaxies, visits)
    path = os.path.join(rundir, "truth.h5")
    with atomic_h5(path) as fh:
        write_table(fh, "stars", sky["stars"])
        write_table(fh, "galaxies", galaxies)
        write_table(fh, "visits", visits)
        write_table(fh, "supernovae", sne)
        write_table(fh, "lens_systems", systems)
        write_table(fh, "lensed_images", images)
        write_table(fh, "variables", var.variable_sources(sne, images, systems))
        fh.attrs["seed"] = seed
        fh.attrs["ra"], fh.attrs["dec"], fh.attrs["radius_deg"] = ra, dec, s.radius
    ref = os.path.join(rundir, "refcat.h5")
    with atomic_h5(ref) as fh:
        write_table(fh, "refcat", make_refcat(seed, sky["stars"]))
    return {"truth.h5": os.path.getsize(path), "refcat.h5": os.path.getsize(ref)}


def _lensed_quasars(cfg, galaxies):
    """(galaxies with the lenses sprinkled in, lens systems, quasar images)."""
    from twinkles_hpc.sky import sprinkler
    if not cfg.lensing.enabled:
        return (galaxies, np.zeros(0, dtype=sprinkler.LENS_SYSTEM_DTYPE),
                np.zeros(0, dtype=sprinkler.LENSED_IMAGE_DTYPE))
    L, seed = cfg.lensing, cfg.run.seed
    if L.source == "synthetic":
        area = np.pi * cfg.sky.radius ** 2
        om10 = sprinkler.draw_om10_like(seed, max(1, int(np.ceil(2 * L.density * area + 10))))
    else:
        from twinkles_hpc.sky.lensing import read_om10
        om10 = read_om10(cfg.resolve_path(L.source))
    return sprinkler.sprinkle(seed, galaxies, om10, cfg.cadence.ra, cfg.cadence.dec, cfg.sky.radius,
                              density_per_deg2=L.density)


def _supernovae(cfg, galaxies, visits):
    from twinkles_hpc.sky import supernovae
    if not cfg.supernovae.enabled:
        return np.zeros(0, dtype=supernovae.SN_DTYPE)
    S = cfg.supernovae
    return supernovae.make_supernovae(cfg.run.seed, galaxies, cfg.cadence.ra, cfg.cadence.dec, cfg.sky.radius,
                                      float(visits["mjd"].min()), float(visits["mjd"].max()), z_max=S.z_max,
                                      rate_boost=S.rate_boost, hostless_twins=S.hostless_twins)


def run_variables(cfg, rundir, visits, chunk):
    """Truth magnitudes of every variable source in the visits of one chunk -> variables/truth-KKKK.h5."""
    from twinkles_hpc.sky import variables as var
    with open_read(os.path.join(rundir, "truth.h5")) as fh:
        sne, systems, images = (read_table(fh[k]) for k in ("supernovae", "lens_systems", "lensed_images"))
    ids = truth_chunks(visits)[chunk]
    mine = np.isin(visits["visit_id"], ids)
    rows = np.concatenate([var.supernova_truth(sne, visits[mine]),
                           # the quasar curves are sampled at every visit of the run, then cut to the chunk,
                           # so a chunk's values do not depend on how the visits are chunked
                           _cut(var.quasar_truth(systems, images, visits), ids)])
    rows = rows[np.lexsort((rows["source_id"], rows["visit_id"]))]
    rel = truth_relpath(chunk)
    path = os.path.join(rundir, rel)
    with atomic_h5(path) as fh:
        write_table(fh, "truth", rows, compression="gzip", shuffle=True,
                    chunks=True if len(rows) else None)
        fh.create_dataset("visit_id", data=ids)
    return {rel: os.path.getsize(path)}


def _cut(rows, visit_ids):
    return rows[np.isin(rows["visit_id"], visit_ids)]


class _CatalogCache:
    """Each worker reads a file's tables once and keeps the `size` most recent files' tables; an entry is
    keyed by path, mtime and size, so a rewritten file is read again."""

    def __init__(self, size=1):
        self.size, self.entries = size, {}

    def get(self, path, names):
        st = os.stat(path)
        key = (path, st.st_mtime_ns, st.st_size, tuple(names))
        if key not in self.entries:
            with open_read(path) as fh:
                value = tuple(read_table(fh[n]) for n in names)
            while len(self.entries) >= self.size:
                self.entries.pop(next(iter(self.entries)))
            self.entries[key] = value
        return self.entries[key]


_catalog = _CatalogCache()          # truth.h5: stars, galaxies, variables (large: one file)
_truth_chunk = _CatalogCache()      # variables/truth-KKKK.h5 of the current visit
_refcat_cache = _CatalogCache()     # refcat.h5
_objects_cache = _CatalogCache(size=256)   # objects/patch-I-J.h5: small tables, every patch a visit overlaps


def visit_variable_mags(rundir, chunk, visit_id, variables):
    """AB magnitudes of every variable source in one visit (inf where it has no light)."""
    mags = np.full(len(variables), np.inf)
    if chunk is None or len(variables) == 0:
        return mags
    rows = _truth_chunk.get(os.path.join(rundir, truth_relpath(chunk)), ("truth",))[0]
    lo, hi = np.searchsorted(rows["visit_id"], [visit_id, visit_id + 1])
    r = rows[lo:hi]
    idx = np.searchsorted(variables["source_id"], r["source_id"])
    mags[idx] = r["mag"]
    return mags


def run_visit(cfg, rundir, visit, chunk, should_stop, log=None):
    from twinkles_hpc.imsim.visit import VisitSpec, simulate_visit
    spec = VisitSpec.from_row(visit)
    stars, galaxies, variables = _catalog.get(os.path.join(rundir, "truth.h5"),
                                              ("stars", "galaxies", "variables"))
    var_mags = visit_variable_mags(rundir, chunk, spec.visit_id, variables)
    rel = eimage_relpath(spec.visit_id, spec.band)
    out = os.path.join(rundir, rel)
    ckpt = os.path.join(rundir, "checkpoints", f"v{spec.visit_id:08d}.h5")
    instcat = None
    if cfg.instcat.write:
        instcat = os.path.join(rundir, "instcat", f"phosim_cat_{spec.visit_id:08d}.txt")
        os.makedirs(os.path.dirname(instcat), exist_ok=True)
    written = simulate_visit(spec, stars, galaxies, cfg, out, ckpt, should_stop, log=log, variables=variables,
                             var_mags=var_mags, instcat_path=instcat)
    return {os.path.relpath(p, rundir): n for p, n in written.items()}


class Executor:
    """execute(task, should_stop) for the engine: dispatches on the task kind."""

    def __init__(self, cfg, rundir, visits, log=None):
        self.cfg, self.rundir, self.log, self.visits = cfg, rundir, log, visits
        self.by_id = {int(v["visit_id"]): v for v in visits}
        self.skymap = None                  # read from the run directory by the first coadd task

    def __call__(self, task, should_stop):
        if fault("raise_in_task") == task.id:
            raise RuntimeError(f"injected fault in {task.id} (TWINKLES_HPC_FAULT)")
        out = self._run(task, should_stop)
        kill_after_task(self.rundir, task.id)
        return out

    def _run(self, task, should_stop):
        p = task.params
        if task.kind == "sky":
            return run_sky(self.cfg, self.rundir, self.visits)
        if task.kind == "variables":
            return run_variables(self.cfg, self.rundir, self.visits, p["chunk"])
        if task.kind == "visit":
            return run_visit(self.cfg, self.rundir, self.by_id[p["visit_id"]], p.get("chunk"), should_stop,
                             self.log)
        if task.kind == "calexp":
            return run_calexp(self.rundir, self.by_id[p["visit_id"]], self.log)
        if task.kind == "coadd":
            self.skymap = self.skymap or read_skymap(self.rundir)
            return run_coadd(self.cfg, self.rundir, self.skymap, p["band"], p["patch"], p["visit_ids"])
        if task.kind == "objects":
            return run_objects(self.cfg, self.rundir, p["patch"], p["bands"])
        if task.kind == "forced":
            return run_forced(self.rundir, self.by_id[p["visit_id"]], p["patches"])
        if task.kind == "ingest":
            return run_ingest(self.cfg, self.rundir, self.by_id, task.id, p["step"], p.get("patches", ()),
                              p.get("visit_ids", ()))
        raise ValueError(f"unknown task kind {task.kind!r}")


# -- after the last task ---------------------------------------------------------------------------
def write_band_views(rundir, visits, sensor):
    """Per band, one HDF5 virtual dataset (n_visits, ny, nx) over the per-visit eimage files."""
    import h5py
    out = {}
    for band in sorted(set(visits["band"])):
        vb = visits[visits["band"] == band]
        layout = h5py.VirtualLayout(shape=(len(vb), sensor.ny, sensor.nx), dtype="f4")
        for i, v in enumerate(vb):
            src = os.path.basename(eimage_relpath(v["visit_id"], band))
            layout[i] = h5py.VirtualSource(src, "image", shape=(sensor.ny, sensor.nx))
        path = os.path.join(rundir, "eimages", f"band-{band}.h5")
        with atomic_h5(path) as fh:
            fh.create_virtual_dataset("image", layout, fillvalue=np.nan)
            fh.create_dataset("visit_id", data=vb["visit_id"])
            fh.create_dataset("mjd", data=vb["mjd"])
        out[band] = path
    return out


def clean_checkpoints(rundir):
    d = os.path.join(rundir, "checkpoints")
    if os.path.isdir(d) and not any(f.endswith(".h5") for f in os.listdir(d)):
        shutil.rmtree(d, ignore_errors=True)
