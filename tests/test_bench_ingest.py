"""bench ingest (bench/ingest.py) and its synthetic catalogue (bench/catalogue.py): the catalogue has Run 1.1's
proportions at every scale, valid rows that do not depend on how they are grouped into calls, and the bench
prints and records its table at a tiny scale on SQLite."""
import numpy as np
import pytest

from twinkles_hpc import cli
from twinkles_hpc.bench.catalogue import FILL, Catalogue, Layout
from twinkles_hpc.bench.ingest import bench_ingest
from twinkles_hpc.errors import InputError
from twinkles_hpc.store import db, schema


@pytest.mark.parametrize("scale, fields, visits, objects", [(1, 1, 1120, 41_653), (10, 10, 1120, 416_530),
                                                            (3, 3, 1120, 124_959), (0.01, 1, 112, 4165)])
def test_layout_scales_run_1_1(scale, fields, visits, objects):
    lay = Layout.of(scale)
    assert (lay.fields, lay.visits, lay.objects) == (fields, visits, objects)
    assert lay.forced_sources == pytest.approx(33.8e6 * scale, rel=0.002)


def test_catalogue_rows_are_valid_and_independent_of_the_calls():
    cat = Catalogue(0.003, seed=4)
    lay = cat.layout
    for table, rows in (("CcdVisit", cat.ccd_visits()), ("Object", cat.objects(0))):
        cols = db._validated(schema.metadata.tables[table], rows)
        assert len(next(iter(cols.values()))[0]) == (lay.ccd_visits if table == "CcdVisit" else lay.objects)
    by_visit = [cat.forced_sources(f, v) for f, v in cat.calls(1)]
    by_chunk = [cat.forced_sources(f, v) for f, v in cat.calls(7)]
    for c in by_visit[0]:
        a, b = (np.concatenate([p[c] for p in parts]) for parts in (by_visit, by_chunk))
        assert np.array_equal(a, b, equal_nan=True)
    fs = Catalogue(0.003, seed=4).forced_sources(0, range(lay.visits))
    assert np.array_equal(fs["psFlux"], np.concatenate([p["psFlux"] for p in by_visit]), equal_nan=True)
    assert len(fs["objectId"]) == pytest.approx(FILL * lay.objects * lay.visits, rel=0.05)
    assert np.isin(fs["objectId"], cat.objects(0)["objectId"]).all()
    assert np.isin(fs["ccdVisitId"], cat.ccd_visits()["ccdVisitId"]).all()
    assert 0 < np.isnan(fs["psFlux"]).mean() < 0.01 and np.all(fs["flags"][np.isnan(fs["psFlux"])] == 4)


def test_bench_prints_and_records_its_table(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("TWINKLES_TEST_DB_OPTION_FILE", raising=False)
    record = tmp_path / "bench.md"
    assert cli.main(["bench", "ingest", "--scale", "0.0005", "--queries", "5", "--rundir", str(tmp_path),
                     "--record", str(record)]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| SQLite")]
    assert "| database | path | ForcedSource rows |" in out and len(rows) == 1
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    assert cells[1] == "INSERT" and int(cells[2].replace(",", "")) == pytest.approx(Layout.of(0.0005).forced_sources,
                                                                                    rel=0.05)
    assert float(cells[4].replace(",", "")) > 0 and "MySQL/MariaDB not benched" in out
    assert not [line for line in out.splitlines() if line.startswith("| MariaDB")]
    assert rows[0] in record.read_text() and "- machine: " in record.read_text()
    assert list(tmp_path.iterdir()) == [record]             # the scratch database is removed


def test_bench_refuses_bad_options():
    with pytest.raises(InputError, match="--scale"):
        bench_ingest(0)
    with pytest.raises(InputError, match="--targets"):
        bench_ingest(0.0005, targets="postgres")
    with pytest.raises(InputError, match="--url"):
        bench_ingest(0.0005, url="sqlite:///x.sqlite")
    assert cli.main(["bench", "ingest", "--visits-per-call", "0"]) == 2
