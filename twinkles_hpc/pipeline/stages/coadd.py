"""Stage coadd: a skymap from the visits' nominal footprints, and one memory-bounded coadd per band and
patch from the calexps of the visits that overlap it."""
from __future__ import annotations

import contextlib
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
from twinkles_hpc.store.atomic import atomic_h5, commit

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
    task_visits: float = opt(4.0, "full-sensor visits",
                             "Most work of one coadd or template task: patch pixels x inputs / 16.3 Mpx (a full "
                             "sensor). A patch whose stack is larger is coadded in tiles by tasks of their "
                             "own, then assembled by the patch's task (bit-identical), so that no task holds a "
                             "run of thousands of ranks back (docs/scaling.md). 0: one task per patch.", lo=0.0)


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


#: Predicted cost of assembling a patch from its tiles, per full sensor of patch pixels (coadd cost units).
ASSEMBLE_COST = 0.5
#: Predicted costs per input (coadd cost units, about 4 s each here): the inputs task reads a calexp's
#: header, sky variance and PSF model (level2.coadd.read_calexp_info, 2.7 ms); a tile rebuilds its WCS and
#: PSF model from the inputs file (1.4 ms; a rank keeps the last patch's, for its next tile of that patch).
INPUTS_COST, TILE_INPUT_COST = 0.0007, 0.00035


def patch_tasks(stage, cfg, key, cost, deps, sky_patch, **params):
    """The tasks of one patch's coadd (or template) of predicted `cost`: one task `key`, or, when the cost
    exceeds [coadd] task_visits, three kinds:
    - `key/inputs` (param step = "inputs"), after the calexps: chooses the inputs and records what the
      coadd needs of each (level2.coadd.write_inputs), once;
    - `key/tNNNN` per tile (level2.coadd.tiles; params tile and box), after the inputs task alone (the
      graph has inputs + tiles edges, not inputs x tiles): each tile's cost its share of the pixels plus
      TILE_INPUT_COST per input, at most task_visits where the inputs allow, else with the inputs costing
      no more than the pixels;
    - `key` (param step = "assemble"), after the tiles: the patch's file, which the later stages wait for
      as for the one task."""
    from twinkles_hpc.level2.coadd import tiles
    C = cfg.coadd
    _, _, nx, ny = sky_patch.bbox
    n_in = len(params["visit_ids"])
    fixed = TILE_INPUT_COST * n_in
    n = 1 if C.task_visits <= 0 else int(np.ceil(cost / max(C.task_visits - fixed, fixed)))
    boxes = tiles((ny, nx), n)
    if len(boxes) == 1:
        return [stage.task(key, cost, deps=deps, **params)]
    first = stage.task(f"{key}/inputs", INPUTS_COST * n_in, deps=deps, step="inputs", **params)
    parts = [stage.task(f"{key}/t{k:04d}", cost * b[2] * b[3] / (nx * ny) + fixed, deps=[first], tile=k,
                        box=list(b), **params) for k, b in enumerate(boxes)]
    return [first] + parts + [stage.task(key, ASSEMBLE_COST * nx * ny / FULL_SENSOR_PIXELS, deps=parts,
                                         step="assemble", tiles=len(boxes), **params)]


def patch_file_tasks(tasks):
    """{key: task} of the tasks among a coadd or template stage's `tasks` ({key: Task}) that write a patch's
    file: the one task of a patch, or the task that assembles its tiles (not the tiles, not the inputs)."""
    return {k: t for k, t in tasks.items() if "box" not in t.params and t.params.get("step") != "inputs"}


def run_patch_task(ctx, task, rel, choose):
    """Run a task of patch_tasks writing the patch file `rel` (coadd or template). `choose()` -> (calexp
    paths, attributes for the patch file, None or why the patch is not made): called by the one task and
    the inputs task only. A tile reads the inputs file and writes its file (layout.tile_of); the assembly
    joins the tiles and removes them and the inputs file (recorded as journal.REMOVED). A patch that is
    not made gets a file with its attributes and no planes, its tiles write nothing. Returns the task's
    {relpath: bytes}."""
    from twinkles_hpc.level2.coadd import (assemble_tiles, coadd_patch, coadd_tile, read_calexp_info,
                                           read_inputs, write_inputs)
    from twinkles_hpc.parallel.journal import REMOVED
    p, patch = task.params, ctx.skymap.patch(*tuple(task.params["patch"]))
    irel = layout.tile_of(rel, "inputs")
    step = p.get("step")
    if step == "inputs":
        paths, attrs, reason = choose()
        infos = [] if reason else [read_calexp_info(q) for q in paths]
        write_inputs(ctx.path(irel), infos, ctx.rundir, {"attrs": attrs, "reason": reason or ""})
        return {irel: os.path.getsize(ctx.path(irel))}
    if "box" in p:
        cached = ctx.caches.get("tile_inputs")
        if cached is None or cached[0] != irel:        # the next tile on this rank is often the same patch's
            ctx.caches["tile_inputs"] = None            # one patch's inputs held at a time
            cached = ctx.caches["tile_inputs"] = (irel, *read_inputs(ctx.path(irel), ctx.rundir))
        _, infos, rec = cached
        if rec["reason"]:
            return {}
        trel = layout.tile_of(rel, p["tile"])
        coadd_tile(infos, patch, ctx.cfg.coadd, tuple(p["box"]), ctx.path(trel), ctx.storage)
        return {trel: os.path.getsize(ctx.path(trel))}
    out = ctx.path(rel)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    part = f"{out}.tmp-{os.getpid()}"     # complete but unnamed until the run's own attributes are added
    removed = []
    if step == "assemble":
        _, rec = read_inputs(ctx.path(irel), ctx.rundir, infos=False)
        attrs, reason = rec["attrs"], rec["reason"] or None
        removed = [irel] + ([] if reason else [layout.tile_of(rel, k) for k in range(p["tiles"])])
        if not reason:
            assemble_tiles([ctx.path(r) for r in removed[1:]], patch, part, ctx.storage)
    else:
        paths, attrs, reason = choose()
        if not reason:
            coadd_patch(paths, patch, ctx.cfg.coadd, out=part, storage=ctx.storage)
    if reason:
        with atomic_h5(out) as fh:
            fh.attrs.update(attrs)
            fh.attrs["ok"], fh.attrs["reason"] = False, reason
        ctx.log_line(f"{task.id}: not made: {reason}")
    else:
        with h5py.File(part, "r+", locking=False) as fh:
            fh.attrs.update(attrs)
        commit(part, out)
    for r in removed:
        os.remove(ctx.path(r))
    if removed:
        with contextlib.suppress(OSError):
            os.rmdir(os.path.dirname(ctx.path(removed[0])))
    return {rel: os.path.getsize(out), **{r: REMOVED for r in removed}}


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
            patch = skymap.patch(i, j)
            _, _, nx, ny = patch.bbox
            key = f"{band}/{layout.patch_key(i, j)}"
            deps = [up.get("calexp", layout.visit_key(v), for_task=layout.task_id(self.name, key)) for v in ids]
            tasks += patch_tasks(self, cfg, key, nx * ny * len(ids) / FULL_SENSOR_PIXELS, deps, patch, band=band,
                                 patch=(i, j), visit_ids=ids)
        # refuse, before anything runs, a budget that cannot hold the smallest sub-region of the largest stack
        n = max((len(ids) for ids in inputs.values()), default=0)
        need = coadd.subregion_bytes(16, n) + coadd.FIXED_BYTES + coadd.PER_INPUT_BYTES * n
        if need > cfg.coadd.memory_per_rank:
            raise InputError(cfg.path, "coadd.memory_per_rank", f">= {int(need)} bytes (a 16 px sub-region of "
                             f"{n} calexps, the most that overlap one patch)", cfg.coadd.memory_per_rank)
        return tasks

    def run(self, ctx, task, should_stop):
        """Coadd one patch in one band (or its inputs, one tile of it, or assemble its tiles: patch_tasks) on
        this rank alone; the budget bounds its peak memory."""
        p = task.params
        band = p["band"]

        def choose():
            from twinkles_hpc.level2.calibrate import calexp_ok
            paths = [ctx.path(layout.calexp(v, band)) for v in p["visit_ids"]]
            return ([q for q in paths if calexp_ok(q)],             # failed calibrations left out
                    {"band": band, "skymap": json.dumps(ctx.skymap.to_dict(), sort_keys=True)}, None)
        return run_patch_task(ctx, task, layout.coadd(band, *p["patch"]), choose)


STAGE = CoaddStage()
