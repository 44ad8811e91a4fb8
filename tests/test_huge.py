"""Past 32-bit indexing: an output with more than 2**31 elements and features
with more than 2**31 elements (bfloat16, about 4.3 GB each) give the right
values at their far ends, forward and backward, in both layouts.

Each case needs up to about 18 GB of memory and a minute; CI runs them. Set
JAX_ROI_SKIP_HUGE=1 to skip them in a quick local run (pytest -ra shows it).
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_roi

pytestmark = pytest.mark.skipif(
    os.environ.get("JAX_ROI_SKIP_HUGE") == "1",
    reason="JAX_ROI_SKIP_HUGE=1: the >2**31-element cases (about 18 GB each) were skipped")

LIMIT = 2**31
BF16 = jnp.bfloat16


def small_features(layout, c):
    """A 5 x 6 map whose every value differs, bfloat16."""
    x = (np.arange(5 * 6 * c).reshape(5, 6, c) % 251 - 125.0) / 16
    x = x[None] if layout == "NHWC" else x.transpose(2, 0, 1)[None]
    return jnp.asarray(x, BF16)


def f32(a):
    return np.asarray(a, np.float32)


@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
def test_output_past_2_31_elements(layout):
    c, size, k = 1024, 46, 1016
    assert k * c * size * size > LIMIT
    x = small_features(layout, c)
    # boxes that differ per ROI, so a read of the wrong ROI's block shows
    t = np.arange(k) / k
    rois = np.stack([np.zeros(k), 0.2 + t, 0.3 + 2 * t, 3.9 + t, 2.8 + t], axis=1)
    rois = jnp.asarray(rois, jnp.float32)
    op = lambda f, r: jax_roi.roi_align(f, r, size, 1.0, 1, True, layout=layout)
    out = jax.jit(op)(x, rois)
    assert out.size > LIMIT
    for i in (0, k - 1):  # the far end sits past element 2**31
        np.testing.assert_array_equal(f32(out[i]), f32(op(x, rois[i:i + 1])[0]))
    del out
    # backward: a cotangent that is nonzero only on the last ROI
    weight = jnp.asarray(np.random.default_rng(0).standard_normal(op(x, rois[:1]).shape[1:]),
                         jnp.float32)
    last = jnp.arange(k) == k - 1
    loss = lambda f: jnp.sum(jnp.where(last.reshape((k,) + (1,) * weight.ndim),
                                       op(f, rois).astype(jnp.float32) * weight, 0))
    grad = jax.jit(jax.grad(loss))(x)
    want = jax.grad(lambda f: jnp.sum(op(f, rois[-1:]).astype(jnp.float32) * weight))(x)
    np.testing.assert_allclose(f32(grad), f32(want), rtol=1e-2, atol=1e-2)
    assert np.any(f32(want) != 0)


@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
def test_features_past_2_31_elements(layout):
    h, w, c = 1024, 1024, 2049
    assert h * w * c > LIMIT
    shape = (1, h, w, c) if layout == "NHWC" else (1, c, h, w)
    corner = small_features(layout, c)  # placed at the far corner of the map
    if layout == "NHWC":
        put = lambda big: big.at[:, h - 5:, w - 6:, :].set(corner)
    else:
        put = lambda big: big.at[:, :, h - 5:, w - 6:].set(corner)
    x = jax.jit(lambda: put(jnp.zeros(shape, BF16)))()
    # the same box on the big map (at its far corner) and on the small one
    box = np.array([0.5, 0.7, 4.6, 3.9])
    big_rois = jnp.asarray([[0, *(box + [w - 6, h - 5, w - 6, h - 5])]], jnp.float32)
    small_rois = jnp.asarray([[0, *box]], jnp.float32)
    for mode in ("avg", "max"):
        op = lambda f, r: jax_roi.roi_align(f, r, 3, 1.0, 2, True, mode=mode, layout=layout)
        # sample positions near 1000 carry fewer fraction bits than near 0
        np.testing.assert_allclose(f32(jax.jit(op)(x, big_rois)), f32(op(corner, small_rois)),
                                   rtol=1e-2, atol=1e-3)
    op = lambda f, r: jax_roi.roi_pool(f, r, 3, 1.0, layout=layout)
    np.testing.assert_array_equal(f32(jax.jit(op)(x, big_rois)), f32(op(corner, small_rois)))
    # backward: the gradient lands at the far corner, as on the small map
    op = lambda f, r: jax_roi.roi_align(f, r, 3, 1.0, 2, True, layout=layout)
    grad = jax.jit(jax.grad(lambda f: jnp.sum(op(f, big_rois).astype(jnp.float32) ** 2)))(x)
    want = jax.grad(lambda f: jnp.sum(op(f, small_rois).astype(jnp.float32) ** 2))(corner)
    far = grad[:, h - 5:, w - 6:, :] if layout == "NHWC" else grad[:, :, h - 5:, w - 6:]
    # bfloat16 outputs (in the cotangent 2 * out) and gradients may round to a neighbour
    np.testing.assert_allclose(f32(far), f32(want), rtol=3e-2, atol=1e-3)
    total = jax.jit(lambda g: jnp.sum(jnp.abs(g.astype(jnp.float32))))(grad)
    assert float(total) == pytest.approx(float(np.abs(f32(want)).sum()), rel=1e-3)
