"""The SN Ia population: rates, SALT2-like parameters, hosts and hostless twins (docs/supernovae.md).

Per sky tile (the static sky's grid, static.py), with rng = default_rng([seed, SN_KIND, tile_id]):
* count ~ Poisson(rate_boost * N), N = T * Omega_tile * int_0^z_max R(z) / (1+z) dV/dz/dOmega dz,
  R the Dilday et al. 2010 rate (sn_rate), 1/(1+z) the time dilation of the rate, V the comoving
  volume of the cosmology, T the observer-frame span of t0 in years;
* z from the same integrand, t0 uniform over [mjd_start - T0_MARGIN_DAYS[0], mjd_end +
  T0_MARGIN_DAYS[1]] (SNe that peak up to 60 d before the start are still on the tail in the
  first visits, and those peaking up to 20 d after the end are rising in the last ones);
* x1 ~ N(0, 1), c ~ N(0, 0.1), M_B ~ N(-19.3, 0.15) (SCIENCE.md section 3, Twinkles Run 1);
* a host among the tile's galaxies (host rule in _choose_hosts), whose redshift the SN takes, and
  a position drawn from the host's bulge or disk Sersic profile (_offsets). Only SNe whose
  provisional uniform position in the tile lies inside the field get a host: the catalogue holds
  only the galaxies inside the field, so hosting all of an edge tile's SNe would crowd them
  there. The others (dropped by the radius cut) and the SNe of tiles without galaxies keep the
  drawn z and the uniform position, hostless;
* optionally one hostless twin per SN (Run 3): the same z, t0, x1, c, M_B at a uniform position in
  the tile, host_id -1, twin_of the original's id.
Every random number of a tile is drawn for every SN in a fixed order before any is used, so
hostless_twins, the galaxy catalogue and the radius change no SN's t0, x1, c or M_B (the
catalogue sets hosts, hence redshifts and positions). Ids follow
static.py: SN_KIND * 10**15 + tile_id * 10**6 + index (twins after the hosted SNe); SNe beyond the
radius are dropped after generation (a twin may name an original outside the radius).
"""
import functools

import numpy as np
from scipy.special import gammainc, gammaincinv

from twinkles_hpc.errors import InputError
from twinkles_hpc.sky.snmodel import DEFAULT_COSMOLOGY
from twinkles_hpc.sky.static import (ID_KIND_FACTOR, ID_TILE_FACTOR, TILE_DEG, angular_distance_deg, check_field,
                                     generate_tiles, tile_of, uniform_positions)

#: Kind code in ids and random keys (static.py uses 1 for stars, 2 for galaxies).
SN_KIND = 3
SN_DTYPE = np.dtype([
    ("id", "i8"), ("ra", "f8"), ("dec", "f8"),              # degrees
    ("redshift", "f8"), ("t0", "f8"),                       # t0: MJD of rest-frame B maximum
    ("x1", "f8"), ("c", "f8"), ("M_B", "f8"),               # M_B: peak absolute AB mag, rest-frame B
    ("mu", "f8"),                                           # distance modulus, mag
    ("host_id", "i8"),                                      # -1 for hostless
    ("twin_of", "i8"),                                      # id of the hosted SN a twin copies, else -1
    ("host_offset_arcsec", "f8")])                          # from the host centre; NaN if hostless

#: Dilday et al. 2010 (ApJ 713, 1026) SDSS-II rate: r_V = 2.69e-5 (1+z)^1.5 h70^3 Mpc^-3 yr^-1
#: (rest-frame years).
DILDAY_RATE = 2.69e-5
DILDAY_INDEX = 1.5
#: Multiplies the rate so that ~100 SNe Ia have SNR > 5 in each sensor image, the SNR taken from each
#: Run 1 visit's own fiveSigmaDepth (docs/supernovae.md: 0.37 per image per unit boost with hostless
#: twins, so 270 gives ~100). Twinkles Run 3 used 100.
DEFAULT_RATE_BOOST = 270.0
X1_MEAN_STD = (0.0, 1.0)
C_MEAN_STD = (0.0, 0.1)
M_B_MEAN_STD = (-19.3, 0.15)
T0_MARGIN_DAYS = (60.0, 20.0)
Z_MAX_LIMIT = 1.5
Z_FLOOR = 1e-4
#: Host rule: among the HOST_CANDIDATES galaxies of the tile nearest in redshift to the drawn z,
#: one is picked with probability proportional to its i-band luminosity (a stellar-mass proxy).
HOST_CANDIDATES = 20
#: Sersic profiles are truncated at this many half-light radii (elliptical radius).
MAX_HLR = 8.0
_GALAXY_FIELDS = ("id", "ra", "dec", "redshift", "bulge_mag_r", "disk_mag_r", "bulge_mag_i", "disk_mag_i",
                  "bulge_hlr", "disk_hlr", "bulge_q", "disk_q", "bulge_pa", "disk_pa")


def sn_rate(z, h70=1.0):
    """Volumetric SN Ia rate, per comoving Mpc^3 per rest-frame year (Dilday et al. 2010 power law).

    The published rate is in h70^3 Mpc^-3 yr^-1; `h70` = H0 / (70 km/s/Mpc) converts to physical
    Mpc^-3 (counts per volume of a cosmology with that H0 are then independent of h).
    """
    return DILDAY_RATE * (1.0 + np.asarray(z, dtype=np.float64)) ** DILDAY_INDEX * float(h70) ** 3


def _z_cdf(z_max, cosmology):
    """(z grid, cumulative SNe per steradian per observer year) up to z_max."""
    z = np.linspace(0.0, z_max, 2001)
    h70 = cosmology.H0.value / 70.0
    dens = sn_rate(z, h70) / (1.0 + z) * cosmology.differential_comoving_volume(z).value   # Mpc^3 / sr
    cum = np.concatenate([[0.0], np.cumsum(0.5 * (dens[1:] + dens[:-1]) * np.diff(z))])
    return z, cum


def sn_counts_per_deg2_per_year(z_max=1.2, cosmology=None):
    """SNe Ia exploding per deg^2 per observer-frame year at z <= z_max (no boost)."""
    z, cum = _z_cdf(float(z_max), DEFAULT_COSMOLOGY if cosmology is None else cosmology)
    return float(cum[-1]) * (np.pi / 180.0) ** 2


def _sersic_b(n):
    """b_n such that the Sersic profile's half-light radius is its scale radius (exact)."""
    return gammaincinv(2.0 * n, 0.5)


def _offsets(u_rad, u_phi, n, hlr, q, pa_deg):
    """(east, north) offsets in arcsec drawn from Sersic profiles of index `n`, semi-major half-light
    radius `hlr` (arcsec), axis ratio `q`, major-axis position angle `pa_deg` east of north,
    truncated at MAX_HLR * hlr: the elliptical radius R has b_n (R / hlr)^(1/n) ~ Gamma(2n)."""
    b = _sersic_b(n)
    x = gammaincinv(2.0 * n, u_rad * gammainc(2.0 * n, b * MAX_HLR ** (1.0 / n)))
    r = hlr * (x / b) ** n
    phi = 2.0 * np.pi * u_phi
    major, minor = r * np.cos(phi), r * q * np.sin(phi)
    pa = np.radians(pa_deg)
    return major * np.sin(pa) + minor * np.cos(pa), major * np.cos(pa) - minor * np.sin(pa)


def _choose_hosts(z_sn, u_host, gz, glum):
    """Index into the tile's candidate galaxies (sorted by redshift `gz`, i-band luminosity proxy
    `glum`) of each SN's host: among the HOST_CANDIDATES nearest in redshift, probability
    proportional to luminosity."""
    k = min(HOST_CANDIDATES, gz.size)
    j = np.searchsorted(gz, z_sn)
    win = j[:, None] + np.arange(-k, k)[None, :]
    valid = (win >= 0) & (win < gz.size)
    win = np.clip(win, 0, gz.size - 1)
    dist = np.where(valid, np.abs(gz[win] - z_sn[:, None]), np.inf)
    near = np.take_along_axis(win, np.argsort(dist, axis=1, kind="stable")[:, :k], axis=1)
    cw = np.cumsum(glum[near], axis=1)
    pick = np.minimum((cw < u_host[:, None] * cw[:, -1:]).sum(axis=1), k - 1)
    return near[np.arange(z_sn.size), pick]


def _tile_galaxies(galaxies, z_max, cosmology, tile_deg):
    """{tile_id: (redshift-sorted galaxy rows with 0 < z <= z_max, their luminosity proxy)}."""
    if galaxies is None or galaxies.size == 0:
        return {}
    g = galaxies[(galaxies["redshift"] > 0.0) & (galaxies["redshift"] <= z_max)]
    g = g[np.lexsort((g["id"], g["redshift"], tile_of(g["ra"], g["dec"], tile_deg)))]
    tiles = tile_of(g["ra"], g["dec"], tile_deg)
    mu = np.asarray(cosmology.distmod(g["redshift"]).value)
    with np.errstate(over="ignore"):
        lum = 10.0 ** (-0.4 * (g["bulge_mag_i"] - mu)) + 10.0 ** (-0.4 * (g["disk_mag_i"] - mu))
    ids, start = np.unique(tiles, return_index=True)
    stop = np.append(start[1:], tiles.size)
    return {int(t): (g[a:b], lum[a:b]) for t, a, b in zip(ids, start, stop)}


def _sn_tile(rng, bounds, area, *, per_deg2, z_grid, z_cum, t0_range, hosts_by_tile, twins, cosmology, tile_deg,
             field):
    tile = int(tile_of(0.5 * (bounds[0] + bounds[1]), 0.5 * (bounds[2] + bounds[3]), tile_deg))
    n = int(rng.poisson(per_deg2 * area))
    # Every random number is drawn for every SN in a fixed order, then used.
    z = np.maximum(np.interp(rng.random(n) * z_cum[-1], z_cum, z_grid), Z_FLOOR)
    t0 = t0_range[0] + rng.random(n) * (t0_range[1] - t0_range[0])
    x1_n, c_n, mb_n = rng.standard_normal((3, n))
    u_host, u_comp, u_rad, u_phi = rng.random((4, n))
    ra_free, dec_free = uniform_positions(rng, n, bounds)
    ra_twin, dec_twin = uniform_positions(rng, n, bounds)

    sn = np.zeros(2 * n if twins else n, SN_DTYPE)
    hosted = sn[:n]
    hosted["x1"] = X1_MEAN_STD[0] + X1_MEAN_STD[1] * x1_n
    hosted["c"] = C_MEAN_STD[0] + C_MEAN_STD[1] * c_n
    hosted["M_B"] = M_B_MEAN_STD[0] + M_B_MEAN_STD[1] * mb_n
    hosted["t0"] = t0
    hosted["twin_of"] = -1
    hosted["redshift"], hosted["ra"], hosted["dec"] = z, ra_free, dec_free
    hosted["host_id"], hosted["host_offset_arcsec"] = -1, np.nan
    gal, lum = hosts_by_tile.get(tile, (None, None))
    # Only SNe whose uniform position falls inside the field get a host: the catalogue holds the
    # tile's galaxies inside the field only, and hosting all the tile's SNe there would crowd them.
    inside = angular_distance_deg(ra_free, dec_free, field[0], field[1]) <= field[2]
    if gal is not None and np.any(inside):
        sel = np.flatnonzero(inside)
        h = gal[_choose_hosts(z[sel], u_host[sel], gal["redshift"], lum)]
        with np.errstate(over="ignore"):
            f_bulge = 10.0 ** (-0.4 * h["bulge_mag_r"])
            bulge = u_comp[sel] * (f_bulge + 10.0 ** (-0.4 * h["disk_mag_r"])) < f_bulge
        hlr, q, pa = (np.where(bulge, h[f"bulge_{col}"], h[f"disk_{col}"]) for col in ("hlr", "q", "pa"))
        east, north = _offsets(u_rad[sel], u_phi[sel], np.where(bulge, 4.0, 1.0), hlr, q, pa)
        hosted["dec"][sel] = h["dec"] + north / 3600.0
        hosted["ra"][sel] = (h["ra"] + east / (3600.0 * np.cos(np.radians(h["dec"])))) % 360.0
        hosted["redshift"][sel], hosted["host_id"][sel] = h["redshift"], h["id"]
        hosted["host_offset_arcsec"][sel] = np.hypot(east, north)
    hosted["mu"] = cosmology.distmod(hosted["redshift"]).value if n else 0.0
    if twins:
        twin = sn[n:]
        for f in ("redshift", "t0", "x1", "c", "M_B", "mu"):
            twin[f] = hosted[f]
        twin["ra"], twin["dec"] = ra_twin, dec_twin
        twin["host_id"], twin["host_offset_arcsec"] = -1, np.nan
        twin["twin_of"] = SN_KIND * ID_KIND_FACTOR + tile * ID_TILE_FACTOR + np.arange(n)
    return sn


def make_supernovae(seed, galaxies, ra0, dec0, radius_deg, mjd_start, mjd_end, *, z_max=1.2,
                    rate_boost=DEFAULT_RATE_BOOST, hostless_twins=True, tiles=None, cosmology=None,
                    tile_deg=TILE_DEG):
    """SNe Ia within `radius_deg` of (ra0, dec0) (degrees) peaking over [mjd_start - 60, mjd_end + 20]
    (MJD), hosted by `galaxies` (GALAXY_DTYPE, e.g. from build_static_sky; None: all hostless), as an
    SN_DTYPE array sorted by id. The union over any partition of `tiles` equals the whole, bit for bit,
    given the same galaxy catalogue (each tile uses only its own galaxies)."""
    if not 0.0 < z_max <= Z_MAX_LIMIT:
        raise InputError("supernovae", "z_max", f"0 < z_max <= {Z_MAX_LIMIT}", z_max)
    if not (np.isfinite(rate_boost) and 0.0 <= rate_boost <= 1e5):
        raise InputError("supernovae", "rate_boost", "0 <= rate_boost <= 1e5", rate_boost)
    if not (np.isfinite(mjd_start) and np.isfinite(mjd_end) and mjd_end >= mjd_start):
        raise InputError("supernovae", "mjd_start/mjd_end", "finite MJDs with mjd_end >= mjd_start",
                         (mjd_start, mjd_end))
    if galaxies is not None and (galaxies.dtype.names is None or not set(_GALAXY_FIELDS) <= set(galaxies.dtype.names)):
        raise InputError("supernovae", "galaxies", f"a structured array with fields {', '.join(_GALAXY_FIELDS)}",
                         galaxies.dtype.names)
    cosmology = DEFAULT_COSMOLOGY if cosmology is None else cosmology
    z_grid, z_cum = _z_cdf(float(z_max), cosmology)
    t0_range = (float(mjd_start) - T0_MARGIN_DAYS[0], float(mjd_end) + T0_MARGIN_DAYS[1])
    years = (t0_range[1] - t0_range[0]) / 365.25
    per_deg2 = rate_boost * years * z_cum[-1] * (np.pi / 180.0) ** 2
    per_tile = functools.partial(
        _sn_tile, per_deg2=per_deg2, z_grid=z_grid, z_cum=z_cum, t0_range=t0_range,
        hosts_by_tile=_tile_galaxies(galaxies, z_max, cosmology, tile_deg), twins=bool(hostless_twins),
        cosmology=cosmology, tile_deg=tile_deg, field=check_field(ra0, dec0, radius_deg, source="supernovae"))
    return generate_tiles(SN_KIND, seed, ra0, dec0, radius_deg, tiles, per_tile, SN_DTYPE, tile_deg)
