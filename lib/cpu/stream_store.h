// Large results a kernel writes once and does not read again, in runs of
// whole cache lines, go around the cache: a store that misses would first read
// the line from memory (read for ownership), which doubles the traffic of a
// large fresh result. Streamed stores are weakly ordered, so a writer
// fences them (stream_fence) before its results are handed on.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>

#include "env_megabytes.h"
#include "native_vector.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define JAX_ROI_STREAM_STORES 1
#endif

namespace jax_roi {

// The L3 cache size Linux reports for cpu0 (sysfs; the size of one cache,
// shared by the cores listed beside it), 0 where unknown. Not glibc's
// sysconf(_SC_LEVEL3_CACHE_SIZE): on a 32 MB-L3 EPYC VM it answered 320 MB.
inline int64_t l3_cache_bytes() {
  std::FILE* f = std::fopen("/sys/devices/system/cpu/cpu0/cache/index3/size", "r");
  if (!f) return 0;
  long long size = 0;
  char unit = 0;
  const int read = std::fscanf(f, "%lld%c", &size, &unit);
  std::fclose(f);
  if (read < 1 || size < 0) return 0;
  if (unit == 'K') return size << 10;
  if (unit == 'M') return size << 20;
  return read == 2 && unit != '\n' ? 0 : size;
}

// The smallest result that is streamed: 8 MB, or 16 MB where the L3 cache
// holds 32 MB or more. A smaller result may still be in cache when the
// next op reads it. psroi-rfcn's 9.8 MB ps_roi_pool gradients were faster
// written in place than through a streamed scratch on a 480 MB-L3 Xeon
// (12-22%) and a 32 MB-L3 EPYC (up to 20%), where results of 21-25 MB
// (prroi-atom's gradient, rot-p2's bfloat16 output) were still faster
// streamed on the Xeon; on an 8 MB-L3 EPYC the 9.8 MB gradient was faster
// streamed. JAX_ROI_CPU_STREAM_MB sets it.
inline int64_t streamed_result_bytes() {
  static const int64_t bytes = env_megabytes(
      "JAX_ROI_CPU_STREAM_MB", int64_t(l3_cache_bytes() >= (int64_t(32) << 20) ? 16 : 8) << 20);
  return bytes;
}

// Whether a result of `count` elements is streamed.
template <typename T>
bool streamed_result(int64_t count) {
  return count * static_cast<int64_t>(sizeof(T)) >= streamed_result_bytes();
}

#ifdef JAX_ROI_STREAM_STORES
// Streams the whole 16-byte pieces of src's first `bytes` to d, which is
// 16-byte aligned; returns how many bytes that was.
JAX_ROI_ALWAYS_INLINE int64_t stream_aligned_16(char* d, const char* s, int64_t bytes) {
  int64_t i = 0;
  for (; i + 16 <= bytes; i += 16)
    _mm_stream_si128(reinterpret_cast<__m128i*>(d + i),
                     _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i)));
  return i;
}
#endif

// Copies n elements of src to dst: the 16-byte-aligned middle streamed,
// the unaligned ends stored normally.
template <typename T>
inline void stream_copy(T* dst, const T* src, int64_t n) {
#ifdef JAX_ROI_STREAM_STORES
  char* d = reinterpret_cast<char*>(dst);
  const char* s = reinterpret_cast<const char*>(src);
  int64_t bytes = n * static_cast<int64_t>(sizeof(T));
  const int64_t head = std::min<int64_t>(bytes, (16 - reinterpret_cast<uintptr_t>(d) % 16) % 16);
  std::memcpy(d, s, head);
  d += head, s += head, bytes -= head;
  const int64_t streamed = stream_aligned_16(d, s, bytes);
  std::memcpy(d + streamed, s + streamed, bytes - streamed);
#else
  std::memcpy(dst, src, n * sizeof(T));
#endif
}

// stream_copy, or a plain copy where the result is not streamed.
template <typename T>
inline void copy_result(T* dst, const T* src, int64_t n, bool stream) {
  if (stream)
    stream_copy(dst, src, n);
  else
    std::memcpy(dst, src, n * sizeof(T));
}

// store_native, streamed when `stream` and p is 16-byte aligned (then the
// vector's elements fill whole 16-byte stores).
template <int bytes, typename T, typename G>
JAX_ROI_ALWAYS_INLINE void store_native_result(T* p, const NativeVector<G, bytes>& v,
                                               bool stream) {
#ifdef JAX_ROI_STREAM_STORES
  constexpr int64_t out_bytes = native_lanes<G, bytes> * int64_t(sizeof(T));
  if constexpr (out_bytes % 16 == 0) {
    if (stream && reinterpret_cast<uintptr_t>(p) % 16 == 0) {
      T staged[native_lanes<G, bytes>];
      store_native<bytes, T, G>(staged, v);
      stream_aligned_16(reinterpret_cast<char*>(p), reinterpret_cast<const char*>(staged),
                        out_bytes);
      return;
    }
  }
#endif
  store_native<bytes, T, G>(p, v);
}

// Makes this thread's streamed stores visible before what follows.
inline void stream_fence() {
#ifdef JAX_ROI_STREAM_STORES
  _mm_sfence();
#endif
}

}  // namespace jax_roi
