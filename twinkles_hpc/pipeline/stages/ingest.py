"""Stage ingest: the run's catalogues into the Qserv-schema database, as one chain of tasks (SQLite has one
writer). Each stage with tables declares its own steps (Stage.ingest_steps, Stage.ingest): truth (sky),
CcdVisit (calexp), Object and ObjectTruthMatch (objects), then ForcedSource per chunk of visits (forced),
so the database fills while later visits are still measured."""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass

from twinkles_hpc.options import opt
from twinkles_hpc.errors import InputError
from twinkles_hpc.pipeline.stage import DATABASE, Stage
from twinkles_hpc.rundir import layout
from twinkles_hpc.store.atomic import atomic_write_bytes


@dataclass
class IngestSection:
    enabled: bool = opt(False, "",
                        "Ingest the run into the catalogue database (url): CcdVisit, Object, ForcedSource, the "
                        "truth tables and ObjectTruthMatch; needs [forced] enabled = true.")
    url: str = opt("", "",
                   "Catalogue database: '' = sqlite:///RUNDIR/level2.sqlite, or "
                   "mysql+pymysql://[user@]host[:port]/database; never a password (docs/database.md).")
    batch_size: int = opt(50_000, "rows", "Rows per INSERT batch (a file's rows are one transaction).", lo=1)
    match_radius: float = opt(1.0, "arcsec",
                              "ObjectTruthMatch: every truth source this close to a primary Object is a match.",
                              lo=0.0, lo_open=True, hi=60.0)


class IngestStage(Stage):
    name = "ingest"
    doc = "the catalogue database (level2.sqlite or [ingest] url); a receipt per step in ingest/"
    section = IngestSection
    requires = ("forced",)
    outputs = (layout.ingest_receipt, layout.SQLITE)
    colour = "#8c8c8c"
    cost_class = DATABASE

    @property
    def uses(self):
        """Every other stage: the steps the stages with tables declare may wait for any of them."""
        from twinkles_hpc.pipeline.registry import STAGES
        return tuple(s.name for s in STAGES if s.name != self.name)

    def check_config(self, cfg):
        if cfg.ingest.url:
            from twinkles_hpc.store.db import check_url
            try:
                check_url(cfg.ingest.url)
            except InputError as exc:
                raise InputError(cfg.path, "ingest.url", exc.expected, exc.source) from None

    def tasks(self, ctx, up):
        """The chain of every enabled stage's ingest steps, in pipeline order; each step also waits for the
        step before it (one writer at a time)."""
        out = []
        for s in _stages_with_tables():
            if not s.enabled(ctx.cfg):
                continue
            for key, deps, cost, params in s.ingest_steps(ctx, up):
                out.append(self.task(key, cost, deps=list(deps) + out[-1:], stage=s.name, step=key.split("/")[0],
                                     **params))
        return out

    def before_run(self, ctx):
        """When the run's SQLite database is gone (deleted by hand) or damaged, remove it and the ingest
        receipts: the journal then finds the ingest tasks' outputs missing and the rerun ingests again.
        Damage: always, a file shorter or longer than its header's page count says (a truncated copy);
        with `run --verify`, also SQLite's own integrity check. A server database is the user's to manage:
        delete RUNDIR/ingest/ to ingest into it again (docs/database.md)."""
        if ctx.cfg.ingest.url:
            return
        path = ctx.path(layout.SQLITE)
        why = sqlite_damage(path, full=ctx.verify) if os.path.exists(path) else "missing"
        if why and why != "missing":
            ctx.log_line(f"{layout.SQLITE} is damaged ({why}): ingesting again")
            os.remove(path)
        if why:
            shutil.rmtree(ctx.path(layout.INGEST_RECEIPTS), ignore_errors=True)

    def run(self, ctx, task, should_stop):
        """One ingest step into the run's database, by the stage that declared it. Its output is a receipt,
        ingest/<step>.json ({table: rows inserted}, the URL without credentials): the journal's record that
        the step is in the database."""
        from twinkles_hpc.pipeline.registry import stage
        from twinkles_hpc.store import db
        conf, p = ctx.cfg.ingest, task.params
        kw = dict(batch_size=conf.batch_size, on_batch=ctx.hooks.on_batch)
        engine = db.connect(conf.url or None, rundir=ctx.rundir)
        try:
            db.create_schema(engine)
            inserted = stage(p["stage"]).ingest(ctx, engine, p["step"], p, **kw)
            url = engine.url.render_as_string(hide_password=True)
        finally:
            engine.dispose()
        rel = layout.ingest_receipt(layout.split_task_id(task.id)[1])
        atomic_write_bytes(ctx.path(rel), json.dumps({"task": task.id, "database": url,
                                                      "inserted": inserted}, sort_keys=True).encode())
        return {rel: os.path.getsize(ctx.path(rel))}


def sqlite_damage(path, full=False):
    """Why the SQLite file at `path` is damaged, or '' when it looks whole: its header (the format string,
    the page size and, where the header's counter says it is current, the page count) against the file's
    size; with `full`, also PRAGMA integrity_check (reads every page)."""
    import sqlite3
    with open(path, "rb") as fh:
        head = fh.read(100)
    if len(head) < 100 or not head.startswith(b"SQLite format 3\x00"):
        return "not an SQLite file"
    page = int.from_bytes(head[16:18], "big")
    page = 65536 if page == 1 else page
    n_pages = int.from_bytes(head[28:32], "big")
    current = head[24:28] == head[92:96]
    size = os.path.getsize(path)
    if size % page or (current and n_pages and size != n_pages * page):
        return f"{size} bytes, the header says {n_pages} pages of {page}"
    if full:
        try:
            con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            try:
                result = con.execute("PRAGMA integrity_check").fetchone()[0]
            finally:
                con.close()
        except sqlite3.DatabaseError as err:
            return str(err)
        if result != "ok":
            return f"integrity check: {result}"
    return ""


def _stages_with_tables():
    from twinkles_hpc.pipeline.registry import STAGES
    return [s for s in STAGES if s.tables and s.name != IngestStage.name]


STAGE = IngestStage()
