"""A tour of jax_roi: both ops under jit, vmap and grad, printing what they compute."""

import jax
import jax.numpy as jnp
import numpy as np

import jax_roi


def main():
    # Two 32x32 images with 8 channels, as a stride-4 feature map of 128x128 images.
    features = jax.random.normal(jax.random.key(0), (2, 32, 32, 8))  # NHWC
    boxes = jnp.array([[[8.0, 8.0, 72.0, 40.0], [0.0, 0.0, 127.0, 127.0]],
                       [[40.0, 64.0, 100.0, 120.0], [10.0, 90.0, 30.0, 110.0]]])  # [N, L, 4]

    align = jax.jit(lambda f, b: jax_roi.roi_align(
        f, b, output_size=7, spatial_scale=0.25, sampling_ratio=2, aligned=True, layout="NHWC"))
    pooled = align(features, boxes)
    print(f"roi_align  {features.shape} x boxes {boxes.shape} -> {pooled.shape}")
    print(f"  mean of each box's first channel: {np.asarray(pooled[..., 0].mean((2, 3)), np.float64).round(4).tolist()}")

    rois = jnp.array([[0, 8.0, 8.0, 72.0, 40.0], [1, 40.0, 64.0, 100.0, 120.0]])  # [K, 5]
    maxed = jax_roi.roi_pool(features, rois, output_size=(2, 2), spatial_scale=0.25, layout="NHWC")
    print(f"roi_pool   rois {rois.shape} -> {maxed.shape}; channel 0 of box 0:\n{np.asarray(maxed[0, ..., 0])}")

    # vmap over a batch of feature pyramids: still one kernel call.
    stacked = jnp.stack([features, 2 * features, -features])
    batched = jax.vmap(lambda f: jax_roi.roi_align(f, rois, 7, 0.25, 2, True, layout="NHWC"))(stacked)
    ratio = batched[1] / jnp.where(batched[0] == 0, 1, batched[0])
    print(f"vmap       {stacked.shape} -> {batched.shape}; doubled map doubles the output: "
          f"{bool(jnp.allclose(ratio[batched[0] != 0], 2.0))}")

    # grad with respect to the features: each bin's gradient lands on the
    # pixels it sampled, so the total equals the number of output elements.
    loss = lambda f: jnp.sum(jax_roi.roi_align(f, rois, 7, 0.25, 2, True, layout="NHWC"))
    grad = jax.jit(jax.grad(loss))(features)
    print(f"grad       shape {grad.shape}; total {float(grad.sum()):.1f} "
          f"(= 2 rois x 7 x 7 bins x 8 channels = {2 * 7 * 7 * 8})")
    max_grad = jax.grad(lambda f: jnp.sum(jax_roi.roi_align(
        f, rois, 7, 0.25, 2, True, mode="max", layout="NHWC")))(features)
    print(f"max mode   gradient reaches {int((max_grad != 0).sum())} feature elements")

    # forward mode: the tangent along the features themselves is the output
    # again, for the linear "avg" mode
    pool = lambda f: jax_roi.roi_align(f, rois, 7, 0.25, 2, True, layout="NHWC")
    out, tangent = jax.jvp(pool, (features,), (features,))
    print(f"jvp        tangent equals the output: {bool(jnp.allclose(tangent, out))}")

    # the pure-JAX implementation that TPU runs, here on the CPU: same numbers
    portable = jax_roi.roi_align(features, rois, 7, 0.25, 2, True, layout="NHWC",
                                 implementation="xla")
    print(f"pure JAX   equals the kernel: {bool(jnp.allclose(portable, out, atol=1e-5))}")


if __name__ == "__main__":
    main()
