// prroi_pool (Precise RoI Pooling) as functions of one output element: the
// integral of the tent-interpolated map over the bin, over its area. The
// integral separates: pixel (y, x) enters with weight T_y(y) * T_x(x), the
// integral of its tent along each axis over the bin's extent.
#pragma once

#include <cstdint>

#include "box_taps.h"
#include "element_ops.h"

namespace jax_roi {

template <typename G>
struct PreciseBin {
  G y_lo, y_hi, x_lo, x_hi, bin_h, bin_w, area;
  PixelSpan ys, xs;  // the pixels whose tents meet the bin
  int64_t ph, pw;

  // The integral of pixel i's tent over [lo, hi].
  JAX_ROI_HOST_DEVICE static G tent_integral(G lo, G hi, int64_t i) {
    const G at = static_cast<G>(i);
    return tent_cumulative(hi - at) - tent_cumulative(lo - at);
  }
};

// Bin (ph, pw) of ROI r (valid), as PreciseRoIPooling places it.
template <typename G>
JAX_ROI_HOST_DEVICE PreciseBin<G> precise_bin_of(const Problem<G>& p, const Roi<G>& r,
                                                 int64_t ph, int64_t pw) {
  const Shape& s = p.shape;
  const PreciseRoi<G> a = precise_roi(r, p.spatial_scale, s.pooled_h, s.pooled_w);
  PreciseBin<G> b;
  b.y_lo = a.y_start + static_cast<G>(ph) * a.bin_h;
  b.y_hi = b.y_lo + a.bin_h;
  b.x_lo = a.x_start + static_cast<G>(pw) * a.bin_w;
  b.x_hi = b.x_lo + a.bin_w;
  b.bin_h = a.bin_h;
  b.bin_w = a.bin_w;
  b.area = a.bin_h * a.bin_w;
  b.ys = tent_span(b.y_lo, b.y_hi, s.height);
  b.xs = tent_span(b.x_lo, b.x_hi, s.width);
  b.ph = ph;
  b.pw = pw;
  return b;
}

// visit(y, x, weight) for the pixels of a bin of nonzero area: the
// integral of each pixel's tent over the bin (divide by the area).
template <typename G, typename Visit>
JAX_ROI_HOST_DEVICE void precise_taps(const PreciseBin<G>& b, const Visit& visit) {
  if (!(b.area > G(0))) return;
  for (int64_t y = b.ys.lo; y < b.ys.hi; ++y) {
    const G ty = PreciseBin<G>::tent_integral(b.y_lo, b.y_hi, y);
    for (int64_t x = b.xs.lo; x < b.xs.hi; ++x)
      visit(y, x, ty * PreciseBin<G>::tent_integral(b.x_lo, b.x_hi, x));
  }
}

// The box taps (box_taps.h) of a bin; the coordinates are (x1, y1, x2, y2).
// With W = T_y T_x / area, moving the bin's left edge gives
// dW/dx_lo = W / bin_w - T_y t(x_lo - x) / area and its right edge
// dW/dx_hi = T_y t(x_hi - x) / area - W / bin_w (likewise in y); the edges
// x1*s + pw*bin_w and x1*s + (pw + 1)*bin_w, bin_w = (x2 - x1)*s / PW, carry
// these to x1 and x2.
template <typename G, typename Visit>
JAX_ROI_HOST_DEVICE void precise_box_taps(const PreciseBin<G>& b, const Problem<G>& p,
                                          const Visit& visit) {
  if (!(b.area > G(0))) return;
  const Shape& s = p.shape;
  const G sc = p.spatial_scale, bin_h = b.bin_h, bin_w = b.bin_w;
  // d edge / d coordinate: the low and high edges' fractions of the box.
  const G y_lo_at = static_cast<G>(b.ph) / static_cast<G>(s.pooled_h);
  const G y_hi_at = static_cast<G>(b.ph + 1) / static_cast<G>(s.pooled_h);
  const G x_lo_at = static_cast<G>(b.pw) / static_cast<G>(s.pooled_w);
  const G x_hi_at = static_cast<G>(b.pw + 1) / static_cast<G>(s.pooled_w);
  for (int64_t y = b.ys.lo; y < b.ys.hi; ++y) {
    const G at_y = static_cast<G>(y);
    const G ty = PreciseBin<G>::tent_integral(b.y_lo, b.y_hi, y);
    const G ey_lo = tent(b.y_lo - at_y), ey_hi = tent(b.y_hi - at_y);
    for (int64_t x = b.xs.lo; x < b.xs.hi; ++x) {
      const G at_x = static_cast<G>(x);
      const G tx = PreciseBin<G>::tent_integral(b.x_lo, b.x_hi, x);
      const G w = ty * tx / b.area;
      const G d_x_lo = w / bin_w - ty * tent(b.x_lo - at_x) / b.area;
      const G d_x_hi = ty * tent(b.x_hi - at_x) / b.area - w / bin_w;
      const G d_y_lo = w / bin_h - tx * ey_lo / b.area;
      const G d_y_hi = tx * ey_hi / b.area - w / bin_h;
      G dw[kMaxCoords] = {};
      dw[0] = sc * (d_x_lo * (G(1) - x_lo_at) + d_x_hi * (G(1) - x_hi_at));
      dw[2] = sc * (d_x_lo * x_lo_at + d_x_hi * x_hi_at);
      dw[1] = sc * (d_y_lo * (G(1) - y_lo_at) + d_y_hi * (G(1) - y_hi_at));
      dw[3] = sc * (d_y_lo * y_lo_at + d_y_hi * y_hi_at);
      visit(y, x, dw);
    }
  }
}

template <>
struct Elements<Op::kPrPool> {
  template <typename G>
  struct Element {
    bool valid;
    Plane plane;
    PreciseBin<G> bin;
  };

  template <typename G>
  JAX_ROI_HOST_DEVICE static Element<G> element(const Problem<G>& p, int64_t i) {
    const Shape& s = p.shape;
    OutputElement e = split_output_index(s, i);
    Roi<G> r = load_roi(p.rois, e.roi);
    Element<G> el{};
    el.valid = r.valid && s.height > 0 && s.width > 0;
    if (!el.valid) return el;
    el.plane = feature_plane(s, r.batch, e.channel);
    el.bin = precise_bin_of(p, r, e.ph, e.pw);
    return el;
  }

  template <typename T, typename G>
  JAX_ROI_HOST_DEVICE static void forward(const Problem<G>& p, int64_t i, const T* features,
                                          T* out, int32_t*) {
    const Element<G> el = element(p, i);
    G sum = G(0);
    if (el.valid) {
      precise_taps(el.bin, [&](int64_t y, int64_t x, G w) {
        sum += w * to_acc(features[el.plane.at(y, x)]);
      });
      if (el.bin.area > G(0)) sum /= el.bin.area;
    }
    out[i] = from_acc<T>(sum);
  }

  template <typename T, typename G, typename Add>
  JAX_ROI_HOST_DEVICE static void backward(const Problem<G>& p, int64_t i, const T* grad_out,
                                           const int32_t*, G* grad_features, const Add& add) {
    const Element<G> el = element(p, i);
    if (!el.valid || !(el.bin.area > G(0))) return;
    const G g = to_acc(grad_out[i]) / el.bin.area;
    precise_taps(el.bin, [&](int64_t y, int64_t x, G w) {
      add(grad_features + el.plane.at(y, x), g * w);
    });
  }

  template <typename G, typename Visit>
  JAX_ROI_HOST_DEVICE static void bin_box_taps(const Problem<G>& p, const Roi<G>& r, int64_t ph,
                                               int64_t pw, const Visit& visit) {
    precise_box_taps(precise_bin_of(p, r, ph, pw), p, visit);
  }
};

}  // namespace jax_roi
