"""Results and gradients of 8 MB or more, which the CPU kernels stream to
memory past the cache (lib/cpu/stream_store.h: NCHW results and roi_align's
NHWC ones), equal those of the pure-JAX implementation; the smaller ones of
the other tests take the plain stores. float32 and bfloat16, both layouts."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_roi

STREAMED_BYTES = 8 << 20
# 60 channels (a last tile of 12) and a 191 x 190 plane start runs of
# results and of gradient planes off 16-byte boundaries. Features 8.7 MB in
# float32 (the gradient is float32 for bfloat16 too), output 8.5 MB in
# bfloat16.
C, H, W, K = 60, 191, 190, 1440
OPS = {
    "roi_align": partial(jax_roi.roi_align, output_size=7, spatial_scale=0.5, sampling_ratio=2,
                         aligned=True),
    "roi_align_rotated": partial(jax_roi.roi_align_rotated, output_size=7, spatial_scale=0.5,
                                 sampling_ratio=2),
    "roi_pool": partial(jax_roi.roi_pool, output_size=7, spatial_scale=0.5),
}


def inputs(op, dtype, layout):
    rng = np.random.default_rng(7)
    features = rng.standard_normal((1, C, H, W))
    if layout == "NHWC":
        features = features.transpose(0, 2, 3, 1)
    features = jnp.asarray(features, dtype)
    x0, y0 = rng.uniform(-20, 2 * W, K), rng.uniform(-20, 2 * H, K)
    w, h = rng.uniform(4, 150, K), rng.uniform(4, 150, K)
    if op == "roi_align_rotated":
        boxes = np.stack([np.zeros(K), x0, y0, w, h, rng.uniform(-90, 90, K)], 1)
    else:
        boxes = np.stack([np.zeros(K), x0, y0, x0 + w, y0 + h], 1)
    return features, jnp.asarray(boxes, jnp.float32)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("op", sorted(OPS))
def test_streamed_results_and_gradients_equal_pure_jax(op, dtype, layout):
    features, rois = inputs(op, dtype, layout)
    cotangent = np.random.default_rng(8).standard_normal((K, C, 7, 7))
    if layout == "NHWC":
        cotangent = cotangent.transpose(0, 2, 3, 1)
    cotangent = jnp.asarray(cotangent, dtype)
    assert cotangent.nbytes >= STREAMED_BYTES and features.size * 4 >= STREAMED_BYTES

    def forward_and_gradient(implementation):
        fn = partial(OPS[op], layout=layout, implementation=implementation)
        out, vjp = jax.vjp(lambda f: fn(f, rois), features)
        return out, vjp(cotangent)[0]

    out, grad = jax.jit(partial(forward_and_gradient, "kernel"))()
    want_out, want_grad = jax.jit(partial(forward_and_gradient, "xla"))()
    tol = 2e-5 if dtype == jnp.float32 else 2e-2  # summation order; bfloat16 rounding
    for got, want in ((out, want_out), (grad, want_grad)):
        got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
        assert np.abs(want).max() > 0
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol * np.abs(want).max())
