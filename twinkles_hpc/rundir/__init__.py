"""The run directory as data: its layout (every relative path and task-id format), its set-up and checks,
the JSON-lines reader of its journal and trace, and the status `twinkles-hpc status` prints.

Everything that reads a product finds it here (docs/data-model.md, docs/design.md).
"""
from twinkles_hpc.rundir import layout
from twinkles_hpc.rundir.jsonl import read_jsonl
from twinkles_hpc.rundir.lifecycle import (check, init, load_config, read_config_dict,
                                           read_skymap_dict, read_visits)

__all__ = ["layout", "read_jsonl", "check", "init", "load_config", "read_config_dict",
           "read_skymap_dict", "read_visits"]
