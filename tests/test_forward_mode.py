"""Forward mode and higher derivatives with respect to the features, for
every op, mode and layout, through the kernels and the pure-JAX
implementation alike: jvp against central finite differences in float64,
jacfwd against jacrev, linearize, hessian and grad of grad."""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jax_roi
from op_cases import sweep

OPS = {
    "align_avg": lambda f, r, layout, impl: jax_roi.roi_align(
        f, r, (3, 2), 0.5, 2, True, layout=layout, implementation=impl),
    "align_avg_adaptive": lambda f, r, layout, impl: jax_roi.roi_align(
        f, r, 2, 0.5, -1, False, layout=layout, implementation=impl),
    "align_max": lambda f, r, layout, impl: jax_roi.roi_align(
        f, r, (2, 3), 0.5, 2, True, mode="max", layout=layout, implementation=impl),
    "pool": lambda f, r, layout, impl: jax_roi.roi_pool(
        f, r, (2, 3), 0.5, layout=layout, implementation=impl),
}
LAYOUTS = ["NCHW", "NHWC"]
IMPLEMENTATIONS = [None, "xla"]
# Every op in both layouts on the kernels; on pure JAX every op in one layout,
# alternating: its layouts differ by a transpose, and its compiles took most
# of this module's time.
OP_LAYOUT_SWEEP = sweep("op,layout", list(itertools.product(sorted(OPS), LAYOUTS)),
                        [(op, LAYOUTS[i % 2]) for i, op in enumerate(sorted(OPS))])


def problem(seed, layout, n=2, c=3, h=6, w=7, k=4):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, w))
    if layout == "NHWC":
        x = x.transpose(0, 2, 3, 1)
    x1, y1 = rng.uniform(-2, 2 * w, k), rng.uniform(-2, 2 * h, k)
    rois = np.stack([rng.integers(0, n, k), x1, y1, x1 + rng.uniform(1, 2 * w, k),
                     y1 + rng.uniform(1, 2 * h, k)], axis=1)
    return jnp.asarray(x), jnp.asarray(rois), jnp.asarray(rng.standard_normal(x.shape))


def central_difference(fn, x, t, eps=1e-6):
    return (fn(x + eps * t) - fn(x - eps * t)) / (2 * eps)


@OP_LAYOUT_SWEEP
def test_jvp_is_the_finite_difference(op, layout, implementation):
    x, rois, t = problem(1, layout)
    fn = lambda f: OPS[op](f, rois, layout, implementation)
    out, tangent = jax.jvp(fn, (x,), (t,))
    np.testing.assert_allclose(out, fn(x), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(tangent, central_difference(fn, x, t), rtol=1e-6, atol=1e-8)
    assert np.any(np.asarray(tangent) != 0)
    # linearize: the same linear map, evaluated again without the forward
    out_lin, linear = jax.linearize(fn, x)
    np.testing.assert_allclose(linear(t), tangent, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(linear(2 * t), 2 * tangent, rtol=1e-12, atol=1e-12)


@OP_LAYOUT_SWEEP
def test_jacfwd_equals_jacrev(op, layout, implementation):
    x, rois, _ = problem(2, layout, n=1, c=2, h=4, w=5, k=2)
    fn = lambda f: OPS[op](f, rois, layout, implementation)
    forward, reverse = jax.jacfwd(fn)(x), jax.jacrev(fn)(x)
    np.testing.assert_allclose(forward, reverse, rtol=1e-12, atol=1e-12)
    assert np.any(np.asarray(forward) != 0)


@OP_LAYOUT_SWEEP
def test_hessian_of_a_quadratic_loss_is_twice_j_transpose_j(op, layout, implementation):
    # every op is linear in the features wherever its winners stay put, so
    # the loss sum(out**2) has the Hessian 2 J^T J there
    x, rois, _ = problem(3, layout, n=1, c=2, h=4, w=5, k=2)
    fn = lambda f: OPS[op](f, rois, layout, implementation)
    jac = np.asarray(jax.jacrev(fn)(x)).reshape(-1, x.size)
    hessian = np.asarray(jax.hessian(lambda f: jnp.sum(fn(f) ** 2))(x)).reshape(x.size, x.size)
    np.testing.assert_allclose(hessian, 2 * jac.T @ jac, rtol=1e-10, atol=1e-10)
    assert np.any(hessian != 0)


@OP_LAYOUT_SWEEP
def test_check_grads_second_order_both_modes(op, layout, implementation):
    x, rois, _ = problem(4, layout)
    fn = lambda f: jnp.sum(jnp.sin(OPS[op](f, rois, layout, implementation)))
    check_grads(fn, (x,), order=2, modes=["fwd", "rev"], atol=1e-5, rtol=1e-5)
    # grad of grad, by hand: a Hessian-vector product both ways
    _, _, v = problem(5, layout)
    reverse = jax.grad(lambda f: jnp.vdot(jax.grad(fn)(f), v))(x)
    forward = jax.jvp(jax.grad(fn), (x,), (v,))[1]
    np.testing.assert_allclose(reverse, forward, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS, ids=["kernel", "pure_jax"])
@pytest.mark.parametrize("op", sorted(OPS))
def test_vmapped_jvp_is_one_call_and_equals_a_loop(op, implementation):
    x, rois, _ = problem(6, "NHWC")
    tangents = jnp.stack([problem(7 + i, "NHWC")[2] for i in range(3)])
    fn = lambda f: OPS[op](f, rois, "NHWC", implementation)
    batched = jax.vmap(lambda t: jax.jvp(fn, (x,), (t,))[1])(tangents)
    for i in range(3):
        np.testing.assert_allclose(batched[i], jax.jvp(fn, (x,), (tangents[i],))[1],
                                   rtol=1e-12, atol=1e-12)
    # per-image boxes mapped with the tangent: the winners fold like the boxes
    boxes = jnp.stack([rois[:, 1:].reshape(2, 2, 4)] * 3) + jnp.arange(3.0)[:, None, None, None]
    jvp_one = lambda b, t: jax.jvp(lambda f: OPS[op](f, b, "NHWC", implementation),
                                   (x,), (t,))[1]
    batched = jax.vmap(jvp_one)(boxes, tangents)
    for i in range(3):
        np.testing.assert_allclose(batched[i], jvp_one(boxes[i], tangents[i]),
                                   rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS, ids=["kernel", "pure_jax"])
@pytest.mark.parametrize("mode", ["avg", "max"])
def test_pyramid_forward_mode(mode, implementation):
    rng = np.random.default_rng(8)
    maps = [jnp.asarray(rng.standard_normal((2, 32 // 2**i, 40 // 2**i, 3))) for i in range(3)]
    tangents = [jnp.asarray(rng.standard_normal(m.shape)) for m in maps]
    x1, y1 = rng.uniform(0, 60, (2, 2, 5))
    sizes = np.array([4.0, 12.0, 40.0, 80.0, 150.0])
    boxes = jnp.asarray(np.stack([x1, y1, x1 + sizes, y1 + sizes], axis=-1))
    fn = functools.partial(jax_roi.multi_scale_roi_align, boxes=boxes, output_size=2,
                           scales=(1 / 2, 1 / 4, 1 / 8), sampling_ratio=2,
                           canonical_scale=32, mode=mode, layout="NHWC",
                           implementation=implementation)
    out, tangent = jax.jvp(lambda fs: fn(fs), (maps,), (tangents,))
    eps = 1e-6
    plus = fn([m + eps * t for m, t in zip(maps, tangents)])
    minus = fn([m - eps * t for m, t in zip(maps, tangents)])
    np.testing.assert_allclose(tangent, (plus - minus) / (2 * eps), rtol=1e-6, atol=1e-8)
    assert len(set(np.asarray(jax_roi.level_indices(boxes, (1 / 2, 1 / 4, 1 / 8),
                                                     canonical_scale=32)).ravel())) == 3
    forward = jax.jacfwd(lambda m: fn([m, maps[1], maps[2]]))(maps[0])
    reverse = jax.jacrev(lambda m: fn([m, maps[1], maps[2]]))(maps[0])
    np.testing.assert_allclose(forward, reverse, rtol=1e-12, atol=1e-12)
