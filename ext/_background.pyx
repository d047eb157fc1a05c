# cython: language_level=3
"""Private kernels of twinkles_hpc/level2/background.py, which validates every input and documents the
method (nothing is checked twice here): sigma-clipped mesh statistics on histograms, piecewise cubics
along rows (the spline that takes the mesh to full resolution), and the running minimum over a box (the
Objects' source-free variance).

Images are float32 C-contiguous (ny, nx); pixel (i, j) is column i, row j, centred at x = i, y = j.
A mask is uint8 (nonzero = ignore) of the same shape, or of shape (0, 0) for "no mask". The kernels
release the GIL.
"""
from libc.math cimport INFINITY, NAN, ceil, fabs, floor, isfinite, sqrt, sqrtf
from libc.stdint cimport int32_t, uint16_t
from libc.stdlib cimport free, malloc
from libc.string cimport memset

include "_select.pxi"


cdef int _robust_start(float* sub, Py_ssize_t ns, double* m0, double* s0) noexcept nogil:
    """Median m0 and s0 = 1.4826 MAD (or, if that is 0, the standard deviation) of sub[0..ns) (reordered).
    Returns 1 if the values are all integers (quantised data)."""
    cdef Py_ssize_t i
    cdef int quantised = 1
    cdef double s1 = 0.0, s2 = 0.0, t
    for i in range(ns):
        if sub[i] != floor(sub[i]):
            quantised = 0
        t = sub[i]
        s1 += t
        s2 += t * t
    m0[0] = _select(sub, ns, ns // 2)
    for i in range(ns):
        sub[i] = <float> fabs(sub[i] - m0[0])
    s0[0] = 1.4826 * _select(sub, ns, ns // 2)
    if s0[0] <= 0.0:                            # more than half the values equal: the plain std
        s0[0] = sqrt(max(s2 / ns - (s1 / ns) * (s1 / ns), 0.0))
    return quantised


cdef int _clipped_stats(const int32_t* hist, Py_ssize_t nb, double lo, double w, double clip, int iters,
                        int estimator, double clip_corr, double* level, double* rms) noexcept nogil:
    """Sigma-clipped level and rms from a histogram (bins of width w from lo; see background.py).
    Returns 0, or 1 if too few values are left."""
    cdef Py_ssize_t b, b0 = 0, b1 = nb - 1, c0, c1
    cdef double iw = 1.0 / w, n_k, s1, s2, t, c, mean = 0.0, sd = 0.0, med = 0.0, cum, half, vlo, vhi
    cdef int it
    for it in range(iters + 1):
        n_k = s1 = s2 = 0.0
        for b in range(b0, b1 + 1):
            c = hist[b]
            t = (b + 0.5) * w                  # bin centre - lo
            n_k += c
            s1 += c * t
            s2 += c * t * t
        if n_k < 8:
            return 1
        mean = s1 / n_k
        sd = sqrt(max(s2 / n_k - mean * mean, 0.0))
        half = 0.5 * n_k                       # median: linear interpolation inside its bin
        cum = 0.0
        b = b0
        while b < b1 and cum + hist[b] < half:
            cum += hist[b]
            b += 1
        med = (b + (half - cum) / hist[b]) * w if hist[b] > 0 else (b + 0.5) * w
        if it == iters:
            break
        vlo = (med - clip * sd) * iw - 0.5    # keep bins whose centres lie within med +- clip sd
        vhi = (med + clip * sd) * iw - 0.5
        c0 = <Py_ssize_t> ceil(vlo) if vlo > 0 else 0
        c1 = <Py_ssize_t> floor(vhi) if vhi < nb - 1 else nb - 1
        if c0 == b0 and c1 == b1:
            break
        b0 = c0
        b1 = c1
        if b1 < b0:
            return 1
    if estimator == 0 and fabs(mean - med) < 0.3 * sd:
        level[0] = lo + 2.5 * med - 1.5 * mean
    elif estimator == 2:
        level[0] = lo + mean
    else:
        level[0] = lo + med
    rms[0] = sd * clip_corr
    return 0


def mesh_stats(const float[:, ::1] image, const unsigned char[:, ::1] mask, const Py_ssize_t[::1] xe,
               const Py_ssize_t[::1] ye, double clip, int iters, int estimator, double clip_corr,
               double min_valid, double[:, ::1] level, double[:, ::1] rms):
    """Clipped background level and rms of each mesh [ye[j], ye[j+1]) x [xe[i], xe[i+1]), unmasked pixels
    only; estimator 0 sextractor, 1 median, 2 mean. Per mesh: a robust start from a strided subsample of
    about 1024 pixels, then a histogram of m0 +- 8 s0 (see background.py). A strip of meshes is read row by
    row (all its meshes' histograms at once) so that memory is streamed. Meshes with fewer than min_valid x
    their area of usable pixels, or too few values, get NaN. Returns the flat index of the first unmasked
    non-finite pixel met, or -1."""
    cdef Py_ssize_t my = ye.shape[0] - 1, mx = xe.shape[0] - 1, nx = image.shape[1], HB = 1030, NS = 1200
    cdef Py_ssize_t i, j, mi, mj, nb, sx, sy, x0, x1, y0, y1, k
    cdef const unsigned char* m = &mask[0, 0] if mask.shape[0] > 0 else NULL
    cdef const unsigned char* mrow
    cdef const float* row
    cdef float v, flo, fiw, fhi, ft
    cdef double m0, s0, lo, w
    cdef int quantised
    cdef int32_t* h
    cdef Py_ssize_t bad = -1
    cdef float* sub = <float*> malloc(mx * NS * sizeof(float))
    cdef int32_t* hist = <int32_t*> malloc(mx * HB * sizeof(int32_t))
    cdef Py_ssize_t* ns = <Py_ssize_t*> malloc(mx * sizeof(Py_ssize_t))
    cdef Py_ssize_t* nbs = <Py_ssize_t*> malloc(mx * sizeof(Py_ssize_t))
    cdef double* los = <double*> malloc(mx * 3 * sizeof(double))
    cdef int* nonfinite = <int*> malloc(mx * sizeof(int))
    if not (sub and hist and ns and nbs and los and nonfinite):
        free(sub); free(hist); free(ns); free(nbs); free(los); free(nonfinite)
        raise MemoryError("mesh_stats: no memory")
    with nogil:
        for mj in range(my):
            y0, y1 = ye[mj], ye[mj + 1]
            sy = max(1, <Py_ssize_t> ceil((y1 - y0) / 32.0))
            for mi in range(mx):
                ns[mi] = 0
                nonfinite[mi] = 0
            j = y0
            while j < y1:                       # subsample rows: every sy-th row, every sx-th column
                for mi in range(mx):
                    x0, x1 = xe[mi], xe[mi + 1]
                    sx = max(1, <Py_ssize_t> ceil((x1 - x0) / 32.0))
                    i = x0
                    while i < x1 and ns[mi] < NS:
                        v = image[j, i]
                        if (m == NULL or not m[j * nx + i]) and isfinite(v):
                            sub[mi * NS + ns[mi]] = v
                            ns[mi] += 1
                        i += sx
                j += sy
            for mi in range(mx):                # histogram layout: ~16 bins per s0 over m0 +- 8 s0
                level[mj, mi] = NAN
                rms[mj, mi] = NAN
                nbs[mi] = 0
                if ns[mi] < 16:
                    continue
                quantised = _robust_start(sub + mi * NS, ns[mi], &m0, &s0)
                w = s0 / 16.0
                lo = m0 - 8.0 * s0
                if quantised:                   # integer data: whole-electron bins edged at half-integers
                    w = floor(w + 0.5) if w >= 1.0 else 1.0
                    lo = floor(lo) - 0.5
                if s0 <= 0.0:
                    w = 1.0
                    lo = m0 - 0.5
                nbs[mi] = min(<Py_ssize_t> ceil(16.0 * s0 / w) + 1, HB - 6)
                los[3 * mi] = lo
                los[3 * mi + 1] = w
                los[3 * mi + 2] = s0
                memset(hist + mi * HB, 0, (nbs[mi] + 3) * sizeof(int32_t))
            # branch-free fill: h[0] under, h[1..nb] the bins, h[nb+1] over, h[nb+2] masked
            for j in range(y0, y1):
                row = &image[j, 0]
                mrow = m + j * nx if m != NULL else NULL
                for mi in range(mx):
                    nb = nbs[mi]
                    if nb == 0:
                        continue
                    h = hist + mi * HB
                    flo = <float> los[3 * mi]
                    fiw = <float> (1.0 / los[3 * mi + 1])
                    fhi = <float> nb
                    x0, x1 = xe[mi], xe[mi + 1]
                    if mrow == NULL:
                        for i in range(x0, x1):
                            v = row[i]
                            nonfinite[mi] |= not isfinite(v)
                            ft = (v - flo) * fiw
                            ft = -1.0 if ft < 0.0 else (fhi if ft > fhi else ft)
                            h[<Py_ssize_t> (ft + 1.0)] += 1
                    else:
                        for i in range(x0, x1):
                            v = row[i]
                            nonfinite[mi] |= (not isfinite(v)) & (mrow[i] == 0)
                            ft = (v - flo) * fiw
                            ft = -1.0 if ft < 0.0 else (fhi if ft > fhi else ft)
                            h[(<Py_ssize_t> (ft + 1.0)) if mrow[i] == 0 else nb + 2] += 1
            for mi in range(mx):
                nb = nbs[mi]
                if nb == 0:
                    continue
                x0, x1 = xe[mi], xe[mi + 1]
                h = hist + mi * HB
                if nonfinite[mi]:
                    if bad < 0:
                        for k in range((y1 - y0) * (x1 - x0)):
                            j = y0 + k // (x1 - x0)
                            i = x0 + k % (x1 - x0)
                            if (m == NULL or not m[j * nx + i]) and not isfinite(image[j, i]):
                                bad = j * nx + i
                                break
                    continue
                if (x1 - x0) * (y1 - y0) - h[nb + 2] < min_valid * (x1 - x0) * (y1 - y0):
                    continue
                if los[3 * mi + 2] <= 0.0:      # a constant mesh
                    level[mj, mi] = los[3 * mi] + 0.5
                    rms[mj, mi] = 0.0
                    continue
                _clipped_stats(h + 1, nb, los[3 * mi], los[3 * mi + 1], clip, iters, estimator, clip_corr,
                               &level[mj, mi], &rms[mj, mi])
    free(sub); free(hist); free(ns); free(nbs); free(los); free(nonfinite)
    return bad


def spline_rows(const double[:, :, ::1] coef, const double[::1] knots, const Py_ssize_t[::1] cols,
                float[:, ::1] out):
    """out[j, i] = sum_k coef[j, s, k] (i - knots[s])^(3 - k) for columns cols[s] <= i < cols[s + 1]: a
    piecewise cubic along each row (e.g. a spline, in scipy's PPoly layout)."""
    cdef Py_ssize_t ny = out.shape[0], nseg = knots.shape[0], j, s, i
    cdef double c0, c1, c2, c3, t
    with nogil:
        for j in range(ny):
            for s in range(nseg):
                c0 = coef[j, s, 0]
                c1 = coef[j, s, 1]
                c2 = coef[j, s, 2]
                c3 = coef[j, s, 3]
                for i in range(cols[s], cols[s + 1]):
                    t = i - knots[s]
                    out[j, i] = <float> (((c0 * t + c1) * t + c2) * t + c3)


cdef enum:
    MIN_STRIP = 256                 # columns per strip of _running_min's column pass


cdef inline float _fmin(float a, float b) noexcept nogil:
    return a if a <= b else b


cdef int _running_min(const float *src, Py_ssize_t ny, Py_ssize_t nx, Py_ssize_t h, float *out) noexcept nogil:
    """out[j, i] = the minimum of src over the box of rows j - h .. j + h and columns i - h .. i + h that
    lies on the image (the result of a (2h + 1)^2 minimum filter with the edge pixels repeated outward).
    Rows, then columns in strips of MIN_STRIP, each by van Herk and Gil & Werman's algorithm: along a line
    padded with h infinities at either end and cut into blocks of w = 2h + 1, the minimum over the window
    starting at k is min(S[k], G[k + w - 1]), S the minimum from k to the end of its block and G from the
    start of its block to k: three comparisons a pixel whatever h. Minima are exact: the same values as any
    other order. NaN must not occur (+inf for the pixels to ignore). -1 when out of memory."""
    cdef Py_ssize_t w = 2 * h + 1, L, n, k, i, j, c, c0, W, b0, b1
    cdef float inf = INFINITY
    cdef float *tmp
    cdef float *G
    cdef float *S
    cdef float *B
    n = (nx if nx > ny else ny) + 2 * h
    tmp = <float *> malloc(ny * nx * sizeof(float))
    B = <float *> malloc(3 * (n * MIN_STRIP) * sizeof(float))
    if tmp == NULL or B == NULL:
        free(tmp)
        free(B)
        return -1
    G = B + n * MIN_STRIP
    S = G + n * MIN_STRIP
    L = nx + 2 * h                              # rows: one line at a time
    for k in range(h):
        B[k] = inf
        B[nx + h + k] = inf
    for j in range(ny):
        for k in range(nx):
            B[h + k] = src[j * nx + k]
        b0 = 0
        while b0 < L:
            b1 = b0 + w if b0 + w < L else L
            G[b0] = B[b0]
            for k in range(b0 + 1, b1):
                G[k] = _fmin(G[k - 1], B[k])
            S[b1 - 1] = B[b1 - 1]
            for k in range(b1 - 2, b0 - 1, -1):
                S[k] = _fmin(S[k + 1], B[k])
            b0 = b1
        for i in range(nx):
            tmp[j * nx + i] = _fmin(S[i], G[i + w - 1])
    L = ny + 2 * h                              # columns: a strip of W at a time, rows as vectors
    c0 = 0
    while c0 < nx:
        W = MIN_STRIP if nx - c0 > MIN_STRIP else nx - c0
        for k in range(L):
            if h <= k < ny + h:
                for c in range(W):
                    B[k * W + c] = tmp[(k - h) * nx + c0 + c]
            else:
                for c in range(W):
                    B[k * W + c] = inf
        b0 = 0
        while b0 < L:
            b1 = b0 + w if b0 + w < L else L
            for c in range(W):
                G[b0 * W + c] = B[b0 * W + c]
            for k in range(b0 + 1, b1):
                for c in range(W):
                    G[k * W + c] = _fmin(G[(k - 1) * W + c], B[k * W + c])
            for c in range(W):
                S[(b1 - 1) * W + c] = B[(b1 - 1) * W + c]
            for k in range(b1 - 2, b0 - 1, -1):
                for c in range(W):
                    S[k * W + c] = _fmin(S[(k + 1) * W + c], B[k * W + c])
            b0 = b1
        for j in range(ny):
            for c in range(W):
                out[j * nx + c0 + c] = _fmin(S[j * W + c], G[(j + w - 1) * W + c])
        c0 += W
    free(tmp)
    free(B)
    return 0


def add_detection_band(const float[:, ::1] image, const float[:, ::1] variance, const uint16_t[:, ::1] mask,
                       uint16_t no_data, Py_ssize_t h, double[:, ::1] D, double[:, ::1] V, int32_t[:, ::1] n,
                       uint16_t[:, ::1] mask_or):
    """One band's share of the Objects' detection image (level2/objects.py): with good = finite image and
    variance, variance > 0 and no `no_data` bit, and s2 = the running minimum (2h + 1 box) of the variance
    over the good pixels, where good and s2 finite and > 0: D += image / sqrt(s2) and V += variance / s2
    (float32 quotients added to the float64 sums), n += 1; mask_or |= mask everywhere."""
    cdef Py_ssize_t ny = image.shape[0], nx = image.shape[1], j, i
    cdef float x, v, m
    cdef float *buf
    cdef float *s2
    cdef int err = 0
    if ny == 0 or nx == 0:
        return
    buf = <float *> malloc(2 * ny * nx * sizeof(float))
    if buf == NULL:
        raise MemoryError("add_detection_band: no memory for the variance planes")
    s2 = buf + ny * nx
    with nogil:
        for j in range(ny):                     # buf: the variance where good, +inf elsewhere
            for i in range(nx):
                x = image[j, i]
                v = variance[j, i]
                buf[j * nx + i] = v if (isfinite(x) and isfinite(v) and v > 0 and (mask[j, i] & no_data) == 0) else INFINITY
        err = _running_min(buf, ny, nx, h, s2)
        if err == 0:
            for j in range(ny):
                for i in range(nx):
                    m = s2[j * nx + i]
                    if buf[j * nx + i] < INFINITY and isfinite(m) and m > 0:       # good, s2 usable
                        D[j, i] = D[j, i] + <double> (image[j, i] / sqrtf(m))
                        V[j, i] = V[j, i] + <double> (variance[j, i] / m)
                        n[j, i] += 1
                    mask_or[j, i] |= mask[j, i]
    free(buf)
    if err != 0:
        raise MemoryError("add_detection_band: no memory for the running minimum")
