"""The project's own offline SN Ia light-curve model (docs/supernovae.md).

Not SALT2 (its model files cannot be downloaded here): a smooth rest-frame spectral time series
with stretch and colour, redshifted and integrated through the project's band passes.

Model, rest frame, template phase tau = p / s in days from B maximum (p = rest-frame phase):

* At each of a dozen anchor wavelengths lambda_k (120-1250 nm) the monochromatic flux is
  L_k(tau) = S(tau) [G_k(tau) + tail_k(tau) + secondary_k(tau)] 10^(-0.4 dm0_k), normalised to
  10^(-0.4 dm0_k) at tau = 0: an asymmetric Gaussian primary peak, an exponential (linear in mag)
  radioactive tail that takes over after ~+25 d, and a Gaussian secondary maximum in the red and
  near-IR, after the form of Contardo, Leibundgut & Vacca 2000 (A&A 359, 876). S is a t^2
  fireball turn-on at explosion (tau = -RISE_DAYS; Riess et al. 1999, AJ 118, 2675) and a cosine
  taper to zero between PHASE_END and PHASE_END + TAPER_DAYS.
* dm0_k is the peak SED (AB mag relative to 440 nm at B maximum): UV line blanketing below
  ~400 nm, the near-IR deficit at maximum (numbers and sources in _ANCHORS below).
* Between anchors, ln f_nu is a natural cubic spline in ln lambda (linear in the anchor values).
* Stretch s = 1 + 0.091 x1 (the linear term of the Guy et al. 2007, A&A 466, 11, x1-stretch
  relation, with the template at x1 = 0 defined as s = 1) dilates the whole phase axis.
* Colour: the SED is dimmed by beta c k(lambda) mag, k a Cardelli, Clayton & Mathis 1989 (ApJ 345,
  245) law with R_V = 2.1 normalised to 1 over B at maximum (so with beta = 3.1, c = E(B-V)),
  continued linearly in 1/lambda below 303 nm without the 217.5 nm bump (as SALT2's colour law is
  extrapolated linearly in the UV).
* Brightness: the Tripp (1998, A&A 331, 815) relation, peak rest-frame B (the Bessell-like band
  B_BAND below, AB) M = M_B - alpha x1 + beta c; observed f_nu(lambda) = (1+z) f_nu,rest(lambda/(1+z))
  (10 pc / D_L)^2, D_L from the cosmology (the seds module's redshift convention plus distance).

Fast path: band fluxes are tabulated once per process on a grid of (z, tau, beta c) per LSST band
and interpolated (docs/supernovae.md states the measured accuracy; tests check it).
"""
import functools

import numpy as np
from astropy.cosmology import FlatLambdaCDM
from scipy.interpolate import CubicSpline

from twinkles_hpc.errors import InputError
from twinkles_hpc.instrument import BANDS
from twinkles_hpc.sky import seds

#: Flat LCDM with H0 = 70 km/s/Mpc, Omega_m = 0.3: round concordance values (Planck 2018 gives
#: 67.4 / 0.315), h = 0.7 matching the h70 units of the Dilday et al. 2010 rate and the usual
#: M_B ~ -19.3 calibration at H0 = 70.
DEFAULT_COSMOLOGY = FlatLambdaCDM(H0=70.0, Om0=0.3)

RISE_DAYS = 18.0        # explosion to B max, template days (Hayden et al. 2010, ApJ 712, 350: 17.4 d)
TURN_ON_DAYS = 5.0      # fireball scale: S = 1 - exp(-(t / 5 d)^2), t = days since explosion
PHASE_END = 80.0        # last template day of full validity
TAPER_DAYS = 10.0       # cosine taper to zero flux after PHASE_END
TAIL_ON = (22.0, 4.0)   # logistic switch-on of the radioactive tail: centre, width (days)
X1_TO_STRETCH = 0.091   # s = 1 + 0.091 x1 (Guy et al. 2007)
STRETCH_RANGE = (0.5, 1.6)
R_V = 2.1               # colour law shape: A_B / E(B-V) = R_V + 1 = 3.1 = beta

#: Anchor wavelengths (rest frame, nm) and their light curves. Columns:
#: dm0 (AB mag at B max relative to 440 nm), tau1 (primary peak, d), sig_r / sig_f (rise / fall
#: Gaussian widths, d), m40 (tail level at +40 d, mag below the tau = 0 flux), gamma (tail slope,
#: mag/d), a2 (secondary peak flux / primary), tau2, sig2 (d).
#: Peak colours (AB): U-B +0.48, B-V -0.18, V-R -0.19, V-I -0.82, from Phillips et al. 1999
#: (AJ 118, 1766) B-V = -0.07, V-I ~ -0.4, Jha et al. 2006 (AJ 131, 527) U-B ~ -0.4 (all Vega)
#: with Blanton & Roweis 2007 (AJ 133, 734) AB offsets; J from M_J ~ -18.6 (Krisciunas et al.
#: 2004, AJ 128, 3034). The UV (< 320 nm) is steeply blanketed (Swift/UVOT photometry of normal
#: SNe Ia, e.g. Milne et al. 2010, ApJ 721, 1627): rough, +-0.5 mag.
#: Shapes: B declines 1.1 mag in 15 d (Phillips 1993, ApJ 413, L105), V ~0.65, U faster; tails
#: 0.014 (B), 0.028 (V), ~0.03-0.045 mag/d (R-J) (Leibundgut 2000, A&ARv 10, 179); U peaks ~2 d
#: before B, V ~2 d after, I and J ~3 d before with a secondary maximum at +25-30 d
#: (Hamuy et al. 1996, AJ 112, 2438; Folatelli et al. 2010, AJ 139, 120; Kasen 2006, ApJ 649, 939).
ANCHOR_NM = np.array([120.0, 160.0, 200.0, 260.0, 310.0, 365.0, 440.0, 550.0, 650.0, 800.0, 1000.0, 1250.0])
_ANCHORS = np.array([
    #  dm0   tau1  sig_r sig_f  m40   gamma  a2    tau2  sig2
    [6.00, -2.0, 5.4, 8.0, 4.60, 0.018, 0.00, 25.0, 5.0],    # 120 nm
    [5.00, -2.0, 5.4, 8.0, 4.60, 0.018, 0.00, 25.0, 5.0],    # 160
    [3.80, -2.0, 5.4, 8.0, 4.40, 0.018, 0.00, 25.0, 5.0],    # 200
    [2.30, -2.0, 5.4, 8.5, 4.20, 0.018, 0.00, 25.0, 5.0],    # 260
    [1.20, -2.0, 5.5, 9.0, 4.00, 0.018, 0.00, 25.0, 5.0],    # 310
    [0.48, -1.5, 5.6, 9.8, 3.65, 0.018, 0.00, 25.0, 5.0],    # U 365
    [0.00, 0.0, 5.7, 10.3, 3.06, 0.016, 0.00, 25.0, 5.0],    # B 440
    [0.18, 2.0, 7.4, 11.3, 2.21, 0.027, 0.04, 24.0, 5.0],    # V 550
    [0.37, 0.5, 6.8, 11.7, 1.75, 0.034, 0.14, 24.0, 6.1],    # R 650
    [1.00, -3.0, 5.6, 12.0, 1.25, 0.041, 0.20, 27.0, 8.2],   # I 800
    [1.40, -3.0, 5.5, 9.1, 1.29, 0.047, 0.33, 29.0, 8.6],    # Y 1000
    [1.75, -3.0, 5.4, 7.4, 1.73, 0.040, 0.18, 30.0, 9.0],    # J 1250
])
#: The Bessell-like rest-frame B band that defines M_B: Gaussian in wavelength, centre 440 nm,
#: FWHM 95 nm (Bessell 1990, PASP 102, 1181: B lambda_eff ~ 440 nm, FWHM ~ 95 nm).
B_BAND = (440.0, 95.0)

#: Table grids of the fast path.
Z_TABLE = np.linspace(0.0, 1.6, 81)
TAU_TABLE = np.arange(-RISE_DAYS, PHASE_END + TAPER_DAYS + 1e-9, 0.5)
A_TABLE = np.arange(-2.0, 3.0 + 1e-9, 0.25)   # beta * c, mag of B-band dimming


# --------------------------------------------------------------------------- rest-frame spectra
def _logistic(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _anchor_shape(tau):
    """(n_anchor, n_tau) unnormalised monochromatic light curves at raw phases `tau` (days)."""
    tau = np.asarray(tau, dtype=np.float64)[None, :]
    dm0, tau1, sig_r, sig_f, m40, gamma, a2, tau2, sig2 = (c[:, None] for c in _ANCHORS.T)
    sig = np.where(tau < tau1, sig_r, sig_f)
    prim = np.exp(-0.5 * ((tau - tau1) / sig) ** 2)
    tail = 10.0 ** (-0.4 * (m40 + gamma * (tau - 40.0))) * _logistic((tau - TAIL_ON[0]) / TAIL_ON[1])
    return prim + tail + a2 * np.exp(-0.5 * ((tau - tau2) / sig2) ** 2)


@functools.cache
def _b_peak_offset():
    """Raw phase (days) of the maximum of the template's B_BAND light curve: subtracted so that
    tau = 0 is B maximum exactly (a few 0.1 d, from the anchors' peak times around 440 nm)."""
    tau = np.arange(-3.0, 3.0 + 1e-9, 0.01)
    ln_f = _spline_matrix(seds.WAVELENGTH_NM) @ np.log(_anchor_shape(tau))
    return float(tau[np.argmax(_rest_band_weights() @ np.exp(ln_f))])


def envelope(tau):
    """The wavelength-independent factor of the model at template phase `tau` (days from B max):
    the fireball turn-on 1 - exp(-(t / TURN_ON_DAYS)^2), t = tau + RISE_DAYS days since explosion
    (~t^2 early, 0 before explosion), times a cosine taper from 1 at PHASE_END to 0 TAPER_DAYS later."""
    tau = np.asarray(tau, dtype=np.float64)
    t_exp = np.maximum(tau + RISE_DAYS, 0.0)
    x = np.clip((tau - PHASE_END) / TAPER_DAYS, 0.0, 1.0)
    return -np.expm1(-(t_exp / TURN_ON_DAYS) ** 2) * 0.5 * (1.0 + np.cos(np.pi * x))


def _anchor_flux(tau, with_envelope=True):
    """(n_anchor, n_tau) monochromatic f_nu at the anchors at template phases `tau` (days from B
    maximum): 10^(-0.4 dm0) at tau = 0; with the envelope, zero before explosion and after the taper."""
    off = _b_peak_offset()
    tau = np.asarray(tau, dtype=np.float64)
    shape = _anchor_shape(tau + off) / _anchor_shape([off]) * 10.0 ** (-0.4 * _ANCHORS[:, :1])
    return shape * envelope(tau) if with_envelope else shape


def _spline_matrix(lam_nm):
    """(n_lam, n_anchor) M with ln f_nu(lam) = M @ ln f_nu(anchors); flat beyond the anchors."""
    x = np.log(np.clip(np.asarray(lam_nm, dtype=np.float64), ANCHOR_NM[0], ANCHOR_NM[-1]))
    return CubicSpline(np.log(ANCHOR_NM), np.eye(ANCHOR_NM.size), bc_type="natural")(x)


def _ccm(lam_nm):
    """Cardelli, Clayton & Mathis 1989 A(lambda)/A_V at R_V (optical and IR), linear in x = 1/lambda
    (um^-1) beyond x = 3.3 with the slope there (no 217.5 nm bump)."""
    x = 1000.0 / np.asarray(lam_nm, dtype=np.float64)

    def opt(x):
        y = x - 1.82
        a = np.polyval([0.32999, -0.77530, 0.01979, 0.72085, -0.02427, -0.50447, 0.17699, 1.0], y)
        b = np.polyval([-2.09002, 5.30260, -0.62251, -5.38434, 1.07233, 2.28305, 1.41338, 0.0], y)
        return a + b / R_V

    ir = (0.574 - 0.527 / R_V) * np.maximum(x, 0.0) ** 1.61
    slope = (opt(3.3) - opt(3.3 - 1e-4)) / 1e-4
    return np.where(x < 1.1, ir, np.where(x <= 3.3, opt(np.clip(x, 1.1, 3.3)), opt(3.3) + slope * (x - 3.3)))


@functools.cache
def _rest_band_weights():
    """Photon-counting weights of B_BAND on seds.WAVELENGTH_NM (sum to 1)."""
    lam = seds.WAVELENGTH_NM
    c, fwhm = B_BAND
    w = np.exp(-0.5 * ((lam - c) / (fwhm / 2.3548)) ** 2) * np.gradient(lam) / lam
    return w / w.sum()


@functools.cache
def _colour_law_norm():
    """k normalisation: the peak-SED-weighted mean of A/A_V over B_BAND."""
    lam = seds.WAVELENGTH_NM
    f = np.exp(_spline_matrix(lam) @ np.log(_anchor_flux([0.0], with_envelope=False)))[:, 0]
    w = _rest_band_weights() * f
    return float(w @ _ccm(lam) / w.sum())


def colour_law(wavelength_nm):
    """k(lambda): mag of dimming per unit beta*c at rest `wavelength_nm` (1 over B at maximum)."""
    return _ccm(wavelength_nm) / _colour_law_norm()


@functools.cache
def _b_norm():
    """Mean f_nu of the template (anchor units) over B_BAND at tau = 0."""
    lam = seds.WAVELENGTH_NM
    f = np.exp(_spline_matrix(lam) @ np.log(_anchor_flux([0.0], with_envelope=False)))[:, 0]
    return float(_rest_band_weights() @ f)


def template_fnu(tau, wavelength_nm, a=0.0):
    """Rest-frame template f_nu (n_tau, n_lam) at template phases `tau` (days from B max) and rest
    wavelengths (nm), with B-band dimming `a` = beta c (mag), in units where the B_BAND mean f_nu at
    maximum is 1 for a = 0 (so -2.5 log10 of a band mean is an absolute AB mag relative to M_B)."""
    tau = np.atleast_1d(np.asarray(tau, dtype=np.float64))
    lam = np.asarray(wavelength_nm, dtype=np.float64)
    ln_f = (_spline_matrix(lam) @ np.log(_anchor_flux(tau, with_envelope=False))).T
    f = np.exp(ln_f - 0.4 * np.log(10.0) * a * colour_law(lam)) / _b_norm()
    return f * envelope(tau)[:, None]


# --------------------------------------------------------------------------- band weights, tables
@functools.cache
def _band_weights():
    """(6, n) photon-counting weights of the LSST bands on seds.WAVELENGTH_NM (rows sum to 1)."""
    lam = seds.WAVELENGTH_NM
    dl = np.gradient(lam)
    dl[[0, -1]] *= 0.5
    w = np.array([seds.bandpass(b)[1] for b in BANDS]) * dl / lam
    return w / w.sum(axis=1, keepdims=True)


def _band_flux_exact(band, tau, z, a):
    """Observed band-mean f_nu / 3631 Jy of the template at 10 pc (no distance), one (z, a)."""
    lam = seds.WAVELENGTH_NM
    w = _rest_band_weights() if band == "B" else _band_weights()[BANDS.index(band)]
    return (1.0 + z) * (template_fnu(tau, lam / (1.0 + z), a) @ w)


@functools.cache
def _table():
    """(6 bands, n_z, n_tau, n_a) band flux relative to the template's B at maximum, without the
    envelope (so strictly positive and smooth: interpolated in log)."""
    lam = seds.WAVELENGTH_NM
    w = _band_weights()
    ln_anchor = np.log(_anchor_flux(TAU_TABLE, with_envelope=False))
    out = np.empty((len(BANDS), Z_TABLE.size, TAU_TABLE.size, A_TABLE.size))
    for iz, z in enumerate(Z_TABLE):
        rest = lam / (1.0 + z)
        f = np.exp((_spline_matrix(rest) @ ln_anchor).T) / _b_norm()          # (n_tau, n_lam)
        dim = 10.0 ** (-0.4 * A_TABLE[:, None] * colour_law(rest)[None, :])   # (n_a, n_lam)
        wa = (w[:, None, :] * dim[None, :, :]).reshape(-1, lam.size)           # (6 n_a, n_lam)
        out[:, iz] = (1.0 + z) * (f @ wa.T).reshape(TAU_TABLE.size, len(BANDS), A_TABLE.size).transpose(1, 0, 2)
    out = np.log(out)
    out.flags.writeable = False
    return out


def _table_flux(b, z, tau, a):
    """Band flux (relative to the template's B at maximum, with the (1+z) of the redshift) by
    trilinear interpolation of ln flux in (z, tau, a = beta c), times the exact envelope (zero
    before explosion and after the taper). Arguments broadcast; b are band indices."""
    ln_table = _table()
    nb, nz, nt, na = ln_table.shape
    flat = ln_table.reshape(-1)
    fz = np.asarray(z) / (Z_TABLE[1] - Z_TABLE[0])
    iz = np.minimum(fz.astype(np.intp), nz - 2)
    wz = fz - iz
    ft = np.clip((np.asarray(tau) - TAU_TABLE[0]) / (TAU_TABLE[1] - TAU_TABLE[0]), 0.0, nt - 1.0)
    it = np.minimum(ft.astype(np.intp), nt - 2)
    wt = ft - it
    fa = (np.asarray(a) - A_TABLE[0]) / (A_TABLE[1] - A_TABLE[0])
    ia = np.minimum(fa.astype(np.intp), na - 2)
    wa = fa - ia
    base = ((b * nz + iz) * nt + it) * na + ia
    ln_f = 0.0
    for dz, wzz in ((0, 1.0 - wz), (1, wz)):
        for dt, wtt in ((0, 1.0 - wt), (1, wt)):
            for da, waa in ((0, 1.0 - wa), (1, wa)):
                ln_f = ln_f + (wzz * wtt * waa) * flat[base + (dz * nt + dt) * na + da]
    return np.exp(ln_f) * envelope(tau)


def stretch_from_x1(x1):
    """Light-curve stretch s = 1 + 0.091 x1, clipped to STRETCH_RANGE."""
    return np.clip(1.0 + X1_TO_STRETCH * np.asarray(x1, dtype=np.float64), *STRETCH_RANGE)


def _band_index(band):
    """Index into BANDS of a band letter or an array of letters (InputError if unknown)."""
    if isinstance(band, str):
        if len(band) != 1 or band not in BANDS:
            raise InputError("snmodel", "band", f"one of {', '.join(BANDS)}", band)
        return np.intp(BANDS.index(band))
    arr = np.asarray(band)
    letters = np.array(list(BANDS))
    order = np.argsort(letters)
    pos = np.clip(np.searchsorted(letters[order], arr), 0, len(BANDS) - 1)
    idx = order[pos]
    bad = letters[idx] != arr
    if np.any(bad):
        raise InputError("snmodel", "band", f"letters of {BANDS}", arr[bad].ravel()[:5].tolist())
    return idx


class SNIaModel:
    """The SN Ia model of this module in one cosmology (astropy; None: DEFAULT_COSMOLOGY).

    Parameters of every method: z (redshift, 0 < z <= Z_TABLE[-1]), t0 (MJD of rest-frame B
    maximum), x1 (SALT2-like stretch parameter), c (colour), M_B (peak absolute AB mag in the
    rest-frame B_BAND before standardisation), alpha, beta (Tripp coefficients). Scalars or arrays
    broadcasting together (one entry per (SN, epoch) pair). Magnitudes are AB; +inf where the model
    has no flux (before explosion, after PHASE_END + TAPER_DAYS).
    """

    def __init__(self, cosmology=None):
        self.cosmology = DEFAULT_COSMOLOGY if cosmology is None else cosmology

    def distmod(self, z):
        """Distance modulus mu(z), mag, from the cosmology (one astropy call per distinct z)."""
        z = np.asarray(z, dtype=np.float64)
        zu, inv = np.unique(z, return_inverse=True)
        return np.asarray(self.cosmology.distmod(zu).value, dtype=np.float64)[inv].reshape(z.shape)

    @staticmethod
    def _check(z, c, beta):
        z = np.asarray(z, dtype=np.float64)
        if z.size and not (np.all(z > 0.0) and np.all(z <= Z_TABLE[-1])):
            raise InputError("snmodel", "z", f"0 < z <= {Z_TABLE[-1]}", z[~((z > 0) & (z <= Z_TABLE[-1]))][:3].tolist())
        a = np.asarray(beta, dtype=np.float64) * np.asarray(c, dtype=np.float64)
        if a.size and not (np.all(a >= A_TABLE[0]) and np.all(a <= A_TABLE[-1])):
            raise InputError("snmodel", "c", f"{A_TABLE[0]} <= beta * c <= {A_TABLE[-1]}",
                             a[~((a >= A_TABLE[0]) & (a <= A_TABLE[-1]))][:3].tolist())
        if not (np.all(np.isfinite(z)) and np.all(np.isfinite(a))):
            raise InputError("snmodel", "z/c", "finite values", "nan or inf")

    def mags(self, band, mjd, *, z, t0, x1, c, M_B, alpha=0.11, beta=3.1):
        """Observed AB magnitudes at `mjd` in `band` (a letter or an array of letters). Fast path:
        band fluxes tabulated on (z, tau, beta c), interpolated trilinearly in log flux, times the
        exact envelope: < 0.002 mag from `mags_exact` within 5 mag of peak (docs/supernovae.md)."""
        self._check(z, c, beta)
        b, mjd, z, t0, x1, c, M_B, alpha, beta = np.broadcast_arrays(
            _band_index(band), *(np.asarray(v, dtype=np.float64) for v in (mjd, z, t0, x1, c, M_B, alpha, beta)))
        tau = (mjd - t0) / ((1.0 + z) * stretch_from_x1(x1))
        flux = _table_flux(b, z, tau, beta * c)
        with np.errstate(divide="ignore"):
            return M_B - alpha * x1 + self.distmod(z) - 2.5 * np.log10(flux)

    def peak_mag(self, band, *, z, x1, c, M_B, alpha=0.11, beta=3.1):
        """Observed-frame peak AB magnitude in `band`: the brightest table phase node (stretch
        dilates time only, so it does not change the peak). Arrays broadcast; z, c as for `mags`."""
        self._check(z, c, beta)
        b, z, x1, c, M_B, alpha, beta = np.broadcast_arrays(
            _band_index(band), *(np.asarray(v, dtype=np.float64) for v in (z, x1, c, M_B, alpha, beta)))
        peak = np.empty(b.shape)
        for sl in np.array_split(np.arange(b.size), max(1, b.size // 4096)):
            bb, zz, a = (v.ravel()[sl, None] for v in (b, z, beta * c))
            peak.flat[sl] = _table_flux(bb, zz, TAU_TABLE[None, :], a).max(axis=1)
        return M_B - alpha * x1 + self.distmod(z) - 2.5 * np.log10(peak)

    def mags_exact(self, band, mjd, *, z, t0, x1, c, M_B, alpha=0.11, beta=3.1):
        """As `mags`, by direct integration of the spectrum (slow: for tests and validation).
        `band` may also be "B", the rest-frame-defined B_BAND used here as an observed band."""
        self._check(z, c, beta)
        band = np.asarray(band)
        if not np.all(np.isin(band, list(BANDS) + ["B"])):
            raise InputError("snmodel", "band", f"letters of {BANDS} or B", band.tolist())
        args = np.broadcast_arrays(band, *(np.asarray(v, dtype=np.float64)
                                           for v in (mjd, z, t0, x1, c, M_B, alpha, beta)))
        out = np.empty(args[0].shape)
        for i, (b, mjd_, z_, t0_, x1_, c_, mb, al, be) in enumerate(zip(*(a.ravel() for a in args))):
            tau = (mjd_ - t0_) / ((1.0 + z_) * stretch_from_x1(x1_))
            f = _band_flux_exact(str(b), [tau], z_, be * c_)[0]
            with np.errstate(divide="ignore"):
                out.flat[i] = mb - al * x1_ + self.distmod(z_) - 2.5 * np.log10(f) if f > 0 else np.inf
        return out

    def rest_frame_mag(self, phase, *, x1, c, M_B, alpha=0.11, beta=3.1, band="B"):
        """Absolute AB magnitude at rest-frame `phase` (days from B max) through `band` ("B" for
        B_BAND, or an LSST band letter) of the rest-frame SED: at phase 0 in B this is the Tripp
        M_B - alpha x1 + beta c (to < 0.01 mag)."""
        self._check(1e-3, c, beta)
        args = np.broadcast_arrays(*(np.asarray(v, dtype=np.float64) for v in (phase, x1, c, M_B, alpha, beta)))
        out = np.empty(args[0].shape)
        for i, (p, x1_, c_, mb, al, be) in enumerate(zip(*(a.ravel() for a in args))):
            f = _band_flux_exact(band, [p / stretch_from_x1(x1_)], 0.0, be * c_)[0]
            with np.errstate(divide="ignore"):
                out.flat[i] = mb - al * x1_ - 2.5 * np.log10(f) if f > 0 else np.inf
        return out

    def observed_fnu_jy(self, mjd, wavelength_nm, *, z, t0, x1, c, M_B, alpha=0.11, beta=3.1):
        """Observed-frame f_nu (janskys) of one SN at one `mjd` on `wavelength_nm` (observed, nm)."""
        self._check(z, c, beta)
        lam = np.asarray(wavelength_nm, dtype=np.float64)
        tau = (float(mjd) - t0) / ((1.0 + z) * float(stretch_from_x1(x1)))
        f = template_fnu([tau], lam / (1.0 + z), beta * c)[0]
        return seds.AB_ZERO_JY * (1.0 + z) * f * 10.0 ** (-0.4 * (M_B - alpha * x1 + float(self.distmod(z))))
