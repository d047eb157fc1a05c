"""The PSF of a coadd, built from its inputs' PSF models (docs/level2-coadd.md, "Coadd PSF").

The coadd is a linear combination of the warped inputs with one weight per input (coadd.combine_warps),
so a point source of flux F appears in it as F sum_k w_k P_k / sum_k w_k, P_k the PSF of input k in patch
pixels. P_k is input k's MixturePSF evaluated at the calexp position of the point, transformed to the
patch frame by the local Jacobian M = d(u, v)/d(x, y) of the warp's mapping (a Gaussian of covariance C in
calexp pixels has covariance M^-1 C M^-T in patch pixels; the warp's flux factor J = |det M| keeps it
normalised). The calexp models include the calexp pixel response and the coadd samples the warped,
pixel-convolved image at patch pixel centres, so nothing more is convolved in. The warp's Lanczos-3
kernel (with its quadratic correction) reproduces polynomials up to degree 2, so it adds no second moment
to a well-sampled image; its residual smoothing is below 1e-4 of the flux (warp accuracy tests).

Inputs are counted where the 6 x 6 kernel footprint lies inside the calexp (the warp's coverage);
clipping and masked pixels are ignored. The sum is evaluated at the centres of square cells of
`step` patch pixels. Its N x K components are merged by size into fixed bins of ln(det C)^(1/4) of width
LN_SIZE_STEP (moment-preserving: weights add, covariances average by weight), so the model has at most
N_BINS components whatever the number of inputs and memory per node does not grow with it; two
components merge only when their sizes differ by less than 10%.
"""
from __future__ import annotations

import numpy as np

from twinkles_hpc.level2.psf import MixturePSF
from twinkles_hpc.level2.warp import pixel_map

#: Size bins of the merged components: ln(size / px) from LN_SIZE_MIN in steps of LN_SIZE_STEP.
LN_SIZE_MIN, LN_SIZE_STEP, N_BINS = np.log(0.2), 0.1, 60
#: Accumulator bytes per node: (N_BINS x 4 + 2) float64.
NODE_BYTES = (N_BINS * 4 + 2) * 8
#: Half-step (patch pixels) of the central differences that give the Jacobian.
JACOBIAN_STEP = 1.0


def grid_nodes(shape, step):
    """Centres (x, y) (patch pixels, 1-D each) of the cells [a step, (a + 1) step) clipped to shape."""
    ny, nx = shape
    cx = [(a + min(a + step, nx) - 1) / 2 for a in range(0, nx, step)]
    cy = [(b + min(b + step, ny) - 1) / 2 for b in range(0, ny, step)]
    return np.array(cx, np.float64), np.array(cy, np.float64)


def n_nodes(shape, step):
    return (-(-shape[0] // step)) * (-(-shape[1] // step))


def _transform(comps, m):
    """Covariances (cxx, cxy, cyy) (n, K) in calexp pixels -> patch pixels; m (n, 2, 2) = d(u, v)/d(x, y)."""
    w, a, b, c = comps
    det = m[:, 0, 0] * m[:, 1, 1] - m[:, 0, 1] * m[:, 1, 0]
    p, q = (m[:, 1, 1] / det)[:, None], (-m[:, 0, 1] / det)[:, None]      # M^-1 = [[p, q], [r, s]]
    r, s = (-m[:, 1, 0] / det)[:, None], (m[:, 0, 0] / det)[:, None]
    return (w, p * p * a + 2 * p * q * b + q * q * c, p * r * a + (p * s + q * r) * b + q * s * c,
            r * r * a + 2 * r * s * b + s * s * c)


def coadd_psf(infos, weights, tract_wcs, patch_bbox, step):
    """The coadd PSF of a patch on its node grid, from the inputs' PSF models: psf_planes(psf_sums(...)).

    infos: CalexpInfo (wcs, shape, psf JSON, ap_corr) in the coadd's order; weights: the coadd's weight
    of each input; patch_bbox: (x0, y0, nx, ny) in tract pixels. Returns None if an input has no PSF
    model, else a dict: psf_weight, psf_cxx, psf_cxy, psf_cyy (n_y, n_x, K) (float64, px^2, weights summing
    to 1 per node; unused components weight 0 with a unit covariance), psf_n_inputs (n_y, n_x) int32 and
    psf_ap_corr (n_y, n_x) (W / sum_k w_k / ap_corr_k, the inputs' aperture corrections combined as the
    coadd combines their PSF fluxes; NaN where an input has none or no input covers the node).
    """
    return psf_planes(psf_sums(infos, weights, tract_wcs, patch_bbox, step))


def psf_sums(infos, weights, tract_wcs, patch_bbox, step, box=None):
    """The sums behind coadd_psf at the grid nodes of the patch whose cells start inside `box` = (x0, y0,
    nx, ny) in patch pixels (all when None: a patch cut into tiles anywhere has each node in exactly one
    tile): {"acc" (n, N_BINS, 4), "total", "inv_ap", "count" (n,), "index" (n,) the nodes' row-major
    indices in the patch's grid, "n_x", "n_y" the grid's shape}, or None if an input has no PSF model.
    Each node's sums are over the inputs in their order whatever the box, so the tiles' sums, placed at
    their indices (place_sums), are the patch's."""
    if not infos or any(not c.psf for c in infos):
        return None
    x0, y0, nx, ny = patch_bbox
    gx, gy = grid_nodes((ny, nx), step)
    ix, iy = np.arange(len(gx)), np.arange(len(gy))
    if box is not None:
        bx, by, bw, bh = box
        ix = ix[(ix * step >= bx) & (ix * step < bx + bw)]
        iy = iy[(iy * step >= by) & (iy * step < by + bh)]
    index = (iy[:, None] * len(gx) + ix[None, :]).ravel()
    X, Y = (a.ravel() + o for a, o in zip(np.meshgrid(gx[ix], gy[iy]), (x0, y0)))
    n = X.size
    acc = np.zeros((n, N_BINS, 4))
    total = np.zeros(n)
    inv_ap = np.zeros(n)
    count = np.zeros(n, np.int32)
    h = JACOBIAN_STEP
    for info, wk in zip(infos, weights):
        u, v = pixel_map(info.wcs, tract_wcs, np.r_[X, X + h, X - h, X, X], np.r_[Y, Y, Y, Y + h, Y - h])
        u, v = u.reshape(5, n), v.reshape(5, n)
        sny, snx = info.shape
        with np.errstate(invalid="ignore"):
            cov = (np.isfinite(u).all(0) & np.isfinite(v).all(0) & (np.floor(u[0]) >= 2)
                   & (np.floor(u[0]) + 3 <= snx - 1) & (np.floor(v[0]) >= 2) & (np.floor(v[0]) + 3 <= sny - 1))
        idx = np.flatnonzero(cov)
        if idx.size == 0:
            continue
        m = np.empty((idx.size, 2, 2))
        m[:, 0, 0], m[:, 1, 0] = (u[1, idx] - u[2, idx]) / (2 * h), (v[1, idx] - v[2, idx]) / (2 * h)
        m[:, 0, 1], m[:, 1, 1] = (u[3, idx] - u[4, idx]) / (2 * h), (v[3, idx] - v[4, idx]) / (2 * h)
        w, a, b, c = _transform(info.psf_model.components_at(u[0, idx], v[0, idx]), m)
        size = 0.25 * np.log(a * c - b * b)
        k = np.clip(np.floor((size - LN_SIZE_MIN) / LN_SIZE_STEP).astype(np.int64), 0, N_BINS - 1)
        ww = wk * w
        rows = np.repeat(idx, w.shape[1]).reshape(w.shape)
        for q, val in enumerate((ww, ww * a, ww * b, ww * c)):
            np.add.at(acc[:, :, q], (rows, k), val)
        total[idx] += wk
        inv_ap[idx] += wk / info.ap_corr
        count[idx] += 1
    return {"acc": acc, "total": total, "inv_ap": inv_ap, "count": count, "index": index, "n_x": len(gx),
            "n_y": len(gy)}


#: The per-node arrays of psf_sums.
SUMS = ("acc", "total", "inv_ap", "count")


def place_sums(parts):
    """psf_sums of tiles joined into the patch's (each node from the tile that holds it); None if any part
    is None or a node is in no tile."""
    if not parts or any(p is None for p in parts):
        return None
    n_x, n_y = parts[0]["n_x"], parts[0]["n_y"]
    out = {k: np.zeros((n_x * n_y,) + parts[0][k].shape[1:], parts[0][k].dtype) for k in SUMS}
    seen = np.zeros(n_x * n_y, bool)
    for p in parts:
        for k in SUMS:
            out[k][p["index"]] = p[k]
        seen[p["index"]] = True
    if not seen.all():
        return None
    out.update(n_x=n_x, n_y=n_y)
    return out


def psf_planes(sums):
    """coadd_psf's planes from psf_sums (None -> None): the components of all nodes merged into the bins
    some node uses, normalised per node."""
    if sums is None:
        return None
    acc, total, inv_ap, count = (sums[k] for k in SUMS)
    n_x = sums["n_x"]
    used = np.flatnonzero(acc[:, :, 0].any(0))
    acc = acc[:, used]
    wsum = acc[:, :, 0]
    has = wsum > 0
    safe = np.where(has, wsum, 1.0)
    shape = (len(total) // n_x, n_x, len(used))
    with np.errstate(invalid="ignore", divide="ignore"):
        out = {"psf_weight": np.where(total[:, None] > 0, wsum / np.where(total > 0, total, 1.0)[:, None], 0.0),
               "psf_cxx": np.where(has, acc[:, :, 1] / safe, 1.0), "psf_cxy": np.where(has, acc[:, :, 2] / safe, 0.0),
               "psf_cyy": np.where(has, acc[:, :, 3] / safe, 1.0)}
        ap = np.where(count > 0, total / inv_ap, np.nan)
    out = {k: v.reshape(shape) for k, v in out.items()}
    out["psf_n_inputs"] = count.reshape(shape[:2])
    out["psf_ap_corr"] = ap.reshape(shape[:2])
    return out


def parse_psf(text):
    """MixturePSF from a calexp's `psf` attribute (JSON), None for an empty one."""
    return MixturePSF.from_dict(text) if text else None


class CoaddPSF:
    """components_at(x, y) of a coadd (patch pixels): the mixture of the grid node whose cell holds the
    position (coadd_psf), restricted to the components some queried node uses."""

    def __init__(self, planes, step):
        self.w, self.cxx, self.cxy, self.cyy = (np.asarray(planes[k], np.float64) for k in
                                                ("psf_weight", "psf_cxx", "psf_cxy", "psf_cyy"))
        self.n_inputs, self.ap_corr = np.asarray(planes["psf_n_inputs"]), np.asarray(planes["psf_ap_corr"])
        self.step = int(step)

    @classmethod
    def from_file(cls, f):
        """From an open coadd file (its psf_* datasets), None if it has none."""
        if "psf_weight" not in f:
            return None
        names = ("psf_weight", "psf_cxx", "psf_cxy", "psf_cyy", "psf_n_inputs", "psf_ap_corr")
        return cls({k: f[k][...] for k in names}, f.attrs["psf_grid_step"])

    def node(self, x, y):
        """(row, column) of the node serving each position."""
        ny, nx = self.n_inputs.shape
        i = np.clip(np.floor((np.atleast_1d(x) + 0.5) / self.step).astype(np.int64), 0, nx - 1)
        j = np.clip(np.floor((np.atleast_1d(y) + 0.5) / self.step).astype(np.int64), 0, ny - 1)
        return j, i

    def components_at(self, x, y):
        j, i = self.node(x, y)
        w = self.w[j, i]
        keep = np.flatnonzero((w > 0).any(0)) if len(w) else np.arange(0)
        if keep.size == 0:
            keep = np.arange(min(1, w.shape[1]))
        return tuple(a[j, i][:, keep] for a in (self.w, self.cxx, self.cxy, self.cyy))

    def covered(self, x, y):
        """True where the node has inputs (a model)."""
        return self.n_inputs[self.node(x, y)] > 0

    def ap_corr_at(self, x, y):
        return self.ap_corr[self.node(x, y)]
