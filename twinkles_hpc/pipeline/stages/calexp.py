"""Stage calexp: every visit's eimage calibrated into a calexp (cosmic rays, background, detection,
astrometric and photometric calibration against the reference catalogue, PSF model, source table)."""
from __future__ import annotations

import os
from dataclasses import dataclass

from twinkles_hpc.options import opt
from twinkles_hpc.level2.calibrate import CalibrateConfig
from twinkles_hpc.pipeline.stage import PER_VISIT, Stage, Switch
from twinkles_hpc.pipeline.stages.visit import visit_cost
from twinkles_hpc.rundir import layout


@dataclass
class CalexpSection(CalibrateConfig, Switch):
    """[calexp]: the calibration's settings (level2.calibrate.CalibrateConfig) and the switch."""
    enabled: bool = opt(False, "",
                        "Calibrate every visit into a calexp (background, detection, astrometric and "
                        "photometric calibration, PSF model) against the reference catalogue.")


class CalexpStage(Stage):
    name = "calexp"
    doc = "one calibrated exposure per visit (calexp/vNNNNNNNN-B.h5)"
    section = CalexpSection
    requires = ("sky", "visit")
    outputs = (layout.calexp,)
    tables = ("CcdVisit",)
    colour = "#c44e52"
    cost_class = PER_VISIT

    def tasks(self, ctx, up):
        out = []
        for v in ctx.visits:
            key = layout.visit_key(v["visit_id"])
            dep = up.get("visit", key, for_task=layout.task_id(self.name, key))
            out.append(self.task(key, 2.0 * visit_cost(v, ctx.cfg.sensor), deps=(dep,),
                                 visit_id=int(v["visit_id"])))
        return out

    def run(self, ctx, task, should_stop):
        """A visit that cannot be calibrated gets a calexp with calib_ok = False (one log line); later
        stages skip it."""
        from twinkles_hpc.level2.calibrate import calibrate_visit
        visit = ctx.by_id[task.params["visit_id"]]
        rel = layout.calexp(visit["visit_id"], visit["band"])
        out = ctx.path(rel)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        meta = calibrate_visit(ctx.path(layout.eimage(visit["visit_id"], visit["band"])), ctx.refcat(), out,
                               config=ctx.cfg.calexp, storage=ctx.storage)
        if not meta["calib_ok"]:
            ctx.log_line(f"visit {int(visit['visit_id'])} ({visit['band']}): calibration failed: "
                         f"{meta['calib_failure']}")
        written = {rel: os.path.getsize(out)}
        if not ctx.cfg.store.keep_eimages:
            e_rel = layout.eimage(visit["visit_id"], visit["band"])
            written[e_rel] = drop_pixels(ctx.path(e_rel))
        return written

    def ingest_steps(self, ctx, up):
        return [("CcdVisit", list(up.tasks("calexp").values()), 0.01 * len(ctx.visits), {})]

    def ingest(self, ctx, engine, step, params, **kw):
        """CcdVisit: one row per calibrated calexp (failed calibrations have none)."""
        from twinkles_hpc.level2.calibrate import calexp_ok
        from twinkles_hpc.level2.psf import fwhm_from_json
        from twinkles_hpc.store import ingest
        paths = [ctx.path(layout.calexp(v, ctx.by_id[v]["band"])) for v in sorted(ctx.by_id)]
        return {step: ingest.ingest_ccd_visits(engine, [p for p in paths if calexp_ok(p)], fwhm_from_json, **kw)}


def drop_pixels(path):
    """Rewrite the eimage at `path` without its pixels (dataset `image`), its attributes and truth kept;
    atomic; returns the new size. The journal then records the small file as this task's output, so a
    resume keeps it, and redoes the visit with the calexp if the calexp is lost (parallel/journal.py)."""
    from twinkles_hpc.store.atomic import atomic_h5, open_read
    with open_read(path) as src:
        if "image" not in src:
            return os.path.getsize(path)
        with atomic_h5(path) as dst:
            for k, v in src.attrs.items():
                dst.attrs[k] = v
            for name in src:
                if name != "image":
                    src.copy(src[name], dst, name=name)
            dst.attrs["pixels_dropped"] = True
    return os.path.getsize(path)


STAGE = CalexpStage()
