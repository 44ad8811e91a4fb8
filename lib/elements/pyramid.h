// A feature pyramid: one Problem per level, each ROI read from its level.
#pragma once

#include <cstdint>

#include "box_derivative.h"
#include "element_ops.h"

namespace jax_roi {

constexpr int kMaxLevels = 8;

// A feature pyramid: one Problem per level (its own map size and scale),
// all over the same ROIs and one output. Each ROI is read from one level.
template <typename G>
struct LevelProblems {
  Problem<G> level[kMaxLevels];
  int count;
  const int32_t* level_of_roi;  // per ROI

  // Indices outside [0, count) are clamped, so every ROI has one level.
  JAX_ROI_HOST_DEVICE int level_of(int64_t k) const {
    const int32_t l = level_of_roi[k];
    return l < 0 ? 0 : (l >= count ? count - 1 : static_cast<int>(l));
  }
};

// One buffer per level: the maps, or their gradients.
template <typename T>
struct PerLevel {
  T* data[kMaxLevels];
};

// Output elements index the same [N, L, ...] output on every level, so an
// element is its ROI's level's element.
template <Op op, typename T, typename G>
JAX_ROI_HOST_DEVICE void forward_level_element(const LevelProblems<G>& lp, int64_t i,
                                       const PerLevel<const T>& features, T* out,
                                       int32_t* argmax) {
  const int l = lp.level_of(split_output_index(lp.level[0].shape, i).roi);
  Elements<op>::forward(lp.level[l], i, features.data[l], out, argmax);
}

template <Op op, typename T, typename G, typename Add>
JAX_ROI_HOST_DEVICE void backward_level_element(const LevelProblems<G>& lp, int64_t i,
                                        const T* grad_out, const int32_t* argmax,
                                        const PerLevel<G>& grads, const Add& add) {
  const int l = lp.level_of(split_output_index(lp.level[0].shape, i).roi);
  Elements<op>::backward(lp.level[l], i, grad_out, argmax, grads.data[l], add);
}

template <Op op, typename T, typename G>
JAX_ROI_HOST_DEVICE T box_jvp_level_element(const LevelProblems<G>& lp, int64_t i,
                                            const PerLevel<const T>& features,
                                            const int32_t* argmax, const G* roi_tangents) {
  const int l = lp.level_of(split_output_index(lp.level[0].shape, i).roi);
  return box_jvp_element<op>(lp.level[l], i, features.data[l], argmax, roi_tangents);
}

}  // namespace jax_roi
