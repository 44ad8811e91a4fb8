// Splits [0, n) into chunks run on XLA's intra-op thread pool. The calling
// thread works too, and waits only for chunks some thread has claimed, so a
// pool that never runs the scheduled tasks cannot deadlock the call.
#pragma once

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>

#include "xla/ffi/api/ffi.h"

namespace jax_roi {

struct ChunkQueue {
  int64_t chunks;
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> finished{0};
  std::mutex mutex;
  std::condition_variable all_finished;
};

// body(begin, end) runs once per chunk of at most `grain` indices.
template <typename Body>
void parallel_for(xla::ffi::ThreadPool& pool, int64_t n, int64_t grain,
                  const Body& body) {
  if (n <= 0) return;
  grain = std::max<int64_t>(grain, 1);
  int64_t chunks = (n + grain - 1) / grain;
  int64_t workers = std::min<int64_t>(pool.num_threads(), chunks);
  if (workers <= 1) {
    body(0, n);
    return;
  }
  auto queue = std::make_shared<ChunkQueue>();
  queue->chunks = chunks;
  // A task that starts after every chunk is claimed returns without touching
  // `body`, which may then be gone.
  auto drain = [queue, &body, n, grain]() {
    for (;;) {
      int64_t c = queue->next.fetch_add(1);
      if (c >= queue->chunks) return;
      body(c * grain, std::min(n, (c + 1) * grain));
      if (queue->finished.fetch_add(1) + 1 == queue->chunks) {
        std::lock_guard<std::mutex> lock(queue->mutex);
        queue->all_finished.notify_all();
      }
    }
  };
  for (int64_t w = 1; w < workers; ++w) pool.Schedule([drain] { drain(); });
  drain();
  std::unique_lock<std::mutex> lock(queue->mutex);
  queue->all_finished.wait(lock, [&] { return queue->finished.load() == queue->chunks; });
}

// A grain that gives each thread about `chunks_per_thread` chunks, none
// smaller than min_grain.
inline int64_t balanced_grain(xla::ffi::ThreadPool& pool, int64_t n, int64_t min_grain,
                              int64_t chunks_per_thread) {
  int64_t chunks = std::max<int64_t>(pool.num_threads(), 1) * chunks_per_thread;
  return std::max(min_grain, (n + chunks - 1) / chunks);
}

}  // namespace jax_roi
