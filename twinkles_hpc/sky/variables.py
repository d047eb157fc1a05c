"""The variable sky's truth: every supernova and lensed-quasar image, and its true magnitude and flux
in every visit.

`VARIABLE_DTYPE` lists the variable point sources (kind 1: supernova, kind 2: lensed quasar image).
`TRUTH_DTYPE` rows give a source's AB magnitude and flux (nJy) in one visit, lensing magnification
included; a supernova has rows only for visits where it has light (no row: zero flux), an image has a
row for every visit. Rows are sorted by (visit_id, source_id) so a visit reads one contiguous slice.
"""
import numpy as np

from twinkles_hpc.instrument import mag_to_njy

KIND_SUPERNOVA, KIND_LENSED_IMAGE = 1, 2

VARIABLE_DTYPE = np.dtype([("source_id", "i8"), ("kind", "i1"), ("ra", "f8"), ("dec", "f8"),
                           ("parent_id", "i8"),     # supernova: host galaxy id (-1 hostless); image: system id
                           ("redshift", "f8")])
TRUTH_DTYPE = np.dtype([("source_id", "i8"), ("visit_id", "i8"), ("band", "U1"), ("mjd", "f8"),
                        ("mag", "f8"), ("flux_njy", "f8")])


def variable_sources(sne, images, systems):
    """One VARIABLE_DTYPE row per supernova and per lensed image, sorted by source id."""
    v = np.zeros(len(sne) + len(images), dtype=VARIABLE_DTYPE)
    n = len(sne)
    v["source_id"][:n], v["kind"][:n] = sne["id"], KIND_SUPERNOVA
    v["ra"][:n], v["dec"][:n], v["parent_id"][:n], v["redshift"][:n] = (
        sne["ra"], sne["dec"], sne["host_id"], sne["redshift"])
    v["source_id"][n:], v["kind"][n:] = images["image_id"], KIND_LENSED_IMAGE
    v["ra"][n:], v["dec"][n:], v["parent_id"][n:] = images["ra"], images["dec"], images["sys_id"]
    if len(images):
        zsrc = dict(zip(systems["sys_id"].tolist(), systems["zsrc"].tolist()))
        v["redshift"][n:] = [zsrc[s] for s in images["sys_id"].tolist()]
    return v[np.argsort(v["source_id"], kind="stable")]


def supernova_truth(sne, visits, model=None):
    """TRUTH_DTYPE rows of every (supernova, visit) pair with light."""
    from twinkles_hpc.sky.snmodel import SNIaModel
    if len(sne) == 0 or len(visits) == 0:
        return np.zeros(0, TRUTH_DTYPE)
    model = model or SNIaModel()
    stretch = 1.0 + 0.15 * np.abs(sne["x1"])
    # observer-frame window comfortably wider than the model's rest-frame phase range
    lo = sne["t0"] - 30.0 * (1 + sne["redshift"]) * stretch
    hi = sne["t0"] + 110.0 * (1 + sne["redshift"]) * stretch
    order = np.argsort(visits["mjd"], kind="stable")
    t = visits["mjd"][order]
    i0, i1 = np.searchsorted(t, lo), np.searchsorted(t, hi)
    counts = i1 - i0
    si = np.repeat(np.arange(len(sne)), counts)
    vi = order[np.concatenate([np.arange(a, b) for a, b in zip(i0, i1)]) if counts.sum() else np.zeros(0, int)]
    s, v = sne[si], visits[vi]
    mags = model.mags(v["band"], v["mjd"], z=s["redshift"], t0=s["t0"], x1=s["x1"], c=s["c"], M_B=s["M_B"])
    lit = np.isfinite(mags)
    return _rows(s["id"][lit], v[lit], mags[lit])


def quasar_truth(systems, images, visits):
    """TRUTH_DTYPE rows for every lensed image in every visit: one damped random walk per system (its
    key is in the system's row), sampled jointly at every (visit time - image delay), so the images are
    exact time-shifted copies; each magnified by the image's |mu|."""
    from twinkles_hpc.sky.variability import quasar_mags
    if len(images) == 0 or len(visits) == 0:
        return np.zeros(0, TRUTH_DTYPE)
    out = []
    sys_row = {int(s): i for i, s in enumerate(systems["sys_id"])}
    for sid in np.unique(images["sys_id"]):
        im = images[images["sys_id"] == sid]
        mags = quasar_mags(systems[sys_row[int(sid)]], visits["band"], visits["mjd"], im["delay"])
        mags = mags - 2.5 * np.log10(np.abs(im["mag"]))[:, None]       # (n_images, n_visits)
        for k in range(len(im)):
            out.append(_rows(np.full(len(visits), im["image_id"][k]), visits, mags[k]))
    return np.concatenate(out)


def _rows(source_id, visits, mags):
    r = np.zeros(len(source_id), TRUTH_DTYPE)
    r["source_id"], r["visit_id"], r["band"], r["mjd"] = source_id, visits["visit_id"], visits["band"], visits["mjd"]
    r["mag"], r["flux_njy"] = mags, mag_to_njy(mags)
    return r


def variable_truth(visits, sne, systems, images):
    """All truth rows for `visits`, sorted by (visit_id, source_id)."""
    rows = np.concatenate([supernova_truth(sne, visits), quasar_truth(systems, images, visits)])
    return rows[np.lexsort((rows["source_id"], rows["visit_id"]))]


def visit_slices(rows, visit_ids):
    """{visit_id: slice} of the rows of each visit (rows sorted by visit_id)."""
    lo = np.searchsorted(rows["visit_id"], visit_ids, side="left")
    hi = np.searchsorted(rows["visit_id"], visit_ids, side="right")
    return {int(v): slice(int(a), int(b)) for v, a, b in zip(visit_ids, lo, hi)}
