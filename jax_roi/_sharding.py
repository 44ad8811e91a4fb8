"""How the partitioner may split the custom calls across devices.

XLA splits a custom call only through a partitioner registered for its
target. The one jax_roi uses is XLA's batch partitioner (_ffi.py registers
every target with it): a call that carries the frontend attribute
`num_batch_dims = 1` is split along the leading dimension of every operand
and result together, and gets every other dimension whole. That suits
[N, L, 4] boxes, where features, boxes, outputs and feature gradients all
lead with the image dimension N and each image is pooled on its own. It
does not suit [K, 5] ROIs, whose batch index points anywhere in the
features, so those calls never carry the attribute.

Shardy, JAX's partitioner, plans the shardings around each call from an
`sdy.sharding_rule` that names a factor for each dimension of every operand
and result. The rule below tells it exactly what the batch partitioner
will do: the factor "n" of per-image boxes may be split, every other
factor must be whole on each device (a dimension split anyway is gathered
before the call).
"""

from jax.extend.mlir.dialects import sdy
from jax.interpreters import mlir
from jax.sharding import PartitionSpec

SPLIT = "n"  # the only factor the batch partitioner can split


def _per_image(rois_shape):
    return len(rois_shape) == 3


def _features_factors(layout, per_image_boxes):
    n = SPLIT if per_image_boxes else "b"  # b: images addressed by a global index
    return (n, "c", "h", "w") if layout == "NCHW" else (n, "h", "w", "c")


def _rois_factors(per_image_boxes):
    return (SPLIT, "l", "xy") if per_image_boxes else ("k", "xy")


def _pooled_factors(layout, per_image_boxes, position_sensitive=False):
    lead = (SPLIT, "l") if per_image_boxes else ("k",)
    c = "c_out" if position_sensitive else "c"  # the ps ops' C / (PH*PW) channels
    return lead + ((c, "ph", "pw") if layout == "NCHW" else ("ph", "pw", c))


def _rule(operands, results):
    """An OpShardingRuleAttr from (shape, factor names) pairs."""
    sizes = {}
    for shape, names in operands + results:
        for size, name in zip(shape, names):
            sizes.setdefault(name, size)
    index = {name: i for i, name in enumerate(sizes)}

    def mapping(names):
        return sdy.TensorMappingAttr.get(
            dim_mappings=[sdy.DimMappingAttr.get(factor_indices=[index[n]]) for n in names])

    return sdy.OpShardingRuleAttr.get(
        factor_sizes=list(sizes.values()),
        operand_mappings=[mapping(names) for _, names in operands],
        result_mappings=[mapping(names) for _, names in results],
        need_replication_factors=[i for name, i in index.items() if name != SPLIT],
        is_custom=True)


def _attributes(operands, results, per_image_boxes):
    attrs = {"sdy.sharding_rule": _rule(operands, results)}
    if per_image_boxes:
        attrs["mhlo.frontend_attributes"] = mlir.ir_attribute({"num_batch_dims": "1"})
    return attrs


def forward_attributes(features_shape, rois_shape, result_shapes, layout,
                       position_sensitive=False):
    """Custom-call attributes of roi_forward(features, rois) -> out[, argmax]."""
    boxes = _per_image(rois_shape)
    pooled = _pooled_factors(layout, boxes, position_sensitive)
    return _attributes([(features_shape, _features_factors(layout, boxes)),
                        (rois_shape, _rois_factors(boxes))],
                       [(shape, pooled) for shape in result_shapes], boxes)


def backward_attributes(pooled_shapes, rois_shape, features_shape, layout,
                        position_sensitive=False):
    """Custom-call attributes of roi_backward(grad_out, rois[, argmax]) -> grad."""
    boxes = _per_image(rois_shape)
    pooled = _pooled_factors(layout, boxes, position_sensitive)
    operands = [(pooled_shapes[0], pooled), (rois_shape, _rois_factors(boxes))]
    operands += [(shape, pooled) for shape in pooled_shapes[1:]]
    return _attributes(operands, [(features_shape, _features_factors(layout, boxes))], boxes)


def box_attributes(kind, features_shape, rois_shape, pooled_shape, argmax_shapes, layout,
                   position_sensitive=False):
    """Custom-call attributes of box_jvp(features, rois, roi_tangents[, argmax])
    -> out_tangent (kind "box_jvp") or box_vjp(features, rois, grad_out[,
    argmax]) -> roi_cotangents ("box_vjp")."""
    boxes = _per_image(rois_shape)
    pooled = _pooled_factors(layout, boxes, position_sensitive)
    rois = _rois_factors(boxes)
    second = (rois_shape, rois) if kind == "box_jvp" else (pooled_shape, pooled)
    operands = [(features_shape, _features_factors(layout, boxes)), (rois_shape, rois), second]
    operands += [(shape, pooled) for shape in argmax_shapes]
    result = (pooled_shape, pooled) if kind == "box_jvp" else (rois_shape, rois)
    return _attributes(operands, [result], boxes)


# A pyramid call (_pyramid.py) always has per-image boxes, and levels [N, L];
# each map has its own spatial factors.

def _map_factors(layout, i):
    return (SPLIT, "c", f"h{i}", f"w{i}") if layout == "NCHW" else (SPLIT, f"h{i}", f"w{i}", "c")


def _levels_operands(map_shapes, rois_shape, layout):
    return ([(rois_shape, _rois_factors(True)), (rois_shape[:2], (SPLIT, "l"))],
            [(shape, _map_factors(layout, i)) for i, shape in enumerate(map_shapes)])


def levels_forward_attributes(map_shapes, rois_shape, result_shapes, layout):
    """Custom-call attributes of roi_levels_forward(boxes, levels, *maps)."""
    geometry, maps = _levels_operands(map_shapes, rois_shape, layout)
    pooled = _pooled_factors(layout, True)
    return _attributes(geometry + maps, [(shape, pooled) for shape in result_shapes], True)


def levels_backward_attributes(pooled_shapes, rois_shape, map_shapes, layout):
    """Custom-call attributes of roi_levels_backward(grad_out, boxes, levels[, argmax])."""
    geometry, maps = _levels_operands(map_shapes, rois_shape, layout)
    pooled = _pooled_factors(layout, True)
    grad_out, *argmax = [(shape, pooled) for shape in pooled_shapes]
    return _attributes([grad_out] + geometry + argmax, maps, True)


def levels_box_attributes(kind, map_shapes, rois_shape, pooled_shape, argmax_shapes, layout):
    """Custom-call attributes of roi_levels_box_jvp(boxes, levels, box_tangents[,
    argmax], *maps) or roi_levels_box_vjp(boxes, levels, grad_out[, argmax], *maps)."""
    geometry, maps = _levels_operands(map_shapes, rois_shape, layout)
    pooled = _pooled_factors(layout, True)
    rois = _rois_factors(True)
    second = (rois_shape, rois) if kind == "box_jvp" else (pooled_shape, pooled)
    operands = geometry + [second] + [(shape, pooled) for shape in argmax_shapes] + maps
    result = (pooled_shape, pooled) if kind == "box_jvp" else (rois_shape, rois)
    return _attributes(operands, [result], True)


# --------------------------------------------- result shardings of the avals
#
# With explicit mesh axes (what jax.make_mesh gives by default) every abstract
# value carries its sharding, so the abstract evaluation names the results'
# too: split along N as the inputs' N is for per-image boxes, whole otherwise,
# which is what the partitioner will produce.

def _result_sharding(operands, result_names):
    base = next((s for s, _ in operands if not s.mesh.empty), operands[0][0])
    split = next((entry for sharding, names in operands
                  for entry, name in zip(sharding.spec, names)
                  if name == SPLIT and entry is not None), None)
    return base.update(spec=PartitionSpec(*(split if n == SPLIT else None
                                            for n in result_names)))


def forward_result_sharding(features, rois, layout):
    """The sharding of roi_forward's results, from its inputs' avals."""
    boxes = _per_image(rois.shape)
    return _result_sharding([(features.sharding, _features_factors(layout, boxes)),
                             (rois.sharding, _rois_factors(boxes))],
                            _pooled_factors(layout, boxes))


def backward_result_sharding(grad_out, rois, argmax, layout):
    """The sharding of roi_backward's result, from its inputs' avals."""
    boxes = _per_image(rois.shape)
    pooled = _pooled_factors(layout, boxes)
    operands = [(grad_out.sharding, pooled), (rois.sharding, _rois_factors(boxes))]
    operands += [(a.sharding, pooled) for a in argmax]
    return _result_sharding(operands, _features_factors(layout, boxes))


def levels_forward_result_sharding(maps, rois, layout):
    """The sharding of roi_levels_forward's results."""
    return _result_sharding([(rois.sharding, _rois_factors(True))]
                            + [(m.sharding, _map_factors(layout, i)) for i, m in enumerate(maps)],
                            _pooled_factors(layout, True))


def levels_backward_result_shardings(grad_out, rois, map_shapes, layout):
    """The shardings of roi_levels_backward's results, one per map."""
    operands = [(grad_out.sharding, _pooled_factors(layout, True)),
                (rois.sharding, _rois_factors(True))]
    return [_result_sharding(operands, _map_factors(layout, i)) for i in range(len(map_shapes))]


def box_vjp_result_sharding(features, rois, grad_out, layout):
    """The sharding of box_vjp's result (the ROIs' cotangent)."""
    boxes = _per_image(rois.shape)
    return _result_sharding([(features.sharding, _features_factors(layout, boxes)),
                             (rois.sharding, _rois_factors(boxes)),
                             (grad_out.sharding, _pooled_factors(layout, boxes))],
                            _rois_factors(boxes))


def levels_box_vjp_result_sharding(maps, rois, grad_out, layout):
    """The sharding of roi_levels_box_vjp's result (the boxes' cotangent)."""
    return _result_sharding([(rois.sharding, _rois_factors(True)),
                             (grad_out.sharding, _pooled_factors(layout, True))]
                            + [(m.sharding, _map_factors(layout, i)) for i, m in enumerate(maps)],
                            _rois_factors(True))
