"""Private kernels of twinkles_hpc.timedomain.diffim: convolution of a whole image with a spatially
varying kernel written as a sum of separable terms weighted by spatial monomials, the OR-propagation of a
mask through a kernel footprint, and in-place arithmetic with a polynomial of the pixel position.

Called only by that wrapper, which validates every input and documents the physics; nothing is checked
twice here. All kernels release the GIL. Sums run in a fixed order (no reassociation), so the results
are bit-identical run to run.
"""
from libc.stdint cimport int32_t, uint16_t


cdef enum:
    MAX_POWERS = 8                                   # distinct powers of x per filter (spatial order + 1)


cdef inline void _ypass1(float *y0, const float *r, float w0, Py_ssize_t x0, Py_ssize_t x1,
                         bint first) noexcept nogil:
    cdef Py_ssize_t x
    if first:
        for x in range(x0, x1):
            y0[x] = w0 * r[x]
    else:
        for x in range(x0, x1):
            y0[x] = y0[x] + w0 * r[x]


cdef inline void _ypass3(float *y0, float *y1, float *y2, const float *r, float w0, float w1, float w2,
                         Py_ssize_t x0, Py_ssize_t x1, bint first) noexcept nogil:
    """Three y passes sharing each ring row read (the rounding is that of three separate passes)."""
    cdef Py_ssize_t x
    cdef float v
    if first:
        for x in range(x0, x1):
            v = r[x]
            y0[x] = w0 * v
            y1[x] = w1 * v
            y2[x] = w2 * v
    else:
        for x in range(x0, x1):
            v = r[x]
            y0[x] = y0[x] + w0 * v
            y1[x] = y1[x] + w1 * v
            y2[x] = y2[x] + w2 * v


def convolve_terms(const float[:, ::1] image, const float[:, ::1] xfilt, const int32_t[::1] xlo,
                   const int32_t[::1] xhi, const double[:, ::1] yfunc, const int32_t[::1] ylo,
                   const int32_t[::1] yhi, const int32_t[::1] t_e, const int32_t[::1] t_p,
                   const int32_t[::1] t_j, const int32_t[::1] t_q, const double[::1] t_c,
                   const float[:, ::1] xpow, const double[:, ::1] ypow, float[:, ::1] out,
                   float[:, ::1] ring, float[:, ::1] ybuf, double[:, ::1] hbuf, float[:, ::1] hfilt):
    """out = image convolved with a spatially varying kernel given as terms: term t adds
    t_c[t] xpow[t_p[t], x] ypow[t_q[t], y] (yfunc[t_j[t]] (x) xfilt[t_e[t]]), a separable kernel (rows a:
    offset dv = a - h, columns b: du = b - h, 2 h + 1 taps) times a monomial of the position. Filter e is
    zero outside taps xlo[e]..xhi[e], function j outside ylo[j]..yhi[j]. Terms are sorted by (e, p); a
    filter has at most MAX_POWERS distinct p. Buffers: ring (2 h + 1, nx), ybuf (3, nx), hbuf and hfilt
    (MAX_POWERS, 2 h + 1).

    For each x filter the image streams through once: the x pass of input row y + h goes into a ring of
    the last 2 h + 1 x-passed rows; for output row y and each power p the y filter
    H_p(a) = sum over the terms (e, p) of t_c ypow[t_q, y] yfunc[t_j, a] is built (double sums), the ring
    is y-passed with the H_p (three at a time, sharing the row reads), and each result times xpow[p] is
    added to out. Every loop over x is a contiguous multiply-add, which the compiler vectorises. Writes
    h <= y < ny - h, h <= x < nx - h; the border of out is left untouched.
    """
    cdef Py_ssize_t ny = image.shape[0], nx = image.shape[1], nt = xfilt.shape[1], h = nt // 2
    cdef Py_ssize_t nterm = t_e.shape[0], x0 = h, x1 = nx - h
    cdef Py_ssize_t t0, t1, g0, g1, e, y, x, a, b, row, alo, ahi, ng, k, m, i
    cdef int pw[MAX_POWERS]
    cdef float w
    cdef double c
    cdef float *xb
    cdef float *o
    cdef const float *src
    cdef const float *xp
    with nogil:
        for y in range(h, ny - h):
            o = &out[y, 0]
            for x in range(x0, x1):
                o[x] = 0.0
        t0 = 0
        while t0 < nterm:
            e = t_e[t0]
            t1 = t0
            alo = nt
            ahi = -1
            while t1 < nterm and t_e[t1] == e:
                if ylo[t_j[t1]] < alo:
                    alo = ylo[t_j[t1]]
                if yhi[t_j[t1]] > ahi:
                    ahi = yhi[t_j[t1]]
                t1 += 1
            for row in range(ny):
                xb = &ring[row % nt, 0]                      # x pass of input row `row`
                src = &image[row, 0]
                w = xfilt[e, xlo[e]]
                for x in range(x0, x1):
                    xb[x] = w * src[x - xlo[e] + h]
                for b in range(xlo[e] + 1, xhi[e] + 1):
                    w = xfilt[e, b]
                    for x in range(x0, x1):
                        xb[x] = xb[x] + w * src[x - b + h]
                if row < nt - 1:
                    continue
                y = row - h                                  # the ring holds rows y - h .. y + h
                ng = 0                                       # the y filters of this row, one per power
                g0 = t0
                while g0 < t1:
                    pw[ng] = t_p[g0]
                    for a in range(alo, ahi + 1):
                        hbuf[ng, a] = 0.0
                    g1 = g0
                    while g1 < t1 and t_p[g1] == pw[ng]:
                        c = t_c[g1] * ypow[t_q[g1], y]
                        for a in range(ylo[t_j[g1]], yhi[t_j[g1]] + 1):
                            hbuf[ng, a] = hbuf[ng, a] + c * yfunc[t_j[g1], a]
                        g1 += 1
                    for a in range(alo, ahi + 1):
                        hfilt[ng, a] = <float> hbuf[ng, a]
                    ng += 1
                    g0 = g1
                k = 0
                while k < ng:
                    m = 3 if ng - k >= 3 else 1
                    for a in range(alo, ahi + 1):
                        xb = &ring[(y - a + h) % nt, 0]
                        if m == 3:
                            _ypass3(&ybuf[0, 0], &ybuf[1, 0], &ybuf[2, 0], xb, hfilt[k, a], hfilt[k + 1, a],
                                    hfilt[k + 2, a], x0, x1, a == alo)
                        else:
                            _ypass1(&ybuf[0, 0], xb, hfilt[k, a], x0, x1, a == alo)
                    o = &out[y, 0]
                    for i in range(m):
                        xp = &xpow[pw[k + i], 0]
                        xb = &ybuf[i, 0]
                        for x in range(x0, x1):
                            o[x] = o[x] + xp[x] * xb[x]
                    k += m
            t0 = t1


def or_footprint(const uint16_t[:, ::1] mask, const int32_t[::1] lo, const int32_t[::1] hi,
                 uint16_t[:, ::1] out):
    """out[y, x] = OR of mask[y - dv, x - du] over the footprint: rows a = dv + h (h = len(lo) // 2), du
    from lo[a] to hi[a] inclusive (an empty row has lo > hi), for h <= y < ny - h, h <= x < nx - h; the
    border of out is left untouched. The footprint must fit in [-h, h]^2."""
    cdef Py_ssize_t ny = mask.shape[0], nx = mask.shape[1], nt = lo.shape[0], h = nt // 2
    cdef Py_ssize_t y, x, a, du, x0 = h, x1 = nx - h
    cdef uint16_t *o
    cdef const uint16_t *src
    with nogil:
        for y in range(h, ny - h):
            o = &out[y, 0]
            for x in range(x0, x1):
                o[x] = 0
            for a in range(nt):
                src = &mask[y - (a - h), 0]
                for du in range(lo[a], hi[a] + 1):
                    for x in range(x0, x1):
                        o[x] = o[x] | src[x - du]


def apply_polynomial(float[:, ::1] plane, const double[:, ::1] coeff, const double[:, ::1] xpow,
                     const double[:, ::1] ypow, int op, double[::1] rowbuf):
    """In place, with p(x, y) = sum_{q, k} coeff[q, k] ypow[q, y] xpow[k, x]: op 0 plane += p, op 1
    plane *= p, op 2 plane /= p. Evaluated row by row in double precision (rowbuf: nx doubles)."""
    cdef Py_ssize_t ny = plane.shape[0], nx = plane.shape[1], nq = coeff.shape[0], nk = coeff.shape[1]
    cdef Py_ssize_t y, x, q, k
    cdef double c
    cdef double *p = &rowbuf[0]
    cdef const double *xp
    cdef float *o
    with nogil:
        for y in range(ny):
            for x in range(nx):
                p[x] = 0.0
            for k in range(nk):
                c = 0.0
                for q in range(nq):
                    c = c + coeff[q, k] * ypow[q, y]
                xp = &xpow[k, 0]
                for x in range(nx):
                    p[x] = p[x] + c * xp[x]
            o = &plane[y, 0]
            if op == 0:
                for x in range(nx):
                    o[x] = <float> (o[x] + p[x])
            elif op == 1:
                for x in range(nx):
                    o[x] = <float> (o[x] * p[x])
            else:
                for x in range(nx):
                    o[x] = <float> (o[x] / p[x])
