// roi_align_rotated on the CPU: the tap kernels (bin_taps.h) over each
// ROI's rotated samples, tabulated with the element functions' geometry.
#pragma once

#include <cstdint>

#include "../elements/rotated.h"
#include "bin_taps.h"
#include "cpu_kernel.h"

namespace jax_roi {

struct RotatedTaps {
  // (One compiled copy: see bin_taps.h, JAX_ROI_TABULATION.)
  template <typename G>
  JAX_ROI_TABULATION static void build(const Problem<G>& p, int64_t k, BinTaps<G>& t) {
    const Shape& s = p.shape;
    Roi<G> r;
    if (!start_taps(p, k, t, &r)) return;
    const RotatedRoi<G> roi = rotated_roi_of(p, r);
    const FrameBounds<G> frame = rotated_frame_bounds(roi, s.height, s.width);
    for (int64_t ph = 0; ph < s.pooled_h; ++ph)
      for (int64_t pw = 0; pw < s.pooled_w; ++pw)
        add_sample_taps(rotated_bin_in(roi, frame, ph, pw), s, t);
  }
};

template <>
struct CpuKernel<Op::kRotated> : TapKernel<RotatedTaps> {};

}  // namespace jax_roi
