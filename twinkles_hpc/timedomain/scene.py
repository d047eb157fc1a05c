"""Scene models of lensed-quasar candidates: a lens galaxy and its point images (docs/lensmodel.md).

The model of one system on one image is a linear sum of fixed shapes:

* the lens galaxy, a de Vaucouleurs profile (the Sersic n = 4 Gaussian mixture of imsim/sersic.py) with a
  centre and a half-light shape matrix S (S = a^2 (u u^T + q^2 v v^T) for semi-major half-light radius a,
  axis ratio q), convolved with the image's PSF mixture (analytic: the covariances add);
* N point images, the PSF at each position;
* a constant background.

`fit_scene` fits the shapes on the multi-band coadds: the nonlinear parameters (galaxy centre and shape,
image positions) are shared by the bands, the amplitudes are free per band and solved linearly inside the
nonlinear least squares (variable projection). It starts from the candidate's DiaObject positions, drops
images that no band detects, and adds images where the multi-band residual holds a point source, up to
MAX_IMAGES, each kept only when it lowers chi^2 by at least ADD_DCHI2. The scene is stored in sky
coordinates (RA, Dec and the shape in arcsec^2, east and north), so that `photometer` can place it on any
image through that image's WCS: per image (a calexp or a difference) one weighted linear fit of the
amplitudes with that image's PSF, which is the per-visit light curve of every point image.

The truth is never read.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import optimize

from twinkles_hpc.level2.astrometry import tangent_arcsec
from twinkles_hpc.level2.photometry import mixture_image
from twinkles_hpc.profiles import sersic_mixture

#: At most this many point images per system.
MAX_IMAGES = 4
#: An image is added (or kept) only if it lowers the multi-band chi^2 by at least this.
ADD_DCHI2 = 25.0
#: Peaks of the PSF-filtered multi-band residual above this S/N seed new images.
SEED_SNR = 5.0
#: No image seeded closer than this (arcsec) to the galaxy's centre (the core's model error) or to another
#: image.
MIN_IMAGE_SEP = 0.3
#: DiaObjects of one candidate closer than this (arcsec) are one image to start with.
MERGE_RADIUS = 0.5
#: Images are sought within IMAGE_RADIUS (arcsec) of the galaxy, or 0.5" beyond the farthest starting
#: image; pixels are fitted within FIT_MARGIN more; the galaxy's centre moves at most GALAXY_SHIFT.
IMAGE_RADIUS, FIT_MARGIN, GALAXY_SHIFT = 2.0, 1.6, 1.0
#: Half-light radius (arcsec) the galaxy starts from, and its allowed range.
RE_START, RE_MIN, RE_MAX = 0.6, 0.05, 6.0

#: Function evaluations allowed to one nonlinear fit (a system's fit makes one per image count it tries).
MAX_NFEV = 40

#: PSF mixtures with more components than this are refitted (compact_psf).
MAX_PSF_COMPONENTS = 4

#: Flags of a per-image measurement (bits).
FLAG_EDGE = 1          # the stamp is cut by the image's border
FLAG_MASKED = 2        # masked pixels within 1 FWHM of the point image (left out of the fit)
FLAG_NO_DATA = 4       # no usable pixel near the image, or a singular fit: flux NaN
FLAGS = {"EDGE": FLAG_EDGE, "MASKED": FLAG_MASKED, "NO_DATA": FLAG_NO_DATA}

_GAL_W, _GAL_S = sersic_mixture(4)


@dataclass
class Scene:
    """A fitted system in sky coordinates: the galaxy's centre (deg) and half-light shape matrix (arcsec^2;
    axes east, north), the point images' positions (deg), the neighbours fitted with it (positions, deg, and
    intrinsic covariances, arcsec^2), the fit radius (arcsec), and what the coadd fit measured per band
    (nJy)."""
    ra: float
    dec: float
    shape: tuple
    image_ra: np.ndarray
    image_dec: np.ndarray
    neighbour_ra: np.ndarray
    neighbour_dec: np.ndarray
    neighbour_cov: np.ndarray
    fit_radius: float
    galaxy_flux: dict = field(default_factory=dict)
    image_flux: dict = field(default_factory=dict)
    image_flux_err: dict = field(default_factory=dict)
    chi2_dof: float = np.nan

    @property
    def n_images(self):
        return len(self.image_ra)


@dataclass
class Stamp:
    """Pixels of one image around a system: the box (x0, y0, nx, ny; pixels), the usable pixels' data,
    variance and coordinates (flattened), the PSF mixture there (w, cxx, cxy, cyy: arrays (K,)), the factor
    to nJy, the band, whether the box was cut by the image border, and the masked pixels (their x, y)."""
    band: str
    box: tuple
    x: np.ndarray
    y: np.ndarray
    data: np.ndarray
    var: np.ndarray
    psf: tuple
    njy: float
    cut: bool = False
    masked_xy: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))


def pixel_jacobian(wcs, ra, dec, step=0.5):
    """d(pixel x, y) / d(east, north arcsec) of `wcs` at (ra, dec): a 2x2 array."""
    c = np.cos(np.radians(dec))
    r = np.array([ra, ra + step / 3600.0 / c, ra])
    d = np.array([dec, dec, dec + step / 3600.0])
    x, y = wcs.all_world2pix(r, d, 0)
    return np.array([[x[1] - x[0], x[2] - x[0]], [y[1] - y[0], y[2] - y[0]]]) / step


def _shape_matrix(p):
    """Half-light shape matrix (sxx, sxy, syy) from its Cholesky parameters (log l11, l21, log l22)."""
    a, b, c = np.exp(p[0]), p[1], np.exp(p[2])
    return a * a, a * b, b * b + c * c


def galaxy_profile(dx, dy, shape, psf):
    """Unit-flux de Vaucouleurs galaxy of half-light shape matrix `shape` (sxx, sxy, syy, px^2) convolved
    with the PSF mixture `psf` (w, cxx, cxy, cyy), sampled at offsets dx, dy (pixels) from its centre."""
    w, a, b, c = (np.asarray(v, np.float64) for v in psf)
    s2 = _GAL_S ** 2
    W = (_GAL_W[:, None] * w[None, :]).ravel()
    A, B, C = ((s2[:, None] * s + v[None, :]).ravel() for s, v in zip(shape, (a, b, c)))
    return mixture_image(W, A, B, C, dx, dy)


def point_profile(dx, dy, psf):
    """The PSF mixture `psf` at offsets dx, dy (pixels) from a point source: flux per pixel per unit flux."""
    return mixture_image(*psf, dx, dy)


def neighbour_profile(dx, dy, cov, psf):
    """Unit-flux Gaussian of intrinsic covariance `cov` (cxx, cxy, cyy, px^2) convolved with `psf`."""
    w, a, b, c = (np.asarray(v, np.float64) for v in psf)
    return mixture_image(w, a + cov[0], b + cov[1], c + cov[2], dx, dy)


def design(stamp, gal_xy, shape, img_xy, nuisance=(), with_galaxy=True):
    """Columns of one stamp's linear model: [galaxy,] point images..., neighbours..., constant (flattened
    pixels). nuisance: (x, y, intrinsic covariance) of each neighbouring Object, fixed."""
    cols = []
    if with_galaxy:
        cols.append(galaxy_profile(stamp.x - gal_xy[0], stamp.y - gal_xy[1], shape, stamp.psf))
    for x, y in img_xy:
        cols.append(point_profile(stamp.x - x, stamp.y - y, stamp.psf))
    for x, y, cov in nuisance:
        cols.append(neighbour_profile(stamp.x - x, stamp.y - y, cov, stamp.psf))
    cols.append(np.ones_like(stamp.x))
    return np.stack(cols, axis=1)


def weighted_solve(A, d, w):
    """Weighted linear least squares: (amplitudes, chi^2 with the weights, normal matrix) or Nones."""
    Aw = A * w[:, None]
    N = A.T @ Aw
    try:
        f = np.linalg.solve(N, Aw.T @ d)
    except np.linalg.LinAlgError:
        return None, None, None
    r = d - A @ f
    return f, float(np.sum(w * r * r)), N


# --- the fit on the coadds ---------------------------------------------------------------------------------
def _unpack(theta, n):
    return theta[:2], _shape_matrix(theta[2:5]), theta[5:5 + 2 * n].reshape(n, 2)


def _residuals(theta, stamps, n, nuis):
    gal, shape, img = _unpack(theta, n)
    out = []
    for s in stamps:
        w = 1.0 / s.var
        A = design(s, gal, shape, img, nuis)
        f, _, _ = weighted_solve(A, s.data, w)
        r = s.data - A @ f if f is not None else s.data
        out.append(r * np.sqrt(w))
    return np.concatenate(out)


def _fit(stamps, nuis, theta0, n, lo, hi):
    """Least squares of the shared parameters from theta0 within [lo, hi]: (theta, chi^2)."""
    theta0 = np.clip(theta0, lo + 1e-6, hi - 1e-6)
    res = optimize.least_squares(_residuals, theta0, args=(stamps, n, nuis), bounds=(lo, hi), method="trf",
                                 x_scale="jac", max_nfev=MAX_NFEV, xtol=1e-6, ftol=1e-8)
    return res.x, float(np.sum(res.fun ** 2))


def _band_fluxes(stamps, nuis, theta, n):
    """Per band: (amplitudes [galaxy, images..., constant], their 1-sigma errors) with 1/var weights."""
    gal, shape, img = _unpack(theta, n)
    out = {}
    for s in stamps:
        A = design(s, gal, shape, img, nuis)
        f, _, N = weighted_solve(A, s.data, 1.0 / s.var)
        if f is None:
            continue
        out[s.band] = (f * s.njy, np.sqrt(np.diag(np.linalg.inv(N))) * s.njy)
    return out


def _image_snr(fluxes, k):
    """Multi-band S/N of point image k (column 1 + k), with the sign of its inverse-variance mean flux."""
    fe = [(f[1 + k], e[1 + k]) for f, e in fluxes.values() if e[1 + k] > 0]
    snr = float(np.sqrt(sum((f / e) ** 2 for f, e in fe)))
    return snr if sum(f / e ** 2 for f, e in fe) >= 0 else -snr


def _seed(stamps, nuis, theta, n, pixel_scale, centre, radius):
    """(x, y) of the strongest point-source peak of the PSF-filtered multi-band residual, S/N above
    SEED_SNR, not within MIN_IMAGE_SEP of the galaxy or an image and 2 px inside the box; None if none."""
    from scipy.signal import correlate
    gal, shape, img = _unpack(theta, n)
    num = den = 0.0
    for s in stamps:
        A = design(s, gal, shape, img, nuis)
        f, _, _ = weighted_solve(A, s.data, 1.0 / s.var)
        if f is None:
            continue
        x0, y0, nx, ny = s.box
        r, iv = np.zeros((ny, nx)), np.zeros((ny, nx))
        iy, ix = (s.y - y0).astype(np.int64), (s.x - x0).astype(np.int64)
        r[iy, ix], iv[iy, ix] = (s.data - A @ f) / s.var, 1.0 / s.var
        h = min(nx, ny) // 4
        dy, dx = np.mgrid[-h:h + 1, -h:h + 1].astype(np.float64)
        P = point_profile(dx, dy, s.psf)
        num = num + correlate(r, P, mode="same", method="fft")
        den = den + correlate(iv, P * P, mode="same", method="fft")
    if np.isscalar(num):
        return None
    snr = np.where(den > 0, num / np.sqrt(np.maximum(den, 1e-300)), 0.0)
    x0, y0, nx, ny = stamps[0].box
    snr[:2], snr[-2:], snr[:, :2], snr[:, -2:] = 0.0, 0.0, 0.0, 0.0
    taken = [tuple(gal)] + [tuple(p) for p in img]
    order = np.argsort(-snr.ravel(), kind="stable")
    for j in order[:400]:
        if snr.flat[j] < SEED_SNR:
            break
        x, y = x0 + j % nx, y0 + j // nx
        if np.hypot(x - centre[0], y - centre[1]) > radius:
            continue
        if all(np.hypot(x - t[0], y - t[1]) * pixel_scale >= MIN_IMAGE_SEP for t in taken):
            return float(x), float(y)
    return None


def search_radius(gal_ra, gal_dec, start_ra, start_dec):
    """(image radius, fit radius) in arcsec for a system: images are sought within the image radius of the
    galaxy (IMAGE_RADIUS, or the farthest starting image plus 0.5"), pixels are fitted within the fit radius
    (FIT_MARGIN more: the images' wings)."""
    off = tangent_arcsec(start_ra, start_dec, gal_ra, gal_dec)
    reach = float(np.hypot(*off).max()) if np.size(start_ra) else 0.0
    r_img = max(IMAGE_RADIUS, reach + 0.5)
    return r_img, r_img + FIT_MARGIN


def neighbours_on(wcs, ra, dec, cov_arcsec):
    """Neighbours (ra, dec, intrinsic covariance (n, 3) in arcsec^2, east-north) as design()'s nuisance
    list on the pixels of `wcs`."""
    out = []
    for r, d, c in zip(np.atleast_1d(ra), np.atleast_1d(dec), np.reshape(cov_arcsec, (-1, 3))):
        x, y = (float(v) for v in wcs.all_world2pix(r, d, 0))
        J = pixel_jacobian(wcs, r, d)
        C = J @ np.array([[c[0], c[1]], [c[1], c[2]]]) @ J.T
        out.append((x, y, (float(C[0, 0]), float(C[0, 1]), float(C[1, 1]))))
    return out


def fit_scene(stamps, wcs, gal_ra, gal_dec, start_ra, start_dec, neighbours=None, pixel_scale=0.2):
    """Fit a Scene on the coadd stamps (one per band, all on the pixels of `wcs`, cut by read_stamp to the
    fit radius of search_radius; Stamp.njy = nJy per unit). gal_ra, gal_dec: where the galaxy starts (the
    host Object or the candidate's centre); start_ra, start_dec: where the images start (the candidate's
    DiaObjects, merged within MERGE_RADIUS); neighbours: (ra, dec, cov_arcsec) of the other Objects whose
    light reaches the stamp, fitted as fixed shapes with free fluxes, or None.
    Returns (Scene, its fit's summary dict)."""
    r_img, r_fit = search_radius(gal_ra, gal_dec, start_ra, start_dec)
    nb = ([], [], np.zeros((0, 3))) if neighbours is None else neighbours
    nuis = neighbours_on(wcs, *nb)
    cx, cy = (float(v) for v in wcs.all_world2pix(gal_ra, gal_dec, 0))
    x0, y0 = (np.atleast_1d(np.asarray(v, np.float64)) for v in wcs.all_world2pix(start_ra, start_dec, 0))
    img = _merge(np.c_[x0, y0], MERGE_RADIUS / pixel_scale)[:MAX_IMAGES]
    half, g_half = r_img / pixel_scale, GALAXY_SHIFT / pixel_scale
    re = RE_START / pixel_scale

    def bounds(n):
        lo = [cx - g_half, cy - g_half, np.log(RE_MIN / pixel_scale), -RE_MAX / pixel_scale,
              np.log(RE_MIN / pixel_scale)] + [cx - half, cy - half] * n
        hi = [cx + g_half, cy + g_half, np.log(RE_MAX / pixel_scale), RE_MAX / pixel_scale,
              np.log(RE_MAX / pixel_scale)] + [cx + half, cy + half] * n
        return np.array(lo, np.float64), np.array(hi, np.float64)

    theta = np.r_[cx, cy, np.log(re), 0.0, np.log(re), img.ravel()]
    n = len(img)
    theta, chi2 = _fit(stamps, nuis, theta, n, *bounds(n))
    log = [f"start {n} images: chi2 {chi2:.1f}"]

    def add(theta, chi2, n):
        """Add images where the residual holds a point source, while each earns ADD_DCHI2."""
        while n < MAX_IMAGES:
            seed = _seed(stamps, nuis, theta, n, pixel_scale, (cx, cy), half)
            if seed is None:
                break
            t2, c2 = _fit(stamps, nuis, np.r_[theta, seed], n + 1, *bounds(n + 1))
            if chi2 - c2 < ADD_DCHI2:
                break
            theta, chi2, n = t2, c2, n + 1
            log.append(f"added an image at ({seed[0]:.1f}, {seed[1]:.1f}): chi2 {chi2:.1f}")
        return theta, chi2, n

    theta, chi2, n = add(theta, chi2, n)
    dropped = False
    while n:        # drop images no band needs (or of negative flux), the weakest first
        fl = _band_fluxes(stamps, nuis, theta, n)
        snr = [_image_snr(fl, k) for k in range(n)]
        k = int(np.argmin(snr))
        t2, c2 = _fit(stamps, nuis, np.delete(theta, [5 + 2 * k, 6 + 2 * k]), n - 1, *bounds(n - 1))
        if c2 - chi2 >= ADD_DCHI2 and snr[k] > 0:
            break
        theta, chi2, n, dropped = t2, c2, n - 1, True
        log.append(f"dropped an image (S/N {snr[k]:.1f}): chi2 {chi2:.1f}")
    if dropped:
        theta, chi2, n = add(theta, chi2, n)
    gal, shape, img_xy = _unpack(theta, n)
    fl = _band_fluxes(stamps, nuis, theta, n)
    g_ra, g_dec = (float(v) for v in wcs.all_pix2world(gal[0], gal[1], 0))
    i_ra, i_dec = (np.atleast_1d(np.asarray(v, np.float64)) for v in wcs.all_pix2world(img_xy[:, 0], img_xy[:, 1], 0))
    J = np.linalg.inv(pixel_jacobian(wcs, g_ra, g_dec))
    S = J @ np.array([[shape[0], shape[1]], [shape[1], shape[2]]]) @ J.T
    npix = sum(s.data.size for s in stamps)
    n_par = 5 + 2 * n + len(stamps) * (2 + n + len(nuis))
    scene = Scene(g_ra, g_dec, (float(S[0, 0]), float(S[0, 1]), float(S[1, 1])), i_ra, i_dec,
                  np.asarray(nb[0], np.float64), np.asarray(nb[1], np.float64),
                  np.asarray(nb[2], np.float64).reshape(-1, 3), r_fit,
                  galaxy_flux={b: float(f[0]) for b, (f, e) in fl.items()},
                  image_flux={b: f[1:1 + n].tolist() for b, (f, e) in fl.items()},
                  image_flux_err={b: e[1:1 + n].tolist() for b, (f, e) in fl.items()},
                  chi2_dof=chi2 / max(npix - n_par, 1))
    return scene, {"log": log, "chi2": chi2, "npix": npix}


def _merge(xy, radius):
    """Points closer than `radius` merged into their mean, in input order."""
    out = []
    used = np.zeros(len(xy), bool)
    for i in range(len(xy)):
        if used[i]:
            continue
        near = np.flatnonzero(~used & (np.hypot(*(xy - xy[i]).T) < radius))
        used[near] = True
        out.append(xy[near].mean(0))
    return np.array(out, np.float64).reshape(-1, 2)


def compact_psf(comps):
    """A mixture of more than MAX_PSF_COMPONENTS components (a coadd's PSF: the inputs' mixtures) refitted
    with level2.psf's few: the scene's galaxy costs 8 Gaussians per PSF component."""
    if len(comps[0]) <= MAX_PSF_COMPONENTS:
        return comps
    key = b"".join(np.ascontiguousarray(c, np.float64).tobytes() for c in comps)
    if key not in _COMPACT:
        if len(_COMPACT) >= 256:
            _COMPACT.pop(next(iter(_COMPACT)))
        _COMPACT[key] = _compact(comps)
    return _COMPACT[key]


_COMPACT = {}      # compact_psf's results by their input (a coadd's PSF node serves many systems and visits)


def _compact(comps):
    from twinkles_hpc.level2.photometry import mixture_fwhm
    from twinkles_hpc.level2.psf import mixture_from_stamp
    fwhm = float(mixture_fwhm(*(c[None, :] for c in comps))[0])
    h = max(8, int(np.ceil(3.0 * fwhm)))
    dy, dx = np.mgrid[-h:h + 1, -h:h + 1].astype(np.float64)
    stamp = mixture_image(*comps, dx, dy)
    fit = mixture_from_stamp(stamp / stamp.sum())
    return tuple(np.asarray(c, np.float64)[0] for c in fit.components_at(np.zeros(1), np.zeros(1)))


def read_stamp(planes, cx, cy, half, psf, njy, band, bad_bits, compact=True):
    """The Stamp of the pixels within `half` pixels of (cx, cy) from `planes` (image, variance, mask: 2-D
    arrays or HDF5 datasets, of which only the enclosing box is read); pixels with a `bad_bits` mask bit, a
    non-finite value or a variance <= 0 are left out. psf: object with components_at. None when the box
    misses the image. compact: refit a PSF of many components (compact_psf), for a fit with the galaxy."""
    image, variance, mask = planes
    ny, nx = image.shape
    h = int(np.ceil(half))
    ix, iy = int(np.floor(cx + 0.5)), int(np.floor(cy + 0.5))
    x0, y0, x1, y1 = max(ix - h, 0), max(iy - h, 0), min(ix + h + 1, nx), min(iy + h + 1, ny)
    if x1 - x0 < 3 or y1 - y0 < 3:
        return None
    sl = np.s_[y0:y1, x0:x1]
    d, v, m = (np.asarray(p[sl]) for p in (image, variance, mask))
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float64)
    inside = np.hypot(xx - cx, yy - cy) <= half
    good = inside & np.isfinite(d) & np.isfinite(v) & (v > 0) & ((m & bad_bits) == 0)
    comps = tuple(np.asarray(c, np.float64)[0] for c in psf.components_at(np.array([float(cx)]), np.array([float(cy)])))
    if compact:
        comps = compact_psf(comps)
    masked = inside & ~good
    return Stamp(band, (x0, y0, x1 - x0, y1 - y0), xx[good], yy[good], d[good].astype(np.float64),
                 v[good].astype(np.float64), comps, float(njy), cut=(x1 - x0, y1 - y0) != (2 * h + 1, 2 * h + 1),
                 masked_xy=np.c_[xx[masked], yy[masked]])


# --- per-image photometry --------------------------------------------------------------------------------
def scene_on_image(scene, wcs):
    """(galaxy (x, y), shape matrix in px^2, point images (n, 2) px) of `scene` on an image's `wcs`."""
    gx, gy = (float(v) for v in wcs.all_world2pix(scene.ra, scene.dec, 0))
    ix, iy = (np.atleast_1d(np.asarray(v, np.float64)) for v in wcs.all_world2pix(scene.image_ra, scene.image_dec, 0))
    J = pixel_jacobian(wcs, scene.ra, scene.dec)
    sxx, sxy, syy = scene.shape
    S = J @ np.array([[sxx, sxy], [sxy, syy]]) @ J.T
    return (gx, gy), (float(S[0, 0]), float(S[0, 1]), float(S[1, 1])), np.c_[ix, iy]


def _linear(A, d, var):
    """Unweighted linear least squares of d on the columns A: (amplitudes, their covariance from the
    per-pixel variances `var`), None when singular."""
    N = A.T @ A
    try:
        Ninv = np.linalg.inv(N)
    except np.linalg.LinAlgError:
        return None
    B = A @ Ninv
    return Ninv @ (A.T @ d), B.T @ (B * var[:, None])


def photometer(stamp, gal_xy, shape, img_xy, *, nuisance=(), with_galaxy=True, fwhm_px=4.0):
    """Linear fit of the amplitudes on one stamp with its PSF, the shapes fixed (the galaxy unless
    with_galaxy is False, the point images, the `nuisance` neighbours, a constant): per point image
    (flux, error, flags) in nJy, and the galaxy's flux (NaN without it).

    The weights are constant, so the estimate is linear and unbiased at every flux; the errors propagate the
    variance plane through that estimator. Pixels the Stamp leaves out (masked)
    are not in the fit; FLAG_MASKED marks an image with such pixels within 1 FWHM."""
    n = len(img_xy)
    flux, err = np.full(n, np.nan), np.full(n, np.nan)
    flags = np.zeros(n, np.int64)
    if stamp.cut:
        flags |= FLAG_EDGE
    for k, (x, y) in enumerate(img_xy):
        if len(stamp.masked_xy) and np.any(np.hypot(*(stamp.masked_xy - (x, y)).T) < fwhm_px):
            flags[k] |= FLAG_MASKED
    near = [np.count_nonzero(np.hypot(stamp.x - x, stamp.y - y) < fwhm_px) for x, y in img_xy]
    if stamp.data.size < 3 + n:
        return flux, err, flags | FLAG_NO_DATA, np.nan
    A = design(stamp, gal_xy, shape, img_xy, nuisance, with_galaxy)
    sol = _linear(A, stamp.data, stamp.var)
    if sol is None:
        return flux, err, flags | FLAG_NO_DATA, np.nan
    f, cov = sol
    off = 1 if with_galaxy else 0
    flux = f[off:off + n] * stamp.njy
    err = np.sqrt(np.diag(cov)[off:off + n]) * stamp.njy
    for k in range(n):
        if near[k] == 0:
            flux[k], err[k], flags[k] = np.nan, np.nan, flags[k] | FLAG_NO_DATA
    gal = float(f[0] * stamp.njy) if with_galaxy else np.nan
    return flux, err, flags, gal
