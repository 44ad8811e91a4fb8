// Sizes the environment may set, in megabytes (JAX_ROI_CPU_KEPT_SCRATCH_MB,
// JAX_ROI_CPU_STREAM_MB), read one way: a negative value is 0 and the
// largest is 2^30 MB, so the size in bytes never overflows.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdlib>

namespace jax_roi {

// Variable `name` in bytes, or `unset_bytes` where it is unset or empty.
inline int64_t env_megabytes(const char* name, int64_t unset_bytes) {
  const char* v = std::getenv(name);
  if (!v || !*v) return unset_bytes;
  return static_cast<int64_t>(std::clamp(std::atoll(v), 0LL, 1LL << 30)) << 20;
}

}  // namespace jax_roi
