"""The run's trace (trace.jsonl: one record per task with rank, start, end, kind) as rank utilisation."""


def utilisation(records):
    """({rank: {n_tasks, busy_s, utilisation}}, span_s): busy time of each rank over the span from the
    first task's start to the last task's end (every record counts: a task redone after a restart
    occupied its rank twice). Ranks without a task (the scheduler, rank 0, under MPI) are not listed."""
    if not records:
        return {}, 0.0
    t0 = min(r["start"] for r in records)
    span = max(r["end"] for r in records) - t0
    out = {}
    for r in records:
        u = out.setdefault(int(r["rank"]), {"n_tasks": 0, "busy_s": 0.0})
        u["n_tasks"] += 1
        u["busy_s"] += r["end"] - r["start"]
    for u in out.values():
        u["utilisation"] = u["busy_s"] / span if span > 0 else 0.0
    return dict(sorted(out.items())), span


def per_kind(records):
    """{kind: {n_tasks, seconds, max_rss_mb}} summed over the trace."""
    out = {}
    for r in records:
        k = out.setdefault(r["kind"], {"n_tasks": 0, "seconds": 0.0, "max_rss_mb": None})
        k["n_tasks"] += 1
        k["seconds"] += r["end"] - r["start"]
        if "peak_rss_mb" in r:
            k["max_rss_mb"] = max(k["max_rss_mb"] or 0.0, float(r["peak_rss_mb"]))
    return out
