"""`twinkles-hpc bench report --rundir RUN`: the report against the run's own database and against a copy
grown to Twinkles Run 1.1's size (1120 CcdVisits, 41,653 Objects, 33.8 million ForcedSources;
../shared/SCIENCE.md section 5), side by side.

The copy keeps every real row and adds synthetic ones: CcdVisits with new ids (a copy of a real
visit's metadata), Objects with new ids at the real Objects' positions, and ForcedSource rows of the
synthetic Objects in a window of visits each, until the totals are Run 1.1's. The report's pages
come from the real rows (the synthetic Objects match no truth), so the difference between the two
timings is what a database of Run 1's size costs the report: its queries over ObjectTruthMatch,
ForcedSource and CcdVisit. The run directory (calexps, coadds, trace) is the same for both.
"""
import os
import shutil
import sqlite3
import tempfile

import numpy as np

from twinkles_hpc.bench.common import Timer
from twinkles_hpc.errors import InputError
from twinkles_hpc.rundir import layout

RUN1 = {"CcdVisit": 1120, "Object": 41_653, "ForcedSource": 33_800_000}
SYNTHETIC_ID0 = 1 << 50          # synthetic ids start here, far above any real one
INSERT_FORCED = 'INSERT INTO "ForcedSource" (objectId, ccdVisitId, psFlux, psFlux_Sigma, flags) VALUES (?, ?, ?, ?, 0)'


def grow_database(src, dst, target=RUN1, batch=1_000_000):
    """Copy the SQLite database `src` to `dst` and add synthetic rows up to `target`; returns the counts."""
    shutil.copyfile(src, dst)
    con = sqlite3.connect(dst)
    try:
        con.execute("PRAGMA journal_mode=OFF")          # a disposable benchmark copy
        con.execute("PRAGMA synchronous=OFF")
        cur = con.cursor()
        n = {t: cur.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in target}
        if min(n.values()) == 0:
            raise InputError(src, "database", "CcdVisit, Object and ForcedSource rows (a run with ingest)")
        cols = [r[1] for r in cur.execute('PRAGMA table_info("CcdVisit")')]
        proto = cur.execute('SELECT * FROM "CcdVisit" ORDER BY ccdVisitId').fetchall()
        new_visits = []
        for k in range(max(target["CcdVisit"] - n["CcdVisit"], 0)):
            row = dict(zip(cols, proto[k % len(proto)]))
            row["ccdVisitId"] = row["visitId"] = SYNTHETIC_ID0 + k
            row["expMidpt"] = row["expMidpt"] + 1e-3 * (k + 1)
            new_visits.append(tuple(row[c] for c in cols))
        cur.executemany(f'INSERT INTO "CcdVisit" VALUES ({",".join("?" * len(cols))})', new_visits)
        pos = cur.execute('SELECT psRa, psDecl FROM "Object"').fetchall()
        n_obj = max(target["Object"] - n["Object"], 0)
        cur.executemany('INSERT INTO "Object" (objectId, psRa, psDecl, flags) VALUES (?, ?, ?, 0)',
                        [(SYNTHETIC_ID0 + k, pos[k % len(pos)][0] + 1e-6, pos[k % len(pos)][1], )
                         for k in range(n_obj)])
        visits = np.array([r[0] for r in cur.execute('SELECT ccdVisitId FROM "CcdVisit" ORDER BY ccdVisitId')])
        need = max(target["ForcedSource"] - n["ForcedSource"], 0)
        if need > n_obj * len(visits):
            raise InputError("bench report", "ForcedSource", f"at most {n['ForcedSource'] + n_obj * len(visits)} "
                             f"rows ({n_obj} synthetic Objects x {len(visits)} CcdVisits)", target["ForcedSource"])
        per = int(np.ceil(need / max(n_obj, 1)))
        rows, done = [], 0
        for k in range(n_obj):
            take = min(per, need - done)
            if take <= 0:
                break
            v = np.roll(visits, -k)[:take]
            rows.extend(zip([SYNTHETIC_ID0 + k] * take, v.tolist(), (100.0 + (v % 97)).tolist(),
                            [10.0] * take))
            done += take
            if len(rows) >= batch:
                cur.executemany(INSERT_FORCED, rows)
                rows = []
        cur.executemany(INSERT_FORCED, rows)
        con.commit()
        return {t: cur.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in target}
    finally:
        con.close()


def bench_report(rundir, workdir=None):
    """Time the report (one process, the run's saved validation) on the run's database and on a copy
    grown to Run 1.1's size; returns the lines to print."""
    from twinkles_hpc.report import write_report
    rundir = os.path.abspath(rundir)
    src = os.path.join(rundir, layout.SQLITE)
    if not os.path.isfile(src):
        raise InputError(rundir, layout.SQLITE, "a run directory with its database ([ingest] enabled = true)")
    validation = os.path.join(rundir, layout.VALIDATION)
    if not os.path.isfile(validation):
        raise InputError(rundir, layout.VALIDATION, "a saved `twinkles-hpc validate RUNDIR --json "
                         "RUNDIR/validation.json`")
    work = tempfile.mkdtemp(prefix="twinkles-bench-report-", dir=workdir)
    try:
        big = os.path.join(work, "run1-size.sqlite")
        t_grow = Timer()
        counts = t_grow(grow_database, src, big)
        lines = [f"report bench: {rundir}; Run 1.1-size copy of its database built in {t_grow.best:.0f} s "
                 f"({os.path.getsize(big) / 2 ** 30:.2f} GiB): "
                 + ", ".join(f"{k} {v:,}" for k, v in counts.items())]
        for name, url in (("run's own database", None), ("Run 1.1-size database", "sqlite:///" + big)):
            t_report = Timer()
            summary = t_report(write_report, rundir, os.path.join(work, "report"), url, validation_json=validation,
                               jobs=1)
            pages = sum(1 for f in os.listdir(os.path.join(work, "report", "objects")) if f.endswith(".html"))
            lines.append(f"  {name:<24} report in {t_report.best:6.1f} s ({pages} object pages, one process; "
                         f"steps: " + ", ".join(f"{k} {v:.1f} s" for k, v in summary["seconds"].items()
                                                if k != "total") + ")")
        return lines
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(args):
    """`twinkles-hpc bench report --rundir RUN`: returns the lines to print."""
    if not args.rundir:
        raise SystemExit("twinkles-hpc bench report needs --rundir RUNDIR")
    return bench_report(args.rundir)
