// ps_roi_align and ps_roi_pool (R-FCN) as functions of one output element:
// output channel c of bin (ph, pw) reads its own input channel
// (position_sensitive_channel).
#pragma once

#include <cstdint>

#include "align.h"

namespace jax_roi {

// roi_align "avg" with aligned boxes (the caller sets p.aligned) on the
// mapped channel. Its divisor is max(gh*gw, 1): a bin without samples sums
// to 0, so it gives 0 as the contract asks.
template <>
struct Elements<Op::kPsAlign> {
  template <typename G>
  JAX_ROI_HOST_DEVICE static AlignBin<G> bin(const Problem<G>& p, int64_t i) {
    return align_bin(p, i, [&](const OutputElement& e) { return input_channel(Op::kPsAlign, p.shape, e); });
  }

  template <typename T, typename G>
  JAX_ROI_HOST_DEVICE static void forward(const Problem<G>& p, int64_t i, const T* features,
                                          T* out, int32_t*) {
    out[i] = from_acc<T>(average_of_samples<T, G>(bin(p, i), p.shape, features));
  }

  template <typename T, typename G, typename Add>
  JAX_ROI_HOST_DEVICE static void backward(const Problem<G>& p, int64_t i, const T* grad_out,
                                           const int32_t*, G* grad_features, const Add& add) {
    scatter_to_samples(bin(p, i), p.shape, to_acc(grad_out[i]), grad_features, add);
  }

  template <typename G, typename Visit>
  JAX_ROI_HOST_DEVICE static void bin_box_taps(const Problem<G>& p, const Roi<G>& r, int64_t ph,
                                               int64_t pw, const Visit& visit) {
    align_average_box_taps(align_bin_of(p, r, ph, pw), p, visit);
  }
};

// The mean of a bin's pixels, on the mapped channel; an empty bin gives 0.
template <>
struct Elements<Op::kPsPool> {
  template <typename G>
  struct Bin {
    bool valid;
    Plane plane;
    PixelWindow win;
    G area;
  };

  template <typename G>
  JAX_ROI_HOST_DEVICE static Bin<G> bin(const Problem<G>& p, int64_t i) {
    const Shape& s = p.shape;
    OutputElement e = split_output_index(s, i);
    Roi<G> r = load_roi(p.rois, e.roi);
    Bin<G> b{};
    if (!r.valid) return b;
    b.win = pool_bin(pool_roi(r, p.spatial_scale, s.pooled_h, s.pooled_w, /*inclusive_end=*/false), e.ph, e.pw,
                     s.height, s.width);
    b.valid = !b.win.empty();
    b.plane = feature_plane(s, r.batch, input_channel(Op::kPsPool, s, e));
    b.area = static_cast<G>((b.win.h1 - b.win.h0) * (b.win.w1 - b.win.w0));
    return b;
  }

  template <typename T, typename G>
  JAX_ROI_HOST_DEVICE static void forward(const Problem<G>& p, int64_t i, const T* features,
                                          T* out, int32_t*) {
    Bin<G> b = bin(p, i);
    G sum = G(0);
    if (b.valid) {
      for (int64_t h = b.win.h0; h < b.win.h1; ++h)
        for (int64_t w = b.win.w0; w < b.win.w1; ++w) sum += to_acc(features[b.plane.at(h, w)]);
      sum /= b.area;
    }
    out[i] = from_acc<T>(sum);
  }

  template <typename T, typename G, typename Add>
  JAX_ROI_HOST_DEVICE static void backward(const Problem<G>& p, int64_t i, const T* grad_out,
                                           const int32_t*, G* grad_features, const Add& add) {
    Bin<G> b = bin(p, i);
    if (!b.valid) return;
    G g = to_acc(grad_out[i]) / b.area;
    for (int64_t h = b.win.h0; h < b.win.h1; ++h)
      for (int64_t w = b.win.w0; w < b.win.w1; ++w) add(grad_features + b.plane.at(h, w), g);
  }
};

}  // namespace jax_roi
