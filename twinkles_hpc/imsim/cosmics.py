"""Cosmic rays in a simulated eimage: straight tracks of charge through a thick sensor.

Model (docs/imsim.md), one exposure of `exptime` seconds on an nx x ny sensor of 10 um pixels:
- Number of tracks: Poisson(rate x area x exptime). The default `imsim.cosmic_ray_rate` = 0.04
  cm^-2 s^-1 (2.4 per cm^2 per minute) is an assumption: the sea-level muon flux through a horizontal
  surface is about 1 cm^-2 min^-1 (PDG Review of Particle Physics, "Cosmic rays", sec. 30.3); at
  Cerro Pachon (2.7 km) the charged-particle flux is roughly twice that, plus secondary electrons and
  radioactivity of the camera's materials. A 4k x 4k LSST sensor (16.3 cm^2) then sees ~20 tracks in a
  30 s visit.
- Geometry: the track's midpoint is uniform over the sensor, its azimuth uniform, its zenith angle
  theta (relative to the sensor normal) from the flux through a plane, dN/dcos(theta) ~ cos^3(theta)
  (intensity ~ cos^2, times the projected area), with cos(theta) >= 0.1. It crosses the whole
  SENSOR_THICKNESS_UM (100 um, deep depleted), so its length on the sensor is 10 tan(theta) pixels:
  mostly a few pixels, a tail of tens.
- Charge: dE/dx is one draw per track from a Moyal distribution (an approximation of the Landau
  distribution of a minimum-ionising particle's energy loss) with most probable value 75 e-/um and
  scale 10 e-/um (about 108 e-/um on average for silicon; the thin layer narrows it), over the 3-D path
  length 100 um / cos(theta): ~8000 e- for a vertical track.
- Diffusion: the charge is deposited at points along the path; a point at height h above the
  collecting gates spreads as a Gaussian of sigma DIFFUSION_SIGMA_UM x sqrt(h / thickness) (drift time
  ~ drift length in a uniform field), 5 um at the back surface (LSST sensors: 3-5 um), integrated over
  the pixels.

Random numbers come from numpy's PCG64 seeded by the key (run seed, visit id, STAGE_COSMIC_RAYS): the
tracks depend on the visit only, not on the rank or on how the rendering was chunked or resumed.

scipy.special is imported inside the two functions that use it: importing this module (as the visit
module and the instance-catalogue renderer do) loads no scipy.
"""
from __future__ import annotations

import math

import numpy as np

#: Pixel pitch and sensor thickness (LSST CCDs), micrometres.
PIXEL_PITCH_UM = 10.0
SENSOR_THICKNESS_UM = 100.0
#: Moyal parameters of dE/dx (electrons per micrometre of path).
DEDX_MPV = 75.0
DEDX_SCALE = 10.0
DEDX_MAX = 2000.0
#: Lateral diffusion sigma of charge made at the back surface, micrometres.
DIFFUSION_SIGMA_UM = 5.0
#: Smallest cos(zenith angle): the longest track is 10 x SENSOR_THICKNESS_UM / PIXEL_PITCH_UM pixels.
COS_THETA_MIN = 0.1
#: Points per pixel of track length at which charge is deposited (at least MIN_POINTS per track).
POINTS_PER_PIXEL = 5
MIN_POINTS = 20
_BOX = 2          # diffusion integrated over +-2 pixels around each point (4 sigma at the back surface)

#: The truth table of one eimage: one row per pixel with cosmic-ray charge (electrons, an integer).
COSMIC_RAY_DTYPE = np.dtype([("x", "i4"), ("y", "i4"), ("electrons", "f4"), ("track", "i4")])
#: One row per track: midpoint (pixels), azimuth (rad), cos(zenith angle), dE/dx (e-/um).
TRACK_DTYPE = np.dtype([("x", "f8"), ("y", "f8"), ("phi", "f8"), ("cos_theta", "f8"), ("dedx", "f8")])


def draw_tracks(rate, exptime, nx, ny, key):
    """The tracks of one exposure (TRACK_DTYPE): rate in cm^-2 s^-1, exptime in s, key a tuple of ints
    >= 0 (run seed, visit id, stage)."""
    if not (math.isfinite(rate) and rate >= 0):
        raise ValueError(f"cosmic-ray rate must be finite and >= 0 (1/cm^2/s), got {rate!r}")
    if not (math.isfinite(exptime) and exptime >= 0):
        raise ValueError(f"exptime must be finite and >= 0 (s), got {exptime!r}")
    from scipy import special

    rng = np.random.default_rng([int(k) for k in key])
    area_cm2 = nx * ny * (PIXEL_PITCH_UM * 1e-4) ** 2
    n = int(rng.poisson(rate * area_cm2 * exptime))
    t = np.zeros(n, TRACK_DTYPE)
    u = rng.random((n, 5))
    t["x"] = u[:, 0] * nx - 0.5
    t["y"] = u[:, 1] * ny - 0.5
    t["phi"] = 2 * np.pi * u[:, 2]
    c4 = COS_THETA_MIN ** 4                    # inverse CDF of p(c) ~ c^3 on [COS_THETA_MIN, 1]
    t["cos_theta"] = (c4 + u[:, 3] * (1 - c4)) ** 0.25
    # Moyal by inversion, x = loc - scale ln(2 erfcinv(u)^2): scipy.stats.moyal.ppf's expression, term for term
    q = np.clip(u[:, 4], 1e-12, 1 - 1e-12)
    t["dedx"] = np.minimum(-np.log(2 * special.erfcinv(q) ** 2) * DEDX_SCALE + DEDX_MPV, DEDX_MAX)
    return t


def deposit(tracks, nx, ny):
    """Charge of `tracks` on the nx x ny sensor: COSMIC_RAY_DTYPE rows sorted by (y, x), electrons
    rounded to integers, pixels with less than 0.5 e- dropped; `track` is the track that put the most
    charge in the pixel."""
    if len(tracks) == 0:
        return np.zeros(0, COSMIC_RAY_DTYPE)
    sin_t = np.sqrt(1 - tracks["cos_theta"] ** 2)
    length = SENSOR_THICKNESS_UM * sin_t / tracks["cos_theta"] / PIXEL_PITCH_UM      # pixels
    charge = tracks["dedx"] * SENSOR_THICKNESS_UM / tracks["cos_theta"]              # electrons
    npts = np.maximum(np.ceil(POINTS_PER_PIXEL * length).astype(np.int64), MIN_POINTS)
    tid = np.repeat(np.arange(len(tracks)), npts)
    first = np.repeat(np.cumsum(npts) - npts, npts)
    s = (np.arange(len(tid)) - first + 0.5) / npts[tid]          # 0 at the gates, 1 at the back surface
    px = tracks["x"][tid] + (s - 0.5) * length[tid] * np.cos(tracks["phi"][tid])
    py = tracks["y"][tid] + (s - 0.5) * length[tid] * np.sin(tracks["phi"][tid])
    q = charge[tid] / npts[tid]
    sig = np.maximum(DIFFUSION_SIGMA_UM / PIXEL_PITCH_UM * np.sqrt(s), 1e-3)
    off = np.arange(-_BOX, _BOX + 1)
    ix = np.rint(px).astype(np.int64)[:, None] + off            # (points, 5) pixel columns and rows
    iy = np.rint(py).astype(np.int64)[:, None] + off
    fx = _cell_fractions(ix, px, sig)
    fy = _cell_fractions(iy, py, sig)
    val = (q[:, None, None] * fy[:, :, None] * fx[:, None, :]).ravel()
    X = np.broadcast_to(ix[:, None, :], fy.shape + (2 * _BOX + 1,)).ravel()
    Y = np.broadcast_to(iy[:, :, None], fy.shape + (2 * _BOX + 1,)).ravel()
    T = np.repeat(tid, (2 * _BOX + 1) ** 2)
    on = (X >= 0) & (X < nx) & (Y >= 0) & (Y < ny) & (val > 0)
    flat, val, T = Y[on] * nx + X[on], val[on], T[on]
    pix, inv = np.unique(flat, return_inverse=True)
    e = np.rint(np.bincount(inv, weights=val, minlength=len(pix)))
    # the track with the most charge in each pixel: per (pixel, track) sums, then the largest per pixel
    pt, pinv = np.unique(inv * len(tracks) + T, return_inverse=True)
    w = np.bincount(pinv, weights=val, minlength=len(pt))
    order = np.lexsort((-w, pt // len(tracks)))
    best = order[np.r_[True, np.diff(pt[order] // len(tracks)) > 0]]
    out = np.zeros(len(pix), COSMIC_RAY_DTYPE)
    out["y"], out["x"] = np.divmod(pix, nx)
    out["electrons"], out["track"] = e, pt[best] % len(tracks)
    return out[e >= 1]


def _cell_fractions(i, p, sig):
    """Fraction of a Gaussian (centre p, sigma sig, per row) in the unit cells centred on i."""
    from scipy import special

    z = 1.0 / (np.sqrt(2.0) * sig[:, None])
    return 0.5 * (special.erf((i + 0.5 - p[:, None]) * z) - special.erf((i - 0.5 - p[:, None]) * z))


def simulate_cosmic_rays(rate, exptime, nx, ny, key):
    """(pixel table COSMIC_RAY_DTYPE, number of tracks) of one exposure; see the module docstring."""
    tracks = draw_tracks(float(rate), float(exptime), int(nx), int(ny), key)
    return deposit(tracks, int(nx), int(ny)), len(tracks)


def add_cosmic_rays(pixels, table, full_well):
    """Add the table's electrons to the float32 eimage `pixels` in place, clipping at the full well (its
    integer part, as the noise does). Returns the number of pixels newly saturated."""
    if len(table) == 0:
        return 0
    fw = float(math.floor(full_well))
    y, x = table["y"], table["x"]
    before = pixels[y, x].astype(np.float64)
    after = np.minimum(before + table["electrons"], fw)
    pixels[y, x] = after.astype(np.float32)
    return int(np.count_nonzero((before < fw) & (after >= fw)))


def cosmic_ray_mask(table, shape):
    """Boolean (ny, nx) mask of the pixels with cosmic-ray charge in `table`."""
    mask = np.zeros(shape, bool)
    mask[table["y"], table["x"]] = True
    return mask
