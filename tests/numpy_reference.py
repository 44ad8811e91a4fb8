"""Float64 NumPy references for roi_pool, roi_align, roi_align_rotated,
ps_roi_align, ps_roi_pool and prroi_pool, written from semantics.md.

Plain loops over ROIs, bins and samples, vectorised only over channels. The
geometry (box mapping, bins, sample positions, bilinear weights) is evaluated in
`geom` (np.float32 or np.float64) in the order the formulas are written, so the
discontinuous parts (rounding, floor/ceil, the adaptive grid) see the same
numbers as a kernel computing in that precision; feature values are always
accumulated in float64.

Every public function takes features in `layout` ("NCHW" or "NHWC") and ROIs as
[K, 5] or [N, L, 4] ([K, 6] or [N, L, 5] for roi_align_rotated); internally
everything is NCHW with [K, 5] ([K, 6]) rows.
"""

import numpy as np


# ---------------------------------------------------------------- layouts

def _to_nchw(x, layout):
    x = np.asarray(x, dtype=np.float64)
    return x if layout == "NCHW" else x.transpose(0, 3, 1, 2)


def _from_nchw(y, layout):
    # works for [K, C, PH, PW] outputs and [N, C, H, W] gradients alike
    return y if layout == "NCHW" else np.moveaxis(y, 1, -1)


def _rows(rois, geom):
    """[K, 5] rows in `geom`, plus the leading output shape ([K] or [N, L])."""
    rois = np.asarray(rois)
    if rois.ndim == 3:
        n, l, _ = rois.shape
        b = np.repeat(np.arange(n, dtype=np.float64), l)[:, None]
        rows = np.concatenate([b, rois.reshape(n * l, 4).astype(np.float64)], 1)
        return rows.astype(geom), (n, l)
    return rois.astype(geom), (rois.shape[0],)


def _reshape_out(y, lead, layout):
    y = _from_nchw(y, layout)
    return y.reshape(lead + y.shape[1:])


def _dy_to_nchw(dy, lead, layout):
    dy = np.asarray(dy, dtype=np.float64)
    dy = dy.reshape((int(np.prod(lead)),) + dy.shape[len(lead):])
    return dy if layout == "NCHW" else np.moveaxis(dy, -1, 1)


def _pair(output_size):
    if isinstance(output_size, int):
        return output_size, output_size
    return int(output_size[0]), int(output_size[1])


def _batch(row, n):
    """Image index of a ROI row, or None when the ROI is not well formed."""
    if not np.all(np.isfinite(row)):
        return None
    b = float(row[0])
    if not (0 <= b < n):
        return None
    return int(b)  # truncation toward zero


# ---------------------------------------------------------------- roi_pool

def _c_round(v):
    """Round half away from zero, exactly, in v's own dtype."""
    a = abs(v)
    f = np.floor(a)
    r = f + 1 if a - f >= 0.5 else f
    return int(r) if v >= 0 else -int(r)


def _pool_bins(row, h, w, ph_n, pw_n, s, g, inclusive_end=True):
    """Yield (ph, pw, h0, h1, w0, w1) for one ROI row: roi_pool's rounded box
    with an inclusive end (+1), or ps_roi_pool's without."""
    s = g(s)
    xs = _c_round(row[1] * s)
    ys = _c_round(row[2] * s)
    xe = _c_round(row[3] * s)
    ye = _c_round(row[4] * s)
    extra = 1 if inclusive_end else 0
    rw = max(xe - xs + extra, 1)
    rh = max(ye - ys + extra, 1)
    bh = g(rh) / g(ph_n)
    bw = g(rw) / g(pw_n)
    for ph in range(ph_n):
        h0 = min(max(int(np.floor(g(ph) * bh)) + ys, 0), h)
        h1 = min(max(int(np.ceil(g(ph + 1) * bh)) + ys, 0), h)
        for pw in range(pw_n):
            w0 = min(max(int(np.floor(g(pw) * bw)) + xs, 0), w)
            w1 = min(max(int(np.ceil(g(pw + 1) * bw)) + xs, 0), w)
            yield ph, pw, h0, h1, w0, w1


def _first_strict_max(vals):
    """Per column of vals [S, C]: index of the first value strictly above
    -inf and every value before it (so NaN and -inf never win); -1 where
    nothing wins."""
    s, c = vals.shape
    win = np.full(c, -1, dtype=np.int64)
    best = np.full(c, -np.inf)
    for i in range(s):
        v = vals[i]
        take = v > best
        win[take] = i
        best[take] = v[take]
    return win


def roi_pool(x, rois, output_size, spatial_scale=1.0, *, layout="NCHW",
             geom=np.float64):
    """Returns (out, argmax); argmax is h*W + w, or -1 for a bin with no winner."""
    x = _to_nchw(x, layout)
    n, c, h, w = x.shape
    ph_n, pw_n = _pair(output_size)
    rows, lead = _rows(rois, geom)
    out = np.zeros((rows.shape[0], c, ph_n, pw_n))
    arg = np.full(out.shape, -1, dtype=np.int64)
    for k, row in enumerate(rows):
        b = _batch(row, n)
        if b is None:
            continue
        for ph, pw, h0, h1, w0, w1 in _pool_bins(row, h, w, ph_n, pw_n,
                                                spatial_scale, geom):
            if h1 <= h0 or w1 <= w0:
                continue
            # rows then columns: C order of the window
            window = x[b, :, h0:h1, w0:w1].reshape(c, (h1 - h0) * (w1 - w0)).T
            win = _first_strict_max(window)
            ok = win >= 0
            ww = w1 - w0
            idx = (h0 + win // ww) * w + (w0 + win % ww)
            out[k, ok, ph, pw] = window[win[ok], np.nonzero(ok)[0]]
            arg[k, ok, ph, pw] = idx[ok]
    return _reshape_out(out, lead, layout), _reshape_out(arg, lead, layout)


def roi_pool_vjp(x, rois, output_size, spatial_scale, dy, *, layout="NCHW",
                 geom=np.float64):
    """dX for cotangent dy: each bin's dy goes to its argmax pixel."""
    x_nchw = _to_nchw(x, layout)
    n, c, h, w = x_nchw.shape
    rows, lead = _rows(rois, geom)
    _, arg = roi_pool(x_nchw, rows, output_size, spatial_scale, geom=geom)
    dy = _dy_to_nchw(dy, lead, layout)
    dx = np.zeros((n, c, h * w))
    for k, row in enumerate(rows):
        b = _batch(row, n)
        if b is None:
            continue
        for ci in range(c):
            for a, d in zip(arg[k, ci].ravel(), dy[k, ci].ravel()):
                if a >= 0:
                    dx[b, ci, a] += d
    return _from_nchw(dx.reshape(n, c, h, w), layout)


# ---------------------------------------------------------------- roi_align

def _bilinear(h, w, y, x, g):
    """Corner list [(row, col, weight)] of one sample; [] when it is outside
    (always, on an empty map)."""
    if not (y >= -1 and y <= h and x >= -1 and x <= w) or h == 0 or w == 0:  # NaN fails too
        return []
    y = max(y, g(0))
    x = max(x, g(0))
    y0 = int(np.floor(y))
    x0 = int(np.floor(x))
    if y0 >= h - 1:
        y0 = y1 = h - 1
        y = g(y0)
    else:
        y1 = y0 + 1
    if x0 >= w - 1:
        x0 = x1 = w - 1
        x = g(x0)
    else:
        x1 = x0 + 1
    ly = y - g(y0)
    lx = x - g(x0)
    hy = g(1) - ly
    hx = g(1) - lx
    return [(y0, x0, hy * hx), (y0, x1, hy * lx),
            (y1, x0, ly * hx), (y1, x1, ly * lx)]


def _sample_grid(rh, rw, ph_n, pw_n, sampling_ratio, g):
    """Bin size, samples per bin along each axis and the divisor of a box."""
    bh = rh / g(ph_n)
    bw = rw / g(pw_n)
    if sampling_ratio > 0:
        gh = gw = int(sampling_ratio)
    else:
        gh = int(np.ceil(rh / g(ph_n)))
        gw = int(np.ceil(rw / g(pw_n)))
    # the tests keep boxes small; this guards against feeding a huge one
    assert max(gh, 0) * max(gw, 0) <= 1 << 16, "box too large for the reference"
    return bh, bw, gh, gw, max(gh * gw, 1)


def _align_bins(row, h, w, ph_n, pw_n, s, sampling_ratio, aligned, g):
    """Yield (ph, pw, samples, count); samples in (iy, ix) row-major order,
    each a corner list from _bilinear."""
    s = g(s)
    o = g(0.5) if aligned else g(0)
    xs = row[1] * s - o
    ys = row[2] * s - o
    xe = row[3] * s - o
    ye = row[4] * s - o
    rw = xe - xs
    rh = ye - ys
    if not aligned:
        rw = max(rw, g(1))
        rh = max(rh, g(1))
    bh, bw, gh, gw, count = _sample_grid(rh, rw, ph_n, pw_n, sampling_ratio, g)
    for ph in range(ph_n):
        for pw in range(pw_n):
            samples = []
            for iy in range(gh):
                y = ys + g(ph) * bh + g(iy + 0.5) * bh / g(gh)
                for ix in range(gw):
                    x = xs + g(pw) * bw + g(ix + 0.5) * bw / g(gw)
                    samples.append(_bilinear(h, w, y, x, g))
            yield ph, pw, samples, count


def _sample_values(plane, corners):
    """Bilinear value of one sample for all channels; plane is [C, H, W]."""
    v = np.zeros(plane.shape[0])
    for yy, xx, wt in corners:
        v = v + np.float64(wt) * plane[:, yy, xx]
    return v


def _align_forward(x, rows, output_size, s, sr, aligned, mode, geom):
    """NCHW/[K,5] forward: (out, winner); winner is the index of the winning
    sample (iy*gw + ix) in max mode, -1 where nothing wins."""
    n, c, h, w = x.shape
    ph_n, pw_n = _pair(output_size)
    out = np.zeros((rows.shape[0], c, ph_n, pw_n))
    win = np.full(out.shape, -1, dtype=np.int64)
    for k, row in enumerate(rows):
        b = _batch(row, n)
        if b is None:
            continue
        for ph, pw, samples, count in _align_bins(row, h, w, ph_n, pw_n, s,
                                                  sr, aligned, geom):
            if not samples:
                continue
            vals = np.stack([_sample_values(x[b], cs) for cs in samples])
            if mode == "avg":
                out[k, :, ph, pw] = vals.sum(0) / count
            else:
                wi = _first_strict_max(vals)
                ok = wi >= 0
                out[k, ok, ph, pw] = vals[wi[ok], np.nonzero(ok)[0]]
                win[k, :, ph, pw] = wi
    return out, win


def roi_align(x, rois, output_size, spatial_scale=1.0, sampling_ratio=-1,
              aligned=False, *, mode="avg", layout="NCHW", geom=np.float64,
              return_winner=False):
    """Forward; with return_winner (max mode) also the winning sample index."""
    x = _to_nchw(x, layout)
    rows, lead = _rows(rois, geom)
    out, win = _align_forward(x, rows, output_size, spatial_scale,
                              sampling_ratio, aligned, mode, geom)
    out = _reshape_out(out, lead, layout)
    if return_winner:
        return out, _reshape_out(win, lead, layout)
    return out


def roi_align_vjp(x, rois, output_size, spatial_scale, sampling_ratio, aligned,
                  dy, *, mode="avg", layout="NCHW", geom=np.float64):
    """dX for cotangent dy: avg scatters dy*weight/count from every sample,
    max scatters dy*weight from the winning sample only."""
    x_nchw = _to_nchw(x, layout)
    n, c, h, w = x_nchw.shape
    ph_n, pw_n = _pair(output_size)
    rows, lead = _rows(rois, geom)
    dy = _dy_to_nchw(dy, lead, layout)
    if mode == "max":
        _, win = _align_forward(x_nchw, rows, output_size, spatial_scale,
                                sampling_ratio, aligned, mode, geom)
    dx = np.zeros((n, c, h, w))
    for k, row in enumerate(rows):
        b = _batch(row, n)
        if b is None:
            continue
        for ph, pw, samples, count in _align_bins(
                row, h, w, ph_n, pw_n, spatial_scale, sampling_ratio, aligned,
                geom):
            d = dy[k, :, ph, pw]
            if mode == "avg":
                for cs in samples:
                    for yy, xx, wt in cs:
                        dx[b, :, yy, xx] += d * np.float64(wt) / count
            else:
                for ci in range(c):
                    wi = win[k, ci, ph, pw]
                    if wi < 0:
                        continue
                    for yy, xx, wt in samples[wi]:
                        dx[b, ci, yy, xx] += d[ci] * np.float64(wt)
    return _from_nchw(dx, layout)


def round_to(x, dtype):
    """x rounded to a (possibly 16-bit) dtype and back to float64."""
    return np.asarray(x).astype(dtype).astype(np.float64)


# ------------------------------------------------- roi_align_rotated, ps ops
#
# Rotated ROIs are [K, 6] rows (b, cx, cy, w, h, angle in degrees) or
# [N, L, 5] boxes; the position-sensitive ops take [K, 5] / [N, L, 4] like
# roi_align. Every op below is linear in the features: a list of bins, each
# reading a set of input channels, is all the forward and the adjoint need.

def _rows_of(rois, geom, width):
    """[K, width + 1] rows in `geom` from [K, width + 1] rows or [N, L, width]
    boxes, plus the leading output shape ([K] or [N, L])."""
    rois = np.asarray(rois)
    if rois.ndim == 3:
        n, l, _ = rois.shape
        b = np.repeat(np.arange(n, dtype=np.float64), l)[:, None]
        rows = np.concatenate([b, rois.reshape(n * l, width).astype(np.float64)], 1)
        return rows.astype(geom), (n, l)
    return rois.reshape(rois.shape[0], width + 1).astype(geom), (rois.shape[0],)


def _rotated_bins(row, h, w, ph_n, pw_n, s, sampling_ratio, aligned, clockwise, g):
    """[(ph, pw, samples, count)] of one rotated ROI row, [] for a box with a
    negative size (aligned): bad data. Samples in (iy, ix) row-major order."""
    s = g(s)
    o = g(0.5) if aligned else g(0)
    ccx = row[1] * s - o
    ccy = row[2] * s - o
    rw = row[3] * s
    rh = row[4] * s
    if aligned and (rw < 0 or rh < 0):
        return []
    if not aligned:
        rw = max(rw, g(1))
        rh = max(rh, g(1))
    theta = g(np.float64(row[5]) * np.pi / 180)
    if clockwise:
        theta = -theta
    cos_t = g(np.cos(theta))
    sin_t = g(np.sin(theta))
    bh, bw, gh, gw, count = _sample_grid(rh, rw, ph_n, pw_n, sampling_ratio, g)
    bins = []
    for ph in range(ph_n):
        for pw in range(pw_n):
            samples = []
            for iy in range(gh):
                yy = -rh / g(2) + g(ph) * bh + g(iy + 0.5) * bh / g(gh)
                for ix in range(gw):
                    xx = -rw / g(2) + g(pw) * bw + g(ix + 0.5) * bw / g(gw)
                    y = yy * cos_t - xx * sin_t + ccy
                    x = yy * sin_t + xx * cos_t + ccx
                    samples.append(_bilinear(h, w, y, x, g))
            bins.append((ph, pw, samples, count))
    return bins


def _ps_channels(c_out, ph_n, pw_n, ph, pw):
    """Input channels read by output channels 0..c_out-1 of bin (ph, pw)."""
    return (np.arange(c_out) * ph_n + ph) * pw_n + pw


def _ps_channel_count(c, output_size):
    ph_n, pw_n = _pair(output_size)
    if c % (ph_n * pw_n):
        raise ValueError(f"features' {c} channels are not a multiple of PH*PW = {ph_n * pw_n}")
    return c // (ph_n * pw_n)


def _sampled_forward(x, rows, ph_n, pw_n, c_out, bins_of, channels):
    """out[k, :, ph, pw] = sum of the bin's samples / count over the input
    channels channels(ph, pw); 0 for a bad row or a bin without samples."""
    n, _, h, w = x.shape
    out = np.zeros((rows.shape[0], c_out, ph_n, pw_n))
    for k, row in enumerate(rows):
        b = _batch(row, n)
        if b is None:
            continue
        for ph, pw, samples, count in bins_of(row, h, w):
            if not samples:
                continue
            plane = x[b][channels(ph, pw)]
            vals = np.stack([_sample_values(plane, cs) for cs in samples])
            out[k, :, ph, pw] = vals.sum(0) / count
    return out


def _sampled_adjoint(shape, rows, dy, bins_of, channels):
    """The adjoint of _sampled_forward: dy * weight / count to every corner."""
    n, c, h, w = shape
    dx = np.zeros((n, c, h, w))
    for k, row in enumerate(rows):
        b = _batch(row, n)
        if b is None:
            continue
        for ph, pw, samples, count in bins_of(row, h, w):
            ch = channels(ph, pw)
            d = dy[k, :, ph, pw]
            for cs in samples:
                for yy, xx, wt in cs:
                    dx[b, ch, yy, xx] += d * np.float64(wt) / count
    return dx


def _rotated_setup(x, rois, output_size, spatial_scale, sampling_ratio, aligned,
                   clockwise, layout, geom):
    x = _to_nchw(x, layout)
    ph_n, pw_n = _pair(output_size)
    rows, lead = _rows_of(rois, geom, 5)
    bins_of = lambda row, h, w: _rotated_bins(row, h, w, ph_n, pw_n, spatial_scale,
                                              sampling_ratio, aligned, clockwise, geom)
    return x, rows, lead, ph_n, pw_n, bins_of, lambda ph, pw: slice(None)


def roi_align_rotated(x, rois, output_size, spatial_scale=1.0, sampling_ratio=-1,
                      aligned=True, *, clockwise=False, layout="NCHW", geom=np.float64):
    """Forward of roi_align_rotated; rois [K, 6] or [N, L, 5], angles in degrees."""
    x, rows, lead, ph_n, pw_n, bins_of, channels = _rotated_setup(
        x, rois, output_size, spatial_scale, sampling_ratio, aligned, clockwise, layout, geom)
    out = _sampled_forward(x, rows, ph_n, pw_n, x.shape[1], bins_of, channels)
    return _reshape_out(out, lead, layout)


def roi_align_rotated_vjp(x, rois, output_size, spatial_scale, sampling_ratio, aligned, dy,
                          *, clockwise=False, layout="NCHW", geom=np.float64):
    """dX for cotangent dy (the op is linear: the exact adjoint)."""
    x, rows, lead, ph_n, pw_n, bins_of, channels = _rotated_setup(
        x, rois, output_size, spatial_scale, sampling_ratio, aligned, clockwise, layout, geom)
    dy = _dy_to_nchw(dy, lead, layout)
    return _from_nchw(_sampled_adjoint(x.shape, rows, dy, bins_of, channels), layout)


def _ps_align_setup(x, rois, output_size, spatial_scale, sampling_ratio, layout, geom):
    x = _to_nchw(x, layout)
    ph_n, pw_n = _pair(output_size)
    c_out = _ps_channel_count(x.shape[1], output_size)
    rows, lead = _rows_of(rois, geom, 4)
    # roi_align's aligned geometry: o = 0.5, no clamp; a bin without samples
    # gives 0 (when gh*gw > 0, max(gh*gw, 1) is gh*gw)
    bins_of = lambda row, h, w: _align_bins(row, h, w, ph_n, pw_n, spatial_scale,
                                            sampling_ratio, True, geom)
    channels = lambda ph, pw: _ps_channels(c_out, ph_n, pw_n, ph, pw)
    return x, rows, lead, ph_n, pw_n, c_out, bins_of, channels


def ps_roi_align(x, rois, output_size, spatial_scale=1.0, sampling_ratio=-1, *,
                 layout="NCHW", geom=np.float64):
    """Forward of ps_roi_align: output channel c of bin (ph, pw) samples input
    channel (c*PH + ph)*PW + pw."""
    x, rows, lead, ph_n, pw_n, c_out, bins_of, channels = _ps_align_setup(
        x, rois, output_size, spatial_scale, sampling_ratio, layout, geom)
    out = _sampled_forward(x, rows, ph_n, pw_n, c_out, bins_of, channels)
    return _reshape_out(out, lead, layout)


def ps_roi_align_vjp(x, rois, output_size, spatial_scale, sampling_ratio, dy, *,
                     layout="NCHW", geom=np.float64):
    x, rows, lead, ph_n, pw_n, c_out, bins_of, channels = _ps_align_setup(
        x, rois, output_size, spatial_scale, sampling_ratio, layout, geom)
    dy = _dy_to_nchw(dy, lead, layout)
    return _from_nchw(_sampled_adjoint(x.shape, rows, dy, bins_of, channels), layout)


def ps_pool_bins(row, h, w, output_size, spatial_scale=1.0, geom=np.float64):
    """The bins (ph, pw, h0, h1, w0, w1) ps_roi_pool averages for one
    (b, x1, y1, x2, y2) row: for tests that choose boxes by their bins."""
    ph_n, pw_n = _pair(output_size)
    return list(_pool_bins(np.asarray(row, geom), h, w, ph_n, pw_n, spatial_scale, geom,
                           inclusive_end=False))


def ps_roi_pool(x, rois, output_size, spatial_scale=1.0, *, layout="NCHW", geom=np.float64):
    """Forward of ps_roi_pool: the mean of each bin's pixels, 0 for an empty bin."""
    x = _to_nchw(x, layout)
    n, c, h, w = x.shape
    ph_n, pw_n = _pair(output_size)
    c_out = _ps_channel_count(c, output_size)
    rows, lead = _rows_of(rois, geom, 4)
    out = np.zeros((rows.shape[0], c_out, ph_n, pw_n))
    for k, row in enumerate(rows):
        b = _batch(row, n)
        if b is None:
            continue
        for ph, pw, h0, h1, w0, w1 in _pool_bins(row, h, w, ph_n, pw_n, spatial_scale, geom,
                                                 inclusive_end=False):
            if h1 <= h0 or w1 <= w0:
                continue
            window = x[b][_ps_channels(c_out, ph_n, pw_n, ph, pw), h0:h1, w0:w1]
            out[k, :, ph, pw] = window.sum((1, 2)) / ((h1 - h0) * (w1 - w0))
    return _reshape_out(out, lead, layout)


def ps_roi_pool_vjp(x, rois, output_size, spatial_scale, dy, *, layout="NCHW",
                    geom=np.float64):
    """dX for cotangent dy: dy / area to every pixel of the bin."""
    x = _to_nchw(x, layout)
    n, c, h, w = x.shape
    ph_n, pw_n = _pair(output_size)
    c_out = _ps_channel_count(c, output_size)
    rows, lead = _rows_of(rois, geom, 4)
    dy = _dy_to_nchw(dy, lead, layout)
    dx = np.zeros((n, c, h, w))
    for k, row in enumerate(rows):
        b = _batch(row, n)
        if b is None:
            continue
        for ph, pw, h0, h1, w0, w1 in _pool_bins(row, h, w, ph_n, pw_n, spatial_scale, geom,
                                                 inclusive_end=False):
            if h1 <= h0 or w1 <= w0:
                continue
            area = (h1 - h0) * (w1 - w0)
            ch = _ps_channels(c_out, ph_n, pw_n, ph, pw)
            dx[b, ch, h0:h1, w0:w1] += (dy[k, :, ph, pw] / area)[:, None, None]
    return _from_nchw(dx, layout)


# ---------------------------------------------------------------- prroi_pool
#
# Precise RoI Pooling: the map is the continuous function
#   f(y, x) = sum over pixels (i, j) of X[i, j] * t(y - i) * t(x - j),
#   t(u) = max(0, 1 - |u|), zero beyond the map,
# and a bin's value is the integral of f over the bin divided by its area.
# f is separable per pixel, so the integral over [y_lo, y_hi] x [x_lo, x_hi]
# is sum_ij X[i, j] * T(y_lo, y_hi, i) * T(x_lo, x_hi, j), T the integral of
# one tent over an interval (closed form, _tent_integrals). Bins come from
# the box with no half-pixel shift: rw = max((x2 - x1)*s, 0), bin pw spans
# [x1*s + pw*rw/PW, x1*s + (pw+1)*rw/PW], the same in y.

def _tent(u):
    return np.maximum(0.0, 1.0 - np.abs(u))


def _tent_cdf(u):
    """The integral of t from -inf to u: 0, (u+1)^2/2, 1 - (1-u)^2/2, 1."""
    u = np.clip(np.asarray(u, np.float64), -1.0, 1.0)
    return np.where(u <= 0, (u + 1) ** 2 / 2, 1 - (1 - u) ** 2 / 2)


def _tent_integrals(lo, hi, n):
    """[n]: T(lo, hi, i), the integral of t(u - i) over [lo, hi], for pixels i < n."""
    i = np.arange(n, dtype=np.float64)
    return _tent_cdf(np.float64(hi) - i) - _tent_cdf(np.float64(lo) - i)


def _tent_values(u, n):
    """[n]: t(u - i) for pixels i < n (one edge of a bin: the integrand there)."""
    return _tent(np.float64(u) - np.arange(n, dtype=np.float64))


def _prroi_bins(row, ph_n, pw_n, s, g):
    """Yield (ph, pw, y_lo, y_hi, x_lo, x_hi, area, dedge) for one row; area is
    bin_h * bin_w in `g` (0 for a box of no width or height, whose bins are 0),
    dedge the derivative of (y_lo, y_hi, x_lo, x_hi) with respect to
    (y1, y2, x1, x2), [4, 2] (zero along an axis whose size is clamped to 0)."""
    s = g(s)
    xs = row[1] * s
    ys = row[2] * s
    rw = max((row[3] - row[1]) * s, g(0))
    rh = max((row[4] - row[2]) * s, g(0))
    bw = rw / g(pw_n)
    bh = rh / g(ph_n)
    area = bw * bh
    for ph in range(ph_n):
        y_lo = ys + g(ph) * bh
        y_hi = ys + g(ph + 1) * bh
        for pw in range(pw_n):
            x_lo = xs + g(pw) * bw
            x_hi = xs + g(pw + 1) * bw
            dedge = np.zeros((4, 2))
            s64 = np.float64(s)
            if rh > 0:  # y_lo = y1*s + ph*(y2 - y1)*s/PH
                dedge[0] = [s64 * (1 - ph / ph_n), s64 * ph / ph_n]
                dedge[1] = [s64 * (1 - (ph + 1) / ph_n), s64 * (ph + 1) / ph_n]
            if rw > 0:
                dedge[2] = [s64 * (1 - pw / pw_n), s64 * pw / pw_n]
                dedge[3] = [s64 * (1 - (pw + 1) / pw_n), s64 * (pw + 1) / pw_n]
            yield ph, pw, y_lo, y_hi, x_lo, x_hi, area, dedge


def _prroi_walk(x, rows, output_size, s, geom, visit):
    """Calls visit(k, b, ph, pw, ty, tx, area, edges, dedge) for every bin of
    every valid ROI with a non-zero area; ty [H] and tx [W] are the tent
    integrals over the bin, edges (y_lo, y_hi, x_lo, x_hi) in float64."""
    n, _, h, w = x.shape
    ph_n, pw_n = _pair(output_size)
    for k, row in enumerate(rows):
        b = _batch(row, n)
        if b is None:
            continue
        for ph, pw, y_lo, y_hi, x_lo, x_hi, area, dedge in _prroi_bins(
                row, ph_n, pw_n, s, geom):
            if not area > 0:
                continue
            ty = _tent_integrals(y_lo, y_hi, h)
            tx = _tent_integrals(x_lo, x_hi, w)
            edges = tuple(map(np.float64, (y_lo, y_hi, x_lo, x_hi)))
            visit(k, b, ph, pw, ty, tx, np.float64(area), edges, dedge)


def prroi_pool(x, rois, output_size, spatial_scale=1.0, *, layout="NCHW", geom=np.float64):
    """Forward of prroi_pool; rois [K, 5] or [N, L, 4]."""
    x = _to_nchw(x, layout)
    ph_n, pw_n = _pair(output_size)
    rows, lead = _rows(rois, geom)
    out = np.zeros((rows.shape[0], x.shape[1], ph_n, pw_n))

    def visit(k, b, ph, pw, ty, tx, area, edges, dedge):
        out[k, :, ph, pw] = np.einsum("chw,h,w->c", x[b], ty, tx) / area

    _prroi_walk(x, rows, output_size, spatial_scale, geom, visit)
    return _reshape_out(out, lead, layout)


def prroi_pool_vjp(x, rois, output_size, spatial_scale, dy, *, layout="NCHW",
                   geom=np.float64):
    """dX for cotangent dy: dy * T_y(i) * T_x(j) / area (the op is linear)."""
    x = _to_nchw(x, layout)
    rows, lead = _rows(rois, geom)
    dy = _dy_to_nchw(dy, lead, layout)
    dx = np.zeros(x.shape)

    def visit(k, b, ph, pw, ty, tx, area, edges, dedge):
        dx[b] += np.einsum("c,h,w->chw", dy[k, :, ph, pw], ty, tx) / area

    _prroi_walk(x, rows, output_size, spatial_scale, geom, visit)
    return _from_nchw(dx, layout)


def prroi_pool_box_vjp(x, rois, output_size, spatial_scale, dy, *, layout="NCHW",
                       geom=np.float64):
    """d<out, dy>/d rois, in the shape of rois ([K, 5] with a zero batch
    column, or [N, L, 4]), from the contract's closed forms:
      d out/d x_lo = (out*bin_h - integral of f(y, x_lo) dy) / area
      d out/d x_hi = (integral of f(y, x_hi) dy - out*bin_h) / area
    (the same in y with bin_w), chained to x1, x2 (y1, y2) through the bin
    edges. Invalid ROIs and bins of zero area get zero."""
    x = _to_nchw(x, layout)
    _, _, h, w = x.shape
    rows, lead = _rows(rois, geom)
    dy = _dy_to_nchw(dy, lead, layout)
    drows = np.zeros((rows.shape[0], 5))

    def visit(k, b, ph, pw, ty, tx, area, edges, dedge):
        y_lo, y_hi, x_lo, x_hi = edges
        bin_h, bin_w = y_hi - y_lo, x_hi - x_lo
        plane = x[b]
        out = np.einsum("chw,h,w->c", plane, ty, tx) / area
        # the integrals of f along each edge of the bin
        f_ylo = np.einsum("chw,h,w->c", plane, _tent_values(y_lo, h), tx)
        f_yhi = np.einsum("chw,h,w->c", plane, _tent_values(y_hi, h), tx)
        f_xlo = np.einsum("chw,h,w->c", plane, ty, _tent_values(x_lo, w))
        f_xhi = np.einsum("chw,h,w->c", plane, ty, _tent_values(x_hi, w))
        d_edges = np.array([(out * bin_w - f_ylo) / area, (f_yhi - out * bin_w) / area,
                            (out * bin_h - f_xlo) / area, (f_xhi - out * bin_h) / area])
        g_edges = d_edges @ dy[k, :, ph, pw]             # [4]: y_lo, y_hi, x_lo, x_hi
        gy1, gy2 = g_edges[:2] @ dedge[:2]
        gx1, gx2 = g_edges[2:] @ dedge[2:]
        drows[k, 1:] += [gx1, gy1, gx2, gy2]

    _prroi_walk(x, rows, output_size, spatial_scale, geom, visit)
    if len(lead) == 2:
        return drows[:, 1:].reshape(lead + (4,))
    return drows
