"""The registered targets defend themselves: called directly through
jax.ffi.ffi_call with wrong ranks, dtypes, mismatched dimensions, missing
attributes or argmax values no forward could write, they return an XLA error
with a message (or ignore what cannot be read), never crash or read outside a
buffer. CI runs this module under AddressSanitizer too."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_roi import _ffi
from jax_roi._primitive import kernel_attributes

S = jax.ShapeDtypeStruct
X = jnp.ones((2, 8, 8, 3), jnp.float32)          # NHWC
ROIS = jnp.asarray([[0, 1, 1, 9, 9], [1, 0, 2, 14, 15], [0, 3, 3, 4, 4], [1, 2, 0, 6, 6]],
                   jnp.float32)
OUT = S((4, 2, 2, 3), jnp.float32)
ALIGN = kernel_attributes("align_avg", 0.5, 2, True, "NHWC")
POOL = kernel_attributes("pool", 0.5, 0, False, "NHWC")


def call(kernel, args, out, **attrs):
    result = jax.ffi.ffi_call(_ffi.target(kernel), out)(*args, **attrs)
    return jax.block_until_ready(result)


BAD_CALLS = {
    "features rank": ("align_avg_forward", (X[0], ROIS), OUT, ALIGN, "features must have rank 4"),
    "features dtype": ("align_avg_forward", (X.astype(jnp.int32), ROIS),
                       S(OUT.shape, jnp.int32), ALIGN, "features must be float32"),
    "output rois": ("align_avg_forward", (X, ROIS), S((5, 2, 2, 3), jnp.float32), ALIGN,
                    "does not match rois"),
    "output channels": ("align_avg_forward", (X, ROIS), S((4, 2, 2, 4), jnp.float32), ALIGN,
                        "does not match features"),
    "rois width": ("align_avg_forward", (X, ROIS[:, :4]), OUT, ALIGN,
                   r"rois must be \[K, 5\] or \[N, L, 4\]"),
    "rois dtype": ("align_avg_forward", (X, ROIS.astype(jnp.float64)), OUT, ALIGN,
                   "rois must be float64 with float64 features"),
    "missing attributes": ("align_avg_forward", (X, ROIS), OUT, {"channels_last": True},
                           "Wrong number of attributes"),
    "argmax shape": ("align_max_forward", (X, ROIS), (OUT, S((4, 2, 2, 2), jnp.int32)),
                     kernel_attributes("align_max", 0.5, 2, True, "NHWC"), "argmax"),
    "gradient dtype": ("pool_backward", (jnp.ones(OUT.shape, jnp.float32), ROIS,
                                         jnp.zeros(OUT.shape, jnp.int32)),
                       S(X.shape, jnp.float64), POOL, "the feature gradient must"),
    "16-bit gradient dtype": ("pool_backward", (jnp.ones(OUT.shape, jnp.bfloat16), ROIS,
                                                jnp.zeros(OUT.shape, jnp.int32)),
                              S(X.shape, jnp.float16), POOL,
                              "the feature gradient must have the features' dtype"),
    "box tangents shape": ("align_avg_box_jvp", (X, ROIS, ROIS[:3]), OUT, ALIGN,
                           "roi tangents"),
    "box cotangents dtype": ("prroi_box_vjp", (X, ROIS, jnp.ones(OUT.shape, jnp.float32)),
                             S(ROIS.shape, jnp.float64), ALIGN, "roi cotangents must have"),
    "box argmax shape": ("align_max_box_vjp", (X, ROIS, jnp.ones(OUT.shape, jnp.float32),
                                               jnp.zeros((4, 2, 2, 2), jnp.int32)),
                         S(ROIS.shape, jnp.float32),
                         kernel_attributes("align_max", 0.5, 2, True, "NHWC"), "argmax"),
    "pyramid scales": ("align_avg_levels_forward",
                       (jnp.zeros((2, 3, 4), jnp.float32), jnp.zeros((2, 3), jnp.int32), X),
                       S((2, 3, 2, 2, 3), jnp.float32),
                       dict(ALIGN, spatial_scales=np.array([0.5, 0.25])) | {"spatial_scale": None,
                                                                         "clockwise": None},
                       "one spatial scale per map"),
    "pyramid gradient dtypes": ("align_avg_levels_backward",
                                (jnp.ones((2, 3, 2, 2, 3), jnp.bfloat16),
                                 jnp.zeros((2, 3, 4), jnp.float32), jnp.zeros((2, 3), jnp.int32)),
                                (S(X.shape, jnp.bfloat16), S((2, 4, 4, 3), jnp.float32)),
                                dict(ALIGN, spatial_scales=np.array([0.5, 0.25]))
                                | {"spatial_scale": None, "clockwise": None},
                                "the levels' gradients must share one dtype"),
}


@pytest.mark.parametrize("case", sorted(BAD_CALLS))
def test_malformed_calls_return_an_error(case):
    kernel, args, out, attrs, message = BAD_CALLS[case]
    attrs = {k: v for k, v in attrs.items() if v is not None}
    with pytest.raises(Exception, match=message):
        call(kernel, args, out, **attrs)


@pytest.mark.parametrize("kernel,attrs", [
    ("pool_backward", POOL),
    ("align_max_backward", kernel_attributes("align_max", 0.5, 2, True, "NHWC")),
])
@pytest.mark.parametrize("value", [10**9, -7, 2**31 - 1])
def test_argmax_no_forward_could_write_is_ignored(kernel, attrs, value):
    # the gradient goes nowhere rather than outside the buffer
    grad = call(kernel, (jnp.ones(OUT.shape, jnp.float32), ROIS, jnp.full(OUT.shape, value, jnp.int32)),
                S(X.shape, jnp.float32), **attrs)
    assert not np.any(np.asarray(grad))


@pytest.mark.parametrize("value", [10**9, -7, 2**31 - 1])
def test_box_derivative_ignores_argmax_no_forward_could_write(value):
    attrs = kernel_attributes("align_max", 0.5, 2, True, "NHWC")
    argmax = jnp.full(OUT.shape, value, jnp.int32)
    cotangent = call("align_max_box_vjp", (X, ROIS, jnp.ones(OUT.shape, jnp.float32), argmax),
                     S(ROIS.shape, jnp.float32), **attrs)
    tangent = call("align_max_box_jvp", (X, ROIS, jnp.ones_like(ROIS), argmax), OUT, **attrs)
    assert not np.any(np.asarray(cotangent)) and not np.any(np.asarray(tangent))


def test_a_well_formed_direct_call_works():
    out = call("align_avg_forward", (X, ROIS), OUT, **ALIGN)
    np.testing.assert_allclose(np.asarray(out)[0], 1.0, rtol=1e-6)
