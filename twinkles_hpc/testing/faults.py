"""Fault injection for the restart tests, installed by the CLI when TWINKLES_HPC_FAULT is set.

TWINKLES_HPC_FAULT is a comma-separated list of NAME=VALUE:
  kill_after_chunk=K   SIGKILL the rank right after the mid-visit checkpoint that follows chunk K
  usr1_after_chunk=K   send SIGUSR1 to the rank itself after chunk K, as Slurm does before the limit
  raise_in_task=ID     raise RuntimeError in task ID (e.g. visit/00000230)
  kill_after_task=P    SIGKILL the rank once the first task whose id starts with P has written its
                       outputs but before the journal records it; several prefixes separated by '+' kill
                       once each, in successive runs; P ending in '$' is a whole task id
  graph=missing|cycle  break the task graph before it is checked: the last task gains a dependency on a
                       task that does not exist, or the first task comes to depend on the last
  kill_in_ingest=T[:K] SIGKILL the process right after the K-th (default 1st) batch of rows sent to
                       database table T by the ingest stage, inside its open transaction
  term_in_setup=1      SIGTERM to rank 0 itself while it sets the run up (planning the graph)

Each kill happens once per run directory: a marker file RUNDIR/.faults/NAME[-K] remembers it (the one
marker convention). The faults reach the tasks through seams only: a wrapper around the executor, and the
callbacks of the run context (pipeline/context.py Hooks: on_chunk, on_checkpoint, on_batch).
"""
import os
import signal

MARKERS = ".faults"


def fault(name, environ=None):
    for item in (environ or os.environ).get("TWINKLES_HPC_FAULT", "").split(","):
        key, _, value = item.partition("=")
        if key.strip() == name:
            return value.strip()
    return None


def _int_fault(name):
    v = fault(name)
    return int(v) if v not in (None, "") else None


def _once(rundir, name):
    """True the first time `name` is claimed in this run directory (its marker is written then)."""
    d = os.path.join(rundir, MARKERS)
    os.makedirs(d, exist_ok=True)
    marker = os.path.join(d, name)
    if os.path.exists(marker):
        return False
    open(marker, "w").close()
    return True


def _kill(sig=signal.SIGKILL):
    os.kill(os.getpid(), sig)


def alter_graph(tasks):
    """The graph fault: a dependency on a missing task, or a cycle through the first and the last task;
    and the set-up signal (term_in_setup), sent here because rank 0 plans the graph during the set-up."""
    if fault("term_in_setup"):
        _kill(signal.SIGTERM)
    how = fault("graph")
    if how == "missing":
        tasks[-1].deps = tuple(tasks[-1].deps) + ("visit/99999999",)
    elif how == "cycle":
        tasks[0].deps = tuple(tasks[0].deps) + (tasks[-1].id,)
    return tasks


def install(ctx, execute):
    """Set the context's hooks from TWINKLES_HPC_FAULT and return `execute` wrapped with the task faults."""
    rundir = ctx.rundir
    kill_chunk, usr1_chunk = _int_fault("kill_after_chunk"), _int_fault("usr1_after_chunk")

    def on_chunk(k):
        if usr1_chunk == k:
            _kill(signal.SIGUSR1)
        return kill_chunk == k                      # force the checkpoint the kill follows

    def on_checkpoint(k):
        if kill_chunk == k and _once(rundir, "kill_after_chunk"):
            _kill()

    if kill_chunk is not None or usr1_chunk is not None:
        ctx.hooks.on_chunk, ctx.hooks.on_checkpoint = on_chunk, on_checkpoint
    spec = fault("kill_in_ingest")
    if spec:
        table, _, k = spec.partition(":")
        k, seen = int(k or 1), [0]

        def on_batch(table_name, n_rows):
            if table_name == table:
                seen[0] += 1
                if seen[0] >= k and _once(rundir, "kill_in_ingest"):
                    _kill()
        ctx.hooks.on_batch = on_batch
    raise_in = fault("raise_in_task")
    prefixes = (fault("kill_after_task") or "").split("+")

    def wrapped(task, should_stop):
        if raise_in == task.id:
            raise RuntimeError(f"injected fault in {task.id} (TWINKLES_HPC_FAULT)")
        out = execute(task, should_stop)
        for k, prefix in enumerate(prefixes):
            hit = task.id == prefix[:-1] if prefix.endswith("$") else task.id.startswith(prefix)
            if prefix and hit and _once(rundir, f"kill_after_task-{k}"):
                _kill()
        return out
    return wrapped
