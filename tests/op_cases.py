"""Cases and checks shared by the test modules of the newer ops
(test_rotated.py, test_position_sensitive.py): dtypes and their tolerances,
seeded generators, closeness to a float64 reference, and sweeps that run every
case on the kernels and some also on the pure-JAX implementation."""

import zlib

import jax.numpy as jnp
import numpy as np
import pytest

F64, F32 = np.dtype(np.float64), np.dtype(np.float32)
BF16, F16 = np.dtype(jnp.bfloat16), np.dtype(np.float16)
DTYPES = [F64, F32, BF16, F16]
# relative tolerance per feature dtype; the absolute one is the same scaled by
# the largest expected magnitude
TOL = {F64: 1e-12, F32: 1e-5, BF16: 1e-2, F16: 2e-3}


# For a test whose subject is a path of the CPU kernels (thread splits,
# register blocks, channels-last copies, merged samples): it runs on the
# kernels alone, as the pure-JAX implementation has none of these paths and
# recompiling it for every such case took minutes.
kernels_only = pytest.mark.parametrize("both_implementations", [None], ids=["kernel"],
                                       indirect=True)


def _rng(*key):
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def _geom(dtype):
    return np.float64 if dtype == F64 else np.float32


def _close(actual, expected, dtype):
    actual = np.asarray(jnp.asarray(actual).astype(jnp.float64))
    assert actual.shape == expected.shape
    scale = max(1.0, float(np.abs(expected).max(initial=0)))
    np.testing.assert_allclose(actual, expected, rtol=TOL[dtype], atol=TOL[dtype] * scale)


def _sweep_params(cases, pure_jax):
    params = []
    for case in cases:
        case = case if isinstance(case, tuple) else (case,)
        label = "-".join(map(str, case))
        params.append(pytest.param(*case, None, id=label + "-kernel"))
        if case in pure_jax:
            params.append(pytest.param(*case, "xla", id=label + "-pure_jax"))
    return params


def sweep(names, cases, pure_jax):
    """Parameters `names` + ",implementation": every case on the kernels
    (implementation None), the cases in `pure_jax` also on pure JAX ("xla")."""
    return pytest.mark.parametrize(names + ",implementation", _sweep_params(cases, pure_jax))


def sweep_both_implementations(names, cases, pure_jax):
    """sweep for a test that takes its implementation through the
    both_implementations fixture (conftest.py) instead of an argument."""
    return pytest.mark.parametrize(names + ",both_implementations",
                                   _sweep_params(cases, pure_jax),
                                   indirect=["both_implementations"])

