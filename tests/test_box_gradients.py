"""Derivatives with respect to the ROIs (semantics.md, "Gradient with respect
to ROIs"): for roi_align (avg and max, aligned or not, fixed and adaptive
grids), roi_align_rotated (clockwise too), ps_roi_align,
multi_scale_roi_align and prroi_pool, in both layouts and both ROI formats:

- jax.grad against central finite differences of the forward, in float64,
  on boxes whose samples stay clear of every kink (integer pixel
  coordinates, the map's clamps, jumps of the adaptive grid, the one-pixel
  clamp of aligned=False, ties of the max mode, pyramid level boundaries);
- the kernels against the pure-JAX implementation (JAX's own autodiff of
  its forward) on unrestricted boxes, edges and outside reads included;
- jax.jvp, jax.jacfwd, jax.jacrev and explicit vjps of unit cotangents agree;
- roi_pool and ps_roi_pool: exactly zero; the batch index column: exactly
  zero; invalid ROIs: exactly zero and no NaN anywhere else;
- vmap of grad; no box-derivative kernel in a gradient with respect to the
  features alone; float32 and bfloat16 features against float64.
"""

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_roi
import numpy_reference as ref
from op_cases import BF16, F32, _rng

N, C, H, W = 2, 3, 10, 11         # H != W catches swapped axes
OUT = (2, 3)                       # PH != PW for the same reason
SCALE = 0.5                        # image coordinates = map coordinates / SCALE
PS_C = 2 * OUT[0] * OUT[1]         # two output channels of position-sensitive bins
PER_IMAGE = 3                      # boxes per image: K = N * PER_IMAGE

# A two-level pyramid: a box of side in [8, 16) goes to the first map
# (scale 1/2), in [16, 32) to the second (1/4), with canonical 16 at level 2.
PYR_SCALES = (1 / 2, 1 / 4)
PYR_SIZES = ((20, 22), (10, 11))
PYR_CANONICAL = dict(canonical_scale=16, canonical_level=2)

STEP = 1e-6                        # central differences
MARGIN = 2e-3                      # how far samples keep from kinks


class Case(NamedTuple):
    kind: str                      # align, rotated, ps_align, multiscale, prroi
    mode: str = "avg"
    aligned: bool = True
    sr: int = -1
    clockwise: bool = False


CASES = {
    "align_avg-aligned-sr2": Case("align", "avg", True, 2),
    "align_avg-aligned-adaptive": Case("align", "avg", True, -1),
    "align_avg-unaligned-sr2": Case("align", "avg", False, 2),
    "align_avg-unaligned-adaptive": Case("align", "avg", False, 0),
    "align_max-aligned-sr2": Case("align", "max", True, 2),
    "align_max-aligned-adaptive": Case("align", "max", True, -1),
    "align_max-unaligned-sr3": Case("align", "max", False, 3),
    "align_max-unaligned-adaptive": Case("align", "max", False, -1),
    "rotated-aligned-sr2": Case("rotated", aligned=True, sr=2),
    "rotated-aligned-adaptive-clockwise": Case("rotated", aligned=True, sr=-1, clockwise=True),
    "rotated-unaligned-adaptive": Case("rotated", aligned=False, sr=0),
    "rotated-unaligned-sr2-clockwise": Case("rotated", aligned=False, sr=2, clockwise=True),
    "ps_align-sr2": Case("ps_align", sr=2),
    "ps_align-adaptive": Case("ps_align", sr=-1),
    "multiscale-avg-aligned-adaptive": Case("multiscale", "avg", True, -1),
    "multiscale-max-unaligned-sr2": Case("multiscale", "max", False, 2),
    "prroi": Case("prroi"),
}


def _coords(case):
    return 5 if case.kind == "rotated" else 4


def _formats(case):
    return ["NL"] if case.kind == "multiscale" else ["K", "NL"]


# ------------------------------------------------------------ the ops

def op_fn(case, layout, implementation=None):
    """fn(features, rois) for a case; features a list of maps for a pyramid."""
    kw = dict(layout=layout, implementation=implementation)
    if case.kind == "align":
        return lambda f, r: jax_roi.roi_align(f, r, OUT, SCALE, case.sr, case.aligned,
                                              mode=case.mode, **kw)
    if case.kind == "rotated":
        return lambda f, r: jax_roi.roi_align_rotated(f, r, OUT, SCALE, case.sr, case.aligned,
                                                      clockwise=case.clockwise, **kw)
    if case.kind == "ps_align":
        return lambda f, r: jax_roi.ps_roi_align(f, r, OUT, SCALE, case.sr, **kw)
    if case.kind == "multiscale":
        return lambda f, r: jax_roi.multi_scale_roi_align(
            f, r, OUT, PYR_SCALES, case.sr, case.aligned, **PYR_CANONICAL, mode=case.mode, **kw)
    assert case.kind == "prroi"
    return lambda f, r: jax_roi.prroi_pool(f, r, OUT, SCALE, **kw)


def _to_layout(x, layout):
    return x if layout == "NCHW" else x.transpose(0, 2, 3, 1)


def make_features(case, rng, dtype=np.float64):
    """NCHW float64 features (a list for a pyramid), rounded to `dtype`."""
    c = PS_C if case.kind == "ps_align" else C
    if case.kind == "multiscale":
        return [ref.round_to(rng.standard_normal((N, c, h, w)), dtype) for h, w in PYR_SIZES]
    return ref.round_to(rng.standard_normal((N, c, H, W)), dtype)


def in_layout(features, layout):
    if isinstance(features, list):
        return [jnp.asarray(_to_layout(f, layout)) for f in features]
    return jnp.asarray(_to_layout(features, layout))


# ------------------------------------------------- boxes clear of kinks

def _far_from_integers(v, margin=MARGIN):
    v = np.asarray(v, np.float64)
    return bool(np.all(np.abs(v - np.round(v)) > margin))


def _inside(pos, extent):
    """Every position strictly inside [0, extent - 1], clear of integers:
    bilinear interpolates there, unclamped, on one smooth piece."""
    pos = np.asarray(pos)
    return bool(np.all(pos > MARGIN) and np.all(pos < extent - 1 - MARGIN)
                and _far_from_integers(pos))


def _grid(size, bins, sr):
    """Samples per bin along one axis and whether the adaptive grid is clear
    of a jump of ceil(size / bins)."""
    if sr > 0:
        return sr, True
    return int(math.ceil(size / bins)), _far_from_integers(size / bins)


def _bilinear(planes, y, x):
    """The contract's bilinear inside the map, [C, ...] at arrays of positions."""
    y0 = np.floor(y).astype(int)
    x0 = np.floor(x).astype(int)
    ly, lx = y - y0, x - x0
    return ((1 - ly) * (1 - lx) * planes[:, y0, x0] + (1 - ly) * lx * planes[:, y0, x0 + 1]
            + ly * (1 - lx) * planes[:, y0 + 1, x0] + ly * lx * planes[:, y0 + 1, x0 + 1])


def _clear_winners(planes, y, x, gh, gw):
    """Max mode: in every bin and channel the best sample leads the next by
    a margin, so a small step keeps the winner. y, x: [PH*gh, PW*gw]."""
    v = _bilinear(planes, y, x)                                  # [C, PH*gh, PW*gw]
    v = v.reshape(v.shape[0], OUT[0], gh, OUT[1], gw).transpose(0, 1, 3, 2, 4)
    v = np.sort(v.reshape(v.shape[:3] + (gh * gw,)), -1)
    return gh * gw == 1 or bool(np.all(v[..., -1] - v[..., -2] > 1e-3))


def _align_smooth(box, s, aligned, sr, mode, planes):
    """box (x1, y1, x2, y2) in image coordinates on a map of scale s."""
    x1, y1, x2, y2 = box
    o = 0.5 if aligned else 0.0
    rw, rh = (x2 - x1) * s, (y2 - y1) * s
    if not aligned and (rw < 1.05 or rh < 1.05):   # off the one-pixel clamp
        return False
    gh, ok_h = _grid(rh, OUT[0], sr)
    gw, ok_w = _grid(rw, OUT[1], sr)
    if not (ok_h and ok_w):
        return False
    ys = y1 * s - o + (np.arange(OUT[0])[:, None] + (np.arange(gh) + 0.5) / gh).ravel() \
        * rh / OUT[0]
    xs = x1 * s - o + (np.arange(OUT[1])[:, None] + (np.arange(gw) + 0.5) / gw).ravel() \
        * rw / OUT[1]
    if not (_inside(ys, planes.shape[1]) and _inside(xs, planes.shape[2])):
        return False
    if mode == "max":
        yy, xx = np.meshgrid(ys, xs, indexing="ij")
        return _clear_winners(planes, yy, xx, gh, gw)
    return True


def _rotated_smooth(box, aligned, sr, clockwise, planes):
    cx, cy, bw, bh, angle = box
    s = SCALE
    o = 0.5 if aligned else 0.0
    rw, rh = bw * s, bh * s
    if not aligned and (rw < 1.05 or rh < 1.05):
        return False
    gh, ok_h = _grid(rh, OUT[0], sr)
    gw, ok_w = _grid(rw, OUT[1], sr)
    if not (ok_h and ok_w):
        return False
    theta = np.deg2rad(angle) * (-1 if clockwise else 1)
    yy = -rh / 2 + (np.arange(OUT[0])[:, None] + (np.arange(gh) + 0.5) / gh).ravel() \
        * rh / OUT[0]
    xx = -rw / 2 + (np.arange(OUT[1])[:, None] + (np.arange(gw) + 0.5) / gw).ravel() \
        * rw / OUT[1]
    yy, xx = np.meshgrid(yy, xx, indexing="ij")
    y = yy * np.cos(theta) - xx * np.sin(theta) + cy * s - o
    x = yy * np.sin(theta) + xx * np.cos(theta) + cx * s - o
    return _inside(y, planes.shape[1]) and _inside(x, planes.shape[2])


def _pyramid_level(box):
    """(index into PYR_SCALES, whether the level rule is clear of a boundary)."""
    x1, y1, x2, y2 = box
    level = PYR_CANONICAL["canonical_level"] + np.log2(
        np.sqrt((x2 - x1) * (y2 - y1)) / PYR_CANONICAL["canonical_scale"])
    index = int(np.clip(np.floor(level + 1e-6), 1, 2)) - 1
    return index, _far_from_integers(level, 1e-3)


def _candidate(case, rng, i):
    """One random box (image coordinates) roughly inside the map; the i-th
    box of a pyramid goes to level i % 2."""
    if case.kind == "rotated":
        cx = rng.uniform(0.35, 0.65) * W / SCALE
        cy = rng.uniform(0.35, 0.65) * H / SCALE
        return [cx, cy, rng.uniform(1.2, 6.0) / SCALE, rng.uniform(1.2, 6.0) / SCALE,
                rng.uniform(-180, 180)]
    if case.kind == "multiscale":
        index = i % 2
        s = PYR_SCALES[index]
        side = rng.uniform(8.3, 15.7) if index == 0 else rng.uniform(16.6, 27.0)  # image
        aspect = rng.uniform(0.9, 1.1)
        bw, bh = side * aspect, side / aspect
        h, w = PYR_SIZES[index]
        x1 = rng.uniform(0.6, w - 1.6 - bw * s) / s
        y1 = rng.uniform(0.6, h - 1.6 - bh * s) / s
        return [x1, y1, x1 + bw, y1 + bh]
    x1 = rng.uniform(0.6, W / 2)
    y1 = rng.uniform(0.6, H / 2)
    x2 = rng.uniform(x1 + 1.2, W - 1.6)
    y2 = rng.uniform(y1 + 1.2, H - 1.6)
    return list(np.array([x1, y1, x2, y2]) / SCALE)


def smooth(case, box, features, b):
    """Whether the op is smooth in the box within a step (see the module doc)."""
    if case.kind == "align":
        return _align_smooth(box, SCALE, case.aligned, case.sr, case.mode, features[b])
    if case.kind == "ps_align":
        return _align_smooth(box, SCALE, True, case.sr, "avg", features[b])
    if case.kind == "rotated":
        return _rotated_smooth(box, case.aligned, case.sr, case.clockwise, features[b])
    if case.kind == "multiscale":
        index, clear = _pyramid_level(box)
        return clear and _align_smooth(box, PYR_SCALES[index], case.aligned, case.sr,
                                       case.mode, features[index][b])
    return (box[2] - box[0]) * SCALE > 0.1 and (box[3] - box[1]) * SCALE > 0.1


def smooth_rois(case, rng, features, fmt):
    """[K, 1 + coords] rows (fmt "K") or [N, L, coords] boxes whose samples
    stay clear of every kink."""
    batch = rng.integers(0, N, N * PER_IMAGE) if fmt == "K" \
        else np.repeat(np.arange(N), PER_IMAGE)
    boxes = []
    for i, b in enumerate(batch):
        for _ in range(2000):
            box = _candidate(case, rng, i)
            if smooth(case, box, features, b):
                break
        else:
            raise AssertionError(f"no smooth box found for {case}")
        boxes.append(box)
    boxes = np.asarray(boxes)
    if fmt == "NL":
        return boxes.reshape(N, PER_IMAGE, -1)
    return np.concatenate([batch[:, None].astype(np.float64), boxes], 1)


def rough_rois(case, rng, fmt):
    """Unrestricted boxes: past the edges, outside, sub-pixel, any grid."""
    k = N * PER_IMAGE
    if case.kind == "rotated":
        boxes = np.stack([rng.uniform(-2, W + 2, k), rng.uniform(-2, H + 2, k),
                          rng.uniform(0.3, 0.9 * W, k), rng.uniform(0.3, 0.9 * H, k)], 1) / SCALE
        boxes = np.concatenate([boxes, rng.uniform(-200, 200, (k, 1))], 1)
    else:
        scale = SCALE if case.kind != "multiscale" else 1 / 8
        h, w = (H, W) if case.kind != "multiscale" else (5, 5.5)
        x1, y1 = rng.uniform(-2, w + 1, k), rng.uniform(-2, h + 1, k)
        boxes = np.stack([x1, y1, x1 + rng.uniform(0.2, 0.9 * w, k),
                          y1 + rng.uniform(0.2, 0.9 * h, k)], 1) / scale
    if fmt == "NL":
        return boxes.reshape(N, PER_IMAGE, -1)
    b = rng.integers(0, N, k).astype(np.float64)
    return np.concatenate([b[:, None], boxes], 1)


# ------------------------------------------------------------ helpers

def _cotangent(fn, features, rois, rng, dtype=np.float64):
    out = jax.eval_shape(fn, features, rois)
    return jnp.asarray(ref.round_to(rng.standard_normal(out.shape), dtype), out.dtype)


def box_grad(fn, features, rois, dy):
    return np.asarray(jax.jit(jax.grad(lambda r: jnp.vdot(fn(features, r), dy)))(rois))


def central_differences(fn, features, rois, dy, coords, step=STEP):
    """Central differences of <fn(features, rois), dy> per ROI coordinate.
    Every ROI's output depends on its own row alone, so one call per
    coordinate and sign serves every ROI."""
    lead = rois.ndim - 1
    per_roi = jax.jit(lambda r: jnp.sum(
        (fn(features, r) * dy).reshape(r.shape[:lead] + (-1,)), -1))
    rois = np.asarray(rois)
    fd = np.zeros(rois.shape)
    for j in range(rois.shape[-1] - coords, rois.shape[-1]):
        e = np.zeros(rois.shape)
        e[..., j] = step
        fd[..., j] = (np.asarray(per_roi(rois + e)) - np.asarray(per_roi(rois - e))) / (2 * step)
    return fd


def _case_params(layouts=("NCHW", "NHWC"), cases=None):
    params = []
    for name in cases or CASES:
        for layout in layouts:
            for fmt in _formats(CASES[name]):
                params.append(pytest.param(name, layout, fmt, id=f"{name}-{layout}-{fmt}"))
    return params


# ------------------------------------------------- finite differences

@pytest.mark.parametrize("name,layout,fmt", _case_params())
def test_grad_matches_central_differences(name, layout, fmt):
    case = CASES[name]
    rng = _rng("fd", name, layout, fmt)
    x = make_features(case, rng)
    rois = smooth_rois(case, rng, x, fmt)
    fn = op_fn(case, layout)
    features, rj = in_layout(x, layout), jnp.asarray(rois)
    dy = _cotangent(fn, features, rj, rng)
    grad = box_grad(fn, features, rj, dy)
    assert grad.shape == rois.shape and grad.dtype == np.float64
    fd = central_differences(fn, features, rj, dy, _coords(case))
    scale = np.abs(fd).max()
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-6 * scale)
    coords = grad[..., -_coords(case):]
    assert np.count_nonzero(coords) == coords.size      # every coordinate moves the output
    if fmt == "K":
        # the batch index: exactly zero in both modes
        np.testing.assert_array_equal(grad[:, 0], 0.0)
        t = np.zeros(rois.shape)
        t[:, 0] = 1.0
        _, tangent = jax.jvp(lambda r: fn(features, r), (rj,), (jnp.asarray(t),))
        np.testing.assert_array_equal(np.asarray(tangent), 0.0)


@pytest.mark.parametrize("mode", ["avg", "max"])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_one_pixel_clamp_of_unaligned_boxes(mode, layout):
    # aligned=False clamps rh (and rw) to one pixel: rh is then constant,
    # so dy/dy1 = s and dy/dy2 = 0: x2 and y2 get exactly 0, x1 and y1 the
    # differences of the forward (the box moves as a whole).
    rng = _rng("clamp", mode, layout)
    x = rng.standard_normal((N, C, H, W))
    rois = np.array([[0, 6.3, 5.2, 6.9, 5.9], [1, 9.1, 8.4, 9.5, 8.6], [1, 12.2, 4.7, 12.6, 5.3]])
    for impl in (None, "xla") if (layout, mode) == ("NCHW", "avg") else (None,):
        fn = lambda f, r: jax_roi.roi_align(f, r, (2, 2), SCALE, 2, False, mode=mode,
                                            layout=layout, implementation=impl)
        features, rj = jnp.asarray(_to_layout(x, layout)), jnp.asarray(rois)
        dy = _cotangent(fn, features, rj, rng)
        grad = box_grad(fn, features, rj, dy)
        np.testing.assert_array_equal(grad[:, 3:], 0.0)
        assert np.all(grad[:, 1:3] != 0)
        fd = central_differences(fn, features, rj, dy, 4)
        np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-6 * np.abs(fd).max())


# ------------------------------------------------- kernel against pure JAX

XLA_CASES = [("align_avg-aligned-sr2", "NCHW", "K"), ("align_avg-unaligned-adaptive", "NHWC", "NL"),
             ("align_max-aligned-adaptive", "NHWC", "K"), ("align_max-unaligned-sr3", "NCHW", "NL"),
             ("rotated-aligned-adaptive-clockwise", "NCHW", "K"),
             ("rotated-unaligned-sr2-clockwise", "NHWC", "NL"),
             ("ps_align-adaptive", "NHWC", "K"),
             ("multiscale-avg-aligned-adaptive", "NCHW", "NL"),
             ("multiscale-max-unaligned-sr2", "NHWC", "NL"),
             ("prroi", "NHWC", "NL")]


@pytest.mark.parametrize("name,layout,fmt", [pytest.param(*c, id="-".join(c)) for c in XLA_CASES])
def test_kernel_matches_pure_jax(name, layout, fmt):
    # The same derivative from the box kernels and from JAX's autodiff of
    # the pure-JAX forward: on smooth boxes, and on unrestricted ones where
    # samples clamp at the edges, read zeros outside and grids are adaptive.
    case = CASES[name]
    rng = _rng("xla", name, layout, fmt)
    x = make_features(case, rng)
    rois = np.concatenate([smooth_rois(case, rng, x, fmt), rough_rois(case, rng, fmt)],
                          axis=0 if fmt == "K" else 1)
    features, rj = in_layout(x, layout), jnp.asarray(rois)
    t = jnp.asarray(rng.standard_normal(rois.shape))
    results = []
    for impl in (None, "xla"):
        fn = op_fn(case, layout, impl)
        dy = _cotangent(fn, features, rj, np.random.default_rng(1))
        both = jax.jit(lambda r, t: (
            jax.grad(lambda q: jnp.vdot(fn(features, q), dy))(r),
            jax.jvp(lambda q: fn(features, q), (r,), (t,))[1]))
        results.append([np.asarray(a) for a in both(rj, t)])
    for kernel, pure in zip(*results):
        np.testing.assert_allclose(kernel, pure, rtol=1e-10, atol=1e-10 * np.abs(pure).max())
        assert np.count_nonzero(pure) > pure.size // 4


# ------------------------------------------------- forward and reverse mode

@pytest.mark.parametrize("name,layout,fmt", [
    pytest.param(name, layout, fmt, id=f"{name}-{layout}-{fmt}")
    for i, name in enumerate(CASES)
    for layout, fmt in [(("NCHW", "K"), ("NHWC", "NL"))[i % 2]]
    if fmt in _formats(CASES[name])] + [
    pytest.param("multiscale-avg-aligned-adaptive", "NCHW", "NL",
                 id="multiscale-avg-aligned-adaptive-NCHW-NL")])
def test_jvp_jacfwd_and_vjp_agree(name, layout, fmt):
    case = CASES[name]
    rng = _rng("modes", name, layout, fmt)
    x = make_features(case, rng)
    rois = jnp.asarray(smooth_rois(case, rng, x, fmt))
    features = in_layout(x, layout)
    fn = lambda r: op_fn(case, layout)(features, r)
    out, vjp = jax.vjp(fn, rois)
    t = jnp.asarray(rng.standard_normal(rois.shape))
    out2, tangent = jax.jvp(fn, (rois,), (t,))
    np.testing.assert_array_equal(out, out2)
    u = jnp.asarray(rng.standard_normal(out.shape))
    (ju,) = vjp(u)
    np.testing.assert_allclose(jnp.vdot(tangent, u), jnp.vdot(t, ju), rtol=1e-12)
    jac = np.asarray(jax.jacfwd(fn)(rois))
    assert jac.shape == out.shape + rois.shape
    np.testing.assert_allclose(jac, jax.jacrev(fn)(rois), rtol=1e-12, atol=1e-12)
    flat = jac.reshape(out.size, -1)
    for e in rng.choice(out.size, 6, replace=False):    # rows = vjps of unit cotangents
        unit = np.zeros(out.size)
        unit[e] = 1.0
        (row,) = vjp(jnp.asarray(unit.reshape(out.shape)))
        np.testing.assert_allclose(np.asarray(row).ravel(), flat[e], rtol=1e-12, atol=1e-12)
    # the tangent is linear in the ROIs' tangent
    _, tangent2 = jax.jvp(fn, (rois,), (2 * t,))
    np.testing.assert_allclose(tangent2, 2 * tangent, rtol=1e-12, atol=1e-12)
    assert np.count_nonzero(flat) > 0


@pytest.mark.parametrize("name", ["align_avg-aligned-sr2", "align_max-unaligned-adaptive",
                                  "rotated-aligned-sr2", "prroi"])
def test_features_and_rois_together(name):
    # argnums=(0, 1) and a jvp in both: the sum of the two derivatives
    case = CASES[name]
    rng = _rng("together", name)
    x = make_features(case, rng)
    rois = jnp.asarray(smooth_rois(case, rng, x, "K"))
    features = jnp.asarray(x)
    fn = op_fn(case, "NCHW")
    dy = _cotangent(fn, features, rois, rng)
    gx, gr = jax.grad(lambda f, r: jnp.vdot(fn(f, r), dy), argnums=(0, 1))(features, rois)
    np.testing.assert_array_equal(gr, jax.grad(lambda r: jnp.vdot(fn(features, r), dy))(rois))
    np.testing.assert_array_equal(gx, jax.grad(lambda f: jnp.vdot(fn(f, rois), dy))(features))
    tx, tr = jnp.asarray(rng.standard_normal(x.shape)), jnp.asarray(rng.standard_normal(rois.shape))
    _, both = jax.jvp(fn, (features, rois), (tx, tr))
    _, only_x = jax.jvp(lambda f: fn(f, rois), (features,), (tx,))
    _, only_r = jax.jvp(lambda r: fn(features, r), (rois,), (tr,))
    np.testing.assert_allclose(both, only_x + only_r, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(jnp.vdot(both, dy), jnp.vdot(gx, tx) + jnp.vdot(gr, tr),
                               rtol=1e-10)


# ------------------------------------------------- ops without a box derivative

@pytest.mark.parametrize("implementation", [None, "xla"], ids=["kernel", "pure_jax"])
@pytest.mark.parametrize("layout,fmt", [("NCHW", "K"), ("NHWC", "NL")])
@pytest.mark.parametrize("op", ["roi_pool", "ps_roi_pool"])
def test_rounded_ops_have_exactly_zero_box_derivative(op, layout, fmt, implementation):
    rng = _rng("zero", op, layout, fmt)
    c = PS_C if op == "ps_roi_pool" else C
    features = jnp.asarray(_to_layout(rng.standard_normal((N, c, H, W)), layout))
    rois = jnp.asarray(rough_rois(CASES["align_avg-aligned-sr2"], rng, fmt))
    fn = lambda r: getattr(jax_roi, op)(features, r, OUT, SCALE, layout=layout,
                                        implementation=implementation)
    out = fn(rois)
    assert np.any(np.asarray(out) != 0)
    dy = jnp.asarray(rng.standard_normal(out.shape))
    grad = jax.grad(lambda r: jnp.vdot(fn(r), dy))(rois)
    assert grad.shape == rois.shape
    np.testing.assert_array_equal(np.asarray(grad), 0.0)
    _, tangent = jax.jvp(fn, (rois,), (jnp.asarray(rng.standard_normal(rois.shape)),))
    np.testing.assert_array_equal(np.asarray(tangent), 0.0)


# ------------------------------------------------- invalid ROIs

BAD = {"index_minus_one": (0, -1.0), "index_n": (0, float(N)), "nan_index": (0, np.nan),
       "nan_coordinate": (2, np.nan), "inf_coordinate": (3, np.inf)}


@pytest.mark.parametrize("name,implementation", [
    pytest.param(n, None, id=f"{n}-kernel") for n in CASES if CASES[n].kind != "multiscale"] + [
    pytest.param(n, "xla", id=f"{n}-pure_jax") for n in ("align_max-aligned-sr2",)])
def test_invalid_rois_get_zero_and_do_not_poison_valid_ones(name, implementation):
    case = CASES[name]
    rng = _rng("invalid", name)
    x = make_features(case, rng)
    good = smooth_rois(case, rng, x, "K")
    bad_rows = []
    for column, value in BAD.values():
        row = good[len(bad_rows) % len(good)].copy()
        row[column] = value
        bad_rows.append(row)
    rois = np.concatenate([good[:3], bad_rows, good[3:]])
    is_bad = np.arange(len(rois))
    is_bad = (is_bad >= 3) & (is_bad < 3 + len(bad_rows))
    features = jnp.asarray(x)
    fn = op_fn(case, "NCHW", implementation)
    out = fn(features, jnp.asarray(rois))
    assert not np.any(np.asarray(out)[is_bad])
    dy = jnp.asarray(rng.standard_normal(out.shape))
    loss = lambda f, r, d: jnp.vdot(fn(f, r), d)
    gx, gr = jax.jit(jax.grad(loss, argnums=(0, 1)))(features, jnp.asarray(rois), dy)
    gx_good, gr_good = jax.jit(jax.grad(loss, argnums=(0, 1)))(
        features, jnp.asarray(rois[~is_bad]), dy[~is_bad])
    gr = np.asarray(gr)
    assert np.all(np.isfinite(gr)) and np.all(np.isfinite(np.asarray(gx)))
    np.testing.assert_array_equal(gr[is_bad], 0.0)
    np.testing.assert_allclose(gr[~is_bad], gr_good, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(gx, gx_good, rtol=1e-12, atol=1e-12)
    assert np.count_nonzero(gr[~is_bad][:, 1:]) == gr[~is_bad][:, 1:].size
    # forward mode: a tangent on the bad rows moves nothing
    t = np.zeros(rois.shape)
    t[is_bad] = 1.0
    _, tangent = jax.jvp(lambda r: fn(features, r), (jnp.asarray(rois),), (jnp.asarray(t),))
    np.testing.assert_array_equal(np.asarray(tangent), 0.0)


@pytest.mark.parametrize("name", ["align_avg-unaligned-adaptive", "align_max-aligned-sr2",
                                  "rotated-aligned-sr2", "ps_align-adaptive",
                                  "multiscale-avg-aligned-adaptive",
                                  "multiscale-max-unaligned-sr2", "prroi"])
def test_non_finite_box_in_per_image_format(name):
    case = CASES[name]
    rng = _rng("invalid_nl", name)
    x = make_features(case, rng)
    boxes = smooth_rois(case, rng, x, "NL")
    bad = boxes.copy()
    bad[0, 1, 0] = np.nan
    bad[1, 2, -1] = np.inf
    features = in_layout(x, "NHWC")
    fn = op_fn(case, "NHWC")
    dy = _cotangent(fn, features, jnp.asarray(boxes), rng)
    keep = np.ones((N, PER_IMAGE), bool)
    keep[0, 1] = keep[1, 2] = False
    grad_bad = box_grad(fn, features, jnp.asarray(bad), dy)
    grad = box_grad(fn, features, jnp.asarray(boxes), dy)
    assert np.all(np.isfinite(grad_bad))
    np.testing.assert_array_equal(grad_bad[~keep], 0.0)
    np.testing.assert_allclose(grad_bad[keep], grad[keep], rtol=1e-12, atol=1e-12)
    assert np.all(grad[keep] != 0)


# ------------------------------------------------- vmap

@pytest.mark.parametrize("axes", [(None, 0), (0, 0)])
@pytest.mark.parametrize("name,fmt", [("align_avg-aligned-adaptive", "K"),
                                      ("align_max-aligned-sr2", "NL"),
                                      ("rotated-aligned-adaptive-clockwise", "K"),
                                      ("ps_align-sr2", "NL"),
                                      ("multiscale-avg-aligned-adaptive", "NL"),
                                      ("prroi", "K")])
def test_vmap_of_grad_equals_a_loop(name, fmt, axes):
    case = CASES[name]
    rng = _rng("vmap", name, fmt, axes)
    xs = [make_features(case, rng) for _ in range(3)]
    rs = np.stack([smooth_rois(case, rng, xs[i if axes[0] == 0 else 0], fmt) for i in range(3)])
    fn = op_fn(case, "NHWC")
    if case.kind == "multiscale":
        stacked = [jnp.stack([in_layout(x, "NHWC")[level] for x in xs]) for level in range(2)]
    else:
        stacked = jnp.stack([in_layout(x, "NHWC") for x in xs])
    f_in = stacked if axes[0] == 0 else in_layout(xs[0], "NHWC")
    dy = _cotangent(fn, in_layout(xs[0], "NHWC"), jnp.asarray(rs[0]), rng)
    grad = lambda f, r: jax.grad(lambda q: jnp.vdot(fn(f, q), dy))(r)
    batched = np.asarray(jax.jit(jax.vmap(grad, in_axes=axes))(f_in, jnp.asarray(rs)))
    for i in range(3):
        want = box_grad(fn, in_layout(xs[i if axes[0] == 0 else 0], "NHWC"),
                        jnp.asarray(rs[i]), dy)
        np.testing.assert_allclose(batched[i], want, rtol=1e-12, atol=1e-12)
        assert np.count_nonzero(want) > 0
    # jacfwd under vmap: the box tangents batched
    jac = jax.vmap(lambda r: jax.jvp(lambda q: fn(in_layout(xs[0], "NHWC"), q), (r,),
                                     (jnp.ones_like(r),))[1])(jnp.asarray(rs))
    for i in range(3):
        want = jax.jvp(lambda q: fn(in_layout(xs[0], "NHWC"), q), (jnp.asarray(rs[i]),),
                       (jnp.ones_like(jnp.asarray(rs[i])),))[1]
        np.testing.assert_allclose(jac[i], want, rtol=1e-12, atol=1e-12)


# ------------------------------------------------- free when unused

def _hlo_texts(fn, *args):
    lowered = jax.jit(fn).lower(*args)
    return lowered.as_text(), lowered.compile().as_text()


@pytest.mark.parametrize("name", list(CASES) + ["roi_pool", "ps_roi_pool"])
def test_feature_gradient_runs_no_box_derivative(name):
    if name in ("roi_pool", "ps_roi_pool"):
        case = CASES["align_avg-aligned-sr2"] if name == "roi_pool" else CASES["ps_align-sr2"]
        fn = lambda f, r: getattr(jax_roi, name)(f, r, OUT, SCALE, layout="NHWC")
    else:
        case = CASES[name]
        fn = op_fn(case, "NHWC")
    rng = _rng("free", name)
    x = make_features(case, rng)
    fmt = "NL" if case.kind == "multiscale" else "K"
    features, rois = in_layout(x, "NHWC"), jnp.asarray(smooth_rois(case, rng, x, fmt))
    dy = _cotangent(fn, features, rois, rng)
    loss = lambda f, r: jnp.vdot(fn(f, r), dy)
    box_words = ("box_vjp", "box_jvp")
    # features alone, reverse and forward mode: no box kernel, lowered or compiled
    for text in (*_hlo_texts(jax.grad(loss), features, rois),
                 *_hlo_texts(lambda f, r: jax.jvp(lambda g: fn(g, r), (f,), (f,))[1],
                             features, rois)):
        assert not any(word in text for word in box_words)
        assert 'custom_call_target="jax_roi_' in text or "custom_call" in text
    has_box = name not in ("roi_pool", "ps_roi_pool")
    # the ROIs: reverse mode runs box_vjp, forward mode box_jvp
    _, compiled = _hlo_texts(jax.grad(loss, argnums=1), features, rois)
    assert ("box_vjp" in compiled) == has_box and "box_jvp" not in compiled
    _, compiled = _hlo_texts(lambda f, r: jax.jvp(lambda q: fn(f, q), (r,), (r,))[1],
                             features, rois)
    assert ("box_jvp" in compiled) == has_box and "box_vjp" not in compiled


# ------------------------------------------------- 16- and 32-bit features

@pytest.mark.parametrize("dtype", [F32, BF16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("name,layout,fmt", [
    ("align_avg-aligned-adaptive", "NHWC", "K"), ("align_max-unaligned-sr3", "NCHW", "NL"),
    ("rotated-aligned-sr2", "NCHW", "K"), ("ps_align-adaptive", "NHWC", "NL"),
    ("multiscale-avg-aligned-adaptive", "NHWC", "NL"), ("prroi", "NCHW", "K")])
def test_low_precision_box_gradient_is_close_to_float64(name, layout, fmt, dtype):
    case = CASES[name]
    rng = _rng("precision", name, layout, fmt)
    x = make_features(case, rng, dtype)            # already rounded to dtype
    rois = smooth_rois(case, rng, x, fmt).astype(np.float32).astype(np.float64)
    fn = op_fn(case, layout)
    f64 = in_layout(x, layout)
    low = [m.astype(dtype) for m in f64] if isinstance(f64, list) else f64.astype(dtype)
    dy = _cotangent(fn, f64, jnp.asarray(rois), rng, dtype)
    grad = jax.grad(lambda r: jnp.vdot(fn(low, r).astype(jnp.float32), dy.astype(jnp.float32)))(
        jnp.asarray(rois, jnp.float32))
    assert grad.dtype == jnp.float32
    grad = np.asarray(grad, np.float64)
    assert np.all(np.isfinite(grad))
    want = box_grad(fn, f64, jnp.asarray(rois), dy)
    tol = 1e-4 if dtype == F32 else 3e-2
    np.testing.assert_allclose(grad, want, rtol=tol, atol=tol * np.abs(want).max())


# ------------------------------------------------- the pyramid

@pytest.mark.parametrize("mode", ["avg", "max"])
def test_multiscale_box_gradient_is_roi_align_s_on_its_level(mode):
    case = CASES["multiscale-avg-aligned-adaptive"]._replace(mode=mode)
    rng = _rng("pyramid", mode)
    x = make_features(case, rng)
    boxes = smooth_rois(case, rng, x, "NL")
    maps = in_layout(x, "NCHW")
    index = np.asarray(jax_roi.level_indices(boxes, PYR_SCALES, **PYR_CANONICAL))
    assert set(index.ravel()) == {0, 1}
    fn = op_fn(case, "NCHW")
    dy = _cotangent(fn, maps, jnp.asarray(boxes), rng)
    grad = box_grad(fn, maps, jnp.asarray(boxes), dy)
    for level, scale in enumerate(PYR_SCALES):
        single = lambda f, r: jax_roi.roi_align(f, r, OUT, scale, case.sr, case.aligned,
                                                mode=mode)
        want = box_grad(single, maps[level], jnp.asarray(boxes), dy)
        np.testing.assert_allclose(grad[index == level], want[index == level], rtol=1e-12,
                                   atol=1e-12)


@pytest.mark.parametrize("op", ["align_avg", "prroi"])
def test_nchw_box_gradient_of_a_map_sized_box(op):
    # The CPU kernel copies an NCHW map's pixels under a ROI channels-last
    # into a bounded window; a box over this whole map is past that bound and
    # is read in place. Both ways must agree with the pure-JAX derivative.
    rng = np.random.default_rng(21)
    x = jnp.asarray(rng.standard_normal((1, 48, 80, 80)))
    rois = jnp.asarray([[0, 1.3, 2.1, 158.7, 157.9], [0, 10.2, 20.7, 30.3, 41.1]])
    if op == "prroi":
        fn = lambda r, impl: jax_roi.prroi_pool(x, r, 3, 0.5, implementation=impl)
    else:
        fn = lambda r, impl: jax_roi.roi_align(x, r, 3, 0.5, 2, True, implementation=impl)
    dy = jnp.asarray(rng.standard_normal(fn(rois, None).shape))
    for tangent in (jnp.asarray(rng.standard_normal(rois.shape)),):
        kernel_jvp = jax.jvp(lambda r: fn(r, None), (rois,), (tangent,))[1]
        pure_jvp = jax.jvp(lambda r: fn(r, "xla"), (rois,), (tangent,))[1]
        np.testing.assert_allclose(kernel_jvp, pure_jvp, rtol=1e-9, atol=1e-9)
    kernel = jax.vjp(lambda r: fn(r, None), rois)[1](dy)[0]
    pure = jax.vjp(lambda r: fn(r, "xla"), rois)[1](dy)[0]
    assert np.all(np.abs(np.asarray(kernel)[:, 1:]) > 0)
    np.testing.assert_allclose(kernel, pure, rtol=1e-9, atol=1e-9)
