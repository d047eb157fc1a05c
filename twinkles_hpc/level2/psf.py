"""PSF model estimated from the bright isolated stars of one calexp.

The model is a mixture of K concentric Gaussians sharing one ellipticity: relative weights and
relative sizes are global (fitted to all stars jointly), while the overall size and the two
ellipticity components vary across the sensor as polynomials in (x, y). Each star stamp is fitted at
pixel centres, so the model includes the pixel response (docs/data-model.md). The mixture makes PSF
photometry and convolution analytic, and `components_at(x, y)` is the interface forced photometry uses.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np

from twinkles_hpc.level2 import CalibrationError

class _Fit:
    """The result of _lsq: x (parameters), cost (0.5 sum r^2), nfev, iterations, converged."""

    def __init__(self, x, cost, nfev, nit, converged):
        self.x, self.cost, self.nfev, self.nit, self.converged = x, cost, nfev, nit, converged


def _normal_matrix(J, r):
    """J^T J and J^T r with a fixed order of summation (row by row), whatever the arrays' alignment."""
    return (J[:, :, None] * J[:, None, :]).sum(axis=0), (J * r[:, None]).sum(axis=0)


def _cholesky_solve(A, b):
    """Solve A x = b for a small symmetric positive-definite A in plain Python arithmetic (no BLAS);
    None if A is not positive definite."""
    n = len(b)
    A = A.tolist()
    L = [[0.0] * n for _ in range(n)]
    for i in range(n):
        for j in range(i + 1):
            v = A[i][j] - sum(L[i][k] * L[j][k] for k in range(j))
            if i == j:
                if not v > 0.0:
                    return None
                L[i][i] = math.sqrt(v)
            else:
                L[i][j] = v / L[j][j]
    y = [0.0] * n
    for i in range(n):
        y[i] = (b[i] - sum(L[i][k] * y[k] for k in range(i))) / L[i][i]
    x = [0.0] * n
    for i in reversed(range(n)):
        x[i] = (y[i] - sum(L[k][i] * x[k] for k in range(i + 1, n))) / L[i][i]
    return np.array(x)


def _lsq(fun, p0, max_nfev, *, ftol=1e-12, xtol=1e-10):
    """Levenberg-Marquardt minimisation of 0.5 |fun(p)|^2 from p0: forward-difference Jacobian, damping
    scaled by the running maximum of diag(J^T J) as in MINPACK. Written so that the result is
    bit-reproducible: every sum has a fixed order and the linear solve is plain Python. Library solvers
    were not: MINPACK (scipy least_squares "lm") gave results varying in the last bits between
    processes with the heap's contents (MALLOC_PERTURB_), and the mixture fit's near-degeneracies
    amplify that to ~1e-3 in a star's flux, which would break the calexps' bit-identical guarantee."""
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        p = np.array(p0, dtype=np.float64)
        r = fun(p)
        cost = 0.5 * float((r * r).sum())
        nfev, lam, nit, d = 1, 1e-3, 0, np.zeros(p.size)
        while nfev < max_nfev:
            nit += 1
            J = np.empty((r.size, p.size))
            for i in range(p.size):
                q = p.copy()
                q[i] += 1.5e-8 * max(abs(p[i]), 1.0)
                J[:, i] = (fun(q) - r) / (q[i] - p[i])
            nfev += p.size
            A, g = _normal_matrix(J, r)
            d = np.maximum(d, np.maximum(np.diag(A), 1e-30))
            while nfev < max_nfev:
                step = _cholesky_solve(A + lam * np.diag(d), -g)
                if step is None:
                    lam *= 4.0
                    continue
                q = p + step
                rq = fun(q)
                nfev += 1
                cq = 0.5 * float((rq * rq).sum()) if np.all(np.isfinite(rq)) else np.inf
                if cq < cost:
                    small = (cost - cq <= ftol * cost) or bool(np.all(np.abs(step) <= xtol * (np.abs(p) + xtol)))
                    p, r, cost, lam = q, rq, cq, max(lam / 3.0, 1e-15)
                    if small:
                        return _Fit(p, cost, nfev, nit, True)
                    break
                lam *= 4.0
                if lam > 1e16:
                    return _Fit(p, cost, nfev, nit, True)       # no damped step decreases the cost
    return _Fit(p, cost, nfev, nit, False)

K_COMPONENTS = 3
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


def _model(p, dx, dy, K):
    """Stamp model: flux, centre offset, log sigma, e1, e2, K-1 log size ratios, K-1 weight logits."""
    flux, x0, y0, lsig, e1, e2 = p[:6]
    rel = _rel_sizes(p[6:6 + K - 1])
    wl = np.concatenate([[0.0], p[5 + K:5 + 2 * K - 1]])
    w = np.exp(wl) / np.exp(wl).sum()
    sig = np.exp(min(lsig, 5.0))
    e = np.hypot(e1, e2)
    if e > 0.9:                  # keep the covariance positive definite while the fit explores
        e1, e2 = e1 * 0.9 / e, e2 * 0.9 / e
    norm = 1.0 / np.sqrt(1.0 - e1 ** 2 - e2 ** 2)
    X, Y = dx - x0, dy - y0
    out = np.zeros_like(dx, dtype=np.float64)
    for k in range(K):
        s2 = (sig * rel[k]) ** 2
        a, b, c = (1 + e1) * norm * s2, e2 * norm * s2, (1 - e1) * norm * s2
        det = a * c - b * b
        q = (c * X * X - 2 * b * X * Y + a * Y * Y) / det
        out += w[k] * np.exp(-0.5 * q) / (2 * np.pi * np.sqrt(det))
    return flux * out


def fit_star(stamp, var, dx, dy, K=K_COMPONENTS, p0=None):
    """Least-squares fit of one star stamp; returns the parameter vector."""
    if p0 is None:
        f = stamp.sum()
        p0 = np.concatenate([[f, 0.0, 0.0, np.log(1.3), 0.0, 0.0], np.log([0.8, 1.2][:K - 1]),
                             np.log([0.3, 0.05][:K - 1])])
    res = _lsq(lambda p: ((_model(p, dx, dy, K) - stamp) / np.sqrt(var)).ravel(), p0, max_nfev=2000)
    return res.x, res


def estimate_psf(image, variance, x, y, *, nx=None, ny=None, order=1, K=K_COMPONENTS, clip=3.0):
    """Fit the MixturePSF to stars at (x, y) (bright, isolated, unsaturated; chosen by the caller).

    Global shape (weights, relative sizes) from a joint fit of the brightest stars' stacked profile;
    then each star's size and ellipticity with the shape fixed, and the polynomials fitted with clipping.
    """
    ny_, nx_ = image.shape
    nx, ny = nx or nx_, ny or ny_
    R = STAMP_RADIUS
    ok = (x > R + 1) & (x < nx_ - R - 2) & (y > R + 1) & (y < ny_ - R - 2)
    x, y = np.asarray(x)[ok], np.asarray(y)[ok]
    if len(x) < 3 * (order + 1) * (order + 2) // 2:
        raise CalibrationError(f"estimate_psf: {len(x)} usable stars, need at least "
                         f"{3 * (order + 1) * (order + 2) // 2} for an order-{order} model")
    stamps = [_stamp(image, variance, xi, yi) for xi, yi in zip(x, y)]
    P = np.array([fit_star(*st, K=K)[0] for st in stamps])
    shape = np.median(P[:, 6:], axis=0)
    per = P[:, :6]
    # alternate: per-star (flux, centre, size, ellipticity) with the shape fixed, then the global
    # shape (relative sizes and weights of the components) with every star's parameters fixed
    for _ in range(3):
        per = np.array([_lsq(
            lambda q, st=st: ((_model(np.concatenate([q, shape]), st[2], st[3], K) - st[0])
                              / np.sqrt(st[1])).ravel(), p0, max_nfev=500).x
            for st, p0 in zip(stamps, per)])
        shape = _lsq(
            lambda sh: np.concatenate([((_model(np.concatenate([q, sh]), st[2], st[3], K) - st[0])
                                        / np.sqrt(st[1])).ravel() for st, q in zip(stamps, per)]),
            shape, max_nfev=200).x
    T = _poly_terms(x, y, order, nx, ny)
    keep = np.ones(len(x), bool)
    for _ in range(3):
        coefs = [np.linalg.lstsq(T[keep], per[keep, j], rcond=None)[0] for j in (3, 4, 5)]
        r = np.column_stack([per[:, j] - T @ c for j, c in zip((3, 4, 5), coefs)])
        s = 1.4826 * np.median(np.abs(r[keep]), axis=0) + 1e-12
        keep = np.all(np.abs(r) < clip * s, axis=1)
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
