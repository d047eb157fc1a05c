"""Stage diffim: every calexp minus its template (PSF-matched, decorrelated), and the DiaSources detected on
the difference (docs/diffim.md)."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np

from twinkles_hpc import steptimer
from twinkles_hpc.options import opt
from twinkles_hpc.pipeline.stage import PER_VISIT, Stage, Switch
from twinkles_hpc.pipeline.stages.coadd import visit_patches
from twinkles_hpc.pipeline.stages.template import template_inputs, template_key, template_ok
from twinkles_hpc.pipeline.stages.visit import visit_cost
from twinkles_hpc.rundir import layout
from twinkles_hpc.store.atomic import atomic_h5, attrs_dict, open_read
from twinkles_hpc.store.tables import write_planes
from twinkles_hpc.timedomain.kernel import DiffimConfig

#: DiaSource ids: ccdVisitId x DIA_SOURCE_ID_STRIDE + the detection's number in its visit (1, 2, ...).
DIA_SOURCE_ID_STRIDE = 1_000_000

#: Stream key of the random blank positions that calibrate a difference's flux errors.
DIFFIM_ERROR_KEY = 0xD1F

#: Record dtype of the `dia_source` table of a diffim product (DPDD names; fluxes in nJy).
DIA_SOURCE_DTYPE = np.dtype([("diaSourceId", "i8"), ("ccdVisitId", "i8"), ("filterName", "U1"),
                             ("midPointTai", "f8"), ("ra", "f8"), ("decl", "f8"), ("x", "f8"), ("y", "f8"),
                             ("psFlux", "f8"), ("psFluxErr", "f8"), ("snr", "f8"), ("flags", "i8")])


@dataclass
class DiffimSection(DiffimConfig, Switch):
    """[diffim]: the subtraction's settings (timedomain.kernel.DiffimConfig), the kernel candidates, the
    DiaSource detection and the switch."""
    enabled: bool = opt(False, "",
                        "Subtract its template from every calexp and detect DiaSources on the difference "
                        "(diffim/vNNNNNNNN-B.h5); needs [template] enabled = true.")
    preconvolve: bool = opt(True, "", "Convolve the calexp with its own PSF first, whenever that makes it the "
                            "broader image, and match the template to that (Reiss & Lupton 2016): a "
                            "matched-filtered difference, far fewer false DiaSources where the two PSFs are "
                            "nearly equal (docs/diffim.md, \"The diffim stage\").")
    candidate_min_snr: float = opt(30.0, "", "Kernel candidates: calexp sources with PSF S/N at least this.",
                                   lo=1.0)
    candidate_isolation: float = opt(3.0, "arcsec",
                                     "Kernel candidates: no other calexp source within this distance.", lo=0.0)
    background_mesh: int = opt(256, "pixel", "Mesh of the residual sky subtracted from the difference (0: none).",
                               lo=0, hi=4096)
    fits: bool = opt(False, "", "Also write each difference as FITS (diffim/vNNNNNNNN-B.fits: the difference with "
                     "the calexp's WCS and the summary in the header, VARIANCE, MASK, PSF), as twinkles-hpc diffim "
                     "does.")
    min_coverage: float = opt(0.5, "", "Fewest of the calexp's pixels the template must cover (fraction).",
                              lo=0.0, hi=1.0)
    detection_threshold: float = opt(5.0, "sigma", "DiaSource detection threshold on the PSF-filtered "
                                     "difference, positive and negative.", lo=1.0, hi=1000.0)
    detection_min_npix: int = opt(3, "pixel", "Smallest DiaSource footprint.", lo=1, hi=1000)


def science_psf_stamp(psf, x, y, fwhm_px):
    """The calexp's PSF model at (x, y) as a centred odd stamp of unit sum, half-side 2.5 FWHM. The model's
    light beyond (3e-3 of it for a 0.8" PSF) is left out on purpose: pre-convolving with those wings makes
    the template's kernel need wings wider than it has, and bright stars then leave rings (4 FWHM gave 2.4x
    the DiaSources on a sky without variables)."""
    from twinkles_hpc.level2.photometry import mixture_image
    h = max(5, int(np.ceil(2.5 * fwhm_px)))
    dy, dx = np.mgrid[-h:h + 1, -h:h + 1].astype(np.float64)
    stamp = mixture_image(*(c[0] for c in psf.components_at(np.array([x]), np.array([y]))), dx, dy)
    return stamp / stamp.sum()


class DiffimStage(Stage):
    name = "diffim"
    doc = "difference images against the templates, with their DiaSources (diffim/vNNNNNNNN-B.h5)"
    section = DiffimSection
    requires = ("calexp", "template")
    outputs = (layout.diffim, layout.diffim_fits)
    colour = "#8172b2"
    cost_class = PER_VISIT

    def tasks(self, ctx, up):
        """One `diffim/NNNNNNNN` task per visit, after its calexp and the template tasks of its band (and
        year) whose patches its footprint overlaps; cost = 0.25 x the visit's."""
        _, of_visit = template_inputs(ctx.cfg, ctx.visits)
        overlaps = visit_patches(ctx)
        templates = up.tasks("template")
        out = []
        for v in ctx.visits:
            vid = int(v["visit_id"])
            key = layout.visit_key(vid)
            deps = [up.get("calexp", key, for_task=layout.task_id(self.name, key))]
            band, year = of_visit.get(vid, (str(v["band"]), None))
            patches = []
            for index in overlaps[vid]:
                tkey = template_key(band, year, *index)
                if vid in of_visit and tkey in templates:
                    deps.append(templates[tkey])
                    patches.append(list(index))
            out.append(self.task(key, 0.25 * visit_cost(v, ctx.cfg.sensor), deps=deps, visit_id=vid,
                                 year=year, patches=patches))
        return out

    def run(self, ctx, task, should_stop):
        """A visit without a calibrated calexp or a usable template, or whose subtraction fails, gets a file
        with diffim_ok = False and the reason (one log line); later stages skip it."""
        visit = ctx.by_id[task.params["visit_id"]]
        vid, band = int(visit["visit_id"]), str(visit["band"])
        rel = layout.diffim(vid, band)
        out = ctx.path(rel)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        attrs = {"visit_id": vid, "band": band, "ccdVisitId": vid, "mjd": float(visit["mjd"]),
                 "template_year": -1 if task.params["year"] is None else int(task.params["year"])}
        try:
            planes, more = difference_visit(ctx, visit, task.params)
            attrs.update(more, diffim_ok=True, diffim_failure="")
        except DiffimSkip as exc:
            planes = {"dia_source": np.zeros(0, DIA_SOURCE_DTYPE)}
            attrs.update(diffim_ok=False, diffim_failure=str(exc))
            ctx.log_line(f"visit {vid} ({band}): no difference image: {exc}")
        with steptimer.step("write"):
            planes = ctx.storage.planes(planes)     # the FITS export gets the stored pixels too
        with steptimer.step("write"), atomic_h5(out) as fh:
            write_planes(fh, planes, compress=("mask",), storage=ctx.storage.lossless())
            fh.attrs.update(attrs)
        written = {rel: os.path.getsize(out)}
        if ctx.cfg.diffim.fits and attrs["diffim_ok"]:
            rel_fits = layout.diffim_fits(vid, band)
            export_fits(planes, attrs, ctx.path(rel_fits))
            written[rel_fits] = os.path.getsize(ctx.path(rel_fits))
        return written


def export_fits(planes, attrs, path):
    """The difference as FITS (timedomain.fitsdiff.write_difference: the image with the calexp's WCS,
    VARIANCE, MASK, PSF), the visit and the summary's numbers in the primary header."""
    from astropy.io import fits
    from twinkles_hpc.timedomain.fitsdiff import write_difference
    wcs_header = fits.Header.fromstring(str(attrs["wcs"]))
    header = wcs_header.copy()
    header["VISIT"], header["BAND"], header["MJD"] = attrs["visit_id"], attrs["band"], attrs["mjd"]
    header["BUNIT"] = ("electron", "calexp units; x FLUXNJY for nJy")
    header["FLUXNJY"] = (float(attrs["flux_njy_per_electron"]) * float(attrs["ap_corr"]),
                         "nJy per electron of PSF flux")
    summary = json.loads(attrs["summary"])
    for key, name in (("direction", "DIRECTN"), ("kernel_sum", "KSUM"), ("chi2_dof", "KCHI2"), ("n_used", "NCAND"),
                      ("noise_scale", "NOISESCL"), ("flux_error_scale", "FERRSCL"), ("n_dia_sources", "NDIASRC")):
        header[name] = summary[key]
    write_difference(path, planes["image"], planes["variance"], planes["mask"], planes["psf"], header, wcs_header,
                     overwrite=True)


class DiffimSkip(Exception):
    """A visit that has no difference image, and why."""


def difference_visit(ctx, visit, params):
    """The diffim product of one visit: ({dataset: array}, {attribute: value}); raises DiffimSkip."""
    from twinkles_hpc.level2.detect import matched_filter
    from twinkles_hpc.level2.photometry import psf_fwhm
    from twinkles_hpc.level2.psf import MixturePSF
    from twinkles_hpc.timedomain import dia
    from twinkles_hpc.timedomain.diffim import subtract_images
    from twinkles_hpc.timedomain.template import kernel_candidates, resample_template, wcs_of
    D, vid, band = ctx.cfg.diffim, int(visit["visit_id"]), str(visit["band"])
    lap = steptimer.laps()
    calexp = ctx.path(layout.calexp(vid, band))
    with open_read(calexp) as fh:
        a = attrs_dict(fh)
        if not a.get("calib_ok", True):
            raise DiffimSkip("the calibration failed")
        image, variance, mask = (fh[k][...] for k in ("image", "variance", "mask"))
        sources = fh["sources"][...]
    lap("read")
    year = params["year"]
    paths = [ctx.path(layout.template(band, *p, year=year)) for p in sorted(tuple(p) for p in params["patches"])]
    made = [p for p in paths if template_ok(p)]
    if not made:
        which = f"band {band}" + (f", year {year}" if year is not None else "")
        raise DiffimSkip(f"no template of {which} overlaps it" if not paths else
                         f"the template of {which} was not made ({_reason(paths[0])})")
    wcs, njy = wcs_of(a), float(a["flux_njy_per_electron"])
    tmpl = resample_template(made, wcs, image.shape, njy)
    lap("template")
    coverage = float(np.isfinite(tmpl.image).mean())
    if coverage < D.min_coverage:
        raise DiffimSkip(f"the template covers {coverage:.0%} of the sensor (diffim.min_coverage "
                         f"{D.min_coverage:.0%})")
    psf = MixturePSF.from_dict(a["psf"])
    ny, nx = image.shape
    cx, cy = (nx - 1) / 2.0, (ny - 1) / 2.0
    fwhm_sci = float(psf_fwhm(psf, cx, cy)[0])
    iso = D.candidate_isolation / ctx.cfg.sensor.pixel_scale
    cand = kernel_candidates(sources, min_snr=D.candidate_min_snr, isolation_px=iso, max_n=0)
    if cand.size == 0:
        raise DiffimSkip(f"no kernel candidate (calexp sources with S/N >= {D.candidate_min_snr:g}, isolated)")
    template_fwhm = tmpl.fwhm_px if np.isfinite(tmpl.fwhm_px) else None
    try:
        res = subtract_images(image, tmpl.image, sources["x"][cand], sources["y"][cand], science_variance=variance,
                              template_variance=tmpl.variance, science_mask=mask, template_mask=tmpl.mask,
                              science_fwhm=fwhm_sci, template_fwhm=template_fwhm,
                              science_psf=science_psf_stamp(psf, cx, cy, fwhm_sci), config=D)
    except ValueError as exc:
        raise DiffimSkip(f"the subtraction failed: {exc}") from None
    lap("subtract")
    res.summary["psf_centre"] = [cx, cy]
    more = {"wcs": a["wcs"], "psf_model": a["psf"], "flux_njy_per_electron": njy, "ap_corr": float(a["ap_corr"]),
            "template_patches": [os.path.relpath(p, ctx.rundir) for p in tmpl.patches]}
    dpsf = dia.difference_psf(res.summary["direction"], res.psf, psf, (cx, cy))
    bad = dia.unusable(res.image, res.variance, res.mask)      # the same through the steps below
    sky = 0.0
    if D.background_mesh:
        sky = dia.subtract_background(res.image, res.variance, res.mask, D.background_mesh, bad)
    lap("residual_sky")
    filt = dia.detection_filter_fwhm(dpsf, res.summary["direction"] == "preconvolved")
    filtered = matched_filter(res.image, res.variance, filt, mask=bad)
    scale, lambda2 = dia.noise_scale(res.image, res.variance, res.mask, filt, bad=bad, filtered=filtered)
    res.variance *= np.float32(scale ** 2)
    err_scale = dia.flux_error_scale(res.image, res.variance, res.mask, dpsf,
                                     (ctx.cfg.run.seed, vid, DIFFIM_ERROR_KEY), bad=bad)
    lap("noise")
    det = dia.detect_dia_sources(res.image, res.variance, res.mask, dpsf, threshold=D.detection_threshold,
                                 min_npix=D.detection_min_npix, filter_fwhm=filt, err_scale=err_scale, bad=bad,
                                 filtered_image=filtered[0])
    lap("detection")
    rows = np.zeros(len(det), DIA_SOURCE_DTYPE)
    rows["diaSourceId"] = vid * DIA_SOURCE_ID_STRIDE + det["id"]
    rows["ccdVisitId"], rows["filterName"], rows["midPointTai"] = vid, band, float(visit["mjd"])
    if len(det):
        rows["ra"], rows["decl"] = wcs.all_pix2world(det["x"], det["y"], 0)
    flux_scale = float(a["ap_corr"]) * njy
    rows["x"], rows["y"], rows["snr"], rows["flags"] = det["x"], det["y"], det["snr"], det["flags"]
    rows["psFlux"], rows["psFluxErr"] = det["flux"] * flux_scale, det["flux_err"] * flux_scale
    summary = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in res.summary.items()}
    summary.update(residual_sky=sky, noise_scale=scale, noise_roughness=lambda2,
                   gaussian_false_per_mpx=dia.expected_false_per_mpx(D.detection_threshold, lambda2),
                   flux_error_scale=err_scale, template_coverage=coverage, n_dia_sources=int(len(det)),
                   psf_response=dpsf.response, psf_fwhm_px=dpsf.fwhm_px)
    planes = {"image": res.image, "variance": res.variance, "mask": res.mask, "psf": res.psf, "dia_source": rows}
    more["summary"] = json.dumps(summary, sort_keys=True, default=float)
    return planes, more


def _reason(path):
    with open_read(path) as fh:
        return str(fh.attrs.get("reason", ""))


def diffim_ok(path):
    """True if the diffim product at `path` holds a difference image (attribute diffim_ok)."""
    with open_read(path) as fh:
        return bool(fh.attrs.get("diffim_ok", False))


STAGE = DiffimStage()
