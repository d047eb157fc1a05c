"""Stage lenses: lensed-quasar candidates from the Objects and the DiaObjects (docs/lensfind.md)."""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from twinkles_hpc.options import opt
from twinkles_hpc.pipeline.stage import AMORTISED, Stage, Switch
from twinkles_hpc.pipeline.stages.associate import MERGE_KEY
from twinkles_hpc.rundir import layout
from twinkles_hpc.store.atomic import atomic_h5, open_read
from twinkles_hpc.store.tables import read_table, write_table
from twinkles_hpc.timedomain.lensfind import LensFindConfig

#: Object columns the finder reads.
OBJECT_FIELDS = ("objectId", "psRa", "psDecl", "extendedness")


@dataclass
class LensesSection(LensFindConfig, Switch):
    """[lenses]: the switch and the finder's settings (timedomain.lensfind.LensFindConfig)."""
    enabled: bool = opt(False, "", "Find lensed-quasar candidates from the DiaObjects and, when [objects] is "
                        "enabled, the Objects (lenses/candidates.h5); needs [associate] enabled = true.")


class LensesStage(Stage):
    name = "lenses"
    doc = "lensed-quasar candidates with a score (lenses/candidates.h5)"
    section = LensesSection
    requires = ("associate",)
    uses = ("objects",)
    outputs = (layout.LENS_CANDIDATES,)
    colour = "#64b5cd"
    cost_class = AMORTISED

    def tasks(self, ctx, up):
        """One task, `lenses`, after the association's merge and every objects task (when enabled)."""
        merge = up.get("associate", MERGE_KEY, for_task=layout.task_id(self.name))
        objects = up.tasks("objects")
        deps = [merge] + [objects[k] for k in sorted(objects)]
        return [self.task(None, 0.0002 * len(ctx.visits), deps=deps, patches=sorted(objects))]

    def run(self, ctx, task, should_stop):
        from twinkles_hpc.timedomain.lensfind import find_lenses
        with open_read(ctx.path(layout.DIA_OBJECT)) as fh:
            dia_objects, dia_sources = read_table(fh["dia_object"]), read_table(fh["dia_source"])
        objects, reason = read_objects(ctx, task.params["patches"])
        cand, members = find_lenses(objects, dia_objects, dia_sources, ctx.skymap.ra, ctx.skymap.dec,
                                    ctx.cfg.lenses)
        out = ctx.path(layout.LENS_CANDIDATES)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        with atomic_h5(out) as fh:
            write_table(fh, "candidates", cand)
            write_table(fh, "members", members)
            fh.attrs.update(ok=True, reason=reason, n_dia_objects=len(dia_objects),
                            n_objects=-1 if objects is None else len(objects),
                            **{k: getattr(ctx.cfg.lenses, k) for k in LensFindConfig.__dataclass_fields__})
        ctx.log_line(f"lenses: {len(cand)} candidates from {len(dia_objects)} DiaObjects")
        return {layout.LENS_CANDIDATES: os.path.getsize(out)}


def read_objects(ctx, patches):
    """(primary Objects of the patches with OBJECT_FIELDS, or None, and '' or why there are none)."""
    if not ctx.cfg.objects.enabled:
        return None, "no Objects ([objects] enabled = false): DiaObjects only, no host term"
    parts = []
    for key in patches:
        i, j = (int(v) for v in key.split("-"))
        with open_read(ctx.path(layout.objects(i, j))) as fh:
            t = read_table(fh["objects"])
        t = t[t["detect_isPrimary"]]
        part = np.zeros(len(t), [(n, t.dtype[n]) for n in OBJECT_FIELDS])
        for n in OBJECT_FIELDS:
            part[n] = t[n]
        parts.append(part)
    if not parts:
        return None, "no Object table (no patch has a coadd): DiaObjects only, no host term"
    return np.concatenate(parts), ""


STAGE = LensesStage()
