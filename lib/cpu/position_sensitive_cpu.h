// ps_roi_align and ps_roi_pool on the CPU: the tap kernels (bin_taps.h),
// each bin reading its own channel, tabulated with the element functions'
// geometry.
#pragma once

#include <cstdint>

#include "../elements/position_sensitive.h"
#include "bin_taps.h"
#include "cpu_kernel.h"

namespace jax_roi {

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
struct CpuKernel<Op::kPsAlign> : TapKernel<PsAlignTaps, true> {};
template <>
struct CpuKernel<Op::kPsPool> : TapKernel<PsPoolTaps, true> {};

}  // namespace jax_roi
