"""Stage diaforced: forced photometry of every DiaObject on every difference image of the survey, before
its first detection too, and on the calexp (DiaForcedSource; docs/diffim.md, "DIA forced photometry")."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np

from twinkles_hpc.options import opt
from twinkles_hpc.pipeline.stage import PER_VISIT, Stage, Switch, per_visit_ingest_steps
from twinkles_hpc.pipeline.stages.associate import MERGE_KEY
from twinkles_hpc.pipeline.stages.visit import visit_cost
from twinkles_hpc.rundir import layout
from twinkles_hpc.store.atomic import atomic_h5, attrs_dict, open_read
from twinkles_hpc.store.tables import write_table

#: Record dtype of DiaForcedSource (DPDD names; fluxes in nJy): psFlux on the difference, totFlux the PSF
#: flux on the calexp (the direct flux), flags those of the difference's photometry.
DIA_FORCED_DTYPE = np.dtype([("diaObjectId", "i8"), ("ccdVisitId", "i8"), ("filterName", "U1"),
                             ("midPointTai", "f8"), ("psFlux", "f8"), ("psFluxErr", "f8"), ("totFlux", "f8"),
                             ("totFluxErr", "f8"), ("flags", "i8"), ("x", "f8"), ("y", "f8")])


@dataclass
class DiaforcedSection(Switch):
    """[diaforced]"""
    enabled: bool = opt(False, "", "Forced PSF photometry of every DiaObject on every difference image and "
                        "calexp (diaforced/vNNNNNNNN-B.h5); needs [associate] enabled = true.")


class DiaforcedStage(Stage):
    name = "diaforced"
    doc = "forced photometry of every DiaObject on each difference and calexp (diaforced/vNNNNNNNN-B.h5)"
    section = DiaforcedSection
    requires = ("diffim", "associate")
    outputs = (layout.dia_forced,)
    tables = ("DiaForcedSource",)
    colour = "#8c613c"
    cost_class = PER_VISIT

    def tasks(self, ctx, up):
        """One `diaforced/NNNNNNNN` task per visit, after its difference and the association's merge;
        cost = 0.05 x the visit's."""
        merge = up.get("associate", MERGE_KEY, for_task=layout.task_id(self.name, "*"))
        diffims = up.tasks("diffim")
        return [self.task(layout.visit_key(int(v["visit_id"])), 0.05 * visit_cost(v, ctx.cfg.sensor),
                          deps=[diffims[layout.visit_key(int(v["visit_id"]))], merge], visit_id=int(v["visit_id"]))
                for v in ctx.visits]

    def ingest_steps(self, ctx, up):
        """DiaForcedSource per chunk of visits (stage.per_visit_ingest_steps)."""
        return per_visit_ingest_steps(ctx, up, self.name, "DiaForcedSource", 0.02)

    def ingest(self, ctx, engine, step, params, **kw):
        from twinkles_hpc.store import ingest
        paths = [ctx.path(layout.dia_forced(v, ctx.by_id[v]["band"])) for v in params["visit_ids"]]
        return {step: ingest.ingest_dia_forced(engine, paths, **kw)}

    def run(self, ctx, task, should_stop):
        visit = ctx.by_id[task.params["visit_id"]]
        vid, band = int(visit["visit_id"]), str(visit["band"])
        rel = layout.dia_forced(vid, band)
        out = ctx.path(rel)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        objects, = ctx.cache("dia_object").get(ctx.path(layout.DIA_OBJECT), ("dia_object",))
        rows, reason = force_dia_visit(ctx, visit, objects)
        with atomic_h5(out) as fh:
            write_table(fh, "dia_forced_source", rows)
            fh.attrs.update(visit_id=vid, band=band, ccdVisitId=vid, ok=not reason, reason=reason)
        return {rel: os.path.getsize(out)}


def force_dia_visit(ctx, visit, objects):
    """(DIA_FORCED_DTYPE rows sorted by diaObjectId, reason) for one visit: the DiaObjects that fall on its
    difference image; reason is '' or why the visit has no rows (no difference image)."""
    from twinkles_hpc.level2.forced import force_exposure
    from twinkles_hpc.timedomain import dia
    vid, band = int(visit["visit_id"]), str(visit["band"])
    empty = np.zeros(0, DIA_FORCED_DTYPE)
    with open_read(ctx.path(layout.diffim(vid, band))) as fh:
        if not fh.attrs["diffim_ok"]:
            return empty, f"no difference image: {fh.attrs['diffim_failure']}"
        a = attrs_dict(fh)
        image, variance, mask, psf = (fh[k][...] for k in ("image", "variance", "mask", "psf"))
    err_scale = float(json.loads(a["summary"])["flux_error_scale"])
    prim = np.zeros(len(objects), [("objectId", "i8"), ("psRa", "f8"), ("psDecl", "f8"), ("detect_isPrimary", "?")])
    prim["objectId"], prim["psRa"], prim["psDecl"], prim["detect_isPrimary"] = (
        objects["diaObjectId"], objects["ra"], objects["decl"], True)
    with open_read(ctx.path(layout.calexp(vid, band))) as fh:
        direct = force_exposure(fh["image"][...], fh["variance"][...], fh["mask"][...], attrs_dict(fh), prim)
    if len(direct) == 0:
        return empty, ""
    phot = dia.measure(image, variance, mask, direct["x"], direct["y"], dia.product_psf(a, psf))
    scale = float(a["ap_corr"]) * float(a["flux_njy_per_electron"])
    rows = np.zeros(len(direct), DIA_FORCED_DTYPE)
    rows["diaObjectId"], rows["ccdVisitId"] = direct["objectId"], vid
    rows["filterName"], rows["midPointTai"] = band, float(visit["mjd"])
    rows["psFlux"], rows["psFluxErr"] = phot["psf_flux"] * scale, phot["psf_flux_err"] * err_scale * scale
    rows["totFlux"], rows["totFluxErr"] = direct["psFlux"], direct["psFlux_Sigma"]
    rows["flags"], rows["x"], rows["y"] = phot["flags"], direct["x"], direct["y"]
    return rows, ""


STAGE = DiaforcedStage()
