"""A visit's geometry and photometry: WCS conventions, FITS export, and `twinkles-hpc imsim` on a PhoSim
instance catalogue (flux and position of what it renders against what the catalogue says)."""
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
