"""The sensor's WCS for a visit: gnomonic (TAN) projection about the boresight, rotated by rotSkyPos.

Convention (documented in docs/imsim.md): the sensor is R22_S11 at the centre of the focal plane, so
the boresight falls on the sensor centre. rotSkyPos is the position angle of the sensor's +y axis,
measured from north through east. With rotSkyPos = 0, +y points north and +x points west (east to
the left, as on the sky). Pixel (0, 0) is the centre of the first pixel (FITS pixel (1, 1)).
"""
import numpy as np
from astropy.wcs import WCS


def sky_to_pixel_matrix(rot_sky_pos_deg, pixel_scale):
    """J (pixels per arcsec): (dx, dy) = J @ (d_east, d_north) for tangent-plane offsets in arcsec.

    The pixel-to-sky matrix M = s * [[-cos t, sin t], [sin t, cos t]] is symmetric and M/s is its own
    inverse (a reflection), so J = M / s**2.
    """
    t = np.deg2rad(rot_sky_pos_deg)
    c, s = np.cos(t), np.sin(t)
    return np.array([[-c, s], [s, c]]) / pixel_scale


def gnomonic(ra, dec, ra0, dec0):
    """Tangent-plane offsets (east, north) in arcsec of (ra, dec) about (ra0, dec0); degrees in."""
    ra, dec = np.deg2rad(np.asarray(ra, dtype=np.float64)), np.deg2rad(np.asarray(dec, dtype=np.float64))
    a0, d0 = np.deg2rad(ra0), np.deg2rad(dec0)
    cosc = np.sin(d0) * np.sin(dec) + np.cos(d0) * np.cos(dec) * np.cos(ra - a0)
    xi = np.cos(dec) * np.sin(ra - a0) / cosc
    eta = (np.cos(d0) * np.sin(dec) - np.sin(d0) * np.cos(dec) * np.cos(ra - a0)) / cosc
    k = np.rad2deg(1.0) * 3600.0
    return xi * k, eta * k


class SensorWCS:
    """Pixel <-> sky mapping of one visit; `astropy()` gives the equivalent FITS WCS."""

    def __init__(self, ra, dec, rot_sky_pos, nx, ny, pixel_scale):
        self.ra, self.dec, self.rot = float(ra), float(dec), float(rot_sky_pos)
        self.nx, self.ny, self.scale = int(nx), int(ny), float(pixel_scale)
        self.jacobian = sky_to_pixel_matrix(self.rot, self.scale)
        self.cx, self.cy = (self.nx - 1) / 2.0, (self.ny - 1) / 2.0

    def sky_to_pixel(self, ra, dec):
        e, n = gnomonic(ra, dec, self.ra, self.dec)
        J = self.jacobian
        return self.cx + J[0, 0] * e + J[0, 1] * n, self.cy + J[1, 0] * e + J[1, 1] * n

    def astropy(self):
        w = WCS(naxis=2)
        w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
        w.wcs.crval = [self.ra, self.dec]
        w.wcs.crpix = [self.cx + 1.0, self.cy + 1.0]
        t = np.deg2rad(self.rot)
        s = self.scale / 3600.0
        w.wcs.cd = s * np.array([[-np.cos(t), np.sin(t)], [np.sin(t), np.cos(t)]])
        w.wcs.radesys = "ICRS"
        return w

    def corners(self):
        """RA, Dec (deg) of the four sensor corners, for footprints."""
        x = np.array([-0.5, self.nx - 0.5, self.nx - 0.5, -0.5])
        y = np.array([-0.5, -0.5, self.ny - 0.5, self.ny - 0.5])
        ra, dec = self.astropy().wcs_pix2world(x, y, 0)
        return ra, dec
