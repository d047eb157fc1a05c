"""The twinkles-hpc command line: `twinkles-hpc run|status|lightcurve|config|imsim|diffim|timedelay|bench ...`.

Only this module picks MPI.COMM_WORLD. Rank 0 parses and validates; a bad input is one line on stderr
and exit code 2 on every rank, before anything in a run directory is touched.
"""
from __future__ import annotations

import os

# One BLAS/OpenMP thread per process, set before numpy loads its BLAS: a rank is one core, and a
# multi-threaded BLAS can round differently with the thread count and the process's history, which
# would break the bit-identical guarantee (e.g. in the least-squares PSF fit of a calexp).
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse
import json
import sys
import time

from twinkles_hpc import __version__
from twinkles_hpc.errors import EXIT_BAD_INPUT, EXIT_RESUBMIT, InputError, RunDirError

EXIT_CODES_DOC = """exit codes:
  0   success
  1   a task failed (rank, task and message on stderr; traceback in RUNDIR/failures.log)
  2   bad input (config, OpSim file, instance catalogue, run directory in use or made by another config)
  75  stopped by SIGTERM/SIGUSR1 after checkpointing: run the same command again to resume"""


def _world():
    from mpi4py import MPI
    return MPI.COMM_WORLD


def _err(msg):
    print(f"twinkles-hpc: error: {msg}", file=sys.stderr, flush=True)


def _abort(comm, what):
    """An unexpected exception on one rank ends the whole job, never a hang."""
    import traceback
    traceback.print_exc()
    _err(f"rank {comm.rank} failed while {what}; aborting the job")
    if comm.size > 1:
        comm.Abort(1)
    raise


# -- run -------------------------------------------------------------------------------------------
def _threads_arg(text):
    """--threads: an integer 1..MAX_THREADS (argparse's own error, exit 2, otherwise)."""
    from twinkles_hpc.threads import MAX_THREADS
    try:
        n = int(text)
    except ValueError:
        n = 0
    if not 1 <= n <= MAX_THREADS:
        raise argparse.ArgumentTypeError(f"expected an integer from 1 to {MAX_THREADS}, got {text!r}")
    return n


def cmd_run(args):
    from twinkles_hpc import config as config_mod
    from twinkles_hpc import rundir as rd
    from twinkles_hpc.parallel.engine import Engine, StopFlag
    from twinkles_hpc.parallel.journal import Journal
    from twinkles_hpc.parallel.lock import RunLock
    from twinkles_hpc.pipeline import registry
    from twinkles_hpc.pipeline.context import RunContext
    from twinkles_hpc.pipeline.setup import plan
    from twinkles_hpc.pipeline.stage import GraphError, downstream
    from twinkles_hpc.store.atomic import remove_stale_temporaries
    from twinkles_hpc.threads import set_kernel_threads

    stop = getattr(args, "stop", None) or StopFlag().install()   # main() installs it first thing
    set_kernel_threads(getattr(args, "threads", 1))
    comm = _world()
    rundir = os.path.abspath(args.output)
    setup, lock = None, None
    if comm.rank == 0:
        try:
            cfg = config_mod.load(args.config)
            with open(args.config) as fh:
                text = fh.read()
            rd.check(cfg, rundir)
            alter = None
            if os.environ.get("TWINKLES_HPC_FAULT"):
                from twinkles_hpc.testing import faults
                alter = faults.alter_graph
            ctx, tasks = plan(cfg, rundir, alter=alter)
            visits = ctx.visits
            os.makedirs(rundir, exist_ok=True)
            lock = RunLock(rundir).acquire()
            rd.init(cfg, rundir, text, visits, ctx.skymap)
            n_tmp = remove_stale_temporaries(rundir)
            ctx.verify = args.verify
            ctx.log = lambda m: print(f"[twinkles-hpc] {m}", flush=True)
            registry.before_run(ctx)
            journal = Journal(rundir)
            done, lost = journal.completed()
            damaged = journal.damaged(done) if args.verify else []
            for tid, rel in damaged:
                print(f"[twinkles-hpc] verify: {rel} (task {tid}) does not match its checksum: redoing it",
                      flush=True)
            redo = downstream(tasks, [tid for tid, _ in damaged])
            if redo:
                print(f"[twinkles-hpc] verify: {len(redo)} task(s) redone (the damaged ones and all downstream "
                      "of them)", flush=True)
                done = {t: o for t, o in done.items() if t not in redo}
            tasks, deferred = _defer(args, cfg, tasks)
            setup = ("ok", cfg, visits, tasks, sorted(done), sorted({t.kind for t in deferred}))
            n_pending = len([t for t in tasks if t.id not in done])
            per_band = ", ".join(f"{b} {int((visits['band'] == b).sum())}" for b in cfg.cadence.bands)
            print(f"[twinkles-hpc] {cfg.run.name}: {len(visits)} visits ({per_band}), "
                  f"{cfg.sensor.nx}x{cfg.sensor.ny} pixels, {comm.size} rank(s) "
                  f"({max(comm.size - 1, 1)} worker(s)) -> {rundir}", flush=True)
            if deferred:
                left = len([t for t in deferred if t.id not in done])
                print(f"[twinkles-hpc] deferred: {left} task(s) of {', '.join(setup[5])} left for a later run "
                      "of the same command without --defer", flush=True)
            if done:
                print(f"[twinkles-hpc] resuming: {len(done)} task(s) done, {n_pending} to run"
                      + (f", {len(lost)} redone (outputs missing)" if lost else "")
                      + (f", {n_tmp} partial file(s) removed" if n_tmp else ""), flush=True)
        except (InputError, RunDirError) as exc:
            setup = ("error", str(exc), EXIT_BAD_INPUT)
        except GraphError as exc:
            setup = ("error", str(exc), 1)
        except Exception:
            _abort(comm, "setting up the run")
    setup = comm.bcast(setup, root=0)
    if setup[0] == "error":
        if comm.rank == 0:
            if lock is not None:
                lock.release()
            _err(setup[1])
        return setup[2]
    _, cfg, visits, tasks, done, deferred_kinds = setup
    def log(m):
        print(f"[twinkles-hpc] rank {comm.rank}: {m}", flush=True)
    ctx = RunContext(cfg, rundir, visits, log=log)
    execute = registry.Executor(ctx)
    if os.environ.get("TWINKLES_HPC_FAULT"):        # the restart tests' fault injection (docs/testing.md)
        from twinkles_hpc.testing import faults
        execute = faults.install(ctx, execute)
    engine = Engine(comm, rundir, execute, Journal(rundir), progress_interval=args.progress_interval, stop=stop)
    t0 = time.time()
    try:
        status = engine.run(tasks, done)
    except Exception:
        _abort(comm, "running tasks")
    if comm.rank == 0:
        if status == "complete":
            registry.finalise(ctx, skip=deferred_kinds)
            cpu, wall = engine.scheduler_cpu
            role = "scheduler" if comm.size > 1 else "rank 0"
            print(f"[twinkles-hpc] done in {time.time() - t0:.1f} s: {len(tasks)} tasks; {role} used "
                  f"{cpu:.2f} CPU-s over {wall:.1f} s; outputs in {rundir}"
                  + (f"; {', '.join(deferred_kinds)} deferred" if deferred_kinds else ""), flush=True)
        else:
            print(f"[twinkles-hpc] interrupted after {time.time() - t0:.1f} s; checkpoint written. "
                  f"Resubmit the same command to resume (exit code {EXIT_RESUBMIT}).", flush=True)
        lock.release()
    return 0 if status == "complete" else EXIT_RESUBMIT


def _defer(args, cfg, tasks):
    """(the tasks to run, the deferred ones): `--defer STAGE,...` leaves the tasks of those stages, and
    every task downstream of them, for a later run of the same command without it (the ingest in a job of
    its own, off the processing job's critical path: docs/scaling.md)."""
    from twinkles_hpc.pipeline import registry
    from twinkles_hpc.pipeline.stage import downstream
    names = [n.strip() for n in (getattr(args, "defer", None) or "").split(",") if n.strip()]
    if not names:
        return tasks, []
    enabled = [s.name for s in registry.enabled_stages(cfg)]
    bad = [n for n in names if n not in enabled]
    if bad:
        raise InputError("--defer", "stage", f"stages this run enables ({', '.join(enabled)})", bad[0])
    later = downstream(tasks, [t.id for t in tasks if t.kind in names])
    return [t for t in tasks if t.id not in later], [t for t in tasks if t.id in later]


# -- status ----------------------------------------------------------------------------------------
def run_status(rundir):
    """Summary of a run directory: tasks done per stage, checkpoints, lock, timing (rundir/status.py)."""
    from twinkles_hpc import rundir as rd
    from twinkles_hpc.parallel.journal import Journal
    from twinkles_hpc.parallel.lock import RunLock
    from twinkles_hpc.pipeline.setup import plan
    from twinkles_hpc.rundir.status import run_status as status

    cfg = rd.load_config(rundir)
    ctx, tasks = plan(cfg, rundir)
    j = Journal(rundir)
    done, lost = j.completed()
    return status(rundir, cfg, ctx.visits, tasks, j.events(), done, lost, RunLock.is_locked(rundir))


def cmd_status(args):
    from twinkles_hpc.rundir.status import format_status
    st = run_status(os.path.abspath(args.rundir))
    print(json.dumps(st, indent=1) if args.json else format_status(st))
    return 0


# -- lightcurve ------------------------------------------------------------------------------------
LIGHTCURVE_FORMATS = {"ecsv": "ascii.ecsv", "csv": "ascii.csv", "ascii": "ascii.fixed_width_two_line"}


def _query(fn, source, *a, **kw):
    """fn(source, ...) on a catalogue database; a database that fails mid-query (damaged, gone) is bad input."""
    import sqlalchemy as sa
    try:
        return fn(source, *a, **kw)
    except sa.exc.DBAPIError as err:
        raise InputError(f"database {source}", "query", "an intact catalogue database", str(err.orig)) from None


def cmd_lightcurve(args):
    from twinkles_hpc.store.lightcurve import dia_lightcurve, lensed_lightcurve, lightcurve
    if args.rundir is None and args.db is None:
        raise InputError("lightcurve", "RUNDIR", "a run directory or --db URL")
    for opt_name in ("object", "truth_id", "dia_object", "lensed_image"):
        v = getattr(args, opt_name)
        if v is not None and not -2 ** 63 <= v < 2 ** 63:
            raise InputError("lightcurve", "--" + opt_name.replace("_", "-"), "a 64-bit integer id", v)
    if args.output and not os.path.isdir(os.path.dirname(os.path.abspath(args.output))):
        raise InputError(args.output, "-o", "a file in an existing directory", "no such directory")
    if args.lensed_image is not None:
        if args.object is not None or args.truth_id is not None or args.dia_object is not None:
            raise InputError("lightcurve", "--lensed-image", "no --object, --truth-id or --dia-object with it")
        lc = _query(lensed_lightcurve, args.db or args.rundir, args.lensed_image, args.band)
        time, cols = "midPointTai", ("midPointTai", "filterName", "ccdVisitId", "psFlux", "psFluxErr", "truthFlux",
                                     "psMag", "psMag_Sigma", "truthMag", "diffFlux", "diffFluxErr", "templateFlux",
                                     "galaxyFlux", "flags")
    elif args.dia_object is not None:
        if args.object is not None or args.truth_id is not None:
            raise InputError("lightcurve", "--dia-object", "no --object or --truth-id with it")
        lc = _query(dia_lightcurve, args.db or args.rundir, args.dia_object, args.band)
        time, cols = "midPointTai", ("midPointTai", "filterName", "ccdVisitId", "psFlux", "psFluxErr", "truthFlux",
                                     "totFlux", "totFluxErr", "truthMag", "flags")
    else:
        if args.object is None and args.truth_id is None:
            raise InputError("lightcurve", "--object", "an objectId (or --truth-id ID, --dia-object ID or "
                             "--lensed-image ID)")
        lc = _query(lightcurve, args.db or args.rundir, args.object, args.band, truth_id=args.truth_id)
        time, cols = "expMidpt", ("expMidpt", "filterName", "ccdVisitId", "psFlux", "psFlux_Sigma", "truthFlux",
                                  "psMag", "psMag_Sigma", "truthMag", "flags")
    out = lc[[c for c in cols if c in lc.colnames]]
    for c in out.colnames:
        if "Flux" in c or "Mag" in c:
            out[c].info.format = ".4f" if "Mag" in c else ".6g"
    out[time].info.format = ".6f"
    fmt = LIGHTCURVE_FORMATS[args.format]
    if args.output:
        try:
            out.write(args.output, format=fmt, overwrite=True)
        except OSError as exc:
            raise InputError(args.output, "-o", "a writable file", exc.strerror or str(exc)) from None
    else:
        out.write(sys.stdout, format=fmt)
    return 0


# -- config ----------------------------------------------------------------------------------------
def cmd_config(args):
    from twinkles_hpc import config as config_mod
    if args.defaults:
        print(config_mod.defaults_toml())
        return 0
    if args.check:
        cfg = config_mod.load(args.check)
        print(f"{args.check}: ok")
        print(json.dumps(cfg.to_dict(), indent=1))
        return 0
    _err("config: give --defaults or --check CONFIG")
    return EXIT_BAD_INPUT


# -- imsim -----------------------------------------------------------------------------------------
def cmd_imsim(args):
    """Numeric options arrive as text: a bad one is a one-line InputError naming it (instcat_render.OPTION_LIMITS)."""
    from twinkles_hpc.imsim.instcat_render import check_option, render_instance_catalog
    opts = {name: None if getattr(args, name) is None else check_option(name, getattr(args, name))
            for name in ("nx", "ny", "seed", "sky_mag", "exptime", "fwhm")}
    info = render_instance_catalog(args.instcat, args.output, noise=not args.no_noise, **opts)
    print(f"[twinkles-hpc] {args.instcat}: {info['n_objects']} objects ({info['n_on_sensor']} on the "
          f"sensor), band {info['band']}, visit {info['visit_id']} -> {args.output} "
          f"in {info['seconds']:.2f} s")
    return 0


# -- diffim ----------------------------------------------------------------------------------------
def cmd_diffim(args):
    """PSF-matched difference of two FITS images (twinkles_hpc/timedomain/fitsdiff.py, docs/diffim.md)."""
    from twinkles_hpc.timedomain import fitsdiff
    cfg = fitsdiff.make_config(args.kernel_size, args.spatial_order, args.direction)
    s = fitsdiff.difference(args.science, args.template, args.output, config=cfg,
                            auto_order=args.spatial_order is None, overwrite=args.overwrite, min_snr=args.min_snr,
                            isolation=args.isolation)
    for line in s["warnings"]:
        print(f"twinkles-hpc: warning: {line}", file=sys.stderr, flush=True)
    print(f"[twinkles-hpc] {args.science} - {args.template}: convolved {s['direction']}, {s['n_used']} of "
          f"{s['n_candidates']} kernel candidates used, spatial order {s['spatial_order']}, chi2/dof "
          f"{s['chi2_dof']:.3f}, kernel sum {s['kernel_sum']:.4f}, FWHM science {s['fwhm_science']:.2f} px, "
          f"template {s['fwhm_template']:.2f} px -> {args.output} in {s['seconds']['total']:.2f} s")
    return 0


# -- timedelay -------------------------------------------------------------------------------------
def cmd_timedelay(args):
    """Time delays of each image relative to A from light-curve files (timedomain/timedelay.py,
    docs/timedelay.md). Every file is read and checked before any is measured."""
    from twinkles_hpc.timedomain import timedelay as td
    given = {k: getattr(args, k) for k in ("max_delay", "trend_order", "max_relative_error", "min_delay")}
    cfg = td.DelayConfig(**{k: v for k, v in given.items() if v is not None})
    if (not cfg.max_delay > 0.0 or cfg.trend_order < 0 or not cfg.max_relative_error >= 0.0
            or not 0.0 <= cfg.min_delay < cfg.max_delay):
        raise InputError("timedelay", "--max-delay/--trend-order/--max-relative-error/--min-delay",
                         "a positive range, a trend order >= 0, a relative error >= 0 and a smallest delay "
                         ">= 0 inside the range")
    if len(args.files) == 1 and os.path.isdir(args.files[0]):
        from twinkles_hpc.timedomain.lensphot import run_light_curves
        rundir = args.files[0]
        systems = [(rundir, c, {"lensSystemId": sid, "images": ids}) for sid, c, ids in run_light_curves(rundir)]
        if not systems:
            print(f"{rundir}: no scene model with two or more images", file=sys.stderr, flush=True)
    else:
        systems = [(path, td.read_lightcurves(path), {}) for path in args.files]
    out = []
    for path, c, extra in systems:
        est = td.measure_delays(c, args.estimator, cfg)
        out.append({"file": path, **extra,
                    "delays": {x: {"delay": None if e.delay is None else round(e.delay, 3),
                                   "error": None if e.error is None else round(e.error, 3)} for x, e in est.items()}})
        if not args.json:
            name = f"{path} system {extra['lensSystemId']}" if extra else path
            for x, e in est.items():
                what = f"{e.delay:8.2f} +/- {e.error:.2f} d" if e.delay is not None else f"no estimate ({e.reason})"
                print(f"{name}: {x} - A: {what} [{args.estimator}]", flush=True)
    if args.json:
        print(json.dumps(out, indent=1))
    return 0


# -- bench -----------------------------------------------------------------------------------------
#: Smallest value of each numeric `bench` option (the benchmarks' own sizes are far above).
BENCH_MINIMA = {"nx": 64, "ny": 64, "stars": 1, "galaxies": 0, "repeat": 1, "seed": 0, "systems": 1,
                "pycs3_systems": 0, "tasks": 1, "visits_per_call": 1, "queries": 1, "batch_size": 1}


def cmd_bench(args):
    from twinkles_hpc import bench
    for name, lo in BENCH_MINIMA.items():
        v = getattr(args, name, None)
        if v is not None and v < lo:
            raise InputError("bench", "--" + name.replace("_", "-"), f"an integer >= {lo}", v)
    return bench.main(args)


# -- validate --------------------------------------------------------------------------------------
def cmd_validate(args):
    """Metrics of a run against its truth as JSON on stdout; exit 1 naming each failed threshold."""
    from twinkles_hpc.validation import validate_run
    if args.json and not os.path.isdir(os.path.dirname(os.path.abspath(args.json))):
        raise InputError(args.json, "--json", "a file in an existing directory", "no such directory")
    report, failed = validate_run(args.rundir, args.config, args.db)
    text = json.dumps(report, indent=1)
    print(validation_summary(report) if args.summary else text)
    if args.json:
        with open(args.json, "w") as fh:
            fh.write(text + "\n")
    for c in failed:
        print(f"twinkles-hpc validate: FAIL {c['metric']} = {c['value']:.4g} (threshold {c['op']} "
              f"{c['threshold']:g})", file=sys.stderr)
    return 1 if failed else 0


def validation_summary(report):
    """One line per check: PASS / FAIL / n/a, the metric, its value and threshold (or why it is null)."""
    lines = [f"validation of {report['rundir']}: {'PASSED' if report['passed'] else 'FAILED'}"]
    for c in report["checks"]:
        if c["ok"] is None:
            lines.append(f"  n/a   {c['metric']:<34} {c.get('reason') or ''}")
        else:
            lines.append(f"  {'PASS' if c['ok'] else 'FAIL':<5} {c['metric']:<34} {c['value']:10.4g}  "
                         f"({c['op']} {c['threshold']:g})")
    td = report.get("time_delays") or {}
    if td.get("n_pairs"):
        got = ("" if td.get("f") is None else
               f": f {td['f']:.2f}" + "".join(f", {k} {td[k]:.3g}" for k in ("chi2", "P", "A", "catastrophic")
                                               if td.get(k) is not None))
        lines.append(f"  info  time delays (drw) of {td['n_pairs']} image pairs, {td['n_pairs_with_truth']} with a "
                     f"true delay{got}; {td['n_estimates_without_truth']} estimates for pairs without one")
    return "\n".join(lines)


# -- export ----------------------------------------------------------------------------------------
def cmd_export(args):
    """The run's catalogue database as Parquet (store/parquet.py)."""
    import time

    from twinkles_hpc.store import schema
    from twinkles_hpc.store.lightcurve import open_database
    from twinkles_hpc.store.parquet import export
    if args.rundir is None and args.db is None:
        raise InputError("export", "RUNDIR", "a run directory or --db URL")
    out = args.output or (os.path.join(args.rundir, "parquet") if args.rundir else None)
    if out is None:
        raise InputError("export", "-o", "an output folder with --db")
    if os.path.exists(out) and not os.path.isdir(out):
        raise InputError(out, "-o", "a folder", "a file")
    if not os.path.isdir(os.path.dirname(os.path.abspath(out))):
        raise InputError(out, "-o", "a folder in an existing directory", "no such directory")
    tables = [t.strip() for t in args.tables.split(",") if t.strip()] if args.tables else None
    if tables and (bad := [t for t in tables if t not in schema.metadata.tables]):
        raise InputError("export", "--tables", f"names of {', '.join(schema.metadata.tables)}", bad[0])
    source = args.db or args.rundir
    engine = _query(open_database, args.rundir, args.db)
    try:
        t0 = time.perf_counter()
        got = _query(lambda _: export(engine, out, tables), source)
    finally:
        engine.dispose()
    for name, r in got.items():
        print(f"[twinkles-hpc] {name}: {r['rows']} rows in {len(r['files'])} file(s)", flush=True)
    print(f"[twinkles-hpc] export -> {out} in {time.perf_counter() - t0:.1f} s", flush=True)
    return 0


# -- report ----------------------------------------------------------------------------------------
def cmd_report(args):
    """A static HTML report of a run directory (docs/report.md)."""
    from twinkles_hpc.report import ReportLimits, write_report
    if args.validation and not os.path.isfile(args.validation):
        raise InputError(args.validation, "--validation", "a JSON file written by `twinkles-hpc validate --json`",
                         "no such file")
    limits = ReportLimits(max_supernovae=args.max_sne, max_lenses=args.max_lenses, max_stars=args.max_stars,
                          n_stamps=args.stamps)
    log = (lambda m: print(f"[twinkles-hpc] {m}", flush=True)) if args.verbose else None
    summary = write_report(args.rundir, args.output, args.db, limits, validation_json=args.validation, log=log,
                           jobs=args.jobs)
    print(f"[twinkles-hpc] report of {summary['name']} in {summary['seconds']['total']:.1f} s -> {summary['index']}")
    return 0


# -- scaling ---------------------------------------------------------------------------------------
def _scaling_list(text, option, allowed=None, convert=str):
    """A comma-separated option value as a list; InputError naming the option when an item is not allowed."""
    items = [x.strip() for x in str(text).split(",") if x.strip()]
    expected = ("a comma-separated list of " + ", ".join(sorted(allowed)) if allowed is not None
                else "a comma-separated list of positive integers")
    try:
        out = [convert(x) for x in items]
    except ValueError:
        raise InputError("scaling", option, expected, text) from None
    if not out or (allowed is not None and any(x not in allowed for x in out)) \
            or (convert is int and min(out) < 1):
        raise InputError("scaling", option, expected, text)
    return out


def cmd_scaling(args):
    """A run's measured tasks replayed on N virtual ranks, or a Run 1/Run 3-size run modelled from them
    (twinkles_hpc/scaling.py, docs/scaling.md)."""
    from twinkles_hpc import scaling
    from twinkles_hpc.pipeline.registry import BY_NAME
    from twinkles_hpc.parallel.simulate import ORDERS
    machines = [scaling.MACHINES[m] for m in _scaling_list(args.machine, "--machine", scaling.MACHINES)]
    orders = _scaling_list(args.order, "--order", ORDERS)
    split = _scaling_list(args.split, "--split", BY_NAME) if args.split else ()
    without = _scaling_list(args.without, "--without", BY_NAME) if args.without else ()
    try:
        sensor = tuple(int(x) for x in args.sensor.lower().split("x"))
        assert len(sensor) == 2 and min(sensor) >= 1
    except (ValueError, AssertionError):
        raise InputError("scaling", "--sensor", "NXxNY pixels, e.g. 4000x4072", args.sensor) from None
    if args.visits is not None and args.visits < 1:
        raise InputError("scaling", "--visits", "a number of visits >= 1", args.visits)
    if (args.weak or split or without or args.opsim) and args.visits is None:
        raise InputError("scaling", "--weak/--split/--without/--opsim", "--visits N with them", "no --visits")
    if args.like and args.visits is not None:
        raise InputError("scaling", "--like", "either --like RUNDIR or --visits N", "both")
    ranks = _scaling_list(args.ranks, "--ranks", convert=int) if args.ranks else None
    if not args.rank0_ms >= 0 or not args.piece_seconds > 0:
        raise InputError("scaling", "--rank0-ms/--piece-seconds", "a time >= 0 and a piece length > 0",
                         f"{args.rank0_ms}/{args.piece_seconds}")
    rank0_s = args.rank0_ms / 1e3
    run = scaling.load_run(os.path.abspath(args.rundir), rank0_s=rank0_s)
    out = {"run": run.rundir, "ranks": run.ranks, "sessions": run.sessions, "wall_s": round(run.wall_s, 3),
           "tasks": len(run.records), "overheads": vars(run.overheads)}
    lines = [f"{run.rundir}: {len(run.records)} tasks measured at -n {run.ranks} in {run.sessions} session(s), "
             f"wall {run.wall_s:.1f} s", f"overheads: {scaling.format_overheads(run.overheads)}"]
    if args.like:
        other = scaling.load_run(os.path.abspath(args.like), rank0_s=rank0_s)
        tasks, missing = scaling.like_tasks(run, other, args.seed)
        out["checks"] = scaling.check(run, tasks, other)            # in the order each run ran in
        out["unmeasured"] = missing
    else:
        out["checks"] = scaling.check(run, scaling.replay_tasks(run), run)
    for c in out["checks"]:
        lines.append(f"{'modelled' if args.like else 'replayed'} {c['run']} at -n {c['ranks']} ({c['order']}): "
                     f"{c['predicted_s']:.1f} s against {c['measured_s']:.1f} s measured ({100 * c['error']:+.1f}%)"
                     + ("" if not args.like else f"; its task seconds {c['work_ratio']:.2f}x the modelled ones, "
                        f"scaled by that: {100 * c['normalised_error']:+.1f}%"))
    if not args.like:
        rows, notes = scaling.study(run, ranks or [run.ranks], machines, orders, n_visits=args.visits, weak=args.weak,
                                    sensor=sensor, opsim=args.opsim, seed=args.seed, split=split,
                                    piece_s=args.piece_seconds, without=without)
        out.update(rows=rows, notes=notes, visits=args.visits, weak=args.weak, sensor=list(sensor))
        what = ("the measured tasks" if args.visits is None else
                f"{args.visits} visits{' at the top rank count (weak scaling)' if args.weak else ''} on a "
                f"{sensor[0]}x{sensor[1]} sensor")
        lines += [f"{what}:", scaling.format_rows(rows),
                  "longest on the critical path at the most ranks: "
                  + ", ".join(f"{k} {s:.0f} s" for k, s in notes["critical_path_kinds"])]
        if notes.get("unmeasured"):
            lines.append("no measured task (modelled as 0 s): " + ", ".join(notes["unmeasured"]))
        if args.plot:
            scaling.plot_study(rows, args.plot, args.title or what)
            lines.append(f"plot -> {args.plot}")
    print(json.dumps(out, indent=1) if args.json else "\n".join(lines))
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (exit 2): the command, what is wrong and where the help is, not the
    usage block."""

    def error(self, message):
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        raise SystemExit(EXIT_BAD_INPUT)


def build_parser():
    p = _Parser(prog="twinkles-hpc", description=__doc__.splitlines()[0],
                epilog=EXIT_CODES_DOC, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"twinkles-hpc {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run (or resume) a campaign; launch under mpiexec/srun",
                       epilog=EXIT_CODES_DOC, formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("config", help="TOML config file (see `twinkles-hpc config --defaults`)")
    r.add_argument("-o", "--output", required=True, help="run directory (created, or resumed)")
    r.add_argument("--progress-interval", type=float, default=5.0, metavar="S",
                   help="seconds between progress lines (default 5)")
    r.add_argument("--defer", metavar="STAGE[,STAGE]", default="",
                   help="leave the tasks of these stages (and all downstream of them) for a later run of the "
                   "same command without --defer, e.g. --defer ingest: the database in a small job of its own "
                   "after the processing (docs/scaling.md)")
    r.add_argument("--verify", action="store_true", help="on a resume, read every output the journal records "
                   "and compare its checksum: a damaged one is redone with every task downstream of it "
                   "(a resume always checks that the outputs exist with their recorded sizes)")
    r.add_argument("--threads", type=_threads_arg, default=1, metavar="N",
                   help="OpenMP threads per rank in the Lanczos warps and the coadd combinations, for ranks that "
                   "own several cores (srun -c N; default 1: none). The products are the same bits at any N")
    r.set_defaults(func=cmd_run)

    s = sub.add_parser("status", help="what a run directory holds and what is left to do")
    s.add_argument("rundir")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(func=cmd_status)

    lc = sub.add_parser("lightcurve", help="print an Object's, a DiaObject's or a lensed image's light curve from "
                        "the run's database",
                        description="The forced-photometry light curve of one Object (ForcedSource x CcdVisit, "
                        "by time), DiaObject (DiaForcedSource) or lensed quasar image (LensedImageForcedSource), "
                        "with the true flux of its matched truth source (docs/database.md).")
    lc.add_argument("rundir", nargs="?", help="run directory (its [database] url, else RUNDIR/level2.sqlite)")
    lc.add_argument("--object", type=int, metavar="ID", help="objectId")
    lc.add_argument("--truth-id", type=int, metavar="ID", help="a star, galaxy, supernova or lensed-image id: "
                    "the Object nearest to it (ObjectTruthMatch), with its true flux")
    lc.add_argument("--dia-object", type=int, metavar="ID", help="diaObjectId: its DIA light curve "
                    "(DiaForcedSource: difference and direct fluxes), with the true flux of its matched variable")
    lc.add_argument("--lensed-image", type=int, metavar="ID", help="lensedImageId: the image's light curve from "
                    "its scene model (LensedImageForcedSource), with the true flux of its matched image")
    lc.add_argument("--band", metavar="B", help="one band (ugrizy); default all")
    lc.add_argument("--db", metavar="URL", help="database URL instead of the run directory's (no password)")
    lc.add_argument("--format", choices=sorted(LIGHTCURVE_FORMATS), default="ecsv",
                    help="output format (default ecsv, with units and metadata)")
    lc.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of stdout")
    lc.set_defaults(func=cmd_lightcurve)

    c = sub.add_parser("config", help="print every config field with its default, or check a file")
    c.add_argument("--defaults", action="store_true", help="print the defaults as commented TOML")
    c.add_argument("--check", metavar="CONFIG", help="validate a config file and print it resolved")
    c.set_defaults(func=cmd_config)

    i = sub.add_parser("imsim", help="render one visit from a PhoSim instance catalogue")
    i.add_argument("instcat", help="PhoSim instance catalogue (point and sersic2d objects)")
    i.add_argument("-o", "--output", required=True, help="output eimage (.fits, .fit, .fts, or .h5, .hdf5)")
    i.add_argument("--nx", default="4000", metavar="N", help="sensor width, pixels, 1-16384 (default 4000)")
    i.add_argument("--ny", default="4072", metavar="N", help="sensor height, pixels, 1-16384 (default 4072)")
    i.add_argument("--seed", default=None, metavar="N", help="noise seed, a 64-bit integer (default: the "
                   "catalogue's seed)")
    i.add_argument("--no-noise", action="store_true", help="write expected electrons (sky included)")
    i.add_argument("--sky-mag", default=None, metavar="MAG",
                   help="sky brightness, 10-30 mag/arcsec^2 (default: the band's zenith dark sky)")
    i.add_argument("--exptime", default=None, metavar="S", help="exposure, (0, 3600] s (default: from the header)")
    i.add_argument("--fwhm", default=None, metavar="ARCSEC",
                   help="PSF FWHM, (0, 10] arcsec (default: from the header's seeing keys)")
    i.set_defaults(func=cmd_imsim)

    d = sub.add_parser("diffim", help="PSF-matched difference of two FITS images with a celestial WCS "
                       "(docs/diffim.md)",
                       description="Subtract TEMPLATE from SCIENCE: both background-subtracted, the template "
                       "warped onto the science pixels (Lanczos-3), the sharper image convolved with an Alard & "
                       "Lupton kernel fitted on bright isolated stars, the difference decorrelated. Variance: "
                       "a VARIANCE extension, else max(pixel, 0) / GAIN + (RDNOISE / GAIN)^2 from the header; "
                       "mask: a MASK extension (level2/masks.py bits), else non-finite pixels are NO_DATA.",
                       epilog="exit codes: 0 written, 2 bad input (a missing or unreadable file, no celestial WCS, "
                       "no overlap, too few kernel candidates, an existing output without --overwrite)",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    d.add_argument("science", help="science image (FITS)")
    d.add_argument("template", help="template image (FITS), on any pixel grid that overlaps the science image")
    d.add_argument("-o", "--output", required=True, metavar="DIFF", help="difference image (FITS): primary "
                   "HDU the difference on the science grid, extensions VARIANCE, MASK, PSF")
    d.add_argument("--kernel-size", type=int, default=0, metavar="N", help="matching kernel side, pixels, odd "
                   "(default 0: from the PSF widths, 19 to 31)")
    d.add_argument("--spatial-order", type=int, default=None, metavar="N", help="polynomial order of the "
                   "kernel's variation across the image, 0-4 (default: the highest up to 2 with 5 kernel "
                   "candidates per term)")
    d.add_argument("--direction", choices=("auto", "template", "science"), default="auto",
                   help="image to convolve (default auto: the one with the smaller PSF)")
    d.add_argument("--min-snr", type=float, default=50.0, metavar="SNR", help="kernel candidates: smallest "
                   "detection S/N (default 50)")
    d.add_argument("--isolation", type=float, default=15.0, metavar="PX", help="kernel candidates: no other "
                   "detection within this radius, pixels (default 15)")
    d.add_argument("--overwrite", action="store_true", help="replace DIFF if it exists")
    d.set_defaults(func=cmd_diffim)

    td = sub.add_parser("timedelay", help="time delays of lensed-quasar images from a run or from light-curve "
                        "files (docs/timedelay.md)",
                        description="For each image X of B, C, D of each system: its delay relative to A in days "
                        "(positive when X lags A) and the 1-sigma error, or no estimate when the light curves "
                        "cannot constrain it. RUNDIR: every scene model of the run with two or more images "
                        "(LensedImageForcedSource psFlux; A the brightest image on the coadds). Files: CSV or ECSV "
                        "with columns mjd, band, then mag_X and magerr_X for each image X of A, B, C, D (NaN or "
                        "empty where X was not measured); one system per file. All bands are used together.",
                        epilog="exit codes: 0 measured (an image may still have no estimate), 2 bad input (a "
                        "missing or unreadable file, a directory that is not a run with [lensphot], a missing "
                        "column, a value that is not a number)",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    td.add_argument("files", nargs="+", metavar="RUNDIR|FILE", help="a run directory, or light-curve files (CSV "
                    "or ECSV)")
    td.add_argument("--estimator", choices=("drw", "difference"), default="drw",
                    help="drw: likelihood of a damped random walk shared by the images (default); difference: "
                    "scatter of the difference of the smoothed light curves")
    td.add_argument("--max-delay", type=float, default=None, metavar="DAYS",
                    help="search delays in [-DAYS, DAYS] (default 150)")
    td.add_argument("--trend-order", type=int, default=None, metavar="N", help="degree of each image's slow "
                    "(microlensing) polynomial trend (default 2; 0: none)")
    td.add_argument("--max-relative-error", type=float, default=None, metavar="F", help="no estimate when the "
                    "error exceeds F x |delay| (default 0.15; 0: no limit)")
    td.add_argument("--min-delay", type=float, default=None, metavar="DAYS", help="no estimate when |delay| is "
                    "below DAYS (default 1: images measured on the same visits share each visit's errors, which "
                    "look like a delay near 0; 0 for light curves whose errors are independent)")
    td.add_argument("--json", action="store_true", help="print one JSON list: per file {\"file\", \"delays\": "
                    "{X: {\"delay\", \"error\"}}} (null for no estimate); for a run directory per system, with "
                    "\"lensSystemId\" and \"images\" ({X: lensedImageId}) too")
    td.set_defaults(func=cmd_timedelay)

    b = sub.add_parser("bench", help="benchmarks against peer tools, side by side in one run")
    b.add_argument("what", choices=["imsim", "visit", "detect", "forced", "report", "diffim", "timedelay", "engine",
                                    "storage", "startup", "ingest", "chain"],
                   help="imsim: a full visit against GalSim; visit: one visit of an existing run with and "
                        "without its variable sources; detect: background + detection against sep; "
                        "forced: forced photometry against photutils, apertures against sep (--stars objects); "
                        "report: the HTML report on the run's database and on a copy grown to Run 1.1's size; "
                        "diffim: one PSF-matched subtraction of a 4096^2 pair, three PSF cases; "
                        "timedelay: both delay estimators (and PyCS3 where installed) on simulated doubles on the "
                        "Run 1 cadence, TDC1 metrics; engine: synthetic sleeping tasks through the scheduler, "
                        "journal and trace under mpiexec at --ranks, and rank 0 alone against simulated workers; "
                        "storage: bytes per full-sensor visit of a run's products under each [store] option; "
                        "startup: seconds, modules and files opened starting each entry point (--help, imsim on "
                        "the imsim scene as a catalogue, a worker of a run, per stage); ingest: a synthetic "
                        "catalogue at --scale x Run 1.1 into SQLite and MySQL/MariaDB by INSERT and LOAD DATA: rows/s, "
                        "size on disk, light-curve latency; chain: --visits full-sensor visits of --band through "
                        "every stage in one process, CPU seconds per visit of each stage and its steps, sep's "
                        "floor on the same image")
    b.add_argument("--rundir", help="run directory (bench visit, bench report, bench storage; bench chain: where its "
                   "campaign runs, kept, and reused when complete; bench engine: where "
                   "the synthetic runs write their journals, bench ingest: where the SQLite database is written, "
                   "default a temporary directory)")
    b.add_argument("--visit", type=int, default=None, help="visit id (bench visit, bench storage; default: the "
                   "first)")
    b.add_argument("--threads", type=_threads_arg, default=1, metavar="N", help="bench chain: OpenMP threads in "
                   "the warps and coadd combinations (`run --threads`; default 1)")
    b.add_argument("--nx", type=int, default=4000, help="image width (default 4000; bench diffim: 4096)")
    b.add_argument("--ny", type=int, default=4072, help="image height (default 4072; bench diffim: 4096)")
    b.add_argument("--stars", type=int, default=2000, help="stars (default 2000; bench diffim: 20000 per 4096^2)")
    b.add_argument("--galaxies", type=int, default=5000)
    b.add_argument("--seed", type=int, default=1, help="seed of the simulated scene (imsim, detect, forced), "
                   "light curves (timedelay) or catalogue (ingest)")
    b.add_argument("--systems", type=int, default=100, help="simulated doubles per case (bench timedelay)")
    b.add_argument("--opsim", metavar="FILE", default=None, help="cadence of the simulated light curves (bench "
                   "timedelay; default ../shared/data/twinkles_run1_opsim_visits.csv)")
    b.add_argument("--pycs3-systems", type=int, default=10, metavar="N", help="bench timedelay: run PyCS3 (where "
                   "installed) on the first N systems of each case (default 10: it takes seconds per system)")
    b.add_argument("--calibrate", action="store_true", help="bench timedelay: report the error scale each "
                   "estimator's raw errors need on these curves instead of the metrics")
    b.add_argument("--ranks", default="3,8,16,32,64", help="bench engine: mpiexec rank counts (default 3,8,16,32,64)")
    b.add_argument("--tasks", type=int, default=2000, help="bench engine: tasks a run (default 2000)")
    b.add_argument("--durations", default="0,0.01", metavar="S,...", help="bench engine: mean seconds a task "
                   "sleeps, one run each (default 0,0.01)")
    b.add_argument("--simulated-workers", default="16,256,2048", metavar="N,...", help="bench engine: worker "
                   "counts of the ceiling runs (default 16,256,2048)")
    b.add_argument("--scale", type=float, default=1.0, help="bench ingest: the catalogue as a multiple of Run 1.1 "
                   "(1: 1120 CcdVisits, 41,653 Objects, 33.8 million ForcedSources; default 1)")
    b.add_argument("--url", default=None, help="bench ingest: the MySQL/MariaDB database (its CcdVisit, Object and "
                   "ForcedSource tables empty; default: the test server of $TWINKLES_TEST_DB_OPTION_FILE, if set)")
    b.add_argument("--targets", default="sqlite,mysql-insert,mysql-bulk", help="bench ingest: what to time "
                   "(default sqlite,mysql-insert,mysql-bulk; the MySQL ones need a server)")
    b.add_argument("--visits-per-call", type=int, default=100, metavar="N", help="bench ingest: visits of a field "
                   "per ForcedSource ingest call, at most (default 100; 1: one call per CcdVisit)")
    b.add_argument("--queries", type=int, default=100, help="bench ingest: random Objects whose light curve is "
                   "timed (default 100)")
    b.add_argument("--batch-size", type=int, default=50_000, help="bench ingest: rows per INSERT or LOAD DATA "
                   "statement (default 50000, as [ingest] batch_size)")
    b.add_argument("--visits", type=int, default=8, help="bench chain: visits of the campaign (default 8)")
    b.add_argument("--band", default="r", help="bench chain: the campaign's band (default r)")
    b.add_argument("--store", default="default", help="bench chain: 'default' ([store] defaults: planes "
                   "uncompressed) or 'demo' (gzip after quantising, as jobs/demo.toml)")
    b.add_argument("--repeat", type=int, default=3, help="timed repetitions (best and median reported)")
    b.add_argument("--no-galsim", action="store_true", help="skip the GalSim comparison")
    b.add_argument("--galsim-objects", type=int, default=None,
                   help="time GalSim on this many objects and extrapolate to the scene")
    b.add_argument("--no-photutils", action="store_true", help="skip the photutils comparison (bench forced)")
    b.add_argument("--photutils-objects", type=int, default=None,
                   help="time photutils on this many objects and extrapolate (bench forced; default: all, "
                        "or 1000 if a probe predicts more than 2 minutes)")
    b.add_argument("--record", metavar="MD", help="append the results to this markdown file "
                   "(e.g. docs/benchmarks.md)")
    b.set_defaults(func=cmd_bench)

    v = sub.add_parser("validate", help="a run's outputs against its truth: calibration, PA1/AM1, completeness, "
                       "supernova light curves, cost (JSON; docs/validation.md)",
                       epilog="exit codes: 0 every threshold holds, 1 a threshold fails (named on stderr), "
                       "2 bad input (a missing run directory or product)")
    v.add_argument("rundir", help="run directory")
    v.add_argument("--config", metavar="TOML", help="take the [validate] thresholds from this file instead of "
                   "the run's config")
    v.add_argument("--json", metavar="FILE", help="also write the report to FILE")
    v.add_argument("--summary", action="store_true", help="print one line per check (PASS/FAIL/n/a, value, "
                   "threshold) instead of the JSON report")
    v.add_argument("--db", metavar="URL", help="also check that this catalogue database holds every calexp, "
                   "primary Object and ForcedSource row (default: the run's own with [level2] ingest = true)")
    v.set_defaults(func=cmd_validate)

    ex = sub.add_parser("export", help="the run's catalogue database as Parquet (docs/database.md)",
                        description="Every non-empty table of the catalogue database as Parquet with its DPDD "
                        "column names: ForcedSource, DiaForcedSource, DiaSource and LensedImageForcedSource as "
                        "datasets partitioned by band (TABLE/filterName=B/part-KKKK.parquet), the others one "
                        "file each (TABLE.parquet); read them with pandas, dask or pyarrow.dataset.",
                        epilog="exit codes: 0 written, 2 bad input (no database, a bad table name or folder)")
    ex.add_argument("rundir", nargs="?", help="run directory (its [ingest] url, else RUNDIR/level2.sqlite)")
    ex.add_argument("--db", metavar="URL", help="database URL instead of the run directory's (no password)")
    ex.add_argument("-o", "--output", metavar="DIR", help="output folder (default RUNDIR/parquet)")
    ex.add_argument("--tables", metavar="T,...", help="only these tables (default every non-empty one)")
    ex.set_defaults(func=cmd_export)

    rp = sub.add_parser("report", help="a static HTML page of a run: cadence, coadds, validation, residuals, "
                        "light curves with postage stamps, trace (docs/report.md)",
                        epilog="exit codes: 0 written, 2 bad input (no run directory or config.json)")
    rp.add_argument("rundir", help="run directory")
    rp.add_argument("--db", metavar="URL", help="catalogue database (default: the run's own, RUNDIR/level2.sqlite)")
    rp.add_argument("-o", "--output", metavar="DIR", help="report directory (default RUNDIR/report)")
    rp.add_argument("--max-sne", type=int, default=30, metavar="N", help="supernova pages: the N best sampled "
                    "(default 30)")
    rp.add_argument("--max-lenses", type=int, default=50, metavar="N", help="lensed quasar system pages (default 50)")
    rp.add_argument("--max-stars", type=int, default=10, metavar="N", help="bright-star pages (default 10)")
    rp.add_argument("--stamps", type=int, default=8, metavar="N", help="postage stamps per object (default 8)")
    rp.add_argument("--validation", metavar="JSON", help="use this `validate --json` output instead of running "
                    "the validation")
    rp.add_argument("-j", "--jobs", type=int, default=None, metavar="N", help="processes drawing the object "
                    "pages and running the validation (default: the usable cores, at most 4)")
    rp.add_argument("-v", "--verbose", action="store_true", help="print the time of each section")
    rp.set_defaults(func=cmd_report)

    sc = sub.add_parser("scaling", help="a run's measured tasks replayed on N virtual ranks, or Run 1/Run 3 "
                        "modelled from them: strong and weak scaling (docs/scaling.md)",
                        description="A discrete-event model of the run engine: rank 0 schedules (largest "
                        "predicted cost first, or FIFO), N-1 workers run the tasks with the durations measured "
                        "in RUNDIR's trace.jsonl and the overheads fitted to its journal. Without --visits: the "
                        "run's own tasks (at its own rank count it should give the measured wall time); with "
                        "--visits N: a run of N visits of the Run 1 cadence on a full sensor, planned from "
                        "RUNDIR's config, each task's duration from the measured seconds per unit of predicted "
                        "cost of its stage.",
                        epilog="exit codes: 0 done, 2 bad input (no trace.jsonl or journal in RUNDIR, a bad "
                        "option value)")
    sc.add_argument("rundir", help="a run directory whose run has finished tasks")
    sc.add_argument("--ranks", metavar="N,...", help="rank counts (default: the run's own; e.g. "
                    "32,64,128,256,512,1024,2048,4096)")
    sc.add_argument("--visits", type=int, metavar="N", help="model a run of N visits (Run 1: 1227, Run 3: "
                    "22000) instead of replaying the measured tasks")
    sc.add_argument("--weak", action="store_true", help="weak scaling: N x ranks / (largest rank count) "
                    "visits at each rank count")
    sc.add_argument("--machine", default="here", metavar="M,...", help="per-core speed of: here, haswell, knl, "
                    "perlmutter (default here; docs/scaling.md)")
    sc.add_argument("--order", default="critical", metavar="O,...", help="ready orders of the modelled runs: "
                    "critical (the engine's: the task heading the costliest chain of predicted work first), "
                    "longest (the largest predicted cost first), fifo, or a list (default critical); the replay "
                    "uses the order the measured run ran in")
    sc.add_argument("--sensor", default="4000x4072", metavar="NXxNY", help="sensor of the modelled run "
                    "(default 4000x4072)")
    sc.add_argument("--opsim", metavar="FILE", help="base cadence of the modelled run: one visit per night and "
                    "band of this OpSim file (e.g. the Run 1 list); default the synthetic Run 1 cadence")
    sc.add_argument("--like", metavar="RUNDIR2", help="model another measured run's own graph with this run's "
                    "durations and overheads, at its rank count, against its measured wall time")
    sc.add_argument("--split", metavar="KIND,...", help="what if: cut each task of these stages into pieces of "
                    "at most --piece-seconds (e.g. coadd,template as sub-region tasks)")
    sc.add_argument("--piece-seconds", type=float, default=60.0, metavar="S", help="--split piece length on "
                    "this machine's core (default 60)")
    sc.add_argument("--without", metavar="KIND,...", help="what if: leave these stages out of the job "
                    "(e.g. ingest, run as a job of its own)")
    sc.add_argument("--rank0-ms", type=float, default=0.12, metavar="MS", help="rank 0's time per completion "
                    "(default 0.12, docs/benchmarks.md `bench engine`)")
    sc.add_argument("--seed", type=int, default=0, help="seed of the durations drawn for a modelled run")
    sc.add_argument("--plot", metavar="PNG", help="draw efficiency and wall time against ranks")
    sc.add_argument("--title", help="the plot's title")
    sc.add_argument("--json", action="store_true", help="print one JSON object instead of the tables")
    sc.set_defaults(func=cmd_scaling)
    return p


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    stop = None
    if argv[:1] == ["run"]:        # the signal handlers first: a signal during the set-up stops the run (75)
        from twinkles_hpc.parallel.engine import StopFlag
        stop = StopFlag().install()
    args = build_parser().parse_args(argv)
    args.stop = stop
    try:
        return args.func(args)
    except (InputError, RunDirError) as exc:
        _err(str(exc))
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        _err("interrupted")
        return 130
    except BrokenPipeError:         # the reader went away (`| head`): stop quietly, as a Unix filter does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
