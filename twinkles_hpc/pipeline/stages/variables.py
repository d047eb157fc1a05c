"""Stage variables: the true magnitude of every variable source in every visit, in chunks of visits."""
from __future__ import annotations

import os

import numpy as np

from twinkles_hpc.pipeline.stage import SETUP, Stage
from twinkles_hpc.rundir import layout
from twinkles_hpc.store.atomic import atomic_h5, open_read
from twinkles_hpc.store.tables import read_table, write_table


def truth_chunks(visits):
    """Visit ids split into consecutive chunks (by visit id) for the variables tasks."""
    ids = np.sort(visits["visit_id"])
    n = layout.VISITS_PER_TRUTH_CHUNK
    return [ids[i:i + n] for i in range(0, len(ids), n)]


def chunk_of_visit(visits, visit_id):
    """The index of the chunk that holds `visit_id`."""
    return int(np.searchsorted(np.sort(visits["visit_id"]), visit_id) // layout.VISITS_PER_TRUTH_CHUNK)


class VariablesStage(Stage):
    name = "variables"
    doc = "true magnitudes of every supernova and lensed-quasar image in each visit (variables/truth-KKKK.h5)"
    requires = ("sky",)
    outputs = (layout.variables_truth,)
    colour = "#8172b2"
    cost_class = SETUP
    optional = False

    def enabled(self, cfg):
        return cfg.supernovae.enabled or cfg.lensing.enabled

    def tasks(self, ctx, up):
        sky = up.get("sky", None, for_task=self.name)
        cost = 2.0 * (ctx.cfg.sky.radius / 0.3) ** 2
        return [self.task(layout.chunk_key(k), cost * len(ids) / 1000.0, deps=(sky,), chunk=k)
                for k, ids in enumerate(truth_chunks(ctx.visits))]

    def run(self, ctx, task, should_stop):
        from twinkles_hpc.sky import variables as var
        visits, chunk = ctx.visits, task.params["chunk"]
        with open_read(ctx.path(layout.TRUTH)) as fh:
            sne, systems, images = (read_table(fh[k]) for k in ("supernovae", "lens_systems", "lensed_images"))
        ids = truth_chunks(visits)[chunk]
        mine = np.isin(visits["visit_id"], ids)
        rows = np.concatenate([var.supernova_truth(sne, visits[mine]),
                               # the quasar curves are sampled at every visit of the run, then cut to the
                               # chunk, so a chunk's values do not depend on how the visits are chunked
                               _cut(var.quasar_truth(systems, images, visits), ids)])
        rows = rows[np.lexsort((rows["source_id"], rows["visit_id"]))]
        rel = layout.variables_truth(chunk)
        with atomic_h5(ctx.path(rel)) as fh:
            write_table(fh, "truth", rows, compression="gzip", shuffle=True,
                        chunks=True if len(rows) else None)
            fh.create_dataset("visit_id", data=ids)
        return {rel: os.path.getsize(ctx.path(rel))}


def _cut(rows, visit_ids):
    return rows[np.isin(rows["visit_id"], visit_ids)]


def visit_variable_mags(ctx, chunk, visit_id, variables):
    """AB magnitudes of every variable source in one visit (inf where it has no light)."""
    mags = np.full(len(variables), np.inf)
    if chunk is None or len(variables) == 0:
        return mags
    rows = ctx.cache("variables").get(ctx.path(layout.variables_truth(chunk)), ("truth",))[0]
    lo, hi = np.searchsorted(rows["visit_id"], [visit_id, visit_id + 1])
    r = rows[lo:hi]
    idx = np.searchsorted(variables["source_id"], r["source_id"])
    mags[idx] = r["mag"]
    return mags


STAGE = VariablesStage()
