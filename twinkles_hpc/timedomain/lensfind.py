"""Lensed-quasar candidates from the pipeline's own catalogues (docs/lensfind.md).

A lensed quasar is two to four point images a few arcsec apart around a lens galaxy; the images vary
stochastically for years, all of them, with differences of either sign about the template. A supernova is
one point that brightens once, in one season. The finder counts the *episodes* of each DiaObject (runs
of DiaSource dates separated by gaps longer than `episode_gap` days) and keeps those with at least
`min_episodes` (a supernova has one, so even a host with several supernovae over the years, each at its
own position, gives no persistent DiaObject). A transient caught in a band's template leaves differences of
the other sign in that band at every later visit, a persistence of its own; so a group is kept only when one
of its DiaObjects varies both ways in at least `min_sign_bands` bands, as a quasar varying in every band
does: in a band, the largest difference of the weaker sign reaches `sign_ratio` of the largest of the other
(a transient in one of a template's N inputs leaves the other sign at about 1/N of its peak, a quasar
scatters about its mean). It groups the persistent DiaObjects around seeds, the most persistent first
(every ungrouped one within `link_radius` of the seed), attaches each group to the extended Object nearest
its centre (the lens galaxy, within `host_radius`), and scores the group with four terms in [0, 1]:

- multiplicity: varying points in the group, DiaObjects or point-like Objects around the host
  (0 for one, 0.5 for two, 1 for three or more);
- persistence: the median episodes of the group's DiaObjects (0 for one, 1 for `full_episodes` or more);
- sign balance: 1 - |2 f - 1|, f the fraction of the group's DiaSources with positive flux (1 when half are
  positive, 0 when all share one sign): a quasar varies about its mean, the template's level;
- host: 1 when an extended Object lies within `host_radius` of the group's centre.

The score is their weighted sum (weights MULTI, PERSIST, SIGN, HOST, summing to 1); a group is a candidate
when its score is at least `min_score`. Everything is computed from ids, positions and dates, so the result
does not depend on the order of the input rows. The truth is never read.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from twinkles_hpc import options
from twinkles_hpc.level2.astrometry import from_tangent_plane, tangent_arcsec

#: Weights of the score's terms (module docstring).
MULTI, PERSIST, SIGN, HOST = 0.3, 0.3, 0.25, 0.15

#: Record dtype of a candidate: centre (the host's position, else the S/N-weighted mean of the group's
#: DiaObjects), the score and its terms, what they were computed from.
CANDIDATE_DTYPE = np.dtype([
    ("lensCandidateId", "i8"), ("ra", "f8"), ("decl", "f8"), ("score", "f8"),
    ("score_multi", "f8"), ("score_persist", "f8"), ("score_sign", "f8"), ("score_host", "f8"),
    ("nDiaObjects", "i4"), ("nPointObjects", "i4"), ("nDiaSources", "i4"), ("nEpisodes", "i4"),
    ("posFraction", "f8"), ("hostObjectId", "i8"), ("hostSeparation", "f8"), ("maxSeparation", "f8"),
    ("nSignBands", "i4")])

#: Record dtype of a candidate's member DiaObjects.
MEMBER_DTYPE = np.dtype([("lensCandidateId", "i8"), ("diaObjectId", "i8")])


@dataclass
class LensFindConfig:
    """Settings of the lens finder."""
    link_radius: float = options.opt(3.0, "arcsec", "Persistent DiaObjects this close to a group's seed (the most "
                                     "persistent one not yet grouped) join its group: the images of one system.",
                                     lo=0.0, lo_open=True, hi=30.0)
    host_radius: float = options.opt(2.0, "arcsec", "An extended Object this close to a group's centre is its "
                                     "lens galaxy; point-like Objects this close to the host count as images.",
                                     lo=0.0, lo_open=True, hi=30.0)
    extended_min: float = options.opt(0.5, "", "Objects with extendedness >= this are extended (galaxies), "
                                      "below it point-like.", lo=0.0, hi=1.0)
    episode_gap: float = options.opt(120.0, "d", "A gap longer than this between a group's DiaSource dates "
                                     "starts a new episode of variability.", lo=0.0, lo_open=True)
    min_episodes: int = options.opt(2, "", "DiaObjects with fewer episodes of variability than this (a "
                                    "supernova has one) are left out.", lo=1, hi=100)
    min_sign_bands: int = options.opt(2, "", "Groups none of whose DiaObjects varies both ways (sign_ratio) in at "
                                      "least this many bands are left out: a transient caught in a band's "
                                      "template leaves differences of the other sign in that band alone.",
                                      lo=1, hi=6)
    sign_ratio: float = options.opt(1.0 / 3.0, "", "A DiaObject varies both ways in a band when its largest "
                                    "difference of the weaker sign is at least this fraction of the largest of "
                                    "the stronger; a transient in one of a template's N inputs leaves 1/N.",
                                    lo=0.0, lo_open=True, hi=1.0)
    full_episodes: int = options.opt(4, "", "Median episodes of a group's DiaObjects for a persistence term of "
                                     "1.", lo=2, hi=100)
    min_score: float = options.opt(0.6, "", "Groups scoring at least this are candidates.", lo=0.0, hi=1.0)

    def __post_init__(self):
        options.check_section(self)


def episodes(mjd, gap):
    """Number of runs of `mjd` (days, any order) separated by gaps longer than `gap`; 0 when empty."""
    t = np.sort(np.asarray(mjd, np.float64))
    return 0 if t.size == 0 else 1 + int(np.count_nonzero(np.diff(t) > gap))


def _groups(x, y, radius, order):
    """Group labels (0 .. n - 1) of points (x, y): in `order` (indices, most persistent first), each point
    not yet grouped seeds a group of itself and every ungrouped point within `radius` of it. A group spans
    at most 2 radius, whatever the density; friends-of-friends chains percolate across a crowded field
    (on a ten-year run, 133 DiaObjects over 37")."""
    n = len(x)
    label = np.full(n, -1, np.int64)
    if n == 0:
        return label
    tree = cKDTree(np.c_[x, y])
    g = 0
    for i in order:
        if label[i] >= 0:
            continue
        near = np.asarray(tree.query_ball_point([x[i], y[i]], radius), np.int64)
        near = near[label[near] < 0]
        label[near] = g
        g += 1
    return label


def find_lenses(objects, dia_objects, dia_sources, ra0, dec0, config=None):
    """(candidates, members) of the lens finder (module docstring).

    objects: Object rows with objectId, psRa, psDecl, extendedness (NaN: unknown, neither extended nor
    point-like), or None when the run has no Objects; dia_objects: DiaObject rows with diaObjectId, ra, decl;
    dia_sources: DiaSource rows with diaObjectId, midPointTai (d), psFlux (nJy); ra0, dec0: centre of the
    tangent plane (deg). Returns CANDIDATE_DTYPE rows with score >= min_score, sorted by score (highest
    first, then id), and MEMBER_DTYPE rows of their DiaObjects. A candidate's id is its smallest
    diaObjectId."""
    cfg = LensFindConfig() if config is None else config
    empty = np.zeros(0, CANDIDATE_DTYPE), np.zeros(0, MEMBER_DTYPE)
    dobj, n_src, n_epi, n_sign, row, t, flux = _persistent(dia_objects, dia_sources, cfg)
    if len(dobj) == 0:
        return empty
    dx, dy = tangent_arcsec(dobj["ra"], dobj["decl"], ra0, dec0)
    label = _groups(dx, dy, cfg.link_radius, np.lexsort((dobj["diaObjectId"], -n_src)))
    src_label = label[row]
    objs = _objects(objects, ra0, dec0, cfg)
    rows, members = [], []
    for g in range(label.max() + 1):
        k = np.flatnonzero(label == g)
        both_ways = n_sign[k].max()
        if both_ways < cfg.min_sign_bands:
            continue
        inside = src_label == g
        r = _score(k, dobj["diaObjectId"][k[0]], dx, dy, n_src, n_epi, t[inside], flux[inside], objs, cfg)
        r["nSignBands"] = both_ways
        r["ra"], r["decl"] = (float(v) for v in from_tangent_plane(r["ra"] / 3600.0, r["decl"] / 3600.0, ra0,
                                                                     dec0))
        if r["score"] >= cfg.min_score:
            rows.append(r)
            members += [(r["lensCandidateId"], i) for i in dobj["diaObjectId"][k]]
    if not rows:
        return empty
    cand = np.array(rows, CANDIDATE_DTYPE)
    cand = cand[np.lexsort((cand["lensCandidateId"], -cand["score"]))]
    mem = np.array(members, MEMBER_DTYPE)
    return cand, mem[np.lexsort((mem["diaObjectId"], mem["lensCandidateId"]))]


def sign_bands(row, band, flux, n, ratio):
    """For each of `n` objects, the number of bands in which its sources (object `row`, `band`, `flux`) vary
    both ways: the largest difference of the weaker sign is at least `ratio` times that of the stronger."""
    good = np.isfinite(flux) & (flux != 0)
    codes = np.unique(band[good], return_inverse=True)[1].reshape(-1)
    nb = int(codes.max()) + 1 if codes.size else 1
    key = row[good] * nb + codes
    peak = np.zeros((2, n * nb))
    f = flux[good]
    np.maximum.at(peak[0], key[f > 0], f[f > 0])
    np.maximum.at(peak[1], key[f < 0], -f[f < 0])
    weak, strong = peak.min(0), peak.max(0)
    both = (weak > 0) & (weak >= ratio * strong)
    return both.reshape(n, nb).sum(1)


def _persistent(dia_objects, dia_sources, cfg):
    """The DiaObjects with at least min_episodes episodes, in diaObjectId order, with their numbers of
    DiaSources, episodes and bands with differences of both signs, and their DiaSources as (row of the
    object, midPointTai, psFlux)."""
    dobj = dia_objects[np.argsort(dia_objects["diaObjectId"], kind="stable")]
    ids = np.asarray(dia_sources["diaObjectId"])
    row = np.minimum(np.searchsorted(dobj["diaObjectId"], ids), max(len(dobj) - 1, 0))
    known = (dobj["diaObjectId"][row] == ids) if len(dobj) else np.zeros(len(ids), bool)
    row, t = row[known], np.asarray(dia_sources["midPointTai"], np.float64)[known]
    flux = np.asarray(dia_sources["psFlux"], np.float64)[known]
    n_sign = sign_bands(row, np.asarray(dia_sources["filterName"])[known], flux, len(dobj), cfg.sign_ratio)
    n_src = np.bincount(row, minlength=len(dobj))
    by_obj = np.split(t[np.argsort(row, kind="stable")], np.cumsum(n_src)[:-1]) if len(dobj) else []
    n_epi = np.array([episodes(d, cfg.episode_gap) for d in by_obj], np.int64)
    keep = np.flatnonzero(n_epi >= cfg.min_episodes)
    new_row = np.full(len(dobj), -1, np.int64)
    new_row[keep] = np.arange(keep.size)
    row = new_row[row]
    on = row >= 0
    return dobj[keep], n_src[keep], n_epi[keep], n_sign[keep], row[on], t[on], flux[on]


def _score(k, cid, dx, dy, n_src, n_epi, t, flux, objs, cfg):
    """The CANDIDATE_DTYPE row of the group of DiaObjects `k` (rows of dx, dy, n_src, n_epi) whose
    DiaSources have dates `t` and fluxes `flux`; ra, decl hold its tangent-plane centre (arcsec)."""
    ext, point, px, py, oid, otree = objs
    w = np.maximum(n_src[k], 1).astype(np.float64)
    cx, cy = float(np.sum(w * dx[k]) / w.sum()), float(np.sum(w * dy[k]) / w.sum())
    r = np.zeros(1, CANDIDATE_DTYPE)[0]
    r["lensCandidateId"], r["hostObjectId"], r["hostSeparation"] = cid, -1, np.nan
    if otree is not None:
        near = [j for j in otree.query_ball_point([cx, cy], cfg.host_radius) if ext[j]]
        if near:
            d = np.hypot(px[near] - cx, py[near] - cy)
            j = near[int(np.lexsort((oid[near], d))[0])]
            r["hostObjectId"], r["hostSeparation"] = oid[j], float(d.min())
            cx, cy = float(px[j]), float(py[j])
            r["nPointObjects"] = sum(point[i] for i in otree.query_ball_point([cx, cy], cfg.host_radius))
    r["ra"], r["decl"] = cx, cy
    r["nDiaObjects"], r["nDiaSources"] = len(k), len(t)
    r["nEpisodes"] = int(np.median(n_epi[k]))
    good = np.isfinite(flux)
    r["posFraction"] = float(np.mean(flux[good] > 0)) if good.any() else np.nan
    r["maxSeparation"] = float(np.max(np.hypot(dx[k][:, None] - dx[k], dy[k][:, None] - dy[k])))
    r["score_multi"] = min(max(len(k), int(r["nPointObjects"])) - 1, 2) / 2.0
    r["score_persist"] = min(max(r["nEpisodes"] - 1, 0), cfg.full_episodes - 1) / (cfg.full_episodes - 1)
    r["score_sign"] = 0.0 if np.isnan(r["posFraction"]) else 1.0 - abs(2.0 * r["posFraction"] - 1.0)
    r["score_host"] = float(r["hostObjectId"] >= 0)
    r["score"] = (MULTI * r["score_multi"] + PERSIST * r["score_persist"] + SIGN * r["score_sign"]
                  + HOST * r["score_host"])
    return r


def _objects(objects, ra0, dec0, cfg):
    """(extended?, point-like?, x, y, objectId, k-d tree) of the Objects in objectId order (NaN extendedness:
    neither); Nones without Objects."""
    if objects is None or len(objects) == 0:
        return None, None, None, None, None, None
    o = objects[np.argsort(objects["objectId"], kind="stable")]
    e = np.asarray(o["extendedness"], np.float64)
    x, y = tangent_arcsec(o["psRa"], o["psDecl"], ra0, dec0)
    return e >= cfg.extended_min, e < cfg.extended_min, x, y, o["objectId"], cKDTree(np.c_[x, y])
