"""twinkles-hpc: a Twinkles-style LSST deep-drilling campaign as one MPI-parallel application."""

__version__ = "0.1.0"
