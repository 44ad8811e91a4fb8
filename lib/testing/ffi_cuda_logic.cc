// Test-only CPU targets that run the CUDA kernels' element functions as the
// GPU would, one element at a time over the whole index range, with plain
// adds in place of atomics. Tests compare them with the CPU kernels, so the
// GPU's arithmetic is checked on machines without a GPU.
#include <algorithm>

#include "../elements/all_elements.h"
#include "../ffi_handlers.h"
#include "../ffi_module.h"

namespace jax_roi {

struct SerialAdd {
  template <typename G>
  void operator()(G* target, G value) const { *target += value; }
};

struct SerialBackend {
  using Binding = ffi::ThreadPool;  // bound but unused: one thread, in index order
  using Context = ffi::ThreadPool;
  static constexpr bool kCommandBufferCompatible = false;
  static constexpr bool kNarrowsGradient = false;

  template <Op op, typename T, typename G>
  static ffi::Error forward(Context&, const Problem<G>& p, const T* features, T* out,
                            int32_t* argmax) {
    for (int64_t i = 0; i < p.shape.output_count(); ++i)
      Elements<op>::forward(p, i, features, out, argmax);
    return ffi::Error::Success();
  }

  template <Op op, typename T, typename G>
  static ffi::Error backward(Context&, const Problem<G>& p, const T* grad_out,
                             const int32_t* argmax, G* grad_features) {
    std::fill(grad_features, grad_features + p.shape.feature_count(), G(0));
    if (p.shape.feature_count() == 0) return ffi::Error::Success();
    for (int64_t i = 0; i < p.shape.output_count(); ++i)
      Elements<op>::backward(p, i, grad_out, argmax, grad_features, SerialAdd{});
    return ffi::Error::Success();
  }

  template <Op op, typename T, typename G>
  static ffi::Error forward_levels(Context&, const LevelProblems<G>& lp,
                                   const PerLevel<const T>& features, T* out,
                                   int32_t* argmax) {
    for (int64_t i = 0; i < lp.level[0].shape.output_count(); ++i)
      forward_level_element<op>(lp, i, features, out, argmax);
    return ffi::Error::Success();
  }

  template <Op op, typename T, typename G>
  static ffi::Error backward_levels(Context&, const LevelProblems<G>& lp, const T* grad_out,
                                    const int32_t* argmax, const PerLevel<G>& grads) {
    for (int l = 0; l < lp.count; ++l)
      std::fill(grads.data[l], grads.data[l] + lp.level[l].shape.feature_count(), G(0));
    for (int64_t i = 0; i < lp.level[0].shape.output_count(); ++i)
      backward_level_element<op>(lp, i, grad_out, argmax, grads, SerialAdd{});
    return ffi::Error::Success();
  }

  template <Op op, typename T, typename G>
  static ffi::Error box_jvp(Context&, const Problem<G>& p, const T* features,
                            const int32_t* argmax, const G* tangents, T* out) {
    for (int64_t i = 0; i < p.shape.output_count(); ++i)
      out[i] = box_jvp_element<op>(p, i, features, argmax, tangents);
    return ffi::Error::Success();
  }

  template <Op op, typename T, typename G>
  static ffi::Error box_vjp(Context&, const Problem<G>& p, const T* features,
                            const int32_t* argmax, const T* grad_out, G* cotangents) {
    for (int64_t k = 0; k < p.shape.num_rois; ++k)
      roi_cotangent<op>(p, k, features, argmax, grad_out, cotangents);
    return ffi::Error::Success();
  }

  template <Op op, typename T, typename G>
  static ffi::Error box_jvp_levels(Context&, const LevelProblems<G>& lp,
                                   const PerLevel<const T>& features, const int32_t* argmax,
                                   const G* tangents, T* out) {
    for (int64_t i = 0; i < lp.level[0].shape.output_count(); ++i)
      out[i] = box_jvp_level_element<op>(lp, i, features, argmax, tangents);
    return ffi::Error::Success();
  }

  template <Op op, typename T, typename G>
  static ffi::Error box_vjp_levels(Context&, const LevelProblems<G>& lp,
                                   const PerLevel<const T>& features, const int32_t* argmax,
                                   const T* grad_out, G* cotangents) {
    for (int64_t k = 0; k < lp.level[0].shape.num_rois; ++k) {
      const int l = lp.level_of(k);
      roi_cotangent<op>(lp.level[l], k, features.data[l], argmax, grad_out, cotangents);
    }
    return ffi::Error::Success();
  }

 private:
  // ROI k's cotangent, its elements' shares summed in index order.
  template <Op op, typename T, typename G>
  static void roi_cotangent(const Problem<G>& p, int64_t k, const T* features,
                            const int32_t* argmax, const T* grad_out, G* cotangents) {
    const Shape& s = p.shape;
    const int64_t per_roi = s.out_channels * s.pooled_h * s.pooled_w;
    G d[kMaxCoords] = {};
    for (int64_t i = k * per_roi; i < (k + 1) * per_roi; ++i)
      add_box_vjp_element<op>(p, i, features, argmax, grad_out, d);
    store_roi_cotangent(p.rois, k, d, cotangents);
  }
};

}  // namespace jax_roi

NB_MODULE(_jax_roi_cuda_logic, m) {
  m.def("registrations", [] {
    return ::jax_roi::registrations_of(::jax_roi::kernel_entries<::jax_roi::SerialBackend>());
  });
}
