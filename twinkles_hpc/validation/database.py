"""Does the catalogue database hold what the run's HDF5 products hold? Row counts of CcdVisit (one per
calexp), Object (the primary Objects of every patch) and ForcedSource (every forced row)."""
import os

from twinkles_hpc.errors import InputError


def database_counts(rundir, cfg, url, expected):
    """{"url", "counts", "expected", "difference"} for the tables in `expected` ({table: rows or None}), or a
    null record when there is no database to look at. url None: the run's own database if it ingested one
    ([ingest] enabled = true: [ingest] url, else RUNDIR/level2.sqlite, which must exist)."""
    from twinkles_hpc.store import db
    if url is None:
        if not cfg.ingest.enabled:
            return {"value": None, "reason": "no database: give --db URL, or run with [ingest] enabled = true"}
        url = cfg.ingest.url or None
        if url is None:
            path = os.path.join(rundir, db.SQLITE_NAME)
            if not os.path.exists(path):
                raise InputError(path, "file", "the run's database ([ingest] enabled = true)", "missing")
    import sqlalchemy as sa
    shown = db.check_url(url).render_as_string(hide_password=True) if url else db.sqlite_url(rundir)
    engine = db.connect(url, rundir=rundir)
    try:
        counts = db.table_counts(engine)
    except sa.exc.DBAPIError as err:          # unreachable, or a damaged file (e.g. a truncated SQLite)
        raise InputError(f"database {shown}", "tables", "a readable catalogue database", str(err.orig)) from None
    finally:
        engine.dispose()
    got = {t: counts.get(t, 0) for t in expected}
    diff = {t: (got[t] - n if n is not None else None) for t, n in expected.items()}
    return {"url": shown, "counts": got, "expected": expected, "difference": diff}
