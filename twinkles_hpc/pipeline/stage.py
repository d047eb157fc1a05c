"""The Stage interface and the task graph built from the stages' declarations.

A stage is one module of pipeline/stages/ holding one Stage subclass. It declares its one-word name (the
config section, task kind, task-id prefix and output folder all use it), its config section (an
opt-dataclass; its `enabled` field switches an optional stage on), the stages it requires, its outputs
(rundir.layout functions), the database tables it fills and how the report draws it; it builds its tasks
from its upstream stages' tasks and runs one task as a thin I/O adapter over a science core. The engine
(parallel/engine.py) knows only tasks; the graph, the config checks between stages, the report's colours
and the cost classes all come from these declarations (pipeline/registry.py).
"""
from __future__ import annotations

from dataclasses import dataclass

from twinkles_hpc.errors import TwinklesError
from twinkles_hpc.options import opt
from twinkles_hpc.rundir import layout
from twinkles_hpc.rundir.task import Task

#: Cost classes (validate's cost section, the report): the sky (once per run), the simulation of a visit,
#: Level 2 per visit, Level 2 amortised over the visits (a coadd's or an Object table's cost spread over the
#: visits it reads), and the database.
SETUP, SIMULATION, PER_VISIT, AMORTISED, DATABASE = "setup", "simulation", "per_visit", "amortised", "database"


@dataclass
class Switch:
    """The `enabled` field of an optional stage's section (listed first: a section subclasses its science
    config and this, `class CalexpSection(CalibrateConfig, Switch)`)."""
    enabled: bool = opt(False, "", "Run this stage.")


class GraphError(TwinklesError):
    """A task depends on a task that is not in the graph, or the dependencies form a cycle."""


class Upstream:
    """The tasks built so far, by stage and key, for a stage that builds its own: a stage may only look up
    the stages it requires, and a lookup of a task that does not exist names both tasks."""

    def __init__(self, by_stage=None, allowed=None, reader=None):
        self.by_stage = {} if by_stage is None else by_stage
        self.allowed, self.reader = allowed, reader

    def view(self, stage):
        """The same tasks, as seen by `stage`: it may look up only the stages it requires or uses."""
        return Upstream(self.by_stage, set(stage.requires) | set(stage.uses), stage.name)

    def _check(self, stage):
        if self.allowed is not None and stage not in self.allowed:
            raise GraphError(f"stage {self.reader} looks up tasks of stage {stage}, which it does not declare "
                             "in requires or uses")

    def add(self, stage, tasks):
        d = self.by_stage.setdefault(stage, {})
        for t in tasks:
            d[layout.split_task_id(t.id)[1]] = t

    def has(self, stage):
        self._check(stage)
        return stage in self.by_stage

    def tasks(self, stage):
        """{key: Task} of a stage ({} when it is switched off)."""
        self._check(stage)
        return self.by_stage.get(stage, {})

    def get(self, stage, key, *, for_task):
        self._check(stage)
        try:
            return self.by_stage[stage][key]
        except KeyError:
            raise GraphError(f"task {for_task} depends on task {layout.task_id(stage, key)}, which is not in "
                             "the graph") from None


class Stage:
    """One step of the pipeline. Subclasses set the class attributes and implement tasks() and run()."""

    name = ""                 #: config section, task kind, task-id prefix and output folder
    doc = ""                  #: one line: what the stage makes
    section = None            #: opt-dataclass of its config section [name], or None (no settings)
    requires = ()             #: stages whose products it reads (they must be enabled when it is)
    uses = ()                 #: stages whose products it reads when they are enabled
    outputs = ()              #: rundir.layout functions or names of what it writes
    tables = ()               #: database tables it fills
    colour = "#8c8c8c"        #: its colour in the report's Gantt chart
    cost_class = PER_VISIT    #: SETUP, SIMULATION, PER_VISIT, AMORTISED or DATABASE
    optional = True           #: switched on by `[name] enabled = true`; False: on whenever enabled() says

    def enabled(self, cfg):
        return bool(getattr(getattr(cfg, self.name), "enabled", True))

    def check_config(self, cfg):
        """Raise InputError for settings of this stage that cannot work together (beyond opt bounds)."""

    def tasks(self, ctx, up):
        """The stage's tasks (parallel.engine.Task) from the run context and the upstream tasks."""
        raise NotImplementedError

    def run(self, ctx, task, should_stop):
        """Run one task; returns {relpath: bytes} of what it wrote."""
        raise NotImplementedError

    def ingest_steps(self, ctx, up):
        """The steps that load this stage's products into the database, in order: [(key, deps, cost,
        params)], key the step's name (its task is ingest/KEY, its receipt ingest/KEY.json), deps the Tasks
        whose outputs it reads (from `up`, the ingest stage's view of every stage with tables). Only for a
        stage with `tables`."""
        return []

    def ingest(self, ctx, engine, step, params, **kw):
        """Load one step's products into `engine` (store/db.py, store/ingest.py); returns {table: rows
        inserted}. kw: batch_size, on_batch."""
        raise NotImplementedError

    def before_run(self, ctx):
        """Rank 0, before the journal is read: undo what a user removed by hand (optional)."""

    def finalise(self, ctx):
        """After the last task of the run (rank 0): views, clean-up. Optional."""

    # -- helpers for subclasses ----------------------------------------------------------------------
    def task(self, key, cost, deps=(), **params):
        """A Task of this stage; deps are Tasks (from Upstream), never typed ids."""
        return Task(layout.task_id(self.name, key), self.name, cost=float(cost),
                    deps=tuple(d.id for d in deps), params=params)


def per_visit_ingest_steps(ctx, up, stage, table, cost_per_visit):
    """Ingest steps `TABLE/KKKK` of a per-visit stage, one per chunk of VISITS_PER_INGEST_CHUNK visits (in
    visit-id order), each after that chunk's tasks: the database fills while later visits are measured."""
    vids = sorted(int(v) for v in ctx.visits["visit_id"])
    n, out = layout.VISITS_PER_INGEST_CHUNK, []
    for k in range(0, len(vids), n):
        chunk = vids[k:k + n]
        key = f"{table}/{layout.chunk_key(k // n)}"
        deps = [up.get(stage, layout.visit_key(v), for_task=layout.task_id("ingest", key)) for v in chunk]
        out.append((key, deps, cost_per_visit * len(chunk), {"visit_ids": chunk}))
    return out


def downstream(tasks, roots):
    """The task ids `roots` and every task that depends on one of them, directly or not."""
    users = {}
    for t in tasks:
        for d in t.deps:
            users.setdefault(d, []).append(t.id)
    out, stack = set(), list(roots)
    while stack:
        tid = stack.pop()
        if tid not in out:
            out.add(tid)
            stack.extend(users.get(tid, ()))
    return out


def check_graph(tasks):
    """Raise GraphError when a dependency is not in the graph or the dependencies form a cycle (naming the
    tasks); returns the tasks."""
    ids = {t.id for t in tasks}
    if len(ids) != len(tasks):
        seen, dup = set(), None
        for t in tasks:
            if t.id in seen:
                dup = t.id
                break
            seen.add(t.id)
        raise GraphError(f"task {dup} is in the graph twice")
    for t in tasks:
        for d in t.deps:
            if d not in ids:
                raise GraphError(f"task {t.id} depends on task {d}, which is not in the graph")
    # Kahn's algorithm: whatever is left once no task is free of dependencies lies on a cycle
    waiting = {t.id: set(t.deps) for t in tasks}
    users = {}
    for t in tasks:
        for d in t.deps:
            users.setdefault(d, []).append(t.id)
    free = [tid for tid, deps in waiting.items() if not deps]
    while free:
        tid = free.pop()
        for u in users.get(tid, ()):
            waiting[u].discard(tid)
            if not waiting[u]:
                free.append(u)
        del waiting[tid]
    if waiting:
        start = min(waiting)
        path, tid = [start], next(iter(sorted(waiting[start])))
        while tid not in path:
            path.append(tid)
            tid = next(iter(sorted(waiting[tid])))
        cycle = path[path.index(tid):] + [tid]
        raise GraphError("the task graph has a cycle: " + " -> ".join(cycle))
    return tasks
