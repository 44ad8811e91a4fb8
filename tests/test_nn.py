"""The Flax modules (jax_roi.nnx for NNX, jax_roi.linen): equal to the
functional ops, under jit, vmap and grad; MultiScaleRoIAlign's level rule,
its equality with roi_align on each box's level, and its gradients."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen, nnx

import jax_roi
import jax_roi.linen as roi_linen
from jax_roi import nnx as roi_nn

SCALES = (1 / 4, 1 / 8, 1 / 16, 1 / 32)


def nhwc(rng, n, h, w, c, dtype=np.float32):
    return jnp.asarray(rng.standard_normal((n, h, w, c)), dtype)


def random_boxes(rng, n, count, extent):
    x1, y1 = rng.uniform(-4, extent, (2, n, count))
    bw, bh = rng.uniform(1, extent / 2, (2, n, count))
    return jnp.asarray(np.stack([x1, y1, x1 + bw, y1 + bh], -1), jnp.float32)


def pyramid(rng, n=2, image=100, c=3, layout="NHWC", dtype=np.float32):
    """Maps of an image of side `image` at SCALES, sizes rounded up (odd
    sizes included: 25, 13, 7, 4 for 100)."""
    sizes = [math.ceil(image * s) for s in SCALES]
    maps = [nhwc(rng, n, h, h + 1, c, dtype) for h in sizes]
    return maps if layout == "NHWC" else [jnp.transpose(m, (0, 3, 1, 2)) for m in maps]


# ------------------------------------------------- RoIAlign and RoIPool

SINGLE = [
    ("align", dict(output_size=(3, 2), spatial_scale=0.5, sampling_ratio=2, aligned=True),
     lambda f, r, kw, layout: jax_roi.roi_align(f, r, kw["output_size"], kw["spatial_scale"],
                                                kw["sampling_ratio"], kw["aligned"],
                                                layout=layout)),
    ("align_max", dict(output_size=2, spatial_scale=0.5, mode="max"),
     lambda f, r, kw, layout: jax_roi.roi_align(f, r, 2, 0.5, mode="max", layout=layout)),
    ("pool", dict(output_size=(2, 3), spatial_scale=0.5),
     lambda f, r, kw, layout: jax_roi.roi_pool(f, r, kw["output_size"], 0.5, layout=layout)),
]


def make_module(flavour, name, kwargs, layout):
    cls_name = "RoIPool" if name == "pool" else "RoIAlign"
    if flavour == "nnx":
        return getattr(roi_nn, cls_name)(**kwargs, layout=layout)
    module = getattr(roi_linen, cls_name)(**kwargs, layout=layout)
    return lambda f, r: module.apply({}, f, r)


@pytest.mark.parametrize("flavour", ["nnx", "linen"])
@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
@pytest.mark.parametrize("name,kwargs,op", SINGLE, ids=[s[0] for s in SINGLE])
def test_module_equals_op(flavour, layout, name, kwargs, op):
    rng = np.random.default_rng(0)
    features = nhwc(rng, 2, 9, 11, 4)
    if layout == "NCHW":
        features = jnp.transpose(features, (0, 3, 1, 2))
    boxes = random_boxes(rng, 2, 5, 20)
    rois = jnp.concatenate([jnp.array([[0.0], [1.0], [1.0]]), boxes[0, :3]], axis=1)
    module = make_module(flavour, name, kwargs, layout)
    ph, pw = (kwargs["output_size"],) * 2 if isinstance(kwargs["output_size"], int) \
        else kwargs["output_size"]
    for r, lead in ((rois, (3,)), (boxes, (2, 5))):
        out = module(features, r)
        assert out.shape == lead + ((ph, pw, 4) if layout == "NHWC" else (4, ph, pw))
        np.testing.assert_array_equal(out, op(features, r, kwargs, layout))
        np.testing.assert_array_equal(jax.jit(module)(features, r), out)
    # vmap over a batch of maps, and the gradient, are the op's.
    stacked = jnp.stack([features, 2 * features])
    np.testing.assert_array_equal(jax.vmap(module, (0, None))(stacked, boxes),
                                  jax.vmap(lambda f: op(f, boxes, kwargs, layout))(stacked))
    weights = jnp.asarray(rng.standard_normal(out.shape), out.dtype)
    grad = jax.grad(lambda f: jnp.sum(module(f, boxes) * weights))(features)
    assert jnp.any(grad != 0)
    np.testing.assert_array_equal(
        grad, jax.grad(lambda f: jnp.sum(op(f, boxes, kwargs, layout) * weights))(features))


# Rotated and position-sensitive: (class, settings, op, channels, box coordinates).
NEW_MODULES = [
    ("RoIAlignRotated", dict(output_size=(2, 3), spatial_scale=0.5, sampling_ratio=2,
                             clockwise=True),
     lambda f, r, layout: jax_roi.roi_align_rotated(f, r, (2, 3), 0.5, 2, clockwise=True,
                                                    layout=layout), 4, 5),
    ("PSRoIAlign", dict(output_size=2, spatial_scale=0.5, sampling_ratio=-1),
     lambda f, r, layout: jax_roi.ps_roi_align(f, r, 2, 0.5, layout=layout), 8, 4),
    ("PSRoIPool", dict(output_size=(2, 3), spatial_scale=0.5),
     lambda f, r, layout: jax_roi.ps_roi_pool(f, r, (2, 3), 0.5, layout=layout), 12, 4),
]


@pytest.mark.parametrize("flavour", ["nnx", "linen"])
@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
@pytest.mark.parametrize("name,kwargs,op,channels,coords", NEW_MODULES,
                         ids=[m[0] for m in NEW_MODULES])
def test_rotated_and_position_sensitive_modules_equal_ops(flavour, layout, name, kwargs, op,
                                                          channels, coords):
    rng = np.random.default_rng(3)
    features = nhwc(rng, 2, 9, 11, channels)
    if layout == "NCHW":
        features = jnp.transpose(features, (0, 3, 1, 2))
    boxes = random_boxes(rng, 2, 5, 20)
    if coords == 5:  # (cx, cy, w, h, angle)
        boxes = jnp.concatenate([(boxes[..., :2] + boxes[..., 2:]) / 2,
                                 boxes[..., 2:] - boxes[..., :2],
                                 jnp.asarray(rng.uniform(-90, 90, (2, 5, 1)), jnp.float32)], -1)
    if flavour == "nnx":
        module = getattr(roi_nn, name)(**kwargs, layout=layout)
    else:
        linen_module = getattr(roi_linen, name)(**kwargs, layout=layout)
        module = lambda f, r: linen_module.apply({}, f, r)
    rois = jnp.concatenate([jnp.array([[0.0], [1.0], [1.0]]), boxes[0, :3]], axis=1)
    for r in (rois, boxes):
        out = module(features, r)
        np.testing.assert_array_equal(out, op(features, r, layout))
        np.testing.assert_array_equal(jax.jit(module)(features, r), out)
    weights = jnp.asarray(rng.standard_normal(out.shape), out.dtype)
    grad = jax.grad(lambda f: jnp.sum(module(f, boxes) * weights))(features)
    assert jnp.any(grad != 0)
    np.testing.assert_array_equal(
        grad, jax.grad(lambda f: jnp.sum(op(f, boxes, layout) * weights))(features))


def test_new_module_defaults_and_errors():
    m = roi_nn.RoIAlignRotated(7)
    assert (m.output_size, m.aligned, m.clockwise, m.layout) == ((7, 7), True, False, "NHWC")
    assert roi_linen.PSRoIAlign(7).layout == "NHWC" and roi_nn.PSRoIPool(7).layout == "NHWC"
    with pytest.raises(TypeError, match="clockwise"):
        roi_nn.RoIAlignRotated(7, clockwise="yes")
    with pytest.raises(TypeError, match="clockwise"):
        roi_linen.RoIAlignRotated(7, clockwise=1)
    with pytest.raises(TypeError, match="sampling_ratio"):
        roi_nn.PSRoIAlign(7, sampling_ratio=0.5)
    with pytest.raises(ValueError, match="output_size"):
        roi_linen.PSRoIPool(0)
    with pytest.raises(ValueError, match="features.*output_size|output_size.*features"):
        roi_nn.PSRoIPool(3)(jnp.ones((1, 8, 8, 10)), jnp.ones((1, 2, 4)))


def test_module_defaults_are_nhwc_and_fields_kept():
    m = roi_nn.RoIAlign(7)
    assert (m.output_size, m.spatial_scale, m.sampling_ratio, m.aligned, m.mode, m.layout) == \
        ((7, 7), 1.0, -1, False, "avg", "NHWC")
    assert roi_nn.RoIPool((2, 3), 0.25).layout == "NHWC"
    lm = roi_linen.RoIAlign(7, 0.5, 2, True, "max")
    assert (lm.output_size, lm.spatial_scale, lm.sampling_ratio, lm.aligned, lm.mode,
            lm.layout) == (7, 0.5, 2, True, "max", "NHWC")
    assert roi_linen.MultiScaleRoIAlign(7, SCALES).layout == "NHWC"
    features = jnp.ones((1, 8, 8, 2))
    assert roi_linen.RoIPool(3).init(jax.random.key(0), features, jnp.ones((1, 2, 4))) == {}


def test_modules_inside_flax_models():
    """Used as a layer of an NNX model under nnx.jit and of a linen model."""
    rng = np.random.default_rng(1)
    features = nhwc(rng, 2, 8, 8, 3)
    boxes = random_boxes(rng, 2, 4, 30)

    class Net(nnx.Module):
        def __init__(self):
            self.conv = nnx.Conv(3, 5, (3, 3), rngs=nnx.Rngs(0))
            self.pool = roi_nn.RoIAlign(2, 0.25, 2, True)

        def __call__(self, x, b):
            return self.pool(self.conv(x), b)

    net = Net()
    out = nnx.jit(lambda m, x, b: m(x, b))(net, features, boxes)
    np.testing.assert_array_equal(out, jax_roi.roi_align(net.conv(features), boxes, 2, 0.25, 2,
                                                         True, layout="NHWC"))
    grads = nnx.grad(lambda m: jnp.sum(m(features, boxes) ** 2))(net)
    assert jnp.any(grads["conv"]["kernel"][...] != 0)

    class LinenNet(linen.Module):
        @linen.compact
        def __call__(self, x, b):
            return roi_linen.RoIPool(2, 0.25)(linen.Conv(5, (3, 3))(x), b)

    variables = LinenNet().init(jax.random.key(0), features, boxes)
    out = jax.jit(LinenNet().apply)(variables, features, boxes)
    assert out.shape == (2, 4, 2, 2, 5)
    g = jax.grad(lambda v: jnp.sum(LinenNet().apply(v, features, boxes)))(variables)
    assert jnp.any(g["params"]["Conv_0"]["kernel"] != 0)


@pytest.mark.parametrize("flavour", ["nnx", "linen"])
@pytest.mark.parametrize("kwargs,error,words", [
    (dict(output_size=0), ValueError, "output_size"),
    (dict(output_size=(2, 2, 2)), TypeError, "output_size"),
    (dict(output_size=2, spatial_scale=-1.0), ValueError, "spatial_scale"),
    (dict(output_size=2, sampling_ratio=1.5), TypeError, "sampling_ratio"),
    (dict(output_size=2, aligned="yes"), TypeError, "aligned"),
    (dict(output_size=2, mode="mean"), ValueError, "mode"),
    (dict(output_size=2, layout="HWC"), ValueError, "layout"),
])
def test_roi_align_module_argument_errors(flavour, kwargs, error, words):
    cls = roi_nn.RoIAlign if flavour == "nnx" else roi_linen.RoIAlign
    with pytest.raises(error, match=words):
        cls(**kwargs)


@pytest.mark.parametrize("cls", [roi_nn.RoIPool, roi_linen.RoIPool])
def test_roi_pool_module_argument_errors(cls):
    with pytest.raises(ValueError, match="spatial_scale"):
        cls(2, 0.0)
    with pytest.raises(ValueError, match="layout"):
        cls(2, layout="nhwc")


# --------------------------------------------------- MultiScaleRoIAlign

def side_box(side, aspect=1.0, x=3.0, y=5.0):
    """A box of area side**2."""
    w, h = side * aspect, side / aspect
    return [x, y, x + w, y + h]


def test_level_rule():
    m = roi_nn.MultiScaleRoIAlign(7, SCALES)  # levels 2..5, canonical 224 -> 4
    cases = [  # (box, index into SCALES)
        (side_box(224), 2), (side_box(112), 1), (side_box(56), 0), (side_box(448), 3),
        (side_box(223.9), 1), (side_box(447.9), 2), (side_box(111.9), 0),
        (side_box(224, aspect=4.0), 2),             # oblong: only the area counts
        (side_box(1), 0), (side_box(10_000), 3),    # clamped to the levels present
        ([5, 5, 5, 9], 0), ([9, 3, 3, 9], 0),       # empty: zero area, inverted: negative
        ([np.nan, 0, 10, 10], 0), ([0, 0, np.inf, 10], 3),
    ]
    boxes = jnp.asarray([[b for b, _ in cases]], jnp.float32)
    np.testing.assert_array_equal(m.level_indices(boxes)[0], [i for _, i in cases])
    lm = roi_linen.MultiScaleRoIAlign(7, SCALES)
    np.testing.assert_array_equal(lm.level_indices(boxes), m.level_indices(boxes))
    # The rule's settings are the module's: canonical 32 at level 3, maps at levels 1..3.
    small = roi_nn.MultiScaleRoIAlign(7, (1 / 2, 1 / 4, 1 / 8), canonical_scale=32,
                                      canonical_level=3)
    boxes = jnp.asarray([[side_box(s) for s in (8, 15.9, 16, 32, 64, 128)]], jnp.float32)
    np.testing.assert_array_equal(small.level_indices(boxes)[0], [0, 0, 1, 2, 2, 2])


def multiscale_reference(maps, boxes, index, kwargs, layout):
    """roi_align of every box on every level's map, then each box's own level."""
    per_level = [jax_roi.roi_align(m, boxes, kwargs.get("output_size", 3), s,
                                   kwargs.get("sampling_ratio", -1), kwargs.get("aligned", False),
                                   mode=kwargs.get("mode", "avg"), layout=layout)
                 for m, s in zip(maps, SCALES)]
    per_level = np.stack([np.asarray(p) for p in per_level])
    n, l = np.indices(index.shape)
    return per_level[np.asarray(index), n, l]


def level_boxes(rng, image=100):
    """Boxes landing on every level, with many touching or crossing the
    image's (and so every map's) right and bottom edges and its top-left."""
    sides = [30, 60, 80, 130, 200, 300, 500]
    boxes = []
    for side in sides:
        boxes += [side_box(side, 1.0, image - side, image - side),   # ends on the corner
                  side_box(side, 1.3, image - side * 1.3 + 3, 2),    # beyond the right edge
                  side_box(side, 0.8, -2, image - side / 0.8 + 0.5),  # past top-left
                  side_box(side, 1.0, *rng.uniform(-10, image, 2))]
    return jnp.asarray([boxes, boxes[::-1]], jnp.float32)


@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
@pytest.mark.parametrize("kwargs", [
    dict(output_size=3),
    dict(output_size=(2, 3), sampling_ratio=2, aligned=True),
    dict(output_size=2, mode="max", aligned=True),
], ids=["adaptive", "aligned", "max"])
def test_multiscale_equals_roi_align_on_level(layout, kwargs):
    rng = np.random.default_rng(2)
    maps = pyramid(rng, layout=layout)
    boxes = level_boxes(rng)
    # canonical 64 spreads these boxes over all four levels.
    m = roi_nn.MultiScaleRoIAlign(scales=SCALES, canonical_scale=64, layout=layout, **kwargs)
    index = m.level_indices(boxes)
    assert set(np.asarray(index).ravel()) == {0, 1, 2, 3}
    out = m(maps, boxes)
    ph, pw = roi_nn.RoIAlign(kwargs["output_size"]).output_size
    assert out.shape == (2, boxes.shape[1]) + ((ph, pw, 3) if layout == "NHWC" else (3, ph, pw))
    expected = multiscale_reference(maps, boxes, index, kwargs, layout)
    assert np.any(expected != 0)
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(jax.jit(m)(maps, boxes), expected)
    lm = roi_linen.MultiScaleRoIAlign(scales=SCALES, canonical_scale=64, layout=layout, **kwargs)
    np.testing.assert_array_equal(lm.apply({}, maps, boxes), expected)


def test_multiscale_float64_and_vmap():
    rng = np.random.default_rng(3)
    maps = pyramid(rng, dtype=np.float64)
    boxes = level_boxes(rng)
    m = roi_nn.MultiScaleRoIAlign(2, SCALES, sampling_ratio=2, canonical_scale=64)
    out = m(maps, boxes)
    assert out.dtype == jnp.float64
    np.testing.assert_array_equal(
        out, multiscale_reference(maps, boxes, m.level_indices(boxes), dict(output_size=2,
                                  sampling_ratio=2), "NHWC"))
    # vmap over a batch of pyramids and boxes equals a loop.
    pyramids = [jnp.stack([f, -f, 3 * f]) for f in maps]
    box_sets = jnp.stack([boxes, boxes + 5, boxes * 0.5])
    batched = jax.vmap(m)(pyramids, box_sets)
    for i in range(3):
        np.testing.assert_array_equal(batched[i], m([p[i] for p in pyramids], box_sets[i]))


def test_multiscale_gradient_reaches_only_the_chosen_level():
    rng = np.random.default_rng(4)
    maps = pyramid(rng, n=1)
    m = roi_nn.MultiScaleRoIAlign(2, SCALES, sampling_ratio=2, aligned=True)
    loss = lambda fs, b: jnp.sum(m(fs, b) ** 2)
    for level, side in enumerate((50, 150, 300, 600)):  # one level each with canonical 224
        boxes = jnp.asarray([[side_box(side, 1.0, 10, 20), side_box(side, 1.2, 40, 0)]],
                            jnp.float32)
        assert np.all(np.asarray(m.level_indices(boxes)) == level)
        grads = jax.grad(loss)(maps, boxes)
        for i, g in enumerate(grads):
            assert bool(jnp.any(g != 0)) == (i == level), (level, i)
        # ... and equals the gradient of roi_align on that level's map.
        expected = jax.grad(lambda f: jnp.sum(jax_roi.roi_align(
            f, boxes, 2, SCALES[level], 2, True, layout="NHWC") ** 2))(maps[level])
        np.testing.assert_allclose(grads[level], expected, rtol=1e-6, atol=1e-6)

    # Mixed levels: each map's gradient comes from its own boxes alone.
    boxes = level_boxes(rng)[:1]
    index = np.asarray(m.level_indices(boxes))[0]
    weights = jnp.asarray(rng.standard_normal((1, boxes.shape[1], 2, 2, 3)), jnp.float32)
    grads = jax.grad(lambda fs: jnp.sum(m(fs, boxes) * weights))(maps)
    for i, g in enumerate(grads):
        mine = index == i
        expected = jax.grad(lambda f: jnp.sum(jax_roi.roi_align(
            f, boxes[:, mine], 2, SCALES[i], 2, True, layout="NHWC") * weights[:, mine]))(maps[i])
        np.testing.assert_allclose(g, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", ["avg", "max"])
def test_multiscale_is_one_kernel_call_whose_buffers_do_not_grow_with_levels(mode):
    rng = np.random.default_rng(5)
    maps = pyramid(rng, image=128, c=8)
    boxes = jnp.concatenate([level_boxes(rng, image=128)] * 4, axis=1)
    m = roi_nn.MultiScaleRoIAlign(4, SCALES, canonical_scale=64, mode=mode)
    assert len(set(np.asarray(m.level_indices(boxes)).ravel())) == 4
    out_bytes = jax.eval_shape(m, maps, boxes).size * 4
    argmax_bytes = out_bytes if mode == "max" else 0
    small = boxes.size * 4  # e.g. the level indices

    # not differentiated, the max mode runs its kernel without winners: no argmax
    forward = jax.jit(m).lower(maps, boxes).compile()
    kernel = {"avg": "align_avg_levels_forward", "max": "align_max_levels_values_forward"}[mode]
    assert forward.as_text().count('custom_call_target="jax_roi_') == 1
    assert forward.as_text().count(f'custom_call_target="{jax_roi._ffi.target(kernel)}"') == 1
    assert forward.memory_analysis().temp_size_in_bytes <= small

    # the gradient: the output, its cotangent and the argmax at most, and
    # each map's gradient is its own result
    backward = jax.jit(jax.grad(lambda fs: jnp.sum(m(fs, boxes) ** 2))).lower(maps).compile()
    assert backward.as_text().count('custom_call_target="jax_roi_') == 2
    assert backward.memory_analysis().temp_size_in_bytes <= 2 * out_bytes + argmax_bytes + small


@pytest.mark.parametrize("mode", ["avg", "max"])
def test_multiscale_higher_derivatives(mode):
    rng = np.random.default_rng(6)
    maps = pyramid(rng, n=1)
    boxes = level_boxes(rng)[:1]
    kwargs = dict(output_size=2, sampling_ratio=2, aligned=True, mode=mode)
    m = roi_nn.MultiScaleRoIAlign(scales=SCALES, canonical_scale=64, **kwargs)
    index = m.level_indices(boxes)

    def per_level(fs):  # every level over every box, then each box's own level
        out = 0.0
        for i, (f, scale) in enumerate(zip(fs, SCALES)):
            pooled = jax_roi.roi_align(f, boxes, 2, scale, 2, True, mode=mode, layout="NHWC")
            out = out + jnp.where((index == i)[..., None, None, None], pooled, 0.0)
        return out

    vectors = pyramid(np.random.default_rng(7), n=1)
    # a Hessian-vector product of a quartic loss (reverse over reverse), and
    # the same in forward over reverse, against the per-level ops
    loss = lambda fn: lambda fs: jnp.sum(fn(fs) ** 4)
    dot = lambda a, b: sum(jnp.vdot(x, y) for x, y in zip(a, b))
    hvp = lambda fn: jax.grad(lambda fs: dot(jax.grad(loss(fn))(fs), vectors))(maps)
    fwd_hvp = lambda fn: jax.jvp(jax.grad(loss(fn)), (maps,), (vectors,))[1]
    expected = hvp(per_level)
    for got in (hvp(lambda fs: m(fs, boxes)), fwd_hvp(lambda fs: m(fs, boxes))):
        for g, e in zip(got, expected):
            np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-4)
            assert np.any(np.asarray(e) != 0)


def test_multiscale_16_bit_maps():
    rng = np.random.default_rng(8)
    maps = [m.astype(jnp.bfloat16) for m in pyramid(rng)]
    boxes = level_boxes(rng)
    m = roi_nn.MultiScaleRoIAlign(3, SCALES, canonical_scale=64, aligned=True)
    out = m(maps, boxes)
    assert out.dtype == jnp.bfloat16
    expected = multiscale_reference(maps, boxes, m.level_indices(boxes), dict(
        output_size=3, aligned=True), "NHWC")
    np.testing.assert_array_equal(np.asarray(out, np.float32), np.asarray(expected, np.float32))
    grads = jax.grad(lambda fs: jnp.sum(m(fs, boxes).astype(jnp.float32)))(maps)
    assert [g.dtype for g in grads] == [jnp.bfloat16] * 4


@pytest.mark.parametrize("kwargs,error,words", [
    (dict(scales=(0.25, 0.1)), ValueError, "powers of two"),
    (dict(scales=(0.25, 0.25)), ValueError, "distinct"),
    (dict(scales=(1 / 8, 1 / 4)), ValueError, "finest first"),
    (dict(scales=(1 / 4, 1 / 16)), ValueError, "consecutive"),
    (dict(scales=()), ValueError, "scales"),
    (dict(scales=0.25), ValueError, "scales"),
    (dict(scales=(0.25, -0.125)), ValueError, "scales"),
    (dict(scales=(0.25, "x")), TypeError, "scales"),
    (dict(scales=SCALES, canonical_scale=0), ValueError, "canonical_scale"),
    (dict(scales=SCALES, canonical_scale=float("nan")), ValueError, "canonical_scale"),
    (dict(scales=SCALES, canonical_level=4.5), TypeError, "canonical_level"),
    (dict(scales=SCALES, mode="sum"), ValueError, "mode"),
    (dict(scales=SCALES, layout="CHW"), ValueError, "layout"),
    (dict(scales=SCALES, aligned=None), TypeError, "aligned"),
    (dict(scales=tuple(2.0 ** -k for k in range(9))), ValueError, "at most 8"),
])
@pytest.mark.parametrize("cls", [roi_nn.MultiScaleRoIAlign, roi_linen.MultiScaleRoIAlign])
def test_multiscale_argument_errors(cls, kwargs, error, words):
    with pytest.raises(error, match=words):
        cls(7, **kwargs)


def test_multiscale_call_errors():
    rng = np.random.default_rng(5)
    maps = pyramid(rng)
    boxes = level_boxes(rng)
    m = roi_nn.MultiScaleRoIAlign(2, SCALES)
    with pytest.raises(ValueError, match="features must hold one map per scale"):
        m(maps[:3], boxes)
    with pytest.raises(TypeError, match="features must be a sequence"):
        m(maps[0], boxes)
    with pytest.raises(ValueError, match="batch size and channel count"):
        m(maps[:3] + [maps[3][..., :2]], boxes)
    with pytest.raises(ValueError, match=r"features must have rank 4"):
        m(maps[:3] + [maps[3][0]], boxes)
    with pytest.raises(ValueError, match=r"boxes must have shape \[N, L, 4\]"):
        m(maps, boxes[0])
    with pytest.raises(ValueError, match=r"boxes must have shape \[N, L, 4\]"):
        m(maps, boxes[:1])
    with pytest.raises(TypeError, match="boxes must have a floating dtype"):
        m(maps, boxes.astype(jnp.int32))
    with pytest.raises(ValueError, match="boxes must have a last dimension of 4"):
        m.level_indices(boxes[..., :3])
