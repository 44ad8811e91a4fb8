// prroi_pool on the CPU: the tap kernels (bin_taps.h), each pixel a bin's
// tents meet weighted by its tent integrals, the bin's area the divisor.
#pragma once

#include <cstdint>

#include "../elements/precise.h"
#include "bin_taps.h"
#include "cpu_kernel.h"

namespace jax_roi {

struct PreciseTaps {
  // (One compiled copy: see bin_taps.h, JAX_ROI_TABULATION.)
  template <typename G>
  JAX_ROI_TABULATION static void build(const Problem<G>& p, int64_t k, BinTaps<G>& t) {
    const Shape& s = p.shape;
    Roi<G> r;
    if (!start_taps(p, k, t, &r)) return;
    for (int64_t ph = 0; ph < s.pooled_h; ++ph) {
      for (int64_t pw = 0; pw < s.pooled_w; ++pw) {
        const PreciseBin<G> bin = precise_bin_of(p, r, ph, pw);
        precise_taps(bin, [&](int64_t y, int64_t x, G w) { t.add_new(y, x, w); });
        // A bin of zero area has no taps: it gives 0.
        t.end_bin(bin.area > G(0) ? bin.area : G(1));
      }
    }
  }
};

template <>
struct CpuKernel<Op::kPrPool> : TapKernel<PreciseTaps> {};

}  // namespace jax_roi
