// The CPU backend: ROI-at-a-time kernels over XLA's thread pool. NCHW
// forward splits the channels among threads (or what the kernel's
// kNchwSplit says, unless it works on a channels-last copy of a small map)
// and NHWC forward the ROIs;
// backward splits into blocks of (image, channels) that each own the
// gradient elements they write (gradient_blocks.h). A pyramid is its levels
// one after another, each visiting only its own ROIs. The derivatives with
// respect to the ROIs split the ROIs (box_derivative_cpu.h).
#pragma once

#include <algorithm>
#include <cstdint>
#include <memory>

#include "../ffi_problem.h"
#include "align_avg_cpu.h"
#include "align_max_cpu.h"
#include "box_derivative_cpu.h"
#include "channels_last_copy.h"
#include "gradient_blocks.h"
#include "gradient_target.h"
#include "huge_pages.h"
#include "parallel_for.h"
#include "pool_cpu.h"
#include "position_sensitive_cpu.h"
#include "precise_cpu.h"
#include "reused_scratch.h"
#include "roi_order.h"
#include "rotated_cpu.h"
#include "transpose.h"

namespace jax_roi {

struct CpuBackend {
  using Binding = ffi::ThreadPool;
  using Context = ffi::ThreadPool;
  static constexpr bool kCommandBufferCompatible = false;
  // 16-bit gradients summed in float32 and narrowed here (gradient_target.h)
  static constexpr bool kNarrowsGradient = true;
  // Passes over the ROIs take them in guided chunks (parallel_for_guided),
  // none shorter than this: long runs of neighbours first, short ones last.
  static constexpr int64_t kRoisPerChunk = 4;

  template <Op op, typename T, typename G>
  static ffi::Error forward(Context& pool, const Problem<G>& p, const T* features, T* out,
                            int32_t* argmax) {
    advise_outputs(p.shape, out, argmax);
    const std::vector<int64_t> order = spatial_order(p);
    forward_listed<op>(pool, p, {order.data(), p.shape.num_rois}, features, out, argmax);
    return ffi::Error::Success();
  }

  // R: the gradient's type, G or (narrowed from G) the features' 16-bit T.
  template <Op op, typename T, typename G, typename R>
  static ffi::Error backward(Context& pool, const Problem<G>& p, const T* grad_out,
                             const int32_t* argmax, R* grad) {
    const std::vector<int64_t> order = spatial_order(p);
    backward_listed<op>(pool, p, {order.data(), p.shape.num_rois}, grad_out, argmax,
                        GradientTarget<G, R>(p.shape, grad));
    return ffi::Error::Success();
  }

  template <Op op, typename T, typename G>
  static ffi::Error forward_levels(Context& pool, const LevelProblems<G>& lp,
                                   const PerLevel<const T>& features, T* out,
                                   int32_t* argmax) {
    advise_outputs(lp.level[0].shape, out, argmax);
    const LevelOrder order = level_order(lp);
    for (int l = 0; l < lp.count; ++l)
      forward_listed<op>(pool, lp.level[l], order.list(l), features.data[l], out, argmax);
    return ffi::Error::Success();
  }

  template <Op op, typename T, typename G, typename R>
  static ffi::Error backward_levels(Context& pool, const LevelProblems<G>& lp, const T* grad_out,
                                    const int32_t* argmax, const PerLevel<R>& grads) {
    const LevelOrder order = level_order(lp);
    for (int l = 0; l < lp.count; ++l)
      backward_listed<op>(pool, lp.level[l], order.list(l), grad_out, argmax,
                          GradientTarget<G, R>(lp.level[l].shape, grads.data[l]));
    return ffi::Error::Success();
  }

  template <Op op, typename T, typename G>
  static ffi::Error box_jvp(Context& pool, const Problem<G>& p, const T* features,
                            const int32_t* argmax, const G* tangents, T* out) {
    each_roi<G>(pool, spatial_order(p), [&](int64_t k, BoxScratch<G>& scratch) {
      CpuBoxDerivative::jvp_roi<op>(p, k, features, argmax, tangents, out, scratch);
    });
    return ffi::Error::Success();
  }

  template <Op op, typename T, typename G>
  static ffi::Error box_vjp(Context& pool, const Problem<G>& p, const T* features,
                            const int32_t* argmax, const T* grad_out, G* cotangents) {
    each_roi<G>(pool, spatial_order(p), [&](int64_t k, BoxScratch<G>& scratch) {
      CpuBoxDerivative::vjp_roi<op>(p, k, features, argmax, grad_out, cotangents, scratch);
    });
    return ffi::Error::Success();
  }

  template <Op op, typename T, typename G>
  static ffi::Error box_jvp_levels(Context& pool, const LevelProblems<G>& lp,
                                   const PerLevel<const T>& features, const int32_t* argmax,
                                   const G* tangents, T* out) {
    each_roi<G>(pool, level_order(lp).ids, [&](int64_t k, BoxScratch<G>& scratch) {
      const int l = lp.level_of(k);
      CpuBoxDerivative::jvp_roi<op>(lp.level[l], k, features.data[l], argmax, tangents, out,
                                    scratch);
    });
    return ffi::Error::Success();
  }

  template <Op op, typename T, typename G>
  static ffi::Error box_vjp_levels(Context& pool, const LevelProblems<G>& lp,
                                   const PerLevel<const T>& features, const int32_t* argmax,
                                   const T* grad_out, G* cotangents) {
    each_roi<G>(pool, level_order(lp).ids, [&](int64_t k, BoxScratch<G>& scratch) {
      const int l = lp.level_of(k);
      CpuBoxDerivative::vjp_roi<op>(lp.level[l], k, features.data[l], argmax, grad_out,
                                    cotangents, scratch);
    });
    return ffi::Error::Success();
  }

 private:
  // body(k, scratch) for every ROI k of `order` (images together, so their
  // pixels stay in cache), whole ROIs to each thread.
  template <typename G, typename Body>
  static void each_roi(Context& pool, const std::vector<int64_t>& order, const Body& body) {
    const int64_t n = static_cast<int64_t>(order.size());
    parallel_for(pool, n, balanced_grain(pool, n, 1, 8), [&](int64_t j0, int64_t j1) {
      BoxScratch<G> scratch;
      for (int64_t j = j0; j < j1; ++j) body(order[j], scratch);
    });
  }

  template <typename T>
  static void advise_outputs(const Shape& s, const T* out, const int32_t* argmax) {
    advise_huge_pages(out, sizeof(T) * s.output_count());
    if (argmax) advise_huge_pages(argmax, sizeof(int32_t) * s.output_count());
  }

  // Writes the output rows of the listed ROIs, and only those.
  template <Op op, typename T, typename G>
  static void forward_listed(Context& pool, const Problem<G>& p, const RoiList& list,
                             const T* features, T* out, int32_t* argmax) {
    using Kernel = CpuKernel<op>;
    using Scratch = typename Kernel::template Scratch<G>;
    const Shape& s = p.shape;
    if (list.size == 0 || s.out_channels == 0 || s.pooled_h * s.pooled_w == 0) return;
    if constexpr (Kernel::kNchwFromChannelsLast) {
      if (pays_for_channels_last_copy(s, list.size)) {
        const std::unique_ptr<G[]> copy = channels_last_copy<T, G>(pool, s, features);
        const Problem<G> q = channels_last_problem(p);
        parallel_for_guided(pool, list.size, kRoisPerChunk, [&](int64_t begin, int64_t end) {
          with_thread_scratch<Scratch>([&](Scratch& scratch) {
            Kernel::forward_from_channels_last(q, {list.ids + begin, end - begin}, copy.get(),
                                               out, scratch);
          });
        });
        return;
      }
    }
    TablesLease<typename Kernel::template Tables<G>> lease;
    auto& tables = lease.get();
    constexpr NchwSplit split = Kernel::kNchwSplit;
    if (!s.channels_last && split == NchwSplit::kBins) {
      // Threads split the bins (and, when the bins are fewer than the
      // threads, the ROIs into as many parts); every thread visits every
      // ROI of its part, so they are tabulated once. The outputs are
      // staged bin-major (see cpu_kernel.h), then transposed.
      Kernel::tabulate(pool, p, list, tables);
      const std::unique_ptr<T[]> staged(new T[s.output_count()]);
      const int64_t bins = s.pooled_h * s.pooled_w;
      const int64_t wanted =
          std::min(list.size, std::max<int64_t>(1, (pool.num_threads() + bins - 1) / bins));
      const int64_t per_part = (list.size + wanted - 1) / wanted;
      const int64_t parts = (list.size + per_part - 1) / per_part;  // none of them empty
      const int64_t items = bins * parts;
      // Guided chunks: the calling thread starts on long runs of bins while
      // the others wake, and the last chunks are single bins, so that the
      // threads finish together.
      parallel_for_guided(pool, items, 1, [&](int64_t i0, int64_t i1) {
        with_thread_scratch<Scratch>([&](Scratch& scratch) {
          for (int64_t i = i0; i < i1; ++i) {
            const int64_t b = i / parts, first = (i % parts) * per_part;
            const RoiList part{list.ids + first, std::min(per_part, list.size - first)};
            Kernel::forward_nchw(p, part, tables, b, b + 1, features, staged.get(), argmax,
                                 scratch);
          }
        });
      });
      // Transposed in runs of consecutive ROIs, whose staged outputs lie
      // side by side: a ROI alone (psroi-rfcn's 21 channels) left most of
      // the tiles partial, copied element by element (psroi-rfcn's NCHW
      // forwards 5-9% faster).
      std::vector<int64_t> ids(list.ids, list.ids + list.size);
      std::sort(ids.begin(), ids.end());
      parallel_for_guided(pool, list.size, kRoisPerChunk, [&](int64_t j0, int64_t j1) {
        const int64_t C = s.out_channels;
        for (int64_t j = j0, end; j < j1; j = end) {
          const int64_t k = ids[j];
          for (end = j + 1; end < j1 && ids[end] == k + (end - j);) ++end;
          transpose_tiled(staged.get() + k * C, s.num_rois * C, bins, (end - j) * C,
                          out + k * C * bins, bins, [](T v) { return v; });
        }
      });
      return;
    }
    if (!s.channels_last && split == NchwSplit::kChannels) {
      // Channels outermost, so each plane is read from memory once per run
      // of ROIs; every thread visits every ROI, so they are tabulated once.
      Kernel::tabulate(pool, p, list, tables);
      const int64_t C = s.out_channels;
      parallel_for(pool, C, balanced_grain(pool, C, 1, 4), [&](int64_t c0, int64_t c1) {
        with_thread_scratch<Scratch>([&](Scratch& scratch) {
          Kernel::forward_nchw(p, list, tables, c0, c1, features, out, argmax, scratch);
        });
      });
      return;
    }
    // NHWC: each thread has ROIs of its own: it tabulates them as it visits
    // them (the tables stay empty), each while its pixels are being read.
    parallel_for_guided(pool, list.size, kRoisPerChunk, [&](int64_t begin, int64_t end) {
      with_thread_scratch<Scratch>([&](Scratch& scratch) {
        Kernel::forward_nhwc(p, {list.ids + begin, end - begin}, tables, features, out, argmax,
                             scratch);
      });
    });
  }

  // Adds the listed ROIs' contributions to a zeroed gradient. Each block
  // zeroes its own part just before adding to it, so that part is still in
  // cache (unless the kernel writes all of it anyway), and hands it to the
  // target when done; images no ROI reads are zeroed first.
  template <Op op, typename T, typename G, typename R>
  static void backward_listed(Context& pool, const Problem<G>& p, const RoiList& list,
                              const T* grad_out, const int32_t* argmax,
                              const GradientTarget<G, R>& target) {
    using Kernel = CpuKernel<op>;
    const Shape& s = p.shape;
    G* grad = target.sums();
    const bool any_bins = s.pooled_h * s.pooled_w > 0;
    const int64_t threads = pool.num_threads();
    const bool row_bands = Kernel::kNhwcBackwardRowBands && s.channels_last;
    std::vector<GradientBlock> blocks =
        any_bins ? gradient_blocks(p, list, threads, row_bands) : std::vector<GradientBlock>{};
    std::vector<bool> read(s.num_images, false);
    for (const GradientBlock& block : blocks) read[block.batch] = true;
    parallel_for(pool, s.num_images, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b)
        if (!read[b]) target.zero(image_block(s, {}, b));
    });
    // Tabulated once when blocks share ROIs (an image split by channels or
    // rows); else each block tabulates its own as it visits them. Row bands
    // revisit every ROI, so without shared taps the images split by
    // channels instead.
    const bool blocks_share_rois = std::any_of(
        blocks.begin(), blocks.end(), [&](const GradientBlock& b) { return !b.whole_image(s); });
    TablesLease<typename Kernel::template Tables<G>> lease;
    auto& tables = lease.get();
    if (blocks_share_rois) Kernel::tabulate(pool, p, list, tables);
    if constexpr (Kernel::kNhwcBackwardRowBands)
      if (row_bands && !tables.shared) blocks = gradient_blocks(p, list, threads, false);
    using Scratch = typename Kernel::template Scratch<G>;
    parallel_for(pool, static_cast<int64_t>(blocks.size()), 1, [&](int64_t b0, int64_t b1) {
      with_thread_scratch<Scratch>([&](Scratch& scratch) {
        for (int64_t b = b0; b < b1; ++b) {
          if (!Kernel::backward_writes_block(s.channels_last))
            zero_gradient_block(s, blocks[b], grad);
          Kernel::backward(p, blocks[b], tables, grad_out, argmax, grad, scratch);
          target.finish(blocks[b]);
        }
      });
    });
  }
};

}  // namespace jax_roi
