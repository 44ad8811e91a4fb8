// roi_align ("avg" and "max") as functions of one output element.
#pragma once

#include <cstdint>

#include "box_taps.h"
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

// Bin (ph, pw) of ROI r (valid, on a map with pixels) without a channel's
// plane: what the CPU tap tables and the box taps share among channels.
template <typename G>
JAX_ROI_HOST_DEVICE AlignBin<G> align_bin_of(const Problem<G>& p, const Roi<G>& r, int64_t ph,
                                             int64_t pw) {
  const Shape& s = p.shape;
  AlignBin<G> bin{};
  bin.valid = true;
  bin.roi = align_roi_of(p, r);
  bin.count = bin.roi.count;
  bin.ph = ph;
  bin.pw = pw;
  bin.ys = sample_range(bin.roi.y_start, ph, bin.roi.bin_h, bin.roi.grid_h, s.height);
  bin.xs = sample_range(bin.roi.x_start, pw, bin.roi.bin_w, bin.roi.grid_w, s.width);
  return bin;
}

// `channel_of(e)` is the input channel output element e reads.
template <typename G, typename ChannelOf>
JAX_ROI_HOST_DEVICE AlignBin<G> align_bin(const Problem<G>& p, int64_t i,
                                          const ChannelOf& channel_of) {
  const Shape& s = p.shape;
  OutputElement e = split_output_index(s, i);
  Roi<G> r = load_roi(p.rois, e.roi);
  if (!(r.valid && s.height > 0 && s.width > 0)) return AlignBin<G>{};
  AlignBin<G> bin = align_bin_of(p, r, e.ph, e.pw);
  bin.plane = feature_plane(s, r.batch, channel_of(e));
  return bin;
}

template <typename G>
JAX_ROI_HOST_DEVICE AlignBin<G> align_bin(const Problem<G>& p, int64_t i) {
  return align_bin(p, i, [](const OutputElement& e) { return e.channel; });
}

// The box taps (box_taps.h) of samples [iy0, iy1) x [ix0, ix1) of a bin,
// each entering the output times `scale`; the coordinates are (x1, y1, x2,
// y2). y = y1*s - o + (y2 - y1)*s * f, with f the sample's fraction of the
// box, so dy/dy1 = s*(1 - f) and dy/dy2 = s*f (or s and 0 when the size
// is clamped).
template <typename G, typename Visit>
JAX_ROI_HOST_DEVICE void align_box_taps(const AlignBin<G>& bin, const Problem<G>& p,
                                        int64_t iy0, int64_t iy1, int64_t ix0, int64_t ix1,
                                        G scale, const Visit& visit) {
  const Shape& s = p.shape;
  const AlignRoi<G>& a = bin.roi;
  const G sc = p.spatial_scale;
  SampleJacobian<G> jac{};
  for (int64_t iy = iy0; iy < iy1; ++iy) {
    const G fy = a.height_moves ? sample_fraction(bin.ph, iy, a.grid_h, s.pooled_h) : G(0);
    jac.y[1] = sc * (G(1) - fy);
    jac.y[3] = sc * fy;
    const G y = sample_position(a.y_start, bin.ph, a.bin_h, iy, a.grid_h);
    for (int64_t ix = ix0; ix < ix1; ++ix) {
      const G fx = a.width_moves ? sample_fraction(bin.pw, ix, a.grid_w, s.pooled_w) : G(0);
      jac.x[0] = sc * (G(1) - fx);
      jac.x[2] = sc * fx;
      const G x = sample_position(a.x_start, bin.pw, a.bin_w, ix, a.grid_w);
      bilinear_box_taps(y, x, s.height, s.width, jac, scale, visit);
    }
  }
}

// Every sample of a bin, averaged: roi_align "avg" and ps_roi_align.
template <typename G, typename Visit>
JAX_ROI_HOST_DEVICE void align_average_box_taps(const AlignBin<G>& bin, const Problem<G>& p,
                                                const Visit& visit) {
  if (bin.valid)
    align_box_taps(bin, p, bin.ys.lo, bin.ys.hi, bin.xs.lo, bin.xs.hi, G(1) / bin.count, visit);
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

  // The box taps of bin (ph, pw) of ROI r, visit(y, x, dw): the same for every channel.
  template <typename G, typename Visit>
  JAX_ROI_HOST_DEVICE static void bin_box_taps(const Problem<G>& p, const Roi<G>& r, int64_t ph,
                                               int64_t pw, const Visit& visit) {
    align_average_box_taps(align_bin_of(p, r, ph, pw), p, visit);
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
    if (argmax) argmax[i] = static_cast<int32_t>(packed);  // null: the values alone
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

  // The box taps of output element i: its winning sample's, visit(offset, dw)
  // with the offset into the features.
  template <typename G, typename Visit>
  JAX_ROI_HOST_DEVICE static void element_box_taps(const Problem<G>& p, int64_t i,
                                                   const int32_t* argmax, const Visit& visit) {
    if (argmax[i] < 0) return;
    AlignBin<G> bin = align_bin(p, i);
    if (!bin.valid || bin.xs.hi <= bin.xs.lo) return;
    int64_t iy, ix;
    unpack_sample(argmax[i], bin.ys, bin.xs, &iy, &ix);
    if (iy >= bin.ys.hi) return;
    align_box_taps(bin, p, iy, iy + 1, ix, ix + 1, G(1),
                   [&](int64_t y, int64_t x, const G* dw) { visit(bin.plane.at(y, x), dw); });
  }
};

}  // namespace jax_roi
