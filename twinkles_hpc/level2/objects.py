"""The Objects of one patch: detectCoaddSources -> mergeCoaddDetections -> measureCoaddSources
(docs/level2-objects.md).

Inputs: the patch's coadds (one file per band, coadds/B/patch-I-J.h5: image in nJy per pixel, variance
nJy^2, mask, n_visits, attrs wcs/tract/patch/bbox/inner_bbox) and the reference catalogue.

1. Detection image (all bands at once, so that each source is detected once and the "merge" is
   implicit): per band b, s_b = the local source-free noise (sqrt of the 31 x 31 px running minimum of
   the variance plane); D = sum_b image_b / s_b with variance V_D = sum_b variance_b / s_b^2, over the
   bands with data at the pixel. D is linear in the pixels (a weighted sum with weights that do not
   depend on the sources), so centroids and footprints are those of the summed light, and V_D is its
   exact variance (up to the warp's pixel correlations). Pixels without data in every band are masked.
2. detect() on (D, V_D) at `threshold` sigma (matched filter FWHM 4 px), deblended; each leaf (an
   unsplit footprint or a deblended child) becomes an Object at its windowed centroid x, y (patch
   pixels); psRa/psDecl from the patch WCS.
3. Per band: a MixturePSF estimated on the band's coadd from reference stars on it (isolated from every
   other reference star and every detection by 3/2 STAMP_RADIUS, the whole stamp with data, n_visits > 0
   over the stamp and equal to its maximum on >= 95% of the stamp outside 2/3 STAMP_RADIUS (not on a
   coverage edge, so one PSF; the core's n_visits drops where clipping rejects an input, and a few sky
   pixels' where it clips noise), no SAT pixel, S/N >= 30 in a 6 px aperture; the brightest 80), the
   polynomial order as in calibrate.py (the highest <= 2 with 3 stars per coefficient). The coadd's PSF
   changes where the number of inputs changes (visits of different seeing), so the stars are grouped by
   their coverage zone (the most common n_visits around them) and each zone with >= 3 stars gets its
   own model; zone -1 (all stars) serves the other zones (ZonePSF). Forced PSF and aperture photometry
   at the Object positions; the PSF flux is aperture-corrected to the 20 px aperture, like the calexps'
   zero points, so it is a total flux for point sources: the correction is a map, the Gaussian-weighted
   (150 px) mean of the zone's PSF stars' ap20 / psf ratios with the zone median as a weak prior
   (ap_corr_map). Bands without a coadd for the patch (or < 3 PSF stars) give NaN.
4. extendedness (1 = extended): over the bands with a PSF, A = sum of the 6 px aperture fluxes and
   P = sum of psf_flux x (the PSF model's own 6 px aperture fraction), both before aperture correction;
   extended when A / P > 1 + EXT_FRACTION and A - P > EXT_NSIGMA x the aperture error. A point source
   has A / P = 1 whatever its flux; NaN when no band measures it.
5. detect_isPrimary: the Object's centroid (tract pixels) lies in the patch's inner box, so the union of
   the patches' primary Objects has each source once.

objectId = ((tract * 1024 + i) * 1024 + j) * 2**32 + the detection's row id (1-based, deterministic);
parentObjectId the same encoding of the deblended parent's row id, 0 for an unsplit footprint.
"""
from __future__ import annotations

import json

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS
from scipy import ndimage
from scipy.spatial import cKDTree

from twinkles_hpc.level2 import forced as _forced
from twinkles_hpc.level2.detect import FLAG_DEBLENDED, detect, leaves
from twinkles_hpc.level2.psf import STAMP_RADIUS, estimate_psf
from twinkles_hpc.store.atomic import open_read

SAT, NO_DATA, BAD = 1, 16, 32
#: Matched-filter FWHM of the detection (pixels; ~0.8" at 0.2"/px, the coadd PSF).
DETECT_FWHM_PX = 4.0
#: Side of the running minimum that gives the source-free variance (pixels).
NOISE_BOX = 31
#: PSF stars: isolation (pixels), S/N in the 6 px aperture, at most this many (the brightest).
PSF_ISOLATION_PX = 1.5 * STAMP_RADIUS
PSF_MIN_SNR = 100.0
MAX_PSF_STARS = 80
PSF_MAX_ORDER = 2
#: Aperture radii (pixels): the extendedness aperture, the reported aperture, the aperture correction's.
EXT_AP, REPORT_AP, APCORR_AP = 6.0, 12.0, 20.0
EXT_FRACTION, EXT_NSIGMA = 0.05, 3.0
#: Aperture-correction map: Gaussian kernel scale (pixels) and the weight of the zone's median.
APCORR_SCALE, APCORR_PRIOR = 150.0, 0.1


def object_id(tract, i, j, row_id):
    """The objectId of detection row `row_id` (1-based) in patch (i, j) of `tract` (0 for row_id 0)."""
    row_id = np.asarray(row_id, dtype=np.int64)
    base = np.int64(((int(tract) * 1024 + int(i)) * 1024 + int(j)) << 32)
    return np.where(row_id > 0, base + row_id, 0).astype(np.int64)


def object_dtype(bands):
    f = [("objectId", "i8"), ("parentObjectId", "i8"), ("psRa", "f8"), ("psDecl", "f8"), ("x", "f8"),
         ("y", "f8"), ("detect_isPrimary", "?"), ("extendedness", "f8"), ("detFlux", "f8"),
         ("detFluxSigma", "f8"), ("detFlags", "i4")]
    for b in bands:
        f += [(f"{b}PsFlux", "f8"), (f"{b}PsFluxSigma", "f8"), (f"{b}ApFlux", "f8"), (f"{b}ApFluxSigma", "f8"),
              (f"{b}Flags", "i4")]
    return np.dtype(f)


def _read(path):
    with open_read(path) as f:
        planes = {k: f[k][...] for k in ("image", "variance", "mask", "n_visits")}
        attrs = {k: (v.item() if getattr(v, "size", 0) == 1 and hasattr(v, "item") else v) for k, v in f.attrs.items()}
    return planes, attrs


def _noise(var, good):
    """Source-free variance: running minimum of the variance over good pixels (NaN elsewhere)."""
    v = np.where(good, var, np.inf).astype(np.float32)
    m = ndimage.minimum_filter(v, size=NOISE_BOX, mode="nearest")
    return np.where(good & np.isfinite(m) & (m > 0), m, np.nan)


def detection_image(coadds):
    """(D, V_D, mask) over the bands' planes (see the module doc); mask True where no band has data."""
    shape = next(iter(coadds.values()))[0]["image"].shape
    D = np.zeros(shape, np.float64)
    V = np.zeros(shape, np.float64)
    n = np.zeros(shape, np.int32)
    for planes, _ in coadds.values():
        img, var = planes["image"], planes["variance"]
        good = np.isfinite(img) & np.isfinite(var) & (var > 0) & ((planes["mask"] & NO_DATA) == 0)
        s2 = _noise(var, good)
        ok = good & np.isfinite(s2)
        D[ok] += img[ok] / np.sqrt(s2[ok])
        V[ok] += var[ok] / s2[ok]
        n += ok
    return D.astype(np.float32), V.astype(np.float32), n == 0


def _aperture_snr(img, var, x, y, r=EXT_AP):
    out = np.full(len(x), np.nan)
    R = int(np.ceil(r))
    yy, xx = np.mgrid[-R:R + 1, -R:R + 1]
    ap = xx ** 2 + yy ** 2 <= r * r
    for k, (xi, yi) in enumerate(zip(np.rint(x).astype(int), np.rint(y).astype(int))):
        sl = (slice(yi - R, yi + R + 1), slice(xi - R, xi + R + 1))
        out[k] = img[sl][ap].sum() / np.sqrt(var[sl][ap].sum())
    return out


def _ring(R):
    yy, xx = np.mgrid[-R:R + 1, -R:R + 1]
    return xx ** 2 + yy ** 2 > (2 * R / 3) ** 2


def coverage(n_visits, x, y, R=STAMP_RADIUS):
    """The coverage zone of each position: the most common n_visits on the ring 2/3 R < r <= R around it
    (sky pixels, where clipping seldom lowers it; a bright core's n_visits drops), 0 off the data."""
    ny, nx = n_visits.shape
    ring = _ring(R)
    out = np.zeros(len(x), np.int32)
    for k, (i, j) in enumerate(zip(np.rint(x).astype(int), np.rint(y).astype(int))):
        box = n_visits[max(j - R, 0):j + R + 1, max(i - R, 0):i + R + 1]
        if box.shape != ring.shape:
            box = n_visits[min(max(j, 0), ny - 1), min(max(i, 0), nx - 1)].reshape(1)
        else:
            box = box[ring]
        out[k] = np.bincount(box.ravel().clip(0)).argmax()
    return out


def psf_stars(planes, wcs, refcat, det_xy):
    """Indices into refcat, patch pixel positions (x, y) and coverage zones of the PSF stars."""
    img, var, mask, nv = planes["image"], planes["variance"], planes["mask"], planes["n_visits"]
    ny, nx = img.shape
    R = STAMP_RADIUS
    x, y = wcs.all_world2pix(refcat["ra"], refcat["dec"], 0)
    on = np.flatnonzero((x > R + 2) & (x < nx - R - 3) & (y > R + 2) & (y < ny - R - 3))
    if len(on) == 0:
        return on, x[on], y[on], on
    # isolated from every other reference star and every detection (the star's own detection aside)
    allref = np.column_stack([x, y])
    d_ref, _ = cKDTree(allref).query(allref[on], k=2)
    keep = d_ref[:, 1] > PSF_ISOLATION_PX
    if len(det_xy):
        d_det, _ = cKDTree(det_xy).query(allref[on], k=min(2, len(det_xy)))
        d_det = d_det.reshape(len(on), -1)
        second = d_det[:, 1] if d_det.shape[1] > 1 else np.full(len(on), np.inf)
        keep &= second > PSF_ISOLATION_PX
    on = on[keep]
    ok = []
    ring = _ring(R)
    for k in on:
        i, j = int(round(x[k])), int(round(y[k]))
        sl = (slice(j - R, j + R + 1), slice(i - R, i + R + 1))
        s_nv = nv[sl][ring]
        ok.append(bool(np.isfinite(img[sl]).all() and np.isfinite(var[sl]).all() and (var[sl] > 0).all()
                       and not (mask[sl] & (SAT | NO_DATA | BAD)).any()
                       and nv[sl].min() > 0 and (s_nv == s_nv.max()).mean() >= 0.95))
    on = on[np.array(ok, bool)] if len(on) else on
    if len(on) == 0:
        return on, x[on], y[on], on
    snr = _aperture_snr(img, var, x[on], y[on])
    good = snr >= PSF_MIN_SNR
    on, snr = on[good], snr[good]
    on = on[np.argsort(-snr, kind="stable")][:MAX_PSF_STARS]
    return on, x[on], y[on], coverage(nv, x[on], y[on])


def _order(n):
    return next((o for o in range(PSF_MAX_ORDER, -1, -1) if n >= 3 * (o + 1) * (o + 2) // 2), None)


def band_psfs(planes, wcs, refcat, det_xy):
    """PSF models of one band's coadd: {zone: (MixturePSF, star x, star y, order)}, zone = the coverage
    (n_visits) the stars share, plus zone -1 fitted to all the stars (for zones with fewer than 3)."""
    idx, x, y, zone = psf_stars(planes, wcs, refcat, det_xy)
    # weights without the stars' own shot noise keep the fit unbiased (as calibrate.py)
    var = planes["variance"]
    good = np.isfinite(var) & (var > 0)
    s = _noise(var, good)
    bg_var = np.where(np.isfinite(s), s, np.nanmax(var[good]) if good.any() else 1.0)
    img = np.where(np.isfinite(planes["image"]), planes["image"], 0.0)
    out = {}
    for z in [-1] + sorted(set(zone.tolist())):
        sel = np.ones(len(idx), bool) if z < 0 else zone == z
        order = _order(int(sel.sum()))
        if order is None or (z >= 0 and sel.all() and -1 in out):
            continue
        psf, _ = estimate_psf(img, bg_var, x[sel], y[sel], order=order)
        out[z] = (psf, x[sel], y[sel], order)
    if -1 in out and len(out) == 1 and len(set(zone.tolist())) == 1:
        out[int(zone[0])] = out[-1]
    return out, int(len(idx))


class ZonePSF:
    """components_at(x, y) from the PSF of each position's coverage zone (zone -1 where it has none)."""

    def __init__(self, psfs, zones):
        self.psfs, self.zones = psfs, zones

    def components_at(self, x, y, zones=None):
        x, y = np.atleast_1d(x), np.atleast_1d(y)
        z = self.zones if zones is None else zones
        z = np.where(np.isin(z, list(self.psfs)), z, -1)
        comps = [np.zeros((len(x), len(self.psfs[-1].weights))) for _ in range(4)]
        for zz in np.unique(z):
            m = z == zz
            for c, v in zip(comps, self.psfs[int(zz)].components_at(x[m], y[m])):
                c[m] = v
        return tuple(comps)


def ap_corr_map(sx, sy, ratio, median, x, y):
    """Aperture correction at (x, y): the Gaussian-weighted (APCORR_SCALE px) mean of the PSF stars'
    ap_flux_20 / psf_flux, with the zone's median as one more star of weight APCORR_PRIOR (so it tends
    to the median far from the stars)."""
    if len(sx) == 0:
        return np.full(len(x), median)
    d2 = (np.asarray(x)[:, None] - sx[None, :]) ** 2 + (np.asarray(y)[:, None] - sy[None, :]) ** 2
    k = np.exp(-0.5 * d2 / APCORR_SCALE ** 2)
    return (k @ ratio + APCORR_PRIOR * median) / (k.sum(1) + APCORR_PRIOR)


def _apname(r):
    return f"ap_flux_{_forced._radius_name(r)}"


def measure_patch(coadd_paths_by_band, refcat, *, threshold=5.0, bands=None):
    """Objects of one patch from its coadds (dict band -> path; bands missing or None get NaN).

    refcat: the reference catalogue (ra, dec in deg). bands: the bands (columns) of the table, default
    the dict's keys sorted. Returns (objects, meta): objects an `object_dtype(bands)` array (module doc),
    meta a JSON-able dict (per band PSF stars, order, aperture correction).
    """
    paths = {b: p for b, p in coadd_paths_by_band.items() if p is not None}
    if not paths:
        raise ValueError("measure_patch: no coadd given")
    bands = sorted(coadd_paths_by_band) if bands is None else list(bands)
    coadds = {b: _read(paths[b]) for b in sorted(paths)}
    a0 = next(iter(coadds.values()))[1]
    for b, (_, a) in coadds.items():
        if list(a["patch"]) != list(a0["patch"]) or list(a["bbox"]) != list(a0["bbox"]):
            raise ValueError(f"measure_patch: coadd of band {b} is of another patch ({a['patch']})")
    wcs = WCS(fits.Header.fromstring(str(a0["wcs"])))
    tract, (pi, pj) = int(a0["tract"]), (int(v) for v in a0["patch"])
    bx0, by0 = int(a0["bbox"][0]), int(a0["bbox"][1])
    ix0, iy0, inx, iny = (int(v) for v in a0["inner_bbox"])

    D, V, dmask = detection_image(coadds)
    cat, _ = detect(D, V, threshold=threshold, kernel_fwhm_px=DETECT_FWHM_PX, mask=dmask)
    leaf = cat[leaves(cat)] if len(cat) else cat
    out = np.zeros(len(leaf), object_dtype(bands))
    out["objectId"] = object_id(tract, pi, pj, leaf["id"])
    out["parentObjectId"] = object_id(tract, pi, pj, leaf["parent"])
    out["x"], out["y"] = leaf["x"], leaf["y"]
    if len(leaf):
        ra, dec = wcs.all_pix2world(leaf["x"], leaf["y"], 0)
        out["psRa"], out["psDecl"] = ra, dec
    out["detFlux"], out["detFluxSigma"], out["detFlags"] = leaf["flux"], leaf["flux_err"], leaf["flags"]
    tx, ty = leaf["x"] + bx0, leaf["y"] + by0
    out["detect_isPrimary"] = (tx >= ix0 - 0.5) & (tx < ix0 + inx - 0.5) & (ty >= iy0 - 0.5) & (ty < iy0 + iny - 0.5)
    for b in bands:
        for c in ("PsFlux", "PsFluxSigma", "ApFlux", "ApFluxSigma"):
            out[f"{b}{c}"] = np.nan
        out[f"{b}Flags"] = _forced.FLAG_NO_DATA
    meta = {"tract": tract, "patch": [pi, pj], "threshold": threshold, "n_detections": int(len(cat)),
            "n_objects": int(len(out)), "bands": {}}
    det_xy = np.column_stack([leaf["x"], leaf["y"]]) if len(leaf) else np.zeros((0, 2))
    ext_A = np.zeros(len(out))
    ext_P = np.zeros(len(out))
    ext_V = np.zeros(len(out))
    ext_n = np.zeros(len(out), np.int32)
    for b in bands:
        if b not in coadds:
            continue
        planes, _ = coadds[b]
        models, n_stars = band_psfs(planes, wcs, refcat, det_xy)
        bm = {"n_psf_stars": n_stars, "zones": {}}
        meta["bands"][b] = bm
        if -1 not in models or len(out) == 0:
            continue
        img, var = planes["image"], planes["variance"]
        mask = planes["mask"].copy()
        mask[~(np.isfinite(img) & np.isfinite(var))] |= NO_DATA
        img = np.where(np.isfinite(img), img, 0.0).astype(np.float32)
        var = np.where(np.isfinite(var), var, 0.0).astype(np.float32)
        radii = (EXT_AP, REPORT_AP, APCORR_AP)
        # per zone: aperture correction from its PSF stars (clean; the brightest half, at least 3)
        ap_corr = {}
        for z, (zpsf, sx, sy, order) in models.items():
            sp = _forced.forced_photometry(img, var, mask, sx, sy, zpsf, ap_radii=radii)
            clean = (sp["flags"] == 0) & np.isfinite(sp[_apname(APCORR_AP)]) & (sp["psf_flux"] > 0)
            r = sp[_apname(APCORR_AP)][clean] / sp["psf_flux"][clean]
            ap_corr[z] = (sx[clean], sy[clean], r, float(np.median(r)) if len(r) else 1.0)
            bm["zones"][str(z)] = {"n_stars": int(len(sx)), "order": order, "ap_corr": ap_corr[z][3],
                                   "n_ap_corr": int(clean.sum()), "psf": json.dumps(zpsf.to_dict())}
        zones = coverage(planes["n_visits"], leaf["x"], leaf["y"])
        zones = np.where(np.isin(zones, list(models)), zones, -1)
        corr = np.ones(len(zones))
        for z in np.unique(zones):
            m = zones == z
            corr[m] = ap_corr_map(*ap_corr[int(z)], leaf["x"][m], leaf["y"][m])
        psf = ZonePSF({z: m[0] for z, m in models.items()}, zones)
        ph = _forced.forced_photometry(img, var, mask, leaf["x"], leaf["y"], psf,
                                       object_ids=out["objectId"], ap_radii=radii)
        out[f"{b}PsFlux"] = ph["psf_flux"] * corr
        out[f"{b}PsFluxSigma"] = ph["psf_flux_err"] * corr
        out[f"{b}ApFlux"] = ph[_apname(REPORT_AP)]
        out[f"{b}ApFluxSigma"] = ph[_apname(REPORT_AP) + "_err"]
        out[f"{b}Flags"] = ph["flags"]
        frac = _forced.psf_aperture_fraction(psf, leaf["x"], leaf["y"], ap_radii=(EXT_AP,))[:, 0]
        a6, e6 = ph[_apname(EXT_AP)], ph[_apname(EXT_AP) + "_err"]
        use = np.isfinite(a6) & np.isfinite(ph["psf_flux"]) & ((ph["flags"] & _forced.FLAG_NO_DATA) == 0)
        ext_A[use] += a6[use]
        ext_P[use] += ph["psf_flux"][use] * frac[use]
        ext_V[use] += e6[use] ** 2
        ext_n += use
    with np.errstate(invalid="ignore", divide="ignore"):
        ext = ((ext_A > (1 + EXT_FRACTION) * ext_P) & (ext_A - ext_P > EXT_NSIGMA * np.sqrt(ext_V))).astype(float)
    out["extendedness"] = np.where(ext_n > 0, ext, np.nan)
    meta["n_primary"] = int(out["detect_isPrimary"].sum())
    meta["n_deblended_parents"] = int(((cat["flags"] & FLAG_DEBLENDED) != 0).sum()) if len(cat) else 0
    return out, meta
