"""Private kernel: forced PSF and aperture photometry of many objects at fixed positions in one image.

Called only by twinkles_hpc.level2.forced, which validates every input and documents the estimators;
nothing is checked twice here. One call measures all objects with the GIL released.
"""
from libc.math cimport asin, ceil, exp, fabs, floor, isfinite, sqrt, M_PI, NAN
from libc.stdint cimport int32_t, uint16_t
from libc.stdlib cimport free, malloc

ctypedef fused pix_t:
    float
    double

ctypedef fused var_t:
    float
    double

cdef enum:
    # the `flags` bits (documented in twinkles_hpc.level2.forced, which re-exports them as FLAG_*)
    OFF_IMAGE = 1
    EDGE = 2
    MASKED = 4
    SATURATED = 8
    NO_DATA = 16
    AP_FILLED = 32
    # buffer sizes; the wrapper keeps 2 radius + 3 <= ROW_MAX, K <= K_MAX, apertures <= AP_MAX
    ROW_MAX = 1024
    K_MAX = 64
    AP_MAX = 64

#: Flag name -> bit (the wrapper's FLAG_<name>).
FLAGS = {"OFF_IMAGE": OFF_IMAGE, "EDGE": EDGE, "MASKED": MASKED, "SATURATED": SATURATED, "NO_DATA": NO_DATA,
         "AP_FILLED": AP_FILLED}


cdef inline double _psf(double dx, double dy, const double *amp, const double *a, const double *b,
                        const double *c, Py_ssize_t K) noexcept nogil:
    """Gaussian mixture sum_k amp_k exp(-(a_k dx^2 + 2 b_k dx dy + c_k dy^2) / 2) at offset (dx, dy)."""
    cdef double p = 0.0
    cdef Py_ssize_t k
    for k in range(K):
        p += amp[k] * exp(-0.5 * (a[k] * dx * dx + 2.0 * b[k] * dx * dy + c[k] * dy * dy))
    return p


cdef void _psf_row(double *row, Py_ssize_t i0, Py_ssize_t i1, double x0, double dy, const double *amp,
                   const double *a, const double *b, const double *c, const double *q,
                   Py_ssize_t K) noexcept nogil:
    """row[i - i0] = mixture at pixels i0..i1 of the row at offset dy. Each component starts at the pixel
    nearest its maximum along the row and walks outwards by exact ratios (v *= r; r *= q, q = exp(-a)), which
    only shrink: 3 exp() per component and row instead of one per pixel."""
    cdef Py_ssize_t k, i, ip
    cdef double dx, v, vv, r, t
    for i in range(i1 - i0 + 1):
        row[i] = 0.0
    for k in range(K):
        t = x0 - b[k] * dy / a[k]                                # the component's maximum along the row
        ip = i0 if t <= i0 else (i1 if t >= i1 else <Py_ssize_t> floor(t + 0.5))
        dx = ip - x0
        v = amp[k] * exp(-0.5 * (a[k] * dx * dx + 2.0 * b[k] * dx * dy + c[k] * dy * dy))
        row[ip - i0] += v
        vv = v
        r = exp(-0.5 * a[k] * (2.0 * dx + 1.0) - b[k] * dy)        # v(i + 1) / v(i)
        for i in range(ip + 1, i1 + 1):
            vv *= r
            r *= q[k]
            row[i - i0] += vv
        vv = v
        r = exp(-0.5 * a[k] * (1.0 - 2.0 * dx) + b[k] * dy)        # v(i - 1) / v(i)
        for i in range(ip - 1, i0 - 1, -1):
            vv *= r
            r *= q[k]
            row[i - i0] += vv


cdef int _psf_fit(const pix_t *img, const var_t *var, const uint16_t *msk, Py_ssize_t nx, Py_ssize_t ny,
                  double x0, double y0, double R, const double *amp, const double *a, const double *b,
                  const double *c, Py_ssize_t K, int bad_bits, int sat_bits, int edge_bits,
                  double *flux, double *err) noexcept nogil:
    """PSF amplitude over the pixel centres within R of (x0, y0): flux = sum P d / sum P^2,
    err = sqrt(sum P^2 v) / sum P^2, unusable pixels skipped. Returns the flags."""
    cdef double row[ROW_MAX]
    cdef double q[K_MAX]
    cdef double spp = 0.0, spd = 0.0, spv = 0.0, dy, h, d, v, p
    cdef Py_ssize_t i, j, i0, i1, k, off
    cdef Py_ssize_t j0 = <Py_ssize_t> ceil(y0 - R), j1 = <Py_ssize_t> floor(y0 + R)
    cdef int f = 0, m
    for k in range(K):
        q[k] = exp(-a[k])
    if j0 < 0 or j1 > ny - 1:
        f |= EDGE
        j0 = j0 if j0 > 0 else 0
        j1 = j1 if j1 < ny - 1 else ny - 1
    for j in range(j0, j1 + 1):
        dy = j - y0
        if dy * dy > R * R:
            continue
        h = sqrt(R * R - dy * dy)
        i0 = <Py_ssize_t> ceil(x0 - h)
        i1 = <Py_ssize_t> floor(x0 + h)
        if i0 < 0 or i1 > nx - 1:
            f |= EDGE
            i0 = i0 if i0 > 0 else 0
            i1 = i1 if i1 < nx - 1 else nx - 1
        if i1 < i0:
            continue
        _psf_row(row, i0, i1, x0, dy, amp, a, b, c, q, K)
        off = j * nx
        for i in range(i0, i1 + 1):
            m = msk[off + i]
            d = img[off + i]
            v = var[off + i]
            if m & (sat_bits | edge_bits | bad_bits):
                if m & sat_bits:
                    f |= SATURATED
                if m & edge_bits:
                    f |= EDGE
                if m & bad_bits:
                    f |= MASKED
                    continue
            if not (isfinite(d) and isfinite(v) and v > 0.0):
                f |= MASKED
                continue
            p = row[i - i0]
            spp += p * p
            spd += p * d
            spv += p * p * v
    if spp > 0.0:
        flux[0] = spd / spp
        err[0] = sqrt(spv) / spp
    else:
        f |= NO_DATA
        flux[0] = err[0] = NAN
    return f


cdef inline double _chord_area(double x, double r) noexcept nogil:
    """int_0^x sqrt(r^2 - t^2) dt for 0 <= x <= r."""
    return 0.5 * (x * sqrt(r * r - x * x) + r * r * asin(x / r))


cdef inline double _corner(double X, double gx, double Y, double xs, double gs) noexcept nogil:
    """Area of the circle inside the rectangle spanned by (0, 0) and (X, Y), odd in X and in Y (signed), from
    the tabulated gx = chord_area(min(|X|, r)), xs = sqrt(r^2 - Y^2) (0 when |Y| >= r), gs = chord_area(xs):
    for |X| <= xs the rectangle lies inside, else xs |Y| + the area under the circle from xs to |X|."""
    cdef double ax = fabs(X), ay = fabs(Y)
    cdef double area = ax * ay if ax <= xs else xs * ay + gx - gs
    return -area if (X < 0.0) != (Y < 0.0) else area


cdef int _apertures(const pix_t *img, const var_t *var, const uint16_t *msk, Py_ssize_t nx, Py_ssize_t ny,
                    double x0, double y0, const double *rad, Py_ssize_t nap, const double *amp,
                    const double *a, const double *b, const double *c, Py_ssize_t K, int bad_bits,
                    double flux, double err, double *tab, double *ap_flux, double *ap_err) noexcept nogil:
    """Aperture sums with exact pixel-circle overlaps (rad ascending): area-weighted data, variance
    sum area^2 v; unusable pixels filled with flux x model (err propagated); apertures that leave the image
    are NaN. Overlaps are inclusion-exclusion of _corner over the 4 pixel corners, whose transcendental parts
    are tabulated once per corner column and row. Pixels wholly inside aperture a (and so all larger ones)
    go to one bin; the cumulative sum of the bins gives each aperture. Returns AP_FILLED or 0."""
    cdef double part[AP_MAX]
    cdef double partv[AP_MAX]
    cdef double partf[AP_MAX]
    cdef double full[AP_MAX]
    cdef double fullv[AP_MAX]
    cdef double fullf[AP_MAX]
    cdef double r2[AP_MAX]
    cdef Py_ssize_t n_on = 0, i, j, i0, i1, j0, j1, k, ap, col, rw, off, W, H
    cdef double r, t, dx, dy, ax, ay, hy, ty, rmin2, rmax2, d, v, p, w, s, sv, sf
    cdef double *gx
    cdef double *xs
    cdef double *gs
    cdef int good, f = 0
    while n_on < nap:                       # apertures wholly on the image (the smallest first)
        r = rad[n_on]
        if not (x0 - r >= -0.5 and x0 + r <= nx - 0.5 and y0 - r >= -0.5 and y0 + r <= ny - 0.5):
            break
        r2[n_on] = r * r
        part[n_on] = partv[n_on] = partf[n_on] = full[n_on] = fullv[n_on] = fullf[n_on] = 0.0
        n_on += 1
    for k in range(n_on, nap):
        ap_flux[k] = ap_err[k] = NAN
    if n_on == 0:
        return 0
    r = rad[n_on - 1]
    i0 = <Py_ssize_t> floor(x0 - r + 0.5)
    i1 = <Py_ssize_t> ceil(x0 + r - 0.5)
    j0 = <Py_ssize_t> floor(y0 - r + 0.5)
    j1 = <Py_ssize_t> ceil(y0 + r - 0.5)
    W = i1 - i0 + 2                          # corners per row / column
    H = j1 - j0 + 2
    for k in range(n_on):
        r = rad[k]
        gx = tab + 3 * k * ROW_MAX
        xs = gx + ROW_MAX
        gs = xs + ROW_MAX
        for col in range(W):
            t = fabs(i0 + col - 0.5 - x0)
            gx[col] = _chord_area(t, r) if t < r else 0.25 * M_PI * r * r
        for rw in range(H):
            t = fabs(j0 + rw - 0.5 - y0)
            xs[rw] = sqrt(r * r - t * t) if t < r else 0.0
            gs[rw] = _chord_area(xs[rw], r) if t < r else 0.0
    for j in range(j0, j1 + 1):
        dy = j - y0
        ay = fabs(dy)
        hy = ay - 0.5 if ay > 0.5 else 0.0
        ty = ay + 0.5
        rw = j - j0
        off = j * nx
        for i in range(i0, i1 + 1):
            dx = i - x0
            ax = fabs(dx)
            t = ax - 0.5 if ax > 0.5 else 0.0
            rmin2 = t * t + hy * hy
            if rmin2 >= r2[n_on - 1]:
                continue
            ap = 0
            while rmin2 >= r2[ap]:
                ap += 1
            rmax2 = (ax + 0.5) * (ax + 0.5) + ty * ty
            d = img[off + i]
            v = var[off + i]
            good = not (msk[off + i] & bad_bits) and isfinite(d) and isfinite(v) and v > 0.0
            p = 0.0 if good else _psf(dx, dy, amp, a, b, c, K)
            col = i - i0
            while ap < n_on and rmax2 > r2[ap]:  # aperture ap's edge crosses the pixel
                gx = tab + 3 * ap * ROW_MAX
                xs = gx + ROW_MAX
                gs = xs + ROW_MAX
                w = (_corner(dx + 0.5, gx[col + 1], dy + 0.5, xs[rw + 1], gs[rw + 1])
                     - _corner(dx - 0.5, gx[col], dy + 0.5, xs[rw + 1], gs[rw + 1])
                     - _corner(dx + 0.5, gx[col + 1], dy - 0.5, xs[rw], gs[rw])
                     + _corner(dx - 0.5, gx[col], dy - 0.5, xs[rw], gs[rw]))
                if good:
                    part[ap] += w * d
                    partv[ap] += w * w * v
                else:
                    partf[ap] += w * p
                ap += 1
            if ap < n_on:                        # wholly inside aperture ap and all larger ones
                if good:
                    full[ap] += d
                    fullv[ap] += v
                else:
                    fullf[ap] += p
    s = sv = sf = 0.0
    for k in range(n_on):
        s += full[k]
        sv += fullv[k]
        sf += fullf[k]
        ap_flux[k] = s + part[k]
        ap_err[k] = sv + partv[k]
        w = sf + partf[k]
        if w != 0.0:
            f = AP_FILLED
            ap_flux[k] += flux * w
            ap_err[k] += (err * w) * (err * w)
        ap_err[k] = sqrt(ap_err[k])
    return f


def forced(const pix_t[:, ::1] image, const var_t[:, ::1] variance, const uint16_t[:, ::1] mask,
           const double[::1] x, const double[::1] y, const double[::1] psf_radius,
           const double[:, ::1] amp, const double[:, ::1] ia, const double[:, ::1] ib, const double[:, ::1] ic,
           const double[::1] ap_radii, int bad_bits, int sat_bits, int edge_bits,
           double[::1] psf_flux, double[::1] psf_flux_err, double[:, ::1] ap_flux, double[:, ::1] ap_flux_err,
           int32_t[::1] flags):
    """Fill psf_flux, psf_flux_err (n,), ap_flux, ap_flux_err (n, n_ap) and flags (n,) for objects at (x, y).

    Pixel (i, j) is centred at x = i, y = j. The PSF of object o is sum_k amp[o, k] exp(-Q_k / 2), Q_k the
    quadratic form of the inverse covariance [[ia, ib], [ib, ic]][o, k], sampled at pixel centres.
    Unusable pixels: (mask & bad_bits), non-finite data, variance <= 0 or non-finite. Off-image centres
    (outside [-0.5, n - 0.5)) get NaN and OFF_IMAGE. ap_radii ascending. Raises MemoryError only.
    """
    cdef Py_ssize_t ny = image.shape[0], nx = image.shape[1], n = x.shape[0], K = amp.shape[1]
    cdef Py_ssize_t nap = ap_radii.shape[0], o, k
    cdef double x0, y0
    cdef double *tab = <double *> malloc(3 * nap * ROW_MAX * sizeof(double))
    if tab == NULL:
        raise MemoryError("forced photometry: no memory for the aperture tables")
    try:
        with nogil:
            for o in range(n):
                x0 = x[o]
                y0 = y[o]
                if not (x0 >= -0.5 and x0 < nx - 0.5 and y0 >= -0.5 and y0 < ny - 0.5):
                    flags[o] = OFF_IMAGE
                    psf_flux[o] = psf_flux_err[o] = NAN
                    for k in range(nap):
                        ap_flux[o, k] = ap_flux_err[o, k] = NAN
                    continue
                flags[o] = _psf_fit(&image[0, 0], &variance[0, 0], &mask[0, 0], nx, ny, x0, y0, psf_radius[o],
                                    &amp[o, 0], &ia[o, 0], &ib[o, 0], &ic[o, 0], K, bad_bits, sat_bits,
                                    edge_bits, &psf_flux[o], &psf_flux_err[o])
                flags[o] |= _apertures(&image[0, 0], &variance[0, 0], &mask[0, 0], nx, ny, x0, y0,
                                       &ap_radii[0], nap, &amp[o, 0], &ia[o, 0], &ib[o, 0], &ic[o, 0], K,
                                       bad_bits, psf_flux[o], psf_flux_err[o], tab, &ap_flux[o, 0],
                                       &ap_flux_err[o, 0])
    finally:
        free(tab)
