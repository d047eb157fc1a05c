"""Level 2 processing: calibrate each visit, warp and coadd per band, detect and measure Objects,
force-photometer every visit, difference imaging. Never imports sky or imsim: it measures pixels and
reads the reference catalogue from the store (docs/data-model.md).

Every rank imports the stage configs of this package (the stage registry), but only a rank that runs a
Level 2 task needs scipy.interpolate, scipy.ndimage, scipy.spatial, astropy.io.fits or astropy.wcs: the
modules import them inside the functions that use them (tests/test_startup.py checks it)."""


class CalibrationError(ValueError):
    """A visit cannot be calibrated (too few reference matches or stars for the astrometry, the PSF or the
    zero point): a property of the data, not a bug. The calexp stage records it (calib_ok = False) and the
    run goes on; any other exception still ends the job."""
