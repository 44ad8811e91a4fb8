"""What every jax_roi primitive shares: inputs brought to a common set of
varying manual axes (shard_map), and lowerings to a compiled kernel where
the platform has one and to the pure-JAX implementation everywhere else.

Every primitive carries the parameter ``implementation``: ``None`` (the
kernel where the platform being lowered for has one, pure JAX elsewhere),
``"kernel"`` or ``"xla"``. It is resolved per platform at lowering, so one
exported artifact holds the kernel for CPU and CUDA and pure JAX for TPU.
"""

import functools

import jax
import numpy as np
from jax.extend.core import Primitive
from jax.extend.mlir.dialects import stablehlo
from jax.interpreters import mlir, xla

from . import _ffi
from ._checks import geometry_dtype

# ------------------------------------------- varying manual axes (shard_map)
#
# Inside shard_map every value records the manual mesh axes along which it
# varies (its vma). A result varies wherever any input does, and the inputs
# are first cast to that common set: the cast of a replicated input (say,
# features shared by devices that hold different ROIs) is what makes its
# gradient be summed over those devices, as the transpose of the cast.


def _vma(aval):
    mat = getattr(aval, "manual_axis_type", None)  # jax >= 0.10
    return frozenset(mat.varying if mat is not None else getattr(aval, "vma", ()))


def with_vma(aval, vma):
    if getattr(aval, "manual_axis_type", None) is not None:
        return aval.update(manual_axis_type=aval.manual_axis_type.update(varying=vma))
    return aval.update(vma=vma) if hasattr(aval, "vma") else aval


def common_vma(avals):
    return frozenset().union(*map(_vma, avals))


def match_vma(*args):
    """The arguments, each cast to vary along every axis any of them does."""
    vma = common_vma(map(jax.typeof, args))
    out = []
    for x in args:
        missing = vma - _vma(jax.typeof(x))
        out.append(jax.lax.pcast(x, tuple(missing), to="varying") if missing else x)
    return out


class RoiPrimitive(Primitive):
    """A primitive whose inputs are brought to a common vma when bound."""

    def __init__(self, name, multiple_results):
        super().__init__(name)
        self.multiple_results = multiple_results
        self.def_impl(functools.partial(xla.apply_primitive, self))

    def bind(self, *args, **params):
        return super().bind(*match_vma(*args), **params)


# ------------------------------------------------------- shapes and lowering

def pooled_shape(rois_shape, channels, output_size, layout):
    lead = tuple(rois_shape[:1]) if len(rois_shape) == 2 else tuple(rois_shape[:2])
    ph, pw = output_size
    return lead + ((channels, ph, pw) if layout == "NCHW" else (ph, pw, channels))


def channels_of(features_shape, layout):
    return features_shape[1] if layout == "NCHW" else features_shape[3]


def kernel_attributes(op, spatial_scale, sampling_ratio, aligned, layout, clockwise=False):
    """The attributes every single-map kernel's handler decodes (lib/ffi_problem.h's
    Geometry), typed as it decodes them (f64, i64, bool); each op reads those it needs."""
    del op  # every kernel takes the same attributes
    return {"spatial_scale": np.float64(spatial_scale), "sampling_ratio": np.int64(sampling_ratio),
            "aligned": bool(aligned), "clockwise": bool(clockwise),
            "channels_last": layout == "NHWC"}


def _no_kernel(ctx, name):
    platforms = ", ".join(ctx.module_context.platforms)
    raise ValueError(
        f"jax_roi: implementation='kernel' asks for a compiled kernel of {name}, but there is "
        f"none for {platforms} (kernels exist for {', '.join(_ffi.KERNEL_PLATFORMS)}); "
        "use implementation=None or 'xla'")


def _local(aval):
    return jax.core.ShapedArray(aval.shape, aval.dtype, weak_type=aval.weak_type)


def _in_dtype_of_first_operand(impl):
    """impl, its results cast to its first operand's dtype (a feature gradient
    summed in the geometry dtype, returned in the features' dtype)."""
    def cast(*args, **params):
        results = impl(*args, **params)
        dtype = args[0].dtype
        if isinstance(results, (list, tuple)):
            return type(results)(r.astype(dtype) for r in results)
        return results.astype(dtype)
    return cast


def _widened(kernel_rule):
    """kernel_rule run with results in the geometry dtype, then converted to the
    declared dtype: the gradients of a platform whose kernels return 16-bit
    gradients in float32 (_ffi.NARROWING_PLATFORMS lists those that do not)."""
    def rule(ctx, *args, **params):
        wide = [a.update(dtype=geometry_dtype(a.dtype)) for a in ctx.avals_out]
        results = kernel_rule(ctx.replace(avals_out=wide), *args, **params)
        return [r if a.dtype == w.dtype
                else stablehlo.convert(mlir.aval_to_ir_type(ctx.module_context, a), r)
                for a, w, r in zip(ctx.avals_out, wide, results)]
    return rule


def register_lowerings(primitive, xla_impl, kernel_rule=None, gradients=False):
    """Lowers `primitive` to `kernel_rule` on the platforms with compiled
    kernels and to `xla_impl`, a jnp function of the primitive's operands and
    parameters, everywhere else and whenever implementation="xla".

    `gradients`: the results are feature gradients in the dtype of the first
    operand (the output's gradient), which xla_impl and some platforms'
    kernels sum in the geometry dtype."""
    if gradients:
        xla_impl = _in_dtype_of_first_operand(xla_impl)
    traced = mlir.lower_fun(xla_impl, multiple_results=primitive.multiple_results)

    def xla_rule(ctx, *args, **params):
        # Traced as the code of one device: the lowering is local HLO, which
        # the partitioner splits like any other, so the jnp code must not
        # see the operands' mesh shardings or shard_map's varying axes.
        local = ctx.replace(avals_in=[_local(a) for a in ctx.avals_in],
                            avals_out=[_local(a) for a in ctx.avals_out])
        return traced(local, *args, **params)

    def default_rule(ctx, *args, implementation, **params):
        if implementation == "kernel" and kernel_rule is not None:
            _no_kernel(ctx, primitive.name)
        return xla_rule(ctx, *args, implementation=implementation, **params)

    mlir.register_lowering(primitive, default_rule)
    if kernel_rule is None:
        return

    for platform in _ffi.KERNEL_PLATFORMS:
        narrows = not gradients or platform in _ffi.NARROWING_PLATFORMS
        platform_kernel_rule = kernel_rule if narrows else _widened(kernel_rule)

        def kernel_platform_rule(ctx, *args, implementation, _kernel_rule=platform_kernel_rule,
                                 **params):
            if implementation == "xla":
                return xla_rule(ctx, *args, implementation=implementation, **params)
            return _kernel_rule(ctx, *args, **params)

        mlir.register_lowering(primitive, kernel_platform_rule, platform=platform)


def check_kernel_available(implementation):
    """implementation="kernel" on a default backend without kernels fails
    at trace time (lowering for another platform fails at lowering)."""
    if implementation == "kernel":
        platform = jax.devices()[0].client.platform  # "cpu", "cuda", "rocm", "tpu"
        platform = "cuda" if platform == "gpu" else platform  # as older clients name CUDA
        if platform not in _ffi.KERNEL_PLATFORMS:
            raise ValueError(
                f"implementation='kernel': jax_roi has no compiled kernels for the {platform} "
                f"backend (kernels exist for {', '.join(_ffi.KERNEL_PLATFORMS)}); use "
                "implementation=None or 'xla'")
