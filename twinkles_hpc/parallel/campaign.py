"""A campaign as a task graph over one run directory.

Run directory layout (docs/design.md):
    config.toml, config.json   the config as given, and its canonical form (a rerun must match it)
    visits.h5                  the selected cadence (written by rank 0 before any task)
    truth.h5                   static sky (stars, galaxies) and the cadence: task `sky`
    eimages/vNNNNNNNN-B.h5     one eimage per visit: task `visit/NNNNNNNN`
    eimages/band-B.h5          per-band virtual datasets over the eimages (after the last visit)
    checkpoints/               partial visits (mid-visit checkpoints), removed when a visit completes
    journal.jsonl, trace.jsonl the append-only journal and the per-task trace
    .lock                      flock held by rank 0 while a run is active
"""
from __future__ import annotations

import json
import os
import shutil

import numpy as np

from twinkles_hpc import config as config_mod
from twinkles_hpc.errors import InputError, RunDirError
from twinkles_hpc.faults import fault
from twinkles_hpc.parallel.engine import Task
from twinkles_hpc.store.atomic import atomic_h5, open_read
from twinkles_hpc.store.tables import read_table, write_table

SKY_TASK = "sky"


def visit_task_id(visit_id):
    return f"visit/{int(visit_id):08d}"


def eimage_relpath(visit_id, band):
    return os.path.join("eimages", f"v{int(visit_id):08d}-{band}.h5")


# -- cadence ---------------------------------------------------------------------------------------
def select_cadence(cfg):
    """The visits this run simulates, from the config (synthetic or a real OpSim file)."""
    from twinkles_hpc.sky import cadence
    c = cfg.cadence
    if c.source == "synthetic":
        visits = cadence.synthetic_cadence(cfg.run.seed, years=c.years, ra=c.ra, dec=c.dec)
        what = "the synthetic cadence"
    else:
        path = cfg.resolve_path(c.source)
        visits = cadence.read_opsim(path, field_id=None if c.field_id < 0 else c.field_id, ra=c.ra,
                                    dec=c.dec, radius_deg=c.select_radius, use_dither=c.use_dither)
        what = path
    if c.one_per_night_band:
        visits = cadence.one_per_night_band(visits)
    keep = np.isin(visits["band"], list(c.bands)) & (visits["mjd"] >= c.mjd_min)
    if c.mjd_max:
        keep &= visits["mjd"] < c.mjd_max
    visits = visits[keep]
    if c.max_visits and len(visits) > c.max_visits:
        visits = cadence.subsample(visits, c.max_visits)
    if len(visits) == 0:
        raise InputError(cfg.path, "cadence", f"a selection with at least one visit from {what} "
                         f"(bands {c.bands!r}, mjd {c.mjd_min}..{c.mjd_max or 'end'})", "no visits")
    if c.exptime:
        visits = visits.copy()
        visits["exptime"] = c.exptime
    return visits


# -- the run directory -----------------------------------------------------------------------------
def check_rundir(cfg, rundir):
    """Refuse, touching nothing, a directory made by another config or that is not a run directory."""
    cj = os.path.join(rundir, "config.json")
    if os.path.exists(cj):
        with open(cj) as fh:
            old = json.load(fh)
        new = json.loads(cfg.fingerprint())
        diff = [f"{s}.{k}" for s in new for k in new[s] if old.get(s, {}).get(k) != new[s][k]]
        if diff:
            raise RunDirError(f"{rundir}: run directory was made with a different config "
                              f"({', '.join(diff[:5])} differ{'s' if len(diff) == 1 else ''}); "
                              "use a new run directory")
    elif os.path.isdir(rundir) and os.listdir(rundir):
        raise RunDirError(f"{rundir}: directory exists, is not empty and is not a twinkles-hpc run "
                          "directory (no config.json); choose another -o")


def existing_visits(rundir):
    path = os.path.join(rundir, "visits.h5")
    if not os.path.exists(path):
        return None
    with open_read(path) as fh:
        return read_table(fh["visits"])


def init_rundir(cfg, rundir, config_text, visits):
    """Create the layout and record the config and the cadence (first run only)."""
    for d in ("eimages", "checkpoints"):
        os.makedirs(os.path.join(rundir, d), exist_ok=True)
    path = os.path.join(rundir, "visits.h5")
    if not os.path.exists(path):
        with atomic_h5(path) as fh:
            write_table(fh, "visits", visits)
    cj = os.path.join(rundir, "config.json")
    if not os.path.exists(cj):
        with open(os.path.join(rundir, "config.toml"), "w") as fh:
            fh.write(config_text)
        with open(cj + ".tmp", "w") as fh:
            json.dump(cfg.to_dict(), fh, indent=1, sort_keys=True)
        os.replace(cj + ".tmp", cj)


def load_rundir_config(rundir):
    cj = os.path.join(rundir, "config.json")
    if not os.path.exists(cj):
        raise InputError(rundir, "config.json", "a twinkles-hpc run directory", "not found")
    with open(cj) as fh:
        return config_mod.from_dict(json.load(fh), path=cj, base_dir=rundir)


# -- the graph -------------------------------------------------------------------------------------
def visit_cost(visit, sensor):
    """Predicted relative cost of a visit: pixels (noise, I/O) plus PSF area (rendering)."""
    npix = sensor.nx * sensor.ny / 16.288e6
    return float(npix * (1.0 + 0.5 * (visit["fwhm_geom"] / 0.7) ** 2))


def build_tasks(cfg, visits):
    sky_cost = 2.0 * (cfg.sky.radius / 0.3) ** 2
    tasks = [Task(SKY_TASK, "sky", cost=sky_cost)]
    for v in visits:
        tasks.append(Task(visit_task_id(v["visit_id"]), "visit", cost=visit_cost(v, cfg.sensor),
                          deps=(SKY_TASK,), params={"visit_id": int(v["visit_id"])}))
    return tasks


# -- task bodies -----------------------------------------------------------------------------------
def run_sky(cfg, rundir, visits):
    from twinkles_hpc.sky.static import build_static_sky
    s = cfg.sky
    sky = build_static_sky(cfg.run.seed, cfg.cadence.ra, cfg.cadence.dec, s.radius,
                           star_mag_limit_r=s.star_mag_limit, galaxy_mag_limit_r=s.galaxy_mag_limit,
                           star_density_scale=s.star_density_scale,
                           galaxy_density_scale=s.galaxy_density_scale)
    path = os.path.join(rundir, "truth.h5")
    with atomic_h5(path) as fh:
        write_table(fh, "stars", sky["stars"])
        write_table(fh, "galaxies", sky["galaxies"])
        write_table(fh, "visits", visits)
        fh.attrs["seed"] = cfg.run.seed
        fh.attrs["ra"], fh.attrs["dec"], fh.attrs["radius_deg"] = cfg.cadence.ra, cfg.cadence.dec, s.radius
    return {"truth.h5": os.path.getsize(path)}


class _CatalogCache:
    """Each worker reads truth.h5 once and keeps it for all its visits."""

    def __init__(self):
        self.key, self.value = None, None

    def get(self, path):
        st = os.stat(path)
        key = (path, st.st_mtime_ns, st.st_size)
        if key != self.key:
            with open_read(path) as fh:
                self.value = (read_table(fh["stars"]), read_table(fh["galaxies"]))
            self.key = key
        return self.value


_catalog = _CatalogCache()


def run_visit(cfg, rundir, visit, should_stop, log=None):
    from twinkles_hpc.imsim.visit import VisitSpec, simulate_visit
    spec = VisitSpec.from_row(visit)
    stars, galaxies = _catalog.get(os.path.join(rundir, "truth.h5"))
    rel = eimage_relpath(spec.visit_id, spec.band)
    out = os.path.join(rundir, rel)
    ckpt = os.path.join(rundir, "checkpoints", f"v{spec.visit_id:08d}.h5")
    written = simulate_visit(spec, stars, galaxies, cfg, out, ckpt, should_stop, log=log)
    return {os.path.relpath(p, rundir): n for p, n in written.items()}


class Executor:
    """execute(task, should_stop) for the engine: dispatches on the task kind."""

    def __init__(self, cfg, rundir, visits, log=None):
        self.cfg, self.rundir, self.log = cfg, rundir, log
        self.visits = {int(v["visit_id"]): v for v in visits}

    def __call__(self, task, should_stop):
        if fault("raise_in_task") == task.id:
            raise RuntimeError(f"injected fault in {task.id} (TWINKLES_HPC_FAULT)")
        if task.kind == "sky":
            return run_sky(self.cfg, self.rundir, np.array(list(self.visits.values())))
        if task.kind == "visit":
            return run_visit(self.cfg, self.rundir, self.visits[task.params["visit_id"]], should_stop,
                             self.log)
        raise ValueError(f"unknown task kind {task.kind!r}")


# -- after the last task ---------------------------------------------------------------------------
def write_band_views(rundir, visits, sensor):
    """Per band, one HDF5 virtual dataset (n_visits, ny, nx) over the per-visit eimage files."""
    import h5py
    out = {}
    for band in sorted(set(visits["band"])):
        vb = visits[visits["band"] == band]
        layout = h5py.VirtualLayout(shape=(len(vb), sensor.ny, sensor.nx), dtype="f4")
        for i, v in enumerate(vb):
            src = os.path.basename(eimage_relpath(v["visit_id"], band))
            layout[i] = h5py.VirtualSource(src, "image", shape=(sensor.ny, sensor.nx))
        path = os.path.join(rundir, "eimages", f"band-{band}.h5")
        with atomic_h5(path) as fh:
            fh.create_virtual_dataset("image", layout, fillvalue=np.nan)
            fh.create_dataset("visit_id", data=vb["visit_id"])
            fh.create_dataset("mjd", data=vb["mjd"])
        out[band] = path
    return out


def clean_checkpoints(rundir):
    d = os.path.join(rundir, "checkpoints")
    if os.path.isdir(d) and not any(f.endswith(".h5") for f in os.listdir(d)):
        shutil.rmtree(d, ignore_errors=True)
