"""Stage associate: DiaSources into DiaObjects, per skymap patch and then merged across patches
(docs/diffim.md, "The associate stage")."""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from twinkles_hpc.errors import InputError
from twinkles_hpc.options import opt
from twinkles_hpc.pipeline.stage import AMORTISED, Stage, Switch
from twinkles_hpc.pipeline.stages.coadd import visit_patches
from twinkles_hpc.pipeline.stages.diffim import DIA_SOURCE_DTYPE
from twinkles_hpc.rundir import layout
from twinkles_hpc.store.atomic import atomic_h5, open_read
from twinkles_hpc.store.tables import read_table, write_table

#: Record dtype of associated DiaSources: the diffim stage's columns and the DiaObject.
ASSOCIATED_DTYPE = np.dtype(DIA_SOURCE_DTYPE.descr + [("diaObjectId", "i8")])

#: Task key of the merge across patches.
MERGE_KEY = "merge"


@dataclass
class AssociateSection(Switch):
    """[associate]"""
    enabled: bool = opt(False, "", "Associate the DiaSources of every difference into DiaObjects "
                        "(associate/dia_object.h5); needs [diffim] enabled = true.")
    radius: float = opt(1.0, "arcsec", "A DiaSource joins the DiaObject whose mean position is this close.",
                        lo=0.0, lo_open=True, hi=60.0)
    skip_flags: str = opt("EDGE,SATURATED,CR,BAD_SUBTRACTION,DIPOLE,NO_FLUX", "",
                          "DiaSources with any of these flags (timedomain/dia.py DIA_FLAGS, comma-separated) are "
                          "not associated.")


def skip_mask(names, source="associate"):
    """The DIA flag bits named in the comma-separated `names`; InputError (naming `source`) for an
    unknown name."""
    from twinkles_hpc.timedomain.dia import DIA_FLAGS
    bits = 0
    for name in (n.strip() for n in names.split(",")):
        if not name:
            continue
        if name not in DIA_FLAGS:
            raise InputError(source, "associate.skip_flags", f"names from {', '.join(DIA_FLAGS)}", name)
        bits |= DIA_FLAGS[name]
    return bits


class AssociateStage(Stage):
    name = "associate"
    doc = "DiaSources into DiaObjects, per patch then merged (associate/dia_object.h5)"
    section = AssociateSection
    requires = ("diffim",)
    outputs = (layout.association, layout.DIA_OBJECT)
    tables = ("DiaObject", "DiaSource", "DiaObjectTruthMatch")
    colour = "#da8bc3"
    cost_class = AMORTISED

    def check_config(self, cfg):
        skip_mask(cfg.associate.skip_flags, cfg.path)

    def tasks(self, ctx, up):
        """One `associate/I-J` task per patch that a difference overlaps, after those diffim tasks, and
        `associate/merge` after them all."""
        diffims = up.tasks("diffim")
        by_patch = {}
        for vid, indices in visit_patches(ctx).items():
            for index in indices:
                by_patch.setdefault(index, []).append(vid)
        out = []
        for (i, j), vids in sorted(by_patch.items()):
            deps = [diffims[layout.visit_key(v)] for v in sorted(vids)]
            out.append(self.task(layout.patch_key(i, j), 0.002 * len(vids), deps=deps, patch=[i, j],
                                 visit_ids=sorted(vids)))
        out.append(self.task(MERGE_KEY, 0.001 * len(ctx.visits), deps=list(out),
                             patches=[t.params["patch"] for t in out]))
        return out

    def ingest_steps(self, ctx, up):
        merge = up.get("associate", MERGE_KEY, for_task=layout.task_id("ingest", "DiaObject"))
        return [(t, [merge], 0.05, {}) for t in self.tables]

    def ingest(self, ctx, engine, step, params, **kw):
        """DiaObject; DiaSource (every DiaSource of every difference, with its DiaObject); DiaObjectTruthMatch
        (true supernovae and lensed images within [ingest] match_radius of a DiaObject)."""
        from twinkles_hpc.store import ingest
        path = ctx.path(layout.DIA_OBJECT)
        if step == "DiaObject":
            return {step: ingest.ingest_dia_objects(engine, path, **kw)}
        if step == "DiaSource":
            paths = [ctx.path(layout.diffim(int(v["visit_id"]), str(v["band"])))
                     for v in np.sort(ctx.visits, order="visit_id")]
            return {step: ingest.ingest_dia_sources(engine, paths, path, **kw)}
        return {step: ingest.ingest_dia_truth_match(engine, path, ctx.path(layout.TRUTH),
                                                    ctx.cfg.ingest.match_radius, **kw)}

    def run(self, ctx, task, should_stop):
        if task.params.get("patches") is not None:
            return _merge(ctx, task.params["patches"])
        return _associate_patch(ctx, tuple(task.params["patch"]), task.params["visit_ids"])


def _associate_patch(ctx, index, visit_ids):
    """associate/patch-I-J.h5: the unflagged DiaSources of the visits that fall in the patch's inner box,
    with their DiaObject within the patch."""
    from twinkles_hpc.timedomain.association import associate, first_source_ids
    skip = skip_mask(ctx.cfg.associate.skip_flags)
    by_id = ctx.by_id
    parts = []
    for vid in visit_ids:
        path = ctx.path(layout.diffim(vid, str(by_id[vid]["band"])))
        with open_read(path) as fh:
            parts.append(read_table(fh["dia_source"]).astype(DIA_SOURCE_DTYPE))
    src = np.concatenate(parts) if parts else np.zeros(0, DIA_SOURCE_DTYPE)
    src = src[(src["flags"] & skip) == 0]
    if len(src):
        x, y = ctx.skymap.wcs.all_world2pix(src["ra"], src["decl"], 0)
        x0, y0, nx, ny = ctx.skymap.patch(*index).inner_bbox
        src = src[(x >= x0 - 0.5) & (x < x0 + nx - 0.5) & (y >= y0 - 0.5) & (y < y0 + ny - 0.5)]
    src = np.sort(src, order="diaSourceId")
    obj = associate(src, ctx.cfg.associate.radius, ctx.skymap.ra, ctx.skymap.dec)
    rows = np.zeros(len(src), ASSOCIATED_DTYPE)
    for name in DIA_SOURCE_DTYPE.names:
        rows[name] = src[name]
    rows["diaObjectId"] = first_source_ids(src, obj) if len(src) else []
    rel = layout.association(*index)
    out = ctx.path(rel)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with atomic_h5(out) as fh:
        write_table(fh, "dia_source", rows)
        fh.attrs.update(patch=list(index), visit_ids=list(visit_ids), radius_arcsec=ctx.cfg.associate.radius)
    return {rel: os.path.getsize(out)}


def _merge(ctx, patches):
    """associate/dia_object.h5: every patch's sources, DiaObjects merged across patch edges, the DiaObject
    table with its per-band summaries."""
    from twinkles_hpc.timedomain.association import dia_objects, merge_regions
    parts, region = [], []
    for k, index in enumerate(sorted(tuple(p) for p in patches)):
        with open_read(ctx.path(layout.association(*index))) as fh:
            t = read_table(fh["dia_source"]).astype(ASSOCIATED_DTYPE)
        parts.append(t)
        region.append(np.full(len(t), k, np.int64))
    src = np.concatenate(parts) if parts else np.zeros(0, ASSOCIATED_DTYPE)
    region = np.concatenate(region) if region else np.zeros(0, np.int64)
    order = np.argsort(src["diaSourceId"], kind="stable")
    src, region = src[order], region[order]
    ra0, dec0 = ctx.skymap.ra, ctx.skymap.dec
    src["diaObjectId"] = merge_regions(src, src["diaObjectId"], region, ctx.cfg.associate.radius, ra0, dec0)
    objects = dia_objects(src, src["diaObjectId"], list(ctx.cfg.cadence.bands), ra0, dec0)
    out = ctx.path(layout.DIA_OBJECT)
    with atomic_h5(out) as fh:
        write_table(fh, "dia_object", objects)
        write_table(fh, "dia_source", src)
        fh.attrs.update(radius_arcsec=ctx.cfg.associate.radius, bands=list(ctx.cfg.cadence.bands),
                        n_patches=len(patches))
    ctx.log_line(f"associate: {len(src)} DiaSources in {len(objects)} DiaObjects")
    return {layout.DIA_OBJECT: os.path.getsize(out)}


STAGE = AssociateStage()
