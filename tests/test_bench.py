"""The benchmark command keeps working: a --quick run writes a complete report."""

import json
import math
import os
import subprocess
import sys

import pytest

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
    # the system's huge page modes, which set what a fresh result costs
    from jax_roi.bench import huge_page_setting
    assert report["huge_pages"] == huge_page_setting()
    assert f"transparent huge pages: {report['huge_pages']}" in result.stdout
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
    medians = median_ms_in_rounds(calls, repeats=3, warm_ms=0)
    assert set(medians) == {"a", "b", "c"} and all(ms >= 0 for ms in medians.values())
    # One compiling call each, then rounds that start one name later each time,
    # each name called twice in a row (the second timed).
    assert order == ["a", "b", "c"] + [n for n in "abcbcacab" for _ in range(2)]


def clocked_call(monkeypatch, seconds):
    """A call that advances a fake bench clock by seconds(n) on its n-th call
    (from 1), and the list of calls made."""
    from jax_roi import bench

    now, made = [0.0], []

    def call():
        made.append(1)
        now[0] += seconds(len(made))

    monkeypatch.setattr(bench.time, "perf_counter", lambda: now[0])
    return call, made


def test_rounds_time_the_second_of_each_pair_of_calls(monkeypatch):
    from jax_roi import bench

    # after the compiling call, a pair's first call takes 5 s and its second
    # 1 s, so the median shows which one was timed
    call, _ = clocked_call(monkeypatch, lambda n: 5.0 if n % 2 == 0 else 1.0)
    assert bench.median_ms_in_rounds({"a": call}, repeats=3) == {"a": 1000.0}


def test_rounds_warm_each_implementation_for_warm_ms_before_timing_it(monkeypatch):
    from jax_roi import bench

    # 1 s a call: 2.5 s of warming takes three untimed calls, then one timed
    call, made = clocked_call(monkeypatch, lambda n: 1.0)
    bench.median_ms_in_rounds({"a": call}, repeats=2, warm_ms=2500.0)
    assert len(made) == 1 + 2 * (3 + 1)
    # a call longer than warm_ms is warmed by one call, as with warm_ms=0
    made.clear()
    bench.median_ms_in_rounds({"a": call}, repeats=2, warm_ms=500.0)
    assert len(made) == 1 + 2 * (1 + 1)
    # the default warms a millisecond call (2**-10 s: exact sums) with several
    call, made = clocked_call(monkeypatch, lambda n: 2.0 ** -10)
    bench.median_ms_in_rounds({"a": call}, repeats=1)
    warming = math.ceil(bench.DEFAULT_WARM_MS / 1e3 * 2 ** 10)
    assert warming > 1 and len(made) == 1 + warming + 1


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

    call, made = clocked_call(monkeypatch, lambda n: 1.0)  # a round of one name: 2 s
    bench.median_ms_in_rounds({"a": call}, repeats=3, min_seconds=9.0)
    assert len(made) == 1 + 2 * 5  # the compiling call, then 5 rounds (10 s >= 9 s)
    made.clear()
    bench.median_ms_in_rounds({"a": call}, repeats=3, min_seconds=1e9)
    assert len(made) == 1 + 2 * bench.MAX_ROUNDS


def test_repeats_are_a_floor_even_past_min_seconds(monkeypatch):
    from jax_roi import bench

    call, made = clocked_call(monkeypatch, lambda n: 1.0)
    bench.median_ms_in_rounds({"a": call}, repeats=3, min_seconds=1.0)
    assert len(made) == 1 + 2 * 3


def test_cold_rounds_call_each_implementation_once():
    from jax_roi.bench import median_ms_in_rounds

    order = []
    calls = {name: (lambda name=name: order.append(name)) for name in ("a", "b")}
    median_ms_in_rounds(calls, repeats=2, cold=True)
    assert order == ["a", "b", "a", "b", "b", "a"]


def test_main_passes_the_timing_options_on_and_reports_them(monkeypatch, tmp_path, capsys):
    from jax_roi import bench

    seen = []
    monkeypatch.setattr(bench, "run", lambda quick, repeats, with_torch, **kw:
                        seen.append((quick, repeats, kw["min_seconds"], kw["cold"],
                                     kw["warm_ms"])) or [])
    monkeypatch.setattr(bench, "plot", lambda results, path: False)
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")  # main sets it when unset
    common = ["--no-torch", "--no-onnxruntime", "--out", str(tmp_path)]
    bench.main(common + ["--repeats", "4"])
    assert seen[-1] == (False, 4, bench.DEFAULT_MIN_SECONDS, False, bench.DEFAULT_WARM_MS)
    assert (f"hot, each call right after untimed calls of its own for "
            f"{bench.DEFAULT_WARM_MS:g} ms") in capsys.readouterr().out
    bench.main(common + ["--warm-ms", "0"])
    assert seen[-1][-1] == 0.0
    with open(os.path.join(tmp_path, "bench.json")) as f:
        assert json.load(f)["warm_ms"] == 0.0
    bench.main(common + ["--quick", "--min-seconds", "3", "--cold"])
    assert seen[-1][:4] == (True, bench.DEFAULT_REPEATS, 3.0, True)
    with open(os.path.join(tmp_path, "bench.json")) as f:
        report = json.load(f)
    assert report["cold"] is True and report["min_seconds"] == 3.0
    assert "cold, each call right after another implementation's" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit:
        bench.main(common + ["--repeats", "0"])
    assert exit.value.code != 0
    assert "--repeats" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit:
        bench.main(common + ["--warm-ms", "-1"])
    assert exit.value.code != 0
    assert "--warm-ms" in capsys.readouterr().err


def test_huge_page_setting_names_the_chosen_modes(tmp_path):
    from jax_roi.bench import huge_page_setting
    (tmp_path / "enabled").write_text("always [madvise] never\n")
    (tmp_path / "defrag").write_text("always defer [defer+madvise] madvise never\n")
    assert huge_page_setting(str(tmp_path)) == "enabled=madvise, defrag=defer+madvise"
    (tmp_path / "defrag").unlink()
    assert huge_page_setting(str(tmp_path)) == "enabled=madvise"
    # a system without them (another OS, or a kernel built without them)
    assert huge_page_setting(str(tmp_path / "absent")) == "unknown"
