"""The diffim stage on a sky without variables (conftest.TEMPLATE_TOML: 8 r visits, templates of the 4
best-seeing): every calexp gets a difference with its PSF, variance, mask and summary; the noise is
calibrated; DiaSources are few, within 2x the Gaussian expectation; a visit without a template is recorded,
never a crash; the product is the same when the task runs again."""
import json
import os

import numpy as np
import pytest

from twinkles_hpc import rundir as rd
from twinkles_hpc.level2.detect import matched_filter
from twinkles_hpc.pipeline.context import RunContext
from twinkles_hpc.pipeline.registry import stage
from twinkles_hpc.pipeline.setup import plan
from twinkles_hpc.pipeline.stages.diffim import DIA_SOURCE_ID_STRIDE, diffim_ok
from twinkles_hpc.rundir import layout
from twinkles_hpc.store.atomic import atomic_h5, open_read
from twinkles_hpc.timedomain import dia

#: DiaSource flags that mark a detection as not a clean point source
SUSPECT = dia.DIA_EDGE | dia.DIA_SATURATED | dia.DIA_CR | dia.DIA_BAD_SUBTRACTION | dia.DIA_DIPOLE | dia.DIA_NO_FLUX


def _products(run):
    visits = rd.read_visits(run)
    out = []
    for v in visits:
        path = run / layout.diffim(int(v["visit_id"]), str(v["band"]))
        with open_read(path) as fh:
            a = dict(fh.attrs)
            planes = {k: fh[k][...] for k in fh}
        out.append((v, a, planes))
    return out


@pytest.fixture(scope="module")
def products(template_run):
    return _products(template_run)


def test_every_visit_has_a_difference_with_its_planes_and_summary(template_run, products):
    assert len(products) == 8
    assert all(a["diffim_ok"] for _, a, _ in products)
    for v, a, p in products:
        with open_read(template_run / layout.calexp(int(v["visit_id"]), "r")) as fh:
            shape = fh["image"].shape
        assert p["image"].shape == p["variance"].shape == p["mask"].shape == shape
        s = json.loads(a["summary"])
        assert s["direction"] == "preconvolved" and s["n_used"] >= 20 and 0.97 < s["kernel_sum"] < 1.03
        assert s["template_coverage"] > 0.85 and a["template_patches"].size >= 1
        assert abs(p["psf"].sum() - 1) < 1e-5 and p["psf"].shape[0] % 2 == 1
        ok = np.isfinite(p["image"])
        assert ok.mean() > 0.8 and (p["variance"][ok] > 0).all()
        # the variance plane was calibrated on the difference itself: pixel significances have unit spread
        z = (p["image"] / np.sqrt(p["variance"]))[ok & ((p["mask"] & dia.DIA_BAD_BITS) == 0)]
        assert abs(1.4826 * np.median(np.abs(z - np.median(z))) - 1) < 0.02 and abs(np.median(z)) < 0.05
        d = p["dia_source"]
        assert (d["diaSourceId"] // DIA_SOURCE_ID_STRIDE == v["visit_id"]).all()
        assert (d["diaSourceId"] % DIA_SOURCE_ID_STRIDE == np.arange(1, len(d) + 1)).all()
        assert (d["filterName"] == b"r").all() and (d["midPointTai"] == v["mjd"]).all()


def test_false_detections_within_twice_the_gaussian_expectation(products):
    """Clean DiaSources (no suspect flag) on a sky without variables are noise peaks: at most 2x the
    Gaussian field's expectation over the area searched, summed over the visits."""
    n_clean = n_all = 0
    expected = 0.0
    for _, a, p in products:
        s = json.loads(a["summary"])
        d = p["dia_source"]
        n_all += len(d)
        n_clean += int(((d["flags"] & SUSPECT) == 0).sum())
        expected += s["gaussian_false_per_mpx"] * np.isfinite(p["image"]).sum() / 1e6
    assert 1.0 < expected < 40.0
    assert n_clean <= 2.0 * expected, (n_clean, n_all, expected)
    assert n_all < 20 * expected            # the rest are flagged residuals of bright stars


def test_blank_sky_psf_fluxes_have_unit_significance(template_run, products):
    """PSF fluxes at random positions 15 px or more from every calexp source (another stream than the
    calibration's): flux / error has mean 0 +- 0.1 and standard deviation 1 +- 0.1, for every visit."""
    from scipy.spatial import cKDTree
    for v, a, p in products:
        psf = dia.product_psf(a, p["psf"])
        err_scale = json.loads(a["summary"])["flux_error_scale"]
        with open_read(template_run / layout.calexp(int(v["visit_id"]), "r")) as fh:
            src = fh["sources"][...]
        rng = np.random.default_rng([7, int(v["visit_id"])])
        ny, nx = p["image"].shape
        x, y = rng.uniform(30, nx - 30, 3000), rng.uniform(30, ny - 30, 3000)
        far = cKDTree(np.c_[src["x"], src["y"]]).query(np.c_[x, y])[0] >= 15
        x, y = x[far], y[far]
        phot = dia.measure(p["image"], p["variance"], p["mask"], x, y, psf)
        z = phot["psf_flux"] / (phot["psf_flux_err"] * err_scale)
        z = z[np.isfinite(z) & (phot["flags"] == 0)]
        assert z.size > 1000
        assert abs(z.mean()) < 0.1 and abs(z.std() - 1) < 0.1, (v["visit_id"], z.size, z.mean(), z.std())


def test_expected_false_rate_matches_a_simulated_gaussian_field():
    """Every excursion (min_npix 1) of a white-noise image filtered with the PSF, at 3.5 and 4 sigma: the
    Euler-characteristic expectation (175 and 31 over 1.44 Mpx)."""
    rng = np.random.default_rng(3)
    img = rng.standard_normal((1200, 1200)).astype(np.float32)
    var = np.ones_like(img)
    psf = dia.DiffPSF(_gauss_stamp(2.0))
    counts = [len(dia.detect_dia_sources(img, var, np.zeros(img.shape, np.uint16), psf, threshold=t, min_npix=1))
              for t in (3.5, 4.0)]
    scale, lambda2 = dia.noise_scale(img, var, np.zeros(img.shape, np.uint16), psf.fwhm_px)
    assert abs(scale - 1) < 0.01 and abs(lambda2 - 1 / (2 * 2.0 ** 2)) < 0.01   # white noise, filter sigma 2
    for t, n in zip((3.5, 4.0), counts):
        want = dia.expected_false_per_mpx(t, lambda2) * img.size / 1e6
        assert abs(n - want) < 3 * np.sqrt(want) + 0.15 * want, (t, n, want)


def _gauss_stamp(sigma, h=10):
    yy, xx = np.mgrid[-h:h + 1, -h:h + 1]
    g = np.exp(-(xx ** 2 + yy ** 2) / (2 * sigma ** 2))
    return g / g.sum()


def test_a_visit_without_a_template_is_recorded_not_fatal(template_run, tmp_path):
    cfg = rd.load_config(template_run)
    os.symlink(template_run / "calexp", tmp_path / "calexp")
    _, tasks = plan(cfg, template_run)
    t = next(t for t in tasks if t.kind == "diffim")
    for p in t.params["patches"]:                       # templates recorded as not made
        path = tmp_path / layout.template("r", *p)
        os.makedirs(path.parent, exist_ok=True)
        with atomic_h5(str(path)) as fh:
            fh.attrs.update(ok=False, reason="too few visits")
    ctx = RunContext(cfg, str(tmp_path), rd.read_visits(template_run), log=(lines := []).append)
    out = stage("diffim").run(ctx, t, None)
    path = tmp_path / next(iter(out))
    assert not diffim_ok(path)
    with open_read(path) as fh:
        assert "was not made (too few visits)" in fh.attrs["diffim_failure"] and "image" not in fh
        assert len(fh["dia_source"]) == 0
    assert len(lines) == 1 and "no difference image" in lines[0]


def test_the_task_run_again_gives_the_same_product_and_its_fits_export(template_run, tmp_path):
    from astropy.io import fits
    cfg = rd.load_config(template_run)
    cfg.diffim.fits = True
    for d in ("calexp", "template"):
        os.symlink(template_run / d, tmp_path / d)
    _, tasks = plan(cfg, template_run)
    t = [t for t in tasks if t.kind == "diffim"][3]
    ctx = RunContext(cfg, str(tmp_path), rd.read_visits(template_run), log=lambda m: None)
    rel, rel_fits = stage("diffim").run(ctx, t, None)
    with open_read(tmp_path / rel) as a, open_read(template_run / rel) as b:
        assert sorted(a) == sorted(b)
        for k in a:
            assert a[k][...].tobytes() == b[k][...].tobytes(), k
        assert a.attrs["summary"] == b.attrs["summary"]
        with fits.open(tmp_path / rel_fits) as hdul:
            assert [h.name for h in hdul] == ["PRIMARY", "VARIANCE", "MASK", "PSF"]
            for h, k in zip(hdul, ("image", "variance", "mask", "psf")):
                assert np.array_equal(h.data, a[k][...], equal_nan=k != "mask"), k
            assert hdul[0].header["VISIT"] == t.params["visit_id"] and hdul[0].header["DIRECTN"] == "preconvolved"
            assert hdul[0].header["CTYPE1"].startswith("RA---")


def test_yearly_templates_each_visit_waits_for_its_years_template(template_run):
    """mode = "yearly": a visit of year k depends on the year-k template tasks of its band (built from the
    years before k; year 0 from year 1), and with first_year = "skip" a year-0 visit depends on none."""
    from twinkles_hpc.pipeline.stages.template import visit_years
    cfg = rd.load_config(template_run)
    cfg.template.mode = "yearly"
    visits = rd.read_visits(template_run)
    years = dict(zip(visits["visit_id"].tolist(), visit_years(visits).tolist()))
    _, tasks = plan(cfg, template_run)
    diff = [t for t in tasks if t.kind == "diffim"]
    assert len(diff) == len(visits)
    for t in diff:
        tdeps = [d for d in t.deps if d.startswith("template/")]
        assert tdeps and all(d.split("/")[2] == str(years[t.params["visit_id"]]) for d in tdeps), (t.id, tdeps)
        assert t.params["year"] == years[t.params["visit_id"]]
    cfg.template.first_year = "skip"
    _, tasks = plan(cfg, template_run)
    first = [t for t in tasks if t.kind == "diffim" and years[t.params["visit_id"]] == 0]
    assert first and all(not any(d.startswith("template/") for d in t.deps) for t in first)


def test_shared_mask_and_filter_give_the_same_sources_and_scale():
    """The stage computes the unusable pixels and the matched filter once and hands them to the noise
    calibration and the detection: the same DiaSources (bytes) and noise scale as each step alone, on a
    difference with brightenings, fadings, NaN pixels and masked bits."""
    rng = np.random.default_rng(11)
    img = rng.standard_normal((300, 320)).astype(np.float32)
    var = np.ones_like(img)
    stamp = _gauss_stamp(2.0)
    h = stamp.shape[0] // 2
    for x, y, f in ((60, 70, 60.0), (200, 150, -50.0), (250, 240, 45.0)):
        img[y - h:y + h + 1, x - h:x + h + 1] += np.float32(f) * stamp.astype(np.float32)
    img[100:104, 30:40] = np.nan
    mask = np.zeros(img.shape, np.uint16)
    mask[150:160, 50:55] = dia.DIA_BAD_BITS & -dia.DIA_BAD_BITS        # the lowest bad bit
    psf = dia.DiffPSF(stamp)
    bad = dia.unusable(img, var, mask)
    assert bad[100:104, 30:40].all() and bad[150:160, 50:55].all() and bad.sum() == 90
    filtered = matched_filter(img, var, psf.fwhm_px, mask=bad)
    alone = dia.detect_dia_sources(img, var, mask, psf, min_npix=1)
    shared = dia.detect_dia_sources(img, var, mask, psf, min_npix=1, bad=bad, filtered_image=filtered[0])
    assert len(alone) >= 3 and (alone["flags"] & dia.DIA_NEGATIVE).any()
    assert alone.tobytes() == shared.tobytes()
    assert (dia.noise_scale(img, var, mask, psf.fwhm_px)
            == dia.noise_scale(img, var, mask, psf.fwhm_px, bad=bad, filtered=filtered))
