"""The LSST camera and bands: per-band constants shared by the sky model and the image simulation.

Numbers from SMTN-002 / syseng_throughputs 1.9 (see ../shared/SCIENCE.md section 2 and docs/science.md).
"""
import numpy as np

BANDS = "ugrizy"
#: AB magnitude of 1 nJy: the zero point of every flux in nanojansky (catalogues, database, truth).
NJY_ZEROPOINT = 31.4
#: PhoSim / OpSim filter index (0..5) of each band.
BAND_INDEX = {b: i for i, b in enumerate(BANDS)}

#: Zenith dark-sky brightness, mag/arcsec^2.
DARK_SKY_MAG = {"u": 23.05, "g": 22.25, "r": 21.20, "i": 20.46, "z": 19.61, "y": 18.60}
#: Median delivered FWHMeff, arcsec.
FWHM_EFF = {"u": 0.92, "g": 0.87, "r": 0.83, "i": 0.80, "z": 0.78, "y": 0.76}
#: 5-sigma point-source depth of one 30 s visit, AB mag.
M5 = {"u": 23.70, "g": 24.97, "r": 24.52, "i": 24.13, "z": 23.56, "y": 22.55}
#: Instrumental zero point: the AB magnitude that gives 1 electron per second.
ZEROPOINT = {"u": 26.52, "g": 28.51, "r": 28.36, "i": 28.17, "z": 27.78, "y": 26.82}
#: Atmospheric extinction per unit airmass, mag.
K_ATM = {"u": 0.47, "g": 0.21, "r": 0.13, "i": 0.10, "z": 0.07, "y": 0.17}

PIXEL_SCALE = 0.2          # arcsec / pixel
SENSOR_NX = 4000           # pixels (serial direction)
SENSOR_NY = 4072           # pixels (parallel direction)
READ_NOISE = 8.8           # electrons rms per pixel
DARK_CURRENT = 0.2         # electrons / s / pixel
FULL_WELL = 100_000.0      # electrons; pixels at or above this are saturated
GAIN = 1.0                 # electrons / ADU

#: Twinkles pointing: OpSim fieldID 1427 (Extended Chandra Deep Field South), degrees.
FIELD_ID = 1427
FIELD_RA = 53.0091
FIELD_DEC = -27.4389


def fwhm_geom(fwhm_eff):
    """Geometric FWHM (what the PSF profile has) from the effective FWHM (what sets the SNR), arcsec."""
    return 0.822 * np.asarray(fwhm_eff) + 0.052


def counts_from_mag(mag, band, exptime):
    """Electrons collected in `exptime` seconds from a source of AB magnitude `mag` in `band`."""
    return exptime * 10.0 ** (-0.4 * (np.asarray(mag, dtype=np.float64) - ZEROPOINT[band]))


def sky_counts_per_pixel(sky_mag, band, exptime, pixel_scale=PIXEL_SCALE):
    """Electrons per pixel from a sky of surface brightness `sky_mag` (mag/arcsec^2)."""
    return counts_from_mag(sky_mag, band, exptime) * pixel_scale ** 2


def check_band(band, source="band", field="band"):
    from twinkles_hpc.errors import InputError
    if band not in BAND_INDEX:
        raise InputError(source, field, f"one of {', '.join(BANDS)}", band)
    return band


def mag_to_njy(mag):
    """AB magnitude -> flux in nJy."""
    return 10.0 ** (-0.4 * (np.asarray(mag, dtype=np.float64) - NJY_ZEROPOINT))


def njy_to_mag(flux):
    """Flux in nJy -> AB magnitude; NaN where the flux is not positive."""
    f = np.asarray(flux, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(f > 0, NJY_ZEROPOINT - 2.5 * np.log10(f), np.nan)
