"""The ForcedSource stage ([forced] enabled = true): forced photometry of every primary Object on every calexp,
checked against the reference catalogue (flux scale, repeatability), for error calibration on faint constant
stars, and bit-identical at 2 and 3 ranks."""
import hashlib
import json

import numpy as np
import pytest
from conftest import MPIEXEC, cli
from scipy.spatial import cKDTree

from twinkles_hpc import config
from twinkles_hpc.errors import InputError
from twinkles_hpc.level2.forced import FORCED_SOURCE_DTYPE
from twinkles_hpc import rundir as rd
from twinkles_hpc.pipeline.setup import plan
from twinkles_hpc.rundir import layout
from twinkles_hpc.store.atomic import open_read
from twinkles_hpc.store.tables import read_table

pytestmark = pytest.mark.skipif(MPIEXEC is None, reason="mpiexec not found")



def forced_digest(rundir):
    d = hashlib.sha256()
    for path in sorted((rundir / "forced").glob("v*.h5")):
        with open_read(path) as f:
            d.update(f["forced_source"][...].tobytes())
    return d.hexdigest()


@pytest.fixture
def run(level2_run):
    return level2_run


def _read_all(run, visits, patches):
    objs = []
    for i, j in sorted(patches):
        with open_read(run / layout.objects(i, j)) as f:
            objs.append(read_table(f["objects"]))
    obj = np.concatenate(objs)
    prim = obj[obj["detect_isPrimary"]]
    forced = {}
    for v in visits:
        with open_read(run / layout.forced(v["visit_id"], v["band"])) as f:
            forced[int(v["visit_id"])] = read_table(f["forced_source"])
    return prim, forced


def _match(prim, ra, dec, radius=0.3):
    c = np.cos(np.deg2rad(float(np.median(prim["psDecl"]))))
    tree = cKDTree(np.column_stack([prim["psRa"] * c, prim["psDecl"]]) * 3600)
    d, k = tree.query(np.column_stack([ra * c, dec]) * 3600)
    return d < radius, k


def _isolated(ra, dec, others_ra, others_dec, arcsec):
    c = np.cos(np.deg2rad(float(np.median(dec))))
    tree = cKDTree(np.column_stack([others_ra * c, others_dec]) * 3600)
    return tree.query(np.column_stack([ra * c, dec]) * 3600, k=2)[0][:, 1] > arcsec


def _lookup(rows, object_ids):
    """Row index in `rows` (sorted by objectId) of each id, -1 where absent."""
    i = np.searchsorted(rows["objectId"], object_ids)
    i = np.minimum(i, max(len(rows) - 1, 0))
    ok = (len(rows) > 0) & (rows["objectId"][i] == object_ids) if len(rows) else np.zeros(len(object_ids), bool)
    return np.where(ok, i, -1)


def test_forced_stage(run):
    cfg = rd.load_config(run)
    visits = rd.read_visits(run)
    tasks = plan(cfg, run)[1]
    ftasks = [t for t in tasks if t.kind == "forced"]
    otasks = [t.id for t in tasks if t.kind == "objects"]
    assert len(ftasks) == len(visits)
    for t in ftasks:
        assert t.deps[0] == f"calexp/{t.params['visit_id']:08d}" and set(otasks) <= set(t.deps)
    patches = {tuple(t.params["patch"]) for t in tasks if t.kind == "objects"}
    prim, forced = _read_all(run, visits, patches)
    for vid, rows in forced.items():
        assert rows.dtype == FORCED_SOURCE_DTYPE and len(rows) > 100
        assert np.all(rows["ccdVisitId"] == vid) and np.all(np.diff(rows["objectId"]) > 0)
        assert np.isin(rows["objectId"], prim["objectId"]).all()
    with open_read(run / "refcat.h5") as f:
        ref = read_table(f["refcat"])
    with open_read(run / "truth.h5") as f:
        stars, gals = read_table(f["stars"]), read_table(f["galaxies"])
    gmag = -2.5 * np.log10(10 ** (-0.4 * gals["bulge_mag_r"]) + 10 ** (-0.4 * gals["disk_mag_r"]))
    o_ra = np.r_[stars["ra"][stars["mag_r"] < 24.5], gals["ra"][gmag < 24.5]]
    o_dec = np.r_[stars["dec"][stars["mag_r"] < 24.5], gals["dec"][gmag < 24.5]]

    # bright isolated reference stars: flux scale and repeatability
    sel = (ref["mag_r"] > 17) & (ref["mag_r"] < 19) & _isolated(ref["ra"], ref["dec"], o_ra, o_dec, 6.0)
    m, k = _match(prim, ref["ra"][sel], ref["dec"][sel], radius=0.1)
    bright, oid = ref[sel][m], prim["objectId"][k[m]]
    ratios, rep = [], []
    for band in sorted(set(visits["band"])):
        vb = visits[visits["band"] == band]
        f = np.full((len(bright), len(vb)), np.nan)
        for col, v in enumerate(vb):
            rows = forced[int(v["visit_id"])]
            i = _lookup(rows, oid)
            ok = (i >= 0) & (rows["flags"][i] == 0)
            f[ok, col] = rows["psFlux"][i[ok]]
        r = f / 10 ** (-0.4 * (bright[f"mag_{band}"] - 31.4))[:, None]
        ratios += list(r[np.isfinite(r)])
        mag = -2.5 * np.log10(f)
        n = np.isfinite(mag).sum(1)
        rep += list(np.nanstd(mag[n >= 3], axis=1, ddof=1) * 1000)
    ratios, rep = np.array(ratios), np.array(rep)

    # faint constant stars (stars do not vary): pulls about each star's weighted mean in each band
    sel = (stars["mag_r"] > 21) & (stars["mag_r"] < 23) & _isolated(stars["ra"], stars["dec"], o_ra, o_dec, 3.0)
    m, k = _match(prim, stars["ra"][sel], stars["dec"][sel], radius=0.3)
    oid = prim["objectId"][k[m]]
    pulls = []
    for band in sorted(set(visits["band"])):
        vb = visits[visits["band"] == band]
        f, s = (np.full((len(oid), len(vb)), np.nan) for _ in range(2))
        for col, v in enumerate(vb):
            rows = forced[int(v["visit_id"])]
            i = _lookup(rows, oid)
            ok = (i >= 0) & (rows["flags"][i] == 0)
            f[ok, col], s[ok, col] = rows["psFlux"][i[ok]], rows["psFlux_Sigma"][i[ok]]
        w = 1 / s ** 2
        good = np.isfinite(f).sum(1) >= 2
        f, s, w = f[good], s[good], w[good]
        mean = np.nansum(w * f, 1) / np.nansum(w, 1)
        var_mean = 1 / np.nansum(w, 1)
        p = (f - mean[:, None]) / np.sqrt(s ** 2 - var_mean[:, None])
        pulls += list(p[np.isfinite(p)])
    pulls = np.array(pulls)
    print(f"forced: {len(ratios)} bright measurements of {len(bright)} stars, median psFlux/ref "
          f"{np.median(ratios):.4f}; repeatability median {np.median(rep):.2f} mmag (max {np.max(rep):.2f}); "
          f"{len(pulls)} faint pulls, std {np.std(pulls):.3f}")
    assert len(ratios) >= 10 and abs(np.median(ratios) - 1) < 0.02, np.sort(ratios)
    assert len(rep) >= 3 and np.median(rep) < 6.0, np.sort(rep)
    assert len(pulls) >= 50 and 0.8 < np.std(pulls) < 1.3, np.std(pulls)
    st = json.loads(cli("status", run, "--json", check=True).stdout)
    assert st["complete"] and st["tasks"]["forced"] == {"total": len(ftasks), "done": len(ftasks)}


def test_forced_bit_identical_at_three_ranks(run, level2_run_n3):
    assert forced_digest(level2_run_n3) == forced_digest(run)


def test_forced_config_check(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("[calexp]\nenabled = true\n[coadd]\nenabled = true\n[forced]\nenabled = true\n")
    with pytest.raises(InputError, match=r"forced\.enabled: expected false unless objects\.enabled = true"):
        config.load(p)
    cfg = config.from_dict({s: {"enabled": True} for s in ("calexp", "coadd", "objects", "forced")})
    assert cfg.forced.enabled
