// CPU kernels: the shared element functions run over XLA's thread pool.
// Forward splits the output anywhere; backward splits by channel, so each
// thread owns the gradient elements it writes and sums them in a fixed
// order: the gradient is bitwise reproducible, with no atomics.
#pragma once

#include <algorithm>
#include <cstdint>

#include "../ffi_problem.h"
#include "../roi_elements.h"
#include "parallel_for.h"

namespace jax_roi {

struct PlainAdd {
  template <typename G>
  void operator()(G* target, G value) const { *target += value; }
};

struct CpuBackend {
  using Context = ffi::ThreadPool;

  template <Op op, typename T, typename G>
  static ffi::Error forward(Context& pool, const Problem<G>& p, const T* features, T* out,
                            int32_t* argmax) {
    int64_t n = p.shape.output_count();
    parallel_for(pool, n, balanced_grain(pool, n, 4096), [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) forward_element<op>(p, i, features, out, argmax);
    });
    return ffi::Error::Success();
  }

  template <Op op, typename T, typename G>
  static ffi::Error backward(Context& pool, const Problem<G>& p, const T* grad_out,
                             const int32_t* argmax, G* grad_features) {
    const Shape& s = p.shape;
    std::fill(grad_features, grad_features + s.feature_count(), G(0));
    if (s.output_count() == 0) return ffi::Error::Success();
    int64_t grain = balanced_grain(pool, s.channels, s.channels_last ? 16 : 1);
    parallel_for(pool, s.channels, grain, [&](int64_t c0, int64_t c1) {
      for (int64_t k = 0; k < s.num_rois; ++k)
        for (int64_t c = c0; c < c1; ++c)
          for (int64_t ph = 0; ph < s.pooled_h; ++ph)
            for (int64_t pw = 0; pw < s.pooled_w; ++pw)
              backward_element<op>(p, output_index(s, k, c, ph, pw), grad_out, argmax,
                                   grad_features, PlainAdd{});
    });
    return ffi::Error::Success();
  }
};

}  // namespace jax_roi
