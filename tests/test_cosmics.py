"""Cosmic rays: simulated in the eimage (imsim/cosmics.py, truth in `truth/cosmic_rays`), found, masked
and repaired by the calexp stage (level2/cosmics.py), measured against that truth."""
import time

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS
from conftest import campaign_run, small_field_toml
from scipy import ndimage

from twinkles_hpc import config, instrument
from twinkles_hpc.imsim import cosmics as C
from twinkles_hpc.imsim.noise import add_sky_and_noise
from twinkles_hpc.imsim.psf import PSFModel
from twinkles_hpc.imsim.render import render_points
from twinkles_hpc.level2.cosmics import CosmicRayConfig, find_cosmic_rays, neighbour_ratios
from twinkles_hpc.level2.masks import CR, SAT
from twinkles_hpc.store.atomic import open_read
from twinkles_hpc.store.tables import read_table

SKY, RN = 800.0, 8.8


# -- the simulation --------------------------------------------------------------------------------
def test_tracks_are_keyed_by_visit_and_follow_the_model():
    a, n = C.simulate_cosmic_rays(1.0, 30.0, 1000, 1000, (5, 17, 3))
    b, m = C.simulate_cosmic_rays(1.0, 30.0, 1000, 1000, (5, 17, 3))
    c, _ = C.simulate_cosmic_rays(1.0, 30.0, 1000, 1000, (5, 18, 3))
    assert n == m and np.array_equal(a, b) and not np.array_equal(a, c)
    assert a.dtype == C.COSMIC_RAY_DTYPE and np.all(a["electrons"] >= 1)
    assert np.all(a["electrons"] == np.rint(a["electrons"]))
    assert len(np.unique(a["y"] * 1000 + a["x"])) == len(a)            # one row per pixel
    # count: Poisson(rate x area x time) summed over many exposures
    counts = [len(C.draw_tracks(0.04, 30.0, 4000, 4072, (1, v, 3))) for v in range(200)]
    mu = 0.04 * 4000 * 4072 * 1e-6 * 30.0
    assert abs(np.mean(counts) - mu) < 5 * np.sqrt(mu / 200)
    # geometry and charge: 10 tan(theta) px long, dE/dx Moyal(75, 10) e-/um over 100 um / cos(theta)
    t = C.draw_tracks(1.0, 1000.0, 1000, 1000, (2, 3, 3))
    length = 10 * np.sqrt(1 - t["cos_theta"] ** 2) / t["cos_theta"]
    assert 3 < np.median(length) < 8 and length.max() <= 100 + 1e-9 and np.mean(length > 20) < 0.1
    assert 70 < np.median(t["dedx"]) < 85
    one = t[:1].copy()
    one["cos_theta"], one["x"], one["y"] = 1.0, 500.0, 500.0
    dep = C.deposit(one, 1000, 1000)
    assert dep["electrons"].sum() == pytest.approx(100 * one["dedx"][0], rel=1e-3)
    assert dep["electrons"].max() > 0.5 * dep["electrons"].sum()       # a vertical track is a spot


def test_rate_zero_and_bad_input():
    tab, n = C.simulate_cosmic_rays(0.0, 30.0, 500, 500, (1, 2, 3))
    assert n == 0 and len(tab) == 0 and tab.dtype == C.COSMIC_RAY_DTYPE
    with pytest.raises(ValueError, match="rate"):
        C.draw_tracks(-1.0, 30.0, 10, 10, (1, 2, 3))
    pix = np.full((4, 4), 99990.0, np.float32)
    tab = np.zeros(2, C.COSMIC_RAY_DTYPE)
    tab["x"], tab["y"], tab["electrons"] = [0, 1], [0, 0], [5.0, 20.0]
    assert C.add_cosmic_rays(pix, tab, 100000.0) == 1                  # clipped at the full well
    assert pix[0, 0] == 99995.0 and pix[0, 1] == 100000.0


def _sky_config(**imsim):
    return config.from_dict({"run": {"seed": 3}, "sensor": {"nx": 300, "ny": 300},
                             "visit": {"chunk_objects": 16, **imsim}})


def _visit(cfg, tmp_path, name, stop_after=None):
    from twinkles_hpc.errors import Interrupted
    from twinkles_hpc.imsim.visit import VisitSpec, simulate_visit
    from twinkles_hpc.sky.static import build_static_sky
    sky = build_static_sky(3, instrument.FIELD_RA, instrument.FIELD_DEC, 0.03, star_mag_limit_r=24.0,
                           galaxy_mag_limit_r=24.0)
    spec = VisitSpec(visit_id=4242, band="r", mjd=60000.0, exptime=300.0, airmass=1.1, fwhm_eff=0.8,
                     fwhm_geom=0.71, sky_brightness=21.2, five_sigma_depth=24.5, rot_sky_pos=10.0,
                     ra=instrument.FIELD_RA, dec=instrument.FIELD_DEC)
    out = tmp_path / f"{name}.h5"
    ckpt = str(tmp_path / f"{name}-ck.h5")
    if stop_after is not None:                       # checkpoint after a chunk, then resume
        calls = iter(range(10 ** 6))
        with pytest.raises(Interrupted):
            simulate_visit(spec, sky["stars"], sky["galaxies"], cfg, str(out), ckpt,
                           should_stop=lambda: next(calls) + 1 >= stop_after)
        assert not out.exists() and (tmp_path / f"{name}-ck.h5").exists()
    simulate_visit(spec, sky["stars"], sky["galaxies"], cfg, str(out), ckpt)
    with open_read(out) as fh:
        return fh["image"][...], fh["truth/cosmic_rays"][...], dict(fh.attrs)


def test_visit_cosmic_rays_do_not_depend_on_chunking_and_can_be_disabled(tmp_path):
    img, crs, a = _visit(_sky_config(cosmic_ray_rate=2.0), tmp_path, "a")
    img2, crs2, _ = _visit(_sky_config(cosmic_ray_rate=2.0, chunk_objects=1000), tmp_path, "b")
    img3, crs3, _ = _visit(_sky_config(cosmic_ray_rate=2.0, chunk_objects=4), tmp_path, "r", stop_after=2)
    assert a["n_cosmic_rays"] > 10 and a["n_cosmic_ray_pixels"] == len(crs) > 50
    assert np.array_equal(crs, crs2) and np.array_equal(img, img2)
    assert np.array_equal(crs, crs3) and np.array_equal(img, img3)
    off, none, b = _visit(_sky_config(cosmic_ray_rate=0.0), tmp_path, "c")
    assert len(none) == 0 and b["n_cosmic_rays"] == 0
    # the charge is added on top of the same noise realisation (its own key): only CR pixels differ
    diff = img.astype(np.float64) - off
    hit = C.cosmic_ray_mask(crs, img.shape)
    assert np.all(diff[~hit] == 0)
    unclipped = img[crs["y"], crs["x"]] < a["full_well"]
    assert np.array_equal(diff[crs["y"], crs["x"]][unclipped], crs["electrons"][unclipped])
    _, quiet, q = _visit(_sky_config(cosmic_ray_rate=2.0, noise=False), tmp_path, "d")
    assert len(quiet) == 0 and q["n_cosmic_rays"] == 0


# -- detection on a synthetic image ------------------------------------------------------------------
def _scene(n, fwhm_arcsec, rate, seed):
    """Stars (flux 1e3..2e6 e-) on a flat sky with noise, plus cosmic rays: returns what calibrate sees."""
    rng = np.random.default_rng(seed)
    ny = nx = n
    x, y = rng.uniform(20, nx - 20, 400), rng.uniform(20, ny - 20, 400)
    flux = 10 ** rng.uniform(3, 6.3, 400)
    expected = np.zeros((ny, nx))
    render_points(expected, x, y, flux, PSFModel(fwhm_arcsec, nx=nx, ny=ny))
    pix, _ = add_sky_and_noise(expected, SKY, RN, (seed, 1, 1))
    crs, _ = C.simulate_cosmic_rays(rate, 30.0, nx, ny, (seed, 1, 3))
    C.add_cosmic_rays(pix, crs, 1e5)
    return dict(pix=pix, expected=expected, crs=crs, x=x, y=y)


def _detect(s, config=None):
    pix = s["pix"]
    sub = (pix - SKY).astype(np.float32)
    var = (np.maximum(pix, 0) + RN ** 2).astype(np.float32)
    mask = np.zeros(pix.shape, np.uint16)
    mask[pix >= 1e5] |= SAT
    t = time.perf_counter()
    n, _ = find_cosmic_rays(sub, var, mask, config, cr_bit=CR, skip_bits=SAT)
    return sub, mask, n, time.perf_counter() - t


def metrics(flagged, crs, noise_sigma, sat, stars_xy, star_peak_snr):
    """Completeness over true CR pixels with charge > 5 sigma (not saturated, not on the border), the
    fraction of all pixels flagged more than 1 px from any true CR pixel, and the bright star cores
    (peak > 50 sigma, unsaturated, no CR within 2 px) with a flagged pixel in their 3 x 3 core."""
    ny, nx = flagged.shape
    truth = C.cosmic_ray_mask(crs, flagged.shape)
    sig = noise_sigma[crs["y"], crs["x"]]
    strong = crs[(crs["electrons"] > 5 * sig) & (crs["x"] > 0) & (crs["y"] > 0) & (crs["x"] < nx - 1)
                 & (crs["y"] < ny - 1) & ~sat[crs["y"], crs["x"]]]
    completeness = flagged[strong["y"], strong["x"]].mean()
    fp = flagged & ~ndimage.binary_dilation(truth, np.ones((3, 3), bool))
    ix, iy = (np.rint(a).astype(int) for a in stars_xy)
    cores = 0
    hit = 0
    for i, j, snr in zip(ix, iy, star_peak_snr):
        if not (snr > 50 and 2 <= i < nx - 2 and 2 <= j < ny - 2) or sat[j - 1:j + 2, i - 1:i + 2].any():
            continue
        if truth[j - 2:j + 3, i - 2:i + 3].any():
            continue
        cores += 1
        hit += bool(flagged[j - 1:j + 2, i - 1:i + 2].any())
    return completeness, len(strong), fp.sum() / fp.size, cores, hit


@pytest.mark.parametrize("fwhm", [0.5, 0.7, 1.0])
def test_detection_completeness_and_false_positives_synthetic(fwhm):
    s = _scene(800, fwhm, 1.0, seed=int(fwhm * 10))
    sub, mask, n, _ = _detect(s)
    flagged = (mask & CR) > 0
    assert n == flagged.sum()
    sigma = np.sqrt(s["expected"] + SKY + RN ** 2)
    peak_snr = s["expected"][np.rint(s["y"]).astype(int), np.rint(s["x"]).astype(int)] / np.sqrt(SKY + RN ** 2)
    comp, n_strong, fp, cores, hit = metrics(flagged, s["crs"], sigma, s["pix"] >= 1e5, (s["x"], s["y"]), peak_snr)
    print(f"FWHM {fwhm}\": completeness {comp:.4f} of {n_strong} px, false-positive fraction {fp:.2e}, "
          f"bright cores flagged {hit}/{cores}")
    assert n_strong > 200 and cores > 50
    assert comp >= 0.95
    assert fp < 2e-5
    assert hit == 0
    # repaired pixels: the CR charge is gone (within the noise of the stars and sky under it)
    rep = flagged & (s["pix"] < 1e5)
    resid = (sub[rep] + SKY) - s["expected"][rep] - SKY
    assert np.median(np.abs(resid)) < 3 * np.median(sigma[rep])


def test_no_cosmic_rays_no_flags_and_a_hot_pixel_is_found():
    s = _scene(400, 0.5, 0.0, seed=9)
    sub, mask, n, _ = _detect(s)
    assert n == 0 and not (mask & CR).any()
    s["pix"][200, 100] += 3000.0                     # one sharp pixel: the narrowest cosmic ray
    sub, mask, n, _ = _detect(s)
    assert mask[200, 100] & CR and n <= 9
    assert abs(sub[200, 100]) < 5 * np.sqrt(SKY + RN ** 2)


def test_neighbour_ratios_and_config_checks():
    ax, dg, p_ax, p_dg = neighbour_ratios(2.5)
    assert ax == pytest.approx(0.662, abs=2e-3) and dg == pytest.approx(ax * ax)
    assert p_ax == pytest.approx(0.437, abs=2e-3) and p_dg == pytest.approx(p_ax * p_ax)
    assert neighbour_ratios(4.0)[0] > ax
    with pytest.raises(ValueError, match="sharpness"):
        CosmicRayConfig(sharpness=1.5)
    with pytest.raises(ValueError, match="max_iter"):
        CosmicRayConfig(max_iter=0)
    img = np.zeros((8, 8), np.float32)
    with pytest.raises(ValueError, match="variance"):
        find_cosmic_rays(img, np.zeros((8, 8)), np.zeros((8, 8), np.uint16), cr_bit=2, skip_bits=1)


def test_full_sensor_flags_every_strong_cosmic_ray():
    """A full sensor of sky at the real rate: every cosmic-ray pixel above 5 sigma flagged, few others
    (speed is `twinkles-hpc bench chain`'s, docs/level2-detect.md)."""
    rng = np.random.default_rng(1)
    pix = (SKY + rng.normal(0, np.sqrt(SKY + RN ** 2), (instrument.SENSOR_NY, instrument.SENSOR_NX))).astype(np.float32)
    crs, _ = C.simulate_cosmic_rays(0.04, 30.0, instrument.SENSOR_NX, instrument.SENSOR_NY, (1, 1, 3))
    C.add_cosmic_rays(pix, crs, 1e5)
    _, mask, n, dt = _detect({"pix": pix})
    strong = crs[crs["electrons"] > 5 * np.sqrt(SKY + RN ** 2)]
    print(f"full sensor {pix.shape}: {len(strong)} CR pixels > 5 sigma, {n} flagged in {dt:.3f} s")
    assert (mask[strong["y"], strong["x"]] & CR).all()
    assert n < 2 * len(strong)


def test_later_passes_equal_full_rescans_of_the_repaired_image():
    """A pass after the first tests only the pixels within 2 of those the pass before repaired: three
    passes in one call flag and repair exactly what three calls of one full pass each do, on a scene where
    the later passes find pixels that a brighter one hid."""
    s = _scene(600, 0.5, 4.0, seed=4)
    sub = (s["pix"] - SKY).astype(np.float32)
    var = (np.maximum(s["pix"], 0) + RN ** 2).astype(np.float32)
    mask = np.zeros(sub.shape, np.uint16)
    mask[s["pix"] >= 1e5] |= SAT
    one_call, one_mask = sub.copy(), mask.copy()
    n, passes = find_cosmic_rays(one_call, var, one_mask, CosmicRayConfig(max_iter=3), cr_bit=CR, skip_bits=SAT)
    calls, calls_mask, counts = sub.copy(), mask.copy(), []
    for _ in range(3):
        counts.append(find_cosmic_rays(calls, var, calls_mask, CosmicRayConfig(max_iter=1), cr_bit=CR,
                                       skip_bits=SAT)[0])
    assert counts[1] > 0 and n == sum(counts) and passes == 3
    assert np.array_equal(one_call, calls) and np.array_equal(one_mask, calls_mask)


# -- the calexp stage of a run, against the eimages' truth -------------------------------------------
CR_TOML = small_field_toml('bands = "r"\nmax_visits = 2', "[calexp]\nenabled = true", seed=23, galaxy_mag_limit=25.0,
                           extra="[visit]\ncosmic_ray_rate = 0.5\n")


@pytest.fixture(scope="module")
def cr_run(tmp_path_factory):
    return campaign_run(tmp_path_factory, "cosmics", CR_TOML)


def test_calexp_masks_the_true_cosmic_rays(cr_run):
    with open_read(cr_run / "truth.h5") as fh:
        stars = read_table(fh["stars"])
    calexps = sorted((cr_run / "calexp").glob("v*.h5"))
    assert len(calexps) == 2
    for path in calexps:
        with open_read(path) as c, open_read(cr_run / "visit" / path.name) as e:
            assert c.attrs["calib_ok"] and "truth" not in c
            mask, img = c["mask"][...], c["image"][...]
            crs, eimg, a = e["truth/cosmic_rays"][...], e["image"][...], dict(e.attrs)
            bg = c["background"][...]
        assert a["n_cosmic_rays"] > 20
        flagged = (mask & CR) > 0
        sat = (mask & SAT) > 0
        # the noise each pixel would have without its cosmic ray
        sigma = np.sqrt(np.maximum(eimg, 0) + RN ** 2)
        sigma[crs["y"], crs["x"]] = np.sqrt(np.maximum(eimg[crs["y"], crs["x"]] - crs["electrons"], 0) + RN ** 2)
        true = WCS(fits.Header.fromstring(a["true_wcs"]))
        sx, sy = true.all_world2pix(stars["ra"], stars["dec"], 0)
        on = (sx > 10) & (sx < 1590) & (sy > 10) & (sy < 1590)
        sx, sy, smag = sx[on], sy[on], stars["mag_r"][on]
        flux = instrument.counts_from_mag(smag, "r", a["exptime"])
        peak_snr = flux * 0.1 / np.sqrt(np.median(bg) + RN ** 2)        # a 0.7" PSF puts ~10% in its peak
        comp, n_strong, fp, cores, hit = metrics(flagged, crs, sigma, sat, (sx, sy), peak_snr)
        print(f"{path.name}: {a['n_cosmic_rays']} tracks, {len(crs)} CR px; completeness {comp:.4f} of "
              f"{n_strong}; false-positive fraction {fp:.2e}; bright star cores flagged {hit}/{cores}; "
              f"FWHM {a['fwhm_geom']:.2f}\"")
        assert n_strong > 300 and cores > 20
        assert comp >= 0.95, path.name
        assert fp < 1e-5, path.name
        assert hit == 0, path.name
        # the repaired calexp has no cosmic-ray charge left where it was flagged
        assert np.percentile(np.abs(img[flagged & ~sat]), 90) < 10 * np.sqrt(np.median(bg) + RN ** 2)
