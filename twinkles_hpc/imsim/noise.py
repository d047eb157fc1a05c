"""Sky background, read noise and shot noise: expected electrons -> a noisy eimage.

Each output pixel is

    round(Poisson(sky_e) + Normal(0, read_noise_e**2)) + Poisson(expected[pixel]), clipped at full well,

in electrons, stored as float32 (all values are integers, exact below 2**24). Poisson(sky + obj) =
Poisson(sky) + Poisson(obj) lets the sky + read-noise part, identically distributed in every pixel,
come from a precomputed table of its exact discrete distribution (inversion with a guide table, one
uniform per pixel); Poisson(expected) is drawn only where expected > 0, by sequential inversion
below a mean of 10 and by Hormann's (1993) transformed rejection (PTRS) above.

Random numbers (see ext/_noise.pyx): counter based. The key (run seed, visit id, stage, ...) hashes
to two 64-bit words (k0, k1); pixel p (global flat index, (row0 + row) * nx + col) owns the
splitmix64 stream that starts at mix64(p ^ k0) + k1, where mix64 is splitmix64's bijective output
function. Its first draw samples the sky table, later draws the object Poisson deviate. So the image
is bit-identical whether made whole or in row blocks, on any rank, in any order.
"""
import functools
import math
import operator

import numpy as np

from twinkles_hpc import _noise
from twinkles_hpc.instrument import DARK_CURRENT, FULL_WELL, PIXEL_SCALE, check_band, sky_counts_per_pixel

_M64 = (1 << 64) - 1
_GAMMA = 0x9E3779B97F4A7C15
#: Largest expected electrons accepted in one pixel (far above any full well).
MU_MAX = 2.0 ** 50
#: float32 holds every integer up to here exactly.
_FLOAT32_EXACT = 2 ** 24


def _mix64(z):
    """splitmix64 output function (Stafford variant 13) on Python ints; same as the kernel's."""
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


def key_words(key):
    """Hash a key (non-empty tuple of ints, each in [-2**63, 2**64)) to the kernel's (k0, k1)."""
    if isinstance(key, (str, bytes)) or not hasattr(key, "__len__") or len(key) == 0:
        raise ValueError(f"noise key must be a non-empty tuple of ints (seed, visit id, stage), got {key!r}")
    h = _mix64((len(key) * _GAMMA) & _M64)
    for v in key:
        try:
            v = operator.index(v)
        except TypeError:
            raise ValueError(f"noise key must hold ints only, got {v!r} in {key!r}") from None
        if not -(1 << 63) <= v <= _M64:
            raise ValueError(f"noise key element {v} is outside [-2**63, 2**64)")
        h = _mix64(((h + _GAMMA) & _M64) ^ (v & _M64))
    return _mix64((h + _GAMMA) & _M64), _mix64((h + 2 * _GAMMA) & _M64)


def _nonneg(name, value, unit="electrons"):
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number ({unit}), got {value!r}") from None
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be finite and >= 0 ({unit}), got {value!r}")
    return value


def sky_read_noise_pmf(sky_e, read_noise_e):
    """Exact PMF of round(Poisson(sky_e) + Normal(0, read_noise_e**2)), both in electrons.

    Returns (kmin, pmf): pmf[i] = P(value == kmin + i). The support is cut where the tails fall
    below ~1e-30 (Poisson mean +- 15 sigma + margin, Gaussian +- 13 sigma); pmf sums to 1 - ~1e-30.
    P(round(j + N) = k) = P(k - j - 1/2 < N < k - j + 1/2), so the PMF is the Poisson PMF convolved
    with those Gaussian bin probabilities.

    scipy.special is imported here, not with the module: a rank that adds no noise never loads it. The
    Poisson PMF is scipy.stats.poisson.pmf's own expression, clip(exp(xlogy(j, mu) - gammaln(j + 1) - mu),
    0, 1), without the cost of importing scipy.stats.
    """
    from scipy import special

    sky = _nonneg("sky_e", sky_e)
    rn = _nonneg("read_noise_e", read_noise_e)
    if sky > 0:
        jlo = max(0, math.floor(sky - 15 * math.sqrt(sky) - 5))
        jhi = math.ceil(sky + 15 * math.sqrt(sky) + 40)
        j = np.arange(jlo, jhi + 1)
        pois = np.clip(np.exp(special.xlogy(j, sky) - special.gammaln(j + 1) - sky), 0.0, 1.0)
    else:
        jlo, pois = 0, np.ones(1)
    if rn > 0:
        dmax = math.ceil(13 * rn) + 1
        d = np.abs(np.arange(-dmax, dmax + 1, dtype=np.float64))
        # Upper-tail differences keep full relative precision far from the mean.
        gauss = special.ndtr(-(d - 0.5) / rn) - special.ndtr(-(d + 0.5) / rn)
        gauss[dmax] = 1.0 - 2.0 * special.ndtr(-0.5 / rn)
    else:
        dmax, gauss = 0, np.ones(1)
    pmf = np.convolve(pois, gauss)
    nz = np.flatnonzero(pmf > 0)
    return jlo - dmax + int(nz[0]), pmf[nz[0]:nz[-1] + 1]


@functools.lru_cache(maxsize=32)
def _sky_table(sky, rn):
    """(cdf, guide, kmin) for the kernel: inversion of the CDF, started from a guide table."""
    kmin, pmf = sky_read_noise_pmf(sky, rn)
    cdf = np.cumsum(pmf)
    cdf /= cdf[-1]
    cdf[-1] = 1.0  # every uniform in [0, 1) then stops inside the table
    m = len(cdf)
    guide = np.searchsorted(cdf, np.arange(m) / m, side="right").astype(np.int32)
    cdf.flags.writeable = guide.flags.writeable = False
    return cdf, guide, kmin


def add_sky_and_noise(expected, sky_e, read_noise_e, key, *, full_well=FULL_WELL, out=None, row0=0):
    """Add sky, read noise and shot noise to an image of expected object electrons.

    expected: float64 (ny, nx) array of expected electrons from objects, finite and >= 0. It may be a
        block of full-width rows of a larger image starting at global row `row0`.
    sky_e: expected sky (+ dark) electrons per pixel; read_noise_e: read noise, electrons rms.
    key: tuple of ints naming the noise realisation, e.g. (run seed, visit id, stage).
    full_well: electrons; output values are clipped there (its integer part, <= 2**24).
    out: optional float32 C-contiguous array of the same shape to write into.

    Returns (out, n_saturated): out holds integer electrons (float32), n_saturated the number of
    pixels clipped at the full well. Raises ValueError on bad input (the message names the pixel).
    """
    if not isinstance(expected, np.ndarray) or expected.dtype != np.float64 or expected.ndim != 2:
        got = (f"{expected.dtype} array of shape {expected.shape}" if isinstance(expected, np.ndarray)
               else type(expected).__name__)
        raise ValueError(f"expected must be a 2-d float64 array of electrons, got {got}")
    sky = _nonneg("sky_e", sky_e)
    rn = _nonneg("read_noise_e", read_noise_e)
    fw = _nonneg("full_well", full_well)
    if not 1 <= fw <= _FLOAT32_EXACT:
        raise ValueError(f"full_well must be in [1, 2**24] electrons (float32-exact), got {full_well!r}")
    row0 = operator.index(row0)
    if row0 < 0:
        raise ValueError(f"row0 must be >= 0, got {row0}")
    k0, k1 = key_words(key)
    if out is None:
        out = np.empty(expected.shape, dtype=np.float32)
    elif (not isinstance(out, np.ndarray) or out.dtype != np.float32 or out.shape != expected.shape
          or not out.flags.c_contiguous or not out.flags.writeable):
        raise ValueError(f"out must be a writeable C-contiguous float32 array of shape {expected.shape}")
    cdf, guide, kmin = _sky_table(sky, rn)
    nsat, bad = _noise.sky_and_noise(np.ascontiguousarray(expected), out, cdf, guide, kmin,
                                     k0, k1, row0, float(math.floor(fw)), MU_MAX)
    if bad >= 0:
        i, j = divmod(bad, expected.shape[1])
        raise ValueError(f"expected[{i}, {j}] = {float(expected[i, j])!r}: expected electrons must be "
                         f"finite and in [0, {MU_MAX:.3g}]")
    return out, int(nsat)


def sky_electrons(sky_mag, band, exptime, pixel_scale=PIXEL_SCALE, dark_current=DARK_CURRENT):
    """Sky + dark electrons per pixel in one exposure.

    sky_mag: sky surface brightness, AB mag/arcsec^2; band: 'u'..'y'; exptime: seconds;
    pixel_scale: arcsec/pixel; dark_current: electrons/s/pixel. Scalar in, float out.
    """
    check_band(band)
    sky_mag = np.asarray(sky_mag, dtype=np.float64)
    if not np.all(np.isfinite(sky_mag)):
        raise ValueError(f"sky_mag must be finite (mag/arcsec^2), got {sky_mag!r}")
    exptime = _nonneg("exptime", exptime, "s")
    pixel_scale = _nonneg("pixel_scale", pixel_scale, "arcsec/pixel")
    dark_current = _nonneg("dark_current", dark_current, "electrons/s/pixel")
    e = sky_counts_per_pixel(sky_mag, band, exptime, pixel_scale) + dark_current * exptime
    return float(e) if e.ndim == 0 else e
