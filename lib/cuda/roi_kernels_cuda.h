// The CUDA kernels' handlers, compiled by nvcc with the kernels
// (roi_kernels.cu) and listed for the host-compiled module.
#pragma once

#include <vector>

#include "../kernel_entry.h"

namespace jax_roi {

std::vector<KernelEntry> cuda_kernel_entries();

}  // namespace jax_roi
