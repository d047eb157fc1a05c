"""Ephemerides at the LSST site: night numbers, Sun and Moon positions, altitudes.

Low-precision formulae, enough for twilight limits and moonlight (docs/cadence.md compares them
with Run 1). Angles in degrees, times in MJD (days), unless a docstring says otherwise.
"""
import numpy as np

# Cerro Pachon as OpSim v3 placed it: the Run 1 file's `lst` column equals GMST + this longitude
# to 1e-4 deg.
SITE_LAT, SITE_LON = -30.2444, -70.7494
#: Night n runs from noon UTC (08-09 h in Chile, always daytime) of MJD NIGHT_ZERO_MJD + n:
#: this reproduces every `night` of the Run 1 file (kraken_1042 started on MJD 59580).
NIGHT_ZERO_MJD = 59579.5


def night_of(mjd):
    """OpSim night number of an MJD (nights roll over at noon UTC; night 0 began MJD 59579.5)."""
    return np.floor(np.asarray(mjd) - NIGHT_ZERO_MJD).astype(np.int64)


def angular_separation(ra1, dec1, ra2, dec2):
    """Great-circle distance between points given in degrees, degrees (haversine: exact when small)."""
    ra1, dec1, ra2, dec2 = (np.radians(np.asarray(x, dtype=np.float64)) for x in (ra1, dec1, ra2, dec2))
    h = np.sin((dec2 - dec1) / 2) ** 2 + np.cos(dec1) * np.cos(dec2) * np.sin((ra2 - ra1) / 2) ** 2
    return np.degrees(2 * np.arcsin(np.sqrt(np.clip(h, 0, 1))))


def altitude(mjd, ra, dec):
    """Altitude (degrees) at the site of a position (degrees) at time `mjd`; also the hour angle."""
    gmst = 280.46061837 + 360.98564736629 * (np.asarray(mjd) - 51544.5)
    ha = np.radians(gmst + SITE_LON - ra)
    lat, d = np.radians(SITE_LAT), np.radians(dec)
    alt = np.arcsin(np.sin(lat) * np.sin(d) + np.cos(lat) * np.cos(d) * np.cos(ha))
    return np.degrees(alt), ha


def _sun_radec(mjd):
    """Sun RA, Dec (degrees), Astronomical Almanac low-precision formulae (0.01 deg)."""
    n = np.asarray(mjd) - 51544.5
    g = np.radians(357.528 + 0.9856003 * n)
    lam = np.radians(280.460 + 0.9856474 * n + 1.915 * np.sin(g) + 0.020 * np.sin(2 * g))
    eps = np.radians(23.439 - 4e-7 * n)
    return (np.degrees(np.arctan2(np.cos(eps) * np.sin(lam), np.cos(lam))) % 360,
            np.degrees(np.arcsin(np.sin(eps) * np.sin(lam))))


def _moon_radec(mjd):
    """Geocentric Moon RA, Dec (degrees), Astronomical Almanac low-precision series (0.3 deg)."""
    T = (np.asarray(mjd) - 51544.5) / 36525.0
    s = lambda a, b: np.sin(np.radians(a + b * T))  # noqa: E731
    lam = np.radians(218.32 + 481267.881 * T + 6.29 * s(135.0, 477198.87) - 1.27 * s(259.3, -413335.36)
                     + 0.66 * s(235.7, 890534.22) + 0.21 * s(269.9, 954397.74)
                     - 0.19 * s(357.5, 35999.05) - 0.11 * s(186.5, 966404.03))
    bet = np.radians(5.13 * s(93.3, 483202.02) + 0.28 * s(228.2, 960400.89)
                     - 0.28 * s(318.3, 6003.15) - 0.17 * s(217.6, -407332.21))
    eps = np.radians(23.439 - 0.013 * T)
    x = np.cos(bet) * np.cos(lam)
    y = np.cos(eps) * np.cos(bet) * np.sin(lam) - np.sin(eps) * np.sin(bet)
    z = np.sin(eps) * np.cos(bet) * np.sin(lam) + np.cos(eps) * np.sin(bet)
    return np.degrees(np.arctan2(y, x)) % 360, np.degrees(np.arcsin(z))


def sun_altitude(mjd):
    """Sun altitude (degrees) at the site: below -12 is astronomical darkness (twilight limits)."""
    return altitude(mjd, *_sun_radec(mjd))[0]


def moon_ephemeris(mjd):
    """Topocentric Moon altitude (deg), phase (percent illuminated) and geocentric RA, Dec (deg)."""
    mra, mdec = _moon_radec(mjd)
    sra, sdec = _sun_radec(mjd)
    alt, _ = altitude(mjd, mra, mdec)
    alt = alt - 0.95 * np.cos(np.radians(alt))       # lunar parallax (57 arcmin horizontal)
    phase = 50.0 * (1.0 - np.cos(np.radians(angular_separation(sra, sdec, mra, mdec))))
    return alt, phase, mra, mdec


def moon_alt_phase(mjd):
    """Topocentric Moon altitude (degrees) and phase (percent illuminated) at the site.

    Matches the Run 1 OpSim moonAlt to 0.4 deg and moonPhase to 0.9 percent.
    """
    return moon_ephemeris(mjd)[:2]


def parallactic_angle(ha, dec):
    """Parallactic angle (degrees) for hour angle `ha` (radians) and declination `dec` (degrees)."""
    lat, d = np.radians(SITE_LAT), np.radians(dec)
    return np.degrees(np.arctan2(np.sin(ha), np.tan(lat) * np.cos(d) - np.sin(d) * np.cos(ha)))
