// An NCHW feature map copied channels-last, in the accumulation type, for
// NCHW kernels that do better on NHWC's arithmetic: a pixel's channels are
// then one run of vectors, and a thread computes whole ROIs, writing each
// ROI's output as one contiguous stream. Only maps up to kMaxElements are
// copied: the copy is made once per call, and past that size reading and
// writing it costs about what the lane tiles (lane_tile.h) cost in all.
#pragma once

#include <algorithm>
#include <cstdint>
#include <memory>

#include "../dtypes.h"
#include "../problem.h"
#include "huge_pages.h"
#include "parallel_for.h"

namespace jax_roi {

constexpr int64_t kChannelsLastCopyMaxElements = int64_t(1) << 22;

// Whether a call on `rois` ROIs copies: a small NCHW map, and at least as
// many outputs to write as the copy has elements.
inline bool pays_for_channels_last_copy(const Shape& s, int64_t rois) {
  const int64_t outputs = rois * s.out_channels * s.pooled_h * s.pooled_w;
  return !s.channels_last && s.feature_count() <= kChannelsLastCopyMaxElements &&
         outputs >= s.feature_count();
}

// The same problem, reading a channels-last map.
template <typename G>
Problem<G> channels_last_problem(const Problem<G>& p) {
  Problem<G> q = p;
  q.shape.channels_last = true;
  return q;
}

// features [N, C, H, W] to [N, H, W, C], a block of kBlock channels by
// kBlock pixels at a time so that both sides stream through the cache.
// (Left uninitialised before it is filled: no pass that zeroes it.)
template <typename T, typename G>
std::unique_ptr<G[]> channels_last_copy(xla::ffi::ThreadPool& pool, const Shape& s,
                                        const T* features) {
  constexpr int64_t kBlock = 16;
  const int64_t C = s.channels, pixels = s.height * s.width;
  std::unique_ptr<G[]> copy(new G[s.feature_count()]);
  advise_huge_pages(copy.get(), sizeof(G) * s.feature_count());
  const int64_t row_blocks = (pixels + kBlock - 1) / kBlock;
  const int64_t tasks = s.num_images * row_blocks;
  parallel_for(pool, tasks, balanced_grain(pool, tasks, 16, 4), [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n = t / row_blocks, q0 = (t % row_blocks) * kBlock;
      const int64_t q1 = std::min(pixels, q0 + kBlock);
      const T* src = features + n * C * pixels;
      G* dst = copy.get() + n * C * pixels;
      for (int64_t c0 = 0; c0 < C; c0 += kBlock) {
        const int64_t c1 = std::min(C, c0 + kBlock);
        for (int64_t q = q0; q < q1; ++q)
          for (int64_t c = c0; c < c1; ++c) dst[q * C + c] = to_acc(src[c * pixels + q]);
      }
    }
  });
  return copy;
}

}  // namespace jax_roi
