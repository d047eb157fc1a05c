"""The lens finder (timedomain/lensfind.py), its stage's product and the validate metric, on synthetic tables."""
import types

import h5py
import numpy as np
import pytest

from twinkles_hpc import config
from twinkles_hpc.errors import InputError
from twinkles_hpc.level2.astrometry import from_tangent_plane
from twinkles_hpc.pipeline import registry
from twinkles_hpc.pipeline.stages.diffim import DIA_SOURCE_DTYPE
from twinkles_hpc.pipeline.stages.lenses import STAGE
from twinkles_hpc.rundir import layout
from twinkles_hpc.sky.sprinkler import LENS_SYSTEM_DTYPE, LENSED_IMAGE_DTYPE
from twinkles_hpc.store.tables import read_table, write_table
from twinkles_hpc.timedomain.association import dia_object_dtype
from twinkles_hpc.timedomain.lensfind import (CANDIDATE_DTYPE, LensFindConfig, _groups, episodes, find_lenses,
                                             sign_bands)
from twinkles_hpc.validation.lenses import LENS_MIN_VISITS, findable, lens_metrics
from twinkles_hpc.level2.skymap import tan_wcs
from twinkles_hpc.validation.products import Coverage, null_metric
from twinkles_hpc.validation.run import lens_checks

RA0, DEC0 = 53.0, -28.0
T0 = 60000.0
#: The stages the lenses stage needs, switched on.
CHAIN = {s: {"enabled": True} for s in ("calexp", "coadd", "objects", "template", "diffim", "associate", "lenses")}
OBJ_DTYPE = np.dtype([("objectId", "i8"), ("psRa", "f8"), ("psDecl", "f8"), ("extendedness", "f8")])


def radec(x, y):
    """(ra, dec) deg of tangent-plane offsets (arcsec) about (RA0, DEC0)."""
    ra, dec = from_tangent_plane(np.asarray(x, float) / 3600.0, np.asarray(y, float) / 3600.0, RA0, DEC0)
    return ra, dec


def scene():
    """(objects, dia_objects, dia_sources): a lens at (0, 0) (galaxy, three DiaObjects 0.8-1" away varying
    in five seasons, both signs in g and in i); a supernova 0.5" from a galaxy at (60, 0) (one season,
    positive); a host at (0, 60) with three supernovae in three different years, each at its own position;
    a supernova 0.3" from a galaxy at (0, -60) bright in g, r and i in one season and caught in the r
    template, so that four later seasons show r differences of a twelfth of its peak, negative."""
    obj = np.zeros(4, OBJ_DTYPE)
    obj["objectId"] = [10, 11, 12, 13]
    obj["psRa"], obj["psDecl"] = radec([0.0, 60.0, 0.0, 0.0], [0.0, 0.0, 60.0, -60.0])
    obj["extendedness"] = 1.0
    dobj_xy, src = [], []
    sid = 1000

    def add(x, y, dates, fluxes, bands="i"):
        nonlocal sid
        oid = sid
        dobj_xy.append((oid, x, y))
        for k, (t, f) in enumerate(zip(dates, fluxes)):
            src.append((sid, oid, t, f, x, y, bands[k % len(bands)]))
            sid += 1

    years = T0 + 365.25 * np.arange(5)
    for k, (x, y) in enumerate([(0.8, 0.1), (-0.7, -0.5), (0.1, -0.9)]):
        dates = np.concatenate([years + 10 * j for j in range(2)])
        add(x, y, dates, 800.0 * np.where(np.arange(dates.size) % 2 == k % 2, 1.0, -1.0), "ggii")
    add(60.5, 0.0, T0 + np.arange(6) * 8.0, np.full(6, 1500.0))
    for year, (x, y) in enumerate([(0.6, 60.0), (-0.6, 60.3), (0.0, 59.3)]):
        add(x, y, T0 + 365.25 * year + np.arange(4) * 10.0, np.full(4, 900.0))
    add(0.3, -60.0, np.r_[T0 + 400.0 + np.arange(3), T0 + 365.25 * np.arange(2, 6)],
        [6000.0, 6000.0, 6000.0, -500.0, -500.0, -500.0, -500.0], "grirrrr")
    dia_objects = np.zeros(len(dobj_xy), dia_object_dtype(["i"]))
    dia_objects["diaObjectId"] = [d[0] for d in dobj_xy]
    dia_objects["ra"], dia_objects["decl"] = radec([d[1] for d in dobj_xy], [d[2] for d in dobj_xy])
    sources = np.zeros(len(src), DIA_SOURCE_DTYPE.descr + [("diaObjectId", "i8")])
    for k, (s, o, t, f, x, y, band) in enumerate(src):
        sources[k]["diaSourceId"], sources[k]["diaObjectId"] = s, o
        sources[k]["midPointTai"], sources[k]["psFlux"], sources[k]["psFluxErr"] = t, f, 100.0
        sources[k]["filterName"], sources[k]["snr"] = band, f / 100.0
        sources[k]["ra"], sources[k]["decl"] = radec(x, y)
    dia_objects["nDiaSources"] = np.bincount(np.searchsorted(dia_objects["diaObjectId"], sources["diaObjectId"]))
    return obj, dia_objects, sources


def test_episodes():
    assert episodes([], 120.0) == 0
    assert episodes([5.0, 1.0, 300.0, 310.0, 900.0], 120.0) == 3


def test_sign_bands():
    row = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1])
    band = np.array(list("ggrrggrri"))
    flux = np.array([900.0, -400.0, 900.0, -200.0, 100.0, -100.0, 50.0, np.nan, -30.0])
    assert list(sign_bands(row, band, flux, 3, 1 / 3)) == [1, 1, 0]     # r: 200 < 900 / 3; NaN ignored
    assert list(sign_bands(row, band, flux, 3, 0.2)) == [2, 1, 0]
    assert list(sign_bands(row[:0], band[:0], flux[:0], 2, 1 / 3)) == [0, 0]


def test_groups_do_not_percolate():
    """Nine points 2.5" apart in a line, linked within 3": friends-of-friends would make one group 20" long;
    seeded groups span at most 6", the most persistent seed first."""
    x, y = np.arange(9) * 2.5, np.zeros(9)
    label = _groups(x, y, 3.0, np.arange(9))
    assert list(label) == [0, 0, 1, 1, 2, 2, 3, 3, 4]
    label = _groups(x, y, 3.0, np.r_[4, np.arange(4), np.arange(5, 9)])      # point 4 seeds first
    assert list(label[3:6]) == [0, 0, 0] and label.max() == 4
    for g in range(label.max() + 1):
        assert np.ptp(x[label == g]) <= 6.0
    assert len(_groups(x[:0], y[:0], 3.0, np.arange(0))) == 0


def test_lens_found_supernovae_rejected():
    obj, dobj, src = scene()
    cand, members = find_lenses(obj, dobj, src, RA0, DEC0)
    assert len(cand) == 1
    c = cand[0]
    assert c["lensCandidateId"] == 1000 and c["hostObjectId"] == 10 and c["nDiaObjects"] == 3
    assert c["nSignBands"] == 2
    assert c["nEpisodes"] == 5 and c["score_sign"] > 0.8 and c["score"] > 0.9
    assert np.hypot(*(np.array(radec(0.0, 0.0)) - (c["ra"], c["decl"]))) * 3600 < 1e-6   # on the host
    assert list(members["diaObjectId"]) == [1000, 1010, 1020]
    # with every DiaObject admitted and no score cut, the supernovae rank below the lens
    cand, _ = find_lenses(obj, dobj, src, RA0, DEC0, LensFindConfig(min_episodes=1, min_score=0.0))
    assert cand[0]["lensCandidateId"] == 1000
    sn = cand[cand["hostObjectId"] == 11]
    assert len(sn) == 0          # one band, one sign
    # the supernova in the r template varies both ways in r alone, with a negative of 1/12 of its peak: the
    # sign test rejects it twice over; without the test it would score as a lens
    for kw in ({"min_sign_bands": 1}, {"sign_ratio": 0.05}):
        cand, _ = find_lenses(obj, dobj, src, RA0, DEC0, LensFindConfig(min_score=0.0, **kw))
        assert 13 not in cand["hostObjectId"]
    cand, _ = find_lenses(obj, dobj, src, RA0, DEC0, LensFindConfig(min_sign_bands=1, sign_ratio=0.05))
    tmpl = cand[cand["hostObjectId"] == 13]
    assert len(tmpl) == 1 and tmpl[0]["nEpisodes"] == 5 and tmpl[0]["nSignBands"] == 1
    assert tmpl[0]["score"] >= LensFindConfig().min_score


def test_order_independent_and_without_objects():
    obj, dobj, src = scene()
    ref = find_lenses(obj, dobj, src, RA0, DEC0)
    rng = np.random.default_rng(3)
    got = find_lenses(obj[rng.permutation(len(obj))], dobj[rng.permutation(len(dobj))],
                      src[rng.permutation(len(src))], RA0, DEC0)
    for a, b in zip(ref, got):
        assert a.tobytes() == b.tobytes()
    cand, _ = find_lenses(None, dobj, src, RA0, DEC0)
    assert len(cand) == 1 and cand[0]["hostObjectId"] == -1 and cand[0]["score_host"] == 0.0
    empty, mem = find_lenses(obj, dobj[:0], src[:0], RA0, DEC0)
    assert empty.dtype == CANDIDATE_DTYPE and len(empty) == len(mem) == 0


def test_config_section_and_bad_value():
    cfg = config.from_dict({**CHAIN, "lenses": {"enabled": True, "link_radius": 2.5}})
    assert cfg.lenses.enabled and cfg.lenses.link_radius == 2.5
    assert "lenses" in [name for name, _ in registry.sections()]
    with pytest.raises(InputError, match="lenses.min_score"):
        config.from_dict({"lenses": {"min_score": 1.5}})
    with pytest.raises(InputError, match="lenses.enabled"):
        config.from_dict({**CHAIN, "associate": {"enabled": False}})


def test_stage_writes_candidates(tmp_path):
    obj, dobj, src = scene()
    (tmp_path / "associate").mkdir()
    (tmp_path / "objects").mkdir()
    with h5py.File(tmp_path / layout.DIA_OBJECT, "w") as fh:
        write_table(fh, "dia_object", dobj)
        write_table(fh, "dia_source", src)
    full = np.zeros(len(obj), OBJ_DTYPE.descr + [("detect_isPrimary", "?")])
    for n in OBJ_DTYPE.names:
        full[n] = obj[n]
    full["detect_isPrimary"] = True
    with h5py.File(tmp_path / layout.objects(0, 0), "w") as fh:
        write_table(fh, "objects", full)
    cfg = config.from_dict(CHAIN)
    ctx = types.SimpleNamespace(cfg=cfg, path=lambda rel: str(tmp_path / rel), log_line=lambda line: None,
                                skymap=types.SimpleNamespace(ra=RA0, dec=DEC0), visits=np.zeros(3))
    task = STAGE.task(None, 0.0, patches=["0-0"])
    assert task.id == "lenses"
    out = STAGE.run(ctx, task, lambda: False)
    assert list(out) == [layout.LENS_CANDIDATES]
    with h5py.File(tmp_path / layout.LENS_CANDIDATES, "r") as fh:
        cand, members = read_table(fh["candidates"]), read_table(fh["members"])
        assert fh.attrs["ok"] and fh.attrs["reason"] == "" and fh.attrs["n_objects"] == 4
        assert fh.attrs["min_score"] == cfg.lenses.min_score
    assert cand.dtype == CANDIDATE_DTYPE and list(cand["lensCandidateId"]) == [1000] and len(members) == 3


def test_validate_metric():
    systems = np.zeros(3, LENS_SYSTEM_DTYPE)
    systems["sys_id"] = [1, 2, 3]
    systems["ra"], systems["dec"] = radec([0.0, 30.0, 60.0], [0.0, 0.0, 0.0])
    systems["imsep"] = [1.5, 2.0, 0.6]                   # the third is too compact to count
    systems["src_mag_i"] = 23.0
    images = np.zeros(6, LENSED_IMAGE_DTYPE)
    images["sys_id"] = [1, 1, 2, 2, 3, 3]
    images["mag"] = [3.0, -2.0, 4.0, 1.2, 3.0, 3.0]     # |mu| 1.2: i = 23 - 2.5 log10 1.2 = 22.8
    assert list(findable(systems, images)) == [True, True, False]
    cand = np.zeros(3, CANDIDATE_DTYPE)
    cand["ra"], cand["decl"] = radec([0.5, 61.0, 90.0], [0.5, 0.0, 0.0])
    m = lens_metrics(systems, images, cand, RA0, DEC0)
    assert (m["n_findable"], m["n_found"], m["n_candidates"], m["n_true_candidates"]) == (2, 1, 3, 2)
    assert m["completeness"] == 0.5 and m["purity"] == pytest.approx(2 / 3) and m["missed_sys_ids"] == [2]
    # system 2 seen by fewer than LENS_MIN_VISITS visits: not observed, reported beside
    m = lens_metrics(systems, images, cand, RA0, DEC0, visits=[LENS_MIN_VISITS, LENS_MIN_VISITS - 1, 0])
    assert (m["n_findable"], m["n_observed"], m["n_found"]) == (2, 1, 1) and m["unobserved_sys_ids"] == [2]
    assert m["completeness"] == 1.0 and m["completeness_on_coadds"] == 0.5 and m["missed_sys_ids"] == []
    m = lens_metrics(systems, images, cand, RA0, DEC0, visits=[0, 0, 0])
    assert m["completeness"] is None and "30 visits" in m["completeness_reason"]
    m = lens_metrics(systems, images, cand[:0], RA0, DEC0, covered=[False, False, True])
    assert m["completeness"] is None and m["purity"] is None and "purity_reason" in m


def test_validate_checks():
    V = config.from_dict({}).validate
    ok, low = lens_checks({"completeness": 0.95, "purity": 0.5}, V)
    assert (ok["metric"], ok["ok"], ok["threshold"]) == ("lens_completeness", True, 0.9)
    assert (low["metric"], low["ok"], low["threshold"]) == ("lens_purity", False, 0.8)
    off = lens_checks(null_metric("no lens candidates: [lenses] enabled = false"), V)
    assert all(c["ok"] is None and "enabled = false" in c["reason"] for c in off)


def test_coverage_counts_visits_of_every_band(tmp_path):
    """Coverage: a position on a patch's inner box with inputs in any band is covered; visits() sums the
    bands' input counts there; positions off the inner box or without inputs count 0."""
    wcs = tan_wcs(RA0, DEC0, 0.2, (50.0, 50.0)).to_header().tostring()
    counts = {"g": np.zeros((100, 100), np.int16), "r": np.zeros((100, 100), np.int16)}
    counts["g"][:, :60] = 7
    counts["r"][:, 40:] = 5
    for band, n in counts.items():
        path = tmp_path / layout.coadd(band, 0, 0)
        path.parent.mkdir(parents=True)
        with h5py.File(path, "w") as fh:
            fh["n_visits"] = n
            fh.attrs.update(wcs=wcs, bbox=[0, 0, 100, 100], inner_bbox=[10, 10, 80, 80])
    cov = Coverage(str(tmp_path))
    # pixels (x, y): 20 (g only), 50 (both), 80 (r only), 95 (outside the inner box)
    ra, dec = radec((np.array([20.0, 50.0, 80.0, 95.0]) - 50.0) * -0.2, np.zeros(4))
    assert list(cov(ra, dec)) == [True, True, True, False]
    assert list(cov.visits(ra, dec)) == [7, 12, 5, 0]
    assert cov.area == pytest.approx(80 * 80 * 0.04 / 3600.0)
