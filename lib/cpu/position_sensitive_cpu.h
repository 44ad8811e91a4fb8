// ps_roi_align and ps_roi_pool on the CPU: a ROI's bins tabulated as taps
// (bin_taps.h) with the element functions' geometry, each bin reading its
// own channel: input channel i is bin i % bins of output channel i / bins.
//
// The kernels go through the input channels a strip at a time, every ROI
// of the thread's part (or gradient block) reading (or adding to) the
// strip, which is sized to stay in L2 while they do. A ROI at a time
// instead scatters its reads over all the channels of every pixel: in the
// R-FCN workload, 21 cache lines per pixel of a 10 MB map, each line met
// again by other ROIs long after it left the cache.
#pragma once

#include <algorithm>
#include <cstdint>

#include "../elements/position_sensitive.h"
#include "bin_taps.h"
#include "cpu_kernel.h"
#include "gradient_blocks.h"

namespace jax_roi {

// Input channels a strip holds: about 256 KB of pixels, and a multiple of
// 16, so that in NHWC a strip is whole cache lines of each pixel and never
// shares one with a neighbouring thread's gradient block.
template <typename G>
int64_t strip_channels(const Shape& s) {
  constexpr int64_t kStripBytes = 256 << 10;
  const int64_t plane_bytes = std::max<int64_t>(1, s.height * s.width * int64_t(sizeof(G)));
  return std::max<int64_t>(16, kStripBytes / plane_bytes / 16 * 16);
}

// Walks input channels [i0, i1) as (output channel, bin) pairs, without a
// division per channel: body(i, b, o) with o the offset of the pair's
// output element from the ROI's first.
template <typename Body>
JAX_ROI_ALWAYS_INLINE void for_each_mapped_channel(const Shape& s, int64_t i0, int64_t i1,
                                                   const Body& body) {
  const int64_t bins = s.pooled_h * s.pooled_w;
  // output_index's element (c, b) less (0, 0): c * c_step + b * b_step
  const int64_t c_step = s.channels_last ? 1 : bins;
  const int64_t b_step = s.channels_last ? s.out_channels : 1;
  int64_t c = i0 / bins, b = i0 % bins;
  for (int64_t i = i0; i < i1; ++i) {
    body(i, b, c * c_step + b * b_step);
    if (++b == bins) b = 0, ++c;
  }
}

// Bin b of ROI t, every output channel, `acc` holding their sums. Taps
// run outermost, so the channels' sums are independent chains whose
// scattered loads overlap, and the tap loop's branch is met once a bin.
template <typename T, typename G>
JAX_ROI_ALWAYS_INLINE void mapped_forward_bin(const Shape& s, const BinTaps<G>& t, int64_t b,
                                              const T* features, T* out, std::vector<G>& acc) {
  const int64_t bins = s.pooled_h * s.pooled_w, n = s.out_channels;
  const Pixels<T> px = image_pixels(s, features, t.batch, b);  // input channel c*bins + b
  const int64_t channel_step = bins * (s.channels_last ? 1 : s.height * s.width);
  acc.assign(n, G(0));
  G* __restrict__ sum = acc.data();
  for (const Tap<G>* tap = t.begin(b); tap != t.end(b); ++tap) {
    const T* __restrict__ v = px.at(tap->y, tap->x);
    const G w = tap->weight;
    for (int64_t c = 0; c < n; ++c) sum[c] += w * to_acc(v[c * channel_step]);
  }
  for (int64_t c = 0; c < n; ++c)
    out[output_index(s, t.roi, c, b / s.pooled_w, b % s.pooled_w)] =
        from_acc<T>(sum[c] / t.divisor[b]);
}

// NHWC: bin b of ROI t's gradient into the input channels c*bins + b that
// lie in [c0, c1), taps outermost as in mapped_forward_bin.
template <typename T, typename G>
JAX_ROI_ALWAYS_INLINE void mapped_backward_bin(const Shape& s, const BinTaps<G>& t, int64_t b,
                                               int64_t c0, int64_t c1, const T* grad_out,
                                               G* grad, std::vector<G>& acc) {
  const int64_t bins = s.pooled_h * s.pooled_w, ph = b / s.pooled_w, pw = b % s.pooled_w;
  // The c with c0 <= c*bins + b < c1 (the numerators are kept non-negative:
  // C++ division truncates towards zero).
  const int64_t first = c0 > b ? (c0 - b + bins - 1) / bins : 0;
  const int64_t last = c1 > b ? std::min<int64_t>(s.out_channels, (c1 - 1 - b) / bins + 1) : 0;
  if (last <= first) return;
  const int64_t n = last - first;
  acc.resize(n);
  G* __restrict__ g = acc.data();
  for (int64_t c = 0; c < n; ++c)
    g[c] = to_acc(grad_out[output_index(s, t.roi, first + c, ph, pw)]) / t.divisor[b];
  G* const base = gradient_at(s, grad, t.batch, 0, 0, first * bins + b);
  for (const Tap<G>* tap = t.begin(b); tap != t.end(b); ++tap) {
    G* __restrict__ v = base + (tap->y * s.width + tap->x) * s.channels;
    const G w = tap->weight;
    for (int64_t c = 0; c < n; ++c) v[c * bins] += w * g[c];
  }
}

// NCHW: ROI t's gradient into input channels [i0, i1).
template <typename T, typename G>
JAX_ROI_ALWAYS_INLINE void mapped_backward_strip(const Shape& s, const BinTaps<G>& t, int64_t i0,
                                                 int64_t i1, const T* grad_out, G* grad) {
  const int64_t stride = s.channels_last ? s.channels : 1, row = stride * s.width;
  const T* roi_grad_out = grad_out + output_index(s, t.roi, 0, 0, 0);
  for_each_mapped_channel(s, i0, i1, [&](int64_t i, int64_t b, int64_t o) JAX_ROI_INLINE_LAMBDA {
    const G g = to_acc(roi_grad_out[o]) / t.divisor[b];
    G* __restrict__ plane = gradient_at(s, grad, t.batch, 0, 0, i);
    for (const Tap<G>* tap = t.begin(b); tap != t.end(b); ++tap)
      plane[tap->y * row + tap->x * stride] += g * tap->weight;
  });
}

template <typename Tabulate>
struct MappedTapKernel {
  template <typename G>
  using Tables = TapList<G, Tabulate>;
  template <typename G>
  struct Scratch {
    BinTaps<G> taps;            // a ROI's, when a part's are not kept
    TapList<G, Tabulate> part;  // a gradient block's ROIs
    std::vector<G> acc;
  };
  static constexpr int64_t kNhwcChunksPerThread = 8;
  static constexpr bool kNchwSplitsRois = true;
  static constexpr bool kNchwFromChannelsLast = false;
  static constexpr bool backward_writes_block(bool channels_last) { return !channels_last; }

  template <typename G>
  static void tabulate(ffi::ThreadPool& pool, const Problem<G>& p, const RoiList& list,
                       Tables<G>& tables) {
    tables.build(pool, p, list);
  }

  // Every output channel of the listed ROIs (c0, c1 are all of them: the
  // ROIs are split, kNchwSplitsRois).
  template <typename T, typename G>
  static JAX_ROI_CPU_CLONES void forward_nchw(const Problem<G>& p, const RoiList& list,
                                              const Tables<G>&, int64_t, int64_t,
                                              const T* features, T* out, int32_t*,
                                              Scratch<G>& scratch) {
    forward_part(p, list, features, out, scratch);
  }

  template <typename T, typename G>
  static JAX_ROI_CPU_CLONES void forward_nhwc(const Problem<G>& p, const RoiList& list,
                                              const Tables<G>&, const T* features, T* out,
                                              int32_t*, Scratch<G>& scratch) {
    forward_part(p, list, features, out, scratch);
  }

  // The listed ROIs (all of one image, all valid) into input channels
  // [c0, c1). NHWC: a ROI at a time, each pixel's channels side by side.
  // NCHW: a strip of planes at a time, zeroed just before the ROIs add to
  // it, so that it is written to memory once.
  template <typename T, typename G>
  static JAX_ROI_CPU_CLONES void backward(const Problem<G>& p, const RoiList& list,
                                          const Tables<G>& tables, int64_t c0, int64_t c1,
                                          const T* grad_out, const int32_t*, G* grad,
                                          Scratch<G>& scratch) {
    const Shape& s = p.shape;
    if (list.size == 0) return;
    if (s.channels_last) {
      const int64_t bins = s.pooled_h * s.pooled_w;
      for (int64_t j = 0; j < list.size; ++j) {
        const BinTaps<G>& t = tables.of(list.ids + j, p, scratch.taps);
        if (t.batch < 0) continue;
        for (int64_t b = 0; b < bins; ++b)
          mapped_backward_bin(s, t, b, c0, c1, grad_out, grad, scratch.acc);
      }
      return;
    }
    const int64_t image = load_roi(p.rois, list.ids[0]).batch;
    const Tables<G>& taps = tables.shared ? tables : scratch.part.build_serial(p, list);
    // Taps too many to keep are tabulated at each visit: one strip then.
    const int64_t width = taps.shared ? strip_channels<G>(s) : c1 - c0;
    for (int64_t i0 = c0; i0 < c1; i0 += width) {
      const int64_t i1 = std::min(c1, i0 + width);
      zero_gradient_block(s, GradientBlock{{}, image, i0, i1}, grad);
      for (int64_t j = 0; j < list.size; ++j) {
        const BinTaps<G>& t = taps.of(list.ids + j, p, scratch.taps);
        if (t.batch >= 0) mapped_backward_strip(s, t, i0, i1, grad_out, grad);
      }
    }
  }

 private:
  // A ROI at a time, tabulated as it is visited: in the forward, where
  // each output is written once, strips would give each (ROI, channel) a
  // tap loop of its own, whose exits the branch predictor misses.
  template <typename T, typename G>
  static JAX_ROI_ALWAYS_INLINE void forward_part(const Problem<G>& p, const RoiList& list,
                                                 const T* features, T* out, Scratch<G>& scratch) {
    const Shape& s = p.shape;
    const int64_t bins = s.pooled_h * s.pooled_w;
    for (int64_t j = 0; j < list.size; ++j) {
      Tabulate::build(p, list.ids[j], scratch.taps);
      const BinTaps<G>& t = scratch.taps;
      if (t.batch < 0) {
        zero_roi_output(s, t.roi, 0, s.out_channels, out);
        continue;
      }
      for (int64_t b = 0; b < bins; ++b) mapped_forward_bin(s, t, b, features, out, scratch.acc);
    }
  }
};

struct PsAlignTaps {
  template <typename G>
  static void build(const Problem<G>& p, int64_t k, BinTaps<G>& t) {
    const Shape& s = p.shape;
    Roi<G> r;
    if (!start_taps(p, k, t, &r)) return;
    for (int64_t ph = 0; ph < s.pooled_h; ++ph)
      for (int64_t pw = 0; pw < s.pooled_w; ++pw) add_sample_taps(align_bin_of(p, r, ph, pw), s, t);
  }
};

struct PsPoolTaps {
  template <typename G>
  static void build(const Problem<G>& p, int64_t k, BinTaps<G>& t) {
    const Shape& s = p.shape;
    Roi<G> r;
    if (!start_taps(p, k, t, &r)) return;
    PoolRoi<G> roi = pool_roi(r, p.spatial_scale, s.pooled_h, s.pooled_w, /*inclusive_end=*/false);
    for (int64_t ph = 0; ph < s.pooled_h; ++ph) {
      for (int64_t pw = 0; pw < s.pooled_w; ++pw) {
        PixelWindow win = pool_bin(roi, ph, pw, s.height, s.width);
        for (int64_t h = win.h0; h < win.h1; ++h)
          for (int64_t w = win.w0; w < win.w1; ++w) t.add_new(h, w, G(1));
        // An empty bin has no taps: it sums to 0, whatever its divisor.
        t.end_bin(win.empty() ? G(1) : static_cast<G>((win.h1 - win.h0) * (win.w1 - win.w0)));
      }
    }
  }
};

template <>
struct CpuKernel<Op::kPsAlign> : MappedTapKernel<PsAlignTaps> {};
template <>
struct CpuKernel<Op::kPsPool> : MappedTapKernel<PsPoolTaps> {};

}  // namespace jax_roi
