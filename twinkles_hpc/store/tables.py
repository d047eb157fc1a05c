"""Structured numpy tables and pixel planes in HDF5: unicode columns are stored as UTF-8 fixed-width bytes;
pixel planes with the run's storage settings (`Storage`, the config's [store]; docs/data-model.md,
"Storage")."""
from dataclasses import dataclass, replace

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

#: Planes stored to a relative precision (Storage.variance_bits).
RELATIVE_PLANES = ("variance", "depth")
#: HDF5 filters of [store] compression.
COMPRESSION = {"gzip": dict(compression="gzip", compression_opts=1, shuffle=True),
               "lzf": dict(compression="lzf", shuffle=True), "none": {}}


@dataclass(frozen=True)
class Storage:
    """How pixel planes are stored ([store]): `compression` (COMPRESSION), in square chunks of `chunk` pixels;
    `quantize` > 0 rounds every image pixel to a power-of-two step of at most that fraction of its own noise
    (sqrt of its variance; quantize_image); `variance_bits` > 0 keeps that many mantissa bits of the
    variance and depth (inverse variance) planes (RELATIVE_PLANES; quantize_relative). The defaults store
    every bit, uncompressed."""
    compression: str = "none"
    quantize: float = 0.0
    variance_bits: int = 0
    chunk: int = 256

    @classmethod
    def of(cls, section):
        """From a config's [store] section (None: the defaults)."""
        if section is None:
            return cls()
        return cls(section.compression, float(section.quantize), int(section.variance_bits), int(section.chunk))

    def dataset_kw(self, shape):
        """create_dataset keywords of a plane of `shape`: chunks and filters, or {} uncompressed."""
        if self.compression == "none" or len(shape) != 2 or min(shape) == 0:
            return {}
        return dict(chunks=(min(self.chunk, shape[0]), min(self.chunk, shape[1])), **COMPRESSION[self.compression])

    def image(self, data, variance):
        """`data` as stored: quantised against `variance` when `quantize` is set, else unchanged."""
        return quantize_image(data, variance, self.quantize) if self.quantize > 0 else data

    def variance(self, data):
        return quantize_relative(data, self.variance_bits) if self.variance_bits > 0 else data

    def planes(self, planes):
        """{name: array} as stored: `image` quantised against `variance`, the RELATIVE_PLANES rounded, the
        others (and tables) unchanged. Idempotent."""
        out = dict(planes)
        if "image" in out and "variance" in out and not out["image"].dtype.names:
            out["image"] = self.image(out["image"], out["variance"])
        for name in RELATIVE_PLANES:
            if name in out and not out[name].dtype.names:
                out[name] = self.variance(out[name])
        return out

    def lossless(self):
        """The same filters without the quantisation: for planes already as stored (Storage.planes)."""
        return replace(self, quantize=0.0, variance_bits=0)


def quantize_image(data, variance, fraction):
    """`data` (float32 or float64) rounded, pixel by pixel, to a multiple of the power of two at most
    `fraction` x sqrt(variance) (ties to even); pixels whose variance is not finite and positive, and
    non-finite values, are kept. Rounding to q adds noise of variance q^2 / 12 (at most fraction^2 / 12 of
    the pixel's), with no bias; power-of-two steps leave trailing zero bits that compress. Scaling by a
    power of two is exact, so the result does not depend on how the arithmetic is vectorised."""
    data = np.asarray(data)
    v = np.asarray(variance, data.dtype)
    with np.errstate(invalid="ignore", over="ignore"):
        _, e = np.frexp(np.sqrt(v) * data.dtype.type(fraction))    # fraction sigma = m 2^e, m in [0.5, 1)
        inv = np.ldexp(data.dtype.type(2.0), -e)                    # 1 / step, step = 2^(e - 1)
        q = np.rint(data * inv) / inv
        ok = np.isfinite(v) & (v > 0) & np.isfinite(q)
    return np.where(ok, q, data)


def quantize_relative(data, bits):
    """float32 `data` with its mantissa rounded to `bits` bits (relative precision 2^-bits; ties away from
    zero); zeros, NaN and infinities kept."""
    a = np.ascontiguousarray(data, np.float32)
    drop = 23 - int(bits)
    if drop <= 0:
        return a
    u = a.view(np.uint32)
    finite = np.isfinite(a)
    r = (u + np.uint32(1 << (drop - 1))) & np.uint32((0xFFFFFFFF << drop) & 0xFFFFFFFF)
    return np.where(finite, r, u).view(np.float32)


def write_planes(group, planes, compress=(), storage=None):
    """Store each {name: array} of `planes`: structured arrays as tables (write_table), other 2-D planes
    with `storage` (Storage; None: as they are): `image` quantised against `variance`, `variance`
    and `depth` rounded, integer planes lossless; those named in `compress` (mask planes) at least gzip-compressed
    (MASK_STORAGE)."""
    st = storage or Storage()
    for name, data in st.planes(planes).items():
        if data.dtype.names:
            write_table(group, name, data)
            continue
        kw = st.dataset_kw(data.shape) or (MASK_STORAGE if name in compress else {})
        group.create_dataset(name, data=data, **kw)


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
