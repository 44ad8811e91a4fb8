// Hot CPU loops are compiled three times: for baseline x86-64 with 16-byte
// vectors, for x86-64-v3 (AVX2 + FMA) with 32-byte ones and for x86-64-v4
// (AVX-512) with 64-byte ones. with_native_isa runs the one the processor
// allows, so a wheel runs anywhere and uses 8- or 16-wide vectors where
// they exist. A kernel's body is a lambda of the vector width, forced
// inline into a function compiled for that width's ISA, and so is
// everything it forces inline (JAX_ROI_ALWAYS_INLINE). GCC 12 also inlines
// a baseline callee into it where it judges it worth it; what it does not
// inline runs as baseline code.
#pragma once

#include <cstdlib>
#include <type_traits>

#include "../host_device.h"  // JAX_ROI_ALWAYS_INLINE

#if defined(__GNUC__)
#define JAX_ROI_INLINE_LAMBDA __attribute__((always_inline))
#else
#define JAX_ROI_INLINE_LAMBDA
#endif

// JAX_ROI_BASELINE_ISA_ONLY (the sanitized build) compiles one width, 32
// bytes (AVX2's, the most common), for the baseline ISA: the ISAs differ
// in instructions, not in the memory they touch, and one width builds in a
// third of the time. test_vector_widths.py compares the widths unsanitized.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && \
    !defined(JAX_ROI_BASELINE_ISA_ONLY)
#define JAX_ROI_ISA_FOR_64 __attribute__((target("arch=x86-64-v4")))
#define JAX_ROI_ISA_FOR_32 __attribute__((target("arch=x86-64-v3")))
// the 32- and 64-byte bodies may use their ISA's builtins (F16C is in both)
#define JAX_ROI_WIDTHS_HAVE_THEIR_ISA 1
#else
#define JAX_ROI_ISA_FOR_64
#define JAX_ROI_ISA_FOR_32
#endif

namespace jax_roi {

// The widest vectors the kernels may use: JAX_ROI_CPU_VECTOR_BYTES=16 or 32
// in the environment hides the wider ones, and with them the ISA that has
// them, so that the narrower kernels run on any machine as an older
// processor runs them.
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

#ifdef JAX_ROI_BASELINE_ISA_ONLY
constexpr int kOnlyVectorBytes = 32;
inline int native_vector_bytes() { return kOnlyVectorBytes; }
#else
// The widest vector registers this processor has (and may use), in bytes:
// 64 with AVX-512, 32 with AVX2, 16 otherwise.
inline int native_vector_bytes() { return cpu_has_avx512() ? 64 : cpu_has_avx2() ? 32 : 16; }
#endif

template <typename F>
JAX_ROI_ISA_FOR_64 void run_for_vector_bytes_64(const F& f) {
  f(std::integral_constant<int, 64>{});
}
template <typename F>
JAX_ROI_ISA_FOR_32 void run_for_vector_bytes_32(const F& f) {
  f(std::integral_constant<int, 32>{});
}
template <typename F>
void run_for_vector_bytes_16(const F& f) {
  f(std::integral_constant<int, 16>{});
}

// f(std::integral_constant<int, bytes>{}) for this processor's vector
// bytes, compiled for the ISA that has them. f is a lambda marked
// JAX_ROI_INLINE_LAMBDA holding a kernel's whole body; called inside
// another f, it would compile its body for every width once more.
template <typename F>
JAX_ROI_ALWAYS_INLINE void with_native_isa(const F& f) {
#ifdef JAX_ROI_BASELINE_ISA_ONLY
  f(std::integral_constant<int, kOnlyVectorBytes>{});
#else
  const int bytes = native_vector_bytes();
  if (bytes == 64)
    run_for_vector_bytes_64(f);
  else if (bytes == 32)
    run_for_vector_bytes_32(f);
  else
    run_for_vector_bytes_16(f);
#endif
}

}  // namespace jax_roi
