"""Forced photometry: PSF and aperture fluxes of known objects at fixed pixel positions on one calexp.

Estimators (docs/level2-photometry.md), all in the image's units (electrons for a calexp):

* PSF flux: the linear least-squares amplitude of the PSF model P (the mixture from `psf.components_at`,
  pixel response included, sampled at pixel centres, unit integral) at the fixed position, over the pixel
  centres within `psf_radius` of it, masked pixels left out. The weights are one constant per object (the
  background variance, which then cancels): flux = sum P d / sum P^2, and the error propagates the full
  per-pixel variance plane (sky + the source's own shot noise): err = sqrt(sum P^2 v) / sum P^2. Weights
  that do not depend on the pixel values keep the estimator linear and unbiased at every flux. Weights
  1 / v from a variance plane estimated from the noisy pixels correlate with the noise and bias every
  flux low by ~ sum P / sum P^2 electrons, the PSF's effective area (~40 e- at 0.7", 2% at SNR 10).
  Sky-limited, the error equals the optimal 1 / sqrt(sum P^2 / v).
* Aperture fluxes: sum over pixels of (exact area of the pixel inside the circle) x data, variance
  sum area^2 v. Unusable pixels inside an aperture are filled with psf_flux x (model), flag AP_FILLED;
  an aperture that leaves the image is NaN.

Flags (bits of the `flags` field) describe the PSF footprint (pixels within `psf_radius`):
OFF_IMAGE the centre is off the image (all fluxes NaN); EDGE the footprint is cut by the image border or
holds EDGE-masked pixels; MASKED it holds unusable pixels (mask & bad_mask_bits, non-finite data, variance
<= 0 or non-finite), left out of the fit; SATURATED it holds SAT pixels; NO_DATA no usable pixel (fluxes
NaN); AP_FILLED an aperture flux used model-filled pixels.
"""
import numpy as np

from twinkles_hpc import _photometry
from twinkles_hpc.level2.masks import BAD, CR, EDGE, NO_DATA, SAT

#: Pixels with any of these mask bits are left out of the PSF fit and model-filled in apertures.
DEFAULT_BAD_MASK_BITS = SAT | CR | NO_DATA | BAD

#: `flags` bits (see the module docstring), defined by the kernel (ext/_photometry.pyx).
FLAG_OFF_IMAGE = _photometry.FLAGS["OFF_IMAGE"]
FLAG_EDGE = _photometry.FLAGS["EDGE"]
FLAG_MASKED = _photometry.FLAGS["MASKED"]
FLAG_SATURATED = _photometry.FLAGS["SATURATED"]
FLAG_NO_DATA = _photometry.FLAGS["NO_DATA"]
FLAG_AP_FILLED = _photometry.FLAGS["AP_FILLED"]

#: Aperture radii in pixels (0.6", 1.2", 2.4" at 0.2"/px): core, ~2 FWHM, and ~total flux.
DEFAULT_AP_RADII = (3.0, 6.0, 12.0)
#: Default PSF-fit radius in units of the effective FWHM (`psf_fwhm`); ~3.5 FWHM for a Kolmogorov PSF.
PSF_RADIUS_FWHM = 3.0
#: Kernel buffer limits: PSF-fit and aperture radii (pixels), apertures, mixture components per object.
MAX_RADIUS, MAX_APERTURES, MAX_COMPONENTS = 500.0, 64, 64


def _radius_name(r):
    return f"{r:g}".replace(".", "p")


def forced_dtype(ap_radii=DEFAULT_AP_RADII):
    """Record dtype of a forced-photometry catalogue: object_id, x, y (pixels), psf_flux, psf_flux_err,
    ap_flux_<r>, ap_flux_<r>_err per aperture radius r in pixels ('p' for a decimal point, 4.5 -> 4p5),
    all fluxes in image units (electrons on a calexp), and flags (FLAG_* bits)."""
    names = [_radius_name(r) for r in ap_radii]
    if len(set(names)) != len(names):
        raise ValueError(f"aperture radii {list(ap_radii)} give duplicate field names {names}")
    fields = [("object_id", "i8"), ("x", "f8"), ("y", "f8"), ("psf_flux", "f8"), ("psf_flux_err", "f8")]
    for r in names:
        fields += [(f"ap_flux_{r}", "f8"), (f"ap_flux_{r}_err", "f8")]
    return np.dtype(fields + [("flags", "i4")])


FORCED_DTYPE = forced_dtype()


def _components(psf, n):
    """(w, cxx, cxy, cyy) from psf.components_at, checked: finite, shape (n, K), positive definite."""
    try:
        comps = [np.asarray(c, dtype=np.float64) for c in psf]
    except (TypeError, ValueError):
        raise ValueError("psf.components_at must return four numeric arrays (w, cxx, cxy, cyy)") from None
    if len(comps) != 4 or any(c.ndim != 2 or c.shape != comps[0].shape or c.shape[0] != n for c in comps):
        raise ValueError(f"psf.components_at must return four arrays of shape (n={n}, K), got "
                         f"{[c.shape for c in comps]}")
    w, cxx, cxy, cyy = comps
    if not 1 <= comps[0].shape[1] <= MAX_COMPONENTS or not all(np.isfinite(c).all() for c in comps):
        raise ValueError(f"psf.components_at must return 1 to {MAX_COMPONENTS} components per object, all "
                         f"finite; got {comps[0].shape[1]}")
    det = cxx * cyy - cxy * cxy
    if not (np.all(cxx > 0) and np.all(det > 0)):
        raise ValueError("psf.components_at returned a covariance that is not positive definite (px^2)")
    return w, cxx, cxy, cyy, det


def mixture_image(w, cxx, cxy, cyy, dx, dy):
    """The mixture of one position (w, cxx, cxy, cyy: arrays (K,), px^2) at offsets dx, dy (pixels, any
    shape) from its centre: the PSF value per unit flux, per pixel, sampled as forced_photometry does. With
    (n, K) arrays, the mixtures of n positions, dx and dy of shape (n, ...): position k's values at [k]."""
    nd = np.ndim(dx)
    c = [np.moveaxis(np.asarray(a, dtype=np.float64), -1, 0) for a in (w, cxx, cxy, cyy)]
    c = [a.reshape(a.shape + (1,) * (nd - a.ndim + 1)) for a in c]
    det = c[1] * c[3] - c[2] ** 2
    q = (c[3] * dx ** 2 - 2 * c[2] * dx * dy + c[1] * dy ** 2) / det
    return (c[0] / (2 * np.pi * np.sqrt(det)) * np.exp(-0.5 * q)).sum(0)


def psf_fwhm(psf, x, y):
    """Effective FWHM (pixels) of the PSF at (x, y): that of the Gaussian with the same effective area
    n_eff = 1 / int P^2 (int P^2 = sum_jk w_j w_k / (2 pi sqrt det(C_j + C_k))); 1.16 x the true FWHM of a
    Kolmogorov profile."""
    x, y = _positions(x, y)
    return mixture_fwhm(*_components(psf.components_at(x, y), x.size)[:4])


def mixture_fwhm(w, cxx, cxy, cyy):
    """Effective FWHM (pixels) of mixtures given as (n, K) arrays (psf_fwhm's formula)."""
    sxx, sxy, syy = (c[:, :, None] + c[:, None, :] for c in (cxx, cxy, cyy))
    ipp = (w[:, :, None] * w[:, None, :] / (2 * np.pi * np.sqrt(sxx * syy - sxy * sxy))).sum((1, 2))
    return np.sqrt(2 * np.log(2) / (np.pi * ipp))


def _positions(x, y):
    x, y = np.atleast_1d(np.asarray(x, dtype=np.float64)), np.atleast_1d(np.asarray(y, dtype=np.float64))
    if x.ndim != 1 or x.shape != y.shape:
        raise ValueError(f"x and y must be 1-D arrays of the same length, got shapes {x.shape}, {y.shape}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("x and y must be finite (pixels)")
    return np.ascontiguousarray(x), np.ascontiguousarray(y)


def _pixels(image, variance, mask):
    for name, arr in (("image", image), ("variance", variance)):
        if not isinstance(arr, np.ndarray) or arr.ndim != 2 or arr.dtype.kind not in "fiu":
            raise ValueError(f"{name} must be a 2-D numeric numpy array, got {type(arr).__name__} "
                             f"{getattr(arr, 'dtype', '')} {getattr(arr, 'shape', '')}")
    if variance.shape != image.shape:
        raise ValueError(f"variance shape {variance.shape} differs from image shape {image.shape}")
    image, variance = (np.ascontiguousarray(a if a.dtype in (np.float32, np.float64) else a.astype(np.float64))
                       for a in (image, variance))
    if mask is None:
        mask = np.zeros(image.shape, np.uint16)
    elif not isinstance(mask, np.ndarray) or mask.shape != image.shape or mask.dtype.kind not in "iub":
        raise ValueError(f"mask must be an integer array of shape {image.shape}, got "
                         f"{getattr(mask, 'dtype', type(mask).__name__)} {getattr(mask, 'shape', '')}")
    elif mask.dtype != np.uint16:
        if mask.size and (mask.min() < 0 or mask.max() > 0xFFFF):
            raise ValueError("mask values must fit in 16 bits (uint16)")
        mask = mask.astype(np.uint16)
    return image, variance, np.ascontiguousarray(mask)


def _radii(name, value, n=None):
    r = np.atleast_1d(np.asarray(value, dtype=np.float64))
    if r.ndim != 1 or r.size == 0 or (n is not None and r.size not in (1, n)):
        raise ValueError(f"{name} must be a scalar or 1-D array{'' if n is None else f' of length {n}'}")
    if not (np.isfinite(r).all() and (r > 0).all() and (r <= MAX_RADIUS).all()):
        raise ValueError(f"{name} must be finite, > 0 and <= {MAX_RADIUS} pixels, got {value!r}")
    return r if n is None else np.ascontiguousarray(np.broadcast_to(r, (n,)))


def forced_photometry(image, variance, mask, x, y, psf, *, object_ids=None, ap_radii=DEFAULT_AP_RADII,
                      psf_radius=None, bad_mask_bits=DEFAULT_BAD_MASK_BITS):
    """PSF and aperture photometry of objects at fixed positions; returns a `forced_dtype(ap_radii)` array.

    image, variance: 2-D (ny, nx) arrays (float32 or float64; image units, e.g. electrons, and their
        square), background subtracted. mask: integer (ny, nx) bit mask (docs/data-model.md) or None.
    x, y: object positions, pixels, (0, 0) the centre of the first pixel; psf: object with
        components_at(x, y) -> (w, cxx, cxy, cyy), (n, K) arrays, covariances in px^2 with the pixel
        response included. object_ids: int64 per object (default 0..n-1).
    ap_radii: aperture radii in pixels (at most MAX_APERTURES; the fields come out sorted by radius).
    psf_radius: PSF-fit radius in pixels, scalar or per object; default PSF_RADIUS_FWHM x psf_fwhm there.
    bad_mask_bits: mask bits whose pixels are left out of the fit.
    Raises ValueError on malformed input; off-image and unmeasurable objects come back flagged, NaN.
    """
    image, variance, mask = _pixels(image, variance, mask)
    x, y = _positions(x, y)
    n = x.size
    ids = np.arange(n) if object_ids is None else np.asarray(object_ids)
    if ids.shape != (n,) or ids.dtype.kind not in "iu":
        raise ValueError(f"object_ids must be {n} integers, got {getattr(ids, 'dtype', '')} {ids.shape}")
    ap = np.unique(_radii("ap_radii", ap_radii))
    if ap.size > MAX_APERTURES:
        raise ValueError(f"at most {MAX_APERTURES} aperture radii, got {ap.size}")
    if not (isinstance(bad_mask_bits, (int, np.integer)) and 0 <= bad_mask_bits <= 0xFFFF):
        raise ValueError(f"bad_mask_bits must be an int in [0, 65535], got {bad_mask_bits!r}")
    if not hasattr(psf, "components_at"):
        raise ValueError(f"psf must have components_at(x, y), got {type(psf).__name__}")
    out = np.zeros(n, forced_dtype(ap))
    out["object_id"], out["x"], out["y"] = ids, x, y
    if n == 0:
        return out
    w, cxx, cxy, cyy, det = _components(psf.components_at(x, y), n)
    if psf_radius is None:
        psf_radius = PSF_RADIUS_FWHM * mixture_fwhm(w, cxx, cxy, cyy)
    radius = _radii("psf_radius", psf_radius, n)
    amp = np.ascontiguousarray(w / (2 * np.pi * np.sqrt(det)))
    ia, ib, ic = (np.ascontiguousarray(c) for c in (cyy / det, -cxy / det, cxx / det))
    psf_flux, psf_err, flags = np.empty(n), np.empty(n), np.empty(n, np.int32)
    ap_flux, ap_err = np.empty((n, ap.size)), np.empty((n, ap.size))
    _photometry.forced(image, variance, mask, x, y, radius, amp, ia, ib, ic, ap, int(bad_mask_bits),
                       SAT, EDGE, psf_flux, psf_err, ap_flux, ap_err, flags)
    out["psf_flux"], out["psf_flux_err"], out["flags"] = psf_flux, psf_err, flags
    for k, r in enumerate(ap):
        out[f"ap_flux_{_radius_name(r)}"], out[f"ap_flux_{_radius_name(r)}_err"] = ap_flux[:, k], ap_err[:, k]
    return out


class _FixedPSF:
    """One position's mixture (tuple of (1, K) arrays), returned for every query."""

    def __init__(self, comps):
        self.comps = comps

    def components_at(self, x, y):
        return tuple(np.repeat(c, np.size(x), axis=0) for c in self.comps)


class _GivenPSF:
    """The mixtures of n positions ((n, K) arrays), returned for a query of those n positions in order."""

    def __init__(self, comps):
        self.comps = comps

    def components_at(self, x, y):
        if np.size(x) != self.comps[0].shape[0]:
            raise ValueError(f"{np.size(x)} positions queried, {self.comps[0].shape[0]} mixtures given")
        return self.comps


#: psf_aperture_fraction draws at most this many model values (stamp pixels x mixture components) at a time.
APERTURE_VALUES = 1 << 21


def psf_aperture_fraction(psf, x, y, ap_radii=DEFAULT_AP_RADII):
    """Fraction of a point source's flux that each aperture measures (as forced_photometry sums it: exact
    pixel areas over the pixel-sampled model): the aperture correction ap_flux / psf_flux expected for a
    star at (x, y). Returns an (n, n_ap) array, apertures sorted. Each position's model is drawn on its own
    stamp, at the position's sub-pixel offset; the stamps, side by side in one image (an aperture stays
    within its stamp), are measured in one forced_photometry call."""
    x, y = _positions(x, y)
    ap = np.unique(_radii("ap_radii", ap_radii))
    comps = _components(psf.components_at(x, y), x.size)[:4]
    half = int(np.ceil(ap[-1])) + 1
    side = 2 * half + 1
    jj, ii = np.mgrid[0:side, 0:side].astype(np.float64)
    frac = np.empty((x.size, ap.size))
    chunk = max(1, APERTURE_VALUES // (side * side * comps[0].shape[1]))
    for k0 in range(0, x.size, chunk):
        sl = slice(k0, min(k0 + chunk, x.size))
        xc, yc = half + x[sl] - np.round(x[sl]), half + y[sl] - np.round(y[sl])       # stamp coordinates
        w, cxx, cxy, cyy = (a[sl] for a in comps)
        model = mixture_image(w, cxx, cxy, cyy, ii[None] - xc[:, None, None], jj[None] - yc[:, None, None])
        n = model.shape[0]
        tiled = np.ascontiguousarray(model.transpose(1, 0, 2).reshape(side, n * side))
        rows = forced_photometry(tiled, np.ones_like(tiled), None, xc + side * np.arange(n), yc,
                                 _GivenPSF((w, cxx, cxy, cyy)), ap_radii=ap, psf_radius=1.0)
        frac[sl] = np.stack([rows[f"ap_flux_{_radius_name(r)}"] for r in ap], axis=1)
    return frac
