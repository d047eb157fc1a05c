"""`twinkles-hpc report`: the page and its object pages on a small run with supernovae and lensed quasars
(links resolve, PNGs are valid and not blank, the validation table is validate's JSON, the utilisation is
the trace's), its robustness (missing stages, an empty database, a missing run directory) and its
atomicity (a failed render leaves the previous report)."""
import json
import os
import re
import shutil
import sqlite3
import struct
from html.parser import HTMLParser

import numpy as np
import pytest
from conftest import DIA_STAGES_TOML, campaign_run, cli
from matplotlib.image import imread

from twinkles_hpc.report import ReportLimits, write_report
from twinkles_hpc.report import plots as report_plots

#: One season of g and r on an 800 px sensor with a boosted supernova rate and lensed-quasar density, the
#: whole Level 2 chain and the database: about 25 s under mpiexec -n 2.
REPORT_TOML = """
[run]
name = "report-test"
seed = 5
[cadence]
bands = "gr"
mjd_min = 59820.0
mjd_max = 59960.0
max_visits = 10
[sky]
radius = 0.06
galaxy_mag_limit = 25.5
star_density_scale = 10.0
[supernovae]
rate_boost = 3000.0
[lensing]
density = 20000.0
[sensor]
nx = 800
ny = 800
[calexp]
enabled = true
[coadd]
enabled = true
patch_size = 1000
[objects]
enabled = true
[forced]
enabled = true
""" + DIA_STAGES_TOML + """[ingest]
enabled = true
"""
CAPS = ["--max-sne", "4", "--max-lenses", "3", "--max-stars", "2", "--stamps", "4"]


@pytest.fixture(scope="session")
def sn_run(tmp_path_factory):
    return campaign_run(tmp_path_factory, "report-run", REPORT_TOML, timeout=600)


@pytest.fixture(scope="session")
def report(sn_run):
    r = cli("report", sn_run, *CAPS, check=True)
    assert "report of report-test" in r.stdout
    out = sn_run / "report"
    return out, json.loads((out / "report.json").read_text())


class _Page(HTMLParser):
    """Collects src/href references, element ids, tables (id -> rows of cell text) and script tags."""

    def __init__(self):
        super().__init__()
        self.refs, self.ids, self.tables, self.scripts = [], set(), {}, 0
        self._table, self._row, self._cell = None, None, None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.refs += [a[k] for k in ("src", "href") if k in a]
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "script":
            self.scripts += 1
        if tag == "table":
            self._table = self.tables.setdefault(a.get("id") or f"t{len(self.tables)}", [])
        elif tag == "tr" and self._table is not None:
            self._row = []
            self._table.append((a.get("class"), self._row))
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def parse(path):
    p = _Page()
    p.feed(path.read_text())
    return p


def crawl(index):
    """Every page reachable from index.html by relative links, parsed, and every local file referenced."""
    pages, files, todo = {}, set(), [index.resolve()]
    while todo:
        page = todo.pop()
        if page in pages:
            continue
        pages[page] = parse(page)
        for ref in pages[page].refs:
            assert not re.match(r"^[a-z]+:", ref) and not ref.startswith("//"), f"{page.name}: non-local {ref}"
            target, _, frag = ref.partition("#")
            path = (page.parent / target).resolve() if target else page
            files.add((page, path, frag))
            if path.suffix == ".html" and path.exists():
                todo.append(path)
    return pages, files


def table_rows(page, table_id):
    return [cells for cls, cells in page.tables[table_id] if cells and not all(c == "" for c in cells)][1:]


def png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


# -- the page --------------------------------------------------------------------------------------------
def test_every_reference_resolves_and_nothing_is_external(report):
    out, _ = report
    pages, files = crawl(out / "index.html")
    for page, path, frag in files:
        assert path.exists(), f"{page.relative_to(out)} links to missing {path}"
        assert out.resolve() in path.parents or path == out.resolve(), f"{path} is outside the report"
        if frag and path.suffix == ".html":
            target = pages.get(path) or parse(path)
            assert frag in target.ids, f"{page.name} links to missing anchor {path.name}#{frag}"
    for page, p in pages.items():
        assert p.scripts == 0, f"{page.name} has JavaScript"
        text = page.read_text()
        assert "http://" not in text and "https://" not in text and "url(" not in text
    assert len([p for p in pages if p.parent.name == "objects"]) >= 3
    assert not list(out.parent.glob("report.partial-*")) and not list(out.parent.glob("report.old-*"))


def test_every_png_is_valid_and_shows_something(report):
    out, _ = report
    pngs = sorted(out.rglob("*.png"))
    assert len(pngs) >= 15
    for p in pngs:
        w, h = png_size(p)
        assert w > 0 and h > 0 and p.stat().st_size > 100
        img = imread(p)
        assert img.shape[:2] == (h, w)
        levels = np.round(255 * np.atleast_3d(img)).astype(np.int64)
        packed = sum(levels[..., k] << (8 * k) for k in range(levels.shape[2]))
        assert np.unique(packed).size > 8, f"{p.name} is (nearly) blank"


def test_validation_table_is_the_validate_json(report, sn_run, tmp_path):
    out, summary = report
    js = tmp_path / "v.json"
    r = cli("validate", sn_run, "--json", js)
    assert r.returncode in (0, 1)
    checks = json.loads(js.read_text())["checks"]
    rows = [(cls, cells) for cls, cells in parse(out / "index.html").tables["validation-checks"] if cells][1:]
    assert [c[0] for _, c in rows] == [c["metric"] for c in checks]
    for (cls, cells), c in zip(rows, checks):
        want = {True: ("pass", "PASS"), False: ("fail", "FAIL"), None: ("null", "n/a")}[c["ok"]]
        assert (cls, cells[3]) == want, c["metric"]
        if c["value"] is None:
            assert cells[4] == c["reason"] and cells[1] == "\u2013"
        else:
            assert float(cells[1]) == pytest.approx(c["value"], rel=1e-3, abs=1e-12)
    assert summary["validation"]["n_fail"] == sum(c["ok"] is False for c in checks)
    assert json.loads((out / "validation.json").read_text())["checks"] == checks


def test_supernova_pages_are_the_matched_supernovae(report, sn_run):
    out, summary = report
    con = sqlite3.connect(sn_run / "level2.sqlite")
    matched = {sid: oid for sid, oid in con.execute(
        "SELECT truthId, objectId FROM ObjectTruthMatch WHERE truthKind = 'supernova' "
        "ORDER BY truthId, distance_arcsec DESC, objectId DESC")}            # the nearest is kept (last)
    index = parse(out / "index.html")
    rows = table_rows(index, "sn-index")
    assert summary["supernovae"]["n_matched"] == len(matched) > 4
    assert len(rows) == 4                                                      # --max-sne 4
    for cells in rows:
        sid, oid = int(cells[0]), int(cells[1])
        assert matched[sid] == oid
        page = out / "objects" / f"sn-{sid}.html"
        assert f"objects/sn-{sid}.html" in index.refs and page.exists()
        refs = parse(page).refs
        assert f"sn-{sid}.png" in refs and f"sn-{sid}.csv" in refs
        assert any(r.startswith("stamps/") for r in refs)
        lc = np.genfromtxt(out / "objects" / f"sn-{sid}.csv", delimiter=",", names=True, dtype=None, encoding=None)
        n_fs = con.execute("SELECT COUNT(*) FROM ForcedSource WHERE objectId = ?", (oid,)).fetchone()[0]
        assert len(np.atleast_1d(lc)) == n_fs
        assert (np.atleast_1d(lc)["truthFlux"] > 0).any()                     # the supernova's light is there
    # the DIA light curve of the DiaObject nearest to the supernova, with template / calexp / difference stamps
    dia = [sid for sid in (int(c[0]) for c in rows)
           if f"sn-{sid}-dia.png" in parse(out / "objects" / f"sn-{sid}.html").refs]
    assert dia, "no supernova page shows a DIA light curve"
    for sid in dia:
        refs = parse(out / "objects" / f"sn-{sid}.html").refs
        assert (out / "objects" / f"sn-{sid}-dia.png").exists()
        assert f"stamps/sn-{sid}-dia-difference.png" in refs
    # the best sampled come first: measured epochs brighter than m5 never increase down the table
    n = [int(c[4]) for c in rows]
    assert n == sorted(n, reverse=True)


def test_lensed_systems_and_stars_have_pages(report, sn_run):
    out, summary = report
    assert len(summary["lenses"]["pages"]) == len(table_rows(parse(out / "index.html"), "lens-index"))
    con = sqlite3.connect(sn_run / "level2.sqlite")
    index = parse(out / "index.html")
    lens_rows = table_rows(index, "lens-index")
    assert 1 <= len(lens_rows) <= 3
    for cells in lens_rows:
        sid = int(cells[0])
        n_img = con.execute("SELECT nImg FROM TruthLensSystem WHERE sysId = ?", (sid,)).fetchone()[0]
        assert int(cells[3]) == n_img
        page = parse(out / "objects" / f"lens-{sid}.html")
        assert f"lens-{sid}.png" in page.refs
        assert len(table_rows(page, "images")) == n_img                       # one row per lensed image
    star_rows = table_rows(index, "star-index")
    assert len(star_rows) == 2
    assert float(star_rows[0][2]) <= float(star_rows[1][2])                   # brightest first
    for cells in star_rows:
        assert (out / "objects" / f"star-{int(cells[0])}.png").exists()


def test_utilisation_matches_the_trace(report, sn_run):
    out, summary = report
    assert summary["jobs"] >= 1
    recs = [json.loads(line) for line in (sn_run / "trace.jsonl").read_text().splitlines() if line.strip()]
    t0, t1 = min(r["start"] for r in recs), max(r["end"] for r in recs)
    rows = table_rows(parse(out / "index.html"), "utilisation")
    ranks = sorted({r["rank"] for r in recs})
    assert [c[0] for c in rows] == [f"rank {k}" for k in ranks]
    for k, cells in zip(ranks, rows):
        busy = sum(r["end"] - r["start"] for r in recs if r["rank"] == k)
        assert int(cells[1]) == sum(r["rank"] == k for r in recs)
        assert float(cells[2]) == pytest.approx(busy, abs=0.006)
        assert float(cells[3]) == pytest.approx(100 * busy / (t1 - t0), abs=0.06)
    assert summary["trace"]["span_s"] == pytest.approx(t1 - t0)


# -- robustness ------------------------------------------------------------------------------------------
def test_missing_run_directory_is_exit_2(tmp_path):
    r = cli("report", tmp_path / "nope")
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and str(tmp_path / "nope") in r.stderr
    (tmp_path / "empty").mkdir()
    r = cli("report", tmp_path / "empty")
    assert r.returncode == 2 and "config.json" in r.stderr and r.stderr.count("\n") == 1
    assert not (tmp_path / "empty" / "report").exists()


def test_a_run_without_level2_products_says_so(sn_run, tmp_path):
    """Only the simulation's outputs (no calexps, coadds, Objects or database): every section renders and
    says what is missing."""
    run = tmp_path / "bare"
    run.mkdir()
    for name in ("config.json", "visits.h5", "truth.h5", "trace.jsonl"):
        shutil.copy(sn_run / name, run / name)
    summary = write_report(run, limits=ReportLimits(max_supernovae=2, max_lenses=1, max_stars=1), jobs=1)
    text = (run / "report" / "index.html").read_text()
    assert "no coadds in this run" in text
    assert "the validation could not run" in text and "calexp/v" in text
    assert "no catalogue database" in text and "no supernova pages" in text and "no lensed quasar pages" in text
    assert summary["supernovae"]["pages"] == [] and "database" in summary["missing"]
    assert (run / "report" / "cadence.png").exists() and (run / "report" / "trace.png").exists()


def test_no_supernovae_or_lenses_in_the_database(report, sn_run, tmp_path):
    """A database whose truth holds no supernova and no lensed quasar (as with [supernovae] and [lensing]
    enabled = false): the page says so and the star pages remain."""
    db = tmp_path / "level2.sqlite"
    shutil.copy(sn_run / "level2.sqlite", db)
    con = sqlite3.connect(db)
    con.execute("DELETE FROM ObjectTruthMatch WHERE truthKind IN ('supernova', 'lensed_image')")
    con.execute("DELETE FROM TruthLensSystem")
    con.commit()
    con.close()
    out = tmp_path / "rep"
    r = cli("report", sn_run, "--db", f"sqlite:///{db}", "-o", out, "--max-stars", "1",
            "--validation", report[0] / "validation.json")
    assert r.returncode == 0, r.stderr
    text = (out / "index.html").read_text()
    assert "no supernova lies within the match radius of an Object" in text
    assert "no lensed quasars in the truth" in text
    assert len(list((out / "objects").glob("star-*.html"))) == 1
    assert not list((out / "objects").glob("sn-*")) and not list((out / "objects").glob("lens-*"))


def test_a_database_without_truth_tables(report, sn_run, tmp_path):
    """The Level 2 tables alone (no ObjectTruthMatch, e.g. an ingest stopped half-way): no object pages
    and no flux residuals, each saying why."""
    db = tmp_path / "level2.sqlite"
    shutil.copy(sn_run / "level2.sqlite", db)
    con = sqlite3.connect(db)
    con.execute("DROP TABLE ObjectTruthMatch")
    con.commit()
    con.close()
    summary = write_report(sn_run, tmp_path / "rep", db_url=f"sqlite:///{db}", jobs=1,
                           validation_json=str(report[0] / "validation.json"))
    text = (tmp_path / "rep" / "index.html").read_text()
    assert text.count("the database has no truth tables") == 4          # SNe, lenses, stars, residuals
    assert summary["supernovae"]["pages"] == summary["lenses"]["pages"] == summary["stars"]["pages"] == []
    assert (tmp_path / "rep" / "calibration.png").exists()


def test_a_named_database_that_does_not_exist_is_exit_2(sn_run, tmp_path):
    r = cli("report", sn_run, "--db", f"sqlite:///{tmp_path}/none.sqlite", "-o", tmp_path / "rep")
    assert r.returncode == 2 and "none.sqlite" in r.stderr
    assert not (tmp_path / "rep").exists()


def test_a_failed_render_keeps_the_previous_report(report, sn_run, tmp_path, monkeypatch):
    out = tmp_path / "rep"
    limits = ReportLimits(max_supernovae=1, max_lenses=1, max_stars=1, n_stamps=2)
    write_report(sn_run, out, limits=limits, validation_json=str(report[0] / "validation.json"), jobs=1)
    before = (out / "index.html").read_text()

    def broken(*a, **k):
        raise RuntimeError("disk full")
    monkeypatch.setattr(report_plots, "gantt", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        write_report(sn_run, out, limits=limits, validation_json=str(report[0] / "validation.json"), jobs=1)
    assert (out / "index.html").read_text() == before
    assert sorted(os.listdir(tmp_path)) == ["rep"]                            # no temporary left behind
    # a killed render's leftover (its process gone) is removed by the next render
    (tmp_path / "rep.partial-999999999").mkdir()
    (tmp_path / "rep.partial-999999999" / "index.html").write_text("half")
    monkeypatch.undo()
    write_report(sn_run, out, limits=limits, validation_json=str(report[0] / "validation.json"), jobs=1)
    assert sorted(os.listdir(tmp_path)) == ["rep"]
