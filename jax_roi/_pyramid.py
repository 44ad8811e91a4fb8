"""roi_align over a feature pyramid in one call: each box is read from its
own level's map, so work and memory grow with the boxes, not with boxes x
levels. The op family's primitives with all their rules, and the public
functions multi_scale_roi_align and level_indices.

  levels_forward(boxes, levels, *maps) -> out            ("align_avg"; and
                                                          "align_max" bound
                                                          with winners=False)
                                       -> out, argmax    ("align_max")
  levels_winner(boxes, levels, *maps, argmax) -> out     (max tangent, pure JAX)
  levels_backward(grad_out, boxes, levels[, argmax]) -> *grad_maps
  levels_box_jvp(boxes, levels, box_tangents[, argmax], *maps) -> out_tangent
  levels_box_vjp(boxes, levels, grad_out[, argmax], *maps) -> box_cotangents

boxes are [N, L, 4] per image, levels [N, L] int32 (an index into maps,
clamped), maps [N, ...] finest first with one spatial scale each. The output
is that of roi_align on one map: [N, L, C, PH, PW] or [N, L, PH, PW, C].
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.interpreters import batching

from . import _autodiff, _checks, _ffi, _sharding, reference
from ._primitive import (RoiPrimitive, channels_of, check_kernel_available, common_vma,
                         kernel_attributes, match_vma, pooled_shape, register_lowerings,
                         with_vma)

levels_forward_p = RoiPrimitive("roi_levels_forward", multiple_results=True)
levels_winner_p = RoiPrimitive("roi_levels_winner", multiple_results=False)
levels_backward_p = RoiPrimitive("roi_levels_backward", multiple_results=True)
levels_box_jvp_p = RoiPrimitive("roi_levels_box_jvp", multiple_results=False)
levels_box_vjp_p = RoiPrimitive("roi_levels_box_vjp", multiple_results=False)


def _box_operands(operands, op):
    """(boxes, levels, tangents or grad_out, argmax list, maps) of a box primitive."""
    boxes, levels, second, *rest = operands
    argmax, maps = ([], rest) if op in reference.LINEAR_OPS else (rest[:1], rest[1:])
    return boxes, levels, second, argmax, maps


def level_kernel_attributes(op, spatial_scales, sampling_ratio, aligned, layout):
    attrs = kernel_attributes(op, 1.0, sampling_ratio, aligned, layout)
    del attrs["spatial_scale"], attrs["clockwise"]  # the pyramid kernels' own set
    attrs["spatial_scales"] = np.asarray(spatial_scales, np.float64)
    return attrs


# ------------------------------------------------------- abstract evaluation

def _pooled_aval(boxes, levels, maps, *, output_size, layout, **_):
    shape = pooled_shape(boxes.shape, channels_of(maps[0].shape, layout), output_size, layout)
    sharding = _sharding.levels_forward_result_sharding(maps, boxes, layout)
    return with_vma(maps[0].update(shape=shape, sharding=sharding),
                    common_vma((boxes, levels, *maps)))


def _forward_abstract(boxes, levels, *maps, op, winners=True, **params):
    out = _pooled_aval(boxes, levels, maps, **params)
    return _autodiff.forward_results(out, op, winners)


def _winner_abstract(boxes, levels, *maps_and_argmax, **params):
    *maps, argmax = maps_and_argmax
    return with_vma(_pooled_aval(boxes, levels, maps, **params),
                    common_vma((boxes, levels, *maps, argmax)))


def _backward_abstract(grad_out, boxes, levels, *argmax, map_shapes, layout, **_):
    shardings = _sharding.levels_backward_result_shardings(grad_out, boxes, map_shapes, layout)
    vma = common_vma((grad_out, boxes, levels, *argmax))
    return [with_vma(grad_out.update(shape=tuple(shape), sharding=sharding), vma)
            for shape, sharding in zip(map_shapes, shardings)]


def _box_jvp_abstract(*operands, op, **params):
    boxes, levels, _, _, maps = _box_operands(operands, op)
    return with_vma(_pooled_aval(boxes, levels, maps, **params), common_vma(operands))


def _box_vjp_abstract(*operands, op, layout, **_):
    boxes, _, grad_out, _, maps = _box_operands(operands, op)
    sharding = _sharding.levels_box_vjp_result_sharding(maps, boxes, grad_out, layout)
    return with_vma(boxes.update(sharding=sharding), common_vma(operands))


levels_forward_p.def_abstract_eval(_forward_abstract)
levels_winner_p.def_abstract_eval(_winner_abstract)
levels_backward_p.def_abstract_eval(_backward_abstract)
levels_box_jvp_p.def_abstract_eval(_box_jvp_abstract)
levels_box_vjp_p.def_abstract_eval(_box_vjp_abstract)


# ----------------------------------------------------------------- lowering

def _forward_kernel(ctx, boxes, levels, *maps, op, output_size, spatial_scales,
                    sampling_ratio, aligned, layout, winners=True):
    del output_size  # read by the kernel from the result's dimensions
    boxes_aval, _, *map_avals = ctx.avals_in
    rule = jax.ffi.ffi_lowering(
        _ffi.target(_autodiff.forward_kernel_name(op, winners, "_levels")),
        extra_attributes=_sharding.levels_forward_attributes(
            [a.shape for a in map_avals], boxes_aval.shape, [a.shape for a in ctx.avals_out],
            layout))
    return rule(ctx, boxes, levels, *maps, **level_kernel_attributes(
        op, spatial_scales, sampling_ratio, aligned, layout))


def _backward_kernel(ctx, grad_out, boxes, levels, *argmax, op, map_shapes, output_size,
                     spatial_scales, sampling_ratio, aligned, layout):
    del map_shapes, output_size  # read by the kernel from buffer dimensions
    grad_aval, boxes_aval, _, *argmax_avals = ctx.avals_in
    rule = jax.ffi.ffi_lowering(
        _ffi.target(op + "_levels_backward"),
        extra_attributes=_sharding.levels_backward_attributes(
            [grad_aval.shape] + [a.shape for a in argmax_avals], boxes_aval.shape,
            [a.shape for a in ctx.avals_out], layout))
    return rule(ctx, grad_out, boxes, levels, *argmax, **level_kernel_attributes(
        op, spatial_scales, sampling_ratio, aligned, layout))


def _box_kernel(kind):
    """The lowering of levels_box_jvp (kind "box_jvp") or levels_box_vjp ("box_vjp")."""
    def rule(ctx, *operands, op, output_size, spatial_scales, sampling_ratio, aligned, layout):
        del output_size  # read by the kernel from buffer dimensions
        boxes, _, second, argmax, maps = _box_operands(ctx.avals_in, op)
        pooled = second if kind == "box_vjp" else ctx.avals_out[0]
        lower = jax.ffi.ffi_lowering(
            _ffi.target(f"{op}_levels_{kind}"),
            extra_attributes=_sharding.levels_box_attributes(
                kind, [m.shape for m in maps], boxes.shape, pooled.shape,
                [a.shape for a in argmax], layout))
        return lower(ctx, *operands, **level_kernel_attributes(
            op, spatial_scales, sampling_ratio, aligned, layout))
    return rule


register_lowerings(levels_forward_p, reference.levels_forward, _forward_kernel)
register_lowerings(levels_winner_p, reference.levels_winner)
register_lowerings(levels_backward_p, reference.levels_backward, _backward_kernel, gradients=True)
register_lowerings(levels_box_jvp_p, reference.levels_box_jvp, _box_kernel("box_jvp"))
register_lowerings(levels_box_vjp_p, reference.levels_box_vjp, _box_kernel("box_vjp"))


# -------------------------------------------------------------------- vmap
# Every operand and result leads with the image axis N, so a mapped axis B
# folds into it: B pyramids of N images are one pyramid of B*N images.

def _folded(args, dims):
    size = next(a.shape[d] for a, d in zip(args, dims) if d is not None)
    front = [jnp.broadcast_to(a, (size,) + a.shape) if d is None else jnp.moveaxis(a, d, 0)
             for a, d in zip(args, dims)]
    return size, [a.reshape((a.shape[0] * a.shape[1],) + a.shape[2:]) for a in front], \
        front[0].shape[1]


def _pooled_batch(primitive, args, dims, **params):
    size, folded, images = _folded(args, dims)
    outs = primitive.bind(*folded, **params)
    unfold = lambda o: o.reshape((size, images) + o.shape[1:])
    if primitive.multiple_results:
        return [unfold(o) for o in outs], [0] * len(outs)
    return unfold(outs), 0


def _backward_batch(args, dims, *, map_shapes, **params):
    size, folded, _ = _folded(args, dims)
    grads = levels_backward_p.bind(
        *folded, map_shapes=tuple((size * s[0],) + tuple(s[1:]) for s in map_shapes), **params)
    return [g.reshape((size,) + tuple(s)) for g, s in zip(grads, map_shapes)], [0] * len(grads)


batching.primitive_batchers[levels_forward_p] = functools.partial(_pooled_batch,
                                                                  levels_forward_p)
batching.primitive_batchers[levels_winner_p] = functools.partial(_pooled_batch, levels_winner_p)
batching.primitive_batchers[levels_backward_p] = _backward_batch
for _box in (levels_box_jvp_p, levels_box_vjp_p):
    batching.primitive_batchers[_box] = functools.partial(_pooled_batch, _box)


# --------------------------------------------------------- differentiation

_autodiff.define_rules(_autodiff.Family(
    forward=levels_forward_p, winner=levels_winner_p, backward=levels_backward_p,
    box_jvp=levels_box_jvp_p, box_vjp=levels_box_vjp_p,
    split=lambda operands: (list(operands[2:]), list(operands[:2])),
    join=lambda maps, geometry: list(geometry) + list(maps),
    box_join=lambda maps, geometry, second, argmax: [*geometry, second, *argmax, *maps],
    box_split=lambda operands, linear: (operands[3 if linear else 4:], operands[:2], operands[2],
                                        [] if linear else operands[3:4]),
    shapes_param="map_shapes", shapes=lambda avals: tuple(tuple(a.shape) for a in avals),
    num_geometry=2))


# ---------------------------------------------------------- the public ops

def _levels_of(boxes, levels, canonical_scale, canonical_level):
    width = boxes[..., 2] - boxes[..., 0]
    height = boxes[..., 3] - boxes[..., 1]
    area = width * height
    size = jnp.sqrt(jnp.where(area > 0, area, 0))  # NaN -> 0 -> level -inf
    level = jnp.floor(canonical_level + jnp.log2(size / canonical_scale) + 1e-6)
    level = jnp.clip(level, levels[0], levels[-1])
    return (level - levels[0]).astype(jnp.int32)


def level_indices(boxes, scales, canonical_scale=224, canonical_level=4):
    """The index into the maps (finest first) from which each box is pooled.

    A box of area ``A`` goes to level ``floor(canonical_level + log2(sqrt(A)
    / canonical_scale) + 1e-6)``, the map of scale ``2**-k`` being level
    ``k``, clamped to the levels present; boxes of zero, negative or NaN area
    go to the finest map. ``boxes`` has any shape ``[..., 4]``; the result
    is int32 of shape ``[...]``.
    """
    levels = _checks.pyramid_levels(scales)
    boxes = jnp.asarray(boxes)
    if boxes.shape[-1:] != (4,):
        raise ValueError(
            f"boxes must have a last dimension of 4 (x1, y1, x2, y2); got shape {boxes.shape}")
    if not jnp.issubdtype(boxes.dtype, jnp.floating):
        boxes = boxes.astype(jnp.float32)
    return _levels_of(boxes, levels, _checks.canonical_scale_value(canonical_scale),
                      _checks.canonical_level_value(canonical_level))


def multi_scale_roi_align(features, boxes, output_size, scales, sampling_ratio=-1,
                          aligned=False, canonical_scale=224, canonical_level=4, *, mode="avg",
                          layout="NCHW", implementation=None):
    """ROI Align over a feature pyramid, each box read from one level's map.

    Args:
      features: a sequence of maps, finest first, sharing batch size,
        channels and dtype; each ``[N, C, H, W]`` (NCHW) or ``[N, H, W, C]``.
      boxes: ``[N, L, 4]`` ``(x1, y1, x2, y2)`` per image, in image coordinates.
      output_size: ``PH`` or ``(PH, PW)``.
      scales: each map's size over the image's, consecutive powers of two,
        finest first, e.g. ``(1/4, 1/8, 1/16, 1/32)``; at most eight.
      sampling_ratio, aligned, mode, layout, implementation: as in
        :func:`jax_roi.roi_align`.
      canonical_scale, canonical_level: the box size (image pixels) that maps
        to the level ``canonical_level``; see :func:`level_indices`.

    Returns:
      ``[N, L, C, PH, PW]`` (NCHW) or ``[N, L, PH, PW, C]`` (NHWC): each box
      equals ``roi_align`` on the map of its level, and only that map gets its
      gradient; ``boxes`` get the derivative of roi_align on that map (the
      level assignment is held fixed). One kernel call pools every box from
      its own level, reading the maps in place, forward and backward. Like
      ``torchvision.ops.MultiScaleRoIAlign`` with the same level rule.
    """
    layout = _checks.choice("layout", layout, _checks.LAYOUTS)
    mode = _checks.choice("mode", mode, _checks.ALIGN_MODES)
    levels = _checks.pyramid_levels(scales)
    canonical_scale = _checks.canonical_scale_value(canonical_scale)
    canonical_level = _checks.canonical_level_value(canonical_level)
    maps = _checks.pyramid_maps(features, len(levels), layout)
    boxes = _checks.pyramid_boxes(boxes, maps)
    op = "align_" + mode
    if mode == "max":
        for level_map in maps:
            _checks.check_argmax_range(level_map, layout, op)
    implementation = _checks.implementation_value(implementation)
    check_kernel_available(implementation)
    index = _levels_of(boxes, levels, canonical_scale, canonical_level)
    # Cast before bind, so shard_map sums the gradients of replicated maps.
    boxes, index, *maps = match_vma(boxes, index, *maps)
    return levels_forward_p.bind(
        boxes, index, *maps, op=op, winners=False,
        output_size=_checks.output_size_pair(output_size),
        spatial_scales=tuple(2.0 ** -k for k in levels),
        sampling_ratio=_checks.sampling_ratio_value(sampling_ratio),
        aligned=_checks.aligned_value(aligned), layout=layout,
        implementation=implementation)[0]
