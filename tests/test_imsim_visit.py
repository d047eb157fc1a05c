"""A visit's geometry and photometry: WCS conventions, FITS export, and `twinkles-hpc imsim` on a PhoSim
instance catalogue (flux and position of what it renders against what the catalogue says; every bad input
one line naming it, exit 2)."""
import gzip
import os
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS
from conftest import cli

from twinkles_hpc import instrument
from twinkles_hpc.imsim.wcs import SensorWCS
from twinkles_hpc.sky.instcat import INSTCAT_OBJECT_DTYPE, write_instance_catalog

RA0, DEC0 = instrument.FIELD_RA, instrument.FIELD_DEC


@pytest.mark.parametrize("rot", [0.0, 37.0, 258.0])
def test_fast_projection_matches_astropy_wcs(rot):
    w = SensorWCS(RA0, DEC0, rot, 4000, 4072, 0.2)
    rng = np.random.default_rng(1)
    ra = RA0 + rng.uniform(-0.3, 0.3, 500) / np.cos(np.deg2rad(DEC0))
    dec = DEC0 + rng.uniform(-0.3, 0.3, 500)
    x, y = w.sky_to_pixel(ra, dec)
    xa, ya = w.astropy().all_world2pix(ra, dec, 0)
    assert np.max(np.hypot(x - xa, y - ya)) < 1e-6


def test_rotation_convention():
    """rotSkyPos = 0: north is +y, east is -x; rotSkyPos = 90: the +y axis points east."""
    for rot, (dx_e, dy_e) in [(0.0, (-1, 0)), (90.0, (0, 1))]:
        w = SensorWCS(RA0, DEC0, rot, 1000, 1000, 0.2)
        x0, y0 = w.sky_to_pixel(RA0, DEC0)
        x1, y1 = w.sky_to_pixel(RA0 + 10 / 3600 / np.cos(np.deg2rad(DEC0)), DEC0)   # 10" east
        assert (x0, y0) == pytest.approx((499.5, 499.5))
        assert ((x1 - x0) / 50, (y1 - y0) / 50) == pytest.approx((dx_e, dy_e), abs=1e-4)


def objects(rows):
    o = np.zeros(len(rows), dtype=INSTCAT_OBJECT_DTYPE)
    for i, r in enumerate(rows):
        for k, v in r.items():
            o[i][k] = v
        o[i]["sed"] = r.get("sed", "flatSED")
        o[i]["dust_rest"] = o[i]["dust_lab"] = "none"
    return o


def write_catalog(path, rows, band="r", rot=30.0):
    header = {"rightascension": RA0, "declination": DEC0, "mjd": 59580.1, "filter": "ugrizy".index(band),
              "rotskypos": rot, "seeing": 0.7, "FWHMgeom": 0.7, "vistime": 33.0, "nsnap": 2,
              "obshistid": 230, "seed": 230}
    write_instance_catalog(str(path), {k: str(v) for k, v in header.items()}, objects(rows))


def test_imsim_point_source_flux_and_position(tmp_path):
    """A flat-SED star of magNorm 18 yields counts_from_mag(18) electrons at its WCS position."""
    dec1 = DEC0 + 20 / 3600
    rows = [dict(id=1, ra=RA0, dec=dec1, mag_norm=18.0, source_type="point"),
            dict(id=2, ra=RA0 + 0.01, dec=DEC0 - 0.01, mag_norm=19.0, source_type="sersic2d",
                 major_arcsec=1.0, minor_arcsec=0.5, pa_deg=30.0, sersic_n=1.0)]
    cat = tmp_path / "instcat.txt"
    write_catalog(cat, rows)
    out = tmp_path / "eimage.fits"
    r = cli("imsim", cat, "-o", out, "--nx", 512, "--ny", 512, "--no-noise", check=True)
    assert "2 objects" in r.stdout
    with fits.open(out) as hdul:
        img, hdr = hdul[0].data.astype(np.float64), hdul[0].header
    w = WCS(hdr)
    assert w.wcs.ctype[0] == "RA---TAN" and hdr["FILTER"] == "r" and hdr["EXPTIME"] == 30.0
    x, y = w.all_world2pix(RA0, dec1, 0)
    img -= hdr["SKYLEVEL"]
    yy, xx = np.mgrid[0:512, 0:512]
    near = np.hypot(xx - x, yy - y) < 25
    flux = img[near].sum()
    assert flux == pytest.approx(instrument.counts_from_mag(18.0, "r", 30.0), rel=0.01)
    cx, cy = (img[near] * xx[near]).sum() / flux, (img[near] * yy[near]).sum() / flux
    assert np.hypot(cx - x, cy - y) < 0.02


def test_imsim_bad_catalogue_is_one_line_exit_2(tmp_path):
    cat = tmp_path / "bad.txt"
    cat.write_text("rightascension 53.0\ndeclination -27.4\nmjd 59580\nfilter 9\nrotskypos 0\n")
    r = cli("imsim", cat, "-o", tmp_path / "x.fits")
    assert r.returncode == 2 and str(cat) in r.stderr and "filter" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "x.fits").exists()


def test_fits_export_of_a_run_visit(tmp_path):
    from twinkles_hpc.imsim.visit import export_fits, write_eimage
    from twinkles_hpc.imsim.psf import PSFModel
    w = SensorWCS(RA0, DEC0, 45.0, 64, 48, 0.2)
    pix = np.arange(64 * 48, dtype=np.float32).reshape(48, 64)
    write_eimage(str(tmp_path / "v.h5"), pix, {"visit_id": 5, "band": "g", "exptime": 30.0}, w,
                 PSFModel(0.8, nx=64, ny=48))
    export_fits(str(tmp_path / "v.h5"), str(tmp_path / "v.fits"))
    with fits.open(tmp_path / "v.fits") as hdul:
        assert np.array_equal(hdul[0].data, pix) and hdul[0].header["VISITID"] == 5
        ra, dec = WCS(hdul[0].header).all_pix2world(31.5, 23.5, 0)
    assert (float(ra), float(dec)) == pytest.approx((RA0, DEC0), abs=1e-9)


# -- bad input to `twinkles-hpc imsim`: one line naming the input, exit 2, nothing written ---------------------
IMSIM_HEADER = ("rightascension 53.0\ndeclination -27.4\nmjd 59580.1\nfilter 2\nrotskypos 30\nseeing 0.7\n"
                "vistime 33\nnsnap 2\nobshistid 230\nseed 230\n")
STAR = "object 1 53.0 -27.4 20 flatSED 0 0 0 0 0 0 point none none"
GALAXY = "object 2 53.0 -27.4 20 flatSED 0.5 0 0 0 0 0 sersic2d 1.0 0.5 30 1 none none"
LINE = IMSIM_HEADER.count("\n") + 1          # the object line's number


def _catalogue(header=IMSIM_HEADER, obj=STAR):
    return (header + obj + "\n").encode()


BAD_CATALOGUES = {   # case: (file name, bytes, what the message names after the file)
    "utf16": ("cat.txt", (IMSIM_HEADER + STAR).encode("utf-16"), ":1: text: expected UTF-8"),
    "latin1": ("cat.txt", _catalogue(obj=STAR.replace("flatSED", "flat\xe9SED")).replace(b"\xc3\xa9", b"\xe9"),
               f":{LINE}: text: expected UTF-8"),
    "fake-gzip": ("cat.txt.gz", _catalogue(), ": gzip: expected a complete gzip"),
    "truncated-gzip": ("cat.txt.gz", gzip.compress(_catalogue())[:60], ": gzip: expected a complete gzip"),
    "mag-huge": ("cat.txt", _catalogue(obj=STAR.replace(" 20 ", " 1e300 ")), f":{LINE}: object magNorm"),
    "mag-bright": ("cat.txt", _catalogue(obj=STAR.replace(" 20 ", " -100 ")), f":{LINE}: object magNorm"),
    "mag-nan": ("cat.txt", _catalogue(obj=STAR.replace(" 20 ", " nan ")), f":{LINE}: object magNorm"),
    "flux-too-high": ("cat.txt", _catalogue(obj=STAR.replace(" 20 ", " -10 ")), f":{LINE}: object 1 magNorm"),
    "kappa-1": ("cat.txt", _catalogue(obj=GALAXY.replace(" 0.5 0 0 0 ", " 0.5 0 0 1 ")), f":{LINE}: object kappa"),
    "kappa-1-point": ("cat.txt", _catalogue(obj=STAR.replace(" 0 0 0 0 0 0 ", " 0 0 0 1 0 0 ")),
                      f":{LINE}: object kappa"),
    "shear-singular": ("cat.txt", _catalogue(obj=STAR.replace(" 0 0 0 0 0 0 ", " 0 0.5 0 0.5 0 0 ")),
                       f":{LINE}: object kappa"),
    "kappa-inf": ("cat.txt", _catalogue(obj=STAR.replace(" 0 0 0 0 0 0 ", " 0 0 0 inf 0 0 ")),
                  f":{LINE}: object kappa"),
    "header-dec-100": ("cat.txt", _catalogue(IMSIM_HEADER.replace("-27.4", "100")), ":2: header declination"),
    "header-dec-1e308": ("cat.txt", _catalogue(IMSIM_HEADER.replace("-27.4", "-1e308")), ":2: header declination"),
    "header-mjd-nan": ("cat.txt", _catalogue(IMSIM_HEADER.replace("59580.1", "nan")), ":3: header mjd"),
    "header-seeing-negative": ("cat.txt", _catalogue(IMSIM_HEADER.replace("seeing 0.7", "seeing -0.7")),
                               ":6: header seeing"),
    "object-dec-1e308": ("cat.txt", _catalogue(obj=STAR.replace(" -27.4 ", " -1e308 ")), f":{LINE}: object DEC"),
    "object-ra-inf": ("cat.txt", _catalogue(obj=STAR.replace(" 53.0 ", " inf ")), f":{LINE}: object RA"),
    "major-negative": ("cat.txt", _catalogue(obj=GALAXY.replace(" 1.0 0.5 ", " -1.0 0.5 ")),
                       f":{LINE}: object sersic2d major_arcsec"),
    "minor-negative": ("cat.txt", _catalogue(obj=GALAXY.replace(" 1.0 0.5 ", " 1.0 -0.5 ")),
                       f":{LINE}: object sersic2d minor_arcsec"),
    "sersic-n-negative": ("cat.txt", _catalogue(obj=GALAXY.replace(" 30 1 ", " 30 -1 ")),
                          f":{LINE}: object sersic2d sersic_n"),
    "av-negative": ("cat.txt", _catalogue(obj=STAR.replace("none none", "none CCM -0.1 3.1")),
                    f":{LINE}: object DUST_LAB A_V"),
    "pixel-too-bright": ("cat.txt", _catalogue(obj="\n".join([STAR.replace(" 20 ", " -5 ")] * 200)),
                         ": objects: expected at most"),
    "unknown-sed": ("cat.txt", _catalogue(obj=STAR.replace("flatSED", "galaxySED/Burst.spec.gz")),
                    f":{LINE}: object 1 SEDFILE"),
    "redshift-25": ("cat.txt", _catalogue(obj=GALAXY.replace(" 0.5 0 0 0 ", " 25 0 0 0 ")),
                    f":{LINE}: object 2 redshift"),
    "redshift-negative": ("cat.txt", _catalogue(obj=GALAXY.replace(" 0.5 0 0 0 ", " -0.5 0 0 0 ")),
                          f":{LINE}: object 2 redshift"),
}


def _imsim(capsys, *args):
    from twinkles_hpc.cli import main
    code = main(["imsim", *map(str, args)])
    out = capsys.readouterr()
    return code, [ln for ln in out.err.splitlines() if ln.strip()]


@pytest.mark.parametrize("case", sorted(BAD_CATALOGUES))
def test_imsim_bad_catalogue_is_one_line_naming_file_and_field(tmp_path, capsys, case):
    name, data, names = BAD_CATALOGUES[case]
    cat = tmp_path / name
    cat.write_bytes(data)
    code, err = _imsim(capsys, cat, "-o", tmp_path / "out.fits", "--nx", 64, "--ny", 64)
    assert code == 2 and len(err) == 1, err
    assert f"{cat}{names}" in err[0], err[0]
    assert sorted(os.listdir(tmp_path)) == [name]


@pytest.mark.parametrize("option,value", [
    ("--nx", "0"), ("--nx", "-5"), ("--ny", "100000"), ("--nx", "abc"), ("--nx", "64.5"),
    ("--sky-mag", "nan"), ("--sky-mag", "inf"), ("--sky-mag", "-50"), ("--exptime", "nan"), ("--exptime", "-1"),
    ("--exptime", "1e300"), ("--fwhm", "inf"), ("--fwhm", "0"), ("--fwhm", "1000"), ("--seed", "1" + "0" * 30),
    ("--seed", "nan"), ("-o", "out.txt"), ("-o", "."),
])
def test_imsim_bad_option_is_one_line_naming_it(tmp_path, capsys, option, value):
    cat = tmp_path / "cat.txt"
    cat.write_bytes(_catalogue())
    args = {"-o": str(tmp_path / "out.fits"), "--nx": "64", "--ny": "64"}
    args[option] = str(tmp_path) if value == "." else str(tmp_path / value) if option == "-o" else value
    code, err = _imsim(capsys, cat, *(x for kv in args.items() for x in kv))
    assert code == 2 and len(err) == 1, err
    assert f"imsim: {option}: expected" in err[0] and repr(args[option]) in err[0], err[0]
    assert os.listdir(tmp_path) == ["cat.txt"]


def test_imsim_renders_the_example_of_docs_instcat(tmp_path, capsys):
    """The complete catalogue in docs/instcat.md renders, with both objects on a 512 x 512 sensor."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "instcat.md").read_text()
    start = text.index("\n```\n", text.index("Example: a whole catalogue")) + 5
    example = text[start:text.index("```", start)]
    assert example.startswith("rightascension ") and example.count("\nobject ") == 2
    cat = tmp_path / "example.txt"
    cat.write_text(example)
    from twinkles_hpc.cli import main
    assert main(["imsim", str(cat), "-o", str(tmp_path / "example.fits"), "--nx", "512", "--ny", "512"]) == 0
    assert "2 objects (2 on the sensor)" in capsys.readouterr().out
    with fits.open(tmp_path / "example.fits") as hdul:
        assert hdul[0].header["FILTER"] == "r" and hdul[0].header["NSOURCES"] == 2


def test_imsim_seed_written_as_a_float_and_under_its_alias(tmp_path, capsys):
    for header in (IMSIM_HEADER.replace("seed 230", "seed 230.0"), IMSIM_HEADER.replace("seed 230", "SIM_SEED 230")):
        (tmp_path / "cat.txt").write_bytes(_catalogue(header))
        code, err = _imsim(capsys, tmp_path / "cat.txt", "-o", tmp_path / "out.fits", "--nx", 64, "--ny", 64)
        assert code == 0 and err == []


def test_imsim_missing_or_directory_catalogue(tmp_path, capsys):
    for cat in (tmp_path / "nope.txt", tmp_path):
        code, err = _imsim(capsys, cat, "-o", tmp_path / "out.fits", "--nx", 64, "--ny", 64)
        assert code == 2 and err == [f"twinkles-hpc: error: {cat}: instance catalogue: expected an existing file"]
    assert os.listdir(tmp_path) == []


def test_imsim_fuzzed_catalogues_exit_0_or_one_line_2(tmp_path, capsys):
    """Random token swaps, byte flips, truncations (plain and gzip) and random bytes: a rendered image or
    exit 2 with one line naming the catalogue and nothing written; never a traceback."""
    import random
    rng = random.Random(5)
    good = _catalogue(obj=GALAXY.replace("flatSED", "twinkles/gal_old").replace("none none", "CCM 0.1 3.1 none"))
    tokens = ["nan", "inf", "-1e308", "1e308", "0", "-1", "1e-320", "x", "\xe9", "9" * 25]
    for k in range(60):
        mode = k % 5
        if mode == 0:
            words = good.decode().split(" ")
            i = rng.randrange(len(words))
            words[i] = rng.choice(tokens) + ("\n" if words[i].endswith("\n") else "")
            data = " ".join(words).encode()
        elif mode == 1:
            data = good[:rng.randrange(len(good))]
        elif mode == 2:
            b = bytearray(good)
            b[rng.randrange(len(b))] = rng.randrange(256)
            data = bytes(b)
        elif mode == 3:
            data = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))
        else:
            z = gzip.compress(good)
            data = z[:rng.randrange(len(z))]
        cat = tmp_path / (f"c{k}.txt" + (".gz" if mode == 4 else ""))
        cat.write_bytes(data)
        out = tmp_path / f"o{k}.fits"
        code, err = _imsim(capsys, cat, "-o", out, "--nx", 32, "--ny", 32)
        assert (code, err, out.exists()) == (0, [], True) or (
            code == 2 and len(err) == 1 and str(cat) in err[0] and not out.exists()), (k, code, err)
