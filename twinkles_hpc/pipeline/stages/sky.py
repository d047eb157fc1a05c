"""Stage sky: the static sky, the sprinkled lensed quasars and the supernovae -> truth.h5, refcat.h5."""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from twinkles_hpc.options import opt
from twinkles_hpc.pipeline.stage import SETUP, Stage
from twinkles_hpc.rundir import layout
from twinkles_hpc.store.atomic import atomic_h5
from twinkles_hpc.store.tables import write_table


@dataclass
class SkySection:
    radius: float = opt(0.3, "deg",
                        "Radius of the static-sky catalogue around the pointing (covers every rotation).",
                        lo=0.0, lo_open=True, hi=5.0)
    star_mag_limit: float = opt(26.5, "mag", "Faintest star, r band AB.", lo=10.0, hi=32.0)
    galaxy_mag_limit: float = opt(28.0, "mag", "Faintest galaxy (bulge + disk), r band AB.", lo=10.0, hi=32.0)
    star_density_scale: float = opt(1.0, "", "Multiplier on the star number counts.", lo=0.0)
    galaxy_density_scale: float = opt(1.0, "", "Multiplier on the galaxy number counts.", lo=0.0)


class SkyStage(Stage):
    name = "sky"
    doc = "the static sky, lensed quasars and supernovae (truth.h5) and the reference catalogue (refcat.h5)"
    section = SkySection
    outputs = (layout.TRUTH, layout.REFCAT)
    tables = ("TruthStar", "TruthGalaxy", "TruthSupernova", "TruthLensSystem", "TruthLensedImage", "TruthVariable",
              "TruthVariableFlux")
    colour = "#4c72b0"
    cost_class = SETUP
    optional = False

    def tasks(self, ctx, up):
        return [self.task(None, 2.0 * (ctx.cfg.sky.radius / 0.3) ** 2)]

    def run(self, ctx, task, should_stop):
        from twinkles_hpc.sky import variables as var
        from twinkles_hpc.sky.refcat import make_refcat
        from twinkles_hpc.sky.static import build_static_sky
        cfg, visits = ctx.cfg, ctx.visits
        s, ra, dec, seed = cfg.sky, cfg.cadence.ra, cfg.cadence.dec, cfg.run.seed
        sky = build_static_sky(seed, ra, dec, s.radius, star_mag_limit_r=s.star_mag_limit,
                               galaxy_mag_limit_r=s.galaxy_mag_limit, star_density_scale=s.star_density_scale,
                               galaxy_density_scale=s.galaxy_density_scale)
        galaxies, systems, images = _lensed_quasars(cfg, sky["galaxies"])
        sne = _supernovae(cfg, galaxies, visits)
        path = ctx.path(layout.TRUTH)
        with atomic_h5(path) as fh:
            write_table(fh, "stars", sky["stars"])
            write_table(fh, "galaxies", galaxies)
            write_table(fh, "visits", visits)
            write_table(fh, "supernovae", sne)
            write_table(fh, "lens_systems", systems)
            write_table(fh, "lensed_images", images)
            write_table(fh, "variables", var.variable_sources(sne, images, systems))
            fh.attrs["seed"] = seed
            fh.attrs["ra"], fh.attrs["dec"], fh.attrs["radius_deg"] = ra, dec, s.radius
        ref = ctx.path(layout.REFCAT)
        with atomic_h5(ref) as fh:
            write_table(fh, "refcat", make_refcat(seed, sky["stars"]))
        return {layout.TRUTH: os.path.getsize(path), layout.REFCAT: os.path.getsize(ref)}


    def ingest_steps(self, ctx, up):
        deps = [up.get("sky", None, for_task="ingest/truth")] + list(up.tasks("variables").values())
        return [("truth", deps, 0.2, {})]

    def ingest(self, ctx, engine, step, params, **kw):
        from twinkles_hpc.store import db
        return db.ingest_truth(engine, ctx.rundir, **kw)


def _lensed_quasars(cfg, galaxies):
    """(galaxies with the lenses sprinkled in, lens systems, quasar images)."""
    from twinkles_hpc.sky import sprinkler
    if not cfg.lensing.enabled:
        return (galaxies, np.zeros(0, dtype=sprinkler.LENS_SYSTEM_DTYPE),
                np.zeros(0, dtype=sprinkler.LENSED_IMAGE_DTYPE))
    L, seed = cfg.lensing, cfg.run.seed
    if L.source == "synthetic":
        area = np.pi * cfg.sky.radius ** 2
        om10 = sprinkler.draw_om10_like(seed, max(1, int(np.ceil(2 * L.density * area + 10))))
    else:
        from twinkles_hpc.sky.lensing import read_om10
        om10 = read_om10(cfg.resolve_path(L.source))
    return sprinkler.sprinkle(seed, galaxies, om10, cfg.cadence.ra, cfg.cadence.dec, cfg.sky.radius,
                              density_per_deg2=L.density)


def _supernovae(cfg, galaxies, visits):
    from twinkles_hpc.sky import supernovae
    if not cfg.supernovae.enabled:
        return np.zeros(0, dtype=supernovae.SN_DTYPE)
    S = cfg.supernovae
    return supernovae.make_supernovae(cfg.run.seed, galaxies, cfg.cadence.ra, cfg.cadence.dec, cfg.sky.radius,
                                      float(visits["mjd"].min()), float(visits["mjd"].max()), z_max=S.z_max,
                                      rate_boost=S.rate_boost, hostless_twins=S.hostless_twins)


STAGE = SkyStage()
