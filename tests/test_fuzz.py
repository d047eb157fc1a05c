"""Malformed input to every subcommand that reads files: random bytes, truncations, wrong encodings,
NaN/inf/huge numbers, missing columns, wrong types. Each must end with exit code 2 and one line naming the
input (or, for a truncation that is still valid input, succeed): never a traceback. In-process, through
`twinkles_hpc.cli.main`, so that the whole set runs in seconds."""
import signal

import numpy as np
import pytest
from conftest import TINY_TOML

from twinkles_hpc import cli

LIGHT_CURVE = "mjd,band,mag_A,magerr_A,mag_B,magerr_B\n" + "".join(
    f"{60000 + 3 * i},{'gr'[i % 2]},{20 + 0.1 * np.sin(i / 5):.4f},0.02,{20.5 + 0.1 * np.sin((i - 10) / 5):.4f},0.02\n"
    for i in range(60))


def garbage(seed, n=2000):
    return np.random.default_rng([seed, 1]).integers(0, 256, n, dtype=np.uint8).tobytes()


def check(capsys, argv, name, may_succeed=False):
    """Exit 2 with one line naming `name`; with `may_succeed` (a truncation that may still be valid input),
    success, or exit 2 with one line about whichever input the command found wanting."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1)}   # `run` installs its own
    try:
        code = cli.main([str(a) for a in argv])
    except SystemExit as exc:                  # argparse's errors
        code = exc.code
    finally:
        for s, h in saved.items():
            signal.signal(s, h)
    err = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    if may_succeed and code == 0:
        return
    assert code == 2 and len(err) == 1 and err[0].startswith("twinkles-hpc") and ": error: " in err[0], \
        (argv, code, err)
    assert may_succeed or str(name) in err[0], (argv, err)


def bad_files(tmp_path, good):
    """(path, may it still be valid?) of corrupted versions of the text `good`."""
    out = []
    for seed in range(3):
        p = tmp_path / f"random{seed}"
        p.write_bytes(garbage(seed))
        out.append((p, False))
    data = good.encode()
    for k, cut in enumerate(np.linspace(1, len(data) - 1, 6).astype(int)):
        p = tmp_path / f"trunc{k}"
        p.write_bytes(data[:cut])
        out.append((p, True))
    p = tmp_path / "latin1"                       # a comment line in latin-1 (text files only)
    p.write_bytes(good.replace("\n", "\n# d\xe9j\xe0\n", 1).encode("latin-1"))
    out.append((p, "\n" not in good))
    (tmp_path / "empty").write_bytes(b"")
    out.append((tmp_path / "empty", True))
    return out


def test_config_files(tmp_path, capsys):
    for p, ok in bad_files(tmp_path, TINY_TOML):
        check(capsys, ["config", "--check", p], p, may_succeed=ok)
    for field, value in (("seed", '"seven"'), ("seed", "nan"), ("seed", "1e400"), ("max_visits", "-3"),
                         ("nx", "inf"), ("nx", "123456789012345678901234567890"), ("radius", "[1, 2]")):
        p = tmp_path / f"bad-{field}.toml"
        p.write_text(TINY_TOML.replace(f"\n{field} = ", f"\n{field} = {value}\n# was ", 1))
        check(capsys, ["config", "--check", p], p)
        check(capsys, ["run", p, "-o", tmp_path / "never"], p)
    assert not (tmp_path / "never").exists()


def test_run_directories(tmp_path, capsys):
    good = b'{"run": {"name": "d\xe9j\xe0"}, "sensor": {"nx": 256}}'       # latin-1 bytes: not UTF-8
    cases = {f"random{s}": garbage(s) for s in range(3)}
    cases.update({f"trunc{k}": good[:k] for k in (1, 10, 30, len(good) - 1)})      # never valid JSON
    cases.update(latin1=good, empty=b"", list=b"[1, 2]")
    for name, data in cases.items():
        d = tmp_path / f"run-{name}"
        d.mkdir()
        (d / "config.json").write_bytes(data)
        for argv in (["status", d], ["validate", d], ["report", d], ["lightcurve", d, "--object", "1"],
                     ["run", tmp_path / "none.toml", "-o", d]):
            check(capsys, argv, "config.json" if argv[0] != "run" else "none.toml")


def test_light_curve_files(tmp_path, capsys):
    for p, ok in bad_files(tmp_path, LIGHT_CURVE):
        check(capsys, ["timedelay", "--json", p], p, may_succeed=ok)
    for col, value in (("mjd", "nan"), ("magerr_B", "-1"), ("mag_A", "bright"), ("mjd", "1e400")):
        text = LIGHT_CURVE.splitlines()
        i = text[0].split(",").index(col)
        row = text[5].split(",")
        row[i] = value
        text[5] = ",".join(row)
        p = tmp_path / f"bad-{col}.csv"
        p.write_text("\n".join(text) + "\n")
        check(capsys, ["timedelay", p], p)


@pytest.mark.parametrize("which", ["science", "template"])
def test_fits_images(tmp_path, capsys, which):
    from astropy.io import fits
    from astropy.wcs import WCS
    good = tmp_path / "good.fits"
    w = WCS(naxis=2)
    w.wcs.ctype, w.wcs.crval, w.wcs.crpix, w.wcs.cdelt = ["RA---TAN", "DEC--TAN"], [53.0, -28.0], [32, 32], \
        [-0.2 / 3600, 0.2 / 3600]
    fits.PrimaryHDU(np.zeros((64, 64), np.float32), header=w.to_header()).writeto(good)
    for p, ok in bad_files(tmp_path, good.read_bytes().decode("latin-1")):
        argv = ["diffim", p, good, "-o", tmp_path / "d.fits"] if which == "science" else \
            ["diffim", good, p, "-o", tmp_path / "d.fits"]
        check(capsys, argv, p, may_succeed=ok)
    assert not (tmp_path / "d.fits").exists()


@pytest.mark.parametrize("argv, name", [
    (["bogus"], "bogus"), (["status"], "rundir"), (["run"], "config"), (["config", "--check"], "--check"),
    (["lightcurve", "--object", "x"], "--object"), (["lightcurve", "--object", "nan"], "--object"),
    (["bench", "diffim", "--nx", "0"], "--nx"), (["bench", "detect", "--stars", "-3"], "--stars"),
    (["bench", "diffim", "--repeat", "0"], "--repeat"), (["bench", "timedelay", "--systems", "-1"], "--systems"),
    (["bench", "imsim", "--nx", "1e9"], "--nx"), (["timedelay"], "FILE"),
    (["timedelay", "--max-delay", "nan", "x.csv"], "--max-delay"),
    (["imsim", "x.txt", "-o", "y.fits", "--nx", "-1"], "--nx"),
    (["validate", "nowhere", "--json", "/nonexistent/dir/v.json"], "--json"),
    (["report", "nowhere", "--validation", "/nonexistent.json"], "--validation")])
def test_arguments(capsys, argv, name):
    """Bad command-line arguments: one line (argparse's usage block replaced), exit 2, naming the option."""
    check(capsys, argv, name)
