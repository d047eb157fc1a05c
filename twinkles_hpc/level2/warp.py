"""Warp a calexp (image, variance, mask) onto another pixel grid (a patch of the skymap) with Lanczos-3.

Conventions: x is the column, y the row, pixel (0, 0) is centred at x = y = 0 (FITS pixel (1, 1)); a box
is (x0, y0, nx, ny) in the pixels of its WCS. Images hold flux per pixel (electrons or nJy).

Mapping: each destination pixel centre goes to world coordinates through `dst_wcs` and back to source
pixel coordinates through `src_wcs` (astropy, SIP included). The exact mapping is evaluated on a node
grid every `grid_step` destination pixels, anchored at multiples of the step in destination pixels, and
interpolated bilinearly; `MappingGrid.max_error` is the largest interpolation error (px), measured at the
cell centres, where bilinear interpolation of a smooth map errs most, and the step is halved until it is
below `max_grid_error` (default 1e-3 px). From a sensor to a tract whose centre is 0.1 / 0.5 / 2 deg
away it is 6e-7 / 3e-6 / 1.2e-5 px at the default 32 px (it scales as step^2). Anchoring the nodes makes
a pixel's warp independent of the box it is computed in: warping a patch in sub-regions gives the same
bits as warping it whole.

Flux: the kernel interpolates surface brightness (flux per source pixel); the output is multiplied by
the local area ratio J = |det d(u, v)/d(x, y)| (source pixels per destination pixel, from central
differences of the exact map at the nodes), so flux per pixel is conserved whatever the pixel scales;
for equal nominal scales J differs from 1 only by the TAN projections' differential scale (3e-5 for a
sensor 0.1 deg from the tract centre, 3e-4 at 0.5 deg).

Variance: V_out = J^2 sum_k w_k^2 V_k, the variance of the interpolated value if the input pixels were
independent. It ignores the covariance the warp induces between neighbouring output pixels (a
Lanczos-3 warp at a half-pixel shift lowers the per-pixel variance of white noise to ~0.6 of the input
and moves the rest into covariance), so the coadd's variance plane is right per pixel but the noise in
a sum over pixels is larger than the summed variance says.

Mask (the bits of level2/masks.py): an output pixel ORs the bits of the input pixels whose weight
|w_x w_y| >= `mask_weight` (default 0.05: at integer shifts only the pixel itself, at a half-pixel shift
in x and y the 2 x 2 nearest and their 8 edge neighbours). A pixel whose 6 x 6 kernel footprint is not
wholly inside the source gets image = variance = NaN and mask NO_DATA.

Threads: with `twinkles_hpc.threads.set_kernel_threads(n)` (`twinkles-hpc run --threads n`) the rows of
each warp and of each combination are shared among n OpenMP threads of the process; every row is computed
by one thread as it is without them, so the products are the same bits at any n (tests/test_threads.py).
"""
from dataclasses import dataclass

import numpy as np

from twinkles_hpc import _warp
from twinkles_hpc.level2.masks import NO_DATA
from twinkles_hpc.threads import kernel_threads

#: "lanczos3": normalised Lanczos-3 weights plus the least-squares correction that reproduces polynomials
#: up to degree 2; "lanczos3_plain": normalised Lanczos-3 only (as LSST afw), whose first moment errs by
#: up to 0.02 px, i.e. 8e-4 of the peak on a sigma = 15 px Gaussian's slope.
KERNELS = ("lanczos3", "lanczos3_plain")
#: Source pixels needed beyond the mapped box on each side: Lanczos-3 taps floor(u) - 2 .. floor(u) + 3,
#: plus one pixel for the grid interpolation error and rounding.
SOURCE_MARGIN = 4
DEFAULT_GRID_STEP = 32
DEFAULT_MAX_GRID_ERROR = 1e-3
DEFAULT_MASK_WEIGHT = 0.05


@dataclass
class MappingGrid:
    """Destination -> source pixel map on nodes (gx0 + c step, gy0 + r step) (destination pixels):
    gu, gv source pixel coordinates, gj the area ratio |d(u, v)/d(x, y)|; max_error (px) of the bilinear
    interpolation between nodes, measured at cell centres."""
    gu: np.ndarray
    gv: np.ndarray
    gj: np.ndarray
    gx0: int
    gy0: int
    step: int
    max_error: float


def kernel_weights(f, kernel="lanczos3", *, exact=False):
    """The six weights of the taps at distances f + 2 - k (k = 0..5) from a source position with
    fractional part 0 <= f < 1, as the warp uses them (tabulated) or exact."""
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    return np.array(_warp.lanczos3_weights(float(f), kernel == "lanczos3", exact))


def pixel_map(src_wcs, dst_wcs, x, y):
    """Exact source pixel coordinates (u, v) of destination pixel coordinates (x, y) (0-based)."""
    ra, dec = dst_wcs.all_pix2world(np.asarray(x, float), np.asarray(y, float), 0)
    if src_wcs.has_distortion:       # SIP inverse far off the sensor may not converge: those pixels are NO_DATA
        u, v = src_wcs.all_world2pix(ra, dec, 0, quiet=True)
    else:
        u, v = src_wcs.wcs_world2pix(ra, dec, 0)
    return np.asarray(u, dtype=np.float64), np.asarray(v, dtype=np.float64)


def _check_box(box, name="dst_bbox"):
    try:
        x0, y0, nx, ny = (int(v) for v in box)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be (x0, y0, nx, ny) integers, got {box!r}") from None
    if nx < 0 or ny < 0 or any(int(v) != v for v in box):
        raise ValueError(f"{name} must be integers with nx, ny >= 0, got {box!r}")
    return x0, y0, nx, ny


def _nodes(src_wcs, dst_wcs, box, step):
    x0, y0, nx, ny = box
    gx0, gy0 = (x0 // step - 1) * step, (y0 // step - 1) * step     # one padding node for the differences
    ncol = (x0 + nx - 1 - gx0) // step + 3
    nrow = (y0 + ny - 1 - gy0) // step + 3
    gx, gy = np.meshgrid(gx0 + step * np.arange(ncol), gy0 + step * np.arange(nrow))
    gu, gv = (np.ascontiguousarray(a.reshape(nrow, ncol)) for a in pixel_map(src_wcs, dst_wcs, gx.ravel(), gy.ravel()))
    gj = np.ones_like(gu)
    h = 2.0 * step
    ux, vx = (gu[1:-1, 2:] - gu[1:-1, :-2]) / h, (gv[1:-1, 2:] - gv[1:-1, :-2]) / h
    uy, vy = (gu[2:, 1:-1] - gu[:-2, 1:-1]) / h, (gv[2:, 1:-1] - gv[:-2, 1:-1]) / h
    gj[1:-1, 1:-1] = np.abs(ux * vy - uy * vx)
    return gu, gv, gj, gx0, gy0


def _interpolation_error(src_wcs, dst_wcs, gu, gv, gx0, gy0, step):
    """Largest |bilinear - exact| (px) at the centres of the grid's interior cells."""
    rows, cols = gu.shape[0] - 2, gu.shape[1] - 2
    if rows < 1 or cols < 1:
        return 0.0
    cx, cy = np.meshgrid(gx0 + step * (np.arange(1, cols) + 0.5), gy0 + step * (np.arange(1, rows) + 0.5))
    u, v = pixel_map(src_wcs, dst_wcs, cx.ravel(), cy.ravel())
    mid = lambda g: 0.25 * (g[1:-2, 1:-2] + g[2:-1, 1:-2] + g[1:-2, 2:-1] + g[2:-1, 2:-1]).ravel()  # noqa: E731
    with np.errstate(invalid="ignore"):
        err = np.hypot(mid(gu) - u, mid(gv) - v)
    return float(np.nanmax(err)) if err.size and np.isfinite(err).any() else 0.0


def mapping_grid(src_wcs, dst_wcs, dst_bbox, *, grid_step=DEFAULT_GRID_STEP,
                 max_grid_error=DEFAULT_MAX_GRID_ERROR):
    """The node grid covering `dst_bbox`, its step halved until the interpolation error is
    <= max_grid_error (px)."""
    box = _check_box(dst_bbox)
    step = int(grid_step)
    if step < 1 or step != grid_step:
        raise ValueError(f"grid_step must be an integer >= 1, got {grid_step!r}")
    if not max_grid_error > 0:
        raise ValueError(f"max_grid_error must be > 0 px, got {max_grid_error!r}")
    while True:
        gu, gv, gj, gx0, gy0 = _nodes(src_wcs, dst_wcs, box, step)
        err = _interpolation_error(src_wcs, dst_wcs, gu, gv, gx0, gy0, step)
        if err <= max_grid_error or step == 1:
            return MappingGrid(gu, gv, gj, gx0, gy0, step, err)
        step //= 2


def source_bbox(src_wcs, dst_wcs, dst_bbox, src_shape, *, margin=SOURCE_MARGIN):
    """Box (x0, y0, nx, ny) of the source pixels (of an image of shape src_shape = (ny, nx)) that the
    warp of `dst_bbox` reads, clipped to the image; None if it reads none. Maps the box's edges,
    sampled every 16 px (enough for any map smooth on that scale)."""
    x0, y0, nx, ny = _check_box(dst_bbox)
    if nx == 0 or ny == 0:
        return None
    xs = np.unique(np.r_[np.arange(x0, x0 + nx, 16), x0 + nx - 1])
    ys = np.unique(np.r_[np.arange(y0, y0 + ny, 16), y0 + ny - 1])
    ex = np.r_[xs, xs, np.full(ys.size, x0), np.full(ys.size, x0 + nx - 1)]
    ey = np.r_[np.full(xs.size, y0), np.full(xs.size, y0 + ny - 1), ys, ys]
    u, v = pixel_map(src_wcs, dst_wcs, ex, ey)
    if not (np.isfinite(u).all() and np.isfinite(v).all()):
        return None
    lo_x, hi_x = max(int(np.floor(u.min())) - margin, 0), min(int(np.floor(u.max())) + margin + 1, src_shape[1])
    lo_y, hi_y = max(int(np.floor(v.min())) - margin, 0), min(int(np.floor(v.max())) + margin + 1, src_shape[0])
    if lo_x >= hi_x or lo_y >= hi_y:
        return None
    return lo_x, lo_y, hi_x - lo_x, hi_y - lo_y


def _plane(name, a, shape, dtype):
    a = np.asarray(a)
    if a.shape != shape:
        raise ValueError(f"{name} has shape {a.shape}, expected {shape}")
    if dtype == np.uint16 and a.dtype.kind not in "ub":
        raise ValueError(f"{name} must be an unsigned integer mask, got {a.dtype}")
    return np.ascontiguousarray(a, dtype=dtype)


def _outputs(out, shape):
    if out is None:
        return np.empty(shape, np.float32), np.empty(shape, np.float32), np.empty(shape, np.uint16)
    for a, dt in zip(out, (np.float32, np.float32, np.uint16)):
        if not (isinstance(a, np.ndarray) and a.shape == shape and a.dtype == dt and a.flags.c_contiguous
                and a.flags.writeable):
            raise ValueError(f"out must be C-contiguous writeable arrays of shape {shape} and dtypes "
                             "float32, float32, uint16")
    return out


def warp_image(src_image, src_variance, src_mask, src_wcs, dst_wcs, dst_bbox, *, kernel="lanczos3",
               src_origin=(0, 0), grid_step=DEFAULT_GRID_STEP, max_grid_error=DEFAULT_MAX_GRID_ERROR,
               mask_weight=DEFAULT_MASK_WEIGHT, out=None, grid=None, skip=None):
    """Warp (src_image, src_variance, src_mask) onto the destination pixels `dst_bbox` of `dst_wcs`.

    src_image: flux per pixel (float64, the kernel's type; other dtypes are converted), src_variance its
    variance (None: zeros), src_mask uint16 bits (None: zeros); src_origin = (x, y) of src_image[0, 0] in the pixels of
    src_wcs, so a hyperslab of a calexp warps like the whole calexp. out: optional (image, variance, mask)
    arrays of shape (ny, nx) to fill. grid: a MappingGrid of the same two WCSs whose interior covers
    dst_bbox, e.g. the grid of a larger box warped in parts (ValueError otherwise); None: made here from
    grid_step and max_grid_error. skip: optional bool array of shape (ny, nx) whose True pixels are left
    without data and not computed (pixels another warp fills); the others are the same bits as without it.
    Returns (image, variance, mask, coverage): float32 flux per destination
    pixel, float32 variance, uint16 mask, and coverage = True where the pixel has data (mask without
    NO_DATA). See the module docstring for the kernel, the flux, variance and mask rules.
    """
    _, _, nx, ny = _check_box(dst_bbox)
    image, variance, mask = _outputs(out, (ny, nx))
    warp_into(src_image, src_variance, src_mask, src_wcs, dst_wcs, dst_bbox, (image, variance, mask),
              kernel=kernel, src_origin=src_origin, grid_step=grid_step, max_grid_error=max_grid_error,
              mask_weight=mask_weight, grid=grid, skip=skip)
    return image, variance, mask, (mask & NO_DATA) == 0


def warp_into(src_image, src_variance, src_mask, src_wcs, dst_wcs, dst_bbox, out, *, kernel="lanczos3",
              src_origin=(0, 0), grid_step=DEFAULT_GRID_STEP, max_grid_error=DEFAULT_MAX_GRID_ERROR,
              mask_weight=DEFAULT_MASK_WEIGHT, grid=None, skip=None):
    """warp_image into the given out = (image, variance, mask) arrays, allocating nothing of the output's
    size but a copy of `skip` where it is not C-contiguous; returns the MappingGrid used (None for an empty
    box)."""
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    if not 0 < mask_weight <= 1:
        raise ValueError(f"mask_weight must be in (0, 1], got {mask_weight!r}")
    src = np.asarray(src_image)
    if src.ndim != 2:
        raise ValueError(f"src_image must be 2-D, got shape {src.shape}")
    src = np.ascontiguousarray(src, dtype=np.float64)
    var = (np.zeros(src.shape, np.float64) if src_variance is None
           else _plane("src_variance", src_variance, src.shape, np.float64))
    msk = (np.zeros(src.shape, np.uint16) if src_mask is None
           else _plane("src_mask", src_mask, src.shape, np.uint16))
    sx0, sy0 = (int(v) for v in src_origin)
    x0, y0, nx, ny = box = _check_box(dst_bbox)
    image, variance, mask = _outputs(out, (ny, nx))
    if skip is not None:
        skip = np.asarray(skip)
        if skip.shape != (ny, nx) or skip.dtype != np.bool_:
            raise ValueError(f"skip must be a bool array of shape {(ny, nx)}, got {skip.dtype} {skip.shape}")
        skip = np.ascontiguousarray(skip).view(np.uint8)
    if nx == 0 or ny == 0:
        return None
    g = grid if grid is not None else mapping_grid(src_wcs, dst_wcs, box, grid_step=grid_step,
                                                    max_grid_error=max_grid_error)
    rows, cols = g.gu.shape                   # the box must lie on interior nodes, as mapping_grid's own
    if not (g.gx0 + g.step <= x0 and g.gy0 + g.step <= y0 and x0 + nx - 1 < g.gx0 + (cols - 2) * g.step
            and y0 + ny - 1 < g.gy0 + (rows - 2) * g.step):
        raise ValueError(f"the mapping grid (nodes from ({g.gx0}, {g.gy0}), step {g.step}, {cols} x {rows}) "
                         f"does not cover the box {box}")
    _warp.warp(src, var, msk, sx0, sy0, g.gu, g.gv, g.gj, g.gx0, g.gy0, g.step, x0, y0,
               image, variance, mask, NO_DATA, float(mask_weight), kernel == "lanczos3", kernel_threads(), skip)
    return g


def combine_stack(images, variances, masks, scales, weights, out, *, bad_mask_bits, protect_mask_bits, median,
                  clip_sigma, clip_iters, and_mask_bits=0):
    """Combine a stack of warps (N, ny, nx) pixel by pixel into out = (image, variance, mask, n_visits,
    depth), (ny, nx) arrays of float32, float32, uint16, int32, float32: input k times scales[k], weighing
    weights[k] in the mean (one finite number > 0 each); inputs with a bad_mask_bits bit are left out;
    sigma clipping (clip_sigma, clip_iters; none where at least half the good inputs carry a protect_mask_bits bit)
    or the median. The mask is the OR of the used inputs' bits, except and_mask_bits, set only where every used
    input carries them. Where no input is good: image NaN, mask = all inputs' bits | NO_DATA, depth 0.
    The estimators are documented with coadd.CoaddConfig and docs/level2-coadd.md."""
    N = images.shape[0]
    scales = np.ascontiguousarray(scales, dtype=np.float64)
    weights = np.ascontiguousarray(weights, dtype=np.float64)
    for name, a in (("scales", scales), ("weights", weights)):
        if a.shape != (N,) or not (np.isfinite(a).all() and (a > 0).all()):
            raise ValueError(f"{name} must be {N} finite numbers > 0, got {a!r}")
    _warp.combine(images, variances, masks, scales, weights, int(bad_mask_bits), int(protect_mask_bits),
                  int(and_mask_bits), NO_DATA, bool(median), float(clip_sigma), int(clip_iters), *out,
                  kernel_threads())
