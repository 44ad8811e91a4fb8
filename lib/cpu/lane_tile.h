// NCHW kernels read a few channels of one image at a time through a tile
// that interleaves them: pixel (y, x) of lane j sits at ((y*W + x)*kLanes +
// j). A bilinear sample then reads each corner's kLanes channels as one
// vector, as NHWC does, instead of one scalar per plane. The tile holds the
// accumulation type, so 16-bit maps are converted once.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "../roi_elements.h"

namespace jax_roi {

constexpr int kLanes = 16;

template <typename G>
struct LaneTile {
  std::vector<G> data;
  int64_t batch = -1, channel = -1;  // what it holds, (-1, -1) for nothing

  const G* at(int64_t width, int64_t y, int64_t x) const {
    return data.data() + (y * width + x) * kLanes;
  }
  G* at(int64_t width, int64_t y, int64_t x) { return data.data() + (y * width + x) * kLanes; }

  // Channels [c0, c0 + lanes) of image `b`; lanes past them read 0.
  template <typename T>
  void load(const Shape& s, const T* features, int64_t b, int64_t c0, int lanes) {
    const int64_t plane = s.height * s.width;
    data.resize(plane * kLanes);
    const T* src = features + (b * s.channels + c0) * plane;
    G* __restrict__ dst = data.data();
    for (int64_t i = 0; i < plane; ++i)
      for (int j = 0; j < kLanes; ++j) dst[i * kLanes + j] = j < lanes ? to_acc(src[j * plane + i]) : G(0);
    batch = b;
    channel = c0;
  }

  void load_zeros(const Shape& s, int64_t b, int64_t c0) {
    data.assign(s.height * s.width * kLanes, G(0));
    batch = b;
    channel = c0;
  }

  // Adds the tile into channels [channel, channel + lanes) of grad, and
  // forgets it.
  void flush_into(const Shape& s, G* grad, int lanes) {
    if (batch < 0) return;
    const int64_t plane = s.height * s.width;
    G* dst = grad + (batch * s.channels + channel) * plane;
    const G* __restrict__ src = data.data();
    for (int j = 0; j < lanes; ++j) {
      G* __restrict__ d = dst + j * plane;
      for (int64_t i = 0; i < plane; ++i) d[i] += src[i * kLanes + j];
    }
    batch = channel = -1;
  }
};

}  // namespace jax_roi
