"""Bad input to `run`, `status` and `lightcurve`: one line on stderr naming the file or option, exit code 2,
no traceback, nothing in the way changed (issue: reliability)."""
import json

import pytest
from conftest import TINY_TOML, cli

from twinkles_hpc import config as config_mod


def one_line(r, *names):
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    for n in names:
        assert str(n) in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def cfg_path(tmp_path):
    p = tmp_path / "tiny.toml"
    p.write_text(TINY_TOML)
    return p


def test_run_config_and_output_that_cannot_be_used(tmp_path, cfg_path):
    one_line(cli("run", tmp_path, "-o", tmp_path / "run"), tmp_path, "a directory")
    latin = tmp_path / "latin.toml"
    latin.write_bytes(b"[run]\nname = \"caf\xe9\"\n")
    one_line(cli("run", latin, "-o", tmp_path / "run"), latin, "UTF-8")
    plain = tmp_path / "plain.txt"
    plain.write_text("mine")
    one_line(cli("run", cfg_path, "-o", plain), plain, "-o")
    assert plain.read_text() == "mine" and not (tmp_path / "run").exists()


@pytest.mark.parametrize("damaged", ["visits.h5", "skymap.json"])
def test_run_and_status_on_a_damaged_run_directory(tmp_path, cfg_path, damaged):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(config_mod.load(cfg_path).to_dict(), indent=1, sort_keys=True))
    (run / damaged).write_bytes(b'{"truncated')
    commands = [("run", cfg_path, "-o", run)] + ([("status", run)] if damaged == "visits.h5" else [])
    for cmd in commands:
        assert "unreadable" in one_line(cli(*cmd), run / damaged)
    assert (run / damaged).read_bytes() == b'{"truncated'


def test_lightcurve_database_ids_and_output(tmp_path):
    fake = tmp_path / "fake.db"
    fake.write_text("not a database")
    one_line(cli("lightcurve", "--db", f"sqlite:///{fake}", "--object", "1"), fake, "not a database")
    one_line(cli("lightcurve", "--db", f"sqlite:///{fake}", "--object", str(2 ** 64)), "--object", "64-bit")
    out = tmp_path / "missing" / "lc.csv"
    one_line(cli("lightcurve", "--db", f"sqlite:///{fake}", "--object", "1", "-o", out), out, "-o")


@pytest.mark.parametrize("change, key", [("max_visits = 12", "cadence.max_visits"),
                                         ("max_visits = 12\nyears = 0.001", "cadence.years")])
def test_cadence_errors_name_the_config_and_its_key(tmp_path, change, key):
    """A selection the cadence cannot give names the config file and the key, not a function."""
    cfg = tmp_path / "c.toml"
    text = TINY_TOML.replace("max_visits = 12", change)
    if key == "cadence.max_visits":
        text = text.replace("max_visits = 12", "max_visits = 3")
    cfg.write_text(text)
    msg = one_line(cli("run", cfg, "-o", tmp_path / "run"), cfg, key)
    assert "expected" in msg and not (tmp_path / "run").exists()


def test_a_damaged_database_is_one_line_in_lightcurve_and_validate(tmp_path):
    from twinkles_hpc.errors import InputError
    from twinkles_hpc.validation.database import database_counts
    bad = tmp_path / "level2.sqlite"               # a SQLite header, then garbage: a truncated copy reads so
    bad.write_bytes(b"SQLite format 3\x00" + bytes(range(256)) * 40)
    one_line(cli("lightcurve", "--db", f"sqlite:///{bad}", "--object", "1"), bad, "intact")
    with pytest.raises(InputError, match="readable catalogue database"):
        database_counts(str(tmp_path), None, f"sqlite:///{bad}", {"Object": 1})


def test_a_closed_pipe_is_not_a_traceback():
    """`twinkles-hpc config --defaults | head -1`: the reader closes the pipe; no traceback, exit 141."""
    import subprocess
    import sys
    p = subprocess.Popen([sys.executable, "-m", "twinkles_hpc", "config", "--defaults"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    p.stdout.readline()
    p.stdout.close()
    err = p.stderr.read().decode()
    assert p.wait(timeout=60) in (0, 141) and "Traceback" not in err, err
