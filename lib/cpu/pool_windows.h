// ps_roi_pool's bins as windows. A pooled bin is a rectangle of pixels of
// weight 1: the forward sums it and the NHWC backward adds to it pixel by
// pixel (position_sensitive_cpu.h), the NCHW backward (below) adds its
// output gradient (over the bin's area) to the run of every row the
// rectangle covers, a vector at a time, where a pixel loop adds it pixel by
// pixel across the bin's planes.
//
// The NCHW block visits the bins outermost (a bin's planes are zeroed just
// before its ROIs add to them, and stay in cache). Before the first bin it
// gathers its ROIs' gradients over their areas, every bin and output
// channel of the block, into a table ordered as the bins visit them: a
// ROI's output gradient is one contiguous run, read once, where gathering
// bin by bin read each of its cache lines once a bin, `bins` floats apart
// (a fifth of psroi-rfcn's NCHW backward). Each pixel gets the same sums in
// the same order as pixel by pixel, so the results are bitwise the same.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "../roi_geometry.h"
#include "cpu_common.h"
#include "gradient_blocks.h"
#include "native_vector.h"
#include "parallel_for.h"
#include "reused_scratch.h"

namespace jax_roi {

// A bin's window, clipped to a block's rows where a block reads it (NCHW
// blocks hold every row today; the clip keeps a block of rows correct),
// narrowed to 32 bits (a map's sides fit), and the area of the whole
// window (its divisor).
struct BinWindow {
  int32_t h0 = 0, h1 = 0, w0 = 0, w1 = 0;
  int64_t area = 1;
  bool empty() const { return h1 <= h0 || w1 <= w0; }
};

// ROI k's pooled bins as spans: bin (ph, pw) covers rows rows[ph] and
// columns columns[pw] (pool_bin: a window's rows depend on its bin's row
// alone, its columns on its column). Returns the ROI's image, or -1 where
// it reads nothing (an invalid ROI, or a map without pixels).
template <typename G>
int64_t pool_bin_spans(const Problem<G>& p, int64_t k, Span* rows, Span* columns) {
  const Shape& s = p.shape;
  const Roi<G> r = load_roi(p.rois, k);
  if (!r.valid || s.height == 0 || s.width == 0) return -1;
  const PoolRoi<G> pooled =
      pool_roi(r, p.spatial_scale, s.pooled_h, s.pooled_w, /*inclusive_end=*/false);
  // (a map's sides fit 32 bits)
  for (int64_t ph = 0; ph < s.pooled_h; ++ph) {
    const PixelWindow w = pool_bin(pooled, ph, 0, s.height, s.width);
    rows[ph] = {static_cast<int32_t>(w.h0), static_cast<int32_t>(w.h1)};
  }
  for (int64_t pw = 0; pw < s.pooled_w; ++pw) {
    const PixelWindow w = pool_bin(pooled, 0, pw, s.height, s.width);
    columns[pw] = {static_cast<int32_t>(w.w0), static_cast<int32_t>(w.w1)};
  }
  return r.batch;
}

// The pixels of the bin of rows h and columns w: its average's divisor.
inline int64_t pooled_area(Span h, Span w) { return int64_t(h.hi - h.lo) * (w.hi - w.lo); }

// A bin's average divisor: its pixels, or 1 where it has none (an empty
// bin sums to 0, whatever it is divided by).
inline int64_t pooled_divisor(Span h, Span w) {
  return h.empty() || w.empty() ? 1 : pooled_area(h, w);
}

// The window of rows h and columns w, or none (BinWindow{}, whose divisor
// is 1) where either is empty, so that its loops visit no rows.
inline BinWindow bin_window(Span h, Span w) {
  if (h.empty() || w.empty()) return BinWindow{};
  return {h.lo, h.hi, w.lo, w.hi, pooled_area(h, w)};
}

// Every ROI's bin spans of a call's list, built once by all threads: the
// NHWC backward's row bands each visit every ROI of their image and clip
// its windows to their rows. (Spans, not windows: 14 for psroi-rfcn's 7 x 7
// bins instead of 49, a table small enough for the heap's reused memory.)
template <typename G>
struct WindowTable {
  std::vector<Span> rows;     // [entry][ph]
  std::vector<Span> columns;  // [entry][pw]
  std::vector<Span> covered;  // [entry]: every row its windows cover
  std::vector<int64_t> batch;  // [entry]: -1 where the ROI reads nothing
  const int64_t* ids = nullptr;

  size_t bytes() const { return vector_bytes(rows, columns, covered, batch); }

  void build(ffi::ThreadPool& pool, const Problem<G>& p, const RoiList& list) {
    start(p, list);
    parallel_for_guided(pool, list.size, 16, [&](int64_t j0, int64_t j1) {
      for (int64_t j = j0; j < j1; ++j) add_entry(p, j);
    });
  }

  // The same for one thread's part of a list.
  void build_serial(const Problem<G>& p, const RoiList& list) {
    start(p, list);
    for (int64_t j = 0; j < list.size; ++j) add_entry(p, j);
  }

  // The entry of a ROI of the list (or of a part of it).
  int64_t entry(const int64_t* id) const { return id - ids; }

 private:
  void start(const Problem<G>& p, const RoiList& list) {
    ids = list.ids;
    rows.resize(list.size * p.shape.pooled_h);
    columns.resize(list.size * p.shape.pooled_w);
    covered.assign(list.size, Span{});
    batch.resize(list.size);
  }

  void add_entry(const Problem<G>& p, int64_t j) {
    const int64_t pooled_h = p.shape.pooled_h, pooled_w = p.shape.pooled_w;
    Span* h = &rows[j * pooled_h];
    Span* w = &columns[j * pooled_w];
    batch[j] = pool_bin_spans(p, ids[j], h, w);
    if (batch[j] < 0) return;
    // None where no column holds a pixel: the bands skip the ROI.
    if (std::all_of(w, w + pooled_w, [](Span c) { return c.empty(); })) return;
    for (int64_t ph = 0; ph < pooled_h; ++ph) covered[j] = covered[j].joined(h[ph]);
  }
};

template <typename G>
struct PoolWindows {
  std::vector<BinWindow> windows;  // [bin][roi of the block]
  // gather_gradients': [bin][roi of the block][output channel - first], over the area
  std::vector<G> gradient;
  int64_t first = 0, channels = 0;
  std::vector<G> planes;  // one bin's, where the gradient is streamed

  // The windows of the block's ROIs (all valid, of one image), clipped to
  // its rows: from the call's table where blocks share one (finding a
  // ROI's spans again in every block took 4% of psroi-rfcn's NCHW
  // backward), else found here.
  void build(const Problem<G>& p, const GradientBlock& block, const WindowTable<G>* table) {
    const int64_t n = block.rois.size;
    windows.assign(p.shape.pooled_h * p.shape.pooled_w * n, BinWindow{});
    for (int64_t j = 0; j < n; ++j) {
      BinWindow* out = windows.data() + j;
      if (!table) {
        clipped_windows(p, block.rois.ids[j], block.y0, block.y1, out, n);
        continue;
      }
      const int64_t entry = table->entry(block.rois.ids + j);
      if (table->batch[entry] < 0) continue;
      clip(p.shape, &table->rows[entry * p.shape.pooled_h],
           &table->columns[entry * p.shape.pooled_w], block.y0, block.y1, out, n);
    }
  }

  // The NCHW output gradients of the block's ROIs (of build's windows),
  // output channels [first, last) of every bin, each over its bin's area.
  // Forced inline into the kernel's vector ISA: out of line it divided as
  // baseline code (psroi-rfcn's ps_roi_pool NCHW backward 2% slower).
  template <typename T>
  JAX_ROI_ALWAYS_INLINE void gather_gradients(const Shape& s, const GradientBlock& block,
                                              int64_t first_channel, int64_t last_channel,
                                              const T* grad_out) {
    const int64_t rois = block.rois.size, bins = s.pooled_h * s.pooled_w;
    first = first_channel;
    channels = last_channel - first_channel;
    gradient.resize(bins * rois * channels);
    areas.resize(bins);
    quotients.resize(bins);
    for (int64_t j = 0; j < rois; ++j) {
      // (an empty window's area is 1; its quotient is never read)
      for (int64_t b = 0; b < bins; ++b) areas[b] = static_cast<G>(windows[b * rois + j].area);
      const T* src = grad_out + output_index(s, block.rois.ids[j], first, 0, 0);
      for (int64_t c = 0; c < channels; ++c, src += bins) {
        for (int64_t b = 0; b < bins; ++b) quotients[b] = to_acc(src[b]) / areas[b];
        G* dst = gradient.data() + j * channels + c;
        for (int64_t b = 0; b < bins; ++b) dst[b * rois * channels] = quotients[b];
      }
    }
  }

  // ROI j's gradients of bin b from output channel c on.
  const G* gradients_of(int64_t b, int64_t rois, int64_t j, int64_t c) const {
    return gradient.data() + (b * rois + j) * channels + (c - first);
  }

 private:
  // Bin b's window into out[b * stride] (left as it is where the clip
  // leaves nothing).
  int64_t clipped_windows(const Problem<G>& p, int64_t k, int64_t y0, int64_t y1,
                          BinWindow* out, int64_t stride) {
    const Shape& s = p.shape;
    rows.resize(s.pooled_h);
    columns.resize(s.pooled_w);
    const int64_t batch = pool_bin_spans(p, k, rows.data(), columns.data());
    if (batch >= 0) clip(s, rows.data(), columns.data(), y0, y1, out, stride);
    return batch;
  }

  // The windows of a ROI's spans, clipped to rows [y0, y1), as
  // clipped_windows leaves them.
  static void clip(const Shape& s, const Span* rows, const Span* columns, int64_t y0, int64_t y1,
                   BinWindow* out, int64_t stride) {
    for (int64_t ph = 0; ph < s.pooled_h; ++ph) {
      const Span h = rows[ph];
      if (std::max<int64_t>(h.lo, y0) >= std::min<int64_t>(h.hi, y1)) continue;
      for (int64_t pw = 0; pw < s.pooled_w; ++pw) {
        const Span w = columns[pw];
        if (w.hi <= w.lo) continue;
        out[(ph * s.pooled_w + pw) * stride] =
            BinWindow{static_cast<int32_t>(std::max<int64_t>(h.lo, y0)),
                      static_cast<int32_t>(std::min<int64_t>(h.hi, y1)), w.lo, w.hi,
                      pooled_area(h, w)};
      }
    }
  }

  std::vector<Span> rows, columns;  // one ROI's
  std::vector<G> areas, quotients;  // gather_gradients' of one ROI: [bin]
};

// Output channels [first, first + n) of bin b of the block's ROIs, their
// gradients gathered (gather_gradients), into their planes (zeroed): the
// first at `base`, the next every `step` elements. A run is covered by
// vectors of `bytes` shifted left to stay in their row (a narrower map
// takes its pixels one by one); lanes outside the run add +0, which leaves
// the gradient as it was (it starts at +0, so it never holds -0).
template <int bytes, typename G>
JAX_ROI_ALWAYS_INLINE void window_backward_bin(const Shape& s, const GradientBlock& block,
                                               int64_t b, int64_t first, int64_t n, G* base,
                                               int64_t step, const PoolWindows<G>& pw) {
  using V = NativeVector<G, bytes>;
  constexpr int64_t L = native_lanes<G, bytes>;
  const int64_t rois = block.rois.size, W = s.width;
  const BinWindow* win = pw.windows.data() + b * rois;
  V lane = {};
  for (int64_t i = 0; i < L; ++i) lane[i] = G(i);
  using Mask = decltype(lane < lane);  // integer lanes, all ones where true
  for (int64_t j = 0; j < rois; ++j) {
    const BinWindow w = win[j];
    if (w.empty()) continue;
    const G* gj = pw.gradients_of(b, rois, j, first);
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
      // register constraint fails where the baseline ISA has no register
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
