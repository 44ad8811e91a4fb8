// CPU kernels: the shared element functions run over XLA's thread pool.
// Forward splits the output anywhere; backward splits by channel, so each
// thread owns the gradient elements it writes and sums them in a fixed
// order: the gradient is bitwise reproducible, with no atomics.
#pragma once

#include <algorithm>
#include <cstdint>

#include "../roi_elements.h"
#include "parallel_for.h"

namespace jax_roi {

struct PlainAdd {
  template <typename G>
  void operator()(G* target, G value) const { *target += value; }
};

// element(i) computes output element i.
template <typename Element>
void for_each_output(xla::ffi::ThreadPool& pool, const Shape& s, const Element& element) {
  int64_t n = s.output_count();
  parallel_for(pool, n, balanced_grain(pool, n, 4096), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) element(i);
  });
}

// element(i, add) scatters output element i's gradient into `grad`.
template <typename G, typename Element>
void scatter_by_channel(xla::ffi::ThreadPool& pool, const Shape& s, G* grad,
                        const Element& element) {
  std::fill(grad, grad + s.feature_count(), G(0));
  if (s.output_count() == 0) return;
  int64_t channel_grain = balanced_grain(pool, s.channels, s.channels_last ? 16 : 1);
  parallel_for(pool, s.channels, channel_grain, [&](int64_t c0, int64_t c1) {
    for (int64_t k = 0; k < s.num_rois; ++k)
      for (int64_t c = c0; c < c1; ++c)
        for (int64_t ph = 0; ph < s.pooled_h; ++ph)
          for (int64_t pw = 0; pw < s.pooled_w; ++pw)
            element(output_index(s, k, c, ph, pw), PlainAdd{});
  });
}

template <typename T, typename G>
void roi_align_avg_forward_cpu(xla::ffi::ThreadPool& pool, const Problem<G>& p,
                               const T* features, T* out) {
  for_each_output(pool, p.shape, [&](int64_t i) {
    roi_align_avg_forward_element(p, i, features, out);
  });
}

template <typename T, typename G>
void roi_align_avg_backward_cpu(xla::ffi::ThreadPool& pool, const Problem<G>& p,
                                const T* grad_out, G* grad_features) {
  scatter_by_channel(pool, p.shape, grad_features, [&](int64_t i, PlainAdd add) {
    roi_align_avg_backward_element(p, i, grad_out, grad_features, add);
  });
}

template <typename T, typename G>
void roi_align_max_forward_cpu(xla::ffi::ThreadPool& pool, const Problem<G>& p,
                               const T* features, T* out, int32_t* argmax) {
  for_each_output(pool, p.shape, [&](int64_t i) {
    roi_align_max_forward_element(p, i, features, out, argmax);
  });
}

template <typename T, typename G>
void roi_align_max_backward_cpu(xla::ffi::ThreadPool& pool, const Problem<G>& p,
                                const T* grad_out, const int32_t* argmax,
                                G* grad_features) {
  scatter_by_channel(pool, p.shape, grad_features, [&](int64_t i, PlainAdd add) {
    roi_align_max_backward_element(p, i, grad_out, argmax, grad_features, add);
  });
}

template <typename T, typename G>
void roi_pool_forward_cpu(xla::ffi::ThreadPool& pool, const Problem<G>& p,
                          const T* features, T* out, int32_t* argmax) {
  for_each_output(pool, p.shape, [&](int64_t i) {
    roi_pool_forward_element(p, i, features, out, argmax);
  });
}

template <typename T, typename G>
void roi_pool_backward_cpu(xla::ffi::ThreadPool& pool, const Problem<G>& p,
                           const T* grad_out, const int32_t* argmax,
                           G* grad_features) {
  scatter_by_channel(pool, p.shape, grad_features, [&](int64_t i, PlainAdd add) {
    roi_pool_backward_element(p, i, grad_out, argmax, grad_features, add);
  });
}

}  // namespace jax_roi
