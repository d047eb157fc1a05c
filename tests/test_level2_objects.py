"""The Objects stage in a run ([level2] objects = true): per-patch multi-band detection, deblending and
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
from twinkles_hpc.parallel import campaign
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


def test_objects_stage(run):
    cfg = campaign.load_rundir_config(run)
    visits = campaign.existing_visits(run)
    tasks = campaign.build_tasks(cfg, visits, campaign.read_skymap(run))
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
    for i, j in sorted(patches):
        with open_read(run / campaign.objects_relpath(i, j)) as f:
            obj = read_table(f["objects"])
            assert list(f.attrs["patch"]) == [i, j]
        with open_read(run / campaign.coadd_relpath("r", i, j)) as f:
            a = dict(f.attrs)
            nv = f["n_visits"][...]
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
        # bright galaxies
        ins, x, y = in_patch(gals["ra"], gals["dec"])
        sel = ins & (gmag < 21.5) & _sample(covered, x, y)
        d, k = tree.query(np.column_stack([gals["ra"][sel] * c, gals["dec"][sel]]) * 3600)
        gal_ext += list(prim["extendedness"][k[d < 0.3]])
    ratios, star_ext, gal_ext = np.array(ratios), np.array(star_ext), np.array(gal_ext)
    print(f"PsFlux / reference (r): {np.round(np.sort(ratios), 4).tolist()}")
    print(f"completeness r < 22 stars: {found}/{total}; bright galaxies extended: {np.mean(gal_ext == 1):.3f} "
          f"of {len(gal_ext)}; stars extended: {int((star_ext == 1).sum())} of {len(star_ext)}")
    assert len(ratios) >= 3 and np.all(np.abs(ratios - 1) < 0.03), ratios
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
    p.write_text("[level2]\ncalibrate = true\nobjects = true\n")
    with pytest.raises(InputError, match=r"level2\.objects"):
        config.load(p)
    cfg = config.from_dict({"level2": {"calibrate": True, "coadd": True, "objects": True}})
    assert cfg.level2.objects
