// How the backward splits its work: into blocks of one image's ROIs over a
// range of channels. A block owns the gradient of its image and channels, so
// threads never write the same element, and each element takes its ROIs'
// contributions in list order whatever the split: the gradient is bitwise
// reproducible, with no atomics.
//
// In NHWC whole images are preferred to channel halves: a thread reading
// every other kilobyte of the output gradient's rows makes the hardware
// prefetchers of both cores fetch all of it. An image with more than a
// thread's share of the ROIs is split by channels, to keep threads busy,
// in multiples of 16 so that no two threads write to one cache line. In
// NCHW a ROI's channels are long contiguous runs whichever way it is split,
// and every image's channels are split among the threads, which balances
// them best.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "../problem.h"
#include "axis_table.h"

namespace jax_roi {

struct GradientBlock {
  RoiList rois;
  int64_t batch, c0, c1;
};

// `list` is in spatial order (grouped by image, ROIs that read nothing first).
template <typename G>
std::vector<GradientBlock> gradient_blocks(const Problem<G>& p, const RoiList& list,
                                           int64_t threads) {
  const int64_t C = p.shape.channels;
  const bool nhwc = p.shape.channels_last;
  const int64_t channel_multiple = nhwc ? 16 : 1;
  int64_t first = 0;  // the first ROI that reads something
  while (first < list.size && !load_roi(p.rois, list.ids[first]).valid) ++first;
  const int64_t active = list.size - first;
  std::vector<GradientBlock> blocks;
  for (int64_t begin = first; begin < list.size;) {
    const int64_t batch = load_roi(p.rois, list.ids[begin]).batch;
    int64_t end = begin + 1;
    while (end < list.size && load_roi(p.rois, list.ids[end]).batch == batch) ++end;
    const int64_t share = std::llround(double(threads) * double(end - begin) / double(active));
    const int64_t max_splits = std::max<int64_t>(1, C / channel_multiple);
    const int64_t splits = std::clamp<int64_t>(nhwc ? share : threads, 1, max_splits);
    const int64_t width = (C / splits + channel_multiple - 1) / channel_multiple * channel_multiple;
    for (int64_t c0 = 0; c0 < C; c0 += width)
      blocks.push_back({{list.ids + begin, end - begin}, batch, c0, std::min(C, c0 + width)});
    begin = end;
  }
  return blocks;
}

// Zeroes the part of the gradient `block` owns: its image's channels [c0, c1).
template <typename G>
void zero_gradient_block(const Shape& s, const GradientBlock& block, G* grad) {
  const int64_t pixels = s.height * s.width;
  G* image = grad + block.batch * s.channels * pixels;
  if (!s.channels_last) {
    std::fill(image + block.c0 * pixels, image + block.c1 * pixels, G(0));
  } else if (block.c0 == 0 && block.c1 == s.channels) {
    std::fill(image, image + pixels * s.channels, G(0));
  } else {
    for (int64_t q = 0; q < pixels; ++q)
      std::fill(image + q * s.channels + block.c0, image + q * s.channels + block.c1, G(0));
  }
}

}  // namespace jax_roi
