// The CPU kernels as XLA FFI handlers, and the module that hands them to Python.
#include "cpu/roi_kernels_cpu.h"
#include "ffi_handlers.h"
#include "ffi_module.h"

NB_MODULE(_jax_roi_cpu, m) {
  m.def("registrations",
        [] { return ::jax_roi::registrations_of(::jax_roi::kernel_entries<::jax_roi::CpuBackend>()); });
  m.attr("ffi_api_version") = JAX_ROI_FFI_API_VERSION;
  m.attr("abi_version") = JAX_ROI_ABI_VERSION;
  // The width of the vectors the kernels use on this machine, in bytes.
  m.def("vector_bytes", &::jax_roi::native_vector_bytes);
}
