"""The ingest stage ([level2] ingest: store/ingest.py, the ingest/* tasks), ObjectTruthMatch
(truthmatch.py) and `twinkles-hpc lightcurve`, on the shared Level 2 run (conftest.level2_run) and on
small synthetic catalogues; the light-curve query again on MariaDB when .ci/mariadb.sh runs one."""
import json
import os
import shutil

import h5py
import numpy as np
import pytest
import sqlalchemy as sa
from astropy.table import Table
from conftest import LEVEL2_TOML, MPIEXEC, cli
from test_db import dump, isolated_env, mariadb_engine, mariadb_option_file, mariadb_url  # noqa: F401

from twinkles_hpc import config as config_mod
from twinkles_hpc import truthmatch
from twinkles_hpc.errors import InputError
from twinkles_hpc import rundir as rd
from twinkles_hpc.pipeline.context import RunContext
from twinkles_hpc.pipeline.registry import stage
from twinkles_hpc.pipeline.setup import plan
from twinkles_hpc.pipeline.stage import Upstream
from twinkles_hpc.rundir import layout
from twinkles_hpc.rundir.task import Task
from twinkles_hpc.store import db, ingest, schema
from twinkles_hpc.store.lightcurve import lightcurve
from twinkles_hpc.store.tables import read_table, write_table
from twinkles_hpc.level2.psf import fwhm_from_json

LEVEL2_TABLES = ("CcdVisit", "Object", "ForcedSource", "ObjectTruthMatch", "TruthStar", "TruthGalaxy")
#: Calibration error allowed on top of the statistical flux error (zero point, aperture correction)
CALIBRATION_FLOOR = 0.01


def h5_rows(rundir, product, table):
    out = []
    for p in sorted((rundir / product).glob("patch-*.h5" if product == "objects" else "*.h5")):
        with h5py.File(p, "r", locking=False) as fh:
            out.append(read_table(fh[table]))
    return np.concatenate(out)


def all_tables(engine):
    return {t: dump(engine, t) for t in schema.metadata.tables}


def ingest_run(rundir, url):
    """Every ingest task of `rundir` into `url`, in the task graph's order, in this process; returns the
    receipts' {table: rows inserted}. Writes receipts: give it a linked_copy of the shared run."""
    cfg = rd.load_config(rundir)
    cfg.ingest.url = url
    ctx, tasks = plan(cfg, str(rundir))
    inserted = {}
    for t in (t for t in tasks if t.kind == "ingest"):
        out = stage("ingest").run(ctx, t, None)
        with open(rundir / next(iter(out))) as fh:
            for table, n in json.load(fh)["inserted"].items():
                inserted[table] = inserted.get(table, 0) + n
    return inserted


def linked_copy(src, dst):
    """A run directory that shares src's HDF5 products (hard links; a rerun replaces files by rename,
    never in place) with its own journal, trace, receipts and config, and no database."""
    for d, _, files in os.walk(src):
        out = dst / os.path.relpath(d, src)
        out.mkdir(parents=True, exist_ok=True)
        for f in files:
            if f == db.SQLITE_NAME or f.startswith((".lock", ".fault")):
                continue
            (os.link if f.endswith(".h5") else shutil.copy2)(os.path.join(d, f), out / f)
    return dst


@pytest.fixture(scope="module")
def run_db(level2_run):
    e = db.connect(rundir=level2_run)
    yield e
    e.dispose()


# ---- the stage on the Level 2 run --------------------------------------------------------------------------

def test_tables_hold_exactly_the_hdf5_products(level2_run, run_db):
    objects, forced = h5_rows(level2_run, "objects", "objects"), h5_rows(level2_run, "forced", "forced_source")
    primary = objects[objects["detect_isPrimary"]]
    counts = db.table_counts(run_db)
    assert counts["CcdVisit"] == len(list((level2_run / "calexp").glob("*.h5"))) == 6
    assert counts["Object"] == len(primary) > 300
    assert counts["ForcedSource"] == len(forced) > 1000
    with h5py.File(level2_run / "truth.h5", "r") as fh:
        assert counts["TruthStar"] == len(fh["stars"]) and counts["TruthGalaxy"] == len(fh["galaxies"])
    match = truthmatch.match_objects(objects, level2_run / "truth.h5", radius_arcsec=1.0)
    assert counts["ObjectTruthMatch"] == len(match) > 0.8 * len(primary)
    # values survive the trip: ForcedSource by key, Objects' NULL parents
    fs = dump(run_db, "ForcedSource")
    got = {(r.objectId, r.ccdVisitId): (r.psFlux, r.flags) for r in fs}
    for r in forced[:: max(1, len(forced) // 200)]:
        flux, flags = got[(r["objectId"], r["ccdVisitId"])]
        assert (flux == r["psFlux"] or np.isnan(r["psFlux"]) and flux is None) and flags == r["flags"]
    obj = {r.objectId: r for r in dump(run_db, "Object")}
    assert {o for o in obj if obj[o].parentObjectId is None} == set(primary["objectId"][primary["parentObjectId"] == 0])
    assert all(obj[o].flags == f for o, f in zip(primary["objectId"], primary["detFlags"]))
    for c in ("gPsFlux", "rPsFluxSigma", "extendedness", "Ixx", "Iyy", "Ixy", "shape_flag"):
        if c in primary.dtype.names:                   # shapes: when the Objects stage measures them
            got = np.array([np.nan if getattr(obj[o], c) is None else getattr(obj[o], c) for o in primary["objectId"]])
            assert np.array_equal(got, primary[c].astype(float), equal_nan=True), c


def test_ccd_visit_rows_describe_the_calexps(level2_run, run_db):
    visits = {int(v["visit_id"]): v for v in rd.read_visits(level2_run)}
    for r in dump(run_db, "CcdVisit"):
        v = visits[r.ccdVisitId]
        with h5py.File(level2_run / layout.calexp(r.visitId, r.filterName), "r", locking=False) as fh:
            a = dict(fh.attrs)
        assert r.visitId == r.ccdVisitId and r.filterName == v["band"] and (r.raftName, r.ccdName) == ("R22", "S11")
        assert r.obsStart == v["mjd"] and r.expMidpt == pytest.approx(v["mjd"] + v["exptime"] / 2 / 86400, abs=1e-9)
        assert (r.xSize, r.ySize) == (1600, 1600) and r.zeroPoint == a["zero_point"]
        assert np.cos(np.deg2rad(r.zenithDistance)) == pytest.approx(1 / a["airmass"])
        assert abs(r.ra - a["ra"]) * np.cos(np.deg2rad(r.decl)) < 5 / 3600 and abs(r.decl - a["dec"]) < 5 / 3600
        assert r.seeing == pytest.approx(v["fwhm_eff"], rel=0.25)             # PSF model vs the cadence's seeing
        assert r.skyBg == a["background_level"] and r.skyNoise > np.sqrt(r.skyBg)


def test_ingesting_again_adds_nothing(level2_run, run_db, tmp_path):
    run = linked_copy(level2_run, tmp_path / "run")
    copy = tmp_path / "copy.sqlite"
    shutil.copy(level2_run / db.SQLITE_NAME, copy)
    e = db.connect(f"sqlite:///{copy}")
    before = all_tables(e)
    assert sum(len(v) for v in before.values()) > 5000
    forced = sorted((level2_run / "forced").glob("*.h5"))
    objects = sorted((level2_run / "objects").glob("patch-*.h5"))
    assert ingest.ingest_forced(e, forced) == 0
    assert ingest.ingest_objects(e, objects) == 0
    assert ingest.ingest_truth_match(e, objects, level2_run / "truth.h5", 1.0) == 0
    assert ingest.ingest_ccd_visits(e, sorted((level2_run / "calexp").glob("*.h5")), fwhm_from_json) == 0
    assert set(db.ingest_truth(e, level2_run).values()) == {0}
    assert set(ingest_run(run, f"sqlite:///{copy}").values()) == {0}       # the tasks' own code path
    assert all_tables(e) == before
    e.dispose()


@pytest.mark.skipif(MPIEXEC is None, reason="mpiexec not found")
def test_sigkill_mid_ingest_then_rerun_gives_the_same_database(level2_run, run_db, tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(LEVEL2_TOML)
    run = tmp_path / "run"
    linked_copy(level2_run, run)
    # the database is gone: the rerun redoes the ingest tasks; the worker is killed inside the second
    # ForcedSource file's transaction, after the first file was committed
    r = cli("run", cfg, "-o", run, mpi=2, env={"TWINKLES_HPC_FAULT": "kill_in_ingest=ForcedSource:2"})
    assert r.returncode != 0, r.stdout + r.stderr
    assert "resuming:" in r.stdout and (run / ".faults" / "kill_in_ingest").exists()
    assert (run / "ingest" / "Object.json").exists() and not (run / "ingest" / "ForcedSource-0000.json").exists()
    e = db.connect(rundir=run)
    with e.connect() as conn:
        per_visit = conn.execute(sa.text("SELECT COUNT(DISTINCT ccdVisitId) FROM ForcedSource")).scalar()
    assert per_visit == 1, "the kill should leave the first file committed and the second rolled back"
    assert db.table_counts(e)["ForcedSource"] < db.table_counts(run_db)["ForcedSource"]
    r = cli("run", cfg, "-o", run, mpi=2, env={"TWINKLES_HPC_FAULT": "kill_in_ingest=ForcedSource:2"})
    assert r.returncode == 0, r.stdout + r.stderr
    assert all_tables(e) == all_tables(run_db)
    st = json.loads(cli("status", run, "--json", check=True).stdout)
    assert st["complete"] and st["tasks"]["ingest"] == {"total": 9, "done": 9}       # 5 Level 2, 4 DIA steps
    assert st["database"]["tables"]["ForcedSource"] == db.table_counts(run_db)["ForcedSource"]
    e.dispose()


@pytest.mark.skipif(MPIEXEC is None, reason="mpiexec not found")
def test_deferred_ingest_runs_in_a_later_job_with_the_same_database(level2_run, run_db, tmp_path):
    """`run --defer ingest` leaves the database for a later run of the same command (a job of its own): the
    first run ends complete without it, the second does only the ingest, and the database is the one-job
    run's. A stage the run does not enable is one line, exit 2."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(LEVEL2_TOML)
    run = tmp_path / "run"
    linked_copy(level2_run, run)                      # every product done; the database gone
    r = cli("run", cfg, "-o", run, "--defer", "ingest", mpi=2)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "deferred: 9 task(s) of ingest" in r.stdout and "ingest deferred" in r.stdout
    assert not (run / db.SQLITE_NAME).exists()
    st = json.loads(cli("status", run, "--json", check=True).stdout)
    assert not st["complete"] and st["tasks"]["ingest"]["done"] == 0
    r = cli("run", cfg, "-o", run, mpi=2)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "resuming:" in r.stdout and "9 to run" in r.stdout
    e = db.connect(rundir=run)
    assert all_tables(e) == all_tables(run_db)
    e.dispose()
    r = cli("run", cfg, "-o", run, "--defer", "lensmodel")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--defer: stage: expected stages this run" in r.stderr


# ---- light curves -----------------------------------------------------------------------------------------

def bright_isolated_stars(engine, lo=17.0, hi=20.5):
    """objectIds whose only truth match within 1" is a star with lo < r < hi."""
    q = sa.text("SELECT m.objectId FROM ObjectTruthMatch m JOIN TruthStar s ON s.starId = m.truthId "
                "JOIN Object o ON o.objectId = m.objectId WHERE s.rMag BETWEEN :lo AND :hi AND m.objectId IN "
                "(SELECT objectId FROM ObjectTruthMatch GROUP BY objectId HAVING COUNT(*) = 1) ORDER BY s.rMag")
    with engine.connect() as conn:
        return [r[0] for r in conn.execute(q, {"lo": lo, "hi": hi})]


def test_lightcurve_cli_gives_forced_rows_in_time_order_with_the_truth(level2_run, run_db, tmp_path):
    stars = bright_isolated_stars(run_db)
    assert len(stars) >= 5
    oid = stars[0]
    r = cli("lightcurve", level2_run, "--object", oid, "--format", "csv", check=True)
    lc = Table.read(r.stdout, format="ascii.csv")
    forced = h5_rows(level2_run, "forced", "forced_source")
    mine = forced[forced["objectId"] == oid]
    assert len(lc) == len(mine) >= 4 and np.all(np.diff(lc["expMidpt"]) > 0)
    by_visit = {int(v): row for v, row in zip(mine["ccdVisitId"], mine)}
    assert set(lc["ccdVisitId"]) == set(by_visit)
    for row in lc:
        assert row["psFlux"] == pytest.approx(by_visit[row["ccdVisitId"]]["psFlux"], rel=1e-5)   # csv: 6 digits
    with h5py.File(level2_run / "truth.h5", "r") as fh:
        truth = read_table(fh["stars"])
    match = lightcurve(level2_run, oid)
    star = truth[truth["id"] == match.meta["truthId"]][0]
    assert match.meta["truthKind"] == "star"
    assert np.allclose(lc["truthFlux"], [db.mag_to_njy(star[f"mag_{b}"]) for b in lc["filterName"]], rtol=1e-5)
    # the ECSV output and the truth-id route give the same rows; --band filters
    ecsv = Table.read(cli("lightcurve", level2_run, "--truth-id", match.meta["truthId"], check=True).stdout,
                      format="ascii.ecsv")
    assert list(ecsv["ccdVisitId"]) == list(lc["ccdVisitId"]) and ecsv.meta["truthId"] == match.meta["truthId"]
    assert ecsv["psFlux"].unit == "nJy" and np.array_equal(ecsv["psFlux"], match["psFlux"])
    out = tmp_path / "r.txt"
    cli("lightcurve", level2_run, "--object", oid, "--band", "r", "--format", "ascii", "-o", out, check=True)
    assert set(Table.read(out, format="ascii.fixed_width_two_line")["filterName"]) == {"r"}


def test_bright_star_fluxes_agree_with_the_truth_within_errors(level2_run, run_db):
    """Measured and true fluxes of isolated bright stars agree within the stated error plus a 1%
    calibration floor (zero point and aperture correction are measured per visit)."""
    pulls, ratios = [], []
    for oid in bright_isolated_stars(run_db)[:20]:
        lc = lightcurve(level2_run, oid)
        ok = lc["flags"] == 0
        err = np.hypot(lc["psFlux_Sigma"], CALIBRATION_FLOOR * lc["truthFlux"])
        pulls += list(((lc["psFlux"] - lc["truthFlux"]) / err)[ok])
        ratios += list((lc["psFlux"] / lc["truthFlux"])[ok])
    assert len(pulls) > 40
    assert np.max(np.abs(pulls)) < 4 and np.median(np.abs(pulls)) < 1.0
    assert abs(np.median(ratios) - 1) < CALIBRATION_FLOOR


def test_dia_tables_hold_the_dia_products(level2_run, run_db):
    """DiaSource: every DiaSource of every difference, with the association's diaObjectId (NULL for the
    flagged ones it left out); DiaObject and DiaForcedSource: the rows of their files."""
    with h5py.File(level2_run / layout.DIA_OBJECT, "r") as fh:
        objects, assoc = read_table(fh["dia_object"]), read_table(fh["dia_source"])
    dia = h5_rows(level2_run, "diffim", "dia_source")
    forced = h5_rows(level2_run, "diaforced", "dia_forced_source")
    counts = db.table_counts(run_db)
    assert counts["DiaSource"] == len(dia) and counts["DiaObject"] == len(objects) > 0
    assert counts["DiaForcedSource"] == len(forced) >= len(objects)
    got = {r.diaSourceId: r.diaObjectId for r in dump(run_db, "DiaSource")}
    want = dict(zip(assoc["diaSourceId"].tolist(), assoc["diaObjectId"].tolist()))
    assert {k: v for k, v in got.items() if v is not None} == want
    rows = {r.diaObjectId: r for r in dump(run_db, "DiaObject")}
    for o in objects:
        r = rows[int(o["diaObjectId"])]
        assert r.nDiaSources == o["nDiaSources"]
        for b in "gr":
            assert r._mapping[f"{b}PsFluxNdata"] == o[f"{b}PsFluxNdata"]


def test_lightcurve_cli_dia_object(level2_run, run_db):
    forced = h5_rows(level2_run, "diaforced", "dia_forced_source")
    oid = int(np.bincount(np.unique(forced["diaObjectId"], return_inverse=True)[1]).argmax())
    oid = int(np.unique(forced["diaObjectId"])[oid])
    r = cli("lightcurve", level2_run, "--dia-object", oid, "--format", "csv", check=True)
    lc = Table.read(r.stdout, format="ascii.csv")
    mine = forced[forced["diaObjectId"] == oid]
    assert len(lc) == len(mine) and np.all(np.diff(lc["midPointTai"]) >= 0)
    by_visit = {int(v): row for v, row in zip(mine["ccdVisitId"], mine)}
    for row in lc:
        assert row["psFlux"] == pytest.approx(by_visit[row["ccdVisitId"]]["psFlux"], rel=1e-5, abs=1e-3)
        assert row["totFlux"] == pytest.approx(by_visit[row["ccdVisitId"]]["totFlux"], rel=1e-5, abs=1e-3)
    r = cli("lightcurve", level2_run, "--dia-object", 7)
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert "dia-object: expected a diaObjectId of the DiaObject table, got 7" in r.stderr


@pytest.mark.parametrize("args, message", [
    (["--object", "12345"], "object: expected an objectId of the Object table, got 12345"),
    (["--object", "1", "--band", "q"], "band: expected one of u, g, r, i, z, y, got 'q'"),
    (["--truth-id", "42"], "truth source 42: object: expected an Object within the match radius"),
    ([], "--object: expected an objectId"),
])
def test_lightcurve_cli_errors_are_one_line_exit_2(level2_run, args, message):
    r = cli("lightcurve", level2_run, *args)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and message in r.stderr, r.stderr


def test_lightcurve_cli_without_a_database(tmp_path):
    r = cli("lightcurve", tmp_path, "--object", "1")
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert "level2.sqlite: database: expected an ingested SQLite database" in r.stderr
    assert not (tmp_path / db.SQLITE_NAME).exists(), "a query must not create an empty database"
    r = cli("lightcurve", "--db", "mysql+pymysql://bob:hunter2@db.example.org/x", "--object", "1")
    assert r.returncode == 2 and "hunter2" not in r.stderr and "password" in r.stderr


def filled(engine):
    """db.table_counts less the lensed-quasar tables, which the Level 2 campaign does not fill (they exist,
    empty, and have no ingest step)."""
    return {t: n for t, n in db.table_counts(engine).items() if not (t.startswith("LensedImage") and n == 0)}


def test_light_curves_identical_on_mariadb(level2_run, run_db, mariadb_engine, tmp_path):   # noqa: F811
    url = mariadb_url(mariadb_option_file())
    run = linked_copy(level2_run, tmp_path / "run")
    counts = filled(run_db)
    assert ingest_run(run, url) == counts
    assert filled(mariadb_engine) == counts
    assert set(ingest_run(run, url).values()) == {0}                  # again: nothing added
    galaxy = [r.objectId for r in dump(run_db, "ObjectTruthMatch") if r.truthKind == "galaxy"][0]
    for oid in bright_isolated_stars(run_db)[:3] + [galaxy]:
        for band in (None, "g", "r"):
            a, b = lightcurve(level2_run, oid, band), lightcurve(url, oid, band)
            assert a.colnames == b.colnames and a.meta == b.meta and len(a) == len(b)
            assert len(a) > 0 or band is not None
            for c in a.colnames:
                assert np.array_equal(a[c], b[c], equal_nan=a[c].dtype.kind == "f"), (oid, band, c)
    oid = bright_isolated_stars(run_db)[0]
    r = cli("lightcurve", "--db", url, "--object", oid, "--format", "csv", check=True)
    assert len(Table.read(r.stdout, format="ascii.csv")) == len(lightcurve(level2_run, oid))
    # the Parquet export reads MariaDB as it reads SQLite: the same tables, row for row
    import pyarrow.dataset as ds

    from twinkles_hpc.store import parquet, schema
    got = {}
    for label, engine in (("sqlite", run_db), ("mariadb", mariadb_engine)):
        got[label] = parquet.export(engine, str(tmp_path / label))
    assert {k: v["rows"] for k, v in got["sqlite"].items()} == {k: v["rows"] for k, v in got["mariadb"].items()}
    for name in got["sqlite"]:
        pk = [(c.name, "ascending") for c in schema.metadata.tables[name].primary_key.columns]
        a, b = (ds.dataset(str(tmp_path / label / (name if name in parquet.BY_BAND else f"{name}.parquet")),
                           format="parquet", partitioning="hive").to_table().sort_by(pk)
                for label in ("sqlite", "mariadb"))
        assert a.equals(b), name


# ---- ObjectTruthMatch ------------------------------------------------------------------------------------

def synthetic_truth(path):
    """A truth.h5 with one star, a galaxy hosting a supernova 0.3" from its centre, and a lensed image."""
    ra0, dec0 = 53.0, -27.4
    d = 1 / 3600 / np.cos(np.deg2rad(dec0))                           # 1 arcsec of RA
    stars = np.array([(10, ra0, dec0)], [("id", "i8"), ("ra", "f8"), ("dec", "f8")])
    gal = np.array([(20, ra0 + 10 * d, dec0), (21, ra0 + 30 * d, dec0)], stars.dtype)
    sne = np.array([(30, ra0 + 10.3 * d, dec0)], stars.dtype)
    img = np.array([(40, 5, ra0 + 30 * d, dec0 + 0.5 / 3600)], [("image_id", "i8"), ("sys_id", "i8"),
                                                                 ("ra", "f8"), ("dec", "f8")])
    with h5py.File(path, "w") as fh:
        for name, t in (("stars", stars), ("galaxies", gal), ("supernovae", sne), ("lensed_images", img)):
            write_table(fh, name, t)
    return ra0, dec0, d


def test_match_objects_keeps_every_truth_source_within_the_radius(tmp_path):
    ra0, dec0, d = synthetic_truth(tmp_path / "truth.h5")
    objects = dict(objectId=np.array([3, 1, 2, 4]), psRa=ra0 + d * np.array([30.0, 0.2, 10.05, 60.0]),
                   psDecl=np.full(4, dec0), detect_isPrimary=np.array([True, True, True, True]))
    m = truthmatch.match_objects(objects, tmp_path / "truth.h5", radius_arcsec=1.0)
    assert [tuple(r)[:3] for r in m] == [(1, 10, "star"), (2, 20, "galaxy"), (2, 30, "supernova"),
                                         (3, 21, "galaxy"), (3, 40, "lensed_image")]
    assert m["distance_arcsec"] == pytest.approx([0.2, 0.05, 0.25, 0.0, 0.5], abs=1e-6)
    assert list(truthmatch.nearest(m)["truthId"]) == [10, 20, 21]
    # radius, primary flag, kinds
    assert len(truthmatch.match_objects(objects, tmp_path / "truth.h5", radius_arcsec=0.1)) == 2
    objects["detect_isPrimary"][1] = False
    assert 1 not in truthmatch.match_objects(objects, tmp_path / "truth.h5")["objectId"]
    only = truthmatch.match_objects(objects, tmp_path / "truth.h5", kinds=("supernova",))
    assert list(only["truthId"]) == [30]
    with pytest.raises(InputError, match="psRa"):
        truthmatch.match_objects({"objectId": [1]}, tmp_path / "truth.h5")


def test_truth_id_finds_the_object_of_a_supernova_on_its_host(tmp_path):
    """The Object on a SN's host has the galaxy as nearest truth; --truth-id SNID still finds it and
    gives the supernova's true flux."""
    ra0, dec0, d = synthetic_truth(tmp_path / "truth.h5")
    e = db.connect(rundir=tmp_path)
    db.create_schema(e)
    objects = dict(objectId=np.array([2]), psRa=np.array([ra0 + 10.05 * d]), psDecl=np.array([dec0]))
    m = truthmatch.match_objects(objects, tmp_path / "truth.h5")
    db.ingest(e, "ObjectTruthMatch", {k: m[k] for k in m.dtype.names})
    db.ingest(e, "Object", objects)
    db.ingest(e, "CcdVisit", dict(ccdVisitId=[7, 8], visitId=[7, 8], filterName=["r", "r"],
                                  expMidpt=[60001.0, 60000.0]))
    db.ingest(e, "ForcedSource", dict(objectId=[2, 2], ccdVisitId=[7, 8], psFlux=[900.0, 400.0],
                                      psFlux_Sigma=[10.0, 10.0]))
    db.ingest(e, "TruthVariableFlux", dict(sourceId=[30], visitId=[7], filterName=["r"], mjd=[60001.0],
                                           fluxNjy=[500.0]))
    db.ingest(e, "TruthGalaxy", dict(galaxyId=[20], ra=[ra0], decl=[dec0], rBulgeMag=[31.4 - 2.5 * np.log10(400)]))
    e.dispose()
    sn = lightcurve(tmp_path, truth_id=30)
    assert sn.meta["truthKind"] == "supernova" and list(sn["ccdVisitId"]) == [8, 7]
    assert list(sn["truthFlux"]) == [0.0, 500.0] and np.isnan(sn["truthMag"][0])
    host = lightcurve(tmp_path, 2)
    assert host.meta["truthId"] == 20 and host["truthFlux"] == pytest.approx([400.0, 400.0])
    assert host["psMag"][0] == pytest.approx(31.4 - 2.5 * np.log10(400))
    with pytest.raises(InputError, match="truth id"):
        lightcurve(tmp_path, 2, truth_id=10)


# ---- config --------------------------------------------------------------------------------------------------

def test_ingest_config_is_validated(tmp_path):
    cfg = config_mod.from_dict(config_mod.tomllib.loads(LEVEL2_TOML))
    assert cfg.ingest.enabled and cfg.ingest.url == "" and cfg.ingest.match_radius == 1.0
    no_forced = LEVEL2_TOML.replace("[forced]\nenabled = true", "[forced]\nenabled = false")
    with pytest.raises(InputError, match="ingest.enabled: expected false unless forced.enabled = true"):
        config_mod.from_dict(config_mod.tomllib.loads(no_forced))
    assert LEVEL2_TOML.rstrip().endswith("[ingest]\nenabled = true")          # what follows is [ingest]'s
    bad = config_mod.tomllib.loads(LEVEL2_TOML + 'url = "mysql://bob:hunter2@dbhost/twinkles"\n')
    with pytest.raises(InputError, match="ingest.url: expected no password") as err:
        config_mod.from_dict(bad)
    assert "hunter2" not in str(err.value)
    ok = config_mod.from_dict(config_mod.tomllib.loads(LEVEL2_TOML + 'url = "mysql://bob@dbhost/t"\n'))
    assert ok.ingest.url.startswith("mysql://")
    ok.associate.enabled = ok.diaforced.enabled = False          # the chain of the Level 2 steps alone
    visits = np.zeros(250, [("visit_id", "i8")])
    visits["visit_id"] = np.arange(250)
    up = Upstream()
    up.add("sky", [Task("sky", "sky")])
    for s in ("calexp", "forced"):
        up.add(s, [Task(layout.task_id(s, layout.visit_key(v)), s) for v in visits["visit_id"]])
    tasks = stage("ingest").tasks(RunContext(ok, None, visits), up.view(stage("ingest")))
    assert [t.id for t in tasks][-3:] == ["ingest/ForcedSource/0000", "ingest/ForcedSource/0001",
                                          "ingest/ForcedSource/0002"]
    assert all(t.deps[-1] == prev.id for prev, t in zip(tasks, tasks[1:])), "one writer at a time: a chain"


def test_a_damaged_sqlite_database_is_ingested_again(tmp_path):
    """A truncated level2.sqlite is found on every resume (its header's page count against its size); a
    same-size damage only with `run --verify` (SQLite's integrity check). Either way the database and the
    ingest receipts go, and the journal redoes the ingest steps."""
    import sqlite3

    from twinkles_hpc.pipeline.stages.ingest import sqlite_damage
    cfg = config_mod.from_dict({s: {"enabled": True} for s in ("calexp", "coadd", "objects", "forced", "ingest")})
    db_path = tmp_path / layout.SQLITE
    con = sqlite3.connect(db_path)
    con.execute("CREATE TABLE t (x INTEGER, y TEXT)")
    con.executemany("INSERT INTO t VALUES (?, ?)", [(i, "row %d" % i * 20) for i in range(4000)])
    con.commit()
    con.close()
    good = db_path.read_bytes()
    assert sqlite_damage(db_path) == "" and sqlite_damage(db_path, full=True) == ""
    receipts = tmp_path / layout.INGEST_RECEIPTS
    for data, verify in ((good[:len(good) // 2], False), (good[:4096 * 3] + bytes(len(good) - 4096 * 3), True)):
        db_path.write_bytes(data)
        receipts.mkdir(parents=True, exist_ok=True)
        (receipts / "objects.json").write_text("{}")
        if verify:                                   # same size: the header agrees, the pages do not
            assert sqlite_damage(db_path) == "" and sqlite_damage(db_path, full=True)
        ctx = RunContext(cfg, str(tmp_path), [], log=(lines := []).append)
        ctx.verify = verify
        stage("ingest").before_run(ctx)
        assert not db_path.exists() and not receipts.exists()
        assert len(lines) == 1 and "damaged" in lines[0], lines
    (tmp_path / "x").write_bytes(b"not sqlite")
    assert sqlite_damage(tmp_path / "x") == "not an SQLite file"
