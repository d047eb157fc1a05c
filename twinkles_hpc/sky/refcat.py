"""The six-band astrometric and photometric reference catalogue that Level 2 calibrates against.

Made from the true stars with realistic errors, never the truth itself: positions scattered by a
Gaia-like error that grows with magnitude, magnitudes in all six bands (no band mapping: Run 1's
reference catalogue had only g, r, i and mapped u to g and z, y to i, which gave the u-band offsets)
scattered by a photometric error. Errors are keyed by (run seed, REFCAT_KIND, star id).
"""
import numpy as np

from twinkles_hpc.instrument import BANDS

REFCAT_KIND = 40
#: Faintest reference star, r band AB.
REFCAT_MAG_LIMIT = 23.0
#: Position error (mas) = floor (+) term growing with magnitude, a Gaia-DR3-like shape.
POS_ERR_FLOOR_MAS, POS_ERR_MAS_AT_20 = 2.0, 5.0
#: Magnitude error = floor (+) 0.01 mag at r = 21, doubling every 0.75 mag.
MAG_ERR_FLOOR = 0.003

REFCAT_DTYPE = np.dtype([("id", "i8"), ("ra", "f8"), ("dec", "f8"), ("pos_err_mas", "f8")]
                        + [(f"mag_{b}", "f8") for b in BANDS] + [(f"mag_err_{b}", "f8") for b in BANDS])


def position_error_mas(r):
    return np.hypot(POS_ERR_FLOOR_MAS, POS_ERR_MAS_AT_20 * 10.0 ** (0.4 * (np.asarray(r) - 20.0)))


def magnitude_error(m):
    return np.hypot(MAG_ERR_FLOOR, 0.01 * 10.0 ** (0.4 * (np.asarray(m) - 21.0)))


def make_refcat(seed, stars, mag_limit_r=REFCAT_MAG_LIMIT):
    """REFCAT_DTYPE rows for the stars brighter than `mag_limit_r`, with scattered positions and mags."""
    s = stars[stars["mag_r"] < mag_limit_r]
    out = np.zeros(len(s), REFCAT_DTYPE)
    out["id"] = s["id"]
    g = np.array([np.random.default_rng([int(seed), REFCAT_KIND, int(i)]).standard_normal(2 + len(BANDS))
                  for i in s["id"]]).reshape(len(s), 2 + len(BANDS))
    err = position_error_mas(s["mag_r"])
    out["pos_err_mas"] = err
    out["dec"] = s["dec"] + g[:, 1] * err / 3.6e6
    out["ra"] = s["ra"] + g[:, 0] * err / 3.6e6 / np.cos(np.deg2rad(s["dec"]))
    for k, b in enumerate(BANDS):
        e = magnitude_error(s[f"mag_{b}"])
        out[f"mag_err_{b}"] = e
        out[f"mag_{b}"] = s[f"mag_{b}"] + g[:, 2 + k] * e
    return out
