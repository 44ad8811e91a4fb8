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

#include "env_megabytes.h"
#include "huge_pages.h"

namespace jax_roi {

inline size_t kept_scratch_cap_bytes() {
  static const size_t cap =
      static_cast<size_t>(env_megabytes("JAX_ROI_CPU_KEPT_SCRATCH_MB", int64_t(256) << 20));
  return cap;
}

class KeptScratch {
 public:
  static KeptScratch& instance() {
    static KeptScratch kept;
    return kept;
  }
  ~KeptScratch() { std::free(data_); }

  // Scratch of at least `bytes`, uninitialised, page aligned (2 MiB when
  // large). Whoever is given the kept buffer returns it with give_back().
  void* take(size_t bytes, bool& kept) {
    kept = false;
    if (bytes == 0) return nullptr;
    kept = bytes <= kept_scratch_cap_bytes() && mutex_.try_lock();
    if (!kept) return allocate(bytes);
    if (bytes > capacity_) {
      std::free(data_);
      capacity_ = 0;
      data_ = allocate(bytes);
      if (!data_) {
        mutex_.unlock();
        kept = false;
        return nullptr;
      }
      capacity_ = bytes;
    }
    return data_;
  }

  void give_back() {
#if defined(__linux__) && defined(MADV_FREE)
    // data_ is page aligned (madvise refuses anything else); the partial
    // page at the end stays.
    const size_t whole_pages = capacity_ / kPageBytes * kPageBytes;
    if (whole_pages > 0) madvise(data_, whole_pages, MADV_FREE);
#endif
    mutex_.unlock();
  }

 private:
  static constexpr size_t kPageBytes = 4096;

  static void* allocate(size_t bytes) {
    const size_t align = worth_huge_pages(bytes) ? kHugePageBytes : kPageBytes;
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
  bool kept_ = false;  // declared first: data_'s initialiser sets it
  G* data_;
};

}  // namespace jax_roi
