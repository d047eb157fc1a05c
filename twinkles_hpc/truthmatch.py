"""Positional match of Objects to the simulation's truth (the ObjectTruthMatch table).

Level 2 never sees the truth; this module, outside level2, joins the two afterwards:

    rows = match_objects(objects, "RUNDIR/truth.h5", radius_arcsec=1.0)

`objects` is any table with `objectId`, `psRa`, `psDecl` (deg; an objects/patch-I-J.h5 table, an astropy
Table, a dict of arrays); when it has `detect_isPrimary` only the primary rows are matched. The result is
a MATCH_DTYPE array with one row per (Object, truth source) pair closer than the radius, sorted by
(objectId, distance, truthId): the first row of an Object is its nearest truth source.

Truth sources (truth.h5): stars (`stars.id`), galaxies (`galaxies.id`, lens galaxies included),
supernovae (`supernovae.id`) and lensed quasar images (`lensed_images.image_id`); truthKind says which
table the id belongs to. Ids are unique across kinds (the kind is part of the id).

A supernova or a lensed image sits on a galaxy, so the Object measured there usually has the galaxy as
its nearest truth source; keeping every pair within the radius lets a user go from the transient to the
Object (ObjectTruthMatch WHERE truthId = SNID, nearest first: `twinkles-hpc lightcurve --truth-id`).

To match many tables against one truth file, build the tree once: `TruthCatalog(path).match(objects)`.
"""
import numpy as np
from scipy.spatial import cKDTree

from twinkles_hpc.errors import InputError
from twinkles_hpc.store.atomic import open_read

TRUTH_KINDS = ("star", "galaxy", "supernova", "lensed_image")
#: truthKind -> (truth.h5 dataset, id column)
TRUTH_DATASETS = {"star": ("stars", "id"), "galaxy": ("galaxies", "id"), "supernova": ("supernovae", "id"),
                  "lensed_image": ("lensed_images", "image_id")}
MATCH_DTYPE = np.dtype([("objectId", "i8"), ("truthId", "i8"), ("truthKind", "U12"),
                        ("distance_arcsec", "f8")])
TRUTH_DTYPE = np.dtype([("truthId", "i8"), ("truthKind", "U12"), ("ra", "f8"), ("dec", "f8")])
DEFAULT_RADIUS_ARCSEC = 1.0


def unit_vectors(ra_deg, dec_deg):
    """(n, 3) unit vectors of RA, Dec (deg): chord distance between them is 2 sin(angle / 2)."""
    ra, dec = np.deg2rad(np.asarray(ra_deg, np.float64)), np.deg2rad(np.asarray(dec_deg, np.float64))
    return np.column_stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)])


def read_truth_positions(truth_h5_path, kinds=TRUTH_KINDS):
    """TRUTH_DTYPE rows (truthId, truthKind, ra, dec) of every truth source of `kinds`; only the id and
    position columns are read, so memory is 32 bytes a source."""
    parts = []
    with open_read(truth_h5_path) as fh:
        for kind in kinds:
            if kind not in TRUTH_DATASETS:
                raise InputError("truth match", "kind", f"one of {TRUTH_KINDS}", kind)
            name, idcol = TRUTH_DATASETS[kind]
            if name not in fh or len(fh[name]) == 0:
                continue
            ds = fh[name]
            part = np.empty(len(ds), TRUTH_DTYPE)
            part["truthId"], part["ra"], part["dec"] = (ds.fields(c)[...] for c in (idcol, "ra", "dec"))
            part["truthKind"] = kind
            parts.append(part)
    return np.concatenate(parts) if parts else np.zeros(0, TRUTH_DTYPE)


class TruthCatalog:
    """The truth sources of one run in a KD-tree on unit vectors: build once, match many Object tables."""

    def __init__(self, truth, kinds=TRUTH_KINDS):
        """`truth`: a truth.h5 path or TRUTH_DTYPE rows."""
        self.truth = read_truth_positions(truth, kinds) if isinstance(truth, (str, bytes)) or hasattr(
            truth, "__fspath__") else np.asarray(truth, TRUTH_DTYPE)
        self.tree = cKDTree(unit_vectors(self.truth["ra"], self.truth["dec"]))

    def match(self, objects, radius_arcsec=DEFAULT_RADIUS_ARCSEC):
        """MATCH_DTYPE rows: every (primary Object, truth source) pair closer than `radius_arcsec`,
        sorted by (objectId, distance_arcsec, truthId)."""
        if not radius_arcsec > 0:
            raise InputError("truth match", "radius_arcsec", "a positive radius", radius_arcsec)
        oid, ra, dec = _object_columns(objects)
        if len(oid) == 0 or len(self.truth) == 0:
            return np.zeros(0, MATCH_DTYPE)
        chord = 2.0 * np.sin(np.deg2rad(radius_arcsec / 3600.0) / 2.0)
        pairs = cKDTree(unit_vectors(ra, dec)).sparse_distance_matrix(self.tree, chord, output_type="ndarray")
        out = np.empty(len(pairs), MATCH_DTYPE)
        out["objectId"] = oid[pairs["i"]]
        out["truthId"] = self.truth["truthId"][pairs["j"]]
        out["truthKind"] = self.truth["truthKind"][pairs["j"]]
        out["distance_arcsec"] = np.rad2deg(2.0 * np.arcsin(np.minimum(pairs["v"] / 2.0, 1.0))) * 3600.0
        return out[np.lexsort((out["truthId"], out["distance_arcsec"], out["objectId"]))]


def match_objects(objects, truth_h5_path, radius_arcsec=DEFAULT_RADIUS_ARCSEC, kinds=TRUTH_KINDS):
    """Every (primary Object, truth source) pair within `radius_arcsec`: MATCH_DTYPE rows (objectId,
    truthId, truthKind, distance_arcsec) sorted by (objectId, distance, truthId). See the module doc."""
    return TruthCatalog(truth_h5_path, kinds).match(objects, radius_arcsec)


def nearest(matches):
    """The first (nearest) row of each Object in sorted MATCH_DTYPE rows."""
    if len(matches) == 0:
        return matches
    first = np.ones(len(matches), bool)
    first[1:] = matches["objectId"][1:] != matches["objectId"][:-1]
    return matches[first]


def _object_columns(objects):
    names = objects.dtype.names if hasattr(objects, "dtype") and objects.dtype.names else list(objects.keys())
    missing = [c for c in ("objectId", "psRa", "psDecl") if c not in names]
    if missing:
        raise InputError("truth match", missing[0], "an Object table with objectId, psRa, psDecl (deg)")
    keep = np.asarray(objects["detect_isPrimary"], bool) if "detect_isPrimary" in names else slice(None)
    return (np.asarray(objects["objectId"], np.int64)[keep], np.asarray(objects["psRa"], np.float64)[keep],
            np.asarray(objects["psDecl"], np.float64)[keep])
