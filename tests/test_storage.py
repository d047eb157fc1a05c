"""Pixel-plane storage ([store], store/tables.py): noise-aware quantisation adds the stated noise and no
bias, keeps what it must, and the planes read back as written."""
import h5py
import numpy as np
import pytest

from twinkles_hpc import config
from twinkles_hpc.errors import InputError
from twinkles_hpc.store.tables import Storage, quantize_image, quantize_relative, write_planes


def test_quantize_image_noise_and_bias():
    rng = np.random.default_rng(1)
    var = rng.uniform(100.0, 10000.0, (400, 400))
    data = (rng.normal(0.0, 1.0, var.shape) * np.sqrt(var) + rng.uniform(-50, 50, var.shape)).astype(np.float32)
    q = quantize_image(data, var, 0.25)
    assert q.dtype == np.float32
    err = (q.astype(np.float64) - data) / np.sqrt(var)
    step = np.exp2(np.floor(np.log2(0.25 * np.sqrt(var))))
    assert np.all(np.abs(q - data) <= step / 2 + 1e-3)          # rounding to the step, never more
    assert np.all(step <= 0.25 * np.sqrt(var)) and np.all(step > 0.125 * np.sqrt(var))
    assert abs(err.mean()) < 1e-3                                  # no bias
    assert err.var() < 0.25 ** 2 / 12 and err.var() > 0.125 ** 2 / 12   # q^2 / 12, q in (sigma/8, sigma/4]
    assert np.all(np.mod(q / step, 1.0) == 0.0)


def test_quantize_keeps_what_it_cannot_judge():
    data = np.array([[1.37, np.nan, np.inf, 5.5]], np.float32)
    var = np.array([[np.nan, 4.0, 4.0, 0.0]])
    assert np.array_equal(quantize_image(data, var, 0.25), data, equal_nan=True)


def test_quantize_relative():
    rng = np.random.default_rng(2)
    v = rng.uniform(1e-3, 1e6, 10000).astype(np.float32)
    r = quantize_relative(v, 7)
    assert np.all(np.abs(r / v - 1.0) <= 2.0 ** -8 + 1e-7)
    assert np.all((r.view(np.uint32) & np.uint32((1 << 16) - 1)) == 0)       # 23 - 7 low bits clear
    special = np.array([0.0, np.nan, np.inf, -2.5], np.float32)
    out = quantize_relative(special, 7)
    assert out[0] == 0.0 and np.isnan(out[1]) and np.isinf(out[2]) and out[3] == -2.5
    assert np.array_equal(quantize_relative(v, 23), v)


def test_write_planes_round_trip_and_smaller(tmp_path):
    rng = np.random.default_rng(3)
    var = np.full((300, 300), 900.0, np.float32)
    img = rng.normal(0, 30.0, var.shape).astype(np.float32)
    mask = np.zeros(var.shape, np.uint16)
    planes = {"image": img, "variance": var, "mask": mask}
    lossless = Storage("gzip", 0.0, 0, 128)
    lossy = Storage("gzip", 0.25, 7, 128)
    for name, st in (("plain", None), ("lossless", lossless), ("lossy", lossy)):
        with h5py.File(tmp_path / f"{name}.h5", "w") as fh:
            write_planes(fh, planes, storage=st)
    sizes = {n: (tmp_path / f"{n}.h5").stat().st_size for n in ("plain", "lossless", "lossy")}
    assert sizes["lossy"] < 0.35 * sizes["plain"] and sizes["lossless"] < sizes["plain"]
    with h5py.File(tmp_path / "lossless.h5") as fh:
        assert np.array_equal(fh["image"][...], img) and fh["image"].chunks == (128, 128)
    with h5py.File(tmp_path / "lossy.h5") as fh:
        got = fh["image"][...]
        assert np.array_equal(got, quantize_image(img, var, 0.25)) and np.array_equal(fh["mask"][...], mask)


def test_store_section():
    cfg = config.from_dict({"store": {"quantize": 0.25, "variance_bits": 7}})
    st = Storage.of(cfg.store)
    assert (st.compression, st.quantize, st.variance_bits, st.chunk) == ("none", 0.25, 7, 256)
    assert Storage.of(config.from_dict({}).store).quantize == 0.0
    with pytest.raises(InputError, match="store.quantize"):
        config.from_dict({"store": {"quantize": 2.0}})
    with pytest.raises(InputError, match="store.compression"):
        config.from_dict({"store": {"compression": "zstd"}})


def test_bench_storage_on_the_level2_run(level2_run):
    from twinkles_hpc.bench.storage import OPTIONS, bench_storage
    lines = bench_storage(str(level2_run))
    rows = [ln for ln in lines if ln.startswith("| ") and not ln.startswith("| option")]
    assert len(rows) == len(OPTIONS)
    total = {r.split(" | ")[0][2:]: float(r.split(" | ")[-3]) for r in rows}
    assert total["gzip, quantize 0.25, variance 7 bits"] < 0.4 * total["raw (no filter)"]
    assert total["gzip"] < total["raw (no filter)"]
    with pytest.raises(InputError, match="--visit"):
        bench_storage(str(level2_run), visit_id=123456789)


DROP_TOML = """
[run]
seed = 5
[cadence]
max_visits = 3
bands = "r"
[sky]
radius = 0.04
galaxy_mag_limit = 24.0
star_mag_limit = 24.0
star_density_scale = 4.0
[supernovae]
enabled = false
[lensing]
enabled = false
[sensor]
nx = 600
ny = 600
[store]
compression = "gzip"
quantize = 0.25
variance_bits = 7
keep_eimages = false
[calexp]
enabled = true
"""


def test_run_without_eimages_resumes_and_redoes_a_lost_calexp(tmp_path):
    """keep_eimages = false: the calexp task drops its eimage's pixels; a resume keeps both; a lost calexp
    has its visit simulated again and comes back bit-identical."""
    from conftest import cli

    from twinkles_hpc.store.atomic import open_read
    (tmp_path / "c.toml").write_text(DROP_TOML)
    run = tmp_path / "run"
    cli("run", tmp_path / "c.toml", "-o", run, mpi=2, check=True, timeout=600)
    eimages = sorted((run / "visit").glob("v*.h5"))
    calexps = sorted((run / "calexp").glob("v*.h5"))
    assert len(eimages) == len(calexps) == 3
    for e in eimages:
        with open_read(e) as fh:
            assert "image" not in fh and fh.attrs["pixels_dropped"] and "wcs" in fh.attrs
    with open_read(calexps[0]) as fh:
        assert fh["image"].compression == "gzip" and fh.attrs["calib_ok"]
    r = cli("run", tmp_path / "c.toml", "-o", run, mpi=2, check=True, timeout=600)
    assert "0 to run" in r.stdout
    before = calexps[1].read_bytes()
    calexps[1].unlink()
    r = cli("run", tmp_path / "c.toml", "-o", run, mpi=2, check=True, timeout=600)
    assert "2 to run" in r.stdout and "2 redone" in r.stdout, r.stdout
    assert calexps[1].read_bytes() == before
