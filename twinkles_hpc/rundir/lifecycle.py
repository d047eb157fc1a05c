"""Set-up, checks and loading of a run directory (its layout is rundir/layout.py)."""
from __future__ import annotations

import json
import os

from twinkles_hpc.errors import InputError, RunDirError
from twinkles_hpc.rundir import layout
from twinkles_hpc.store.atomic import atomic_h5, atomic_write_bytes, open_read
from twinkles_hpc.store.tables import read_table, write_table

#: Folders made when a run directory is created (the others appear with their first product).
FOLDERS = ("visit", layout.CHECKPOINTS, "variables")
#: What the set-up of a run directory writes before config.json, which it writes last: a directory that
#: holds only these (the folders empty, and partial files of them or of config.json) is a first run's
#: set-up cut short, which a rerun completes.
SETUP_FILES = (layout.LOCK, layout.VISITS, layout.SKYMAP, layout.CONFIG_TOML)


def _interrupted_setup(rundir):
    """True when `rundir` holds only what an unfinished set-up leaves (SETUP_FILES, empty FOLDERS)."""
    for name in os.listdir(rundir):
        path = os.path.join(rundir, name)
        if name in FOLDERS and os.path.isdir(path) and not os.listdir(path):
            continue
        base = name.split(".tmp-")[0] if ".tmp-" in name else None
        if name in SETUP_FILES or base in SETUP_FILES + (layout.CONFIG_JSON,):
            continue
        return False
    return True


def check(cfg, rundir):
    """Refuse, touching nothing, a directory made by another config or that is not a run directory."""
    if os.path.exists(rundir) and not os.path.isdir(rundir):
        raise InputError(rundir, "-o", "a run directory (new or made by an earlier run)", "not a directory")
    cj = os.path.join(rundir, layout.CONFIG_JSON)
    if os.path.exists(cj):
        old = read_config_dict(rundir)
        new = json.loads(cfg.fingerprint())
        diff = [f"{s}.{k}" for s in new for k in new[s] if old.get(s, {}).get(k) != new[s][k]]
        if diff:
            raise RunDirError(f"{rundir}: run directory was made with a different config "
                              f"({', '.join(diff[:5])} differ{'s' if len(diff) == 1 else ''}); "
                              "use a new run directory")
    elif os.path.isdir(rundir) and os.listdir(rundir) and not _interrupted_setup(rundir):
        raise RunDirError(f"{rundir}: directory exists, is not empty and is not a twinkles-hpc run "
                          f"directory (no {layout.CONFIG_JSON}); choose another -o")


def _set_up(rundir):
    return os.path.exists(os.path.join(rundir, layout.CONFIG_JSON))


def read_visits(rundir):
    """The run's cadence (visits.h5), or None before a first run has set the directory up (config.json,
    written last, is missing: what an interrupted set-up left is not the run's)."""
    path = os.path.join(rundir, layout.VISITS)
    if not (_set_up(rundir) and os.path.exists(path)):
        return None
    try:
        with open_read(path) as fh:
            return read_table(fh["visits"])
    except (OSError, KeyError, ValueError) as exc:
        raise InputError(path, "file", "the cadence table the run wrote (HDF5, table visits)",
                         f"unreadable ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None



def init(cfg, rundir, config_text, visits, skymap=None):
    """Create the layout and record the config, the cadence and the skymap (first run only). config.json
    comes last: until it exists the set-up is redone whole, so a kill at any moment leaves a directory
    that the rerun accepts (`check`), and what an interrupted set-up wrote is replaced, never trusted."""
    cj = os.path.join(rundir, layout.CONFIG_JSON)
    first = not os.path.exists(cj)
    for d in FOLDERS:
        os.makedirs(os.path.join(rundir, d), exist_ok=True)
    path = os.path.join(rundir, layout.VISITS)
    if first or not os.path.exists(path):
        with atomic_h5(path) as fh:
            write_table(fh, "visits", visits)
    path = os.path.join(rundir, layout.SKYMAP)
    if skymap is not None and (first or not os.path.exists(path)):
        atomic_write_bytes(path, json.dumps(skymap.to_dict(), indent=1, sort_keys=True).encode())
    if first:
        with open(os.path.join(rundir, layout.CONFIG_TOML), "w") as fh:
            fh.write(config_text)
        atomic_write_bytes(cj, json.dumps(cfg.to_dict(), indent=1, sort_keys=True).encode())


def read_config_dict(rundir):
    """config.json of a run directory as a dict; InputError (exit 2) when it is missing or unreadable."""
    cj = os.path.join(rundir, layout.CONFIG_JSON)
    if not os.path.exists(cj):
        raise InputError(rundir, layout.CONFIG_JSON, "a twinkles-hpc run directory", "not found")
    return _json_object(cj, "the JSON config a run wrote")


def _json_object(path, what):
    """A JSON file holding an object, as a dict; InputError naming the file when it is not that."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError) as exc:
        raise InputError(path, "file", what, f"unreadable ({exc})") from None
    if not isinstance(data, dict):
        raise InputError(path, "file", "a JSON object", type(data).__name__)
    return data


def load_config(rundir):
    """The validated Config a run directory was made with. Its input files (an OpSim cadence, an OM10
    table) are not looked for: the run read them when it set the directory up (visits.h5, truth.h5), and
    their paths are relative to a config file that may be anywhere."""
    from twinkles_hpc import config as config_mod
    return config_mod.from_dict(read_config_dict(rundir), path=os.path.join(rundir, layout.CONFIG_JSON),
                                base_dir=rundir, check_inputs=False)


def read_skymap_dict(rundir):
    """skymap.json as a dict (level2.skymap.SkyMap.from_dict builds the skymap), or None (also before a
    first run has set the directory up, as read_visits)."""
    path = os.path.join(rundir, layout.SKYMAP)
    if not (_set_up(rundir) and os.path.exists(path)):
        return None
    return _json_object(path, "the skymap the run wrote (JSON)")
