"""Validation statistics on plain arrays (no files): PA1, AM1, completeness, robust widths, chi^2.

Definitions follow LSST validate_drp where one exists (docs/validation.md states each exactly).
"""

import numpy as np

#: IQR of a unit Gaussian: 2 x Phi^-1(0.75).
IQR_GAUSS = 1.3489795003921634
#: MAD of a unit Gaussian: Phi^-1(0.75).
MAD_GAUSS = 0.6744897501960817


def iqr_sigma(x):
    """Gaussian-equivalent width from the interquartile range: IQR / 1.349."""
    q75, q25 = np.percentile(np.asarray(x, float), [75, 25])
    return float((q75 - q25) / IQR_GAUSS)


def robust_scatter(x):
    """Gaussian-equivalent width from the median absolute deviation: 1.4826 x MAD."""
    x = np.asarray(x, float)
    return float(np.median(np.abs(x - np.median(x))) / MAD_GAUSS)


def _groups(star, values):
    """Sort by star; returns (sorted values, group start offsets, group sizes)."""
    order = np.argsort(star, kind="stable")
    s, v = np.asarray(star)[order], np.asarray(values, float)[order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]]) if s.size else np.zeros(0, int)
    sizes = np.diff(np.r_[starts, s.size])
    return v, starts, sizes


def pa1(star, mag, *, shuffles=50, seed=0, min_stars=2):
    """Photometric repeatability PA1, validate_drp's definition (calcPA1), in mmag.

    star, mag: one entry per (star, visit) measurement; stars with fewer than 2 measurements are left out.
    In each of `shuffles` realisations every star contributes one difference of two distinct visits drawn
    at random, divided by sqrt(2) (the single-visit scatter); the realisation's width is IQR / 1.349 of
    these differences (and, as a second number, their rms). PA1 is the mean width over realisations.
    Also returns the median over stars of the rms of each star's magnitudes about its mean (ddof = 1).
    Returns None when fewer than min_stars stars have 2 measurements.
    """
    v, starts, sizes = _groups(star, mag)
    keep = sizes >= 2
    starts, sizes = starts[keep], sizes[keep]
    if starts.size < max(min_stars, 1):
        return None
    rng = np.random.default_rng(seed)
    iqr_w, rms_w = np.empty(shuffles), np.empty(shuffles)
    for k in range(shuffles):
        a = rng.integers(0, sizes)
        b = rng.integers(0, sizes - 1)
        b += b >= a                                   # a distinct second visit
        d = 1e3 * (v[starts + a] - v[starts + b]) / np.sqrt(2.0)
        iqr_w[k], rms_w[k] = iqr_sigma(d), np.sqrt(np.mean(d ** 2))
    star_rms = [np.std(v[s:s + n], ddof=1) for s, n in zip(starts, sizes)]
    return {"pa1_mmag": float(iqr_w.mean()), "pa1_rms_mmag": float(rms_w.mean()),
            "median_star_rms_mmag": float(1e3 * np.median(star_rms)), "n_stars": int(starts.size),
            "n_measurements": int(sizes.sum()), "shuffles": int(shuffles)}


def sep_mas(ra1, dec1, ra2, dec2):
    """Great-circle separation (haversine), degrees in, mas out."""
    r1, d1, r2, d2 = (np.deg2rad(np.asarray(a, float)) for a in (ra1, dec1, ra2, dec2))
    h = np.sin((d2 - d1) / 2) ** 2 + np.cos(d1) * np.cos(d2) * np.sin((r2 - r1) / 2) ** 2
    return np.rad2deg(2 * np.arcsin(np.sqrt(h))) * 3.6e6


def am_x(star, visit, ra, dec, *, d_arcmin=5.0, width_arcmin=2.0, min_visits=2):
    """Astrometric repeatability AMx (validate_drp calcRmsDistances / AMx), in mas.

    star, visit, ra, dec (deg): one entry per measured position of a star in a visit. Pairs of stars whose
    mean separation lies in [d - width/2, d + width/2] arcmin; for each pair the separation in every visit
    that measured both (at least min_visits), and its standard deviation across those visits (ddof = 1;
    validate_drp uses ddof = 0, smaller by sqrt((n-1)/n)). AMx is the median over pairs.
    Returns (result dict or None, the number of pairs in the annulus).
    """
    star, visit = np.asarray(star), np.asarray(visit)
    ra, dec = np.asarray(ra, float), np.asarray(dec, float)
    ids = np.unique(star)
    if ids.size < 2:
        return None, 0
    idx = np.searchsorted(ids, star)
    mra = np.bincount(idx, ra) / np.bincount(idx)           # a 5' field: no wrap at 0/360 to worry about
    mdec = np.bincount(idx, dec) / np.bincount(idx)
    i, j = np.triu_indices(ids.size, 1)
    sep = sep_mas(mra[i], mdec[i], mra[j], mdec[j]) / 6e4
    lo, hi = d_arcmin - width_arcmin / 2, d_arcmin + width_arcmin / 2
    pairs = np.flatnonzero((sep >= lo) & (sep <= hi))
    per_star = [dict(zip(visit[idx == k].tolist(), np.flatnonzero(idx == k).tolist())) for k in range(ids.size)]
    rms = []
    for p in pairs:
        a, b = per_star[i[p]], per_star[j[p]]
        both = sorted(set(a) & set(b))
        if len(both) < min_visits:
            continue
        ia, ib = [a[v] for v in both], [b[v] for v in both]
        rms.append(np.std(sep_mas(ra[ia], dec[ia], ra[ib], dec[ib]), ddof=1))
    if not rms:
        return None, int(pairs.size)
    return {"am_mas": float(np.median(rms)), "n_pairs": len(rms), "d_arcmin": d_arcmin,
            "width_arcmin": width_arcmin}, int(pairs.size)


def completeness(mag, detected, edges):
    """Per magnitude bin: number of truth sources, number detected, fraction (None for an empty bin)."""
    mag, detected = np.asarray(mag, float), np.asarray(detected, bool)
    n = np.histogram(mag, edges)[0]
    k = np.histogram(mag[detected], edges)[0]
    frac = [float(a / b) if b else None for a, b in zip(k, n)]
    return n, k, frac


def mag_at_completeness(edges, frac, level, n=None, min_n=10):
    """The magnitude where completeness falls below `level` for good: linear interpolation between the
    centres of the faintest bin at or above `level` and the next fainter one, so that a bright bin of a
    few sources with one missed (a saturated star, a blend) does not set it. With `n` (truth sources per
    bin), bins with fewer than `min_n` are left out. (None, reason) when the completeness never falls
    below, or is below in every bin."""
    centres = 0.5 * (np.asarray(edges[:-1]) + np.asarray(edges[1:]))
    counts = [min_n] * len(centres) if n is None else list(n)
    pts = [(m, f) for m, f, k in zip(centres, frac, counts) if f is not None and k >= min_n]
    if not pts:
        return None, "no truth sources in the covered area"
    above = [i for i, (_, f) in enumerate(pts) if f >= level]
    if not above:
        return None, f"completeness is below {level:g} already at r = {pts[0][0]:.2f}"
    j = above[-1]
    if j == len(pts) - 1:
        return None, f"completeness stays >= {level:g} to the faintest truth bin (r = {pts[-1][0]:.2f})"
    (m0, f0), (m1, f1) = pts[j], pts[j + 1]
    return float(m0 + (f0 - level) / (f0 - f1) * (m1 - m0)), None


def light_curve_chi2(flux, err, true_flux, group):
    """chi^2 of measured fluxes against true ones with one free constant per group (band), and its dof.

    The constant absorbs the static light under the PSF at the forced position (a host galaxy, a
    neighbour), which a calexp forced measurement includes and a supernova's truth does not; it is the
    inverse-variance weighted mean residual of the group. dof = n - number of groups.
    Returns (chi2, dof); dof <= 0 gives chi2 None.
    """
    chi2, dof, _ = light_curve_fit(flux, err, true_flux, group)
    return chi2, dof


def light_curve_fit(flux, err, true_flux, group):
    """light_curve_chi2's (chi2, dof) and, per measurement, its group's fitted constant."""
    flux, err, true_flux = (np.asarray(a, float) for a in (flux, err, true_flux))
    group = np.asarray(group)
    r, w = flux - true_flux, 1.0 / err ** 2
    chi2, const = 0.0, np.zeros(flux.size)
    groups = np.unique(group)
    for g in groups:
        m = group == g
        c = np.sum(w[m] * r[m]) / np.sum(w[m])
        const[m] = c
        chi2 += float(np.sum(w[m] * (r[m] - c) ** 2))
    dof = int(flux.size - groups.size)
    return (chi2 if dof > 0 else None), dof, const
