// Large results are fresh memory on every call (malloc maps them anew), and
// the first write to each 4 KiB page faults. Transparent huge pages turn
// that into one fault per 2 MiB; where the system leaves them to madvise,
// the kernels ask for them on the 2 MiB-aligned interior of a result they
// are about to write whole. A hint only: contents are untouched, and where
// huge pages are off nothing changes.
#pragma once

#include <cstddef>
#include <cstdint>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace jax_roi {

constexpr size_t kHugePageBytes = size_t(2) << 20;

// Whether huge pages are worth asking for on a buffer of `bytes`.
inline bool worth_huge_pages(size_t bytes) { return bytes >= 2 * kHugePageBytes; }

inline void advise_huge_pages(const void* data, size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHugePage = kHugePageBytes;
  if (!worth_huge_pages(bytes)) return;  // small results: not worth a system call
  const uintptr_t start = reinterpret_cast<uintptr_t>(data);
  const uintptr_t begin = (start + kHugePage - 1) & ~(kHugePage - 1);
  const uintptr_t end = (start + bytes) & ~(kHugePage - 1);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#else
  (void)data;
  (void)bytes;
#endif
}

}  // namespace jax_roi
