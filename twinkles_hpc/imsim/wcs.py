"""The sensor's WCS for a visit: gnomonic (TAN) projection about the boresight, rotated by rotSkyPos.

Convention (documented in docs/imsim.md): the sensor is R22_S11 at the centre of the focal plane, so
the boresight falls on the sensor centre. rotSkyPos is the position angle of the sensor's +y axis,
measured from north through east. With rotSkyPos = 0, +y points north and +x points west (east to
the left, as on the sky). Pixel (0, 0) is the centre of the first pixel (FITS pixel (1, 1)).

`SensorWCS.header_string()` writes the FITS WCS cards without astropy, character for character as astropy's
`WCS.to_header_string()` (WCSLIB) writes this WCS; `astropy()` imports astropy.wcs only when called.
"""
import numpy as np


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


def _wcs_number(value):
    """A number as WCSLIB writes it for astropy: "% 20.14G", and an integer given a decimal point by
    moving it left over its leading blanks (180 -> 180.0)."""
    text = "% 20.14G" % value
    if any(c in text for c in ".E"):
        return text
    blanks = min(len(text) - len(text.lstrip(" ")), 2)
    return text[blanks:] + ".0"[:blanks]


def _wcs_card(keyword, value, comment):
    """A WCSLIB header card: keyword, '= ', the value left-justified in 20 columns, ' / ', the comment."""
    width = 47 - max(len(value) - 20, 0)
    return f"{keyword:<8.8}= {value:<20} / {comment:<{width}.{width}}"


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
        from astropy.wcs import WCS

        w = WCS(naxis=2)
        w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
        w.wcs.crval = [self.ra, self.dec]
        w.wcs.crpix = [self.cx + 1.0, self.cy + 1.0]
        t = np.deg2rad(self.rot)
        s = self.scale / 3600.0
        w.wcs.cd = s * np.array([[-np.cos(t), np.sin(t)], [np.sin(t), np.cos(t)]])
        w.wcs.radesys = "ICRS"
        return w

    def header_string(self):
        """The FITS header string of this WCS (80-character cards, END, blank cards to 2880 characters):
        the same text as `self.astropy().to_header_string()`. WCSLIB's rules, as astropy calls it: CD
        written as PC with CDELT = 1, a PC element equal to the identity's left out, numbers in
        "% 20.14G" with a decimal point added to an integer, LONPOLE 180 (0 for a pole at the reference
        point) and LATPOLE the reference declination (a zenithal projection)."""
        t = np.deg2rad(self.rot)
        s = self.scale / 3600.0
        pc = s * np.array([[-np.cos(t), np.sin(t)], [np.sin(t), np.cos(t)]])
        cards = [_wcs_card("WCSAXES", "%20d" % 2, "Number of coordinate axes"),
                 _wcs_card("CRPIX1", _wcs_number(self.cx + 1.0), "Pixel coordinate of reference point"),
                 _wcs_card("CRPIX2", _wcs_number(self.cy + 1.0), "Pixel coordinate of reference point")]
        for i in range(2):
            for j in range(2):
                if pc[i, j] != (1.0 if i == j else 0.0):
                    cards.append(_wcs_card(f"PC{i + 1}_{j + 1}", _wcs_number(pc[i, j]),
                                           "Coordinate transformation matrix element"))
        cards += [_wcs_card(f"CDELT{i}", _wcs_number(1.0), "[deg] Coordinate increment at reference point")
                  for i in (1, 2)]
        cards += [_wcs_card(f"CUNIT{i}", "'deg'", "Units of coordinate increment and value") for i in (1, 2)]
        cards += [_wcs_card("CTYPE1", "'RA---TAN'", "Right ascension, gnomonic projection"),
                  _wcs_card("CTYPE2", "'DEC--TAN'", "Declination, gnomonic projection"),
                  _wcs_card("CRVAL1", _wcs_number(self.ra), "[deg] Coordinate value at reference point"),
                  _wcs_card("CRVAL2", _wcs_number(self.dec), "[deg] Coordinate value at reference point"),
                  _wcs_card("LONPOLE", _wcs_number(0.0 if self.dec >= 90.0 else 180.0),
                            "[deg] Native longitude of celestial pole"),
                  _wcs_card("LATPOLE", _wcs_number(self.dec), "[deg] Native latitude of celestial pole"),
                  _wcs_card("MJDREF", _wcs_number(0.0), "[d] MJD of fiducial time"),
                  _wcs_card("RADESYS", "'ICRS'", "Equatorial coordinate system"),
                  f"{'END':80}"]
        return "".join(cards) + " " * 80 * (-len(cards) % 36)

    def corners(self):
        """RA, Dec (deg) of the four sensor corners, for footprints."""
        x = np.array([-0.5, self.nx - 0.5, self.nx - 0.5, -0.5])
        y = np.array([-0.5, -0.5, self.ny - 0.5, self.ny - 0.5])
        ra, dec = self.astropy().wcs_pix2world(x, y, 0)
        return ra, dec
