"""Skymap, Lanczos-3 warp and the memory-bounded coadd (docs/level2-coadd.md).

Inputs are calexp-like files (docs/data-model.md) of point sources rendered with the imsim renderer on
small sensors at different rotations and dithers (tests may import imsim; level2 may not).
"""
import json
import math
import tracemalloc

import h5py
import numpy as np
import pytest

from twinkles_hpc.imsim.psf import PSFModel
from twinkles_hpc.imsim.render import render_points
from twinkles_hpc.imsim.wcs import SensorWCS
from twinkles_hpc.level2 import coadd as coadd_mod
from twinkles_hpc.level2.coadd import (CoaddConfig, coadd_patch, combine_warps, input_weights, plan_subregions,
                                       read_calexp_info, subregion_bytes)
from twinkles_hpc.level2.masks import CR, DETECTED, EDGE, NO_DATA
from twinkles_hpc.level2.skymap import SkyMap
from twinkles_hpc.level2.warp import kernel_weights, mapping_grid, pixel_map, source_bbox, warp_image

RA0, DEC0, SCALE = 53.1, -27.3, 0.2


def sensor(rot, dx=0.0, dy=0.0, n=(200, 200), scale=SCALE):
    """SensorWCS pointed dx, dy arcsec (east, north) from the field centre."""
    return SensorWCS(RA0 + dx / 3600 / np.cos(np.radians(DEC0)), DEC0 + dy / 3600, rot, n[0], n[1], scale)


def stars(n=40, seed=3):
    rng = np.random.default_rng(seed)
    ra = RA0 + rng.uniform(-14, 14, n) / 3600 / np.cos(np.radians(DEC0))
    dec = DEC0 + rng.uniform(-14, 14, n) / 3600
    return ra, dec, 10 ** rng.uniform(4.0, 5.5, n)         # nJy


def make_calexps(d, n, *, seed=1, artefact=None, shape=(200, 200)):
    """n calexps in directory d: stars (nJy) at fixed sky positions, each visit with its rotation, dither,
    seeing and zero point; noise, variance = signal + sky + read noise^2, CR and EDGE mask bits.
    artefact = (visit, ra, dec, electrons): an unmasked 5 x 5 px blob added to one visit."""
    ra, dec, flux_njy = stars()
    paths = []
    for k in range(n):
        rng = np.random.default_rng([seed, k])
        sw = sensor((37.0 * k + 11) % 360, *rng.uniform(-3, 3, 2), n=shape)
        w = sw.astropy()
        scale = 10 ** (-0.4 * (rng.uniform(28.0, 28.6) - 31.4))       # nJy per electron
        x, y = w.wcs_world2pix(ra, dec, 0)
        model = np.zeros((shape[1], shape[0]))
        render_points(model, x, y, flux_njy / scale, PSFModel(rng.uniform(0.6, 0.9), nx=shape[0], ny=shape[1]))
        var = model + 120.0 + 5.0 ** 2
        image = model + rng.standard_normal(model.shape) * np.sqrt(var)
        mask = np.zeros(model.shape, np.uint16)
        mask[:2], mask[-2:], mask[:, :2], mask[:, -2:] = EDGE, EDGE, EDGE, EDGE
        cr = rng.integers(0, model.size, 8)
        mask.flat[cr] |= CR
        image.flat[cr] += 5000.0
        if artefact and artefact[0] == k:
            ax, ay = w.wcs_world2pix(artefact[1], artefact[2], 0)
            ix, iy = int(round(float(ax))), int(round(float(ay)))
            image[iy - 2:iy + 3, ix - 2:ix + 3] += artefact[3]
        p = d / f"v{k:08d}-r.h5"
        with h5py.File(p, "w") as f:
            f["image"], f["variance"], f["mask"] = image.astype(np.float32), var.astype(np.float32), mask
            f["background"] = np.full((4, 4), 120.0, np.float32)
            f.attrs.update(wcs=w.to_header_string(), flux_njy_per_electron=scale, visit_id=k, band="r",
                           zero_point=31.4 + 2.5 * np.log10(scale))
        paths.append(p)
    return paths


def skymap_for(paths, patch_size=150, overlap=20):
    infos = [read_calexp_info(p) for p in paths]
    ras, decs = zip(*(c.wcs.calc_footprint(axes=c.shape[::-1], center=False).T for c in infos))
    return SkyMap.from_footprints(ras, decs, pixel_scale=SCALE, patch_size=patch_size, overlap=overlap)


def reference_coadd(paths, patch, config):
    """Every input warped whole onto the whole patch in memory, then combined."""
    stack = [[], [], []]
    scales, infos = [], []
    for p in paths:
        c = read_calexp_info(p)
        infos.append(c)
        with h5py.File(p, "r") as f:
            src = [f[k][...] for k in ("image", "variance", "mask")]
        for s, a in zip(stack, warp_image(*src, c.wcs, patch.tract_wcs, patch.bbox, mask_weight=config.mask_weight)):
            s.append(a)
        scales.append(c.flux_njy_per_electron)
    return combine_warps(*(np.array(s) for s in stack), scales, input_weights(infos), config)


# ---------------------------------------------------------------- skymap

def test_skymap_covers_footprints_and_round_trips():
    corners = [sensor(r, dx, dy).corners() for r, dx, dy in [(0, 0, 0), (30, 700, 0), (75, 0, -700)]]
    sm = SkyMap.from_footprints(*zip(*corners), patch_size=1000, overlap=50)
    for ra, dec in corners:
        x, y = sm.wcs.wcs_world2pix(ra, dec, 0)
        assert x.min() >= -0.5 and x.max() <= sm.nx - 0.5 and y.min() >= -0.5 and y.max() <= sm.ny - 0.5
    assert sm.n_patches == (sm.nx // 1000, sm.ny // 1000) and len(sm.patches) == np.prod(sm.n_patches)
    p = sm.patch(1, 1)
    assert p.inner_bbox == (1000, 1000, 1000, 1000) and p.bbox == (950, 950, 1100, 1100)
    assert sm.patch(0, 0).bbox[:2] == (0, 0)                          # clipped to the tract
    np.testing.assert_allclose(p.wcs.pixel_to_world_values(0, 0), sm.wcs.pixel_to_world_values(950, 950))
    sm2 = SkyMap.from_dict(json.loads(json.dumps(sm.to_dict())))
    assert sm2.to_dict() == sm.to_dict() and sm2.wcs.to_header_string() == sm.wcs.to_header_string()
    x, y = sm.wcs.wcs_world2pix(*corners[0], 0)
    assert {p.index for p in sm.patches_overlapping(*corners[0])} == {
        (int(i), int(j)) for i in np.floor(x / 1000) for j in np.floor(y / 1000)}


# ---------------------------------------------------------------- warp

def test_kernel_weights_reproduce_quadratics():
    for f in np.random.default_rng(2).random(200):
        t = f + 2 - np.arange(6)
        w, exact = kernel_weights(f), kernel_weights(f, exact=True)
        assert np.abs(w - exact).max() < 1e-7                                  # the table
        assert abs(exact.sum() - 1) < 1e-14 and abs(exact @ t) < 1e-14 and abs(exact @ t ** 2) < 1e-13
        plain = kernel_weights(f, "lanczos3_plain", exact=True)
        lanczos = np.sinc(t) * np.sinc(t / 3)
        np.testing.assert_allclose(plain, lanczos / lanczos.sum(), rtol=1e-12, atol=1e-15)
    assert list(kernel_weights(0.0)) == [0, 0, 1, 0, 0, 0]



@pytest.mark.parametrize("mask_weight", [0.05, 0.5])
def test_warp_mask_is_the_or_of_the_qualifying_taps(mask_weight):
    """The kernel's short cuts (no bit in the footprint's summary tiles; all its bits alike) give, pixel by
    pixel, the rule itself: the OR of the taps with |wx wy| >= mask_weight, here evaluated tap by tap at the
    positions the node grid interpolates, on a mask of uniform blocks, lone bits and mixed bits."""
    from twinkles_hpc import _warp
    s, n, step = 140, 100, 16
    mask = np.zeros((s, s), np.uint16)
    mask[20:52, 30:70] = DETECTED                        # a uniform block, larger than the summary tiles
    mask[60:75, 60:90] = CR | DETECTED                   # another bit pattern, touching the block's edge
    mask[70:100, 80:84] |= EDGE                          # mixed bits
    rng = np.random.default_rng(5)
    mask[rng.integers(0, s, 60), rng.integers(0, s, 60)] |= CR        # lone bits
    gy, gx = np.mgrid[0:n + 2 * step:step, 0:n + 2 * step:step].astype(float)
    c, sn = np.cos(0.3), np.sin(0.3)
    gu = np.ascontiguousarray(s / 2 + 1.25 * (c * (gx - n / 2) - sn * (gy - n / 2)))
    gv = np.ascontiguousarray(s / 2 + 1.25 * (sn * (gx - n / 2) + c * (gy - n / 2)))
    out = [np.empty((n, n), np.float32), np.empty((n, n), np.float32), np.empty((n, n), np.uint16)]
    _warp.warp(np.zeros((s, s)), np.zeros((s, s)), mask, 0, 0, gu, gv, np.ones_like(gu), 0, 0, step, 0, 0,
               *out, NO_DATA, mask_weight, True, 1)
    expected = np.empty((n, n), np.uint16)
    uniform_unqualified = 0                              # footprints with bits, all alike, and no tap qualifying
    for j in range(n):
        r, ty = j // step, (j % step) / step
        ru, rv = gu[r] + ty * (gu[r + 1] - gu[r]), gv[r] + ty * (gv[r + 1] - gv[r])
        for i in range(n):
            k, tx = i // step, (i % step) / step
            u, v = ru[k] + tx * (ru[k + 1] - ru[k]), rv[k] + tx * (rv[k + 1] - rv[k])
            if not (2 <= u < s - 3 and 2 <= v < s - 3):
                expected[j, i] = NO_DATA
                continue
            wx, wy = kernel_weights(u - np.floor(u)), kernel_weights(v - np.floor(v))
            foot = mask[int(v) - 2:int(v) + 4, int(u) - 2:int(u) + 4]
            taps = foot[np.abs(np.outer(wy, wx)) >= mask_weight]
            expected[j, i] = np.bitwise_or.reduce(taps) if taps.size else 0
            uniform_unqualified += bool(foot.min() == foot.max() > 0 and taps.size == 0)
    assert (expected == NO_DATA).sum() > 500 and ((expected != 0) & (expected != NO_DATA)).sum() > 800
    assert uniform_unqualified > (20 if mask_weight == 0.5 else -1)
    np.testing.assert_array_equal(out[2], expected)


def test_warp_skips_the_given_pixels_and_keeps_the_others():
    """skip's pixels are left without data (not computed); every other pixel is the same bits as without it;
    a skip of the wrong shape or type is refused."""
    rng = np.random.default_rng(8)
    img = rng.normal(size=(120, 130)).astype(np.float32)
    var = rng.uniform(1, 2, img.shape).astype(np.float32)
    mask = (rng.integers(0, 64, img.shape) & ~NO_DATA).astype(np.uint16)
    src, dst = sensor(20.0, n=(130, 120)).astropy(), sensor(47.0, 0.3, -0.2, n=(130, 120)).astropy()
    box = (5, 7, 110, 100)
    full = warp_image(img, var, mask, src, dst, box)
    skip = np.zeros((100, 110), bool)
    skip[20:60, 30:90] = True                            # a block, as an earlier patch's fill
    skip[rng.random(skip.shape) < 0.1] = True            # and scattered pixels
    part = warp_image(img, var, mask, src, dst, box, skip=skip)
    assert (full[3] & skip).sum() > 3000 and (full[3] & ~skip).sum() > 3000
    for a, b in zip(full[:3], part[:3]):
        np.testing.assert_array_equal(b[~skip], a[~skip])
    assert np.isnan(part[0][skip]).all() and np.isnan(part[1][skip]).all() and (part[2][skip] == NO_DATA).all()
    assert not part[3][skip].any()
    view = np.zeros((120, 130), bool)[10:110, 10:120]    # a non-contiguous view is accepted
    np.testing.assert_array_equal(warp_image(img, var, mask, src, dst, box, skip=view)[0], full[0])
    for bad in (skip[:50], skip.astype(np.uint8)):
        with pytest.raises(ValueError, match="skip must be a bool array"):
            warp_image(img, var, mask, src, dst, box, skip=bad)


def test_warp_smooth_function_and_mapping_accuracy():
    src, dst = sensor(0.0).astropy(), sensor(33.0, 0.37, -0.81).astropy()
    f = lambda x, y: np.exp(-((x - 101.3) ** 2 + (y - 96.6) ** 2) / (2 * 15.0 ** 2)) + 1e-3 * x - 5e-4 * y  # noqa
    y, x = np.mgrid[0:200, 0:200]
    out, _, _, cov = warp_image(f(x, y), None, None, src, dst, (0, 0, 200, 200))
    u, v = (a.reshape(x.shape) for a in pixel_map(src, dst, x.ravel(), y.ravel()))
    assert cov.sum() > 0.7 * cov.size
    assert np.abs(out - f(u, v))[cov].max() < 1e-3 * np.abs(f(u, v)).max()
    assert mapping_grid(src, dst, (0, 0, 4000, 4072)).max_error < 1e-3          # px, the default 32 px grid
    # outside the source footprint: NO_DATA, NaN
    _, _, m, cov = warp_image(f(x, y), None, None, src, dst, (150, 150, 100, 100))
    assert (~cov).any() and (m[~cov] & NO_DATA).all()


def star_moments(img, x0, y0, r=30):
    ys, xs = np.mgrid[0:img.shape[0], 0:img.shape[1]]
    win = (np.abs(xs - x0) <= r) & (np.abs(ys - y0) <= r)
    w = np.where(win, img, 0.0)
    return w.sum(), (w * xs).sum() / w.sum(), (w * ys).sum() / w.sum()


@pytest.mark.parametrize("rot,scale", [(30.0, SCALE), (-71.0, SCALE), (45.0, 0.3)])
def test_warp_preserves_point_source_flux_and_centroid(rot, scale):
    ra, dec = RA0 + 0.13 / 3600, DEC0 - 0.41 / 3600
    s_wcs, d_wcs = sensor(0.0).astropy(), sensor(rot, 0.3, 0.7, scale=scale).astropy()
    img = np.zeros((200, 200))
    sx, sy = s_wcs.wcs_world2pix(ra, dec, 0)
    render_points(img, sx, sy, 1e5, PSFModel(0.7, nx=200, ny=200))
    out, var, _, cov = warp_image(img, np.full(img.shape, 4.0), None, s_wcs, d_wcs, (0, 0, 200, 200))
    dx, dy = (float(a) for a in d_wcs.wcs_world2pix(ra, dec, 0))
    f_src, cx_src, cy_src = star_moments(img, float(sx), float(sy))
    f_dst, cx, cy = star_moments(np.where(cov, out, 0.0), dx, dy)
    assert abs(f_dst / f_src - 1) < 0.005
    # the source's own centroid differs from the rendered position by the window and sampling; compare
    # the warped centroid's offset from the WCS prediction with that, in the same frame
    assert np.hypot(cx - dx, cy - dy) < 0.01 + np.hypot(cx_src - float(sx), cy_src - float(sy))
    assert np.hypot(cx - dx, cy - dy) < 0.01
    ratio = (scale / SCALE) ** 2
    assert 0.5 * 4.0 * ratio ** 2 < np.median(var[cov]) < 1.01 * 4.0 * ratio ** 2   # sum w^2 <= 1, J^2


def test_identity_warp_is_exact_and_boxes_agree():
    rng = np.random.default_rng(5)
    img = rng.normal(size=(120, 130)).astype(np.float32)
    var = rng.uniform(1, 2, img.shape).astype(np.float32)
    mask = (rng.integers(0, 64, img.shape) & ~NO_DATA).astype(np.uint16)
    w = sensor(20.0, n=(130, 120)).astropy()
    out, v, m, cov = warp_image(img, var, mask, w, w, (0, 0, 130, 120))
    inner = np.s_[2:-3, 2:-3]
    assert cov[inner].all() and not cov[:2].any() and not cov[-3:].any()
    assert np.array_equal(out[inner], img[inner]) and np.array_equal(v[inner], var[inner])
    assert np.array_equal(m[inner], mask[inner])
    # an integer shift is exact too: dst pixel (x, y) is src pixel (x - 3, y + 2)
    shifted = w.deepcopy()
    shifted.wcs.crpix = w.wcs.crpix + [3, -2]
    out, v, m, _ = warp_image(img, var, mask, w, shifted, (0, 0, 130, 120))
    sl, src = np.s_[10:-10, 10:-10], np.s_[12:-8, 7:-13]
    assert np.array_equal(out[sl], img[src]) and np.array_equal(m[sl], mask[src])
    # a sub-box from a hyperslab gives the same bits as the whole warp
    dst = sensor(63.0, 0.2, 0.1, n=(130, 120)).astropy()
    whole = warp_image(img, var, mask, w, dst, (0, 0, 130, 120))
    box = (37, 21, 50, 61)
    sx, sy, snx, sny = source_bbox(w, dst, box, img.shape)
    part = warp_image(img[sy:sy + sny, sx:sx + snx], var[sy:sy + sny, sx:sx + snx],
                      mask[sy:sy + sny, sx:sx + snx], w, dst, box, src_origin=(sx, sy))
    sl = np.s_[21:82, 37:87]
    for a, b in zip(whole, part):
        assert np.array_equal(a[sl], b, equal_nan=True)
    # ... and so does the sub-box on the whole box's node grid, which must cover it
    grid = mapping_grid(w, dst, (0, 0, 130, 120))
    on_grid = warp_image(img[sy:sy + sny, sx:sx + snx], var[sy:sy + sny, sx:sx + snx],
                         mask[sy:sy + sny, sx:sx + snx], w, dst, box, src_origin=(sx, sy), grid=grid)
    for a, b in zip(whole, on_grid):
        assert np.array_equal(a[sl], b, equal_nan=True)
    with pytest.raises(ValueError, match="does not cover the box"):
        warp_image(img, var, mask, w, dst, (0, 0, 130, 120), grid=mapping_grid(w, dst, box))


# ---------------------------------------------------------------- coadd

def test_plan_subregions_tiles_and_fits():
    box = (0, 0, 4200, 4200)
    small, large = (plan_subregions(box, n, 256 << 20) for n in (64, 16))
    for subs, n in ((small, 64), (large, 16)):
        area = np.zeros((4200, 4200), bool)
        for x0, y0, nx, ny in subs:
            assert not area[y0:y0 + ny, x0:x0 + nx].any()
            area[y0:y0 + ny, x0:x0 + nx] = True
            assert subregion_bytes(max(nx, ny), n) <= 256 << 20
        assert area.all()
    assert max(s[2] for s in small) < max(s[2] for s in large)
    with pytest.raises(MemoryError, match="too small"):
        plan_subregions(box, 1000, 1 << 20)


@pytest.fixture(scope="module")
def calexps(tmp_path_factory):
    d = tmp_path_factory.mktemp("calexps")
    return make_calexps(d, 16)


@pytest.mark.parametrize("statistic", ["mean", "median"])
def test_coadd_equals_in_memory_reference(calexps, statistic, tmp_path, monkeypatch):
    paths = calexps[:6]
    patch = skymap_for(paths).patch(0, 1)
    config = CoaddConfig(memory_per_rank=3 << 20, statistic=statistic)
    reads = []
    read = coadd_mod._read_hyperslab
    monkeypatch.setattr(coadd_mod, "_read_hyperslab", lambda p, box, ws: (reads.append(box), read(p, box, ws))[1])
    got = coadd_patch(paths, patch, config)
    ref = reference_coadd(paths, patch, config)
    assert len(got["subregions"]) >= 4
    for k in ref:
        assert np.array_equal(got[k], ref[k], equal_nan=True), k                # bit for bit
    good = got["n_visits"] > 0
    assert good.mean() > 0.5 and got["n_visits"].max() == len(paths)
    assert np.all(got["mask"][~good] & NO_DATA) and np.allclose(got["depth"][good], 1 / got["variance"][good])
    # only hyperslabs are read: each much smaller than a calexp, together about the patch's overlap
    assert max(b[2] * b[3] for b in reads) < 0.5 * 200 * 200
    # the file output is the same
    out = coadd_patch(paths, patch, config, out=tmp_path / "coadd.h5")
    with h5py.File(out, "r") as f:
        for k in ref:
            assert np.array_equal(f[k][...], ref[k], equal_nan=True), k
        assert f.attrs["unit"] == "nJy per pixel" and len(f.attrs["inputs"]) == len(paths)


def test_coadd_peak_memory_within_budget(calexps):
    budget = 2 << 20
    sides = {}
    for n in (4, 16):
        paths = calexps[:n]
        patch = skymap_for(calexps).patch(0, 0)
        config = CoaddConfig(memory_per_rank=budget)
        tracemalloc.start()
        try:
            tracemalloc.reset_peak()
            res = coadd_patch(paths, patch, config)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        sides[n] = max(max(s[2], s[3]) for s in res["subregions"])
        assert peak <= budget, f"{n} inputs: peak {peak} > budget {budget}"
        assert len(res["subregions"]) > 1
    assert sides[16] < sides[4]


def test_sigma_clipping_rejects_artefact(tmp_path):
    art_ra, art_dec = RA0 + 3.0 / 3600, DEC0 - 2.0 / 3600
    paths = make_calexps(tmp_path, 5, seed=9, artefact=(2, art_ra, art_dec, 3000.0))
    patch = skymap_for(paths, patch_size=400).patch(0, 0)
    x, y = (int(round(float(a))) for a in patch.wcs.wcs_world2pix(art_ra, art_dec, 0))
    blob = np.s_[y - 1:y + 2, x - 1:x + 2]
    clipped = coadd_patch(paths, patch, CoaddConfig(memory_per_rank=64 << 20))
    plain = coadd_patch(paths, patch, CoaddConfig(memory_per_rank=64 << 20, clip_iters=0))
    clean = coadd_patch([p for k, p in enumerate(paths) if k != 2], patch, CoaddConfig(memory_per_rank=64 << 20))
    sigma = np.sqrt(clean["variance"][blob])
    assert np.all(plain["n_visits"][blob] == 5)
    assert np.all(plain["image"][blob] - clean["image"][blob] > 20 * sigma)     # the artefact is there
    # clipped: as if the visit were absent (up to a rare 3-sigma noise excursion clipped in another input)
    assert np.all(clipped["n_visits"][blob] <= 4) and np.mean(clipped["n_visits"][blob] == 4) > 0.7
    assert np.all(np.abs(clipped["image"][blob] - clean["image"][blob]) < 3 * sigma)
    # elsewhere clipping rarely bites on pure noise
    both = (plain["n_visits"] == 5)
    assert (clipped["n_visits"][both] == 5).mean() > 0.95


def _clipped_mean_rule(x, v, m, scale, weight, bad, protect, clip_sigma, clip_iters):
    """One pixel of the clipped mean as CoaddConfig documents it, in Python floats: (value, variance, n)."""
    good = [k for k in range(len(x)) if not m[k] & bad and math.isfinite(x[k]) and math.isfinite(v[k]) and v[k] > 0]
    xs = [float(x[k]) * scale[k] for k in good]
    vs = [float(v[k]) * (scale[k] * scale[k]) for k in good]
    ws = [weight[k] for k in good]
    n, keep = len(good), [True] * len(good)
    if n == 0:
        return math.nan, math.nan, 0

    def median(a):
        a = sorted(a)
        return a[n // 2] if n % 2 else 0.5 * (a[n // 2 - 1] + a[n // 2])

    if clip_iters > 0 and n >= 3 and 2 * sum(bool(m[k] & protect) for k in good) < n:
        c = median(xs)
        for _ in range(clip_iters):
            rs = [abs(a - c) / math.sqrt(b) for a, b in zip(xs, vs)]
            mad = 1.482602218505602 * median(rs)
            thr = clip_sigma * max(mad, 1.0)
            keep = [r <= thr for r in rs]
            sw = swx = 0.0
            for k in range(n):
                if keep[k]:
                    sw, swx = sw + ws[k], swx + ws[k] * xs[k]
            c = swx / sw
    sw = swx = swv = 0.0
    for k in range(n):
        if keep[k]:
            sw, swx, swv = sw + ws[k], swx + ws[k] * xs[k], swv + ws[k] * ws[k] * vs[k]
    return swx / sw, swv / (sw * sw), sum(keep)


def test_clipped_mean_is_the_documented_rule_pixel_by_pixel():
    """The compiled combination against the rule written out per pixel, bit for bit, on pixels of pure noise
    (every input kept without a spread estimate), of a spread wider than the errors (the MAD widens the
    threshold), with outliers, masked and non-finite inputs, and inside protected sources."""
    from twinkles_hpc.level2.warp import combine_stack
    rng = np.random.default_rng(31)
    N, ny, nx = 7, 24, 30
    var = rng.uniform(50, 150, (N, ny, nx)).astype(np.float32)
    img = (100 + np.sqrt(var) * rng.standard_normal((N, ny, nx))).astype(np.float32)
    img[:, 8:16] += (40 * rng.standard_normal((N, 8, nx))).astype(np.float32)      # spread >> errors
    out_k = rng.integers(0, N, (ny, nx))
    hit = rng.random((ny, nx)) < 0.3
    img[out_k[hit], np.nonzero(hit)[0], np.nonzero(hit)[1]] += 500                   # outliers
    img[rng.random(img.shape) < 0.03] = np.nan
    mask = np.zeros((N, ny, nx), np.uint16)
    mask[rng.random(mask.shape) < 0.05] = CR
    mask[:, 18:, :10][rng.random((N, 6, 10)) < 0.7] |= DETECTED
    scale, weight = rng.uniform(0.8, 1.2, N), rng.uniform(0.5, 1.5, N)
    out = [np.empty((ny, nx), t) for t in (np.float32, np.float32, np.uint16, np.int32, np.float32)]
    combine_stack(img, var, mask, scale, weight, out, bad_mask_bits=CR, protect_mask_bits=DETECTED, median=False,
                  clip_sigma=3.0, clip_iters=2)
    kept_all = clipped = 0
    for j in range(ny):
        for i in range(nx):
            c, cv, n = _clipped_mean_rule(img[:, j, i], var[:, j, i], mask[:, j, i], scale, weight, CR, DETECTED,
                                          3.0, 2)
            assert out[3][j, i] == n
            np.testing.assert_array_equal(out[0][j, i], np.float32(c))
            np.testing.assert_array_equal(out[1][j, i], np.float32(cv))
            good = np.count_nonzero(~(mask[:, j, i] & CR).astype(bool) & np.isfinite(img[:, j, i]))
            kept_all += n == good
            clipped += n < good
    assert kept_all > 300 and clipped > 100


def test_patch_without_inputs_is_no_data(calexps):
    patch = SkyMap(RA0 + 1.0, DEC0, patch_size=64, overlap=0).patch(0, 0)
    res = coadd_patch(calexps[:3], patch, CoaddConfig(memory_per_rank=8 << 20))
    assert np.isnan(res["image"]).all() and (res["mask"] == NO_DATA).all() and not res["n_visits"].any()


# ---------------------------------------------------------------- coadd PSF

def mixture_calexps(d, n, flux_njy=2e5):
    """n noise-free calexps of a 3 x 3 grid of stars, each visit with its rotation, seeing, zero point and
    sky, rendered with an elliptical MixturePSF (fixed in its pixel frame, so rotated on the sky) that is
    stored as the calexp's `psf` attribute (ap_corr 1)."""
    from twinkles_hpc.level2.photometry import mixture_image
    from twinkles_hpc.level2.psf import MixturePSF
    g = np.arange(-1, 2) * 9.0
    ra = RA0 + np.repeat(g, 3) / 3600 / np.cos(np.radians(DEC0))
    dec = DEC0 + np.tile(g, 3) / 3600
    yy, xx = np.mgrid[0:200, 0:200]
    paths = []
    for k in range(n):
        rng = np.random.default_rng([17, k])
        w = sensor((53.0 * k + 7) % 360, *rng.uniform(-3, 3, 2)).astropy()
        scale = 10 ** (-0.4 * (rng.uniform(28.0, 28.6) - 31.4))
        psf = MixturePSF(np.array([0.6, 0.3, 0.1]), np.array([1.0, 1.8, 4.0]),
                         np.array([np.log(rng.uniform(1.2, 1.9))]), np.array([0.08]), np.array([-0.05]), 0,
                         200, 200)
        comps = psf.components_at(100.0, 100.0)
        x, y = w.wcs_world2pix(ra, dec, 0)
        model = sum(flux_njy / scale * mixture_image(*(c[0] for c in comps), xx - xi, yy - yi)
                    for xi, yi in zip(x, y))
        sky = rng.uniform(80, 400)
        with h5py.File(d / f"m{k:08d}-r.h5", "w") as f:
            f["image"], f["variance"] = model.astype(np.float32), (model + sky).astype(np.float32)
            f["mask"] = np.zeros(model.shape, np.uint16)
            f.attrs.update(wcs=w.to_header_string(), flux_njy_per_electron=scale, psf=json.dumps(psf.to_dict()),
                           ap_corr=1.0)
        paths.append(d / f"m{k:08d}-r.h5")
    return paths, ra, dec, flux_njy


def test_coadd_psf_matches_coadded_stars(tmp_path):
    """The coadd PSF (the weighted inputs' PSFs through the warp's Jacobians) fits the coadded stars: PSF
    flux and second moments, for elliptical PSFs at different rotations, seeings and weights."""
    from twinkles_hpc.level2.coaddpsf import CoaddPSF
    from twinkles_hpc.level2.photometry import forced_photometry, mixture_image
    paths, ra, dec, flux = mixture_calexps(tmp_path, 4)
    patch = skymap_for(paths, patch_size=400).patch(0, 0)
    # no clipping: noise-free inputs of different PSFs differ by more than their (zero) noise in the wings
    res = coadd_patch(paths, patch, CoaddConfig(memory_per_rank=64 << 20, psf_grid_step=25, clip_iters=0))
    psf = CoaddPSF(res, 25)
    assert psf.n_inputs.max() == 4 and np.isfinite(res["psf_weight"]).all()
    np.testing.assert_allclose(res["psf_weight"].sum(-1)[psf.n_inputs > 0], 1.0, rtol=1e-12)
    x, y = (np.asarray(a) for a in patch.wcs.wcs_world2pix(ra, dec, 0))
    assert (psf.n_inputs[psf.node(x, y)] == 4).all() and (res["n_visits"][np.rint(y).astype(int),
                                                                         np.rint(x).astype(int)] == 4).all()
    ph = forced_photometry(res["image"], res["variance"], res["mask"], x, y, psf)
    print("coadd PSF flux / true:", np.round(ph["psf_flux"] / flux, 5))
    # the Lanczos-3 warp sharpens a core of sigma 1.2 - 1.9 px slightly (+0.1 - 0.3% with one input)
    assert np.all(np.abs(ph["psf_flux"] / flux - 1) < 4e-3)
    yy, xx = np.mgrid[-12:13, -12:13]
    comps = psf.components_at(x, y)
    for k in range(len(x)):
        i, j = int(round(x[k])), int(round(y[k]))
        dx, dy = xx + i - x[k], yy + j - y[k]
        got = res["image"][j - 12:j + 13, i - 12:i + 13]
        want = flux * mixture_image(*(c[k] for c in comps), dx, dy)
        m = [((a * dx * dx).sum(), (a * dx * dy).sum(), (a * dy * dy).sum()) / a.sum() for a in (got, want)]
        assert np.allclose(m[0], m[1], rtol=0, atol=2e-3 * m[1][0]), (k, m)         # measured 3e-4
        assert np.abs(got - want).max() < 1.2e-2 * want.max()                        # measured 7e-3


def test_tiles_assembled_equal_the_one_task_coadd(tmp_path):
    """A patch coadded in tiles (separate tasks) and assembled is the file one task writes, bit for bit:
    every plane (quantised and compressed by [store]), the coadd PSF grid, the attributes; only the
    sub-region plan differs. A PSF cell cut by a tile boundary is summed by the tile holding its first
    pixel; overlapping or missing tiles are refused."""
    from twinkles_hpc.level2.coadd import assemble_tiles, coadd_tile, read_inputs, tiles, write_inputs
    from twinkles_hpc.store.tables import Storage
    paths, _, _, _ = mixture_calexps(tmp_path, 4)
    patch = skymap_for(paths, patch_size=400).patch(0, 0)
    config = CoaddConfig(memory_per_rank=4 << 20, psf_grid_step=25)
    storage = Storage(compression="gzip", quantize=0.25, variance_bits=6, chunk=64)
    whole = coadd_patch(paths, patch, config, out=tmp_path / "whole.h5", storage=storage)
    boxes = tiles(patch.shape, 5)
    assert len(boxes) == 6 and sum(w * h for _, _, w, h in boxes) == patch.shape[0] * patch.shape[1]
    assert any(x % 25 or y % 25 for x, y, _, _ in boxes[1:])  # cut inside PSF cells
    assert tiles((10, 7), 1) == [(0, 0, 7, 10)] and len(tiles((2, 2), 100)) == 4
    write_inputs(tmp_path / "inputs.h5", [read_calexp_info(p) for p in paths], tmp_path, {"band": "r"})
    infos, attrs = read_inputs(tmp_path / "inputs.h5", tmp_path)
    assert attrs == {"band": "r"} and [c.path for c in infos] == [str(p) for p in paths]
    parts = [coadd_tile(infos, patch, config, b, tmp_path / f"t{k}.h5", storage) for k, b in enumerate(boxes)]
    joined = assemble_tiles(parts, patch, tmp_path / "joined.h5", storage)
    with h5py.File(whole, "r") as a, h5py.File(joined, "r") as b:
        assert set(a) == set(b) and "psf_weight" in a
        for k in a:
            if k != "subregions":
                assert np.array_equal(a[k][...], b[k][...], equal_nan=True), k
        assert a["image"].compression == b["image"].compression == "gzip"
        assert {k: str(v) for k, v in a.attrs.items()} == {k: str(v) for k, v in b.attrs.items()}
        assert len(b["subregions"]) >= 6
    with pytest.raises(ValueError, match="uncovered"):
        assemble_tiles(parts[:-1], patch, tmp_path / "gap.h5", storage)
    with pytest.raises(ValueError, match="overlaps"):
        assemble_tiles(parts + parts[:1], patch, tmp_path / "twice.h5", storage)


def test_clipping_spares_sources_detected_in_most_inputs():
    """Three inputs whose star cores differ by their PSFs (far more than their noise): clipping one of them
    pixel by pixel would bias the star, so where at least half the good inputs flag DETECTED the weighted
    mean keeps them all; an artefact DETECTED in one input only is still clipped."""
    img = np.zeros((3, 2, 1), np.float32)
    img[:, 0, 0] = [1000.0, 1020.0, 2200.0]                                # pixel 0: a star core
    img[:, 1, 0] = [3.0, -2.0, 900.0]                                      # pixel 1: an artefact in input 2
    var = np.full(img.shape, 100.0, np.float32)
    weights = np.array([1.0, 2.0, 0.5])
    cfg = CoaddConfig()
    for det, n_core in ((DETECTED, 3), (0, 2)):
        mask = np.zeros(img.shape, np.uint16)
        mask[:, 0, 0] = det
        mask[2, 1, 0] = DETECTED
        res = combine_warps(img, var, mask, np.ones(3), weights, cfg)
        assert res["n_visits"][0, 0] == n_core and res["n_visits"][1, 0] == 2
        assert res["image"][1, 0] == pytest.approx((3.0 - 2 * 2.0) / 3.0, abs=1e-5)
    mask[:, 0, 0] = DETECTED
    res = combine_warps(img, var, mask, np.ones(3), weights, cfg)
    assert res["image"][0, 0] == pytest.approx((1000 + 2040 + 1100) / 3.5, rel=1e-6)
    assert res["variance"][0, 0] == pytest.approx(100 * (1 + 4 + 0.25) / 3.5 ** 2, rel=1e-6)


def test_edge_only_where_every_used_input_is_at_its_edge():
    """With and_mask_bits = EDGE the coadd carries EDGE only where every input it uses does; other bits
    (DETECTED) are ORed; with the default (0) EDGE is ORed like the rest."""
    img = np.ones((3, 4, 1), np.float32)
    var = np.ones(img.shape, np.float32)
    mask = np.zeros(img.shape, np.uint16)
    mask[0, 0, 0] = EDGE                                  # pixel 0: one input at its edge
    mask[:, 1, 0] = EDGE                                  # pixel 1: all three
    mask[0, 2, 0] = EDGE | DETECTED                       # pixel 2: the others not used (CR), input 0 at its edge
    mask[1:, 2, 0] = CR
    mask[1, 3, 0] = DETECTED                              # pixel 3: a detection in one input
    got = combine_warps(img, var, mask, np.ones(3), np.ones(3), CoaddConfig(and_mask_bits=EDGE))["mask"][:, 0]
    assert list(got) == [0, EDGE, EDGE | DETECTED, DETECTED]
    got = combine_warps(img, var, mask, np.ones(3), np.ones(3), CoaddConfig())["mask"][:, 0]
    assert list(got) == [EDGE, EDGE, EDGE | DETECTED, DETECTED]


def test_a_patch_not_made_through_tiles(tmp_path):
    """A template that cannot be made ([template] min_visits) and whose patch is cut into tiles: the inputs
    task records the reason, the tiles write nothing, the assembly writes the not-made file with the
    template's attributes and removes the inputs file."""
    from types import SimpleNamespace

    from twinkles_hpc.parallel.journal import REMOVED
    from twinkles_hpc.pipeline.stages.coadd import run_patch_task
    from twinkles_hpc.rundir import layout
    from twinkles_hpc.rundir.task import Task
    ctx = SimpleNamespace(path=lambda rel: str(tmp_path / rel), rundir=str(tmp_path), storage=None, caches={},
                          skymap=SimpleNamespace(patch=lambda i, j: None), log_line=lambda m: None,
                          cfg=SimpleNamespace(coadd=CoaddConfig()))
    rel = layout.template("r", 0, 0)
    calls = []

    def choose():
        calls.append(1)
        return [], {"band": "r", "visit_ids": [], "ok": True, "reason": ""}, "1 usable calexp(s) of 2 candidates"
    params = {"patch": (0, 0)}
    irel = layout.tile_of(rel, "inputs")
    assert run_patch_task(ctx, Task("template/r/0-0/inputs", "template", params={**params, "step": "inputs"}),
                          rel, choose) == {irel: (tmp_path / irel).stat().st_size}
    tile = Task("template/r/0-0/t0000", "template", params={**params, "tile": 0, "box": [0, 0, 10, 10]})
    assert run_patch_task(ctx, tile, rel, choose) == {}
    out = run_patch_task(ctx, Task("template/r/0-0", "template", params={**params, "step": "assemble", "tiles": 2}),
                         rel, choose)
    assert out == {rel: (tmp_path / rel).stat().st_size, irel: REMOVED} and calls == [1]
    with h5py.File(tmp_path / rel, "r") as f:
        assert not f.attrs["ok"] and f.attrs["reason"].startswith("1 usable") and list(f) == []
    assert not (tmp_path / "template" / "r" / "tiles").exists()
