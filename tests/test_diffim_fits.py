"""`twinkles-hpc diffim SCIENCE.fits TEMPLATE.fits -o DIFF.fits` (twinkles_hpc/timedomain/fitsdiff.py,
docs/diffim.md "Command line").

A synthetic pair written as FITS with TAN WCSs: 300 x 300 px, 200 Gaussian stars (fluxes log-uniform
300-2e5 ADU, pixel-integrated), template PSF sigma 1.3 px and science 1.7 px. The template's WCS puts the
same sky 3.37 px further right and 2.61 px further down in its pixels (so the warp shifts it by a
sub-pixel amount plus whole pixels) and has its own sky level; one star brightens in the science image. The
science image has GAIN / RDNOISE header keys and no variance plane (the variance comes from the pixels);
the template is deeper (a coadd) and carries VARIANCE and MASK extensions. The command runs in-process
through twinkles_hpc.cli.main.
"""
import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS
from scipy.special import ndtr

from twinkles_hpc import cli

N = 300
GAIN, RDNOISE = 2.0, 5.0                 # e-/ADU, e-
SKY_SCIENCE, SKY_TEMPLATE = 500.0, 120.0  # ADU
TEMPLATE_VAR, TEMPLATE_DEPTH = 64.0, 8.0  # the template's sky variance (ADU^2) and source-noise depth
SIGMA_TEMPLATE, SIGMA_SCIENCE = 1.3, 1.7
SHIFT = (3.37, -2.61)                    # template pixel = science pixel + SHIFT
VARIABLE = (151.0, 162.0, 2.0e4, 3.2e4)   # science pixel (a pixel centre), template and science flux (ADU)


def tan_wcs(crpix):
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [53.1, -27.8]
    w.wcs.crpix = [crpix[0] + 1, crpix[1] + 1]       # FITS 1-based
    w.wcs.cd = np.array([[-0.2, 0.0], [0.0, 0.2]]) / 3600.0
    return w


def render(x, y, flux, sigma, half=12):
    """Gaussian stars integrated over the pixels (the error function), cut at +-half px."""
    img = np.zeros((N, N))
    o = np.arange(-half, half + 1)
    for xc, yc, f in zip(x, y, flux):
        ix, iy = int(round(xc)), int(round(yc))
        xs, ys = ix + o, iy + o
        px = ndtr((xs + 0.5 - xc) / sigma) - ndtr((xs - 0.5 - xc) / sigma)
        py = ndtr((ys + 0.5 - yc) / sigma) - ndtr((ys - 0.5 - yc) / sigma)
        mx, my = (xs >= 0) & (xs < N), (ys >= 0) & (ys < N)
        img[np.ix_(ys[my], xs[mx])] += f * np.outer(py[my], px[mx])
    return img


def make_pair(tmp_path, seed=3, n_stars=200):
    rng = np.random.default_rng(seed)
    x, y = rng.uniform(-5, N + 5, n_stars), rng.uniform(-5, N + 5, n_stars)
    flux = 10 ** rng.uniform(2.5, 5.3, n_stars)
    vx, vy, vt, vs = VARIABLE
    far = np.hypot(x - vx, y - vy) > 20
    x, y, flux = np.r_[x[far], vx], np.r_[y[far], vy], np.r_[flux[far], vs]
    variable = np.zeros(x.size, bool)
    variable[-1] = True
    f_tpl = np.where(variable, vt, flux)
    yy, xx = np.mgrid[0:N, 0:N] / (N - 1.0) - 0.5
    # science (ADU): stars + a sloped sky, noise of GAIN and RDNOISE
    ms = render(x, y, flux, SIGMA_SCIENCE) + SKY_SCIENCE + 20.0 * xx - 10.0 * yy
    var_s = ms / GAIN + (RDNOISE / GAIN) ** 2
    science = ms + rng.standard_normal(ms.shape) * np.sqrt(var_s)
    # template: the same sky through its own WCS, deeper, with VARIANCE and MASK planes
    mt = render(x + SHIFT[0], y + SHIFT[1], f_tpl, SIGMA_TEMPLATE)
    var_t = mt / (GAIN * TEMPLATE_DEPTH) + TEMPLATE_VAR
    template = mt + SKY_TEMPLATE - 15.0 * yy + rng.standard_normal(mt.shape) * np.sqrt(var_t)
    mask_t = np.zeros((N, N), np.uint16)
    template[40, 250] = np.nan                  # a dead pixel, flagged
    mask_t[40, 250] = 32
    wcs_s, wcs_t = tan_wcs((149.5, 149.5)), tan_wcs((149.5 + SHIFT[0], 149.5 + SHIFT[1]))
    hs = wcs_s.to_header()
    hs["GAIN"], hs["RDNOISE"] = GAIN, RDNOISE
    sci_path, tpl_path = tmp_path / "science.fits", tmp_path / "template.fits"
    fits.PrimaryHDU(science.astype(np.float32), hs).writeto(sci_path)
    fits.HDUList([fits.PrimaryHDU(template.astype(np.float32), wcs_t.to_header()),
                  fits.ImageHDU(var_t.astype(np.float32), name="VARIANCE"),
                  fits.ImageHDU(mask_t, name="MASK")]).writeto(tpl_path)
    return dict(science=sci_path, template=tpl_path, x=x, y=y, flux=flux, variable=variable)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("diffim_fits")
    scene = make_pair(tmp)
    out = tmp / "diff.fits"
    code = cli.main(["diffim", str(scene["science"]), str(scene["template"]), "-o", str(out)])
    return scene, out, code


def test_diffim_command_writes_four_hdus(run, capsys):
    scene, out, code = run
    assert code == 0
    with fits.open(out) as hdul:
        assert [h.name for h in hdul] == ["PRIMARY", "VARIANCE", "MASK", "PSF"]
        hdr = hdul[0].header
        assert hdul[0].data.dtype.name == "float32" and hdul[0].data.shape == (N, N)
        assert hdul["MASK"].data.dtype.name == "uint16"
        assert hdr["DIFFDIR"] == "template" and hdr["NCANDUSE"] >= 12
        assert abs(hdr["KSUM"] - 1.0) < 0.02
        assert abs(hdr["FWHMSCI"] - 2.3548 * SIGMA_SCIENCE) < 0.3
        assert abs(hdr["FWHMTPL"] - 2.3548 * SIGMA_TEMPLATE) < 0.3
        assert WCS(hdr).wcs.ctype[0] == "RA---TAN"
        assert abs(hdul["PSF"].data.sum() - 1.0) < 1e-4
        diff, mask = hdul[0].data, hdul["MASK"].data
        # the template's dead pixel (BAD) lands near science pixel (246.6, 42.6); the template covers
        # no science column beyond ~296 - 3.37: NaN, NO_DATA there
        assert (mask[40:46, 244:250] & 32).any()
        assert np.isnan(diff[:, -2:]).all() and ((mask[:, -2:] & 16) != 0).all()
        assert np.isfinite(diff[30:-30, 30:-30]).mean() > 0.99


def _planes(out):
    with fits.open(out) as hdul:
        return hdul[0].data.astype(np.float64), hdul["VARIANCE"].data.astype(np.float64), hdul["PSF"].data


def test_residuals_around_constant_stars(run):
    scene, out, _ = run
    diff, var, _ = _planes(out)
    z = diff / np.sqrt(var)
    ix, iy = np.rint(scene["x"]).astype(int), np.rint(scene["y"]).astype(int)
    sel = (scene["flux"] > 1e4) & ~scene["variable"] & (ix >= 20) & (ix < N - 20) & (iy >= 20) & (iy < N - 20)
    o = np.arange(-3, 4)
    stamps = z[(iy[sel, None] + o)[:, :, None], (ix[sel, None] + o)[:, None, :]]
    stamps = stamps[np.isfinite(stamps).all((1, 2))]
    rms = float(np.sqrt(np.mean(stamps ** 2)))
    print(f"residual RMS {rms:.3f} over {len(stamps)} stamps")
    assert len(stamps) >= 20
    assert rms < 1.3


def test_variable_flux_change(run):
    scene, out, _ = run
    diff, var, psf = _planes(out)
    vx, vy, vt, vs = VARIABLE
    h = psf.shape[0] // 2
    sl = (slice(int(vy) - h, int(vy) + h + 1), slice(int(vx) - h, int(vx) + h + 1))
    p = psf.astype(np.float64)
    flux = float((diff[sl] * p).sum() / (p * p).sum())
    sigma = float(np.sqrt((var[sl] * p * p).sum()) / (p * p).sum())
    pull = (flux - (vs - vt)) / sigma
    print(f"variable: flux {flux:.0f} +- {sigma:.0f} ADU, true change {vs - vt:.0f}, pull {pull:+.2f}")
    assert abs(pull) < 4


def test_blank_sky_noise(run):
    scene, out, _ = run
    diff, var, _ = _planes(out)
    yy, xx = np.mgrid[0:N, 0:N]
    far = np.ones((N, N), bool)
    for x, y in zip(scene["x"], scene["y"]):
        x0, y0 = max(int(x) - 13, 0), max(int(y) - 13, 0)
        sl = (slice(y0, max(int(y) + 14, 0)), slice(x0, max(int(x) + 14, 0)))
        far[sl] &= np.hypot(xx[sl] - x, yy[sl] - y) > 12
    z = (diff / np.sqrt(var))[far & np.isfinite(diff)]
    print(f"blank sky: {z.size} px, mean {z.mean():+.3f}, std {z.std():.3f}")
    assert z.size > 5000
    assert abs(z.mean()) < 0.1
    assert 0.9 < z.std() < 1.15


def test_rotated_rescaled_template_in_an_extension(tmp_path, capsys):
    """A template rotated by 25 deg, with 0.23" pixels, 1.3 x the science's flux units and its own sky, stored
    in the first extension (empty primary HDU) with a VARIANCE extension: the warp leaves the science
    image's corners without template; the kernel sum is the units' ratio."""
    rng = np.random.default_rng(4)
    x, y = rng.uniform(-5, N + 5, 200), rng.uniform(-5, N + 5, 200)
    flux = 10 ** rng.uniform(2.5, 5.3, 200)
    wcs_s = tan_wcs((149.5, 149.5))
    wcs_t = WCS(naxis=2)
    wcs_t.wcs.ctype, wcs_t.wcs.crval, wcs_t.wcs.crpix = ["RA---TAN", "DEC--TAN"], [53.1005, -27.8003], [140.3, 151.7]
    c, s_ = np.cos(np.radians(25.0)), np.sin(np.radians(25.0))
    wcs_t.wcs.cd = 0.23 / 3600 * np.array([[-c, s_], [s_, c]])
    xt, yt = wcs_t.wcs_world2pix(*wcs_s.wcs_pix2world(x, y, 0), 0)
    ms = render(x, y, flux, SIGMA_SCIENCE) + SKY_SCIENCE
    science = ms + rng.standard_normal(ms.shape) * np.sqrt(ms / GAIN + (RDNOISE / GAIN) ** 2)
    mt = render(xt, yt, 1.3 * flux, SIGMA_TEMPLATE)
    var_t = mt / 16 + 1.69 * TEMPLATE_VAR
    template = mt + SKY_TEMPLATE + rng.standard_normal(mt.shape) * np.sqrt(var_t)
    hs = wcs_s.to_header()
    hs["GAIN"], hs["RDNOISE"] = GAIN, RDNOISE
    fits.PrimaryHDU(science.astype(np.float32), hs).writeto(tmp_path / "s.fits")
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(template.astype(np.float32), wcs_t.to_header(), name="SCI"),
                  fits.ImageHDU(var_t.astype(np.float32), name="VARIANCE")]).writeto(tmp_path / "t.fits")
    out = tmp_path / "d.fits"
    assert cli.main(["diffim", str(tmp_path / "s.fits"), str(tmp_path / "t.fits"), "-o", str(out)]) == 0
    with fits.open(out) as hdul:
        hdr, diff, var, mask = hdul[0].header, hdul[0].data, hdul["VARIANCE"].data, hdul["MASK"].data
    assert abs(hdr["KSUM"] - 1 / 1.3) < 0.01
    assert np.isnan(diff[0, 0]) and mask[0, 0] & 16                  # a corner the template misses
    z = diff / np.sqrt(var)
    print(f"rotated template: kernel sum {hdr['KSUM']:.4f}, finite {np.isfinite(z).mean():.2f}, "
          f"std {np.nanstd(z):.3f}")
    assert np.isfinite(z).mean() > 0.7 and 0.9 < np.nanstd(z[np.abs(z) < 10]) < 1.15


# ------------------------------------------------------------------------------------------------ errors
def _one_line(capsys):
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


def test_missing_file_is_one_line_exit_2(tmp_path, capsys):
    missing = tmp_path / "nope.fits"
    tpl = tmp_path / "t.fits"
    fits.PrimaryHDU(np.zeros((10, 10), np.float32), tan_wcs((5, 5)).to_header()).writeto(tpl)
    assert cli.main(["diffim", str(missing), str(tpl), "-o", str(tmp_path / "d.fits")]) == 2
    line = _one_line(capsys)
    assert str(missing) in line and "FITS" in line
    assert not (tmp_path / "d.fits").exists()


def test_not_fits_is_one_line_exit_2(tmp_path, capsys):
    bad = tmp_path / "notes.fits"
    bad.write_text("this is not a FITS file\n" * 10)
    assert cli.main(["diffim", str(bad), str(bad), "-o", str(tmp_path / "d.fits")]) == 2
    assert str(bad) in _one_line(capsys)


def test_no_wcs_is_one_line_exit_2(tmp_path, capsys):
    plain = tmp_path / "plain.fits"
    fits.PrimaryHDU(np.ones((50, 50), np.float32)).writeto(plain)
    assert cli.main(["diffim", str(plain), str(plain), "-o", str(tmp_path / "d.fits")]) == 2
    line = _one_line(capsys)
    assert str(plain) in line and "WCS" in line


def test_no_overlap_is_one_line_exit_2(tmp_path, capsys):
    a, b = tmp_path / "a.fits", tmp_path / "b.fits"
    fits.PrimaryHDU(np.ones((64, 64), np.float32), tan_wcs((31.5, 31.5)).to_header()).writeto(a)
    fits.PrimaryHDU(np.ones((64, 64), np.float32), tan_wcs((31.5 + 500, 31.5)).to_header()).writeto(b)
    assert cli.main(["diffim", str(a), str(b), "-o", str(tmp_path / "d.fits")]) == 2
    line = _one_line(capsys)
    assert str(b) in line and "overlap" in line


def test_too_few_candidates_is_one_line_exit_2(tmp_path, capsys):
    rng = np.random.default_rng(5)
    a, b = tmp_path / "a.fits", tmp_path / "b.fits"
    for p in (a, b):
        fits.PrimaryHDU((100 + 10 * rng.standard_normal((N, N))).astype(np.float32),
                        tan_wcs((149.5, 149.5)).to_header()).writeto(p)
    assert cli.main(["diffim", str(a), str(b), "-o", str(tmp_path / "d.fits")]) == 2
    line = _one_line(capsys)
    assert str(a) in line and "kernel candidates" in line


def test_existing_output_is_kept_without_overwrite(run, tmp_path, capsys):
    scene, _, _ = run
    out = tmp_path / "diff.fits"
    out.write_bytes(b"precious")
    args = ["diffim", str(scene["science"]), str(scene["template"]), "-o", str(out)]
    assert cli.main(args) == 2
    line = _one_line(capsys)
    assert str(out) in line and "--overwrite" in line
    assert out.read_bytes() == b"precious"
    assert cli.main([*args, "--overwrite", "--spatial-order", "2", "--kernel-size", "21"]) == 0
    with fits.open(out) as hdul:
        assert hdul[0].header["SPORDER"] == 2 and hdul[0].header["KSIZE"] == 21
    assert sorted(p.name for p in tmp_path.iterdir()) == ["diff.fits"]      # no temporary left


def test_bad_option_names_it(run, tmp_path, capsys):
    scene, _, _ = run
    args = ["diffim", str(scene["science"]), str(scene["template"]), "-o", str(tmp_path / "d.fits")]
    assert cli.main([*args, "--kernel-size", "20"]) == 2
    assert "--kernel-size" in _one_line(capsys)


def test_wrong_gain_is_warned(run, tmp_path, capsys):
    """A GAIN 4 x too large makes the modelled variance 4 x too small: the command says so."""
    scene, _, _ = run
    with fits.open(scene["science"]) as hdul:
        hdul[0].header["GAIN"] = 4 * GAIN
        hdul.writeto(tmp_path / "wrong_gain.fits")
    out = tmp_path / "d.fits"
    assert cli.main(["diffim", str(tmp_path / "wrong_gain.fits"), str(scene["template"]), "-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert "warning" in err and "GAIN" in err and "wrong_gain.fits" in err
    assert fits.getheader(out)["SVARRAT"] > 2
