"""A run from its config: the cadence it selects, its context and its task graph."""
from __future__ import annotations

import numpy as np

from twinkles_hpc import rundir as rundir_mod
from twinkles_hpc.errors import InputError
from twinkles_hpc.pipeline import registry
from twinkles_hpc.pipeline.context import RunContext


def select_cadence(cfg):
    """The visits this run simulates, from the config (synthetic or a real OpSim file)."""
    from twinkles_hpc.sky import cadence
    from twinkles_hpc.sky.opsim import read_opsim
    c = cfg.cadence
    if c.source == "synthetic":
        try:
            visits = cadence.synthetic_cadence(cfg.run.seed, years=c.years, ra=c.ra, dec=c.dec)
        except InputError as exc:        # the config's key, not the function's argument
            raise InputError(cfg.path, "cadence.years", exc.expected, exc.got) from None
        what = "the synthetic cadence"
    else:
        path = cfg.resolve_path(c.source)
        visits = read_opsim(path, field_id=None if c.field_id < 0 else c.field_id, ra=c.ra,
                            dec=c.dec, radius_deg=c.select_radius, use_dither=c.use_dither)
        what = path
    if c.one_per_night_band:
        visits = cadence.one_per_night_band(visits)
    keep = np.isin(visits["band"], list(c.bands)) & (visits["mjd"] >= c.mjd_min)
    if c.mjd_max:
        keep &= visits["mjd"] < c.mjd_max
    visits = visits[keep]
    if c.max_visits and len(visits) > c.max_visits:
        try:
            visits = cadence.subsample(visits, c.max_visits)
        except InputError as exc:
            raise InputError(cfg.path, "cadence.max_visits", exc.expected, exc.got) from None
    if len(visits) == 0:
        raise InputError(cfg.path, "cadence", f"a selection with at least one visit from {what} "
                         f"(bands {c.bands!r}, mjd {c.mjd_min}..{c.mjd_max or 'end'})", "no visits")
    if c.exptime:
        visits = visits.copy()
        visits["exptime"] = c.exptime
    return visits


def plan(cfg, rundir, visits=None, log=None, alter=None):
    """(context, tasks) of a run: the visits are the run directory's when it has them (a restart has the
    same graph), else `visits`, else those the config selects."""
    stored = rundir_mod.read_visits(rundir) if rundir else None
    if stored is not None:
        visits = stored
    elif visits is None:
        visits = select_cadence(cfg)
    ctx = RunContext(cfg, rundir, visits, log=log)
    return ctx, registry.build_tasks(ctx, alter)
