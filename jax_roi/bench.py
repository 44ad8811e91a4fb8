"""Benchmark: jax_roi's kernels against its pure-JAX implementation
(implementation="xla", what platforms without a kernel run) and, when
installed, torchvision's CPU ops (roi_align, roi_pool, ps_roi_align,
ps_roi_pool, MultiScaleRoIAlign) and ONNX Runtime's RoiAlign (forward, NCHW),
in one run. The backward pass is the gradient with respect to the features,
and for prroi-atom with respect to the features and the boxes.

    python -m jax_roi.bench                     # the workloads of the benchmark spec
    python -m jax_roi.bench --quick             # reduced sizes, a row per op: seconds
    python -m jax_roi.bench --vector-bytes 32   # the AVX2 kernels on an AVX-512 machine
    python -m jax_roi.bench --workloads rot-p2,psroi-rfcn   # some workloads only

Prints one table (the median time of a call made right after a call of the
same implementation, and the ratio baseline time / jax_roi time, so higher is
better), writes the results as JSON and, when matplotlib is installed, a bar
chart PNG.
"""

import argparse
import json
import os
import platform
import re
import statistics
import time
from dataclasses import asdict, dataclass

import jax
import jax.numpy as jnp
import numpy as np

import jax_roi


@dataclass(frozen=True)
class Workload:
    name: str
    op: str  # "align", "pool", "rotated", "ps_align", "ps_pool", "prroi" or "pyramid"
    n: int
    c: int
    h: int
    w: int
    k: int
    output: int
    spatial_scale: float
    sampling_ratio: int = 0
    aligned: bool = False


WORKLOADS = (
    Workload("box-p2", "align", 2, 256, 200, 272, 1000, 7, 1 / 4, 2, True),
    Workload("mask-c4", "align", 2, 256, 50, 68, 1000, 14, 1 / 16, 2, True),
    Workload("pool-vgg", "pool", 2, 512, 38, 50, 512, 7, 1 / 16),
    Workload("rot-p2", "rotated", 2, 256, 256, 256, 1000, 7, 1 / 4, 2, True),
    Workload("psroi-rfcn", "ps_align", 1, 1029, 38, 63, 300, 7, 1 / 16, 2, True),
    Workload("psroi-rfcn", "ps_pool", 1, 1029, 38, 63, 300, 7, 1 / 16),
    Workload("prroi-atom", "prroi", 64, 256, 18, 18, 1024, 5, 1 / 16),
    # P2 to P5: the finest map is h x w at spatial_scale, each next one half as large
    Workload("fpn", "pyramid", 2, 256, 200, 272, 1000, 7, 1 / 4, 2, False),
)
PYRAMID_LEVELS = 4

OP_NAMES = {"pool": "roi_pool", "rotated": "roi_align_rotated", "ps_align": "ps_roi_align",
            "ps_pool": "ps_roi_pool", "prroi": "prroi_pool", "pyramid": "multi_scale_roi_align"}
POSITION_SENSITIVE = ("ps_align", "ps_pool")
# Workloads whose backward differentiates the boxes too (IoU-Net, ATOM).
BOX_GRADIENT = ("prroi",)


def quick(w):
    """A reduced copy of a workload that runs in a fraction of a second."""
    channels = w.output * w.output * 2 if w.op in POSITION_SENSITIVE else 16
    return Workload(w.name, w.op, w.n, channels, max(w.h // 4, 8), max(w.w // 4, 8), 64,
                    w.output, w.spatial_scale, w.sampling_ratio, w.aligned)


def pyramid_scales(w):
    return tuple(w.spatial_scale / 2 ** i for i in range(PYRAMID_LEVELS))


def make_pyramid_inputs(w, layout, dtype):
    """fpn: maps P2-P5 and [N, L, 4] boxes whose sides are log-uniform in 16-600 px."""
    rng = np.random.default_rng(0)
    img_w, img_h = w.w / w.spatial_scale, w.h / w.spatial_scale
    per_image = w.k // w.n
    bw, bh = np.exp(rng.uniform(np.log(16), np.log(600), (2, w.n, per_image)))
    x1 = rng.uniform(0, 1, (w.n, per_image)) * np.maximum(img_w - bw, 0)
    y1 = rng.uniform(0, 1, (w.n, per_image)) * np.maximum(img_h - bh, 0)
    boxes = np.stack([x1, y1, np.minimum(x1 + bw, img_w), np.minimum(y1 + bh, img_h)], -1)
    maps, features_rng = [], np.random.default_rng(1)
    for i in range(PYRAMID_LEVELS):
        x = features_rng.standard_normal((w.n, w.c, w.h >> i, w.w >> i), dtype=np.float32)
        maps.append((x.transpose(0, 2, 3, 1).copy() if layout == "NHWC" else x).astype(dtype))
    return maps, boxes.astype(np.float32)


def make_inputs(w, layout, dtype):
    """The spec's recipe: seeded boxes over the image, standard normal features."""
    if w.op == "pyramid":
        return make_pyramid_inputs(w, layout, dtype)
    rng = np.random.default_rng(0)
    img_w, img_h = w.w / w.spatial_scale, w.h / w.spatial_scale
    x1 = rng.uniform(0, 0.8 * img_w, w.k)
    y1 = rng.uniform(0, 0.8 * img_h, w.k)
    bw = rng.uniform(16, 0.5 * img_w, w.k)
    bh = rng.uniform(16, 0.5 * img_h, w.k)
    b = rng.integers(0, w.n, w.k)
    x2, y2 = np.minimum(x1 + bw, img_w), np.minimum(y1 + bh, img_h)
    if w.op == "rotated":  # the same boxes about their centres, angles in [-90, 90)
        angle = rng.uniform(-90, 90, w.k)
        rois = np.stack([b, (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1, angle], axis=1)
    else:
        rois = np.stack([b, x1, y1, x2, y2], axis=1)
    rois = rois.astype(np.float32)
    features = np.random.default_rng(1).standard_normal((w.n, w.c, w.h, w.w), dtype=np.float32)
    if layout == "NHWC":
        features = features.transpose(0, 2, 3, 1).copy()
    return features.astype(dtype), rois


def op_for(implementation, w, mode, layout):
    kw = dict(layout=layout, implementation=implementation)
    if w.op == "pool":
        return lambda f, r: jax_roi.roi_pool(f, r, w.output, w.spatial_scale, **kw)
    if w.op == "rotated":
        return lambda f, r: jax_roi.roi_align_rotated(f, r, w.output, w.spatial_scale,
                                                      w.sampling_ratio, w.aligned, **kw)
    if w.op == "ps_align":
        return lambda f, r: jax_roi.ps_roi_align(f, r, w.output, w.spatial_scale,
                                                 w.sampling_ratio, **kw)
    if w.op == "ps_pool":
        return lambda f, r: jax_roi.ps_roi_pool(f, r, w.output, w.spatial_scale, **kw)
    if w.op == "prroi":
        return lambda f, r: jax_roi.prroi_pool(f, r, w.output, w.spatial_scale, **kw)
    if w.op == "pyramid":  # torchvision's MultiScaleRoIAlign level rule, as the default
        return lambda f, r: jax_roi.multi_scale_roi_align(
            f, r, w.output, pyramid_scales(w), w.sampling_ratio, w.aligned, **kw)
    return lambda f, r: jax_roi.roi_align(f, r, w.output, w.spatial_scale, w.sampling_ratio,
                                          w.aligned, mode=mode, layout=layout,
                                          implementation=implementation)


def floor_call(out):
    """Writing a fresh array of `out`'s size: the cost no implementation avoids."""
    shape, dtype = out.shape, out.dtype
    fresh = jax.jit(lambda: jnp.full(shape, 1, dtype))
    return lambda: fresh().block_until_ready()


def processor_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def allocator_setting():
    """The malloc settings in this process's environment: they move every large row, since
    each call's result is fresh memory that the system zeroes page by page unless the
    allocator keeps it."""
    settings = [f"{k}={v}" for k, v in sorted(os.environ.items())
                if k.startswith(("MALLOC_", "TCMALLOC_"))]
    tunables = [t for t in os.environ.get("GLIBC_TUNABLES", "").split(":")
                if t.startswith("glibc.malloc.")]
    if tunables:
        settings.append("GLIBC_TUNABLES=" + ":".join(tunables))
    preloads = [p for p in os.environ.get("LD_PRELOAD", "").replace(" ", ":").split(":")
                if "malloc" in os.path.basename(p)]
    if preloads:
        settings.append("LD_PRELOAD=" + ":".join(preloads))
    return ", ".join(settings) or "default"


def huge_page_setting(root="/sys/kernel/mm/transparent_hugepage"):
    """The system's transparent huge page modes. They set what a fresh result costs: XLA's
    own results (the xla and floor columns) get huge pages only where they are `always`
    on, one fault per 2 MiB instead of per 4 KiB; the kernels ask for them on their own
    results either way (the README's speed section has the figures)."""
    modes = []
    for name in ("enabled", "defrag"):
        try:
            with open(os.path.join(root, name)) as f:
                chosen = re.search(r"\[([^\]]+)\]", f.read())
        except OSError:
            continue
        if chosen:
            modes.append(f"{name}={chosen.group(1)}")
    return ", ".join(modes) or "unknown"


def vector_bytes():
    from jax_roi import _jax_roi_cpu
    return _jax_roi_cpu.vector_bytes()


def jax_calls(op, features, rois, box_gradient=False):
    """Forward and backward (the VJP alone, with respect to the features, and
    the boxes too with `box_gradient`) as timed calls, and the forward's temp
    bytes."""
    features, rois = jax.tree.map(jnp.asarray, features), jnp.asarray(rois)
    forward = jax.jit(op)
    out = forward(features, rois)
    cotangent = jnp.ones_like(out)
    if box_gradient:
        _, vjp = jax.vjp(op, features, rois)
    else:
        _, vjp = jax.vjp(lambda f: op(f, rois), features)
    # The VJP's residuals are arguments, as in a training step: closed over,
    # they were constants, and XLA folded the pure-JAX implementation's
    # index arithmetic on them at compile time (pool-vgg's NCHW gradient:
    # 75 ms a call, but over a second of compiling; 113 ms with arguments).
    backward = jax.jit(lambda pullback, cotangent: pullback(cotangent))
    memory = forward.lower(features, rois).compile().memory_analysis()
    calls = {
        "forward": lambda: forward(features, rois).block_until_ready(),
        "backward": lambda: jax.block_until_ready(backward(vjp, cotangent)),
    }
    return calls, {"temp_bytes": getattr(memory, "temp_size_in_bytes", None),
                   "output_bytes": out.size * out.dtype.itemsize}


def torchvision_calls(w, features_nchw, rois):
    import torch
    import torchvision

    torch.set_num_threads(os.cpu_count() or 1)
    if w.op == "pyramid":
        return torchvision_pyramid_calls(w, features_nchw, rois)
    x = torch.from_numpy(np.asarray(features_nchw, np.float32)).requires_grad_()
    r = torch.from_numpy(rois)
    if w.op == "pool":
        op = lambda: torchvision.ops.roi_pool(x, r, w.output, w.spatial_scale)
    elif w.op == "ps_pool":
        op = lambda: torchvision.ops.ps_roi_pool(x, r, w.output, w.spatial_scale)
    elif w.op == "ps_align":
        op = lambda: torchvision.ops.ps_roi_align(x, r, w.output, w.spatial_scale,
                                                  w.sampling_ratio)
    else:
        op = lambda: torchvision.ops.roi_align(x, r, w.output, w.spatial_scale,
                                               w.sampling_ratio, w.aligned)
    return torch_calls(op, [x])


def torch_calls(op, inputs):
    """A torch op's forward (without autograd) and backward (the gradient of
    `inputs` for a cotangent of ones) as timed calls."""
    import torch

    out = op()
    cotangent = torch.ones_like(out)

    def forward():
        with torch.no_grad():
            op()

    def backward():
        for x in inputs:
            x.grad = None
        out.backward(cotangent, retain_graph=True)

    return {"forward": forward, "backward": backward}


def torchvision_pyramid_calls(w, maps_nchw, boxes):
    """torchvision.ops.MultiScaleRoIAlign over the same maps and boxes."""
    from collections import OrderedDict

    import torch
    import torchvision

    names = [f"p{i + 2}" for i in range(len(maps_nchw))]
    maps = OrderedDict((n, torch.from_numpy(np.asarray(m, np.float32)).requires_grad_())
                       for n, m in zip(names, maps_nchw))
    pooler = torchvision.ops.MultiScaleRoIAlign(names, w.output, w.sampling_ratio)
    image_size = (round(w.h / w.spatial_scale), round(w.w / w.spatial_scale))
    box_list = [torch.from_numpy(b) for b in boxes]
    op = lambda: pooler(maps, box_list, [image_size] * len(box_list))
    return torch_calls(op, list(maps.values()))


def onnxruntime_available():
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except Exception:
        return False
    return True


def onnxruntime_forward(w, features_nchw, rois):
    """ONNX Runtime's RoiAlign (opset 16, CPU, every core), forward only."""
    import onnx
    import onnxruntime
    from onnx import TensorProto, helper

    node = helper.make_node(
        "RoiAlign", ["x", "rois", "batch"], ["y"], mode="avg", output_height=w.output,
        output_width=w.output, sampling_ratio=w.sampling_ratio, spatial_scale=w.spatial_scale,
        coordinate_transformation_mode="half_pixel" if w.aligned else "output_half_pixel")
    graph = helper.make_graph(
        [node], "roi_align",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, features_nchw.shape),
         helper.make_tensor_value_info("rois", TensorProto.FLOAT, (rois.shape[0], 4)),
         helper.make_tensor_value_info("batch", TensorProto.INT64, (rois.shape[0],))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT,
                                       (rois.shape[0], features_nchw.shape[1], w.output,
                                        w.output))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 16)])
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = os.cpu_count() or 1
    # Its threads would otherwise spin for work after each run and take the
    # cores from whichever call runs next.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = onnxruntime.InferenceSession(model.SerializeToString(), options,
                                           providers=["CPUExecutionProvider"])
    inputs = {"x": np.asarray(features_nchw, np.float32),
              "rois": np.ascontiguousarray(rois[:, 1:], np.float32),
              "batch": rois[:, 0].astype(np.int64)}
    onnx.checker.check_model(model)
    return lambda: session.run(None, inputs)[0]


DEFAULT_REPEATS = 9
# Rounds go on past the repeats until they have taken this long, so the
# medians of millisecond calls rest on more than 9 samples each.
DEFAULT_MIN_SECONDS = 2.0
MAX_ROUNDS = 200
# Hot timing warms each implementation with untimed calls of its own for at
# least this long (one call at least) before its timed call. One call of a
# millisecond op did not warm a two-core VM: psroi-rfcn's ps_roi_align NCHW
# forward took 1.4 ms called back to back, 1.9 ms right after one call of
# its own that followed torchvision's, 2.3 ms after 10 ms asleep.
DEFAULT_WARM_MS = 5.0


def min_seconds_or_default(min_seconds, quick_run):
    """`min_seconds`, or when None DEFAULT_MIN_SECONDS (0 for a quick run)."""
    if min_seconds is not None:
        return min_seconds
    return 0.0 if quick_run else DEFAULT_MIN_SECONDS


def median_ms_in_rounds(calls, repeats, min_seconds=0.0, cold=False, warm_ms=DEFAULT_WARM_MS):
    """Median ms of each named call, timed in rounds that call each untimed
    until `warm_ms` have passed (once at least), then time one more call (in
    an order that rotates): `repeats` rounds, and more (up to MAX_ROUNDS)
    until the rounds have taken `min_seconds`. The rounds make a slow spell
    of a shared machine weigh on every implementation alike. The untimed
    calls before each timed one leave caches, pages and cores as repeated
    calls of the same op leave them (hot, a best case for every
    implementation alike); timed right after another implementation's call
    (`cold`: one call each, as before 0.4.8), a call also paid for waking
    idle cores and refetching what that call evicted, and how much depended
    on which call it followed."""
    for call in calls.values():
        call()  # compiles
    names = list(calls)
    times = {name: [] for name in names}
    began = time.perf_counter()
    r = 0
    while r < repeats or (time.perf_counter() - began < min_seconds and r < MAX_ROUNDS):
        for name in names[r % len(names):] + names[:r % len(names)]:
            if not cold:
                warm_until = time.perf_counter() + warm_ms / 1e3
                calls[name]()
                while time.perf_counter() < warm_until:
                    calls[name]()
            start = time.perf_counter()
            calls[name]()
            times[name].append(time.perf_counter() - start)
        r += 1
    return {name: 1e3 * statistics.median(t) for name, t in times.items()}


def torchvision_available():
    try:
        import torch  # noqa: F401
        import torchvision  # noqa: F401
    except Exception:  # a missing or broken install alike
        return False
    return True


def cases(quick_run, names=None):
    """(workload, mode, layout, dtype) rows of the table, of the workloads
    called `names` (all when None)."""
    quick_count = 0
    for base in WORKLOADS:
        if names and base.name not in names:
            continue
        w = quick(base) if quick_run else base
        modes = ("avg", "max") if w.op == "align" else ("avg",)
        for mode in modes:
            rows = [("NCHW", "float32"), ("NHWC", "float32")]
            if mode == "avg":
                rows.append(("NHWC", "bfloat16"))
            if quick_run:
                # one row per op, the next of its rows each time: across the
                # run every layout and dtype, in a tenth of the compiles
                rows = [rows[quick_count % len(rows)]]
                quick_count += 1
            for layout, dtype in rows:
                yield w, mode, layout, dtype


def fresh_result(features):
    """The shape and dtype of a feature gradient (all maps of a pyramid, as one array)."""
    leaves = jax.tree.leaves(features)
    return jax.ShapeDtypeStruct((sum(np.size(x) for x in leaves),), leaves[0].dtype)


def run(quick_run=False, repeats=DEFAULT_REPEATS, with_torch=True, log=print, names=None,
        with_onnxruntime=True, min_seconds=None, cold=False, warm_ms=DEFAULT_WARM_MS):
    """The table's rows (`min_seconds`: see min_seconds_or_default)."""
    min_seconds = min_seconds_or_default(min_seconds, quick_run)
    results = []
    for w, mode, layout, dtype in cases(quick_run, names):
        features, rois = make_inputs(w, layout, jnp.dtype(dtype))
        row = {"workload": w.name, "op": OP_NAMES.get(w.op, f"roi_align/{mode}"),
               "layout": layout, "dtype": dtype, "shape": asdict(w)}
        calls, memory = {}, {}
        for name, implementation in (("jax_roi", "kernel"), ("xla", "xla")):
            calls[name], memory[name] = jax_calls(op_for(implementation, w, mode, layout),
                                                  features, rois, w.op in BOX_GRADIENT)
        # the floor: a fresh output forward, a fresh feature gradient backward
        calls["floor"] = {"forward": floor_call(jax.eval_shape(op_for(None, w, mode, layout),
                                                                   features, rois)),
                          "backward": floor_call(fresh_result(features))}
        # torchvision has no max-pooling or rotated roi_align, and no prroi_pool.
        if with_torch and dtype == "float32" and w.op not in ("rotated", "prroi") \
                and not (w.op == "align" and mode == "max"):
            nchw, _ = make_inputs(w, "NCHW", np.float32)
            calls["torchvision"] = torchvision_calls(w, nchw, rois)
        # ONNX Runtime: roi_align avg, NCHW, forward (it has no backward)
        forward_only = {}
        if with_onnxruntime and w.op == "align" and mode == "avg" and layout == "NCHW" \
                and dtype == "float32":
            forward_only["onnxruntime"] = onnxruntime_forward(w, features, rois)
            # the same numbers as jax_roi, or the comparison means nothing
            ours = np.asarray(op_for("kernel", w, mode, layout)(jnp.asarray(features),
                                                                jnp.asarray(rois)))
            theirs = forward_only["onnxruntime"]()
            if not np.allclose(theirs, ours, rtol=1e-4, atol=1e-4):
                raise RuntimeError(f"{w.name}: ONNX Runtime's RoiAlign differs from jax_roi's "
                                   f"by {np.abs(theirs - ours).max()}")
        for name in calls:
            row[name] = dict(memory.get(name, {}))
        for name in forward_only:
            row[name] = {}
        for direction in ("forward", "backward"):
            timed = {name: c[direction] for name, c in calls.items()}
            if direction == "forward":
                timed.update(forward_only)
            for name, ms in median_ms_in_rounds(timed, repeats, min_seconds, cold,
                                                  warm_ms).items():
                row[name][f"{direction}_ms"] = ms
        results.append(row)
        log(format_row(row))
    return results


HEADER = (f"{'workload':10} {'op':21} {'layout':6} {'dtype':8} {'pass':8} {'jax_roi ms':>10} "
          f"{'xla ms':>9} {'x xla':>6} {'tv ms':>9} {'x tv':>6} {'ort ms':>8} {'x ort':>6} "
          f"{'/ floor':>7}")


def format_row(row):
    lines = []
    for direction in ("forward", "backward"):
        ours = row["jax_roi"][f"{direction}_ms"]
        xla = row["xla"][f"{direction}_ms"]

        def versus(name, width):
            t = row.get(name, {}).get(f"{direction}_ms")
            return f"{t:{width}.1f} {t / ours:6.1f}" if t else f"{'-':>{width}} {'-':>6}"

        floor = row.get("floor", {}).get(f"{direction}_ms")
        floor_text = f"{ours / floor:7.1f}" if floor else f"{'-':>7}"
        lines.append(f"{row['workload']:10} {row['op']:21} {row['layout']:6} {row['dtype']:8} "
                     f"{direction:8} {ours:10.1f} {xla:9.1f} {xla / ours:6.1f} "
                     f"{versus('torchvision', 9)} {versus('onnxruntime', 8)} {floor_text}")
    return "\n".join(lines)


def plot(results, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    labels, ratios = [], {"xla": [], "torchvision": []}
    for row in results:
        for direction in ("forward", "backward"):
            labels.append(f"{row['workload']} {row['op']}\n{row['layout']} {row['dtype']} "
                          f"{direction[:3]}")
            ours = row["jax_roi"][f"{direction}_ms"]
            for base in ratios:
                t = row.get(base, {}).get(f"{direction}_ms")
                ratios[base].append(t / ours if t else 0.0)
    fig, ax = plt.subplots(figsize=(max(8, 0.45 * len(labels)), 5))
    x = np.arange(len(labels))
    ax.bar(x - 0.2, ratios["xla"], 0.4, label="vs pure JAX (xla)")
    ax.bar(x + 0.2, ratios["torchvision"], 0.4, label="vs torchvision")
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_ylabel("speed-up of jax_roi (baseline time / jax_roi time)")
    ax.set_xticks(x, labels, rotation=90, fontsize=6)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text}")
    return value


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="reduced sizes and one row per op (the layouts and dtypes in "
                             "turn): runs in seconds")
    parser.add_argument("--repeats", type=positive_int, default=DEFAULT_REPEATS,
                        help="timed rounds per case, at least: each warms every "
                             "implementation with untimed calls (see --warm-ms), then "
                             "times one call")
    parser.add_argument("--min-seconds", type=float,
                        help="go on with more rounds (up to %d) until the rounds of each "
                             "pass (forward, backward) of a case have taken this long "
                             "(default: %g, or 0 with --quick)"
                             % (MAX_ROUNDS, DEFAULT_MIN_SECONDS))
    parser.add_argument("--cold", action="store_true",
                        help="time one call of each implementation per round, right after "
                             "another implementation's (the timing before 0.4.8)")
    parser.add_argument("--warm-ms", type=float, default=DEFAULT_WARM_MS,
                        help="hot timing: untimed calls of an implementation, for at least "
                             "this long (one call at least), before its timed call "
                             "(default: %g; 0: one untimed call, the timing of 0.4.8 to "
                             "0.4.25)" % DEFAULT_WARM_MS)
    parser.add_argument("--out", default="bench-results",
                        help="directory for bench.json and bench.png")
    parser.add_argument("--no-torch", action="store_true",
                        help="skip the torchvision baseline even when it is installed")
    parser.add_argument("--no-onnxruntime", action="store_true",
                        help="skip the ONNX Runtime baseline even when it is installed")
    parser.add_argument("--vector-bytes", type=int, choices=(16, 32, 64),
                        help="hide CPU vectors wider than this (32: the AVX2 kernels on an "
                             "AVX-512 machine); the same as JAX_ROI_CPU_VECTOR_BYTES")
    parser.add_argument("--workloads", type=lambda v: v.split(","),
                        help="comma-separated workload names to run (default: all of "
                             + ", ".join(dict.fromkeys(w.name for w in WORKLOADS)) + ")")
    args = parser.parse_args(argv)
    known = {w.name for w in WORKLOADS}
    if args.workloads and not set(args.workloads) <= known:
        parser.error(f"--workloads: unknown {sorted(set(args.workloads) - known)}; "
                     f"the workloads are {sorted(known)}")
    if args.vector_bytes:  # read by the kernels at their first call
        os.environ["JAX_ROI_CPU_VECTOR_BYTES"] = str(args.vector_bytes)
    # torch's OpenMP threads would otherwise spin for work after each call
    # and take a core from whichever call runs next (psroi-rfcn's
    # ps_roi_pool forward read 1.4 ms for 0.7 with cold timing); torch's own
    # times do not change. Read when torch loads OpenMP, so set before it is
    # imported.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

    allocator = allocator_setting()
    huge_pages = huge_page_setting()
    with_torch = not args.no_torch and torchvision_available()
    with_onnxruntime = not args.no_onnxruntime and onnxruntime_available()
    print(f"jax {jax.__version__}, jax_roi {jax_roi.__version__} on {processor_model()} "
          f"({platform.machine()}, {os.cpu_count()} cores); CPU kernels use "
          f"{vector_bytes()}-byte vectors; devices {jax.devices()}; "
          f"malloc settings: {allocator}; transparent huge pages: {huge_pages}")
    if not with_torch:
        print("torchvision baseline: not run (torch and torchvision are not installed"
              + (", or --no-torch)" if args.no_torch else ")"))
    if not with_onnxruntime:
        print("ONNX Runtime baseline: not run (onnx and onnxruntime are not installed"
              + (", or --no-onnxruntime)" if args.no_onnxruntime else ")"))
    min_seconds = min_seconds_or_default(args.min_seconds, args.quick)
    if args.warm_ms < 0:
        parser.error(f"--warm-ms: expected a number of milliseconds >= 0, got {args.warm_ms:g}")
    print(f"timing: at least {args.repeats} rounds and {min_seconds:g} s per pass; "
          + ("cold, each call right after another implementation's" if args.cold else
             f"hot, each call right after untimed calls of its own for {args.warm_ms:g} ms "
             "(one at least)"))
    print("ratios are baseline time / jax_roi time: higher is better; '/ floor' is jax_roi's "
          "time over filling an array of the result's size\n")
    print(HEADER)
    results = run(args.quick, args.repeats, with_torch, names=args.workloads,
                  with_onnxruntime=with_onnxruntime, min_seconds=min_seconds, cold=args.cold,
                  warm_ms=args.warm_ms)

    os.makedirs(args.out, exist_ok=True)
    report = {"quick": args.quick, "repeats": args.repeats, "min_seconds": min_seconds,
              "cold": args.cold, "warm_ms": None if args.cold else args.warm_ms,
              "jax": jax.__version__,
              "jax_roi": jax_roi.__version__, "machine": platform.machine(),
              "processor": processor_model(), "vector_bytes": vector_bytes(),
              "allocator": allocator, "huge_pages": huge_pages, "cores": os.cpu_count(),
              "results": results}
    json_path = os.path.join(args.out, "bench.json")
    with open(json_path, "w") as f:
        json.dump(report, f, indent=1)
    png_path = os.path.join(args.out, "bench.png")
    print(f"\nwrote {json_path}" + (f" and {png_path}" if plot(results, png_path)
                                   else " (install matplotlib for a chart)"))


if __name__ == "__main__":
    main()
