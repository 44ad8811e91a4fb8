// roi_align ("avg" and "max") as functions of one output element.
#pragma once

#include <cstdint>

#include "element_ops.h"

namespace jax_roi {

// The bin one output element belongs to, with its ROI already mapped.
template <typename G>
struct AlignBin {
  bool valid;
  Plane plane;
  AlignRoi<G> roi;
  SampleRange ys, xs;
  G count;
  int64_t ph, pw;

  JAX_ROI_HOST_DEVICE Bilinear<G> sample(int64_t iy, int64_t ix, const Shape& s) const {
    G y = sample_position(roi.y_start, ph, roi.bin_h, iy, roi.grid_h);
    G x = sample_position(roi.x_start, pw, roi.bin_w, ix, roi.grid_w);
    return bilinear(y, x, s.height, s.width);
  }
};

// `channel_of(e)` is the input channel output element e reads.
template <typename G, typename ChannelOf>
JAX_ROI_HOST_DEVICE AlignBin<G> align_bin(const Problem<G>& p, int64_t i,
                                          const ChannelOf& channel_of) {
  const Shape& s = p.shape;
  OutputElement e = split_output_index(s, i);
  Roi<G> r = load_roi(p.rois, e.roi);
  AlignBin<G> bin{};
  bin.valid = r.valid && s.height > 0 && s.width > 0;
  if (!bin.valid) return bin;
  bin.plane = feature_plane(s, r.batch, channel_of(e));
  bin.roi = align_roi(r, p.spatial_scale, s.pooled_h, s.pooled_w, p.sampling_ratio, p.aligned);
  bin.count = bin.roi.count;
  bin.ph = e.ph;
  bin.pw = e.pw;
  bin.ys = sample_range(bin.roi.y_start, e.ph, bin.roi.bin_h, bin.roi.grid_h, s.height);
  bin.xs = sample_range(bin.roi.x_start, e.pw, bin.roi.bin_w, bin.roi.grid_w, s.width);
  return bin;
}

template <typename G>
JAX_ROI_HOST_DEVICE AlignBin<G> align_bin(const Problem<G>& p, int64_t i) {
  return align_bin(p, i, [](const OutputElement& e) { return e.channel; });
}

template <>
struct Elements<Op::kAlignAvg> {
  template <typename T, typename G>
  JAX_ROI_HOST_DEVICE static void forward(const Problem<G>& p, int64_t i, const T* features,
                                          T* out, int32_t*) {
    out[i] = from_acc<T>(average_of_samples<T, G>(align_bin(p, i), p.shape, features));
  }

  template <typename T, typename G, typename Add>
  JAX_ROI_HOST_DEVICE static void backward(const Problem<G>& p, int64_t i, const T* grad_out,
                                           const int32_t*, G* grad_features, const Add& add) {
    scatter_to_samples(align_bin(p, i), p.shape, to_acc(grad_out[i]), grad_features, add);
  }
};

template <>
struct Elements<Op::kAlignMax> {
  template <typename T, typename G>
  JAX_ROI_HOST_DEVICE static void forward(const Problem<G>& p, int64_t i, const T* features,
                                          T* out, int32_t* argmax) {
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
  JAX_ROI_HOST_DEVICE static void backward(const Problem<G>& p, int64_t i, const T* grad_out,
                                           const int32_t* argmax, G* grad_features,
                                           const Add& add) {
    if (argmax[i] < 0) return;
    AlignBin<G> bin = align_bin(p, i);
    if (!bin.valid || bin.xs.hi <= bin.xs.lo) return;
    int64_t iy, ix;
    unpack_sample(argmax[i], bin.ys, bin.xs, &iy, &ix);
    if (iy >= bin.ys.hi) return;  // not an argmax this forward could write
    Bilinear<G> w = bin.sample(iy, ix, p.shape);
    if (w.inside) scatter_bilinear(grad_features, bin.plane, w, to_acc(grad_out[i]), add);
  }
};

}  // namespace jax_roi
