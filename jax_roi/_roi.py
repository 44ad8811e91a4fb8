"""The ops on one feature map: the family's primitives with all their
rules, and the public roi_align and roi_pool (roi_align_rotated and the
position-sensitive ops have their own modules and bind the same primitives).

  roi_forward(features, rois) -> out           (the linear ops: "align_avg",
                                                "rotated", "ps_align", "ps_pool",
                                                "prroi"; and the max ops bound
                                                with winners=False)
                              -> out, argmax   ("align_max", "pool")
  roi_winner(features, rois, argmax) -> out    (max modes' tangent, pure JAX)
  roi_backward(grad_out, rois[, argmax]) -> grad_features
  roi_box_jvp(features, rois, roi_tangents[, argmax]) -> out_tangent
  roi_box_vjp(features, rois, grad_out[, argmax]) -> roi_cotangents
                                               (the derivative with respect to
                                                the ROIs, reference.BOX_OPS)

grad_features has the features' dtype. 16-bit gradients are summed in
float32 and rounded once: by the CPU kernels themselves, by a conversion
after the CUDA kernels and the pure-JAX implementation.
"""

import functools

import jax
import jax.numpy as jnp
from jax.interpreters import batching

from . import _autodiff, _checks, _ffi, _sharding, reference
from ._primitive import (RoiPrimitive, channels_of, check_kernel_available, common_vma,
                         kernel_attributes, match_vma, pooled_shape, register_lowerings,
                         with_vma)


roi_forward_p = RoiPrimitive("roi_forward", multiple_results=True)
roi_winner_p = RoiPrimitive("roi_winner", multiple_results=False)
roi_backward_p = RoiPrimitive("roi_backward", multiple_results=False)
roi_box_jvp_p = RoiPrimitive("roi_box_jvp", multiple_results=False)
roi_box_vjp_p = RoiPrimitive("roi_box_vjp", multiple_results=False)


# ------------------------------------------------------- abstract evaluation

def _out_channels(features_shape, op, output_size, layout):
    channels = channels_of(features_shape, layout)
    if op in reference.POSITION_SENSITIVE_OPS:
        return channels // (output_size[0] * output_size[1])
    return channels


def _pooled_aval(features, rois, *, op, output_size, layout, **_):
    channels = _out_channels(features.shape, op, output_size, layout)
    shape = pooled_shape(rois.shape, channels, output_size, layout)
    sharding = _sharding.forward_result_sharding(features, rois, layout)
    return with_vma(features.update(shape=shape, sharding=sharding),
                    common_vma((features, rois)))


def _forward_abstract(features, rois, *, op, winners=True, **params):
    out = _pooled_aval(features, rois, op=op, **params)
    return _autodiff.forward_results(out, op, winners)


def _winner_abstract(features, rois, argmax, **params):
    return with_vma(_pooled_aval(features, rois, **params), common_vma((features, rois, argmax)))


def _backward_abstract(grad_out, rois, *argmax, features_shape, layout, **_):
    grad = grad_out.update(
        shape=tuple(features_shape), dtype=grad_out.dtype,
        sharding=_sharding.backward_result_sharding(grad_out, rois, argmax, layout))
    return with_vma(grad, common_vma((grad_out, rois, *argmax)))


def _box_jvp_abstract(features, rois, roi_tangents, *argmax, **params):
    return with_vma(_pooled_aval(features, rois, **params),
                    common_vma((features, rois, roi_tangents, *argmax)))


def _box_vjp_abstract(features, rois, grad_out, *argmax, layout, **_):
    sharding = _sharding.box_vjp_result_sharding(features, rois, grad_out, layout)
    return with_vma(rois.update(sharding=sharding), common_vma((features, rois, grad_out, *argmax)))


roi_forward_p.def_abstract_eval(_forward_abstract)
roi_winner_p.def_abstract_eval(_winner_abstract)
roi_backward_p.def_abstract_eval(_backward_abstract)
roi_box_jvp_p.def_abstract_eval(_box_jvp_abstract)
roi_box_vjp_p.def_abstract_eval(_box_vjp_abstract)


# ----------------------------------------------------------------- lowering

def _forward_kernel(ctx, features, rois, *, op, output_size, spatial_scale, sampling_ratio,
                    aligned, layout, clockwise=False, winners=True):
    del output_size  # read by the kernel from the result's dimensions
    features_aval, rois_aval = ctx.avals_in
    rule = jax.ffi.ffi_lowering(
        _ffi.target(_autodiff.forward_kernel_name(op, winners)),
        extra_attributes=_sharding.forward_attributes(
            features_aval.shape, rois_aval.shape, [a.shape for a in ctx.avals_out], layout,
            position_sensitive=op in reference.POSITION_SENSITIVE_OPS))
    return rule(ctx, features, rois,
                **kernel_attributes(op, spatial_scale, sampling_ratio, aligned, layout, clockwise))


def _backward_kernel(ctx, grad_out, rois, *argmax, op, features_shape, output_size,
                     spatial_scale, sampling_ratio, aligned, layout, clockwise=False):
    del features_shape, output_size  # read by the kernel from buffer dimensions
    grad_aval, rois_aval, *argmax_avals = ctx.avals_in
    rule = jax.ffi.ffi_lowering(
        _ffi.target(op + "_backward"),
        extra_attributes=_sharding.backward_attributes(
            [grad_aval.shape] + [a.shape for a in argmax_avals], rois_aval.shape,
            ctx.avals_out[0].shape, layout,
            position_sensitive=op in reference.POSITION_SENSITIVE_OPS))
    return rule(ctx, grad_out, rois, *argmax,
                **kernel_attributes(op, spatial_scale, sampling_ratio, aligned, layout, clockwise))


def _box_kernel(kind):
    """The lowering of roi_box_jvp (kind "box_jvp") or roi_box_vjp ("box_vjp")."""
    def rule(ctx, features, rois, second, *argmax, op, output_size, spatial_scale,
             sampling_ratio, aligned, layout, clockwise=False):
        del output_size  # read by the kernel from buffer dimensions
        features_aval, rois_aval, second_aval, *argmax_avals = ctx.avals_in
        pooled = second_aval if kind == "box_vjp" else ctx.avals_out[0]
        lower = jax.ffi.ffi_lowering(
            _ffi.target(f"{op}_{kind}"),
            extra_attributes=_sharding.box_attributes(
                kind, features_aval.shape, rois_aval.shape, pooled.shape,
                [a.shape for a in argmax_avals], layout,
                position_sensitive=op in reference.POSITION_SENSITIVE_OPS))
        return lower(ctx, features, rois, second, *argmax,
                     **kernel_attributes(op, spatial_scale, sampling_ratio, aligned, layout,
                                         clockwise))
    return rule


register_lowerings(roi_forward_p, reference.roi_forward, _forward_kernel)
register_lowerings(roi_winner_p, reference.roi_winner)
register_lowerings(roi_backward_p, reference.roi_backward, _backward_kernel, gradients=True)
register_lowerings(roi_box_jvp_p, reference.roi_box_jvp, _box_kernel("box_jvp"))
register_lowerings(roi_box_vjp_p, reference.roi_box_vjp, _box_kernel("box_vjp"))


# -------------------------------------------------------------------- vmap
# The mapped axis folds into the kernel's own image or ROI dimension, so a
# vmapped call is still one call. With features mapped, B maps become B*N
# images: [K, 5] ROIs get their batch index shifted by i*N for the i-th map
# (invalid indices stay invalid) and [N, L, 4] boxes are taken per map. With
# only ROIs (or argmax) mapped, the B sets become one longer list of ROIs.

def _to_front(x, dim, size):
    return jnp.broadcast_to(x, (size,) + x.shape) if dim is None else jnp.moveaxis(x, dim, 0)


def _merge_leading(x):
    return x.reshape((x.shape[0] * x.shape[1],) + x.shape[2:])


def _stack_images(rois, num_images):
    """ROIs mapped at axis 0 (size B) for features folded into B*N images."""
    if rois.ndim == 4:  # [B, N, L, 4] -> [B*N, L, 4]
        return _merge_leading(rois)
    b = rois[..., 0]
    valid = (b >= 0) & (b < num_images)  # False for NaN as well
    offset = jnp.arange(rois.shape[0], dtype=rois.dtype)[:, None] * num_images
    shifted = jnp.where(valid, b + offset, -1.0).astype(rois.dtype)
    return _merge_leading(rois.at[..., 0].set(shifted))


def _pooled_batch(primitive, args, dims, **params):
    """roi_forward(features, rois), roi_winner(features, rois, argmax) and the
    box primitives: every operand after the ROIs leads with the ROIs'
    leading dimensions (pooled-shaped, or the ROIs' own shape), and so does
    every result."""
    size = next(a.shape[d] for a, d in zip(args, dims) if d is not None)
    (features, rois, *pooled), (f_dim, r_dim, *p_dims) = args, dims
    pooled = [_to_front(a, d, size) for a, d in zip(pooled, p_dims)]
    rois = _to_front(rois, r_dim, size)
    # Leading shapes are spelled out: a -1 is ambiguous when a dimension is 0.
    lead = rois.shape[:-1]  # (B, K) or (B, N, L)
    unfold = lambda o: o.reshape(lead + o.shape[len(lead) - 1:])
    out_dim = 0
    if f_dim is not None:
        features = _to_front(features, f_dim, size)
        folded = (_merge_leading(features), _stack_images(rois, features.shape[1]),
                  *map(_merge_leading, pooled))
    elif rois.ndim == 3:  # [B, K, 5] -> [B*K, 5] on the same images
        folded = (features, _merge_leading(rois), *map(_merge_leading, pooled))
    else:  # [B, N, L, 4] -> [N, B*L, 4]: the image axis stays the kernel's own
        n, boxes = rois.shape[1:3]
        fold = lambda a: jnp.moveaxis(a, 0, 1).reshape((n, size * boxes) + a.shape[3:])
        folded = (features, fold(rois), *map(fold, pooled))
        unfold = lambda o: o.reshape((n, size, boxes) + o.shape[2:])
        out_dim = 1
    outs = primitive.bind(*folded, **params)
    if primitive.multiple_results:
        return [unfold(o) for o in outs], [out_dim] * len(outs)
    return unfold(outs), out_dim


def _backward_batch(args, dims, *, features_shape, **params):
    size = next(a.shape[d] for a, d in zip(args, dims) if d is not None)
    grad_out, rois, *argmax = (_to_front(a, d, size) for a, d in zip(args, dims))
    num_images = features_shape[0]
    grad = roi_backward_p.bind(
        _merge_leading(grad_out), _stack_images(rois, num_images), *map(_merge_leading, argmax),
        features_shape=(size * num_images,) + tuple(features_shape[1:]), **params)
    return grad.reshape((size,) + tuple(features_shape)), 0


batching.primitive_batchers[roi_forward_p] = functools.partial(_pooled_batch, roi_forward_p)
batching.primitive_batchers[roi_winner_p] = functools.partial(_pooled_batch, roi_winner_p)
batching.primitive_batchers[roi_backward_p] = _backward_batch
for _box in (roi_box_jvp_p, roi_box_vjp_p):
    batching.primitive_batchers[_box] = functools.partial(_pooled_batch, _box)


# --------------------------------------------------------- differentiation

_autodiff.define_rules(_autodiff.Family(
    forward=roi_forward_p, winner=roi_winner_p, backward=roi_backward_p,
    box_jvp=roi_box_jvp_p, box_vjp=roi_box_vjp_p,
    split=lambda operands: (list(operands[:1]), list(operands[1:])),
    join=lambda features, geometry: list(features) + list(geometry),
    box_join=lambda features, geometry, second, argmax: [*features, *geometry, second, *argmax],
    box_split=lambda operands, linear: (operands[:1], operands[1:2], operands[2],
                                        operands[3:] if not linear else []),
    shapes_param="features_shape", shapes=lambda avals: tuple(avals[0].shape),
    num_geometry=1))


# ---------------------------------------------------------- the public ops

def pooled(features, rois, **params):
    """Binds roi_forward for a public op and returns its output."""
    check_kernel_available(params["implementation"])
    # Cast before bind, so that the gradient of features shared across
    # shard_map devices is summed by the cast's transpose.
    features, rois = match_vma(features, rois)
    return roi_forward_p.bind(features, rois, winners=False, **params)[0]


def roi_align(features, rois, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=False,
              *, mode="avg", layout="NCHW", implementation=None):
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
      implementation: ``None`` runs the compiled kernel where the platform
        has one (CPU, CUDA) and the pure-JAX implementation elsewhere (TPU,
        ROCm, ...); ``"kernel"`` insists on the kernel; ``"xla"`` runs pure
        JAX everywhere (no custom call: portable exports).

    Returns:
      ``[K, C, PH, PW]`` (NCHW) or ``[K, PH, PW, C]`` (NHWC) in the features'
      dtype; ``[N, L, ...]`` instead of ``[K, ...]`` for ``[N, L, 4]`` boxes.
      16-bit features are accumulated in float32.

    Peers: ``mode="avg"`` equals ``torchvision.ops.roi_align`` and detectron2's
    ``ROIAlign`` (and MXNet's ``contrib.ROIAlign``) with the same arguments.
    ``mode="max"`` equals mmcv's ``RoIAlign(pool_mode="max")``.

    Derivatives with respect to ``features``, forward and reverse mode, of
    every order (``mode="avg"`` is linear; the max mode reads the tangent
    through each bin's winning sample, so its second derivative is 0).
    Reverse mode runs a deterministic backward kernel. With respect to
    ``rois``: the exact derivative almost everywhere (through each sample's
    position; "max" through its winning sample), forward and reverse mode,
    from its own kernels; sample grids and clamps are held fixed, and the
    batch index and invalid ROIs get 0. A gradient with respect to
    ``features`` alone runs none of it.

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
    if mode == "max":
        _checks.check_argmax_range(features, layout, op)
    return pooled(features, rois, op=op, output_size=_checks.output_size_pair(output_size),
                   spatial_scale=_checks.spatial_scale_value(spatial_scale),
                   sampling_ratio=_checks.sampling_ratio_value(sampling_ratio),
                   aligned=_checks.aligned_value(aligned), layout=layout,
                   implementation=_checks.implementation_value(implementation))


def roi_pool(features, rois, output_size, spatial_scale=1.0, *, layout="NCHW",
             implementation=None):
    """ROI Pooling (Fast R-CNN): the maximum over each ROI bin's pixels.

    Boxes are scaled by ``spatial_scale`` and rounded to whole pixels (half
    away from zero), with an inclusive end and a size of at least one pixel;
    bin edges are floored and ceiled, so neighbouring bins may share a row.
    An empty bin gives 0. The first strict maximum wins and NaN never does.

    Arguments, shapes, dtypes, ``implementation`` and bad-data handling are
    those of :func:`roi_align`. Derivatives with respect to ``features`` (any
    mode, any order) go through each bin's winning pixel; with respect to
    ``rois`` they are exactly zero (the boxes are rounded to whole pixels, so
    the output is piecewise constant in them).

    Peers: equals ``torchvision.ops.roi_pool``, Caffe's and MXNet's
    ``ROIPooling``.
    """
    layout = _checks.choice("layout", layout, _checks.LAYOUTS)
    features = _checks.features_array(features, layout)
    rois = _checks.rois_array(rois, features)
    _checks.check_argmax_range(features, layout, "pool")
    return pooled(features, rois, op="pool", output_size=_checks.output_size_pair(output_size),
                   spatial_scale=_checks.spatial_scale_value(spatial_scale), sampling_ratio=0,
                   aligned=False, layout=layout,
                   implementation=_checks.implementation_value(implementation))
