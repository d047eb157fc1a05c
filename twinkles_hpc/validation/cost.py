"""A run's Level 2 cost from its trace (trace.jsonl: one record per task with start, end, kind, peak RSS).

Task seconds are the wall time of a task on its worker. Every task runs single-threaded on one rank, so
this is its CPU time when each worker has a core of its own (oversubscribed or shared cores inflate it).
"""
import os

import numpy as np

from twinkles_hpc import instrument
from twinkles_hpc.pipeline import registry
from twinkles_hpc.pipeline.stage import AMORTISED, PER_VISIT
from twinkles_hpc.rundir import layout, read_jsonl

FULL_SENSOR_PIXELS = instrument.SENSOR_NX * instrument.SENSOR_NY


def last_per_task(records):
    """The last trace record of each task (a task redone after its output was lost appears twice)."""
    return list({r["task"]: r for r in records}.values())


def read_trace(path):
    """The last record of each task in a trace.jsonl."""
    return last_per_task(read_jsonl(path))


def run_cost(rundir, cfg, n_visits, V):
    path = os.path.join(rundir, layout.TRACE)
    if not os.path.exists(path):
        why = {"value": None, "reason": f"no trace: {path} not found"}
        return {"level2_seconds_per_visit": why, "coadd_peak_rss": why}
    recs = read_trace(path)
    secs = {}
    for r in recs:
        secs.setdefault(r["kind"], []).append(r["end"] - r["start"])
    scale = FULL_SENSOR_PIXELS / (cfg.sensor.nx * cfg.sensor.ny)
    stages, total = {}, 0.0
    classes = registry.cost_classes()
    on = {st.name for st in registry.enabled_stages(cfg)}          # the stages this run has
    per_visit = tuple(k for k in classes.get(PER_VISIT, ()) if k in on)
    amortised = tuple(k for k in classes.get(AMORTISED, ()) if k in on)
    for kind in per_visit + amortised:
        s = secs.get(kind)
        if not s:
            stages[kind] = {"value": None, "reason": f"no {kind} tasks in the trace (stage off or not run)"}
            continue
        per = sum(s) / (len(s) if kind in per_visit else max(n_visits, 1))
        stages[kind] = {"seconds": per, "full_sensor_seconds": per * scale, "n_tasks": len(s),
                        "basis": "mean per task" if kind in per_visit else f"total / {n_visits} visits"}
        total += per
    out = {"level2_seconds_per_visit": {
        "stages": stages, "total": total, "full_sensor_total": total * scale,
        "sensor": [cfg.sensor.nx, cfg.sensor.ny], "full_sensor_scale": scale,
        "note": ("task wall seconds on one single-threaded rank (= CPU seconds on an unshared core)"
                 + ("" if scale == 1 else f"; the run's sensor is {cfg.sensor.nx}x{cfg.sensor.ny}: "
                    f"full_sensor_* scale by the pixel count ({scale:.2f}x) to {instrument.SENSOR_NX}x"
                    f"{instrument.SENSOR_NY}"))}}
    if "visit" in secs:
        out["simulate_seconds_per_visit"] = float(np.mean(secs["visit"]))
    coadd = [r for r in recs if r["kind"] == "coadd" and "peak_rss_mb" in r]
    rss = [r["peak_rss_mb"] for r in coadd]
    # the task's own growth: its peak over the worker's resident size when it started (caches of earlier
    # stages, the interpreter), when the trace has it
    own = [r["peak_rss_mb"] - r["start_rss_mb"] for r in coadd if "start_rss_mb" in r]
    budget = cfg.coadd.memory_per_rank / 2 ** 20
    gated = own if len(own) == len(rss) else rss
    out["coadd_peak_rss"] = (
        {"max_mb": float(max(gated)), "process_max_mb": float(max(rss)), "median_mb": float(np.median(gated)),
         "n_tasks": len(rss), "budget_mb": budget, "limit_mb": budget + V.rss_overhead_mb,
         "basis": "peak - start RSS of each task" if gated is own else "peak RSS of the process",
         "note": "peak RSS (VmHWM, MiB, reset per task) of each coadd task over the worker's RSS when it started "
                 "(process_max_mb: the whole process); the budget ([coadd] memory_per_rank) bounds the warp "
                 "stack, validate.rss_overhead_mb allows for the rest"}
        if rss else {"value": None, "reason": "no coadd tasks with peak RSS in the trace"})
    return out
