"""The sprinkler: strongly lensed quasars placed on catalogue galaxies, as Twinkles did with OM10.

* `draw_om10_like` draws OM10-format systems (Oguri & Marshall 2010, MNRAS 405, 2579: SIE + external
  shear, quasar sources) from the project's own distributions and solves them with lensing.solve_lens.
* `sprinkle` matches systems to galaxies of nearby redshift inside the field; each chosen galaxy
  becomes the lens (a de Vaucouleurs bulge with the OM10 light) and each image becomes a point source.

Distributions, conventions and the comparison with the real 861-system table: docs/lensed_quasars.md.
Positions: OM10 / lensing.py offsets x (arcsec, towards the WEST, x = -dRA cos dec) and y (north),
mapped to RA/Dec by the gnomonic projection about the lens centre.
"""
import functools

import numpy as np

from twinkles_hpc.errors import InputError
from twinkles_hpc.instrument import BANDS
from twinkles_hpc.sky import seds
from twinkles_hpc.sky.static import ID_KIND_FACTOR, ID_TILE_FACTOR, angular_distance_deg, check_field, check_seed
from twinkles_hpc.sky.variability import QSO_FIELDS, draw_quasar_params

#: Kind codes: ids of systems and images, and the keyed random streams (static.py: 1, 2;
#: variability.py: 33, 34).
LENS_SYSTEM_KIND = 30
LENSED_IMAGE_KIND = 31
SPRINKLE_KIND = 32
OM10_DRAW_KIND = 35
#: Run 3 had about 200 systems within 0.3 deg (0.283 deg^2).
DEFAULT_DENSITY_PER_DEG2 = 700.0
DEFAULT_DZ_MAX = 0.02
LENS_SED = "twinkles/gal_old"

LENS_SYSTEM_DTYPE = np.dtype(
    [("sys_id", "i8"), ("lens_galaxy_id", "i8"), ("ra", "f8"), ("dec", "f8"), ("zlens", "f8"), ("zsrc", "f8"),
     ("veldisp", "f8"), ("ellip", "f8"), ("phie", "f8"), ("gamma", "f8"), ("phig", "f8"), ("xsrc", "f8"),
     ("ysrc", "f8"), ("nimg", "i4"), ("imsep", "f8"), ("magi_in", "f8"), ("reff", "f8"), ("apmag_i", "f8"),
     ("om10_lensid", "i8")] + QSO_FIELDS)
LENSED_IMAGE_DTYPE = np.dtype(
    [("image_id", "i8"), ("sys_id", "i8"), ("image_index", "i4"), ("ra", "f8"), ("dec", "f8"),
     ("x_arcsec", "f8"), ("y_arcsec", "f8"), ("mag", "f8"), ("delay", "f8")])


# --- coordinates -------------------------------------------------------------------------------
def offsets_to_radec(ra0, dec0, x_arcsec, y_arcsec):
    """RA, Dec (deg) of OM10 offsets (x west, y north, arcsec) about (ra0, dec0): inverse gnomonic."""
    xi = -np.radians(np.asarray(x_arcsec, dtype=np.float64) / 3600.0)     # east
    eta = np.radians(np.asarray(y_arcsec, dtype=np.float64) / 3600.0)     # north
    d0 = np.radians(dec0)
    den = np.cos(d0) - eta * np.sin(d0)
    ra = np.asarray(ra0) + np.degrees(np.arctan2(xi, den))
    dec = np.degrees(np.arctan2(np.sin(d0) + eta * np.cos(d0), np.hypot(xi, den)))
    return ra % 360.0, dec


def radec_to_offsets(ra0, dec0, ra, dec):
    """OM10 offsets (x west, y north, arcsec) of (ra, dec) about (ra0, dec0), deg: gnomonic."""
    a, d, d0 = np.radians(np.asarray(ra) - ra0), np.radians(dec), np.radians(dec0)
    cosc = np.sin(d0) * np.sin(d) + np.cos(d0) * np.cos(d) * np.cos(a)
    xi = np.cos(d) * np.sin(a) / cosc
    eta = (np.cos(d0) * np.sin(d) - np.sin(d0) * np.cos(d) * np.cos(a)) / cosc
    return -np.degrees(xi) * 3600.0, np.degrees(eta) * 3600.0


def _hash_uniform(seed, kind, ids):
    """Keyed uniform [0, 1) per id (SplitMix64 finaliser, Steele et al. 2014): order-free priorities."""
    with np.errstate(over="ignore"):
        x = np.asarray(ids).astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        x ^= np.uint64((int(seed) * 1_000_003 + kind) & 0xFFFFFFFFFFFFFFFF)
        for s, m in ((30, 0xBF58476D1CE4E5B9), (27, 0x94D049BB133111EB)):
            x = (x ^ (x >> np.uint64(s))) * np.uint64(m)
        x ^= x >> np.uint64(31)
    return (x >> np.uint64(11)).astype(np.float64) / 2.0**53


# --- OM10-like systems ----------------------------------------------------------------------
#: Distributions of `draw_om10_like` (docs/lensed_quasars.md gives the sources).
VDF = dict(sigma_star=161.0, alpha=2.32, beta=2.67)       # Choi, Park & Vogeley 2007, ApJ 658, 884
SIGMA_RANGE = (100.0, 400.0)                              # km/s
ELLIP_MEAN_SD_MAX = (0.3, 0.16, 0.85)                     # OM10 section 2; lambda(e) measured to 0.856
LOG_GAMMA_MEAN_SD_MAX = (np.log10(0.05), 0.2, 0.3)        # OM10 section 2
ZSRC_GAMMA = (6.0, 0.40, 0.5, 6.0)                        # p(z) ~ z^5 exp(-z/0.4) on [0.5, 6]
QSO_COUNTS = (0.86, 0.30, 19.1, 16.0, 25.5)               # bright, faint slopes, break, i range
SOURCE_RADIUS_B = 1.2                                     # source disk radius / SIE b
LENS_MAG_I = (-22.70, -6.5, 0.32)                         # M_i = a + b log10(sigma/200), scatter
LENS_LOG_REFF_KPC = (0.64, 1.56, 0.24)                    # log10 R_e = a + b log10(sigma/200), scatter
OM10_LIMITS = dict(min_imsep=0.5, max_magi=23.3)          # OM10's LSST selection (arcsec, i mag)
DRAW_BATCH = 1024
OM10_DRAW_DTYPE = np.dtype(
    [("LENSID", "i8"), ("FLAGTYPE", "i2"), ("NIMG", "i2")]
    + [(c, "f8") for c in ("ZLENS", "VELDISP", "ELLIP", "PHIE", "GAMMA", "PHIG", "ZSRC", "XSRC", "YSRC",
                           "MAGI_IN", "MAGI", "IMSEP")]
    + [(c, "f8", (4,)) for c in ("XIMG", "YIMG", "MAG", "DELAY")]
    + [(c, "f8") for c in ("DD", "DS", "DDS", "ABMAG_I", "APMAG_I", "REFF")])


def _inverse_cdf(x, pdf):
    """(u grid, x grid) for sampling x = interp(u, ...) from a tabulated density."""
    c = np.concatenate([[0.0], np.cumsum(0.5 * (pdf[1:] + pdf[:-1]) * np.diff(x))])
    return c / c[-1], x


@functools.cache
def _samplers():
    sig = np.linspace(*SIGMA_RANGE, 3001)
    a, b = VDF["alpha"], VDF["beta"]
    # lensing-weighted VDF: n(sigma) sigma^4 (the Einstein radius squared carries sigma^4)
    y = sig / VDF["sigma_star"]
    vdf = y ** (a - 1.0) * np.exp(-y ** b) * sig ** 4
    zk, zt, zlo, zhi = ZSRC_GAMMA
    zs = np.linspace(zlo, zhi, 3001)
    ba, fa, mb, mlo, mhi = QSO_COUNTS
    m = np.linspace(mlo, mhi, 3001)
    counts = 1.0 / (10.0 ** (-ba * (m - mb)) + 10.0 ** (-fa * (m - mb)))
    return dict(sigma=_inverse_cdf(sig, vdf), zsrc=_inverse_cdf(zs, zs ** (zk - 1.0) * np.exp(-zs / zt)),
                mag=_inverse_cdf(m, counts))


@functools.cache
def _volume_table(cosmology):
    """(z grid, dV_c/dz/dOmega normalised to its maximum on 0 < z <= 6)."""
    from twinkles_hpc.sky.lensing import DEFAULT_COSMOLOGY
    z = np.linspace(0.0, 6.0, 1201)
    dv = (cosmology or DEFAULT_COSMOLOGY).differential_comoving_volume(z).value
    return z, dv / dv.max()


def _draw_batch(seed, batch, cosmology):
    """Candidates of one batch that are multiply imaged (2 or 4 images), with their lens light."""
    from scipy.special import ndtr, ndtri
    from twinkles_hpc.sky.lensing import (DEFAULT_COSMOLOGY, distances, dynamical_normalization, einstein_radius,
                                          solve_lenses)
    rng = np.random.default_rng([seed, OM10_DRAW_KIND, batch])
    n = DRAW_BATCH
    u = rng.random((10, n))                       # every number drawn for every candidate, fixed order
    g = rng.standard_normal((3, n))
    sp = _samplers()
    zs = np.interp(u[0], *sp["zsrc"])
    zl = np.maximum(u[1] * zs, 1e-3)
    sigma = np.interp(u[2], *sp["sigma"])
    em, esd, emax = ELLIP_MEAN_SD_MAX
    lo, hi = ndtr(-em / esd), ndtr((emax - em) / esd)
    ellip = em + esd * ndtri(lo + u[3] * (hi - lo))
    phie, phig = 360.0 * u[4] - 180.0, 360.0 * u[5] - 180.0
    gamma = np.minimum(10.0 ** (LOG_GAMMA_MEAN_SD_MAX[0] + LOG_GAMMA_MEAN_SD_MAX[1] * g[0]), LOG_GAMMA_MEAN_SD_MAX[2])
    mag_src = np.interp(u[6], *sp["mag"])
    # optical depth weight: dV/dz_l x (D_ds / D_s)^2 x lambda(e)^2 (the sigma^4 is in the VDF sampler)
    dd, ds, dds = distances(zl, zs, cosmology)
    lam = dynamical_normalization(ellip)
    w = np.interp(zl, *_volume_table(cosmology)) * (dds / ds) ** 2 * lam**2 / dynamical_normalization(emax) ** 2
    b = lam * einstein_radius(sigma, zl, zs, cosmology)
    r, phi = SOURCE_RADIUS_B * b * np.sqrt(u[8]), 2.0 * np.pi * u[9]
    xs, ys = r * np.cos(phi), r * np.sin(phi)
    keep = np.flatnonzero(u[7] < w)
    out = np.zeros(keep.size, OM10_DRAW_DTYPE)
    if keep.size == 0:
        return out
    sol = solve_lenses(sigma[keep], ellip[keep], phie[keep], gamma[keep], phig[keep], zl[keep], zs[keep],
                       xs[keep], ys[keep], cosmology)
    out["LENSID"] = -1 - (batch * n + keep)       # negative: drawn, not from the OM10 catalogue
    out["NIMG"] = sol["nimg"]
    for col, v in (("ZLENS", zl), ("VELDISP", sigma), ("ELLIP", ellip), ("PHIE", phie), ("GAMMA", gamma),
                   ("PHIG", phig), ("ZSRC", zs), ("XSRC", xs), ("YSRC", ys), ("MAGI_IN", mag_src),
                   ("DD", dd), ("DS", ds), ("DDS", dds)):
        out[col] = v[keep]
    m = min(4, sol["ximg"].shape[1])
    for col, k in (("XIMG", "ximg"), ("YIMG", "yimg"), ("MAG", "mag"), ("DELAY", "delay")):
        out[col][:, :m] = np.nan_to_num(sol[k][:, :m])
    dx = out["XIMG"][:, :, None] - out["XIMG"][:, None, :]
    dy = out["YIMG"][:, :, None] - out["YIMG"][:, None, :]
    valid = np.arange(4)[None, :] < out["NIMG"][:, None]
    pair = valid[:, :, None] & valid[:, None, :]
    out["IMSEP"] = np.where(pair, np.hypot(dx, dy), 0.0).max(axis=(1, 2))
    # OM10's MAGI: the 2nd brightest image of a double, the 3rd of a quad
    amag = np.sort(np.where(valid, np.abs(out["MAG"]), 0.0), axis=1)[:, ::-1]
    kth = np.where(out["NIMG"] == 4, 2, 1)
    with np.errstate(divide="ignore"):
        out["MAGI"] = out["MAGI_IN"] - 2.5 * np.log10(amag[np.arange(keep.size), kth])
    # lens light: Faber-Jackson-like luminosity and a size-sigma relation (docs), old template K-correction
    old = seds.GALAXY_SEDS.index(LENS_SED)
    kcorr = seds.template_mag_offsets(old, zl[keep], "i") - seds.template_mag_offsets(old, 0.0, "i")
    ls = np.log10(sigma[keep] / 200.0)
    out["ABMAG_I"] = LENS_MAG_I[0] + LENS_MAG_I[1] * ls + LENS_MAG_I[2] * g[1, keep]
    out["APMAG_I"] = out["ABMAG_I"] + (cosmology or DEFAULT_COSMOLOGY).distmod(zl[keep]).value + kcorr
    log_re = LENS_LOG_REFF_KPC[0] + LENS_LOG_REFF_KPC[1] * ls + LENS_LOG_REFF_KPC[2] * g[2, keep]
    out["REFF"] = 10.0 ** log_re / (1e3 * dd[keep]) * np.degrees(1.0) * 3600.0
    return out[np.isin(out["NIMG"], (2, 4))]


def draw_om10_like(seed, n, *, cosmology=None, min_imsep=OM10_LIMITS["min_imsep"],
                   max_magi=OM10_LIMITS["max_magi"], max_delay=None):
    """n OM10-format lensed quasars (OM10_DRAW_DTYPE: the read_om10 column names) drawn from the
    project's distributions (module constants, docs/lensed_quasars.md) and solved with
    lensing.solve_lenses (`cosmology`: astropy, default lensing.DEFAULT_COSMOLOGY).

    Keeps systems with 2 or 4 images, image separation IMSEP >= min_imsep (arcsec) and MAGI (i mag of
    the 2nd brightest image of a double, 3rd of a quad) <= max_magi: OM10's LSST cuts (None: no cut);
    `max_delay` (days, default None) drops systems whose longest delay exceeds it: the real Twinkles
    table has none beyond 120 d, and max_delay=120 reproduces its statistics (docs).
    Candidates come in batches keyed (seed, OM10_DRAW_KIND, batch); the result is the first n accepted
    in candidate order, so a smaller n gives a prefix. LENSID = -1 - candidate index (< 0: drawn).
    """
    seed = check_seed(seed, "draw_om10_like")
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)) or not 0 <= n <= 10**6:
        raise InputError("draw_om10_like", "n", "an integer 0 <= n <= 1e6", n)
    parts, got, batch = [], 0, 0
    while got < n:
        d = _draw_batch(seed, batch, cosmology)
        if min_imsep is not None:
            d = d[d["IMSEP"] >= min_imsep]
        if max_magi is not None:
            d = d[d["MAGI"] <= max_magi]
        if max_delay is not None:
            d = d[d["DELAY"].max(axis=1) <= max_delay]
        parts.append(d)
        got += d.size
        batch += 1
        if batch > 1000 + 10 * n:
            raise InputError("draw_om10_like", "limits", "cuts that some systems pass",
                             (min_imsep, max_magi, max_delay))
    return np.concatenate(parts)[:n] if parts else np.zeros(0, OM10_DRAW_DTYPE)


# --- the sprinkler ---------------------------------------------------------------------------
def sprinkle(seed, galaxies, om10, ra0, dec0, radius_deg, *, density_per_deg2=DEFAULT_DENSITY_PER_DEG2,
             dz_max=DEFAULT_DZ_MAX, cosmology=None):
    """Turn catalogue galaxies into OM10 lenses: (galaxies_out, systems, images).

    galaxies: GALAXY_DTYPE (any order). om10: an OM10-format table (read_om10 or draw_om10_like).
    The number of systems is Poisson(density_per_deg2 x cap area) (key (seed, SPRINKLE_KIND, 0)); the
    OM10 rows, sorted by LENSID, are taken without replacement in a keyed random order (key
    (seed, SPRINKLE_KIND, 1)), each matched to the unused galaxy within `radius_deg` and
    |z - ZLENS| < dz_max of highest keyed priority (a hash of (seed, id)); rows without a match are
    skipped. Outputs are sorted by id.
    `cosmology` is unused (the OM10 columns carry everything) and kept for a uniform API.
    """
    seed = check_seed(seed, "sprinkler")
    ra0, dec0, radius_deg = check_field(ra0, dec0, radius_deg, "sprinkler")
    if not 0.0 <= density_per_deg2 <= 1e5:
        raise InputError("sprinkler", "density_per_deg2", "0 <= density <= 1e5 per deg^2", density_per_deg2)
    gal = np.sort(np.asarray(galaxies), order="id")
    om10 = np.asarray(om10)
    om10 = om10[np.lexsort([om10[c] for c in ("YSRC", "XSRC", "ZSRC", "LENSID")])]   # input order is irrelevant
    area = 2.0 * np.pi * (1.0 - np.cos(np.radians(radius_deg))) * np.degrees(1.0) ** 2
    n_target = int(np.random.default_rng([seed, SPRINKLE_KIND, 0]).poisson(density_per_deg2 * area))
    if n_target > len(om10):
        raise InputError("sprinkler", "om10", f"at least {n_target} systems (density x area); "
                         "use draw_om10_like(seed, n) for a bigger table", len(om10))
    order = np.random.default_rng([seed, SPRINKLE_KIND, 1]).permutation(len(om10))
    inside = np.flatnonzero(angular_distance_deg(gal["ra"], gal["dec"], ra0, dec0) <= radius_deg)
    cand = inside[np.argsort(_hash_uniform(seed, SPRINKLE_KIND, gal["id"][inside]), kind="stable")]
    zc, free = gal["redshift"][cand], np.ones(cand.size, bool)
    pairs = []
    for row in order.tolist():
        if len(pairs) == n_target:
            break
        ok = np.flatnonzero(free & (np.abs(zc - om10["ZLENS"][row]) < dz_max))
        if ok.size:
            free[ok[0]] = False
            pairs.append((cand[ok[0]], row))
    pairs.sort()
    gi = np.array([p[0] for p in pairs], dtype=np.intp)
    lenses = om10[np.array([p[1] for p in pairs], dtype=np.intp)]
    gal_out = gal.copy()
    gal_out[gi] = _lens_galaxies(gal[gi], lenses)
    systems = _systems(seed, gal[gi], lenses)
    return gal_out, systems, _images(systems, lenses)


def _lens_galaxies(g, lenses):
    """The chosen galaxies as OM10 lenses: z = ZLENS, a de Vaucouleurs bulge only.

    REFF is the circularised half-light radius sqrt(a b) (Twinkles painted it from the Bernardi et al.
    fundamental plane, OM10 issue #33), so the semi-major hlr is REFF / sqrt(q) with q = 1 - ELLIP; the position
    angle is PHIE (east of north, lensing.py), folded into [0, 180). i = APMAG_I; the other bands
    follow the old template at ZLENS (exact seds.sed_magnitude integrals).
    """
    g = g.copy()
    zl, q = lenses["ZLENS"], 1.0 - lenses["ELLIP"]
    g["redshift"] = zl
    g["bulge_sed"] = LENS_SED
    g["bulge_hlr"] = lenses["REFF"] / np.sqrt(q)
    g["bulge_q"] = q
    g["bulge_pa"] = lenses["PHIE"] % 180.0
    off = np.array([[seds.sed_magnitude(LENS_SED, 0.0, z, b) for b in BANDS] for z in zl]).reshape(-1, len(BANDS))
    g["bulge_mag_norm"] = lenses["APMAG_I"] - off[:, BANDS.index("i")]
    for k, b in enumerate(BANDS):
        g[f"bulge_mag_{b}"] = lenses["APMAG_I"] if b == "i" else g["bulge_mag_norm"] + off[:, k]
        g[f"disk_mag_{b}"] = np.inf
    g["disk_mag_norm"], g["disk_hlr"], g["disk_q"] = np.inf, 0.0, 1.0
    return g


def _systems(seed, g, lenses):
    s = np.zeros(len(g), LENS_SYSTEM_DTYPE)
    s["sys_id"] = LENS_SYSTEM_KIND * ID_KIND_FACTOR + g["id"] % ID_KIND_FACTOR
    s["lens_galaxy_id"], s["ra"], s["dec"] = g["id"], g["ra"], g["dec"]
    for c in ("zlens", "zsrc", "veldisp", "ellip", "phie", "gamma", "phig", "xsrc", "ysrc", "nimg", "imsep",
              "magi_in", "reff", "apmag_i"):
        s[c] = lenses[c.upper()]
    s["om10_lensid"] = np.where(lenses["LENSID"] >= 0, lenses["LENSID"], -1)
    q = draw_quasar_params(seed, s["sys_id"], s["zsrc"], s["magi_in"])
    for name, _ in QSO_FIELDS:
        s[name] = q[name]
    return s


def _images(systems, lenses):
    n = systems["nimg"].astype(np.intp)
    si = np.repeat(np.arange(len(systems)), n)
    k = np.concatenate([np.arange(m) for m in n]) if n.size else np.zeros(0, np.intp)
    local = systems["lens_galaxy_id"] % ID_KIND_FACTOR
    if np.any(local % ID_TILE_FACTOR >= ID_TILE_FACTOR // 4):
        raise InputError("sprinkler", "galaxies", f"galaxy index within a tile < {ID_TILE_FACTOR // 4}")
    im = np.zeros(si.size, LENSED_IMAGE_DTYPE)
    im["sys_id"], im["image_index"] = systems["sys_id"][si], k
    # same tile as the lens galaxy, index 4 * galaxy index + image index
    im["image_id"] = (LENSED_IMAGE_KIND * ID_KIND_FACTOR + local[si] // ID_TILE_FACTOR * ID_TILE_FACTOR
                      + 4 * (local[si] % ID_TILE_FACTOR) + k)
    for c, col in (("x_arcsec", "XIMG"), ("y_arcsec", "YIMG"), ("mag", "MAG"), ("delay", "DELAY")):
        im[c] = lenses[col][si, k]
    im["ra"], im["dec"] = offsets_to_radec(systems["ra"][si], systems["dec"][si], im["x_arcsec"], im["y_arcsec"])
    return im
