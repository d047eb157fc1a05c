"""Galaxies of the static sky: bulge (Sersic n=4) + disk (n=1), redshifted template SEDs.

Model (numbers and sources in docs/sky.md):
* Counts: differential r counts n(r) = n0 / (10^(-a(r-rb)) + 10^(-b(r-rb))), slope a = 0.46 bright
  (SDSS, Yasuda et al. 2001, AJ 122, 1104) turning to b = 0.27 faint, rb = 21.5, normalised to
  3.5e4 / deg^2 at r < 24: cumulative slopes 0.43 (r 18-20) and 0.30 (r 26-28), 6.2e5 / deg^2
  at r < 28, as deep-field counts (Metcalfe et al. 2001, MNRAS 323, 795).
* Redshift given r: p(z) ~ z^2 exp(-(z/z0)^1.5) (Baugh & Efstathiou 1993, MNRAS 265, 145 form),
  median 1.412 z0 = 0.3 * 4^((r - 20) / 7): 0.3 at r = 20, 1.2 at r = 27 (deep spectroscopic and
  photometric-redshift surveys; e.g. VVDS, Le Fevre et al. 2005).
* Types: early (B/T 0.6-0.95, or 1 for 40 % of them), spirals (B/T 0.05-0.5), pure disks; the early
  fraction falls from 30 % at r = 18 to 10 % at r = 26 (faint counts are star-forming galaxies).
* Sizes: hlr (semi-major-axis half-light radius, arcsec) log-normal about
  log10 hlr = 0.2 - 0.1 (r - 20) - 0.3 log10((1+z)/(1+z_med(r))), scatter 0.18 dex: ~1.6" at
  r = 20, ~0.3" at r = 27 (HST deep-field sizes; at fixed flux, farther galaxies are smaller,
  cf. Ferguson et al. 2004, ApJ 600, L107).
* Shapes: disks are thin oblate discs (intrinsic b/a 0.1-0.2) at random inclination; bulges
  q ~ N(0.75, 0.15) in [0.3, 1] (cf. Padilla & Strauss 2008, MNRAS 388, 1321); position angles
  east of north uniform, the bulge within ~5 deg of the disk.
* SEDs: bulge 'twinkles/gal_old'; disks 'gal_sbc' (early types, half the spirals), 'gal_scd' or
  'gal_starburst' (the starburst share rises with z).
A component without light has mag = mag_norm = +inf, hlr = 0, q = 1.
"""
import functools

import numpy as np

from twinkles_hpc.errors import InputError
from twinkles_hpc.instrument import BANDS
from twinkles_hpc.sky import seds
from twinkles_hpc.sky.static import GALAXY_KIND, TILE_DEG, generate_tiles, uniform_positions

_COMPONENT = ([(f"{{c}}_mag_{b}", "f8") for b in BANDS]
              + [("{c}_hlr", "f8"), ("{c}_q", "f8"), ("{c}_pa", "f8"), ("{c}_sed", "U24"), ("{c}_mag_norm", "f8")])
GALAXY_DTYPE = np.dtype([("id", "i8"), ("ra", "f8"), ("dec", "f8"), ("redshift", "f8")]
                        + [(n.format(c=c), t) for c in ("bulge", "disk") for n, t in _COMPONENT])
R_BRIGHT = 14.0
Z_RANGE = (0.01, 5.5)
COUNT_SLOPES = (0.46, 0.27)   # d log10 n / dm (differential), bright and faint
COUNT_BREAK_R = 21.5
N_LT_24 = 3.5e4               # galaxies / deg^2 with r < 24
_OLD, _SBC, _SCD, _SB = (seds.GALAXY_SEDS.index(f"twinkles/gal_{k}") for k in ("old", "sbc", "scd", "starburst"))
_SED_NAMES = np.array(seds.GALAXY_SEDS)


def _counts_shape(r):
    a, b = COUNT_SLOPES
    x = r - COUNT_BREAK_R
    return 1.0 / (10.0 ** (-a * x) + 10.0 ** (-b * x))


@functools.cache
def _cumulative(mag_limit_r):
    grid = np.linspace(R_BRIGHT, max(mag_limit_r, 24.0), 4001)
    a = _counts_shape(grid)
    cum = np.concatenate([[0.0], np.cumsum(0.5 * (a[1:] + a[:-1]) * np.diff(grid))])
    cum *= N_LT_24 / np.interp(24.0, grid, cum)
    keep = grid <= mag_limit_r
    return grid[keep], cum[keep]


def cumulative_counts(mag_limit_r):
    """Galaxies per deg^2 brighter than `mag_limit_r` in r."""
    return float(_cumulative(float(mag_limit_r))[1][-1])


def median_redshift(r):
    """Median redshift of galaxies of total r magnitude `r`."""
    return 0.3 * 4.0 ** ((np.asarray(r) - 20.0) / 7.0)


def _galaxy_tile(rng, bounds, area, mag_limit_r, density_scale):
    grid, cum = _cumulative(mag_limit_r)
    n = int(rng.poisson(cum[-1] * area * density_scale))
    g = np.zeros(n, GALAXY_DTYPE)
    g["ra"], g["dec"] = uniform_positions(rng, n, bounds)
    # Every random number is drawn for every galaxy in a fixed order, then combined.
    r = np.interp(rng.random(n) * cum[-1], cum, grid)
    z_med = median_redshift(r)
    z = np.clip(z_med / 1.412 * rng.gamma(2.0, size=n) ** (2.0 / 3.0), *Z_RANGE)
    u_type, u_bt, u_pure, u_disk_sed = rng.random((4, n))
    size_noise = rng.standard_normal(n)
    u_size, u_q0, u_cosi, u_pa = rng.random((4, n))
    bulge_q_noise, pa_noise = rng.standard_normal((2, n))

    early = u_type < np.interp(r, [18.0, 26.0], [0.30, 0.10])
    spiral = ~early & (u_type < np.interp(r, [18.0, 26.0], [0.30, 0.10]) + 0.45)
    bt = np.where(early, np.where(u_pure < 0.4, 1.0, 0.6 + 0.35 * u_bt), np.where(spiral, 0.05 + 0.45 * u_bt**2, 0.0))
    p_starburst = np.clip(0.35 + 0.25 * z, 0.0, 0.8)
    disk_sed = np.where(early | (spiral & (u_disk_sed < 0.5)), _SBC, np.where(u_disk_sed < p_starburst, _SB, _SCD))

    log_hlr = 0.2 - 0.1 * (r - 20.0) - 0.3 * np.log10((1.0 + z) / (1.0 + z_med)) + 0.18 * size_noise
    disk_hlr = np.where(early, 10.0 ** (log_hlr - 0.15) * (1.5 + u_size), 10.0 ** log_hlr)
    bulge_hlr = np.where(early, 10.0 ** (log_hlr - 0.15), disk_hlr * (0.15 + 0.35 * u_size))
    q0 = 0.1 + 0.1 * u_q0
    disk_q = np.sqrt(u_cosi**2 + q0**2 * (1.0 - u_cosi**2))
    bulge_q = np.clip(0.75 + 0.15 * bulge_q_noise, 0.3, 1.0)
    disk_pa = 180.0 * u_pa
    bulge_pa = (disk_pa + 5.0 * pa_noise) % 180.0

    g["redshift"] = z
    with np.errstate(divide="ignore"):
        comp_r = {"bulge": r - 2.5 * np.log10(bt), "disk": r - 2.5 * np.log10(1.0 - bt)}
    for c, sed, hlr, q, pa in (("bulge", np.full(n, _OLD), bulge_hlr, bulge_q, bulge_pa),
                               ("disk", disk_sed, disk_hlr, disk_q, disk_pa)):
        lit = np.isfinite(comp_r[c])
        g[f"{c}_sed"] = _SED_NAMES[sed]
        g[f"{c}_mag_norm"] = comp_r[c] - seds.template_mag_offsets(sed, z, "r")
        for b in BANDS:
            g[f"{c}_mag_{b}"] = g[f"{c}_mag_norm"] + seds.template_mag_offsets(sed, z, b)
        g[f"{c}_hlr"] = np.where(lit, np.clip(hlr, 0.02, 60.0), 0.0)
        g[f"{c}_q"] = np.where(lit, q, 1.0)
        g[f"{c}_pa"] = pa
    return g


def make_galaxies(seed, ra0, dec0, radius_deg, tiles=None, mag_limit_r=28.0, density_scale=1.0, *, tile_deg=TILE_DEG):
    """Galaxies within `radius_deg` of (ra0, dec0) (degrees) with total r <= mag_limit_r, as a
    GALAXY_DTYPE array sorted by id. Per component: AB mags, hlr = semi-major-axis half-light
    radius (arcsec), q = b/a, pa = major-axis position angle (deg east of north), PhoSim SED
    name and magNorm (seds module)."""
    if not R_BRIGHT < mag_limit_r <= 30.0:
        raise InputError("sky", "galaxy_mag_limit_r", f"{R_BRIGHT} < mag_limit_r <= 30", mag_limit_r)
    if not 0.0 <= density_scale <= 100.0:
        raise InputError("sky", "galaxy_density_scale", "0 <= density_scale <= 100", density_scale)
    per_tile = functools.partial(_galaxy_tile, mag_limit_r=float(mag_limit_r), density_scale=float(density_scale))
    return generate_tiles(GALAXY_KIND, seed, ra0, dec0, radius_deg, tiles, per_tile, GALAXY_DTYPE, tile_deg)
