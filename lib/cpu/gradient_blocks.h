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
//
// A kernel whose NHWC updates scatter across a pixel's channels (the
// position-sensitive ones: a bin's channels are `bins` apart) asks for row
// bands instead: blocks of an image's rows, every channel, each small
// enough to stay in cache while every ROI of the image adds to it, so its
// scattered updates hit the cache and it is written to memory once.
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
  int64_t batch, c0, c1;  // input channels [c0, c1)
  int64_t y0, y1;         // rows [y0, y1)

  bool whole_image(const Shape& s) const {
    return c0 == 0 && c1 == s.channels && y0 == 0 && y1 == s.height;
  }
};

// Every channel and row of image `batch`.
inline GradientBlock image_block(const Shape& s, const RoiList& rois, int64_t batch) {
  return {rois, batch, 0, s.channels, 0, s.height};
}

// How many NHWC rows a row band holds: about kBandBytes of gradient.
constexpr int64_t kBandBytes = int64_t(512) << 10;
inline int64_t band_rows(const Shape& s, int64_t element_bytes) {
  const int64_t row_bytes = std::max<int64_t>(1, s.width * s.channels * element_bytes);
  return std::clamp<int64_t>(kBandBytes / row_bytes, 1, std::max<int64_t>(1, s.height));
}

// `list` is in spatial order (grouped by image, ROIs that read nothing first).
// `row_bands`: split NHWC images into row bands (above), not channels.
template <typename G>
std::vector<GradientBlock> gradient_blocks(const Problem<G>& p, const RoiList& list,
                                           int64_t threads, bool row_bands) {
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
    const RoiList rois{list.ids + begin, end - begin};
    const int64_t share = std::llround(double(threads) * double(end - begin) / double(active));
    if (nhwc && row_bands) {
      // At least `share` bands where the rows allow, for the threads.
      const int64_t H = p.shape.height, most = std::max<int64_t>(1, share);
      const int64_t rows = std::min(band_rows(p.shape, sizeof(G)), std::max<int64_t>(1, H / most));
      for (int64_t y0 = 0; y0 < H; y0 += rows)
        blocks.push_back({rois, batch, 0, C, y0, std::min(H, y0 + rows)});
      begin = end;
      continue;
    }
    const int64_t max_splits = std::max<int64_t>(1, C / channel_multiple);
    const int64_t splits = std::clamp<int64_t>(nhwc ? share : threads, 1, max_splits);
    const int64_t width = (C / splits + channel_multiple - 1) / channel_multiple * channel_multiple;
    for (int64_t c0 = 0; c0 < C; c0 += width)
      blocks.push_back({rois, batch, c0, std::min(C, c0 + width), 0, p.shape.height});
    begin = end;
  }
  return blocks;
}

// Calls run(offset, length) for each contiguous run of the gradient elements
// `block` owns: its image's channels [c0, c1) of rows [y0, y1).
template <typename Run>
void for_each_block_run(const Shape& s, const GradientBlock& block, const Run& run) {
  const int64_t pixels = s.height * s.width, q0 = block.y0 * s.width, q1 = block.y1 * s.width;
  const int64_t image = block.batch * s.channels * pixels;
  if (!s.channels_last) {
    for (int64_t c = block.c0; c < block.c1; ++c) run(image + c * pixels + q0, q1 - q0);
  } else if (block.c0 == 0 && block.c1 == s.channels) {
    run(image + q0 * s.channels, (q1 - q0) * s.channels);
  } else {
    for (int64_t q = q0; q < q1; ++q) run(image + q * s.channels + block.c0, block.c1 - block.c0);
  }
}

// Zeroes the part of the gradient `block` owns.
template <typename R>
void zero_gradient_block(const Shape& s, const GradientBlock& block, R* grad) {
  for_each_block_run(s, block, [&](int64_t at, int64_t n) { std::fill(grad + at, grad + at + n, R{}); });
}

}  // namespace jax_roi
