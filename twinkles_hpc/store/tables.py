"""Structured numpy tables in HDF5: unicode columns are stored as UTF-8 fixed-width bytes."""
import numpy as np


def _to_h5_dtype(dtype):
    return np.dtype([(n, f"S{dtype[n].itemsize // 4}") if dtype[n].kind == "U" else (n, dtype[n])
                     for n in dtype.names])


def write_table(group, name, arr, **kw):
    """Store a structured array as a compound dataset; returns the dataset."""
    arr = np.asarray(arr)
    h5arr = arr.astype(_to_h5_dtype(arr.dtype))
    ds = group.create_dataset(name, data=h5arr, **kw)
    ds.attrs["unicode_columns"] = [n for n in arr.dtype.names if arr.dtype[n].kind == "U"]
    return ds


#: Storage of a mask plane written with compress: mostly zeros, it shrinks 40x for a few ms.
MASK_STORAGE = dict(chunks=True, compression="gzip", compression_opts=1, shuffle=True)


def write_planes(group, planes, compress=()):
    """Store each {name: array} of `planes`: structured arrays as tables (write_table), others as plain
    datasets; those named in `compress` (mask planes) gzip-compressed (MASK_STORAGE)."""
    for name, data in planes.items():
        if data.dtype.names:
            write_table(group, name, data)
        else:
            group.create_dataset(name, data=data, **(MASK_STORAGE if name in compress else {}))


def read_table(ds):
    """Read a compound dataset written by write_table, restoring unicode columns."""
    raw = ds[...]
    uni = set(str(c) for c in ds.attrs.get("unicode_columns", []))
    if not uni:
        return raw
    dt = np.dtype([(n, f"U{raw.dtype[n].itemsize}") if n in uni else (n, raw.dtype[n])
                   for n in raw.dtype.names])
    out = np.empty(raw.shape, dtype=dt)
    for n in raw.dtype.names:
        out[n] = np.char.decode(raw[n], "utf-8") if n in uni else raw[n]
    return out
