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

namespace jax_roi {

// Last-level cache the blocked NHWC loops aim to stay within.
constexpr int64_t kCacheBudgetBytes = 16 << 20;

// Channels per block such that `blocks_in_flight` blocks of every image fit
// the cache budget: a multiple of 16 (whole cache lines), at least 16.
inline int64_t cache_block_channels(const Shape& s, int64_t element_bytes,
                                    int64_t blocks_in_flight) {
  int64_t per_channel = std::max<int64_t>(s.num_images * s.height * s.width * element_bytes, 1);
  int64_t channels = kCacheBudgetBytes / (per_channel * std::max<int64_t>(blocks_in_flight, 1));
  return std::max<int64_t>(16, channels / 16 * 16);
}

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
    if constexpr (op == Op::kAlignAvg) {
      // A block of channels at a time, so the slice of the map that the
      // ROIs gather from stays in the last-level cache.
      const int64_t block = cache_block_channels(s, sizeof(T), 1);
      for (int64_t c0 = 0; c0 < s.channels; c0 += block) {
        const int64_t c1 = std::min(s.channels, c0 + block);
        parallel_for(pool, s.num_rois, balanced_grain(pool, s.num_rois, 1, 8),
                     [&](int64_t begin, int64_t end) {
                       AlignScratch<G> scratch;
                       for (int64_t k = begin; k < end; ++k)
                         align_avg_forward_nhwc(p, k, c0, c1, features, out, scratch);
                     });
      }
      return ffi::Error::Success();
    }
    parallel_for(pool, s.num_rois, balanced_grain(pool, s.num_rois, 1, 8),
                 [&](int64_t begin, int64_t end) {
                   AlignScratch<G> scratch;
                   for (int64_t k = begin; k < end; ++k) {
                     if constexpr (op == Op::kAlignMax)
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
    // NHWC: threads take neighbouring blocks of whole cache lines, small
    // enough that the blocks in flight stay in the last-level cache.
    int64_t grain = balanced_grain(pool, s.channels, 1, 1);
    if (s.channels_last)
      grain = std::min(cache_block_channels(s, sizeof(G), pool.num_threads()),
                       std::max<int64_t>(16, (grain + 15) / 16 * 16));
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
      for (int64_t k = 0; k < s.num_rois; ++k) {
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
