"""Property-based tests: random shapes (zero-sized ones included), random and
malformed boxes, random output sizes and sampling ratios, over every op
(roi_align, roi_pool, roi_align_rotated, ps_roi_align, ps_roi_pool, prroi_pool), mode,
layout and dtype. Properties: values equal the float64 NumPy oracle, the
derivative passes the dot-product test (forward against backward kernel), vmap
equals a loop, [N, L, 4] boxes equal [K, 5] rows ([N, L, 5] and [K, 6] for
rotated boxes), and the kernels equal the pure-JAX implementation.

The default profile has a fixed seed and a budget that keeps this module near a
minute; JAX_ROI_HYPOTHESIS_PROFILE=long runs many more examples with fresh
seeds (see the README's Reliability section).
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import jax_roi
import numpy_reference as ref

settings.register_profile(
    "ci", max_examples=150, deadline=None, derandomize=True, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile(
    "long", max_examples=400, deadline=None, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("JAX_ROI_HYPOTHESIS_PROFILE", "ci"))
# Every example of a comparison with the pure-JAX implementation compiles it
# anew (forward and derivative), which took most of this module's time: those
# properties run half the profile's examples.
PURE_JAX_EXAMPLES = settings(max_examples=settings.default.max_examples // 2)

OPS = ["align_avg", "align_max", "pool", "rotated", "ps_align", "ps_pool", "prroi"]
DTYPES = {"float32": jnp.float32, "float64": jnp.float64, "bfloat16": jnp.bfloat16,
          "float16": jnp.float16}
# relative tolerance of the output against the float64 oracle, per dtype
TOLERANCE = {"float64": 1e-10, "float32": 2e-5, "bfloat16": 2e-2, "float16": 2e-3}
NOT_FINITE = [np.nan, np.inf, -np.inf]
HUGE = [1e30, -1e30, 1e6, -1e6]


def coordinate(extent, bad):
    """An image coordinate: mostly near the map, sometimes one of `bad`."""
    near = st.floats(-0.5 * extent - 4, 1.5 * extent + 4, allow_nan=False)
    return st.one_of(near, near, st.sampled_from(bad)) if bad else near


def box_size(extent, bad):
    """A rotated box's width or height: mostly positive, sometimes negative
    (bad data when aligned) or one of `bad`."""
    near = st.floats(-2.0, 1.5 * extent + 4, allow_nan=False)
    return st.one_of(near, near, st.sampled_from(bad)) if bad else near


def angle(bad):
    """Degrees: anything in a few turns, the quarter turns, sometimes not finite."""
    any_angle = st.floats(-800.0, 800.0, allow_nan=False)
    turns = st.sampled_from([0.0, 90.0, -90.0, 180.0, 45.0, 360.0])
    return st.one_of(any_angle, any_angle, turns,
                     st.sampled_from([b for b in bad if not np.isfinite(b)])) if bad else \
        st.one_of(any_angle, turns)


def batch_index(n, malformed):
    index = st.integers(0, max(n - 1, 0)).map(float)
    if not malformed:
        return index
    return st.one_of(index, st.sampled_from([-1.0, float(n), 0.5, n - 0.5, 1e9, np.nan,
                                             np.inf, -np.inf]))


@st.composite
def problems(draw, malformed=True, dtypes=tuple(DTYPES), for_oracle=False):
    """A random call: its op, arguments, features and [K, 5] ROIs."""
    op = draw(st.sampled_from(OPS))
    layout = draw(st.sampled_from(["NCHW", "NHWC"]))
    dtype = draw(st.sampled_from(dtypes))
    n, c = draw(st.integers(0, 2)), draw(st.integers(0, 3))
    h, w = draw(st.integers(0, 6)), draw(st.integers(0, 6))
    k = draw(st.integers(0, 4))
    scale = draw(st.sampled_from([1.0, 0.5, 0.3, 2.0]))
    output_size = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    ratio = draw(st.integers(-1, 3))
    aligned = draw(st.booleans())
    img_h, img_w = max(h, 1) / scale, max(w, 1) / scale
    # the NumPy oracle visits every sample of an adaptive grid: no huge boxes there
    sampled = op not in ("pool", "ps_pool", "prroi")
    bad = NOT_FINITE + (HUGE if not (for_oracle and sampled and ratio <= 0) else [])
    bad = bad if malformed else []
    if op == "rotated":
        clockwise = draw(st.booleans())
        rois = np.array([[draw(batch_index(n, malformed)), draw(coordinate(img_w, bad)),
                          draw(coordinate(img_h, bad)), draw(box_size(img_w, bad)),
                          draw(box_size(img_h, bad)), draw(angle(bad))]
                         for _ in range(k)]).reshape(k, 6)
    else:
        clockwise = False
        rois = np.array([[draw(batch_index(n, malformed)), draw(coordinate(img_w, bad)),
                          draw(coordinate(img_h, bad)), draw(coordinate(img_w, bad)),
                          draw(coordinate(img_h, bad))] for _ in range(k)]).reshape(k, 5)
    if op.startswith("ps_"):
        c *= output_size[0] * output_size[1]  # c output channels: a multiple of PH*PW
    seed = draw(st.integers(0, 2**31 - 1))
    x = np.random.default_rng(seed).standard_normal((n, c, h, w))
    if layout == "NHWC":
        x = x.transpose(0, 2, 3, 1)
    return dict(op=op, layout=layout, dtype=dtype, output_size=output_size, scale=scale,
                ratio=ratio, aligned=aligned, clockwise=clockwise, x=x, rois=rois)


def fixed_problem(op, dtype="float64"):
    """A call of `op` with real work: two images, boxes in and past the map
    and one bad row. Each property runs one per new op as an explicit
    example besides its drawn ones, whose zero-sized draws are common."""
    rng = np.random.default_rng(len(op))
    n, h, w, output_size = 2, 5, 6, (2, 3)
    c = 2 * output_size[0] * output_size[1] if op.startswith("ps_") else 3
    x = rng.standard_normal((n, h, w, c))
    if op == "rotated":
        rois = np.array([[0, 2.5, 3.0, 4.0, 3.0, 30.0], [1, 4.0, 1.5, 3.0, 5.0, -120.0],
                         [1, 1.0, 1.0, 2.0, 2.0, np.nan]])
    else:
        rois = np.array([[0, 0.5, 1.0, 4.5, 3.5], [1, 2.0, -1.0, 7.0, 4.0],
                         [2, 1.0, 1.0, 2.0, 2.0]])
    return dict(op=op, layout="NHWC", dtype=dtype, output_size=output_size, scale=1.0,
                ratio=-1, aligned=True, clockwise=op == "rotated", x=x, rois=rois)


def with_fixed_examples(*extra):
    """One explicit example per new op, for a property of (p, *extra)."""
    def decorate(test):
        for op in ("rotated", "ps_align", "ps_pool", "prroi"):
            test = example(fixed_problem(op), *extra)(test)
        return test
    return decorate


def call(p, features, rois, implementation=None):
    if p["op"] == "pool":
        return jax_roi.roi_pool(features, rois, p["output_size"], p["scale"],
                                layout=p["layout"], implementation=implementation)
    if p["op"] == "ps_pool":
        return jax_roi.ps_roi_pool(features, rois, p["output_size"], p["scale"],
                                   layout=p["layout"], implementation=implementation)
    if p["op"] == "prroi":
        return jax_roi.prroi_pool(features, rois, p["output_size"], p["scale"],
                                  layout=p["layout"], implementation=implementation)
    if p["op"] == "ps_align":
        return jax_roi.ps_roi_align(features, rois, p["output_size"], p["scale"], p["ratio"],
                                    layout=p["layout"], implementation=implementation)
    if p["op"] == "rotated":
        return jax_roi.roi_align_rotated(features, rois, p["output_size"], p["scale"],
                                         p["ratio"], p["aligned"], clockwise=p["clockwise"],
                                         layout=p["layout"], implementation=implementation)
    return jax_roi.roi_align(features, rois, p["output_size"], p["scale"], p["ratio"],
                             p["aligned"], mode=p["op"][6:], layout=p["layout"],
                             implementation=implementation)


def features_of(p, dtype=None):
    return jnp.asarray(p["x"], DTYPES[dtype or p["dtype"]])


def oracle(p, x64):
    geom = np.float64 if p["dtype"] == "float64" else np.float32
    rows = p["rois"].astype(geom)
    if p["op"] == "pool":
        return ref.roi_pool(x64, rows, p["output_size"], p["scale"], layout=p["layout"],
                            geom=geom)[0]
    if p["op"] == "ps_pool":
        return ref.ps_roi_pool(x64, rows, p["output_size"], p["scale"], layout=p["layout"],
                               geom=geom)
    if p["op"] == "prroi":
        return ref.prroi_pool(x64, rows, p["output_size"], p["scale"], layout=p["layout"],
                              geom=geom)
    if p["op"] == "ps_align":
        return ref.ps_roi_align(x64, rows, p["output_size"], p["scale"], p["ratio"],
                                layout=p["layout"], geom=geom)
    if p["op"] == "rotated":
        return ref.roi_align_rotated(x64, rows, p["output_size"], p["scale"], p["ratio"],
                                     p["aligned"], clockwise=p["clockwise"],
                                     layout=p["layout"], geom=geom)
    return ref.roi_align(x64, rows, p["output_size"], p["scale"], p["ratio"], p["aligned"],
                         mode=p["op"][6:], layout=p["layout"], geom=geom)


@with_fixed_examples()
@given(problems(for_oracle=True))
def test_values_equal_the_numpy_oracle(p):
    features = features_of(p)
    x64 = np.asarray(features, np.float64)  # the oracle sees the rounded inputs
    out = call(p, features, jnp.asarray(p["rois"]))
    assert out.dtype == features.dtype
    want = oracle(p, x64)
    assert out.shape == want.shape
    tol = TOLERANCE[p["dtype"]]
    scale = max(1.0, float(np.abs(want).max(initial=0)))
    np.testing.assert_allclose(np.asarray(out, np.float64), want, rtol=tol, atol=tol * scale)


@with_fixed_examples()
@given(problems(dtypes=("float64",)))
def test_dot_product_forward_against_backward(p):
    # <J v, u> == <v, J^T u>: J v by the forward-mode rules (the forward
    # kernel or the winner gather), J^T u by the backward kernel
    features, rois = features_of(p), jnp.asarray(p["rois"])
    fn = lambda f: call(p, f, rois)
    rng = np.random.default_rng(1)
    v = jnp.asarray(rng.standard_normal(features.shape))
    out, jv = jax.jvp(fn, (features,), (v,))
    u = jnp.asarray(rng.standard_normal(out.shape))
    (jtu,) = jax.vjp(fn, features)[1](u)
    lhs, rhs = float(jnp.vdot(jv, u)), float(jnp.vdot(v, jtu))
    assert abs(lhs - rhs) <= 1e-10 * max(1.0, abs(lhs), abs(rhs))


@with_fixed_examples()
@given(problems())
def test_vmap_equals_a_loop(p):
    features, rois = features_of(p), jnp.asarray(p["rois"])
    stack = jnp.stack([features, -2 * features, features + 1])
    batched = jax.vmap(lambda f: call(p, f, rois))(stack)
    for i in range(3):
        np.testing.assert_array_equal(np.asarray(batched[i], np.float64),
                                      np.asarray(call(p, stack[i], rois), np.float64))


@with_fixed_examples(2)
@given(problems(), st.integers(0, 3))
def test_per_image_boxes_equal_rows(p, per_image):
    features = features_of(p)
    n = features.shape[0]
    width = p["rois"].shape[1] - 1  # 4, or 5 for rotated boxes
    boxes = np.resize(p["rois"][:, 1:], (n, per_image, width)) if p["rois"].size else \
        np.zeros((n, per_image, width))
    rows = np.concatenate([np.repeat(np.arange(n, dtype=float), per_image)[:, None],
                           boxes.reshape(-1, width)], axis=1)
    by_image = call(p, features, jnp.asarray(boxes))
    by_row = call(p, features, jnp.asarray(rows))
    assert by_image.shape[:2] == (n, per_image)
    np.testing.assert_array_equal(np.asarray(by_image, np.float64).reshape(by_row.shape),
                                  np.asarray(by_row, np.float64))


@PURE_JAX_EXAMPLES
@with_fixed_examples()
@given(problems(dtypes=("float64", "float32")))
def test_kernels_equal_the_pure_jax_implementation(p):
    features, rois = features_of(p), jnp.asarray(p["rois"])
    tol = TOLERANCE[p["dtype"]]
    kernel, vjp_kernel = jax.vjp(lambda f: call(p, f, rois), features)
    pure, vjp_pure = jax.vjp(lambda f: call(p, f, rois, "xla"), features)
    # huge float32 boxes place samples a rounding apart when the kernels fuse
    # multiply-adds: compare values only where every coordinate is ordinary
    ordinary = np.all(np.abs(np.nan_to_num(p["rois"][:, 1:], posinf=0, neginf=0)) < 1e5,
                      axis=1) | (p["dtype"] == "float64")
    scale = max(1.0, float(np.abs(np.asarray(kernel, np.float64)).max(initial=0)))
    np.testing.assert_allclose(np.asarray(pure)[ordinary], np.asarray(kernel)[ordinary],
                               rtol=tol, atol=tol * scale)
    if np.all(ordinary):
        u = jnp.asarray(np.random.default_rng(2).standard_normal(kernel.shape), features.dtype)
        want = np.asarray(vjp_kernel(u)[0])
        np.testing.assert_allclose(vjp_pure(u)[0], want, rtol=tol,
                                   atol=tol * max(1.0, float(np.abs(want).max(initial=0))))


BOX_OPS = ("align_avg", "align_max", "rotated", "ps_align", "prroi")


def valid_rows(p):
    """Rows whose batch index names an image and whose coordinates are finite."""
    b = p["rois"][:, 0]
    n = p["x"].shape[0]
    with np.errstate(invalid="ignore"):
        in_range = (b >= 0) & (b < n)
    return in_range & np.all(np.isfinite(p["rois"][:, 1:]), axis=1)


@PURE_JAX_EXAMPLES
@with_fixed_examples()
@given(problems(dtypes=("float64",)))
def test_box_derivative_kernels_equal_the_pure_jax_implementation(p):
    """Random and malformed boxes: the kernels' derivative with respect to the
    ROIs equals the pure-JAX implementation's, is 0 for the batch index,
    invalid rows and the rounding ops, and is finite for finite inputs."""
    features, rois = features_of(p), jnp.asarray(p["rois"])
    out = call(p, features, rois)
    u = jnp.asarray(np.random.default_rng(3).standard_normal(out.shape))
    kernel = np.asarray(jax.vjp(lambda r: call(p, features, r), rois)[1](u)[0])
    pure = np.asarray(jax.vjp(lambda r: call(p, features, r, "xla"), rois)[1](u)[0])
    assert kernel.shape == rois.shape
    np.testing.assert_array_equal(kernel[:, 0], 0)
    np.testing.assert_array_equal(kernel[~valid_rows(p)], 0)
    if p["op"] not in BOX_OPS:
        np.testing.assert_array_equal(kernel, 0)
    # huge boxes: derivatives of samples far outside the map are 0 in both,
    # but a sum of many large terms may round apart; compare ordinary rows
    ordinary = valid_rows(p) & np.all(np.abs(np.nan_to_num(p["rois"][:, 1:])) < 1e5, axis=1)
    assert np.all(np.isfinite(kernel[ordinary]))
    scale = max(1.0, float(np.abs(kernel[ordinary]).max(initial=0)))
    np.testing.assert_allclose(pure[ordinary], kernel[ordinary], rtol=1e-9, atol=1e-9 * scale)


def test_ci_profile_has_a_fixed_seed_and_a_budget():
    # what runs by default is reproducible and bounded
    ci = settings.get_profile("ci")
    assert ci.derandomize and ci.max_examples <= 200 and ci.database is None
