// The NHWC roi_pool backward adds each channel's gradient to the pixel that
// won that channel: image[pixel[c] * stride + c] += g[c]. For bin windows
// too large to sweep (pool_cpu.h) the writes scatter, one pixel per channel.
// Compilers do not vectorise this, but
// AVX-512 gathers and scatters 16 channels at once; the lanes are distinct
// channels, so their addresses never collide within a vector.
#pragma once

#include <cstdint>
#include <limits>
#include <type_traits>

#include "../dtypes.h"
#include "isa_dispatch.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define JAX_ROI_AVX512_SCATTER 1
#endif

namespace jax_roi {

// Pixels outside [0, pixels) (no winner, or bad data) add nothing.
template <typename T, typename G>
inline void scatter_channels_scalar(G* image, int64_t stride, int32_t pixels,
                                    const int32_t* pixel, const T* g, int64_t n) {
  for (int64_t c = 0; c < n; ++c)
    if (pixel[c] >= 0 && pixel[c] < pixels) image[pixel[c] * stride + c] += to_acc(g[c]);
}

#ifdef JAX_ROI_AVX512_SCATTER
__attribute__((target("avx512f"))) inline __m512 load16_as_float(const float* g,
                                                                  __mmask16 m) {
  return _mm512_maskz_loadu_ps(m, g);
}

__attribute__((target("avx512f,avx512bw,avx512vl"))) inline __m512 load16_as_float(const bfloat16_t* g,
                                                                  __mmask16 m) {
  // bfloat16 is the high half of a float. (The zero-masked forms: GCC 12
  // warns that the unmasked ones' undefined source may be uninitialised.)
  __m512i bits = _mm512_maskz_cvtepu16_epi32(m, _mm256_maskz_loadu_epi16(m, g));
  return _mm512_castsi512_ps(_mm512_maskz_slli_epi32(m, bits, 16));
}

// Needs pixels * stride to fit in int32 (the gather's indices).
template <typename T>
__attribute__((target("avx512f,avx512bw,avx512vl"))) void scatter_channels_avx512(
    float* image, int64_t stride, int32_t pixels, const int32_t* pixel, const T* g, int64_t n) {
  const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i limit = _mm512_set1_epi32(pixels);
  const __m512i step = _mm512_set1_epi32(static_cast<int32_t>(stride));
  for (int64_t c = 0; c < n; c += 16) {
    const __mmask16 in_range = n - c >= 16 ? __mmask16(0xffff) : __mmask16((1u << (n - c)) - 1);
    const __m512i p = _mm512_maskz_loadu_epi32(in_range, pixel + c);
    // Unsigned compare: negative pixels are huge and fail it too.
    const __mmask16 m = _mm512_mask_cmplt_epu32_mask(in_range, p, limit);
    if (!m) continue;
    const __m512i index = _mm512_add_epi32(_mm512_mullo_epi32(p, step), lane);
    float* base = image + c;
    const __m512 old = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, index, base, 4);
    _mm512_mask_i32scatter_ps(base, m, index, _mm512_add_ps(old, load16_as_float(g + c, m)), 4);
  }
}
#endif

template <typename T, typename G>
inline void scatter_channels(G* image, int64_t stride, int32_t pixels, const int32_t* pixel,
                             const T* g, int64_t n) {
#ifdef JAX_ROI_AVX512_SCATTER
  if constexpr (std::is_same_v<G, float> &&
                (std::is_same_v<T, float> || std::is_same_v<T, bfloat16_t>)) {
    if (cpu_has_avx512() && static_cast<int64_t>(pixels) * stride + 16 <=
                                 std::numeric_limits<int32_t>::max()) {
      scatter_channels_avx512(image, stride, pixels, pixel, g, n);
      return;
    }
  }
#endif
  scatter_channels_scalar(image, stride, pixels, pixel, g, n);
}

}  // namespace jax_roi
