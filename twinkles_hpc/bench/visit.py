"""`twinkles-hpc bench visit --rundir RUN`: one visit of an existing run with and without its variable
sources (supernovae, lensed quasar images), the cost of the variable sky per visit.
"""
import os
import tempfile

import numpy as np

from twinkles_hpc.bench.common import Timer
from twinkles_hpc.errors import InputError
from twinkles_hpc.imsim import visit as V
from twinkles_hpc.imsim.wcs import SensorWCS
from twinkles_hpc import rundir as rd
from twinkles_hpc.pipeline.stages.variables import chunk_of_visit
from twinkles_hpc.rundir import layout
from twinkles_hpc.store.atomic import open_read
from twinkles_hpc.store.tables import read_table


def _load_visit_inputs(rundir, visit_id):
    """What one visit of the run directory renders: (config, VisitSpec, stars, galaxies, variables, AB
    magnitudes of the variables in this visit, inf where they have no light). visit_id None: the first.

    Everything the benchmark reads from the run directory is read here, through public functions and the
    store, as the visit task reads it."""
    cfg = rd.load_config(rundir)
    visits = rd.read_visits(rundir)
    rows = visits if visit_id is None else visits[visits["visit_id"] == visit_id]
    if len(rows) == 0:
        raise InputError(rundir, "--visit", "a visit id of the run's cadence", visit_id)
    spec = V.VisitSpec.from_row(rows[0])
    with open_read(os.path.join(rundir, layout.TRUTH)) as fh:
        stars, galaxies, variables = [read_table(fh[n]) for n in ("stars", "galaxies", "variables")]
    var_mags = np.full(len(variables), np.inf)
    if len(variables):
        chunk = chunk_of_visit(visits, spec.visit_id)
        with open_read(os.path.join(rundir, layout.variables_truth(chunk))) as fh:
            truth = read_table(fh["truth"])              # sorted by visit id
        truth = truth[slice(*np.searchsorted(truth["visit_id"], [spec.visit_id, spec.visit_id + 1]))]
        var_mags[np.searchsorted(variables["source_id"], truth["source_id"])] = truth["mag"]
    return cfg, spec, stars, galaxies, variables, var_mags


def bench_visit(rundir, visit_id=None, repeat=5):
    """Time one visit of an existing run with and without its variable sources: the source selection and
    rendering (CPU only), then the whole visit (render, noise, HDF5 write with fsync, which the disk makes
    noisy). Returns the lines to print."""
    cfg, spec, stars, galaxies, variables, mags = _load_visit_inputs(rundir, visit_id)
    sn = cfg.sensor
    wcs = SensorWCS(spec.ra, spec.dec, spec.rot_sky_pos, sn.nx, sn.ny, sn.pixel_scale)
    psf = V.make_psf(spec, sn, cfg.visit)
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

    t_render = {c[0]: Timer(warmup=1) for c in cases}    # the first round warms up
    t_whole = {c[0]: Timer(warmup=1) for c in cases}
    n_src = {}
    with tempfile.TemporaryDirectory() as d:
        for _ in range(repeat + 1):            # alternate the cases
            for k, (label, var, m) in enumerate(cases):
                n_src[label] = t_render[label](render, var, m)
                t_whole[label](whole, var, m, d, k)
    ra, wa = t_render["static sky only"].median, t_whole["static sky only"].median
    rb, wb = t_render["with variables"].median, t_whole["with variables"].median
    return [(f"visit bench: visit {spec.visit_id} ({spec.band}) of {rundir}, {sn.nx}x{sn.ny} px; "
             f"{n_src['static sky only']} static sources on the sensor, "
             f"{n_src['with variables'] - n_src['static sky only']} variable ones with light"),
            (f"  select + render:  static {ra:.3f} s, with variables {rb:.3f} s: {rb - ra:+.3f} s "
             f"({100 * (rb / ra - 1):+.1f}%)  (medians of {repeat})"),
            (f"  whole visit:      static {wa:.3f} s, with variables {wb:.3f} s: {wb - wa:+.3f} s "
             f"({100 * (wb / wa - 1):+.1f}%)  (includes noise and the fsynced HDF5 write)")]


def run(args):
    """`twinkles-hpc bench visit`: returns the lines to print."""
    if not args.rundir:
        raise SystemExit("twinkles-hpc bench visit needs --rundir RUNDIR")
    return bench_visit(os.path.abspath(args.rundir), args.visit, args.repeat)
