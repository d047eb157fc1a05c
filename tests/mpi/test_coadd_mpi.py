"""coadd_patch over COMM_WORLD gives the serial coadd bit for bit, in memory and in a file (mpiexec -n 2, -n 3)."""
import glob
import os
import sys
from pathlib import Path

import h5py
import numpy as np
from conftest import all_ranks

from twinkles_hpc.level2.coadd import PLANES, CoaddConfig, coadd_patch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))      # tests/: the calexp builder
from test_level2_coadd import make_calexps, skymap_for  # noqa: E402

#: small enough for several sub-regions per rank on a 170 x 170 patch of 6 inputs
CONFIG = CoaddConfig(memory_per_rank=1536 << 10)


def inputs(comm, shared_dir):
    paths = make_calexps(Path(shared_dir), 6) if comm.rank == 0 else None
    paths = comm.bcast(paths, root=0)
    return paths, skymap_for(paths).patch(1, 1)


def test_coadd_in_memory_equals_serial(comm, shared_dir):
    paths, patch = inputs(comm, shared_dir)
    par = coadd_patch(paths, patch, CONFIG, comm=comm)
    if comm.rank == 0:
        ser = coadd_patch(paths, patch, CONFIG)
        bad = [k for k in ser if not np.array_equal(par[k], ser[k], equal_nan=True)]
        n = len(ser["subregions"])
        ok, msg = not bad and n >= 2 * comm.size, f"planes differ: {bad}; {n} sub-regions"
    else:
        ok, msg = par is None, "a non-root rank returned a result"
    all_ranks(comm, ok, msg)


def test_coadd_file_equals_serial(comm, shared_dir):
    paths, patch = inputs(comm, shared_dir)
    out = coadd_patch(paths, patch, CONFIG, out=os.path.join(shared_dir, "coadd-mpi.h5"), comm=comm)
    ok, msg = out == os.path.join(shared_dir, "coadd-mpi.h5"), f"returned {out!r}"
    if comm.rank == 0:
        ser = coadd_patch(paths, patch, CONFIG)       # planned with the patch-sized result: other sub-regions
        with h5py.File(out, "r") as f:
            bad = [k for k in PLANES if not np.array_equal(f[k][...], ser[k], equal_nan=True)]
        left = glob.glob(os.path.join(shared_dir, "*.tmp-*"))
        ok, msg = ok and not bad and not left, f"planes differ: {bad}; temporaries left: {left}"
    all_ranks(comm, ok, msg)


def test_unreadable_input_raises_on_every_rank(comm, shared_dir):
    from twinkles_hpc.level2.skymap import SkyMap
    patch = SkyMap(53.1, -27.3, patch_size=100, overlap=10).patch(0, 0)
    try:
        coadd_patch([os.path.join(shared_dir, "missing.h5")], patch, CONFIG, comm=comm)
        ok, msg = False, "no exception"
    except (OSError, ValueError) as e:
        ok, msg = True, repr(e)
    all_ranks(comm, ok, msg)
