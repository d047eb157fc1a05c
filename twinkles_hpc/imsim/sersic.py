"""Sersic profiles as mixtures of concentric circular Gaussians (in the spirit of Hogg & Lang 2013,
PASP 125, 719), so that convolution with a Gaussian-mixture PSF is analytic.

A profile of half-light radius 1 is approximated by sum_k w_k N(0, sigma_k^2 I) with sum_k w_k = 1.
An elliptical galaxy of semi-major half-light radius a and axis ratio q scales component k to the
covariance sigma_k^2 * a^2 * (u u^T + q^2 v v^T) (u, v the major and minor axis unit vectors).

The stored constants (twinkles_hpc/profiles.py, shared with the scene models of timedomain/scene.py)
were fitted by `fit_sersic_mixture(n, K)` (our own fit, not Hogg & Lang's
numbers): least squares on a log-spaced radius grid r in [rmin, rmax] half-light radii of
(a) the light per unit ln r, 2 pi r^2 [M(r) - I(r)], (b) the enclosed-light curve L_M(r) - L(r),
and (c) a stiff term pinning L_M(1) = 1/2. The fit is to the *untruncated* profile, so the mixture
keeps the total flux and the half-light radius. Quality (tests/test_render.py):
n=1, K=6: max |L_M - L| = 2e-4 over 0.05-8 hlr;  n=4, K=8: max |L_M - L| = 1e-3 over 0.05-8 hlr.
The de Vaucouleurs profile carries 7% of its light beyond 8 hlr, hence its broad outer component.

The renderer needs only the stored mixtures; scipy is imported by the functions that derive and check them.
"""
import numpy as np

from twinkles_hpc.profiles import SERSIC_MIXTURES, sersic_mixture  # noqa: F401  (the stored mixtures)

#: Fit settings that produced SERSIC_MIXTURES: n -> (K, rmin, rmax) in half-light radii.
FIT_SETTINGS = {1: (6, 0.01, 8.0), 4: (8, 0.001, 30.0)}


def sersic_b(n):
    """b_n such that the half-light radius encloses half the flux: gamma(2n, b_n) = Gamma(2n) / 2."""
    from scipy import special

    return special.gammaincinv(2.0 * n, 0.5)


def sersic_profile(r, n):
    """Surface brightness at radius r (in half-light radii) of a flux-1, hlr-1 Sersic profile."""
    from scipy import special

    b = sersic_b(n)
    norm = 2.0 * np.pi * n * special.gamma(2.0 * n) * np.exp(b) / b ** (2.0 * n)
    return np.exp(-b * (np.asarray(r, dtype=np.float64) ** (1.0 / n) - 1.0)) / norm


def sersic_enclosed(r, n):
    """Fraction of the flux within radius r (half-light radii) of an untruncated Sersic profile."""
    from scipy import special

    return special.gammainc(2.0 * n, sersic_b(n) * np.asarray(r, dtype=np.float64) ** (1.0 / n))


def mixture_profile(r, w, sigma):
    """Surface brightness at r of the circular mixture sum_k w_k N(0, sigma_k^2)."""
    r = np.asarray(r, dtype=np.float64)[..., None]
    return (w / (2 * np.pi * sigma ** 2) * np.exp(-0.5 * (r / sigma) ** 2)).sum(-1)


def mixture_enclosed(r, w, sigma):
    """Fraction of the mixture's flux within radius r."""
    r = np.asarray(r, dtype=np.float64)[..., None]
    return (w * -np.expm1(-0.5 * (r / sigma) ** 2)).sum(-1)


def mixture_half_light_radius(w, sigma):
    """Radius enclosing half of the mixture's flux (same units as sigma)."""
    from scipy import optimize

    return optimize.brentq(lambda x: mixture_enclosed(x, w, sigma) - 0.5 * w.sum(), 1e-3 * sigma.min(),
                           10 * sigma.max())


def fit_sersic_mixture(n, K, rmin, rmax, n_grid=400):
    """Fit a K-component circular Gaussian mixture to the flux-1, hlr-1 Sersic profile of index n.

    Returns (weights, sigmas) sorted by sigma; weights sum to 1. Takes ~1 s.
    """
    from scipy import optimize

    r = np.geomspace(rmin, rmax, n_grid)
    prof, encl = sersic_profile(r, n), sersic_enclosed(r, n)
    dl = np.sqrt(np.log(r[1] / r[0]))

    def unpack(p):
        a = np.exp(p[:K] - p[:K].max())
        return a / a.sum(), np.exp(0.5 * p[K:])

    def residuals(p):
        w, s = unpack(p)
        return np.r_[2 * np.pi * r ** 2 * (mixture_profile(r, w, s) - prof) * dl,
                     (mixture_enclosed(r, w, s) - encl) * dl,
                     10.0 * (mixture_enclosed(1.0, w, s) - 0.5)]

    best = None
    for s0 in (0.5, 1.0, 2.0):
        p0 = np.r_[np.zeros(K), 2 * np.log(np.geomspace(3 * rmin * s0, rmax / 3, K))]
        sol = optimize.least_squares(residuals, p0, xtol=1e-15, ftol=1e-15, gtol=1e-15, max_nfev=50000)
        if best is None or sol.cost < best.cost:
            best = sol
    w, s = unpack(best.x)
    order = np.argsort(s)
    return w[order], s[order]
