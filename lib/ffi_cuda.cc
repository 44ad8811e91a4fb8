// The CUDA kernels as XLA FFI handlers on XLA's stream, and their module.
// Handlers never synchronise or allocate, so XLA may capture them in
// command buffers (CUDA graphs).
#include "cuda/roi_kernels_cuda.h"
#include "ffi_handlers.h"
#include "ffi_module.h"

JAX_ROI_DEFINE_HANDLERS(Cuda, ::jax_roi::CudaBackend,
                        ::xla::ffi::PlatformStream<cudaStream_t>,
                        {::xla::ffi::Traits::kCmdBufferCompatible});

NB_MODULE(_jax_roi_cuda, m) {
  m.def("registrations", JAX_ROI_REGISTRATIONS(Cuda));
  m.attr("ffi_api_version") = JAX_ROI_FFI_API_VERSION;
  m.attr("abi_version") = JAX_ROI_ABI_VERSION;
}
