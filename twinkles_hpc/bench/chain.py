"""`twinkles-hpc bench chain`: full-sensor visits through every stage of a run, with each stage's steps.

A short campaign (`--visits` visits of one band, `--band`, on the whole 4000 x 4072 sensor; `[store]` as
the defaults, every plane uncompressed, or with `--store demo` as the demo stores them: gzip after
quantising to a quarter of the noise) runs as a real `twinkles-hpc run` in one process, so every task runs
on one single-threaded rank exactly as in a job. The figures come from the run's trace (trace.jsonl: each
task's wall and CPU seconds, and the seconds of the steps its code times, twinkles_hpc/steptimer.py):

- per-visit stages (simulate, calexp, diffim, forced and DIA forced photometry): the mean over the
  visits' tasks;
- amortised stages (coadd, template, Objects, association): the stage's total over the number of visits,
  a visit's share;
- the chain before difference imaging (simulate, calexp, coadd, Objects, forced photometry) and with it
  (+ template, diffim, association, DIA forced photometry), against the targets of docs/benchmarks.md;
- sep's background, extraction and aperture photometry on one of the visits' images (before its
  calibration), the floor a calexp is compared with, when sep is installed.

`--rundir DIR` keeps the run (and reuses it when it is complete: the tables only); default a temporary
directory, removed afterwards.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile

import numpy as np

from twinkles_hpc import instrument
from twinkles_hpc.bench.common import time_calls
from twinkles_hpc.errors import InputError
from twinkles_hpc.pipeline.stage import AMORTISED, PER_VISIT
from twinkles_hpc.rundir import layout

#: (row label, stage) of the chain before difference imaging, then of the difference-imaging part.
LEVEL2 = (("simulate", "visit"), ("calexp", "calexp"), ("coadd", "coadd"), ("Objects", "objects"),
          ("forced", "forced"))
DIA = (("template", "template"), ("diffim", "diffim"), ("associate", "associate"), ("DIA forced", "diaforced"))
#: Targets, CPU seconds per full-sensor visit on one core (the issue "Level 2 at the speed of its kernels").
TARGETS = {"visit": 0.8, "calexp": 1.5, "coadd": 1.0, "level2": 4.0, "all": 6.0}

CONFIG = """\
# written by `twinkles-hpc bench chain`; run with --threads {threads}
[run]
name = "bench-chain"
seed = {seed}

[cadence]
source = "synthetic"
bands = "{band}"
max_visits = {visits}

[sky]
radius = 0.3

[visit]
chunk_objects = 4000
checkpoint_interval = 120.0

[store]
keep_eimages = {keep}
{store}
[calexp]
enabled = true

[coadd]
enabled = true

[objects]
enabled = true

[forced]
enabled = true

[template]
enabled = true
mode = "single"

[diffim]
enabled = true

[associate]
enabled = true

[diaforced]
enabled = true
"""


def stage_costs(records, n_visits):
    """{stage: {"wall", "cpu": seconds per visit, "tasks": n, "steps": {step: [wall, cpu] per visit}}} from
    trace records (the last of each task): per-visit stages by the mean over their tasks, amortised ones by
    their total over `n_visits`."""
    from twinkles_hpc.pipeline import registry
    classes = registry.cost_classes()
    per_visit = set(classes.get(PER_VISIT, ())) | {"visit"}
    amortised = set(classes.get(AMORTISED, ()))
    by_kind = {}
    for r in records:
        by_kind.setdefault(r["kind"], []).append(r)
    out = {}
    for kind, recs in by_kind.items():
        if kind in per_visit:
            div = len(recs)
        elif kind in amortised:
            div = max(n_visits, 1)
        else:
            continue
        steps = {}
        for r in recs:
            for name, (w, c) in r.get("steps", {}).items():
                acc = steps.setdefault(name, [0.0, 0.0])
                acc[0] += w / div
                acc[1] += c / div
        out[kind] = {"wall": sum(r["end"] - r["start"] for r in recs) / div,
                     "cpu": sum(r.get("cpu", r["end"] - r["start"]) for r in recs) / div,
                     "tasks": len(recs), "steps": steps}
    return out


#: --store: the [store] settings besides keep_eimages.
STORES = {"default": "", "demo": 'compression = "gzip"\nquantize = 0.25\nvariance_bits = 6\n'}


def _run_campaign(rundir, visits, band, seed, keep_eimage, store="default", threads=1):
    """The campaign as `twinkles-hpc run --threads threads` in one process (no mpiexec: the engine runs every
    task itself). Returns its wall seconds, or None when `rundir` already holds a complete run of the same
    settings (the thread count among them, in the config's first line)."""
    from twinkles_hpc.bench.common import Timer
    cfg_text = CONFIG.format(seed=seed, band=band, visits=visits, keep="true" if keep_eimage else "false",
                             store=STORES[store], threads=threads)
    stored = os.path.join(rundir, layout.CONFIG_TOML)
    if os.path.exists(stored) and _complete(rundir):
        with open(stored) as fh:
            if fh.read() == cfg_text:
                return None
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    print(f"bench chain: running {visits} full-sensor visits through every stage in {rundir} (about 30 s a "
          "visit on one core; its progress on standard error)", file=sys.stderr, flush=True)
    timer = Timer()
    with tempfile.TemporaryDirectory(prefix="bench-chain-config-") as d:
        cfg_path = os.path.join(d, "bench-chain.toml")
        with open(cfg_path, "w") as fh:
            fh.write(cfg_text)
        proc = timer(subprocess.run, [sys.executable, "-m", "twinkles_hpc", "run", cfg_path, "-o", rundir,
                                      "--threads", str(threads)], env=env, stdout=sys.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"twinkles-hpc bench chain: the campaign in {rundir} failed (exit {proc.returncode}; "
                         "its messages above)")
    return timer.best


def _complete(rundir):
    """True when the run's journal ends with a complete session."""
    from twinkles_hpc.rundir import read_jsonl
    path = os.path.join(rundir, layout.JOURNAL)
    ends = [r for r in read_jsonl(path) if r.get("event") == "end"] if os.path.exists(path) else []
    return bool(ends) and ends[-1].get("status") == "complete"


def sep_floor(image, repeat=3, sep=None):
    """Best seconds of sep's background (128 px mesh), 5-sigma extraction with the global rms and 5 px
    apertures on `image`, or None when sep is not installed: (background, extraction, apertures, n)."""
    if sep is None:
        try:
            import sep
        except ImportError:
            return None
    data = np.ascontiguousarray(image, dtype=np.float32)
    tb, bkg = time_calls(lambda: sep.Background(data, bw=128, bh=128, fw=3, fh=3), repeat)
    sub = data - bkg.back()
    old = sep.get_extract_pixstack()
    sep.set_extract_pixstack(max(old, data.size // 4))
    try:
        te, obj = time_calls(lambda: sep.extract(sub, 5.0, err=bkg.globalrms, minarea=5), repeat)
    finally:
        sep.set_extract_pixstack(old)
    ta, _ = time_calls(lambda: sep.sum_circle(sub, obj["x"], obj["y"], 5.0, err=bkg.globalrms), repeat)
    return tb.best, te.best, ta.best, len(obj)


def _eimage(rundir):
    """(visit id, pixels) of the first visit whose eimage kept its pixels, or (None, None)."""
    from twinkles_hpc import rundir as rd
    from twinkles_hpc.store.atomic import open_read
    for v in rd.read_visits(rundir):
        path = os.path.join(rundir, layout.eimage(v["visit_id"], v["band"]))
        with open_read(path) as fh:
            if "image" in fh:
                return int(v["visit_id"]), fh["image"][...]
    return None, None


def _rows(label, cost, target=None):
    t = "" if target is None else f"{target:8.2f}"
    lines = [f"  {label:<26}{cost['tasks']:6d}{cost['wall']:10.3f}{cost['cpu']:10.3f}{t}"]
    booked = 0.0
    for name, (w, c) in sorted(cost["steps"].items(), key=lambda kv: -kv[1][1]):
        if "/" not in name:
            booked += c
        lines.append(f"    {name:<30}{w:10.3f}{c:10.3f}")
    if cost["steps"]:
        lines.append(f"    {'(not in a step)':<30}{'':10}{cost['cpu'] - booked:10.3f}")
    return lines


def bench_chain(rundir, visits=8, band="r", seed=20161, repeat=3, store="default", threads=1):
    """Run (or reuse) the campaign in `rundir` and return the lines to print; `threads`: OpenMP threads of
    the warps and combinations (`run --threads`; CPU seconds then count every thread)."""
    wall = _run_campaign(rundir, visits, band, seed, keep_eimage=True, store=store, threads=threads)
    ran = "reused" if wall is None else f"ran in {wall:.0f} s"
    how = "one single-threaded process" if threads == 1 else f"one process, {threads} threads in warps and combinations"
    head = (f"bench chain: {visits} visits in band {band} on the full {instrument.SENSOR_NX} x "
            f"{instrument.SENSOR_NY} sensor, [store] {store}, {how} ({ran}; {rundir})")
    return chain_report(rundir, head, repeat)


def chain_report(rundir, head, repeat=3):
    """The table of a finished run's trace (any run: the stages it has) under the line `head`, and sep's
    floor on its first kept eimage."""
    from twinkles_hpc.validation.cost import read_trace
    recs = read_trace(os.path.join(rundir, layout.TRACE))
    n = sum(1 for r in recs if r["kind"] == "visit")
    costs = stage_costs(recs, n)
    lines = [head,
             "  seconds per visit: per-visit stages the mean of their tasks, amortised ones (coadd, template, "
             "Objects, associate) their total / visits; CPU target in the last column",
             f"  {'stage / step':<26}{'tasks':>6}{'wall s':>10}{'CPU s':>10}{'target':>8}"]
    total = {}
    for part, rows in (("level2", LEVEL2), ("all", DIA)):
        for label, kind in rows:
            if kind in costs:
                lines += _rows(label, costs[kind], TARGETS.get(kind))
        s = sum(costs[k]["cpu"] for _, k in LEVEL2 if k in costs)
        if part == "all":
            s += sum(costs[k]["cpu"] for _, k in DIA if k in costs)
        total[part] = s
        what = "before difference imaging" if part == "level2" else "with difference imaging"
        lines.append(f"  {'chain ' + what:<42}{s:10.3f}{TARGETS[part]:8.2f}")
    vid, image = _eimage(rundir)
    if image is None:
        lines.append("  sep: not run (no eimage kept its pixels)")
        return lines
    floor = sep_floor(image, repeat)
    if floor is None:
        lines.append("  sep: not run (not installed: pip install sep)")
    else:
        tb, te, ta, n_obj = floor
        cal = costs.get("calexp", {}).get("cpu", float("nan"))
        lines.append(f"  sep on visit {vid}'s eimage (floor of a calexp; best of {max(repeat, 1)}): background "
                     f"{tb:.3f} s + extraction {te:.3f} s ({n_obj} objects) + 5 px apertures {ta:.3f} s = "
                     f"{tb + te + ta:.3f} s; calexp / sep {cal / (tb + te + ta):.1f}x")
    return lines


def run(args):
    """`twinkles-hpc bench chain`: returns the lines to print."""
    visits = args.visits
    if visits < 4:
        raise InputError("bench chain", "--visits", "an integer >= 4 (a template needs 3 calexps)", visits)
    if args.band not in instrument.BANDS:
        raise InputError("bench chain", "--band", "one of " + ", ".join(instrument.BANDS), args.band)
    if args.store not in STORES:
        raise InputError("bench chain", "--store", " or ".join(STORES), args.store)
    kw = dict(repeat=args.repeat, store=args.store, threads=getattr(args, "threads", 1))
    if args.rundir:
        return bench_chain(os.path.abspath(args.rundir), visits, args.band, **kw)
    with tempfile.TemporaryDirectory(prefix="bench-chain-") as d:
        return bench_chain(os.path.join(d, "run"), visits, args.band, **kw)
