"""The pipeline: the Stage interface (stage.py), one module per stage (stages/), the registry that lists
them in order and derives the task graph (registry.py), the run context the stages share (context.py), and
the set-up of a run from its config (setup.py)."""
