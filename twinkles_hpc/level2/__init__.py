"""Level 2 processing: calibrate each visit, warp and coadd per band, detect and measure Objects,
force-photometer every visit, difference imaging. Never imports sky or imsim: it measures pixels and
reads the reference catalogue from the store (docs/data-model.md)."""


class CalibrationError(ValueError):
    """A visit cannot be calibrated (too few reference matches or stars for the astrometry, the PSF or the
    zero point): a property of the data, not a bug. The calexp stage records it (calib_ok = False) and the
    run goes on; any other exception still ends the job."""
