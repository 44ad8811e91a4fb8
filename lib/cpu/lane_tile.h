// NCHW kernels read a few channels of one image at a time through a tile
// that interleaves them: pixel (y, x) of lane j sits at ((y*W + x)*kLanes +
// j). Each tap or sample then reads a pixel's kLanes channels as one
// vector, as NHWC does, instead of one scalar per plane. The tile holds the
// accumulation type, so 16-bit maps are converted once.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "../roi_elements.h"
#include "isa_clones.h"

namespace jax_roi {

constexpr int kLanes = 16;

// kLanes values as one vector of the GCC/Clang vector extension: arithmetic
// on it compiles to whole-vector instructions in every ISA clone, where a
// loop over a small array may be split into scalars.
// (The attribute must sit on a typedef of a concrete type: on a dependent
// one GCC drops it.)
template <typename G>
struct LaneVectorOf;
template <>
struct LaneVectorOf<float> {
  typedef float type __attribute__((vector_size(kLanes * sizeof(float))));
};
template <>
struct LaneVectorOf<double> {
  typedef double type __attribute__((vector_size(kLanes * sizeof(double))));
};
template <typename G>
using LaneVector = typename LaneVectorOf<G>::type;

template <typename G>
JAX_ROI_ALWAYS_INLINE LaneVector<G> load_lanes(const G* p) {
  LaneVector<G> v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

template <typename G>
JAX_ROI_ALWAYS_INLINE void store_lanes(G* p, const LaneVector<G>& v) {
  std::memcpy(p, &v, sizeof v);
}

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

// One ROI's results (or output gradients) for a tile's channels, bin-major
// as the kernels use them: bin b's kLanes lanes at b * kLanes. In NCHW those
// channels of a ROI are one contiguous run of lanes * bins outputs, so
// moving the block whole is one sequential stream instead of kLanes
// interleaved ones. Its moves are forced inline so they run in the
// caller's ISA clone.
template <typename G>
struct OutputBlock {
  std::vector<G> data;
  int64_t bins = 0;

  void resize(int64_t bin_count) {
    bins = bin_count;
    data.resize(bins * kLanes);
  }
  JAX_ROI_ALWAYS_INLINE LaneVector<G> get(int64_t b) const { return load_lanes(data.data() + b * kLanes); }
  JAX_ROI_ALWAYS_INLINE void put(int64_t b, const LaneVector<G>& v) { store_lanes(data.data() + b * kLanes, v); }

  // Lanes [0, lanes) to dst, lane j's bins at dst[j * bins, (j + 1) * bins).
  template <typename T>
  JAX_ROI_ALWAYS_INLINE void write(T* dst, int lanes) const {
    const G* __restrict__ src = data.data();
    for (int j = 0; j < lanes; ++j)
      for (int64_t b = 0; b < bins; ++b) dst[j * bins + b] = from_acc<T>(src[b * kLanes + j]);
  }

  // The inverse of write; lanes past `lanes` read 0.
  template <typename T>
  JAX_ROI_ALWAYS_INLINE void read(const T* src, int lanes) {
    G* __restrict__ dst = data.data();
    for (int j = 0; j < kLanes; ++j)
      for (int64_t b = 0; b < bins; ++b) dst[b * kLanes + j] = j < lanes ? to_acc(src[j * bins + b]) : G(0);
  }
};

}  // namespace jax_roi
