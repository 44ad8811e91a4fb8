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

#include "../dtypes.h"
#include "../problem.h"
#include "isa_dispatch.h"
#include "native_vector.h"
#include "reused_scratch.h"
#include "stream_store.h"
#include "transpose.h"

namespace jax_roi {

constexpr int kLanes = 16;

// kLanes values as native vectors of `bytes` (native_vector.h): arithmetic
// on them compiles to whole-vector instructions, where a loop over a small
// array may be split into scalars, and a single vector wider than the
// registers would live in memory. Kernels take `bytes` as a template
// argument from with_native_isa (isa_dispatch.h).
template <typename G, int bytes>
struct LaneVectors {
  static constexpr int lanes = native_lanes<G, bytes>;
  static constexpr int parts = kLanes / lanes;
  static_assert(parts * lanes == kLanes);
  NativeVector<G, bytes> part[parts] = {};

  JAX_ROI_ALWAYS_INLINE static LaneVectors load(const G* p) {
    LaneVectors v;
    std::memcpy(v.part, p, sizeof v.part);
    return v;
  }
  JAX_ROI_ALWAYS_INLINE void store(G* p) const { std::memcpy(p, part, sizeof part); }

  // this += w * p[0, kLanes)
  JAX_ROI_ALWAYS_INLINE void add_scaled(G w, const G* p) {
    for (int i = 0; i < parts; ++i) part[i] += w * load_native<G, bytes>(p + i * lanes);
  }
  // p[0, kLanes) += w * this
  JAX_ROI_ALWAYS_INLINE void add_scaled_to(G* p, G w) const {
    for (int i = 0; i < parts; ++i)
      store_native<bytes, G, G>(p + i * lanes, load_native<G, bytes>(p + i * lanes) + w * part[i]);
  }
  JAX_ROI_ALWAYS_INLINE void divide(G d) {
    for (int i = 0; i < parts; ++i) part[i] /= d;
  }
};

template <typename G>
struct LaneTile {
  std::vector<G> data;
  int64_t batch = -1, channel = -1;  // what it holds, (-1, -1) for nothing

  // The tile's pixels as a value. A loop that stores into the tile through
  // add_scaled_to (memcpy, which may alias anything) keeps a view's base and
  // width in registers, where at() reloaded them from the tile and the
  // shape after every store (rot-p2's NCHW backward 4-7% slower).
  struct View {
    G* base;
    int64_t width;
    G* at(int64_t y, int64_t x) const { return base + offset(width, y, x); }
  };
  View view(int64_t width) { return {data.data(), width}; }

  static int64_t offset(int64_t width, int64_t y, int64_t x) { return (y * width + x) * kLanes; }
  const G* at(int64_t width, int64_t y, int64_t x) const { return data.data() + offset(width, y, x); }

  // Channels [c0, c0 + lanes) of image `b`; lanes past them read 0. A
  // whole tile goes through 16 x 16 blocks in L1 (transpose.h), reading
  // whole lines of each plane.
  template <typename T>
  JAX_ROI_ALWAYS_INLINE void load(const Shape& s, const T* features, int64_t b, int64_t c0,
                                  int lanes) {
    const int64_t plane = s.height * s.width;
    data.resize(plane * kLanes);
    const T* src = features + (b * s.channels + c0) * plane;
    G* __restrict__ dst = data.data();
    if (lanes == kLanes) {
      transpose_tiled(src, plane, kLanes, plane, dst, kLanes,
                      [](T v) JAX_ROI_INLINE_LAMBDA { return to_acc(v); });
    } else {
      for (int64_t i = 0; i < plane; ++i)
        for (int j = 0; j < kLanes; ++j)
          dst[i * kLanes + j] = j < lanes ? to_acc(src[j * plane + i]) : G(0);
    }
    batch = b;
    channel = c0;
  }

  void load_zeros(const Shape& s, int64_t b, int64_t c0) {
    data.assign(s.height * s.width * kLanes, G(0));
    batch = b;
    channel = c0;
  }

  // Adds the tile into channels [channel, channel + lanes) of grad (or,
  // with `replace`, writes it there, streamed past the cache when the
  // gradient is large: it is not read again), and forgets it. A run of kRun
  // pixels at a time is transposed in cache (transpose.h) into lane-major
  // rows, then each row moves to its plane: read lane by lane, the tile
  // took an element-at-a-time copy (a seventh of rot-p2's NCHW backward).
  void flush_into(const Shape& s, G* grad, int lanes, bool replace = false) {
    if (batch < 0) return;
    constexpr int64_t kRun = 256;  // 16 KB of a float32 tile
    const int64_t plane = s.height * s.width;
    G* dst = grad + (batch * s.channels + channel) * plane;
    staged.resize(kLanes * kRun);
    const bool stream = streamed_result<G>(s.feature_count());
    for (int64_t i0 = 0; i0 < plane; i0 += kRun) {
      const int64_t n = std::min(kRun, plane - i0);
      transpose_tiled(data.data() + i0 * kLanes, kLanes, n, lanes, staged.data(), kRun,
                      [](G v) JAX_ROI_INLINE_LAMBDA { return v; });
      for (int j = 0; j < lanes; ++j) {
        const G* __restrict__ row = staged.data() + j * kRun;
        G* __restrict__ d = dst + j * plane + i0;
        if (replace) {
          copy_result(d, row, n, stream);
        } else {
          for (int64_t i = 0; i < n; ++i) d[i] += row[i];
        }
      }
    }
    batch = channel = -1;
  }
  ~LaneTile() { stream_fence(); }
  size_t bytes() const { return vector_bytes(data, staged); }
  void forget() { batch = channel = -1; }

 private:
  std::vector<G> staged;  // flush_into's
};

// One ROI's results (or output gradients) for a tile's channels, bin-major
// as the kernels use them: bin b's kLanes lanes at b * kLanes. In NCHW those
// channels of a ROI are one contiguous run of lanes * bins outputs, so
// moving the block whole is one sequential stream instead of kLanes
// interleaved ones. Its moves are forced inline so they run in the
// caller's ISA (isa_dispatch.h).
template <typename G>
struct OutputBlock {
  std::vector<G> data;
  std::vector<double> staged;  // the writes' staging, for any result type
  int64_t bins = 0;

  template <typename T>
  T* staging(int64_t n) {
    staged.resize((n * sizeof(T) + sizeof(double) - 1) / sizeof(double));
    return reinterpret_cast<T*>(staged.data());
  }

  void resize(int64_t bin_count) {
    bins = bin_count;
    data.resize(bins * kLanes);
  }
  template <int bytes>
  JAX_ROI_ALWAYS_INLINE LaneVectors<G, bytes> get(int64_t b) const {
    return LaneVectors<G, bytes>::load(data.data() + b * kLanes);
  }
  template <int bytes>
  JAX_ROI_ALWAYS_INLINE void put(int64_t b, const LaneVectors<G, bytes>& v) {
    v.store(data.data() + b * kLanes);
  }
  G* at(int64_t b) { return data.data() + b * kLanes; }

  // Lanes [0, lanes) to dst, lane j's bins at dst[j * bins, (j + 1) * bins):
  // transposed in cache (transpose.h; lane by lane, an element at a time,
  // pool-vgg's roi_pool NCHW forward took 10-25% longer), then copied out,
  // streamed (stream_store.h) when the whole result of `s` is large, since
  // it is not read again.
  template <typename T>
  JAX_ROI_ALWAYS_INLINE void write(T* dst, int lanes, const Shape& s) {
    T* staged = staging<T>(bins * kLanes);
    transpose_tiled(data.data(), kLanes, bins, lanes, staged, bins,
                    [](G v) JAX_ROI_INLINE_LAMBDA { return from_acc<T>(v); });
    copy_result(dst, staged, lanes * bins, streamed_result<T>(s.output_count()));
  }
  ~OutputBlock() { stream_fence(); }
  size_t bytes() const { return vector_bytes(data, staged); }

  // A ROI's result computed channels-last, roi_out[b * C + c], to its NCHW
  // output dst[c * bins + b]: transposed in cache, then copied out as write
  // does.
  template <typename T>
  JAX_ROI_ALWAYS_INLINE void write_channels_last(const G* roi_out, int64_t C, T* dst,
                                                 const Shape& s) {
    T* staged = staging<T>(C * bins);
    transpose_tiled(roi_out, C, bins, C, staged, bins,
                    [](G v) JAX_ROI_INLINE_LAMBDA { return from_acc<T>(v); });
    copy_result(dst, staged, C * bins, streamed_result<T>(s.output_count()));
  }

  // The inverse of write; lanes past `lanes` read 0.
  template <typename T>
  JAX_ROI_ALWAYS_INLINE void read(const T* src, int lanes) {
    G* __restrict__ dst = data.data();
    for (int j = 0; j < kLanes; ++j)
      for (int64_t b = 0; b < bins; ++b) dst[b * kLanes + j] = j < lanes ? to_acc(src[j * bins + b]) : G(0);
  }
};

// A ROI's winners (argmax) for a tile's channels, bin-major as
// OutputBlock's values, and moved to their NCHW places as OutputBlock::write
// moves those (element by element, the max forwards' two strided outputs
// cost as much as their sampling).
struct WinnerBlock {
  std::vector<int32_t> data, staged;
  int64_t bins = 0;

  void resize(int64_t bin_count) {
    bins = bin_count;
    data.resize(bins * kLanes);
    staged.resize(bins * kLanes);
  }
  int32_t* at(int64_t b) { return data.data() + b * kLanes; }

  JAX_ROI_ALWAYS_INLINE void write(int32_t* dst, int lanes, const Shape& s) {
    transpose_tiled(data.data(), kLanes, bins, lanes, staged.data(), bins,
                    [](int32_t v) JAX_ROI_INLINE_LAMBDA { return v; });
    copy_result(dst, staged.data(), lanes * bins, streamed_result<int32_t>(s.output_count()));
  }
  ~WinnerBlock() { stream_fence(); }
};

}  // namespace jax_roi
