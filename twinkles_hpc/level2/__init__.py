"""Level 2 processing: calibrate each visit, warp and coadd per band, detect and measure Objects,
force-photometer every visit, difference imaging. Never imports sky or imsim: it measures pixels and
reads the reference catalogue from the store (docs/data-model.md)."""
