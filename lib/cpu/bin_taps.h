// The CPU kernels of the ops that are linear in the features and whose
// samples do not factor into a y and an x axis (roi_align_rotated) or read
// a channel of their own per bin (ps_roi_align; ps_roi_pool's bins are
// windows, pool_windows.h). A ROI is
// first tabulated as taps: for each bin, the pixels it reads with their
// summed weights, and the bin's divisor. Every channel then reuses them:
//   out[bin, c] = sum over taps of weight * X[pixel, channel(c, bin)] / divisor
// and the backward is its adjoint. An op supplies the tabulation
// (`Tabulate::build(p, k, taps)`); TapKernel drives the ops that read every
// channel of a bin, position_sensitive_cpu.h the others.
// Where threads split the channels (NCHW forward, the backward of an image
// split among threads) the call's taps are tabulated once, by all threads,
// for all to read (TapList); where they split the ROIs, each thread
// tabulates its own as it visits them, and where they split the bins
// (ps_roi_align's NCHW forward), each ROI's bin as it visits it.
#pragma once

#include <algorithm>
#include <cmath>
#include <atomic>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "axis_table.h"
#include "cpu_common.h"
#include "first_touch.h"
#include "isa_dispatch.h"
#include "lane_tile.h"
#include "native_vector.h"
#include "parallel_for.h"
#include "reused_scratch.h"
#include "stream_store.h"

namespace jax_roi {

template <typename G>
struct Tap {
  int32_t y, x;  // a map's height and width each fit in 32 bits
  G weight;
};

// One ROI's taps as the kernels read them, bin by bin: a view into a
// BinTaps or a TapList.
template <typename G>
struct RoiTaps {
  const Tap<G>* taps = nullptr;    // indexed through `first`
  const int64_t* first = nullptr;  // bin b's taps: [first[b], first[b + 1])
  const G* divisor = nullptr;      // per bin
  const Span* bin_rows = nullptr;  // per bin, where rows_found
  Span rows;                       // all bins', where rows_found
  bool rows_found = false;
  int64_t bins = 0;
  int64_t roi = -1, batch = -1;  // batch -1: the ROI reads nothing

  const Tap<G>* begin(int64_t b) const { return taps + first[b]; }
  const Tap<G>* end(int64_t b) const { return taps + first[b + 1]; }

  // Whether rows [y0, y1) may hold a tap (of bin b): unknown rows may.
  bool may_meet(int64_t y0, int64_t y1) const { return !rows_found || rows.meets(y0, y1); }
  bool bin_may_meet(int64_t b, int64_t y0, int64_t y1) const {
    return !rows_found || bin_rows[b].meets(y0, y1);
  }
};

// A tabulation's ROI entry points (Tabulate::build, add_bin) are compiled
// once, out of line, in the baseline ISA: NCHW tabulates the call's taps in
// the driver's baseline code and NHWC each ROI inside a kernel compiled for
// AVX2 or AVX-512, and the one copy serves both. (Being out of line once
// also kept the layouts' rounding alike; since 0.4.35 the module is
// compiled without FMA contraction, CMakeLists.txt, and every copy rounds
// alike.)
#define JAX_ROI_TABULATION __attribute__((noinline))

// One ROI's taps as a tabulation adds them, bin by bin.
template <typename G>
struct BinTaps {
  std::vector<Tap<G>> taps;      // bin b's: [first[b], first[b + 1])
  std::vector<int64_t> first;
  std::vector<G> divisor;        // per bin
  int64_t roi = -1, batch = -1;  // batch -1: the ROI reads nothing
  // The rows the taps read, per bin and in all, once find_rows() has run
  // (a shared list built for row bands runs it: they skip what they do
  // not meet).
  std::vector<Span> bin_rows;
  Span rows;
  bool rows_found = false;

  size_t bytes() const { return vector_bytes(taps, first, divisor, bin_rows); }

  // The taps as the kernels read them, valid until the next change.
  const RoiTaps<G>& view() {
    viewed = {taps.data(), first.data(), divisor.data(), bin_rows.data(), rows, rows_found,
              static_cast<int64_t>(divisor.size()), roi, batch};
    return viewed;
  }

  void start(int64_t k, int64_t b) {
    taps.clear();
    first.assign(1, 0);
    divisor.clear();
    bin_rows.clear();
    rows = {};
    rows_found = false;
    roi = k;
    batch = b;
  }

  void find_rows() {
    const int64_t bins = static_cast<int64_t>(divisor.size());
    bin_rows.assign(bins, Span{});
    rows = {};
    for (int64_t b = 0; b < bins; ++b) {
      if (begin(b) == end(b)) continue;
      Span span{begin(b)->y, begin(b)->y};
      for (const Tap<G>* tap = begin(b); tap != end(b); ++tap) {
        span.lo = std::min(span.lo, tap->y);
        span.hi = std::max(span.hi, tap->y);
      }
      span.hi += 1;
      bin_rows[b] = span;
      rows = rows.joined(span);
    }
    rows_found = true;
  }

  // Adds a weight to the current bin's tap of (y, x). A tap is kept even
  // when its weights sum to 0, so a NaN pixel a sample touches still
  // reaches the result, as it does sample by sample. Only the last
  // kMergeWindow taps are searched, so a bin of many samples costs linear
  // time; a pixel met again after that gets a second tap (the same sum).
  static constexpr int64_t kMergeWindow = 16;
  void add(int64_t y, int64_t x, G weight) {
    const int64_t n = static_cast<int64_t>(taps.size());
    for (int64_t i = n - 1; i >= std::max(first.back(), n - kMergeWindow); --i) {
      if (taps[i].y == y && taps[i].x == x) {
        taps[i].weight += weight;
        return;
      }
    }
    add_new(y, x, weight);
  }

  // A tap the bin does not have yet.
  // (Written field by field in place: a pushed temporary is stored as
  // three fields and reloaded as wider words, which stalls every tap on
  // store forwarding.)
  void add_new(int64_t y, int64_t x, G weight) {
    Tap<G>& tap = taps.emplace_back();
    tap.y = static_cast<int32_t>(y);
    tap.x = static_cast<int32_t>(x);
    tap.weight = weight;
  }

  void add(const Bilinear<G>& w) {
    add(w.y0, w.x0, w.w00);
    add(w.y0, w.x1, w.w01);
    add(w.y1, w.x0, w.w10);
    add(w.y1, w.x1, w.w11);
  }

  // A sample's corners, none of which the bin has yet.
  void add_new_corners(const Bilinear<G>& w) {
    add_new(w.y0, w.x0, w.w00);
    add_new(w.y0, w.x1, w.w01);
    add_new(w.y1, w.x0, w.w10);
    add_new(w.y1, w.x1, w.w11);
  }

  void end_bin(G bin_divisor) {
    first.push_back(static_cast<int64_t>(taps.size()));
    divisor.push_back(bin_divisor);
  }

  const Tap<G>* begin(int64_t b) const { return taps.data() + first[b]; }
  const Tap<G>* end(int64_t b) const { return taps.data() + first[b + 1]; }

 private:
  RoiTaps<G> viewed;
};

// Starts ROI k's taps: loads it and returns whether it reads anything (a
// valid ROI on a map with pixels; the bins are then the caller's to add).
template <typename G>
bool start_taps(const Problem<G>& p, int64_t k, BinTaps<G>& t, Roi<G>* r) {
  *r = load_roi(p.rois, k);
  const bool reads = r->valid && p.shape.height > 0 && p.shape.width > 0;
  t.start(k, reads ? r->batch : -1);
  return reads;
}

// Whether no two samples of a bin read a common pixel: 2*sqrt(2) pixels or
// more apart along both box axes, any two differ by 2 or more in y or in
// x, whatever the rotation, so their corners are disjoint. (Samples
// clamped to the map's edge may still meet; they then keep a tap each,
// which sums the same.) Such bins skip the merge search, which costs more
// than the few taps it would save (rot-p2's forward 14.5 -> 13.2 ms).
template <typename Bin>
bool samples_apart(const Bin& bin) {
  using G = decltype(bin.roi.bin_h);
  const G min_step = G(2.8285);
  return std::abs(bin.roi.bin_h) >= min_step * bin.roi.grid_h &&
         std::abs(bin.roi.bin_w) >= min_step * bin.roi.grid_w;
}

// A bin of at most kGridSamples samples whose corners span at most
// kGridCells pixels merges them on a dense grid of those pixels instead of
// searching the last taps for each corner (the search took a quarter of
// psroi-rfcn's ps_roi_align forward when its taps were merged so). Its taps
// then come in row-major order.
constexpr int64_t kGridSamples = 16;
constexpr int64_t kGridCells = 64;

// The taps of `count` samples `w` (all inside) merged on a grid, or by the
// search where they span too many pixels.
template <typename G>
void add_merged_samples(const Bilinear<G>* w, int64_t count, BinTaps<G>& t) {
  if (count == 0) return;
  int64_t y_lo = w[0].y0, y_hi = w[0].y0, x_lo = w[0].x0, x_hi = w[0].x0;
  for (int64_t i = 0; i < count; ++i) {
    y_lo = std::min({y_lo, w[i].y0, w[i].y1});
    y_hi = std::max({y_hi, w[i].y0, w[i].y1});
    x_lo = std::min({x_lo, w[i].x0, w[i].x1});
    x_hi = std::max({x_hi, w[i].x0, w[i].x1});
  }
  const int64_t cols = x_hi - x_lo + 1;
  if ((y_hi - y_lo + 1) * cols > kGridCells) {
    for (int64_t i = 0; i < count; ++i) t.add(w[i]);
    return;
  }
  // A pixel a sample touches keeps its tap even where its weights sum to 0
  // (see BinTaps::add): `touched`, not the weight, marks it.
  G weight[kGridCells];
  bool touched[kGridCells] = {};
  auto add = [&](int64_t y, int64_t x, G v) {
    const int64_t cell = (y - y_lo) * cols + (x - x_lo);
    weight[cell] = touched[cell] ? weight[cell] + v : v;
    touched[cell] = true;
  };
  for (int64_t i = 0; i < count; ++i) {
    add(w[i].y0, w[i].x0, w[i].w00);
    add(w[i].y0, w[i].x1, w[i].w01);
    add(w[i].y1, w[i].x0, w[i].w10);
    add(w[i].y1, w[i].x1, w[i].w11);
  }
  for (int64_t y = y_lo, cell = 0; y <= y_hi; ++y)
    for (int64_t x = x_lo; x <= x_hi; ++x, ++cell)
      if (touched[cell]) t.add_new(y, x, weight[cell]);
}

// The taps of a bin's bilinear samples (in ranges ys x xs) of a Bin as the
// element functions define it (elements/), ending the bin.
template <typename G, typename Bin>
void add_sample_taps(const Bin& bin, const Shape& s, BinTaps<G>& t) {
  const bool apart = samples_apart(bin);
  const int64_t samples = (bin.ys.hi - bin.ys.lo) * (bin.xs.hi - bin.xs.lo);
  if (!apart && samples <= kGridSamples) {
    Bilinear<G> w[kGridSamples];
    int64_t count = 0;
    for (int64_t iy = bin.ys.lo; iy < bin.ys.hi; ++iy) {
      for (int64_t ix = bin.xs.lo; ix < bin.xs.hi; ++ix) {
        w[count] = bin.sample(iy, ix, s);
        if (w[count].inside) ++count;
      }
    }
    add_merged_samples(w, count, t);
    t.end_bin(bin.count);
    return;
  }
  for (int64_t iy = bin.ys.lo; iy < bin.ys.hi; ++iy) {
    for (int64_t ix = bin.xs.lo; ix < bin.xs.hi; ++ix) {
      Bilinear<G> w = bin.sample(iy, ix, s);
      if (!w.inside) continue;
      if (apart)
        t.add_new_corners(w);
      else
        t.add(w);
    }
  }
  t.end_bin(bin.count);
}

// The taps of every ROI of a list, built once per call by all threads, so
// that threads splitting the channels do not each tabulate every ROI.
// Past kSharedTaps taps in all (huge boxes with dense grids) it holds none,
// and each thread tabulates a ROI when it visits it: memory stays bounded.
// A list never built (for threads that split the ROIs or the bins) holds
// none either.
// of(id, p, scratch) gives the taps of an entry of the list (or of a part of it).
template <typename G, typename Tabulate>
struct TapList {
  static constexpr int64_t kSharedTaps = int64_t(1) << 22;  // about 50 MB
  std::vector<RoiTaps<G>> rois;  // per entry, into `runs`
  const int64_t* ids = nullptr;
  bool shared = false;

  // `find_rows`: each entry's rows are found too (BinTaps::find_rows).
  void build(ffi::ThreadPool& pool, const Problem<G>& p, const RoiList& list, bool find_rows) {
    start(list);
    std::atomic<int64_t> total{0}, chunks{0};
    parallel_for_guided(pool, list.size, 4, [&](int64_t j0, int64_t j1) {
      tabulate_range(p, j0, j1, find_rows, total, runs[chunks++]);
    });
    finish(total.load());
  }

  // The same, by the calling thread alone (for a part of a call's ROIs
  // that one thread visits many times). Returns itself.
  const TapList& build_serial(const Problem<G>& p, const RoiList& list) {
    start(list);
    std::atomic<int64_t> total{0};
    tabulate_range(p, 0, list.size, /*find_rows=*/false, total, runs[0]);
    finish(total.load());
    return *this;
  }

  // Kept between calls (reused_scratch.h): emptied, its memory kept.
  void forget() {
    ids = nullptr;
    shared = false;
    rois.clear();
  }
  size_t bytes() const {
    size_t n = vector_bytes(rois, runs);
    for (const Run& run : runs) n += vector_bytes(run.taps, run.first, run.divisor, run.bin_rows);
    return n;
  }

  // (Inlined: the NCHW backward asks for every ROI once a bin.)
  JAX_ROI_ALWAYS_INLINE const RoiTaps<G>& of(const int64_t* id, const Problem<G>& p,
                                             BinTaps<G>& own) const {
    if (shared) return rois[id - ids];
    return tabulate_own(p, *id, own);
  }

 private:
  // The taps of a run of consecutive entries, one after another: a run
  // allocates a few vectors where a vector per ROI cost psroi-rfcn's
  // ps_roi_align NCHW forward a tenth of its time in malloc and free.
  struct Run {
    static constexpr size_t kRunReserve = size_t(1) << 16;
    std::vector<Tap<G>> taps;
    std::vector<int64_t> first;  // per entry, its bins + 1 offsets into taps
    std::vector<G> divisor;
    std::vector<Span> bin_rows;

    void clear() {
      taps.clear();
      first.clear();
      divisor.clear();
      bin_rows.clear();
    }

    // Appends a ROI's taps (`entries_left` of the run's, this one included).
    void append(const BinTaps<G>& t, int64_t entries_left) {
      const int64_t bins = static_cast<int64_t>(t.divisor.size());
      if (divisor.empty()) {  // sized for the run from its first entry, within reason
        const auto expect = [&](size_t n) { return std::min(n * entries_left, kRunReserve); };
        taps.reserve(expect(t.taps.size()));
        first.reserve(expect(bins + 1));
        divisor.reserve(expect(bins));
        if (t.rows_found) bin_rows.reserve(expect(bins));
      }
      const int64_t base = static_cast<int64_t>(taps.size());
      taps.insert(taps.end(), t.taps.begin(), t.taps.end());
      for (int64_t f : t.first) first.push_back(base + f);
      divisor.insert(divisor.end(), t.divisor.begin(), t.divisor.end());
      if (t.rows_found) bin_rows.insert(bin_rows.end(), t.bin_rows.begin(), t.bin_rows.end());
    }
  };
  // A run for each chunk of entries, taken in the order the chunks start,
  // so that a list built call after call reuses the same runs' memory.
  std::vector<Run> runs;

  static const RoiTaps<G>& tabulate_own(const Problem<G>& p, int64_t k, BinTaps<G>& own) {
    Tabulate::build(p, k, own);
    return own.view();
  }

  void start(const RoiList& list) {
    ids = list.ids;
    rois.assign(list.size, RoiTaps<G>{});
    // Emptied, not freed: a list rebuilt block after block (an NCHW
    // gradient block's part) reuses its runs' memory.
    // (at least one: build_serial's, for an empty list too)
    if (runs.size() < static_cast<size_t>(std::max<int64_t>(list.size, 1)))
      runs.resize(std::max<int64_t>(list.size, 1));
    for (Run& run : runs) run.clear();
  }

  // Entries [j0, j1), each tabulated into one scratch, then appended to
  // `run`; their views are taken once the run is whole.
  void tabulate_range(const Problem<G>& p, int64_t j0, int64_t j1, bool find_rows,
                      std::atomic<int64_t>& total, Run& run) {
    BinTaps<G> scratch;
    int64_t j = j0;
    for (; j < j1 && total.load() <= kSharedTaps; ++j) {
      Tabulate::build(p, ids[j], scratch);
      if (find_rows) scratch.find_rows();
      rois[j] = scratch.view();  // pointed into the run below
      run.append(scratch, j1 - j);
      total += static_cast<int64_t>(scratch.taps.size());
    }
    int64_t at = 0;  // where entry i's bins start in the run
    for (int64_t i = j0; i < j; ++i) {
      RoiTaps<G>& view = rois[i];
      view.taps = run.taps.data();
      view.first = run.first.data() + at + (i - j0);  // each entry has bins + 1
      view.divisor = run.divisor.data() + at;
      view.bin_rows = view.rows_found ? run.bin_rows.data() + at : nullptr;
      at += view.bins;
    }
  }

  void finish(int64_t total) {
    shared = total <= kSharedTaps;
    if (!shared) rois.clear(), rois.shrink_to_fit(), runs.clear(), runs.shrink_to_fit();
  }
};

// ------------------------------------------------------------------ forward

// How many taps ahead the NHWC tap loops prefetch a pixel's channels (into
// L2: prefetch_into_l2): the rows of a large map miss the cache (rot-p2
// forward 11.6 -> 10.7 ms with AVX-512, 14.2 -> 11.7 with AVX2 when first
// prefetched into L1, 16 ahead; 4 ahead was too few for AVX2).
constexpr int64_t kPrefetchTaps = 24;

// NHWC, channels [c0, c0 + vectors * lanes) of one bin, in registers,
// streamed past the cache when `stream` (stream_store.h).
template <int bytes, int vectors, typename T, typename G>
JAX_ROI_ALWAYS_INLINE void tap_forward_nhwc_block(const RoiTaps<G>& t, int64_t b,
                                                  const Pixels<T>& px, T* dst, bool stream) {
  constexpr int64_t lanes = native_lanes<G, bytes>;
  NativeVector<G, bytes> sum[vectors] = {};
  const Tap<G>* const prefetch_end = t.end(t.bins - 1);  // the ROI's last tap
  for (const Tap<G>* tap = t.begin(b); tap != t.end(b); ++tap) {
    if (prefetch_end - tap > kPrefetchTaps)
      prefetch_into_l2(px.at(tap[kPrefetchTaps].y, tap[kPrefetchTaps].x), vectors * lanes);
    const T* __restrict__ v = px.at(tap->y, tap->x);
    for (int i = 0; i < vectors; ++i) sum[i] += tap->weight * load_native<G, bytes>(v + i * lanes);
  }
  for (int i = 0; i < vectors; ++i) {
    sum[i] /= t.divisor[b];
    store_native_result<bytes, T, G>(dst + i * lanes, sum[i], stream);
  }
}

// NHWC, every channel of bin b (not position-sensitive): register blocks,
// then the last few channels.
template <int bytes, typename T, typename G>
JAX_ROI_ALWAYS_INLINE void tap_forward_nhwc_bin(const Shape& s, const RoiTaps<G>& t, int64_t b,
                                                const T* features, T* out, bool stream) {
  constexpr int64_t lanes = native_lanes<G, bytes>;
  const int64_t C = s.channels;
  const Pixels<T> base = image_pixels(s, features, t.batch, 0);
  T* dst = out + output_index(s, t.roi, 0, b / s.pooled_w, b % s.pooled_w);
  int64_t c = 0;
  // Blocks of tap_block_vectors (native_vector.h), then smaller ones.
  auto blocks = [&](auto n) JAX_ROI_INLINE_LAMBDA {
    constexpr int vectors = decltype(n)::value;
    if constexpr (vectors <= tap_block_vectors<bytes, T>) {
      for (; c + vectors * lanes <= C; c += vectors * lanes)
        tap_forward_nhwc_block<bytes, vectors>(
            t, b, Pixels<T>{base.data + c, base.stride, base.row}, dst + c, stream);
    }
  };
  blocks(std::integral_constant<int, 16>{});
  blocks(std::integral_constant<int, 8>{});
  blocks(std::integral_constant<int, 2>{});
  blocks(std::integral_constant<int, 1>{});
  for (; c < C; ++c) {
    G sum = G(0);
    for (const Tap<G>* tap = t.begin(b); tap != t.end(b); ++tap)
      sum += tap->weight * to_acc(base.at(tap->y, tap->x)[c]);
    dst[c] = from_acc<T>(sum / t.divisor[b]);
  }
}

// Zeros for a ROI that reads nothing: output channels [c0, c1) of bins
// [b0, b1) (every bin by default).
template <typename T>
void zero_roi_output(const Shape& s, int64_t k, int64_t c0, int64_t c1, T* out, int64_t b0 = 0,
                     int64_t b1 = -1) {
  if (b1 < 0) b1 = s.pooled_h * s.pooled_w;
  for (int64_t b = b0; b < b1; ++b)
    for (int64_t c = c0; c < c1; ++c)
      out[output_index(s, k, c, b / s.pooled_w, b % s.pooled_w)] = from_acc<T>(acc_t<T>(0));
}

// NCHW (not position-sensitive): a tile's channels of one ROI, into `block`.
template <int bytes, typename G>
JAX_ROI_ALWAYS_INLINE void tap_forward_lanes(const Shape& s, const RoiTaps<G>& t,
                                             const LaneTile<G>& tile, OutputBlock<G>& block) {
  const int64_t bins = s.pooled_h * s.pooled_w;
  for (int64_t b = 0; b < bins; ++b) {
    LaneVectors<G, bytes> sum;
    for (const Tap<G>* tap = t.begin(b); tap != t.end(b); ++tap)
      sum.add_scaled(tap->weight, tile.at(s.width, tap->y, tap->x));
    sum.divide(t.divisor[b]);
    block.put(b, sum);
  }
}

// ----------------------------------------------------------------- backward

// NHWC (not position-sensitive): ROI t's gradient into channels [c0, c1).
// In a block too large for the cache (kUncached) a tap prefetches the
// pixel kPrefetchTaps ahead, as the forward does (rot-p2 15% faster), and
// the block is zeroed at first touch (first_touch.h; 4-6% more). A small
// block was zeroed whole and is read from cache, where both only cost
// (prroi-atom 2-6%). (Row bands did not pay here: a tap's channels are one
// contiguous run, which the prefetchers fetch whole; rot-p2 was no faster.)
template <bool kUncached, typename T, typename G>
JAX_ROI_ALWAYS_INLINE void tap_backward_nhwc(const Shape& s, const RoiTaps<G>& t, int64_t c0,
                                             int64_t c1, const T* grad_out, G* grad,
                                             std::vector<G>& scaled, FirstTouch& touch) {
  const int64_t width = c1 - c0, bins = s.pooled_h * s.pooled_w;
  scaled.resize(width);
  G* __restrict__ g = scaled.data();
  const Tap<G>* const prefetch_end = t.end(t.bins - 1);  // the ROI's last tap
  for (int64_t b = 0; b < bins; ++b) {
    const T* src = grad_out + output_index(s, t.roi, c0, b / s.pooled_w, b % s.pooled_w);
    prefetch_output_bin_ahead(s, grad_out, t.roi, c0, width, b);
    for (int64_t c = 0; c < width; ++c) g[c] = to_acc(src[c]) / t.divisor[b];
    for (const Tap<G>* tap = t.begin(b); tap != t.end(b); ++tap) {
      if (kUncached && prefetch_end - tap > kPrefetchTaps) {
        const Tap<G>& next = tap[kPrefetchTaps];
        prefetch_into_l2(gradient_at(s, grad, t.batch, next.y, next.x, c0), width);
      }
      G* __restrict__ d = gradient_at(s, grad, t.batch, tap->y, tap->x, c0);
      const G w = tap->weight;
      if (kUncached && touch.first(tap->y * s.width + tap->x)) {
        for (int64_t c = 0; c < width; ++c) d[c] = G(0) + g[c] * w;  // += on a zero, unread
      } else {
        for (int64_t c = 0; c < width; ++c) d[c] += g[c] * w;
      }
    }
  }
}

// NCHW (not position-sensitive): ROI t's gradient for a tile's channels,
// read from `block`, into the tile.
template <int bytes, typename G>
JAX_ROI_ALWAYS_INLINE void tap_backward_lanes(const Shape& s, const RoiTaps<G>& t,
                                              const OutputBlock<G>& block, LaneTile<G>& tile) {
  const int64_t bins = s.pooled_h * s.pooled_w;
  const typename LaneTile<G>::View pixels = tile.view(s.width);  // (see View)
  for (int64_t b = 0; b < bins; ++b) {
    LaneVectors<G, bytes> g = block.template get<bytes>(b);
    g.divide(t.divisor[b]);
    const Tap<G>* const end = t.end(b);  // a local too, for the same reason
    for (const Tap<G>* tap = t.begin(b); tap != end; ++tap)
      g.add_scaled_to(pixels.at(tap->y, tap->x), tap->weight);
  }
}

// --------------------------------------------------------------- the kernels

// The call-level tables of the tap kernels (cpu_kernel.h): a TapList, with
// its ROIs' rows found when NHWC backward blocks are row bands.
template <typename Tabulate, bool kRowBands>
struct CallTapTables {
  static constexpr bool kNhwcBackwardRowBands = kRowBands;
  template <typename G>
  static void tabulate(ffi::ThreadPool& pool, const Problem<G>& p, const RoiList& list,
                       TapList<G, Tabulate>& tables) {
    tables.build(pool, p, list, /*find_rows=*/kRowBands && p.shape.channels_last);
  }
};

// Kept between calls (reused_scratch.h).
template <typename G>
struct TapScratch {
  BinTaps<G> taps;  // a ROI's, when the call's are not shared
  LaneTile<G> tile;
  OutputBlock<G> block;
  std::vector<G> scaled;
  FirstTouch touch;  // the NHWC backward's
  size_t bytes() const {
    return taps.bytes() + tile.bytes() + block.bytes() + vector_bytes(scaled) + touch.bytes();
  }
  void forget() { tile.forget(); }  // (the rest is written before it is read)
};

// The kernels of the ops whose bins read every channel (roi_align_rotated,
// prroi_pool; the position-sensitive ones are in position_sensitive_cpu.h).
template <typename Tabulate>
struct TapKernel : CallTapTables<Tabulate, /*kRowBands=*/false> {
  template <typename G>
  using Tables = TapList<G, Tabulate>;
  template <typename G>
  using Scratch = TapScratch<G>;
  static constexpr NchwSplit kNchwSplit = NchwSplit::kChannels;
  static constexpr bool kNchwFromChannelsLast = false;
  static constexpr bool backward_writes_block(bool) { return true; }

  // Output channels [c0, c1) of the listed ROIs, channels outermost so
  // that a plane (or a tile of them) stays in cache while every ROI reads it.
  template <typename T, typename G>
  static void forward_nchw(const Problem<G>& p, const RoiList& list, const Tables<G>& tables,
                           int64_t c0, int64_t c1, const T* features, T* out, int32_t*,
                           Scratch<G>& scratch) {
    with_native_isa([&](auto bytes) JAX_ROI_INLINE_LAMBDA {
      const Shape& s = p.shape;
      const int64_t bins = s.pooled_h * s.pooled_w;
      scratch.block.resize(bins);
      for (int64_t c = c0; c < c1; c += kLanes) {
        const int lanes = static_cast<int>(std::min<int64_t>(kLanes, c1 - c));
        for (int64_t j = 0; j < list.size; ++j) {
          const RoiTaps<G>& t = tables.of(list.ids + j, p, scratch.taps);
          if (t.batch < 0) {
            zero_roi_output(s, t.roi, c, c + lanes, out);
            continue;
          }
          if (scratch.tile.batch != t.batch || scratch.tile.channel != c)
            scratch.tile.load(s, features, t.batch, c, lanes);
          tap_forward_lanes<decltype(bytes)::value>(s, t, scratch.tile, scratch.block);
          scratch.block.write(out + output_index(s, t.roi, c, 0, 0), lanes, s);
        }
      }
    });
  }

  template <typename T, typename G>
  static void forward_nhwc(const Problem<G>& p, const RoiList& list, const Tables<G>& tables,
                           const T* features, T* out, int32_t*, Scratch<G>& scratch) {
    with_native_isa([&](auto bytes) JAX_ROI_INLINE_LAMBDA {
      const Shape& s = p.shape;
      const int64_t bins = s.pooled_h * s.pooled_w;
      const bool stream = streamed_result<T>(s.output_count());
      for (int64_t j = 0; j < list.size; ++j) {
        const RoiTaps<G>& t = tables.of(list.ids + j, p, scratch.taps);
        if (t.batch < 0) {
          zero_roi_output(s, t.roi, 0, s.out_channels, out);
        } else {
          for (int64_t b = 0; b < bins; ++b)
            tap_forward_nhwc_bin<decltype(bytes)::value>(s, t, b, features, out, stream);
        }
      }
    });
  }

  // The listed ROIs (all of one image) into input channels [c0, c1).
  template <typename T, typename G>
  static void backward(const Problem<G>& p, const GradientBlock& block, const Tables<G>& tables,
                       const T* grad_out, const int32_t*, G* grad, Scratch<G>& scratch) {
    with_native_isa([&](auto bytes) JAX_ROI_INLINE_LAMBDA {
      const RoiList& list = block.rois;
      const int64_t c0 = block.c0, c1 = block.c1;
      const Shape& s = p.shape;
      if (s.channels_last) {
        auto add_rois = [&](auto uncached) JAX_ROI_INLINE_LAMBDA {
          for (int64_t j = 0; j < list.size; ++j) {
            const RoiTaps<G>& t = tables.of(list.ids + j, p, scratch.taps);
            if (t.batch >= 0)
              tap_backward_nhwc<decltype(uncached)::value>(s, t, c0, c1, grad_out, grad,
                                                           scratch.scaled, scratch.touch);
          }
        };
        if (FirstTouch::pays(s, block, sizeof(G))) {
          scratch.touch.start(s);
          add_rois(std::true_type{});
          scratch.touch.zero_the_rest(s, block, grad);
        } else {
          zero_gradient_block(s, block, grad);
          add_rois(std::false_type{});
        }
        return;
      }
      // NCHW: each tile of channels takes every ROI's gradient, then is
      // written to the gradient whole. The list is one image's valid ROIs
      // (gradient_blocks.h), so the tiles write all of the block.
      if (list.size == 0) return;
      const int64_t image = load_roi(p.rois, list.ids[0]).batch;
      scratch.block.resize(s.pooled_h * s.pooled_w);
      LaneTile<G>& tile = scratch.tile;
      for (int64_t c = c0; c < c1; c += kLanes) {
        const int lanes = static_cast<int>(std::min<int64_t>(kLanes, c1 - c));
        tile.load_zeros(s, image, c);
        for (int64_t j = 0; j < list.size; ++j) {
          const RoiTaps<G>& t = tables.of(list.ids + j, p, scratch.taps);
          if (t.batch < 0) continue;
          if (j + 1 < list.size) prefetch_output_lanes(s, grad_out, list.ids[j + 1], c, lanes);
          scratch.block.read(grad_out + output_index(s, t.roi, c, 0, 0), lanes);
          tap_backward_lanes<decltype(bytes)::value>(s, t, scratch.block, tile);
        }
        tile.flush_into(s, grad, lanes, /*replace=*/true);
      }
    });
  }
};

}  // namespace jax_roi
