"""The CUDA kernels' arithmetic, checked without a GPU: the test-only module
runs the same element functions the CUDA grid-stride loops call, serially
over the whole index range with plain adds for atomics, and must agree with
the CPU kernels for every op (roi_align, roi_pool, roi_align_rotated,
ps_roi_align, ps_roi_pool, prroi_pool), mode, layout and dtype, forward and
backward, and for the derivatives with respect to the ROIs (box_jvp and
box_vjp, on one map and on a pyramid)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_roi import _ffi, _jax_roi_cuda_logic
from jax_roi._pyramid import level_kernel_attributes, levels_backward_p as roi_levels_backward_p, levels_forward_p as roi_levels_forward_p
from jax_roi._pyramid import levels_box_jvp_p, levels_box_vjp_p
from jax_roi._checks import geometry_dtype
from jax_roi._primitive import kernel_attributes
from jax_roi._roi import roi_backward_p, roi_box_jvp_p, roi_box_vjp_p, roi_forward_p

PREFIX = "jax_roi_cuda_logic_"
_ffi.register(_jax_roi_cuda_logic.registrations(), "cpu", prefix=PREFIX)

DTYPES = [jnp.float32, jnp.float64, jnp.bfloat16, jnp.float16]
OPS = [("align_avg", 2, True), ("align_avg", -1, False), ("align_max", 0, True),
       ("align_max", 3, False), ("pool", 0, False)]


def problem(layout, dtype, roi_format, seed=0):
    rng = np.random.default_rng(seed)
    n, c, h, w = 2, 21, 9, 11  # 21 channels: a 16-lane NCHW tile and a remainder
    x = rng.standard_normal((n, c, h, w) if layout == "NCHW" else (n, h, w, c))
    geometry = jnp.float64 if dtype == jnp.float64 else jnp.float32
    x1, y1 = rng.uniform(-4, 2 * w, (2, 6)), rng.uniform(-4, 2 * h, (2, 6))
    boxes = np.stack([x1, y1, x1 + rng.uniform(0.3, 2 * w, (2, 6)),
                      y1 + rng.uniform(0.3, 2 * h, (2, 6))], axis=-1)
    boxes[0, 1] = [np.nan, 1, 2, 3]  # bad data takes the same path on both
    if roi_format == "k5":
        batch = np.array([0, 1, 1, -1, 0, 2, 1, 0, 0, 1, 0, 1], float)[:, None]
        rois = np.concatenate([batch, boxes.reshape(12, 4)], axis=1)
    else:
        rois = boxes
    return jnp.asarray(x, dtype), jnp.asarray(rois, geometry)


def serial_call(direction, static, reference, *args, prefix=PREFIX):
    attrs = kernel_attributes(static["op"], static["spatial_scale"],
                              static["sampling_ratio"], static["aligned"], static["layout"],
                              clockwise=static.get("clockwise", False))
    return jax.ffi.ffi_call(prefix + static["op"] + "_" + direction, reference)(*args, **attrs)


def serial_forward(features, rois, static):
    reference = jax.eval_shape(lambda: roi_forward_p.bind(features, rois, **static))
    return serial_call("forward", static, reference, features, rois)


def wide(avals):
    """The gradients' avals in the geometry dtype: the CUDA kernels (and so the
    serial ones) return 16-bit gradients in float32, unrounded."""
    return jax.tree.map(lambda a: a.update(dtype=geometry_dtype(a.dtype)), avals)


def serial_backward(grad_out, rois, argmax, features_shape, static, prefix=PREFIX):
    reference = jax.eval_shape(lambda: roi_backward_p.bind(
        grad_out, rois, *argmax, features_shape=features_shape, **static))
    return serial_call("backward", static, wide(reference), grad_out, rois, *argmax,
                       prefix=prefix)


@pytest.mark.parametrize("roi_format", ["k5", "nl4"])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
@pytest.mark.parametrize("op,sampling_ratio,aligned", OPS)
def test_cuda_element_functions_match_cpu_kernels(op, sampling_ratio, aligned, dtype, layout,
                                                  roi_format):
    features, rois = problem(layout, dtype, roi_format)
    static = dict(op=op, output_size=(3, 4), spatial_scale=0.5, sampling_ratio=sampling_ratio,
                  aligned=aligned, layout=layout, implementation="kernel")
    assert_kernels_agree(features, rois, static)


# The CPU kernels may fuse multiply-adds (as the GPU does) and sum "avg"
# bins by pixel taps where the element functions go sample by sample:
# agreement is to the rounding of the output dtype, and the argmax exactly.
TOLERANCE = {jnp.float64: 1e-12, jnp.float32: 2e-6, jnp.float16: 2e-3, jnp.bfloat16: 1e-2}


def assert_values_forward_agrees(cpu_out, serial_out, features, rois, static):
    values = dict(static, winners=False)
    cpu = roi_forward_p.bind(features, rois, **values)
    assert len(cpu) == 1
    reference = jax.eval_shape(lambda: roi_forward_p.bind(features, rois, **values))
    serial = serial_call("values_forward", static, reference, features, rois)
    np.testing.assert_array_equal(cpu[0], cpu_out)
    np.testing.assert_array_equal(serial[0], serial_out)


def assert_kernels_agree(features, rois, static):
    tol = TOLERANCE[features.dtype.type]
    cpu = roi_forward_p.bind(features, rois, **static)
    serial = serial_forward(features, rois, static)
    np.testing.assert_allclose(np.asarray(serial[0], np.float64), np.asarray(cpu[0], np.float64),
                               rtol=tol, atol=tol)
    for a, b in zip(cpu[1:], serial[1:]):
        np.testing.assert_array_equal(a, b)
    assert np.any(np.asarray(cpu[0], np.float64) != 0)
    if len(cpu) > 1:  # a max op's forward without winners: the same values
        assert_values_forward_agrees(cpu[0], serial[0], features, rois, static)

    grad_out = jnp.asarray(np.random.default_rng(1).standard_normal(cpu[0].shape), features.dtype)
    argmax = cpu[1:]
    # the CPU kernels' float32 sums, before they round 16-bit gradients
    cpu_grad = serial_backward(grad_out, rois, argmax, features.shape, static,
                               prefix=_ffi.TARGET_PREFIX)
    serial_grad = serial_backward(grad_out, rois, argmax, features.shape, static)
    grad_tol = 1e-12 if features.dtype == jnp.float64 else 1e-5
    np.testing.assert_allclose(serial_grad, cpu_grad, rtol=grad_tol, atol=grad_tol)
    assert np.any(np.asarray(cpu_grad) != 0)


# ------------------------------------------ rotated and position-sensitive

def rotated_problem(layout, dtype, roi_format, seed=5):
    rng = np.random.default_rng(seed)
    n, c, h, w = 2, 21, 9, 11
    x = rng.standard_normal((n, c, h, w) if layout == "NCHW" else (n, h, w, c))
    geometry = jnp.float64 if dtype == jnp.float64 else jnp.float32
    cx, cy = rng.uniform(-4, 2 * w + 4, (2, 6)), rng.uniform(-4, 2 * h + 4, (2, 6))
    boxes = np.stack([cx, cy, rng.uniform(0.3, 2 * w, (2, 6)), rng.uniform(0.3, 2 * h, (2, 6)),
                      rng.uniform(-200, 200, (2, 6))], axis=-1)
    boxes[0, 1] = [np.nan, 1, 2, 3, 4]   # bad data takes the same path on both
    boxes[1, 2] = [8, 6, -3, 4, 30]      # a negative width: bad data when aligned
    boxes[1, 4, 4] = np.inf              # an infinite angle
    if roi_format == "k5":
        batch = np.array([0, 1, 1, -1, 0, 2, 1, 0, 0, 1, 0, 1], float)[:, None]
        rois = np.concatenate([batch, boxes.reshape(12, 5)], axis=1)
    else:
        rois = boxes
    return jnp.asarray(x, dtype), jnp.asarray(rois, geometry)


def ps_problem(layout, dtype, roi_format, channels, seed=6):
    # the [K, 5] / [N, L, 4] boxes of problem() on `channels` channels
    _, rois = problem(layout, dtype, roi_format, seed)
    rng = np.random.default_rng(seed + 1)
    n, h, w = 2, 9, 11
    x = rng.standard_normal((n, channels, h, w) if layout == "NCHW" else (n, h, w, channels))
    return jnp.asarray(x, dtype), rois


# (op, sampling_ratio, aligned, clockwise)
NEW_OPS = [("rotated", 2, True, False), ("rotated", -1, False, True),
           ("rotated", 0, True, True), ("ps_align", -1, True, False),
           ("ps_align", 3, True, False), ("ps_pool", 0, False, False),
           ("prroi", 0, False, False)]


@pytest.mark.parametrize("roi_format", ["k5", "nl4"])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
@pytest.mark.parametrize("op,sampling_ratio,aligned,clockwise", NEW_OPS)
def test_cuda_element_functions_match_cpu_kernels_new_ops(op, sampling_ratio, aligned,
                                                          clockwise, dtype, layout,
                                                          roi_format):
    features, rois = new_op_problem(op, layout, dtype, roi_format)
    static = dict(op=op, output_size=(2, 3), spatial_scale=0.5, sampling_ratio=sampling_ratio,
                  aligned=aligned, clockwise=clockwise, layout=layout, implementation="kernel")
    cpu = roi_forward_p.bind(features, rois, **static)
    assert len(cpu) == 1  # linear ops: no argmax
    assert_kernels_agree(features, rois, static)


def new_op_problem(op, layout, dtype, roi_format):
    if op == "rotated":
        return rotated_problem(layout, dtype, roi_format)
    if op == "prroi":
        return problem(layout, dtype, roi_format)
    # output (2, 3): 102 channels are 17 per bin, a 16-lane tile and a
    # remainder of input and of output channels alike
    return ps_problem(layout, dtype, roi_format, 102)


# ------------------------------------------ derivatives with respect to ROIs

# (op, sampling_ratio, aligned, clockwise): every op with a box derivative
BOX_OPS = [("align_avg", 2, True, False), ("align_avg", -1, False, False),
           ("align_max", 0, True, False), ("align_max", 3, False, False),
           ("rotated", 2, True, True), ("rotated", -1, False, False),
           ("ps_align", -1, True, False), ("prroi", 0, False, False)]


def _assert_close_scaled(actual, expected, tol):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    scale = max(1.0, float(np.abs(expected).max(initial=0)))
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol * scale)


@pytest.mark.parametrize("roi_format", ["k5", "nl4"])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
@pytest.mark.parametrize("op,sampling_ratio,aligned,clockwise", BOX_OPS)
def test_cuda_box_derivative_element_functions_match_cpu_kernels(op, sampling_ratio, aligned,
                                                                 clockwise, dtype, layout,
                                                                 roi_format):
    if op in ("align_avg", "align_max"):
        features, rois = problem(layout, dtype, roi_format)
    else:
        features, rois = new_op_problem(op, layout, dtype, roi_format)
    static = dict(op=op, output_size=(2, 3), spatial_scale=0.5, sampling_ratio=sampling_ratio,
                  aligned=aligned, clockwise=clockwise, layout=layout, implementation="kernel")
    argmax = roi_forward_p.bind(features, rois, **static)[1:]
    rng = np.random.default_rng(7)
    tangents = jnp.asarray(rng.standard_normal(rois.shape), rois.dtype)
    out_tol = TOLERANCE[features.dtype.type]

    cpu = roi_box_jvp_p.bind(features, rois, tangents, *argmax, **static)
    reference = jax.eval_shape(lambda: roi_box_jvp_p.bind(features, rois, tangents, *argmax,
                                                          **static))
    serial = serial_call("box_jvp", static, reference, features, rois, tangents, *argmax)
    assert cpu.dtype == features.dtype and serial.dtype == features.dtype
    _assert_close_scaled(serial, cpu, out_tol)
    assert np.any(np.asarray(cpu, np.float64) != 0)

    grad_out = jnp.asarray(rng.standard_normal(cpu.shape), features.dtype)
    cpu = roi_box_vjp_p.bind(features, rois, grad_out, *argmax, **static)
    reference = jax.eval_shape(lambda: roi_box_vjp_p.bind(features, rois, grad_out, *argmax,
                                                          **static))
    serial = serial_call("box_vjp", static, reference, features, rois, grad_out, *argmax)
    assert cpu.shape == rois.shape and cpu.dtype == rois.dtype
    _assert_close_scaled(serial, cpu, 1e-12 if features.dtype == jnp.float64 else 1e-5)
    cpu = np.asarray(cpu)
    assert np.count_nonzero(cpu) > cpu.size // 3
    if roi_format == "k5":
        np.testing.assert_array_equal(cpu[:, 0], 0.0)
        np.testing.assert_array_equal(np.asarray(serial)[:, 0], 0.0)


@pytest.mark.parametrize("op", ["align_avg", "align_max", "pool"])
def test_channel_blocked_nhwc_kernels_match(op):
    # A map big enough that the NHWC kernels split the 40 channels into
    # cache-sized blocks (16 + 16 + 8).
    rng = np.random.default_rng(2)
    features = jnp.asarray(rng.standard_normal((1, 512, 512, 40)), jnp.float32)
    x1, y1 = rng.uniform(-8, 1000, (2, 24))
    rois = np.stack([np.zeros(24), x1, y1, x1 + rng.uniform(2, 300, 24),
                     y1 + rng.uniform(2, 300, 24)], axis=1)
    static = dict(op=op, output_size=(3, 3), spatial_scale=0.5, sampling_ratio=2,
                  aligned=True, layout="NHWC", implementation="kernel")
    assert_kernels_agree(features, jnp.asarray(rois, jnp.float32), static)


@pytest.mark.parametrize("op", ["rotated", "ps_align", "ps_pool"])
def test_channel_blocked_nhwc_kernels_match_new_ops(op):
    # The same big map for the linear ops: 40 channels for rotated, 45 for
    # the position-sensitive ones (5 per bin of 3 x 3)
    rng = np.random.default_rng(3)
    c = 40 if op == "rotated" else 45
    features = jnp.asarray(rng.standard_normal((1, 512, 512, c)), jnp.float32)
    x1, y1 = rng.uniform(-8, 1000, (2, 24))
    sizes = rng.uniform(2, 300, (2, 24))
    if op == "rotated":
        rois = np.stack([np.zeros(24), x1, y1, *sizes, rng.uniform(-180, 180, 24)], axis=1)
    else:
        rois = np.stack([np.zeros(24), x1, y1, x1 + sizes[0], y1 + sizes[1]], axis=1)
    static = dict(op=op, output_size=(3, 3), spatial_scale=0.5, sampling_ratio=2,
                  aligned=op != "ps_pool", clockwise=False, layout="NHWC",
                  implementation="kernel")
    assert_kernels_agree(features, jnp.asarray(rois, jnp.float32), static)


# ------------------------------------------------------------- pyramids

def pyramid_problem(layout, dtype, seed=3):
    rng = np.random.default_rng(seed)
    n, c = 2, 10
    sizes = [(17, 21), (9, 11), (5, 6)]
    maps = [rng.standard_normal((n, c, h, w) if layout == "NCHW" else (n, h, w, c))
            for h, w in sizes]
    x1, y1 = rng.uniform(-4, 30, (2, 2, 7))
    boxes = np.stack([x1, y1, x1 + rng.uniform(1, 40, (2, 7)),
                      y1 + rng.uniform(1, 30, (2, 7))], axis=-1)
    boxes[1, 2] = [np.nan, 0, 4, 4]
    # every level, and indices outside [0, 3) that the kernels clamp
    levels = np.array([[0, 1, 2, 0, 1, 2, -1], [2, 1, 0, 7, 1, 0, 2]], np.int32)
    geometry = jnp.float64 if dtype == jnp.float64 else jnp.float32
    return [jnp.asarray(m, dtype) for m in maps], jnp.asarray(boxes, geometry), jnp.asarray(levels)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
@pytest.mark.parametrize("op,sampling_ratio,aligned", [("align_avg", -1, True),
                                                       ("align_max", 2, False)])
def test_cuda_pyramid_element_functions_match_cpu_kernels(op, sampling_ratio, aligned, dtype,
                                                          layout):
    maps, boxes, levels = pyramid_problem(layout, dtype)
    static = dict(op=op, output_size=(2, 3), spatial_scales=(0.5, 0.25, 0.125),
                  sampling_ratio=sampling_ratio, aligned=aligned, layout=layout,
                  implementation="kernel")
    level_attrs = level_kernel_attributes(op, static["spatial_scales"], sampling_ratio, aligned,
                                          layout)
    attrs = {d: level_attrs for d in ("forward", "backward")}
    tol = TOLERANCE[dtype]

    cpu = roi_levels_forward_p.bind(boxes, levels, *maps, **static)
    reference = jax.eval_shape(lambda: roi_levels_forward_p.bind(boxes, levels, *maps, **static))
    serial = jax.ffi.ffi_call(PREFIX + op + "_levels_forward", reference)(
        boxes, levels, *maps, **attrs["forward"])
    np.testing.assert_allclose(np.asarray(serial[0], np.float64), np.asarray(cpu[0], np.float64),
                               rtol=tol, atol=tol)
    for a, b in zip(cpu[1:], serial[1:]):
        np.testing.assert_array_equal(a, b)
    assert np.all(np.asarray(cpu[0], np.float64)[1, 2] == 0)  # the NaN box
    if op == "align_max":  # the forward without winners: the same values
        values = dict(static, winners=False)
        reference = jax.eval_shape(lambda: roi_levels_forward_p.bind(boxes, levels, *maps,
                                                                     **values))
        assert len(reference) == 1
        for prefix in (_ffi.TARGET_PREFIX, PREFIX):
            alone = jax.ffi.ffi_call(prefix + op + "_levels_values_forward", reference)(
                boxes, levels, *maps, **attrs["forward"])
            np.testing.assert_array_equal(alone[0], (cpu if prefix != PREFIX else serial)[0])
    # -1 reads level 0 and 7 level 2: the same as the clamped indices
    clamped = roi_levels_forward_p.bind(boxes, jnp.clip(levels, 0, 2), *maps, **static)
    np.testing.assert_array_equal(np.asarray(clamped[0], np.float64),
                                  np.asarray(cpu[0], np.float64))

    grad_out = jnp.asarray(np.random.default_rng(4).standard_normal(cpu[0].shape), dtype)
    map_shapes = tuple(m.shape for m in maps)
    reference = wide(jax.eval_shape(lambda: roi_levels_backward_p.bind(
        grad_out, boxes, levels, *cpu[1:], map_shapes=map_shapes, **static)))
    cpu_grads, serial_grads = (jax.ffi.ffi_call(prefix + op + "_levels_backward", reference)(
        grad_out, boxes, levels, *cpu[1:], **attrs["backward"])
        for prefix in (_ffi.TARGET_PREFIX, PREFIX))
    grad_tol = 1e-12 if dtype == jnp.float64 else 1e-5
    for a, b in zip(serial_grads, cpu_grads):
        np.testing.assert_allclose(a, b, rtol=grad_tol, atol=grad_tol)
        assert np.any(np.asarray(b) != 0)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
@pytest.mark.parametrize("op,sampling_ratio,aligned", [("align_avg", -1, True),
                                                       ("align_max", 2, False)])
def test_cuda_pyramid_box_derivative_element_functions_match_cpu_kernels(
        op, sampling_ratio, aligned, dtype, layout):
    maps, boxes, levels = pyramid_problem(layout, dtype)
    static = dict(op=op, output_size=(2, 3), spatial_scales=(0.5, 0.25, 0.125),
                  sampling_ratio=sampling_ratio, aligned=aligned, layout=layout,
                  implementation="kernel")
    attrs = level_kernel_attributes(op, static["spatial_scales"], sampling_ratio, aligned, layout)
    argmax = roi_levels_forward_p.bind(boxes, levels, *maps, **static)[1:]
    rng = np.random.default_rng(8)
    tangents = jnp.asarray(rng.standard_normal(boxes.shape), boxes.dtype)

    operands = (boxes, levels, tangents, *argmax, *maps)
    cpu = levels_box_jvp_p.bind(*operands, **static)
    reference = jax.eval_shape(lambda: levels_box_jvp_p.bind(*operands, **static))
    serial = jax.ffi.ffi_call(PREFIX + op + "_levels_box_jvp", reference)(*operands, **attrs)
    _assert_close_scaled(serial, cpu, TOLERANCE[dtype])
    assert np.any(np.asarray(cpu, np.float64) != 0)
    assert np.all(np.asarray(cpu, np.float64)[1, 2] == 0)  # the NaN box

    grad_out = jnp.asarray(rng.standard_normal(cpu.shape), dtype)
    operands = (boxes, levels, grad_out, *argmax, *maps)
    cpu = levels_box_vjp_p.bind(*operands, **static)
    reference = jax.eval_shape(lambda: levels_box_vjp_p.bind(*operands, **static))
    serial = jax.ffi.ffi_call(PREFIX + op + "_levels_box_vjp", reference)(*operands, **attrs)
    assert cpu.shape == boxes.shape and cpu.dtype == boxes.dtype
    _assert_close_scaled(serial, cpu, 1e-12 if dtype == jnp.float64 else 1e-5)
    cpu = np.asarray(cpu)
    np.testing.assert_array_equal(cpu[1, 2], 0.0)  # the NaN box
    assert np.count_nonzero(cpu) > cpu.size // 3
