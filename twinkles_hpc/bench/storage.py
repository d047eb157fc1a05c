"""`twinkles-hpc bench storage --rundir RUNDIR`: bytes per full-sensor visit under each [store] option.

The products of one visit of an existing run (its eimage, calexp and difference) and its share of the
coadds and templates (each patch file over the visits of its band) are rewritten under each option set of
OPTIONS with store.tables.write_planes, read back, and scaled to a full 4000 x 4072 sensor by their pixel
counts. Times are one core's, for writing and reading the whole plane set. The quantised options change the
pixels, so their effect on the science is measured by validating a run made with them (docs/benchmarks.md,
"Storage"), not here.
"""
import glob
import os
import tempfile
import time

import h5py
import numpy as np

from twinkles_hpc.bench import common
from twinkles_hpc.errors import InputError
from twinkles_hpc.instrument import SENSOR_NX, SENSOR_NY
from twinkles_hpc.rundir import layout
from twinkles_hpc.store.atomic import open_read
from twinkles_hpc.store.tables import Storage, write_planes

#: Option sets compared: label -> Storage.
OPTIONS = {
    "raw (no filter)": Storage("none"),
    "lzf": Storage("lzf"),
    "gzip": Storage("gzip"),
    "gzip, quantize 0.25, variance 7 bits": Storage("gzip", 0.25, 7),
    "gzip, quantize 0.5, variance 6 bits": Storage("gzip", 0.5, 6),
}


def _planes(path, names):
    with open_read(path) as fh:
        return {n: fh[n][...] for n in names if n in fh}


def _eimage_planes(path):
    """The eimage's pixels with the variance they carry (electrons: Poisson plus read noise)."""
    with open_read(path) as fh:
        img = fh["image"][...]
        rn = float(fh.attrs.get("read_noise", 0.0))
    return {"image": img, "variance": np.maximum(img, 0.0).astype(np.float32) + np.float32(rn * rn)}


def _cost(planes, storage, tmp, drop=()):
    """(bytes, write s, read s) of `planes` under `storage`, less the planes `drop` (the eimage's variance,
    which only guides its quantisation)."""
    path = os.path.join(tmp, "p.h5")
    t0 = time.perf_counter()
    with h5py.File(path, "w") as fh:
        write_planes(fh, planes, compress=("mask",), storage=storage)
        for n in drop:
            del fh[n]
    tw = time.perf_counter() - t0
    t0 = time.perf_counter()
    with h5py.File(path, "r") as fh:
        for n in fh:
            fh[n][...]
    tr = time.perf_counter() - t0
    return os.path.getsize(path), tw, tr


def bench_storage(rundir, visit_id=None):
    vfile = os.path.join(rundir, layout.VISITS)
    if not os.path.isfile(vfile):
        raise InputError(rundir, "visits.h5", "a run directory", "no such file")
    with open_read(vfile) as fh:
        visits = fh["visits"][...]
    band_of = {int(v["visit_id"]): (v["band"].decode() if isinstance(v["band"], bytes) else str(v["band"]))
               for v in visits}
    vid = int(visits["visit_id"][0]) if visit_id is None else int(visit_id)
    if vid not in band_of:
        raise InputError(rundir, "--visit", "a visit id of the run", vid)
    band = band_of[vid]
    n_band = sum(1 for b in band_of.values() if b == band)
    kinds = []
    e = os.path.join(rundir, layout.eimage(vid, band))
    if os.path.isfile(e):
        kinds.append(("eimage", _eimage_planes(e), 1.0, ("variance",)))
    for name, rel in (("calexp", layout.calexp(vid, band)), ("difference", layout.diffim(vid, band))):
        if os.path.isfile(os.path.join(rundir, rel)):
            kinds.append((name, _planes(os.path.join(rundir, rel), ("image", "variance", "mask")), 1.0, ()))
    for name, pattern in (("coadd share", os.path.join("coadd", band, "patch-*.h5")),
                          ("template share", os.path.join("template", band, "patch-*.h5"))):
        paths = sorted(glob.glob(os.path.join(rundir, pattern)))
        if paths:
            kinds.append((name, _planes(paths[0], ("image", "variance", "mask", "n_visits", "depth")),
                          len(paths) / max(n_band, 1), ()))
    visit_planes = [p for k, p, _, _ in kinds if "share" not in k]
    if not visit_planes:
        raise InputError(rundir, "products", "a run with the eimage, calexp or difference of the visit", "none")
    ny, nx = visit_planes[0]["image"].shape
    scale = SENSOR_NX * SENSOR_NY / float(nx * ny)
    lines = [f"bytes per full-sensor visit ({SENSOR_NX} x {SENSOR_NY}), from visit {vid} ({band}) of {rundir} "
             f"({nx} x {ny} px, scaled x {scale:.2f}); coadd and template: one patch over the band's {n_band} "
             "visits",
             f"machine: {common.machine_line()}", "",
             "| option | " + " | ".join(k[0] for k in kinds) + " | total MB | write s | read s |",
             "|---|" + "---|" * (len(kinds) + 3)]
    with tempfile.TemporaryDirectory() as tmp:
        for label, st in OPTIONS.items():
            cells, total, tw, tr = [], 0.0, 0.0, 0.0
            for _, planes, share, drop in kinds:
                b, w, r = _cost(planes, st, tmp, drop)
                mb = b * scale * share / 1e6
                cells.append(f"{mb:.1f}")
                total += mb
                tw += w * scale * share
                tr += r * scale * share
            lines.append(f"| {label} | " + " | ".join(cells) + f" | {total:.1f} | {tw:.2f} | {tr:.2f} |")
    return lines


def run(args):
    """`twinkles-hpc bench storage`: returns the lines to print."""
    if not args.rundir:
        raise InputError("bench storage", "--rundir", "a run directory")
    return bench_storage(os.path.abspath(args.rundir), args.visit)
