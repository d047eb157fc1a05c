"""What `twinkles-hpc status` prints: tasks done per stage, checkpoints, the lock, failures, sizes."""
from __future__ import annotations

import os

import numpy as np

from twinkles_hpc.errors import InputError
from twinkles_hpc.rundir import layout
from twinkles_hpc.rundir.jsonl import read_jsonl
from twinkles_hpc.store.atomic import open_read


def run_status(rundir, cfg, visits, tasks, journal_events, done, lost, locked):
    """Summary of a run directory given its config, visits, task graph and journal (read by the caller)."""
    kinds = {}
    for t in tasks:
        k = kinds.setdefault(t.kind, {"total": 0, "done": 0})
        k["total"] += 1
        k["done"] += t.id in done
    ckdir = os.path.join(rundir, layout.CHECKPOINTS)
    ckpts = sorted(f for f in os.listdir(ckdir) if f.endswith(".h5")) if os.path.isdir(ckdir) else []
    ends = [e for e in journal_events if e["event"] == "end"]
    trace = read_jsonl(os.path.join(rundir, layout.TRACE))
    n_done = sum(k["done"] for k in kinds.values())
    return {
        "rundir": rundir, "name": cfg.run.name, "tasks": kinds, "n_tasks": len(tasks), "n_done": n_done,
        "complete": n_done == len(tasks), "running": locked,
        "last_status": ends[-1]["status"] if ends else None,
        "starts": sum(e["event"] == "start" for e in journal_events),
        "failed": [e for e in journal_events if e["event"] == "failed"][-3:],
        "checkpoints": ckpts, "lost_outputs": lost,
        "bytes_written": int(sum(r["bytes"] for r in trace)),
        "task_seconds": round(sum(r["end"] - r["start"] for r in trace), 2),
        "per_visit": visit_counts(rundir, visits, done),
        "calib_failed": calib_failures(rundir, visits, done),
        "database": _database_summary(rundir),
    }


def _database_summary(rundir):
    from twinkles_hpc.store.lightcurve import database_summary
    try:
        return database_summary(rundir)
    except InputError as exc:
        return {"error": str(exc)}


def calib_failures(rundir, visits, done):
    """{visit id: reason} of the finished calexps that record a failed calibration (calib_ok = False)."""
    out = {}
    for v in visits:
        if layout.task_id("calexp", layout.visit_key(v["visit_id"])) in done:
            with open_read(os.path.join(rundir, layout.calexp(v["visit_id"], v["band"]))) as fh:
                if not fh.attrs.get("calib_ok", True):
                    out[int(v["visit_id"])] = str(fh.attrs.get("calib_failure", ""))
    return out


def visit_counts(rundir, visits, done):
    """Median and range over finished visits of the sources each eimage records (attributes)."""
    keys = ("n_sources", "n_supernovae", "n_supernovae_snr5", "n_lensed_images", "n_saturated")
    vals = {k: [] for k in keys}
    for v in visits:
        if layout.task_id("visit", layout.visit_key(v["visit_id"])) not in done:
            continue
        with open_read(os.path.join(rundir, layout.eimage(v["visit_id"], v["band"]))) as fh:
            for k in keys:
                if k in fh.attrs:
                    vals[k].append(int(fh.attrs[k]))
    return {k: {"median": float(np.median(x)), "min": int(min(x)), "max": int(max(x))}
            for k, x in vals.items() if x}


def format_status(st):
    """The lines `twinkles-hpc status` prints."""
    state = "running" if st["running"] else ("complete" if st["complete"] else "incomplete")
    lines = [f"{st['rundir']}: {st['name']}: {state}, {st['n_done']}/{st['n_tasks']} tasks done "
             f"({st['starts']} start(s), last: {st['last_status']})"]
    for kind, k in st["tasks"].items():
        lines.append(f"  {kind:8s} {k['done']:6d} / {k['total']:6d}")
    if st["checkpoints"]:
        lines.append(f"  mid-visit checkpoints: {', '.join(st['checkpoints'])}")
    for f in st["failed"]:
        lines.append(f"  failed: rank {f['rank']} task {f['task']}: {f['message']}")
    lines.append(f"  {st['bytes_written'] / 1e6:.1f} MB written, {st['task_seconds']:.1f} task-seconds")
    for k, v in st["per_visit"].items():
        lines.append(f"  per visit: {k:18s} median {v['median']:8.1f}  range {v['min']}..{v['max']}")
    if st["calib_failed"]:
        lines.append(f"  calibration failed: {len(st['calib_failed'])} visit(s), skipped by coadd and forced "
                     "photometry")
        for vid, why in list(st["calib_failed"].items())[:5]:
            lines.append(f"    visit {vid}: {why}")
    if st["database"]:
        d = st["database"]
        size = f", {d['bytes'] / 1e6:.1f} MB" if "bytes" in d else ""
        lines.append(f"  database {d.get('url', '')}{size}: " + (d["error"] if "error" in d else ", ".join(
            f"{t} {n}" for t, n in d["tables"].items() if n) or "empty"))
    if not st["complete"] and not st["running"]:
        lines.append("  resume with the same `twinkles-hpc run CONFIG -o RUNDIR` command")
    return "\n".join(lines)
