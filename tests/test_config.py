import pytest

from twinkles_hpc import config
from twinkles_hpc.errors import InputError


def write(tmp_path, text):
    p = tmp_path / "c.toml"
    p.write_text(text)
    return p


def test_defaults_are_valid_and_documented():
    cfg = config.Config()
    text = config.defaults_toml()
    for name, sec in cfg.sections():
        assert f"[{name}]" in text
        for f in sec.__dataclass_fields__.values():
            assert f.metadata["doc"], f"{name}.{f.name} has no doc"
            assert f"\n{f.name} = " in text
    # the printed defaults parse back to the same config
    import tomllib
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
