"""The template stage: per band (and yearly, per data-release year) and patch, a coadd of the best-seeing
calibrated calexps; a template that cannot be made is recorded with its reason, never a crash."""
import os

import numpy as np
import pytest

from twinkles_hpc import config
from twinkles_hpc import rundir as rd
from twinkles_hpc.errors import InputError
from twinkles_hpc.pipeline.context import RunContext
from twinkles_hpc.pipeline.registry import stage
from twinkles_hpc.pipeline.setup import plan
from twinkles_hpc.pipeline.stages.template import measured_fwhm_px, template_inputs, template_ok, visit_years
from twinkles_hpc.rundir import layout
from twinkles_hpc.store.atomic import open_read

@pytest.fixture(scope="module")
def run(template_run):
    return template_run


def _visits(n, bands="gr", years=3.0):
    v = np.zeros(n, [("visit_id", "i8"), ("band", "U1"), ("mjd", "f8"), ("fwhm_eff", "f8")])
    rng = np.random.default_rng(4)
    v["visit_id"] = np.arange(n) + 100
    v["band"] = [bands[k % len(bands)] for k in range(n)]
    v["mjd"] = 60000.0 + np.sort(rng.uniform(0, years * 365.25, n))
    v["fwhm_eff"] = rng.uniform(0.6, 1.2, n)
    return v


def test_template_inputs_single_and_yearly():
    v = _visits(60)
    cfg = config.from_dict({"calexp": {"enabled": True}, "coadd": {"enabled": True},
                            "template": {"enabled": True, "max_visits": 5, "candidate_factor": 2.0}})
    pools, of_visit = template_inputs(cfg, v)
    assert sorted(pools) == [("g", None), ("r", None)]
    for (b, _), ids in pools.items():                 # the 10 best by the cadence's seeing
        inb = v[v["band"] == b]
        assert ids == sorted(inb["visit_id"][np.argsort(inb["fwhm_eff"])[:10]].tolist())
    assert set(of_visit) == set(v["visit_id"].tolist())
    cfg.template.mode = "yearly"
    pools, of_visit = template_inputs(cfg, v)
    years = visit_years(v)
    assert sorted({k for _, k in pools}) == [0, 1, 2]
    for (b, k), ids in pools.items():
        y = years[np.isin(v["visit_id"], ids)]
        assert (y == 1).all() if k == 0 else (y < k).all()         # year 0 against year 1; year k before k
    assert of_visit[int(v["visit_id"][0])] == (str(v["band"][0]), 0)
    cfg.template.first_year = "skip"
    pools, of_visit = template_inputs(cfg, v)
    assert sorted({k for _, k in pools}) == [1, 2] and int(v["visit_id"][0]) not in of_visit


def test_template_config_checks():
    with pytest.raises(InputError, match=r"template\.min_visits"):
        config.from_dict({"calexp": {"enabled": True}, "coadd": {"enabled": True},
                          "template": {"enabled": True, "min_visits": 9, "max_visits": 4}})
    with pytest.raises(InputError, match=r"template\.enabled: expected false unless coadd\.enabled = true"):
        config.from_dict({"calexp": {"enabled": True}, "template": {"enabled": True}})


def test_template_is_the_best_seeing_calexps(run):
    cfg = rd.load_config(run)
    _, tasks = plan(cfg, run)
    ttasks = [t for t in tasks if t.kind == "template"]
    assert ttasks and all(t.id.startswith("template/r/") for t in ttasks)
    for t in ttasks:
        path = run / layout.template("r", *t.params["patch"])
        with open_read(path) as fh:
            a = dict(fh.attrs)
            if not a["ok"]:
                continue
            img, n = fh["image"][...], fh["n_visits"][...]
        chosen = list(a["visit_ids"])
        assert 2 <= len(chosen) <= 4 and set(chosen) <= set(t.params["visit_ids"])
        scale = cfg.sensor.pixel_scale
        fwhm = {v: measured_fwhm_px(run / layout.calexp(v, "r")) * scale for v in t.params["visit_ids"]}
        left_out = [fwhm[v] for v in t.params["visit_ids"] if v not in chosen and np.isfinite(fwhm[v])]
        assert not left_out or max(fwhm[v] for v in chosen) <= min(left_out)      # the best seeing kept
        assert np.allclose(sorted(a["fwhm_arcsec"]), sorted(fwhm[v] for v in chosen))
        assert np.isfinite(img[n > 0]).all() and (n <= len(chosen)).all() and (n == len(chosen)).any()
    assert any(template_ok(run / layout.template("r", *t.params["patch"])) for t in ttasks)


def test_template_with_too_few_visits_is_recorded_not_fatal(run, tmp_path):
    cfg = rd.load_config(run)
    cfg.template.min_visits = cfg.template.max_visits = 50
    os.symlink(run / "calexp", tmp_path / "calexp")
    for name in (layout.SKYMAP, layout.CONFIG_JSON):     # a set-up run directory: its skymap is read
        (tmp_path / name).write_bytes((run / name).read_bytes())
    ctx = RunContext(cfg, str(tmp_path), rd.read_visits(run), log=(lines := []).append)
    _, tasks = plan(rd.load_config(run), run)
    t = next(t for t in tasks if t.kind == "template")
    out = stage("template").run(ctx, t, None)
    path = tmp_path / next(iter(out))
    assert not template_ok(path)
    with open_read(path) as fh:
        assert "template.min_visits = 50" in fh.attrs["reason"] and "image" not in fh
    assert len(lines) == 1 and "not made" in lines[0]
