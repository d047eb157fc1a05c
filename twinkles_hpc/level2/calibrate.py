"""Calibrate one visit (processEimage): eimage -> calexp.

Steps: mask saturated pixels and the sensor edge; variance plane from the pixel values (Poisson) and
the read noise; background (mesh statistics + spline); detection; astrometric calibration of the
nominal WCS against the reference catalogue; a PSF model from bright isolated reference stars; PSF
photometry of those stars, an aperture correction to a large aperture, and the zero point from the
reference magnitudes in the visit's own band. Reads only the eimage's camera attributes
(docs/data-model.md), never the simulation's truth.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

from twinkles_hpc.level2 import forced as _forced
from twinkles_hpc.level2.astrometry import calibrate_astrometry
from twinkles_hpc.level2.background import BackgroundConfig, estimate_background
from twinkles_hpc.level2.detect import detect
from twinkles_hpc.level2.photocal import njy_per_electron, zero_point
from twinkles_hpc.level2.psf import STAMP_RADIUS, estimate_psf
from twinkles_hpc.store.atomic import atomic_h5, open_read

MASK_SAT, MASK_CR, MASK_EDGE, MASK_DETECTED, MASK_NO_DATA, MASK_BAD = 1, 2, 4, 8, 16, 32
#: eimage attributes a camera provides, copied to the calexp (docs/data-model.md).
CAMERA_ATTRS = ("visit_id", "band", "mjd", "exptime", "airmass", "ra", "dec", "rot_sky_pos", "read_noise",
                "gain", "full_well", "seed", "run_name", "software")


@dataclass
class CalibrateConfig:
    edge_margin: int = 8                 # pixels flagged EDGE at the sensor border
    detect_threshold: float = 5.0        # sigma
    detect_fwhm_px: float = 4.0          # matched-filter FWHM, pixels (0.8" at 0.2"/px)
    astrom_min_snr: float = 20.0
    psf_min_snr: float = 30.0
    psf_isolation_px: float = 3 * STAMP_RADIUS / 2
    psf_order: int = 2                   # polynomial degree of the PSF's variation across the sensor
    max_psf_stars: int = 120
    ap_corr_radius: float = 20.0         # pixels: the "total flux" aperture of the aperture correction
    zp_min_snr: float = 20.0


def _saturation_mask(image, full_well, edge):
    mask = np.zeros(image.shape, np.uint16)
    mask[image >= full_well] |= MASK_SAT
    mask[:edge, :] |= MASK_EDGE
    mask[-edge:, :] |= MASK_EDGE
    mask[:, :edge] |= MASK_EDGE
    mask[:, -edge:] |= MASK_EDGE
    return mask


def calibrate_exposure(image, attrs, refcat, config=CalibrateConfig()):
    """Calibrate pixels with their camera attributes; returns (planes dict, metadata dict)."""
    c = config
    band = str(attrs["band"])
    gain, rn = float(attrs.get("gain", 1.0)), float(attrs["read_noise"])
    image = np.asarray(image, dtype=np.float32)
    mask = _saturation_mask(image, float(attrs["full_well"]), c.edge_margin)
    variance = (np.maximum(image, 0.0) / gain + rn ** 2).astype(np.float32)
    bg = estimate_background(image, mask=(mask & MASK_SAT) > 0, config=BackgroundConfig())
    background = bg.image(image.shape)
    sub = image - background
    # weights that do not contain the sources (background + read noise) keep the fits unbiased
    bg_var = (np.maximum(background, 0.0) / gain + rn ** 2).astype(np.float32)
    cat, labels = detect(sub, variance, threshold=c.detect_threshold, kernel_fwhm_px=c.detect_fwhm_px,
                         mask=(mask & MASK_SAT) > 0)
    mask[labels > 0] |= MASK_DETECTED
    leaves = cat[~np.isin(cat["id"], cat["parent"][cat["parent"] > 0])] if len(cat) else cat
    good = (leaves["flags"] == 0) & (leaves["flux"] > c.astrom_min_snr * leaves["flux_err"])
    det = leaves[good]
    wcs0 = WCS(fits.Header.fromstring(str(attrs["wcs"])))
    wcs, ainfo = calibrate_astrometry(det["x"], det["y"], wcs0, refcat["ra"], refcat["dec"])
    stars = det[ainfo["i_det"]]
    ref = refcat[ainfo["i_ref"]]
    # PSF stars: matched reference stars, bright, isolated from every other detection, unsaturated
    others = np.column_stack([leaves["x"], leaves["y"]])
    from scipy.spatial import cKDTree
    nn, _ = cKDTree(others).query(np.column_stack([stars["x"], stars["y"]]), k=2)
    sat_near = _near_mask(mask, stars["x"], stars["y"], STAMP_RADIUS, MASK_SAT | MASK_EDGE)
    ok = (nn[:, 1] > c.psf_isolation_px) & ~sat_near & (stars["flux"] > c.psf_min_snr * stars["flux_err"])
    psf_idx = np.flatnonzero(ok)[np.argsort(-stars["flux"][ok])][:c.max_psf_stars]
    # the variation across the sensor is as detailed as the number of stars allows (3 per coefficient)
    order = next((o for o in range(c.psf_order, -1, -1) if len(psf_idx) >= 3 * (o + 1) * (o + 2) // 2), 0)
    psf, pinfo = estimate_psf(sub, bg_var, stars["x"][psf_idx], stars["y"][psf_idx], order=order)
    # PSF photometry of the matched stars, aperture correction, zero point in this band
    phot = _forced.forced_photometry(sub, variance, mask, stars["x"], stars["y"], psf,
                                     ap_radii=(c.ap_corr_radius,))
    ap = phot[f"ap_flux_{_forced._radius_name(c.ap_corr_radius)}"]
    clean = (phot["flags"] == 0) & ~sat_near & (phot["psf_flux"] > c.psf_min_snr * phot["psf_flux_err"])
    clean &= np.isfinite(ap)
    if clean.sum() < 3:
        raise ValueError(f"calibrate: {int(clean.sum())} clean stars for the aperture correction (need 3)")
    # the large aperture is sensitive to background errors: take the brightest stars only
    snr = phot["psf_flux"] / phot["psf_flux_err"]
    bright = np.flatnonzero(clean)[np.argsort(-snr[clean])][:max(5, int(clean.sum()) // 4)]
    ap_corr = float(np.median(ap[bright] / phot["psf_flux"][bright]))
    usable = (phot["flags"] & ~_forced.FLAG_EDGE) == 0
    zp, zp_err, n_zp = zero_point(np.where(usable, phot["psf_flux"] * ap_corr, np.nan),
                                  phot["psf_flux_err"] * ap_corr, ref[f"mag_{band}"], ref[f"mag_err_{band}"],
                                  min_snr=c.zp_min_snr)
    meta = {k: attrs[k] for k in CAMERA_ATTRS if k in attrs}
    meta.update(wcs=wcs.to_header_string(relax=True), psf=json.dumps(psf.to_dict()), zero_point=zp,
                zero_point_err=zp_err, n_zero_point=n_zp, ap_corr=ap_corr, ap_corr_radius=c.ap_corr_radius,
                flux_njy_per_electron=njy_per_electron(zp), n_astrometry=ainfo["n_matched"],
                astrometry_rms_arcsec=ainfo["rms_arcsec"], n_psf_stars=pinfo["n_used"], psf_order=order,
                n_detections=int(len(leaves)), background_level=float(np.median(bg.mesh)))
    planes = {"image": sub.astype(np.float32), "variance": variance, "mask": mask,
              "background": np.asarray(bg.mesh, dtype=np.float32)}
    return planes, meta


def _near_mask(mask, x, y, r, bits):
    """True for positions with any of `bits` within a (2r+1)^2 box."""
    ny, nx = mask.shape
    out = np.zeros(len(x), bool)
    for k, (xi, yi) in enumerate(zip(np.rint(x).astype(int), np.rint(y).astype(int))):
        box = mask[max(yi - r, 0):min(yi + r + 1, ny), max(xi - r, 0):min(xi + r + 1, nx)]
        out[k] = bool((box & bits).any()) or box.size < (2 * r + 1) ** 2
    return out


def calibrate_visit(eimage_path, refcat, out_path, config=CalibrateConfig()):
    """eimage file -> calexp file (atomic). Returns the calexp metadata."""
    with open_read(eimage_path) as fh:
        image = fh["image"][...]
        attrs = {k: (v.item() if hasattr(v, "item") else v) for k, v in fh.attrs.items()
                 if k in CAMERA_ATTRS + ("wcs",)}
    planes, meta = calibrate_exposure(image, attrs, refcat, config)
    with atomic_h5(out_path) as fh:
        for name, data in planes.items():
            fh.create_dataset(name, data=data)
        for k, v in meta.items():
            fh.attrs[k] = v
    return meta
