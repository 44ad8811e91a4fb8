// What one kernel call computes: the ops, the sizes read from the buffers,
// the geometry attributes, and how output and feature elements are indexed.
#pragma once

#include <cstdint>

#include "host_device.h"
#include "roi_geometry.h"

namespace jax_roi {

// Every op with a kernel. Each has its element functions (elements/) and
// its CPU kernels (cpu/); lib/kernel_list.h names its FFI targets.
enum class Op { kAlignAvg, kAlignMax, kPool, kRotated, kPsAlign, kPsPool, kPrPool };

// Ops whose output is linear in the features and records no argmax.
constexpr bool is_linear(Op op) { return op != Op::kAlignMax && op != Op::kPool; }
// Ops whose output channels are the input's split among the bins.
constexpr bool is_position_sensitive(Op op) { return op == Op::kPsAlign || op == Op::kPsPool; }
// Ops whose output moves with the box (the others round it to whole pixels).
constexpr bool has_box_derivative(Op op) { return op != Op::kPool && op != Op::kPsPool; }
// Coordinates per ROI: (x1, y1, x2, y2), or (cx, cy, w, h, angle).
constexpr int64_t roi_coords(Op op) { return op == Op::kRotated ? 5 : 4; }

// Every size of one call, read from buffer dimensions. `out_channels` is
// `channels` except for the position-sensitive ops (channels / (PH*PW)).
struct Shape {
  int64_t num_images, channels, height, width;
  int64_t num_rois, pooled_h, pooled_w, out_channels;
  bool channels_last;

  JAX_ROI_HOST_DEVICE int64_t output_count() const {
    return num_rois * out_channels * pooled_h * pooled_w;
  }
  JAX_ROI_HOST_DEVICE int64_t feature_count() const {
    return num_images * channels * height * width;
  }
};

// One output element's coordinates.
struct OutputElement {
  int64_t roi, channel, ph, pw;
};

JAX_ROI_HOST_DEVICE OutputElement split_output_index(const Shape& s, int64_t i) {
  OutputElement e;
  if (s.channels_last) {  // [K, PH, PW, C]
    e.channel = i % s.out_channels;
    i /= s.out_channels;
    e.pw = i % s.pooled_w;
    i /= s.pooled_w;
    e.ph = i % s.pooled_h;
    e.roi = i / s.pooled_h;
  } else {  // [K, C, PH, PW]
    e.pw = i % s.pooled_w;
    i /= s.pooled_w;
    e.ph = i % s.pooled_h;
    i /= s.pooled_h;
    e.channel = i % s.out_channels;
    e.roi = i / s.out_channels;
  }
  return e;
}

JAX_ROI_HOST_DEVICE int64_t output_index(const Shape& s, int64_t roi, int64_t channel,
                                         int64_t ph, int64_t pw) {
  if (s.channels_last)
    return ((roi * s.pooled_h + ph) * s.pooled_w + pw) * s.out_channels + channel;
  return ((roi * s.out_channels + channel) * s.pooled_h + ph) * s.pooled_w + pw;
}

// The input channel an output element reads.
JAX_ROI_HOST_DEVICE int64_t input_channel(Op op, const Shape& s, const OutputElement& e) {
  if (!is_position_sensitive(op)) return e.channel;
  return position_sensitive_channel(e.channel, e.ph, e.pw, s.pooled_h, s.pooled_w);
}

// Pixel (y, x) of one image channel sits at plane_offset + (y*W + x)*stride.
struct Plane {
  int64_t offset, stride, width;
  JAX_ROI_HOST_DEVICE int64_t at(int64_t y, int64_t x) const {
    return offset + (y * width + x) * stride;
  }
};

// `channel` is an input channel.
JAX_ROI_HOST_DEVICE Plane feature_plane(const Shape& s, int64_t batch, int64_t channel) {
  int64_t image = batch * s.channels * s.height * s.width;
  if (s.channels_last) return {image + channel, s.channels, s.width};
  return {image + channel * s.height * s.width, 1, s.width};
}

// Geometry attributes of a call, with the ROIs in their own format.
template <typename G>
struct Problem {
  Shape shape;
  RoiTable<G> rois;
  G spatial_scale;
  int64_t sampling_ratio;
  bool aligned;
  bool clockwise;  // roi_align_rotated: angles turn clockwise
};

// ROI r's roi_align geometry (its bins and sampling grid) under the call's
// attributes.
template <typename G>
JAX_ROI_HOST_DEVICE AlignRoi<G> align_roi_of(const Problem<G>& p, const Roi<G>& r) {
  const Shape& s = p.shape;
  return align_roi(r, p.spatial_scale, s.pooled_h, s.pooled_w, p.sampling_ratio, p.aligned);
}

}  // namespace jax_roi
