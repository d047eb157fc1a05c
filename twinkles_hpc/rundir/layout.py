"""Every relative path of a run directory and every task-id format, defined once.

A product's folder is its stage's name (docs/design.md): `visit/`, `calexp/`, `coadd/`, `objects/`,
`forced/`, `variables/`, `ingest/`. Task ids are `STAGE/KEY` (or the bare stage name for a stage with one
task); the key of a per-visit task is the visit id on eight digits. Nothing else in the package spells a
product path or a task id: code finds products through these functions, and docs/data-model.md lists
them (tests/test_rundir.py checks that it does).
"""
from __future__ import annotations

import os

# -- files at the top of a run directory ---------------------------------------------------------
CONFIG_TOML = "config.toml"          # the config as given on the first run
CONFIG_JSON = "config.json"          # its canonical form: a rerun must match it
VISITS = "visits.h5"                 # the selected cadence, table `visits`
TRUTH = "truth.h5"                   # the input sky and the variable sources (stage sky)
REFCAT = "refcat.h5"                 # the six-band reference catalogue (stage sky)
SKYMAP = "skymap.json"               # the tract and its patches (stage coadd)
SQLITE = "level2.sqlite"             # the default catalogue database (stage ingest)
JOURNAL = "journal.jsonl"            # append-only record of finished tasks
TRACE = "trace.jsonl"                # one record per finished task: rank, start, end, CPU, bytes, memory, steps
FAILURES = "failures.log"            # the traceback of a failed task
LOCK = ".lock"                       # flock held by rank 0 while a run is active
CHECKPOINTS = "checkpoints"          # partial visits (mid-visit checkpoints)
VALIDATION = "validation.json"       # `twinkles-hpc validate --json` as `make demo` writes it
REPORT = "report"                    # `twinkles-hpc report`'s default output folder
INSTCAT = "instcat"                  # PhoSim instance catalogues ([visit] instcat = true)

#: Visits per `variables/KKKK` task (the truth of the variable sky for a range of visits).
VISITS_PER_TRUTH_CHUNK = 500
#: Visits per `ingest/ForcedSource/KKKK` task (inside it, each visit's file is one transaction).
VISITS_PER_INGEST_CHUNK = 100


# -- task ids ------------------------------------------------------------------------------------
def visit_key(visit_id):
    """The key of a per-visit task: the visit id on eight digits."""
    return f"{int(visit_id):08d}"


def chunk_key(k):
    return f"{int(k):04d}"


def patch_key(i, j):
    return f"{int(i)}-{int(j)}"


def task_id(stage, key=None):
    """`stage/key`, or `stage` for a stage with a single task."""
    return stage if key is None else f"{stage}/{key}"


def split_task_id(tid):
    """(stage, key or None) of a task id."""
    stage, _, key = tid.partition("/")
    return stage, (key or None)


# -- per-product paths ---------------------------------------------------------------------------
def _per_visit(folder, visit_id, band):
    return os.path.join(folder, f"v{visit_key(visit_id)}-{band}.h5")


def eimage(visit_id, band):
    """The simulated image of a visit (stage visit)."""
    return _per_visit("visit", visit_id, band)


def band_view(band):
    """The per-band HDF5 virtual dataset over the eimages, written after the last visit."""
    return os.path.join("visit", f"band-{band}.h5")


def eimage_fits(visit_id, band):
    return os.path.splitext(eimage(visit_id, band))[0] + ".fits"


def checkpoint(visit_id):
    return os.path.join(CHECKPOINTS, f"v{visit_key(visit_id)}.h5")


def instcat(visit_id):
    return os.path.join(INSTCAT, f"phosim_cat_{visit_key(visit_id)}.txt")


def variables_truth(k):
    """True magnitudes of every variable source in the visits of chunk k (stage variables)."""
    return os.path.join("variables", f"truth-{chunk_key(k)}.h5")


VARIABLES_TRUTH_GLOB = os.path.join("variables", "truth-*.h5")


def calexp(visit_id, band):
    """The calibrated exposure of a visit (stage calexp)."""
    return _per_visit("calexp", visit_id, band)


def coadd(band, i, j):
    """The coadd of patch (i, j) in one band (stage coadd)."""
    return os.path.join("coadd", band, f"patch-{patch_key(i, j)}.h5")


COADD_GLOB = os.path.join("coadd", "*", "patch-*.h5")


def tile_of(patch_file, k):
    """Tile `k` of a coadd or template patch file (relpath) coadded by a task of its own ([coadd]
    task_visits): `tiles/patch-I-J-tK.h5` beside it, or with k = "inputs" `tiles/patch-I-J-inputs.h5`
    (what the tiles read of their inputs); removed once the patch's file is assembled."""
    folder, name = os.path.split(patch_file)
    suffix = "inputs" if k == "inputs" else f"t{int(k):04d}"
    return os.path.join(folder, "tiles", f"{name[:-len('.h5')]}-{suffix}.h5")


def detection_coadd(i, j):
    """The multi-band detection coadd of patch (i, j), written by the objects stage."""
    return os.path.join("objects", f"detection-{patch_key(i, j)}.h5")


DETECTION_COADD_GLOB = os.path.join("objects", "detection-*.h5")


def objects(i, j):
    """The Object table of patch (i, j) (stage objects)."""
    return os.path.join("objects", f"patch-{patch_key(i, j)}.h5")


OBJECTS_GLOB = os.path.join("objects", "patch-*.h5")


def template(band, i, j, year=None):
    """The template coadd of patch (i, j) in one band (stage template): from the whole survey, or (yearly
    templates) for the visits of year `year`, from the visits of earlier years."""
    name = f"patch-{patch_key(i, j)}.h5"
    return os.path.join("template", band, name) if year is None else os.path.join("template", band, f"y{year}", name)


def forced(visit_id, band):
    """Forced photometry of the primary Objects on a visit's calexp (stage forced)."""
    return _per_visit("forced", visit_id, band)


def diffim(visit_id, band):
    """A visit's difference image against its template, with its DiaSources (stage diffim)."""
    return _per_visit("diffim", visit_id, band)


def diffim_fits(visit_id, band):
    """The FITS export of a visit's difference ([diffim] fits = true)."""
    return os.path.splitext(diffim(visit_id, band))[0] + ".fits"


DIFFIM_GLOB = os.path.join("diffim", "v*.h5")

DIA_OBJECT = os.path.join("associate", "dia_object.h5")   # the run's DiaObjects and DiaSources (stage associate)
LENS_CANDIDATES = os.path.join("lenses", "candidates.h5")   # lensed-quasar candidates (stage lenses)
LENS_SCENES = os.path.join("lenses", "scenes.h5")   # their scene models: LensedImage (stage lensmodel)


def lens_scenes_share(k):
    """The scene models of share `k` of the candidates ([lensmodel] tasks > 1), joined into LENS_SCENES
    and removed by the stage's last task."""
    return os.path.join("lenses", f"scenes-s{int(k):03d}.h5")


def lensphot(visit_id, band):
    """A visit's fluxes of the lensed images (stage lensphot)."""
    return _per_visit("lensphot", visit_id, band)


LENSPHOT_GLOB = os.path.join("lensphot", "v*.h5")


def dia_forced(visit_id, band):
    """DiaForcedSource rows of a visit: every DiaObject on its difference and its calexp (stage diaforced)."""
    return _per_visit("diaforced", visit_id, band)


def association(i, j):
    """The DiaSources of patch (i, j)'s inner box with their patch-level DiaObject (stage associate)."""
    return os.path.join("associate", f"patch-{patch_key(i, j)}.h5")


def ingest_receipt(step):
    """The receipt of one ingest step (`truth`, `ForcedSource/0003`, ...): rows inserted, database URL."""
    return os.path.join("ingest", step.replace("/", "-") + ".json")


INGEST_RECEIPTS = "ingest"


def path(rundir, rel):
    return os.path.join(rundir, rel)
