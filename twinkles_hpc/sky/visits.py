"""The visit table: one row per exposure, as read from OpSim or made by the synthetic cadence.

Units: MJD in days (start of exposure, as OpSim stores it), angles in degrees, seeing (FWHM) in
arcsec, depths in AB mag, sky brightness in mag/arcsec^2, moon phase in percent illuminated,
exposure time in seconds. See docs/cadence.md.
"""
import numpy as np

VISIT_DTYPE = np.dtype([
    ("visit_id", "i8"), ("mjd", "f8"), ("band", "U1"), ("night", "i4"), ("exptime", "f8"),
    ("fwhm_eff", "f8"), ("fwhm_geom", "f8"), ("five_sigma_depth", "f8"), ("sky_brightness", "f8"),
    ("rot_sky_pos", "f8"),                                  # degrees
    ("airmass", "f8"), ("ra", "f8"), ("dec", "f8"),         # boresight, degrees
    ("moon_alt", "f8"), ("moon_phase", "f8")])              # degrees, percent

DEFAULT_EXPTIME = 30.0                                       # s, every LSST visit of the era
