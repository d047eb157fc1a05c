"""Fault injection for the restart tests, off unless TWINKLES_HPC_FAULT is set.

TWINKLES_HPC_FAULT is a comma-separated list of NAME=VALUE:
  kill_after_chunk=K   SIGKILL the rank right after the mid-visit checkpoint that follows chunk K
                       (once per run directory: a marker file in checkpoints/ remembers it)
  usr1_after_chunk=K   send SIGUSR1 to the rank itself after chunk K, as Slurm does before the limit
  raise_in_task=ID     raise RuntimeError in task ID (e.g. visit/00000230)
  kill_after_task=P    SIGKILL the rank once the first task whose id starts with P has written its
                       outputs but before the journal records it (once per run directory and prefix:
                       a marker file in the run directory remembers it); several prefixes separated
                       by '+' kill once each, in successive runs
  kill_in_ingest=T[:K] SIGKILL the process right after the K-th (default 1st) batch of rows sent to
                       database table T by the ingest stage, inside its open transaction (once per run
                       directory: a marker file .fault-killed-ingest remembers it)
"""
import os
import signal


def fault(name):
    for item in os.environ.get("TWINKLES_HPC_FAULT", "").split(","):
        key, _, value = item.partition("=")
        if key.strip() == name:
            return value.strip()
    return None


def int_fault(name):
    v = fault(name)
    return int(v) if v not in (None, "") else None


def kill_after_task(rundir, task_id):
    """The kill_after_task fault: SIGKILL this process if `task_id` matches a prefix not yet used."""
    spec = fault("kill_after_task")
    if not spec:
        return
    for k, prefix in enumerate(spec.split("+")):
        marker = os.path.join(rundir, f".fault-killed-{k}")
        if task_id.startswith(prefix) and not os.path.exists(marker):
            open(marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)


def ingest_batch_hook(rundir):
    """The kill_in_ingest fault as an `on_batch(table, n_rows)` callback for store.db.ingest, or None."""
    spec = fault("kill_in_ingest")
    marker = os.path.join(rundir, ".fault-killed-ingest")
    if not spec or os.path.exists(marker):
        return None
    table, _, k = spec.partition(":")
    k, seen = int(k or 1), [0]

    def hook(table_name, n_rows):
        if table_name == table:
            seen[0] += 1
            if seen[0] >= k and not os.path.exists(marker):
                open(marker, "w").close()
                os.kill(os.getpid(), signal.SIGKILL)
    return hook
