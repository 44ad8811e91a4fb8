"""jit, vmap and grad of the public ops: one custom call per vmapped call,
values equal to a loop of single calls, gradients checked numerically."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jax_roi

OPS = [
    ("align_avg", lambda f, r, layout: jax_roi.roi_align(
        f, r, (3, 2), 0.5, 2, True, layout=layout)),
    ("align_avg_adaptive", lambda f, r, layout: jax_roi.roi_align(
        f, r, 2, 0.5, -1, False, layout=layout)),
    ("align_max", lambda f, r, layout: jax_roi.roi_align(
        f, r, (2, 3), 0.5, 2, True, mode="max", layout=layout)),
    ("pool", lambda f, r, layout: jax_roi.roi_pool(f, r, (2, 3), 0.5, layout=layout)),
]
OP_IDS = [name for name, _ in OPS]
OP_FNS = [fn for _, fn in OPS]
LAYOUTS = ["NCHW", "NHWC"]


def make_features(rng, n, c, h, w, layout, dtype=np.float64):
    x = rng.standard_normal((n, c, h, w))
    if layout == "NHWC":
        x = x.transpose(0, 2, 3, 1)
    return jnp.asarray(x, dtype)


def make_boxes(rng, shape, h, w, scale=0.5):
    x1 = rng.uniform(-2, w / scale, shape)
    y1 = rng.uniform(-2, h / scale, shape)
    bw = rng.uniform(0.5, w / scale, shape)
    bh = rng.uniform(0.5, h / scale, shape)
    return np.stack([x1, y1, x1 + bw, y1 + bh], axis=-1)


def make_rois(rng, k, n, h, w):
    batch = rng.integers(0, n, (k, 1)).astype(np.float64)
    return jnp.asarray(np.concatenate([batch, make_boxes(rng, (k,), h, w)], axis=1))


def count_forward_calls(jaxpr):
    """Forward custom calls in a jaxpr and its sub-jaxprs, and whether any loop."""
    calls, loops = 0, 0
    for eqn in jaxpr.eqns:
        calls += eqn.primitive.name == "roi_forward"
        loops += eqn.primitive.name in ("while", "scan")
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            c, l = count_forward_calls(sub)
            calls, loops = calls + c, loops + l
    return calls, loops


def assert_single_call(fn, *args):
    calls, loops = count_forward_calls(jax.make_jaxpr(fn)(*args).jaxpr)
    assert (calls, loops) == (1, 0)
    hlo = jax.jit(fn).lower(*args).as_text()
    assert hlo.count("stablehlo.custom_call @jax_roi_") == 1
    assert "stablehlo.while" not in hlo


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("fn", OP_FNS, ids=OP_IDS)
@pytest.mark.parametrize("axis", [0, 2, -1])
def test_vmap_features_k5(fn, layout, axis):
    rng = np.random.default_rng(0)
    maps = make_features(rng, 3 * 2, 3, 6, 7, layout).reshape((3, 2) + (
        (3, 6, 7) if layout == "NCHW" else (6, 7, 3)))
    rois = make_rois(rng, 5, 2, 6, 7)
    moved = jnp.moveaxis(maps, 0, axis)
    batched = jax.vmap(lambda f: fn(f, rois, layout), in_axes=axis)
    expected = jnp.stack([fn(m, rois, layout) for m in maps])
    np.testing.assert_allclose(batched(moved), expected, rtol=1e-12, atol=1e-12)
    assert_single_call(batched, moved)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("fn", OP_FNS, ids=OP_IDS)
def test_vmap_rois_only(fn, layout):
    rng = np.random.default_rng(1)
    features = make_features(rng, 2, 3, 6, 7, layout)
    rois = jnp.stack([make_rois(rng, 4, 2, 6, 7) for _ in range(3)], axis=1)  # [4, B=3, 5]
    boxes = jnp.asarray(make_boxes(rng, (3, 2, 4), 6, 7))  # [B, N, L, 4]
    for batch, axis in ((rois, 1), (boxes, 0)):
        batched = jax.vmap(lambda r: fn(features, r, layout), in_axes=axis)
        expected = jnp.stack([fn(features, r, layout) for r in jnp.moveaxis(batch, axis, 0)])
        np.testing.assert_allclose(batched(batch), expected, rtol=1e-12, atol=1e-12)
        assert_single_call(batched, batch)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("fn", OP_FNS, ids=OP_IDS)
def test_vmap_both_and_nested(fn, layout):
    rng = np.random.default_rng(2)
    shape = (3, 6, 7) if layout == "NCHW" else (6, 7, 3)
    maps = make_features(rng, 2 * 3 * 2, 3, 6, 7, layout).reshape((2, 3, 2) + shape)
    boxes = jnp.asarray(make_boxes(rng, (2, 3, 2, 4), 6, 7))  # [B1, B2, N, L=4, 4]... L=4
    rois = jnp.stack([jnp.stack([make_rois(rng, 4, 2, 6, 7) for _ in range(3)])
                      for _ in range(2)])  # [B1, B2, K, 5]
    inner = jax.vmap(lambda f, r: fn(f, r, layout), in_axes=(0, 0))
    nested = jax.vmap(inner, in_axes=(0, 0))
    for batch in (rois, boxes):
        expected = jnp.stack([jnp.stack([fn(maps[i, j], batch[i, j], layout) for j in range(3)])
                              for i in range(2)])
        np.testing.assert_allclose(nested(maps, batch), expected, rtol=1e-12, atol=1e-12)
        assert_single_call(nested, maps, batch)


@pytest.mark.parametrize("fn", OP_FNS, ids=OP_IDS)
def test_vmap_keeps_invalid_batch_index_invalid(fn):
    # Folding maps into the image axis must not let index 1 of a one-image
    # map read the next map's image.
    rng = np.random.default_rng(3)
    maps = make_features(rng, 2, 2, 6, 7, "NCHW").reshape(2, 1, 2, 6, 7)
    rois = jnp.asarray([[1.0, 0, 0, 8, 8], [-1.0, 0, 0, 8, 8], [0.0, 0, 0, 8, 8]])
    out = jax.vmap(lambda f: fn(f, rois, "NCHW"))(maps)
    assert not np.any(np.asarray(out[:, :2]))
    assert np.any(np.asarray(out[:, 2]))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("fn", OP_FNS, ids=OP_IDS)
def test_vmap_of_grad_equals_loop(fn, layout):
    rng = np.random.default_rng(4)
    shape = (3, 6, 7) if layout == "NCHW" else (6, 7, 3)
    maps = make_features(rng, 3 * 2, 3, 6, 7, layout).reshape((3, 2) + shape)
    rois = jnp.stack([make_rois(rng, 5, 2, 6, 7) for _ in range(3)])
    loss = lambda f, r: jnp.sum(fn(f, r, layout) ** 2)
    batched = jax.vmap(jax.grad(loss))(maps, rois)
    expected = jnp.stack([jax.grad(loss)(maps[i], rois[i]) for i in range(3)])
    np.testing.assert_allclose(batched, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("fn", OP_FNS, ids=OP_IDS)
@pytest.mark.parametrize("roi_format", ["k5", "nl4"])
def test_check_grads_first_order(fn, layout, roi_format):
    rng = np.random.default_rng(5)
    features = make_features(rng, 2, 2, 6, 7, layout)
    rois = (make_rois(rng, 4, 2, 6, 7) if roi_format == "k5"
            else jnp.asarray(make_boxes(rng, (2, 3), 6, 7)))
    check_grads(lambda f: fn(f, rois, layout), (features,), order=1, modes=["rev"],
                atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_check_grads_second_order_align_avg(layout):
    rng = np.random.default_rng(6)
    features = make_features(rng, 2, 2, 6, 7, layout)
    rois = make_rois(rng, 4, 2, 6, 7)
    check_grads(lambda f: OP_FNS[0](f, rois, layout), (features,), order=2, modes=["rev"],
                atol=1e-6, rtol=1e-6)


def test_rois_cotangent_is_zero_only_where_boxes_are_rounded():
    rng = np.random.default_rng(8)
    features = make_features(rng, 2, 2, 6, 7, "NCHW")
    rois = make_rois(rng, 3, 2, 6, 7)
    for name, fn in OPS:
        grad = np.asarray(jax.grad(lambda r: jnp.sum(fn(features, r, "NCHW") ** 2))(rois))
        assert grad.shape == rois.shape
        assert not np.any(grad[:, 0])  # the batch index
        if name == "pool":
            assert not np.any(grad)
        else:
            assert np.any(grad[:, 1:]), name


@pytest.mark.parametrize("fn", OP_FNS[:3], ids=OP_IDS[:3])
def test_box_gradient_is_bitwise_deterministic(fn):
    rng = np.random.default_rng(11)
    features = make_features(rng, 2, 64, 24, 24, "NHWC", np.float32)
    rois = make_rois(rng, 300, 2, 24, 24).astype(jnp.float32)
    grad = jax.jit(jax.grad(lambda r: jnp.sum(fn(features, r, "NHWC") * 1.37)))
    first = np.asarray(grad(rois))
    assert np.any(first)
    for _ in range(3):
        assert np.array_equal(np.asarray(grad(rois)), first)


@pytest.mark.parametrize("fn", OP_FNS, ids=OP_IDS)
def test_backward_is_bitwise_deterministic(fn):
    rng = np.random.default_rng(9)
    features = make_features(rng, 2, 64, 24, 24, "NHWC", np.float32)
    rois = make_rois(rng, 300, 2, 24, 24).astype(jnp.float32)
    grad = jax.jit(jax.grad(lambda f: jnp.sum(fn(f, rois, "NHWC") * 1.37)))
    first = np.asarray(grad(features))
    for _ in range(3):
        assert np.array_equal(np.asarray(grad(features)), first)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.float32])
def test_gradient_has_feature_dtype(dtype):
    rng = np.random.default_rng(10)
    features = make_features(rng, 1, 2, 5, 5, "NCHW", dtype)
    rois = make_rois(rng, 3, 1, 5, 5)
    for fn in OP_FNS:
        grad = jax.grad(lambda f: jnp.sum(fn(f, rois, "NCHW").astype(jnp.float32)))(features)
        assert grad.dtype == dtype and grad.shape == features.shape


def test_jit_does_not_recompile_for_same_static_arguments():
    traces = []

    @jax.jit
    def pooled(features, rois):
        traces.append(1)
        return (jax_roi.roi_align(features, rois, 7, 0.25, 2, True)
                + 0 * jnp.sum(jax_roi.roi_pool(features, rois, 7, 0.25)))

    rng = np.random.default_rng(11)
    for _ in range(3):
        pooled(make_features(rng, 1, 2, 8, 8, "NCHW"), make_rois(rng, 4, 1, 8, 8))
    assert len(traces) == 1

    static = jax.jit(jax_roi.roi_align, static_argnums=(2, 3, 4, 5),
                     static_argnames=("mode", "layout"))
    for _ in range(3):
        static(make_features(rng, 1, 2, 8, 8, "NCHW"), make_rois(rng, 4, 1, 8, 8), 7, 0.25, 2,
               True, mode="max")
    assert static._cache_size() == 1


def kernel_targets(compiled_text):
    return sorted(set(t for t in compiled_text.split('custom_call_target="')[1:]
                      for t in [t.split('"')[0]] if t.startswith("jax_roi_")))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("op,fn", OPS[2:], ids=OP_IDS[2:])
def test_max_modes_write_winners_only_when_differentiated(op, fn, layout):
    """Inference runs the max ops' kernel without winners: one result, no
    argmax buffer, the same values; a gradient runs the kernel with them."""
    rng = np.random.default_rng(12)
    features = make_features(rng, 2, 21, 9, 11, layout, np.float32)
    rois = make_rois(rng, 40, 2, 9, 11).astype(jnp.float32)
    rois = rois.at[3, 0].set(-1.0).at[5, 1].set(jnp.nan)  # invalid ROIs give zeros
    forward = jax.jit(lambda f: fn(f, rois, layout)).lower(features).compile()
    assert kernel_targets(forward.as_text()) == [jax_roi._ffi.target(op + "_values_forward")]
    assert forward.memory_analysis().temp_size_in_bytes < 4 * rois.size

    grad = jax.jit(jax.grad(lambda f: jnp.sum(fn(f, rois, layout) ** 2)))
    assert kernel_targets(grad.lower(features).compile().as_text()) == sorted(
        jax_roi._ffi.target(op + kind) for kind in ("_backward", "_forward"))

    with_winners = jax.jvp(lambda f: fn(f, rois, layout), (features,), (features,))[0]
    values = jax.jit(lambda f: fn(f, rois, layout))(features)
    np.testing.assert_array_equal(values, with_winners)
    assert np.all(np.asarray(values)[[3, 5]] == 0) and np.any(np.asarray(values) != 0)
    grads = grad(features)
    assert np.isfinite(np.asarray(grads)).all() and np.any(np.asarray(grads) != 0)
