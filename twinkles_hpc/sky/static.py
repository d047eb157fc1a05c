"""The static sky: a fixed tiling of the sphere, keyed random numbers, and build_static_sky.

Tiles are cells of an equal-area-ish "igloo" grid fixed on the sphere (independent of the field
centre and of the radius): declination rings of height `tile_deg`, each cut into
round(360 cos(dec_mid) / tile_deg) equal RA cells. Tile ids count cells ring by ring from the
south pole (ring 0) eastward from RA = 0. Objects of one tile come from
np.random.default_rng([seed, kind_code, tile_id]) only, so any partition of the tiles over
processes gives the same sky; objects outside the radius are dropped after generation.

Object ids: id = kind_code * 10**15 + tile_id * 10**6 + index (index < 10**6 within the tile;
tile_id < 10**9 for tile_deg >= 0.01), unique, positive int64, increasing in (tile, index).
"""
import functools

import numpy as np

from twinkles_hpc.errors import InputError

TILE_DEG = 0.05
STAR_KIND = 1
GALAXY_KIND = 2
ID_KIND_FACTOR = 10**15
ID_TILE_FACTOR = 10**6


@functools.cache
def _rings(tile_deg):
    """(dec_edges[n_ring + 1], n_ra[n_ring], first_id[n_ring + 1]) of the grid, degrees."""
    n_ring = int(round(180.0 / tile_deg))
    dec_edges = np.linspace(-90.0, 90.0, n_ring + 1)
    mid = np.radians(0.5 * (dec_edges[:-1] + dec_edges[1:]))
    n_ra = np.maximum(1, np.round(360.0 * np.cos(mid) / tile_deg)).astype(np.int64)
    return dec_edges, n_ra, np.concatenate([[0], np.cumsum(n_ra)])


def _check_tile_deg(tile_deg):
    n = 180.0 / tile_deg if np.isfinite(tile_deg) and tile_deg > 0 else 0.0
    if not (0.01 <= tile_deg <= 1.0) or abs(n - round(n)) > 1e-6:
        raise InputError("sky", "tile_deg", "0.01 <= tile_deg <= 1 deg dividing 180 deg exactly", tile_deg)
    return float(tile_deg)


def check_field(ra0, dec0, radius_deg, source="sky"):
    """Validate a field centre (deg) and radius (0 < radius <= 10 deg)."""
    if not np.isfinite(ra0):
        raise InputError(source, "ra0", "a finite RA in degrees", ra0)
    if not -90.0 <= dec0 <= 90.0:
        raise InputError(source, "dec0", "-90 <= dec0 <= 90 deg", dec0)
    if not 0.0 < radius_deg <= 10.0:
        raise InputError(source, "radius_deg", "0 < radius_deg <= 10 deg", radius_deg)
    return float(ra0) % 360.0, float(dec0), float(radius_deg)


def tile_bounds(tile_ids, tile_deg=TILE_DEG):
    """(ra_lo, ra_hi, dec_lo, dec_hi) in degrees of each tile id (arrays)."""
    dec_edges, n_ra, first = _rings(_check_tile_deg(tile_deg))
    t = np.asarray(tile_ids, dtype=np.int64)
    if t.size and (t.min() < 0 or t.max() >= first[-1]):
        raise InputError("sky", "tiles", f"tile ids in [0, {first[-1]}) for tile_deg={tile_deg}", t.tolist()[:5])
    ring = np.searchsorted(first, t, side="right") - 1
    width = 360.0 / n_ra[ring]
    j = t - first[ring]
    return j * width, (j + 1) * width, dec_edges[ring], dec_edges[ring + 1]


def tile_of(ra, dec, tile_deg=TILE_DEG):
    """Tile id containing each (ra, dec), degrees."""
    dec_edges, n_ra, first = _rings(_check_tile_deg(tile_deg))
    ring = np.clip(np.searchsorted(dec_edges, np.asarray(dec, dtype=np.float64), side="right") - 1, 0, n_ra.size - 1)
    j = np.floor((np.asarray(ra, dtype=np.float64) % 360.0) / (360.0 / n_ra[ring])).astype(np.int64)
    return first[ring] + np.minimum(j, n_ra[ring] - 1)


def tile_area_deg2(tile_ids, tile_deg=TILE_DEG):
    """Exact solid angle of each tile, deg^2."""
    ra_lo, ra_hi, dec_lo, dec_hi = tile_bounds(tile_ids, tile_deg)
    return np.radians(ra_hi - ra_lo) * (np.sin(np.radians(dec_hi)) - np.sin(np.radians(dec_lo))) * np.degrees(1.0) ** 2


def angular_distance_deg(ra, dec, ra0, dec0):
    """Great-circle distance (Vincenty formula, stable at all separations), degrees."""
    ra, dec, ra0, dec0 = (np.radians(np.asarray(x, dtype=np.float64)) for x in (ra, dec, ra0, dec0))
    dra = ra - ra0
    sd, cd, sd0, cd0 = np.sin(dec), np.cos(dec), np.sin(dec0), np.cos(dec0)
    num = np.hypot(cd * np.sin(dra), cd0 * sd - sd0 * cd * np.cos(dra))
    return np.degrees(np.arctan2(num, sd0 * sd + cd0 * cd * np.cos(dra)))


def _cell_min_distance(ra0, dec0, ra_lo, ra_hi, dec_lo, dec_hi):
    """Exact smallest distance (deg) from (ra0, dec0) to each RA/Dec cell.

    Inside the cell's RA span the nearest point is on the centre's meridian; otherwise it is on
    the nearer bounding meridian (distance grows with |dRA| at fixed Dec), where the distance
    along the meridian is extremal at Dec = atan2(sin dec0, cos dec0 cos dRA) or at an end.
    """
    width = ra_hi - ra_lo
    off = (ra0 - ra_lo) % 360.0
    inside = off < width
    dra = np.minimum(np.abs((ra_lo - ra0 + 180.0) % 360.0 - 180.0), np.abs((ra_hi - ra0 + 180.0) % 360.0 - 180.0))
    phi = np.degrees(np.arctan2(np.sin(np.radians(dec0)), np.cos(np.radians(dec0)) * np.cos(np.radians(dra))))
    cand = np.stack([dec_lo, dec_hi, np.clip(phi, dec_lo, dec_hi)])
    edge = angular_distance_deg(ra0 + dra, cand, ra0, dec0).min(axis=0)
    along = np.maximum(0.0, np.maximum(dec_lo - dec0, dec0 - dec_hi))
    return np.where(inside, along, edge)


def sky_tiles(ra0, dec0, radius_deg, tile_deg=TILE_DEG):
    """Sorted list of the tile ids whose cells come within `radius_deg` of (ra0, dec0), degrees."""
    ra0, dec0, radius_deg = check_field(ra0, dec0, radius_deg)
    dec_edges, n_ra, first = _rings(_check_tile_deg(tile_deg))
    rings = np.flatnonzero((dec_edges[1:] >= dec0 - radius_deg) & (dec_edges[:-1] <= dec0 + radius_deg))
    ids = np.concatenate([np.arange(first[r], first[r + 1]) for r in rings])
    dist = _cell_min_distance(ra0, dec0, *tile_bounds(ids, tile_deg))
    return ids[dist <= radius_deg + 1e-9].tolist()


def uniform_positions(rng, n, bounds):
    """n points uniform on the sphere within one cell `bounds` = (ra_lo, ra_hi, dec_lo, dec_hi)."""
    ra_lo, ra_hi, dec_lo, dec_hi = (float(b) for b in bounds)
    u = rng.random((2, n))
    s_lo, s_hi = np.sin(np.radians(dec_lo)), np.sin(np.radians(dec_hi))
    ra = ra_lo + u[0] * (ra_hi - ra_lo)
    dec = np.degrees(np.arcsin(np.clip(s_lo + u[1] * (s_hi - s_lo), -1.0, 1.0)))
    return ra, dec


def check_seed(seed, source="sky"):
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(source, "seed", "a non-negative integer", seed)
    return int(seed)


def generate_tiles(kind_code, seed, ra0, dec0, radius_deg, tiles, per_tile, dtype, tile_deg=TILE_DEG):
    """Run `per_tile(rng, bounds, area_deg2) -> structured array` (ra, dec filled, id not) over the
    tiles (None: all of sky_tiles), set ids, drop objects beyond the radius, sort by id."""
    seed = check_seed(seed)
    ra0, dec0, radius_deg = check_field(ra0, dec0, radius_deg)
    if tiles is None:
        tiles = sky_tiles(ra0, dec0, radius_deg, tile_deg)
    arr = np.asarray(list(tiles) if not isinstance(tiles, np.ndarray) else tiles)
    if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iu"):
        raise InputError("sky", "tiles", "a list of integer tile ids", tiles)
    tiles = np.unique(arr.astype(np.int64))
    bounds = np.stack(tile_bounds(tiles, tile_deg), axis=1) if tiles.size else np.empty((0, 4))
    areas = tile_area_deg2(tiles, tile_deg)
    parts = [np.empty(0, dtype)]
    for tile, bnd, area in zip(tiles.tolist(), bounds, areas):
        rows = per_tile(np.random.default_rng([seed, kind_code, tile]), bnd, area)
        if rows.size >= ID_TILE_FACTOR:
            raise InputError("sky", "density_scale", f"fewer than {ID_TILE_FACTOR} objects per tile", rows.size)
        rows["id"] = kind_code * ID_KIND_FACTOR + tile * ID_TILE_FACTOR + np.arange(rows.size)
        parts.append(rows[angular_distance_deg(rows["ra"], rows["dec"], ra0, dec0) <= radius_deg])
    return np.concatenate(parts)   # tiles ascending, index ascending: already sorted by id


def build_static_sky(seed, ra0, dec0, radius_deg=0.3, *, star_mag_limit_r=26.5, galaxy_mag_limit_r=28.0,
                     star_density_scale=1.0, galaxy_density_scale=1.0, tiles=None):
    """Stars and galaxies within `radius_deg` of (ra0, dec0) (degrees): dict(stars=STAR_DTYPE array,
    galaxies=GALAXY_DTYPE array), both sorted by id; identical for any partition of `tiles`."""
    from twinkles_hpc.sky.galaxies import make_galaxies
    from twinkles_hpc.sky.stars import make_stars
    return dict(
        stars=make_stars(seed, ra0, dec0, radius_deg, tiles=tiles, mag_limit_r=star_mag_limit_r,
                         density_scale=star_density_scale),
        galaxies=make_galaxies(seed, ra0, dec0, radius_deg, tiles=tiles, mag_limit_r=galaxy_mag_limit_r,
                               density_scale=galaxy_density_scale))
