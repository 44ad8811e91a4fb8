"""roi_align_rotated: values and feature gradients against numpy_reference for
every dtype, layout and ROI format, fixed and adaptive sampling, aligned or
not; its geometry against roi_align (angle 0, +-90 and 180 degrees), the
clockwise flag, mmcv's radians, a hand-worked value; derivatives, jit, vmap,
bad data and argument errors.

Every case runs through the kernels; the pure-JAX implementation (which
compiles a program per configuration, about a second each) runs a chosen
subset of every sweep, and the cheap tests in full through the fixture
`both_implementations`."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jax_roi
import numpy_reference as ref
from op_cases import BF16, DTYPES, F16, F32, F64, _close, _geom, _rng, sweep

both_implementations = pytest.mark.usefixtures("both_implementations")


N, C, H, W = 2, 3, 7, 6          # H != W catches swapped axes
OUT = (3, 2)                      # PH != PW for the same reason


def _features(rng, layout, shape=(N, C, H, W)):
    x = rng.standard_normal(shape)
    return x if layout == "NCHW" else x.transpose(0, 2, 3, 1)


def _boxes(rng, k, h, w, scale, max_angle=200.0):
    """(cx, cy, w, h, angle) in image coordinates; many reach past the map,
    some are under a pixel (clamped when not aligned)."""
    cx = rng.uniform(-1.0, w + 1.0, k)
    cy = rng.uniform(-1.0, h + 1.0, k)
    bw = rng.uniform(0.3, 0.9 * w, k)
    bh = rng.uniform(0.3, 0.9 * h, k)
    angle = rng.uniform(-max_angle, max_angle, k)
    return np.stack([cx / scale, cy / scale, bw / scale, bh / scale, angle], 1)


def _rois(rng, fmt, n, h, w, scale, per_image=3):
    boxes = _boxes(rng, n * per_image, h, w, scale)
    if fmt == "NL5":
        return boxes.reshape(n, per_image, 5)
    b = rng.integers(0, n, n * per_image).astype(np.float64)
    return np.concatenate([b[:, None], boxes], 1)


def rotated(f, r, output_size=OUT, scale=1.0, sr=-1, aligned=True, **kw):
    return jax_roi.roi_align_rotated(f, r, output_size, scale, sr, aligned, **kw)


def _check(x, rois, dtype, layout, out_size=OUT, scale=1.0, sr=-1, aligned=True,
           clockwise=False, seed=0, reads_something=True, implementation=None):
    """Forward and vjp of jax_roi.roi_align_rotated against the reference, on
    the features rounded to `dtype`; ROIs go in as float64 and the op casts
    them to its geometry dtype, as the reference does."""
    g = _geom(dtype)
    xq = ref.round_to(x, dtype)
    rois_j = jnp.asarray(np.asarray(rois, np.float64))
    args = (out_size, scale, sr, aligned)
    fwd = lambda f: rotated(f, rois_j, *args, clockwise=clockwise, layout=layout,
                            implementation=implementation)
    expected = ref.roi_align_rotated(xq, np.asarray(rois, g), *args, clockwise=clockwise,
                                     layout=layout, geom=g)
    out, vjp = jax.vjp(fwd, jnp.asarray(xq, dtype))
    assert out.dtype == dtype
    _close(out, expected, dtype)
    if reads_something:
        assert np.any(expected != 0)

    dy = ref.round_to(np.random.default_rng(seed + 1).standard_normal(expected.shape), dtype)
    (dx,) = vjp(jnp.asarray(dy, dtype))
    assert dx.dtype == dtype
    dx_ref = ref.roi_align_rotated_vjp(xq, np.asarray(rois, g), *args, dy, clockwise=clockwise,
                                       layout=layout, geom=g)
    _close(dx, dx_ref, dtype)


# ------------------------------------------------------------ random cases

@sweep("aligned,sr,layout,fmt",
       list(itertools.product([False, True], [-1, 0, 1, 3], ["NCHW", "NHWC"], ["K6", "NL5"])),
       pure_jax=[(False, -1, "NCHW", "K6"), (True, 3, "NHWC", "NL5")])
def test_random(aligned, sr, layout, fmt, implementation):
    rng = _rng("random", aligned, sr, layout, fmt)
    x = _features(rng, layout)
    rois = _rois(rng, fmt, N, H, W, 0.5)
    _check(x, rois, F64, layout, scale=0.5, sr=sr, aligned=aligned,
           implementation=implementation)


@sweep("layout,fmt,clockwise",
       list(itertools.product(["NCHW", "NHWC"], ["K6", "NL5"], [False, True])),
       pure_jax=[])
def test_scale_two_and_clockwise(layout, fmt, clockwise, implementation):
    rng = _rng("formats", layout, fmt, clockwise)
    x = _features(rng, layout)
    rois = _rois(rng, fmt, N, H, W, 2.0, per_image=4)
    _check(x, rois, F64, layout, out_size=(2, 4), scale=2.0, sr=-1, aligned=True,
           clockwise=clockwise, implementation=implementation)


@sweep("dtype,layout,sr,aligned",
       list(itertools.product(DTYPES, ["NCHW", "NHWC"], [2, -1], [True, False])),
       pure_jax=[(BF16, "NHWC", -1, False), (F16, "NCHW", 2, True)])
def test_dtypes(dtype, layout, sr, aligned, implementation):
    rng = _rng("dtypes", layout, sr, aligned)
    x = _features(rng, layout, (2, 2, 8, 8))
    fmt = "K6" if sr > 0 else "NL5"
    rois = _rois(rng, fmt, 2, 8, 8, 0.25)
    _check(x, rois, dtype, layout, out_size=(2, 3), scale=0.25, sr=sr, aligned=aligned,
           implementation=implementation)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("c", [1, 17])
def test_many_rois_float32(c, layout):
    # enough ROIs and channels to split work across threads and to leave
    # remainders in any channel vectorisation; a scale not a power of 2
    n, h, w, scale = 3, 13, 11, 0.3
    rng = _rng("many", c, layout)
    x = _features(rng, layout, (n, c, h, w))
    rois = _rois(rng, "K6", n, h, w, scale, per_image=10).astype(np.float32)
    _check(x, rois, F32, layout, out_size=(3, 4), scale=scale, sr=2, aligned=True)


# (b, cx, cy, w, h, angle) on the N x C x 7 x 6 map, scale 1
BOXES = {
    "inside": [0, 2.6, 3.1, 3.3, 2.2, 25.0],
    "whole_map_45": [1, 3.0, 3.5, 6.0, 7.0, 45.0],
    "past_top_left": [1, 0.2, -0.4, 4.0, 3.0, -60.0],
    "past_bottom_right": [0, 5.5, 6.5, 4.0, 5.0, 135.0],
    "outside_far": [1, 20.0, 25.0, 3.0, 3.0, 10.0],
    "straddles_minus_one": [0, -0.5, -0.3, 2.0, 1.5, 80.0],
    "subpixel": [0, 2.3, 3.2, 0.2, 0.3, 33.0],
    "point": [1, 2.0, 3.0, 0.0, 0.0, 70.0],
    "full_turns": [0, 2.7, 3.3, 2.5, 3.5, 720.0 + 30.0],
    "negative_angle": [1, 3.1, 2.9, 4.5, 1.5, -170.0],
    "negative_width": [0, 3.0, 3.0, -2.0, 2.0, 15.0],   # aligned: bad data, zeros
    "negative_height": [1, 3.0, 3.0, 2.0, -1.5, 15.0],
}

HAND_CONFIGS = {
    "aligned_adaptive": dict(sr=-1, aligned=True),
    "aligned_sr2": dict(sr=2, aligned=True),
    "unaligned_adaptive": dict(sr=0, aligned=False),
    "unaligned_sr1": dict(sr=1, aligned=False),
}


@sweep("box,cfg", list(itertools.product(BOXES, HAND_CONFIGS)),
       pure_jax=list(itertools.product(BOXES, ["aligned_adaptive", "unaligned_sr1"])))
def test_hand_made_box(box, cfg, implementation):
    rng = np.random.default_rng(11)
    x = _features(rng, "NCHW")
    # the far box reads nothing; so do aligned boxes of negative size, and
    # the aligned zero-size box with the adaptive grid (no samples)
    reads = box != "outside_far" and not (
        HAND_CONFIGS[cfg]["aligned"] and box.startswith("negative_")
        and box != "negative_angle") and not (box == "point" and cfg == "aligned_adaptive")
    _check(x, [BOXES[box]], F64, "NCHW", out_size=(2, 3), scale=1.0,
           reads_something=reads, implementation=implementation, **HAND_CONFIGS[cfg])


# ------------------------------------------------------------ geometry

def _dyadic_boxes(rng, k, n, scale):
    """Boxes for a map of at least 9 x 8 whose numbers are exact in float32
    (multiples of 1/8 in map coordinates): centres (after the half-pixel
    shift) in [3, 5), half sizes in [0.5, 2.5), so that even turned by 90
    degrees every sample stays inside [0.5, 7.5], far from -1 and H where
    bilinear jumps."""
    cx = (rng.integers(24, 40, k) / 8 + 0.5) / scale
    cy = (rng.integers(24, 40, k) / 8 + 0.5) / scale
    bw = 2 * rng.integers(4, 20, k) / 8 / scale
    bh = 2 * rng.integers(4, 20, k) / 8 / scale
    b = rng.integers(0, n, k).astype(np.float64)
    return b, cx, cy, bw, bh


def _nchw(a, layout):
    a = np.asarray(a)
    return a if layout == "NCHW" else np.moveaxis(a, -1, 1)


@sweep("layout,sr,dtype", list(itertools.product(["NCHW", "NHWC"], [-1, 2], [F64, F32])),
       pure_jax=[("NHWC", -1, F32)])
def test_angle_zero_equals_roi_align_aligned(layout, sr, dtype, implementation):
    rng = _rng("angle0", layout, sr)
    n, h, w, scale = 2, 9, 8, 0.5
    x = jnp.asarray(_features(rng, layout, (n, 3, h, w)), dtype)
    b, cx, cy, bw, bh = _dyadic_boxes(rng, 8, n, scale)
    rot = np.stack([b, cx, cy, bw, bh, np.zeros(8)], 1)
    box = np.stack([b, cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], 1)
    impl = dict(layout=layout, implementation=implementation)
    got = rotated(x, jnp.asarray(rot), (3, 2), scale, sr, True, **impl)
    want = jax_roi.roi_align(x, jnp.asarray(box), (3, 2), scale, sr, True, **impl)
    tol = 1e-12 if dtype == F64 else 1e-6
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)
    assert np.any(np.asarray(want) != 0)
    # the same holds for the gradient (both linear, same samples)
    dy = jnp.asarray(rng.standard_normal(want.shape), dtype)
    g_rot = jax.grad(lambda f: jnp.vdot(rotated(f, jnp.asarray(rot), (3, 2), scale, sr, True,
                                                **impl), dy))(x)
    g_box = jax.grad(lambda f: jnp.vdot(jax_roi.roi_align(f, jnp.asarray(box), (3, 2), scale,
                                                          sr, True, **impl), dy))(x)
    np.testing.assert_allclose(g_rot, g_box, rtol=tol, atol=tol)


@pytest.mark.parametrize("sr", [0, 3])
def test_angle_zero_unaligned_equals_roi_align_for_boxes_of_a_pixel_or_more(sr):
    # without the half-pixel shift the centre is cx*s; boxes of at least a
    # pixel are not clamped, so they start at x1*s as roi_align's do
    rng = _rng("angle0_unaligned", sr)
    n, h, w, scale = 2, 9, 8, 1.0
    x = jnp.asarray(_features(rng, "NCHW", (n, 2, h, w)))
    b, cx, cy, bw, bh = _dyadic_boxes(rng, 6, n, scale)
    cx, cy = cx - 0.5, cy - 0.5  # no half-pixel shift: the same samples
    rot = np.stack([b, cx, cy, bw, bh, np.zeros(6)], 1)
    box = np.stack([b, cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], 1)
    assert np.all(bw >= 1) and np.all(bh >= 1)
    got = rotated(x, jnp.asarray(rot), (2, 3), scale, sr, False)
    want = jax_roi.roi_align(x, jnp.asarray(box), (2, 3), scale, sr, False)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@sweep("angle,layout,sr", list(itertools.product([90.0, -90.0, 180.0], ["NCHW", "NHWC"], [2, 0])),
       pure_jax=[(-90.0, "NHWC", 0)])
def test_quarter_turns_transpose_roi_align(angle, layout, sr, implementation):
    # y = yy*cos - xx*sin + cy, x = yy*sin + xx*cos + cx, yy over bin rows
    # (ph) and xx over bin columns (pw).
    #  90: y = cy - xx, x = cx + yy. Bin rows walk along x, bin columns walk
    #      up y: the box (cx - h/2, cy - w/2, cx + h/2, cy + w/2) pooled to
    #      (PW, PH) by roi_align gives A, and out[ph, pw] = A[PW-1-pw, ph]
    #      (A's rows reversed, then transposed).
    # -90: y = cy + xx, x = cx - yy: out[ph, pw] = A[pw, PH-1-ph] (A's
    #      columns reversed, then transposed).
    # 180: y = cy - yy, x = cx - xx on the unswapped box pooled to (PH, PW):
    #      out[ph, pw] = A[PH-1-ph, PW-1-pw].
    # With a fixed grid (or an adaptive one, the sizes exact) each bin's
    # samples are exactly those of its roi_align bin, mirrored.
    rng = _rng("quarter", angle, layout, sr)
    n, h, w, ph_n, pw_n = 2, 9, 8, 3, 2
    x = jnp.asarray(_features(rng, layout, (n, 2, h, w)))
    b, cx, cy, bw, bh = _dyadic_boxes(rng, 6, n, 1.0)
    rot = np.stack([b, cx, cy, bw, bh, np.full(6, angle)], 1)
    impl = dict(layout=layout, implementation=implementation)
    got = _nchw(rotated(x, jnp.asarray(rot), (ph_n, pw_n), 1.0, sr, True, **impl), layout)
    if angle == 180.0:
        box = np.stack([b, cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], 1)
        a = _nchw(jax_roi.roi_align(x, jnp.asarray(box), (ph_n, pw_n), 1.0, sr, True, **impl),
                  layout)
        want = a[:, :, ::-1, ::-1]
    else:
        box = np.stack([b, cx - bh / 2, cy - bw / 2, cx + bh / 2, cy + bw / 2], 1)
        a = _nchw(jax_roi.roi_align(x, jnp.asarray(box), (pw_n, ph_n), 1.0, sr, True, **impl),
                  layout)
        a = a[:, :, ::-1, :] if angle == 90.0 else a[:, :, :, ::-1]
        want = np.swapaxes(a, 2, 3)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    assert np.any(want != 0)


@sweep("layout,dtype", list(itertools.product(["NCHW", "NHWC"], [F64, F32])),
       pure_jax=[("NCHW", F32)])
def test_clockwise_negates_the_angle(layout, dtype, implementation):
    rng = _rng("clockwise", layout)
    x = jnp.asarray(_features(rng, layout), dtype)
    rois = _rois(rng, "K6", N, H, W, 1.0)
    flipped = rois.copy()
    flipped[:, 5] = -flipped[:, 5]
    impl = dict(layout=layout, implementation=implementation)
    a = rotated(x, jnp.asarray(rois), OUT, 1.0, 2, True, clockwise=True, **impl)
    b = rotated(x, jnp.asarray(flipped), OUT, 1.0, 2, True, clockwise=False, **impl)
    tol = 1e-12 if dtype == F64 else 1e-6
    np.testing.assert_allclose(a, b, rtol=tol, atol=tol)
    # and it is not a no-op
    c = rotated(x, jnp.asarray(rois), OUT, 1.0, 2, True, clockwise=False, **impl)
    assert np.max(np.abs(np.asarray(a) - np.asarray(c))) > 1e-3


@both_implementations
def test_hand_worked_value():
    # X[y, x] = 5*y + x (arange(25) as 5 x 5); box cx = cy = 2.5, w = 2, h = 4,
    # 90 degrees, aligned, one sample per bin, 2 x 2 bins:
    #   ccx = ccy = 2.5 - 0.5 = 2; rw = 2, rh = 4; bh = 2, bw = 1
    #   yy = -2 + 2*ph + 1 = 2*ph - 1;  xx = -1 + pw + 0.5 = pw - 0.5
    #   cos = 0, sin = 1: y = -xx + 2 = 2.5 - pw;  x = yy + 2 = 2*ph + 1
    #   every sample inside the map, where bilinear of a linear map is exact:
    #   out = 5*(2.5 - pw) + 2*ph + 1 = 13.5 - 5*pw + 2*ph
    #   -> [[13.5, 8.5], [15.5, 10.5]]
    # Bin (0, 0) reads below-left of the centre: the box's top-left corner
    # turned counter-clockwise as drawn with y down.
    x = jnp.arange(25.0).reshape(1, 1, 5, 5)
    out = rotated(x, jnp.asarray([[0, 2.5, 2.5, 2.0, 4.0, 90.0]]), 2, 1.0, 1, True)
    np.testing.assert_allclose(out[0, 0], [[13.5, 8.5], [15.5, 10.5]], rtol=1e-12, atol=1e-12)
    # clockwise flips the turn: y = xx + 2 = pw + 1.5, x = -yy + 2 = 3 - 2*ph
    #   -> 5*(pw + 1.5) + 3 - 2*ph = 10.5 + 5*pw - 2*ph -> [[10.5, 15.5], [8.5, 13.5]]
    out = rotated(x, jnp.asarray([[0, 2.5, 2.5, 2.0, 4.0, 90.0]]), 2, 1.0, 1, True,
                  clockwise=True)
    np.testing.assert_allclose(out[0, 0], [[10.5, 15.5], [8.5, 13.5]], rtol=1e-12, atol=1e-12)
    # not aligned, in float32: ccx = ccy = 2.5, y = 3 - pw, x = 2*ph + 1.5
    #   -> 5*(3 - pw) + 2*ph + 1.5 = 16.5 - 5*pw + 2*ph
    out = rotated(x.astype(jnp.float32), jnp.asarray([[0, 2.5, 2.5, 2.0, 4.0, 90.0]]), 2, 1.0,
                  1, False)
    np.testing.assert_allclose(out[0, 0], [[16.5, 11.5], [18.5, 13.5]], rtol=1e-6, atol=1e-5)


def _bilinear_planes(planes, y, x):
    """The contract's bilinear for arrays of positions, on [C, H, W] planes."""
    _, h, w = planes.shape
    inside = (y >= -1) & (y <= h) & (x >= -1) & (x <= w)
    y = np.clip(y, 0, h - 1)
    x = np.clip(x, 0, w - 1)
    y0 = np.floor(y).astype(int)
    x0 = np.floor(x).astype(int)
    y1 = np.minimum(y0 + 1, h - 1)
    x1 = np.minimum(x0 + 1, w - 1)
    ly, lx = y - y0, x - x0
    v = ((1 - ly) * (1 - lx) * planes[:, y0, x0] + (1 - ly) * lx * planes[:, y0, x1]
         + ly * (1 - lx) * planes[:, y1, x0] + ly * lx * planes[:, y1, x1])
    return np.where(inside, v, 0.0)


def _mmcv_style(x, box, output_size, scale, sr, radians, clockwise):
    """One rotated box pooled with its angle in radians, as mmcv takes it
    (aligned, a fixed grid), written out with arrays."""
    b, cx, cy, bw, bh = box
    ph_n, pw_n = output_size
    theta = -radians if clockwise else radians
    rh, rw = bh * scale, bw * scale
    yy = -rh / 2 + (np.arange(ph_n * sr) + 0.5) / sr * rh / ph_n
    xx = -rw / 2 + (np.arange(pw_n * sr) + 0.5) / sr * rw / pw_n
    yy, xx = np.meshgrid(yy, xx, indexing="ij")
    y = yy * np.cos(theta) - xx * np.sin(theta) + cy * scale - 0.5
    xs = yy * np.sin(theta) + xx * np.cos(theta) + cx * scale - 0.5
    v = _bilinear_planes(x[int(b)], y, xs)
    return v.reshape(-1, ph_n, sr, pw_n, sr).mean(axis=(2, 4))


@sweep("clockwise,scale", list(itertools.product([False, True], [1.0, 0.5])),
       pure_jax=[])
def test_mmcv_radians_convert_by_180_over_pi(clockwise, scale, implementation):
    # mmcv's roi_align_rotated takes radians; its users pass
    # angle_degrees = radians * 180 / pi and get the same box
    rng = np.random.default_rng(23)
    x = rng.standard_normal((2, 3, 12, 13))
    boxes = np.array([(0, 6.2, 5.7, 5.0, 3.0), (1, 5.5, 6.5, 4.0, 6.5), (1, 7.0, 4.0, 2.5, 2.5)])
    boxes[:, 1:] /= scale  # the same boxes on the map at every scale
    radians = np.array([0.3, -1.2, 2.5])
    rois = np.concatenate([boxes, (radians * 180 / np.pi)[:, None]], 1)
    got = np.asarray(rotated(jnp.asarray(x), jnp.asarray(rois), (2, 3), scale, 2, True,
                             clockwise=clockwise, implementation=implementation))
    for k in range(3):
        want = _mmcv_style(x, boxes[k], (2, 3), scale, 2, radians[k], clockwise)
        np.testing.assert_allclose(got[k], want, rtol=1e-9, atol=1e-9)
    assert np.all(got != 0)


# ------------------------------------------------------------ derivatives

def _problem(seed, layout, n=2, c=2, h=6, w=7, k=4, fmt="K6"):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(_features(rng, layout, (n, c, h, w)))
    rois = jnp.asarray(_rois(rng, fmt, n, h, w, 0.5, per_image=k // n))
    return x, rois, jnp.asarray(rng.standard_normal(x.shape))


@sweep("sr,aligned,layout,fmt", [(2, True, "NCHW", "K6"), (-1, False, "NHWC", "NL5")],
       pure_jax=[(2, True, "NCHW", "K6")])
def test_check_grads_second_order_fwd_and_rev(sr, aligned, layout, fmt, implementation):
    x, rois, _ = _problem(1, layout, fmt=fmt)
    fn = lambda f: jnp.sum(jnp.sin(rotated(f, rois, (3, 2), 0.5, sr, aligned, layout=layout,
                                           implementation=implementation)))
    check_grads(fn, (x,), order=2, modes=["fwd", "rev"], atol=1e-5, rtol=1e-5)


@sweep("layout", ["NCHW", "NHWC"], pure_jax=[])
def test_jvp_is_linear_and_equals_vjp_transpose(layout, implementation):
    x, rois, t = _problem(2, layout)
    fn = lambda f: rotated(f, rois, (3, 2), 0.5, -1, True, layout=layout,
                           implementation=implementation)
    out, tangent = jax.jvp(fn, (x,), (t,))
    np.testing.assert_allclose(out, fn(x), rtol=1e-12, atol=1e-12)
    # linear in the features: the tangent is the op applied to the tangent
    np.testing.assert_allclose(tangent, fn(t), rtol=1e-12, atol=1e-12)
    assert np.any(np.asarray(tangent) != 0)
    # <J t, u> == <t, J^T u>
    u = jnp.asarray(np.random.default_rng(3).standard_normal(out.shape))
    (jtu,) = jax.vjp(fn, x)[1](u)
    np.testing.assert_allclose(jnp.vdot(tangent, u), jnp.vdot(t, jtu), rtol=1e-12)


@sweep("dtype", [BF16, F16, F32], pure_jax=[])
def test_gradient_has_feature_dtype(dtype, implementation):
    x, rois, _ = _problem(4, "NHWC")
    x = x.astype(dtype)
    grad = jax.grad(lambda f: jnp.sum(rotated(f, rois, 2, 0.5, 2, True, layout="NHWC",
                                              implementation=implementation)
                                      .astype(jnp.float32)))(x)
    assert grad.dtype == dtype and grad.shape == x.shape
    assert np.any(np.asarray(grad, np.float32) != 0)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_backward_with_many_rois_on_one_image(layout):
    # Threads that share the ROIs of one image must neither lose nor double
    # an update of the gradient: 64 copies of a box give 64 times the
    # gradient of one, on every run.
    x = jnp.zeros((1, 6, 8, 9) if layout == "NCHW" else (1, 8, 9, 6))
    box = jnp.asarray([[0, 4.0, 3.0, 6.0, 4.0, 30.0]])
    loss = lambda f, r: jnp.sum(rotated(f, r, (2, 3), 1.0, 2, True, layout=layout))
    one = np.asarray(jax.grad(loss)(x, box))
    many = jax.jit(jax.grad(loss))
    for _ in range(40):
        np.testing.assert_allclose(many(x, jnp.tile(box, (64, 1))), 64 * one, rtol=1e-12,
                                   atol=1e-12)
    assert np.any(one != 0)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_backward_is_bitwise_deterministic(layout):
    rng = np.random.default_rng(9)
    x = jnp.asarray(_features(rng, layout, (2, 24, 16, 16)), jnp.float32)
    rois = jnp.asarray(_rois(rng, "K6", 2, 16, 16, 1.0, per_image=100), jnp.float32)
    dy = jnp.asarray(rng.standard_normal((200, 24, 2, 3) if layout == "NCHW"
                                         else (200, 2, 3, 24)), jnp.float32)
    grad = jax.jit(jax.grad(lambda f: jnp.vdot(rotated(f, rois, (2, 3), 1.0, -1, True,
                                                       layout=layout), dy)))
    first = np.asarray(grad(x))
    assert np.any(first != 0)
    for _ in range(4):
        np.testing.assert_array_equal(np.asarray(grad(x)), first)


# ------------------------------------------------------------ jit and vmap

@both_implementations
def test_jit_equals_reference():
    rng = np.random.default_rng(5)
    x = _features(rng, "NHWC")
    rois = _rois(rng, "K6", N, H, W, 1.0)
    fn = jax.jit(lambda f, r: rotated(f, r, OUT, 1.0, 2, True, layout="NHWC"))
    out = fn(jnp.asarray(x), jnp.asarray(rois))
    _close(out, ref.roi_align_rotated(x, rois, OUT, 1.0, 2, True, layout="NHWC"), F64)
    dy = rng.standard_normal(out.shape)
    dx = jax.jit(jax.grad(lambda f: jnp.vdot(fn(f, jnp.asarray(rois)), dy)))(jnp.asarray(x))
    _close(dx, ref.roi_align_rotated_vjp(x, rois, OUT, 1.0, 2, True, dy, layout="NHWC"), F64)


def _forward_calls(fn, *args):
    return str(jax.make_jaxpr(fn)(*args)).count("roi_forward")


@sweep("axes,fmt", list(itertools.product([(0, None), (None, 0), (0, 0)], ["K6", "NL5"])),
       pure_jax=[((0, 0), "K6")])
def test_vmap_equals_a_loop_in_one_call(axes, fmt, implementation):
    rng = _rng("vmap", axes, fmt)
    xs = np.stack([_features(rng, "NHWC") for _ in range(3)])
    rs = np.stack([_rois(rng, fmt, N, H, W, 1.0) for _ in range(3)])
    f = lambda x, r: rotated(x, r, (2, 3), 1.0, -1, True, layout="NHWC", clockwise=True,
                             implementation=implementation)
    x_in = jnp.asarray(xs if axes[0] == 0 else xs[0])
    r_in = jnp.asarray(rs if axes[1] == 0 else rs[0])
    batched = jax.vmap(f, in_axes=axes)
    out = jax.jit(batched)(x_in, r_in)
    assert _forward_calls(batched, x_in, r_in) == 1
    dy = np.random.default_rng(1).standard_normal(out.shape)
    dx = jax.jit(jax.grad(lambda x: jnp.vdot(batched(x, r_in), dy)))(x_in)
    dexps = []
    for i in range(3):
        x, r = xs[i if axes[0] == 0 else 0], rs[i if axes[1] == 0 else 0]
        args = ((2, 3), 1.0, -1, True)
        _close(out[i], ref.roi_align_rotated(x, r, *args, clockwise=True, layout="NHWC"), F64)
        dexps.append(ref.roi_align_rotated_vjp(x, r, *args, dy[i], clockwise=True,
                                               layout="NHWC"))
    # unmapped features collect the gradient of every slice
    _close(dx, np.stack(dexps) if axes[0] == 0 else sum(dexps), F64)


@both_implementations
def test_vmap_keeps_invalid_batch_index_invalid():
    # folding maps into the image axis must not let index 1 of a one-image
    # map read the next map's image
    rng = np.random.default_rng(3)
    maps = jnp.asarray(rng.standard_normal((2, 1, 2, 6, 7)))
    rois = jnp.asarray([[1.0, 3, 3, 4, 4, 10], [-1.0, 3, 3, 4, 4, 10], [0.0, 3, 3, 4, 4, 10]])
    out = jax.vmap(lambda f: rotated(f, rois, 2))(maps)
    assert not np.any(np.asarray(out[:, :2]))
    assert np.all(np.asarray(out[:, 2]) != 0)


# ------------------------------------------------------------ bad data

GOOD = [0.0, 3.0, 3.2, 3.0, 2.5, 30.0]
BAD_ROWS = {
    "neg_index": [-1.0, 3.0, 3.2, 3.0, 2.5, 30.0],
    "index_eq_n": [2.0, 3.0, 3.2, 3.0, 2.5, 30.0],
    "nan_index": [np.nan, 3.0, 3.2, 3.0, 2.5, 30.0],
    "inf_index": [np.inf, 3.0, 3.2, 3.0, 2.5, 30.0],
    "nan_cx": [0.0, np.nan, 3.2, 3.0, 2.5, 30.0],
    "inf_cy": [1.0, 3.0, np.inf, 3.0, 2.5, 30.0],
    "nan_w": [0.0, 3.0, 3.2, np.nan, 2.5, 30.0],
    "ninf_h": [1.0, 3.0, 3.2, 3.0, -np.inf, 30.0],
    "nan_angle": [0.0, 3.0, 3.2, 3.0, 2.5, np.nan],
    "inf_angle": [1.0, 3.0, 3.2, 3.0, 2.5, np.inf],
    "negative_w": [0.0, 3.0, 3.2, -3.0, 2.5, 30.0],
    "negative_h": [1.0, 3.0, 3.2, 3.0, -0.5, 30.0],
}


@sweep("bad,sr,layout", list(itertools.product(BAD_ROWS, [-1, 2], ["NCHW", "NHWC"])),
       pure_jax=[(bad, -1, "NHWC") for bad in BAD_ROWS])
def test_bad_roi_gives_zero_and_no_gradient(bad, sr, layout, implementation):
    x = jnp.asarray(_features(np.random.default_rng(0), layout, (2, 3, 6, 6)) + 3.0)
    rois = jnp.asarray([GOOD, BAD_ROWS[bad], GOOD])
    fn = lambda f, r: rotated(f, r, 2, 1.0, sr, True, layout=layout,
                              implementation=implementation)
    out = np.asarray(fn(x, rois))
    assert not np.any(out[1])
    np.testing.assert_array_equal(out[0], out[2])
    assert np.all(out[0] != 0)
    # no gradient reaches the features through the bad row
    grad_bad = jax.grad(lambda f: jnp.sum(fn(f, rois)[1]))(x)
    assert not np.any(np.asarray(grad_bad))
    grad_all = jax.grad(lambda f: jnp.sum(fn(f, rois)))(x)
    grad_good = jax.grad(lambda f: jnp.sum(fn(f, rois[::2])))(x)
    np.testing.assert_allclose(grad_all, grad_good, rtol=1e-12, atol=1e-12)
    assert np.any(np.asarray(grad_all))


@both_implementations
def test_bad_box_in_per_image_format():
    x = jnp.asarray(_features(np.random.default_rng(1), "NCHW", (2, 3, 6, 6)) + 3.0)
    boxes = jnp.asarray([[GOOD[1:], [3.0, 3.0, -1.0, 2.0, 0.0]],
                         [[3.0, 3.0, 2.0, 2.0, np.nan], GOOD[1:]]])
    out = np.asarray(rotated(x, boxes, 2))
    assert out.shape == (2, 2, 3, 2, 2)
    assert not np.any(out[0, 1]) and not np.any(out[1, 0])
    assert np.all(out[0, 0] != 0) and np.all(out[1, 1] != 0)


@both_implementations
def test_negative_size_unaligned_is_clamped_to_a_pixel():
    # not aligned, rw = max(w*s, 1): a negative width is one pixel wide
    x = jnp.asarray(_features(np.random.default_rng(2), "NCHW", (1, 2, 8, 8)))
    neg = rotated(x, jnp.asarray([[0, 4.0, 3.5, -2.0, -3.0, 20.0]]), 2, 1.0, 2, False)
    one = rotated(x, jnp.asarray([[0, 4.0, 3.5, 1.0, 1.0, 20.0]]), 2, 1.0, 2, False)
    np.testing.assert_allclose(neg, one, rtol=1e-12, atol=1e-12)
    assert np.any(np.asarray(one) != 0)


@both_implementations
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize("angle", [0.0, 30.0])
def test_huge_box_is_bounded(angle, dtype):
    # a 1e30 box would need ~1e59 samples per bin: the few in the map are
    # divided by the astronomic count, in work bounded by the map
    x = jnp.arange(25, dtype=dtype).reshape(1, 1, 5, 5)
    rois = jnp.asarray([[0, 2.0, 2.0, 1e30, 1e30, angle], [0, 2.0, 2.0, 2.0, 2.0, angle]], dtype)
    out = np.asarray(rotated(x, rois, 2), np.float64)
    assert np.all(np.isfinite(out)) and np.all(np.abs(out[0]) < 1e-30)
    assert np.all(out[1] != 0)


@both_implementations
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("n,c,h,w,k", [
    (2, 3, 5, 5, 0), (0, 3, 5, 5, 2), (2, 0, 5, 5, 2), (2, 3, 0, 5, 2), (2, 3, 5, 0, 2)])
def test_empty_sizes(layout, n, c, h, w, k):
    shape = (n, c, h, w) if layout == "NCHW" else (n, h, w, c)
    x = jnp.ones(shape)
    rois = jnp.asarray(np.tile([[0, 2.0, 2.0, 3.0, 2.0, 30.0]], (k, 1)).reshape(k, 6))
    fn = lambda f: rotated(f, rois, (2, 3), layout=layout)
    out = fn(x)
    assert out.shape == ((k, c, 2, 3) if layout == "NCHW" else (k, 2, 3, c))
    assert not np.any(np.asarray(out))
    grad = jax.grad(lambda f: jnp.sum(fn(f)))(x)
    assert grad.shape == shape and not np.any(np.asarray(grad))


@both_implementations
def test_empty_per_image_boxes():
    x = jnp.ones((2, 3, 5, 5))
    out = rotated(x, jnp.zeros((2, 0, 5)), 2)
    assert out.shape == (2, 0, 3, 2, 2)


# ------------------------------------------------------------ argument errors

def _call(**overrides):
    args = dict(features=jnp.ones((2, 3, 5, 5)), rois=jnp.asarray([GOOD]), output_size=2)
    args.update(overrides)
    return jax_roi.roi_align_rotated(**args)


@pytest.mark.parametrize("overrides,error,name", [
    (dict(rois=jnp.ones((3, 5))), ValueError, "rois"),
    (dict(rois=jnp.ones((3, 7))), ValueError, "rois"),
    (dict(rois=jnp.ones((2, 3, 4))), ValueError, "rois"),
    (dict(rois=jnp.ones((6,))), ValueError, "rois"),
    (dict(rois=jnp.ones((3, 2, 5))), ValueError, "rois"),   # N != batch size
    (dict(rois=jnp.ones((3, 6), jnp.int32)), TypeError, "rois"),
    (dict(features=jnp.ones((2, 3, 5))), ValueError, "features"),
    (dict(features=jnp.ones((2, 3, 5, 5), jnp.int32)), TypeError, "features"),
    (dict(layout="nhwc"), ValueError, "layout"),
    (dict(output_size=0), ValueError, "output_size"),
    (dict(output_size=(2, 2, 2)), TypeError, "output_size"),
    (dict(spatial_scale=-1.0), ValueError, "spatial_scale"),
    (dict(sampling_ratio=1.5), TypeError, "sampling_ratio"),
    (dict(aligned="yes"), TypeError, "aligned"),
    (dict(implementation="gpu"), ValueError, "implementation"),
])
def test_argument_errors_name_the_argument(overrides, error, name):
    with pytest.raises(error, match=rf"\b{name}\b"):
        _call(**overrides)


def test_rois_error_says_what_was_expected():
    with pytest.raises(ValueError) as info:
        _call(rois=jnp.ones((3, 5)))
    assert "6" in str(info.value)


def test_errors_raise_at_trace_time():
    traced = jax.jit(lambda f, r: jax_roi.roi_align_rotated(f, r, 2))
    with pytest.raises(ValueError, match="rois"):
        traced.lower(jnp.ones((2, 3, 5, 5)), jnp.ones((3, 5)))
