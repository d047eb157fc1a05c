"""Tests in this folder run under `mpiexec -n 2` and `-n 3` (Makefile: test-mpi).

Every rank runs every test. A rank never asserts alone: `all_ranks` gathers each rank's outcome
first, so that a failure on one rank fails the test on all of them instead of hanging the others.
"""
import shutil
import tempfile

import pytest
from mpi4py import MPI


@pytest.fixture
def comm():
    return MPI.COMM_WORLD


@pytest.fixture
def shared_dir(comm):
    """One temporary directory for all ranks (rank 0 creates it, the others learn its name; rank 0
    removes it once every rank is done with it)."""
    d = tempfile.mkdtemp(prefix="twinkles-mpi-") if comm.rank == 0 else None
    d = comm.bcast(d, root=0)
    yield d
    comm.Barrier()
    if comm.rank == 0:
        shutil.rmtree(d, ignore_errors=True)


def all_ranks(comm, ok, message=""):
    """Assert `ok` on every rank after gathering: reports which ranks failed and why."""
    results = comm.allgather((bool(ok), message))
    bad = [f"rank {r}: {m}" for r, (good, m) in enumerate(results) if not good]
    assert not bad, "; ".join(bad)

