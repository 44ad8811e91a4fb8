"""ps_roi_align and ps_roi_pool forward and feature gradients against
torchvision.ops on random NCHW data.

Where the contract departs from torchvision the boxes stay clear of it:
torchvision's CPU ps_roi_pool forward clips bin ends to H-1 / W-1 (never
reading the last row or column) while its backward clips to H / W, so
ps_roi_pool boxes keep every bin before the last row and column; and
torchvision's ps_roi_align divides 0 by 0 (NaN) for a bin without samples, so
boxes have a positive size there."""

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
import numpy_reference as ref  # noqa: E402

N, H, W = 2, 9, 11
TOL = {np.float32: 1e-5, np.float64: 1e-12}


def _data(seed, dtype, scale, c, output_size, k=10, clear_of_last=False):
    """Features and [K, 5] ROIs. With clear_of_last, box ends stay below
    W - 1.5 and H - 1.5 on the map, so the rounded end is at most W - 2 and
    no ps_roi_pool bin reaches the last column (checked on the bins)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, c, H, W)).astype(dtype)
    x1 = rng.uniform(-3.0, W - 3.0, k)
    y1 = rng.uniform(-3.0, H - 3.0, k)
    x2 = x1 + rng.uniform(0.3, 0.9 * W, k)
    y2 = y1 + rng.uniform(0.3, 0.9 * H, k)
    if clear_of_last:
        x2 = np.minimum(x2, W - 1.6)
        y2 = np.minimum(y2, H - 1.6)
    b = rng.integers(0, N, k)
    rois = np.stack([b, x1 / scale, y1 / scale, x2 / scale, y2 / scale], 1).astype(dtype)
    if clear_of_last:
        geom = np.float64 if dtype == np.float64 else np.float32
        for row in rois:
            for _, _, h0, h1, w0, w1 in ref.ps_pool_bins(row, H, W, output_size, scale, geom):
                assert h1 <= H - 1 and w1 <= W - 1
    return x, rois, int(rng.integers(1 << 30))


def _compare(jax_fn, torch_fn, x, rois, dy_seed, dtype):
    out, vjp = jax.vjp(lambda f: jax_fn(f, jnp.asarray(rois)), jnp.asarray(x))
    xt = torch.tensor(x, requires_grad=True)
    out_t = torch_fn(xt, torch.tensor(rois))
    tol = TOL[dtype]
    assert out.shape == tuple(out_t.shape)
    np.testing.assert_allclose(np.asarray(out), out_t.detach().numpy(), rtol=tol, atol=tol)
    assert np.any(np.asarray(out) != 0)
    dy = np.random.default_rng(dy_seed).standard_normal(out.shape).astype(dtype)
    (dx,) = vjp(jnp.asarray(dy))
    out_t.backward(torch.tensor(dy))
    np.testing.assert_allclose(np.asarray(dx), xt.grad.numpy(), rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("sampling_ratio", [-1, 0, 1, 2, 3])
@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_ps_roi_align(scale, sampling_ratio, dtype):
    out_size = (3, 2)
    x, rois, dy_seed = _data(sampling_ratio + 10 * int(4 * scale), dtype, scale, 2 * 6, out_size)
    _compare(
        lambda f, r: jax_roi.ps_roi_align(f, r, out_size, scale, sampling_ratio),
        lambda f, r: tv_ops.ps_roi_align(f, r, out_size, scale, sampling_ratio),
        x, rois, dy_seed, dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("scale", [1.0, 0.5, 0.25])
@pytest.mark.parametrize("out_size", [(2, 3), (3, 3)])
def test_ps_roi_pool(out_size, scale, dtype):
    c = 2 * out_size[0] * out_size[1]
    x, rois, dy_seed = _data(int(8 * scale) + out_size[0], dtype, scale, c, out_size,
                             clear_of_last=True)
    _compare(
        lambda f, r: jax_roi.ps_roi_pool(f, r, out_size, scale),
        lambda f, r: tv_ops.ps_roi_pool(f, r, out_size, scale),
        x, rois, dy_seed, dtype)


@pytest.mark.parametrize("op", ["align", "pool"])
def test_per_image_boxes(op):
    # [N, L, 4] against torchvision's list-of-boxes-per-image form
    x, rois, _ = _data(99, np.float32, 1.0, 8, (2, 2), k=2 * 5, clear_of_last=True)
    boxes = rois[:, 1:].reshape(N, 5, 4)
    tv_boxes = [torch.tensor(b) for b in boxes]
    if op == "align":
        out = jax_roi.ps_roi_align(jnp.asarray(x), jnp.asarray(boxes), 2, 1.0, 2)
        out_t = tv_ops.ps_roi_align(torch.tensor(x), tv_boxes, 2, 1.0, 2)
    else:
        out = jax_roi.ps_roi_pool(jnp.asarray(x), jnp.asarray(boxes), 2, 1.0)
        out_t = tv_ops.ps_roi_pool(torch.tensor(x), tv_boxes, 2, 1.0)
    assert out.shape == (N, 5, 2, 2, 2)
    np.testing.assert_allclose(np.asarray(out).reshape(N * 5, 2, 2, 2), out_t.numpy(),
                               rtol=1e-5, atol=1e-5)


def test_nhwc_equals_torchvision_nchw():
    # torchvision has NCHW only: the NHWC result is the same numbers, moved
    x, rois, _ = _data(7, np.float32, 0.5, 12, (3, 2), clear_of_last=True)
    nhwc = jnp.asarray(x.transpose(0, 2, 3, 1))
    out_t = tv_ops.ps_roi_align(torch.tensor(x), torch.tensor(rois), (3, 2), 0.5, 2).numpy()
    out = jax_roi.ps_roi_align(nhwc, jnp.asarray(rois), (3, 2), 0.5, 2, layout="NHWC")
    np.testing.assert_allclose(np.moveaxis(np.asarray(out), -1, 1), out_t, rtol=1e-5, atol=1e-5)
    out_t = tv_ops.ps_roi_pool(torch.tensor(x), torch.tensor(rois), (3, 2), 0.5).numpy()
    out = jax_roi.ps_roi_pool(nhwc, jnp.asarray(rois), (3, 2), 0.5, layout="NHWC")
    np.testing.assert_allclose(np.moveaxis(np.asarray(out), -1, 1), out_t, rtol=1e-5, atol=1e-5)
