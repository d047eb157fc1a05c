"""Pixels for the report: asinh-stretched coadd mosaics and calexp postage stamps, written as PNG
without a matplotlib figure (matplotlib.image.imsave: one array, one file, about a millisecond)."""
import glob
import os

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS
from matplotlib.image import imsave
from scipy.ndimage import map_coordinates

from twinkles_hpc.rundir import layout
from twinkles_hpc.store.atomic import open_read

#: Largest side of a band's coadd mosaic, pixels (block-averaged down to it).
MOSAIC_MAX_PX = 560
#: Rows read at once when block-averaging a coadd (bounds memory for any patch size).
ROW_BLOCK = 512


def asinh_stretch(img, noise=None, soften=3.0, q_hi=99.7):
    """[0, 1] image: asinh((img - sky) / (soften x noise)) between -1 noise and the q_hi percentile.
    `noise` (same units as img) defaults to the robust scatter of the finite pixels."""
    a = np.asarray(img, np.float64)
    good = a[np.isfinite(a)]
    if good.size == 0:
        return np.zeros(a.shape)
    sky = float(np.median(good))
    if noise is None or not np.isfinite(noise) or noise <= 0:
        noise = 1.4826 * float(np.median(np.abs(good - sky))) or 1.0
    s = np.arcsinh((a - sky) / (soften * noise))
    lo, hi = np.arcsinh(-1.0 / soften), max(float(np.percentile(s[np.isfinite(s)], q_hi)), 1.0)
    return np.clip(np.nan_to_num((s - lo) / (hi - lo), nan=0.0), 0.0, 1.0)


def write_gray(path, img01, north_up=True):
    """Write a [0, 1] array as an 8-bit PNG; row 0 is south, so flip to put north at the top."""
    imsave(path, img01[::-1] if north_up else img01, cmap="gray", vmin=0.0, vmax=1.0)


def block_mean(ds, factor):
    """Block average (float32) of a 2-D h5py dataset by an integer factor over its finite pixels, read
    ROW_BLOCK rows at a time; NaN where a block has none."""
    ny, nx = ds.shape
    my, mx = ny // factor, nx // factor
    out = np.full((my, mx), np.nan, np.float32)
    step = max(ROW_BLOCK // factor, 1) * factor
    for y0 in range(0, my * factor, step):
        blk = np.asarray(ds[y0:min(y0 + step, my * factor), :mx * factor], np.float32)
        good = np.isfinite(blk)
        np.copyto(blk, 0.0, where=~good)
        total = blk.reshape(-1, factor, mx, factor).sum(axis=(1, 3))
        count = good.reshape(-1, factor, mx, factor).sum(axis=(1, 3), dtype=np.int32)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[y0 // factor:y0 // factor + total.shape[0]] = np.where(count > 0, total / count, np.nan)
    return out


def coadd_patches(rundir):
    """{band: [coadd/B/patch-I-J.h5, ...]} of the run's coadds, and under 'det' the detection coadds
    (objects/detection-I-J.h5)."""
    out = {}
    for path in sorted(glob.glob(os.path.join(rundir, layout.COADD_GLOB))):
        out.setdefault(os.path.basename(os.path.dirname(path)), []).append(path)
    det = sorted(glob.glob(os.path.join(rundir, layout.DETECTION_COADD_GLOB)))
    if det:
        out["det"] = det
    return out


def mosaic_geometry(paths):
    """(x0, y0, width, height) in tract pixels of the union of the patches' inner boxes."""
    boxes = []
    for p in paths:
        with open_read(p) as fh:
            boxes.append(np.asarray(fh.attrs["inner_bbox"], int))
    b = np.array(boxes)
    x0, y0 = b[:, 0].min(), b[:, 1].min()
    return int(x0), int(y0), int((b[:, 0] + b[:, 2]).max() - x0), int((b[:, 1] + b[:, 3]).max() - y0)


def band_mosaic(paths, geom, factor):
    """Block-averaged mosaic of one band's patches (inner boxes placed in the tract) and the median noise
    per mosaic pixel (from the variance plane, scaled for the averaging)."""
    x0, y0, w, h = geom
    canvas = np.full((h // factor + 1, w // factor + 1), np.nan)
    noises = []
    for p in paths:
        with open_read(p) as fh:
            bb, ib = np.asarray(fh.attrs["bbox"], int), np.asarray(fh.attrs["inner_bbox"], int)
            sx, sy = ib[0] - bb[0], ib[1] - bb[1]
            img = block_mean(_Slice(fh["image"], sy, sx, ib[3], ib[2]), factor)
            var = np.asarray(fh["variance"][sy + ib[3] // 2, sx:sx + ib[2]], np.float64)
        good = var[np.isfinite(var) & (var > 0)]
        if good.size:
            noises.append(float(np.sqrt(np.median(good))) / factor)
        cy, cx = (ib[1] - y0) // factor, (ib[0] - x0) // factor
        canvas[cy:cy + img.shape[0], cx:cx + img.shape[1]] = img
    return canvas, (float(np.median(noises)) if noises else None)


class _Slice:
    """A window of a 2-D h5py dataset that supports the row slicing block_mean does."""

    def __init__(self, ds, y0, x0, ny, nx):
        self.ds, self.y0, self.x0 = ds, y0, x0
        self.shape = (min(ny, ds.shape[0] - y0), min(nx, ds.shape[1] - x0))

    def __getitem__(self, key):
        ys, xs = key
        return self.ds[self.y0 + ys.start:self.y0 + ys.stop, self.x0 + (xs.start or 0):self.x0 + xs.stop]


def data_box(planes):
    """The (row, column) slices of the smallest box holding every finite pixel of the planes."""
    have = np.zeros(planes[0].shape, bool)
    for p in planes:
        have |= np.isfinite(p)
    if not have.any():
        return (slice(None), slice(None))
    rows, cols = np.flatnonzero(have.any(axis=1)), np.flatnonzero(have.any(axis=0))
    return (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))


def mosaic_factor(geom, max_px=MOSAIC_MAX_PX):
    return max(1, int(np.ceil(max(geom[2], geom[3]) / max_px)))


def colour_composite(planes, noises):
    """RGB (i, r, g) asinh composite (Lupton et al. 2004 style: one stretch of the summed intensity)."""
    scaled = [np.nan_to_num(p / n, nan=0.0) for p, n in zip(planes, noises)]
    intensity = sum(scaled) / 3.0
    f = np.arcsinh(np.clip(intensity, 0, None) / 2.0) / np.where(intensity > 0, intensity, 1.0)
    rgb = np.stack([s * f for s in scaled], axis=-1)
    hi = max(float(np.percentile(rgb, 99.5)), 1e-6)
    return np.clip(rgb / hi, 0.0, 1.0)


class CalexpStamps:
    """Postage stamps cut from calexps (or another per-visit product on the calexp's pixels with `wcs`,
    `image` and `variance`: `product`, a rundir.layout function, e.g. layout.diffim) by slicing the h5py
    datasets (never a whole image); each file's WCS is parsed once."""

    def __init__(self, rundir, product=layout.calexp):
        self.rundir, self.product, self._wcs, self._foot = rundir, product, {}, None

    def covering(self, visits, ra, dec, margin=20):
        """Indices into `visits` (visits.h5 rows) of the calibrated calexps whose sensor holds (ra, dec)
        at least `margin` px inside, from each calexp's linear TAN WCS, all visits at once."""
        if self._foot is None:
            self._foot = self._footprints(visits)
        idx, crval, crpix, cdinv, size = self._foot
        if len(idx) == 0:
            return idx
        ra0, dec0 = np.deg2rad(crval[:, 0]), np.deg2rad(crval[:, 1])
        r, d = np.deg2rad(ra), np.deg2rad(dec)
        cosc = np.sin(dec0) * np.sin(d) + np.cos(dec0) * np.cos(d) * np.cos(r - ra0)
        xi = np.rad2deg(np.cos(d) * np.sin(r - ra0) / cosc)
        eta = np.rad2deg((np.cos(dec0) * np.sin(d) - np.sin(dec0) * np.cos(d) * np.cos(r - ra0)) / cosc)
        px = crpix[:, 0] - 1 + cdinv[:, 0, 0] * xi + cdinv[:, 0, 1] * eta
        py = crpix[:, 1] - 1 + cdinv[:, 1, 0] * xi + cdinv[:, 1, 1] * eta
        on = (cosc > 0) & (px >= margin) & (py >= margin) & (px < size[:, 0] - margin) & (py < size[:, 1] - margin)
        return idx[on]

    def _footprints(self, visits):
        idx, crval, crpix, cdinv, size = [], [], [], [], []
        for k, v in enumerate(visits):
            path = self.path(v["visit_id"], v["band"])
            if not os.path.exists(path):
                continue
            with open_read(path) as fh:
                if not fh.attrs.get("calib_ok", True) or "image" not in fh:
                    continue
                w = self._wcs.get(path)
                if w is None:
                    w = self._wcs[path] = WCS(fits.Header.fromstring(str(fh.attrs["wcs"])))
                ny, nx = fh["image"].shape
            idx.append(k)
            crval.append(w.wcs.crval)
            crpix.append(w.wcs.crpix)
            cdinv.append(np.linalg.inv(w.wcs.get_pc() * w.wcs.get_cdelt()[:, None]))
            size.append((nx, ny))
        return (np.array(idx, int), np.array(crval).reshape(-1, 2), np.array(crpix).reshape(-1, 2),
                np.array(cdinv).reshape(-1, 2, 2), np.array(size).reshape(-1, 2))

    def path(self, visit_id, band):
        return os.path.join(self.rundir, self.product(visit_id, band))

    def cutout(self, visit_id, band, ra, dec, half=15):
        """(image, noise) of a (2 half + 1)^2 pixel stamp centred on (ra, dec), resampled (bilinear, through
        the fitted WCS's local linear part) to north up, east left at the calexp's pixel scale, so that
        stamps of visits at different rotations line up; electrons, NaN off the sensor. None when the
        calexp is missing, uncalibrated or the position is off the sensor. Reads only the pixels around."""
        path = self.path(visit_id, band)
        if not os.path.exists(path):
            return None
        with open_read(path) as fh:
            if not fh.attrs.get("calib_ok", True) or "image" not in fh:     # no calibration, no difference
                return None
            w = self._wcs.get(path)
            if w is None:
                w = self._wcs[path] = WCS(fits.Header.fromstring(str(fh.attrs["wcs"])))
            x, y = (float(v) for v in w.all_world2pix(ra, dec, 0))
            ny, nx = fh["image"].shape
            r = int(np.ceil(half * np.sqrt(2))) + 2
            ix, iy = round(x), round(y)
            x0, x1, y0, y1 = max(ix - r, 0), min(ix + r + 1, nx), max(iy - r, 0), min(iy + r + 1, ny)
            if x1 - x0 < 2 or y1 - y0 < 2:
                return None
            box = np.asarray(fh["image"][y0:y1, x0:x1], np.float64)
            var = fh["variance"][y0:y1, x0:x1]
        cd = w.wcs.get_pc() * w.wcs.get_cdelt()[:, None]                 # deg per pixel
        scale = float(np.sqrt(abs(np.linalg.det(cd))))
        col, row = np.meshgrid(np.arange(-half, half + 1), np.arange(-half, half + 1))
        xi_eta = np.stack([-col.ravel(), row.ravel()]) * scale            # east = -column, north = +row
        d = np.linalg.solve(cd, xi_eta)
        img = map_coordinates(box, [y - y0 + d[1], x - x0 + d[0]], order=1, cval=np.nan).reshape(col.shape)
        if not np.isfinite(img).any():
            return None
        good = var[np.isfinite(var) & (var > 0)]
        return img, (float(np.sqrt(np.median(good))) if good.size else None)


def coadd_cutout(paths, ra, dec, half=20, marks=()):
    """(image, noise, mark offsets) around (ra, dec) from the first of `paths` (coadd patches of one band)
    whose inner box holds it, or None. `marks`: [(ra, dec)] -> their (dx, dy) from the centre, pixels."""
    for p in paths:
        with open_read(p) as fh:
            w = WCS(fits.Header.fromstring(str(fh.attrs["wcs"])))
            bb, ib = np.asarray(fh.attrs["bbox"], int), np.asarray(fh.attrs["inner_bbox"], int)
            x, y = (float(v) for v in w.all_world2pix(ra, dec, 0))
            ix, iy = round(x), round(y)      # patch pixels (0, 0) = bbox corner
            if not (ib[0] - bb[0] <= ix < ib[0] - bb[0] + ib[2] and ib[1] - bb[1] <= iy < ib[1] - bb[1] + ib[3]):
                continue
            ny, nx = fh["image"].shape
            x0, x1, y0, y1 = max(ix - half, 0), min(ix + half + 1, nx), max(iy - half, 0), min(iy + half + 1, ny)
            out = np.full((2 * half + 1, 2 * half + 1), np.nan)
            out[y0 - iy + half:y1 - iy + half, x0 - ix + half:x1 - ix + half] = fh["image"][y0:y1, x0:x1]
            var = fh["variance"][y0:y1, x0:x1]
            offs = [tuple(float(v) for v in w.all_world2pix(mr, md, 0)) for mr, md in marks]
        good = var[np.isfinite(var) & (var > 0)]
        return (out, (float(np.sqrt(np.median(good))) if good.size else None),
                [(mx - ix, my - iy) for mx, my in offs])
    return None
