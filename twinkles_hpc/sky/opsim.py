"""Read OpSim visit lists: CSV files or SQLite databases, in the old (v3) and new (v4+) schemas.

Units of the result as in twinkles_hpc.sky.visits; see docs/cadence.md.
"""
import csv
import io
import sqlite3
from pathlib import Path

import numpy as np

from twinkles_hpc.errors import InputError
from twinkles_hpc.instrument import BANDS, fwhm_geom
from twinkles_hpc.sky.ephemeris import angular_separation, moon_alt_phase, night_of
from twinkles_hpc.sky.visits import DEFAULT_EXPTIME, VISIT_DTYPE

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
            if old and where and not rows:     # degrees in a radians table select nothing: say so
                col = names["field_dec"]
                worst = con.execute(f"SELECT MAX(ABS({_quote(col)})) FROM {_quote(table)}").fetchone()[0]
                if worst is not None and float(worst) > np.pi / 2 + 1e-6:
                    raise InputError(path, label(col), "radians (old OpSim schema)",
                                     f"{float(worst):.4g}, which looks like degrees")
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
    for field, limit in (("field_ra", 360.0), ("rot_sky_pos", 360.0), ("field_dec", 90.0)):
        worst = np.nanmax(np.abs(num[field]), initial=0.0) if cols[field][2] else 0.0   # degrees in a
        if worst > limit + 1e-4:                                                       # radians table
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
    uniq, counts = np.unique(v["visit_id"], return_counts=True)
    if (counts > 1).any():                      # a visit id names one exposure: its products, its rows
        dup = int(uniq[counts > 1][0])
        rows = np.flatnonzero(keep)[v["visit_id"] == dup] + 1
        raise InputError(path, label(col_name["visit_id"]), "unique visit ids",
                         f"{dup} in data rows {', '.join(str(r) for r in rows[:5])}"
                         + (f" and {rows.size - 5} more" if rows.size > 5 else ""))
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
