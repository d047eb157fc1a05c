"""The time-domain science package: array-in, array-out cores for what changes between visits. Today it
holds PSF-matched difference imaging (`diffim`: an Alard & Lupton kernel fitted on stars of two images on
one pixel grid, the convolution of the sharper image, and the decorrelation of the difference's noise;
`fitsdiff`, the `twinkles-hpc diffim` command that applies it to two FITS images with celestial WCSs);
DIA source detection and association into DiaObjects, and the lensed-quasar scene models and time delays,
come next. Like level2 it measures pixels and never imports sky or imsim (the truth), nor the pipeline,
the scheduler or the testing seams; the pipeline's stages call it."""
