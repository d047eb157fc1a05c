"""Association of DiaSources into DiaObjects (docs/diffim.md, "The associate stage").

Within one sky region: the DiaSources, in time order (midPointTai, then diaSourceId), visit by visit, are
matched to the DiaObjects made so far within `radius` arcsec of the object's mean position (the mean of its
sources' tangent-plane positions, weighted by S/N^2: `position_weights`); within a visit the match is
one-to-one, the closest pairs first (ties by diaSourceId, then object number); a source left over starts a
new DiaObject. Everything is ordered by ids
and times, never by the order of files or ranks, so the result is the same however the work was split.

Across regions (each DiaSource belongs to the one region whose inner box holds it): two DiaObjects of
different regions whose mean positions are within `radius` and which share no visit are one object
(`merge_regions`), the closest pairs first. A DiaObject's id is the diaSourceId of its first source.
"""
from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

from twinkles_hpc.level2.astrometry import from_tangent_plane, tangent_arcsec

#: Columns association reads from a DiaSource table.
SOURCE_FIELDS = ("diaSourceId", "ccdVisitId", "midPointTai", "ra", "decl", "snr")


def position_weights(sources):
    """Weight of each DiaSource in its DiaObject's position: S/N^2 (|snr|, at least 1), the inverse variance
    of a centroid, so that a DiaObject sits where its best detections put it."""
    snr = np.abs(np.asarray(sources["snr"], np.float64))
    return np.where(np.isfinite(snr), np.maximum(snr, 1.0), 1.0) ** 2


def _weighted_centres(sources, inv, n, ra0, dec0):
    """S/N^2-weighted (position_weights) tangent-plane mean (arcsec) of the sources of each of the `n`
    groups `inv` (0 .. n - 1)."""
    x, y = tangent_arcsec(sources["ra"], sources["decl"], ra0, dec0)
    wt = position_weights(sources)
    sw = np.bincount(inv, wt, n)
    return np.bincount(inv, wt * x, n) / sw, np.bincount(inv, wt * y, n) / sw


def _one_to_one(d, i, j):
    """Greedy one-to-one matching of pairs (i, j) at distance d, closest first (ties: i, then j)."""
    order = np.lexsort((j, i, d))
    used_i, used_j, out = set(), set(), []
    for k in order:
        if i[k] not in used_i and j[k] not in used_j:
            used_i.add(int(i[k]))
            used_j.add(int(j[k]))
            out.append((int(i[k]), int(j[k])))
    return out


def associate(sources, radius, ra0, dec0):
    """Object number (0, 1, ... in order of creation) of each row of `sources` (a table with
    SOURCE_FIELDS) within one region; radius in arcsec."""
    n = len(sources)
    obj = np.full(n, -1, np.int64)
    if n == 0:
        return obj
    x, y = tangent_arcsec(sources["ra"], sources["decl"], ra0, dec0)
    wt = position_weights(sources)
    order = np.lexsort((sources["diaSourceId"], sources["ccdVisitId"], sources["midPointTai"]))
    sx, sy, cnt = [], [], []                               # per object: weighted sums of positions, weights
    visits = sources["ccdVisitId"][order]
    starts = np.flatnonzero(np.r_[True, visits[1:] != visits[:-1]])
    for a, b in zip(starts, np.r_[starts[1:], n]):
        rows = order[a:b]
        matched = set()
        if cnt:
            c = np.asarray(cnt, np.float64)
            tree = cKDTree(np.c_[np.asarray(sx) / c, np.asarray(sy) / c])
            hits = tree.query_ball_point(np.c_[x[rows], y[rows]], r=radius)
            pi = np.array([k for k, h in enumerate(hits) for _ in h], np.int64)
            pj = np.array([o for h in hits for o in h], np.int64)
            if pi.size:
                d = np.hypot(x[rows[pi]] - tree.data[pj, 0], y[rows[pi]] - tree.data[pj, 1])
                for k, o in _one_to_one(d, pi, pj):         # rows are in diaSourceId order in a visit
                    s = rows[k]
                    obj[s] = o
                    sx[o] += wt[s] * x[s]
                    sy[o] += wt[s] * y[s]
                    cnt[o] += wt[s]
                    matched.add(int(s))
        for s in (s for s in rows if int(s) not in matched):
            obj[s] = len(cnt)
            sx.append(float(wt[s] * x[s]))
            sy.append(float(wt[s] * y[s]))
            cnt.append(float(wt[s]))
    return obj


def first_source_ids(sources, obj):
    """Per row, the diaSourceId of the first source (midPointTai, then diaSourceId) of its object `obj`."""
    order = np.lexsort((sources["diaSourceId"], sources["midPointTai"]))
    first = {}
    for k in order:
        first.setdefault(int(obj[k]), int(sources["diaSourceId"][k]))
    return np.array([first[int(o)] for o in obj], np.int64)


def merge_regions(sources, object_id, region, radius, ra0, dec0):
    """Final diaObjectId of each row: objects `object_id` of different `region`s whose mean positions are
    within `radius` arcsec and that share no visit become one, closest pairs first; ids are then the first
    source's."""
    ids, inv = np.unique(object_id, return_inverse=True)
    if ids.size == 0:
        return np.zeros(0, np.int64)
    cx, cy = _weighted_centres(sources, inv, ids.size, ra0, dec0)
    reg = np.zeros(ids.size, np.int64)
    reg[inv] = region
    visits = [set() for _ in ids]
    for k, v in zip(inv, sources["ccdVisitId"]):
        visits[k].add(int(v))
    pairs = cKDTree(np.c_[cx, cy]).query_pairs(radius, output_type="ndarray")
    parent = np.arange(ids.size)

    def root(k):
        while parent[k] != k:
            k = parent[k]
        return k
    if len(pairs):
        pairs = pairs[reg[pairs[:, 0]] != reg[pairs[:, 1]]]
        d = np.hypot(cx[pairs[:, 0]] - cx[pairs[:, 1]], cy[pairs[:, 0]] - cy[pairs[:, 1]])
        for k in np.lexsort((ids[pairs[:, 1]], ids[pairs[:, 0]], d)):
            a, b = root(pairs[k, 0]), root(pairs[k, 1])
            if a != b and not (visits[a] & visits[b]):
                a, b = min(a, b), max(a, b)
                parent[b] = a
                visits[a] |= visits[b]
    merged = np.array([root(k) for k in range(ids.size)])[inv]
    return first_source_ids(sources, merged)


def dia_object_dtype(bands):
    """Record dtype of the DiaObject table: position, counts, times and per-band flux summaries."""
    cols = [("diaObjectId", "i8"), ("ra", "f8"), ("decl", "f8"), ("nDiaSources", "i4"),
            ("firstMidPointTai", "f8"), ("lastMidPointTai", "f8")]
    for b in bands:
        cols += [(f"{b}PsFluxMean", "f8"), (f"{b}PsFluxMeanErr", "f8"), (f"{b}PsFluxChi2", "f8"),
                 (f"{b}PsFluxNdata", "i4")]
    return np.dtype(cols)


def dia_objects(sources, object_id, bands, ra0, dec0):
    """The DiaObject table of sources (DiaSource rows with filterName, psFlux, psFluxErr, snr) grouped by
    `object_id`, sorted by diaObjectId: mean position (the S/N^2-weighted tangent-plane mean about ra0,
    dec0), counts,
    first and last times, and per band the inverse-variance weighted mean flux, its error, chi^2 about it
    and the number of sources (NaN and 0 for a band without one)."""
    ids, inv = np.unique(object_id, return_inverse=True)
    out = np.zeros(ids.size, dia_object_dtype(bands))
    out["diaObjectId"] = ids
    if ids.size == 0:
        return out
    out["nDiaSources"] = np.bincount(inv, minlength=ids.size)
    cx, cy = _weighted_centres(sources, inv, ids.size, ra0, dec0)
    out["ra"], out["decl"] = from_tangent_plane(cx / 3600.0, cy / 3600.0, ra0, dec0)
    t = sources["midPointTai"]
    out["firstMidPointTai"] = np.full(ids.size, np.inf)
    np.minimum.at(out["firstMidPointTai"], inv, t)
    out["lastMidPointTai"] = np.full(ids.size, -np.inf)
    np.maximum.at(out["lastMidPointTai"], inv, t)
    fn = np.char.decode(sources["filterName"]) if sources["filterName"].dtype.kind == "S" else sources["filterName"]
    for b in bands:
        ok = (fn == b) & np.isfinite(sources["psFlux"]) & (sources["psFluxErr"] > 0)
        w = np.where(ok, 1.0 / np.where(ok, sources["psFluxErr"], 1.0) ** 2, 0.0)
        f = np.where(ok, sources["psFlux"], 0.0)
        sw = np.bincount(inv, w, ids.size)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.bincount(inv, w * f, ids.size) / sw
            out[f"{b}PsFluxMean"] = mean
            out[f"{b}PsFluxMeanErr"] = 1.0 / np.sqrt(sw)
            out[f"{b}PsFluxChi2"] = np.where(sw > 0, np.bincount(inv, w * (f - mean[inv]) ** 2, ids.size), np.nan)
        out[f"{b}PsFluxNdata"] = np.bincount(inv, ok, ids.size)
    return out
