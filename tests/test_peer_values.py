"""Hard-coded values published by peers (detectron2, mmcv) and derived by hand.

Every gradient here is for an all-ones output cotangent.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_roi

DTYPES = [np.float32, np.float64]
TOL = {np.float32: 1e-6, np.float64: 1e-12}


def _run(op, x, rois, layout, dtype, **kw):
    """Forward and all-ones vjp; x is NCHW, results come back NCHW."""
    xj = jnp.asarray(x if layout == "NCHW" else x.transpose(0, 2, 3, 1),
                     dtype=dtype)
    rj = jnp.asarray(rois, dtype=dtype)
    fn = jax_roi.roi_pool if op == "pool" else jax_roi.roi_align
    out, vjp = jax.vjp(lambda f: fn(f, rj, layout=layout, **kw), xj)
    (dx,) = vjp(jnp.ones_like(out))
    out, dx = np.asarray(out, np.float64), np.asarray(dx, np.float64)
    if layout == "NHWC":
        out = np.moveaxis(out, -1, -3)
        dx = dx.transpose(0, 3, 1, 2)
    return out, dx


# ---------------------------------------------------------------- detectron2
# 5x5 map holding arange(25), box (1, 1, 3, 3), 4x4 output, adaptive sampling.
# The map is linear (v = 5y + x), so each bin equals the map at its single
# sample: y = x = {1.25, 1.75, 2.25, 2.75} unaligned, 0.5 less aligned.

D2_UNALIGNED = [[7.5, 8.0, 8.5, 9.0],
                [10.0, 10.5, 11.0, 11.5],
                [12.5, 13.0, 13.5, 14.0],
                [15.0, 15.5, 16.0, 16.5]]
D2_ALIGNED = [[4.5, 5.0, 5.5, 6.0],
              [7.0, 7.5, 8.0, 8.5],
              [9.5, 10.0, 10.5, 11.0],
              [12.0, 12.5, 13.0, 13.5]]
# Per-axis sum of the bilinear weights of those samples; the 2-D gradient is
# their outer product.
D2_GRAD_AXIS_UNALIGNED = [0.0, 1.0, 2.0, 1.0, 0.0]
D2_GRAD_AXIS_ALIGNED = [0.25, 1.75, 1.75, 0.25, 0.0]


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("mode", ["avg", "max"])
def test_detectron2_arange(mode, aligned, dtype, layout):
    x = np.arange(25.0).reshape(1, 1, 5, 5)
    out, dx = _run("align", x, [[0, 1, 1, 3, 3]], layout, dtype,
                   output_size=4, spatial_scale=1.0, sampling_ratio=0,
                   aligned=aligned, mode=mode)
    # one sample per bin, so max and avg coincide
    expected = D2_ALIGNED if aligned else D2_UNALIGNED
    axis = D2_GRAD_AXIS_ALIGNED if aligned else D2_GRAD_AXIS_UNALIGNED
    np.testing.assert_allclose(out[0, 0], expected, rtol=0, atol=TOL[dtype])
    np.testing.assert_allclose(dx[0, 0], np.outer(axis, axis), rtol=0,
                               atol=TOL[dtype])


def test_detectron2_per_image_boxes():
    # the same box given as [N, L, 4] on the second of two images
    x = np.stack([np.zeros((1, 5, 5)), np.arange(25.0).reshape(1, 5, 5)])
    rois = jnp.asarray([[[0, 0, 4, 4]], [[1, 1, 3, 3]]], dtype=jnp.float32)
    out = jax_roi.roi_align(jnp.asarray(x, jnp.float32), rois, 4,
                            sampling_ratio=0, aligned=True)
    assert out.shape == (2, 1, 1, 4, 4)
    np.testing.assert_array_equal(np.asarray(out[0]), 0)
    np.testing.assert_allclose(np.asarray(out[1, 0, 0]), D2_ALIGNED, atol=1e-6)


# ---------------------------------------------------------------- mmcv
# roi_align(..., output 2x2, spatial_scale 1, sampling_ratio 2, aligned=True)

MMCV_ALIGN = [
    dict(x=[[[[1., 2.], [3., 4.]]]],
         rois=[[0., 0., 0., 1., 1.]],
         out=[[[[1.0, 1.25], [1.5, 1.75]]]],
         grad=[[[[3.0625, 0.4375], [0.4375, 0.0625]]]]),
    dict(x=[[[[1., 2.], [3., 4.]], [[4., 3.], [2., 1.]]]],
         rois=[[0., 0., 0., 1., 1.]],
         out=[[[[1.0, 1.25], [1.5, 1.75]], [[4.0, 3.75], [3.5, 3.25]]]],
         grad=[[[[3.0625, 0.4375], [0.4375, 0.0625]],
                [[3.0625, 0.4375], [0.4375, 0.0625]]]]),
    dict(x=[[[[1., 2., 5., 6.], [3., 4., 7., 8.],
              [9., 10., 13., 14.], [11., 12., 15., 16.]]]],
         rois=[[0., 0., 0., 3., 3.]],
         out=[[[[1.9375, 4.75], [7.5625, 10.375]]]],
         grad=[[[[0.47265625, 0.42968750, 0.42968750, 0.04296875],
                 [0.42968750, 0.39062500, 0.39062500, 0.03906250],
                 [0.42968750, 0.39062500, 0.39062500, 0.03906250],
                 [0.04296875, 0.03906250, 0.03906250, 0.00390625]]]]),
]

# The third map in max mode, derived by hand: samples sit at -0.125 (clamped
# to 0), 0.625, 1.375 and 2.125 on both axes; the map grows along both axes, so
# every bin's last sample wins. The gradient is those samples' bilinear
# weights, e.g. (0.375, 0.625) x (0.375, 0.625) for the first bin.
MMCV_MAP3_MAX_OUT = [[[[2.875, 6.375], [9.875, 13.375]]]]
MMCV_MAP3_MAX_GRAD = [[[[0.140625, 0.234375, 0.328125, 0.046875],
                        [0.234375, 0.390625, 0.546875, 0.078125],
                        [0.328125, 0.546875, 0.765625, 0.109375],
                        [0.046875, 0.078125, 0.109375, 0.015625]]]]


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", range(len(MMCV_ALIGN)))
def test_mmcv_roi_align(case, dtype, layout):
    c = MMCV_ALIGN[case]
    out, dx = _run("align", np.array(c["x"]), c["rois"], layout, dtype,
                   output_size=(2, 2), spatial_scale=1.0, sampling_ratio=2,
                   aligned=True, mode="avg")
    np.testing.assert_allclose(out, c["out"], rtol=0, atol=TOL[dtype])
    np.testing.assert_allclose(dx, c["grad"], rtol=0, atol=TOL[dtype])


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_mmcv_map_max_mode(dtype, layout):
    c = MMCV_ALIGN[2]
    out, dx = _run("align", np.array(c["x"]), c["rois"], layout, dtype,
                   output_size=(2, 2), spatial_scale=1.0, sampling_ratio=2,
                   aligned=True, mode="max")
    np.testing.assert_allclose(out, MMCV_MAP3_MAX_OUT, rtol=0, atol=TOL[dtype])
    np.testing.assert_allclose(dx, MMCV_MAP3_MAX_GRAD, rtol=0, atol=TOL[dtype])


# roi_pool(..., output 2x2, spatial_scale 1); the gradient is one-hot at each
# bin's maximum

MMCV_POOL = [
    dict(x=MMCV_ALIGN[0]["x"], rois=[[0., 0., 0., 1., 1.]],
         out=[[[[1., 2.], [3., 4.]]]],
         grad=[[[[1., 1.], [1., 1.]]]]),
    dict(x=MMCV_ALIGN[1]["x"], rois=[[0., 0., 0., 1., 1.]],
         out=[[[[1., 2.], [3., 4.]], [[4., 3.], [2., 1.]]]],
         grad=[[[[1., 1.], [1., 1.]], [[1., 1.], [1., 1.]]]]),
    dict(x=MMCV_ALIGN[2]["x"], rois=[[0., 0., 0., 3., 3.]],
         out=[[[[4., 8.], [12., 16.]]]],
         grad=[[[[0., 0., 0., 0.], [0., 1., 0., 1.],
                 [0., 0., 0., 0.], [0., 1., 0., 1.]]]]),
]


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", range(len(MMCV_POOL)))
def test_mmcv_roi_pool(case, dtype, layout):
    c = MMCV_POOL[case]
    out, dx = _run("pool", np.array(c["x"]), c["rois"], layout, dtype,
                   output_size=(2, 2), spatial_scale=1.0)
    np.testing.assert_array_equal(out, c["out"])
    np.testing.assert_array_equal(dx, c["grad"])


def test_roi_pool_gradient_accumulates_at_shared_argmax():
    # two bins of overlapping boxes share the maximum at (1, 1): its gradient
    # is the sum of their cotangents, every other pixel gets none
    x = jnp.asarray([[[[0., 1., 0.], [2., 9., 3.], [0., 4., 0.]]]])
    rois = jnp.asarray([[0, 0, 0, 1, 1], [0, 1, 1, 2, 2]], dtype=jnp.float32)
    out, vjp = jax.vjp(lambda f: jax_roi.roi_pool(f, rois, 1), x)
    np.testing.assert_array_equal(np.asarray(out).ravel(), [9., 9.])
    (dx,) = vjp(jnp.asarray([2., 5.]).reshape(2, 1, 1, 1))
    expected = np.zeros((1, 1, 3, 3))
    expected[0, 0, 1, 1] = 7.0
    np.testing.assert_array_equal(np.asarray(dx), expected)
