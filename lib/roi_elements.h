// Kernel bodies as functions of one output element. A CUDA grid-stride loop
// and a plain CPU loop call the same functions; only the gradient `Add`
// differs (atomic on the GPU, a plain add where each thread owns its rows).
#pragma once

#include <cstdint>

#include "dtypes.h"
#include "roi_geometry.h"

namespace jax_roi {

// Every size of one call, read from buffer dimensions.
struct Shape {
  int64_t num_images, channels, height, width;
  int64_t num_rois, pooled_h, pooled_w;
  bool channels_last;

  HOST_DEVICE int64_t output_count() const {
    return num_rois * channels * pooled_h * pooled_w;
  }
  HOST_DEVICE int64_t feature_count() const {
    return num_images * channels * height * width;
  }
};

// One output element's coordinates and the feature plane it reads.
struct OutputElement {
  int64_t roi, channel, ph, pw;
};

HOST_DEVICE OutputElement split_output_index(const Shape& s, int64_t i) {
  OutputElement e;
  if (s.channels_last) {  // [K, PH, PW, C]
    e.channel = i % s.channels;
    i /= s.channels;
    e.pw = i % s.pooled_w;
    i /= s.pooled_w;
    e.ph = i % s.pooled_h;
    e.roi = i / s.pooled_h;
  } else {  // [K, C, PH, PW]
    e.pw = i % s.pooled_w;
    i /= s.pooled_w;
    e.ph = i % s.pooled_h;
    i /= s.pooled_h;
    e.channel = i % s.channels;
    e.roi = i / s.channels;
  }
  return e;
}

HOST_DEVICE int64_t output_index(const Shape& s, int64_t roi, int64_t channel,
                                 int64_t ph, int64_t pw) {
  if (s.channels_last) return ((roi * s.pooled_h + ph) * s.pooled_w + pw) * s.channels + channel;
  return ((roi * s.channels + channel) * s.pooled_h + ph) * s.pooled_w + pw;
}

// Pixel (y, x) of one image channel sits at plane_offset + (y*W + x)*stride.
struct Plane {
  int64_t offset, stride, width;
  HOST_DEVICE int64_t at(int64_t y, int64_t x) const {
    return offset + (y * width + x) * stride;
  }
};

HOST_DEVICE Plane feature_plane(const Shape& s, int64_t batch, int64_t channel) {
  int64_t image = batch * s.channels * s.height * s.width;
  if (s.channels_last) return {image + channel, s.channels, s.width};
  return {image + channel * s.height * s.width, 1, s.width};
}

// Geometry attributes of a call, with the ROIs in their own format.
template <typename G>
struct Problem {
  Shape shape;
  RoiTable<G> rois;
  G spatial_scale;
  int64_t sampling_ratio;
  bool aligned;
};

template <typename T, typename G>
HOST_DEVICE G interpolate(const T* features, const Plane& p, const Bilinear<G>& w) {
  return w.w00 * to_acc(features[p.at(w.y0, w.x0)]) +
         w.w01 * to_acc(features[p.at(w.y0, w.x1)]) +
         w.w10 * to_acc(features[p.at(w.y1, w.x0)]) +
         w.w11 * to_acc(features[p.at(w.y1, w.x1)]);
}

template <typename G, typename Add>
HOST_DEVICE void scatter_bilinear(G* grad, const Plane& p, const Bilinear<G>& w,
                                  G scale, const Add& add) {
  add(grad + p.at(w.y0, w.x0), scale * w.w00);
  add(grad + p.at(w.y0, w.x1), scale * w.w01);
  add(grad + p.at(w.y1, w.x0), scale * w.w10);
  add(grad + p.at(w.y1, w.x1), scale * w.w11);
}

// The bin one output element belongs to, with its ROI already mapped.
template <typename G>
struct AlignBin {
  bool valid;
  Plane plane;
  AlignRoi<G> roi;
  SampleRange ys, xs;
  int64_t ph, pw;

  HOST_DEVICE Bilinear<G> sample(int64_t iy, int64_t ix, const Shape& s) const {
    G y = sample_position(roi.y_start, ph, roi.bin_h, iy, roi.grid_h);
    G x = sample_position(roi.x_start, pw, roi.bin_w, ix, roi.grid_w);
    return bilinear(y, x, s.height, s.width);
  }
};

template <typename G>
HOST_DEVICE AlignBin<G> align_bin(const Problem<G>& p, int64_t i) {
  const Shape& s = p.shape;
  OutputElement e = split_output_index(s, i);
  Roi<G> r = load_roi(p.rois, e.roi);
  AlignBin<G> bin{};
  bin.valid = r.valid && s.height > 0 && s.width > 0;
  if (!bin.valid) return bin;
  bin.plane = feature_plane(s, r.batch, e.channel);
  bin.roi = align_roi(r, p.spatial_scale, s.pooled_h, s.pooled_w,
                      p.sampling_ratio, p.aligned);
  bin.ph = e.ph;
  bin.pw = e.pw;
  bin.ys = sample_range(bin.roi.y_start, e.ph, bin.roi.bin_h, bin.roi.grid_h, s.height);
  bin.xs = sample_range(bin.roi.x_start, e.pw, bin.roi.bin_w, bin.roi.grid_w, s.width);
  return bin;
}

// ------------------------------------------------------- roi_align, "avg"

template <typename T, typename G>
HOST_DEVICE void roi_align_avg_forward_element(const Problem<G>& p, int64_t i,
                                               const T* features, T* out) {
  AlignBin<G> bin = align_bin(p, i);
  G sum = G(0);
  if (bin.valid) {
    for (int64_t iy = bin.ys.lo; iy < bin.ys.hi; ++iy) {
      for (int64_t ix = bin.xs.lo; ix < bin.xs.hi; ++ix) {
        Bilinear<G> w = bin.sample(iy, ix, p.shape);
        if (w.inside) sum += interpolate(features, bin.plane, w);
      }
    }
    sum /= bin.roi.count;
  }
  out[i] = from_acc<T>(sum);
}

template <typename T, typename G, typename Add>
HOST_DEVICE void roi_align_avg_backward_element(const Problem<G>& p, int64_t i,
                                                const T* grad_out, G* grad_features,
                                                const Add& add) {
  AlignBin<G> bin = align_bin(p, i);
  if (!bin.valid) return;
  G g = to_acc(grad_out[i]) / bin.roi.count;
  for (int64_t iy = bin.ys.lo; iy < bin.ys.hi; ++iy) {
    for (int64_t ix = bin.xs.lo; ix < bin.xs.hi; ++ix) {
      Bilinear<G> w = bin.sample(iy, ix, p.shape);
      if (w.inside) scatter_bilinear(grad_features, bin.plane, w, g, add);
    }
  }
}

// ------------------------------------------------------- roi_align, "max"

template <typename T, typename G>
HOST_DEVICE void roi_align_max_forward_element(const Problem<G>& p, int64_t i,
                                               const T* features, T* out,
                                               int32_t* argmax) {
  AlignBin<G> bin = align_bin(p, i);
  G best = -INFINITY;
  int64_t packed = -1;
  if (bin.valid) {
    for (int64_t iy = bin.ys.lo; iy < bin.ys.hi; ++iy) {
      for (int64_t ix = bin.xs.lo; ix < bin.xs.hi; ++ix) {
        Bilinear<G> w = bin.sample(iy, ix, p.shape);
        G v = w.inside ? interpolate(features, bin.plane, w) : G(0);
        if (v > best) {  // first strict maximum wins; NaN never does
          best = v;
          packed = pack_sample(iy, ix, bin.ys, bin.xs);
        }
      }
    }
  }
  settle_max(bin.ys, bin.xs, &best, &packed);
  out[i] = from_acc<T>(best);
  argmax[i] = static_cast<int32_t>(packed);
}

template <typename T, typename G, typename Add>
HOST_DEVICE void roi_align_max_backward_element(const Problem<G>& p, int64_t i,
                                                const T* grad_out,
                                                const int32_t* argmax,
                                                G* grad_features, const Add& add) {
  if (argmax[i] < 0) return;
  AlignBin<G> bin = align_bin(p, i);
  if (!bin.valid || bin.xs.hi <= bin.xs.lo) return;
  int64_t iy, ix;
  unpack_sample(argmax[i], bin.ys, bin.xs, &iy, &ix);
  if (iy >= bin.ys.hi) return;  // not an argmax this forward could write
  Bilinear<G> w = bin.sample(iy, ix, p.shape);
  if (w.inside) scatter_bilinear(grad_features, bin.plane, w, to_acc(grad_out[i]), add);
}

// ---------------------------------------------------------------- roi_pool

template <typename T, typename G>
HOST_DEVICE void roi_pool_forward_element(const Problem<G>& p, int64_t i,
                                          const T* features, T* out,
                                          int32_t* argmax) {
  const Shape& s = p.shape;
  OutputElement e = split_output_index(s, i);
  Roi<G> r = load_roi(p.rois, e.roi);
  G best = G(0);
  int64_t best_index = -1;
  if (r.valid) {
    PoolRoi<G> roi = pool_roi(r, p.spatial_scale, s.pooled_h, s.pooled_w);
    PixelWindow win = pool_bin(roi, e.ph, e.pw, s.height, s.width);
    Plane plane = feature_plane(s, r.batch, e.channel);
    best = -INFINITY;
    for (int64_t h = win.h0; h < win.h1; ++h) {
      for (int64_t w = win.w0; w < win.w1; ++w) {
        G v = to_acc(features[plane.at(h, w)]);
        if (v > best) {  // first strict maximum wins; NaN never does
          best = v;
          best_index = h * s.width + w;
        }
      }
    }
    if (best_index < 0) best = G(0);
  }
  out[i] = from_acc<T>(best);
  argmax[i] = static_cast<int32_t>(best_index);
}

template <typename T, typename G, typename Add>
HOST_DEVICE void roi_pool_backward_element(const Problem<G>& p, int64_t i,
                                           const T* grad_out, const int32_t* argmax,
                                           G* grad_features, const Add& add) {
  const Shape& s = p.shape;
  int64_t pixel = argmax[i];
  if (pixel < 0 || pixel >= s.height * s.width) return;
  OutputElement e = split_output_index(s, i);
  Roi<G> r = load_roi(p.rois, e.roi);
  if (!r.valid) return;
  Plane plane = feature_plane(s, r.batch, e.channel);
  add(grad_features + plane.at(pixel / s.width, pixel % s.width), to_acc(grad_out[i]));
}

// ------------------------------------------------------- one entry per op

enum class Op { kAlignAvg, kAlignMax, kPool };

// argmax is unused (and may be null) for kAlignAvg.
template <Op op, typename T, typename G>
HOST_DEVICE void forward_element(const Problem<G>& p, int64_t i, const T* features, T* out,
                                 int32_t* argmax) {
  if constexpr (op == Op::kAlignAvg) {
    roi_align_avg_forward_element(p, i, features, out);
  } else if constexpr (op == Op::kAlignMax) {
    roi_align_max_forward_element(p, i, features, out, argmax);
  } else {
    roi_pool_forward_element(p, i, features, out, argmax);
  }
}

template <Op op, typename T, typename G, typename Add>
HOST_DEVICE void backward_element(const Problem<G>& p, int64_t i, const T* grad_out,
                                  const int32_t* argmax, G* grad_features, const Add& add) {
  if constexpr (op == Op::kAlignAvg) {
    roi_align_avg_backward_element(p, i, grad_out, grad_features, add);
  } else if constexpr (op == Op::kAlignMax) {
    roi_align_max_backward_element(p, i, grad_out, argmax, grad_features, add);
  } else {
    roi_pool_backward_element(p, i, grad_out, argmax, grad_features, add);
  }
}

// ------------------------------------------------------ feature pyramids

constexpr int kMaxLevels = 8;

// A feature pyramid: one Problem per level (its own map size and scale),
// all over the same ROIs and one output. Each ROI is read from one level.
template <typename G>
struct LevelProblems {
  Problem<G> level[kMaxLevels];
  int count;
  const int32_t* level_of_roi;  // per ROI

  // Indices outside [0, count) are clamped, so every ROI has one level.
  HOST_DEVICE int level_of(int64_t k) const {
    const int32_t l = level_of_roi[k];
    return l < 0 ? 0 : (l >= count ? count - 1 : static_cast<int>(l));
  }
};

// One buffer per level: the maps, or their gradients.
template <typename T>
struct PerLevel {
  T* data[kMaxLevels];
};

// Output elements index the same [N, L, ...] output on every level, so an
// element is its ROI's level's element.
template <Op op, typename T, typename G>
HOST_DEVICE void forward_level_element(const LevelProblems<G>& lp, int64_t i,
                                       const PerLevel<const T>& features, T* out,
                                       int32_t* argmax) {
  const int l = lp.level_of(split_output_index(lp.level[0].shape, i).roi);
  forward_element<op>(lp.level[l], i, features.data[l], out, argmax);
}

template <Op op, typename T, typename G, typename Add>
HOST_DEVICE void backward_level_element(const LevelProblems<G>& lp, int64_t i,
                                        const T* grad_out, const int32_t* argmax,
                                        const PerLevel<G>& grads, const Add& add) {
  const int l = lp.level_of(split_output_index(lp.level[0].shape, i).roi);
  backward_element<op>(lp.level[l], i, grad_out, argmax, grads.data[l], add);
}

}  // namespace jax_roi
