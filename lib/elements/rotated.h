// roi_align_rotated as functions of one output element: roi_align "avg"
// with its samples turned about the box's centre.
#pragma once

#include <cstdint>

#include "element_ops.h"

namespace jax_roi {

template <typename G>
struct RotatedBin {
  bool valid;
  Plane plane;
  RotatedRoi<G> roi;
  SampleRange ys, xs;
  G count;
  int64_t ph, pw;

  JAX_ROI_HOST_DEVICE Bilinear<G> sample(int64_t iy, int64_t ix, const Shape& s) const {
    G yy = sample_position(roi.y_start, ph, roi.bin_h, iy, roi.grid_h);
    G xx = sample_position(roi.x_start, pw, roi.bin_w, ix, roi.grid_w);
    G y, x;
    rotate_sample(roi, yy, xx, &y, &x);
    return bilinear(y, x, s.height, s.width);
  }
};

template <typename G>
JAX_ROI_HOST_DEVICE RotatedBin<G> rotated_bin(const Problem<G>& p, int64_t i) {
  const Shape& s = p.shape;
  OutputElement e = split_output_index(s, i);
  Roi<G> r = load_roi(p.rois, e.roi);
  RotatedBin<G> bin{};
  bin.valid = r.valid && s.height > 0 && s.width > 0;
  if (!bin.valid) return bin;
  bin.plane = feature_plane(s, r.batch, e.channel);
  bin.roi = rotated_roi(r, p.spatial_scale, s.pooled_h, s.pooled_w, p.sampling_ratio,
                        p.aligned, p.clockwise);
  bin.count = bin.roi.count;
  bin.ph = e.ph;
  bin.pw = e.pw;
  rotated_sample_ranges(bin.roi, e.ph, e.pw, s.height, s.width, &bin.ys, &bin.xs);
  return bin;
}

template <>
struct Elements<Op::kRotated> {
  template <typename T, typename G>
  JAX_ROI_HOST_DEVICE static void forward(const Problem<G>& p, int64_t i, const T* features,
                                          T* out, int32_t*) {
    out[i] = from_acc<T>(average_of_samples<T, G>(rotated_bin(p, i), p.shape, features));
  }

  template <typename T, typename G, typename Add>
  JAX_ROI_HOST_DEVICE static void backward(const Problem<G>& p, int64_t i, const T* grad_out,
                                           const int32_t*, G* grad_features, const Add& add) {
    scatter_to_samples(rotated_bin(p, i), p.shape, to_acc(grad_out[i]), grad_features, add);
  }
};

}  // namespace jax_roi
