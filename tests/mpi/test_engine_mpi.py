"""The scheduler and workers over COMM_WORLD: every task exactly once, same outputs at any rank count."""
import hashlib
import json
import os

from conftest import all_ranks

from twinkles_hpc.errors import Interrupted
from twinkles_hpc.parallel.engine import Engine, Task
from twinkles_hpc.parallel.journal import Journal


def tasks():
    ts = [Task("sky", "sky", 5.0)]
    ts += [Task(f"visit/{i:04d}", "visit", float(1 + (i * 7) % 5), deps=("sky",)) for i in range(23)]
    return ts


def make_execute(d, stop_at=None):
    def execute(task, should_stop):
        # output depends only on the task, never on the rank: rank-count invariance
        data = hashlib.sha256(task.id.encode()).hexdigest().encode() * 10
        if task.id == stop_at:
            raise Interrupted("checkpointed")
        p = os.path.join(d, task.id.replace("/", "_"))
        with open(p, "wb") as fh:
            fh.write(data)
        return {os.path.basename(p): len(data)}
    return execute


def test_every_task_once_and_rank_invariant_outputs(comm, shared_dir):
    engine = Engine(comm, shared_dir, make_execute(shared_dir), Journal(shared_dir), progress_interval=0)
    status = engine.run(tasks(), [])
    ok, msg = status == "complete", f"status {status}"
    if comm.rank == 0 and ok:
        done = [e["task"] for e in Journal(shared_dir).events() if e["event"] == "done"]
        trace = [json.loads(x) for x in open(os.path.join(shared_dir, "trace.jsonl"))]
        ranks = {r["rank"] for r in trace}
        ok = sorted(done) == sorted(t.id for t in tasks()) and len(done) == len(set(done))
        ok = ok and done[0] == "sky" and 0 not in ranks and ranks <= set(range(1, comm.size))
        msg = f"done {len(done)} tasks, ranks {sorted(ranks)}"
        digest = hashlib.sha256()
        for t in sorted(tasks(), key=lambda t: t.id):
            with open(os.path.join(shared_dir, t.id.replace("/", "_")), "rb") as fh:
                digest.update(fh.read())
        expected = hashlib.sha256()
        for t in sorted(tasks(), key=lambda t: t.id):
            expected.update(hashlib.sha256(t.id.encode()).hexdigest().encode() * 10)
        ok = ok and digest.hexdigest() == expected.hexdigest()
    all_ranks(comm, ok, msg)


def test_worker_checkpoint_drains_job_and_resume_finishes(comm, shared_dir):
    j = Journal(shared_dir)
    status = Engine(comm, shared_dir, make_execute(shared_dir, stop_at="visit/0003"), j,
                    progress_interval=0).run(tasks(), [])
    all_ranks(comm, status == "interrupted", f"first run status {status}")
    done = comm.bcast(sorted(j.completed()[0]) if comm.rank == 0 else None, root=0)
    all_ranks(comm, "visit/0003" not in done and len(done) < len(tasks()), f"done after stop: {done}")
    status = Engine(comm, shared_dir, make_execute(shared_dir), j, progress_interval=0).run(tasks(), done)
    final = comm.bcast(sorted(j.completed()[0]) if comm.rank == 0 else None, root=0)
    all_ranks(comm, status == "complete" and final == sorted(t.id for t in tasks()),
              f"resume status {status}, {len(final)} done")


def test_rerun_of_a_finished_graph_leaves_no_message_unmatched(comm, shared_dir):
    """A rerun with every task done: the engine returns 'complete' on every rank and no message is left in
    flight (a worker's first request unreceived made MPICH report an unmatched message at MPI_Finalize and
    the job exit 9 or hang). Forty reruns, each checked on every rank."""
    from mpi4py import MPI
    done = [t.id for t in tasks()]
    ok, msg = True, ""
    for k in range(40):
        engine = Engine(comm, shared_dir, make_execute(shared_dir), Journal(shared_dir), progress_interval=0)
        status = engine.run(tasks(), done)
        comm.Barrier()
        left = comm.Iprobe(source=MPI.ANY_SOURCE, tag=MPI.ANY_TAG)
        if status != "complete" or left:
            ok, msg = False, f"rerun {k}: status {status}, message left: {left}"
            break
    all_ranks(comm, ok, msg)


def test_a_signal_to_one_worker_stops_the_whole_job(comm, shared_dir):
    """SIGUSR1 to one worker only, inside a task that never looks at should_stop: the task finishes, the
    worker reports the signal, the job drains and every rank returns 'interrupted'; the resume finishes."""
    import signal
    j = Journal(shared_dir)
    inner = make_execute(shared_dir)

    def execute(task, should_stop):
        if task.id == "visit/0002":
            os.kill(os.getpid(), signal.SIGUSR1)
        return inner(task, should_stop)

    status = Engine(comm, shared_dir, execute, j, progress_interval=0).run(tasks(), [])
    done = comm.bcast(sorted(j.completed()[0]) if comm.rank == 0 else None, root=0)
    all_ranks(comm, status == "interrupted" and "visit/0002" in done and len(done) < len(tasks()),
              f"status {status}, {len(done)} done")
    status = Engine(comm, shared_dir, make_execute(shared_dir), j, progress_interval=0).run(tasks(), done)
    final = comm.bcast(sorted(j.completed()[0]) if comm.rank == 0 else None, root=0)
    all_ranks(comm, status == "complete" and final == sorted(t.id for t in tasks()), f"resume {status}")


def test_a_signal_before_the_run_on_a_worker_stops_it_before_any_task(comm, shared_dir):
    """A worker signalled during the set-up (its flag set before run): no task runs to completion on it,
    every rank returns 'interrupted', and nothing is left unmatched."""
    from mpi4py import MPI

    from twinkles_hpc.parallel.engine import StopFlag
    stop = StopFlag().install()
    if comm.rank == comm.size - 1:
        stop.signum = 10
    j = Journal(shared_dir)
    status = Engine(comm, shared_dir, make_execute(shared_dir), j, progress_interval=0, stop=stop).run(tasks(), [])
    comm.Barrier()
    left = comm.Iprobe(source=MPI.ANY_SOURCE, tag=MPI.ANY_TAG)
    trace = os.path.join(shared_dir, "trace.jsonl")
    ranks = comm.bcast({json.loads(x)["rank"] for x in open(trace)} if comm.rank == 0 and os.path.exists(trace)
                       else set(), root=0)
    all_ranks(comm, status == "interrupted" and not left and comm.size - 1 not in ranks,
              f"status {status}, left {left}, ranks that ran tasks {sorted(ranks)}")
