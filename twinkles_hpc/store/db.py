"""The catalogue database: connect, create the schema, ingest idempotently, query light curves.

SQLite (one file in the run directory) by default; MySQL/MariaDB by URL for a shared server. Passwords
never travel in a URL, on a command line or in a log: they come from TWINKLES_DB_USER /
TWINKLES_DB_PASSWORD or from the [client] section of a MySQL option file (TWINKLES_DB_OPTION_FILE,
else ~/.my.cnf) and reach the driver directly, so the engine's URL (its str/repr) holds none.
See docs/database.md.
"""
import configparser
import glob
import os
import tempfile

import numpy as np
import sqlalchemy as sa

from twinkles_hpc.errors import InputError
from twinkles_hpc.instrument import mag_to_njy
from twinkles_hpc.store import schema
from twinkles_hpc.store.atomic import open_read
from twinkles_hpc.store.tables import read_table
from twinkles_hpc.rundir import layout

ENV_USER, ENV_PASSWORD = "TWINKLES_DB_USER", "TWINKLES_DB_PASSWORD"
ENV_OPTION_FILE = "TWINKLES_DB_OPTION_FILE"
SQLITE_NAME = layout.SQLITE
_NO_PASSWORD = (f"no password in the URL: set {ENV_PASSWORD} (and {ENV_USER}) or put user and "
                f"password in the [client] section of a MySQL option file ({ENV_OPTION_FILE} or ~/.my.cnf)")


# ---- connecting -------------------------------------------------------------------------------------


def connect(url=None, rundir=None, **engine_kw):
    """A SQLAlchemy Engine: `url` (e.g. mysql+pymysql://host/db, mysql+pymysql://localhost/db?unix_socket=
    /path), else sqlite:///RUNDIR/level2.sqlite. MySQL credentials come from the environment or an option
    file (module docstring); a URL holding a password is refused with InputError."""
    if url is None:
        if rundir is None:
            raise InputError("database", "url", "a database URL or a run directory")
        if not os.path.isdir(rundir):
            raise InputError(rundir, "run directory", "an existing directory")
        url = sqlite_url(rundir)
    u = check_url(url)
    engine_kw.setdefault("hide_parameters", True)        # no row values in logs or exception messages
    backend = u.get_backend_name()
    if backend in ("mysql", "mariadb"):
        if "+" not in u.drivername:
            u = u.set(drivername=backend + "+pymysql")
        if "charset" not in u.query:
            u = u.update_query_dict({"charset": "utf8mb4"})
        # local_infile: the client may send a file for LOAD DATA LOCAL (the bulk path of `ingest`)
        engine_kw["connect_args"] = {"local_infile": True, **_mysql_credentials(u), **engine_kw.get("connect_args", {})}
        engine_kw.setdefault("pool_pre_ping", True)
    engine = sa.create_engine(u, **engine_kw)
    if backend == "sqlite":
        sa.event.listen(engine, "connect", _sqlite_cache)
    return engine


#: SQLite page cache of a connection, KiB (SQLite's default: 2 MiB), filled only as pages are read: the
#: pages one ingest call changes stay in memory until its commit instead of spilling to the file
#: (one call per visit into a table of 3 million ForcedSources: 1.85x faster; docs/database.md).
SQLITE_CACHE_KIB = 262_144


def _sqlite_cache(dbapi_conn, _record):
    dbapi_conn.execute(f"PRAGMA cache_size = -{SQLITE_CACHE_KIB}")


def sqlite_url(rundir):
    """The default database of a run directory: sqlite:///RUNDIR/level2.sqlite."""
    return "sqlite:///" + os.path.join(os.path.abspath(rundir), SQLITE_NAME)


def check_url(url):
    """The parsed URL (sqlalchemy URL) after refusing, with an InputError that shows it masked, a URL
    that does not parse, holds a password or names a dialect other than sqlite or mysql/mariadb.
    Touches no database (config validation calls it)."""
    try:
        u = sa.make_url(url)
    except (sa.exc.ArgumentError, ValueError):
        # `from None`: the parser's message would repeat the URL, password included
        raise InputError("database URL", "url", "dialect+driver://[user@]host[:port]/database") from None
    shown = u.difference_update_query(["password", "passwd"]).render_as_string(hide_password=True)
    if u.password is not None or {"password", "passwd"} & set(u.query):
        raise InputError(f"database URL {shown}", "password", _NO_PASSWORD)
    if u.get_backend_name() not in ("sqlite", "mysql", "mariadb"):
        raise InputError(f"database URL {shown}", "dialect", "sqlite or mysql/mariadb", u.get_backend_name())
    return u


def read_option_file(path=None):
    """The [client] section of a MySQL option file as a dict ({} when there is none). `path` defaults
    to $TWINKLES_DB_OPTION_FILE (which must exist), else ~/.my.cnf (if it exists)."""
    path = path or os.environ.get(ENV_OPTION_FILE)
    if path:
        if not os.path.isfile(path):
            raise InputError(path, ENV_OPTION_FILE, "an existing MySQL option file")
    else:
        path = os.path.expanduser("~/.my.cnf")
        if not os.path.isfile(path):
            return {}
    cp = configparser.ConfigParser(allow_no_value=True, strict=False, interpolation=None)
    with open(path) as fh:      # !include directives are not followed
        text = "".join(line for line in fh if not line.lstrip().startswith("!"))
    try:
        cp.read_string(text, source=path)
    except configparser.Error:
        raise InputError(path, "option file", "MySQL option-file syntax: [client], key = value") from None
    if not cp.has_section("client"):
        return {}
    return {k.replace("_", "-"): _unquote(v.strip()) for k, v in cp.items("client") if v is not None}


def _unquote(v):
    return v[1:-1] if len(v) > 1 and v[0] == v[-1] and v[0] in "'\"" else v


def _mysql_credentials(u):
    """Driver arguments the URL lacks: user and password from the environment or the option file;
    socket, host, port and database from the option file."""
    opt = read_option_file()
    args = {"user": u.username or os.environ.get(ENV_USER) or opt.get("user"),
            "password": os.environ.get(ENV_PASSWORD, opt.get("password"))}
    if "unix_socket" not in u.query and opt.get("socket"):
        args["unix_socket"] = opt["socket"]
    if u.host is None and opt.get("host"):
        args["host"] = opt["host"]
    if u.port is None and opt.get("port"):
        if not opt["port"].isdigit():
            raise InputError("MySQL option file", "port", "an integer", opt["port"])
        args["port"] = int(opt["port"])
    if u.database is None and opt.get("database"):
        args["database"] = opt["database"]
    if u.username:
        del args["user"]                                 # the URL's own goes to the driver
    return {k: v for k, v in args.items() if v is not None}


def create_schema(engine):
    """Create every table and index of `schema` that does not exist yet (idempotent)."""
    schema.metadata.create_all(engine)


# ---- ingest -------------------------------------------------------------------------------------------

#: A call of at least this many rows loads into MySQL/MariaDB by LOAD DATA LOCAL INFILE instead of INSERT
#: (LOAD DATA: 1.7x faster at 1,000 rows a call, 3x from 3,000; INSERT wins below ~100; docs/database.md).
BULK_MIN_ROWS = 1_000
#: Errors that mean LOAD DATA LOCAL is disabled on the client or the server (MariaDB 4166, MySQL 3948, older
#: servers 1148): the call inserts instead.
_LOCAL_INFILE_REFUSED = {1148, 3948, 4166}


def ingest(engine, table_name, rows, *, batch_size=50_000, on_batch=None, bulk=None):
    """Insert `rows` (numpy structured array, dict of arrays or astropy Table, columns named as in the
    schema) into `table_name`; returns the number of rows inserted.

    All or nothing: every batch runs in one transaction. Idempotent: a row whose primary key is
    present is skipped (ON CONFLICT DO NOTHING / INSERT IGNORE / LOAD DATA ... IGNORE), so a rerun after
    a crash completes the table and a repeat inserts 0. The rows are validated first (types, NOT NULL,
    string lengths, integer ranges), so that the only thing the database may skip is a duplicate key.
    NaN and +-inf are stored as NULL. `on_batch(table_name, n_rows)`, if given, is called after each batch
    has been sent (inside the transaction): progress reports, fault injection.

    `bulk`: on MySQL/MariaDB each batch is written to a temporary CSV file and sent by LOAD DATA LOCAL
    INFILE (same rows, same transaction, several times faster); None uses it for calls of BULK_MIN_ROWS
    rows or more, and falls back to INSERT where the server refuses LOCAL INFILE; True insists (InputError
    on SQLite or when refused); False always INSERTs.
    """
    table = schema.metadata.tables.get(table_name)
    if table is None:
        raise InputError("ingest", "table", f"one of {sorted(schema.metadata.tables)}", table_name)
    cols = _in_key_order(table, _validated(table, rows))
    n = len(next(iter(cols.values()))[0]) if cols else 0
    stmt = _insert_ignore(engine, table)
    mysql = engine.dialect.name != "sqlite"
    if bulk and not mysql:
        raise InputError(f"ingest into {table_name}", "bulk", "a MySQL/MariaDB database (LOAD DATA)",
                         engine.dialect.name)
    if n == 0:
        return 0
    use_bulk = mysql and (n >= BULK_MIN_ROWS if bulk is None else bulk)
    inserted = 0
    with engine.begin() as conn:
        for lo in range(0, n, batch_size):
            hi = min(lo + batch_size, n)
            got = _load_batch(conn, table, cols, lo, hi) if use_bulk else None
            if got is None:
                if use_bulk and bulk:
                    raise InputError(f"ingest into {table_name}", "bulk", "a server that accepts LOAD DATA LOCAL "
                                     "INFILE (local_infile = ON)", "refused")
                use_bulk = False
                lists = [_py_values(v[lo:hi], null[lo:hi]) for v, null in cols.values()]
                got = _insert_batch(conn, stmt, [dict(zip(cols, r)) for r in zip(*lists)])
            inserted += got
            if on_batch is not None:
                on_batch(table_name, hi - lo)
    return inserted


def _in_key_order(table, cols):
    """The validated `cols` sorted by the primary key (stably: of rows with equal keys the first is kept, as
    without sorting). A B-tree clustered on the key (SQLite tables, InnoDB) then takes each page once per
    call instead of once per row: a call of 100 visits' ForcedSources ingests 1.4x (SQLite) to 13x faster
    (InnoDB, a table larger than its buffer pool)."""
    keys = [cols[c.name][0] for c in table.primary_key.columns if c.name in cols]
    if not keys or len(keys[0]) < 2:
        return cols
    if len(keys) == 1 and np.all(keys[0][1:] >= keys[0][:-1]):
        return cols
    order = np.lexsort(keys[::-1])
    if np.all(order[1:] > order[:-1]):
        return cols
    return {name: (v[order], null[order]) for name, (v, null) in cols.items()}


def _insert_batch(conn, stmt, batch):
    return max(conn.execute(stmt, batch).rowcount, 0)


#: CSV as the LOAD DATA statement of _load_batch reads it: strings quoted (quotes doubled), NULL unquoted
_CSV_OPTIONS = dict(include_header=False, delimiter=",", null_string="NULL", quoting_style="needed")


def _load_batch(conn, table, cols, lo, hi):
    """Rows [lo, hi) of the validated `cols` by LOAD DATA LOCAL INFILE ... IGNORE through a temporary CSV
    file (mode 600, removed at once); returns the rows inserted, or None when the server refuses LOCAL."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    arrays = [pa.array(v[lo:hi].astype(np.int8) if v.dtype == bool else v[lo:hi],
                       mask=null[lo:hi] if null[lo:hi].any() else None) for v, null in cols.values()]
    q = conn.dialect.identifier_preparer.quote
    # unquoted NULL is SQL NULL because fields may be enclosed; ESCAPED BY '': backslashes are data
    sql = (f"LOAD DATA LOCAL INFILE %s IGNORE INTO TABLE {q(table.name)} CHARACTER SET utf8mb4 "
           "FIELDS TERMINATED BY ',' OPTIONALLY ENCLOSED BY '\"' ESCAPED BY '' "
           f"({', '.join(q(c) for c in cols)})")
    fd, path = tempfile.mkstemp(prefix=f"twinkles-{table.name}-", suffix=".csv")
    try:
        with os.fdopen(fd, "wb") as fh:
            pacsv.write_csv(pa.table(arrays, names=list(cols)), fh, pacsv.WriteOptions(**_CSV_OPTIONS))
        try:
            return max(conn.exec_driver_sql(sql, (path,)).rowcount, 0)
        except sa.exc.DBAPIError as err:
            if err.orig is not None and err.orig.args and err.orig.args[0] in _LOCAL_INFILE_REFUSED:
                return None
            raise
    finally:
        os.unlink(path)


def _insert_ignore(engine, table):
    name = engine.dialect.name
    if name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
        return insert(table).on_conflict_do_nothing()
    if name in ("mysql", "mariadb"):
        # safe only because the rows were validated: IGNORE also turns other errors into warnings
        return table.insert().prefix_with("IGNORE")
    raise InputError(str(engine.url), "dialect", "sqlite or mysql/mariadb", name)


def _columns(rows):
    if hasattr(rows, "keys"):                           # dict of arrays, astropy Table
        return {k: rows[k] for k in rows.keys()}
    rows = np.asanyarray(rows)
    if rows.dtype.names is None:
        raise InputError("ingest", "rows", "a structured array, a dict of arrays or a Table")
    return {k: rows[k] for k in rows.dtype.names}


def _validated(table, rows):
    """{column: (values ndarray, null mask)} after checking `rows` against `table`."""
    given = _columns(rows)
    src = f"ingest into {table.name}"
    if unknown := sorted(set(given) - set(table.c.keys())):
        raise InputError(src, unknown[0], f"a column of {table.name}: {list(table.c.keys())}")
    required = [c.name for c in table.c if not c.nullable and c.server_default is None]
    if missing := [c for c in required if c not in given]:
        raise InputError(src, missing[0], "a value for every row (NOT NULL column)", "no such column")
    out = {name: _column(src, table.c[name], arr) for name, arr in given.items()}
    lengths = {len(v) for v, _ in out.values()}
    if len(lengths) > 1:
        raise InputError(src, "rows", "columns of equal length", sorted(lengths))
    return out


def _column(src, col, arr):
    mask = np.ma.getmaskarray(arr) if np.ma.isMaskedArray(arr) else None
    v = np.asarray(np.ma.getdata(arr))
    if v.ndim != 1:
        raise InputError(src, col.name, "a 1-d column", f"shape {v.shape}")
    null = np.zeros(len(v), bool) if mask is None else mask.copy()
    if v.dtype.kind == "O":                               # None marks NULL
        null |= np.array([x is None for x in v], bool)
        fill = v[~null][0] if (~null).any() else "" if isinstance(col.type, sa.String) else 0
        v = np.array([fill if n else x for x, n in zip(v.tolist(), null)])
    t = col.type
    if isinstance(t, sa.Boolean):
        if v.dtype.kind not in "iub" or not np.all(null | (v == 0) | (v == 1)):
            raise InputError(src, col.name, "booleans (true/false or 0/1)", str(v.dtype))
        v = v.astype(bool)
    elif isinstance(t, sa.Integer):
        if v.dtype.kind not in "iub":
            raise InputError(src, col.name, "integers", str(v.dtype))
        bits = 64 if isinstance(t, sa.BigInteger) else 16 if isinstance(t, sa.SmallInteger) else 32
        ok = null | ((v >= -2 ** (bits - 1)) & (v <= 2 ** (bits - 1) - 1))
        if not np.all(ok):
            raise InputError(src, col.name, f"{bits}-bit signed integers", int(v[~ok][0]))
        v = v.astype(np.int64)
    elif isinstance(t, sa.Float):
        if v.dtype.kind not in "fiub":
            raise InputError(src, col.name, "numbers", str(v.dtype))
        v = v.astype(np.float64)
        null |= ~np.isfinite(v)
    elif isinstance(t, sa.String):
        if v.dtype.kind == "S":
            v = np.char.decode(v, "utf-8")
        if v.dtype.kind != "U":
            raise InputError(src, col.name, "strings", str(v.dtype))
        too_long = ~null & (np.char.str_len(v) > t.length)
        if too_long.any():
            raise InputError(src, col.name, f"at most {t.length} characters", str(v[too_long][0]))
    if not col.nullable and null.any():
        raise InputError(src, col.name, "a value in every row (NOT NULL column; NaN counts as NULL)",
                         f"{int(null.sum())} NULL, first at row {int(np.argmax(null))}")
    return v, null


def _py_values(v, null):
    """Python scalars for the driver, None where null."""
    if not null.any():
        return v.tolist()
    o = v.astype(object)
    o[null] = None
    return o.tolist()


def ingest_truth(engine, rundir, *, batch_size=50_000, on_batch=None):
    """Ingest a run directory's truth (truth.h5 tables, variables/truth-*.h5) into the Truth* tables
    (each table or file one transaction; rerunning inserts only what is missing). Returns
    {table name: rows inserted}."""
    counts = {}
    path = os.path.join(rundir, layout.TRUTH)
    if not os.path.isfile(path):
        raise InputError(rundir, layout.TRUTH, f"a run directory with {layout.TRUTH}")
    with open_read(path) as fh:
        for dataset, (table, names) in schema.TRUTH_H5.items():
            if dataset in fh:
                t = read_table(fh[dataset])
                cols = {names.get(c, c): t[c] for c in t.dtype.names if names.get(c, c) in table.c}
                counts[table.name] = ingest(engine, table.name, cols, batch_size=batch_size, on_batch=on_batch)
    flux = schema.TruthVariableFlux.name
    counts[flux] = 0
    for p in sorted(glob.glob(os.path.join(rundir, layout.VARIABLES_TRUTH_GLOB))):
        with open_read(p) as fh:
            t = read_table(fh["truth"])
        names = schema.TRUTH_FLUX_COLUMNS
        cols = {names.get(c, c): t[c] for c in t.dtype.names if names.get(c, c) in schema.TruthVariableFlux.c}
        counts[flux] += ingest(engine, flux, cols, batch_size=batch_size, on_batch=on_batch)
    return counts


# ---- queries ------------------------------------------------------------------------------------------

LIGHT_CURVE_COLUMNS = ("objectId", "ccdVisitId", "filterName", "expMidpt", "psFlux", "psFlux_Sigma", "flags")


def light_curve(engine, object_id, band=None, truth_id=None):
    """The Run 1 light-curve query: ForcedSource JOIN CcdVisit JOIN Object WHERE objectId = ? [AND
    filterName = ?] ORDER BY expMidpt, as an astropy Table (fluxes in nJy).

    When ObjectTruthMatch links the object to a truth source (the nearest if several, else `truth_id`,
    which must be one of its matches), the column truthFlux (nJy) gives that source's true flux in each
    visit, and meta holds truthId, truthKind and truthDistanceArcsec. A galaxy's true flux is its total
    (bulge + disk) flux.
    """
    from astropy.table import Table
    if band is not None and (not isinstance(band, str) or band not in schema.BANDS):
        raise InputError("light_curve", "band", f"one of {schema.BANDS}", band)
    fs, cv, obj = schema.ForcedSource, schema.CcdVisit, schema.Object
    object_id = int(object_id)
    with engine.connect() as conn:
        match = _truth_match(conn, object_id, truth_id)
        q = (sa.select(*(fs.c[c] if c in fs.c else cv.c[c] for c in LIGHT_CURVE_COLUMNS))
             .select_from(fs.join(cv, fs.c.ccdVisitId == cv.c.ccdVisitId)
                          .join(obj, fs.c.objectId == obj.c.objectId))
             .where(fs.c.objectId == object_id))
        if band is not None:
            q = q.where(cv.c.filterName == band)
        if match and match.truthKind in ("supernova", "lensed_image"):
            tv = schema.TruthVariableFlux
            q = q.add_columns(tv.c.fluxNjy.label("truthFlux")).outerjoin(
                tv, (tv.c.sourceId == match.truthId) & (tv.c.visitId == cv.c.visitId))
        ncol = len(q.selected_columns)
        rows = conn.execute(q.order_by(cv.c.expMidpt, fs.c.ccdVisitId)).all()
        static = _static_truth_flux(conn, match) if match and match.truthKind in ("star", "galaxy") else None
    cols = list(zip(*rows)) if rows else [()] * ncol
    dtypes = dict(objectId=np.int64, ccdVisitId=np.int64, filterName="U1", expMidpt=np.float64,
                  psFlux=np.float64, psFlux_Sigma=np.float64, flags=np.int64)
    t = Table({c: np.array(cols[i], dtype=dtypes[c]) for i, c in enumerate(LIGHT_CURVE_COLUMNS)})
    t["psFlux"].unit = t["psFlux_Sigma"].unit = "nJy"
    t["expMidpt"].unit = "d"
    if match:
        if static is not None:
            truth = np.array([static.get(b, np.nan) for b in t["filterName"]], dtype=np.float64)
        else:
            truth = np.array(cols[len(LIGHT_CURVE_COLUMNS)], dtype=np.float64)
            if match.truthKind == "supernova":
                truth[np.isnan(truth)] = 0.0     # no truth row: the supernova gives no light
        t["truthFlux"] = truth
        t["truthFlux"].unit = "nJy"
        t.meta.update(truthId=match.truthId, truthKind=match.truthKind,
                      truthDistanceArcsec=match.distance_arcsec)
    return t


#: Columns of the DIA light curve (DiaForcedSource)
DIA_LIGHT_CURVE_COLUMNS = ("diaObjectId", "ccdVisitId", "filterName", "midPointTai", "psFlux", "psFluxErr", "totFlux",
                           "totFluxErr", "flags")
LENSED_LIGHT_CURVE_COLUMNS = ("lensedImageId", "ccdVisitId", "filterName", "midPointTai", "psFlux", "psFluxErr",
                              "directFlux", "directFluxErr", "diffFlux", "diffFluxErr", "templateFlux", "galaxyFlux",
                              "flags")


def dia_light_curve(engine, dia_object_id, band=None):
    """The DIA light curve of one DiaObject: its DiaForcedSource rows [AND filterName = ?] ORDER BY
    midPointTai as an astropy Table (nJy); with truthFlux (nJy, 0 where a supernova gives no light) of the
    nearest true variable of DiaObjectTruthMatch, whose id and kind go to meta."""
    return _matched_light_curve(engine, schema.DiaForcedSource, schema.DiaObjectTruthMatch, "diaObjectId",
                                DIA_LIGHT_CURVE_COLUMNS, dia_object_id, band, "dia_light_curve")


def lensed_light_curve(engine, lensed_image_id, band=None):
    """The light curve of one LensedImage: its LensedImageForcedSource rows [AND filterName = ?] ORDER BY
    midPointTai as an astropy Table (nJy), with truthFlux of the nearest true image of
    LensedImageTruthMatch (id and kind in meta)."""
    return _matched_light_curve(engine, schema.LensedImageForcedSource, schema.LensedImageTruthMatch,
                                "lensedImageId", LENSED_LIGHT_CURVE_COLUMNS, lensed_image_id, band,
                                "lensed_light_curve")


def _matched_light_curve(engine, fs, m, id_col, columns, oid, band, caller):
    """Rows of the per-visit table `fs` of one id (column `id_col`) ORDER BY midPointTai, with truthFlux of
    the nearest truth of the match table `m`."""
    from astropy.table import Table
    if band is not None and (not isinstance(band, str) or band not in schema.BANDS):
        raise InputError(caller, "band", f"one of {schema.BANDS}", band)
    tv = schema.TruthVariableFlux
    oid = int(oid)
    with engine.connect() as conn:
        match = conn.execute(sa.select(m.c.truthId, m.c.truthKind, m.c.distance_arcsec).where(m.c[id_col] == oid)
                             .order_by(m.c.distance_arcsec, m.c.truthId).limit(1)).first()
        q = sa.select(*(fs.c[c] for c in columns)).where(fs.c[id_col] == oid)
        if band is not None:
            q = q.where(fs.c.filterName == band)
        if match:
            q = q.add_columns(tv.c.fluxNjy.label("truthFlux")).outerjoin(
                tv, (tv.c.sourceId == match.truthId) & (tv.c.visitId == fs.c.ccdVisitId))
        rows = conn.execute(q.order_by(fs.c.midPointTai, fs.c.ccdVisitId)).all()
    names = list(columns) + (["truthFlux"] if match else [])
    cols = list(zip(*rows)) if rows else [()] * len(names)
    kinds = {id_col: np.int64, "ccdVisitId": np.int64, "flags": np.int64, "filterName": "U1"}
    t = Table({c: np.array([np.nan if v is None else v for v in cols[i]], dtype=kinds.get(c, np.float64))
               for i, c in enumerate(names)})
    for c in t.colnames:
        if "Flux" in c:
            t[c].unit = "nJy"
    t["midPointTai"].unit = "d"
    if match:
        if match.truthKind == "supernova":
            t["truthFlux"][np.isnan(t["truthFlux"])] = 0.0
        t.meta.update(truthId=match.truthId, truthKind=match.truthKind, truthDistanceArcsec=match.distance_arcsec)
    return t


def _truth_match(conn, object_id, truth_id=None):
    m = schema.ObjectTruthMatch
    q = sa.select(m.c.truthId, m.c.truthKind, m.c.distance_arcsec).where(m.c.objectId == object_id)
    if truth_id is None:
        return conn.execute(q.order_by(m.c.distance_arcsec, m.c.truthId).limit(1)).first()
    row = conn.execute(q.where(m.c.truthId == int(truth_id))).first()
    if row is None:
        raise InputError(f"Object {object_id}", "truth id",
                         "a truth source matched to the Object (ObjectTruthMatch)", int(truth_id))
    return row


def object_of_truth(engine, truth_id):
    """The ObjectTruthMatch row (objectId, truthId, truthKind, distance_arcsec) of the Object nearest to
    truth source `truth_id` (star, galaxy, supernova or lensed-image id), or None when no Object lies
    within the match radius. A supernova on its host is found this way even when the host galaxy is the
    Object's nearest truth source."""
    m = schema.ObjectTruthMatch
    with engine.connect() as conn:
        return conn.execute(sa.select(m).where(m.c.truthId == int(truth_id))
                            .order_by(m.c.distance_arcsec, m.c.objectId).limit(1)).first()


def table_counts(engine):
    """{table: rows} for the schema's tables present in the database."""
    present = set(sa.inspect(engine).get_table_names())
    with engine.connect() as conn:
        return {name: conn.execute(sa.select(sa.func.count()).select_from(t)).scalar()
                for name, t in schema.metadata.tables.items() if name in present}


def _static_truth_flux(conn, match):
    """{band: true flux, nJy} of a star or galaxy (bulge + disk)."""
    if match.truthKind == "star":
        t = schema.TruthStar
        row = conn.execute(sa.select(t).where(t.c.starId == match.truthId)).mappings().first()
        return {b: float(mag_to_njy(row[f"{b}Mag"])) if row and row[f"{b}Mag"] is not None else np.nan
                for b in schema.BANDS}
    t = schema.TruthGalaxy
    row = conn.execute(sa.select(t).where(t.c.galaxyId == match.truthId)).mappings().first()
    return {b: (float(sum(mag_to_njy(row[f"{b}{p}Mag"]) for p in ("Bulge", "Disk")
                          if row[f"{b}{p}Mag"] is not None)) if row else np.nan)
            for b in schema.BANDS}
