"""Forward and reverse mode for every op family from one mechanism: JVP and
transpose rules on the primitives, as jax.lax ops have.

A family has three primitives:

  forward(*operands) -> out            (the linear ops, reference.LINEAR_OPS)
                     -> out, argmax    (max modes: argmax records each
                                        output element's winner)
  winner(*operands, argmax) -> out     the features read through the
                                       recorded winners: linear in the
                                       features, pure JAX (a gather)
  backward(grad_out, *geometry[, argmax]) -> grads   the backward kernel

The operands are feature maps and geometry (ROIs, levels). The tangent of
the output is forward(tangent) for the linear ops and winner(tangent, argmax) for the
max modes; transposing either gives the backward kernel, which is what
reverse mode runs. backward is linear in grad_out and transposes back to
forward or winner, so derivatives of every order follow. The ROIs get zero
tangents and cotangents.
"""

from typing import Callable, NamedTuple

import jax
from jax.interpreters import ad

from ._primitive import RoiPrimitive
from .reference import LINEAR_OPS


class Family(NamedTuple):
    forward: RoiPrimitive
    winner: RoiPrimitive
    backward: RoiPrimitive
    split: Callable     # forward operands -> (feature operands, geometry operands)
    join: Callable      # (feature operands, geometry operands) -> forward operands
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
        """The features' tangents, or None when all are zero (geometry gets none)."""
        tangents, _ = f.split(operand_tangents)
        if all(type(t) is ad.Zero for t in tangents):
            return None
        return [ad.instantiate_zeros(t) for t in tangents]

    def forward_jvp(primals, tangents, **params):
        outs = f.forward.bind(*primals, **params)
        _, geometry = f.split(primals)
        feature_tangents = feature_tangents_of(tangents)
        zeros = [_zero(o) for o in outs]
        if feature_tangents is None:
            return outs, zeros
        argmax = outs[1] if len(outs) > 1 else None
        return outs, [tangent_out(feature_tangents, geometry, argmax, params)] + zeros[1:]

    def forward_transpose(cts, *operands, **params):
        if not is_linear(params):
            raise NotImplementedError(
                f"jax_roi: {f.forward.name} with op={params['op']!r} is not linear")
        features, geometry = f.split(operands)
        return f.join(pull_back(cts[0], geometry, [], features, params),
                      [None] * len(geometry))

    def winner_jvp(primals, tangents, **params):
        *operands, argmax = primals
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

    ad.primitive_jvps[f.forward] = forward_jvp
    ad.primitive_transposes[f.forward] = forward_transpose
    ad.primitive_jvps[f.winner] = winner_jvp
    ad.primitive_transposes[f.winner] = winner_transpose
    ad.primitive_jvps[f.backward] = backward_jvp
    ad.primitive_transposes[f.backward] = backward_transpose
