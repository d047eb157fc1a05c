"""What a stage's task needs besides its parameters: the config, the run directory, the visits, a log,
and per-worker caches of the catalogues that many tasks read."""
from __future__ import annotations

import os

from twinkles_hpc.rundir import layout
from twinkles_hpc.store.atomic import open_read
from twinkles_hpc.store.tables import read_table


class TableCache:
    """Each worker reads a file's tables once and keeps the `size` most recent files' tables; an entry is
    keyed by path, mtime and size, so a rewritten file is read again."""

    def __init__(self, size=1):
        self.size, self.entries = size, {}

    def get(self, path, names):
        st = os.stat(path)
        key = (path, st.st_mtime_ns, st.st_size, tuple(names))
        if key not in self.entries:
            with open_read(path) as fh:
                value = tuple(read_table(fh[n]) for n in names)
            while len(self.entries) >= self.size:
                self.entries.pop(next(iter(self.entries)))
            self.entries[key] = value
        return self.entries[key]


class Hooks:
    """Seams for callers that watch a task from outside (the CLI installs twinkles_hpc.testing's fault
    injection here): on_chunk(k) after chunk k of a visit, returning True to force a checkpoint;
    on_checkpoint(k) once that checkpoint is written; on_batch(table, n_rows) after each batch of rows the
    ingest sends. None: nothing is called."""
    on_chunk = None
    on_checkpoint = None
    on_batch = None


class RunContext:
    """One run's config, run directory and visits, shared by the stages on one rank."""

    def __init__(self, cfg, rundir, visits, log=None, skymap=None):
        self.cfg, self.rundir, self.visits, self.log = cfg, rundir, visits, log
        self.by_id = {int(v["visit_id"]): v for v in visits}
        self._skymap = skymap
        self.caches = {}
        self.hooks = Hooks()
        self.verify = False         # `run --verify`: stages' before_run check what they keep in full

    def path(self, rel):
        return os.path.join(self.rundir, rel)

    def cache(self, name, size=1):
        """A per-rank TableCache, one per name (e.g. 'truth', 'refcat', 'objects')."""
        if name not in self.caches:
            self.caches[name] = TableCache(size)
        return self.caches[name]

    @property
    def storage(self):
        """How the stages store pixel planes: the config's [store] (store.tables.Storage)."""
        from twinkles_hpc.store.tables import Storage
        return Storage.of(getattr(self.cfg, "store", None))

    def refcat(self):
        return self.cache("refcat").get(self.path(layout.REFCAT), ("refcat",))[0]

    @property
    def skymap(self):
        """The run's skymap: the one stored in the run directory once there is one, else the one set up."""
        if self._skymap is None and self.rundir is not None:
            from twinkles_hpc.rundir import read_skymap_dict
            d = read_skymap_dict(self.rundir)
            if d is not None:
                from twinkles_hpc.level2.skymap import SkyMap
                self._skymap = SkyMap.from_dict(d)
        return self._skymap

    @skymap.setter
    def skymap(self, value):
        self._skymap = value

    def log_line(self, msg):
        if self.log:
            self.log(msg)
