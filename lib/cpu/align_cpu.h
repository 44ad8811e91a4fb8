// roi_align on the CPU, one ROI at a time: its axis tables are built once
// and serve every channel. In NHWC the innermost loop runs over contiguous
// channels and vectorises; in NCHW it runs over kLanes channels of a tile.
// "avg" sums a bin's taps (axis_table.h), the element functions its samples
// corner by corner, so both agree to rounding; "max" compares samples in
// the element functions' order, so its winners agree exactly.
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <limits>
#include <vector>

#include "../roi_elements.h"
#include "axis_table.h"
#include "isa_clones.h"
#include "lane_tile.h"
#include "native_vector.h"

namespace jax_roi {

// Axis entries tabulated at once for NCHW: about a megabyte, cache-sized.
constexpr size_t kRunCapacity = 1 << 15;

// The NCHW driver: the listed ROIs in runs that `run` tabulates (up to
// `capacity` entries each), and for each run channels [c0, c1) kLanes at a
// time: lanes(c, n) handles channels [c, c + n) of the run's ROIs.
template <typename G, typename Run, typename Lanes>
JAX_ROI_ALWAYS_INLINE void for_each_run_and_lane_group(const Problem<G>& p, const RoiList& list,
                                                       int64_t c0, int64_t c1, Run& run,
                                                       size_t capacity, const Lanes& lanes) {
  for (int64_t j = 0; j < list.size;) {
    j = run.build(p, list, j, capacity);
    for (int64_t c = c0; c < c1; c += kLanes)
      lanes(c, static_cast<int>(std::min<int64_t>(kLanes, c1 - c)));
  }
}

// One step of a running maximum: the first strict maximum wins and NaN
// never does. Written as selects of loaded values, so that loops of it
// vectorise as compares and blends (not masked stores).
template <typename G>
JAX_ROI_ALWAYS_INLINE void take_if_greater(G value, int32_t index, G* best, int32_t* arg) {
  const G b = *best;
  const int32_t a = *arg;
  const int32_t wins = -static_cast<int32_t>(value > b);
  *best = value > b ? value : b;
  *arg = (index & wins) | (a & ~wins);
}

// Buffers one thread reuses from ROI to ROI.
template <typename G>
struct AlignScratch {
  RoiTables<G> tables;
  RoiRun<G> run;
  LaneTile<G> tile;
  OutputBlock<G> block;
  std::vector<G> acc, value;
  std::vector<int32_t> arg;
};

template <typename T>
struct Pixels {
  const T* data;
  int64_t stride, row;  // between neighbouring pixels, between rows
  const T* at(int64_t y, int64_t x) const { return data + y * row + x * stride; }
};

// The image of a valid ROI, laid out for one channel (NCHW) or all (NHWC).
template <typename T>
Pixels<T> image_pixels(const Shape& s, const T* base, int64_t batch, int64_t channel) {
  int64_t image = batch * s.channels * s.height * s.width;
  if (s.channels_last) return {base + image + channel, s.channels, s.width * s.channels};
  return {base + image + channel * s.height * s.width, 1, s.width};
}

// Calls f(y, x, weight) for every tap of bin (ph, pw): each pixel its
// in-map samples touch, with their summed bilinear weights.
template <typename G, typename F>
JAX_ROI_ALWAYS_INLINE void for_each_tap(const RoiTables<G>& t, int64_t ph, int64_t pw, const F& f) {
  const AxisTap<G>* ys = t.y.taps_begin(ph);
  const AxisTap<G>* xs = t.x.taps_begin(pw);
  const int64_t ny = t.y.tap_count(ph), nx = t.x.tap_count(pw);
  for (int64_t a = 0; a < ny; ++a)
    for (int64_t b = 0; b < nx; ++b) f(ys[a].index, xs[b].index, ys[a].weight * xs[b].weight);
}

template <typename G>
bool prepare_roi(const Problem<G>& p, int64_t k, Roi<G>* r, AlignRoi<G>* a,
                 RoiTables<G>* tables) {
  const Shape& s = p.shape;
  *r = load_roi(p.rois, k);
  if (!r->valid || s.height <= 0 || s.width <= 0) return false;
  *a = align_roi(*r, p.spatial_scale, s.pooled_h, s.pooled_w, p.sampling_ratio, p.aligned);
  tables->build(*a, s);
  return true;
}

// ------------------------------------------------------------------ forward

// NHWC "avg" keeps a bin's sums in registers, a block of channels at a time:
// for float32 256 with AVX-512, 64 with AVX2, 32 with SSE (native_vector.h).
// It tabulates a run of neighbouring ROIs first, and with more channels
// than a block visits them block by block, so that rows of pixels the
// run's ROIs share are still in cache.
constexpr size_t kNhwcRunCapacity = 1 << 12;  // axis entries: about 64 ROIs of 7 x 7 x 2 x 2

// NHWC: channels [c0, c0 + vectors * lanes) of ROI `slot` of `run`.
template <int bytes, int vectors, typename T, typename G>
JAX_ROI_ALWAYS_INLINE void align_avg_forward_nhwc_block(const Problem<G>& p, const RoiRun<G>& run,
                                                        int64_t slot, int64_t c0,
                                                        const T* features, T* out) {
  constexpr int64_t lanes = native_lanes<G, bytes>;
  const Shape& s = p.shape;
  const bool reads = run.batch[slot] >= 0;
  const G count = run.count[slot];
  Pixels<T> px = image_pixels(s, features, reads ? run.batch[slot] : 0, c0);
  for (int64_t ph = 0; ph < s.pooled_h; ++ph) {
    for (int64_t pw = 0; pw < s.pooled_w; ++pw) {
      NativeVector<G, bytes> sum[vectors] = {};
      if (reads) {
        for_each_tap(run.tables[slot], ph, pw, [&](int64_t y, int64_t x, G w) JAX_ROI_INLINE_LAMBDA {
          const T* __restrict__ v = px.at(y, x);
          for (int i = 0; i < vectors; ++i) sum[i] += w * load_native<G, bytes>(v + i * lanes);
        });
        for (int i = 0; i < vectors; ++i) sum[i] /= count;
      }
      T* dst = out + output_index(s, run.roi[slot], c0, ph, pw);
      for (int i = 0; i < vectors; ++i) store_native<bytes, T, G>(dst + i * lanes, sum[i]);
    }
  }
}

// NHWC: channels [c0, c1) of ROI `slot` of `run`, fewer than a vector's.
template <typename T, typename G>
JAX_ROI_ALWAYS_INLINE void align_avg_forward_nhwc_rest(const Problem<G>& p, const RoiRun<G>& run,
                                                       int64_t slot, int64_t c0, int64_t c1,
                                                       const T* features, T* out) {
  const Shape& s = p.shape;
  const int64_t width = c1 - c0;
  const bool reads = run.batch[slot] >= 0;
  const G count = run.count[slot];
  Pixels<T> px = image_pixels(s, features, reads ? run.batch[slot] : 0, c0);
  G sum[64 / sizeof(G)];
  for (int64_t ph = 0; ph < s.pooled_h; ++ph) {
    for (int64_t pw = 0; pw < s.pooled_w; ++pw) {
      for (int64_t c = 0; c < width; ++c) sum[c] = G(0);
      if (reads) {
        for_each_tap(run.tables[slot], ph, pw, [&](int64_t y, int64_t x, G w) JAX_ROI_INLINE_LAMBDA {
          const T* __restrict__ v = px.at(y, x);
          for (int64_t c = 0; c < width; ++c) sum[c] += w * to_acc(v[c]);
        });
        for (int64_t c = 0; c < width; ++c) sum[c] /= count;
      }
      T* dst = out + output_index(s, run.roi[slot], c0, ph, pw);
      for (int64_t c = 0; c < width; ++c) dst[c] = from_acc<T>(sum[c]);
    }
  }
}

// The channels from c0 of the run's ROIs in vectors of `bytes`: a block of
// as many vectors as fit the registers and the channels left (a power of
// 2), or the last few channels; returns the channel after them.
template <int bytes, typename T, typename G>
JAX_ROI_ALWAYS_INLINE int64_t align_avg_forward_nhwc_blocks(const Problem<G>& p,
                                                            const RoiRun<G>& run, int64_t c0,
                                                            const T* features, T* out) {
  constexpr int64_t lanes = native_lanes<G, bytes>;
  const int64_t vectors =
      std::min<int64_t>(native_sum_registers(), (p.shape.channels - c0) / lanes);
  auto each_roi = [&](auto block) JAX_ROI_INLINE_LAMBDA {
    constexpr int n = decltype(block)::value;
    for (int64_t slot = 0; slot < run.size(); ++slot)
      align_avg_forward_nhwc_block<bytes, n>(p, run, slot, c0, features, out);
    return c0 + n * lanes;
  };
  if (vectors >= 16) return each_roi(std::integral_constant<int, 16>{});
  if (vectors >= 8) return each_roi(std::integral_constant<int, 8>{});
  if (vectors >= 4) return each_roi(std::integral_constant<int, 4>{});
  if (vectors >= 2) return each_roi(std::integral_constant<int, 2>{});
  if (vectors >= 1) return each_roi(std::integral_constant<int, 1>{});
  for (int64_t slot = 0; slot < run.size(); ++slot)
    align_avg_forward_nhwc_rest(p, run, slot, c0, p.shape.channels, features, out);
  return p.shape.channels;
}

// NHWC: all channels of the listed ROIs.
template <typename T, typename G>
JAX_ROI_CPU_CLONES void align_avg_forward_nhwc(const Problem<G>& p, const RoiList& list,
                                               const T* features, T* out,
                                               AlignScratch<G>& scratch) {
  RoiRun<G>& run = scratch.run;
  for (int64_t j = 0; j < list.size;) {
    j = run.build(p, list, j, kNhwcRunCapacity);
    with_native_vector_bytes([&](auto bytes) JAX_ROI_INLINE_LAMBDA {
      for (int64_t c0 = 0; c0 < p.shape.channels;)
        c0 = align_avg_forward_nhwc_blocks<decltype(bytes)::value>(p, run, c0, features, out);
    });
  }
}

// NCHW: the tile's channels of ROI `slot` of `run`, from `tile`, into
// `block`.
template <int bytes, typename G>
JAX_ROI_ALWAYS_INLINE void align_avg_forward_lanes(const Problem<G>& p, const RoiRun<G>& run,
                                                   int64_t slot, const LaneTile<G>& tile,
                                                   OutputBlock<G>& block) {
  const Shape& s = p.shape;
  const bool reads = run.batch[slot] >= 0;
  const G count = run.count[slot];
  for (int64_t ph = 0; ph < s.pooled_h; ++ph) {
    for (int64_t pw = 0; pw < s.pooled_w; ++pw) {
      LaneVectors<G, bytes> sum;
      if (reads) {
        for_each_tap(run.tables[slot], ph, pw, [&](int64_t y, int64_t x, G w) JAX_ROI_INLINE_LAMBDA {
          sum.add_scaled(w, tile.at(s.width, y, x));
        });
        sum.divide(count);
      }
      block.put(ph * s.pooled_w + pw, sum);
    }
  }
}

// NCHW: channels [c0, c1) of the listed ROIs, through tiles of kLanes channels.
template <typename T, typename G>
JAX_ROI_CPU_CLONES void align_avg_forward_nchw(const Problem<G>& p, const RoiList& list,
                                               int64_t c0, int64_t c1, const T* features,
                                               T* out, AlignScratch<G>& scratch) {
  RoiRun<G>& run = scratch.run;
  LaneTile<G>& tile = scratch.tile;
  OutputBlock<G>& block = scratch.block;
  block.resize(p.shape.pooled_h * p.shape.pooled_w);
  for_each_run_and_lane_group(p, list, c0, c1, run, kRunCapacity, [&](int64_t c, int lanes) JAX_ROI_INLINE_LAMBDA {
    for (int64_t slot = 0; slot < run.size(); ++slot) {
      const int64_t batch = run.batch[slot];
      if (batch >= 0 && (tile.batch != batch || tile.channel != c))
        tile.load(p.shape, features, batch, c, lanes);
      with_native_vector_bytes([&](auto bytes) JAX_ROI_INLINE_LAMBDA {
        align_avg_forward_lanes<decltype(bytes)::value>(p, run, slot, tile, block);
      });
      block.write(out + output_index(p.shape, run.roi[slot], c, 0, 0), lanes);
    }
  });
}

// Scans bin (ph, pw) for channels [0, C) of `px` (NHWC: all at once; NCHW:
// C == 1), leaving per channel the best value and packed winner.
template <typename T, typename G>
JAX_ROI_ALWAYS_INLINE void scan_max_bin(const RoiTables<G>& t, int64_t ph, int64_t pw, const Pixels<T>& px,
                  int64_t C, G* __restrict__ best, int32_t* __restrict__ arg,
                  G* __restrict__ value) {
  for (int64_t c = 0; c < C; ++c) {
    best[c] = -std::numeric_limits<G>::infinity();
    arg[c] = -1;
  }
  const AxisWeights<G>* ys = t.y.begin(ph);
  const AxisWeights<G>* xs = t.x.begin(pw);
  const int64_t ny = t.y.count(ph), nx = t.x.count(pw);
  for (int64_t a = 0; a < ny; ++a) {
    for (int64_t b = 0; b < nx; ++b) {
      const int32_t packed = static_cast<int32_t>(a * nx + b);  // pack_sample, relative
      Bilinear<G> w = bilinear(ys[a], xs[b]);
      if (!w.inside) {
#pragma GCC unroll 1  // unrolled, a fixed-length loop becomes scalar branches
        for (int64_t c = 0; c < C; ++c) take_if_greater(G(0), packed, &best[c], &arg[c]);
        continue;
      }
      const T* __restrict__ v00 = px.at(w.y0, w.x0);
      const T* __restrict__ v01 = px.at(w.y0, w.x1);
      const T* __restrict__ v10 = px.at(w.y1, w.x0);
      const T* __restrict__ v11 = px.at(w.y1, w.x1);
      // Interpolate, then compare, in two simple loops that both vectorise.
      for (int64_t c = 0; c < C; ++c)
        value[c] = w.w00 * to_acc(v00[c]) + w.w01 * to_acc(v01[c]) + w.w10 * to_acc(v10[c]) +
                   w.w11 * to_acc(v11[c]);
#pragma GCC unroll 1
      for (int64_t c = 0; c < C; ++c) take_if_greater(value[c], packed, &best[c], &arg[c]);
    }
  }
  const SampleRange &ry = t.y.ranges[ph], &rx = t.x.ranges[pw];
  if (ry.complete && rx.complete) {  // every sample was scanned: settle_max, simplified
    for (int64_t c = 0; c < C; ++c) best[c] = arg[c] < 0 ? G(0) : best[c];
    return;
  }
  for (int64_t c = 0; c < C; ++c) {
    int64_t packed = arg[c];
    settle_max(ry, rx, &best[c], &packed);
    arg[c] = static_cast<int32_t>(packed);
  }
}

template <typename T, typename G>
JAX_ROI_CPU_CLONES void align_max_forward_roi(const Problem<G>& p, int64_t k, const T* features,
                                              T* out, int32_t* argmax,
                                              AlignScratch<G>& scratch) {
  const Shape& s = p.shape;
  const int64_t C = s.channels, bins = s.pooled_h * s.pooled_w;
  T* roi_out = out + k * C * bins;
  int32_t* roi_arg = argmax + k * C * bins;
  Roi<G> r;
  AlignRoi<G> a;
  if (!prepare_roi(p, k, &r, &a, &scratch.tables)) {
    for (int64_t i = 0; i < C * bins; ++i) roi_out[i] = from_acc<T>(G(0)), roi_arg[i] = -1;
    return;
  }
  const int64_t lanes = s.channels_last ? C : 1;
  scratch.acc.resize(lanes);
  scratch.arg.resize(lanes);
  scratch.value.resize(lanes);
  for (int64_t c0 = 0; c0 < C; c0 += lanes) {
    Pixels<T> px = image_pixels(s, features, r.batch, c0);
    for (int64_t ph = 0; ph < s.pooled_h; ++ph) {
      for (int64_t pw = 0; pw < s.pooled_w; ++pw) {
        scan_max_bin(scratch.tables, ph, pw, px, lanes, scratch.acc.data(), scratch.arg.data(),
                     scratch.value.data());
        // Lanes are contiguous in NHWC; in NCHW there is one.
        const int64_t i = output_index(s, 0, c0, ph, pw);
        for (int64_t c = 0; c < lanes; ++c) {
          roi_out[i + c] = from_acc<T>(scratch.acc[c]);
          roi_arg[i + c] = scratch.arg[c];
        }
      }
    }
  }
}

// NCHW: channels [c0, c1) of the listed ROIs, through tiles of kLanes channels.
template <typename T, typename G>
JAX_ROI_CPU_CLONES void align_max_forward_nchw(const Problem<G>& p, const RoiList& list,
                                               int64_t c0, int64_t c1, const T* features,
                                               T* out, int32_t* argmax,
                                               AlignScratch<G>& scratch) {
  const Shape& s = p.shape;
  const int64_t bins = s.pooled_h * s.pooled_w;
  RoiRun<G>& run = scratch.run;
  LaneTile<G>& tile = scratch.tile;
  for_each_run_and_lane_group(p, list, c0, c1, run, kRunCapacity, [&](int64_t c, int lanes) JAX_ROI_INLINE_LAMBDA {
    for (int64_t slot = 0; slot < run.size(); ++slot) {
      const int64_t batch = run.batch[slot];
      if (batch >= 0 && (tile.batch != batch || tile.channel != c))
        tile.load(s, features, batch, c, lanes);
      const Pixels<G> px{tile.data.data(), kLanes, s.width * kLanes};
      const int64_t i = output_index(s, run.roi[slot], c, 0, 0);
      for (int64_t b = 0; b < bins; ++b) {
        G best[kLanes], value[kLanes];
        int32_t arg[kLanes];
        if (batch >= 0) {
          scan_max_bin(run.tables[slot], b / s.pooled_w, b % s.pooled_w, px, kLanes, best, arg,
                       value);
        } else {
          std::fill(best, best + kLanes, G(0));
          std::fill(arg, arg + kLanes, -1);
        }
        for (int j = 0; j < lanes; ++j) {
          out[i + j * bins + b] = from_acc<T>(best[j]);
          argmax[i + j * bins + b] = arg[j];
        }
      }
    }
  });
}

// ----------------------------------------------------------------- backward
// Each call owns channels [c0, c1) of the gradient.

template <typename G>
G* gradient_at(const Shape& s, G* grad, int64_t batch, int64_t y, int64_t x, int64_t c) {
  if (s.channels_last) return grad + ((batch * s.height + y) * s.width + x) * s.channels + c;
  return grad + ((batch * s.channels + c) * s.height + y) * s.width + x;
}

// NHWC: ROI k's gradient into channels [c0, c1).
template <typename T, typename G>
JAX_ROI_CPU_CLONES void align_avg_backward_nhwc(const Problem<G>& p, int64_t k, int64_t c0, int64_t c1,
                             const T* grad_out, G* grad, AlignScratch<G>& scratch) {
  const Shape& s = p.shape;
  Roi<G> r;
  AlignRoi<G> a;
  if (!prepare_roi(p, k, &r, &a, &scratch.tables)) return;
  const int64_t width = c1 - c0;
  scratch.acc.resize(width);
  G* __restrict__ g = scratch.acc.data();
  for (int64_t ph = 0; ph < s.pooled_h; ++ph) {
    for (int64_t pw = 0; pw < s.pooled_w; ++pw) {
      const T* src = grad_out + output_index(s, k, c0, ph, pw);
      for (int64_t c = 0; c < width; ++c) g[c] = to_acc(src[c]) / a.count;
      for_each_tap(scratch.tables, ph, pw, [&](int64_t y, int64_t x, G w) JAX_ROI_INLINE_LAMBDA {
        G* __restrict__ d = gradient_at(s, grad, r.batch, y, x, c0);
        for (int64_t c = 0; c < width; ++c) d[c] += g[c] * w;
      });
    }
  }
}

// NCHW: the gradient of ROI `slot` of `run`, read from `block`, into a
// tile of its image.
template <int bytes, typename G>
JAX_ROI_ALWAYS_INLINE void align_avg_backward_lanes(const Problem<G>& p, const RoiRun<G>& run,
                                                    int64_t slot, const OutputBlock<G>& block,
                                                    LaneTile<G>& tile) {
  const Shape& s = p.shape;
  const int64_t bins = s.pooled_h * s.pooled_w;
  const G count = run.count[slot];
  for (int64_t b = 0; b < bins; ++b) {
    LaneVectors<G, bytes> g = block.template get<bytes>(b);
    g.divide(count);
    for_each_tap(run.tables[slot], b / s.pooled_w, b % s.pooled_w,
                 [&](int64_t y, int64_t x, G w) JAX_ROI_INLINE_LAMBDA {
      g.add_scaled_to(tile.at(s.width, y, x), w);
    });
  }
}

// NCHW: the listed ROIs' gradient into channels [c0, c1), accumulated in a
// tile per image and added to the gradient when the run moves on; each
// channel receives its ROIs in list order.
template <typename T, typename G>
JAX_ROI_CPU_CLONES void align_avg_backward_nchw(const Problem<G>& p, const RoiList& list,
                                                int64_t c0, int64_t c1, const T* grad_out,
                                                G* grad, AlignScratch<G>& scratch) {
  RoiRun<G>& run = scratch.run;
  LaneTile<G>& tile = scratch.tile;
  OutputBlock<G>& block = scratch.block;
  block.resize(p.shape.pooled_h * p.shape.pooled_w);
  for_each_run_and_lane_group(p, list, c0, c1, run, kRunCapacity, [&](int64_t c, int lanes) JAX_ROI_INLINE_LAMBDA {
    for (int64_t slot = 0; slot < run.size(); ++slot) {
      const int64_t batch = run.batch[slot];
      if (batch < 0) continue;
      if (tile.batch != batch || tile.channel != c) {
        tile.flush_into(p.shape, grad, lanes);
        tile.load_zeros(p.shape, batch, c);
      }
      block.read(grad_out + output_index(p.shape, run.roi[slot], c, 0, 0), lanes);
      with_native_vector_bytes([&](auto bytes) JAX_ROI_INLINE_LAMBDA {
        align_avg_backward_lanes<decltype(bytes)::value>(p, run, slot, block, tile);
      });
    }
    tile.flush_into(p.shape, grad, lanes);
  });
}

// The gradient of bin (ph, pw), channel c, of ROI k through its winner.
template <typename T, typename G>
void scatter_max_winner(const Problem<G>& p, const RoiTables<G>& t, int64_t batch, int64_t k,
                        int64_t c, int64_t ph, int64_t pw, const T* grad_out,
                        const int32_t* argmax, G* grad) {
  const Shape& s = p.shape;
  const int64_t i = output_index(s, k, c, ph, pw);
  const int64_t packed = argmax[i], nx = t.x.count(pw);
  if (packed < 0 || packed >= t.y.count(ph) * nx) return;
  Bilinear<G> w = bilinear(t.y.begin(ph)[packed / nx], t.x.begin(pw)[packed % nx]);
  if (!w.inside) return;
  G g = to_acc(grad_out[i]);
  *gradient_at(s, grad, batch, w.y0, w.x0, c) += g * w.w00;
  *gradient_at(s, grad, batch, w.y0, w.x1, c) += g * w.w01;
  *gradient_at(s, grad, batch, w.y1, w.x0, c) += g * w.w10;
  *gradient_at(s, grad, batch, w.y1, w.x1, c) += g * w.w11;
}

// NHWC: ROI k's gradient into channels [c0, c1).
template <typename T, typename G>
JAX_ROI_CPU_CLONES void align_max_backward_nhwc(const Problem<G>& p, int64_t k, int64_t c0,
                                                int64_t c1, const T* grad_out,
                                                const int32_t* argmax, G* grad,
                                                AlignScratch<G>& scratch) {
  Roi<G> r;
  AlignRoi<G> a;
  if (!prepare_roi(p, k, &r, &a, &scratch.tables)) return;
  for (int64_t ph = 0; ph < p.shape.pooled_h; ++ph)
    for (int64_t pw = 0; pw < p.shape.pooled_w; ++pw)
      for (int64_t c = c0; c < c1; ++c)
        scatter_max_winner(p, scratch.tables, r.batch, k, c, ph, pw, grad_out, argmax, grad);
}

// NCHW: the listed ROIs' gradient into channels [c0, c1), a run at a time.
template <typename T, typename G>
JAX_ROI_CPU_CLONES void align_max_backward_nchw(const Problem<G>& p, const RoiList& list,
                                                int64_t c0, int64_t c1, const T* grad_out,
                                                const int32_t* argmax, G* grad,
                                                AlignScratch<G>& scratch) {
  const Shape& s = p.shape;
  RoiRun<G>& run = scratch.run;
  for (int64_t j = 0; j < list.size;) {
    j = run.build(p, list, j, kRunCapacity);
    for (int64_t c = c0; c < c1; ++c)
      for (int64_t slot = 0; slot < run.size(); ++slot)
        if (run.batch[slot] >= 0)
          for (int64_t ph = 0; ph < s.pooled_h; ++ph)
            for (int64_t pw = 0; pw < s.pooled_w; ++pw)
              scatter_max_winner(p, run.tables[slot], run.batch[slot], run.roi[slot], c, ph,
                                 pw, grad_out, argmax, grad);
  }
}

}  // namespace jax_roi
