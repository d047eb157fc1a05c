"""`twinkles-hpc bench engine`: rank 0 at scale. Synthetic tasks that only sleep go through the real scheduler,
journal and trace (`python -m twinkles_hpc.parallel.synthetic`, run as a child process: bench never imports
the scheduler), under mpiexec at each of --ranks (oversubscribed beyond the cores: the tasks sleep), then in
one process against simulated workers, which shows what rank 0 alone sustains: the ceiling, and 2048 workers
on one-second tasks, the target of at least 2,000 completions a second.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from twinkles_hpc.errors import InputError

#: The target: rank 0 sustains TARGET_RATE completions a second with TARGET_WORKERS workers on tasks of
#: TARGET_TASK_S seconds.
TARGET_WORKERS, TARGET_TASK_S, TARGET_RATE = 2048, 1.0, 2000
#: Tasks each simulated worker runs in the ceiling and target runs, and the fewest tasks of a ceiling run.
TASKS_PER_SIMULATED_WORKER, CEILING_TASKS = 4, 10000

HEADER = ("  {:>7} {:>8} {:>6} {:>8} {:>8} {:>9} {:>7} {:>11} {:>9} {:>9}"
          .format("ranks", "task ms", "tasks", "run /s", "steady/s", "commits/s", "lines/c", "CPU s/1000",
                  "gap p50ms", "gap p95ms"))


def _ints(option, text, lo):
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        values = []
    if not values or min(values) < lo:
        raise InputError("bench", option, f"comma-separated integers >= {lo}", text)
    return values


def _seconds(option, text):
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 0:
        raise InputError("bench", option, "comma-separated seconds >= 0", text)
    return values


def _mpiexec():
    """mpiexec beside this Python (the mpich wheel's) or on PATH, with Open MPI's flag for more ranks than
    cores; None if there is none."""
    exe = shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or shutil.which("mpiexec")
    if exe is None:
        return None
    version = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout
    return [exe, "--oversubscribe"] if "Open MPI" in version or "OpenRTE" in version else [exe]


def _synthetic(argv, prefix=()):
    """The run figures `python -m twinkles_hpc.parallel.synthetic ARGV` prints (under `prefix`, e.g. mpiexec),
    or the reason it failed."""
    cmd = [*prefix, sys.executable, "-m", "twinkles_hpc.parallel.synthetic", *argv]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        tail = (r.stderr.strip().splitlines() or ["no message"])[-1]
        return f"failed (exit code {r.returncode}): {tail}"
    return json.loads(r.stdout.strip().splitlines()[-1])


def _row(label, s):
    return ("  {:>7} {:>8.1f} {:>6} {:>8.0f} {:>8.0f} {:>9.1f} {:>7.1f} {:>11.4f} {:>9.2f} {:>9.2f}"
            .format(label, 1e3 * s["task_s"], s["tasks"], s["completions_per_s"], s["steady_per_s"],
                    s["commits_per_s"], s["lines_per_commit"], s["cpu_s_per_1000"], s["gap_median_ms"],
                    s["gap_p95_ms"]))


def _fsync_ms(directory, n=20):
    """Median time (ms) of appending one line to a file in `directory` and fsyncing it."""
    path = os.path.join(directory, "fsync-probe")
    times = []
    with open(path, "a") as fh:
        for _ in range(n):
            t0 = time.perf_counter()
            fh.write("{}\n")
            fh.flush()
            os.fsync(fh.fileno())
            times.append(time.perf_counter() - t0)
    os.remove(path)
    return 1e3 * sorted(times)[n // 2]


def bench_engine(workdir, ranks, durations, n_tasks, simulated):
    """The lines to print: the MPI runs at each rank count and duration, the simulated ceiling at each worker
    count, and the target run, with journals and traces under `workdir`."""
    durations_arg = ",".join(str(d) for d in durations)
    lines = [f"bench engine: synthetic tasks through the real scheduler, journal and trace; {n_tasks} tasks a run "
             "(fewer where a worker would sleep more than 1 s), durations spread +-50% around the mean",
             f"  journal and trace in {workdir} (one-line append + fsync: {_fsync_ms(workdir):.2f} ms); "
             f"{os.cpu_count()} cores",
             "  run /s: completions over the whole run; steady/s: over its middle half; commits: journal fsyncs; "
             "lines/c: lines per commit; CPU: rank 0's; gap: between a worker's tasks",
             f"under mpiexec (ranks = rank 0 + workers; oversubscribed beyond {os.cpu_count()} ranks):", HEADER]
    mpiexec = _mpiexec()
    if mpiexec is None:
        lines.append("  not run: no mpiexec beside this Python or on PATH")
    for n in ranks if mpiexec else ():
        out = _synthetic(["mpi", "--rundir", os.path.join(workdir, f"mpi{n}"), "--tasks", str(n_tasks),
                          "--durations", durations_arg], prefix=[*mpiexec, "-n", str(n)])
        lines += [f"  {n:>7} {out}"] if isinstance(out, str) else [_row(str(n), s) for s in out]
    lines += ["rank 0 alone against simulated workers that answer at once (the ceiling; no MPI, no worker "
              "processes):", HEADER.replace("  ranks", "workers")]
    for w in simulated:
        n = max(n_tasks, TASKS_PER_SIMULATED_WORKER * w, CEILING_TASKS)
        out = _synthetic(["simulate", "--rundir", os.path.join(workdir, f"ceiling{w}"), "--workers", str(w),
                          "--tasks", str(n), "--durations", "0"])
        lines += [f"  {w:>7} {out}"] if isinstance(out, str) else [_row(str(w), s) for s in out]
    w = TARGET_WORKERS
    lines += [f"the target: {w} simulated workers on {TARGET_TASK_S:g} s tasks (>= {TARGET_RATE} completions/s "
              "sustained):", HEADER.replace("  ranks", "workers")]
    out = _synthetic(["simulate", "--rundir", os.path.join(workdir, "target"), "--workers", str(w),
                      "--tasks", str(TASKS_PER_SIMULATED_WORKER * w), "--durations", str(TARGET_TASK_S),
                      "--max-sleep", str(TASKS_PER_SIMULATED_WORKER * TARGET_TASK_S)])
    if isinstance(out, str):
        return lines + [f"  {w:>7} {out}"]
    s = out[0]
    return lines + [_row(str(w), s),
                    f"  steady {s['steady_per_s']:.0f} completions/s of an ideal {w / TARGET_TASK_S:.0f} (workers / "
                    f"task duration): {'meets' if s['steady_per_s'] >= TARGET_RATE else 'misses'} the target; "
                    f"rank 0 busy {100 * s['rank0_cpu_s'] / s['wall_s']:.0f}% of the run"]


def run(args):
    """`twinkles-hpc bench engine`: returns the lines to print."""
    ranks = _ints("--ranks", args.ranks, 2)
    durations = _seconds("--durations", args.durations)
    simulated = _ints("--simulated-workers", args.simulated_workers, 1)
    if args.rundir:
        os.makedirs(args.rundir, exist_ok=True)
    workdir = tempfile.mkdtemp(prefix="bench-engine-", dir=args.rundir or None)
    try:
        return bench_engine(workdir, ranks, durations, args.tasks, simulated)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
