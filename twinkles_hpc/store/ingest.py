"""The ingest stage: a run directory's Level 2 products and truth -> the catalogue database.

Each step streams its files: one file (a calexp's attributes, a patch's Objects, a visit's ForcedSource
rows) is read, converted and handed to db.ingest as one call, so memory is bounded by the largest file
and every file is one transaction (all or nothing). db.ingest skips rows whose key is present, so a
step that was killed half-way is completed by running it again, and the result is the same database as
an uninterrupted run. The task graph (parallel/campaign.py) chains the steps so that only one process
writes at a time (SQLite allows one writer). See docs/database.md.
"""

import numpy as np
import sqlalchemy as sa

from twinkles_hpc.store import db, schema
from twinkles_hpc.store.atomic import open_read
from twinkles_hpc.store.tables import read_table

#: Our single sensor (the Twinkles sensor: raft R22, sensor S11); ccdVisitId = visitId.
RAFT_NAME, CCD_NAME = "R22", "S11"


# ---- CcdVisit ------------------------------------------------------------------------------------------

def ccd_visit_row(calexp_path, psf_fwhm):
    """The CcdVisit row of one calexp (a dict of scalars), from its attributes only (no pixels read).

    obsStart is the visit's MJD (OpSim's start of exposure), expMidpt adds half the exposure; ra/decl are
    the fitted WCS at the sensor centre; zenithDistance = arccos(1 / airmass) (plane-parallel); seeing is
    the PSF model's FWHM at the sensor centre, `psf_fwhm(psf_json, x, y)` in pixels (the caller knows the
    PSF model: the store knows formats, not algorithms); skyBg the median background (e-/pixel) and skyNoise
    its noise per pixel, sqrt(skyBg / gain + read_noise^2), as calibrate's variance plane models it.
    """
    from astropy.io import fits
    from astropy.wcs import WCS
    from astropy.wcs.utils import proj_plane_pixel_scales

    with open_read(calexp_path) as fh:
        a = {k: (v.item() if hasattr(v, "item") and np.ndim(v) == 0 else v) for k, v in fh.attrs.items()}
        ny, nx = fh["image"].shape
    wcs = WCS(fits.Header.fromstring(str(a["wcs"])))
    cx, cy = (nx - 1) / 2.0, (ny - 1) / 2.0
    ra, dec = (float(v) for v in wcs.all_pix2world([[cx, cy]], 0)[0])
    scale = float(np.mean(proj_plane_pixel_scales(wcs.celestial))) * 3600.0
    fwhm = float(psf_fwhm(a["psf"], cx, cy))
    mjd, exptime = float(a["mjd"]), float(a["exptime"])
    sky = float(a.get("background_level", np.nan))
    return dict(ccdVisitId=int(a["visit_id"]), visitId=int(a["visit_id"]), raftName=RAFT_NAME,
                ccdName=CCD_NAME, filterName=str(a["band"]), obsStart=mjd,
                expMidpt=mjd + 0.5 * exptime / 86400.0, expTime=exptime, ra=ra, decl=dec,
                zenithDistance=float(np.rad2deg(np.arccos(1.0 / float(a["airmass"])))),
                xSize=int(nx), ySize=int(ny), zeroPoint=float(a["zero_point"]), seeing=fwhm * scale,
                skyBg=sky, skyNoise=float(np.sqrt(sky / float(a.get("gain", 1.0)) + float(a["read_noise"]) ** 2)),
                flags=0)


def ingest_ccd_visits(engine, calexp_paths, psf_fwhm, *, batch_size=50_000, on_batch=None):
    """CcdVisit rows of every calexp, one transaction (a row is ~200 bytes: a million visits fit)."""
    rows = [ccd_visit_row(p, psf_fwhm) for p in calexp_paths]
    if not rows:
        return 0
    cols = {k: np.array([r[k] for r in rows]) for k in rows[0]}
    return db.ingest(engine, "CcdVisit", cols, batch_size=batch_size, on_batch=on_batch)


# ---- Object --------------------------------------------------------------------------------------------

#: objects table columns that map to Object columns of the same name, when present
OBJECT_COLUMNS = ("objectId", "psRa", "psDecl", "extendedness", "Ixx", "Iyy", "Ixy", "shape_flag",
                  *(f"{b}PsFlux{s}" for b in schema.BANDS for s in ("", "Sigma")))


def object_rows(objects):
    """The Object columns (dict of arrays) of the primary rows of an objects/patch-I-J.h5 table:
    parentObjectId 0 (not deblended) becomes NULL, detFlags becomes flags; bands and shape columns the
    file lacks stay NULL."""
    t = objects[np.asarray(objects["detect_isPrimary"], bool)]
    cols = {c: t[c] for c in OBJECT_COLUMNS if c in t.dtype.names}
    cols["parentObjectId"] = np.ma.masked_equal(t["parentObjectId"].astype(np.int64), 0)
    cols["flags"] = t["detFlags"].astype(np.int64)
    return cols


def ingest_objects(engine, objects_paths, *, batch_size=50_000, on_batch=None):
    """Object rows of every patch's primary Objects, one transaction per patch."""
    n = 0
    for p in objects_paths:
        with open_read(p) as fh:
            t = read_table(fh["objects"])
        n += db.ingest(engine, "Object", object_rows(t), batch_size=batch_size, on_batch=on_batch)
    return n


def ingest_truth_match(engine, objects_paths, truth_path, radius_arcsec, *, batch_size=50_000,
                       on_batch=None):
    """ObjectTruthMatch rows: every (primary Object, truth source) pair within `radius_arcsec`
    (truthmatch.py), one transaction per patch; the truth tree is built once."""
    from twinkles_hpc.truthmatch import TruthCatalog
    catalog = TruthCatalog(truth_path)
    n = 0
    for p in objects_paths:
        with open_read(p) as fh:
            t = fh["objects"].fields(["objectId", "psRa", "psDecl", "detect_isPrimary"])[...]
        m = catalog.match(t, radius_arcsec)
        n += db.ingest(engine, "ObjectTruthMatch", {k: m[k] for k in m.dtype.names}, batch_size=batch_size,
                       on_batch=on_batch)
    return n


# ---- ForcedSource --------------------------------------------------------------------------------------

FORCED_COLUMNS = ("objectId", "ccdVisitId", "psFlux", "psFlux_Sigma", "flags")


def ingest_forced(engine, forced_paths, *, batch_size=50_000, on_batch=None):
    """ForcedSource rows of every forced/vNNNNNNNN-B.h5 file, one transaction per file. A file whose
    ccdVisitId already has as many rows as the file is skipped unread (a rerun after a crash redoes
    only the files that were not committed)."""
    fs = schema.ForcedSource
    n = 0
    for p in forced_paths:
        with open_read(p) as fh:
            ds = fh["forced_source"]
            want, ccd_visit_id = len(ds), int(fh.attrs["ccdVisitId"])
            with engine.connect() as conn:
                have = conn.execute(sa.select(sa.func.count()).select_from(fs)
                                    .where(fs.c.ccdVisitId == ccd_visit_id)).scalar()
            if have == want:
                continue
            rows = ds.fields(list(FORCED_COLUMNS))[...]
        n += db.ingest(engine, "ForcedSource", {c: rows[c] for c in FORCED_COLUMNS}, batch_size=batch_size,
                       on_batch=on_batch)
    return n
