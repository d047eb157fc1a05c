"""The skymap: one tract (a TAN projection covering every visit) cut into overlapping square patches.

Like LSST's makeDiscreteSkyMap: the tract's tangent point is the mean direction of all the visits'
corners, north is +y and east is -x (as on the sky), and its pixel grid is the smallest whole number
of `patch_size` patches covering the union of the footprints, centred on it. Patch (i, j) has the inner
box (i P, j P, P, P) in tract pixels and an outer box grown by `overlap` on each side, clipped to the
tract; the coadd covers the outer box, so neighbouring patches share 2 x overlap pixels (objects on a
patch boundary are measured whole in one of them).

Conventions: pixel (0, 0) is centred at x = y = 0 (FITS pixel (1, 1)); boxes are (x0, y0, nx, ny).
"""
from dataclasses import dataclass, field

import numpy as np
from astropy.wcs import WCS


def tan_wcs(ra, dec, pixel_scale, crpix):
    """TAN WCS with tangent point (ra, dec) (deg) at 0-based pixel crpix = (x, y), pixel_scale arcsec/px,
    north up (+y) and east left (-x)."""
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [float(ra), float(dec)]
    w.wcs.crpix = [crpix[0] + 1.0, crpix[1] + 1.0]
    s = pixel_scale / 3600.0
    w.wcs.cd = np.array([[-s, 0.0], [0.0, s]])
    w.wcs.radesys = "ICRS"
    return w


def mean_direction(ra, dec):
    """(ra, dec) in deg of the normalised mean unit vector of the given directions (deg)."""
    a, d = np.deg2rad(np.ravel(ra)), np.deg2rad(np.ravel(dec))
    v = np.array([np.cos(d) * np.cos(a), np.cos(d) * np.sin(a), np.sin(d)]).sum(axis=1)
    if np.linalg.norm(v) < 1e-9 * a.size:
        raise ValueError("footprints have no mean direction (they surround the sphere)")
    v /= np.linalg.norm(v)
    return float(np.rad2deg(np.arctan2(v[1], v[0])) % 360.0), float(np.rad2deg(np.arcsin(v[2])))


@dataclass
class Patch:
    """One patch: `bbox` = outer box (x0, y0, nx, ny) in tract pixels (what the coadd covers),
    `inner_bbox` the box it owns; `wcs` maps patch pixels (0-based, (0, 0) = tract pixel (x0, y0));
    `tract_wcs` maps tract pixels."""
    tract: int
    index: tuple
    bbox: tuple
    inner_bbox: tuple
    tract_wcs: WCS = field(repr=False)

    @property
    def wcs(self):
        w = self.tract_wcs.deepcopy()
        w.wcs.crpix = [w.wcs.crpix[0] - self.bbox[0], w.wcs.crpix[1] - self.bbox[1]]
        return w

    @property
    def shape(self):
        """(ny, nx) of the patch's arrays."""
        return self.bbox[3], self.bbox[2]


class SkyMap:
    """One tract: TAN about (ra, dec) (deg), `pixel_scale` arcsec/px, n_patches = (nx, ny) patches of
    patch_size px with `overlap` px on each side; crpix = 0-based tract pixel of the tangent point."""

    def __init__(self, ra, dec, *, pixel_scale=0.2, patch_size=4000, overlap=100, n_patches=(1, 1),
                 crpix=None, tract=0):
        self.ra, self.dec, self.pixel_scale = float(ra), float(dec), float(pixel_scale)
        self.patch_size, self.overlap, self.tract = int(patch_size), int(overlap), int(tract)
        self.n_patches = (int(n_patches[0]), int(n_patches[1]))
        if not (self.pixel_scale > 0 and self.patch_size >= 1 and 0 <= self.overlap
                and min(self.n_patches) >= 1 and -90 <= self.dec <= 90):
            raise ValueError(f"SkyMap: need pixel_scale > 0, patch_size >= 1, overlap >= 0, n_patches >= 1 and "
                             f"|dec| <= 90, got {pixel_scale!r}, {patch_size!r}, {overlap!r}, {n_patches!r}, {dec!r}")
        self.nx, self.ny = self.n_patches[0] * self.patch_size, self.n_patches[1] * self.patch_size
        self.crpix = ((self.nx - 1) / 2.0, (self.ny - 1) / 2.0) if crpix is None else tuple(map(float, crpix))
        self.wcs = tan_wcs(self.ra, self.dec, self.pixel_scale, self.crpix)

    @classmethod
    def from_footprints(cls, corners_ra, corners_dec, pixel_scale=0.2, patch_size=4000, overlap=100, tract=0):
        """The tract covering all footprints, each given as the RA, Dec (deg) of its corners (a list of
        arrays, or one array of any shape). Sensor edges are great circles, straight lines in any TAN
        projection, so the corners bound the footprints."""
        ra = np.concatenate([np.ravel(r) for r in corners_ra]).astype(np.float64)
        dec = np.concatenate([np.ravel(d) for d in corners_dec]).astype(np.float64)
        if ra.size == 0 or ra.size != dec.size or not (np.isfinite(ra).all() and np.isfinite(dec).all()):
            raise ValueError("from_footprints: need matching, finite, non-empty corner RA and Dec")
        ra0, dec0 = mean_direction(ra, dec)
        x, y = tan_wcs(ra0, dec0, pixel_scale, (0.0, 0.0)).wcs_world2pix(ra, dec, 0)
        if not (np.isfinite(x).all() and np.isfinite(y).all()):
            raise ValueError("from_footprints: footprints reach 90 deg from their mean direction")
        # pixel edges of the covered pixels: corners are at pixel edges, so span = max - min pixels
        npx = max(1, int(np.ceil((x.max() - x.min()) / patch_size)))
        npy = max(1, int(np.ceil((y.max() - y.min()) / patch_size)))
        # centre the footprint's box in the tract
        cx = (npx * patch_size - 1) / 2.0 - (x.max() + x.min()) / 2.0
        cy = (npy * patch_size - 1) / 2.0 - (y.max() + y.min()) / 2.0
        return cls(ra0, dec0, pixel_scale=pixel_scale, patch_size=patch_size, overlap=overlap,
                   n_patches=(npx, npy), crpix=(cx, cy), tract=tract)

    def patch(self, i, j):
        """Patch (i, j): column i, row j of the patch grid."""
        i, j = int(i), int(j)
        if not (0 <= i < self.n_patches[0] and 0 <= j < self.n_patches[1]):
            raise ValueError(f"patch ({i}, {j}) outside the tract's {self.n_patches} patches")
        P, o = self.patch_size, self.overlap
        x0, y0 = max(i * P - o, 0), max(j * P - o, 0)
        x1, y1 = min((i + 1) * P + o, self.nx), min((j + 1) * P + o, self.ny)
        return Patch(self.tract, (i, j), (x0, y0, x1 - x0, y1 - y0), (i * P, j * P, P, P), self.wcs)

    @property
    def patches(self):
        """All patches, row by row."""
        return [self.patch(i, j) for j in range(self.n_patches[1]) for i in range(self.n_patches[0])]

    def patches_overlapping(self, corners_ra, corners_dec):
        """Patches whose outer box meets the bounding box (tract pixels) of a footprint's corners (deg)."""
        x, y = self.wcs.wcs_world2pix(np.ravel(corners_ra), np.ravel(corners_dec), 0)
        out = []
        for p in self.patches:
            x0, y0, nx, ny = p.bbox
            if x.max() >= x0 - 0.5 and x.min() <= x0 + nx - 0.5 and y.max() >= y0 - 0.5 and y.min() <= y0 + ny - 0.5:
                out.append(p)
        return out

    def to_dict(self):
        """JSON-able description; SkyMap.from_dict(d) rebuilds the same skymap."""
        return {"tract": self.tract, "ra": self.ra, "dec": self.dec, "pixel_scale": self.pixel_scale,
                "patch_size": self.patch_size, "overlap": self.overlap, "n_patches": list(self.n_patches),
                "crpix": list(self.crpix)}

    @classmethod
    def from_dict(cls, d):
        d = dict(d)
        unknown = set(d) - {"tract", "ra", "dec", "pixel_scale", "patch_size", "overlap", "n_patches", "crpix"}
        if unknown:
            raise ValueError(f"SkyMap.from_dict: unknown keys {sorted(unknown)}")
        return cls(d.pop("ra"), d.pop("dec"), **d)
