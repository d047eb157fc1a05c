"""`twinkles-hpc bench startup`: what starting the application costs a process, per entry point.

On a shared file system every module a process imports is a round of metadata operations (a stat of
each directory on sys.path, an open of the .py and .pyc) that the file system serves one process at a
time: Twinkles' Level 2 at NERSC first ran at 2% batch efficiency because thousands of Python processes
imported from it. Each entry point runs in a fresh process, as a user or a batch job starts it:

- `help`: `twinkles-hpc --help`;
- `imsim`: `twinkles-hpc imsim CAT -o OUT.fits` on the imsim benchmark's full-sensor scene (bench imsim:
  2000 stars, 5000 bulge+disk galaxies) written as a PhoSim instance catalogue (bench/imsim.py,
  write_scene_catalog), the whole command;
- `run`: `mpiexec -n 2 twinkles-hpc run` of a small campaign with every stage on (RUN_TOML): rank 1, a
  worker, before its first task and at the first task of each stage; rank 0, the scheduler, over the run.

Figures: wall s (the whole command, best and median of --repeat), CPU s (user + system, median),
import s (`python -X importtime`: the summed time of the top-level imports, the interpreter's own
included), modules (sys.modules), files opened (audit events "open": sources, bytecode and data) and, where
`strace` is on PATH, the file-system system calls (open and stat families) of the whole command, which is
what a shared file system serves. The heavy packages the process loaded are named.
"""
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

from twinkles_hpc.bench import imsim as bench_imsim

#: Packages whose import costs a tenth of a second or more: named where a process loads them.
HEAVY = ("scipy.stats", "scipy.interpolate", "scipy.optimize", "scipy.ndimage", "scipy.fft", "scipy.special",
         "astropy.io.fits", "astropy.wcs", "astropy.cosmology", "h5py", "sqlalchemy", "matplotlib", "mpi4py.MPI")

#: The run entry point's campaign: a 1000 px sensor, 12 visits in g, r and i (bands in which a field this small
#: calibrates), every stage on. A minute on two cores; each stage's first task imports what any task of it does.
RUN_TOML = """
[run]
name = "startup"
seed = 20161
[cadence]
bands = "gri"
max_visits = 12
[sky]
radius = 0.08
star_density_scale = 4.0
[sensor]
nx = 1000
ny = 1000
""" + "".join(f"[{s}]\nenabled = true\n" for s in ("calexp", "coadd", "objects", "forced", "template", "diffim",
                                                  "associate", "lenses", "lensmodel", "lensphot", "diaforced",
                                                  "ingest"))

#: Run by the measured interpreter (`python -X importtime -c PROBE ARGS`): counts the files it opens and
#: marks, on stderr between the import-time lines, its exit and (TWINKLES_STARTUP_STAGES set) the start and
#: end of the first task of each stage. The CLI module comes first: it sets the one-thread BLAS environment
#: before numpy loads.
PROBE = r"""
import os, sys, time
_t0, _opened = time.perf_counter(), [0]
def _count(event, args):
    if event == "open":
        _opened[0] += 1
sys.addaudithook(_count)
def _mark(what):
    heavy = ",".join(m for m in HEAVY if m in sys.modules) or "-"
    sys.stderr.write(f"#startup {what} {time.perf_counter() - _t0:.6f} {_opened[0]} {len(sys.modules)} {heavy}\n")
    sys.stderr.flush()
HEAVY = %r
from twinkles_hpc.cli import main
if os.environ.get("TWINKLES_STARTUP_STAGES"):
    from twinkles_hpc.pipeline import registry
    _seen, _call = set(), registry.Executor.__call__
    def _traced(self, task, should_stop):
        first = task.kind not in _seen
        _seen.add(task.kind)
        if first:
            _mark("begin " + task.kind)
        try:
            return _call(self, task, should_stop)
        finally:
            if first:
                _mark("end " + task.kind)
    registry.Executor.__call__ = _traced
try:
    code = main(sys.argv[1:])
except SystemExit as e:
    code = e.code
_mark("exit")
sys.exit(code)
""" % (HEAVY,)

_IMPORT = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)")


def parse(stderr):
    """The marks and the import-time lines of a probed process's stderr: a list of phases, one per mark, each
    {"mark", "t", "opened", "modules", "heavy", "import_s", "imports"} with the top-level import time and the
    number of modules imported since the previous mark; a process killed after its last mark ends with a phase
    "killed" (its opened, modules and t None)."""
    phases, import_us, n = [], 0, 0
    for line in stderr.splitlines():
        m = _IMPORT.match(line)
        if m:
            n += 1
            if len(m.group(3)) == 1:            # top level: one blank before the name
                import_us += int(m.group(2))
        elif line.startswith("#startup "):
            words = line.split()
            mark = " ".join(words[1:-4])
            t, opened, modules, heavy = words[-4:]
            phases.append({"mark": mark, "t": float(t), "opened": int(opened), "modules": int(modules),
                           "heavy": [] if heavy == "-" else heavy.split(","), "import_s": import_us / 1e6,
                           "imports": n})
            import_us, n = 0, 0
    if n:                                       # killed before its next mark (MPI_Abort): the imports so far
        phases.append({"mark": "killed", "t": None, "opened": None, "modules": None, "heavy": [],
                       "import_s": import_us / 1e6, "imports": n})
    return phases


def _env():
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = "1"
    env.pop("TWINKLES_STARTUP_STAGES", None)
    return env


#: The console script's own lines (`twinkles-hpc ARGV` as installed by pip).
SCRIPT = "import sys; from twinkles_hpc.cli import main; sys.exit(main())"


def _probe_cmd(argv):
    return [sys.executable, "-X", "importtime", "-c", PROBE, *argv]


def _timed(cmd, env, timeout=600):
    """(CompletedProcess, wall s, CPU s of the child) of one command."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r, wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _check(r, argv):
    if r.returncode != 0:
        tail = (r.stderr.strip().splitlines() or ["no message"])[-1]
        raise RuntimeError(f"twinkles-hpc {' '.join(argv)} failed (exit code {r.returncode}): {tail}")


def fs_calls(argv, env):
    """File-system system calls (open and stat families, every process) of `twinkles-hpc ARGV` under
    `strace -f -c`, or None without strace (or where it cannot trace)."""
    strace = shutil.which("strace")
    if strace is None:
        return None
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "strace.txt")
        cmd = [strace, "-f", "-c", "-e", "trace=%file", "-o", out, sys.executable, "-c", SCRIPT, *argv]
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
        text = open(out).read() if os.path.exists(out) else ""
    m = re.search(r"^\s*100\.00\s+\S+\s+\S+\s+(\d+)", text, re.M)
    return int(m.group(1)) if r.returncode == 0 and m else None


def entry_point(argv, repeat, env):
    """Figures of the whole command `twinkles-hpc ARGV`: wall and CPU seconds of max(1, repeat) plain runs,
    then one run under -X importtime with the audit hook (PROBE) and one under strace."""
    walls, cpus = [], []
    for _ in range(max(1, repeat)):
        r, wall, cpu = _timed([sys.executable, "-c", SCRIPT, *argv], env)
        _check(r, argv)
        walls.append(wall)
        cpus.append(cpu)
    r, _, _ = _timed(_probe_cmd(argv), env)
    _check(r, argv)
    phases = parse(r.stderr)
    end = phases[-1]
    return {"wall_best_s": min(walls), "wall_median_s": float(np.median(walls)), "cpu_s": float(np.median(cpus)),
            "import_s": sum(p["import_s"] for p in phases), "modules": end["modules"], "opened": end["opened"],
            "heavy": end["heavy"], "fs_calls": fs_calls(argv, env)}


def _mpiexec():
    return shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or shutil.which("mpiexec")


def run_entry(workdir, env):
    """Rank 1's phases (before its first task, then each stage's first task) and rank 0's whole run of
    `mpiexec -n 2 twinkles-hpc run RUN_TOML`; (phases by rank, note) where note says why the run stopped."""
    mpiexec = _mpiexec()
    if mpiexec is None:
        return None, "not run: no mpiexec beside this Python or on PATH"
    cfg = os.path.join(workdir, "startup.toml")
    with open(cfg, "w") as fh:
        fh.write(RUN_TOML)
    # hydra (MPICH) names the rank PMI_RANK, Slurm SLURM_PROCID, Open MPI OMPI_COMM_WORLD_RANK
    rank = "${PMI_RANK:-${SLURM_PROCID:-${OMPI_COMM_WORLD_RANK:-0}}}"
    inner = " ".join(_shell(a) for a in _probe_cmd(["run", cfg, "-o", os.path.join(workdir, "run")]))
    cmd = [mpiexec, "-n", "2", "sh", "-c", f'exec {inner} 2> "{workdir}/rank{rank}.err"']
    r = subprocess.run(cmd, capture_output=True, text=True, env=dict(env, TWINKLES_STARTUP_STAGES="1"),
                       timeout=1800)
    out, said = {}, []
    for k in (0, 1):
        path = os.path.join(workdir, f"rank{k}.err")
        text = open(path).read() if os.path.exists(path) else ""
        out[k] = parse(text)
        said += [ln for ln in text.splitlines() if not ln.startswith(("import time:", "#startup "))]
    said = ([ln for ln in said if "twinkles-hpc" in ln and ("error" in ln or "failed" in ln)] or said
            or (r.stdout + r.stderr).strip().splitlines())
    note = "" if r.returncode == 0 else (f"the run ended with exit code {r.returncode} (figures up to there): "
                                         + (said[-1].strip() if said else "no message"))
    return out, note


def _shell(word):
    return "'" + word.replace("'", "'\"'\"'") + "'"


HEADER = (f"  {'':46} {'wall s':>7} {'median':>7} {'CPU s':>6} {'import s':>8} {'modules':>7} {'opened':>6} "
          f"{'fs calls':>8}")


def _row(label, e):
    fs = "-" if e.get("fs_calls") is None else str(e["fs_calls"])
    return (f"  {label:46} {e['wall_best_s']:7.2f} {e['wall_median_s']:7.2f} {e['cpu_s']:6.2f} {e['import_s']:8.2f} "
            f"{e['modules']:7d} {e['opened']:6d} {fs:>8}")


def _phase_rows(phases):
    """Rows of rank 1: before its first task (everything up to the first mark), each stage's first task, and
    the rest (later tasks, the end of the run) together."""
    rows, rest, last = [], [0.0, 0, 0], None
    for i, p in enumerate(phases):
        known = p["modules"] is not None
        if p["mark"].startswith("begin ") and not rows:
            rows.append(("before its first task", p["import_s"], p["modules"], p["opened"], p["heavy"]))
        elif p["mark"].startswith("end ") and i > 0:
            b = phases[i - 1]
            rows.append((f"first {p['mark'][4:]} task", p["import_s"], p["modules"] - b["modules"],
                         p["opened"] - b["opened"], [h for h in p["heavy"] if h not in b["heavy"]]))
        elif rows:
            rest[0] += p["import_s"]
            if known and last is not None:
                rest[1] += p["modules"] - last["modules"]
                rest[2] += p["opened"] - last["opened"]
        last = p if known else last
    if rows and rest[0] > 0:
        rows.append(("later tasks, end of the run", rest[0], rest[1], rest[2], []))
    return rows


def bench_startup(workdir, *, repeat=3, nx=4000, ny=4072, n_stars=2000, n_galaxies=5000, seed=1, run=True):
    """The figures of every entry point; returns the lines to print."""
    env = _env()
    cat, out = os.path.join(workdir, "scene.txt"), os.path.join(workdir, "eimage.fits")
    scene = bench_imsim.make_scene(nx=nx, ny=ny, n_stars=n_stars, n_galaxies=n_galaxies, seed=seed)
    n_lines = bench_imsim.write_scene_catalog(cat, scene, nx=nx, ny=ny)
    lines = [f"startup bench: each entry point a fresh process, {max(1, repeat)} runs (wall: best, median); "
             f"{os.cpu_count()} cores", HEADER]
    help_ = entry_point(["--help"], repeat, env)
    lines.append(_row("twinkles-hpc --help", help_))
    imsim = entry_point(["imsim", cat, "-o", out, "--nx", str(nx), "--ny", str(ny)], repeat, env)
    lines.append(_row(f"twinkles-hpc imsim ({n_lines} objects) -o OUT.fits", imsim))
    for name, e in (("--help", help_), ("imsim", imsim)):
        lines.append(f"  {name} loads: {', '.join(e['heavy']) or 'none of the heavy packages'}")
    lines.append(f"  imsim scene: {nx}x{ny} px, {n_stars} stars + {n_galaxies} bulge+disk galaxies "
                 f"(bench imsim's, seed {seed}); target 1.0 s for the whole command: "
                 f"{'met' if imsim['wall_best_s'] <= 1.0 else 'missed'} (best {imsim['wall_best_s']:.2f} s)")
    if not run:
        return lines
    phases, note = run_entry(workdir, env)
    lines.append("  mpiexec -n 2 twinkles-hpc run (bench startup's campaign, every stage on): rank 1, a worker")
    if phases is None:
        return lines + [f"  {note}"]
    lines.append(f"  {'':46} {'import s':>8} {'modules':>7} {'opened':>6}  heavy packages loaded")
    for label, imp, mods, opened, heavy in _phase_rows(phases[1]):
        lines.append(f"  {label:46} {imp:8.2f} {mods:7d} {opened:6d}  {', '.join(heavy) or '-'}")
    marked = [p for p in phases[0] if p["modules"] is not None]
    if marked:
        end = marked[-1]
        lines.append(f"  {'rank 0 (scheduler), the whole run':46} {sum(p['import_s'] for p in phases[0]):8.2f} "
                     f"{end['modules']:7d} {end['opened']:6d}  {', '.join(end['heavy']) or '-'}")
    if note:
        lines.append(f"  {note}")
    return lines


def run(args):
    """`twinkles-hpc bench startup`: returns the lines to print."""
    if args.rundir:
        os.makedirs(args.rundir, exist_ok=True)
    workdir = tempfile.mkdtemp(prefix="bench-startup-", dir=args.rundir or None)
    try:
        return bench_startup(workdir, repeat=args.repeat, nx=args.nx, ny=args.ny, n_stars=args.stars,
                             n_galaxies=args.galaxies, seed=args.seed)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
