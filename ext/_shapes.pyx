"""Private kernel of twinkles_hpc.level2.shapes: the adaptive-moment iteration of a batch of stamps.

Called only by shapes._moments, which cuts the stamps, checks the inputs and documents the method; nothing
is checked twice here. Releases the GIL.
"""
from libc.math cimport exp, fabs, floor, sqrt


cdef inline void _add(double *m, double w, double dx, double dy) noexcept nogil:
    """Add a pixel of weighted value w at offset (dx, dy) to the sums m = (S, Sx, Sy, Sxx, Syy, Sxy)."""
    m[0] = m[0] + w
    m[1] = m[1] + w * dx
    m[2] = m[2] + w * dy
    m[3] = m[3] + w * dx * dx
    m[4] = m[4] + w * dy * dy
    m[5] = m[5] + w * dx * dy


def iterate(const double[:, :, ::1] st, const double[:, ::1] dx0, const double[:, ::1] dy0, double sigma0,
            int max_iter, double tol, double max_shift, double[::1] wxx, double[::1] wyy, double[::1] wxy,
            double[::1] mx, double[::1] my, unsigned char[::1] good):
    """For each stamp n (st[n]: pixel values, 0 where left out; dx0[n, c], dy0[n, r]: the column's and
    row's offsets from the start position), iterate W <- 2 M(W) from W = sigma0^2 I: M the second moments
    of exp(-d^T W^-1 d / 2) st (the exponentials by a recurrence along each row) about the weighted
    centroid, which moves the centre (mx, my) too. Stops when |dWxx| + |dWyy| + 2 |dWxy| < tol (Wxx + Wyy)
    (good = 1), when the weighted flux or the moments are not positive (the last W kept), when the centre
    has moved more than max_shift, or after max_iter updates. Fills wxx, wyy, wxy, mx, my, good."""
    cdef Py_ssize_t n = st.shape[0], S = st.shape[1], k, r, c, c0, it
    cdef double m[6]
    cdef double a, b, cc, q, w0, ratio, det, dx, dy, w, v, ex, ey, nxx, nyy, nxy, change
    cdef double txx, tyy, txy, cx, cy
    cdef bint lost
    with nogil:
        for k in range(n):
            txx = sigma0 * sigma0
            tyy = txx
            txy = 0.0
            cx = 0.0
            cy = 0.0
            good[k] = 0
            for it in range(max_iter):
                det = txx * tyy - txy * txy
                a = tyy / det
                b = -txy / det
                cc = txx / det
                q = exp(-a)
                for r in range(6):
                    m[r] = 0.0
                for r in range(S):
                    dy = dy0[k, r] - cy
                    # along the row the weight is exp of a concave parabola in dx, largest at dx = -b dy / a:
                    # one exp at the column nearest that peak, then outwards each neighbour's ratio, the ratio
                    # itself changing by q = exp(-a) per column (the columns are 1 px apart)
                    dx = dx0[k, 0] - cx
                    c0 = <Py_ssize_t> floor(-b * dy / a - dx + 0.5)
                    c0 = 0 if c0 < 0 else (S - 1 if c0 > S - 1 else c0)
                    dx = dx0[k, c0] - cx
                    w0 = exp(-0.5 * (a * dx * dx + 2.0 * b * dx * dy + cc * dy * dy))
                    w = w0
                    ratio = exp(-0.5 * a * (2.0 * dx + 1.0) - b * dy)
                    for c in range(c0, S):                 # the peak and rightwards
                        v = st[k, r, c]
                        if v != 0.0:
                            _add(m, w * v, dx0[k, c] - cx, dy)
                        w = w * ratio
                        ratio = ratio * q
                    dx = dx0[k, c0] - cx
                    w = w0
                    ratio = exp(-0.5 * a * (1.0 - 2.0 * dx) + b * dy)
                    for c in range(c0 - 1, -1, -1):        # leftwards
                        w = w * ratio
                        ratio = ratio * q
                        v = st[k, r, c]
                        if v != 0.0:
                            _add(m, w * v, dx0[k, c] - cx, dy)
                if not m[0] > 0.0:
                    break
                ex = m[1] / m[0]
                ey = m[2] / m[0]
                nxx = 2.0 * (m[3] / m[0] - ex * ex)
                nyy = 2.0 * (m[4] / m[0] - ey * ey)
                nxy = 2.0 * (m[5] / m[0] - ex * ey)
                if not (nxx > 0.0 and nyy > 0.0 and nxx * nyy - nxy * nxy > 0.0):
                    break
                change = fabs(nxx - txx) + fabs(nyy - tyy) + 2.0 * fabs(nxy - txy)
                txx = nxx
                tyy = nyy
                txy = nxy
                cx = cx + ex
                cy = cy + ey
                lost = sqrt(cx * cx + cy * cy) > max_shift
                if change < tol * (nxx + nyy):
                    good[k] = not lost
                    break
                if lost:
                    break
            wxx[k] = txx
            wyy[k] = tyy
            wxy[k] = txy
            mx[k] = cx
            my[k] = cy
