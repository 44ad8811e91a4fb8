"""The benchmark command keeps working: a --quick run writes a complete report."""

import json
import os
import subprocess
import sys

KEEP_FREED_PAGES = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=4294967295"


def without_malloc_settings():
    return {k: v for k, v in os.environ.items()
            if k != "GLIBC_TUNABLES" and not k.startswith(("MALLOC_", "TCMALLOC_"))
            and not (k == "LD_PRELOAD" and "malloc" in v)}


def test_quick_benchmark_writes_its_report(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "jax_roi.bench", "--quick", "--repeats", "1", "--no-torch",
         "--vector-bytes", "16", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path, env=without_malloc_settings())
    assert result.returncode == 0, result.stderr
    assert "box-p2" in result.stdout and "pool-vgg" in result.stdout
    with open(os.path.join(tmp_path, "bench.json")) as f:
        report = json.load(f)
    # the processor and the vector width in use (16 bytes: asked for)
    assert report["processor"] and report["vector_bytes"] == 16
    assert "CPU kernels use 16-byte vectors" in result.stdout
    assert report["allocator"] == "default" and "malloc settings: default" in result.stdout
    assert report["min_seconds"] == 0  # --quick: no rounds past --repeats
    rows = report["results"]
    assert {r["workload"] for r in rows} == {"box-p2", "mask-c4", "pool-vgg", "rot-p2",
                                             "psroi-rfcn", "prroi-atom", "fpn"}
    assert {r["op"] for r in rows} == {"roi_align/avg", "roi_align/max", "roi_pool",
                                       "roi_align_rotated", "ps_roi_align", "ps_roi_pool",
                                       "prroi_pool", "multi_scale_roi_align"}
    assert {r["layout"] for r in rows} == {"NCHW", "NHWC"}
    for row in rows:
        for impl in ("jax_roi", "xla", "floor"):
            assert row[impl]["forward_ms"] > 0 and row[impl]["backward_ms"] > 0
        assert "torchvision" not in row
        # ONNX Runtime's RoiAlign (checked equal to jax_roi's) on the roi_align avg NCHW
        # float32 rows, forward only
        onnx_row = (row["op"] == "roi_align/avg" and row["layout"] == "NCHW"
                    and row["dtype"] == "float32")
        assert ("onnxruntime" in row) == onnx_row
        if onnx_row:
            assert row["onnxruntime"]["forward_ms"] > 0
            assert "backward_ms" not in row["onnxruntime"]


def test_workloads_flag_runs_only_those(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "jax_roi.bench", "--quick", "--repeats", "1", "--no-torch",
         "--workloads", "psroi-rfcn", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
        env={**without_malloc_settings(), "GLIBC_TUNABLES": KEEP_FREED_PAGES})
    assert result.returncode == 0, result.stderr
    with open(os.path.join(tmp_path, "bench.json")) as f:
        report = json.load(f)
    rows = report["results"]
    # the README's malloc setting is named in the report, as it moves the large rows
    assert report["allocator"] == f"GLIBC_TUNABLES={KEEP_FREED_PAGES}"
    assert {r["workload"] for r in rows} == {"psroi-rfcn"}
    assert {r["op"] for r in rows} == {"ps_roi_align", "ps_roi_pool"}
    bad = subprocess.run([sys.executable, "-m", "jax_roi.bench", "--workloads", "nope"],
                         capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert bad.returncode != 0 and "--workloads" in bad.stderr


def test_rounds_call_every_implementation_twice_in_a_row_in_rotating_order():
    from jax_roi.bench import median_ms_in_rounds

    order = []
    calls = {name: (lambda name=name: order.append(name)) for name in ("a", "b", "c")}
    medians = median_ms_in_rounds(calls, repeats=3)
    assert set(medians) == {"a", "b", "c"} and all(ms >= 0 for ms in medians.values())
    # One compiling call each, then rounds that start one name later each time,
    # each name called twice in a row (the second timed).
    assert order == ["a", "b", "c"] + [n for n in "abcbcacab" for _ in range(2)]


def test_rounds_time_the_second_of_each_pair_of_calls(monkeypatch):
    from jax_roi import bench

    # a fake clock that the calls advance: a first call of a pair takes 5 s,
    # the second 1 s, so the medians show which one was timed
    now, calls_made = [0.0], []

    def call():
        calls_made.append(1)
        now[0] += 5.0 if len(calls_made) % 2 == 0 else 1.0

    monkeypatch.setattr(bench.time, "perf_counter", lambda: now[0])
    assert bench.median_ms_in_rounds({"a": call}, repeats=3) == {"a": 1000.0}


def test_allocator_setting_names_only_malloc_settings(monkeypatch):
    from jax_roi.bench import allocator_setting

    for name in set(os.environ) - set(without_malloc_settings()):
        monkeypatch.delenv(name)
    assert allocator_setting() == "default"
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.cpu.hwcaps=-AVX512F:glibc.malloc.mmap_max=0")
    monkeypatch.setenv("LD_PRELOAD", "/a/libfoo.so /b/libjemalloc.so.2")
    monkeypatch.setenv("MALLOC_CONF", "dirty_decay_ms:-1")
    monkeypatch.setenv("TCMALLOC_RELEASE_RATE", "0")
    assert allocator_setting() == ("MALLOC_CONF=dirty_decay_ms:-1, TCMALLOC_RELEASE_RATE=0, "
                                   "GLIBC_TUNABLES=glibc.malloc.mmap_max=0, "
                                   "LD_PRELOAD=/b/libjemalloc.so.2")


def test_rounds_go_on_until_they_have_taken_min_seconds(monkeypatch):
    from jax_roi import bench

    # each call takes 1 s of a fake clock: a round of one name is 2 s
    now, made = [0.0], []

    def call():
        made.append(1)
        now[0] += 1.0

    monkeypatch.setattr(bench.time, "perf_counter", lambda: now[0])
    bench.median_ms_in_rounds({"a": call}, repeats=3, min_seconds=9.0)
    assert len(made) == 1 + 2 * 5  # the compiling call, then 5 rounds (10 s >= 9 s)
    made.clear()
    bench.median_ms_in_rounds({"a": call}, repeats=3, min_seconds=1e9)
    assert len(made) == 1 + 2 * bench.MAX_ROUNDS
