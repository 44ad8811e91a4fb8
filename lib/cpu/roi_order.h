// The order in which a thread visits ROIs: by image, then top edge, then
// left edge, so that consecutive ROIs read neighbouring pixels that are
// still in cache. Results do not depend on it, and since the order is a
// function of the inputs alone, sums in the backward stay reproducible.
#pragma once

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <vector>

#include "../roi_elements.h"

namespace jax_roi {

template <typename G>
std::vector<int64_t> spatial_order(const Problem<G>& p) {
  struct Key {
    int64_t batch;
    G y, x;
  };
  const int64_t n = p.shape.num_rois;
  std::vector<Key> keys(n);
  for (int64_t k = 0; k < n; ++k) {
    Roi<G> r = load_roi(p.rois, k);
    keys[k] = r.valid ? Key{r.batch, r.y1, r.x1} : Key{-1, G(0), G(0)};
  }
  std::vector<int64_t> order(n);
  std::iota(order.begin(), order.end(), int64_t(0));
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
    const Key &ka = keys[a], &kb = keys[b];
    if (ka.batch != kb.batch) return ka.batch < kb.batch;
    if (ka.y != kb.y) return ka.y < kb.y;
    return ka.x < kb.x;
  });
  return order;
}

}  // namespace jax_roi
