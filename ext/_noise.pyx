# cython: language_level=3
"""Sky + read noise + object shot noise kernel (private; see twinkles_hpc/imsim/noise.py).

Random numbers are counter based. Each pixel owns a splitmix64 stream whose state starts at
mix64(p ^ k0) + k1, p being the global pixel index and (k0, k1) two 64-bit words hashed from the
key; draw d (d = 1, 2, ...) is mix64(state + d * GAMMA). No state is carried from pixel to pixel,
so a pixel's value depends only on (key, p, expected[p]) and not on blocking, rank or order.
"""
import numpy as np
from libc.math cimport exp, fabs, floor, lgamma, log, sqrt
from libc.stdint cimport int32_t, int64_t, uint64_t

cdef extern from *:
    """
    #define TW_GAMMA 0x9E3779B97F4A7C15ULL
    #define TW_M1 0xBF58476D1CE4E5B9ULL
    #define TW_M2 0x94D049BB133111EBULL
    """
    const uint64_t TW_GAMMA
    const uint64_t TW_M1
    const uint64_t TW_M2

cdef double TWO_M53 = 1.0 / 9007199254740992.0
#: Below this mean Poisson deviates come from sequential inversion, above from PTRS.
cdef double INVERSION_MAX = 10.0


cdef inline uint64_t mix64(uint64_t z) noexcept nogil:
    """Stafford's variant 13 finaliser (the splitmix64 output function): a bijection of 64 bits."""
    z = (z ^ (z >> 30)) * TW_M1
    z = (z ^ (z >> 27)) * TW_M2
    return z ^ (z >> 31)


cdef inline double next_uniform(uint64_t* state) noexcept nogil:
    """Next uniform in [0, 1) (53 random bits) from a pixel's splitmix64 stream."""
    state[0] += TW_GAMMA
    return <double>(mix64(state[0]) >> 11) * TWO_M53


cdef inline double poisson_inversion(double mu, uint64_t* state) noexcept nogil:
    """Poisson(mu) by sequential search of the CDF (mu < INVERSION_MAX); one uniform."""
    cdef double u = next_uniform(state)
    cdef double p = exp(-mu)
    cdef double cdf = p
    cdef double k = 0.0
    # The cap only matters if rounding leaves the summed CDF below u (probability ~1e-16).
    while u > cdf and k < 200.0:
        k += 1.0
        p *= mu / k
        cdf += p
    return k


cdef inline double poisson_ptrs(double mu, uint64_t* state) noexcept nogil:
    """Poisson(mu) for mu >= 10 by transformed rejection with squeeze (Hormann 1993, PTRS).

    A transformed uniform proposes k; a cheap box accepts most proposals outright, the rest are
    accepted by comparing the hat function with the exact Poisson log-probability.
    """
    cdef double smu = sqrt(mu)
    cdef double lmu = log(mu)
    cdef double b = 0.931 + 2.53 * smu
    cdef double a = -0.059 + 0.02483 * b
    cdef double inv_alpha = 1.1239 + 1.1328 / (b - 3.4)
    cdef double v_r = 0.9277 - 3.6224 / (b - 2.0)
    cdef double u, v, us, k
    while True:
        u = next_uniform(state) - 0.5
        v = next_uniform(state)
        us = 0.5 - fabs(u)
        k = floor((2.0 * a / us + b) * u + mu + 0.43)
        if us >= 0.07 and v <= v_r:
            return k
        if k < 0.0 or (us < 0.013 and v > us):
            continue
        if log(v * inv_alpha / (a / (us * us) + b)) <= k * lmu - mu - lgamma(k + 1.0):
            return k


cdef inline double poisson(double mu, uint64_t* state) noexcept nogil:
    if mu < INVERSION_MAX:
        return poisson_inversion(mu, state)
    return poisson_ptrs(mu, state)


def sky_and_noise(const double[:, ::1] expected, float[:, ::1] out,
                  const double[::1] cdf, const int32_t[::1] guide, int64_t kmin,
                  uint64_t k0, uint64_t k1, int64_t row0, double full_well, double mu_max):
    """Fill `out` with table(sky + read noise) + Poisson(expected), clipped at `full_well`.

    `cdf` is the cumulative table of round(Poisson(sky) + N(0, rn^2)) for values kmin + i, its
    last entry exactly 1; `guide[j]` is the first i with cdf[i] > j / len(guide).
    Returns (n_saturated, bad): bad is the flat index of the first pixel whose expected value
    is not in [0, mu_max] (NaN included; the fill stops there), or -1.
    """
    cdef Py_ssize_t ny = expected.shape[0], nx = expected.shape[1]
    cdef Py_ssize_t i, j, g
    cdef Py_ssize_t m = guide.shape[0]
    cdef uint64_t state, pix
    cdef double u, mu, val
    cdef int64_t nsat = 0, bad = -1
    with nogil:
        for i in range(ny):
            pix = <uint64_t>((row0 + i) * nx)
            for j in range(nx):
                state = mix64((pix + <uint64_t>j) ^ k0) + k1
                u = next_uniform(&state)
                g = guide[<Py_ssize_t>(u * m)]
                while cdf[g] <= u:
                    g += 1
                val = <double>(kmin + g)
                mu = expected[i, j]
                if mu != 0.0:
                    if not (mu > 0.0 and mu <= mu_max):
                        bad = i * nx + j
                        break
                    val += poisson(mu, &state)
                if val >= full_well:
                    val = full_well
                    nsat += 1
                out[i, j] = <float>val
            if bad >= 0:
                break
    return nsat, bad


def uniforms(uint64_t k0, uint64_t k1, uint64_t pixel0, Py_ssize_t n, int draw=1):
    """Draw number `draw` (1 = the sky draw) of pixels pixel0 .. pixel0 + n - 1, for testing."""
    out = np.empty(n, dtype=np.float64)
    cdef double[::1] o = out
    cdef Py_ssize_t i
    cdef int d
    cdef uint64_t state
    with nogil:
        for i in range(n):
            state = mix64((pixel0 + <uint64_t>i) ^ k0) + k1
            for d in range(draw):
                o[i] = next_uniform(&state)
    return out
