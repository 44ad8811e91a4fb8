"""The JAX primitives behind the public ops: abstract evaluation, lowering
to the XLA FFI kernels, batching, and the linear-algebra rules that make
the backward differentiable.

Two primitives serve all three ops, selected by the static `op` parameter:
  "align_avg", "align_max", "pool".

  roi_forward(features, rois) -> out            ("align_avg")
                              -> out, argmax    ("align_max", "pool")
  roi_backward(grad_out, rois[, argmax]) -> grad_features

grad_features is float32 for 16-bit features (the kernels accumulate in
float32) and float64 for float64 features; the caller casts it.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir, xla

from . import _ffi
from ._checks import geometry_dtype

OPS = ("align_avg", "align_max", "pool")


def has_argmax(op):
    return op != "align_avg"


def _target(op, direction):
    return _ffi.TARGET_PREFIX + op + "_" + direction


def _pooled_shape(rois_shape, channels, output_size, layout):
    lead = tuple(rois_shape[:1]) if len(rois_shape) == 2 else tuple(rois_shape[:2])
    ph, pw = output_size
    return lead + ((channels, ph, pw) if layout == "NCHW" else (ph, pw, channels))


def _channels(features_shape, layout):
    return features_shape[1] if layout == "NCHW" else features_shape[3]


def _attributes(op, spatial_scale, sampling_ratio, aligned, layout):
    # The handlers decode f64, i64 and bool attributes.
    attrs = {"channels_last": layout == "NHWC", "spatial_scale": np.float64(spatial_scale)}
    if op != "pool":
        attrs["sampling_ratio"] = np.int64(sampling_ratio)
        attrs["aligned"] = bool(aligned)
    return attrs


# ------------------------------------------------------------------ forward

roi_forward_p = Primitive("roi_forward")
roi_forward_p.multiple_results = True
roi_forward_p.def_impl(functools.partial(xla.apply_primitive, roi_forward_p))


def _forward_abstract(features, rois, *, op, output_size, spatial_scale, sampling_ratio,
                      aligned, layout):
    shape = _pooled_shape(rois.shape, _channels(features.shape, layout), output_size, layout)
    out = features.update(shape=shape, dtype=features.dtype)
    if not has_argmax(op):
        return [out]
    return [out, features.update(shape=shape, dtype=jnp.int32)]


roi_forward_p.def_abstract_eval(_forward_abstract)


def _forward_lowering(ctx, features, rois, *, op, output_size, spatial_scale, sampling_ratio,
                      aligned, layout):
    del output_size  # read by the kernel from the result's dimensions
    rule = jax.ffi.ffi_lowering(_target(op, "forward"))
    return rule(ctx, features, rois,
                **_attributes(op, spatial_scale, sampling_ratio, aligned, layout))


# ----------------------------------------------------------------- backward

roi_backward_p = Primitive("roi_backward")
roi_backward_p.def_impl(functools.partial(xla.apply_primitive, roi_backward_p))


def _backward_abstract(grad_out, rois, *argmax, op, features_shape, output_size,
                       spatial_scale, sampling_ratio, aligned, layout):
    return grad_out.update(shape=tuple(features_shape), dtype=geometry_dtype(grad_out.dtype))


roi_backward_p.def_abstract_eval(_backward_abstract)


def _backward_lowering(ctx, grad_out, rois, *argmax, op, features_shape, output_size,
                       spatial_scale, sampling_ratio, aligned, layout):
    del features_shape, output_size  # read by the kernel from buffer dimensions
    rule = jax.ffi.ffi_lowering(_target(op, "backward"))
    attrs = _attributes(op, spatial_scale, sampling_ratio, aligned, layout)
    if op == "pool":
        del attrs["spatial_scale"]  # the argmax says everything
    return rule(ctx, grad_out, rois, *argmax, **attrs)


for _platform in _ffi.KERNEL_PLATFORMS:
    mlir.register_lowering(roi_forward_p, _forward_lowering, platform=_platform)
    mlir.register_lowering(roi_backward_p, _backward_lowering, platform=_platform)
