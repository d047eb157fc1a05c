"""Light curves from a run's catalogue database: `twinkles-hpc lightcurve` and `twinkles_hpc.lightcurve`.

    lc = twinkles_hpc.lightcurve("runs/demo", object_id)            # RUNDIR/level2.sqlite
    lc = twinkles_hpc.lightcurve("runs/demo", truth_id=sn_id)       # the Object matched to a supernova
    lc = twinkles_hpc.lightcurve("mysql+pymysql://host/db", object_id, band="r")

The database of a run directory is its [database] url (config.json), else RUNDIR/level2.sqlite; it must
exist (nothing is created). Every problem (no database, unknown Object, bad band, a truth source
without an Object) is an InputError with a one-line message.
"""
import os

import numpy as np
import sqlalchemy as sa

from twinkles_hpc.errors import InputError
from twinkles_hpc.instrument import njy_to_mag
from twinkles_hpc.store import db, schema
from twinkles_hpc.rundir import layout

LEVEL2_TABLES = ("CcdVisit", "Object", "ForcedSource")


def database_url(rundir):
    """The URL of a run directory's database: its [ingest] url, else sqlite:///RUNDIR/level2.sqlite."""
    cj = os.path.join(rundir, layout.CONFIG_JSON)
    if not os.path.isdir(rundir):
        raise InputError(rundir, "run directory", "an existing directory")
    url = ""
    if os.path.exists(cj):
        from twinkles_hpc.rundir import read_config_dict
        url = read_config_dict(rundir).get("ingest", {}).get("url", "")
    return url or db.sqlite_url(rundir)


def open_database(rundir=None, url=None):
    """An engine on an existing, ingested catalogue database: `url`, else the run directory's."""
    url = url or database_url(rundir)
    u = db.check_url(url)
    shown = u.render_as_string(hide_password=True)
    if u.get_backend_name() == "sqlite" and not (u.database and os.path.isfile(u.database)):
        raise InputError(u.database or shown, "database", "an ingested SQLite database (run with [ingest] "
                         "enabled = true)", "no such file")
    engine = db.connect(url)
    try:
        present = set(sa.inspect(engine).get_table_names())
    except sa.exc.DBAPIError as err:         # unreachable, or a file that is not a database
        engine.dispose()
        raise InputError(f"database {shown}", "connection", "a reachable, intact catalogue database",
                         str(err.orig)) from None
    if missing := [t for t in LEVEL2_TABLES if t not in present]:
        engine.dispose()
        raise InputError(f"database {shown}", "tables", "an ingested catalogue (CcdVisit, Object, "
                         "ForcedSource)", f"no table {missing[0]}")
    return engine


def lightcurve(source, object_id=None, band=None, *, truth_id=None):
    """The light curve of one Object as an astropy Table ordered by time (db.light_curve's columns:
    objectId, ccdVisitId, filterName, expMidpt (MJD), psFlux, psFlux_Sigma (nJy), flags, truthFlux (nJy)
    when matched to the truth) plus psMag, psMag_Sigma and truthMag (AB; NaN where the flux is <= 0).

    `source`: a run directory or a database URL (contains '://'). Give `object_id`, or `truth_id` alone to
    take the Object nearest to that truth source (ObjectTruthMatch), or both to compare an Object with one
    of its matches; with `truth_id`, truthFlux is that source's flux, else the Object's nearest match's.
    """
    if band is not None and (not isinstance(band, str) or band not in schema.BANDS):
        raise InputError("lightcurve", "band", f"one of {', '.join(schema.BANDS)}", band)
    if object_id is None and truth_id is None:
        raise InputError("lightcurve", "object", "an objectId or a truth id")
    url = source if "://" in str(source) else None
    engine = open_database(rundir=None if url else str(source), url=url)
    try:
        if object_id is None:
            match = db.object_of_truth(engine, truth_id)
            if match is None:
                raise InputError(f"truth source {int(truth_id)}", "object", "an Object within the match radius "
                                 "(ObjectTruthMatch; [database] match_radius)", "none")
            object_id = match.objectId
        o = schema.Object
        with engine.connect() as conn:
            found = conn.execute(sa.select(o.c.objectId).where(o.c.objectId == int(object_id))).first()
        if found is None:
            raise InputError("lightcurve", "object", "an objectId of the Object table", int(object_id))
        return with_magnitudes(db.light_curve(engine, object_id, band, truth_id=truth_id))
    finally:
        engine.dispose()


def dia_lightcurve(source, dia_object_id, band=None):
    """The DIA light curve of one DiaObject (db.dia_light_curve) as an astropy Table ordered by time, with
    psMag from the difference flux left out (a difference flux may be negative) and truthMag."""
    return _per_visit_curve(source, dia_object_id, band, schema.DiaObject, "diaObjectId", "DiaForcedSource",
                            "DIA tables (a run with [diaforced] and [ingest] enabled)", "dia-object",
                            db.dia_light_curve)


def lensed_lightcurve(source, lensed_image_id, band=None):
    """The light curve of one LensedImage (db.lensed_light_curve) as an astropy Table ordered by time, with
    psMag, psMag_Sigma and truthMag."""
    t = _per_visit_curve(source, lensed_image_id, band, schema.LensedImage, "lensedImageId",
                         "LensedImageForcedSource", "lensed-image tables (a run with [lensphot] and [ingest] "
                         "enabled)", "lensed-image", db.lensed_light_curve)
    return with_magnitudes(t, "psFlux", "psFluxErr")


def _per_visit_curve(source, oid, band, table, id_col, forced_table, what, option, fetch):
    """fetch(engine, oid, band) after checking that `forced_table` exists and `table` holds the id."""
    url = source if "://" in str(source) else None
    engine = open_database(rundir=None if url else str(source), url=url)
    try:
        with engine.connect() as conn:
            present = forced_table in set(sa.inspect(engine).get_table_names())
            found = present and conn.execute(sa.select(table.c[id_col]).where(table.c[id_col] == int(oid))
                                             ).first() is not None
        if not present:
            raise InputError("lightcurve", "database", what, f"no table {forced_table}")
        if not found:
            raise InputError("lightcurve", option, f"a {id_col} of the {table.name} table", int(oid))
        t = fetch(engine, oid, band)
    finally:
        engine.dispose()
    if "truthFlux" in t.colnames:
        t["truthMag"] = njy_to_mag(t["truthFlux"])
        t["truthMag"].unit = "mag"
    return t


def with_magnitudes(t, flux="psFlux", err="psFlux_Sigma"):
    """Add psMag, psMag_Sigma (2.5 / ln 10 x err / flux) and truthMag (when truthFlux is)."""
    t["psMag"] = njy_to_mag(t[flux])
    with np.errstate(divide="ignore", invalid="ignore"):
        t["psMag_Sigma"] = np.where(t[flux] > 0, 2.5 / np.log(10) * t[err] / t[flux], np.nan)
    if "truthFlux" in t.colnames:
        t["truthMag"] = njy_to_mag(t["truthFlux"])
    for c in ("psMag", "psMag_Sigma", "truthMag"):
        if c in t.colnames:
            t[c].unit = "mag"
    return t


def database_summary(rundir):
    """{url (password-free), tables: {table: rows}, bytes (SQLite file size)} of a run directory's
    database, {url, error} when it cannot be read, or None when the run has none."""
    url = database_url(rundir)
    u = db.check_url(url)
    out = {"url": u.render_as_string(hide_password=True)}
    if u.get_backend_name() == "sqlite":
        if not os.path.isfile(u.database):
            return None
        out["bytes"] = os.path.getsize(u.database)
    try:
        engine = db.connect(url)
        try:
            out["tables"] = db.table_counts(engine)
        finally:
            engine.dispose()
    except (sa.exc.SQLAlchemyError, InputError) as err:
        out["error"] = str(getattr(err, "orig", None) or err).splitlines()[0]
    return out
