"""What the report reads: the run directory (config, cadence, trace, truth) and the catalogue database.

Every part is optional except the run directory and its config.json: a missing piece is recorded with
the reason (`RunData.missing`), and the section that needs it says so on the page.
"""
import os

import numpy as np
import sqlalchemy as sa

from twinkles_hpc.errors import InputError
from twinkles_hpc.rundir import layout, read_jsonl
from twinkles_hpc.store import db, schema
from twinkles_hpc.store.atomic import open_read
from twinkles_hpc.store.lightcurve import open_database, with_magnitudes
from twinkles_hpc.store.tables import read_table
from twinkles_hpc.validation.cost import last_per_task

BANDS = "ugrizy"
#: Band colours of the plots (the usual blue-to-red sequence, readable on white).
BAND_COLOURS = {"u": "#56b4e9", "g": "#009e73", "r": "#e69f00", "i": "#d55e00", "z": "#cc79a7", "y": "#7f3f00"}


class RunData:
    """The inputs of a report. Raises InputError (exit 2) only when the run directory or its config.json
    is missing; everything else is read on demand and may be None with a reason in `missing`."""

    def __init__(self, rundir, db_url=None):
        self.rundir = os.path.abspath(rundir)
        if not os.path.isdir(self.rundir):
            raise InputError(self.rundir, "run directory", "an existing twinkles-hpc run directory", "not found")
        cj = os.path.join(self.rundir, layout.CONFIG_JSON)
        if not os.path.isfile(cj):
            raise InputError(cj, "file", "the run's config (a twinkles-hpc run directory)", "missing")
        from twinkles_hpc.rundir import read_config_dict
        self.config = read_config_dict(self.rundir)
        self.name = self.config.get("run", {}).get("name", os.path.basename(self.rundir))
        self.missing, self.db_url, self._tables = {}, db_url, None
        self.visits = self._visits()
        self.trace = self._trace()
        self.engine = self._engine(db_url)

    def path(self, *parts):
        return os.path.join(self.rundir, *parts)

    def _visits(self):
        p = self.path(layout.VISITS)
        if not os.path.exists(p):
            self.missing["visits"] = f"no cadence: {p} not found"
            return None
        with open_read(p) as fh:
            v = read_table(fh["visits"])
        return v[np.argsort(v["mjd"], kind="stable")]

    def _trace(self):
        p = self.path(layout.TRACE)
        if not os.path.exists(p):
            self.missing["trace"] = f"no trace: {p} not found"
            return None
        return read_jsonl(p)

    def _engine(self, url):
        if url:                    # asked for by name: a database that cannot be read is bad input
            return open_database(url=url)
        try:
            return open_database(rundir=self.rundir)
        except InputError as exc:
            self.missing["database"] = f"no catalogue database ({exc}); run with [level2] ingest = true or give --db"
            return None

    def close(self):
        if self.engine is not None:
            self.engine.dispose()

    def task_records(self):
        """The last trace record of each task, for per-task numbers."""
        return last_per_task(self.trace) if self.trace is not None else []

    # ---- database queries -------------------------------------------------------------------------
    def query(self, stmt):
        """Rows of a select as a dict of numpy arrays (empty arrays when there are none)."""
        with self.engine.connect() as conn:
            res = conn.execute(stmt)
            keys, rows = list(res.keys()), res.all()
        cols = list(zip(*rows)) if rows else [()] * len(keys)
        return {k: _array(c) for k, c in zip(keys, cols)}

    def count(self, table):
        t = schema.metadata.tables[table]
        with self.engine.connect() as conn:
            return conn.execute(sa.select(sa.func.count()).select_from(t)).scalar()

    def has_tables(self, *names):
        if self.engine is None:
            return False
        if self._tables is None:
            self._tables = set(sa.inspect(self.engine).get_table_names())
        return all(n in self._tables for n in names)

    def ccd_visits(self):
        cv = schema.CcdVisit
        return self.query(sa.select(cv.c.ccdVisitId, cv.c.filterName, cv.c.expMidpt, cv.c.seeing,
                                    cv.c.zeroPoint, cv.c.skyNoise, cv.c.skyBg).order_by(cv.c.expMidpt))

    def nearest_matches(self, kind, max_distance=None):
        """For each truth source of `kind` with an Object within the match radius: the nearest Object
        (truthId, objectId, distance_arcsec), as db.object_of_truth does one at a time."""
        m = schema.ObjectTruthMatch
        q = sa.select(m.c.truthId, m.c.objectId, m.c.distance_arcsec).where(m.c.truthKind == kind)
        if max_distance is not None:
            q = q.where(m.c.distance_arcsec <= max_distance)
        r = self.query(q.order_by(m.c.truthId, m.c.distance_arcsec, m.c.objectId))
        if len(r["truthId"]) == 0:
            return r
        first = np.r_[True, r["truthId"][1:] != r["truthId"][:-1]]
        return {k: v[first] for k, v in r.items()}

    def object_nearest_kind(self, object_ids):
        """{objectId: truthKind of its nearest truth source}."""
        m = schema.ObjectTruthMatch
        out = {}
        ids = [int(i) for i in object_ids]
        for k in range(0, len(ids), 500):
            r = self.query(sa.select(m.c.objectId, m.c.truthKind, m.c.distance_arcsec)
                           .where(m.c.objectId.in_(ids[k:k + 500]))
                           .order_by(m.c.objectId, m.c.distance_arcsec.desc(), m.c.truthId.desc()))
            out.update(zip(r["objectId"].tolist(), r["truthKind"].tolist()))     # the nearest is written last
        return out

    def truth_flux(self, source_ids):
        """TruthVariableFlux rows of these sources: sourceId, visitId, filterName, mjd, mag, fluxNjy."""
        t = schema.TruthVariableFlux
        ids = [int(i) for i in source_ids]
        parts = [self.query(sa.select(t.c.sourceId, t.c.visitId, t.c.filterName, t.c.mjd, t.c.mag, t.c.fluxNjy)
                            .where(t.c.sourceId.in_(ids[k:k + 500]))) for k in range(0, len(ids), 500)]
        if not parts:
            return {c: np.zeros(0) for c in ("sourceId", "visitId", "filterName", "mjd", "mag", "fluxNjy")}
        return {c: np.concatenate([p[c] for p in parts]) for c in parts[0]}

    def measured_visits(self, object_ids):
        """{objectId: set of ccdVisitIds with an unflagged ForcedSource}."""
        fs = schema.ForcedSource
        ids = sorted({int(i) for i in object_ids})
        out = {}
        for k in range(0, len(ids), 500):
            r = self.query(sa.select(fs.c.objectId, fs.c.ccdVisitId)
                           .where(fs.c.objectId.in_(ids[k:k + 500]) & (fs.c.flags == 0)))
            for o, v in zip(r["objectId"].tolist(), r["ccdVisitId"].tolist()):
                out.setdefault(o, set()).add(v)
        return out

    def rows_by_id(self, table, id_col, ids):
        t = schema.metadata.tables[table]
        ids = [int(i) for i in ids]
        parts = [self.query(sa.select(t).where(t.c[id_col].in_(ids[k:k + 500]))) for k in range(0, len(ids), 500)]
        if not parts:
            return self.query(sa.select(t).where(sa.false()))
        return {c: np.concatenate([p[c] for p in parts]) for c in parts[0]}

    def light_curve(self, object_id, truth_id=None):
        """db.light_curve with psMag, psMag_Sigma, truthMag (store.lightcurve.with_magnitudes)."""
        return with_magnitudes(db.light_curve(self.engine, object_id, truth_id=truth_id))


def _array(col):
    if not col:
        return np.zeros(0)
    if any(isinstance(x, str) for x in col):
        return np.array(["" if x is None else x for x in col])
    if all(isinstance(x, (int, np.integer)) or x is None for x in col) and None not in col:
        return np.array(col, dtype=np.int64)
    return np.array([np.nan if x is None else x for x in col], dtype=np.float64)
