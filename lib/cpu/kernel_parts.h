// The CPU module's kernels are compiled in JAX_ROI_CPU_PARTS translation
// units, which a build runs in parallel: CMakeLists.txt makes one per part
// from kernel_part.inc, and each holds the kernels
// kernel_entries<CpuBackend, part, parts> lists (ffi_handlers.h).
#pragma once

#include <vector>

#include "../kernel_entry.h"

namespace jax_roi {

template <int kPart>
std::vector<KernelEntry> cpu_kernel_part();

}  // namespace jax_roi
