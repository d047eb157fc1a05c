"""The sprinkler: OM10-like systems, lens galaxies, image positions, keyed reproducibility."""
import numpy as np
import pytest
from conftest import SHARED_DATA

from twinkles_hpc.errors import InputError
from twinkles_hpc.instrument import BANDS, FIELD_DEC, FIELD_RA
from twinkles_hpc.sky import seds
from twinkles_hpc.sky.galaxies import make_galaxies
from twinkles_hpc.sky.sprinkler import (LENS_SED, LENSED_IMAGE_KIND, draw_om10_like, offsets_to_radec,
                                        radec_to_offsets, sprinkle)
from twinkles_hpc.sky.static import ID_KIND_FACTOR

REAL_TABLE = SHARED_DATA / "twinkles_om10_lenses.fits"
RADIUS = 0.3
AREA = 2 * np.pi * (1 - np.cos(np.radians(RADIUS))) * np.degrees(1.0) ** 2


def lensing():
    try:
        from twinkles_hpc.sky import lensing as mod
    except ImportError as exc:
        pytest.skip(f"twinkles_hpc/sky/lensing.py is not available ({exc}): lensing-dependent test skipped")
    return mod


@pytest.fixture(scope="module")
def real_om10():
    if not REAL_TABLE.exists():
        pytest.skip(f"shared data {REAL_TABLE} not present (set TWINKLES_SHARED_DATA)")
    return lensing().read_om10(str(REAL_TABLE))


@pytest.fixture(scope="module")
def drawn():
    lensing()
    return draw_om10_like(5, 400)


@pytest.fixture(scope="module")
def galaxies():
    return make_galaxies(3, FIELD_RA, FIELD_DEC, RADIUS, mag_limit_r=26.0)


@pytest.fixture(scope="module")
def sprinkled(galaxies, real_om10):
    return sprinkle(11, galaxies, real_om10, FIELD_RA, FIELD_DEC, RADIUS)


def om10_rows(om10, systems):
    by_id = {int(i): k for k, i in enumerate(om10["LENSID"])}
    return om10[[by_id[int(i)] for i in systems["om10_lensid"]]]


# --- coordinates --------------------------------------------------------------------------------
def test_offsets_round_trip_and_signs():
    rng = np.random.default_rng(0)
    for dec0 in (-27.4389, 0.0, 89.9):
        x, y = rng.uniform(-5, 5, (2, 100))
        ra, dec = offsets_to_radec(53.0, dec0, x, y)
        x2, y2 = radec_to_offsets(53.0, dec0, ra, dec)
        assert np.abs(x2 - x).max() < 1e-6 and np.abs(y2 - y).max() < 1e-6
    ra, dec = offsets_to_radec(53.0, -27.0, 3600.0 * np.cos(np.radians(27.0)) * 1e-3, 0.0)
    assert ra < 53.0 and ra == pytest.approx(53.0 - 1e-3, rel=1e-9)     # x points west
    ra, dec = offsets_to_radec(53.0, -27.0, 0.0, 3.6)
    assert dec == pytest.approx(-27.0 + 1e-3, abs=1e-12)               # y points north


# --- the sprinkler --------------------------------------------------------------------------
def test_lens_galaxies_carry_their_system(sprinkled, galaxies, real_om10):
    gal_out, systems, _ = sprinkled
    assert np.array_equal(gal_out["id"], np.sort(galaxies["id"]))
    lens = np.isin(gal_out["id"], systems["lens_galaxy_id"])
    g = gal_out[lens]
    assert np.array_equal(g["id"], systems["lens_galaxy_id"])           # both sorted by id
    om = om10_rows(real_om10, systems)
    q = 1.0 - om["ELLIP"]
    assert np.array_equal(g["redshift"], om["ZLENS"])
    assert np.all(g["bulge_sed"] == LENS_SED)
    assert np.allclose(g["bulge_hlr"] * np.sqrt(g["bulge_q"]), om["REFF"], rtol=1e-12)
    assert np.allclose(g["bulge_q"], q) and np.allclose(g["bulge_pa"], om["PHIE"] % 180.0)
    assert np.all((g["bulge_pa"] >= 0) & (g["bulge_pa"] < 180))
    assert np.array_equal(g["bulge_mag_i"], om["APMAG_I"])
    for row in g[:10]:
        for b in BANDS:
            m = seds.sed_magnitude(LENS_SED, row["bulge_mag_norm"], row["redshift"], b)
            assert m == pytest.approx(row[f"bulge_mag_{b}"], abs=1e-9)
    assert np.all(np.isinf(g["disk_mag_r"])) and np.all(np.isinf(g["disk_mag_norm"])) and np.all(g["disk_hlr"] == 0)
    # every other galaxy is untouched
    ref = np.sort(galaxies, order="id")
    assert np.array_equal(gal_out[~lens], ref[~lens])
    # lens galaxies had a nearby redshift to begin with
    assert np.all(np.abs(ref[lens]["redshift"] - om["ZLENS"]) < 0.02)


def test_images_sit_at_the_om10_offsets(sprinkled, real_om10):
    _, systems, images = sprinkled
    om = om10_rows(real_om10, systems)
    assert len(images) == om["NIMG"].sum() and np.all(np.diff(images["image_id"]) > 0)
    assert np.all(images["image_id"] // ID_KIND_FACTOR == LENSED_IMAGE_KIND)
    k = np.searchsorted(systems["sys_id"], images["sys_id"])
    assert np.array_equal(systems["sys_id"][k], images["sys_id"])
    j = images["image_index"]
    assert np.array_equal(images["mag"], om["MAG"][k, j]) and np.array_equal(images["delay"], om["DELAY"][k, j])
    x, y = radec_to_offsets(systems["ra"][k], systems["dec"][k], images["ra"], images["dec"])
    assert np.abs(x - om["XIMG"][k, j]).max() < 1e-6 and np.abs(y - om["YIMG"][k, j]).max() < 1e-6
    assert np.array_equal(images["x_arcsec"], om["XIMG"][k, j])
    # the system rows carry the OM10 parameters and the quasar variability
    assert np.array_equal(systems["nimg"], om["NIMG"]) and np.array_equal(systems["zsrc"], om["ZSRC"])
    assert np.array_equal(systems["src_mag_i"], om["MAGI_IN"]) and np.array_equal(systems["magi_in"], om["MAGI_IN"])
    assert np.allclose(systems["tau_obs"], (1 + systems["zsrc"]) * systems["tau_rest"])
    assert np.all(systems["sf_inf_u"] > systems["sf_inf_y"])


def test_number_of_systems_follows_density(galaxies, real_om10, sprinkled):
    _, systems, _ = sprinkled
    expect = 700.0 * AREA                                               # ~198: Run 3 had ~200
    assert abs(len(systems) - expect) < 4 * np.sqrt(expect)
    assert len(np.unique(systems["om10_lensid"])) == len(systems)       # without replacement
    _, s2, _ = sprinkle(11, galaxies, real_om10, FIELD_RA, FIELD_DEC, RADIUS, density_per_deg2=200.0)
    assert abs(len(s2) - 200.0 * AREA) < 4 * np.sqrt(200.0 * AREA)
    with pytest.raises(InputError):
        sprinkle(11, galaxies, real_om10, FIELD_RA, FIELD_DEC, RADIUS, density_per_deg2=5000.0)


def test_sprinkle_is_deterministic_and_order_free(sprinkled, galaxies, real_om10):
    rng = np.random.default_rng(1)
    again = sprinkle(11, galaxies[rng.permutation(len(galaxies))], real_om10[rng.permutation(len(real_om10))],
                     FIELD_RA, FIELD_DEC, RADIUS)
    for a, b in zip(sprinkled, again):
        assert np.array_equal(a, b)
    other = sprinkle(12, galaxies, real_om10, FIELD_RA, FIELD_DEC, RADIUS)[1]
    assert not np.array_equal(other["lens_galaxy_id"][:20], sprinkled[1]["lens_galaxy_id"][:20])


def test_sprinkle_drawn_systems(galaxies, drawn):
    gal_out, systems, images = sprinkle(2, galaxies, drawn, FIELD_RA, FIELD_DEC, 0.1)
    assert len(systems) > 5 and np.all(systems["om10_lensid"] == -1)
    assert len(images) == systems["nimg"].sum()
    assert np.all(images["delay"] >= 0)


# --- OM10-like draws --------------------------------------------------------------------------
def test_draw_om10_like_is_physical(drawn):
    d = drawn
    assert len(d) == 400 and np.all(np.isin(d["NIMG"], (2, 4)))
    assert np.all(d["LENSID"] < 0) and len(np.unique(d["LENSID"])) == len(d)
    used = np.arange(4)[None, :] < d["NIMG"][:, None]
    amag = np.abs(d["MAG"][used])
    assert np.all(amag > 0.02) and np.percentile(amag, 1) > 0.1
    assert np.all(d["DELAY"][used] >= 0) and np.all(np.where(used, d["DELAY"], np.inf).min(axis=1) == 0)
    # doubles: one minimum (mu > 0) and one saddle (mu < 0); quads: two of each
    npos = np.sum((d["MAG"] > 0) & used, axis=1)
    assert np.all(npos == d["NIMG"] // 2)
    assert np.all(d["IMSEP"] >= 0.5) and np.all(d["MAGI"] <= 23.3)
    assert np.all(d["ZSRC"] > d["ZLENS"]) and np.all((d["ELLIP"] >= 0) & (d["ELLIP"] < 0.86))
    # the stored images are the lens model's images
    solve_lens = lensing().solve_lens
    for r in d[:20]:
        x, y, mu, dt = solve_lens(r["VELDISP"], r["ELLIP"], r["PHIE"], r["GAMMA"], r["PHIG"], r["ZLENS"], r["ZSRC"],
                                  r["XSRC"], r["YSRC"])
        assert len(x) == r["NIMG"]
        assert np.allclose(x, r["XIMG"][:len(x)], atol=1e-6) and np.allclose(dt, r["DELAY"][:len(x)], atol=1e-4)


def test_draw_om10_like_resembles_the_real_table(drawn):
    real_sep = 1.22                                                     # median IMSEP of the 861 systems
    if REAL_TABLE.exists():
        real_sep = float(np.median(lensing().read_om10(str(REAL_TABLE))["IMSEP"]))
    ratio = np.median(drawn["IMSEP"]) / real_sep
    assert 1 / 1.5 < ratio < 1.5, ratio
    assert 0.05 < np.mean(drawn["NIMG"] == 4) < 0.35
    assert 0.5 < np.median(drawn["ZLENS"]) < 1.0 and 2.0 < np.median(drawn["ZSRC"]) < 3.0


def test_draw_om10_like_keyed(drawn):
    assert np.array_equal(draw_om10_like(5, 60), drawn[:60])            # a prefix, batch-keyed
    assert not np.array_equal(draw_om10_like(6, 60)["ZSRC"], drawn["ZSRC"][:60])
    d = draw_om10_like(5, 40, max_delay=60.0)
    assert np.all(d["DELAY"].max(axis=1) <= 60.0)
    with pytest.raises(InputError):
        draw_om10_like(5, -1)
