"""The Perlmutter batch scripts (jobs/perlmutter-*.sh) with srun, sbatch and shifter replaced by stubs that
record their arguments: the ranks follow the nodes, exit code 75 resubmits, and a run with --defer submits
the deferred stages as a job of its own once the processing is complete."""
import os
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_script(tmp_path, srun_rc, **env):
    bin_ = tmp_path / "bin"
    bin_.mkdir(exist_ok=True)
    log = tmp_path / "calls.log"
    for name, rc in (("srun", srun_rc), ("sbatch", 0), ("shifter", 0)):
        (bin_ / name).write_text(f'#!/bin/bash\necho "{name} $*" >> {log}\nexit {rc}\n')
        (bin_ / name).chmod(0o755)
    e = {"PATH": f"{bin_}:/usr/bin:/bin", "HOME": str(tmp_path), "SCRATCH": str(tmp_path),
         "SLURM_SUBMIT_DIR": ROOT, "TWINKLES_RUNNER": "shifter", **env}
    r = subprocess.run(["bash", os.path.join(ROOT, "jobs", "perlmutter-cpu.sh")], env=e, capture_output=True,
                       text=True, timeout=30, cwd=ROOT)
    return r, log.read_text().splitlines()


@pytest.mark.parametrize("nodes, ranks, want", [("8", None, "-n 1024 "), ("1", "2", "-n 2 ")])
def test_ranks_follow_the_nodes(tmp_path, nodes, ranks, want):
    r, calls = run_script(tmp_path, 0, SLURM_NNODES=nodes, **({"RANKS": ranks} if ranks else {}))
    assert r.returncode == 0, r.stderr
    assert calls[0].startswith(f"srun {want}") and "twinkles-hpc run jobs/run1.toml -o" in calls[0]
    assert not any(c.startswith("sbatch") for c in calls)


def test_checkpoint_resubmits_and_deferred_stages_follow_completion(tmp_path):
    r, calls = run_script(tmp_path, 75, SLURM_NNODES="2")
    assert r.returncode == 75 and any(c.startswith("sbatch --export=ALL,RESUBMIT_COUNT") for c in calls)
    (tmp_path / "deferred").mkdir()
    r, calls = run_script(tmp_path / "deferred", 0, SLURM_NNODES="8", RUN_ARGS="--defer ingest", DEFERRED_NODES="1")
    assert r.returncode == 0, r.stderr
    run = next(c for c in calls[::-1] if c.startswith("srun"))
    assert run.endswith("--defer ingest")
    assert calls[-2] == "sbatch -N 1 --export=ALL,RUN_ARGS=,RESUBMIT_COUNT=0,RANKS=2 jobs/perlmutter-cpu.sh"


def test_cores_per_rank_gives_fewer_ranks_their_cores_and_threads(tmp_path):
    r, calls = run_script(tmp_path, 0, SLURM_NNODES="8", CORES_PER_RANK="4")
    assert r.returncode == 0, r.stderr
    assert calls[0].startswith("srun -n 256 -c 8 --cpu-bind=cores") and calls[0].endswith("--threads 4")
