"""The memory-bounded coadd of one patch in one band (docs/level2-coadd.md).

The patch is cut into sub-regions sized from the memory budget per rank (plan_subregions). For each
sub-region a rank reads from every overlapping calexp only the hyperslab of pixels that maps into it,
warps it onto the patch grid (Lanczos-3, twinkles_hpc.level2.warp), scales it to nJy and combines the
stack pixel by pixel (sigma-clipped mean with one weight per input, the inverse of its sky variance, or
median). Rank 0 also builds the coadd PSF on a node grid from the inputs' PSF models (coaddpsf.py). Peak
memory per rank is set by the budget, not by the number of visits or the size of the patch (when the
output goes to a file).

A pixel's value does not depend on the sub-region it was computed in (the warp's mapping grid is anchored
in tract pixels and the combination is per pixel), so the coadd is bit-identical whatever the budget and
the number of ranks.
"""
import json
import os
from dataclasses import dataclass

import numpy as np

from twinkles_hpc import mpiwait, options, steptimer
from twinkles_hpc.level2 import coaddpsf
from twinkles_hpc.level2.masks import BAD, CR, DETECTED, EDGE, NO_DATA, SAT
from twinkles_hpc.level2.warp import KERNELS, SOURCE_MARGIN, combine_stack, source_bbox, warp_into
from twinkles_hpc.options import opt
from twinkles_hpc.store.atomic import atomic_h5, open_read

#: Bytes per sub-region pixel per input in the stack: warped image and variance (float32), mask (uint16).
STACK_BYTES = 10
#: Bytes per sub-region pixel held once: the outputs image, variance, depth (float32), mask (uint16),
#: n_visits (int32) = 18, counted twice for the copy that is sent to rank 0 or written to HDF5.
OUTPUT_BYTES = 36
#: Bytes per calexp pixel of the hyperslab being warped (one input at a time): image and variance as the
#: warp takes them (float64), mask (uint16).
SOURCE_BYTES = 18
#: Fixed memory: Python objects, the warp's node grids, h5py and astropy temporaries (bytes); and per
#: input (its WCS and metadata). Measured with tracemalloc, 83 KB + 7 KB per input (docs/level2-coadd.md),
#: and doubled.
FIXED_BYTES = 256 << 10
PER_INPUT_BYTES = 16 << 10
#: Output planes and their dtypes.
PLANES = {"image": np.float32, "variance": np.float32, "mask": np.uint16, "n_visits": np.int32,
          "depth": np.float32}


@dataclass
class CoaddConfig:
    """How to coadd a patch."""
    memory_per_rank: int = opt(2 << 30, "bytes", "Memory a rank may use for the coadd (the plan's budget).", lo=1)
    statistic: str = opt("mean", "",
                         "'mean' (weighted by the inverse sky variance of each input, sigma-clipped) or 'median'.",
                         choices=("mean", "median"))
    clip_sigma: float = opt(3.0, "sigma",
                            "Clipping threshold in units of each input's noise (widened by the robust spread of "
                            "the inputs, see warp.combine_stack).", lo=1.0)
    clip_iters: int = opt(2, "", "Clipping iterations (0: plain weighted mean).", lo=0)
    bad_mask_bits: int = opt(SAT | CR | NO_DATA | BAD, "",
                             "An input pixel with any of these mask bits is left out (SAT | CR | NO_DATA | BAD).",
                             lo=0, hi=0xFFFF)
    protect_mask_bits: int = opt(DETECTED, "",
                                 "No clipping at a pixel where at least half of the good inputs carry one of "
                                 "these bits (DETECTED: inside sources, where the inputs differ by their PSFs).",
                                 lo=0, hi=0xFFFF)
    and_mask_bits: int = opt(0, "",
                             "Bits a coadd pixel carries only where every input used there does, not where any "
                             "does. EDGE (4) stops the calexps' 8 px borders drawing every input's outline "
                             "across coadds and templates (more DiaSources kept, more lenses found), but also "
                             "unmasks residuals of bright stars where a template's PSF jumps at an input's "
                             "edge (docs/level2-coadd.md).", lo=0, hi=0xFFFF)
    kernel: str = opt("lanczos3", "",
                      "Warp kernel: 'lanczos3' (reproduces polynomials up to degree 2) or 'lanczos3_plain' (afw's).",
                      choices=KERNELS)
    mask_weight: float = opt(0.05, "",
                             "The warp ORs the mask bits of input pixels whose kernel weight |w_x w_y| is at "
                             "least this.", lo=0.0, lo_open=True, hi=1.0)
    psf_grid_step: int = opt(50, "pixel", "Cell side (patch pixels) of the coadd PSF's node grid.", lo=1)

    def __post_init__(self):
        options.check_section(self)


def subregion_bytes(side, n_inputs, bytes_per_pixel_per_input=STACK_BYTES, *, src_pixels_per_pixel=1.0,
                    margin=SOURCE_MARGIN):
    """Bytes a rank holds while coadding a side x side sub-region of n_inputs inputs:
    side^2 (n_inputs * bytes_per_pixel_per_input + OUTPUT_BYTES) + SOURCE_BYTES * (sqrt(2 r) side + 2 margin
    + 2)^2, the last term the hyperslab of one input (r source pixels per patch pixel; sqrt(2) for a box
    rotated by 45 degrees, the worst case)."""
    src_side = np.sqrt(2.0 * src_pixels_per_pixel) * side + 2 * margin + 2
    return side * side * (n_inputs * bytes_per_pixel_per_input + OUTPUT_BYTES) + SOURCE_BYTES * src_side ** 2


def plan_subregions(patch_bbox, n_inputs, memory_per_rank, bytes_per_pixel_per_input=STACK_BYTES, *,
                    src_pixels_per_pixel=1.0, reserved_bytes=0, min_side=16):
    """Cut patch_bbox (x0, y0, nx, ny) into near-equal sub-boxes (x0, y0, nx, ny), row by row, of side at
    most s: the largest s with subregion_bytes(s, n_inputs, ...) + reserved_bytes <= memory_per_rank
    (reserved_bytes: what the rank holds besides, e.g. the whole patch's output and FIXED_BYTES).
    Raises MemoryError if even min_side does not fit."""
    x0, y0, nx, ny = (int(v) for v in patch_bbox)
    budget = memory_per_rank - reserved_bytes
    a = n_inputs * bytes_per_pixel_per_input + OUTPUT_BYTES
    c, d = np.sqrt(2.0 * src_pixels_per_pixel), 2 * SOURCE_MARGIN + 2
    # a s^2 + SOURCE_BYTES (c s + d)^2 <= budget, solved for s
    A, B, C = a + SOURCE_BYTES * c * c, 2 * SOURCE_BYTES * c * d, SOURCE_BYTES * d * d - budget
    disc = B * B - 4 * A * C
    side = int(np.floor((-B + np.sqrt(disc)) / (2 * A))) if disc >= 0 else 0
    while side > 0 and subregion_bytes(side, n_inputs, bytes_per_pixel_per_input,
                                       src_pixels_per_pixel=src_pixels_per_pixel) > budget:
        side -= 1                                        # rounding guard
    if side < min(min_side, max(nx, ny)):
        need = subregion_bytes(min_side, n_inputs, bytes_per_pixel_per_input,
                               src_pixels_per_pixel=src_pixels_per_pixel) + reserved_bytes
        raise MemoryError(f"memory_per_rank = {memory_per_rank} bytes is too small: a {min_side} px sub-region "
                          f"of {n_inputs} inputs needs {need:.0f} bytes (with {reserved_bytes} reserved)")
    nbx, nby = -(-nx // side), -(-ny // side)
    xs = [x0 + (k * nx) // nbx for k in range(nbx + 1)]
    ys = [y0 + (k * ny) // nby for k in range(nby + 1)]
    return [(xs[i], ys[j], xs[i + 1] - xs[i], ys[j + 1] - ys[j]) for j in range(nby) for i in range(nbx)]


def combine_warps(images, variances, masks, scales, weights, config, out=None):
    """Combine a stack of warps (N, ny, nx) (flux and variance per input in its own units, input k times
    scales[k] in nJy, weighing weights[k] in the mean, see input_weights) into a dict of the output
    planes (PLANES): image (nJy per pixel), variance (nJy^2), mask, n_visits (inputs used) and depth
    (inverse variance, nJy^-2; 0 where no input is good)."""
    _, ny, nx = images.shape
    res = out if out is not None else {k: np.empty((ny, nx), dt) for k, dt in PLANES.items()}
    combine_stack(images, variances, masks, scales, weights,
                  [res[k] for k in ("image", "variance", "mask", "n_visits", "depth")],
                  bad_mask_bits=config.bad_mask_bits, protect_mask_bits=config.protect_mask_bits,
                  median=config.statistic == "median", clip_sigma=config.clip_sigma, clip_iters=config.clip_iters,
                  and_mask_bits=config.and_mask_bits)
    return res


def input_weights(infos):
    """The weight of each input in the mean: 1 / its sky variance in nJy^2 (CalexpInfo.sky_variance, in
    its own units, times flux_njy_per_electron^2). One number per input, not the per-pixel inverse
    variance: that would weigh a star's core by its own shot noise, differently in each input (their
    seeing differs), making the coadd non-linear in the flux and its PSF flux-dependent."""
    return np.array([1.0 / (c.sky_variance * c.flux_njy_per_electron ** 2) for c in infos], np.float64)


@dataclass
class CalexpInfo:
    """What the coadd needs of a calexp: path, shape (ny, nx), its WCS (and the FITS header it was parsed
    from), nJy per electron, its sky variance (electrons^2, see read_calexp_info), its PSF model (the
    `psf` attribute's JSON, "" if none) and aperture correction (NaN if none)."""
    path: str
    shape: tuple
    header: str
    flux_njy_per_electron: float
    sky_variance: float
    psf: str = ""
    ap_corr: float = float("nan")

    def __post_init__(self):
        from astropy.io import fits
        from astropy.wcs import WCS

        self.wcs = WCS(fits.Header.fromstring(self.header))
        self.psf_model = coaddpsf.parse_psf(self.psf)

    def meta(self):
        return (self.path, self.shape, self.header, self.flux_njy_per_electron, self.sky_variance, self.psf,
                self.ap_corr)


#: About this many rows of the variance plane are sampled for the sky variance, and the column stride.
SKY_ROWS, SKY_COL_STEP = 64, 4


def sky_variance(f, path):
    """Median of the variance over usable pixels (no SAT, CR, EDGE, NO_DATA, BAD) of about SKY_ROWS evenly
    spaced rows, every SKY_COL_STEP-th column (one strided read): the sky (+ read noise) variance, sources
    being a small minority of the pixels."""
    sl = np.s_[::max(1, f["variance"].shape[0] // SKY_ROWS), ::SKY_COL_STEP]
    v, m = f["variance"][sl], f["mask"][sl]
    v = v[((m & (SAT | CR | EDGE | NO_DATA | BAD)) == 0) & np.isfinite(v) & (v > 0)]
    if v.size == 0:
        raise ValueError(f"{path}: no usable variance pixel for the sky variance")
    return float(np.median(v))


def read_calexp_info(path):
    """CalexpInfo of a calexp file (docs/data-model.md); reads SKY_ROWS sampled rows of its variance and
    mask, no image pixels."""
    with open_read(path) as f:
        for key in ("image", "variance", "mask"):
            if key not in f:
                raise ValueError(f"{path}: not a calexp (no dataset {key!r})")
        hdr, scale = f.attrs.get("wcs"), f.attrs.get("flux_njy_per_electron")
        if hdr is None or scale is None:
            raise ValueError(f"{path}: calexp without the 'wcs' or 'flux_njy_per_electron' attribute")
        hdr = hdr.decode() if isinstance(hdr, bytes) else str(hdr)
        psf = f.attrs.get("psf", "")
        psf = psf.decode() if isinstance(psf, bytes) else str(psf)
        ap_corr = float(f.attrs.get("ap_corr", np.nan))
        shape = tuple(f["image"].shape)
        # the calexp task stores it (the same function on the same stored planes); older calexps do not
        sky = float(f.attrs["sky_variance"]) if "sky_variance" in f.attrs else sky_variance(f, path)
    scale = float(scale)
    if not (np.isfinite(scale) and scale > 0):
        raise ValueError(f"{path}: flux_njy_per_electron must be finite and > 0, got {scale!r}")
    return CalexpInfo(os.fspath(path), shape, hdr, scale, sky, psf, ap_corr)


class Workspace:
    """Buffers reused from one sub-region to the next: their pages are faulted in once (fresh buffers cost
    ~15% of the warp time in the kernel's page zeroing). A larger request replaces the buffer."""

    def __init__(self):
        self._buf = {}

    def array(self, name, shape, dtype):
        n = int(np.prod(shape))
        if name not in self._buf or self._buf[name].size < n:
            self._buf.pop(name, None)                     # free before allocating: peak = the larger one
            self._buf[name] = np.empty(n, dtype)
        return self._buf[name][:n].reshape(shape)


def warp_source(f, box, array=None):
    """The image and variance (float64, the warp kernel's type: HDF5 converts the stored float32 as it
    reads, as fast as reading float32 and converting once here, and exact) and the mask (uint16) of the
    open calexp or coadd file `f` in box (x0, y0, nx, ny); array(name, shape, dtype) allocates them
    (default: new arrays), e.g. a Workspace's."""
    x0, y0, nx, ny = box
    out = []
    for key, dt in (("image", np.float64), ("variance", np.float64), ("mask", np.uint16)):
        a = np.empty((ny, nx), dt) if array is None else array(f"src_{key}", (ny, nx), dt)
        f[key].read_direct(a, np.s_[y0:y0 + ny, x0:x0 + nx])
        out.append(a)
    return out


def _read_hyperslab(path, box, ws):
    """warp_source of the calexp at `path`, into workspace buffers."""
    with open_read(path) as f:
        return warp_source(f, box, ws.array)


def coadd_subregion(infos, dst_wcs, box, config, workspace=None, weights=None):
    """Coadd the tract-pixel box (x0, y0, nx, ny) of `dst_wcs` from the calexps `infos`: reads only the
    hyperslab of each that maps into the box, one input at a time; weights: per input (default
    input_weights(infos)). Returns the dict of output planes (views of `workspace` buffers when one is
    given: valid until its next use)."""
    ws = workspace or Workspace()
    _, _, nx, ny = box
    used = [(i, sb) for i, i_ in enumerate(infos)
            if (sb := source_bbox(i_.wcs, dst_wcs, box, i_.shape)) is not None]
    shape = (len(used), ny, nx)
    stack = (ws.array("image", shape, np.float32), ws.array("variance", shape, np.float32),
             ws.array("mask", shape, np.uint16))
    for slot, (i, sb) in enumerate(used):
        with steptimer.step("read"):
            src = _read_hyperslab(infos[i].path, sb, ws)
        with steptimer.step("warp"):
            warp_into(*src, infos[i].wcs, dst_wcs, box, tuple(s[slot] for s in stack), kernel=config.kernel,
                      src_origin=sb[:2], mask_weight=config.mask_weight)
        del src                                           # a larger next hyperslab replaces, not adds
    scales = [infos[i].flux_njy_per_electron for i, _ in used]
    weights = input_weights(infos) if weights is None else np.asarray(weights)
    out = {k: ws.array(f"out_{k}", (ny, nx), dt) for k, dt in PLANES.items()}
    with steptimer.step("combine"):
        return combine_warps(*stack, scales, weights[[i for i, _ in used]], config, out=out)


def _paste(dst, sub, x0, y0, storage=None):
    """Write sub-region planes `sub` into `dst` at (x0, y0); with `storage`, the image quantised against the
    variance and the variance rounded as it says (store.tables.Storage)."""
    if storage is not None:
        sub = storage.planes(sub)
    for k, a in sub.items():
        dst[k][y0:y0 + a.shape[0], x0:x0 + a.shape[1]] = a


def coadd_plan(infos, patch, config, *, out=None, box=None):
    """(indices of the inputs overlapping the patch, the sub-boxes in patch pixels) for coadd_patch; with
    box = (x0, y0, nx, ny) in patch pixels, the sub-boxes cover only that box (coadd_tile)."""
    from astropy.wcs.utils import proj_plane_pixel_area

    dst_wcs = patch.tract_wcs
    used = [i for i, c in enumerate(infos) if source_bbox(c.wcs, dst_wcs, patch.bbox, c.shape) is not None]
    area = proj_plane_pixel_area(dst_wcs)
    ratio = max([area / proj_plane_pixel_area(infos[i].wcs) for i in used], default=1.0)
    reserved = FIXED_BYTES + PER_INPUT_BYTES * len(infos)
    reserved += coaddpsf.n_nodes(patch.shape, config.psf_grid_step) * coaddpsf.NODE_BYTES    # the PSF grid
    if out is None:
        reserved += patch.bbox[2] * patch.bbox[3] * OUTPUT_BYTES // 2   # the patch-sized result
    subs = plan_subregions((0, 0, patch.bbox[2], patch.bbox[3]) if box is None else box, max(len(used), 1),
                           config.memory_per_rank,
                           src_pixels_per_pixel=ratio, reserved_bytes=reserved)
    return used, subs


def _planned(infos, patch, config, out, box=None):
    """(the inputs overlapping the patch, the sub-boxes of coadd_plan, their input_weights)."""
    used, subs = coadd_plan(infos, patch, config, out=out, box=box)
    infos = [infos[i] for i in used]
    return infos, subs, input_weights(infos)


def _attrs(patch, config, infos):
    return {"wcs": patch.wcs.to_header_string(), "tract": patch.tract, "patch": list(patch.index),
            "bbox": list(patch.bbox), "inner_bbox": list(patch.inner_bbox), "unit": "nJy per pixel",
            "depth": "inverse variance, nJy^-2", "statistic": config.statistic,
            "clip_sigma": config.clip_sigma, "clip_iters": config.clip_iters,
            "bad_mask_bits": config.bad_mask_bits, "protect_mask_bits": config.protect_mask_bits,
            "and_mask_bits": config.and_mask_bits,
            "kernel": config.kernel, "psf_grid_step": config.psf_grid_step,
            "weights": input_weights(infos), "weighting": "1 / sky variance per input, nJy^-2",
            "inputs": [os.path.basename(c.path) for c in infos]}


def coadd_patch(inputs, patch, config=None, *, out=None, comm=None, storage=None):
    """Coadd the calexps `inputs` (paths) over `patch` (skymap.Patch, its outer bbox).

    Sub-region k of the plan is done by rank k % comm.size (comm=None: serially). out=None: returns on
    rank 0 a dict of patch-sized arrays (PLANES, in patch pixels: [0, 0] is tract pixel bbox[:2]) plus
    "subregions" (the sub-boxes, (n, 4), patch pixels); other ranks return None. The patch-sized result
    counts against rank 0's budget. out=path: writes the planes to that HDF5 file (rank 0 writes its own
    sub-regions, the other ranks theirs to `out.partR.tmp-PID` files that rank 0 merges one sub-region at a
    time, then renames the file into place); every rank returns the path.

    Units: image in nJy per pixel (each calexp times its flux_njy_per_electron), variance nJy^2, depth =
    1/variance (nJy^-2), n_visits = inputs used at the pixel, mask = OR of the used inputs' bits, or of all
    inputs' bits | NO_DATA where none was good (image NaN there). When every input has a PSF model, rank 0
    adds the coadd PSF grid (coaddpsf.coadd_psf: psf_weight, psf_cxx, psf_cxy, psf_cyy, psf_n_inputs,
    psf_ap_corr) to the dict or the file. storage: how the file's planes are stored (store.tables.Storage;
    None: every bit, uncompressed).
    """
    config = config or CoaddConfig()
    rank, size = (0, 1) if comm is None else (comm.rank, comm.size)
    paths = [os.fspath(p) for p in inputs]
    if comm is None:
        infos = [read_calexp_info(p) for p in paths]
    else:                                   # files opened once, not by every rank; same header, same WCS
        meta = None
        if rank == 0:
            try:
                meta = [c.meta() for c in map(read_calexp_info, paths)]
            except Exception as e:          # every rank raises it rather than waiting for the headers
                meta = e
        meta = comm.bcast(meta, root=0)
        if isinstance(meta, Exception):
            raise meta
        infos = [CalexpInfo(*m) for m in meta]
    infos, subs, weights = _planned(infos, patch, config, out)
    px0, py0 = patch.bbox[:2]
    with steptimer.step("psf"):
        psf = (coaddpsf.coadd_psf(infos, weights, patch.tract_wcs, patch.bbox, config.psf_grid_step)
               if rank == 0 else None)

    ws = Workspace()

    def compute(k):
        x0, y0, nx, ny = subs[k]
        return coadd_subregion(infos, patch.tract_wcs, (px0 + x0, py0 + y0, nx, ny), config, ws, weights)

    mine = range(rank, len(subs), size)
    if out is None:
        res = _gather(comm, rank, size, subs, mine, compute, patch)
        if res is not None and psf is not None:
            res.update(psf)
        return res
    return _write(comm, rank, size, subs, mine, compute, patch, os.fspath(out), _attrs(patch, config, infos),
                  psf, storage)


def _gather(comm, rank, size, subs, mine, compute, patch):
    if rank != 0:
        for k in mine:
            try:
                res = compute(k)
            except Exception as e:
                mpiwait.poll_send(comm, ("error", f"{type(e).__name__}: {e}"), 0, k)
                raise
            mpiwait.poll_send(comm, res, 0, k)
            del res
        return None
    result = {k: np.empty(patch.shape, dt) for k, dt in PLANES.items()}
    for k, (x0, y0, _, _) in enumerate(subs):
        res = compute(k) if k % size == 0 else mpiwait.poll_recv(comm, k % size, k)[0]
        if isinstance(res, tuple):
            raise RuntimeError(f"rank {k % size} failed in coadd sub-region {k}: {res[1]}")
        _paste(result, res, x0, y0)
        del res
    result["subregions"] = np.array(subs, dtype=np.int64).reshape(-1, 4)
    return result


def _write(comm, rank, size, subs, mine, compute, patch, out, attrs, psf=None, storage=None):
    if rank != 0:
        import h5py

        part, err = f"{out}.part{rank}.tmp-{os.getpid()}", None
        try:
            with h5py.File(part, "w", locking=False) as f:
                for k in mine:
                    for name, a in compute(k).items():
                        f.create_dataset(f"{k}/{name}", data=a)
        except Exception as e:
            err = f"{type(e).__name__}: {e}"
            raise
        finally:
            mpiwait.poll_send(comm, (part, err), 0, 0)
        mpiwait.poll_recv(comm, 0, 1)               # rank 0 has renamed the file into place
        return out
    with atomic_h5(out) as f:
        kw = storage.dataset_kw(patch.shape) if storage is not None else {}
        ds = {k: f.create_dataset(k, shape=patch.shape, dtype=dt, **kw) for k, dt in PLANES.items()}
        f.create_dataset("subregions", data=np.array(subs, dtype=np.int64).reshape(-1, 4))
        for k, a in (psf or {}).items():
            f.create_dataset(k, data=a)
        for key, v in attrs.items():
            f.attrs[key] = v
        for k in mine:
            _paste(ds, compute(k), *subs[k][:2], storage)
        for r in range(1, size):
            (part, err), _, _ = mpiwait.poll_recv(comm, r, 0)
            if err is not None:
                raise RuntimeError(f"rank {r} failed in its coadd sub-regions: {err}")
            try:
                with open_read(part) as pf:
                    for k in range(r, len(subs), size):
                        _paste(ds, {name: pf[f"{k}/{name}"][...] for name in PLANES}, *subs[k][:2], storage)
            finally:
                if os.path.exists(part):
                    os.remove(part)
    for r in range(1, size):
        mpiwait.poll_send(comm, "done", r, 1)
    return out



# -- a patch coadded in tiles by separate tasks, then assembled ---------------------------------------------
def tiles(shape, n):
    """At least `n` near-square tiles (x0, y0, nx, ny) of a patch of `shape` (ny, nx) pixels, in row-major
    order, as equal as whole pixels allow (fewer when the patch has fewer pixels). Square tiles keep what
    each input's rotated footprint must read small (a row strip of a rotated input reads a bounding box
    far larger than itself)."""
    ny, nx = (int(v) for v in shape)
    n = max(1, min(int(n), nx * ny))
    tx = max(1, min(nx, int(np.ceil(np.sqrt(n * nx / ny)))))
    ty = max(1, min(ny, -(-n // tx)))
    xs = [k * nx // tx for k in range(tx + 1)]
    ys = [k * ny // ty for k in range(ty + 1)]
    return [(xs[i], ys[j], xs[i + 1] - xs[i], ys[j + 1] - ys[j]) for j in range(ty) for i in range(tx)]


def write_inputs(path, infos, root, attrs):
    """Record what the coadd needs of each input (CalexpInfo.meta, the paths relative to `root`) and the
    JSON-able dict `attrs` in the HDF5 file `path` (atomic), for the tiles of one patch (read_inputs)."""
    meta = [list(c.meta()) for c in infos]
    for m in meta:
        m[0] = os.path.relpath(m[0], root)
    with atomic_h5(path) as f:
        f.create_dataset("inputs", data=np.frombuffer(json.dumps(meta).encode(), np.uint8))
        f.attrs["attrs"] = json.dumps(attrs, sort_keys=True)
    return path


def read_inputs(path, root, infos=True):
    """(CalexpInfo list, or None when infos=False; attrs) of write_inputs's file, paths under `root`."""
    with open_read(path) as f:
        attrs = json.loads(f.attrs["attrs"])
        if not infos:
            return None, attrs
        meta = json.loads(f["inputs"][...].tobytes())
    return [CalexpInfo(os.path.join(root, m[0]), tuple(m[1]), *m[2:]) for m in meta], attrs


def coadd_tile(infos, patch, config, box, out, storage=None):
    """Coadd the box (x0, y0, nx, ny) (patch pixels, one of `tiles`) of `patch` from the calexps `infos`
    (CalexpInfo, e.g. read_inputs) into the HDF5 file `out`: the planes of the box as the patch's file will
    store them (Storage.planes, uncompressed), the coadd PSF's sums at the grid nodes whose cells start in
    the box (coaddpsf.psf_sums, group psf_sums; none when an input has no PSF model), the sub-regions
    (patch pixels) and the patch file's attributes. assemble_tiles joins the tiles into the file
    coadd_patch would have written, bit for bit (a pixel's value does not depend on the sub-region it was
    computed in)."""
    infos, subs, weights = _planned(infos, patch, config, out, box)
    px0, py0 = patch.bbox[:2]
    with steptimer.step("psf"):
        sums = coaddpsf.psf_sums(infos, weights, patch.tract_wcs, patch.bbox, config.psf_grid_step, box=box)
    ws = Workspace()
    bx, by, bw, bh = box
    with atomic_h5(out) as f:
        ds = {k: f.create_dataset(k, shape=(bh, bw), dtype=dt) for k, dt in PLANES.items()}
        for x, y, nx_, ny_ in subs:
            sub = coadd_subregion(infos, patch.tract_wcs, (px0 + x, py0 + y, nx_, ny_), config, ws, weights)
            _paste(ds, sub, x - bx, y - by, storage)
        f.create_dataset("subregions", data=np.array(subs, dtype=np.int64).reshape(-1, 4))
        if sums is not None:
            g = f.create_group("psf_sums")
            for k in coaddpsf.SUMS + ("index",):
                g.create_dataset(k, data=sums[k])
            g.attrs["n_x"], g.attrs["n_y"] = sums["n_x"], sums["n_y"]
        for key, v in _attrs(patch, config, infos).items():
            f.attrs[key] = v
        f.attrs["box"] = list(box)
    return out


def assemble_tiles(parts, patch, out, storage=None):
    """Join the tile files `parts` of coadd_tile (in row-major order, covering the patch once) into the
    patch's coadd file `out`: the planes stored as `storage` says (already quantised by the tiles), the
    coadd PSF from the tiles' sums, the sub-regions of all tiles, the attributes. The chunk cache holds a
    row of tiles and the chunk rows they share with the next, so each chunk is compressed once."""
    ny, nx = patch.shape
    kw = storage.lossless().dataset_kw(patch.shape) if storage is not None else {}
    chunk_rows = (kw.get("chunks") or (1, 1))[0]
    covered = np.zeros(patch.shape, bool)
    subs, sums, attrs = [], [], None
    boxes = []
    for part in parts:                     # one file open at a time: a patch may have thousands of tiles
        with open_read(part) as pf:
            boxes.append(tuple(int(v) for v in pf.attrs["box"]))
    height = max((b[3] for b in boxes), default=1)
    cache = 4 * nx * (height + 2 * chunk_rows) + (1 << 20)
    with atomic_h5(out, rdcc_nbytes=cache, rdcc_nslots=100_003) as f:
        ds = {k: f.create_dataset(k, shape=patch.shape, dtype=dt, **kw) for k, dt in PLANES.items()}
        for part, (x0, y0, w, h) in zip(parts, boxes):
            if covered[y0:y0 + h, x0:x0 + w].any() or x0 + w > nx or y0 + h > ny:
                raise ValueError(f"{part}: tile {x0},{y0} {w}x{h} overlaps another or leaves the patch")
            covered[y0:y0 + h, x0:x0 + w] = True
            with open_read(part) as pf:
                for k in PLANES:
                    ds[k][y0:y0 + h, x0:x0 + w] = pf[k][...]
                subs.append(pf["subregions"][...])
                g = pf.get("psf_sums")
                sums.append(None if g is None else {**{k: g[k][...] for k in coaddpsf.SUMS + ("index",)},
                                                    "n_x": int(g.attrs["n_x"]), "n_y": int(g.attrs["n_y"])})
                attrs = attrs or {k: v for k, v in pf.attrs.items() if k != "box"}
        if not covered.all():
            raise ValueError(f"the tiles leave {int((~covered).sum())} pixels of the patch uncovered")
        f.create_dataset("subregions", data=np.concatenate(subs).reshape(-1, 4))
        for k, a in (coaddpsf.psf_planes(coaddpsf.place_sums(sums)) or {}).items():
            f.create_dataset(k, data=a)
        for key, v in attrs.items():
            f.attrs[key] = v
    return out
