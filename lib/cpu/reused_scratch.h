// Scratch kept between calls for the kernels whose scratch is large. Made
// anew in every call, its pages were faulted in again each time: a tap
// kernel's lane tile holds 16 planes of the map (4 MB a thread for rot-p2's
// 256 x 256) and a tap op's tables about 10 MB a call; with them, 84% of
// rot-p2's NCHW backward's 4,300 page faults a call. (roi_align's and
// roi_pool's scratch opted in too raised test_huge.py's peak memory by
// 0.5 GB, enough for it to run out beside another test: not kept yet.)
// - Each pool thread keeps its scratch after a call while it holds at most
//   1/32 of JAX_ROI_CPU_KEPT_SCRATCH_MB (8 MB by default: a machine's every
//   thread keeping that much is bounded, and a larger scratch is freed when
//   the thread is done with it, as before).
// - A call's tables are kept (one set for the process, leased like
//   kept_scratch.h's buffer: a call that finds them taken has its own) while
//   they hold at most JAX_ROI_CPU_KEPT_SCRATCH_MB.
// JAX_ROI_CPU_KEPT_SCRATCH_MB=0 keeps nothing.
//
// A kernel's scratch or tables opt in with `size_t bytes() const`, the
// memory they hold, and `forget()`, which empties them but keeps their
// memory: a use begins with it, so that nothing a kernel caches in its
// scratch (what a lane tile holds) is taken for the next call's. Scratch
// whose end fenced the thread's streamed stores no longer ends, so every
// use ends with the fence. A thread already using its kept scratch or
// tables (a call run inside another's task) gets its own.
#pragma once

#include <cstddef>
#include <cstdint>
#include <mutex>
#include <optional>
#include <type_traits>
#include <utility>
#include <vector>

#include "kept_scratch.h"
#include "stream_store.h"

namespace jax_roi {

inline size_t thread_scratch_cap_bytes() { return kept_scratch_cap_bytes() / 32; }

// The memory the vectors hold.
template <typename... V>
size_t vector_bytes(const std::vector<V>&... v) {
  return (size_t(0) + ... + (v.capacity() * sizeof(V)));
}

template <typename Scratch, typename = void>
struct KeptBetweenCalls : std::false_type {};
template <typename Scratch>
struct KeptBetweenCalls<Scratch, std::void_t<decltype(std::declval<const Scratch&>().bytes())>>
    : std::true_type {};

// body(scratch) with the thread's kept scratch where Scratch opts in, else
// with a new one.
template <typename Scratch, typename Body>
void with_thread_scratch(Body&& body) {
  if constexpr (KeptBetweenCalls<Scratch>::value) {
    static thread_local Scratch kept;
    static thread_local bool in_use = false;
    if (!in_use) {
      struct Use {  // (ends on an exception too)
        Use() { in_use = true; }
        ~Use() {
          stream_fence();
          if (kept.bytes() > thread_scratch_cap_bytes()) kept = Scratch{};
          in_use = false;
        }
      } use;
      kept.forget();
      body(kept);
      return;
    }
  }
  Scratch scratch;
  body(scratch);
}

// A call's tables: the kept ones, emptied, where Tables opts in and they
// are free; else its own.
template <typename Tables>
class TablesLease {
 public:
  TablesLease() {
    if constexpr (KeptBetweenCalls<Tables>::value) {
      // (a mutex its owner tries again is undefined behaviour)
      if (!holding() && mutex().try_lock()) {
        holding() = true;
        tables_ = &kept();
        tables_->forget();
        return;
      }
    }
    tables_ = &own_.emplace();
  }
  ~TablesLease() {
    if constexpr (KeptBetweenCalls<Tables>::value) {
      if (own_) return;
      if (tables_->bytes() > kept_scratch_cap_bytes()) *tables_ = Tables{};
      holding() = false;
      mutex().unlock();
    }
  }
  TablesLease(const TablesLease&) = delete;
  TablesLease& operator=(const TablesLease&) = delete;

  Tables& get() { return *tables_; }

 private:
  static std::mutex& mutex() {
    static std::mutex m;
    return m;
  }
  static Tables& kept() {
    static Tables t;
    return t;
  }
  static bool& holding() {  // whether this thread holds the kept tables
    static thread_local bool h = false;
    return h;
  }

  std::optional<Tables> own_;
  Tables* tables_ = nullptr;
};

}  // namespace jax_roi
