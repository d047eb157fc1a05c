"""Scene models of lensed quasars (timedomain/scene.py, timedomain/lensphot.py) and their validation figures
(validation/lensphot.py): the coadd fit finds the images and the galaxy, the per-visit fit is unbiased
with the right errors, and the validation's per-image figures."""
import numpy as np
import pytest
from astropy.wcs import WCS

from twinkles_hpc import config
from twinkles_hpc.level2.astrometry import tangent_arcsec
from twinkles_hpc.timedomain import lensphot
from twinkles_hpc.timedomain import scene as sc
from twinkles_hpc.validation.lensphot import image_figures, lensed_images_section, measurement_figures
from twinkles_hpc.validation.run import checks

RA0, DEC0 = 53.0, -27.4
SCALE = 0.2
N = 81
#: The system: galaxy half-light shape (arcsec^2, east-north), image offsets (arcsec east, north).
SHAPE = (0.36, 0.05, 0.20)
OFFSETS = np.array([[1.1, 0.3], [-0.9, -0.6], [0.2, 1.2], [-0.3, -1.3]])
GAL_FLUX = {"g": 20000.0, "r": 40000.0, "i": 60000.0}
IMG_FLUX = {"g": [9000.0, 6000.0, 5000.0, 3000.0], "r": [8000.0, 5000.0, 4500.0, 2500.0],
            "i": [7000.0, 4500.0, 4000.0, 2000.0]}
SKY_VAR = 400.0


class FixedPSF:
    """A Gaussian mixture the same at every position (FWHM `fwhm` pixels; a core and a wing)."""

    def __init__(self, fwhm, e=0.0):
        s2 = (fwhm / 2.3548) ** 2
        self.comps = (np.array([0.8, 0.2]), np.array([s2 * (1 + e), 4 * s2 * (1 + e)]), np.array([0.0, 0.0]),
                      np.array([s2 * (1 - e), 4 * s2 * (1 - e)]))

    def components_at(self, x, y):
        n = np.size(x)
        return tuple(np.tile(c, (n, 1)) for c in self.comps)


def wcs_at(ra, dec, rot_deg=0.0, shift=(0.0, 0.0)):
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [ra, dec]
    w.wcs.crpix = [(N + 1) / 2 + shift[0], (N + 1) / 2 + shift[1]]
    c, s = np.cos(np.radians(rot_deg)), np.sin(np.radians(rot_deg))
    w.wcs.cd = np.array([[-c, s], [s, c]]) * SCALE / 3600.0
    return w


def image_radec():
    c = np.cos(np.radians(DEC0))
    return RA0 + OFFSETS[:, 0] / 3600.0 / c, DEC0 + OFFSETS[:, 1] / 3600.0


def true_scene(fluxes=None):
    ra, dec = image_radec()
    s = sc.Scene(RA0, DEC0, SHAPE, ra, dec, np.zeros(0), np.zeros(0), np.zeros((0, 3)), 3.6)
    return s


def render(wcs, psf, gal_flux, img_flux, rng, depth=1.0):
    """An image of the system on `wcs` with `psf`: data, variance (sky plus the sources' shot noise, over
    `depth` images)."""
    (gx, gy), shape, img_xy = sc.scene_on_image(true_scene(), wcs)
    yy, xx = np.mgrid[0:N, 0:N].astype(np.float64)
    comps = tuple(c[0] for c in psf.components_at(np.zeros(1), np.zeros(1)))
    model = gal_flux * sc.galaxy_profile(xx - gx, yy - gy, shape, comps)
    for (x, y), f in zip(img_xy, img_flux):
        model += f * sc.point_profile(xx - x, yy - y, comps)
    var = (SKY_VAR + np.maximum(model, 0.0)) / depth
    return model + rng.normal(0.0, np.sqrt(var)), var


def planes(data, var):
    return data, var, np.zeros(data.shape, np.uint16)


@pytest.fixture(scope="module")
def coadd_fit():
    """The scene fitted on three bands' deep images, started from two of the four images and one point
    where there is nothing."""
    rng = np.random.default_rng(5)
    wcs, psf = wcs_at(RA0, DEC0), FixedPSF(3.5)
    stamps = []
    for b in "gri":
        data, var = render(wcs, psf, GAL_FLUX[b], IMG_FLUX[b], rng, depth=4.0)
        stamps.append(sc.read_stamp(planes(data, var), (N - 1) / 2, (N - 1) / 2, 3.6 / SCALE, psf, 1.0, b, 0xFFFF))
    ra, dec = image_radec()
    c = np.cos(np.radians(DEC0))
    start_ra = np.r_[ra[:2], RA0 - 1.5 / 3600.0 / c]
    start_dec = np.r_[dec[:2], DEC0 + 1.4 / 3600.0]
    return sc.fit_scene(stamps, wcs, RA0 + 0.1 / 3600, DEC0 - 0.1 / 3600, start_ra, start_dec, pixel_scale=SCALE)


def test_coadd_fit_finds_every_image(coadd_fit):
    scene, info = coadd_fit
    assert scene.n_images == 4, info["log"]
    ra, dec = image_radec()
    got = np.c_[tangent_arcsec(scene.image_ra, scene.image_dec, RA0, DEC0)]
    for k in range(4):
        d = np.hypot(*(got - OFFSETS[k]).T)
        assert d.min() < 0.03, (k, d)
    assert sum("dropped" in line for line in info["log"]) == 1 and sum("added" in line for line in info["log"]) == 2
    assert np.hypot(*tangent_arcsec(scene.ra, scene.dec, RA0, DEC0)) < 0.03
    assert np.allclose(scene.shape, SHAPE, rtol=0.1, atol=0.01)
    assert 0.9 < scene.chi2_dof < 1.1


def test_coadd_fit_fluxes(coadd_fit):
    scene, _ = coadd_fit
    got = np.c_[tangent_arcsec(scene.image_ra, scene.image_dec, RA0, DEC0)]
    order = [int(np.argmin(np.hypot(*(got - o).T))) for o in OFFSETS]
    for b in "gri":
        f = np.array(scene.image_flux[b])[order]
        e = np.array(scene.image_flux_err[b])[order]
        assert np.all(np.abs(f - IMG_FLUX[b]) < 5 * e), (b, f, e)
        assert scene.galaxy_flux[b] == pytest.approx(GAL_FLUX[b], rel=0.03)


def test_visit_fits_unbiased_with_right_errors():
    """60 visits at other seeing, rotations and sub-pixel offsets, the scene fixed: the per-visit fluxes'
    normalised residuals have mean 0 and unit scatter for every image, and the galaxy's flux is right."""
    rng = np.random.default_rng(9)
    scene = true_scene()
    z, zg = [], []
    for k in range(60):
        psf = FixedPSF(rng.uniform(3.0, 6.0), e=rng.uniform(-0.1, 0.1))
        wcs = wcs_at(RA0, DEC0, rot_deg=rng.uniform(0, 360), shift=rng.uniform(-0.5, 0.5, 2))
        flux = np.array(IMG_FLUX["r"]) * rng.uniform(0.5, 1.5, 4)
        data, var = render(wcs, psf, GAL_FLUX["r"], flux, rng)
        (gx, gy), shape, img_xy = sc.scene_on_image(scene, wcs)
        st = sc.read_stamp(planes(data, var), gx, gy, scene.fit_radius / SCALE, psf, 1.0, "r", 0xFFFF)
        f, e, flags, g = sc.photometer(st, (gx, gy), shape, img_xy)
        assert not flags.any()
        z.append((f - flux) / e)
        zg.append(g)
    z = np.array(z)
    assert np.all(np.abs(z.mean(0)) < 0.45), z.mean(0)
    assert np.all((z.std(0) > 0.75) & (z.std(0) < 1.3)), z.std(0)
    assert np.median(zg) == pytest.approx(GAL_FLUX["r"], rel=0.02)


def test_photometer_flags_edge_and_masked():
    rng = np.random.default_rng(2)
    wcs, psf = wcs_at(RA0, DEC0), FixedPSF(4.0)
    data, var = render(wcs, psf, GAL_FLUX["r"], IMG_FLUX["r"], rng)
    mask = np.zeros(data.shape, np.uint16)
    (gx, gy), shape, img_xy = sc.scene_on_image(true_scene(), wcs)
    x, y = (int(round(v)) for v in img_xy[0])
    mask[y, x] = 1
    st = sc.read_stamp((data, var, mask), gx, gy, 3.6 / SCALE, psf, 1.0, "r", 1)
    f, e, flags, _ = sc.photometer(st, (gx, gy), shape, img_xy)
    assert flags[0] & sc.FLAG_MASKED and not flags[1:].any() and np.isfinite(f).all()
    cut = sc.read_stamp((data[:, :45], var[:, :45], mask[:, :45]), gx, gy, 3.6 / SCALE, psf, 1.0, "r", 1)
    assert cut.cut
    f, e, flags, _ = sc.photometer(cut, (gx, gy), shape, img_xy)
    assert np.all(flags & sc.FLAG_EDGE)


def test_scene_rows_round_trip(coadd_fit):
    scene, _ = coadd_fit
    s, im, nb = lensphot.scene_rows(3016000256, scene, (0, 0))
    assert list(im["lensedImageId"]) == [3016000256 * lensphot.IMAGE_ID_STRIDE + k for k in range(4)]
    (cid, back, patch), = lensphot.scenes_from_tables(s, im, nb)
    assert cid == 3016000256 and patch == (0, 0) and back.n_images == 4
    assert np.array_equal(back.image_ra, scene.image_ra) and back.shape == scene.shape


def test_image_figures():
    true = np.full(50, 1000.0)
    err = np.full(50, 50.0)
    rng = np.random.default_rng(1)
    flux = true + rng.normal(0, 50.0, 50)
    snr, chi2, scatter, n = image_figures(flux, err, true)
    assert snr == 20.0 and n == 50 and 0.6 < chi2 < 1.5 and 0.7 < scatter < 1.3
    flux[3] += 5000.0                      # one bad visit: chi^2 shows it, the robust scatter does not
    _, chi2_bad, scatter_bad, _ = image_figures(flux, err, true)
    assert chi2_bad > 10 and abs(scatter_bad - scatter) < 0.1
    assert image_figures(flux[:2], err[:2], true[:2])[:3] == (None, None, None)


def test_supernova_visits_left_out():
    """A supernova near the image lights 4 visits: they are left out of the figures and counted; the
    figures over all visits, beside them, show the supernova."""
    V = config.from_dict({}).validate
    rng = np.random.default_rng(2)
    true, err = np.full(60, 2000.0), np.full(60, 40.0)
    sn = np.zeros(60)
    sn[[10, 11, 12, 13]] = [900.0, 400.0, 100.0, 39.0]     # the last has less light than the error
    flux = true + sn + rng.normal(0.0, 40.0, 60)
    f = measurement_figures(flux, err, true, sn, V)
    assert f["n_sn_visits"] == 3 and f["n"] == 57 and f["good"] and 0.6 < f["chi2_dof"] < 1.5
    assert f["chi2_dof_all"] > 10 and f["good_all"] is False
    none = measurement_figures(flux - sn, err, true, np.zeros(60), V)
    assert none["n_sn_visits"] == 0 and none["chi2_dof"] == none["chi2_dof_all"]


def test_validation_section_off_and_check():
    cfg = config.from_dict({})
    sec = lensed_images_section("/nonexistent", cfg, {}, cfg.validate)
    assert sec["value"] is None and "[lensmodel] and [lensphot]" in sec["reason"]
    name = 'lens_good_light_curves[S/N>=20, sep>=0.7"]'
    rep = {"lensed_images": {"good_fraction": 0.5}}
    got = [c for c in checks_of(rep, cfg.validate) if c["metric"] == name]
    assert got and got[0]["ok"] is False and got[0]["threshold"] == 0.9


def checks_of(partial, V):
    """validate's checks for a report holding only the lens sections (the others null)."""
    from twinkles_hpc.validation.products import null_metric
    off = null_metric("off")
    rep = {k: off for k in ("detection", "photometry", "pa1", "supernovae", "am1", "lenses")}
    rep.update(calibration={}, dia=off, database=off, cost={"coadd_peak_rss": off}, **partial)
    return checks(rep, V)


def write_run_products(rundir, seed=4):
    """A run directory holding only the lens products: one scene (two images, B fainter) and its
    lensphot files from a simulated double (lcsim, delay 32 d), one file per visit; returns (truth, sid)."""
    import h5py

    from test_timedelay import BRIGHT, cadence
    from twinkles_hpc.instrument import BANDS
    from twinkles_hpc.rundir import layout
    from twinkles_hpc.store.tables import write_table
    from twinkles_hpc.timedomain import lcsim
    curves, truth = lcsim.simulate_double(*cadence(), BRIGHT, seed=seed, index=0)
    sid = 3016000256
    scene = true_scene()
    scene.image_ra, scene.image_dec = scene.image_ra[:2], scene.image_dec[:2]
    scene.image_flux = {b: [1000.0, 3000.0] for b in BANDS}          # image 1 is the brighter: A
    scene.image_flux_err = {b: [10.0, 10.0] for b in BANDS}
    s, im, nb = lensphot.scene_rows(sid, scene, (0, 0))
    (rundir / "lenses").mkdir(parents=True)
    (rundir / "lensphot").mkdir()
    with h5py.File(rundir / layout.LENS_SCENES, "w") as fh:
        write_table(fh, "systems", s)
        write_table(fh, "images", im)
        write_table(fh, "neighbours", nb)
    for k, (t, b) in enumerate(zip(curves.mjd, curves.band)):
        r = np.zeros(2, lensphot.FORCED_DTYPE)
        r["lensSystemId"], r["lensedImageId"] = sid, im["lensedImageId"]
        r["ccdVisitId"], r["filterName"], r["midPointTai"] = k + 1, b, t
        for j, x in ((1, "A"), (0, "B")):
            f = 10 ** (-0.4 * (curves.mag[x][k] - 31.4))
            r["psFlux"][j], r["psFluxErr"][j] = f, f * curves.magerr[x][k] * np.log(10) / 2.5
        r["directFlux"], r["directFluxErr"] = r["psFlux"], r["psFluxErr"]
        with h5py.File(rundir / layout.lensphot(k + 1, b), "w") as fh:
            write_table(fh, "lensed_image_forced_source", r)
    return truth, sid, im


def test_timedelay_of_a_run_directory(tmp_path, capsys):
    import json

    from twinkles_hpc.cli import main
    truth, sid, im = write_run_products(tmp_path / "run")
    (got_sid, curves, ids), = lensphot.run_light_curves(str(tmp_path / "run"))
    assert got_sid == sid and ids == {"A": int(im["lensedImageId"][1]), "B": int(im["lensedImageId"][0])}
    assert main(["timedelay", str(tmp_path / "run"), "--json"]) == 0
    (entry,) = json.loads(capsys.readouterr().out)
    assert entry["lensSystemId"] == sid and entry["images"]["A"] == ids["A"]
    d = entry["delays"]["B"]
    assert d["delay"] is not None and abs(d["delay"] - truth["delay"]) < 3 * d["error"], (d, truth["delay"])


def test_time_delays_section_against_the_truth(tmp_path):
    """validate's time_delays: the run's delay of B against the true one when both images match a true
    image of one system (TDC1 metrics), none when B matches nothing (its estimate counted apart)."""
    from twinkles_hpc.validation.lensphot import time_delays_section
    truth, sid, im = write_run_products(tmp_path / "run")
    a_id, b_id = int(im["lensedImageId"][1]), int(im["lensedImageId"][0])
    ti = np.array([(10, 7, 0.0), (11, 7, truth["delay"])], [("image_id", "i8"), ("sys_id", "i8"), ("delay", "f8")])
    lensed = {"images": [{"lensedImageId": a_id, "truth_image_id": 10}, {"lensedImageId": b_id, "truth_image_id": 11}]}
    sec = time_delays_section(str(tmp_path / "run"), {"lensed_images": ti}, lensed)
    (pair,) = sec["pairs"]
    assert pair["pair"] == "B-A" and pair["true_delay"] == truth["delay"] and pair["delay"] is not None
    assert sec["n_pairs_with_truth"] == 1 and sec["f"] == 1.0 and sec["catastrophic"] == 0.0
    assert sec["chi2"] == ((pair["delay"] - truth["delay"]) / pair["error"]) ** 2 < 9.0
    from twinkles_hpc.cli import validation_summary
    line = validation_summary({"rundir": "run", "passed": True, "checks": [], "time_delays": sec}).splitlines()[-1]
    assert line.startswith("  info  time delays (drw) of 1 image pairs, 1 with a true delay: f 1.00, chi2"), line
    lensed["images"] = lensed["images"][:1]
    sec = time_delays_section(str(tmp_path / "run"), {"lensed_images": ti}, lensed)
    assert sec["n_pairs_with_truth"] == 0 and sec["n_estimates_without_truth"] == 1 and "reason" in sec
    off = time_delays_section(str(tmp_path / "run"), {"lensed_images": ti}, {"value": None, "reason": "off"})
    assert off["value"] is None and off["reason"] == "off"


def test_lensed_image_light_curve_from_the_database(tmp_path):
    from twinkles_hpc.rundir import layout
    from twinkles_hpc.store import db, ingest
    from twinkles_hpc.store.lightcurve import lensed_lightcurve
    _, sid, im = write_run_products(tmp_path)
    engine = db.connect(rundir=str(tmp_path))
    db.create_schema(engine)
    assert ingest.ingest_lensed_images(engine, str(tmp_path / layout.LENS_SCENES)) == 2
    paths = sorted(str(p) for p in (tmp_path / "lensphot").glob("*.h5"))
    n = ingest.ingest_lensed_forced(engine, paths)
    assert n == 2 * len(paths) and ingest.ingest_lensed_forced(engine, paths) == 0     # idempotent
    engine.dispose()
    iid = int(im["lensedImageId"][1])
    lc = lensed_lightcurve(str(tmp_path), iid, "g")
    assert len(lc) == (len(paths) + 2) // 3 and np.all(np.diff(lc["midPointTai"]) > 0)
    assert set(lc["filterName"]) == {"g"}
    assert np.allclose(lc["psMag"], 31.4 - 2.5 * np.log10(lc["psFlux"]))
    with pytest.raises(Exception, match="lensed-image"):
        lensed_lightcurve(str(tmp_path), 7, None)


def write_coadd(path, band, psf, rng):
    """A coadd file of the system (nJy, the planes and PSF grid a coadd has), its PSF as a six-component
    mixture (two copies of each of psf's three components at half weight: refitted by compact_psf)."""
    import h5py
    wcs = wcs_at(RA0, DEC0)
    data, var = render(wcs, psf, GAL_FLUX[band], IMG_FLUX[band], rng, depth=4.0)
    w, a, b, c = (np.concatenate([x, x]) for x in psf.comps)
    w = w / 2.0
    with h5py.File(path, "w") as fh:
        fh["image"], fh["variance"], fh["mask"] = data.astype(np.float32), var.astype(np.float32), \
            np.zeros(data.shape, np.uint16)
        for name, v in (("psf_weight", w), ("psf_cxx", a), ("psf_cxy", b), ("psf_cyy", c)):
            fh[name] = v[None, None, :]
        fh["psf_n_inputs"], fh["psf_ap_corr"] = np.ones((1, 1), np.int32), np.ones((1, 1))
        fh.attrs["psf_grid_step"] = 1000
        fh.attrs["wcs"] = wcs.to_header().tostring()
        fh.attrs["inputs"] = ["v1"]


def test_model_system_and_coadd_scene_on_coadd_files(tmp_path):
    """The stage's path: coadd files with a many-component PSF, the candidate's two DiaObjects as the start;
    the scene is found, and coadd_scene's model leaves a residual at the noise."""
    import h5py
    rng = np.random.default_rng(3)
    psf = FixedPSF(3.5)
    for b in "gri":
        write_coadd(tmp_path / f"{b}.h5", b, psf, rng)
    coadds = {b: h5py.File(tmp_path / f"{b}.h5", "r") for b in "gri"}
    try:
        cand = np.zeros(1, [("ra", "f8"), ("decl", "f8"), ("lensCandidateId", "i8")])[0]
        cand["ra"], cand["decl"] = RA0, DEC0
        ra, dec = image_radec()
        scene, info = lensphot.model_system(cand, (ra[:2], dec[:2]), coadds, wcs_at(RA0, DEC0), None, SCALE)
    finally:
        for f in coadds.values():
            f.close()
    assert scene.n_images == 4, info["log"]
    got = np.c_[tangent_arcsec(scene.image_ra, scene.image_dec, RA0, DEC0)]
    assert all(np.hypot(*(got - o).T).min() < 0.05 for o in OFFSETS)
    data, model, noise = lensphot.coadd_scene(scene, tmp_path / "r.h5", 20)
    assert data.shape == (41, 41) and np.isfinite(model).all()
    resid = (data - model) / noise
    assert abs(np.nanmean(resid)) < 0.2 and np.nanstd(resid) < 2.0


def test_visit_without_calibration_has_no_rows(tmp_path):
    """A calexp whose calibration failed (no pixels, no WCS) gives an empty table, not an error."""
    import h5py
    with h5py.File(tmp_path / "c.h5", "w") as fh:
        fh.attrs["calib_ok"], fh.attrs["calib_failure"] = False, "too few reference stars"
    with h5py.File(tmp_path / "c.h5", "r") as fh:
        rows = lensphot.photometer_visit([(1, true_scene(), (0, 0))], {"visit_id": 5, "band": "u", "mjd": 1.0},
                                         fh, None, {})
    assert rows.dtype == lensphot.FORCED_DTYPE and len(rows) == 0


def test_stage_shares_joined_equal_one_task(tmp_path):
    """The lensmodel stage's candidates shared among two tasks (the k-th in lensCandidateId order to task k
    mod 2) and joined by a third give the scenes.h5 of one task, bit for bit; the shares are removed and
    recorded as such; a candidate off the tract is logged, not fitted."""
    from types import SimpleNamespace

    import h5py
    from twinkles_hpc.parallel.journal import REMOVED
    from twinkles_hpc.pipeline.stages.lensmodel import STAGE
    from twinkles_hpc.rundir import layout
    from twinkles_hpc.rundir.task import Task
    from twinkles_hpc.store.tables import write_table

    ra, dec = image_radec()
    cand = np.zeros(3, [("lensCandidateId", "i8"), ("ra", "f8"), ("decl", "f8")])
    cand["lensCandidateId"], cand["ra"], cand["decl"] = [30, 10, 20], [RA0, RA0, RA0 + 1.0], [DEC0, DEC0, DEC0]
    members = np.zeros(5, [("lensCandidateId", "i8"), ("diaObjectId", "i8")])
    members["lensCandidateId"], members["diaObjectId"] = [10, 10, 30, 30, 20], [1, 2, 1, 2, 3]
    dobj = np.zeros(3, [("diaObjectId", "i8"), ("ra", "f8"), ("decl", "f8")])
    dobj["diaObjectId"], dobj["ra"], dobj["decl"] = [1, 2, 3], [ra[0], ra[1], RA0 + 1.0], [dec[0], dec[1], DEC0]

    def context(d):
        for b in "gri":
            (d / "coadd" / b).mkdir(parents=True)
            write_coadd(d / layout.coadd(b, 0, 0), b, FixedPSF(3.5), np.random.default_rng(ord(b)))
        for rel, tables in ((layout.LENS_CANDIDATES, {"candidates": cand, "members": members}),
                            (layout.DIA_OBJECT, {"dia_object": dobj})):
            (d / rel).parent.mkdir(parents=True, exist_ok=True)
            with h5py.File(d / rel, "w") as fh:
                for name, t in tables.items():
                    write_table(fh, name, t)
        sky = SimpleNamespace(wcs=wcs_at(RA0, DEC0), patches=[SimpleNamespace(index=(0, 0), inner_bbox=(0, 0, N, N))])
        cfg = SimpleNamespace(cadence=SimpleNamespace(bands="gri"), objects=SimpleNamespace(enabled=False),
                              sensor=SimpleNamespace(pixel_scale=SCALE))
        return SimpleNamespace(path=lambda rel: str(d / rel), skymap=sky, cfg=cfg, log_line=lambda m: None)

    one = context(tmp_path / "one")
    assert STAGE.run(one, Task("lensmodel", "lensmodel"), lambda: False) == {
        layout.LENS_SCENES: (tmp_path / "one" / layout.LENS_SCENES).stat().st_size}
    two = context(tmp_path / "two")
    for k in range(2):
        out = STAGE.run(two, Task(f"lensmodel/s{k:03d}", "lensmodel", params={"share": k, "shares": 2}), None)
        assert list(out) == [layout.lens_scenes_share(k)]
    out = STAGE.run(two, Task("lensmodel", "lensmodel", params={"step": "merge", "shares": 2}), None)
    assert out[layout.lens_scenes_share(0)] == out[layout.lens_scenes_share(1)] == REMOVED
    assert not list((tmp_path / "two" / "lenses").glob("scenes-s*.h5"))
    with h5py.File(tmp_path / "one" / layout.LENS_SCENES, "r") as a, \
            h5py.File(tmp_path / "two" / layout.LENS_SCENES, "r") as b:
        assert sorted(a) == sorted(b) == ["images", "neighbours", "systems"]
        for k in a:
            assert a[k][...].tobytes() == b[k][...].tobytes(), k
        assert list(a["systems"]["lensSystemId"]) == [10, 30] and len(a["images"]) == 8
        assert a.attrs["log"] == b.attrs["log"] and '"20": "off the tract"' in a.attrs["log"]
