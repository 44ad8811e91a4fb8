// Feature storage types and their conversions to the accumulation type.
// The 16-bit types are plain bit containers converted by hand, so host and
// device code share one definition and round identically (to nearest even).
#pragma once

#include <cmath>
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

JAX_ROI_HOST_DEVICE float to_acc(float16_t v) {
  uint32_t sign = uint32_t(v.bits & 0x8000u) << 16;
  uint32_t exponent = (v.bits >> 10) & 0x1fu;
  uint32_t mantissa = v.bits & 0x3ffu;
  if (exponent == 0) {  // zero or subnormal: mantissa * 2^-24, exact in float
    float magnitude = static_cast<float>(mantissa) * 5.9604644775390625e-8f;
    return sign ? -magnitude : magnitude;
  }
  if (exponent == 31) return bits_float(sign | 0x7f800000u | (mantissa << 13));
  return bits_float(sign | ((exponent + 112u) << 23) | (mantissa << 13));
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
template <>
struct StoreAs<bfloat16_t> {
  JAX_ROI_HOST_DEVICE static bfloat16_t from(float v) {
    uint32_t u = float_bits(v);
    if ((u & 0x7fffffffu) > 0x7f800000u) return {uint16_t((u >> 16) | 0x40u)};
    u += 0x7fffu + ((u >> 16) & 1u);
    return {uint16_t(u >> 16)};
  }
};
template <>
struct StoreAs<float16_t> {
  JAX_ROI_HOST_DEVICE static float16_t from(float v) {
    uint32_t u = float_bits(v);
    uint16_t sign = uint16_t((u >> 16) & 0x8000u);
    uint32_t magnitude = u & 0x7fffffffu;
    if (magnitude > 0x7f800000u) return {uint16_t(sign | 0x7e00u)};       // NaN
    if (magnitude >= 0x477ff000u) return {uint16_t(sign | 0x7c00u)};      // rounds to inf
    if (magnitude < 0x38800000u) {  // subnormal half: round v * 2^24 to an integer
      float scaled = bits_float(magnitude) * 16777216.0f;
      return {uint16_t(sign | static_cast<uint16_t>(std::nearbyint(scaled)))};
    }
    magnitude -= 112u << 23;  // rebias the exponent from 127 to 15
    magnitude += 0xfffu + ((magnitude >> 13) & 1u);
    return {uint16_t(sign | (magnitude >> 13))};
  }
};

template <typename T>
JAX_ROI_HOST_DEVICE T from_acc(acc_t<T> v) {
  return StoreAs<T>::from(v);
}

}  // namespace jax_roi
