"""Render point sources and Sersic galaxies as Gaussian mixtures into an image, in place.

Model (docs/imsim.md): each source is a mixture of 2-D Gaussians; convolving with the Gaussian-mixture
PSF adds covariances, and pixel integration is modelled by adding the pixel-box variance 1/12 px^2 to
every component (exact flux and second moments). The compiled kernel twinkles_hpc._render samples the
resulting components at pixel centres, each truncated where its pixel values fall below `threshold`
(but at least 2 and at most 6 sigma), with its amplitude rescaled so that it keeps its flux.

Conventions: `image` is float64, C-contiguous, shape (ny, nx); x is the column, y the row, pixel (0, 0) is
centred at x = y = 0. `origin` = sensor coordinates of image pixel (0, 0), so that a sub-image (a stamp,
a chunk) can be rendered with sources and PSF given in sensor coordinates. Fluxes are in electrons.
"""
import numpy as np

from twinkles_hpc import _render
from twinkles_hpc.imsim.sersic import sersic_mixture

#: Pixel-box variance added to every component, px^2: a unit box has variance 1/12.
PIXEL_VARIANCE = 1.0 / 12.0
#: Components are drawn out to where their pixel value falls to DEFAULT_THRESHOLD (image units, here
#: electrons per pixel; 1e-3 e- is ~1e-4 of the sky noise of any LSST visit), but at least R_MIN and at
#: most R_MAX sigma (Mahalanobis radius). Each truncated component is rescaled by 1/(1 - exp(-R^2/2)) so
#: that its flux is kept; the light moved inward is below the threshold per pixel.
DEFAULT_THRESHOLD = 1e-3
R_MIN, R_MAX = 2.0, 6.0
#: Galaxy components with major-axis variance below MERGE_SMALL x the PSF's narrowest variance are
#: merged into one moment-matched component before convolution (unresolved cores of small galaxies).
MERGE_SMALL = 0.1
#: A galaxy component whose minor-axis variance is large compared with the spread of the PSF components
#: (std of their variances <= MERGE_BROAD x (component variance + mean PSF variance)) is convolved with
#: the single moment-matched Gaussian of the PSF instead of all K components.
MERGE_BROAD = 0.1
#: Smallest covariance eigenvalue (px^2) accepted by add_gaussians: keeps the kernel's step ratios finite.
MIN_VARIANCE = 0.01
#: Height (rows) of the bands in which components are drawn in x order.
SORT_BAND = 64.0


def _check_image(image):
    if not isinstance(image, np.ndarray) or image.dtype != np.float64 or image.ndim != 2:
        raise ValueError("image must be a 2-D numpy array of float64, got "
                         f"{type(image).__name__} {getattr(image, 'dtype', '')} {getattr(image, 'shape', '')}")
    if not image.flags.c_contiguous or not image.flags.writeable:
        raise ValueError("image must be C-contiguous and writeable")


def _vector(name, value, n=None, *, lo=None, lo_open=False, hi=None, where=None):
    """`value` as a contiguous float64 1-D array (a scalar is broadcast to n), checked finite and, where
    `where` is True (everywhere by default), in range (>= lo, or > lo when lo_open; <= hi)."""
    try:
        arr = np.atleast_1d(np.asarray(value))
        if arr.dtype.kind not in "fiub":
            raise TypeError
        arr = arr.astype(np.float64, copy=False)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be numeric, got {type(value).__name__}") from None
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a scalar or 1-D array, got shape {arr.shape}")
    if n is not None and arr.size != n:
        if arr.size != 1:
            raise ValueError(f"{name} has {arr.size} entries, expected {n} (one per source)")
        arr = np.full(n, arr[0])
    with np.errstate(invalid="ignore"):
        inside = np.ones(arr.shape, bool)
        what = "finite"
        if lo is not None:
            inside &= (arr > lo) if lo_open else (arr >= lo)
            what += f" and {'>' if lo_open else '>='} {lo}"
        if hi is not None:
            inside &= arr <= hi
            what += f" and <= {hi}"
    ok = np.isfinite(arr) & (inside | (False if where is None else ~where))
    if not ok.all():
        bad = int(np.argmin(ok))
        raise ValueError(f"{name} must be {what}; entry {bad} is {arr[bad]!r}")
    return np.ascontiguousarray(arr)


def _check_threshold(threshold):
    if not (np.isscalar(threshold) and np.isfinite(threshold) and threshold >= 0):
        raise ValueError(f"threshold must be a finite number >= 0, got {threshold!r}")
    return float(threshold)


def _positions(x, y):
    x = _vector("x", x)
    return x, _vector("y", y, x.size)


def _check_psf(psf):
    if not hasattr(psf, "components_at"):
        raise ValueError(f"psf must be a PSFModel (with components_at), got {type(psf).__name__}")


def _check_jacobian(jacobian):
    J = np.asarray(jacobian, dtype=np.float64)
    if J.shape != (2, 2) or not np.all(np.isfinite(J)) or abs(np.linalg.det(J)) <= 0:
        raise ValueError(f"jacobian must be a finite, invertible 2x2 array (pixels per arcsec), got {jacobian!r}")
    return J


def _origin(origin):
    ox, oy = (float(v) for v in origin)
    if not (np.isfinite(ox) and np.isfinite(oy)):
        raise ValueError(f"origin must be finite, got {origin!r}")
    return ox, oy


def add_gaussians(image, x, y, flux, cxx, cxy, cyy, *, threshold=DEFAULT_THRESHOLD, origin=(0.0, 0.0)):
    """Add Gaussian components (flux in image units, covariance in px^2, positions in the coordinates of
    `origin`) into `image`, sampled at pixel centres; returns the number of pixel values added.

    No pixel variance is added here: callers model pixel integration themselves.
    """
    _check_image(image)
    x, y = _positions(x, y)
    n = x.size
    flux = _vector("flux", flux, n, lo=0.0)
    cxx, cxy, cyy = (_vector(k, v, n) for k, v in (("cxx", cxx), ("cxy", cxy), ("cyy", cyy)))
    lmin, _ = _eig(cxx, cxy, cyy)
    if not np.all(lmin >= MIN_VARIANCE):
        bad = int(np.argmin(lmin >= MIN_VARIANCE))
        raise ValueError(f"covariance {bad} must be positive definite with eigenvalues >= {MIN_VARIANCE} px^2 "
                         f"(narrower Gaussians cannot be sampled at pixel centres), got smallest {lmin[bad]!r}")
    threshold = _check_threshold(threshold)
    ox, oy = _origin(origin)
    return _add(image, x - ox, y - oy, flux, cxx, cxy, cyy, threshold)


def _add(image, x, y, flux, cxx, cxy, cyy, threshold):
    """Cull components whose R_MAX ellipse misses the image (keeps the kernel's casts in range) and draw."""
    ny, nx = image.shape
    hx, hy = R_MAX * np.sqrt(cxx), R_MAX * np.sqrt(cyy)
    keep = (x + hx >= 0) & (x - hx <= nx - 1) & (y + hy >= 0) & (y - hy <= ny - 1) & (flux > 0)
    # draw in bands of SORT_BAND rows, by x within a band: neighbouring components share cache lines and
    # pages (1.4x faster on a full sensor); lexsort is stable, so the order (and every bit) is reproducible
    order = np.nonzero(keep)[0]
    order = order[np.lexsort((x[order], np.floor(y[order] * (1.0 / SORT_BAND))))]
    x, y, flux, cxx, cxy, cyy = (np.ascontiguousarray(a[order]) for a in (x, y, flux, cxx, cxy, cyy))
    return _render.add_gaussians(image, x, y, flux, cxx, cxy, cyy, float(threshold), R_MIN, R_MAX)


def point_components(x, y, flux, psf):
    """Flat component arrays (x, y, flux, cxx, cxy, cyy) of point sources, pixel variance included."""
    w, pxx, pxy, pyy = psf.components_at(x, y)
    K = w.shape[1]
    return (np.repeat(x, K), np.repeat(y, K), (flux[:, None] * w).ravel(),
            (pxx + PIXEL_VARIANCE).ravel(), pxy.ravel(), (pyy + PIXEL_VARIANCE).ravel())


def render_points(image, x, y, flux, psf, *, threshold=DEFAULT_THRESHOLD, origin=(0.0, 0.0)):
    """Add point sources (flux in electrons, >= 0) at sensor positions (x, y) convolved with `psf`."""
    _check_image(image)
    _check_psf(psf)
    x, y = _positions(x, y)
    flux = _vector("flux", flux, x.size, lo=0.0)
    threshold, (ox, oy) = _check_threshold(threshold), _origin(origin)
    cx, cy, f, cxx, cxy, cyy = point_components(x, y, flux, psf)
    _add(image, cx - ox, cy - oy, f, cxx, cxy, cyy, threshold)


def _shape_covariance(hlr, q, pa_deg, J):
    """Pixel covariance (mxx, mxy, myy) of an ellipse with semi-major axis hlr (arcsec), axis ratio q and
    major axis at pa_deg east of north, mapped to pixels by J: M = J (hlr^2 (u u^T + q^2 v v^T)) J^T."""
    t = np.deg2rad(pa_deg)
    ue, un = np.sin(t), np.cos(t)              # major axis (east, north)
    ve, vn = np.cos(t), -np.sin(t)             # minor axis
    ux, uy = J[0, 0] * ue + J[0, 1] * un, J[1, 0] * ue + J[1, 1] * un
    vx, vy = J[0, 0] * ve + J[0, 1] * vn, J[1, 0] * ve + J[1, 1] * vn
    a2, b2 = hlr ** 2, (q * hlr) ** 2
    return a2 * ux * ux + b2 * vx * vx, a2 * ux * uy + b2 * vx * vy, a2 * uy * uy + b2 * vy * vy


def _eig(cxx, cxy, cyy):
    """(smallest, largest) eigenvalues of symmetric 2x2 matrices."""
    m, d = 0.5 * (cxx + cyy), np.sqrt(0.25 * (cxx - cyy) ** 2 + cxy ** 2)
    return m - d, m + d


def sersic_components(x, y, flux, n_index, hlr, q, pa_deg, J, psf):
    """Flat component arrays (x, y, flux, cxx, cxy, cyy) of PSF-convolved, pixel-integrated Sersic profiles
    with a single Sersic index `n_index`; other arguments are validated 1-D arrays (see render_sersic)."""
    wg, sg = sersic_mixture(n_index)
    mxx, mxy, myy = _shape_covariance(hlr, q, pa_deg, J)
    v = sg ** 2
    gxx, gxy, gyy = mxx[:, None] * v, mxy[:, None] * v, myy[:, None] * v          # (n, Kg)
    amp = flux[:, None] * wg
    w, pxx, pxy, pyy = psf.components_at(x, y)                                     # (n, K)
    pmin, _ = _eig(pxx[:, 0], pxy[:, 0], pyy[:, 0])       # PSF sigmas are ascending: column 0 is narrowest
    # merge unresolved galaxy components (a prefix, since sigmas ascend) into one moment-matched component
    _, gmax = _eig(gxx, gxy, gyy)
    small = gmax < MERGE_SMALL * pmin[:, None]
    if small.any():
        a_s = np.where(small, amp, 0.0)
        tot = a_s.sum(1)
        safe = np.where(tot > 0, tot, 1.0)
        merged = [(a_s * g).sum(1) / safe for g in (gxx, gxy, gyy)]
        amp = np.where(small, 0.0, amp)
        col = small.sum(1) - 1                            # put the merged component in the last small slot
        rows = np.nonzero(tot > 0)[0]
        amp[rows, col[rows]] = tot[rows]
        for g, m in zip((gxx, gxy, gyy), merged):
            g[rows, col[rows]] = m[rows]
    # PSF-convolve: either all K components (narrow galaxy components) or the moment-matched PSF (broad)
    pbar = [(w * p).sum(1) for p in (pxx, pxy, pyy)]
    ptr = 0.5 * (pxx + pyy)
    pspread = np.sqrt(np.maximum((w * ptr ** 2).sum(1) - (w * ptr).sum(1) ** 2, 0.0))
    gmin, _ = _eig(gxx, gxy, gyy)
    live = amp > 0
    broad = live & (pspread[:, None] <= MERGE_BROAD * (gmin + 0.5 * (pbar[0] + pbar[2])[:, None]))
    narrow = live & ~broad
    io, ig = np.nonzero(narrow)                                                    # (object, component)
    nb, gb = np.nonzero(broad)
    K = w.shape[1]
    parts = [
        (np.repeat(x[io], K), np.repeat(y[io], K), (amp[io, ig][:, None] * w[io]).ravel(),
         (gxx[io, ig][:, None] + pxx[io] + PIXEL_VARIANCE).ravel(), (gxy[io, ig][:, None] + pxy[io]).ravel(),
         (gyy[io, ig][:, None] + pyy[io] + PIXEL_VARIANCE).ravel()),
        (x[nb], y[nb], amp[nb, gb], gxx[nb, gb] + pbar[0][nb] + PIXEL_VARIANCE, gxy[nb, gb] + pbar[1][nb],
         gyy[nb, gb] + pbar[2][nb] + PIXEL_VARIANCE),
    ]
    return tuple(np.concatenate(c) for c in zip(*parts))


def _sersic_inputs(x, y, flux, n, hlr_arcsec, q, pa_deg, jacobian):
    x, y = _positions(x, y)
    m = x.size
    flux = _vector("flux", flux, m, lo=0.0)
    n = _vector("n", n, m)
    if not np.all((n == 1) | (n == 4)):
        bad = int(np.argmin((n == 1) | (n == 4)))
        raise ValueError(f"n (Sersic index) must be 1 or 4; entry {bad} is {n[bad]!r}")
    hlr = _vector("hlr_arcsec", hlr_arcsec, m, lo=0.0, lo_open=True)
    q = _vector("q", q, m, lo=0.0, lo_open=True, hi=1.0)
    pa = _vector("pa_deg", pa_deg, m)
    return x, y, flux, n, hlr, q, pa, _check_jacobian(jacobian)


def _draw_sersic(image, x, y, flux, n, hlr, q, pa, J, psf, threshold, origin):
    threshold, (ox, oy) = _check_threshold(threshold), _origin(origin)
    parts = []
    for n_index in (4.0, 1.0):
        sel = (n == n_index) & (flux > 0)
        if sel.any():
            parts.append(sersic_components(x[sel], y[sel], flux[sel], n_index, hlr[sel], q[sel], pa[sel], J, psf))
    if parts:
        cx, cy, f, cxx, cxy, cyy = (np.concatenate(c) for c in zip(*parts))
        _add(image, cx - ox, cy - oy, f, cxx, cxy, cyy, threshold)


def render_sersic(image, x, y, flux, n, hlr_arcsec, q, pa_deg, jacobian, psf, *,
                  threshold=DEFAULT_THRESHOLD, origin=(0.0, 0.0)):
    """Add Sersic galaxies convolved with `psf`.

    x, y: sensor pixel positions; flux: electrons (>= 0); n: Sersic index, 1 or 4 (scalar or per galaxy);
    hlr_arcsec: semi-major-axis half-light radius (arcsec, > 0); q = b/a in (0, 1]; pa_deg: position angle
    of the major axis in degrees east of north (PhoSim sersic2d); jacobian: 2x2 J (pixels per arcsec) with
    (dx, dy) = J @ (d_east, d_north).
    """
    _check_image(image)
    _check_psf(psf)
    args = _sersic_inputs(x, y, flux, n, hlr_arcsec, q, pa_deg, jacobian)
    _draw_sersic(image, *args, psf, threshold, origin)


def render_galaxies(image, x, y, bulge_flux, bulge_hlr, bulge_q, bulge_pa, disk_flux, disk_hlr, disk_q, disk_pa,
                    jacobian, psf, *, threshold=DEFAULT_THRESHOLD, origin=(0.0, 0.0)):
    """Add bulge (n=4) + disk (n=1) galaxies; see render_sersic for units. Zero-flux components are skipped
    (their sizes may then be any finite value)."""
    _check_image(image)
    _check_psf(psf)
    x, y = _positions(x, y)
    m = x.size
    bf, df = _vector("bulge_flux", bulge_flux, m, lo=0.0), _vector("disk_flux", disk_flux, m, lo=0.0)
    b, d = bf > 0, df > 0

    def both(name, bulge, disk, **limits):
        bv = _vector("bulge_" + name, bulge, m, where=b, **limits)
        dv = _vector("disk_" + name, disk, m, where=d, **limits)
        return np.r_[bv[b], dv[d]]

    args = _sersic_inputs(np.r_[x[b], x[d]], np.r_[y[b], y[d]], np.r_[bf[b], df[d]],
                          np.r_[np.full(b.sum(), 4.0), np.full(d.sum(), 1.0)],
                          both("hlr", bulge_hlr, disk_hlr, lo=0.0, lo_open=True),
                          both("q", bulge_q, disk_q, lo=0.0, lo_open=True, hi=1.0), both("pa", bulge_pa, disk_pa),
                          jacobian)
    _draw_sersic(image, *args, psf, threshold, origin)
