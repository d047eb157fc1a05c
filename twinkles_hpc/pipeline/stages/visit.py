"""Stage visit: one simulated image (eimage) per visit, with mid-visit checkpoints; after the last visit,
one HDF5 virtual dataset per band over the eimages."""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from twinkles_hpc.options import opt
from twinkles_hpc.pipeline.stage import SIMULATION, Stage
from twinkles_hpc.pipeline.stages.variables import truth_chunks
from twinkles_hpc.rundir import layout
from twinkles_hpc.store.atomic import atomic_h5


@dataclass
class VisitSection:
    psf_fwhm_gradient: float = opt(0.05, "",
                                   "Fractional growth of the PSF FWHM from sensor centre to corner.",
                                   lo=0.0, hi=1.0)
    psf_ellip_gradient: float = opt(0.02, "", "PSF ellipticity at the sensor corner.", lo=0.0, hi=0.5)
    chunk_objects: int = opt(4000, "objects",
                             "Objects rendered between mid-visit checkpoint opportunities.", lo=1)
    checkpoint_interval: float = opt(120.0, "s",
                                     "Write a mid-visit checkpoint after a chunk when this long has "
                                     "passed since the last one (0 = after every chunk).", lo=0.0)
    pointing_error: float = opt(1.0, "arcsec",
                                "Rms telescope pointing error per axis: the image is rendered at the true "
                                "pointing, the eimage header carries the nominal one.", lo=0.0)
    rotation_error: float = opt(30.0, "arcsec", "Rms rotator (rotSkyPos) error.", lo=0.0)
    compression: str = opt("none", "", "HDF5 compression of pixel planes.",
                           choices=("none", "lzf", "gzip"))
    fits: bool = opt(False, "", "Also write each eimage as FITS (with WCS) beside the HDF5 file.")
    noise: bool = opt(True, "", "Add sky, Poisson and read noise (False: expected electrons, for tests).")
    cosmic_ray_rate: float = opt(0.04, "1/cm^2/s",
                                 "Cosmic-ray tracks per cm^2 of sensor per second of exposure, added when "
                                 "noise = true (0 = none); ~2x the sea-level muon flux (docs/imsim.md).",
                                 lo=0.0)
    instcat: bool = opt(False, "",
                        "Write a PhoSim instance catalogue per visit (instcat/phosim_cat_NNNNNNNN.txt).")


def visit_cost(visit, sensor):
    """Predicted relative cost of a visit: pixels (noise, I/O) plus PSF area (rendering)."""
    npix = sensor.nx * sensor.ny / 16.288e6
    return float(npix * (1.0 + 0.5 * (visit["fwhm_geom"] / 0.7) ** 2))


class VisitStage(Stage):
    name = "visit"
    doc = "one simulated image (eimage) per visit"
    section = VisitSection
    requires = ("sky",)
    uses = ("variables",)
    outputs = (layout.eimage, layout.band_view)
    colour = "#55a868"
    cost_class = SIMULATION
    optional = False

    def tasks(self, ctx, up):
        chunk_of = {}
        if up.has("variables"):
            for k, ids in enumerate(truth_chunks(ctx.visits)):
                chunk_of.update({int(v): k for v in ids})
        out = []
        for v in ctx.visits:
            vid = int(v["visit_id"])
            k = chunk_of.get(vid)
            key = self.task_key(vid)
            dep = (up.get("variables", layout.chunk_key(k), for_task=layout.task_id(self.name, key))
                   if k is not None else up.get("sky", None, for_task=layout.task_id(self.name, key)))
            out.append(self.task(key, visit_cost(v, ctx.cfg.sensor), deps=(dep,), visit_id=vid, chunk=k))
        return out

    @staticmethod
    def task_key(visit_id):
        return layout.visit_key(visit_id)

    def run(self, ctx, task, should_stop):
        from twinkles_hpc.imsim.visit import VisitSpec, simulate_visit
        from twinkles_hpc.pipeline.stages.variables import visit_variable_mags
        cfg = ctx.cfg
        spec = VisitSpec.from_row(ctx.by_id[task.params["visit_id"]])
        stars, galaxies, variables = ctx.cache("truth").get(ctx.path(layout.TRUTH),
                                                            ("stars", "galaxies", "variables"))
        var_mags = visit_variable_mags(ctx, task.params.get("chunk"), spec.visit_id, variables)
        out = ctx.path(layout.eimage(spec.visit_id, spec.band))
        os.makedirs(os.path.dirname(out), exist_ok=True)
        ckpt = ctx.path(layout.checkpoint(spec.visit_id))
        instcat = None
        if cfg.visit.instcat:
            instcat = ctx.path(layout.instcat(spec.visit_id))
            os.makedirs(os.path.dirname(instcat), exist_ok=True)
        written = simulate_visit(spec, stars, galaxies, cfg, out, ckpt, should_stop, log=ctx.log,
                                 variables=variables, var_mags=var_mags, instcat_path=instcat,
                                 on_chunk=ctx.hooks.on_chunk, on_checkpoint=ctx.hooks.on_checkpoint)
        return {os.path.relpath(p, ctx.rundir): n for p, n in written.items()}

    def finalise(self, ctx):
        write_band_views(ctx.rundir, ctx.visits, ctx.cfg.sensor)
        d = ctx.path(layout.CHECKPOINTS)
        if os.path.isdir(d) and not any(f.endswith(".h5") for f in os.listdir(d)):
            import shutil
            shutil.rmtree(d, ignore_errors=True)


def write_band_views(rundir, visits, sensor):
    """Per band, one HDF5 virtual dataset (n_visits, ny, nx) over the per-visit eimage files."""
    import h5py
    out = {}
    for band in sorted(set(visits["band"])):
        vb = visits[visits["band"] == band]
        layout_ = h5py.VirtualLayout(shape=(len(vb), sensor.ny, sensor.nx), dtype="f4")
        for i, v in enumerate(vb):
            src = os.path.basename(layout.eimage(v["visit_id"], band))
            layout_[i] = h5py.VirtualSource(src, "image", shape=(sensor.ny, sensor.nx))
        path = os.path.join(rundir, layout.band_view(band))
        with atomic_h5(path) as fh:
            fh.create_virtual_dataset("image", layout_, fillvalue=np.nan)
            fh.create_dataset("visit_id", data=vb["visit_id"])
            fh.create_dataset("mjd", data=vb["mjd"])
        out[band] = path
    return out


STAGE = VisitStage()
