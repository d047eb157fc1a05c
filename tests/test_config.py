import json
import tomllib
from dataclasses import dataclass, field, fields

import numpy as np
import pytest

from twinkles_hpc import config, options
from twinkles_hpc.errors import InputError, RunDirError, TwinklesError
from twinkles_hpc.level2.background import BackgroundConfig
from twinkles_hpc.level2.calibrate import CalibrateConfig
from twinkles_hpc.level2.coadd import CoaddConfig
from twinkles_hpc.level2.cosmics import CosmicRayConfig
from twinkles_hpc.options import opt
from twinkles_hpc.rundir import load_config


def write(tmp_path, text):
    p = tmp_path / "c.toml"
    p.write_text(text)
    return p


def assert_documented(name, sec, text):
    """Every field of section sec (table [name]) and of its sub-sections has a doc and is in text."""
    assert f"[{name}]" in text
    for f in fields(sec):
        if options.subsection(f):
            assert_documented(f"{name}.{f.name}", getattr(sec, f.name), text)
        else:
            assert f.metadata["doc"], f"{name}.{f.name} has no doc"
            assert f"\n{f.name} = " in text


def test_defaults_are_valid_and_documented():
    cfg = config.Config()
    text = config.defaults_toml()
    for name, sec in cfg.sections():
        assert_documented(name, sec, text)
    # the printed defaults parse back to the same config
    assert config.from_dict(tomllib.loads(text)).fingerprint() == cfg.fingerprint()


def test_demo_and_run1_configs_load():
    from conftest import ROOT
    demo = config.load(ROOT / "jobs" / "demo.toml")
    assert (demo.sensor.nx, demo.sensor.ny) == (2000, 2000)
    assert demo.cadence.max_visits >= 60 and demo.cadence.bands == "ugrizy"
    # the demo runs the whole chain through the database
    assert all(getattr(demo, s).enabled for s in ("calexp", "coadd", "objects", "forced", "ingest"))
    for name in ("run1.toml", "level2-full.toml"):
        full = config.load(ROOT / "jobs" / name)
        assert (full.sensor.nx, full.sensor.ny) == (4000, 4072) and full.ingest.enabled


@pytest.mark.parametrize("text, key, expected", [
    ("[run]\nsede = 3\n", "run.sede", "a key among"),
    ("[runn]\n", "runn", "a section among"),
    ("[sensor]\nnx = 'big'\n", "sensor.nx", "an integer"),
    ("[sensor]\nnx = 1.5\n", "sensor.nx", "an integer"),
    ("[cadence]\nexptime = -30.0\n", "cadence.exptime", ">= 0.0"),
    ("[cadence]\nbands = 'ugrq'\n", "cadence.bands", "distinct letters"),
    ("[cadence]\nbands = ''\n", "cadence.bands", "distinct letters"),
    ("[cadence]\nsource = 'nope.db'\n", "cadence.source", "existing OpSim"),
    ("[visit]\ncompression = 'zstd'\n", "visit.compression", "one of none, lzf, gzip"),
    ("[level2]\ncalibrate = true\n", "level2", "its keys in [calexp]"),
    ("[sensor]\npixel_scale = 0\n", "sensor.pixel_scale", "> 0.0"),
    ("[cadence]\nmjd_min = 60000.0\nmjd_max = 59000.0\n", "cadence.mjd_max", "> cadence.mjd_min"),
    ("[run\n", "syntax", "valid TOML"),
])
def test_bad_values_name_file_key_and_expectation(tmp_path, text, key, expected):
    p = write(tmp_path, text)
    with pytest.raises(InputError) as e:
        config.load(p)
    msg = str(e.value)
    assert "\n" not in msg
    assert str(p) in msg and key in msg and expected in msg


def test_missing_file():
    with pytest.raises(InputError, match="not found"):
        config.load("/nonexistent/x.toml")


def test_int_accepted_for_float_and_paths_resolve(tmp_path):
    (tmp_path / "v.csv").write_text("x\n")
    cfg = config.load(write(tmp_path, "[cadence]\nexptime = 15\nsource = 'v.csv'\n"))
    assert cfg.cadence.exptime == 15.0 and isinstance(cfg.cadence.exptime, float)
    assert cfg.resolve_path(cfg.cadence.source) == str(tmp_path / "v.csv")


def test_run_directory_config_loads_wherever_its_inputs_were(tmp_path):
    """A run made from jobs/X.toml with a cadence source relative to jobs/ (and -o anywhere) still loads
    for validate, report and scaling: the run directory's config does not look for its input files."""
    (tmp_path / "jobs").mkdir()
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "v.csv").write_text("x\n")
    text = "[cadence]\nsource = '../data/v.csv'\n"
    cfg = config.load(write(tmp_path / "jobs", text))
    rundir = tmp_path / "elsewhere" / "run"
    rundir.mkdir(parents=True)
    (rundir / "config.json").write_text(json.dumps(cfg.to_dict()))
    assert load_config(str(rundir)).cadence.source == "../data/v.csv"
    with pytest.raises(InputError, match="cadence.source"):
        config.from_dict(cfg.to_dict(), base_dir=str(rundir))


def test_errors_share_one_base():
    assert issubclass(InputError, ValueError) and issubclass(InputError, TwinklesError)
    assert issubclass(RunDirError, TwinklesError)
    assert str(InputError("f.toml", "a.b", "an integer", 1.5)) == "f.toml: a.b: expected an integer, got 1.5"


@dataclass
class Inner:
    width: float = opt(1.0, "pixel", "Width.", lo=0.0, lo_open=True)
    mode: str = opt("a", "", "Mode.", choices=("a", "b"))


@dataclass
class Outer:
    n: int = opt(3, "", "Count.", lo=1)
    inner: Inner = field(default_factory=Inner)
    flag: bool = opt(False, "", "Flag.")


def test_nested_sections_apply_and_print():
    o = Outer()
    options.apply(o, {"n": 4, "inner": {"width": 2}}, "f.toml", "outer")
    assert (o.n, o.inner.width, o.inner.mode) == (4, 2.0, "a") and isinstance(o.inner.width, float)
    assert options.to_dict(o) == {"n": 4, "inner": {"width": 2.0, "mode": "a"}, "flag": False}
    # plain keys first, then the sub-section as its own table
    assert options.section_toml("outer", o) == [
        "[outer]", "# Count.", "n = 4", "# Flag.", "flag = false", "",
        "[outer.inner]", "# Width. [pixel]", "width = 2.0", "# Mode.", 'mode = "a"', ""]


@pytest.mark.parametrize("data, key, expected", [
    ({"inner": {"wdth": 1.0}}, "outer.inner.wdth", "a key among width, mode"),
    ({"inner": 3}, "outer.inner", "a [table]"),
    ({"inner": {"mode": "c"}}, "outer.inner.mode", "one of a, b"),
    ({"inner": {"width": 0.0}}, "outer.inner.width", "a value > 0.0 pixel"),
    ({"nn": 1}, "outer.nn", "a key among n, inner, flag"),
])
def test_nested_sections_name_the_full_key(data, key, expected):
    with pytest.raises(InputError) as e:
        options.apply(Outer(), data, "f.toml", "outer")
    assert str(e.value).startswith(f"f.toml: {key}: expected {expected}")


@pytest.mark.parametrize("cls", [Outer, CalibrateConfig, CoaddConfig, CosmicRayConfig, BackgroundConfig])
def test_section_toml_round_trip(cls):
    text = "\n".join(options.section_toml("sec", cls()))
    assert_documented("sec", cls(), text)
    back = cls()
    options.apply(back, tomllib.loads(text)["sec"], "<defaults>", "sec")
    assert options.to_dict(back) == options.to_dict(cls())


@dataclass
class CalexpSection(CalibrateConfig):
    """A stage's section: the science config plus a switch."""
    enabled: bool = opt(False, "", "Calibrate every visit.")


def test_subclass_adds_fields():
    s = CalexpSection(enabled=True, edge_margin=4)
    assert s.enabled and s.edge_margin == 4 and s.background == BackgroundConfig()
    lines = options.section_toml("calexp", s)
    assert lines.index("enabled = true") < lines.index("[calexp.cosmic_rays]")
    back = CalexpSection()
    options.apply(back, tomllib.loads("\n".join(lines))["calexp"], "f.toml", "calexp")
    assert back == s
    options.apply(back, {"background": {"mesh_size": 64}}, "f.toml", "calexp")
    assert back.background.mesh_size == 64 and CalexpSection().background.mesh_size == 128
    with pytest.raises(InputError, match=r"^CalexpSection: enabled: expected true or false, got 'yes'$"):
        CalexpSection(enabled="yes")


@pytest.mark.parametrize("cls, kwargs, key, expected", [
    (CalibrateConfig, dict(edge_margin=0), "edge_margin", "a value >= 1 pixel"),
    (CalibrateConfig, dict(detect_threshold=float("nan")), "detect_threshold", "a finite number"),
    (CalibrateConfig, dict(cosmic_rays={}), "cosmic_rays", "a CosmicRayConfig"),
    (CoaddConfig, dict(statistic="mode"), "statistic", "one of mean, median"),
    (CoaddConfig, dict(bad_mask_bits=1 << 16), "bad_mask_bits", "a value <= 65535"),
    (CoaddConfig, dict(memory_per_rank=1.5e9), "memory_per_rank", "an integer"),
    (CosmicRayConfig, dict(sharpness=0.0), "sharpness", "a value > 0.0"),
    (CosmicRayConfig, dict(max_gap=0), "max_gap", "a value >= 1 pixel"),
    (BackgroundConfig, dict(clip_iters=101), "clip_iters", "a value <= 100"),
    (BackgroundConfig, dict(mode_estimator="mode"), "mode_estimator", "one of sextractor, median, mean"),
])
def test_science_configs_check_their_fields(cls, kwargs, key, expected):
    with pytest.raises(InputError) as e:
        cls(**kwargs)
    assert str(e.value).startswith(f"{cls.__name__}: {key}: expected {expected}")


def test_check_section_nested_and_numpy_values():
    c = CalibrateConfig()
    c.background.mesh_size = 4                   # changed after construction: checked where it is used
    with pytest.raises(ValueError, match=r"^CalibrateConfig: background\.mesh_size: expected a value >= 8"):
        options.check_section(c)
    # numpy scalars from API callers become Python numbers (the fingerprint is JSON)
    d = CoaddConfig(memory_per_rank=np.int64(1 << 20), clip_sigma=np.float64(2.5), clip_iters=np.int32(1))
    assert [type(v) for v in (d.memory_per_rank, d.clip_sigma, d.clip_iters)] == [int, float, int]
