"""The run engine on one rank (MPI.COMM_SELF): scheduling order, journal, lock, signals, failures."""
import json
import os
import signal
import time

import pytest
from mpi4py import MPI

from twinkles_hpc import steptimer
from twinkles_hpc.errors import Interrupted, RunDirError
from twinkles_hpc.parallel.engine import Engine, Scheduler, Task
from twinkles_hpc.parallel.journal import Journal, file_checksums
from twinkles_hpc.parallel.lock import RunLock


def graph():
    return [Task("sky", "sky", 1.0), *[Task(f"v{i}", "visit", float(c), deps=("sky",))
                                       for i, c in enumerate([3, 9, 1, 5])]]


def test_scheduler_longest_first_after_dependencies():
    s = Scheduler(graph(), done_ids=[], order="longest")
    assert [t.id for t in [s.pop()]] == ["sky"] and not s.ready
    s.complete("sky")
    order = []
    while s.ready:
        t = s.pop()
        order.append(t.id)
        s.complete(t.id)
    assert order == ["v1", "v3", "v0", "v2"]        # costs 9, 5, 3, 1
    assert not s.pending


def test_scheduler_critical_path_first():
    """The default order: the ready task with the most predicted work waiting behind it, its own cost
    included (chain_costs), goes first; here a cheap visit whose calexp is the costliest task."""
    tasks = graph() + [Task("c2", "calexp", 20.0, deps=("v2",))]
    from twinkles_hpc.parallel.engine import chain_costs
    assert chain_costs(tasks) == {"sky": 22.0, "v0": 3.0, "v1": 9.0, "v2": 21.0, "v3": 5.0, "c2": 20.0}
    s = Scheduler(tasks, done_ids=["sky"])
    order = []
    while s.ready:
        t = s.pop()
        order.append(t.id)
        s.complete(t.id)
    assert order == ["v2", "c2", "v1", "v3", "v0"]
    with pytest.raises(ValueError, match="order"):
        Scheduler(tasks, [], order="fifo")


def test_scheduler_skips_done_tasks():
    s = Scheduler(graph(), done_ids=["sky", "v1", "unknown"])
    assert sorted(s.pending) == ["v0", "v2", "v3"] and len(s.ready) == 3


def test_journal_ignores_torn_line_and_checks_outputs(tmp_path):
    j = Journal(str(tmp_path))
    (tmp_path / "a.h5").write_bytes(b"x" * 10)
    (tmp_path / "b.h5").write_bytes(b"x" * 10)
    j.append("done", task="a", outputs={"a.h5": 10})
    j.append("done", task="b", outputs={"b.h5": 10})
    with open(j.path, "a") as fh:
        fh.write('{"event": "done", "task": "c", "outp')      # a crash mid-append
    (tmp_path / "b.h5").write_bytes(b"x" * 5)                  # truncated output
    done, lost = j.completed()
    assert list(done) == ["a"] and lost == ["b"]


def test_journal_checksums_find_same_size_damage(tmp_path):
    """A size check cannot see bytes changed in place; the recorded CRC-32 can."""
    j = Journal(str(tmp_path))
    for name in ("a.h5", "b.h5"):
        (tmp_path / name).write_bytes(bytes(range(200)))
        j.append("done", task=name[0], outputs={name: 200}, checksums=file_checksums(str(tmp_path), {name: 200}))
    (tmp_path / "b.h5").write_bytes(bytes(range(199)) + b"\x00")       # same size, one byte changed
    done, lost = j.completed()
    assert sorted(done) == ["a", "b"] and lost == []
    assert j.damaged(done) == [("b", "b.h5")]


def test_downstream_of_damaged_tasks():
    from twinkles_hpc.pipeline.stage import downstream
    ts = graph()
    assert downstream(ts, ["sky"]) == {t.id for t in ts}
    assert downstream(ts, ["v1"]) == {"v1"} and downstream(ts, []) == set()


def test_lock_refuses_second_holder(tmp_path):
    a = RunLock(str(tmp_path)).acquire()
    with pytest.raises(RunDirError, match=f"pid {os.getpid()}"):
        RunLock(str(tmp_path)).acquire()
    assert RunLock.is_locked(str(tmp_path))
    a.release()
    RunLock(str(tmp_path)).acquire().release()


def run_engine(tmp_path, execute, done=()):
    e = Engine(MPI.COMM_SELF, str(tmp_path), execute, Journal(str(tmp_path)), progress_interval=0)
    return e.run(graph(), list(done))


def test_serial_engine_runs_all_in_order_and_traces(tmp_path):
    ran = []

    def execute(task, should_stop):
        ran.append(task.id)
        if task.kind == "visit":                # a task whose code times its steps
            with steptimer.step("spin"):
                t0 = time.process_time()
                while time.process_time() - t0 < 0.02:
                    pass
        p = tmp_path / f"{task.id}.out"
        p.write_bytes(b"0" * 7)
        return {p.name: 7}

    assert run_engine(tmp_path, execute) == "complete"
    assert ran == ["sky", "v1", "v3", "v0", "v2"]
    trace = [json.loads(x) for x in (tmp_path / "trace.jsonl").read_text().splitlines()]
    assert [r["task"] for r in trace] == ran
    assert all(r["bytes"] == 7 and r["peak_rss_mb"] > 0 and r["end"] >= r["start"] for r in trace)
    # CPU seconds of every task; the steps of those that time them, within the task's own
    assert "steps" not in trace[0] and trace[0]["cpu"] < 0.02
    for r in trace[1:]:
        wall, cpu = r["steps"]["spin"]
        assert 0.02 <= cpu <= r["cpu"] and wall <= r["end"] - r["start"] + 1e-3
    # a rerun resumes: nothing left to do
    done, _ = Journal(str(tmp_path)).completed()
    ran.clear()
    assert run_engine(tmp_path, execute, done) == "complete" and ran == []


def test_signal_checkpoints_and_reports_interrupted(tmp_path):
    def execute(task, should_stop):
        if task.id == "v3":
            os.kill(os.getpid(), signal.SIGUSR1)
            assert should_stop()
            raise Interrupted("checkpointed")
        return {}

    assert run_engine(tmp_path, execute) == "interrupted"
    events = Journal(str(tmp_path)).events()
    assert any(e["event"] == "checkpointed" and e["task"] == "v3" for e in events)
    done, _ = Journal(str(tmp_path)).completed()
    assert sorted(done) == ["sky", "v1"]
    signal.signal(signal.SIGUSR1, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def test_task_failure_is_reported_with_task_and_message(tmp_path, capsys):
    def execute(task, should_stop):
        if task.id == "v1":
            raise ValueError("bad pixel")
        return {}

    with pytest.raises(SystemExit):
        run_engine(tmp_path, execute)
    err = capsys.readouterr().err
    assert "rank 0 failed in task v1: ValueError: bad pixel" in err
    assert "bad pixel" in (tmp_path / "failures.log").read_text()


def test_task_failure_is_reported_when_failures_log_cannot_be_written(tmp_path, capsys, monkeypatch):
    """A full disk (or a read-only run directory) must not hide the failure behind a second error."""
    import builtins
    real_open = builtins.open

    def no_space(path, *a, **kw):
        if str(path).endswith("failures.log"):
            raise OSError(28, "No space left on device")
        return real_open(path, *a, **kw)

    def execute(task, should_stop):
        if task.id == "v1":
            raise ValueError("bad pixel")
        return {}

    monkeypatch.setattr(builtins, "open", no_space)
    with pytest.raises(SystemExit):
        run_engine(tmp_path, execute)
    err = capsys.readouterr().err
    assert "rank 0 failed in task v1: ValueError: bad pixel (failures.log not written: No space left on device)" in err
    assert "Traceback" in err and not (tmp_path / "failures.log").exists()
