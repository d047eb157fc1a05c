"""Private kernels of twinkles_hpc.timedomain.diffim: convolution of a whole image with a spatially
varying kernel written as a sum of separable terms weighted by spatial monomials, the OR-propagation of a
mask through a kernel footprint, and in-place arithmetic with a polynomial of the pixel position.

Called only by that wrapper, which validates every input and documents the physics; nothing is checked
twice here. All kernels release the GIL. Sums run in a fixed order (no reassociation), so the results
are bit-identical run to run.
"""
from libc.stdint cimport int32_t, uint16_t


cdef extern from *:
    """
    /* Register-blocked passes of convolve_terms on 16 pixels at a time, with GCC/Clang vector types: every
       lane does the scalar operations in the scalar order (no fused multiply-add, setup.py), so the results
       are those of plain loops, whatever the instruction set. */
    typedef float tw_v8 __attribute__((vector_size(32)));
    typedef float tw_v8u __attribute__((vector_size(32), aligned(4), may_alias));
    #define TW_LD(p) (*(const tw_v8u *)(p))
    #define TW_ST(p, v) (*(tw_v8u *)(p) = (v))

    /* out[x] = sum over b = lo..hi (in order) of wt[b] src[x - b], 0 <= x < w */
    static void tw_xpass(float *out, const float *src, const float *wt, Py_ssize_t lo, Py_ssize_t hi,
                         Py_ssize_t w) {
        Py_ssize_t x0 = 0, i, b;
        for (; x0 + 16 <= w; x0 += 16) {
            const float *s = src + x0;
            tw_v8 a0 = wt[lo] * TW_LD(s - lo), a1 = wt[lo] * TW_LD(s + 8 - lo);
            for (b = lo + 1; b <= hi; b++) {
                a0 = a0 + wt[b] * TW_LD(s - b);
                a1 = a1 + wt[b] * TW_LD(s + 8 - b);
            }
            TW_ST(out + x0, a0);
            TW_ST(out + x0 + 8, a1);
        }
        for (i = x0; i < w; i++) {
            float c = wt[lo] * src[i - lo];
            for (b = lo + 1; b <= hi; b++) c = c + wt[b] * src[i - b];
            out[i] = c;
        }
    }

    /* For m (1 or 3) y filters hk with taps alo..ahi (tap a reads rows[a]):
       o[x] += xpk[x] * sum over a (in order) of hk[a] rows[a][x], k in order, 0 <= x < w */
    static void tw_ypass(float *o, const float **rows, Py_ssize_t alo, Py_ssize_t ahi, const float *h0,
                         const float *h1, const float *h2, const float *xp0, const float *xp1, const float *xp2,
                         int m, Py_ssize_t w) {
        Py_ssize_t x0 = 0, i, a;
        for (; x0 + 16 <= w; x0 += 16) {
            const float *r = rows[alo] + x0;
            tw_v8 r0 = TW_LD(r), r1 = TW_LD(r + 8);
            tw_v8 p0 = h0[alo] * r0, p1 = h0[alo] * r1;
            if (m == 3) {
                tw_v8 q0 = h1[alo] * r0, q1 = h1[alo] * r1, s0 = h2[alo] * r0, s1 = h2[alo] * r1;
                for (a = alo + 1; a <= ahi; a++) {
                    r = rows[a] + x0;
                    r0 = TW_LD(r);
                    r1 = TW_LD(r + 8);
                    p0 = p0 + h0[a] * r0; p1 = p1 + h0[a] * r1;
                    q0 = q0 + h1[a] * r0; q1 = q1 + h1[a] * r1;
                    s0 = s0 + h2[a] * r0; s1 = s1 + h2[a] * r1;
                }
                tw_v8 o0 = TW_LD(o + x0), o1 = TW_LD(o + x0 + 8);
                o0 = o0 + TW_LD(xp0 + x0) * p0; o1 = o1 + TW_LD(xp0 + x0 + 8) * p1;
                o0 = o0 + TW_LD(xp1 + x0) * q0; o1 = o1 + TW_LD(xp1 + x0 + 8) * q1;
                o0 = o0 + TW_LD(xp2 + x0) * s0; o1 = o1 + TW_LD(xp2 + x0 + 8) * s1;
                TW_ST(o + x0, o0);
                TW_ST(o + x0 + 8, o1);
            } else {
                for (a = alo + 1; a <= ahi; a++) {
                    r = rows[a] + x0;
                    p0 = p0 + h0[a] * TW_LD(r);
                    p1 = p1 + h0[a] * TW_LD(r + 8);
                }
                TW_ST(o + x0, TW_LD(o + x0) + TW_LD(xp0 + x0) * p0);
                TW_ST(o + x0 + 8, TW_LD(o + x0 + 8) + TW_LD(xp0 + x0 + 8) * p1);
            }
        }
        for (i = x0; i < w; i++) {
            float v = rows[alo][i], s0 = h0[alo] * v, s1 = 0.0f, s2 = 0.0f;
            if (m == 3) { s1 = h1[alo] * v; s2 = h2[alo] * v; }
            for (a = alo + 1; a <= ahi; a++) {
                v = rows[a][i];
                s0 = s0 + h0[a] * v;
                if (m == 3) { s1 = s1 + h1[a] * v; s2 = s2 + h2[a] * v; }
            }
            o[i] = o[i] + xp0[i] * s0;
            if (m == 3) { o[i] = o[i] + xp1[i] * s1; o[i] = o[i] + xp2[i] * s2; }
        }
    }
    """
    void _xpass "tw_xpass"(float *out, const float *src, const float *wt, Py_ssize_t lo, Py_ssize_t hi,
                           Py_ssize_t w) noexcept nogil
    void _ypass "tw_ypass"(float *o, const float **rows, Py_ssize_t alo, Py_ssize_t ahi, const float *h0,
                           const float *h1, const float *h2, const float *xp0, const float *xp1,
                           const float *xp2, int m, Py_ssize_t w) noexcept nogil


cdef enum:
    MAX_TAPS = 255                                   # the longest filter (the wrapper checks)


def convolve_terms(const float[:, ::1] image, const float[:, ::1] xfilt, const int32_t[::1] xlo,
                   const int32_t[::1] xhi, const double[:, ::1] yfunc, const int32_t[::1] ylo,
                   const int32_t[::1] yhi, const int32_t[::1] f_e, const int32_t[::1] f_g0,
                   const int32_t[::1] f_g1, const int32_t[::1] f_alo, const int32_t[::1] f_ahi,
                   const int32_t[::1] g_p, const int32_t[::1] g_t0, const int32_t[::1] g_t1,
                   const int32_t[::1] t_j, const int32_t[::1] t_q, const double[::1] t_c,
                   const float[:, ::1] xpow, const double[:, ::1] ypow, float[:, ::1] out,
                   float[:, :, ::1] ring, float[:, ::1] ybuf, double[::1] hbuf, float[:, :, ::1] hfilt):
    """out = image convolved with a spatially varying kernel given as terms: term t adds
    t_c[t] xpow[p, x] ypow[t_q[t], y] (yfunc[t_j[t]] (x) xfilt[e]), a separable kernel (rows a: offset
    dv = a - h, columns b: du = b - h, 2 h + 1 taps) times a monomial of the position. The terms are grouped
    by x filter: filter f is xfilt[f_e[f]] (zero outside taps xlo..xhi of that row), its groups g from
    f_g0[f] to f_g1[f] (exclusive) each of one power p = g_p[g] of x and terms g_t0[g]..g_t1[g], their y
    functions (zero outside ylo[j]..yhi[j]) within taps f_alo[f]..f_ahi[f]. Buffers: ring (n filters,
    2 h + 1, W) with W the strip width, ybuf (3, W), hbuf (2 h + 1), hfilt (ny, n groups, 2 h + 1).

    First, per output row y and group g, the y filter H_g(a) = sum over its terms of
    t_c ypow[t_q, y] yfunc[t_j, a] (double sums, stored as float). Then the image is processed in column
    strips of W output pixels, small enough that every filter's ring of x-passed rows stays in cache: per
    input row, the x pass of each filter goes into its ring of the last 2 h + 1 rows; per output row, each
    filter's ring is y-passed with its groups' H (three at a time, sharing the row reads) and each result
    times xpow[p] is added to out, filters and groups in order. Both passes hold 16 pixels in vector
    registers over all the taps (tw_xpass, tw_ypass); a pixel's sums run in the same order whatever W and
    whatever the vector width, so the result is that of the plain loops, bit for bit. Writes
    h <= y < ny - h, h <= x < nx - h; the border of out is left untouched. 2 h + 1 <= MAX_TAPS.
    """
    cdef Py_ssize_t ny = image.shape[0], nx = image.shape[1], nt = xfilt.shape[1], h = nt // 2
    cdef Py_ssize_t nf = f_e.shape[0], W = ring.shape[2]
    cdef Py_ssize_t f, g, t, e, y, x, a, row, alo, ahi, k, k1, k2, sx0, w
    cdef int m
    cdef double c
    cdef const float *rows[MAX_TAPS]
    cdef float *o
    cdef const float *src
    with nogil:
        for y in range(h, ny - h):
            for f in range(nf):
                alo = f_alo[f]
                ahi = f_ahi[f]
                for g in range(f_g0[f], f_g1[f]):
                    for a in range(alo, ahi + 1):
                        hbuf[a] = 0.0
                    for t in range(g_t0[g], g_t1[g]):
                        c = t_c[t] * ypow[t_q[t], y]
                        for a in range(ylo[t_j[t]], yhi[t_j[t]] + 1):
                            hbuf[a] = hbuf[a] + c * yfunc[t_j[t], a]
                    for a in range(alo, ahi + 1):
                        hfilt[y, g, a] = <float> hbuf[a]
        sx0 = h
        while sx0 < nx - h:
            w = W if nx - h - sx0 > W else nx - h - sx0
            for row in range(ny):
                src = &image[row, sx0]
                for f in range(nf):                          # x pass of input row `row`
                    e = f_e[f]
                    _xpass(&ring[f, row % nt, 0], src + h, &xfilt[e, 0], xlo[e], xhi[e], w)
                if row < nt - 1:
                    continue
                y = row - h                                  # the rings hold rows y - h .. y + h
                o = &out[y, sx0]
                for x in range(w):
                    o[x] = 0.0
                for f in range(nf):
                    for a in range(f_alo[f], f_ahi[f] + 1):      # ring row of tap a
                        rows[a] = &ring[f, (y - a + h) % nt, 0]
                    k = f_g0[f]
                    while k < f_g1[f]:
                        m = 3 if f_g1[f] - k >= 3 else 1
                        k1 = k + 1 if m == 3 else k              # the second and third filters, if any
                        k2 = k + 2 if m == 3 else k
                        _ypass(o, rows, f_alo[f], f_ahi[f], &hfilt[y, k, 0],
                               &hfilt[y, k1, 0], &hfilt[y, k2, 0], &xpow[g_p[k], sx0], &xpow[g_p[k1], sx0],
                               &xpow[g_p[k2], sx0], m, w)
                        k += m
            sx0 += W


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
