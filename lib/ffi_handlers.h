// The FFI handlers, written once for every platform: they check buffers,
// build the Problem, pick the storage type and call the platform's Backend:
//   Backend::Binding / Context: the FFI context it binds (thread pool,
//     stream) and what the handler receives;
//   Backend::kCommandBufferCompatible: whether XLA may capture the handlers
//     in command buffers (CUDA graphs);
//   Backend::forward<op, T, G>(ctx, problem, features, out, argmax), argmax
//     null for the linear ops and for a max op's values alone;
//   Backend::backward<op, T, G>(ctx, problem, grad_out, argmax, grad_features),
//     which also zeroes grad_features;
//   Backend::box_jvp<op, T, G>(ctx, problem, features, argmax, roi_tangents,
//     out_tangent) and Backend::box_vjp<op, T, G>(ctx, problem, features,
//     argmax, grad_out, roi_cotangents): the derivative with respect to the
//     ROIs (elements/box_derivative.h), forward and reverse mode;
//   Backend::forward_levels / backward_levels / box_jvp_levels /
//     box_vjp_levels: the same over a pyramid (LevelProblems), with one map
//     and one gradient per level.
// kernel_entries<Backend>() lists every kernel of lib/kernel_list.h with
// its handler (or one part of them, for a module built in parts).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "ffi_problem.h"
#include "kernel_entry.h"
#include "kernel_list.h"
#include "xla/ffi/api/ffi.h"

namespace jax_roi {

template <typename T>
T* data_of(const ffi::AnyBuffer& b) { return reinterpret_cast<T*>(b.untyped_data()); }

// argmax is null for the linear ops; else it has the output's shape.
inline ffi::Error check_argmax(const ffi::Buffer<ffi::S32>* argmax,
                               ffi::Span<const int64_t> out_dims) {
  if (!argmax) return ffi::Error::Success();
  return check_same_dims(argmax->dimensions(), out_dims, "argmax");
}

template <typename Buffer>
auto argmax_data(Buffer* argmax) { return argmax ? argmax->typed_data() : nullptr; }

// f(tag, problem) for the storage type `type` (tag: a T) and the Problem of
// a single-map call: the checks, dispatch and problem every handler shares.
template <Op op, typename F>
ffi::Error with_problem(ffi::DataType type, ffi::Span<const int64_t> feature_dims,
                        const ffi::AnyBuffer& rois, ffi::Span<const int64_t> out_dims,
                        const Geometry& g, const F& f) {
  return dispatch_feature_type(type, [&](auto tag) -> ffi::Error {
    Problem<acc_t<decltype(tag)>> p;
    if (auto e = make_problem(op, feature_dims, rois, out_dims, g, &p); e.failure()) return e;
    return f(tag, p);
  });
}

template <typename Backend, Op op>
ffi::Error forward(typename Backend::Context& ctx, const ffi::AnyBuffer& features,
                   const ffi::AnyBuffer& rois, ffi::AnyBuffer& out,
                   ffi::Buffer<ffi::S32>* argmax, const Geometry& g) {
  if (out.element_type() != features.element_type())
    return ffi::Error::InvalidArgument("jax_roi: output dtype must equal the features dtype");
  if (auto e = check_argmax(argmax, out.dimensions()); e.failure()) return e;
  return with_problem<op>(features.element_type(), features.dimensions(), rois, out.dimensions(),
                          g, [&](auto tag, const auto& p) -> ffi::Error {
    using T = decltype(tag);
    return Backend::template forward<op, T, acc_t<T>>(ctx, p, data_of<T>(features),
                                                      data_of<T>(out), argmax_data(argmax));
  });
}

// run(R{}) with the type the feature gradient is stored in: the features'
// 16-bit T where check_gradient_type found it narrowed, the geometry type G
// otherwise (the only one a backend that does not narrow is compiled for).
template <typename Backend, typename T, typename G, typename Run>
ffi::Error with_gradient_storage(bool narrow, const Run& run) {
  if constexpr (Backend::kNarrowsGradient && !std::is_same_v<T, G>)
    if (narrow) return run(T{});
  return run(G{});
}

template <typename Backend, Op op>
ffi::Error backward(typename Backend::Context& ctx, const ffi::AnyBuffer& grad_out,
                    const ffi::AnyBuffer& rois, const ffi::Buffer<ffi::S32>* argmax,
                    ffi::AnyBuffer& grad_features, const Geometry& g) {
  if (auto e = check_argmax(argmax, grad_out.dimensions()); e.failure()) return e;
  return with_problem<op>(grad_out.element_type(), grad_features.dimensions(), rois,
                          grad_out.dimensions(), g, [&](auto tag, const auto& p) -> ffi::Error {
    using T = decltype(tag);
    using G = acc_t<T>;
    bool narrow;
    if (auto e = check_gradient_type<T, G>(grad_features, Backend::kNarrowsGradient, &narrow);
        e.failure())
      return e;
    return with_gradient_storage<Backend, T, G>(narrow, [&](auto result_tag) {
      using R = decltype(result_tag);
      return Backend::template backward<op, T, G>(ctx, p, data_of<T>(grad_out),
                                                  argmax_data(argmax), data_of<R>(grad_features));
    });
  });
}

// A buffer of the ROIs' shape and geometry type: their tangents or cotangents.
template <typename G>
ffi::Error check_roi_shaped(const ffi::AnyBuffer& rois, const ffi::AnyBuffer& b, const char* what) {
  if (b.element_type() != geometry_type<G>())
    return ffi::Error::InvalidArgument(std::string("jax_roi: ") + what + " must have the rois' dtype");
  return check_same_dims(b.dimensions(), rois.dimensions(), what);
}

template <typename Backend, Op op>
ffi::Error box_jvp(typename Backend::Context& ctx, const ffi::AnyBuffer& features,
                   const ffi::AnyBuffer& rois, const ffi::AnyBuffer& roi_tangents,
                   const ffi::Buffer<ffi::S32>* argmax, ffi::AnyBuffer& out, const Geometry& g) {
  if (out.element_type() != features.element_type())
    return ffi::Error::InvalidArgument("jax_roi: output dtype must equal the features dtype");
  if (auto e = check_argmax(argmax, out.dimensions()); e.failure()) return e;
  return with_problem<op>(features.element_type(), features.dimensions(), rois, out.dimensions(),
                          g, [&](auto tag, const auto& p) -> ffi::Error {
    using T = decltype(tag);
    using G = acc_t<T>;
    if (auto e = check_roi_shaped<G>(rois, roi_tangents, "roi tangents"); e.failure()) return e;
    return Backend::template box_jvp<op, T, G>(ctx, p, data_of<const T>(features),
                                            argmax_data(argmax), data_of<const G>(roi_tangents),
                                            data_of<T>(out));
  });
}

template <typename Backend, Op op>
ffi::Error box_vjp(typename Backend::Context& ctx, const ffi::AnyBuffer& features,
                   const ffi::AnyBuffer& rois, const ffi::AnyBuffer& grad_out,
                   const ffi::Buffer<ffi::S32>* argmax, ffi::AnyBuffer& roi_cotangents,
                   const Geometry& g) {
  if (grad_out.element_type() != features.element_type())
    return ffi::Error::InvalidArgument("jax_roi: grad_out dtype must equal the features dtype");
  if (auto e = check_argmax(argmax, grad_out.dimensions()); e.failure()) return e;
  return with_problem<op>(features.element_type(), features.dimensions(), rois,
                          grad_out.dimensions(), g, [&](auto tag, const auto& p) -> ffi::Error {
    using T = decltype(tag);
    using G = acc_t<T>;
    if (auto e = check_roi_shaped<G>(rois, roi_cotangents, "roi cotangents"); e.failure())
      return e;
    return Backend::template box_vjp<op, T, G>(ctx, p, data_of<const T>(features),
                                            argmax_data(argmax), data_of<const T>(grad_out),
                                            data_of<G>(roi_cotangents));
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
ffi::Error make_level_problem(Op op, int l, ffi::Span<const int64_t> map,
                              const ffi::AnyBuffer& rois, ffi::Span<const int64_t> pooled,
                              const LevelGeometry& g, LevelProblems<G>* lp) {
  Problem<G>& p = lp->level[l];
  const Geometry level{g.spatial_scales[l], g.sampling_ratio, g.aligned, false, g.channels_last};
  if (auto e = make_problem<G>(op, map, rois, pooled, level, &p);
      e.failure())
    return e;
  if (p.shape.num_images != lp->level[0].shape.num_images)
    return ffi::Error::InvalidArgument("jax_roi: the maps of a pyramid must share their images");
  return ffi::Error::Success();
}

// The problems and maps of a pyramid whose output (or its gradient) is
// `pooled`, each map of the pooled dtype T.
template <typename T, typename G>
ffi::Error level_maps(Op op, const ffi::AnyBuffer& rois, const ffi::Buffer<ffi::S32>& levels,
                      const ffi::RemainingArgs& maps, const ffi::AnyBuffer& pooled,
                      const LevelGeometry& g, LevelProblems<G>* lp, PerLevel<const T>* features) {
  if (auto e = start_levels<G>(rois, levels, maps.size(), g, lp); e.failure()) return e;
  for (int l = 0; l < lp->count; ++l) {
    auto map = maps.get<ffi::AnyBuffer>(l);
    if (map.has_error()) return map.error();
    if (map->element_type() != pooled.element_type())
      return ffi::Error::InvalidArgument("jax_roi: every map must have the output's dtype");
    if (auto e = make_level_problem<G>(op, l, map->dimensions(), rois, pooled.dimensions(), g, lp);
        e.failure())
      return e;
    features->data[l] = data_of<const T>(*map);
  }
  return ffi::Error::Success();
}

template <typename Backend, Op op>
ffi::Error forward_levels(typename Backend::Context& ctx, const ffi::AnyBuffer& rois,
                          const ffi::Buffer<ffi::S32>& levels, const ffi::RemainingArgs& maps,
                          ffi::AnyBuffer& out, ffi::Buffer<ffi::S32>* argmax,
                          const LevelGeometry& g) {
  if (auto e = check_argmax(argmax, out.dimensions()); e.failure()) return e;
  return dispatch_feature_type(out.element_type(), [&](auto tag) -> ffi::Error {
    using T = decltype(tag);
    using G = acc_t<T>;
    LevelProblems<G> lp{};
    PerLevel<const T> features{};
    if (auto e = level_maps<T>(op, rois, levels, maps, out, g, &lp, &features); e.failure())
      return e;
    return Backend::template forward_levels<op, T, G>(ctx, lp, features, data_of<T>(out),
                                                      argmax_data(argmax));
  });
}

template <typename Backend, Op op>
ffi::Error box_jvp_levels(typename Backend::Context& ctx, const ffi::AnyBuffer& rois,
                          const ffi::Buffer<ffi::S32>& levels, const ffi::AnyBuffer& roi_tangents,
                          const ffi::Buffer<ffi::S32>* argmax, const ffi::RemainingArgs& maps,
                          ffi::AnyBuffer& out, const LevelGeometry& g) {
  if (auto e = check_argmax(argmax, out.dimensions()); e.failure()) return e;
  return dispatch_feature_type(out.element_type(), [&](auto tag) -> ffi::Error {
    using T = decltype(tag);
    using G = acc_t<T>;
    LevelProblems<G> lp{};
    PerLevel<const T> features{};
    if (auto e = level_maps<T>(op, rois, levels, maps, out, g, &lp, &features); e.failure())
      return e;
    if (auto e = check_roi_shaped<G>(rois, roi_tangents, "roi tangents"); e.failure()) return e;
    return Backend::template box_jvp_levels<op, T, G>(
        ctx, lp, features, argmax_data(argmax),
        data_of<const G>(roi_tangents), data_of<T>(out));
  });
}

template <typename Backend, Op op>
ffi::Error box_vjp_levels(typename Backend::Context& ctx, const ffi::AnyBuffer& rois,
                          const ffi::Buffer<ffi::S32>& levels, const ffi::AnyBuffer& grad_out,
                          const ffi::Buffer<ffi::S32>* argmax, const ffi::RemainingArgs& maps,
                          ffi::AnyBuffer& roi_cotangents, const LevelGeometry& g) {
  if (auto e = check_argmax(argmax, grad_out.dimensions()); e.failure()) return e;
  return dispatch_feature_type(grad_out.element_type(), [&](auto tag) -> ffi::Error {
    using T = decltype(tag);
    using G = acc_t<T>;
    LevelProblems<G> lp{};
    PerLevel<const T> features{};
    if (auto e = level_maps<T>(op, rois, levels, maps, grad_out, g, &lp, &features); e.failure())
      return e;
    if (auto e = check_roi_shaped<G>(rois, roi_cotangents, "roi cotangents"); e.failure())
      return e;
    return Backend::template box_vjp_levels<op, T, G>(
        ctx, lp, features, argmax_data(argmax), data_of<const T>(grad_out),
        data_of<G>(roi_cotangents));
  });
}

template <typename Backend, Op op>
ffi::Error backward_levels(typename Backend::Context& ctx, const ffi::AnyBuffer& grad_out,
                           const ffi::AnyBuffer& rois, const ffi::Buffer<ffi::S32>& levels,
                           const ffi::Buffer<ffi::S32>* argmax, const ffi::RemainingRets& grads,
                           const LevelGeometry& g) {
  if (auto e = check_argmax(argmax, grad_out.dimensions()); e.failure()) return e;
  return dispatch_feature_type(grad_out.element_type(), [&](auto tag) -> ffi::Error {
    using T = decltype(tag);
    using G = acc_t<T>;
    LevelProblems<G> lp{};
    void* grad_maps[kMaxLevels] = {};
    bool narrow = false;
    if (auto e = start_levels<G>(rois, levels, grads.size(), g, &lp); e.failure()) return e;
    for (int l = 0; l < lp.count; ++l) {
      auto grad = grads.get<ffi::AnyBuffer>(l);
      if (grad.has_error()) return grad.error();
      bool narrow_level;
      if (auto e = check_gradient_type<T, G>(**grad, Backend::kNarrowsGradient, &narrow_level);
          e.failure())
        return e;
      if (l > 0 && narrow_level != narrow)
        return ffi::Error::InvalidArgument("jax_roi: the levels' gradients must share one dtype");
      narrow = narrow_level;
      if (auto e = make_level_problem<G>(op, l, (*grad)->dimensions(), rois, grad_out.dimensions(),
                                         g, &lp);
          e.failure())
        return e;
      grad_maps[l] = (*grad)->untyped_data();
    }
    return with_gradient_storage<Backend, T, G>(narrow, [&](auto result_tag) {
      using R = decltype(result_tag);
      PerLevel<R> typed{};
      for (int l = 0; l < lp.count; ++l) typed.data[l] = static_cast<R*>(grad_maps[l]);
      return Backend::template backward_levels<op, T, G>(ctx, lp, data_of<T>(grad_out),
                                                         argmax_data(argmax), typed);
    });
  });
}

// ------------------------------------------------------------ handlers
// One handler per kernel: its FFI binding (operands, results, attributes)
// is chosen by the op's kind (linear or with an argmax, one map or a
// pyramid) and written once here.

template <typename Backend, Op op>
struct Handler {
  using Ctx = typename Backend::Context;
  using Out = ffi::Result<ffi::AnyBuffer>;
  using Argmax = ffi::Result<ffi::Buffer<ffi::S32>>;
  using Int32 = ffi::Buffer<ffi::S32>;
  using Scales = ffi::Span<const double>;

  static auto bind() { return ffi::Ffi::Bind().template Ctx<typename Backend::Binding>(); }

  // The output alone: the linear ops' forward, and the max ops' when
  // their winners are not wanted (a call that is not differentiated).
  static ffi::Error forward_values(Ctx ctx, ffi::AnyBuffer features, ffi::AnyBuffer rois,
                                   Out out, Geometry g) {
    return forward<Backend, op>(ctx, features, rois, *out, nullptr, g);
  }
  static ffi::Error forward_argmax(Ctx ctx, ffi::AnyBuffer features, ffi::AnyBuffer rois,
                                   Out out, Argmax argmax, Geometry g) {
    return forward<Backend, op>(ctx, features, rois, *out, &*argmax, g);
  }
  static ffi::Error backward_linear(Ctx ctx, ffi::AnyBuffer grad_out, ffi::AnyBuffer rois,
                                    Out grad, Geometry g) {
    return backward<Backend, op>(ctx, grad_out, rois, nullptr, *grad, g);
  }
  static ffi::Error backward_argmax(Ctx ctx, ffi::AnyBuffer grad_out, ffi::AnyBuffer rois,
                                    Int32 argmax, Out grad, Geometry g) {
    return backward<Backend, op>(ctx, grad_out, rois, &argmax, *grad, g);
  }

  static ffi::Error levels_forward_values(Ctx ctx, ffi::AnyBuffer rois, Int32 levels,
                                          ffi::RemainingArgs maps, Out out, Scales scales,
                                          int64_t ratio, bool aligned, bool channels_last) {
    return forward_levels<Backend, op>(ctx, rois, levels, maps, *out, nullptr,
                                       {scales, ratio, aligned, channels_last});
  }
  static ffi::Error levels_forward_argmax(Ctx ctx, ffi::AnyBuffer rois, Int32 levels,
                                          ffi::RemainingArgs maps, Out out, Argmax argmax,
                                          Scales scales, int64_t ratio, bool aligned,
                                          bool channels_last) {
    return forward_levels<Backend, op>(ctx, rois, levels, maps, *out, &*argmax,
                                       {scales, ratio, aligned, channels_last});
  }
  static ffi::Error levels_backward_linear(Ctx ctx, ffi::AnyBuffer grad_out, ffi::AnyBuffer rois,
                                           Int32 levels, ffi::RemainingRets grads,
                                           Scales scales, int64_t ratio, bool aligned,
                                           bool channels_last) {
    return backward_levels<Backend, op>(ctx, grad_out, rois, levels, nullptr, grads,
                                        {scales, ratio, aligned, channels_last});
  }
  static ffi::Error levels_backward_argmax(Ctx ctx, ffi::AnyBuffer grad_out, ffi::AnyBuffer rois,
                                           Int32 levels, Int32 argmax, ffi::RemainingRets grads,
                                           Scales scales, int64_t ratio, bool aligned,
                                           bool channels_last) {
    return backward_levels<Backend, op>(ctx, grad_out, rois, levels, &argmax, grads,
                                        {scales, ratio, aligned, channels_last});
  }

  static ffi::Error box_jvp_linear(Ctx ctx, ffi::AnyBuffer features, ffi::AnyBuffer rois,
                                   ffi::AnyBuffer tangents, Out out, Geometry g) {
    return box_jvp<Backend, op>(ctx, features, rois, tangents, nullptr, *out, g);
  }
  static ffi::Error box_jvp_argmax(Ctx ctx, ffi::AnyBuffer features, ffi::AnyBuffer rois,
                                   ffi::AnyBuffer tangents, Int32 argmax, Out out, Geometry g) {
    return box_jvp<Backend, op>(ctx, features, rois, tangents, &argmax, *out, g);
  }
  static ffi::Error box_vjp_linear(Ctx ctx, ffi::AnyBuffer features, ffi::AnyBuffer rois,
                                   ffi::AnyBuffer grad_out, Out cotangents, Geometry g) {
    return box_vjp<Backend, op>(ctx, features, rois, grad_out, nullptr, *cotangents, g);
  }
  static ffi::Error box_vjp_argmax(Ctx ctx, ffi::AnyBuffer features, ffi::AnyBuffer rois,
                                   ffi::AnyBuffer grad_out, Int32 argmax, Out cotangents,
                                   Geometry g) {
    return box_vjp<Backend, op>(ctx, features, rois, grad_out, &argmax, *cotangents, g);
  }
  static ffi::Error levels_box_jvp_linear(Ctx ctx, ffi::AnyBuffer rois, Int32 levels,
                                          ffi::AnyBuffer tangents, ffi::RemainingArgs maps,
                                          Out out, Scales scales, int64_t ratio, bool aligned,
                                          bool channels_last) {
    return box_jvp_levels<Backend, op>(ctx, rois, levels, tangents, nullptr, maps, *out,
                                       {scales, ratio, aligned, channels_last});
  }
  static ffi::Error levels_box_jvp_argmax(Ctx ctx, ffi::AnyBuffer rois, Int32 levels,
                                          ffi::AnyBuffer tangents, Int32 argmax,
                                          ffi::RemainingArgs maps, Out out, Scales scales,
                                          int64_t ratio, bool aligned, bool channels_last) {
    return box_jvp_levels<Backend, op>(ctx, rois, levels, tangents, &argmax, maps, *out,
                                       {scales, ratio, aligned, channels_last});
  }
  static ffi::Error levels_box_vjp_linear(Ctx ctx, ffi::AnyBuffer rois, Int32 levels,
                                          ffi::AnyBuffer grad_out, ffi::RemainingArgs maps,
                                          Out cotangents, Scales scales, int64_t ratio,
                                          bool aligned, bool channels_last) {
    return box_vjp_levels<Backend, op>(ctx, rois, levels, grad_out, nullptr, maps, *cotangents,
                                       {scales, ratio, aligned, channels_last});
  }
  static ffi::Error levels_box_vjp_argmax(Ctx ctx, ffi::AnyBuffer rois, Int32 levels,
                                          ffi::AnyBuffer grad_out, Int32 argmax,
                                          ffi::RemainingArgs maps, Out cotangents, Scales scales,
                                          int64_t ratio, bool aligned, bool channels_last) {
    return box_vjp_levels<Backend, op>(ctx, rois, levels, grad_out, &argmax, maps, *cotangents,
                                       {scales, ratio, aligned, channels_last});
  }

  // The handler of a binding, with the FFI traits of the Backend.
  template <typename B, typename Fn>
  static auto handler(B&& binding, Fn fn) {
    if constexpr (Backend::kCommandBufferCompatible)
      return std::move(binding).To(fn, {ffi::Traits::kCmdBufferCompatible});
    else
      return std::move(binding).To(fn);
  }

  static auto forward_binding() {
    return bind().template Arg<ffi::AnyBuffer>().template Arg<ffi::AnyBuffer>().template Ret<ffi::AnyBuffer>();
  }
  static auto values_forward_handler() {
    return handler(forward_binding().template Attrs<Geometry>(), forward_values);
  }
  static auto forward_handler() {
    if constexpr (is_linear(op))
      return values_forward_handler();
    else
      return handler(forward_binding().template Ret<Int32>().template Attrs<Geometry>(),
                     forward_argmax);
  }
  static auto backward_handler() {
    auto b = bind().template Arg<ffi::AnyBuffer>().template Arg<ffi::AnyBuffer>();
    if constexpr (is_linear(op))
      return handler(std::move(b).template Ret<ffi::AnyBuffer>().template Attrs<Geometry>(),
                     backward_linear);
    else
      return handler(
          std::move(b).template Arg<Int32>().template Ret<ffi::AnyBuffer>().template Attrs<Geometry>(),
          backward_argmax);
  }
  template <typename B>
  static auto with_level_attrs(B&& b) {
    return std::move(b)
        .template Attr<Scales>("spatial_scales")
        .template Attr<int64_t>("sampling_ratio")
        .template Attr<bool>("aligned")
        .template Attr<bool>("channels_last");
  }
  static auto levels_forward_binding() {
    return bind().template Arg<ffi::AnyBuffer>().template Arg<Int32>().RemainingArgs().template Ret<ffi::AnyBuffer>();
  }
  static auto levels_values_forward_handler() {
    return handler(with_level_attrs(levels_forward_binding()), levels_forward_values);
  }
  static auto levels_forward_handler() {
    if constexpr (is_linear(op))
      return levels_values_forward_handler();
    else
      return handler(with_level_attrs(levels_forward_binding().template Ret<Int32>()),
                     levels_forward_argmax);
  }
  static auto levels_backward_handler() {
    auto b = bind().template Arg<ffi::AnyBuffer>().template Arg<ffi::AnyBuffer>().template Arg<Int32>();
    if constexpr (is_linear(op))
      return handler(with_level_attrs(std::move(b).RemainingRets()), levels_backward_linear);
    else
      return handler(with_level_attrs(std::move(b).template Arg<Int32>().RemainingRets()),
                     levels_backward_argmax);
  }
  // box_jvp(features, rois, roi_tangents[, argmax]) -> out_tangent;
  // box_vjp(features, rois, grad_out[, argmax]) -> roi_cotangents.
  static auto box_handler(bool forward_mode) {
    auto b = bind().template Arg<ffi::AnyBuffer>().template Arg<ffi::AnyBuffer>().template Arg<ffi::AnyBuffer>();
    if constexpr (is_linear(op))
      return handler(std::move(b).template Ret<ffi::AnyBuffer>().template Attrs<Geometry>(),
                     forward_mode ? box_jvp_linear : box_vjp_linear);
    else
      return handler(
          std::move(b).template Arg<Int32>().template Ret<ffi::AnyBuffer>().template Attrs<Geometry>(),
          forward_mode ? box_jvp_argmax : box_vjp_argmax);
  }
  // levels_box_jvp(rois, levels, roi_tangents[, argmax], *maps) -> out_tangent;
  // levels_box_vjp(rois, levels, grad_out[, argmax], *maps) -> roi_cotangents.
  static auto levels_box_handler(bool forward_mode) {
    auto b = bind().template Arg<ffi::AnyBuffer>().template Arg<Int32>().template Arg<ffi::AnyBuffer>();
    if constexpr (is_linear(op))
      return handler(with_level_attrs(std::move(b).RemainingArgs().template Ret<ffi::AnyBuffer>()),
                     forward_mode ? levels_box_jvp_linear : levels_box_vjp_linear);
    else
      return handler(with_level_attrs(std::move(b).template Arg<Int32>().RemainingArgs().template Ret<ffi::AnyBuffer>()),
                     forward_mode ? levels_box_jvp_argmax : levels_box_vjp_argmax);
  }
};

// The C entry point XLA calls for one handler, built on first use.
template <typename MakeHandler>
XLA_FFI_Error* call_handler(XLA_FFI_CallFrame* frame) {
  static auto* handler = MakeHandler::make().release();
  return handler->Call(frame);
}

// A module may compile its kernels in parts, one translation unit each, so
// that a build runs them in parallel: kernel_entries<Backend, kPart, kParts>
// holds the kernels that entry_part assigns to part kPart and instantiates
// no other. Consecutive kinds of an op go to different parts, so that the
// largest ones (roi_align avg's forward and pyramid forward) do too.
enum EntryKind : int {
  kForwardEntry, kBackwardEntry, kBoxJvpEntry, kBoxVjpEntry,
  kLevelsForwardEntry, kLevelsBackwardEntry, kLevelsBoxJvpEntry, kLevelsBoxVjpEntry,
  kValuesForwardEntry, kLevelsValuesForwardEntry
};
constexpr int entry_part(Op op, EntryKind kind, int parts) {
  return (static_cast<int>(op) + kind) % parts;
}

#define JAX_ROI_ENTRY(op, kind, name, make_expr)                               \
  if constexpr (entry_part(Op::op, kind, kParts) == kPart) {                   \
    struct Make {                                                              \
      static auto make() { return make_expr; }                                 \
    };                                                                         \
    entries.push_back({name, reinterpret_cast<void*>(&call_handler<Make>)});   \
  }

template <typename Backend, int kPart = 0, int kParts = 1>
std::vector<KernelEntry> kernel_entries() {
  static_assert(0 <= kPart && kPart < kParts);
  std::vector<KernelEntry> entries;
#define JAX_ROI_OP_ENTRIES(name, op)                                           \
  JAX_ROI_ENTRY(op, kForwardEntry, #name "_forward",                           \
                (Handler<Backend, Op::op>::forward_handler()))                 \
  JAX_ROI_ENTRY(op, kBackwardEntry, #name "_backward",                         \
                (Handler<Backend, Op::op>::backward_handler()))                \
  if constexpr (!is_linear(Op::op)) {                                          \
    JAX_ROI_ENTRY(op, kValuesForwardEntry, #name "_values_forward",            \
                  (Handler<Backend, Op::op>::values_forward_handler()))        \
  }
#define JAX_ROI_LEVEL_ENTRIES(name, op)                                        \
  JAX_ROI_ENTRY(op, kLevelsForwardEntry, #name "_levels_forward",              \
                (Handler<Backend, Op::op>::levels_forward_handler()))          \
  JAX_ROI_ENTRY(op, kLevelsBackwardEntry, #name "_levels_backward",            \
                (Handler<Backend, Op::op>::levels_backward_handler()))         \
  if constexpr (!is_linear(Op::op)) {                                          \
    JAX_ROI_ENTRY(op, kLevelsValuesForwardEntry, #name "_levels_values_forward", \
                  (Handler<Backend, Op::op>::levels_values_forward_handler()))   \
  }
#define JAX_ROI_BOX_ENTRIES(name, op)                                          \
  JAX_ROI_ENTRY(op, kBoxJvpEntry, #name "_box_jvp",                            \
                (Handler<Backend, Op::op>::box_handler(true)))                 \
  JAX_ROI_ENTRY(op, kBoxVjpEntry, #name "_box_vjp",                            \
                (Handler<Backend, Op::op>::box_handler(false)))
#define JAX_ROI_LEVEL_BOX_ENTRIES(name, op)                                    \
  JAX_ROI_ENTRY(op, kLevelsBoxJvpEntry, #name "_levels_box_jvp",               \
                (Handler<Backend, Op::op>::levels_box_handler(true)))          \
  JAX_ROI_ENTRY(op, kLevelsBoxVjpEntry, #name "_levels_box_vjp",               \
                (Handler<Backend, Op::op>::levels_box_handler(false)))
  JAX_ROI_OPS(JAX_ROI_OP_ENTRIES)
  JAX_ROI_BOX_OPS(JAX_ROI_BOX_ENTRIES)
  JAX_ROI_LEVEL_OPS(JAX_ROI_LEVEL_ENTRIES)
  JAX_ROI_LEVEL_OPS(JAX_ROI_LEVEL_BOX_ENTRIES)
#undef JAX_ROI_OP_ENTRIES
#undef JAX_ROI_BOX_ENTRIES
#undef JAX_ROI_LEVEL_ENTRIES
#undef JAX_ROI_LEVEL_BOX_ENTRIES
  return entries;
}

#undef JAX_ROI_ENTRY

}  // namespace jax_roi
