// The CPU kernels' module: it gathers the kernels of every part
// (cpu/kernel_parts.h) and hands their FFI handlers to Python.
#include <utility>

#include "cpu/kernel_parts.h"
#include "cpu/native_vector.h"
#include "cpu/stream_store.h"
#include "ffi_module.h"

namespace jax_roi {

template <int... kPart>
std::vector<KernelEntry> cpu_kernel_entries(std::integer_sequence<int, kPart...>) {
  std::vector<KernelEntry> entries;
  for (const std::vector<KernelEntry>& part : {cpu_kernel_part<kPart>()...})
    entries.insert(entries.end(), part.begin(), part.end());
  return entries;
}

}  // namespace jax_roi

NB_MODULE(_jax_roi_cpu, m) {
  m.def("registrations", [] {
    return ::jax_roi::registrations_of(::jax_roi::cpu_kernel_entries(
        std::make_integer_sequence<int, JAX_ROI_CPU_PARTS>()));
  });
  m.attr("ffi_api_version") = JAX_ROI_FFI_API_VERSION;
  m.attr("abi_version") = JAX_ROI_ABI_VERSION;
  // The width of the vectors the kernels use on this machine, in bytes.
  m.def("vector_bytes", &::jax_roi::native_vector_bytes);
  // The smallest result the kernels write past the cache, in bytes.
  m.def("streamed_result_bytes", &::jax_roi::streamed_result_bytes);
  // The L3 cache size that decides it (0 where Linux does not report one).
  m.def("l3_cache_bytes", &::jax_roi::l3_cache_bytes);
}
