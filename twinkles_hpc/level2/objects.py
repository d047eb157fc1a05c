"""The Objects of one patch: detectCoaddSources -> mergeCoaddDetections -> measureCoaddSources
(docs/level2-objects.md).

Inputs: the patch's coadds (one file per band, coadds/B/patch-I-J.h5: image in nJy per pixel, variance
nJy^2, mask, n_visits, the coadd PSF grid psf_*, attrs wcs/tract/patch/bbox/inner_bbox) and the
reference catalogue.

1. Detection image (all bands at once, so that each source is detected once and the "merge" is
   implicit): per band b, s_b = the local source-free noise (sqrt of the 31 x 31 px running minimum of
   the variance plane); D = sum_b image_b / s_b with variance V_D = sum_b variance_b / s_b^2, over the
   bands with data at the pixel. D is linear in the pixels (a weighted sum with weights that do not
   depend on the sources), so centroids and footprints are those of the summed light, and V_D is its
   exact variance (up to the warp's pixel correlations). Pixels without data in every band are masked.
   Written as a product, the detection coadd (write_detection_coadd), when asked.
2. detect() on (D, V_D) at `threshold` sigma (matched filter FWHM 4 px), deblended; each leaf (an
   unsplit footprint or a deblended child) becomes an Object at its windowed centroid x, y (patch
   pixels); psRa/psDecl from the patch WCS.
3. Per band: forced PSF and aperture photometry at the Object positions with the coadd's own PSF
   (coaddpsf.CoaddPSF: the inputs' PSF models combined with the coadd's weights, built by the coadd
   task). The PSF flux is aperture-corrected to the 20 px aperture, like the calexps' zero points, so it
   is a total flux for point sources: the correction is a map, the Gaussian-weighted (150 px) mean of
   the ap20 / psf ratios of bright isolated reference stars on the coadd (isolated from every other
   reference star and every detection by 3/2 STAMP_RADIUS, the whole stamp with data and no
   SAT/NO_DATA/BAD pixel, n_visits equal to its maximum on >= 95% of the stamp's outer ring, S/N >= 100
   in a 6 px aperture; the brightest 80), with their median as a weak prior (ap_corr_map); with fewer
   than 3 such stars, the inputs' aperture corrections as combined in the coadd file (psf_ap_corr).
   Objects where the band has no coadd or its PSF grid no input give NaN, flag NO_DATA.
4. extendedness (1 = extended): over the bands with a PSF, A = sum of the 6 px aperture fluxes and
   P = sum of psf_flux x (the PSF model's own 6 px aperture fraction), both before aperture correction;
   extended when A / P > 1 + EXT_FRACTION and A - P > EXT_NSIGMA x the aperture error. A point source
   has A / P = 1 whatever its flux; NaN when no band measures it.
5. detect_isPrimary: the Object's centroid (tract pixels) lies in the patch's inner box, so the union of
   the patches' primary Objects has each source once.
6. Shapes: adaptive second moments (shapes.py) on the coadd of the first of SHAPE_BANDS with one (r),
   other Objects' footprints left out: Ixx, Iyy, Ixy in arcsec^2 along the patch pixel axes (x =
   +column, west; y = +row, north), PSF not removed; shape_flag True where they failed (NaN).

objectId = ((tract * 1024 + i) * 1024 + j) * 2**32 + the detection's row id (1-based, deterministic);
parentObjectId the same encoding of the deblended parent's row id, 0 for an unsplit footprint.
"""
from __future__ import annotations

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS
from scipy.spatial import cKDTree

from twinkles_hpc.level2 import photometry as _phot
from twinkles_hpc.level2.background import add_detection_band
from twinkles_hpc.level2.coaddpsf import CoaddPSF
from twinkles_hpc.level2.detect import FLAG_DEBLENDED, detect, leaves
from twinkles_hpc.level2.masks import BAD, DETECTED, NO_DATA, SAT
from twinkles_hpc.level2.psf import STAMP_RADIUS
from twinkles_hpc.level2.shapes import adaptive_moments
from twinkles_hpc.store.atomic import atomic_h5, open_read
from twinkles_hpc.store.tables import write_planes

#: The band whose coadd the shapes are measured on: the first of these with a coadd.
SHAPE_BANDS = ("r", "i", "g", "z", "y", "u")
#: Attributes of the band coadds copied to the detection coadd.
DET_ATTRS = ("wcs", "tract", "patch", "bbox", "inner_bbox", "skymap")
#: Matched-filter FWHM of the detection (pixels; ~0.8" at 0.2"/px, the coadd PSF).
DETECT_FWHM_PX = 4.0
#: Side of the running minimum that gives the source-free variance (pixels).
NOISE_BOX = 31
#: Aperture-correction stars: isolation (pixels), S/N in the 6 px aperture, at most this many (the
#: brightest); fewer than MIN_AP_CORR_STARS clean ones: the inputs' combined aperture correction instead.
PSF_ISOLATION_PX = 1.5 * STAMP_RADIUS
PSF_MIN_SNR = 100.0
MAX_PSF_STARS = 80
MIN_AP_CORR_STARS = 3
#: Aperture radii (pixels): the extendedness aperture, the reported aperture, the aperture correction's.
EXT_AP, REPORT_AP, APCORR_AP = 6.0, 12.0, 20.0
EXT_FRACTION, EXT_NSIGMA = 0.05, 3.0
#: Aperture-correction map: Gaussian kernel scale (pixels) and the weight of the stars' median.
APCORR_SCALE, APCORR_PRIOR = 150.0, 0.1


def object_id(tract, i, j, row_id):
    """The objectId of detection row `row_id` (1-based) in patch (i, j) of `tract` (0 for row_id 0)."""
    row_id = np.asarray(row_id, dtype=np.int64)
    base = np.int64(((int(tract) * 1024 + int(i)) * 1024 + int(j)) << 32)
    return np.where(row_id > 0, base + row_id, 0).astype(np.int64)


def object_dtype(bands):
    f = [("objectId", "i8"), ("parentObjectId", "i8"), ("psRa", "f8"), ("psDecl", "f8"), ("x", "f8"),
         ("y", "f8"), ("detect_isPrimary", "?"), ("extendedness", "f8"), ("detFlux", "f8"),
         ("detFluxSigma", "f8"), ("detFlags", "i4"), ("Ixx", "f8"), ("Iyy", "f8"), ("Ixy", "f8"),
         ("shape_flag", "?")]
    for b in bands:
        f += [(f"{b}PsFlux", "f8"), (f"{b}PsFluxSigma", "f8"), (f"{b}ApFlux", "f8"), (f"{b}ApFluxSigma", "f8"),
              (f"{b}Flags", "i4")]
    return np.dtype(f)


#: The planes each pass reads: all of them to measure, these to build the detection image.
PLANES = ("image", "variance", "mask", "n_visits")
DETECT_PLANES = ("image", "variance", "mask")


def _read(path, names=PLANES, psf=True):
    """(planes, attrs, psf) of one band coadd: the named pixel planes, the attributes and its CoaddPSF
    (None when the file has none or psf is False)."""
    with open_read(path) as f:
        planes = {k: f[k][...] for k in names}
        attrs = {k: (v.item() if getattr(v, "size", 0) == 1 and hasattr(v, "item") else v) for k, v in f.attrs.items()}
        psf = CoaddPSF.from_file(f) if psf else None
    return planes, attrs, psf


def _detection_sums(shape):
    """Zeroed accumulators of the detection image: D and V_D (float64), n, the OR of the bands' masks."""
    return [np.zeros(shape, np.float64), np.zeros(shape, np.float64), np.zeros(shape, np.int32),
            np.zeros(shape, np.uint16)]


def _add_band(sums, planes):
    """Add one band's planes to the detection sums (_detection_sums), in place: background.add_detection_band
    with the source-free variance over NOISE_BOX^2 boxes and NO_DATA pixels left out."""
    add_detection_band(sums, planes["image"], planes["variance"], planes["mask"], NO_DATA, NOISE_BOX // 2)


def _detection_result(sums):
    """(D, V_D, n, mask OR) from the sums (emptied), D and V_D as float32; each float64 sum is freed
    once cast, before the next is."""
    D, V, n, mask = sums
    sums.clear()
    D = D.astype(np.float32)
    V = V.astype(np.float32)
    return D, V, n, mask


def detection_image(coadds):
    """(D, V_D, n) over the bands' planes (see the module doc); n = the bands with data at the pixel.
    coadds: band -> (planes, attrs), as _read gives them, summed in the dict's order."""
    sums = None
    for planes, _ in coadds.values():
        if sums is None:
            sums = _detection_sums(planes["image"].shape)
        _add_band(sums, planes)
    return _detection_result(sums)[:3]


def _read_detection_image(paths):
    """detection_image of the coadds at `paths` (band -> path) in band order, one band's planes in memory
    at a time; returns (D, V_D, n, the OR of the bands' masks)."""
    sums = None
    for b in sorted(paths):
        planes = _read(paths[b], DETECT_PLANES, psf=False)[0]
        if sums is None:
            sums = _detection_sums(planes["image"].shape)
        _add_band(sums, planes)
        del planes                      # before the next band is read
    return _detection_result(sums)


def write_detection_coadd(path, D, V, n_bands, labels, band_mask, attrs, bands, storage=None):
    """The detection coadd of a patch, in the coadd format (docs/level2-coadd.md): image = D (sum over
    bands of image_b / s_b, S/N units per pixel), variance = V_D, mask = band_mask (the OR of the bands'
    masks; updated in place) | DETECTED in the detection footprints | NO_DATA where no band has data
    (image, variance NaN there), n_visits = the bands with data, depth = 1 / V_D (0 without data);
    attributes band = "det", bands and the DET_ATTRS of `attrs` (the first band's). Written atomically, the
    planes as `storage` says (store.tables.write_planes)."""
    nodata = n_bands == 0
    mask = band_mask                    # no copy: the caller has no further use for it
    np.bitwise_or(mask, DETECTED, out=mask, where=labels > 0)
    np.bitwise_or(mask, NO_DATA, out=mask, where=nodata)
    with np.errstate(divide="ignore"):
        depth = np.where(nodata | (V <= 0), 0, 1 / V).astype(np.float32)
    with atomic_h5(path) as f:
        write_planes(f, {"image": np.where(nodata, np.float32(np.nan), D),
                         "variance": np.where(nodata, np.float32(np.nan), V), "mask": mask,
                         "n_visits": n_bands.astype(np.int32), "depth": depth}, storage=storage)
        for k in DET_ATTRS:
            if k in attrs:
                f.attrs[k] = attrs[k]
        f.attrs["band"], f.attrs["bands"] = "det", sorted(bands)
        f.attrs["unit"] = "S/N per pixel: sum over bands of image_b / s_b, s_b the band's source-free noise"
    return path


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


def ap_corr_stars(planes, wcs, refcat, det_xy):
    """Indices into refcat and patch pixel positions (x, y) of the aperture-correction stars (module doc)."""
    img, var, mask, nv = planes["image"], planes["variance"], planes["mask"], planes["n_visits"]
    ny, nx = img.shape
    R = STAMP_RADIUS
    x, y = wcs.all_world2pix(refcat["ra"], refcat["dec"], 0)
    on = np.flatnonzero((x > R + 2) & (x < nx - R - 3) & (y > R + 2) & (y < ny - R - 3))
    if len(on) == 0:
        return on, x[on], y[on]
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
        return on, x[on], y[on]
    snr = _aperture_snr(img, var, x[on], y[on])
    good = snr >= PSF_MIN_SNR
    on, snr = on[good], snr[good]
    on = on[np.argsort(-snr, kind="stable")][:MAX_PSF_STARS]
    return on, x[on], y[on]


def ap_corr_map(sx, sy, ratio, median, x, y):
    """Aperture correction at (x, y): the Gaussian-weighted (APCORR_SCALE px) mean of the stars'
    ap_flux_20 / psf_flux, with `median` (scalar or per position) as one more star of weight APCORR_PRIOR
    (so it tends to the median far from the stars)."""
    if len(sx) == 0:
        return np.broadcast_to(np.asarray(median, np.float64), (len(x),)).copy()
    d2 = (np.asarray(x)[:, None] - sx[None, :]) ** 2 + (np.asarray(y)[:, None] - sy[None, :]) ** 2
    k = np.exp(-0.5 * d2 / APCORR_SCALE ** 2)
    return (k @ ratio + APCORR_PRIOR * median) / (k.sum(1) + APCORR_PRIOR)


def _apname(r):
    return f"ap_flux_{_phot._radius_name(r)}"


def measure_patch(coadd_paths_by_band, refcat, *, threshold=5.0, bands=None, detection_out=None, storage=None):
    """Objects of one patch from its coadds (dict band -> path; bands missing or None get NaN).

    refcat: the reference catalogue (ra, dec in deg). bands: the bands (columns) of the table, default
    the dict's keys sorted. Returns (objects, meta): objects an `object_dtype(bands)` array (module doc),
    meta a JSON-able dict (per band aperture-correction stars and correction, the shape band).
    detection_out: a path to write the detection coadd to (write_detection_coadd), or None; storage: how
    (store.tables.Storage).
    Memory: one band's planes at a time (two passes over the bands: detection, then measurement), with
    the detection image and the footprint labels.
    """
    paths = {b: p for b, p in coadd_paths_by_band.items() if p is not None}
    if not paths:
        raise ValueError("measure_patch: no coadd given")
    bands = sorted(coadd_paths_by_band) if bands is None else list(bands)
    attrs = {b: _read(paths[b], (), psf=False)[1] for b in sorted(paths)}
    a0 = next(iter(attrs.values()))
    for b, a in attrs.items():
        if list(a["patch"]) != list(a0["patch"]) or list(a["bbox"]) != list(a0["bbox"]):
            raise ValueError(f"measure_patch: coadd of band {b} is of another patch ({a['patch']})")
    wcs = WCS(fits.Header.fromstring(str(a0["wcs"])))
    tract, (pi, pj) = int(a0["tract"]), (int(v) for v in a0["patch"])
    bx0, by0 = int(a0["bbox"][0]), int(a0["bbox"][1])
    ix0, iy0, inx, iny = (int(v) for v in a0["inner_bbox"])

    D, V, n_bands, band_mask = _read_detection_image(paths)
    cat, labels = detect(D, V, threshold=threshold, kernel_fwhm_px=DETECT_FWHM_PX, mask=n_bands == 0)
    if detection_out is not None:
        write_detection_coadd(detection_out, D, V, n_bands, labels, band_mask, a0, paths, storage)
    del D, V, n_bands, band_mask
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
        out[f"{b}Flags"] = _phot.FLAG_NO_DATA
    meta = {"tract": tract, "patch": [pi, pj], "threshold": threshold, "n_detections": int(len(cat)),
            "n_objects": int(len(out)), "bands": {}}
    det_xy = np.column_stack([leaf["x"], leaf["y"]]) if len(leaf) else np.zeros((0, 2))
    ext = {k: np.zeros(len(out)) for k in "APV"}        # extendedness sums over the bands
    ext["n"] = np.zeros(len(out), np.int32)
    sb = next((b for b in SHAPE_BANDS if b in paths), min(paths))
    scale = float(np.sqrt(abs(np.linalg.det(wcs.pixel_scale_matrix)))) * 3600.0       # arcsec per pixel
    for b in bands:
        if b not in paths:
            continue
        planes, _, psf = _read(paths[b])
        if psf is None:
            raise ValueError(f"measure_patch: the {b} coadd {paths[b]} has no coadd PSF (psf_* datasets)")
        meta["bands"][b] = _measure_band(out, b, planes, psf, wcs, refcat, leaf, det_xy, ext)
        if b == sb:
            _measure_shapes(out, planes, leaf, labels, scale)
        del planes, psf                 # before the next band is read
    if sb not in bands:
        _measure_shapes(out, _read(paths[sb], ("image", "mask"), psf=False)[0], leaf, labels, scale)
    with np.errstate(invalid="ignore", divide="ignore"):
        e = ((ext["A"] > (1 + EXT_FRACTION) * ext["P"])
             & (ext["A"] - ext["P"] > EXT_NSIGMA * np.sqrt(ext["V"]))).astype(float)
    out["extendedness"] = np.where(ext["n"] > 0, e, np.nan)
    meta["shape_band"] = sb
    meta["n_primary"] = int(out["detect_isPrimary"].sum())
    meta["n_deblended_parents"] = int(((cat["flags"] & FLAG_DEBLENDED) != 0).sum()) if len(cat) else 0
    return out, meta


def _measure_band(out, b, planes, psf, wcs, refcat, leaf, det_xy, ext):
    """Forced photometry of the Objects in band b (module doc, 3.) into `out`'s b columns, and the band's
    share of the extendedness sums `ext` (A, P, V, n: per Object, updated in place); returns its meta."""
    img, var = planes["image"], planes["variance"]
    mask = planes["mask"].copy()
    np.bitwise_or(mask, NO_DATA, out=mask, where=~(np.isfinite(img) & np.isfinite(var)))
    img = np.where(np.isfinite(img), img, 0.0).astype(np.float32)
    var = np.where(np.isfinite(var), var, 0.0).astype(np.float32)
    radii = (EXT_AP, REPORT_AP, APCORR_AP)
    # aperture correction from the bright isolated reference stars, measured with the coadd PSF
    _, sx, sy = ap_corr_stars(planes, wcs, refcat, det_xy)
    on = psf.covered(sx, sy)
    sp = _phot.forced_photometry(img, var, mask, sx[on], sy[on], psf, ap_radii=radii)
    clean = (sp["flags"] == 0) & np.isfinite(sp[_apname(APCORR_AP)]) & (sp["psf_flux"] > 0)
    ratio = sp[_apname(APCORR_AP)][clean] / sp["psf_flux"][clean]
    cov = psf.covered(leaf["x"], leaf["y"]) if len(out) else np.zeros(0, bool)
    bm = {"n_ap_corr_stars": int(clean.sum()), "psf_grid_step": psf.step,
          "n_inputs_max": int(psf.n_inputs.max()), "ap_corr_inputs": float(np.nanmedian(psf.ap_corr))
          if np.isfinite(psf.ap_corr).any() else None}
    if not cov.any():
        return bm
    x, y = leaf["x"][cov], leaf["y"][cov]
    if clean.sum() >= MIN_AP_CORR_STARS:
        bm["ap_corr"] = float(np.median(ratio))
        corr = ap_corr_map(sp["x"][clean], sp["y"][clean], ratio, bm["ap_corr"], x, y)
    else:                   # too few stars: the inputs' aperture corrections, combined as the coadd
        corr = ap_corr_map(sx[:0], sy[:0], ratio[:0], psf.ap_corr_at(x, y), x, y)
    ph = _phot.forced_photometry(img, var, mask, x, y, psf, object_ids=out["objectId"][cov], ap_radii=radii)
    for c, v in (("PsFlux", ph["psf_flux"] * corr), ("PsFluxSigma", ph["psf_flux_err"] * corr),
                 ("ApFlux", ph[_apname(REPORT_AP)]), ("ApFluxSigma", ph[_apname(REPORT_AP) + "_err"]),
                 ("Flags", ph["flags"])):
        out[f"{b}{c}"][cov] = v
    frac = _phot.psf_aperture_fraction(psf, x, y, ap_radii=(EXT_AP,))[:, 0]
    a6, e6 = ph[_apname(EXT_AP)], ph[_apname(EXT_AP) + "_err"]
    use = np.zeros(len(out), bool)
    use[cov] = np.isfinite(a6) & np.isfinite(ph["psf_flux"]) & ((ph["flags"] & _phot.FLAG_NO_DATA) == 0)
    u = use[cov]
    ext["A"][use] += a6[u]
    ext["P"][use] += ph["psf_flux"][u] * frac[u]
    ext["V"][use] += e6[u] ** 2
    ext["n"] += use
    return bm


def _measure_shapes(out, planes, leaf, labels, scale):
    """Adaptive moments of the Objects (module doc, 6.) on one band's planes (image, mask), in arcsec^2."""
    usable = np.isfinite(planes["image"]) & ((planes["mask"] & (NO_DATA | BAD | SAT)) == 0)
    ixx, iyy, ixy, flag = adaptive_moments(planes["image"], leaf["x"], leaf["y"], usable=usable,
                                           owner=leaf["id"], labels=labels)
    out["Ixx"], out["Iyy"], out["Ixy"], out["shape_flag"] = ixx * scale ** 2, iyy * scale ** 2, ixy * scale ** 2, flag
