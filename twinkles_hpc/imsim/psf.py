"""The PSF of a visit as a Gaussian mixture approximating an atmospheric Kolmogorov profile.

The Kolmogorov profile (optical transfer function exp(-(k/k0)^(5/3))) is computed here by our own
Hankel transform (`kolmogorov_profile`). A K=3 circular mixture sum_k w_k N(0, (s_k FWHM)^2) was fitted
to it once by `fit_kolmogorov_mixture()`: least squares on a log-spaced grid r in [0.005, 6] FWHM of the
light per unit ln r, 2 pi r^2 [M(r) - I(r)], plus a stiff term pinning M(FWHM/2) = M(0)/2 so the mixture
has the requested FWHM. Against GalSim's Kolmogorov + pixel, the mixture (+ 1/12 px^2 pixel variance)
gives the same adaptive-moment size to 0.25% for FWHM 0.5-1.0 arcsec at 0.2 arcsec/pixel.

Only the derivation (the profile and the fit) needs scipy, imported there: a PSFModel does not.
"""
import functools

import numpy as np

#: Fitted Kolmogorov mixture: weights (sum 1) and sigmas in units of the FWHM, sigmas ascending.
#: Re-derive with `fit_kolmogorov_mixture(3)`.
KOLMOGOROV_WEIGHTS = np.array([0.60620887, 0.33425243, 0.0595387])
KOLMOGOROV_SIGMAS = np.array([0.39504796, 0.64101281, 1.62037883])
KOLMOGOROV_WEIGHTS /= KOLMOGOROV_WEIGHTS.sum()


def _kolmogorov_transform(r, kernel):
    """int_0^inf exp(-k^(5/3)) kernel(k, r) dk for each r, on a fine k grid."""
    k = np.linspace(0.0, 14.0, 40001)
    otf = np.exp(-k ** (5.0 / 3.0))
    rr = np.atleast_1d(np.asarray(r, dtype=np.float64))
    out = np.empty(rr.shape)
    for i in range(0, rr.size, 64):
        out.flat[i:i + 64] = np.trapezoid(otf * kernel(k, rr.ravel()[i:i + 64, None]), k, axis=1)
    return out


def kolmogorov_profile(r):
    """Surface brightness of a flux-1 Kolmogorov profile of FWHM 1 at radius r (in FWHM).

    I(r) = (1/2pi) int_0^inf exp(-k^(5/3)) J0(k r) k dk, evaluated on a fine k grid (relative error
    < 1e-4 out to 8 FWHM) and rescaled to unit FWHM.
    """
    from scipy import special

    fwhm = _kolmogorov_fwhm()
    raw = _kolmogorov_transform(np.asarray(r, dtype=np.float64) * fwhm, lambda k, x: k * special.j0(k * x))
    return fwhm ** 2 * raw / (2 * np.pi)


def kolmogorov_enclosed(r):
    """Fraction of the flux of the FWHM-1 Kolmogorov profile within radius r (FWHM):
    L(r) = r' int_0^inf exp(-k^(5/3)) J1(k r') dk with r' = r * (FWHM of the unit-k0 profile)."""
    from scipy import special

    rr = np.asarray(r, dtype=np.float64) * _kolmogorov_fwhm()
    return rr * _kolmogorov_transform(rr, lambda k, x: special.j1(k * x))


@functools.lru_cache(maxsize=1)
def _kolmogorov_fwhm():
    """FWHM of the profile whose OTF is exp(-k^(5/3))."""
    from scipy import optimize, special

    def prof(x):
        return _kolmogorov_transform(x, lambda k, xx: k * special.j0(k * xx))[0]

    peak = prof(0.0)
    return 2 * optimize.brentq(lambda x: prof(x) - peak / 2, 0.1, 5.0)


def _mixture(r, w, s):
    r = np.asarray(r, dtype=np.float64)[..., None]
    return (w / (2 * np.pi * s ** 2) * np.exp(-0.5 * (r / s) ** 2)).sum(-1)


def fit_kolmogorov_mixture(K=3, rmin=0.005, rmax=6.0, n_grid=300):
    """Fit a K-component circular Gaussian mixture to the FWHM-1 Kolmogorov profile.

    Returns (weights, sigmas in FWHM), sorted by sigma; weights sum to 1. Takes ~1 s.
    """
    from scipy import optimize

    r = np.geomspace(rmin, rmax, n_grid)
    prof = kolmogorov_profile(r)
    dl = np.sqrt(np.log(r[1] / r[0]))

    def unpack(p):
        a = np.exp(p[:K] - p[:K].max())
        return a / a.sum(), np.exp(p[K:])

    def residuals(p):
        w, s = unpack(p)
        m0, mh = _mixture([0.0, 0.5], w, s)
        return np.r_[2 * np.pi * r ** 2 * (_mixture(r, w, s) - prof) * dl, mh / m0 - 0.5]

    p0 = np.r_[np.zeros(K), np.log(np.geomspace(0.3, 1.5, K))]
    sol = optimize.least_squares(residuals, p0, xtol=1e-14, ftol=1e-14, max_nfev=20000)
    w, s = unpack(sol.x)
    order = np.argsort(s)
    return w[order], s[order]


#: Field radius (in half-diagonals) beyond which the PSF no longer changes: sources far off the sensor
#: (rendered for their spill-over light) get the PSF at twice the corner distance.
RHO_MAX = 2.0


class PSFModel:
    """Gaussian-mixture PSF of a visit: a Kolmogorov-like profile of FWHM `fwhm_arcsec` at the sensor centre,
    varying slowly across the sensor.

    With rho = (distance from the sensor centre) / (half diagonal), 0 at the centre and 1 at the corners:
    FWHM(rho) = fwhm_arcsec * (1 + fwhm_gradient * rho^2), and the PSF is sheared (area-preserving, reduced
    shear |g| = ellip_gradient * rho) along the radial direction from the sensor centre. Everything is in
    the pixel frame (x = column, y = row, pixel (0, 0) centred at x = y = 0). Beyond rho = RHO_MAX = 2 the
    PSF stays as at rho = 2.
    """

    def __init__(self, fwhm_arcsec, *, pixel_scale=0.2, nx=4000, ny=4072, fwhm_gradient=0.05,
                 ellip_gradient=0.02):
        vals = dict(fwhm_arcsec=fwhm_arcsec, pixel_scale=pixel_scale, nx=nx, ny=ny,
                    fwhm_gradient=fwhm_gradient, ellip_gradient=ellip_gradient)
        for name, v in vals.items():
            if not np.isfinite(v):
                raise ValueError(f"PSFModel: {name} must be finite, got {v!r}")
        if fwhm_arcsec <= 0 or pixel_scale <= 0 or nx < 1 or ny < 1:
            raise ValueError("PSFModel: fwhm_arcsec and pixel_scale must be > 0 and nx, ny >= 1, "
                             f"got {fwhm_arcsec!r}, {pixel_scale!r}, {nx!r}, {ny!r}")
        if not (-0.2 < fwhm_gradient < 10) or not (0 <= ellip_gradient <= 0.4):
            raise ValueError("PSFModel: need -0.2 < fwhm_gradient < 10 and 0 <= ellip_gradient <= 0.4, "
                             f"got {fwhm_gradient!r}, {ellip_gradient!r}")
        self.fwhm_arcsec, self.pixel_scale = float(fwhm_arcsec), float(pixel_scale)
        self.nx, self.ny = int(nx), int(ny)
        self.fwhm_gradient, self.ellip_gradient = float(fwhm_gradient), float(ellip_gradient)
        self.weights, self.sigmas = KOLMOGOROV_WEIGHTS, KOLMOGOROV_SIGMAS

    def _rho(self, x, y):
        cx, cy = (self.nx - 1) / 2.0, (self.ny - 1) / 2.0
        dx, dy = np.asarray(x, dtype=np.float64) - cx, np.asarray(y, dtype=np.float64) - cy
        return dx, dy, np.minimum(np.hypot(dx, dy) / max(np.hypot(cx, cy), 0.5), RHO_MAX)

    def fwhm_at(self, x, y):
        """FWHM (arcsec) at pixel position (x, y)."""
        _, _, rho = self._rho(x, y)
        return self.fwhm_arcsec * (1.0 + self.fwhm_gradient * rho ** 2)

    def shear_at(self, x, y):
        """Reduced shear (g1, g2) in the pixel frame at (x, y): radial, |g| = ellip_gradient * rho."""
        dx, dy, rho = self._rho(x, y)
        beta2 = 2 * np.arctan2(dy, dx)
        g = self.ellip_gradient * rho
        return g * np.cos(beta2), g * np.sin(beta2)

    def components_at(self, x, y):
        """Mixture at positions (x, y) (pixels): (w, cxx, cxy, cyy), each of shape (n, K).

        w sums to 1 per row; (cxx, cxy, cyy) are the covariance entries [[cxx, cxy], [cxy, cyy]] of each
        component in pixels^2, before pixel integration (the renderer adds 1/12 px^2).
        """
        x, y = np.atleast_1d(np.asarray(x, dtype=np.float64)), np.atleast_1d(np.asarray(y, dtype=np.float64))
        fwhm_px = self.fwhm_at(x, y) / self.pixel_scale
        g1, g2 = self.shear_at(x, y)
        # covariance sigma^2 S S^T with the shear matrix S = [[1+g1, g2], [g2, 1-g1]] / sqrt(1-g^2)
        f = 1.0 / (1.0 - g1 ** 2 - g2 ** 2)
        sxx, sxy, syy = f * ((1 + g1) ** 2 + g2 ** 2), f * 2 * g2, f * ((1 - g1) ** 2 + g2 ** 2)
        var = (self.sigmas[None, :] * fwhm_px[:, None]) ** 2
        w = np.broadcast_to(self.weights, var.shape).copy()
        return w, var * sxx[:, None], var * sxy[:, None], var * syy[:, None]

    def covariance_at(self, x, y):
        """Flux-weighted mean covariance (cxx, cxy, cyy), pixels^2, each of shape (n,): the PSF's
        second moments before pixel integration."""
        w, cxx, cxy, cyy = self.components_at(x, y)
        return (w * cxx).sum(1), (w * cxy).sum(1), (w * cyy).sum(1)

    def to_dict(self):
        """JSON-able parameters (stored per visit in the eimage HDF5 attributes)."""
        return {"model": "kolmogorov_gmix3", "fwhm_arcsec": self.fwhm_arcsec, "pixel_scale": self.pixel_scale,
                "nx": self.nx, "ny": self.ny, "fwhm_gradient": self.fwhm_gradient,
                "ellip_gradient": self.ellip_gradient}

    @classmethod
    def from_dict(cls, d):
        d = dict(d)
        model = d.pop("model", "kolmogorov_gmix3")
        if model != "kolmogorov_gmix3":
            raise ValueError(f"PSFModel.from_dict: unknown PSF model {model!r}")
        fwhm = d.pop("fwhm_arcsec")
        return cls(fwhm, **d)

    def __repr__(self):
        return (f"PSFModel({self.fwhm_arcsec!r}, pixel_scale={self.pixel_scale!r}, nx={self.nx}, ny={self.ny}, "
                f"fwhm_gradient={self.fwhm_gradient!r}, ellip_gradient={self.ellip_gradient!r})")
