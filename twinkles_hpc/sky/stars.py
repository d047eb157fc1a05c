"""Stars of the static sky at high Galactic latitude (ECDFS, b ~ -54 deg), as blackbodies.

Number counts: differential counts A(r) (stars / mag / deg^2) = disk + halo, each a smoothly
broken power law, following the two-component structure of Bahcall & Soneira (1980, ApJS 44,
73): the disk (thin + thick) dominates to r ~ 19 and turns over as its scale heights are passed;
the halo rises with slope ~0.25 and flattens beyond r ~ 22 (a power-law halo density,
cf. Juric et al. 2008, ApJ 673, 864). Normalised to ~1.5e3 stars/deg^2 at r < 22 and ~4.7e3 at
r < 26.5 (about 240 per LSST sensor): an order-of-magnitude model, not a fit to ECDFS counts;
measured figures in docs/sky.md.
Temperatures: halo stars are turn-off stars near 6000 K; disk stars get cooler with magnitude
(faint disk stars at high latitude are nearby M dwarfs); 3 % are hot (white dwarfs, BHB, A stars).
"""
import functools

import numpy as np

from twinkles_hpc.errors import InputError
from twinkles_hpc.instrument import BANDS
from twinkles_hpc.sky import seds
from twinkles_hpc.sky.static import STAR_KIND, TILE_DEG, generate_tiles, uniform_positions

STAR_DTYPE = np.dtype([("id", "i8"), ("ra", "f8"), ("dec", "f8"), ("teff", "f4"), ("sed", "U24"),
                       ("mag_norm", "f8")] + [(f"mag_{b}", "f8") for b in BANDS])
R_BRIGHT = 10.0            # brightest star generated, r mag
TEFF_RANGE = (3000.0, 20000.0)   # K; blackbody g-r from +1.57 to -0.32
HOT_FRACTION = 0.03


def _broken_power_law(r, log_a0, slope_bright, slope_faint, r_break):
    """10^(log_a0 + s_b (r - r_break)) / (1 + 10^((s_b - s_f)(r - r_break))): slope s_b bright, s_f faint."""
    x = r - r_break
    return 10.0 ** (log_a0 + slope_bright * x) / (1.0 + 10.0 ** ((slope_bright - slope_faint) * x))


def differential_counts(r):
    """(disk, halo) stars / mag / deg^2 at r magnitude `r`."""
    disk = _broken_power_law(r, 2.50, 0.30, -0.05, 19.5)
    halo = _broken_power_law(r, 2.85, 0.25, 0.02, 22.5)
    return disk, halo


@functools.cache
def _cumulative(mag_limit_r):
    grid = np.linspace(R_BRIGHT, mag_limit_r, 2001)
    a = sum(differential_counts(grid))
    cum = np.concatenate([[0.0], np.cumsum(0.5 * (a[1:] + a[:-1]) * np.diff(grid))])
    return grid, cum


def cumulative_counts(mag_limit_r):
    """Stars per deg^2 brighter than `mag_limit_r` in r."""
    return float(_cumulative(float(mag_limit_r))[1][-1])


def _teff(r, u_comp, u_hot, normal, u_hotT):
    """Temperatures (integer K) from the magnitude and pre-drawn random numbers."""
    disk, halo = differential_counts(r)
    is_halo = u_comp < halo / (disk + halo)
    # Disk: log T from ~5200 K at r <= 16 down to ~3500 K at r >= 24 (M dwarfs dominate faint).
    mu_disk = np.interp(r, [16.0, 24.0], np.log10([5200.0, 3500.0]))
    log_t = np.where(is_halo, np.log10(6000.0) + 0.035 * normal, mu_disk + 0.06 * normal)
    hot = np.log10(8000.0) + u_hotT * np.log10(TEFF_RANGE[1] / 8000.0)
    log_t = np.where(u_hot < HOT_FRACTION, hot, log_t)
    return np.rint(np.clip(10.0 ** log_t, *TEFF_RANGE))


def _star_tile(rng, bounds, area, mag_limit_r, density_scale):
    grid, cum = _cumulative(mag_limit_r)
    n = int(rng.poisson(cum[-1] * area * density_scale))
    out = np.zeros(n, STAR_DTYPE)
    out["ra"], out["dec"] = uniform_positions(rng, n, bounds)
    # Draw every random number for every star in a fixed order, then combine: no branching on draws.
    r = np.interp(rng.random(n) * cum[-1], cum, grid)
    teff = _teff(r, rng.random(n), rng.random(n), rng.standard_normal(n), rng.random(n))
    out["teff"] = teff
    out["sed"] = np.char.add(np.char.add("twinkles/bb_", teff.astype(np.int64).astype("U6")), "K")
    out["mag_norm"] = r - seds.blackbody_mag_offsets(teff, "r")
    for b in BANDS:
        out[f"mag_{b}"] = out["mag_norm"] + seds.blackbody_mag_offsets(teff, b)
    return out


def make_stars(seed, ra0, dec0, radius_deg, tiles=None, mag_limit_r=26.5, density_scale=1.0, *, tile_deg=TILE_DEG):
    """Stars within `radius_deg` of (ra0, dec0) (degrees), r <= mag_limit_r, as a STAR_DTYPE array
    sorted by id. sed = 'twinkles/bb_<teff>K'; mag_norm follows PhoSim (seds module); mag_<b> are AB."""
    if not R_BRIGHT < mag_limit_r <= 30.0:
        raise InputError("sky", "star_mag_limit_r", f"{R_BRIGHT} < mag_limit_r <= 30", mag_limit_r)
    if not 0.0 <= density_scale <= 100.0:
        raise InputError("sky", "star_density_scale", "0 <= density_scale <= 100", density_scale)
    per_tile = functools.partial(_star_tile, mag_limit_r=float(mag_limit_r), density_scale=float(density_scale))
    return generate_tiles(STAR_KIND, seed, ra0, dec0, radius_deg, tiles, per_tile,
                          STAR_DTYPE, tile_deg)
