"""Strong lensing of quasars: singular isothermal ellipsoid (SIE) + external shear, OM10 conventions.

Reproduces the image positions, magnifications and delays of the OM10 catalogue (Oguri & Marshall
2010, MNRAS 405, 2579) from its lens parameters. Every convention below was measured on the 861
Twinkles systems; the evidence is in docs/lensing.md.

- Angles on the sky in arcsec relative to the lens centre; x = XIMG points west (x = -dRA cos dec),
  y = YIMG points north. The source position (XSRC, YSRC) is in the same frame.
- ELLIP = e = 1 - q, q the projected axis ratio. PHIE and PHIG are position angles in degrees east of
  north, i.e. counter-clockwise from +y in the (x, y) frame. PHIE is the major axis; PHIG points to
  the perturbing mass (images are stretched perpendicular to it): psi_gamma = -(gamma/2) r^2
  cos 2(phi - phi_gamma), phi_gamma = PHIG + 90 deg counted from +x.
- SIE convergence kappa = b / (2 sqrt(q x'^2 + y'^2 / q)), x' along the major axis (the
  'intermediate-axis' form; the critical curve has semi-axes b/sqrt(q) and b sqrt(q)), with
  b = lambda(e) theta_E, theta_E = 4 pi (sigma/c)^2 D_ds/D_s (`einstein_radius`) and lambda(e) the
  dynamical normalisation (`dynamical_normalization`, measured from the catalogue).
- Magnification mu = 1 / det(I - Hessian) (signed: < 0 for saddle points).
- Delay (days) relative to the first-arriving image, which has delay 0 wherever it sits in the list.
"""
import numpy as np
from astropy.cosmology import FlatLambdaCDM
from scipy.interpolate import CubicSpline

from twinkles_hpc.errors import InputError

#: The cosmology of the OM10 lensing calculation, measured from the catalogue: Om0 = 0.26 fits the
#: image positions (through D_ds/D_s), H0 = 72 the delays (docs/lensing.md).
DEFAULT_COSMOLOGY = FlatLambdaCDM(H0=72.0, Om0=0.26)
#: The cosmology behind the DD, DS, DDS (Mpc) columns of the Twinkles file (they match to < 1e-4);
#: those columns were recomputed for Twinkles and were *not* used for the OM10 images.
TABLE_DISTANCE_COSMOLOGY = FlatLambdaCDM(H0=70.0, Om0=0.3)

C_KMS = 299792.458                         # speed of light, km/s
ARCSEC = np.pi / (180.0 * 3600.0)          # radians per arcsec
MPC_M = 3.0856775814913673e22              # metres per Mpc
DAY_S = 86400.0
NPHI = 2048                                # polar-angle samples bracketing the roots

# lambda(e) at sqrt(e) = 0, 0.025, ..., 0.925 (e <= 0.856): a cubic B-spline in sqrt(e) with
# lambda(0) = 1 fitted to the 861 catalogue Einstein radii (rms residual 5e-5; docs/lensing.md).
_LAMBDA_TABLE = np.array([
    1.00000, 1.00142, 1.00260, 1.00361, 1.00450, 1.00526, 1.00589, 1.00635, 1.00668, 1.00688,
    1.00697, 1.00696, 1.00687, 1.00670, 1.00646, 1.00618, 1.00588, 1.00558, 1.00531, 1.00512,
    1.00506, 1.00519, 1.00559, 1.00641, 1.00780, 1.00996, 1.01323, 1.01800, 1.02474, 1.03432,
    1.04770, 1.06607, 1.09151, 1.12635, 1.17357, 1.23873, 1.32807, 1.44780])
_LAMBDA = CubicSpline(0.025 * np.arange(_LAMBDA_TABLE.size), _LAMBDA_TABLE)

#: Columns `read_om10` requires, with the number of values per row.
OM10_COLUMNS = {"LENSID": 1, "NIMG": 1, "ZLENS": 1, "VELDISP": 1, "ELLIP": 1, "PHIE": 1, "GAMMA": 1,
                "PHIG": 1, "ZSRC": 1, "XSRC": 1, "YSRC": 1, "MAGI_IN": 1, "MAGI": 1, "IMSEP": 1,
                "XIMG": 4, "YIMG": 4, "MAG": 4, "DELAY": 4, "REFF": 1, "APMAG_I": 1}


# ------------------------------------------------------------------------------------ inputs
def _check(veldisp, zlens, zsrc, ellip=0.0, gamma=0.0):
    """Validated float arrays; ValueError naming the bad parameter."""
    veldisp, zlens, zsrc, ellip, gamma = (np.asarray(a, dtype=np.float64)
                                          for a in (veldisp, zlens, zsrc, ellip, gamma))
    for name, ok, want, val in (
            ("veldisp", veldisp > 0, "> 0 km/s", veldisp),
            ("zlens", zlens > 0, "> 0", zlens),
            ("zsrc", zsrc > zlens, "> zlens", zsrc),
            ("ellip", (ellip >= 0) & (ellip < 1), "in [0, 1) (ellip = 1 - q)", ellip),
            ("gamma", (gamma >= 0) & (gamma < 1), "in [0, 1)", gamma)):
        if not np.all(ok):
            raise ValueError(f"{name} must be {want}, got {val[~ok].ravel()[:3]}")
    return veldisp, zlens, zsrc, ellip, gamma


def distances(zlens, zsrc, cosmology=None):
    """Angular diameter distances (D_d, D_s, D_ds) in Mpc."""
    cosmo = cosmology or DEFAULT_COSMOLOGY
    try:                                        # astropy >= 7; the z1z2 form is deprecated there
        dds = cosmo.angular_diameter_distance(zlens, zsrc)
    except TypeError:
        dds = cosmo.angular_diameter_distance_z1z2(zlens, zsrc)
    return cosmo.angular_diameter_distance(zlens).value, cosmo.angular_diameter_distance(zsrc).value, dds.value


def einstein_radius(veldisp, zlens, zsrc, cosmology=None):
    """SIS Einstein radius theta_E = 4 pi (sigma/c)^2 D_ds/D_s in arcsec (veldisp sigma in km/s).

    The SIE of `solve_lens` has b = dynamical_normalization(ellip) * theta_E.
    """
    veldisp, zlens, zsrc, _, _ = _check(veldisp, zlens, zsrc)
    _, ds, dds = distances(zlens, zsrc, cosmology)
    return 4.0 * np.pi * (veldisp / C_KMS) ** 2 * dds / ds / ARCSEC


def dynamical_normalization(ellip):
    """OM10's lambda(e): SIE Einstein radius / SIS Einstein radius at the same velocity dispersion.

    1 at e = 0, 1.007 at e = 0.1, 1.006 at e = 0.3, 1.027 at e = 0.5, 1.40 at e = 0.84. Measured from
    the catalogue (docs/lensing.md); beyond e = 0.84 (the largest in the table) it is extrapolated.
    """
    ellip = np.asarray(ellip, dtype=np.float64)
    if not np.all((ellip >= 0) & (ellip < 1)):
        raise ValueError(f"ellip = 1 - q must be in [0, 1), got {ellip[~((ellip >= 0) & (ellip < 1))].ravel()[:3]}")
    return _LAMBDA(np.sqrt(ellip))


# -------------------------------------------------------------------------------- the SIE
def _sie_alpha_unit(cphi, sphi, q):
    """SIE deflection in units of b at polar angle phi, lens frame (major axis along x').

    kappa = 1 / (2 sqrt(q x^2 + y^2 / q)); an isothermal deflection depends on phi only
    (Kormann, Schneider & Bartelmann 1994): alpha = sqrt(q)/q' (atan(q' cos / w), atanh(q' sin / w))
    with q' = sqrt(1 - q^2), w = sqrt(q^2 cos^2 + sin^2). q -> 1 gives the SIS (cos, sin).
    """
    qp = np.sqrt(np.maximum(1.0 - q * q, 0.0))
    w = np.sqrt(q * q * cphi * cphi + sphi * sphi)
    small = qp < 1e-6
    qs = np.where(small, 0.5, qp)               # any value < 1 keeps the unused branch finite
    ax = np.where(small, cphi / w, np.arctan(qs * cphi / w) / qs)
    ay = np.where(small, sphi / w, np.arctanh(qs * sphi / w) / qs)
    return np.sqrt(q) * ax, np.sqrt(q) * ay


class _Model:
    """N lens systems in arcsec; pa_e, pa_g counter-clockwise from +x in radians; arrays shaped (N, 1)."""

    def __init__(self, b, q, pa_e, gamma, pa_g, xs, ys):
        self.b, self.q, self.gamma, self.xs, self.ys = b, q, gamma, xs, ys
        self.ce, self.se = np.cos(pa_e), np.sin(pa_e)
        self.c2, self.s2 = np.cos(2 * pa_g), np.sin(2 * pa_g)

    def alpha_sie(self, cphi, sphi):
        """SIE deflection (arcsec) at polar angle phi of the sky frame."""
        xl, yl = self.ce * cphi + self.se * sphi, -self.se * cphi + self.ce * sphi
        ax, ay = _sie_alpha_unit(xl, yl, self.q)
        return self.b * (self.ce * ax - self.se * ay), self.b * (self.se * ax + self.ce * ay)

    def take(self, rows):
        """The sub-model of systems `rows` (1-D index array)."""
        sub = object.__new__(_Model)
        sub.__dict__ = {k: v[rows] for k, v in self.__dict__.items()}
        return sub

    def _v(self, phi):
        """u(phi) and v(phi) = (1 - G)^-1 (beta + alpha(phi)); 1 - G = [[1+g c2, g s2], [g s2, 1-g c2]]."""
        g, c2, s2 = self.gamma, self.c2, self.s2
        cp, sp = np.cos(phi), np.sin(phi)
        ax, ay = self.alpha_sie(cp, sp)
        bx, by = self.xs + ax, self.ys + ay
        det = 1.0 - g * g
        return cp, sp, ((1 - g * c2) * bx - g * s2 * by) / det, ((1 + g * c2) * by - g * s2 * bx) / det

    def _cross(self, phi):
        cp, sp, vx, vy = self._v(phi)
        return cp * vy - sp * vx

    def roots(self, nphi=NPHI):
        """Image positions as (N, nphi) arrays in ascending polar angle, NaN where none.

        Lens equation beta = (1 - G) theta - alpha(phi), G the shear Hessian. With theta = r u(phi):
        r u = v(phi), so phi solves u x v = 0 and r = u . v > 0. Sign changes of u x v on a grid of
        nphi angles bracket the roots; a vectorised bisection over the brackets refines them.
        """
        # the offset keeps symmetric roots (phi = 0, pi/2, ...) off the grid nodes
        phi = 2 * np.pi * (np.arange(nphi + 1)[None, :] + 0.3183) / nphi
        f = self._cross(phi)
        ring = np.max(np.abs(f), axis=1) < 1e-12 * self.b[:, 0]
        if np.any(ring):
            raise ValueError(f"source on the centre of a round lens (systems {np.nonzero(ring)[0][:5]}): "
                             "an Einstein ring, not discrete images")
        rows, cols = np.nonzero(np.signbit(f[:, :-1]) != np.signbit(f[:, 1:]))
        sub = self.take(rows)
        lo, hi, flo = phi[0, cols][:, None], phi[0, cols + 1][:, None], f[rows, cols][:, None]
        for _ in range(48):                                     # 2 pi / nphi / 2^48
            mid = 0.5 * (lo + hi)
            fm = sub._cross(mid)
            left = np.signbit(fm) == np.signbit(flo)
            lo, flo, hi = np.where(left, mid, lo), np.where(left, fm, flo), np.where(left, hi, mid)
        cp, sp, vx, vy = sub._v(0.5 * (lo + hi))
        r = (cp * vx + sp * vy)[:, 0]
        x, y = np.full(f[:, :-1].shape, np.nan), np.full(f[:, :-1].shape, np.nan)
        ok = r > 0
        x[rows[ok], cols[ok]], y[rows[ok], cols[ok]] = r[ok] * cp[ok, 0], r[ok] * sp[ok, 0]
        return x, y

    def magnification(self, x, y):
        """Signed magnification 1 / det(I - psi_ij) at (x, y) arcsec."""
        r = np.hypot(x, y)
        cp, sp = x / r, y / r
        xl, yl = self.ce * x + self.se * y, -self.se * x + self.ce * y
        kappa = 0.5 * self.b / np.sqrt(self.q * xl * xl + yl * yl / self.q)
        # isothermal: psi = r F(phi) => psi_xx = 2 kappa sin^2, psi_yy = 2 kappa cos^2, psi_xy = -2 kappa sin cos
        gc, gs = self.gamma * self.c2, self.gamma * self.s2
        a11 = 1 - 2 * kappa * sp * sp + gc
        a22 = 1 - 2 * kappa * cp * cp - gc
        a12 = 2 * kappa * sp * cp + gs
        return 1.0 / (a11 * a22 - a12 * a12)

    def fermat(self, x, y):
        """Fermat potential |theta - beta|^2 / 2 - psi(theta) in arcsec^2."""
        r = np.hypot(x, y)
        ax, ay = self.alpha_sie(x / r, y / r)
        psi = x * ax + y * ay - 0.5 * self.gamma * ((x * x - y * y) * self.c2 + 2 * x * y * self.s2)
        return 0.5 * ((x - self.xs) ** 2 + (y - self.ys) ** 2) - psi


# ------------------------------------------------------------------------------ public API
def solve_lenses(veldisp, ellip, phie, gamma, phig, zlens, zsrc, xsrc, ysrc, cosmology=None, nphi=NPHI):
    """Vectorised `solve_lens` over N systems (1-D arrays or scalars, broadcast together).

    Returns a dict: nimg (N,) and ximg, yimg (arcsec), mag (signed), delay (days), each (N, M) with M
    the largest image count; slots past nimg are NaN. Images are in `solve_lens` order.
    """
    args = np.broadcast_arrays(*(np.atleast_1d(np.asarray(a, dtype=np.float64))
                                 for a in (veldisp, ellip, phie, gamma, phig, zlens, zsrc, xsrc, ysrc)))
    veldisp, ellip, phie, gamma, phig, zlens, zsrc, xsrc, ysrc = (a.ravel() for a in args)
    _check(veldisp, zlens, zsrc, ellip, gamma)
    if not all(np.all(np.isfinite(a)) for a in (phie, phig, xsrc, ysrc)):
        raise ValueError("phie, phig, xsrc and ysrc must be finite")
    dd, ds, dds = distances(zlens, zsrc, cosmology)
    b = dynamical_normalization(ellip) * 4.0 * np.pi * (veldisp / C_KMS) ** 2 * dds / ds / ARCSEC
    col = lambda a: a[:, None]  # noqa: E731
    model = _Model(col(b), col(1.0 - ellip), col(np.radians(phie) + np.pi / 2), col(gamma),
                   col(np.radians(phig) + np.pi / 2), col(xsrc), col(ysrc))
    x, y = model.roots(nphi)
    nimg = np.sum(np.isfinite(x), axis=1)
    width = max(int(nimg.max(initial=0)), 1)
    keep = np.argsort(np.where(np.isfinite(y), y, np.inf), axis=1, kind="stable")[:, :width]
    x, y = np.take_along_axis(x, keep, 1), np.take_along_axis(y, keep, 1)
    tau = model.fermat(x, y)
    # seconds per arcsec^2 of Fermat potential: (1 + z_l) D_d D_s / (c D_ds)
    days = (1 + zlens) * dd * ds / dds * MPC_M / (C_KMS * 1e3) * ARCSEC ** 2 / DAY_S
    tmin = np.min(np.where(np.isfinite(tau), tau, np.inf), axis=1, keepdims=True)
    return {"nimg": nimg, "ximg": x, "yimg": y, "mag": model.magnification(x, y),
            "delay": col(days) * (tau - tmin)}


def solve_lens(veldisp, ellip, phie, gamma, phig, zlens, zsrc, xsrc, ysrc, cosmology=None):
    """Singular isothermal ellipsoid + external shear (OM10 conventions). Returns arrays ximg, yimg (arcsec,
    relative to the lens centre), mag (signed magnification), delay (days) — in OM10's conventions (same
    image ordering rule and delay zero point as the OM10 table; angles as in OM10).

    Inputs: veldisp sigma (km/s); ellip e = 1 - q; phie major-axis position angle (deg east of north);
    gamma, phig external shear and position angle of the perturber (deg east of north); zlens, zsrc;
    xsrc, ysrc source position (arcsec, x west, y north). cosmology: astropy cosmology, default
    `DEFAULT_COSMOLOGY` (OM10's own).
    Order: ascending y (south to north), the rule that best describes the OM10 table (83 % of systems
    in exactly that order; the rest follow no rule found, docs/lensing.md). Delays count from the
    first-arriving image (delay 0). The core-less SIE has no central image: 2 or 4 images (3 for a
    naked cusp; 1, undelayed, for a source outside the caustics). Raises ValueError on bad input.
    """
    out = solve_lenses(veldisp, ellip, phie, gamma, phig, zlens, zsrc, xsrc, ysrc, cosmology)
    n = int(out["nimg"][0])
    return tuple(out[k][0, :n] for k in ("ximg", "yimg", "mag", "delay"))


def read_om10(path):
    """Read an OM10 catalogue (FITS binary table, first table HDU) as a numpy structured array.

    All columns are kept (names of the `OM10_COLUMNS` upper-cased, native byte order). A missing or
    unreadable file, or a missing or misshapen column, raises InputError(path, column, expected, got).
    """
    from astropy.io import fits
    try:
        with fits.open(path, memmap=False) as hdul:
            hdu = next((h for h in hdul if isinstance(h, fits.BinTableHDU)), None)
            data = None if hdu is None else np.asarray(hdu.data).copy()
    except (OSError, ValueError, TypeError) as exc:
        why = (str(exc).splitlines() or [""])[0]
        raise InputError(path, "file", "a readable FITS file", f"{type(exc).__name__}: {why}") from None
    if data is None:
        raise InputError(path, "HDU", "a FITS binary table", "no table")
    names = {n.upper(): n for n in data.dtype.names}
    for column, width in OM10_COLUMNS.items():
        if column not in names:
            raise InputError(path, column, "an OM10 column", "missing")
        shape = data.dtype[names[column]].shape
        if shape != (() if width == 1 else (width,)):
            raise InputError(path, column, f"{width} value(s) per row", f"shape {shape}")
    data = data.astype(data.dtype.newbyteorder("="))
    data.dtype.names = [n.upper() if n.upper() in OM10_COLUMNS else n for n in data.dtype.names]
    return data


def compare_om10(catalogue, cosmology=None):
    """Solve every system of an OM10 table (`read_om10` array) and measure the agreement with it.

    Images of systems with the right count are matched to the table's by nearest position. Returns a
    dict: n, nimg_agree (fraction), mismatched (row indices), order_agree (fraction in table order),
    pos_median / pos_max (arcsec, worst image per system), mag_median / mag_max (worst |mu/mu_table - 1|
    per system), delay_median / delay_max (days, worst per system), delay_rel_median (|dt/dt_table - 1|
    of the non-zero delays).
    """
    t = catalogue
    out = solve_lenses(*(t[k] for k in ("VELDISP", "ELLIP", "PHIE", "GAMMA", "PHIG", "ZLENS", "ZSRC",
                                       "XSRC", "YSRC")), cosmology=cosmology)
    same = out["nimg"] == t["NIMG"]
    pos, mag, dt, rel, inorder = [], [], [], [], []
    for i in np.nonzero(same)[0]:
        k = int(t["NIMG"][i])
        sep = np.hypot(out["ximg"][i, :k, None] - t["XIMG"][i, None, :k],
                       out["yimg"][i, :k, None] - t["YIMG"][i, None, :k])
        j = sep.argmin(axis=0)                  # model image nearest each table image
        inorder.append(np.array_equal(j, np.arange(k)))
        pos.append(sep.min(axis=0).max())
        mag.append(np.max(np.abs(out["mag"][i, j] / t["MAG"][i, :k] - 1)))
        dt.append(np.max(np.abs(out["delay"][i, j] - t["DELAY"][i, :k])))
        nz = t["DELAY"][i, :k] > 0
        rel.extend(np.abs(out["delay"][i, j][nz] / t["DELAY"][i, :k][nz] - 1))
    return {"n": len(t), "nimg_agree": float(np.mean(same)), "mismatched": np.nonzero(~same)[0],
            "order_agree": float(np.mean(inorder)), "pos_median": float(np.median(pos)),
            "pos_max": float(np.max(pos)), "mag_median": float(np.median(mag)),
            "mag_max": float(np.max(mag)), "delay_median": float(np.median(dt)),
            "delay_max": float(np.max(dt)), "delay_rel_median": float(np.median(rel))}


if __name__ == "__main__":                      # python -m twinkles_hpc.sky.lensing CATALOGUE.fits
    import sys
    import time
    if len(sys.argv) != 2:
        sys.exit("usage: python -m twinkles_hpc.sky.lensing OM10_CATALOGUE.fits")
    start = time.perf_counter()
    stats = compare_om10(read_om10(sys.argv[1]))
    stats["seconds"] = round(time.perf_counter() - start, 2)
    for key, value in stats.items():
        print(f"{key:18s} {value}")
