"""Threads inside a rank (`twinkles-hpc run --threads N`): the warp and the coadd combination give the same
bits with 1, 2 and 3 OpenMP threads, and a bad thread count is one line and exit code 2."""
import numpy as np
import pytest

from twinkles_hpc import cli, threads
from twinkles_hpc.level2 import warp
from twinkles_hpc.level2.masks import NO_DATA


@pytest.fixture
def kernel_threads():
    """Sets the process's kernel threads for a test, then back to 1."""
    yield threads.set_kernel_threads
    threads.set_kernel_threads(1)


def _rotated_warp():
    """A 0.4 rad rotation, 2 % scale and a slight shear through warp's node grids: (src planes, grid args)."""
    rng = np.random.default_rng(4)
    s, n, step = 420, 380, 32
    src = rng.normal(100, 10, (s, s))                              # float64: the warp kernel's type
    var = rng.uniform(50, 150, (s, s))
    msk = np.zeros((s, s), np.uint16)
    msk[rng.integers(0, s, 900), rng.integers(0, s, 900)] = 4
    gy, gx = np.mgrid[0:n + 2 * step:step, 0:n + 2 * step:step].astype(float)
    c, sn = np.cos(0.4), np.sin(0.4)
    gu = s / 2 + 0.98 * (c * (gx - n / 2) - sn * (gy - n / 2)) + 1e-5 * gx * gy
    gv = s / 2 + 0.98 * (sn * (gx - n / 2) + c * (gy - n / 2))
    return (src, var, msk), (gu, gv, np.full(gu.shape, 0.98 ** 2), step, n)


def test_warp_and_combination_same_bits_at_any_thread_count(kernel_threads):
    from twinkles_hpc import _warp
    (src, var, msk), (gu, gv, gj, step, n) = _rotated_warp()
    warps, stacks = [], []
    for t in (1, 2, 3):
        out = [np.empty((n, n), np.float32), np.empty((n, n), np.float32), np.empty((n, n), np.uint16)]
        covered = _warp.warp(src, var, msk, 0, 0, gu, gv, gj, 0, 0, step, 0, 0, *out, NO_DATA, 0.05, True, t)
        warps.append((covered, out))
        kernel_threads(t)
        rng = np.random.default_rng(9)
        stack = rng.normal(0, 1, (7, 90, 110)).astype(np.float32)
        stack[3, ::5] += 40.0                                         # outliers for the clipping
        comb = [np.empty((90, 110), dt) for dt in (np.float32, np.float32, np.uint16, np.int32, np.float32)]
        warp.combine_stack(stack, rng.uniform(0.5, 2.0, stack.shape).astype(np.float32),
                           (rng.random(stack.shape) < 0.03).astype(np.uint16) * 2, np.ones(7), rng.uniform(0.5, 1.5, 7),
                           comb, bad_mask_bits=2, protect_mask_bits=0, median=False, clip_sigma=3.0, clip_iters=2)
        stacks.append(comb)
    assert 0 < warps[0][0] < n * n and np.isnan(warps[0][1][0]).any()   # edges without data, and data
    for covered, out in warps[1:]:
        assert covered == warps[0][0]
        assert all(np.array_equal(a, b, equal_nan=True) for a, b in zip(out, warps[0][1]))
    for comb in stacks[1:]:
        assert all(np.array_equal(a, b, equal_nan=True) for a, b in zip(comb, stacks[0]))


@pytest.mark.parametrize("value", ["0", "many", "300"])
def test_bad_thread_count_is_one_line_and_exit_2(value, capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        cli.main(["run", str(tmp_path / "c.toml"), "-o", str(tmp_path / "r"), "--threads", value])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "--threads" in err[-1] and "1 to 256" in err[-1]
    assert not (tmp_path / "r").exists()
    with pytest.raises(ValueError):
        threads.set_kernel_threads(int(value) if value.isdigit() else 0)
