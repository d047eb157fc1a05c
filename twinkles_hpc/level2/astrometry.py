"""Astrometric calibration: match detections to the reference catalogue and fit the visit's WCS.

Start from the nominal WCS (the telescope's pointing, off by its pointing and rotator errors), match
within a wide radius, fit a TAN WCS (tangent point + CD matrix: offset, scale, rotation, shear),
then rematch tighter and refit with sigma clipping. The TAN fit is linear in the tangent plane
of a fixed tangent point, solved by least squares and iterated with the tangent point moved to the
fitted sensor centre.
"""
from __future__ import annotations

import numpy as np

from twinkles_hpc.level2 import CalibrationError


def tangent_plane(ra, dec, ra0, dec0):
    """Gnomonic projection (xi, eta), degrees, about (ra0, dec0)."""
    a, d = np.deg2rad(ra), np.deg2rad(dec)
    a0, d0 = np.deg2rad(ra0), np.deg2rad(dec0)
    cosc = np.sin(d0) * np.sin(d) + np.cos(d0) * np.cos(d) * np.cos(a - a0)
    xi = np.cos(d) * np.sin(a - a0) / cosc
    eta = (np.cos(d0) * np.sin(d) - np.sin(d0) * np.cos(d) * np.cos(a - a0)) / cosc
    return np.rad2deg(xi), np.rad2deg(eta)


def tangent_arcsec(ra, dec, ra0, dec0):
    """tangent_plane in arcsec: the gnomonic coordinates (xi, eta) of (ra, dec) about (ra0, dec0), degrees in."""
    xi, eta = tangent_plane(np.asarray(ra, np.float64), np.asarray(dec, np.float64), ra0, dec0)
    return xi * 3600.0, eta * 3600.0


def from_tangent_plane(xi, eta, ra0, dec0):
    """Inverse of tangent_plane: (ra, dec), degrees, of the gnomonic coordinates (xi, eta), degrees."""
    xi, eta = np.deg2rad(np.asarray(xi, np.float64)), np.deg2rad(np.asarray(eta, np.float64))
    d0, a0 = np.deg2rad(dec0), np.deg2rad(ra0)
    rho = np.hypot(xi, eta)
    c = np.arctan(rho)
    with np.errstate(invalid="ignore", divide="ignore"):
        dec = np.arcsin(np.cos(c) * np.sin(d0) + np.where(rho > 0, eta * np.sin(c) * np.cos(d0) / rho, 0.0))
    ra = a0 + np.arctan2(xi * np.sin(c), rho * np.cos(d0) * np.cos(c) - eta * np.sin(d0) * np.sin(c))
    return np.rad2deg(ra) % 360.0, np.rad2deg(dec)


def match(x, y, wcs, ref_ra, ref_dec, radius_arcsec):
    """Nearest reference star within `radius_arcsec` of each detection, one-to-one.

    Returns (i_det, i_ref, separation_arcsec)."""
    from scipy.spatial import cKDTree

    ra, dec = wcs.all_pix2world(x, y, 0)
    ra0, dec0 = wcs.wcs.crval
    dxi, deta = tangent_plane(ra, dec, ra0, dec0)
    rxi, reta = tangent_plane(ref_ra, ref_dec, ra0, dec0)
    tree = cKDTree(np.column_stack([rxi, reta]) * 3600.0)
    dist, j = tree.query(np.column_stack([dxi, deta]) * 3600.0, distance_upper_bound=radius_arcsec)
    i = np.flatnonzero(np.isfinite(dist))
    j, dist = j[i], dist[i]
    # one-to-one: keep the closest detection of each reference star
    order = np.argsort(dist)
    _, first = np.unique(j[order], return_index=True)
    keep = np.sort(order[first])
    return i[keep], j[keep], dist[keep]


def fit_tan(x, y, ra, dec, crval, crpix):
    """Least-squares TAN WCS with the given tangent point and reference pixel: the affine map from
    pixels to the tangent plane (CD matrix + offset). Returns an astropy WCS with the offset folded
    into CRVAL (one more projection about the new tangent point is done by the caller's iteration)."""
    from astropy.wcs import WCS

    xi, eta = tangent_plane(ra, dec, *crval)
    A = np.column_stack([x - crpix[0], y - crpix[1], np.ones_like(x)])
    cx, *_ = np.linalg.lstsq(A, xi, rcond=None)
    cy, *_ = np.linalg.lstsq(A, eta, rcond=None)
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = crval
    w.wcs.cd = np.array([[cx[0], cx[1]], [cy[0], cy[1]]])
    # the offset (xi, eta) at crpix moves the reference pixel: solve CD @ d = -offset
    d = np.linalg.solve(w.wcs.cd, -np.array([cx[2], cy[2]]))
    w.wcs.crpix = [crpix[0] + d[0] + 1.0, crpix[1] + d[1] + 1.0]     # FITS 1-based
    w.wcs.radesys = "ICRS"
    return w


def calibrate_astrometry(x, y, wcs0, ref_ra, ref_dec, *, radii=(6.0, 2.0, 1.0), clip=3.0, min_matches=6):
    """Fit the WCS of detections at pixel (x, y) against reference positions.

    Returns (wcs, info) with info: n_matched, rms_arcsec (per axis, after clipping), i_det, i_ref.
    """
    w = wcs0.deepcopy()
    last = None
    for radius in radii:
        i, j, _ = match(x, y, w, ref_ra, ref_dec, radius)
        if len(i) < min_matches:
            raise CalibrationError(f"astrometry: only {len(i)} reference matches within {radius}\" "
                             f"(need {min_matches})")
        keep = np.ones(len(i), bool)
        for _ in range(3):
            centre = w.all_pix2world([[np.median(x[i]), np.median(y[i])]], 0)[0]
            crpix = np.array([np.median(x[i]), np.median(y[i])])
            w = fit_tan(x[i][keep], y[i][keep], ref_ra[j][keep], ref_dec[j][keep], centre, crpix)
            ra, dec = w.all_pix2world(x[i], y[i], 0)
            dxi, deta = tangent_plane(ra, dec, *centre)
            rxi, reta = tangent_plane(ref_ra[j], ref_dec[j], *centre)
            r = np.hypot(dxi - rxi, deta - reta) * 3600.0
            s = 1.4826 * np.median(r[keep]) / 1.1774 + 1e-9      # median of a 2-D Rayleigh -> sigma
            new = r < clip * s * 1.1774 * 1.5
            if np.array_equal(new, keep):
                break
            keep = new
        last = (i, j, keep, r, dxi - rxi, deta - reta)
    i, j, keep, r, ex, ey = last
    info = {"n_matched": int(keep.sum()), "i_det": i[keep], "i_ref": j[keep],
            "rms_arcsec": float(np.sqrt(0.5 * np.mean((ex[keep] ** 2 + ey[keep] ** 2))) * 3600.0)}
    return w, info
