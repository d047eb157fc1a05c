"""Stage lensmodel: the scene model (lens galaxy + point images) of every lens candidate, fitted on the
coadds (lenses/scenes.h5: LensedImage; docs/lensmodel.md)."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np

from twinkles_hpc.options import opt
from twinkles_hpc.pipeline.stage import AMORTISED, Stage, Switch
from twinkles_hpc.pipeline.stages.coadd import FULL_SENSOR_PIXELS, patch_file_tasks
from twinkles_hpc.rundir import layout
from twinkles_hpc.store.atomic import atomic_h5, open_read
from twinkles_hpc.store.tables import read_table, write_table


@dataclass
class LensmodelSection(Switch):
    """[lensmodel]"""
    enabled: bool = opt(False, "", "Fit a scene model (lens galaxy and point images) to every lens candidate on "
                        "the coadds (lenses/scenes.h5); needs [lenses] enabled = true.")
    tasks: int = opt(0, "", "Tasks the candidates are shared among (the k-th in lensCandidateId order goes to "
                     "task k mod N), then joined into lenses/scenes.h5 by one more (bit-identical to one task). "
                     "0: one task per 2 Mpx of sensor (a full LSST sensor: 9).", lo=0, hi=10_000)


#: Sensor pixels per lensmodel task when [lensmodel] tasks = 0.
PIXELS_PER_TASK = 2.0e6


class LensmodelStage(Stage):
    name = "lensmodel"
    doc = "scene models of the lens candidates on the coadds (lenses/scenes.h5)"
    section = LensmodelSection
    requires = ("lenses", "coadd")
    uses = ("objects",)
    outputs = (layout.LENS_SCENES,)
    tables = ("LensedImage", "LensedImageTruthMatch")
    colour = "#4c72b0"
    cost_class = AMORTISED

    def tasks(self, ctx, up):
        """`lensmodel` after the candidates, every patch's coadd and every objects task; with N > 1 tasks
        ([lensmodel] tasks), `lensmodel/sNNN` for each share of the candidates and `lensmodel` joining them
        (param step = "merge"). Cost: the sensor's area in full sensors (the candidates grow with it)."""
        deps = [up.get("lenses", None, for_task=layout.task_id(self.name))]
        for tasks in (patch_file_tasks(up.tasks("coadd")), up.tasks("objects")):
            deps += [tasks[k] for k in sorted(tasks)]
        n = n_tasks(ctx.cfg)
        area = ctx.cfg.sensor.nx * ctx.cfg.sensor.ny / FULL_SENSOR_PIXELS
        if n == 1:
            return [self.task(None, area, deps=deps)]
        shares = [self.task(f"s{k:03d}", area / n, deps=deps, share=k, shares=n) for k in range(n)]
        return shares + [self.task(None, 0.001 * area, deps=shares, step="merge", shares=n)]

    def ingest_steps(self, ctx, up):
        model = up.get(self.name, None, for_task=layout.task_id("ingest", "LensedImage"))
        return [(t, [model], 0.01, {}) for t in self.tables]

    def ingest(self, ctx, engine, step, params, **kw):
        """LensedImage; LensedImageTruthMatch (true lensed images within [ingest] match_radius)."""
        from twinkles_hpc.store import ingest
        path = ctx.path(layout.LENS_SCENES)
        if step == "LensedImage":
            return {step: ingest.ingest_lensed_images(engine, path, **kw)}
        return {step: ingest.ingest_lensed_truth_match(engine, path, ctx.path(layout.TRUTH),
                                                       ctx.cfg.ingest.match_radius, **kw)}

    def run(self, ctx, task, should_stop):
        """Fit the scenes of all candidates, or of one share of them (to layout.lens_scenes_share), or join
        the shares into lenses/scenes.h5 (removing them: journal.REMOVED)."""
        from twinkles_hpc.parallel.journal import REMOVED
        p = task.params
        if p.get("step") == "merge":
            rels = [layout.lens_scenes_share(k) for k in range(p["shares"])]
            tables = {name: [] for name in _tables()}
            log = {}
            for r in rels:
                with open_read(ctx.path(r)) as fh:
                    for name in _tables():
                        tables[name].append(read_table(fh[name]))
                    log.update(json.loads(fh.attrs["log"]))
            joined = {}
            for name, dtype in _tables().items():
                t = _cat(tables[name], dtype)
                joined[name] = t[np.argsort(t["lensSystemId"], kind="stable")]   # one task's order
            out = _write(ctx, layout.LENS_SCENES, joined, {int(k): v for k, v in log.items()})
            for r in rels:
                os.remove(ctx.path(r))
            return {layout.LENS_SCENES: out, **{r: REMOVED for r in rels}}
        rel = layout.LENS_SCENES if "share" not in p else layout.lens_scenes_share(p["share"])
        tables, log = self._fit(ctx, p.get("share", 0), p.get("shares", 1))
        return {rel: _write(ctx, rel, tables, log)}

    def _fit(self, ctx, share, shares):
        """({table name: rows}, {candidate id: log}) of the candidates share, share + shares, ... in
        lensCandidateId order."""
        from twinkles_hpc.timedomain import lensphot
        from twinkles_hpc.timedomain.template import wcs_of
        with open_read(ctx.path(layout.LENS_CANDIDATES)) as fh:
            cand, members = read_table(fh["candidates"]), read_table(fh["members"])
        with open_read(ctx.path(layout.DIA_OBJECT)) as fh:
            dobj = fh["dia_object"].fields(["diaObjectId", "ra", "decl"])[...]
        dobj = dobj[np.argsort(dobj["diaObjectId"])]
        systems, images, neigh, log = [], [], [], {}
        files = {}
        try:
            for c in np.sort(cand, order="lensCandidateId")[share::shares]:
                cid = int(c["lensCandidateId"])
                patch = lensphot.home_patch(ctx.skymap, c["ra"], c["decl"])
                if patch is None:
                    log[cid] = "off the tract"
                    continue
                if patch not in files:
                    files[patch] = _open_patch(ctx, patch)
                coadds, objects = files[patch]
                if not coadds:
                    log[cid] = "no coadd of its patch has inputs"
                    continue
                ids = np.sort(members["diaObjectId"][members["lensCandidateId"] == cid])
                k = np.searchsorted(dobj["diaObjectId"], ids)
                starts = (dobj["ra"][k], dobj["decl"][k])
                wcs = wcs_of(next(iter(coadds.values())).attrs)
                scene, info = lensphot.model_system(c, starts, coadds, wcs, objects, ctx.cfg.sensor.pixel_scale)
                if scene is None:
                    log[cid] = info
                    continue
                s, im, nb = lensphot.scene_rows(cid, scene, patch)
                systems.append(s)
                images.append(im)
                neigh.append(nb)
                log[cid] = "; ".join(info["log"])
        finally:
            for coadds, _ in files.values():
                for f in coadds.values():
                    f.close()
        tables = {name: _cat(rows, dtype) for (name, dtype), rows in zip(_tables().items(), (systems, images, neigh))}
        ctx.log_line(f"lensmodel: {len(systems)} of {len(cand[share::shares])} candidates modelled, "
                     f"{sum(len(i) for i in images)} point images")
        return tables, log


def _tables():
    """{table name in scenes.h5: its record dtype}, in the order written."""
    from twinkles_hpc.timedomain import lensphot
    return {"systems": lensphot.SYSTEM_DTYPE, "images": lensphot.IMAGE_DTYPE,
            "neighbours": lensphot.NEIGHBOUR_DTYPE}


def n_tasks(cfg):
    """The lensmodel tasks that share the candidates ([lensmodel] tasks, or one per PIXELS_PER_TASK)."""
    n = cfg.lensmodel.tasks
    return n if n > 0 else max(1, int(np.ceil(cfg.sensor.nx * cfg.sensor.ny / PIXELS_PER_TASK)))


def _write(ctx, rel, tables, log):
    """Write the scene tables and the per-candidate log to `rel` (atomic); returns its size."""
    out = ctx.path(rel)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with atomic_h5(out) as fh:
        for name in _tables():
            write_table(fh, name, tables[name])
        fh.attrs["log"] = json.dumps({str(k): v for k, v in sorted(log.items())})
    return os.path.getsize(out)


def _cat(parts, dtype):
    return np.concatenate(parts) if parts else np.zeros(0, dtype)


def _open_patch(ctx, patch):
    """({band: open coadd file with inputs}, the patch's primary Objects or None) of one patch."""
    from twinkles_hpc.pipeline.stages.objects import coadd_has_inputs
    coadds = {}
    for b in ctx.cfg.cadence.bands:
        p = ctx.path(layout.coadd(b, *patch))
        if os.path.exists(p) and coadd_has_inputs(p):
            coadds[b] = open_read(p)
    objects = None
    p = ctx.path(layout.objects(*patch))
    if ctx.cfg.objects.enabled and os.path.exists(p):
        with open_read(p) as fh:
            t = read_table(fh["objects"])
        objects = t[t["detect_isPrimary"]]
    return coadds, objects


STAGE = LensmodelStage()
