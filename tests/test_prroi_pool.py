"""prroi_pool (Precise RoI Pooling): values against an independent numerical
integration of the tent-interpolated map, and against numpy_reference for
every dtype, layout and ROI format; hand-worked maps (a constant, a linear
ramp, the half-tents past the edges); zero-area and invalid boxes; the
feature gradient against the NumPy adjoint; the box gradient against central
finite differences and against the contract's closed forms; kernel against
the pure-JAX implementation; jit, vmap, jvp; the Flax modules; argument errors.

Every case runs through the kernels; the pure-JAX implementation (a program
per configuration, about a second or two each) runs a chosen subset."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jax_roi
import jax_roi.linen as roi_linen
import numpy_reference as ref
from jax_roi import nnx as roi_nn
from op_cases import BF16, DTYPES, F16, F32, F64, _close, _geom, _rng, sweep

N, C, H, W = 2, 3, 7, 6          # H != W catches swapped axes
OUT = (3, 2)                      # PH != PW for the same reason


def prroi(f, r, output_size=OUT, scale=1.0, **kw):
    return jax_roi.prroi_pool(f, r, output_size, scale, **kw)


def _features(rng, layout, shape=(N, C, H, W)):
    x = rng.standard_normal(shape)
    return x if layout == "NCHW" else x.transpose(0, 2, 3, 1)


def _nchw(a, layout):
    a = np.asarray(a)
    return a if layout == "NCHW" else np.moveaxis(a, -1, 1)


def _boxes(rng, k, h, w, scale):
    """(x1, y1, x2, y2) in image coordinates; many reach past the map (where
    the tents of the edge pixels still read), some are under a pixel."""
    x1 = rng.uniform(-2.0, w - 1.0, k)
    y1 = rng.uniform(-2.0, h - 1.0, k)
    bw = rng.uniform(0.1, 0.9 * w, k)
    bh = rng.uniform(0.1, 0.9 * h, k)
    return np.stack([x1, y1, x1 + bw, y1 + bh], 1) / scale


def _rois(rng, fmt, n, h, w, scale, per_image=3):
    boxes = _boxes(rng, n * per_image, h, w, scale)
    if fmt == "NL4":
        return boxes.reshape(n, per_image, 4)
    b = rng.integers(0, n, n * per_image).astype(np.float64)
    return np.concatenate([b[:, None], boxes], 1)


def _rows(rois):
    """[K, 5] rows of [K, 5] ROIs or [N, L, 4] boxes."""
    rois = np.asarray(rois, np.float64)
    if rois.ndim == 3:
        n, l, _ = rois.shape
        return np.concatenate([np.repeat(np.arange(n), l)[:, None].astype(np.float64),
                               rois.reshape(n * l, 4)], 1)
    return rois


# ------------------------------------------------ independent integration
#
# A brute force that shares nothing with numpy_reference's closed forms: f is
# evaluated point by point as the sum of every pixel times its two tents,
# and integrated by Gauss-Legendre on the pieces between integer
# coordinates, where f is a bilinear polynomial (so 3 nodes are exact).

_GAUSS = np.polynomial.legendre.leggauss(3)


def _f(plane, y, x):
    """f(y, x) on a [C, H, W] plane at arrays of positions -> [..., C]."""
    _, h, w = plane.shape
    ty = np.maximum(0.0, 1.0 - np.abs(np.asarray(y)[..., None] - np.arange(h)))
    tx = np.maximum(0.0, 1.0 - np.abs(np.asarray(x)[..., None] - np.arange(w)))
    return np.einsum("chw,...h,...w->...c", plane, ty, tx)


def _nodes(lo, hi):
    """Quadrature nodes and weights on [lo, hi], split at integers."""
    cuts = np.arange(np.ceil(lo), np.floor(hi) + 1)
    points = np.unique(np.concatenate([[lo, hi], cuts[(cuts > lo) & (cuts < hi)]]))
    a, b = points[:-1, None], points[1:, None]
    return ((a + b) / 2 + (b - a) / 2 * _GAUSS[0]).ravel(), ((b - a) / 2 * _GAUSS[1]).ravel()


def integrate(x, rois, output_size, s):
    """prroi_pool by numerical integration: NCHW features, [K, 5] rows;
    [K, C, PH, PW]."""
    ph_n, pw_n = output_size
    n, c, _, _ = x.shape
    rows = _rows(rois)
    out = np.zeros((len(rows), c, ph_n, pw_n))
    for k, (b, x1, y1, x2, y2) in enumerate(rows):
        if not np.all(np.isfinite(rows[k])) or not 0 <= b < n:
            continue
        bw = max((x2 - x1) * s, 0.0) / pw_n
        bh = max((y2 - y1) * s, 0.0) / ph_n
        if bw * bh == 0:
            continue
        for ph in range(ph_n):
            yn, yw = _nodes(y1 * s + ph * bh, y1 * s + (ph + 1) * bh)
            for pw in range(pw_n):
                xn, xw = _nodes(x1 * s + pw * bw, x1 * s + (pw + 1) * bw)
                vals = _f(x[int(b)], *np.meshgrid(yn, xn, indexing="ij"))
                out[k, :, ph, pw] = np.einsum("ijc,i,j->c", vals, yw, xw) / (bw * bh)
    return out


def _numpy_box_differences(x, rois, output_size, s, dy, layout, step=1e-6):
    """Central differences of <ref.prroi_pool, dy> per ROI coordinate."""
    rois = np.asarray(rois, np.float64)
    fd = np.zeros(rois.shape)
    first = 1 if rois.ndim == 2 else 0
    lead = rois.ndim - 1
    per_roi = lambda r: (ref.prroi_pool(x, r, output_size, s, layout=layout) * dy).reshape(
        rois.shape[:lead] + (-1,)).sum(-1)
    for j in range(first, first + 4):
        e = np.zeros(rois.shape)
        e[..., j] = step
        fd[..., j] = (per_roi(rois + e) - per_roi(rois - e)) / (2 * step)
    return fd


@pytest.mark.parametrize("layout,fmt,scale", [("NCHW", "K5", 1.0), ("NHWC", "NL4", 0.5)])
def test_numpy_reference_against_integration_and_differences(layout, fmt, scale):
    # The reference's closed forms (tent integrals, the edge formulas of the
    # box derivative) against brute force, before the op is held to them.
    rng = _rng("reference", layout, fmt, scale)
    x = _features(rng, layout)
    rois = _rois(rng, fmt, N, H, W, scale)
    out = ref.prroi_pool(x, rois, OUT, scale, layout=layout)
    want = integrate(_nchw(x, layout), rois, OUT, scale)
    np.testing.assert_allclose(_nchw(out.reshape((-1,) + out.shape[-3:]), layout), want,
                               rtol=1e-12, atol=1e-12)
    assert np.count_nonzero(want) > want.size // 2
    dy = rng.standard_normal(out.shape)
    # the adjoint: <vjp(dy), t> == <fwd(t), dy>
    t = rng.standard_normal(x.shape)
    np.testing.assert_allclose(np.vdot(ref.prroi_pool_vjp(x, rois, OUT, scale, dy,
                                                          layout=layout), t),
                               np.vdot(ref.prroi_pool(t, rois, OUT, scale, layout=layout), dy),
                               rtol=1e-12)
    box = ref.prroi_pool_box_vjp(x, rois, OUT, scale, dy, layout=layout)
    assert box.shape == rois.shape
    fd = _numpy_box_differences(x, rois, OUT, scale, dy, layout)
    np.testing.assert_allclose(box, fd, rtol=1e-6, atol=1e-6 * np.abs(fd).max())
    assert np.count_nonzero(box[..., -4:]) > box[..., -4:].size // 2


# ------------------------------------------------------------ values

def _check(x, rois, dtype, layout, out_size=OUT, scale=1.0, seed=0, implementation=None):
    """Forward and feature vjp against the reference on the features
    rounded to `dtype`; ROIs go in as float64 and the op casts them to its
    geometry dtype, as the reference does."""
    g = _geom(dtype)
    xq = ref.round_to(x, dtype)
    rois_j = jnp.asarray(np.asarray(rois, np.float64))
    fwd = lambda f: prroi(f, rois_j, out_size, scale, layout=layout,
                          implementation=implementation)
    expected = ref.prroi_pool(xq, np.asarray(rois, g), out_size, scale, layout=layout, geom=g)
    out, vjp = jax.vjp(fwd, jnp.asarray(xq, dtype))
    assert out.dtype == dtype
    _close(out, expected, dtype)
    assert np.any(expected != 0)
    dy = ref.round_to(np.random.default_rng(seed + 1).standard_normal(expected.shape), dtype)
    (dx,) = vjp(jnp.asarray(dy, dtype))
    assert dx.dtype == dtype
    _close(dx, ref.prroi_pool_vjp(xq, np.asarray(rois, g), out_size, scale, dy, layout=layout,
                                  geom=g), dtype)
    return out


@sweep("layout,fmt,scale", list(itertools.product(["NCHW", "NHWC"], ["K5", "NL4"], [1.0, 0.5])),
       pure_jax=[("NCHW", "K5", 0.5)])
def test_matches_numerical_integration(layout, fmt, scale, implementation):
    rng = _rng("integration", layout, fmt, scale)
    x = _features(rng, layout)
    rois = _rois(rng, fmt, N, H, W, scale)
    out = prroi(jnp.asarray(x), jnp.asarray(rois), OUT, scale, layout=layout,
                implementation=implementation)
    lead = rois.shape[:-1]
    assert out.shape == lead + ((C,) + OUT if layout == "NCHW" else OUT + (C,))
    got = _nchw(np.asarray(out).reshape((-1,) + out.shape[len(lead):]), layout)
    want = integrate(_nchw(x, layout), rois, OUT, scale)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    assert np.count_nonzero(want) > want.size // 2


@sweep("dtype,layout,fmt", list(itertools.product(DTYPES, ["NCHW", "NHWC"], ["K5", "NL4"])),
       pure_jax=[(BF16, "NCHW", "NL4")])
def test_dtypes_against_reference(dtype, layout, fmt, implementation):
    rng = _rng("dtypes", layout, fmt)
    x = _features(rng, layout, (2, 4, 8, 9))
    rois = _rois(rng, fmt, 2, 8, 9, 0.25)
    _check(x, rois, dtype, layout, out_size=(2, 3), scale=0.25, implementation=implementation)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("c", [1, 17])
def test_many_rois_float32(c, layout):
    # enough ROIs and channels to split work across threads and leave
    # remainders in any channel vectorisation; a scale not a power of 2
    n, h, w, scale = 3, 13, 11, 0.3
    rng = _rng("many", c, layout)
    x = _features(rng, layout, (n, c, h, w))
    rois = _rois(rng, "K5", n, h, w, scale, per_image=12).astype(np.float32)
    _check(x, rois, F32, layout, out_size=(3, 4), scale=scale)


# ------------------------------------------------------------ by hand

IMPLEMENTATIONS = pytest.mark.parametrize("implementation", [None, "xla"],
                                          ids=["kernel", "pure_jax"])
# the layout sweep of the hand-worked cases: pure JAX runs NHWC only
LAYOUT_IMPLEMENTATIONS = pytest.mark.parametrize("layout,implementation", [
    ("NCHW", None), ("NHWC", None), ("NHWC", "xla")], ids=["NCHW-kernel", "NHWC-kernel",
                                                            "NHWC-pure_jax"])


@LAYOUT_IMPLEMENTATIONS
def test_constant_map_and_its_edges(layout, implementation):
    # f = c wherever the tents of the pixels sum to one: [0, H-1] x [0, W-1].
    # Past an edge only the edge pixel's tent reads: its integral over
    # [-1, 0] (or [W-1, W]) is 1/2, and beyond -1 (or W) f is 0.
    c = 2.5
    shape = (1, 2, H, W) if layout == "NCHW" else (1, H, W, 2)
    x = jnp.full(shape, c)
    rois = jnp.asarray([
        [0, 0.0, 0.0, W - 1.0, H - 1.0],      # the whole interior
        [0, 1.3, 0.7, 4.1, 5.9],              # inside
        [0, -1.0, 1.0, 0.0, 4.0],             # [-1, 0] in x: c/2
        [0, W - 1.0, 1.0, W + 1.0, 4.0],      # [W-1, W+1]: (1/2 + 0) / 2 = c/4
        [0, -1.0, -1.0, 0.0, 0.0],            # a corner: c/4
        [0, 2.0, H - 1.0, 3.0, H + 0.0],      # [H-1, H] in y: c/2
        [0, W + 0.0, 1.0, W + 3.0, 4.0],      # all beyond the map: 0
        [0, -5.0, -4.0, -1.0, -1.0],          # all before it: 0
    ])
    out = _nchw(prroi(x, rois, 1, layout=layout, implementation=implementation), layout)
    want = np.array([c, c, c / 2, c / 4, c / 4, c / 2, 0, 0])
    np.testing.assert_allclose(out[:, :, 0, 0], np.repeat(want[:, None], 2, 1),
                               rtol=1e-13, atol=1e-13)
    # every bin of a box inside the map, at a scale
    out = prroi(x, jnp.asarray([[0, 0.6, 1.2, 8.4, 10.0]]), (3, 4), 0.5, layout=layout,
                implementation=implementation)
    np.testing.assert_allclose(out, np.full(out.shape, c), rtol=1e-13)


@LAYOUT_IMPLEMENTATIONS
def test_linear_ramp_gives_the_value_at_the_bin_centre(layout, implementation):
    # X[i, j] = a*i + b*j + c: tent interpolation reproduces the linear
    # function inside [0, H-1] x [0, W-1], and the mean of a linear function
    # over a rectangle is its value at the centre.
    a, b, c = 0.7, -1.3, 2.0
    i, j = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
    plane = a * i + b * j + c
    x = np.stack([plane, -2 * plane])[None]  # [1, 2, H, W]
    rng = np.random.default_rng(4)
    scale = 0.5
    k = 6
    x1 = rng.uniform(0, W - 3, k)
    y1 = rng.uniform(0, H - 3, k)
    x2 = x1 + rng.uniform(0.2, W - 1 - x1)
    y2 = y1 + rng.uniform(0.2, H - 1 - y1)
    rois = np.stack([np.zeros(k), x1, y1, x2, y2], 1) / scale
    rois[:, 0] = 0
    ph_n, pw_n = 3, 4
    out = prroi(jnp.asarray(x if layout == "NCHW" else x.transpose(0, 2, 3, 1)),
                jnp.asarray(rois), (ph_n, pw_n), scale, layout=layout,
                implementation=implementation)
    yc = y1[:, None] + (np.arange(ph_n) + 0.5) * (y2 - y1)[:, None] / ph_n
    xc = x1[:, None] + (np.arange(pw_n) + 0.5) * (x2 - x1)[:, None] / pw_n
    centre = a * yc[:, :, None] + b * xc[:, None, :] + c          # [K, PH, PW]
    want = np.stack([centre, -2 * centre], 1)
    np.testing.assert_allclose(_nchw(out, layout), want, rtol=1e-12, atol=1e-12)


def test_one_pixel_hand_value():
    # A single pixel of value 1 at (y, x) = (2, 3): f = t(y - 2) * t(x - 3).
    # The box [3, 4] x [1.5, 2.5] (one bin, area 1) integrates to
    # int t(y-2) dy over [1.5, 2.5] = 3/4 times int t(x-3) dx over [3, 4] = 1/2.
    x = np.zeros((1, 1, 5, 6))
    x[0, 0, 2, 3] = 1.0
    box = jnp.asarray([[0, 3.0, 1.5, 4.0, 2.5]])
    out = prroi(jnp.asarray(x), box, 1)
    np.testing.assert_allclose(out[0, 0, 0, 0], 0.375, rtol=1e-14)
    # The box derivative, out = 0.375, bin_h = bin_w = area = 1:
    # d/dx1 = (out*bin_h - t(3-3) * 3/4) / area = 0.375 - 0.75 = -0.375
    # d/dx2 = (t(4-3) * 3/4 - out*bin_h) / area = 0 - 0.375 = -0.375
    # d/dy1 = (out*bin_w - t(1.5-2) * 1/2) / area = 0.375 - 0.25 = 0.125
    # d/dy2 = (t(2.5-2) * 1/2 - out*bin_w) / area = 0.25 - 0.375 = -0.125
    g = jax.grad(lambda r: prroi(jnp.asarray(x), r, 1)[0, 0, 0, 0])(box)
    np.testing.assert_allclose(g[0], [0.0, -0.375, 0.125, -0.375, -0.125], rtol=1e-13,
                               atol=1e-13)
    np.testing.assert_allclose(ref.prroi_pool_box_vjp(x, box, 1, 1.0, np.ones((1, 1, 1, 1))),
                               g, rtol=1e-13, atol=1e-13)


@IMPLEMENTATIONS
def test_zero_area_boxes_give_zero_and_no_gradient(implementation):
    rng = np.random.default_rng(7)
    x = jnp.asarray(_features(rng, "NCHW") + 3.0)
    rois = jnp.asarray([
        [0, 2.0, 1.0, 2.0, 4.0],      # x2 == x1
        [1, 3.0, 2.0, 1.0, 5.0],      # x2 < x1
        [0, 1.0, 3.0, 4.0, 3.0],      # y2 == y1
        [1, 1.0, 4.0, 4.0, 2.0],      # y2 < y1
        [0, 5.0, 6.0, 1.0, 2.0],      # both inverted
        [1, 1.0, 1.0, 4.0, 5.0],      # a good one
    ])
    fn = lambda f, r: prroi(f, r, OUT, implementation=implementation)
    out = np.asarray(fn(x, rois))
    assert np.all(out[:5] == 0) and np.all(out[5] != 0)
    gx, gr = jax.grad(lambda f, r: jnp.sum(fn(f, r)[:5] ** 2 + fn(f, r)[:5]),
                      argnums=(0, 1))(x, rois)
    assert not np.any(np.asarray(gx))
    assert np.all(np.isfinite(gr)) and not np.any(np.asarray(gr)[:5])


# ------------------------------------------------------------ bad data

GOOD = [0.0, 1.2, 1.4, 4.3, 5.1]
BAD_ROWS = {
    "neg_index": [-1.0, 1.2, 1.4, 4.3, 5.1],
    "index_eq_n": [2.0, 1.2, 1.4, 4.3, 5.1],
    "nan_index": [np.nan, 1.2, 1.4, 4.3, 5.1],
    "inf_index": [np.inf, 1.2, 1.4, 4.3, 5.1],
    "nan_x1": [0.0, np.nan, 1.4, 4.3, 5.1],
    "inf_y1": [1.0, 1.2, np.inf, 4.3, 5.1],
    "ninf_x2": [0.0, 1.2, 1.4, -np.inf, 5.1],
    "nan_y2": [1.0, 1.2, 1.4, 4.3, np.nan],
}


@sweep("bad,layout", list(itertools.product(BAD_ROWS, ["NCHW", "NHWC"])),
       pure_jax=[("nan_y2", "NHWC")])
def test_bad_roi_gives_zero_and_no_gradient(bad, layout, implementation):
    x = jnp.asarray(_features(np.random.default_rng(0), layout) + 3.0)
    rois = jnp.asarray([GOOD, BAD_ROWS[bad], [1.0] + GOOD[1:]])
    fn = lambda f, r: prroi(f, r, 2, 1.0, layout=layout, implementation=implementation)
    out = np.asarray(fn(x, rois))
    assert not np.any(out[1])
    assert np.all(out[0] != 0) and np.all(out[2] != 0)
    dy = jnp.asarray(np.random.default_rng(1).standard_normal(out.shape))
    loss = lambda f, r: jnp.vdot(fn(f, r), dy)
    gx, gr = jax.jit(jax.grad(loss, argnums=(0, 1)))(x, rois)
    dy_good = dy[::2]
    gx_good, gr_good = jax.jit(jax.grad(lambda f, r: jnp.vdot(fn(f, r), dy_good),
                                        argnums=(0, 1)))(x, rois[::2])
    assert np.all(np.isfinite(gx)) and np.all(np.isfinite(gr))
    np.testing.assert_array_equal(np.asarray(gr)[1], 0.0)
    np.testing.assert_allclose(np.asarray(gr)[::2], gr_good, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(gx, gx_good, rtol=1e-12, atol=1e-12)
    assert np.all(np.asarray(gr)[::2, 1:] != 0)


def test_bad_box_in_per_image_format():
    x = jnp.asarray(_features(np.random.default_rng(1), "NCHW") + 3.0)
    boxes = jnp.asarray([[GOOD[1:], [1.0, np.nan, 3.0, 3.0]],
                         [[1.0, 1.0, np.inf, 3.0], GOOD[1:]]])
    out = np.asarray(prroi(x, boxes, 2))
    assert out.shape == (2, 2, C, 2, 2)
    assert not np.any(out[0, 1]) and not np.any(out[1, 0])
    assert np.all(out[0, 0] != 0) and np.all(out[1, 1] != 0)
    g = np.asarray(jax.grad(lambda r: jnp.sum(prroi(x, r, 2) ** 2))(boxes))
    assert np.all(np.isfinite(g))
    assert not np.any(g[0, 1]) and not np.any(g[1, 0]) and np.all(g[0, 0] != 0)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_huge_box_is_finite(dtype):
    # a 1e30 box averages the map's whole integral over an astronomic area
    # (1e17 in float32, where a bin's area of 1e60 would overflow)
    x = jnp.arange(25, dtype=dtype).reshape(1, 1, 5, 5)
    big = 1e30 if dtype == jnp.float64 else 1e17
    rois = jnp.asarray([[0, -big, -big, big, big], [0, 0.0, 0.0, big, big],
                        [0, 1.0, 1.0, 3.0, 3.0]], dtype)
    out = np.asarray(prroi(x, rois, 2), np.float64)
    assert np.all(np.isfinite(out)) and np.all(np.abs(out[:2]) < 1e-20)
    assert np.all(out[2] != 0)
    g = np.asarray(jax.grad(lambda r: jnp.sum(prroi(x, r, 2)))(rois), np.float64)
    assert np.all(np.isfinite(g))


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("n,c,h,w,k", [
    (2, 3, 5, 5, 0), (0, 3, 5, 5, 2), (2, 0, 5, 5, 2), (2, 3, 0, 5, 2), (2, 3, 5, 0, 2)])
def test_empty_sizes(layout, n, c, h, w, k):
    shape = (n, c, h, w) if layout == "NCHW" else (n, h, w, c)
    x = jnp.ones(shape)
    rois = jnp.asarray(np.tile([[0, 1.0, 1.0, 3.0, 2.0]], (k, 1)).reshape(k, 5))
    fn = lambda f, r: prroi(f, r, (2, 3), layout=layout)
    out = fn(x, rois)
    assert out.shape == ((k, c, 2, 3) if layout == "NCHW" else (k, 2, 3, c))
    assert not np.any(np.asarray(out))
    gx, gr = jax.grad(lambda f, r: jnp.sum(fn(f, r)), argnums=(0, 1))(x, rois)
    assert gx.shape == shape and not np.any(np.asarray(gx))
    assert gr.shape == rois.shape and not np.any(np.asarray(gr))


# ------------------------------------------------------------ derivatives

def _problem(seed, layout, fmt, scale=0.5, n=N, c=C, h=H, w=W):
    rng = np.random.default_rng(seed)
    x = _features(rng, layout, (n, c, h, w))
    rois = _rois(rng, fmt, n, h, w, scale)
    return x, rois, rng


def _box_differences(fn, x, rois, dy, step=1e-6):
    """Central differences of <fn(x, rois), dy> per ROI coordinate: every
    ROI's output depends on its own row alone, so one perturbed call per
    coordinate and sign serves all ROIs."""
    lead = rois.ndim - 1
    per_roi = jax.jit(lambda r: jnp.sum((fn(x, r) * dy).reshape(r.shape[:lead] + (-1,)), -1))
    fd = np.zeros(rois.shape)
    for j in range(rois.shape[-1] - 4, rois.shape[-1]):
        e = np.zeros(rois.shape)
        e[..., j] = step
        fd[..., j] = (np.asarray(per_roi(rois + e)) - np.asarray(per_roi(rois - e))) / (2 * step)
    return fd


@sweep("layout,fmt,scale", list(itertools.product(["NCHW", "NHWC"], ["K5", "NL4"], [1.0, 0.5])),
       pure_jax=[("NHWC", "K5", 0.5)])
def test_box_gradient(layout, fmt, scale, implementation):
    x, rois, rng = _problem(len(layout) + 10 * len(fmt) + int(8 * scale), layout, fmt, scale)
    fn = lambda f, r: prroi(f, r, OUT, scale, layout=layout, implementation=implementation)
    xj, rj = jnp.asarray(x), jnp.asarray(rois)
    out = fn(xj, rj)
    dy = jnp.asarray(rng.standard_normal(out.shape))
    grad = np.asarray(jax.jit(jax.grad(lambda r: jnp.vdot(fn(xj, r), dy)))(rj))
    assert grad.shape == rois.shape and grad.dtype == np.float64
    want = ref.prroi_pool_box_vjp(x, rois, OUT, scale, np.asarray(dy), layout=layout)
    np.testing.assert_allclose(grad, want, rtol=1e-10, atol=1e-10 * np.abs(want).max())
    fd = _box_differences(fn, xj, rj, dy)
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-6 * np.abs(fd).max())
    if fmt == "K5":
        np.testing.assert_array_equal(grad[:, 0], 0.0)
    assert np.count_nonzero(grad[..., -4:]) > grad[..., -4:].size // 2


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_kernel_matches_pure_jax(layout):
    x, rois, rng = _problem(3, layout, "K5")
    xj, rj = jnp.asarray(x), jnp.asarray(rois)
    dy = jnp.asarray(rng.standard_normal((len(rois),) + ((C,) + OUT if layout == "NCHW"
                                                        else OUT + (C,))))
    results = []
    for impl in (None, "xla"):
        fn = lambda f, r: prroi(f, r, OUT, 0.5, layout=layout, implementation=impl)
        out = fn(xj, rj)
        gx, gr = jax.jit(jax.grad(lambda f, r: jnp.vdot(fn(f, r), dy), argnums=(0, 1)))(xj, rj)
        tangent = jax.jvp(lambda r: fn(xj, r), (rj,), (jnp.ones_like(rj),))[1]
        results.append((out, gx, gr, tangent))
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
        assert np.any(np.asarray(a) != 0)


@sweep("layout,fmt", [("NCHW", "K5"), ("NHWC", "NL4")], pure_jax=[])
def test_box_jvp_jacfwd_agree_with_vjp(layout, fmt, implementation):
    x, rois, rng = _problem(5, layout, fmt, n=2, c=2, h=6, w=5)
    xj, rj = jnp.asarray(x), jnp.asarray(rois)
    fn = lambda r: prroi(xj, r, (2, 2), 0.5, layout=layout, implementation=implementation)
    out, vjp = jax.vjp(fn, rj)
    t = jnp.asarray(rng.standard_normal(rois.shape))
    _, tangent = jax.jvp(fn, (rj,), (t,))
    u = jnp.asarray(rng.standard_normal(out.shape))
    (ju,) = vjp(u)
    np.testing.assert_allclose(jnp.vdot(tangent, u), jnp.vdot(t, ju), rtol=1e-12)
    jac = np.asarray(jax.jacfwd(fn)(rj))
    assert jac.shape == out.shape + rois.shape
    np.testing.assert_allclose(jac, jax.jacrev(fn)(rj), rtol=1e-12, atol=1e-12)
    flat = jac.reshape(out.size, -1)
    for e in rng.choice(out.size, 5, replace=False):   # rows = vjp of unit cotangents
        unit = np.zeros(out.size)
        unit[e] = 1.0
        (row,) = vjp(jnp.asarray(unit.reshape(out.shape)))
        np.testing.assert_allclose(np.asarray(row).ravel(), flat[e], rtol=1e-12, atol=1e-12)
    assert np.count_nonzero(flat) > 0


@pytest.mark.parametrize("layout,fmt", [("NCHW", "K5"), ("NHWC", "NL4")])
def test_check_grads_features_and_boxes(layout, fmt):
    x, rois, _ = _problem(6, layout, fmt, n=2, c=2, h=6, w=5)
    xj, rj = jnp.asarray(x), jnp.asarray(rois)
    fn = lambda f, r: jnp.sum(jnp.sin(prroi(f, r, (2, 2), 0.5, layout=layout)))
    check_grads(lambda f: fn(f, rj), (xj,), order=2, modes=["fwd", "rev"], atol=1e-5,
                rtol=1e-5)
    # the coordinates alone: a step in a batch index of 0 would leave [0, N)
    index, coords = rj[..., :-4], rj[..., -4:]
    check_grads(lambda q: fn(xj, jnp.concatenate([index, q], -1)), (coords,), order=1,
                modes=["fwd", "rev"], atol=1e-5, rtol=1e-5, eps=1e-6)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_feature_jvp_is_linear(layout):
    x, rois, rng = _problem(7, layout, "K5")
    fn = lambda f: prroi(f, jnp.asarray(rois), OUT, 0.5, layout=layout)
    t = jnp.asarray(rng.standard_normal(x.shape))
    out, tangent = jax.jvp(fn, (jnp.asarray(x),), (t,))
    np.testing.assert_allclose(out, fn(jnp.asarray(x)), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(tangent, fn(t), rtol=1e-12, atol=1e-12)
    assert np.any(np.asarray(tangent) != 0)


@pytest.mark.parametrize("dtype", [BF16, F16, F32])
def test_gradient_dtypes(dtype):
    x, rois, _ = _problem(8, "NHWC", "NL4")
    xj = jnp.asarray(x, dtype)
    rj = jnp.asarray(rois, jnp.float32)
    loss = lambda f, r: jnp.sum(prroi(f, r, 2, 0.5, layout="NHWC").astype(jnp.float32) ** 2)
    gx, gr = jax.grad(loss, argnums=(0, 1))(xj, rj)
    assert gx.dtype == dtype and gr.dtype == jnp.float32
    assert np.any(np.asarray(gx, np.float32) != 0)
    assert np.all(np.isfinite(np.asarray(gr)))
    want = jax.grad(loss, argnums=1)(jnp.asarray(ref.round_to(x, dtype)), jnp.asarray(rois))
    tol = 1e-4 if dtype == F32 else 3e-2
    np.testing.assert_allclose(gr, want, rtol=tol, atol=tol * np.abs(np.asarray(want)).max())


# ------------------------------------------------------------ jit and vmap

def test_jit_equals_eager_and_reference():
    rng = np.random.default_rng(5)
    x = _features(rng, "NHWC")
    rois = _rois(rng, "K5", N, H, W, 1.0)
    fn = jax.jit(lambda f, r: prroi(f, r, OUT, 1.0, layout="NHWC"))
    out = fn(jnp.asarray(x), jnp.asarray(rois))
    np.testing.assert_array_equal(out, prroi(jnp.asarray(x), jnp.asarray(rois), OUT, 1.0,
                                             layout="NHWC"))
    _close(out, ref.prroi_pool(x, rois, OUT, 1.0, layout="NHWC"), F64)


def _custom_calls(fn, *args):
    return jax.jit(fn).lower(*args).compile().as_text().count('custom_call_target="jax_roi_')


@sweep("axes,fmt", list(itertools.product([(0, None), (None, 0), (0, 0)], ["K5", "NL4"])),
       pure_jax=[((0, 0), "K5")])
def test_vmap_equals_a_loop(axes, fmt, implementation):
    rng = _rng("vmap", axes, fmt)
    xs = np.stack([_features(rng, "NHWC") for _ in range(3)])
    rs = np.stack([_rois(rng, fmt, N, H, W, 1.0) for _ in range(3)])
    f = lambda x, r: prroi(x, r, (2, 3), 1.0, layout="NHWC", implementation=implementation)
    x_in = jnp.asarray(xs if axes[0] == 0 else xs[0])
    r_in = jnp.asarray(rs if axes[1] == 0 else rs[0])
    batched = jax.vmap(f, in_axes=axes)
    out = jax.jit(batched)(x_in, r_in)
    if implementation is None:
        assert _custom_calls(batched, x_in, r_in) == 1   # one kernel call, no loop
    dy = np.random.default_rng(1).standard_normal(out.shape)
    dx, dr = jax.jit(jax.grad(lambda x, r: jnp.vdot(batched(x, r), dy), argnums=(0, 1)))(
        x_in, r_in)
    dexps, drs = [], []
    for i in range(3):
        x, r = xs[i if axes[0] == 0 else 0], rs[i if axes[1] == 0 else 0]
        _close(out[i], ref.prroi_pool(x, r, (2, 3), 1.0, layout="NHWC"), F64)
        dexps.append(ref.prroi_pool_vjp(x, r, (2, 3), 1.0, dy[i], layout="NHWC"))
        drs.append(ref.prroi_pool_box_vjp(x, r, (2, 3), 1.0, dy[i], layout="NHWC"))
    _close(dx, np.stack(dexps) if axes[0] == 0 else sum(dexps), F64)
    np.testing.assert_allclose(dr, np.stack(drs) if axes[1] == 0 else sum(drs), rtol=1e-10,
                               atol=1e-10 * np.abs(np.stack(drs)).max())


def test_vmap_keeps_invalid_batch_index_invalid():
    rng = np.random.default_rng(3)
    maps = jnp.asarray(rng.standard_normal((2, 1, 2, 6, 7)))
    rois = jnp.asarray([[1.0, 3, 3, 4, 4], [-1.0, 3, 3, 4, 4], [0.0, 3, 3, 4, 4]])
    out = jax.vmap(lambda f: prroi(f, rois, 2))(maps)
    assert not np.any(np.asarray(out[:, :2]))
    assert np.all(np.asarray(out[:, 2]) != 0)


# ------------------------------------------------------------ Flax modules

@pytest.mark.parametrize("flavour", ["nnx", "linen"])
@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
def test_modules_equal_the_op(flavour, layout):
    rng = np.random.default_rng(3)
    features = jnp.asarray(_features(rng, layout, (2, 4, 9, 11)), jnp.float32)
    boxes = jnp.asarray(_rois(rng, "NL4", 2, 9, 11, 0.5), jnp.float32)
    kwargs = dict(output_size=(2, 3), spatial_scale=0.5)
    if flavour == "nnx":
        module = roi_nn.PrRoIPool(**kwargs, layout=layout)
    else:
        linen_module = roi_linen.PrRoIPool(**kwargs, layout=layout)
        module = lambda f, r: linen_module.apply({}, f, r)
    op = lambda f, r: jax_roi.prroi_pool(f, r, (2, 3), 0.5, layout=layout)
    rois = jnp.concatenate([jnp.array([[0.0], [1.0], [1.0]]), boxes[0, :3]], axis=1)
    for r, lead in ((rois, (3,)), (boxes, (2, 3))):
        out = module(features, r)
        assert out.shape == lead + ((2, 3, 4) if layout == "NHWC" else (4, 2, 3))
        np.testing.assert_array_equal(out, op(features, r))
        np.testing.assert_array_equal(jax.jit(module)(features, r), out)
        assert np.any(np.asarray(out) != 0)
    weights = jnp.asarray(rng.standard_normal(out.shape), out.dtype)
    gx, gr = jax.grad(lambda f, r: jnp.sum(module(f, r) * weights), argnums=(0, 1))(
        features, boxes)
    assert jnp.any(gx != 0) and jnp.any(gr != 0)
    ex, er = jax.grad(lambda f, r: jnp.sum(op(f, r) * weights), argnums=(0, 1))(features, boxes)
    np.testing.assert_array_equal(gx, ex)
    np.testing.assert_array_equal(gr, er)


def test_module_defaults_and_errors():
    m = roi_nn.PrRoIPool(7)
    assert (m.output_size, m.spatial_scale, m.layout) == ((7, 7), 1.0, "NHWC")
    lm = roi_linen.PrRoIPool(7, 0.25)
    assert lm.layout == "NHWC" and lm.spatial_scale == 0.25
    assert roi_linen.PrRoIPool(3).init(jax.random.key(0), jnp.ones((1, 8, 8, 2)),
                                       jnp.ones((1, 2, 4))) == {}
    for cls in (roi_nn.PrRoIPool, roi_linen.PrRoIPool):
        with pytest.raises(ValueError, match="output_size"):
            cls(0)
        with pytest.raises(ValueError, match="spatial_scale"):
            cls(2, -1.0)
        with pytest.raises(ValueError, match="layout"):
            cls(2, layout="nhwc")


# ------------------------------------------------------------ argument errors

def _call(**overrides):
    args = dict(features=jnp.ones((2, 3, 5, 5)), rois=jnp.asarray([GOOD]), output_size=2)
    args.update(overrides)
    return jax_roi.prroi_pool(**args)


@pytest.mark.parametrize("overrides,error,name", [
    (dict(rois=jnp.ones((3, 4))), ValueError, "rois"),
    (dict(rois=jnp.ones((3, 6))), ValueError, "rois"),
    (dict(rois=jnp.ones((2, 3, 5))), ValueError, "rois"),
    (dict(rois=jnp.ones((3, 2, 4))), ValueError, "rois"),   # N != batch size
    (dict(rois=jnp.ones((3, 5), jnp.int32)), TypeError, "rois"),
    (dict(features=jnp.ones((2, 3, 5))), ValueError, "features"),
    (dict(features=jnp.ones((2, 3, 5, 5), jnp.int32)), TypeError, "features"),
    (dict(layout="nhwc"), ValueError, "layout"),
    (dict(output_size=0), ValueError, "output_size"),
    (dict(output_size=(2, 2, 2)), TypeError, "output_size"),
    (dict(spatial_scale=-1.0), ValueError, "spatial_scale"),
    (dict(spatial_scale=float("nan")), ValueError, "spatial_scale"),
    (dict(implementation="gpu"), ValueError, "implementation"),
])
def test_argument_errors_name_the_argument(overrides, error, name):
    with pytest.raises(error, match=rf"\b{name}\b"):
        _call(**overrides)


def test_errors_raise_at_trace_time():
    traced = jax.jit(lambda f, r: jax_roi.prroi_pool(f, r, 2))
    with pytest.raises(ValueError, match="rois"):
        traced.lower(jnp.ones((2, 3, 5, 5)), jnp.ones((3, 4)))
