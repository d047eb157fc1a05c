"""Fault injection for the restart tests, off unless TWINKLES_HPC_FAULT is set.

TWINKLES_HPC_FAULT is a comma-separated list of NAME=VALUE:
  kill_after_chunk=K   SIGKILL the rank right after the mid-visit checkpoint that follows chunk K
                       (once per run directory: a marker file in checkpoints/ remembers it)
  usr1_after_chunk=K   send SIGUSR1 to the rank itself after chunk K, as Slurm does before the limit
  raise_in_task=ID     raise RuntimeError in task ID (e.g. visit/00000230)
"""
import os


def fault(name):
    for item in os.environ.get("TWINKLES_HPC_FAULT", "").split(","):
        key, _, value = item.partition("=")
        if key.strip() == name:
            return value.strip()
    return None


def int_fault(name):
    v = fault(name)
    return int(v) if v not in (None, "") else None
