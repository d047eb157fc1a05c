"""The report's figures (matplotlib, Agg canvas, no pyplot). Each function draws one PNG from arrays;
figures are reused by size (cleared, not rebuilt) and saved at a small dpi, since drawing and PNG
encoding are the report's main cost."""
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from twinkles_hpc.pipeline import registry
from twinkles_hpc.report.data import BAND_COLOURS, BANDS

DPI = 80
_FIGS = {}


def _figure(size):
    fig = _FIGS.get(size)
    if fig is None:
        fig = _FIGS[size] = Figure(figsize=size, dpi=DPI)
        FigureCanvasAgg(fig)
    fig.clear()
    return fig


def _axes(size, nrows=1):
    """A persistent figure of this size with `nrows` shared-x axes, their data artists removed: the axes,
    ticks and labels are kept between calls, which saves a quarter of the drawing time of a light curve.
    Returns (fig, ax) for one row, (fig, [axes]) for several."""
    key = ("axes", size, nrows)
    if key not in _FIGS:
        fig = Figure(figsize=size, dpi=DPI)
        FigureCanvasAgg(fig)
        axes = np.atleast_1d(fig.subplots(nrows, 1, sharex=True, squeeze=False)).ravel()
        _FIGS[key] = (fig, list(axes))
    fig, axes = _FIGS[key]
    for ax in axes:
        for a in list(ax.lines) + list(ax.collections) + list(ax.texts) + list(ax.patches):
            a.remove()
        ax.containers.clear()
        if ax.get_legend() is not None:
            ax.get_legend().remove()
        ax.relim()
        ax.set_autoscale_on(True)
    return fig, (axes[0] if nrows == 1 else axes)


def _save(fig, path):
    fig.savefig(path, dpi=DPI)


def _legend(ax, **kw):
    if ax.get_legend_handles_labels()[0]:
        ax.legend(**kw)


def _bands(present):
    return [b for b in BANDS if b in set(present)]


def cadence(path, visits, ccd=None):
    """Visits per band over time, seeing and five-sigma depth of each visit (OpSim), with the measured
    seeing of the calexps (CcdVisit) where the database has it."""
    fig = _figure((10, 7.5))
    ax = fig.subplots(3, 1, sharex=True, gridspec_kw={"hspace": 0.08})
    bands = _bands(visits["band"])
    for k, b in enumerate(bands):
        m = visits["band"] == b
        c = BAND_COLOURS[b]
        ax[0].plot(visits["mjd"][m], np.full(m.sum(), k), "|", color=c, ms=14, mew=1.5)
        ax[1].plot(visits["mjd"][m], visits["fwhm_eff"][m], "o", color=c, ms=4, label=f"{b} OpSim FWHMeff")
        ax[2].plot(visits["mjd"][m], visits["five_sigma_depth"][m], "o", color=c, ms=4, label=b)
        if ccd is not None and len(ccd["filterName"]):
            mc = ccd["filterName"] == b
            ax[1].plot(ccd["expMidpt"][mc], ccd["seeing"][mc], "o", mfc="none", color=c, ms=7)
            ax[2].plot(ccd["expMidpt"][mc], measured_m5(ccd)[mc], "o", mfc="none", color=c, ms=7)
    ax[0].set_yticks(range(len(bands)), [f"{b} ({int((visits['band'] == b).sum())})" for b in bands])
    ax[0].set_ylim(-0.7, len(bands) - 0.3)
    ax[0].set_ylabel("band (visits)")
    ax[1].set_ylabel("seeing FWHM (arcsec)")
    ax[2].set_ylabel("m5 (AB mag)")
    ax[2].invert_yaxis()
    ax[2].set_xlabel("MJD (d)")
    ax[0].legend(ax[2].get_legend_handles_labels()[0], bands, ncol=6, fontsize=8, loc="lower center",
                 bbox_to_anchor=(0.5, 1.0), frameon=False)
    for a in ax:
        a.grid(alpha=0.3)
    fig.subplots_adjust(left=0.1, right=0.98, top=0.95, bottom=0.07)
    _save(fig, path)


def measured_m5(ccd, pixel_scale=0.2):
    """Five-sigma point-source depth of each calexp (AB mag) from the database's CcdVisit: the zero point
    (AB mag of 1 e-), the sky noise (e-/px) and the PSF FWHM, for a Gaussian PSF's noise-equivalent area
    2.266 FWHM^2 (sky-limited)."""
    n_eff = 2.266 * (ccd["seeing"] / pixel_scale) ** 2
    with np.errstate(invalid="ignore", divide="ignore"):
        return ccd["zeroPoint"] - 2.5 * np.log10(5.0 * ccd["skyNoise"] * np.sqrt(n_eff))


def calibration(path, per_band, mjd_of_visit):
    """Zero-point offset (mmag) and astrometric offset (mas) of each calexp from the truth, vs time."""
    fig = _figure((10, 5.5))
    ax = fig.subplots(2, 1, sharex=True, gridspec_kw={"hspace": 0.08})
    for b, rows in per_band.items():
        t = np.array([mjd_of_visit.get(r["visit_id"], np.nan) for r in rows])
        zp = np.array([r["zp_offset_mmag"] for r in rows])
        am = np.array([r["astrom_offset_mas"] for r in rows])
        ax[0].plot(t, zp, "o", color=BAND_COLOURS[b], ms=4, label=b)
        ax[1].plot(t, am, "o", color=BAND_COLOURS[b], ms=4)
    ax[0].axhline(0, color="k", lw=0.8)
    ax[0].set_ylabel("zero point - truth (mmag)")
    ax[1].set_ylabel("WCS - truth (mas, mean)")
    ax[1].set_xlabel("MJD (d)")
    ax[0].legend(ncol=6, fontsize=8)
    for a in ax:
        a.grid(alpha=0.3)
    fig.subplots_adjust(left=0.1, right=0.98, top=0.98, bottom=0.09)
    _save(fig, path)


def flux_ratio(path, per_band):
    """Object PSF flux / true flux against true magnitude, one panel per band: {band: (mag, ratio)}."""
    fig = _figure((10, 5.5))
    bands = list(per_band)
    ncol = min(3, len(bands))
    nrow = int(np.ceil(len(bands) / ncol))
    axes = np.atleast_1d(fig.subplots(nrow, ncol, sharex=True, sharey=True, squeeze=False)).ravel()
    for a, b in zip(axes, bands):
        mag, ratio = per_band[b]
        a.plot(mag, ratio, ".", color=BAND_COLOURS[b], ms=4)
        a.axhline(1.0, color="k", lw=0.8)
        if len(ratio):
            a.axhline(np.median(ratio), color=BAND_COLOURS[b], lw=1, ls="--")
        a.set_title(f"{b}: {len(ratio)} stars, median {np.median(ratio):.4f}" if len(ratio) else f"{b}: none",
                    fontsize=9)
        a.grid(alpha=0.3)
    for a in axes[len(bands):]:
        a.set_visible(False)
    axes[0].set_ylim(0.8, 1.2)
    for a in axes[(nrow - 1) * ncol:]:
        a.set_xlabel("true mag (AB)")
    for a in axes[::ncol]:
        a.set_ylabel("PsFlux / true flux")
    fig.subplots_adjust(left=0.08, right=0.98, top=0.95, bottom=0.1, hspace=0.3)
    _save(fig, path)


def completeness(path, bins):
    fig = _figure((7, 3.6))
    a = fig.add_subplot()
    c = np.array([(b["r_lo"] + b["r_hi"]) / 2 for b in bins])
    for key, lab, st in (("completeness", "all", "k-"), ("completeness_stars", "stars", "o--"),
                         ("completeness_galaxies", "galaxies", "s:")):
        y = np.array([np.nan if b[key] is None else b[key] for b in bins], float)
        a.plot(c, y, st, label=lab, ms=4)
    a.set_xlabel("true r (AB mag)")
    a.set_ylabel("fraction detected")
    a.set_ylim(-0.03, 1.03)
    a.legend(fontsize=8)
    a.grid(alpha=0.3)
    fig.subplots_adjust(left=0.11, right=0.98, top=0.96, bottom=0.15)
    _save(fig, path)


KIND_COLOURS = registry.colours()


def gantt(path, records, util):
    """Tasks of each rank over time (s since the first task started), coloured by kind; the utilisation of
    each rank (busy time / span) at the right."""
    ranks = sorted(util)
    fig = _figure((10, min(1.4 + 0.4 * max(len(ranks), 2), 14.0)))          # 30+ ranks share 14 in
    a = fig.add_subplot()
    t0 = min(r["start"] for r in records)
    segs = {}
    for r in records:
        segs.setdefault(r["kind"], {}).setdefault(r["rank"], []).append((r["start"] - t0, r["end"] - r["start"]))
    palette = iter(["#17becf", "#bcbd22", "#7f7f7f", "#e377c2", "#1f77b4"])
    for k in sorted(segs):
        col = KIND_COLOURS.get(k) or next(palette, "#333333")
        for n, (rank, s) in enumerate(sorted(segs[k].items())):
            a.broken_barh(s, (rank - 0.4, 0.8), facecolors=col, edgecolor="none", label=None if n else k)
    span = max(r["end"] for r in records) - t0
    shown = ranks[::int(np.ceil(len(ranks) / 32))]          # at most 32 labelled ranks (the table has all)
    for rank in shown:
        a.text(span * 1.005, rank, f"{100 * util[rank]['utilisation']:.0f}%", va="center", fontsize=8)
    a.set_yticks(shown, [f"rank {r}" for r in shown])
    a.set_ylim(min(ranks) - 0.6, max(ranks) + 0.6)
    a.set_xlim(0, span * 1.06)
    a.set_xlabel("seconds since the first task started")
    a.legend(ncol=min(len(segs), 8), fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0))
    a.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    _save(fig, path)


def supernova(path, lc, offsets, dense, window, title):
    """Forced flux minus its per-band static offset, with the supernova's true (model) flux."""
    fig, a = _axes((7.5, 3.8))
    for b in _bands(lc["filterName"]):
        m = lc["filterName"] == b
        c = BAND_COLOURS[b]
        a.errorbar(lc["expMidpt"][m], lc["psFlux"][m] - offsets.get(b, 0.0), lc["psFlux_Sigma"][m], fmt="o",
                   color=c, ms=4, lw=1, label=b)
        if b in dense:
            a.plot(dense[b][0], dense[b][1], "-", color=c, lw=1.2)
        else:
            a.plot(lc["expMidpt"][m], lc["truthFlux"][m], "-", color=c, lw=1.0)
    a.set_xlim(*window)
    _finish_time_panel(fig, a, path, "flux (nJy)", title, top=0.92, bottom=0.13)


def _finish_time_panel(fig, a, path, ylabel, title, top, bottom):
    """Zero line, MJD axis, labels, band legend and grid of a one-panel light-curve figure; saves it."""
    a.axhline(0, color="k", lw=0.6)
    a.set_xlabel("MJD (d)")
    a.set_ylabel(ylabel)
    a.set_title(title, fontsize=9)
    _legend(a, fontsize=8, ncol=6)
    a.grid(True, alpha=0.3)
    fig.subplots_adjust(left=0.12, right=0.98, top=top, bottom=bottom)
    _save(fig, path)


def _flux_panels(path, panels, height):
    """One panel per entry of `panels` [(label, t, band, flux, err, truth or None)]: the fluxes with errors
    (points) and the true fluxes (lines), coloured by band; `height` inches a panel."""
    n = max(len(panels), 1)
    fig, axes = _axes((8, 0.6 + height * n), n)
    axes = np.atleast_1d(axes)
    for a, (label, t, band, flux, err, truth) in zip(axes, panels):
        for b in _bands(band):
            m = band == b
            c = BAND_COLOURS[b]
            a.errorbar(t[m], flux[m], err[m], fmt="o", color=c, ms=3, lw=0.8, label=b)
            if truth is not None:
                a.plot(t[m], truth[m], "-", color=c, lw=1.0)
        a.set_title(label, fontsize=9)
        a.set_ylabel("flux (nJy)")
        a.grid(True, alpha=0.3)
        _legend(a, fontsize=7, ncol=6)
    axes[-1].set_xlabel("MJD (d)")
    fig.subplots_adjust(left=0.11, right=0.98, top=1 - 0.35 / (0.6 + height * n),
                        bottom=0.45 / (0.6 + height * n), hspace=0.35)
    _save(fig, path)


def lens_curves(path, curves):
    """One panel per Object holding lensed images: its forced flux minus the per-band static offset
    (points) and the summed true flux of its images (lines), coloured by band.
    curves: [(label, lc, offsets, truth_flux)]."""
    panels = []
    for label, lc, off, truth in curves:
        band = np.asarray(lc["filterName"])
        shift = np.array([off.get(str(b), 0.0) for b in band])
        panels.append((label, np.asarray(lc["expMidpt"]), band, np.asarray(lc["psFlux"]) - shift,
                       np.asarray(lc["psFlux_Sigma"]), np.asarray(truth)))
    _flux_panels(path, panels, 2.6)


def scene_curves(path, curves):
    """One panel per point image of a scene model: psFlux with errors (points) and the true flux (lines),
    coloured by band. curves: [(label, LensedImageForcedSource table with truthFlux when matched)]."""
    _flux_panels(path, [(label, np.asarray(lc["midPointTai"]), np.asarray(lc["filterName"]), np.asarray(lc["psFlux"]),
                         np.asarray(lc["psFluxErr"]),
                         np.asarray(lc["truthFlux"]) if "truthFlux" in lc.colnames else None)
                        for label, lc in curves], 2.4)


def star(path, lc, title):
    """Measured minus true magnitude of a star in each visit (mmag)."""
    fig, a = _axes((7.5, 3.4))
    for b in _bands(lc["filterName"]):
        m = lc["filterName"] == b
        d = 1e3 * (lc["psMag"][m] - lc["truthMag"][m])
        a.errorbar(lc["expMidpt"][m], d, 1e3 * lc["psMag_Sigma"][m], fmt="o", color=BAND_COLOURS[b], ms=4, lw=1,
                   label=b)
    _finish_time_panel(fig, a, path, "psMag - true mag (mmag)", title, top=0.91, bottom=0.14)
