// roi_pool on the CPU. NHWC compares a bin's pixels a whole channel vector
// at a time; NCHW loops over channels outermost so each small plane stays
// in cache while every ROI reads it.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "channel_scatter.h"
#include "cpu_common.h"
#include "cpu_kernel.h"
#include "isa_dispatch.h"
#include "lane_tile.h"

namespace jax_roi {

// The bins' pixel windows of a run of ROIs from a list; `batch` is -1 for
// a ROI that reads nothing.
template <typename G>
struct PoolRun {
  std::vector<PixelWindow> windows;  // slot * bins + bin
  std::vector<int64_t> roi;          // per slot: the ROI's index in the problem
  std::vector<int64_t> batch;

  int64_t size() const { return static_cast<int64_t>(roi.size()); }

  int64_t build(const Problem<G>& p, const RoiList& list, int64_t j0, size_t capacity) {
    const Shape& s = p.shape;
    windows.clear();
    roi.clear();
    batch.clear();
    int64_t j = j0;
    for (; j < list.size && (j == j0 || windows.size() < capacity); ++j) {
      const int64_t k = list.ids[j];
      Roi<G> r = load_roi(p.rois, k);
      roi.push_back(k);
      batch.push_back(r.valid ? r.batch : -1);
      PoolRoi<G> roi_box = pool_roi(r, p.spatial_scale, s.pooled_h, s.pooled_w);
      for (int64_t ph = 0; ph < s.pooled_h; ++ph)
        for (int64_t pw = 0; pw < s.pooled_w; ++pw)
          windows.push_back(r.valid ? pool_bin(roi_box, ph, pw, s.height, s.width)
                                    : PixelWindow{0, 0, 0, 0});
    }
    return j;
  }
};

constexpr size_t kPoolRunCapacity = 1 << 16;

// NHWC: all channels of ROI k.
template <typename T, typename G>
void pool_forward_nhwc(const Problem<G>& p, int64_t k, const T* features, T* out, int32_t* argmax,
                       std::vector<G>& best_lanes, std::vector<int32_t>& arg_lanes) {
  with_native_isa([&](auto) JAX_ROI_INLINE_LAMBDA {
    const Shape& s = p.shape;
    const int64_t C = s.channels;
    Roi<G> r = load_roi(p.rois, k);
    PoolRoi<G> roi = pool_roi(r, p.spatial_scale, s.pooled_h, s.pooled_w);
    Pixels<T> px = image_pixels(s, features, r.valid ? r.batch : 0, 0);
    best_lanes.resize(C);
    arg_lanes.resize(C);
    G* __restrict__ best = best_lanes.data();
    int32_t* __restrict__ arg = arg_lanes.data();
    for (int64_t ph = 0; ph < s.pooled_h; ++ph) {
      for (int64_t pw = 0; pw < s.pooled_w; ++pw) {
        PixelWindow win = r.valid ? pool_bin(roi, ph, pw, s.height, s.width)
                                  : PixelWindow{0, 0, 0, 0};
        for (int64_t c = 0; c < C; ++c) best[c] = -std::numeric_limits<G>::infinity(), arg[c] = -1;
        for (int64_t h = win.h0; h < win.h1; ++h) {
          for (int64_t w = win.w0; w < win.w1; ++w) {
            const T* __restrict__ v = px.at(h, w);
            const int32_t pixel = static_cast<int32_t>(h * s.width + w);
            for (int64_t c = 0; c < C; ++c) take_if_greater(to_acc(v[c]), pixel, &best[c], &arg[c]);
          }
        }
        const int64_t i = output_index(s, k, 0, ph, pw);
        for (int64_t c = 0; c < C; ++c) {
          out[i + c] = from_acc<T>(arg[c] < 0 ? G(0) : best[c]);
        }
        if (argmax) std::copy_n(arg, C, argmax + i);
      }
    }
  });
}

// NCHW: the tile's channels of ROI `slot` of `run`, from `tile`, into
// `block` and `winners`.
template <typename G>
JAX_ROI_ALWAYS_INLINE void pool_forward_lanes(const Problem<G>& p, const PoolRun<G>& run,
                                              int64_t slot, const LaneTile<G>& tile,
                                              OutputBlock<G>& block, WinnerBlock& winners) {
  const Shape& s = p.shape;
  const int64_t bins = s.pooled_h * s.pooled_w;
  const PixelWindow* win = run.windows.data() + slot * bins;
  for (int64_t b = 0; b < bins; ++b) {
    G best[kLanes];
    int32_t arg[kLanes];
    for (int j = 0; j < kLanes; ++j) best[j] = -std::numeric_limits<G>::infinity(), arg[j] = -1;
    for (int64_t h = win[b].h0; h < win[b].h1; ++h) {
      for (int64_t w = win[b].w0; w < win[b].w1; ++w) {
        const G* __restrict__ v = tile.at(s.width, h, w);
        const int32_t pixel = static_cast<int32_t>(h * s.width + w);
#pragma GCC unroll 1  // unrolled, the loop becomes scalar branches, not blends
        for (int j = 0; j < kLanes; ++j) take_if_greater(v[j], pixel, &best[j], &arg[j]);
      }
    }
#pragma GCC unroll 1
    for (int j = 0; j < kLanes; ++j) best[j] = arg[j] < 0 ? G(0) : best[j];
    std::memcpy(block.at(b), best, sizeof best);
    std::memcpy(winners.at(b), arg, sizeof arg);
  }
}

// NCHW: channels [c0, c1) of the listed ROIs, through tiles of kLanes
// channels. A ROI's results (and winners) for a tile are written as one
// stream each, as align's are (OutputBlock).
template <typename T, typename G>
void pool_forward_nchw(const Problem<G>& p, const RoiList& list, int64_t c0, int64_t c1,
                       const T* features, T* out, int32_t* argmax, PoolRun<G>& run,
                       LaneTile<G>& tile, OutputBlock<G>& block, WinnerBlock& winners) {
  with_native_isa([&](auto) JAX_ROI_INLINE_LAMBDA {
    const Shape& s = p.shape;
    const int64_t bins = s.pooled_h * s.pooled_w;
    block.resize(bins);
    winners.resize(bins);
    for_each_run_and_lane_group(p, list, c0, c1, run, kPoolRunCapacity, [&](int64_t c, int lanes) JAX_ROI_INLINE_LAMBDA {
      for (int64_t slot = 0; slot < run.size(); ++slot) {
        const int64_t batch = run.batch[slot];
        if (batch >= 0 && (tile.batch != batch || tile.channel != c))
          tile.load(s, features, batch, c, lanes);
        pool_forward_lanes(p, run, slot, tile, block, winners);
        const int64_t i = output_index(s, run.roi[slot], c, 0, 0);
        block.write(out + i, lanes, s);
        if (argmax) winners.write(argmax + i, lanes, s);
      }
    });
  });
}

// NHWC: adds g[c] to the pixel of `win` that won channel c (pixel[c]), a
// pixel's row at a time. For a small window these few contiguous passes
// cost less than a scatter to n pixels. The sum of each element is the
// scatter's (a non-winner adds +0, which leaves it as it was), and only pixels of the window
// are written whatever `pixel` holds.
constexpr int64_t kSweptWindow = 16;

template <typename T, typename G>
JAX_ROI_ALWAYS_INLINE void add_to_winners(G* image, int64_t stride, int64_t width,
                                          const PixelWindow& win, const int32_t* pixel,
                                          const T* g, int64_t n) {
  for (int64_t h = win.h0; h < win.h1; ++h) {
    for (int64_t w = win.w0; w < win.w1; ++w) {
      const int32_t q = static_cast<int32_t>(h * width + w);
      G* __restrict__ row = image + q * stride;
      // Adding +0 where q did not win keeps the store unconditional, so that
      // AVX2 vectorises it too (the gradient starts at +0 and never holds -0).
      // (The conversion stays outside the select, or 16-bit g is branched on.)
      for (int64_t c = 0; c < n; ++c) {
        const G add = to_acc(g[c]);
        row[c] += pixel[c] == q ? add : G(0);
      }
    }
  }
}

// Channels [c0, c1) of ROI k's gradient: each bin's to its winning pixel.
template <typename T, typename G>
void pool_backward_roi(const Problem<G>& p, int64_t k, int64_t c0, int64_t c1, const T* grad_out,
                       const int32_t* argmax, G* grad) {
  with_native_isa([&](auto) JAX_ROI_INLINE_LAMBDA {
    const Shape& s = p.shape;
    Roi<G> r = load_roi(p.rois, k);
    if (!r.valid) return;
    const int32_t pixels = static_cast<int32_t>(s.height * s.width);
    const int64_t bins = s.pooled_h * s.pooled_w;
    if (s.channels_last) {
      G* __restrict__ image = grad + r.batch * pixels * s.channels + c0;
      PoolRoi<G> roi = pool_roi(r, p.spatial_scale, s.pooled_h, s.pooled_w);
      for (int64_t ph = 0; ph < s.pooled_h; ++ph) {
        for (int64_t pw = 0; pw < s.pooled_w; ++pw) {
          const PixelWindow win = pool_bin(roi, ph, pw, s.height, s.width);
          const int64_t i = output_index(s, k, c0, ph, pw);
          if ((win.h1 - win.h0) * (win.w1 - win.w0) <= kSweptWindow)
            add_to_winners(image, s.channels, s.width, win, argmax + i, grad_out + i, c1 - c0);
          else
            scatter_channels(image, s.channels, pixels, argmax + i, grad_out + i, c1 - c0);
        }
      }
      return;
    }
    // The bins' pointers are restrict locals, and one unsigned test bounds a
    // pixel: through the lambda's captures, every update reloaded grad_out
    // (pool-vgg's NCHW backward 16.5 -> 12.7 ms, interleaved calls).
    for (int64_t c = c0; c < c1; ++c) {
      G* __restrict__ plane = grad + (r.batch * s.channels + c) * pixels;
      const int64_t i = output_index(s, k, c, 0, 0);
      const int32_t* __restrict__ arg = argmax + i;
      const T* __restrict__ g = grad_out + i;
      for (int64_t b = 0; b < bins; ++b) {
        const int32_t pixel = arg[b];
        if (static_cast<uint32_t>(pixel) < static_cast<uint32_t>(pixels))  // 0 <= pixel < pixels
          plane[pixel] += to_acc(g[b]);
      }
    }
  });
}

// Buffers one thread reuses.
template <typename G>
struct PoolScratch {
  PoolRun<G> run;
  LaneTile<G> tile;
  OutputBlock<G> block;
  WinnerBlock winners;
  std::vector<G> best;
  std::vector<int32_t> arg;
};

template <>
struct CpuKernel<Op::kPool> : NoCallTables {
  template <typename G>
  using Scratch = PoolScratch<G>;
  static constexpr NchwSplit kNchwSplit = NchwSplit::kChannels;
  static constexpr bool kNchwFromChannelsLast = false;
  static constexpr bool backward_writes_block(bool) { return false; }
  static constexpr bool kNhwcBackwardRowBands = false;

  template <typename T, typename G>
  static void forward_nchw(const Problem<G>& p, const RoiList& list, const Tables<G>&,
                           int64_t c0, int64_t c1,
                           const T* features, T* out, int32_t* argmax, Scratch<G>& scratch) {
    pool_forward_nchw(p, list, c0, c1, features, out, argmax, scratch.run, scratch.tile,
                      scratch.block, scratch.winners);
  }
  template <typename T, typename G>
  static void forward_nhwc(const Problem<G>& p, const RoiList& list, const Tables<G>&,
                           const T* features, T* out,
                           int32_t* argmax, Scratch<G>& scratch) {
    for (int64_t j = 0; j < list.size; ++j)
      pool_forward_nhwc(p, list.ids[j], features, out, argmax, scratch.best, scratch.arg);
  }
  template <typename T, typename G>
  static void backward(const Problem<G>& p, const GradientBlock& block, const Tables<G>&,
                       const T* grad_out, const int32_t* argmax, G* grad, Scratch<G>&) {
    for (int64_t j = 0; j < block.rois.size; ++j)
      pool_backward_roi(p, block.rois.ids[j], block.c0, block.c1, grad_out, argmax, grad);
  }
};

}  // namespace jax_roi
