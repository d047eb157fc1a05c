"""Stage lensmodel: the scene model (lens galaxy + point images) of every lens candidate, fitted on the
coadds (lenses/scenes.h5: LensedImage; docs/lensmodel.md)."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np

from twinkles_hpc.options import opt
from twinkles_hpc.pipeline.stage import AMORTISED, Stage, Switch
from twinkles_hpc.rundir import layout
from twinkles_hpc.store.atomic import atomic_h5, open_read
from twinkles_hpc.store.tables import read_table, write_table


@dataclass
class LensmodelSection(Switch):
    """[lensmodel]"""
    enabled: bool = opt(False, "", "Fit a scene model (lens galaxy and point images) to every lens candidate on "
                        "the coadds (lenses/scenes.h5); needs [lenses] enabled = true.")


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
        """One task, `lensmodel`, after the candidates, every coadd and every objects task."""
        deps = [up.get("lenses", None, for_task=layout.task_id(self.name))]
        for stage in ("coadd", "objects"):
            tasks = up.tasks(stage)
            deps += [tasks[k] for k in sorted(tasks)]
        return [self.task(None, 0.0005 * len(ctx.visits), deps=deps)]

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
            for c in np.sort(cand, order="lensCandidateId"):
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
        out = ctx.path(layout.LENS_SCENES)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        with atomic_h5(out) as fh:
            write_table(fh, "systems", _cat(systems, lensphot.SYSTEM_DTYPE))
            write_table(fh, "images", _cat(images, lensphot.IMAGE_DTYPE))
            write_table(fh, "neighbours", _cat(neigh, lensphot.NEIGHBOUR_DTYPE))
            fh.attrs["log"] = json.dumps({str(k): v for k, v in sorted(log.items())})
        ctx.log_line(f"lensmodel: {len(systems)} of {len(cand)} candidates modelled, "
                     f"{sum(len(i) for i in images)} point images")
        return {layout.LENS_SCENES: os.path.getsize(out)}


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
