// The derivative with respect to the ROIs as functions of one output
// element, for every op that has one (has_box_derivative): forward mode
// (the output's tangent from the ROIs' tangents) and reverse mode (an
// element's share of its ROI's cotangent). Both read the op's box taps
// (box_taps.h): a linear op's Elements<op>::bin_box_taps, shared by every
// channel of a bin, or a max mode's element_box_taps at its winner.
// Tangents and cotangents have the ROIs' shape; the batch index gets 0.
#pragma once

#include <cstdint>

#include "../dtypes.h"
#include "../problem.h"
#include "box_taps.h"

namespace jax_roi {

template <Op op>
struct Elements;

// visit(offset, dw) for the taps of output element i, offset into the features.
template <Op op, typename G, typename Visit>
JAX_ROI_HOST_DEVICE void element_box_taps(const Problem<G>& p, int64_t i, const int32_t* argmax,
                                          const Visit& visit) {
  if constexpr (is_linear(op)) {
    const Shape& s = p.shape;
    const OutputElement e = split_output_index(s, i);
    const Roi<G> r = load_roi(p.rois, e.roi);
    if (!(r.valid && s.height > 0 && s.width > 0)) return;
    const Plane plane = feature_plane(s, r.batch, input_channel(op, s, e));
    Elements<op>::bin_box_taps(p, r, e.ph, e.pw, [&](int64_t y, int64_t x, const G* dw) {
      visit(plane.at(y, x), dw);
    });
  } else {
    Elements<op>::element_box_taps(p, i, argmax, visit);
  }
}

// Where ROI k's coordinates start in a buffer of the ROIs' shape.
template <typename G>
JAX_ROI_HOST_DEVICE int64_t roi_coords_at(const RoiTable<G>& t, int64_t k) {
  return t.rois_per_image > 0 ? k * t.coords : k * (t.coords + 1) + 1;
}

// Writes ROI k's cotangent d[0, coords) into a buffer of the ROIs' shape.
template <typename G>
JAX_ROI_HOST_DEVICE void store_roi_cotangent(const RoiTable<G>& t, int64_t k, const G* d,
                                             G* cotangent) {
  G* row = cotangent + roi_coords_at(t, k);
  if (t.rois_per_image == 0) row[-1] = G(0);  // the batch index
  for (int64_t j = 0; j < t.coords; ++j) row[j] = d[j];
}

template <Op op, typename T, typename G>
JAX_ROI_HOST_DEVICE T box_jvp_element(const Problem<G>& p, int64_t i, const T* features,
                                      const int32_t* argmax, const G* roi_tangents) {
  const G* t = roi_tangents + roi_coords_at(p.rois, split_output_index(p.shape, i).roi);
  const int64_t coords = p.rois.coords;
  G sum = G(0);
  element_box_taps<op>(p, i, argmax, [&](int64_t offset, const G* dw) {
    G rate = G(0);
    for (int64_t j = 0; j < coords; ++j) rate += dw[j] * t[j];
    sum += rate * to_acc(features[offset]);
  });
  return from_acc<T>(sum);
}

// Adds element i's share, grad_out[i] * d out[i] / d v[j], to d[j] (kMaxCoords of them).
template <Op op, typename T, typename G>
JAX_ROI_HOST_DEVICE void add_box_vjp_element(const Problem<G>& p, int64_t i, const T* features,
                                             const int32_t* argmax, const T* grad_out, G* d) {
  const G g = to_acc(grad_out[i]);
  element_box_taps<op>(p, i, argmax, [&](int64_t offset, const G* dw) {
    const G v = g * to_acc(features[offset]);
    for (int j = 0; j < kMaxCoords; ++j) d[j] += v * dw[j];  // dw is 0 past the coordinates
  });
}

}  // namespace jax_roi
