"""Atomic outputs: write under a temporary name in the same directory, fsync, rename into place.

A reader (or a restarted run) therefore sees either the complete file or none; a crash leaves at most
a `*.tmp-<pid>` file that the next run removes.

h5py is imported by the functions that open HDF5 files: a command that writes only FITS or JSON (such as
`twinkles-hpc imsim ... -o OUT.fits`) never loads it.
"""
import contextlib
import glob
import os


def _tmp_name(path):
    return f"{path}.tmp-{os.getpid()}"


def _fsync_dir(path):
    fd = os.open(os.path.dirname(os.path.abspath(path)) or ".", os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def commit(tmp, path):
    """fsync `tmp` and rename it to `path` (atomic on POSIX file systems, Lustre included)."""
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path)


@contextlib.contextmanager
def atomic_h5(path, **kw):
    """Yield an h5py.File open for writing at a temporary name; on clean exit rename it to `path`."""
    import h5py

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = _tmp_name(path)
    try:
        with h5py.File(tmp, "w", locking=False, **kw) as fh:
            yield fh
        commit(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def atomic_write_bytes(path, data):
    """Write the bytes `data` to `path` atomically."""
    atomic_write_parts(path, (data,))


def atomic_write_parts(path, parts):
    """Write the bytes-like objects of the iterable `parts`, in order, to `path` atomically (a large file
    made piece by piece need never be whole in memory)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = _tmp_name(path)
    try:
        with open(tmp, "wb") as fh:
            for part in parts:
                fh.write(part)
        commit(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def remove_stale_temporaries(rundir):
    """Remove `*.tmp-<pid>` leftovers of a crashed run (called by rank 0 under the run lock)."""
    removed = 0
    for p in glob.glob(os.path.join(rundir, "**", "*.tmp-*"), recursive=True):
        with contextlib.suppress(FileNotFoundError):
            os.remove(p)
            removed += 1
    return removed


def open_read(path):
    """Open an HDF5 file read-only without HDF5 file locking (many ranks read the same file)."""
    import h5py

    return h5py.File(path, "r", locking=False)


def attrs_dict(obj):
    """The attributes of an HDF5 file, group or dataset as a dict: scalars as Python values, arrays kept."""
    return {k: (v.item() if hasattr(v, "item") and getattr(v, "ndim", 0) == 0 else v) for k, v in obj.attrs.items()}
