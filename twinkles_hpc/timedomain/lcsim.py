"""Simulated light curves of lensed-quasar doubles on a given cadence, to test and calibrate the delay
estimators (docs/timedelay.md, "Simulated doubles").

Image A's magnitude in band b at time t is m_A + c_b + s(t) + mu_A(t), image B's is
m_A + dm_B + c_b + s(t - delay) + mu_B(t): s a damped random walk (variance SF_inf^2 / 2, observed time
scale tau_rest (1 + z)) shared by every band, c_b the quasar's mean colour, mu a slow microlensing trend
per image. Noise follows each visit's five-sigma depth (LSST's photometric error model, Ivezic et al. 2019,
with a 0.005 mag systematic floor); samples below `min_snr` are not measured (NaN). Each system's
randomness is keyed by (seed, system index) alone.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from twinkles_hpc.timedomain.timedelay import LightCurves

#: Mean quasar colour per band relative to r, mag (a z ~ 2 quasar's u-r, g-r, ...).
MEAN_COLOUR = {"u": 0.35, "g": 0.2, "r": 0.0, "i": -0.1, "z": -0.15, "y": -0.2}
#: gamma of the LSST random photometric error per band (Ivezic et al. 2019, Table 2)
ERROR_GAMMA = {"u": 0.038, "g": 0.039, "r": 0.039, "i": 0.039, "z": 0.039, "y": 0.039}
SYSTEMATIC_MAG = 0.005


@dataclass(frozen=True)
class DoublePopulation:
    """The ranges (uniform draws) of the simulated doubles."""
    #: image A's mean r magnitude
    mag_a: tuple = (21.0, 23.0)
    #: how much fainter B is than A, mag
    dmag_b: tuple = (0.0, 1.0)
    #: B's delay behind A, days
    delay: tuple = (5.0, 120.0)
    #: rest-frame DRW time scale, days
    tau_rest: tuple = (100.0, 500.0)
    #: source redshift (observed time scale tau_rest (1 + z))
    redshift: tuple = (1.0, 3.0)
    #: DRW structure function at infinity, mag
    sf_inf: tuple = (0.15, 0.3)
    #: peak-to-peak of each image's slow microlensing trend over the cadence, mag (0: none)
    microlensing: float = 0.0
    #: per-band scatter of the colours about MEAN_COLOUR, mag
    colour_scatter: float = 0.1
    #: samples of lower signal-to-noise are not measured
    min_snr: float = 3.0


def drw(t, tau, sf_inf, rng):
    """A stationary damped random walk (mean 0, variance sf_inf^2 / 2) at times `t` (any order)."""
    order = np.argsort(t, kind="stable")
    ts = t[order]
    var = 0.5 * sf_inf ** 2
    r = np.exp(-np.diff(ts) / tau)
    kick = rng.standard_normal(ts.size) * np.sqrt(var)
    kick[1:] *= np.sqrt(-np.expm1(-2.0 * np.diff(ts) / tau))
    s = np.empty(ts.size)
    s[0] = kick[0]
    for i in range(1, ts.size):
        s[i] = r[i - 1] * s[i - 1] + kick[i]
    out = np.empty_like(s)
    out[order] = s
    return out


def magnitude_error(mag, band, five_sigma_depth):
    """1-sigma magnitude error of a point source of `mag` in a visit of depth `five_sigma_depth`."""
    gamma = np.array([ERROR_GAMMA.get(b, 0.039) for b in band])
    x = 10.0 ** (0.4 * (mag - five_sigma_depth))
    return np.sqrt((0.04 - gamma) * x + gamma * x * x + SYSTEMATIC_MAG ** 2)


def _microlensing(t, peak_to_peak, rng):
    """A slow trend: a sinusoid of period 2-4 times the span, scaled to `peak_to_peak` over `t`."""
    span = max(t.max() - t.min(), 1.0)
    x = (t - t.min()) / span
    trend = np.sin(2.0 * np.pi * x / rng.uniform(2.0, 4.0) + rng.uniform(0.0, 2.0 * np.pi))
    return peak_to_peak * (trend - trend.min()) / max(np.ptp(trend), 1e-9) - 0.5 * peak_to_peak


def simulate_double(mjd, band, five_sigma_depth, population, seed, index):
    """(LightCurves of images A and B, truth dict) of double `index` of the population on one cadence
    (per visit: mjd, band, five-sigma depth)."""
    rng = np.random.default_rng([seed, index])
    p = population
    u = lambda lo_hi: float(rng.uniform(*lo_hi))  # noqa: E731
    truth = dict(index=index, mag_a=u(p.mag_a), dmag_b=u(p.dmag_b), delay=u(p.delay), tau_rest=u(p.tau_rest),
                 redshift=u(p.redshift), sf_inf=u(p.sf_inf))
    truth["tau"] = truth["tau_rest"] * (1.0 + truth["redshift"])
    bands = sorted(set(band))
    colour = {b: MEAN_COLOUR.get(b, 0.0) + p.colour_scatter * rng.standard_normal() for b in bands}
    c = np.array([colour[b] for b in band])
    n = mjd.size
    s = drw(np.concatenate([mjd, mjd - truth["delay"]]), truth["tau"], truth["sf_inf"], rng)
    mean = {"A": truth["mag_a"], "B": truth["mag_a"] + truth["dmag_b"]}
    mag, magerr = {}, {}
    for k, x in enumerate(("A", "B")):
        true = mean[x] + c + s[k * n:(k + 1) * n]
        if p.microlensing > 0.0:
            true = true + _microlensing(mjd, p.microlensing, rng)
        err = magnitude_error(true, band, five_sigma_depth)
        obs = true + err * rng.standard_normal(n)
        measured = 1.0857 / err >= p.min_snr
        mag[x] = np.where(measured, obs, np.nan)
        magerr[x] = np.where(measured, err, np.nan)
    return LightCurves(np.asarray(mjd, float), np.asarray(band), mag, magerr), truth
