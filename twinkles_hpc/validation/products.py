"""Reading a run directory for validation: its config, truth, Objects, ForcedSource and coadd coverage.

A product the run's config says must exist but does not raises InputError naming the file (exit 2).
"""
import glob
import os

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

from twinkles_hpc import config as config_mod
from twinkles_hpc import instrument
from twinkles_hpc import rundir as rundir_mod
from twinkles_hpc.errors import InputError
from twinkles_hpc.rundir import layout
from twinkles_hpc.store.atomic import open_read
from twinkles_hpc.store.tables import read_table


def null_metric(reason, **extra):
    return {"value": None, "reason": reason, **extra}


def need(path, expected):
    if not os.path.exists(path):
        raise InputError(path, "file", expected, "missing")
    return path


def read_attrs(path):
    with open_read(path) as fh:
        return {k: (v.item() if hasattr(v, "item") else v) for k, v in fh.attrs.items()}


def read_h5_table(path, name):
    with open_read(path) as fh:
        return read_table(fh[name])


def load_config(rundir, thresholds_toml=None):
    """The run's config (config.json); [validate] from `thresholds_toml` when given."""
    if not os.path.isdir(rundir):
        raise InputError(rundir, "run directory", "an existing twinkles-hpc run directory", "not found")
    need(os.path.join(rundir, layout.CONFIG_JSON), "the run's config (a twinkles-hpc run directory)")
    cfg = rundir_mod.load_config(rundir)
    if thresholds_toml:
        cfg.validate = config_mod.load(thresholds_toml).validate
    return cfg


def galaxy_mag(g, band):
    """Total (bulge + disk) AB magnitude; a component without light has mag +inf."""
    with np.errstate(divide="ignore"):
        return -2.5 * np.log10(10 ** (-0.4 * g[f"bulge_mag_{band}"]) + 10 ** (-0.4 * g[f"disk_mag_{band}"]))


def read_truth(rundir):
    path = need(os.path.join(rundir, layout.TRUTH), "the truth catalogues (stage sky)")
    with open_read(path) as fh:
        t = {k: read_table(fh[k]) for k in ("stars", "galaxies", "supernovae", "lensed_images") if k in fh}
        t["ra0"], t["dec0"] = float(fh.attrs["ra"]), float(fh.attrs["dec"])
    return t


def read_objects(rundir, cfg):
    """Primary Objects of every patch (the union has each source once)."""
    if not cfg.objects.enabled:
        return None
    paths = sorted(glob.glob(os.path.join(rundir, layout.OBJECTS_GLOB)))
    if not paths:
        need(os.path.join(rundir, layout.OBJECTS_GLOB), "Object tables ([objects] enabled = true)")
    parts = [read_h5_table(p, "objects") for p in paths]
    bands = [b for b in instrument.BANDS if f"{b}PsFlux" in parts[0].dtype.names]
    cols = ["objectId", "psRa", "psDecl", "extendedness", "detect_isPrimary"] + [
        f"{b}{c}" for b in bands for c in ("PsFlux", "PsFluxSigma", "Flags")]
    objs = np.concatenate([p[cols] for p in parts])
    return objs[objs["detect_isPrimary"]], bands


class Coverage:
    """Where the coadds have data: the union over patches of each patch's inner box on pixels with at least
    one input visit in any band. Calling it with (ra, dec) arrays (deg) says which positions are covered;
    `visits(ra, dec)` gives the number of input visits there, all bands together; `area` is the covered area
    (arcmin^2)."""

    def __init__(self, rundir):
        planes = {}
        for path in sorted(glob.glob(os.path.join(rundir, layout.COADD_GLOB))):
            with open_read(path) as fh:
                a = {k: fh.attrs[k] for k in ("wcs", "bbox", "inner_bbox")}
                n = fh["n_visits"][...].astype(np.int32)
            key = os.path.basename(path)                       # the same patch in every band
            planes[key] = (a, n + planes[key][1]) if key in planes else (a, n)
        self.patches, self.area = [], 0.0
        for a, count in planes.values():
            x0, y0 = a["inner_bbox"][0] - a["bbox"][0], a["inner_bbox"][1] - a["bbox"][1]
            box = np.s_[y0:y0 + a["inner_bbox"][3], x0:x0 + a["inner_bbox"][2]]
            inner = np.zeros_like(count)                        # the visits on the inner box, 0 elsewhere
            inner[box] = count[box]
            w = WCS(fits.Header.fromstring(str(a["wcs"])))
            pixel_arcsec = float(np.sqrt(abs(np.linalg.det(w.pixel_scale_matrix)))) * 3600.0
            self.area += int(np.count_nonzero(inner)) * pixel_arcsec ** 2 / 3600.0
            self.patches.append((w, inner))

    def __call__(self, ra, dec):
        return self.visits(ra, dec) > 0

    def visits(self, ra, dec):
        out = np.zeros(len(ra), np.int64)
        for w, count in self.patches:                           # inner boxes do not overlap
            x, y = w.all_world2pix(ra, dec, 0)
            ix, iy = np.rint(x).astype(int), np.rint(y).astype(int)
            on = (ix >= 0) & (iy >= 0) & (ix < count.shape[1]) & (iy < count.shape[0])
            out[on] += count[iy[on], ix[on]]
        return out


def read_sources(rundir, visits, cfg):
    """Every calibrated visit's calexp source table: (list of (visit_id, band, table), reason or None).
    Failed calibrations have none and are left out; the reason says why nothing could be read."""
    if not cfg.calexp.enabled:
        return [], "no calexps: [calexp] enabled = false"
    out, old = [], 0
    for v in visits:
        path = os.path.join(rundir, layout.calexp(v["visit_id"], v["band"]))
        with open_read(need(path, "a calexp ([calexp] enabled = true)")) as fh:
            if not fh.attrs.get("calib_ok", True):
                continue
            if "sources" not in fh:
                old += 1
                continue
            out.append((int(v["visit_id"]), str(v["band"]), read_table(fh["sources"])))
    if not out:
        return out, ("no calibrated calexp has a source table" + (f" ({old} calexps written before calexps kept "
                     "one: rerun the calexp stage)" if old else ""))
    return out, None


def read_forced(rundir, visits, cfg):
    """Every visit's forced_source rows, with the visit's band: dict band -> structured array."""
    if not cfg.forced.enabled:
        return None
    out = {}
    for v in visits:
        path = need(os.path.join(rundir, layout.forced(v["visit_id"], v["band"])),
                    "forced photometry ([forced] enabled = true)")
        out.setdefault(str(v["band"]), []).append(read_h5_table(path, "forced_source"))
    return {b: np.concatenate(parts) for b, parts in out.items()}


def variable_true_fluxes(rundir, ids):
    """({(source_id, visit_id): true flux in nJy}, {source_id: peak true flux}) of the variables `ids` over
    the run's visits (variables/truth-KKKK.h5)."""
    true, peak = {}, {}
    for path in sorted(glob.glob(os.path.join(rundir, layout.VARIABLES_TRUTH_GLOB))):
        t = read_h5_table(path, "truth")
        t = t[np.isin(t["source_id"], ids)]
        for s, v, f in zip(t["source_id"].tolist(), t["visit_id"].tolist(), t["flux_njy"].tolist()):
            true[(s, v)] = f
            peak[s] = max(peak.get(s, 0.0), f)
    return true, peak
