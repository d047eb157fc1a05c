"""Rank 0 at scale, in one process: the real scheduler loop, journal and trace against simulated workers
(twinkles_hpc.parallel.synthetic). Its cost per completion does not grow with the number of workers or of
tasks, completions share fsyncs, and a task is handed out only once its dependencies' done lines are durable."""
from twinkles_hpc.parallel.engine import TAG_TASK
from twinkles_hpc.parallel.journal import Journal
from twinkles_hpc.parallel.synthetic import SimulatedWorkers, run_simulated


def cpu_per_task(tmp_path, name, workers, n_tasks, repeat=3):
    """Rank 0's CPU seconds per completion (the best of `repeat` runs) and the last run's figures."""
    runs = [run_simulated(str(tmp_path / f"{name}-{k}"), workers, n_tasks, 0.0) for k in range(repeat)]
    return min(r["rank0_cpu_s"] for r in runs) / n_tasks, runs[-1]


def test_cost_per_completion_does_not_grow_with_workers(tmp_path):
    cost = {w: cpu_per_task(tmp_path, f"w{w}", w, 8192) for w in (16, 256, 2048)}
    assert cost[2048][0] <= 2 * cost[16][0] and cost[256][0] <= 2 * cost[16][0], cost
    for _, stats in cost.values():
        assert stats["tasks"] == 8192 and stats["commits"] < stats["tasks"] / 10, stats
    assert cost[2048][0] < 500e-6, "rank 0 alone would sustain fewer than 2000 completions/s"


def test_cost_per_completion_does_not_grow_with_tasks(tmp_path):
    few, _ = cpu_per_task(tmp_path, "few", 256, 4096)
    many, _ = cpu_per_task(tmp_path, "many", 256, 32768)
    assert many <= 2 * few, (few, many)


class CheckedWorkers(SimulatedWorkers):
    """Simulated workers that check, on each task they are sent, that the done line of every task it
    depends on is already in the journal file."""

    def __init__(self, size, journal_path):
        super().__init__(size)
        self.journal_path, self.late = journal_path, []

    def send(self, obj, dest, tag=0):
        if tag == TAG_TASK and obj.deps:
            with open(self.journal_path) as fh:
                on_disk = fh.read()
            self.late += [d for d in obj.deps if f'"task": "{d}"' not in on_disk]
        super().send(obj, dest, tag)


def test_a_task_is_handed_out_only_after_its_parents_done_line_is_durable(tmp_path):
    comm = CheckedWorkers(17, str(tmp_path / "journal.jsonl"))
    stats = run_simulated(str(tmp_path), 16, 600, 0.0, pairs=True, comm=comm)
    assert comm.late == []
    done = [e["task"] for e in Journal(str(tmp_path)).events() if e["event"] == "done"]
    assert sorted(done) == [f"synthetic/{i:08d}" for i in range(600)]
    position = {t: k for k, t in enumerate(done)}
    assert all(position[f"synthetic/{i - 1:08d}"] < position[f"synthetic/{i:08d}"] for i in range(1, 600, 2))
    assert stats["commits"] < 600
