"""16-bit features give 16-bit results and gradients, each a float32 sum
rounded once by the CPU kernels themselves.

The feature gradient is summed in float32 and rounded block by block; it
must equal, bit for bit, the float32 sums (the same handler asked for a
float32 result) converted by XLA, whichever way the blocks split the map:
channel blocks, row bands, images no ROI reads. The forward result, rounded
a vector of channels at a time (and streamed past the cache when large), must
equal the float32 kernel's result on the widened features, converted by XLA,
and round ties to even."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_roi
from jax_roi import _ffi
from jax_roi._pyramid import level_kernel_attributes, levels_backward_p, levels_forward_p
from jax_roi._primitive import kernel_attributes
from jax_roi._roi import roi_backward_p, roi_forward_p

DTYPES = [jnp.bfloat16, jnp.float16]
# op, output size, channels (the ps ops' multiples of the bins), box columns
OPS = [("align_avg", (3, 3), 40, 4), ("align_max", (2, 3), 40, 4), ("pool", (2, 2), 40, 4),
       ("rotated", (3, 2), 40, 5), ("ps_align", (2, 2), 20, 4), ("ps_pool", (3, 3), 27, 4),
       ("prroi", (2, 2), 40, 4)]


def with_special_values(grad_out, dtype, rng):
    """A cotangent whose sums overflow float16, fall below its normal range,
    and carry NaN and both infinities."""
    flat = np.array(grad_out, np.float64).reshape(-1)
    picks = rng.choice(flat.size, 8, replace=False)
    flat[picks[:4]] = [np.nan, np.inf, -np.inf, 6e4 if dtype == jnp.float16 else 3e38]
    flat[picks[4:]] = 3e-7  # sums of a few: float16 subnormals
    return jnp.asarray(flat.reshape(grad_out.shape), dtype)


def assert_rounded_once(narrowed, sums, dtype):
    """narrowed == sums converted by XLA, bit for bit (any NaN for a NaN)."""
    assert narrowed.dtype == dtype and sums.dtype == jnp.float32
    expected = np.asarray(sums.astype(dtype))
    narrowed = np.asarray(narrowed)
    nan = np.isnan(expected.astype(np.float32))
    np.testing.assert_array_equal(np.isnan(narrowed.astype(np.float32)), nan)
    np.testing.assert_array_equal(narrowed.view(np.uint16)[~nan], expected.view(np.uint16)[~nan])
    assert np.any(np.asarray(sums) != 0)


def problem(op, channels, box_columns, layout, dtype, seed):
    rng = np.random.default_rng(seed)
    n, h, w = 3, 13, 17  # image 2 has no ROI: zeroed, never summed
    x = rng.standard_normal((n, channels, h, w) if layout == "NCHW" else (n, h, w, channels))
    k = 24
    batch = rng.choice([0, 0, 0, 1], k).astype(float)  # image 0 split among threads
    if box_columns == 5:
        boxes = np.stack([rng.uniform(0, w, k), rng.uniform(0, h, k), rng.uniform(1, w, k),
                          rng.uniform(1, h, k), rng.uniform(-90, 90, k)], axis=-1)
    else:
        x1, y1 = rng.uniform(-2, w, k), rng.uniform(-2, h, k)
        boxes = np.stack([x1, y1, x1 + rng.uniform(1, w, k), y1 + rng.uniform(1, h, k)], -1)
    rois = np.concatenate([batch[:, None], boxes], axis=1)
    return jnp.asarray(x, dtype), jnp.asarray(rois, jnp.float32), rng


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
@pytest.mark.parametrize("op,output_size,channels,box_columns", OPS, ids=[o[0] for o in OPS])
def test_16bit_gradient_is_the_float32_sums_rounded_once(op, output_size, channels, box_columns,
                                                         dtype, layout):
    features, rois, rng = problem(op, channels, box_columns, layout, dtype, seed=len(op))
    static = forward_static(op, output_size, layout)
    argmax = roi_forward_p.bind(features, rois, **static)[1:]
    pooled_shape = roi_forward_p.bind(features, rois, **static)[0].shape
    grad_out = with_special_values(rng.standard_normal(pooled_shape), dtype, rng)
    narrowed = roi_backward_p.bind(grad_out, rois, *argmax, features_shape=features.shape,
                                   **static)
    wide = jax.ShapeDtypeStruct(features.shape, jnp.float32)
    sums = jax.ffi.ffi_call(_ffi.target(op + "_backward"), wide)(
        grad_out, rois, *argmax, **kernel_attributes(op, 1.0, 2, static["aligned"], layout))
    assert_rounded_once(narrowed, sums, dtype)
    assert np.all(np.asarray(narrowed)[2] == 0)


def forward_static(op, output_size, layout):
    return dict(op=op, output_size=output_size, spatial_scale=1.0, sampling_ratio=2,
                aligned=op != "ps_pool", clockwise=False, layout=layout,
                implementation="kernel")


def assert_result_rounded_once(features, rois, static):
    narrowed = roi_forward_p.bind(features, rois, **static)[0]
    wide = roi_forward_p.bind(features.astype(jnp.float32), rois, **static)[0]
    assert_rounded_once(narrowed, wide, features.dtype)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
@pytest.mark.parametrize("op,output_size,channels,box_columns", OPS, ids=[o[0] for o in OPS])
def test_16bit_result_is_the_float32_result_rounded_once(op, output_size, channels, box_columns,
                                                         dtype, layout):
    features, rois, rng = problem(op, channels, box_columns, layout, dtype, seed=len(op) + 1)
    features = with_special_values(features, dtype, rng)
    assert_result_rounded_once(features, rois, forward_static(op, output_size, layout))


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
@pytest.mark.parametrize("op", ["align_avg", "rotated", "prroi"])
def test_16bit_result_streamed_past_the_cache_is_rounded_once(op, dtype, layout):
    """Results of 8 MB or more are streamed (lib/cpu/stream_store.h): 1024 ROIs
    of 7 x 7 bins of 84 channels in 16 bits are 8.4 MB."""
    box_columns = 5 if op == "rotated" else 4
    features, rois, rng = problem(op, 84, box_columns, layout, dtype, seed=3)
    rois = jnp.tile(rois, (43, 1))[:1024]
    assert_result_rounded_once(features, rois, forward_static(op, (7, 7), layout))


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
def test_16bit_result_rounds_ties_to_even(dtype, layout):
    """Row 1 holds consecutive 16-bit values 1 + j * ulp (times 2**(c % 5) in
    channel c). ROI j's one sample lies halfway between pixels j and j + 1
    of that row, so its float32 result is a tie, which rounds to the even
    one of the two: pixel j's value for even j, pixel j + 1's for odd j."""
    ulp = 2.0 ** -7 if dtype == jnp.bfloat16 else 2.0 ** -10
    channels, width = 44, 9  # register blocks and a few channels past them
    row = 1 + ulp * np.arange(width)
    scale = 2.0 ** (np.arange(channels) % 5)
    x = np.zeros((1, channels, 3, width))
    x[0, :, 1, :] = scale[:, None] * row
    if layout == "NHWC":
        x = x.transpose(0, 2, 3, 1)
    j = np.arange(width - 1)
    # aligned: the sample of a 1 x 1 box's single bin is at (x1, y1) - 0.5 + 0.5
    rois = np.stack([np.zeros_like(j), j + 0.5, np.ones_like(j), j + 1.5, np.full_like(j, 2)], 1)
    static = dict(forward_static("align_avg", (1, 1), layout), sampling_ratio=1)
    out = roi_forward_p.bind(jnp.asarray(x, dtype), jnp.asarray(rois, jnp.float32), **static)[0]
    expected = scale[None, :] * (1 + ulp * (j + j % 2))[:, None]  # [ROI, channel]
    np.testing.assert_array_equal(np.asarray(out, np.float64).reshape(len(j), channels), expected)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
@pytest.mark.parametrize("op", ["align_avg", "align_max"])
def test_16bit_pyramid_gradients_are_the_float32_sums_rounded_once(op, dtype, layout):
    rng = np.random.default_rng(7)
    n, c = 2, 24
    sizes = [(17, 21), (9, 11)]
    maps = [jnp.asarray(rng.standard_normal((n, c, h, w) if layout == "NCHW" else (n, h, w, c)),
                        dtype) for h, w in sizes]
    x1, y1 = rng.uniform(-4, 30, (2, 2, 9))
    boxes = jnp.asarray(np.stack([x1, y1, x1 + rng.uniform(1, 40, (2, 9)),
                                  y1 + rng.uniform(1, 30, (2, 9))], -1), jnp.float32)
    levels = jnp.asarray(rng.integers(0, 2, (2, 9)), jnp.int32)
    static = dict(op=op, output_size=(2, 3), spatial_scales=(0.5, 0.25), sampling_ratio=2,
                  aligned=True, layout=layout, implementation="kernel")
    forward = levels_forward_p.bind(boxes, levels, *maps, **static)
    grad_out = with_special_values(rng.standard_normal(forward[0].shape), dtype, rng)
    map_shapes = tuple(m.shape for m in maps)
    narrowed = levels_backward_p.bind(grad_out, boxes, levels, *forward[1:],
                                      map_shapes=map_shapes, **static)
    wide = [jax.ShapeDtypeStruct(s, jnp.float32) for s in map_shapes]
    sums = jax.ffi.ffi_call(_ffi.target(op + "_levels_backward"), wide)(
        grad_out, boxes, levels, *forward[1:],
        **level_kernel_attributes(op, static["spatial_scales"], 2, True, layout))
    for a, b in zip(narrowed, sums):
        assert_rounded_once(a, b, dtype)


@pytest.mark.parametrize("implementation", [None, "xla"])
@pytest.mark.parametrize("dtype", DTYPES + [jnp.float32, jnp.float64],
                         ids=lambda d: jnp.dtype(d).name)
def test_feature_gradient_has_the_features_dtype(dtype, implementation):
    features = jnp.ones((1, 4, 6, 6), dtype)
    rois = jnp.asarray([[0, 1, 1, 4, 4]], jnp.float64 if dtype == jnp.float64 else jnp.float32)
    static = dict(op="align_avg", output_size=(2, 2), spatial_scale=1.0, sampling_ratio=2,
                  aligned=True, clockwise=False, layout="NCHW", implementation=implementation)
    out = roi_forward_p.bind(features, rois, **static)[0]
    grad = roi_backward_p.bind(jnp.ones_like(out), rois, features_shape=features.shape, **static)
    assert grad.dtype == dtype
    # every sample lies inside the map: the weights of each of the 4 bins of
    # the 4 channels sum to 1
    np.testing.assert_allclose(float(jnp.sum(grad.astype(jnp.float64))), 16.0, rtol=1e-2)


def lowered_backward(platform):
    features = jnp.ones((2, 8, 10, 12), jnp.bfloat16)
    rois = jnp.asarray([[0, 1, 1, 8, 7], [1, 0, 2, 9, 9]], jnp.float32)
    fn = jax.grad(lambda f: jnp.sum(jax_roi.roi_align(f, rois, 2, 1.0, 2).astype(jnp.float32)))
    return jax.jit(fn).trace(features).lower(lowering_platforms=(platform,)).as_text()


def backward_calls(text):
    return [line for line in text.splitlines()
            if "custom_call" in line and "align_avg_backward" in line]


def test_cpu_kernels_return_the_16bit_gradient_themselves():
    text = lowered_backward("cpu")
    (call,) = backward_calls(text)
    assert call.rstrip().endswith("-> tensor<2x8x10x12xbf16>")
    assert "tensor<2x8x10x12xf32>" not in text


def test_cuda_gradient_is_summed_in_float32_and_converted_once():
    text = lowered_backward("cuda")
    if "cuda" in _ffi.KERNEL_PLATFORMS:  # the CUDA kernels return float32 sums
        (call,) = backward_calls(text)
        assert call.rstrip().endswith("-> tensor<2x8x10x12xf32>")
        assert "(tensor<2x8x10x12xf32>) -> tensor<2x8x10x12xbf16>" in text
    else:  # no CUDA kernels built: the pure-JAX implementation, in bfloat16 too
        assert not backward_calls(text)
    assert "-> (tensor<2x8x10x12xbf16>" in text
