"""Quasar variability: a damped random walk (DRW) shared by all bands and all lensed images.

Model (numbers and sources in docs/lensed_quasars.md):
* x(t) is an Ornstein-Uhlenbeck process of unit stationary variance and observed-frame time scale
  tau_obs = (1+z) tau_rest (Kelly, Bechtold & Siemiginowska 2009, ApJ 698, 895). The magnitude in
  band b is m_b(t) = mean_b + sf_inf_b / sqrt(2) x(t), so that the structure function is
  SF_b(dt) = sf_inf_b sqrt(1 - exp(-|dt| / tau_obs)) (MacLeod et al. 2010, ApJ 721, 1014, eq. 4).
* tau_rest: log10(tau / d) ~ N(2.4, 0.2) clipped to [2, 3] (median 251 d, 100-1000 d);
  sf_inf at rest-frame 400 nm: log10(SF / mag) ~ N(log10 0.22, 0.12) clipped to [0.05, 0.8] mag
  (MacLeod et al. 2010: median tau ~ 250 d, SF_inf ~ 0.2 mag).
* Band amplitudes: sf_inf_b = sf_inf (lambda_eff,b / (1+z) / 400 nm)^-0.479 (MacLeod et al. 2010,
  eq. 7 wavelength coefficient B = -0.479): bluer rest-frame light varies more. One x(t) for all bands.
* Mean colours: a power law f_nu ~ nu^-0.44 (Vanden Berk et al. 2001, AJ 122, 549 composite),
  no flux below the rest-frame Lyman limit, Madau 1995 IGM (seds.igm_transmission).

Random numbers: np.random.default_rng((seed, kind, object id)), one stream per quasar and purpose.
"""
import numpy as np

from twinkles_hpc.errors import InputError
from twinkles_hpc.instrument import BANDS, check_band
from twinkles_hpc.sky import seds

#: Kind codes of the keyed random streams (static.py uses 1 stars, 2 galaxies).
QSO_PARAM_KIND = 33     # tau_rest, sf_inf of one quasar
QSO_DRW_KIND = 34       # the DRW sequence x(t) of one quasar
#: Times are quantised to this many days before de-duplication (0.0864 s), so that t - delay
#: computed in different ways lands on the same sample.
TIME_QUANTUM_D = 1e-6
LOG_TAU_REST = (2.4, 0.2, 2.0, 3.0)                   # log10 tau/day: mean, sigma, clip lo, hi
LOG_SF_INF = (np.log10(0.22), 0.12, np.log10(0.05), np.log10(0.8))  # log10 SF/mag at 400 nm rest
SF_LAMBDA_SLOPE = -0.479                               # d log SF / d log lambda_rest
SF_LAMBDA_REF_NM = 400.0
QSO_ALPHA_NU = -0.44                                   # f_nu ~ nu^alpha

#: Fields every quasar record carries (QSO_DTYPE; the lens systems of sprinkler.py too): the DRW key
#: (drw_seed, QSO_DRW_KIND, drw_id), unlensed mean AB magnitudes, tau (days), sf_inf per band (mag).
QSO_FIELDS = ([("drw_seed", "i8"), ("drw_id", "i8")] + [(f"src_mag_{b}", "f8") for b in BANDS]
              + [("tau_rest", "f8"), ("tau_obs", "f8")] + [(f"sf_inf_{b}", "f8") for b in BANDS])
QSO_DTYPE = np.dtype([("id", "i8"), ("redshift", "f8")] + QSO_FIELDS)


def drw_unit(key, t_obs, tau_obs):
    """Unit-variance DRW x(t) at observed times `t_obs` (days; any order, spacing, duplicates).

    On the sorted unique times (quantised to TIME_QUANTUM_D) x_0 ~ N(0, 1) and
    x_{k+1} = a_k x_k + sqrt(1 - a_k^2) z_k, a_k = exp(-dt_k / tau_obs), the exact OU conditional.
    All normals come from np.random.default_rng(key). Values at equal times are equal; x at a given
    time depends on the whole set of times asked for, so evaluate one quasar in one call.
    """
    t = np.asarray(t_obs, dtype=np.float64)
    if not np.all(np.isfinite(t)):
        raise InputError("drw_unit", "t_obs", "finite times in days")
    if not (np.isfinite(tau_obs) and tau_obs > 0):
        raise InputError("drw_unit", "tau_obs", "a positive time scale in days", tau_obs)
    tq, inv = np.unique(np.rint(t.ravel() / TIME_QUANTUM_D).astype(np.int64), return_inverse=True)
    if tq.size == 0:
        return np.zeros(t.shape)
    z = np.random.default_rng(key).standard_normal(tq.size)
    s = (tq - tq[0]) * (TIME_QUANTUM_D / float(tau_obs))       # elapsed time in units of tau
    b = np.sqrt(-np.expm1(-2.0 * np.diff(s)))
    # x_k = sum_j exp(-(s_k - s_j)) b_j z_j (b_0 = 1): a weighted cumulative sum, done in blocks of
    # span < 300 tau so that exp(s) cannot overflow; the state is carried across blocks.
    w = np.concatenate([[1.0], b]) * z
    x = np.empty(tq.size)
    block = np.floor(s / 300.0)
    carry, s_prev = 0.0, 0.0
    for lo, hi in _runs(block):
        s0 = s[lo]
        e = np.exp(s[lo:hi] - s0)
        x[lo:hi] = (carry * np.exp(s_prev - s0) + np.cumsum(w[lo:hi] * e)) / e
        carry, s_prev = x[hi - 1], s[hi - 1]
    return x[inv].reshape(t.shape)


def _runs(labels):
    """(start, stop) index pairs of the runs of equal values in a sorted 1-d array."""
    edges = np.flatnonzero(np.diff(labels)) + 1
    bounds = np.concatenate([[0], edges, [labels.size]])
    return zip(bounds[:-1].tolist(), bounds[1:].tolist())


def quasar_colours(redshift):
    """Mean AB colour m_b - m_i of the power-law quasar SED at `redshift`, dict band -> float."""
    lam = seds.WAVELENGTH_NM
    f = (lam / 750.0) ** -QSO_ALPHA_NU * seds.igm_transmission(lam, redshift)
    f = f * (lam / (1.0 + redshift) > seds.LYMAN_LIMIT_NM)
    m = {b: seds.ab_mag(lam, f, b) for b in BANDS}
    return {b: m[b] - m["i"] for b in BANDS}


def sf_band_scale(redshift, band):
    """sf_inf_band / sf_inf(400 nm rest) for a quasar at `redshift` (MacLeod et al. 2010 slope)."""
    lam_rest = seds.effective_wavelength(check_band(band)) / (1.0 + np.asarray(redshift, dtype=np.float64))
    return (lam_rest / SF_LAMBDA_REF_NM) ** SF_LAMBDA_SLOPE


def draw_quasar_params(seed, ids, redshift, mag_i, *, drw_ids=None):
    """QSO_DTYPE rows for quasars `ids` at `redshift` with mean unlensed i magnitude `mag_i`.

    tau_rest and sf_inf come from np.random.default_rng((seed, QSO_PARAM_KIND, id)); the DRW key is
    (seed, QSO_DRW_KIND, drw_id) with drw_id = id unless `drw_ids` is given.
    """
    ids = np.atleast_1d(np.asarray(ids, dtype=np.int64))
    z = np.broadcast_to(np.asarray(redshift, dtype=np.float64), ids.shape)
    mi = np.broadcast_to(np.asarray(mag_i, dtype=np.float64), ids.shape)
    if np.any(~(z >= 0)) or np.any(~(z <= 20)):
        raise InputError("quasar", "redshift", "0 <= z <= 20", z.min() if z.size else None)
    q = np.zeros(ids.size, QSO_DTYPE)
    q["id"], q["redshift"], q["drw_seed"] = ids, z, int(seed)
    q["drw_id"] = ids if drw_ids is None else np.asarray(drw_ids, dtype=np.int64)
    for k, i in enumerate(ids.tolist()):
        g = np.random.default_rng([int(seed), QSO_PARAM_KIND, i]).standard_normal(2)
        q["tau_rest"][k] = 10.0 ** np.clip(LOG_TAU_REST[0] + LOG_TAU_REST[1] * g[0], *LOG_TAU_REST[2:])
        sf = 10.0 ** np.clip(LOG_SF_INF[0] + LOG_SF_INF[1] * g[1], *LOG_SF_INF[2:])
        col = quasar_colours(z[k])
        for b in BANDS:
            q[f"sf_inf_{b}"][k] = sf * sf_band_scale(z[k], b)
            q[f"src_mag_{b}"][k] = mi[k] + col[b]
    q["tau_obs"] = (1.0 + z) * q["tau_rest"]
    return q


def quasar_mags(params, band, t_obs, delay=0.0):
    """Unlensed magnitude of one quasar at observed times `t_obs` - `delay` (days).

    params: one record with QSO_FIELDS (a QSO_DTYPE row, or a sprinkler LENS_SYSTEM_DTYPE row).
    band: one band, or one band per time (so that all bands share one x(t)).
    delay: scalar, or a sequence of per-image delays -> result shape (n_delay, n_t).
    m = src_mag_b + sf_inf_b / sqrt(2) x(t - delay). x is evaluated once at the union of all shifted
    times, so image j at t equals image i at t - (delay_j - delay_i) exactly (when both are asked for).
    The DRW key is (drw_seed, QSO_DRW_KIND, drw_id) from `params`.
    """
    key = (int(params["drw_seed"]), QSO_DRW_KIND, int(params["drw_id"]))
    return system_mags(key, params, band, t_obs, delay)


def system_mags(key, params, band, t_obs, delay=0.0):
    """quasar_mags with an explicit DRW key (any sequence of non-negative ints)."""
    t = np.asarray(t_obs, dtype=np.float64).ravel()
    d = np.asarray(delay, dtype=np.float64)
    bands = np.broadcast_to(np.asarray(band), t.shape)
    ib = np.array([BANDS.index(check_band(str(b), source="quasar_mags")) for b in bands.tolist()], dtype=np.intp)
    x = drw_unit(tuple(key), t[None, :] - np.atleast_1d(d).ravel()[:, None], float(params["tau_obs"]))
    mean = np.array([params[f"src_mag_{b}"] for b in BANDS])[ib]
    amp = np.array([params[f"sf_inf_{b}"] for b in BANDS])[ib]
    m = mean + amp / np.sqrt(2.0) * x
    return m[0] if d.ndim == 0 else m.reshape(d.shape + t.shape)
