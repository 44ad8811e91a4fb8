"""Forward values and feature gradients of the kernels and of the pure-JAX
implementation against numpy_reference."""

import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_roi
import numpy_reference as ref
from op_cases import kernels_only, sweep_both_implementations


# every value test runs through both implementations, but those marked kernels_only
pytestmark = pytest.mark.usefixtures("both_implementations")


F64, F32 = np.dtype(np.float64), np.dtype(np.float32)
BF16, F16 = np.dtype(jnp.bfloat16), np.dtype(np.float16)
DTYPES = [F64, F32, BF16, F16]

# Relative tolerance per feature dtype; the absolute one is the same scaled by
# the largest expected magnitude. 16-bit outputs are compared against the
# reference run on the 16-bit-rounded inputs, so only output rounding and the
# kernel's float32 accumulation are left.
TOL = {F64: 1e-12, F32: 1e-5, BF16: 1e-2, F16: 2e-3}

N, C, H, W = 2, 3, 7, 6          # H != W catches swapped axes
OUT = (3, 2)                      # PH != PW for the same reason


def _rng(*key):
    """A generator seeded reproducibly from a test's parameters."""
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def _geom(dtype):
    return np.float64 if dtype == F64 else np.float32


def _close(actual, expected, dtype):
    actual = np.asarray(jnp.asarray(actual).astype(jnp.float64))
    assert actual.shape == expected.shape
    finite = expected[np.isfinite(expected)]
    scale = max(1.0, float(np.abs(finite).max())) if finite.size else 1.0
    np.testing.assert_allclose(actual, expected, rtol=TOL[dtype],
                               atol=TOL[dtype] * scale, equal_nan=True)


def _features(rng, layout, dtype, shape=(N, C, H, W)):
    if dtype in (BF16, F16):
        # distinct values exactly representable in 16 bits: no ties created by
        # rounding, so max modes pick the same winner as the reference
        size = int(np.prod(shape))
        assert size <= 256
        x = (rng.permutation(256)[:size] - 128).reshape(shape) / 16.0
    else:
        x = rng.standard_normal(shape)
    return x if layout == "NCHW" else x.transpose(0, 2, 3, 1)


def _boxes(rng, k, h, w, scale):
    """Boxes in image coordinates; many reach past the map edges."""
    x1 = rng.uniform(-2.0, w + 1.0, k)
    y1 = rng.uniform(-2.0, h + 1.0, k)
    bw = rng.uniform(0.2, 0.8 * w, k)
    bh = rng.uniform(0.2, 0.8 * h, k)
    return np.stack([x1, y1, x1 + bw, y1 + bh], 1) / scale


def _rois(rng, fmt, n, h, w, scale, per_image=3):
    boxes = _boxes(rng, n * per_image, h, w, scale)
    if fmt == "NL4":
        return boxes.reshape(n, per_image, 4)
    b = rng.integers(0, n, n * per_image).astype(np.float64)
    return np.concatenate([b[:, None], boxes], 1)


def _check(op, x, rois, out_size, dtype, layout, seed=0, **kw):
    """Compare forward and vjp of jax_roi.<op> with the reference."""
    g = _geom(dtype)
    xq = ref.round_to(x, dtype)
    # the kernel gets the ROIs in their own dtype (float64 unless the test
    # says otherwise) and casts them to the geometry dtype itself
    rois_j = jnp.asarray(np.asarray(rois))
    rois = np.asarray(rois, dtype=g)

    if op == "pool":
        fwd = lambda f: jax_roi.roi_pool(f, rois_j, out_size, kw["scale"],
                                         layout=layout)
        expected, _ = ref.roi_pool(xq, rois, out_size, kw["scale"],
                                   layout=layout, geom=g)
    else:
        args = (out_size, kw["scale"], kw["sr"], kw["aligned"])
        fwd = lambda f: jax_roi.roi_align(f, rois_j, *args, mode=kw["mode"],
                                          layout=layout)
        expected = ref.roi_align(xq, rois, *args, mode=kw["mode"],
                                 layout=layout, geom=g)

    out, vjp = jax.vjp(fwd, jnp.asarray(xq, dtype=dtype))
    assert out.dtype == dtype
    _close(out, expected, dtype)

    dy = ref.round_to(np.random.default_rng(seed + 1).standard_normal(
        expected.shape), dtype)
    (dx,) = vjp(jnp.asarray(dy, dtype=dtype))
    assert dx.dtype == dtype
    if op == "pool":
        dx_ref = ref.roi_pool_vjp(xq, rois, out_size, kw["scale"], dy,
                                  layout=layout, geom=g)
    else:
        dx_ref = ref.roi_align_vjp(xq, rois, *args, dy, mode=kw["mode"],
                                   layout=layout, geom=g)
    _close(dx, dx_ref, dtype)


# ------------------------------------------------------------ random cases

RANDOM_LAYOUTS = [("NCHW", "K5"), ("NHWC", "NL4")]
RANDOM_SAMPLING = [(mode, sr) for mode in ("avg", "max") for sr in (-1, 0, 1, 2, 3)]


# The kernels run every case; pure JAX, whose compiles take most of the time,
# runs every mode with every sampling ratio once, `aligned` and the layout
# counting through their four pairs along the way.
@sweep_both_implementations(
    "mode,aligned,sr,layout,fmt",
    [(mode, aligned, sr, *layout) for mode, sr in RANDOM_SAMPLING for aligned in (False, True)
     for layout in RANDOM_LAYOUTS],
    [(mode, i % 2 == 1, sr, *RANDOM_LAYOUTS[i // 2 % 2])
     for i, (mode, sr) in enumerate(RANDOM_SAMPLING)])
def test_roi_align_random(mode, aligned, sr, layout, fmt):
    rng = _rng(mode, aligned, sr, layout)
    x = _features(rng, layout, F64)
    rois = _rois(rng, fmt, N, H, W, 0.5)
    _check("align", x, rois, OUT, F64, layout, scale=0.5, sr=sr,
           aligned=aligned, mode=mode)


@pytest.mark.parametrize("layout,fmt", [("NCHW", "NL4"), ("NHWC", "K5")])
@pytest.mark.parametrize("mode", ["avg", "max"])
def test_roi_align_other_formats(mode, layout, fmt):
    rng = np.random.default_rng(7)
    x = _features(rng, layout, F64)
    rois = _rois(rng, fmt, N, H, W, 1.0, per_image=4)
    _check("align", x, rois, (2, 4), F64, layout, scale=1.0, sr=-1,
           aligned=True, mode=mode)


@pytest.mark.parametrize("scale", [1.0, 0.5, 0.25])
@pytest.mark.parametrize("layout,fmt", [("NCHW", "K5"), ("NHWC", "NL4"),
                                        ("NCHW", "NL4"), ("NHWC", "K5")])
def test_roi_pool_random(layout, fmt, scale):
    rng = _rng(layout, fmt, scale)
    x = _features(rng, layout, F64)
    rois = _rois(rng, fmt, N, H, W, scale)
    _check("pool", x, rois, OUT, F64, layout, scale=scale)


OPS = {
    "pool": dict(op="pool"),
    "align_avg": dict(op="align", mode="avg", sr=-1, aligned=False),
    "align_avg_aligned_sr2": dict(op="align", mode="avg", sr=2, aligned=True),
    "align_max": dict(op="align", mode="max", sr=0, aligned=False),
    "align_max_aligned_sr2": dict(op="align", mode="max", sr=2, aligned=True),
}


# every case on the kernels; on pure JAX every dtype with every op, in
# alternating layouts
@sweep_both_implementations(
    "dtype,op,layout",
    [(dtype, op, layout) for dtype in DTYPES for op in OPS for layout in ("NCHW", "NHWC")],
    [(dtype, op, ("NCHW", "NHWC")[i % 2])
     for i, (dtype, op) in enumerate((dtype, op) for dtype in DTYPES for op in OPS)])
def test_dtypes(dtype, op, layout):
    shape = (2, 2, 8, 8)
    rng = np.random.default_rng(3)
    x = _features(rng, layout, dtype, shape)
    rois = _rois(rng, "K5", 2, 8, 8, 0.25)
    cfg = dict(OPS[op])
    _check(cfg.pop("op"), x, rois, (2, 3), dtype, layout, scale=0.25, **cfg)


@kernels_only
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("c", [1, 17])
@pytest.mark.parametrize("op", list(OPS))
def test_many_rois_float32(op, c, layout):
    # enough ROIs and channels to split work across threads and leave
    # remainders in any channel vectorisation; a scale that is not a power of 2
    n, h, w, scale = 3, 23, 19, 0.3
    rng = np.random.default_rng(c)
    x = _features(rng, layout, F32, (n, c, h, w))
    rois = _rois(rng, "K5", n, h, w, scale, per_image=14).astype(np.float32)
    cfg = dict(OPS[op])
    _check(cfg.pop("op"), x, rois, (3, 4), F32, layout, scale=scale, **cfg)


@kernels_only
@pytest.mark.parametrize("dtype", [F32, BF16, F64], ids=str)
@pytest.mark.parametrize("c", [16, 255, 501])
def test_nhwc_avg_channel_blocks(c, dtype):
    # NHWC "avg" sums blocks of 256, 128, 64, 32 and 16 channels in
    # registers, then the last few one by one: 501 takes every kind of block.
    n, h, w, scale = 2, 9, 8, 0.5
    rng = np.random.default_rng(c)
    x = rng.standard_normal((n, h, w, c))
    rois = _rois(rng, "K5", n, h, w, scale, per_image=5)
    _check("align", x, rois, (2, 3), dtype, "NHWC", scale=scale, mode="avg", sr=2,
           aligned=True)


@kernels_only
@pytest.mark.parametrize("dtype", [F32, F64], ids=str)
@pytest.mark.parametrize("sr", [2, 3, 0])
def test_max_gradient_same_bits_in_both_layouts(sr, dtype):
    # roi_align max's NHWC backward scatters a bin through a table of its
    # samples where its 8 channels outnumber them (sampling ratio 2: 4
    # samples) and winner by winner where not (3: 9 samples); the NCHW one
    # visits the winners channel by channel. All add the same products in
    # the same order, so the gradients agree to the bit.
    n, c, h, w, scale, out_size = 2, 8, 9, 8, 0.5, (3, 2)
    rng = np.random.default_rng(sr)
    x = rng.standard_normal((n, c, h, w))
    rois = _rois(rng, "K5", n, h, w, scale, per_image=6)
    _check("align", x.transpose(0, 2, 3, 1), rois, out_size, dtype, "NHWC", scale=scale,
           mode="max", sr=sr, aligned=True)
    dy = rng.standard_normal((rois.shape[0], c, *out_size))
    grads = {}
    for layout, perm in (("NCHW", (0, 1, 2, 3)), ("NHWC", (0, 2, 3, 1))):
        fwd = lambda f: jax_roi.roi_align(f, jnp.asarray(rois, _geom(dtype)), out_size, scale,
                                          sr, True, mode="max", layout=layout)
        _, vjp = jax.vjp(fwd, jnp.asarray(x.transpose(perm), dtype))
        (dx,) = vjp(jnp.asarray(dy.transpose(perm), dtype))
        grads[layout] = np.asarray(dx).transpose(np.argsort(perm))
    np.testing.assert_array_equal(grads["NCHW"], grads["NHWC"])


@kernels_only
@pytest.mark.parametrize("dtype", [F32, BF16, F64], ids=str)
@pytest.mark.parametrize("c", [3, 17, 300])
@pytest.mark.parametrize("hw", [(6, 5), (24, 23)], ids=["30px", "552px"])
def test_nchw_avg_channels_last_copy(c, dtype, hw):
    # NCHW "avg" copies a small map channels-last when a call writes at
    # least as many outputs as the map has elements, as these calls do.
    # Channel and pixel counts leave remainders of every vector, lane tile
    # and 16 x 16 transpose tile, and 552 pixels are three of the copy's
    # blocks of 256; one ROI reads nothing and must still get its zeros.
    n, (h, w), scale, out_size = 2, hw, 0.5, (5, 4)
    rng = np.random.default_rng(c)
    x = rng.standard_normal((n, c, h, w))
    rois = _rois(rng, "K5", n, h, w, scale, per_image=max(8, -(-h * w // 20)))
    rois[3, 0] = n + 1
    assert rois.shape[0] * c * out_size[0] * out_size[1] >= x.size
    _check("align", x, rois, out_size, dtype, "NCHW", scale=scale, mode="avg", sr=2,
           aligned=True)
    out = jax_roi.roi_align(jnp.asarray(x, dtype), jnp.asarray(rois), out_size, scale, 2)
    assert np.all(np.asarray(out[3]) == 0)


@kernels_only
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("op", list(OPS))
def test_backward_with_rois_crowded_on_one_image(op, layout):
    # The backward splits an image with most of the ROIs by channels (into
    # blocks of 16 in NHWC, the last one short) and gives the others whole;
    # image 2 has no ROI and some ROIs read nothing.
    n, c, h, w, scale = 3, 40, 11, 9, 0.5
    rng = np.random.default_rng(5)
    x = _features(rng, layout, F32, (n, c, h, w))
    rois = _rois(rng, "K5", n, h, w, scale, per_image=12)
    rois[:, 0] = np.where(np.arange(len(rois)) < 30, 0, 1)
    rois[::7, 0] = -1
    cfg = dict(OPS[op])
    _check(cfg.pop("op"), x, rois.astype(np.float32), (3, 2), F32, layout, scale=scale, **cfg)


# ------------------------------------------------------------ hand-made boxes

# (b, x1, y1, x2, y2) on the N x C x 7 x 6 map, scale 1
BOXES = {
    "inside": [0, 1.3, 0.7, 4.6, 5.2],
    "whole_map": [1, 0.0, 0.0, 5.0, 6.0],
    "past_top_left": [1, -2.5, -1.6, 2.2, 3.4],
    "past_bottom_right": [0, 3.5, 4.5, 8.0, 9.5],
    "outside_far": [1, 10.0, 12.0, 14.0, 15.0],
    "outside_negative": [0, -9.0, -8.0, -3.0, -2.5],
    "straddles_minus_one": [0, -1.4, -1.2, 0.6, 0.3],
    "subpixel": [0, 2.2, 3.1, 2.4, 3.3],
    "subpixel_at_edge": [1, 5.8, 6.7, 5.9, 6.95],
    "point": [0, 2.0, 3.0, 2.0, 3.0],
    "inverted": [1, 4.0, 5.0, 2.0, 1.0],
    "half_integers": [0, 0.5, 1.5, 2.5, 3.5],
    "negative_half_integers": [1, -0.5, -1.5, 1.5, 2.5],
    # unaligned samples land exactly on x = -1 and y = H, the last in-map values
    "samples_on_map_bounds": [0, -1.5, 6.5, 1.5, 8.5],
}

HAND_OPS = {
    "pool": dict(op="pool"),
    "avg": dict(op="align", mode="avg", sr=-1, aligned=False),
    "avg_aligned": dict(op="align", mode="avg", sr=0, aligned=True),
    "avg_sr1": dict(op="align", mode="avg", sr=1, aligned=False),
    "avg_aligned_sr3": dict(op="align", mode="avg", sr=3, aligned=True),
    "max": dict(op="align", mode="max", sr=-1, aligned=False),
    "max_aligned": dict(op="align", mode="max", sr=0, aligned=True),
    "max_aligned_sr2": dict(op="align", mode="max", sr=2, aligned=True),
}


@pytest.mark.parametrize("op", list(HAND_OPS))
@pytest.mark.parametrize("box", list(BOXES))
def test_hand_made_box(box, op):
    rng = np.random.default_rng(11)
    x = _features(rng, "NCHW", F64)
    cfg = dict(HAND_OPS[op])
    _check(cfg.pop("op"), x, [BOXES[box]], (2, 3), F64, "NCHW", scale=1.0,
           **cfg)


@pytest.mark.parametrize("op", ["pool", "avg", "avg_aligned", "max", "max_aligned"])
def test_box_much_larger_than_map(op):
    # most samples fall outside the map: they count in the mean and take part
    # in the max with value 0
    rng = np.random.default_rng(17)
    x = _features(rng, "NHWC", F64)
    rois = [[0, -150.0, -140.0, 160.0, 170.0], [1, -90.5, 2.5, 3.5, 210.25]]
    cfg = dict(HAND_OPS[op])
    _check(cfg.pop("op"), x, rois, (2, 3), F64, "NHWC", scale=1.0, **cfg)


@pytest.mark.parametrize("op", ["avg", "avg_aligned", "max", "max_aligned"])
def test_very_wide_box_float32(op):
    # thousands of samples per bin along x, positions in float32
    rng = np.random.default_rng(19)
    x = _features(rng, "NCHW", F32)
    rois = np.array([[1, -6.0e3, 1.2, 9.0e3, 4.9]], dtype=np.float32)
    cfg = dict(HAND_OPS[op])
    _check(cfg.pop("op"), x, rois, (2, 3), F32, "NCHW", scale=1.0, **cfg)


def test_roi_pool_rounds_half_away_from_zero():
    # value = 10*h + w; x1 = y1 = 0.5 -> 1 and x2 = y2 = 2.5 -> 3 (banker's
    # rounding would give 0 and 2, and a maximum of 22 instead of 33)
    x = (10.0 * np.arange(6)[:, None] + np.arange(6)[None, :])[None, None]
    out = jax_roi.roi_pool(jnp.asarray(x), jnp.asarray([[0, 0.5, 0.5, 2.5, 2.5]]), 1)
    assert float(out[0, 0, 0, 0]) == 33.0
    # -0.5 -> -1 (not 0): 4 pixels, bins [-1, 1) and [1, 3), clipped at 0
    out = jax_roi.roi_pool(jnp.asarray(x), jnp.asarray([[0, -0.5, -0.5, 2.4, 2.4]]), 2)
    np.testing.assert_array_equal(np.asarray(out[0, 0]), [[0, 2], [20, 22]])
    # 3 pixels over 2 bins: bins are [floor(ph*1.5), ceil((ph+1)*1.5)) + 1
    out = jax_roi.roi_pool(jnp.asarray(x), jnp.asarray([[0, 0.5, 0.5, 2.5, 2.5]]), 2)
    np.testing.assert_array_equal(np.asarray(out[0, 0]), [[22, 23], [32, 33]])


# ------------------------------------------------------------ ties and NaN

@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("op", ["pool", "align_max", "align_max_aligned_sr2"])
def test_ties_first_wins(op, layout):
    # an all-zero map makes every pixel and sample tie: the gradient must land
    # where the first one (in scan order) is
    x = np.zeros((N, C, H, W))
    if layout == "NHWC":
        x = x.transpose(0, 2, 3, 1)
    rois = [[0, 1.3, 0.7, 4.6, 5.2], [1, -0.7, 2.2, 3.1, 6.4],
            [0, -40.0, -30.0, 50.0, 45.0]]
    cfg = dict(OPS[op])
    _check(cfg.pop("op"), x, rois, (2, 3), F64, layout, scale=1.0, **cfg)


@pytest.mark.parametrize("op", ["pool", "max", "max_aligned", "max_aligned_sr2"])
def test_max_of_negative_map(op):
    # with every pixel negative, a bin with any sample outside the map must
    # return that sample's 0 and pass no gradient
    rng = np.random.default_rng(21)
    x = -np.abs(_features(rng, "NCHW", F64)) - 0.5
    rois = [[0, 1.3, 0.7, 4.6, 5.2], [1, -2.5, -1.6, 2.2, 3.4],
            [0, 3.5, 4.5, 8.0, 9.5], [1, -60.0, -50.0, 70.0, 65.0]]
    cfg = dict(HAND_OPS[op])
    _check(cfg.pop("op"), x, rois, (2, 3), F64, "NCHW", scale=1.0, **cfg)


@pytest.mark.parametrize("op", ["pool", "align_avg", "align_max"])
def test_nan_features(op):
    rng = np.random.default_rng(5)
    x = _features(rng, "NCHW", F64)
    x[0, 1, 2, 3] = np.nan
    x[1, :, 4, 1] = np.nan
    rois = [[0, 1.3, 0.7, 4.6, 5.2], [1, 0.2, 3.1, 3.7, 6.6],
            [0, 2.5, 1.5, 3.5, 2.5], [1, 0.9, 3.9, 1.1, 4.1]]
    cfg = dict(OPS[op])
    _check(cfg.pop("op"), x, rois, (2, 3), F64, "NCHW", scale=1.0, **cfg)


SHARED_PIXEL_SAMPLES = pytest.mark.parametrize("sr,aligned", [(1, False), (2, True), (-1, False)])


def _check_bins_whose_samples_share_pixels(sr, aligned, dtype, layout):
    # Bins under a pixel wide, whose samples share their corner pixels, and
    # samples on whole pixels, whose second corner has weight 0: an infinite
    # pixel there still makes the bin NaN, as sample by sample. 20 channels
    # span two lane groups of the NCHW kernels, the second one partial.
    rng = np.random.default_rng(11)
    x = _features(rng, layout, dtype, shape=(N, 20, H, W))
    x[(0, 3, 3, 5) if layout == "NHWC" else (0, 5, 3, 3)] = np.inf
    rois = [[0, 0.5, 0.5, 2.5, 2.5], [1, 1.1, 2.2, 1.9, 2.6], [0, 2.0, 2.0, 3.0, 3.5],
            [1, 0.2, 0.3, 5.4, 1.0], [0, 3.7, 4.1, 4.2, 6.9]]
    _check("align", x, rois, (2, 2), dtype, layout, scale=1.0, sr=sr, aligned=aligned,
           mode="avg")


@kernels_only
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("dtype", [F32, F64])
@SHARED_PIXEL_SAMPLES
def test_avg_bins_whose_samples_share_pixels(sr, aligned, dtype, layout):
    _check_bins_whose_samples_share_pixels(sr, aligned, dtype, layout)


@SHARED_PIXEL_SAMPLES
def test_infinite_pixel_under_weight_0_makes_the_bin_nan(sr, aligned):
    # the kernels merge the samples that share pixels; pure JAX does not,
    # and must give the same NaN
    _check_bins_whose_samples_share_pixels(sr, aligned, F64, "NCHW")


# ------------------------------------------------------------ ill-formed ROIs

@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("op", ["pool", "align_avg", "align_max"])
def test_invalid_rois(op, layout):
    rng = np.random.default_rng(9)
    x = _features(rng, layout, F64)
    box = [1.3, 0.7, 4.6, 5.2]
    rois = np.array([
        [-1] + box, [N] + box, [np.nan] + box, [np.inf] + box, [-0.5] + box,
        [0, np.nan, 0.7, 4.6, 5.2], [1, 1.3, np.inf, 4.6, 5.2],
        [0, 1.3, 0.7, -np.inf, 5.2],
        [0.7] + box, [N - 0.5] + box,       # valid: truncated to 0 and N-1
    ])
    cfg = dict(OPS[op])
    _check(cfg.pop("op"), x, rois, (2, 3), F64, layout, scale=1.0, **cfg)
    xj, rj = jnp.asarray(x), jnp.asarray(rois)
    if op == "pool":
        out = jax_roi.roi_pool(xj, rj, 2, layout=layout)
    else:
        out = jax_roi.roi_align(xj, rj, 2, mode=cfg["mode"], layout=layout)
    out = np.asarray(out)
    assert np.all(out[:8] == 0)
    assert np.any(out[8:] != 0)


def test_roi_pool_rois_cotangent_is_zero():
    # the boxes are rounded to whole pixels: piecewise constant in them
    rng = np.random.default_rng(13)
    x = jnp.asarray(_features(rng, "NHWC", F32), dtype=jnp.float32)
    rois = jnp.asarray(_rois(rng, "NL4", N, H, W, 1.0), dtype=jnp.float32)
    g = jax.grad(lambda r: jax_roi.roi_pool(x, r, 3, layout="NHWC").sum())(rois)
    assert g.shape == rois.shape
    assert np.all(np.asarray(g) == 0)


# ------------------------------------------------------------ under transforms

@pytest.mark.parametrize("axes", [(0, None), (None, 0), (0, 0)])
@pytest.mark.parametrize("op", ["pool", "align_avg", "align_max_aligned_sr2"])
def test_vmap_jit_matches_reference(op, axes):
    # a batch of 3 feature maps and/or 3 ROI sets, mapped under jit; each
    # slice and its gradient must equal the reference on that slice
    rng = _rng(op, axes)
    xs = np.stack([_features(rng, "NHWC", F64) for _ in range(3)])
    rs = np.stack([_rois(rng, "K5", N, H, W, 1.0) for _ in range(3)])
    cfg = dict(OPS[op])
    kind = cfg.pop("op")

    def f(x, r):
        if kind == "pool":
            return jax_roi.roi_pool(x, r, (2, 3), 1.0, layout="NHWC")
        return jax_roi.roi_align(x, r, (2, 3), 1.0, cfg["sr"], cfg["aligned"],
                                 mode=cfg["mode"], layout="NHWC")

    x_in = xs if axes[0] == 0 else xs[0]
    r_in = rs if axes[1] == 0 else rs[0]
    out = jax.jit(jax.vmap(f, in_axes=axes))(x_in, r_in)
    dy = np.random.default_rng(1).standard_normal(out.shape)
    loss = lambda x: jnp.vdot(jax.vmap(f, in_axes=axes)(x, r_in), dy)
    dx = jax.jit(jax.grad(loss))(x_in)
    dexps = []
    for i in range(3):
        x, r = xs[i if axes[0] == 0 else 0], rs[i if axes[1] == 0 else 0]
        if kind == "pool":
            exp, _ = ref.roi_pool(x, r, (2, 3), 1.0, layout="NHWC")
            dexps.append(ref.roi_pool_vjp(x, r, (2, 3), 1.0, dy[i],
                                          layout="NHWC"))
        else:
            args = ((2, 3), 1.0, cfg["sr"], cfg["aligned"])
            exp = ref.roi_align(x, r, *args, mode=cfg["mode"], layout="NHWC")
            dexps.append(ref.roi_align_vjp(x, r, *args, dy[i],
                                           mode=cfg["mode"], layout="NHWC"))
        _close(out[i], exp, F64)
    # unmapped features collect the gradient of every slice
    _close(dx, np.stack(dexps) if axes[0] == 0 else sum(dexps), F64)
