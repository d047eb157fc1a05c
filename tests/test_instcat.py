"""PhoSim instance catalogues: a realistic sample, includes, round trips and one-line errors."""
import gzip
import os

import numpy as np
import pytest

from twinkles_hpc.errors import InputError
from twinkles_hpc.sky.instcat import (INSTCAT_OBJECT_DTYPE, OBJECT_RANGES, InstanceCatalog,
                                      read_instance_catalog, write_instance_catalog)

HEADER = """\
# Twinkles-style instance catalogue, CatSim output for obsHistID 230
rightascension 53.0091385
declination -27.4389488
mjd 59580.13974597
altitude 66.3461427
azimuth 270.5432934
filter 2
rotskypos 256.7507532
rottelpos -42.5839722
dist2moon 124.2838277
moonalt -36.1323801
moondec -23.0231382
moonphase 3.8193650
moonra 256.4631380
nsnap 2
obshistid 230
seed 230
seeing 1.0307
FWHMeff 1.0307
FWHMgeom 0.8992
sunalt -32.7358290
vistime 33.0000000
minsource 100
camconfig 1
"""
OBJECTS = """\

object 992887068676 53.0086841 -27.4427303 22.1054537 starSED/phoSimMLT/lte031-4.5-1.0a+0.4.BT-Settl.spec.gz 0 0 0 0 0 0 point none CCM 0.0240888 3.1
object 1007217012868 52.9951217 -27.4303120 18.6543211 starSED/kurucz/km20_6000.fits_g10_6020.gz 0 0 0 0 0 0 point none CCM 0.0242117 3.1
# bulge and disk of one galaxy
object 34307989098524 53.0223161 -27.4419652 24.3818 galaxySED/Burst.25E09.02Z.spec.gz 0.4963 -0.0012 0.0034 0.0021 0 0 sersic2d 0.7654 0.5132 35.2 4 CCM 0.1 3.1 CCM 0.0241 3.1
object 34307989098526 53.0223161 -27.4419652 23.97 galaxySED/Inst.80E09.25Z.spec.gz 0.4963 -0.0012 0.0034 0.0021 0 0 sersic2d 1.2 0.9 35.2 1 ccm 0.3 3.1 CCM 0.0241 3.1
object 34307989098527 53.0223161 -27.4419652 25.1 agnSED/agn.spec.gz 0.4963 -0.0012 0.0034 0.0021 0 0 point none CCM 0.0241 3.1
includeobj knots.txt.gz
"""
KNOTS = """\
# included objects
object 5001 53.01 -27.44 26.5 galaxySED/Exp.40E08.02Z.spec.gz 1.1 0 0 0 1.5e-07 -2e-07 sersic2d 0.3 0.2 -12.5 1 none none
"""


def write(tmp_path, name, text, gz=False):
    p = tmp_path / name
    if gz:
        with gzip.open(p, "wt") as f:
            f.write(text)
    else:
        p.write_text(text)
    return str(p)


@pytest.fixture
def sample(tmp_path):
    write(tmp_path, "knots.txt.gz", KNOTS, gz=True)
    return write(tmp_path, "phosim_cat_230.txt", HEADER + OBJECTS)


def test_read_sample(sample):
    cat = read_instance_catalog(sample)
    assert cat.path == sample
    assert list(cat.header)[:3] == ["rightascension", "declination", "mjd"]
    assert cat.header["camconfig"] == "1" and cat.header["moonphase"] == "3.8193650"
    assert (cat.ra, cat.dec, cat.mjd, cat.rot_sky_pos) == (53.0091385, -27.4389488, 59580.13974597, 256.7507532)
    assert cat.band == "r" and cat.obshistid == 230 and cat.nsnap == 2
    assert cat.seeing_fwhm == 0.8992 and cat.exptime == 30.0
    o = cat.objects
    assert o.dtype == INSTCAT_OBJECT_DTYPE and len(o) == 6
    assert list(o["source_type"]) == ["point"] * 2 + ["sersic2d"] * 2 + ["point", "sersic2d"]
    assert o["id"][2] == 34307989098524 and o["sed"][1] == "starSED/kurucz/km20_6000.fits_g10_6020.gz"
    g = o[2]
    assert (g["redshift"], g["gamma1"], g["gamma2"], g["kappa"]) == (0.4963, -0.0012, 0.0034, 0.0021)
    assert (g["major_arcsec"], g["minor_arcsec"], g["pa_deg"], g["sersic_n"]) == (0.7654, 0.5132, 35.2, 4.0)
    assert (g["dust_rest"], g["av_rest"], g["rv_rest"], g["dust_lab"], g["av_lab"]) == ("CCM", 0.1, 3.1, "CCM", 0.0241)
    assert o["dust_rest"][3] == "CCM" and o["dust_rest"][0] == "none" and o["av_rest"][0] == 0.0
    k = o[5]                                     # from the gzipped include
    assert k["id"] == 5001 and k["dra"] == 1.5e-07 and k["dust_lab"] == "none" and k["pa_deg"] == -12.5


def test_comments_blank_lines_and_minimal_header(tmp_path):
    p = write(tmp_path, "min.txt", "\n# c\nrightascension 1\n\n   \ndeclination -2\n#object 1 2 3\nmjd 60000\n"
              "filter 0\nrotskypos 10\n# end\n")
    cat = read_instance_catalog(p)
    assert len(cat.objects) == 0 and list(cat.header) == ["rightascension", "declination", "mjd", "filter",
                                                           "rotskypos"]
    assert cat.band == "u" and cat.seeing_fwhm is None and cat.obshistid is None
    assert cat.exptime == 30.0                    # PhoSim defaults: vistime 33, nsnap 2


def test_old_style_header_keys(tmp_path):
    p = write(tmp_path, "run1.txt", "Unrefracted_RA_deg 53.0091\nUnrefracted_Dec_deg -27.4389\n"
              "Opsim_expmjd 59580.1\nOpsim_filter 5\nOpsim_rotskypos 26.0\nOpsim_obshistid 1668469\n"
              "Opsim_rawseeing 0.7\nSIM_VISTIME 30.0\nSIM_NSNAP 1\n")
    cat = read_instance_catalog(p)
    assert (cat.ra, cat.band, cat.obshistid, cat.seeing_fwhm, cat.exptime) == (53.0091, "y", 1668469, 0.7, 30.0)


def random_objects(n, rng):
    """Random mantissas and exponents (down to 1e-300) within each field's allowed range."""
    o = np.zeros(n, INSTCAT_OBJECT_DTYPE)
    for name in INSTCAT_OBJECT_DTYPE.names:
        if INSTCAT_OBJECT_DTYPE[name].kind == "f":
            lo, hi = OBJECT_RANGES.get(name[:2] if name[:3] in ("av_", "rv_") else name, (-0.1, 0.1))[:2]
            if name == "redshift":
                lo, hi = -1e300, 1e300
            sign = np.where(rng.random(n) < 0.5, lo, hi) if lo < 0 else hi
            o[name] = sign * (1.0 - rng.random(n)) * 10.0 ** -rng.integers(0, 300, n)
    o["id"] = rng.integers(-2 ** 63, 2 ** 63 - 1, n, dtype=np.int64)
    o["ra"][:3] = [1 / 3, -0.0, 5e-324][:n]
    o["sed"] = [f"galaxySED/sed_{i}.spec.gz" for i in range(n)]
    o["source_type"] = np.where(np.arange(n) % 2, "sersic2d", "point")
    point = o["source_type"] == "point"
    for name in ("major_arcsec", "minor_arcsec", "pa_deg", "sersic_n"):
        o[name][point] = 0.0
    for which in ("rest", "lab"):
        o[f"dust_{which}"] = rng.choice(["none", "CCM", "calzetti"], n)
        none = o[f"dust_{which}"] == "none"
        o[f"av_{which}"][none] = o[f"rv_{which}"][none] = 0.0
    return o


def assert_bit_equal(a, b):
    assert a.dtype == b.dtype and a.shape == b.shape
    for name in a.dtype.names:
        x, y = a[name], b[name]
        if x.dtype.kind == "f":
            x, y = x.view(np.int64), y.view(np.int64)
        assert np.array_equal(x, y), name


@pytest.mark.parametrize("name", ["rt.txt", "rt.txt.gz"])
def test_round_trip(tmp_path, name):
    rng = np.random.default_rng(3)
    objects = random_objects(200, rng)
    header = {"rightascension": "53.0091385", "declination": "-27.4389488", "mjd": "59580.13974597",
              "filter": "4", "rotskypos": "256.7507532", "FWHMgeom": "0.8992", "SEDDIR": "../data",
              "clearperturbations": ""}
    path = str(tmp_path / name)
    write_instance_catalog(path, header, objects)
    assert os.listdir(tmp_path) == [name]          # no temporary file left behind
    cat = read_instance_catalog(path)
    assert cat.header == header and list(cat.header) == list(header)
    assert_bit_equal(cat.objects, objects)
    write_instance_catalog(path, cat.header, cat.objects)
    assert_bit_equal(read_instance_catalog(path).objects, objects)


def test_write_numeric_header_and_sample_round_trip(sample, tmp_path):
    cat = read_instance_catalog(sample)
    out = str(tmp_path / "copy.txt")
    write_instance_catalog(out, dict(cat.header, mjd=59580.13974597, filter=2), cat.objects)
    back = read_instance_catalog(out)
    assert back.mjd == cat.mjd and back.band == "r" and back.header["mjd"] == "59580.13974597"
    assert_bit_equal(back.objects, cat.objects)


def test_write_rejects_bad_objects(tmp_path):
    o = random_objects(2, np.random.default_rng(1))
    o["source_type"][0] = "gauss"
    with pytest.raises(ValueError, match="source_type"):
        write_instance_catalog(str(tmp_path / "x.txt"), {"filter": 1}, o)
    o = random_objects(2, np.random.default_rng(1))
    o["ra"][1] = np.nan
    with pytest.raises(ValueError, match="finite"):
        write_instance_catalog(str(tmp_path / "x.txt"), {"filter": 1}, o)
    assert os.listdir(tmp_path) == []


GOOD = OBJECTS.splitlines()[1]


@pytest.mark.parametrize("line,field", [
    (GOOD.replace(" point ", " gaussian "), "object SOURCETYPE"),
    (GOOD.replace(" point ", " point 0.4 "), "object point parameters"),
    (GOOD.replace(" point ", " sersic2d 1 0.5 30 "), "object sersic2d parameters"),
    (GOOD.replace(" point ", " sersic2d 1 0.5 3O 4 "), "object sersic2d pa_deg"),
    (GOOD.replace(" 22.1054537 ", " 22.1o54 "), "object magNorm"),
    (GOOD.replace(" 992887068676 ", " star7 "), "object ID"),
    (GOOD.replace(" -27.4427303 ", " nan "), "object DEC"),
    (GOOD.replace(" 3.1", ""), "object DUST_LAB parameters"),
    (GOOD.replace(" none ", " fitzpatrick "), "object DUST_REST"),
    (GOOD + " 7", "object"),
    ("object 1 2 3", "object"),
    ("includeobj missing.txt.gz", "includeobj"),
    ("filter 1", "header filter"),
])
def test_object_line_errors(tmp_path, line, field):
    p = write(tmp_path, "bad.txt", HEADER + "\n" + line + "\n")
    lineno = HEADER.count("\n") + 2
    with pytest.raises(InputError) as e:
        read_instance_catalog(p)
    msg = str(e.value)
    assert msg.startswith(f"{p}:{lineno}: {field}: expected"), msg
    assert "\n" not in msg


@pytest.mark.parametrize("old,new,field,expect", [
    ("filter 2", "filter 6", "header filter", "0-5"),
    ("filter 2", "filter r", "header filter", "integer"),
    ("mjd 59580.13974597", "mjd yesterday", "header mjd", "number"),
    ("FWHMgeom 0.8992", "FWHMgeom -1", "header FWHMgeom", "positive"),
    ("nsnap 2", "nsnap 0", "header nsnap", ">= 1"),
])
def test_header_value_errors(tmp_path, old, new, field, expect):
    text = HEADER.replace(old, new)
    p = write(tmp_path, "bad.txt", text)
    lineno = text.splitlines().index(new) + 1
    with pytest.raises(InputError, match=f"^{p}:{lineno}: {field}: expected .*{expect}"):
        read_instance_catalog(p)


@pytest.mark.parametrize("key", ["rightascension", "declination", "mjd", "filter", "rotskypos"])
def test_missing_required_header(tmp_path, key):
    text = "".join(ln + "\n" for ln in HEADER.splitlines() if not ln.startswith(key + " "))
    p = write(tmp_path, "bad.txt", text)
    with pytest.raises(InputError, match=f"^{p}:{text.count(chr(10))}: header {key}: expected a required"):
        read_instance_catalog(p)


def test_error_inside_include_names_the_included_file(tmp_path):
    inc = write(tmp_path, "inc.txt.gz", "# x\n" + GOOD.replace(" point ", " sersic2d 1 2 "), gz=True)
    p = write(tmp_path, "main.txt", HEADER + "includeobj inc.txt.gz\n")
    with pytest.raises(InputError, match=f"^{inc}:2: object sersic2d parameters: expected 4 parameters"):
        read_instance_catalog(p)
    write(tmp_path, "inc.txt.gz", "filter 3\n", gz=True)
    with pytest.raises(InputError, match=f"^{inc}:1: line: expected object or includeobj"):
        read_instance_catalog(p)
    write(tmp_path, "inc.txt.gz", "includeobj ../" + os.path.basename(tmp_path) + "/inc.txt.gz\n", gz=True)
    with pytest.raises(InputError, match="include cycle"):
        read_instance_catalog(p)


def test_duplicate_header_key_and_missing_file(tmp_path):
    p = write(tmp_path, "dup.txt", HEADER + "Opsim_filter 3\n")
    with pytest.raises(InputError, match=f"^{p}:{HEADER.count(chr(10)) + 1}: header Opsim_filter: .*line 7"):
        read_instance_catalog(p)
    with pytest.raises(InputError, match="nope.txt: instance catalogue: expected an existing file"):
        read_instance_catalog(str(tmp_path / "nope.txt"))


def test_hand_built_catalog_properties():
    cat = InstanceCatalog({"filter": "3", "vistime": "30", "nsnap": "1"}, np.zeros(0, INSTCAT_OBJECT_DTYPE))
    assert cat.band == "i" and cat.exptime == 30.0
    with pytest.raises(InputError, match="header rightascension: expected a required"):
        cat.ra


@pytest.mark.parametrize("old,new,field,expect", [
    ("declination -27.4389488", "declination 100", "header declination", r"\[-90, 90\] deg"),
    ("declination -27.4389488", "declination -1e308", "header declination", r"\[-90, 90\] deg"),
    ("rotskypos 256.7507532", "rotskypos 1e300", "header rotskypos", r"\[-360, 360\] deg"),
    ("FWHMgeom 0.8992", "FWHMgeom 20", "header FWHMgeom", "positive number up to 10 arcsec"),
    ("vistime 33.0000000", "vistime 1e9", "header vistime", "up to 3600 s"),
    ("moonphase 3.8193650", "moonphase -3", "header moonphase", r"\[0, 100\] percent"),
])
def test_header_ranges(tmp_path, old, new, field, expect):
    text = HEADER.replace(old, new)
    p = write(tmp_path, "bad.txt", text)
    lineno = text.splitlines().index(new) + 1
    with pytest.raises(InputError, match=f"^{p}:{lineno}: {field}: expected .*{expect}"):
        read_instance_catalog(p)


@pytest.mark.parametrize("line,field", [
    (GOOD.replace(" 22.1054537 ", " -11 "), "object magNorm"),
    (GOOD.replace(" 22.1054537 ", " 101 "), "object magNorm"),
    (GOOD.replace(" -27.4427303 ", " -90.5 "), "object DEC"),
    (GOOD.replace(" 0 0 0 0 0 0 point ", " 0 0 0 1 0 0 point "), "object kappa, gamma1, gamma2"),
    (GOOD.replace(" 0 0 0 0 0 0 point ", " 0 0.6 0.8 0 0 0 point "), "object kappa, gamma1, gamma2"),
    (GOOD.replace(" 0 0 0 0 0 0 point ", " 0 0 0 0 0.5 0 point "), "object deltaRA"),
    (GOOD.replace(" point ", " sersic2d 0 0.5 30 4 "), "object sersic2d major_arcsec"),
    (GOOD.replace(" point ", " sersic2d 1 -0.5 30 4 "), "object sersic2d minor_arcsec"),
    (GOOD.replace(" point ", " sersic2d 1 0.5 30 0 "), "object sersic2d sersic_n"),
    (GOOD.replace(" 3.1", " -3.1"), "object DUST_LAB R_V"),
])
def test_object_ranges(tmp_path, line, field):
    p = write(tmp_path, "bad.txt", HEADER + "\n" + line + "\n")
    with pytest.raises(InputError) as e:
        read_instance_catalog(p)
    assert str(e.value).startswith(f"{p}:{HEADER.count(chr(10)) + 2}: {field}: expected"), str(e.value)


def test_encoding_and_gzip_errors_name_the_file(tmp_path):
    p = tmp_path / "bom.txt"
    p.write_bytes(b"\xef\xbb\xbf" + HEADER.encode())          # a UTF-8 byte-order mark is ignored
    assert read_instance_catalog(str(p)).ra == 53.0091385
    p.write_bytes(HEADER.encode() + b"object \xff\n")
    with pytest.raises(InputError, match=f"^{p}:{HEADER.count(chr(10)) + 1}: text: expected UTF-8 text, got "
                       "'byte 0xff at column 8'"):
        read_instance_catalog(str(p))
    for data in (HEADER.encode(), gzip.compress(HEADER.encode())[:-12]):
        g = tmp_path / "cat.txt.gz"
        g.write_bytes(data)
        with pytest.raises(InputError, match=f"^{g}: gzip: expected a complete gzip-compressed file"):
            read_instance_catalog(str(g))


def test_origins_and_seed(sample):
    cat = read_instance_catalog(sample)
    lines = (HEADER + OBJECTS).splitlines()
    assert cat.origin(0) == f"{sample}:{lines.index(GOOD) + 1}"
    assert cat.origin(5) == f"{os.path.dirname(sample)}/knots.txt.gz:2" and cat.seed == 230
    assert InstanceCatalog({"SIM_SEED": "7.0"}, np.zeros(0, INSTCAT_OBJECT_DTYPE)).seed == 7
