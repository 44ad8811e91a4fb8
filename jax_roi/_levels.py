"""roi_align over a feature pyramid in one kernel call: each box is read
from its own level's map, so work and memory grow with the boxes, not with
boxes x levels.

  roi_levels_forward(boxes, levels, *maps) -> out            ("align_avg")
                                           -> out, argmax    ("align_max")
  roi_levels_backward(grad_out, boxes, levels[, argmax]) -> *grad_maps

boxes are [N, L, 4] per image, levels [N, L] int32 (an index into maps,
clamped by the kernel), maps [N, ...] finest first with one spatial scale
each. The output is that of roi_align on one map: [N, L, C, PH, PW] or
[N, L, PH, PW, C]. Gradients are float32 for 16-bit maps, as in
_primitives.
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.interpreters import ad, batching, mlir, xla

from . import _ffi, _sharding
from ._checks import geometry_dtype
from ._primitives import (_RoiPrimitive, _channels, _common_vma, _pooled_shape, _with_vma,
                          has_argmax, kernel_attributes, match_vma)

MAX_LEVELS = 8  # kMaxLevels in lib/roi_elements.h


def level_kernel_attributes(op, spatial_scales, sampling_ratio, aligned, layout):
    attrs = kernel_attributes(op, 1.0, sampling_ratio, aligned, layout)
    del attrs["spatial_scale"]
    attrs["spatial_scales"] = np.asarray(spatial_scales, np.float64)
    return attrs


def _target(op, direction):
    return _ffi.TARGET_PREFIX + op + "_levels_" + direction


# ------------------------------------------------------------------ forward

roi_levels_forward_p = _RoiPrimitive("roi_levels_forward")
roi_levels_forward_p.multiple_results = True
roi_levels_forward_p.def_impl(functools.partial(xla.apply_primitive, roi_levels_forward_p))


def _forward_abstract(boxes, levels, *maps, op, output_size, spatial_scales, sampling_ratio,
                      aligned, layout):
    first = maps[0]
    shape = _pooled_shape(boxes.shape, _channels(first.shape, layout), output_size, layout)
    sharding = _sharding.levels_forward_result_sharding(maps, boxes, layout)
    out = _with_vma(first.update(shape=shape, sharding=sharding),
                    _common_vma((boxes, levels, *maps)))
    return [out, out.update(dtype=jnp.int32)] if has_argmax(op) else [out]


roi_levels_forward_p.def_abstract_eval(_forward_abstract)


def _forward_lowering(ctx, boxes, levels, *maps, op, output_size, spatial_scales,
                      sampling_ratio, aligned, layout):
    del output_size  # read by the kernel from the result's dimensions
    boxes_aval, _, *map_avals = ctx.avals_in
    rule = jax.ffi.ffi_lowering(
        _target(op, "forward"),
        extra_attributes=_sharding.levels_forward_attributes(
            [a.shape for a in map_avals], boxes_aval.shape, [a.shape for a in ctx.avals_out],
            layout))
    return rule(ctx, boxes, levels, *maps, **level_kernel_attributes(
        op, spatial_scales, sampling_ratio, aligned, layout))


# ----------------------------------------------------------------- backward

roi_levels_backward_p = _RoiPrimitive("roi_levels_backward")
roi_levels_backward_p.multiple_results = True
roi_levels_backward_p.def_impl(functools.partial(xla.apply_primitive, roi_levels_backward_p))


def _backward_abstract(grad_out, boxes, levels, *argmax, op, map_shapes, output_size,
                       spatial_scales, sampling_ratio, aligned, layout):
    shardings = _sharding.levels_backward_result_shardings(grad_out, boxes, map_shapes, layout)
    vma = _common_vma((grad_out, boxes, levels, *argmax))
    return [_with_vma(grad_out.update(shape=tuple(shape), dtype=geometry_dtype(grad_out.dtype),
                                      sharding=sharding), vma)
            for shape, sharding in zip(map_shapes, shardings)]


roi_levels_backward_p.def_abstract_eval(_backward_abstract)


def _backward_lowering(ctx, grad_out, boxes, levels, *argmax, op, map_shapes, output_size,
                       spatial_scales, sampling_ratio, aligned, layout):
    del map_shapes, output_size  # read by the kernel from buffer dimensions
    grad_aval, boxes_aval, _, *argmax_avals = ctx.avals_in
    rule = jax.ffi.ffi_lowering(
        _target(op, "backward"),
        extra_attributes=_sharding.levels_backward_attributes(
            [grad_aval.shape] + [a.shape for a in argmax_avals], boxes_aval.shape,
            [a.shape for a in ctx.avals_out], layout))
    return rule(ctx, grad_out, boxes, levels, *argmax, **level_kernel_attributes(
        op, spatial_scales, sampling_ratio, aligned, layout))


for _platform in _ffi.KERNEL_PLATFORMS:
    mlir.register_lowering(roi_levels_forward_p, _forward_lowering, platform=_platform)
    mlir.register_lowering(roi_levels_backward_p, _backward_lowering, platform=_platform)


# -------------------------------------------------------------------- vmap
# Every operand and result leads with the image axis N, so a mapped axis B
# folds into it: B pyramids of N images are one pyramid of B*N images.

def _folded(args, dims):
    size = next(a.shape[d] for a, d in zip(args, dims) if d is not None)
    front = [jnp.broadcast_to(a, (size,) + a.shape) if d is None else jnp.moveaxis(a, d, 0)
             for a, d in zip(args, dims)]
    return size, [a.reshape((a.shape[0] * a.shape[1],) + a.shape[2:]) for a in front]


def _forward_batch(args, dims, **params):
    size, folded = _folded(args, dims)
    outs = roi_levels_forward_p.bind(*folded, **params)
    return [o.reshape((size, -1) + o.shape[1:]) for o in outs], [0] * len(outs)


def _backward_batch(args, dims, *, map_shapes, **params):
    size, folded = _folded(args, dims)
    grads = roi_levels_backward_p.bind(
        *folded, map_shapes=tuple((size * s[0],) + tuple(s[1:]) for s in map_shapes), **params)
    return [g.reshape((size,) + tuple(s)) for g, s in zip(grads, map_shapes)], [0] * len(grads)


batching.primitive_batchers[roi_levels_forward_p] = _forward_batch
batching.primitive_batchers[roi_levels_backward_p] = _backward_batch


# --------------------------------------------------------- differentiation
# As in _autodiff: "avg" is linear in the maps, so forward and backward are
# each other's transposes and derivatives of any order exist.

def _require_linear(op, what):
    if op != "align_avg":
        raise NotImplementedError(
            f"jax_roi: {what} of MultiScaleRoIAlign mode='max' is not implemented "
            "(its first derivative is; higher orders exist for mode='avg')")


def _zero_tangent(value):
    return ad.Zero(jax.typeof(value).to_tangent_aval())


def _forward_jvp(primals, tangents, **params):
    boxes, levels, *maps = primals
    outs = roi_levels_forward_p.bind(*primals, **params)
    map_tangents = tangents[2:]
    if all(type(t) is ad.Zero for t in map_tangents):
        return outs, [_zero_tangent(o) for o in outs]
    _require_linear(params["op"], "forward-mode differentiation")
    map_tangents = [ad.instantiate_zeros(t) for t in map_tangents]
    return outs, roi_levels_forward_p.bind(boxes, levels, *map_tangents, **params)


def _forward_transpose(cts, boxes, levels, *maps, **params):
    _require_linear(params["op"], "transposition")
    ct = cts[0]
    if type(ct) is ad.Zero:
        return [None, None] + [ad.Zero(m.aval) for m in maps]
    grads = roi_levels_backward_p.bind(ct, boxes, levels,
                                       map_shapes=tuple(m.aval.shape for m in maps), **params)
    return [None, None] + [g.astype(m.aval.dtype) for g, m in zip(grads, maps)]


def _backward_jvp(primals, tangents, **params):
    grad_out, boxes, levels, *argmax = primals
    outs = roi_levels_backward_p.bind(*primals, **params)
    if type(tangents[0]) is ad.Zero:
        return outs, [_zero_tangent(o) for o in outs]
    return outs, roi_levels_backward_p.bind(tangents[0], boxes, levels, *argmax, **params)


def _backward_transpose(cts, grad_out, boxes, levels, *argmax, map_shapes, **params):
    _require_linear(params["op"], "the second derivative")
    if all(type(ct) is ad.Zero for ct in cts):
        return [ad.Zero(grad_out.aval), None, None]
    cts = [ad.instantiate_zeros(ct).astype(grad_out.aval.dtype) for ct in cts]
    (out,) = roi_levels_forward_p.bind(boxes, levels, *cts, **params)
    return [out, None, None]


ad.primitive_jvps[roi_levels_forward_p] = _forward_jvp
ad.primitive_transposes[roi_levels_forward_p] = _forward_transpose
ad.primitive_jvps[roi_levels_backward_p] = _backward_jvp
ad.primitive_transposes[roi_levels_backward_p] = _backward_transpose


# ------------------------------------------------------- the differentiable op

class LevelStatic(NamedTuple):
    """Everything about a pyramid call that is not an array."""
    op: str
    map_shapes: tuple
    output_size: tuple
    spatial_scales: tuple
    sampling_ratio: int
    aligned: bool
    layout: str

    def forward(self):
        return {k: v for k, v in self._asdict().items() if k != "map_shapes"}


def roi_align_levels(maps, boxes, levels, static):
    """Each box of ``boxes`` ([N, L, 4]) pooled from ``maps[levels[n, l]]``.
    Arguments are checked by the caller (jax_roi.nn)."""
    # Cast outside the custom_vjp so shard_map sums replicated maps' gradients.
    boxes, levels, *maps = match_vma(boxes, levels, *maps)
    return _levels_vjp(tuple(maps), boxes, levels, static)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _levels_vjp(maps, boxes, levels, static):
    return roi_levels_forward_p.bind(boxes, levels, *maps, **static.forward())[0]


def _levels_fwd(maps, boxes, levels, static):
    out, *argmax = roi_levels_forward_p.bind(boxes, levels, *maps, **static.forward())
    return out, (boxes, levels, argmax)


def _levels_bwd(static, residuals, grad_out):
    boxes, levels, argmax = residuals
    grads = roi_levels_backward_p.bind(grad_out, boxes, levels, *argmax,
                                       map_shapes=static.map_shapes, **static.forward())
    return (tuple(g.astype(grad_out.dtype) for g in grads), jnp.zeros_like(boxes),
            np.zeros(levels.shape, jax.dtypes.float0))


_levels_vjp.defvjp(_levels_fwd, _levels_bwd)
