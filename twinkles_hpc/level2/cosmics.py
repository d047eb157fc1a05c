"""Find, mask and repair cosmic rays in one exposure (the repair step of processEimage).

A cosmic ray deposits its charge in a few pixels without passing through the optics, so its pixels are
sharper than any image of the sky can be (the idea of van Dokkum 2001, PASP 113, 1420, tested here with
the neighbours of each pixel instead of a Laplacian). A pixel is a seed when

    v > nsigma * sigma  and  (v - cfac * sigma) * r_d * sharpness > m_d + cfac * sigma_m

for at least one direction d (along rows, columns or either diagonal), or the same test for the pair
of the pixel and one of its neighbours against the two pixels around the pair (a track whose charge is
split between two rows): v is the pixel's value above the
background, sigma its noise, m_d = (left_d + right_d) / 2 the mean of its two neighbours along d and
sigma_m the noise of that mean, and r_d the ratio of a neighbour to the peak of a point source centred on
the pixel, for the narrowest PSF the exposure may have (a pixel-integrated Gaussian of FWHM
`min_fwhm_px`; a star that is not centred or a wider PSF only raises its neighbours). `sharpness` < 1
leaves room for PSF shapes; the cfac terms keep noise peaks on faint sources and star wings from qualifying.
A seed's 8 neighbours above `grow_nsigma` x their noise join it (the diffusion halo of a track). The
flagged pixels get the CR mask bit and are replaced by linear interpolation across the shortest masked
gap through them; then the test runs again on the repaired image, up to `max_iter` passes, which finds
the pixels that a brighter pixel of the same track hid. Saturated pixels (skip_bits) are neither tested
nor used. The kernel is ext/_cosmics.pyx.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from twinkles_hpc import _cosmics, options
from twinkles_hpc.options import opt


@dataclass
class CosmicRayConfig:
    nsigma: float = opt(5.0, "sigma", "Seed threshold, in units of the pixel's noise.", lo=0.0)
    min_fwhm_px: float = opt(2.5, "pixel", "Narrowest PSF FWHM the exposure can have (0.5\" at 0.2\"/px).",
                             lo=0.0)
    sharpness: float = opt(0.6, "", "Fraction of that PSF's neighbour ratio a seed must fall below.",
                           lo=0.0, lo_open=True, hi=1.0)
    cfac: float = opt(2.0, "sigma", "Noise units taken off the seed's value (and added to its neighbours' mean).",
                      lo=0.0)
    grow_nsigma: float = opt(3.0, "sigma", "Threshold of the seed's neighbours that join it.", lo=0.0)
    grow: int = opt(2, "pixel", "Steps (8-connected, through pixels above grow_nsigma) a seed's flag grows.",
                    lo=1)
    max_iter: int = opt(3, "", "Detection passes, each on the image the previous one repaired.", lo=1)
    max_gap: int = opt(5, "pixel", "Longest half-gap the repair interpolates across.", lo=1)

    def __post_init__(self):
        options.check_section(self)


def neighbour_ratios(fwhm_px):
    """(axis, diagonal, pair axis, pair diagonal) for a pixel-integrated circular Gaussian of FWHM
    `fwhm_px`: a neighbour's value over the peak pixel's when the source is centred on the peak pixel; and
    the value of the next pixel out over a pixel of the central pair when it is centred between two
    pixels (the smallest ratios any centring gives)."""
    from scipy.special import ndtr

    s = fwhm_px / (2.0 * np.sqrt(2.0 * np.log(2.0)))
    r = float((ndtr(1.5 / s) - ndtr(0.5 / s)) / (ndtr(0.5 / s) - ndtr(-0.5 / s)))
    r2 = float((ndtr(2.0 / s) - ndtr(1.0 / s)) / (ndtr(1.0 / s) - 0.5))
    return r, r * r, r2, r2 * r2


def find_cosmic_rays(image, variance, mask, config=None, *, cr_bit, skip_bits):
    """Flag cosmic-ray pixels (mask |= cr_bit) and replace them in `image` by interpolation, in place.

    image: float32 C-contiguous (ny, nx), background subtracted (electrons); variance: float32 (ny, nx),
    the pixels' noise variance (> 0 where valid); mask: uint16 (ny, nx) bit mask, pixels with any of
    `skip_bits` (e.g. saturated) are neither flagged nor used. Returns (pixels flagged, passes made).
    """
    c = config or CosmicRayConfig()
    for name, a, dt in (("image", image, np.float32), ("variance", variance, np.float32), ("mask", mask, np.uint16)):
        if not isinstance(a, np.ndarray) or a.dtype != dt or a.ndim != 2 or not a.flags.c_contiguous:
            raise ValueError(f"{name} must be a C-contiguous 2-d {np.dtype(dt).name} array, got "
                             f"{getattr(a, 'dtype', type(a).__name__)} {getattr(a, 'shape', '')}")
    if variance.shape != image.shape or mask.shape != image.shape:
        raise ValueError(f"image, variance and mask must have one shape, got {image.shape}, {variance.shape}, "
                         f"{mask.shape}")
    if not image.flags.writeable or not mask.flags.writeable:
        raise ValueError("image and mask must be writeable (they are repaired in place)")
    if not (0 < cr_bit < 1 << 16 and 0 <= skip_bits < 1 << 16 and not cr_bit & skip_bits):
        raise ValueError(f"cr_bit ({cr_bit}) and skip_bits ({skip_bits}) must be disjoint 16-bit masks")
    if min(image.shape) < 3:
        return 0, 0
    r_axis, r_diag, r2_axis, r2_diag = (c.sharpness * r for r in neighbour_ratios(c.min_fwhm_px))
    flag = np.zeros(image.shape, np.uint8)
    n, passes = _cosmics.find_and_repair(image, variance, mask, flag, float(c.nsigma), r_axis, r_diag, r2_axis,
                                         r2_diag, float(c.cfac), float(c.grow_nsigma), int(c.grow),
                                         int(skip_bits), int(cr_bit), int(c.max_iter), int(c.max_gap))
    return int(n), int(passes)
