// Feature storage types and their conversions to the accumulation type.
// The 16-bit types are plain bit containers converted by hand, so host and
// device code share one definition and round identically (to nearest even).
#pragma once

#include <cstdint>
#include <cstring>

#include "host_device.h"

namespace jax_roi {

struct bfloat16_t {
  uint16_t bits;
};
struct float16_t {
  uint16_t bits;
};

JAX_ROI_HOST_DEVICE uint32_t float_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
#endif
}

JAX_ROI_HOST_DEVICE float bits_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
#endif
}

// A value of To with from's bits (equal sizes): for scalars and GCC vectors.
template <typename To, typename From>
JAX_ROI_HOST_DEVICE To same_bits(const From& from) {
  static_assert(sizeof(To) == sizeof(From), "same_bits needs equal sizes");
  To to;
  std::memcpy(&to, &from, sizeof to);
  return to;
}

// Accumulation and geometry type: float for every storage type but double.
template <typename T>
struct AccumulatorOf {
  using type = float;
};
template <>
struct AccumulatorOf<double> {
  using type = double;
};
template <typename T>
using acc_t = typename AccumulatorOf<T>::type;

JAX_ROI_HOST_DEVICE float to_acc(float v) { return v; }
JAX_ROI_HOST_DEVICE double to_acc(double v) { return v; }
JAX_ROI_HOST_DEVICE float to_acc(bfloat16_t v) { return bits_float(uint32_t(v.bits) << 16); }

// The float of a float16's bits (in the low 16 bits of U), exact, written
// once for a scalar and for GCC vectors of lanes (load_native), F being float
// or the float vector of U's shape. Without branches, so that loops over
// lanes vectorise; every select's branches are computed for every lane.
template <typename F, typename U>
JAX_ROI_HOST_DEVICE_INLINED F float_of_float16_bits(U h) {
  const U sign = (h & 0x8000u) << 16;
  const U exponent = (h >> 10) & 0x1fu;
  const U mantissa = h & 0x3ffu;
  const U normal = ((exponent + 112u) << 23) | (mantissa << 13);  // rebiased from 15 to 127
  const U infinite_or_nan = 0x7f800000u | (mantissa << 13);
  // zero or subnormal: mantissa * 2^-24, exact; the mantissa becomes a float
  // as 2^23 + mantissa (its bits) minus 2^23
  const F subnormal =
      (same_bits<F>(U(0x4b000000u | mantissa)) - 8388608.0f) * 5.9604644775390625e-8f;
  const U magnitude = exponent == 0u ? same_bits<U>(subnormal)
                                     : (exponent == 31u ? infinite_or_nan : normal);
  return same_bits<F>(U(sign | magnitude));
}

JAX_ROI_HOST_DEVICE float to_acc(float16_t v) {
  return float_of_float16_bits<float>(uint32_t(v.bits));
}

template <typename T>
struct StoreAs;

template <>
struct StoreAs<float> {
  JAX_ROI_HOST_DEVICE static float from(float v) { return v; }
};
template <>
struct StoreAs<double> {
  JAX_ROI_HOST_DEVICE static double from(double v) { return v; }
};
// The rounding of a float's bits to a 16-bit type's, to nearest even, written
// once for a scalar (host and device) and for GCC vectors of lanes (the CPU
// kernels' store_native): `?:` selects per lane on vectors, and every branch
// is computed for every lane, so none may trap or shift out of range
// (unsigned wraps are harmless).
template <typename U>
JAX_ROI_HOST_DEVICE_INLINED U bfloat16_bits_of(U u) {
  const U rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  return (u & 0x7fffffffu) > 0x7f800000u ? U((u >> 16) | 0x40u) : rounded;  // NaN stays NaN
}

template <typename U>
JAX_ROI_HOST_DEVICE_INLINED U float16_bits_of(U u) {
  const U zero = u - u;  // a zero of U's shape: a scalar or a vector
  const U sign = (u >> 16) & 0x8000u;
  const U magnitude = u & 0x7fffffffu;
  // a normal half: the exponent rebiased from 127 to 15, 13 bits rounded off
  const U rebiased = magnitude - (112u << 23);
  const U normal = (rebiased + 0xfffu + ((rebiased >> 13) & 1u)) >> 13;
  // a subnormal half (below 2^-14): magnitude * 2^24 rounded to an integer,
  // the significand with its implicit bit shifted right 126 - exponent bits,
  // 14 to 31 of them (anything shifted further rounds to 0 as well). Other
  // lanes, whose result is not taken, shift 31 too: a shift outside [1, 31]
  // would be undefined.
  const U shift_wanted = 126u - (magnitude >> 23);
  const U shift = shift_wanted - 14u <= 17u ? shift_wanted : U(zero + 31u);
  const U significand = (magnitude & 0x7fffffu) | 0x800000u;
  const U half_ulp = U(zero + 1u) << (shift - 1u);
  const U subnormal = (significand + (half_ulp - 1u) + ((significand >> shift) & 1u)) >> shift;
  const U finite = magnitude < 0x38800000u ? subnormal : normal;
  const U bounded = magnitude >= 0x477ff000u ? U(zero + 0x7c00u) : finite;  // rounds to inf
  return sign | (magnitude > 0x7f800000u ? U(zero + 0x7e00u) : bounded);    // NaN
}

template <>
struct StoreAs<bfloat16_t> {
  JAX_ROI_HOST_DEVICE static bfloat16_t from(float v) {
    return {uint16_t(bfloat16_bits_of(float_bits(v)))};
  }
};
template <>
struct StoreAs<float16_t> {
  JAX_ROI_HOST_DEVICE static float16_t from(float v) {
    return {uint16_t(float16_bits_of(float_bits(v)))};
  }
};

template <typename T>
JAX_ROI_HOST_DEVICE T from_acc(acc_t<T> v) {
  return StoreAs<T>::from(v);
}

}  // namespace jax_roi
