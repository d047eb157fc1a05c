"""The unit of work the engine schedules and the journal records."""
from dataclasses import dataclass, field


@dataclass(order=False)
class Task:
    id: str                           # rundir.layout.task_id(stage, key)
    kind: str                         # the stage that runs it
    cost: float = 1.0                 # predicted cost, relative units (for LPT ordering and the ETA)
    deps: tuple = ()                  # ids of the tasks whose outputs it reads
    params: dict = field(default_factory=dict)
