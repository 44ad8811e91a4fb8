// CUDA kernels: grid-stride loops over the shared element functions
// (elements/), and the handlers that launch them on XLA's stream. Only the
// launch is CUDA-specific; the arithmetic is the elements'.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <string>

#include "../elements/all_elements.h"
#include "../ffi_handlers.h"
#include "roi_kernels_cuda.h"

namespace jax_roi {
namespace {

constexpr int kThreadsPerBlock = 256;
constexpr int64_t kMaxBlocks = int64_t(1) << 20;  // the grid-stride loop covers the rest

struct AtomicAdd {
  template <typename G>
  __device__ void operator()(G* target, G value) const { atomicAdd(target, value); }
};

__device__ __forceinline__ int64_t first_index() {
  return int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ int64_t grid_stride() { return int64_t(gridDim.x) * blockDim.x; }

template <Op op, typename T, typename G>
__global__ void forward_kernel(Problem<G> p, const T* features, T* out, int32_t* argmax) {
  int64_t n = p.shape.output_count();
  for (int64_t i = first_index(); i < n; i += grid_stride())
    Elements<op>::forward(p, i, features, out, argmax);
}

template <Op op, typename T, typename G>
__global__ void backward_kernel(Problem<G> p, const T* grad_out, const int32_t* argmax,
                                G* grad_features) {
  int64_t n = p.shape.output_count();
  for (int64_t i = first_index(); i < n; i += grid_stride())
    Elements<op>::backward(p, i, grad_out, argmax, grad_features, AtomicAdd{});
}

template <Op op, typename T, typename G>
__global__ void forward_levels_kernel(LevelProblems<G> lp, PerLevel<const T> features, T* out,
                                      int32_t* argmax) {
  int64_t n = lp.level[0].shape.output_count();
  for (int64_t i = first_index(); i < n; i += grid_stride())
    forward_level_element<op>(lp, i, features, out, argmax);
}

template <Op op, typename T, typename G>
__global__ void backward_levels_kernel(LevelProblems<G> lp, const T* grad_out,
                                       const int32_t* argmax, PerLevel<G> grads) {
  int64_t n = lp.level[0].shape.output_count();
  for (int64_t i = first_index(); i < n; i += grid_stride())
    backward_level_element<op>(lp, i, grad_out, argmax, grads, AtomicAdd{});
}

template <Op op, typename T, typename G>
__global__ void box_jvp_kernel(Problem<G> p, const T* features, const int32_t* argmax,
                               const G* tangents, T* out) {
  int64_t n = p.shape.output_count();
  for (int64_t i = first_index(); i < n; i += grid_stride())
    out[i] = box_jvp_element<op>(p, i, features, argmax, tangents);
}

template <Op op, typename T, typename G>
__global__ void box_jvp_levels_kernel(LevelProblems<G> lp, PerLevel<const T> features,
                                      const int32_t* argmax, const G* tangents, T* out) {
  int64_t n = lp.level[0].shape.output_count();
  for (int64_t i = first_index(); i < n; i += grid_stride())
    out[i] = box_jvp_level_element<op>(lp, i, features, argmax, tangents);
}

// Reverse mode: one block per ROI. Each thread sums a strided share of the
// ROI's elements, and the shares are added in a fixed tree, so the
// cotangent is the same on every run (no atomics).
template <Op op, typename T, typename G>
__device__ void block_box_vjp(const Problem<G>& p, int64_t k, const T* features,
                              const int32_t* argmax, const T* grad_out, G* cotangents) {
  __shared__ G share[kMaxCoords][kThreadsPerBlock];
  const Shape& s = p.shape;
  const int64_t per_roi = s.out_channels * s.pooled_h * s.pooled_w;
  G d[kMaxCoords] = {};
  for (int64_t e = threadIdx.x; e < per_roi; e += blockDim.x)
    add_box_vjp_element<op>(p, k * per_roi + e, features, argmax, grad_out, d);
  for (int j = 0; j < kMaxCoords; ++j) share[j][threadIdx.x] = d[j];
  __syncthreads();
  for (int half = kThreadsPerBlock / 2; half > 0; half /= 2) {
    if (threadIdx.x < half)
      for (int j = 0; j < kMaxCoords; ++j) share[j][threadIdx.x] += share[j][threadIdx.x + half];
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    for (int j = 0; j < kMaxCoords; ++j) d[j] = share[j][0];
    store_roi_cotangent(p.rois, k, d, cotangents);
  }
  __syncthreads();  // share is reused by the block's next ROI
}

template <Op op, typename T, typename G>
__global__ void box_vjp_kernel(Problem<G> p, const T* features, const int32_t* argmax,
                               const T* grad_out, G* cotangents) {
  for (int64_t k = blockIdx.x; k < p.shape.num_rois; k += gridDim.x)
    block_box_vjp<op>(p, k, features, argmax, grad_out, cotangents);
}

template <Op op, typename T, typename G>
__global__ void box_vjp_levels_kernel(LevelProblems<G> lp, PerLevel<const T> features,
                                      const int32_t* argmax, const T* grad_out, G* cotangents) {
  for (int64_t k = blockIdx.x; k < lp.level[0].shape.num_rois; k += gridDim.x) {
    const int l = lp.level_of(k);
    block_box_vjp<op>(lp.level[l], k, features.data[l], argmax, grad_out, cotangents);
  }
}

unsigned blocks_for(int64_t n) {
  return static_cast<unsigned>(std::min(kMaxBlocks, (n + kThreadsPerBlock - 1) / kThreadsPerBlock));
}

ffi::Error last_error(const char* what) {
  cudaError_t err = cudaGetLastError();
  if (err == cudaSuccess) return ffi::Error::Success();
  return ffi::Error::Internal(std::string("jax_roi: ") + what + ": " + cudaGetErrorString(err));
}

// The CUDA backend of the handlers (ffi_handlers.h). The gradient is zeroed
// on the stream, then accumulated with atomicAdd: fast, but the order of
// additions (and so the last bits) varies by run.
struct CudaBackend {
  using Binding = ffi::PlatformStream<cudaStream_t>;
  using Context = cudaStream_t;
  static constexpr bool kCommandBufferCompatible = true;
  // 16-bit gradients returned in float32: XLA converts them
  static constexpr bool kNarrowsGradient = false;

  template <Op op, typename T, typename G>
  static ffi::Error forward(Context& stream, const Problem<G>& p, const T* features, T* out,
                            int32_t* argmax) {
    int64_t n = p.shape.output_count();
    if (n == 0) return ffi::Error::Success();
    forward_kernel<op, T, G><<<blocks_for(n), kThreadsPerBlock, 0, stream>>>(p, features, out,
                                                                             argmax);
    return last_error("forward kernel launch");
  }

  template <Op op, typename T, typename G>
  static ffi::Error backward(Context& stream, const Problem<G>& p, const T* grad_out,
                             const int32_t* argmax, G* grad_features) {
    int64_t features = p.shape.feature_count();
    if (features > 0) {
      cudaMemsetAsync(grad_features, 0, sizeof(G) * features, stream);
      if (auto e = last_error("zeroing the gradient"); e.failure()) return e;
    }
    int64_t n = p.shape.output_count();
    if (n == 0 || features == 0) return ffi::Error::Success();
    backward_kernel<op, T, G><<<blocks_for(n), kThreadsPerBlock, 0, stream>>>(
        p, grad_out, argmax, grad_features);
    return last_error("backward kernel launch");
  }

  // A pyramid: one launch over the output, each element on its ROI's level.
  template <Op op, typename T, typename G>
  static ffi::Error forward_levels(Context& stream, const LevelProblems<G>& lp,
                                   const PerLevel<const T>& features, T* out, int32_t* argmax) {
    int64_t n = lp.level[0].shape.output_count();
    if (n == 0) return ffi::Error::Success();
    forward_levels_kernel<op, T, G><<<blocks_for(n), kThreadsPerBlock, 0, stream>>>(
        lp, features, out, argmax);
    return last_error("pyramid forward kernel launch");
  }

  template <Op op, typename T, typename G>
  static ffi::Error backward_levels(Context& stream, const LevelProblems<G>& lp,
                                    const T* grad_out, const int32_t* argmax,
                                    const PerLevel<G>& grads) {
    for (int l = 0; l < lp.count; ++l) {
      int64_t features = lp.level[l].shape.feature_count();
      if (features == 0) continue;
      cudaMemsetAsync(grads.data[l], 0, sizeof(G) * features, stream);
      if (auto e = last_error("zeroing the gradient"); e.failure()) return e;
    }
    int64_t n = lp.level[0].shape.output_count();
    if (n == 0) return ffi::Error::Success();
    backward_levels_kernel<op, T, G><<<blocks_for(n), kThreadsPerBlock, 0, stream>>>(
        lp, grad_out, argmax, grads);
    return last_error("pyramid backward kernel launch");
  }

  template <Op op, typename T, typename G>
  static ffi::Error box_jvp(Context& stream, const Problem<G>& p, const T* features,
                            const int32_t* argmax, const G* tangents, T* out) {
    int64_t n = p.shape.output_count();
    if (n == 0) return ffi::Error::Success();
    box_jvp_kernel<op, T, G><<<blocks_for(n), kThreadsPerBlock, 0, stream>>>(
        p, features, argmax, tangents, out);
    return last_error("box jvp kernel launch");
  }

  template <Op op, typename T, typename G>
  static ffi::Error box_vjp(Context& stream, const Problem<G>& p, const T* features,
                            const int32_t* argmax, const T* grad_out, G* cotangents) {
    int64_t k = p.shape.num_rois;
    if (k == 0) return ffi::Error::Success();
    box_vjp_kernel<op, T, G><<<roi_blocks(k), kThreadsPerBlock, 0, stream>>>(
        p, features, argmax, grad_out, cotangents);
    return last_error("box vjp kernel launch");
  }

  template <Op op, typename T, typename G>
  static ffi::Error box_jvp_levels(Context& stream, const LevelProblems<G>& lp,
                                   const PerLevel<const T>& features, const int32_t* argmax,
                                   const G* tangents, T* out) {
    int64_t n = lp.level[0].shape.output_count();
    if (n == 0) return ffi::Error::Success();
    box_jvp_levels_kernel<op, T, G><<<blocks_for(n), kThreadsPerBlock, 0, stream>>>(
        lp, features, argmax, tangents, out);
    return last_error("pyramid box jvp kernel launch");
  }

  template <Op op, typename T, typename G>
  static ffi::Error box_vjp_levels(Context& stream, const LevelProblems<G>& lp,
                                   const PerLevel<const T>& features, const int32_t* argmax,
                                   const T* grad_out, G* cotangents) {
    int64_t k = lp.level[0].shape.num_rois;
    if (k == 0) return ffi::Error::Success();
    box_vjp_levels_kernel<op, T, G><<<roi_blocks(k), kThreadsPerBlock, 0, stream>>>(
        lp, features, argmax, grad_out, cotangents);
    return last_error("pyramid box vjp kernel launch");
  }

 private:
  static unsigned roi_blocks(int64_t num_rois) {
    return static_cast<unsigned>(std::min(kMaxBlocks, num_rois));
  }
};

}  // namespace

std::vector<KernelEntry> cuda_kernel_entries() { return kernel_entries<CudaBackend>(); }

}  // namespace jax_roi
