// What roi_align's "avg" and "max" CPU kernels share: a thread's buffers
// and the per-ROI axis tables (axis_table.h).
#pragma once

#include <cstdint>
#include <vector>

#include "axis_table.h"
#include "cpu_common.h"
#include "lane_tile.h"

namespace jax_roi {

// A sample of a bin as the max backward scatters through it: its four
// pixels as offsets from the image's gradient (NHWC, channel 0), and their
// weights.
template <typename G>
struct WinnerSample {
  bool inside;  // false: the sample has no gradient
  int64_t p00, p01, p10, p11;
  G w00, w01, w10, w11;
};

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
  std::vector<WinnerSample<G>> samples;  // the max NHWC backward's, per bin
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
