"""Results and gradients of 8 MB or more, which the CPU kernels stream to
memory past the cache (lib/cpu/stream_store.h: NCHW results, roi_align's
NHWC ones, ps_roi_pool's gradient), hold the right values; the smaller ones
of the other tests take the plain stores. float32 and bfloat16, both
layouts. The map of 8.7 MB in float32 (and every float32 gradient) is also
large enough for roi_align's NHWC loops to prefetch a bin ahead
(lib/cpu/align_avg_cpu.h, kNhwcPrefetchImageBytes).

The whole streamed result equals the kernels' results for quarters of the
ROIs, each small enough for plain stores (roi_align's NCHW forward takes a
channels-last copy of the map for the whole call, not for a quarter: both
paths add the same taps in the same order). The pure-JAX implementation,
at about 10 s a call on all 1440 ROIs, checks a ninth of them: their
result rows, and the whole streamed gradient for a cotangent that is 0 on
the other ROIs."""

import os
import subprocess
import sys
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_roi

STREAMED_BYTES = 8 << 20
# 60 channels (a last tile of 12) and a 191 x 190 plane start runs of
# results and of gradient planes off 16-byte boundaries. Features 8.7 MB in
# float32 (the gradient is float32 for bfloat16 too), output 8.5 MB in
# bfloat16.
C, H, W, K = 60, 191, 190, 1440
OPS = {
    "roi_align": partial(jax_roi.roi_align, output_size=7, spatial_scale=0.5, sampling_ratio=2,
                         aligned=True),
    "roi_align_rotated": partial(jax_roi.roi_align_rotated, output_size=7, spatial_scale=0.5,
                                 sampling_ratio=2),
    "roi_pool": partial(jax_roi.roi_pool, output_size=7, spatial_scale=0.5),
}


def random_boxes(rng, k, height, width):
    """x0, y0, w, h of k boxes 4 to 150 pixels wide, many past the map's edges."""
    x0, y0 = rng.uniform(-20, 2 * width, k), rng.uniform(-20, 2 * height, k)
    w, h = rng.uniform(4, 150, k), rng.uniform(4, 150, k)
    return x0, y0, w, h


def inputs(op, dtype, layout):
    rng = np.random.default_rng(7)
    features = rng.standard_normal((1, C, H, W))
    if layout == "NHWC":
        features = features.transpose(0, 2, 3, 1)
    features = jnp.asarray(features, dtype)
    x0, y0, w, h = random_boxes(rng, K, H, W)
    if op == "roi_align_rotated":
        boxes = np.stack([np.zeros(K), x0, y0, w, h, rng.uniform(-90, 90, K)], 1)
    else:
        boxes = np.stack([np.zeros(K), x0, y0, x0 + w, y0 + h], 1)
    return features, jnp.asarray(boxes, jnp.float32)


def test_the_tests_stream_results_of_8_mb():
    from jax_roi import _jax_roi_cpu
    assert _jax_roi_cpu.streamed_result_bytes() == STREAMED_BYTES  # conftest.py's setting


def streamed_bytes_in_a_fresh_process(setting):
    env = {k: v for k, v in os.environ.items() if k != "JAX_ROI_CPU_STREAM_MB"}
    if setting is not None:
        env["JAX_ROI_CPU_STREAM_MB"] = setting
    # run from this directory: from the checkout's root, `import jax_roi` would
    # find the sources (without the built modules) before the installed package
    child = subprocess.run([sys.executable, "-c", "from jax_roi import _jax_roi_cpu; "
                            "print(_jax_roi_cpu.streamed_result_bytes())"],
                           env=env, capture_output=True, text=True, timeout=120,
                           cwd=os.path.dirname(os.path.abspath(__file__)))
    assert child.returncode == 0, child.stderr[-3000:]
    return int(child.stdout)


def l3_cache_bytes_from_sysfs():
    """Linux's size of cpu0's L3 cache ("32768K"), 0 where it has none."""
    try:
        with open("/sys/devices/system/cpu/cpu0/cache/index3/size") as f:
            text = f.read().strip()
    except OSError:
        return 0
    units = {"K": 1 << 10, "M": 1 << 20}
    return int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text)


def test_the_l3_cache_size_is_linux_s():
    from jax_roi import _jax_roi_cpu
    assert _jax_roi_cpu.l3_cache_bytes() == l3_cache_bytes_from_sysfs()


def test_results_stream_from_8_mb_or_16_mb_on_a_32_mb_l3_cache_unless_set():
    l3 = l3_cache_bytes_from_sysfs()
    assert streamed_bytes_in_a_fresh_process(None) == (16 if l3 >= 32 << 20 else 8) << 20
    assert streamed_bytes_in_a_fresh_process("3") == 3 << 20
    assert streamed_bytes_in_a_fresh_process("0") == 0  # every result streamed
    assert streamed_bytes_in_a_fresh_process("-5") == 0
    assert streamed_bytes_in_a_fresh_process("99999999999999999") == 1 << 50  # at most 1 PB


CHECKED = slice(None, None, 9)  # the ROIs the pure-JAX implementation checks
QUARTER = K // 4


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("op", sorted(OPS))
def test_streamed_results_and_gradients_hold_the_right_values(op, dtype, layout):
    features, rois = inputs(op, dtype, layout)
    cotangent = np.random.default_rng(8).standard_normal((K, C, 7, 7))
    if layout == "NHWC":
        cotangent = cotangent.transpose(0, 2, 3, 1)
    unchecked = np.ones(K, bool)
    unchecked[CHECKED] = False
    cotangent[unchecked] = 0
    cotangent = jnp.asarray(cotangent, dtype)
    assert cotangent.nbytes >= STREAMED_BYTES and features.size * 4 >= STREAMED_BYTES
    assert cotangent.nbytes / 4 < STREAMED_BYTES  # a quarter's result is not streamed

    @partial(jax.jit, static_argnums=0)
    def forward_and_gradient(implementation, features, rois, cotangent):
        fn = partial(OPS[op], layout=layout, implementation=implementation)
        out, vjp = jax.vjp(lambda f: fn(f, rois), features)
        return out, vjp(cotangent)[0]

    out, grad = forward_and_gradient("kernel", features, rois, cotangent)
    quarters = jax.jit(partial(OPS[op], layout=layout, implementation="kernel"))
    by_quarter = [quarters(features, rois[i:i + QUARTER]) for i in range(0, K, QUARTER)]
    np.testing.assert_array_equal(np.asarray(out, np.float32),
                                  np.concatenate([np.asarray(q, np.float32) for q in by_quarter]))

    want_out, want_grad = forward_and_gradient("xla", features, rois[CHECKED],
                                               cotangent[CHECKED])
    # float32: summation order, and sample positions that round an ulp apart
    tol = 1e-4 if dtype == jnp.float32 else 2e-2
    for got, want in ((out[CHECKED], want_out), (grad, want_grad)):
        got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
        assert np.abs(want).max() > 0
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol * np.abs(want).max())


# The position-sensitive ops: 98 channels (2 output channels of 7 x 7
# bins) of a 151 x 150 map, 8.9 MB in float32. ps_roi_pool's backward sums
# each bin's planes (NCHW) or each row band (NHWC) in a scratch and streams
# it to the gradient; its NCHW planes of 22,650 floats start every other
# one off a 16-byte boundary.
PS_C, PS_H, PS_W, PS_K = 98, 151, 150, 300
PS_OPS = {
    "ps_roi_pool": partial(jax_roi.ps_roi_pool, output_size=7, spatial_scale=0.5),
    "ps_roi_align": partial(jax_roi.ps_roi_align, output_size=7, spatial_scale=0.5,
                            sampling_ratio=2),
}


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("op", sorted(PS_OPS))
def test_streamed_position_sensitive_gradients_hold_the_right_values(op, dtype, layout):
    rng = np.random.default_rng(9)
    features = rng.standard_normal((1, PS_C, PS_H, PS_W))
    x0, y0, w, h = random_boxes(rng, PS_K, PS_H, PS_W)
    rois = jnp.asarray(np.stack([np.zeros(PS_K), x0, y0, x0 + w, y0 + h], 1), jnp.float32)
    cotangent = rng.standard_normal((PS_K, PS_C // 49, 7, 7))
    if layout == "NHWC":
        features, cotangent = features.transpose(0, 2, 3, 1), cotangent.transpose(0, 2, 3, 1)
    features, cotangent = jnp.asarray(features, dtype), jnp.asarray(cotangent, dtype)
    assert features.size * 4 >= STREAMED_BYTES  # the float32 sums are streamed

    def gradient(implementation):
        fn = partial(PS_OPS[op], layout=layout, implementation=implementation)
        return jax.jit(lambda f: jax.vjp(lambda g: fn(g, rois), f)[1](cotangent)[0])(features)

    got = np.asarray(gradient("kernel"), np.float32)
    want = np.asarray(gradient("xla"), np.float32)
    assert np.count_nonzero(want) > want.size // 20  # many planes and pixels take a part
    # float32: summation order, and (ps_roi_align) sample positions an ulp apart
    tol = 1e-4 if dtype == jnp.float32 else 1e-2
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * np.abs(want).max())
