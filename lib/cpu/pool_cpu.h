// roi_pool on the CPU, one ROI at a time. In NHWC a bin's pixels are
// compared a whole channel vector at a time.
#pragma once

#include <cstdint>
#include <limits>
#include <vector>

#include "align_cpu.h"

namespace jax_roi {

template <typename T, typename G>
JAX_ROI_CPU_CLONES void pool_forward_roi(const Problem<G>& p, int64_t k, const T* features, T* out,
                      int32_t* argmax, AlignScratch<G>& scratch) {
  const Shape& s = p.shape;
  const int64_t C = s.channels, bins = s.pooled_h * s.pooled_w;
  T* roi_out = out + k * C * bins;
  int32_t* roi_arg = argmax + k * C * bins;
  Roi<G> r = load_roi(p.rois, k);
  if (!r.valid) {
    for (int64_t i = 0; i < C * bins; ++i) roi_out[i] = from_acc<T>(G(0)), roi_arg[i] = -1;
    return;
  }
  PoolRoi<G> roi = pool_roi(r, p.spatial_scale, s.pooled_h, s.pooled_w);
  const int64_t lanes = s.channels_last ? C : 1;
  scratch.acc.resize(lanes);
  scratch.arg.resize(lanes);
  G* __restrict__ best = scratch.acc.data();
  int64_t* __restrict__ arg = scratch.arg.data();
  for (int64_t c0 = 0; c0 < C; c0 += lanes) {
    Pixels<T> px = image_pixels(s, features, r.batch, c0);
    for (int64_t ph = 0; ph < s.pooled_h; ++ph) {
      for (int64_t pw = 0; pw < s.pooled_w; ++pw) {
        PixelWindow win = pool_bin(roi, ph, pw, s.height, s.width);
        for (int64_t c = 0; c < lanes; ++c) best[c] = -std::numeric_limits<G>::infinity(), arg[c] = -1;
        for (int64_t h = win.h0; h < win.h1; ++h) {
          for (int64_t w = win.w0; w < win.w1; ++w) {
            const T* v = px.at(h, w);
            const int64_t pixel = h * s.width + w;
            for (int64_t c = 0; c < lanes; ++c) {
              G value = to_acc(v[c]);
              if (value > best[c]) best[c] = value, arg[c] = pixel;  // NaN never wins
            }
          }
        }
        for (int64_t c = 0; c < lanes; ++c) {
          int64_t i = output_index(s, 0, c0 + c, ph, pw);
          roi_out[i] = from_acc<T>(arg[c] < 0 ? G(0) : best[c]);
          roi_arg[i] = static_cast<int32_t>(arg[c]);
        }
      }
    }
  }
}

template <typename T, typename G>
JAX_ROI_CPU_CLONES void pool_backward_roi(const Problem<G>& p, int64_t k, int64_t c0, int64_t c1,
                       const T* grad_out, const int32_t* argmax, G* grad) {
  const Shape& s = p.shape;
  Roi<G> r = load_roi(p.rois, k);
  if (!r.valid) return;
  const int64_t pixels = s.height * s.width;
  for (int64_t ph = 0; ph < s.pooled_h; ++ph) {
    for (int64_t pw = 0; pw < s.pooled_w; ++pw) {
      for (int64_t c = c0; c < c1; ++c) {
        int64_t i = output_index(s, k, c, ph, pw);
        int64_t pixel = argmax[i];
        if (pixel < 0 || pixel >= pixels) continue;
        *gradient_at(s, grad, r.batch, pixel / s.width, pixel % s.width, c) +=
            to_acc(grad_out[i]);
      }
    }
  }
}

}  // namespace jax_roi
