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


def bench_visit(rundir, visit_id=None, repeat=5):
    """Time one visit of an existing run with and without its variable sources (supernovae, lensed
    quasar images): the source selection and rendering (CPU only), then the whole visit (render,
    noise, HDF5 write with fsync, which the disk makes noisy). The cost of the variable sky per visit."""
    import numpy as np

    from twinkles_hpc.imsim import visit as V
    from twinkles_hpc.imsim.wcs import SensorWCS
    from twinkles_hpc.parallel import campaign
    cfg = campaign.load_rundir_config(rundir)
    visits = campaign.existing_visits(rundir)
    v = visits[0] if visit_id is None else visits[visits["visit_id"] == visit_id][0]
    spec = V.VisitSpec.from_row(v)
    stars, galaxies, variables = campaign._catalog.get(os.path.join(rundir, "truth.h5"),
                                                      ("stars", "galaxies", "variables"))
    chunk = next(k for k, ids in enumerate(campaign.truth_chunks(visits)) if spec.visit_id in ids)
    mags = campaign.visit_variable_mags(rundir, chunk, spec.visit_id, variables)
    sn = cfg.sensor
    wcs = SensorWCS(spec.ra, spec.dec, spec.rot_sky_pos, sn.nx, sn.ny, sn.pixel_scale)
    psf = V.make_psf(spec, sn, cfg.imsim)
    cases = (("static sky only", None, None), ("with variables", variables, mags))

    def render(var, m):
        src, _ = V.select_sources(stars, galaxies, spec, wcs, var, m)
        img = np.zeros((sn.ny, sn.nx))
        V.render_chunk(img, src, slice(0, len(src)), psf, wcs.jacobian)
        return len(src)

    def whole(var, m, d, k):
        out = os.path.join(d, f"e{k}.h5")
        if os.path.exists(out):
            os.remove(out)
        V.simulate_visit(spec, stars, galaxies, cfg, out, os.path.join(d, "c.h5"), variables=var, var_mags=m)

    t_render = {c[0]: [] for c in cases}
    t_whole = {c[0]: [] for c in cases}
    n_src = {}
    with tempfile.TemporaryDirectory() as d:
        for i in range(repeat + 1):            # alternate the cases; the first round warms up
            for k, (label, var, m) in enumerate(cases):
                t0 = time.perf_counter()
                n_src[label] = render(var, m)
                t1 = time.perf_counter()
                whole(var, m, d, k)
                t2 = time.perf_counter()
                if i:
                    t_render[label].append(t1 - t0)
                    t_whole[label].append(t2 - t1)
    med = {k: (float(np.median(t_render[k])), float(np.median(t_whole[k]))) for k in t_render}
    (ra, wa), (rb, wb) = med["static sky only"], med["with variables"]
    return [f"visit bench: visit {spec.visit_id} ({spec.band}) of {rundir}, {sn.nx}x{sn.ny} px; "
            f"{n_src['static sky only']} static sources on the sensor, "
            f"{n_src['with variables'] - n_src['static sky only']} variable ones with light",
            f"  select + render:  static {ra:.3f} s, with variables {rb:.3f} s: {rb - ra:+.3f} s "
            f"({100 * (rb / ra - 1):+.1f}%)  (medians of {repeat})",
            f"  whole visit:      static {wa:.3f} s, with variables {wb:.3f} s: {wb - wa:+.3f} s "
            f"({100 * (wb / wa - 1):+.1f}%)  (includes noise and the fsynced HDF5 write)"]


def main(args):
    if args.what in ("detect", "forced"):
        if args.what == "detect":
            from twinkles_hpc.bench_detect import bench_detect
            res = bench_detect(nx=args.nx, ny=args.ny, n_stars=args.stars, n_galaxies=args.galaxies)
        else:
            from twinkles_hpc.bench_forced import bench_forced
            res = bench_forced(n_objects=args.stars, nx=args.nx, ny=args.ny, repeat=args.repeat)
        for line in res["lines"]:
            print(line)
        if args.record:
            record(args.record, "twinkles-hpc " + " ".join(shlex.quote(a) for a in sys.argv[1:]), res["lines"])
        return 0
    if args.what == "report":
        if not args.rundir:
            raise SystemExit("twinkles-hpc bench report needs --rundir RUNDIR")
        from twinkles_hpc.bench_report import bench_report
        lines = bench_report(args.rundir)
        for line in lines:
            print(line)
        if args.record:
            record(args.record, "twinkles-hpc " + " ".join(shlex.quote(a) for a in sys.argv[1:]), lines)
        return 0
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

