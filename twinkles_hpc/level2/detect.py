"""Source detection on a background-subtracted calexp: matched filter, threshold, 8-connected footprints,
peak-based deblending, isophotal and windowed measurements (docs/level2-detect.md).

Images are in electrons per pixel, variances in electrons^2; pixel (i, j) is column i, row j, centred at
x = i, y = j. The compiled kernels live in twinkles_hpc._detect; this module validates and documents.

Method
- Matched filter: the image is convolved with a normalised circular Gaussian K of FWHM kernel_fwhm_px
  (sampled at pixel centres out to 3 sigma, separable), the variance with K^2, so the smoothed image S
  has noise sigma_S = sqrt(V (x) K^2) at every pixel. Masked pixels and pixels beyond the edge count as
  zero in both, which keeps S / sigma_S an exact significance next to them.
- Detection: unmasked pixels with S > threshold sigma_S, 8-connected, footprints of >= min_npix pixels.
- Deblending: the footprint's pixels are flooded from the highest S down; a pixel with no visited
  neighbour is a peak, otherwise it climbs to (joins the basin of) its highest visited neighbour. Where
  basins meet at level v, each lower basin is merged into the one with the highest peak unless it is
  significant: prominence (its peak - v) >= deblend_nsigma sigma_S at its peak, and flux above v (sum
  of S - v over its pixels) >= deblend_cont x the footprint's sum of S (SExtractor's DEBLEND_MINCONT).
  Basins whose peaks lie within the kernel radius of the same masked region always merge (a masked,
  e.g. saturated, core leaves a ring of peaks around it that are one source). Two or more surviving
  basins make children; each pixel belongs to exactly one child.
- Measurements per record, over its pixels (a parent's are all its children's): flux = sum of the
  image, flux_err = sqrt(sum of the variance) (isophotal); second moments xx, yy, xy (px^2) about the
  isophotal barycentre, plus 1/12 px^2 on the diagonal when degenerate (det < 1/144); x_peak, y_peak
  and peak_value = position and value of the maximum of S (electrons per pixel, matched-filtered).
  x, y: iterative Gaussian-windowed first moment (window sigma = kernel_fwhm_px / 2.3548, box +- 4
  sigma) started from the barycentre. Pixels are used in pairs mirrored through the current centre:
  both must be on the image, unmasked, and undetected or the record's own (a parent's include its
  children's), which keeps the centroid of a symmetric source unbiased next to masks, edges and
  neighbours. Each step moves by twice the windowed mean offset, exact in one step for a Gaussian
  source as wide as the window, until it moves less than 1e-4 px (at most 20 steps). Where masked
  pixels hold more than 10% of the window's weight (a saturated core), x, y stay at the barycentre
  (FLAG_CENTROID). For a Gaussian PSF and sky-limited noise this centroid has the
  Cramer-Rao error sqrt(2) sigma_psf / SNR per axis (SNR of the matched filter).

Catalogue: DETECTION_DTYPE rows, ids 1..n in order; a split footprint gives its parent row (parent = 0,
flag DEBLENDED) followed by its children (parent = the parent's id); an unsplit footprint gives one row.
"""
import math

import numpy as np

from twinkles_hpc import _detect
from twinkles_hpc.level2.background import as_float32_image, as_mask, raise_bad_pixel

DETECTION_DTYPE = [("id", "i8"), ("x", "f8"), ("y", "f8"),
                   ("x_peak", "i4"), ("y_peak", "i4"), ("flux", "f8"), ("flux_err", "f8"),
                   ("npix", "i4"), ("xx", "f8"), ("yy", "f8"), ("xy", "f8"),
                   ("peak_value", "f8"), ("parent", "i8"), ("flags", "i4")]

# `flags` bits, defined by the kernel (ext/_detect.pyx).
#: This row is a footprint split into children (the rows that follow with parent = this id).
FLAG_DEBLENDED = _detect.FLAGS["DEBLENDED"]
#: The pixels touch the image border.
FLAG_EDGE = _detect.FLAGS["EDGE"]
#: Masked pixels inside the centroid window (they were left out).
FLAG_MASKED = _detect.FLAGS["MASKED"]
#: The windowed centroid failed (masked core, no positive weight, or it ran off); x, y are the isophotal
#: barycentre.
FLAG_CENTROID = _detect.FLAGS["CENTROID"]
#: Isophotal flux <= 0: no barycentre or moments (NaN); x, y start from the peak.
FLAG_NEGATIVE = _detect.FLAGS["NEGATIVE"]

FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))
#: Kernel half-width, in kernel sigmas.
KERNEL_RADIUS_SIGMA = 3.0
#: Windowed centroid: convergence (px) and maximum number of steps.
CENTROID_TOL, CENTROID_MAXITER = 1e-4, 20


def gaussian_taps(fwhm_px):
    """1-D taps of the normalised Gaussian kernel of FWHM fwhm_px (pixels): the 2-D kernel is the outer
    product with itself, sampled at pixel centres out to KERNEL_RADIUS_SIGMA sigma, sum 1."""
    s = fwhm_px / FWHM_PER_SIGMA
    r = max(1, int(math.ceil(KERNEL_RADIUS_SIGMA * s)))
    t = np.exp(-0.5 * (np.arange(-r, r + 1) / s) ** 2)
    return (t / t.sum()).astype(np.float32)


def matched_filter(image, variance, fwhm_px, mask=None):
    """(S, V_S): image (x) K and variance (x) K^2 (float32), K the detection kernel; see the module doc."""
    img, var = _inputs(image, variance)
    m = as_mask(mask, img.shape)
    return _filter(img, var, m, gaussian_taps(_fwhm(fwhm_px)))


def filter_variance(variance, fwhm_px, mask=None):
    """V_S alone: variance (x) K^2 (float32), as matched_filter's."""
    var = as_float32_image("variance", variance)
    empty = np.zeros((0, 0), np.float32)
    svar = np.empty_like(var)
    bad = _detect.matched_filter(empty, var, as_mask(mask, var.shape), gaussian_taps(_fwhm(fwhm_px)), empty, svar)
    if bad >= 0:
        raise_bad_pixel("variance", bad, var.shape, "finite and >= 0")
    return svar


def leaves(catalog):
    """Boolean mask of the rows that are not split parents: each detected source once."""
    return (catalog["flags"] & FLAG_DEBLENDED) == 0


def _fwhm(fwhm_px):
    if not (np.isscalar(fwhm_px) and math.isfinite(fwhm_px) and 0.5 <= fwhm_px <= 100):
        raise ValueError(f"kernel_fwhm_px must be a number in [0.5, 100] pixels, got {fwhm_px!r}")
    return float(fwhm_px)


def _inputs(image, variance):
    img = as_float32_image("image", image)
    var = as_float32_image("variance", variance)
    if img.shape != var.shape:
        raise ValueError(f"image {img.shape} and variance {var.shape} must have the same shape")
    return img, var


def _filter(img, var, m, taps):
    simg = np.empty_like(img)
    svar = np.empty_like(img)
    bad = _detect.matched_filter(img, var, m, taps, simg, svar)
    if bad >= 0:
        j, i = divmod(bad, img.shape[1])
        name = "image" if not math.isfinite(img[j, i]) else "variance"
        raise_bad_pixel(name, bad, img.shape, "finite" if name == "image" else "finite and >= 0")
    return simg, svar


def detect(image, variance, *, threshold=5.0, kernel_fwhm_px=3.5, min_npix=5, mask=None, deblend=True,
           deblend_nsigma=3.0, deblend_cont=0.001, filtered=None):
    """Detect sources in a background-subtracted image.

    image: 2-D, electrons per pixel, background subtracted; variance: same shape, electrons^2 (>= 0);
    threshold: detection threshold in sigma of the matched-filtered noise; kernel_fwhm_px: FWHM of the
    Gaussian matched filter (the PSF's), pixels; min_npix: smallest footprint, pixels; mask: pixels to
    ignore (bool, or integer with nonzero = ignore), same shape; deblend: split footprints with several
    significant peaks; deblend_nsigma, deblend_cont: a peak is significant if it rises above the saddle
    to a higher peak by at least deblend_nsigma sigma of the smoothed noise at the peak and its flux
    above the saddle is at least deblend_cont times the footprint's (both in the smoothed image);
    filtered: (S, V_S) of these image, variance, mask and kernel (matched_filter) when the caller has
    them, so they are not computed again.

    Unmasked non-finite pixels (image or variance), negative variances and mismatched shapes raise
    ValueError. Returns (catalog, labels): catalog a DETECTION_DTYPE array (see the module doc), labels an
    int32 image holding, for every detected pixel, the id of its leaf row (a child, or an unsplit
    footprint), 0 elsewhere.
    """
    img, var = _inputs(image, variance)
    m = as_mask(mask, img.shape)
    if not (np.isscalar(threshold) and math.isfinite(threshold) and threshold > 0):
        raise ValueError(f"threshold must be a number > 0 (sigma), got {threshold!r}")
    if not (isinstance(min_npix, (int, np.integer)) and min_npix >= 1):
        raise ValueError(f"min_npix must be an integer >= 1, got {min_npix!r}")
    if not (math.isfinite(deblend_nsigma) and deblend_nsigma >= 0 and 0 <= deblend_cont <= 1):
        raise ValueError(f"need deblend_nsigma >= 0 and 0 <= deblend_cont <= 1, got {deblend_nsigma!r}, "
                         f"{deblend_cont!r}")
    fwhm = _fwhm(kernel_fwhm_px)
    taps = gaussian_taps(fwhm)
    if filtered is None:
        simg, svar = _filter(img, var, m, taps)
    else:
        simg, svar = (as_float32_image(name, a) for name, a in zip(("filtered image", "filtered variance"), filtered))
        if simg.shape != img.shape or svar.shape != img.shape:
            raise ValueError(f"filtered planes {simg.shape}, {svar.shape} are not of the image's shape {img.shape}")
    labels = np.empty(img.shape, dtype=np.int32)
    nfp, start, pix = _detect.label(simg, svar, m, float(threshold), int(min_npix), labels)
    child = np.empty(len(pix), dtype=np.int32)
    nchild = np.empty(nfp, dtype=np.int32)
    peak = np.empty(max(len(pix), 1), dtype=np.intp)
    regions = np.zeros((0, 0), dtype=np.int32)
    if deblend and nfp and m.size and m.any():
        regions = np.empty(img.shape, dtype=np.int32)
        _detect.label(np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32), m, 0.0, 1, regions)
    _detect.deblend(simg, svar, labels, regions, (len(taps) - 1) // 2, start, pix, bool(deblend),
                    float(deblend_nsigma), float(deblend_cont), child, nchild, peak)
    del svar, regions
    nrec_f = np.where(nchild > 1, nchild + 1, 1)
    rec0 = np.r_[0, np.cumsum(nrec_f)[:-1]].astype(np.intp)
    nrec = int(nrec_f.sum())
    fout = np.empty((nrec, 8))
    iout = np.empty((nrec, 4), dtype=np.int64)
    _detect.measure(img, var, m, simg, labels, start, pix, child, nchild, peak, rec0, fwhm / FWHM_PER_SIGMA,
                    CENTROID_MAXITER, CENTROID_TOL, fout, iout)
    cat = np.zeros(nrec, dtype=DETECTION_DTYPE)
    cat["id"] = np.arange(1, nrec + 1)
    for k, name in enumerate(("x", "y", "flux", "flux_err", "xx", "yy", "xy", "peak_value")):
        cat[name] = fout[:, k]
    for k, name in enumerate(("x_peak", "y_peak", "npix", "flags")):
        cat[name] = iout[:, k]
    split = nchild > 1
    parents = rec0[split]
    cat["flags"][parents] |= FLAG_DEBLENDED
    cat["parent"] = np.repeat(np.where(split, rec0 + 1, 0), nrec_f)
    cat["parent"][parents] = 0
    cat["flags"][cat["flux"] <= 0] |= FLAG_NEGATIVE
    return cat, labels
