// The order in which a thread visits ROIs: by image, then along a Hilbert
// curve through the ROIs' centres, so that consecutive ROIs overlap and read
// pixels that are still in cache (the curve keeps neighbours close in both
// axes, where sorting by top edge jumps across the map). Results do not
// depend on it, and since the order is a function of the inputs alone, sums
// in the backward stay reproducible.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <utility>
#include <vector>

#include "../problem.h"
#include "../elements/pyramid.h"
#include "axis_table.h"

namespace jax_roi {

// The position of cell (x, y) along the Hilbert curve that fills a
// side x side grid (side a power of 2).
inline int64_t hilbert_index(int64_t side, int64_t x, int64_t y) {
  int64_t d = 0;
  for (int64_t s = side / 2; s > 0; s /= 2) {
    const int64_t rx = (x & s) ? 1 : 0, ry = (y & s) ? 1 : 0;
    d += s * s * ((3 * rx) ^ ry);
    if (ry == 0) {  // turn the quadrant so the curve runs on from where it left
      if (rx == 1) x = side - 1 - x, y = side - 1 - y;
      std::swap(x, y);
    }
  }
  return d;
}

// The map cell, on a side x side grid, of a box centre in image coordinates.
template <typename G>
int64_t map_cell(G centre, G spatial_scale, int64_t side) {
  const double c = std::floor(double(centre) * double(spatial_scale));
  return static_cast<int64_t>(std::clamp(c, 0.0, double(side - 1)));
}

// ROI indices sorted by (group(k), image, Hilbert index of the centre);
// `group` splits the ROIs of a pyramid by level (a single map has one group).
template <typename G, typename Group>
std::vector<int64_t> spatial_order(const Problem<G>& p, const Group& group) {
  struct Key {
    int64_t group, batch, curve;
  };
  const int64_t n = p.shape.num_rois;
  int64_t side = 1;
  while (side < std::max(p.shape.height, p.shape.width)) side *= 2;
  std::vector<Key> keys(n);
  for (int64_t k = 0; k < n; ++k) {
    Roi<G> r = load_roi(p.rois, k);
    if (!r.valid) {
      keys[k] = Key{group(k), -1, 0};
      continue;
    }
    G cx, cy;
    roi_centre(r, p.rois.coords, &cx, &cy);
    const int64_t x = map_cell(cx, p.spatial_scale, side);
    const int64_t y = map_cell(cy, p.spatial_scale, side);
    keys[k] = Key{group(k), r.batch, hilbert_index(side, x, y)};
  }
  std::vector<int64_t> order(n);
  std::iota(order.begin(), order.end(), int64_t(0));
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
    const Key &ka = keys[a], &kb = keys[b];
    if (ka.group != kb.group) return ka.group < kb.group;
    if (ka.batch != kb.batch) return ka.batch < kb.batch;
    return ka.curve < kb.curve;
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
