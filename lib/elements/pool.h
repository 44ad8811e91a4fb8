// roi_pool as functions of one output element.
#pragma once

#include <cstdint>

#include "element_ops.h"

namespace jax_roi {

template <>
struct Elements<Op::kPool> {
  template <typename T, typename G>
  JAX_ROI_HOST_DEVICE static void forward(const Problem<G>& p, int64_t i, const T* features,
                                          T* out, int32_t* argmax) {
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
    if (argmax) argmax[i] = static_cast<int32_t>(best_index);  // null: the values alone
  }

  template <typename T, typename G, typename Add>
  JAX_ROI_HOST_DEVICE static void backward(const Problem<G>& p, int64_t i, const T* grad_out,
                                           const int32_t* argmax, G* grad_features,
                                           const Add& add) {
    const Shape& s = p.shape;
    int64_t pixel = argmax[i];
    if (pixel < 0 || pixel >= s.height * s.width) return;
    OutputElement e = split_output_index(s, i);
    Roi<G> r = load_roi(p.rois, e.roi);
    if (!r.valid) return;
    Plane plane = feature_plane(s, r.batch, e.channel);
    add(grad_features + plane.at(pixel / s.width, pixel % s.width), to_acc(grad_out[i]));
  }
};

}  // namespace jax_roi
