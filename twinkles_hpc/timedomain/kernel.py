"""The PSF-matching kernel: settings, basis (Gaussians x polynomials), the spatially varying solution,
PSF moments, and the least-squares fit on candidate stamps (docs/diffim.md; timedomain/diffim.py)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import scipy.fft
import scipy.linalg

from twinkles_hpc import options
from twinkles_hpc.level2.masks import BAD as MASK_BAD
from twinkles_hpc.level2.masks import CR as MASK_CR
from twinkles_hpc.level2.masks import EDGE as MASK_EDGE
from twinkles_hpc.level2.masks import NO_DATA as MASK_NO_DATA
from twinkles_hpc.level2.masks import SAT as MASK_SAT
from twinkles_hpc.level2.shapes import adaptive_moments
from twinkles_hpc.options import opt
from twinkles_hpc.timedomain.convolve import _convolve_stamps, _monomial_values, _n_terms, _scaled

FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))
#: Candidates with any of these bits in their stamp (or the patch convolved into it) are not used.
DEFAULT_BAD_MASK_BITS = MASK_SAT | MASK_CR | MASK_EDGE | MASK_NO_DATA | MASK_BAD
#: Automatic kernel half-side (pixels): max(2 FWHM of the broader PSF, 4 sigma of the widest Gaussian),
#: clipped to this range (kernels of 19 to 31 px).
AUTO_HALF = (9, 15)
#: A Gaussian's polynomial degrees the kernel's taps cannot resolve (QR diagonal below this fraction of the
#: first) are dropped; its functions are zero where all are below SUPPORT_TOL of their peak.
BASIS_TOL, SUPPORT_TOL = 1e-6, 1e-7
#: Default fitting stamp half-side, in kernel half-sides (large stamps pin down the differential background);
#: a candidate needs its central (2 CORE_HALF + 1)^2 pixels and MIN_USABLE_FRACTION of its stamp usable.
STAMP_HALF_KERNELS, CORE_HALF, MIN_USABLE_FRACTION = 2, 2, 0.5
#: Stamps per batch in the fit (bounds the temporary arrays).
STAMP_CHUNK = 64
#: The fit keeps its design matrix (stamp pixels x basis images) in double precision up to this size.
DESIGN_BYTES = 256 * 2 ** 20
#: Stamp half-side (pixels) of the PSF moments: enough for a weight of sigma 12 / 3.5 = 3.4 px; a wider PSF
#: is measured again on stamps 2.5 x larger (level2.shapes).
PSF_MOMENT_RADIUS = 12


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
    max_candidates: int = opt(200, "", "Most candidates fitted, spread over the image (0: all).", lo=0)
    min_candidates: int = opt(0, "", "Fewest usable candidates; 0: twice the most spatial terms, at least 4.",
                              lo=0)
    direction: str = opt("auto", "", "Image to convolve: 'auto' (the sharper one), 'template' or 'science'.",
                         choices=("auto", "template", "science"))
    decorrelate: bool = opt(True, "", "Whiten the difference's noise (Reiss & Lupton 2016).")
    preconvolve: bool = opt(False, "", "Unless direction is 'template', convolve the science image with its own "
                            "PSF when that makes it the broader, and match the template to that (direction "
                            "'preconvolved'): a matched-filtered difference "
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
    usable = None if mask is None else (mask & bad_mask_bits) == 0     # adaptive_moments skips non-finite pixels
    ixx, iyy, ixy, flag = adaptive_moments(image, x, y, usable=usable, radius=PSF_MOMENT_RADIUS)
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
    """Stamps of the candidates at integer pixels (ix, iy), NaN-free: the image's patch (half-side hs + h),
    its variance on the stamp (half-side hs), the reference's stamp and its variance, and the stamp's usable
    pixels (its own, and the whole kernel window of the patch around them)."""
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
    ok &= _box_all(ok_c, 2 * h + 1)
    inner = (slice(None), slice(h, h + 2 * hs + 1), slice(h, h + 2 * hs + 1))
    return (np.where(ok_c, patch, 0.0), np.where(ok_c[inner], vpatch[inner], 0.0), np.where(ok, ref, 0.0),
            np.where(ok, vref, 1.0), ok)


def _box_all(ok, width):
    """ok (n, P, P) bool -> (n, P - width + 1, P - width + 1): whether every pixel of each width x width box is
    True (the erosion by the box, from the summed-area table of the False pixels)."""
    n, p = ok.shape[0], ok.shape[1]
    table = np.zeros((n, p + 1, p + 1), np.int32)
    np.cumsum(np.cumsum(~ok, axis=1, dtype=np.int32), axis=2, out=table[:, 1:, 1:])
    w = width
    return (table[:, w:, w:] - table[:, :-w, w:] - table[:, w:, :-w] + table[:, :-w, :-w]) == 0


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
    n_examined, found = 0, []
    while n_examined < ix.size and good.sum() < n_max:
        sl = slice(n_examined, n_examined + STAMP_CHUNK)
        st = _stamps(*planes, ix[sl], iy[sl], hs, h, bad_mask_bits)
        ok = st[-1]
        g = ok[:, hs - c:hs + c + 1, hs - c:hs + c + 1].all((1, 2)) & (ok.mean((1, 2)) >= MIN_USABLE_FRACTION)
        good[sl] = g
        found.append([a[g] for a in st])                        # the usable ones' stamps, cut once
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
    by_caller = np.argsort(order[keep])                         # the fitted ones in the caller's order
    ix, iy = ix[keep][by_caller], iy[keep][by_caller]
    patch, vconv, ref, vref, ok = (np.concatenate(a)[:keep.size][by_caller] for a in zip(*found))
    n, s_pix, nb, n_raw = ix.size, (2 * hs + 1) ** 2, basis.images.shape[0], basis.pairs.shape[0]
    # the convolved raw basis images and a constant (the background): double precision unless that exceeds
    # DESIGN_BYTES (then float32)
    design = np.empty((n, n_raw + 1, s_pix), np.float64 if n * s_pix * (n_raw + 1) * 8 <= DESIGN_BYTES else np.float32)
    _convolve_stamps(patch, basis, design)
    design[:, -1] = 1.0
    ref, vref, vconv, ok = (a.reshape(n, s_pix) for a in (ref, vref, vconv, ok))
    to_fit = np.zeros((nb + 1, n_raw + 1))                      # raw images -> basis images, background kept
    to_fit[:nb, :n_raw] = basis.transform
    to_fit[nb, n_raw] = 1.0
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
        idx = np.flatnonzero(used)                            # a clipped stamp never returns: the used ones only
        # weights: the difference's variance, V_ref + V sum K^2 (the convolved variance, locally constant)
        w = np.where(ok[idx], 1.0 / (vref[idx] + vconv[idx] * k2sum[idx, None]), 0.0)
        noise = (vconv[idx] * w).sum(1)
        ridge = np.zeros(active.shape)
        ridge[1:nb] = cfg.kernel_ridge * float(noise.sum())
        a, b, rr = _normal_equations(design, idx, ref[idx], w, to_fit)
        a_fit = a - noise[:, None, None] * gram if cfg.noise_correction else a
        coeffs = _solve(a_fit, b, p[idx], active, ridge)
        it += 1
        local = p[idx] @ coeffs.T                                          # (used, nb + 1)
        # chi^2 = sum w (ref - design local)^2, from the stamp's normal equations
        chi2 = rr - 2.0 * np.einsum("nk,nk->n", local, b) + np.einsum("nk,nkl,nl->n", local, a, local)
        kern = np.einsum("nk,kab->nab", local[:, :nb], basis.images)
        k2sum[idx] = (kern * kern).sum((1, 2))
        new = used
        if it > 1:
            cd = chi2 / n_pix[idx]
            med = np.median(cd)
            mad = np.median(np.abs(cd - med))
            new = used.copy()
            new[idx] = cd <= med + cfg.clip_sigma * 1.4826 * mad
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
                   chi2_dof=float(chi2.sum() / max(n_pix[used].sum() - n_par, 1)),
                   kernel_sum=kernel_sum, background=float(coeffs[-1, 0]),
                   background_coeffs=[float(v) for v in coeffs[-1, :_n_terms(cfg.background_order)]],
                   spatial_order=cfg.spatial_order, kernel_sum_order=cfg.kernel_sum_order,
                   background_order=cfg.background_order, kernel_size=basis.size,
                   basis_sigmas=[float(s) for s in basis.sigmas], basis_degrees=list(basis.degrees),
                   n_basis=nb, n_parameters=n_par)
    return KernelSolution(basis, coeffs, order, tuple(shape), summary)


def _normal_equations(design, rows, ref, w, to_fit):
    """Per stamp n of `rows` (ref, w: theirs, in that order), with D_n = to_fit @ design[n] (the fit's basis;
    design: (stamps, raw images + 1, pixels)) and W_n the weights: D_n W_n D_n^T, D_n W_n ref_n and
    ref_n W_n ref_n. The products are formed in the design's basis from sqrt(W_n) design[n], one stamp at a
    time (it stays in cache for BLAS's syrk), then transformed."""
    nk, s_pix = design.shape[1:]
    a, b = np.empty((rows.size, nk, nk)), np.empty((rows.size, nk))
    sw = np.sqrt(w)
    swr = sw * ref
    buf = np.empty((nk, s_pix))
    for i, k in enumerate(rows):
        np.multiply(design[k], sw[i], out=buf)
        np.matmul(buf, buf.T, out=a[i])
        np.matmul(buf, swr[i], out=b[i])
    return to_fit @ a @ to_fit.T, b @ to_fit.T, (swr * swr).sum(1)


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


