// The CPU backend: ROI-at-a-time kernels over XLA's thread pool. Forward
// splits the ROIs among threads; backward splits the channels, so each
// thread owns the gradient elements it writes and adds into them in a fixed
// order: the gradient is bitwise reproducible, with no atomics.
#pragma once

#include <algorithm>
#include <cstdint>

#include "../ffi_problem.h"
#include "align_cpu.h"
#include "parallel_for.h"
#include "pool_cpu.h"
#include "roi_order.h"

namespace jax_roi {

struct CpuBackend {
  using Context = ffi::ThreadPool;

  template <Op op, typename T, typename G>
  static ffi::Error forward(Context& pool, const Problem<G>& p, const T* features, T* out,
                            int32_t* argmax) {
    const Shape& s = p.shape;
    if (s.output_count() == 0) return ffi::Error::Success();
    if (!s.channels_last) {
      // Channels outermost, so each plane is read from memory once per run of ROIs.
      parallel_for(pool, s.channels, balanced_grain(pool, s.channels, 1, 4),
                   [&](int64_t c0, int64_t c1) {
                     AlignScratch<G> scratch;
                     if constexpr (op == Op::kAlignAvg) {
                       align_avg_forward_nchw(p, c0, c1, features, out, scratch);
                     } else if constexpr (op == Op::kAlignMax) {
                       align_max_forward_nchw(p, c0, c1, features, out, argmax, scratch);
                     } else {
                       PoolRun<G> run;
                       pool_forward_nchw(p, c0, c1, features, out, argmax, run);
                     }
                   });
      return ffi::Error::Success();
    }
    const std::vector<int64_t> order = spatial_order(p);
    parallel_for(pool, s.num_rois, balanced_grain(pool, s.num_rois, 1, 8),
                 [&](int64_t begin, int64_t end) {
                   AlignScratch<G> scratch;
                   for (int64_t i = begin; i < end; ++i) {
                     const int64_t k = order[i];
                     if constexpr (op == Op::kAlignAvg)
                       align_avg_forward_nhwc(p, k, 0, s.channels, features, out, scratch);
                     else if constexpr (op == Op::kAlignMax)
                       align_max_forward_roi(p, k, features, out, argmax, scratch);
                     else
                       pool_forward_nhwc(p, k, features, out, argmax, scratch.acc, scratch.arg);
                   }
                 });
    return ffi::Error::Success();
  }

  template <Op op, typename T, typename G>
  static ffi::Error backward(Context& pool, const Problem<G>& p, const T* grad_out,
                             const int32_t* argmax, G* grad) {
    const Shape& s = p.shape;
    const int64_t n = s.feature_count();
    parallel_for(pool, n, balanced_grain(pool, n, 1 << 16, 1), [&](int64_t begin, int64_t end) {
      std::fill(grad + begin, grad + end, G(0));
    });
    if (s.output_count() == 0) return ffi::Error::Success();
    // One block of channels per thread; in NHWC a multiple of 16, so that
    // threads never write to the same cache line.
    int64_t grain = balanced_grain(pool, s.channels, 1, 1);
    if (s.channels_last) grain = std::max<int64_t>(16, (grain + 15) / 16 * 16);
    const std::vector<int64_t> order = s.channels_last ? spatial_order(p) : std::vector<int64_t>{};
    parallel_for(pool, s.channels, grain, [&](int64_t c0, int64_t c1) {
      AlignScratch<G> scratch;
      if (!s.channels_last) {  // every ROI, a run at a time
        if constexpr (op == Op::kAlignAvg)
          align_avg_backward_nchw(p, c0, c1, grad_out, grad, scratch);
        else if constexpr (op == Op::kAlignMax)
          align_max_backward_nchw(p, c0, c1, grad_out, argmax, grad, scratch);
        else
          for (int64_t k = 0; k < s.num_rois; ++k)
            pool_backward_roi(p, k, c0, c1, grad_out, argmax, grad);
        return;
      }
      for (const int64_t k : order) {
        if constexpr (op == Op::kAlignAvg)
          align_avg_backward_nhwc(p, k, c0, c1, grad_out, grad, scratch);
        else if constexpr (op == Op::kAlignMax)
          align_max_backward_nhwc(p, k, c0, c1, grad_out, argmax, grad, scratch);
        else
          pool_backward_roi(p, k, c0, c1, grad_out, argmax, grad);
      }
    });
    return ffi::Error::Success();
  }
};

}  // namespace jax_roi
