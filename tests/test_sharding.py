"""The ops on 4 devices: jit over sharded inputs, shard_map, and vmap and jit
inside them, with values and gradients equal to the single-device ones.

A JAX process fixes its device count when its backend starts, and other
test modules start it with one CPU device. So this module runs its checks
in one child process started with 4 virtual CPU devices: the child
(`python test_sharding.py`) computes facts about each case (collectives in
the compiled HLO, shard shapes, errors against one device) and prints them
as JSON, and the tests below assert on them.
"""

import json
import os
import subprocess
import sys

import pytest

DEVICES = 4
N, C, H, W, L, K = 4, 4, 7, 6, 3, 8     # N and C split over the 4 devices
COLLECTIVES = ("all-gather", "all-to-all", "collective-permute", "all-reduce",
               "reduce-scatter")


# ------------------------------------------------ the child: computing facts

def _compute_facts():
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import AxisType, NamedSharding
    from jax.sharding import PartitionSpec as P

    import jax_roi

    jax.config.update("jax_enable_x64", True)
    assert jax.device_count() == DEVICES, jax.devices()
    explicit = jax.make_mesh((DEVICES,), ("d",), axis_types=(AxisType.Explicit,))
    auto = jax.make_mesh((DEVICES,), ("d",), axis_types=(AxisType.Auto,))
    one_device = jax.devices()[0]
    rng = np.random.default_rng(0)

    def features(layout):
        x = rng.standard_normal((N, C, H, W))
        return jnp.asarray(x if layout == "NCHW" else x.transpose(0, 2, 3, 1))

    def corners(shape):
        xy = rng.uniform(-1.0, 2.0 * W, shape + (2, 2))
        return np.concatenate([xy.min(-2), xy.max(-2)], -1)  # x1 <= x2, y1 <= y2

    boxes = jnp.asarray(corners((N, L)))                                   # [N, L, 4]
    # rotated boxes (cx, cy, w, h, angle) per image, and as [K, 6] rows
    rotated = jnp.asarray(np.concatenate([rng.uniform(0, W, (N, L, 2)),
                                          rng.uniform(1, W, (N, L, 2)),
                                          rng.uniform(-90, 90, (N, L, 1))], -1))
    rois = jnp.asarray(np.concatenate(
        [rng.integers(0, N, (K, 1)).astype(np.float64), corners((K,))], 1))  # [K, 5]

    ops = {
        "align_avg": lambda lay: lambda x, r: jax_roi.roi_align(x, r, (2, 3), 0.5, 2, True,
                                                                layout=lay),
        "align_max": lambda lay: lambda x, r: jax_roi.roi_align(x, r, (2, 3), 0.5, -1, False,
                                                                mode="max", layout=lay),
        "pool": lambda lay: lambda x, r: jax_roi.roi_pool(x, r, (2, 3), 0.5, layout=lay),
        "rotated": lambda lay: lambda x, r: jax_roi.roi_align_rotated(x, r, (2, 3), 0.5, 2,
                                                                      layout=lay),
        # position-sensitive: C = 4 channels over (1, 2) bins give 2 output channels
        "ps_align": lambda lay: lambda x, r: jax_roi.ps_roi_align(x, r, (1, 2), 0.5, 2,
                                                                  layout=lay),
        "ps_pool": lambda lay: lambda x, r: jax_roi.ps_roi_pool(x, r, (1, 2), 0.5, layout=lay),
        "prroi": lambda lay: lambda x, r: jax_roi.prroi_pool(x, r, (2, 3), 0.5, layout=lay),
        # the pure-JAX implementation, as platforms without a kernel run it
        "align_max_xla": lambda lay: lambda x, r: jax_roi.roi_align(
            x, r, (2, 3), 0.5, -1, False, mode="max", layout=lay, implementation="xla"),
        "pool_xla": lambda lay: lambda x, r: jax_roi.roi_pool(x, r, (2, 3), 0.5, layout=lay,
                                                              implementation="xla"),
    }

    def tangent_of(fn):
        """Forward mode: the tangent of fn along the features themselves."""
        return lambda x, r: jax.jvp(lambda f: fn(f, r), (x,), (x,))[1]

    def grad_of(fn):
        return jax.grad(lambda x, r: 0.5 * jnp.sum(fn(x, r) ** 2))

    def error(actual, expected):
        expected = np.asarray(expected)
        scale = max(1.0, float(np.abs(expected).max()))
        return float(np.abs(np.asarray(actual) - expected).max()) / scale

    def compiled(fn, *args):
        text = jax.jit(fn).lower(*args).compile().as_text()
        return {"collectives": [c for c in COLLECTIVES if c in text],
                "kernels": text.count('custom_call_target="jax_roi_')}

    def run(fn, x, r, mesh, x_spec, r_spec, reference=None):
        """Facts about fn on sharded inputs against reference on one device."""
        reference = reference or fn
        xs = jax.device_put(x, NamedSharding(mesh, x_spec))
        rs = jax.device_put(r, NamedSharding(mesh, r_spec))
        x1, r1 = jax.device_put(x, one_device), jax.device_put(r, one_device)
        out = jax.jit(fn)(xs, rs)
        grad = jax.jit(grad_of(fn))(xs, rs)
        return {
            "forward": compiled(fn, xs, rs),
            "backward": compiled(grad_of(fn), xs, rs),
            "out_shard_shape": list(out.sharding.shard_shape(out.shape)),
            "grad_shard_shape": list(grad.sharding.shard_shape(grad.shape)),
            "value_error": error(out, jax.jit(reference)(x1, r1)),
            "grad_error": error(grad, jax.jit(grad_of(reference))(x1, r1)),
        }

    def box_grad_of(fn):
        return jax.grad(lambda x, r: 0.5 * jnp.sum(fn(x, r) ** 2), argnums=1)

    def box_run(fn, x, r, mesh, x_spec, r_spec, reference=None):
        """Facts about fn's gradient with respect to the ROIs on sharded inputs."""
        reference = reference or fn
        xs = jax.device_put(x, NamedSharding(mesh, x_spec))
        rs = jax.device_put(r, NamedSharding(mesh, r_spec))
        x1, r1 = jax.device_put(x, one_device), jax.device_put(r, one_device)
        grad = jax.jit(box_grad_of(fn))(xs, rs)
        expected = jax.jit(box_grad_of(reference))(x1, r1)
        return {"backward": compiled(box_grad_of(fn), xs, rs),
                "grad_shard_shape": list(grad.sharding.shard_shape(grad.shape)),
                "grad_error": error(grad, expected),
                "grad_scale": float(np.abs(np.asarray(expected)).max())}

    def lowered(fn, x, r):
        both = jax.jit(fn).lower(x, r).as_text() + jax.jit(grad_of(fn)).lower(x, r).as_text()
        return {"calls": both.count("stablehlo.custom_call @jax_roi_"),
                "num_batch_dims": both.count('num_batch_dims = "1"'),
                "sharding_rules": both.count("sdy.sharding_rule")}

    def smap(fn, mesh, in_specs, out_specs, check_vma=True):
        return jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs,
                             check_vma=check_vma)

    def channel_spec(layout):
        return P(None, "d") if layout == "NCHW" else P(None, None, None, "d")

    nchw, nhwc = features("NCHW"), features("NHWC")
    maps = jnp.stack([nchw, -2.0 * nchw])  # a vmapped axis of feature maps
    cases = {
        # jit over inputs sharded along the images: batch-partitioned
        "jit_boxes_align_avg_nchw": lambda: run(
            ops["align_avg"]("NCHW"), nchw, boxes, explicit, P("d"), P("d")),
        "jit_boxes_align_max_nhwc": lambda: run(
            ops["align_max"]("NHWC"), nhwc, boxes, auto, P("d"), P("d")),
        "jit_boxes_pool_nchw": lambda: run(
            ops["pool"]("NCHW"), nchw, boxes, explicit, P("d"), P("d")),
        "jit_boxes_rotated_nhwc": lambda: run(
            ops["rotated"]("NHWC"), nhwc, rotated, explicit, P("d"), P("d")),
        "jit_boxes_ps_align_nchw": lambda: run(
            ops["ps_align"]("NCHW"), nchw, boxes, auto, P("d"), P("d")),
        "jit_boxes_ps_pool_nhwc": lambda: run(
            ops["ps_pool"]("NHWC"), nhwc, boxes, explicit, P("d"), P("d")),
        "jit_boxes_prroi_nhwc": lambda: run(
            ops["prroi"]("NHWC"), nhwc, boxes, explicit, P("d"), P("d")),
        # the gradient with respect to the boxes
        "box_grad_jit_boxes_align_avg": lambda: box_run(
            ops["align_avg"]("NHWC"), nhwc, boxes, explicit, P("d"), P("d")),
        "box_grad_jit_boxes_prroi": lambda: box_run(
            ops["prroi"]("NCHW"), nchw, boxes, auto, P("d"), P("d")),
        "box_grad_smap_rois_rotated": lambda: box_run(
            smap(ops["rotated"]("NCHW"), explicit, (P(), P("d")), P("d")),
            nchw, jnp.concatenate([rois[:, :1], rotated.reshape(-1, 5)[:K]], 1), explicit,
            P(), P("d"), ops["rotated"]("NCHW")),
        # jit patterns that are computed whole on each device, correctly
        "jit_rois_sharded": lambda: run(
            ops["align_avg"]("NHWC"), nhwc, rois, explicit, P(), P("d")),
        "jit_channels_sharded": lambda: run(
            ops["pool"]("NHWC"), nhwc, rois, explicit, channel_spec("NHWC"), P()),
        "jit_features_sharded_rois_k5": lambda: run(
            ops["align_max"]("NCHW"), nchw, rois, auto, P("d"), P()),
        # shard_map
        "smap_rois_sharded": lambda: run(
            smap(ops["align_avg"]("NCHW"), explicit, (P(), P("d")), P("d")),
            nchw, rois, explicit, P(), P("d"), ops["align_avg"]("NCHW")),
        "smap_rois_sharded_unchecked": lambda: run(
            smap(ops["pool"]("NHWC"), auto, (P(), P("d")), P("d"), check_vma=False),
            nhwc, rois, auto, P(), P("d"), ops["pool"]("NHWC")),
        "smap_boxes_sharded": lambda: run(
            smap(ops["align_max"]("NHWC"), explicit, (P("d"), P("d")), P("d")),
            nhwc, boxes, explicit, P("d"), P("d"), ops["align_max"]("NHWC")),
        "smap_channels_sharded": lambda: run(
            smap(ops["align_avg"]("NHWC"), explicit, (channel_spec("NHWC"), P()),
                 P(None, None, None, "d")),
            nhwc, rois, explicit, channel_spec("NHWC"), P(), ops["align_avg"]("NHWC")),
        "smap_rotated_rois_sharded": lambda: run(
            smap(ops["rotated"]("NCHW"), explicit, (P(), P("d")), P("d")),
            nchw, jnp.concatenate([rois[:, :1], rotated.reshape(-1, 5)[:K]], 1), explicit,
            P(), P("d"), ops["rotated"]("NCHW")),
        "smap_ps_pool_rois_sharded": lambda: run(
            smap(ops["ps_pool"]("NHWC"), explicit, (P(), P("d")), P("d")),
            nhwc, rois, explicit, P(), P("d"), ops["ps_pool"]("NHWC")),
        # vmap inside shard_map, jit inside shard_map and vmap
        "smap_vmap_features": lambda: run(
            smap(jax.vmap(ops["align_avg"]("NCHW"), (0, None)), explicit,
                 (P(), P("d")), P(None, "d")),
            maps, rois, explicit, P(), P("d"), jax.vmap(ops["align_avg"]("NCHW"), (0, None))),
        "smap_vmap_boxes": lambda: run(
            smap(jax.vmap(ops["pool"]("NCHW"), (0, None)), auto,
                 (P(None, "d"), P("d")), P(None, "d")),
            maps, boxes, auto, P(None, "d"), P("d"), jax.vmap(ops["pool"]("NCHW"), (0, None))),
        "smap_jit": lambda: run(
            smap(jax.jit(ops["align_max"]("NCHW")), explicit, (P(), P("d")), P("d")),
            nchw, rois, explicit, P(), P("d"), ops["align_max"]("NCHW")),
        "vmap_smap_jit": lambda: run(
            jax.vmap(smap(jax.jit(ops["align_avg"]("NCHW")), auto, (P(), P("d")), P("d")),
                     (0, None)),
            maps, rois, auto, P(), P("d"), jax.vmap(ops["align_avg"]("NCHW"), (0, None))),
        # the pure-JAX implementation and forward mode
        "xla_jit_boxes_align_max": lambda: run(
            ops["align_max_xla"]("NHWC"), nhwc, boxes, explicit, P("d"), P("d")),
        "xla_smap_rois_pool": lambda: run(
            smap(ops["pool_xla"]("NCHW"), explicit, (P(), P("d")), P("d")),
            nchw, rois, explicit, P(), P("d"), ops["pool_xla"]("NCHW")),
        "jvp_jit_boxes_align_max": lambda: run(
            tangent_of(ops["align_max"]("NHWC")), nhwc, boxes, explicit, P("d"), P("d")),
        "jvp_smap_rois_avg": lambda: run(
            smap(tangent_of(ops["align_avg"]("NCHW")), explicit, (P(), P("d")), P("d")),
            nchw, rois, explicit, P(), P("d"), tangent_of(ops["align_avg"]("NCHW"))),
        # what the lowering attaches
        "lowered_boxes": lambda: lowered(ops["align_max"]("NHWC"), nhwc, boxes),
        "lowered_rois": lambda: lowered(ops["align_max"]("NHWC"), nhwc, rois),
    }

    def pyramid_case(mesh, mode, implementation=None):
        """MultiScaleRoIAlign over maps and boxes split along the images."""
        from jax_roi import nnx as roi_nn
        module = roi_nn.MultiScaleRoIAlign((2, 3), (1 / 2, 1 / 4, 1 / 8), sampling_ratio=2,
                                           canonical_scale=8, canonical_level=2, mode=mode,
                                           implementation=implementation)
        pyramid = [jnp.asarray(rng.standard_normal((N, 4 * H >> i, 4 * W >> i, C)))
                   for i in range(1, 4)]
        image_boxes = jnp.asarray(corners((N, 6)) * 4)
        loss = lambda fs, b: 0.5 * jnp.sum(module(fs, b) ** 2)
        split = NamedSharding(mesh, P("d"))
        fs, bs = jax.device_put(pyramid, split), jax.device_put(image_boxes, split)
        one = jax.device_put((pyramid, image_boxes), one_device)
        out, grads = jax.jit(module)(fs, bs), jax.jit(jax.grad(loss))(fs, bs)
        return {
            "levels_used": len(set(np.asarray(module.level_indices(image_boxes)).ravel())),
            "forward": compiled(module, fs, bs),
            "backward": compiled(jax.grad(loss), fs, bs),
            "out_shard_shape": list(out.sharding.shard_shape(out.shape)),
            "grad_shard_shapes": [list(g.sharding.shard_shape(g.shape)) for g in grads],
            "value_error": error(out, jax.jit(module)(*one)),
            "grad_error": max(error(g, e) for g, e in zip(grads, jax.jit(jax.grad(loss))(*one))),
        }

    cases["jit_pyramid_avg_explicit"] = lambda: pyramid_case(explicit, "avg")
    cases["jit_pyramid_max_auto"] = lambda: pyramid_case(auto, "max")
    cases["xla_jit_pyramid_avg"] = lambda: pyramid_case(explicit, "avg", "xla")

    def gspmd_case():
        jax.config.update("jax_use_shardy_partitioner", False)
        try:
            return run(ops["align_avg"]("NHWC"), nhwc, boxes, auto, P("d"), P("d"))
        finally:
            jax.config.update("jax_use_shardy_partitioner", True)

    cases["jit_boxes_gspmd"] = gspmd_case

    facts = {}
    for name, case in cases.items():
        try:
            facts[name] = case()
        except Exception as err:  # reported by the test of that case
            facts[name] = {"error": f"{type(err).__name__}: {err}"}
    return facts


if __name__ == "__main__":
    print(json.dumps(_compute_facts()))
    sys.exit(0)


# --------------------------------------------------- the parent: the tests

@pytest.fixture(scope="module")
def facts():
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                        f" --xla_force_host_platform_device_count={DEVICES}").strip()
    child = subprocess.run([sys.executable, os.path.abspath(__file__)], env=env,
                           capture_output=True, text=True, timeout=600)
    assert child.returncode == 0, child.stderr[-4000:]
    return json.loads(child.stdout.strip().splitlines()[-1])


def case(facts, name):
    found = facts[name]
    assert "error" not in found, found["error"]
    return found


def assert_equal_to_one_device(found):
    assert found["value_error"] < 1e-12
    assert found["grad_error"] < 1e-12


BATCH_PARTITIONED = ["jit_boxes_align_avg_nchw", "jit_boxes_align_max_nhwc",
                     "jit_boxes_pool_nchw", "jit_boxes_gspmd", "jit_boxes_rotated_nhwc",
                     "jit_boxes_ps_align_nchw", "jit_boxes_ps_pool_nhwc",
                     "jit_boxes_prroi_nhwc"]


@pytest.mark.parametrize("name", BATCH_PARTITIONED)
def test_jit_with_boxes_sharded_along_images_is_partitioned(facts, name):
    found = case(facts, name)
    # one kernel per device on its own images, no communication
    assert found["forward"] == {"collectives": [], "kernels": 1}
    assert found["backward"]["collectives"] == []
    assert found["backward"]["kernels"] == 2  # the forward's argmax or values, the backward
    out_shape = found["out_shard_shape"]
    assert out_shape[:2] == [N // DEVICES, L]
    assert found["grad_shard_shape"][0] == N // DEVICES
    assert_equal_to_one_device(found)


@pytest.mark.parametrize("name", ["jit_pyramid_avg_explicit", "jit_pyramid_max_auto"])
def test_jit_pyramid_with_images_sharded_is_partitioned(facts, name):
    found = case(facts, name)
    assert found["levels_used"] == 3
    # one pyramid kernel per device, forward and backward, no communication
    assert found["forward"] == {"collectives": [], "kernels": 1}
    assert found["backward"] == {"collectives": [], "kernels": 2}
    assert found["out_shard_shape"] == [N // DEVICES, 6, 2, 3, C]
    assert [shape[0] for shape in found["grad_shard_shapes"]] == [N // DEVICES] * 3
    assert_equal_to_one_device(found)


@pytest.mark.parametrize("name", ["jit_rois_sharded", "jit_channels_sharded",
                                  "jit_features_sharded_rois_k5"])
def test_jit_patterns_computed_whole_are_still_right(facts, name):
    assert_equal_to_one_device(case(facts, name))


def test_jit_gradient_has_the_features_sharding(facts):
    # with explicit axes the gradient's type is the features' (channels split)
    assert case(facts, "jit_channels_sharded")["grad_shard_shape"] == [N, H, W, C // DEVICES]


def test_only_per_image_boxes_are_marked_batch_partitionable(facts):
    # 3 calls: the forward, and the forward and backward inside grad
    assert case(facts, "lowered_boxes") == {"calls": 3, "num_batch_dims": 3,
                                            "sharding_rules": 3}
    # a [K, 5] batch index addresses every image, so no leading-dimension split
    assert case(facts, "lowered_rois") == {"calls": 3, "num_batch_dims": 0,
                                           "sharding_rules": 3}


@pytest.mark.parametrize("name", ["smap_rois_sharded", "smap_rois_sharded_unchecked",
                                  "smap_boxes_sharded", "smap_channels_sharded",
                                  "smap_rotated_rois_sharded", "smap_ps_pool_rois_sharded"])
def test_shard_map_values_and_gradients(facts, name):
    # the gradient of features replicated over devices that hold different
    # ROIs is the sum of the devices' parts: grad_error checks that sum
    found = case(facts, name)
    assert found["forward"]["collectives"] == []
    assert_equal_to_one_device(found)
    if "rois_sharded" in name:  # replicated features: their gradient is summed
        assert found["backward"]["collectives"] == ["all-reduce"]


def test_shard_map_output_shards(facts):
    assert case(facts, "smap_rois_sharded")["out_shard_shape"][0] == K // DEVICES
    assert case(facts, "smap_boxes_sharded")["out_shard_shape"][0] == N // DEVICES
    assert case(facts, "smap_channels_sharded")["out_shard_shape"] == [K, 2, 3, C // DEVICES]


@pytest.mark.parametrize("name", ["smap_vmap_features", "smap_vmap_boxes", "smap_jit",
                                  "vmap_smap_jit"])
def test_vmap_and_jit_inside_shard_map(facts, name):
    found = case(facts, name)
    assert found["forward"]["kernels"] == 1  # vmap stays one call
    assert_equal_to_one_device(found)


@pytest.mark.parametrize("name", ["xla_jit_boxes_align_max", "xla_smap_rois_pool",
                                  "xla_jit_pyramid_avg"])
def test_pure_jax_implementation_shards_alike(facts, name):
    # what TPU and other platforms without a kernel run: no custom call,
    # values and gradients equal to one device's
    found = case(facts, name)
    assert found["forward"]["kernels"] == 0 and found["backward"]["kernels"] == 0
    assert_equal_to_one_device(found)
    if "boxes" in name or "pyramid" in name:
        # per-image boxes are pooled image by image, split with the images:
        # no gathers, only the all-reduce of the sample loops' trip counts
        assert found["forward"]["collectives"] in ([], ["all-reduce"])
        assert found["backward"]["collectives"] in ([], ["all-reduce"])


def test_forward_mode_on_sharded_inputs(facts):
    found = case(facts, "jvp_jit_boxes_align_max")
    # the kernel's argmax, then the tangent read through it: still no communication
    assert found["forward"]["collectives"] == []
    assert found["forward"]["kernels"] == 1
    assert found["out_shard_shape"][:2] == [N // DEVICES, L]
    assert_equal_to_one_device(found)
    assert_equal_to_one_device(case(facts, "jvp_smap_rois_avg"))


@pytest.mark.parametrize("name", ["box_grad_jit_boxes_align_avg", "box_grad_jit_boxes_prroi"])
def test_box_gradient_with_images_sharded_is_partitioned(facts, name):
    found = case(facts, name)
    # per device: the forward and the box derivative on its own images, no communication
    assert found["backward"] == {"collectives": [], "kernels": 2}
    assert found["grad_shard_shape"] == [N // DEVICES, L, 4]
    assert found["grad_scale"] > 0.1  # a derivative that moves, not a zero
    assert found["grad_error"] < 1e-12


def test_box_gradient_in_shard_map_with_rois_sharded(facts):
    found = case(facts, "box_grad_smap_rois_rotated")
    # each device differentiates its own ROIs: nothing to sum across devices
    assert found["backward"]["collectives"] == []
    assert found["grad_shard_shape"] == [K // DEVICES, 6]
    assert found["grad_scale"] > 0.1
    assert found["grad_error"] < 1e-12
