// ps_roi_align and ps_roi_pool on the CPU, each bin reading its own
// channel: input channel c*bins + b is bin b of output channel c. A
// ps_roi_align ROI's bins are tabulated as taps (bin_taps.h) with the
// element functions' geometry; a ps_roi_pool bin is a window of pixels of
// weight 1 (pool_windows.h), read directly, with no taps to tabulate.
//
// A bin's pixels run outermost and its output channels innermost: the
// channels' sums (or updates) are independent, so their scattered loads
// overlap. The forwards keep a block of eight channels' sums in registers
// over the bin's pixels (for_channel_blocks; ps_roi_pool's NHWC forward
// over a row of them, see pooled_forward_by_rows), the backward leaves its
// pixel loop once a bin. The NCHW backward visits
// the bins outermost, zeroing a bin's planes just before every ROI adds to
// them: they are written to memory once, and their updates hit the cache
// (where zeroing the whole block first left them to be fetched again).
// ps_roi_pool's backward sums a gradient large enough to stream in a
// scratch that stays in cache (a bin's planes in NCHW, a row band in NHWC)
// and streams it: zeroed in place, the gradient was read from memory first.
// The NCHW forward of ps_roi_align reads a bin's planes interleaved in a
// tile instead (bin_planes.h), so that a tap's channels are vector loads;
// the NCHW backward of ps_roi_pool adds its bins' windows row by row as
// vectors (pool_windows.h).
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "../elements/position_sensitive.h"
#include "bin_planes.h"
#include "bin_taps.h"
#include "cpu_kernel.h"
#include "gradient_blocks.h"
#include "pool_windows.h"
#include "stream_store.h"

namespace jax_roi {

// The output channels c whose input channel c*bins + b lies in [c0, c1):
// [first, last).
struct MappedChannels {
  int64_t first, last;
};

inline MappedChannels mapped_channels(const Shape& s, int64_t b, int64_t c0, int64_t c1) {
  const int64_t bins = s.pooled_h * s.pooled_w;
  // (the numerators are kept non-negative: C++ division truncates towards zero)
  const int64_t first = c0 > b ? (c0 - b + bins - 1) / bins : 0;
  const int64_t last = c1 > b ? std::min<int64_t>(s.out_channels, (c1 - 1 - b) / bins + 1) : 0;
  return {first, std::max(first, last)};
}

// Each bin's output channels for a gradient block, found once for the
// block: two divisions each, where the bins of every ROI need them.
inline void map_bins(const Shape& s, const GradientBlock& block,
                     std::vector<MappedChannels>& mapped) {
  mapped.resize(s.pooled_h * s.pooled_w);
  for (int64_t b = 0; b < s.pooled_h * s.pooled_w; ++b)
    mapped[b] = mapped_channels(s, b, block.c0, block.c1);
}

// Between the input channels of consecutive output channels of one bin.
inline int64_t mapped_channel_step(const Shape& s) {
  return s.pooled_h * s.pooled_w * (s.channels_last ? 1 : s.height * s.width);
}

// f(count, c) for the channels [0, n) in blocks: `count` (a constant of
// at most kChannelBlock) channels from c on. The forward keeps a block's
// sums in registers across a bin's pixels and loads its channels as
// scalars: vectors assembled lane by lane from scattered loads cost about
// three cycles a channel (psroi-rfcn's forwards 10% slower).
constexpr int kChannelBlock = 8;
template <typename F>
JAX_ROI_ALWAYS_INLINE void for_channel_blocks(int64_t n, F&& f) {
  int64_t c = 0;
  for (; c + kChannelBlock <= n; c += kChannelBlock)
    f(std::integral_constant<int, kChannelBlock>{}, c);
  static_assert(kChannelBlock == 8, "the cases below cover a block's remainders");
  switch (n - c) {
    case 7: return f(std::integral_constant<int, 7>{}, c);
    case 6: return f(std::integral_constant<int, 6>{}, c);
    case 5: return f(std::integral_constant<int, 5>{}, c);
    case 4: return f(std::integral_constant<int, 4>{}, c);
    case 3: return f(std::integral_constant<int, 3>{}, c);
    case 2: return f(std::integral_constant<int, 2>{}, c);
    case 1: return f(std::integral_constant<int, 1>{}, c);
    default: return;
  }
}

// The NCHW forward splits the bins among threads, so a ROI's outputs come
// from every thread; in NCHW a bin's channels lie PH*PW elements apart, and
// the threads wrote to the same cache lines all along (psroi-rfcn's
// ps_roi_pool forward: 2.0 ms on two cores, 1.4 ms on one). So it stages
// them bin-major, [PH*PW, K, C], each thread writing runs of its own bins
// one after another, in a buffer the driver then transposes (CpuKernel's
// kNchwSplit::kBins). This is where a ROI's bin's output channels begin:
// in that buffer, or in NHWC in the output itself.
inline int64_t bin_run_index(const Shape& s, int64_t roi, int64_t b) {
  if (s.channels_last) return output_index(s, roi, 0, b / s.pooled_w, b % s.pooled_w);
  return (b * s.num_rois + roi) * s.out_channels;
}

// Output channels [c0, c1) of a ROI's bin b are 0.
template <typename T>
JAX_ROI_ALWAYS_INLINE void zero_bin_run(const Shape& s, int64_t roi, int64_t b, int64_t c0,
                                        int64_t c1, T* out) {
  T* const run = out + bin_run_index(s, roi, b);
  std::fill(run + c0, run + c1, from_acc<T>(acc_t<T>(0)));
}

// The sums of output bin b of a ROI (every output channel) over its
// divisor into its run.
template <typename T, typename G>
JAX_ROI_ALWAYS_INLINE void write_mapped_bin(const Shape& s, int64_t roi, int64_t b, const G* sum,
                                            G divisor, T* out) {
  T* dst = out + bin_run_index(s, roi, b);
  for (int64_t c = 0; c < s.out_channels; ++c) dst[c] = from_acc<T>(sum[c] / divisor);
}

// Output bin b of ROI t, whose taps are its bin tb (b, or 0 when t holds
// that bin alone), every output channel, `acc` holding their sums.
template <typename T, typename G>
JAX_ROI_ALWAYS_INLINE void mapped_forward_bin(const Shape& s, const RoiTaps<G>& t, int64_t b,
                                              int64_t tb, const T* features, T* out,
                                              std::vector<G>& acc) {
  const int64_t step = mapped_channel_step(s);
  const Pixels<T> px = image_pixels(s, features, t.batch, b);  // output channel 0's
  acc.resize(s.out_channels);
  for_channel_blocks(s.out_channels, [&](auto count, int64_t c) JAX_ROI_INLINE_LAMBDA {
    G sum[count] = {};
    const T* const from = px.data + c * step;
    for (const Tap<G>* tap = t.begin(tb); tap != t.end(tb); ++tap) {
      const T* __restrict__ v = from + tap->y * px.row + tap->x * px.stride;
      const G w = tap->weight;
      for (int i = 0; i < count; ++i) sum[i] += w * to_acc(v[i * step]);
    }
    std::copy(sum, sum + count, acc.data() + c);
  });
  write_mapped_bin(s, t.roi, b, acc.data(), t.divisor[tb], out);
}

// The same for a pooled bin, a window of pixels of weight 1, row by row
// (the same sums in the same order as the taps of 0.4.13). Not written as
// mapped_forward_bin with a pixel visitor: that version's NCHW forward
// took 0.84 ms instead of 0.61 (psroi-rfcn, fastest calls).
template <typename T, typename G>
JAX_ROI_ALWAYS_INLINE void window_forward_bin(const Shape& s, int64_t roi, int64_t batch,
                                              int64_t b, const BinWindow& win, const T* features,
                                              T* out, std::vector<G>& acc) {
  const int64_t step = mapped_channel_step(s);
  const Pixels<T> px = image_pixels(s, features, batch, b);
  acc.resize(s.out_channels);
  for_channel_blocks(s.out_channels, [&](auto count, int64_t c) JAX_ROI_INLINE_LAMBDA {
    G sum[count] = {};
    for (int64_t y = win.h0; y < win.h1; ++y) {
      const T* v = px.data + c * step + y * px.row + win.w0 * px.stride;
      for (int64_t x = win.w0; x < win.w1; ++x, v += px.stride) {
        for (int i = 0; i < count; ++i) sum[i] += to_acc(v[i * step]);
      }
    }
    std::copy(sum, sum + count, acc.data() + c);
  });
  write_mapped_bin(s, roi, b, acc.data(), static_cast<G>(win.area), out);
}

// NHWC ps_roi_pool: a part's ROIs in one pass down the rows of their
// images. A bin reads one channel in every PH*PW of a pixel, so each of its
// output channels' inputs lies on a cache line of its own (psroi-rfcn: 196
// bytes apart): ROI by ROI, every ROI's bins fetched their pixels' lines
// again. Row by row, a row's lines stay in L2 while every ROI of the part
// reads them (psroi-rfcn's NHWC forward, median paired ratio against the
// ROI-by-ROI loop 0.77-0.94 on either vector width). A bin's sums gain
// its window's pixels row by row and along each row, the order the window
// gives them, and wait in `sums` between rows.
template <typename G>
struct RowPass {
  WindowTable<G> windows;       // the part's
  std::vector<int64_t> order;   // its entries that read pixels: by image, then first row
  std::vector<G> sums;          // [entry][bin][output channel]

  // The part's entries that read pixels, in `order`; the others' outputs
  // are zeroed.
  template <typename T>
  void start(const Problem<G>& p, const RoiList& list, T* out) {
    windows.build_serial(p, list);
    order.clear();
    for (int64_t j = 0; j < list.size; ++j) {
      if (windows.batch[j] >= 0 && !windows.covered[j].empty())
        order.push_back(j);
      else
        zero_roi_output(p.shape, list.ids[j], 0, p.shape.out_channels, out);
    }
    std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
      if (windows.batch[a] != windows.batch[b]) return windows.batch[a] < windows.batch[b];
      return windows.covered[a].lo < windows.covered[b].lo;
    });
    const Shape& s = p.shape;
    sums.assign(list.size * s.pooled_h * s.pooled_w * s.out_channels, G(0));
  }
};

// Row y of the image at `image` into the sums of entry j's bins whose rows
// hold it.
template <typename T, typename G>
JAX_ROI_ALWAYS_INLINE void add_pooled_row(const Shape& s, const WindowTable<G>& table, int64_t j,
                                          int64_t y, const T* image, G* sums) {
  const int64_t PW = s.pooled_w, C = s.out_channels, step = mapped_channel_step(s);
  for (int64_t ph = 0; ph < s.pooled_h; ++ph) {
    const Span h = table.rows[j * s.pooled_h + ph];
    if (y < h.lo || y >= h.hi) continue;
    for (int64_t pw = 0, b = ph * PW; pw < PW; ++pw, ++b) {
      const Span w = table.columns[j * PW + pw];
      G* const acc = sums + (j * s.pooled_h * PW + b) * C;
      const T* const pixels = image + y * s.width * s.channels + w.lo * s.channels + b;
      for_channel_blocks(C, [&](auto count, int64_t c) JAX_ROI_INLINE_LAMBDA {
        G sum[count];
        for (int i = 0; i < count; ++i) sum[i] = acc[c + i];
        const T* v = pixels + c * step;
        for (int64_t x = w.lo; x < w.hi; ++x, v += s.channels)
          for (int i = 0; i < count; ++i) sum[i] += to_acc(v[i * step]);
        for (int i = 0; i < count; ++i) acc[c + i] = sum[i];
      });
    }
  }
}

template <typename T, typename G>
JAX_ROI_ALWAYS_INLINE void pooled_forward_by_rows(const Problem<G>& p, const RoiList& list,
                                                  const T* features, T* out, RowPass<G>& pass) {
  const Shape& s = p.shape;
  pass.start(p, list, out);
  const WindowTable<G>& table = pass.windows;
  const std::vector<int64_t>& order = pass.order;
  const int64_t n = static_cast<int64_t>(order.size());
  for (int64_t i0 = 0, i1; i0 < n; i0 = i1) {  // the entries of one image: [i0, i1)
    const int64_t batch = table.batch[order[i0]];
    int64_t y1 = 0;
    for (i1 = i0; i1 < n && table.batch[order[i1]] == batch; ++i1)
      y1 = std::max<int64_t>(y1, table.covered[order[i1]].hi);
    const T* const image = features + batch * s.channels * s.height * s.width;
    for (int64_t y = table.covered[order[i0]].lo; y < y1; ++y) {
      for (int64_t i = i0; i < i1 && table.covered[order[i]].lo <= y; ++i)
        if (y < table.covered[order[i]].hi)
          add_pooled_row(s, table, order[i], y, image, pass.sums.data());
    }
  }
  const int64_t bins = s.pooled_h * s.pooled_w;
  for (const int64_t j : order) {
    for (int64_t b = 0; b < bins; ++b) {
      const Span h = table.rows[j * s.pooled_h + b / s.pooled_w];
      const Span w = table.columns[j * s.pooled_w + b % s.pooled_w];
      write_mapped_bin(s, list.ids[j], b, &pass.sums[(j * bins + b) * s.out_channels],
                       static_cast<G>(pooled_divisor(h, w)), out);
    }
  }
}

// Bin b of ROI t's gradient into the block's input channels and rows,
// `mapped` the output channels bin b maps to them (mapped_channels, which
// the caller finds once for all the block's ROIs: found for each ROI, its
// divisions took 4% of psroi-rfcn's ps_roi_align NCHW backward), `acc`
// holding the output channels' gradients.
template <typename T, typename G>
JAX_ROI_ALWAYS_INLINE void mapped_backward_bin(const Shape& s, const RoiTaps<G>& t, int64_t b,
                                               MappedChannels mapped,
                                               const GradientBlock& block, const T* grad_out,
                                               G* grad, std::vector<G>& acc) {
  const auto [first, last] = mapped;
  if (last == first) return;
  const int64_t n = last - first, step = mapped_channel_step(s), bins = s.pooled_h * s.pooled_w;
  const int64_t stride = s.channels_last ? s.channels : 1, row = stride * s.width;
  acc.resize(n);
  G* __restrict__ g = acc.data();
  for (int64_t c = 0; c < n; ++c)
    g[c] = to_acc(grad_out[output_index(s, t.roi, first + c, b / s.pooled_w, b % s.pooled_w)]) /
           t.divisor[b];
  G* const base = gradient_at(s, grad, t.batch, 0, 0, first * bins + b);
  for (const Tap<G>* tap = t.begin(b); tap != t.end(b); ++tap) {
    if (tap->y < block.y0 || tap->y >= block.y1) continue;
    G* __restrict__ v = base + tap->y * row + tap->x * stride;
    const G w = tap->weight;
    for (int64_t c = 0; c < n; ++c) v[c * step] += w * g[c];
  }
}

// Lanes [0, lanes) of a vector of sums into dst.
template <int bytes, typename T, typename G>
JAX_ROI_ALWAYS_INLINE void store_lanes(const NativeVector<G, bytes>& sum, int64_t lanes, T* dst) {
  constexpr int L = static_cast<int>(native_lanes<G, bytes>);
  if (lanes == L) {  // a whole vector
    store_native<bytes, T, G>(dst, sum);
    return;
  }
  G lane[L];
  store_native<bytes, G, G>(lane, sum);
  // Under a constant bound: a loop to `lanes` compiled to a call to
  // memmove a bin (4% of psroi-rfcn's ps_roi_align NCHW forward).
  for (int j = 0; j < L; ++j)
    if (j < lanes) dst[j] = from_acc<T>(lane[j]);
}

// `count` native vectors of channels from lane0 on (of n) of one bin, in
// one pass over its taps: the vectors' sums are independent chains, where
// a vector at a time waited on one chain's additions (each channel's sum
// still adds its taps in order, as NHWC does).
template <int count, int bytes, typename T, typename G>
JAX_ROI_ALWAYS_INLINE void tile_forward_vectors(const Shape& s, const RoiTaps<G>& t, int64_t tb,
                                                int64_t lane0, int64_t n,
                                                const BinPlanes<G>& tile, T* dst) {
  constexpr int64_t L = native_lanes<G, bytes>;
  NativeVector<G, bytes> sum[count] = {};
  for (const Tap<G>* tap = t.begin(tb); tap != t.end(tb); ++tap) {
    const G* pixel = tile.at(s.width, tap->y, tap->x) + lane0;
    for (int i = 0; i < count; ++i) sum[i] += tap->weight * load_native<G, bytes>(pixel + i * L);
  }
  for (int i = 0; i < count; ++i) {
    const int64_t at = lane0 + i * L;
    sum[i] /= t.divisor[tb];
    store_lanes<bytes, T, G>(sum[i], std::min<int64_t>(L, n - at), dst + at);
  }
}

// f(integral_constant<k>) for the k (1 <= k <= most) that equals `count`.
template <int most, typename F>
JAX_ROI_ALWAYS_INLINE void with_count(int64_t count, F&& f) {
  if (count == most) return f(std::integral_constant<int, most>{});
  if constexpr (most > 1) with_count<most - 1>(count, f);
}

// NCHW: output bin b of a ROI whose taps are `t`'s bin tb, output channels
// [c, c + n), from the bin's planes in `tile`, into its staged run
// (bin_run_index): up to 64 channels in a pass, and the rest in as many
// native vectors as they need (psroi-rfcn's 21 channels: three 8-lane
// vectors with AVX2, where two 16-lane blocks took four).
template <int bytes, typename T, typename G>
JAX_ROI_ALWAYS_INLINE void tile_forward_bin(const Shape& s, const RoiTaps<G>& t, int64_t b,
                                            int64_t tb, int64_t c, int64_t n,
                                            const BinPlanes<G>& tile, T* staged) {
  constexpr int64_t L = native_lanes<G, bytes>;
  constexpr int kPass = static_cast<int>(4 * kLanes / L);
  T* dst = staged + bin_run_index(s, t.roi, b) + c;
  int64_t lane0 = 0;
  for (; n - lane0 > (kPass - 1) * L; lane0 += kPass * L)
    tile_forward_vectors<kPass, bytes>(s, t, tb, lane0, n, tile, dst);
  with_count<kPass - 1>((n - lane0 + L - 1) / L, [&](auto count) JAX_ROI_INLINE_LAMBDA {
    tile_forward_vectors<decltype(count)::value, bytes>(s, t, tb, lane0, n, tile, dst);
  });
}

// `v` holds n zeros. Filled here, in the kernel's vector ISA: assign()
// fills in libstdc++'s baseline code (psroi-rfcn's ps_roi_pool NCHW
// backward 4% slower).
template <typename G>
JAX_ROI_ALWAYS_INLINE void zero_scratch(std::vector<G>& v, int64_t n) {
  v.resize(n);
  std::fill(v.begin(), v.end(), G(0));
}

// NCHW: zeroes bin b's planes of image `batch` in [c0, c1).
template <typename G>
void zero_mapped_planes(const Shape& s, int64_t batch, int64_t b, int64_t c0, int64_t c1,
                        G* grad) {
  const auto [first, last] = mapped_channels(s, b, c0, c1);
  const int64_t pixels = s.height * s.width, bins = s.pooled_h * s.pooled_w;
  for (int64_t c = first; c < last; ++c) {
    G* plane = gradient_at(s, grad, batch, 0, 0, c * bins + b);
    std::fill(plane, plane + pixels, G(0));
  }
}

template <typename Tabulate>
struct MappedTapKernel : CallTapTables<Tabulate, /*kRowBands=*/true> {
  // The call's taps, or with Tabulate::kWindows, for the NHWC backward's
  // row bands, its windows.
  template <typename G>
  struct Tables : TapList<G, Tabulate> {
    WindowTable<G> windows;
    size_t bytes() const { return TapList<G, Tabulate>::bytes() + windows.bytes(); }
  };
  template <typename G>
  struct Scratch {
    BinTaps<G> taps;            // a ROI's (or in NCHW forward a ROI's bin's)
    TapList<G, Tabulate> part;  // an NCHW gradient block's ROIs
    std::vector<G> acc;
    BinPlanes<G> tile;          // NCHW forward's
    PoolWindows<G> windows;     // with Tabulate::kWindows, an NCHW gradient block's
    RowPass<G> row_pass;        // with Tabulate::kWindows, NHWC forward's
    std::vector<Span> rows, columns;  // NHWC backward's, unshared
    std::vector<G> band;              // NHWC backward's row band, where streamed
    std::vector<MappedChannels> mapped;  // the backward's, per bin (map_bins)
  };
  static_assert(Tabulate::kBinPlanes || Tabulate::kWindows, "forward_nchw reads one or the other");
  static constexpr NchwSplit kNchwSplit = NchwSplit::kBins;
  static constexpr bool kNchwFromChannelsLast = false;
  static constexpr bool backward_writes_block(bool) { return true; }

  // With Tabulate::kWindows no taps: the windows, which the NCHW forward's
  // bins and the NHWC backward's row bands share (the NCHW backward finds
  // its own).
  template <typename G>
  static void tabulate(ffi::ThreadPool& pool, const Problem<G>& p, const RoiList& list,
                       Tables<G>& tables) {
    if constexpr (Tabulate::kWindows) {
      tables.windows.build(pool, p, list);
      tables.shared = true;
    } else {
      CallTapTables<Tabulate, true>::tabulate(pool, p, list, tables);
    }
  }

  // Bins [i0, i1) of every output channel of the listed ROIs. With
  // Tabulate::kBinPlanes from the call's taps (where they are too many to
  // keep, a ROI's bin tabulated when it is visited), a bin's planes in a
  // tile at a time (unless the map is too large for one); with
  // Tabulate::kWindows from the call's windows. Into `staged`
  // (bin_run_index), which the driver transposes.
  template <typename T, typename G>
  static void forward_nchw(const Problem<G>& p, const RoiList& list, const Tables<G>& tables,
                           int64_t i0, int64_t i1, const T* features, T* staged, int32_t*,
                           Scratch<G>& scratch) {
    with_native_isa([&](auto bytes) JAX_ROI_INLINE_LAMBDA {
      if constexpr (Tabulate::kBinPlanes)
        forward_bin_planes<decltype(bytes)::value>(p, list, tables, i0, i1, features, staged,
                                                   scratch);
      else
        forward_bin_windows(p, list, tables.windows, i0, i1, features, staged, scratch.acc);
    });
  }

  template <typename T, typename G>
  static void forward_nhwc(const Problem<G>& p, const RoiList& list, const Tables<G>&,
                           const T* features, T* out, int32_t*, Scratch<G>& scratch) {
    with_native_isa([&](auto) JAX_ROI_INLINE_LAMBDA {
      forward_part(p, list, features, out, scratch);
    });
  }

  // The block's ROIs (all of one image, all valid): NCHW a bin at a time,
  // zeroing the bin's planes first; NHWC a ROI at a time into a zeroed row
  // band (kNhwcBackwardRowBands), skipping the bins whose rows it does not
  // meet. Either way it writes its whole block (backward_writes_block).
  template <typename T, typename G>
  static void backward(const Problem<G>& p, const GradientBlock& block, const Tables<G>& tables,
                       const T* grad_out, const int32_t*, G* grad, Scratch<G>& scratch) {
    with_native_isa([&](auto bytes) JAX_ROI_INLINE_LAMBDA {
      if (block.rois.size == 0) return;
      if constexpr (Tabulate::kWindows) {
        const Shape& s = p.shape;
        if (!s.channels_last)
          return backward_windows<decltype(bytes)::value>(
              p, block, tables.shared ? &tables.windows : nullptr, grad_out, grad,
              scratch.windows);
        backward_windows_nhwc(p, block, tables, grad_out, grad, scratch);
      } else {
        backward_taps(p, block, tables, grad_out, grad, scratch);
      }
    });
  }

 private:
  // NCHW, Tabulate::kBinPlanes: see forward_nchw.
  template <int bytes, typename T, typename G>
  static JAX_ROI_ALWAYS_INLINE void forward_bin_planes(const Problem<G>& p, const RoiList& list,
                                                       const Tables<G>& tables, int64_t i0,
                                                       int64_t i1, const T* features, T* staged,
                                                       Scratch<G>& scratch) {
    const Shape& s = p.shape;
    const int64_t bins = s.pooled_h * s.pooled_w, C = s.out_channels;
    const int64_t most = BinPlanes<G>::max_lanes(s);
    if (most == 0) {  // a map too large for a tile: its planes themselves
      for (int64_t j = 0; j < list.size; ++j) {
        for (int64_t b = i0; b < i1; ++b) {
          const auto [t, tb] = roi_bin_taps(p, tables, list.ids + j, b, scratch.taps);
          if (t.batch < 0)
            zero_bin_run(s, t.roi, b, 0, C, staged);
          else
            mapped_forward_bin(s, t, b, tb, features, staged, scratch.acc);
        }
      }
      return;
    }
    BinPlanes<G>& tile = scratch.tile;
    for (int64_t b = i0; b < i1; ++b) {
      for (int64_t c = 0; c < C; c += most) {
        const int64_t n = std::min(most, C - c);
        for (int64_t j = 0; j < list.size; ++j) {
          const auto [t, tb] = roi_bin_taps(p, tables, list.ids + j, b, scratch.taps);
          if (t.batch < 0) {
            zero_bin_run(s, t.roi, b, c, c + n, staged);
            continue;
          }
          tile.load(s, features, t.batch, c * bins + b, bins, n);  // unless it holds them
          tile_forward_bin<bytes>(s, t, b, tb, c, n, tile, staged);
        }
      }
    }
  }

  // NCHW, Tabulate::kWindows: bins [i0, i1) of the listed ROIs, bins
  // outermost, so that the planes a bin reads stay in cache while every ROI
  // reads them (ROI by ROI, every bin read every plane near the ROI:
  // psroi-rfcn's forward, fastest calls, 2.3-2.5 -> 1.95-2.0 ms on the AVX2
  // EPYC).
  template <typename T, typename G>
  static JAX_ROI_ALWAYS_INLINE void forward_bin_windows(const Problem<G>& p, const RoiList& list,
                                                        const WindowTable<G>& table, int64_t i0,
                                                        int64_t i1, const T* features, T* staged,
                                                        std::vector<G>& acc) {
    const Shape& s = p.shape;
    for (int64_t b = i0; b < i1; ++b) {
      const int64_t ph = b / s.pooled_w, pw = b % s.pooled_w;
      for (int64_t j = 0; j < list.size; ++j) {
        const int64_t entry = table.entry(list.ids + j), k = list.ids[j];
        if (table.batch[entry] < 0) {
          zero_bin_run(s, k, b, 0, s.out_channels, staged);
          continue;
        }
        const Span h = table.rows[entry * s.pooled_h + ph];
        const Span w = table.columns[entry * s.pooled_w + pw];
        window_forward_bin(s, k, table.batch[entry], b, bin_window(h, w), features, staged, acc);
      }
    }
  }

  // Bin b of a listed ROI: the call's taps and b where they are kept, else
  // the bin alone, tabulated now, and 0.
  template <typename G>
  struct RoiBin {
    const RoiTaps<G>& taps;
    int64_t bin;
  };
  template <typename G>
  static JAX_ROI_ALWAYS_INLINE RoiBin<G> roi_bin_taps(const Problem<G>& p, const Tables<G>& tables,
                                                      const int64_t* id, int64_t b,
                                                      BinTaps<G>& own) {
    if (tables.shared) return {tables.rois[id - tables.ids], b};
    return {bin_taps(p, *id, b, own), 0};
  }

  // The taps of the block's ROIs: see backward.
  template <typename T, typename G>
  static JAX_ROI_ALWAYS_INLINE void backward_taps(const Problem<G>& p, const GradientBlock& block,
                                                  const Tables<G>& tables, const T* grad_out,
                                                  G* grad, Scratch<G>& scratch) {
    const Shape& s = p.shape;
    const RoiList& list = block.rois;
    const int64_t bins = s.pooled_h * s.pooled_w;
    const TapList<G, Tabulate>& taps =
        tables.shared || s.channels_last ? tables : scratch.part.build_serial(p, list);
    if (!s.channels_last && taps.shared) {
      for (int64_t b = 0; b < bins; ++b) {
        zero_mapped_planes(s, block.batch, b, block.c0, block.c1, grad);
        const MappedChannels mapped = mapped_channels(s, b, block.c0, block.c1);
        for (int64_t j = 0; j < list.size; ++j) {
          const RoiTaps<G>& t = taps.of(list.ids + j, p, scratch.taps);
          if (t.batch >= 0)
            mapped_backward_bin(s, t, b, mapped, block, grad_out, grad, scratch.acc);
        }
      }
      return;
    }
    // NHWC, or NCHW with taps too many to keep (tabulated at each visit,
    // so once).
    zero_gradient_block(s, block, grad);
    map_bins(s, block, scratch.mapped);
    for (int64_t j = 0; j < list.size; ++j) {
      const RoiTaps<G>& t = taps.of(list.ids + j, p, scratch.taps);
      if (t.batch < 0 || !t.may_meet(block.y0, block.y1)) continue;
      for (int64_t b = 0; b < bins; ++b)
        if (t.bin_may_meet(b, block.y0, block.y1))
          mapped_backward_bin(s, t, b, scratch.mapped[b], block, grad_out, grad, scratch.acc);
    }
  }

  // NCHW, Tabulate::kWindows: bin by bin (pool_windows.h). A gradient
  // large enough to stream (stream_store.h) takes each bin's planes from a
  // scratch that stays in cache, streamed: zeroed in place, they were read
  // from memory first (psroi-rfcn, AVX2-only EPYC: 2.6-3.0 ms to 2.0-2.4).
  template <int bytes, typename T, typename G>
  static JAX_ROI_ALWAYS_INLINE void backward_windows(const Problem<G>& p,
                                                     const GradientBlock& block,
                                                     const WindowTable<G>* table,
                                                     const T* grad_out, G* grad,
                                                     PoolWindows<G>& windows) {
    const Shape& s = p.shape;
    const int64_t bins = s.pooled_h * s.pooled_w, step = mapped_channel_step(s);
    windows.build(p, block, table);
    int64_t lo = s.out_channels, hi = 0;  // the output channels any bin maps
    for (int64_t b = 0; b < bins; ++b) {
      const MappedChannels m = mapped_channels(s, b, block.c0, block.c1);
      if (m.last > m.first) lo = std::min(lo, m.first), hi = std::max(hi, m.last);
    }
    windows.gather_gradients(s, block, std::min(lo, hi), hi, grad_out);
    // Vectors of 32 bytes at most: a window is a few pixels wide, and a
    // wider vector mostly splits across cache lines (psroi-rfcn, measured
    // on a first version that added windows from the taps: 64 bytes about
    // 40% slower than 32).
    constexpr int kBytes = std::min(bytes, 32);
    const int64_t pixels = s.height * s.width;
    const bool stream = streamed_result<G>(s.feature_count());
    for (int64_t b = 0; b < bins; ++b) {
      const auto [first, last] = mapped_channels(s, b, block.c0, block.c1);
      const int64_t n = last - first;
      if (n == 0) continue;
      G* const planes = gradient_at(s, grad, block.batch, 0, 0, first * bins + b);
      if (!stream) {
        zero_mapped_planes(s, block.batch, b, block.c0, block.c1, grad);
        window_backward_bin<kBytes>(s, block, b, first, n, planes, step, windows);
        continue;
      }
      zero_scratch(windows.planes, n * pixels);
      window_backward_bin<kBytes>(s, block, b, first, n, windows.planes.data(), pixels, windows);
      for (int64_t c = 0; c < n; ++c)
        stream_copy(planes + c * step, windows.planes.data() + c * pixels, pixels);
    }
    if (stream) stream_fence();
  }

  // NHWC, Tabulate::kWindows: a ROI at a time, each bin's window clipped
  // to the block's rows, its gradients added pixel by pixel (the same sums
  // in the same order as the taps of 0.4.13 gave). The windows are the call's where
  // row bands share them, else found as the ROI is visited.
  template <typename T, typename G>
  static JAX_ROI_ALWAYS_INLINE void backward_windows_nhwc(const Problem<G>& p,
                                                          const GradientBlock& block,
                                                          const Tables<G>& tables,
                                                          const T* grad_out, G* grad,
                                                          Scratch<G>& scratch) {
    const Shape& s = p.shape;
    const int64_t bins = s.pooled_h * s.pooled_w, step = mapped_channel_step(s);
    const int64_t row = s.channels * s.width;
    const WindowTable<G>& table = tables.windows;
    // The block's rows from block.y0 on: a row band (every channel) of a
    // gradient large enough to stream is summed in a scratch that stays in
    // cache and streamed; other blocks are zeroed in place.
    const int64_t elements = (block.y1 - block.y0) * row;
    const bool stream = block.c0 == 0 && block.c1 == s.channels &&
                        streamed_result<G>(s.feature_count());
    G* const target = gradient_at(s, grad, block.batch, block.y0, 0, 0);
    G* rows_from_y0 = target;
    if (stream) {
      scratch.band.assign(elements, G(0));
      rows_from_y0 = scratch.band.data();
    } else {
      zero_gradient_block(s, block, grad);
    }
    map_bins(s, block, scratch.mapped);
    for (int64_t j = 0; j < block.rois.size; ++j) {
      const int64_t k = block.rois.ids[j];
      const Span *rows, *columns;
      if (tables.shared) {
        const int64_t entry = table.entry(block.rois.ids + j);
        if (table.batch[entry] < 0 || !table.covered[entry].meets(block.y0, block.y1)) continue;
        rows = &table.rows[entry * s.pooled_h];
        columns = &table.columns[entry * s.pooled_w];
      } else {
        scratch.rows.resize(s.pooled_h);
        scratch.columns.resize(s.pooled_w);
        if (pool_bin_spans(p, k, scratch.rows.data(), scratch.columns.data()) < 0) continue;
        rows = scratch.rows.data();
        columns = scratch.columns.data();
      }
      for (int64_t ph = 0; ph < s.pooled_h; ++ph) {
        const Span h = rows[ph];
        const int64_t y0 = std::max<int64_t>(h.lo, block.y0);
        const int64_t y1 = std::min<int64_t>(h.hi, block.y1);
        if (y1 <= y0) continue;
        for (int64_t pw = 0, b = ph * s.pooled_w; pw < s.pooled_w; ++pw, ++b) {
          const Span w = columns[pw];
          const auto [first, last] = scratch.mapped[b];
          if (w.hi <= w.lo || last == first) continue;
          const int64_t n = last - first;
          const G area = static_cast<G>(pooled_area(h, w));
          scratch.acc.resize(n);
          G* __restrict__ g = scratch.acc.data();
          const T* src = grad_out + output_index(s, k, first, ph, pw);  // NHWC: c contiguous
          for (int64_t c = 0; c < n; ++c) g[c] = to_acc(src[c]) / area;
          G* const base = rows_from_y0 + first * bins + b;
          for (int64_t y = y0; y < y1; ++y) {
            for (int64_t x = w.lo; x < w.hi; ++x) {
              G* __restrict__ v = base + (y - block.y0) * row + x * s.channels;
              for (int64_t c = 0; c < n; ++c) v[c * step] += g[c];
            }
          }
        }
      }
    }
    if (stream) {
      stream_copy(target, scratch.band.data(), elements);
      stream_fence();
    }
  }

  // Bin b of ROI k alone, as the taps' bin 0 (batch -1: it reads nothing).
  template <typename G>
  static JAX_ROI_ALWAYS_INLINE const RoiTaps<G>& bin_taps(const Problem<G>& p, int64_t k,
                                                          int64_t b, BinTaps<G>& t) {
    Roi<G> r;
    const int64_t pw = p.shape.pooled_w;
    if (start_taps(p, k, t, &r)) Tabulate::add_bin(p, r, b / pw, b % pw, t);
    return t.view();
  }

  // The listed ROIs: with Tabulate::kWindows in one pass down their rows,
  // else each tabulated as it is visited.
  template <typename T, typename G>
  static JAX_ROI_ALWAYS_INLINE void forward_part(const Problem<G>& p, const RoiList& list,
                                                 const T* features, T* out, Scratch<G>& scratch) {
    if constexpr (Tabulate::kWindows) {
      // In runs whose sums take at most kRowPassSums bytes (a guided chunk
      // of a large call would hold a copy of its whole output): as fast as
      // the whole part at once on psroi-rfcn, from 64 KB up.
      constexpr int64_t kRowPassSums = 256 << 10;
      const Shape& s = p.shape;
      const int64_t per_roi = s.pooled_h * s.pooled_w * s.out_channels * int64_t(sizeof(G));
      const int64_t run = std::max<int64_t>(1, kRowPassSums / std::max<int64_t>(per_roi, 1));
      for (int64_t j = 0; j < list.size; j += run)
        pooled_forward_by_rows(p, RoiList{list.ids + j, std::min(run, list.size - j)}, features,
                               out, scratch.row_pass);
    } else {
      const Shape& s = p.shape;
      for (int64_t j = 0; j < list.size; ++j) {
        const int64_t k = list.ids[j];
        Tabulate::build(p, k, scratch.taps);
        const RoiTaps<G>& t = scratch.taps.view();
        if (t.batch < 0) {
          zero_roi_output(s, k, 0, s.out_channels, out);
          continue;
        }
        for (int64_t b = 0; b < s.pooled_h * s.pooled_w; ++b)
          mapped_forward_bin(s, t, b, b, features, out, scratch.acc);
      }
    }
  }
};

// The tabulations. kBinPlanes: the NCHW forward reads a bin's planes
// through a tile (bin_planes.h), which pays for the whole map's
// transposition where a bin's taps are many (an aligned bin's 2 x 2
// samples: psroi-rfcn's forward 1.75-2.2 -> 1.65-1.75 ms, either vector
// width), not where they are few (a pooled bin of a few pixels: about 10%
// slower with AVX-512); its ROIs' bins are tabulated as taps, build(p, k,
// taps) a ROI's bins, add_bin(p, r, ph, pw, taps) one bin of loaded ROI r
// (ending it). kWindows: a bin is a rectangle of weight 1, which every
// kernel reads as a window (pool_windows.h), tabulating no taps (where the
// taps' tabulation took a tenth of psroi-rfcn's NHWC calls, and the NHWC
// backward copied them into a table for its row bands: medians of
// alternating runs, 1.3 to 0.91-0.98 ms; the NHWC forward, with the
// channel blocks above too, 0.96 to 0.70 ms).
struct PsAlignTaps {
  static constexpr bool kBinPlanes = true;
  static constexpr bool kWindows = false;
  // Every bin of a ROI from the ROI's axis tables: a bin's taps are the
  // products of its y and x axis taps, as roi_align's "avg" reads them.
  // (Merging each bin's bilinear corners instead, with each row's and
  // column's interpolation tabled, took a third of psroi-rfcn's NCHW
  // forward.) (One compiled copy: see bin_taps.h, JAX_ROI_TABULATION.)
  template <typename G>
  JAX_ROI_TABULATION static void build(const Problem<G>& p, int64_t k, BinTaps<G>& t) {
    const Shape& s = p.shape;
    Roi<G> r;
    if (!start_taps(p, k, t, &r)) return;
    const AlignRoi<G> a = align_roi_of(p, r);
    RoiTables<G>& axes = thread_tables<G>();
    axes.build(a, s);
    for (int64_t ph = 0; ph < s.pooled_h; ++ph)
      for (int64_t pw = 0; pw < s.pooled_w; ++pw) add_axis_taps(axes, ph, pw, a.count, t);
  }
  template <typename G>
  JAX_ROI_TABULATION static void add_bin(const Problem<G>& p, const Roi<G>& r, int64_t ph,
                                         int64_t pw, BinTaps<G>& t) {
    const AlignRoi<G> a = align_roi_of(p, r);
    RoiTables<G>& axes = thread_tables<G>();
    axes.build_bin(a, p.shape, ph, pw);
    add_axis_taps(axes, 0, 0, a.count, t);
  }

 private:
  // The thread's axis tables, reused ROI after ROI (a build's callers
  // keep none).
  template <typename G>
  static RoiTables<G>& thread_tables() {
    static thread_local RoiTables<G> axes;
    return axes;
  }
  // Bin (ph, pw) of the tables as the taps' next bin.
  template <typename G>
  static void add_axis_taps(const RoiTables<G>& axes, int64_t ph, int64_t pw, G count,
                            BinTaps<G>& t) {
    for_each_tap(axes, ph, pw, [&](int64_t y, int64_t x, G w) JAX_ROI_INLINE_LAMBDA {
      t.add_new(y, x, w);
    });
    t.end_bin(count);
  }
};

struct PsPoolWindows {
  static constexpr bool kBinPlanes = false;
  static constexpr bool kWindows = true;
};

template <>
struct CpuKernel<Op::kPsAlign> : MappedTapKernel<PsAlignTaps> {};
template <>
struct CpuKernel<Op::kPsPool> : MappedTapKernel<PsPoolWindows> {};

}  // namespace jax_roi
