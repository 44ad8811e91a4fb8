"""The pure-JAX implementation (implementation="xla", what platforms without
a kernel run) against the float64 NumPy loops in numpy_reference."""

import itertools
import types
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import numpy_reference as ref
import jax_roi
from jax_roi import reference as pure_jax

reference = types.SimpleNamespace(
    roi_align=partial(jax_roi.roi_align, implementation="xla"),
    roi_pool=partial(jax_roi.roi_pool, implementation="xla"))

# ------------------------------------------------------------ inputs

N, C, H, W = 2, 3, 7, 9
SCALE = 0.5  # image is 14 x 18
ROIS = np.array(
    [
        [0, 1.3, 2.1, 9.7, 11.2],
        [1, -4.0, -3.0, 6.5, 5.0],  # partly above and left of the map
        [1, 10.0, 8.0, 25.0, 20.0],  # partly below and right of the map
        [0, 6.0, 6.0, 6.0, 6.0],  # a point
        [1, 9.0, 7.0, 4.0, 2.0],  # x2 < x1, y2 < y1
        [0, -30.0, -30.0, -20.0, -20.0],  # outside the map
        [1, 0.0, 0.0, 17.0, 13.0],  # the whole image
    ]
)


def features(seed=0, shape=(N, C, H, W)):
    return np.random.default_rng(seed).standard_normal(shape)


def to_layout(feat, layout):
    return feat if layout == "NCHW" else np.transpose(feat, (0, 2, 3, 1))


def from_layout(out, layout):
    return out if layout == "NCHW" else np.transpose(out, (0, 3, 1, 2))


def run(fn, *args):
    return np.asarray(jax.jit(fn)(*args))


# ------------------------------------------------------------ roi_align


# Every mode, alignment and ratio, in alternating layouts (they differ by a
# transpose in and out; each case is a compile).
@pytest.mark.parametrize("mode,aligned,ratio,layout", [
    (mode, aligned, ratio, ("NCHW", "NHWC")[i % 2]) for i, (mode, aligned, ratio) in
    enumerate(itertools.product(["avg", "max"], [False, True], [-1, 1, 2]))])
def test_roi_align_matches_numpy(mode, aligned, ratio, layout):
    feat = features()
    want = ref.roi_align(feat, ROIS, (3, 2), SCALE, ratio, aligned, mode=mode)
    got = run(
        lambda f, r: reference.roi_align(
            f, r, (3, 2), SCALE, ratio, aligned, mode=mode, layout=layout
        ),
        to_layout(feat, layout),
        ROIS,
    )
    np.testing.assert_allclose(from_layout(got, layout), want, rtol=1e-12, atol=1e-12)


def test_roi_align_detectron2_values():
    feat = np.arange(25.0).reshape(1, 1, 5, 5)
    rois = np.array([[0, 1.0, 1.0, 3.0, 3.0]])
    plain = reference.roi_align(feat, rois, 4, 1.0, 0, False)
    shifted = reference.roi_align(feat, rois, 4, 1.0, 0, True)
    np.testing.assert_allclose(plain[0, 0, 0], [7.5, 8, 8.5, 9])
    np.testing.assert_allclose(shifted[0, 0, 0], [4.5, 5, 5.5, 6])


def test_roi_align_max_nan_and_ties():
    feat = features(1)
    feat[0, :, 2:5, 3:6] = 0.25  # ties inside the first ROI
    feat[1, 0, :, :4] = np.nan
    feat[1, 1, 1:3, 2:4] = -np.inf
    for ratio in (-1, 2):
        with np.errstate(invalid="ignore"):  # 0 * -inf, as in the formula
            want = ref.roi_align(feat, ROIS, (3, 2), SCALE, ratio, True, mode="max")
        got = reference.roi_align(feat, ROIS, (3, 2), SCALE, ratio, True, mode="max")
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mode", ["avg", "max"])
def test_large_adaptive_grids_are_exact(mode):
    feat = features(2, (1, 2, 40, 44))
    rois = np.array([[0, 0.5, 1.0, 38.0, 42.5],   # adaptive grid 21 x 19 per bin
                     [0, -30.0, -50.0, 70.0, 60.0]])  # most samples off the map
    want = ref.roi_align(feat, rois, 2, 1.0, -1, False, mode=mode)
    got = reference.roi_align(feat, rois, 2, 1.0, -1, False, mode=mode)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mode", ["avg", "max"])
def test_huge_boxes_cost_no_more_than_the_map_and_equal_the_kernel(mode):
    feat = features(3, (1, 2, 12, 10))
    rois = np.array([[0, 0.0, 0.0, 1e7, 1e7], [0, -1e7, -1e7, 1e7, 1e7],
                     [0, -1e30, -1e30, 1e30, 1e30], [0, 3.0, 2.0, 1e9, 9.0]])
    for ratio in (-1, 3):
        kernel = jax_roi.roi_align(feat, rois, 3, 1.0, ratio, True, mode=mode)
        got = reference.roi_align(feat, rois, 3, 1.0, ratio, True, mode=mode)
        # positions like 3 + (t + 0.5) * 1e9 / grid round differently when
        # the kernels fuse multiply-adds: agreement to 1e-9 of the pixel
        np.testing.assert_allclose(got, kernel, rtol=1e-8, atol=1e-8)
    assert np.any(np.asarray(got) != 0)


def test_invalid_rois_give_zeros_and_no_gradient():
    feat = features(3)
    rois = np.array(
        [
            [-1, 1.0, 1.0, 8.0, 8.0],
            [2, 1.0, 1.0, 8.0, 8.0],
            [np.nan, 1.0, 1.0, 8.0, 8.0],
            [0, 1.0, np.inf, 8.0, 8.0],
            [1, 1.0, 1.0, np.nan, 8.0],
        ]
    )
    for fn in (
        lambda f: reference.roi_align(f, rois, 2, SCALE, -1),
        lambda f: reference.roi_align(f, rois, 2, SCALE, 2, mode="max"),
        lambda f: reference.roi_pool(f, rois, 2, SCALE),
    ):
        out, vjp = jax.vjp(jax.jit(fn), feat)
        assert not np.any(np.asarray(out))
        assert not np.any(np.asarray(vjp(jnp.ones_like(out))[0]))


# ------------------------------------------------------------ roi_pool

POOL_ROIS = np.array(
    [
        [0, 5.0, 3.0, 13.0, 9.0],  # 2.5, 1.5, 6.5, 4.5 at scale 0.5: round up
        [1, -5.0, -1.0, 7.0, 11.0],  # -2.5 rounds to -3
        [1, 1.0, 2.0, 1.0, 2.0],  # one pixel
        [0, 14.0, 10.0, 40.0, 30.0],  # bins larger than the map
        [1, 9.0, 7.0, 4.0, 2.0],  # reversed: clamped to one pixel
        [0, -30.0, -30.0, -20.0, -20.0],
    ]
)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_roi_pool_matches_numpy(layout):
    feat = features(4)
    feat[0, 1, 1:4, 2:6] = 0.5  # ties
    feat[1, 0, 2:5, :] = np.nan
    want, _ = ref.roi_pool(feat, POOL_ROIS, (3, 2), SCALE)
    got = run(
        lambda f, r: reference.roi_pool(f, r, (3, 2), SCALE, layout=layout),
        to_layout(feat, layout),
        POOL_ROIS,
    )
    np.testing.assert_array_equal(from_layout(got, layout), want)


def test_roi_pool_rounds_half_away_from_zero():
    feat = np.zeros((1, 1, 6, 6))
    feat[0, 0, 0, 2] = 1.0  # column 2: inside [2, ...) only if 2.5 rounded down
    rois = np.array([[0, 2.5, 0.0, 4.0, 0.0]])
    got = reference.roi_pool(feat, rois, 1)
    want, _ = ref.roi_pool(feat, rois, (1, 1), 1.0)
    assert want[0, 0, 0, 0] == 0.0
    np.testing.assert_array_equal(got, want)


# ------------------------------------------------------------ both ops


def test_batched_rois_format_and_chunking(monkeypatch):
    # chunks of 4 ROIs (6 ROIs: the last chunk padded)
    monkeypatch.setattr(pure_jax, "_chunk_size", lambda num_rois, bytes_per_roi: 4)
    feat = features(5)
    boxes = np.stack([ROIS[:3, 1:], ROIS[3:6, 1:]])  # [N, L, 4]
    flat = np.concatenate(
        [np.concatenate([np.full((3, 1), i), boxes[i]], 1) for i in range(N)]
    )
    for fn in (
        lambda f, r, **kw: reference.roi_align(f, r, 2, SCALE, 2, True, **kw),
        lambda f, r, **kw: reference.roi_align(f, r, 2, SCALE, -1, mode="max", **kw),
        lambda f, r, **kw: reference.roi_pool(f, r, 2, SCALE, **kw),
    ):
        want = np.asarray(fn(feat, flat))
        got = np.asarray(fn(feat, boxes))
        assert got.shape == (N, 3, C, 2, 2)
        np.testing.assert_allclose(got.reshape(want.shape), want, atol=1e-12)


# name: (NumPy forward, NumPy VJP, jax_roi.reference function, its layout);
# the NumPy side works on NCHW features
GRADIENT_CASES = {
    "align-avg": (
        lambda f: ref.roi_align(f, ROIS, (3, 2), SCALE, -1, True),
        lambda f, dy: ref.roi_align_vjp(f, ROIS, (3, 2), SCALE, -1, True, dy),
        lambda f: reference.roi_align(f, ROIS, (3, 2), SCALE, -1, True, layout="NHWC"),
        "NHWC",
    ),
    "align-max": (
        lambda f: ref.roi_align(f, ROIS, (3, 2), SCALE, 2, False, mode="max"),
        lambda f, dy: ref.roi_align_vjp(
            f, ROIS, (3, 2), SCALE, 2, False, dy, mode="max"
        ),
        lambda f: reference.roi_align(f, ROIS, (3, 2), SCALE, 2, False, mode="max"),
        "NCHW",
    ),
    "pool": (
        lambda f: ref.roi_pool(f, POOL_ROIS, (3, 2), SCALE)[0],
        lambda f, dy: ref.roi_pool_vjp(f, POOL_ROIS, (3, 2), SCALE, dy),
        lambda f: reference.roi_pool(f, POOL_ROIS, (3, 2), SCALE),
        "NCHW",
    ),
}


@pytest.mark.parametrize("case", sorted(GRADIENT_CASES))
def test_gradient_is_the_numpy_vjp(case):
    np_fn, np_vjp, fn, layout = GRADIENT_CASES[case]
    feat = features(6)
    if case == "pool":
        feat[:, :, 1:5, 2:7] = 3.0  # tied maxima: the first one gets the gradient
    want_out = np_fn(feat)
    out, vjp = jax.vjp(jax.jit(fn), to_layout(feat, layout))
    cot = np.random.default_rng(7).standard_normal(want_out.shape)
    (got,) = vjp(jnp.asarray(to_layout(cot, layout)))
    out = from_layout(np.asarray(out), layout)
    got = from_layout(np.asarray(got), layout)
    np.testing.assert_allclose(out, want_out, atol=1e-12)
    np.testing.assert_allclose(got, np_vjp(feat, cot), atol=1e-12)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_low_precision_features(dtype):
    low = jnp.asarray(features(8), dtype)
    feat = np.asarray(low, np.float64)  # the same values, exactly
    want = ref.roi_align(feat, ROIS, 2, SCALE, 2, True)
    got = reference.roi_align(low, ROIS.astype(np.float32), 2, SCALE, 2, True)
    assert got.dtype == dtype
    tol = 1e-6 if dtype == jnp.float32 else 1e-2  # float32 sums, rounded to dtype
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=tol, atol=tol)
    pooled = reference.roi_pool(low, POOL_ROIS, 2, SCALE)
    want, _ = ref.roi_pool(feat, POOL_ROIS, 2, SCALE)
    assert pooled.dtype == dtype
    np.testing.assert_array_equal(np.asarray(pooled, np.float64), want)


def test_vmap_over_images():
    feats = np.stack([features(9), features(10)])
    fn = jax.jit(jax.vmap(lambda f: reference.roi_align(f, ROIS, 2, SCALE, 2, True)))
    got = np.asarray(fn(feats))
    for i in range(2):
        want = ref.roi_align(feats[i], ROIS, (2, 2), SCALE, 2, True)
        np.testing.assert_allclose(got[i], want, atol=1e-12)


def test_empty_inputs():
    feat = features()
    assert reference.roi_align(feat, np.zeros((0, 5)), (3, 2)).shape == (0, C, 3, 2)
    assert reference.roi_pool(feat, np.zeros((N, 0, 4)), 2).shape == (N, 0, C, 2, 2)
    empty = np.zeros((N, C, 0, W))
    assert not np.any(np.asarray(reference.roi_align(empty, ROIS, 2)))


@pytest.mark.parametrize(
    "kwargs, error",
    [
        (dict(mode="mean"), ValueError),
        (dict(layout="HWC"), ValueError),
        (dict(rois=np.zeros((3, 4))), ValueError),
        (dict(features=np.zeros((N, C, H, W), np.int32)), TypeError),
        (dict(output_size=0), ValueError),
        (dict(spatial_scale=-1.0), ValueError),
        (dict(implementation="tpu"), ValueError),
    ],
)
def test_argument_errors(kwargs, error):
    args = dict(features=features(), rois=ROIS, output_size=2) | kwargs
    with pytest.raises(error):
        reference.roi_align(**args)


@pytest.mark.parametrize("op,ratio", [("align_max", -1), ("align_max", 2), ("pool", 0)])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_argmax_is_packed_as_the_kernels_pack_it(op, ratio, layout):
    # either implementation's backward accepts the other's forward
    from jax_roi._roi import roi_forward_p
    feat = jnp.asarray(to_layout(features(11), layout))
    params = dict(op=op, output_size=(3, 2), spatial_scale=SCALE, sampling_ratio=ratio,
                  aligned=True, layout=layout)
    _, kernel = roi_forward_p.bind(feat, jnp.asarray(ROIS), implementation="kernel", **params)
    _, pure = roi_forward_p.bind(feat, jnp.asarray(ROIS), implementation="xla", **params)
    np.testing.assert_array_equal(pure, kernel)
    assert np.any(np.asarray(kernel) > 0) and np.any(np.asarray(kernel) == -1)
