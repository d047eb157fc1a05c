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
    keep = np.ones(len(zp_i), bool)
    for _ in range(iters):
        w = 1.0 / err_i[keep] ** 2
        zp = np.sum(w * zp_i[keep]) / w.sum()
        pull = (zp_i - zp) / err_i
        scale = max(1.4826 * np.median(np.abs(pull[keep])), 1.0)
        new = np.abs(pull) < clip * scale
        if np.array_equal(new, keep):
            break
        keep = new
    w = 1.0 / err_i[keep] ** 2
    zp = float(np.sum(w * zp_i[keep]) / w.sum())
    chi2 = np.sum(w * (zp_i[keep] - zp) ** 2) / max(keep.sum() - 1, 1)
    return zp, float(np.sqrt(max(chi2, 1.0) / w.sum())), int(keep.sum())


def njy_per_electron(zp):
    """Flux (nJy) of one electron given the zero point."""
    return 10.0 ** (-0.4 * (zp - NJY_ZEROPOINT))
