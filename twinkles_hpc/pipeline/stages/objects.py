"""Stage objects: per patch, multi-band detection on the coadds, deblending and per-band measurement."""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from twinkles_hpc.options import opt
from twinkles_hpc.pipeline.stage import AMORTISED, Stage
from twinkles_hpc.pipeline.stages.coadd import FULL_SENSOR_PIXELS, patch_file_tasks
from twinkles_hpc.rundir import layout
from twinkles_hpc.store.atomic import atomic_h5, open_read
from twinkles_hpc.store.tables import write_table


@dataclass
class ObjectsSection:
    enabled: bool = opt(False, "",
                        "Detect, deblend and measure Objects on each patch's coadds (objects/patch-I-J.h5: "
                        "multi-band detection, per-band coadd PSF, forced PSF and aperture fluxes, "
                        "extendedness, detect_isPrimary); needs [coadd] enabled = true.")


class ObjectsStage(Stage):
    name = "objects"
    doc = "the Objects of each patch (objects/patch-I-J.h5) and its detection coadd"
    section = ObjectsSection
    requires = ("sky", "coadd")
    outputs = (layout.objects, layout.detection_coadd)
    tables = ("Object", "ObjectTruthMatch")
    colour = "#937860"
    cost_class = AMORTISED

    def tasks(self, ctx, up):
        """One `objects/I-J` task per patch with a coadd in any band, after that patch's coadd tasks;
        cost = patch pixels x bands / 16.3 Mpix."""
        by_patch = {}
        for t in patch_file_tasks(up.tasks("coadd")).values():
            by_patch.setdefault(tuple(t.params["patch"]), []).append(t)
        tasks = []
        for (i, j), ts in sorted(by_patch.items()):
            bands = {t.params["band"]: t for t in ts}
            _, _, nx, ny = ctx.skymap.patch(i, j).bbox
            cost = nx * ny * len(bands) / FULL_SENSOR_PIXELS
            tasks.append(self.task(layout.patch_key(i, j), cost, deps=[bands[b] for b in sorted(bands)],
                                   patch=(i, j), bands=sorted(bands)))
        return tasks

    def run(self, ctx, task, should_stop):
        """Objects of one patch from its coadds in `bands` (the run's other bands get NaN columns)."""
        from twinkles_hpc.level2.objects import measure_patch, object_dtype
        cfg, index, bands = ctx.cfg, tuple(task.params["patch"]), task.params["bands"]
        # a band whose every calexp on the patch failed calibration has an empty coadd: treated as absent
        paths = {b: (ctx.path(layout.coadd(b, *index)) if b in bands else None) for b in cfg.cadence.bands}
        paths = {b: (p if p is not None and coadd_has_inputs(p) else None) for b, p in paths.items()}
        if all(p is None for p in paths.values()):       # no calibrated calexp on the patch: an empty table
            return _write_objects(ctx, index, np.zeros(0, object_dtype(list(cfg.cadence.bands))),
                                  ctx.skymap.tract, {"calib_ok": False, "reason": "no calibrated calexp on the patch"})
        det_rel = layout.detection_coadd(*index)        # the multi-band detection coadd, written first
        os.makedirs(os.path.dirname(ctx.path(det_rel)), exist_ok=True)
        objects, meta = measure_patch(paths, ctx.refcat(), bands=list(cfg.cadence.bands),
                                      detection_out=ctx.path(det_rel), storage=ctx.storage)
        return {det_rel: os.path.getsize(ctx.path(det_rel)),
                **_write_objects(ctx, index, objects, meta["tract"], meta)}


    def ingest_steps(self, ctx, up):
        otasks = list(up.tasks("objects").values())
        patches = [t.params["patch"] for t in otasks]
        return [("Object", otasks, 0.2, {"patches": patches}), ("ObjectTruthMatch", [], 0.2, {"patches": patches})]

    def ingest(self, ctx, engine, step, params, **kw):
        """Object (the primary Objects of every patch) and ObjectTruthMatch (every truth source within
        [ingest] match_radius of a primary Object)."""
        from twinkles_hpc.store import ingest
        paths = [ctx.path(layout.objects(*q)) for q in sorted(tuple(q) for q in params["patches"])]
        if step == "Object":
            return {step: ingest.ingest_objects(engine, paths, **kw)}
        return {step: ingest.ingest_truth_match(engine, paths, ctx.path(layout.TRUTH), ctx.cfg.ingest.match_radius,
                                                **kw)}


def coadd_has_inputs(path):
    """True if the coadd at `path` was made from at least one calexp (a band whose every calexp on the patch
    failed calibration has an empty coadd)."""
    with open_read(path) as fh:
        return len(fh.attrs.get("inputs", [path])) > 0


def _write_objects(ctx, index, objects, tract, meta):
    """objects/patch-I-J.h5: the table and its attributes, written atomically; returns {relpath: bytes}."""
    import json
    rel = layout.objects(*index)
    out = ctx.path(rel)
    with atomic_h5(out) as fh:
        write_table(fh, "objects", objects)
        fh.attrs["tract"], fh.attrs["patch"] = tract, list(index)
        fh.attrs["bands"] = list(ctx.cfg.cadence.bands)
        fh.attrs["meta"] = json.dumps(meta, sort_keys=True)
    return {rel: os.path.getsize(out)}


STAGE = ObjectsStage()
