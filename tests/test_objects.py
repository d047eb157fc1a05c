"""The Objects stage in a run ([objects] enabled = true): per-patch multi-band detection, deblending and
measurement on the coadds, checked against the reference catalogue and the truth, bit-identical at 2 and
3 ranks."""
import hashlib
import json

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS
from conftest import MPIEXEC, cli
from scipy import ndimage
from scipy.spatial import cKDTree

from twinkles_hpc import config
from twinkles_hpc.errors import InputError
from twinkles_hpc.level2 import objects as objects_mod
from twinkles_hpc.level2.coaddpsf import CoaddPSF
from twinkles_hpc.level2.photometry import mixture_image
from twinkles_hpc.level2.masks import DETECTED
from twinkles_hpc.level2.shapes import adaptive_moments
from twinkles_hpc import rundir as rd
from twinkles_hpc.pipeline.setup import plan
from twinkles_hpc.rundir import layout
from twinkles_hpc.store.atomic import open_read
from twinkles_hpc.store.tables import read_table

pytestmark = pytest.mark.skipif(MPIEXEC is None, reason="mpiexec not found")



def objects_digest(rundir):
    d = hashlib.sha256()
    for path in sorted((rundir / "objects").glob("patch-*.h5")):
        with open_read(path) as f:
            d.update(f["objects"][...].tobytes())
    return d.hexdigest()


@pytest.fixture
def run(level2_run):
    return level2_run


def _sky_xy(wcs, ra, dec):
    x, y = wcs.all_world2pix(ra, dec, 0)
    return np.asarray(x), np.asarray(y)


def _sample(plane, x, y):
    ny, nx = plane.shape
    i, j = np.rint(x).astype(int), np.rint(y).astype(int)
    ok = (i >= 0) & (j >= 0) & (i < nx) & (j < ny)
    out = np.zeros(len(x), plane.dtype)
    out[ok] = plane[j[ok], i[ok]]
    return out


def _ap20(img, x, y):
    """20 px aperture flux minus the median of the 41 x 41 box outside it (as the coadd-stage test)."""
    yy, xx = np.mgrid[-20:21, -20:21]
    ap = xx ** 2 + yy ** 2 <= 400
    i, j = round(float(x)), round(float(y))
    cut = img[j - 20:j + 21, i - 20:i + 21]
    return cut[ap].sum() - ap.sum() * np.median(cut[~ap])


def _psf_moments(psf, x, y):
    """Adaptive moments (px^2) of the coadd PSF model at (x, y), rendered on a 41 x 41 stamp."""
    comps = psf.components_at(x, y)
    yy, xx = np.mgrid[-20:21, -20:21].astype(float)
    fx, fy = x - round(x), y - round(y)
    stamp = mixture_image(*(c[0] for c in comps), xx - fx, yy - fy)
    return [float(m[0]) for m in adaptive_moments(stamp, [20 + fx], [20 + fy])[:3]]


def test_objects_stage(run):
    cfg = rd.load_config(run)
    visits = rd.read_visits(run)
    tasks = plan(cfg, run)[1]
    otasks = [t for t in tasks if t.kind == "objects"]
    patches = {tuple(t.params["patch"]) for t in tasks if t.kind == "coadd"}
    assert {tuple(t.params["patch"]) for t in otasks} == patches and len(patches) == 9
    n_r = int((visits["band"] == "r").sum())
    with open_read(run / "refcat.h5") as f:
        ref = read_table(f["refcat"])
    with open_read(run / "truth.h5") as f:
        stars, gals = read_table(f["stars"]), read_table(f["galaxies"])
    gmag = -2.5 * np.log10(10 ** (-0.4 * gals["bulge_mag_r"]) + 10 ** (-0.4 * gals["disk_mag_r"]))
    ids, ratios, star_ext, gal_ext, found, total = [], [], [], [], 0, 0
    ps_ap, star_shapes, gal_angles = [], [], []
    for i, j in sorted(patches):
        with open_read(run / layout.objects(i, j)) as f:
            obj = read_table(f["objects"])
            assert list(f.attrs["patch"]) == [i, j]
        with open_read(run / layout.coadd("r", i, j)) as f:
            a = dict(f.attrs)
            nv, rimg = f["n_visits"][...], f["image"][...]
            psf = CoaddPSF.from_file(f)
        # the detection coadd the Objects were detected on, as a product
        coadds = {b: objects_mod._read(run / layout.coadd(b, i, j))[:2] for b in ("g", "r")}
        D, _, n_bands = objects_mod.detection_image(coadds)
        with open_read(run / layout.detection_coadd(i, j)) as f:
            assert f.attrs["band"] == "det" and list(f.attrs["bands"]) == ["g", "r"] and f.attrs["wcs"] == a["wcs"]
            assert np.array_equal(f["image"][...], np.where(n_bands == 0, np.float32(np.nan), D), equal_nan=True)
            assert np.array_equal(f["n_visits"][...], n_bands)
            dmask = f["mask"][...]
        assert (dmask[np.rint(obj["y"]).astype(int), np.rint(obj["x"]).astype(int)] & DETECTED).mean() > 0.95
        assert {"objectId", "parentObjectId", "psRa", "psDecl", "x", "y", "detect_isPrimary", "extendedness",
                "gPsFlux", "gPsFluxSigma", "rPsFlux", "rPsFluxSigma", "rApFlux"} <= set(obj.dtype.names)
        ids.append(obj["objectId"])
        kids = obj["parentObjectId"][obj["parentObjectId"] > 0]
        assert np.all((kids >> 32) == (obj["objectId"][0] >> 32)) if len(kids) else True
        wcs = WCS(fits.Header.fromstring(a["wcs"]))
        bx, by = a["bbox"][:2]
        ix, iy, pnx, pny = a["inner_bbox"]
        tx, ty = obj["x"] + bx, obj["y"] + by
        inner = (tx >= ix - 0.5) & (tx < ix + pnx - 0.5) & (ty >= iy - 0.5) & (ty < iy + pny - 0.5)
        assert np.array_equal(obj["detect_isPrimary"], inner)
        prim = obj[obj["detect_isPrimary"]]
        c = np.cos(np.deg2rad(float(np.median(prim["psDecl"]))))
        tree = cKDTree(np.column_stack([prim["psRa"] * c, prim["psDecl"]]) * 3600)

        def in_patch(ra, dec, margin=5):
            x, y = _sky_xy(wcs, ra, dec)
            return (x + bx >= ix + margin) & (x + bx < ix + pnx - margin) & (y + by >= iy + margin) \
                & (y + by < iy + pny - margin), x, y

        covered = ndimage.minimum_filter(nv, size=41) >= 1              # every pixel of a 41 px box has data
        full = ndimage.uniform_filter((nv == n_r).astype(float), size=41) >= 0.9    # all r visits there
        # completeness: truth stars r < 22 in the inner box where the coadd has data
        ins, x, y = in_patch(stars["ra"], stars["dec"])
        sel = ins & (stars["mag_r"] < 22) & _sample(covered, x, y)
        d, k = tree.query(np.column_stack([stars["ra"][sel] * c, stars["dec"][sel]]) * 3600)
        found += int((d < 0.5).sum())
        total += int(sel.sum())
        # bright isolated reference stars wholly covered by all r visits
        ins, x, y = in_patch(ref["ra"], ref["dec"], margin=20)
        allxy = np.column_stack(_sky_xy(wcs, np.r_[ref["ra"], gals["ra"][gmag < 24]],
                                        np.r_[ref["dec"], gals["dec"][gmag < 24]]))
        nn = cKDTree(allxy).query(np.column_stack([x, y]), k=2)[0][:, 1]
        sel = ins & (ref["mag_r"] > 17) & (ref["mag_r"] < 19) & (nn > 30) & _sample(full, x, y)
        d, k = tree.query(np.column_stack([ref["ra"][sel] * c, ref["dec"][sel]]) * 3600)
        assert np.all(d < 0.1), d
        ratios += list(prim["rPsFlux"][k] / 10 ** (-0.4 * (ref["mag_r"][sel] - 31.4)))
        star_ext += list(prim["extendedness"][k])
        scale2 = abs(np.linalg.det(wcs.pixel_scale_matrix)) * 3600 ** 2           # arcsec^2 per px^2
        for kk in k:
            o = prim[kk]
            ps_ap.append(o["rPsFlux"] / _ap20(rimg, o["x"], o["y"]))
            assert not o["shape_flag"]
            star_shapes.append((o["Ixx"] / scale2, o["Iyy"] / scale2, o["Ixy"] / scale2,
                                *_psf_moments(psf, o["x"], o["y"])))
        # bright galaxies
        ins, x, y = in_patch(gals["ra"], gals["dec"])
        sel = ins & (gmag < 21.5) & _sample(covered, x, y)
        d, k = tree.query(np.column_stack([gals["ra"][sel] * c, gals["dec"][sel]]) * 3600)
        gal_ext += list(prim["extendedness"][k[d < 0.3]])
        # galaxy shapes: disk-dominated, resolved and elongated; the major axis at position angle pa (east
        # of north) lies at 90 deg + pa from the patch's +x axis (west) towards +y (north)
        g = gals[sel][d < 0.3]
        o = prim[k[d < 0.3]]
        disk = (g["disk_mag_r"] < g["bulge_mag_r"] - 0.75) & (g["disk_hlr"] > 0.5) & (g["disk_q"] < 0.7) \
            & ~o["shape_flag"]
        phi = 0.5 * np.degrees(np.arctan2(2 * o["Ixy"], o["Ixx"] - o["Iyy"]))
        gal_angles += list(((phi - 90 - g["disk_pa"] + 90) % 180 - 90)[disk])
    ratios, star_ext, gal_ext = np.array(ratios), np.array(star_ext), np.array(gal_ext)
    ps_ap, st, gal_angles = np.array(ps_ap), np.array(star_shapes), np.abs(np.array(gal_angles))
    print(f"PsFlux / reference (r): {np.round(np.sort(ratios), 4).tolist()}")
    print(f"PsFlux / 20 px aperture flux on the coadd (r): {np.round(np.sort(ps_ap), 4).tolist()}")
    print(f"stars Ixx/psf, Iyy/psf, (Ixy - psf)/psf Ixx: {np.round(st[:, 0] / st[:, 3], 3).tolist()} "
          f"{np.round(st[:, 1] / st[:, 4], 3).tolist()} {np.round((st[:, 2] - st[:, 5]) / st[:, 3], 3).tolist()}")
    print(f"galaxy |position angle error| (deg, {len(gal_angles)}): median {np.median(gal_angles):.1f}, "
          f"within 30 deg {np.mean(gal_angles < 30):.2f}")
    # each ratio carries the 20 px aperture's sky noise (a few 1e-3 for these stars): the median is the test
    assert abs(np.median(ps_ap) - 1) < 0.003 and np.all(np.abs(ps_ap - 1) < 0.01), ps_ap
    assert np.all(np.abs(st[:, 0] / st[:, 3] - 1) < 0.05) and np.all(np.abs(st[:, 1] / st[:, 4] - 1) < 0.05), st
    assert np.all(np.abs(st[:, 2] - st[:, 5]) < 0.03 * st[:, 3]) and np.all(np.abs(st[:, 5]) < 0.1 * st[:, 3]), st
    assert len(gal_angles) >= 10 and np.mean(gal_angles < 30) >= 0.6, gal_angles      # random: 1/3
    print(f"completeness r < 22 stars: {found}/{total}; bright galaxies extended: {np.mean(gal_ext == 1):.3f} "
          f"of {len(gal_ext)}; stars extended: {int((star_ext == 1).sum())} of {len(star_ext)}")
    # the coadd's calibration (the calexps' zero points) limits this: the PSF flux follows the coadd's
    # own aperture flux to 0.5% (above)
    assert len(ratios) >= 3 and np.all(np.abs(ratios - 1) < 0.012), ratios
    assert np.all(star_ext == 0), star_ext
    assert len(gal_ext) >= 20 and np.mean(gal_ext == 1) >= 0.7          # most; compact ones look stellar
    assert total >= 30 and found > 0.95 * total, (found, total)
    ids = np.concatenate(ids)
    assert len(np.unique(ids)) == len(ids) and ids.min() > 0
    st = json.loads(cli("status", run, "--json", check=True).stdout)
    assert st["complete"] and st["tasks"]["objects"] == {"total": len(otasks), "done": len(otasks)}


def test_objects_bit_identical_at_three_ranks(run, level2_run_n3):
    assert objects_digest(level2_run_n3) == objects_digest(run)


def test_objects_config_check(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("[calexp]\nenabled = true\n[objects]\nenabled = true\n")
    with pytest.raises(InputError, match=r"objects\.enabled: expected false unless coadd\.enabled = true"):
        config.load(p)
    cfg = config.from_dict({s: {"enabled": True} for s in ("calexp", "coadd", "objects")})
    assert cfg.objects.enabled


def _gaussian(shape, x, y, cov, flux):
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]].astype(float)
    inv = np.linalg.inv(cov)
    dx, dy = xx - x, yy - y
    q = inv[0, 0] * dx * dx + 2 * inv[0, 1] * dx * dy + inv[1, 1] * dy * dy
    return flux * np.exp(-0.5 * q) / (2 * np.pi * np.sqrt(np.linalg.det(cov)))


def test_adaptive_moments_of_gaussians_and_failures():
    """A Gaussian's adaptive moments are its covariance, at any flux and sub-pixel position; one too wide
    for the 20 px stamp is measured again on a larger one; an unusable pixel under the weight, or no flux,
    is a failure (NaN, flagged)."""
    c, s = np.cos(np.radians(30)), np.sin(np.radians(30))
    rot = np.array([[c, -s], [s, c]])
    cov = rot @ np.diag([2.5 ** 2, 1.6 ** 2]) @ rot.T
    wide = np.diag([7.0 ** 2, 6.0 ** 2])
    img = (_gaussian((200, 200), 40.3, 50.7, cov, 1e4) + _gaussian((200, 200), 120.6, 60.2, cov, 37.0)
           + _gaussian((200, 200), 100.0, 140.4, wide, 1e5) + _gaussian((200, 200), 40.0, 150.0, cov, 1e4))
    usable = np.ones(img.shape, bool)
    usable[151, 41] = False                                   # under the last source's weight
    ixx, iyy, ixy, flag = adaptive_moments(img, [40.3, 120.6, 100.0, 40.0, 170.0], [50.7, 60.2, 140.4, 150.0, 20.0],
                                           usable=usable)
    for k, want in ((0, cov), (1, cov), (2, wide)):
        assert not flag[k]
        np.testing.assert_allclose([ixx[k], iyy[k], ixy[k]], [want[0, 0], want[1, 1], want[0, 1]], rtol=2e-4,
                                   atol=2e-4 * want[0, 0])
    assert flag[3] and flag[4] and np.isnan(ixx[3:]).all()    # a masked pixel; a blank position
