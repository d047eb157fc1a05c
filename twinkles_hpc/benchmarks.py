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


def main(args):
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

