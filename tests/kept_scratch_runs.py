"""What the tests of scratch kept between calls share (test_kept_scratch.py,
test_reused_scratch.py): a test module's own sequence of calls run in a
child process under a cap, and calls run from many threads at once."""

import os
import subprocess
import sys
import tempfile
import threading

import numpy as np


def run_with_cap(script, cap_mb, timeout):
    """The arrays `script` saves (its `__main__` writes them to the path it
    is given), run with JAX_ROI_CPU_KEPT_SCRATCH_MB set to cap_mb (unset
    where None), outside the repository so that it imports the installed
    package."""
    env = dict(os.environ)
    env.pop("JAX_ROI_CPU_KEPT_SCRATCH_MB", None)
    if cap_mb is not None:
        env["JAX_ROI_CPU_KEPT_SCRATCH_MB"] = str(cap_mb)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "results.npz")
        child = subprocess.run([sys.executable, os.path.abspath(script), path], env=env,
                               capture_output=True, text=True, timeout=timeout, cwd=tmp)
        assert child.returncode == 0, child.stderr[-3000:]
        with np.load(path) as saved:
            return dict(saved)


def mismatches_at_once(calls, repeats):
    """Runs every call (each returning an array or a tuple of arrays)
    `repeats` times, each call in a thread of its own, all at once; returns
    the indices of the calls whose results differed from their first
    result, run alone."""
    expected = [call() for call in calls]
    mismatches = []

    def same(a, b):
        if isinstance(a, tuple):
            return all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
        return np.array_equal(a, b)

    def work(i):
        for _ in range(repeats):
            if not same(calls[i](), expected[i]):
                mismatches.append(i)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return mismatches
