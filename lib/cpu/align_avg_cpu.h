// roi_align "avg" on the CPU, one ROI at a time: its axis tables are built
// once and serve every channel. It sums a bin's taps (axis_table.h), the
// element functions its samples corner by corner, so both agree to
// rounding. In NHWC the innermost loop runs over contiguous channels and
// vectorises; in NCHW it runs over kLanes channels of a tile.
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "align_common.h"
#include "cpu_common.h"
#include "cpu_kernel.h"
#include "native_vector.h"
#include "stream_store.h"

namespace jax_roi {

// ------------------------------------------------------------------ forward

// NHWC "avg" keeps a bin's sums in registers, a block of channels at a time:
// for float32 128 with AVX-512, 64 with AVX2, 32 with SSE (tap_block_vectors,
// native_vector.h).
// It tabulates a run of neighbouring ROIs first, and with more channels
// than a block visits them block by block, so that rows of pixels the
// run's ROIs share are still in cache.
constexpr size_t kNhwcRunCapacity = 1 << 12;  // axis entries: about 64 ROIs of 7 x 7 x 2 x 2
// and about this much of a block's channels of the pixels they read, so
// that a block's pass over the run stays in the L2 (an AVX2 block of 64
// float channels over box-p2's runs of 64 ROIs read about 13 MB, past an
// 8 MB L3, and took 1.4x as long as runs of 2-4 ROIs).
constexpr int64_t kNhwcRunBlockBytes = int64_t(512) << 10;
// An image of at least this much has its pixels' channels prefetched into
// L2 a bin ahead (bin_ahead): its rows miss the cache (box-p2's
// 56 MB images, median paired ratios 0.83 with AVX-512, 0.75 with AVX2;
// fpn 0.86-0.87 with its 14 MB P3 too, 0.90 with P2 alone), where a
// smaller one's stay in it and the prefetches only cost (mask-c4's 3.5 MB:
// 1.10-1.14).
constexpr int64_t kNhwcPrefetchImageBytes = int64_t(8) << 20;

// Whether an NHWC loop over `channels` of an image of `s` in elements of
// `element_bytes` prefetches a bin ahead (kNhwcPrefetchImageBytes).
inline bool nhwc_prefetch_pays(const Shape& s, int64_t channels, int64_t element_bytes) {
  return s.height * s.width * channels * element_bytes >= kNhwcPrefetchImageBytes;
}

// NHWC: channels [c0, c0 + vectors * lanes) of ROI `slot` of `run`, into
// its output `roi_out` ([PH, PW, C]), prefetching a bin ahead where
// `prefetch` (kNhwcPrefetchImageBytes).
template <int bytes, int vectors, typename T, typename G>
JAX_ROI_ALWAYS_INLINE void align_avg_forward_nhwc_block(const Problem<G>& p, const RoiRun<G>& run,
                                                        int64_t slot, int64_t c0,
                                                        const T* features, T* roi_out,
                                                        bool stream, bool prefetch) {
  constexpr int64_t lanes = native_lanes<G, bytes>;
  const Shape& s = p.shape;
  const bool reads = run.batch[slot] >= 0;
  const G count = run.count[slot];
  Pixels<T> px = image_pixels(s, features, reads ? run.batch[slot] : 0, c0);
  for (int64_t ph = 0; ph < s.pooled_h; ++ph) {
    for (int64_t pw = 0; pw < s.pooled_w; ++pw) {
      NativeVector<G, bytes> sum[vectors] = {};
      if (reads) {
        auto add = [&](int64_t y, int64_t x, G w) JAX_ROI_INLINE_LAMBDA {
          const T* __restrict__ v = px.at(y, x);
          for (int i = 0; i < vectors; ++i) sum[i] += w * load_native<G, bytes>(v + i * lanes);
        };
        const RoiTables<G>& tables = run.tables[slot];
        const BinAhead<G> next = bin_ahead(tables, ph, pw, s.pooled_h, s.pooled_w, prefetch);
        for_each_tap(tables, ph, pw, add, next,
                     [&](int64_t y, int64_t x) JAX_ROI_INLINE_LAMBDA {
                       prefetch_into_l2(px.at(y, x), vectors * lanes);
                     });
        for (int i = 0; i < vectors; ++i) sum[i] /= count;
      }
      T* dst = roi_out + (ph * s.pooled_w + pw) * s.channels + c0;
      for (int i = 0; i < vectors; ++i)
        store_native_result<bytes, T, G>(dst + i * lanes, sum[i], stream);
    }
  }
}

// NHWC: channels [c0, c1) of ROI `slot` of `run`, fewer than a vector's.
template <typename T, typename G>
JAX_ROI_ALWAYS_INLINE void align_avg_forward_nhwc_rest(const Problem<G>& p, const RoiRun<G>& run,
                                                       int64_t slot, int64_t c0, int64_t c1,
                                                       const T* features, T* roi_out) {
  const Shape& s = p.shape;
  const int64_t width = c1 - c0;
  const bool reads = run.batch[slot] >= 0;
  const G count = run.count[slot];
  Pixels<T> px = image_pixels(s, features, reads ? run.batch[slot] : 0, c0);
  G sum[64 / sizeof(G)];
  for (int64_t ph = 0; ph < s.pooled_h; ++ph) {
    for (int64_t pw = 0; pw < s.pooled_w; ++pw) {
      for (int64_t c = 0; c < width; ++c) sum[c] = G(0);
      if (reads) {
        for_each_tap(run.tables[slot], ph, pw, [&](int64_t y, int64_t x, G w) JAX_ROI_INLINE_LAMBDA {
          const T* __restrict__ v = px.at(y, x);
          for (int64_t c = 0; c < width; ++c) sum[c] += w * to_acc(v[c]);
        });
        for (int64_t c = 0; c < width; ++c) sum[c] /= count;
      }
      T* dst = roi_out + (ph * s.pooled_w + pw) * s.channels + c0;
      for (int64_t c = 0; c < width; ++c) dst[c] = from_acc<T>(sum[c]);
    }
  }
}

// The channels from c0 of the run's ROIs in vectors of `bytes`: a block of
// as many vectors as fit the registers and the channels left (a power of
// 2), or the last few channels; returns the channel after them.
// out_of(slot) is where the ROI's [PH, PW, C] output goes.
template <int bytes, typename T, typename G, typename OutOf>
JAX_ROI_ALWAYS_INLINE int64_t align_avg_forward_nhwc_blocks(const Problem<G>& p,
                                                            const RoiRun<G>& run, int64_t c0,
                                                            const T* features,
                                                            const OutOf& out_of, bool stream,
                                                            bool prefetch = false) {
  constexpr int64_t lanes = native_lanes<G, bytes>;
  constexpr int64_t widest = tap_block_vectors<bytes, T>;
  const int64_t vectors = std::min<int64_t>(widest, (p.shape.channels - c0) / lanes);
  auto each_roi = [&](auto block) JAX_ROI_INLINE_LAMBDA {
    constexpr int n = decltype(block)::value;
    for (int64_t slot = 0; slot < run.size(); ++slot)
      align_avg_forward_nhwc_block<bytes, n>(p, run, slot, c0, features, out_of(slot), stream,
                                             prefetch);
    return c0 + n * lanes;
  };
  if constexpr (widest >= 16)
    if (vectors >= 16) return each_roi(std::integral_constant<int, 16>{});
  if (vectors >= 8) return each_roi(std::integral_constant<int, 8>{});
  if (vectors >= 4) return each_roi(std::integral_constant<int, 4>{});
  if (vectors >= 2) return each_roi(std::integral_constant<int, 2>{});
  if (vectors >= 1) return each_roi(std::integral_constant<int, 1>{});
  for (int64_t slot = 0; slot < run.size(); ++slot)
    align_avg_forward_nhwc_rest(p, run, slot, c0, p.shape.channels, features, out_of(slot));
  return p.shape.channels;
}

// NHWC: all channels of the listed ROIs.
template <typename T, typename G>
void align_avg_forward_nhwc(const Problem<G>& p, const RoiList& list,
                                               const T* features, T* out,
                                               AlignScratch<G>& scratch) {
  RoiRun<G>& run = scratch.run;
  const int64_t roi_size = p.shape.pooled_h * p.shape.pooled_w * p.shape.channels;
  auto out_of = [&](int64_t slot) JAX_ROI_INLINE_LAMBDA { return out + run.roi[slot] * roi_size; };
  const bool stream = streamed_result<T>(p.shape.output_count());
  const bool prefetch = nhwc_prefetch_pays(p.shape, p.shape.channels, sizeof(T));
  with_native_isa([&](auto bytes) JAX_ROI_INLINE_LAMBDA {
    constexpr int kBytes = decltype(bytes)::value;
    // The widest block of channels _blocks keeps in registers
    const int64_t block_bytes =
        std::min<int64_t>(p.shape.channels, tap_block_vectors<kBytes, T> * native_lanes<G, kBytes>) *
        int64_t(sizeof(T));
    const int64_t max_pixels = kNhwcRunBlockBytes / std::max<int64_t>(1, block_bytes);
    for (int64_t j = 0; j < list.size;) {
      j = run.build(p, list, j, kNhwcRunCapacity, max_pixels);
      for (int64_t c0 = 0; c0 < p.shape.channels;)
        c0 = align_avg_forward_nhwc_blocks<kBytes>(p, run, c0, features, out_of, stream,
                                                   prefetch);
    }
  });
}

// NCHW through a channels-last copy of the map (channels_last_copy.h): `q`
// is the problem on the copy. Each ROI is computed as NHWC computes it,
// into a [PH, PW, C] block, and written out transposed through the output
// block (OutputBlock::write_channels_last).
template <typename T, typename G>
void align_avg_forward_from_channels_last(const Problem<G>& q, const RoiList& list,
                                          const G* copy, T* out, AlignScratch<G>& scratch) {
  const Shape& s = q.shape;
  const int64_t C = s.channels, bins = s.pooled_h * s.pooled_w;
  RoiRun<G>& run = scratch.run;
  OutputBlock<G>& block = scratch.block;
  block.bins = bins;  // write_channels_last stages through the block, not its lanes
  scratch.acc.resize(bins * C);
  G* roi_out = scratch.acc.data();
  auto out_of = [&](int64_t) JAX_ROI_INLINE_LAMBDA { return roi_out; };
  with_native_isa([&](auto bytes) JAX_ROI_INLINE_LAMBDA {
    for (int64_t j = 0; j < list.size; ++j) {
      run.build(q, {list.ids + j, 1}, 0, /*capacity=*/1);  // a run of this one ROI
      for (int64_t c0 = 0; c0 < C;)
        c0 = align_avg_forward_nhwc_blocks<decltype(bytes)::value>(q, run, c0, copy, out_of,
                                                                   /*stream=*/false);
      block.write_channels_last(roi_out, C, out + run.roi[0] * C * bins, s);
    }
  });
}

// NCHW: the tile's channels of ROI `slot` of `run`, from `tile`, into
// `block`.
template <int bytes, typename G>
JAX_ROI_ALWAYS_INLINE void align_avg_forward_lanes(const Problem<G>& p, const RoiRun<G>& run,
                                                   int64_t slot, const LaneTile<G>& tile,
                                                   OutputBlock<G>& block) {
  const Shape& s = p.shape;
  const bool reads = run.batch[slot] >= 0;
  const G count = run.count[slot];
  for (int64_t ph = 0; ph < s.pooled_h; ++ph) {
    for (int64_t pw = 0; pw < s.pooled_w; ++pw) {
      LaneVectors<G, bytes> sum;
      if (reads) {
        for_each_tap(run.tables[slot], ph, pw, [&](int64_t y, int64_t x, G w) JAX_ROI_INLINE_LAMBDA {
          sum.add_scaled(w, tile.at(s.width, y, x));
        });
        sum.divide(count);
      }
      block.put(ph * s.pooled_w + pw, sum);
    }
  }
}

// NCHW: channels [c0, c1) of the listed ROIs, through tiles of kLanes channels.
template <typename T, typename G>
void align_avg_forward_nchw(const Problem<G>& p, const RoiList& list, int64_t c0, int64_t c1,
                            const T* features, T* out, AlignScratch<G>& scratch) {
  RoiRun<G>& run = scratch.run;
  LaneTile<G>& tile = scratch.tile;
  OutputBlock<G>& block = scratch.block;
  block.resize(p.shape.pooled_h * p.shape.pooled_w);
  with_native_isa([&](auto bytes) JAX_ROI_INLINE_LAMBDA {
    for_each_run_and_lane_group(p, list, c0, c1, run, kRunCapacity, [&](int64_t c, int lanes) JAX_ROI_INLINE_LAMBDA {
      for (int64_t slot = 0; slot < run.size(); ++slot) {
        const int64_t batch = run.batch[slot];
        if (batch >= 0 && (tile.batch != batch || tile.channel != c))
          tile.load(p.shape, features, batch, c, lanes);
        align_avg_forward_lanes<decltype(bytes)::value>(p, run, slot, tile, block);
        block.write(out + output_index(p.shape, run.roi[slot], c, 0, 0), lanes, p.shape);
      }
    });
  });
}

// NHWC: ROI k's gradient into channels [c0, c1), prefetching the pixels'
// channels a bin ahead where an image's are kNhwcPrefetchImageBytes or
// more (box-p2: median paired ratios 0.85 on either vector width; mask-c4,
// were it to: 1.11-1.34).
template <typename T, typename G>
void align_avg_backward_nhwc(const Problem<G>& p, int64_t k, int64_t c0, int64_t c1,
                             const T* grad_out, G* grad, AlignScratch<G>& scratch) {
  const Shape& s = p.shape;
  const bool prefetch = nhwc_prefetch_pays(s, c1 - c0, sizeof(G));
  Roi<G> r;
  AlignRoi<G> a;
  if (!prepare_roi(p, k, &r, &a, &scratch.tables)) return;
  const int64_t width = c1 - c0;
  scratch.acc.resize(width);
  G* __restrict__ g = scratch.acc.data();
  with_native_isa([&](auto) JAX_ROI_INLINE_LAMBDA {
    for (int64_t ph = 0; ph < s.pooled_h; ++ph) {
      for (int64_t pw = 0; pw < s.pooled_w; ++pw) {
        const T* src = grad_out + output_index(s, k, c0, ph, pw);
        prefetch_output_bin_ahead(s, grad_out, k, c0, width, ph * s.pooled_w + pw);
        for (int64_t c = 0; c < width; ++c) g[c] = to_acc(src[c]) / a.count;
        auto add = [&](int64_t y, int64_t x, G w) JAX_ROI_INLINE_LAMBDA {
          G* __restrict__ d = gradient_at(s, grad, r.batch, y, x, c0);
          for (int64_t c = 0; c < width; ++c) d[c] += g[c] * w;
        };
        const RoiTables<G>& tables = scratch.tables;
        const BinAhead<G> next = bin_ahead(tables, ph, pw, s.pooled_h, s.pooled_w, prefetch);
        for_each_tap(tables, ph, pw, add, next,
                     [&](int64_t y, int64_t x) JAX_ROI_INLINE_LAMBDA {
                       prefetch_into_l2(gradient_at(s, grad, r.batch, y, x, c0), width);
                     });
      }
    }
  });
}

// NCHW: the gradient of ROI `slot` of `run`, read from `block`, into a
// tile of its image.
template <int bytes, typename G>
JAX_ROI_ALWAYS_INLINE void align_avg_backward_lanes(const Problem<G>& p, const RoiRun<G>& run,
                                                    int64_t slot, const OutputBlock<G>& block,
                                                    LaneTile<G>& tile) {
  const Shape& s = p.shape;
  const int64_t bins = s.pooled_h * s.pooled_w;
  const typename LaneTile<G>::View pixels = tile.view(s.width);  // (see View)
  const G count = run.count[slot];
  for (int64_t b = 0; b < bins; ++b) {
    LaneVectors<G, bytes> g = block.template get<bytes>(b);
    g.divide(count);
    for_each_tap(run.tables[slot], b / s.pooled_w, b % s.pooled_w,
                 [&](int64_t y, int64_t x, G w) JAX_ROI_INLINE_LAMBDA {
      g.add_scaled_to(pixels.at(y, x), w);
    });
  }
}

// NCHW: the listed ROIs' gradient into channels [c0, c1), accumulated in a
// tile per image and added to the gradient when the run moves on; each
// channel receives its ROIs in list order.
template <typename T, typename G>
void align_avg_backward_nchw(const Problem<G>& p, const RoiList& list, int64_t c0, int64_t c1,
                             const T* grad_out, G* grad, AlignScratch<G>& scratch) {
  RoiRun<G>& run = scratch.run;
  LaneTile<G>& tile = scratch.tile;
  OutputBlock<G>& block = scratch.block;
  block.resize(p.shape.pooled_h * p.shape.pooled_w);
  with_native_isa([&](auto bytes) JAX_ROI_INLINE_LAMBDA {
    for_each_run_and_lane_group(p, list, c0, c1, run, kRunCapacity, [&](int64_t c, int lanes) JAX_ROI_INLINE_LAMBDA {
      for (int64_t slot = 0; slot < run.size(); ++slot) {
        const int64_t batch = run.batch[slot];
        if (batch < 0) continue;
        if (tile.batch != batch || tile.channel != c) {
          tile.flush_into(p.shape, grad, lanes);
          tile.load_zeros(p.shape, batch, c);
        }
        if (slot + 1 < run.size() && run.batch[slot + 1] >= 0)
          prefetch_output_lanes(p.shape, grad_out, run.roi[slot + 1], c, lanes);
        block.read(grad_out + output_index(p.shape, run.roi[slot], c, 0, 0), lanes);
        align_avg_backward_lanes<decltype(bytes)::value>(p, run, slot, block, tile);
      }
      tile.flush_into(p.shape, grad, lanes);
    });
  });
}

template <>
struct CpuKernel<Op::kAlignAvg> : NoCallTables {
  template <typename G>
  using Scratch = AlignScratch<G>;
  static constexpr NchwSplit kNchwSplit = NchwSplit::kChannels;
  static constexpr bool kNchwFromChannelsLast = true;
  static constexpr bool backward_writes_block(bool) { return false; }
  static constexpr bool kNhwcBackwardRowBands = false;

  template <typename T, typename G>
  static void forward_nchw(const Problem<G>& p, const RoiList& list, const Tables<G>&,
                           int64_t c0, int64_t c1,
                           const T* features, T* out, int32_t*, Scratch<G>& scratch) {
    align_avg_forward_nchw(p, list, c0, c1, features, out, scratch);
  }
  template <typename T, typename G>
  static void forward_from_channels_last(const Problem<G>& q, const RoiList& list,
                                         const G* copy, T* out, Scratch<G>& scratch) {
    align_avg_forward_from_channels_last(q, list, copy, out, scratch);
  }
  template <typename T, typename G>
  static void forward_nhwc(const Problem<G>& p, const RoiList& list, const Tables<G>&,
                           const T* features, T* out,
                           int32_t*, Scratch<G>& scratch) {
    align_avg_forward_nhwc(p, list, features, out, scratch);
  }
  template <typename T, typename G>
  static void backward(const Problem<G>& p, const GradientBlock& block, const Tables<G>&,
                       const T* grad_out, const int32_t*, G* grad, Scratch<G>& scratch) {
    const RoiList& list = block.rois;
    const int64_t c0 = block.c0, c1 = block.c1;
    if (!p.shape.channels_last) return align_avg_backward_nchw(p, list, c0, c1, grad_out, grad, scratch);
    for (int64_t j = 0; j < list.size; ++j)
      align_avg_backward_nhwc(p, list.ids[j], c0, c1, grad_out, grad, scratch);
  }
};

}  // namespace jax_roi
