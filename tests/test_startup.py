"""Start-up cost: what the command line, the instance-catalogue renderer and every rank of a run import, and
the astropy- and scipy.stats-free code that keeps them light writing the same bytes and numbers as before."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from astropy.io import fits
from scipy import special, stats

from twinkles_hpc.bench import imsim as bench_imsim
from twinkles_hpc.bench import startup
from twinkles_hpc.imsim import noise
from twinkles_hpc.imsim.visit import write_fits
from twinkles_hpc.imsim.wcs import SensorWCS
from twinkles_hpc.store import fitsimage

#: Never imported by `import twinkles_hpc.cli`, by the instance-catalogue renderer writing FITS, or by the stage
#: registry every rank of a run imports (each costs 0.1-0.5 s; a rank that runs a stage needing one imports it).
HEAVY = ("scipy.stats", "scipy.interpolate", "scipy.optimize", "scipy.ndimage", "astropy", "matplotlib",
         "sqlalchemy")


def _loaded(code, *argv):
    """The modules of HEAVY (and of `numpy`, `h5py`, `scipy.special`) loaded by `code` in a fresh interpreter."""
    probe = (f"import sys\n{code}\nimport json\n"
             "print(json.dumps(sorted({m for m in sys.modules for h in "
             f"{HEAVY + ('numpy', 'h5py', 'scipy.special')!r} if m == h or m.startswith(h + '.')}})))")
    r = subprocess.run([sys.executable, "-c", probe, *map(str, argv)], capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert r.returncode == 0, r.stderr
    return {m.split(".")[0] if m.startswith("astropy") else m for m in json.loads(r.stdout.splitlines()[-1])}


def test_cli_and_every_rank_import_no_heavy_package():
    mods = _loaded("import twinkles_hpc.cli as c\nc.build_parser()\nassert 'numpy' not in sys.modules\n"
                   "from twinkles_hpc.pipeline import registry")
    assert not mods & set(HEAVY), mods & set(HEAVY)


def test_imsim_to_fits_imports_no_heavy_package(tmp_path):
    """`twinkles-hpc imsim CAT -o OUT.fits` loads numpy and scipy.special (the noise table), nothing heavier:
    no astropy, no h5py, no scipy.stats."""
    cat = tmp_path / "scene.txt"
    scene = bench_imsim.make_scene(nx=96, ny=80, n_stars=20, n_galaxies=30, seed=2)
    assert bench_imsim.write_scene_catalog(cat, scene, nx=96, ny=80) >= 50
    mods = _loaded("from twinkles_hpc.cli import main\n"
                   "assert main(['imsim', sys.argv[1], '-o', sys.argv[2], '--nx', '96', '--ny', '80']) == 0",
                   cat, tmp_path / "out.fits")
    assert not mods & set(HEAVY + ("h5py",)), mods
    with fits.open(tmp_path / "out.fits") as h:
        assert h[0].data.shape == (80, 96) and h[0].header["NSOURCES"] > 0


def _wcs_cases():
    rng = np.random.default_rng(4)
    cases = [(53.0091, -27.4389, 30.0, 4000, 4072, 0.2), (0.0, 0.0, 0.0, 1, 1, 0.2), (10.0, 90.0, 0.0, 10, 10, 0.2),
             (-10.5, -90.0, 90.0, 3, 5, 10.0), (359.9999999999, 1e-300, 270.0, 16384, 16383, 1e-6),
             (123.45678901234567, -0.000001234, 1e-9, 99, 101, 0.19999999)]
    for _ in range(200):
        rot = rng.choice([rng.uniform(-360, 360), 90.0 * rng.integers(-4, 5), 45.0 * rng.integers(-8, 9)])
        cases.append((rng.uniform(-360, 360), rng.uniform(-90, 90), rot, int(rng.integers(1, 16385)),
                      int(rng.integers(1, 16385)), rng.choice([0.2, rng.uniform(1e-3, 10.0)])))
    return cases


def test_wcs_header_string_is_astropys():
    for case in _wcs_cases():
        w = SensorWCS(*case)
        assert w.header_string() == w.astropy().to_header_string(), case


@pytest.mark.parametrize("dtype,shape", [(np.float32, (80, 96)), (np.float32, (1, 1)), (np.float64, (7, 3)),
                                         (np.dtype(">f4"), (300, 20))])
def test_fits_image_is_the_file_astropy_writes(tmp_path, dtype, shape):
    rng = np.random.default_rng(5)
    pixels = rng.normal(100.0, 10.0, shape).astype(dtype)
    meta = {"visit_id": np.int64(230), "band": "r", "mjd": 59580.123456789, "exptime": 30.0, "airmass": 1.2,
            "sky_brightness": np.float64(21.2), "ra": -1.2345678901234567e-300, "dec": 1e22, "sky_e": 883.3669001801017,
            "read_noise": 8.8, "full_well": 100000, "n_saturated": 0, "seed": -7, "software": "it's twinkles-hpc"}
    hdr_string = SensorWCS(53.0, -27.4, 17.0, shape[1], shape[0], 0.2).header_string()
    write_fits(tmp_path / "ours.fits", pixels, meta, hdr_string)
    hdr = fits.Header.fromstring(hdr_string)
    for k, key in (("visit_id", "VISITID"), ("band", "FILTER"), ("mjd", "MJD-OBS"), ("exptime", "EXPTIME"),
                   ("airmass", "AIRMASS"), ("sky_brightness", "SKYBRITE"), ("ra", "RA"), ("dec", "DEC"),
                   ("sky_e", "SKYLEVEL"), ("read_noise", "RDNOISE"), ("full_well", "SATURATE"),
                   ("n_saturated", "NSATUR"), ("seed", "SEED")):
        hdr[key] = meta[k].item() if hasattr(meta[k], "item") else meta[k]
    hdr["BUNIT"], hdr["ORIGIN"] = "electron", meta["software"]
    fits.PrimaryHDU(data=pixels, header=hdr).writeto(tmp_path / "astropy.fits")
    assert (tmp_path / "ours.fits").read_bytes() == (tmp_path / "astropy.fits").read_bytes()


@pytest.mark.filterwarnings("ignore:Card is too long")
def test_fits_cards_astropy_formats_alike():
    for value in ("", "r", "a'b", "x" * 60, "y" * 68, True, False, 0, -(2 ** 62), 0.1, 1e-300, -2.5e300,
                  123456789.123456789, 1.0, 5e-324, np.float32(0.1), np.int32(-3), np.bool_(True)):
        assert fitsimage.card("KEY", value, "a comment") == str(fits.Card("KEY", value, "a comment")), value
    for bad in (float("nan"), float("inf"), "x" * 69, None):
        with pytest.raises(ValueError):
            fitsimage.card("KEY", bad)
    with pytest.raises(ValueError, match="given twice"):
        fitsimage.header_bytes(np.zeros((2, 2), np.float32), [fitsimage.card("A", 1), fitsimage.card("A", 2)])
    with pytest.raises(ValueError, match="float32 or float64"):
        fitsimage.header_bytes(np.zeros((2, 2), np.int16), [])


def test_sky_noise_table_and_cosmic_ray_charge_are_scipy_stats_numbers():
    """The noise table's Poisson PMF and the cosmic rays' Moyal inversion, now without scipy.stats, are bit for
    bit scipy.stats.poisson.pmf and scipy.stats.moyal.ppf."""
    rng = np.random.default_rng(6)
    for sky in [0.5, 883.3669001801017, 12345.678, *rng.uniform(0, 5000, 20)]:
        j = np.arange(max(0, int(sky - 15 * sky ** 0.5 - 5)), int(sky + 15 * sky ** 0.5 + 40) + 1)
        ours = np.clip(np.exp(special.xlogy(j, sky) - special.gammaln(j + 1) - sky), 0.0, 1.0)
        assert ours.tobytes() == stats.poisson.pmf(j, sky).tobytes(), sky
        kmin, pmf = noise.sky_read_noise_pmf(sky, 0.0)
        assert pmf.tobytes() == stats.poisson.pmf(np.arange(kmin, kmin + len(pmf)), sky).tobytes(), sky
    q = np.clip(np.r_[rng.random(10000), 0.0, 1.0], 1e-12, 1 - 1e-12)
    moyal = -np.log(2 * special.erfcinv(q) ** 2) * 10.0 + 75.0
    assert moyal.tobytes() == stats.moyal.ppf(q, 75.0, 10.0).tobytes()


def test_bench_startup_parses_marks_and_import_times():
    err = "\n".join(["import time: self [us] | cumulative | imported package",
                     "import time:       100 |        100 |   child", "import time:       50 |        150 | parent",
                     "#startup begin visit 1.5 40 700 numpy,h5py", "import time:       30 |         30 | late",
                     "#startup end visit 2.0 45 705 numpy,h5py,scipy.special", "#startup exit 2.1 45 705 numpy"])
    phases = startup.parse(err)
    assert [p["mark"] for p in phases] == ["begin visit", "end visit", "exit"]
    assert phases[0]["import_s"] == pytest.approx(150e-6) and phases[0]["imports"] == 2
    assert phases[1]["import_s"] == pytest.approx(30e-6) and phases[1]["heavy"][-1] == "scipy.special"
    rows = startup._phase_rows(phases)
    assert rows[0][0] == "before its first task" and rows[0][2:4] == (700, 40)
    assert rows[1] == ("first visit task", pytest.approx(30e-6), 5, 5, ["scipy.special"])
    late = "import time:       70 |         70 | sqlalchemy"
    killed = startup.parse(err.replace("#startup exit 2.1 45 705 numpy", late))
    assert killed[-1]["mark"] == "killed" and killed[-1]["modules"] is None
    assert startup._phase_rows(killed)[-1][:2] == ("later tasks, end of the run", pytest.approx(70e-6))
