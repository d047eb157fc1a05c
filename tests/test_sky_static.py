"""The static sky: band passes, SEDs, star and galaxy catalogues, keyed reproducibility."""
import time

import numpy as np
import pytest

from twinkles_hpc.errors import InputError
from twinkles_hpc.instrument import BANDS, FIELD_DEC, FIELD_RA, ZEROPOINT
from twinkles_hpc.sky import seds
from twinkles_hpc.sky.galaxies import GALAXY_DTYPE, make_galaxies
from twinkles_hpc.sky.static import (angular_distance_deg, build_static_sky, sky_tiles, tile_area_deg2,
                                     tile_of)
from twinkles_hpc.sky.stars import STAR_DTYPE, make_stars

SENSOR_DEG2 = 13.3 * 13.6 / 3600.0
RADIUS = 0.1
AREA = np.pi * RADIUS**2    # flat-sky area is exact to 1e-6 here


@pytest.fixture(scope="module")
def sky():
    return build_static_sky(7, FIELD_RA, FIELD_DEC, RADIUS)


def total_mag(g, band):
    with np.errstate(divide="ignore"):
        return -2.5 * np.log10(10 ** (-0.4 * g[f"bulge_mag_{band}"]) + 10 ** (-0.4 * g[f"disk_mag_{band}"]))


def colour(sed, a, b, z=0.0):
    return seds.sed_magnitude(sed, 20.0, z, a) - seds.sed_magnitude(sed, 20.0, z, b)


# --- band passes and SEDs ------------------------------------------------------------------------
def test_bandpasses_sane_and_ordered():
    leff = []
    for band in BANDS:
        lam, t = seds.bandpass(band)
        assert lam.shape == t.shape and np.all(np.diff(lam) > 0)
        assert np.all(t >= 0) and np.all(t <= 1) and t.max() > 0.1
        lo, hi = seds.FILTER_EDGES_NM[band]
        half = lam[t >= 0.5 * t.max()]
        assert lo - 5 <= half[0] and half[-1] <= hi + 5 and half[-1] - half[0] > 0.6 * (hi - lo)
        far = (lam < lo - 40) | (lam > hi + 40)
        assert t[far].max() < 2e-3 * t.max()
        assert abs(seds.zero_point(band) - ZEROPOINT[band]) < 0.02
        leff.append(seds.effective_wavelength(band))
    assert np.all(np.diff(leff) > 50)
    assert np.allclose(leff, [368, 482, 622, 754, 869, 971], atol=10)
    with pytest.raises(InputError):
        seds.bandpass("q")


def test_flat_sed_gives_mag_norm():
    for band in BANDS:
        assert seds.sed_magnitude("flatSED", 21.3, 0.0, band) == pytest.approx(21.3, abs=1e-9)
        # PhoSim's redshift keeps f_lambda / (1+z): f_nu rises by (1+z).
        assert seds.sed_magnitude("flatSED", 21.3, 1.0, band) == pytest.approx(21.3 - 2.5 * np.log10(2), abs=1e-9)
        flat = np.full(seds.WAVELENGTH_NM.size, 3631.0)
        assert seds.ab_mag(seds.WAVELENGTH_NM, flat, band) == pytest.approx(0, abs=1e-9)
    assert seds.sed_magnitude("flatSED/sed_flat.txt.gz", 20, 0, "g") == pytest.approx(20)


def test_sed_names():
    kurucz = "starSED/kurucz/km10_5750.fits_g10_5800.gz"
    assert seds.sed_magnitude(kurucz, 20, 0, "g") == seds.sed_magnitude("twinkles/bb_5800K", 20, 0, "g")
    for bad in ("starSED/phoenix/lte_3000.gz", "twinkles/gal_spiral", "bb_5800K", "twinkles/bb_58.5K"):
        with pytest.raises(InputError) as err:
            seds.sed_fnu(bad, [500.0])
        assert err.value.source == "sed" and err.value.field == "sed_name"
    with pytest.raises(InputError):
        seds.ab_mag([600.0, 700.0], [1.0, 1.0], "r")   # does not cover the band


def test_blackbody_colours():
    teff = [3000, 3500, 4500, 5800, 7000, 10000, 20000]
    gr = [colour(f"twinkles/bb_{t}K", "g", "r") for t in teff]
    ug = [colour(f"twinkles/bb_{t}K", "u", "g") for t in teff]
    assert np.all(np.diff(gr) < 0) and np.all(np.diff(ug) < 0)   # hotter is bluer
    assert 0.3 <= colour("twinkles/bb_5800K", "g", "r") <= 0.5
    assert -0.35 < gr[-1] and gr[0] < 1.6


def test_galaxy_templates():
    old = "twinkles/gal_old"
    assert colour(old, "g", "r", 0.5) > colour(old, "g", "r", 0.0) + 0.5   # 4000 A break into g
    assert 0.6 < colour(old, "g", "r") < 0.9 and colour(old, "u", "g") > 1.4   # SDSS ellipticals
    gr0 = [colour(s, "g", "r") for s in seds.GALAXY_SEDS]
    assert np.all(np.diff(gr0) < 0)                                      # old -> starburst: bluer
    assert colour("twinkles/gal_starburst", "u", "g", 3.5) > 2.0          # Lyman-break dropout
    # the tables used by the catalogues agree with the direct integral
    rng = np.random.default_rng(1)
    k, z = rng.integers(0, 4, 40), rng.uniform(0, 5.5, 40)
    for band in BANDS:
        tab = seds.template_mag_offsets(k, z, band)
        exact = [seds.sed_magnitude(seds.GALAXY_SEDS[i], 0.0, zz, band) for i, zz in zip(k, z)]
        ok = np.array(exact) < 15
        assert np.max(np.abs(tab - exact)[ok]) < 1e-3


# --- catalogues -----------------------------------------------------------------------------------
def test_dtypes_ids_radius(sky):
    for kind, dtype, code in (("stars", STAR_DTYPE, 1), ("galaxies", GALAXY_DTYPE, 2)):
        cat = sky[kind]
        assert cat.dtype == dtype and cat.size > 0
        assert np.all(np.diff(cat["id"]) > 0) and np.all(cat["id"] // 10**15 == code)
        assert np.all(angular_distance_deg(cat["ra"], cat["dec"], FIELD_RA, FIELD_DEC) <= RADIUS)
        assert np.array_equal(tile_of(cat["ra"], cat["dec"]), (cat["id"] // 10**6) % 10**9)


def test_star_counts_and_colours(sky):
    s = sky["stars"]
    per_sensor = s.size / AREA * SENSOR_DEG2
    assert 120 < per_sensor < 600                         # "a few hundred" to r = 26.5
    assert s["mag_r"].max() <= 26.5 + 1e-9
    gr = s["mag_g"] - s["mag_r"]
    assert -0.35 < gr.min() and gr.max() < 1.6 and 0.3 < np.median(gr) < 1.2


def test_galaxy_counts(sky):
    r = total_mag(sky["galaxies"], "r")
    n24, n28 = np.sum(r < 24) / AREA, np.sum(r < 28) / AREA
    assert 3e4 < n24 < 5e4
    assert 2e5 < n28 < 9e5
    assert 1e4 < n28 * SENSOR_DEG2 < 5e4
    counts = [np.sum(r < m) for m in (20, 22, 26, 28)]
    bright, faint = np.log10(counts[1] / counts[0]) / 2, np.log10(counts[3] / counts[2]) / 2
    assert 0.35 < bright < 0.55 and 0.22 < faint < 0.38


def test_redshift_and_sizes_with_magnitude(sky):
    g = sky["galaxies"]
    r = total_mag(g, "r")
    bins = [(18, 21), (22.5, 23.5), (24.5, 25.5), (26.5, 27.5)]
    zmed = [np.median(g["redshift"][(r >= a) & (r < b)]) for a, b in bins]
    assert np.all(np.diff(zmed) > 0) and 0.2 < zmed[0] < 0.45 and 0.9 < zmed[-1] < 1.5
    lit = g["disk_mag_r"] < np.inf
    hlr = [np.median(g["disk_hlr"][lit & (r >= a) & (r < b)]) for a, b in bins]
    assert np.all(np.diff(hlr) < 0) and hlr[0] > 1.0 and 0.2 < hlr[-1] < 0.6
    for c in ("bulge", "disk"):
        lit = g[f"{c}_mag_r"] < np.inf
        assert np.all(g[f"{c}_hlr"][lit] > 0) and np.all(g[f"{c}_hlr"][~lit] == 0)
        assert np.all((g[f"{c}_q"] > 0) & (g[f"{c}_q"] <= 1)) and np.all((g[f"{c}_pa"] >= 0) & (g[f"{c}_pa"] < 180))
    assert g["disk_q"].min() < 0.15 and g["bulge_q"].min() >= 0.3
    pure_disk = np.isinf(g["bulge_mag_r"])
    bt = 10 ** (-0.4 * (g["bulge_mag_r"] - r))
    assert 0.3 < pure_disk.mean() < 0.6 and np.mean(bt > 0.6) > 0.05
    dpa = np.abs((g["bulge_pa"] - g["disk_pa"] + 90) % 180 - 90)[~pure_disk & ~np.isinf(g["disk_mag_r"])]
    assert np.median(dpa) < 5


def test_mag_norm_consistent_with_mags(sky):
    """Stored mags come from interpolated tables: they match the exact integral to < 3e-4 mag."""
    g, s = sky["galaxies"], sky["stars"]
    for row in g[:: max(1, g.size // 40)]:
        for c in ("bulge", "disk"):
            for band in BANDS:
                exact = seds.sed_magnitude(row[f"{c}_sed"], row[f"{c}_mag_norm"], row["redshift"], band)
                assert exact == pytest.approx(row[f"{c}_mag_{band}"], abs=1e-3) or exact == row[f"{c}_mag_{band}"]
    for row in s[:30]:
        for band in BANDS:
            got = seds.sed_magnitude(row["sed"], row["mag_norm"], 0.0, band)
            assert got == pytest.approx(row[f"mag_{band}"], abs=1e-4)
        assert row["sed"] == f"twinkles/bb_{int(row['teff'])}K"


# --- reproducibility ------------------------------------------------------------------------------
def test_tile_partition_invariance(sky):
    tiles = np.array(sky_tiles(FIELD_RA, FIELD_DEC, RADIUS))
    pick = np.random.default_rng(5).random(tiles.size) < 0.4
    for kind, make in (("galaxies", make_galaxies), ("stars", make_stars)):
        parts = [make(7, FIELD_RA, FIELD_DEC, RADIUS, tiles=list(t)) for t in (tiles[pick], tiles[~pick])]
        union = np.sort(np.concatenate(parts), order="id")
        assert union.tobytes() == sky[kind].tobytes()


def test_determinism_and_radius_independence(sky):
    again = build_static_sky(7, FIELD_RA, FIELD_DEC, RADIUS)
    other = build_static_sky(8, FIELD_RA, FIELD_DEC, RADIUS)
    for kind in ("stars", "galaxies"):
        assert again[kind].tobytes() == sky[kind].tobytes()
        assert not np.array_equal(other[kind]["ra"][:10], sky[kind]["ra"][:10])
    small = make_galaxies(7, FIELD_RA, FIELD_DEC, 0.04)
    g = sky["galaxies"]
    inner = g[angular_distance_deg(g["ra"], g["dec"], FIELD_RA, FIELD_DEC) <= 0.04]
    assert small.tobytes() == inner.tobytes()


def test_sky_tiles_cover_the_field():
    rng = np.random.default_rng(2)
    for ra0, dec0, r in ((0.02, 5.0, 0.2), (FIELD_RA, FIELD_DEC, 0.3), (300.0, 89.9, 0.25)):
        tiles = sky_tiles(ra0, dec0, r)
        assert tiles == sorted(set(tiles))
        # points on a fine grid around the centre: every one within r lies in a listed tile
        dra, ddec = rng.uniform(-1, 1, (2, 50000)) * r
        dec = np.clip(dec0 + ddec, -90, 90)
        ra = (ra0 + dra / max(np.cos(np.radians(dec0)), 0.01)) % 360
        inside = angular_distance_deg(ra, dec, ra0, dec0) <= r
        assert set(tile_of(ra[inside], dec[inside]).tolist()) <= set(tiles)
        assert tile_area_deg2(tiles).sum() >= np.pi * r**2 * 0.99


def test_bad_inputs():
    for kw in (dict(radius_deg=0.0), dict(dec0=95.0), dict(seed=-1), dict(tiles=[1.5]), dict(seed=1.0),
               dict(tiles=[10**12])):
        args = dict(seed=1, ra0=FIELD_RA, dec0=FIELD_DEC, radius_deg=0.05) | kw
        with pytest.raises(InputError):
            make_galaxies(**args)
    with pytest.raises(InputError):
        make_stars(1, FIELD_RA, FIELD_DEC, 0.05, mag_limit_r=40)
    assert make_stars(1, FIELD_RA, FIELD_DEC, 0.05, tiles=[]).size == 0


def test_full_field_speed():
    t0 = time.perf_counter()
    sky = build_static_sky(11, FIELD_RA, FIELD_DEC, 0.3)
    assert time.perf_counter() - t0 < 10.0
    assert 1.2e5 < sky["galaxies"].size < 2.5e5 and 600 < sky["stars"].size < 3000
