"""PSF-matched image subtraction of two images on the same pixel grid (docs/diffim.md).

Alard & Lupton (1998): the sharper image is convolved with a kernel K fitted so that it matches the other
(the reference), K a linear combination of Gaussians times polynomials whose coefficients vary as
polynomials of the position, plus a differential background polynomial. The photometric scaling is the
kernel sum: the first basis image sums to 1 and the others to 0, so the sum is one coefficient, kept
constant across the image unless `kernel_sum_order` > 0. The fit is linear least squares over stamps
around the caller's kernel candidates (bright isolated stars from its own source table), each stamp with
the kernel of its centre, weighted by the difference's variance. The convolved image's own noise enters
the design matrix (errors in variables): its expected contribution to the normal equations is subtracted,
and a small ridge on the zero-sum coefficients damps the directions that no star constrains. Candidates
whose stamp chi^2 per pixel is an outlier are rejected and the fit repeated.

Direction: never deconvolve. With `direction = 'auto'` the image with the smaller PSF (FWHM given by the
caller or measured from the candidates' adaptive second moments) is convolved: the template (difference =
science - template * K - background) or, when the science image is the sharper, the science image
(difference = (science * K + background - template) / kernel sum). Either way the difference is in the
science image's units and a source that brightened is positive. With `preconvolve` (Reiss & Lupton 2016)
and direction 'auto' or 'science', the science image is first convolved with its own PSF whenever that
makes it the broader one (2 FWHM_science^2 > FWHM_template^2), and the template is matched to that: the
result is a matched-filtered difference (PSF: the science PSF convolved with itself; a detection image, its
noise correlated, not decorrelated). The kernel then always has a width of the order of the PSF's, which
the Gaussian basis represents well even when the two PSFs are nearly equal, where a direct match needs a
kernel close to a delta function.

Convolution: every raw basis image is separable (f_j(dv) f_i(du)), so the kernel at (x, y) is a sum of
separable pairs with coefficients that are polynomials of the scaled position. The private kernel
twinkles_hpc._diffim x-passes each input row with every x function (its taps limited to the function's
support), folds the y dependence of the coefficients into per-row y filters, one per power of x, and adds
each y-passed row times its power of x: the kernel is exact at every pixel, not constant over cells. It
works in column strips whose x-passed rows stay in cache, 16 pixels at a time in vector registers (32 where
the build targets AVX-512).
Variance: V * K^2, with the amplitude sum K(x, y)^2 exact per pixel (a polynomial of twice the order) and
the shape of K^2 that of the centre (its truncated SVD). Mask: each output pixel ORs the bits of the input
pixels under the centre kernel's footprint (|K| >= mask_weight max |K|). The border the kernel cannot
reach (half its side) is NaN with NO_DATA | EDGE.

Decorrelation (Kaiser 2004; Reiss & Lupton 2016): the convolution correlates the difference's noise. With
the two images' typical (median) variances s_r^2 (reference, not convolved) and s_c^2 (convolved) and the
centre kernel's transform k(f), sum k(0), the difference is filtered by
phi(f) = sqrt((s_r^2 + k(0)^2 s_c^2) / (s_r^2 + s_c^2 |k(f)|^2)), which makes noise of those variances white
(flux is kept: phi(0) = 1). phi is applied in real space as its stamp (twice the kernel's side) in
truncated-SVD form, with the convolution above. The difference's PSF is the matched PSF convolved with
phi, and its variance plane alpha V_reference + beta V_convolved, alpha = sum phi^2,
beta = sum (phi * K)^2 / sum K^2: right per pixel where the variances are locally constant over phi's few
pixels.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from twinkles_hpc.level2.masks import EDGE as MASK_EDGE
from twinkles_hpc.level2.masks import NO_DATA as MASK_NO_DATA
from twinkles_hpc.timedomain.convolve import (_coeff_grid, _convolve_stamp, _monomials, _poly_op, _typical_variance,
                                              apply_stamp_padded, convolve_image, decorrelate, decorrelation_kernel,
                                              difference, finish_difference, padded_plane)
from twinkles_hpc.timedomain.kernel import (DEFAULT_BAD_MASK_BITS, FWHM_PER_SIGMA, DiffimConfig, KernelSolution,
                                            _round_robin, fit_kernel, gaussian_psf, make_basis, measure_psf_moments,
                                            moments_fwhm)

#: The PSF widths (FWHM from adaptive moments, their median) are measured on this many candidates, spread
#: over the image like the fitted ones.
PSF_MOMENT_STARS = 100

#: The public API: the subtraction here, its steps in timedomain/kernel.py and timedomain/convolve.py.
__all__ = ["DiffimConfig", "DiffimResult", "FWHM_PER_SIGMA", "KernelSolution", "convolve_image", "decorrelate",
           "decorrelation_kernel", "fit_kernel", "gaussian_psf", "make_basis", "measure_psf_moments",
           "moments_fwhm", "subtract_images"]

# ------------------------------------------------------------------------------------------- subtraction
@dataclass
class DiffimResult:
    """A difference image in the science image's units (science - matched template: a source that
    brightened is positive), its per-pixel variance and mask (float32, float32, uint16), the difference's
    PSF (normalised float32 stamp), the kernel solution and a summary: n_candidates, n_usable, n_used,
    n_rejected, chi2_dof, kernel_sum (at the centre), direction ('template' or 'science': the image
    convolved; 'preconvolved'), spatial_order, background (at the centre), fwhm_science, fwhm_template,
    ..."""
    image: np.ndarray
    variance: np.ndarray
    mask: np.ndarray
    psf: np.ndarray
    kernel: KernelSolution
    summary: dict


def _check_plane(name, a, shape):
    a = np.asarray(a)
    if a.shape != shape:
        raise ValueError(f"{name} has shape {a.shape}, the science image {shape}")
    return a


def subtract_images(science, template, x, y, *, science_variance, template_variance, science_mask=None,
                    template_mask=None, science_fwhm=None, template_fwhm=None, science_psf=None, config=None,
                    bad_mask_bits=DEFAULT_BAD_MASK_BITS, edge_bit=MASK_EDGE, no_data_bit=MASK_NO_DATA):
    """PSF-matched difference science - template of two background-subtracted images on one pixel grid.

    x, y: kernel candidates (pixels; bright isolated stars from the caller's own catalogue). science_fwhm,
    template_fwhm (pixels): the PSF widths; measured from the candidates' adaptive moments when None.
    science_psf: the science PSF as a centred odd stamp; an elliptical Gaussian of the candidates' median
    moments when None. Returns a DiffimResult."""
    cfg = config or DiffimConfig()
    science = np.asarray(science)
    if science.ndim != 2:
        raise ValueError(f"the science image must be 2-D, got shape {science.shape}")
    shape = science.shape
    template = _check_plane("the template image", template, shape)
    science_variance = _check_plane("science_variance", science_variance, shape)
    template_variance = _check_plane("template_variance", template_variance, shape)
    if science_mask is not None:
        science_mask = _check_plane("science_mask", science_mask, shape)
    if template_mask is not None:
        template_mask = _check_plane("template_mask", template_mask, shape)
    for name, a in (("science image", science), ("template image", template),
                    ("science variance", science_variance), ("template variance", template_variance)):
        if not (np.isfinite(a[::61, ::61]).any() or np.isfinite(a).any()):     # a sparse look first
            raise ValueError(f"the {name} has no finite pixel")
    x, y = np.atleast_1d(np.asarray(x, np.float64)), np.atleast_1d(np.asarray(y, np.float64))
    if x.ndim != 1 or x.shape != y.shape:
        raise ValueError(f"candidate x and y must be 1-D of one length, got {x.shape} and {y.shape}")
    if x.size == 0:
        raise ValueError("no kernel candidates given")
    n_psf = min(cfg.max_candidates or x.size, PSF_MOMENT_STARS)  # the PSF is measured on a spread subset
    sub = np.sort(_round_robin(np.rint(np.nan_to_num(x)).astype(np.int64), np.rint(np.nan_to_num(y)).astype(np.int64),
                               shape, n_psf)[:n_psf])
    mx, my = x[sub], y[sub]
    mom_s, n_s = measure_psf_moments(science, mx, my, mask=science_mask, bad_mask_bits=bad_mask_bits)
    fw = {}
    for name, given, img, msk, mom in (("science", science_fwhm, science, science_mask, mom_s),
                                       ("template", template_fwhm, template, template_mask, None)):
        if given is not None:
            if not (np.isfinite(given) and given > 0):
                raise ValueError(f"{name}_fwhm must be a positive number of pixels, got {given!r}")
            fw[name] = float(given)
            continue
        if mom is None:
            mom, _ = measure_psf_moments(img, mx, my, mask=msk, bad_mask_bits=bad_mask_bits)
        if not np.isfinite(mom[0]):
            raise ValueError(f"cannot measure the {name} PSF from the candidates (no adaptive moments); "
                             f"give {name}_fwhm")
        fw[name] = moments_fwhm(*mom)
    direction = cfg.direction
    pre = cfg.preconvolve and direction != "template" and 2.0 * fw["science"] ** 2 > fw["template"] ** 2
    if direction == "auto":
        direction = "science" if pre or fw["template"] > fw["science"] else "template"
    if science_psf is None:
        if not np.isfinite(mom_s[0]):
            raise ValueError("cannot measure the science PSF from the candidates; give science_psf")
        science_psf = gaussian_psf(*mom_s)
    science_psf = np.asarray(science_psf, np.float64)
    if science_psf.ndim != 2 or science_psf.shape[0] % 2 == 0 or science_psf.shape[1] != science_psf.shape[0]:
        raise ValueError(f"science_psf must be a square stamp of odd side, got shape {science_psf.shape}")
    if pre:     # Reiss & Lupton: the science image convolved with its own PSF is broader than the template
        direction = "preconvolved"
        science, science_variance, science_mask, _ = convolve_image(
            science, science_variance, science_mask, science_psf, mask_weight=cfg.mask_weight, edge_bit=edge_bit,
            no_data_bit=no_data_bit)
    if direction in ("template", "preconvolved"):
        conv, cvar, cmask, fconv = template, template_variance, template_mask, fw["template"]
        ref, rvar, rmask = science, science_variance, science_mask
        fref = fw["science"] * (math.sqrt(2.0) if direction == "preconvolved" else 1.0)
    else:
        conv, cvar, cmask, fconv = science, science_variance, science_mask, fw["science"]
        ref, rvar, rmask, fref = template, template_variance, template_mask, fw["template"]
    sol = fit_kernel(conv, ref, x, y, variance=cvar, reference_variance=rvar, mask=cmask, reference_mask=rmask,
                     fwhm=fconv, reference_fwhm=fref, config=cfg, bad_mask_bits=bad_mask_bits)
    cimg, cv, cm, n_sep = convolve_image(conv, cvar, cmask, sol, mask_weight=cfg.mask_weight,
                                         edge_bit=edge_bit, no_data_bit=no_data_bit)
    mono = _monomials(sol.order)
    bg = _coeff_grid(sol.coeffs[-1], mono)
    ksum = _coeff_grid(sol.coeffs[0], mono)
    vr = np.asarray(rvar, np.float32)
    mask = cm if rmask is None else cm | np.asarray(rmask, np.uint16)
    h = sol.basis.half
    decorrelated = cfg.decorrelate and direction != "preconvolved"
    # the difference goes straight into the plane the decorrelation pads (by phi's half-side, 2 h)
    diff = padded_plane(shape, 2 * h) if decorrelated else np.empty(shape, np.float32)
    if direction != "science":                                   # science - template * K - background
        invalid = difference(ref, cimg, vr, cv, mask, diff, add=-bg, no_data_bit=no_data_bit)
    else:                                                        # (science * K + background - template) / sum K
        vr = vr.copy()
        for plane in (vr, cv, vr, cv):                           # variances / (sum K)^2
            _poly_op(plane, ksum, 2)
        invalid = difference(cimg, ref, vr, cv, mask, diff, add=bg, div=ksum, no_data_bit=no_data_bit)
    kc = sol.kernel_image((shape[1] - 1) / 2, (shape[0] - 1) / 2)
    s_r, s_c = _typical_variance(rvar, invalid), _typical_variance(cvar, invalid)
    if direction == "template":
        matched = science_psf
    elif direction == "science":
        matched = _convolve_stamp(science_psf, kc / kc.sum(), science_psf.shape[0] // 2 + h)
    else:
        matched = _convolve_stamp(science_psf, science_psf, science_psf.shape[0] - 1)
    if decorrelated:
        phi, alpha, beta = decorrelation_kernel(kc, s_r, s_c, half=2 * h)
        diff = apply_stamp_padded(diff, phi)
        psf = _convolve_stamp(matched, phi, matched.shape[0] // 2 + h)
    else:
        alpha = beta = 1.0
        psf = matched
    diff, variance = finish_difference(diff, vr, cv, alpha, beta, invalid)
    psf = (psf / psf.sum()).astype(np.float32)
    summary = dict(sol.summary, direction=direction, fwhm_science=fw["science"], fwhm_template=fw["template"],
                   n_convolution_terms=n_sep, decorrelated=bool(decorrelated),
                   variance_reference=s_r,
                   variance_convolved=s_c)
    return DiffimResult(diff, variance, mask, psf, sol, summary)


