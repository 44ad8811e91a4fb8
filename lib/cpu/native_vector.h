// Vectors of the width the processor's registers have: 64 bytes with
// AVX-512, 32 with AVX2, 16 otherwise. GCC keeps a vector wider than the
// clone's registers in memory, so a kernel that holds sums in registers
// is instantiated for each width and picks one at run time
// (native_vector_bytes). (The vector attribute must sit on a typedef of a
// concrete type: on a dependent one GCC drops it, hence one
// specialisation per type and width.)
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "../dtypes.h"
#include "isa_clones.h"

namespace jax_roi {

template <typename E, int bytes>
struct NativeVectorOf;

#define JAX_ROI_NATIVE_VECTOR(E, BYTES)                      \
  template <>                                                \
  struct NativeVectorOf<E, BYTES> {                          \
    typedef E type __attribute__((vector_size(BYTES)));      \
  };
JAX_ROI_NATIVE_VECTOR(float, 16)
JAX_ROI_NATIVE_VECTOR(float, 32)
JAX_ROI_NATIVE_VECTOR(float, 64)
JAX_ROI_NATIVE_VECTOR(double, 16)
JAX_ROI_NATIVE_VECTOR(double, 32)
JAX_ROI_NATIVE_VECTOR(double, 64)
JAX_ROI_NATIVE_VECTOR(uint32_t, 16)
JAX_ROI_NATIVE_VECTOR(uint32_t, 32)
JAX_ROI_NATIVE_VECTOR(uint32_t, 64)
JAX_ROI_NATIVE_VECTOR(uint16_t, 8)
JAX_ROI_NATIVE_VECTOR(uint16_t, 16)
JAX_ROI_NATIVE_VECTOR(uint16_t, 32)
#undef JAX_ROI_NATIVE_VECTOR

template <typename E, int bytes>
using NativeVector = typename NativeVectorOf<E, bytes>::type;

template <typename G, int bytes>
constexpr int64_t native_lanes = bytes / int64_t(sizeof(G));

// The widest vector registers this processor has, in bytes.
inline int native_vector_bytes() { return cpu_has_avx512() ? 64 : cpu_has_avx2() ? 32 : 16; }
// How many vectors of `bytes` a kernel may fill with sums: half the
// register file (16 of AVX-512's 32 registers, 8 of AVX2's or SSE's 16).
// Kernels instantiate no larger register blocks.
template <int bytes>
constexpr int sum_registers = bytes == 64 ? 16 : 8;

// f(std::integral_constant<int, bytes>{}) for this processor's bytes.
template <typename F>
JAX_ROI_ALWAYS_INLINE void with_native_vector_bytes(const F& f) {
  const int bytes = native_vector_bytes();
  if (bytes == 64)
    f(std::integral_constant<int, 64>{});
  else if (bytes == 32)
    f(std::integral_constant<int, 32>{});
  else
    f(std::integral_constant<int, 16>{});
}

// One vector of G from storage type T: a plain load, the bfloat16 bits as a
// float's top half (to_acc, vectorised), or lane by lane.
template <typename G, int bytes, typename T>
JAX_ROI_ALWAYS_INLINE NativeVector<G, bytes> load_native(const T* p) {
  using V = NativeVector<G, bytes>;
  V v;
  if constexpr (std::is_same_v<T, G>) {
    std::memcpy(&v, p, sizeof v);
  } else if constexpr (std::is_same_v<T, bfloat16_t> && std::is_same_v<G, float>) {
    NativeVector<uint16_t, bytes / 2> half;
    std::memcpy(&half, p, sizeof half);
    const NativeVector<uint32_t, bytes> bits =
        __builtin_convertvector(half, NativeVector<uint32_t, bytes>) << 16;
    std::memcpy(&v, &bits, sizeof v);
  } else {
    for (int j = 0; j < native_lanes<G, bytes>; ++j) v[j] = to_acc(p[j]);
  }
  return v;
}

template <int bytes, typename T, typename G>
JAX_ROI_ALWAYS_INLINE void store_native(T* p, const NativeVector<G, bytes>& v) {
  if constexpr (std::is_same_v<T, G>) {
    std::memcpy(p, &v, sizeof v);
  } else {  // through an array: the loop over it vectorises, lane extracts would not
    G lanes[native_lanes<G, bytes>];
    std::memcpy(lanes, &v, sizeof v);
    for (int j = 0; j < native_lanes<G, bytes>; ++j) p[j] = from_acc<T>(lanes[j]);
  }
}

}  // namespace jax_roi
