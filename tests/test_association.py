"""Association of DiaSources into DiaObjects (timedomain/association.py): radius, one-to-one within a
visit, ids of the first source, the same objects whatever the row order and however the sky is split into
regions, and the per-band summaries."""
import numpy as np
import pytest

from twinkles_hpc.pipeline.stages.diffim import DIA_SOURCE_DTYPE
from twinkles_hpc.timedomain.association import (associate, dia_objects, first_source_ids, merge_regions,
                                                 tangent_arcsec)

RA0, DEC0 = 53.0, -28.0


def _sources(n_obj=40, n_visits=30, seed=1, sigma=0.12, p=0.6, on_x=()):
    """Objects on a 2' x 2' field (and one at each x of `on_x`), each seen in a random 60 % of the visits
    with 0.12" scatter."""
    rng = np.random.default_rng(seed)
    ox, oy = rng.uniform(-60, 60, n_obj), rng.uniform(-60, 60, n_obj)
    ox, oy = np.r_[ox, on_x], np.r_[oy, rng.uniform(-60, 60, len(on_x))]
    n_obj = len(ox)
    rows, truth = [], []
    for v in range(n_visits):
        k = 0
        for o in range(n_obj):
            if rng.random() < p:
                k += 1
                x, y = ox[o] + sigma * rng.standard_normal(), oy[o] + sigma * rng.standard_normal()
                rows.append((v + 1) * 1_000_000 + k), truth.append((o, x, y, v))
    src = np.zeros(len(rows), DIA_SOURCE_DTYPE)
    t = np.array(truth)
    src["diaSourceId"] = rows
    src["ccdVisitId"] = t[:, 3].astype(int) + 1
    src["midPointTai"] = 60000.0 + 3.0 * t[:, 3]
    dec = DEC0 + t[:, 2] / 3600.0
    src["ra"], src["decl"] = RA0 + t[:, 1] / 3600.0 / np.cos(np.radians(dec)), dec
    src["filterName"] = np.array(list("ugrizy"))[t[:, 3].astype(int) % 6]
    src["psFlux"] = 1000.0 + 30.0 * rng.standard_normal(len(rows))
    src["psFluxErr"] = 30.0
    return src, t[:, 0].astype(int)


def _groups(labels):
    """The partition as a set of frozensets of row numbers."""
    out = {}
    for k, lab in enumerate(labels):
        out.setdefault(int(lab), set()).add(k)
    return {frozenset(g) for g in out.values()}


def test_sources_of_one_object_are_one_dia_object_with_the_first_source_id():
    src, true = _sources()
    obj = associate(src, 1.0, RA0, DEC0)
    assert _groups(obj) == _groups(true)
    ids = first_source_ids(src, obj)
    for g in _groups(obj):
        g = sorted(g)
        assert (ids[g] == src["diaSourceId"][g][np.argmin(src["midPointTai"][g])]).all()


def test_one_to_one_within_a_visit_and_the_radius():
    src = np.zeros(4, DIA_SOURCE_DTYPE)
    src["diaSourceId"] = [1_000_001, 2_000_001, 2_000_002, 3_000_001]
    src["ccdVisitId"] = [1, 2, 2, 3]
    src["midPointTai"] = [1.0, 2.0, 2.0, 3.0]
    x = np.array([0.0, 0.3, -0.2, 1.5])               # arcsec east; visit 2 has two sources near the object
    src["decl"] = DEC0
    src["ra"] = RA0 + x / 3600.0 / np.cos(np.radians(DEC0))
    obj = associate(src, 1.0, RA0, DEC0)
    assert obj[0] == obj[2] != obj[1]                  # the closer one (0.2") joins, the other starts one
    assert obj[3] not in obj[:3]                        # 1.5" from every mean position
    assert len(set(associate(src, 2.0, RA0, DEC0))) == 2    # a wider radius takes the last one too


def test_positions_are_weighted_by_snr_squared():
    src = np.zeros(2, DIA_SOURCE_DTYPE)
    src["diaSourceId"], src["ccdVisitId"], src["midPointTai"] = [1_000_001, 2_000_001], [1, 2], [1.0, 2.0]
    src["snr"] = [5.0, -50.0]                           # a faint first detection, then a bright fading
    x = np.array([0.5, 0.0])
    src["decl"] = DEC0
    src["ra"] = RA0 + x / 3600.0 / np.cos(np.radians(DEC0))
    obj = first_source_ids(src, associate(src, 1.0, RA0, DEC0))
    table = dia_objects(src, obj, list("r"), RA0, DEC0)
    assert len(table) == 1
    rx, _ = tangent_arcsec(table["ra"], table["decl"], RA0, DEC0)
    assert abs(rx[0] - 0.5 * 25 / 2525) < 1e-6             # (25 x 0.5" + 2500 x 0") / 2525


def test_the_same_objects_for_any_row_order():
    src, _ = _sources(seed=2)
    want = first_source_ids(src, associate(src, 1.0, RA0, DEC0))
    perm = np.random.default_rng(5).permutation(len(src))
    got = first_source_ids(src[perm], associate(src[perm], 1.0, RA0, DEC0))
    assert (got == want[perm]).all()


@pytest.mark.parametrize("cuts", [(0.0,), (-20.0, 25.0), (-40.0, -10.0, 10.0, 40.0)])
def test_regions_merged_give_the_objects_of_one_region(cuts):
    """The sky split in strips (objects straddling the cuts included): per-strip association, then the
    merge, gives the same DiaObjects and ids as associating all at once."""
    src, true = _sources(n_obj=60, seed=3, on_x=cuts)
    x, _ = tangent_arcsec(src["ra"], src["decl"], RA0, DEC0)
    region = np.searchsorted(np.asarray(cuts), x)
    split = [o for o in np.unique(true) if len(np.unique(region[true == o])) > 1]
    assert len(split) >= len(cuts)                     # objects on the cuts have sources on both sides
    local = np.zeros(len(src), np.int64)
    for r in np.unique(region):
        sel = np.flatnonzero(region == r)
        local[sel] = first_source_ids(src[sel], associate(src[sel], 1.0, RA0, DEC0))
    merged = merge_regions(src, local, region, 1.0, RA0, DEC0)
    whole = first_source_ids(src, associate(src, 1.0, RA0, DEC0))
    assert _groups(true) == _groups(whole)
    assert (merged == whole).all()


def test_dia_object_summaries_per_band():
    src, _ = _sources(n_obj=5, seed=4)
    obj = first_source_ids(src, associate(src, 1.0, RA0, DEC0))
    table = dia_objects(src, obj, list("ugrizy"), RA0, DEC0)
    assert (np.diff(table["diaObjectId"]) > 0).all() and table["nDiaSources"].sum() == len(src)
    for row in table:
        mine = src[obj == row["diaObjectId"]]
        assert row["firstMidPointTai"] == mine["midPointTai"].min()
        for b in "ugrizy":
            f, e = mine["psFlux"][mine["filterName"] == b], mine["psFluxErr"][mine["filterName"] == b]
            w = 1 / e ** 2
            m = (w * f).sum() / w.sum()
            assert row[f"{b}PsFluxNdata"] == len(f)
            assert row[f"{b}PsFluxMean"] == pytest.approx(m, rel=1e-12)
            assert row[f"{b}PsFluxMeanErr"] == pytest.approx(w.sum() ** -0.5, rel=1e-12)
            assert row[f"{b}PsFluxChi2"] == pytest.approx((w * (f - m) ** 2).sum(), rel=1e-9)
        x, y = tangent_arcsec(mine["ra"], mine["decl"], RA0, DEC0)
        rx, ry = tangent_arcsec(row["ra"], row["decl"], RA0, DEC0)       # snr 0: weights 1, the plain mean
        assert abs(rx - x.mean()) < 1e-6 and abs(ry - y.mean()) < 1e-6
