"""Image simulation: PSF, rendering, sky background, noise, WCS and eimage writing."""
