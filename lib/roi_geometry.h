// The one copy of the ROI arithmetic (docs: semantics.md of the project spec).
// Everything here is an inline function of scalars, compiled for host and
// device alike, so CPU and CUDA kernels cannot drift apart. G is the geometry
// type: float, or double when the features are double.
#pragma once

#include <cmath>
#include <cstdint>

#include "host_device.h"

namespace jax_roi {

template <typename G>
JAX_ROI_HOST_DEVICE G min_of(G a, G b) { return b < a ? b : a; }
template <typename G>
JAX_ROI_HOST_DEVICE G max_of(G a, G b) { return a < b ? b : a; }

// Clamps a (possibly huge or negative) real to [lo, hi] before it is turned
// into an index, so no conversion ever overflows.
template <typename G>
JAX_ROI_HOST_DEVICE int64_t clamp_to_index(G v, int64_t lo, int64_t hi) {
  if (!(v > static_cast<G>(lo))) return lo;  // also catches NaN
  if (!(v < static_cast<G>(hi))) return hi;
  return static_cast<int64_t>(v);
}

// One ROI as read from its table, with validity decided once. Its
// coordinates are (x1, y1, x2, y2) for axis-aligned boxes and
// (cx, cy, w, h, angle in degrees) for rotated ones.
template <typename G>
struct Roi {
  bool valid;
  int64_t batch;
  G v[5];
};

// The ROI formats: [K, 1 + coords] (batch index, coordinates) when
// rois_per_image == 0, else [N, L, coords] with L = rois_per_image; coords
// is 4 (boxes) or 5 (rotated boxes).
template <typename G>
struct RoiTable {
  const G* data;
  int64_t rois_per_image;
  int64_t num_images;
  int64_t coords;
};

template <typename G>
JAX_ROI_HOST_DEVICE Roi<G> load_roi(const RoiTable<G>& table, int64_t k) {
  Roi<G> r;
  const G* box;
  G batch;
  if (table.rois_per_image > 0) {
    box = table.data + k * table.coords;
    batch = static_cast<G>(k / table.rois_per_image);
  } else {
    box = table.data + k * (table.coords + 1);
    batch = box[0];
    box += 1;
  }
  bool finite = true;
  for (int i = 0; i < 5; ++i) {
    r.v[i] = i < table.coords ? box[i] : G(0);
    finite = finite && std::isfinite(r.v[i]);
  }
  // Comparisons are false for NaN, so a NaN index is invalid too.
  bool batch_ok = batch >= G(0) && batch < static_cast<G>(table.num_images);
  r.valid = batch_ok && finite;
  r.batch = batch_ok ? static_cast<int64_t>(batch) : 0;
  return r;
}

// The centre of a ROI in image coordinates (for the CPU kernels' visiting order).
template <typename G>
JAX_ROI_HOST_DEVICE void roi_centre(const Roi<G>& r, int64_t coords, G* x, G* y) {
  if (coords == 5) {
    *x = r.v[0], *y = r.v[1];
  } else {
    *x = (r.v[0] + r.v[2]) / G(2), *y = (r.v[1] + r.v[3]) / G(2);
  }
}

// ---------------------------------------------------------------- roi_pool

// A ROI snapped to the feature grid (Fast R-CNN): start and bin size.
template <typename G>
struct PoolRoi {
  G x_start, y_start, bin_w, bin_h;
};

// roi_pool's end is inclusive (Fast R-CNN: one pixel more); ps_roi_pool's
// is not (R-FCN). Both are at least one pixel.
template <typename G>
JAX_ROI_HOST_DEVICE PoolRoi<G> pool_roi(const Roi<G>& r, G scale, int64_t pooled_h,
                                        int64_t pooled_w, bool inclusive_end = true) {
  // std::round rounds half away from zero, as C's round does.
  G xs = std::round(r.v[0] * scale), ys = std::round(r.v[1] * scale);
  G xe = std::round(r.v[2] * scale), ye = std::round(r.v[3] * scale);
  const G extra = inclusive_end ? G(1) : G(0);
  G roi_w = max_of(xe - xs + extra, G(1));
  G roi_h = max_of(ye - ys + extra, G(1));
  return {xs, ys, roi_w / static_cast<G>(pooled_w),
          roi_h / static_cast<G>(pooled_h)};
}

// The half-open pixel window [h0, h1) x [w0, w1) of one bin, clipped to the map.
struct PixelWindow {
  int64_t h0, h1, w0, w1;
  JAX_ROI_HOST_DEVICE bool empty() const { return h1 <= h0 || w1 <= w0; }
};

template <typename G>
JAX_ROI_HOST_DEVICE PixelWindow pool_bin(const PoolRoi<G>& p, int64_t ph, int64_t pw,
                                 int64_t height, int64_t width) {
  PixelWindow w;
  w.h0 = clamp_to_index(std::floor(static_cast<G>(ph) * p.bin_h) + p.y_start, 0, height);
  w.h1 = clamp_to_index(std::ceil(static_cast<G>(ph + 1) * p.bin_h) + p.y_start, 0, height);
  w.w0 = clamp_to_index(std::floor(static_cast<G>(pw) * p.bin_w) + p.x_start, 0, width);
  w.w1 = clamp_to_index(std::ceil(static_cast<G>(pw + 1) * p.bin_w) + p.x_start, 0, width);
  return w;
}

// --------------------------------------------------------------- roi_align

// A ROI in feature coordinates with its bin size and per-bin sample grid.
// Grid sizes stay real numbers: a huge box has an astronomic adaptive grid
// that only ever enters the arithmetic through `count`.
template <typename G>
struct AlignRoi {
  G x_start, y_start, bin_w, bin_h;
  G grid_w, grid_h;
  G count;
  bool width_moves, height_moves;  // the size follows the box (not clamped to 1)
};

// The bin size, per-bin sample grid (adaptive when sampling_ratio <= 0)
// and divisor of a ROI of size roi_w x roi_h, into an AlignRoi or RotatedRoi.
template <typename G, typename Bins>
JAX_ROI_HOST_DEVICE void set_bins(G roi_w, G roi_h, int64_t pooled_h, int64_t pooled_w,
                                  int64_t sampling_ratio, Bins* a) {
  a->bin_w = roi_w / static_cast<G>(pooled_w);
  a->bin_h = roi_h / static_cast<G>(pooled_h);
  if (sampling_ratio > 0) {
    a->grid_w = a->grid_h = static_cast<G>(sampling_ratio);
  } else {
    a->grid_w = std::ceil(roi_w / static_cast<G>(pooled_w));
    a->grid_h = std::ceil(roi_h / static_cast<G>(pooled_h));
  }
  a->count = max_of(a->grid_h * a->grid_w, G(1));
}

template <typename G>
JAX_ROI_HOST_DEVICE AlignRoi<G> align_roi(const Roi<G>& r, G scale, int64_t pooled_h,
                                  int64_t pooled_w, int64_t sampling_ratio,
                                  bool aligned) {
  G offset = aligned ? G(0.5) : G(0);
  AlignRoi<G> a;
  a.x_start = r.v[0] * scale - offset;
  a.y_start = r.v[1] * scale - offset;
  G roi_w = r.v[2] * scale - offset - a.x_start;
  G roi_h = r.v[3] * scale - offset - a.y_start;
  a.width_moves = aligned || !(roi_w < G(1));
  a.height_moves = aligned || !(roi_h < G(1));
  if (!aligned) {
    roi_w = max_of(roi_w, G(1));
    roi_h = max_of(roi_h, G(1));
  }
  set_bins(roi_w, roi_h, pooled_h, pooled_w, sampling_ratio, &a);
  return a;
}

// Position of sample t of a bin that starts at `bin_start` (evaluated in
// the same order as the peers, so float32 results agree bit for bit).
template <typename G>
JAX_ROI_HOST_DEVICE G sample_position(G roi_start, int64_t bin_index, G bin_size,
                              int64_t t, G grid) {
  return roi_start + static_cast<G>(bin_index) * bin_size +
         (static_cast<G>(t) + G(0.5)) * bin_size / grid;
}

// The samples [lo, hi) of one bin axis whose positions can land in
// [first, last] (the map's [-1, extent] for roi_align); all others read
// zero. The range is found by inverting the affine sample position and
// widened by one, the exact test being left to `bilinear`. `complete` says
// whether [lo, hi) is the whole grid.
struct SampleRange {
  int64_t lo, hi;
  bool complete;
};

template <typename G>
JAX_ROI_HOST_DEVICE SampleRange sample_range_within(G roi_start, int64_t bin_index, G bin_size,
                                                    G grid, G first, G last) {
  SampleRange s{0, 0, true};
  if (!(grid >= G(1))) return s;  // no samples at all (also NaN)
  G bin_start = roi_start + static_cast<G>(bin_index) * bin_size;
  G step = bin_size / grid;
  G lo, hi;
  if (step == G(0)) {
    bool inside = bin_start >= first && bin_start <= last;
    lo = G(0);
    hi = inside ? grid : G(0);
  } else {
    G a = (first - bin_start) / step - G(0.5);
    G b = (last - bin_start) / step - G(0.5);
    lo = std::floor(min_of(a, b)) - G(1);
    hi = std::ceil(max_of(a, b)) + G(2);
  }
  lo = max_of(lo, G(0));
  hi = min_of(hi, grid);
  if (!(hi > lo)) {
    s.complete = false;
    return s;
  }
  s.lo = static_cast<int64_t>(lo);
  s.hi = static_cast<int64_t>(hi);
  s.complete = lo == G(0) && hi == grid;
  return s;
}

template <typename G>
JAX_ROI_HOST_DEVICE SampleRange sample_range(G roi_start, int64_t bin_index, G bin_size, G grid,
                                             int64_t extent) {
  return sample_range_within(roi_start, bin_index, bin_size, grid, G(-1),
                             static_cast<G>(extent));
}

// Linear interpolation along one axis of length `extent`: the two
// neighbouring indices and their weights. Bilinear weights are products of
// two of these, which lets the CPU kernels tabulate each axis once per ROI.
template <typename G>
struct AxisWeights {
  bool inside;  // false: the sample reads 0 and has no gradient
  int64_t i0, i1;
  G w0, w1;
};

template <typename G>
JAX_ROI_HOST_DEVICE AxisWeights<G> axis_weights(G pos, int64_t extent) {
  AxisWeights<G> a{};
  // Written so that NaN also fails the test.
  a.inside = pos >= G(-1) && pos <= static_cast<G>(extent) && extent > 0;
  if (!a.inside) return a;
  pos = max_of(pos, G(0));
  a.i0 = static_cast<int64_t>(pos);
  if (a.i0 >= extent - 1) {
    a.i0 = a.i1 = extent - 1;
    pos = static_cast<G>(a.i0);
  } else {
    a.i1 = a.i0 + 1;
  }
  a.w1 = pos - static_cast<G>(a.i0);
  a.w0 = G(1) - a.w1;
  return a;
}

// Bilinear interpolation weights of one sample on an H x W plane.
template <typename G>
struct Bilinear {
  bool inside;  // false: the sample reads 0 and has no gradient
  int64_t y0, y1, x0, x1;
  G w00, w01, w10, w11;
};

template <typename G>
JAX_ROI_HOST_DEVICE Bilinear<G> bilinear(const AxisWeights<G>& ay, const AxisWeights<G>& ax) {
  Bilinear<G> b{};
  b.inside = ay.inside && ax.inside;
  if (!b.inside) return b;
  b.y0 = ay.i0;
  b.y1 = ay.i1;
  b.x0 = ax.i0;
  b.x1 = ax.i1;
  b.w00 = ay.w0 * ax.w0;
  b.w01 = ay.w0 * ax.w1;
  b.w10 = ay.w1 * ax.w0;
  b.w11 = ay.w1 * ax.w1;
  return b;
}

template <typename G>
JAX_ROI_HOST_DEVICE Bilinear<G> bilinear(G y, G x, int64_t height, int64_t width) {
  return bilinear(axis_weights(y, height), axis_weights(x, width));
}

// Where a max-mode bin's winner sits: indices (iy, ix) inside the bin's
// sample ranges, packed relative to the ranges so the int32 argmax stays
// small whatever the grid size; -1 means no gradient.
JAX_ROI_HOST_DEVICE int64_t pack_sample(int64_t iy, int64_t ix, const SampleRange& ry,
                                const SampleRange& rx) {
  return (iy - ry.lo) * (rx.hi - rx.lo) + (ix - rx.lo);
}

JAX_ROI_HOST_DEVICE void unpack_sample(int64_t packed, const SampleRange& ry,
                               const SampleRange& rx, int64_t* iy,
                               int64_t* ix) {
  int64_t width = rx.hi - rx.lo;
  *iy = ry.lo + packed / width;
  *ix = rx.lo + packed % width;
}

// True when a sample outside the scanned ranges (value 0) comes before
// (iy, ix) in row-major scan order; such a sample wins ties at 0.
JAX_ROI_HOST_DEVICE bool skipped_sample_precedes(const SampleRange& ry, const SampleRange& rx,
                                         int64_t iy, int64_t ix) {
  if (ry.lo > 0 || rx.lo > 0) return true;  // sample (0, 0) was skipped
  if (!rx.complete) return iy > 0;  // the first skipped sample is (0, rx.hi)
  return false;  // rows are whole: skipped rows come after the scanned ones
}

// Completes a max-mode bin after its scanned samples: the samples that were
// not scanned lie outside the map and read 0, and may win. `packed` is the
// winner (pack_sample) or -1; on return -1 means no gradient and value 0.
template <typename G>
JAX_ROI_HOST_DEVICE void settle_max(const SampleRange& ry, const SampleRange& rx, G* best,
                            int64_t* packed) {
  if (*packed >= 0 && !(ry.complete && rx.complete)) {
    int64_t iy, ix;
    unpack_sample(*packed, ry, rx, &iy, &ix);
    if (*best < G(0) || (*best == G(0) && skipped_sample_precedes(ry, rx, iy, ix))) *packed = -1;
  }
  if (*packed < 0) *best = G(0);
}

// ------------------------------------------------------- roi_align_rotated

// A rotated ROI in feature coordinates: its centre, the bins and sample
// grids of its own frame (yy down the box, xx across, origin at the
// centre), and the rotation from that frame to the map. `reads` is false
// for a box of negative size (bad data): no samples, no gradient.
template <typename G>
struct RotatedRoi {
  bool reads;
  G centre_x, centre_y;
  G x_start, y_start, bin_w, bin_h;  // in the box's frame
  G grid_w, grid_h, count;
  G cos_t, sin_t;
  bool width_moves, height_moves;  // the size follows the box (not clamped to 1)
};

template <typename G>
JAX_ROI_HOST_DEVICE RotatedRoi<G> rotated_roi(const Roi<G>& r, G scale, int64_t pooled_h,
                                              int64_t pooled_w, int64_t sampling_ratio,
                                              bool aligned, bool clockwise) {
  G offset = aligned ? G(0.5) : G(0);
  RotatedRoi<G> a;
  a.centre_x = r.v[0] * scale - offset;
  a.centre_y = r.v[1] * scale - offset;
  G roi_w = r.v[2] * scale, roi_h = r.v[3] * scale;
  a.width_moves = aligned || !(roi_w < G(1));
  a.height_moves = aligned || !(roi_h < G(1));
  if (!aligned) {
    roi_w = max_of(roi_w, G(1));
    roi_h = max_of(roi_h, G(1));
  }
  a.reads = roi_w >= G(0) && roi_h >= G(0);
  // Degrees to radians in double, then rounded to G: detectron2's order.
  G theta = static_cast<G>(static_cast<double>(r.v[4]) * 3.14159265358979323846 / 180.0);
  if (clockwise) theta = -theta;
  a.cos_t = std::cos(theta);
  a.sin_t = std::sin(theta);
  a.x_start = -roi_w / G(2);
  a.y_start = -roi_h / G(2);
  set_bins(roi_w, roi_h, pooled_h, pooled_w, sampling_ratio, &a);
  return a;
}

// A sample's map position from its position (yy, xx) in the box's frame.
template <typename G>
JAX_ROI_HOST_DEVICE void rotate_sample(const RotatedRoi<G>& a, G yy, G xx, G* y, G* x) {
  *y = yy * a.cos_t - xx * a.sin_t + a.centre_y;
  *x = yy * a.sin_t + xx * a.cos_t + a.centre_x;
}

// The bounding box, in the box's frame, of the map's [-1, H] x [-1, W]
// widened by a pixel (for rounding): the samples that can land on the map
// lie in it. The same for every bin of a ROI.
template <typename G>
struct FrameBounds {
  G yy_lo, yy_hi, xx_lo, xx_hi;
};

template <typename G>
JAX_ROI_HOST_DEVICE FrameBounds<G> rotated_frame_bounds(const RotatedRoi<G>& a, int64_t height,
                                                        int64_t width) {
  FrameBounds<G> f{G(INFINITY), G(-INFINITY), G(INFINITY), G(-INFINITY)};
  for (int corner = 0; corner < 4; ++corner) {
    const G dy = (corner & 1 ? static_cast<G>(height) + G(1) : G(-2)) - a.centre_y;
    const G dx = (corner & 2 ? static_cast<G>(width) + G(1) : G(-2)) - a.centre_x;
    const G yy = dy * a.cos_t + dx * a.sin_t, xx = dx * a.cos_t - dy * a.sin_t;
    f.yy_lo = min_of(f.yy_lo, yy), f.yy_hi = max_of(f.yy_hi, yy);
    f.xx_lo = min_of(f.xx_lo, xx), f.xx_hi = max_of(f.xx_hi, xx);
  }
  return f;
}

// The sample ranges of bin (ph, pw) whose frame positions fall in the
// frame bounds. Every other sample reads 0, so a huge box costs no more
// than the map.
template <typename G>
JAX_ROI_HOST_DEVICE void rotated_sample_ranges(const RotatedRoi<G>& a, const FrameBounds<G>& f,
                                               int64_t ph, int64_t pw, SampleRange* ys,
                                               SampleRange* xs) {
  *ys = sample_range_within(a.y_start, ph, a.bin_h, a.grid_h, f.yy_lo, f.yy_hi);
  *xs = sample_range_within(a.x_start, pw, a.bin_w, a.grid_w, f.xx_lo, f.xx_hi);
  if (!a.reads) *ys = *xs = SampleRange{0, 0, false};
}

// ------------------------------------------------------------- prroi_pool

// A box in feature coordinates (no half-pixel shift) with its bin size;
// a box whose end precedes its start has size 0.
template <typename G>
struct PreciseRoi {
  G x_start, y_start, bin_w, bin_h;
};

template <typename G>
JAX_ROI_HOST_DEVICE PreciseRoi<G> precise_roi(const Roi<G>& r, G scale, int64_t pooled_h,
                                              int64_t pooled_w) {
  PreciseRoi<G> a;
  a.x_start = r.v[0] * scale;
  a.y_start = r.v[1] * scale;
  a.bin_w = max_of(r.v[2] * scale - a.x_start, G(0)) / static_cast<G>(pooled_w);
  a.bin_h = max_of(r.v[3] * scale - a.y_start, G(0)) / static_cast<G>(pooled_h);
  return a;
}

// The integral of the tent t(u) = max(0, 1 - |u|) from -infinity to v.
template <typename G>
JAX_ROI_HOST_DEVICE G tent_cumulative(G v) {
  if (!(v > G(-1))) return G(0);
  if (v >= G(1)) return G(1);
  return v <= G(0) ? G(0.5) * (v + G(1)) * (v + G(1)) : G(1) - G(0.5) * (G(1) - v) * (G(1) - v);
}

template <typename G>
JAX_ROI_HOST_DEVICE G tent(G v) {
  return max_of(G(1) - (v < G(0) ? -v : v), G(0));
}

// The pixels [lo, hi) along one axis whose tents meet (start, end),
// clipped to [0, extent): the only ones with a nonzero integral.
struct PixelSpan {
  int64_t lo, hi;
};

template <typename G>
JAX_ROI_HOST_DEVICE PixelSpan tent_span(G start, G end, int64_t extent) {
  return {clamp_to_index(std::floor(start), 0, extent),
          clamp_to_index(std::floor(end) + G(2), 0, extent)};
}

// ------------------------------------------- position-sensitive RoI pooling

// Output channel c of bin (ph, pw) reads input channel (c*PH + ph)*PW + pw.
JAX_ROI_HOST_DEVICE int64_t position_sensitive_channel(int64_t c, int64_t ph, int64_t pw,
                                                       int64_t pooled_h, int64_t pooled_w) {
  return (c * pooled_h + ph) * pooled_w + pw;
}

}  // namespace jax_roi
