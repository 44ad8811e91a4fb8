"""ps_roi_align and ps_roi_pool (R-FCN position-sensitive pooling): values and
feature gradients against numpy_reference for every dtype, layout and ROI
format; the channel mapping, ps_roi_pool's rounding, minimum size and edge
clamping, ps_roi_align's empty bins, by hand; derivatives, jit, vmap, bad data
and argument errors.

Every case runs through the kernels; the pure-JAX implementation (which
compiles a program per configuration, about a second each) runs a chosen
subset of every sweep, and the cheap tests in full through the fixture
`both_implementations`."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jax_roi
import numpy_reference as ref
from op_cases import BF16, DTYPES, F16, F32, F64, _close, _geom, _rng, sweep

both_implementations = pytest.mark.usefixtures("both_implementations")


OUT = (3, 2)                      # PH != PW catches swapped axes
N, C, H, W = 2, 2 * 3 * 2, 7, 6   # two output channels of 3 x 2 bins
OPS = ["align", "pool"]


def _features(rng, layout, shape=(N, C, H, W)):
    x = rng.standard_normal(shape)
    return x if layout == "NCHW" else x.transpose(0, 2, 3, 1)


def _boxes(rng, k, h, w, scale):
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


def ps(op, f, r, output_size=OUT, scale=1.0, sr=-1, **kw):
    if op == "align":
        return jax_roi.ps_roi_align(f, r, output_size, scale, sr, **kw)
    return jax_roi.ps_roi_pool(f, r, output_size, scale, **kw)


def ps_ref(op, x, r, output_size, scale, sr, **kw):
    if op == "align":
        return ref.ps_roi_align(x, r, output_size, scale, sr, **kw)
    return ref.ps_roi_pool(x, r, output_size, scale, **kw)


def ps_ref_vjp(op, x, r, output_size, scale, sr, dy, **kw):
    if op == "align":
        return ref.ps_roi_align_vjp(x, r, output_size, scale, sr, dy, **kw)
    return ref.ps_roi_pool_vjp(x, r, output_size, scale, dy, **kw)


def _check(op, x, rois, dtype, layout, out_size=OUT, scale=1.0, sr=-1, seed=0,
           reads_something=True, implementation=None):
    """Forward and vjp against the reference on the features rounded to
    `dtype`; ROIs go in as float64, cast by the op to its geometry dtype."""
    g = _geom(dtype)
    xq = ref.round_to(x, dtype)
    rois_g = np.asarray(rois, g)
    rois_j = jnp.asarray(np.asarray(rois, np.float64))
    fwd = lambda f: ps(op, f, rois_j, out_size, scale, sr, layout=layout,
                       implementation=implementation)
    expected = ps_ref(op, xq, rois_g, out_size, scale, sr, layout=layout, geom=g)
    out, vjp = jax.vjp(fwd, jnp.asarray(xq, dtype))
    assert out.dtype == dtype
    _close(out, expected, dtype)
    if reads_something:
        assert np.any(expected != 0)
    dy = ref.round_to(np.random.default_rng(seed + 1).standard_normal(expected.shape), dtype)
    (dx,) = vjp(jnp.asarray(dy, dtype))
    assert dx.dtype == dtype
    _close(dx, ps_ref_vjp(op, xq, rois_g, out_size, scale, sr, dy, layout=layout, geom=g),
           dtype)


# ------------------------------------------------------------ random cases

OP_SR = [("align", -1), ("align", 0), ("align", 1), ("align", 3), ("pool", 0)]


@sweep("op,sr,layout,fmt,scale",
       [op_sr + rest for op_sr in OP_SR for rest in itertools.product(
           ["NCHW", "NHWC"], ["K5", "NL4"], [1.0, 0.5, 0.3])],
       pure_jax=[("align", -1, "NCHW", "K5", 0.5), ("align", 3, "NHWC", "NL4", 0.3),
                 ("pool", 0, "NHWC", "K5", 1.0), ("pool", 0, "NCHW", "NL4", 0.3)])
def test_random(op, sr, layout, fmt, scale, implementation):
    rng = _rng("random", op, sr, layout, fmt, scale)
    x = _features(rng, layout)
    rois = _rois(rng, fmt, N, H, W, scale)
    _check(op, x, rois, F64, layout, scale=scale, sr=sr, implementation=implementation)


@sweep("op,sr,dtype,layout,fmt",
       [op_sr + rest for op_sr in [("align", 2), ("align", -1), ("pool", 0)]
        for rest in itertools.product(DTYPES, ["NCHW", "NHWC"], ["K5", "NL4"])],
       pure_jax=[("align", 2, BF16, "NHWC", "K5"), ("align", -1, F16, "NCHW", "NL4"),
                 ("pool", 0, BF16, "NCHW", "K5"), ("pool", 0, F32, "NHWC", "NL4")])
def test_dtypes(op, sr, dtype, layout, fmt, implementation):
    rng = _rng("dtypes", op, sr, layout, fmt)
    x = _features(rng, layout, (2, 2 * 6, 8, 8))
    rois = _rois(rng, fmt, 2, 8, 8, 0.25)
    _check(op, x, rois, dtype, layout, out_size=(2, 3), scale=0.25, sr=sr,
           implementation=implementation)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("c_out", [1, 17, 40, 300])
@pytest.mark.parametrize("op", OPS)
def test_many_rois_float32(op, c_out, layout):
    # 17 output channels (102 input channels): a 16-lane tile and a
    # remainder whichever of them a kernel vectorises; 40: two full 16-lane
    # groups and a part of one; 300: more than the 256 channels of one
    # NCHW ps_roi_align forward tile (bin_planes.h). Many ROIs for threads.
    n, h, w, scale = 3, 13, 11, 0.3
    rng = _rng("many", op, c_out, layout)
    x = _features(rng, layout, (n, c_out * 6, h, w))
    rois = _rois(rng, "K5", n, h, w, scale, per_image=10).astype(np.float32)
    _check(op, x, rois, F32, layout, out_size=(2, 3), scale=scale, sr=2)


@pytest.mark.parametrize("h,w,c_out", [(100, 100, 40), (140, 140, 3)])
def test_ps_roi_align_nchw_forward_on_large_maps(h, w, c_out):
    # The NCHW forward's tile (bin_planes.h) holds at most 1 MiB: 16
    # channels of a 100 x 100 map at a time (40 channels: three tiles a
    # bin), none of a 140 x 140 one (the planes are read directly).
    rng = _rng("large", h, c_out)
    x = _features(rng, "NCHW", (2, c_out * 4, h, w)).astype(np.float32)
    rois = _rois(rng, "K5", 2, h, w, 0.5, per_image=4)
    _check("align", x, rois, F32, "NCHW", out_size=(2, 2), scale=0.5, sr=2)


@pytest.mark.parametrize("out_size", [(7, 7), (1, 2), (1, 1)])
@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("c_out", [5, 21, 70])
def test_ps_roi_align_nchw_forward_equals_nhwc_bitwise(out_size, dtype, c_out):
    # NCHW reads a bin's planes through a tile, split among threads by bins
    # (and by ROIs too when the bins are fewer than the threads), 64
    # channels a pass and the rest in as many vectors as they need; NHWC
    # reads the pixels. The same taps summed in the same order give the same
    # bits.
    bins = out_size[0] * out_size[1]
    rng = _rng("bitwise", out_size, str(dtype), c_out)
    x = _features(rng, "NCHW", (2, c_out * bins, 12, 15))
    rois = jnp.asarray(_rois(rng, "K5", 2, 12, 15, 0.5, per_image=20))
    nchw = ps("align", jnp.asarray(x, dtype), rois, out_size, 0.5, 2, layout="NCHW")
    nhwc = ps("align", jnp.asarray(x.transpose(0, 2, 3, 1), dtype), rois, out_size, 0.5, 2,
              layout="NHWC")
    assert np.any(np.asarray(nchw) != 0)
    np.testing.assert_array_equal(np.asarray(nchw), np.asarray(nhwc).transpose(0, 3, 1, 2))


@pytest.mark.parametrize("c_out,out_size", [(21, (7, 7)), (700, (7, 7)), (3, (1, 1))])
@pytest.mark.parametrize("dtype", [F32, F64, BF16])
def test_ps_roi_pool_nhwc_forward_equals_nchw_bitwise(c_out, out_size, dtype):
    # NHWC sums a part of the ROIs in one pass down the rows of their
    # images (ROIs of three images in no order, some invalid), in runs whose
    # sums fit 256 KB (700 channels of 7 x 7 bins: a ROI a run); NCHW sums
    # each bin's window on its own. The same pixels in the same order give
    # the same bits.
    bins = out_size[0] * out_size[1]
    rng = _rng("pool-forward-bitwise", c_out, out_size, str(dtype))
    x = _features(rng, "NCHW", (3, c_out * bins, 14, 11))
    rois = _rois(rng, "K5", 3, 14, 11, 0.5, per_image=12)
    rois[::7, 0] = -1                         # invalid: zeros
    rois[3] = [1, 30.0, 40.0, 90.0, 90.0]     # outside the map: every bin empty
    nchw = ps("pool", jnp.asarray(x, dtype), jnp.asarray(rois), out_size, 0.5, layout="NCHW")
    nhwc = ps("pool", jnp.asarray(x.transpose(0, 2, 3, 1), dtype), jnp.asarray(rois), out_size,
              0.5, layout="NHWC")
    nchw = np.asarray(nchw.astype(jnp.float64))
    assert np.any(nchw != 0) and not np.any(nchw[::7]) and not np.any(nchw[3])
    np.testing.assert_array_equal(nchw, np.asarray(nhwc.astype(jnp.float64)).transpose(0, 3, 1, 2))


@pytest.mark.parametrize("width", [3, 8, 13, 45])
@pytest.mark.parametrize("dtype", [F32, F64])
def test_ps_roi_pool_nchw_backward_equals_nhwc_bitwise(width, dtype):
    # NCHW adds a bin's gradient to each row of its window as vectors (8
    # float32 or 4 float64 with AVX2 or wider; shifted left to stay in the
    # row at its right edge; windows wider than a vector take several; a map
    # narrower than a vector pixel by pixel); NHWC adds it pixel by pixel
    # from the taps. The same sums in the same order give the same bits. The
    # lanes outside a window add +0, so the output gradient holds NaN, inf
    # and -0 too (one NaN payload and one sign of inf: NaN + NaN of two
    # payloads keeps either, by operand order). With two threads, the two
    # channel blocks split bins' channels mid-way.
    out_size = (2, 3)
    rng = _rng("pool-bitwise", width, str(dtype))
    x = _features(rng, "NCHW", (2, 5 * 6, 9, width))
    whole_map = [[0, 0.0, 0.0, width, 9.0]]  # every bin reads: the special values land
    rois = jnp.asarray(np.concatenate([whole_map, _rois(rng, "K5", 2, 9, width, 1.0, 12)]))
    dy = rng.standard_normal((25, 5) + out_size)
    dy[0].flat[rng.choice(dy[0].size, 9, replace=False)] = [np.nan] * 3 + [np.inf] * 3 + [-0.0] * 3
    nchw, nhwc = _pool_gradients_both_layouts(x, rois, out_size, dy, dtype)
    assert np.any(np.isfinite(nchw) & (nchw != 0)) and np.any(np.isnan(nchw))
    bits = f"u{nchw.itemsize}"
    np.testing.assert_array_equal(nchw.view(bits), nhwc.view(bits))


@pytest.mark.parametrize("dtype", [F32, F64])
def test_ps_roi_pool_nchw_backward_of_one_channel_equals_nhwc_bitwise(dtype):
    # With one input channel each image is one gradient block, which shares
    # no ROIs with another: it finds its ROIs' windows itself, where split
    # blocks read them from the call's table. Both give NHWC's bits.
    rng = _rng("pool-one-channel", str(dtype))
    x = _features(rng, "NCHW", (2, 1, 9, 13))
    rois = jnp.asarray(_rois(rng, "K5", 2, 9, 13, 1.0, 12))
    dy = rng.standard_normal((24, 1, 1, 1))
    nchw, nhwc = _pool_gradients_both_layouts(x, rois, (1, 1), dy, dtype)
    assert np.count_nonzero(nchw) > 0
    bits = f"u{nchw.itemsize}"
    np.testing.assert_array_equal(nchw.view(bits), nhwc.view(bits))


def _pool_gradients_both_layouts(x, rois, out_size, dy, dtype):
    """ps_roi_pool's feature gradient for NCHW features x and NCHW cotangent
    dy, computed in NCHW and in NHWC, both returned in NCHW."""
    def grad(layout, features):
        f = jnp.asarray(features, dtype)
        _, vjp = jax.vjp(lambda f: ps("pool", f, rois, out_size, layout=layout), f)
        cotangent = dy if layout == "NCHW" else dy.transpose(0, 2, 3, 1)
        return np.asarray(vjp(jnp.asarray(cotangent, dtype))[0])

    nchw = grad("NCHW", x)
    nhwc = np.ascontiguousarray(grad("NHWC", x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2))
    return nchw, nhwc


@pytest.mark.parametrize("dtype", [F32, F64])
def test_ps_roi_pool_on_a_wide_map(dtype):
    # Windows of up to 36 pixels (several vectors a row) and windows against
    # the right edge, against the reference.
    rng = _rng("pool-wide", str(dtype))
    x = _features(rng, "NCHW", (1, 3 * 2, 6, 90))
    rois = _rois(rng, "K5", 1, 6, 90, 1.0, per_image=10)
    _check("pool", x, rois, dtype, "NCHW", out_size=(1, 2))


# (b, x1, y1, x2, y2) on the N x C x 7 x 6 map, scale 1
BOXES = {
    "inside": [0, 1.3, 0.7, 4.6, 5.2],
    "whole_map": [1, 0.0, 0.0, 6.0, 7.0],
    "past_top_left": [1, -2.5, -1.6, 2.2, 3.4],
    "past_bottom_right": [0, 3.5, 4.5, 8.0, 9.5],
    "outside_far": [1, 10.0, 12.0, 14.0, 15.0],
    "outside_negative": [0, -9.0, -8.0, -3.0, -2.5],
    "subpixel": [0, 2.2, 3.1, 2.4, 3.3],
    "point": [0, 2.0, 3.0, 2.0, 3.0],
    "inverted": [1, 4.0, 5.0, 2.0, 1.0],
    "half_integers": [0, 0.5, 1.5, 2.5, 3.5],
    "negative_half_integers": [1, -0.5, -1.5, 1.5, 2.5],
}


@sweep("box,op,sr",
       [(box,) + op_sr for box in BOXES for op_sr in [("align", -1), ("align", 2), ("pool", 0)]],
       pure_jax=[(box, "align", 2) for box in BOXES] + [(box, "pool", 0) for box in BOXES])
def test_hand_made_box(box, op, sr, implementation):
    x = _features(np.random.default_rng(11), "NCHW")
    # far boxes read nothing; aligned boxes of no size (adaptive grid) have
    # no samples, and an inverted one has none either
    reads = not box.startswith("outside") and not (
        op == "align" and sr <= 0 and box in ("point", "inverted"))
    _check(op, x, [BOXES[box]], F64, "NCHW", sr=sr, reads_something=reads,
           implementation=implementation)


# ------------------------------------------------------------ by hand

def _channel_index_map(layout, dtype, c_out=2, out=OUT, h=8, w=9):
    """Features whose channel k is the constant k."""
    ph_n, pw_n = out
    c = c_out * ph_n * pw_n
    x = np.broadcast_to(np.arange(c, dtype=np.float64)[None, :, None, None], (2, c, h, w))
    return jnp.asarray(x if layout == "NCHW" else x.transpose(0, 2, 3, 1), dtype)


def _channel_index_expected(layout, k, c_out=2, out=OUT):
    # output channel c of bin (ph, pw) reads input channel (c*PH + ph)*PW + pw
    ph_n, pw_n = out
    c, ph, pw = np.meshgrid(np.arange(c_out), np.arange(ph_n), np.arange(pw_n), indexing="ij")
    e = ((c * ph_n + ph) * pw_n + pw).astype(np.float64)
    e = e if layout == "NCHW" else np.moveaxis(e, 0, -1)
    return np.broadcast_to(e, (k,) + e.shape)


# every bin non-empty and inside the 8 x 9 map, at scales 1 and 1/2
IN_MAP = [[0, 1.0, 1.0, 7.0, 6.0], [1, 0.0, 0.4, 8.6, 7.7], [1, 2.2, 1.9, 5.3, 6.1]]


@sweep("dtype,layout", list(itertools.product(DTYPES, ["NCHW", "NHWC"])),
       pure_jax=[(BF16, "NHWC"), (F32, "NCHW")])
def test_channel_mapping_ps_roi_pool(dtype, layout, implementation):
    # channel k constant k: each non-empty bin's mean is exactly its channel
    # c*PH*PW + ph*PW + pw, in every dtype
    x = _channel_index_map(layout, dtype)
    for scale, rois in ((1.0, IN_MAP), (0.5, [[b] + [2 * v for v in r] for b, *r in IN_MAP])):
        for row in rois:
            assert all(h0 < h1 and w0 < w1 for _, _, h0, h1, w0, w1 in
                       ref.ps_pool_bins(row, 8, 9, OUT, scale))
        out = ps("pool", x, jnp.asarray(rois), OUT, scale, layout=layout,
                 implementation=implementation)
        assert out.dtype == dtype
        np.testing.assert_array_equal(np.asarray(out, np.float64),
                                      _channel_index_expected(layout, len(rois)))


@sweep("sr,dtype,layout", list(itertools.product([-1, 2], DTYPES, ["NCHW", "NHWC"])),
       pure_jax=[(2, F16, "NHWC")])
def test_channel_mapping_ps_roi_align(sr, dtype, layout, implementation):
    # every sample inside the map: bilinear of a constant is the constant
    x = _channel_index_map(layout, dtype)
    out = ps("align", x, jnp.asarray(IN_MAP), OUT, 1.0, sr, layout=layout,
             implementation=implementation)
    tol = 1e-12 if dtype == F64 else 1e-6
    np.testing.assert_allclose(np.asarray(out, np.float64),
                               _channel_index_expected(layout, len(IN_MAP)), rtol=tol, atol=tol)


def _pixel_map(c=1, h=6, w=6):
    # channel k, row y, column x: 100*k + 10*y + x + 1
    k, y, x = np.meshgrid(np.arange(c), np.arange(h), np.arange(w), indexing="ij")
    return jnp.asarray((100.0 * k + 10.0 * y + x + 1)[None])


@both_implementations
def test_ps_roi_pool_rounding_and_bins_by_hand():
    x1 = _pixel_map()
    pool = lambda x, box, out, scale=1.0: np.asarray(
        ps("pool", x, jnp.asarray([[0.0] + box]), out, scale))[0, 0]
    # 0.5 -> 1 and 2.5 -> 3 (half away from zero; banker's would give 0, 2),
    # rw = 3 - 1 = 2 (no +1): rows and columns 1..2 -> (12+13+22+23)/4
    assert pool(x1, [0.5, 0.5, 2.5, 2.5], 1)[0, 0] == 17.5
    # the same box in image coordinates at scale 1/2, rounded after scaling
    assert pool(x1, [1.0, 1.0, 5.0, 5.0], 1, 0.5)[0, 0] == 17.5
    # x2 < x1 + 1 pixel: rw = max(2 - 2, 1) = 1, the pixel (3, 2)
    assert pool(x1, [2.2, 3.2, 2.4, 3.4], 1)[0, 0] == 33.0
    # past the end: [3, 9) clamps to [3, 6), the last row and column
    # included: mean of rows and columns 3..5 = 10*4 + 4 + 1
    assert pool(x1, [3.0, 3.0, 9.0, 9.0], 1)[0, 0] == 45.0
    # outside: every bin empty
    assert pool(x1, [10.0, 10.0, 14.0, 14.0], 1)[0, 0] == 0.0
    # -0.5 -> -1, 1.4 -> 1: rw = 2, bins [-1, 0) (clamped empty: 0) and
    # [0, 1); bin (1, 1) reads channel 3 at pixel (0, 0): 300 + 1
    x4 = _pixel_map(c=4)
    np.testing.assert_array_equal(pool(x4, [-0.5, -0.5, 1.4, 1.4], 2), [[0, 0], [0, 301]])


@both_implementations
def test_ps_roi_pool_gradient_by_hand():
    # the adjoint of the mean: 1/9 to each of the 3 x 3 pixels of the clamped
    # bin, the last row and column included
    x = _pixel_map()
    grad = jax.grad(lambda f: jnp.sum(ps("pool", f, jnp.asarray([[0, 3.0, 3.0, 9.0, 9.0]]), 1)))(x)
    want = np.zeros((1, 1, 6, 6))
    want[0, 0, 3:, 3:] = 1 / 9
    np.testing.assert_allclose(grad, want, rtol=1e-15, atol=0)


@both_implementations
def test_ps_roi_align_by_hand():
    # arange(25) as 5 x 5 in all 16 channels, box [1, 1, 3, 3], 4 x 4 bins,
    # adaptive grid: xs = 0.5, bw = 0.5, gw = ceil(0.5) = 1, one sample per
    # bin at 0.75 + 0.5*pw (same in y); 5*y + x is exact there:
    #   4.5 + 2.5*ph + 0.5*pw, first row [4.5, 5, 5.5, 6] (roi_align
    #   aligned's reference value: every channel holds the same map)
    x = jnp.broadcast_to(jnp.arange(25.0).reshape(1, 1, 5, 5), (1, 16, 5, 5))
    out = ps("align", x, jnp.asarray([[0, 1.0, 1.0, 3.0, 3.0]]), 4, 1.0, 0)
    ph, pw = np.meshgrid(np.arange(4), np.arange(4), indexing="ij")
    np.testing.assert_allclose(out[0, 0], 4.5 + 2.5 * ph + 0.5 * pw, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(out[0, 0, 0], [4.5, 5, 5.5, 6], rtol=1e-12, atol=1e-12)


@both_implementations
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_ps_roi_align_zero_size_box(dtype):
    # adaptive grid: gh = gw = 0, no samples: 0 (torchvision gives NaN), and
    # no gradient
    x = _pixel_map().astype(dtype)
    point = jnp.asarray([[0, 2.0, 2.0, 2.0, 2.0]], dtype)
    out = ps("align", x, point, 1, 1.0, -1)
    assert np.all(np.asarray(out) == 0)
    grad = jax.grad(lambda f: jnp.sum(ps("align", f, point, 1, 1.0, -1)))(x)
    assert np.all(np.asarray(grad) == 0)
    # a fixed grid puts its samples on the point (1.5, 1.5): 10*1.5 + 1.5 + 1
    out = ps("align", x, point, 1, 1.0, 2)
    np.testing.assert_allclose(out[0, 0, 0, 0], 17.5, rtol=1e-6)


# ------------------------------------------------------------ derivatives

def _problem(seed, layout, fmt="K5", n=2, c=12, h=6, w=7, per_image=2):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(_features(rng, layout, (n, c, h, w)))
    rois = jnp.asarray(_rois(rng, fmt, n, h, w, 0.5, per_image=per_image))
    return x, rois, jnp.asarray(rng.standard_normal(x.shape))


@sweep("op,sr,layout,fmt", [("align", 2, "NCHW", "K5"), ("align", -1, "NHWC", "NL4"),
                             ("pool", 0, "NHWC", "K5"), ("pool", 0, "NCHW", "NL4")],
       pure_jax=[("align", 2, "NCHW", "K5"), ("pool", 0, "NHWC", "K5")])
def test_check_grads_second_order_fwd_and_rev(op, sr, layout, fmt, implementation):
    x, rois, _ = _problem(1, layout, fmt)
    fn = lambda f: jnp.sum(jnp.sin(ps(op, f, rois, (2, 3), 0.5, sr, layout=layout,
                                      implementation=implementation)))
    check_grads(fn, (x,), order=2, modes=["fwd", "rev"], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("op", OPS)
def test_jvp_is_linear_and_equals_vjp_transpose(op, layout):
    x, rois, t = _problem(2, layout)
    fn = lambda f: ps(op, f, rois, (2, 3), 0.5, -1, layout=layout)
    out, tangent = jax.jvp(fn, (x,), (t,))
    np.testing.assert_allclose(out, fn(x), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(tangent, fn(t), rtol=1e-12, atol=1e-12)
    assert np.any(np.asarray(tangent) != 0)
    u = jnp.asarray(np.random.default_rng(3).standard_normal(out.shape))
    (jtu,) = jax.vjp(fn, x)[1](u)
    np.testing.assert_allclose(jnp.vdot(tangent, u), jnp.vdot(t, jtu), rtol=1e-12)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.float32])
@pytest.mark.parametrize("op", OPS)
def test_gradient_has_feature_dtype(op, dtype):
    x, rois, _ = _problem(4, "NHWC")
    x = x.astype(dtype)
    grad = jax.grad(lambda f: jnp.sum(ps(op, f, rois, (2, 3), 0.5, 2, layout="NHWC")
                                      .astype(jnp.float32)))(x)
    assert grad.dtype == dtype and grad.shape == x.shape
    assert np.any(np.asarray(grad, np.float32) != 0)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("op", OPS)
def test_backward_with_many_rois_on_one_image(op, layout):
    # Threads that share the ROIs of one image must neither lose nor double
    # an update of the gradient: 64 copies of a box give 64 times the
    # gradient of one, on every run (a race shows in some runs only; one
    # output channel per bin is where it showed).
    x = jnp.zeros((1, 6, 8, 9) if layout == "NCHW" else (1, 8, 9, 6))
    box = jnp.asarray([[0, 1.0, 1.0, 7.0, 5.0]])
    loss = lambda f, r: jnp.sum(ps(op, f, r, (2, 3), 1.0, 2, layout=layout))
    one = np.asarray(jax.grad(loss)(x, box))
    many = jax.jit(jax.grad(loss))
    for _ in range(40):
        np.testing.assert_allclose(many(x, jnp.tile(box, (64, 1))), 64 * one, rtol=1e-12,
                                   atol=1e-12)
    assert np.any(one != 0)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("op", OPS)
def test_backward_is_bitwise_deterministic(op, layout):
    rng = np.random.default_rng(9)
    x = jnp.asarray(_features(rng, layout, (2, 6, 16, 16)), jnp.float32)
    rois = jnp.asarray(_rois(rng, "K5", 2, 16, 16, 1.0, per_image=100), jnp.float32)
    dy = jnp.asarray(rng.standard_normal((200, 1, 2, 3) if layout == "NCHW" else (200, 2, 3, 1)),
                     jnp.float32)
    grad = jax.jit(jax.grad(lambda f: jnp.vdot(ps(op, f, rois, (2, 3), 1.0, -1, layout=layout),
                                               dy)))
    first = np.asarray(grad(x))
    assert np.any(first != 0)
    for _ in range(20):
        np.testing.assert_array_equal(np.asarray(grad(x)), first)


@pytest.mark.parametrize("op", OPS)
def test_nhwc_backward_in_row_bands(op):
    # A channels-last row of 56 pixels x 196 float64 channels is 86 KiB, so
    # the NHWC backward splits each image into bands of 2 rows: every ROI
    # meets some bands and not others, one image has no ROI, some ROIs read
    # nothing. The gradient must equal the reference, and the NCHW
    # gradient (which has no bands) transposed, bit for bit.
    rng = np.random.default_rng(31)
    out, n, h, w, c = (7, 7), 3, 11, 56, 4 * 49
    x = rng.standard_normal((n, c, h, w))
    boxes = _boxes(rng, 40, h, w, 1.0)
    rois = np.concatenate([rng.choice([0.0, 2.0], (40, 1)), boxes], 1)
    dy = rng.standard_normal((40, 4) + out)
    grads = {}
    for layout in ["NCHW", "NHWC"]:
        xl = x if layout == "NCHW" else x.transpose(0, 2, 3, 1)
        dyl = dy if layout == "NCHW" else dy.transpose(0, 2, 3, 1)
        fn = lambda f: ps(op, f, jnp.asarray(rois), out, 1.0, 2, layout=layout)
        _, vjp = jax.vjp(fn, jnp.asarray(xl))
        grads[layout] = np.asarray(vjp(jnp.asarray(dyl))[0])
    expected = ps_ref_vjp(op, x, rois, out, 1.0, 2, dy)
    assert np.any(expected[0] != 0) and np.all(expected[1] == 0)
    _close(grads["NCHW"], expected, F64)
    np.testing.assert_array_equal(grads["NHWC"], grads["NCHW"].transpose(0, 2, 3, 1))


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("op", OPS)
def test_calls_of_too_many_taps_to_keep(op, layout):
    # 200 copies of 8 boxes over most of a 64 x 64 map (ps_roi_align
    # sampling 16 x 16 a bin) hold more taps than a call keeps tabulated
    # (2**22): each ROI is then tabulated when visited (and the NCHW
    # backward visits a ROI once, not once a bin), and must give the
    # copies' results. The 54 channels split between threads off a bin's
    # boundary.
    rng = np.random.default_rng(21)
    x = jnp.asarray(_features(rng, layout, (1, 9 * 6, 64, 64)), F64)
    base = np.concatenate([np.zeros((8, 1)), rng.uniform(0, 3, (8, 2)),
                           rng.uniform(61, 64, (8, 2))], axis=1)
    copies = 200
    rois = jnp.asarray(np.tile(base, (copies, 1)), F64)
    run = lambda r: ps(op, x, r, (2, 3), 1.0, 16, layout=layout)
    one, many = np.asarray(run(jnp.asarray(base, F64))), np.asarray(run(rois))
    np.testing.assert_array_equal(many, np.tile(one, (copies, 1, 1, 1)))
    grad = lambda r: np.asarray(jax.grad(lambda f: jnp.sum(
        ps(op, f, r, (2, 3), 1.0, 16, layout=layout)))(x))
    want = grad(jnp.asarray(base, F64))
    assert np.any(want != 0)
    np.testing.assert_allclose(grad(rois), copies * want, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------ jit and vmap

@both_implementations
@pytest.mark.parametrize("op", OPS)
def test_jit_equals_reference(op):
    rng = np.random.default_rng(5)
    x = _features(rng, "NHWC")
    rois = _rois(rng, "K5", N, H, W, 1.0)
    fn = jax.jit(lambda f, r: ps(op, f, r, OUT, 1.0, 2, layout="NHWC"))
    out = fn(jnp.asarray(x), jnp.asarray(rois))
    _close(out, ps_ref(op, x, rois, OUT, 1.0, 2, layout="NHWC"), F64)
    dy = rng.standard_normal(out.shape)
    dx = jax.jit(jax.grad(lambda f: jnp.vdot(fn(f, jnp.asarray(rois)), dy)))(jnp.asarray(x))
    _close(dx, ps_ref_vjp(op, x, rois, OUT, 1.0, 2, dy, layout="NHWC"), F64)


@sweep("op,axes,fmt", list(itertools.product(OPS, [(0, None), (None, 0), (0, 0)], ["K5", "NL4"])),
       pure_jax=[("align", (0, 0), "K5"), ("pool", (None, 0), "NL4")])
def test_vmap_equals_a_loop_in_one_call(op, axes, fmt, implementation):
    rng = _rng("vmap", op, axes, fmt)
    xs = np.stack([_features(rng, "NCHW") for _ in range(3)])
    rs = np.stack([_rois(rng, fmt, N, H, W, 1.0) for _ in range(3)])
    f = lambda x, r: ps(op, x, r, OUT, 1.0, -1, implementation=implementation)
    x_in = jnp.asarray(xs if axes[0] == 0 else xs[0])
    r_in = jnp.asarray(rs if axes[1] == 0 else rs[0])
    batched = jax.vmap(f, in_axes=axes)
    out = jax.jit(batched)(x_in, r_in)
    assert str(jax.make_jaxpr(batched)(x_in, r_in)).count("roi_forward") == 1
    dy = np.random.default_rng(1).standard_normal(out.shape)
    dx = jax.jit(jax.grad(lambda x: jnp.vdot(batched(x, r_in), dy)))(x_in)
    dexps = []
    for i in range(3):
        x, r = xs[i if axes[0] == 0 else 0], rs[i if axes[1] == 0 else 0]
        _close(out[i], ps_ref(op, x, r, OUT, 1.0, -1), F64)
        dexps.append(ps_ref_vjp(op, x, r, OUT, 1.0, -1, dy[i]))
    _close(dx, np.stack(dexps) if axes[0] == 0 else sum(dexps), F64)


@both_implementations
@pytest.mark.parametrize("op", OPS)
def test_vmap_keeps_invalid_batch_index_invalid(op):
    rng = np.random.default_rng(3)
    maps = jnp.asarray(rng.standard_normal((2, 1, 4, 6, 7)))
    rois = jnp.asarray([[1.0, 1, 1, 5, 5], [-1.0, 1, 1, 5, 5], [0.0, 1, 1, 5, 5]])
    out = jax.vmap(lambda f: ps(op, f, rois, 2, 1.0, 2))(maps)
    assert out.shape == (2, 3, 1, 2, 2)
    assert not np.any(np.asarray(out[:, :2]))
    assert np.all(np.asarray(out[:, 2]) != 0)


# ------------------------------------------------------------ bad data

GOOD = [0.0, 0.5, 0.5, 4.5, 4.0]
BAD_ROWS = {
    "neg_index": [-1.0, 0.5, 0.5, 4.5, 4.0],
    "index_eq_n": [2.0, 0.5, 0.5, 4.5, 4.0],
    "huge_index": [1e9, 0.5, 0.5, 4.5, 4.0],
    "nan_index": [np.nan, 0.5, 0.5, 4.5, 4.0],
    "inf_index": [np.inf, 0.5, 0.5, 4.5, 4.0],
    "nan_x1": [0.0, np.nan, 0.5, 4.5, 4.0],
    "inf_x2": [0.0, 0.5, 0.5, np.inf, 4.0],
    "ninf_y1": [1.0, 0.5, -np.inf, 4.5, 4.0],
    "nan_y2": [1.0, 0.5, 0.5, 4.5, np.nan],
}


@sweep("bad,op,layout", list(itertools.product(BAD_ROWS, OPS, ["NCHW", "NHWC"])),
       pure_jax=[(bad, "align", "NCHW") for bad in BAD_ROWS]
       + [(bad, "pool", "NHWC") for bad in BAD_ROWS])
def test_bad_roi_gives_zero_and_no_gradient(bad, op, layout, implementation):
    x = jnp.asarray(_features(np.random.default_rng(0), layout, (2, 8, 6, 6)) + 3.0)
    rois = jnp.asarray([GOOD, BAD_ROWS[bad], GOOD])
    fn = lambda f, r: ps(op, f, r, 2, 1.0, -1, layout=layout, implementation=implementation)
    out = np.asarray(fn(x, rois))
    assert not np.any(out[1])
    np.testing.assert_array_equal(out[0], out[2])
    assert np.all(out[0] != 0)
    grad_bad = jax.grad(lambda f: jnp.sum(fn(f, rois)[1]))(x)
    assert not np.any(np.asarray(grad_bad))
    grad_all = jax.grad(lambda f: jnp.sum(fn(f, rois)))(x)
    grad_good = jax.grad(lambda f: jnp.sum(fn(f, rois[::2])))(x)
    np.testing.assert_allclose(grad_all, grad_good, rtol=1e-12, atol=1e-12)


@both_implementations
@pytest.mark.parametrize("op", OPS)
def test_bad_box_in_per_image_format(op):
    x = jnp.asarray(_features(np.random.default_rng(1), "NCHW", (2, 4, 6, 6)) + 3.0)
    boxes = jnp.asarray([[GOOD[1:], [np.nan, 0, 1, 1]], [[0, 0, np.inf, 2], GOOD[1:]]])
    out = np.asarray(ps(op, x, boxes, 2, 1.0, 2))
    assert out.shape == (2, 2, 1, 2, 2)
    assert not np.any(out[0, 1]) and not np.any(out[1, 0])
    assert np.all(out[0, 0] != 0) and np.all(out[1, 1] != 0)


@both_implementations
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize("op", OPS)
def test_huge_box_is_bounded(op, dtype):
    # ps_roi_align's adaptive grid would be ~1e59 samples per bin; the bins
    # of ps_roi_pool clamp to the map
    x = jnp.broadcast_to(jnp.arange(25, dtype=dtype).reshape(1, 1, 5, 5) + 1, (1, 4, 5, 5))
    rois = jnp.asarray([[0, 0, 0, 1e30, 1e30]], dtype)
    out = np.asarray(ps(op, x, rois, 2), np.float64)
    assert np.all(np.isfinite(out))
    if op == "align":
        assert np.all(np.abs(out) < 1e-30)
    else:
        # bin (0, 0) spans the whole map, the others start beyond it
        np.testing.assert_array_equal(out[0, 0], [[13, 0], [0, 0]])


@both_implementations
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("n,c,h,w,k", [
    (2, 4, 5, 5, 0), (0, 4, 5, 5, 2), (2, 0, 5, 5, 2), (2, 4, 0, 5, 2), (2, 4, 5, 0, 2)])
def test_empty_sizes(op, layout, n, c, h, w, k):
    shape = (n, c, h, w) if layout == "NCHW" else (n, h, w, c)
    x = jnp.ones(shape)
    rois = jnp.asarray(np.tile([[0, 0.5, 0.5, 3.0, 3.0]], (k, 1)).reshape(k, 5))
    fn = lambda f: ps(op, f, rois, 2, 1.0, -1, layout=layout)
    out = fn(x)
    c_out = c // 4
    assert out.shape == ((k, c_out, 2, 2) if layout == "NCHW" else (k, 2, 2, c_out))
    assert not np.any(np.asarray(out))
    grad = jax.grad(lambda f: jnp.sum(fn(f)))(x)
    assert grad.shape == shape and not np.any(np.asarray(grad))


@both_implementations
@pytest.mark.parametrize("op", OPS)
def test_empty_per_image_boxes(op):
    out = ps(op, jnp.ones((2, 8, 5, 5)), jnp.zeros((2, 0, 4)), 2)
    assert out.shape == (2, 0, 2, 2, 2)


# ------------------------------------------------------------ argument errors

@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("c", [5, 7, 13])
def test_channels_not_a_multiple_of_the_bins(c, op, layout):
    shape = (2, c, 5, 5) if layout == "NCHW" else (2, 5, 5, c)
    with pytest.raises(ValueError) as info:
        ps(op, jnp.ones(shape), jnp.asarray([GOOD]), (2, 3), layout=layout)
    assert "features" in str(info.value) and "output_size" in str(info.value)


@both_implementations
@pytest.mark.parametrize("op", OPS)
def test_channels_are_read_from_the_layout_s_axis(op):
    # 12 channels are 2 per bin of (2, 3); the same array read as NHWC has 5
    x = jnp.ones((2, 12, 5, 5))
    assert ps(op, x, jnp.asarray([GOOD]), (2, 3)).shape == (1, 2, 2, 3)
    with pytest.raises(ValueError, match="output_size"):
        ps(op, x, jnp.asarray([GOOD]), (2, 3), layout="NHWC")


def _call(op, **overrides):
    args = dict(features=jnp.ones((2, 4, 5, 5)), rois=jnp.asarray([GOOD]), output_size=2)
    args.update(overrides)
    fn = jax_roi.ps_roi_align if op == "align" else jax_roi.ps_roi_pool
    return fn(**args)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("overrides,error,name", [
    (dict(rois=jnp.ones((3, 6))), ValueError, "rois"),
    (dict(rois=jnp.ones((3, 4))), ValueError, "rois"),
    (dict(rois=jnp.ones((2, 3, 5))), ValueError, "rois"),
    (dict(rois=jnp.ones((3, 2, 4))), ValueError, "rois"),   # N != batch size
    (dict(rois=jnp.ones((3, 5), jnp.int32)), TypeError, "rois"),
    (dict(features=jnp.ones((2, 4, 5))), ValueError, "features"),
    (dict(features=jnp.ones((2, 4, 5, 5), jnp.int32)), TypeError, "features"),
    (dict(layout="nchw"), ValueError, "layout"),
    (dict(output_size=0), ValueError, "output_size"),
    (dict(output_size=(2, 2, 2)), TypeError, "output_size"),
    (dict(spatial_scale=0.0), ValueError, "spatial_scale"),
    (dict(spatial_scale=float("nan")), ValueError, "spatial_scale"),
    (dict(implementation="tpu"), ValueError, "implementation"),
])
def test_argument_errors_name_the_argument(op, overrides, error, name):
    with pytest.raises(error, match=rf"\b{name}\b"):
        _call(op, **overrides)


def test_ps_roi_align_sampling_ratio_must_be_an_int():
    with pytest.raises(TypeError, match="sampling_ratio"):
        _call("align", sampling_ratio=1.5)


@pytest.mark.parametrize("op", OPS)
def test_errors_raise_at_trace_time(op):
    fn = jax_roi.ps_roi_align if op == "align" else jax_roi.ps_roi_pool
    traced = jax.jit(lambda f, r: fn(f, r, (2, 3)))
    with pytest.raises(ValueError, match="output_size"):
        traced.lower(jnp.ones((2, 5, 5, 5)), jnp.ones((3, 5)))
    with pytest.raises(ValueError, match="rois"):
        traced.lower(jnp.ones((2, 6, 5, 5)), jnp.ones((3, 6)))
