"""Synthetic load through the run engine: tasks that only sleep, run by the real scheduler, journal and trace.

Two drivers, one set of figures (`run_stats`):
- `run_mpi(comm, ...)`: the engine over a communicator, each worker sleeping for its task's duration;
  `python -m twinkles_hpc.parallel.synthetic mpi` under mpiexec is its command line;
- `run_simulated(...)`: rank 0's loop, unchanged, in one process against `SimulatedWorkers`, a communicator
  whose workers answer each task after its duration without running anything: what rank 0 alone sustains
  (the ceiling), at worker counts that no machine here has; `... synthetic simulate` is its command line.

`twinkles-hpc bench engine` runs both command lines as child processes (bench never imports the scheduler)
and reads the JSON list they print: one dict of figures per run.
"""
from __future__ import annotations

import argparse
import gc
import heapq
import io
import json
import os
import pickle
import sys
import time
from collections import deque

from twinkles_hpc.parallel.engine import TAG_BYE, TAG_DONE, TAG_REQ, TAG_STOP, TAG_TASK, Engine, StopFlag
from twinkles_hpc.parallel.journal import Journal
from twinkles_hpc.rundir import layout
from twinkles_hpc.rundir.jsonl import read_jsonl
from twinkles_hpc.rundir.task import Task

#: MPI's wildcards (mpi4py's MPI.ANY_SOURCE, MPI.ANY_TAG), as SimulatedWorkers receives them.
ANY_SOURCE, ANY_TAG = -2, -1


#: The golden ratio's fractional part: task i sleeps (0.5 + frac(i x GOLDEN)) x the mean duration, spread evenly
#: over +-50 %, so that workers fall out of step after their first task as they do in a real run.
GOLDEN = 0.6180339887498949


def synthetic_tasks(n_tasks, seconds, pairs=False):
    """`n_tasks` tasks that sleep `seconds` each on average, all of cost 1; pairs: each odd task depends on the
    task before it (a parent and its child, as a visit and its calexp)."""
    return [Task(f"synthetic/{i:08d}", "synthetic", 1.0,
                 deps=(f"synthetic/{i - 1:08d}",) if pairs and i % 2 else (),
                 params={"seconds": seconds * (0.5 + i * GOLDEN % 1.0)})
            for i in range(n_tasks)]


def sleep_task(task, should_stop):
    """The synthetic task: sleep, write nothing."""
    if task.params["seconds"] > 0:
        time.sleep(task.params["seconds"])
    return {}


def task_count(n_tasks, workers, seconds, max_sleep_s):
    """Tasks in one run: `n_tasks`, or fewer so that each worker sleeps about `max_sleep_s` at most."""
    if seconds <= 0:
        return n_tasks
    return min(n_tasks, workers * max(1, int(max_sleep_s / seconds)))


def idle_gaps(trace):
    """Seconds between the end of a worker's task and the start of its next one, over every worker
    (records of trace.jsonl)."""
    spans = {}
    for rec in trace:
        spans.setdefault(rec["rank"], []).append((rec["start"], rec["end"]))
    gaps = []
    for s in spans.values():
        s.sort()
        gaps += [max(b[0] - a[1], 0.0) for a, b in zip(s, s[1:])]
    return gaps


def _quantile(values, q):
    if not values:
        return float("nan")
    v = sorted(values)
    return v[min(len(v) - 1, int(round(q * (len(v) - 1))))]


def steady_rate(trace):
    """Completions per second over the middle half of the run (from the first start to the last end), where
    every worker is busy: the rate without the ramps at either end."""
    if len(trace) < 2:
        return float("nan")
    t0, t1 = min(r["start"] for r in trace), max(r["end"] for r in trace)
    lo, hi = t0 + (t1 - t0) / 4, t1 - (t1 - t0) / 4
    return sum(lo <= r["end"] < hi for r in trace) / max(hi - lo, 1e-9)


def run_stats(rundir, workers, n_tasks, seconds, cpu_s, wall_s, journal):
    """The figures of one run: completions (over the run, and steady_rate), journal commits (fsyncs) and done
    lines per second, rank 0's CPU per 1000 tasks, and the median and 95th percentile of the idle gap between
    a worker's tasks."""
    trace = read_jsonl(os.path.join(rundir, layout.TRACE))
    gaps = idle_gaps(trace)
    return {"workers": workers, "tasks": n_tasks, "task_s": seconds, "wall_s": round(wall_s, 4),
            "rank0_cpu_s": round(cpu_s, 4), "completions_per_s": round(n_tasks / wall_s, 1),
            "steady_per_s": round(steady_rate(trace), 1),
            "commits": journal.commits, "commits_per_s": round(journal.commits / wall_s, 1),
            "lines_per_commit": round(journal.lines / max(journal.commits, 1), 2),
            "cpu_s_per_1000": round(1000 * cpu_s / n_tasks, 4),
            "gap_median_ms": round(1e3 * _quantile(gaps, 0.5), 3), "gap_p95_ms": round(1e3 * _quantile(gaps, 0.95), 3)}


def run_mpi(comm, rundir, n_tasks, seconds):
    """Collective over comm (size >= 2): one engine run of `n_tasks` sleeping tasks with its journal and
    trace in the new directory `rundir`. Returns its figures on rank 0, None elsewhere."""
    if comm.rank == 0:
        os.makedirs(rundir)
    journal = Journal(rundir)
    engine = Engine(comm, rundir, sleep_task, journal, out=io.StringIO(), progress_interval=3600, stop=StopFlag())
    engine.run(synthetic_tasks(n_tasks, seconds), [])
    if comm.rank != 0:
        return None
    cpu, wall = engine.scheduler_cpu
    return run_stats(rundir, comm.size - 1, n_tasks, seconds, cpu, wall, journal)


class SimulatedWorkers:
    """A communicator for rank 0's loop whose `size - 1` workers run nothing: each answers a task with the
    DONE message of an empty task `params["seconds"]` after it was sent, and STOP with BYE (nothing here
    checkpoints, so DRAIN is dropped). Messages are pickled both ways, as MPI sends Python objects. The
    workers' side of it (unpickling the task, building and pickling the answer) is counted in
    `worker_cpu_s`: rank 0's own CPU is the engine's less that."""

    rank = 0

    def __init__(self, size):
        self.size = size
        self.worker_cpu_s = 0.0
        self._due = []                  # heap of (time, seq, source, tag, pickled answer) not yet arrived
        self._seq = 0
        self._arrived = deque()         # [source, tag, data, received] in arrival order
        self._by_source = {r: deque() for r in range(1, size)}
        for r in range(1, size):
            self._answer(r, TAG_REQ, None, 0.0)

    def _answer(self, source, tag, obj, after_s):
        self._seq += 1
        heapq.heappush(self._due, (time.time() + after_s, self._seq, source, tag, pickle.dumps(obj)))

    def _arrive(self):
        now = time.time()
        while self._due and self._due[0][0] <= now:
            _, _, source, tag, data = heapq.heappop(self._due)
            msg = [source, tag, data, False]
            self._arrived.append(msg)
            self._by_source[source].append(msg)

    def _match(self, source, tag):
        self._arrive()
        if source == ANY_SOURCE:
            q = self._arrived
            while q and q[0][3]:
                q.popleft()
            return next((m for m in q if not m[3] and tag in (ANY_TAG, m[1])), None)
        return next((m for m in self._by_source[source] if tag in (ANY_TAG, m[1])), None)

    def Iprobe(self, source=ANY_SOURCE, tag=ANY_TAG, status=None):
        msg = self._match(source, tag)
        if msg is not None and status is not None:
            status.Set_source(msg[0])
            status.Set_tag(msg[1])
        return msg is not None

    def recv(self, source=ANY_SOURCE, tag=ANY_TAG):
        msg = self._match(source, tag)
        if msg is None:
            raise RuntimeError(f"rank 0 would block: no message from {source} with tag {tag}")
        self._by_source[msg[0]].remove(msg)
        msg[3] = True
        return pickle.loads(msg[2])

    def send(self, obj, dest, tag=0):
        data = pickle.dumps(obj)
        t0 = time.process_time()
        if tag == TAG_TASK:
            task = pickle.loads(data)
            seconds = task.params.get("seconds", 0.0)
            now = time.time()
            rec = {"task": task.id, "kind": task.kind, "rank": dest, "host": "simulated", "pid": 0,
                   "start": round(now, 4), "end": round(now + seconds, 4), "bytes": 0, "peak_rss_mb": 0.0,
                   "start_rss_mb": 0.0}
            self._answer(dest, TAG_DONE, (task.id, {}, rec, {}), seconds)
        elif tag == TAG_STOP:
            self._answer(dest, TAG_BYE, None, 0.0)
        self.worker_cpu_s += time.process_time() - t0

    def bcast(self, obj, root=0):
        return obj

    def Abort(self, code=1):
        raise SystemExit(code)


def run_simulated(rundir, workers, n_tasks, seconds, pairs=False, comm=None):
    """One engine run of `n_tasks` tasks of `seconds` each (pairs: see synthetic_tasks) against `workers`
    simulated workers (comm: a SimulatedWorkers of size workers + 1 to use instead), journal and trace in
    `rundir` (created if missing). Returns its figures, rank 0's CPU without the simulated workers' and
    without collecting the garbage the caller left (collected before the run starts)."""
    os.makedirs(rundir, exist_ok=True)
    gc.collect()
    comm = comm if comm is not None else SimulatedWorkers(workers + 1)
    journal = Journal(rundir)
    engine = Engine(comm, rundir, sleep_task, journal, out=io.StringIO(), progress_interval=3600, stop=StopFlag())
    engine.run(synthetic_tasks(n_tasks, seconds, pairs), [])
    cpu, wall = engine.scheduler_cpu
    return run_stats(rundir, workers, n_tasks, seconds, cpu - comm.worker_cpu_s, wall, journal)


def _floats(text):
    return [float(x) for x in text.split(",") if x.strip()]


def main(argv=None):
    """`python -m twinkles_hpc.parallel.synthetic mpi|simulate ...`: prints one JSON list of run figures
    (rank 0 only)."""
    p = argparse.ArgumentParser(prog="python -m twinkles_hpc.parallel.synthetic", description=__doc__.split("\n")[0])
    p.add_argument("driver", choices=["mpi", "simulate"], help="mpi: over MPI.COMM_WORLD (under mpiexec); "
                   "simulate: rank 0 alone against simulated workers")
    p.add_argument("--rundir", required=True, help="a new directory for the runs' journals and traces")
    p.add_argument("--tasks", type=int, default=2000, help="tasks per run (default 2000)")
    p.add_argument("--durations", type=_floats, default=[0.0], help="seconds per task, one run each (e.g. 0,0.01)")
    p.add_argument("--max-sleep", type=float, default=1.0, metavar="S", help="fewer tasks in a run where each "
                   "worker would sleep longer than about S seconds (default 1)")
    p.add_argument("--workers", default="16,256,2048", help="simulate: simulated worker counts (default "
                   "16,256,2048)")
    p.add_argument("--pairs", action="store_true", help="simulate: each odd task depends on the one before")
    args = p.parse_args(argv)
    out = []
    if args.driver == "mpi":
        from mpi4py import MPI
        comm = MPI.COMM_WORLD
        for k, seconds in enumerate(args.durations):
            n = task_count(args.tasks, comm.size - 1, seconds, args.max_sleep)
            out.append(run_mpi(comm, os.path.join(args.rundir, f"n{comm.size}-{k}"), n, seconds))
        if comm.rank != 0:
            return 0
    else:
        for workers in (int(w) for w in args.workers.split(",")):
            for k, seconds in enumerate(args.durations):
                n = task_count(args.tasks, workers, seconds, args.max_sleep)
                out.append(run_simulated(os.path.join(args.rundir, f"sim{workers}-{k}"), workers, n, seconds,
                                         args.pairs))
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
