// ps_roi_pool's NCHW backward by windows. A pooled bin is a rectangle of
// pixels of weight 1, so its output gradient (over the bin's area) is added
// to the run of every row the rectangle covers, a vector at a time, where
// the tap loop adds it pixel by pixel across the bin's planes.
//
// The block visits the bins outermost, as the tap loop does (a bin's
// planes are zeroed just before its ROIs add to them, and stay in cache).
// For each bin it first gathers its ROIs' gradients, every output channel
// of the block, into a dense table: their loads are independent, where
// inside the adding loop each waited on the one before. Each pixel gets
// the same sums in the same order as from the taps, so the results are
// bitwise the same.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "../roi_geometry.h"
#include "cpu_common.h"
#include "gradient_blocks.h"
#include "native_vector.h"

namespace jax_roi {

// A bin's window clipped to a block's rows (NCHW blocks hold every row
// today; the clip keeps a block of rows correct), narrowed to 32 bits (a
// map's sides fit), and the area of the whole window (its divisor).
struct BinWindow {
  int32_t h0 = 0, h1 = 0, w0 = 0, w1 = 0;
  int64_t area = 1;
  bool empty() const { return h1 <= h0 || w1 <= w0; }
};

template <typename G>
struct PoolWindows {
  std::vector<BinWindow> windows;  // [bin][roi of the block]
  std::vector<G> gradient;         // one bin's: [roi][output channel], over the area

  // The windows of the block's ROIs (all valid, of one image), clipped to
  // its rows. A window's rows depend on its bin's row alone, its columns on
  // its column: pool_bin is called once a row and once a column.
  void build(const Problem<G>& p, const GradientBlock& block) {
    const Shape& s = p.shape;
    const int64_t n = block.rois.size, bins = s.pooled_h * s.pooled_w;
    windows.assign(bins * n, BinWindow{});
    if (s.height == 0 || s.width == 0) return;
    rows.resize(s.pooled_h);
    columns.resize(s.pooled_w);
    for (int64_t j = 0; j < n; ++j) {
      const PoolRoi<G> roi = pool_roi(load_roi(p.rois, block.rois.ids[j]), p.spatial_scale,
                                      s.pooled_h, s.pooled_w, /*inclusive_end=*/false);
      for (int64_t ph = 0; ph < s.pooled_h; ++ph)
        rows[ph] = pool_bin(roi, ph, 0, s.height, s.width);
      for (int64_t pw = 0; pw < s.pooled_w; ++pw)
        columns[pw] = pool_bin(roi, 0, pw, s.height, s.width);
      for (int64_t b = 0; b < bins; ++b) {
        const PixelWindow& r = rows[b / s.pooled_w];
        const PixelWindow& c = columns[b % s.pooled_w];
        const BinWindow w{static_cast<int32_t>(std::max(r.h0, block.y0)),
                          static_cast<int32_t>(std::min(r.h1, block.y1)),
                          static_cast<int32_t>(c.w0), static_cast<int32_t>(c.w1),
                          (r.h1 - r.h0) * (c.w1 - c.w0)};
        if (!w.empty()) windows[b * n + j] = w;
      }
    }
  }

 private:
  std::vector<PixelWindow> rows, columns;  // one ROI's
};

// Output channels [first, first + n) of bin b (input channels first*bins +
// b, then every `step` elements) of the block's ROIs, into their planes
// (zeroed). A run is covered by vectors of `bytes` shifted left to stay in
// their row (a narrower map takes its pixels one by one); lanes outside the
// run add +0, which leaves the gradient as it was (it starts at +0, so it
// never holds -0).
template <int bytes, typename T, typename G>
JAX_ROI_ALWAYS_INLINE void window_backward_bin(const Shape& s, const GradientBlock& block,
                                               int64_t b, int64_t first, int64_t n,
                                               int64_t step, const T* grad_out, G* grad,
                                               PoolWindows<G>& pw) {
  using V = NativeVector<G, bytes>;
  constexpr int64_t L = native_lanes<G, bytes>;
  const int64_t rois = block.rois.size, W = s.width, bins = s.pooled_h * s.pooled_w;
  const BinWindow* win = pw.windows.data() + b * rois;
  pw.gradient.resize(rois * n);
  G* __restrict__ g = pw.gradient.data();
  for (int64_t j = 0; j < rois; ++j) {
    if (win[j].empty()) continue;
    const G area = static_cast<G>(win[j].area);
    const T* src = grad_out + output_index(s, block.rois.ids[j], first, b / s.pooled_w,
                                           b % s.pooled_w);
    for (int64_t c = 0; c < n; ++c) g[j * n + c] = to_acc(src[c * bins]) / area;
  }
  G* const base = gradient_at(s, grad, block.batch, 0, 0, first * bins + b);
  V lane = {};
  for (int64_t i = 0; i < L; ++i) lane[i] = G(i);
  using Mask = decltype(lane < lane);  // integer lanes, all ones where true
  for (int64_t j = 0; j < rois; ++j) {
    const BinWindow w = win[j];
    if (w.empty()) continue;
    const G* gj = g + j * n;
    if (W < L) {
      for (int64_t c = 0; c < n; ++c)
        for (int64_t y = w.h0; y < w.h1; ++y)
          for (int64_t x = w.w0; x < w.w1; ++x) base[c * step + y * W + x] += gj[c];
      continue;
    }
    for (int64_t x = w.w0; x < w.w1; x += L) {
      const int64_t start = std::min(x, W - L);
      Mask in_run = (lane >= G(x - start)) & (lane < G(w.w1 - start));
      // Hide that in_run is a comparison: GCC would turn the AND below into
      // a select and lower it lane by lane in scalar registers. ("+m": a
      // register constraint fails where the baseline clone has no register
      // this wide.)
      __asm__("" : "+m"(in_run));
      G* plane = base + w.h0 * W + start;
      for (int64_t c = 0; c < n; ++c, plane += step) {
        const V add = (V)((Mask)(V{} + gj[c]) & in_run);
        G* row = plane;
        for (int64_t y = w.h0; y < w.h1; ++y, row += W)
          store_native<bytes, G, G>(row, load_native<G, bytes>(row) + add);
      }
    }
  }
}

}  // namespace jax_roi
