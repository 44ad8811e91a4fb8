// The derivative with respect to the ROIs on the CPU; the arithmetic is the
// element functions' (elements/box_derivative.h). Threads take whole ROIs:
// each ROI's output tangent is written, and its cotangent summed, by one
// thread in one order, so results do not depend on the thread count. A
// linear op's bin has the same box taps for every channel, so each tap is
// visited once and runs over the channels; a max mode's taps are each
// element's winner, visited element by element.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "../elements/all_elements.h"
#include "isa_clones.h"

namespace jax_roi {

struct CpuBoxDerivative {
  // Output channel c of a bin reads input channel first + c * step.
  template <Op op>
  static int64_t channel_step(const Shape& s) {
    const int64_t per_channel = s.channels_last ? 1 : s.height * s.width;
    return is_position_sensitive(op) ? s.pooled_h * s.pooled_w * per_channel : per_channel;
  }

  // visit_bin(ph, pw, plane, taps) for each bin of ROI k, taps(visit) running
  // visit(pixel, dw) over the bin's box taps (none when the ROI reads nothing).
  template <Op op, typename G, typename VisitBin>
  static void for_each_bin(const Problem<G>& p, int64_t k, const VisitBin& visit_bin) {
    const Shape& s = p.shape;
    const Roi<G> r = load_roi(p.rois, k);
    const bool reads = r.valid && s.height > 0 && s.width > 0;
    for (int64_t ph = 0; ph < s.pooled_h; ++ph) {
      for (int64_t pw = 0; pw < s.pooled_w; ++pw) {
        const Plane plane = feature_plane(s, reads ? r.batch : 0,
                                          input_channel(op, s, OutputElement{k, 0, ph, pw}));
        visit_bin(ph, pw, [&](const auto& visit) {
          if (reads)
            Elements<op>::bin_box_taps(p, r, ph, pw, [&](int64_t y, int64_t x, const G* dw) {
              visit(plane.at(y, x), dw);
            });
        });
      }
    }
  }

  // ROI k's rows of the output tangent.
  template <Op op, typename T, typename G>
  static JAX_ROI_CPU_CLONES void jvp_roi(const Problem<G>& p, int64_t k, const T* features,
                                         const int32_t* argmax, const G* tangents, T* out,
                                         std::vector<G>& acc) {
    const Shape& s = p.shape;
    if constexpr (!is_linear(op)) {
      const int64_t per_roi = s.out_channels * s.pooled_h * s.pooled_w;
      for (int64_t i = k * per_roi; i < (k + 1) * per_roi; ++i)
        out[i] = box_jvp_element<op>(p, i, features, argmax, tangents);
    } else {
      const G* t = tangents + roi_coords_at(p.rois, k);
      const int64_t C = s.out_channels, step = channel_step<op>(s), coords = p.rois.coords;
      acc.resize(C);
      for_each_bin<op>(p, k, [&](int64_t ph, int64_t pw, const auto& taps) {
        G* __restrict__ sum = acc.data();
        std::fill(sum, sum + C, G(0));
        taps([&](int64_t pixel, const G* dw) {
          G rate = G(0);
          for (int64_t j = 0; j < coords; ++j) rate += dw[j] * t[j];
          const T* __restrict__ v = features + pixel;
          for (int64_t c = 0; c < C; ++c) sum[c] += rate * to_acc(v[c * step]);
        });
        for (int64_t c = 0; c < C; ++c) out[output_index(s, k, c, ph, pw)] = from_acc<T>(sum[c]);
      });
    }
  }

  // ROI k's cotangent.
  template <Op op, typename T, typename G>
  static JAX_ROI_CPU_CLONES void vjp_roi(const Problem<G>& p, int64_t k, const T* features,
                                         const int32_t* argmax, const T* grad_out,
                                         G* cotangents, std::vector<G>& scaled) {
    const Shape& s = p.shape;
    G d[kMaxCoords] = {};
    if constexpr (!is_linear(op)) {
      const int64_t per_roi = s.out_channels * s.pooled_h * s.pooled_w;
      for (int64_t i = k * per_roi; i < (k + 1) * per_roi; ++i)
        add_box_vjp_element<op>(p, i, features, argmax, grad_out, d);
    } else {
      const int64_t C = s.out_channels, step = channel_step<op>(s);
      scaled.resize(C);
      for_each_bin<op>(p, k, [&](int64_t ph, int64_t pw, const auto& taps) {
        G* __restrict__ g = scaled.data();
        for (int64_t c = 0; c < C; ++c) g[c] = to_acc(grad_out[output_index(s, k, c, ph, pw)]);
        taps([&](int64_t pixel, const G* dw) {
          const T* __restrict__ v = features + pixel;
          G dot = G(0);
          for (int64_t c = 0; c < C; ++c) dot += g[c] * to_acc(v[c * step]);
          for (int j = 0; j < kMaxCoords; ++j) d[j] += dot * dw[j];
        });
      });
    }
    store_roi_cotangent(p.rois, k, d, cotangents);
  }
};

}  // namespace jax_roi
