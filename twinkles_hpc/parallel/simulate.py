"""The run engine as a discrete-event model: a task graph with known durations on N virtual ranks.

The model follows parallel/engine.py step by step, with time taken from the task durations and a few
measured overheads (`Overheads`) instead of a clock:
- rank 0 schedules and computes nothing when there are workers; it is one server that handles one
  message at a time, `rank0_s` of its time per completion;
- a worker that reports a completion is handed at once the ready task first in the engine's order
  (`order="critical"`, the engine's default: the largest chain_costs, the predicted work that waits
  behind it; `"longest"`: the largest predicted `cost`; ties by task id, as the engine's heap), or the
  one that became ready first (`order="fifo"`);
- a task starts `dispatch_s` after rank 0 sent it, and its completion reaches rank 0 `report_s` +
  `report_s_per_byte` x its output bytes after it ended (the worker checksums its outputs, builds the trace
  record and sends them);
- completions are staged and committed to the journal together (`commit_s` of rank 0's time) at most
  COMMIT_INTERVAL after the first one staged, or at once when a task that depends on a staged completion
  is about to be handed out;
- with one rank, rank 0 runs the tasks itself in the same order, committing after each.

`simulate` returns the wall time from the first dispatch to the last commit, the workers' busy time and
rank 0's; `critical_path` is the longest chain of dependent tasks, a lower bound on any schedule.
The model knows tasks, never stages: twinkles_hpc/scaling.py builds the graphs and their durations.
"""
from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass, field, replace

from twinkles_hpc.parallel.engine import COMMIT_INTERVAL, DEFAULT_ORDER, GROUP_MAX, ORDERS, priorities


@dataclass
class SimTask:
    """One task of the model: id, kind, predicted `cost` (orders the ready tasks, as in the engine), the ids
    of the tasks it depends on, its duration on a worker (s) and the bytes it writes."""
    id: str
    kind: str
    cost: float
    deps: tuple
    seconds: float
    bytes: int = 0


@dataclass
class Overheads:
    """Seconds the engine spends around each task (defaults: docs/scaling.md, measured on this 2-core
    machine; `twinkles_hpc.scaling.measure_overheads` fits them to a run's trace and journal)."""
    dispatch_s: float = 0.010           # rank 0 sends a task -> the worker starts it (polls, memory trim)
    report_s: float = 0.011             # a task ends -> rank 0 has its completion (trace record, message)
    report_s_per_byte: float = 0.8e-9   # ... plus the checksum of its outputs
    rank0_s: float = 0.12e-3            # rank 0's time per completion (bench engine under mpiexec)
    commit_s: float = 0.9e-3            # one journal write and fsync
    commit_interval: float = COMMIT_INTERVAL
    start_s: float = 0.0                # engine start -> first dispatch
    end_s: float = 0.0                  # last completion -> engine end

    def scaled(self, factor):
        """The overheads on a core `factor` times slower (the journal's fsync is I/O: unchanged)."""
        return replace(self, dispatch_s=self.dispatch_s * factor, report_s=self.report_s * factor,
                       report_s_per_byte=self.report_s_per_byte * factor, rank0_s=self.rank0_s * factor)

    def around(self, task):
        """Seconds a worker is occupied by `task` beyond its duration (without waiting for rank 0)."""
        return self.dispatch_s + self.report_s + self.report_s_per_byte * task.bytes


@dataclass
class Result:
    """One simulated run. efficiency: the work (sum of task durations) over ranks x wall; utilisation:
    the work over workers x wall; rank0_busy: rank 0's share of the wall time."""
    ranks: int
    order: str
    wall_s: float
    work_s: float
    rank0_busy_s: float
    n_tasks: int
    commits: int
    records: list = field(default_factory=list, repr=False)     # (task id, rank, start, end) when asked

    @property
    def workers(self):
        return max(self.ranks - 1, 1)

    @property
    def efficiency(self):
        return self.work_s / (self.ranks * self.wall_s) if self.wall_s > 0 else 1.0

    @property
    def utilisation(self):
        return self.work_s / (self.workers * self.wall_s) if self.wall_s > 0 else 1.0

    def summary(self):
        return {"ranks": self.ranks, "order": self.order, "wall_s": round(self.wall_s, 3),
                "work_s": round(self.work_s, 3), "efficiency": round(self.efficiency, 4),
                "utilisation": round(self.utilisation, 4),
                "rank0_busy": round(self.rank0_busy_s / self.wall_s, 4) if self.wall_s > 0 else 0.0,
                "tasks": self.n_tasks, "commits": self.commits}


class _Ready:
    """The ready tasks: a max-heap on `key` (engine.priorities of the order; ties: smallest id), or first in,
    first out."""

    def __init__(self, order, key=None):
        self.fifo = order == "fifo"
        self.key = key
        self.items = deque() if self.fifo else []

    def push(self, task):
        if self.fifo:
            self.items.append(task.id)
        else:
            heapq.heappush(self.items, (-self.key[task.id], task.id))

    def peek(self):
        return self.items[0] if self.fifo else self.items[0][1]

    def pop(self):
        return self.items.popleft() if self.fifo else heapq.heappop(self.items)[1]

    def __len__(self):
        return len(self.items)


def _graph(tasks):
    by_id = {t.id: t for t in tasks}
    if len(by_id) != len(tasks):
        raise ValueError("a task id is in the graph twice")
    waiting, dependants = {}, {}
    for t in tasks:
        waits = set(t.deps)         # a dependency listed twice counts once, as in the engine
        for d in waits:
            if d not in by_id:
                raise ValueError(f"task {t.id} depends on task {d}, which is not in the graph")
            dependants.setdefault(d, []).append(t.id)
        waiting[t.id] = len(waits)
    return by_id, waiting, dependants


def simulate(tasks, ranks, overheads=None, order=DEFAULT_ORDER, record=False):
    """Simulate the engine running `tasks` (SimTask list, in graph order) on `ranks` ranks; returns a
    Result (with per-task records (id, rank, start, end) when `record`)."""
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, not {order!r}")
    if ranks < 1:
        raise ValueError(f"ranks must be >= 1, not {ranks}")
    oh = overheads or Overheads()
    by_id, waiting, dependants = _graph(tasks)
    ready = _Ready(order, None if order == "fifo" else priorities(tasks, order))
    for t in tasks:
        if not waiting[t.id]:
            ready.push(t)
    work = sum(t.seconds for t in tasks)
    if ranks == 1:
        return _serial(tasks, by_id, waiting, dependants, ready, oh, order, work, record)

    records = []
    idle = deque(range(1, ranks))
    arrivals = []               # heap of (time rank 0 can see the completion, seq, worker, task id)
    seq = 0
    now = oh.start_s            # rank 0's clock: it is free from `now` on
    busy0 = 0.0
    staged = []                 # completions staged for the next commit
    gated = set()               # ready tasks that depend on a staged completion
    commit_due = None
    commits = 0
    n_done = 0
    end_of_last = now

    def commit():
        nonlocal now, busy0, commits, commit_due
        now += oh.commit_s
        busy0 += oh.commit_s
        commits += 1
        staged.clear()
        gated.clear()
        commit_due = None

    def dispatch(may_commit):
        # largest cost first; a task gated on a staged completion waits for the commit (made if may_commit)
        nonlocal seq
        while idle and len(ready):
            if ready.peek() in gated:
                if not may_commit:
                    return
                commit()
            w = idle.popleft()
            t = by_id[ready.pop()]
            start = now + oh.dispatch_s
            end = start + t.seconds
            seq += 1
            heapq.heappush(arrivals, (end + oh.report_s + oh.report_s_per_byte * t.bytes, seq, w, t.id))
            if record:
                records.append((t.id, w, start, end))

    def take(arrival):
        nonlocal now, busy0, n_done, end_of_last, commit_due
        _, _, w, tid = arrival
        n_done += 1
        for other in dependants.get(tid, ()):
            waiting[other] -= 1
            if not waiting[other]:
                ready.push(by_id[other])
                gated.add(other)
        idle.append(w)
        dispatch(False)         # the worker's next task before this completion's bookkeeping
        if not staged:
            commit_due = now + oh.commit_interval
        staged.append(tid)
        now += oh.rank0_s
        busy0 += oh.rank0_s
        end_of_last = now

    dispatch(True)
    while arrivals or staged:
        # rank 0's pass: commit when the oldest staged line is due (at once when no worker is busy), hand
        # out ready tasks, then take in the completions that have arrived (GROUP_MAX at most)
        if staged and (not arrivals or commit_due <= arrivals[0][0]):
            if arrivals:
                now = max(now, commit_due)
            commit()
            dispatch(True)
            continue
        now = max(now, arrivals[0][0])
        n = 0
        while arrivals and arrivals[0][0] <= now and n < GROUP_MAX:
            take(heapq.heappop(arrivals))
            n += 1
        dispatch(True)
    if n_done != len(tasks):
        raise ValueError(f"task graph cannot progress: {len(tasks) - n_done} tasks wait on a cycle")
    wall = max(now, end_of_last) + oh.end_s
    return Result(ranks, order, wall, work, busy0, len(tasks), commits, records)


def _serial(tasks, by_id, waiting, dependants, ready, oh, order, work, record):
    """One rank: rank 0 runs each task, then records and commits it."""
    now, records, n = oh.start_s, [], 0
    while len(ready):
        t = by_id[ready.pop()]
        start, end = now, now + t.seconds
        if record:
            records.append((t.id, 0, start, end))
        now = end + oh.report_s_per_byte * t.bytes + oh.rank0_s + oh.commit_s
        n += 1
        for other in dependants.get(t.id, ()):
            waiting[other] -= 1
            if not waiting[other]:
                ready.push(by_id[other])
    if n != len(tasks):
        raise ValueError(f"task graph cannot progress: {len(tasks) - n} tasks wait on a cycle")
    return Result(1, order, now + oh.end_s, work, now - work, len(tasks), n, records)


def critical_path(tasks, overheads=None):
    """(seconds, [task ids]) of the longest chain of dependent tasks, each counted with its duration and
    the worker's overheads around it: no number of ranks runs the graph faster."""
    oh = overheads or Overheads()
    by_id, waiting, dependants = _graph(tasks)
    finish, via = {}, {}
    free = [t.id for t in tasks if not waiting[t.id]]
    while free:
        tid = free.pop()
        t = by_id[tid]
        best = max(t.deps, key=lambda d: finish[d], default=None)
        finish[tid] = (finish[best] if best is not None else 0.0) + t.seconds + oh.around(t)
        via[tid] = best
        for other in dependants.get(tid, ()):
            waiting[other] -= 1
            if not waiting[other]:
                free.append(other)
    if len(finish) != len(tasks):
        raise ValueError("the task graph has a cycle")
    if not finish:
        return 0.0, []
    tid = max(finish, key=finish.get)
    length, path = finish[tid], []
    while tid is not None:
        path.append(tid)
        tid = via[tid]
    return length, path[::-1]
