// First touch, for NHWC backwards whose taps each update one contiguous run
// of a pixel's channels, in gradient blocks too large to stay in cache.
// Zeroing such a block before adding to it is a pass of its own over memory
// (rot-p2: 67 MB an image), which the updates then read back. Instead the
// block zeroes a pixel's channels at its first tap, by writing the tap's
// product where it would have added it, and zeroes the pixels no tap
// reached at the end. Each sum still starts from zero and adds in the same
// order: the same bits.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "../problem.h"
#include "cpu_common.h"
#include "gradient_blocks.h"
#include "isa_dispatch.h"

namespace jax_roi {

class FirstTouch {
 public:
  // Whether a block is large enough to pay: smaller ones (prroi-atom's
  // 330 KB images) stay in cache once zeroed, and the bookkeeping costs
  // them 2%.
  static bool pays(const Shape& s, const GradientBlock& block, int64_t element_bytes) {
    constexpr int64_t kBlockBytes = int64_t(4) << 20;
    return (block.y1 - block.y0) * s.width * (block.c1 - block.c0) * element_bytes >= kBlockBytes;
  }

  // A block of `s`'s NHWC gradient, none of it zeroed yet.
  void start(const Shape& s) { zeroed_.assign(s.height * s.width, 0); }

  // Whether this is the first tap to reach pixel q (of the image): the
  // caller then writes its channels instead of adding to them.
  JAX_ROI_ALWAYS_INLINE bool first(int64_t q) {
    if (zeroed_[q]) return false;
    zeroed_[q] = 1;
    return true;
  }

  // Zeroes the block's pixels no tap reached, a run of them at a time.
  template <typename G>
  void zero_the_rest(const Shape& s, const GradientBlock& block, G* grad) const {
    const int64_t C = s.channels, width = block.c1 - block.c0, q1 = block.y1 * s.width;
    for (int64_t q = block.y0 * s.width; q < q1;) {
      if (zeroed_[q]) {
        ++q;
        continue;
      }
      int64_t end = q + 1;
      while (end < q1 && !zeroed_[end]) ++end;
      G* run = gradient_at(s, grad, block.batch, q / s.width, q % s.width, block.c0);
      if (width == C)
        std::fill(run, run + (end - q) * C, G(0));
      else
        for (int64_t i = 0; i < end - q; ++i) std::fill(run + i * C, run + i * C + width, G(0));
      q = end;
    }
  }

  size_t bytes() const { return zeroed_.capacity(); }

 private:
  std::vector<uint8_t> zeroed_;  // per pixel of the image
};

}  // namespace jax_roi
