"""Forward and reverse mode for every op family from one mechanism: JVP and
transpose rules on the primitives, as jax.lax ops have.

A family has these primitives:

  forward(*operands) -> out            (the linear ops, reference.LINEAR_OPS)
                     -> out, argmax    (max modes: argmax records each
                                        output element's winner)
                     -> out            (max modes bound with winners=False, as
                                        the public ops bind them: a call that
                                        is not differentiated writes no
                                        argmax; its JVP binds winners=True)
  winner(*operands, argmax) -> out     the features read through the
                                       recorded winners: linear in the
                                       features, pure JAX (a gather)
  backward(grad_out, *geometry[, argmax]) -> grads   the backward kernel
  box_jvp(features, geometry, roi_tangents[, argmax]) -> out_tangent
  box_vjp(features, geometry, grad_out[, argmax]) -> roi_cotangents
                                       the derivative with respect to the
                                       ROIs (the first geometry operand),
                                       for reference.BOX_OPS

The operands are feature maps and geometry (ROIs, levels). The tangent of
the output is forward(tangent) for the linear ops and winner(tangent, argmax) for the
max modes; transposing either gives the backward kernel, which is what
reverse mode runs. backward is linear in grad_out and transposes back to
forward or winner, so derivatives of every order in the features follow.

The ROIs' tangent adds box_jvp(...) to the output's tangent, only when the
ROIs are differentiated (a gradient with respect to the features alone
runs no box work). box_jvp is linear in the ROIs' tangent and transposes
to box_vjp, which reverse mode runs, and back. Derivatives of the box
derivative with respect to the ROIs (second order in the boxes, or mixed
with the features' gradient) are not implemented and raise.
"""

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax.interpreters import ad

from ._primitive import RoiPrimitive
from .reference import BOX_OPS, LINEAR_OPS


class Family(NamedTuple):
    forward: RoiPrimitive
    winner: RoiPrimitive
    backward: RoiPrimitive
    box_jvp: RoiPrimitive
    box_vjp: RoiPrimitive
    split: Callable     # forward operands -> (feature operands, geometry operands)
    join: Callable      # (feature operands, geometry operands) -> forward operands
    box_join: Callable  # (features, geometry, tangent or grad_out, argmax) -> box operands
    box_split: Callable  # (box operands, is linear) -> what box_join took
    shapes_param: str   # backward's parameter naming the gradients' shapes
    shapes: Callable    # feature avals -> that parameter's value
    num_geometry: int


def _zero(value):
    return ad.Zero(jax.typeof(value).to_tangent_aval())


def _as_list(result):
    return list(result) if isinstance(result, (list, tuple)) else [result]


def _as_cotangent(grad, aval):
    """A gradient in its features' dtype and, on an explicit mesh, their sharding."""
    grad = grad.astype(aval.dtype)
    sharding = getattr(aval, "sharding", None)
    if (sharding is None or sharding.mesh.empty
            or jax.typeof(grad).sharding.spec == sharding.spec):
        return grad
    return jax.sharding.reshard(grad, sharding)


def forward_results(out, op, winners):
    """A forward primitive's result avals, from its output's."""
    if op in LINEAR_OPS or not winners:
        return [out]
    return [out, out.update(dtype=jnp.int32)]


def forward_kernel_name(op, winners, family=""):
    """The forward kernel of `op` (lib/kernel_list.h): a max op without its
    winners has a kernel of its own that writes none."""
    values = "" if op in LINEAR_OPS or winners else "_values"
    return f"{op}{family}{values}_forward"


def define_rules(f):
    is_linear = lambda params: params["op"] in LINEAR_OPS

    def tangent_out(feature_tangents, geometry, argmax, params):
        operands = f.join(feature_tangents, geometry)
        if is_linear(params):
            return f.forward.bind(*operands, **params)[0]
        return f.winner.bind(*operands, argmax, **params)

    def pull_back(ct, geometry, argmax, features, params):
        if type(ct) is ad.Zero:
            return [ad.Zero(x.aval) for x in features]
        grads = _as_list(f.backward.bind(ct, *geometry, *argmax,
                                         **{f.shapes_param: f.shapes([x.aval for x in features])},
                                         **params))
        return [_as_cotangent(g, x.aval) for g, x in zip(grads, features)]

    def feature_tangents_of(operand_tangents):
        """The features' tangents, or None when all are zero (roi_tangent_of reads the ROIs')."""
        tangents, _ = f.split(operand_tangents)
        if all(type(t) is ad.Zero for t in tangents):
            return None
        return [ad.instantiate_zeros(t) for t in tangents]

    def roi_tangent_of(operand_tangents, params):
        """The ROIs' tangent, or None when it is zero or the op has no box derivative."""
        _, geometry_tangents = f.split(operand_tangents)
        t = geometry_tangents[0]
        if type(t) is ad.Zero or params["op"] not in BOX_OPS:
            return None
        return ad.instantiate_zeros(t)

    def refuse_roi_tangent(roi_tangent, params, what):
        """Second derivatives involving the boxes are not implemented: raise
        rather than return 0."""
        if params["op"] in BOX_OPS and type(roi_tangent) is not ad.Zero:
            raise NotImplementedError(
                f"jax_roi: the derivative of {what} with respect to rois (a second derivative "
                "involving the boxes) is not implemented")

    def forward_jvp(primals, tangents, *, winners=True, **params):
        # The max modes' tangent reads the winners: they are computed here
        # even where the call being differentiated did not ask for them.
        outs = f.forward.bind(*primals, **params)
        kept = len(outs) if winners else 1
        features, geometry = f.split(primals)
        feature_tangents = feature_tangents_of(tangents)
        roi_tangent = roi_tangent_of(tangents, params)
        zeros = [_zero(o) for o in outs[:kept]]
        argmax = outs[1:]
        out_tangent = None
        if feature_tangents is not None:
            out_tangent = tangent_out(feature_tangents, geometry, argmax[0] if argmax else None,
                                      params)
        if roi_tangent is not None:
            moved = f.box_jvp.bind(*f.box_join(features, geometry, roi_tangent, argmax), **params)
            out_tangent = moved if out_tangent is None else out_tangent + moved
        if out_tangent is None:
            return outs[:kept], zeros
        return outs[:kept], [out_tangent] + zeros[1:]

    def forward_transpose(cts, *operands, winners=True, **params):
        del winners  # the linear ops have none
        if not is_linear(params):
            raise NotImplementedError(
                f"jax_roi: {f.forward.name} with op={params['op']!r} is not linear")
        features, geometry = f.split(operands)
        return f.join(pull_back(cts[0], geometry, [], features, params),
                      [None] * len(geometry))

    def winner_jvp(primals, tangents, **params):
        *operands, argmax = primals
        refuse_roi_tangent(f.split(tangents[:-1])[1][0], params, "the max modes' tangent")
        out = f.winner.bind(*primals, **params)
        _, geometry = f.split(operands)
        feature_tangents = feature_tangents_of(tangents[:-1])
        if feature_tangents is None:
            return out, _zero(out)
        return out, f.winner.bind(*f.join(feature_tangents, geometry), argmax, **params)

    def winner_transpose(ct, *args, **params):
        *operands, argmax = args
        features, geometry = f.split(operands)
        return f.join(pull_back(ct, geometry, [argmax], features, params),
                      [None] * len(geometry)) + [None]

    def backward_jvp(primals, tangents, **params):
        # grad_out, then the geometry: the ROIs first
        refuse_roi_tangent(tangents[1], params, "the features' gradient")
        out = f.backward.bind(*primals, **params)
        if type(tangents[0]) is ad.Zero:
            return out, ([_zero(o) for o in out] if f.backward.multiple_results else _zero(out))
        return out, f.backward.bind(tangents[0], *primals[1:], **params)

    def backward_transpose(cts, grad_out, *rest, **params):
        cts = _as_list(cts)
        if all(type(ct) is ad.Zero for ct in cts):
            return [ad.Zero(grad_out.aval)] + [None] * len(rest)
        del params[f.shapes_param]
        geometry, argmax = rest[:f.num_geometry], rest[f.num_geometry:]
        cts = [ad.instantiate_zeros(ct).astype(grad_out.aval.dtype) for ct in cts]
        return [tangent_out(cts, geometry, argmax[0] if argmax else None, params)] \
            + [None] * len(rest)

    # ---- the box derivative: box_jvp and box_vjp, each linear in its third
    # operand (and in the features) and each the other's transpose.

    def box_jvp_rule(primitive, primals, tangents, **params):
        linear = is_linear(params)
        features, geometry, second, argmax = f.box_split(primals, linear)
        feature_dots, geometry_dots, second_dot, _ = f.box_split(tangents, linear)
        refuse_roi_tangent(geometry_dots[0], params, "the box derivative")
        out = primitive.bind(*primals, **params)
        parts = []
        if not all(type(t) is ad.Zero for t in feature_dots):
            dots = [ad.instantiate_zeros(t) for t in feature_dots]
            parts.append(primitive.bind(*f.box_join(dots, geometry, second, argmax), **params))
        if type(second_dot) is not ad.Zero:
            parts.append(primitive.bind(*f.box_join(features, geometry, second_dot, argmax),
                                        **params))
        if not parts:
            return out, _zero(out)
        return out, functools.reduce(lambda a, b: a + b, parts)

    def box_transpose(other, ct, *operands, **params):
        features, geometry, second, argmax = f.box_split(operands, is_linear(params))
        if any(ad.is_undefined_primal(x) for x in [*features, *geometry]):
            raise NotImplementedError(
                "jax_roi: transposing the box derivative with respect to the features (a "
                "mixed second derivative) is not implemented")
        if type(ct) is ad.Zero:
            result = ad.Zero(second.aval)
        else:
            result = other.bind(*f.box_join(features, geometry, ad.instantiate_zeros(ct), argmax),
                                **params)
            result = result.astype(second.aval.dtype)
        return f.box_join([None] * len(features), [None] * len(geometry), result,
                          [None] * len(argmax))

    ad.primitive_jvps[f.box_jvp] = functools.partial(box_jvp_rule, f.box_jvp)
    ad.primitive_jvps[f.box_vjp] = functools.partial(box_jvp_rule, f.box_vjp)
    ad.primitive_transposes[f.box_jvp] = functools.partial(box_transpose, f.box_vjp)
    ad.primitive_transposes[f.box_vjp] = functools.partial(box_transpose, f.box_jvp)

    ad.primitive_jvps[f.forward] = forward_jvp
    ad.primitive_transposes[f.forward] = forward_transpose
    ad.primitive_jvps[f.winner] = winner_jvp
    ad.primitive_transposes[f.winner] = winner_transpose
    ad.primitive_jvps[f.backward] = backward_jvp
    ad.primitive_transposes[f.backward] = backward_transpose
