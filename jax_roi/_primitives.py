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

from . import _ffi, _sharding
from ._checks import geometry_dtype

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


def kernel_attributes(op, spatial_scale, sampling_ratio, aligned, layout):
    """The attributes a kernel's handler binds, typed as it decodes them (f64, i64, bool)."""
    attrs = {"channels_last": layout == "NHWC", "spatial_scale": np.float64(spatial_scale)}
    if op != "pool":
        attrs["sampling_ratio"] = np.int64(sampling_ratio)
        attrs["aligned"] = bool(aligned)
    return attrs


# ------------------------------------------- varying manual axes (shard_map)
#
# Inside shard_map every value records the manual mesh axes along which it
# varies (its vma). A result varies wherever any input does, and the inputs
# are first cast to that common set: the cast of a replicated input (say,
# features shared by devices that hold different ROIs) is what makes its
# gradient be summed over those devices, as the transpose of the cast.
# Without it each device would keep only its own part of the gradient. The
# public ops cast before their custom_vjp, whose cotangents must have the
# vma of its inputs; the primitives cast again for every other caller.

def _vma(aval):
    mat = getattr(aval, "manual_axis_type", None)  # jax >= 0.10
    return frozenset(mat.varying if mat is not None else getattr(aval, "vma", ()))


def _with_vma(aval, vma):
    if getattr(aval, "manual_axis_type", None) is not None:
        return aval.update(manual_axis_type=aval.manual_axis_type.update(varying=vma))
    return aval.update(vma=vma) if hasattr(aval, "vma") else aval


def _common_vma(avals):
    return frozenset().union(*map(_vma, avals))


def match_vma(*args):
    """The arguments, each cast to vary along every axis any of them does."""
    vma = _common_vma(map(jax.typeof, args))
    out = []
    for x in args:
        missing = vma - _vma(jax.typeof(x))
        out.append(jax.lax.pcast(x, tuple(missing), to="varying") if missing else x)
    return out


class _RoiPrimitive(Primitive):
    """A primitive whose inputs are brought to a common vma when bound."""

    def bind(self, *args, **params):
        return super().bind(*match_vma(*args), **params)


# ------------------------------------------------------------------ forward

roi_forward_p = _RoiPrimitive("roi_forward")
roi_forward_p.multiple_results = True
roi_forward_p.def_impl(functools.partial(xla.apply_primitive, roi_forward_p))


def _forward_abstract(features, rois, *, op, output_size, spatial_scale, sampling_ratio,
                      aligned, layout):
    shape = _pooled_shape(rois.shape, _channels(features.shape, layout), output_size, layout)
    sharding = _sharding.forward_result_sharding(features, rois, layout)
    out = _with_vma(features.update(shape=shape, sharding=sharding),
                    _common_vma((features, rois)))
    if not has_argmax(op):
        return [out]
    return [out, out.update(dtype=jnp.int32)]


roi_forward_p.def_abstract_eval(_forward_abstract)


def _forward_lowering(ctx, features, rois, *, op, output_size, spatial_scale, sampling_ratio,
                      aligned, layout):
    del output_size  # read by the kernel from the result's dimensions
    features_aval, rois_aval = ctx.avals_in
    rule = jax.ffi.ffi_lowering(
        _target(op, "forward"),
        extra_attributes=_sharding.forward_attributes(
            features_aval.shape, rois_aval.shape, [a.shape for a in ctx.avals_out], layout))
    return rule(ctx, features, rois,
                **kernel_attributes(op, spatial_scale, sampling_ratio, aligned, layout))


# ----------------------------------------------------------------- backward

roi_backward_p = _RoiPrimitive("roi_backward")
roi_backward_p.def_impl(functools.partial(xla.apply_primitive, roi_backward_p))


def _backward_abstract(grad_out, rois, *argmax, op, features_shape, output_size,
                       spatial_scale, sampling_ratio, aligned, layout):
    grad = grad_out.update(shape=tuple(features_shape), dtype=geometry_dtype(grad_out.dtype),
                           sharding=_sharding.backward_result_sharding(grad_out, rois, argmax,
                                                                       layout))
    return _with_vma(grad, _common_vma((grad_out, rois, *argmax)))


roi_backward_p.def_abstract_eval(_backward_abstract)


def _backward_lowering(ctx, grad_out, rois, *argmax, op, features_shape, output_size,
                       spatial_scale, sampling_ratio, aligned, layout):
    del features_shape, output_size  # read by the kernel from buffer dimensions
    grad_aval, rois_aval, *argmax_avals = ctx.avals_in
    rule = jax.ffi.ffi_lowering(
        _target(op, "backward"),
        extra_attributes=_sharding.backward_attributes(
            [grad_aval.shape] + [a.shape for a in argmax_avals], rois_aval.shape,
            ctx.avals_out[0].shape, layout))
    attrs = kernel_attributes(op, spatial_scale, sampling_ratio, aligned, layout)
    return rule(ctx, grad_out, rois, *argmax, **attrs)


for _platform in _ffi.KERNEL_PLATFORMS:
    mlir.register_lowering(roi_forward_p, _forward_lowering, platform=_platform)
    mlir.register_lowering(roi_backward_p, _backward_lowering, platform=_platform)
