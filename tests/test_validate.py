"""`twinkles-hpc validate`: metric functions on synthetic inputs with known answers, and the command on the
Level 2 run (numbers recomputed independently from the files), its thresholds and exit codes."""
import json
import shutil

import numpy as np
import pytest
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.wcs import WCS
from conftest import cli

from twinkles_hpc import config, instrument
from twinkles_hpc.errors import InputError
from twinkles_hpc.store.atomic import open_read
from twinkles_hpc.validation import metrics
from twinkles_hpc.validation.match import brightest_within
from twinkles_hpc.level2.psf import fwhm_from_json


# -- metric functions ----------------------------------------------------------------------------------
@pytest.mark.parametrize("sigma_mmag", [5.0, 12.0])
def test_pa1_recovers_gaussian_scatter(sigma_mmag):
    rng = np.random.default_rng(1)
    n_star, n_visit = 3000, 6
    star = np.repeat(np.arange(n_star), n_visit)
    mag = rng.uniform(17, 21.5, n_star)[star] + rng.normal(0, sigma_mmag / 1e3, star.size)
    res = metrics.pa1(star, mag, shuffles=50, seed=3)
    # IQR width of 3000 differences: 2.7% per shuffle; the shuffles share stars, so allow 5%
    assert res["pa1_mmag"] == pytest.approx(sigma_mmag, rel=0.05)
    assert res["pa1_rms_mmag"] == pytest.approx(sigma_mmag, rel=0.05)
    # the median sample std (ddof 1) of 6 Gaussian draws is 0.96 sigma
    assert res["median_star_rms_mmag"] == pytest.approx(0.96 * sigma_mmag, rel=0.05)
    assert res["n_stars"] == n_star and res["n_measurements"] == star.size
    assert metrics.pa1(star, mag, shuffles=50, seed=3) == res              # keyed by the seed
    assert metrics.pa1(star, mag, shuffles=50, seed=4)["pa1_mmag"] != res["pa1_mmag"]


def test_pa1_ignores_single_visits_and_outliers_barely_move_it():
    rng = np.random.default_rng(2)
    star = np.repeat(np.arange(2000), 4)
    mag = 20 + rng.normal(0, 0.005, star.size)
    mag[::97] += 0.5                                       # 1% catastrophic outliers: IQR is robust
    single = np.arange(2000, 2100)                         # one visit each: left out
    res = metrics.pa1(np.r_[star, single], np.r_[mag, np.full(100, 25.0)], seed=0)
    assert res["n_stars"] == 2000
    assert res["pa1_mmag"] == pytest.approx(5.0, rel=0.08)
    assert res["pa1_rms_mmag"] > 20                        # the rms is not robust
    assert metrics.pa1(np.array([1, 2]), np.array([20.0, 21.0])) is None


def _star_field(n_side, size_arcmin, rng):
    g = (np.arange(n_side) + 0.5) / n_side * size_arcmin / 60.0
    dx, dy = np.meshgrid(g, g)
    dec0 = -27.44
    return 53.0 + dx.ravel() / np.cos(np.deg2rad(dec0)), dec0 + dy.ravel()


def test_am1_recovers_positional_scatter():
    rng = np.random.default_rng(5)
    ra0, dec0 = _star_field(12, 12.0, rng)
    n_visit, sigma_mas = 20, 10.0
    star = np.repeat(np.arange(ra0.size), n_visit)
    visit = np.tile(np.arange(n_visit), ra0.size)
    ddec = rng.normal(0, sigma_mas, star.size) / 3.6e6
    dra = rng.normal(0, sigma_mas, star.size) / 3.6e6 / np.cos(np.deg2rad(dec0[star]))
    res, n_pairs = metrics.am_x(star, visit, ra0[star] + dra, dec0[star] + ddec)
    assert n_pairs > 100 and res["n_pairs"] == n_pairs
    # the separation of two stars moves by both stars' scatter along the line: sqrt(2) sigma; the median
    # of the per-pair sample std (19 dof) is 0.99 of it
    assert res["am_mas"] == pytest.approx(np.sqrt(2) * sigma_mas * 0.99, rel=0.05)
    # a field 2' across has no pairs 4-6' apart: no number
    ra1, dec1 = _star_field(6, 2.0, rng)
    star1 = np.repeat(np.arange(ra1.size), 3)
    assert metrics.am_x(star1, np.tile(np.arange(3), ra1.size), ra1[star1], dec1[star1]) == (None, 0)


def _synthetic_am1_input(size_arcmin, visits, sigma_mas, rng):
    """Truth stars on a grid (r = 19) and per-visit calexp source tables measuring them with Gaussian
    position noise; plus flagged and low-SNR sources placed 1" off, which AM1 must leave out."""
    from twinkles_hpc.level2.calibrate import SOURCE_DTYPE
    ra, dec = _star_field(10, size_arcmin, rng)
    stars = np.zeros(ra.size, [("id", "i8"), ("ra", "f8"), ("dec", "f8")] +
                     [(f"mag_{b}", "f8") for b in instrument.BANDS])
    stars["id"], stars["ra"], stars["dec"] = np.arange(ra.size), ra, dec
    for b in instrument.BANDS:
        stars[f"mag_{b}"] = 19.0
    gals = np.zeros(0, [("ra", "f8"), ("dec", "f8")] + [(f"{c}_mag_{b}", "f8") for c in ("bulge", "disk")
                                                         for b in instrument.BANDS])
    truth = {"stars": stars, "galaxies": gals, "ra0": float(ra.mean()), "dec0": float(dec.mean())}
    sources = []
    for vid, band in visits:
        src = np.zeros(ra.size + 20, SOURCE_DTYPE)
        n = ra.size
        src["dec"][:n] = dec + rng.normal(0, sigma_mas, n) / 3.6e6
        src["ra"][:n] = ra + rng.normal(0, sigma_mas, n) / 3.6e6 / np.cos(np.deg2rad(dec))
        src["snr"][:n] = 100.0
        src["ra"][n:], src["dec"][n:] = ra[:20], dec[:20] + 0.3 / 3600      # 0.3" off: within the radius
        src["snr"][n:] = np.r_[np.full(10, 100.0), np.full(10, 20.0)]
        src["flags"][n:n + 10] = 4                                            # CR-touched
        sources.append((vid, band, src))
    return truth, sources


def test_am1_section_on_synthetic_source_tables():
    from twinkles_hpc.validation.catalog import AM1_MIN_PAIRS, am1_section
    rng = np.random.default_rng(11)
    V = config.from_dict({}).validate
    sigma = 8.0
    truth, sources = _synthetic_am1_input(12.0, [(v, "gr"[v % 2]) for v in range(16)], sigma, rng)
    rep = am1_section(truth, sources, V)
    assert set(rep["bands"]) == {"g", "r"} and rep["combined"].startswith("per band")
    for b, r in rep["bands"].items():
        # every star in every visit of the band: the flagged / SNR-20 duplicates are left out
        assert r["n_stars"] == 100 and r["n_visits"] == 8 and r["n_pairs"] >= AM1_MIN_PAIRS
        # the separation moves by sqrt(2) sigma; the median sample std (7 dof) is ~0.97 of it
        assert r["am1_mas"] == pytest.approx(np.sqrt(2) * sigma * 0.97, rel=0.08)
    worst = max(rep["bands"].values(), key=lambda r: r["am1_mas"])
    assert rep["am1_mas"] == worst["am1_mas"] and rep["n_pairs"] == worst["n_pairs"]
    # the same positions through metrics.am_x directly
    keep = [(v, s[:100]) for v, b, s in sources if b == "g"]
    star = np.concatenate([np.arange(100)] * len(keep))
    visit = np.repeat([v for v, _ in keep], 100)
    ra, dec = (np.concatenate([s[c] for _, s in keep]) for c in ("ra", "dec"))
    assert metrics.am_x(star, visit, ra, dec)[0]["am_mas"] == rep["bands"]["g"]["am1_mas"]
    # one r visit: no r pairs with 2 common visits -> all bands pooled
    rep1 = am1_section(truth, [s for s in sources if s[1] == "g" or s[0] == 1], V)
    assert "n_pairs" not in rep1["bands"]["r"] and rep1["combined"].startswith("pooled")
    assert rep1["n_visits"] == 9 and rep1["am1_mas"] == rep1["pooled"]["am1_mas"]
    # a 3' field: no pairs 4-6' apart, null with the reason; no source tables at all: the reader's reason
    small = am1_section(*_synthetic_am1_input(3.0, [(0, "r"), (1, "r")], sigma, rng), V)
    assert small["value"] is None and "4-6'" in small["reason"] and small["bands"]["r"]["n_stars"] == 100
    none = am1_section(truth, [], V, "no calexps: [calexp] enabled = false")
    assert none == {"value": None, "reason": "no calexps: [calexp] enabled = false"}


def test_completeness_curve_and_crossings():
    mag = np.repeat(np.arange(18.25, 26, 0.5), 100)
    det = np.random.default_rng(0).random(mag.size) < np.clip(1 - 0.2 * (mag - 21.75), 0, 1)
    edges = np.arange(18.0, 26.01, 0.5)
    n, k, frac = metrics.completeness(mag, det, edges)
    assert n.tolist() == [100] * 16 and k.sum() == det.sum()
    assert all(f == 1.0 for f, lo in zip(frac, edges) if lo < 21.5) and frac[-1] == pytest.approx(0.2, abs=0.1)
    m90, why = metrics.mag_at_completeness(edges, [1.0, 1.0, 0.95, 0.8, 0.4], 0.9)
    # between the bin centres 19.25 (0.95) and 19.75 (0.8): one third of the way
    assert why is None and m90 == pytest.approx(19.25 + 0.5 / 3)
    assert metrics.mag_at_completeness(edges, frac, 0.5)[0] == pytest.approx(24.25, abs=0.3)
    assert metrics.mag_at_completeness(edges[:3], [1.0, 1.0], 0.5)[0] is None
    assert "already" in metrics.mag_at_completeness(edges[:3], [0.3, 0.2], 0.5)[1]
    # sparse bins (fewer than 10 truth sources) are left out when the counts are given
    assert metrics.mag_at_completeness(edges, [1.0, 1.0, 0.95, 0.8, 1.0], 0.9, [50, 50, 50, 50, 2])[0] == \
        pytest.approx(19.25 + 0.5 / 3)
    # a bright bin with one of a few sources missed does not set the crossing
    assert metrics.mag_at_completeness(edges, [1.0, 0.8, 0.95, 0.8, 0.4], 0.9)[0] == pytest.approx(19.25 + 0.5 / 3)


def test_light_curve_chi2_with_free_band_constants():
    rng = np.random.default_rng(8)
    chi = []
    for _ in range(400):
        band = np.array(list("gggrrrrr"))
        true = rng.uniform(0, 5000, band.size)
        err = rng.uniform(50, 150, band.size)
        host = np.where(band == "g", 800.0, 1500.0)         # static light under the PSF
        chi2, dof = metrics.light_curve_chi2(true + host + rng.normal(0, err), err, true, band)
        assert dof == 6
        chi.append(chi2 / dof)
    assert np.mean(chi) == pytest.approx(1.0, abs=0.1)
    # a light curve 20% too bright is not absorbed by the constants
    chi2, dof = metrics.light_curve_chi2(1.2 * true + host, err, true, band)
    assert chi2 / dof > 10
    assert metrics.light_curve_chi2([1.0, 2.0], [1.0, 1.0], [0.0, 0.0], ["g", "r"]) == (None, 0)


def test_brightest_within_claims_the_bright_source():
    truth = np.array([[0.0, 0.0], [0.3, 0.0], [5.0, 5.0]])
    mag = np.array([24.0, 19.0, 20.0])
    got = brightest_within(np.array([[0.05, 0.0], [9.0, 9.0]]), truth, mag, 1.0)
    assert got.tolist() == [1, -1]


def test_validate_section_is_not_in_the_fingerprint():
    a = config.from_dict({})
    b = config.from_dict({"validate": {"pa1_max_mmag": 8.0}})
    assert a.fingerprint() == b.fingerprint() and b.validate.pa1_max_mmag == 8.0
    assert "validate" in b.to_dict()
    with pytest.raises(InputError, match="validate.pa1_mag_max"):
        config.from_dict({"validate": {"pa1_mag_min": 22.0}})
    with pytest.raises(InputError, match="validate.zp_max_mmag"):
        config.from_dict({"validate": {"zp_max_mmag": -1.0}})


# -- the command on the Level 2 run --------------------------------------------------------------------
LOOSE = """
[validate]
zp_max_mmag = 50.0
astrom_max_mas = 100.0
pa1_max_mmag = 100.0
completeness_min = 0.5
purity_min = 0.5
phot_bias_max = 0.2
am1_max_mas = 100.0
"""


@pytest.fixture(scope="module")
def report(level2_run, tmp_path_factory):
    d = tmp_path_factory.mktemp("validate")
    (d / "loose.toml").write_text(LOOSE)
    r = cli("validate", level2_run, "--config", d / "loose.toml", "--json", d / "report.json")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr
    rep = json.loads(r.stdout)
    assert json.loads((d / "report.json").read_text()) == rep
    return rep


def test_report_keys_and_null_reasons(report, level2_run):
    assert set(report) >= {"calibration", "pa1", "am1", "detection", "photometry", "supernovae", "cost",
                           "checks", "passed", "thresholds"}
    assert report["passed"] is True and report["thresholds"]["pa1_max_mmag"] == 100.0
    assert set(report["calibration"]) == set(report["pa1"]) == set(report["photometry"]) == {"g", "r"}
    # the fixture turns supernovae off: null with a reason, no failure
    assert report["supernovae"]["value"] is None and "supernovae" in report["supernovae"]["reason"]
    skipped = {c["metric"] for c in report["checks"] if c["ok"] is None}
    assert "sn_median_chi2_dof" in skipped
    if json.loads((level2_run / "config.json").read_text())["ingest"].get("enabled"):
        assert set(report["database"]["difference"].values()) == {0}     # the run's own database is whole
    else:
        assert report["database"]["value"] is None
    for b in "gr":
        p = report["pa1"][b]
        assert p["n_stars"] >= 5 and p["n_visits"] == 3 and 0 < p["pa1_mmag"] < 50


def _am1_from_files(run, truth_file, mag_lo, mag_hi, snr_min=50.0, radius_arcsec=0.5):
    """AM1 recomputed with astropy from the calexp source tables: per band, the sample std of each bright
    star pair's separation (pairs 4-6' apart by their mean positions, >= 2 common visits), median."""
    import h5py

    from twinkles_hpc.store.tables import read_table
    with h5py.File(truth_file, "r") as fh:
        st, gal = read_table(fh["stars"]), read_table(fh["galaxies"])
    pos = {}                                             # band -> {star: {visit: SkyCoord}}
    for path in sorted((run / "calexp").glob("v*.h5")):
        with open_read(path) as fh:
            if not fh.attrs["calib_ok"]:
                continue
            src, visit, b = read_table(fh["sources"]), int(fh.attrs["visit_id"]), str(fh.attrs["band"])
        src = src[(src["flags"] == 0) & (src["snr"] >= snr_min)]
        gmag = -2.5 * np.log10(10 ** (-0.4 * gal[f"bulge_mag_{b}"]) + 10 ** (-0.4 * gal[f"disk_mag_{b}"]))
        mag = np.r_[st[f"mag_{b}"], gmag]
        truth = SkyCoord(np.r_[st["ra"], gal["ra"]], np.r_[st["dec"], gal["dec"]], unit="deg")
        sc = SkyCoord(src["ra"], src["dec"], unit="deg")
        i_src, i_tr, _, _ = truth.search_around_sky(sc, radius_arcsec * u.arcsec)
        claim = {}
        for i, t in zip(i_src.tolist(), i_tr.tolist()):
            if i not in claim or mag[t] < mag[claim[i]]:
                claim[i] = t
        stars = [(i, t) for i, t in claim.items() if t < len(st) and mag_lo <= mag[t] < mag_hi]
        ts = [t for _, t in stars]
        for i, t in stars:
            if ts.count(t) == 1:
                pos.setdefault(b, {}).setdefault(t, {})[visit] = sc[i]
    out = {}
    for b, stars in pos.items():
        ids = sorted(stars)
        mean = {s: SkyCoord(np.mean([c.ra.deg for c in stars[s].values()]),
                            np.mean([c.dec.deg for c in stars[s].values()]), unit="deg") for s in ids}
        rms = []
        for k, s1 in enumerate(ids):
            for s2 in ids[k + 1:]:
                if not 4.0 <= mean[s1].separation(mean[s2]).arcmin <= 6.0:
                    continue
                both = sorted(set(stars[s1]) & set(stars[s2]))
                if len(both) >= 2:
                    rms.append(np.std([stars[s1][v].separation(stars[s2][v]).mas for v in both], ddof=1))
        out[b] = (float(np.median(rms)) if rms else None, len(rms))
    return out


def test_am1_from_calexp_source_tables(report, level2_run):
    am1 = report["am1"]
    cfg = json.loads((level2_run / "config.json").read_text())["validate"]
    ind = _am1_from_files(level2_run, level2_run / "truth.h5", cfg["pa1_mag_min"], cfg["pa1_mag_max"])
    print("AM1 report", {b: r for b, r in am1["bands"].items()}, "combined", am1["combined"], am1["am1_mas"])
    print("AM1 independent", ind)
    assert set(am1["bands"]) == set(ind) == {"g", "r"}
    for b, (value, n) in ind.items():
        assert am1["bands"][b].get("n_pairs", 0) == n
        if n:
            assert am1["bands"][b]["am1_mas"] == pytest.approx(value, rel=1e-6)
    # the 320" sensor holds pairs 4-6' apart only near its diagonals, where the rotated visits overlap
    assert am1["n_pairs"] >= 3 and am1["n_visits"] >= 2
    # few-mas centroids of SNR >= 50 stars and a WCS fitted to tens of reference stars: tens of mas at most
    assert 0 < am1["am1_mas"] < 60
    check = next(c for c in report["checks"] if c["metric"] == "am1_mas")
    assert check["value"] == am1["am1_mas"] and check["ok"] is (am1["am1_mas"] <= check["threshold"])


def test_calibration_offsets_match_the_files(report, level2_run):
    for b, cal in report["calibration"].items():
        zps, ams = [], []
        for row in cal["visits"]:
            name = f"v{row['visit_id']:08d}-{b}.h5"
            with open_read(level2_run / "calexp" / name) as c, open_read(level2_run / "visit" / name) as e:
                ca, ea = dict(c.attrs), dict(e.attrs)
            zp_true = (instrument.ZEROPOINT[b] + 2.5 * np.log10(ea["exptime"])
                       - instrument.K_ATM[b] * (ea["airmass"] - 1))
            zps.append(1e3 * (ca["zero_point"] - zp_true))
            assert row["zp_offset_mmag"] == pytest.approx(zps[-1], abs=1e-6)
            xx, yy = np.meshgrid(np.linspace(0, 1599, 9), np.linspace(0, 1599, 9))
            p = [SkyCoord(*WCS(fits.Header.fromstring(h)).all_pix2world(xx.ravel(), yy.ravel(), 0), unit="deg")
                 for h in (ca["wcs"], ea["true_wcs"])]
            ams.append(p[0].separation(p[1]).to(u.mas).value.mean())
            assert row["astrom_offset_mas"] == pytest.approx(ams[-1], rel=1e-6)
        assert cal["n_visits"] == 3
        assert cal["zp_offset_mmag"]["max_abs"] == pytest.approx(max(map(abs, zps)))
        assert cal["zp_offset_mmag"]["median"] == pytest.approx(np.median(zps))
        assert cal["zp_offset_mmag"]["median_abs"] == pytest.approx(abs(np.median(zps)))
        assert cal["zp_offset_mmag"]["rms"] == pytest.approx(np.sqrt(np.mean(np.square(zps))))
        assert cal["astrom_offset_mas"]["median"] == pytest.approx(np.median(ams))
        assert cal["astrom_offset_mas"]["max"] == pytest.approx(max(ams))


def test_detection_photometry_and_cost(report, level2_run):
    det = report["detection"]
    assert det["n_objects"] > 100 and 0.9 <= det["purity"] <= 1 and det["purity_chance"] < 0.1
    assert det["mag90"] < det["mag50"]
    for b in det["bins"]:
        assert b["n_detected"] <= b["n_truth"]
        if b["r_hi"] <= 22.0 and b["n_truth"]:
            assert b["completeness"] >= 0.9, b                  # bright sources are found
    assert sum(b["n_truth"] for b in det["bins"]) == det["n_truth"]
    for b, ph in report["photometry"].items():
        assert abs(ph["median_ratio"] - 1) < 0.05 and ph["n_stars"] >= 5
    recs = [json.loads(line) for line in (level2_run / "trace.jsonl").read_text().splitlines()]
    cal = [r["end"] - r["start"] for r in recs if r["kind"] == "calexp"]
    coadd = [r for r in recs if r["kind"] == "coadd"]
    c = report["cost"]["level2_seconds_per_visit"]
    assert c["stages"]["calexp"]["seconds"] == pytest.approx(np.mean(cal))
    assert c["stages"]["coadd"]["seconds"] == pytest.approx(sum(r["end"] - r["start"] for r in coadd) / 6)
    assert c["full_sensor_scale"] == pytest.approx(4000 * 4072 / 1600 ** 2)
    assert c["total"] == pytest.approx(sum(s["seconds"] for s in c["stages"].values()))
    rss = report["cost"]["coadd_peak_rss"]
    assert rss["process_max_mb"] == max(r["peak_rss_mb"] for r in coadd) and rss["budget_mb"] == 16.0
    assert rss["max_mb"] == max(r["peak_rss_mb"] - r["start_rss_mb"] for r in coadd)


def test_tight_threshold_exits_1_naming_the_metric(level2_run, tmp_path):
    (tmp_path / "tight.toml").write_text(LOOSE.replace("zp_max_mmag = 50.0", "zp_max_mmag = 0.001"))
    r = cli("validate", level2_run, "--config", tmp_path / "tight.toml")
    assert r.returncode == 1
    fails = r.stderr.strip().splitlines()
    assert fails and all("FAIL zp_offset_mmag.median_abs[" in f for f in fails), r.stderr
    rep = json.loads(r.stdout)
    assert rep["passed"] is False


def test_bad_input_exits_2_with_one_line(level2_run, tmp_path):
    r = cli("validate", tmp_path / "no-such-run")
    assert r.returncode == 2 and r.stdout == ""
    assert len(r.stderr.strip().splitlines()) == 1 and "no-such-run" in r.stderr
    # a run whose config says calibrate = true but whose calexps are gone: names the missing file
    part = tmp_path / "partial"
    part.mkdir()
    for f in ("config.json", "visits.h5", "truth.h5"):
        shutil.copy(level2_run / f, part / f)
    r = cli("validate", part)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "calexp/v" in r.stderr and "calexp" in r.stderr


def test_database_row_counts(level2_run, tmp_path):
    from twinkles_hpc.store import db, ingest
    url = f"sqlite:///{tmp_path / 'l2.sqlite'}"
    engine = db.connect(url)
    db.create_schema(engine)
    ingest.ingest_ccd_visits(engine, sorted((level2_run / "calexp").glob("v*.h5")), fwhm_from_json)
    ingest.ingest_objects(engine, sorted((level2_run / "objects").glob("patch-*.h5")))
    forced = sorted((level2_run / "forced").glob("v*.h5"))
    ingest.ingest_forced(engine, forced[:-1])                  # one visit's ForcedSource left out
    engine.dispose()
    (tmp_path / "loose.toml").write_text(LOOSE)
    r = cli("validate", level2_run, "--config", tmp_path / "loose.toml", "--db", url)
    assert r.returncode == 1, r.stderr
    rep = json.loads(r.stdout)["database"]
    with open_read(forced[-1]) as fh:
        n_last = len(fh["forced_source"])
    assert rep["difference"] == {"CcdVisit": 0, "Object": 0, "ForcedSource": -n_last}
    assert rep["counts"]["CcdVisit"] == 6 and rep["counts"]["Object"] > 100
    assert r.stderr.strip().splitlines() == [
        f"twinkles-hpc validate: FAIL database_rows[ForcedSource] = {n_last} (threshold <= 0)"]
    engine = db.connect(url)
    ingest.ingest_forced(engine, forced[-1:])
    engine.dispose()
    r = cli("validate", level2_run, "--config", tmp_path / "loose.toml", "--db", url)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["database"]["difference"]["ForcedSource"] == 0


def test_failed_calibrations_and_stages_off(level2_run, tmp_path):
    """A run with only calexps, two of whose visits failed to calibrate: those are listed with their reason,
    the stages that were off are null with a reason, and nothing fails."""
    import h5py
    run = tmp_path / "calexp-only"
    (run / "calexp").mkdir(parents=True)
    (run / "visit").mkdir()
    cfg = json.loads((level2_run / "config.json").read_text())
    for s in ("coadd", "objects", "forced", "template", "diffim", "associate", "diaforced", "ingest"):
        cfg[s]["enabled"] = False
    (run / "config.json").write_text(json.dumps(cfg))
    for f in ("visits.h5", "truth.h5"):
        shutil.copy(level2_run / f, run / f)
    names = sorted(p.name for p in (level2_run / "calexp").glob("v*.h5"))
    bad = [n for n in names if n.endswith("-r.h5")][:2]
    for n in names:
        if n in bad:
            with h5py.File(run / "calexp" / n, "w") as fh:
                fh.attrs["calib_ok"], fh.attrs["calib_failure"] = False, "2 clean stars (need 3)"
        else:
            shutil.copy(level2_run / "calexp" / n, run / "calexp" / n)
            shutil.copy(level2_run / "visit" / n, run / "visit" / n)
    r = cli("validate", run)
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    cal = rep["calibration"]
    assert cal["r"]["n_visits"] == 1 and cal["r"]["n_failed"] == 2 and cal["g"]["n_visits"] == 3
    assert {f["visit_id"] for f in cal["r"]["failed"]} == {int(n[1:9]) for n in bad}
    assert cal["r"]["failed"][0]["reason"] == "2 clean stars (need 3)"
    for key in ("detection", "photometry", "pa1", "supernovae"):
        assert rep[key]["value"] is None and "[objects] enabled = false" in rep[key]["reason"]
    assert rep["cost"]["coadd_peak_rss"]["value"] is None and "trace" in rep["cost"]["coadd_peak_rss"]["reason"]
    assert rep["dia"]["value"] is None and "[diaforced] must be enabled" in rep["dia"]["reason"]


def test_psf_response_of_an_offset_point_source():
    """A Gaussian PSF of variance v per axis measures exp(-d^2 / 4v) of a source d away; 1 at d = 0; a mixture
    falls between its components' responses."""
    from twinkles_hpc.level2.photometry import _FixedPSF
    from twinkles_hpc.validation.dia import psf_response
    v = 4.0
    one = _FixedPSF(tuple(np.array([[q]]) for q in (1.0, v, 0.0, v)))
    d = np.array([0.0, 1.0, 3.0, 6.0])
    assert np.allclose(psf_response(one, 10.0, 10.0, d, 0 * d), np.exp(-d ** 2 / (4 * v)))
    two = _FixedPSF(tuple(np.array(q)[None] for q in ([0.7, 0.3], [v, 4 * v], [0.0, 0.0], [v, 4 * v])))
    r = psf_response(two, 0.0, 0.0, np.array([3.0]), np.array([0.0]))[0]
    assert np.exp(-9 / (4 * v)) < r < np.exp(-9 / (16 * v))
