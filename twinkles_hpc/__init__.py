"""twinkles-hpc: a Twinkles-style LSST deep-drilling campaign as one MPI-parallel application."""

__version__ = "0.1.0"


def lightcurve(source, object_id=None, band=None, *, truth_id=None):
    """An Object's light curve (astropy Table, fluxes in nJy, with its truth) from a run directory or a
    database URL: see twinkles_hpc.store.lightcurve.lightcurve and docs/database.md."""
    from twinkles_hpc.store.lightcurve import lightcurve as _lightcurve
    return _lightcurve(source, object_id, band, truth_id=truth_id)
