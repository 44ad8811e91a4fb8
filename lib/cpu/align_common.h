// What roi_align's "avg" and "max" CPU kernels share: a thread's buffers
// and the per-ROI axis tables (axis_table.h).
#pragma once

#include <cstdint>
#include <vector>

#include "axis_table.h"
#include "cpu_common.h"
#include "lane_tile.h"

namespace jax_roi {

// Buffers one thread reuses from ROI to ROI.
template <typename G>
struct AlignScratch {
  RoiTables<G> tables;
  RoiRun<G> run;
  LaneTile<G> tile;
  OutputBlock<G> block;
  WinnerBlock winners;
  std::vector<G> acc, value;
  std::vector<int32_t> arg;
};

template <typename G>
bool prepare_roi(const Problem<G>& p, int64_t k, Roi<G>* r, AlignRoi<G>* a,
                 RoiTables<G>* tables) {
  const Shape& s = p.shape;
  *r = load_roi(p.rois, k);
  if (!r->valid || s.height <= 0 || s.width <= 0) return false;
  *a = align_roi_of(p, *r);
  tables->build(*a, s);
  return true;
}

}  // namespace jax_roi
