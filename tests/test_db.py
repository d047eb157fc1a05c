"""The catalogue database (store/db.py, store/schema.py): always on SQLite, and on MariaDB when
.ci/mariadb.sh has started one (TWINKLES_TEST_DB_OPTION_FILE; with TWINKLES_TEST_DB_REQUIRED=1, as in
CI, an unreachable server fails the tests instead of skipping them)."""
import os
import subprocess
import sys

import numpy as np
import pytest
import sqlalchemy as sa
from conftest import ROOT, TINY_TOML, campaign_run

from twinkles_hpc.errors import InputError
from twinkles_hpc.store import db, schema
from twinkles_hpc.store.atomic import open_read
from twinkles_hpc.store.tables import read_table

SECRET = "s3cret-Pa55"
DEFAULT_OPTION_FILE = f"/tmp/twinkles-mariadb-{os.getuid()}/client.cnf"     # .ci/mariadb.sh's default


# ---- engines ------------------------------------------------------------------------------------------

def mariadb_option_file():
    """The option file of the test server, or skip (fail when TWINKLES_TEST_DB_REQUIRED=1)."""
    path = os.environ.get("TWINKLES_TEST_DB_OPTION_FILE") or DEFAULT_OPTION_FILE
    if not os.path.isfile(path):
        _unavailable(f"no MariaDB option file {path}")
    return path


def _unavailable(why):
    msg = f'MariaDB tests not configured ({why}): run `eval "$(.ci/mariadb.sh)"` first'
    if os.environ.get("TWINKLES_TEST_DB_REQUIRED") == "1":
        pytest.fail(msg)
    pytest.skip(msg)


def mariadb_url(cnf):
    opt = db.read_option_file(cnf)
    return f"mysql+pymysql://localhost/{opt['database']}?unix_socket={opt['socket']}"


@pytest.fixture
def isolated_env(monkeypatch, tmp_path):
    """No credentials from the caller's environment or ~/.my.cnf."""
    for k in (db.ENV_USER, db.ENV_PASSWORD, db.ENV_OPTION_FILE):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    return monkeypatch


@pytest.fixture
def sqlite_engine(tmp_path):
    e = db.connect(rundir=tmp_path)
    db.create_schema(e)
    yield e
    e.dispose()


@pytest.fixture
def mariadb_engine(isolated_env):
    cnf = mariadb_option_file()
    isolated_env.setenv(db.ENV_OPTION_FILE, cnf)
    e = db.connect("mysql+pymysql://localhost")          # socket, database, user, password: option file
    try:
        with e.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.OperationalError as err:
        _unavailable(f"cannot connect with {cnf}: {err.orig}")
    schema.metadata.drop_all(e)
    db.create_schema(e)
    yield e
    e.dispose()


@pytest.fixture(params=["sqlite", "mariadb"])
def engine(request):
    return request.getfixturevalue(f"{request.param}_engine")


def count(engine, table):
    with engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(schema.metadata.tables[table])).scalar()


def dump(engine, table):
    t = schema.metadata.tables[table]
    with engine.connect() as conn:
        return conn.execute(sa.select(t).order_by(*t.primary_key.columns)).all()


# ---- synthetic Level 2 rows ---------------------------------------------------------------------------

def synthetic(n_visits=40, n_objects=5, seed=3):
    """CcdVisit, Object and ForcedSource rows (visits in random time order, sources shuffled)."""
    rng = np.random.default_rng(seed)
    visit = np.arange(n_visits) + 101
    mjd = 60000.0 + rng.permutation(n_visits) * 1.3 + 0.1 * rng.random(n_visits)
    ccd = dict(ccdVisitId=visit * 1000 + 99, visitId=visit, raftName=np.full(n_visits, "R22"),
               ccdName=np.full(n_visits, "S11"), filterName=rng.choice(list("ugrizy"), n_visits),
               obsStart=mjd - 15 / 86400, expMidpt=mjd, expTime=np.full(n_visits, 30.0),
               ra=np.full(n_visits, 53.0), decl=np.full(n_visits, -27.4), xSize=np.full(n_visits, 4000),
               ySize=np.full(n_visits, 4072), zeroPoint=28 + rng.random(n_visits),
               seeing=0.6 + rng.random(n_visits), flags=np.zeros(n_visits, int))
    oid = (np.arange(n_objects) + 1) * 7
    obj = dict(objectId=oid, psRa=53 + 0.01 * rng.random(n_objects),
               psDecl=-27.4 + 0.01 * rng.random(n_objects), extendedness=rng.random(n_objects),
               **{f"{b}PsFlux": rng.random(n_objects) * 1e3 for b in "ugrizy"})
    o, v = np.meshgrid(oid, ccd["ccdVisitId"], indexing="ij")
    fs = np.zeros(o.size, schema_dtype("ForcedSource"))
    fs["objectId"], fs["ccdVisitId"] = o.ravel(), v.ravel()
    fs["psFlux"], fs["psFlux_Sigma"] = rng.normal(500, 30, o.size), 30.0
    fs["psFlux"][3] = np.nan                               # stored as NULL, read back as NaN
    fs["flags"] = rng.integers(0, 4, o.size)
    return ccd, obj, fs[rng.permutation(len(fs))]


def schema_dtype(table):
    kinds = {sa.BigInteger: "i8", sa.Integer: "i4", sa.Double: "f8"}
    return np.dtype([(c.name, next(v for k, v in kinds.items() if isinstance(c.type, k)))
                     for c in schema.metadata.tables[table].c])


def load(engine, data):
    ccd, obj, fs = data
    return (db.ingest(engine, "CcdVisit", ccd), db.ingest(engine, "Object", obj),
            db.ingest(engine, "ForcedSource", fs, batch_size=64))


# ---- schema ---------------------------------------------------------------------------------------------

def test_schema_names_units_and_keys():
    t = schema.metadata.tables
    assert {"CcdVisit", "Object", "ForcedSource", "DiaSource", "DiaObject", "ObjectTruthMatch", "TruthStar",
            "TruthGalaxy", "TruthSupernova", "TruthLensedImage", "TruthVariableFlux"} <= set(t)
    assert [c.name for c in t["ForcedSource"].primary_key] == ["objectId", "ccdVisitId"]
    assert [c.name for c in t["DiaForcedSource"].primary_key] == ["diaObjectId", "ccdVisitId"]
    assert {"diaSourceId", "ccdVisitId", "diaObjectId", "midPointTai", "filterName", "ra", "decl", "psFlux",
            "psFluxErr", "flags"} <= set(t["DiaSource"].c.keys())
    assert {"ccdVisitId", "visitId", "raftName", "ccdName", "filterName", "obsStart", "expMidpt", "expTime",
            "ra", "decl", "zenithDistance", "xSize", "ySize", "zeroPoint", "seeing", "skyBg", "skyNoise",
            "flags"} == set(t["CcdVisit"].c.keys())
    for b in "ugrizy":
        assert f"{b}PsFlux" in t["Object"].c and f"{b}PsFluxSigma" in t["Object"].c
    fluxes = [c for tab in t.values() for c in tab.c if "Flux" in c.name and not c.name.endswith(("Chi2", "Ndata"))]
    assert len(fluxes) > 30 and all("nJy" in c.comment for c in fluxes)
    assert all(c.comment for tab in t.values() for c in tab.c)


def test_create_schema_is_idempotent_and_makes_indexes(engine):
    db.create_schema(engine)
    insp = sa.inspect(engine)
    assert set(schema.metadata.tables) <= set(insp.get_table_names())
    assert {"ix_ForcedSource_ccdVisitId"} <= {i["name"] for i in insp.get_indexes("ForcedSource")}
    assert insp.get_pk_constraint("ForcedSource")["constrained_columns"] == ["objectId", "ccdVisitId"]


# ---- ingest -------------------------------------------------------------------------------------------

def test_ingest_twice_adds_nothing(engine):
    data = synthetic()
    ccd, obj, fs = data
    assert load(engine, data) == (40, 5, 200)
    before = {t: dump(engine, t) for t in ("CcdVisit", "Object", "ForcedSource")}
    assert load(engine, data) == (0, 0, 0)
    assert {t: dump(engine, t) for t in before} == before
    # a partial earlier ingest is completed by the full one
    assert db.ingest(engine, "CcdVisit", {k: v[:10] for k, v in ccd.items()}) == 0
    assert db.ingest(engine, "ForcedSource", fs[fs["objectId"] == 7]) == 0
    assert count(engine, "ForcedSource") == 200


def test_ingest_validates_before_writing(engine):
    ccd, obj, fs = synthetic()
    bad = dict(ccd, expMidpt=ccd["expMidpt"].copy())
    bad["expMidpt"][-1] = np.nan                           # NOT NULL column, last row of the last batch
    with pytest.raises(InputError, match="expMidpt.*NOT NULL.*first at row 39"):
        db.ingest(engine, "CcdVisit", bad, batch_size=8)
    with pytest.raises(InputError, match="filterName: expected at most 1 characters"):
        db.ingest(engine, "CcdVisit", dict(ccd, filterName=np.where(ccd["visitId"] == 140, "rr", "r")))
    with pytest.raises(InputError, match="psFlx: expected a column of ForcedSource"):
        db.ingest(engine, "ForcedSource", {"objectId": [1], "ccdVisitId": [2], "psFlx": [3.0]})
    with pytest.raises(InputError, match="ccdVisitId: expected a value for every row"):
        db.ingest(engine, "ForcedSource", {"objectId": [1]})
    with pytest.raises(InputError, match="xSize: expected 32-bit signed integers"):
        db.ingest(engine, "CcdVisit", dict(ccd, xSize=np.full(40, 2 ** 40)))
    with pytest.raises(InputError, match="table"):
        db.ingest(engine, "Sources", fs)
    assert count(engine, "CcdVisit") == 0 and count(engine, "ForcedSource") == 0


def test_exception_between_batches_rolls_back(engine, monkeypatch):
    ccd, obj, fs = synthetic()
    db.ingest(engine, "ForcedSource", fs[:50])
    before = dump(engine, "ForcedSource")
    real, calls = db._insert_batch, []

    def failing(conn, stmt, batch):
        calls.append(real(conn, stmt, batch))              # batch 1 reaches the database, then we crash
        if len(calls) == 2:
            raise RuntimeError("injected")
        return calls[-1]
    monkeypatch.setattr(db, "_insert_batch", failing)
    with pytest.raises(RuntimeError, match="injected"):
        db.ingest(engine, "ForcedSource", fs, batch_size=60)
    sent = np.lexsort((fs["ccdVisitId"], fs["objectId"]))  # batches go in key order; fs[:50] is present
    assert calls == [np.sum(sent[:60] >= 50), np.sum(sent[60:120] >= 50)] and min(calls) > 0   # rows written...
    assert dump(engine, "ForcedSource") == before          # ...and rolled back
    monkeypatch.undo()
    assert db.ingest(engine, "ForcedSource", fs, batch_size=60) == 150


CRASH = """
import os, sys
import numpy as np
from twinkles_hpc.store import db
fs = np.load(sys.argv[2])
real, n = db._insert_batch, []
def crash(conn, stmt, batch):
    n.append(real(conn, stmt, batch))
    if len(n) == 2:
        os._exit(3)                                        # killed with an open transaction
    return n[-1]
db._insert_batch = crash
db.ingest(db.connect(sys.argv[1]), "ForcedSource", fs, batch_size=40)
"""


def test_killed_ingest_leaves_database_consistent(engine, tmp_path):
    fs = synthetic()[2]
    db.ingest(engine, "ForcedSource", fs[:30])
    before = dump(engine, "ForcedSource")
    np.save(tmp_path / "fs.npy", fs)
    url = engine.url.render_as_string(hide_password=False)        # no password in it: see connect()
    r = subprocess.run([sys.executable, "-c", CRASH, url, tmp_path / "fs.npy"], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 3, r.stderr
    assert dump(engine, "ForcedSource") == before
    assert db.ingest(engine, "ForcedSource", fs) == 170


# ---- the bulk path: LOAD DATA LOCAL INFILE (MySQL/MariaDB) ---------------------------------------------

ODD = ["a,b", 'say "hi"', "2\nlines", "t\tab", "back\\sl", "NULL", "", "\\N", "é€"]   # 8 characters at most


def awkward(n=45, seed=5):
    """CcdVisit and Object rows whose strings, NULLs, booleans and doubles a CSV file could get wrong, and
    ForcedSource rows in no key order with a repeated key (the first row of a key is the one kept)."""
    rng = np.random.default_rng(seed)
    ccd, obj, fs = synthetic(n_visits=n, n_objects=6, seed=seed)
    ccd = dict(ccd, raftName=np.array([ODD[i % len(ODD)] for i in range(n)], dtype=object),
               ccdName=np.ma.masked_array([ODD[-1 - i % len(ODD)] for i in range(n)], mask=np.arange(n) % 4 == 0),
               obsStart=np.where(np.arange(n) % 5 == 0, np.nan,
                                 rng.normal(0, 1, n) * 10.0 ** rng.integers(-300, 300, n)),
               zenithDistance=np.array([5e-324, -0.0, 1 / 3, 2.0 ** 60, np.inf] * (n // 5)),
               xSize=np.arange(n) - 2 ** 31)
    obj = dict(obj, shape_flag=np.ma.masked_array(np.arange(6) % 2 == 0, mask=[0, 0, 1, 0, 0, 1]),
               parentObjectId=np.ma.masked_array([0, 7, 7, 0, 14, 0], mask=[1, 0, 0, 1, 0, 1]))
    fs = np.concatenate([fs, fs[:3]])
    fs["psFlux"][-3:] = -1.0                                # repeated keys with other values: skipped
    return ccd, obj, fs


def load_awkward(engine, data, bulk):
    ccd, obj, fs = data
    return (db.ingest(engine, "CcdVisit", ccd, bulk=bulk), db.ingest(engine, "Object", obj, bulk=bulk),
            db.ingest(engine, "ForcedSource", fs, batch_size=64, bulk=bulk))


def recreate(engine):
    schema.metadata.drop_all(engine)
    db.create_schema(engine)


def test_bulk_path_equals_insert_path(mariadb_engine, monkeypatch):
    data = awkward()
    tables = ("CcdVisit", "Object", "ForcedSource")
    got = {}
    for bulk in (False, True):
        recreate(mariadb_engine)
        assert load_awkward(mariadb_engine, data, bulk) == (45, 6, 270)
        got[bulk] = {t: dump(mariadb_engine, t) for t in tables}
        assert load_awkward(mariadb_engine, data, bulk) == (0, 0, 0)      # the same rows twice: nothing new
        assert {t: dump(mariadb_engine, t) for t in tables} == got[bulk]
    assert got[True] == got[False]
    raft = {r.ccdVisitId: r.raftName for r in got[True]["CcdVisit"]}
    assert [raft[v] for v in data[0]["ccdVisitId"]] == list(data[0]["raftName"])
    assert all(r.psFlux != -1.0 for r in got[True]["ForcedSource"])
    # the automatic choice: LOAD DATA from BULK_MIN_ROWS rows a call; a partial table is completed
    recreate(mariadb_engine)
    fs = data[2]
    assert db.ingest(mariadb_engine, "ForcedSource", fs[:100], bulk=False) == 100
    loads = []
    real = db._load_batch
    monkeypatch.setattr(db, "_load_batch", lambda *a: loads.append(a[-1] - a[-2]) or real(*a))
    monkeypatch.setattr(db, "BULK_MIN_ROWS", 200)
    assert db.ingest(mariadb_engine, "ForcedSource", fs[:100]) == 0 and loads == []
    assert db.ingest(mariadb_engine, "ForcedSource", fs, batch_size=100) == 170 and loads == [100, 100, 73]
    assert dump(mariadb_engine, "ForcedSource") == got[False]["ForcedSource"]


def test_bulk_path_validates_and_rolls_back(mariadb_engine, sqlite_engine, monkeypatch):
    ccd, obj, fs = awkward()
    bad = dict(ccd, expMidpt=ccd["expMidpt"].copy())
    bad["expMidpt"][-1] = np.nan
    with pytest.raises(InputError, match="expMidpt.*NOT NULL"):
        db.ingest(mariadb_engine, "CcdVisit", bad, bulk=True, batch_size=8)
    with pytest.raises(InputError, match="filterName: expected at most 1 characters"):
        db.ingest(mariadb_engine, "CcdVisit", dict(ccd, filterName=np.full(45, "rr")), bulk=True)
    with pytest.raises(InputError, match="bulk: expected a MySQL/MariaDB database"):
        db.ingest(sqlite_engine, "ForcedSource", fs, bulk=True)
    assert count(mariadb_engine, "CcdVisit") == 0 and count(sqlite_engine, "ForcedSource") == 0
    db.ingest(mariadb_engine, "ForcedSource", fs[:50], bulk=True)
    before = dump(mariadb_engine, "ForcedSource")
    real, calls = db._load_batch, []

    def failing(*args):
        calls.append(real(*args))                          # batch 1 reaches the database, then we crash
        if len(calls) == 2:
            raise RuntimeError("injected")
        return calls[-1]
    monkeypatch.setattr(db, "_load_batch", failing)
    with pytest.raises(RuntimeError, match="injected"):
        db.ingest(mariadb_engine, "ForcedSource", fs, batch_size=100, bulk=True)
    assert calls[0] > 0 and dump(mariadb_engine, "ForcedSource") == before
    monkeypatch.undo()
    assert db.ingest(mariadb_engine, "ForcedSource", fs, bulk=True) == 220


def test_bulk_path_falls_back_where_local_infile_is_refused(mariadb_engine, monkeypatch):
    fs = awkward()[2]
    monkeypatch.setattr(db, "BULK_MIN_ROWS", 10)
    e = db.connect("mysql+pymysql://localhost", connect_args={"local_infile": False})
    try:
        with pytest.raises(InputError, match="LOAD DATA LOCAL INFILE"):
            db.ingest(e, "ForcedSource", fs, bulk=True)
        assert db.ingest(e, "ForcedSource", fs, batch_size=100) == 270     # INSERT, same transaction
    finally:
        e.dispose()
    assert count(mariadb_engine, "ForcedSource") == 270


def test_rows_are_sent_in_key_order_keeping_the_first_of_a_key(engine, monkeypatch):
    fs = awkward()[2]
    sent, real = [], db._insert_batch

    def spy(conn, stmt, batch):
        sent.extend((r["objectId"], r["ccdVisitId"]) for r in batch)
        return real(conn, stmt, batch)
    monkeypatch.setattr(db, "_insert_batch", spy)
    assert db.ingest(engine, "ForcedSource", fs, batch_size=50, bulk=False) == 270
    assert sent == sorted(sent) and len(sent) == 273
    assert all(r.psFlux != -1.0 for r in dump(engine, "ForcedSource"))


# ---- light curves -------------------------------------------------------------------------------------

def expected_light_curve(data, object_id, band=None):
    ccd, _, fs = data
    rows = fs[fs["objectId"] == object_id]
    pos = {v: i for i, v in enumerate(ccd["ccdVisitId"])}
    i = np.array([pos[v] for v in rows["ccdVisitId"]])
    keep = np.ones(len(i), bool) if band is None else ccd["filterName"][i] == band
    order = np.argsort(ccd["expMidpt"][i][keep])
    return rows[keep][order], ccd["expMidpt"][i][keep][order]


def test_light_curve_is_time_ordered_and_filtered(engine):
    data = synthetic()
    load(engine, data)
    lc = db.light_curve(engine, 7)
    assert list(lc.colnames) == list(db.LIGHT_CURVE_COLUMNS) and len(lc) == 40
    assert np.all(np.diff(lc["expMidpt"]) > 0) and lc["psFlux"].unit == "nJy"
    for band in "ugrizy":
        rows, mjd = expected_light_curve(data, 7, band)
        lc = db.light_curve(engine, 7, band)
        assert set(lc["filterName"]) <= {band} and len(lc) == len(rows)
        assert np.array_equal(lc["expMidpt"], mjd)
        for c in ("ccdVisitId", "psFlux", "psFlux_Sigma", "flags"):
            assert np.array_equal(lc[c], rows[c], equal_nan=True)
    assert len(db.light_curve(engine, 8)) == 0 and db.light_curve(engine, 8).colnames == lc.colnames
    with pytest.raises(InputError, match="band"):
        db.light_curve(engine, 7, "x")


def test_light_curves_identical_on_sqlite_and_mariadb(sqlite_engine, mariadb_engine):
    data = synthetic(n_visits=60, n_objects=4, seed=11)
    for e in (sqlite_engine, mariadb_engine):
        load(e, data)
        add_truth(e)
    for oid in (7, 14, 21, 28):
        for band in (None, *"ugrizy"):
            a, b = db.light_curve(sqlite_engine, oid, band), db.light_curve(mariadb_engine, oid, band)
            assert a.colnames == b.colnames and a.meta == b.meta and len(a) == len(b)
            for c in a.colnames:
                assert np.array_equal(a[c], b[c], equal_nan=a[c].dtype.kind == "f"), (oid, band, c)


def add_truth(engine):
    """Object 7 matches supernova 900 (and, farther, star 1); object 14 matches star 1."""
    ccd = dump(engine, "CcdVisit")
    vis = ccd[: len(ccd) // 2]                             # the supernova shines in half the visits
    db.ingest(engine, "TruthVariableFlux", dict(
        sourceId=np.full(len(vis), 900), visitId=[r.visitId for r in vis],
        filterName=[r.filterName for r in vis], mjd=[r.expMidpt for r in vis],
        mag=np.full(len(vis), 22.0), fluxNjy=np.arange(len(vis)) + 1.0))
    db.ingest(engine, "TruthStar", dict(starId=[1], ra=[53.0], decl=[-27.4],
                                        **{f"{b}Mag": [20.0 + i] for i, b in enumerate("ugrizy")}))
    db.ingest(engine, "ObjectTruthMatch", dict(objectId=[7, 7, 14], truthId=[900, 1, 1],
                                               truthKind=["supernova", "star", "star"],
                                               distance_arcsec=[0.05, 0.4, 0.1]))
    return {r.visitId: i + 1.0 for i, r in enumerate(vis)}


def test_light_curve_carries_truth_flux(engine):
    load(engine, synthetic())
    sn_flux = add_truth(engine)
    visit_of = {r.ccdVisitId: r.visitId for r in dump(engine, "CcdVisit")}
    lc = db.light_curve(engine, 7)
    assert lc.meta["truthId"] == 900 and lc.meta["truthKind"] == "supernova"
    want = [sn_flux.get(visit_of[c], 0.0) for c in lc["ccdVisitId"]]
    assert np.array_equal(lc["truthFlux"], want) and lc["truthFlux"].unit == "nJy"
    lc = db.light_curve(engine, 14, "r")
    assert lc.meta["truthKind"] == "star" and np.allclose(lc["truthFlux"], 10 ** (-0.4 * (22.0 - 31.4)))
    assert "truthFlux" not in db.light_curve(engine, 21).colnames


# ---- truth ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return campaign_run(tmp_path_factory, "db", TINY_TOML, mpi=0)


def test_truth_ingest_of_a_run(engine, tiny_run):
    with open_read(tiny_run / "truth.h5") as fh:
        want = {table.name: len(fh[name]) for name, (table, _) in schema.TRUTH_H5.items()}
    with open_read(tiny_run / "variables" / "truth-0000.h5") as fh:
        truth = read_table(fh["truth"])
    want["TruthVariableFlux"] = len(truth)
    assert min(want.values()) > 0
    assert db.ingest_truth(engine, tiny_run) == want
    assert db.ingest_truth(engine, tiny_run) == dict.fromkeys(want, 0)
    assert {t: count(engine, t) for t in want} == want
    t = schema.TruthVariableFlux
    with engine.connect() as conn:
        r = conn.execute(sa.select(t).where(t.c.sourceId == int(truth["source_id"][0]),
                                            t.c.visitId == int(truth["visit_id"][0]))).one()
    assert r.fluxNjy == truth["flux_njy"][0] and r.filterName == truth["band"][0]
    with pytest.raises(InputError, match="truth.h5"):
        db.ingest_truth(engine, tiny_run / "variables")


# ---- URLs and credentials ---------------------------------------------------------------------------------

def test_default_is_sqlite_in_the_run_directory(tmp_path):
    e = db.connect(rundir=tmp_path)
    assert e.dialect.name == "sqlite" and e.url.database == str(tmp_path / "level2.sqlite")
    with pytest.raises(InputError, match="run directory"):
        db.connect(rundir=tmp_path / "missing")
    with pytest.raises(InputError, match="dialect"):
        db.connect("oracle://host/db")


@pytest.mark.parametrize("url", [f"mysql+pymysql://alice:{SECRET}@db.example.org/twinkles",
                                 f"mysql://alice:{SECRET}@db.example.org:3306/twinkles",
                                 f"mysql+pymysql://db.example.org/twinkles?password={SECRET}",
                                 f"mysql+pymysql://alice:{SECRET}@db.example.org:port/twinkles"])
def test_url_with_password_is_refused(url):
    with pytest.raises(InputError) as err:
        db.connect(url)
    assert SECRET not in str(err.value) and SECRET not in repr(err.value)
    assert err.value.__cause__ is None and (err.value.__context__ is None or err.value.__suppress_context__)


def driver_arguments(engine):
    """The arguments the engine would hand to the driver (caught before any network access)."""
    seen = {}

    def grab(dialect, conn_rec, cargs, cparams):
        seen.update(cparams)
        raise ConnectionAbortedError
    sa.event.listen(engine, "do_connect", grab)
    with pytest.raises(Exception):
        engine.connect()
    return seen


def test_credentials_from_environment_and_option_files(isolated_env, tmp_path):
    cnf = tmp_path / "db.cnf"
    cnf.write_text(f"!includedir /etc/mysql/conf.d\n[mysqld]\nport = 1\n[client]\nuser = bob\n"
                   f"password = \"{SECRET}\"\nsocket = /run/db.sock\ndatabase = dc1\n")
    url = "mysql+pymysql://db.example.org/twinkles"
    # ~/.my.cnf
    (tmp_path / ".my.cnf").write_text(cnf.read_text())
    e = db.connect(url)
    want = {"user": "bob", "password": SECRET, "unix_socket": "/run/db.sock"}
    assert driver_arguments(e).items() >= want.items()
    assert driver_arguments(db.connect(url))["database"] == "twinkles"          # the URL's wins
    # TWINKLES_DB_OPTION_FILE, then the environment over it
    (tmp_path / ".my.cnf").unlink()
    isolated_env.setenv(db.ENV_OPTION_FILE, str(cnf))
    assert driver_arguments(db.connect("mysql+pymysql://localhost"))["database"] == "dc1"
    isolated_env.setenv(db.ENV_USER, "alice")
    isolated_env.setenv(db.ENV_PASSWORD, SECRET + "-env")
    e = db.connect(url, echo=True)
    args = driver_arguments(e)
    assert args["user"] == "alice" and args["password"] == SECRET + "-env"
    for shown in (str(e), repr(e), str(e.url), repr(e.url), repr(e.pool)):
        assert SECRET not in shown
    isolated_env.setenv(db.ENV_OPTION_FILE, str(tmp_path / "missing.cnf"))
    with pytest.raises(InputError, match="missing.cnf"):
        db.connect(url)


def test_mariadb_credentials_from_environment(isolated_env, caplog):
    opt = db.read_option_file(mariadb_option_file())
    url = f"mysql+pymysql://localhost/{opt['database']}?unix_socket={opt['socket']}"
    isolated_env.setenv(db.ENV_USER, opt["user"])
    isolated_env.setenv(db.ENV_PASSWORD, opt["password"])
    e = db.connect(url, echo=True)
    try:
        with e.connect() as conn:
            assert conn.execute(sa.text("SELECT CURRENT_USER()")).scalar().startswith(opt["user"] + "@")
    except sa.exc.OperationalError as err:
        _unavailable(f"cannot connect: {err.orig}")
    assert opt["password"] not in str(e) + repr(e) + caplog.text
    e.dispose()
    isolated_env.setenv(db.ENV_PASSWORD, opt["password"] + "-wrong")
    with pytest.raises(sa.exc.OperationalError, match="Access denied") as err:
        db.connect(url).connect()
    assert opt["password"] not in str(err.value)
