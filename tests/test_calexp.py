"""The calexp stage in a run: calibrated against the reference catalogue, compared with the truth."""
import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS
from conftest import campaign_run, cli, small_field_toml

from twinkles_hpc import instrument
from twinkles_hpc.level2.masks import CR, DETECTED
from twinkles_hpc.store.atomic import open_read

CALEXP_TOML = small_field_toml("max_visits = 6", "[calexp]\nenabled = true")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return campaign_run(tmp_path_factory, "calexp", CALEXP_TOML)


def test_calexps_recover_true_wcs_and_zero_point(run):
    calexps = sorted((run / "calexp").glob("v*.h5"))
    assert len(calexps) == 6
    for path in calexps:
        with open_read(path) as c, open_read(run / "visit" / path.name) as e:
            assert c["image"].dtype == np.float32 and c["mask"].dtype == np.uint16
            assert c["variance"].shape == c["image"].shape == (1600, 1600)
            a, t = dict(c.attrs), dict(e.attrs)
            assert "true_wcs" not in a and "psf" in a and "zero_point" in a
            assert np.any(c["mask"][...] & DETECTED)             # detection footprints
        fitted = WCS(fits.Header.fromstring(a["wcs"]))
        true = WCS(fits.Header.fromstring(t["true_wcs"]))
        nominal = WCS(fits.Header.fromstring(t["wcs"]))
        yy, xx = np.mgrid[0:1600:200, 0:1600:200]
        def offset_mas(w):
            r1, d1 = true.all_pix2world(xx.ravel(), yy.ravel(), 0)
            r2, d2 = w.all_pix2world(xx.ravel(), yy.ravel(), 0)
            return np.hypot((r1 - r2) * np.cos(np.deg2rad(d1)), d1 - d2) * 3.6e6
        assert offset_mas(nominal).mean() > 200                 # the pointing error is real
        off = offset_mas(fitted)
        print(path.name, "astrometric offset from truth: mean %.1f max %.1f mas; zp - true %+.1f mmag"
              % (off.mean(), off.max(), 1e3 * (a["zero_point"] - (instrument.ZEROPOINT[a["band"]]
                 + 2.5 * np.log10(a["exptime"]) - instrument.K_ATM[a["band"]] * (a["airmass"] - 1)))))
        # a 1600 px sensor holds 20-80 reference stars: the fitted scale and rotation carry a few mas
        assert off.mean() < 15 and off.max() < 40, path.name
        b = a["band"]
        zp_true = (instrument.ZEROPOINT[b] + 2.5 * np.log10(a["exptime"])
                   - instrument.K_ATM[b] * (a["airmass"] - 1))
        # issue 4 targets 5 mmag; on this small sensor (20-50 reference stars) the worst band is within 7
        assert abs(a["zero_point"] - zp_true) < 0.010, (path.name, a["zero_point"] - zp_true)
        assert a["flux_njy_per_electron"] == pytest.approx(10 ** (-0.4 * (a["zero_point"] - 31.4)))
    st = cli("status", run, check=True).stdout
    assert "calexp" in st


def test_calexp_source_tables(run):
    """Every calexp keeps its detections: sky positions through the fitted WCS that match the reference
    catalogue, calibrated PSF fluxes, centroid errors that describe the scatter about the truth."""
    from astropy.coordinates import SkyCoord

    from twinkles_hpc.level2.calibrate import SOURCE_DTYPE, SRC_CR, SRC_EDGE
    from twinkles_hpc.store.tables import read_table
    with open_read(run / "refcat.h5") as fh:
        ref = read_table(fh["refcat"])
    with open_read(run / "truth.h5") as fh:
        true_stars = read_table(fh["stars"])
    pulls = []
    for path in sorted((run / "calexp").glob("v*.h5")):
        with open_read(path) as fh:
            src, a, mask = read_table(fh["sources"]), dict(fh.attrs), fh["mask"][...]
        assert src.dtype == SOURCE_DTYPE and len(src) == a["n_detections"] > 0
        assert src["calib_astrometry_used"].sum() == a["n_astrometry"]
        assert src["calib_psf_candidate"].sum() >= a["n_psf_stars"]
        ra, dec = WCS(fits.Header.fromstring(a["wcs"])).all_pix2world(src["x"], src["y"], 0)
        # the stored header's printed digits: micro-arcseconds
        assert np.abs(ra - src["ra"]).max() < 1e-9 and np.abs(dec - src["dec"]).max() < 1e-9
        sc = SkyCoord(src["ra"], src["dec"], unit="deg")
        i, d, _ = sc.match_to_catalog_sky(SkyCoord(ref["ra"], ref["dec"], unit="deg"))
        bright = (d.arcsec < 0.5) & (src["flags"] == 0) & (src["snr"] > 100)
        # the WCS fit (5-8 mas from the truth) and the reference positions' errors: < 10 mas typical
        off = d.mas[bright]
        assert bright.sum() >= 5 and np.median(off) < 12 and off.max() < 30, (path.name, off)
        ratio = src["psFlux"][bright] / 10 ** (-0.4 * (ref[f"mag_{a['band']}"][i[bright]] - 31.4))
        assert np.median(ratio) == pytest.approx(1.0, abs=0.01), path.name
        # faint enough that the centroid, not the WCS, dominates: offsets from the truth / x_err
        it, dt, _ = sc.match_to_catalog_sky(SkyCoord(true_stars["ra"], true_stars["dec"], unit="deg"))
        m = (dt.arcsec < 0.5) & (src["flags"] == 0) & (src["snr"] > 10) & (src["snr"] < 100)
        dra = (src["ra"] - true_stars["ra"][it]) * np.cos(np.deg2rad(src["dec"]))
        pulls += [np.r_[dra[m], (src["dec"] - true_stars["dec"][it])[m]] * 3600 / 0.2 / np.tile(src["x_err"][m], 2)]
        # flags from the mask planes: CR within the PSF-fit radius, EDGE next to the border
        cy, cx = np.nonzero(mask & CR)
        near = [np.hypot(cx - x, cy - y).min() if cx.size else np.inf for x, y in zip(src["x"], src["y"])]
        assert all(n < 20 for n in np.array(near)[(src["flags"] & SRC_CR) > 0])
        # (a bright star's detection footprint can reach the border from further in: EDGE too)
        inner = (src["x"] > 40) & (src["x"] < 1560) & (src["y"] > 40) & (src["y"] < 1560) & (src["snr"] < 100)
        assert not (src["flags"][inner] & SRC_EDGE).any()
        assert (src["flags"][(src["x"] < 8) | (src["y"] < 8) | (src["x"] > 1591) | (src["y"] > 1591)] & SRC_EDGE).all()
    pull = np.concatenate(pulls)
    print("centroid pulls, SNR 10-100:", pull.size, "std %.2f" % np.std(pull))
    assert pull.size > 100 and 0.65 < np.std(pull) < 1.2


def _blank_visit(run, tmp, vid):
    """A copy of the run's first eimage as visit `vid` with the sky (and its noise) but no stars: it
    cannot be calibrated. Returns (visit row, a calibrated visit of the same band)."""
    import h5py

    from twinkles_hpc.rundir.layout import calexp as calexp_relpath
    from twinkles_hpc.rundir.layout import eimage as eimage_relpath
    good = sorted((run / "calexp").glob("v*.h5"))[0]
    with open_read(good) as fh:
        gid, band = int(fh.attrs["visit_id"]), str(fh.attrs["band"])
    for d in ("visit", "calexp"):
        (tmp / d).mkdir(parents=True, exist_ok=True)
    (tmp / "refcat.h5").write_bytes((run / "refcat.h5").read_bytes())
    (tmp / calexp_relpath(gid, band)).write_bytes((run / calexp_relpath(gid, band)).read_bytes())
    src = tmp / eimage_relpath(vid, band)
    src.write_bytes((run / eimage_relpath(gid, band)).read_bytes())
    with h5py.File(src, "r+") as fh:
        img = fh["image"]
        sky = float(np.median(img[...]))
        rng = np.random.default_rng(1)
        img[...] = (sky + rng.normal(0, np.sqrt(sky), img.shape)).astype(np.float32)
        fh.attrs["visit_id"] = vid
    return {"visit_id": vid, "band": band}, {"visit_id": gid, "band": band}


def test_uncalibratable_visit_is_recorded_and_skipped_downstream(run, tmp_path):
    from twinkles_hpc import rundir as rd
    from twinkles_hpc.level2.calibrate import calexp_ok
    from twinkles_hpc.level2.forced import FORCED_SOURCE_DTYPE
    from twinkles_hpc.pipeline.context import RunContext
    from twinkles_hpc.pipeline.registry import stage
    from twinkles_hpc.pipeline.stage import Upstream
    from twinkles_hpc.pipeline.stages.coadd import make_skymap
    from twinkles_hpc.rundir import layout
    from twinkles_hpc.rundir.status import calib_failures
    from twinkles_hpc.rundir.task import Task
    from twinkles_hpc.store.tables import read_table
    bad, good = _blank_visit(run, tmp_path, 99999999)
    cfg = rd.load_config(str(run))
    cfg.coadd.enabled = True
    visits = rd.read_visits(str(run))
    good_row = visits[visits["visit_id"] == good["visit_id"]]
    bad_row = good_row.copy()
    bad_row["visit_id"] = bad["visit_id"]
    lines = []
    ctx = RunContext(cfg, str(tmp_path), np.concatenate([good_row, bad_row]), log=lines.append)
    out = stage("calexp").run(ctx, Task("calexp/99999999", "calexp", params={"visit_id": bad["visit_id"]}), None)
    path = tmp_path / next(iter(out))
    with open_read(path) as fh:
        a = dict(fh.attrs)
        assert "image" not in fh and "mask" not in fh and "sources" not in fh
    assert not a["calib_ok"] and "astrometry" in a["calib_failure"] and "\n" not in a["calib_failure"]
    assert a["visit_id"] == 99999999 and a["band"] == bad["band"] and "zero_point" not in a
    assert len(lines) == 1 and "99999999" in lines[0] and "calibration failed" in lines[0]
    assert not calexp_ok(path)
    assert calexp_ok(tmp_path / layout.calexp(good["visit_id"], good["band"]))
    # the coadd of a patch both visits overlap uses the good calexp only
    ctx_good = RunContext(cfg, None, good_row)
    ctx.skymap = ctx_good.skymap = make_skymap(cfg, good_row)
    up = Upstream()
    up.add("calexp", [Task(layout.task_id("calexp", layout.visit_key(good["visit_id"])), "calexp")])
    task = stage("coadd").tasks(ctx_good, up.view(stage("coadd")))[0]
    task.params["visit_ids"] = [good["visit_id"], bad["visit_id"]]
    rel = stage("coadd").run(ctx, task, None)
    with open_read(tmp_path / next(iter(rel))) as fh:
        inputs = list(fh.attrs["inputs"])
        assert (fh["n_visits"][...] <= 1).all() and (fh["n_visits"][...] == 1).any()
    assert inputs == [f"v{good['visit_id']:08d}-{good['band']}.h5"]
    # forced photometry of the failed visit: an empty table of the right dtype, no objects read
    rel = stage("forced").run(ctx, Task("forced/99999999", "forced", params={"visit_id": bad["visit_id"],
                                                                         "patches": [(0, 0)]}), None)
    with open_read(tmp_path / next(iter(rel))) as fh:
        rows = read_table(fh["forced_source"])
    assert len(rows) == 0 and rows.dtype == FORCED_SOURCE_DTYPE
    # status counts the failure
    fails = calib_failures(str(tmp_path), np.array([(bad["visit_id"], bad["band"]), (good["visit_id"],
                                    good["band"])], dtype=[("visit_id", "i8"), ("band", "U1")]),
                                    {"calexp/99999999", f"calexp/{good['visit_id']:08d}"})
    assert list(fails) == [99999999] and "astrometry" in fails[99999999]


def test_genuine_errors_still_raise(run, tmp_path):
    from twinkles_hpc.level2.calibrate import calibrate_visit
    eimage = sorted((run / "visit").glob("v*.h5"))[0]
    with pytest.raises(TypeError):
        calibrate_visit(eimage, None, tmp_path / "c.h5")
    assert not (tmp_path / "c.h5").exists()


#: u and r visits of a 700 px sensor: the u visits have too few reference stars to calibrate.
FEW_STARS_TOML = """
[run]
seed = 7
[cadence]
max_visits = 6
bands = "ur"
[sky]
radius = 0.04
galaxy_mag_limit = 25.0
star_mag_limit = 25.0
star_density_scale = 3.0
[supernovae]
enabled = false
[lensing]
enabled = false
[sensor]
nx = 700
ny = 700
[calexp]
enabled = true
[coadd]
enabled = true
patch_size = 700
memory_per_rank = 16777216
[objects]
enabled = true
[forced]
enabled = true
"""


def test_run_with_uncalibratable_visits_completes(tmp_path):
    import json

    from twinkles_hpc.store.tables import read_table
    (tmp_path / "c.toml").write_text(FEW_STARS_TOML)
    run = tmp_path / "run"
    r = cli("run", tmp_path / "c.toml", "-o", run, mpi=2, check=True, timeout=900)
    ok, failed = {}, {}
    for path in sorted((run / "calexp").glob("v*.h5")):
        with open_read(path) as fh:
            a = dict(fh.attrs)
            (ok if a["calib_ok"] else failed)[int(a["visit_id"])] = (path.name, a.get("calib_failure"))
            assert ("image" in fh) == ("sources" in fh) == bool(a["calib_ok"])
    assert ok and failed, "the config should give calibrated and uncalibratable visits"
    assert {n[0][-4] for n in failed.values()} == {"u"}
    log = [line for line in r.stdout.splitlines() if "calibration failed" in line]
    assert len(log) == len(failed) and all(any(f"visit {v} " in line for line in log) for v in failed)
    for path in (run / "coadd").glob("[a-z]/patch-*.h5"):
        with open_read(path) as fh:
            assert set(fh.attrs["inputs"]) <= {n for n, _ in ok.values()}
    for v, (name, _) in {**ok, **failed}.items():
        with open_read(run / "forced" / name) as fh:
            rows = read_table(fh["forced_source"])
        assert (len(rows) > 0) == (v in ok), name
    st = json.loads(cli("status", run, "--json", check=True).stdout)
    assert st["complete"] and sorted(int(k) for k in st["calib_failed"]) == sorted(failed)
    assert f"calibration failed: {len(failed)} visit(s)" in cli("status", run, check=True).stdout


def test_run_where_no_visit_calibrates_completes(tmp_path):
    """A 400 px sensor in u: no visit calibrates; the coadds are empty, the patch has no Objects."""
    from twinkles_hpc.store.tables import read_table
    toml = FEW_STARS_TOML.replace('bands = "ur"', 'bands = "u"').replace("max_visits = 6", "max_visits = 2")
    toml = toml.replace("= 700", "= 400")
    (tmp_path / "c.toml").write_text(toml)
    run = tmp_path / "run"
    r = cli("run", tmp_path / "c.toml", "-o", run, mpi=2, check=True, timeout=900)
    assert r.stdout.count("calibration failed") == 2
    objects = sorted((run / "objects").glob("patch-*.h5"))
    assert objects
    for path in objects:
        with open_read(path) as fh:
            assert len(read_table(fh["objects"])) == 0 and list(fh.attrs["bands"]) == ["u"]
    for path in (run / "forced").glob("v*.h5"):
        with open_read(path) as fh:
            assert len(read_table(fh["forced_source"])) == 0
