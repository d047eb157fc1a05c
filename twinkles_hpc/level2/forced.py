"""Forced photometry of the Objects on one calexp (forcedPhotCcd): the ForcedSource rows of one visit.

Every primary Object (detect_isPrimary) is placed on the calexp at its coadd position (psRa, psDecl)
through the calexp's fitted WCS (attribute `wcs`), and its PSF flux is measured there with the calexp's
own PSF model (attribute `psf`, MixturePSF) by `photometry.forced_photometry` on the calexp's image,
variance and mask planes. Objects whose position falls off the sensor are skipped (no row). Fluxes are
calibrated to nJy as the calexp's zero point was: psFlux = psf_flux x ap_corr x flux_njy_per_electron
(docs/level2-photometry.md). ccdVisitId is the visit id (one sensor per visit in this simulation).
"""
from __future__ import annotations

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

from twinkles_hpc.level2.photometry import forced_photometry
from twinkles_hpc.level2.psf import MixturePSF
from twinkles_hpc.store.atomic import open_read

#: Record dtype of the `forced_source` table (ForcedSource columns plus the calexp position).
FORCED_SOURCE_DTYPE = np.dtype([("objectId", "i8"), ("ccdVisitId", "i8"), ("psFlux", "f8"),
                                ("psFlux_Sigma", "f8"), ("flags", "i8"), ("x", "f8"), ("y", "f8")])


def primary_objects(objects):
    """The primary Objects of one or more Object tables (a table or a list of tables), sorted by objectId."""
    if not isinstance(objects, np.ndarray):
        objects = [o[["objectId", "psRa", "psDecl", "detect_isPrimary"]] for o in objects]
        objects = np.concatenate(objects) if objects else np.zeros(0, [("objectId", "i8"), ("psRa", "f8"),
                                                                       ("psDecl", "f8"), ("detect_isPrimary", "?")])
    prim = objects[objects["detect_isPrimary"]]
    return prim[np.argsort(prim["objectId"], kind="stable")]


def force_exposure(image, variance, mask, attrs, objects):
    """ForcedSource rows (FORCED_SOURCE_DTYPE, sorted by objectId) of the primary `objects` on one calexp
    given as planes and attributes (wcs, psf, ap_corr, flux_njy_per_electron, visit_id)."""
    prim = primary_objects(objects)
    out = np.zeros(0, FORCED_SOURCE_DTYPE)
    if len(prim) == 0:
        return out
    wcs = WCS(fits.Header.fromstring(str(attrs["wcs"])))
    x, y = (np.asarray(a, dtype=np.float64) for a in wcs.all_world2pix(prim["psRa"], prim["psDecl"], 0))
    ny, nx = image.shape
    on = np.isfinite(x) & np.isfinite(y) & (x >= -0.5) & (x < nx - 0.5) & (y >= -0.5) & (y < ny - 0.5)
    prim, x, y = prim[on], x[on], y[on]
    if len(prim) == 0:
        return out
    psf = MixturePSF.from_dict(attrs["psf"])
    phot = forced_photometry(image, variance, mask, x, y, psf, object_ids=prim["objectId"], ap_radii=(3.0,))
    scale = float(attrs["ap_corr"]) * float(attrs["flux_njy_per_electron"])
    out = np.zeros(len(prim), FORCED_SOURCE_DTYPE)
    out["objectId"], out["ccdVisitId"] = prim["objectId"], int(attrs["visit_id"])
    out["psFlux"], out["psFlux_Sigma"] = phot["psf_flux"] * scale, phot["psf_flux_err"] * scale
    out["flags"], out["x"], out["y"] = phot["flags"], x, y
    return out


def force_visit(calexp_path, objects):
    """ForcedSource rows of the primary `objects` (an Object table or a list of them) on the calexp at
    `calexp_path`: a FORCED_SOURCE_DTYPE array sorted by objectId, Objects off the sensor left out."""
    with open_read(calexp_path) as fh:
        image, variance, mask = (fh[k][...] for k in ("image", "variance", "mask"))
        attrs = {k: (v.item() if hasattr(v, "item") else v) for k, v in fh.attrs.items()}
    return force_exposure(image, variance, mask, attrs, objects)
