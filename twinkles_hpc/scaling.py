"""Scaling studies: a measured run replayed on N virtual ranks, and full-size runs modelled from it.

A run directory holds what the model needs: the task graph (its config and visits, planned again), each
task's measured duration and output bytes (trace.jsonl), and when rank 0 took in each completion and how
long the run took (journal.jsonl). From them:
- `load_run` reads the run and fits the engine's overheads around each task (`measure_overheads`);
- `replay_tasks` is the run's own graph with its measured durations: simulated at the run's own rank
  count it should give the measured wall time;
- `model_tasks` is the graph of another run (`n_visits` visits of the Run 1 cadence, more visits as
  same-night sequences, on a full-size sensor), planned by the pipeline from the measured run's config,
  each task's duration = its class's measured seconds per unit of predicted cost x its predicted cost
  (x the sensor's area ratio where the stage's cost model has no pixels in it), with the spread of the
  measured tasks of that class;
- `study` runs strong or weak scaling over rank counts, machines and ready orders; `plot_study` draws it.

Machines differ by one per-core speed factor (MACHINES, docs/scaling.md). The simulation itself is
twinkles_hpc/parallel/simulate.py, which knows tasks, never stages.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace

import numpy as np

from twinkles_hpc.errors import InputError
from twinkles_hpc.parallel.simulate import Overheads, SimTask, critical_path, simulate
from twinkles_hpc.rundir import layout
from twinkles_hpc.rundir.jsonl import read_jsonl


@dataclass(frozen=True)
class Machine:
    name: str
    cpu: str
    factor: float           # seconds on one of its cores per second on one core of this machine
    ranks_per_node: int     # one rank a core (KNL: 64 of the 68, as jobs/cori-knl.sh)


#: Per-core speed relative to the machine the runs were measured on (Intel Xeon, 2.6 GHz, 2 cores):
#: the assumptions and their sources are in docs/scaling.md.
MACHINES = {m.name: m for m in (
    Machine("here", "Intel Xeon 2.6 GHz (the measuring machine)", 1.0, 2),
    Machine("haswell", "Cori Haswell: Xeon E5-2698 v3, 2.3 GHz", 1.7, 32),
    Machine("knl", "Cori KNL: Xeon Phi 7250, 1.4 GHz", 6.0, 64),
    Machine("perlmutter", "Perlmutter CPU: AMD EPYC 7763, 2.45 GHz", 1.2, 128),
)}

#: Pixels of a full LSST sensor (4000 x 4072).
FULL_SENSOR = (4000, 4072)
#: Seconds between the visits of a same-night sequence when a cadence is grown beyond its base list.
SEQUENCE_STEP_S = 34.0


@dataclass
class MeasuredRun:
    """What a run directory says about its own run (load_run)."""
    rundir: str
    cfg: object
    visits: object
    planned: dict           # task id -> Task, the graph planned again from the config and the visits
    records: list           # trace records, one per task (the last when a task ran twice)
    ranks: int
    wall_s: float           # engine wall time, summed over the sessions that ran tasks
    sessions: int
    overheads: Overheads
    order: str = "longest"  # the engine's order in its first session (runs from before it was recorded: longest)

    @property
    def pixels(self):
        return self.cfg.sensor.nx * self.cfg.sensor.ny


def _sessions(events):
    """[(start event, end event)] of the sessions that ran tasks and ended."""
    out, start = [], None
    for e in events:
        if e.get("event") == "start":
            start = e
        elif e.get("event") == "end" and start is not None:
            if start.get("pending", 1):
                out.append((start, e))
            start = None
    return out


def load_run(rundir, rank0_s=None, commit_s=None, planned=None):
    """The measured run in `rundir`: InputError naming the file when its trace or journal is missing or
    holds no finished session. planned: the run's Tasks when it was not made by `twinkles-hpc run` (then
    it has no config and no visits), else they are planned again from its config.json and visits.h5."""
    trace_path, journal_path = (os.path.join(rundir, n) for n in (layout.TRACE, layout.JOURNAL))
    for path, what in ((trace_path, "the run's task trace"), (journal_path, "the run's journal")):
        if not os.path.isfile(path):
            raise InputError(path, "file", f"{what} (a run directory whose run has finished tasks)", "not found")
    records = {r["task"]: r for r in read_jsonl(trace_path) if "task" in r and "end" in r}
    if not records:
        raise InputError(trace_path, "records", "at least one finished task", "none")
    events = read_jsonl(journal_path)
    sessions = _sessions(events)
    if not sessions:
        raise InputError(journal_path, "sessions", "a session that ran tasks and ended (start and end lines)",
                         "none")
    cfg = visits = None
    if planned is None:
        from twinkles_hpc import rundir as rd
        from twinkles_hpc.pipeline.setup import plan
        cfg = rd.load_config(rundir)
        ctx, planned = plan(cfg, rundir)
        visits = ctx.visits
    planned = {t.id: t for t in planned}
    done = {e["task"]: e["time"] for e in events if e.get("event") == "done"}
    recs = list(records.values())
    defaults = Overheads()
    oh = measure_overheads(recs, done, planned, sessions[0],
                           rank0_s=defaults.rank0_s if rank0_s is None else rank0_s,
                           commit_s=defaults.commit_s if commit_s is None else commit_s)
    return MeasuredRun(rundir, cfg, visits, planned, recs, int(sessions[0][0]["ranks"]),
                       sum(float(e["wall_s"]) for _, e in sessions), len(sessions), oh,
                       str(sessions[0][0].get("order", "longest")))


def measure_overheads(records, done, planned, session, rank0_s, commit_s):
    """Overheads fitted to one run: report_s + report_s_per_byte x bytes to the journal's done time of each
    task (least squares), dispatch_s the mean time from a done line to the start of the worker's next task
    when that task was already ready, start_s and end_s the session's ends beyond its tasks."""
    have = [r for r in records if r["task"] in done]
    d = Overheads(rank0_s=rank0_s, commit_s=commit_s)
    if not have:
        return d
    lag = np.array([max(done[r["task"]] - r["end"], 0.0) for r in have])
    nbytes = np.array([float(r.get("bytes", 0)) for r in have])
    a, b = float(lag.mean()), 0.0
    if len(have) > 2 and nbytes.std() > 0:
        b, a = np.polyfit(nbytes, lag, 1)
        if b < 0 or a < 0:
            a, b = (float(lag.mean()), 0.0) if b < 0 else (0.0, float(lag.sum() / nbytes.sum()))
    gaps = []
    by_rank = {}
    for r in have:                          # one process's tasks: a restarted run's gap between sessions is no gap
        by_rank.setdefault((r["rank"], r.get("pid")), []).append(r)
    for rs in by_rank.values():
        rs.sort(key=lambda r: r["start"])
        for prev, nxt in zip(rs, rs[1:]):
            t = planned.get(nxt["task"])
            deps_done = max((done.get(x, 0.0) for x in (t.deps if t else ())), default=0.0)
            if deps_done <= done[prev["task"]]:
                gaps.append(max(nxt["start"] - done[prev["task"]], 0.0))
    dispatch = float(np.mean(gaps)) if gaps else d.dispatch_s
    start, end = session
    first = min(r["start"] for r in have)
    last = max(done[r["task"]] for r in have)
    return replace(d, dispatch_s=dispatch, report_s=float(a), report_s_per_byte=float(b),
                   start_s=max(first - float(start["time"]) - dispatch, 0.0),
                   end_s=max(float(end["time"]) - last - commit_s, 0.0))


def task_class(task):
    """The unit the durations are calibrated on: the stage, and the step of an ingest task (the tables
    differ in rows per visit)."""
    step = task.params.get("step") if task.params else None
    return f"{task.kind}/{step}" if step else task.kind


def replay_tasks(run):
    """The measured run's tasks with their measured durations and bytes, and the planned dependencies among
    them (a dependency the trace does not hold was done before the traced sessions)."""
    ids = {r["task"] for r in run.records}
    out = []
    for r in sorted(run.records, key=lambda r: r["start"]):
        t = run.planned.get(r["task"])
        out.append(SimTask(r["task"], r.get("kind", t.kind if t else "?"), t.cost if t else 0.0,
                           tuple(x for x in (t.deps if t else ()) if x in ids),
                           max(r["end"] - r["start"], 0.0), int(r.get("bytes", 0))))
    return out


# -- full-size runs ------------------------------------------------------------------------------
def model_config(cfg, sensor=FULL_SENSOR, cadence=None):
    """The measured run's config on another sensor: the sky radius grows with the sensor's diagonal, the
    coadd budget is at least the default (a model never runs it); `cadence`: settings of [cadence]."""
    from twinkles_hpc import config as config_mod
    d = cfg.to_dict()
    scale = math.sqrt(sensor[0] * sensor[1] / (cfg.sensor.nx * cfg.sensor.ny))
    d["sensor"].update(nx=int(sensor[0]), ny=int(sensor[1]))
    d["sky"]["radius"] = min(cfg.sky.radius * scale, 10.0)
    if "coadd" in d:
        d["coadd"]["memory_per_rank"] = max(int(d["coadd"]["memory_per_rank"]), 2 << 30)
    if cadence:
        d["cadence"].update(cadence)
    return config_mod.from_dict(d, path=cfg.path, base_dir=cfg.base_dir)


def base_cadence(cfg, opsim=None):
    """Run 1's visits: one per night and band of an OpSim file (`opsim`, e.g. the Run 1 list), else the
    synthetic Run-1-like cadence (1227 visits)."""
    from twinkles_hpc.pipeline.setup import select_cadence
    source = os.path.abspath(opsim) if opsim else "synthetic"
    if opsim and not os.path.isfile(source):
        raise InputError(source, "--opsim", "an OpSim CSV or SQLite file", "not found")
    c = model_config(cfg, (cfg.sensor.nx, cfg.sensor.ny),
                     {"source": source, "max_visits": 0, "one_per_night_band": True, "mjd_min": 0.0,
                      "mjd_max": 0.0, "years": 10.0, "exptime": 0.0})
    return select_cadence(c)


def resize_cadence(visits, n_visits):
    """`n_visits` visits: fewer spread evenly in time within each band (cadence.subsample), or more as
    sequences of visits of the same night, band and pointing, SEQUENCE_STEP_S apart (as the deep-drilling
    sequences of Run 3's minion_1016 cadence)."""
    from twinkles_hpc.sky import cadence
    n = len(visits)
    if n_visits <= n:
        return cadence.subsample(visits, n_visits)
    i = np.arange(n)
    reps = (np.floor((i + 1) * n_visits / n) - np.floor(i * n_visits / n)).astype(int)
    idx = np.repeat(i, reps)
    copy = np.concatenate([np.arange(k) for k in reps])
    out = visits[idx].copy()
    out["visit_id"] = out["visit_id"] * int(reps.max()) + copy
    out["mjd"] = out["mjd"] + copy * SEQUENCE_STEP_S / 86400.0
    return out[np.lexsort((out["visit_id"], out["mjd"]))]


@dataclass
class ClassRate:
    """Seconds per unit of predicted cost of one task class, the spread of its measured tasks around it,
    its mean output bytes, and the factor for another sensor when its cost model ignores pixels."""
    rate: float
    spread: np.ndarray
    bytes: float
    pixel_factor: float = 1.0


def class_rates(run, sensor=FULL_SENSOR):
    """{class: ClassRate} from the measured run's tasks; a class whose predicted cost does not change when
    the same visits are planned on `sensor` gets the area ratio as its pixel factor (its work, such as the
    rows an ingest step loads, is assumed to grow with the sources on the sensor)."""
    from twinkles_hpc.pipeline.setup import plan
    area = sensor[0] * sensor[1] / run.pixels
    _, other = plan(model_config(run.cfg, sensor), None, visits=run.visits)
    other_cost, own_cost = {}, {}
    for t in other:
        other_cost[task_class(t)] = other_cost.get(task_class(t), 0.0) + t.cost
    for t in run.planned.values():
        own_cost[task_class(t)] = own_cost.get(task_class(t), 0.0) + t.cost
    groups = {}
    for r in run.records:
        t = run.planned.get(r["task"])
        if t is not None:
            groups.setdefault(task_class(t), []).append((max(r["end"] - r["start"], 0.0), t.cost,
                                                         float(r.get("bytes", 0))))
    rates = {}
    for c, rows in groups.items():
        sec, cost, nbytes = (np.array(x) for x in zip(*rows))
        if cost.sum() > 0 and np.all(cost > 0):
            rate = sec.sum() / cost.sum()
            spread = sec / cost / rate if rate > 0 else np.ones_like(sec)
        else:       # no cost model: a constant per task
            rate, spread = 0.0, sec
        same = abs(other_cost.get(c, 0.0) - own_cost.get(c, 0.0)) <= 1e-9 * max(own_cost.get(c, 0.0), 1.0)
        rates[c] = ClassRate(rate, spread, float(nbytes.mean()), area if same else 1.0)
    return rates


def with_durations(tasks, rates, area, seed=0):
    """(SimTasks of planned `tasks`, classes without a measured task). Each task's duration: its class's rate
    x its predicted cost x the pixel factor x a spread factor drawn from the class's measured tasks
    (deterministic in `seed`); bytes: the class's mean x `area`, the sensor's area ratio."""
    rng = np.random.default_rng(seed)
    out, missing = [], set()
    for t in tasks:
        c = task_class(t)
        cr = rates.get(c)
        if cr is None:
            missing.add(c)
            seconds, nbytes = 0.0, 0
        else:
            draw = float(cr.spread[rng.integers(len(cr.spread))])
            seconds = float((cr.rate * t.cost * draw if cr.rate > 0 else draw) * cr.pixel_factor)
            nbytes = int(cr.bytes * area)
        out.append(SimTask(t.id, t.kind, t.cost, t.deps, seconds, nbytes))
    return out, sorted(missing)


def model_tasks(run, n_visits, sensor=FULL_SENSOR, opsim=None, seed=0, rates=None, base=None):
    """(SimTasks of a run of `n_visits` visits of the base cadence on `sensor`, planned from the measured
    run's config; classes without a measured task): with_durations."""
    from twinkles_hpc.pipeline.setup import plan
    rates = class_rates(run, sensor) if rates is None else rates
    visits = resize_cadence(base_cadence(run.cfg, opsim) if base is None else base, n_visits)
    _, tasks = plan(model_config(run.cfg, sensor), None, visits=visits)
    return with_durations(tasks, rates, sensor[0] * sensor[1] / run.pixels, seed)


def like_tasks(run, other, seed=0):
    """(SimTasks of another measured run's own graph with durations from `run`, classes without a measured
    task): how well the calibration carries to another number of visits, sensor or rank count."""
    sensor = (other.cfg.sensor.nx, other.cfg.sensor.ny)
    traced = {r["task"] for r in other.records}
    tasks = [t for t in other.planned.values() if t.id in traced]
    tasks = [replace(t, deps=tuple(d for d in t.deps if d in traced)) for t in tasks]
    return with_durations(tasks, class_rates(run, sensor), other.pixels / run.pixels, seed)


def split_tasks(tasks, kinds, piece_s):
    """The graph with each task of `kinds` longer than `piece_s` cut into equal pieces of at most `piece_s`
    that share its dependencies (sub-regions as tasks); what depended on it depends on every piece."""
    pieces, out = {}, []
    for t in tasks:
        k = math.ceil(t.seconds / piece_s) if t.kind in kinds and piece_s > 0 else 1
        if k <= 1:
            out.append(t)
            continue
        ids = tuple(f"{t.id}#{p}" for p in range(k))
        pieces[t.id] = ids
        out += [SimTask(i, t.kind, t.cost / k, t.deps, t.seconds / k, t.bytes // k) for i in ids]
    return [replace(t, deps=tuple(x for d in t.deps for x in pieces.get(d, (d,)))) for t in out]


def drop_kinds(tasks, kinds):
    """The graph without the tasks of `kinds`; a task that waited for one waits for what it waited for."""
    by_id = {t.id: t for t in tasks}
    memo = {}

    def through(tid):
        if tid not in memo:
            t = by_id[tid]
            memo[tid] = ({x for d in t.deps for x in through(d)} if t.kind in kinds else {tid})
        return memo[tid]
    return [replace(t, deps=tuple(sorted({x for d in t.deps for x in through(d)})))
            for t in tasks if t.kind not in kinds]


def on_machine(tasks, overheads, machine):
    """The tasks and overheads on `machine`'s cores."""
    f = machine.factor
    return [replace(t, seconds=t.seconds * f) for t in tasks], overheads.scaled(f)


def row(result, machine, critical_path_s, n_visits=None):
    """One line of a study: the simulated run, its nodes, and the two lower bounds on its wall time (the
    critical path; the work shared by the workers)."""
    return {"machine": machine.name, **result.summary(), "visits": n_visits,
            "nodes": math.ceil(result.ranks / machine.ranks_per_node),
            "critical_path_s": round(critical_path_s, 3),
            "work_per_worker_s": round(result.work_s / result.workers, 3)}


def limiting_kinds(tasks, overheads, top=3):
    """[(kind, seconds)] of the kinds with the most time on the critical path."""
    by_id = {t.id: t for t in tasks}
    _, path = critical_path(tasks, overheads)
    share = {}
    for tid in path:
        share[by_id[tid].kind] = share.get(by_id[tid].kind, 0.0) + by_id[tid].seconds
    return sorted(share.items(), key=lambda kv: -kv[1])[:top]


def study(run, ranks, machines, orders, *, n_visits=None, weak=False, sensor=FULL_SENSOR, opsim=None, seed=0,
          split=(), piece_s=0.0, without=()):
    """Rows of a scaling study: replay of the measured run (n_visits None) or a modelled run of n_visits
    (weak: n_visits x ranks / max(ranks) at each rank count), at each rank count, machine and order.
    Returns (rows, notes) where notes name the kinds limiting the largest run and the classes without a
    measured task."""
    notes = {}
    graphs = {}
    if n_visits is None:
        graphs = {r: replay_tasks(run) for r in ranks}
    else:
        rates = class_rates(run, sensor)
        base = base_cadence(run.cfg, opsim)
        for r in ranks:
            v = max(1, round(n_visits * r / max(ranks))) if weak else n_visits
            if v not in graphs:
                tasks, missing = model_tasks(run, v, sensor, seed=seed, rates=rates, base=base)
                if missing:
                    notes["unmeasured"] = missing
                if split:
                    tasks = split_tasks(tasks, set(split), piece_s)
                if without:
                    tasks = drop_kinds(tasks, set(without))
                graphs[v] = tasks
        graphs = {r: graphs[max(1, round(n_visits * r / max(ranks))) if weak else n_visits] for r in ranks}
    rows, paths = [], {}
    for m in machines:
        for order in orders:
            for r in ranks:
                tasks, oh = on_machine(graphs[r], run.overheads, m)
                key = (id(graphs[r]), m.name)
                if key not in paths:
                    paths[key] = critical_path(tasks, oh)[0]
                visits = None if n_visits is None else sum(t.kind == "visit" for t in tasks)
                rows.append(row(simulate(tasks, r, oh, order), m, paths[key], visits))
    tasks, oh = on_machine(graphs[max(ranks)], run.overheads, machines[0])
    notes["critical_path_kinds"] = [(k, round(s, 1)) for k, s in limiting_kinds(tasks, oh)]
    return rows, notes


def check(run, tasks, measured, orders=None):
    """[{order, ranks, measured_s, predicted_s, error, work_ratio, normalised_error}]: `tasks` (a replay, or
    another run's graph with this run's durations) simulated at the rank count of `measured` (a MeasuredRun)
    with `run`'s overheads on this machine, in each of `orders` (default: the order `measured` ran in),
    against the wall time measured. work_ratio: the measured run's
    task seconds over the modelled ones (1 for a replay; on a shared machine it also carries the load of
    other processes during either run); normalised_error: the error with the durations scaled by it, which
    leaves the schedule and the overheads to the test."""
    measured_work = sum(max(r["end"] - r["start"], 0.0) for r in measured.records)
    ratio = measured_work / max(sum(t.seconds for t in tasks), 1e-12)
    scaled = [replace(t, seconds=t.seconds * ratio) for t in tasks]
    out = []
    for order in orders or [measured.order]:
        res = simulate(tasks, measured.ranks, run.overheads, order)
        norm = simulate(scaled, measured.ranks, run.overheads, order)
        out.append({"run": measured.rundir, "order": order, "ranks": measured.ranks,
                    "measured_s": round(measured.wall_s, 3), "predicted_s": round(res.wall_s, 3),
                    "error": round(res.wall_s / measured.wall_s - 1.0, 4), "work_ratio": round(ratio, 4),
                    "normalised_error": round(norm.wall_s / measured.wall_s - 1.0, 4)})
    return out


def plot_study(rows, path, title):
    """Efficiency and wall time against ranks, one line per machine and order (FIFO dashed)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    colours = {"here": "#555555", "haswell": "#4c72b0", "knl": "#dd8452", "perlmutter": "#55a868"}
    for (m, order) in dict.fromkeys((r["machine"], r["order"]) for r in rows):
        rs = sorted((r for r in rows if r["machine"] == m and r["order"] == order), key=lambda r: r["ranks"])
        x = [r["ranks"] for r in rs]
        style = dict(color=colours.get(m), ls="--" if order == "fifo" else "-", marker="o", ms=3,
                     label=f"{m}, {'longest first' if order == 'longest' else 'FIFO'}")
        ax1.plot(x, [100 * r["efficiency"] for r in rs], **style)
        ax2.plot(x, [r["wall_s"] / 3600 for r in rs], **style)
    ax1.axhline(85, color="#c44e52", lw=0.8, ls=":")
    ranks = sorted({r["ranks"] for r in rows})
    plain = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")
    for ax, label in ((ax1, "parallel efficiency (%)"), (ax2, "wall time (h)")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(ranks)
        ax.xaxis.set_major_formatter(plain)
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.set_xlabel("MPI ranks (rank 0 schedules)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    ax1.set_ylim(0, 100)
    ax2.set_yscale("log")
    ax2.yaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    ax2.yaxis.set_major_formatter(plain)
    ax2.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax1.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _hms(s):
    s = int(round(s))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def format_overheads(oh):
    return (f"dispatch {1e3 * oh.dispatch_s:.1f} ms, report {1e3 * oh.report_s:.1f} ms + "
            f"{1e9 * oh.report_s_per_byte:.2f} ms/MB, rank 0 {1e3 * oh.rank0_s:.2f} ms a completion, "
            f"commit {1e3 * oh.commit_s:.1f} ms")


def format_rows(rows):
    """The study as a text table."""
    head = (f"{'machine':<11}{'order':<8}{'ranks':>6}{'nodes':>6}{'visits':>7}{'wall':>10}{'effic':>7}"
            f"{'util':>7}{'rank0':>7}{'crit.path':>10}{'work/wkr':>10}")
    lines = [head]
    for r in rows:
        lines.append(f"{r['machine']:<11}{r['order']:<8}{r['ranks']:>6}{r['nodes']:>6}"
                     f"{r['visits'] if r['visits'] is not None else '-':>7}{_hms(r['wall_s']):>10}"
                     f"{100 * r['efficiency']:>6.1f}%{100 * r['utilisation']:>6.1f}%{100 * r['rank0_busy']:>6.1f}%"
                     f"{_hms(r['critical_path_s']):>10}{_hms(r['work_per_worker_s']):>10}")
    return "\n".join(lines)
