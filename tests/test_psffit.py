"""The PSF fit's kernels (ext/_psffit.pyx): the mixture model against an independent evaluation, its analytic
derivatives against finite differences (also where the fit's caps on size and ellipticity act), the normal
equations and the damped Cholesky solve, and the fit's reproducibility."""
import numpy as np
import pytest

from twinkles_hpc import _psffit
from twinkles_hpc.level2 import psf as P


def model(p, dx, dy, K=3):
    """The stamp model written out from the documented parameterisation (ext/_psffit.pyx)."""
    flux, x0, y0, lsig, e1, e2 = p[:6]
    rel = np.concatenate([[1.0], np.cumprod(1 + np.exp(p[6:6 + K - 1]))])
    wl = np.concatenate([[0.0], p[5 + K:5 + 2 * K - 1]])
    w = np.exp(wl) / np.exp(wl).sum()
    sig = np.exp(min(lsig, 5.0))
    e = np.hypot(e1, e2)
    if e > 0.9:
        e1, e2 = e1 * 0.9 / e, e2 * 0.9 / e
    n = 1 / np.sqrt(1 - e1 ** 2 - e2 ** 2)
    X, Y = dx - x0, dy - y0
    u = n * ((1 - e1) * X * X - 2 * e2 * X * Y + (1 + e1) * Y * Y)
    return flux * sum(w[k] * np.exp(-u / (2 * (sig * rel[k]) ** 2)) / (2 * np.pi * (sig * rel[k]) ** 2)
                      for k in range(K))


@pytest.fixture
def stamp():
    rng = np.random.default_rng(5)
    dy, dx = np.mgrid[-15:16, -15:16].astype(float) + 0.3
    p = np.array([5e4, 0.2, -0.1, np.log(1.6), 0.08, -0.05, np.log(0.7), np.log(1.1), np.log(0.4), np.log(0.06)])
    var = 900.0 + model(p, dx, dy)
    data = model(p, dx, dy) + rng.normal(0, np.sqrt(var))
    return p, (data, var, dx, dy)


@pytest.mark.parametrize("shift", [np.zeros(10),
                                   np.array([0, .3, -.2, .2, .9, .6, .1, -.2, .3, -.4]),      # |e| capped
                                   np.array([0, 0, 0, 4.5, 0, 0, 0, 0, 0, 0])])              # sigma capped
def test_residuals_and_analytic_jacobian(stamp, shift):
    p, st = stamp
    q = p + shift
    ev = P._Stamps([st]).evaluator(q[None, :], np.arange(10), 3)
    cost, r, J = ev(q.copy(), True)
    r, J = r.copy(), J.copy()
    ref = ((model(q, st[2], st[3]) - st[0]) / np.sqrt(st[1])).ravel()
    assert np.allclose(r, ref, rtol=1e-12, atol=1e-12 * np.abs(ref).max())
    assert cost == pytest.approx(0.5 * (ref ** 2).sum(), rel=1e-12)
    for j in range(10):
        h = 1e-6 * max(abs(q[j]), 1.0)
        up, dn = q.copy(), q.copy()
        up[j] += h
        dn[j] -= h
        num = (ev(up, False)[1] - ev(dn, False)[1]) / (2 * h)
        scale = np.abs(num).max() + np.abs(J[:, j]).max()
        roundoff = 1e-13 * np.abs(st[0] / np.sqrt(st[1])).max() / h       # of the central difference
        assert np.abs(J[:, j] - num).max() <= 2e-5 * scale + roundoff, j


def test_normal_equations_and_damped_solve():
    rng = np.random.default_rng(2)
    J, r = rng.normal(size=(300, 6)), rng.normal(size=300)
    A, g = np.empty((6, 6)), np.empty(6)
    _psffit.normal_equations(J, r, A, g)
    assert np.allclose(A, J.T @ J) and np.allclose(g, J.T @ r) and np.array_equal(A, A.T)
    d, x = np.diag(A).copy(), np.empty(6)
    assert _psffit.damped_solve(A, d, 0.1, g, x)
    assert np.allclose(x, np.linalg.solve(A + 0.1 * np.diag(d), -g))
    x0 = x.copy()
    assert not _psffit.damped_solve(-A, d, 0.0, g, x) and np.array_equal(x, x0)    # not positive definite


@pytest.mark.parametrize("lsig", [np.log(1.6), np.log(0.02), 4.9])
def test_row_recurrence_matches_the_per_pixel_exponentials(stamp, lsig):
    """On a grid stamp each exponential is carried along the row; the same stamp given as scattered pixels
    (row_len 0) takes exp per pixel: residuals and Jacobian agree to 1e-12 of their scale, also where the
    recurrence's factors would leave double range (sigma 0.02 px: it falls back to exp per pixel) and for a
    wide star."""
    p, st = stamp
    q = p.copy()
    q[3] = lsig
    grid = P._Stamps([st])
    assert grid.row_len[0] == 31
    flat = P._Stamps([tuple(a.ravel()[None, :] for a in st)])
    assert flat.row_len[0] == 0
    got = [s.evaluator(q[None, :], np.arange(10), 3)(q.copy(), True) for s in (grid, flat)]
    (c1, r1, J1), (c2, r2, J2) = got
    assert np.isfinite(r1).all() and np.isfinite(J1).all()
    assert np.abs(r1 - r2).max() <= 1e-12 * np.abs(r2).max()
    assert np.all(np.abs(J1 - J2).max(0) <= 1e-12 * np.abs(J2).max(0) + 1e-300)


@pytest.mark.parametrize("p", [1, 4, 10, 16, 20])
def test_normal_equations_sum_rows_in_order(p):
    """Every entry of J^T J and J^T r is the sum over rows in their order, bit for bit (the vector path up
    to 16 parameters and the plain one above), and the matrix is exactly symmetric."""
    rng = np.random.default_rng(p)
    J, r = rng.normal(size=(97, p)), rng.normal(size=97)
    A, g = np.empty((p, p)), np.empty(p)
    _psffit.normal_equations(J, r, A, g)
    A0, g0 = np.zeros((p, p)), np.zeros(p)
    for i in range(J.shape[0]):
        A0 += J[i][:, None] * J[i][None, :]
        g0 += J[i] * r[i]
    assert np.array_equal(A, A0) and np.array_equal(g, g0) and np.array_equal(A, A.T)


def test_star_fit_recovers_the_star_and_repeats_bit_for_bit(stamp):
    p, st = stamp
    a, fit = P.fit_star(*st)
    b, _ = P.fit_star(*st)
    assert fit.converged and np.array_equal(a, b)
    assert a[0] == pytest.approx(p[0], rel=0.01)                     # flux
    assert np.hypot(a[1] - p[1], a[2] - p[2]) < 0.05                  # centre, px (S/N 170: 0.01 per axis)
    # the ellipticity (the sizes and weights of the components trade against each other)
    assert np.hypot(a[4] - p[4], a[5] - p[5]) < 0.03


def test_field_polynomials_leave_out_runaway_fits_and_weigh_by_error():
    """Stars whose fit ran away (ellipticity beyond 1 with no finite error; an error of 1e8) leave the spatial
    model untouched; a noisy star (large error) counts less than a precise one; too few good stars is a
    CalibrationError."""
    rng = np.random.default_rng(3)
    n = 40
    x, y = rng.uniform(0, 2000, n), rng.uniform(0, 2000, n)
    T = P._poly_terms(x, y, 1, 2000, 2000)
    truth = np.array([[0.7, 0.02, -0.01], [0.01, -0.03, 0.0], [-0.02, 0.0, 0.02]])   # per field: terms
    err = np.full((n, 3), 0.002)
    fields = T @ truth.T + rng.normal(0, 0.002, (n, 3))
    fields[5], err[5] = [2003.0, -4790.7, 3603.6], np.inf
    fields[9], err[9] = [-1.5, 3.9, 0.13], 1e8
    fields[12], err[12] = fields[12] + 0.5, 0.5            # imprecise and off: within its own error
    coefs, keep = P._fit_fields(T, fields, err, 3.0, 1)
    assert not keep[5] and not keep[9] and keep.sum() >= n - 5
    for j in range(3):
        assert np.allclose(coefs[j], truth[j], atol=0.004)
    with pytest.raises(P.CalibrationError, match="stars with a converged fit"):
        P._fit_fields(T[:6], fields[:6], err[:6], 3.0, 1)     # 5 good stars, 3 terms
