"""Private kernels of twinkles_hpc.level2.psf: the Gaussian-mixture star model on pixel stamps, its residuals
and their analytic derivatives, and the small dense algebra of a Levenberg-Marquardt step.

Called only by that module, which documents the model and validates every input; nothing is checked twice
here. Every sum runs in one fixed order (pixels in stamp order, stamps in order), so a result depends only on
the inputs, never on alignment, threads or the heap: the fits behind the calexps' PSF models are
bit-reproducible.

Parameters of one stamp (NP = 6 + 2 (K - 1)): flux F, centre (x0, y0), log sigma, ellipticity (e1, e2), K - 1
log size increments q_j (relative sizes rel_0 = 1, rel_k = prod_{j<k} (1 + exp q_j)), K - 1 weight logits
(w = softmax(0, l_1, ...)). Component k has the covariance (sigma rel_k)^2 n [[1 + e1, e2], [e2, 1 - e1]],
n = (1 - e^2)^-1/2, of determinant (sigma rel_k)^4, so with s = sigma rel_k and
u = n ((X^2 + Y^2) - e1 (X^2 - Y^2) - 2 e2 X Y):

    model = F sum_k w_k exp(-u / (2 s_k^2)) / (2 pi s_k^2).

While a fit explores, log sigma is capped at 5 and |e| at 0.9 (e scaled back onto the circle); the
derivatives are those of the capped model (zero beyond the size cap, through the projection beyond |e| = 0.9).
"""
from libc.math cimport exp, sqrt, M_PI
from libc.stdlib cimport free, malloc

cdef enum:
    MAXK = 8
#: Largest |exponent| the row recurrence's factors may take (exp(700) ~ 1e304).
cdef double RECUR_MAX = 700.0


cdef bint _row_exps(double X, double Y, Py_ssize_t L, double n, double e1, double e2, int K,
                    const double *inv2s2, double *E, double *R, double *Q) noexcept nogil:
    """For a row of L pixels at X, X + 1, ..., Y: per component k, E_k = exp(-u(X, Y) h_k) (h_k = inv2s2[k])
    and the factors of the recurrence E(X + 1) = E(X) R(X), R(X + 1) = R(X) Q: u(X + 1) - u(X) =
    alpha (2 X + 1) + beta with alpha = n (1 - e1), beta = -2 n e2 Y, so R(X) = exp(-h (alpha (2 X + 1) +
    beta)) and Q = exp(-2 h alpha). False, with nothing usable, where an exponent along the row leaves
    [-RECUR_MAX, RECUR_MAX] (the factors would overflow or vanish): the caller then takes exp per pixel."""
    cdef double alpha = n * (1.0 - e1), beta = -2.0 * n * e2 * Y, X1 = X + (L - 1)
    cdef double u0 = n * ((X * X + Y * Y) - e1 * (X * X - Y * Y) - e2 * (2.0 * X * Y))
    cdef double u1 = n * ((X1 * X1 + Y * Y) - e1 * (X1 * X1 - Y * Y) - e2 * (2.0 * X1 * Y))
    cdef double h, r0, r1, q
    cdef int k
    for k in range(K):
        h = inv2s2[k]
        r0 = -h * (alpha * (2.0 * X + 1.0) + beta)
        r1 = -h * (alpha * (2.0 * X1 + 1.0) + beta)
        q = -2.0 * h * alpha
        if not (h * u0 <= RECUR_MAX and h * u1 <= RECUR_MAX and -RECUR_MAX <= r0 <= RECUR_MAX
                and -RECUR_MAX <= r1 <= RECUR_MAX and -RECUR_MAX <= q <= RECUR_MAX):
            return False
        E[k] = exp(-h * u0)
        R[k] = exp(r0)
        Q[k] = exp(q)
    return True


def residuals(const double[:, ::1] P, const double[::1] dx, const double[::1] dy, const double[::1] data,
              const double[::1] wt, const long[::1] offsets, const long[::1] row_len, int K,
              const long[::1] cols, double[::1] r, double[:, ::1] J, bint jacobian):
    """r[i] = (model(P[s]) at (dx[i], dy[i]) - data[i]) * wt[i] for the pixels offsets[s] <= i < offsets[s+1]
    of stamp s; with `jacobian`, J[i, j] = d r[i] / d P[s, cols[j]]. Returns 0.5 sum r^2.

    row_len[s] > 0: stamp s is a grid of rows of that many pixels, dx stepping by 1 along a row and dy
    constant on it; each component's exponential is then taken once per row and carried along it by the
    recurrence of _row_exps (two multiplies a pixel; relative error ~1e-14 over a 31-pixel row), per pixel
    where the recurrence's factors would leave double range, and per pixel for row_len[s] = 0."""
    cdef Py_ssize_t n_stamps = P.shape[0], s, i, j, k, c, ncol = cols.shape[0], L, col = 0
    cdef bint recur = False
    cdef double E[MAXK]
    cdef double Gt[MAXK]
    cdef double Gs[MAXK]
    cdef double S0, S1
    cdef double Rf[MAXK]
    cdef double Qf[MAXK]
    cdef int NP = 6 + 2 * (K - 1)
    cdef double F, x0, y0, lsig, sig, e1, e2, ee, emag, n, n2, X, Y, a, b, cc, u, m, M, G, t
    cdef double du_e1, du_e2, dm_dx0, dm_dy0, dm_ls, dm_e1, dm_e2, de11, de12, de21, de22, d1, d2
    cdef bint sig_capped, e_capped
    cdef double cost = 0.0
    cdef double rel[MAXK]
    cdef double inv2s2[MAXK]
    cdef double norm[MAXK]
    cdef double w[MAXK]
    cdef double g[MAXK]
    cdef double sig_frac[MAXK]      # d ln rel_k / d q_j = sigmoid(q_j) for j < k
    cdef double *grad = <double *> malloc(NP * sizeof(double))
    if grad == NULL:
        raise MemoryError()
    try:
        with nogil:
            for s in range(n_stamps):
                F, x0, y0, lsig = P[s, 0], P[s, 1], P[s, 2], P[s, 3]
                e1, e2 = P[s, 4], P[s, 5]
                sig_capped = lsig > 5.0
                sig = exp(5.0 if sig_capped else lsig)
                emag = sqrt(e1 * e1 + e2 * e2)
                e_capped = emag > 0.9
                de11, de12, de21, de22 = 1.0, 0.0, 0.0, 1.0
                if e_capped:                # e' = 0.9 e / |e| and its derivative
                    t = 0.9 / emag
                    de11 = t * (1.0 - e1 * e1 / (emag * emag))
                    de12 = -t * e1 * e2 / (emag * emag)
                    de21 = de12
                    de22 = t * (1.0 - e2 * e2 / (emag * emag))
                    e1, e2 = e1 * t, e2 * t
                ee = 1.0 - e1 * e1 - e2 * e2
                n = 1.0 / sqrt(ee)
                n2 = n * n
                rel[0] = 1.0
                for k in range(1, K):
                    t = exp(P[s, 5 + k])
                    rel[k] = rel[k - 1] * (1.0 + t)
                    sig_frac[k - 1] = t / (1.0 + t)
                w[0] = 1.0
                t = 1.0
                for k in range(1, K):
                    w[k] = exp(P[s, 4 + K + k])
                    t += w[k]
                for k in range(K):
                    w[k] = w[k] / t
                    a = sig * rel[k]
                    inv2s2[k] = 0.5 / (a * a)
                    norm[k] = 1.0 / (2.0 * M_PI * a * a)
                L = row_len[s]
                for i in range(offsets[s], offsets[s + 1]):
                    X = dx[i] - x0
                    Y = dy[i] - y0
                    if L > 0:
                        col = (i - offsets[s]) % L
                        if col == 0:
                            recur = _row_exps(X, Y, L, n, e1, e2, K, inv2s2, E, Rf, Qf)
                    a = X * X + Y * Y
                    b = X * X - Y * Y
                    cc = 2.0 * X * Y
                    u = n * (a - e1 * b - e2 * cc)
                    M = 0.0
                    if L > 0 and recur:
                        for k in range(K):
                            g[k] = E[k] * norm[k]
                            E[k] = E[k] * Rf[k]
                            Rf[k] = Rf[k] * Qf[k]
                            M = M + w[k] * g[k]
                    else:
                        for k in range(K):
                            g[k] = exp(-u * inv2s2[k]) * norm[k]
                            M = M + w[k] * g[k]
                    m = F * M
                    r[i] = (m - data[i]) * wt[i]
                    cost = cost + r[i] * r[i]
                    if not jacobian:
                        continue
                    # d model / d parameter, for every parameter, then the columns asked for
                    du_e1 = e1 * n2 * u - n * b
                    du_e2 = e2 * n2 * u - n * cc
                    # with G_k = F w_k g_k: every derivative below is a combination of S0 = sum G_k and
                    # S1 = sum G_k / s_k^2 (d u / d x0 = -2 n ((1 - e1) X - e2 Y), ...)
                    S0 = 0.0
                    S1 = 0.0
                    for k in range(K):
                        G = F * w[k] * g[k]
                        Gt[k] = G * (2.0 * inv2s2[k])           # G_k / s_k^2
                        Gs[k] = G
                        S0 = S0 + G
                        S1 = S1 + Gt[k]
                    dm_dx0 = n * ((1.0 - e1) * X - e2 * Y) * S1
                    dm_dy0 = n * ((1.0 + e1) * Y - e2 * X) * S1
                    dm_ls = u * S1 - 2.0 * S0
                    dm_e1 = -0.5 * S1 * du_e1
                    dm_e2 = -0.5 * S1 * du_e2
                    grad[0] = M
                    grad[1] = dm_dx0
                    grad[2] = dm_dy0
                    grad[3] = 0.0 if sig_capped else dm_ls
                    d1 = dm_e1 * de11 + dm_e2 * de21
                    d2 = dm_e1 * de12 + dm_e2 * de22
                    grad[4] = d1
                    grad[5] = d2
                    t = 0.0
                    for j in range(K - 2, -1, -1):              # size increment q_j moves components k > j
                        t = t + (u * Gt[j + 1] - 2.0 * Gs[j + 1])
                        grad[6 + j] = t * sig_frac[j]
                    for j in range(1, K):                       # weight logit l_j
                        grad[4 + K + j] = F * w[j] * (g[j] - M)
                    for j in range(ncol):
                        J[i, j] = grad[cols[j]] * wt[i]
    finally:
        free(grad)
    return 0.5 * cost


cdef extern from *:
    """
    /* acc[j p + k] += sum over rows i (in order) of J[i, j] J[i, k], gg[j] += J[i, j] r[i]. Up to 16
       parameters, each accumulator row acc[j, :] is a pair of 8-lane vectors (lane k: one accumulator, the
       rows in order: the same bits as scalar loops), the row padded with zeros into a local buffer. */
    typedef double tw_v8 __attribute__((vector_size(64)));
    static void tw_normal(const double *J, const double *r, Py_ssize_t n, Py_ssize_t p, double *acc,
                          double *gg) {
        if (p <= 16) {
            tw_v8 A[16][2], G[2], R[2];
            double row[16] __attribute__((aligned(64))) = {0};
            for (int j = 0; j < 16; j++) { A[j][0] = (tw_v8) {0}; A[j][1] = (tw_v8) {0}; }
            G[0] = (tw_v8) {0};
            G[1] = (tw_v8) {0};
            for (Py_ssize_t i = 0; i < n; i++) {
                for (Py_ssize_t k = 0; k < p; k++) row[k] = J[i * p + k];
                R[0] = *(const tw_v8 *) row;
                R[1] = *(const tw_v8 *) (row + 8);
                double v = r[i];
                G[0] = G[0] + R[0] * v;
                if (p > 8) G[1] = G[1] + R[1] * v;
                for (Py_ssize_t j = 0; j < p; j++) {
                    double a = row[j];
                    A[j][0] = A[j][0] + a * R[0];
                    if (p > 8) A[j][1] = A[j][1] + a * R[1];
                }
            }
            for (Py_ssize_t j = 0; j < p; j++) {
                gg[j] = G[j / 8][j % 8];
                for (Py_ssize_t k = 0; k < p; k++) acc[j * p + k] = A[j][k / 8][k % 8];
            }
            return;
        }
        for (Py_ssize_t i = 0; i < n; i++) {
            const double *row = J + i * p;
            double v = r[i];
            for (Py_ssize_t j = 0; j < p; j++) {
                double a = row[j];
                gg[j] = gg[j] + a * v;
                for (Py_ssize_t k = 0; k < p; k++)
                    acc[j * p + k] = acc[j * p + k] + a * row[k];
            }
        }
    }
    """
    void tw_normal(const double *J, const double *r, Py_ssize_t n, Py_ssize_t p, double *acc,
                   double *gg) noexcept nogil


def normal_equations(const double[:, ::1] J, const double[::1] r, double[:, ::1] A, double[::1] g):
    """A = J^T J and g = J^T r, summed over the rows in order. Every entry of A is accumulated (the upper
    triangle's products are the lower's, commuted: the same bits), up to 16 parameters on 8-lane vector
    rows (tw_normal)."""
    cdef Py_ssize_t n = J.shape[0], p = J.shape[1], j, k
    cdef double *acc = <double *> malloc((p * p + p) * sizeof(double))
    if acc == NULL:
        raise MemoryError()
    with nogil:
        for j in range(p * p + p):
            acc[j] = 0.0
        if n > 0:
            tw_normal(&J[0, 0], &r[0], n, p, acc, acc + p * p)
        for j in range(p):
            g[j] = acc[p * p + j]
            for k in range(p):
                A[j, k] = acc[j * p + k]
    free(acc)


def damped_solve(const double[:, ::1] A, const double[::1] d, double lam, const double[::1] g, double[::1] x):
    """Solve (A + lam diag(d)) x = -g by Cholesky; False (x untouched) when the matrix is not positive
    definite."""
    cdef Py_ssize_t n = g.shape[0], i, j, k
    cdef double v
    cdef double *L = <double *> malloc(n * n * sizeof(double))
    cdef double *y = <double *> malloc(n * sizeof(double))
    cdef bint ok = True
    if L == NULL or y == NULL:
        free(L)
        free(y)
        raise MemoryError()
    with nogil:
        for i in range(n):
            if not ok:
                break
            for j in range(i + 1):
                v = A[i, j] + (lam * d[i] if i == j else 0.0)
                for k in range(j):
                    v = v - L[i * n + k] * L[j * n + k]
                if i == j:
                    if not v > 0.0:
                        ok = False
                        break
                    L[i * n + i] = sqrt(v)
                else:
                    L[i * n + j] = v / L[j * n + j]
        if ok:
            for i in range(n):
                v = -g[i]
                for k in range(i):
                    v = v - L[i * n + k] * y[k]
                y[i] = v / L[i * n + i]
            for i in range(n - 1, -1, -1):
                v = y[i]
                for k in range(i + 1, n):
                    v = v - L[k * n + i] * x[k]
                x[i] = v / L[i * n + i]
    free(L)
    free(y)
    return ok
