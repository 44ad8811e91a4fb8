"""The CPU kernels pick their vector width at run time (64, 32 or 16 bytes).
The value tests run at this machine's width; here a subset runs again with
the wider vectors hidden, so every width's kernels are checked here. Only
the kernels' cases run again: the pure-JAX implementation has no width. The
subprocesses run in one process each (-n 0), beside the suite's workers,
and find most programs in the suite's compilation cache (conftest.py)."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

import jax_roi
import width_bits_cases
from jax_roi import _jax_roi_cpu

HERE = pathlib.Path(__file__).parent

SUBSET = ("(many_rois or channel_blocks or channels_last_copy or crowded or dtypes or "
          "share_pixels) and not pure_jax")


def _run(code_or_args, width):
    env = dict(os.environ, JAX_ROI_CPU_VECTOR_BYTES=str(width))
    return subprocess.run([sys.executable, *code_or_args], env=env, capture_output=True,
                          text=True, cwd=HERE)


def _assert_tests_pass(test_file, subset, width):
    result = _run(["-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider", test_file,
                   "-k", subset], width)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout


@pytest.mark.parametrize("width", [16, 32])
def test_value_tests_pass_at_narrower_widths(width):
    probe = _run(["-c", "from jax_roi import _jax_roi_cpu; print(_jax_roi_cpu.vector_bytes())"],
                 width)
    assert probe.returncode == 0, probe.stderr
    assert int(probe.stdout) == min(width, _jax_roi_cpu.vector_bytes())
    _assert_tests_pass("test_values.py", SUBSET, width)


# The position-sensitive kernels' own vector paths (tiles, windows).
PS_SUBSET = "(bitwise or wide_map or many_rois) and not pure_jax"


@pytest.mark.parametrize("width", [16, 32])
def test_position_sensitive_tests_pass_at_narrower_widths(width):
    _assert_tests_pass("test_position_sensitive.py", PS_SUBSET, width)


def _digests(width):
    result = _run(["width_bits_cases.py"], width)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


def test_every_width_gives_the_same_bits():
    # The module is compiled without contracting multiplies and adds into
    # fused multiply-adds (CMakeLists.txt): the AVX2 and AVX-512 code had FMAs
    # and the baseline none, and GCC placed them per ISA. And the box
    # derivatives' dot product keeps the same partial sums at every width.
    # Where this machine has no AVX-512, the widths compared are 16 and 32.
    native = _jax_roi_cpu.vector_bytes()
    widths = sorted({16, 32, native})
    digests = {width: _digests(width) for width in widths}
    reference = digests[native]
    assert len(reference) == 11 * 4 * 2 * 4  # ops, dtypes, layouts, results
    for width in widths:
        differing = sorted(k for k in reference if digests[width][k] != reference[k])
        assert not differing, f"{width}-byte vectors differ from {native}: {differing[:8]}"


def test_width_cases_use_both_pyramid_levels():
    rois = width_bits_cases.boxes()
    levels = np.asarray(jax_roi.level_indices(width_bits_cases.pyramid_boxes(rois),
                                              width_bits_cases.SCALES,
                                              width_bits_cases.CANONICAL_SCALE))
    assert set(levels.ravel().tolist()) == {0, 1}
