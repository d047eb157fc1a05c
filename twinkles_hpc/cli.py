"""The twinkles-hpc command line: `twinkles-hpc run|status|config|imsim|bench ...`.

Only this module picks MPI.COMM_WORLD. Rank 0 parses and validates; a bad input is one line on stderr
and exit code 2 on every rank, before anything in a run directory is touched.
"""
from __future__ import annotations

import argparse
import json
import os
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
def cmd_run(args):
    from twinkles_hpc import config as config_mod
    from twinkles_hpc.parallel import campaign
    from twinkles_hpc.parallel.engine import Engine
    from twinkles_hpc.parallel.journal import Journal
    from twinkles_hpc.parallel.lock import RunLock
    from twinkles_hpc.store.atomic import remove_stale_temporaries

    comm = _world()
    rundir = os.path.abspath(args.output)
    setup, lock = None, None
    if comm.rank == 0:
        try:
            cfg = config_mod.load(args.config)
            with open(args.config) as fh:
                text = fh.read()
            campaign.check_rundir(cfg, rundir)
            visits = campaign.existing_visits(rundir)
            if visits is None:
                visits = campaign.select_cadence(cfg)
            skymap = campaign.coadd_skymap(cfg, visits, rundir)
            tasks = campaign.build_tasks(cfg, visits, skymap)
            os.makedirs(rundir, exist_ok=True)
            lock = RunLock(rundir).acquire()
            campaign.init_rundir(cfg, rundir, text, visits, skymap)
            n_tmp = remove_stale_temporaries(rundir)
            done, lost = Journal(rundir).completed()
            setup = ("ok", cfg, visits, tasks, sorted(done))
            n_pending = len([t for t in tasks if t.id not in done])
            per_band = ", ".join(f"{b} {int((visits['band'] == b).sum())}" for b in cfg.cadence.bands)
            print(f"[twinkles-hpc] {cfg.run.name}: {len(visits)} visits ({per_band}), "
                  f"{cfg.sensor.nx}x{cfg.sensor.ny} pixels, {comm.size} rank(s) "
                  f"({max(comm.size - 1, 1)} worker(s)) -> {rundir}", flush=True)
            if done:
                print(f"[twinkles-hpc] resuming: {len(done)} task(s) done, {n_pending} to run"
                      + (f", {len(lost)} redone (outputs missing)" if lost else "")
                      + (f", {n_tmp} partial file(s) removed" if n_tmp else ""), flush=True)
        except (InputError, RunDirError) as exc:
            setup = ("error", str(exc))
        except Exception:
            _abort(comm, "setting up the run")
    setup = comm.bcast(setup, root=0)
    if setup[0] == "error":
        if comm.rank == 0:
            _err(setup[1])
        return EXIT_BAD_INPUT
    _, cfg, visits, tasks, done = setup
    log = (lambda m: print(f"[twinkles-hpc] rank {comm.rank}: {m}", flush=True))
    engine = Engine(comm, rundir, campaign.Executor(cfg, rundir, visits, log=log), Journal(rundir),
                    progress_interval=args.progress_interval)
    t0 = time.time()
    try:
        status = engine.run(tasks, done)
    except Exception:
        _abort(comm, "running tasks")
    if comm.rank == 0:
        if status == "complete":
            campaign.write_band_views(rundir, visits, cfg.sensor)
            campaign.clean_checkpoints(rundir)
            cpu, wall = engine.scheduler_cpu
            role = "scheduler" if comm.size > 1 else "rank 0"
            print(f"[twinkles-hpc] done in {time.time() - t0:.1f} s: {len(tasks)} tasks; {role} used "
                  f"{cpu:.2f} CPU-s over {wall:.1f} s; outputs in {rundir}", flush=True)
        else:
            print(f"[twinkles-hpc] interrupted after {time.time() - t0:.1f} s; checkpoint written. "
                  f"Resubmit the same command to resume (exit code {EXIT_RESUBMIT}).", flush=True)
        lock.release()
    return 0 if status == "complete" else EXIT_RESUBMIT


# -- status ----------------------------------------------------------------------------------------
def run_status(rundir):
    """Summary of a run directory: tasks done per kind, checkpoints, lock, timing."""
    from twinkles_hpc.parallel import campaign
    from twinkles_hpc.parallel.journal import Journal
    from twinkles_hpc.parallel.lock import RunLock
    from twinkles_hpc.store.atomic import open_read
    from twinkles_hpc.store.tables import read_table

    cfg = campaign.load_rundir_config(rundir)
    vpath = os.path.join(rundir, "visits.h5")
    if os.path.exists(vpath):
        with open_read(vpath) as fh:
            visits = read_table(fh["visits"])
    else:
        visits = campaign.select_cadence(cfg)
    tasks = campaign.build_tasks(cfg, visits, campaign.coadd_skymap(cfg, visits, rundir))
    j = Journal(rundir)
    done, lost = j.completed()
    events = j.events()
    kinds = {}
    for t in tasks:
        k = kinds.setdefault(t.kind, {"total": 0, "done": 0})
        k["total"] += 1
        k["done"] += t.id in done
    ckdir = os.path.join(rundir, "checkpoints")
    ckpts = sorted(f for f in os.listdir(ckdir) if f.endswith(".h5")) if os.path.isdir(ckdir) else []
    ends = [e for e in events if e["event"] == "end"]
    trace = []
    tpath = os.path.join(rundir, "trace.jsonl")
    if os.path.exists(tpath):
        with open(tpath) as fh:
            trace = [json.loads(line) for line in fh if line.strip()]
    n_done = sum(k["done"] for k in kinds.values())
    per_visit = _visit_counts(rundir, visits, done)
    return {
        "rundir": rundir, "name": cfg.run.name, "tasks": kinds, "n_tasks": len(tasks), "n_done": n_done,
        "complete": n_done == len(tasks), "running": RunLock.is_locked(rundir),
        "last_status": ends[-1]["status"] if ends else None,
        "starts": sum(e["event"] == "start" for e in events),
        "failed": [e for e in events if e["event"] == "failed"][-3:],
        "checkpoints": ckpts, "lost_outputs": lost,
        "bytes_written": int(sum(r["bytes"] for r in trace)),
        "task_seconds": round(sum(r["end"] - r["start"] for r in trace), 2),
        "per_visit": per_visit,
    }


def _visit_counts(rundir, visits, done):
    """Median and range over finished visits of the sources each eimage records (attributes)."""
    from twinkles_hpc.parallel import campaign
    from twinkles_hpc.store.atomic import open_read
    import numpy as np
    keys = ("n_sources", "n_supernovae", "n_supernovae_snr5", "n_lensed_images", "n_saturated")
    vals = {k: [] for k in keys}
    for v in visits:
        if campaign.visit_task_id(v["visit_id"]) not in done:
            continue
        with open_read(os.path.join(rundir, campaign.eimage_relpath(v["visit_id"], v["band"]))) as fh:
            for k in keys:
                if k in fh.attrs:
                    vals[k].append(int(fh.attrs[k]))
    return {k: {"median": float(np.median(x)), "min": int(min(x)), "max": int(max(x))}
            for k, x in vals.items() if x}


def cmd_status(args):
    st = run_status(os.path.abspath(args.rundir))
    if args.json:
        print(json.dumps(st, indent=1))
        return 0
    state = "running" if st["running"] else ("complete" if st["complete"] else "incomplete")
    print(f"{st['rundir']}: {st['name']}: {state}, {st['n_done']}/{st['n_tasks']} tasks done "
          f"({st['starts']} start(s), last: {st['last_status']})")
    for kind, k in st["tasks"].items():
        print(f"  {kind:8s} {k['done']:6d} / {k['total']:6d}")
    if st["checkpoints"]:
        print(f"  mid-visit checkpoints: {', '.join(st['checkpoints'])}")
    for f in st["failed"]:
        print(f"  failed: rank {f['rank']} task {f['task']}: {f['message']}")
    print(f"  {st['bytes_written'] / 1e6:.1f} MB written, {st['task_seconds']:.1f} task-seconds")
    for k, v in st["per_visit"].items():
        print(f"  per visit: {k:18s} median {v['median']:8.1f}  range {v['min']}..{v['max']}")
    if not st["complete"] and not st["running"]:
        print("  resume with the same `twinkles-hpc run CONFIG -o RUNDIR` command")
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
    from twinkles_hpc.imsim.instcat_render import render_instance_catalog
    info = render_instance_catalog(args.instcat, args.output, nx=args.nx, ny=args.ny, seed=args.seed,
                                   noise=not args.no_noise, sky_mag=args.sky_mag, exptime=args.exptime,
                                   fwhm=args.fwhm)
    print(f"[twinkles-hpc] {args.instcat}: {info['n_objects']} objects ({info['n_on_sensor']} on the "
          f"sensor), band {info['band']}, visit {info['visit_id']} -> {args.output} "
          f"in {info['seconds']:.2f} s")
    return 0


# -- bench -----------------------------------------------------------------------------------------
def cmd_bench(args):
    from twinkles_hpc import benchmarks
    return benchmarks.main(args)


def build_parser():
    p = argparse.ArgumentParser(prog="twinkles-hpc", description=__doc__.splitlines()[0],
                                epilog=EXIT_CODES_DOC, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"twinkles-hpc {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run (or resume) a campaign; launch under mpiexec/srun",
                       epilog=EXIT_CODES_DOC, formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("config", help="TOML config file (see `twinkles-hpc config --defaults`)")
    r.add_argument("-o", "--output", required=True, help="run directory (created, or resumed)")
    r.add_argument("--progress-interval", type=float, default=5.0, metavar="S",
                   help="seconds between progress lines (default 5)")
    r.set_defaults(func=cmd_run)

    s = sub.add_parser("status", help="what a run directory holds and what is left to do")
    s.add_argument("rundir")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(func=cmd_status)

    c = sub.add_parser("config", help="print every config field with its default, or check a file")
    c.add_argument("--defaults", action="store_true", help="print the defaults as commented TOML")
    c.add_argument("--check", metavar="CONFIG", help="validate a config file and print it resolved")
    c.set_defaults(func=cmd_config)

    i = sub.add_parser("imsim", help="render one visit from a PhoSim instance catalogue")
    i.add_argument("instcat", help="PhoSim instance catalogue (point and sersic2d objects)")
    i.add_argument("-o", "--output", required=True, help="output eimage (.fits or .h5)")
    i.add_argument("--nx", type=int, default=4000, help="sensor width, pixels (default 4000)")
    i.add_argument("--ny", type=int, default=4072, help="sensor height, pixels (default 4072)")
    i.add_argument("--seed", type=int, default=None, help="noise seed (default: the catalogue's seed)")
    i.add_argument("--no-noise", action="store_true", help="write expected electrons (sky included)")
    i.add_argument("--sky-mag", type=float, default=None,
                   help="sky brightness, mag/arcsec^2 (default: the band's zenith dark sky)")
    i.add_argument("--exptime", type=float, default=None, help="exposure, s (default: from the header)")
    i.add_argument("--fwhm", type=float, default=None,
                   help="PSF FWHM, arcsec (default: from the header's seeing keys)")
    i.set_defaults(func=cmd_imsim)

    b = sub.add_parser("bench", help="benchmarks against peer tools, side by side in one run")
    b.add_argument("what", choices=["imsim", "visit", "detect", "forced"],
                   help="imsim: a full visit against GalSim; visit: one visit of an existing run with and "
                        "without its variable sources; detect: background + detection against sep; "
                        "forced: forced photometry against photutils (--stars objects)")
    b.add_argument("--rundir", help="run directory (bench visit)")
    b.add_argument("--visit", type=int, default=None, help="visit id (bench visit; default: the first)")
    b.add_argument("--nx", type=int, default=4000)
    b.add_argument("--ny", type=int, default=4072)
    b.add_argument("--stars", type=int, default=2000)
    b.add_argument("--galaxies", type=int, default=5000)
    b.add_argument("--repeat", type=int, default=3, help="timed repetitions (best and median reported)")
    b.add_argument("--no-galsim", action="store_true", help="skip the GalSim comparison")
    b.add_argument("--galsim-objects", type=int, default=None,
                   help="time GalSim on this many objects and extrapolate to the scene")
    b.add_argument("--record", metavar="MD", help="append the results to this markdown file "
                   "(e.g. docs/benchmarks.md)")
    b.set_defaults(func=cmd_bench)
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (InputError, RunDirError) as exc:
        _err(str(exc))
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        _err("interrupted")
        return 130
