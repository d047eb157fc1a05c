"""A template on a science image's pixels, and the kernel candidates of a calexp (docs/diffim.md).

`resample_template` warps the template coadd patches (nJy, the skymap's pixels) that overlap a calexp onto
the calexp's pixels with the Lanczos-3 warp of level2/warp.py, reading only each patch's hyperslab that the
calexp's box needs and warping only onto the calexp pixels that hyperslab can reach (on the node grid of
the whole calexp, so the pixels are those of a warp of the whole box), and converts them to the calexp's
electrons. Where patches overlap, the first in the given order fills a pixel (the later ones skip it).
`kernel_candidates` picks the PSF-matching stars from the calexp's own source table: unflagged, bright,
isolated; never the truth.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS
from scipy.spatial import cKDTree

from twinkles_hpc.level2.coadd import warp_source
from twinkles_hpc.level2.coaddpsf import CoaddPSF
from twinkles_hpc.level2.masks import NO_DATA
from twinkles_hpc.level2.photometry import psf_fwhm
from twinkles_hpc.level2.warp import mapping_grid, source_bbox, warp_image
from twinkles_hpc.store.atomic import open_read


@dataclass
class ResampledTemplate:
    """Template planes on the science pixels (electrons, electrons^2, mask bits; NaN and NO_DATA where no
    patch covers), the effective FWHM (px) of its PSF at the science image's centre (NaN if no patch has a
    PSF there), and the patches (paths) that contributed pixels."""
    image: np.ndarray
    variance: np.ndarray
    mask: np.ndarray
    fwhm_px: float
    patches: list


def wcs_of(attrs):
    """astropy WCS from a product's `wcs` attribute (a FITS header string)."""
    hdr = attrs["wcs"]
    return WCS(fits.Header.fromstring(hdr.decode() if isinstance(hdr, bytes) else str(hdr)))


def resample_template(paths, dst_wcs, shape, njy_per_electron):
    """Warp the template patches at `paths` (coadd files, in order of preference) onto the pixels of
    `dst_wcs` (an image of shape (ny, nx)) in units of electrons (nJy / njy_per_electron)."""
    ny, nx = shape
    image = np.full(shape, np.nan, np.float32)
    variance = np.full(shape, np.nan, np.float32)
    mask = np.full(shape, NO_DATA, np.uint16)
    filled = np.zeros(shape, bool)
    used, fwhm = [], np.nan
    cx, cy = (nx - 1) / 2.0, (ny - 1) / 2.0
    for path in paths:
        with open_read(path) as f:
            src_wcs = wcs_of(f.attrs)
            pshape = f["image"].shape
            box = source_bbox(src_wcs, dst_wcs, (0, 0, nx, ny), pshape)
            if box is None:
                continue
            reach = source_bbox(dst_wcs, src_wcs, box, shape)       # the calexp pixels the hyperslab reaches
            if reach is None:
                continue
            x0, y0 = box[:2]
            planes = warp_source(f, box)
            psf = CoaddPSF.from_file(f)
        grid = mapping_grid(src_wcs, dst_wcs, (0, 0, nx, ny))    # the whole calexp's, so the same bits
        rx, ry, rnx, rny = reach
        view = np.s_[ry:ry + rny, rx:rx + rnx]
        # the pixels an earlier patch filled are skipped: cov holds this patch's new pixels only
        img, var, msk, cov = warp_image(*planes, src_wcs, dst_wcs, reach, src_origin=(x0, y0), grid=grid,
                                        skip=filled[view])
        if not cov.any():
            continue
        for dst, src in ((image, img), (variance, var), (mask, msk)):
            np.copyto(dst[view], src, where=cov)
        filled[view] |= cov
        used.append(path)
        if not np.isfinite(fwhm) and psf is not None:
            u, v = (float(a) for a in src_wcs.all_world2pix(*dst_wcs.all_pix2world(cx, cy, 0), 0))
            if -0.5 <= u < pshape[1] - 0.5 and -0.5 <= v < pshape[0] - 0.5 and psf.covered(u, v)[0]:
                fwhm = float(psf_fwhm(psf, u, v)[0])
    image /= np.float32(njy_per_electron)
    variance /= np.float32(njy_per_electron) ** 2
    return ResampledTemplate(image, variance, mask, fwhm, used)


def kernel_candidates(sources, *, min_snr, isolation_px, max_n):
    """Indices of a calexp source table's (SOURCE_DTYPE) kernel candidates, brightest first: no flag, PSF
    S/N >= min_snr, no other source within isolation_px pixels; at most max_n (0: all)."""
    x, y = sources["x"], sources["y"]
    ok = (sources["flags"] == 0) & np.isfinite(sources["snr"]) & (sources["snr"] >= min_snr)
    ok &= np.isfinite(x) & np.isfinite(y)
    if len(sources) > 1 and ok.any():
        fin = np.isfinite(x) & np.isfinite(y)
        d, _ = cKDTree(np.c_[x[fin], y[fin]]).query(np.c_[x[ok], y[ok]], k=2)
        ok[np.flatnonzero(ok)] = d[:, 1] > isolation_px
    idx = np.flatnonzero(ok)
    idx = idx[np.lexsort((sources["id"][idx], -sources["snr"][idx]))]
    return idx[:max_n] if max_n else idx
