// roi_align "max" on the CPU, one ROI at a time through its axis tables.
// It compares samples in the element functions' order, so its winners agree
// with them exactly.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>
#include <limits>

#include "align_common.h"
#include "cpu_kernel.h"
#include "isa_dispatch.h"

namespace jax_roi {

// Scans bin (ph, pw) for channels [0, C) of `px` (NHWC: all at once; NCHW:
// C == 1), leaving per channel the best value and packed winner.
template <typename T, typename G>
JAX_ROI_ALWAYS_INLINE void scan_max_bin(const RoiTables<G>& t, int64_t ph, int64_t pw, const Pixels<T>& px,
                  int64_t C, G* __restrict__ best, int32_t* __restrict__ arg,
                  G* __restrict__ value) {
  for (int64_t c = 0; c < C; ++c) {
    best[c] = -std::numeric_limits<G>::infinity();
    arg[c] = -1;
  }
  const AxisWeights<G>* ys = t.y.begin(ph);
  const AxisWeights<G>* xs = t.x.begin(pw);
  const int64_t ny = t.y.count(ph), nx = t.x.count(pw);
  for (int64_t a = 0; a < ny; ++a) {
    for (int64_t b = 0; b < nx; ++b) {
      const int32_t packed = static_cast<int32_t>(a * nx + b);  // pack_sample, relative
      Bilinear<G> w = bilinear(ys[a], xs[b]);
      if (!w.inside) {
#pragma GCC unroll 1  // unrolled, a fixed-length loop becomes scalar branches
        for (int64_t c = 0; c < C; ++c) take_if_greater(G(0), packed, &best[c], &arg[c]);
        continue;
      }
      const T* __restrict__ v00 = px.at(w.y0, w.x0);
      const T* __restrict__ v01 = px.at(w.y0, w.x1);
      const T* __restrict__ v10 = px.at(w.y1, w.x0);
      const T* __restrict__ v11 = px.at(w.y1, w.x1);
      // Interpolate, then compare, in two simple loops that both vectorise.
      for (int64_t c = 0; c < C; ++c)
        value[c] = w.w00 * to_acc(v00[c]) + w.w01 * to_acc(v01[c]) + w.w10 * to_acc(v10[c]) +
                   w.w11 * to_acc(v11[c]);
#pragma GCC unroll 1
      for (int64_t c = 0; c < C; ++c) take_if_greater(value[c], packed, &best[c], &arg[c]);
    }
  }
  const SampleRange &ry = t.y.ranges[ph], &rx = t.x.ranges[pw];
  if (ry.complete && rx.complete) {  // every sample was scanned: settle_max, simplified
    for (int64_t c = 0; c < C; ++c) best[c] = arg[c] < 0 ? G(0) : best[c];
    return;
  }
  for (int64_t c = 0; c < C; ++c) {
    int64_t packed = arg[c];
    settle_max(ry, rx, &best[c], &packed);
    arg[c] = static_cast<int32_t>(packed);
  }
}

template <typename T, typename G>
void align_max_forward_roi(const Problem<G>& p, int64_t k, const T* features, T* out,
                           int32_t* argmax, AlignScratch<G>& scratch) {
  with_native_isa([&](auto) JAX_ROI_INLINE_LAMBDA {
    const Shape& s = p.shape;
    const int64_t C = s.channels, bins = s.pooled_h * s.pooled_w;
    T* roi_out = out + k * C * bins;
    int32_t* roi_arg = argmax ? argmax + k * C * bins : nullptr;
    Roi<G> r;
    AlignRoi<G> a;
    if (!prepare_roi(p, k, &r, &a, &scratch.tables)) {
      std::fill(roi_out, roi_out + C * bins, from_acc<T>(G(0)));
      if (roi_arg) std::fill(roi_arg, roi_arg + C * bins, -1);
      return;
    }
    const int64_t lanes = s.channels_last ? C : 1;
    scratch.acc.resize(lanes);
    scratch.arg.resize(lanes);
    scratch.value.resize(lanes);
    for (int64_t c0 = 0; c0 < C; c0 += lanes) {
      Pixels<T> px = image_pixels(s, features, r.batch, c0);
      for (int64_t ph = 0; ph < s.pooled_h; ++ph) {
        for (int64_t pw = 0; pw < s.pooled_w; ++pw) {
          scan_max_bin(scratch.tables, ph, pw, px, lanes, scratch.acc.data(), scratch.arg.data(),
                       scratch.value.data());
          // Lanes are contiguous in NHWC; in NCHW there is one.
          const int64_t i = output_index(s, 0, c0, ph, pw);
          for (int64_t c = 0; c < lanes; ++c) roi_out[i + c] = from_acc<T>(scratch.acc[c]);
          if (roi_arg) std::copy_n(scratch.arg.data(), lanes, roi_arg + i);
        }
      }
    }
  });
}

// NCHW: channels [c0, c1) of the listed ROIs, through tiles of kLanes
// channels. A ROI's results and winners for a tile are staged bin-major and
// written as one stream each (OutputBlock, WinnerBlock); argmax is null
// when only the values are wanted.
template <typename T, typename G>
void align_max_forward_nchw(const Problem<G>& p, const RoiList& list, int64_t c0, int64_t c1,
                            const T* features, T* out, int32_t* argmax, AlignScratch<G>& scratch) {
  with_native_isa([&](auto) JAX_ROI_INLINE_LAMBDA {
    const Shape& s = p.shape;
    const int64_t bins = s.pooled_h * s.pooled_w;
    RoiRun<G>& run = scratch.run;
    LaneTile<G>& tile = scratch.tile;
    OutputBlock<G>& block = scratch.block;
    WinnerBlock& winners = scratch.winners;
    block.resize(bins);
    winners.resize(bins);
    for_each_run_and_lane_group(p, list, c0, c1, run, kRunCapacity, [&](int64_t c, int lanes) JAX_ROI_INLINE_LAMBDA {
      for (int64_t slot = 0; slot < run.size(); ++slot) {
        const int64_t batch = run.batch[slot];
        if (batch >= 0 && (tile.batch != batch || tile.channel != c))
          tile.load(s, features, batch, c, lanes);
        const Pixels<G> px{tile.data.data(), kLanes, s.width * kLanes};
        for (int64_t b = 0; b < bins; ++b) {
          G value[kLanes];
          if (batch >= 0) {
            scan_max_bin(run.tables[slot], b / s.pooled_w, b % s.pooled_w, px, kLanes,
                         block.at(b), winners.at(b), value);
          } else {
            std::fill(block.at(b), block.at(b) + kLanes, G(0));
            std::fill(winners.at(b), winners.at(b) + kLanes, -1);
          }
        }
        const int64_t i = output_index(s, run.roi[slot], c, 0, 0);
        block.write(out + i, lanes, s);
        if (argmax) winners.write(argmax + i, lanes, s);
      }
    });
  });
}

// The sample of bin (ph, pw) that won with `packed` (a * nx + b), or one
// not inside (no gradient) where `packed` names none.
template <typename G>
JAX_ROI_ALWAYS_INLINE Bilinear<G> winner_sample(const RoiTables<G>& t, int64_t ph, int64_t pw,
                                                int64_t packed) {
  const int64_t nx = t.x.count(pw);
  if (packed < 0 || packed >= t.y.count(ph) * nx) return Bilinear<G>{};
  return bilinear(t.y.begin(ph)[packed / nx], t.x.begin(pw)[packed % nx]);
}

// Adds gradient g through sample w into a gradient whose pixel (y, x) is at
// d[(y * width + x) * stride] (an NCHW plane: stride 1; an NHWC image from
// a channel: stride C).
template <typename G>
JAX_ROI_ALWAYS_INLINE void add_through_sample(const Bilinear<G>& w, G g, int64_t width,
                                              int64_t stride, G* d) {
  d[(w.y0 * width + w.x0) * stride] += g * w.w00;
  d[(w.y0 * width + w.x1) * stride] += g * w.w01;
  d[(w.y1 * width + w.x0) * stride] += g * w.w10;
  d[(w.y1 * width + w.x1) * stride] += g * w.w11;
}

// Channels [c0, c1) of an NHWC bin whose outputs start at grad_out[i0],
// winner by winner, into `image`'s gradient. (Out of line, as
// scatter_bin_winners.)
template <typename T, typename G>
__attribute__((noinline)) void scatter_channel_winners(const Shape& s, const RoiTables<G>& t,
                                                       int64_t ph, int64_t pw, int64_t i0,
                                                       int64_t c0, int64_t c1, const T* grad_out,
                                                       const int32_t* argmax, G* image) {
  for (int64_t c = c0; c < c1; ++c) {
    const Bilinear<G> w = winner_sample(t, ph, pw, argmax[i0 + c]);
    if (w.inside) add_through_sample(w, to_acc(grad_out[i0 + c]), s.width, s.channels, image + c);
  }
}

// Bin (ph, pw)'s samples by packed winner (a * nx + b), into `samples`.
template <typename G>
JAX_ROI_ALWAYS_INLINE void tabulate_winner_samples(const Shape& s, const RoiTables<G>& t,
                                                   int64_t ph, int64_t pw,
                                                   std::vector<WinnerSample<G>>& samples) {
  const AxisWeights<G>* ys = t.y.begin(ph);
  const AxisWeights<G>* xs = t.x.begin(pw);
  const int64_t ny = t.y.count(ph), nx = t.x.count(pw), C = s.channels;
  samples.resize(ny * nx);
  for (int64_t a = 0; a < ny; ++a)
    for (int64_t b = 0; b < nx; ++b) {
      const Bilinear<G> w = bilinear(ys[a], xs[b]);
      WinnerSample<G>& e = samples[a * nx + b];
      e.inside = w.inside;
      if (!w.inside) continue;
      e.p00 = (w.y0 * s.width + w.x0) * C;
      e.p01 = (w.y0 * s.width + w.x1) * C;
      e.p10 = (w.y1 * s.width + w.x0) * C;
      e.p11 = (w.y1 * s.width + w.x1) * C;
      e.w00 = w.w00, e.w01 = w.w01, e.w10 = w.w10, e.w11 = w.w11;
    }
}

// Channels [c0, c1) of an NHWC bin whose outputs start at grad_out[i0]
// (its channels follow), through its `n` samples, into `image`'s gradient.
// (Out of line, in the baseline ISA: one copy serves every path. Being out
// of line also kept the additions from contracting into fused multiply-adds
// in the AVX2 or AVX-512 code, as 0.4.33's winner-by-winner scatter did,
// rounding unlike the other layout; since 0.4.35 no copy contracts,
// CMakeLists.txt.)
template <typename T, typename G>
__attribute__((noinline)) void scatter_bin_winners(const WinnerSample<G>* samples, int64_t n,
                                                   int64_t i0, int64_t c0, int64_t c1,
                                                   const T* grad_out, const int32_t* argmax,
                                                   G* image) {
  for (int64_t c = c0; c < c1; ++c) {
    const int64_t packed = argmax[i0 + c];
    if (packed < 0 || packed >= n || !samples[packed].inside) continue;
    const WinnerSample<G>& e = samples[packed];
    const G g = to_acc(grad_out[i0 + c]);
    G* const d = image + c;
    d[e.p00] += g * e.w00;
    d[e.p01] += g * e.w01;
    d[e.p10] += g * e.w10;
    d[e.p11] += g * e.w11;
  }
}

// NHWC: ROI k's gradient into channels [c0, c1). A bin whose channels
// outnumber its samples scatters through a table of them, found once for
// all its channels, where each channel's winner took a division, the
// weights' products and four gradient indices (mask-c4 about 2.5x, box-p2
// 2x as fast, on either vector width); the others winner by winner. The
// same additions in the same order either way, and as in NCHW.
template <typename T, typename G>
void align_max_backward_nhwc(const Problem<G>& p, int64_t k, int64_t c0, int64_t c1,
                             const T* grad_out, const int32_t* argmax, G* grad,
                             AlignScratch<G>& scratch) {
  with_native_isa([&](auto) JAX_ROI_INLINE_LAMBDA {
    const Shape& s = p.shape;
    Roi<G> r;
    AlignRoi<G> a;
    const RoiTables<G>& t = scratch.tables;
    if (!prepare_roi(p, k, &r, &a, &scratch.tables)) return;
    G* const image = grad + r.batch * s.height * s.width * s.channels;
    for (int64_t ph = 0; ph < s.pooled_h; ++ph) {
      for (int64_t pw = 0; pw < s.pooled_w; ++pw) {
        const int64_t n = t.y.count(ph) * t.x.count(pw);
        const int64_t i0 = output_index(s, k, 0, ph, pw);  // the bin's channels follow
        if (n > c1 - c0) {
          scatter_channel_winners(s, t, ph, pw, i0, c0, c1, grad_out, argmax, image);
          continue;
        }
        tabulate_winner_samples(s, t, ph, pw, scratch.samples);
        scatter_bin_winners(scratch.samples.data(), n, i0, c0, c1, grad_out, argmax, image);
      }
    }
  });
}

// One channel of an NCHW ROI's bins, whose outputs start at grad_out[i0]
// (the bins in order), through its winners into `plane`, the gradient's
// plane of that channel of its image: indices within the plane, where a
// call per winner found each from scratch (mask-c4 0.80, box-p2 0.89,
// median paired ratios). (Out of line, as scatter_bin_winners.)
template <typename T, typename G>
__attribute__((noinline)) void scatter_plane_winners(const Shape& s, const RoiTables<G>& t,
                                                     int64_t i0, const T* grad_out,
                                                     const int32_t* argmax, G* plane) {
  for (int64_t ph = 0, i = i0; ph < s.pooled_h; ++ph) {
    for (int64_t pw = 0; pw < s.pooled_w; ++pw, ++i) {
      const Bilinear<G> w = winner_sample(t, ph, pw, argmax[i]);
      if (w.inside) add_through_sample(w, to_acc(grad_out[i]), s.width, int64_t(1), plane);
    }
  }
}

// NCHW: the listed ROIs' gradient into channels [c0, c1), a run at a time,
// channel by channel (a plane stays in cache while every ROI adds to it).
template <typename T, typename G>
void align_max_backward_nchw(const Problem<G>& p, const RoiList& list, int64_t c0, int64_t c1,
                             const T* grad_out, const int32_t* argmax, G* grad,
                             AlignScratch<G>& scratch) {
  with_native_isa([&](auto) JAX_ROI_INLINE_LAMBDA {
    const Shape& s = p.shape;
    RoiRun<G>& run = scratch.run;
    for (int64_t j = 0; j < list.size;) {
      j = run.build(p, list, j, kRunCapacity);
      for (int64_t c = c0; c < c1; ++c)
        for (int64_t slot = 0; slot < run.size(); ++slot)
          if (run.batch[slot] >= 0)
            scatter_plane_winners(s, run.tables[slot], output_index(s, run.roi[slot], c, 0, 0),
                                  grad_out, argmax,
                                  gradient_at(s, grad, run.batch[slot], 0, 0, c));
    }
  });
}

template <>
struct CpuKernel<Op::kAlignMax> : NoCallTables {
  template <typename G>
  using Scratch = AlignScratch<G>;
  static constexpr NchwSplit kNchwSplit = NchwSplit::kChannels;
  static constexpr bool kNchwFromChannelsLast = false;
  static constexpr bool backward_writes_block(bool) { return false; }
  static constexpr bool kNhwcBackwardRowBands = false;

  template <typename T, typename G>
  static void forward_nchw(const Problem<G>& p, const RoiList& list, const Tables<G>&,
                           int64_t c0, int64_t c1,
                           const T* features, T* out, int32_t* argmax, Scratch<G>& scratch) {
    align_max_forward_nchw(p, list, c0, c1, features, out, argmax, scratch);
  }
  template <typename T, typename G>
  static void forward_nhwc(const Problem<G>& p, const RoiList& list, const Tables<G>&,
                           const T* features, T* out,
                           int32_t* argmax, Scratch<G>& scratch) {
    for (int64_t j = 0; j < list.size; ++j)
      align_max_forward_roi(p, list.ids[j], features, out, argmax, scratch);
  }
  template <typename T, typename G>
  static void backward(const Problem<G>& p, const GradientBlock& block, const Tables<G>&,
                       const T* grad_out, const int32_t* argmax, G* grad, Scratch<G>& scratch) {
    const RoiList& list = block.rois;
    const int64_t c0 = block.c0, c1 = block.c1;
    if (!p.shape.channels_last)
      return align_max_backward_nchw(p, list, c0, c1, grad_out, argmax, grad, scratch);
    for (int64_t j = 0; j < list.size; ++j)
      align_max_backward_nhwc(p, list.ids[j], c0, c1, grad_out, argmax, grad, scratch);
  }
};

}  // namespace jax_roi
