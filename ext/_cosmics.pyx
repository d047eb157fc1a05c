# cython: language_level=3
"""Cosmic-ray detection and repair kernel (private; see twinkles_hpc/level2/cosmics.py).

A pass tests pixels, reading the image only (so the result does not depend on the loop order): the
first every pixel, with the test's first condition evaluated branch-free over a row before the full test;
a later one only those within 2 pixels of the pixels just repaired, the only ones whose test can change.
The flagged pixels are then grown, masked and replaced by interpolation from unmasked pixels, following
lists of them; the next pass sees the repaired values, which uncovers pixels that a bright neighbour on the
same track hid.
"""
from libc.math cimport sqrt
from libc.stdint cimport uint8_t, uint16_t
from libc.stdlib cimport free, malloc, realloc

cdef int[4] DI = [0, 1, 1, 1]
cdef int[4] DJ = [1, 0, 1, -1]


cdef inline bint sharp(const float[:, ::1] image, const float[:, ::1] variance, const uint16_t[:, ::1] mask,
                       Py_ssize_t i, Py_ssize_t j, double ns2, double r_axis, double r_diag, double r2_axis,
                       double r2_diag, double cfac, int skip) noexcept nogil:
    """Significant and sharper than the narrowest PSF along at least one of the four directions: as one
    pixel against its two neighbours, or as a pair of pixels (a track split between two rows) against the
    two pixels beyond the pair."""
    cdef Py_ssize_t ny = image.shape[0], nx = image.shape[1]
    cdef double v = image[i, j], var = variance[i, j], t, m, r, sm
    cdef int d, side
    cdef Py_ssize_t ai, aj, bi, bj, ci, cj, di, dj
    if not (v > 0.0 and var > 0.0 and v * v > ns2 * var):
        return False
    t = v - cfac * sqrt(var)
    for d in range(4):
        ai, aj, bi, bj = i - DI[d], j - DJ[d], i + DI[d], j + DJ[d]
        if (mask[ai, aj] | mask[bi, bj]) & skip:
            continue
        m = 0.5 * (image[ai, aj] + image[bi, bj])
        sm = 0.5 * sqrt(variance[ai, aj] + variance[bi, bj])
        r = r_axis if d < 2 else r_diag
        if t * r > m + cfac * sm:
            return True
    for d in range(4):
        for side in range(-1, 2, 2):
            # the pair (i, j), (ci, cj) against (ai, aj) before it and (di, dj) beyond it
            ci, cj = i + side * DI[d], j + side * DJ[d]
            ai, aj = i - side * DI[d], j - side * DJ[d]
            di, dj = i + 2 * side * DI[d], j + 2 * side * DJ[d]
            if di < 0 or di >= ny or dj < 0 or dj >= nx:
                continue
            if (mask[ai, aj] | mask[ci, cj] | mask[di, dj]) & skip:
                continue
            t = 0.5 * (v + image[ci, cj]) - cfac * 0.5 * sqrt(var + variance[ci, cj])
            m = 0.5 * (image[ai, aj] + image[di, dj])
            sm = 0.5 * sqrt(variance[ai, aj] + variance[di, dj])
            r = r2_axis if d < 2 else r2_diag
            if t * r > m + cfac * sm:
                return True
    return False


cdef inline int first_good(const float[:, ::1] image, const uint16_t[:, ::1] mask, Py_ssize_t i, Py_ssize_t j,
                           int di, int dj, int bad, int max_gap, double *value) noexcept nogil:
    """Steps (1..max_gap) from (i, j) along (di, dj) to the first unmasked pixel, whose value goes to
    *value; 0 when there is none on the sensor within max_gap."""
    cdef Py_ssize_t ny = image.shape[0], nx = image.shape[1], pi, pj
    cdef int k
    for k in range(1, max_gap + 1):
        pi, pj = i + k * di, j + k * dj
        if pi < 0 or pi >= ny or pj < 0 or pj >= nx:
            return 0
        if not (mask[pi, pj] & bad):
            value[0] = image[pi, pj]
            return k
    return 0


cdef inline double interpolate(const float[:, ::1] image, const uint16_t[:, ::1] mask, Py_ssize_t i,
                               Py_ssize_t j, int bad, int max_gap) noexcept nogil:
    """Linear interpolation across the shortest masked gap through (i, j) among the four directions
    (diagonal gaps count sqrt(2) per step; equal gaps are averaged); else the mean of the unmasked
    pixels within max_gap; else 0 (the background)."""
    cdef Py_ssize_t ny = image.shape[0], nx = image.shape[1], pi, pj
    cdef int d, k1, k2
    cdef double v1 = 0.0, v2 = 0.0, gap, best = 1e300, acc = 0.0, w
    cdef int n = 0
    for d in range(4):
        k1 = first_good(image, mask, i, j, -DI[d], -DJ[d], bad, max_gap, &v1)
        if k1 == 0:
            continue
        k2 = first_good(image, mask, i, j, DI[d], DJ[d], bad, max_gap, &v2)
        if k2 == 0:
            continue
        gap = (k1 + k2) * (1.0 if d < 2 else 1.4142135623730951)
        if gap < best - 1e-9:
            best, acc, n = gap, 0.0, 0
        if gap < best + 1e-9:
            acc += (v1 * k2 + v2 * k1) / (k1 + k2)
            n += 1
    if n > 0:
        return acc / n
    w = 0.0
    for pi in range(max(i - max_gap, 0), min(i + max_gap + 1, ny)):
        for pj in range(max(j - max_gap, 0), min(j + max_gap + 1, nx)):
            if not (mask[pi, pj] & bad):
                acc += image[pi, pj]
                w += 1.0
    return acc / w if w > 0 else 0.0


cdef struct IdxList:
    Py_ssize_t *p
    Py_ssize_t n
    Py_ssize_t cap


cdef int _push(IdxList *l, Py_ssize_t v) noexcept nogil:
    """Append v; -1 when out of memory."""
    cdef Py_ssize_t *t
    if l.n == l.cap:
        t = <Py_ssize_t *> realloc(l.p, (2 * l.cap + 1024) * sizeof(Py_ssize_t))
        if t == NULL:
            return -1
        l.p = t
        l.cap = 2 * l.cap + 1024
    l.p[l.n] = v
    l.n += 1
    return 0


def find_and_repair(float[:, ::1] image, const float[:, ::1] variance, uint16_t[:, ::1] mask,
                    uint8_t[:, ::1] flag, double nsigma, double r_axis, double r_diag, double r2_axis,
                    double r2_diag, double cfac, double grow_nsigma, int grow, int skip_bits, int cr_bit,
                    int max_iter, int max_gap):
    """Flag, mask (cr_bit) and repair cosmic-ray pixels of `image` in place; `flag` is zeroed scratch.

    A seed is a pixel above nsigma x its noise whose value v satisfies (v - cfac sigma) r > m + cfac sigma_m
    for some direction, m the mean of its two neighbours along it (none in skip_bits), sigma_m the noise of
    m and r = r_axis along rows and columns, r_diag along diagonals; or the same test for the mean of the
    pixel and a neighbour against the two pixels around that pair, with r = r2_axis or r2_diag. Pixels
    above grow_nsigma x their noise within `grow` steps (8-connected, through such pixels) of a seed join
    it. Pixels with skip_bits are never flagged. Returns (pixels flagged, passes made).

    The first pass tests every pixel. A pixel's test reads the image within 2 pixels of it (and masks that
    do not change), so a later pass tests only the pixels within 2 of those the pass before repaired: the
    others would repeat their earlier negative result. Growing, masking and repairing follow the lists of
    flagged pixels; a repair reads unmasked pixels only, so its order does not matter.
    """
    cdef Py_ssize_t ny = image.shape[0], nx = image.shape[1], i, j, a, b, k, ring0, ring1
    cdef double ns2 = nsigma * nsigma, g2 = grow_nsigma * grow_nsigma, v
    cdef int it, g, passes = 0, excl = skip_bits | cr_bit, err = 0
    cdef long long total = 0
    cdef uint16_t crb = <uint16_t>cr_bit
    cdef IdxList flagged, cand
    cdef const float *img_row
    cdef const float *var_row
    cdef const uint16_t *msk_row
    cdef double x, y
    cdef uint8_t *pre = <uint8_t *> malloc(nx)
    if pre == NULL:
        raise MemoryError("find_and_repair: no memory for a row buffer")
    flagged.p = NULL
    flagged.n = 0
    flagged.cap = 0
    cand.p = NULL
    cand.n = 0
    cand.cap = 0
    try:
        with nogil:
            for it in range(max_iter):
                passes += 1
                flagged.n = 0
                if it == 0:
                    for i in range(1, ny - 1):
                        img_row = &image[i, 0]
                        var_row = &variance[i, 0]
                        msk_row = &mask[i, 0]
                        for j in range(1, nx - 1):         # sharp's first test, branch-free (vectorised)
                            x = img_row[j]
                            y = var_row[j]
                            pre[j] = (x > 0.0) & (y > 0.0) & (x * x > ns2 * y) & ((msk_row[j] & excl) == 0)
                        for j in range(1, nx - 1):
                            if pre[j] and sharp(image, variance, mask, i, j, ns2, r_axis, r_diag, r2_axis, r2_diag,
                                                cfac, skip_bits):
                                flag[i, j] = 1
                                err |= _push(&flagged, i * nx + j)
                else:
                    for k in range(cand.n):
                        i = cand.p[k] // nx
                        j = cand.p[k] - i * nx
                        flag[i, j] = 0                  # the candidate's mark
                        if not (mask[i, j] & excl) and sharp(image, variance, mask, i, j, ns2, r_axis, r_diag,
                                                             r2_axis, r2_diag, cfac, skip_bits):
                            flag[i, j] = 1
                            err |= _push(&flagged, i * nx + j)
                if err:
                    break
                if flagged.n == 0:
                    break
                ring0 = 0                               # ring g: flagged[ring0:ring1], flag value g
                for g in range(1, grow + 1):
                    ring1 = flagged.n
                    for k in range(ring0, ring1):
                        i = flagged.p[k] // nx
                        j = flagged.p[k] - i * nx
                        for a in range(max(i - 1, 0), min(i + 2, ny)):
                            for b in range(max(j - 1, 0), min(j + 2, nx)):
                                v = image[a, b]
                                if (flag[a, b] == 0 and not (mask[a, b] & excl) and v > 0.0
                                        and v * v > g2 * variance[a, b]):
                                    flag[a, b] = g + 1
                                    err |= _push(&flagged, a * nx + b)
                    ring0 = ring1
                if err:
                    break
                for k in range(flagged.n):
                    mask[flagged.p[k] // nx, flagged.p[k] % nx] |= crb
                total += flagged.n
                for k in range(flagged.n):
                    i = flagged.p[k] // nx
                    j = flagged.p[k] - i * nx
                    image[i, j] = <float>interpolate(image, mask, i, j, excl, max_gap)
                    flag[i, j] = 0
                cand.n = 0                              # the next pass's pixels: within 2 of a repaired one
                for k in range(flagged.n if it + 1 < max_iter else 0):
                    i = flagged.p[k] // nx
                    j = flagged.p[k] - i * nx
                    for a in range(max(i - 2, 1), min(i + 3, ny - 1)):
                        for b in range(max(j - 2, 1), min(j + 3, nx - 1)):
                            if flag[a, b] == 0 and not (mask[a, b] & excl):
                                flag[a, b] = 255
                                err |= _push(&cand, a * nx + b)
                if err:
                    break
        if err:
            raise MemoryError("find_and_repair: no memory for the pixel lists")
    finally:
        free(flagged.p)
        free(cand.p)
        free(pre)
    return int(total), passes
