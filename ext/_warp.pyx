"""Private kernels of twinkles_hpc.level2.warp: Lanczos-3 resampling of an image, its variance and mask
through a tabulated coordinate grid, and the per-pixel combination of a stack of warps (weighted
sigma-clipped mean, or median) that level2/coadd.py calls through warp.combine_stack.

Called only by that wrapper, which validates every input and documents the physics; nothing is checked
twice here. Mask bits come in as arguments (level2/masks.py owns them). Both kernels release the GIL.
"""
from cpython.mem cimport PyMem_RawFree, PyMem_RawMalloc
from libc.math cimport INFINITY, NAN, M_PI, cos, fabs, floor, isfinite, sin, sqrt
from cython.parallel cimport prange, threadid
from libc.stdint cimport int32_t, uint16_t


cdef extern from "_warp_sums.h" nogil:
    # the image's and the variance's Lanczos-3 sums of one output pixel (the header says how)
    void warp_sums6(const double *wx, const double *wy, const double *p, const double *pv, Py_ssize_t stride,
                    double *acc, double *accv)

cdef double SQRT3_2 = 0.8660254037844386          # sqrt(3) / 2
cdef double SNAP = 1e-9                           # px: positions this close to an integer are that integer
cdef double SEGMENT_TOL = 1e-6                    # px: margin of _segment_outside, far above SNAP and round-off
cdef double MAD_TO_SIGMA = 1.482602218505602      # sigma of a Gaussian / its median absolute deviation


cdef void _lanczos3_exact(double f, double *w, bint quadratic) noexcept nogil:
    """Lanczos-3 weights of the six taps at distances t_k = f + 2 - k (k = 0..5), 0 <= f < 1, normalised
    to sum 1; with `quadratic`, plus the least-squares correction that makes them reproduce polynomials
    up to degree 2 exactly.

    L(t) = 3 sin(pi t) sin(pi t / 3) / (pi t)^2. With a = pi f / 3, sin(pi t_k) = (-1)^k sin(pi f) and
    sin(pi t_k / 3) = sin(a + (2 - k) pi / 3), so one sin and one cos give all six; the common factor
    3 sin(pi f) / pi^2 cancels in the normalisation.

    Correction: in s_k = 2.5 - k = t_k - d (d = f - 0.5), w_k += l0 + l1 s_k + l2 s_k^2 with the l chosen
    so that sum w = 1, sum w s = -d, sum w s^2 = d^2 (i.e. sum w t = sum w t^2 = 0). The Gram matrix of
    (1, s, s^2) over the taps is constant (sum s^2 = 17.5, sum s^4 = 88.375, odd sums 0, det 224); with
    sum w = 1 already, l0 = -17.5 e2 / 224, l1 = e1 / 17.5, l2 = 6 e2 / 224 for the residuals e1, e2.
    """
    cdef double sa, h, pk, qk, rk, t, inv, d, e1, e2, l0, l1, l2
    cdef double w0, w1, w2, w3, w4, w5
    if f == 0.0:
        w[0] = 0.0; w[1] = 0.0; w[2] = 1.0; w[3] = 0.0; w[4] = 0.0; w[5] = 0.0
        return
    sa = 0.5 * sin(f * (M_PI / 3.0))
    h = SQRT3_2 * cos(f * (M_PI / 3.0))
    pk = h - sa                        # k = 0, 3: (-1)^k sin(pi t_k / 3) (up to the common factor)
    qk = -(h + sa)                     # k = 1, 4
    rk = 2.0 * sa                      # k = 2, 5
    t = f + 2.0
    w0 = pk / (t * t)
    t = f + 1.0
    w1 = qk / (t * t)
    w2 = rk / (f * f)
    t = f - 1.0
    w3 = pk / (t * t)
    t = f - 2.0
    w4 = qk / (t * t)
    t = f - 3.0
    w5 = rk / (t * t)
    inv = 1.0 / ((w0 + w1) + (w2 + w3) + (w4 + w5))
    if quadratic:
        d = f - 0.5
        e1 = -d - inv * (2.5 * (w0 - w5) + 1.5 * (w1 - w4) + 0.5 * (w2 - w3))
        e2 = d * d - inv * (6.25 * (w0 + w5) + 2.25 * (w1 + w4) + 0.25 * (w2 + w3))
        l0 = e2 * (-17.5 / 224.0)
        l1 = e1 * (1.0 / 17.5)
        l2 = e2 * (6.0 / 224.0)
    else:
        l0 = 0.0
        l1 = 0.0
        l2 = 0.0
    w[0] = w0 * inv + (l0 + 2.5 * l1 + 6.25 * l2)
    w[1] = w1 * inv + (l0 + 1.5 * l1 + 2.25 * l2)
    w[2] = w2 * inv + (l0 + 0.5 * l1 + 0.25 * l2)
    w[3] = w3 * inv + (l0 - 0.5 * l1 + 0.25 * l2)
    w[4] = w4 * inv + (l0 - 1.5 * l1 + 2.25 * l2)
    w[5] = w5 * inv + (l0 - 2.5 * l1 + 6.25 * l2)


#: Weights tabulated at f = n / TABLE_N (n = 0..TABLE_N; the last node is f -> 1) and interpolated
#: linearly in f: they still sum to 1 and, corrected, have zero first moment t exactly (both constraints
#: are linear in w and t is linear in f), reproduce f = 0 (a delta) exactly, and differ from the exact
#: weights by <= h^2 max|w''| / 8 (h = 1 / TABLE_N), measured 2.7e-8 for TABLE_N = 4096.
cdef enum:
    TABLE_N = 4096
cdef double _table_q[(TABLE_N + 1) * 6]
cdef double _table_p[(TABLE_N + 1) * 6]


cdef void _fill_tables():
    cdef int n
    for n in range(TABLE_N + 1):
        _lanczos3_exact(n / <double> TABLE_N if n < TABLE_N else 1.0 - 1e-16, &_table_q[6 * n], True)
        _lanczos3_exact(n / <double> TABLE_N if n < TABLE_N else 1.0 - 1e-16, &_table_p[6 * n], False)


_fill_tables()


cdef inline void _lanczos3(double f, double *w, const double *table) noexcept nogil:
    """Tabulated weights at 0 <= f < 1 (see TABLE_N)."""
    cdef double x = f * TABLE_N, a
    cdef Py_ssize_t n = <Py_ssize_t> x
    cdef const double *r = table + 6 * n
    a = x - n
    w[0] = r[0] + a * (r[6] - r[0])
    w[1] = r[1] + a * (r[7] - r[1])
    w[2] = r[2] + a * (r[8] - r[2])
    w[3] = r[3] + a * (r[9] - r[3])
    w[4] = r[4] + a * (r[10] - r[4])
    w[5] = r[5] + a * (r[11] - r[5])


def lanczos3_weights(double f, bint quadratic=True, bint exact=False):
    """The six weights at fractional offset 0 <= f < 1 (tabulated unless exact), for tests."""
    cdef double w[6]
    if not 0.0 <= f < 1.0:
        raise ValueError(f"f must be in [0, 1), got {f!r}")
    if exact:
        _lanczos3_exact(f, w, quadratic)
    else:
        _lanczos3(f, w, &_table_q[0] if quadratic else &_table_p[0])
    return [w[0], w[1], w[2], w[3], w[4], w[5]]


cdef enum:
    CACHE_LINE = 64


cdef inline Py_ssize_t _lines(Py_ssize_t nbytes) noexcept nogil:
    """nbytes rounded up to whole cache lines: threads' scratch blocks of that stride share no line."""
    return (nbytes + CACHE_LINE - 1) // CACHE_LINE * CACHE_LINE


cdef inline char *_aligned(void *p) noexcept nogil:
    """The first cache-line boundary at or after p (allocate CACHE_LINE bytes more than needed)."""
    return <char *> p + (CACHE_LINE - (<size_t> p) % CACHE_LINE) % CACHE_LINE


#: Output pixels per pass of _warp_row: on a 3000 x 3000 warp rotated by 0.4 rad, 14 / 17 / 19 / 16 % off the
#: kernel's time per pixel at 8 / 16 / 32 / 64 against one pixel at a time (88 ns), the same bits.
cdef enum:
    BATCH = 32


#: Side of the mask's summary tiles (_tile_or_and): small enough that most tiles of an image have no bit,
#: large enough that the summaries of a sensor (1 / 64 of its mask) stay in the core's cache.
cdef enum:
    TILE = 8


cdef void _tile_or_and(const uint16_t[:, ::1] mask, Py_ssize_t ntx, uint16_t *tile_or,
                       uint16_t *tile_and) noexcept nogil:
    """tile_or[ty * ntx + tx], tile_and[...] = OR and AND of the mask bits in TILE x TILE tile (tx, ty)
    (the last row and column of tiles clipped to the mask)."""
    cdef Py_ssize_t ny = mask.shape[0], nx = mask.shape[1], nty = (ny + TILE - 1) // TILE, x, y, t
    cdef const uint16_t *row
    for t in range(ntx * nty):
        tile_or[t] = 0
        tile_and[t] = 0xFFFF
    for y in range(ny):
        row = &mask[y, 0]
        t = (y // TILE) * ntx
        for x in range(nx):
            tile_or[t + x // TILE] |= row[x]
            tile_and[t + x // TILE] &= row[x]


cdef inline bint _segment_outside(double u0, double u1, double v0, double v1, double ulo, double uhi,
                                  double vlo, double vhi) noexcept nogil:
    """True when every position interpolated between nodes (u0, v0) and (u1, v1) lies outside the usable
    source box [ulo, uhi) x [vlo, vhi) by more than SEGMENT_TOL (round-off and SNAP); False for a NaN node."""
    cdef double umin = u0 if u0 < u1 else u1, umax = u1 if u0 < u1 else u0
    cdef double vmin = v0 if v0 < v1 else v1, vmax = v1 if v0 < v1 else v0
    if not (u0 == u0 and u1 == u1 and v0 == v0 and v1 == v1):
        return False
    return (umax < ulo - SEGMENT_TOL or umin >= uhi + SEGMENT_TOL or vmax < vlo - SEGMENT_TOL
            or vmin >= vhi + SEGMENT_TOL)


cdef inline void _no_data(float[:, ::1] out, float[:, ::1] out_var, uint16_t[:, ::1] out_mask, Py_ssize_t j,
                          Py_ssize_t i, uint16_t no_data) noexcept nogil:
    """Output pixel (i, j) without data: NaN, NaN, no_data."""
    out[j, i] = NAN
    out_var[j, i] = NAN
    out_mask[j, i] = no_data


cdef long long _warp_row(Py_ssize_t j, const double[:, ::1] src, const double[:, ::1] src_var,
                         const uint16_t[:, ::1] src_mask, Py_ssize_t sx0, Py_ssize_t sy0,
                         const double[:, ::1] gu, const double[:, ::1] gv, const double[:, ::1] gj,
                         Py_ssize_t gx0, Py_ssize_t gy0, Py_ssize_t step, Py_ssize_t dx0, Py_ssize_t dy0,
                         float[:, ::1] out, float[:, ::1] out_var, uint16_t[:, ::1] out_mask, uint16_t no_data,
                         double mask_weight, const double *table, double *buf, Py_ssize_t ntx,
                         const uint16_t *tile_or, const uint16_t *tile_and, const unsigned char[:, ::1] skip,
                         bint has_skip) noexcept nogil:
    """Output row j of `warp` (the arguments are warp's); buf: 3 (nc + 1) doubles of scratch (the row's
    nodes); has_skip: whether `skip` is given. Returns the row's pixels with data.

    The row is done BATCH pixels at a time, in four passes over the batch: source positions, kernel
    weights, the sums, the mask (tile_or / tile_and: _tile_or_and's summaries, ntx tiles per row). Each
    pixel's work is one long chain of dependent steps (position -> table
    lookup -> weights -> sums); in passes, the independent chains of a batch's pixels overlap in the
    processor instead of waiting on one another. Every pixel is computed as it would be alone."""
    cdef Py_ssize_t nx = out.shape[1], sny = src.shape[0], snx = src.shape[1], nc = gu.shape[1]
    cdef Py_ssize_t sstride = snx               # src and src_var: C-contiguous, of one shape
    cdef Py_ssize_t i, i0, k, n, a, b, q, c, r, Y, c_lo, c_hi, rem, i_first, i_last, t0, tdx, tdy
    cdef double inv_step = 1.0 / step, ty, tx, u, v, fx, fy, acc, accv, wmax, wymax
    cdef double ulo = sx0 + 2.0, uhi = sx0 + snx - 3.0, vlo = sy0 + 2.0, vhi = sy0 + sny - 3.0
    cdef double *ru = buf
    cdef double *rv = ru + (nc + 1)
    cdef double *rj = rv + (nc + 1)
    cdef double fu[BATCH]
    cdef double fv[BATCH]
    cdef double jac[BATCH]
    cdef Py_ssize_t ixs[BATCH]
    cdef Py_ssize_t iys[BATCH]
    cdef Py_ssize_t inside[BATCH]
    cdef double wxs[BATCH * 6]
    cdef double wys[BATCH * 6]
    cdef double *wx
    cdef double *wy
    cdef const uint16_t *pm
    cdef uint16_t m
    cdef long long covered = 0
    c_lo = (dx0 - gx0) // step
    c_hi = (dx0 + nx - 1 - gx0) // step + 1
    Y = dy0 + j
    r = (Y - gy0) // step
    ty = (Y - gy0 - r * step) * inv_step
    for c in range(c_lo, c_hi + 1):          # the row's nodes, interpolated in y
        ru[c] = gu[r, c] + ty * (gu[r + 1, c] - gu[r, c])
        rv[c] = gv[r, c] + ty * (gv[r + 1, c] - gv[r, c])
        rj[c] = gj[r, c] + ty * (gj[r + 1, c] - gj[r, c])
    # the first and last pixels that may have data: the node segments before and after them map wholly
    # outside the source (the rest of the row is NO_DATA without computing its positions)
    i_first = nx
    i_last = -1
    for c in range(c_lo, c_hi):
        if _segment_outside(ru[c], ru[c + 1], rv[c], rv[c + 1], ulo, uhi, vlo, vhi):
            continue
        a = gx0 + c * step - dx0              # segment c: pixels a .. a + step (the end node included)
        if i_first == nx:
            i_first = a if a > 0 else 0
        i_last = a + step if a + step < nx - 1 else nx - 1
    if i_first > i_last:
        i_first = nx
        i_last = nx - 1
    for i in range(i_first):
        _no_data(out, out_var, out_mask, j, i, no_data)
    for i in range(i_last + 1, nx):
        _no_data(out, out_var, out_mask, j, i, no_data)
    if i_first == nx:
        return 0
    c = (dx0 + i_first - gx0) // step         # X = dx0 + i is rem pixels past node column c,
    rem = dx0 + i_first - gx0 - c * step      # stepped along the row (no division per pixel)
    i0 = i_first
    while i0 <= i_last:
        n = BATCH if i_last + 1 - i0 > BATCH else i_last + 1 - i0
        # 1. source positions (the pixels whose 6 x 6 footprint is inside the source are listed in `inside`)
        k = 0
        for i in range(i0, i0 + n):
            if rem == step:
                c += 1
                rem = 0
            tx = rem * inv_step
            rem += 1
            if has_skip and skip[j, i]:
                _no_data(out, out_var, out_mask, j, i, no_data)
                continue
            u = ru[c] + tx * (ru[c + 1] - ru[c])
            v = rv[c] + tx * (rv[c + 1] - rv[c])
            fx = floor(u + 0.5)                  # round-off of an exact integer map (identity, shifts)
            if fabs(u - fx) < SNAP:
                u = fx
            fy = floor(v + 0.5)
            if fabs(v - fy) < SNAP:
                v = fy
            if not (u >= ulo and u < uhi and v >= vlo and v < vhi):     # NaN fails too
                _no_data(out, out_var, out_mask, j, i, no_data)
                continue
            jac[k] = rj[c] + tx * (rj[c + 1] - rj[c])
            fx = floor(u)
            fy = floor(v)
            ixs[k] = <Py_ssize_t> fx - 2 - sx0
            iys[k] = <Py_ssize_t> fy - 2 - sy0
            fu[k] = u - fx
            fv[k] = v - fy
            inside[k] = i
            k += 1
        # 2. the weights
        for a in range(k):
            _lanczos3(fu[a], &wxs[6 * a], table)
            _lanczos3(fv[a], &wys[6 * a], table)
        # 3. the sums
        for a in range(k):
            warp_sums6(&wxs[6 * a], &wys[6 * a], &src[iys[a], ixs[a]], &src_var[iys[a], ixs[a]], sstride, &acc,
                       &accv)
            i = inside[a]
            out[j, i] = <float> (jac[a] * acc)
            out_var[j, i] = <float> (jac[a] * jac[a] * accv)
        # 4. the mask: the OR of the taps with |wx wy| >= mask_weight. Where the (up to 2 x 2) summary tiles
        # under the 6 x 6 footprint have no bit (most of an image) that is 0; where all their bits are the
        # same, those bits if any tap qualifies (max |wx| max |wy| >= mask_weight, the product of the
        # largest being the largest product), else 0; elsewhere the taps are visited one by one
        for a in range(k):
            t0 = (iys[a] // TILE) * ntx + ixs[a] // TILE          # tiles (t0, t0 + dx), (t0 + dy, t0 + dy + dx)
            tdx = (ixs[a] + 5) // TILE - ixs[a] // TILE
            tdy = ((iys[a] + 5) // TILE - iys[a] // TILE) * ntx
            m = tile_or[t0] | tile_or[t0 + tdx] | tile_or[t0 + tdy] | tile_or[t0 + tdy + tdx]
            if m != 0:
                wx = &wxs[6 * a]
                wy = &wys[6 * a]
                wmax = 0.0
                wymax = 0.0
                for b in range(6):
                    if fabs(wx[b]) > wmax:
                        wmax = fabs(wx[b])
                    if fabs(wy[b]) > wymax:
                        wymax = fabs(wy[b])
                if m == tile_and[t0] & tile_and[t0 + tdx] & tile_and[t0 + tdy] & tile_and[t0 + tdy + tdx]:
                    if wymax * wmax < mask_weight:
                        m = 0
                else:
                    m = 0
                    for b in range(6):
                        if fabs(wy[b]) * wmax >= mask_weight:
                            pm = &src_mask[iys[a] + b, ixs[a]]
                            for q in range(6):
                                if fabs(wx[q] * wy[b]) >= mask_weight:
                                    m = m | pm[q]
            out_mask[j, inside[a]] = m
        covered += k
        i0 += n
    return covered


def warp(const double[:, ::1] src, const double[:, ::1] src_var, const uint16_t[:, ::1] src_mask,
         Py_ssize_t sx0, Py_ssize_t sy0,
         const double[:, ::1] gu, const double[:, ::1] gv, const double[:, ::1] gj,
         Py_ssize_t gx0, Py_ssize_t gy0, Py_ssize_t step, Py_ssize_t dx0, Py_ssize_t dy0,
         float[:, ::1] out, float[:, ::1] out_var, uint16_t[:, ::1] out_mask, uint16_t no_data,
         double mask_weight, bint quadratic, int threads=1, const unsigned char[:, ::1] skip=None):
    """Lanczos-3 warp (see _lanczos3_exact for `quadratic`) of (src, src_var, src_mask) into (out, out_var,
    out_mask); returns the number of pixels with data.

    Source positions within SNAP = 1e-9 px of an integer are set to it, so that an identity or
    integer-shift map is exact despite the round-off of its pixel -> sky -> pixel evaluation.

    src[j, i] is source pixel (sx0 + i, sy0 + j). Output pixel (i, j) is destination pixel
    X = dx0 + i, Y = dy0 + j. Its source position (u, v) and the area ratio J = |d(u, v)/d(X, Y)| are
    bilinear interpolations of the node grids gu, gv, gj, node (r, c) sitting at destination pixel
    (gx0 + c step, gy0 + r step); gx0 <= dx0, gy0 <= dy0 and the grid covers the output. The same
    destination pixel therefore gets bit-identical values whatever the output box.

    out = J sum w I, out_var = J^2 sum w^2 V (covariance ignored), out_mask = OR of the taps with
    |w| >= mask_weight (w = wx wy, the normalised separable weights). A pixel whose 6 x 6 footprint is
    not wholly inside src gets NaN, NaN, no_data (the NO_DATA mask bit).

    threads > 1: the output rows are shared among that many OpenMP threads (each row is computed by one
    thread in the same way, so the result is the same bits).

    skip: None, or uint8 of out's shape; its nonzero pixels get NaN, NaN, no_data without being computed
    (e.g. pixels that another warp fills). The other pixels are the same bits as without it.
    """
    cdef Py_ssize_t ny = out.shape[0], nc = gu.shape[1], j
    cdef bint has_skip = skip is not None
    cdef Py_ssize_t per = _lines(3 * (nc + 1) * sizeof(double)) // sizeof(double)   # whole cache lines
    cdef long long covered = 0
    cdef const double *table = &_table_q[0] if quadratic else &_table_p[0]
    cdef int nt = threads if threads > 1 else 1
    cdef Py_ssize_t ntx = (src_mask.shape[1] + TILE - 1) // TILE
    cdef Py_ssize_t ntiles = ntx * ((src_mask.shape[0] + TILE - 1) // TILE)
    cdef double *raw = <double *> PyMem_RawMalloc(nt * per * sizeof(double) + CACHE_LINE)
    cdef uint16_t *tiles = <uint16_t *> PyMem_RawMalloc(2 * ntiles * sizeof(uint16_t) + 1)
    cdef double *bufs
    if raw == NULL or tiles == NULL:
        PyMem_RawFree(raw)
        PyMem_RawFree(tiles)
        raise MemoryError("warp: cannot allocate the row buffers and the mask's tile summaries")
    bufs = <double *> _aligned(raw)
    with nogil:
        _tile_or_and(src_mask, ntx, tiles, tiles + ntiles)
    if nt == 1:                       # no OpenMP region at all: a process forked later (the report's pool)
        with nogil:                   # then inherits no OpenMP runtime that has run
            for j in range(ny):
                covered += _warp_row(j, src, src_var, src_mask, sx0, sy0, gu, gv, gj, gx0, gy0, step, dx0, dy0,
                                     out, out_var, out_mask, no_data, mask_weight, table, bufs, ntx, tiles,
                                     tiles + ntiles, skip, has_skip)
    else:
        for j in prange(ny, nogil=True, num_threads=nt, schedule="dynamic", chunksize=16):
            covered += _warp_row(j, src, src_var, src_mask, sx0, sy0, gu, gv, gj, gx0, gy0, step, dx0, dy0,
                                 out, out_var, out_mask, no_data, mask_weight, table,
                                 bufs + threadid() * per, ntx, tiles, tiles + ntiles, skip, has_skip)
    PyMem_RawFree(raw)
    PyMem_RawFree(tiles)
    return covered


include "_select.pxi"


#: Up to 16 values _median sorts them with Batcher's odd-even merge sort, padded with +inf to 4, 8 or 16
#: values: each comparator a min and a max on registers, no branch on the data (Hoare's selection, used
#: above 16, branches on the data in ways the processor cannot predict). A network of 2m values sorts both
#: halves (the network of m) and merges them.
cdef enum:
    NET_SIZE = 16


cdef inline void _cx(double *x, double *y) noexcept nogil:
    """One comparator: x, y = min, max (a min and a max instruction once inlined)."""
    cdef double a = x[0], b = y[0]
    x[0] = a if a < b else b
    y[0] = b if a < b else a


cdef inline void _sort4(double *a) noexcept nogil:
    """Sort a[0..4) in place (5 comparators)."""
    _cx(&a[0], &a[1]); _cx(&a[2], &a[3]); _cx(&a[0], &a[2]); _cx(&a[1], &a[3]); _cx(&a[1], &a[2])


cdef inline void _sort8(double *a) noexcept nogil:
    """Sort a[0..8) in place: both halves, then their merge (9 comparators)."""
    _sort4(a)
    _sort4(a + 4)
    _cx(&a[0], &a[4]); _cx(&a[2], &a[6]); _cx(&a[2], &a[4]); _cx(&a[1], &a[5]); _cx(&a[3], &a[7])
    _cx(&a[3], &a[5]); _cx(&a[1], &a[2]); _cx(&a[3], &a[4]); _cx(&a[5], &a[6])


cdef inline void _sort16(double *a) noexcept nogil:
    """Sort a[0..16) in place: both halves, then their merge (25 comparators)."""
    _sort8(a)
    _sort8(a + 8)
    _cx(&a[0], &a[8]); _cx(&a[4], &a[12]); _cx(&a[4], &a[8]); _cx(&a[2], &a[10]); _cx(&a[6], &a[14])
    _cx(&a[6], &a[10]); _cx(&a[2], &a[4]); _cx(&a[6], &a[8]); _cx(&a[10], &a[12]); _cx(&a[1], &a[9])
    _cx(&a[5], &a[13]); _cx(&a[5], &a[9]); _cx(&a[3], &a[11]); _cx(&a[7], &a[15]); _cx(&a[7], &a[11])
    _cx(&a[3], &a[5]); _cx(&a[7], &a[9]); _cx(&a[11], &a[13]); _cx(&a[1], &a[2]); _cx(&a[3], &a[4])
    _cx(&a[5], &a[6]); _cx(&a[7], &a[8]); _cx(&a[9], &a[10]); _cx(&a[11], &a[12]); _cx(&a[13], &a[14])


cdef double _median(double *a, Py_ssize_t n) noexcept nogil:
    """Median of a[0..n-1], n >= 1 (mean of the two middle values for even n); may reorder a."""
    cdef Py_ssize_t k = n // 2, i, m
    cdef double s[NET_SIZE]
    cdef double hi, lo
    if n <= NET_SIZE:
        m = 4 if n <= 4 else (8 if n <= 8 else NET_SIZE)
        for i in range(n):
            s[i] = a[i]
        for i in range(n, m):
            s[i] = INFINITY
        if m == 4:
            _sort4(s)
        elif m == 8:
            _sort8(s)
        else:
            _sort16(s)
        return s[k] if n % 2 else 0.5 * (s[k - 1] + s[k])
    hi = _select(a, n, k)
    if n % 2:
        return hi
    lo = a[0]
    for i in range(1, k):
        if a[i] > lo:
            lo = a[i]
    return 0.5 * (lo + hi)


cdef void _combine_row(Py_ssize_t j, const float[:, :, ::1] img, const float[:, :, ::1] var,
                       const uint16_t[:, :, ::1] mask, const double[::1] scale, const double[::1] weight,
                       int bad_bits, int protect_bits, int and_bits, uint16_t no_data, bint use_median,
                       double clip_sigma, int clip_iters, float[:, ::1] out, float[:, ::1] out_var,
                       uint16_t[:, ::1] out_mask, int32_t[:, ::1] out_n, float[:, ::1] out_depth,
                       char *scratch) noexcept nogil:
    """Output row j of `combine` (the arguments are combine's); scratch: 6 (N + 1) doubles, then N + 1 flags
    and N + 1 masks, aligned for doubles."""
    cdef Py_ssize_t N = img.shape[0], nx = img.shape[2]
    cdef Py_ssize_t i, k, n, nkeep, it, nprot
    cdef double x, vv, c, sw, swx, swv, thr, mad, rmax
    cdef uint16_t m, allbits, keepbits, everybits
    cdef double *xs = <double *> scratch
    cdef unsigned char *keep = <unsigned char *> (scratch + 6 * (N + 1) * sizeof(double))
    cdef uint16_t *ms = <uint16_t *> (scratch + 6 * (N + 1) * sizeof(double) + (N + 1))
    cdef double *vs = xs + (N + 1)
    cdef double *rs = vs + (N + 1)
    cdef double *tmp = rs + (N + 1)
    cdef double *ws = tmp + (N + 1)
    cdef double *sd = ws + (N + 1)
    for i in range(nx):
        n = 0
        nprot = 0
        allbits = 0
        for k in range(N):
            m = mask[k, j, i]
            allbits = allbits | m
            if m & bad_bits:
                continue
            x = img[k, j, i]
            vv = var[k, j, i]
            if not (isfinite(x) and isfinite(vv) and vv > 0.0):
                continue
            xs[n] = x * scale[k]
            vs[n] = vv * (scale[k] * scale[k])
            ws[n] = weight[k]
            ms[n] = m
            if m & protect_bits:
                nprot += 1
            keep[n] = 1
            n += 1
        if n == 0:
            out[j, i] = NAN
            out_var[j, i] = NAN
            out_mask[j, i] = allbits | no_data
            out_n[j, i] = 0
            out_depth[j, i] = 0.0
            continue
        c = 0.0
        if use_median or (clip_iters > 0 and n >= 3 and 2 * nprot < n):
            for k in range(n):
                tmp[k] = xs[k]
            c = _median(tmp, n)
        if not use_median and clip_iters > 0 and n >= 3 and 2 * nprot < n:
            for k in range(n):
                sd[k] = sqrt(vs[k])
            for it in range(clip_iters):
                rmax = 0.0
                for k in range(n):
                    rs[k] = fabs(xs[k] - c) / sd[k]
                    rmax = rs[k] if rs[k] > rmax else rmax
                if rmax <= clip_sigma:        # thr >= clip_sigma: every input is kept, whatever the MAD
                    thr = clip_sigma
                else:
                    for k in range(n):
                        tmp[k] = rs[k]
                    mad = MAD_TO_SIGMA * _median(tmp, n)
                    thr = clip_sigma * (mad if mad > 1.0 else 1.0)
                sw = 0.0
                swx = 0.0
                for k in range(n):
                    keep[k] = rs[k] <= thr
                    if keep[k]:
                        sw = sw + ws[k]
                        swx = swx + ws[k] * xs[k]
                c = swx / sw                  # >= half the inputs are within thr
        sw = 0.0
        swx = 0.0
        swv = 0.0
        nkeep = 0
        keepbits = 0
        everybits = 0xFFFF
        for k in range(n):
            if keep[k] or use_median:
                if use_median:
                    sw = sw + 1.0 / vs[k]
                else:
                    sw = sw + ws[k]
                    swx = swx + ws[k] * xs[k]
                    swv = swv + ws[k] * ws[k] * vs[k]
                keepbits = keepbits | ms[k]
                everybits = everybits & ms[k]
                nkeep += 1
        if use_median:
            vv = (M_PI / 2.0) / sw
        else:
            c = swx / sw
            vv = swv / (sw * sw)
        out[j, i] = <float> c
        out_var[j, i] = <float> vv
        out_mask[j, i] = (keepbits & ~and_bits) | (everybits & and_bits)
        out_n[j, i] = <int32_t> nkeep
        out_depth[j, i] = <float> (1.0 / vv)


def combine(const float[:, :, ::1] img, const float[:, :, ::1] var, const uint16_t[:, :, ::1] mask,
            const double[::1] scale, const double[::1] weight, int bad_bits, int protect_bits, int and_bits,
            uint16_t no_data, bint use_median, double clip_sigma, int clip_iters,
            float[:, ::1] out, float[:, ::1] out_var, uint16_t[:, ::1] out_mask, int32_t[:, ::1] out_n,
            float[:, ::1] out_depth, int threads=1):
    """Combine a stack of N warps (N, ny, nx) pixel by pixel; input k is multiplied by scale[k] (its
    variance by scale[k]^2) and weighs weight[k] (one number per input, so that the combination is linear
    with the same weights across a source and the coadd PSF is the weighted sum of the inputs' PSFs).

    Input k is good at a pixel if its mask has none of bad_bits and its value and variance are finite
    with variance > 0. Mean: c = sum(w x) / sum(w) over the kept inputs, variance sum(w^2 V) / sum(w)^2.
    Clipping (clip_iters > 0, >= 3 good inputs, and fewer than half of the good inputs carry one of
    protect_bits, i.e. not inside a source detected in most inputs, whose cores differ by the inputs'
    PSFs): start from the median, then clip_iters times keep the inputs with |x - c| / sqrt(V) <=
    clip_sigma max(1, 1.4826 MAD) (MAD = median of those normalised residuals) and set c to the weighted
    mean of the kept. Median: c = median, variance (pi/2) / sum(1/V) (exact for N large and equal
    variances). Outputs: out = c, out_var, out_mask = OR of the kept inputs' bits, except and_bits, which
    it carries only where every kept input does (all inputs' bits | no_data, the NO_DATA mask bit, where
    none is good: then out = NaN), out_n = number kept, out_depth =
    1 / out_var (0 where none is good).

    threads > 1: the output rows are shared among that many OpenMP threads (each row computed by one
    thread in the same way: the same bits).
    """
    cdef Py_ssize_t N = img.shape[0], ny = img.shape[1], j
    cdef int nt = threads if threads > 1 else 1
    # each thread's scratch in its own cache lines (a stride of whole lines)
    cdef Py_ssize_t stride = _lines(6 * (N + 1) * sizeof(double) + 3 * (N + 1))
    cdef char *raw = <char *> PyMem_RawMalloc(nt * stride + CACHE_LINE)
    cdef char *base
    if raw == NULL:
        raise MemoryError("combine: cannot allocate the per-pixel buffers")
    base = _aligned(raw)
    if nt == 1:                       # no OpenMP region at all (see warp)
        with nogil:
            for j in range(ny):
                _combine_row(j, img, var, mask, scale, weight, bad_bits, protect_bits, and_bits, no_data,
                             use_median, clip_sigma, clip_iters, out, out_var, out_mask, out_n, out_depth, base)
    else:
        for j in prange(ny, nogil=True, num_threads=nt, schedule="dynamic", chunksize=16):
            _combine_row(j, img, var, mask, scale, weight, bad_bits, protect_bits, and_bits, no_data,
                         use_median, clip_sigma, clip_iters, out, out_var, out_mask, out_n, out_depth,
                         base + threadid() * stride)
    PyMem_RawFree(raw)
