"""SN Ia light-curve model (physics, fast path) and population (counts, hosts, twins, reproducibility)."""
import time

import numpy as np
import pytest
from astropy.cosmology import FlatLambdaCDM

from twinkles_hpc.errors import InputError
from twinkles_hpc.instrument import FIELD_DEC, FIELD_RA
from twinkles_hpc.sky import seds, snmodel
from twinkles_hpc.sky.snmodel import DEFAULT_COSMOLOGY, SNIaModel
from twinkles_hpc.sky.static import angular_distance_deg, build_static_sky, sky_tiles
from twinkles_hpc.sky.supernovae import (DEFAULT_RATE_BOOST, SN_DTYPE, SN_KIND, _offsets, make_supernovae,
                                         sn_counts_per_deg2_per_year, sn_rate)

MB = -19.3
RADIUS = 0.05
MJD0, MJD1 = 59580.0, 60580.0


@pytest.fixture(scope="module")
def model():
    return SNIaModel()


@pytest.fixture(scope="module")
def galaxies():
    return build_static_sky(11, FIELD_RA, FIELD_DEC, RADIUS)["galaxies"]


@pytest.fixture(scope="module")
def sne(galaxies):
    return make_supernovae(5, galaxies, FIELD_RA, FIELD_DEC, RADIUS, MJD0, MJD1)


def lc(model, band, z, x1=0.0, c=0.0, days=np.arange(-40.0, 200.0, 0.1)):
    """Observed light curve (flux, relative) against rest-frame days from t0."""
    m = model.mags(band, 60000.0 + days * (1 + z), z=z, t0=60000.0, x1=x1, c=c, M_B=MB)
    return 10 ** (-0.4 * (m - m[np.isfinite(m)].min()))


def half_max_width(f, days):
    above = days[f > 0.5 * f.max()]
    return above[-1] - above[0]


# --- light-curve model: physics ----------------------------------------------------------------
def test_peak_rest_frame_b_is_m_b_and_tripp(model):
    assert model.rest_frame_mag(0.0, x1=0, c=0, M_B=MB) == pytest.approx(MB, abs=0.02)
    assert np.all(model.rest_frame_mag([-1.0, 1.0], x1=0, c=0, M_B=MB) > MB)      # B max at phase 0
    assert model.rest_frame_mag(0.0, x1=1.0, c=0, M_B=MB) == pytest.approx(MB - 0.11, abs=0.02)
    assert model.rest_frame_mag(0.0, x1=0, c=0.1, M_B=MB) == pytest.approx(MB + 0.31, abs=0.02)
    # Observed through the same B band at very low z: m - mu = M_B (K-correction ~ 0).
    z = 0.002
    m = model.mags_exact("B", 60000.0, z=z, t0=60000.0, x1=0, c=0, M_B=MB)
    assert m - model.distmod(z) == pytest.approx(MB, abs=0.02)


def test_distance_modulus_from_astropy(model):
    z = np.array([0.05, 0.3, 1.0])
    assert np.allclose(model.distmod(z), DEFAULT_COSMOLOGY.distmod(z).value, atol=1e-9, rtol=0)
    other = SNIaModel(FlatLambdaCDM(H0=67.4, Om0=0.315))
    kw = dict(z=z, t0=60000.0, x1=0, c=0, M_B=MB)
    d = other.mags("r", 60010.0, **kw) - model.mags("r", 60010.0, **kw)
    assert np.allclose(d, other.cosmology.distmod(z).value - DEFAULT_COSMOLOGY.distmod(z).value, atol=1e-9)


def test_duration_scales_with_time_dilation_and_stretch(model):
    days = np.arange(-40.0, 300.0, 0.05)
    # The same rest-frame wavelengths seen at two redshifts: r at z1 and i at z2 with
    # (1+z2)/(1+z1) = lambda_eff(i) / lambda_eff(r); observed widths scale with (1+z).
    z1, z2 = 0.1, 1.1 * 752.3 / 619.9 - 1.0
    w1 = half_max_width(lc(model, "r", z1, days=days / (1 + z1)), days)
    w2 = half_max_width(lc(model, "i", z2, days=days / (1 + z2)), days)
    assert w2 / w1 == pytest.approx((1 + z2) / (1 + z1), rel=0.03)
    # Monochromatic flux at a fixed rest wavelength: exact (1+z) scaling.
    t = 60000.0 + days
    kw = dict(t0=60000.0, x1=0, c=0, M_B=MB)
    widths = [half_max_width(np.array([model.observed_fnu_jy(m, [480.0 * (1 + z)], z=z, **kw)[0] for m in t[::20]]),
                             days[::20]) for z in (0.2, 0.8)]
    assert widths[1] / widths[0] == pytest.approx(1.8 / 1.2, rel=0.02)
    # Stretch: s = 1 + 0.091 x1 dilates the light curve.
    d = np.arange(-40.0, 200.0, 0.02)
    ratio = half_max_width(lc(model, "g", 0.3, x1=2.0, days=d), d) / half_max_width(lc(model, "g", 0.3, days=d), d)
    assert ratio == pytest.approx(1 + 0.091 * 2, rel=0.01)


def test_colour_reddens_and_dims(model):
    def peak(band, c):
        return model.peak_mag(band, z=0.05, x1=0, c=c, M_B=MB)
    gr0, gr_red, gr_blue = (peak("g", c) - peak("r", c) for c in (0.0, 0.2, -0.1))
    assert gr_red - gr0 == pytest.approx(0.2, abs=0.06)       # c ~ E(B-V) with beta = 3.1
    assert gr_blue < gr0
    b0, b1 = (model.rest_frame_mag(0.0, x1=0, c=c, M_B=MB) for c in (0.0, 0.2))
    assert b1 - b0 == pytest.approx(3.1 * 0.2, abs=0.02)
    assert snmodel.colour_law(365.0) > snmodel.colour_law(440.0) == pytest.approx(1.0, abs=0.02)
    assert snmodel.colour_law(440.0) > snmodel.colour_law(800.0) > 0


def test_light_curve_shape(model):
    days = np.arange(-30.0, 120.0, 0.5)
    m = model.mags("g", 60000.0 + days * 1.05, z=0.05, t0=60000.0, x1=0, c=0, M_B=MB)
    rise, fall = (days >= -15) & (days <= -1), (days >= 2) & (days <= 70)
    assert np.all(np.diff(m[rise]) < 0) and np.all(np.diff(m[fall]) > 0)
    assert abs(days[np.argmin(m)]) <= 2.0
    assert np.all(np.isinf(m[(days < -18.5) | (days > 91)]))             # no flux before explosion / after taper
    b = model.rest_frame_mag(np.array([0.0, 15.0, 40.0, 60.0]), x1=0, c=0, M_B=MB) - MB
    assert b[1] == pytest.approx(1.1, abs=0.15)                           # Delta m15(B) (Phillips 1993)
    assert (b[3] - b[2]) / 20 == pytest.approx(0.015, abs=0.005)          # B tail, mag/day
    # Secondary maximum in the rest-frame near-IR (i at low z): a dip then a second peak at +20..+35 d.
    mi = model.mags("i", 60000.0 + days * 1.01, z=0.01, t0=60000.0, x1=0, c=0, M_B=MB)
    w = (days >= 5) & (days <= 45)
    local_max = days[w][1:-1][(mi[w][1:-1] < mi[w][:-2]) & (mi[w][1:-1] < mi[w][2:])]
    assert local_max.size == 1 and 20 <= local_max[0] <= 35
    # Faster decline in the blue: over 0..+15 d, u > g > r.
    d15 = [np.subtract(*model.rest_frame_mag([15.0, 0.0], x1=0, c=0, M_B=MB, band=b)) for b in "ugr"]
    assert d15[0] > d15[1] > d15[2]


# --- fast path -------------------------------------------------------------------------------------
def test_fast_path_matches_direct_integration(model):
    rng = np.random.default_rng(3)
    n = 300
    z = rng.uniform(0.01, 1.5, n)
    x1, c = rng.normal(0, 1, n), rng.normal(0, 0.15, n)
    phase = rng.uniform(-19.0, 95.0, n)
    band = rng.choice(list("ugrizy"), n)
    kw = dict(z=z, t0=60000.0, x1=x1, c=c, M_B=MB)
    mjd = 60000.0 + phase * (1 + z)
    fast, exact = model.mags(band, mjd, **kw), model.mags_exact(band, mjd, **kw)
    diff = np.where(np.isfinite(exact), fast - np.where(np.isfinite(exact), exact, 0.0), 0.0)
    assert np.array_equal(np.isinf(fast), np.isinf(exact))
    peak = model.peak_mag(band, z=z, x1=x1, c=c, M_B=MB)
    ok = np.isfinite(exact) & (exact < peak + 5.0)
    assert ok.sum() > 200
    assert np.abs(diff)[ok].max() < 0.005
    # Vectorised band arrays agree with scalar bands.
    for b in "ugrizy":
        sel = band == b
        assert np.array_equal(model.mags(b, mjd[sel], z=z[sel], t0=60000.0, x1=x1[sel], c=c[sel], M_B=MB), fast[sel])


def test_spectrum_integrates_to_the_magnitudes(model):
    lam = seds.WAVELENGTH_NM
    kw = dict(z=0.4, t0=60000.0, x1=0.5, c=0.05, M_B=MB)
    f_jy = model.observed_fnu_jy(60012.0, lam, **kw)
    for b in "griz":
        assert seds.ab_mag(lam, f_jy, b) == pytest.approx(model.mags_exact(b, 60012.0, **kw)[()], abs=1e-9)


def test_fast_path_speed(model):
    rng = np.random.default_rng(4)
    n = 1_000_000
    model.mags("r", 60000.0, z=0.5, t0=60000.0, x1=0, c=0, M_B=MB)              # build the tables
    z = np.repeat(rng.uniform(0.05, 1.2, 1000), 1000)
    args = dict(z=z, t0=np.repeat(rng.uniform(59500, 60500, 1000), 1000), x1=rng.normal(0, 1, n),
                c=rng.normal(0, 0.1, n), M_B=MB)
    start = time.perf_counter()
    m = model.mags(rng.choice(list("ugrizy"), n), rng.uniform(59500, 60500, n), **args)
    assert time.perf_counter() - start < 5.0 and m.shape == (n,)


def test_model_rejects_bad_input(model):
    for kw in (dict(z=0.0), dict(z=1.7), dict(z=np.nan), dict(c=2.0)):
        args = dict(z=0.5, t0=60000.0, x1=0.0, c=0.0, M_B=MB) | kw
        with pytest.raises(InputError):
            model.mags("r", 60000.0, **args)
    with pytest.raises(InputError):
        model.mags(np.array(["r", "q"]), 60000.0, z=0.5, t0=60000.0, x1=0, c=0, M_B=MB)


# --- population ------------------------------------------------------------------------------------
def test_rate():
    assert sn_rate(0.0) == pytest.approx(2.69e-5)
    assert sn_rate(1.0) == pytest.approx(2.69e-5 * 2**1.5)
    assert sn_rate(0.5, h70=67.4 / 70) == pytest.approx(2.69e-5 * 1.5**1.5 * (67.4 / 70) ** 3)
    # Counts per deg^2 per year do not depend on h (rate in h70^3 Mpc^-3, volumes in h70^-3 Mpc^3).
    a, b = sn_counts_per_deg2_per_year(1.0), sn_counts_per_deg2_per_year(1.0, FlatLambdaCDM(H0=60.0, Om0=0.3))
    assert a == pytest.approx(b, rel=1e-6)
    assert 100 < sn_counts_per_deg2_per_year(1.2) < 300


def test_counts_and_parameter_distributions(sne, galaxies):
    assert sne.dtype == SN_DTYPE and np.all(np.diff(sne["id"]) > 0)
    assert np.all(sne["id"] // 10**15 == SN_KIND)
    hosted = sne[sne["twin_of"] < 0]
    years = (MJD1 + 20 - (MJD0 - 60)) / 365.25
    expect = DEFAULT_RATE_BOOST * sn_counts_per_deg2_per_year(1.2) * years * np.pi * RADIUS**2
    assert abs(hosted.size - expect) < 5 * np.sqrt(expect)
    assert np.all((sne["redshift"] > 0) & (sne["redshift"] <= 1.2))
    assert np.all((sne["t0"] >= MJD0 - 60) & (sne["t0"] <= MJD1 + 20))
    assert np.all(angular_distance_deg(sne["ra"], sne["dec"], FIELD_RA, FIELD_DEC) <= RADIUS)
    n = hosted.size
    for f, (mean, std) in (("x1", (0, 1)), ("c", (0, 0.1)), ("M_B", (-19.3, 0.15))):
        assert hosted[f].mean() == pytest.approx(mean, abs=4 * std / np.sqrt(n))
        assert hosted[f].std() == pytest.approx(std, rel=0.1)
    assert np.allclose(sne["mu"], DEFAULT_COSMOLOGY.distmod(sne["redshift"]).value)
    # Most SNe Ia of a z <= 1.2 volume are at high redshift.
    assert 0.7 < np.median(hosted["redshift"]) < 1.0
    more = make_supernovae(5, galaxies, FIELD_RA, FIELD_DEC, RADIUS, MJD0, MJD1, rate_boost=3 * DEFAULT_RATE_BOOST)
    assert more.size / sne.size == pytest.approx(3.0, rel=0.15)
    low = make_supernovae(5, galaxies, FIELD_RA, FIELD_DEC, RADIUS, MJD0, MJD1, z_max=0.5)
    assert low["redshift"].max() <= 0.5 and 0 < low.size < 0.3 * sne.size


def test_hosts_and_positions(sne, galaxies):
    hosted = sne[sne["host_id"] >= 0]
    assert hosted.size > 0.95 * np.count_nonzero(sne["twin_of"] < 0)
    idx = np.searchsorted(galaxies["id"], hosted["host_id"])
    g = galaxies[idx]
    assert np.array_equal(g["id"], hosted["host_id"])
    assert np.array_equal(g["redshift"], hosted["redshift"])
    sep = angular_distance_deg(hosted["ra"], hosted["dec"], g["ra"], g["dec"]) * 3600
    assert np.allclose(sep, hosted["host_offset_arcsec"], rtol=1e-3, atol=1e-6)
    assert np.all(sep <= 8.0 * np.maximum(g["bulge_hlr"], g["disk_hlr"]) + 1e-6)
    assert np.median(sep / np.maximum(g["bulge_hlr"], g["disk_hlr"])) < 1.5
    # Hosts are luminous for their redshift: brighter in i than random galaxies at the same z.
    rng = np.random.default_rng(0)
    gz = galaxies[galaxies["redshift"] <= 1.2]
    pick = gz[[np.argmin(np.abs(gz["redshift"] - z + rng.normal(0, 1e-3))) for z in hosted["redshift"][:200]]]
    tot = lambda a: -2.5 * np.log10(10 ** (-0.4 * a["bulge_mag_i"]) + 10 ** (-0.4 * a["disk_mag_i"]))  # noqa: E731
    assert np.median(tot(g[:200])) < np.median(tot(pick)) - 0.3


def test_sersic_offsets():
    rng = np.random.default_rng(1)
    n = 200_000
    u = rng.random((2, n))
    from scipy.special import gammainc, gammaincinv
    for sersic in (1.0, 4.0):
        east, north = _offsets(u[0], u[1], sersic, 1.0, 1.0, 0.0)
        r = np.hypot(east, north)
        b = gammaincinv(2 * sersic, 0.5)
        inside = 0.5 / gammainc(2 * sersic, b * 8.0 ** (1 / sersic))     # half the light within hlr
        assert np.mean(r < 1.0) == pytest.approx(inside, abs=0.005) and r.max() <= 8.0
    # Major axis east of north: pa = 90 deg puts it along east.
    east, north = _offsets(u[0], u[1], 1.0, 1.0, 0.3, 90.0)
    assert np.std(north) / np.std(east) == pytest.approx(0.3, rel=0.03)


def test_twins_copy_their_originals(sne, galaxies):
    twins = sne[sne["twin_of"] >= 0]
    assert twins.size > 0 and np.all(twins["host_id"] == -1) and np.all(np.isnan(twins["host_offset_arcsec"]))
    orig_idx = np.searchsorted(sne["id"], twins["twin_of"])
    present = (orig_idx < sne.size) & (sne["id"][np.minimum(orig_idx, sne.size - 1)] == twins["twin_of"])
    assert present.mean() > 0.4        # the small field cuts through many tiles
    o = sne[orig_idx[present]]
    for f in ("redshift", "t0", "x1", "c", "M_B", "mu"):
        assert np.array_equal(o[f], twins[f][present])
    assert np.all(o["twin_of"] == -1)
    # Without twins: exactly the hosted SNe, unchanged.
    alone = make_supernovae(5, galaxies, FIELD_RA, FIELD_DEC, RADIUS, MJD0, MJD1, hostless_twins=False)
    assert alone.tobytes() == sne[sne["twin_of"] < 0].tobytes()


def test_tile_partition_and_determinism(sne, galaxies):
    tiles = sky_tiles(FIELD_RA, FIELD_DEC, RADIUS)
    rng = np.random.default_rng(2)
    part = rng.integers(0, 3, len(tiles))
    pieces = [make_supernovae(5, galaxies, FIELD_RA, FIELD_DEC, RADIUS, MJD0, MJD1,
                              tiles=[t for t, p in zip(tiles, part) if p == k]) for k in range(3)]
    union = np.concatenate(pieces)
    union = union[np.argsort(union["id"])]
    assert union.tobytes() == sne.tobytes()
    again = make_supernovae(5, galaxies, FIELD_RA, FIELD_DEC, RADIUS, MJD0, MJD1)
    assert again.tobytes() == sne.tobytes()
    other = make_supernovae(6, galaxies, FIELD_RA, FIELD_DEC, RADIUS, MJD0, MJD1)
    assert other.size != sne.size or not np.array_equal(other["t0"], sne["t0"])


def test_hostless_without_galaxies_and_bad_input(galaxies):
    sn = make_supernovae(5, None, FIELD_RA, FIELD_DEC, RADIUS, MJD0, MJD1)
    assert sn.size > 0 and np.all(sn["host_id"] == -1)
    for kw in (dict(z_max=2.0), dict(rate_boost=-1.0)):
        with pytest.raises(InputError):
            make_supernovae(5, galaxies, FIELD_RA, FIELD_DEC, RADIUS, MJD0, MJD1, **kw)
    with pytest.raises(InputError):
        make_supernovae(5, galaxies, FIELD_RA, FIELD_DEC, RADIUS, MJD1, MJD0)
    with pytest.raises(InputError):
        make_supernovae(5, galaxies[["id", "ra", "dec"]], FIELD_RA, FIELD_DEC, RADIUS, MJD0, MJD1)
