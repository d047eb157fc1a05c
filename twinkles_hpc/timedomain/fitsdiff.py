"""`twinkles-hpc diffim SCIENCE.fits TEMPLATE.fits -o DIFF.fits`: the PSF-matched difference of any two FITS
images with a celestial WCS (docs/diffim.md, "Command line", for the reasons and the measurements); the
subtraction itself is timedomain/diffim.py.

Inputs. The image is the primary HDU, or the first image extension when the primary has no data (never one
named VARIANCE, MASK or PSF): 2-D, in ADU (any linear unit), with a celestial WCS in its header (SIP too).
- Mask (uint16, level2/masks.py bits): the extension MASK (integers, same shape), else zeros; non-finite
  pixels and non-finite or negative variances get NO_DATA; pixels >= the header's SATURATE (if any) get SAT.
- Variance (ADU^2): the extension VARIANCE (same shape), else max(L, 0) / GAIN + (RDNOISE / GAIN)^2, GAIN
  (e-/ADU, default 1) and RDNOISE, else READNOIS (e-, default 0) from the header, L the level before
  background subtraction: the pixel's value inside source footprints (level2.detect, 5 sigma, 3.5 px
  filter, on the image less a first background), the background model elsewhere (sky pixels' own noisy
  values would bias the kernel fit's differential background by -1/GAIN ADU). SVARRAT, TVARRAT record the
  background's measured noise^2 over the variance plane's median; off by more than VARIANCE_RATIO_WARN,
  a warning (a wrong GAIN, or an image already sky-subtracted, which the model takes for read noise only).

Steps.
1. Background: level2.background (mesh 128 px) without SAT, NO_DATA and BAD pixels, then again without the
   source footprints (grown by SOURCE_GROW px) either; subtracted. What differs between the two images'
   backgrounds is fitted with the kernel (its differential background).
2. Overlap: the template's outline mapped onto the science pixels (warp.source_bbox), clipped to the image;
   the template warped onto that box only (level2.warp.warp_image, Lanczos-3), the box trimmed to its
   covered rows and columns. The rest works on the box; science pixels outside it are NaN, NO_DATA.
3. Kernel candidates (kernel_candidates), on the science image: detections at 5 sigma with no detect flag,
   S/N = isophotal flux / flux_err > `min_snr` (50), no other detection within `isolation` px (15), no SAT,
   CR, EDGE, NO_DATA or BAD pixel on either image within max(5, 2 FWHM) px; brightest first.
4. Spatial order: the one given, or (auto_order) the highest up to DiffimConfig's (2) with
   CANDIDATES_PER_TERM candidates per term at least the fit's margin from the box's border.
5. timedomain.diffim.subtract_images on the box; FWHMs from the candidates' adaptive moments. The template's
   variance is the warp's per pixel (J^2 sum w^2 V) when the template is the reference (direction
   science), and the variance warped as an image (J sum w V, warp_area_variance) when it is convolved
   (direction template): the warp moved part of the per-pixel variance into covariance, which the
   convolution sums again.
6. Output, written under a temporary name and renamed (an existing file is replaced only with overwrite):
   primary HDU the difference (float32, science units, a brightening positive) with the science WCS,
   COPY_KEYS of the science header and SUMMARY_KEYS; extensions VARIANCE (float32), MASK (uint16, MASKBITn
   names bit n) with the same WCS, PSF (the difference's PSF stamp, float32, sum 1).

Bad input raises errors.InputError naming the file, the field and what was expected.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
import warnings
from dataclasses import dataclass

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS
from scipy import ndimage
from scipy.spatial import cKDTree

from twinkles_hpc.errors import InputError
from twinkles_hpc.level2.background import estimate_background
from twinkles_hpc.level2.detect import detect, leaves
from twinkles_hpc.level2.masks import BAD, NO_DATA, PLANES, SAT
from twinkles_hpc.level2.warp import source_bbox, warp_image
from twinkles_hpc.store.atomic import commit
from twinkles_hpc.timedomain.diffim import (DiffimConfig, make_basis, measure_psf_moments, moments_fwhm,
                                            subtract_images)
from twinkles_hpc.timedomain.kernel import DEFAULT_BAD_MASK_BITS, STAMP_HALF_KERNELS

#: Kernel candidates: detection threshold (sigma), first matched-filter FWHM (px), the re-detection when the
#: measured FWHM differs from it by more than this factor, the core that must be clean (px: max(CLEAR_MIN,
#: CLEAR_FWHM x FWHM)).
DETECT_THRESHOLD, DETECT_FWHM0, REDETECT_FACTOR = 5.0, 3.5, 1.3
CLEAR_MIN, CLEAR_FWHM = 5, 2.0
#: PSF FWHMs are the median adaptive moments of at most this many stars.
MOMENTS_MAX = 200
DEFAULT_MIN_SNR, DEFAULT_ISOLATION = 50.0, 15.0
SOURCE_GROW = 3
#: Automatic spatial order: the highest order <= DiffimConfig's default with this many kernel candidates per
#: spatial term inside the fit's margin (a polynomial fitted on fewer stars errs near the image's edges).
CANDIDATES_PER_TERM = 5
#: Warn when the background's measured noise^2 over the variance plane's median is outside [1/x, x].
VARIANCE_RATIO_WARN = 1.5
#: Extension names that are planes of an image, never the image itself.
PLANE_NAMES = ("VARIANCE", "MASK", "PSF")
#: Keys copied from the science header to the difference's primary header when present.
COPY_KEYS = ("OBJECT", "DATE-OBS", "MJD-OBS", "EXPTIME", "FILTER", "BAND", "BUNIT", "GAIN")
#: Output summary keys: FITS key -> (summary key, comment).
SUMMARY_KEYS = {
    "DIFFDIR": ("direction", "image convolved"),
    "NCAND": ("n_candidates", "kernel candidates selected"),
    "NCANDFIT": ("n_fitted", "candidates fitted"),
    "NCANDUSE": ("n_used", "candidates used after clipping"),
    "CHI2DOF": ("chi2_dof", "kernel fit chi^2 / dof"),
    "KSUM": ("kernel_sum", "kernel sum (photometric scaling) at the centre"),
    "KSIZE": ("kernel_size", "kernel side, pixels"),
    "SPORDER": ("spatial_order", "spatial order of the kernel"),
    "BKGDIFF": ("background", "differential background at the centre"),
    "FWHMSCI": ("fwhm_science", "science PSF FWHM, pixels"),
    "FWHMTPL": ("fwhm_template", "template PSF FWHM, pixels"),
    "DECORR": ("decorrelated", "difference noise decorrelated"),
    "SVARRAT": ("science_variance_ratio", "science sky noise^2 / median variance"),
    "TVARRAT": ("template_variance_ratio", "template sky noise^2 / median variance"),
}


@dataclass
class InputImage:
    """One input file, background subtracted: image and variance (float32; NaN where NO_DATA), mask."""
    path: str
    image: np.ndarray
    variance: np.ndarray
    mask: np.ndarray
    wcs: WCS
    header: fits.Header
    variance_from: str
    background: float
    variance_ratio: float


# ---------------------------------------------------------------------------------------------- reading
def _header_number(path, header, keys, default, positive):
    for key in keys:
        if key in header:
            value = header[key]
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            if not ok or (value <= 0 if positive else value < 0):
                raise InputError(path, f"header {key}", "a number > 0" if positive else "a number >= 0", value)
            return float(value)
    return float(default)


def _image_hdu(path, hdul):
    for hdu in hdul:
        if not isinstance(hdu, (fits.PrimaryHDU, fits.ImageHDU, fits.CompImageHDU)):
            continue
        if hdu.name.upper() in PLANE_NAMES or hdu.header.get("NAXIS", 0) == 0:
            continue
        return hdu
    raise InputError(path, "image", "a 2-D image in the primary or the first image HDU", "no image HDU")


def _plane_hdu(hdul, name, image_hdu):
    for hdu in hdul:
        if hdu is not image_hdu and hdu.name.upper() == name and hdu.data is not None:
            return hdu
    return None


def _celestial_wcs(path, header, hdul):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            wcs = WCS(header, hdul)
            if wcs.naxis != 2:
                wcs = wcs.celestial
            ok = wcs.has_celestial and wcs.naxis == 2
            if ok:
                ra, dec = wcs.all_pix2world([0.0], [0.0], 0)
                ok = bool(np.isfinite(ra).all() and np.isfinite(dec).all())
    except Exception as exc:            # astropy raises many kinds for a malformed WCS
        raise InputError(path, "WCS", "a valid celestial WCS in the image header", str(exc).splitlines()[0]) from None
    if not ok:
        raise InputError(path, "WCS", "a celestial WCS in the image header (CTYPE1/2 RA---TAN, DEC--TAN, ...)")
    return wcs


def read_image(path, *, background_config=None):
    """Read, mask and background-subtract one input file (module docstring). Returns an InputImage."""
    path = str(path)
    if not os.path.isfile(path):
        raise InputError(path, "file", "an existing FITS file", "a directory" if os.path.isdir(path) else "not found")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with fits.open(path, memmap=False) as hdul:
                hdu = _image_hdu(path, hdul)
                raw = np.asarray(hdu.data)
                header = hdu.header.copy()
                wcs = _celestial_wcs(path, header, hdul)
                vhdu, mhdu = _plane_hdu(hdul, "VARIANCE", hdu), _plane_hdu(hdul, "MASK", hdu)
                var_ext = None if vhdu is None else np.asarray(vhdu.data)
                mask_ext = None if mhdu is None else np.asarray(mhdu.data)
    except InputError:
        raise
    except (OSError, ValueError, TypeError, IndexError, KeyError, EOFError) as exc:
        why = str(exc).splitlines()[0].split(". ")[0] if str(exc) else type(exc).__name__
        raise InputError(path, "file", "a FITS file", why) from None
    if raw.ndim != 2 or raw.dtype.kind not in "uif" or min(raw.shape) < 1:
        raise InputError(path, "image", "a 2-D numeric image in the primary or the first image HDU",
                         f"{raw.dtype} array of shape {raw.shape}")
    raw = raw.astype(np.float32)
    finite = np.isfinite(raw)
    mask = np.zeros(raw.shape, np.uint16)
    if mask_ext is not None:
        if mask_ext.shape != raw.shape or mask_ext.dtype.kind not in "ui":
            raise InputError(path, "MASK", f"an integer plane of the image's shape {raw.shape}",
                             f"{mask_ext.dtype} array of shape {mask_ext.shape}")
        if mask_ext.size and (mask_ext.min() < 0 or mask_ext.max() > 0xFFFF):
            raise InputError(path, "MASK", "bits that fit in uint16 (level2/masks.py)",
                             f"values {mask_ext.min()}..{mask_ext.max()}")
        mask |= mask_ext.astype(np.uint16)
    gain = _header_number(path, header, ("GAIN",), 1.0, positive=True)
    read_noise = _header_number(path, header, ("RDNOISE", "READNOIS"), 0.0, positive=False)
    if "SATURATE" in header:
        sat = _header_number(path, header, ("SATURATE",), 0.0, positive=True)
        mask[finite & (raw >= sat)] |= SAT
    if var_ext is not None:
        if var_ext.shape != raw.shape or var_ext.dtype.kind not in "uif":
            raise InputError(path, "VARIANCE", f"a numeric plane of the image's shape {raw.shape}",
                             f"{var_ext.dtype} array of shape {var_ext.shape}")
        variance = var_ext.astype(np.float32)
        variance_from = "VARIANCE extension"
    else:
        variance = (np.maximum(np.where(finite, raw, 0.0), 0.0) / gain + (read_noise / gain) ** 2).astype(np.float32)
        variance_from = f"GAIN {gain:g}, read noise {read_noise:g} e-"
    with np.errstate(invalid="ignore"):
        nodata = ~finite | ~np.isfinite(variance) | (variance < 0)
    mask[nodata] |= NO_DATA
    if nodata.all():
        raise InputError(path, "image", "finite pixels with a finite variance >= 0", "none")
    clean = np.where(nodata, np.float32(0), raw)
    excluded = (mask & (SAT | NO_DATA | BAD)) != 0
    try:
        bg = estimate_background(clean, mask=excluded, config=background_config)
        _, labels = detect(np.where(excluded, np.float32(0), clean - bg.image(raw.shape)),
                           np.where(excluded, np.float32(0), variance), threshold=DETECT_THRESHOLD,
                           kernel_fwhm_px=DETECT_FWHM0, mask=excluded, deblend=False)
        sources = ndimage.binary_dilation(labels > 0, iterations=SOURCE_GROW)
        bg = estimate_background(clean, mask=excluded | sources, config=background_config)
    except ValueError as exc:
        raise InputError(path, "image", "enough unmasked pixels to estimate the background", str(exc)) from None
    background = bg.image(raw.shape)
    image = clean - background
    if var_ext is None:           # the pixel's own value only where there is a source: no noise in the weights
        level = np.where(labels > 0, clean, background)
        variance = (np.maximum(level, 0.0) / gain + (read_noise / gain) ** 2).astype(np.float32)
    image[nodata] = np.nan
    variance[nodata] = np.nan
    sky = (mask & DEFAULT_BAD_MASK_BITS) == 0
    med_var = float(np.median(variance[sky][::7])) if sky.any() else math.nan
    ratio = bg.global_rms ** 2 / med_var if med_var > 0 else math.nan
    return InputImage(path, image, variance, mask, wcs, header, variance_from, bg.global_level, ratio)


# ------------------------------------------------------------------------------------------ warp, overlap
def overlap_box(science, template):
    """Box (x0, y0, nx, ny) of the science pixels the template's outline maps onto; None if none."""
    ny, nx = template.image.shape
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return source_bbox(science.wcs, template.wcs, (0, 0, nx, ny), science.image.shape, margin=0)
    except Exception:                   # a map that fails (e.g. the other hemisphere) has no overlap
        return None


def warp_template(science, template):
    """The template warped onto the science pixels it covers: (box, image, variance, mask), the box trimmed to
    the covered rows and columns; raises InputError when nothing overlaps."""
    box = overlap_box(science, template)
    planes = None
    if box is not None:
        nodata = (template.mask & NO_DATA) != 0
        img = np.where(nodata, np.float32(0), template.image)
        var = np.where(nodata, np.float32(0), template.variance)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            planes = warp_image(img, var, template.mask, template.wcs, science.wcs, box, kernel="lanczos3")
    if planes is None or not planes[3].any():
        raise InputError(template.path, "WCS", f"a footprint that overlaps the science image {science.path}",
                         "no overlap")
    image, variance, mask, covered = planes
    rows, cols = np.flatnonzero(covered.any(1)), np.flatnonzero(covered.any(0))
    sl = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    box = (box[0] + cols[0], box[1] + rows[0], cols[-1] + 1 - cols[0], rows[-1] + 1 - rows[0])
    return box, image[sl], variance[sl], mask[sl]


def warp_area_variance(science, template, box):
    """The template's variance plane warped as an image onto `box` (Lanczos-3 weights w, times the area
    ratio J: J sum w V): the variance of white noise with the template's noise per unit area. The warp
    moves part of the per-pixel variance into covariance (J^2 sum w^2 V per pixel, ~0.6 V at a half-pixel
    shift); convolved with a matching kernel broader than the warp's, the template's noise has the variance
    this plane gives (docs/diffim.md, "Command line")."""
    var = np.where((template.mask & NO_DATA) != 0, np.float32(0), template.variance)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return warp_image(var, None, None, template.wcs, science.wcs, box, kernel="lanczos3")[0]


# ------------------------------------------------------------------------------------------- candidates
def _detect(image, variance, bad, fwhm):
    cat, _ = detect(np.where(bad, np.float32(0), image), np.where(bad, np.float32(0), variance),
                    threshold=DETECT_THRESHOLD, kernel_fwhm_px=fwhm, mask=bad)
    return cat[leaves(cat)]


def kernel_candidates(image, variance, mask, template_image, template_mask, *, min_snr=DEFAULT_MIN_SNR,
                      isolation=DEFAULT_ISOLATION):
    """Kernel candidates on one pixel grid (module docstring, step 3): x, y (brightest first) and a dict with
    n_detected, n_bright, n_isolated and fwhm (px, the matched filter's)."""
    bad = (mask & DEFAULT_BAD_MASK_BITS) != 0
    fwhm = DETECT_FWHM0
    for attempt in range(2):
        lv = _detect(image, variance, bad, fwhm)
        bright = lv[(lv["flags"] == 0) & (lv["flux"] > min_snr * lv["flux_err"])]
        measured = psf_fwhm(np.where(bad, 0, image), mask, bright["x"], bright["y"]) if len(bright) else math.nan
        if attempt or not (math.isfinite(measured) and 0.5 <= measured <= 100) or \
                1 / REDETECT_FACTOR <= measured / fwhm <= REDETECT_FACTOR:
            break
        fwhm = measured                  # detect again with the matched filter of the measured PSF
    info = dict(n_detected=int(len(lv)), n_bright=int(len(bright)), n_isolated=0, fwhm=float(fwhm))
    if len(bright) == 0:
        return np.zeros(0), np.zeros(0), info
    if len(lv) > 1:
        d, _ = cKDTree(np.column_stack([lv["x"], lv["y"]])).query(np.column_stack([bright["x"], bright["y"]]), k=2)
        bright = bright[d[:, 1] > isolation]
    info["n_isolated"] = int(len(bright))
    r = max(CLEAR_MIN, int(math.ceil(CLEAR_FWHM * (measured if math.isfinite(measured) else fwhm))))
    unclean = bad | ((template_mask & DEFAULT_BAD_MASK_BITS) != 0) | ~np.isfinite(template_image)
    unclean = ndimage.maximum_filter(unclean, size=2 * r + 1, mode="constant", cval=True)
    ix = np.clip(np.rint(bright["x"]).astype(np.int64), 0, image.shape[1] - 1)
    iy = np.clip(np.rint(bright["y"]).astype(np.int64), 0, image.shape[0] - 1)
    good = bright[~unclean[iy, ix]]
    good = good[np.argsort(-good["flux"], kind="stable")]
    return np.asarray(good["x"], np.float64), np.asarray(good["y"], np.float64), info


def _n_terms(order):
    return (order + 1) * (order + 2) // 2


def psf_fwhm(image, mask, x, y):
    """FWHM (px) of the median adaptive moments at (x, y), at most MOMENTS_MAX of them evenly spread through
    the list; NaN if none could be measured."""
    pick = np.unique(np.linspace(0, len(x) - 1, min(len(x), MOMENTS_MAX)).astype(np.int64)) if len(x) else []
    mom, n = measure_psf_moments(image, np.asarray(x)[pick], np.asarray(y)[pick], mask=mask)
    return moments_fwhm(*mom) if n else math.nan


def fit_margin(fwhm_science, fwhm_template, config):
    """Distance (px) from the border a candidate needs to be fitted: the stamp half-side plus the kernel's
    (timedomain/kernel.py fit_kernel), with the kernel that `config` would build for these FWHMs."""
    if config.direction == "science" or (config.direction == "auto" and fwhm_science < fwhm_template):
        conv, ref = fwhm_science, fwhm_template
    else:
        conv, ref = fwhm_template, fwhm_science
    half = make_basis(conv, ref, config).half
    return (config.stamp_half or STAMP_HALF_KERNELS * half) + half


def auto_spatial_order(n_inside, config):
    """The highest spatial order <= config.spatial_order with CANDIDATES_PER_TERM candidates per term."""
    for order in range(config.spatial_order, 0, -1):
        if n_inside >= CANDIDATES_PER_TERM * _n_terms(order):
            return order
    return 0


def min_candidates(config):
    """The fewest usable candidates the kernel fit accepts (timedomain/kernel.py fit_kernel)."""
    return config.min_candidates or max(4, 2 * max(_n_terms(config.spatial_order), _n_terms(config.kernel_sum_order),
                                                   _n_terms(config.background_order)))


# ------------------------------------------------------------------------------------------------ output
def _card_value(v):
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return float(v) if math.isfinite(v) else "nan"
    return str(v)


def check_output(path, overwrite):
    """Refuse an output that exists (without overwrite) or whose directory does not."""
    path = str(path)
    if os.path.isdir(path):
        raise InputError(path, "-o", "a FITS file name", "a directory")
    if os.path.lexists(path) and not overwrite:
        raise InputError(path, "-o", "a file that does not exist yet (or --overwrite)", "it exists")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise InputError(path, "-o", "a file in an existing directory", f"no directory {parent}")


def write_difference(path, image, variance, mask, psf, header, wcs_header, *, overwrite=False):
    """Write the four HDUs under a temporary name in the output's directory, then rename it into place
    (without overwrite: a hard link, which fails if the file appeared meanwhile)."""
    mask_header = wcs_header.copy()
    for name, bit in PLANES.items():
        mask_header[f"MASKBIT{bit.bit_length() - 1}"] = (name, "mask plane of this bit (level2/masks.py)")
    hdul = fits.HDUList([fits.PrimaryHDU(image.astype(np.float32), header),
                         fits.ImageHDU(variance.astype(np.float32), wcs_header.copy(), name="VARIANCE"),
                         fits.ImageHDU(mask.astype(np.uint16), mask_header, name="MASK"),
                         fits.ImageHDU(psf.astype(np.float32), name="PSF")])
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        hdul.writeto(tmp, overwrite=True)
        if overwrite:
            commit(tmp, path)
            return
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise InputError(path, "-o", "a file that does not exist yet (or --overwrite)", "it exists") from None
        except OSError:                 # no hard links on this file system
            if os.path.lexists(path):
                raise InputError(path, "-o", "a file that does not exist yet (or --overwrite)", "it exists") from None
            os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)


# ---------------------------------------------------------------------------------------------- command
def make_config(kernel_size=0, spatial_order=None, direction="auto"):
    """DiffimConfig from the command's options; a bad value names the option (--kernel-size, ...)."""
    kw = dict(kernel_size=int(kernel_size), direction=direction)
    if spatial_order is not None:
        kw["spatial_order"] = int(spatial_order)
    try:
        return DiffimConfig(**kw)
    except InputError as exc:
        raise InputError("diffim", "--" + str(exc.field).replace("_", "-"), exc.expected, exc.got) from None


def difference(science_path, template_path, output, *, config=None, auto_order=True, overwrite=False,
               min_snr=DEFAULT_MIN_SNR, isolation=DEFAULT_ISOLATION):
    """Read both files, match and subtract, write `output` (module docstring). auto_order: config.spatial_order
    is the highest order, lowered to what the candidates support (auto_spatial_order). Returns the summary
    dict of the subtraction plus the inputs' variance sources and ratios, box (the overlap on the science
    grid), n_detected, n_bright, n_isolated, n_inside (candidates inside the fit's margin), warnings (lines
    for the user) and seconds (per step and total)."""
    t = [time.perf_counter()]
    cfg = config or DiffimConfig()
    output = str(output)
    if not (math.isfinite(min_snr) and min_snr > 0):
        raise InputError("diffim", "--min-snr", "a number > 0", min_snr)
    if not (math.isfinite(isolation) and isolation >= 0):
        raise InputError("diffim", "--isolation", "a number of pixels >= 0", isolation)
    check_output(output, overwrite)
    sci = read_image(science_path)
    tpl = read_image(template_path)
    t.append(time.perf_counter())
    box, t_img, t_var, t_mask = warp_template(sci, tpl)
    x0, y0, nx, ny = box
    sl = (slice(y0, y0 + ny), slice(x0, x0 + nx))
    s_img, s_var, s_mask = sci.image[sl], sci.variance[sl], sci.mask[sl]
    t.append(time.perf_counter())
    cx, cy, info = kernel_candidates(s_img, s_var, s_mask, t_img, t_mask, min_snr=min_snr, isolation=isolation)
    fwhm_s, fwhm_t = psf_fwhm(s_img, s_mask, cx, cy), psf_fwhm(t_img, t_mask, cx, cy)
    fwhm_ok = math.isfinite(fwhm_s) and math.isfinite(fwhm_t) and fwhm_s > 0 and fwhm_t > 0
    info["n_inside"] = None
    if fwhm_ok:
        m = fit_margin(fwhm_s, fwhm_t, cfg)
        ix, iy = np.rint(cx), np.rint(cy)
        info["n_inside"] = int(np.count_nonzero((ix >= m) & (ix <= nx - 1 - m) & (iy >= m) & (iy <= ny - 1 - m)))
        if auto_order:
            cfg = dataclasses.replace(cfg, spatial_order=auto_spatial_order(info["n_inside"], cfg))
    need = min_candidates(cfg)
    what = (f"{need} or more stars with S/N > {min_snr:g}, unsaturated, no other detection within {isolation:g} px, "
            f"on both images (spatial order {cfg.spatial_order}; see --spatial-order, --min-snr, --isolation)")
    if cx.size < need:
        raise InputError(sci.path, "kernel candidates", what,
                         f"{cx.size} ({info['n_detected']} detected, {info['n_bright']} bright, "
                         f"{info['n_isolated']} isolated, in the {nx} x {ny} px overlap)")
    direction = cfg.direction
    if direction == "auto" and fwhm_ok:                  # subtract_images' rule, with these FWHMs
        direction = "template" if fwhm_t <= fwhm_s else "science"
    if direction == "template" and fwhm_ok:              # the template is convolved: its noise per area
        t_var = warp_area_variance(sci, tpl, box)
        cfg = dataclasses.replace(cfg, direction=direction)
    t.append(time.perf_counter())
    try:
        res = subtract_images(s_img, t_img, cx, cy, science_variance=s_var, template_variance=t_var,
                              science_mask=s_mask, template_mask=t_mask, science_fwhm=fwhm_s if fwhm_ok else None,
                              template_fwhm=fwhm_t if fwhm_ok else None, config=cfg)
    except ValueError as exc:
        raise InputError(sci.path, "kernel candidates", what, str(exc)) from None
    t.append(time.perf_counter())
    shape = sci.image.shape
    image = np.full(shape, np.nan, np.float32)
    variance = np.full(shape, np.nan, np.float32)
    mask = sci.mask | np.uint16(NO_DATA)
    image[sl], variance[sl], mask[sl] = res.image, res.variance, res.mask
    nodata = (mask & NO_DATA) != 0
    image[nodata] = np.nan
    variance[nodata] = np.nan
    summary = dict(res.summary, n_candidates=int(cx.size), box=tuple(int(v) for v in box),
                   science_variance_from=sci.variance_from, template_variance_from=tpl.variance_from,
                   science_variance_ratio=sci.variance_ratio, template_variance_ratio=tpl.variance_ratio,
                   warnings=_variance_warnings(sci, tpl), **info)
    header, wcs_header = _output_headers(sci, tpl, summary)
    write_difference(output, image, variance, mask, res.psf, header, wcs_header, overwrite=overwrite)
    t.append(time.perf_counter())
    steps = ("read", "warp", "candidates", "subtract", "write")
    summary["seconds"] = dict(zip(steps, np.diff(t).tolist()), total=t[-1] - t[0])
    return summary


def _variance_warnings(*images):
    notes = []
    for img in images:
        r = img.variance_ratio
        if math.isfinite(r) and not 1 / VARIANCE_RATIO_WARN <= r <= VARIANCE_RATIO_WARN:
            notes.append(f"{img.path}: the sky's measured noise^2 is {r:.2f} x the variance plane's median "
                         f"(variance from {img.variance_from}): check GAIN, RDNOISE or the VARIANCE extension")
    return notes


def _output_headers(sci, tpl, summary):
    """The primary header (science WCS, observation keys, SUMMARY_KEYS) and the planes' WCS header."""
    wcs_header = sci.wcs.to_header(relax=True)
    header = wcs_header.copy()
    for key in COPY_KEYS:
        if key in sci.header and key not in header:
            header[key] = sci.header[key]
    header["SCIFILE"] = (os.path.basename(sci.path)[-68:], "science image")
    header["TPLFILE"] = (os.path.basename(tpl.path)[-68:], "template image")
    for key, (name, comment) in SUMMARY_KEYS.items():
        header[key] = (_card_value(summary[name]), comment)
    header["DIFFBOX"] = (" ".join(str(v) for v in summary["box"]), "overlap on the science grid: x0 y0 nx ny")
    header["COMMENT"] = "twinkles-hpc diffim: PSF-matched difference (Alard & Lupton), decorrelated; docs/diffim.md"
    return header, wcs_header
