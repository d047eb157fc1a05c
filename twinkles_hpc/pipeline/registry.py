"""The stages in pipeline order, and what is derived from their declarations: the task graph, the config
checks between stages, the executor's dispatch, the report's colours and the cost classes."""
from __future__ import annotations

from twinkles_hpc.errors import InputError
from twinkles_hpc.pipeline.stage import GraphError, Upstream, check_graph
from twinkles_hpc.pipeline.stages import (associate, calexp, coadd, diaforced, diffim, forced, ingest, lenses,
                                          lensmodel, lensphot, objects, sky, template, variables, visit)

#: Every stage, in pipeline order (a stage comes after every stage it requires or uses).
STAGES = tuple(m.STAGE for m in (sky, variables, visit, calexp, coadd, objects, forced, template, diffim, associate,
                                  lenses, lensmodel, lensphot, diaforced, ingest))
BY_NAME = {s.name: s for s in STAGES}


def stage(name):
    return BY_NAME[name]


def sections():
    """[(section name, opt-dataclass)] of the stages that have settings, in pipeline order."""
    return [(s.name, s.section) for s in STAGES if s.section is not None]


def check_config(cfg):
    """Raise InputError for an enabled stage whose required stage is off, and for each stage's own checks."""
    for s in STAGES:
        if s.optional and s.enabled(cfg):
            for r in s.requires:
                req = BY_NAME[r]
                if req.optional and not req.enabled(cfg):
                    raise InputError(cfg.path, f"{s.name}.enabled",
                                     f"false unless {r}.enabled = true ({s.name} reads {req.doc})", True)
        s.check_config(cfg)


def enabled_stages(cfg):
    return [s for s in STAGES if s.enabled(cfg)]


def build_tasks(ctx, alter=None):
    """The run's task graph from the enabled stages, checked: every dependency in the graph, no cycle.
    `alter(tasks) -> tasks` (a test seam) changes the graph before the check."""
    up = Upstream()
    tasks = []
    for s in enabled_stages(ctx.cfg):
        mine = s.tasks(ctx, up.view(s))
        for t in mine:
            if t.kind != s.name:
                raise GraphError(f"stage {s.name} built task {t.id} of another kind ({t.kind})")
        up.add(s.name, mine)
        tasks += mine
    return check_graph(alter(tasks) if alter else tasks)


def colours():
    """{task kind: colour} for the report's Gantt chart."""
    return {s.name: s.colour for s in STAGES}


def cost_classes():
    """{cost class: (stage names)}: setup, per_visit, amortised."""
    out = {}
    for s in STAGES:
        out.setdefault(s.cost_class, []).append(s.name)
    return {k: tuple(v) for k, v in out.items()}


class Executor:
    """execute(task, should_stop) for the engine: the task's stage runs it."""

    def __init__(self, ctx):
        self.ctx = ctx

    def __call__(self, task, should_stop):
        try:
            s = BY_NAME[task.kind]
        except KeyError:
            raise ValueError(f"unknown task kind {task.kind!r}") from None
        return s.run(self.ctx, task, should_stop)


def before_run(ctx):
    for s in enabled_stages(ctx.cfg):
        s.before_run(ctx)


def finalise(ctx, skip=()):
    """Each enabled stage's finalise, but those of the stages in `skip` (deferred: they did not run)."""
    for s in enabled_stages(ctx.cfg):
        if s.name not in skip:
            s.finalise(ctx)
