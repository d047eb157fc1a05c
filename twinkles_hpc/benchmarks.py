"""`twinkles-hpc bench ...`: measured speed against peer tools, side by side in one run.

`bench imsim` renders a full-sensor visit (2000 stars, 5000 galaxies by default) with our kernels and
with GalSim, then times the rest of a visit (sky + noise, HDF5 write), and optionally appends the
results to a markdown file with the command, the machine and the date.
"""
from __future__ import annotations

import os
import platform
import shlex
import sys
import tempfile
import time


def machine_line():
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, {platform.system()}"


def visit_steps(band="r", exptime=30.0, sky_mag=21.2):
    """The non-render steps of a visit, timed by bench_imsim after the render: sky + noise, write."""
    from twinkles_hpc import instrument
    from twinkles_hpc.imsim import noise
    from twinkles_hpc.store.atomic import atomic_h5
    sky_e = noise.sky_electrons(sky_mag, band, exptime)
    state = {}

    def add_noise(image):
        state["pixels"], _ = noise.add_sky_and_noise(image, sky_e, instrument.READ_NOISE, (1, 1, 1))

    def write(image):
        with tempfile.TemporaryDirectory() as d:
            with atomic_h5(os.path.join(d, "eimage.h5")) as fh:
                fh.create_dataset("image", data=state["pixels"])

    return [("sky+noise", add_noise), ("write HDF5", write)]


def record(path, command, lines):
    stamp = time.strftime("%Y-%m-%d")
    block = [f"\n### `{command}`", "", f"- date: {stamp}", f"- machine: {machine_line()}", "", "```",
             *lines, "```", ""]
    with open(path, "a") as fh:
        fh.write("\n".join(block))


def bench_visit(rundir, visit_id=None, repeat=3):
    """Time one visit of an existing run (render, noise, write) with and without its variable sources
    (supernovae, lensed quasar images): the cost of the time-variable sky per visit."""
    import numpy as np

    from twinkles_hpc.imsim.visit import VisitSpec, simulate_visit
    from twinkles_hpc.parallel import campaign
    cfg = campaign.load_rundir_config(rundir)
    visits = campaign.existing_visits(rundir)
    v = visits[0] if visit_id is None else visits[visits["visit_id"] == visit_id][0]
    spec = VisitSpec.from_row(v)
    stars, galaxies, variables = campaign._catalog.get(os.path.join(rundir, "truth.h5"),
                                                      ("stars", "galaxies", "variables"))
    chunk = next(k for k, ids in enumerate(campaign.truth_chunks(visits)) if spec.visit_id in ids)
    mags = campaign.visit_variable_mags(rundir, chunk, spec.visit_id, variables)
    times = {}
    with tempfile.TemporaryDirectory() as d:
        for label, var, m in (("static sky only", None, None), ("with variables", variables, mags)):
            ts = []
            for _ in range(repeat):
                t0 = time.perf_counter()
                simulate_visit(spec, stars, galaxies, cfg, os.path.join(d, "e.h5"), os.path.join(d, "c.h5"),
                               variables=var, var_mags=m)
                ts.append(time.perf_counter() - t0)
            times[label] = float(np.median(ts))
    n_var = int(np.isfinite(mags).sum())
    a, b = times["static sky only"], times["with variables"]
    return [f"visit bench: {rundir} visit {spec.visit_id} ({spec.band}), {cfg.sensor.nx}x{cfg.sensor.ny} px, "
            f"{len(variables)} variable sources in the field, {n_var} with light in this visit",
            f"  static sky only: {a:.3f} s (median of {repeat}, render + noise + write)",
            f"  with variables:  {b:.3f} s; the variable sky costs {b - a:+.3f} s ({100 * (b / a - 1):+.1f}%)"]


def main(args):
    if args.what == "visit":
        if not args.rundir:
            raise SystemExit("twinkles-hpc bench visit needs --rundir RUNDIR")
        lines = bench_visit(os.path.abspath(args.rundir), args.visit, args.repeat)
        for line in lines:
            print(line)
        if args.record:
            record(args.record, "twinkles-hpc " + " ".join(shlex.quote(a) for a in sys.argv[1:]), lines)
        return 0
    from twinkles_hpc.bench import bench_imsim
    res = bench_imsim(nx=args.nx, ny=args.ny, n_stars=args.stars, n_galaxies=args.galaxies,
                      repeat=args.repeat, galsim=False if args.no_galsim else None,
                      galsim_objects=args.galsim_objects, extra_steps=visit_steps())
    lines = list(res["lines"])
    for line in lines:
        print(line)
    if args.record:
        record(args.record, "twinkles-hpc " + " ".join(shlex.quote(a) for a in sys.argv[1:]), lines)
        print(f"recorded in {args.record}")
    return 0

