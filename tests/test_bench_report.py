"""bench report's database growth: Run 1.1's totals reached with synthetic rows, the real rows untouched."""
import sqlite3

import numpy as np
import pytest
from conftest import MPIEXEC

from twinkles_hpc.bench.report import SYNTHETIC_ID0, grow_database
from twinkles_hpc.errors import InputError
from twinkles_hpc.store import db

pytestmark = pytest.mark.skipif(MPIEXEC is None, reason="mpiexec not found")
TABLES = ("CcdVisit", "Object", "ForcedSource")


def _counts(path):
    with sqlite3.connect(path) as con:
        return {t: con.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in TABLES}


def test_grow_database_reaches_the_target_and_keeps_real_rows(level2_run, tmp_path):
    src = level2_run / db.SQLITE_NAME
    n = _counts(src)
    target = {"CcdVisit": n["CcdVisit"] + 7, "Object": n["Object"] + 25, "ForcedSource": n["ForcedSource"] + 300}
    with pytest.raises(InputError):         # more rows than 25 new Objects x every visit can hold
        grow_database(src, tmp_path / "big.sqlite", dict(target, ForcedSource=n["ForcedSource"] + 10 ** 6))
    got = grow_database(src, tmp_path / "big.sqlite", target)
    assert got == target
    with sqlite3.connect(tmp_path / "big.sqlite") as con:
        new = con.execute('SELECT min(objectId), count(*) FROM "ForcedSource" WHERE objectId >= ?',
                          (SYNTHETIC_ID0,)).fetchone()
        assert new == (SYNTHETIC_ID0, 300)
        matched = con.execute("SELECT count(*) FROM ObjectTruthMatch WHERE objectId >= ?", (SYNTHETIC_ID0,))
        assert matched.fetchone()[0] == 0
    # a real Object's light curve is the same in both databases
    small, big = db.connect(rundir=level2_run), db.connect("sqlite:///" + str(tmp_path / "big.sqlite"))
    try:
        with sqlite3.connect(src) as con:
            oid = con.execute('SELECT objectId FROM "ForcedSource" GROUP BY objectId '
                              'ORDER BY count(*) DESC').fetchone()[0]
        a, b = db.light_curve(small, oid), db.light_curve(big, oid)
        assert len(a) > 0 and np.array_equal(np.asarray(a["psFlux"]), np.asarray(b["psFlux"]))
    finally:
        small.dispose()
        big.dispose()


def test_grow_database_refuses_an_empty_database(tmp_path):
    engine = db.connect("sqlite:///" + str(tmp_path / "empty.sqlite"))
    db.create_schema(engine)
    engine.dispose()
    with pytest.raises(InputError):
        grow_database(tmp_path / "empty.sqlite", tmp_path / "big.sqlite", {t: 10 for t in TABLES})
