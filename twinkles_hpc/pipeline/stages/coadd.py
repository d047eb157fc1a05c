"""Stage coadd: a skymap from the visits' nominal footprints, and one memory-bounded coadd per band and
patch from the calexps of the visits that overlap it."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

import h5py
import numpy as np

from twinkles_hpc.options import opt
from twinkles_hpc.errors import InputError
from twinkles_hpc.level2.coadd import CoaddConfig
from twinkles_hpc.pipeline.stage import AMORTISED, Stage, Switch
from twinkles_hpc.rundir import layout
from twinkles_hpc.store.atomic import commit

#: Pointing and rotator errors within this many sigma are covered by a footprint's margin.
POINTING_SIGMAS = 5.0
#: Pixels of a full LSST sensor, the unit of the predicted costs.
FULL_SENSOR_PIXELS = 16.288e6


@dataclass
class CoaddSection(CoaddConfig, Switch):
    """[coadd]: the coadd's settings (level2.coadd.CoaddConfig), the skymap's geometry and the switch."""
    enabled: bool = opt(False, "",
                        "Coadd the calexps of each band on the skymap's patches (coadd/B/patch-I-J.h5); "
                        "needs [calexp] enabled = true.")
    memory_per_rank: int = opt(2 << 30, "bytes",
                               "Memory budget of one coadd task (one rank): each patch is coadded in "
                               "sub-regions sized so that the stack of their warps fits it (>= 16 MiB).",
                               lo=16 << 20)
    patch_size: int = opt(4000, "pixel", "Side of a skymap patch (the box it owns), at the sensor's pixel scale.",
                          lo=16, hi=100_000)
    patch_overlap: int = opt(100, "pixel", "Width each patch's coadd extends into its neighbours on every side.",
                             lo=0)


def pointing_margin_px(cfg):
    """Pixels by which a visit's true footprint may stray from its nominal one: POINTING_SIGMAS times the
    pointing error (both axes) plus the rotator error's displacement at the sensor corner, plus one."""
    s, v = cfg.sensor, cfg.visit
    shift = np.hypot(v.pointing_error, v.pointing_error) / s.pixel_scale
    turn = np.deg2rad(v.rotation_error / 3600.0) * 0.5 * np.hypot(s.nx, s.ny)
    return int(np.ceil(POINTING_SIGMAS * (shift + turn))) + 1


def visit_footprints(cfg, visits):
    """RA, Dec (deg), each (n_visits, 4), of the corners of every visit's nominal footprint grown by
    pointing_margin_px (the same sensor WCS with 2 m more pixels a side: same centre and rotation)."""
    from twinkles_hpc.imsim.wcs import SensorWCS
    s, m = cfg.sensor, pointing_margin_px(cfg)
    c = [SensorWCS(v["ra"], v["dec"], v["rot_sky_pos"], s.nx + 2 * m, s.ny + 2 * m, s.pixel_scale).corners()
         for v in visits]
    return np.array([r for r, _ in c]).reshape(-1, 4), np.array([d for _, d in c]).reshape(-1, 4)


def run_footprints(ctx):
    """visit_footprints of the run's visits, computed once per context (the coadd, template and later
    stages all place visits on the skymap)."""
    if "footprints" not in ctx.caches:
        ctx.caches["footprints"] = visit_footprints(ctx.cfg, ctx.visits)
    return ctx.caches["footprints"]


def visit_patches(ctx):
    """{visit_id: [patch index (i, j), ...]} of the skymap patches each visit's footprint overlaps, computed
    once per run context (the coadd, template, diffim and associate stages all group visits by patch)."""
    if "visit_patches" not in ctx.caches:
        ctx.caches["visit_patches"] = {
            int(v["visit_id"]): [tuple(p.index) for p in ctx.skymap.patches_overlapping(ra, dec)]
            for v, ra, dec in zip(ctx.visits, *run_footprints(ctx))}
    return ctx.caches["visit_patches"]


def make_skymap(cfg, visits, footprints=None):
    """One tract over the footprints of all visits (visit_footprints, computed when not given), cut into
    [coadd] patch_size patches."""
    from twinkles_hpc.level2.skymap import SkyMap
    ra, dec = footprints if footprints is not None else visit_footprints(cfg, visits)
    return SkyMap.from_footprints(ra, dec, pixel_scale=cfg.sensor.pixel_scale, patch_size=cfg.coadd.patch_size,
                                  overlap=cfg.coadd.patch_overlap)


class CoaddStage(Stage):
    name = "coadd"
    doc = "per-band coadds of the skymap's patches (coadd/B/patch-I-J.h5; skymap.json)"
    section = CoaddSection
    requires = ("calexp",)
    outputs = (layout.SKYMAP, layout.coadd)
    colour = "#dd8452"
    cost_class = AMORTISED

    def check_config(self, cfg):
        C = cfg.coadd
        if 2 * C.patch_overlap >= C.patch_size:
            raise InputError(cfg.path, "coadd.patch_overlap",
                             f"a value < coadd.patch_size / 2 ({C.patch_size / 2:g}) pixel", C.patch_overlap)

    def tasks(self, ctx, up):
        """One `coadd/B/I-J` task per (band, patch) that a visit of the band overlaps, after the calexps of
        those visits; cost = patch pixels x inputs in full sensors. The skymap is the run directory's (a
        restart has the same graph), else made from the footprints."""
        from twinkles_hpc.level2 import coadd
        cfg, visits = ctx.cfg, ctx.visits
        if ctx.skymap is None:
            ctx.skymap = make_skymap(cfg, visits, run_footprints(ctx))
        skymap = ctx.skymap
        inputs, overlaps = {}, visit_patches(ctx)
        for v in visits:
            for index in overlaps[int(v["visit_id"])]:
                inputs.setdefault((str(v["band"]), *index), []).append(int(v["visit_id"]))
        tasks = []
        for (band, i, j), ids in sorted(inputs.items()):
            _, _, nx, ny = skymap.patch(i, j).bbox
            key = f"{band}/{layout.patch_key(i, j)}"
            deps = [up.get("calexp", layout.visit_key(v), for_task=layout.task_id(self.name, key)) for v in ids]
            tasks.append(self.task(key, nx * ny * len(ids) / FULL_SENSOR_PIXELS, deps=deps, band=band,
                                   patch=(i, j), visit_ids=ids))
        # refuse, before anything runs, a budget that cannot hold the smallest sub-region of the largest stack
        n = max((len(ids) for ids in inputs.values()), default=0)
        need = coadd.subregion_bytes(16, n) + coadd.FIXED_BYTES + coadd.PER_INPUT_BYTES * n
        if need > cfg.coadd.memory_per_rank:
            raise InputError(cfg.path, "coadd.memory_per_rank", f">= {int(need)} bytes (a 16 px sub-region of "
                             f"{n} calexps, the most that overlap one patch)", cfg.coadd.memory_per_rank)
        return tasks

    def run(self, ctx, task, should_stop):
        """Coadd one patch in one band on this rank alone (comm=None); the budget bounds its peak memory."""
        from twinkles_hpc.level2.calibrate import calexp_ok
        from twinkles_hpc.level2.coadd import coadd_patch
        p, skymap = task.params, ctx.skymap
        band, index = p["band"], tuple(p["patch"])
        rel = layout.coadd(band, *index)
        out = ctx.path(rel)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        part = f"{out}.tmp-{os.getpid()}"     # complete but unnamed until the run's own attributes are added
        inputs = [ctx.path(layout.calexp(v, band)) for v in p["visit_ids"]]
        coadd_patch([q for q in inputs if calexp_ok(q)], skymap.patch(*index),  # failed calibrations left out
                    ctx.cfg.coadd, out=part, storage=ctx.storage)
        with h5py.File(part, "r+", locking=False) as fh:
            fh.attrs["band"] = band
            fh.attrs["skymap"] = json.dumps(skymap.to_dict(), sort_keys=True)
        commit(part, out)
        return {rel: os.path.getsize(out)}


STAGE = CoaddStage()
