"""End to end: the twinkles-hpc executable, serial and under mpiexec -n 2 / -n 3 (subprocesses with
timeouts, so a hang fails the test instead of CI). Pixels must be bit-identical whatever the number
of ranks and however the run was interrupted (SIGKILL mid-visit, SIGUSR1) and resumed."""
import hashlib
import json
import os

import h5py
import numpy as np
import pytest
from conftest import MPIEXEC, cli

pytestmark = pytest.mark.skipif(MPIEXEC is None, reason="mpiexec not found")


def pixel_digest(rundir):
    """sha256 over every eimage's pixels and metadata, in visit order."""
    d = hashlib.sha256()
    files = sorted(f for f in os.listdir(os.path.join(rundir, "visit")) if f.startswith("v"))
    assert files, f"no eimages in {rundir}"
    for f in files:
        with h5py.File(os.path.join(rundir, "visit", f), "r") as fh:
            d.update(fh["image"][...].tobytes())
            d.update(json.dumps({k: str(v) for k, v in fh.attrs.items()}, sort_keys=True).encode())
    return d.hexdigest(), len(files)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The tiny campaign run on one rank (serial path of the same engine)."""
    from conftest import TINY_TOML
    d = tmp_path_factory.mktemp("ref")
    cfg = d / "tiny.toml"
    cfg.write_text(TINY_TOML)
    run = d / "run"
    r = cli("run", cfg, "-o", run, check=True)
    assert "done in" in r.stdout
    return cfg, run, pixel_digest(run)


def test_serial_run_outputs(reference):
    cfg, run, (digest, n) = reference
    assert n == 12
    st = json.loads(cli("status", run, "--json", check=True).stdout)
    assert st["complete"] and st["n_done"] == 14 and not st["running"] and st["checkpoints"] == []
    with h5py.File(run / "truth.h5", "r") as fh:
        assert len(fh["stars"]) > 0 and len(fh["galaxies"]) > 100 and len(fh["visits"]) == 12
    f = sorted((run / "visit").glob("v*.h5"))[0]
    with h5py.File(f, "r") as fh:
        img, a = fh["image"][...], dict(fh.attrs)
        assert img.shape == (256, 256) and img.dtype == np.float32
        assert abs(np.median(img) - a["sky_e"]) < 5 * np.sqrt(a["sky_e"] + a["read_noise"] ** 2)
        assert "CTYPE1" in a["wcs"] and json.loads(a["psf"])
    # per-band virtual datasets see every visit of the band
    with h5py.File(run / "visit" / f"band-{a['band']}.h5", "r") as fh:
        stack = fh["image"]
        i = list(fh["visit_id"][...]).index(a["visit_id"])
        assert np.array_equal(stack[i], img)
    trace = [json.loads(x) for x in (run / "trace.jsonl").read_text().splitlines()]
    assert {r["kind"] for r in trace} == {"sky", "variables", "visit"}
    assert all(r["bytes"] > 0 and r["peak_rss_mb"] > 0 for r in trace)


@pytest.mark.parametrize("n", [2, 3])
def test_rank_count_invariance(reference, tmp_path, n):
    cfg, _, (digest, _) = reference
    r = cli("run", cfg, "-o", tmp_path / "run", mpi=n, timeout=600, check=True)
    assert f"{n} rank(s)" in r.stdout
    assert pixel_digest(tmp_path / "run")[0] == digest
    trace = [json.loads(x) for x in (tmp_path / "run" / "trace.jsonl").read_text().splitlines()]
    assert {t["rank"] for t in trace} <= set(range(1, n)), "rank 0 must only schedule"


def test_sigkill_mid_visit_then_resume_is_bit_identical(reference, tmp_path):
    cfg, _, (digest, _) = reference
    run = tmp_path / "run"
    r = cli("run", cfg, "-o", run, mpi=2, env={"TWINKLES_HPC_FAULT": "kill_after_chunk=2"}, timeout=600)
    assert r.returncode != 0, r.stdout
    ckpts = list((run / "checkpoints").glob("v*.h5"))
    assert ckpts, "the killed visit left no mid-visit checkpoint"
    r = cli("run", cfg, "-o", run, mpi=2, timeout=600, check=True)
    assert "resuming at chunk 2" in r.stdout and "resuming:" in r.stdout
    assert pixel_digest(run)[0] == digest
    assert not (run / "checkpoints").exists() or not list((run / "checkpoints").glob("v*.h5"))


@pytest.mark.parametrize("n", [1, 3])
def test_sigusr1_checkpoints_exits_75_and_resumes(reference, tmp_path, n):
    cfg, _, (digest, _) = reference
    run = tmp_path / "run"
    r = cli("run", cfg, "-o", run, mpi=n if n > 1 else 0, env={"TWINKLES_HPC_FAULT": "usr1_after_chunk=1"})
    assert r.returncode == 75, r.stdout + r.stderr
    assert "Resubmit" in r.stdout
    st = json.loads(cli("status", run, "--json", check=True).stdout)
    assert not st["complete"] and st["checkpoints"] and st["last_status"] == "interrupted"
    r = cli("run", cfg, "-o", run, mpi=n if n > 1 else 0, check=True)
    assert pixel_digest(run)[0] == digest


def test_failure_on_a_rank_ends_job_with_rank_task_and_message(reference, tmp_path):
    cfg, _, _ = reference
    r = cli("run", cfg, "-o", tmp_path / "run", mpi=3, timeout=300,
            env={"TWINKLES_HPC_FAULT": "raise_in_task=sky"})
    assert r.returncode not in (0, 2, 75)
    assert "failed in task sky: RuntimeError: injected fault" in r.stderr
    assert "injected fault" in (tmp_path / "run" / "failures.log").read_text()


def snapshot(d):
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(d.rglob("*"))}


def test_bad_input_exit_2_one_line_and_rundir_untouched(reference, tmp_path):
    cfg, run, _ = reference
    before = snapshot(run)
    bad = tmp_path / "bad.toml"
    bad.write_text(cfg.read_text().replace("max_visits = 12", "max_visits = -1"))
    for n in (0, 2):
        r = cli("run", bad, "-o", run, mpi=n, timeout=120)
        assert r.returncode == 2
        lines = [x for x in r.stderr.splitlines() if x.strip()]
        assert len(lines) == 1 and str(bad) in lines[0] and "cadence.max_visits" in lines[0], r.stderr
    # a valid config that differs from the one the directory was made with
    other = tmp_path / "other.toml"
    other.write_text(cfg.read_text().replace("seed = 7", "seed = 8"))
    r = cli("run", other, "-o", run, timeout=120)
    assert r.returncode == 2 and "run.seed" in r.stderr and "different config" in r.stderr
    assert snapshot(run) == before


def test_second_run_on_same_directory_is_refused(reference, tmp_path):
    from twinkles_hpc.parallel.lock import RunLock
    cfg, run, _ = reference
    lock = RunLock(str(run)).acquire()
    try:
        r = cli("run", cfg, "-o", run, timeout=120)
        assert r.returncode == 2 and "in use by another run" in r.stderr
    finally:
        lock.release()


def test_empty_selection_is_bad_input(tmp_path, tiny_config):
    text = tiny_config.read_text().replace("[cadence]", "[cadence]\nmjd_min = 90000.0")
    tiny_config.write_text(text)
    r = cli("run", tiny_config, "-o", tmp_path / "run", timeout=120)
    assert r.returncode == 2 and "no visits" in r.stderr and not (tmp_path / "run").exists()


def test_a_set_up_cut_short_is_completed_by_the_rerun(tmp_path, tiny_config):
    """A kill between the run lock and config.json (written last) leaves the lock file, empty folders, a
    cadence that may be another config's and partial files: the rerun accepts the directory and does the
    set-up again without reading them. A directory holding anything else is refused, untouched."""
    run = tmp_path / "run"
    (run / "visit").mkdir(parents=True)
    (run / ".lock").write_text("")
    (run / "visits.h5").write_bytes(b"not the cadence of this config")
    (run / "config.toml").write_text("[run]\n")
    (run / "config.json.tmp-4242").write_bytes(b"{")
    r = cli("run", tiny_config, "-o", run, timeout=300)
    assert r.returncode == 0, r.stderr
    assert json.loads((run / "config.json").read_text())["run"]["seed"] == 7
    assert (run / "config.toml").read_text() == tiny_config.read_text()
    with h5py.File(run / "visits.h5", "r") as fh:
        assert len(fh["visits"]) == 12
    other = tmp_path / "other"
    (other / "visit").mkdir(parents=True)
    (other / "notes.txt").write_text("mine")
    r = cli("run", tiny_config, "-o", other, timeout=120)
    assert r.returncode == 2 and "is not a twinkles-hpc run" in r.stderr
    assert sorted(os.listdir(other)) == ["notes.txt", "visit"]


def test_verify_redoes_an_output_damaged_in_place(tmp_path, tiny_config):
    """A byte changed in a visit's eimage, its size unchanged: a plain rerun cannot see it, `--verify`
    redoes that task, bit-identical to the original."""
    run = tmp_path / "run"
    assert cli("run", tiny_config, "-o", run, timeout=300).returncode == 0
    path = sorted((run / "visit").glob("v*.h5"))[1]
    good = path.read_bytes()
    bad = bytearray(good)
    bad[len(bad) // 2] ^= 0xFF
    path.write_bytes(bytes(bad))
    r = cli("run", tiny_config, "-o", run, timeout=300)
    assert r.returncode == 0 and "0 to run" in r.stdout and path.read_bytes() != good
    r = cli("run", tiny_config, "-o", run, "--verify", timeout=300)
    assert r.returncode == 0 and f"{path.relative_to(run)} (task" in r.stdout and "1 to run" in r.stdout, r.stdout
    assert path.read_bytes() == good


@pytest.mark.parametrize("n", [0, 2])
def test_a_signal_during_the_set_up_stops_the_run_before_any_task(tmp_path, tiny_config, n):
    """SIGTERM while rank 0 plans the graph: the handlers are already installed, so the run stops before
    its first task and exits 75 (resubmit), not 15."""
    run = tmp_path / "run"
    r = cli("run", tiny_config, "-o", run, mpi=n, timeout=300, env={"TWINKLES_HPC_FAULT": "term_in_setup=1"})
    assert r.returncode == 75, (r.returncode, r.stderr)
    events = [json.loads(x) for x in (run / "journal.jsonl").read_text().splitlines()]
    assert not [e for e in events if e["event"] == "done"] and events[-1]["status"] == "interrupted"


def test_sigterm_to_mpiexec_checkpoints_and_resumes(reference, tmp_path):
    """SIGTERM delivered to mpiexec (forwarded to every rank, as srun does) mid-run: exit 75, resume."""
    import signal
    import subprocess
    import sys
    import time
    from conftest import ROOT
    cfg, _, (digest, _) = reference
    slow = tmp_path / "slow.toml"                  # same outputs, a checkpoint after every object
    slow.write_text(cfg.read_text().replace("chunk_objects = 16", "chunk_objects = 1"))
    run = tmp_path / "run"
    p = subprocess.Popen([MPIEXEC, "-n", "3", sys.executable, "-m", "twinkles_hpc", "run", str(slow),
                          "-o", str(run)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        journal = run / "journal.jsonl"
        while time.time() < deadline and p.poll() is None:
            if journal.exists() and '"task": "visit/' in journal.read_text():
                break
            time.sleep(0.05)
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=120)
    finally:
        p.kill()
    assert p.returncode == 75, out + err
    st = json.loads(cli("status", run, "--json", check=True).stdout)
    assert st["last_status"] == "interrupted" and not st["complete"]
    cli("run", slow, "-o", run, mpi=2, check=True)
    assert pixel_digest(run)[0] == digest
