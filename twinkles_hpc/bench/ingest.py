"""`twinkles-hpc bench ingest [--scale S] [--url URL]`: the catalogue database at a multiple of Twinkles Run
1.1 (bench/catalogue.py): ForcedSource ingest rate, size on disk and light-curve query latency, on SQLite
(INSERT) and on MySQL/MariaDB by INSERT and by LOAD DATA (store/db.py's two paths).

Each target starts from empty tables and ingests the CcdVisits (one call), the Objects (one call per field)
and the ForcedSources (one call per field and chunk of at most `--visits-per-call` visits, chunk by chunk as
the ingest stage goes; the rows of a call are made before its clock starts, so only db.ingest is timed).
First and last tenth: the rates of the first and last tenth of the calls, as the table grows. Then
`--queries` random Objects' light curves (db.light_curve) are read through a new connection ("cold": the
database's own cache empty or holding what the ingest left, the OS file cache not dropped) and again
("warm"). The MySQL/MariaDB target is `--url`, else the test server of $TWINKLES_TEST_DB_OPTION_FILE
(.ci/mariadb.sh); a `--url` database must not hold CcdVisit, Object or ForcedSource rows, as the bench
drops and recreates its tables.
"""
import os
import resource
import shutil
import sys
import tempfile
import time

import numpy as np
import sqlalchemy as sa

from twinkles_hpc.bench import common
from twinkles_hpc.bench.catalogue import Catalogue
from twinkles_hpc.errors import InputError
from twinkles_hpc.store import db, schema

TARGETS = ("sqlite", "mysql-insert", "mysql-bulk")
TEST_OPTION_FILE = "TWINKLES_TEST_DB_OPTION_FILE"
BENCH_TABLES = ("CcdVisit", "Object", "ForcedSource")
HEADER = ("| database | path | ForcedSource rows | ingest s | rows/s | first 10% rows/s | last 10% rows/s | "
          "CcdVisit+Object s | size MB | bytes/row | cold p50 / p95 ms | warm p50 / p95 ms |")


def _targets(text, mysql_url):
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names or set(names) - set(TARGETS):
        raise InputError("bench ingest", "--targets", f"a comma-separated list of {', '.join(TARGETS)}", text)
    if mysql_url is None:
        names = [t for t in names if t == "sqlite"]
    return names


def _mysql_url(url):
    """The MySQL/MariaDB URL to bench (and whether it is the test server), or None."""
    if url:
        if db.check_url(url).get_backend_name() == "sqlite":
            raise InputError("bench ingest", "--url", "a MySQL/MariaDB URL (SQLite is always benched)", url)
        return url, False
    cnf = os.environ.get(TEST_OPTION_FILE)
    if not cnf or not os.path.isfile(cnf):
        return None, False
    os.environ[db.ENV_OPTION_FILE] = cnf                 # its socket, database and credentials
    return "mysql+pymysql://localhost", True


def _fresh_tables(engine, disposable):
    """Drop and recreate the bench's tables (refusing a non-disposable database that holds rows), create
    the rest of the schema; returns the tables that were there before."""
    present = set(sa.inspect(engine).get_table_names())
    if not disposable:
        with engine.connect() as conn:
            full = [t for t in BENCH_TABLES if t in present and conn.execute(
                sa.select(sa.literal(1)).select_from(schema.metadata.tables[t]).limit(1)).first()]
        if full:
            raise InputError(str(engine.url), "database", "empty CcdVisit, Object and ForcedSource tables "
                             "(bench ingest drops them)", f"rows in {full[0]}")
    schema.metadata.drop_all(engine, tables=[schema.metadata.tables[t] for t in BENCH_TABLES])
    db.create_schema(engine)
    return present


def _drop_created(engine, present):
    """Leave the database with the tables it had (the bench's own emptied)."""
    created = [t for name, t in schema.metadata.tables.items() if name not in present]
    schema.metadata.drop_all(engine, tables=created + [schema.metadata.tables[t] for t in BENCH_TABLES])
    schema.metadata.create_all(engine, tables=[schema.metadata.tables[t] for t in BENCH_TABLES if t in present])


def _size_bytes(engine, sqlite_path):
    """Bytes on disk of the database (SQLite: the file) or of the bench's tables (InnoDB, after ANALYZE)."""
    if sqlite_path:
        return os.path.getsize(sqlite_path)
    names = ", ".join(f"'{t}'" for t in BENCH_TABLES)
    with engine.connect() as conn:
        conn.exec_driver_sql("ANALYZE TABLE " + ", ".join(f"`{t}`" for t in BENCH_TABLES)).all()
        return int(conn.exec_driver_sql("SELECT SUM(data_length + index_length) FROM information_schema.tables "
                                        f"WHERE table_schema = DATABASE() AND table_name IN ({names})").scalar())


def _query_ms(engine, object_ids):
    out = []
    for oid in object_ids:
        t0 = time.perf_counter()
        db.light_curve(engine, int(oid))
        out.append(1e3 * (time.perf_counter() - t0))
    return np.array(out)


def bench_target(cat, url, bulk, *, visits_per_call=100, queries=100, batch_size=50_000, disposable=True,
                 sqlite_path=None, progress=None):
    """Ingest the catalogue `cat` into `url` (bulk: LOAD DATA) and time it; returns a dict of figures."""
    engine = db.connect(url)
    present = _fresh_tables(engine, disposable)
    try:
        t0 = time.perf_counter()
        db.ingest(engine, "CcdVisit", cat.ccd_visits(), batch_size=batch_size, bulk=bulk)
        for field in range(cat.layout.fields):
            db.ingest(engine, "Object", cat.objects(field), batch_size=batch_size, bulk=bulk)
        t_static = time.perf_counter() - t0
        seconds, rows = [], []
        calls = list(cat.calls(visits_per_call))
        for k, (field, visits) in enumerate(calls):
            fs = cat.forced_sources(field, visits)
            t0 = time.perf_counter()
            got = db.ingest(engine, "ForcedSource", fs, batch_size=batch_size, bulk=bulk)
            seconds.append(time.perf_counter() - t0)
            rows.append(got)
            if progress and (k + 1) % max(1, len(calls) // 10) == 0:
                progress(f"  {k + 1}/{len(calls)} calls, {sum(rows):,} rows, {sum(rows) / sum(seconds):,.0f} rows/s")
        seconds, rows = np.array(seconds), np.array(rows)
        tenth = max(1, len(rows) // 10)
        size = _size_bytes(engine, sqlite_path)
        db.light_curve(engine, -1)                       # imports (astropy) outside the clock; no such Object
        engine.dispose()
        rng = np.random.default_rng([cat.seed, 4])
        field = rng.integers(0, cat.layout.fields, queries)
        oids = [rng.choice(cat.truth(f)["objectId"]) for f in field]
        cold = _query_ms(engine, oids)
        warm = _query_ms(engine, oids)
        return dict(rows=int(rows.sum()), seconds=float(seconds.sum()), static_seconds=t_static, size=size,
                    rate=rows.sum() / seconds.sum(), first=rows[:tenth].sum() / seconds[:tenth].sum(),
                    last=rows[-tenth:].sum() / seconds[-tenth:].sum(), cold=cold, warm=warm, calls=len(calls))
    finally:
        if not sqlite_path:
            _drop_created(engine, present)
        engine.dispose()


def _row(database, path, r):
    q = "{:.1f} / {:.1f}".format
    return (f"| {database} | {path} | {r['rows']:,} | {r['seconds']:.1f} | {r['rate']:,.0f} | {r['first']:,.0f} | "
            f"{r['last']:,.0f} | {r['static_seconds']:.1f} | {r['size'] / 1e6:,.0f} | {r['size'] / r['rows']:.0f} | "
            f"{q(*np.percentile(r['cold'], [50, 95]))} | {q(*np.percentile(r['warm'], [50, 95]))} |")


def bench_ingest(scale, *, url=None, targets="sqlite,mysql-insert,mysql-bulk", visits_per_call=100, queries=100,
                 batch_size=50_000, seed=1, workdir=None, progress=None):
    """The lines of `twinkles-hpc bench ingest`: one table row per target."""
    if not 0 < scale <= 100:
        raise InputError("bench ingest", "--scale", "a multiple of Run 1.1 in (0, 100]", scale)
    for name, v in (("--visits-per-call", visits_per_call), ("--queries", queries), ("--batch-size", batch_size)):
        if v < 1:
            raise InputError("bench ingest", name, "an integer >= 1", v)
    mysql_url, disposable = _mysql_url(url)
    names = _targets(targets, mysql_url)
    cat = Catalogue(scale, seed)
    lay = cat.layout
    n_calls = sum(1 for _ in cat.calls(visits_per_call))
    lines = [f"ingest bench: scale {scale:g} x Run 1.1 ({lay.fields} field(s) x {lay.visits} visits: "
             f"{lay.ccd_visits:,} CcdVisits, {lay.objects:,} Objects, ~{lay.forced_sources:,} ForcedSources); "
             f"ForcedSource in {n_calls:,} calls (a field, <= {visits_per_call} visits), batch_size {batch_size:,}; "
             f"{queries} light curves",
             f"machine: {common.machine_line()}", "", HEADER, "|" + "---|" * (HEADER.count("|") - 1)]
    work = tempfile.mkdtemp(prefix="twinkles-bench-ingest-", dir=workdir)
    try:
        for name in names:
            if progress:
                progress(f"{name}: ingesting")
            if name == "sqlite":
                path = os.path.join(work, "ingest.sqlite")
                r = bench_target(cat, "sqlite:///" + path, False, visits_per_call=visits_per_call, queries=queries,
                                 batch_size=batch_size, sqlite_path=path, progress=progress)
                os.unlink(path)
                lines.append(_row("SQLite " + _sqlite_version(), "INSERT", r))
            else:
                bulk = name == "mysql-bulk"
                r = bench_target(cat, mysql_url, bulk, visits_per_call=visits_per_call, queries=queries,
                                 batch_size=batch_size, disposable=disposable, progress=progress)
                lines.append(_row(_server_version(mysql_url), "LOAD DATA" if bulk else "INSERT", r))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    lines.append("")
    if mysql_url is None and targets != "sqlite":
        lines.append(f"MySQL/MariaDB not benched: give --url, or set ${TEST_OPTION_FILE} (.ci/mariadb.sh)")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    lines += [f"size: the SQLite file, or InnoDB data + index length of the three tables; bytes/row: size / "
              f"ForcedSource rows; cold: a new connection (OS file cache not dropped); peak RSS {peak:.0f} MB"]
    return lines


def _sqlite_version():
    import sqlite3
    return sqlite3.sqlite_version


def _server_version(url):
    engine = db.connect(url)
    try:
        with engine.connect() as conn:
            v = conn.exec_driver_sql("SELECT VERSION()").scalar()
    finally:
        engine.dispose()
    return ("MariaDB " if "mariadb" in v.lower() else "MySQL ") + v.split("-")[0]


def run(args):
    """`twinkles-hpc bench ingest`: returns the lines to print."""
    def progress(msg):
        print(msg, file=sys.stderr, flush=True)
    return bench_ingest(args.scale, url=args.url, targets=args.targets, visits_per_call=args.visits_per_call,
                        queries=args.queries, batch_size=args.batch_size, seed=args.seed, workdir=args.rundir,
                        progress=progress)
