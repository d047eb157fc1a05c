"""Band passes, SEDs and synthetic AB photometry (the project's own offline models; docs/sky.md).

Conventions
-----------
* Wavelengths in nm (vacuum), f_nu in janskys where a unit matters.
* AB magnitudes are photon-counting: m = -2.5 log10( int f_nu T dlnlam / int 3631 Jy T dlnlam ).
* PhoSim's magNorm: the AB magnitude of the *rest-frame* SED at 500 nm (PhoSim issue #30 on
  phosim_release confirms the rest frame). Redshifting then stretches wavelengths by (1+z) and
  divides f_lambda by (1+z), as PhoSim does (bolometric flux conserved, no distance dimming,
  which is already in magNorm). In f_nu that is f_nu,obs(lam) = (1+z) f_nu,rest(lam/(1+z)),
  so a flat SED at redshift z is brighter by 2.5 log10(1+z) than its magNorm.

Catalogues of 1e5 objects never integrate per object: `template_mag_offsets` and
`blackbody_mag_offsets` interpolate tables computed once on a redshift / temperature grid.
"""
import functools
import re

import numpy as np

from twinkles_hpc.errors import InputError
from twinkles_hpc.instrument import BANDS, check_band

AB_ZERO_JY = 3631.0
#: Common wavelength grid of every band pass, nm: the atmosphere cuts below 300 nm and the
#: silicon QE is < 0.5 % beyond 1150 nm.
WAVELENGTH_NM = np.arange(300.0, 1200.0 + 0.25, 0.5)

# --- band pass model ----------------------------------------------------------------------
#: Filter 50 % transmission points, nm: the nominal LSST band ranges (u 320-400, g 400-552,
#: r 552-691, i 691-818, z 818-922, y 950-1080; e.g. Ivezic et al. 2019, ApJ 873, 111). The y edges
#: are set to 940-1030 nm so that, with the QE cut-off, its effective wavelength lands near LSST's
#: ~971 nm: all six come within 7 nm of 368, 482, 622, 754, 869, 971 nm (tests check 10 nm).
FILTER_EDGES_NM = {"u": (318.0, 399.0), "g": (401.0, 552.0), "r": (552.0, 691.0),
                   "i": (691.0, 818.0), "z": (818.0, 922.0), "y": (940.0, 1030.0)}
#: In-band filter transmission *including every loss the smooth model leaves out* (coatings, glass,
#: real QE curves), set so that zero_point(band) reproduces SMTN-002 / instrument.ZEROPOINT to
#: 0.01 mag. The physical filters transmit ~0.95; the low u value stands for the real u-band losses.
FILTER_PEAK = {"u": 0.36, "g": 0.79, "r": 0.87, "i": 0.95, "z": 0.95, "y": 0.85}
EDGE_WIDTH_FRAC = 0.004     # logistic edge scale / wavelength: 10-90 % over ~1.8 % of lambda
AIRMASS = 1.2               # syseng_throughputs' standard airmass for the zero points
PRESSURE_RATIO = 0.733      # Cerro Pachon (2.7 km, ~743 hPa) over sea level
CCD_THICKNESS_UM = 100.0    # LSST deep-depleted sensors
#: Silicon absorption length, um, at the -100 C operating temperature: room-temperature values
#: (Green 2008, Sol. En. Mat. 92, 1305) lengthened near the band gap for the cold, wider gap.
_SI_ABS_NM = np.array([300, 400, 500, 600, 700, 800, 900, 950, 1000, 1050, 1100, 1200.0])
_SI_ABS_UM = np.array([0.008, 0.1, 0.9, 2.5, 6.0, 14.0, 40.0, 60.0, 150.0, 700.0, 6000.0, 1e6])


def _logistic(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _atmosphere(lam):
    """Transmission at AIRMASS: Rayleigh (Hansen & Travis 1974, Space Sci. Rev. 16, 527, with
    the site pressure), aerosols (optical depth 0.05 at 550 nm, Angstrom exponent 1), ozone
    (Huggins cut-off and Chappuis band for ~300 DU), O2 A band, H2O 940 nm band."""
    lum = lam / 1000.0
    tau = PRESSURE_RATIO * 0.008569 * lum**-4 * (1 + 0.0113 * lum**-2 + 0.00013 * lum**-4)
    tau = tau + 0.05 * (lam / 550.0) ** -1.0
    tau = tau + 0.24 * np.exp(-(lam - 320.0) / 6.3) + 0.035 * np.exp(-0.5 * ((lam - 600.0) / 60.0) ** 2)
    tau = tau + 0.5 * np.exp(-0.5 * ((lam - 762.0) / 3.0) ** 2) + 0.1 * np.exp(-0.5 * ((lam - 940.0) / 15.0) ** 2)
    return np.exp(-AIRMASS * tau)


def _optics(lam):
    """Three mirror reflections, two Al-like (~0.92, weak dip near 830 nm) and one Ag-like (0.97,
    falling below ~340 nm), and three AR-coated fused-silica lenses (0.99 per surface)."""
    al = 0.92 - 0.02 * np.exp(-0.5 * ((lam - 830.0) / 60.0) ** 2)
    ag = 0.97 * _logistic((lam - 330.0) / 8.0)
    return al**2 * ag * 0.99**6


def _qe(lam):
    """CCD QE: AR-coated blue roll-off and 1 - exp(-t / L_abs) in the red."""
    labs = np.exp(np.interp(lam, _SI_ABS_NM, np.log(_SI_ABS_UM)))
    return 0.95 * _logistic((lam - 320.0) / 25.0) * -np.expm1(-CCD_THICKNESS_UM / labs)


def _filter(lam, band):
    lo, hi = FILTER_EDGES_NM[band]
    return (FILTER_PEAK[band] * _logistic((lam - lo) / (EDGE_WIDTH_FRAC * lo))
            * _logistic((hi - lam) / (EDGE_WIDTH_FRAC * hi)))


@functools.cache
def _throughputs():
    common = _atmosphere(WAVELENGTH_NM) * _optics(WAVELENGTH_NM) * _qe(WAVELENGTH_NM)
    t = np.array([_filter(WAVELENGTH_NM, b) * common for b in BANDS])
    t.flags.writeable = False
    return t


def bandpass(band):
    """Total LSST throughput (atmosphere at airmass 1.2, optics, filter, QE) of `band`.

    Returns (wavelength_nm, throughput), both on WAVELENGTH_NM; throughput is a probability
    per photon in [0, 1]. Read-only arrays.
    """
    check_band(band, source="bandpass")
    return WAVELENGTH_NM, _throughputs()[BANDS.index(band)]


@functools.cache
def _photon_weights():
    """(6, n) weights W such that W @ f_nu = int f_nu T dlnlam / int T dlnlam (trapezoid)."""
    lam = WAVELENGTH_NM
    dl = np.gradient(lam)
    dl[[0, -1]] *= 0.5  # trapezoid end weights are half a step
    w = _throughputs() * (dl / lam)
    w = w / w.sum(axis=1, keepdims=True)
    w.flags.writeable = False
    return w


def effective_wavelength(band):
    """Photon-weighted mean wavelength of the band, nm."""
    return float(_photon_weights()[BANDS.index(check_band(band))] @ WAVELENGTH_NM)


def zero_point(band, area_cm2=np.pi * (642.3 / 2) ** 2):
    """AB magnitude giving 1 photo-electron per second (effective 6.423 m aperture, SMTN-002)."""
    h = 6.62607015e-27  # erg s
    lam, t = bandpass(band)
    rate = area_cm2 * AB_ZERO_JY * 1e-23 / h * np.trapezoid(t / lam, lam)
    return 2.5 * np.log10(rate)


def ab_mag(wavelength_nm, f_nu, band):
    """AB magnitude through `band` of an SED f_nu (janskys) sampled at `wavelength_nm`.

    The SED is linearly interpolated onto the band grid; it must cover the band wherever the
    throughput exceeds 1e-4 of its peak. Returns +inf for zero flux.
    """
    check_band(band, source="ab_mag")
    lam = np.asarray(wavelength_nm, dtype=np.float64)
    f = np.asarray(f_nu, dtype=np.float64)
    if lam.ndim != 1 or lam.shape != f.shape or lam.size < 2 or np.any(np.diff(lam) <= 0):
        raise InputError("ab_mag", "wavelength_nm", "1-d increasing array, same shape as f_nu", lam.shape)
    _, t = bandpass(band)
    need = WAVELENGTH_NM[t > 1e-4 * t.max()]
    if lam[0] > need[0] or lam[-1] < need[-1]:
        raise InputError("ab_mag", "wavelength_nm", f"coverage of {need[0]:.0f}-{need[-1]:.0f} nm for band {band}",
                         f"{lam[0]:.0f}-{lam[-1]:.0f}")
    mean = _photon_weights()[BANDS.index(band)] @ np.interp(WAVELENGTH_NM, lam, f, left=0.0, right=0.0)
    with np.errstate(divide="ignore"):
        return float(-2.5 * np.log10(mean / AB_ZERO_JY))


# --- SEDs -------------------------------------------------------------------------------------
#: Parametric galaxy templates, rest frame. Red side (lam > 400 nm): ln f_nu = beta x - gamma x^2 / 2,
#: x = ln(lam / 500 nm) (f_nu peaks at 500 exp(beta/gamma) nm, the near-IR stellar bump).
#: Below the 4000 A break the continuum drops by `d4000` and follows lam^beta_uv; the break is
#: smoothed over ~15 nm. Break amplitudes span the D4000 range of old (~2), Sbc (~1.5) and
#: star-forming (~1.05-1.2) populations (Bruzual 1983, ApJ 273, 105; Kauffmann et al. 2003,
#: MNRAS 341, 33); slopes give z = 0 g-r of 0.71, 0.52, 0.33, 0.05: SDSS red sequence (~0.75) to
#: the bluest star-forming galaxies.
GALAXY_TEMPLATES = {
    "old":       dict(beta=2.6, gamma=1.6, d4000=2.1, beta_uv=4.0),    # elliptical, ~10 Gyr
    "sbc":       dict(beta=1.9, gamma=1.2, d4000=1.5, beta_uv=2.0),    # early spiral
    "scd":       dict(beta=1.2, gamma=0.8, d4000=1.25, beta_uv=1.0),   # late spiral
    "starburst": dict(beta=0.2, gamma=0.4, d4000=1.05, beta_uv=0.0),   # young: flat f_nu UV
}
GALAXY_SEDS = tuple(f"twinkles/gal_{k}" for k in GALAXY_TEMPLATES)
LYMAN_LIMIT_NM = 91.18
LYMAN_ALPHA_NM = 121.567
_BB_RE = re.compile(r"twinkles/bb_(\d+)K")
_KURUCZ_RE = re.compile(r"starSED/kurucz/.*_(\d+)\.gz")
_FLAT_ALIASES = {"flatSED", "sed_flat.txt", "flatSED/sed_flat.txt.gz", "../sky/sed_flat.txt"}
_EXPECTED = ("'flatSED', 'twinkles/bb_<T>K' (integer kelvin), 'twinkles/gal_<kind>' with kind in "
             + ", ".join(GALAXY_TEMPLATES) + ", or 'starSED/kurucz/..._<T>.gz' (mapped to a blackbody)")
_HC_OVER_K_NM_K = 1.438776877e7   # h c / k_B, nm K
#: Redshifts the SED models accept (inclusive).
REDSHIFT_RANGE = (0.0, 20.0)


def parse_sed(sed_name):
    """('flat', None) | ('bb', T_kelvin) | ('gal', kind) for a known SED name, else InputError."""
    name = str(sed_name)
    if name in _FLAT_ALIASES:
        return "flat", None
    m = _BB_RE.fullmatch(name) or _KURUCZ_RE.fullmatch(name)
    if m and 500 <= int(m.group(1)) <= 100_000:
        return "bb", int(m.group(1))
    if name.startswith("twinkles/gal_") and name[13:] in GALAXY_TEMPLATES:
        return "gal", name[13:]
    raise InputError("sed", "sed_name", _EXPECTED, name)


def _blackbody_rest(lam, teff):
    """Planck B_nu normalised to 1 at 500 nm."""
    c = _HC_OVER_K_NM_K / teff
    return (500.0 / lam) ** 3 * np.expm1(c / 500.0) / np.expm1(np.minimum(c / lam, 700.0))


def _galaxy_rest_unnormed(lam, p):
    x = np.log(lam / 500.0)
    ln_red = p["beta"] * x - 0.5 * p["gamma"] * x * x
    x4 = np.log(400.0 / 500.0)
    ln_uv = p["beta"] * x4 - 0.5 * p["gamma"] * x4 * x4 - np.log(p["d4000"]) + p["beta_uv"] * np.log(lam / 400.0)
    w = _logistic((lam - 400.0) / 4.0)
    # No ionising photons escape (escape fraction ~0); the edge is smoothed over ~1 nm so that
    # band fluxes are smooth functions of redshift and the tables interpolate accurately.
    return np.exp(w * ln_red + (1.0 - w) * ln_uv) * _logistic((lam - LYMAN_LIMIT_NM) / 1.0)


def _galaxy_rest(lam, kind):
    p = GALAXY_TEMPLATES[kind]
    return _galaxy_rest_unnormed(lam, p) / _galaxy_rest_unnormed(np.array(500.0), p)


def igm_transmission(wavelength_nm, redshift):
    """Mean IGM transmission at observed `wavelength_nm` for a source at `redshift`: the
    Lyman-alpha forest of Madau 1995 (ApJ 441, 18), tau = 0.0036 (lam / 121.567 nm)^3.46
    blueward of the redshifted Ly-alpha line (onset smoothed over 1 nm rest frame). The Lyman
    continuum needs no IGM term: the templates emit none."""
    lam = np.asarray(wavelength_nm, dtype=np.float64)
    zp1 = 1.0 + np.asarray(redshift, dtype=np.float64)
    onset = _logistic((LYMAN_ALPHA_NM - lam / zp1) / 1.0)
    return np.exp(-0.0036 * (lam / LYMAN_ALPHA_NM) ** 3.46 * onset)


def sed_fnu(sed_name, wavelength_nm, redshift=0.0):
    """Observed-frame f_nu of `sed_name` at `wavelength_nm`, normalised so that the rest-frame SED
    is 1 at 500 nm; redshifting multiplies f_nu by (1+z) (module docstring) and applies the IGM."""
    kind, par = parse_sed(sed_name)
    z = float(redshift)
    if not (REDSHIFT_RANGE[0] <= z <= REDSHIFT_RANGE[1]):
        raise InputError("sed", "redshift", f"{REDSHIFT_RANGE[0]:g} <= z <= {REDSHIFT_RANGE[1]:g}", redshift)
    lam = np.asarray(wavelength_nm, dtype=np.float64)
    rest = lam / (1.0 + z)
    if kind == "flat":
        f = np.ones_like(rest)
    elif kind == "bb":
        f = _blackbody_rest(rest, par)
    else:
        f = _galaxy_rest(rest, par) * igm_transmission(lam, z)
    return (1.0 + z) * f


def sed_magnitude(sed_name, mag_norm, redshift, band):
    """AB magnitude in `band` of `sed_name` with PhoSim magNorm `mag_norm` at `redshift` (exact
    integral; +inf for mag_norm = +inf, a component without light)."""
    check_band(band, source="sed_magnitude")
    f = sed_fnu(sed_name, WAVELENGTH_NM, redshift)
    mean = _photon_weights()[BANDS.index(band)] @ f
    if mean <= 0.0:
        return float("inf")
    return float(mag_norm - 2.5 * np.log10(mean))


# --- tables for catalogues --------------------------------------------------------------------
#: Redshift grid of the template tables: linear-in-flux interpolation is good to < 3e-4 mag
#: (measured; tests check 1e-3) wherever the band is within 15 mag of magNorm.
Z_GRID = np.linspace(0.0, 6.0, 3001)
#: Temperature grid (log-spaced) of the blackbody tables, K.
TEFF_GRID = np.geomspace(2000.0, 50_000.0, 2001)


@functools.cache
def _template_table():
    """(n_templates, 6 bands, n_z) of band flux / magNorm flux (linear in flux, so that zero
    flux beyond the Lyman break interpolates cleanly)."""
    w = _photon_weights()
    out = np.empty((len(GALAXY_SEDS), len(BANDS), Z_GRID.size))
    for i, name in enumerate(GALAXY_SEDS):
        for j0 in range(0, Z_GRID.size, 500):
            zs = Z_GRID[j0:j0 + 500, None]
            f = (1.0 + zs) * _galaxy_rest(WAVELENGTH_NM / (1.0 + zs), name[13:]) * igm_transmission(WAVELENGTH_NM, zs)
            out[i, :, j0:j0 + 500] = (f @ w.T).T
    out.flags.writeable = False
    return out


@functools.cache
def _blackbody_table():
    """(6 bands, n_T) of band flux / magNorm flux at z = 0."""
    out = np.ascontiguousarray((_blackbody_rest(WAVELENGTH_NM, TEFF_GRID[:, None]) @ _photon_weights().T).T)
    out.flags.writeable = False
    return out


def template_mag_offsets(template_index, redshift, band):
    """Vectorised mag - mag_norm for galaxy templates GALAXY_SEDS[template_index] at `redshift`
    (0 <= z <= 6) in `band`, from the tabulated grid (to < 3e-4 mag); +inf where no flux."""
    table = _template_table()[:, BANDS.index(check_band(band))]
    z = np.asarray(redshift, dtype=np.float64)
    pos = np.clip(z / (Z_GRID[1] - Z_GRID[0]), 0.0, Z_GRID.size - 1.000001)
    i = pos.astype(np.intp)
    t = pos - i
    k = np.asarray(template_index, dtype=np.intp)
    with np.errstate(divide="ignore"):
        return -2.5 * np.log10(table[k, i] * (1.0 - t) + table[k, i + 1] * t)


def blackbody_mag_offsets(teff, band):
    """Vectorised mag - mag_norm of blackbodies at `teff` (K, 2000-50000) in `band`, z = 0."""
    table = _blackbody_table()[BANDS.index(check_band(band))]
    x = np.log(np.asarray(teff, dtype=np.float64))
    lg = np.log(TEFF_GRID)
    pos = np.clip((x - lg[0]) / (lg[1] - lg[0]), 0.0, TEFF_GRID.size - 1.000001)
    i = pos.astype(np.intp)
    t = pos - i
    return -2.5 * np.log10(table[i] * (1.0 - t) + table[i + 1] * t)
