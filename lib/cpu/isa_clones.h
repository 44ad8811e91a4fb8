// Hot CPU loops are compiled three times, for baseline x86-64, x86-64-v3
// (AVX2 + FMA) and x86-64-v4 (AVX-512), and the loader picks the best clone
// the processor supports, so a wheel runs anywhere and uses 8- or 16-wide
// vectors where they exist.
#pragma once

#include <cstdlib>

// JAX_ROI_SINGLE_ISA_CLONE (the sanitized build) compiles the baseline alone.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__) && \
    !defined(JAX_ROI_SINGLE_ISA_CLONE)
#define JAX_ROI_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define JAX_ROI_CPU_CLONES
#endif

// For helpers of the cloned loops that are too large for the inliner's
// taste: outside the clones they would run as baseline code.
// JAX_ROI_INLINE_LAMBDA does the same for a lambda: [&](...) JAX_ROI_INLINE_LAMBDA {...}.
#if defined(__GNUC__)
#define JAX_ROI_ALWAYS_INLINE inline __attribute__((always_inline))
#define JAX_ROI_INLINE_LAMBDA __attribute__((always_inline))
#else
#define JAX_ROI_ALWAYS_INLINE inline
#define JAX_ROI_INLINE_LAMBDA
#endif

// What the processor offers, for kernels that size their register blocks
// to it or use intrinsics outside the clones. JAX_ROI_CPU_VECTOR_BYTES=16
// or 32 in the environment hides the wider vectors, so that tests can run
// the narrower kernels on any machine.
inline int cpu_vector_bytes_limit() {
  static const int limit = [] {
    const char* v = std::getenv("JAX_ROI_CPU_VECTOR_BYTES");
    return v ? std::atoi(v) : 64;
  }();
  return limit;
}

#if defined(__x86_64__) && defined(__GNUC__)
inline bool cpu_has_avx512() {
  static const bool has = cpu_vector_bytes_limit() >= 64 && __builtin_cpu_supports("avx512f") &&
                          __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512vl");
  return has;
}
inline bool cpu_has_avx2() {
  static const bool has = cpu_vector_bytes_limit() >= 32 && __builtin_cpu_supports("avx2") &&
                          __builtin_cpu_supports("fma");
  return has;
}
#else
inline bool cpu_has_avx512() { return false; }
inline bool cpu_has_avx2() { return false; }
#endif
