// Turns XLA FFI buffers and attributes into a Problem, checking every rank
// and size, for the CPU and CUDA handlers alike. Sizes come only from buffer
// dimensions; attributes carry geometry.
#pragma once

#include <climits>
#include <cstdint>
#include <string>
#include <type_traits>

#include "elements/pyramid.h"
#include "problem.h"
#include "xla/ffi/api/ffi.h"

namespace jax_roi {

namespace ffi = xla::ffi;

template <typename G>
constexpr ffi::DataType geometry_type() {
  return sizeof(G) == sizeof(double) ? ffi::DataType::F64 : ffi::DataType::F32;
}

inline std::string dims_text(ffi::Span<const int64_t> dims) {
  std::string text = "[";
  for (size_t i = 0; i < dims.size(); ++i) {
    if (i) text += ", ";
    text += std::to_string(dims[i]);
  }
  return text + "]";
}

// Calls f(T{}) with the storage type of a feature buffer.
template <typename F>
ffi::Error dispatch_feature_type(ffi::DataType type, const F& f) {
  switch (type) {
    case ffi::DataType::F32:
      return f(float{});
    case ffi::DataType::F64:
      return f(double{});
    case ffi::DataType::F16:
      return f(float16_t{});
    case ffi::DataType::BF16:
      return f(bfloat16_t{});
    default:
      return ffi::Error::InvalidArgument(
          "jax_roi: features must be float32, float64, float16 or bfloat16");
  }
}

// The geometry attributes every single-map kernel takes (each op reads
// those it needs; Python passes them all).
struct Geometry {
  double spatial_scale;
  int64_t sampling_ratio;
  bool aligned;
  bool clockwise;
  bool channels_last;
};

}  // namespace jax_roi

// Geometry decodes from the call's attributes by name.
XLA_FFI_REGISTER_STRUCT_ATTR_DECODING(::jax_roi::Geometry,
                                      ::xla::ffi::StructMember<double>("spatial_scale"),
                                      ::xla::ffi::StructMember<int64_t>("sampling_ratio"),
                                      ::xla::ffi::StructMember<bool>("aligned"),
                                      ::xla::ffi::StructMember<bool>("clockwise"),
                                      ::xla::ffi::StructMember<bool>("channels_last"));

namespace jax_roi {

// features: [N, C, H, W] or [N, H, W, C]; rois: [K, 1 + coords] or
// [N, L, coords] (coords from the op); pooled: the output (or its
// gradient), [K, ...] or [N, L, ...], with C or, for the
// position-sensitive ops, C / (PH*PW) channels.
template <typename G>
ffi::Error make_problem(Op op, ffi::Span<const int64_t> features, const ffi::AnyBuffer& rois,
                        ffi::Span<const int64_t> pooled, const Geometry& g,
                        Problem<G>* problem) {
  if (features.size() != 4)
    return ffi::Error::InvalidArgument("jax_roi: features must have rank 4, got " +
                                       dims_text(features));
  if (rois.element_type() != geometry_type<G>())
    return ffi::Error::InvalidArgument(
        "jax_roi: rois must be float64 with float64 features, float32 otherwise");
  const bool channels_last = g.channels_last;
  Shape& s = problem->shape;
  s.channels_last = channels_last;
  s.num_images = features[0];
  s.channels = channels_last ? features[3] : features[1];
  s.height = channels_last ? features[1] : features[2];
  s.width = channels_last ? features[2] : features[3];

  const int64_t coords = roi_coords(op);
  auto roi_dims = rois.dimensions();
  RoiTable<G>& table = problem->rois;
  table.data = rois.typed_data<G>();
  table.num_images = s.num_images;
  table.coords = coords;
  size_t lead;  // leading output dims that index ROIs
  if (roi_dims.size() == 2 && roi_dims[1] == coords + 1) {
    s.num_rois = roi_dims[0];
    table.rois_per_image = 0;
    lead = 1;
  } else if (roi_dims.size() == 3 && roi_dims[2] == coords && roi_dims[0] == s.num_images) {
    s.num_rois = roi_dims[0] * roi_dims[1];
    // With no boxes there is nothing to read; 0 would mean the [K, 5] format.
    table.rois_per_image = roi_dims[1] > 0 ? roi_dims[1] : 1;
    lead = 2;
  } else {
    return ffi::Error::InvalidArgument(
        "jax_roi: rois must be [K, " + std::to_string(coords + 1) + "] or [N, L, " +
        std::to_string(coords) + "], got " + dims_text(roi_dims));
  }
  if (pooled.size() != lead + 3 || pooled[0] != roi_dims[0] ||
      (lead == 2 && pooled[1] != roi_dims[1]))
    return ffi::Error::InvalidArgument("jax_roi: output " + dims_text(pooled) +
                                       " does not match rois " + dims_text(roi_dims));
  s.out_channels = channels_last ? pooled[lead + 2] : pooled[lead];
  s.pooled_h = channels_last ? pooled[lead] : pooled[lead + 1];
  s.pooled_w = channels_last ? pooled[lead + 1] : pooled[lead + 2];
  const int64_t bins = s.pooled_h * s.pooled_w;
  const bool channels_match =
      is_position_sensitive(op) ? s.out_channels * bins == s.channels : s.out_channels == s.channels;
  if (!channels_match)
    return ffi::Error::InvalidArgument("jax_roi: output " + dims_text(pooled) +
                                       " does not match features " + dims_text(features));
  // The tap kernels (rotated, position-sensitive, precise) store pixel rows
  // and columns in 32 bits.
  const bool taps = op == Op::kRotated || is_position_sensitive(op) || op == Op::kPrPool;
  if (taps && (s.height > INT32_MAX || s.width > INT32_MAX))
    return ffi::Error::InvalidArgument("jax_roi: features " + dims_text(features) +
                                       " are over 2**31 - 1 pixels high or wide");
  problem->spatial_scale = static_cast<G>(g.spatial_scale);
  problem->sampling_ratio = g.sampling_ratio;
  // ps_roi_align always shifts by half a pixel (torchvision's arithmetic).
  problem->aligned = g.aligned || op == Op::kPsAlign;
  problem->clockwise = g.clockwise;
  return ffi::Error::Success();
}

inline ffi::Error check_same_dims(ffi::Span<const int64_t> a, ffi::Span<const int64_t> b,
                                  const char* what) {
  bool same = a.size() == b.size();
  for (size_t i = 0; same && i < a.size(); ++i) same = a[i] == b[i];
  if (same) return ffi::Error::Success();
  return ffi::Error::InvalidArgument(std::string("jax_roi: ") + what + " " + dims_text(a) +
                                     " must match " + dims_text(b));
}

template <typename T>
constexpr ffi::DataType feature_type() {
  if constexpr (std::is_same_v<T, bfloat16_t>) return ffi::DataType::BF16;
  else if constexpr (std::is_same_v<T, float16_t>) return ffi::DataType::F16;
  else return geometry_type<T>();
}

// The gradient with respect to features is accumulated in the geometry type
// (float32 for 16-bit features) and returned in it, or, by a backend that
// narrows it itself (`may_narrow`), in the features' 16-bit type: then
// *narrow is set.
template <typename T, typename G>
ffi::Error check_gradient_type(const ffi::AnyBuffer& grad, bool may_narrow, bool* narrow) {
  *narrow = !std::is_same_v<T, G> && may_narrow && grad.element_type() == feature_type<T>();
  if (*narrow || grad.element_type() == geometry_type<G>()) return ffi::Error::Success();
  return ffi::Error::InvalidArgument(
      may_narrow ? "jax_roi: the feature gradient must have the features' dtype, or float32 for "
                   "16-bit features"
                 : "jax_roi: the feature gradient must be float64 for float64 features, float32 "
                   "otherwise");
}

}  // namespace jax_roi
