"""The variable sky in a run: truth tables, rendering at each visit's MJD, instance catalogues."""
import numpy as np
import pytest
from conftest import TINY_TOML, cli

from twinkles_hpc import config, instrument
from twinkles_hpc.imsim.visit import VisitSpec, simulate_visit
from twinkles_hpc.store.atomic import open_read
from twinkles_hpc.store.tables import read_table


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("var")
    cfg = d / "tiny.toml"
    cfg.write_text(TINY_TOML.replace("[visit]\n", "[visit]\ninstcat = true\n"))
    cli("run", cfg, "-o", d / "run", check=True)
    return cfg, d / "run"


def tables(rundir):
    with open_read(rundir / "truth.h5") as fh:
        return {k: read_table(fh[k]) for k in fh}


def test_truth_holds_sources_parameters_and_per_visit_fluxes(run):
    _, rundir = run
    t = tables(rundir)
    sne, systems, images, v = t["supernovae"], t["lens_systems"], t["lensed_images"], t["variables"]
    assert len(sne) > 0 and len(systems) > 0 and len(images) >= 2 * len(systems)
    assert len(v) == len(sne) + len(images) and np.all(np.diff(v["source_id"]) > 0)
    with open_read(rundir / "variables" / "truth-0000.h5") as fh:
        rows = read_table(fh["truth"])
    visits = t["visits"]
    # every lensed image has a row in every visit; supernovae only while they shine
    img_rows = rows[np.isin(rows["source_id"], images["image_id"])]
    assert len(img_rows) == len(images) * len(visits)
    # a high-redshift quasar has no flux blueward of its Lyman break: inf mag, zero flux
    assert np.all(np.isfinite(img_rows["mag"]) | (img_rows["flux_njy"] == 0))
    assert np.isfinite(img_rows["mag"]).mean() > 0.9
    sn_rows = rows[np.isin(rows["source_id"], sne["id"])]
    assert np.all(np.isfinite(sn_rows["mag"]))
    np.testing.assert_allclose(rows["flux_njy"], 10 ** (-0.4 * (rows["mag"] - 31.4)))
    # images of one system vary together, shifted by their delays: equal mean-subtracted variance scale
    s0 = images[images["sys_id"] == systems["sys_id"][0]]
    m = [img_rows["mag"][img_rows["source_id"] == i] for i in s0["image_id"]]
    dmean = np.mean(m[0]) - np.mean(m[1])
    assert dmean == pytest.approx(-2.5 * np.log10(abs(s0["mag"][0]) / abs(s0["mag"][1])), abs=0.5)


def test_visit_renders_variables_at_their_truth_flux(run, tmp_path):
    """Noise-free render with and without the variable sources: the difference holds exactly the
    truth flux (electrons) of the variables on the sensor."""
    cfgpath, rundir = run
    cfg = config.load(cfgpath)
    cfg.visit.noise = False
    t = tables(rundir)
    with open_read(rundir / "variables" / "truth-0000.h5") as fh:
        rows = read_table(fh["truth"])
    # the visit with the most supernova light
    sn_rows = rows[np.isin(rows["source_id"], t["supernovae"]["id"])]
    vid = np.bincount(sn_rows["visit_id"] - sn_rows["visit_id"].min()).argmax() + sn_rows["visit_id"].min()
    visit = t["visits"][t["visits"]["visit_id"] == vid][0]
    spec = VisitSpec.from_row(visit)
    from twinkles_hpc.pipeline.context import RunContext
    from twinkles_hpc.pipeline.stages.variables import visit_variable_mags
    mags = visit_variable_mags(RunContext(cfg, str(rundir), t["visits"]), 0, spec.visit_id, t["variables"])
    assert np.isfinite(mags).sum() > 0
    imgs = []
    for with_var in (True, False):
        out = tmp_path / f"{with_var}.h5"
        simulate_visit(spec, t["stars"], t["galaxies"], cfg, str(out), str(tmp_path / "ck.h5"),
                       variables=t["variables"] if with_var else None, var_mags=mags if with_var else None)
        with open_read(out) as fh:
            imgs.append(fh["image"][...].astype(np.float64))
    diff = imgs[0] - imgs[1]
    from twinkles_hpc.imsim.wcs import SensorWCS
    w = SensorWCS(spec.ra, spec.dec, spec.rot_sky_pos, cfg.sensor.nx, cfg.sensor.ny, cfg.sensor.pixel_scale)
    x, y = w.sky_to_pixel(t["variables"]["ra"], t["variables"]["dec"])
    inside = (x > 20) & (x < cfg.sensor.nx - 21) & (y > 20) & (y < cfg.sensor.ny - 21) & np.isfinite(mags)
    near_edge = (x > -40) & (x < cfg.sensor.nx + 40) & (y > -40) & (y < cfg.sensor.ny + 40) & ~inside
    assert inside.any()
    if not (near_edge & np.isfinite(mags)).any():
        ext = 10 ** (-0.4 * instrument.K_ATM[spec.band] * (spec.airmass - 1))
        expected = (instrument.counts_from_mag(mags[inside], spec.band, spec.exptime) * ext).sum()
        assert diff.sum() == pytest.approx(expected, rel=2e-3, abs=1.0)
    assert np.all(diff > -1e-2)


def test_instance_catalogue_round_trip_renders_the_same_image(run, tmp_path):
    cfgpath, rundir = run
    cats = sorted((rundir / "instcat").glob("phosim_cat_*.txt"))
    assert len(cats) == 12
    from twinkles_hpc.sky.instcat import read_instance_catalog
    cat = read_instance_catalog(str(cats[0]))
    assert {"point", "sersic2d"} <= set(cat.objects["source_type"])
    # render it noise-free with the run's visit conditions and compare with the run's noise-free render
    cfg = config.load(cfgpath)
    cfg.visit.noise = False
    t = tables(rundir)
    visit = t["visits"][t["visits"]["visit_id"] == cat.obshistid][0]
    spec = VisitSpec.from_row(visit)
    from twinkles_hpc.pipeline.context import RunContext
    from twinkles_hpc.pipeline.stages.variables import visit_variable_mags
    mags = visit_variable_mags(RunContext(cfg, str(rundir), t["visits"]), 0, spec.visit_id, t["variables"])
    ref = tmp_path / "ref.h5"
    simulate_visit(spec, t["stars"], t["galaxies"], cfg, str(ref), str(tmp_path / "ck.h5"),
                   variables=t["variables"], var_mags=mags)
    out = tmp_path / "from_instcat.h5"
    cli("imsim", cats[0], "-o", out, "--nx", 256, "--ny", 256, "--no-noise",
        "--sky-mag", repr(float(spec.sky_brightness)), check=True)
    with open_read(ref) as a, open_read(out) as b:
        ia, ib = a["image"][...].astype(float), b["image"][...].astype(float)
        sky = a.attrs["sky_e"]
        assert b.attrs["sky_e"] == pytest.approx(sky)
    src = ia - sky
    # equal to float32 rounding plus the SED magnitude interpolation (< 1e-3 mag)
    assert np.abs(ia - ib).max() <= 2e-3 * src.max() + 1e-3 * sky
    assert abs((ib - sky).sum() / src.sum() - 1) < 1e-3


def test_run_sprinkles_systems_from_the_real_om10_table(tmp_path):
    from conftest import shared_file
    om10 = shared_file("twinkles_om10_lenses.fits")
    cfg = tmp_path / "om10.toml"
    cfg.write_text(TINY_TOML.replace("[lensing]\n", f"[lensing]\nsource = {str(om10)!r}\n")
                   .replace("max_visits = 12", "max_visits = 6"))
    cli("run", cfg, "-o", tmp_path / "run", check=True)
    t = tables(tmp_path / "run")
    systems, images = t["lens_systems"], t["lensed_images"]
    assert len(systems) > 0 and np.all(systems["om10_lensid"] >= 0)
    from twinkles_hpc.sky.lensing import read_om10
    table = read_om10(str(om10))
    row = table[table["LENSID"] == systems["om10_lensid"][0]][0]
    mine = np.sort(np.abs(images["mag"][images["sys_id"] == systems["sys_id"][0]]))
    assert np.allclose(mine, np.sort(np.abs(row["MAG"][:row["NIMG"]])))
    lens = t["galaxies"][t["galaxies"]["id"] == systems["lens_galaxy_id"][0]][0]
    assert lens["redshift"] == pytest.approx(row["ZLENS"]) and np.isinf(lens["disk_mag_r"])
