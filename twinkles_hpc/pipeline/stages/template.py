"""Stage template: per band (and, for yearly templates, per data-release year) and patch, a template coadd
from the best-seeing calexps, built by the memory-bounded coadd; the difference imaging subtracts it."""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from twinkles_hpc.errors import InputError
from twinkles_hpc.options import opt
from twinkles_hpc.pipeline.stage import AMORTISED, Stage, Switch
from twinkles_hpc.pipeline.stages.coadd import FULL_SENSOR_PIXELS, patch_tasks, run_patch_task, visit_patches
from twinkles_hpc.rundir import layout
from twinkles_hpc.store.atomic import open_read

#: Days of a data-release year (the yearly templates' unit of time).
YEAR_DAYS = 365.25


@dataclass
class TemplateSection(Switch):
    enabled: bool = opt(False, "",
                        "Build template coadds for difference imaging (template/B/patch-I-J.h5); needs "
                        "[coadd] enabled = true (the skymap and the coadd settings).")
    mode: str = opt("single", "",
                    "'single': one template per band from the whole survey; 'yearly': the visits of year k "
                    "are differenced against a template from the years before k (Twinkles Run 3).",
                    choices=("single", "yearly"))
    first_year: str = opt("next", "",
                          "Yearly mode, year 0 (nothing before it): 'next' uses a template from year 1, "
                          "'skip' leaves year 0 without a template.", choices=("next", "skip"))
    max_visits: int = opt(12, "", "Most calexps in a template: the best-seeing ones.", lo=1, hi=10_000)
    min_visits: int = opt(3, "", "Fewest calexps a template needs (else it is recorded as not made).",
                          lo=1, hi=10_000)
    candidate_factor: float = opt(2.0, "",
                                  "Calexps considered: this many times max_visits, the best by the cadence's "
                                  "seeing; among them the task keeps the best by their measured PSF FWHM.",
                                  lo=1.0, hi=100.0)
    fwhm_max: float = opt(0.0, "arcsec",
                          "Leave out calexps whose measured PSF FWHM is larger (0 = no limit).", lo=0.0)


def visit_years(visits):
    """Data-release year of every visit: whole years since the first visit."""
    return ((visits["mjd"] - visits["mjd"].min()) // YEAR_DAYS).astype(int)


def template_inputs(cfg, visits):
    """{(band, year or None): visit ids that may enter the template, the best by the cadence's seeing,
    candidate_factor x max_visits at most} and {visit id: (band, year or None) of its template}."""
    T = cfg.template
    years = visit_years(visits)
    n = int(np.ceil(T.candidate_factor * T.max_visits))
    pools, of_visit = {}, {}
    for b in sorted(set(visits["band"])):
        inb = visits["band"] == b
        if T.mode == "single":
            groups = {None: inb}
            of_visit.update({int(v): (str(b), None) for v in visits["visit_id"][inb]})
        else:
            groups = {}
            present = sorted(set(years[inb]))
            for k in present:
                before = inb & (years < k)
                if k == present[0]:
                    if T.first_year == "skip" or len(present) == 1:
                        continue
                    before = inb & (years == present[1])          # year 0 against the next year's visits
                groups[k] = before
                of_visit.update({int(v): (str(b), k) for v in visits["visit_id"][inb & (years == k)]})
        for key, sel in groups.items():
            cand = visits[sel]
            order = np.lexsort((cand["visit_id"], cand["fwhm_eff"]))
            pools[(str(b), key)] = sorted(int(v) for v in cand["visit_id"][order[:n]])
    return pools, of_visit


def measured_fwhm_px(path):
    """The PSF FWHM of a calexp at its centre (pixels), from its PSF model; inf for a failed calibration."""
    from twinkles_hpc.level2.psf import fwhm_from_json
    with open_read(path) as fh:
        a = fh.attrs
        if not a.get("calib_ok", True):
            return np.inf
        ny, nx = fh["image"].shape
        return fwhm_from_json(a["psf"], (nx - 1) / 2.0, (ny - 1) / 2.0)


class TemplateStage(Stage):
    name = "template"
    doc = "template coadds of the best-seeing calexps (template/B/patch-I-J.h5, yearly: template/B/yK/)"
    section = TemplateSection
    requires = ("calexp", "coadd")
    outputs = (layout.template,)
    colour = "#64b5cd"
    cost_class = AMORTISED

    def check_config(self, cfg):
        T = cfg.template
        if T.min_visits > T.max_visits:
            raise InputError(cfg.path, "template.min_visits", f"a value <= template.max_visits ({T.max_visits})",
                             T.min_visits)

    def tasks(self, ctx, up):
        """One `template/B/I-J` (yearly: `template/B/K/I-J`) task per band, year and patch that a candidate
        calexp overlaps, after those calexps; cost as a coadd of max_visits inputs."""
        cfg, visits = ctx.cfg, ctx.visits
        pools, _ = template_inputs(cfg, visits)
        overlaps = visit_patches(ctx)
        out = []
        for (band, year), ids in sorted(pools.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0)):
            patches = {}
            for v in ids:
                for index in overlaps[v]:
                    patches.setdefault(index, []).append(v)
            for (i, j), vids in sorted(patches.items()):
                key = template_key(band, year, i, j)
                deps = [up.get("calexp", layout.visit_key(v), for_task=layout.task_id(self.name, key)) for v in vids]
                patch = ctx.skymap.patch(i, j)
                _, _, nx, ny = patch.bbox
                cost = nx * ny * min(len(vids), cfg.template.max_visits) / FULL_SENSOR_PIXELS
                out += patch_tasks(self, cfg, key, cost, deps, patch, band=band, year=year, patch=(i, j),
                                   visit_ids=vids)
        return out

    def run(self, ctx, task, should_stop):
        """Keep the best-seeing calibrated calexps (measured PSF FWHM), at most max_visits; coadd them (or
        choose them once for the tiles, one tile, or assemble the tiles: coadd.patch_tasks). With fewer than
        min_visits the template is recorded as not made (attributes ok = False and reason) and the
        difference imaging skips its visits."""
        T, p = ctx.cfg.template, task.params
        band, year, index = p["band"], p["year"], tuple(p["patch"])

        def choose():
            paths = [ctx.path(layout.calexp(v, band)) for v in p["visit_ids"]]
            fwhm = np.array([measured_fwhm_px(q) for q in paths]) * ctx.cfg.sensor.pixel_scale
            good = np.isfinite(fwhm) & ((fwhm <= T.fwhm_max) if T.fwhm_max > 0 else True)
            chosen = sorted([k for k in np.lexsort((np.array(p["visit_ids"]), fwhm)) if good[k]][:T.max_visits])
            attrs = {"band": band, "year": -1 if year is None else int(year), "mode": T.mode,
                     "skymap": json.dumps(ctx.skymap.to_dict(), sort_keys=True),
                     "visit_ids": [int(p["visit_ids"][k]) for k in chosen],
                     "fwhm_arcsec": [float(fwhm[k]) for k in chosen], "ok": True, "reason": ""}
            reason = None
            if len(chosen) < T.min_visits:
                reason = (f"{len(chosen)} usable calexp(s) of {len(paths)} candidates overlap the patch "
                          f"(template.min_visits = {T.min_visits})")
            return [paths[k] for k in chosen], attrs, reason
        return run_patch_task(ctx, task, layout.template(band, *index, year=year), choose)


def template_key(band, year, i, j):
    """Task key of the template of (band, year, patch (i, j)): `B/I-J`, or `B/K/I-J` for year K."""
    return "/".join([band] + ([str(year)] if year is not None else []) + [layout.patch_key(i, j)])


def template_ok(path):
    """True if the template at `path` was made (attribute ok)."""
    with open_read(path) as fh:
        return bool(fh.attrs.get("ok", False))


STAGE = TemplateStage()
