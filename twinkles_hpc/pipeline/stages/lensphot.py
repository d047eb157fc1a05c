"""Stage lensphot: per visit, every point image of every scene model measured on the calexp and on the
difference (lensphot/vNNNNNNNN-B.h5: LensedImageForcedSource; docs/lensmodel.md)."""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

from twinkles_hpc.options import opt
from twinkles_hpc.pipeline.stage import PER_VISIT, Stage, Switch, per_visit_ingest_steps
from twinkles_hpc.pipeline.stages.visit import visit_cost
from twinkles_hpc.rundir import layout
from twinkles_hpc.store.atomic import atomic_h5, open_read
from twinkles_hpc.store.tables import write_table


@dataclass
class LensphotSection(Switch):
    """[lensphot]"""
    enabled: bool = opt(False, "", "Measure every point image of every scene model on every calexp and "
                        "difference (lensphot/vNNNNNNNN-B.h5); needs [lensmodel] and [diffim] enabled = true.")


class LensphotStage(Stage):
    name = "lensphot"
    doc = "per-visit fluxes of the lensed images (lensphot/vNNNNNNNN-B.h5)"
    section = LensphotSection
    requires = ("lensmodel", "diffim")
    outputs = (layout.lensphot,)
    tables = ("LensedImageForcedSource",)
    colour = "#55a868"
    cost_class = PER_VISIT

    def tasks(self, ctx, up):
        """One `lensphot/NNNNNNNN` task per visit, after its difference and the scene models;
        cost = 0.01 x the visit's."""
        model = up.get("lensmodel", None, for_task=layout.task_id(self.name, "*"))
        diffims = up.tasks("diffim")
        return [self.task(layout.visit_key(int(v["visit_id"])), 0.01 * visit_cost(v, ctx.cfg.sensor),
                          deps=[diffims[layout.visit_key(int(v["visit_id"]))], model], visit_id=int(v["visit_id"]))
                for v in ctx.visits]

    def ingest_steps(self, ctx, up):
        """LensedImageForcedSource per chunk of visits (stage.per_visit_ingest_steps)."""
        return per_visit_ingest_steps(ctx, up, self.name, "LensedImageForcedSource", 0.005)

    def ingest(self, ctx, engine, step, params, **kw):
        from twinkles_hpc.store import ingest
        paths = [ctx.path(layout.lensphot(v, ctx.by_id[v]["band"])) for v in params["visit_ids"]]
        return {step: ingest.ingest_lensed_forced(engine, paths, **kw)}

    def run(self, ctx, task, should_stop):
        from twinkles_hpc.timedomain import lensphot
        visit = ctx.by_id[task.params["visit_id"]]
        vid, band = int(visit["visit_id"]), str(visit["band"])
        scenes = _scenes(ctx)
        with contextlib.ExitStack() as stack:
            calexp = stack.enter_context(open_read(ctx.path(layout.calexp(vid, band))))
            calib_ok = bool(calexp.attrs.get("calib_ok", True))
            diffim = stack.enter_context(open_read(ctx.path(layout.diffim(vid, band))))
            year = int(diffim.attrs["template_year"])
            templates = {}
            for patch in sorted({p for _, _, p in scenes}):
                t = _template_fluxes(ctx, layout.template(band, *patch, None if year < 0 else year))
                if t is not None:
                    templates[patch] = t
                    stack.callback(t.close)
            rows = lensphot.photometer_visit(scenes, visit, calexp, diffim, templates)
        rel = layout.lensphot(vid, band)
        out = ctx.path(rel)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        with atomic_h5(out) as fh:
            write_table(fh, "lensed_image_forced_source", rows)
            fh.attrs.update(visit_id=vid, band=band, ccdVisitId=vid)
            fh.attrs["reason"] = "" if calib_ok else "calibration failed: no calexp"
        return {rel: os.path.getsize(out)}


def _scenes(ctx):
    """The run's scenes (lensphot.scenes_from_tables), built once per worker and scenes file."""
    tables = ctx.cache("lens_scenes").get(ctx.path(layout.LENS_SCENES), ("systems", "images", "neighbours"))
    held = ctx.caches.get("lens_scene_list")
    if held is None or held[0] is not tables:
        from twinkles_hpc.timedomain.lensphot import scenes_from_tables
        held = ctx.caches["lens_scene_list"] = (tables, scenes_from_tables(*tables))
    return held[1]


def _template_fluxes(ctx, rel):
    """The worker's TemplateFluxes of a made template (None when it was not made), kept across the visits;
    a rewritten file (other size or time) starts afresh."""
    path = ctx.path(rel)
    if not os.path.exists(path):
        return None
    st = os.stat(path)
    key = (path, st.st_mtime_ns, st.st_size)
    memo = ctx.caches.setdefault("lens_templates", {})
    if key not in memo:
        from twinkles_hpc.timedomain.lensphot import TemplateFluxes
        with open_read(path) as fh:
            ok = bool(fh.attrs.get("ok", False))
        memo[key] = TemplateFluxes(path) if ok else None
    return memo[key]


STAGE = LensphotStage()
