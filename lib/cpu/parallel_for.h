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
  std::atomic<int64_t> next{0};      // the first index no thread has claimed
  std::atomic<int64_t> finished{0};  // indices done
  std::mutex mutex;
  std::condition_variable all_finished;
};

// body(begin, end) for chunks of [0, n) claimed in turn by the pool's
// threads and this one, as many of them as chunks of min_grain give work
// to; a chunk's size is chunk_size(unclaimed, threads working), at least
// min_grain (less only at the end).
template <typename ChunkSize, typename Body>
void run_chunks(xla::ffi::ThreadPool& pool, int64_t n, int64_t min_grain,
                const ChunkSize& chunk_size, const Body& body) {
  if (n <= 0) return;
  min_grain = std::max<int64_t>(min_grain, 1);
  const int64_t workers = std::min<int64_t>(pool.num_threads(), (n + min_grain - 1) / min_grain);
  if (workers <= 1) {
    body(0, n);
    return;
  }
  auto queue = std::make_shared<ChunkQueue>();
  // A task that starts after every chunk is claimed returns without touching
  // `body`, which may then be gone.
  auto drain = [queue, &body, &chunk_size, n, min_grain, workers]() {
    for (;;) {
      int64_t begin = queue->next.load(), end;
      do {
        if (begin >= n) return;
        const int64_t size = std::max(min_grain, chunk_size(n - begin, workers));
        end = begin + std::min(n - begin, size);
      } while (!queue->next.compare_exchange_weak(begin, end));
      body(begin, end);
      if (queue->finished.fetch_add(end - begin) + (end - begin) == n) {
        std::lock_guard<std::mutex> lock(queue->mutex);
        queue->all_finished.notify_all();
      }
    }
  };
  for (int64_t w = 1; w < workers; ++w) pool.Schedule([drain] { drain(); });
  drain();
  std::unique_lock<std::mutex> lock(queue->mutex);
  queue->all_finished.wait(lock, [&] { return queue->finished.load() == n; });
}

// body(begin, end) runs once per chunk of at most `grain` indices.
template <typename Body>
void parallel_for(xla::ffi::ThreadPool& pool, int64_t n, int64_t grain,
                  const Body& body) {
  // (asking for no more than min_grain: every chunk is `grain` long)
  run_chunks(pool, n, grain, [](int64_t, int64_t) { return int64_t(0); }, body);
}

// The same with chunks that shrink as the work runs out (guided
// scheduling): each a share of what is left, none under min_grain. Early
// chunks are long runs of neighbouring indices, and the last ones short, so
// that the threads finish together. For passes of a few hundred
// microseconds: a pool thread starts its task 1-60 us after it is
// scheduled (a two-core VM), and with equal chunks the calling thread then
// waited for the late thread's last chunk.
template <typename Body>
void parallel_for_guided(xla::ffi::ThreadPool& pool, int64_t n, int64_t min_grain,
                         const Body& body) {
  run_chunks(pool, n, min_grain,
             [](int64_t left, int64_t workers) { return left / (2 * workers); }, body);
}

// A grain that gives each thread about `chunks_per_thread` chunks, none
// smaller than min_grain.
inline int64_t balanced_grain(xla::ffi::ThreadPool& pool, int64_t n, int64_t min_grain,
                              int64_t chunks_per_thread) {
  int64_t chunks = std::max<int64_t>(pool.num_threads(), 1) * chunks_per_thread;
  return std::max(min_grain, (n + chunks - 1) / chunks);
}

}  // namespace jax_roi
