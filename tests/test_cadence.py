"""Cadence: OpSim readers (both schemas, CSV and SQLite), the site ephemeris, Run 1 rules, the
synthetic cadence."""
import csv
import math
import os
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import ks_2samp

from twinkles_hpc.errors import InputError
from twinkles_hpc.instrument import BANDS, FIELD_DEC, FIELD_RA, FIELD_ID
from twinkles_hpc.sky import ephemeris
from twinkles_hpc.sky.cadence import five_sigma_depth, one_per_night_band, subsample, synthetic_cadence
from twinkles_hpc.sky.ephemeris import night_of
from twinkles_hpc.sky.opsim import read_opsim
from twinkles_hpc.sky.visits import VISIT_DTYPE

SHARED_DATA = Path(os.environ.get("TWINKLES_SHARED_DATA", Path(__file__).parents[2] / "shared" / "data"))
RUN1_CSV = SHARED_DATA / "twinkles_run1_opsim_visits.csv"

# SCIENCE.md section 2 (medians rounded there to 0.01 mag / arcsec, sky to 0.1 mag).
RUN1_COUNTS = {"u": 254, "g": 195, "r": 196, "i": 195, "z": 195, "y": 192}
RUN1_FWHM = {"u": 1.01, "g": 0.95, "r": 0.89, "i": 0.84, "z": 0.80, "y": 0.78}
RUN1_M5 = {"u": 23.23, "g": 24.31, "r": 24.12, "i": 23.56, "z": 23.04, "y": 21.74}
RUN1_SKY = {"u": 22.0, "g": 21.1, "r": 20.9, "i": 20.0, "z": 19.2, "y": 17.3}

# Old-schema column -> new-schema column; angles (radians in old tables) are converted.
OLD_TO_NEW = {"obsHistID": "observationId", "expMJD": "observationStartMJD", "filter": "filter",
              "FWHMeff": "seeingFwhmEff", "FWHMgeom": "seeingFwhmGeom", "fiveSigmaDepth": "fiveSigmaDepth",
              "filtSkyBrightness": "skyBrightness", "rotSkyPos": "rotSkyPos", "airmass": "airmass",
              "fieldRA": "fieldRA", "fieldDec": "fieldDec", "moonAlt": "moonAlt", "moonPhase": "moonPhase",
              "visitExpTime": "visitExposureTime", "night": "night"}
RADIAN_COLUMNS = {"rotSkyPos", "fieldRA", "fieldDec", "moonAlt", "ditheredRA", "ditheredDec"}


@pytest.fixture(scope="module")
def run1_rows():
    if not RUN1_CSV.is_file():
        pytest.skip(f"Run 1 visit list not found at {RUN1_CSV}: shared data absent "
                    "(set TWINKLES_SHARED_DATA to its folder)")
    with open(RUN1_CSV, newline="") as fh:
        rows = list(csv.reader(fh))
    return rows[0], rows[1:]


@pytest.fixture(scope="module")
def run1(run1_rows):
    return read_opsim(RUN1_CSV)


def write_csv(path, header, rows):
    with open(path, "w", newline="") as fh:
        csv.writer(fh).writerows([header, *rows])
    return path


def write_sqlite(path, table, header, rows):
    con = sqlite3.connect(path)
    columns = ", ".join(f'"{h}"' for h in header)
    con.execute(f'CREATE TABLE "{table}" ({columns})')
    con.executemany(f'INSERT INTO "{table}" VALUES ({", ".join("?" * len(header))})', rows)
    con.commit()
    con.close()
    return path


def as_number(text):
    try:
        return float(text)
    except ValueError:
        return text


def new_schema(header, rows):
    """The Run 1 rows in the new OpSim schema: renamed columns, angles in degrees, no fieldId."""
    idx = [header.index(c) for c in OLD_TO_NEW]
    out = []
    for r in rows:
        vals = []
        for c, i in zip(OLD_TO_NEW, idx):
            v = as_number(r[i])
            vals.append(math.degrees(v) if c in RADIAN_COLUMNS else v)
        out.append(vals)
    return list(OLD_TO_NEW.values()), out


def assert_same_visits(a, b):
    assert a.dtype == VISIT_DTYPE and b.dtype == VISIT_DTYPE and a.size == b.size
    for name in VISIT_DTYPE.names:
        if a.dtype[name].kind == "f":
            np.testing.assert_allclose(a[name], b[name], rtol=0, atol=1e-9, err_msg=name)
        else:
            np.testing.assert_array_equal(a[name], b[name], err_msg=name)


# ------------------------------------------------------------------------------ reading
def test_run1_csv_matches_science_md(run1):
    v = run1
    assert v.dtype == VISIT_DTYPE and v.size == 1227
    assert {b: int(np.sum(v["band"] == b)) for b in BANDS} == RUN1_COUNTS
    for b in BANDS:
        s = v[v["band"] == b]
        assert abs(np.median(s["fwhm_eff"]) - RUN1_FWHM[b]) <= 0.006, b
        assert abs(np.median(s["five_sigma_depth"]) - RUN1_M5[b]) <= 0.006, b
        assert abs(np.median(s["sky_brightness"]) - RUN1_SKY[b]) <= 0.06, b
    assert round(v["mjd"].min(), 1) == 59580.1 and round(v["mjd"].max(), 1) == 63222.1
    assert np.all(np.diff(v["mjd"]) >= 0)
    assert np.all(v["exptime"] == 30.0)
    # Radians converted to degrees: rotSkyPos spans 26 to 258 deg (SCIENCE.md section 1).
    assert 25.5 < v["rot_sky_pos"].min() < 26.5 and 257.5 < v["rot_sky_pos"].max() < 258.5
    np.testing.assert_allclose(v["ra"], FIELD_RA, atol=1e-3)
    np.testing.assert_allclose(v["dec"], FIELD_DEC, atol=1e-3)
    assert np.abs(v["moon_alt"]).max() < 90 and np.abs(v["moon_alt"]).max() > 45
    assert 0 <= v["moon_phase"].min() and v["moon_phase"].max() <= 100


def test_field_selection(run1):
    assert_same_visits(read_opsim(RUN1_CSV, field_id=FIELD_ID), run1)
    assert_same_visits(read_opsim(RUN1_CSV, ra=FIELD_RA, dec=FIELD_DEC, radius_deg=0.1), run1)
    dithered = read_opsim(RUN1_CSV, use_dither=True)
    offset = np.hypot((dithered["ra"] - FIELD_RA) * math.cos(math.radians(FIELD_DEC)),
                      dithered["dec"] - FIELD_DEC)
    assert np.all(offset < 1.76) and np.median(offset) > 0.3      # ditheredRA/Dec, in degrees
    np.testing.assert_array_equal(dithered["visit_id"], run1["visit_id"])


def test_sqlite_old_and_new_schema_read_the_same(run1_rows, run1, tmp_path):
    header, rows = run1_rows
    numeric = [[as_number(x) for x in r] for r in rows]
    # Old schema in a file whose name says nothing: the reader looks at the magic bytes.
    db = write_sqlite(tmp_path / "kraken_1042.txt", "Summary", header, numeric)
    old = read_opsim(db, field_id=FIELD_ID)
    assert_same_visits(old, run1)
    new_header, new_rows = new_schema(header, rows)
    for table in ("observations", "SummaryAllProps"):
        db = write_sqlite(tmp_path / f"{table}.db", table, new_header, new_rows)
        # No fieldId in these tables: select by position instead.
        assert_same_visits(read_opsim(db, ra=FIELD_RA, dec=FIELD_DEC), run1)
    expect_error(db, "fieldId", field_id=FIELD_ID)
    new_csv = write_csv(tmp_path / "new.csv", new_header, new_rows)
    assert_same_visits(read_opsim(new_csv), run1)


def test_missing_optional_columns_are_derived(run1_rows, run1, tmp_path):
    header, rows = run1_rows
    keep = ["obsHistID", "expMJD", "filter", "FWHMeff", "fiveSigmaDepth", "filtSkyBrightness",
            "rotSkyPos", "airmass", "fieldRA", "fieldDec"]
    idx = [header.index(c) for c in keep]
    v = read_opsim(write_csv(tmp_path / "minimal.csv", keep, [[r[i] for i in idx] for r in rows]))
    np.testing.assert_allclose(v["fwhm_geom"], run1["fwhm_geom"], atol=1e-5)
    np.testing.assert_array_equal(v["night"], run1["night"])
    np.testing.assert_array_equal(v["exptime"], 30.0)
    # Moon from the built-in ephemeris agrees with OpSim's.
    assert np.abs(v["moon_alt"] - run1["moon_alt"]).max() < 1.0
    assert np.abs(v["moon_phase"] - run1["moon_phase"]).max() < 1.0


def test_ephemeris_matches_run1(run1_rows):
    """The site ephemeris against the Run 1 OpSim columns of the same visits (angles in radians)."""
    header, rows = run1_rows
    col = lambda name: np.array([float(r[header.index(name)]) for r in rows])  # noqa: E731
    mjd, ra, dec = col("expMJD"), np.degrees(col("fieldRA")), np.degrees(col("fieldDec"))
    np.testing.assert_array_equal(night_of(mjd), col("night"))
    assert np.abs(ephemeris.sun_altitude(mjd) - np.degrees(col("sunAlt"))).max() < 0.6
    alt, ha = ephemeris.altitude(mjd, ra, dec)
    assert np.abs(alt - np.degrees(col("altitude"))).max() < 0.6
    moon_alt, moon_phase, moon_ra, moon_dec = ephemeris.moon_ephemeris(mjd)
    assert np.abs(moon_alt - np.degrees(col("moonAlt"))).max() < 0.4
    assert np.abs(moon_phase - col("moonPhase")).max() < 0.9
    assert ephemeris.angular_separation(moon_ra, moon_dec, np.degrees(col("moonRA")),
                                        np.degrees(col("moonDec"))).max() < 1.3
    # rotSkyPos = rotTelPos - parallactic angle; near the zenith the angle turns fast, hence the median.
    rot = np.degrees(col("rotTelPos")) - ephemeris.parallactic_angle(ha, dec) - np.degrees(col("rotSkyPos"))
    assert np.median(np.abs((rot + 180.0) % 360.0 - 180.0)) < 0.01


def test_one_per_night_band_keeps_lowest_airmass():
    v = synthetic_cadence(3, counts={"r": 20, "g": 20})
    worse = v.copy()
    worse["visit_id"] += 1000
    worse["airmass"] += 0.1
    worse["mjd"] += 0.01
    better = v.copy()
    better["visit_id"] += 2000
    better["airmass"] -= 0.001
    better["mjd"] -= 0.01
    both = np.concatenate([worse, v, better])
    out = one_per_night_band(both[::-1])
    assert out.size == v.size
    np.testing.assert_array_equal(out["visit_id"], better["visit_id"])
    pairs = set(zip(out["night"].tolist(), out["band"].tolist()))
    assert len(pairs) == out.size
    assert np.all(np.diff(out["mjd"]) >= 0)


def test_one_per_night_band_leaves_run1_unchanged(run1):
    assert_same_visits(one_per_night_band(run1), run1)


# ---------------------------------------------------------------------------- bad input
def bad_csv(tmp_path, run1_rows, name, column, value, row=3):
    header, rows = run1_rows
    rows = [list(r) for r in rows[:10]]
    i = header.index(column)
    rows[row][i] = value
    return write_csv(tmp_path / name, header, rows)


def expect_error(path, column, **kw):
    with pytest.raises(InputError) as err:
        read_opsim(path, **kw)
    msg = str(err.value)
    assert "\n" not in msg
    assert Path(path).name in msg, msg
    assert column in msg, msg
    return msg


def test_bad_inputs(run1_rows, tmp_path):
    header, rows = run1_rows
    expect_error(tmp_path / "absent.csv", "file")
    (tmp_path / "image.fits").write_bytes(b"SIMPLE  =                    T" + bytes(3000))
    expect_error(tmp_path / "image.fits", "format")
    con = sqlite3.connect(tmp_path / "other.db")
    con.execute("CREATE TABLE Fields (fieldID INTEGER)")
    con.close()
    expect_error(tmp_path / "other.db", "table")
    no_seeing = [h for h in header if h != "FWHMeff"]
    idx = [header.index(h) for h in no_seeing]
    expect_error(write_csv(tmp_path / "noseeing.csv", no_seeing, [[r[i] for i in idx] for r in rows[:5]]),
                 "FWHMeff")
    expect_error(bad_csv(tmp_path, run1_rows, "text.csv", "airmass", "high"), "airmass")
    expect_error(bad_csv(tmp_path, run1_rows, "filter.csv", "filter", "q"), "filter")
    msg = expect_error(bad_csv(tmp_path, run1_rows, "nan.csv", "FWHMeff", "nan"), "FWHMeff")
    assert "seeing" in msg
    expect_error(RUN1_CSV, "fieldID", field_id=1)
    expect_error(RUN1_CSV, "fieldRA", ra=180.0, dec=30.0)
    new_header, new_rows = new_schema(header, rows[:5])
    expect_error(write_sqlite(tmp_path / "new.db", "observations", new_header[:3] + new_header[4:],
                              [r[:3] + r[4:] for r in new_rows]), "observations.seeingFwhmEff")
    # A visit id twice, in two bands or in the same band: one line naming the id and the rows.
    idc, fc = header.index("obsHistID"), header.index("filter")
    for name, band in (("dup-bands.csv", None), ("dup-band.csv", "same")):
        dup = [list(r) for r in rows[:10]]
        dup[7][idc] = dup[2][idc]
        dup[7][fc] = dup[2][fc] if band == "same" else ("g" if dup[2][fc] != "g" else "r")
        msg = expect_error(write_csv(tmp_path / name, header, dup), "obsHistID")
        assert f"{int(float(dup[2][idc]))} in data rows 3, 8" in msg and "unique visit ids" in msg, msg
    # Degrees in an old (radians) table: a wrong schema, caught rather than converted twice.
    _, deg_rows = new_schema(header, rows[:5])
    expect_error(write_csv(tmp_path / "mixed.csv", list(OLD_TO_NEW), deg_rows), "fieldRA")
    # ... also where a selection by position (SQL on fieldDec in radians) finds nothing
    msg = expect_error(write_sqlite(tmp_path / "mixed.db", "Summary", list(OLD_TO_NEW), deg_rows), "fieldDec",
                       ra=53.0, dec=-28.1)
    assert "looks like degrees" in msg


# ------------------------------------------------------------------------ synthetic cadence
@pytest.fixture(scope="module")
def synthetic():
    return synthetic_cadence(1)


def test_synthetic_structure(synthetic):
    v = synthetic
    assert v.dtype == VISIT_DTYPE
    assert {b: int(np.sum(v["band"] == b)) for b in BANDS} == RUN1_COUNTS
    assert len(set(zip(v["night"].tolist(), v["band"].tolist()))) == v.size   # one per (night, band)
    assert np.all(np.diff(v["mjd"]) > 0) and np.all(np.diff(v["visit_id"]) > 0)
    np.testing.assert_array_equal(v["night"], night_of(v["mjd"]))
    assert np.all(v["exptime"] == 30.0) and np.all(v["ra"] == FIELD_RA) and np.all(v["dec"] == FIELD_DEC)
    np.testing.assert_allclose(v["fwhm_geom"], 0.822 * v["fwhm_eff"] + 0.052)
    for b in BANDS:
        s = v[v["band"] == b]
        np.testing.assert_allclose(s["five_sigma_depth"],
                                   five_sigma_depth(b, s["fwhm_eff"], s["sky_brightness"], s["airmass"]))
    assert np.all((v["airmass"] >= 1.0) & (v["airmass"] <= 1.5))
    assert np.all(v["moon_phase"][v["band"] == "u"] < 27.0)       # u on dark nights
    assert np.all((v["rot_sky_pos"] >= 0) & (v["rot_sky_pos"] < 360))
    # Ten years of seasons: the field is observed from about September to mid-January only.
    span_yr = (v["mjd"].max() - v["mjd"].min()) / 365.25
    assert 9.8 < span_yr <= 10.0
    day_of_year = (v["mjd"] - 59580.0) % 365.25                    # MJD 59580 = 2022-01-01
    assert not np.any((day_of_year > 25) & (day_of_year < 235))
    assert np.sum(np.diff(v["mjd"]) > 150) == 10


def test_synthetic_is_deterministic(synthetic):
    again = synthetic_cadence(1)
    assert again.tobytes() == synthetic.tobytes()
    other = synthetic_cadence(2)
    assert other.size == synthetic.size and not np.array_equal(other["mjd"], synthetic["mjd"])


def test_synthetic_counts_and_limits():
    v = synthetic_cadence(0, years=2.0, counts={"g": 7, "u": 3})
    assert {b: int(np.sum(v["band"] == b)) for b in BANDS} == {"u": 3, "g": 7, "r": 0, "i": 0, "z": 0, "y": 0}
    with pytest.raises(InputError, match="years: expected a span with at least 1000 observable nights"):
        synthetic_cadence(0, years=1.0, counts={"r": 1000})
    with pytest.raises(InputError, match="counts"):
        synthetic_cadence(0, counts={"k": 3})


def test_synthetic_matches_run1(run1):
    """Five realisations pooled against Run 1. One realisation is noisier than the tolerances
    allow in g (Run 1's own g-band sky median has a bootstrap sd of 0.19 mag: its visits split
    between moon-up and moon-down skies 1.7 mag apart); see docs/cadence.md."""
    syn = np.concatenate([synthetic_cadence(seed) for seed in range(5)])
    for b in BANDS:
        r, s = run1[run1["band"] == b], syn[syn["band"] == b]
        assert abs(np.median(s["fwhm_eff"]) - np.median(r["fwhm_eff"])) < 0.05, b
        assert abs(np.median(s["sky_brightness"]) - np.median(r["sky_brightness"])) < 0.3, b
        assert abs(np.median(s["five_sigma_depth"]) - np.median(r["five_sigma_depth"])) < 0.2, b
        assert ks_2samp(s["fwhm_eff"], r["fwhm_eff"]).statistic < 0.15, b


# ---------------------------------------------------------------------------- subsample
def test_subsample(synthetic):
    sub = subsample(synthetic, 72)
    assert sub.size == 72 and set(sub["band"]) == set(BANDS)
    assert (sub["mjd"].max() - sub["mjd"].min()) / 365.25 > 9.0
    for b in BANDS:
        ideal = 72 * RUN1_COUNTS[b] / synthetic.size
        assert abs(np.sum(sub["band"] == b) - ideal) < 1.0
        mjd = sub["mjd"][sub["band"] == b]
        assert (mjd.max() - mjd.min()) / 365.25 > 9.0
    assert len(np.unique(sub["visit_id"])) == 72 and np.all(np.diff(sub["mjd"]) > 0)
    assert subsample(synthetic, 72).tobytes() == sub.tobytes()
    assert subsample(synthetic[::-1], 72).tobytes() == sub.tobytes()
    assert subsample(synthetic, 10_000).size == synthetic.size
    assert set(subsample(synthetic, 6)["band"]) == set(BANDS)
    with pytest.raises(InputError, match="max_visits"):
        subsample(synthetic, 5)
