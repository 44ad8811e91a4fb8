import atexit
import functools
import os
import shutil
import sys
import tempfile

# Compiling dominates the suite's time, and many programs recur: in other
# modules (each drops its programs when it ends), in pytest-xdist's other
# worker, and in the subprocesses of test_vector_widths.py and others. One
# persistent cache for the whole run, made before jax is imported so that
# workers and subprocesses inherit it through the environment.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache_dir = tempfile.mkdtemp(prefix="jax_roi_tests_cache_")
    atexit.register(shutil.rmtree, _cache_dir, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache_dir
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"

# The kernels stream results of 8 MB or more past the cache on every machine
# the tests run on (by default 16 MB where the L3 cache holds 32 MB or more):
# test_large_results.py sizes its arrays for 8 MB. Read at the first call.
os.environ.setdefault("JAX_ROI_CPU_STREAM_MB", "8")

import jax  # noqa: E402
import pytest  # noqa: E402

# float64 cases need x64 before any array is created
jax.config.update("jax_enable_x64", True)

# lets test modules import numpy_reference under any pytest import mode
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(params=[None, "xla"], ids=["kernel", "pure_jax"])
def both_implementations(request, monkeypatch):
    """Runs a test through the kernels and through the pure-JAX implementation
    that platforms without a kernel run: the public functions it calls get
    that `implementation`. Use with pytest.mark.usefixtures."""
    import jax_roi
    for name in ("roi_align", "roi_pool", "multi_scale_roi_align", "roi_align_rotated",
                 "ps_roi_align", "ps_roi_pool", "prroi_pool"):
        monkeypatch.setattr(jax_roi, name, functools.partial(getattr(jax_roi, name),
                                                             implementation=request.param))
    return request.param


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drops each module's compiled programs when it ends. Every program
    holds memory mappings of its code, and a process may have at most
    vm.max_map_count (65530 by default) of them: the whole suite in one
    process ran out, and XLA crashed compiling the next program."""
    yield
    jax.clear_caches()
