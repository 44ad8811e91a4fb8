// XLA FFI handlers for the CPU kernels, and the nanobind module that hands
// their addresses to Python.
#include <cstdint>

#include "cpu/roi_kernels_cpu.h"
#include "ffi_problem.h"
#include "nanobind/nanobind.h"
#include "xla/ffi/api/ffi.h"

namespace nb = nanobind;
namespace ffi = xla::ffi;

namespace jax_roi {
namespace {

template <typename T>
T* data_of(const ffi::AnyBuffer& b) { return reinterpret_cast<T*>(b.untyped_data()); }

template <typename T>
T* data_of(ffi::Result<ffi::AnyBuffer>& b) { return reinterpret_cast<T*>(b->untyped_data()); }

ffi::Error check_output_type(const ffi::AnyBuffer& features, ffi::Result<ffi::AnyBuffer>& out) {
  if (out->element_type() != features.element_type())
    return ffi::Error::InvalidArgument("jax_roi: output dtype must equal the features dtype");
  return ffi::Error::Success();
}

// A max-mode forward: features, rois -> (out, argmax).
template <typename Kernel>
ffi::Error max_forward(ffi::ThreadPool& pool, const ffi::AnyBuffer& features,
                       const ffi::AnyBuffer& rois, ffi::Result<ffi::AnyBuffer>& out,
                       ffi::Result<ffi::Buffer<ffi::S32>>& argmax, double spatial_scale,
                       int64_t sampling_ratio, bool aligned, bool channels_last,
                       const Kernel& kernel) {
  if (auto e = check_output_type(features, out); e.failure()) return e;
  if (auto e = check_same_dims(argmax->dimensions(), out->dimensions(), "argmax"); e.failure())
    return e;
  return dispatch_feature_type(features.element_type(), [&](auto tag) -> ffi::Error {
    using T = decltype(tag);
    using G = acc_t<T>;
    Problem<G> p;
    if (auto e = make_problem<G>(features.dimensions(), rois, out->dimensions(), channels_last,
                                 spatial_scale, sampling_ratio, aligned, &p);
        e.failure())
      return e;
    kernel(pool, p, data_of<T>(features), data_of<T>(out), argmax->typed_data());
    return ffi::Error::Success();
  });
}

// A max-mode backward: grad_out, rois, argmax -> grad_features.
template <typename Kernel>
ffi::Error max_backward(ffi::ThreadPool& pool, const ffi::AnyBuffer& grad_out,
                        const ffi::AnyBuffer& rois, const ffi::Buffer<ffi::S32>& argmax,
                        ffi::Result<ffi::AnyBuffer>& grad_features, double spatial_scale,
                        int64_t sampling_ratio, bool aligned, bool channels_last,
                        const Kernel& kernel) {
  if (auto e = check_same_dims(argmax.dimensions(), grad_out.dimensions(), "argmax");
      e.failure())
    return e;
  return dispatch_feature_type(grad_out.element_type(), [&](auto tag) -> ffi::Error {
    using T = decltype(tag);
    using G = acc_t<T>;
    if (auto e = check_gradient_type<G>(*grad_features); e.failure()) return e;
    Problem<G> p;
    if (auto e = make_problem<G>(grad_features->dimensions(), rois, grad_out.dimensions(),
                                 channels_last, spatial_scale, sampling_ratio, aligned, &p);
        e.failure())
      return e;
    kernel(pool, p, data_of<T>(grad_out), argmax.typed_data(), data_of<G>(grad_features));
    return ffi::Error::Success();
  });
}

ffi::Error RoiAlignAvgForwardImpl(ffi::ThreadPool pool, ffi::AnyBuffer features,
                                  ffi::AnyBuffer rois, ffi::Result<ffi::AnyBuffer> out,
                                  double spatial_scale, int64_t sampling_ratio, bool aligned,
                                  bool channels_last) {
  if (auto e = check_output_type(features, out); e.failure()) return e;
  return dispatch_feature_type(features.element_type(), [&](auto tag) -> ffi::Error {
    using T = decltype(tag);
    using G = acc_t<T>;
    Problem<G> p;
    if (auto e = make_problem<G>(features.dimensions(), rois, out->dimensions(), channels_last,
                                 spatial_scale, sampling_ratio, aligned, &p);
        e.failure())
      return e;
    roi_align_avg_forward_cpu(pool, p, data_of<T>(features), data_of<T>(out));
    return ffi::Error::Success();
  });
}

ffi::Error RoiAlignAvgBackwardImpl(ffi::ThreadPool pool, ffi::AnyBuffer grad_out,
                                   ffi::AnyBuffer rois,
                                   ffi::Result<ffi::AnyBuffer> grad_features,
                                   double spatial_scale, int64_t sampling_ratio, bool aligned,
                                   bool channels_last) {
  return dispatch_feature_type(grad_out.element_type(), [&](auto tag) -> ffi::Error {
    using T = decltype(tag);
    using G = acc_t<T>;
    if (auto e = check_gradient_type<G>(*grad_features); e.failure()) return e;
    Problem<G> p;
    if (auto e = make_problem<G>(grad_features->dimensions(), rois, grad_out.dimensions(),
                                 channels_last, spatial_scale, sampling_ratio, aligned, &p);
        e.failure())
      return e;
    roi_align_avg_backward_cpu(pool, p, data_of<T>(grad_out), data_of<G>(grad_features));
    return ffi::Error::Success();
  });
}

ffi::Error RoiAlignMaxForwardImpl(ffi::ThreadPool pool, ffi::AnyBuffer features,
                                  ffi::AnyBuffer rois, ffi::Result<ffi::AnyBuffer> out,
                                  ffi::Result<ffi::Buffer<ffi::S32>> argmax,
                                  double spatial_scale, int64_t sampling_ratio, bool aligned,
                                  bool channels_last) {
  return max_forward(pool, features, rois, out, argmax, spatial_scale, sampling_ratio, aligned,
                     channels_last, [](auto&&... args) { roi_align_max_forward_cpu(args...); });
}

ffi::Error RoiAlignMaxBackwardImpl(ffi::ThreadPool pool, ffi::AnyBuffer grad_out,
                                   ffi::AnyBuffer rois, ffi::Buffer<ffi::S32> argmax,
                                   ffi::Result<ffi::AnyBuffer> grad_features,
                                   double spatial_scale, int64_t sampling_ratio, bool aligned,
                                   bool channels_last) {
  return max_backward(pool, grad_out, rois, argmax, grad_features, spatial_scale,
                      sampling_ratio, aligned, channels_last,
                      [](auto&&... args) { roi_align_max_backward_cpu(args...); });
}

ffi::Error RoiPoolForwardImpl(ffi::ThreadPool pool, ffi::AnyBuffer features,
                              ffi::AnyBuffer rois, ffi::Result<ffi::AnyBuffer> out,
                              ffi::Result<ffi::Buffer<ffi::S32>> argmax, double spatial_scale,
                              bool channels_last) {
  return max_forward(pool, features, rois, out, argmax, spatial_scale, 0, false, channels_last,
                     [](auto&&... args) { roi_pool_forward_cpu(args...); });
}

ffi::Error RoiPoolBackwardImpl(ffi::ThreadPool pool, ffi::AnyBuffer grad_out,
                               ffi::AnyBuffer rois, ffi::Buffer<ffi::S32> argmax,
                               ffi::Result<ffi::AnyBuffer> grad_features, bool channels_last) {
  return max_backward(pool, grad_out, rois, argmax, grad_features, 1.0, 0, false,
                      channels_last, [](auto&&... args) { roi_pool_backward_cpu(args...); });
}

}  // namespace
}  // namespace jax_roi

using namespace jax_roi;

#define ALIGN_ATTRS                            \
  .Attr<double>("spatial_scale")               \
      .Attr<int64_t>("sampling_ratio")         \
      .Attr<bool>("aligned")                   \
      .Attr<bool>("channels_last")

XLA_FFI_DEFINE_HANDLER_SYMBOL(RoiAlignAvgForward, RoiAlignAvgForwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>() ALIGN_ATTRS);

XLA_FFI_DEFINE_HANDLER_SYMBOL(RoiAlignAvgBackward, RoiAlignAvgBackwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>() ALIGN_ATTRS);

XLA_FFI_DEFINE_HANDLER_SYMBOL(RoiAlignMaxForward, RoiAlignMaxForwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::Buffer<ffi::S32>>() ALIGN_ATTRS);

XLA_FFI_DEFINE_HANDLER_SYMBOL(RoiAlignMaxBackward, RoiAlignMaxBackwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::AnyBuffer>() ALIGN_ATTRS);

XLA_FFI_DEFINE_HANDLER_SYMBOL(RoiPoolForward, RoiPoolForwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::Buffer<ffi::S32>>()
                                  .Attr<double>("spatial_scale")
                                  .Attr<bool>("channels_last"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(RoiPoolBackward, RoiPoolBackwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<bool>("channels_last"));

template <typename Fn>
nb::capsule capsule(Fn* fn) {
  return nb::capsule(reinterpret_cast<void*>(fn));
}

NB_MODULE(_jax_roi_cpu, m) {
  m.def("registrations", []() {
    nb::dict targets;
    targets["jax_roi_align_avg_forward"] = capsule(RoiAlignAvgForward);
    targets["jax_roi_align_avg_backward"] = capsule(RoiAlignAvgBackward);
    targets["jax_roi_align_max_forward"] = capsule(RoiAlignMaxForward);
    targets["jax_roi_align_max_backward"] = capsule(RoiAlignMaxBackward);
    targets["jax_roi_pool_forward"] = capsule(RoiPoolForward);
    targets["jax_roi_pool_backward"] = capsule(RoiPoolBackward);
    return targets;
  });
  m.attr("ffi_api_version") = nb::make_tuple(XLA_FFI_API_MAJOR, XLA_FFI_API_MINOR);
}
