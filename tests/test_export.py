"""Every platform and jax.export: lowering for platforms this machine does
not have (TPU gets the pure-JAX implementation, no jax_roi custom call),
one artifact for CPU, CUDA and TPU, serialized round trips with the kernels
and without them, and the choice of implementation."""

import functools
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen

import jax_roi
import jax_roi.linen as roi_linen
from jax_roi import _ffi

PLATFORMS = ["cpu", "cuda", "tpu"]


def problem(seed=0):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal((2, 12, 14, 4)), jnp.float32)
    x1, y1 = rng.uniform(0, 40, (2, 6))
    rois = np.stack([np.arange(6) % 2, x1, y1, x1 + rng.uniform(2, 30, 6),
                     y1 + rng.uniform(2, 30, 6)], axis=1)
    return x, jnp.asarray(rois, jnp.float32)


def pooled_loss(x, rois, implementation=None):
    """roi_align (avg and max) and roi_pool, with the features' gradient."""
    def pooled(f):
        a = jax_roi.roi_align(f, rois, 3, 0.5, -1, True, layout="NHWC",
                              implementation=implementation)
        m = jax_roi.roi_align(f, rois, 2, 0.5, 2, mode="max", layout="NHWC",
                              implementation=implementation)
        p = jax_roi.roi_pool(f, rois, 2, 0.5, layout="NHWC", implementation=implementation)
        return jnp.sum(a ** 2) + jnp.sum(m ** 2) + jnp.sum(p ** 2)
    value, grad = jax.value_and_grad(pooled)(x)
    return value, grad, jax.jvp(pooled, (x,), (jnp.ones_like(x),))[1]


def jax_roi_targets(text):
    """The jax_roi custom-call targets a StableHLO module calls."""
    return set(re.findall(r'custom_call @(jax_roi\w+)', text))


def test_tpu_lowering_has_no_jax_roi_custom_call():
    x, rois = problem()
    text = jax.jit(pooled_loss).trace(x, rois).lower(lowering_platforms=("tpu",)).as_text()
    assert jax_roi_targets(text) == set()
    assert "custom_call" not in text
    # the same function lowered for the CPU runs the kernels, forward and backward
    cpu = jax.jit(pooled_loss).trace(x, rois).lower(lowering_platforms=("cpu",)).as_text()
    assert {_ffi.target("align_avg_forward"), _ffi.target("align_avg_backward"),
            _ffi.target("pool_backward")} <= jax_roi_targets(cpu)


def test_pyramid_lowers_for_tpu_without_custom_calls():
    rng = np.random.default_rng(1)
    maps = [jnp.asarray(rng.standard_normal((1, 16 // 2**i, 16 // 2**i, 3)), jnp.float32)
            for i in range(2)]
    boxes = jnp.asarray([[[1.0, 2.0, 9.0, 12.0], [0.0, 0.0, 60.0, 60.0]]])
    pool = roi_linen.MultiScaleRoIAlign(2, (1 / 2, 1 / 4), canonical_scale=16)
    fn = lambda ms: jax.grad(lambda ms: jnp.sum(pool.apply({}, ms, boxes) ** 2))(ms)
    text = jax.jit(fn).trace(maps).lower(lowering_platforms=("tpu",)).as_text()
    assert "custom_call" not in text


def test_one_export_for_cpu_cuda_and_tpu_round_trips():
    x, rois = problem(2)
    exported = jax.export.export(jax.jit(pooled_loss), platforms=PLATFORMS,
                                 disabled_checks=jax_roi.export_disabled_checks())(x, rois)
    assert tuple(exported.platforms) == tuple(PLATFORMS)
    restored = jax.export.deserialize(exported.serialize())
    for got, want in zip(restored.call(x, rois), pooled_loss(x, rois)):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_kernel_export_needs_the_disabled_checks_jax_roi_offers():
    x, rois = problem(3)
    fn = jax.jit(lambda f, r: jax_roi.roi_align(f, r, 2, 0.5, layout="NHWC"))
    with pytest.raises(ValueError, match="custom calls whose targets have no compatibility"):
        jax.export.export(fn, platforms=["cpu"])(x, rois)
    checks = jax_roi.export_disabled_checks()
    assert all(c.is_custom_call() for c in checks)
    names = {str(c).removeprefix("custom_call:") for c in checks}
    # every target name carries the handlers' ABI version
    assert all(name.startswith(f"jax_roi_v{_ffi._jax_roi_cpu.abi_version}_") for name in names)
    exported = jax.export.export(fn, platforms=["cpu"], disabled_checks=checks)(x, rois)
    assert jax_roi_targets(exported.mlir_module()) == {_ffi.target("align_avg_forward")}
    restored = jax.export.deserialize(exported.serialize())
    np.testing.assert_allclose(restored.call(x, rois), fn(x, rois), rtol=1e-6, atol=1e-6)


def test_pure_jax_export_is_portable_and_needs_no_checks():
    x, rois = problem(4)
    fn = jax.jit(functools.partial(pooled_loss, implementation="xla"))
    exported = jax.export.export(fn, platforms=PLATFORMS)(x, rois)
    assert "custom_call" not in exported.mlir_module()
    restored = jax.export.deserialize(exported.serialize())
    for got, want in zip(restored.call(x, rois), pooled_loss(x, rois)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


class Head(linen.Module):
    """A Flax model: a convolution, RoIAlign and a dense layer."""
    implementation: str = None

    @linen.compact
    def __call__(self, images, rois):
        features = linen.Conv(4, (3, 3))(images)
        pooled = roi_linen.RoIAlign(3, 0.5, 2, True, implementation=self.implementation)(
            features, rois)
        return linen.Dense(5)(pooled.reshape(pooled.shape[0], -1))


@pytest.mark.parametrize("implementation", [None, "xla"], ids=["kernel", "pure_jax"])
def test_flax_model_apply_exports(implementation):
    x, rois = problem(5)
    model = Head(implementation=implementation)
    params = model.init(jax.random.key(0), x, rois)
    checks = jax_roi.export_disabled_checks() if implementation is None else ()
    exported = jax.export.export(jax.jit(model.apply), platforms=["cpu"],
                                 disabled_checks=checks)(params, x, rois)
    restored = jax.export.deserialize(exported.serialize())
    np.testing.assert_allclose(restored.call(params, x, rois), model.apply(params, x, rois),
                               rtol=1e-5, atol=1e-5)


def test_kernel_implementation_on_a_platform_without_kernels_fails_clearly(monkeypatch):
    x, rois = problem(6)
    fn = lambda f, r: jax_roi.roi_align(f, r, 2, 0.5, layout="NHWC", implementation="kernel")
    with pytest.raises(ValueError, match="implementation='kernel'.*none for tpu"):
        jax.jit(fn).trace(x, rois).lower(lowering_platforms=("tpu",))
    # at trace time when the default backend has none
    monkeypatch.setattr(_ffi, "KERNEL_PLATFORMS", ("cuda",))
    with pytest.raises(ValueError, match="no compiled kernels for the cpu backend"):
        fn(x, rois)


@pytest.mark.parametrize("bad", ["tpu", "XLA", True, 1])
def test_implementation_argument_is_checked(bad):
    x, rois = problem(7)
    with pytest.raises(ValueError, match="implementation must be None"):
        jax_roi.roi_pool(x, rois, 2, implementation=bad)


def test_pure_jax_memory_stays_near_output_and_features():
    # a huge box and adaptive grids: no per-sample copies of the map
    rng = np.random.default_rng(8)
    x = jnp.asarray(rng.standard_normal((1, 64, 64, 32)), jnp.float32)
    rois = jnp.asarray([[0, -1e6, -1e6, 1e6, 1e6], [0, 0, 0, 63, 63], [0, 5, 5, 40, 50]] * 20,
                       jnp.float32)
    for mode in ("avg", "max"):
        fn = lambda f: jax_roi.roi_align(f, rois, 7, 1.0, -1, True, mode=mode, layout="NHWC",
                                         implementation="xla")
        out_bytes = 60 * 7 * 7 * 32 * 4
        for compiled in (jax.jit(fn).lower(x).compile(),
                         jax.jit(jax.grad(lambda f: jnp.sum(fn(f)))).lower(x).compile()):
            temp = compiled.memory_analysis().temp_size_in_bytes
            assert temp <= 8 * (out_bytes + x.size * 4), (mode, temp)
        # float32 positions near 1e6 round differently where the kernels fuse
        # multiply-adds: compare the boxes of ordinary size
        kernel = jax_roi.roi_align(x, rois, 7, 1.0, -1, True, mode=mode, layout="NHWC")
        ordinary = np.arange(60) % 3 != 0
        np.testing.assert_allclose(fn(x)[ordinary], kernel[ordinary], rtol=1e-4, atol=1e-4)


def test_portable_artifact_runs_without_jax_roi(tmp_path):
    x, rois = problem(9)
    fn = jax.jit(functools.partial(pooled_loss, implementation="xla"))
    (tmp_path / "f.bin").write_bytes(
        jax.export.export(fn, platforms=PLATFORMS)(x, rois).serialize())
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "rois.npy", rois)
    np.save(tmp_path / "want.npy", np.asarray(fn(x, rois)[1]))
    child = subprocess.run([sys.executable, "-c", f"""
import sys, jax, numpy as np
from jax import export
exp = export.deserialize(open({str(tmp_path / "f.bin")!r}, "rb").read())
_, grad, _ = exp.call(np.load({str(tmp_path / "x.npy")!r}), np.load({str(tmp_path / "rois.npy")!r}))
assert "jax_roi" not in sys.modules
np.testing.assert_allclose(grad, np.load({str(tmp_path / "want.npy")!r}), rtol=1e-5, atol=1e-5)
"""], capture_output=True, text=True, timeout=300)
    assert child.returncode == 0, child.stderr[-3000:]
