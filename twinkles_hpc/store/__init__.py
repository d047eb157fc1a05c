"""Storage: atomic HDF5 outputs, the run-directory layout, FITS export."""
