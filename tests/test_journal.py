"""The journal's group commit across a crash: committed lines survive a SIGKILL in order, staged ones are lost
(their tasks are redone), a torn tail is ignored and the next commit starts a line of its own, and a journal
written one fsync a line (before group commit) still reads."""
import json
import subprocess
import sys
import textwrap

from twinkles_hpc.parallel.journal import Journal

KILLED_WHILE_STAGING = textwrap.dedent("""
    import os, signal, sys
    from twinkles_hpc.parallel.journal import Journal
    j = Journal(sys.argv[1])
    for group in (range(0, 5), range(5, 12)):
        for i in group:
            j.stage("done", task=f"t{i:02d}", outputs={})
        j.commit()
    for i in range(12, 20):
        j.stage("done", task=f"t{i:02d}", outputs={})    # staged, never committed
    os.kill(os.getpid(), signal.SIGKILL)
""")


def done_ids(rundir):
    return [e["task"] for e in Journal(str(rundir)).events() if e["event"] == "done"]


def test_committed_groups_survive_a_kill_in_order_and_staged_lines_do_not(tmp_path):
    r = subprocess.run([sys.executable, "-c", KILLED_WHILE_STAGING, str(tmp_path)])
    assert r.returncode == -9
    assert done_ids(tmp_path) == [f"t{i:02d}" for i in range(12)]
    done, lost = Journal(str(tmp_path)).completed()
    assert sorted(done) == [f"t{i:02d}" for i in range(12)] and lost == []


def test_torn_tail_is_ignored_and_the_next_commit_starts_a_new_line(tmp_path):
    j = Journal(str(tmp_path))
    for i in range(3):
        j.stage("done", task=f"a{i}", outputs={})
    assert j.staged == 3 and not (tmp_path / "journal.jsonl").exists()
    assert j.commit() == 3 and j.commits == 1 and j.lines == 3 and j.staged == 0
    with open(j.path, "a") as fh:
        fh.write('{"event": "done", "task": "torn", "outp')        # killed mid-write
    assert done_ids(tmp_path) == ["a0", "a1", "a2"]
    resumed = Journal(str(tmp_path))                                # the next run
    resumed.append("start", ranks=3, pending=2)
    resumed.stage("done", task="b0", outputs={})
    resumed.stage("done", task="b1", outputs={})
    resumed.commit()
    assert done_ids(tmp_path) == ["a0", "a1", "a2", "b0", "b1"]
    assert [e["event"] for e in resumed.events()] == ["done"] * 3 + ["start", "done", "done"]


def test_a_journal_written_one_line_at_a_time_still_reads(tmp_path):
    (tmp_path / "a.h5").write_bytes(b"x" * 4)
    old = [{"event": "start", "pending": 1, "ranks": 2, "time": 1.0},
           {"checksums": {"a.h5": "crc32:00000000"}, "event": "done", "outputs": {"a.h5": 4}, "task": "a",
            "time": 2.0},
           {"event": "end", "rank0_cpu_s": 0.1, "status": "complete", "time": 3.0, "wall_s": 2.0}]
    (tmp_path / "journal.jsonl").write_text("".join(json.dumps(e, sort_keys=True) + "\n" for e in old))
    j = Journal(str(tmp_path))
    assert j.completed() == ({"a": {"a.h5": 4}}, [])
    j.append("start", ranks=2, pending=0)
    assert [e["event"] for e in j.events()] == ["start", "done", "end", "start"]


def test_an_output_rewritten_by_a_later_task(tmp_path):
    """A path named by two tasks is judged by the later record (an eimage whose pixels its calexp task
    dropped); when the later task is lost or the path damaged, the first task is redone with it."""
    from twinkles_hpc.parallel.journal import file_checksums
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "e.h5").write_bytes(b"x" * 100)
    j = Journal(str(tmp_path))
    j.append("done", task="visit/1", outputs={"v/e.h5": 100}, checksums=file_checksums(str(tmp_path), {"v/e.h5": 100}))
    (tmp_path / "v" / "c.h5").write_bytes(b"c" * 50)
    (tmp_path / "v" / "e.h5").write_bytes(b"y" * 10)                     # the calexp task rewrote it
    j.append("done", task="calexp/1", outputs={"v/c.h5": 50, "v/e.h5": 10},
             checksums=file_checksums(str(tmp_path), {"v/c.h5": 50, "v/e.h5": 10}))
    j = Journal(str(tmp_path))
    done, lost = j.completed()
    assert sorted(done) == ["calexp/1", "visit/1"] and lost == []
    assert j.damaged(done) == []
    (tmp_path / "v" / "e.h5").write_bytes(b"z" * 10)                     # same size, other bytes
    assert sorted(Journal(str(tmp_path)).damaged(done)) == [("calexp/1", "v/e.h5"), ("visit/1", "v/e.h5")]
    (tmp_path / "v" / "c.h5").unlink()                                   # the calexp is lost: both are redone
    done, lost = Journal(str(tmp_path)).completed()
    assert done == {} and sorted(lost) == ["calexp/1", "visit/1"]


def test_an_intermediate_removed_by_a_later_task(tmp_path):
    """A tile file its assembling task removed (recorded with the size REMOVED) counts as done while it
    is absent; when the assembled file is lost, the tile's task is redone with the assembly."""
    from twinkles_hpc.parallel.journal import REMOVED, file_checksums
    (tmp_path / "s.h5").write_bytes(b"s" * 30)
    j = Journal(str(tmp_path))
    j.append("done", task="coadd/p/s0", outputs={"s.h5": 30}, checksums=file_checksums(str(tmp_path), {"s.h5": 30}))
    (tmp_path / "c.h5").write_bytes(b"c" * 40)
    (tmp_path / "s.h5").unlink()
    outputs = {"c.h5": 40, "s.h5": REMOVED}
    assert list(file_checksums(str(tmp_path), outputs)) == ["c.h5"]
    j.append("done", task="coadd/p", outputs=outputs, checksums=file_checksums(str(tmp_path), outputs))
    done, lost = Journal(str(tmp_path)).completed()
    assert sorted(done) == ["coadd/p", "coadd/p/s0"] and lost == []
    assert Journal(str(tmp_path)).damaged(done) == []
    (tmp_path / "s.h5").write_bytes(b"s" * 30)           # a tile where the record says none: redo both
    assert sorted(Journal(str(tmp_path)).completed()[1]) == ["coadd/p", "coadd/p/s0"]
    (tmp_path / "s.h5").unlink()
    (tmp_path / "c.h5").unlink()                         # the assembled file is lost: both are redone
    done, lost = Journal(str(tmp_path)).completed()
    assert done == {} and sorted(lost) == ["coadd/p", "coadd/p/s0"]
