"""The pure-JAX implementation of every primitive: jnp and lax only, exact to
the contract (semantics.md of the project spec) for every box.

It is what the primitives lower to on platforms without a compiled kernel
(TPU, ROCm, ...) and wherever ``implementation="xla"`` asks for it. Each
function takes a primitive's operands and parameters and returns what the
kernel returns, the max modes' argmax included and packed the same way
(lib/roi_geometry.h), so either implementation's backward accepts the
other's forward.

How it stays exact and small:

- A bin's samples along each axis are scanned over the range that can land
  on the map (the kernels' ``sample_range``), so a huge box's astronomic
  adaptive grid costs no more than the map; the samples outside only count
  in ``count`` (and, for "max", as zeros that may win).
- Features are one table of channel rows, ``[rows, C]``: a ROI reads the
  rows of its own image (and, for a pyramid, of its own level's map), so a
  pyramid is the single-map code with per-ROI map sizes and scales.
- ROIs go in chunks (``lax.map``) and a chunk's samples in a loop whose
  length is that chunk's largest in-map grid, so memory stays a few chunks of
  ``[k, PH, PW, C]`` whatever the grid, and one large box slows only its
  own chunk.

Sums run in the geometry dtype (float32, float64 for float64 features).
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ._checks import geometry_dtype

# Bytes of [k, PH, PW, C] work arrays one chunk of ROIs may hold.
_CHUNK_BYTES_CPU = 4 << 20
_CHUNK_BYTES_ACCELERATOR = 256 << 20
_INT32_LIMIT = 2**31


# ------------------------------------------------------- tables and sites

def _table(features, layout):
    """Features as rows of channels, [N*H*W, C], and (N, H, W, C)."""
    if layout == "NCHW":
        features = jnp.transpose(features, (0, 2, 3, 1))
    n, h, w, c = features.shape
    if n * h * w >= _INT32_LIMIT:
        raise ValueError(
            f"features of shape {features.shape} have N*H*W >= 2**31 pixels, more than the "
            "pure-JAX implementation indexes (int32); use implementation='kernel'")
    return features.reshape(n * h * w, c), (n, h, w, c)


class Sites(NamedTuple):
    """Where each ROI reads: its image's first row in the table, that map's
    size and scale, its box (zeros when invalid) and whether it is valid."""
    base: jax.Array     # [K] int32
    height: jax.Array   # [K] int32
    width: jax.Array    # [K] int32
    scale: jax.Array    # [K] geometry dtype
    boxes: jax.Array    # [K, 4] x1, y1, x2, y2 (rotated: [K, 5] cx, cy, w, h, angle)
    valid: jax.Array    # [K] bool


def _parse_rois(rois, num_images):
    """[K] image index, [K, coords] boxes and validity, as the kernels' load_roi."""
    if rois.ndim == 3:  # [N, L, coords]
        boxes = rois.reshape(rois.shape[0] * rois.shape[1], rois.shape[2])
        batch = jnp.repeat(jnp.arange(rois.shape[0], dtype=rois.dtype), rois.shape[1])
    else:
        boxes, batch = rois[:, 1:], rois[:, 0]
    # Comparisons are false for NaN, so a NaN index is invalid too.
    valid = (batch >= 0) & (batch < num_images) & jnp.all(jnp.isfinite(boxes), axis=-1)
    image = jnp.where(valid, jnp.floor(jnp.where(valid, batch, 0)), 0).astype(jnp.int32)
    return image, jnp.where(valid[:, None], boxes, 0), valid


def _single_map_sites(rois, shape, scale):
    n, h, w, _ = shape
    image, boxes, valid = _parse_rois(rois, n)
    k = boxes.shape[0]
    full = lambda v, dtype: jnp.full((k,), v, dtype)
    return Sites(base=image * (h * w), height=full(h, jnp.int32), width=full(w, jnp.int32),
                 scale=full(scale, boxes.dtype), boxes=boxes, valid=valid)


def _map_rows(shapes):
    """Where each map of NHWC `shapes` starts in a stacked table, and its rows."""
    sizes = [n * h * w for n, h, w, _ in shapes]
    return [int(v) for v in np.cumsum([0] + sizes[:-1])], sum(sizes)


def _pyramid_sites(boxes, levels, shapes, scales):
    """Sites of [N, L, 4] boxes over maps stacked in one table, finest first."""
    image, flat_boxes, valid = _parse_rois(boxes, shapes[0][0])
    starts, rows = _map_rows(shapes)
    if rows >= _INT32_LIMIT:
        raise ValueError("features: the maps together have >= 2**31 pixels, more than the "
                         "pure-JAX implementation indexes (int32); use implementation='kernel'")
    level = jnp.clip(levels.reshape(-1), 0, len(shapes) - 1)  # as the kernels clamp
    pick = lambda values, dtype: jnp.asarray(values, dtype)[level]
    height = pick([s[1] for s in shapes], jnp.int32)
    width = pick([s[2] for s in shapes], jnp.int32)
    base = pick(starts, jnp.int32) + image * height * width
    return Sites(base=base, height=height, width=width,
                 scale=pick(scales, flat_boxes.dtype), boxes=flat_boxes, valid=valid)


def _divide(a, b):
    """a / b correctly rounded, as the kernels divide. XLA on the CPU turns a
    division by a constant or by a value repeated along a vector into a
    multiplication by its reciprocal, which is off by an ulp: enough to move
    a sample, or the floor of a bin edge. A divisor as wide as the dividend,
    behind a barrier, is divided element by element."""
    a, b = jnp.broadcast_arrays(a, jnp.asarray(b, dtype=jnp.result_type(a)))
    return a / lax.optimization_barrier(b)


def _chunk_size(num_rois, bytes_per_roi, at_least=0):
    """ROIs per chunk: work arrays within the platform's budget, or within
    `at_least` bytes when that is more."""
    budget = _CHUNK_BYTES_CPU if jax.default_backend() == "cpu" else _CHUNK_BYTES_ACCELERATOR
    return max(1, min(num_rois, max(budget, at_least) // max(bytes_per_roi, 1)))


def _in_chunks(arrays, chunk):
    """Arrays of K rows, padded with zero rows (an invalid ROI, an empty
    window: no work) to whole chunks: each [steps, chunk, ...], and steps."""
    k = arrays[0].shape[0]
    steps = -(-k // chunk)
    pad = steps * chunk - k

    def split(a):
        a = jnp.pad(a, [(0, pad)] + [(0, 0)] * (a.ndim - 1))
        return a.reshape((steps, chunk) + a.shape[1:])

    return [split(a) for a in arrays], steps


def _joined(chunked, k):
    """The first k rows of [steps, chunk, ...] results."""
    return [o.reshape((o.shape[0] * o.shape[1],) + o.shape[2:])[:k] for o in chunked]


def _in_layout(out, layout, lead):
    """[K, PH, PW, C] -> the caller's layout with the ROIs' leading shape."""
    if layout == "NCHW":
        out = jnp.moveaxis(out, -1, 1)
    return out.reshape(tuple(lead) + out.shape[1:])


def _from_layout(pooled, layout):
    """A pooled-shaped operand -> [K, PH, PW, C]."""
    lead = pooled.ndim - 3
    k = int(np.prod(pooled.shape[:lead]))  # not -1: other dimensions may be 0
    pooled = pooled.reshape((k,) + pooled.shape[lead:])
    return jnp.moveaxis(pooled, 1, -1) if layout == "NCHW" else pooled


def _lead(rois):
    return rois.shape[:2] if rois.ndim == 3 else rois.shape[:1]


# ------------------------------------------------------ roi_align geometry

class AlignGeometry(NamedTuple):
    """Each ROI's bins and sample grids ([k] each), as the kernels' align_roi."""
    x_start: jax.Array
    y_start: jax.Array
    bin_w: jax.Array
    bin_h: jax.Array
    grid_w: jax.Array
    grid_h: jax.Array
    count: jax.Array


def _align_geometry(sites, output_size, sampling_ratio, aligned):
    ph, pw = output_size
    offset = 0.5 if aligned else 0.0
    x1, y1, x2, y2 = (sites.boxes[:, i] for i in range(4))
    x_start = x1 * sites.scale - offset
    y_start = y1 * sites.scale - offset
    roi_w = x2 * sites.scale - offset - x_start
    roi_h = y2 * sites.scale - offset - y_start
    if not aligned:
        roi_w, roi_h = jnp.maximum(roi_w, 1), jnp.maximum(roi_h, 1)
    bin_w, bin_h = _divide(roi_w, pw), _divide(roi_h, ph)
    if sampling_ratio > 0:
        grid_w = grid_h = jnp.full_like(roi_w, sampling_ratio)
    else:
        grid_w, grid_h = jnp.ceil(bin_w), jnp.ceil(bin_h)
    return AlignGeometry(x_start, y_start, bin_w, bin_h, grid_w, grid_h,
                         jnp.maximum(grid_h * grid_w, 1))


class SampleRange(NamedTuple):
    """The samples [lo, lo + n) of each bin along one axis that can land in
    [-1, extent] ([k, bins]); `complete` when that is the whole grid."""
    lo: jax.Array
    n: jax.Array
    complete: jax.Array


def _sample_range(start, bin_size, grid, first, last, bins, valid):
    """Ranges of samples whose positions can land in [first, last] ([k] each)."""
    start, bin_size, grid, first, last = (a[:, None] for a in (start, bin_size, grid, first, last))
    bin_start = start + jnp.arange(bins, dtype=start.dtype) * bin_size
    step = _divide(bin_size, grid)
    flat = step == 0
    safe_step = jnp.where(flat, 1, step)
    a = _divide(first - bin_start, safe_step) - 0.5
    b = _divide(last - bin_start, safe_step) - 0.5
    lo = jnp.floor(jnp.minimum(a, b)) - 1
    hi = jnp.ceil(jnp.maximum(a, b)) + 2
    on_map = (bin_start >= first) & (bin_start <= last)
    lo = jnp.where(flat, 0, lo)
    hi = jnp.where(flat, jnp.where(on_map, grid, 0), hi)
    lo, hi = jnp.maximum(lo, 0), jnp.minimum(hi, grid)
    some = (grid >= 1) & (hi > lo) & valid[:, None]  # false for NaN as well
    complete = some & (lo == 0) & (hi == grid)
    # hi - lo is at most a few times the map's extent (or the fixed grid).
    n = jnp.where(some, hi - lo, 0).astype(jnp.int32)
    return SampleRange(jnp.where(some, lo, 0), n, complete)


class AxisWeights(NamedTuple):
    """Linear interpolation along one axis (the kernels' axis_weights)."""
    inside: jax.Array
    i0: jax.Array
    i1: jax.Array
    w0: jax.Array
    w1: jax.Array


def _sample_position(start, bin_index, bin_size, t, grid):
    # The kernels' order of evaluation, so float32 results agree closely.
    return start + bin_index * bin_size + _divide((t + 0.5) * bin_size, grid)


def _axis_weights(pos, extent):
    ext = extent.astype(pos.dtype)
    inside = (pos >= -1) & (pos <= ext) & (extent > 0)  # false for NaN
    pos = jnp.where(pos < 0, 0, pos)  # at 0 exactly the position still moves, as in the kernels
    i0 = jnp.floor(pos)
    edge = i0 >= ext - 1
    i0 = jnp.where(edge, ext - 1, i0)
    pos = jnp.where(edge, i0, pos)
    i1 = jnp.where(edge, i0, i0 + 1)
    w1 = pos - i0
    as_index = lambda i: jnp.where(inside, i, 0).astype(jnp.int32)
    return AxisWeights(inside, as_index(i0), as_index(i1), 1 - w1, w1)


def _corners(base, width, ay, ax):
    """Rows and weights of a sample's four pixels, broadcast over ay and ax."""
    rows = [base + y * width + x for y in (ay.i0, ay.i1) for x in (ax.i0, ax.i1)]
    weights = [wy * wx for wy in (ay.w0, ay.w1) for wx in (ax.w0, ax.w1)]
    return rows, weights, ay.inside & ax.inside


class Rotation(NamedTuple):
    """A rotated ROI's turn and centre ([k] each): sample (yy, xx) of its
    frame sits at y = yy*cos - xx*sin + centre_y, x = yy*sin + xx*cos + centre_x."""
    cos: jax.Array
    sin: jax.Array
    centre_x: jax.Array
    centre_y: jax.Array


class BinAxes(NamedTuple):
    """Per-chunk axis data: geometry and sample ranges along y and x, and
    for roi_align_rotated the rotation (None for roi_align)."""
    geometry: AlignGeometry
    ys: SampleRange   # [k, PH]
    xs: SampleRange   # [k, PW]
    rotation: Rotation = None


def _rotated_geometry(sites, output_size, sampling_ratio, aligned, clockwise):
    """The kernels' rotated_roi: the bins of each box's own frame, its
    rotation, and whether it reads (a negative size does not)."""
    ph, pw = output_size
    offset = 0.5 if aligned else 0.0
    cx, cy, w, h, angle = (sites.boxes[:, i] for i in range(5))
    centre_x, centre_y = cx * sites.scale - offset, cy * sites.scale - offset
    roi_w, roi_h = w * sites.scale, h * sites.scale
    if not aligned:
        roi_w, roi_h = jnp.maximum(roi_w, 1), jnp.maximum(roi_h, 1)
    reads = (roi_w >= 0) & (roi_h >= 0)
    # Degrees to radians in float64 where JAX has it, then rounded (the kernels' order).
    wide = jnp.float64 if jax.config.jax_enable_x64 else angle.dtype
    theta = (angle.astype(wide) * np.pi / 180).astype(angle.dtype)
    theta = -theta if clockwise else theta
    bin_w, bin_h = _divide(roi_w, pw), _divide(roi_h, ph)
    if sampling_ratio > 0:
        grid_w = grid_h = jnp.full_like(roi_w, sampling_ratio)
    else:
        grid_w, grid_h = jnp.ceil(bin_w), jnp.ceil(bin_h)
    g = AlignGeometry(-roi_w / 2, -roi_h / 2, bin_w, bin_h, grid_w, grid_h,
                      jnp.maximum(grid_h * grid_w, 1))
    return g, Rotation(jnp.cos(theta), jnp.sin(theta), centre_x, centre_y), reads


def _frame_bounds(rotation, height, width):
    """The bounding box, in each rotated box's frame, of the map's
    [-1, H] x [-1, W] widened by a pixel: (yy_lo, yy_hi, xx_lo, xx_hi)."""
    ys, xs = [], []
    for corner_y in (-2.0, height.astype(rotation.cos.dtype) + 1):
        for corner_x in (-2.0, width.astype(rotation.cos.dtype) + 1):
            dy, dx = corner_y - rotation.centre_y, corner_x - rotation.centre_x
            ys.append(dy * rotation.cos + dx * rotation.sin)
            xs.append(dx * rotation.cos - dy * rotation.sin)
    return (functools.reduce(jnp.minimum, ys), functools.reduce(jnp.maximum, ys),
            functools.reduce(jnp.minimum, xs), functools.reduce(jnp.maximum, xs))


def _bin_axes(sites, output_size, sampling_ratio, aligned, op="align_avg", clockwise=False):
    ph, pw = output_size
    if op == "rotated":
        g, rotation, reads = _rotated_geometry(sites, output_size, sampling_ratio, aligned,
                                               clockwise)
        yy_lo, yy_hi, xx_lo, xx_hi = _frame_bounds(rotation, sites.height, sites.width)
        valid = sites.valid & reads
        ys = _sample_range(g.y_start, g.bin_h, g.grid_h, yy_lo, yy_hi, ph, valid)
        xs = _sample_range(g.x_start, g.bin_w, g.grid_w, xx_lo, xx_hi, pw, valid)
        return BinAxes(g, ys, xs, rotation)
    g = _align_geometry(sites, output_size, sampling_ratio, aligned)
    lo = jnp.full_like(g.x_start, -1)
    ys = _sample_range(g.y_start, g.bin_h, g.grid_h, lo, sites.height.astype(lo.dtype), ph,
                       sites.valid)
    xs = _sample_range(g.x_start, g.bin_w, g.grid_w, lo, sites.width.astype(lo.dtype), pw,
                       sites.valid)
    return BinAxes(g, ys, xs)


def _axis_at(start, bin_size, grid, extent, bin_index, sample):
    """Weights of sample index `sample` of bins `bin_index` (broadcast)."""
    return _axis_weights(_sample_position(start, bin_index, bin_size, sample, grid), extent)


def _step_samples(sites, axes, ty, tx):
    """Corners of scan step (ty, tx) of every bin of a chunk: [k, PH, PW] each,
    with whether the step is in the bin's range."""
    g, ys, xs, rotation = axes
    ph, pw = ys.lo.shape[1], xs.lo.shape[1]
    col = lambda a: a[:, None]
    y = _sample_position(col(g.y_start), jnp.arange(ph, dtype=g.y_start.dtype), col(g.bin_h),
                         ys.lo + ty, col(g.grid_h))[:, :, None]
    x = _sample_position(col(g.x_start), jnp.arange(pw, dtype=g.x_start.dtype), col(g.bin_w),
                         xs.lo + tx, col(g.grid_w))[:, None, :]
    if rotation is not None:  # y, x are positions in the box's frame
        r = Rotation(*(a[:, None, None] for a in rotation))
        y, x = y * r.cos - x * r.sin + r.centre_y, y * r.sin + x * r.cos + r.centre_x
    ay = _axis_weights(y, sites.height[:, None, None])
    ax = _axis_weights(x, sites.width[:, None, None])
    rows, weights, inside = _corners(sites.base[:, None, None], sites.width[:, None, None],
                                     ay, ax)
    active = (ty < ys.n)[:, :, None] & (tx < xs.n)[:, None, :]
    return rows, weights, inside, active


def _read(table, rows, weights, acc, channels=None):
    """Bilinear value of samples from the table: [..., C] in acc, or with
    `channels` ([..., C_out] input channels per output element) each
    output element's own channel."""
    total = 0
    for r, w in zip(rows, weights):
        if channels is None:
            v = table.at[r].get(mode="fill", fill_value=0)
        else:
            v = _channel_read(table, jnp.broadcast_to(r[..., None], r.shape + channels.shape[-1:]),
                              channels)
        total = total + w[..., None] * v.astype(acc)
    return total


def _grid_loop(rows, cols, body, init):
    """body(i, j, carry) for i < rows, j < cols (traced counts), row by row."""
    return lax.fori_loop(0, rows * cols, lambda t, carry: body(t // cols, t % cols, carry),
                         init)


def _scan(axes, body, init):
    """body(ty, tx, carry) over the chunk's scan steps, in each bin's order
    (rows of samples, then columns), for the chunk's largest range."""
    return _grid_loop(jnp.max(axes.ys.n, initial=0), jnp.max(axes.xs.n, initial=0), body,
                      init)


# ------------------------------------------------------- roi_align kernels

def _align_forward_chunk(table, sites, output_size, sampling_ratio, aligned, op, clockwise):
    """[k, PH, PW, C] (and the packed argmax for "align_max") of one chunk;
    also roi_align_rotated and ps_roi_align, which average as "avg" does."""
    acc = sites.scale.dtype
    axes = _bin_axes(sites, output_size, sampling_ratio, aligned, op, clockwise)
    channels = _position_sensitive_channels(output_size, table.shape[1]) if op == "ps_align" \
        else None
    k, (ph, pw) = sites.valid.shape[0], output_size
    c = table.shape[1] if channels is None else channels.shape[-1]

    def value(ty, tx):
        rows, weights, inside, active = _step_samples(sites, axes, ty, tx)
        v = jnp.where(inside[..., None], _read(table, rows, weights, acc, channels), 0)
        return v, active[..., None]

    if op != "align_max":
        def add(ty, tx, total):
            v, active = value(ty, tx)
            return total + jnp.where(active, v, 0)

        total = _scan(axes, add, jnp.zeros((k, ph, pw, c), acc))
        return _divide(total, axes.geometry.count[:, None, None, None]), None

    def keep_max(ty, tx, carry):
        best, packed = carry
        v, active = value(ty, tx)
        take = active & (v > best)  # first strict maximum wins; NaN never does
        here = (ty * axes.xs.n[:, None, :] + tx)[..., None]
        return jnp.where(take, v, best), jnp.where(take, here, packed)

    init = (jnp.full((k, ph, pw, c), -jnp.inf, acc), jnp.full((k, ph, pw, c), -1, jnp.int32))
    best, packed = _scan(axes, keep_max, init)
    return _settle_max(axes, best, packed)


def _settle_max(axes, best, packed):
    """The kernels' settle_max: samples outside the scanned ranges read 0
    and win against a negative maximum, or a zero one they precede."""
    ys, xs = axes.ys, axes.xs
    y_complete, x_complete = ys.complete[:, :, None, None], xs.complete[:, None, :, None]
    y_lo, x_lo = ys.lo[:, :, None, None], xs.lo[:, None, :, None]
    width = jnp.maximum(xs.n[:, None, :, None], 1)
    iy = y_lo + packed // width
    precedes = (y_lo > 0) | (x_lo > 0) | (~x_complete & (iy > 0))
    lose = (packed >= 0) & ~(y_complete & x_complete) & ((best < 0) | ((best == 0) & precedes))
    packed = jnp.where(lose, -1, packed)
    return jnp.where(packed < 0, 0, best), packed


def _winner_corners(sites, axes, packed):
    """Corners of each output element's winning sample ([k, PH, PW, C]),
    and whether it has one (the kernels' max backward guards)."""
    g, ys, xs, _ = axes
    ph, pw = ys.lo.shape[1], xs.lo.shape[1]
    width = xs.n[:, None, :, None]
    safe = jnp.maximum(width, 1)
    ty, tx = packed // safe, packed % safe
    ok = (packed >= 0) & (width > 0) & (ty < ys.n[:, :, None, None])
    col = lambda a: a[:, None, None, None]
    ay = _axis_at(col(g.y_start), col(g.bin_h), col(g.grid_h), col(sites.height),
                  jnp.arange(ph, dtype=g.y_start.dtype)[:, None, None],
                  ys.lo[:, :, None, None] + ty)
    ax = _axis_at(col(g.x_start), col(g.bin_w), col(g.grid_w), col(sites.width),
                  jnp.arange(pw, dtype=g.x_start.dtype)[:, None],
                  xs.lo[:, None, :, None] + tx)
    rows, weights, inside = _corners(col(sites.base), col(sites.width), ay, ax)
    return rows, weights, ok & inside


def _align_forward(table, sites, output_size, sampling_ratio, aligned, op, clockwise):
    ph, pw = output_size
    chunk = _chunk_size(sites.valid.shape[0], ph * pw * table.shape[1] * 4 * 16)
    chunks, _ = _in_chunks(list(sites), chunk)

    def body(s):
        out, packed = _align_forward_chunk(table, Sites(*s), output_size, sampling_ratio,
                                           aligned, op, clockwise)
        return (out, packed) if op == "align_max" else (out,)

    return _joined(lax.map(body, chunks), sites.valid.shape[0])


def _align_avg_backward(grad, sites, rows_total, channels_in, output_size, sampling_ratio,
                        aligned, op, clockwise, image_by_image=False):
    """The adjoint of "avg" (and of roi_align_rotated and ps_roi_align):
    [rows, C] gradient in the geometry dtype."""
    acc = sites.scale.dtype
    ph, pw = output_size
    c = grad.shape[-1]
    channels = _position_sensitive_channels(output_size, channels_in) if op == "ps_align" \
        else None
    # Image by image (vmapped), XLA copies the loop-carried table at each
    # chunk: chunks then hold up to the table's size of work, so there are few.
    table_bytes = rows_total * channels_in * jnp.dtype(acc).itemsize
    chunk = _chunk_size(sites.valid.shape[0], ph * pw * c * 4 * 16,
                        at_least=table_bytes if image_by_image else 0)
    (grads, *chunks), steps = _in_chunks([grad.astype(acc), *sites], chunk)

    def one_chunk(i, table):
        s = Sites(*(a[i] for a in chunks))
        axes = _bin_axes(s, output_size, sampling_ratio, aligned, op, clockwise)
        g = _divide(grads[i], axes.geometry.count[:, None, None, None])

        def scatter(ty, tx, table):
            rows, weights, inside, active = _step_samples(s, axes, ty, tx)
            keep = inside & active
            for r, w in zip(rows, weights):
                r = jnp.where(keep, r, rows_total)
                if channels is None:
                    table = table.at[r].add(w[..., None] * g, mode="drop")
                else:
                    table = _channel_add(table, jnp.broadcast_to(r[..., None], g.shape),
                                         w[..., None] * g, channels)
            return table

        return _scan(axes, scatter, table)

    return lax.fori_loop(0, steps, one_chunk, jnp.zeros((rows_total, channels_in), acc))


def _channel_read(table, rows, channel=None):
    """table[rows[..., c], channel[..., c]] (channel c by default): each
    output element's own pixel and channel; 0 past the end."""
    if channel is None:
        channel = lax.broadcasted_iota(jnp.int32, rows.shape, rows.ndim - 1)
    channel = jnp.broadcast_to(channel, rows.shape)
    if table.size < _INT32_LIMIT:  # flat indices: no index array to fold at compile time
        return table.reshape(-1).at[rows * table.shape[1] + channel].get(
            mode="fill", fill_value=0)
    return table.at[rows, channel].get(mode="fill", fill_value=0)


def _channel_add(table, rows, values, channel=None):
    """table[rows[..., c], channel[..., c]] += values (rows past the end are
    dropped)."""
    if channel is None:
        channel = lax.broadcasted_iota(jnp.int32, rows.shape, rows.ndim - 1)
    channel = jnp.broadcast_to(channel, rows.shape)
    if table.size < _INT32_LIMIT:
        flat = table.reshape(-1).at[rows * table.shape[1] + channel].add(values, mode="drop")
        return flat.reshape(table.shape)
    return table.at[rows, channel].add(values, mode="drop")


def _align_winner_read(table, sites, packed, output_size, sampling_ratio, aligned):
    """Each output element's value read at its recorded winning sample."""
    axes = _bin_axes(sites, output_size, sampling_ratio, aligned)
    rows, weights, keep = _winner_corners(sites, axes, packed)
    total = 0
    for r, w in zip(rows, weights):
        total = total + w * _channel_read(table, r).astype(w.dtype)
    return jnp.where(keep, total, 0)


def _align_winner_scatter(grad, sites, packed, rows_total, output_size, sampling_ratio,
                          aligned):
    """The adjoint of _align_winner_read: [rows, C] in the geometry dtype."""
    acc = sites.scale.dtype
    axes = _bin_axes(sites, output_size, sampling_ratio, aligned)
    rows, weights, keep = _winner_corners(sites, axes, packed)
    table = jnp.zeros((rows_total, grad.shape[-1]), acc)
    for r, w in zip(rows, weights):
        table = _channel_add(table, jnp.where(keep, r, rows_total), w * grad.astype(acc))
    return table


# ---------------------------------------------------------------- roi_pool

def _round_half_away(v):
    """C round(): halves go away from zero (jnp.round rounds them to even)."""
    whole = jnp.trunc(v)
    return whole + jnp.where(jnp.abs(v - whole) >= 0.5, jnp.sign(v), 0)


def _pool_bins(start, size, bins, length):
    """Bin bounds [K, bins] along one axis, clamped to [0, length], as int32."""
    p = jnp.arange(bins, dtype=start.dtype)
    bin_size = _divide(size, bins)[:, None]
    lo = jnp.floor(p * bin_size) + start[:, None]
    hi = jnp.ceil((p + 1) * bin_size) + start[:, None]
    return (jnp.clip(a, 0, length).astype(jnp.int32) for a in (lo, hi))


def _pool_windows(sites, output_size, height, width, inclusive_end=True):
    """roi_pool's bins (inclusive end: one pixel more) or, with
    inclusive_end=False, ps_roi_pool's, as the kernels' pool_roi."""
    ph, pw = output_size
    extra = 1 if inclusive_end else 0
    x1, y1, x2, y2 = (_round_half_away(sites.boxes[:, i] * sites.scale) for i in range(4))
    h0, h1 = _pool_bins(y1, jnp.maximum(y2 - y1 + extra, 1), ph, height)
    w0, w1 = _pool_bins(x1, jnp.maximum(x2 - x1 + extra, 1), pw, width)
    h1 = jnp.where(sites.valid[:, None], h1, h0)  # invalid ROIs: empty bins, no work
    return h0, h1, w0, w1


def _pool_forward_chunk(table, width, base, h0, h1, w0, w1):
    """[k, PH, PW, C] maxima and argmax (h*W + w, -1 for none) of one chunk.

    The scan covers a window as tall as the chunk's tallest bin and as wide
    as its widest, row by row, so the first strict maximum wins."""
    k, ph = h0.shape
    pw, c = w0.shape[1], table.shape[1]

    def step(ty, tx, state):
        best, where = state
        rows, cols = h0 + ty, w0 + tx
        inside = (rows < h1)[:, :, None] & (cols < w1)[:, None, :]
        pixel = rows[:, :, None] * width + cols[:, None, :]
        v = table.at[jnp.where(inside, base[:, None, None] + pixel, 0)].get(mode="clip")
        take = inside[..., None] & (v > best)  # NaN never wins
        return jnp.where(take, v, best), jnp.where(take, pixel[..., None], where)

    init = (jnp.full((k, ph, pw, c), -jnp.inf, table.dtype),
            jnp.full((k, ph, pw, c), -1, jnp.int32))
    best, where = _grid_loop(jnp.max(h1 - h0, initial=0), jnp.max(w1 - w0, initial=0), step,
                             init)
    return jnp.where(where < 0, 0, best), where


def _pool_forward(table, sites, output_size, height, width):
    h0, h1, w0, w1 = _pool_windows(sites, output_size, height, width)
    ph, pw = output_size
    k = h0.shape[0]
    chunk = _chunk_size(k, ph * pw * table.shape[1] * 12)
    chunks, _ = _in_chunks([sites.base, h0, h1, w0, w1], chunk)
    outs = lax.map(lambda a: _pool_forward_chunk(table, width, *a), chunks)
    return _joined(outs, k)


# ------------------------------------------------- position-sensitive pooling

def _position_sensitive_channels(output_size, channels_in):
    """[PH, PW, C_out]: the input channel each output element reads,
    (c*PH + ph)*PW + pw."""
    ph, pw = output_size
    c_out = channels_in // (ph * pw)
    c = np.arange(c_out)[None, None, :]
    return jnp.asarray((c * ph + np.arange(ph)[:, None, None]) * pw
                       + np.arange(pw)[None, :, None], jnp.int32)


def _ps_pool_steps(width, base, h0, h1, w0, w1, channels, body, init):
    """body(rows, keep, carry) over a chunk's window steps: rows [k, PH, PW,
    C_out] of each bin's pixel at that step, keep whether it is in the bin."""
    def step(ty, tx, carry):
        rows, cols = h0 + ty, w0 + tx
        inside = (rows < h1)[:, :, None] & (cols < w1)[:, None, :]
        pixel = base[:, None, None] + rows[:, :, None] * width + cols[:, None, :]
        full = jnp.broadcast_to(pixel[..., None], inside.shape + channels.shape[-1:])
        return body(full, inside[..., None], carry)

    return _grid_loop(jnp.max(h1 - h0, initial=0), jnp.max(w1 - w0, initial=0), step, init)


def _bin_area(h0, h1, w0, w1):
    return ((h1 - h0)[:, :, None] * (w1 - w0)[:, None, :])[..., None]


def _ps_pool_forward(table, sites, output_size, height, width, acc):
    h0, h1, w0, w1 = _pool_windows(sites, output_size, height, width, inclusive_end=False)
    channels = _position_sensitive_channels(output_size, table.shape[1])
    (ph, pw), k = output_size, h0.shape[0]
    chunk = _chunk_size(k, ph * pw * channels.shape[-1] * 12)
    chunks, _ = _in_chunks([sites.base, h0, h1, w0, w1], chunk)
    rows_total = table.shape[0]

    def one_chunk(a):
        base, h0, h1, w0, w1 = a
        add = lambda rows, keep, total: total + jnp.where(
            keep, _channel_read(table, jnp.where(keep, rows, rows_total), channels), 0).astype(acc)
        total = _ps_pool_steps(width, base, h0, h1, w0, w1, channels, add,
                               jnp.zeros((h0.shape[0], ph, pw, channels.shape[-1]), acc))
        area = _bin_area(h0, h1, w0, w1)
        return (jnp.where(area > 0, _divide(total, jnp.maximum(area, 1).astype(acc)), 0),)

    return _joined(lax.map(one_chunk, chunks), k)


def _ps_pool_backward(grad, sites, rows_total, channels_in, output_size, height, width):
    acc = sites.scale.dtype
    h0, h1, w0, w1 = _pool_windows(sites, output_size, height, width, inclusive_end=False)
    channels = _position_sensitive_channels(output_size, channels_in)
    area = _bin_area(h0, h1, w0, w1)
    g = jnp.where(area > 0, _divide(grad.astype(acc), jnp.maximum(area, 1).astype(acc)), 0)
    add = lambda rows, keep, table: _channel_add(table, jnp.where(keep, rows, rows_total), g,
                                                 channels)
    return _ps_pool_steps(width, sites.base, h0, h1, w0, w1, channels, add,
                          jnp.zeros((rows_total, channels_in), acc))


def _pool_winner_rows(sites, argmax, pixels):
    ok = (argmax >= 0) & (argmax < pixels) & sites.valid[:, None, None, None]
    return sites.base[:, None, None, None] + argmax, ok


# ---------------------------------------------------------------- prroi_pool

def _tent_cumulative(v):
    """The integral of the tent max(0, 1 - |u|) from -infinity to v."""
    v = jnp.clip(v, -1, 1)
    return jnp.where(v <= 0, 0.5 * (v + 1) ** 2, 1 - 0.5 * (1 - v) ** 2)


def _tent_integral(lo, hi, pixel):
    """The integral of pixel `pixel`'s tent over [lo, hi]."""
    at = pixel.astype(lo.dtype)
    return _tent_cumulative(hi - at) - _tent_cumulative(lo - at)


class PreciseBins(NamedTuple):
    """Each ROI's bin edges ([k, PH] in y, [k, PW] in x), the pixels whose
    tents meet them ([lo, hi) as int32) and the bins' area ([k])."""
    y_lo: jax.Array
    y_hi: jax.Array
    x_lo: jax.Array
    x_hi: jax.Array
    h0: jax.Array
    h1: jax.Array
    w0: jax.Array
    w1: jax.Array
    area: jax.Array


def _precise_bins(sites, output_size, height, width):
    """The kernels' precise_bin_of: no half-pixel shift, sizes at least 0."""
    ph, pw = output_size
    x1, y1, x2, y2 = (sites.boxes[:, i] * sites.scale for i in range(4))
    bin_w = _divide(jnp.maximum(x2 - x1, 0), pw)
    bin_h = _divide(jnp.maximum(y2 - y1, 0), ph)
    y_lo = y1[:, None] + jnp.arange(ph, dtype=y1.dtype) * bin_h[:, None]
    x_lo = x1[:, None] + jnp.arange(pw, dtype=x1.dtype) * bin_w[:, None]
    y_hi, x_hi = y_lo + bin_h[:, None], x_lo + bin_w[:, None]
    span = lambda lo, hi, n: (jnp.clip(jnp.floor(lo), 0, n).astype(jnp.int32),
                              jnp.clip(jnp.floor(hi) + 2, 0, n).astype(jnp.int32))
    h0, h1 = span(y_lo, y_hi, height)
    w0, w1 = span(x_lo, x_hi, width)
    area = jnp.where(sites.valid, bin_h * bin_w, 0)
    reads = (area > 0)[:, None]
    return PreciseBins(y_lo, y_hi, x_lo, x_hi, h0, jnp.where(reads, h1, h0), w0,
                       jnp.where(reads, w1, w0), area)


def _precise_steps(bins, base, width, body, init):
    """body(rows, weights, carry) over a chunk's pixel steps: rows [k, PH,
    PW] of each bin's pixel at that step (past the table's end when the
    step is not in the bin) and its tent integrals over the bin."""
    def step(ty, tx, carry):
        ys, xs = bins.h0 + ty, bins.w0 + tx
        inside = (ys < bins.h1)[:, :, None] & (xs < bins.w1)[:, None, :]
        weight = (_tent_integral(bins.y_lo, bins.y_hi, ys)[:, :, None]
                  * _tent_integral(bins.x_lo, bins.x_hi, xs)[:, None, :])
        rows = base[:, None, None] + ys[:, :, None] * width + xs[:, None, :]
        return body(rows, inside, jnp.where(inside, weight, 0), carry)

    return _grid_loop(jnp.max(bins.h1 - bins.h0, initial=0),
                      jnp.max(bins.w1 - bins.w0, initial=0), step, init)


def _per_area(total, area):
    area = area[:, None, None, None]
    return jnp.where(area > 0, _divide(total, jnp.where(area > 0, area, 1)), 0)


def _prroi_forward(table, sites, output_size, height, width):
    (ph, pw), k, c = output_size, sites.valid.shape[0], table.shape[1]
    acc, rows_total = sites.scale.dtype, table.shape[0]
    chunk = _chunk_size(k, ph * pw * c * 12)
    chunks, _ = _in_chunks(list(sites), chunk)

    def one_chunk(s):
        s = Sites(*s)
        bins = _precise_bins(s, output_size, height, width)

        def add(rows, inside, weight, total):
            v = table.at[jnp.where(inside, rows, rows_total)].get(mode="fill", fill_value=0)
            return total + weight[..., None] * v.astype(acc)

        total = _precise_steps(bins, s.base, width, add, jnp.zeros((s.valid.shape[0], ph, pw, c), acc))
        return (_per_area(total, bins.area),)

    return _joined(lax.map(one_chunk, chunks), k)


def _prroi_backward(grad, sites, rows_total, channels, output_size, height, width):
    acc = sites.scale.dtype
    bins = _precise_bins(sites, output_size, height, width)
    g = _per_area(grad.astype(acc), bins.area)

    def scatter(rows, inside, weight, table):
        return table.at[jnp.where(inside, rows, rows_total)].add(weight[..., None] * g, mode="drop")

    return _precise_steps(bins, sites.base, width, scatter, jnp.zeros((rows_total, channels), acc))


# ------------------------------------------------------ the primitives
#
# Per-image boxes ([N, L, 4]) are pooled image by image under vmap, so every
# gather and scatter has the image as a batch dimension: with the images
# split over devices the partitioner splits them too, with no communication.

def _image_by_image(fn, *args, **params):
    """fn over one image at a time: every arg leads with the image axis."""
    return jax.vmap(lambda *a: jax.tree.map(lambda o: o[0], fn(*(x[None] for x in a),
                                                              **params)))(*args)


def _several_images(boxes):
    return boxes.ndim == 3 and boxes.shape[0] > 1


def _one_image(shape):
    return (1,) + tuple(shape[1:])


def _nhwc(shape, layout):
    return tuple(shape) if layout == "NHWC" else (shape[0], shape[2], shape[3], shape[1])


def _from_table(table, shape, layout):
    """Rows of a [rows, C] table back to one map of `shape` in `layout`."""
    n, h, w, c = _nhwc(shape, layout)
    x = table.reshape(n, h, w, c)
    return x if layout == "NHWC" else jnp.transpose(x, (0, 3, 1, 2))


# The three computations on a table of rows and the sites of the ROIs; the
# primitives below only build those for one map or for a pyramid. `pixels`
# is (H, W) of the one map roi_pool reads.

LINEAR_OPS = ("align_avg", "rotated", "ps_align", "ps_pool", "prroi")
POSITION_SENSITIVE_OPS = ("ps_align", "ps_pool")
# The ops whose output moves with the box (roi_pool and ps_roi_pool round it).
BOX_OPS = ("align_avg", "align_max", "rotated", "ps_align", "prroi")


def _pooled(table, sites, dtype, pixels, *, op, output_size, sampling_ratio, aligned,
            clockwise=False, winners=True, **_):
    """[out] or [out, argmax] (the max ops with `winners`), each [K, PH, PW, C_out]."""
    k, (ph, pw), c = sites.valid.shape[0], output_size, table.shape[1]
    c_out = c // (ph * pw) if op in POSITION_SENSITIVE_OPS else c
    if k == 0 or c_out == 0 or table.shape[0] == 0:
        outs = [jnp.zeros((k, ph, pw, c_out), dtype)]
        if op not in LINEAR_OPS:
            outs.append(jnp.full((k, ph, pw, c_out), -1, jnp.int32))
    elif op == "pool":
        outs = _pool_forward(table, sites, output_size, *pixels)
    elif op == "ps_pool":
        outs = _ps_pool_forward(table, sites, output_size, *pixels, sites.scale.dtype)
    elif op == "prroi":
        outs = _prroi_forward(table, sites, output_size, *pixels)
    else:
        outs = _align_forward(table, sites, output_size, sampling_ratio,
                              aligned or op == "ps_align", op, clockwise)
    return [outs[0].astype(dtype)] + (outs[1:] if winners else [])


def _pulled_back(grad, argmax, sites, rows, channels, pixels, *, op, output_size,
                 sampling_ratio, aligned, clockwise=False, image_by_image=False, **_):
    """The adjoint of _pooled: a [rows, C] table in the geometry dtype."""
    acc = sites.scale.dtype
    if grad.shape[0] == 0 or 0 in grad.shape[1:] or rows == 0 or channels == 0:
        return jnp.zeros((rows, channels), acc)
    if op == "ps_pool":
        return _ps_pool_backward(grad, sites, rows, channels, output_size, *pixels)
    if op == "prroi":
        return _prroi_backward(grad, sites, rows, channels, output_size, *pixels)
    if op in LINEAR_OPS:
        return _align_avg_backward(grad, sites, rows, channels, output_size, sampling_ratio,
                                   aligned or op == "ps_align", op, clockwise, image_by_image)
    if op == "align_max":
        return _align_winner_scatter(grad, sites, argmax, rows, output_size, sampling_ratio,
                                     aligned)
    where, ok = _pool_winner_rows(sites, argmax, pixels[0] * pixels[1])
    return _channel_add(jnp.zeros((rows, channels), acc), jnp.where(ok, where, rows),
                        grad.astype(acc))


def _read_winners(table, argmax, sites, dtype, pixels, *, op, output_size, sampling_ratio,
                  aligned, **_):
    """The table read at each output element's recorded winner."""
    if 0 in argmax.shape or table.shape[0] == 0:
        return jnp.zeros(argmax.shape, dtype)
    if op == "pool":
        where, ok = _pool_winner_rows(sites, argmax, pixels[0] * pixels[1])
        out = jnp.where(ok, _channel_read(table, jnp.where(ok, where, table.shape[0])), 0)
    else:
        out = _align_winner_read(table, sites, argmax, output_size, sampling_ratio, aligned)
    return out.astype(dtype)


def roi_forward(features, rois, **params):
    """roi_forward's results: [out] for the linear ops and `winners=False`,
    [out, argmax] otherwise."""
    if _several_images(rois):
        return _image_by_image(roi_forward, features, rois, **params)
    layout = params["layout"]
    table, shape = _table(features, layout)
    sites = _single_map_sites(rois.astype(geometry_dtype(features.dtype)), shape,
                              params["spatial_scale"])
    outs = _pooled(table, sites, features.dtype, shape[1:3], **params)
    return [_in_layout(o, layout, _lead(rois)) for o in outs]


def roi_backward(grad_out, rois, *argmax, features_shape, **params):
    """The gradient with respect to the features, in the geometry dtype."""
    if _several_images(rois):
        return _image_by_image(roi_backward, grad_out, rois, *argmax,
                               features_shape=_one_image(features_shape), image_by_image=True,
                               **params)
    layout = params["layout"]
    shape = _nhwc(features_shape, layout)
    sites = _single_map_sites(rois.astype(geometry_dtype(grad_out.dtype)), shape,
                              params["spatial_scale"])
    table = _pulled_back(_from_layout(grad_out, layout),
                         _from_layout(argmax[0], layout) if argmax else None, sites,
                         shape[0] * shape[1] * shape[2], shape[3], shape[1:3], **params)
    return _from_table(table, features_shape, layout)


def roi_winner(features, rois, argmax, **params):
    """The features read at each output element's recorded winner: the
    forward-mode derivative of the max modes (linear in features)."""
    if _several_images(rois):
        return _image_by_image(roi_winner, features, rois, argmax, **params)
    layout = params["layout"]
    table, shape = _table(features, layout)
    sites = _single_map_sites(rois.astype(geometry_dtype(features.dtype)), shape,
                              params["spatial_scale"])
    out = _read_winners(table, _from_layout(argmax, layout), sites, features.dtype,
                        shape[1:3], **params)
    return _in_layout(out, layout, _lead(rois))


# A pyramid: per-image boxes, an int32 level per box, one map per level,
# stacked in one table.

def _pyramid(maps, boxes, levels, params):
    tables, shapes = zip(*(_table(m, params["layout"]) for m in maps))
    sites = _pyramid_sites(boxes.astype(geometry_dtype(maps[0].dtype)), levels, shapes,
                           params["spatial_scales"])
    return jnp.concatenate(tables, axis=0), sites


def levels_forward(boxes, levels, *maps, **params):
    if _several_images(boxes):
        return _image_by_image(levels_forward, boxes, levels, *maps, **params)
    table, sites = _pyramid(maps, boxes, levels, params)
    outs = _pooled(table, sites, maps[0].dtype, None, **params)
    return [_in_layout(o, params["layout"], boxes.shape[:2]) for o in outs]


def levels_backward(grad_out, boxes, levels, *argmax, map_shapes, **params):
    if _several_images(boxes):
        return _image_by_image(levels_backward, grad_out, boxes, levels, *argmax,
                               map_shapes=tuple(_one_image(s) for s in map_shapes),
                               image_by_image=True, **params)
    layout = params["layout"]
    shapes = [_nhwc(s, layout) for s in map_shapes]
    sites = _pyramid_sites(boxes.astype(geometry_dtype(grad_out.dtype)), levels, shapes,
                           params["spatial_scales"])
    starts, rows = _map_rows(shapes)
    table = _pulled_back(_from_layout(grad_out, layout),
                         _from_layout(argmax[0], layout) if argmax else None, sites, rows,
                         shapes[0][3], None, **params)
    return [_from_table(table[start:end], shape, layout)
            for start, end, shape in zip(starts, starts[1:] + [rows], map_shapes)]


def levels_winner(boxes, levels, *maps_and_argmax, **params):
    if _several_images(boxes):
        return _image_by_image(levels_winner, boxes, levels, *maps_and_argmax, **params)
    *maps, argmax = maps_and_argmax
    table, sites = _pyramid(maps, boxes, levels, params)
    out = _read_winners(table, _from_layout(argmax, params["layout"]), sites, maps[0].dtype,
                        None, **params)
    return _in_layout(out, params["layout"], boxes.shape[:2])


# The derivative with respect to the ROIs: JAX's forward mode through the
# functions above (the sample positions, bilinear weights and tent integrals
# are differentiable in the box; grids, counts and roundings are integers or
# behind floors, so their derivative is 0). Each output depends on its own
# ROI only, so one forward-mode pass per coordinate, all coordinates at
# once, gives every ROI's cotangent. Sums run in the geometry dtype.

def _in_geometry_dtype(features):
    return [f.astype(geometry_dtype(f.dtype)) for f in features]


def _roi_tangent_out(value_of, rois, roi_tangents):
    return jax.jvp(value_of, (rois,), (roi_tangents.astype(rois.dtype),))[1]


def _roi_cotangent(value_of, rois, grad_out):
    """d sum(grad_out * value_of(rois)) / d rois; 0 for a [K, 5] batch index."""
    coords = rois.shape[-1]
    first = 1 if rois.ndim == 2 else 0
    basis = jnp.eye(coords, dtype=rois.dtype)[first:]
    lead = rois.ndim - 1
    tangents = basis.reshape((coords - first,) + (1,) * lead + (coords,))
    jacobian = jax.vmap(lambda t: _roi_tangent_out(value_of, rois, jnp.broadcast_to(t, rois.shape)))(
        tangents)
    weighted = jacobian * grad_out.astype(jacobian.dtype)[None]
    per_roi = jnp.sum(weighted, axis=tuple(range(1 + lead, weighted.ndim)))
    cotangent = jnp.moveaxis(per_roi, 0, -1)
    if first:
        cotangent = jnp.concatenate([jnp.zeros_like(cotangent[..., :1]), cotangent], axis=-1)
    return cotangent.astype(rois.dtype)


def _single_map_value(features, argmax, params):
    (features,) = _in_geometry_dtype([features])
    if argmax:
        return lambda r: roi_winner(features, r, argmax[0], **params)
    return lambda r: roi_forward(features, r, **params)[0]


def roi_box_jvp(features, rois, roi_tangents, *argmax, **params):
    """The output's tangent for the ROIs' tangents, in the features' dtype."""
    out = _roi_tangent_out(_single_map_value(features, argmax, params), rois, roi_tangents)
    return out.astype(features.dtype)


def roi_box_vjp(features, rois, grad_out, *argmax, **params):
    """The ROIs' cotangent, in their dtype."""
    return _roi_cotangent(_single_map_value(features, argmax, params), rois, grad_out)


def _levels_value(levels, argmax_and_maps, params):
    linear = params["op"] in LINEAR_OPS
    argmax = [] if linear else list(argmax_and_maps[:1])
    maps = _in_geometry_dtype(argmax_and_maps[0 if linear else 1:])
    if argmax:
        return lambda b: levels_winner(b, levels, *maps, argmax[0], **params)
    return lambda b: levels_forward(b, levels, *maps, **params)[0]


def levels_box_jvp(boxes, levels, box_tangents, *argmax_and_maps, **params):
    out = _roi_tangent_out(_levels_value(levels, argmax_and_maps, params), boxes, box_tangents)
    return out.astype(argmax_and_maps[-1].dtype)


def levels_box_vjp(boxes, levels, grad_out, *argmax_and_maps, **params):
    return _roi_cotangent(_levels_value(levels, argmax_and_maps, params), boxes, grad_out)
