"""PSF model estimated from the bright isolated stars of one calexp.

The model is a mixture of K concentric Gaussians sharing one ellipticity: relative weights and
relative sizes are global (fitted to all stars jointly), while the overall size and the two
ellipticity components vary across the sensor as polynomials in (x, y). Each star stamp is fitted at
pixel centres, so the model includes the pixel response (docs/data-model.md). The mixture makes PSF
photometry and convolution analytic, and `components_at(x, y)` is the interface forced photometry uses.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from twinkles_hpc import _psffit
from twinkles_hpc.level2 import CalibrationError


class _Fit:
    """The result of _lsq: x (parameters), cost (0.5 sum r^2), nfev, iterations, converged."""

    def __init__(self, x, cost, nfev, nit, converged):
        self.x, self.cost, self.nfev, self.nit, self.converged = x, cost, nfev, nit, converged


def _lsq(evaluate, p0, max_nfev, *, ftol=1e-12, xtol=1e-10):
    """Levenberg-Marquardt minimisation of 0.5 |r(p)|^2 from p0, with evaluate(p, jacobian) -> (cost, r, J)
    (J = dr/dp when `jacobian`, analytic). Damping scaled by the running maximum of diag(J^T J) as in
    MINPACK; a Jacobian counts as len(p) evaluations against max_nfev (the budget of a forward-difference
    Jacobian). Bit-reproducible: the normal equations and the Cholesky solve are fixed-order loops
    (twinkles_hpc._psffit). Library solvers were not: MINPACK (scipy least_squares "lm") gave results
    varying in the last bits between processes with the heap's contents (MALLOC_PERTURB_), and the mixture
    fit's near-degeneracies amplify that to ~1e-3 in a star's flux, which would break the calexps'
    bit-identical guarantee."""
    p = np.array(p0, dtype=np.float64)
    cost, r, J = evaluate(p, True)
    n = p.size
    A, g, step = np.empty((n, n)), np.empty(n), np.empty(n)
    nfev, lam, nit, d = 1 + n, 1e-3, 0, np.zeros(n)
    while nfev < max_nfev:
        nit += 1
        _psffit.normal_equations(J, r, A, g)
        d = np.maximum(d, np.maximum(np.diag(A), 1e-30))
        while nfev < max_nfev:
            if not _psffit.damped_solve(A, d, lam, g, step):
                lam *= 4.0
                continue
            q = p + step
            cq, rq, _ = evaluate(q, False)
            nfev += 1
            if not np.isfinite(cq):
                cq = np.inf
            if cq < cost:
                small = (cost - cq <= ftol * cost) or bool(np.all(np.abs(step) <= xtol * (np.abs(p) + xtol)))
                p, cost, lam = q, cq, max(lam / 3.0, 1e-15)
                if small:
                    return _Fit(p, cost, nfev, nit, True)
                cost, r, J = evaluate(p, True)
                nfev += n
                break
            lam *= 4.0
            if lam > 1e16:
                return _Fit(p, cost, nfev, nit, True)       # no damped step decreases the cost
    return _Fit(p, cost, nfev, nit, False)


class _Stamps:
    """Star stamps for the mixture fits, as the kernel takes them: pixel offsets from each stamp's nominal
    centre (dx, dy), values and 1/sigma weights, flattened one stamp after another (offsets), and each
    stamp's row length where it is a pixel grid (row_len, _grid_row; 0 otherwise)."""

    def __init__(self, stamps):
        sizes = [st[0].size for st in stamps]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.data = np.concatenate([st[0].ravel() for st in stamps]).astype(np.float64)
        with np.errstate(divide="ignore"):
            self.wt = np.concatenate([1.0 / np.sqrt(st[1].ravel()) for st in stamps]).astype(np.float64)
        self.dx = np.concatenate([st[2].ravel() for st in stamps]).astype(np.float64)
        self.dy = np.concatenate([st[3].ravel() for st in stamps]).astype(np.float64)
        self.row_len = np.array([_grid_row(st[2], st[3]) for st in stamps], np.int64)
        self.n = len(stamps)

    def one(self, i):
        """Stamp i alone."""
        sl = slice(self.offsets[i], self.offsets[i + 1])
        out = _Stamps.__new__(_Stamps)
        out.offsets = np.array([0, sl.stop - sl.start], np.int64)
        out.data, out.wt, out.dx, out.dy = self.data[sl], self.wt[sl], self.dx[sl], self.dy[sl]
        out.row_len = self.row_len[i:i + 1]
        out.n = 1
        return out

    def evaluator(self, P, cols, K):
        """evaluate(p, jacobian) for _lsq: the stamps' residuals with the columns `cols` of the parameter
        rows P (one per stamp, NP wide; copied) set to p, the same p in every row."""
        P = np.array(P, dtype=np.float64, order="C")
        cols = np.asarray(cols, dtype=np.int64)
        r = np.empty(self.data.size)
        J = np.empty((self.data.size, cols.size))
        empty = np.empty((0, cols.size))

        def evaluate(p, jacobian):
            P[:, cols] = p
            rr = np.empty_like(r) if not jacobian else r
            cost = _psffit.residuals(P, self.dx, self.dy, self.data, self.wt, self.offsets, self.row_len, K, cols, rr,
                                     J if jacobian else empty, jacobian)
            return cost, rr, (J if jacobian else None)
        return evaluate


def _grid_row(dx, dy):
    """Pixels per row when the stamp's offsets (2-D, rows of constant dy) step by 1 in dx along each row (the
    kernel then carries each exponential along the row), else 0."""
    dx, dy = np.asarray(dx, np.float64), np.asarray(dy, np.float64)
    if dx.ndim != 2 or dx.shape != dy.shape or dx.shape[1] < 2:
        return 0
    regular = np.all(np.abs(np.diff(dx, axis=1) - 1.0) <= 1e-9) and np.all(dy == dy[:, :1])
    return int(dx.shape[1]) if regular else 0


K_COMPONENTS = 3
#: Evaluation budget of each star's first, all-parameter fit in estimate_psf (a Jacobian counts as one per
#: parameter): most stars converge within 200; the rest only feed a median.
INITIAL_NFEV = 500
STAMP_RADIUS = 15            # pixels: stamps are (2R+1)^2, wide enough to constrain the wing


def mixture_overlap(w, a, b, c):
    """integral of P^2 for Gaussian mixtures given as (n, K) arrays: sum_jk w_j w_k N(0; 0, C_j + C_k)."""
    A = a[:, :, None] + a[:, None, :]
    B = b[:, :, None] + b[:, None, :]
    C = c[:, :, None] + c[:, None, :]
    return (w[:, :, None] * w[:, None, :] / (2 * np.pi * np.sqrt(A * C - B * B))).sum((1, 2))


def _poly_terms(x, y, order, nx, ny):
    """Monomials of the sensor position scaled to [-1, 1], up to total degree `order`."""
    u = 2.0 * np.asarray(x, dtype=np.float64) / max(nx - 1, 1) - 1.0
    v = 2.0 * np.asarray(y, dtype=np.float64) / max(ny - 1, 1) - 1.0
    return np.stack([u ** i * v ** j for i in range(order + 1) for j in range(order + 1 - i)], -1)


@dataclass
class MixturePSF:
    """K concentric Gaussians: weight w_k, size s_k * sigma(x, y), common ellipticity (e1, e2)(x, y).

    The covariance of component k is (s_k sigma)^2 R(e) with R(e) = [[1+e1, e2], [e2, 1-e1]] / sqrt(1 - e^2),
    which keeps the determinant (the area) equal to (s_k sigma)^4 for any ellipticity.
    """
    weights: np.ndarray          # (K,), sum 1
    rel_sizes: np.ndarray        # (K,), first = 1
    size_coef: np.ndarray        # polynomial coefficients of log sigma (pixels)
    e1_coef: np.ndarray
    e2_coef: np.ndarray
    order: int
    nx: int
    ny: int

    def _fields(self, x, y):
        T = _poly_terms(x, y, self.order, self.nx, self.ny)
        return np.exp(T @ self.size_coef), T @ self.e1_coef, T @ self.e2_coef

    def components_at(self, x, y):
        """(w, cxx, cxy, cyy), each (n, K), pixel^2, pixel response included."""
        x, y = np.atleast_1d(x), np.atleast_1d(y)
        sig, e1, e2 = self._fields(x, y)
        norm = 1.0 / np.sqrt(np.maximum(1.0 - e1 ** 2 - e2 ** 2, 1e-6))
        s2 = (sig[:, None] * self.rel_sizes[None, :]) ** 2
        w = np.broadcast_to(self.weights, s2.shape).copy()
        return (w, s2 * ((1 + e1) * norm)[:, None], s2 * (e2 * norm)[:, None], s2 * ((1 - e1) * norm)[:, None])

    def effective_area(self, x, y):
        """Noise-equivalent area 1 / integral(P^2) (pixels): sets the PSF-photometry noise."""
        w, a, b, c = self.components_at(np.atleast_1d(x), np.atleast_1d(y))
        return 1.0 / mixture_overlap(w, a, b, c)

    def fwhm_at(self, x, y):
        """FWHM (pixels) of the circularised profile, from a fine radial evaluation."""
        sig = self._fields(np.atleast_1d(x), np.atleast_1d(y))[0]
        r = np.linspace(0, 6, 6001)[None, :] * sig[:, None]
        s = self.rel_sizes[None, :, None] * sig[:, None, None]
        prof = (self.weights[None, :, None] / s ** 2 * np.exp(-0.5 * (r[:, None, :] / s) ** 2)).sum(1)
        half = prof[:, :1] / 2
        return 2 * r[np.arange(len(r)), np.argmax(prof < half, axis=1)]

    def to_dict(self):
        return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in self.__dict__.items()}

    @classmethod
    def from_dict(cls, d):
        d = json.loads(d) if isinstance(d, str) else d
        return cls(**{k: (np.asarray(v) if isinstance(v, list) else v) for k, v in d.items()})


def _stamp(image, variance, x, y, R=STAMP_RADIUS):
    ix, iy = int(round(x)), int(round(y))
    sl = (slice(iy - R, iy + R + 1), slice(ix - R, ix + R + 1))
    yy, xx = np.mgrid[iy - R:iy + R + 1, ix - R:ix + R + 1]
    return image[sl].astype(np.float64), variance[sl].astype(np.float64), xx - x, yy - y


def _rel_sizes(q):
    """Sizes relative to the first component, increasing (1 < s_2 < s_3 ...), so that components
    cannot swap between stars and the per-star shapes can be averaged."""
    return np.concatenate([[1.0], np.cumprod(1.0 + np.exp(q))])


def _n_params(K):
    """Parameters of one star: flux, centre, log sigma, e1, e2, K-1 log size increments, K-1 weight logits
    (the kernel's order, ext/_psffit.pyx)."""
    return 6 + 2 * (K - 1)


def _start(stamp, K):
    """Where a star's fit starts: its flux, the centre, a 1.3 px core, round, the usual wings."""
    return np.concatenate([[stamp.sum(), 0.0, 0.0, np.log(1.3), 0.0, 0.0], np.log([0.8, 1.2][:K - 1]),
                           np.log([0.3, 0.05][:K - 1])])


def _errors(evaluate, p):
    """1-sigma errors of the parameters p at a fit's minimum: the diagonal of (J^T J)^-1, scaled by the
    reduced chi^2 when the model fits worse than the noise says (inf where J^T J is singular)."""
    cost, r, J = evaluate(np.asarray(p, np.float64), True)
    dof = max(r.size - p.size, 1)
    A, g = np.empty((p.size, p.size)), np.empty(p.size)
    _psffit.normal_equations(J, r, A, g)
    with np.errstate(all="ignore"):
        try:
            cov = np.linalg.inv(A)
        except np.linalg.LinAlgError:
            return np.full(p.size, np.inf)
        return np.sqrt(np.abs(np.diag(cov)) * max(2.0 * cost / dof, 1.0))


def fit_star(stamp, var, dx, dy, K=K_COMPONENTS, p0=None, max_nfev=2000):
    """Least-squares fit of one star stamp; returns (parameter vector, _Fit)."""
    if not 1 <= K <= 3:
        raise ValueError(f"fit_star: K = {K} components, expected 1 to 3")
    p0 = _start(stamp, K) if p0 is None else p0
    one = _Stamps([(stamp, var, dx, dy)])
    res = _lsq(one.evaluator(np.asarray(p0, np.float64)[None, :], np.arange(_n_params(K)), K), p0, max_nfev=max_nfev)
    return res.x, res


def _fit_fields(T, fields, err, clip, order):
    """The polynomials (coefficients on the terms T) of the stars' (log sigma, e1, e2) `fields` with their
    errors `err` (n, 3), and which stars they keep: three rounds of weighted least squares, each star weighted
    by 1 / sqrt(scatter^2 + its error^2) (equal weights at first; scatter: 1.4826 MAD of the kept stars'
    residuals), keeping the stars within clip times that of every polynomial. A star whose fit ran away
    (ellipticity >= 1, or no finite error) measures nothing and is left out; CalibrationError when fewer than
    two stars per term remain."""
    n_terms = T.shape[1]
    good = np.isfinite(fields).all(1) & np.isfinite(err).all(1) & (np.hypot(fields[:, 1], fields[:, 2]) < 1.0)
    if good.sum() < 2 * n_terms:
        raise CalibrationError(f"estimate_psf: {int(good.sum())} of {len(fields)} stars with a converged fit, "
                               f"need at least {2 * n_terms} for an order-{order} model")
    keep, w = good.copy(), np.ones(fields.shape)
    for _ in range(3):
        coefs = [np.linalg.lstsq(T[keep] * w[keep, j, None], fields[keep, j] * w[keep, j], rcond=None)[0]
                 for j in range(3)]
        r = fields - np.column_stack([T @ c for c in coefs])
        s = 1.4826 * np.median(np.abs(r[keep]), axis=0) + 1e-12
        sigma = np.hypot(s, err)
        keep = good & np.all(np.abs(r) < clip * sigma, axis=1)
        w = 1.0 / sigma
    return coefs, keep


def estimate_psf(image, variance, x, y, *, nx=None, ny=None, order=1, K=K_COMPONENTS, clip=3.0):
    """Fit the MixturePSF to stars at (x, y) (bright, isolated, unsaturated; chosen by the caller).

    Global shape (weights, relative sizes) from a joint fit of the brightest stars' stacked profile;
    then each star's size and ellipticity with the shape fixed, and the polynomials fitted to them, each
    star weighted by its own error and the scatter about the fit, with clipping; stars whose fit ran away
    are left out (CalibrationError when too few remain).
    """
    ny_, nx_ = image.shape
    nx, ny = nx or nx_, ny or ny_
    R = STAMP_RADIUS
    ok = (x > R + 1) & (x < nx_ - R - 2) & (y > R + 1) & (y < ny_ - R - 2)
    x, y = np.asarray(x)[ok], np.asarray(y)[ok]
    if len(x) < 3 * (order + 1) * (order + 2) // 2:
        raise CalibrationError(f"estimate_psf: {len(x)} usable stars, need at least "
                         f"{3 * (order + 1) * (order + 2) // 2} for an order-{order} model")
    raw = [_stamp(image, variance, xi, yi) for xi, yi in zip(x, y)]
    stamps = _Stamps(raw)
    # each star on its own, every parameter free: a start for the joint fits below, whose shape is the median
    # of these (a few stars whose components trade against each other stop at the evaluation budget)
    P = np.array([fit_star(*st, K=K, max_nfev=INITIAL_NFEV)[0] for st in raw])
    shape = np.median(P[:, 6:], axis=0)
    per = P[:, :6]
    star_cols, shape_cols = np.arange(6), np.arange(6, _n_params(K))
    # alternate: per-star (flux, centre, size, ellipticity) with the shape fixed, then the global
    # shape (relative sizes and weights of the components) with every star's parameters fixed
    for _ in range(3):
        per = np.array([_lsq(stamps.one(i).evaluator(np.concatenate([q, shape])[None, :], star_cols, K), q,
                             max_nfev=500).x for i, q in enumerate(per)])
        shape = _lsq(stamps.evaluator(np.column_stack([per, np.broadcast_to(shape, (len(per), shape.size))]),
                                      shape_cols, K), shape, max_nfev=200).x
    # each star's own errors on (log sigma, e1, e2): a faint star's measurement scatters more than a
    # bright one's, so the clipping below widens by it (in quadrature) rather than rejecting faint stars
    err = np.array([_errors(stamps.one(i).evaluator(np.concatenate([q, shape])[None, :], star_cols, K), q)[3:6]
                    for i, q in enumerate(per)])
    T = _poly_terms(x, y, order, nx, ny)
    coefs, keep = _fit_fields(T, per[:, 3:6], err, clip, order)
    rel = _rel_sizes(shape[:K - 1])
    wl = np.concatenate([[0.0], shape[K - 1:]])
    w = np.exp(wl) / np.exp(wl).sum()
    return MixturePSF(w, rel, coefs[0], coefs[1], coefs[2], order, nx, ny), {
        "n_stars": int(len(x)), "n_used": int(keep.sum())}


def fwhm_from_json(psf_json, x, y):
    """FWHM (pixels) at one sensor position of a PSF model stored as JSON (a calexp's `psf` attribute)."""
    return float(MixturePSF.from_dict(json.loads(psf_json)).fwhm_at(np.array([x]), np.array([y]))[0])


def mixture_from_stamp(stamp, K=K_COMPONENTS):
    """A position-independent MixturePSF (order 0) fitted by least squares (fit_star) to a centred, odd,
    unit-sum PSF stamp, e.g. a difference image's PSF."""
    stamp = np.asarray(stamp, np.float64)
    h = stamp.shape[0] // 2
    dy, dx = np.mgrid[-h:h + 1, -h:h + 1].astype(np.float64)
    var = np.full(stamp.shape, (1e-3 * stamp.max()) ** 2)
    p, _ = fit_star(stamp, var, dx, dy, K=K)
    lsig, e1, e2 = min(p[3], 5.0), p[4], p[5]
    e = np.hypot(e1, e2)
    if e > 0.9:
        e1, e2 = e1 * 0.9 / e, e2 * 0.9 / e
    wl = np.concatenate([[0.0], p[5 + K:5 + 2 * K - 1]])
    return MixturePSF(np.exp(wl) / np.exp(wl).sum(), _rel_sizes(p[6:6 + K - 1]), np.array([lsig]), np.array([e1]),
                      np.array([e2]), 0, 1, 1)
