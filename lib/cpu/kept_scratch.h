// One scratch buffer kept between backward calls. The 16-bit backward sums in
// a float32 scratch as large as the gradient (134 MB for rot-p2). Fresh from
// malloc on every call, its pages fault on first touch, and after other large
// calls that cost rot-p2's bfloat16 backward a third of its time. So the
// library keeps one such buffer, up to a cap:
// - a call that finds it free (and the request within the cap) leases it,
//   growing it if needed; a call that finds it taken (another call running at
//   once) or asks for more than the cap allocates its own, as before;
// - between calls its pages are given back lazily (MADV_FREE): the system
//   reclaims them under memory pressure, and until then the next call reuses
//   them without faults.
// JAX_ROI_CPU_KEPT_SCRATCH_MB sets the cap (default 256; 0 keeps nothing).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <mutex>
#include <new>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "huge_pages.h"

namespace jax_roi {

inline size_t kept_scratch_cap_bytes() {
  static const size_t cap = [] {
    const char* v = std::getenv("JAX_ROI_CPU_KEPT_SCRATCH_MB");
    const long long mb = v && *v ? std::atoll(v) : 256;
    return mb > 0 ? static_cast<size_t>(mb) << 20 : size_t(0);
  }();
  return cap;
}

class KeptScratch {
 public:
  static KeptScratch& instance() {
    static KeptScratch kept;
    return kept;
  }
  ~KeptScratch() { std::free(data_); }

  // Scratch of at least `bytes`, uninitialised, 2 MiB aligned when large.
  // Whoever is given the kept buffer returns it with give_back().
  void* take(size_t bytes, bool& kept) {
    kept = false;
    if (bytes == 0) return nullptr;
    kept = bytes <= kept_scratch_cap_bytes() && mutex_.try_lock();
    if (!kept) return allocate(bytes);
    if (bytes > capacity_) {
      std::free(data_);
      data_ = allocate(bytes);
      capacity_ = data_ ? bytes : 0;
      if (!data_) {
        mutex_.unlock();
        kept = false;
        return nullptr;
      }
    }
    return data_;
  }

  void give_back() {
#if defined(__linux__) && defined(MADV_FREE)
    constexpr uintptr_t kPage = 4096;
    const uintptr_t begin = reinterpret_cast<uintptr_t>(data_);
    const uintptr_t end = (begin + capacity_) & ~(kPage - 1);
    if (end > begin) madvise(data_, end - begin, MADV_FREE);
#endif
    mutex_.unlock();
  }

 private:
  static void* allocate(size_t bytes) {
    constexpr size_t kHugePage = size_t(2) << 20;
    const size_t align = bytes >= 2 * kHugePage ? kHugePage : 64;
    void* p = std::aligned_alloc(align, (bytes + align - 1) / align * align);
    if (p) advise_huge_pages(p, bytes);
    return p;
  }

  std::mutex mutex_;
  void* data_ = nullptr;
  size_t capacity_ = 0;
};

// A typed lease: the kept buffer when it is free, else memory of its own;
// nothing for a count of zero.
template <typename G>
class ScratchLease {
 public:
  explicit ScratchLease(int64_t count)
      : data_(static_cast<G*>(KeptScratch::instance().take(sizeof(G) * count, kept_))) {
    if (!data_ && count > 0) throw std::bad_alloc();
  }
  ~ScratchLease() {
    if (kept_) KeptScratch::instance().give_back();
    else std::free(data_);
  }
  ScratchLease(const ScratchLease&) = delete;
  ScratchLease& operator=(const ScratchLease&) = delete;

  G* get() const { return data_; }

 private:
  bool kept_ = false;
  G* data_;
};

}  // namespace jax_roi
