// The NCHW position-sensitive forward's view of one bin: the planes of its
// output channels (input channels c*bins + b, `bins` planes apart)
// interleaved, pixel (y, x) of channel j at ((y*W + x)*lanes + j), lanes
// being the channels rounded up to kLanes (at most max_lanes(s) a tile). A
// tap then reads a pixel's channels as vectors, where reading the planes
// themselves costs a scattered load per channel. A bin's planes are read
// once per image (and part of its channels, and part of its ROIs when the
// bins are fewer than the threads), through transpose_tiled, while every
// ROI's bin uses the tile in cache.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "../dtypes.h"
#include "../problem.h"
#include "lane_tile.h"
#include "transpose.h"

namespace jax_roi {

template <typename G>
struct BinPlanes {
  // A tile stays within kMaxBytes, about an L2 (psroi-rfcn's is 306 KB; a
  // tile past the L2 would miss the cache as the planes do, at the cost of
  // a transposition: larger ones were not measured), and kMaxLanes channels.
  static constexpr int64_t kMaxBytes = int64_t(1) << 20;
  static constexpr int64_t kMaxLanes = 16 * kLanes;

  // The channels a tile of a map of `s` may hold: a multiple of kLanes, 0
  // when not even kLanes fit.
  static int64_t max_lanes(const Shape& s) {
    const int64_t group_bytes = std::max<int64_t>(1, s.height * s.width) * kLanes * sizeof(G);
    return std::min(kMaxLanes, kMaxBytes / group_bytes * kLanes);
  }
  std::vector<G> data;
  int64_t lanes = kLanes;    // per pixel: n channels rounded up to kLanes
  int64_t batch = -1, first = -1, count = 0;  // what it holds: image, channels; -1 for none

  const G* at(int64_t width, int64_t y, int64_t x) const {
    return data.data() + (y * width + x) * lanes;
  }
  G* at(int64_t width, int64_t y, int64_t x) { return data.data() + (y * width + x) * lanes; }

  // Input channels c0 + j*step (j < n) of image b, unless it holds them
  // already (step is the map's, the same for every load). The lanes past n
  // hold zeros or stale values: their sums are never written out.
  template <typename T>
  JAX_ROI_ALWAYS_INLINE void load(const Shape& s, const T* features, int64_t b, int64_t c0,
                                  int64_t step, int64_t n) {
    if (b == batch && c0 == first && n == count) return;
    const int64_t plane = s.height * s.width;
    const int64_t rounded = (n + kLanes - 1) / kLanes * kLanes;
    if (rounded != lanes || static_cast<int64_t>(data.size()) != plane * rounded) {
      lanes = rounded;
      data.assign(plane * lanes, G(0));
    }
    const T* src = features + (b * s.channels + c0) * plane;
    transpose_tiled(src, step * plane, n, plane, data.data(), lanes,
                    [](T v) JAX_ROI_INLINE_LAMBDA { return to_acc(v); });
    batch = b, first = c0, count = n;
  }

};

}  // namespace jax_roi
