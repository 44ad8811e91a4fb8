// Vectors of the width the processor's registers have: 64 bytes with
// AVX-512, 32 with AVX2, 16 otherwise. GCC keeps a vector wider than the
// ISA's registers in memory, so a kernel that holds sums in registers
// takes the width from with_native_isa (isa_dispatch.h), which compiles
// it for each width's ISA. (The vector attribute must sit on a typedef of a
// concrete type: on a dependent one GCC drops it, hence one
// specialisation per type and width.)
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "../dtypes.h"
#include "isa_dispatch.h"

#ifdef JAX_ROI_WIDTHS_HAVE_THEIR_ISA
#include <immintrin.h>  // declares the ISA builtins load_native uses
#endif

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
JAX_ROI_NATIVE_VECTOR(int16_t, 8)
JAX_ROI_NATIVE_VECTOR(int16_t, 16)
JAX_ROI_NATIVE_VECTOR(int16_t, 32)
#undef JAX_ROI_NATIVE_VECTOR

template <typename E, int bytes>
using NativeVector = typename NativeVectorOf<E, bytes>::type;

template <typename G, int bytes>
constexpr int64_t native_lanes = bytes / int64_t(sizeof(G));

// How many vectors of `bytes` a kernel may fill with sums: half the
// register file (16 of AVX-512's 32 registers, 8 of AVX2's or SSE's 16).
// Kernels instantiate no larger register blocks.
template <int bytes>
constexpr int sum_registers = bytes == 64 ? 16 : 8;

// How many vectors of `bytes` an NHWC tap loop (roi_align avg's forward,
// bin_taps.h's) fills with the sums of a block of channels: as many as the
// registers hold, up to 512 bytes of each pixel read per tap (eight cache
// lines). Blocks of 16 AVX-512 vectors of float32 read a kilobyte per tap
// and took up to twice as long on the Intel Xeon (AVX-512, AMX) as
// blocks of 8: mask-c4's roi_align NHWC forward 41 against 24 ms,
// prroi-atom's 4.0 against 2.2, fpn's 16 against 13, rot-p2's 27 against
// 23.5; box-p2 alike. With bfloat16 the 16 vectors read 512 bytes, and 8
// lost (fpn 8.2 against 11.7 ms).
constexpr int64_t kTapBlockBytes = 512;
template <int bytes, typename T>
constexpr int tap_block_vectors =
    std::min<int64_t>(sum_registers<bytes>,
                      kTapBlockBytes / (native_lanes<acc_t<T>, bytes> * int64_t(sizeof(T))));

// One vector of G from storage type T: a plain load, to_acc's conversion of
// 16-bit lanes on every lane at once, or lane by lane.
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
  } else if constexpr (std::is_same_v<T, float16_t> && std::is_same_v<G, float>) {
    NativeVector<int16_t, bytes / 2> half;
    std::memcpy(&half, p, sizeof half);
#ifdef JAX_ROI_WIDTHS_HAVE_THEIR_ISA
    // F16C's widening: exact, as float_of_float16_bits is (a NaN may come
    // out quieted; every 16-bit result writes its NaNs as one pattern), in
    // one instruction instead of a dozen. Builtins, not intrinsics: they are
    // checked against the ISA of the body they are inlined into.
    if constexpr (bytes == 32) {
      return __builtin_ia32_vcvtph2ps256(half);
    } else if constexpr (bytes == 64) {
      return __builtin_ia32_vcvtph2ps512_mask(half, V{}, static_cast<__mmask16>(-1),
                                              _MM_FROUND_CUR_DIRECTION);
    }
#endif
    const auto wide = __builtin_convertvector(half, NativeVector<uint32_t, bytes>);
    v = float_of_float16_bits<V>(wide & 0xffffu);
  } else {
    for (int j = 0; j < native_lanes<G, bytes>; ++j) v[j] = to_acc(p[j]);
  }
  return v;
}

template <int bytes, typename T, typename G>
JAX_ROI_ALWAYS_INLINE void store_native(T* p, const NativeVector<G, bytes>& v) {
  if constexpr (std::is_same_v<T, G>) {
    std::memcpy(p, &v, sizeof v);
  } else if constexpr ((std::is_same_v<T, bfloat16_t> || std::is_same_v<T, float16_t>) &&
                       std::is_same_v<G, float>) {
    // from_acc's rounding (dtypes.h) on every lane at once, so that the
    // result is one vector store: lane by lane, a streamed store's staging
    // reloaded the lanes' narrow stores as one word and stalled on it.
    using U = NativeVector<uint32_t, bytes>;
    U u;
    std::memcpy(&u, &v, sizeof u);
    U bits;
    if constexpr (std::is_same_v<T, bfloat16_t>)
      bits = bfloat16_bits_of(u);
    else
      bits = float16_bits_of(u);
    const auto half = __builtin_convertvector(bits, NativeVector<uint16_t, bytes / 2>);
    std::memcpy(p, &half, sizeof half);
  } else {  // through an array: the loop over it vectorises, lane extracts would not
    G lanes[native_lanes<G, bytes>];
    std::memcpy(lanes, &v, sizeof v);
    for (int j = 0; j < native_lanes<G, bytes>; ++j) p[j] = from_acc<T>(lanes[j]);
  }
}

}  // namespace jax_roi
