"""Stage ingest: the run's catalogues into the Qserv-schema database, as a chain of tasks (SQLite has one
writer): truth, CcdVisit, Object, ObjectTruthMatch, then ForcedSource per chunk of visits, so the
database fills while later visits are still measured."""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass

import numpy as np

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
    requires = ("sky", "calexp", "objects", "forced")
    uses = ("variables",)
    outputs = (layout.ingest_receipt, layout.SQLITE)
    tables = ("CcdVisit", "Object", "ObjectTruthMatch", "ForcedSource", "Truth*")
    colour = "#8c8c8c"
    cost_class = DATABASE

    def check_config(self, cfg):
        if cfg.ingest.url:
            from twinkles_hpc.store.db import check_url
            try:
                check_url(cfg.ingest.url)
            except InputError as exc:
                raise InputError(cfg.path, "ingest.url", exc.expected, exc.source) from None

    def tasks(self, ctx, up):
        """The chain: ingest/truth (after sky and variables), ingest/CcdVisit (after the calexps),
        ingest/Object (after the objects tasks), ingest/ObjectTruthMatch, then ingest/ForcedSource/KKKK for
        each chunk of VISITS_PER_INGEST_CHUNK visits after their forced tasks. Cost: 0.05 per visit
        (ForcedSource), 0.01 per visit (CcdVisit), 0.2 otherwise."""
        otasks = list(up.tasks("objects").values())
        patches = [t.params["patch"] for t in otasks]
        me = self.name
        steps = [("truth", [up.get("sky", None, for_task=me)] + list(up.tasks("variables").values()), 0.2, {}),
                 ("CcdVisit", list(up.tasks("calexp").values()), 0.01 * len(ctx.visits), {}),
                 ("Object", otasks, 0.2, {"patches": patches}),
                 ("ObjectTruthMatch", [], 0.2, {"patches": patches})]
        vids = [int(v) for v in np.sort(ctx.visits["visit_id"])]
        n = layout.VISITS_PER_INGEST_CHUNK
        for k in range(0, len(vids), n):
            chunk = vids[k:k + n]
            key = f"ForcedSource/{layout.chunk_key(k // n)}"
            deps = [up.get("forced", layout.visit_key(v), for_task=layout.task_id(me, key)) for v in chunk]
            steps.append((key, deps, 0.05 * len(chunk), {"visit_ids": chunk}))
        out = []
        for key, deps, cost, params in steps:
            chain = out[-1:]
            out.append(self.task(key, cost, deps=list(deps) + chain, step=key.split("/")[0], **params))
        return out

    def before_run(self, ctx):
        """When the run's SQLite database is gone (deleted by hand), remove the ingest receipts: the journal
        then finds the ingest tasks' outputs missing and the rerun ingests again. A server database is the
        user's to manage: delete RUNDIR/ingest/ to ingest into it again (docs/database.md)."""
        if not ctx.cfg.ingest.url and not os.path.exists(ctx.path(layout.SQLITE)):
            shutil.rmtree(ctx.path(layout.INGEST_RECEIPTS), ignore_errors=True)

    def run(self, ctx, task, should_stop):
        """One ingest step into the run's database. Its output is a receipt, ingest/<step>.json ({table: rows
        inserted}, the URL without credentials): the journal's record that the step is in the database."""
        from twinkles_hpc.level2.calibrate import calexp_ok      # failed calibrations have no CcdVisit
        from twinkles_hpc.level2.psf import fwhm_from_json
        from twinkles_hpc.store import db, ingest
        conf, p, by_id = ctx.cfg.ingest, task.params, ctx.by_id
        step = p["step"]
        kw = dict(batch_size=conf.batch_size, on_batch=ctx.hooks.on_batch)
        objects = [ctx.path(layout.objects(*q)) for q in sorted(tuple(q) for q in p.get("patches", ()))]
        engine = db.connect(conf.url or None, rundir=ctx.rundir)
        try:
            db.create_schema(engine)
            if step == "truth":
                inserted = db.ingest_truth(engine, ctx.rundir, **kw)
            elif step == "CcdVisit":
                paths = [ctx.path(layout.calexp(v, by_id[v]["band"])) for v in sorted(by_id)]
                inserted = {step: ingest.ingest_ccd_visits(engine, [q for q in paths if calexp_ok(q)],
                                                           fwhm_from_json, **kw)}
            elif step == "Object":
                inserted = {step: ingest.ingest_objects(engine, objects, **kw)}
            elif step == "ObjectTruthMatch":
                inserted = {step: ingest.ingest_truth_match(engine, objects, ctx.path(layout.TRUTH),
                                                            conf.match_radius, **kw)}
            elif step == "ForcedSource":
                inserted = {step: ingest.ingest_forced(engine, [ctx.path(layout.forced(v, by_id[v]["band"]))
                                                               for v in p["visit_ids"]], **kw)}
            else:
                raise ValueError(f"unknown ingest step {step!r}")
            url = engine.url.render_as_string(hide_password=True)
        finally:
            engine.dispose()
        rel = layout.ingest_receipt(layout.split_task_id(task.id)[1])
        atomic_write_bytes(ctx.path(rel), json.dumps({"task": task.id, "database": url,
                                                      "inserted": inserted}, sort_keys=True).encode())
        return {rel: os.path.getsize(ctx.path(rel))}


STAGE = IngestStage()
