"""The catalogue database as Parquet, the way DESC and Rubin users load catalogues (pandas, dask, pyarrow).

`export(engine, out_dir)` writes every non-empty table of the schema that the database holds, with its DPDD
/ Qserv column names and SQL types (BIGINT -> int64, DOUBLE -> float64, INTEGER -> int32, SMALLINT -> int16,
BOOLEAN -> bool, VARCHAR -> string; NULL kept as null):

- per-visit tables (ForcedSource, DiaForcedSource, DiaSource, LensedImageForcedSource) as hive-partitioned
  datasets by band, `TABLE/filterName=B/part-KKKK.parquet` (ForcedSource takes its band from CcdVisit), each
  file at most ROWS_PER_FILE rows; the band is the partition's, not a column of the files;
- every other table as `TABLE.parquet`.

Rows are read in primary-key order in batches of BATCH_ROWS (a 10^9-row ForcedSource never sits in memory)
and each file is written under a temporary name and renamed: an interrupted export leaves whole files only.
`pyarrow.dataset.dataset(out_dir + "/ForcedSource", partitioning="hive")` reads a partitioned table back.
"""
from __future__ import annotations

import os

import numpy as np
import sqlalchemy as sa

from twinkles_hpc.store import schema

#: Rows fetched per query batch, and the most rows in one Parquet file.
BATCH_ROWS = 200_000
ROWS_PER_FILE = 5_000_000
#: Tables written partitioned by band.
BY_BAND = ("ForcedSource", "DiaForcedSource", "DiaSource", "LensedImageForcedSource")


def _arrow_type(col):
    import pyarrow as pa
    t = col.type
    if isinstance(t, sa.BigInteger):
        return pa.int64()
    if isinstance(t, sa.SmallInteger):
        return pa.int16()
    if isinstance(t, sa.Integer):
        return pa.int32()
    if isinstance(t, sa.Boolean):
        return pa.bool_()
    if isinstance(t, (sa.Float, sa.Double, sa.Numeric)):
        return pa.float64()
    return pa.string()


def _schema(columns):
    import pyarrow as pa
    return pa.schema([pa.field(c.name, _arrow_type(c), nullable=c.nullable) for c in columns])


class _Files:
    """Parquet files of one table (or one band of it): a new file every ROWS_PER_FILE rows, each written
    under a temporary name and renamed when closed."""

    def __init__(self, folder, stem, arrow_schema, single):
        self.folder, self.stem, self.schema, self.single = folder, stem, arrow_schema, single
        self.writer, self.rows, self.k, self.paths = None, 0, 0, []

    def _path(self):
        return (os.path.join(self.folder, f"{self.stem}.parquet") if self.single
                else os.path.join(self.folder, f"part-{self.k:04d}.parquet"))

    def write(self, table):
        import pyarrow.parquet as pq
        if self.writer is not None and not self.single and self.rows + table.num_rows > ROWS_PER_FILE:
            self.close()
            self.k += 1
        if self.writer is None:
            os.makedirs(self.folder, exist_ok=True)
            self.tmp = self._path() + f".tmp-{os.getpid()}"
            self.writer, self.rows = pq.ParquetWriter(self.tmp, self.schema, compression="zstd"), 0
        self.writer.write_table(table)
        self.rows += table.num_rows

    def close(self):
        if self.writer is not None:
            self.writer.close()
            os.replace(self.tmp, self._path())
            self.paths.append(self._path())
            self.writer = None


def _batch(rows, names, arrow_schema):
    import pyarrow as pa
    cols = list(zip(*rows)) if rows else [()] * len(names)
    return pa.table({n: pa.array(list(c), type=arrow_schema.field(n).type) for n, c in zip(names, cols)},
                    schema=arrow_schema)


def _keyed_batches(conn, table, query, pk):
    """Rows of `query` in batches of BATCH_ROWS, in primary-key order by keyset pagination (no OFFSET: each
    batch costs its own rows, whatever the table's size)."""
    last = None
    while True:
        q = query
        if last is not None:
            q = q.where(sa.tuple_(*(table.c[k] for k in pk)) > sa.tuple_(*last))
        rows = conn.execute(q.order_by(*(table.c[k] for k in pk)).limit(BATCH_ROWS)).all()
        if not rows:
            return
        yield rows
        last = tuple(rows[-1][i] for i in range(len(pk)))
        if len(rows) < BATCH_ROWS:
            return


def export_table(engine, name, out_dir):
    """Write one table (module docstring); returns {"rows": n, "files": [paths]}."""
    t = schema.metadata.tables[name]
    pk = [c.name for c in t.primary_key.columns]
    cols = list(t.columns)
    by_band = name in BY_BAND
    q = sa.select(*cols)
    if by_band and "filterName" not in t.c:      # ForcedSource: the band of its visit
        cv = schema.CcdVisit
        q = sa.select(*cols, cv.c.filterName).join(cv, cv.c.ccdVisitId == t.c.ccdVisitId)
    names = [c.name for c in cols]
    keep = [i for i, c in enumerate(names) if not (by_band and c == "filterName")]     # the partition holds it
    arrow_schema = _schema([cols[i] for i in keep])
    kept = [names[i] for i in keep]
    files, n = {}, 0
    with engine.connect() as conn:
        for rows in _keyed_batches(conn, t, q, pk):
            n += len(rows)
            if not by_band:
                files.setdefault(None, _Files(out_dir, name, arrow_schema, True)).write(
                    _batch([tuple(r[i] for i in keep) for r in rows], kept, arrow_schema))
                continue
            band_ix = names.index("filterName") if "filterName" in names else len(names)
            bands = np.array([r[band_ix] for r in rows])
            for b in sorted(set(bands.tolist())):
                sel = [tuple(r[i] for i in keep) for r, rb in zip(rows, bands) if rb == b]
                f = files.setdefault(b, _Files(os.path.join(out_dir, name, f"filterName={b}"), name, arrow_schema,
                                               False))
                f.write(_batch(sel, kept, arrow_schema))
    for f in files.values():
        f.close()
    return {"rows": n, "files": sorted(p for f in files.values() for p in f.paths)}


def export(engine, out_dir, tables=None):
    """Every non-empty schema table the database holds (or `tables`), as Parquet under `out_dir`;
    returns {table: {"rows", "files"}}."""
    present = set(sa.inspect(engine).get_table_names())
    names = [n for n in schema.metadata.tables if n in present and (tables is None or n in tables)]
    out = {}
    with engine.connect() as conn:
        counts = {n: conn.execute(sa.select(sa.func.count()).select_from(schema.metadata.tables[n])).scalar()
                  for n in names}
    for n in names:
        if counts[n]:
            out[n] = export_table(engine, n, out_dir)
    return out
