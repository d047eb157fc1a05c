"""Quasar variability: the DRW process, its structure function, shared curves of lensed images."""
import numpy as np
import pytest

from twinkles_hpc.errors import InputError
from twinkles_hpc.instrument import BANDS
from twinkles_hpc.sky import seds
from twinkles_hpc.sky.variability import (QSO_DRW_KIND, QSO_DTYPE, TIME_QUANTUM_D, draw_quasar_params, drw_unit,
                                          quasar_mags)


def reference_drw(key, t, tau):
    """The OU conditional update, one step at a time, on the sorted unique times."""
    keys = np.unique(np.rint(np.asarray(t) / TIME_QUANTUM_D).astype(np.int64))
    tu = keys * TIME_QUANTUM_D
    z = np.random.default_rng(key).standard_normal(tu.size)
    x = np.empty(tu.size)
    x[0] = z[0]
    for k in range(1, tu.size):
        a = np.exp(-(tu[k] - tu[k - 1]) / tau)
        x[k] = a * x[k - 1] + np.sqrt(1.0 - a * a) * z[k]
    return x[np.searchsorted(keys, np.rint(np.asarray(t) / TIME_QUANTUM_D).astype(np.int64))]


def one_quasar(tau_obs=300.0, sf=0.25, seed=3, qid=17):
    q = np.zeros(1, QSO_DTYPE)[0]
    q["drw_seed"], q["drw_id"], q["tau_obs"] = seed, qid, tau_obs
    for b in BANDS:
        q[f"src_mag_{b}"], q[f"sf_inf_{b}"] = 21.0, sf
    return q


def test_drw_is_the_exact_ou_update_for_any_order_and_spacing():
    rng = np.random.default_rng(0)
    t = np.concatenate([rng.uniform(0, 3650, 500), rng.uniform(100, 100.5, 50), [7.0, 7.0, 7.0]])
    tau = 40.0
    x = drw_unit((1, 2, 3), t, tau)
    assert np.allclose(x, reference_drw((1, 2, 3), t, tau), rtol=0, atol=1e-10)
    assert x[-1] == x[-2] == x[-3]                                    # duplicates give equal values
    perm = rng.permutation(t.size)
    assert np.array_equal(drw_unit((1, 2, 3), t[perm], tau), x[perm])  # order does not matter
    # tau much shorter than the gaps (blocks of 300 tau) and much longer than the span
    for tau in (0.01, 1e5):
        assert np.allclose(drw_unit((4,), t, tau), reference_drw((4,), t, tau), rtol=0, atol=1e-10)


def test_drw_keyed_and_deterministic():
    t = np.linspace(0, 1000, 200)
    a, b = drw_unit((5, QSO_DRW_KIND, 1), t, 100.0), drw_unit((5, QSO_DRW_KIND, 1), t, 100.0)
    assert np.array_equal(a, b)
    assert not np.allclose(a, drw_unit((5, QSO_DRW_KIND, 2), t, 100.0))
    assert not np.allclose(a, drw_unit((6, QSO_DRW_KIND, 1), t, 100.0))
    with pytest.raises(InputError):
        drw_unit((1,), t, 0.0)
    with pytest.raises(InputError):
        drw_unit((1,), [0.0, np.nan], 1.0)


def test_unit_variance():
    x = np.concatenate([drw_unit((9, QSO_DRW_KIND, k), np.linspace(0, 3650, 100), 50.0) for k in range(1000)])
    # consecutive samples correlate by exp(-36.9/50) = 0.48: ~35 effective samples per curve, so
    # sigma(mean) ~ 0.005 and sigma(var) ~ 0.008
    assert abs(x.mean()) < 0.02 and abs(x.var() - 1.0) < 0.03


def test_structure_function_matches_drw():
    """SF(dt) = SF_inf sqrt(1 - exp(-dt/tau)) at short, ~tau and long lags, on irregular, unsorted times."""
    tau, sf, n = 200.0, 0.25, 3000
    lags = np.array([5.0, 200.0, 2000.0])
    rng = np.random.default_rng(11)
    d2 = np.zeros((n, lags.size))
    for k in range(n):
        t0 = rng.uniform(0, 1000)
        extra = rng.uniform(0, 3000, 20)                               # irregular neighbours
        t = np.concatenate([extra, t0 + lags, [t0]])[::-1]              # unsorted
        m = quasar_mags(one_quasar(tau, sf, seed=2, qid=k), "r", t)
        d2[k] = (m[1:lags.size + 1][::-1] - m[0]) ** 2
    emp = np.sqrt(d2.mean(axis=0))
    model = sf * np.sqrt(1.0 - np.exp(-lags / tau))
    err = model * np.sqrt(2.0 / n) / 2.0                               # sigma of sqrt(mean of chi^2_1 * s^2)
    assert np.all(np.abs(emp - model) < 4.0 * err), (emp, model, err)


def test_images_are_shifted_copies_across_bands():
    q = one_quasar()
    t = np.arange(0.0, 400.0, 1.0)
    delays = np.array([0.0, 12.0, 30.5])
    bands = np.array(list("ugrizy"))[np.arange(t.size) % 6]
    m = quasar_mags(q, bands, t, delays)
    assert m.shape == (3, t.size)
    dev = (m - np.array([q[f"src_mag_{b}"] for b in bands])) / np.array([q[f"sf_inf_{b}"] for b in bands])
    # image 2 at t equals image 1 at t - 12 (same x), whatever band each time was taken in
    assert np.array_equal(dev[1, 12:], dev[0, :-12])
    # a non-integer delay: image 3 at t + 30.5 == image 1 at t, both times asked for
    t2 = np.array([1.25, 31.75, 100.0])
    m2 = quasar_mags(q, "g", t2, [0.0, 30.5])
    assert m2[1, 1] == m2[0, 0]
    assert quasar_mags(q, "g", 3.0) == quasar_mags(q, "g", [3.0])[0]


def test_quasar_params_distribution_and_band_scaling():
    ids = np.arange(2000)
    q = draw_quasar_params(1, ids, 2.0, 21.0)
    assert np.array_equal(q, draw_quasar_params(1, ids, 2.0, 21.0))
    assert 200 < np.median(q["tau_rest"]) < 300
    assert q["tau_rest"].min() >= 100 - 1e-9 and q["tau_rest"].max() <= 1000 + 1e-9
    assert np.allclose(q["tau_obs"], 3.0 * q["tau_rest"])
    sf_g = np.median(q["sf_inf_g"] / (seds.effective_wavelength("g") / 3.0 / 400.0) ** -0.479)  # 400 nm rest
    assert 0.19 < sf_g < 0.25
    for a, b in zip(BANDS[:-1], BANDS[1:]):                            # bluer varies more
        assert np.all(q[f"sf_inf_{a}"] > q[f"sf_inf_{b}"])
    assert np.all(q["src_mag_i"] == 21.0) and np.all(q["src_mag_g"] > 21.0 - 0.5)
    # different ids differ, same seed and id agree whatever set they are drawn in
    assert draw_quasar_params(1, [5], 2.0, 21.0)["tau_rest"][0] == q["tau_rest"][5]
