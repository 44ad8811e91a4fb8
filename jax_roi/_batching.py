"""vmap rules: the mapped axis is folded into the kernel's own image or ROI
dimension, so a vmapped call is still one custom call, with no loop.

With features mapped, the B maps become B*N images; [K, 5] ROIs then get
their batch index shifted by i*N for the i-th map (indices that were invalid
stay invalid), and [N, L, 4] boxes are repeated per map. With only the ROIs
mapped, the B sets of ROIs become one longer list over the same images.
"""

import jax.numpy as jnp
from jax.interpreters import batching

from ._primitives import roi_backward_p, roi_forward_p


def _to_front(x, dim, size):
    if dim is None:
        return jnp.broadcast_to(x, (size,) + x.shape)
    return jnp.moveaxis(x, dim, 0)


def _merge_leading(x):
    return x.reshape((x.shape[0] * x.shape[1],) + x.shape[2:])


def _shift_batch_index(rois, num_images):
    """[B, K, 5] ROIs for B stacked feature maps of N images each -> [B*K, 5]."""
    b = rois[..., 0]
    valid = (b >= 0) & (b < num_images)  # False for NaN as well
    offset = jnp.arange(rois.shape[0], dtype=rois.dtype)[:, None] * num_images
    shifted = jnp.where(valid, b + offset, -1.0).astype(rois.dtype)
    return _merge_leading(rois.at[..., 0].set(shifted))


def _stack_images(rois, num_images):
    """Mapped ROIs (at axis 0, size B) for features folded into B*N images."""
    if rois.ndim == 3:  # [B, K, 5]
        return _shift_batch_index(rois, num_images)
    return _merge_leading(rois)  # [B, N, L, 4] -> [B*N, L, 4]


def _forward_batch(args, dims, **params):
    features, rois = args
    f_dim, r_dim = dims
    size = features.shape[f_dim] if f_dim is not None else rois.shape[r_dim]
    per_image = (rois.ndim - (r_dim is not None)) == 3
    if f_dim is None:
        rois = _to_front(rois, r_dim, size)
        if not per_image:  # [B, K, 5] -> [B*K, 5] on the same images
            outs = roi_forward_p.bind(features, _merge_leading(rois), **params)
            return [o.reshape((size, -1) + o.shape[1:]) for o in outs], [0] * len(outs)
        # [B, N, L, 4] -> [N, B*L, 4]: the image axis stays the kernel's own.
        rois = jnp.moveaxis(rois, 0, 1)
        n, _, boxes = rois.shape[:3]
        outs = roi_forward_p.bind(features, rois.reshape((n, size * boxes, 4)), **params)
        return [o.reshape((n, size, boxes) + o.shape[2:]) for o in outs], [1] * len(outs)
    features = _to_front(features, f_dim, size)
    num_images = features.shape[1]
    rois = _stack_images(_to_front(rois, r_dim, size), num_images)
    outs = roi_forward_p.bind(_merge_leading(features), rois, **params)
    return [o.reshape((size, -1) + o.shape[1:]) for o in outs], [0] * len(outs)


def _backward_batch(args, dims, *, features_shape, **params):
    size = next(a.shape[d] for a, d in zip(args, dims) if d is not None)
    grad_out, rois, *argmax = (_to_front(a, d, size) for a, d in zip(args, dims))
    num_images = features_shape[0]
    rois = _stack_images(rois, num_images)
    grad = roi_backward_p.bind(
        _merge_leading(grad_out), rois, *map(_merge_leading, argmax),
        features_shape=(size * num_images,) + tuple(features_shape[1:]), **params)
    return grad.reshape((size,) + tuple(features_shape)), 0


batching.primitive_batchers[roi_forward_p] = _forward_batch
batching.primitive_batchers[roi_backward_p] = _backward_batch
