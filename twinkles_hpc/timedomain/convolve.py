"""Convolution of an image with a spatially varying matching kernel (exact per pixel, through the private
kernel twinkles_hpc._diffim), its variance and mask, and the decorrelation of a difference (docs/diffim.md;
timedomain/diffim.py)."""
from __future__ import annotations

import math

import numpy as np
import scipy.fft
import scipy.linalg

from twinkles_hpc import _diffim
from twinkles_hpc.level2.masks import EDGE as MASK_EDGE
from twinkles_hpc.level2.masks import NO_DATA as MASK_NO_DATA

#: A Gaussian's polynomial degrees the kernel's taps cannot resolve (QR diagonal below this fraction of the
#: first) are dropped; its functions are zero where all are below SUPPORT_TOL of their peak.
BASIS_TOL, SUPPORT_TOL = 1e-6, 1e-7
#: Relative error allowed in the separable form of the squared kernel (variance propagation) and of a
#: constant kernel stamp (a PSF, for pre-convolution).
VARIANCE_RANK_TOL, STAMP_RANK_TOL = 1e-2, 1e-5
#: Output columns per strip of the convolution: every x filter's ring of 2 h + 1 x-passed rows of a strip
#: stays in the core's cache (twinkles_hpc._diffim convolve_terms).
STRIP_WIDTH = 512
#: The longest filter the convolution kernel takes (twinkles_hpc._diffim MAX_TAPS).
MAX_TAPS = 255
#: Default fitting stamp half-side, in kernel half-sides (large stamps pin down the differential background);
#: a candidate needs its central (2 CORE_HALF + 1)^2 pixels and MIN_USABLE_FRACTION of its stamp usable.
STAMP_HALF_KERNELS, CORE_HALF, MIN_USABLE_FRACTION = 2, 2, 0.5


def _i32(a):
    """a as the C-contiguous int32 array the kernels take (copied only if needed)."""
    return np.ascontiguousarray(a, np.int32)


def _f32(a):
    """a as the C-contiguous float32 array the kernels take (copied only if needed)."""
    return np.ascontiguousarray(a, np.float32)


def _f64(a):
    """a as the C-contiguous float64 array the kernels take (copied only if needed)."""
    return np.ascontiguousarray(a, np.float64)


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


def _convolve_stamps(patches, basis, out):
    """patches (n, P, P) -> out[:, k] (out: (n, >= n_raw, S^2), float64 or float32): the valid part
    (S = P - 2 half) of each patch convolved with raw basis image k (twinkles_hpc._diffim convolve_stamps:
    separable passes over each function's support, in double precision)."""
    size = patches.shape[1]
    s = size - 2 * basis.half
    funcs = _f64(basis.functions)
    _diffim.convolve_stamps(_f64(patches), funcs, _i32(basis.support[:, 0]), _i32(basis.support[:, 1]),
                            _i32(basis.pairs[:, 0]), _i32(basis.pairs[:, 1]), out,
                            np.empty((funcs.shape[0], size, s)), np.empty(s * s))


# ----------------------------------------------------------------------------------------- convolution
def _svd_terms(kernel, tol):
    """A kernel as its truncated SVD within a Frobenius error of tol ||kernel||: the smallest singular values
    dropped while the error stays within it, then each vector's ends trimmed (the smaller end tap first)
    within what the rank left of it, shared equally by the 2 rank vectors (a vector's trimmed taps times its
    partner's norm stay below (tol ||kernel|| - rank error) / (2 rank)), so the convolution runs over fewer
    taps; taps below SUPPORT_TOL of their vector's peak are zero too. Returns the term arrays of `_convolve`:
    x filters, y functions, one term each."""
    u, sv, vt = np.linalg.svd(kernel)
    err2 = np.cumsum((sv * sv)[::-1])[::-1]            # err2[r]: squared error when keeping r terms
    budget = tol * np.linalg.norm(kernel)
    keep = max(1, int(np.count_nonzero(err2 > budget ** 2)))
    r = np.arange(keep)
    xf, yf = vt[:keep].copy(), (u[:, :keep] * sv[:keep]).T
    share = max(budget - (math.sqrt(err2[keep]) if keep < sv.size else 0.0), 0.0) / (2 * keep)
    for k in range(keep):
        _trim_ends(xf[k], share / max(np.linalg.norm(yf[k]), np.finfo(float).tiny))
        _trim_ends(yf[k], share / max(np.linalg.norm(xf[k]), np.finfo(float).tiny))
    for f in (xf, yf):                                  # taps below SUPPORT_TOL of the peak: zero
        f[np.abs(f) < SUPPORT_TOL * np.abs(f).max()] = 0.0
    return xf, yf, dict(e=r, p=0 * r, j=r, q=0 * r, c=np.ones(keep))


def _trim_ends(f, limit):
    """Zero the end taps of the 1-D filter f (in place), the smaller end first, while the norm of the zeroed
    taps stays <= limit; at least one tap is kept."""
    lo, hi, dropped2 = 0, f.size - 1, 0.0
    while lo < hi:
        end = lo if abs(f[lo]) <= abs(f[hi]) else hi
        if dropped2 + f[end] ** 2 > limit ** 2:
            break
        dropped2 += f[end] ** 2
        f[end] = 0.0
        lo, hi = (lo + 1, hi) if end == lo else (lo, hi - 1)


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
    if nt > MAX_TAPS:
        raise ValueError(f"a {nt}-tap filter is longer than the convolution handles ({MAX_TAPS} taps)")
    order = np.lexsort((terms["q"], terms["j"], terms["p"], terms["e"]))      # sorted by e, then p
    t = {k: np.asarray(v)[order] for k, v in terms.items()}
    xf = _f32(xfilt)
    yf = _f64(yfunc)
    xlo, xhi = _support(xf)
    ylo, yhi = _support(yf)
    deg = int(max(t["p"].max(), t["q"].max()))
    # groups: runs of one (e, p); filters: runs of one e, each with its groups and the taps of its y functions
    ep = t["e"].astype(np.int64) * (deg + 1) + t["p"]
    g_t0 = np.flatnonzero(np.r_[True, ep[1:] != ep[:-1]])
    g_t1 = np.r_[g_t0[1:], ep.size]
    g_e = t["e"][g_t0]
    f_g0 = np.flatnonzero(np.r_[True, g_e[1:] != g_e[:-1]])
    f_g1 = np.r_[f_g0[1:], g_e.size]
    f_e = g_e[f_g0]
    filt_of_term = np.repeat(np.arange(f_e.size), np.diff(np.r_[g_t0[f_g0], ep.size]))
    f_alo = np.full(f_e.size, nt, np.int64)
    f_ahi = np.full(f_e.size, -1, np.int64)
    np.minimum.at(f_alo, filt_of_term, ylo[t["j"]])
    np.maximum.at(f_ahi, filt_of_term, yhi[t["j"]])
    width = min(STRIP_WIDTH, nx)
    out = np.empty((ny, nx), np.float32)                     # the kernel writes all but the border
    _diffim.convolve_terms(plane, xf, xlo, xhi, yf, ylo, yhi, _i32(f_e), _i32(f_g0), _i32(f_g1), _i32(f_alo),
                           _i32(f_ahi), _i32(t["p"][g_t0]), _i32(g_t0), _i32(g_t1), _i32(t["j"]), _i32(t["q"]),
                           _f64(t["c"]), _powers(nx, deg, np.float32),
                           _powers(ny, deg, np.float64), out, np.empty((f_e.size, nt, width), np.float32),
                           np.empty((3, width), np.float32), np.empty(nt),
                           np.zeros((ny, g_t0.size, nt), np.float32))
    return out


def _poly_op(plane, coeff, op):
    """plane (float32, in place) op= the polynomial sum coeff[ey, ex] xs^ex ys^ey of the scaled position."""
    ny, nx = plane.shape
    deg = coeff.shape[0] - 1
    _diffim.apply_polynomial(plane, _f64(coeff), _powers(nx, deg, np.float64),
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
    if hasattr(kernel, "spatial_kernels"):                # a KernelSolution (timedomain/kernel.py)
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
    img, var = _f32(image), _f32(variance)
    msk = None if mask is None else np.asarray(mask, np.uint16)
    if not (np.isfinite(img.sum()) and np.isfinite(var.sum())):   # finite sums: finite pixels (a quick look)
        out = np.empty_like(img), np.empty_like(var), np.empty(img.shape, np.uint16)
        if _diffim.zero_nonfinite(img, var, np.zeros((0, 0), np.uint16) if msk is None else np.ascontiguousarray(msk),
                                  no_data_bit, *out):
            img, var, msk = out                    # count as 0, flagged NO_DATA (copies, not the caller's)
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
        runs = np.maximum(hi - lo + 1, 1)
        ring = np.empty((lo.size, int(runs.max()).bit_length(), nx), np.uint16)
        _diffim.or_footprint(np.ascontiguousarray(msk), lo, hi, out_mask, ring)
    for sl in ((slice(0, h), slice(None)), (slice(ny - h, ny), slice(None)), (slice(None), slice(0, h)),
               (slice(None), slice(nx - h, nx))):
        out[sl] = np.nan
        out_var[sl] = np.nan
        out_mask[sl] = (0 if msk is None else msk[sl]) | edge_bit | no_data_bit
    return out, out_var, out_mask, int(len(terms["c"]))


# ------------------------------------------------------------------------------------------ decorrelation
def wrap_stamp(stamp, shape, dtype=np.float64):
    """A centred odd stamp placed on a grid of `shape` with its centre at [0, 0] (periodic)."""
    grid = np.zeros(shape, dtype)
    hy, hx = stamp.shape[0] // 2, stamp.shape[1] // 2
    rows = (np.arange(stamp.shape[0]) - hy) % shape[0]
    cols = (np.arange(stamp.shape[1]) - hx) % shape[1]
    grid[np.ix_(rows, cols)] = stamp
    return grid


def unwrap_stamp(grid, half):
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
    khat = scipy.fft.fft2(wrap_stamp(kernel, (n, n)))
    k2 = (khat * khat.conj()).real
    ph = _phi_hat(k2, float(kernel.sum()), var_reference, var_convolved)
    alpha = float(np.mean(ph * ph))
    beta = float(np.mean(ph * ph * k2) / np.mean(k2))
    return unwrap_stamp(scipy.fft.ifft2(ph).real, half), alpha, beta


def decorrelate(difference, kernel, var_reference, var_convolved):
    """The difference (non-finite pixels as 0) filtered by the decorrelation kernel phi of `kernel` and the
    two variances (`decorrelation_kernel`); float32, the same shape."""
    return apply_stamp(difference, decorrelation_kernel(kernel, var_reference, var_convolved)[0])


def apply_stamp(image, stamp):
    """image (non-finite pixels as 0, zero beyond its edges) convolved with a centred odd stamp, as the
    stamp's truncated SVD (STAMP_RANK_TOL) rescaled to the stamp's sum, in real space; float32, the same
    shape (a view into the padded result). Every output pixel is computed; the image is padded by half the
    stamp's side."""
    h = stamp.shape[0] // 2
    grid = padded_plane(image.shape, h)
    inner = grid[h:h + image.shape[0], h:h + image.shape[1]]
    inner[...] = image
    inner[~np.isfinite(inner)] = 0.0
    return apply_stamp_padded(grid, stamp)[h:h + image.shape[0], h:h + image.shape[1]]


def padded_plane(shape, pad):
    """A zero float32 plane of `shape` padded by `pad` pixels on every side."""
    return np.zeros((shape[0] + 2 * pad, shape[1] + 2 * pad), np.float32)


def apply_stamp_padded(grid, stamp):
    """`apply_stamp` of the inside of a `padded_plane` (padded by half the stamp's side, finite, its padding
    zero): the convolved plane, of the same shape, its padding left unset."""
    xf, yf, terms = _svd_terms(stamp, STAMP_RANK_TOL)
    approx = np.einsum("ra,rb->ab", yf, xf)
    terms["c"] = terms["c"] * (float(stamp.sum()) / float(approx.sum()))
    return _convolve(grid, xf, yf, terms)


def difference(a, b, va, vb, mask, out, *, add, div=None, no_data_bit=MASK_NO_DATA):
    """out = (a - b + add(x, y)) / div(x, y), in float32 with the polynomials (coefficient grids [ey, ex]
    of the scaled position, `_coeff_grid`, of one shape) in double precision as `_poly_op` rounds them,
    0 where not finite; out is a float32 plane of a's shape, or padded by the same width on every side (a
    `padded_plane`, filled inside). Returns `invalid` (bool): where that value, va or vb is not finite;
    mask (uint16) gets no_data_bit there, in place."""
    ny, nx = a.shape
    deg = add.shape[0] - 1
    invalid = np.empty((ny, nx), np.uint8)
    _diffim.difference(_f32(a), _f32(b), _f32(va), _f32(vb), _f64(add),
                       np.zeros((0, deg + 1)) if div is None else _f64(div), _powers(nx, deg, np.float64),
                       _powers(ny, deg, np.float64), out, (out.shape[0] - ny) // 2, invalid, mask, no_data_bit,
                       np.empty((2, nx)))
    return invalid.view(bool)


def finish_difference(plane, va, vb, alpha, beta, invalid):
    """The variance alpha va + beta vb (float32), and the difference (the inside of plane, of invalid's
    shape or padded by the same width on every side): both NaN where invalid (plane in place)."""
    ny, nx = invalid.shape
    pad = (plane.shape[0] - ny) // 2
    variance = np.empty((ny, nx), np.float32)
    _diffim.finish_difference(plane, pad, variance, _f32(va), _f32(vb), alpha, beta, invalid.view(np.uint8))
    return plane[pad:pad + ny, pad:pad + nx], variance


def _typical_variance(variance, invalid):
    """Median of the finite variance over the pixels not invalid, on a 4 x 4 subsample (fast and
    deterministic). An input's variance may be non-finite where the difference is still finite (the
    convolved image's pixels with no data count as 0 and are flagged NO_DATA)."""
    v = np.asarray(variance[::4, ::4], np.float64)[~invalid[::4, ::4]]
    v = v[np.isfinite(v)]
    if v.size == 0:
        v = np.asarray(variance, np.float64)[~invalid]
        v = v[np.isfinite(v)]
    return float(np.median(v))


def _convolve_stamp(a, b, half):
    """The centred (2 half + 1)^2 stamp of the full convolution a * b of two centred odd stamps."""
    n = scipy.fft.next_fast_len(a.shape[0] + b.shape[0] + 2 * half)
    out = scipy.fft.ifft2(scipy.fft.fft2(wrap_stamp(a, (n, n))) * scipy.fft.fft2(wrap_stamp(b, (n, n)))).real
    return unwrap_stamp(out, half)

