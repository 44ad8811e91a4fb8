// A matrix transposed through 16 x 16 tiles held in L1, so that both the
// reads and the writes move whole cache lines: a column-at-a-time copy
// writes (or reads) one element per line, and with a power-of-two stride
// (a 256-channel row is 1 KiB) those lines fall in a few cache sets and
// evict each other.
#pragma once

#include <algorithm>
#include <cstdint>

#include "isa_dispatch.h"

namespace jax_roi {

// dst[j * dst_stride + i] = convert(src[i * src_stride + j]) for i < rows,
// j < cols. A tile's rows are copied in whole, then read down its columns
// at the tile's fixed stride, which the vectoriser turns into permutes (a
// runtime stride on either side leaves one scalar load and store per
// element).
template <typename S, typename D, typename Convert>
JAX_ROI_ALWAYS_INLINE void transpose_tiled(const S* src, int64_t src_stride, int64_t rows,
                                           int64_t cols, D* dst, int64_t dst_stride,
                                           Convert convert) {
  constexpr int64_t kTile = 16;
  S tile[kTile][kTile];
  for (int64_t i0 = 0; i0 < rows; i0 += kTile) {
    const int64_t ni = std::min(kTile, rows - i0);
    for (int64_t j0 = 0; j0 < cols; j0 += kTile) {
      const int64_t nj = std::min(kTile, cols - j0);
      const S* from = src + i0 * src_stride + j0;
      D* to = dst + j0 * dst_stride + i0;
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
