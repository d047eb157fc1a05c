"""Rank 0 schedules, workers compute.

Rank 0 keeps the task graph, hands the ready task that heads the costliest chain of predicted work to
the next idle worker (critical path first; ORDERS), records completions in the journal and the per-task trace,
and prints progress. Its cost per completion does not grow with the graph or the number of ranks
(dependency counters, a ready heap, a queue of idle workers), and the completions of up to
COMMIT_INTERVAL share one journal write and one fsync (group commit, journal.py), made before any task
that depends on one of them is handed out. It never spins: MPICH's blocking receive busy-polls a core,
so every wait here is an Iprobe with a short, growing sleep (twinkles_hpc.mpiwait). With one rank the
same graph runs serially on rank 0.

Stopping: SIGTERM or SIGUSR1 on any rank sets a flag, which reaches the whole job. A worker checks it (and
a DRAIN message from rank 0) between chunks of its task, checkpoints and reports; a worker signalled
while its task cannot stop, or while it waits for work, reports the signal to rank 0 as soon as the task
is done or at once, and answers any task still sent to it by handing it back unrun. Rank 0 then stops
handing out work, tells the busy workers to checkpoint, waits for them, and the run ends with status
"interrupted" (exit code 75, resubmit). The command line installs the handlers before it sets the run up,
so a signal during the set-up stops the run before its first task.

Failure: a worker's exception is sent to rank 0, which prints rank, task and message, records the
traceback in RUNDIR/failures.log and aborts the whole job: never a hang.
"""
from __future__ import annotations

import heapq
import json
import os
import signal
import socket
import sys
import time
import traceback
from collections import deque

from twinkles_hpc import steptimer
from twinkles_hpc.errors import Interrupted
from twinkles_hpc.mpiwait import Backoff, poll_recv
from twinkles_hpc.parallel.journal import file_checksums
from twinkles_hpc.rundir import layout
from twinkles_hpc.rundir.task import Task  # noqa: F401  (the engine runs Tasks)

TAG_REQ, TAG_TASK, TAG_STOP, TAG_DONE, TAG_FAIL, TAG_CKPT, TAG_DRAIN, TAG_SIGNAL, TAG_BYE = range(11, 20)

#: Longest wait (s) of a done line in memory before rank 0 commits the journal (one write and one fsync for
#: every line staged), unless a task that depends on it is handed out first, which commits at once: at most
#: 1 / COMMIT_INTERVAL fsyncs a second for independent tasks, and a crash loses that much work at most.
COMMIT_INTERVAL = 0.01
#: Most messages rank 0 takes in at a time before it looks at the clock, the commit and the ready tasks again.
GROUP_MAX = 512
#: Seconds a failing rank 0 waits after printing the failure before MPI_Abort (see Engine._fail).
ABORT_GRACE_S = 1.0


class StopFlag:
    """Set by SIGTERM/SIGUSR1 (Slurm's warning before the time limit)."""

    def __init__(self):
        self.signum = None

    def __bool__(self):
        return self.signum is not None

    def install(self, signals=(signal.SIGTERM, signal.SIGUSR1)):
        def handler(signum, frame):
            self.signum = signum
        for s in signals:
            signal.signal(s, handler)
        return self


#: glibc mallopt parameters: M_TRIM_THRESHOLD, M_MMAP_MAX.
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


def _set_heap_policy(libc):
    """Have glibc serve large allocations from the heap, not from fresh memory maps, and keep freed memory
    until the next trim (mallopt M_MMAP_MAX = 0, M_TRIM_THRESHOLD 2 GiB). A task's full-sensor temporaries
    (65-130 MB each, above glibc's 32 MiB ceiling for heap allocations) then reuse the pages of those freed
    before them, where each would otherwise be mapped, faulted in and zeroed by the kernel page by page
    (docs/benchmarks.md: a difference image's system time 0.55-0.76 -> 0.31-0.36 s per visit). The price is
    a task's peak RSS, which freed memory that no later allocation fits now counts in (the demo: one coadd
    task 245 -> 293 MiB above its start, the medians unchanged). TWINKLES_HPC_HEAP=release in the
    environment keeps glibc's own policy (docs/design.md, "Memory and bytes")."""
    if os.environ.get("TWINKLES_HPC_HEAP", "reuse") != "release":
        libc.mallopt(_M_MMAP_MAX, 0)
        libc.mallopt(_M_TRIM_THRESHOLD, 2 ** 31 - 1)


def _release_freed_memory():
    """Hand the heap's free pages back to the kernel (glibc malloc_trim): without it a long-lived worker
    keeps the high-water mark of its largest task as resident memory, and every later task's peak RSS
    would include it. The first call, before a process's first task, also sets _set_heap_policy."""
    global _malloc_trim
    if _malloc_trim is None:
        try:
            import ctypes
            libc = ctypes.CDLL("libc.so.6")
            _malloc_trim = libc.malloc_trim
            _set_heap_policy(libc)
        except (OSError, AttributeError):
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)


_malloc_trim = None


def _peak_rss_reset():
    """Reset the kernel's peak-RSS counter (VmHWM) so each task reports its own peak."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _rss_mb(key="VmHWM"):
    """VmHWM (peak since the last reset) or VmRSS (now) of this process, MiB."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_task(execute, task, rank, should_stop):
    """Run one task; returns (outputs, trace record). Raises Interrupted or the task's exception."""
    _release_freed_memory()
    _peak_rss_reset()
    start_rss = _rss_mb("VmRSS")
    start, cpu0 = time.time(), time.process_time()
    with steptimer.recording() as steps:
        outputs = execute(task, should_stop) or {}
    end, cpu = time.time(), time.process_time() - cpu0
    rec = {"task": task.id, "kind": task.kind, "rank": rank, "host": socket.gethostname(),
           "pid": os.getpid(), "start": round(start, 4), "end": round(end, 4), "cpu": round(cpu, 4),
           "bytes": int(sum(max(v, 0) for v in outputs.values())), "peak_rss_mb": round(_rss_mb(), 1),
           "start_rss_mb": round(start_rss, 1)}
    if steps:
        rec["steps"] = steptimer.rounded(steps)
    return outputs, rec


class Progress:
    """Rank 0's progress line: tasks done, rate, ETA from the predicted cost still to do."""

    def __init__(self, total_cost, n_tasks, n_done, out=sys.stdout, interval=2.0):
        self.total, self.n_tasks, self.n_done0 = total_cost, n_tasks, n_done
        self.done_cost, self.n_done = 0.0, n_done
        self.t0 = self.last = time.time()
        self.out, self.interval = out, interval

    def update(self, cost, force=False):
        self.done_cost += cost
        self.n_done += 1
        now = time.time()
        if not force and now - self.last < self.interval and self.n_done < self.n_tasks:
            return
        self.last = now
        dt = max(now - self.t0, 1e-9)
        rate = (self.n_done - self.n_done0) / dt
        frac = self.done_cost / self.total if self.total else 1.0
        eta = dt * (1 - frac) / frac if frac > 0 else float("nan")
        print(f"[twinkles-hpc] {self.n_done}/{self.n_tasks} tasks  {100 * frac:5.1f}%  "
              f"{rate:.2f} tasks/s  elapsed {_hms(dt)}  ETA {_hms(eta)}", file=self.out, flush=True)


def _hms(s):
    if s != s or s == float("inf"):
        return "?"
    s = int(round(s))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def chain_costs(tasks):
    """{task id: its predicted cost plus that of the costliest chain of tasks that depend on it}: how much
    predicted work must follow, one task after another, once it starts (the "bottom level" of list
    scheduling). Ordering ready tasks by it starts first what holds the most of the run back."""
    by_id = {t.id: t for t in tasks}
    dependants = {}
    for t in tasks:
        for d in set(t.deps):
            dependants.setdefault(d, []).append(t.id)
    out, stack, open_ = {}, [], set()
    for root in by_id:                      # iterative post-order: graphs of 10^5 tasks, no recursion
        if root in out:
            continue
        stack.append((root, False))
        while stack:
            tid, expanded = stack.pop()
            if tid in out:
                continue
            users = dependants.get(tid, ())
            if expanded:
                out[tid] = by_id[tid].cost + max((out[u] for u in users), default=0.0)
                open_.discard(tid)
                continue
            if tid in open_:                # reached again from its own dependants
                raise ValueError(f"the task graph has a cycle through {tid}: it cannot progress")
            open_.add(tid)
            stack.append((tid, True))
            stack.extend((u, False) for u in users if u not in out)
    return out


#: Orders of the ready tasks: "critical" (the default: the largest chain_costs first, the task behind which
#: the most predicted work waits), "longest" (the largest predicted cost first, longest-processing-time),
#: and "fifo" (the first ready first; scaling studies only).
ORDERS = ("critical", "longest", "fifo")
DEFAULT_ORDER = "critical"


def priorities(tasks, order):
    """{task id: the key the ready heap orders by, largest first}: chain_costs for "critical", the predicted
    cost for "longest" (the engine's Scheduler and the scaling model's both use it)."""
    return chain_costs(tasks) if order == "critical" else {t.id: t.cost for t in tasks}


class Scheduler:
    """The task graph's bookkeeping: what is pending, ready (a max-heap on the order's key: chain_costs or
    the cost) and done.

    Each pending task counts the dependencies it still waits for, and each task lists the pending tasks that
    wait for it: a completion costs the number of its dependants plus a heap push per task made ready,
    whatever the size of the graph."""

    def __init__(self, tasks, done_ids, order=DEFAULT_ORDER):
        if order not in ORDERS[:2]:
            raise ValueError(f"order must be one of {ORDERS[:2]}, not {order!r}")
        self.tasks = {t.id: t for t in tasks}
        self.order = order
        self.key = priorities(tasks, order)
        self.done = set(done_ids) & set(self.tasks)
        self.pending = {tid for tid in self.tasks if tid not in self.done}
        self.n_waiting = {}         # pending task id -> how many of its dependencies are not done
        self.dependants = {}        # task id -> the pending tasks that wait for it
        for tid in self.tasks:
            if tid in self.pending:
                waits = {d for d in self.tasks[tid].deps if d not in self.done}
                self.n_waiting[tid] = len(waits)
                for d in waits:
                    self.dependants.setdefault(d, []).append(tid)
        self.ready = [(-self.key[tid], tid) for tid in self.pending if not self.n_waiting[tid]]
        heapq.heapify(self.ready)

    def _push(self, tid):
        heapq.heappush(self.ready, (-self.key[tid], tid))

    def peek(self):
        """The id of the task `pop` would return."""
        return self.ready[0][1]

    def pop(self):
        return self.tasks[heapq.heappop(self.ready)[1]]

    def requeue(self, tid):
        self._push(tid)

    def complete(self, tid):
        """Record `tid` done; returns the ids of the tasks that it made ready."""
        self.done.add(tid)
        self.pending.discard(tid)
        self.n_waiting.pop(tid, None)
        now_ready = []
        for other in self.dependants.pop(tid, ()):
            self.n_waiting[other] -= 1
            if not self.n_waiting[other]:
                self._push(other)
                now_ready.append(other)
        return now_ready

    def remaining_cost(self):
        return sum(self.tasks[t].cost for t in self.pending)


class Engine:
    """Runs a list of Tasks over `comm` with `execute(task, should_stop) -> {relpath: bytes}`."""

    def __init__(self, comm, rundir, execute, journal, *, out=sys.stdout, progress_interval=2.0, stop=None,
                 order=DEFAULT_ORDER):
        """stop: a StopFlag already installed (the command line installs one before the set-up); None: one
        is installed here. order: of the ready tasks (ORDERS; "fifo" is for the scaling model only)."""
        self.comm, self.rundir, self.execute, self.journal = comm, rundir, execute, journal
        self.order = order
        self.out, self.progress_interval = out, progress_interval
        self.stop = stop if stop is not None else StopFlag().install()
        self.trace_path = os.path.join(rundir, layout.TRACE)
        self._trace = []            # trace lines of the completions staged in the journal
        self._gated = set()         # ready tasks that depend on a completion whose done line is only staged
        self._commit_due = 0.0      # time.monotonic() by which the staged lines are committed

    # -- rank 0 -------------------------------------------------------------------------------
    def _record(self, tid, outputs, rec, checksums):
        """Stage a completion: its done line and its trace record, written by the next _commit."""
        self.journal.stage("done", task=tid, outputs=outputs, checksums=checksums)
        self._trace.append(json.dumps(rec, sort_keys=True) + "\n")

    def _commit(self):
        """Make the staged journal lines durable (one write, one fsync), then append their trace records:
        the tasks that waited for those done lines may be handed out."""
        self.journal.commit()
        if self._trace:
            with open(self.trace_path, "a", encoding="utf-8") as fh:
                fh.write("".join(self._trace))
            self._trace.clear()
        self._gated.clear()

    def _fail(self, rank, tid, message, tb):
        where = f"traceback in {os.path.join(self.rundir, layout.FAILURES)}"
        try:
            self.journal.stage("failed", task=tid, rank=rank, message=message)
            self._commit()          # with the completions staged before it
            with open(os.path.join(self.rundir, layout.FAILURES), "a", encoding="utf-8") as fh:
                fh.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S')} rank {rank} task {tid}\n{tb}\n")
        except OSError as e:            # e.g. the disk is full: the failure is still reported, with its traceback
            where = f"failures.log not written: {e.strerror}"
            print(tb, file=sys.stderr, flush=True)
        print(f"twinkles-hpc: rank {rank} failed in task {tid}: {message} ({where})", file=sys.stderr, flush=True)
        if self.comm.size > 1:
            # mpiexec forwards a rank's output through its process manager; Abort tears that down at once and
            # on a loaded node dropped this line still in transit (1 in 4 tries): give it a moment
            time.sleep(ABORT_GRACE_S)
            self.comm.Abort(1)
        raise SystemExit(1)

    def run(self, tasks, done_ids):
        """Collective over comm. Returns 'complete' or 'interrupted' on every rank."""
        if self.comm.rank != 0:
            self._worker()
            return self.comm.bcast(None, root=0)
        sched = Scheduler(tasks, done_ids, self.order)
        prog = Progress(sched.remaining_cost(), len(sched.tasks), len(sched.done), self.out,
                        self.progress_interval)
        self.journal.append("start", ranks=self.comm.size, pending=len(sched.pending), order=self.order)
        cpu0, wall0 = time.process_time(), time.time()
        status = self._serial(sched, prog) if self.comm.size == 1 else self._schedule(sched, prog)
        self.scheduler_cpu = (time.process_time() - cpu0, time.time() - wall0)
        self.journal.append("end", status=status, rank0_cpu_s=round(self.scheduler_cpu[0], 3),
                            wall_s=round(self.scheduler_cpu[1], 3))
        return self.comm.bcast(status, root=0)

    def _serial(self, sched, prog):
        while sched.ready:
            if self.stop:
                return "interrupted"
            task = sched.pop()
            try:
                outputs, rec = run_task(self.execute, task, 0, lambda: bool(self.stop))
            except Interrupted:
                self.journal.append("checkpointed", task=task.id, rank=0)
                return "interrupted"
            except Exception as exc:
                self._fail(0, task.id, f"{type(exc).__name__}: {exc}", traceback.format_exc())
            self._record(task.id, outputs, rec, file_checksums(self.rundir, outputs))
            self._commit()
            sched.complete(task.id)
            prog.update(task.cost, force=not sched.ready)
        if sched.pending:
            raise RuntimeError(f"task graph cannot progress: {len(sched.pending)} tasks wait on dependencies "
                               "that are not in the graph")
        return "complete"

    def _schedule(self, sched, prog):
        """Rank 0's loop. Each pass commits the journal if its oldest staged line is COMMIT_INTERVAL old, hands
        out ready tasks, then takes in every message that has arrived (up to GROUP_MAX). A completion's worker
        gets its next task at once unless that task depends on a completion not yet committed, which commits
        first: a child's done line can never reach the journal before its parent's, and the completions of
        a COMMIT_INTERVAL share one fsync."""
        comm = self.comm
        from mpi4py import MPI
        idle, busy = deque(), {}
        asked = set()               # workers whose first request was received
        draining = False
        st = MPI.Status()
        backoff = Backoff()
        gated = self._gated

        def dispatch(may_commit):
            # largest cost first; a gated task at the top waits for the commit (made here if may_commit)
            while idle and sched.ready and not draining:
                if sched.peek() in gated:
                    if not may_commit:
                        return
                    self._commit()
                r = idle.popleft()
                task = sched.pop()
                busy[r] = task
                comm.send(task, dest=r, tag=TAG_TASK)

        while True:
            if self.stop and not draining:
                draining = True
                print(f"[twinkles-hpc] signal {self.stop.signum}: checkpointing {len(busy)} busy "
                      f"worker(s), then exiting for resubmission", file=self.out, flush=True)
                for r in busy:
                    comm.send(None, dest=r, tag=TAG_DRAIN)
            if self.journal.staged and (not busy or time.monotonic() >= self._commit_due):
                self._commit()
            dispatch(True)
            if not busy and (draining or not sched.pending):
                break
            if not busy and not sched.ready and len(idle) == comm.size - 1:
                raise RuntimeError(f"task graph cannot progress: {len(sched.pending)} tasks wait "
                                   "on dependencies that are not in the graph")
            n = 0
            while n < GROUP_MAX and comm.Iprobe(source=MPI.ANY_SOURCE, tag=MPI.ANY_TAG, status=st):
                n += 1
                src, tag = st.Get_source(), st.Get_tag()
                msg = comm.recv(source=src, tag=tag)
                if tag == TAG_REQ:
                    asked.add(src)
                    idle.append(src)
                    dispatch(False)
                elif tag == TAG_DONE:
                    tid, outputs, rec, checksums = msg
                    task = busy.pop(src)
                    gated.update(sched.complete(tid))
                    idle.append(src)
                    dispatch(False)     # the worker's next task before this completion's bookkeeping
                    if not self.journal.staged:
                        self._commit_due = time.monotonic() + COMMIT_INTERVAL
                    self._record(tid, outputs, rec, checksums)
                    prog.update(task.cost, force=not sched.pending)
                elif tag == TAG_CKPT:
                    task = busy.pop(src)
                    self.journal.stage("checkpointed", task=task.id, rank=src)
                    self._commit()
                    sched.requeue(task.id)
                    idle.append(src)
                    draining = True     # a worker was signalled: the whole job winds down
                    if not self.stop:
                        self.stop.signum = msg
                        for r in busy:
                            comm.send(None, dest=r, tag=TAG_DRAIN)
                elif tag == TAG_SIGNAL:      # a worker was signalled outside a task that can stop
                    if not self.stop:
                        self.stop.signum = msg
                elif tag == TAG_FAIL:
                    tid, message, tb = msg
                    self._fail(src, tid, message, tb)
            if n:
                backoff.reset()
            else:
                backoff.sleep()
        self._commit()
        # every worker's first request is received before it is told to stop, even when there was nothing
        # to do, and its last message after: none is left unmatched when the communicator is freed
        for r in range(1, comm.size):
            if r not in asked:
                poll_recv(comm, r, TAG_REQ)
            comm.send(None, dest=r, tag=TAG_STOP)
        # each worker's last message is BYE: a signal report that crossed the STOP is received before it
        for r in range(1, comm.size):
            while poll_recv(comm, r)[2] != TAG_BYE:
                pass
        return "interrupted" if draining and sched.pending else "complete"

    # -- workers ------------------------------------------------------------------------------
    def _worker(self):
        comm = self.comm
        drain = [False]
        reported = [False]          # this rank's own signal has been sent to rank 0

        def should_stop():
            if self.stop or drain[0]:
                return True
            if comm.Iprobe(source=0, tag=TAG_DRAIN):
                comm.recv(source=0, tag=TAG_DRAIN)
                drain[0] = True
            return drain[0]

        def report_signal():
            if self.stop and not reported[0]:
                comm.send(self.stop.signum, dest=0, tag=TAG_SIGNAL)
                reported[0] = True

        comm.send(None, dest=0, tag=TAG_REQ)
        while True:
            msg, _, tag = poll_recv(comm, 0, on_miss=report_signal)     # a signal while waiting: reported
            if tag == TAG_STOP:
                comm.send(None, dest=0, tag=TAG_BYE)
                return
            if tag == TAG_DRAIN:
                drain[0] = True
                continue
            task = msg
            if self.stop:               # signalled: the task goes back to rank 0 unrun
                report_signal()
                comm.send(self.stop.signum, dest=0, tag=TAG_CKPT)
                continue
            try:
                outputs, rec = run_task(self.execute, task, comm.rank, should_stop)
            except Interrupted:
                reported[0] = True      # rank 0 learns of the signal from the checkpoint
                comm.send(self.stop.signum or signal.SIGUSR1, dest=0, tag=TAG_CKPT)
                continue
            except Exception as exc:
                comm.send((task.id, f"{type(exc).__name__}: {exc}", traceback.format_exc()),
                          dest=0, tag=TAG_FAIL)
                while True:          # rank 0 aborts the job
                    time.sleep(1.0)
            comm.send((task.id, outputs, rec, file_checksums(self.rundir, outputs)), dest=0, tag=TAG_DONE)
            report_signal()
