// The CUDA kernels' module. The handlers themselves are compiled with the
// kernels (cuda/roi_kernels.cu); they run on XLA's stream and never
// synchronise or allocate, so XLA may capture them in command buffers.
#include "cuda/roi_kernels_cuda.h"
#include "ffi_module.h"

NB_MODULE(_jax_roi_cuda, m) {
  m.def("registrations", [] { return ::jax_roi::registrations_of(::jax_roi::cuda_kernel_entries()); });
  m.attr("ffi_api_version") = JAX_ROI_FFI_API_VERSION;
  m.attr("abi_version") = JAX_ROI_ABI_VERSION;
}
