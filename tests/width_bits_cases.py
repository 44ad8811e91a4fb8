"""Every op's results on the CPU kernels, as digests of their bytes, for
test_vector_widths.py to compare between vector widths: run as a script under
JAX_ROI_CPU_VECTOR_BYTES, it prints one JSON object, name -> digest. Each op,
dtype and layout gives its forward output, the gradient with respect to the
features and to the boxes (VJP) and the box JVP, on boxes partly outside the
map and of every size, with fixed and adaptive sampling grids."""

import hashlib
import json

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)  # before any array is made

import jax_roi  # noqa: E402

N, H, W, K = 2, 23, 29, 24
DTYPES = (np.float32, np.float64, jnp.bfloat16, np.float16)


def _boxes(rng):
    x0, y0 = rng.uniform(-6, W, K), rng.uniform(-6, H, K)
    w, h = rng.uniform(0.5, 20, K), rng.uniform(0.5, 20, K)
    return np.stack([rng.integers(0, N, K), x0, y0, x0 + w, y0 + h], 1)


def _rotated(boxes, rng):
    return np.stack([boxes[:, 0], (boxes[:, 1] + boxes[:, 3]) / 2,
                     (boxes[:, 2] + boxes[:, 4]) / 2, boxes[:, 3] - boxes[:, 1],
                     boxes[:, 4] - boxes[:, 2], rng.uniform(-180, 180, K)], 1)


SCALES, CANONICAL_SCALE = (1 / 8, 1 / 16), 64


def pyramid_boxes(rois):
    """[N, L, 4] boxes in image coordinates, some on each level (the test
    checks)."""
    return rois[:, 1:].reshape(N, K // N, 4) * 8


def _pyramid(features, rois, layout):
    """Two levels: the map and every other pixel of it."""
    coarse = features[:, :, ::2, ::2] if layout == "NCHW" else features[:, ::2, ::2, :]
    return jax_roi.multi_scale_roi_align([features, coarse], pyramid_boxes(rois), (5, 4), SCALES,
                                         2, True, CANONICAL_SCALE, layout=layout)


# name: (channels, op(features, rois, layout), rotated boxes?). 72 channels
# for roi_align avg and prroi_pool: more than the box derivatives' dot product
# takes in one chunk (box_derivative_cpu.h).
OPS = {
    "roi_align_avg": (72, lambda f, r, l: jax_roi.roi_align(f, r, (5, 4), 0.9, 2, True,
                                                            layout=l), False),
    "roi_align_avg_adaptive": (20, lambda f, r, l: jax_roi.roi_align(f, r, (3, 4), 0.9,
                                                                     layout=l), False),
    "roi_align_max": (20, lambda f, r, l: jax_roi.roi_align(f, r, (5, 4), 0.9, 2, True,
                                                            mode="max", layout=l), False),
    "roi_align_max_adaptive": (20, lambda f, r, l: jax_roi.roi_align(f, r, (3, 4), 0.9,
                                                                     mode="max", layout=l),
                               False),
    "roi_pool": (20, lambda f, r, l: jax_roi.roi_pool(f, r, (5, 4), 0.9, layout=l), False),
    "roi_align_rotated": (20, lambda f, r, l: jax_roi.roi_align_rotated(
        f, r, (5, 4), 0.9, 2, layout=l), True),
    "roi_align_rotated_adaptive": (20, lambda f, r, l: jax_roi.roi_align_rotated(
        f, r, (3, 4), 0.9, -1, False, clockwise=True, layout=l), True),
    "ps_roi_align": (36, lambda f, r, l: jax_roi.ps_roi_align(f, r, (3, 3), 0.9, 2,
                                                              layout=l), False),
    "ps_roi_pool": (36, lambda f, r, l: jax_roi.ps_roi_pool(f, r, (3, 3), 0.9, layout=l),
                    False),
    "multi_scale_roi_align": (20, _pyramid, False),
    "prroi_pool": (72, lambda f, r, l: jax_roi.prroi_pool(f, r, (5, 4), 0.9, layout=l),
                   False),
}


def _digest(x):
    return hashlib.sha256(np.ascontiguousarray(np.asarray(x)).tobytes()).hexdigest()


SEED = 7


def boxes():
    """The cases' boxes: the first draws of results()' generator."""
    return _boxes(np.random.default_rng(SEED))


def results():
    rng = np.random.default_rng(SEED)
    boxes = _boxes(rng)
    digests = {}
    for name, (channels, op, rotated) in OPS.items():
        rois64 = _rotated(boxes, rng) if rotated else boxes
        maps = rng.standard_normal((N, channels, H, W))
        for dtype in DTYPES:
            geometry = np.float64 if dtype == np.float64 else np.float32
            rois = jnp.asarray(rois64, geometry)
            for layout in ("NCHW", "NHWC"):
                features = jnp.asarray(maps if layout == "NCHW" else maps.transpose(0, 2, 3, 1),
                                       dtype)
                call = jax.jit(lambda f, r, op=op, layout=layout: op(f, r, layout))
                out, vjp = jax.vjp(call, features, rois)
                cotangent = jnp.asarray(rng.standard_normal(out.shape), dtype)
                grad_features, grad_rois = vjp(cotangent)
                _, box_jvp = jax.jvp(lambda r: call(features, r), (rois,),
                                     (jnp.asarray(rng.standard_normal(rois.shape), geometry),))
                key = f"{name}/{np.dtype(dtype).name}/{layout}"
                for part, value in (("out", out), ("grad_features", grad_features),
                                    ("grad_rois", grad_rois), ("box_jvp", box_jvp)):
                    digests[f"{key}/{part}"] = _digest(value)
    return digests


if __name__ == "__main__":
    print(json.dumps(results()))
