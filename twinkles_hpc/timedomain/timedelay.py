"""Time delays of lensed-quasar images from their multi-band light curves (docs/timedelay.md).

The delay of image X is measured against image A, positive when X's light curve lags A's. Two independent
estimators, each with a quality gate that returns no estimate when the data cannot constrain the delay, and
a 1-sigma error calibrated on simulated curves of the Run 1 cadence and noise (`timedomain.lcsim`):

- `drw`: the likelihood of one damped random walk (an Ornstein-Uhlenbeck Gaussian process) seen by both
  images, X shifted by the delay, plus per image and band offsets and a slow per-image polynomial trend
  (microlensing) marginalised exactly; O(N) through the DRW's tridiagonal precision (the compiled kernel
  `twinkles_hpc._timedelay`). A global grid over the allowed range, then a finer one around the best
  delay; the error from the likelihood profile.
- `difference`: each image's light curve smoothed (local-linear kernel regression, all bands after
  per-band offsets), and the delay that minimises the scatter of X's smooth curve minus A's shifted one
  about a relative trend; the error from wild-bootstrap resamples. No model of the variability.

Arrays in, results out: this module reads light-curve files and measures; it never sees the truth.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.optimize import minimize

from twinkles_hpc import _timedelay
from twinkles_hpc.errors import InputError

#: Image names in the order of the light-curve files' columns; delays are relative to the first.
IMAGES = ("A", "B", "C", "D")
#: Samples closer in time than this (days) see the same value of the driving light curve.
SAME_TIME_DAYS = 1e-3
#: A delay error is catastrophic above this (days; TDC1's convention in the issue).
CATASTROPHIC_DAYS = 20.0


@dataclass
class LightCurves:
    """One lens system's light curves: per sample its date `mjd` (days), `band`, and per image its
    magnitude and 1-sigma error (NaN where the image was not measured)."""
    mjd: np.ndarray
    band: np.ndarray
    mag: dict
    magerr: dict

    def __post_init__(self):
        self.mjd = np.asarray(self.mjd, np.float64)
        self.band = np.asarray(self.band).astype(str)
        self.mag = {x: np.asarray(v, np.float64) for x, v in self.mag.items()}
        self.magerr = {x: np.asarray(v, np.float64) for x, v in self.magerr.items()}
        if "A" not in self.mag or set(self.mag) != set(self.magerr) or not set(self.mag) <= set(IMAGES):
            raise InputError("LightCurves", "mag", f"magnitudes and errors of image A and others of {IMAGES}",
                             sorted(self.mag))
        shapes = {self.band.shape} | {v.shape for v in (*self.mag.values(), *self.magerr.values())}
        if self.mjd.ndim != 1 or shapes != {self.mjd.shape}:
            raise InputError("LightCurves", "mjd", "one value per sample in every array", sorted(shapes))

    @property
    def images(self):
        return [x for x in IMAGES if x in self.mag]


@dataclass
class DelayConfig:
    """How delays are searched, gated and their errors scaled (both estimators)."""
    #: largest |delay| searched, days (the range is symmetric: X may lead or lag A)
    max_delay: float = 150.0
    #: step of the global grid, days (finer than the in-season cadence of a few days)
    grid_step: float = 1.0
    #: step of the refinement grid around the best delay, days, and its most points (the step grows beyond)
    fine_step: float = 0.1
    max_fine: int = 150
    #: degree of the slow per-image (microlensing) polynomial trend in time; 0 for none
    trend_order: int = 2
    #: gate: each image needs this many measurements; and (drw) a delay needs at least this many samples of
    #: X within `overlap_days` of a sample of A once shifted
    min_overlap: int = 10
    overlap_days: float = 5.0
    #: gate (drw): every delay within this much -2 ln L of the best must lie in one interval around it,
    #: away from the ends of the range
    ambiguity_chi2: float = 9.0
    #: gate: no estimate when the calibrated 1-sigma error exceeds this, days
    max_error: float = 15.0
    #: gate: no estimate when the calibrated 1-sigma error exceeds this fraction of |delay| (0: no limit)
    max_relative_error: float = 0.15
    #: gate: no estimate when |delay| is below this, days. The images of a system are measured on the same
    #: visits, so their errors share each visit's calibration and PSF-model errors; at a delay under a night
    #: every shifted sample of X sits on its own visit's sample of A and that shared noise looks like common
    #: variability (on ten years of the Run 1 cadence: estimates of 0.1 d +- 0.0002-0.014 d for image pairs
    #: whose true delays are 11.6 d, or that are not two images of one quasar). A nightly cadence does not
    #: resolve such delays anyway.
    min_delay: float = 1.0
    #: gate (drw): the shared light curve must beat independent ones by this much -2 ln L
    min_signal_chi2: float = 9.0
    #: drw: calibrated error = scale x the delay's standard deviation under the likelihood profile; the rms
    #: of (estimate - true) / raw error on 400 simulated Run 1 doubles (docs/timedelay.md)
    drw_error_scale: float = 1.04
    #: difference: Gaussian bandwidth of the local-linear smoothing, days, and its grid step, days
    smooth_days: float = 8.0
    smooth_step: float = 2.0
    #: difference: the smoothed curves must overlap this long at a trial delay (tapered), days
    min_overlap_days: float = 100.0
    #: gate (difference): the median scatter over the trial delays must exceed the best's this many times
    min_contrast: float = 2.5
    #: gate (difference): the best delay must be this many grid steps inside the measurable range
    edge_steps: int = 3
    #: difference: wild-bootstrap resamples for the error
    n_bootstrap: int = 40
    #: difference: calibrated error = scale x the robust spread of the resampled delays (calibrated as drw's)
    difference_error_scale: float = 1.28
    #: gate (difference): at most this fraction of resampled delays farther than 3 sigma + 2 d from the best
    max_outlier_fraction: float = 0.2
    #: randomness of the bootstrap (keyed by this seed and the image)
    seed: int = 0


@dataclass
class DelayEstimate:
    """The delay of `image` relative to A (days, positive when it lags) and its calibrated 1-sigma error,
    or delay None with `reason` saying why there is no estimate; `info` holds diagnostics."""
    image: str
    estimator: str
    delay: float | None
    error: float | None
    reason: str = ""
    info: dict = field(default_factory=dict)


# -- light-curve files -----------------------------------------------------------------------------------
def read_lightcurves(path):
    """LightCurves from a CSV or ECSV file with columns mjd, band, then mag_X and magerr_X for each image X
    of A, B, C, D it has (NaN or empty where X was not measured). Bad input raises InputError naming the
    file, the column and what was expected."""
    from astropy.io import ascii

    path = Path(path)
    if path.is_dir():
        raise InputError(path, "path", "a light-curve file (CSV or ECSV), not a directory (a run directory is "
                         "given alone: `twinkles-hpc timedelay RUNDIR`)")
    if not path.is_file():
        raise InputError(path, "file", "a light-curve file (CSV or ECSV)", "no such file")
    try:
        with open(path, encoding="utf-8") as fh:
            ecsv = fh.readline().startswith("# %ECSV")
        table = ascii.read(path, format="ecsv" if ecsv else "csv")
    except (UnicodeDecodeError, ValueError, ascii.InconsistentTableError) as err:
        raise InputError(path, "format", "a CSV or ECSV table with a header line",
                         str(err).splitlines()[0] if str(err) else type(err).__name__) from None
    names = set(table.colnames)
    for col, what in (("mjd", "a column mjd (days)"), ("band", "a column band"),
                      ("mag_A", "a column mag_A (image A's magnitudes; delays are relative to A)")):
        if col not in names:
            raise InputError(path, col, what, "missing")
    images = [x for x in IMAGES if f"mag_{x}" in names]
    if len(images) < 2:
        raise InputError(path, "mag_B", "magnitudes of image A and of at least one of B, C, D",
                         f"only image {images[0]}")
    mjd = _column(path, table, "mjd", allow_nan=False)
    band = np.array([str(b).strip() for b in np.ma.filled(table["band"].astype(str), "")])
    if mjd.size < 2:
        raise InputError(path, "mjd", "at least two rows", f"{mjd.size}")
    if (band == "").any():
        raise InputError(path, "band", "a band name in every row", f"an empty one in data row "
                         f"{int(np.flatnonzero(band == '')[0]) + 1}")
    mag, magerr = {}, {}
    for x in images:
        if f"magerr_{x}" not in names:
            raise InputError(path, f"magerr_{x}", f"a column magerr_{x} beside mag_{x}", "missing")
        mag[x] = _column(path, table, f"mag_{x}")
        magerr[x] = _column(path, table, f"magerr_{x}")
        bad = np.isfinite(mag[x]) & ~(magerr[x] > 0.0)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise InputError(path, f"magerr_{x}", "a positive error wherever the magnitude is given",
                             f"{magerr[x][i]} in data row {i + 1}")
    return LightCurves(mjd, band, mag, magerr)


def _column(path, table, name, allow_nan=True):
    """A column as float64 (masked or empty cells NaN), with a one-line error on anything else."""
    col = np.ma.MaskedArray(np.asarray(table[name]), mask=np.ma.getmaskarray(table[name]))
    numeric = col.dtype.kind in "fiu"
    values = np.ma.filled(col.astype(np.float64), np.nan) if numeric else np.ma.filled(col.astype(object), None)
    out = np.array(values, dtype=np.float64) if numeric else np.empty(len(values))
    for i, v in enumerate(() if numeric else values):
        text = "" if v is None else str(v).strip()
        try:
            out[i] = float(text) if text not in ("", "--") else np.nan
        except ValueError:
            raise InputError(path, name, "numbers", f"{text!r} in data row {i + 1}") from None
    if not allow_nan and not np.isfinite(out).all():
        i = int(np.flatnonzero(~np.isfinite(out))[0])
        raise InputError(path, name, "a finite number in every row", f"{values[i]!r} in data row {i + 1}")
    return out


# -- the damped random walk likelihood ------------------------------------------------------------------
def _reml(t, w, z, ztwz, tau, var):
    """-2 ln L, up to a constant, of the data y = z[:, 0] at sorted times `t` (inverse variances `w`) under
    C = N + K_DRW(tau, var), restricted: the linear parameters (z's other columns) marginalised with flat
    priors. `ztwz` = z^T N^-1 z.

    The DRW at the m distinct times has a tridiagonal precision Q; with P mapping samples to distinct
    times, C^-1 = N^-1 - N^-1 P A^-1 P^T N^-1 with A = Q + P^T N^-1 P (Woodbury) and
    |C| = |N| |A| / |Q|: one bidiagonal Cholesky factor U of A and one solve h = U^-T P^T N^-1 z (the
    compiled kernel) give z^T C^-1 z = ztwz - h^T h and ln|C| in O(m k).
    """
    h = np.empty_like(z)
    m, logdet = _timedelay.drw_solve(t, w, z, tau, var, SAME_TIME_DAYS, h)
    if m < 0:
        return np.inf
    g = ztwz - h[:m].T @ h[:m]
    try:
        lf = np.linalg.cholesky(g[1:, 1:])
    except np.linalg.LinAlgError:
        return np.inf
    a = np.linalg.solve(lf, g[1:, 0])
    return float(g[0, 0] - a @ a + logdet + 2.0 * np.log(np.diag(lf)).sum())


class _Pair:
    """The samples of A and X for one delay fit: times, weights, data and linear-parameter columns."""

    def __init__(self, curves, image, trend_order):
        rows = []
        for k, x in enumerate(("A", image)):
            ok = np.isfinite(curves.mag[x])
            rows.append((k, curves.mjd[ok], curves.band[ok], curves.mag[x][ok], curves.magerr[x][ok]))
        self.image = np.concatenate([np.full(r[1].size, r[0]) for r in rows])
        self.t = np.concatenate([r[1] for r in rows])
        band = np.concatenate([r[2] for r in rows])
        y = np.concatenate([r[3] for r in rows])
        self.w = 1.0 / np.concatenate([r[4] for r in rows]) ** 2
        cols = [y]
        for k in (0, 1):
            for b in np.unique(band[self.image == k]):
                cols.append(((self.image == k) & (band == b)).astype(float))
        span = self.t.max() - self.t.min()
        x = 2.0 * (self.t - self.t.min()) / max(span, 1.0) - 1.0
        for k in (0, 1):
            for order in range(1, trend_order + 1):
                leg = np.polynomial.legendre.Legendre.basis(order)(x)
                cols.append(np.where(self.image == k, leg, 0.0))
        self.z = np.column_stack(cols)
        # Centre the data on its weighted mean (absorbed by the offsets) for a well-scaled Z^T C^-1 Z.
        self.z[:, 0] -= np.average(y, weights=self.w)
        self.ztwz = self.z.T @ (self.z * self.w[:, None])
        self.parts = []
        for k in (0, 1):
            sel = np.flatnonzero(self.image == k)
            sel = sel[np.argsort(self.t[sel], kind="stable")]
            cols = np.flatnonzero(np.any(self.z[sel] != 0.0, axis=0) | (np.arange(self.z.shape[1]) == 0))
            z = np.ascontiguousarray(self.z[np.ix_(sel, cols)])
            self.parts.append((self.t[sel], self.w[sel], z, z.T @ (z * self.w[sel, None])))

    def residual_variance(self):
        """Variance (mag^2) of the data about their weighted least-squares offsets and trends, less the
        noise: where the DRW's variance search starts."""
        sw = np.sqrt(self.w)
        y, f = self.z[:, 0], self.z[:, 1:]
        beta = np.linalg.lstsq(f * sw[:, None], y * sw, rcond=None)[0]
        return float(max(np.mean((y - f @ beta) ** 2) - np.mean(1.0 / self.w), 1e-4))

    def reml(self, delay, tau, var):
        """-2 ln L of the shared curve with X shifted by `delay`."""
        ts = self.t - np.where(self.image == 1, delay, 0.0)
        order = np.argsort(ts, kind="stable")
        return _reml(ts[order], self.w[order], self.z[order], self.ztwz, tau, var)

    def reml_independent(self, tau, var):
        """-2 ln L with A and X seen as two unrelated realisations of the DRW."""
        return sum(_reml(t, w, z, ztwz, tau, var) for t, w, z, ztwz in self.parts)

    def overlap(self, delay, window):
        """Samples of X that have a sample of A within `window` days once shifted by `delay`."""
        ta = np.sort(self.t[self.image == 0])
        tx = self.t[self.image == 1] - delay
        i = np.clip(np.searchsorted(ta, tx), 1, ta.size - 1)
        return int((np.minimum(np.abs(tx - ta[i - 1]), np.abs(tx - ta[i])) <= window).sum())


#: DRW hyper-parameter bounds: ln tau (days) and ln variance (mag^2)
_LN_TAU, _LN_VAR = (np.log(5.0), np.log(2e4)), (np.log(1e-5), np.log(1.0))


def _fit_hyper(fn, start):
    """(tau, var, -2 ln L) minimising fn(tau, var) within the bounds: the best of a coarse log grid about
    `start` = (tau, var), then L-BFGS from it (the likelihood can have a second optimum at the bounds)."""
    lo, hi = np.array([_LN_TAU[0], _LN_VAR[0]]), np.array([_LN_TAU[1], _LN_VAR[1]])
    starts = [np.clip([np.log(ta), np.log(start[1] * f)], lo, hi)
              for ta in (30.0, 100.0, 300.0, 1000.0, 3000.0) for f in (0.25, 1.0, 4.0)]
    starts.append(np.clip(np.log(start), lo, hi))
    x0 = min(starts, key=lambda p: fn(np.exp(p[0]), np.exp(p[1])))
    res = minimize(lambda p: fn(np.exp(p[0]), np.exp(p[1])), x0, method="L-BFGS-B",
                   bounds=[_LN_TAU, _LN_VAR], options={"maxiter": 60})
    return float(np.exp(res.x[0])), float(np.exp(res.x[1])), float(res.fun)


def _one_interval(grid, prof, level, step):
    """True when the delays within `level` of the profile's minimum form one interval (holes of a few
    grid steps, from the profile's small-scale roughness, allowed) away from the range's ends."""
    inside = np.flatnonzero(prof <= prof.min() + level)
    if inside[0] == 0 or inside[-1] == grid.size - 1:
        return False
    return bool(np.all(np.diff(grid[inside]) <= 3.5 * step))


def _posterior(grid, prof):
    """Mean and standard deviation of the delay under exp(-prof / 2) on a uniform grid."""
    p = np.exp(-0.5 * (prof - prof.min()))
    p /= p.sum()
    mean = float((p * grid).sum())
    return mean, float(np.sqrt((p * (grid - mean) ** 2).sum()))


def _gate(cfg, delay, error, overlap=None):
    """Why an estimate that passed its estimator's own checks is not reported, or ''."""
    if overlap is not None and overlap < cfg.min_overlap:
        return f"{overlap} overlapping measurements (fewer than {cfg.min_overlap})"
    if error > cfg.max_error:
        return f"error {error:.1f} d above {cfg.max_error:g} d"
    if abs(delay) < cfg.min_delay:
        return f"|delay| {abs(delay):.2f} d below {cfg.min_delay:g} d (the images share each visit's errors)"
    if cfg.max_relative_error and error > cfg.max_relative_error * abs(delay):
        return f"relative error {error / max(abs(delay), 1e-9):.0%} above {cfg.max_relative_error:.0%}"
    return ""


def drw_delay(curves, image, config=None):
    """The delay of `image` relative to A by the shared damped-random-walk likelihood (module doc)."""
    cfg = config or DelayConfig()
    no = lambda why, **info: DelayEstimate(image, "drw", None, None, why, info)  # noqa: E731
    if min(np.isfinite(curves.mag[x]).sum() for x in ("A", image)) < cfg.min_overlap:
        return no("too few measurements")
    pair = _Pair(curves, image, cfg.trend_order)
    # DRW hyper-parameters of A and X as unrelated curves; a coarse search with them; the hyper-parameters
    # of the shared curve at its best delay; then the global grid with those.
    tau, var, _ = _fit_hyper(pair.reml_independent, (300.0, pair.residual_variance()))
    coarse = np.arange(-cfg.max_delay, cfg.max_delay + cfg.grid_step, 2.0 * cfg.grid_step)
    best = coarse[np.argmin([pair.reml(d, tau, var) for d in coarse])]
    tau, var, _ = _fit_hyper(lambda ta, va: pair.reml(best, ta, va), (tau, var))
    grid = np.arange(-cfg.max_delay, cfg.max_delay + 0.5 * cfg.grid_step, cfg.grid_step)
    prof = np.array([pair.reml(d, tau, var) for d in grid])
    if not np.isfinite(prof).any():
        return no("likelihood not computable (covariance not positive definite)")
    i = int(np.argmin(prof))
    info = dict(tau=tau, var=var, signal_chi2=float(pair.reml_independent(tau, var) - prof[i]))
    if not _one_interval(grid, prof, cfg.ambiguity_chi2, cfg.grid_step):
        return no("ambiguous likelihood profile", **info)
    if info["signal_chi2"] < cfg.min_signal_chi2:
        return no("no common variability", **info)
    # The profile on a fine grid where it is within 16 of its minimum: the delay at its minimum, the
    # raw error its standard deviation as a likelihood (robust to the profile's small-scale roughness).
    lo, hi = np.flatnonzero(prof <= prof[i] + 16.0)[[0, -1]]
    lo, hi = grid[max(lo - 1, 0)], grid[min(hi + 1, grid.size - 1)]
    fine = np.linspace(lo, hi, min(int(np.ceil((hi - lo) / cfg.fine_step)) + 1, cfg.max_fine))
    fprof = np.array([pair.reml(d, tau, var) for d in fine])
    delay = float(fine[np.argmin(fprof)])
    raw_error = _posterior(fine, fprof)[1]
    error = cfg.drw_error_scale * raw_error
    info.update(raw_error=raw_error, overlap=pair.overlap(delay, cfg.overlap_days))
    why = _gate(cfg, delay, error, info["overlap"])
    if why:
        return no(why, **info)
    return DelayEstimate(image, "drw", delay, error, "", info)


# -- the smoothed-difference estimator --------------------------------------------------------------------
class _Smooth:
    """One image's light curve as a local-linear regression with a Gaussian kernel of width h, all bands
    together after removing per-band offsets (each band's weighted mean about the smooth curve). The
    smooth curve is linear in the data, S = sum_j L_j y_j over the samples within 4 h, so resampled data
    cost one weighted sum. It is kept on a regular grid where it interpolates (samples within 2 h on both
    sides), with its variance and a taper that rises from 0 to 1 over h inside each such stretch."""

    def __init__(self, curves, image, grid, h):
        ok = np.isfinite(curves.mag[image])
        order = np.argsort(curves.mjd[ok], kind="stable")
        self.t = curves.mjd[ok][order]
        band, y = curves.band[ok][order], curves.mag[image][ok][order]
        self.w = 1.0 / curves.magerr[image][ok][order] ** 2
        self.n_grid = grid.size
        i = np.searchsorted(self.t, grid)
        before = np.where(i > 0, grid - self.t[np.maximum(i - 1, 0)], np.inf)
        after = np.where(i < self.t.size, self.t[np.minimum(i, self.t.size - 1)] - grid, np.inf)
        defined = (before <= 2.0 * h) & (after <= 2.0 * h)
        self.at = np.flatnonzero(defined)
        self.grid_op = self._operator(grid[self.at], h)
        data_op = self._operator(self.t, h)
        codes = np.unique(band, return_inverse=True)[1]
        fitted = np.zeros_like(y)
        for _ in range(2):
            off = np.bincount(codes, self.w * (y - fitted)) / np.bincount(codes, self.w)
            self.y = y - off[codes]
            fitted = self._apply(data_op, self.y)
        self.fitted, self.resid = fitted, self.y - fitted
        idx, lw = self.grid_op
        self.v = np.zeros(grid.size)
        self.v[self.at] = (lw * lw / self.w[idx]).sum(1)
        self.taper = _taper(defined, grid[1] - grid[0], h)

    def _operator(self, at, h):
        """(sample indices, local-linear weights), each (at.size, window): the smooth at times `at`."""
        lo = np.searchsorted(self.t, at - 4.0 * h)
        hi = np.searchsorted(self.t, at + 4.0 * h, side="right")
        width = max(int((hi - lo).max(initial=1)), 1)
        idx = np.minimum(lo[:, None] + np.arange(width), self.t.size - 1)
        dt = self.t[idx] - at[:, None]
        k = np.where(idx < hi[:, None], np.exp(-0.5 * (dt / h) ** 2) * self.w[idx], 0.0)
        s0, s1, s2 = k.sum(1), (k * dt).sum(1), (k * dt * dt).sum(1)
        den = s0 * s2 - s1 * s1
        den = np.where(den > 0.0, den, np.inf)
        return idx, k * (s2[:, None] - s1[:, None] * dt) / den[:, None]

    @staticmethod
    def _apply(op, y):
        idx, lw = op
        return (lw * y[idx]).sum(1)

    def on_grid(self, y):
        """The smooth curve of data `y` on the grid (0 where it is not defined)."""
        out = np.zeros(self.n_grid)
        out[self.at] = self._apply(self.grid_op, y)
        return out


def _taper(defined, step, h):
    """Weight of each grid point: its distance to the nearest point where the smooth curve is undefined,
    in units of h, capped at 1, so that samples enter and leave the comparison smoothly with the delay."""
    idx = np.arange(defined.size)
    last = np.maximum.accumulate(np.where(~defined, idx, -1))
    nxt = np.minimum.accumulate(np.where(~defined, idx, defined.size)[::-1])[::-1]
    dist = np.minimum(idx - last, nxt - idx) * step
    return np.where(defined, np.clip((dist - step) / h, 0.0, 1.0), 0.0)


def _shifted(values, pos):
    """`values` (on the grid) at grid positions `pos` (any shape; fractional: linear interpolation), 0 off
    the grid."""
    if pos.dtype.kind in "iu":
        inside = (pos >= 0) & (pos < values.size)
        return np.where(inside, values[np.clip(pos, 0, values.size - 1)], 0.0)
    i0 = np.floor(pos).astype(int)
    frac = pos - i0
    inside = (i0 >= 0) & (i0 + 1 < values.size)
    i0 = np.clip(i0, 0, values.size - 2)
    return np.where(inside, (1.0 - frac) * values[i0] + frac * values[i0 + 1], 0.0)


def _difference_scan(a, x, sa, sx, shifts, basis, min_points, per_point):
    """Chi^2 per degree of freedom of S_X(t) - S_A(t - delay) about a relative polynomial trend in time (a
    constant included), for each trial delay given as a shift in grid steps (integer or fractional). Grid
    points are weighted by both curves' tapers and inverse variances; inf where the tapered overlap is under
    `min_points` grid points. Neighbouring grid points of a smooth curve are not independent: `per_point`
    independent measurements per grid point set the degrees of freedom."""
    at = x.at[x.taper[x.at] > 0.0]
    pos = at[None, :] - shifts[:, None]
    taper = x.taper[at][None, :] * _shifted(a.taper, pos)
    live = taper > 0.0
    w = np.where(live, taper / np.where(live, x.v[at][None, :] + _shifted(a.v, pos), 1.0), 0.0)
    r = np.where(live, sx[at][None, :] - _shifted(sa, pos), 0.0)
    b = basis[:, at]
    k = b.shape[0]
    m = (w @ (b[:, None, :] * b[None, :, :]).reshape(k * k, -1).T).reshape(-1, k, k)
    v = (w * r) @ b.T
    n = taper.sum(1)
    m[:, np.arange(k), np.arange(k)] += 1e-12 + (n < min_points)[:, None]
    beta = np.linalg.solve(m, v[..., None])[..., 0]
    dof = np.maximum(n * per_point - k, 1.0)
    chi2 = ((w * r * r).sum(1) - (beta * v).sum(1)) * per_point / dof
    return np.where(n >= min_points, chi2, np.inf)


def difference_delay(curves, image, config=None):
    """The delay of `image` relative to A minimising the scatter of the difference of their smoothed
    light curves (module doc); the raw error the robust spread of the delays found on wild-bootstrap
    resamples of the residuals about the smooth curves."""
    cfg = config or DelayConfig()
    no = lambda why, **info: DelayEstimate(image, "difference", None, None, why, info)  # noqa: E731
    if min(np.isfinite(curves.mag[x]).sum() for x in ("A", image)) < cfg.min_overlap:
        return no("too few measurements")
    step = cfg.smooth_step
    grid = np.arange(curves.mjd.min(), curves.mjd.max() + 0.5 * step, step)
    a, x = (_Smooth(curves, name, grid, cfg.smooth_days) for name in ("A", image))
    u = 2.0 * (grid - grid[0]) / max(grid[-1] - grid[0], 1.0) - 1.0
    basis = np.stack([np.polynomial.legendre.Legendre.basis(o)(u) for o in range(cfg.trend_order + 1)])
    shifts = np.arange(-int(cfg.max_delay // step), int(cfg.max_delay // step) + 1)
    fine = np.arange(-step, step + 0.5 * cfg.fine_step, cfg.fine_step) / step
    scan_args = (basis, cfg.min_overlap_days / step, min(step / (np.sqrt(2.0 * np.pi) * cfg.smooth_days), 1.0))

    def best_delay(ya, yx):
        sa, sx = a.on_grid(ya), x.on_grid(yx)
        chi2 = _difference_scan(a, x, sa, sx, shifts, *scan_args)
        i = int(np.argmin(chi2))
        fchi2 = _difference_scan(a, x, sa, sx, shifts[i] + fine, *scan_args)
        return float((shifts[i] + fine[int(np.argmin(fchi2))]) * step), chi2

    delay, chi2 = best_delay(a.y, x.y)
    if not np.isfinite(chi2).any():
        return no("the light curves never overlap")
    # The minimum must lie inside the measurable range, away from where the overlap gets too short.
    i = int(np.argmin(chi2))
    near = chi2[max(i - cfg.edge_steps, 0):i + cfg.edge_steps + 1]
    if near.size < 2 * cfg.edge_steps + 1 or not np.isfinite(near).all():
        return no("smallest scatter at the end of the measurable range")
    rng = np.random.default_rng([cfg.seed, IMAGES.index(image)])
    boot = np.empty(cfg.n_bootstrap)
    for k in range(cfg.n_bootstrap):
        y_star = [c.fitted + c.resid * rng.choice((-1.0, 1.0), c.resid.size) for c in (a, x)]
        boot[k] = best_delay(*y_star)[0]
    raw_error = max(1.4826 * float(np.median(np.abs(boot - np.median(boot)))), cfg.fine_step)
    error = cfg.difference_error_scale * raw_error
    outliers = float(np.mean(np.abs(boot - delay) > 3.0 * raw_error + 2.0))
    info = dict(raw_error=raw_error, bootstrap_outliers=outliers, chi2=float(chi2[i]),
                contrast=float(np.median(chi2[np.isfinite(chi2)]) / chi2[i]))
    if info["contrast"] < cfg.min_contrast:
        return no("no clear minimum of the scatter", **info)
    if outliers > cfg.max_outlier_fraction:
        return no(f"{outliers:.0%} of resampled delays away from the best", **info)
    why = _gate(cfg, delay, error)
    if why:
        return no(why, **info)
    return DelayEstimate(image, "difference", delay, error, "", info)


#: The estimators by name: fn(curves, image, config) -> DelayEstimate.
ESTIMATORS = {"drw": drw_delay, "difference": difference_delay}


def measure_delays(curves, estimator="drw", config=None):
    """{image: DelayEstimate} for every image other than A in `curves`."""
    fn = ESTIMATORS[estimator]
    return {x: fn(curves, x, config) for x in curves.images if x != "A"}


# -- metrics ---------------------------------------------------------------------------------------------
def tdc1_metrics(estimates, true_delays, catastrophic_days=CATASTROPHIC_DAYS):
    """TDC1 metrics (Liao et al. 2015) of delay estimates against the true delays, one per system.

    `estimates`: (delay, error) pairs, delay None for no estimate. Returns a dict: n (systems), f (fraction
    with an estimate), chi2 (mean ((est - true) / error)^2), P (mean error / |true|), A (mean
    (est - true) / true) and catastrophic (fraction of the estimates with |est - true| > catastrophic_days);
    the means are over the systems with an estimate (NaN when there is none).
    """
    true = np.asarray(true_delays, float)
    has = np.array([e[0] is not None for e in estimates], bool)
    est = np.array([e[0] if e[0] is not None else np.nan for e in estimates], float)
    err = np.array([e[1] if e[0] is not None else np.nan for e in estimates], float)
    out = dict(n=int(true.size), f=float(has.mean()) if true.size else float("nan"))
    if not has.any():
        return dict(out, chi2=float("nan"), P=float("nan"), A=float("nan"), catastrophic=float("nan"))
    d, e, t = est[has] - true[has], err[has], true[has]
    return dict(out, chi2=float(np.mean((d / e) ** 2)), P=float(np.mean(e / np.abs(t))), A=float(np.mean(d / t)),
                catastrophic=float(np.mean(np.abs(d) > catastrophic_days)))
