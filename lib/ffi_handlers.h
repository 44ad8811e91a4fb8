// Handler bodies shared by every platform: they check buffers, build the
// Problem, pick the storage type and call the platform's Backend:
//   Backend::Context: the FFI context it runs in (thread pool, stream);
//   Backend::forward<op, T, G>(ctx, problem, features, out, argmax);
//   Backend::backward<op, T, G>(ctx, problem, grad_out, argmax, grad_features),
//     which also zeroes grad_features;
//   Backend::forward_levels / backward_levels: the same over a pyramid
//     (LevelProblems), with one map and one gradient per level.
#pragma once

#include <cstdint>
#include <string>

#include "ffi_problem.h"
#include "roi_elements.h"
#include "xla/ffi/api/ffi.h"

namespace jax_roi {

template <typename T>
T* data_of(const ffi::AnyBuffer& b) { return reinterpret_cast<T*>(b.untyped_data()); }

struct Geometry {
  double spatial_scale;
  int64_t sampling_ratio;
  bool aligned;
  bool channels_last;
};

// argmax is null for roi_align "avg".
template <typename Backend, Op op>
ffi::Error forward(typename Backend::Context& ctx, const ffi::AnyBuffer& features,
                   const ffi::AnyBuffer& rois, ffi::AnyBuffer& out,
                   ffi::Buffer<ffi::S32>* argmax, const Geometry& g) {
  if (out.element_type() != features.element_type())
    return ffi::Error::InvalidArgument("jax_roi: output dtype must equal the features dtype");
  if (argmax)
    if (auto e = check_same_dims(argmax->dimensions(), out.dimensions(), "argmax"); e.failure())
      return e;
  return dispatch_feature_type(features.element_type(), [&](auto tag) -> ffi::Error {
    using T = decltype(tag);
    using G = acc_t<T>;
    Problem<G> p;
    if (auto e = make_problem<G>(features.dimensions(), rois, out.dimensions(), g.channels_last,
                                 g.spatial_scale, g.sampling_ratio, g.aligned, &p);
        e.failure())
      return e;
    return Backend::template forward<op, T, G>(ctx, p, data_of<T>(features), data_of<T>(out),
                                               argmax ? argmax->typed_data() : nullptr);
  });
}

template <typename Backend, Op op>
ffi::Error backward(typename Backend::Context& ctx, const ffi::AnyBuffer& grad_out,
                    const ffi::AnyBuffer& rois, const ffi::Buffer<ffi::S32>* argmax,
                    ffi::AnyBuffer& grad_features, const Geometry& g) {
  if (argmax)
    if (auto e = check_same_dims(argmax->dimensions(), grad_out.dimensions(), "argmax");
        e.failure())
      return e;
  return dispatch_feature_type(grad_out.element_type(), [&](auto tag) -> ffi::Error {
    using T = decltype(tag);
    using G = acc_t<T>;
    if (auto e = check_gradient_type<G>(grad_features); e.failure()) return e;
    Problem<G> p;
    if (auto e = make_problem<G>(grad_features.dimensions(), rois, grad_out.dimensions(),
                                 g.channels_last, g.spatial_scale, g.sampling_ratio, g.aligned,
                                 &p);
        e.failure())
      return e;
    return Backend::template backward<op, T, G>(ctx, p, data_of<T>(grad_out),
                                                argmax ? argmax->typed_data() : nullptr,
                                                data_of<G>(grad_features));
  });
}

// ---------------------------------------------------------- pyramids
// A pyramid call has the ROIs, an int32 level per ROI, then the maps (or,
// backward, their gradients) one per level, finest first, each with its
// own spatial scale. Every level shares the ROIs, the output and the
// images and channels of the maps.

struct LevelGeometry {
  ffi::Span<const double> spatial_scales;
  int64_t sampling_ratio;
  bool aligned;
  bool channels_last;
};

// Checks the level count and the levels buffer, and starts lp (whose
// level[i] make_level_problem then fills).
template <typename G>
ffi::Error start_levels(const ffi::AnyBuffer& rois, const ffi::Buffer<ffi::S32>& levels,
                        size_t count, const LevelGeometry& g, LevelProblems<G>* lp) {
  if (count < 1 || count > static_cast<size_t>(kMaxLevels))
    return ffi::Error::InvalidArgument("jax_roi: a pyramid must have 1 to " +
                                       std::to_string(kMaxLevels) + " maps, got " +
                                       std::to_string(count));
  if (g.spatial_scales.size() != count)
    return ffi::Error::InvalidArgument("jax_roi: a pyramid needs one spatial scale per map");
  auto roi_dims = rois.dimensions();
  if (roi_dims.size() == 0) return ffi::Error::InvalidArgument("jax_roi: rois must not be scalar");
  if (auto e = check_same_dims(levels.dimensions(), roi_dims.first(roi_dims.size() - 1),
                               "levels");
      e.failure())
    return e;
  lp->count = static_cast<int>(count);
  lp->level_of_roi = levels.typed_data();
  return ffi::Error::Success();
}

template <typename G>
ffi::Error make_level_problem(int l, ffi::Span<const int64_t> map, const ffi::AnyBuffer& rois,
                              ffi::Span<const int64_t> pooled, const LevelGeometry& g,
                              LevelProblems<G>* lp) {
  Problem<G>& p = lp->level[l];
  if (auto e = make_problem<G>(map, rois, pooled, g.channels_last, g.spatial_scales[l],
                               g.sampling_ratio, g.aligned, &p);
      e.failure())
    return e;
  if (p.shape.num_images != lp->level[0].shape.num_images)
    return ffi::Error::InvalidArgument("jax_roi: the maps of a pyramid must share their images");
  return ffi::Error::Success();
}

template <typename Backend, Op op>
ffi::Error forward_levels(typename Backend::Context& ctx, const ffi::AnyBuffer& rois,
                          const ffi::Buffer<ffi::S32>& levels, const ffi::RemainingArgs& maps,
                          ffi::AnyBuffer& out, ffi::Buffer<ffi::S32>* argmax,
                          const LevelGeometry& g) {
  if (argmax)
    if (auto e = check_same_dims(argmax->dimensions(), out.dimensions(), "argmax"); e.failure())
      return e;
  return dispatch_feature_type(out.element_type(), [&](auto tag) -> ffi::Error {
    using T = decltype(tag);
    using G = acc_t<T>;
    LevelProblems<G> lp{};
    PerLevel<const T> features{};
    if (auto e = start_levels<G>(rois, levels, maps.size(), g, &lp); e.failure()) return e;
    for (int l = 0; l < lp.count; ++l) {
      auto map = maps.get<ffi::AnyBuffer>(l);
      if (map.has_error()) return map.error();
      if (map->element_type() != out.element_type())
        return ffi::Error::InvalidArgument("jax_roi: every map must have the output's dtype");
      if (auto e = make_level_problem<G>(l, map->dimensions(), rois, out.dimensions(), g, &lp);
          e.failure())
        return e;
      features.data[l] = data_of<const T>(*map);
    }
    return Backend::template forward_levels<op, T, G>(ctx, lp, features, data_of<T>(out),
                                                      argmax ? argmax->typed_data() : nullptr);
  });
}

template <typename Backend, Op op>
ffi::Error backward_levels(typename Backend::Context& ctx, const ffi::AnyBuffer& grad_out,
                           const ffi::AnyBuffer& rois, const ffi::Buffer<ffi::S32>& levels,
                           const ffi::Buffer<ffi::S32>* argmax, const ffi::RemainingRets& grads,
                           const LevelGeometry& g) {
  if (argmax)
    if (auto e = check_same_dims(argmax->dimensions(), grad_out.dimensions(), "argmax");
        e.failure())
      return e;
  return dispatch_feature_type(grad_out.element_type(), [&](auto tag) -> ffi::Error {
    using T = decltype(tag);
    using G = acc_t<T>;
    LevelProblems<G> lp{};
    PerLevel<G> grad_maps{};
    if (auto e = start_levels<G>(rois, levels, grads.size(), g, &lp); e.failure()) return e;
    for (int l = 0; l < lp.count; ++l) {
      auto grad = grads.get<ffi::AnyBuffer>(l);
      if (grad.has_error()) return grad.error();
      if (auto e = check_gradient_type<G>(**grad); e.failure()) return e;
      if (auto e = make_level_problem<G>(l, (*grad)->dimensions(), rois, grad_out.dimensions(),
                                         g, &lp);
          e.failure())
        return e;
      grad_maps.data[l] = data_of<G>(**grad);
    }
    return Backend::template backward_levels<op, T, G>(
        ctx, lp, data_of<T>(grad_out), argmax ? argmax->typed_data() : nullptr, grad_maps);
  });
}

// The six handlers' signatures, as the FFI binds them.
template <typename Backend>
struct Handlers {
  using Ctx = typename Backend::Context;
  using Out = ffi::Result<ffi::AnyBuffer>;
  using Argmax = ffi::Result<ffi::Buffer<ffi::S32>>;

  static ffi::Error AlignAvgForward(Ctx ctx, ffi::AnyBuffer features, ffi::AnyBuffer rois,
                                    Out out, double scale, int64_t ratio, bool aligned,
                                    bool channels_last) {
    return forward<Backend, Op::kAlignAvg>(ctx, features, rois, *out, nullptr,
                                           {scale, ratio, aligned, channels_last});
  }
  static ffi::Error AlignAvgBackward(Ctx ctx, ffi::AnyBuffer grad_out, ffi::AnyBuffer rois,
                                     Out grad, double scale, int64_t ratio, bool aligned,
                                     bool channels_last) {
    return backward<Backend, Op::kAlignAvg>(ctx, grad_out, rois, nullptr, *grad,
                                            {scale, ratio, aligned, channels_last});
  }
  static ffi::Error AlignMaxForward(Ctx ctx, ffi::AnyBuffer features, ffi::AnyBuffer rois,
                                    Out out, Argmax argmax, double scale, int64_t ratio,
                                    bool aligned, bool channels_last) {
    return forward<Backend, Op::kAlignMax>(ctx, features, rois, *out, &*argmax,
                                           {scale, ratio, aligned, channels_last});
  }
  static ffi::Error AlignMaxBackward(Ctx ctx, ffi::AnyBuffer grad_out, ffi::AnyBuffer rois,
                                     ffi::Buffer<ffi::S32> argmax, Out grad, double scale,
                                     int64_t ratio, bool aligned, bool channels_last) {
    return backward<Backend, Op::kAlignMax>(ctx, grad_out, rois, &argmax, *grad,
                                            {scale, ratio, aligned, channels_last});
  }
  static ffi::Error PoolForward(Ctx ctx, ffi::AnyBuffer features, ffi::AnyBuffer rois, Out out,
                                Argmax argmax, double scale, bool channels_last) {
    return forward<Backend, Op::kPool>(ctx, features, rois, *out, &*argmax,
                                       {scale, 0, false, channels_last});
  }
  static ffi::Error PoolBackward(Ctx ctx, ffi::AnyBuffer grad_out, ffi::AnyBuffer rois,
                                 ffi::Buffer<ffi::S32> argmax, Out grad, double spatial_scale,
                                 bool channels_last) {
    // The scale gives the CPU kernel each bin's pixel window, which it
    // sweeps instead of scattering when the window is small.
    return backward<Backend, Op::kPool>(ctx, grad_out, rois, &argmax, *grad,
                                        {spatial_scale, 0, false, channels_last});
  }

  using Levels = ffi::Buffer<ffi::S32>;
  using Scales = ffi::Span<const double>;

  static ffi::Error AlignAvgLevelsForward(Ctx ctx, ffi::AnyBuffer rois, Levels levels,
                                          ffi::RemainingArgs maps, Out out, Scales scales,
                                          int64_t ratio, bool aligned, bool channels_last) {
    return forward_levels<Backend, Op::kAlignAvg>(ctx, rois, levels, maps, *out, nullptr,
                                                  {scales, ratio, aligned, channels_last});
  }
  static ffi::Error AlignAvgLevelsBackward(Ctx ctx, ffi::AnyBuffer grad_out, ffi::AnyBuffer rois,
                                           Levels levels, ffi::RemainingRets grads,
                                           Scales scales, int64_t ratio, bool aligned,
                                           bool channels_last) {
    return backward_levels<Backend, Op::kAlignAvg>(ctx, grad_out, rois, levels, nullptr, grads,
                                                   {scales, ratio, aligned, channels_last});
  }
  static ffi::Error AlignMaxLevelsForward(Ctx ctx, ffi::AnyBuffer rois, Levels levels,
                                          ffi::RemainingArgs maps, Out out, Argmax argmax,
                                          Scales scales, int64_t ratio, bool aligned,
                                          bool channels_last) {
    return forward_levels<Backend, Op::kAlignMax>(ctx, rois, levels, maps, *out, &*argmax,
                                                  {scales, ratio, aligned, channels_last});
  }
  static ffi::Error AlignMaxLevelsBackward(Ctx ctx, ffi::AnyBuffer grad_out, ffi::AnyBuffer rois,
                                           Levels levels, ffi::Buffer<ffi::S32> argmax,
                                           ffi::RemainingRets grads, Scales scales,
                                           int64_t ratio, bool aligned, bool channels_last) {
    return backward_levels<Backend, Op::kAlignMax>(ctx, grad_out, rois, levels, &argmax, grads,
                                                   {scales, ratio, aligned, channels_last});
  }
};

}  // namespace jax_roi

// Defines the six exported handler symbols <Prefix>AlignAvgForward, ... for
// a Backend whose context binds as CtxBinding (e.g. ffi::ThreadPool).
#define JAX_ROI_ALIGN_ATTRS                                                   \
  .Attr<double>("spatial_scale").Attr<int64_t>("sampling_ratio").Attr<bool>( \
      "aligned").Attr<bool>("channels_last")

#define JAX_ROI_LEVEL_ATTRS                                                      \
  .Attr<::xla::ffi::Span<const double>>("spatial_scales")                       \
      .Attr<int64_t>("sampling_ratio")                                          \
      .Attr<bool>("aligned")                                                    \
      .Attr<bool>("channels_last")

#define JAX_ROI_DEFINE_HANDLERS(Prefix, Backend, CtxBinding, ...)                              \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(                                                               \
      Prefix##AlignAvgForward, ::jax_roi::Handlers<Backend>::AlignAvgForward,                  \
      ::xla::ffi::Ffi::Bind()                                                                  \
          .Ctx<CtxBinding>()                                                                   \
          .Arg<::xla::ffi::AnyBuffer>()                                                        \
          .Arg<::xla::ffi::AnyBuffer>()                                                        \
          .Ret<::xla::ffi::AnyBuffer>() JAX_ROI_ALIGN_ATTRS, ##__VA_ARGS__);                   \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(                                                               \
      Prefix##AlignAvgBackward, ::jax_roi::Handlers<Backend>::AlignAvgBackward,                \
      ::xla::ffi::Ffi::Bind()                                                                  \
          .Ctx<CtxBinding>()                                                                   \
          .Arg<::xla::ffi::AnyBuffer>()                                                        \
          .Arg<::xla::ffi::AnyBuffer>()                                                        \
          .Ret<::xla::ffi::AnyBuffer>() JAX_ROI_ALIGN_ATTRS, ##__VA_ARGS__);                   \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(                                                               \
      Prefix##AlignMaxForward, ::jax_roi::Handlers<Backend>::AlignMaxForward,                  \
      ::xla::ffi::Ffi::Bind()                                                                  \
          .Ctx<CtxBinding>()                                                                   \
          .Arg<::xla::ffi::AnyBuffer>()                                                        \
          .Arg<::xla::ffi::AnyBuffer>()                                                        \
          .Ret<::xla::ffi::AnyBuffer>()                                                        \
          .Ret<::xla::ffi::Buffer<::xla::ffi::S32>>() JAX_ROI_ALIGN_ATTRS, ##__VA_ARGS__);     \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(                                                               \
      Prefix##AlignMaxBackward, ::jax_roi::Handlers<Backend>::AlignMaxBackward,                \
      ::xla::ffi::Ffi::Bind()                                                                  \
          .Ctx<CtxBinding>()                                                                   \
          .Arg<::xla::ffi::AnyBuffer>()                                                        \
          .Arg<::xla::ffi::AnyBuffer>()                                                        \
          .Arg<::xla::ffi::Buffer<::xla::ffi::S32>>()                                          \
          .Ret<::xla::ffi::AnyBuffer>() JAX_ROI_ALIGN_ATTRS, ##__VA_ARGS__);                   \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(                                                               \
      Prefix##PoolForward, ::jax_roi::Handlers<Backend>::PoolForward,                          \
      ::xla::ffi::Ffi::Bind()                                                                  \
          .Ctx<CtxBinding>()                                                                   \
          .Arg<::xla::ffi::AnyBuffer>()                                                        \
          .Arg<::xla::ffi::AnyBuffer>()                                                        \
          .Ret<::xla::ffi::AnyBuffer>()                                                        \
          .Ret<::xla::ffi::Buffer<::xla::ffi::S32>>()                                          \
          .Attr<double>("spatial_scale")                                                       \
          .Attr<bool>("channels_last"),                                                        \
      ##__VA_ARGS__);                                                                          \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(                                                               \
      Prefix##PoolBackward, ::jax_roi::Handlers<Backend>::PoolBackward,                        \
      ::xla::ffi::Ffi::Bind()                                                                  \
          .Ctx<CtxBinding>()                                                                   \
          .Arg<::xla::ffi::AnyBuffer>()                                                        \
          .Arg<::xla::ffi::AnyBuffer>()                                                        \
          .Arg<::xla::ffi::Buffer<::xla::ffi::S32>>()                                          \
          .Ret<::xla::ffi::AnyBuffer>()                                                        \
          .Attr<double>("spatial_scale")                                                       \
          .Attr<bool>("channels_last"),                                                        \
      ##__VA_ARGS__);                                                                                         \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(                                                               \
      Prefix##AlignAvgLevelsForward, ::jax_roi::Handlers<Backend>::AlignAvgLevelsForward,      \
      ::xla::ffi::Ffi::Bind()                                                                  \
          .Ctx<CtxBinding>()                                                                   \
          .Arg<::xla::ffi::AnyBuffer>()                                                        \
          .Arg<::xla::ffi::Buffer<::xla::ffi::S32>>()                                          \
          .RemainingArgs()                                                                     \
          .Ret<::xla::ffi::AnyBuffer>() JAX_ROI_LEVEL_ATTRS, ##__VA_ARGS__);                   \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(                                                               \
      Prefix##AlignAvgLevelsBackward, ::jax_roi::Handlers<Backend>::AlignAvgLevelsBackward,    \
      ::xla::ffi::Ffi::Bind()                                                                  \
          .Ctx<CtxBinding>()                                                                   \
          .Arg<::xla::ffi::AnyBuffer>()                                                        \
          .Arg<::xla::ffi::AnyBuffer>()                                                        \
          .Arg<::xla::ffi::Buffer<::xla::ffi::S32>>()                                          \
          .RemainingRets() JAX_ROI_LEVEL_ATTRS, ##__VA_ARGS__);                                \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(                                                               \
      Prefix##AlignMaxLevelsForward, ::jax_roi::Handlers<Backend>::AlignMaxLevelsForward,      \
      ::xla::ffi::Ffi::Bind()                                                                  \
          .Ctx<CtxBinding>()                                                                   \
          .Arg<::xla::ffi::AnyBuffer>()                                                        \
          .Arg<::xla::ffi::Buffer<::xla::ffi::S32>>()                                          \
          .RemainingArgs()                                                                     \
          .Ret<::xla::ffi::AnyBuffer>()                                                        \
          .Ret<::xla::ffi::Buffer<::xla::ffi::S32>>() JAX_ROI_LEVEL_ATTRS, ##__VA_ARGS__);     \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(                                                               \
      Prefix##AlignMaxLevelsBackward, ::jax_roi::Handlers<Backend>::AlignMaxLevelsBackward,    \
      ::xla::ffi::Ffi::Bind()                                                                  \
          .Ctx<CtxBinding>()                                                                   \
          .Arg<::xla::ffi::AnyBuffer>()                                                        \
          .Arg<::xla::ffi::AnyBuffer>()                                                        \
          .Arg<::xla::ffi::Buffer<::xla::ffi::S32>>()                                          \
          .Arg<::xla::ffi::Buffer<::xla::ffi::S32>>()                                          \
          .RemainingRets() JAX_ROI_LEVEL_ATTRS, ##__VA_ARGS__)
