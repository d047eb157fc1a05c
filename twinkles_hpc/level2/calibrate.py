"""Calibrate one visit (processEimage): eimage -> calexp.

Steps: mask saturated pixels and the sensor edge; background (mesh statistics + spline); find, mask
(CR) and repair cosmic rays (level2/cosmics.py); variance plane from the repaired pixel values (Poisson)
and the read noise; detection; astrometric calibration of the
nominal WCS against the reference catalogue; a PSF model from bright isolated reference stars; PSF
photometry of those stars, an aperture correction to a large aperture, and the zero point from the
reference magnitudes in the visit's own band; the per-visit source table `sources` (every detection:
centroid, sky position through the fitted WCS, calibrated PSF flux, flags; `source_table`). Reads only the
eimage's camera attributes (docs/data-model.md), never the simulation's truth.

A visit that cannot be calibrated (too few reference matches or stars: CalibrationError) still gets a
calexp file, with attributes calib_ok = False and calib_failure (the reason, one line) and no pixel
planes; a calibrated one has calib_ok = True. Downstream stages skip the failed ones (calexp_ok).
"""
from __future__ import annotations

import contextlib

import json
from dataclasses import dataclass, field

import numpy as np

from twinkles_hpc import options, steptimer
from twinkles_hpc.level2 import CalibrationError
from twinkles_hpc.level2 import detect as _detect
from twinkles_hpc.level2 import photometry as _phot
from twinkles_hpc.level2.astrometry import calibrate_astrometry
from twinkles_hpc.level2.background import BackgroundConfig, estimate_background
from twinkles_hpc.level2.cosmics import CosmicRayConfig, find_cosmic_rays
from twinkles_hpc.level2.detect import detect
from twinkles_hpc.level2.masks import CR, DETECTED, EDGE, SAT
from twinkles_hpc.level2.photocal import clipped_weighted_mean, njy_per_electron, zero_point
from twinkles_hpc.level2.psf import STAMP_RADIUS, estimate_psf
from twinkles_hpc.options import opt
from twinkles_hpc.store.atomic import atomic_h5, open_read
from twinkles_hpc.store.tables import write_planes

#: eimage attributes a camera provides, copied to the calexp (docs/data-model.md).
CAMERA_ATTRS = ("visit_id", "band", "mjd", "exptime", "airmass", "ra", "dec", "rot_sky_pos", "read_noise",
                "gain", "full_well", "seed", "run_name", "software")
#: `flags` bits of the source table: SAT pixels in the PSF-fit footprint; the footprint or detection
#: touches the sensor edge or EDGE pixels; a CR pixel within the PSF-fit radius; the windowed centroid
#: failed (x, y are the isophotal barycentre); a child of a deblended footprint; no PSF flux (NaN).
SRC_SATURATED, SRC_EDGE, SRC_CR, SRC_CENTROID, SRC_BLENDED, SRC_NO_FLUX = 1, 2, 4, 8, 16, 32
SOURCE_DTYPE = np.dtype([("id", "i8"), ("x", "f8"), ("y", "f8"), ("x_err", "f8"), ("y_err", "f8"),
                         ("ra", "f8"), ("dec", "f8"), ("psFlux", "f8"), ("psFlux_Sigma", "f8"),
                         ("snr", "f8"), ("flags", "i4"), ("calib_astrometry_used", "?"),
                         ("calib_psf_candidate", "?")])


@dataclass
class CalibrateConfig:
    """How to calibrate a visit; the bounds are those the steps need (detect, forced_photometry)."""
    edge_margin: int = opt(8, "pixel", "Width of the sensor border flagged EDGE.", lo=1)
    detect_threshold: float = opt(5.0, "sigma", "Detection threshold.", lo=0.0, lo_open=True)
    detect_fwhm_px: float = opt(4.0, "pixel", "Matched-filter FWHM of the detection (0.8\" at 0.2\"/px).",
                                lo=0.5, hi=100.0)
    astrom_min_snr: float = opt(20.0, "", "Smallest SNR of a detection used by the astrometric calibration.",
                                lo=0.0)
    psf_min_snr: float = opt(30.0, "", "Smallest SNR of a PSF star and of an aperture-correction star.", lo=0.0)
    psf_isolation_px: float = opt(3 * STAMP_RADIUS / 2, "pixel",
                                  "A PSF star has no other detection within this distance.", lo=0.0)
    psf_order: int = opt(2, "", "Polynomial degree of the PSF's variation across the sensor (lowered when "
                         "stars are too few).", lo=0)
    max_psf_stars: int = opt(120, "", "Most PSF stars used (the brightest).", lo=1)
    ap_corr_radius: float = opt(20.0, "pixel", "Radius of the 'total flux' aperture of the aperture correction.",
                                lo=0.0, lo_open=True, hi=_phot.MAX_RADIUS)
    zp_min_snr: float = opt(20.0, "", "Smallest SNR of a star used for the zero point.", lo=0.0)
    repair_cosmic_rays: bool = opt(True, "", "Find, mask (CR) and repair cosmic rays (level2/cosmics.py).")
    cosmic_rays: CosmicRayConfig = field(default_factory=CosmicRayConfig)
    background: BackgroundConfig = field(default_factory=BackgroundConfig)

    def __post_init__(self):
        options.check_section(self)


def _saturation_mask(image, full_well, edge):
    mask = np.zeros(image.shape, np.uint16)
    np.bitwise_or(mask, SAT, out=mask, where=image >= full_well)
    mask[:edge, :] |= EDGE
    mask[-edge:, :] |= EDGE
    mask[:, :edge] |= EDGE
    mask[:, -edge:] |= EDGE
    return mask


def aperture_correction(ap, ap_err, psf, psf_err, *, clip=3.0, iters=5):
    """(ratio, error): the inverse-variance weighted, sigma-clipped mean of aperture / PSF flux over stars.
    The large aperture's error (sky noise over its area) dominates the weights, so the bright stars
    count most, and every clean star adds to the precision; the error is scaled up by sqrt(chi^2/dof)
    when the ratios scatter more than their errors say."""
    r = ap / psf
    err = np.abs(r) * np.hypot(ap_err / ap, psf_err / psf)
    valid = np.isfinite(r) & np.isfinite(err) & (err > 0)
    mean, mean_err, _ = clipped_weighted_mean(r, err, valid, clip=clip, iters=iters, readmit=False, min_keep=3)
    return mean, mean_err


def _poisson_variance(electrons, gain, read_noise):
    """max(electrons, 0) / gain + read_noise^2 in float32, in place in `electrons` (a float32 array)."""
    np.maximum(electrons, 0.0, out=electrons)
    electrons /= gain
    electrons += read_noise ** 2
    return electrons


def calibrate_exposure(image, attrs, refcat, config=None):
    """Calibrate pixels with their camera attributes; returns (planes dict: image, variance, mask,
    background and the `sources` table (source_table), metadata dict)."""
    c = CalibrateConfig() if config is None else config
    lap = steptimer.laps()
    band = str(attrs["band"])
    gain, rn = float(attrs.get("gain", 1.0)), float(attrs["read_noise"])
    image = np.asarray(image, dtype=np.float32)
    mask = _saturation_mask(image, float(attrs["full_well"]), c.edge_margin)
    lap("saturation")
    bg = estimate_background(image, mask=(mask & SAT) > 0, config=c.background)
    background = bg.image(image.shape)
    sub = np.ascontiguousarray(image - background, dtype=np.float32)
    lap("background")
    n_cr = 0
    if c.repair_cosmic_rays:
        raw_var = _poisson_variance(image.copy(), gain, rn)
        n_cr, _ = find_cosmic_rays(sub, raw_var, mask, c.cosmic_rays, cr_bit=CR, skip_bits=SAT)
        del raw_var
        lap("cosmic_rays")
    # the noise of the repaired pixels: a cosmic ray's charge is not in the variance of what replaced it
    variance = _poisson_variance(np.add(sub, background), gain, rn)
    # weights that do not contain the sources (background + read noise) keep the fits unbiased
    bg_var = _poisson_variance(np.array(background, np.float32), gain, rn)
    lap("variance")
    cat, labels = detect(sub, variance, threshold=c.detect_threshold, kernel_fwhm_px=c.detect_fwhm_px,
                         mask=(mask & SAT) > 0)
    np.bitwise_or(mask, DETECTED, out=mask, where=labels > 0)
    leaves = cat[~np.isin(cat["id"], cat["parent"][cat["parent"] > 0])] if len(cat) else cat
    good = (leaves["flags"] == 0) & (leaves["flux"] > c.astrom_min_snr * leaves["flux_err"])
    det = leaves[good]
    lap("detection")
    from astropy.io import fits
    from astropy.wcs import WCS

    wcs0 = WCS(fits.Header.fromstring(str(attrs["wcs"])))
    wcs, ainfo = calibrate_astrometry(det["x"], det["y"], wcs0, refcat["ra"], refcat["dec"])
    stars = det[ainfo["i_det"]]
    ref = refcat[ainfo["i_ref"]]
    lap("astrometry")
    # PSF stars: matched reference stars, bright, isolated from every other detection, unsaturated
    others = np.column_stack([leaves["x"], leaves["y"]])
    from scipy.spatial import cKDTree
    nn, _ = cKDTree(others).query(np.column_stack([stars["x"], stars["y"]]), k=2)
    sat_near = _near_mask(mask, stars["x"], stars["y"], STAMP_RADIUS, SAT | EDGE | CR)
    ok = (nn[:, 1] > c.psf_isolation_px) & ~sat_near & (stars["flux"] > c.psf_min_snr * stars["flux_err"])
    psf_idx = np.flatnonzero(ok)[np.argsort(-stars["flux"][ok])][:c.max_psf_stars]
    # the variation across the sensor is as detailed as the number of stars allows (3 per coefficient)
    order = next((o for o in range(c.psf_order, -1, -1) if len(psf_idx) >= 3 * (o + 1) * (o + 2) // 2), 0)
    psf, pinfo = estimate_psf(sub, bg_var, stars["x"][psf_idx], stars["y"][psf_idx], order=order)
    lap("psf")
    # PSF photometry of every detection in one kernel call (the source table's fluxes); the matched stars'
    # rows give the aperture correction and the zero point in this band
    phot_all = _phot.forced_photometry(sub, variance, mask, leaves["x"], leaves["y"], psf,
                                         ap_radii=(c.ap_corr_radius,))
    lap("photometry")
    i_star = np.flatnonzero(good)[ainfo["i_det"]]              # matched stars as rows of `leaves`
    phot = phot_all[i_star]
    ap = phot[f"ap_flux_{_phot._radius_name(c.ap_corr_radius)}"]
    clean = (phot["flags"] == 0) & ~sat_near & (phot["psf_flux"] > c.psf_min_snr * phot["psf_flux_err"])
    clean &= np.isfinite(ap)
    if clean.sum() < 3:
        raise CalibrationError(f"calibrate: {int(clean.sum())} clean stars for the aperture correction (need 3)")
    ap_err = phot[f"ap_flux_{_phot._radius_name(c.ap_corr_radius)}_err"]
    ap_corr, ap_corr_err = aperture_correction(ap[clean], ap_err[clean], phot["psf_flux"][clean],
                                               phot["psf_flux_err"][clean])
    usable = (phot["flags"] & ~_phot.FLAG_EDGE) == 0
    zp, zp_err, n_zp = zero_point(np.where(usable, phot["psf_flux"] * ap_corr, np.nan),
                                  phot["psf_flux_err"] * ap_corr, ref[f"mag_{band}"], ref[f"mag_err_{band}"],
                                  min_snr=c.zp_min_snr)
    # the zero point refers to total (aperture-corrected) flux: its error includes the correction's
    zp_err = float(np.hypot(zp_err, 1.0857 * ap_corr_err / ap_corr))
    lap("zero_point")
    meta = {k: attrs[k] for k in CAMERA_ATTRS if k in attrs}
    meta.update(wcs=wcs.to_header_string(relax=True), psf=json.dumps(psf.to_dict()), zero_point=zp,
                zero_point_err=zp_err, n_zero_point=n_zp, ap_corr=ap_corr, ap_corr_err=ap_corr_err,
                ap_corr_radius=c.ap_corr_radius,
                flux_njy_per_electron=njy_per_electron(zp), n_astrometry=ainfo["n_matched"],
                astrometry_rms_arcsec=ainfo["rms_arcsec"], n_psf_stars=pinfo["n_used"], psf_order=order,
                n_detections=int(len(leaves)), background_level=float(np.median(bg.mesh)),
                n_cosmic_ray_pixels=n_cr, calib_ok=True)
    sources = source_table(leaves, phot_all, psf, wcs, mask, ap_corr * meta["flux_njy_per_electron"],
                           i_star, i_star[psf_idx])
    lap("source_table")
    planes = {"image": sub.astype(np.float32), "variance": variance, "mask": mask,
              "background": np.asarray(bg.mesh, dtype=np.float32), "sources": sources}
    return planes, meta


def source_table(det, phot, psf, wcs, mask, njy_per_electron, i_astrom, i_psf):
    """The per-visit source table (SOURCE_DTYPE) of the detections `det` (leaves of the detection
    catalogue) and their PSF photometry `phot` (forced_photometry at the detections' centroids).

    psFlux = psf_flux x ap_corr x flux_njy_per_electron (njy_per_electron = the product of the two).
    x_err = y_err = sqrt(2) sigma_psf / snr, the Cramer-Rao error per axis of a centroid of a Gaussian
    PSF of width sigma_psf (here that of the Gaussian with the PSF model's effective area, FWHM / 2.3548)
    at the PSF-flux SNR; the windowed centroid reaches it (docs/level2-detect.md). i_astrom, i_psf: rows
    of `det` used by the astrometric fit / selected for the PSF fit.
    """
    out = np.zeros(len(det), SOURCE_DTYPE)
    out["id"], out["x"], out["y"] = det["id"], det["x"], det["y"]
    if len(det) == 0:
        return out
    out["ra"], out["dec"] = wcs.all_pix2world(det["x"], det["y"], 0)
    out["psFlux"] = phot["psf_flux"] * njy_per_electron
    out["psFlux_Sigma"] = phot["psf_flux_err"] * njy_per_electron
    with np.errstate(divide="ignore", invalid="ignore"):
        out["snr"] = phot["psf_flux"] / phot["psf_flux_err"]
        fwhm = _phot.psf_fwhm(psf, det["x"], det["y"])
        err = np.sqrt(2.0) * fwhm / _detect.FWHM_PER_SIGMA / out["snr"]
    out["x_err"] = out["y_err"] = np.where(out["snr"] > 0, err, np.inf)
    pf, df = phot["flags"], det["flags"]
    flags = np.where(pf & _phot.FLAG_SATURATED, SRC_SATURATED, 0)
    flags |= np.where((pf & _phot.FLAG_EDGE) | (df & _detect.FLAG_EDGE), SRC_EDGE, 0)
    # a CR pixel in the PSF-fit footprint makes it MASKED: look only at those
    masked = np.flatnonzero(pf & _phot.FLAG_MASKED)
    cr = _near_bits(mask, CR, det["x"][masked], det["y"][masked], _phot.PSF_RADIUS_FWHM * fwhm[masked])
    flags[masked[cr]] |= SRC_CR
    flags |= np.where(df & _detect.FLAG_CENTROID, SRC_CENTROID, 0)
    flags |= np.where(det["parent"] > 0, SRC_BLENDED, 0)
    flags |= np.where(~np.isfinite(out["psFlux"]), SRC_NO_FLUX, 0)
    out["flags"] = flags
    out["calib_astrometry_used"][i_astrom] = True
    out["calib_psf_candidate"][i_psf] = True
    return out


def _near_bits(mask, bits, x, y, radius):
    """True for positions (pixels) with a pixel of any of `bits` whose centre lies within `radius` (per
    position), the footprint forced_photometry fits."""
    ny, nx = mask.shape
    out = np.zeros(len(x), bool)
    for k, (xi, yi, r) in enumerate(zip(x, y, radius)):
        j0, j1 = max(int(np.floor(yi - r)), 0), min(int(np.ceil(yi + r)) + 1, ny)
        i0, i1 = max(int(np.floor(xi - r)), 0), min(int(np.ceil(xi + r)) + 1, nx)
        jj, ii = np.ogrid[j0:j1, i0:i1]
        out[k] = bool(((mask[j0:j1, i0:i1] & bits) > 0)[(ii - xi) ** 2 + (jj - yi) ** 2 <= r * r].any())
    return out


def _near_mask(mask, x, y, r, bits):
    """True for positions with any of `bits` within a (2r+1)^2 box."""
    ny, nx = mask.shape
    out = np.zeros(len(x), bool)
    for k, (xi, yi) in enumerate(zip(np.rint(x).astype(int), np.rint(y).astype(int))):
        box = mask[max(yi - r, 0):min(yi + r + 1, ny), max(xi - r, 0):min(xi + r + 1, nx)]
        out[k] = bool((box & bits).any()) or box.size < (2 * r + 1) ** 2
    return out


def calibrate_visit(eimage_path, refcat, out_path, config=None, storage=None):
    """eimage file -> calexp file (atomic). Returns the calexp metadata (calib_ok False and calib_failure
    the reason when the visit cannot be calibrated: the file then has no pixel planes and no sources).
    storage: how the planes are stored (store.tables.Storage; None: every bit, uncompressed)."""
    with steptimer.step("read"), open_read(eimage_path) as fh:
        image = fh["image"][...]
        attrs = {k: (v.item() if hasattr(v, "item") else v) for k, v in fh.attrs.items()
                 if k in CAMERA_ATTRS + ("wcs",)}
    try:
        planes, meta = calibrate_exposure(image, attrs, refcat, config)
    except CalibrationError as exc:
        planes = {}
        meta = {k: attrs[k] for k in CAMERA_ATTRS if k in attrs}
        meta.update(calib_ok=False, calib_failure=" ".join(str(exc).split()) or type(exc).__name__)
    with steptimer.step("write"), atomic_h5(out_path) as fh:
        write_planes(fh, planes, storage=storage)
        for k, v in meta.items():
            fh.attrs[k] = v
        if planes:
            from twinkles_hpc.level2.coadd import sky_variance
            with contextlib.suppress(ValueError):           # no usable pixel: the coadd says so, naming the file
                fh.attrs["sky_variance"] = sky_variance(fh, out_path)
    return meta


def calexp_ok(path):
    """True if the calexp at `path` was calibrated (attribute calib_ok; files from before it existed are)."""
    with open_read(path) as fh:
        return bool(fh.attrs.get("calib_ok", True))
