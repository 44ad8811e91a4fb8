// roi_align "max" on the CPU, one ROI at a time through its axis tables.
// It compares samples in the element functions' order, so its winners agree
// with them exactly.
#pragma once

#include <algorithm>
#include <cstdint>
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

// The gradient of bin (ph, pw), channel c, of ROI k through its winner.
template <typename T, typename G>
void scatter_max_winner(const Problem<G>& p, const RoiTables<G>& t, int64_t batch, int64_t k,
                        int64_t c, int64_t ph, int64_t pw, const T* grad_out,
                        const int32_t* argmax, G* grad) {
  const Shape& s = p.shape;
  const int64_t i = output_index(s, k, c, ph, pw);
  const int64_t packed = argmax[i], nx = t.x.count(pw);
  if (packed < 0 || packed >= t.y.count(ph) * nx) return;
  Bilinear<G> w = bilinear(t.y.begin(ph)[packed / nx], t.x.begin(pw)[packed % nx]);
  if (!w.inside) return;
  G g = to_acc(grad_out[i]);
  *gradient_at(s, grad, batch, w.y0, w.x0, c) += g * w.w00;
  *gradient_at(s, grad, batch, w.y0, w.x1, c) += g * w.w01;
  *gradient_at(s, grad, batch, w.y1, w.x0, c) += g * w.w10;
  *gradient_at(s, grad, batch, w.y1, w.x1, c) += g * w.w11;
}

// NHWC: ROI k's gradient into channels [c0, c1).
template <typename T, typename G>
void align_max_backward_nhwc(const Problem<G>& p, int64_t k, int64_t c0, int64_t c1,
                             const T* grad_out, const int32_t* argmax, G* grad,
                             AlignScratch<G>& scratch) {
  with_native_isa([&](auto) JAX_ROI_INLINE_LAMBDA {
    Roi<G> r;
    AlignRoi<G> a;
    if (!prepare_roi(p, k, &r, &a, &scratch.tables)) return;
    for (int64_t ph = 0; ph < p.shape.pooled_h; ++ph)
      for (int64_t pw = 0; pw < p.shape.pooled_w; ++pw)
        for (int64_t c = c0; c < c1; ++c)
          scatter_max_winner(p, scratch.tables, r.batch, k, c, ph, pw, grad_out, argmax, grad);
  });
}

// NCHW: the listed ROIs' gradient into channels [c0, c1), a run at a time.
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
            for (int64_t ph = 0; ph < s.pooled_h; ++ph)
              for (int64_t pw = 0; pw < s.pooled_w; ++pw)
                scatter_max_winner(p, run.tables[slot], run.batch[slot], run.roi[slot], c, ph,
                                   pw, grad_out, argmax, grad);
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
