"""The run report (`twinkles-hpc report RUNDIR`, docs/report.md): a static HTML page with the cadence,
coadd mosaics, the validation table, residuals against the truth, a light-curve monitor (one page per
supernova, lensed quasar system and bright star, with postage stamps) and the trace as a Gantt chart.

    from twinkles_hpc.report import write_report, ReportLimits
    summary = write_report("runs/demo", limits=ReportLimits(max_supernovae=10))

`html` builds the markup, `plots` the matplotlib figures, `images` the coadd mosaics and stamps, `data`
reads the run directory and the database, `objects` the light-curve pages, `trace` the utilisation,
`build` puts it together and writes it atomically.
"""
from twinkles_hpc.report.build import ReportLimits, write_report

__all__ = ["ReportLimits", "write_report"]
