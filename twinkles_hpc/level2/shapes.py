"""Adaptive second moments (docs/level2-objects.md, "Shapes").

The adaptive moments of a source are the covariance W of the elliptical Gaussian weight that matches it
(Bernstein & Jarvis 2002): iterate W <- 2 M(W), M the second moments of weight(W) x image about the
weighted centroid, which is also updated. For a Gaussian source of covariance C, M(W) = (C^-1 + W^-1)^-1,
whose fixed point W = 2 M is W = C: a Gaussian's adaptive moments are its covariance, whatever its flux.
The stamps (side 2 radius + 1) are cut together with numpy; the iteration runs per object in the compiled
kernel twinkles_hpc._shapes (per iteration one exp per stamp row, a recurrence along it).
"""
import numpy as np

from twinkles_hpc import _shapes

#: Stamp half-side (pixels), iterations, convergence (relative change of W), start sigma (pixels).
SHAPE_RADIUS, SHAPE_MAX_ITER, SHAPE_TOL, SHAPE_SIGMA0 = 20, 100, 1e-4, 2.0
#: Sources whose weight outgrows the stamp are measured again on stamps this much larger.
SHAPE_WIDE_FACTOR = 2.5
#: The weight must fit the stamp: sqrt of W's largest eigenvalue <= radius / SHAPE_SIGMA_FIT.
SHAPE_SIGMA_FIT = 3.5
#: Largest centroid shift from the starting position (pixels) before the measurement is a failure.
SHAPE_MAX_SHIFT = 2.0
#: Objects per batch: bounds the stamps in memory (~10 arrays of SHAPE_CHUNK x 41^2 float64, ~70 MB).
SHAPE_CHUNK = 512


def adaptive_moments(image, x, y, *, usable=None, owner=None, labels=None, radius=SHAPE_RADIUS):
    """Adaptive moments of the sources at (x, y) (pixels) on `image` (background subtracted).

    usable: bool image, False for pixels without valid data (left out; a failure if inside the weight's
    3-sigma ellipse); labels, owner: an int image of footprint ids and each source's own id, so that
    pixels of other sources' footprints are left out (a crude deblend). Returns (ixx, iyy, ixy, flag):
    px^2 in the image's axes, flag True where the iteration failed (non-positive weighted flux or
    moments, no convergence, centroid moved > SHAPE_MAX_SHIFT px, weight too wide even for a stamp
    SHAPE_WIDE_FACTOR x larger, or unusable pixels under the weight); the moments are NaN there.
    """
    x, y = np.atleast_1d(np.asarray(x, np.float64)), np.atleast_1d(np.asarray(y, np.float64))
    owner = np.zeros(x.size, np.int64) if owner is None else np.asarray(owner)
    res = _batched(image, x, y, usable, owner, labels, radius)
    wide = np.flatnonzero(res[4])                          # too wide for the stamp: once more, larger
    if wide.size:
        again = _batched(image, x[wide], y[wide], usable, owner[wide], labels, int(SHAPE_WIDE_FACTOR * radius))
        for a, b in zip(res, again):
            a[wide] = b
    return res[:4]


def _batched(image, x, y, usable, owner, labels, radius):
    chunk = max(1, int(SHAPE_CHUNK * (SHAPE_RADIUS / radius) ** 2))
    parts = [_moments(image, x[k:k + chunk], y[k:k + chunk], usable, owner[k:k + chunk], labels, radius)
             for k in range(0, x.size, chunk)]
    if not parts:
        return [np.zeros(0) for _ in range(3)] + [np.zeros(0, bool), np.zeros(0, bool)]
    return [np.concatenate(c) for c in zip(*parts)]


def _moments(image, x, y, usable, owner, labels, radius):
    n = x.size
    ny, nx = image.shape
    off = np.arange(-radius, radius + 1)
    ix, iy = np.rint(x).astype(np.int64), np.rint(y).astype(np.int64)
    xx, yy = ix[:, None] + off[None, :], iy[:, None] + off[None, :]
    inx, iny = (xx >= 0) & (xx < nx), (yy >= 0) & (yy < ny)
    cx, cy = np.clip(xx, 0, nx - 1), np.clip(yy, 0, ny - 1)
    st = image[cy[:, :, None], cx[:, None, :]].astype(np.float64)
    ok = iny[:, :, None] & inx[:, None, :] & np.isfinite(st)
    if usable is not None:
        ok &= usable[cy[:, :, None], cx[:, None, :]]
    keep = ok.copy()
    if labels is not None:
        lab = labels[cy[:, :, None], cx[:, None, :]]
        keep &= (lab == 0) | (lab == owner[:, None, None])
    st = np.ascontiguousarray(np.where(keep, st, 0.0))
    dx0 = np.ascontiguousarray(xx - x[:, None])                          # (n, S) offsets from the start
    dy0 = np.ascontiguousarray(yy - y[:, None])
    wxx, wyy, wxy, mx, my = (np.empty(n) for _ in range(5))
    good = np.zeros(n, np.uint8)
    _shapes.iterate(st, dx0, dy0, SHAPE_SIGMA0, SHAPE_MAX_ITER, SHAPE_TOL, SHAPE_MAX_SHIFT, wxx, wyy, wxy, mx, my,
                    good)
    good = good.astype(bool)
    dx0, dy0 = dx0[:, None, :], dy0[:, :, None]
    # the weight must fit the stamp, and no unusable pixel may lie under it
    lam = 0.5 * (wxx + wyy) + np.sqrt(0.25 * (wxx - wyy) ** 2 + wxy ** 2)
    wide = good & (np.sqrt(lam) > radius / SHAPE_SIGMA_FIT)
    good &= ~wide
    g = np.flatnonzero(good)
    if g.size:
        det = wxx[g] * wyy[g] - wxy[g] ** 2
        dx, dy = dx0[g] - mx[g, None, None], dy0[g] - my[g, None, None]
        q = ((wyy[g] / det)[:, None, None] * dx * dx - 2 * (wxy[g] / det)[:, None, None] * dx * dy
             + (wxx[g] / det)[:, None, None] * dy * dy)
        good[g] = ~((q < 9.0) & ~ok[g]).any((1, 2))
    return (np.where(good, wxx, np.nan), np.where(good, wyy, np.nan), np.where(good, wxy, np.nan), ~good, wide)
