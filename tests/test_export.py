"""The catalogue database as Parquet (store/parquet.py, `twinkles-hpc export`): every table read back equals
the database's, the per-visit tables partitioned by band."""
import numpy as np
import pyarrow.dataset as ds
import pytest
import sqlalchemy as sa
from conftest import cli

from twinkles_hpc.store import db, parquet, schema


@pytest.fixture(scope="module")
def exported(level2_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("parquet") / "pq"
    engine = db.connect(rundir=level2_run)
    got = parquet.export(engine, str(out))
    yield engine, out, got
    engine.dispose()


def _rows(engine, name, band=None):
    t = schema.metadata.tables[name]
    q = sa.select(t).order_by(*t.primary_key.columns)
    if band is not None:
        q = q.where(t.c.filterName == band)
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(q).all()], [c.name for c in t.columns]


def test_every_table_reads_back_equal(exported):
    engine, out, got = exported
    counts = {k: v for k, v in db.table_counts(engine).items() if v}
    assert set(got) == set(counts) and all(got[k]["rows"] == counts[k] for k in counts)
    for name in got:
        t = schema.metadata.tables[name]
        pk = [c.name for c in t.primary_key.columns]
        if name in parquet.BY_BAND:
            table = ds.dataset(str(out / name), format="parquet", partitioning="hive").to_table()
        else:
            table = ds.dataset(str(out / f"{name}.parquet"), format="parquet").to_table()
        table = table.sort_by([(k, "ascending") for k in pk])
        rows, names = _rows(engine, name)
        assert table.num_rows == len(rows), name
        for i, c in enumerate(names):
            if c not in table.column_names:
                assert name == "ForcedSource", (name, c)
                continue
            a = table.column(c).to_pylist()
            b = [r[i] for r in rows]
            if t.c[c].type.python_type is float:
                fa = np.array([np.nan if v is None else v for v in a], float)
                fb = np.array([np.nan if v is None else v for v in b], float)
                assert np.array_equal(fa, fb, equal_nan=True), (name, c)
            else:
                assert a == b, (name, c)


def test_forced_source_is_partitioned_by_its_visits_band(exported):
    engine, out, _ = exported
    table = ds.dataset(str(out / "ForcedSource"), format="parquet", partitioning="hive").to_table(
        columns=["ccdVisitId", "filterName"])
    with engine.connect() as conn:
        band = dict(conn.execute(sa.select(schema.CcdVisit.c.ccdVisitId, schema.CcdVisit.c.filterName)).all())
    v, b = table.column("ccdVisitId").to_pylist(), table.column("filterName").to_pylist()
    assert set(b) == {"g", "r"} and all(band[x] == y for x, y in zip(v, b))
    assert sorted(p.name for p in (out / "ForcedSource").iterdir()) == ["filterName=g", "filterName=r"]


def test_export_command_and_bad_input(level2_run, tmp_path):
    r = cli("export", level2_run, "-o", tmp_path / "pq", "--tables", "CcdVisit,Object")
    assert r.returncode == 0 and sorted(p.name for p in (tmp_path / "pq").iterdir()) == ["CcdVisit.parquet",
                                                                                         "Object.parquet"]
    r = cli("export", level2_run, "-o", tmp_path / "pq2", "--tables", "Nope")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--tables" in r.stderr
    r = cli("export", tmp_path, "-o", tmp_path / "pq3")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "level2.sqlite" in r.stderr
