"""The CPU kernels' per-thread scratch and the tap ops' per-call tables are
kept between calls (lib/cpu/reused_scratch.h). Whatever an earlier call left in them
(another op's or layout's tables, a larger map's lane tiles, NaN features),
and whether a call finds them kept, grows them, or has its own (past the
cap, JAX_ROI_CPU_KEPT_SCRATCH_MB=0 keeps nothing, or while another call
holds them), every result is the same bits."""

import sys
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

import jax_roi
from kept_scratch_runs import mismatches_at_once, run_with_cap

# The ops whose kernels keep scratch or tables, each a (feature map, rois)
# -> output function of its layout.
OPS = {
    "roi_align": lambda layout: partial(jax_roi.roi_align, output_size=3, spatial_scale=0.5,
                                        sampling_ratio=2, aligned=True, layout=layout),
    "roi_align_max": lambda layout: partial(jax_roi.roi_align, output_size=3, spatial_scale=0.5,
                                            sampling_ratio=2, aligned=True, mode="max",
                                            layout=layout),
    "roi_pool": lambda layout: partial(jax_roi.roi_pool, output_size=3, spatial_scale=0.5,
                                       layout=layout),
    "roi_align_rotated": lambda layout: partial(
        jax_roi.roi_align_rotated, output_size=3, spatial_scale=0.5, sampling_ratio=2,
        layout=layout),
    "prroi_pool": lambda layout: partial(jax_roi.prroi_pool, output_size=3, spatial_scale=0.5,
                                         layout=layout),
    "ps_roi_align": lambda layout: partial(jax_roi.ps_roi_align, output_size=2,
                                           spatial_scale=0.5, sampling_ratio=2, layout=layout),
    "ps_roi_pool": lambda layout: partial(jax_roi.ps_roi_pool, output_size=2, spatial_scale=0.5,
                                          layout=layout),
}


def problem(op, layout, side, k, images, seed, poison=False):
    """Features, ROIs and a cotangent for `op` on `images` side x side maps
    with k ROIs (NaN features where poisoned)."""
    rng = np.random.default_rng(seed)
    c = 20 if op.startswith("ps_") else 24  # 5 (or 20) output channels of 2 x 2 bins
    shape = (images, c, side, side) if layout == "NCHW" else (images, side, side, c)
    features = rng.standard_normal(shape).astype(np.float32)
    if poison:
        features[:] = np.nan
    x0, y0 = rng.uniform(-4, 2 * side, k), rng.uniform(-4, 2 * side, k)
    wh = rng.uniform(2, 2 * side, (2, k))
    batch = rng.integers(0, images, k)
    if op == "roi_align_rotated":
        rois = np.stack([batch, x0, y0, wh[0], wh[1], rng.uniform(-180, 180, k)], 1)
    else:
        rois = np.stack([batch, x0, y0, x0 + wh[0], y0 + wh[1]], 1)
    fn = OPS[op](layout)
    rois = jnp.asarray(rois, jnp.float32)
    out_shape = jax.eval_shape(fn, jnp.asarray(features), rois).shape
    cotangent = jnp.asarray(rng.standard_normal(out_shape), jnp.float32)
    return fn, jnp.asarray(features), rois, cotangent


def results(op, layout, side, k, images, seed, poison=False):
    """The forward and the feature gradient, as bits."""
    fn, features, rois, cotangent = problem(op, layout, side, k, images, seed, poison)
    out, vjp = jax.vjp(lambda f: fn(f, rois), features)
    grad = vjp(cotangent)[0]
    return np.asarray(out).view(np.uint32), np.asarray(grad).view(np.uint32)


# Small and large maps, few and many ROIs, one image and two, both layouts,
# each op after the others, and NaN features in between. (With one image
# a thread's lane tiles are of image 0 call after call; the small maps with
# many ROIs are copied channels-last by roi_align instead.)
STEPS = [(op, layout, side, k, images, seed)
         for side, k, images, seed in [(12, 6, 1, 0), (40, 300, 2, 1), (12, 6, 1, 0),
                                       (24, 60, 2, 2), (40, 60, 1, 3)]
         for op in OPS for layout in ("NCHW", "NHWC")]


def sequence():
    saved = {}
    for i, (op, layout, side, k, images, seed) in enumerate(STEPS):
        # Just before: NaN features of the same shapes (what a thread's lane
        # tile last held must not be taken for this call's).
        results(op, layout, side, k, images, seed, poison=True)
        out, grad = results(op, layout, side, k, images, seed)
        saved[f"{i}_out"], saved[f"{i}_grad"] = out, grad
        results(op, "NHWC" if layout == "NCHW" else "NCHW", 3 * side, k, 2, seed + 50,
                poison=True)
    return saved


def run_sequence(cap_mb):
    return run_with_cap(__file__, cap_mb, timeout=900)


def test_results_do_not_depend_on_what_earlier_calls_kept():
    kept, none_kept = run_sequence(None), run_sequence(0)
    assert set(kept) == set(none_kept) == {f"{i}_{r}" for i in range(len(STEPS))
                                           for r in ("out", "grad")}
    for key, value in none_kept.items():
        step = STEPS[int(key.split("_")[0])]
        np.testing.assert_array_equal(kept[key], value, err_msg=f"{key}: {step}")
    # The same problem early and late in the sequence gives the same bits.
    repeated = 0
    for i, step in enumerate(STEPS):
        j = STEPS.index(step)
        repeated += j != i
        for r in ("out", "grad"):
            np.testing.assert_array_equal(kept[f"{i}_{r}"], kept[f"{j}_{r}"])
        assert np.any(kept[f"{i}_out"].view(np.float32) != 0), step
    assert repeated == 2 * len(OPS)


def test_calls_at_once_each_get_their_own_tables():
    """Python threads run compiled calls at once: one has the kept tables,
    the others their own, and every thread's scratch is its own."""
    jobs = [(op, layout, side, k, images, 7)
            for op in ("roi_align", "roi_align_rotated", "ps_roi_pool")
            for layout in ("NCHW", "NHWC") for side, k, images in ((12, 6, 1), (40, 300, 2))]
    calls = [partial(results, *job) for job in jobs]
    assert not [jobs[i] for i in mismatches_at_once(calls, repeats=4)]

if __name__ == "__main__":
    np.savez(sys.argv[1], **sequence())
