"""Forward and feature gradients against torchvision.ops on random NCHW data."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip(
    "torch", reason="torch is not installed: torchvision parity not checked")
tv_ops = pytest.importorskip(
    "torchvision.ops",
    reason="torchvision is not installed: torchvision parity not checked")

import jax_roi  # noqa: E402

N, C, H, W = 2, 4, 9, 11
TOL = {np.float32: 1e-5, np.float64: 1e-12}


def _data(seed, dtype, scale, k=8):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    x1 = rng.uniform(-3.0, W + 1.0, k)
    y1 = rng.uniform(-3.0, H + 1.0, k)
    # non-negative sizes: torchvision cannot take an inverted box with
    # aligned=True and adaptive sampling
    x2 = x1 + rng.uniform(0.0, 0.9 * W, k)
    y2 = y1 + rng.uniform(0.0, 0.9 * H, k)
    b = rng.integers(0, N, k)
    rois = np.stack([b, x1 / scale, y1 / scale, x2 / scale, y2 / scale], 1)
    dy_seed = rng.integers(1 << 30)
    return x, rois.astype(dtype), dy_seed


def _compare(jax_fn, torch_fn, x, rois, dy_seed, dtype):
    out, vjp = jax.vjp(lambda f: jax_fn(f, jnp.asarray(rois)), jnp.asarray(x))
    xt = torch.tensor(x, requires_grad=True)
    out_t = torch_fn(xt, torch.tensor(rois))
    tol = TOL[dtype]
    np.testing.assert_allclose(np.asarray(out), out_t.detach().numpy(),
                               rtol=tol, atol=tol)
    dy = np.random.default_rng(dy_seed).standard_normal(out.shape).astype(dtype)
    (dx,) = vjp(jnp.asarray(dy))
    out_t.backward(torch.tensor(dy))
    np.testing.assert_allclose(np.asarray(dx), xt.grad.numpy(), rtol=tol,
                               atol=tol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("sampling_ratio", [-1, 0, 1, 2, 4])
@pytest.mark.parametrize("aligned", [False, True])
def test_roi_align(aligned, sampling_ratio, dtype):
    scale = 0.5
    x, rois, dy_seed = _data(sampling_ratio + 2 + 10 * aligned, dtype, scale)
    out_size = (3, 4)
    _compare(
        lambda f, r: jax_roi.roi_align(f, r, out_size, scale, sampling_ratio,
                                       aligned),
        lambda f, r: tv_ops.roi_align(f, r, out_size, scale, sampling_ratio,
                                      aligned),
        x, rois, dy_seed, dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("scale", [1.0, 0.5, 0.25])
def test_roi_pool(scale, dtype):
    x, rois, dy_seed = _data(int(4 * scale), dtype, scale)
    out_size = (4, 3)
    _compare(
        lambda f, r: jax_roi.roi_pool(f, r, out_size, scale),
        lambda f, r: tv_ops.roi_pool(f, r, out_size, scale),
        x, rois, dy_seed, dtype)


@pytest.mark.parametrize("op", ["align", "pool"])
def test_per_image_boxes(op):
    # [N, L, 4] against torchvision's list-of-boxes-per-image form
    x, rois, dy_seed = _data(99, np.float32, 1.0, k=2 * 5)
    boxes = rois[:, 1:].reshape(N, 5, 4)
    tv_boxes = [torch.tensor(b) for b in boxes]
    if op == "align":
        out = jax_roi.roi_align(jnp.asarray(x), jnp.asarray(boxes), 2, 1.0, 2,
                                True)
        out_t = tv_ops.roi_align(torch.tensor(x), tv_boxes, 2, 1.0, 2, True)
    else:
        out = jax_roi.roi_pool(jnp.asarray(x), jnp.asarray(boxes), 2, 1.0)
        out_t = tv_ops.roi_pool(torch.tensor(x), tv_boxes, 2, 1.0)
    assert out.shape == (N, 5, C, 2, 2)
    np.testing.assert_allclose(np.asarray(out).reshape(N * 5, C, 2, 2),
                               out_t.numpy(), rtol=1e-5, atol=1e-5)
