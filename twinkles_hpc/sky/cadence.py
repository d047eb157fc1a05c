"""The cadence: OpSim visit lists read from real OpSim output, or a synthetic Run 1-like one.

Units throughout: MJD in days (start of exposure, as OpSim stores it), angles in degrees, seeing
(FWHM) in arcsec, depths in AB mag, sky brightness in mag/arcsec^2, moon phase in percent
illuminated, exposure time in seconds. See docs/cadence.md.
"""
import csv
import io
import sqlite3
from pathlib import Path

import numpy as np

from twinkles_hpc.errors import InputError
from twinkles_hpc.instrument import BANDS, FIELD_DEC, FIELD_RA, K_ATM, check_band, fwhm_geom

VISIT_DTYPE = np.dtype([
    ("visit_id", "i8"), ("mjd", "f8"), ("band", "U1"), ("night", "i4"), ("exptime", "f8"),
    ("fwhm_eff", "f8"), ("fwhm_geom", "f8"), ("five_sigma_depth", "f8"), ("sky_brightness", "f8"),
    ("rot_sky_pos", "f8"),                                  # degrees
    ("airmass", "f8"), ("ra", "f8"), ("dec", "f8"),         # boresight, degrees
    ("moon_alt", "f8"), ("moon_phase", "f8")])              # degrees, percent

#: Run 1 visit counts per band (SCIENCE.md section 2): the synthetic default.
RUN1_COUNTS = {"u": 254, "g": 195, "r": 196, "i": 195, "z": 195, "y": 192}

# Cerro Pachon as OpSim v3 placed it: the Run 1 file's `lst` column equals GMST + this longitude
# to 1e-4 deg.
SITE_LAT, SITE_LON = -30.2444, -70.7494
#: Night n runs from noon UTC (08-09 h in Chile, always daytime) of MJD NIGHT_ZERO_MJD + n:
#: this reproduces every `night` of the Run 1 file (kraken_1042 started on MJD 59580).
NIGHT_ZERO_MJD = 59579.5
DEFAULT_EXPTIME = 30.0                                       # s, every LSST visit of the era


# ---------------------------------------------------------------------------------- reading
_SQLITE_MAGIC = b"SQLite format 3\x00"
_TABLES = ("Summary", "SummaryAllProps", "observations")
# field -> (old-schema names, new-schema names, required). Old tables store angles in radians.
_COLUMNS = {
    "visit_id": (("obsHistID",), ("observationId",), True),
    "mjd": (("expMJD",), ("observationStartMJD",), True),
    "band": (("filter",), ("filter", "band"), True),
    "fwhm_eff": (("FWHMeff",), ("seeingFwhmEff",), True),
    "five_sigma_depth": (("fiveSigmaDepth",), ("fiveSigmaDepth",), True),
    "sky_brightness": (("filtSkyBrightness",), ("skyBrightness",), True),
    "rot_sky_pos": (("rotSkyPos",), ("rotSkyPos",), True),
    "airmass": (("airmass",), ("airmass",), True),
    "field_ra": (("fieldRA",), ("fieldRA",), True),
    "field_dec": (("fieldDec",), ("fieldDec",), True),
    "fwhm_geom": (("FWHMgeom",), ("seeingFwhmGeom",), False),
    "exptime": (("visitExpTime",), ("visitExposureTime",), False),
    "night": (("night",), ("night",), False),
    "moon_alt": (("moonAlt",), ("moonAlt",), False),
    "moon_phase": (("moonPhase",), ("moonPhase",), False),
    "field_id": (("fieldID",), ("fieldId", "fieldID"), False),
    "dithered_ra": (("ditheredRA",), ("ditheredRA",), False),
    "dithered_dec": (("ditheredDec",), ("ditheredDec",), False),
}
_RADIANS = {"rot_sky_pos", "field_ra", "field_dec", "dithered_ra", "dithered_dec", "moon_alt"}


def read_opsim(path, *, field_id=None, ra=None, dec=None, radius_deg=1.75, use_dither=False):
    """Read the visits of one field from an OpSim CSV file or SQLite database.

    Both schemas are read: the old one (table `Summary`, obsHistID/expMJD/..., angles in radians)
    and the new one (table `SummaryAllProps` or `observations`, observationId/observationStartMJD/...,
    angles in degrees); a CSV may carry either column set. Visits are selected by `field_id` where
    the table has a field-id column, else by the distance of the field centre from (`ra`, `dec`)
    (degrees) within `radius_deg`; with neither, every visit is kept. `use_dither` puts the
    dithered pointing (ditheredRA/ditheredDec) in ra/dec. Returns VISIT_DTYPE sorted by
    (mjd, visit_id). Any bad input raises InputError naming the file and the column.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file", "an OpSim CSV file or SQLite database", "no such file")
    if (ra is None) != (dec is None):
        raise InputError(path, "ra/dec", "both ra and dec, or neither", (ra, dec))
    with open(path, "rb") as fh:
        head = fh.read(4096)
    if head.startswith(_SQLITE_MAGIC):
        label, cols, old = _read_sqlite(path, field_id, ra, dec, radius_deg, use_dither)
    else:
        label, cols, old = _read_csv(path, head, use_dither)
    return _assemble(path, label, cols, old, field_id, ra, dec, radius_deg, use_dither)


def _resolve(path, header, use_dither, label):
    """Map each VISIT field to the column that carries it; returns ({field: column}, is_old)."""
    if "expMJD" in header:
        old = True
    elif "observationStartMJD" in header:
        old = False
    else:
        raise InputError(path, label("expMJD"), "an OpSim column expMJD (old schema) or "
                         "observationStartMJD (new schema)", "neither")
    names = {}
    for field, (old_names, new_names, required) in _COLUMNS.items():
        cands = old_names if old else new_names
        found = next((c for c in cands if c in header), None)
        must = required or (use_dither and field.startswith("dithered") and old)
        if found is None and must:
            raise InputError(path, label(cands[0]), "a column of that name", "missing")
        if found is not None:
            names[field] = found
    return names, old


def _read_sqlite(path, field_id, ra, dec, radius_deg, use_dither):
    try:
        con = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True)
        try:
            tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")]
            table = next((t for t in _TABLES if t in tables), None)
            if table is None:
                raise InputError(path, "table", f"one of {', '.join(_TABLES)}", tables)
            label = lambda col: f"{table}.{col}"  # noqa: E731
            header = [r[1] for r in con.execute(f"PRAGMA table_info({_quote(table)})")]
            names, old = _resolve(path, header, use_dither, label)
            # Filter in SQL first: a full survey (minion_1016) has 2.4 million rows.
            where, args = "", ()
            if field_id is not None and "field_id" in names:
                where, args = f' WHERE {_quote(names["field_id"])} = ?', (int(field_id),)
            elif ra is not None:
                lo, hi = dec - radius_deg, dec + radius_deg
                if old:
                    lo, hi = np.radians(lo), np.radians(hi)
                where, args = f' WHERE {_quote(names["field_dec"])} BETWEEN ? AND ?', (float(lo), float(hi))
            cols = list(names.values())
            sql = f'SELECT {", ".join(_quote(c) for c in cols)} FROM {_quote(table)}{where}'
            rows = con.execute(sql, args).fetchall()
        finally:
            con.close()
    except sqlite3.DatabaseError as err:
        raise InputError(path, "database", "a readable SQLite database", str(err)) from None
    data = list(zip(*rows)) if rows else [()] * len(cols)
    return label, _fields(names, old, dict(zip(cols, data))), old


def _quote(name):
    """An SQL identifier, quoted."""
    return '"' + name.replace('"', '""') + '"'


def _read_csv(path, head, use_dither):
    label = lambda col: col  # noqa: E731
    if not head or b"\x00" in head:
        raise InputError(path, "format", "an OpSim CSV file or SQLite database",
                         "empty file" if not head else "binary data")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputError(path, "format", "an OpSim CSV file or SQLite database", "not UTF-8 text") from None
    reader = csv.reader(io.StringIO(text))
    header = [h.strip() for h in next(reader)]
    rows = [r for r in reader if r]
    if any(len(r) != len(header) for r in rows):
        bad = next(i for i, r in enumerate(rows) if len(r) != len(header))
        raise InputError(path, "row", f"{len(header)} comma-separated values per row",
                         f"{len(rows[bad])} on line {bad + 2}")
    names, old = _resolve(path, header, use_dither, label)
    data = list(zip(*rows)) if rows else [()] * len(header)
    return label, _fields(names, old, dict(zip(header, data))), old


def _fields(names, old, data):
    """{field: (column name, raw values, angles-in-radians flag)} for the columns present."""
    return {f: (c, data[c], old and f in _RADIANS) for f, c in names.items()}


def _numbers(path, label, col, values, finite):
    """Raw column values (strings or SQLite values) as float64, with a one-line error on bad ones."""
    try:
        out = np.array(values, dtype=object).astype(np.float64)
    except (TypeError, ValueError):
        for i, v in enumerate(values):
            try:
                float(v)
            except (TypeError, ValueError):
                raise InputError(path, label(col), "numbers", f"{v!r} in data row {i + 1}") from None
        raise
    if finite and not np.all(np.isfinite(out)):
        i = int(np.flatnonzero(~np.isfinite(out))[0])
        what = "finite seeing (arcsec)" if col in ("FWHMeff", "seeingFwhmEff") else "finite numbers"
        raise InputError(path, label(col), what, f"{out[i]} in data row {i + 1}")
    return out


def _assemble(path, label, cols, old, field_id, ra, dec, radius_deg, use_dither):
    """Check, convert and select the raw columns into a sorted VISIT_DTYPE array."""
    col_name = {f: c for f, (c, _, _) in cols.items()}
    n_rows = len(cols["mjd"][1])
    if n_rows == 0 and field_id is None and ra is None:
        raise InputError(path, label(col_name["mjd"]), "at least one visit", "no rows")
    num = {}
    for field, (col, values, radians) in cols.items():
        if field == "band":
            continue
        x = _numbers(path, label, col, values, finite=_COLUMNS[field][2])
        num[field] = np.degrees(x) if radians else x
    for field in ("field_ra", "rot_sky_pos"):   # degrees in a radians table: wrong schema
        worst = np.nanmax(np.abs(num[field]), initial=0.0) if cols[field][2] else 0.0
        if worst > 360.0 + 1e-4:
            raise InputError(path, label(col_name[field]), "radians (old OpSim schema)",
                             f"{np.radians(worst):.4g}, which looks like degrees")
    band = np.array([str(b).strip() for b in cols["band"][1]])
    bad = ~np.isin(band, list(BANDS))
    if bad.any():
        raise InputError(path, label(col_name["band"]), f"a filter letter in {BANDS}",
                         f"{str(band[bad][0])!r} in data row {int(np.flatnonzero(bad)[0]) + 1}")

    # Selection: by field id where the table has one, else by distance of the field centre.
    if field_id is not None and "field_id" in num:
        keep = num["field_id"] == field_id
        if not keep.any():
            raise InputError(path, label(col_name["field_id"]), f"visits of field {field_id}",
                             f"none in {n_rows} rows")
    elif ra is not None:
        sep = angular_separation(ra, dec, num["field_ra"], num["field_dec"])
        keep = sep <= radius_deg
        if not keep.any():
            raise InputError(path, label(col_name["field_ra"]) + "/" + col_name["field_dec"],
                             f"visits within {radius_deg} deg of (ra, dec) = ({ra}, {dec})",
                             f"none; nearest field centre at {np.nanmin(sep, initial=180.0):.3g} deg")
    elif field_id is not None:
        raise InputError(path, label(_COLUMNS["field_id"][0 if old else 1][0]),
                         f"a field-id column to select field {field_id} (or pass ra and dec)", "missing")
    else:
        keep = np.ones(band.size, bool)

    n = int(keep.sum())
    v = np.zeros(n, VISIT_DTYPE)
    v["band"] = band[keep]
    for field in ("mjd", "fwhm_eff", "five_sigma_depth", "sky_brightness", "airmass"):
        v[field] = num[field][keep]
    v["rot_sky_pos"] = num["rot_sky_pos"][keep] % 360.0
    ids = num["visit_id"][keep]
    if np.any(ids != np.round(ids)):
        raise InputError(path, label(col_name["visit_id"]), "integer visit ids", ids[ids != np.round(ids)][0])
    v["visit_id"] = ids.astype(np.int64)
    pos = "dithered_" if use_dither and "dithered_ra" in num else "field_"
    v["ra"], v["dec"] = num[pos + "ra"][keep] % 360.0, num[pos + "dec"][keep]
    if not np.all(np.isfinite(v["ra"]) & np.isfinite(v["dec"])):
        raise InputError(path, label(col_name[pos + "ra"]), "finite pointings", "NaN")

    # Optional columns: absent or blank values get derived ones.
    def opt(field, derived):
        x = num[field][keep] if field in num else np.full(n, np.nan)
        return np.where(np.isfinite(x), x, derived)
    v["fwhm_geom"] = opt("fwhm_geom", fwhm_geom(v["fwhm_eff"]))
    v["exptime"] = opt("exptime", DEFAULT_EXPTIME)
    v["night"] = opt("night", night_of(v["mjd"])).astype(np.int32)
    if "moon_alt" not in num or "moon_phase" not in num:
        moon_alt, moon_phase = moon_alt_phase(v["mjd"])
    else:
        moon_alt = moon_phase = np.nan
    v["moon_alt"] = opt("moon_alt", moon_alt)
    v["moon_phase"] = opt("moon_phase", moon_phase)
    return v[np.lexsort((v["visit_id"], v["mjd"]))]


def one_per_night_band(visits):
    """Run 1's rule: for each (night, band) keep the visit of lowest airmass (ties: lowest visit_id).

    Returns VISIT_DTYPE sorted by (mjd, visit_id).
    """
    v = np.asarray(visits, dtype=VISIT_DTYPE)
    order = np.lexsort((v["visit_id"], v["airmass"], v["band"], v["night"]))
    v = v[order]
    first = np.ones(v.size, bool)
    first[1:] = (v["night"][1:] != v["night"][:-1]) | (v["band"][1:] != v["band"][:-1])
    v = v[first]
    return v[np.lexsort((v["visit_id"], v["mjd"]))]


def subsample(visits, max_visits):
    """At most `max_visits` visits, deterministic, keeping every band and the band proportions.

    Each band gets a share proportional to its count (largest remainder, at least one), and within
    a band the visits nearest to evenly spaced times between its first and last visit are kept, so
    the subset spans the whole survey. Returns VISIT_DTYPE sorted by (mjd, visit_id).
    """
    v = np.asarray(visits, dtype=VISIT_DTYPE)
    v = v[np.lexsort((v["visit_id"], v["mjd"]))]
    if max_visits >= v.size:
        return v
    bands, counts = np.unique(v["band"], return_counts=True)
    if max_visits < bands.size:
        raise InputError("subsample", "max_visits", f"at least {bands.size} (one visit per band)", max_visits)
    quota = _proportional_quota(counts, max_visits)
    keep = []
    for b, k in zip(bands, quota):
        idx = np.flatnonzero(v["band"] == b)
        keep.append(idx[_spread(v["mjd"][idx], k)])
    return v[np.sort(np.concatenate(keep))]


def _proportional_quota(counts, total):
    """Split `total` over bands in proportion to `counts`, at least 1 and at most count each."""
    ideal = counts * total / counts.sum()
    quota = np.clip(np.floor(ideal).astype(int), 1, counts)
    while quota.sum() < total:      # a few steps at most: largest shortfall first
        quota[np.argmax(np.where(quota < counts, ideal - quota, -np.inf))] += 1
    while quota.sum() > total:      # only after raising small bands to 1
        quota[np.argmin(np.where(quota > 1, ideal - quota, np.inf))] -= 1
    return quota


def _spread(t, k):
    """Indices of k distinct entries of sorted times `t`, nearest to k evenly spaced times."""
    if k >= t.size:
        return np.arange(t.size)
    target = np.linspace(t[0], t[-1], k)
    near = np.clip(np.searchsorted(t, target), 1, t.size - 1)
    near -= (target - t[near - 1]) < (t[near] - target)
    # Push collisions forward, and back from the end, so that the k indices are distinct.
    j = np.arange(k)
    chosen = np.maximum.accumulate(np.maximum(near - j, 0)) + j
    return np.minimum(chosen, t.size - k + j)


# ------------------------------------------------------------------------------- ephemerides
def night_of(mjd):
    """OpSim night number of an MJD (nights roll over at noon UTC; night 0 began MJD 59579.5)."""
    return np.floor(np.asarray(mjd) - NIGHT_ZERO_MJD).astype(np.int64)


def angular_separation(ra1, dec1, ra2, dec2):
    """Great-circle distance between points given in degrees, degrees (haversine: exact when small)."""
    ra1, dec1, ra2, dec2 = (np.radians(np.asarray(x, dtype=np.float64)) for x in (ra1, dec1, ra2, dec2))
    h = np.sin((dec2 - dec1) / 2) ** 2 + np.cos(dec1) * np.cos(dec2) * np.sin((ra2 - ra1) / 2) ** 2
    return np.degrees(2 * np.arcsin(np.sqrt(np.clip(h, 0, 1))))


def _altitude(mjd, ra, dec):
    """Altitude (degrees) at the site of a position (degrees) at time `mjd`; also the hour angle."""
    gmst = 280.46061837 + 360.98564736629 * (np.asarray(mjd) - 51544.5)
    ha = np.radians(gmst + SITE_LON - ra)
    lat, d = np.radians(SITE_LAT), np.radians(dec)
    alt = np.arcsin(np.sin(lat) * np.sin(d) + np.cos(lat) * np.cos(d) * np.cos(ha))
    return np.degrees(alt), ha


def _sun_radec(mjd):
    """Sun RA, Dec (degrees), Astronomical Almanac low-precision formulae (0.01 deg)."""
    n = np.asarray(mjd) - 51544.5
    g = np.radians(357.528 + 0.9856003 * n)
    lam = np.radians(280.460 + 0.9856474 * n + 1.915 * np.sin(g) + 0.020 * np.sin(2 * g))
    eps = np.radians(23.439 - 4e-7 * n)
    return (np.degrees(np.arctan2(np.cos(eps) * np.sin(lam), np.cos(lam))) % 360,
            np.degrees(np.arcsin(np.sin(eps) * np.sin(lam))))


def _moon_radec(mjd):
    """Geocentric Moon RA, Dec (degrees), Astronomical Almanac low-precision series (0.3 deg)."""
    T = (np.asarray(mjd) - 51544.5) / 36525.0
    s = lambda a, b: np.sin(np.radians(a + b * T))  # noqa: E731
    lam = np.radians(218.32 + 481267.881 * T + 6.29 * s(135.0, 477198.87) - 1.27 * s(259.3, -413335.36)
                     + 0.66 * s(235.7, 890534.22) + 0.21 * s(269.9, 954397.74)
                     - 0.19 * s(357.5, 35999.05) - 0.11 * s(186.5, 966404.03))
    bet = np.radians(5.13 * s(93.3, 483202.02) + 0.28 * s(228.2, 960400.89)
                     - 0.28 * s(318.3, 6003.15) - 0.17 * s(217.6, -407332.21))
    eps = np.radians(23.439 - 0.013 * T)
    x = np.cos(bet) * np.cos(lam)
    y = np.cos(eps) * np.cos(bet) * np.sin(lam) - np.sin(eps) * np.sin(bet)
    z = np.sin(eps) * np.cos(bet) * np.sin(lam) + np.cos(eps) * np.sin(bet)
    return np.degrees(np.arctan2(y, x)) % 360, np.degrees(np.arcsin(z))


def _moon(mjd):
    """Topocentric Moon altitude (deg), phase (percent illuminated) and geocentric RA, Dec (deg)."""
    mra, mdec = _moon_radec(mjd)
    sra, sdec = _sun_radec(mjd)
    alt, _ = _altitude(mjd, mra, mdec)
    alt = alt - 0.95 * np.cos(np.radians(alt))       # lunar parallax (57 arcmin horizontal)
    phase = 50.0 * (1.0 - np.cos(np.radians(angular_separation(sra, sdec, mra, mdec))))
    return alt, phase, mra, mdec


def moon_alt_phase(mjd):
    """Topocentric Moon altitude (degrees) and phase (percent illuminated) at the site.

    Matches the Run 1 OpSim moonAlt to 0.4 deg and moonPhase to 0.8 percent.
    """
    return _moon(mjd)[:2]


def parallactic_angle(ha, dec):
    """Parallactic angle (degrees) for hour angle `ha` (radians) and declination `dec` (degrees)."""
    lat, d = np.radians(SITE_LAT), np.radians(dec)
    return np.degrees(np.arctan2(np.sin(ha), np.tan(lat) * np.cos(d) - np.sin(d) * np.cos(ha)))


# ------------------------------------------------------------------------ synthetic cadence
# Every number below was fitted to the Run 1 visit list (shared/data/twinkles_run1_opsim_visits.csv,
# kraken_1042 fieldID 1427) unless it says otherwise; docs/cadence.md gives the comparison.
_STAGE_CADENCE = 0xCADE           # random-stream key of this stage, with the run seed
_TWILIGHT_ALT = -12.0             # deg; Run 1 sunAlt never exceeds -12.95
_MAX_AIRMASS = 1.5                # DDF airmass limit; 99.8% of Run 1 visits are below it
# A night counts if dark & X < 1.5 lasts this long (hours): longer when the field rises during
# the night than when it is already up at dusk. The shortest windows of Run 1 nights are 4.25 h
# and 3.33 h: every season runs from about 1 Sep to mid-Jan, as in Run 1.
_MIN_WINDOW_RISING_H, _MIN_WINDOW_AT_DUSK_H = 4.2, 3.3
_GRID_MIN = 5.0                   # minutes; time grid on which the nightly windows are found
# Hours from the window opening to the first visit, lognormal (median, sigma_ln): Run 1 u nights
# have median 0.80 h (5-95% 0.43-1.9 h), sequence nights 0.90 h (10-90% 0.43-2.6 h).
_DELAY_U, _DELAY_SEQ = (0.80, 0.45), (0.90, 0.80)
#: Minutes after the sequence start of each band on a multi-band night: Run 1's r, g, i, z, y
#: order with its median offsets. u is observed alone, on dark nights.
_SEQUENCE_MIN = {"r": 0.0, "g": 8.0, "i": 22.0, "z": 39.5, "y": 53.5}
_U_AFTER_SEQUENCE_MIN = 67.0      # only where a u visit must share a night with the sequence
# Moon preference of the nights: relative weight against moon phase (percent illuminated), the
# Run 1 histograms divided by those of the observable nights. u takes new moon (weight falling
# linearly to 0 at 27%: every Run 1 u visit has moonPhase < 26.6, 76% below 10%). The sequence
# avoids new moon (left to u: 1 of 196 r visits below 10%) and, when the moon is up at its
# start, a bright moon (Run 1: 61% of r visits at phase > 90% had the moon up, against 95% of
# the observable nights).
_U_MAX_MOON_PHASE = 27.0
_SEQ_MOON_DOWN = ([0.0, 5.0, 30.0, 100.0], [0.03, 0.03, 1.0, 1.0])
_SEQ_MOON_UP = ([0.0, 10.0, 30.0, 75.0, 85.0, 100.0], [0.03, 0.1, 0.6, 1.0, 0.3, 0.05])
# Seeing: the zenith FWHM at 500 nm, s, is gamma-distributed, one value per night (fit to Run 1
# rawSeeing: shape 13.2, scale 0.0466 arcsec, median 0.60; KS distance 0.04, a lognormal's 0.06).
# FWHMeff = 1.16 sqrt((0.4 X^0.6)^2 + 1.04 (s (lam/500)^-0.3 X^0.6)^2) (SMTN-002 / OpSim v3)
# reproduces Run 1's FWHMeff from rawSeeing and airmass to 0.3%.
_SEEING_SHAPE, _SEEING_SCALE = 13.2, 0.0466
_LAMBDA_EFF_NM = {"u": 368.48, "g": 480.20, "r": 623.12, "i": 754.17, "z": 869.05, "y": 973.64}  # OpSim v3
# Sky: dark sky S0 (mag/arcsec^2 at zenith) brightening as X 10^(-0.4 k (X - 1)), plus moonlight
# from Krisciunas & Schaefer (1991, PASP 103, 1033) scaled by 10^logc, with k an effective
# scattering coefficient and the moon counted down to 10 deg below the horizon (OpSim v3 did:
# without it the 5-10% of Run 1 visits with a bright moon just set are off by 1-2 mag). Fitted
# per band to Run 1 (soft-L1 loss); sigma is the residual's scaled MAD. OpSim v3 held the y sky
# at 17.3 (188 of Run 1's 192 y visits), so y is that constant.
_SKY = {  # band: (S0, logc, k, sigma)
    "u": (22.241, -10.229, 0.242, 0.007),
    "g": (21.989, -10.579, 0.257, 0.015),
    "r": (21.288, -10.847, 0.363, 0.036),
    "i": (20.219, -10.546, 0.393, 0.047),
    "z": (19.425, -10.252, 0.419, 0.040),
}
_Y_SKY = 17.3
_MOON_BELOW_HORIZON = 10.0        # deg
#: Cm of the SMTN-002 m5 formula that reproduces Run 1's fiveSigmaDepth (median of
#: m5 - formula, with kAtm from instrument.K_ATM; rms per visit u 0.03, g 0.03, r 0.02, i 0.01,
#: z 0.007, y 0.001 mag). 0.01-0.11 mag above SMTN-002's bare Cm (u 23.09 g 24.42 r 24.44
#: i 24.32 z 24.16 y 23.73): OpSim v3 used older throughputs.
CM_RUN1 = {"u": 23.18, "g": 24.53, "r": 24.49, "i": 24.36, "z": 24.19, "y": 23.74}
# rotTelPos: before transit about N(5, 32) deg within the +-90 deg rotator limit, after transit 0
# (Run 1: 1005 visits east of the meridian, none at 0; 222 west, 97% at 0). rotSkyPos =
# rotTelPos - parallactic angle, exact for every Run 1 visit.
_ROT_TEL_MEAN, _ROT_TEL_SD = 5.0, 32.0


def five_sigma_depth(band, fwhm_eff, sky_brightness, airmass, exptime=DEFAULT_EXPTIME, cm=CM_RUN1):
    """SMTN-002 point-source 5-sigma depth (AB mag) of one visit.

    m5 = Cm + 0.50 (msky - 21) + 2.5 log10(0.7 / FWHMeff) + 1.25 log10(t / 30) - km (X - 1),
    with FWHMeff in arcsec, msky in mag/arcsec^2, t in seconds, km = instrument.K_ATM.
    """
    return (cm[band] + 0.5 * (np.asarray(sky_brightness) - 21.0) + 2.5 * np.log10(0.7 / np.asarray(fwhm_eff))
            + 1.25 * np.log10(np.asarray(exptime) / 30.0) - K_ATM[band] * (np.asarray(airmass) - 1.0))


def sky_brightness(band, airmass, moon_alt, moon_phase, moon_sep):
    """Sky surface brightness (mag/arcsec^2) of the Run 1 sky model, without its scatter.

    `moon_alt` and `moon_sep` (Moon to field) in degrees, `moon_phase` in percent illuminated.
    """
    if check_band(band) == "y":
        return np.full(np.shape(airmass), _Y_SKY)
    s0, logc, k, _ = _SKY[band]
    x = np.asarray(airmass, dtype=np.float64)
    dark = 10.0 ** (-0.4 * s0) * x * 10.0 ** (-0.4 * k * (x - 1.0))
    alpha = np.degrees(np.arccos(np.clip(2.0 * np.asarray(moon_phase) / 100.0 - 1.0, -1.0, 1.0)))
    lunar = 10.0 ** (-0.4 * (3.84 + 0.026 * alpha + 4e-9 * alpha ** 4))    # K&S: vs phase angle
    rho = np.asarray(moon_sep, dtype=np.float64)
    scatter = 10.0 ** 5.36 * (1.06 + np.cos(np.radians(rho)) ** 2) + 10.0 ** (6.15 - rho / 40.0)
    alt = np.asarray(moon_alt) + _MOON_BELOW_HORIZON
    x_moon = 1.0 / np.sqrt(1.0 - 0.96 * np.cos(np.radians(np.clip(alt, 0.0, 90.0))) ** 2)
    # Moonlight extinguished on its way down, then scattered into the line of sight (K&S 1991).
    moon = scatter * lunar * 10.0 ** (-0.4 * k * x_moon) * (1.0 - 10.0 ** (-0.4 * k * x))
    moon = np.where(alt > 0, moon, 0.0)
    return -2.5 * np.log10(dark + 10.0 ** logc * moon)


def _observable_nights(start_mjd, years, ra, dec):
    """Nights when (ra, dec) is below airmass 1.5 in astronomical darkness long enough.

    Returns (night number, window start MJD, window end MJD); nights count from the one that
    contains `start_mjd`, rolling over at noon UTC.
    """
    noon0 = np.floor(start_mjd - 0.5) + 0.5
    n_nights = int(np.ceil(years * 365.25)) + 1
    step = _GRID_MIN / 1440.0
    t = noon0 + np.arange(n_nights)[:, None] + np.arange(int(1440 / _GRID_MIN))[None, :] * step
    sun_alt, _ = _altitude(t, *_sun_radec(t))
    alt, _ = _altitude(t, ra, dec)
    ok = (sun_alt < _TWILIGHT_ALT) & (alt > np.degrees(np.arcsin(1.0 / _MAX_AIRMASS)))
    ok &= (t >= start_mjd) & (t < start_mjd + years * 365.25)
    first = np.argmax(ok, axis=1)
    at_dusk = sun_alt[np.arange(n_nights), np.maximum(first - 1, 0)] >= _TWILIGHT_ALT
    good = ok.sum(1) * _GRID_MIN / 60.0 >= np.where(at_dusk, _MIN_WINDOW_AT_DUSK_H, _MIN_WINDOW_RISING_H)
    last = ok.shape[1] - 1 - np.argmax(ok[:, ::-1], axis=1)
    nights = np.flatnonzero(good)
    return nights, t[nights, first[nights]], t[nights, last[nights]]


def _check_counts(counts):
    counts = dict(RUN1_COUNTS if counts is None else counts)
    for b, n in counts.items():
        if b not in BANDS:
            raise InputError("synthetic_cadence", "counts", f"bands from {BANDS}", b)
        if int(n) != n or n < 0:
            raise InputError("synthetic_cadence", f"counts[{b}]", "a non-negative integer", n)
    return {b: int(counts.get(b, 0)) for b in BANDS}


def synthetic_cadence(seed, *, years=10.0, start_mjd=59580.0, ra=FIELD_RA, dec=FIELD_DEC, counts=None):
    """A parametric deep-drilling cadence that mimics Twinkles Run 1 (the embedded default).

    One visit per (night, band) at most, 30 s exposures, on nights when the field (ra, dec in
    degrees) is observable in darkness; u alone on dark nights (moon < 27% illuminated), the
    other bands as one r-g-i-z-y sequence per night. Seeing, airmass, rotator angle, moon, sky
    brightness and depth follow the Run 1 models above. `counts` maps band -> number of visits
    (default RUN1_COUNTS), `years` is the survey length from `start_mjd`. Deterministic in
    `seed`. Returns VISIT_DTYPE sorted by (mjd, visit_id); visit_id counts 1, 2, ... in time.
    """
    counts = _check_counts(counts)
    rng = np.random.default_rng([int(seed), _STAGE_CADENCE])
    nights, w0, w1 = _observable_nights(start_mjd, years, ra, dec)
    n_cand = nights.size
    seq_bands = [b for b in _SEQUENCE_MIN if counts[b] > 0]
    n_seq = max((counts[b] for b in seq_bands), default=0)
    if max(n_seq, counts["u"]) > n_cand:
        raise InputError("synthetic_cadence", "counts",
                         f"at most {n_cand} visits per band (observable nights in {years} yr)", counts)

    # Draws over all candidate nights, in a fixed order, so the result depends on the seed alone.
    gauss = rng.standard_normal(n_cand)
    delay_u, delay_seq = (med / 24.0 * np.exp(sig * gauss) for med, sig in (_DELAY_U, _DELAY_SEQ))
    u_key, seq_key = 1.0 - rng.random(n_cand), 1.0 - rng.random(n_cand)    # in (0, 1]
    seeing = rng.gamma(_SEEING_SHAPE, _SEEING_SCALE, n_cand)

    # Weighted sampling without replacement (Efraimidis & Spirakis 2006: smallest -log(U)/w).
    # Weights grow with the window's length: Run 1 has more visits in Nov-Dec than in Sep.
    hours = (w1 - w0) * 24.0
    _, phase0 = moon_alt_phase(np.minimum(w0 + delay_u, w1))
    u_weight = hours * np.clip(1.0 - phase0 / _U_MAX_MOON_PHASE, 0.0, None)
    u_key = np.where(u_weight > 0, -np.log(u_key) / np.maximum(u_weight, 1e-300), np.inf)
    u_nights = np.lexsort((phase0, u_key))[:counts["u"]]   # past the dark nights: least lit first
    taken = np.zeros(n_cand, bool)
    taken[u_nights] = True
    moon_alt1, phase1 = moon_alt_phase(np.minimum(w0 + delay_seq, w1))
    weight = np.where(moon_alt1 > 0, np.interp(phase1, *_SEQ_MOON_UP), np.interp(phase1, *_SEQ_MOON_DOWN))
    seq_key = -np.log(seq_key) / (hours * weight)
    seq_nights = np.lexsort((seq_key, taken))[:n_seq]      # nights left by u first

    night_idx, bands, offset = [u_nights], [np.full(u_nights.size, "u")], [np.zeros(u_nights.size)]
    shared = np.isin(u_nights, seq_nights)
    offset[0][shared] = _U_AFTER_SEQUENCE_MIN
    for b in seq_bands:
        on = np.ones(n_seq, bool)
        on[rng.choice(n_seq, n_seq - counts[b], replace=False)] = False   # nights this band skips
        night_idx.append(seq_nights[on])
        bands.append(np.full(on.sum(), b))
        offset.append(np.full(on.sum(), _SEQUENCE_MIN[b]))
    night_idx, bands = np.concatenate(night_idx), np.concatenate(bands)
    offset = np.concatenate(offset) / 1440.0

    # Start each night's block after the window opens, early enough for the block to finish in it.
    span = np.zeros(n_cand)
    np.maximum.at(span, night_idx, offset)
    delay = np.where(np.isin(np.arange(n_cand), seq_nights), delay_seq, delay_u)
    start = np.clip(w0 + delay, w0, np.maximum(w1 - span - 30.0 / 86400.0, w0))
    mjd = start[night_idx] + offset
    n = mjd.size

    v = np.zeros(n, VISIT_DTYPE)
    v["mjd"], v["band"], v["night"], v["exptime"] = mjd, bands, nights[night_idx], DEFAULT_EXPTIME
    v["ra"], v["dec"] = ra % 360.0, dec
    alt, ha = _altitude(mjd, ra, dec)
    v["airmass"] = 1.0 / np.sin(np.radians(alt))
    lam = np.array([_LAMBDA_EFF_NM[b] for b in bands])
    x06 = v["airmass"] ** 0.6
    atm = seeing[night_idx] * (lam / 500.0) ** -0.3 * x06
    v["fwhm_eff"] = 1.16 * np.sqrt((0.4 * x06) ** 2 + 1.04 * atm ** 2)
    v["fwhm_geom"] = fwhm_geom(v["fwhm_eff"])
    rot_tel = np.where(np.sin(ha) < 0, np.clip(rng.normal(_ROT_TEL_MEAN, _ROT_TEL_SD, n), -90.0, 90.0), 0.0)
    v["rot_sky_pos"] = (rot_tel - parallactic_angle(ha, dec)) % 360.0
    v["moon_alt"], v["moon_phase"], moon_ra, moon_dec = _moon(mjd)
    moon_sep = angular_separation(ra, dec, moon_ra, moon_dec)
    noise = rng.standard_normal(n)
    for b in BANDS:
        m = bands == b
        sigma = _SKY[b][3] if b in _SKY else 0.0
        v["sky_brightness"][m] = sky_brightness(b, v["airmass"][m], v["moon_alt"][m], v["moon_phase"][m],
                                                moon_sep[m]) + sigma * noise[m]
        v["five_sigma_depth"][m] = five_sigma_depth(b, v["fwhm_eff"][m], v["sky_brightness"][m],
                                                    v["airmass"][m], v["exptime"][m])
    v = v[np.argsort(mjd, kind="stable")]
    v["visit_id"] = np.arange(1, n + 1)
    return v
