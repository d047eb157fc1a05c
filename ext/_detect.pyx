# cython: language_level=3
"""Private kernels of twinkles_hpc/level2/detect.py (source detection: matched filter, connected
footprints, deblending, measurement), which validates every input and documents the method; nothing is
checked twice here. The detection catalogue's flag bits are defined here (FLAGS) and re-exported there.

Images are float32 C-contiguous (ny, nx); pixel (i, j) is column i, row j, centred at x = i, y = j.
A mask is uint8 (nonzero = ignore) of the same shape, or of shape (0, 0) for "no mask". Every kernel
releases the GIL. Kernels that can meet bad pixels return the flat index of the first one (-1 if none).
"""
import numpy as np
from libc.math cimport NAN, ceil, exp, floor, sqrt
from libc.stdint cimport int32_t, int64_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memchr, memset

cdef enum:
    # the `flags` bits of the detection catalogue (documented in detect.py, which re-exports them)
    FLAG_DEBLENDED = 1
    FLAG_EDGE = 2
    FLAG_MASKED = 4
    FLAG_CENTROID = 8
    FLAG_NEGATIVE = 16

#: Flag name -> bit (the wrapper's FLAG_<name>).
FLAGS = {"DEBLENDED": FLAG_DEBLENDED, "EDGE": FLAG_EDGE, "MASKED": FLAG_MASKED, "CENTROID": FLAG_CENTROID,
         "NEGATIVE": FLAG_NEGATIVE}

# ------------------------------------------------------------------ sorting
cdef void _sort_u64(uint64_t* a, Py_ssize_t n) noexcept nogil:
    """Sort a[0..n) ascending: quicksort (median of three), insertion sort below 24 elements; the smaller
    side is sorted first by recursion so the stack stays O(log n)."""
    cdef Py_ssize_t i, j, m
    cdef uint64_t p, t
    while n > 24:
        m = n // 2
        if a[m] < a[0]:
            t = a[m]; a[m] = a[0]; a[0] = t
        if a[n - 1] < a[0]:
            t = a[n - 1]; a[n - 1] = a[0]; a[0] = t
        if a[n - 1] < a[m]:
            t = a[n - 1]; a[n - 1] = a[m]; a[m] = t
        p = a[m]
        i = 0
        j = n - 1
        while i <= j:
            while a[i] < p:
                i += 1
            while a[j] > p:
                j -= 1
            if i <= j:
                t = a[i]; a[i] = a[j]; a[j] = t
                i += 1
                j -= 1
        if j + 1 < n - i:
            _sort_u64(a, j + 1)
            a += i
            n -= i
        else:
            _sort_u64(a + i, n - i)
            n = j + 1
    for i in range(1, n):
        t = a[i]
        j = i - 1
        while j >= 0 and a[j] > t:
            a[j + 1] = a[j]
            j -= 1
        a[j + 1] = t


cdef inline uint32_t _desc_key(float v) noexcept nogil:
    """32-bit key that sorts ascending as v sorts descending (IEEE bits made monotonic, then inverted)."""
    cdef uint32_t b = (<uint32_t*> &v)[0]
    b = ~b if b & 0x80000000u else b | 0x80000000u
    return ~b


# ------------------------------------------------------------------ matched filter
cdef Py_ssize_t _load_row(const float* src, const unsigned char* m, Py_ssize_t nx, float* dst,
                          bint variance) noexcept nogil:
    """Copy a row into dst with masked pixels (m nonzero; m may be NULL) set to 0. Returns the column of
    the first unmasked non-finite value (or negative one, for a variance), or -1. Branch-free bit tests
    so that the copy vectorises."""
    cdef const uint32_t* bits = <const uint32_t*> src
    cdef uint32_t bad = 0, b
    cdef Py_ssize_t i
    if m == NULL:
        if variance:
            for i in range(nx):
                dst[i] = src[i]
                b = bits[i]
                bad |= ((b & 0x7f800000u) == 0x7f800000u) | (b > 0x80000000u)
        else:
            for i in range(nx):
                dst[i] = src[i]
                bad |= (bits[i] & 0x7f800000u) == 0x7f800000u
    else:
        for i in range(nx):
            b = bits[i]
            dst[i] = src[i] if m[i] == 0 else 0.0
            bad |= (((b & 0x7f800000u) == 0x7f800000u) | (variance and b > 0x80000000u)) & (m[i] == 0)
    if not bad:
        return -1
    for i in range(nx):
        b = bits[i]
        if (m == NULL or m[i] == 0) and ((b & 0x7f800000u) == 0x7f800000u or (variance and b > 0x80000000u)):
            return i
    return -1


cdef void _smooth_row(float** ring, Py_ssize_t j, Py_ssize_t ny, Py_ssize_t nx, Py_ssize_t r,
                      const float* k, float* pad, float* out) noexcept nogil:
    """out = row j of the separable convolution with the symmetric taps k[0..2r]: vertical taps from the
    ring of loaded rows (rows outside the image count as 0) into pad (r zeros either side), then the
    horizontal taps. Symmetric pairs share a multiply."""
    cdef Py_ssize_t t, i, n2 = 2 * r + 1
    cdef float kt
    cdef float* a
    cdef float* b
    cdef float* p = pad + r
    memset(pad, 0, r * sizeof(float))
    memset(pad + r + nx, 0, r * sizeof(float))
    a = ring[j % n2]
    kt = k[r]
    for i in range(nx):
        p[i] = kt * a[i]
    for t in range(1, r + 1):
        kt = k[r + t]
        if j - t >= 0 and j + t < ny:
            a = ring[(j - t) % n2]
            b = ring[(j + t) % n2]
            for i in range(nx):
                p[i] += kt * (a[i] + b[i])
        elif j - t >= 0 or j + t < ny:
            a = ring[(j - t) % n2] if j - t >= 0 else ring[(j + t) % n2]
            for i in range(nx):
                p[i] += kt * a[i]
    kt = k[r]
    for i in range(nx):
        out[i] = kt * p[i]
    for t in range(1, r + 1):
        kt = k[r + t]
        a = p - t
        b = p + t
        for i in range(nx):
            out[i] += kt * (a[i] + b[i])
    return


def matched_filter(const float[:, ::1] image, const float[:, ::1] variance, const unsigned char[:, ::1] mask,
                   const float[::1] taps, float[:, ::1] simage, float[:, ::1] svariance):
    """simage = image (x) K, svariance = variance (x) K^2 with K = taps (x) taps (separable, 2r+1 taps),
    masked pixels and pixels outside the image counting as 0. An empty (0, 0) image and simage: the
    variance alone. Returns the flat index of the first unmasked pixel whose image or variance is
    non-finite or whose variance is negative, or -1."""
    cdef Py_ssize_t ny = variance.shape[0], nx = variance.shape[1], n2 = taps.shape[0], r = (taps.shape[0] - 1) // 2
    cdef Py_ssize_t j, jl, i, t, bad = -1, badv = -1
    cdef bint with_image = image.shape[0] > 0
    cdef const unsigned char* m = &mask[0, 0] if mask.shape[0] > 0 else NULL
    cdef float* ringi = <float*> malloc(n2 * nx * sizeof(float))
    cdef float* ringv = <float*> malloc(n2 * nx * sizeof(float))
    cdef float* pad = <float*> malloc((nx + 2 * r) * sizeof(float))
    cdef float* k = <float*> malloc(2 * n2 * sizeof(float))
    cdef float** rowi = <float**> malloc(n2 * sizeof(float*))
    cdef float** rowv = <float**> malloc(n2 * sizeof(float*))
    if not (ringi and ringv and pad and k and rowi and rowv):
        free(ringi); free(ringv); free(pad); free(k); free(rowi); free(rowv)
        raise MemoryError("matched_filter: no memory for row buffers")
    with nogil:
        for t in range(n2):
            k[t] = taps[t]
            k[n2 + t] = taps[t] * taps[t]
            rowi[t] = ringi + t * nx
            rowv[t] = ringv + t * nx
        jl = 0                                  # next row to load
        for j in range(ny):
            while jl < ny and jl <= j + r:
                if with_image:
                    i = _load_row(&image[jl, 0], m + jl * nx if m != NULL else NULL, nx, rowi[jl % n2], False)
                    if i >= 0 and bad < 0:
                        bad = jl * nx + i
                i = _load_row(&variance[jl, 0], m + jl * nx if m != NULL else NULL, nx, rowv[jl % n2], True)
                if i >= 0 and badv < 0:
                    badv = jl * nx + i
                jl += 1
            if with_image:
                _smooth_row(rowi, j, ny, nx, r, k, pad, &simage[j, 0])
            _smooth_row(rowv, j, ny, nx, r, k + n2, pad, &svariance[j, 0])
    free(ringi); free(ringv); free(pad); free(k); free(rowi); free(rowv)
    if bad < 0 or (0 <= badv < bad):
        bad = badv
    return bad


# ------------------------------------------------------------------ connected components
cdef inline int32_t _find(int32_t* parent, int32_t a) noexcept nogil:
    while parent[a] != a:
        parent[a] = parent[parent[a]]         # path halving
        a = parent[a]
    return a


cdef inline void _union(int32_t* parent, int32_t a, int32_t b) noexcept nogil:
    a = _find(parent, a)
    b = _find(parent, b)
    if a < b:
        parent[b] = a
    elif b < a:
        parent[a] = b


cdef int _grow(void** arr, Py_ssize_t cap, size_t size) noexcept nogil:
    cdef void* t = realloc(arr[0], cap * size)
    if t == NULL:
        return 1
    arr[0] = t
    return 0


def label(const float[:, ::1] simage, const float[:, ::1] svariance, const unsigned char[:, ::1] mask,
          double threshold, Py_ssize_t min_npix, int32_t[:, ::1] labels):
    """8-connected components of the unmasked pixels with simage > threshold sqrt(svariance) > 0 (or, if
    simage has shape (0, 0), of the masked pixels).

    Each row's detected pixels become runs; a run joins every run of the row above that it touches
    (columns a - 1 .. b + 1), with union-find over provisional labels. Components of at least min_npix
    pixels are numbered 1.. in raster order of their first pixel and written into labels (0 elsewhere).
    Returns (nfp, start, pix): the flat indices of footprint f's pixels, in raster order, are
    pix[start[f - 1]:start[f]].
    """
    cdef Py_ssize_t ny = labels.shape[0], nx = labels.shape[1], i, j, a, b, q, qq
    cdef bint of_mask = simage.shape[0] == 0
    cdef Py_ssize_t nruns = 0, rcap = 4096, lcap = 4096, nprov = 1, nfinal = 0, prev_lo = 0, prev_hi = 0
    cdef Py_ssize_t cur_lo, k, total = 0
    cdef const unsigned char* m = &mask[0, 0] if mask.shape[0] > 0 else NULL
    cdef float t2 = <float> (threshold * threshold), v, sv
    cdef const float* srow
    cdef const float* vrow
    cdef int32_t lab, r
    cdef int failed = 0
    cdef unsigned char* det = <unsigned char*> malloc(nx + 1)
    cdef int32_t* rrow = <int32_t*> malloc(rcap * sizeof(int32_t))
    cdef int32_t* rx0 = <int32_t*> malloc(rcap * sizeof(int32_t))
    cdef int32_t* rx1 = <int32_t*> malloc(rcap * sizeof(int32_t))
    cdef int32_t* rl = <int32_t*> malloc(rcap * sizeof(int32_t))
    cdef int32_t* parent = <int32_t*> malloc(lcap * sizeof(int32_t))
    cdef int64_t* count = <int64_t*> malloc(lcap * sizeof(int64_t))
    cdef void* found
    if not (det and rrow and rx0 and rx1 and rl and parent and count):
        free(det); free(rrow); free(rx0); free(rx1); free(rl); free(parent); free(count)
        raise MemoryError("label: no memory")
    with nogil:
        det[nx] = 0                              # sentinel: runs end at the last column
        parent[0] = 0
        count[0] = 0
        for j in range(ny):
            if of_mask:
                for i in range(nx):
                    det[i] = m[j * nx + i] != 0
            else:
                srow = &simage[j, 0]
                vrow = &svariance[j, 0]
                for i in range(nx):
                    v = srow[i]
                    sv = vrow[i]
                    det[i] = (v > 0) & (sv > 0) & (v * v > t2 * sv)
                if m != NULL:
                    for i in range(nx):
                        det[i] &= m[j * nx + i] == 0
            memset(&labels[j, 0], 0, nx * sizeof(int32_t))
            cur_lo = nruns
            i = 0
            q = prev_lo
            while i < nx:
                found = memchr(det + i, 1, nx - i)
                if found == NULL:
                    break
                a = <unsigned char*> found - det
                b = a
                while det[b + 1]:
                    b += 1
                while q < prev_hi and rx1[q] < a - 1:
                    q += 1
                lab = 0
                qq = q
                while qq < prev_hi and rx0[qq] <= b + 1:
                    if lab == 0:
                        lab = rl[qq]
                    else:
                        _union(parent, lab, rl[qq])
                    qq += 1
                if lab == 0:
                    if nprov == lcap:
                        lcap *= 2
                        if lcap > 2147483647 or _grow(<void**> &parent, lcap, sizeof(int32_t)) \
                                or _grow(<void**> &count, lcap, sizeof(int64_t)):
                            failed = 1
                            break
                    lab = <int32_t> nprov
                    parent[lab] = lab
                    count[lab] = 0
                    nprov += 1
                if nruns == rcap:
                    rcap *= 2
                    if _grow(<void**> &rrow, rcap, sizeof(int32_t)) or _grow(<void**> &rx0, rcap, sizeof(int32_t)) \
                            or _grow(<void**> &rx1, rcap, sizeof(int32_t)) or _grow(<void**> &rl, rcap, sizeof(int32_t)):
                        failed = 1
                        break
                rrow[nruns] = <int32_t> j
                rx0[nruns] = <int32_t> a
                rx1[nruns] = <int32_t> b
                rl[nruns] = lab
                nruns += 1
                count[lab] += b - a + 1
                i = b + 1
            if failed:
                break
            prev_lo = cur_lo
            prev_hi = nruns
        if not failed:
            for lab in range(1, nprov):          # pixel counts into roots (a root is its set's smallest label)
                r = _find(parent, lab)
                if r != lab:
                    count[r] += count[lab]
            for lab in range(1, nprov):          # final ids, in raster order of first pixel; count -> id
                if parent[lab] == lab:
                    if count[lab] >= min_npix:
                        nfinal += 1
                        total += count[lab]
                        count[lab] = nfinal
                    else:
                        count[lab] = 0
            for lab in range(1, nprov):
                if parent[lab] != lab:
                    count[lab] = count[_find(parent, lab)]
    if failed:
        free(det); free(rrow); free(rx0); free(rx1); free(rl); free(parent); free(count)
        raise MemoryError("label: no memory for the runs")
    start_a = np.zeros(nfinal + 1, dtype=np.intp)
    pix_a = np.empty(total, dtype=np.intp)
    fill_a = np.zeros(nfinal + 1, dtype=np.intp)
    cdef Py_ssize_t[::1] start = start_a, pix = pix_a, fill = fill_a
    with nogil:
        for k in range(nruns):
            lab = <int32_t> count[rl[k]]
            if lab:
                start[lab] += rx1[k] - rx0[k] + 1
        for k in range(1, nfinal + 1):
            start[k] += start[k - 1]
            fill[k] = start[k - 1]
        for k in range(nruns):
            lab = <int32_t> count[rl[k]]
            if lab:
                j = rrow[k]
                for i in range(rx0[k], rx1[k] + 1):
                    labels[j, i] = lab
                    pix[fill[lab]] = j * nx + i
                    fill[lab] += 1
    free(det); free(rrow); free(rx0); free(rx1); free(rl); free(parent); free(count)
    return nfinal, start_a, pix_a


# ------------------------------------------------------------------ deblending
cdef int32_t _near_region(const int32_t* regions, Py_ssize_t nx, Py_ssize_t ny, Py_ssize_t i, Py_ssize_t j,
                          Py_ssize_t r) noexcept nogil:
    """Label of the masked region nearest to pixel (i, j) within the box +- r, or 0."""
    cdef Py_ssize_t di, dj, d2, best = r * r * 2 + 1
    cdef int32_t found = 0
    for dj in range(max(-r, -j), min(r, ny - 1 - j) + 1):
        for di in range(max(-r, -i), min(r, nx - 1 - i) + 1):
            d2 = di * di + dj * dj
            if d2 < best and regions[(j + dj) * nx + i + di]:
                best = d2
                found = regions[(j + dj) * nx + i + di]
    return found


def deblend(const float[:, ::1] simage, const float[:, ::1] svariance, int32_t[:, ::1] labels,
            const int32_t[:, ::1] regions, Py_ssize_t rmask, const Py_ssize_t[::1] start,
            const Py_ssize_t[::1] pix, bint split, double nsigma, double cont,
            int32_t[::1] child, int32_t[::1] nchild, Py_ssize_t[::1] peak):
    """Split each footprint into the basins of its significant peaks of simage (watershed by flooding).

    Pixels are visited from the highest down; a pixel with no visited neighbour starts a basin (a peak),
    otherwise it joins the basin of its highest visited neighbour. Where basins meet at level v, every
    basin but the one with the highest peak is merged into that one unless it is significant: its
    prominence (peak - v) is at least nsigma sqrt(svariance at its peak) and its flux above v (the sum of
    simage - v over its pixels, all of them >= v) is at least cont x the footprint's sum of simage.
    Basins whose peaks lie within rmask px (box) of the same masked region (regions: labels of the
    8-connected masked regions, or shape (0, 0)) are always merged: a masked core (a saturated star)
    leaves a ring of peaks around it that belong to one source.
    Surviving basins are the children, numbered by decreasing peak; split false gives one per footprint.
    Writes child[k] (child of pixel pix[k]), nchild[f - 1] and the peaks' flat indices in peak[:] (children
    of a footprint consecutive, footprints in order); labels are used as scratch and restored.
    Returns the number of peaks written.
    """
    cdef Py_ssize_t nfp = start.shape[0] - 1, nx = simage.shape[1], ny = simage.shape[0]
    cdef Py_ssize_t f, k, n, s0, cap = 0, p, q, i, j, di, dj, npeak = 0
    cdef int32_t nb, b, r, R, best_b, c, nroots, m, lab
    cdef int32_t roots[8]
    cdef float v, best_v
    cdef double total, mincont
    cdef const float* sim = &simage[0, 0]
    cdef int32_t* lab_ = &labels[0, 0]
    cdef uint64_t* keys = NULL
    cdef int32_t* bpar = NULL                   # per basin: union-find parent
    cdef float* bpeak = NULL                    # peak value
    cdef float* bprom = NULL                    # smallest significant prominence
    cdef Py_ssize_t* bpix = NULL                # peak pixel, later child number
    cdef double* bsum = NULL                    # sum of simage over its pixels (roots only)
    cdef double* bn = NULL                      # its number of pixels (roots only)
    cdef int32_t* breg = NULL                   # masked region near its peak, or 0
    cdef const int32_t* reg = &regions[0, 0] if regions.shape[0] > 0 else NULL
    cdef int failed = 0
    with nogil:
        for f in range(nfp):
            s0 = start[f]
            n = start[f + 1] - s0
            lab = <int32_t> (f + 1)
            if not split or n < 2:
                p = pix[s0]
                for k in range(n):
                    child[s0 + k] = 0
                    if sim[pix[s0 + k]] > sim[p]:
                        p = pix[s0 + k]
                nchild[f] = 1
                peak[npeak] = p
                npeak += 1
                continue
            if n > cap:
                cap = n
                if _grow(<void**> &keys, cap, sizeof(uint64_t)) or _grow(<void**> &bpar, cap, sizeof(int32_t)) \
                        or _grow(<void**> &bpeak, cap, sizeof(float)) or _grow(<void**> &bprom, cap, sizeof(float)) \
                        or _grow(<void**> &bpix, cap, sizeof(Py_ssize_t)) or _grow(<void**> &bsum, cap, sizeof(double)) \
                        or _grow(<void**> &bn, cap, sizeof(double)) or _grow(<void**> &breg, cap, sizeof(int32_t)):
                    failed = 1
                    break
            total = 0.0
            for k in range(n):
                total += sim[pix[s0 + k]]
                keys[k] = (<uint64_t> _desc_key(sim[pix[s0 + k]]) << 32) | <uint64_t> k
            mincont = cont * total
            _sort_u64(keys, n)
            nb = 0
            for k in range(n):
                p = pix[s0 + (keys[k] & 0xFFFFFFFFu)]
                v = sim[p]
                j = p // nx
                i = p - j * nx
                nroots = 0
                best_b = -1
                best_v = 0
                for dj in range(-1, 2):
                    if j + dj < 0 or j + dj >= ny:
                        continue
                    for di in range(-1, 2):
                        if i + di < 0 or i + di >= nx or (di == 0 and dj == 0):
                            continue
                        q = p + dj * nx + di
                        if lab_[q] >= 0:      # visited pixels of this footprint hold -(basin + 1)
                            continue
                        b = -lab_[q] - 1
                        if best_b < 0 or sim[q] > best_v:
                            best_b = b
                            best_v = sim[q]
                        r = _find(bpar, b)
                        for m in range(nroots):
                            if roots[m] == r:
                                break
                        else:
                            roots[nroots] = r
                            nroots += 1
                if best_b < 0:                  # a new peak
                    bpar[nb] = nb
                    bpeak[nb] = v
                    bpix[nb] = p
                    bprom[nb] = <float> (nsigma * sqrt(svariance[j, i]))
                    bsum[nb] = v
                    bn[nb] = 1.0
                    breg[nb] = _near_region(reg, nx, ny, i, j, rmask) if reg != NULL else 0
                    lab_[p] = -(nb + 1)
                    nb += 1
                    continue
                if nroots > 1:
                    R = roots[0]
                    for m in range(1, nroots):
                        if bpeak[roots[m]] > bpeak[R] or (bpeak[roots[m]] == bpeak[R] and roots[m] < R):
                            R = roots[m]
                    for m in range(nroots):
                        r = roots[m]
                        if r != R and (bpeak[r] - v < bprom[r] or bsum[r] - bn[r] * v < mincont
                                       or (breg[r] != 0 and breg[r] == breg[R])):
                            bpar[r] = R
                            bsum[R] += bsum[r]
                            bn[R] += bn[r]
                r = _find(bpar, best_b)
                bsum[r] += v
                bn[r] += 1.0
                lab_[p] = -(r + 1)
            # survivors, in creation order = decreasing peak
            c = 0
            for b in range(nb):
                if _find(bpar, b) == b:
                    peak[npeak + c] = bpix[b]
                    bpix[b] = c                  # from here on: the child number of a root
                    c += 1
            nchild[f] = c
            npeak += c
            for k in range(n):
                p = pix[s0 + k]
                child[s0 + k] = <int32_t> bpix[_find(bpar, -lab_[p] - 1)]
                lab_[p] = lab
    free(keys); free(bpar); free(bpeak); free(bprom); free(bpix); free(bsum); free(bn); free(breg)
    if failed:
        raise MemoryError("deblend: no memory for a footprint's pixels")
    return npeak


# ------------------------------------------------------------------ measurement
#: The windowed centroid gives up (keeping its start, the isophotal barycentre) when masked pixels (or their
#: mirror images) carry more than this fraction of the window's weight: e.g. a saturated core.
cdef double MASKED_MAX = 0.1


cdef inline int _usable(const unsigned char* mask, const int32_t* lab, Py_ssize_t nx, Py_ssize_t ny,
                        Py_ssize_t i, Py_ssize_t j, int32_t lo, int32_t hi) noexcept nogil:
    """0 if pixel (i, j) may be used by a record labelled lo..hi; 1 if it is off the image or another
    object's, 3 if masked."""
    cdef int32_t l
    if i < 0 or j < 0 or i >= nx or j >= ny:
        return 1
    if mask != NULL and mask[j * nx + i]:
        return 3
    l = lab[j * nx + i]
    return 1 if l != 0 and (l < lo or l > hi) else 0


cdef int _winpos(const float* img, const unsigned char* mask, const int32_t* lab, Py_ssize_t nx,
                 Py_ssize_t ny, int32_t lo, int32_t hi, double sig, Py_ssize_t R, double* wx, double* wy,
                 double* x, double* y, int maxiter, double tol) noexcept nogil:
    """Iterative Gaussian-windowed first moment from (x, y), window sigma `sig`, box +- R px. A pixel is
    used if it and its mirror image through the current centre (to the nearest pixel) are both on the
    image, unmasked and either undetected (label 0) or labelled lo..hi: excluding pixels in symmetric
    pairs keeps the centroid of a symmetric source unbiased next to masks, edges and neighbours. Each
    step moves by twice the windowed mean offset (exact in one step for a Gaussian source of the window's
    width). Returns flag bits: FLAG_MASKED masked pixels met, FLAG_CENTROID failed (masked pixels carry
    more than MASKED_MAX of the window's weight, no positive weight, or it drifted more than R from the
    start; (x, y) are then left at the start).
    """
    cdef double x0 = x[0], y0 = y[0], a = 0.5 / (sig * sig), sw, sx, sy, w, dx, dy, wall, wmask
    cdef Py_ssize_t ic, jc, i, j, mi, mj
    cdef int it, flags = 0, u
    for it in range(maxiter):
        ic = <Py_ssize_t> floor(x[0] + 0.5)
        jc = <Py_ssize_t> floor(y[0] + 0.5)
        for i in range(2 * R + 1):
            dx = ic - R + i - x[0]
            wx[i] = exp(-a * dx * dx)
            dy = jc - R + i - y[0]
            wy[i] = exp(-a * dy * dy)
        sw = sx = sy = wall = wmask = 0.0
        for j in range(max(jc - R, 0), min(jc + R, ny - 1) + 1):
            mj = <Py_ssize_t> floor(2.0 * y[0] - j + 0.5)
            for i in range(max(ic - R, 0), min(ic + R, nx - 1) + 1):
                mi = <Py_ssize_t> floor(2.0 * x[0] - i + 0.5)
                w = wx[i - ic + R] * wy[j - jc + R]
                wall += w
                u = _usable(mask, lab, nx, ny, i, j, lo, hi) | _usable(mask, lab, nx, ny, mi, mj, lo, hi)
                if u:
                    if u & 2:
                        flags |= FLAG_MASKED
                        wmask += w
                    continue
                w *= img[j * nx + i]
                sw += w
                sx += w * (i - x[0])
                sy += w * (j - y[0])
        if sw <= 0 or wmask > MASKED_MAX * wall:
            x[0] = x0
            y[0] = y0
            return flags | FLAG_CENTROID
        dx = 2.0 * sx / sw
        dy = 2.0 * sy / sw
        x[0] += dx
        y[0] += dy
        if (x[0] - x0) * (x[0] - x0) + (y[0] - y0) * (y[0] - y0) > R * R:
            x[0] = x0
            y[0] = y0
            return flags | FLAG_CENTROID
        if dx * dx + dy * dy < tol * tol:
            break
    return flags


cdef inline void _accumulate(double[:, ::1] acc, int64_t[:, ::1] iout, Py_ssize_t r, Py_ssize_t i, Py_ssize_t j,
                             double I, double V, bint edge) noexcept nogil:
    """Add pixel (i, j) of value I, variance V to record r's sums (offsets from the record's peak)."""
    cdef double dx = i - iout[r, 0], dy = j - iout[r, 1]
    acc[r, 0] += I
    acc[r, 1] += V
    acc[r, 2] += I * dx
    acc[r, 3] += I * dy
    acc[r, 4] += I * dx * dx
    acc[r, 5] += I * dy * dy
    acc[r, 6] += I * dx * dy
    iout[r, 2] += 1
    if edge:
        iout[r, 3] |= FLAG_EDGE


def measure(const float[:, ::1] image, const float[:, ::1] variance, const unsigned char[:, ::1] mask,
            const float[:, ::1] simage, int32_t[:, ::1] labels, const Py_ssize_t[::1] start,
            const Py_ssize_t[::1] pix, const int32_t[::1] child, const int32_t[::1] nchild,
            const Py_ssize_t[::1] peak, const Py_ssize_t[::1] rec0, double sig, int maxiter, double tol,
            double[:, ::1] fout, int64_t[:, ::1] iout):
    """Measure every record; see detect.py. Footprint f (0-based) owns records rec0[f].. : one if it has a
    single child, else the parent then its children. labels (footprint ids in) end holding record id + 1 of
    each pixel's leaf. fout columns: x, y, flux, flux_err, xx, yy, xy, peak_value; iout: x_peak, y_peak,
    npix, flags (FLAG_EDGE, FLAG_MASKED, FLAG_CENTROID)."""
    cdef Py_ssize_t nfp = start.shape[0] - 1, nx = image.shape[1], ny = image.shape[0]
    cdef Py_ssize_t nrec = fout.shape[0], f, k, p, i, j, r, rl, npk = 0, R = <Py_ssize_t> ceil(4.0 * sig)
    cdef bint has_mask = mask.shape[0] > 0
    cdef double I, sI, mx, my, xx, yy, xy
    cdef bint edge
    cdef double[:, ::1] acc = np.zeros((nrec, 8), dtype=np.float64)
    cdef int32_t lo, hi, nc
    cdef double* wx = <double*> malloc((2 * R + 1) * sizeof(double))
    cdef double* wy = <double*> malloc((2 * R + 1) * sizeof(double))
    if wx == NULL or wy == NULL:
        free(wx); free(wy)
        raise MemoryError("measure: no memory")
    with nogil:
        # peaks, then one pass over the footprint pixels into leaf (and parent) accumulators
        for f in range(nfp):
            nc = nchild[f]
            r = rec0[f]
            if nc > 1:
                iout[r, 0] = peak[npk] % nx
                iout[r, 1] = peak[npk] // nx
                r += 1
            for k in range(nc):
                iout[r + k, 0] = peak[npk + k] % nx
                iout[r + k, 1] = peak[npk + k] // nx
            npk += nc
        for r in range(nrec):
            iout[r, 2] = 0
            iout[r, 3] = 0
            fout[r, 7] = simage[iout[r, 1], iout[r, 0]]
        for f in range(nfp):
            nc = nchild[f]
            for k in range(start[f], start[f + 1]):
                p = pix[k]
                j = p // nx
                i = p - j * nx
                I = image[j, i]
                rl = rec0[f] + (1 + child[k] if nc > 1 else 0)
                labels[j, i] = <int32_t> (rl + 1)
                edge = i == 0 or j == 0 or i == nx - 1 or j == ny - 1
                _accumulate(acc, iout, rl, i, j, I, variance[j, i], edge)
                if nc > 1:
                    _accumulate(acc, iout, rec0[f], i, j, I, variance[j, i], edge)
        # isophotal centroid and moments, then the windowed centroid
        for f in range(nfp):
            nc = nchild[f]
            for r in range(rec0[f], rec0[f] + nc + (1 if nc > 1 else 0)):
                sI = acc[r, 0]
                fout[r, 2] = sI
                fout[r, 3] = sqrt(acc[r, 1])
                if sI > 0:
                    mx = acc[r, 2] / sI
                    my = acc[r, 3] / sI
                    xx = acc[r, 4] / sI - mx * mx
                    yy = acc[r, 5] / sI - my * my
                    xy = acc[r, 6] / sI - mx * my
                    if xx * yy - xy * xy < 1.0 / 144.0:   # unresolved or degenerate: add a pixel's variance
                        xx += 1.0 / 12.0
                        yy += 1.0 / 12.0
                else:
                    mx = my = 0.0
                    xx = yy = xy = NAN
                fout[r, 0] = iout[r, 0] + mx
                fout[r, 1] = iout[r, 1] + my
                fout[r, 4] = xx
                fout[r, 5] = yy
                fout[r, 6] = xy
                if nc > 1 and r == rec0[f]:
                    lo = <int32_t> (r + 1)
                    hi = <int32_t> (r + 1 + nc)
                else:
                    lo = hi = <int32_t> (r + 1)
                iout[r, 3] |= _winpos(&image[0, 0], &mask[0, 0] if has_mask else NULL, &labels[0, 0], nx, ny,
                                      lo, hi, sig, R, wx, wy, &fout[r, 0], &fout[r, 1], maxiter, tol)
    free(wx)
    free(wy)
    return nrec
