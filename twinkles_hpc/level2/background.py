"""Sky background of a calexp: sigma-clipped mesh statistics, a median-filtered mesh, and a bicubic
interpolating spline through the mesh centres to full resolution (docs/level2-detect.md).

Images are in electrons per pixel; pixel (i, j) is column i, row j, centred at x = i, y = j.

Each mesh (a box of about mesh_size x mesh_size pixels; the meshes tile the image in
round(n / mesh_size) near-equal boxes per axis) gets a level and an rms from its unmasked pixels,
computed by the compiled kernel twinkles_hpc._background on a histogram:

1. robust start: median m0 and s0 = 1.4826 MAD of <= 1024 evenly strided pixels of the mesh;
2. a histogram of the pixels within m0 +- 8 s0, bins of s0/16 (pixels beyond are dropped as sources).
   If those sample pixels are all integers (raw electrons), the bins are whole numbers of electrons wide
   with edges at half-integers, so the median interpolated inside its bin is free of quantisation;
3. up to clip_iters times: mean, standard deviation and median (interpolated in its bin) of the kept
   bins, then keep the bins whose centres lie within median +- clip_sigma sd; stop when nothing changes;
4. level: "sextractor" = 2.5 median - 1.5 mean when |mean - median| < 0.3 sd (the Pearson mode of a
   mildly skewed distribution: sources skew the sky to the bright side), else the median (crowded mesh);
   or "median", or "mean" (clipped). rms: the clipped sd divided by the sd a Gaussian keeps after
   clipping at clip_sigma (0.9866 at 3 sigma), so that it estimates the noise sigma without bias.

Meshes with fewer than min_valid_fraction of their pixels unmasked (or too few in the clipped range)
take the value of the nearest valid mesh. The mesh is then median-filtered (filter_size x filter_size
meshes; beyond the edges the mesh is continued by point reflection, so a linear gradient is kept) and
interpolated by a natural cubic spline in x, then y, through the mesh centres (SExtractor's choice:
exact for a linear gradient, extrapolated almost linearly over the half mesh beyond the outer centres;
a not-a-knot spline would be exact for cubics but amplifies the mesh noise 4x in those half meshes).
"""
import math
from dataclasses import dataclass

import numpy as np

from twinkles_hpc import _background, options
from twinkles_hpc.options import opt

ESTIMATORS = {"sextractor": 0, "median": 1, "mean": 2}


@dataclass
class BackgroundConfig:
    """Background estimation settings."""
    mesh_size: int = opt(128, "pixel", "Target mesh size.", lo=8)
    filter_size: int = opt(3, "mesh", "Median filter of the mesh (1: none).", lo=1)
    clip_sigma: float = opt(3.0, "sigma", "Sigma-clipping half-width, in clipped sd.", lo=1.0)
    clip_iters: int = opt(5, "", "Maximum clipping iterations.", lo=0, hi=100)
    mode_estimator: str = opt("sextractor", "", "Level of a mesh: 'sextractor', 'median' or 'mean'.",
                              choices=tuple(ESTIMATORS))
    min_valid_fraction: float = opt(0.5, "", "A mesh needs this fraction of unmasked pixels.",
                                    lo=0.0, lo_open=True, hi=1.0)

    def __post_init__(self):
        options.check_section(self)


def clip_correction(k):
    """sd of a unit Gaussian truncated at +-k (what sigma clipping at k sigma leaves)."""
    from scipy.special import ndtr

    phi = math.exp(-0.5 * k * k) / math.sqrt(2 * math.pi)
    return math.sqrt(1.0 - 2.0 * k * phi / (2.0 * ndtr(k) - 1.0))


def mesh_edges(n, mesh_size):
    """Edges (pixels) of the round(n / mesh_size) (at least 1) near-equal meshes along an axis of n pixels."""
    m = max(1, int(round(n / mesh_size)))
    return (np.arange(m + 1) * n) // m


def _mesh_centres(n, m):
    e = (np.arange(m + 1) * n) // m            # the layout of mesh_edges
    return 0.5 * (e[:-1] + e[1:] - 1)


def _spline_basis(n, m):
    """The natural cubic spline through values v at the m mesh centres of an axis of n pixels, as a
    piecewise cubic (scipy PPoly layout): (c, knots), c of shape (4, max(m - 1, 1), m) such that the
    polynomial coefficients of interval s are c[:, s, :] @ v."""
    if m == 1:
        c = np.zeros((4, 1, 1))
        c[3] = 1.0
        return c, np.array([0.0])
    from scipy.interpolate import CubicSpline

    x = _mesh_centres(n, m)
    sp = CubicSpline(x, np.eye(m), axis=0, bc_type="natural")
    return sp.c, sp.x[:-1]


class Background:
    """A background model: `mesh` (my, mx) levels and `mesh_rms` (my, mx) noise sigmas (electrons per pixel)
    at the mesh centres of an image of `shape` (ny, nx), after filtering."""

    def __init__(self, mesh, mesh_rms, shape):
        self.mesh = np.asarray(mesh, dtype=np.float64)
        self.mesh_rms = np.asarray(mesh_rms, dtype=np.float64)
        self.shape = tuple(int(s) for s in shape)
        if self.mesh.ndim != 2 or self.mesh.shape != self.mesh_rms.shape or len(self.shape) != 2:
            raise ValueError(f"mesh {self.mesh.shape} and mesh_rms {self.mesh_rms.shape} must be 2-D and alike, "
                             f"shape must be (ny, nx), got {shape!r}")
        if any(m > n for m, n in zip(self.mesh.shape, self.shape)):
            raise ValueError(f"mesh {self.mesh.shape} has more meshes than pixels {self.shape}")

    @classmethod
    def from_mesh(cls, mesh, shape, mesh_rms=None):
        """Rebuild from a stored mesh (e.g. the calexp's `background` dataset) and the image shape."""
        mesh = np.asarray(mesh, dtype=np.float64)
        return cls(mesh, np.zeros_like(mesh) if mesh_rms is None else mesh_rms, shape)

    @property
    def global_level(self):
        """Median of the mesh levels, electrons per pixel."""
        return float(np.median(self.mesh))

    @property
    def global_rms(self):
        """Median of the mesh rms, electrons per pixel."""
        return float(np.median(self.mesh_rms))

    def _interp(self, values, shape):
        """Spline along y at every row (small, numpy), then each row's spline along x (the kernel)."""
        if shape is not None and tuple(shape) != self.shape:
            raise ValueError(f"this background was estimated on a {self.shape} image, not {tuple(shape)}")
        ny, nx = self.shape
        cy, ky = _spline_basis(ny, values.shape[0])
        cx, kx = _spline_basis(nx, values.shape[1])
        seg = np.clip(np.searchsorted(ky, np.arange(ny), side="right") - 1, 0, len(ky) - 1)
        t = np.arange(ny) - ky[seg]
        cyr = cy[:, seg, :]                                            # (4, ny, my)
        # einsum, not @: a multithreaded BLAS call leaves OpenBLAS threads spinning on the cores we use next
        rows = np.einsum("jm,mk->jk", ((cyr[0] * t[:, None] + cyr[1]) * t[:, None] + cyr[2]) * t[:, None] + cyr[3],
                         values)
        coef = np.ascontiguousarray(np.einsum("ksm,jm->jsk", cx, rows))  # (ny, nseg, 4)
        cols = np.r_[0, np.ceil(kx[1:]).astype(np.intp), nx].astype(np.intp)
        out = np.empty(self.shape, dtype=np.float32)
        _background.spline_rows(coef, np.ascontiguousarray(kx), cols, out)
        return out

    def image(self, shape=None):
        """Full-resolution background (float32, electrons per pixel), shape `self.shape`."""
        return self._interp(self.mesh, shape)

    def rms_image(self, shape=None):
        """Full-resolution noise sigma (float32, electrons per pixel)."""
        return self._interp(self.mesh_rms, shape)


def as_float32_image(name, image):
    """`image` as a C-contiguous float32 2-D array (copied only if needed)."""
    if not isinstance(image, np.ndarray) or image.ndim != 2 or image.dtype.kind not in "fiu" or image.size == 0:
        got = f"{image.dtype} array of shape {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"{name} must be a non-empty 2-D numeric numpy array, got {got}")
    return np.ascontiguousarray(image, dtype=np.float32)


def as_mask(mask, shape):
    """uint8 C-contiguous mask (nonzero = ignore) of `shape`, or an empty (0, 0) array for None."""
    if mask is None:
        return np.zeros((0, 0), dtype=np.uint8)
    mask = np.asarray(mask)
    if mask.shape != tuple(shape):
        raise ValueError(f"mask has shape {mask.shape}, the image {tuple(shape)}")
    if mask.dtype == np.bool_:
        return np.ascontiguousarray(mask).view(np.uint8)
    return np.ascontiguousarray(mask != 0).view(np.uint8)


def raise_bad_pixel(name, index, shape, what="finite"):
    j, i = divmod(int(index), shape[1])
    raise ValueError(f"{name}[{j}, {i}] is not {what}; mask non-finite pixels (mask=...) to ignore them")


def estimate_background(image, mask=None, config=None):
    """Estimate the background of `image` (2-D, electrons per pixel), ignoring pixels where `mask` is
    nonzero (bool or integer array; e.g. the DETECTED | SAT | NO_DATA bits of a calexp mask).

    Unmasked non-finite pixels raise ValueError. Returns a Background.
    """
    config = BackgroundConfig() if config is None else config
    options.check_section(config)          # fields may have changed since it was made
    img = as_float32_image("image", image)
    m = as_mask(mask, img.shape)
    ny, nx = img.shape
    ye, xe = mesh_edges(ny, config.mesh_size), mesh_edges(nx, config.mesh_size)
    level = np.empty((len(ye) - 1, len(xe) - 1))
    rms = np.empty_like(level)
    bad = _background.mesh_stats(img, m, xe.astype(np.intp), ye.astype(np.intp), float(config.clip_sigma),
                                 int(config.clip_iters), ESTIMATORS[config.mode_estimator],
                                 1.0 / clip_correction(config.clip_sigma), float(config.min_valid_fraction), level,
                                 rms)
    if bad >= 0:
        raise_bad_pixel("image", bad, img.shape)
    invalid = ~np.isfinite(level)
    if invalid.all():
        raise ValueError("no mesh has enough unmasked pixels to estimate the background "
                         f"(min_valid_fraction={config.min_valid_fraction})")
    if invalid.any():                         # nearest valid mesh
        from scipy import ndimage
        idx = ndimage.distance_transform_edt(invalid, return_distances=False, return_indices=True)
        level, rms = level[tuple(idx)], rms[tuple(idx)]
    return Background(median_filter(level, config.filter_size), median_filter(rms, config.filter_size), img.shape)


def median_filter(mesh, size):
    """size x size median filter of a mesh, padded beyond its edges by point reflection (2 edge - mirror),
    so that a linear gradient passes unchanged up to the edges."""
    from scipy import ndimage

    if size <= 1:
        return mesh
    h = size // 2
    padded = mesh
    for axis in (0, 1):
        w = [(0, 0), (0, 0)]
        w[axis] = (h, h)
        padded = np.pad(padded, w, mode="reflect", reflect_type="odd") if mesh.shape[axis] > 1 \
            else np.pad(padded, w, mode="edge")
    return ndimage.median_filter(padded, size=size, mode="nearest")[h:h + mesh.shape[0], h:h + mesh.shape[1]]


def add_detection_band(sums, image, variance, mask, no_data_bit, half):
    """One band's share of a detection image (level2/objects.py), in place in sums = [D, V (float64), n
    (int32), mask OR (uint16)] of the planes' shape: with good = finite image and variance, variance > 0
    and no `no_data_bit`, and s2 the (2 half + 1)^2 box minimum of the variance over the good pixels (the
    edges repeated outward; van Herk and Gil & Werman's algorithm, three comparisons a pixel whatever the box),
    where good and s2 finite and > 0: D += image / sqrt(s2), V += variance / s2 (float32 quotients added
    to the float64 sums), n += 1; the mask ORs in everywhere (ext/_background.pyx)."""
    img, var = as_float32_image("image", image), as_float32_image("variance", variance)
    msk = np.ascontiguousarray(mask, np.uint16)
    D, V, n, mask_or = sums
    for name, a, dt in (("D", D, np.float64), ("V", V, np.float64), ("n", n, np.int32), ("mask", mask_or, np.uint16)):
        if a.shape != img.shape or a.dtype != dt or not a.flags.c_contiguous:
            raise ValueError(f"sums {name} must be C-contiguous {np.dtype(dt).name} of shape {img.shape}")
    if var.shape != img.shape or msk.shape != img.shape:
        raise ValueError(f"image {img.shape}, variance {var.shape} and mask {msk.shape} must have one shape")
    _background.add_detection_band(img, var, msk, int(no_data_bit), int(half), D, V, n, mask_or)
