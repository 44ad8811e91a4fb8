"""The 16-bit backward's float32 scratch is kept between calls
(lib/cpu/kept_scratch.h). Whatever an earlier call left in it (here NaN
everywhere), and whether a call takes the kept buffer, grows it, or
allocates its own (past the cap set by JAX_ROI_CPU_KEPT_SCRATCH_MB, or
while another call holds it), the gradient is the same bits."""

import sys
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

import jax_roi
from kept_scratch_runs import mismatches_at_once, run_with_cap

# NHWC roi_align sums in row bands; NCHW ps_roi_pool in channel blocks.
OPS = {
    "roi_align": partial(jax_roi.roi_align, output_size=4, spatial_scale=0.5, sampling_ratio=2,
                         aligned=True, layout="NHWC"),
    "ps_roi_pool": partial(jax_roi.ps_roi_pool, output_size=3, spatial_scale=0.5,
                           layout="NCHW"),
}
CHANNELS = {"roi_align": 24, "ps_roi_pool": 36}
SMALL, LARGE = 40, 100  # spatial sides; LARGE's scratch is past a 1 MB cap


def gradient_call(op, side, seed, cotangent_fill=None, k=30):
    """A compiled call giving the bfloat16 feature gradient of `op` on a
    side x side map, as bits."""
    rng = np.random.default_rng(seed)
    c = CHANNELS[op]
    shape = (2, side, side, c) if op == "roi_align" else (2, c, side, side)
    features = jnp.asarray(rng.standard_normal(shape), jnp.bfloat16)
    x0, y0 = rng.uniform(-4, 2 * side, k), rng.uniform(-4, 2 * side, k)
    wh = rng.uniform(4, 2 * side, (2, k))
    rois = jnp.asarray(np.stack([rng.integers(0, 2, k), x0, y0, x0 + wh[0], y0 + wh[1]], 1),
                       jnp.float32)
    out_shape = jax.eval_shape(OPS[op], features, rois).shape
    cotangent = jnp.asarray(rng.standard_normal(out_shape) if cotangent_fill is None
                            else np.full(out_shape, cotangent_fill), jnp.bfloat16)
    gradient = jax.jit(lambda: jax.vjp(lambda f: OPS[op](f, rois), features)[1](cotangent)[0])

    def bits():
        grad = gradient()
        assert grad.dtype == jnp.bfloat16
        return np.asarray(grad).view(np.uint16)

    return bits


def gradient_bits(op, side, seed, **kwargs):
    return gradient_call(op, side, seed, **kwargs)()


def sequence():
    """Small, poisoned large, small, large, small: the kept buffer is taken
    fresh, grown, filled with NaN, reused and grown again."""
    results = {}
    for op in OPS:
        results[f"{op}_small_first"] = gradient_bits(op, SMALL, 1)
        poisoned = gradient_bits(op, LARGE - 10, 2, cotangent_fill=np.nan, k=400)
        results[f"{op}_poisoned_nan"] = np.isnan(poisoned.view(jnp.bfloat16).astype(np.float32))
        results[f"{op}_small_after_nan"] = gradient_bits(op, SMALL, 1)
        results[f"{op}_large"] = gradient_bits(op, LARGE, 3)
        results[f"{op}_small_last"] = gradient_bits(op, SMALL, 1)
    return results


def run_sequence(cap_mb):
    return run_with_cap(__file__, cap_mb, timeout=600)


def test_gradients_do_not_depend_on_the_kept_scratch():
    runs = {cap: run_sequence(cap) for cap in (None, 0, 1)}  # default, none kept, 1 MB
    for cap, results in runs.items():
        for op in OPS:
            # The poison reached the kept buffer: most of that gradient is NaN.
            assert results[f"{op}_poisoned_nan"].mean() > 0.5, (cap, op)
            first = results[f"{op}_small_first"]
            assert np.any(first != 0)
            for later in ("small_after_nan", "small_last"):
                np.testing.assert_array_equal(results[f"{op}_{later}"], first, err_msg=str(cap))
    for key, value in runs[None].items():
        np.testing.assert_array_equal(runs[0][key], value, err_msg=key)
        np.testing.assert_array_equal(runs[1][key], value, err_msg=key)


def test_calls_at_once_each_get_their_own_sums():
    """Python threads run compiled calls at once; without the lock two of
    them would sum into one buffer."""
    jobs = [(op, side, seed) for op in OPS for side in (SMALL, 3 * LARGE) for seed in (4, 5)]
    calls = [gradient_call(*job) for job in jobs]
    assert not [jobs[i] for i in mismatches_at_once(calls, repeats=10)]


def test_large_nhwc_blocks_zero_the_pixels_no_tap_reaches():
    """roi_align_rotated's NHWC backward zeroes a large block's pixels at
    their first tap and the rest at the end (lib/cpu/first_touch.h), not
    the whole block first. A call that filled the kept scratch with NaN
    leaves nothing in a later call's gradient, at the pixels its taps reach
    or at those they miss."""
    rng = np.random.default_rng(6)
    # 96 x 96 x 256: a 9.4 MB float32 scratch, 4.7 MB a block when the
    # image is split by channels between two threads
    features = jnp.asarray(rng.standard_normal((1, 96, 96, 256)), jnp.bfloat16)

    def gradient(rois, cotangent_fill=None, sampling_ratio=2):
        op = partial(jax_roi.roi_align_rotated, output_size=5, sampling_ratio=sampling_ratio,
                     layout="NHWC")
        rois = jnp.asarray(rois, jnp.float32)
        shape = jax.eval_shape(op, features, rois).shape
        cotangent = (np.random.default_rng(7).standard_normal(shape) if cotangent_fill is None
                     else np.full(shape, cotangent_fill))
        vjp = jax.vjp(lambda f: op(f, rois), features)[1]
        return np.asarray(vjp(jnp.asarray(cotangent, jnp.bfloat16))[0], np.float32)

    # boxes in the upper left corner and one past the right edge
    some = [[0, 20, 24, 30, 18, 30], [0, 12, 10, 16, 16, -75], [0, 100, 50, 20, 40, 10]]
    every = [[0, 48, 48, 96, 96, 0]]  # its 100 x 100 samples read every pixel
    first = gradient(some)
    first_again = gradient(some)
    assert np.isnan(gradient(every, cotangent_fill=np.nan, sampling_ratio=-1)).all()
    after_nan = gradient(some)
    np.testing.assert_array_equal(first, first_again)
    np.testing.assert_array_equal(after_nan, first)
    reached = np.any(first != 0, axis=-1)
    assert 0.01 < reached.mean() < 0.5  # both kinds of pixel are there


if __name__ == "__main__":
    np.savez(sys.argv[1], **sequence())
