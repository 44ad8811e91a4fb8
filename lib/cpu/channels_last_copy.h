// An NCHW feature map copied channels-last, in the accumulation type, for
// NCHW kernels that do better on NHWC's arithmetic: a pixel's channels are
// then one run of vectors, and a thread computes whole ROIs, writing each
// ROI's output as one contiguous stream. Only maps up to
// kChannelsLastCopyMaxElements are copied: the copy is made once per call,
// and on a larger map (box-p2's, 28M elements) it measured slower than the
// lane tiles (lane_tile.h).
#pragma once

#include <algorithm>
#include <cstdint>
#include <memory>

#include "../dtypes.h"
#include "../problem.h"
#include "huge_pages.h"
#include "parallel_for.h"
#include "transpose.h"

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

// Pixels [q0, q1) of one NCHW image (C planes of `plane` pixels) to rows
// of C channels at dst[q * C].
template <typename T, typename G>
void copy_pixels_channels_last(const T* image, int64_t C, int64_t plane, int64_t q0, int64_t q1,
                               G* dst) {
  with_native_isa([&](auto) JAX_ROI_INLINE_LAMBDA {
    transpose_tiled(image + q0, plane, C, q1 - q0, dst + q0 * C, C,
                    [](T v) JAX_ROI_INLINE_LAMBDA { return to_acc(v); });
  });
}

// features [N, C, H, W] to [N, H, W, C], kBlock pixels to a task. (Left
// uninitialised before it is filled: no pass that zeroes it.)
template <typename T, typename G>
std::unique_ptr<G[]> channels_last_copy(xla::ffi::ThreadPool& pool, const Shape& s,
                                        const T* features) {
  constexpr int64_t kBlock = 256;
  const int64_t C = s.channels, pixels = s.height * s.width;
  std::unique_ptr<G[]> copy(new G[s.feature_count()]);
  advise_huge_pages(copy.get(), sizeof(G) * s.feature_count());
  const int64_t row_blocks = (pixels + kBlock - 1) / kBlock;
  const int64_t tasks = s.num_images * row_blocks;
  parallel_for(pool, tasks, balanced_grain(pool, tasks, 1, 4), [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n = t / row_blocks, q0 = (t % row_blocks) * kBlock;
      const int64_t q1 = std::min(pixels, q0 + kBlock);
      copy_pixels_channels_last(features + n * C * pixels, C, pixels, q0, q1,
                                copy.get() + n * C * pixels);
    }
  });
  return copy;
}

}  // namespace jax_roi
