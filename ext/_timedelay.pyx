"""Private kernel: the damped random walk's banded Cholesky factor and one triangular solve, in one pass.

Called only by twinkles_hpc.timedomain.timedelay, which sorts the samples, validates every input and documents
the likelihood; nothing is checked twice here. One call runs with the GIL released.
"""
from libc.math cimport exp, expm1, log, sqrt


def drw_solve(const double[::1] t, const double[::1] w, const double[:, ::1] z, double tau, double var,
              double same_time, double[:, ::1] h):
    """For samples at sorted times `t` with inverse variances `w` and columns `z` (n, k): the DRW at the m
    distinct times (samples closer than `same_time` share one) has a tridiagonal precision Q; with
    A = Q + P^T N^-1 P = U^T U (U upper bidiagonal) and b = P^T N^-1 z, writes h = U^-T b into the first m
    rows of `h` and returns (m, ln|C|) for C = N + P K P^T, or (-1, 0) if A is not positive definite."""
    cdef Py_ssize_t n = t.shape[0], k = z.shape[1], i = 0, j, c, m = 0
    cdef double d, a_diag = 0.0, e_prev = 0.0, dt, r, one_r2, q, u, logdet = 0.0, sum_log_w = 0.0
    cdef double t_prev = 0.0
    cdef bint failed = False
    if n == 0:
        return 0, 0.0
    with nogil:
        while i < n:
            # The next distinct time: its summed weight d and b row (written into h[m] until factored).
            d = 0.0
            for c in range(k):
                h[m, c] = 0.0
            j = i
            while j < n and (j == i or t[j] - t[j - 1] <= same_time):
                d = d + w[j]
                sum_log_w = sum_log_w + log(w[j])
                for c in range(k):
                    h[m, c] = h[m, c] + w[j] * z[j, c]
                j = j + 1
            if m == 0:
                a_diag = 1.0 / var + d
            else:
                # The transition from the previous time completes the previous row, which is factored now.
                dt = t[i] - t_prev
                r = exp(-dt / tau)
                one_r2 = -expm1(-2.0 * dt / tau)
                q = 1.0 / (var * one_r2)
                logdet = logdet + log(one_r2)
                a_diag = a_diag + r * r * q - e_prev * e_prev
                if a_diag <= 0.0:
                    failed = True
                    break
                u = sqrt(a_diag)
                logdet = logdet + 2.0 * log(u)
                for c in range(k):
                    h[m - 1, c] = h[m - 1, c] / u
                e_prev = -r * q / u
                for c in range(k):
                    h[m, c] = h[m, c] - e_prev * h[m - 1, c]
                a_diag = q + d
            t_prev = t[i]
            m = m + 1
            i = j
        if not failed:
            a_diag = a_diag - e_prev * e_prev
            if a_diag <= 0.0:
                failed = True
            else:
                u = sqrt(a_diag)
                logdet = logdet + 2.0 * log(u)
                for c in range(k):
                    h[m - 1, c] = h[m - 1, c] / u
    if failed:
        return -1, 0.0
    # ln|C| = ln|A| - ln|Q| + ln|N|, ln|Q| = -m ln var - sum ln(1 - r^2)
    return m, logdet + m * log(var) - sum_log_w
