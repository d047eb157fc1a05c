"""Lensed-quasar scenes from a run's products: the fit of each candidate on the coadds, and the per-visit
light curve of every point image on the calexp and on the difference (docs/lensmodel.md).

`model_systems` fits timedomain.scene's model of every lens candidate on the coadds of its home patch (the
patch whose inner box holds its centre), with the other Objects whose light reaches the fit as fixed
shapes. `photometer_visit` places every scene on one visit through the visit's WCS and measures:

* direct: the calexp, with the galaxy and the neighbours (shapes fixed, fluxes free) and the point images;
* difference: the difference image, where the galaxy and the static neighbours cancel, point images only;
  plus the template's own image fluxes (the same scene on the visit's template patch), so that
  template + difference is the image's flux at the visit, like the direct one.

The truth is never read.
"""
from __future__ import annotations

import glob
import json
import os

import numpy as np

from twinkles_hpc.errors import InputError
from twinkles_hpc.instrument import BANDS, njy_to_mag
from twinkles_hpc.level2.astrometry import tangent_arcsec
from twinkles_hpc.rundir import layout
from twinkles_hpc.store.atomic import open_read
from twinkles_hpc.store.tables import read_table
from twinkles_hpc.level2.masks import BAD, CR, NO_DATA, SAT
from twinkles_hpc.timedomain import scene as sc

#: Pixels with these mask bits are left out of every scene fit.
BAD_BITS = SAT | CR | NO_DATA | BAD
#: Objects within this distance (arcsec) beyond the fit radius are fitted as neighbours.
NEIGHBOUR_REACH = 2.0
#: LensedImage ids: lensSystemId x IMAGE_ID_STRIDE + the image's index (0 .. MAX_IMAGES - 1).
IMAGE_ID_STRIDE = 8

#: Record dtype of a fitted system (the candidate's id, the galaxy and the fit).
SYSTEM_DTYPE = np.dtype([("lensSystemId", "i8"), ("ra", "f8"), ("decl", "f8"), ("shapeXX", "f8"),
                         ("shapeXY", "f8"), ("shapeYY", "f8"), ("fitRadius", "f8"), ("nImages", "i4"),
                         ("chi2Dof", "f8"), ("patchI", "i4"), ("patchJ", "i4")]
                        + [(f"{b}GalaxyFlux", "f8") for b in BANDS])
#: Record dtype of LensedImage: position and the coadd fit's mean flux per band (nJy).
IMAGE_DTYPE = np.dtype([("lensedImageId", "i8"), ("lensSystemId", "i8"), ("imageIndex", "i4"), ("ra", "f8"),
                        ("decl", "f8")]
                       + [(f"{b}PsFluxMean", "f8") for b in BANDS] + [(f"{b}PsFluxMeanErr", "f8") for b in BANDS])
#: Record dtype of a neighbour fitted with a system (intrinsic covariance in arcsec^2, east-north).
NEIGHBOUR_DTYPE = np.dtype([("lensSystemId", "i8"), ("ra", "f8"), ("decl", "f8"), ("cxx", "f8"), ("cxy", "f8"),
                            ("cyy", "f8")])
#: Record dtype of LensedImageForcedSource: psFlux the measurement the pipeline uses, the calexp's
#: (directFlux; docs/lensmodel.md compares the two), diffFlux on the difference, templateFlux the image's
#: flux on the template.
FORCED_DTYPE = np.dtype([("lensedImageId", "i8"), ("lensSystemId", "i8"), ("ccdVisitId", "i8"),
                         ("filterName", "U1"), ("midPointTai", "f8"), ("psFlux", "f8"), ("psFluxErr", "f8"),
                         ("directFlux", "f8"), ("directFluxErr", "f8"), ("diffFlux", "f8"), ("diffFluxErr", "f8"),
                         ("templateFlux", "f8"), ("galaxyFlux", "f8"), ("flags", "i8")])
#: Extra flag: no difference image (or no template fit) for the visit: diffFlux and templateFlux NaN.
FLAG_NO_DIFFERENCE = 8
#: A measurement with any of these flags is not used (light curves, delays, validation).
UNUSABLE = sc.FLAG_EDGE | sc.FLAG_MASKED | sc.FLAG_NO_DATA


def home_patch(skymap, ra, dec):
    """(i, j) of the patch whose inner box holds (ra, dec), None off the tract."""
    x, y = (float(v) for v in skymap.wcs.all_world2pix(ra, dec, 0))
    for p in skymap.patches:
        x0, y0, nx, ny = p.inner_bbox
        if x0 - 0.5 <= x < x0 + nx - 0.5 and y0 - 0.5 <= y < y0 + ny - 0.5:
            return p.index
    return None


def neighbours(objects, gal_ra, gal_dec, r_img, r_fit, wcs, psf_moments, extended_min=0.5):
    """(ra, dec, intrinsic covariance (n, 3), arcsec^2) of the Objects (psRa, psDecl, extendedness, Ixx,
    Ixy, Iyy in the pixels of `wcs`) between r_img and r_fit + NEIGHBOUR_REACH arcsec of the galaxy:
    point-like ones as points, extended ones as Gaussians of their moments less the PSF's `psf_moments`."""
    if objects is None or len(objects) == 0:
        return np.zeros(0), np.zeros(0), np.zeros((0, 3))
    d = np.hypot(*tangent_arcsec(objects["psRa"], objects["psDecl"], gal_ra, gal_dec))
    nb = objects[(d > r_img) & (d < r_fit + NEIGHBOUR_REACH)]
    nb = nb[np.argsort(nb["objectId"], kind="stable")]
    cov = np.zeros((len(nb), 3))
    for k, o in enumerate(nb):
        if not (o["extendedness"] >= extended_min) or not np.isfinite([o["Ixx"], o["Ixy"], o["Iyy"]]).all():
            continue
        M = np.array([[o["Ixx"] - psf_moments[0], o["Ixy"] - psf_moments[1]],
                      [o["Ixy"] - psf_moments[1], o["Iyy"] - psf_moments[2]]])
        ev, V = np.linalg.eigh(M)
        M = V @ np.diag(np.maximum(ev, 0.01)) @ V.T
        Ji = np.linalg.inv(sc.pixel_jacobian(wcs, o["psRa"], o["psDecl"]))
        S = Ji @ M @ Ji.T
        cov[k] = S[0, 0], S[0, 1], S[1, 1]
    return np.asarray(nb["psRa"], np.float64), np.asarray(nb["psDecl"], np.float64), cov


def _moments(comps):
    w, a, b, c = comps
    return np.array([w @ a, w @ b, w @ c]) / w.sum()


def model_system(cand, starts, coadds, wcs, objects, pixel_scale):
    """Fit one candidate (a lens-candidate row: ra, decl, lensCandidateId) on its patch's `coadds` ({band:
    open coadd file}), its images starting at `starts` (ra, dec arrays: its DiaObjects); `objects` the
    patch's primary Objects or None. Returns (Scene, summary dict) or (None, reason)."""
    from twinkles_hpc.level2.coaddpsf import CoaddPSF
    gal_ra, gal_dec = float(cand["ra"]), float(cand["decl"])
    r_img, r_fit = sc.search_radius(gal_ra, gal_dec, *starts)
    cx, cy = (float(v) for v in wcs.all_world2pix(gal_ra, gal_dec, 0))
    stamps, moments = [], None
    for band in BANDS:
        f = coadds.get(band)
        if f is None:
            continue
        psf = CoaddPSF.from_file(f)
        if psf is None or not psf.covered(cx, cy)[0]:
            continue
        st = sc.read_stamp((f["image"], f["variance"], f["mask"]), cx, cy, r_fit / pixel_scale, psf,
                           float(psf.ap_corr_at(cx, cy)[0]), band, BAD_BITS)
        if st is None or st.data.size < 0.5 * np.pi * (r_fit / pixel_scale) ** 2:
            continue
        stamps.append(st)
        if moments is None or band == "i":
            moments = _moments(st.psf)
    if not stamps:
        return None, "no coadd with a PSF covers the system"
    nb = neighbours(objects, gal_ra, gal_dec, r_img, r_fit, wcs, moments)
    return sc.fit_scene(stamps, wcs, gal_ra, gal_dec, *starts, nb, pixel_scale)


def scene_rows(cid, scene, patch):
    """(SYSTEM_DTYPE row, IMAGE_DTYPE rows, NEIGHBOUR_DTYPE rows) of a fitted Scene."""
    s = np.zeros(1, SYSTEM_DTYPE)
    s["lensSystemId"], s["ra"], s["decl"] = cid, scene.ra, scene.dec
    s["shapeXX"], s["shapeXY"], s["shapeYY"] = scene.shape
    s["fitRadius"], s["nImages"], s["chi2Dof"] = scene.fit_radius, scene.n_images, scene.chi2_dof
    s["patchI"], s["patchJ"] = patch
    for b in BANDS:
        s[f"{b}GalaxyFlux"] = scene.galaxy_flux.get(b, np.nan)
    im = np.zeros(scene.n_images, IMAGE_DTYPE)
    im["lensSystemId"], im["imageIndex"] = cid, np.arange(scene.n_images)
    im["lensedImageId"] = np.int64(cid) * IMAGE_ID_STRIDE + im["imageIndex"]
    im["ra"], im["decl"] = scene.image_ra, scene.image_dec
    for b in BANDS:
        im[f"{b}PsFluxMean"] = scene.image_flux.get(b, [np.nan] * scene.n_images)
        im[f"{b}PsFluxMeanErr"] = scene.image_flux_err.get(b, [np.nan] * scene.n_images)
    nb = np.zeros(len(scene.neighbour_ra), NEIGHBOUR_DTYPE)
    nb["lensSystemId"], nb["ra"], nb["decl"] = cid, scene.neighbour_ra, scene.neighbour_dec
    nb["cxx"], nb["cxy"], nb["cyy"] = scene.neighbour_cov.T if len(nb) else ((), (), ())
    return s, im, nb


def scenes_from_tables(systems, images, neighbours_t):
    """[(lensSystemId, Scene, (patch i, j))] from the stored tables, in lensSystemId order."""
    out = []
    for s in np.sort(systems, order="lensSystemId"):
        cid = int(s["lensSystemId"])
        im = images[images["lensSystemId"] == cid]
        im = im[np.argsort(im["imageIndex"])]
        nb = neighbours_t[neighbours_t["lensSystemId"] == cid]
        scene = sc.Scene(float(s["ra"]), float(s["decl"]), (float(s["shapeXX"]), float(s["shapeXY"]),
                                                           float(s["shapeYY"])),
                         np.asarray(im["ra"], np.float64), np.asarray(im["decl"], np.float64),
                         np.asarray(nb["ra"], np.float64), np.asarray(nb["decl"], np.float64),
                         np.c_[nb["cxx"], nb["cxy"], nb["cyy"]], float(s["fitRadius"]))
        out.append((cid, scene, (int(s["patchI"]), int(s["patchJ"]))))
    return out


def _measure(planes, psf, njy, scene, wcs, band, *, with_galaxy):
    """(fluxes, errors, flags, galaxy flux) of `scene` on one image (planes image, variance, mask; its PSF
    object, nJy per unit, WCS); None when the scene's centre is off the image."""
    (gx, gy), shape, img_xy = sc.scene_on_image(scene, wcs)
    ny, nx = planes[0].shape
    if not (0 <= gx < nx and 0 <= gy < ny):
        return None
    scale = float(np.sqrt(abs(np.linalg.det(sc.pixel_jacobian(wcs, scene.ra, scene.dec)))))
    stamp = sc.read_stamp(planes, gx, gy, scene.fit_radius * scale, psf, njy, band, BAD_BITS, compact=with_galaxy)
    if stamp is None:
        return None
    nuis = sc.neighbours_on(wcs, scene.neighbour_ra, scene.neighbour_dec, scene.neighbour_cov) if with_galaxy else []
    from twinkles_hpc.level2.photometry import mixture_fwhm
    fwhm = float(mixture_fwhm(*(c[None, :] for c in stamp.psf))[0])
    return sc.photometer(stamp, (gx, gy), shape, img_xy, nuisance=nuis, with_galaxy=with_galaxy, fwhm_px=fwhm)


class TemplateFluxes:
    """The scenes' fits on one template patch (`path`), each made once: every visit of the template's band
    (and year) needs the same ones. The file is opened when a fit is first needed; close() closes it and
    keeps the fits."""

    def __init__(self, path):
        self.path, self.memo, self._open = path, {}, None

    def fit(self, cid, scene, band):
        """`_measure` of scene `cid` on the template (None where its PSF does not cover the galaxy)."""
        if cid not in self.memo:
            if self._open is None:
                from twinkles_hpc.level2.coaddpsf import CoaddPSF
                from twinkles_hpc.store.atomic import open_read
                from twinkles_hpc.timedomain.template import wcs_of
                f = open_read(self.path)
                self._open = (f, CoaddPSF.from_file(f), wcs_of(f.attrs))
            f, psf, wcs = self._open
            tm = None
            if psf is not None:
                tx, ty = (float(v) for v in wcs.all_world2pix(scene.ra, scene.dec, 0))
                if psf.covered(tx, ty)[0]:
                    tm = _measure((f["image"], f["variance"], f["mask"]), psf, float(psf.ap_corr_at(tx, ty)[0]),
                                  scene, wcs, band, with_galaxy=True)
            self.memo[cid] = tm
        return self.memo[cid]

    def close(self):
        if self._open is not None:
            self._open[0].close()
            self._open = None


def photometer_visit(scenes, visit, calexp, diffim, templates):
    """FORCED_DTYPE rows of every scene on one visit, in (lensSystemId, image) order.

    scenes: scenes_from_tables' list; visit: its row (visit_id, band, mjd); calexp: open calexp file;
    diffim: open difference file, or None; templates: {patch (i, j): TemplateFluxes} of the visit's band
    (and year). A visit whose calibration failed (calib_ok false: no pixels, no WCS) has no rows."""
    from twinkles_hpc.level2.psf import MixturePSF
    from twinkles_hpc.store.atomic import attrs_dict
    from twinkles_hpc.timedomain import dia
    from twinkles_hpc.timedomain.template import wcs_of
    vid, band = int(visit["visit_id"]), str(visit["band"])
    a = attrs_dict(calexp)
    if not a.get("calib_ok", True):
        return np.zeros(0, FORCED_DTYPE)
    wcs = wcs_of(a)
    cal_planes = (calexp["image"], calexp["variance"], calexp["mask"])
    njy = float(a["ap_corr"]) * float(a["flux_njy_per_electron"])
    cal_psf = MixturePSF.from_dict(a["psf"])
    diff = None
    if diffim is not None and diffim.attrs["diffim_ok"]:
        da = attrs_dict(diffim)
        err_scale = float(json.loads(da["summary"])["flux_error_scale"])
        diff = ((diffim["image"], diffim["variance"], diffim["mask"]), dia.product_psf(da, diffim["psf"][...]),
                err_scale)
    rows = []
    for cid, scene, patch in scenes:
        direct = _measure(cal_planes, cal_psf, njy, scene, wcs, band, with_galaxy=True)
        if direct is None:
            continue
        n = scene.n_images
        r = np.zeros(n, FORCED_DTYPE)
        r["lensSystemId"], r["lensedImageId"] = cid, np.int64(cid) * IMAGE_ID_STRIDE + np.arange(n)
        r["ccdVisitId"], r["filterName"], r["midPointTai"] = vid, band, float(visit["mjd"])
        r["directFlux"], r["directFluxErr"], r["flags"], r["galaxyFlux"] = direct
        r["diffFlux"] = r["diffFluxErr"] = r["templateFlux"] = np.nan
        t = templates.get(patch)
        if diff is not None and t is not None:
            planes, dpsf, err_scale = diff
            d = _measure(planes, dpsf, njy, scene, wcs, band, with_galaxy=False)
            tm = t.fit(cid, scene, band) if d is not None else None
            if d is not None and tm is not None:
                r["diffFlux"], r["diffFluxErr"] = d[0], d[1] * err_scale
                r["templateFlux"] = tm[0]
                r["flags"] |= d[2] | tm[2]
        r["psFlux"], r["psFluxErr"] = r["directFlux"], r["directFluxErr"]
        r["flags"] |= np.where(np.isfinite(r["diffFlux"]) & np.isfinite(r["templateFlux"]), 0, FLAG_NO_DIFFERENCE)
        rows.append(r)
    return np.concatenate(rows) if rows else np.zeros(0, FORCED_DTYPE)


#: A visit's flux gives a magnitude for the time delays when unflagged (EDGE, MASKED, NO_DATA) and of S/N at
#: least this.
DELAY_MIN_SNR = 3.0


def read_lensphot(rundir):
    """Every lensphot product's rows of a run (FORCED_DTYPE, in visit-file order), None without any."""
    parts = []
    for p in sorted(glob.glob(os.path.join(rundir, layout.LENSPHOT_GLOB))):
        with open_read(p) as fh:
            parts.append(read_table(fh["lensed_image_forced_source"]))
    return np.concatenate(parts) if parts else None


def run_light_curves(rundir):
    """[(lensSystemId, LightCurves, {letter: lensedImageId})] of a run's scene models with two or more
    images, from its lensphot products: psFlux as magnitudes (NaN where flagged or below DELAY_MIN_SNR).
    Image A is the brightest on the coadds (the sum of its mean fluxes over the bands), then B, C, D by
    brightness. InputError when the run has no scene models or no lensphot products."""
    from twinkles_hpc.timedomain.timedelay import IMAGES, LightCurves
    path = os.path.join(rundir, layout.LENS_SCENES)
    if not os.path.isfile(path):
        raise InputError(rundir, layout.LENS_SCENES, "the scene models of a run with [lensmodel] enabled",
                         "no such file")
    with open_read(path) as fh:
        images = read_table(fh["images"])
    rows = read_lensphot(rundir)
    if rows is None:
        raise InputError(rundir, "lensphot", "the per-visit fluxes of a run with [lensphot] enabled", "none")
    out = []
    for sid in np.unique(images["lensSystemId"]):
        im = images[images["lensSystemId"] == sid]
        if len(im) < 2:
            continue
        total = sum(np.nan_to_num(im[f"{b}PsFluxMean"]) for b in BANDS)
        im = im[np.lexsort((im["imageIndex"], -total))][:len(IMAGES)]
        r = rows[rows["lensSystemId"] == sid]
        visits = np.unique(r["ccdVisitId"])
        first = {int(v): k for k, v in enumerate(visits)}
        mjd, band = np.zeros(visits.size), np.zeros(visits.size, "U1")
        mag, magerr = {}, {}
        for x, iid in zip(IMAGES, im["lensedImageId"]):
            mag[x], magerr[x] = np.full(visits.size, np.nan), np.full(visits.size, np.nan)
            mine = r[r["lensedImageId"] == iid]
            k = np.array([first[int(v)] for v in mine["ccdVisitId"]], np.int64)
            mjd[k], band[k] = mine["midPointTai"], mine["filterName"]
            ok = ((mine["flags"] & UNUSABLE) == 0) & (
                mine["psFlux"] >= DELAY_MIN_SNR * mine["psFluxErr"]) & (mine["psFluxErr"] > 0)
            mag[x][k[ok]] = njy_to_mag(mine["psFlux"][ok])
            magerr[x][k[ok]] = 2.5 / np.log(10) * mine["psFluxErr"][ok] / mine["psFlux"][ok]
        out.append((int(sid), LightCurves(mjd, band, mag, magerr),
                    {x: int(i) for x, i in zip(IMAGES, im["lensedImageId"])}))
    return out


def coadd_scene(scene, path, half):
    """(data, model, noise) of a Scene on the coadd at `path`: the (2 half + 1)^2 box about the galaxy, the
    model with its amplitudes fitted there (galaxy, images, neighbours, constant; inverse-variance weights),
    NaN where there is no data, and the median pixel noise; None when the coadd has no PSF there."""
    from twinkles_hpc.level2.coaddpsf import CoaddPSF
    from twinkles_hpc.store.atomic import open_read
    from twinkles_hpc.timedomain.template import wcs_of
    with open_read(path) as f:
        psf = CoaddPSF.from_file(f)
        wcs = wcs_of(f.attrs)
        (gx, gy), shape, img_xy = sc.scene_on_image(scene, wcs)
        if psf is None or not psf.covered(gx, gy)[0]:
            return None
        st = sc.read_stamp((f["image"], f["variance"], f["mask"]), gx, gy, half * np.sqrt(2.0) + 1, psf, 1.0, "",
                           BAD_BITS)
    if st is None:
        return None
    nuis = sc.neighbours_on(wcs, scene.neighbour_ra, scene.neighbour_dec, scene.neighbour_cov)
    A = sc.design(st, (gx, gy), shape, img_xy, nuis)
    amp, _, _ = sc.weighted_solve(A, st.data, 1.0 / st.var)
    if amp is None:
        return None
    ix, iy = int(np.floor(gx + 0.5)), int(np.floor(gy + 0.5))
    data, model = np.full((2 * half + 1,) * 2, np.nan), np.full((2 * half + 1,) * 2, np.nan)
    u, v = (st.x - ix + half).astype(np.int64), (st.y - iy + half).astype(np.int64)
    inside = (u >= 0) & (u <= 2 * half) & (v >= 0) & (v <= 2 * half)
    data[v[inside], u[inside]] = st.data[inside]
    model[v[inside], u[inside]] = (A @ amp)[inside]
    return data, model, float(np.sqrt(np.median(st.var)))
