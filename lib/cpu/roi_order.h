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
#include "axis_table.h"

namespace jax_roi {

// ROI indices sorted by (group(k), image, top, left); `group` splits the
// ROIs of a pyramid by level (a single map has one group).
template <typename G, typename Group>
std::vector<int64_t> spatial_order(const Problem<G>& p, const Group& group) {
  struct Key {
    int64_t group, batch;
    G y, x;
  };
  const int64_t n = p.shape.num_rois;
  std::vector<Key> keys(n);
  for (int64_t k = 0; k < n; ++k) {
    Roi<G> r = load_roi(p.rois, k);
    keys[k] = r.valid ? Key{group(k), r.batch, r.y1, r.x1} : Key{group(k), -1, G(0), G(0)};
  }
  std::vector<int64_t> order(n);
  std::iota(order.begin(), order.end(), int64_t(0));
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
    const Key &ka = keys[a], &kb = keys[b];
    if (ka.group != kb.group) return ka.group < kb.group;
    if (ka.batch != kb.batch) return ka.batch < kb.batch;
    if (ka.y != kb.y) return ka.y < kb.y;
    return ka.x < kb.x;
  });
  return order;
}

template <typename G>
std::vector<int64_t> spatial_order(const Problem<G>& p) {
  return spatial_order(p, [](int64_t) { return int64_t(0); });
}

// The ROIs of a pyramid in spatial order, level by level: level l's are
// ids[begin[l], begin[l + 1]).
struct LevelOrder {
  std::vector<int64_t> ids;
  std::vector<int64_t> begin;

  RoiList list(int level) const {
    return {ids.data() + begin[level], begin[level + 1] - begin[level]};
  }
};

template <typename G>
LevelOrder level_order(const LevelProblems<G>& lp) {
  LevelOrder order;
  order.ids = spatial_order(lp.level[0], [&](int64_t k) { return int64_t(lp.level_of(k)); });
  order.begin.assign(lp.count + 1, 0);
  for (const int64_t k : order.ids) ++order.begin[lp.level_of(k) + 1];
  for (int l = 0; l < lp.count; ++l) order.begin[l + 1] += order.begin[l];
  return order;
}

}  // namespace jax_roi
