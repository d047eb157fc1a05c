"""Calibration against the simulation's truth: each calexp's zero point and fitted WCS against the true
ones its eimage records."""
import os

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

from twinkles_hpc import instrument
from twinkles_hpc.rundir import layout
from twinkles_hpc.validation import metrics
from twinkles_hpc.validation.products import need, null_metric, read_attrs

#: Sensor grid (per axis) on which the fitted WCS is compared with the true one.
WCS_GRID = 9


def true_zero_point(eimage_attrs):
    """AB magnitude of 1 electron in the exposure as simulated: the 1 e-/s zero point at airmass 1, the
    exposure time and the band's extinction at the visit's airmass (instrument.K_ATM)."""
    a = eimage_attrs
    return (float(a["zeropoint"]) + 2.5 * np.log10(float(a["exptime"]))
            - instrument.K_ATM[a["band"]] * (float(a["airmass"]) - 1.0))


def wcs_offset_mas(fitted_header, true_header, nx, ny, n=WCS_GRID):
    """Mean and max over an n x n grid of sensor pixels of the angle between the two WCSs' positions."""
    fitted, true = (WCS(fits.Header.fromstring(str(h))) for h in (fitted_header, true_header))
    yy, xx = np.meshgrid(np.linspace(0, ny - 1, n), np.linspace(0, nx - 1, n), indexing="ij")
    r1, d1 = true.all_pix2world(xx.ravel(), yy.ravel(), 0)
    r2, d2 = fitted.all_pix2world(xx.ravel(), yy.ravel(), 0)
    off = metrics.sep_mas(r1, d1, r2, d2)
    return float(off.mean()), float(off.max())


def calibration(rundir, visits, cfg):
    """Per band: zero point and WCS offsets of each calexp from its eimage's truth, their median and max.
    A visit whose calibration failed (calexp attribute calib_ok = False) is listed with its reason."""
    if not cfg.calexp.enabled:
        return null_metric("no calexps: [calexp] enabled = false")
    per_band, failed = {}, {}
    for v in visits:
        b = str(v["band"])
        c = read_attrs(need(os.path.join(rundir, layout.calexp(v["visit_id"], b)),
                            "a calexp ([calexp] enabled = true)"))
        if not c.get("calib_ok", True):
            failed.setdefault(b, []).append({"visit_id": int(v["visit_id"]), "reason": c.get("calib_failure", "")})
            continue
        e = read_attrs(need(os.path.join(rundir, layout.eimage(v["visit_id"], b)), "the eimage of a calibrated visit"))
        zp = 1e3 * (float(c["zero_point"]) - true_zero_point(e))
        mean, worst = wcs_offset_mas(c["wcs"], e["true_wcs"], cfg.sensor.nx, cfg.sensor.ny)
        per_band.setdefault(b, []).append(
            {"visit_id": int(v["visit_id"]), "zp_offset_mmag": zp,
             "zp_pull": zp / (1e3 * float(c["zero_point_err"])) if c.get("zero_point_err", 0) > 0 else None,
             "astrom_offset_mas": mean, "astrom_offset_max_mas": worst})
    out = {}
    for b in sorted(set(per_band) | set(failed), key="ugrizy".index):
        rows = per_band.get(b, [])
        if not rows:
            out[b] = null_metric(f"no visit of band {b} was calibrated", failed=failed[b])
            continue
        zp = np.array([r["zp_offset_mmag"] for r in rows])
        am = np.array([r["astrom_offset_mas"] for r in rows])
        pulls = np.array([r["zp_pull"] for r in rows if r["zp_pull"] is not None])
        out[b] = {"n_visits": len(rows), "n_failed": len(failed.get(b, [])), "failed": failed.get(b, []),
                  # the band's systematic offset (median, gated) and the visits' scatter about the truth
                  "zp_offset_mmag": {"median": float(np.median(zp)), "median_abs": float(abs(np.median(zp))),
                                     "rms": float(np.sqrt(np.mean(zp ** 2))), "max_abs": float(np.abs(zp).max()),
                                     "pull_rms": float(np.sqrt(np.mean(pulls ** 2))) if pulls.size else None},
                  "astrom_offset_mas": {"median": float(np.median(am)), "max": float(am.max())},
                  "visits": rows}
    return out
