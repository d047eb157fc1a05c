"""Photometric calibration: the visit's zero point from reference stars of the same band.

zero point = AB magnitude of 1 electron in the exposure = m_ref + 2.5 log10(flux_e), averaged over
bright, unsaturated, matched reference stars with iterative sigma clipping and inverse-variance
weights (measurement and reference errors). The band of the reference magnitude is always the
visit's own band: there is no band mapping.
"""
import numpy as np

from twinkles_hpc.instrument import NJY_ZEROPOINT
from twinkles_hpc.level2 import CalibrationError


def zero_point(flux_e, flux_err_e, ref_mag, ref_mag_err, *, min_snr=20.0, clip=3.0, iters=5):
    """Returns (zero_point, error, n_used) from matched stars' fluxes (electrons) and reference mags."""
    flux_e, flux_err_e = np.asarray(flux_e, float), np.asarray(flux_err_e, float)
    ok = np.isfinite(flux_e) & (flux_e > 0) & (flux_e > min_snr * flux_err_e) & np.isfinite(ref_mag)
    if ok.sum() < 3:
        raise CalibrationError(f"photometric calibration: {int(ok.sum())} usable reference stars (need 3)")
    zp_i = ref_mag[ok] + 2.5 * np.log10(flux_e[ok])
    err_i = np.hypot(ref_mag_err[ok], 1.0857 * flux_err_e[ok] / flux_e[ok])
    zp, err, n = clipped_weighted_mean(zp_i, err_i, clip=clip, iters=iters)
    return zp, err, n


def clipped_weighted_mean(v, err, valid=None, *, clip=3.0, iters=5, readmit=True, min_keep=0):
    """(mean, error, n used): the inverse-variance weighted mean of `v` with iterative clipping at
    `clip` x the robust scale of the pulls (at least 1), over the `valid` entries (default all).
    readmit: an entry clipped once may come back when the mean moves; the iteration stops early when
    fewer than `min_keep` entries would remain. The error is scaled up by sqrt(chi^2/dof) when the
    values scatter more than their errors say."""
    valid = np.ones(len(v), bool) if valid is None else valid
    keep = valid
    for _ in range(iters):
        w = 1.0 / err[keep] ** 2
        mean = np.sum(w * v[keep]) / w.sum()
        pull = (v - mean) / err
        scale = max(1.4826 * np.median(np.abs(pull[keep])), 1.0)
        new = (valid if readmit else keep) & (np.abs(pull) < clip * scale)
        if np.array_equal(new, keep) or new.sum() < min_keep:
            break
        keep = new
    w = 1.0 / err[keep] ** 2
    mean = float(np.sum(w * v[keep]) / w.sum())
    chi2 = np.sum(w * (v[keep] - mean) ** 2) / max(keep.sum() - 1, 1)
    return mean, float(np.sqrt(max(chi2, 1.0) / w.sum())), int(keep.sum())


def njy_per_electron(zp):
    """Flux (nJy) of one electron given the zero point."""
    return 10.0 ** (-0.4 * (zp - NJY_ZEROPOINT))
