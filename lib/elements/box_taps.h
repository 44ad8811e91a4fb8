// The derivative of an output element with respect to its ROI's
// coordinates, written as "box taps": for each pixel (y, x) the element
// reads, dw[j] is how fast that pixel's weight moves per unit of coordinate
// j. Then d out / d v[j] = sum over taps of dw[j] * X[pixel], which both the
// forward-mode kernel (times a tangent) and the reverse-mode kernel (times a
// cotangent) evaluate. Sample grids, counts and every rounding are held
// fixed: their derivative is 0 (docs: semantics.md, "Gradient with respect
// to ROIs").
#pragma once

#include <cstdint>

#include "../roi_geometry.h"

namespace jax_roi {

constexpr int kMaxCoords = 5;

// How a bilinear sample's position moves with the ROI: dy/dv[j], dx/dv[j].
template <typename G>
struct SampleJacobian {
  G y[kMaxCoords], x[kMaxCoords];
};

// Interpolation along an axis moves with the position only where the
// position is neither clamped to 0 nor to the last pixel.
template <typename G>
JAX_ROI_HOST_DEVICE bool axis_moves(G pos, int64_t extent) {
  return pos >= G(0) && pos < static_cast<G>(extent - 1);
}

// The taps of one bilinear sample at (y, x), whose value enters the output
// times `scale`: each corner's weight derivative, visit(y, x, dw).
template <typename G, typename Visit>
JAX_ROI_HOST_DEVICE void bilinear_box_taps(G y, G x, int64_t height, int64_t width,
                                           const SampleJacobian<G>& jac, G scale,
                                           const Visit& visit) {
  const AxisWeights<G> ay = axis_weights(y, height), ax = axis_weights(x, width);
  if (!(ay.inside && ax.inside)) return;  // reads 0 wherever it moves
  const G my = axis_moves(y, height) ? scale : G(0);
  const G mx = axis_moves(x, width) ? scale : G(0);
  if (my == G(0) && mx == G(0)) return;
  // d(wy * wx) = dwy * wx + wy * dwx, with d w1/dy = 1 = -d w0/dy.
  const int64_t ys[2] = {ay.i0, ay.i1}, xs[2] = {ax.i0, ax.i1};
  const G wy[2] = {ay.w0, ay.w1}, wx[2] = {ax.w0, ax.w1}, sign[2] = {G(-1), G(1)};
  for (int a = 0; a < 2; ++a) {
    for (int b = 0; b < 2; ++b) {
      const G along_y = sign[a] * wx[b] * my, along_x = sign[b] * wy[a] * mx;
      G dw[kMaxCoords] = {};
      for (int j = 0; j < kMaxCoords; ++j) dw[j] = along_y * jac.y[j] + along_x * jac.x[j];
      visit(ys[a], xs[b], dw);
    }
  }
}

// Where sample t of bin `bin_index` sits within its box, as a fraction of
// the box's size: (bin_index + (t + 0.5) / grid) / bins.
template <typename G>
JAX_ROI_HOST_DEVICE G sample_fraction(int64_t bin_index, int64_t t, G grid, int64_t bins) {
  return (static_cast<G>(bin_index) + (static_cast<G>(t) + G(0.5)) / grid) /
         static_cast<G>(bins);
}

}  // namespace jax_roi
