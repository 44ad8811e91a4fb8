// The CUDA backend: declared here for the host-compiled handlers, defined
// (and instantiated for every op and storage type) in roi_kernels.cu.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "../ffi_problem.h"
#include "../roi_elements.h"

namespace jax_roi {

struct CudaBackend {
  using Context = cudaStream_t;

  template <Op op, typename T, typename G>
  static ffi::Error forward(Context& stream, const Problem<G>& p, const T* features, T* out,
                            int32_t* argmax);

  // The gradient is zeroed on the stream, then accumulated with atomicAdd:
  // fast, but the order of additions (and so the last bits) varies by run.
  template <Op op, typename T, typename G>
  static ffi::Error backward(Context& stream, const Problem<G>& p, const T* grad_out,
                             const int32_t* argmax, G* grad_features);

  // A pyramid: one launch over the output, each element on its ROI's level.
  template <Op op, typename T, typename G>
  static ffi::Error forward_levels(Context& stream, const LevelProblems<G>& lp,
                                   const PerLevel<const T>& features, T* out, int32_t* argmax);

  template <Op op, typename T, typename G>
  static ffi::Error backward_levels(Context& stream, const LevelProblems<G>& lp,
                                    const T* grad_out, const int32_t* argmax,
                                    const PerLevel<G>& grads);
};

}  // namespace jax_roi
