// roi_align_rotated as functions of one output element: roi_align "avg"
// with its samples turned about the box's centre.
#pragma once

#include <cstdint>

#include "box_taps.h"
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

// Bin (ph, pw) of a ROI's geometry and frame bounds, without a channel's
// plane: what the CPU tap tables build for every bin of a ROI.
template <typename G>
JAX_ROI_HOST_DEVICE RotatedBin<G> rotated_bin_in(const RotatedRoi<G>& roi,
                                                 const FrameBounds<G>& frame, int64_t ph,
                                                 int64_t pw) {
  RotatedBin<G> bin{};
  bin.valid = true;
  bin.roi = roi;
  bin.count = roi.count;
  bin.ph = ph;
  bin.pw = pw;
  rotated_sample_ranges(roi, frame, ph, pw, &bin.ys, &bin.xs);
  return bin;
}

// The geometry of ROI r (valid, on a map with pixels).
template <typename G>
JAX_ROI_HOST_DEVICE RotatedRoi<G> rotated_roi_of(const Problem<G>& p, const Roi<G>& r) {
  const Shape& s = p.shape;
  return rotated_roi(r, p.spatial_scale, s.pooled_h, s.pooled_w, p.sampling_ratio, p.aligned,
                     p.clockwise);
}

// Bin (ph, pw) of ROI r (valid, on a map with pixels) without a channel's plane.
template <typename G>
JAX_ROI_HOST_DEVICE RotatedBin<G> rotated_bin_of(const Problem<G>& p, const Roi<G>& r,
                                                 int64_t ph, int64_t pw) {
  const RotatedRoi<G> roi = rotated_roi_of(p, r);
  return rotated_bin_in(roi, rotated_frame_bounds(roi, p.shape.height, p.shape.width), ph, pw);
}

template <typename G>
JAX_ROI_HOST_DEVICE RotatedBin<G> rotated_bin(const Problem<G>& p, int64_t i) {
  const Shape& s = p.shape;
  OutputElement e = split_output_index(s, i);
  Roi<G> r = load_roi(p.rois, e.roi);
  if (!(r.valid && s.height > 0 && s.width > 0)) return RotatedBin<G>{};
  RotatedBin<G> bin = rotated_bin_of(p, r, e.ph, e.pw);
  bin.plane = feature_plane(s, r.batch, e.channel);
  return bin;
}

// The box taps (box_taps.h) of a rotated bin; the coordinates are (cx, cy,
// w, h, angle). A sample at (yy, xx) = (h*s*(fy - 1/2), w*s*(fx - 1/2)) in
// the box's frame reads the map at y = yy*cos - xx*sin + cy*s - o,
// x = yy*sin + xx*cos + cx*s - o.
template <typename G, typename Visit>
JAX_ROI_HOST_DEVICE void rotated_box_taps(const RotatedBin<G>& bin, const Problem<G>& p,
                                          const Visit& visit) {
  if (!bin.valid) return;
  const Shape& s = p.shape;
  const RotatedRoi<G>& a = bin.roi;
  const G sc = p.spatial_scale, c = a.cos_t, n = a.sin_t;
  // d theta / d angle: degrees to radians, turned by `clockwise`.
  const G turn = static_cast<G>(3.14159265358979323846 / 180.0) * (p.clockwise ? G(-1) : G(1));
  const G scale = G(1) / bin.count;
  SampleJacobian<G> jac{};
  jac.y[1] = sc;
  jac.x[0] = sc;
  for (int64_t iy = bin.ys.lo; iy < bin.ys.hi; ++iy) {
    const G yy = sample_position(a.y_start, bin.ph, a.bin_h, iy, a.grid_h);
    const G fy = a.height_moves ? sample_fraction(bin.ph, iy, a.grid_h, s.pooled_h) - G(0.5)
                                : G(0);
    for (int64_t ix = bin.xs.lo; ix < bin.xs.hi; ++ix) {
      const G xx = sample_position(a.x_start, bin.pw, a.bin_w, ix, a.grid_w);
      const G fx = a.width_moves ? sample_fraction(bin.pw, ix, a.grid_w, s.pooled_w) - G(0.5)
                                 : G(0);
      G y, x;
      rotate_sample(a, yy, xx, &y, &x);
      jac.y[2] = -fx * sc * n;
      jac.x[2] = fx * sc * c;
      jac.y[3] = fy * sc * c;
      jac.x[3] = fy * sc * n;
      jac.y[4] = -(yy * n + xx * c) * turn;
      jac.x[4] = (yy * c - xx * n) * turn;
      bilinear_box_taps(y, x, s.height, s.width, jac, scale, visit);
    }
  }
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

  template <typename G, typename Visit>
  JAX_ROI_HOST_DEVICE static void bin_box_taps(const Problem<G>& p, const Roi<G>& r, int64_t ph,
                                               int64_t pw, const Visit& visit) {
    rotated_box_taps(rotated_bin_of(p, r, ph, pw), p, visit);
  }
};

}  // namespace jax_roi
