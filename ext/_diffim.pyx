"""Private kernels of twinkles_hpc.timedomain.diffim: convolution of a whole image with a spatially
varying kernel written as a sum of separable terms weighted by spatial monomials, the convolution of the
kernel fit's stamps with every raw basis image, the OR-propagation of a mask through a kernel footprint,
in-place arithmetic with a polynomial of the pixel position, the zeroing of non-finite inputs, and the
difference's assembly (one pass for
the difference, its invalid pixels and their mask bit; one for its variance plane and NaNs).

Called only by that wrapper, which validates every input and documents the physics; nothing is checked
twice here. All kernels release the GIL. Sums run in a fixed order (no reassociation), so the results
are bit-identical run to run.
"""
from cython cimport floating
from libc.math cimport NAN, isfinite
from libc.stdint cimport int32_t, uint8_t, uint16_t


cdef extern from *:
    """
    /* Register-blocked passes of convolve_terms on two vectors of pixels at a time (TW_L lanes each: 16
       where the build targets AVX-512, whose 32 registers hold the y pass's six accumulators, else 8), with
       GCC/Clang vector types: every lane does the scalar operations in the scalar order (no fused
       multiply-add, setup.py), so the results are those of plain loops, whatever the instruction set. */
    #if defined(__AVX512F__)
    #define TW_L 16
    #else
    #define TW_L 8
    #endif
    typedef float tw_v __attribute__((vector_size(4 * TW_L)));
    typedef float tw_vu __attribute__((vector_size(4 * TW_L), aligned(4), may_alias));
    #define TW_LD(p) (*(const tw_vu *)(p))
    #define TW_ST(p, v) (*(tw_vu *)(p) = (v))

    /* For m (1 or 3) x filters wk with the same taps lo..hi:
       outk[x] = sum over b = lo..hi (in order) of wk[b] src[x - b], 0 <= x < w (one read for all m) */
    static void tw_xpass(float *out0, float *out1, float *out2, const float *src, const float *w0,
                         const float *w1, const float *w2, Py_ssize_t lo, Py_ssize_t hi, int m, Py_ssize_t w) {
        Py_ssize_t x0 = 0, i, b;
        for (; x0 + 2 * TW_L <= w; x0 += 2 * TW_L) {
            const float *s = src + x0;
            tw_v r0 = TW_LD(s - lo), r1 = TW_LD(s + TW_L - lo);
            tw_v a0 = w0[lo] * r0, a1 = w0[lo] * r1;
            if (m == 3) {
                tw_v b0 = w1[lo] * r0, b1 = w1[lo] * r1, c0 = w2[lo] * r0, c1 = w2[lo] * r1;
                for (b = lo + 1; b <= hi; b++) {
                    r0 = TW_LD(s - b);
                    r1 = TW_LD(s + TW_L - b);
                    a0 = a0 + w0[b] * r0; a1 = a1 + w0[b] * r1;
                    b0 = b0 + w1[b] * r0; b1 = b1 + w1[b] * r1;
                    c0 = c0 + w2[b] * r0; c1 = c1 + w2[b] * r1;
                }
                TW_ST(out1 + x0, b0);
                TW_ST(out1 + x0 + TW_L, b1);
                TW_ST(out2 + x0, c0);
                TW_ST(out2 + x0 + TW_L, c1);
            } else {
                for (b = lo + 1; b <= hi; b++) {
                    a0 = a0 + w0[b] * TW_LD(s - b);
                    a1 = a1 + w0[b] * TW_LD(s + TW_L - b);
                }
            }
            TW_ST(out0 + x0, a0);
            TW_ST(out0 + x0 + TW_L, a1);
        }
        for (i = x0; i < w; i++) {
            float v = src[i - lo], c0 = w0[lo] * v, c1 = 0.0f, c2 = 0.0f;
            if (m == 3) { c1 = w1[lo] * v; c2 = w2[lo] * v; }
            for (b = lo + 1; b <= hi; b++) {
                v = src[i - b];
                c0 = c0 + w0[b] * v;
                if (m == 3) { c1 = c1 + w1[b] * v; c2 = c2 + w2[b] * v; }
            }
            out0[i] = c0;
            if (m == 3) { out1[i] = c1; out2[i] = c2; }
        }
    }

    /* Double precision, for the fit's stamps: out[i] = sum over b = lo..hi (in order) of
       wt[b] src[i - b stride], 0 <= i < w, two vectors of TW_L / 2 lanes at a time, then one, then scalar */
    typedef double tw_d __attribute__((vector_size(4 * TW_L)));
    typedef double tw_du __attribute__((vector_size(4 * TW_L), aligned(8), may_alias));
    #define TW_DL (TW_L / 2)
    #define TW_DLD(p) (*(const tw_du *)(p))
    #define TW_DST(p, v) (*(tw_du *)(p) = (v))
    static void tw_dpass(double *out, const double *src, const double *wt, Py_ssize_t lo, Py_ssize_t hi,
                         Py_ssize_t stride, Py_ssize_t w) {
        Py_ssize_t i = 0, b;
        for (; i + 2 * TW_DL <= w; i += 2 * TW_DL) {
            const double *s = src + i;
            tw_d a0 = wt[lo] * TW_DLD(s - lo * stride), a1 = wt[lo] * TW_DLD(s + TW_DL - lo * stride);
            for (b = lo + 1; b <= hi; b++) {
                a0 = a0 + wt[b] * TW_DLD(s - b * stride);
                a1 = a1 + wt[b] * TW_DLD(s + TW_DL - b * stride);
            }
            TW_DST(out + i, a0);
            TW_DST(out + i + TW_DL, a1);
        }
        for (; i + TW_DL <= w; i += TW_DL) {
            const double *s = src + i;
            tw_d a0 = wt[lo] * TW_DLD(s - lo * stride);
            for (b = lo + 1; b <= hi; b++) a0 = a0 + wt[b] * TW_DLD(s - b * stride);
            TW_DST(out + i, a0);
        }
        for (; i < w; i++) {
            double c = wt[lo] * src[i - lo * stride];
            for (b = lo + 1; b <= hi; b++) c = c + wt[b] * src[i - b * stride];
            out[i] = c;
        }
    }

    /* For m (1 or 3) y filters hk with taps alo..ahi (tap a reads rows[a]):
       o[x] += xpk[x] * sum over a (in order) of hk[a] rows[a][x], k in order, 0 <= x < w */
    static void tw_ypass(float *o, const float **rows, Py_ssize_t alo, Py_ssize_t ahi, const float *h0,
                         const float *h1, const float *h2, const float *xp0, const float *xp1, const float *xp2,
                         int m, Py_ssize_t w) {
        Py_ssize_t x0 = 0, i, a;
        for (; x0 + 2 * TW_L <= w; x0 += 2 * TW_L) {
            const float *r = rows[alo] + x0;
            tw_v r0 = TW_LD(r), r1 = TW_LD(r + TW_L);
            tw_v p0 = h0[alo] * r0, p1 = h0[alo] * r1;
            if (m == 3) {
                tw_v q0 = h1[alo] * r0, q1 = h1[alo] * r1, s0 = h2[alo] * r0, s1 = h2[alo] * r1;
                for (a = alo + 1; a <= ahi; a++) {
                    r = rows[a] + x0;
                    r0 = TW_LD(r);
                    r1 = TW_LD(r + TW_L);
                    p0 = p0 + h0[a] * r0; p1 = p1 + h0[a] * r1;
                    q0 = q0 + h1[a] * r0; q1 = q1 + h1[a] * r1;
                    s0 = s0 + h2[a] * r0; s1 = s1 + h2[a] * r1;
                }
                tw_v o0 = TW_LD(o + x0), o1 = TW_LD(o + x0 + TW_L);
                o0 = o0 + TW_LD(xp0 + x0) * p0; o1 = o1 + TW_LD(xp0 + x0 + TW_L) * p1;
                o0 = o0 + TW_LD(xp1 + x0) * q0; o1 = o1 + TW_LD(xp1 + x0 + TW_L) * q1;
                o0 = o0 + TW_LD(xp2 + x0) * s0; o1 = o1 + TW_LD(xp2 + x0 + TW_L) * s1;
                TW_ST(o + x0, o0);
                TW_ST(o + x0 + TW_L, o1);
            } else {
                for (a = alo + 1; a <= ahi; a++) {
                    r = rows[a] + x0;
                    p0 = p0 + h0[a] * TW_LD(r);
                    p1 = p1 + h0[a] * TW_LD(r + TW_L);
                }
                TW_ST(o + x0, TW_LD(o + x0) + TW_LD(xp0 + x0) * p0);
                TW_ST(o + x0 + TW_L, TW_LD(o + x0 + TW_L) + TW_LD(xp0 + x0 + TW_L) * p1);
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
    void _xpass "tw_xpass"(float *out0, float *out1, float *out2, const float *src, const float *w0,
                           const float *w1, const float *w2, Py_ssize_t lo, Py_ssize_t hi, int m,
                           Py_ssize_t w) noexcept nogil
    void _ypass "tw_ypass"(float *o, const float **rows, Py_ssize_t alo, Py_ssize_t ahi, const float *h0,
                           const float *h1, const float *h2, const float *xp0, const float *xp1,
                           const float *xp2, int m, Py_ssize_t w) noexcept nogil
    void _dpass "tw_dpass"(double *out, const double *src, const double *wt, Py_ssize_t lo, Py_ssize_t hi,
                           Py_ssize_t stride, Py_ssize_t w) noexcept nogil


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
    input row, the x pass of each filter goes into its ring of the last 2 h + 1 rows (three consecutive
    filters with the same taps at a time, sharing the reads); per output row, each
    filter's ring is y-passed with its groups' H (three at a time, sharing the row reads) and each result
    times xpow[p] is added to out, filters and groups in order. Both passes hold 16 or 32 pixels in vector
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
                f = 0
                while f < nf:                                # x pass of input row `row`
                    e = f_e[f]                               # three filters of the same taps at a time
                    m = 3 if (f + 2 < nf and xlo[f_e[f + 1]] == xlo[e] and xhi[f_e[f + 1]] == xhi[e]
                              and xlo[f_e[f + 2]] == xlo[e] and xhi[f_e[f + 2]] == xhi[e]) else 1
                    k1 = f + 1 if m == 3 else f
                    k2 = f + 2 if m == 3 else f
                    _xpass(&ring[f, row % nt, 0], &ring[k1, row % nt, 0], &ring[k2, row % nt, 0], src + h,
                           &xfilt[e, 0], &xfilt[f_e[k1], 0], &xfilt[f_e[k2], 0], xlo[e], xhi[e], m, w)
                    f += m
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


def convolve_stamps(const double[:, :, ::1] patches, const double[:, ::1] functions, const int32_t[::1] lo,
                    const int32_t[::1] hi, const int32_t[::1] pair_x, const int32_t[::1] pair_y,
                    floating[:, :, ::1] out, double[:, :, ::1] xbuf, double[::1] acc):
    """out[n, k, y S + x] = the valid part (S = P - 2 h, h = len(functions[0]) // 2) of patch n (P x P)
    convolved with raw basis image k, functions[pair_y[k]](dv) functions[pair_x[k]](du) (taps b = d + h,
    zero outside lo..hi of each function): sum over a, b of f_y[a] f_x[b] patch[y + 2 h - a, x + 2 h - b],
    x pass first (every function over all P rows, into xbuf (n functions, P, S)), then the y pass of each
    pair over the S x S output at once (tw_dpass), in double precision (acc: S^2 doubles), taps in order.
    Rows k >= len(pair_x) of out are left untouched."""
    cdef Py_ssize_t n_st = patches.shape[0], P = patches.shape[1], nf = functions.shape[0]
    cdef Py_ssize_t h2 = functions.shape[1] - 1, S = P - h2, n_raw = pair_x.shape[0]
    cdef Py_ssize_t n, f, k, r, i, e, j
    cdef double *o
    with nogil:
        for n in range(n_st):
            for f in range(nf):
                for r in range(P):
                    _dpass(&xbuf[f, r, 0], &patches[n, r, h2], &functions[f, 0], lo[f], hi[f], 1, S)
            for k in range(n_raw):
                e = pair_x[k]
                j = pair_y[k]
                o = <double *> &out[n, k, 0] if floating is double else &acc[0]
                _dpass(o, &xbuf[e, h2, 0], &functions[j, 0], lo[j], hi[j], S, S * S)
                if floating is float:
                    for i in range(S * S):
                        out[n, k, i] = <float> acc[i]


def zero_nonfinite(const float[:, ::1] image, const float[:, ::1] variance, const uint16_t[:, ::1] mask,
                   uint16_t bit, float[:, ::1] out_image, float[:, ::1] out_variance, uint16_t[:, ::1] out_mask):
    """out_image, out_variance = image, variance, 0 where either is not finite; out_mask = mask (an empty
    (0, 0) mask: 0) | bit there. Returns the number of such pixels."""
    cdef Py_ssize_t ny = image.shape[0], nx = image.shape[1], y, x, n = 0
    cdef bint has_mask = mask.shape[0] > 0, bad
    cdef float v, w
    with nogil:
        for y in range(ny):
            for x in range(nx):
                v = image[y, x]
                w = variance[y, x]
                bad = not (isfinite(v) and isfinite(w))
                n += bad
                out_image[y, x] = 0.0 if bad else v
                out_variance[y, x] = 0.0 if bad else w
                out_mask[y, x] = (mask[y, x] if has_mask else 0) | (bit if bad else 0)
    return n


cdef void _run_levels(const uint16_t *row, Py_ssize_t nx, Py_ssize_t nlev, uint16_t *lev) noexcept nogil:
    """lev[k nx + s] = OR of row[s .. s + 2^k - 1], for s <= nx - 2^k (k < nlev): each level from the one
    before."""
    cdef Py_ssize_t k, s, half
    for s in range(nx):
        lev[s] = row[s]
    for k in range(1, nlev):
        half = 1 << (k - 1)
        for s in range(nx - 2 * half + 1):
            lev[k * nx + s] = lev[(k - 1) * nx + s] | lev[(k - 1) * nx + s + half]


def or_footprint(const uint16_t[:, ::1] mask, const int32_t[::1] lo, const int32_t[::1] hi,
                 uint16_t[:, ::1] out, uint16_t[:, :, ::1] ring):
    """out[y, x] = OR of mask[y - dv, x - du] over the footprint: rows a = dv + h (h = len(lo) // 2), du
    from lo[a] to hi[a] inclusive (an empty row has lo > hi), for h <= y < ny - h, h <= x < nx - h; the
    border of out is left untouched. The footprint must fit in [-h, h]^2. ring: (2 h + 1, n levels, nx)
    scratch, n levels the bit length of the longest row's run hi - lo + 1.

    OR is idempotent, so a run of L >= 1 pixels is the OR of two runs of P = 2^floor(log2 L) that
    overlap: each source row's runs of 1, 2, 4, ... pixels are formed once (_run_levels, kept in a ring
    of the last 2 h + 1 rows), and every footprint row costs two ORs per pixel, whatever its length."""
    cdef Py_ssize_t ny = mask.shape[0], nx = mask.shape[1], nt = lo.shape[0], h = nt // 2
    cdef Py_ssize_t nlev = ring.shape[1], y, x, a, r, k, P, x0 = h, x1 = nx - h
    cdef Py_ssize_t kk[MAX_TAPS]
    cdef Py_ssize_t sh1[MAX_TAPS]
    cdef Py_ssize_t sh2[MAX_TAPS]
    cdef uint16_t *o
    cdef const uint16_t *R
    with nogil:
        for a in range(nt):                     # each row's level and its two runs' offsets from x
            kk[a] = -1
            if lo[a] > hi[a]:
                continue
            k = 0
            while (2 << k) <= hi[a] - lo[a] + 1:
                k += 1
            P = 1 << k
            kk[a] = k
            sh1[a] = hi[a]                      # run 1: x - hi .. x - hi + P - 1
            sh2[a] = lo[a] + P - 1              # run 2: x - lo - P + 1 .. x - lo
        for r in range(min(nt - 1, ny)):
            _run_levels(&mask[r, 0], nx, nlev, &ring[r % nt, 0, 0])
        for y in range(h, ny - h):
            _run_levels(&mask[y + h, 0], nx, nlev, &ring[(y + h) % nt, 0, 0])
            o = &out[y, 0]
            for x in range(x0, x1):
                o[x] = 0
            for a in range(nt):
                if kk[a] < 0:
                    continue
                R = &ring[(y - (a - h)) % nt, kk[a], 0]
                for x in range(x0, x1):
                    o[x] = o[x] | R[x - sh1[a]] | R[x - sh2[a]]


cdef inline void _poly_row(const double[:, ::1] coeff, const double[:, ::1] xpow, const double[:, ::1] ypow,
                           Py_ssize_t y, double *p) noexcept nogil:
    """p[x] = sum_{q, k} coeff[q, k] ypow[q, y] xpow[k, x] for the row y, in double precision."""
    cdef Py_ssize_t nx = xpow.shape[1], nq = coeff.shape[0], nk = coeff.shape[1], x, q, k
    cdef double c
    cdef const double *xp
    for x in range(nx):
        p[x] = 0.0
    for k in range(nk):
        c = 0.0
        for q in range(nq):
            c = c + coeff[q, k] * ypow[q, y]
        xp = &xpow[k, 0]
        for x in range(nx):
            p[x] = p[x] + c * xp[x]


def apply_polynomial(float[:, ::1] plane, const double[:, ::1] coeff, const double[:, ::1] xpow,
                     const double[:, ::1] ypow, int op, double[::1] rowbuf):
    """In place, with p(x, y) = sum_{q, k} coeff[q, k] ypow[q, y] xpow[k, x]: op 0 plane += p, op 1
    plane *= p, op 2 plane /= p. Evaluated row by row in double precision (rowbuf: nx doubles)."""
    cdef Py_ssize_t ny = plane.shape[0], nx = plane.shape[1], y, x
    cdef double *p = &rowbuf[0]
    cdef float *o
    with nogil:
        for y in range(ny):
            _poly_row(coeff, xpow, ypow, y, p)
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


def difference(const float[:, ::1] a, const float[:, ::1] b, const float[:, ::1] va, const float[:, ::1] vb,
               const double[:, ::1] add, const double[:, ::1] div, const double[:, ::1] xpow,
               const double[:, ::1] ypow, float[:, ::1] out, Py_ssize_t pad, uint8_t[:, ::1] invalid,
               uint16_t[:, ::1] mask, uint16_t bit, double[:, ::1] rowbuf):
    """In one pass: d = a - b, then d += p_add(x, y) and, if div has rows, d /= p_div(x, y) (the polynomials
    of apply_polynomial, rounded to float after each step as it does); invalid = 1 where d, va or vb is not
    finite (else 0), and there mask |= bit; out[pad + y, pad + x] = d, or 0 where d is not finite (out: the
    planes' shape padded by pad on every side). rowbuf: (2, nx) doubles."""
    cdef Py_ssize_t ny = a.shape[0], nx = a.shape[1], y, x
    cdef bint divide = div.shape[0] > 0
    cdef double *pa = &rowbuf[0, 0]
    cdef double *pd = &rowbuf[1, 0]
    cdef float *o
    cdef float d
    cdef bint bad
    with nogil:
        for y in range(ny):
            _poly_row(add, xpow, ypow, y, pa)
            if divide:
                _poly_row(div, xpow, ypow, y, pd)
            o = &out[pad + y, pad]
            for x in range(nx):
                d = a[y, x] - b[y, x]
                d = <float> (d + pa[x])
                if divide:
                    d = <float> (d / pd[x])
                bad = not (isfinite(d) and isfinite(va[y, x]) and isfinite(vb[y, x]))
                invalid[y, x] = bad
                if bad:
                    mask[y, x] = mask[y, x] | bit
                o[x] = d if isfinite(d) else 0.0


def finish_difference(float[:, ::1] image, Py_ssize_t pad, float[:, ::1] variance, const float[:, ::1] va,
                      const float[:, ::1] vb, float alpha, float beta, const uint8_t[:, ::1] invalid):
    """variance = alpha va + beta vb (float arithmetic); it and image[pad + y, pad + x] (the planes' shape
    padded by pad on every side) NaN where invalid."""
    cdef Py_ssize_t ny = variance.shape[0], nx = variance.shape[1], y, x
    cdef float nan = NAN
    cdef float *o
    with nogil:
        for y in range(ny):
            o = &image[pad + y, pad]
            for x in range(nx):
                if invalid[y, x]:
                    o[x] = nan
                    variance[y, x] = nan
                else:
                    variance[y, x] = va[y, x] * alpha + beta * vb[y, x]
