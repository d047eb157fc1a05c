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
from twinkles_hpc.store.atomic import attrs_dict, open_read
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
        a = attrs_dict(fh)
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


# ---- DiaObject, DiaSource, DiaObjectTruthMatch, DiaForcedSource ------------------------------------------

def dia_object_rows(objects):
    """The DiaObject columns (dict of arrays) of an associate/dia_object.h5 `dia_object` table: its columns
    (the schema's names) and flags 0."""
    cols = {name: objects[name] for name in objects.dtype.names}
    cols["flags"] = np.zeros(len(objects), np.int64)
    return cols


def ingest_dia_objects(engine, dia_object_path, *, batch_size=50_000, on_batch=None):
    """DiaObject rows of the run (one transaction)."""
    with open_read(dia_object_path) as fh:
        t = read_table(fh["dia_object"])
    return db.ingest(engine, "DiaObject", dia_object_rows(t), batch_size=batch_size, on_batch=on_batch)


#: DiaSource columns of a diffim product's dia_source table (diaObjectId comes from the association)
DIA_SOURCE_COLUMNS = ("diaSourceId", "ccdVisitId", "midPointTai", "filterName", "ra", "decl", "x", "y", "psFlux",
                      "psFluxErr", "snr", "flags")


def ingest_dia_sources(engine, diffim_paths, dia_object_path, *, batch_size=50_000, on_batch=None):
    """DiaSource rows: every DiaSource of every difference (diffim/vNNNNNNNN-B.h5), with its diaObjectId
    from the association (NULL for those not associated), one transaction per visit."""
    with open_read(dia_object_path) as fh:
        assoc = fh["dia_source"].fields(["diaSourceId", "diaObjectId"])[...]
    order = np.argsort(assoc["diaSourceId"])
    keys, values = assoc["diaSourceId"][order], assoc["diaObjectId"][order]
    n = 0
    for p in diffim_paths:
        with open_read(p) as fh:
            t = read_table(fh["dia_source"])
        if len(t) == 0:
            continue
        cols = {c: t[c] for c in DIA_SOURCE_COLUMNS}
        found = np.isin(t["diaSourceId"], keys)
        obj = np.zeros(len(t), np.int64)
        obj[found] = values[np.searchsorted(keys, t["diaSourceId"][found])]
        cols["diaObjectId"] = np.ma.masked_array(obj, ~found)
        n += db.ingest(engine, "DiaSource", cols, batch_size=batch_size, on_batch=on_batch)
    return n


def ingest_dia_truth_match(engine, dia_object_path, truth_path, radius_arcsec, *, batch_size=50_000,
                           on_batch=None):
    """DiaObjectTruthMatch rows: every (DiaObject, true supernova or lensed image) pair within
    `radius_arcsec` (truthmatch.py), one transaction."""
    from twinkles_hpc.truthmatch import TruthCatalog
    with open_read(dia_object_path) as fh:
        t = fh["dia_object"].fields(["diaObjectId", "ra", "decl"])[...]
    m = TruthCatalog(truth_path, kinds=("supernova", "lensed_image")).match(
        {"objectId": t["diaObjectId"], "psRa": t["ra"], "psDecl": t["decl"]}, radius_arcsec)
    cols = {"diaObjectId": m["objectId"], "truthId": m["truthId"], "truthKind": m["truthKind"],
            "distance_arcsec": m["distance_arcsec"]}
    return db.ingest(engine, "DiaObjectTruthMatch", cols, batch_size=batch_size, on_batch=on_batch)


DIA_FORCED_COLUMNS = ("diaObjectId", "ccdVisitId", "filterName", "midPointTai", "psFlux", "psFluxErr", "totFlux",
                      "totFluxErr", "flags")


def ingest_dia_forced(engine, dia_forced_paths, *, batch_size=50_000, on_batch=None):
    """DiaForcedSource rows of every diaforced/vNNNNNNNN-B.h5 file, one transaction per file."""
    n = 0
    for p in dia_forced_paths:
        with open_read(p) as fh:
            t = read_table(fh["dia_forced_source"])
        n += db.ingest(engine, "DiaForcedSource", {c: t[c] for c in DIA_FORCED_COLUMNS}, batch_size=batch_size,
                       on_batch=on_batch)
    return n


#: LensedImage columns of lenses/scenes.h5 `images`.
LENSED_IMAGE_COLUMNS = ("lensedImageId", "lensSystemId", "imageIndex", "ra", "decl") + tuple(
    f"{b}{c}" for c in ("PsFluxMean", "PsFluxMeanErr") for b in schema.BANDS)
#: LensedImageForcedSource columns of a lensphot product.
LENSED_FORCED_COLUMNS = ("lensedImageId", "ccdVisitId", "lensSystemId", "filterName", "midPointTai", "psFlux",
                         "psFluxErr", "directFlux", "directFluxErr", "diffFlux", "diffFluxErr", "templateFlux",
                         "galaxyFlux", "flags")


def ingest_lensed_images(engine, scenes_path, *, batch_size=50_000, on_batch=None):
    """LensedImage rows of the scene models (one transaction)."""
    with open_read(scenes_path) as fh:
        t = read_table(fh["images"])
    return db.ingest(engine, "LensedImage", {c: t[c] for c in LENSED_IMAGE_COLUMNS}, batch_size=batch_size,
                     on_batch=on_batch)


def ingest_lensed_forced(engine, lensphot_paths, *, batch_size=50_000, on_batch=None):
    """LensedImageForcedSource rows of every lensphot/vNNNNNNNN-B.h5 file, one transaction per file."""
    n = 0
    for p in lensphot_paths:
        with open_read(p) as fh:
            t = read_table(fh["lensed_image_forced_source"])
        n += db.ingest(engine, "LensedImageForcedSource", {c: t[c] for c in LENSED_FORCED_COLUMNS},
                       batch_size=batch_size, on_batch=on_batch)
    return n


def ingest_lensed_truth_match(engine, scenes_path, truth_path, radius_arcsec, *, batch_size=50_000,
                              on_batch=None):
    """LensedImageTruthMatch rows: every (LensedImage, true lensed image) pair within `radius_arcsec`."""
    from twinkles_hpc.truthmatch import TruthCatalog
    with open_read(scenes_path) as fh:
        t = fh["images"].fields(["lensedImageId", "ra", "decl"])[...]
    m = TruthCatalog(truth_path, kinds=("lensed_image",)).match(
        {"objectId": t["lensedImageId"], "psRa": t["ra"], "psDecl": t["decl"]}, radius_arcsec)
    cols = {"lensedImageId": m["objectId"], "truthId": m["truthId"], "truthKind": m["truthKind"],
            "distance_arcsec": m["distance_arcsec"]}
    return db.ingest(engine, "LensedImageTruthMatch", cols, batch_size=batch_size, on_batch=on_batch)
