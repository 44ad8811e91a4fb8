// Where the backward sums the feature gradient, and how it reaches the
// result. A float32 or float64 gradient is summed in the result itself. A
// 16-bit one is summed in a float32 scratch of the whole map and narrowed
// into the result (the features' own type, rounded to nearest even) block
// by block, as soon as a block is complete and while its part of the
// scratch may still be in cache. Returning float32 for XLA to convert cost
// a fresh float32 gradient and a pass of its own over it (rot-p2's bfloat16
// backward: 62 ms against 34 ms for float32).
#pragma once

#include <cstdint>
#include <type_traits>

#include "../dtypes.h"
#include "gradient_blocks.h"
#include "huge_pages.h"
#include "isa_dispatch.h"
#include "kept_scratch.h"

namespace jax_roi {

// out[i] = sums[i] rounded to R, for a run of n elements.
template <typename G, typename R>
void narrow_run(const G* sums, R* out, int64_t n) {
  with_native_isa([&](auto) JAX_ROI_INLINE_LAMBDA {
    for (int64_t i = 0; i < n; ++i) out[i] = from_acc<R>(sums[i]);
  });
}

// G: the accumulation type; R: the result's type (G, or 16-bit).
template <typename G, typename R>
class GradientTarget {
 public:
  static constexpr bool kNarrows = !std::is_same_v<G, R>;

  // The scratch is uninitialised (kept_scratch.h): every block zeroes (or
  // writes) its part before summing.
  GradientTarget(const Shape& s, R* result)
      : shape_(s), result_(result), scratch_(kNarrows ? s.feature_count() : 0) {
    advise_huge_pages(result, sizeof(R) * s.feature_count());
  }

  // Where the kernels sum.
  G* sums() const {
    if constexpr (kNarrows) return scratch_.get();
    else return result_;
  }

  // A block no ROI adds to: its result is zero.
  void zero(const GradientBlock& block) const { zero_gradient_block(shape_, block, result_); }

  // A block every ROI has added to: its sums become the result.
  void finish(const GradientBlock& block) const {
    if constexpr (kNarrows)
      for_each_block_run(shape_, block, [&](int64_t at, int64_t n) {
        narrow_run(scratch_.get() + at, result_ + at, n);
      });
  }

 private:
  const Shape& shape_;
  R* result_;
  ScratchLease<G> scratch_;
};

}  // namespace jax_roi
