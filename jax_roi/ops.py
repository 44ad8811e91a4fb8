"""The public ops: argument checking and the custom_vjp that connects the
backward kernels."""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from . import _autodiff, _batching  # noqa: F401  (register the primitives' rules)
from . import _checks
from ._primitives import match_vma, roi_backward_p, roi_forward_p


class _Static(NamedTuple):
    """Everything about a call that is not an array (hashable, so jit caches)."""
    op: str
    features_shape: tuple
    output_size: tuple
    spatial_scale: float
    sampling_ratio: int
    aligned: bool
    layout: str
    # With explicit mesh axes the gradient's type must repeat the features'
    # sharding, which the kernel's result need not have.
    features_sharding: object = None

    def forward(self):
        return {k: v for k, v in self._asdict().items()
                if k not in ("features_shape", "features_sharding")}


def _sharding_of(features):
    return getattr(jax.typeof(features), "sharding", None)


def _like_features(grad, sharding):
    if sharding is None or sharding.mesh.empty or jax.typeof(grad).sharding.spec == sharding.spec:
        return grad
    return jax.sharding.reshard(grad, sharding)


def _pooled(features, rois, static):
    # Outside the custom_vjp, so that the cast's transpose sums the gradient
    # of features shared across shard_map devices (see match_vma).
    return _pooled_vjp(*match_vma(features, rois), static)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _pooled_vjp(features, rois, static):
    return roi_forward_p.bind(features, rois, **static.forward())[0]


def _pooled_fwd(features, rois, static):
    out, *argmax = roi_forward_p.bind(features, rois, **static.forward())
    return out, (rois, argmax)


def _pooled_bwd(static, residuals, grad_out):
    rois, argmax = residuals
    grad = roi_backward_p.bind(grad_out, rois, *argmax, features_shape=static.features_shape,
                               **static.forward())
    return _like_features(grad.astype(grad_out.dtype), static.features_sharding), \
        jnp.zeros_like(rois)


_pooled_vjp.defvjp(_pooled_fwd, _pooled_bwd)


def roi_align(features, rois, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=False,
              *, mode="avg", layout="NCHW"):
    """ROI Align: bilinear sampling of each ROI bin, averaged or maxed.

    Args:
      features: ``[N, C, H, W]`` (``layout="NCHW"``) or ``[N, H, W, C]``
        (``layout="NHWC"``), float32, float64, bfloat16 or float16.
      rois: ``[K, 5]`` rows ``(batch_index, x1, y1, x2, y2)``, or ``[N, L, 4]``
        boxes ``(x1, y1, x2, y2)`` per image, in image coordinates. Box
        arithmetic runs in float64 for float64 features and in float32
        otherwise, whatever the dtype given.
      output_size: ``PH`` or ``(PH, PW)``, the bins per ROI.
      spatial_scale: feature-map size over image size (e.g. ``1/16``).
      sampling_ratio: samples per bin along each axis; ``<= 0`` chooses
        ``ceil(roi_size / output_size)`` per ROI (the adaptive grid).
      aligned: shift boxes by half a pixel so that pixel centres sit at
        integer + 0.5 (detectron2's ``ROIAlignV2``); ``False`` reproduces the
        original Mask R-CNN arithmetic, including its one-pixel minimum size.
      mode: ``"avg"`` averages the samples of a bin; ``"max"`` takes their
        maximum (samples that fall outside the map count as 0).
      layout: ``"NCHW"`` or ``"NHWC"``; each has its own kernel, no transposes.

    Returns:
      ``[K, C, PH, PW]`` (NCHW) or ``[K, PH, PW, C]`` (NHWC) in the features'
      dtype; ``[N, L, ...]`` instead of ``[K, ...]`` for ``[N, L, 4]`` boxes.
      16-bit features are accumulated in float32.

    Peers: ``mode="avg"`` equals ``torchvision.ops.roi_align`` and detectron2's
    ``ROIAlign`` (and MXNet's ``contrib.ROIAlign``) with the same arguments.
    ``mode="max"`` equals mmcv's ``RoIAlign(pool_mode="max")`` and is the exact
    form of the MXNet max-pooling ROIAlign this library grew from, whose own
    backward is not the adjoint of its forward.

    Gradients: with respect to ``features`` for every mode and layout, by a
    deterministic kernel (bitwise reproducible on the CPU). The gradient with
    respect to ``rois`` is zero. ``mode="avg"`` is linear in the features, so
    derivatives of any order exist; ``mode="max"`` has the first.

    Bad data never reads outside a buffer: a ROI whose batch index is not in
    ``[0, N)`` (or not finite) or whose coordinates are not finite gives
    zeros and no gradient. Work per bin is bounded by the map size, so a huge
    box costs no more than the map.
    """
    layout = _checks.choice("layout", layout, _checks.LAYOUTS)
    mode = _checks.choice("mode", mode, _checks.ALIGN_MODES)
    features = _checks.features_array(features, layout)
    rois = _checks.rois_array(rois, features)
    op = "align_" + mode
    static = _Static(
        op=op, features_shape=tuple(features.shape),
        output_size=_checks.output_size_pair(output_size),
        spatial_scale=_checks.spatial_scale_value(spatial_scale),
        sampling_ratio=_checks.sampling_ratio_value(sampling_ratio),
        aligned=_checks.aligned_value(aligned), layout=layout,
        features_sharding=_sharding_of(features))
    if mode == "max":
        _checks.check_argmax_range(features, layout, op)
    return _pooled(features, rois, static)


def roi_pool(features, rois, output_size, spatial_scale=1.0, *, layout="NCHW"):
    """ROI Pooling (Fast R-CNN): the maximum over each ROI bin's pixels.

    Boxes are scaled by ``spatial_scale`` and rounded to whole pixels (half
    away from zero), with an inclusive end and a size of at least one pixel;
    bin edges are floored and ceiled, so neighbouring bins may share a row.
    An empty bin gives 0. The first strict maximum wins and NaN never does.

    Arguments, shapes, dtypes and bad-data handling are those of
    :func:`roi_align`. The gradient with respect to ``features`` sends each
    bin's incoming gradient to its winning pixel; the gradient with respect
    to ``rois`` is zero.

    Peers: equals ``torchvision.ops.roi_pool``, Caffe's and MXNet's
    ``ROIPooling``.
    """
    layout = _checks.choice("layout", layout, _checks.LAYOUTS)
    features = _checks.features_array(features, layout)
    rois = _checks.rois_array(rois, features)
    static = _Static(
        op="pool", features_shape=tuple(features.shape),
        output_size=_checks.output_size_pair(output_size),
        spatial_scale=_checks.spatial_scale_value(spatial_scale),
        sampling_ratio=0, aligned=False, layout=layout,
        features_sharding=_sharding_of(features))
    _checks.check_argmax_range(features, layout, "pool")
    return _pooled(features, rois, static)
