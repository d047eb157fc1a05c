"""Lens-system candidates against the truth (docs/validation.md, "lenses"; docs/lensfind.md).

A true system is *findable* when its centre lies where the coadds have data and at least two of its images
have a mean i magnitude below LENS_IMAGE_MAG_I (the source's mean unlensed i magnitude minus
2.5 log10 |magnification|) and its maximum image separation (truth `imsep`) is at least LENS_MIN_SEP.
It is *observed* when at least LENS_MIN_VISITS visits (all bands together) cover its centre on the coadds:
a finder that selects by variability cannot find a system at the dithered edge of the field that a handful
of visits saw. Completeness: the fraction of observed findable systems with a candidate within
LENS_MATCH_RADIUS of the system's centre (the lens galaxy's position); the same fraction over every findable
system on the coadds is reported beside it. Purity: the fraction of candidates within LENS_MATCH_RADIUS of
the centre of any true system, findable or not.
"""
import os

import numpy as np

from twinkles_hpc.rundir import layout
from twinkles_hpc.store.atomic import open_read
from twinkles_hpc.store.tables import read_table
from twinkles_hpc.validation.match import has_neighbour, tangent_arcsec
from twinkles_hpc.validation.products import need, null_metric

#: Findable systems: images brighter than this (mean i, AB) ...
LENS_IMAGE_MAG_I = 23.0
#: ... at least this many of them ...
LENS_MIN_IMAGES = 2
#: ... and a maximum image separation (arcsec) at least this.
LENS_MIN_SEP = 1.0
#: A candidate finds a system when within this distance (arcsec) of its centre.
LENS_MATCH_RADIUS = 2.0
#: Observed systems: at least this many visits, all bands together, cover the centre on the coadds (five a
#: band on average, the fewest for differences of both signs in two bands and two seasons).
LENS_MIN_VISITS = 30


def image_mag_i(systems, images):
    """Mean i magnitude of each image (rows of `images`), from its system's src_mag_i and |magnification|."""
    row = {int(s): k for k, s in enumerate(systems["sys_id"])}
    k = np.array([row[int(s)] for s in images["sys_id"]], np.int64)
    return systems["src_mag_i"][k] - 2.5 * np.log10(np.abs(images["mag"]))


def findable(systems, images):
    """True for systems with >= LENS_MIN_IMAGES images of mean i < LENS_IMAGE_MAG_I and imsep >= LENS_MIN_SEP."""
    bright = images["sys_id"][image_mag_i(systems, images) < LENS_IMAGE_MAG_I]
    ids, n = np.unique(bright, return_counts=True)
    count = dict(zip(ids.tolist(), n.tolist()))
    n_bright = np.array([count.get(int(s), 0) for s in systems["sys_id"]])
    return (n_bright >= LENS_MIN_IMAGES) & (systems["imsep"] >= LENS_MIN_SEP)


def lens_metrics(systems, images, candidates, ra0, dec0, covered=None, visits=None):
    """Completeness and purity (module docstring) of `candidates` (ra, decl) against the true `systems`
    (LENS_SYSTEM_DTYPE rows) and their `images`; covered: which systems lie on the coadds (None: all);
    visits: how many visits cover each (None: enough). Returns a JSON-ready dict; completeness is None with
    a reason when no system is findable and observed, purity when there is no candidate."""
    xy_sys = tangent_arcsec(systems["ra"], systems["dec"], ra0, dec0)
    xy_cand = tangent_arcsec(candidates["ra"], candidates["decl"], ra0, dec0)
    on = np.ones(len(systems), bool) if covered is None else np.asarray(covered, bool)
    seen = on if visits is None else on & (np.asarray(visits) >= LENS_MIN_VISITS)
    findable_on = findable(systems, images) & on
    want = findable_on & seen
    found_on = has_neighbour(xy_sys[findable_on], LENS_MATCH_RADIUS, xy_cand)
    found = found_on[seen[findable_on]]                 # the observed ones among them
    true_cand = has_neighbour(xy_cand, LENS_MATCH_RADIUS, xy_sys)
    out = {"n_systems": int(len(systems)), "n_covered": int(on.sum()), "n_findable": int(findable_on.sum()),
           "n_observed": int(want.sum()), "n_found": int(found.sum()), "n_candidates": int(len(candidates)),
           "n_true_candidates": int(true_cand.sum()),
           "missed_sys_ids": [int(s) for s in systems["sys_id"][want][~found]],
           "unobserved_sys_ids": [int(s) for s in systems["sys_id"][findable_on & ~seen]],
           "definition": {"image_mag_i_max": LENS_IMAGE_MAG_I, "min_images": LENS_MIN_IMAGES,
                          "min_imsep_arcsec": LENS_MIN_SEP, "match_radius_arcsec": LENS_MATCH_RADIUS,
                          "min_visits": LENS_MIN_VISITS}}
    out["completeness"] = float(found.mean()) if want.any() else None
    out["completeness_on_coadds"] = float(found_on.mean()) if findable_on.any() else None
    out["purity"] = float(true_cand.mean()) if len(candidates) else None
    if not want.any():
        out["completeness_reason"] = (f"no findable lens system on the coadds seen by {LENS_MIN_VISITS} visits"
                                      if findable_on.any() else "no findable lens system on the coadds")
    if not len(candidates):
        out["purity_reason"] = "no candidate"
    return out


def lenses_section(rundir, cfg, ra0, dec0, coverage=None):
    """The lens-finding figures of a run; a null metric with the reason when the lenses stage is off or the
    truth has no lensed quasars. coverage: the coadds' products.Coverage (None: every system covered and
    observed)."""
    if not cfg.lenses.enabled:
        return null_metric("no lens candidates: [lenses] enabled = false")
    with open_read(need(os.path.join(rundir, layout.TRUTH), "the truth catalogues (stage sky)")) as fh:
        if "lens_systems" not in fh or len(fh["lens_systems"]) == 0:
            return null_metric("no lensed quasars in truth.h5")
        systems, images = read_table(fh["lens_systems"]), read_table(fh["lensed_images"])
    path = need(os.path.join(rundir, layout.LENS_CANDIDATES), "the lens candidates ([lenses])")
    with open_read(path) as fh:
        cand = read_table(fh["candidates"])
        if not fh.attrs["ok"]:
            return null_metric(f"no lens candidates: {fh.attrs['reason']}")
    if coverage is None:
        return lens_metrics(systems, images, cand, ra0, dec0)
    visits = coverage.visits(systems["ra"], systems["dec"])
    return lens_metrics(systems, images, cand, ra0, dec0, visits > 0, visits)
