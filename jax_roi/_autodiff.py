"""Differentiation rules of the primitives themselves.

The public ops get their first derivative from jax.custom_vjp. These rules
make that derivative differentiable again: roi_align "avg" is linear in the
features, so its forward and backward kernels are each other's transposes,
and the backward is linear in its incoming gradient for every op. The max
ops' second derivative (a gather through the recorded argmax) has no kernel.
"""

import jax
from jax.interpreters import ad

from ._primitives import roi_backward_p, roi_forward_p


def _require_linear(op, what):
    if op != "align_avg":
        raise NotImplementedError(
            f"jax_roi: {what} of roi_align mode='max' and roi_pool is not implemented "
            "(their first derivative is; higher orders exist for roi_align mode='avg')")


def _zero_tangent(value):
    return ad.Zero(jax.typeof(value).to_tangent_aval())


def _forward_jvp(primals, tangents, **params):
    features, rois = primals
    tangent = tangents[0]  # rois get no derivative, as documented
    outs = roi_forward_p.bind(features, rois, **params)
    if type(tangent) is ad.Zero:
        return outs, [_zero_tangent(o) for o in outs]
    _require_linear(params["op"], "forward-mode differentiation")
    return outs, roi_forward_p.bind(tangent, rois, **params)


def _forward_transpose(cts, features, rois, **params):
    _require_linear(params["op"], "transposition")
    ct = cts[0]
    if type(ct) is ad.Zero:
        return [ad.Zero(features.aval), None]
    grad = roi_backward_p.bind(ct, rois, features_shape=features.aval.shape, **params)
    return [grad.astype(features.aval.dtype), None]


def _backward_jvp(primals, tangents, **params):
    grad_out, rois, *argmax = primals
    out = roi_backward_p.bind(*primals, **params)
    tangent = tangents[0]
    if type(tangent) is ad.Zero:
        return out, _zero_tangent(out)
    return out, roi_backward_p.bind(tangent, rois, *argmax, **params)


def _backward_transpose(ct, grad_out, rois, *argmax, features_shape, **params):
    _require_linear(params["op"], "the second derivative")
    if type(ct) is ad.Zero:
        return [ad.Zero(grad_out.aval), None]
    (out,) = roi_forward_p.bind(ct.astype(grad_out.aval.dtype), rois, **params)
    return [out, None]


ad.primitive_jvps[roi_forward_p] = _forward_jvp
ad.primitive_transposes[roi_forward_p] = _forward_transpose
ad.primitive_jvps[roi_backward_p] = _backward_jvp
ad.primitive_transposes[roi_backward_p] = _backward_transpose
