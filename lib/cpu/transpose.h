// A matrix transposed through 16 x 16 tiles held in L1, so that both the
// reads and the writes move whole cache lines: a column-at-a-time copy
// writes (or reads) one element per line, and with a power-of-two stride
// (a 256-channel row is 1 KiB) those lines fall in a few cache sets and
// evict each other. A whole tile of floats is transposed in registers where
// the processor has AVX2: 8 x 8 blocks by vector shuffles, 24 for 64
// elements, where reading down a column assembled each vector from 8
// scalar loads (a loop of transpositions on a Zen 4 EPYC: 1.5-2x as fast
// for matrices in the L2, 1.2-1.6x for larger ones).
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "isa_dispatch.h"

namespace jax_roi {

namespace transpose_detail {

#ifdef JAX_ROI_WIDTHS_HAVE_THEIR_ISA
// Eight floats, loaded and stored at any 4-byte alignment, through any
// float pointer (may_alias, as the intrinsics' own vector types are).
typedef float Floats8 __attribute__((vector_size(32), aligned(4), may_alias));

// dst[j * dst_stride + i] = src[i * src_stride + j] for i, j < 8: pairs of
// rows interleaved, then pairs of pairs, then the 4 x 4 halves swapped.
JAX_ROI_ALWAYS_INLINE void transpose_8x8(const float* src, int64_t src_stride, float* dst,
                                         int64_t dst_stride) {
  Floats8 r[8], t[8], u[8];
  for (int i = 0; i < 8; ++i) r[i] = *reinterpret_cast<const Floats8*>(src + i * src_stride);
  for (int i = 0; i < 8; i += 2) {
    t[i] = __builtin_shufflevector(r[i], r[i + 1], 0, 8, 1, 9, 4, 12, 5, 13);
    t[i + 1] = __builtin_shufflevector(r[i], r[i + 1], 2, 10, 3, 11, 6, 14, 7, 15);
  }
  for (int i = 0; i < 8; i += 4) {
    for (int h = 0; h < 2; ++h) {
      u[i + 2 * h] = __builtin_shufflevector(t[i + h], t[i + h + 2], 0, 1, 8, 9, 4, 5, 12, 13);
      u[i + 2 * h + 1] =
          __builtin_shufflevector(t[i + h], t[i + h + 2], 2, 3, 10, 11, 6, 7, 14, 15);
    }
  }
  for (int j = 0; j < 4; ++j) {
    *reinterpret_cast<Floats8*>(dst + j * dst_stride) =
        __builtin_shufflevector(u[j], u[j + 4], 0, 1, 2, 3, 8, 9, 10, 11);
    *reinterpret_cast<Floats8*>(dst + (j + 4) * dst_stride) =
        __builtin_shufflevector(u[j], u[j + 4], 4, 5, 6, 7, 12, 13, 14, 15);
  }
}

// A 16 x 16 tile, compiled for AVX2 and called, not inlined, from code of
// any ISA (compiled for the baseline, the shuffles were 5x slower than the
// scalar copy).
JAX_ROI_ISA_FOR_32 __attribute__((noinline)) inline void transpose_16x16(
    const float* src, int64_t src_stride, float* dst, int64_t dst_stride) {
  for (int64_t bi = 0; bi < 16; bi += 8)
    for (int64_t bj = 0; bj < 16; bj += 8)
      transpose_8x8(src + bi * src_stride + bj, src_stride, dst + bj * dst_stride + bi,
                    dst_stride);
}

constexpr bool kHasRegisterTiles = true;
inline bool register_tiles() { return cpu_has_avx2(); }
#else
constexpr bool kHasRegisterTiles = false;
inline bool register_tiles() { return false; }
inline void transpose_16x16(const float*, int64_t, float*, int64_t) {}
#endif

}  // namespace transpose_detail

// dst[j * dst_stride + i] = convert(src[i * src_stride + j]) for i < rows,
// j < cols. A tile's rows are copied in whole, then read down its columns
// at the tile's fixed stride, which the vectoriser turns into permutes (a
// runtime stride on either side leaves one scalar load and store per
// element). From float to float, and from int32 to int32 (winners),
// convert is the identity (to_acc, from_acc<float>), and whole tiles may
// skip it: register tiles move 4-byte words, whatever their bits mean.
template <typename S, typename D, typename Convert>
JAX_ROI_ALWAYS_INLINE void transpose_tiled(const S* src, int64_t src_stride, int64_t rows,
                                           int64_t cols, D* dst, int64_t dst_stride,
                                           Convert convert) {
  constexpr int64_t kTile = 16;
  constexpr bool kFourByteWords = std::is_same_v<S, D> &&
                                  (std::is_same_v<S, float> || std::is_same_v<S, int32_t>) &&
                                  transpose_detail::kHasRegisterTiles;
  const bool in_registers = kFourByteWords && transpose_detail::register_tiles();
  S tile[kTile][kTile];
  for (int64_t i0 = 0; i0 < rows; i0 += kTile) {
    const int64_t ni = std::min(kTile, rows - i0);
    for (int64_t j0 = 0; j0 < cols; j0 += kTile) {
      const int64_t nj = std::min(kTile, cols - j0);
      const S* from = src + i0 * src_stride + j0;
      D* to = dst + j0 * dst_stride + i0;
      if constexpr (kFourByteWords) {
        if (in_registers && ni == kTile && nj == kTile) {
          transpose_detail::transpose_16x16(reinterpret_cast<const float*>(from), src_stride,
                                            reinterpret_cast<float*>(to), dst_stride);
          continue;
        }
      }
      if (ni == kTile && nj == kTile) {  // fixed trip counts, for the vectoriser
        for (int64_t i = 0; i < kTile; ++i)
          for (int64_t j = 0; j < kTile; ++j) tile[i][j] = from[i * src_stride + j];
        for (int64_t j = 0; j < kTile; ++j)
          for (int64_t i = 0; i < kTile; ++i) to[j * dst_stride + i] = convert(tile[i][j]);
        continue;
      }
      if (nj == kTile) {  // a few rows (as few channels): whole-row copies still
        for (int64_t i = 0; i < ni; ++i)
          for (int64_t j = 0; j < kTile; ++j) tile[i][j] = from[i * src_stride + j];
        for (int64_t j = 0; j < kTile; ++j)
          for (int64_t i = 0; i < ni; ++i) to[j * dst_stride + i] = convert(tile[i][j]);
        continue;
      }
      for (int64_t i = 0; i < ni; ++i)
        for (int64_t j = 0; j < nj; ++j) tile[i][j] = from[i * src_stride + j];
      for (int64_t j = 0; j < nj; ++j)
        for (int64_t i = 0; i < ni; ++i) to[j * dst_stride + i] = convert(tile[i][j]);
    }
  }
}

}  // namespace jax_roi
