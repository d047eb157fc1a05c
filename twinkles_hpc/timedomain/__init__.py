"""The time-domain science package: array-in, array-out cores for what changes between visits.
PSF-matched difference imaging (`diffim`: an Alard & Lupton kernel fitted on stars of two images on one
pixel grid, the convolution of the sharper image, and the decorrelation of the difference's noise;
`fitsdiff`, the `twinkles-hpc diffim` command that applies it to two FITS images with celestial WCSs);
DIA source detection and measurement (`dia`), templates (`template`), association into DiaObjects
(`association`); lensed-quasar time delays from light curves (`timedelay`, with simulated doubles in
`lcsim`). The lensed-quasar scene models come next. Like level2 it measures pixels and light curves and
never imports sky or imsim (the truth), nor the pipeline, the scheduler or the testing seams; the
pipeline's stages and the command line call it."""
