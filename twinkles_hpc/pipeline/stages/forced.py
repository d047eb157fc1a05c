"""Stage forced: forced photometry of every primary Object on every calexp (ForcedSource)."""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from twinkles_hpc.options import opt
from twinkles_hpc.pipeline.stage import PER_VISIT, Stage, per_visit_ingest_steps
from twinkles_hpc.pipeline.stages.visit import visit_cost
from twinkles_hpc.rundir import layout
from twinkles_hpc.store.atomic import atomic_h5
from twinkles_hpc.store.tables import write_table


@dataclass
class ForcedSection:
    enabled: bool = opt(False, "",
                        "Forced photometry of every primary Object on every calexp (forced/vNNNNNNNN-B.h5, "
                        "table forced_source: objectId, ccdVisitId, psFlux, psFlux_Sigma in nJy, flags, x, y); "
                        "needs [objects] enabled = true.")


class ForcedStage(Stage):
    name = "forced"
    doc = "forced photometry of the primary Objects on each calexp (forced/vNNNNNNNN-B.h5)"
    section = ForcedSection
    requires = ("calexp", "objects")
    outputs = (layout.forced,)
    tables = ("ForcedSource",)
    colour = "#da8bc3"
    cost_class = PER_VISIT

    def tasks(self, ctx, up):
        """One `forced/NNNNNNNN` task per visit, after that visit's calexp task and every objects task (a
        visit reads the Objects of all patches; those off its sensor are skipped); cost = 0.2 x the visit's."""
        otasks = list(up.tasks("objects").values())
        patches = [t.params["patch"] for t in otasks]
        out = []
        for v in ctx.visits:
            key = layout.visit_key(v["visit_id"])
            calexp = up.get("calexp", key, for_task=layout.task_id(self.name, key))
            out.append(self.task(key, 0.2 * visit_cost(v, ctx.cfg.sensor), deps=[calexp] + otasks,
                                 visit_id=int(v["visit_id"]), patches=patches))
        return out

    def run(self, ctx, task, should_stop):
        """Forced photometry of the primary Objects of `patches` on one visit's calexp."""
        from twinkles_hpc.level2.calibrate import calexp_ok
        from twinkles_hpc.level2.forced import FORCED_SOURCE_DTYPE, force_visit
        visit = ctx.by_id[task.params["visit_id"]]
        calexp = ctx.path(layout.calexp(visit["visit_id"], visit["band"]))
        if calexp_ok(calexp):
            objects = [_patch_objects(ctx, p) for p in sorted(tuple(p) for p in task.params["patches"])]
            rows = force_visit(calexp, objects)
        else:                               # calibration failed: an empty table keeps the graph static
            rows = np.zeros(0, FORCED_SOURCE_DTYPE)
        rel = layout.forced(visit["visit_id"], visit["band"])
        out = ctx.path(rel)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        with atomic_h5(out) as fh:
            write_table(fh, "forced_source", rows)
            fh.attrs["visit_id"], fh.attrs["band"] = int(visit["visit_id"]), str(visit["band"])
            fh.attrs["ccdVisitId"] = int(visit["visit_id"])
        return {rel: os.path.getsize(out)}


    def ingest_steps(self, ctx, up):
        """ForcedSource per chunk of visits (stage.per_visit_ingest_steps)."""
        return per_visit_ingest_steps(ctx, up, self.name, "ForcedSource", 0.05)

    def ingest(self, ctx, engine, step, params, **kw):
        from twinkles_hpc.store import ingest
        paths = [ctx.path(layout.forced(v, ctx.by_id[v]["band"])) for v in params["visit_ids"]]
        return {step: ingest.ingest_forced(engine, paths, **kw)}


def _patch_objects(ctx, index):
    """The Object table of one patch (the columns forced photometry needs), read once per worker."""
    t, = ctx.cache("objects", size=256).get(ctx.path(layout.objects(*index)), ("objects",))
    return t[["objectId", "psRa", "psDecl", "detect_isPrimary"]]


STAGE = ForcedStage()
