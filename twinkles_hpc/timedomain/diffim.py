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
science image's units and a source that brightened is positive. With `preconvolve` (Reiss & Lupton 2016),
a science image sharper than the template is instead convolved with its own PSF, which makes it the broader
one, and the template is matched to that: the result is a matched-filtered difference (PSF: the science
PSF convolved with itself; a detection image, its noise correlated, not decorrelated).

Convolution: every raw basis image is separable (f_j(dv) f_i(du)), so the kernel at (x, y) is a sum of
separable pairs with coefficients that are polynomials of the scaled position. The private kernel
twinkles_hpc._diffim passes the image once per x function (its taps limited to the function's support),
folds the y dependence of the coefficients into per-row y filters, one per power of x, and adds each
y-passed row times its power of x: the kernel is exact at every pixel, not constant over cells.
Variance: V * K^2, with the amplitude sum K(x, y)^2 exact per pixel (a polynomial of twice the order) and
the shape of K^2 that of the centre (its truncated SVD). Mask: each output pixel ORs the bits of the input
pixels under the centre kernel's footprint (|K| >= mask_weight max |K|). The border the kernel cannot
reach (half its side) is NaN with NO_DATA | EDGE.

Decorrelation (Kaiser 2004; Reiss & Lupton 2016): the convolution correlates the difference's noise. With
the two images' typical (median) variances s_r^2 (reference, not convolved) and s_c^2 (convolved) and the
centre kernel's transform k(f), sum k(0), the difference is filtered by
phi(f) = sqrt((s_r^2 + k(0)^2 s_c^2) / (s_r^2 + s_c^2 |k(f)|^2)), which makes noise of those variances white
(flux is kept: phi(0) = 1). The difference's PSF is the matched PSF convolved with phi, and its variance
plane alpha V_reference + beta V_convolved, alpha = sum phi^2, beta = sum (phi * K)^2 / sum K^2: right per
pixel where the variances are locally constant over phi's few pixels.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import scipy.fft
import scipy.linalg
from numpy.lib.stride_tricks import sliding_window_view

from twinkles_hpc import _diffim, options
from twinkles_hpc.level2.masks import BAD as MASK_BAD
from twinkles_hpc.level2.masks import CR as MASK_CR
from twinkles_hpc.level2.masks import EDGE as MASK_EDGE
from twinkles_hpc.level2.masks import NO_DATA as MASK_NO_DATA
from twinkles_hpc.level2.masks import SAT as MASK_SAT
from twinkles_hpc.level2.shapes import adaptive_moments
from twinkles_hpc.options import opt

FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))
#: Candidates with any of these bits in their stamp (or the patch convolved into it) are not used.
DEFAULT_BAD_MASK_BITS = MASK_SAT | MASK_CR | MASK_EDGE | MASK_NO_DATA | MASK_BAD
#: Automatic kernel half-side (pixels): max(2 FWHM of the broader PSF, 4 sigma of the widest Gaussian),
#: clipped to this range (kernels of 19 to 31 px).
AUTO_HALF = (9, 15)
#: A Gaussian's polynomial degrees the kernel's taps cannot resolve (QR diagonal below this fraction of the
#: first) are dropped; its functions are zero where all are below SUPPORT_TOL of their peak.
BASIS_TOL, SUPPORT_TOL = 1e-6, 1e-7
#: Relative error allowed in the separable form of the squared kernel (variance propagation) and of a
#: constant kernel stamp (a PSF, for pre-convolution).
VARIANCE_RANK_TOL, STAMP_RANK_TOL = 1e-2, 1e-5
#: Distinct powers of x per x filter the convolution kernel handles (twinkles_hpc._diffim MAX_POWERS).
MAX_POWERS = 8
#: Default fitting stamp half-side, in kernel half-sides (large stamps pin down the differential background);
#: a candidate needs its central (2 CORE_HALF + 1)^2 pixels and MIN_USABLE_FRACTION of its stamp usable.
STAMP_HALF_KERNELS, CORE_HALF, MIN_USABLE_FRACTION = 2, 2, 0.5
#: Stamps per batch in the fit (bounds the temporary arrays).
STAMP_CHUNK = 64


@dataclass
class DiffimConfig:
    """Settings of the PSF-matching fit, the convolution and the decorrelation."""
    kernel_size: int = opt(0, "pixel", "Side of the matching kernel (odd); 0: 2 max(2 FWHM, 4 sigma_widest) + 1 "
                           "from the PSF widths, 19 to 31.", lo=0, hi=61)
    n_gauss: int = opt(3, "", "Gaussians in the kernel basis.", lo=1, hi=6)
    sigma_ratio: float = opt(2.0, "", "Width ratio of successive basis Gaussians; the middle one is the "
                             "PSFs' difference sqrt(sigma_ref^2 - sigma_conv^2).", lo=1.0, lo_open=True, hi=4.0)
    max_degree: int = opt(6, "", "Polynomial degree of the narrowest Gaussian.", lo=0, hi=10)
    degree_step: int = opt(2, "", "Each wider Gaussian has this much lower a degree (6, 4, 2).", lo=0, hi=10)
    min_sigma: float = opt(0.5, "pixel", "Floor of the middle basis width (for near-equal PSFs).", lo=0.1, hi=10.0)
    spatial_order: int = opt(2, "", "Order of the kernel's polynomial variation across the image.", lo=0, hi=4)
    kernel_sum_order: int = opt(0, "", "Order of the photometric scaling's variation (0: constant).", lo=0, hi=4)
    background_order: int = opt(1, "", "Order of the differential background polynomial.", lo=0, hi=4)
    stamp_half: int = opt(0, "pixel", "Half-side of the fitting stamps; 0: twice the kernel's half-side.", lo=0,
                          hi=64)
    clip_sigma: float = opt(3.0, "sigma", "A candidate whose stamp chi^2/pixel exceeds the median by this many "
                            "1.4826 MAD is rejected.", lo=1.0)
    max_iter: int = opt(5, "", "Most fits (weights from the kernel, then clipping until nothing changes).",
                        lo=1, hi=50)
    max_candidates: int = opt(400, "", "Most candidates fitted, spread over the image (0: all).", lo=0)
    min_candidates: int = opt(0, "", "Fewest usable candidates; 0: twice the most spatial terms, at least 4.",
                              lo=0)
    direction: str = opt("auto", "", "Image to convolve: 'auto' (the sharper one), 'template' or 'science'.",
                         choices=("auto", "template", "science"))
    decorrelate: bool = opt(True, "", "Whiten the difference's noise (Reiss & Lupton 2016).")
    preconvolve: bool = opt(False, "", "When the science image is the sharper, convolve it with its own PSF and "
                            "match the template to that (direction 'preconvolved'): a matched-filtered difference "
                            "for detection, not decorrelated.")
    mask_weight: float = opt(0.05, "", "Mask bits spread to where |K| >= mask_weight max |K|.", lo=0.0, hi=1.0)
    noise_correction: bool = opt(True, "", "Subtract the convolved image's noise from the normal equations "
                                 "(errors in variables).")
    kernel_ridge: float = opt(1.0, "", "Penalty on the zero-sum basis coefficients, in units of the chi^2 the "
                              "convolved image's noise alone gives a coefficient (0: none).", lo=0.0)

    def __post_init__(self):
        options.check_section(self)
        if self.kernel_size and self.kernel_size % 2 == 0:
            raise options.InputError(type(self).__name__, "kernel_size", "an odd number or 0", self.kernel_size)

    @property
    def max_order(self):
        return max(self.spatial_order, self.kernel_sum_order, self.background_order)


# ---------------------------------------------------------------------------------------------- basis
@dataclass(frozen=True)
class KernelBasis:
    """The Alard-Lupton basis. Per Gaussian g the 1-D functions f_i(u) = exp(-u^2 / 2 sigma_g^2) p_i(u),
    p_i of degree i, orthonormal on the kernel's taps (QR of the Gaussian times u^i; degrees the taps
    cannot resolve are dropped) and zero where every function of g is below SUPPORT_TOL of its peak; raw
    images f_j(dv) f_i(du) with i + j <= degree of g (the same space as Gaussian x polynomials of total
    degree <= d). `images` = transform @ raw: the first is the middle Gaussian normalised to sum 1, the
    others are raw images less their sum times it, so they sum to 0. Images are indexed
    [dv + half, du + half]."""
    half: int
    sigmas: tuple
    degrees: tuple
    functions: np.ndarray          # (n_functions, 2 half + 1): the 1-D functions at u = -half..half
    support: np.ndarray            # (n_functions, 2): first and last non-zero tap of each function
    groups: tuple                  # the functions of each Gaussian (consecutive indices)
    pairs: np.ndarray              # (n_raw, 2): (x function, y function) of each raw image
    transform: np.ndarray          # (n_basis, n_raw)
    images: np.ndarray             # (n_basis, 2 half + 1, 2 half + 1)

    @property
    def size(self):
        return 2 * self.half + 1


def make_basis(fwhm_convolved, fwhm_reference, config=None):
    """The kernel basis matching a PSF of FWHM `fwhm_convolved` (pixels) to one of `fwhm_reference`."""
    cfg = config or DiffimConfig()
    sc, sr = fwhm_convolved / FWHM_PER_SIGMA, fwhm_reference / FWHM_PER_SIGMA
    mid = max(math.sqrt(max(sr * sr - sc * sc, 0.0)), cfg.min_sigma)
    n = cfg.n_gauss
    sigmas = tuple(mid * cfg.sigma_ratio ** (k - (n - 1) / 2) for k in range(n))
    degrees = tuple(max(cfg.max_degree - k * cfg.degree_step, 0) for k in range(n))
    if cfg.kernel_size:
        half = cfg.kernel_size // 2
    else:
        half = int(np.clip(math.ceil(max(2.0 * max(fwhm_reference, fwhm_convolved), 4.0 * sigmas[-1])), *AUTO_HALF))
    u = np.arange(-half, half + 1, dtype=np.float64)
    functions, groups, pairs, k0 = [], [], [], None
    for g, (s, d) in enumerate(zip(sigmas, degrees)):
        q, r = np.linalg.qr(np.stack([np.exp(-0.5 * (u / s) ** 2) * (u / s) ** i for i in range(d + 1)], axis=1))
        diag = np.abs(np.diag(r))
        m = int(np.argmin(diag > BASIS_TOL * diag[0])) if (diag <= BASIS_TOL * diag[0]).any() else d + 1
        f = (q[:, :m] * np.sign(np.diag(r)[:m])).T
        amp = np.abs(f).max(0)
        f[:, amp < SUPPORT_TOL * amp.max()] = 0.0
        first = len(functions)
        functions += list(f)
        groups.append(tuple(range(first, first + m)))
        for i in range(m):
            for j in range(min(m, d + 1 - i)):
                if g == n // 2 and i == j == 0:
                    k0 = len(pairs)
                pairs.append((first + i, first + j))
    functions, pairs = np.array(functions), np.array(pairs, np.int64)
    nz = functions != 0
    support = np.stack([nz.argmax(1), functions.shape[1] - 1 - nz[:, ::-1].argmax(1)], axis=1)
    raw = np.einsum("ka,kb->kab", functions[pairs[:, 1]], functions[pairs[:, 0]]).reshape(len(pairs), -1)
    sums = raw.sum(1)
    others = np.array([k for k in range(len(pairs)) if k != k0], np.int64)
    transform = np.zeros((len(pairs), len(pairs)))
    transform[0, k0] = 1.0 / sums[k0]
    transform[1 + np.arange(others.size), others] = 1.0
    transform[1:, k0] = -sums[others] / sums[k0]
    images = (transform @ raw).reshape(-1, 2 * half + 1, 2 * half + 1)
    return KernelBasis(half, sigmas, degrees, functions, support, tuple(groups), pairs, transform, images)


def _convolve_stamps(patches, basis):
    """patches (n, P, P) -> (n, S, S, n_basis): the valid part (S = P - 2 half) of patch * B_k, by separable
    passes over the raw basis (per Gaussian: x passes with its functions over their support, then y
    passes), then the basis transform."""
    n, size = patches.shape[0], patches.shape[1]
    h2 = 2 * basis.half
    s = size - h2
    raw = np.empty((basis.pairs.shape[0], n, s, s))           # [k, n, x, y]
    for funcs in basis.groups:
        f = np.asarray(funcs)
        lo, hi = int(basis.support[f, 0].min()), int(basis.support[f, 1].max())
        taps = basis.functions[f, lo:hi + 1][:, ::-1].T       # window index t <-> tap b = hi - t
        span = s + hi - lo
        xs = sliding_window_view(patches[:, :, h2 - hi:h2 - hi + span], hi - lo + 1, axis=2) @ taps   # (n, P, S, i)
        xt = np.ascontiguousarray(xs.transpose(0, 2, 3, 1))                                        # (n, S, i, P)
        block = sliding_window_view(xt[..., h2 - hi:h2 - hi + span], hi - lo + 1, axis=3) @ taps    # (n, x, i, y, j)
        for k in np.flatnonzero(np.isin(basis.pairs[:, 0], f)):
            raw[k] = block[:, :, basis.pairs[k, 0] - f[0], :, basis.pairs[k, 1] - f[0]]
    return np.tensordot(basis.transform, raw, (1, 0)).transpose(1, 3, 2, 0)


# ----------------------------------------------------------------------------------- spatial polynomials
def _monomials(order):
    """Exponents (ex, ey) of the monomials of total degree <= order, by degree: 1, x, y, x^2, x y, y^2, ..."""
    return [(d - j, j) for d in range(order + 1) for j in range(d + 1)]


def _n_terms(order):
    return (order + 1) * (order + 2) // 2


def _scaled(v, n):
    """Pixel coordinate -> [-1, 1] across an axis of n pixels."""
    return (2.0 * np.asarray(v, np.float64) - (n - 1)) / max(n - 1, 1)


def _monomial_values(xs, ys, order):
    return np.stack([xs ** ex * ys ** ey for ex, ey in _monomials(order)], axis=-1)


@dataclass
class KernelSolution:
    """A fitted PSF-matching model on an image of `shape` (ny, nx): coeffs[k, s] multiplies basis image k
    (k < n_basis) or the background (k = n_basis) by monomial s of the scaled position (`_monomials`)."""
    basis: KernelBasis
    coeffs: np.ndarray
    order: int
    shape: tuple
    summary: dict = field(default_factory=dict)

    def _p(self, x, y):
        return _monomial_values(_scaled(x, self.shape[1]), _scaled(y, self.shape[0]), self.order)

    def spatial_kernels(self):
        """(n_terms, size, size): K_s, the kernel at (x, y) being sum_s P_s(x, y) K_s."""
        nb = self.basis.images.shape[0]
        return np.einsum("ks,kab->sab", self.coeffs[:nb], self.basis.images)

    def kernel_image(self, x, y):
        """The kernel at pixel (x, y), indexed [dv + half, du + half]."""
        return np.einsum("s,sab->ab", self._p(float(x), float(y)), self.spatial_kernels())

    def kernel_sum(self, x, y):
        """The photometric scaling (convolved image -> reference) at (x, y)."""
        return self._p(x, y) @ self.coeffs[0]

    def background(self, x, y):
        """The differential background (reference minus convolved image) at (x, y)."""
        return self._p(x, y) @ self.coeffs[-1]


# ----------------------------------------------------------------------------------------- measurement
def measure_psf_moments(image, x, y, *, mask=None, bad_mask_bits=DEFAULT_BAD_MASK_BITS):
    """Median adaptive second moments (ixx, iyy, ixy; px^2) of the sources at (x, y) and how many were
    measured; NaNs and 0 if none could be."""
    usable = np.isfinite(image)
    if mask is not None:
        usable &= (mask & bad_mask_bits) == 0
    ixx, iyy, ixy, flag = adaptive_moments(image, x, y, usable=usable)
    ok = ~flag
    if not ok.any():
        return (math.nan, math.nan, math.nan), 0
    return (float(np.median(ixx[ok])), float(np.median(iyy[ok])), float(np.median(ixy[ok]))), int(ok.sum())


def moments_fwhm(ixx, iyy, ixy):
    """FWHM (pixels) of the Gaussian of the same determinant radius."""
    return FWHM_PER_SIGMA * (ixx * iyy - ixy * ixy) ** 0.25


def gaussian_psf(ixx, iyy, ixy, half=None):
    """A normalised elliptical Gaussian stamp of these moments (px^2), sampled at pixel centres."""
    lam = 0.5 * (ixx + iyy) + math.sqrt(0.25 * (ixx - iyy) ** 2 + ixy * ixy)
    half = max(3, math.ceil(4.0 * math.sqrt(lam))) if half is None else half
    u = np.arange(-half, half + 1, dtype=np.float64)
    det = ixx * iyy - ixy * ixy
    q = (iyy * u[None, :] ** 2 - 2 * ixy * u[None, :] * u[:, None] + ixx * u[:, None] ** 2) / det
    p = np.exp(-0.5 * q)
    return p / p.sum()


# ------------------------------------------------------------------------------------------------- fit
def _stamp_offsets(half):
    return np.arange(-half, half + 1)


def _cut(plane, ix, iy, half):
    """Stamps (n, 2 half + 1, 2 half + 1) of plane centred on integer pixels (all inside)."""
    o = _stamp_offsets(half)
    return plane[(iy[:, None] + o)[:, :, None], (ix[:, None] + o)[:, None, :]]


def _stamps(image, variance, mask, reference, reference_variance, reference_mask, ix, iy, hs, h, bad_mask_bits):
    """Stamps of the candidates at integer pixels (ix, iy): the image's patch (half-side hs + h) and its
    variance, the reference's stamp (half-side hs) and its variance, NaN-free; the patch's usable pixels
    and the stamp's usable pixels (its own, and the whole kernel window of the patch around them)."""
    m = hs + h
    patch = _cut(image, ix, iy, m).astype(np.float64)
    vpatch = _cut(variance, ix, iy, m).astype(np.float64)
    ref = _cut(reference, ix, iy, hs).astype(np.float64)
    vref = _cut(reference_variance, ix, iy, hs).astype(np.float64)
    ok_c = np.isfinite(patch) & np.isfinite(vpatch) & (vpatch > 0)
    ok = np.isfinite(ref) & np.isfinite(vref) & (vref > 0)
    if mask is not None:
        ok_c &= (_cut(mask, ix, iy, m) & bad_mask_bits) == 0
    if reference_mask is not None:
        ok &= (_cut(reference_mask, ix, iy, hs) & bad_mask_bits) == 0
    rows = sliding_window_view(ok_c, 2 * h + 1, axis=2).all(-1)             # erosion by the kernel's box,
    ok &= sliding_window_view(rows, 2 * h + 1, axis=1).all(-1)              # one axis at a time
    return (np.where(ok_c, patch, 0.0), np.where(ok_c, vpatch, 0.0), np.where(ok, ref, 0.0),
            np.where(ok, vref, 1.0), ok)


def _round_robin(ix, iy, shape, n_cells):
    """An order of the candidates that covers the image: a grid of ~n_cells cells, taken round-robin (each
    cell's first candidate in the caller's order, then each cell's second, ...)."""
    g = max(1, int(math.ceil(math.sqrt(n_cells))))
    cell = (np.clip(iy, 0, shape[0] - 1) * g // shape[0]) * g + np.clip(ix, 0, shape[1] - 1) * g // shape[1]
    order = np.argsort(cell, kind="stable")
    first = np.r_[0, np.flatnonzero(np.diff(cell[order])) + 1]
    rank = np.empty(ix.size, np.int64)
    rank[order] = np.arange(ix.size) - np.repeat(first, np.diff(np.r_[first, ix.size]))
    return np.lexsort((np.arange(ix.size), rank))


def fit_kernel(image, reference, x, y, *, variance, reference_variance, mask=None, reference_mask=None,
               basis=None, fwhm=None, reference_fwhm=None, config=None, bad_mask_bits=DEFAULT_BAD_MASK_BITS):
    """Fit reference ~ image * K + background on stamps around the candidates (x, y) (pixels, (0, 0) the
    centre of the first pixel). Give the basis, or the two FWHMs (pixels) to build it. A candidate is
    usable if its stamp and the patch convolved into it lie inside the image, its core is usable and at least
    half its stamp (masked, non-finite or non-positive-variance pixels, and those whose kernel window holds
    one, are left out). Candidates are examined round-robin over a grid of cells (`_round_robin`) until
    `max_candidates` usable ones are found, so the fitted ones cover the image. Returns a KernelSolution
    whose summary has n_candidates, n_examined, n_usable (of those examined), n_fitted, n_used (after
    clipping), n_rejected,
    chi2_dof (over the used stamps, per pixel less the parameters), kernel_sum and background at the
    centre, the basis and the orders."""
    cfg = config or DiffimConfig()
    image, reference = np.asarray(image), np.asarray(reference)
    ny, nx = shape = image.shape
    if basis is None:
        if fwhm is None or reference_fwhm is None:
            raise ValueError("fit_kernel needs a basis or both PSF FWHMs")
        basis = make_basis(fwhm, reference_fwhm, cfg)
    h = basis.half
    hs = cfg.stamp_half or STAMP_HALF_KERNELS * h
    x, y = np.atleast_1d(np.asarray(x, np.float64)), np.atleast_1d(np.asarray(y, np.float64))
    n_cand = x.size
    finite_pos = np.isfinite(x) & np.isfinite(y)
    ix = np.where(finite_pos, np.rint(np.where(finite_pos, x, 0)), -1).astype(np.int64)
    iy = np.where(finite_pos, np.rint(np.where(finite_pos, y, 0)), -1).astype(np.int64)
    m = hs + h
    inside = (ix >= m) & (ix <= nx - 1 - m) & (iy >= m) & (iy <= ny - 1 - m)
    ix, iy = ix[inside], iy[inside]
    planes = (image, variance, mask, reference, reference_variance, reference_mask)
    n_max = cfg.max_candidates or ix.size
    order = _round_robin(ix, iy, shape, n_max)
    ix, iy = ix[order], iy[order]
    good = np.zeros(ix.size, bool)
    c = CORE_HALF
    n_examined = 0
    while n_examined < ix.size and good.sum() < n_max:
        sl = slice(n_examined, n_examined + STAMP_CHUNK)
        ok = _stamps(*planes, ix[sl], iy[sl], hs, h, bad_mask_bits)[-1]
        good[sl] = (ok[:, hs - c:hs + c + 1, hs - c:hs + c + 1].all((1, 2))
                    & (ok.mean((1, 2)) >= MIN_USABLE_FRACTION))
        n_examined += ok.shape[0]
    n_usable = int(good.sum())
    n_terms_max = max(_n_terms(cfg.spatial_order), _n_terms(cfg.kernel_sum_order), _n_terms(cfg.background_order))
    need = cfg.min_candidates or max(4, 2 * n_terms_max)
    if n_usable == 0:
        raise ValueError(f"no usable kernel candidates: of {n_cand} given, {n_cand - int(inside.sum())} are off the "
                         f"image or within {m} px of its border, {int(inside.sum()) - n_usable} have masked, "
                         "non-finite or non-positive-variance pixels in their core or in over half their stamp")
    if n_usable < need:
        raise ValueError(f"too few usable kernel candidates: {n_usable} of {n_cand}, need {need} "
                         f"(spatial_order {cfg.spatial_order}, background_order {cfg.background_order})")
    keep = np.flatnonzero(good)[:n_max]
    keep = keep[np.argsort(order[keep])]                        # the fitted ones in the caller's order
    ix, iy = ix[keep], iy[keep]
    n, s_pix, nb = ix.size, (2 * hs + 1) ** 2, basis.images.shape[0]
    design = np.empty((n, s_pix, nb + 1), np.float32)         # the convolved basis; float32 bounds memory
    ref, vref, vconv = (np.empty((n, s_pix)) for _ in range(3))
    ok = np.empty((n, s_pix), bool)
    for k in range(0, n, STAMP_CHUNK):
        sl = slice(k, k + STAMP_CHUNK)
        pt, vp, rf, vr, okk = _stamps(*planes, ix[sl], iy[sl], hs, h, bad_mask_bits)
        cs = _convolve_stamps(pt, basis)
        design[sl, :, :-1] = cs.reshape(cs.shape[0], s_pix, -1)
        ref[sl], vref[sl], ok[sl] = rf.reshape(-1, s_pix), vr.reshape(-1, s_pix), okk.reshape(-1, s_pix)
        vconv[sl] = vp[:, h:h + 2 * hs + 1, h:h + 2 * hs + 1].reshape(-1, s_pix)
    design[:, :, -1] = 1.0
    n_pix = ok.sum(1)
    order = cfg.max_order
    p = _monomial_values(_scaled(ix, nx), _scaled(iy, ny), order)
    active = np.zeros((nb + 1, _n_terms(order)), bool)
    active[0, :_n_terms(cfg.kernel_sum_order)] = True
    active[1:nb, :_n_terms(cfg.spatial_order)] = True
    active[nb, :_n_terms(cfg.background_order)] = True
    gram = np.zeros((nb + 1, nb + 1))
    gram[:nb, :nb] = np.einsum("kab,lab->kl", basis.images, basis.images)
    k2sum = np.ones(n)                                        # sum K^2 of each stamp's kernel (first: 1)
    used = np.ones(n, bool)
    it = 0
    while True:
        # weights: the difference's variance, V_ref + V sum K^2 (the convolved variance, locally constant)
        w = np.where(ok, 1.0 / (vref + vconv * k2sum[:, None]), 0.0)
        noise = (vconv * w).sum(1)
        ridge = np.zeros(active.shape)
        ridge[1:nb] = cfg.kernel_ridge * float(noise[used].sum())
        a, b = _normal_equations(design, ref, w, noise if cfg.noise_correction else 0.0 * noise, gram)
        coeffs = _solve(a[used], b[used], p[used], active, ridge)
        it += 1
        local = p @ coeffs.T                                               # (n, nb + 1)
        chi2 = np.empty(n)
        for k in range(0, n, STAMP_CHUNK):
            sl = slice(k, k + STAMP_CHUNK)
            resid = ref[sl] - np.einsum("npk,nk->np", design[sl].astype(np.float64), local[sl])
            chi2[sl] = (resid * resid * w[sl]).sum(1)
        kern = np.einsum("nk,kab->nab", local[:, :nb], basis.images)
        k2sum = (kern * kern).sum((1, 2))
        new = used
        if it > 1:
            cd = chi2 / n_pix
            med = np.median(cd[used])
            mad = np.median(np.abs(cd[used] - med))
            new = used & (cd <= med + cfg.clip_sigma * 1.4826 * mad)
            if new.sum() < need:
                new = used
        if (it > 1 and np.array_equal(new, used)) or it >= cfg.max_iter:
            break
        used = new
    n_par = int(active.sum())
    kernel_sum = float(coeffs[0] @ _monomial_values(np.array(0.0), np.array(0.0), order))
    summary = dict(n_candidates=int(n_cand), n_examined=int(n_examined), n_usable=n_usable, n_fitted=int(n),
                   n_used=int(used.sum()),
                   n_rejected=int(n - used.sum()), n_fits=it,
                   chi2_dof=float(chi2[used].sum() / max(n_pix[used].sum() - n_par, 1)),
                   kernel_sum=kernel_sum, background=float(coeffs[-1, 0]),
                   background_coeffs=[float(v) for v in coeffs[-1, :_n_terms(cfg.background_order)]],
                   spatial_order=cfg.spatial_order, kernel_sum_order=cfg.kernel_sum_order,
                   background_order=cfg.background_order, kernel_size=basis.size,
                   basis_sigmas=[float(s) for s in basis.sigmas], basis_degrees=list(basis.degrees),
                   n_basis=nb, n_parameters=n_par)
    return KernelSolution(basis, coeffs, order, tuple(shape), summary)


def _normal_equations(design, ref, w, noise, gram):
    """Per stamp: design^T W design less noise[n] gram (the expected contribution of the convolved
    image's own noise), and design^T W ref."""
    n, _, nk = design.shape
    a, b = np.empty((n, nk, nk)), np.empty((n, nk))
    for k in range(0, n, STAMP_CHUNK):
        sl = slice(k, k + STAMP_CHUNK)
        d = design[sl].astype(np.float64)
        dw = d * w[sl, :, None]
        a[sl] = np.matmul(dw.transpose(0, 2, 1), d)
        b[sl] = np.einsum("npk,np->nk", dw, ref[sl])
    a -= noise[:, None, None] * gram
    return a, b


def _solve(a, b, p, active, ridge):
    """The spatial model's normal equations sum_n a_n (x) p_n p_n^T from the stamps' (a, b), plus ridge on
    the diagonal; returns coeffs (nb + 1, n_terms)."""
    nk, nt = active.shape
    big = np.einsum("nkl,ns,nt->kslt", a, p, p, optimize=True).reshape(nk * nt, nk * nt)
    rhs = np.einsum("nk,ns->ks", b, p).reshape(-1)
    idx = np.flatnonzero(active.reshape(-1))
    mat, vec = big[np.ix_(idx, idx)], rhs[idx]
    mat[np.diag_indices_from(mat)] += ridge.reshape(-1)[idx]
    try:
        sol = scipy.linalg.cho_solve(scipy.linalg.cho_factor(mat), vec)
    except np.linalg.LinAlgError:
        sol = scipy.linalg.lstsq(mat, vec)[0]
    coeffs = np.zeros(nk * nt)
    coeffs[idx] = sol
    return coeffs.reshape(nk, nt)


# ----------------------------------------------------------------------------------------- convolution
def _svd_terms(kernel, tol):
    """A kernel as its truncated SVD: the smallest singular values dropped while the Frobenius error stays
    <= tol ||kernel||. Returns the term arrays of `_convolve`: x filters, y functions, one term each."""
    u, sv, vt = np.linalg.svd(kernel)
    err2 = np.cumsum((sv * sv)[::-1])[::-1]            # err2[r]: squared error when keeping r terms
    keep = max(1, int(np.count_nonzero(err2 > (tol * np.linalg.norm(kernel)) ** 2)))
    r = np.arange(keep)
    xf, yf = vt[:keep].copy(), (u[:, :keep] * sv[:keep]).T
    for f in (xf, yf):                                  # taps below SUPPORT_TOL of the peak: zero
        f[np.abs(f) < SUPPORT_TOL * np.abs(f).max()] = 0.0
    return xf, yf, dict(e=r, p=0 * r, j=r, q=0 * r, c=np.ones(keep))


def _kernel_terms(solution):
    """The solution's kernel as terms of `_convolve`: each raw basis pair (x function e, y function j) times
    each monomial x^p y^q of the position, with its coefficient."""
    b = solution.basis
    nb = b.images.shape[0]
    raw = b.transform.T @ solution.coeffs[:nb]                             # (n_raw, n_terms)
    mono = np.array(_monomials(solution.order))
    k, s = np.nonzero(raw)
    terms = dict(e=b.pairs[k, 0], p=mono[s, 0], j=b.pairs[k, 1], q=mono[s, 1], c=raw[k, s])
    return b.functions, b.functions, terms


def _support(f):
    nz = f != 0
    return nz.argmax(1).astype(np.int32), (f.shape[1] - 1 - nz[:, ::-1].argmax(1)).astype(np.int32)


def _powers(n, order, dtype):
    v = _scaled(np.arange(n), n)
    return np.ascontiguousarray(np.stack([v ** k for k in range(order + 1)]), dtype=dtype)


def _convolve(plane, xfilt, yfunc, terms):
    """plane (float32) convolved with sum over terms of c x^p y^q (yfunc[j] (x) xfilt[e]) (twinkles_hpc._diffim
    convolve_terms); the border of half the filters' length is left unset."""
    ny, nx = plane.shape
    nt = xfilt.shape[1]
    order = np.lexsort((terms["q"], terms["j"], terms["p"], terms["e"]))      # sorted by e, then p
    t = {k: np.asarray(v)[order] for k, v in terms.items()}
    xf = np.ascontiguousarray(xfilt, np.float32)
    yf = np.ascontiguousarray(yfunc, np.float64)
    xlo, xhi = _support(xf)
    ylo, yhi = _support(yf)
    deg = int(max(t["p"].max(), t["q"].max()))
    out = np.empty((ny, nx), np.float32)                     # the kernel writes all but the border
    e, p, j, q = (np.ascontiguousarray(t[k], np.int32) for k in "epjq")
    _diffim.convolve_terms(plane, xf, xlo, xhi, yf, ylo, yhi, e, p, j, q,
                           np.ascontiguousarray(t["c"], np.float64), _powers(nx, deg, np.float32),
                           _powers(ny, deg, np.float64), out, np.empty((nt, nx), np.float32),
                           np.empty((3, nx), np.float32), np.empty((MAX_POWERS, nt)),
                           np.empty((MAX_POWERS, nt), np.float32))
    return out


def _poly_op(plane, coeff, op):
    """plane (float32, in place) op= the polynomial sum coeff[ey, ex] xs^ex ys^ey of the scaled position."""
    ny, nx = plane.shape
    deg = coeff.shape[0] - 1
    _diffim.apply_polynomial(plane, np.ascontiguousarray(coeff, np.float64), _powers(nx, deg, np.float64),
                             _powers(ny, deg, np.float64), op, np.empty(nx, np.float64))


def _coeff_grid(values, monomials):
    """Monomial coefficients -> a (deg + 1, deg + 1) grid [ey, ex]."""
    deg = max(ex + ey for ex, ey in monomials)
    grid = np.zeros((deg + 1, deg + 1))
    for v, (ex, ey) in zip(values, monomials):
        grid[ey, ex] += v
    return grid


def _footprint(kernel, weight):
    """Per kernel row a (dv = a - half): the du range [lo, hi] of the pixels with |K| >= weight max|K|."""
    half = kernel.shape[0] // 2
    sig = np.abs(kernel) >= weight * np.abs(kernel).max()
    lo = np.ones(kernel.shape[0], np.int32)
    hi = np.zeros(kernel.shape[0], np.int32)
    for a in range(kernel.shape[0]):
        cols = np.flatnonzero(sig[a])
        if cols.size:
            lo[a], hi[a] = cols[0] - half, cols[-1] - half
    return lo, hi


def convolve_image(image, variance, mask, kernel, *, mask_weight=0.05, edge_bit=MASK_EDGE,
                   no_data_bit=MASK_NO_DATA):
    """Convolve (image, variance, mask) with `kernel`: a KernelSolution (its spatially varying kernel,
    module docstring) or a centred odd square stamp (a constant kernel, as its truncated SVD to
    STAMP_RANK_TOL). mask may be None. Non-finite input pixels count as 0 with no_data_bit. Returns
    float32 image and variance, uint16 mask, and the number of (separable pair, monomial) terms used; the
    border of half the kernel side is NaN with edge_bit | no_data_bit."""
    image = np.asarray(image)
    if isinstance(kernel, KernelSolution):
        if image.ndim != 2 or image.shape != tuple(kernel.shape):
            raise ValueError(f"image shape {image.shape} is not the solution's {tuple(kernel.shape)}")
        kernels, mono, h = kernel.spatial_kernels(), _monomials(kernel.order), kernel.basis.half
        xf, yf, terms = _kernel_terms(kernel)
    else:
        stamp = np.asarray(kernel, np.float64)
        if stamp.ndim != 2 or stamp.shape[0] != stamp.shape[1] or stamp.shape[0] % 2 == 0:
            raise ValueError(f"a kernel stamp must be square with an odd side, got shape {stamp.shape}")
        kernels, mono, h = stamp[None], [(0, 0)], stamp.shape[0] // 2
        xf, yf, terms = _svd_terms(stamp, STAMP_RANK_TOL)
    if np.shape(variance) != image.shape or (mask is not None and np.shape(mask) != image.shape):
        raise ValueError("image, variance and mask must have the same shape")
    ny, nx = image.shape
    if ny <= 2 * h or nx <= 2 * h:
        raise ValueError(f"image {image.shape} is too small for a {2 * h + 1} px kernel")
    img, var = np.ascontiguousarray(image, np.float32), np.ascontiguousarray(variance, np.float32)
    bad = ~np.isfinite(img)
    bad |= ~np.isfinite(var)
    msk = None if mask is None else np.asarray(mask, np.uint16)
    if bad.any():                                  # count as 0, flagged NO_DATA (copies, not the caller's)
        img, var = np.where(bad, np.float32(0), img), np.where(bad, np.float32(0), var)
        msk = np.where(bad, no_data_bit, 0).astype(np.uint16) | (0 if msk is None else msk)
    out = _convolve(img, xf, yf, terms)
    # variance: V * (K^2 / sum K^2 at the centre), times sum K(x, y)^2 = sum_st P_s P_t <K_s, K_t>
    k2 = kernels[0] ** 2
    out_var = _convolve(var, *_svd_terms(k2 / k2.sum(), VARIANCE_RANK_TOL))
    gram = np.einsum("sab,tab->st", kernels, kernels)
    pair_mono = [(mono[s][0] + mono[t][0], mono[s][1] + mono[t][1]) for s in range(len(mono)) for t in range(len(mono))]
    _poly_op(out_var, _coeff_grid(gram.reshape(-1), pair_mono), 1)
    out_mask = np.zeros((ny, nx), np.uint16)
    if msk is not None:
        lo, hi = _footprint(kernels[0], mask_weight)
        _diffim.or_footprint(np.ascontiguousarray(msk), lo, hi, out_mask)
    for sl in ((slice(0, h), slice(None)), (slice(ny - h, ny), slice(None)), (slice(None), slice(0, h)),
               (slice(None), slice(nx - h, nx))):
        out[sl] = np.nan
        out_var[sl] = np.nan
        out_mask[sl] = (0 if msk is None else msk[sl]) | edge_bit | no_data_bit
    return out, out_var, out_mask, int(len(terms["c"]))


# ------------------------------------------------------------------------------------------ decorrelation
def _wrap(stamp, shape, dtype=np.float64):
    """A centred odd stamp placed on a grid of `shape` with its centre at [0, 0] (periodic)."""
    grid = np.zeros(shape, dtype)
    hy, hx = stamp.shape[0] // 2, stamp.shape[1] // 2
    rows = (np.arange(stamp.shape[0]) - hy) % shape[0]
    cols = (np.arange(stamp.shape[1]) - hx) % shape[1]
    grid[np.ix_(rows, cols)] = stamp
    return grid


def _unwrap(grid, half):
    """The centred (2 half + 1)^2 stamp of a periodic grid whose centre is [0, 0]."""
    rows = np.arange(-half, half + 1) % grid.shape[0]
    cols = np.arange(-half, half + 1) % grid.shape[1]
    return grid[np.ix_(rows, cols)]


def _phi_hat(khat2, ksum, var_reference, var_convolved):
    return np.sqrt((var_reference + ksum * ksum * var_convolved) / (var_reference + var_convolved * khat2))


def decorrelation_kernel(kernel, var_reference, var_convolved, *, half=None):
    """The decorrelation kernel phi (centred stamp of side 2 half + 1, default twice the kernel's) for a
    difference reference - convolved * kernel whose images have variances var_reference, var_convolved;
    and alpha = sum phi^2, beta = sum (phi * K)^2 / sum K^2, the factors of the two variance planes."""
    ks = kernel.shape[0]
    half = 2 * (ks // 2) if half is None else half
    n = scipy.fft.next_fast_len(max(64, 4 * ks, 4 * half + 1))
    khat = scipy.fft.fft2(_wrap(kernel, (n, n)))
    k2 = (khat * khat.conj()).real
    ph = _phi_hat(k2, float(kernel.sum()), var_reference, var_convolved)
    alpha = float(np.mean(ph * ph))
    beta = float(np.mean(ph * ph * k2) / np.mean(k2))
    return _unwrap(scipy.fft.ifft2(ph).real, half), alpha, beta


def decorrelate(difference, kernel, var_reference, var_convolved):
    """The difference (non-finite pixels as 0) filtered by phi (module docstring) by real FFTs, padded by
    the kernel's side so that nothing wraps around; float32."""
    ny, nx = difference.shape
    pad = kernel.shape[0]
    shape = (scipy.fft.next_fast_len(ny + pad, real=True), scipy.fft.next_fast_len(nx + pad, real=True))
    grid = np.zeros(shape, np.float32)
    inner = grid[:ny, :nx]
    inner[...] = difference
    inner[~np.isfinite(inner)] = 0.0
    khat = scipy.fft.rfft2(_wrap(kernel, shape, np.float32))
    ph = _phi_hat((khat.real ** 2 + khat.imag ** 2), np.float32(kernel.sum()), np.float32(var_reference),
                  np.float32(var_convolved)).astype(np.float32)
    del khat
    spec = scipy.fft.rfft2(grid)
    spec *= ph
    return np.array(scipy.fft.irfft2(spec, shape)[:ny, :nx], np.float32)


def _typical_variance(variance, valid):
    """Median of the variance over valid pixels, on a 4 x 4 subsample (fast and deterministic)."""
    v = np.asarray(variance[::4, ::4], np.float64)[valid[::4, ::4]]
    if v.size == 0:
        v = np.asarray(variance, np.float64)[valid]
    return float(np.median(v))


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
        if not np.isfinite(a).any():
            raise ValueError(f"the {name} has no finite pixel")
    x, y = np.atleast_1d(np.asarray(x, np.float64)), np.atleast_1d(np.asarray(y, np.float64))
    if x.ndim != 1 or x.shape != y.shape:
        raise ValueError(f"candidate x and y must be 1-D of one length, got {x.shape} and {y.shape}")
    if x.size == 0:
        raise ValueError("no kernel candidates given")
    n_psf = cfg.max_candidates or x.size                          # the PSF is measured on a spread subset
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
    if direction == "auto":
        direction = "template" if fw["template"] <= fw["science"] else "science"
    if science_psf is None:
        if not np.isfinite(mom_s[0]):
            raise ValueError("cannot measure the science PSF from the candidates; give science_psf")
        science_psf = gaussian_psf(*mom_s)
    science_psf = np.asarray(science_psf, np.float64)
    if science_psf.ndim != 2 or science_psf.shape[0] % 2 == 0 or science_psf.shape[1] != science_psf.shape[0]:
        raise ValueError(f"science_psf must be a square stamp of odd side, got shape {science_psf.shape}")
    if direction == "science" and cfg.preconvolve and 2.0 * fw["science"] ** 2 > fw["template"] ** 2:
        # Reiss & Lupton: the science image convolved with its own PSF is broader than the template
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
    ref32, vr = np.asarray(ref, np.float32), np.asarray(rvar, np.float32)
    if direction != "science":                                   # science - template * K - background
        diff = np.subtract(ref32, cimg)
        _poly_op(diff, -bg, 0)
    else:                                                        # (science * K + background - template) / sum K
        diff = np.subtract(cimg, ref32)
        _poly_op(diff, bg, 0)
        _poly_op(diff, ksum, 2)
        vr = vr.copy()
        for plane in (vr, cv, vr, cv):                           # variances / (sum K)^2
            _poly_op(plane, ksum, 2)
    invalid = ~np.isfinite(diff)                                 # the border, and non-finite inputs
    invalid |= ~np.isfinite(vr)
    invalid |= ~np.isfinite(cv)
    mask = cm if rmask is None else cm | np.asarray(rmask, np.uint16)
    mask[invalid] |= no_data_bit
    kc = sol.kernel_image((shape[1] - 1) / 2, (shape[0] - 1) / 2)
    s_r, s_c = _typical_variance(rvar, ~invalid), _typical_variance(cvar, ~invalid)
    h = sol.basis.half
    if direction == "template":
        matched = science_psf
    elif direction == "science":
        matched = _convolve_stamp(science_psf, kc / kc.sum(), science_psf.shape[0] // 2 + h)
    else:
        matched = _convolve_stamp(science_psf, science_psf, science_psf.shape[0] - 1)
    if cfg.decorrelate and direction != "preconvolved":
        phi, alpha, beta = decorrelation_kernel(kc, s_r, s_c)
        diff = decorrelate(diff, kc, s_r, s_c)
        variance = np.multiply(vr, np.float32(alpha))
        variance += np.float32(beta) * cv
        psf = _convolve_stamp(matched, phi, matched.shape[0] // 2 + h)
    else:
        variance = np.add(vr, cv)
        psf = matched
    diff[invalid] = np.nan
    variance[invalid] = np.nan
    psf = (psf / psf.sum()).astype(np.float32)
    summary = dict(sol.summary, direction=direction, fwhm_science=fw["science"], fwhm_template=fw["template"],
                   n_convolution_terms=n_sep, decorrelated=bool(cfg.decorrelate and direction != "preconvolved"),
                   variance_reference=s_r,
                   variance_convolved=s_c)
    return DiffimResult(diff, variance, mask, psf, sol, summary)


def _convolve_stamp(a, b, half):
    """The centred (2 half + 1)^2 stamp of the full convolution a * b of two centred odd stamps."""
    n = scipy.fft.next_fast_len(a.shape[0] + b.shape[0] + 2 * half)
    out = scipy.fft.ifft2(scipy.fft.fft2(_wrap(a, (n, n))) * scipy.fft.fft2(_wrap(b, (n, n)))).real
    return _unwrap(out, half)
