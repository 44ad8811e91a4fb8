// What the CPU kernels of every op share: how a thread walks runs of ROIs
// and lane groups of channels, how it reads an image's pixels and writes
// its gradient, and the running maximum of the max ops.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "../problem.h"
#include "axis_table.h"
#include "isa_dispatch.h"
#include "lane_tile.h"

namespace jax_roi {

// Axis entries tabulated at once for NCHW: about a megabyte, cache-sized.
constexpr size_t kRunCapacity = 1 << 15;

// The NCHW driver: the listed ROIs in runs that `run` tabulates (up to
// `capacity` entries each), and for each run channels [c0, c1) kLanes at a
// time: lanes(c, n) handles channels [c, c + n) of the run's ROIs.
template <typename G, typename Run, typename Lanes>
JAX_ROI_ALWAYS_INLINE void for_each_run_and_lane_group(const Problem<G>& p, const RoiList& list,
                                                       int64_t c0, int64_t c1, Run& run,
                                                       size_t capacity, const Lanes& lanes) {
  for (int64_t j = 0; j < list.size;) {
    j = run.build(p, list, j, capacity);
    for (int64_t c = c0; c < c1; c += kLanes)
      lanes(c, static_cast<int>(std::min<int64_t>(kLanes, c1 - c)));
  }
}

// One step of a running maximum: the first strict maximum wins and NaN
// never does. Written as selects of loaded values, so that loops of it
// vectorise as compares and blends (not masked stores).
template <typename G>
JAX_ROI_ALWAYS_INLINE void take_if_greater(G value, int32_t index, G* best, int32_t* arg) {
  const G b = *best;
  const int32_t a = *arg;
  const int32_t wins = -static_cast<int32_t>(value > b);
  *best = value > b ? value : b;
  *arg = (index & wins) | (a & ~wins);
}

template <typename T>
struct Pixels {
  const T* data;
  int64_t stride, row;  // between neighbouring pixels, between rows
  const T* at(int64_t y, int64_t x) const { return data + y * row + x * stride; }
};

// The image of a valid ROI, laid out for one channel (NCHW) or all (NHWC).
template <typename T>
Pixels<T> image_pixels(const Shape& s, const T* base, int64_t batch, int64_t channel) {
  int64_t image = batch * s.channels * s.height * s.width;
  if (s.channels_last) return {base + image + channel, s.channels, s.width * s.channels};
  return {base + image + channel * s.height * s.width, 1, s.width};
}

// Rows (or columns) [lo, hi); empty when lo >= hi.
struct Span {
  int32_t lo = 0, hi = 0;
  bool meets(int64_t y0, int64_t y1) const { return lo < y1 && y0 < hi; }
  bool empty() const { return hi <= lo; }
  // The smallest span holding both (an empty one adds nothing).
  Span joined(Span other) const {
    if (other.empty()) return *this;
    if (empty()) return other;
    return {std::min(lo, other.lo), std::max(hi, other.hi)};
  }
};

// Where the gradient of pixel (y, x), channel c, of image `batch` sits.
template <typename G>
G* gradient_at(const Shape& s, G* grad, int64_t batch, int64_t y, int64_t x, int64_t c) {
  if (s.channels_last) return grad + ((batch * s.height + y) * s.width + x) * s.channels + c;
  return grad + ((batch * s.channels + c) * s.height + y) * s.width + x;
}

// Asks for the cache lines of the n elements at p to come into L2, not L1:
// the tap loops prefetch a pixel's kilobyte of channels kPrefetchTaps taps
// ahead (bin_taps.h), more lines than L1 can have on their way at once, and
// prefetches into L1 stalled them (rot-p2's NHWC forward and backward 15-20%
// slower on both vector paths).
template <typename T>
JAX_ROI_ALWAYS_INLINE void prefetch_into_l2(const T* p, int64_t n) {
  constexpr int64_t line = 64 / int64_t(sizeof(T));
  for (int64_t i = 0; i < n; i += line) __builtin_prefetch(p + i, /*write=*/0, /*locality=*/2);
}

// How many bins ahead the NHWC backwards of roi_align avg and of the tap
// kernels prefetch a ROI's output gradient. A ROI's bins are one
// contiguous run of it, yet each bin's loads still waited on memory (a
// sixth of rot-p2's NHWC tap loop). Two bins ahead, median paired ratios:
// mask-c4 0.77 (AVX2 path 0.82, bfloat16 0.87), box-p2 0.94 (bfloat16
// 0.98), fpn 0.93, rot-p2 0.94 on either vector width (bfloat16 0.97),
// prroi-atom 0.96; one, three or four bins ahead no better for rot-p2.
constexpr int64_t kOutputPrefetchBins = 2;

// Prefetches channels [c0, c0 + width) of ROI `roi`'s output gradient at
// bin b + kOutputPrefetchBins, if the ROI has that bin.
template <typename T>
JAX_ROI_ALWAYS_INLINE void prefetch_output_bin_ahead(const Shape& s, const T* grad_out,
                                                     int64_t roi, int64_t c0, int64_t width,
                                                     int64_t b) {
  const int64_t ahead = b + kOutputPrefetchBins;
  if (ahead < s.pooled_h * s.pooled_w)
    prefetch_into_l2(grad_out + output_index(s, roi, c0, ahead / s.pooled_w, ahead % s.pooled_w),
                     width);
}

// Prefetches the NCHW output gradient of ROI `roi`'s channels [c, c + lanes)
// (one contiguous run of lanes * bins elements): the NCHW backwards of
// roi_align avg and of the tap kernels fetch the next ROI's while a tile
// takes the current one's (median paired ratios 0.93-0.95 for box-p2,
// mask-c4, fpn, rot-p2 and prroi-atom, on either vector width).
template <typename T>
JAX_ROI_ALWAYS_INLINE void prefetch_output_lanes(const Shape& s, const T* grad_out, int64_t roi,
                                                 int64_t c, int lanes) {
  prefetch_into_l2(grad_out + output_index(s, roi, c, 0, 0), lanes * s.pooled_h * s.pooled_w);
}

}  // namespace jax_roi
