"""Measurements on a difference image: its noise calibration, DiaSource detection and PSF photometry at
given positions (docs/diffim.md, "DiaSources").

Noise calibration. The difference's variance plane assumes white input noise, but the template was
resampled twice (calexp -> coadd patch, patch -> the science pixels) and its noise has less power at high
frequencies than its per-pixel variance says; the decorrelation, which boosts high frequencies, then
predicts more noise than there is. What matters for detection and PSF photometry is the noise of
PSF-weighted sums, so the pipeline measures it on the difference itself: the robust standard deviation
(1.4826 MAD, so that the few real sources do not count) of S / sigma_S over the usable pixels, S the
difference filtered with the detection filter (a Gaussian of the difference PSF's FWHM, or the narrowest
one on a pre-convolved difference, which is already matched-filtered) and sigma_S the filtered variance.
The variance plane is multiplied by its square (`noise_scale`), as LSST's ScaleVarianceTask does per pixel;
the factor is in the product.

Detection: level2.detect on the difference and on its negative at `threshold` sigma (the same filter),
so brightenings and fadings are both found. Photometry: level2.photometry's linear PSF flux at each
position (constant weights, unbiased at every flux) with the difference's PSF: on a pre-convolved
difference PreconvolvedPSF, exact and varying over the sensor; otherwise the PSF stamp fitted by a Gaussian
mixture once per visit, the flux divided by the stamp's response to the mixture, sum(P_mixture P_stamp) /
sum(P_mixture^2), so that a point source with the stamp's profile is measured without bias even where the
mixture misses the decorrelation's small negative ring. The flux errors are calibrated like the noise
(flux_error_scale).
"""
from __future__ import annotations

import numpy as np

from twinkles_hpc.level2 import detect as _det
from twinkles_hpc.level2.masks import BAD, CR, EDGE, NO_DATA, SAT
from twinkles_hpc.level2.photometry import (FLAG_EDGE, FLAG_MASKED, FLAG_NO_DATA, FLAG_OFF_IMAGE,
                                            FLAG_SATURATED, forced_photometry, mixture_image, psf_fwhm)
from twinkles_hpc.level2.psf import mixture_from_stamp

#: Pixels with these bits are left out of the noise calibration, the detection and the PSF fits.
DIA_BAD_BITS = SAT | CR | EDGE | NO_DATA | BAD

#: DiaSource `flags` bits.
DIA_EDGE, DIA_SATURATED, DIA_CR, DIA_BAD_SUBTRACTION, DIA_NEGATIVE, DIA_DIPOLE, DIA_NO_FLUX = (
    1, 2, 4, 8, 16, 32, 64)
DIA_FLAGS = {"EDGE": DIA_EDGE, "SATURATED": DIA_SATURATED, "CR": DIA_CR, "BAD_SUBTRACTION": DIA_BAD_SUBTRACTION,
             "NEGATIVE": DIA_NEGATIVE, "DIPOLE": DIA_DIPOLE, "NO_FLUX": DIA_NO_FLUX}

#: Record dtype of the per-visit `dia_source` table (fluxes in the difference's units: electrons).
DIA_DETECTION_DTYPE = np.dtype([("id", "i8"), ("x", "f8"), ("y", "f8"), ("flux", "f8"), ("flux_err", "f8"),
                                ("snr", "f8"), ("npix", "i4"), ("flags", "i4")])


class DiffPSF:
    """The difference image's PSF: the stamp, its Gaussian-mixture fit (components_at for photometry) and
    the stamp's response to the mixture (the flux correction)."""

    def __init__(self, stamp):
        self.stamp = np.asarray(stamp, np.float64)
        self.stamp = self.stamp / self.stamp.sum()
        self.mixture = mixture_from_stamp(self.stamp)
        h = self.stamp.shape[0] // 2
        dy, dx = np.mgrid[-h:h + 1, -h:h + 1].astype(np.float64)
        model = mixture_image(*(c[0] for c in self.components_at(np.zeros(1), np.zeros(1))), dx, dy)
        self.response = float((model * self.stamp).sum() / (model * model).sum())
        self.fwhm_px = float(psf_fwhm(self, 0.0, 0.0)[0])

    def components_at(self, x, y):
        return self.mixture.components_at(x, y)


class PreconvolvedPSF:
    """The PSF of a pre-convolved difference at any position: the calexp's PSF model there (a Gaussian
    mixture, `model.components_at`) convolved with the stamp the calexp was convolved with (the model at
    (cx, cy)), i.e. the K x K mixture whose covariances are the sums; exact, and varying over the sensor
    as the calexp's PSF does (the difference's PSF stamp is only the one at the centre)."""

    response = 1.0

    def __init__(self, model, cx, cy):
        self.model = model
        self.centre = tuple(np.asarray(c, np.float64)[0] for c in model.components_at(np.array([cx]), np.array([cy])))
        self.fwhm_px = float(psf_fwhm(self, cx, cy)[0])

    def components_at(self, x, y):
        w, a, b, c = (np.asarray(v, np.float64) for v in self.model.components_at(x, y))
        W, A, B, C = self.centre
        n = w.shape[0]
        return ((w[:, :, None] * W).reshape(n, -1), (a[:, :, None] + A).reshape(n, -1),
                (b[:, :, None] + B).reshape(n, -1), (c[:, :, None] + C).reshape(n, -1))


def difference_psf(direction, stamp, model, centre):
    """The PSF to measure a difference with: PreconvolvedPSF of the calexp's PSF `model` pre-convolved at
    `centre` (x, y) when `direction` is 'preconvolved', else DiffPSF of the difference's PSF `stamp`."""
    return PreconvolvedPSF(model, *centre) if direction == "preconvolved" else DiffPSF(stamp)


def product_psf(attrs, stamp):
    """difference_psf of a stored diffim product: its attributes (summary, psf_model) and `psf` stamp."""
    import json
    from twinkles_hpc.level2.psf import MixturePSF
    summary = json.loads(attrs["summary"])
    return difference_psf(summary["direction"], stamp, MixturePSF.from_dict(attrs["psf_model"]),
                          summary["psf_centre"])


def unusable(image, variance, mask):
    """The pixels left out of the noise calibration, the detection and the PSF fits (bool): non-finite
    image or variance, variance <= 0, or a DIA_BAD_BITS bit. The steps below take it as `bad` so that a
    visit computes it once (background subtraction and variance scaling do not change it)."""
    return ~(np.isfinite(image) & np.isfinite(variance) & (variance > 0) & ((mask & DIA_BAD_BITS) == 0))


def _zeroed(plane, bad):
    """A copy of plane with the bad pixels 0."""
    return np.where(bad, plane.dtype.type(0), plane)


def subtract_background(image, variance, mask, mesh_size, bad=None):
    """Subtract, in place, the residual sky of a difference: sigma-clipped mesh medians (mesh_size pixels)
    over the usable pixels (not `bad`, default `unusable`), median-filtered and splined
    (level2.background). The kernel fit's differential background is constrained only around the kernel
    candidates; the calexp's and the template's sky estimates, made at different seeing and depth, differ
    by more than that elsewhere (up to 0.1 sigma of a pre-convolved pixel). Returns the mean level
    removed."""
    from twinkles_hpc.level2.background import BackgroundConfig, estimate_background
    bad = unusable(image, variance, mask) if bad is None else bad
    bg = estimate_background(_zeroed(image, bad), bad,
                             BackgroundConfig(mesh_size=mesh_size, mode_estimator="median")).image()
    image -= bg
    return float(bg.mean())


def _mad_std(a):
    return float(1.4826 * np.median(np.abs(a - np.median(a))))


#: noise_scale samples the significance field on every NOISE_STRIDE-th row and column (a sixteenth of the
#: pixels: a million on a sensor, so its medians are good to ~1e-3), with each sample's right and lower
#: neighbour for the roughness.
NOISE_STRIDE = 4


def noise_scale(image, variance, mask, fwhm_px, *, bad=None, filtered=None):
    """(scale, lambda2) of the PSF-filtered significance z = S / sigma_S over usable pixels (on the grid of
    every NOISE_STRIDE-th row and column; module docstring): `scale`, its robust standard deviation, the
    factor by which the variance plane's sigma is off for PSF-weighted sums; `lambda2`, the variance of its
    gradient per unit variance (the field's roughness, from the differences with the right, resp. lower,
    neighbour of each grid pixel: var(z(x+1) - z(x)) = 2 (1 - exp(-lambda2 / 2)) for a Gaussian
    correlation), which sets the Gaussian expectation of false detections. bad: `unusable` when the
    caller has it; filtered: level2.detect.matched_filter of these planes with mask `bad` when the caller
    has it."""
    bad = unusable(image, variance, mask) if bad is None else bad
    s, vs = _det.matched_filter(image, variance, fwhm_px, mask=bad) if filtered is None else filtered
    ok = ~bad & (vs > 0)
    if ok.sum() < 100:
        raise ValueError(f"the difference has {int(ok.sum())} usable pixels, too few to calibrate its noise")
    k = NOISE_STRIDE
    ny, nx = (n // k for n in ok.shape)              # grid points that have both neighbours

    def z_at(dy, dx):
        sl = (slice(dy, dy + k * ny, k), slice(dx, dx + k * nx, k))
        o = ok[sl]
        return np.where(o, s[sl] / np.sqrt(np.where(o, vs[sl], 1.0)), 0.0), o

    z, o = z_at(0, 0)
    scale = _mad_std(z[o])
    v = []
    for zn, on in (z_at(0, 1), z_at(1, 0)):
        both = o & on
        v.append(min((_mad_std((zn - z)[both]) / scale) ** 2, 1.99))
    return scale, float(-2.0 * np.log(1.0 - np.mean(v) / 2.0))


def measure(image, variance, mask, x, y, psf):
    """PSF fluxes (image units), errors and photometry flags at positions x, y on a difference with PSF
    `psf` (DiffPSF or PreconvolvedPSF); the photometry.forced_dtype rows."""
    phot = forced_photometry(image, variance, mask, x, y, psf, ap_radii=(3.0,), bad_mask_bits=DIA_BAD_BITS)
    phot["psf_flux"] /= psf.response
    phot["psf_flux_err"] /= psf.response
    return phot


def flux_error_scale(image, variance, mask, psf, key, n=2000, *, bad=None):
    """Robust standard deviation (1.4826 MAD) of flux / error of `measure` at `n` random usable positions
    (numpy generator keyed by the integer sequence `key`): the factor by which the PSF-flux errors from the
    variance plane are off. Needed where the difference's noise is correlated (a pre-convolved difference),
    about 1 where it was decorrelated; a few real sources among the positions do not move the MAD.
    bad: `unusable` when the caller has it."""
    ok = ~(unusable(image, variance, mask) if bad is None else bad)
    ny, nx = image.shape
    m = int(np.ceil(3 * psf.fwhm_px)) + 2
    ok[:m], ok[-m:], ok[:, :m], ok[:, -m:] = False, False, False, False
    idx = np.flatnonzero(ok)
    if idx.size < n:
        raise ValueError(f"the difference has {idx.size} usable pixels, too few to calibrate its flux errors")
    pick = np.sort(np.random.default_rng([int(k) for k in key]).choice(idx, n, replace=False))
    phot = measure(image, variance, mask, (pick % nx).astype(np.float64), (pick // nx).astype(np.float64), psf)
    z = phot["psf_flux"] / phot["psf_flux_err"]
    z = z[np.isfinite(z) & (phot["flags"] == 0)]
    if z.size < n // 4:
        raise ValueError("too few clean blank positions to calibrate the difference's flux errors")
    return _mad_std(z)


def expected_false_per_mpx(threshold, lambda2):
    """Gaussian-noise expectation of detections per million pixels above +-`threshold` (both signs) on a
    detection image of roughness `lambda2` (noise_scale; 1 / (2 s^2) for white noise smoothed by a Gaussian
    of sigma s): the Euler-characteristic density of the excursion set of a smooth Gaussian field (Adler
    1981), rho = lambda2 nu exp(-nu^2/2) / (2 pi)^1.5 per sign."""
    nu = float(threshold)
    return 2.0 * 1e6 * lambda2 * nu * np.exp(-nu * nu / 2.0) / (2.0 * np.pi) ** 1.5


def detection_filter_fwhm(psf, preconvolved):
    """FWHM (pixels) of the detection filter: the difference PSF's, or the narrowest the detector takes
    (0.5 px) when the difference is already matched-filtered (pre-convolved with the science PSF)."""
    return 0.5 if preconvolved else psf.fwhm_px


def detect_dia_sources(image, variance, mask, psf, *, threshold=5.0, min_npix=3, filter_fwhm=None, err_scale=1.0,
                       bad=None, filtered_image=None):
    """DiaSources of one difference: positive and negative detections above `threshold` sigma (the image
    filtered with a Gaussian of FWHM `filter_fwhm`, default the PSF's), measured with its PSF; a
    DIA_DETECTION_DTYPE array, positives first, each by detection order. bad: `unusable` when the caller
    has it; filtered_image: the S of level2.detect.matched_filter of this image with that filter and mask
    `bad`, when the caller has it (the filter is linear: the negative image's is -S, the same bits)."""
    bad = unusable(image, variance, mask) if bad is None else bad
    img, var = _zeroed(image, bad), _zeroed(variance, bad)
    fwhm = psf.fwhm_px if filter_fwhm is None else filter_fwhm
    s, vs = (_det.matched_filter(img, var, fwhm, mask=bad) if filtered_image is None
             else (filtered_image, _det.filter_variance(var, fwhm, mask=bad)))
    found = []
    for sign in (1.0, -1.0):
        cat, _ = _det.detect(sign * img, var, threshold=threshold, kernel_fwhm_px=fwhm, min_npix=min_npix, mask=bad,
                             deblend=True, filtered=(s if sign > 0 else -s, vs))
        cat = cat[_det.leaves(cat)]
        r = np.zeros(len(cat), DIA_DETECTION_DTYPE)
        r["x"], r["y"], r["npix"] = cat["x"], cat["y"], cat["npix"]
        r["flags"] = np.where(cat["flags"] & _det.FLAG_EDGE, DIA_EDGE, 0) | (DIA_NEGATIVE if sign < 0 else 0)
        found.append(r)
    pos, neg = found
    for a, b in ((pos, neg), (neg, pos)):    # an opposite-sign detection close by: half of a dipole
        if len(a) and len(b):
            d = np.hypot(a["x"][:, None] - b["x"][None, :], a["y"][:, None] - b["y"][None, :])
            a["flags"] |= np.where((d < 2.0 * psf.fwhm_px).any(1), DIA_DIPOLE, 0)
    out = np.concatenate([pos, neg])
    out["id"] = np.arange(1, len(out) + 1)
    if len(out) == 0:
        return out
    phot = measure(image, variance, mask, out["x"], out["y"], psf)
    out["flux"], out["flux_err"] = phot["psf_flux"], phot["psf_flux_err"] * err_scale
    with np.errstate(divide="ignore", invalid="ignore"):
        out["snr"] = out["flux"] / out["flux_err"]
    pf = phot["flags"]
    out["flags"] |= np.where(pf & (FLAG_EDGE | FLAG_OFF_IMAGE), DIA_EDGE, 0)
    out["flags"] |= np.where(pf & FLAG_SATURATED, DIA_SATURATED, 0)
    out["flags"] |= np.where(pf & FLAG_NO_DATA | ~np.isfinite(out["flux"]), DIA_NO_FLUX, 0)
    masked = np.flatnonzero(pf & FLAG_MASKED)
    r = int(np.ceil(1.5 * psf.fwhm_px))
    for k in masked:
        xi, yi = int(round(out["x"][k])), int(round(out["y"][k]))
        box = mask[max(yi - r, 0):yi + r + 1, max(xi - r, 0):xi + r + 1]
        out["flags"][k] |= DIA_CR if (box & CR).any() else 0
    # the PSF flux must agree in sign with the detection, else the subtraction left structure, not a source
    sign = np.where(out["flags"] & DIA_NEGATIVE, -1.0, 1.0)
    out["flags"] |= np.where(np.isfinite(out["snr"]) & (sign * out["snr"] < 0.5 * threshold), DIA_BAD_SUBTRACTION, 0)
    return out
