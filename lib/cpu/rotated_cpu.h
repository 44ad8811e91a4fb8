// roi_align_rotated on the CPU: the tap kernels (bin_taps.h) over each
// ROI's rotated samples, tabulated with the element functions' geometry.
#pragma once

#include <cstdint>

#include "../elements/rotated.h"
#include "bin_taps.h"
#include "cpu_kernel.h"

namespace jax_roi {

struct RotatedTaps {
  template <typename G>
  static void build(const Problem<G>& p, int64_t k, BinTaps<G>& t) {
    const Shape& s = p.shape;
    Roi<G> r;
    if (!start_taps(p, k, t, &r)) return;
    RotatedBin<G> bin{};
    bin.valid = true;
    bin.roi = rotated_roi(r, p.spatial_scale, s.pooled_h, s.pooled_w, p.sampling_ratio,
                          p.aligned, p.clockwise);
    bin.count = bin.roi.count;
    for (bin.ph = 0; bin.ph < s.pooled_h; ++bin.ph) {
      for (bin.pw = 0; bin.pw < s.pooled_w; ++bin.pw) {
        rotated_sample_ranges(bin.roi, bin.ph, bin.pw, s.height, s.width, &bin.ys, &bin.xs);
        add_sample_taps(bin, s, t);
      }
    }
  }
};

template <>
struct CpuKernel<Op::kRotated> : TapKernel<RotatedTaps, false> {};

}  // namespace jax_roi
