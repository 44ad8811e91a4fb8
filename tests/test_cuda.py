"""The ops on a CUDA device: parity with the CPU kernels, jit, vmap, grad.
Runs only where JAX sees a CUDA GPU."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_roi
from jax_roi import _ffi

try:
    GPU = jax.devices("cuda")[0]
except RuntimeError:
    pytest.skip("no CUDA device visible to JAX: the GPU tests need one", allow_module_level=True)

if "cuda" not in _ffi.KERNEL_PLATFORMS:
    pytest.fail("JAX sees a CUDA device but jax_roi was built without its CUDA kernels "
                "(reinstall with nvcc on PATH, or -Ccmake.define.JAX_ROI_CUDA=ON)")

CPU = jax.devices("cpu")[0]
OPS = {
    "align_avg": lambda f, r, layout: jax_roi.roi_align(f, r, 7, 0.25, 2, True, layout=layout),
    "align_adaptive": lambda f, r, layout: jax_roi.roi_align(f, r, 5, 0.25, -1, False,
                                                             layout=layout),
    "align_max": lambda f, r, layout: jax_roi.roi_align(f, r, 7, 0.25, 2, True, mode="max",
                                                        layout=layout),
    "pool": lambda f, r, layout: jax_roi.roi_pool(f, r, 7, 0.25, layout=layout),
}


def inputs(layout, dtype):
    rng = np.random.default_rng(0)
    shape = (2, 16, 24, 20) if layout == "NCHW" else (2, 24, 20, 16)
    x1, y1 = rng.uniform(-8, 80, 40), rng.uniform(-8, 96, 40)
    rois = np.stack([rng.integers(0, 2, 40), x1, y1, x1 + rng.uniform(1, 60, 40),
                     y1 + rng.uniform(1, 60, 40)], axis=1)
    return rng.standard_normal(shape).astype(dtype), rois.astype(np.float32)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, jnp.bfloat16, np.float16])
@pytest.mark.parametrize("op", OPS)
def test_gpu_matches_cpu(op, dtype, layout):
    x, rois = inputs(layout, dtype)
    loss = lambda f, r: jnp.sum(OPS[op](f, r, layout).astype(jnp.float32) ** 2)
    results = {}
    for device in (CPU, GPU):
        f, r = jax.device_put(x, device), jax.device_put(rois, device)
        out = jax.jit(lambda f, r: OPS[op](f, r, layout))(f, r)
        grad = jax.jit(jax.grad(loss))(f, r)
        assert out.devices() == {device}
        results[device] = (np.asarray(out, np.float64), np.asarray(grad, np.float64))
    tol = 1e-2 if dtype in (jnp.bfloat16, np.float16) else 1e-5
    for cpu, gpu in zip(results[CPU], results[GPU]):
        np.testing.assert_allclose(gpu, cpu, rtol=tol, atol=tol)


@pytest.mark.parametrize("op", OPS)
def test_gpu_vmap_is_one_call_and_matches_loop(op):
    x, rois = inputs("NHWC", np.float32)
    maps = jax.device_put(np.stack([x, 2 * x]), GPU)
    rois = jax.device_put(rois, GPU)
    batched = jax.jit(jax.vmap(lambda f: OPS[op](f, rois, "NHWC")))
    expected = np.stack([np.asarray(OPS[op](m, rois, "NHWC")) for m in maps])
    np.testing.assert_allclose(np.asarray(batched(maps)), expected, rtol=1e-6, atol=1e-6)
    assert batched.lower(maps).as_text().count("stablehlo.custom_call @jax_roi_") == 1


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("mode", ["avg", "max"])
def test_gpu_pyramid_matches_cpu(mode, layout):
    from jax_roi import nnx as roi_nn
    rng = np.random.default_rng(1)
    sizes = [(32, 28), (16, 14), (8, 7)]
    maps = [rng.standard_normal((2, 8, h, w) if layout == "NCHW" else (2, h, w, 8))
            .astype(np.float32) for h, w in sizes]
    x1, y1 = rng.uniform(-8, 100, (2, 2, 30))
    side = rng.uniform(4, 100, (2, 30))
    boxes = np.stack([x1, y1, x1 + side, y1 + side], -1).astype(np.float32)
    m = roi_nn.MultiScaleRoIAlign(4, (1 / 4, 1 / 8, 1 / 16), canonical_scale=32,
                                  canonical_level=3, mode=mode, layout=layout)
    loss = lambda fs, b: jnp.sum(m(fs, b) ** 2)
    results = {}
    for device in (CPU, GPU):
        fs, b = jax.device_put((maps, boxes), device)
        results[device] = [np.asarray(a) for a in
                           [jax.jit(m)(fs, b)] + list(jax.jit(jax.grad(loss))(fs, b))]
    for cpu, gpu in zip(results[CPU], results[GPU]):
        np.testing.assert_allclose(gpu, cpu, rtol=1e-5, atol=1e-5)
