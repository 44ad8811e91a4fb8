"""ROI Align and ROI Pooling written in plain ``jax.numpy`` (no custom calls).

These functions follow the arithmetic of the compiled operators (see the
project's semantics notes) and serve as the benchmark baseline, as the
implementation for platforms without a compiled kernel, and in tests. They are
differentiable with respect to ``features`` by ordinary JAX autodiff, work under
``jit`` and ``vmap``, and their gradient is the exact adjoint of the forward.
As with the compiled operators, ``rois`` receive a zero cotangent.

How the work is organised: features are used channels-last (NCHW input is
transposed once), every ROI sample reads whole channel vectors by gather, and
the bilinear weights are computed in jnp. ROIs are processed in chunks of
``roi_chunk`` ROIs by ``lax.map`` so the gathered intermediate stays small
(about 4 MiB per step on CPU by default); within a chunk everything is
vectorised over ROIs, bins, samples and channels.
"""

import math
import operator
from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

__all__ = ["roi_align", "roi_pool"]

_FEATURE_DTYPES = tuple(
    jnp.dtype(d) for d in (jnp.float16, jnp.bfloat16, jnp.float32, jnp.float64)
)
_MODES = ("avg", "max")
_LAYOUTS = ("NCHW", "NHWC")


# ---------------------------------------------------------------- arguments


def _positive_int(value, name):
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {value!r}") from None
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {value}")
    return value


def _output_size(output_size):
    if isinstance(output_size, (tuple, list)):
        if len(output_size) != 2:
            raise ValueError(
                f"output_size must be an int or a pair (PH, PW), got {output_size!r}"
            )
        return tuple(_positive_int(v, "output_size") for v in output_size)
    size = _positive_int(output_size, "output_size")
    return size, size


def _check(features, rois, output_size, spatial_scale, layout):
    """Validates the common arguments; returns (PH, PW) and the scale."""
    if layout not in _LAYOUTS:
        raise ValueError(f"layout must be one of {_LAYOUTS}, got {layout!r}")
    if jnp.ndim(features) != 4:
        raise ValueError(
            f"features must have rank 4 ({layout}), got shape {jnp.shape(features)}"
        )
    if jnp.dtype(features.dtype) not in _FEATURE_DTYPES:
        raise TypeError(
            "features must be float16, bfloat16, float32 or float64, "
            f"got {features.dtype}"
        )
    shape = jnp.shape(rois)
    if not (len(shape) == 2 and shape[1] == 5) and not (
        len(shape) == 3 and shape[2] == 4
    ):
        raise ValueError(f"rois must have shape [K, 5] or [N, L, 4], got {shape}")
    if not jnp.issubdtype(rois.dtype, jnp.floating):
        raise TypeError(f"rois must have a floating dtype, got {rois.dtype}")
    scale = float(spatial_scale)
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"spatial_scale must be finite and > 0, got {spatial_scale!r}")
    return _output_size(output_size), scale


def _geometry_dtype(features):
    # Box coordinates near 800 need more precision than 16-bit floats give.
    return jnp.float64 if features.dtype == jnp.float64 else jnp.float32


def _to_nhwc(features, layout):
    return features if layout == "NHWC" else jnp.transpose(features, (0, 2, 3, 1))


def _from_nhwc(out, layout, lead):
    """[K, PH, PW, C] -> the caller's layout, with the ROI leading shape."""
    if layout == "NCHW":
        out = jnp.transpose(out, (0, 3, 1, 2))
    return out.reshape(lead + out.shape[1:])


def _split_rois(rois, n, geom):
    """Returns batch index (n where the ROI is invalid), boxes, validity, lead shape.

    The ROI gradient is zero by definition (as in the compiled operators).
    Invalid ROIs (batch index not finite / outside [0, n), or a non-finite
    coordinate) get batch index n, which lies outside the feature array, so
    every gather of theirs reads zero and their gradient is dropped; their
    boxes are zeroed so that no NaN reaches the geometry.
    """
    rois = lax.stop_gradient(rois)
    if rois.ndim == 3:
        lead = rois.shape[:2]
        if rois.shape[0] != n:
            raise ValueError(
                f"rois of shape [N, L, 4] need N == features batch size {n}, "
                f"got {rois.shape[0]}"
            )
        boxes = rois.reshape(-1, 4).astype(geom)
        b = jnp.repeat(jnp.arange(n, dtype=geom), rois.shape[1])
    else:
        lead = rois.shape[:1]
        boxes = rois[:, 1:].astype(geom)
        b = rois[:, 0].astype(geom)
    valid = jnp.isfinite(b) & (b >= 0) & (b < n) & jnp.all(jnp.isfinite(boxes), -1)
    bidx = jnp.where(valid, jnp.floor(jnp.where(valid, b, 0)), n).astype(jnp.int32)
    boxes = jnp.where(valid[:, None], boxes, 0)
    return bidx, boxes, valid, lead


def _default_chunk(bytes_per_roi, k):
    # Small steps keep the gathered intermediate in cache on CPU; accelerators
    # prefer one large vectorised step.
    budget = 4 << 20 if jax.default_backend() == "cpu" else 1 << 30
    return max(1, min(k, budget // max(bytes_per_roi, 1)))


def _map_chunks(body, per_roi, chunk):
    """body over chunks of `chunk` ROIs (leading axis of every array in per_roi)."""
    k = per_roi[0].shape[0]
    if chunk >= k:
        return body(*per_roi)
    steps = -(-k // chunk)
    pad = steps * chunk - k

    def split(a):
        # Edge padding repeats a real ROI: finite work whose result is dropped.
        a = jnp.pad(a, [(0, pad)] + [(0, 0)] * (a.ndim - 1), mode="edge")
        return a.reshape((steps, chunk) + a.shape[1:])

    out = lax.map(lambda args: body(*args), tuple(split(a) for a in per_roi))
    return out.reshape((steps * chunk,) + out.shape[2:])[:k]


# ---------------------------------------------------------------- roi_align


def _sample_axis(start, bin_size, grid, bins, max_grid, length):
    """Bilinear corners of the samples along one axis.

    Returns index [K, bins, max_grid, 2] (set to `length`, i.e. out of range,
    where the sample reads nothing: outside [-1, length] or beyond the ROI's own
    grid), weights of the same shape, and exists [K, 1, max_grid] (the sample is
    part of the ROI's grid).
    """
    dt = start.dtype
    p = jnp.arange(bins, dtype=dt)[:, None]
    i = jnp.arange(max_grid, dtype=dt)
    start, bin_size, grid = (a[:, None, None] for a in (start, bin_size, grid))
    c = start + p * bin_size + (i + 0.5) * bin_size / grid
    exists = i < grid
    inside = exists & (c >= -1) & (c <= length)
    c = jnp.where(inside, jnp.maximum(c, 0), 0)
    c0 = jnp.floor(c)
    edge = c0 >= length - 1
    c0 = jnp.where(edge, length - 1, c0)
    frac = jnp.where(edge, 0, c - c0)
    index = jnp.stack([c0, jnp.where(edge, c0, c0 + 1)], -1).astype(jnp.int32)
    index = jnp.where(inside[..., None], index, length)
    weight = jnp.stack([1 - frac, frac], -1)
    return index, weight, exists


def _align_chunk(x, b, yi, wy, ey, xi, wx, ex, count, mode):
    """One chunk of ROIs: [k, PH, PW, C] from channels-last features x.

    Sums run in the dtype of the weights: float32, or float64 for float64
    features (16-bit features are widened before they are multiplied).
    """
    acc = wy.dtype
    k, ph, gh = yi.shape[:3]
    pw, gw = xi.shape[1:3]
    c = x.shape[-1]
    # Corner reads [k, PH, PW, gh, gw, 2, 2, C]; out-of-range indices read 0.
    v = x.at[
        b[:, None, None, None, None, None, None],
        yi[:, :, None, :, None, :, None],
        xi[:, None, :, None, :, None, :],
    ].get(mode="fill", fill_value=0)
    w = wy[:, :, None, :, None, :, None] * wx[:, None, :, None, :, None, :]
    s = gh * gw
    if mode == "avg":
        v = v.reshape(k, ph, pw, 4 * s, c)
        w = w.reshape(k, ph, pw, 4 * s)
        total = jnp.einsum("kpqs,kpqsc->kpqc", w, v, preferred_element_type=acc)
        return total / count[:, None, None, None]
    v = v.reshape(k, ph, pw, s, 4, c)
    w = w.reshape(k, ph, pw, s, 4)
    sample = jnp.einsum("kpqst,kpqstc->kpqsc", w, v, preferred_element_type=acc)
    exists = (ey[:, :, None, :, None] & ex[:, None, :, None, :]).reshape(k, ph, pw, s)
    # First strict maximum among existing, non-NaN samples; none -> output 0.
    ok = exists[..., None] & ~jnp.isnan(sample)
    key = jnp.where(ok, sample, -jnp.inf)
    hit = ok & (key == jnp.max(key, axis=3, keepdims=True))
    winner = jnp.where(jnp.any(hit, axis=3), jnp.argmax(hit, axis=3), -1)
    pick = jnp.arange(s)[:, None] == winner[:, :, :, None, :]
    return jnp.sum(jnp.where(pick, sample, 0), axis=3)


def roi_align(
    features,
    rois,
    output_size,
    spatial_scale=1.0,
    sampling_ratio=-1,
    aligned=False,
    *,
    mode="avg",
    layout="NCHW",
    max_grid=8,
    roi_chunk=None,
):
    """ROI Align (``mode="avg"``) or its max-pooling variant (``mode="max"``).

    Args:
      features: ``[N, C, H, W]`` (``layout="NCHW"``) or ``[N, H, W, C]``
        (``layout="NHWC"``); float16, bfloat16, float32 or float64.
      rois: ``[K, 5]`` rows ``(batch_index, x1, y1, x2, y2)``, or ``[N, L, 4]``
        boxes per image; coordinates in image space.
      output_size: ``PH`` or ``(PH, PW)``.
      spatial_scale: image-to-feature-map scale, finite and > 0.
      sampling_ratio: samples per bin along each axis; ``<= 0`` selects the
        adaptive grid ``ceil(roi_height / PH)`` x ``ceil(roi_width / PW)``.
      aligned: shift the box by half a pixel (``-0.5``) before sampling.
      mode: ``"avg"`` (mean of the samples) or ``"max"`` (largest sample; the
        first strict maximum wins, NaN never wins, out-of-map samples count as
        0, a bin without any sample gives 0).
      layout: ``"NCHW"`` or ``"NHWC"``; the output follows it:
        ``[K, C, PH, PW]`` or ``[K, PH, PW, C]`` (leading ``[N, L]`` for
        ``[N, L, 4]`` rois).
      max_grid: static bound on the adaptive grid (``sampling_ratio <= 0``
        only). Every ROI is evaluated on a ``max_grid`` x ``max_grid`` sample
        grid per bin with the samples beyond its own grid masked out, so work
        and memory grow as ``max_grid**2``.
      roi_chunk: ROIs per vectorised step (``lax.map`` over the steps);
        ``None`` picks a step whose gathered intermediate is about 4 MiB on CPU,
        or one step for all ROIs on accelerators.

    Exactness: the result is the formula of the compiled operator (to rounding
    of the accumulation order; 16-bit features accumulate in float32, geometry
    is float32, float64 for float64 features) whenever ``sampling_ratio > 0``,
    and, for ``sampling_ratio <= 0``, for every ROI whose adaptive grid fits,
    i.e. ``ceil(roi_height / PH) <= max_grid`` and
    ``ceil(roi_width / PW) <= max_grid`` (roi sizes in feature-map pixels;
    with the default 8 and a 7 x 7 output: boxes up to 56 feature pixels on
    each side). A larger ROI is NOT computed by the formula: along an axis
    where its grid exceeds ``max_grid``, it gets ``max_grid`` evenly spaced
    samples per bin instead (as if ``sampling_ratio`` were ``max_grid`` there,
    with the count to match). Boxes with huge coordinates fall in this case;
    both give (nearly) zero there because almost every sample is off the map.

    Invalid ROIs (batch index not finite or outside ``[0, N)``, or a
    non-finite coordinate) give zeros and no gradient. The gradient with
    respect to ``features`` is the exact adjoint (for ``mode="max"``: the
    cotangent goes to the four corners of the winning sample with its bilinear
    weights). The cotangent for ``rois`` is zero.
    """
    out_hw, scale = _check(features, rois, output_size, spatial_scale, layout)
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
    sampling_ratio = operator.index(sampling_ratio)
    max_grid = _positive_int(max_grid, "max_grid")
    if roi_chunk is not None:
        roi_chunk = _positive_int(roi_chunk, "roi_chunk")
    return _roi_align(
        features, rois, out_hw, scale, sampling_ratio, bool(aligned), mode, layout,
        max_grid, roi_chunk,
    )


@partial(jax.jit, static_argnums=tuple(range(2, 10)))
def _roi_align(
    features, rois, out_hw, scale, sampling_ratio, aligned, mode, layout, max_grid,
    roi_chunk,
):
    ph, pw = out_hw
    geom = _geometry_dtype(features)
    x = _to_nhwc(features, layout)
    n, h, w, c = x.shape
    b, boxes, valid, lead = _split_rois(rois, n, geom)
    k = b.shape[0]
    if k == 0 or n == 0 or h == 0 or w == 0 or c == 0:
        return _from_nhwc(jnp.zeros((k, ph, pw, c), features.dtype), layout, lead)

    offset = 0.5 if aligned else 0.0
    x1, y1, x2, y2 = (boxes[:, i] * scale - offset for i in range(4))
    rw, rh = x2 - x1, y2 - y1
    if not aligned:
        rw, rh = jnp.maximum(rw, 1), jnp.maximum(rh, 1)
    bh, bw = rh / ph, rw / pw
    if sampling_ratio > 0:
        g_static = sampling_ratio
        gh = gw = jnp.full((k,), sampling_ratio, geom)
    else:
        g_static = max_grid
        # Clamp in float before any cast: the adaptive grid can be astronomic.
        gh = jnp.clip(jnp.ceil(bh), 0, max_grid)
        gw = jnp.clip(jnp.ceil(bw), 0, max_grid)
    count = jnp.maximum(gh * gw, 1)
    yi, wy, ey = _sample_axis(y1, bh, gh, ph, g_static, h)
    xi, wx, ex = _sample_axis(x1, bw, gw, pw, g_static, w)

    ey, ex = ey & valid[:, None, None], ex & valid[:, None, None]
    ey, ex = jnp.broadcast_to(ey, yi.shape[:3]), jnp.broadcast_to(ex, xi.shape[:3])
    if roi_chunk is None:
        per_roi = ph * pw * 4 * g_static * g_static * c * 4
        roi_chunk = _default_chunk(per_roi, k)

    def body(*args):
        return _align_chunk(x, *args, mode=mode)

    out = _map_chunks(body, (b, yi, wy, ey, xi, wx, ex, count), roi_chunk)
    return _from_nhwc(out.astype(features.dtype), layout, lead)


# ---------------------------------------------------------------- roi_pool


def _round_half_away(v):
    """C round(): halves go away from zero (jnp.round rounds them to even)."""
    whole = jnp.trunc(v)
    return whole + jnp.where(jnp.abs(v - whole) >= 0.5, jnp.sign(v), 0)


def _pool_bins(start, size, bins, length):
    """Bin bounds [K, bins] along one axis, clamped to [0, length], as int32."""
    p = jnp.arange(bins, dtype=start.dtype)
    bin_size = (size / bins)[:, None]
    lo = jnp.floor(p * bin_size) + start[:, None]
    hi = jnp.ceil((p + 1) * bin_size) + start[:, None]
    return (jnp.clip(a, 0, length).astype(jnp.int32) for a in (lo, hi))


def _pool_chunk(flat, width, b, h0, h1, w0, w1):
    """One chunk of ROIs: [k, PH, PW, C] max pooling of flat = x[N*H*W, C]."""
    k, ph = h0.shape
    pw = w0.shape[1]
    c = flat.shape[1]
    # The winner search is a loop whose length is the largest bin area in the
    # chunk (data-dependent, so every bin is scanned completely). It only
    # produces positions; the value is read afterwards by a differentiable
    # gather, so autodiff never enters the loop.
    frozen = lax.stop_gradient(flat)
    ext_h = jnp.max(h1 - h0)
    ext_w = jnp.maximum(jnp.max(w1 - w0), 1)
    base = b[:, None, None]

    def step(t, state):
        best, where = state
        # Row-major order within the bin, so the first strict maximum wins.
        rows, cols = h0 + t // ext_w, w0 + t % ext_w
        inside = (rows < h1)[:, :, None] & (cols < w1)[:, None, :]
        pos = base + rows[:, :, None] * width + cols[:, None, :]
        v = frozen.at[pos].get(mode="clip")
        take = inside[..., None] & ~jnp.isnan(v) & ((where < 0) | (v > best))
        return jnp.where(take, v, best), jnp.where(take, pos[..., None], where)

    # where < 0: no winner yet.
    state = (
        jnp.zeros((k, ph, pw, c), flat.dtype),
        jnp.full((k, ph, pw, c), -1, jnp.int32),
    )
    _, where = lax.fori_loop(0, ext_h * ext_w, step, state)
    # Bins without a winner read one row past the end, which gives 0.
    where = jnp.where(where < 0, flat.shape[0], where)
    return flat.at[where, jnp.arange(c)].get(mode="fill", fill_value=0)


def roi_pool(
    features, rois, output_size, spatial_scale=1.0, *, layout="NCHW", roi_chunk=None
):
    """Fast R-CNN ROI max pooling (integer bins, first strict maximum wins).

    Args:
      features: ``[N, C, H, W]`` (``layout="NCHW"``) or ``[N, H, W, C]``
        (``layout="NHWC"``); float16, bfloat16, float32 or float64.
      rois: ``[K, 5]`` rows ``(batch_index, x1, y1, x2, y2)``, or ``[N, L, 4]``.
      output_size: ``PH`` or ``(PH, PW)``.
      spatial_scale: image-to-feature-map scale, finite and > 0.
      layout: ``"NCHW"`` or ``"NHWC"``; output ``[K, C, PH, PW]`` or
        ``[K, PH, PW, C]`` (leading ``[N, L]`` for ``[N, L, 4]`` rois).
      roi_chunk: ROIs per vectorised step; ``None`` picks about 4 MiB of
        per-step state on CPU, or one step on accelerators.

    Exact for every input, with no static bound on the bin size: for each
    chunk of ROIs, the winner search loops over the offsets of a window as tall
    as the tallest bin and as wide as the widest bin in that chunk (at most
    H x W offsets; the count is data-dependent, so no bin is cut short), and
    each iteration reads one value per bin and channel. Memory is a few arrays
    of ``roi_chunk x PH x PW x C`` elements whatever the bin size; time grows
    with that window area. Coordinates are rounded half
    away from zero (C ``round``); bins are clamped to the map; an empty bin
    gives 0; NaN never wins. Invalid ROIs give zeros and no gradient. The
    gradient with respect to ``features`` goes to the winning pixel of each bin
    and channel (the exact adjoint); the cotangent for ``rois`` is zero.
    """
    out_hw, scale = _check(features, rois, output_size, spatial_scale, layout)
    axes = (0, 1, 2) if layout == "NHWC" else (0, 2, 3)
    n, h, w = (features.shape[i] for i in axes)
    if n * h * w >= 2**31:  # positions are int32
        raise ValueError(f"features need N*H*W < 2**31, got shape {features.shape}")
    if roi_chunk is not None:
        roi_chunk = _positive_int(roi_chunk, "roi_chunk")
    return _roi_pool(features, rois, out_hw, scale, layout, roi_chunk)


@partial(jax.jit, static_argnums=(2, 3, 4, 5))
def _roi_pool(features, rois, out_hw, scale, layout, roi_chunk):
    ph, pw = out_hw
    geom = _geometry_dtype(features)
    x = _to_nhwc(features, layout)
    n, h, w, c = x.shape
    b, boxes, valid, lead = _split_rois(rois, n, geom)
    k = b.shape[0]
    if k == 0 or n == 0 or h == 0 or w == 0 or c == 0:
        return _from_nhwc(jnp.zeros((k, ph, pw, c), features.dtype), layout, lead)

    x1, y1, x2, y2 = (_round_half_away(boxes[:, i] * scale) for i in range(4))
    rw = jnp.maximum(x2 - x1 + 1, 1)
    rh = jnp.maximum(y2 - y1 + 1, 1)
    h0, h1 = _pool_bins(y1, rh, ph, h)
    w0, w1 = _pool_bins(x1, rw, pw, w)
    # Invalid ROIs get empty bins: no work, output 0.
    h1 = jnp.where(valid[:, None], h1, h0)
    if roi_chunk is None:
        roi_chunk = _default_chunk(ph * pw * c * 12, k)
    # Flattened outside the chunk loop so that autodiff accumulates in place.
    flat = x.reshape(n * h * w, c)
    b = b * (h * w)  # first row of the ROI's image in flat
    per_roi = (b, h0, h1, w0, w1)
    out = _map_chunks(lambda *a: _pool_chunk(flat, w, *a), per_roi, roi_chunk)
    return _from_nhwc(out, layout, lead)
