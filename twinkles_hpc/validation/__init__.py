"""Validation of a run against its truth (`twinkles-hpc validate RUNDIR`, docs/validation.md).

The only place that compares Level 2 outputs with the simulation's truth: calibration offsets from the
eimages' true WCS and zero point, validate_drp-style repeatability (PA1, AM1), detection completeness and
purity, photometric residuals, supernova light curves against their true fluxes, the run's cost from its
trace and, optionally, the catalogue database's row counts. `metrics` holds the pure statistics (unit-tested
on synthetic inputs), `match` the positional matching, `products` reads a run directory, `calibration` and
`catalog` compute the metrics, `cost` reads the trace, `database` counts rows, and `run` applies the
`[validate]` thresholds.
"""
from twinkles_hpc.validation.run import validate_run

__all__ = ["validate_run"]
