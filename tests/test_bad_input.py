"""Every row of the bad-input table: bad data gives zeros (never a crash or
an out-of-buffer read), bad arguments raise at trace time naming the argument."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_roi

# bad data through the kernels and through the pure-JAX implementation alike
pytestmark = pytest.mark.usefixtures("both_implementations")

OPS = {
    "align_avg": lambda f, r, **kw: jax_roi.roi_align(f, r, 2, 1.0, -1, False, **kw),
    "align_avg_aligned": lambda f, r, **kw: jax_roi.roi_align(f, r, 2, 1.0, 2, True, **kw),
    "align_max": lambda f, r, **kw: jax_roi.roi_align(f, r, 2, 1.0, -1, False, mode="max", **kw),
    "pool": lambda f, r, **kw: jax_roi.roi_pool(f, r, 2, 1.0, **kw),
}


def features(n=2, c=3, h=5, w=5, dtype=jnp.float64):
    return jnp.asarray(np.random.default_rng(0).uniform(0.5, 1.5, (n, c, h, w)), dtype)


GOOD = [0.0, 0.5, 0.5, 3.5, 3.0]


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("bad_row", [
    [-1.0, 0.5, 0.5, 3.5, 3.0],        # negative batch index
    [2.0, 0.5, 0.5, 3.5, 3.0],         # batch index == N
    [1e9, 0.5, 0.5, 3.5, 3.0],         # far out of range
    [np.nan, 0.5, 0.5, 3.5, 3.0],      # NaN batch index
    [np.inf, 0.5, 0.5, 3.5, 3.0],      # infinite batch index
    [0.0, np.nan, 0.5, 3.5, 3.0],      # NaN coordinate
    [0.0, 0.5, 0.5, np.inf, 3.0],      # infinite coordinate
    [1.0, 0.5, -np.inf, 3.5, 3.0],
], ids=["neg", "eq_n", "huge", "nan_b", "inf_b", "nan_x1", "inf_x2", "ninf_y1"])
def test_bad_roi_gives_zero_and_no_gradient(op, bad_row):
    x = features()
    rois = jnp.asarray([GOOD, bad_row, GOOD])
    fn = OPS[op]
    out = fn(x, rois)
    assert np.all(np.asarray(out[1]) == 0)
    np.testing.assert_array_equal(out[0], out[2])
    assert np.any(np.asarray(out[0]))
    grad_all = jax.grad(lambda f: jnp.sum(fn(f, rois)))(x)
    grad_good = jax.grad(lambda f: jnp.sum(fn(f, rois[::2])))(x)
    np.testing.assert_array_equal(grad_all, grad_good)


@pytest.mark.parametrize("op", OPS)
def test_bad_box_in_per_image_format(op):
    x = features()
    boxes = jnp.asarray([[GOOD[1:], [np.nan, 0, 1, 1]], [[0, 0, np.inf, 2], GOOD[1:]]])
    out = OPS[op](x, boxes)
    assert out.shape[:2] == (2, 2)
    assert not np.any(np.asarray(out[0, 1])) and not np.any(np.asarray(out[1, 0]))
    assert np.any(np.asarray(out[0, 0])) and np.any(np.asarray(out[1, 1]))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_huge_box_is_bounded_and_follows_the_formula(dtype):
    # A 1e30 box would need ~1e59 samples per bin; only the map's worth are
    # visited. On arange(25): roi_pool's and roi_align max's first bin covers
    # the whole map (max 24), the others start beyond it (0).
    x = jnp.arange(25, dtype=dtype).reshape(1, 1, 5, 5)
    rois = jnp.asarray([[0, 0, 0, 1e30, 1e30]], dtype)
    expected_max = np.array([[24, 0], [0, 0]])
    np.testing.assert_array_equal(jax_roi.roi_pool(x, rois, 2)[0, 0], expected_max)
    np.testing.assert_array_equal(jax_roi.roi_align(x, rois, 2, mode="max")[0, 0], expected_max)
    # avg divides the few in-map samples by an astronomic count.
    avg = np.asarray(jax_roi.roi_align(x, rois, 2)[0, 0], np.float64)
    assert np.all(np.isfinite(avg)) and np.all(np.abs(avg) < 1e-40)
    grad = jax.grad(lambda f: jnp.sum(jax_roi.roi_align(f, rois, 2, mode="max")))(x)
    assert float(grad[0, 0, 4, 4]) == 1.0 and float(jnp.sum(grad)) == 1.0


def test_huge_negative_box_reads_zero():
    x = jnp.ones((1, 1, 5, 5))
    rois = jnp.asarray([[0, -1e30, -1e30, -1e29, -1e29]])
    for fn in OPS.values():
        assert not np.any(np.asarray(fn(x, rois)))


def test_inverted_boxes_follow_the_formulas():
    x = features(n=1, h=8, w=8)
    inverted = jnp.asarray([[0, 5.0, 6.0, 2.0, 1.0]])
    # roi_pool and non-aligned roi_align clamp the size to one pixel.
    np.testing.assert_allclose(jax_roi.roi_pool(x, inverted, 2),
                               jax_roi.roi_pool(x, jnp.asarray([[0, 5.0, 6.0, 5.0, 6.0]]), 2))
    np.testing.assert_allclose(jax_roi.roi_align(x, inverted, 2),
                               jax_roi.roi_align(x, jnp.asarray([[0, 5.0, 6.0, 6.0, 7.0]]), 2))
    # aligned with the adaptive grid has no samples: zeros.
    assert not np.any(np.asarray(jax_roi.roi_align(x, inverted, 2, aligned=True)))
    assert not np.any(np.asarray(jax_roi.roi_align(x, inverted, 2, aligned=True, mode="max")))


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("n,c,h,w,k", [
    (2, 3, 5, 5, 0), (0, 3, 5, 5, 2), (2, 0, 5, 5, 2), (2, 3, 0, 5, 2), (2, 3, 5, 0, 2)])
def test_empty_sizes(op, layout, n, c, h, w, k):
    shape = (n, c, h, w) if layout == "NCHW" else (n, h, w, c)
    x = jnp.ones(shape)
    rois = jnp.asarray(np.tile([[0, 0.5, 0.5, 3.0, 3.0]], (k, 1)).reshape(k, 5))
    out = OPS[op](x, rois, layout=layout)
    assert out.shape == ((k, c, 2, 2) if layout == "NCHW" else (k, 2, 2, c))
    assert not np.any(np.asarray(out))  # no image, channel or pixel to read
    grad = jax.grad(lambda f: jnp.sum(OPS[op](f, rois, layout=layout)))(x)
    assert grad.shape == shape and not np.any(np.asarray(grad))


@pytest.mark.parametrize("op", OPS)
def test_empty_per_image_boxes(op):
    x = features()
    out = OPS[op](x, jnp.zeros((2, 0, 4)))
    assert out.shape == (2, 0, 3, 2, 2)


# ----------------------------------------------------------- argument errors

def roi_align(**overrides):
    args = dict(features=features(), rois=jnp.asarray([GOOD]), output_size=2)
    args.update(overrides)
    return jax_roi.roi_align(**args)


def roi_pool(**overrides):
    args = dict(features=features(), rois=jnp.asarray([GOOD]), output_size=2)
    args.update(overrides)
    return jax_roi.roi_pool(**args)


@pytest.mark.parametrize("call", [roi_align, roi_pool])
@pytest.mark.parametrize("overrides,error,match", [
    (dict(features=jnp.ones((2, 3, 5))), ValueError, "features must have rank 4"),
    (dict(features=jnp.ones((1, 2, 3, 4, 5))), ValueError, "features must have rank 4"),
    (dict(features=jnp.ones((2, 3, 5, 5), jnp.int32)), TypeError, "features must have dtype"),
    (dict(rois=jnp.ones((3, 4))), ValueError, r"rois must have shape \[K, 5\]"),
    (dict(rois=jnp.ones((5,))), ValueError, r"rois must have shape \[K, 5\]"),
    (dict(rois=jnp.ones((2, 3, 5))), ValueError, r"rois must have shape"),
    (dict(rois=jnp.ones((3, 2, 4))), ValueError, r"rois of shape \[N, L, 4\] need N"),
    (dict(rois=jnp.ones((3, 5), jnp.int32)), TypeError, "rois must have a floating dtype"),
    (dict(output_size=0), ValueError, "output_size must be positive"),
    (dict(output_size=(2, -1)), ValueError, "output_size must be positive"),
    (dict(output_size=(2, 2, 2)), TypeError, "output_size must be an int or a pair"),
    (dict(output_size=2.5), TypeError, "output_size must be an int or a pair"),
    (dict(spatial_scale=0.0), ValueError, "spatial_scale must be finite and > 0"),
    (dict(spatial_scale=-0.25), ValueError, "spatial_scale must be finite and > 0"),
    (dict(spatial_scale=float("nan")), ValueError, "spatial_scale must be finite and > 0"),
    (dict(spatial_scale=float("inf")), ValueError, "spatial_scale must be finite and > 0"),
    (dict(spatial_scale="1/16"), TypeError, "spatial_scale must be a Python float"),
    (dict(layout="nhwc"), ValueError, "layout must be one of 'NCHW', 'NHWC'"),
])
def test_argument_errors(call, overrides, error, match):
    with pytest.raises(error, match=match):
        call(**overrides)


@pytest.mark.parametrize("overrides,error,match", [
    (dict(mode="mean"), ValueError, "mode must be one of 'avg', 'max'"),
    (dict(sampling_ratio=1.5), TypeError, "sampling_ratio must be an int"),
    (dict(sampling_ratio=10**6), ValueError, "sampling_ratio must be below"),
    (dict(aligned="yes"), TypeError, "aligned must be a bool"),
])
def test_roi_align_argument_errors(overrides, error, match):
    with pytest.raises(error, match=match):
        roi_align(**overrides)


def test_traced_spatial_scale_is_refused():
    with pytest.raises(TypeError, match="spatial_scale must be a Python float"):
        jax.jit(lambda s: roi_align(spatial_scale=s))(0.5)


def test_errors_raise_at_trace_time():
    traced = jax.jit(lambda f, r: jax_roi.roi_align(f, r, 2))
    with pytest.raises(ValueError, match="rois must have shape"):
        traced.lower(features(), jnp.ones((3, 4)))
