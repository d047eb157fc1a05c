"""Sky + read noise + shot noise kernel: statistics, exactness of the samplers, reproducibility."""
import numpy as np
import pytest
from scipy import stats

from twinkles_hpc import _noise
from twinkles_hpc.errors import InputError
from twinkles_hpc.imsim.noise import add_sky_and_noise, key_words, sky_electrons, sky_read_noise_pmf
from twinkles_hpc.instrument import sky_counts_per_pixel

KEY = (20160901, 230, 7)


def chi2_pvalue(values, kmin, pmf, min_expected=5.0):
    """Chi^2 goodness of fit of integer samples to a PMF on kmin.., tails merged into end bins."""
    values = np.asarray(values, dtype=np.int64)
    assert values.min() >= kmin and values.max() < kmin + len(pmf)
    counts = np.bincount(values - kmin, minlength=len(pmf)).astype(float)
    expect = pmf / pmf.sum() * len(values)
    keep = np.flatnonzero(expect >= min_expected)
    lo, hi = keep[0], keep[-1]
    obs = np.concatenate([[counts[:lo + 1].sum()], counts[lo + 1:hi], [counts[hi:].sum()]])
    exp = np.concatenate([[expect[:lo + 1].sum()], expect[lo + 1:hi], [expect[hi:].sum()]])
    return stats.chi2.sf(((obs - exp) ** 2 / exp).sum(), len(obs) - 1)


def test_mean_and_variance_on_flat_image():
    sky, rn, obj = 1200.0, 8.8, 30.0
    img, nsat = add_sky_and_noise(np.full((400, 500), obj), sky, rn, KEY)
    assert img.dtype == np.float32 and nsat == 0
    assert np.array_equal(img, np.round(img))
    n = img.size
    var = sky + obj + rn ** 2 + 1.0 / 12
    assert abs(img.mean() - (sky + obj)) < 5 * np.sqrt(var / n)
    assert abs(img.var(dtype=np.float64) - var) < 5 * var * np.sqrt(2.0 / n)


def exact_pmf(sky, rn, k):
    """Brute-force P(round(Poisson(sky) + N(0, rn^2)) = k), independent of the module's convolution."""
    j = np.arange(0, int(sky + 20 * np.sqrt(sky) + 50))[:, None]
    p = stats.poisson.pmf(j, sky) * (stats.norm.cdf((k + 0.5 - j) / rn) - stats.norm.cdf((k - 0.5 - j) / rn))
    return p.sum(axis=0)


@pytest.mark.parametrize("sky,rn", [(20.0, 3.0), (1200.0, 8.8), (0.7, 0.5)])
def test_sky_table_sampler_chi2(sky, rn):
    kmin, pmf = sky_read_noise_pmf(sky, rn)
    ref = exact_pmf(sky, rn, np.arange(kmin, kmin + len(pmf)))
    assert abs(pmf.sum() - 1) < 1e-12
    np.testing.assert_allclose(pmf, ref, rtol=1e-9, atol=1e-16)  # ref loses digits in the far tails
    img, _ = add_sky_and_noise(np.zeros((400, 500)), sky, rn, KEY)
    assert chi2_pvalue(img.ravel(), kmin, pmf) > 1e-3


def test_sky_table_without_read_noise_is_poisson():
    kmin, pmf = sky_read_noise_pmf(3.5, 0.0)
    np.testing.assert_allclose(pmf, stats.poisson.pmf(np.arange(kmin, kmin + len(pmf)), 3.5), rtol=1e-12)
    img, _ = add_sky_and_noise(np.zeros((300, 300)), 0.0, 0.0, KEY)
    assert not img.any()


@pytest.mark.parametrize("mu", [0.3, 5.0, 50.0, 5000.0])
def test_poisson_sampler(mu):
    k, _ = add_sky_and_noise(np.full((400, 500), mu), 0.0, 0.0, KEY)
    k = k.ravel().astype(np.int64)
    n = k.size
    assert abs(k.mean() - mu) < 5 * np.sqrt(mu / n)
    assert abs(k.var() - mu) < 5 * np.sqrt((2 * mu ** 2 + mu) / n)
    kmax = int(mu + 20 * np.sqrt(mu) + 20)
    assert chi2_pvalue(k, 0, stats.poisson.pmf(np.arange(kmax), mu)) > 1e-3


def test_block_invariance():
    rng = np.random.default_rng(5)
    expected = np.where(rng.random((64, 50)) < 0.3, rng.lognormal(2, 2.5, (64, 50)), 0.0)
    whole, nsat = add_sky_and_noise(expected, 900.0, 8.8, KEY)
    parts = {}
    for r0, r1 in [(40, 64), (0, 17), (17, 40)]:       # any order
        parts[r0] = add_sky_and_noise(expected[r0:r1].copy(), 900.0, 8.8, KEY, row0=r0)
    assert np.array_equal(np.concatenate([parts[r][0] for r in sorted(parts)]), whole)
    assert sum(p[1] for p in parts.values()) == nsat
    again, _ = add_sky_and_noise(expected, 900.0, 8.8, list(KEY))
    assert np.array_equal(again, whole)


def test_key_sensitivity():
    e = np.full((100, 100), 3.0)
    a, _ = add_sky_and_noise(e, 500.0, 8.8, (1, 230, 0))
    b, _ = add_sky_and_noise(e, 500.0, 8.8, (1, 231, 0))
    c, _ = add_sky_and_noise(e, 500.0, 8.8, (1, 230, 1))
    d, _ = add_sky_and_noise(e, 500.0, 8.8, (1, 230, 0, 0))
    for other in (b, c, d):
        assert np.mean(a == other) < 0.05
        assert abs(np.corrcoef(a.ravel(), other.ravel())[0, 1]) < 0.05


def test_generator_quality():
    k0, k1 = key_words(KEY)
    u = _noise.uniforms(k0, k1, 0, 1_000_000)
    assert 0 <= u.min() and u.max() < 1
    assert abs(u.mean() - 0.5) < 5 * np.sqrt(1 / 12 / u.size)
    assert stats.chisquare(np.bincount((u * 256).astype(int), minlength=256)).pvalue > 1e-3
    assert abs(np.corrcoef(u[:-1], u[1:])[0, 1]) < 5e-3           # neighbouring pixels
    assert abs(np.corrcoef(u[:-4000], u[4000:])[0, 1]) < 5e-3     # neighbouring rows
    u2 = _noise.uniforms(k0, k1, 0, 1_000_000, 2)                   # second draw of each pixel
    assert abs(np.corrcoef(u, u2)[0, 1]) < 5e-3
    k0b, k1b = key_words((KEY[0], KEY[1] + 1, KEY[2]))
    assert abs(np.corrcoef(u, _noise.uniforms(k0b, k1b, 0, 1_000_000))[0, 1]) < 5e-3
    # Pairs of successive uniforms fill the unit square evenly (8 x 8 cells).
    cells = (u[::2] * 8).astype(int) * 8 + (u[1::2] * 8).astype(int)
    assert stats.chisquare(np.bincount(cells, minlength=64)).pvalue > 1e-3


def test_saturation():
    e = np.zeros((20, 30))
    e[3, 4], e[10, 10:13] = 2e5, 99_500.0
    img, nsat = add_sky_and_noise(e, 1000.0, 8.8, KEY, full_well=50_000)
    assert nsat == 4 and img.max() == 50_000
    assert np.all(img[e > 0] == 50_000) and np.all(img[e == 0] < 50_000)
    img, nsat = add_sky_and_noise(np.zeros((10, 10)), 1200.0, 8.8, KEY, full_well=1000)
    assert nsat == 100 and np.all(img == 1000)


def test_out_argument():
    out = np.full((10, 12), -1, np.float32)
    img, _ = add_sky_and_noise(np.ones((10, 12)), 100.0, 5.0, KEY, out=out)
    assert img is out and np.array_equal(out, add_sky_and_noise(np.ones((10, 12)), 100.0, 5.0, KEY)[0])


@pytest.mark.parametrize("expected,match", [
    (np.array([[1.0, np.nan]]), r"expected\[0, 1\] = nan"),
    (np.array([[1.0], [-2.0]]), r"expected\[1, 0\] = -2.0"),
    (np.array([[np.inf]]), r"expected\[0, 0\] = inf"),
    (np.ones((4, 4), np.float32), "float64"),
    (np.ones(16), "2-d"),
    (np.ones((2, 2, 2)), "2-d"),
    ([[1.0]], "2-d float64 array"),
])
def test_bad_expected(expected, match):
    with pytest.raises(ValueError, match=match):
        add_sky_and_noise(expected, 100.0, 5.0, KEY)


@pytest.mark.parametrize("kwargs,match", [
    (dict(sky_e=-1.0), "sky_e"), (dict(sky_e=np.nan), "sky_e"), (dict(read_noise_e=-3), "read_noise_e"),
    (dict(key=()), "key"), (dict(key=(1, "a")), "key"), (dict(key=(1, 2.5)), "key"),
    (dict(full_well=2.0 ** 25), "full_well"), (dict(row0=-1), "row0"),
    (dict(out=np.empty((3, 3), np.float64)), "out"), (dict(out=np.empty((2, 3), np.float32)), "out"),
])
def test_bad_arguments(kwargs, match):
    args = dict(sky_e=100.0, read_noise_e=5.0, key=KEY) | kwargs
    with pytest.raises(ValueError, match=match):
        add_sky_and_noise(np.ones((3, 3)), **args)


def test_sky_electrons():
    e = sky_electrons(21.2, "r", 30.0)
    assert e == pytest.approx(sky_counts_per_pixel(21.2, "r", 30.0) + 0.2 * 30.0)
    assert 800 < e < 1000
    assert sky_electrons(21.2, "r", 30.0, dark_current=0.0, pixel_scale=0.4) == pytest.approx(
        4 * sky_counts_per_pixel(21.2, "r", 30.0))
    with pytest.raises(InputError, match="band"):
        sky_electrons(21.2, "q", 30.0)
    with pytest.raises(ValueError, match="exptime"):
        sky_electrons(21.2, "r", -1.0)
