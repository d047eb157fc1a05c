"""The bit-identical guarantee over every Level 2 and difference-imaging product: calexps, coadds, Objects,
ForcedSource, templates, difference images, DiaObjects, DiaForcedSource (and the database when the run
ingests one) are the same at 2 and 3 ranks, and after a rank is SIGKILLed at each stage and the run
resumed."""
import hashlib
import sqlite3

import h5py
import numpy as np
import pytest
from conftest import LEVEL2_TILES_TOML, MPIEXEC, cli

pytestmark = pytest.mark.skipif(MPIEXEC is None, reason="mpiexec not found")

#: run-directory products of Level 2 (HDF5) and the embedded database
PRODUCTS = ("calexp", "coadd", "objects", "forced", "template", "diffim", "associate", "diaforced")


def _bytes(value):
    a = np.asarray(value)
    return repr(a.tolist()).encode() if a.dtype.kind == "O" else a.tobytes()   # no object pointers


#: Datasets that record how a product was computed, not what it is: a coadd's sub-region plan differs when
#: its patch is cut into tiles ([coadd] task_visits).
PLAN_DATASETS = ("subregions",)


def _digest_h5(d, obj):
    """Feed every dataset's values and every attribute of `obj` (recursively, sorted) into `d`, the
    PLAN_DATASETS left out."""
    for k in sorted(obj.attrs):
        d.update(k.encode())
        d.update(_bytes(obj.attrs[k]))
    if isinstance(obj, h5py.Dataset):
        d.update(_bytes(obj[()]))
        return
    for name in sorted(obj):
        if name in PLAN_DATASETS:
            continue
        d.update(name.encode())
        _digest_h5(d, obj[name])


def level2_digests(rundir, products=PRODUCTS):
    """{product file (relative path) or database table: sha256 of its content}."""
    out = {}
    for product in products:
        for path in sorted((rundir / product).rglob("*.h5")):
            d = hashlib.sha256()
            with h5py.File(path, "r", locking=False) as fh:
                _digest_h5(d, fh)
            out[str(path.relative_to(rundir))] = d.hexdigest()
    db = rundir / "level2.sqlite"
    if db.exists():
        with sqlite3.connect(db) as conn:
            tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
            for t in sorted(tables):
                rows = conn.execute(f'SELECT * FROM "{t}"').fetchall()
                out[f"db:{t}"] = hashlib.sha256(repr(sorted(rows, key=repr)).encode()).hexdigest()
    return out


def run_killed_then_resumed(cfg, run, kills):
    """Run `cfg` into `run` under mpiexec -n 2 with a rank SIGKILLed after the first task whose id starts
    with each of `kills` has written its outputs; each rerun resumes. Stages overlap in time, so the kills
    come in the order the tasks run: each run is killed once, until every prefix has had its kill; the
    last run completes."""
    env = {"TWINKLES_HPC_FAULT": "kill_after_task=" + "+".join(kills)}
    for n in range(len(kills)):
        r = cli("run", cfg, "-o", run, mpi=2, env=env, timeout=600)
        killed = {k for k in range(len(kills)) if (run / ".faults" / f"kill_after_task-{k}").exists()}
        assert r.returncode != 0 and len(killed) == n + 1, f"run {n + 1} was not killed once:\n{r.stdout}\n{r.stderr}"
    r = cli("run", cfg, "-o", run, mpi=2, env=env, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "resuming:" in r.stdout


def test_every_level2_product_identical_at_two_and_three_ranks(level2_run, level2_run_n3):
    """-n 2 with one task per coadd and template against -n 3 with each cut into tiles."""
    a, b = level2_digests(level2_run), level2_digests(level2_run_n3)
    assert not list(level2_run_n3.glob("*/*/tiles/*")) and not list(level2_run_n3.glob("*/*/tiles"))
    assert set(a) == set(b)
    assert {k.split("/")[0] for k in a} >= set(PRODUCTS)
    assert [k for k in a if a[k] != b[k]] == []


def test_sigkill_at_every_level2_stage_then_resume_is_bit_identical(level2_run, tmp_path):
    """A rank is SIGKILLed right after the first task of each stage (calexp ... diaforced) has written its
    outputs (the journal has not recorded them), and after the task that assembles a coadd from its tiles
    has removed them; each rerun resumes, the last completes. The coadds and templates are cut into tiles
    here (LEVEL2_TILES_TOML) and the products are the one-task run's."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(LEVEL2_TILES_TOML)
    run = tmp_path / "run"
    stages = ("calexp", "coadd", "objects", "forced", "template", "diffim", "associate", "diaforced")
    run_killed_then_resumed(cfg, run, [s + "/" for s in stages] + ["coadd/g/1-1$"])
    assert not list(run.glob("*/*/tiles/*"))
    want, got = level2_digests(level2_run), level2_digests(run)
    assert set(got) == set(want)
    assert [k for k in want if want[k] != got[k]] == []
