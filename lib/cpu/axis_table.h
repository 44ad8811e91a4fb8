// Per-ROI tables of one axis's samples: for every bin along the axis, the
// sample range and each sample's interpolation indices and weights. A bin's
// bilinear samples are the products of its y and x entries, so a ROI costs
// O(PH*gh + PW*gw) table entries and every channel reuses them.
//
// For "avg" the table also merges a bin's samples into taps: each pixel
// index the bin's inside samples touch, once, with their weights summed.
// Bilinear weights factor into a y and an x weight, so a bin's average is
// the sum over y taps and x taps of wy * wx * pixel: the same sum as sample
// by sample (to rounding), with fewer terms wherever samples share pixels
// (4 instead of 16 for a 2 x 2 grid in a bin under a pixel wide).
#pragma once

#include <cstdint>
#include <limits>
#include <vector>

#include "../host_device.h"
#include "../problem.h"

namespace jax_roi {

template <typename G>
struct AxisTap {
  int64_t index;
  G weight;
};

template <typename G>
struct AxisTable {
  std::vector<AxisWeights<G>> samples;  // bin p's samples: [first[p], first[p+1])
  std::vector<int64_t> first;
  std::vector<SampleRange> ranges;
  std::vector<AxisTap<G>> taps;  // bin p's taps: [tap_first[p], tap_first[p+1])
  std::vector<int64_t> tap_first;

  void build(G roi_start, G bin_size, G grid, int64_t bins, int64_t extent) {
    reset(grid, bins);
    for (int64_t p = 0; p < bins; ++p) add_bin(roi_start, bin_size, grid, p, extent);
  }

  // Bin p alone, as the table's bin 0 (for a kernel that visits one bin of
  // a ROI, with the same samples and taps as the whole table's bin p).
  void build_bin(G roi_start, G bin_size, G grid, int64_t p, int64_t extent) {
    reset(grid, 1);
    add_bin(roi_start, bin_size, grid, p, extent);
  }

  const AxisWeights<G>* begin(int64_t p) const { return samples.data() + first[p]; }
  int64_t count(int64_t p) const { return first[p + 1] - first[p]; }
  const AxisTap<G>* taps_begin(int64_t p) const { return taps.data() + tap_first[p]; }
  int64_t tap_count(int64_t p) const { return tap_first[p + 1] - tap_first[p]; }

 private:
  void reset(G grid, int64_t bins) {
    samples.clear();
    first.assign(1, 0);
    ranges.clear();
    taps.clear();
    tap_first.assign(1, 0);
    // Sized once: a table grown entry by entry costs a run of NCHW ROIs
    // more in allocation than in arithmetic.
    const int64_t expected = bins * static_cast<int64_t>(grid >= G(1) && grid < G(64) ? grid : G(1));
    samples.reserve(expected);
    taps.reserve(2 * expected);
    first.reserve(bins + 1);
    ranges.reserve(bins);
    tap_first.reserve(bins + 1);
  }

  void add_bin(G roi_start, G bin_size, G grid, int64_t p, int64_t extent) {
    SampleRange r = sample_range(roi_start, p, bin_size, grid, extent);
    for (int64_t t = r.lo; t < r.hi; ++t) {
      // Computed in place, as the taps are written (see add_new_tap).
      AxisWeights<G>& w = samples.emplace_back();
      w = axis_weights(sample_position(roi_start, p, bin_size, t, grid), extent);
      if (w.inside) {
        add_tap(w.i0, w.w0);
        add_tap(w.i1, w.w1);
      }
    }
    ranges.push_back(r);
    first.push_back(static_cast<int64_t>(samples.size()));
    tap_first.push_back(static_cast<int64_t>(taps.size()));
  }

  // Adds a weight to the current bin's tap for `index`. A tap is kept even
  // when its weights sum to 0, so that a NaN or infinite pixel a sample
  // touches still reaches the result, as it does sample by sample.
  void add_tap(int64_t index, G weight) {
    const int64_t bin_begin = tap_first.back();
    const int64_t n = static_cast<int64_t>(taps.size());
    // Sample positions grow within a bin, so a new index is the last or
    // the one before it, or a new largest one.
    if (n == bin_begin || index > taps[n - 1].index) {
      add_new_tap(index, weight);
      return;
    }
    for (int64_t i = n - 1; i >= bin_begin; --i) {
      if (taps[i].index == index) {
        taps[i].weight += weight;
        return;
      }
    }
    add_new_tap(index, weight);  // positions that fall (an inverted box)
  }

  // Written field by field in place: a pushed temporary is stored as its
  // fields and reloaded as one wide word, which stalls on store forwarding.
  void add_new_tap(int64_t index, G weight) {
    AxisTap<G>& tap = taps.emplace_back();
    tap.index = index;
    tap.weight = weight;
  }
};

// Both axes of one ROI.
template <typename G>
struct RoiTables {
  AxisTable<G> y, x;

  void build(const AlignRoi<G>& a, const Shape& s) {
    y.build(a.y_start, a.bin_h, a.grid_h, s.pooled_h, s.height);
    x.build(a.x_start, a.bin_w, a.grid_w, s.pooled_w, s.width);
  }

  // Bin (ph, pw) alone, as bin (0, 0).
  void build_bin(const AlignRoi<G>& a, const Shape& s, int64_t ph, int64_t pw) {
    y.build_bin(a.y_start, a.bin_h, a.grid_h, ph, s.height);
    x.build_bin(a.x_start, a.bin_w, a.grid_w, pw, s.width);
  }
};

// The taps of the bin a loop over bin (ph, pw) reads ahead of time: the
// next bin of the ROI in row-major order, or none (no taps) past its last
// bin or where the loop does not prefetch.
template <typename G>
struct BinAhead {
  const AxisTap<G>* ys = nullptr;
  const AxisTap<G>* xs = nullptr;
  int64_t ny = 0, nx = 0;
};

template <typename G>
JAX_ROI_ALWAYS_INLINE BinAhead<G> bin_ahead(const RoiTables<G>& t, int64_t ph, int64_t pw,
                                            int64_t pooled_h, int64_t pooled_w, bool prefetch) {
  int64_t next_h = ph, next_w = pw + 1;
  if (next_w == pooled_w) next_w = 0, ++next_h;
  if (!prefetch || next_h == pooled_h) return {};
  return {t.y.taps_begin(next_h), t.x.taps_begin(next_w), t.y.tap_count(next_h),
          t.x.tap_count(next_w)};
}

// Calls f(y, x, weight) for every tap of bin (ph, pw): each pixel its
// in-map samples touch, with their summed bilinear weights. Before each
// tap it calls ahead(y, x) with the tap in its place in bin `next` (the
// same row and column of taps) where that bin has one: a loop that
// prefetches the pixels it will read a bin ahead.
template <typename G, typename F, typename A>
JAX_ROI_ALWAYS_INLINE void for_each_tap(const RoiTables<G>& t, int64_t ph, int64_t pw, const F& f,
                                        const BinAhead<G>& next, const A& ahead) {
  const AxisTap<G>* ys = t.y.taps_begin(ph);
  const AxisTap<G>* xs = t.x.taps_begin(pw);
  const int64_t ny = t.y.tap_count(ph), nx = t.x.tap_count(pw);
  for (int64_t a = 0; a < ny; ++a)
    for (int64_t b = 0; b < nx; ++b) {
      if (a < next.ny && b < next.nx) ahead(next.ys[a].index, next.xs[b].index);
      f(ys[a].index, xs[b].index, ys[a].weight * xs[b].weight);
    }
}

template <typename G, typename F>
JAX_ROI_ALWAYS_INLINE void for_each_tap(const RoiTables<G>& t, int64_t ph, int64_t pw, const F& f) {
  for_each_tap(t, ph, pw, f, BinAhead<G>{}, [](int64_t, int64_t) {});
}

// The ROIs a call visits, in order (see roi_order.h): all of them for one
// map, or those of one level for a pyramid.
struct RoiList {
  const int64_t* ids;
  int64_t size;
};

// The axis tables of a run of ROIs from a list, for NCHW kernels that loop
// over channels outermost: a channel plane then stays in cache while every
// ROI of the run reads it, and the tables are small enough to stay too.
template <typename G>
struct RoiRun {
  std::vector<RoiTables<G>> tables;  // per ROI of the run; reused between runs
  std::vector<int64_t> roi;          // per ROI: its index in the problem
  std::vector<int64_t> batch;        // per ROI, -1 when it reads nothing
  std::vector<G> count;              // per ROI: the divisor of "avg"

  int64_t size() const { return static_cast<int64_t>(roi.size()); }

  // Tabulates the ROIs of `list` from position j0 on until `capacity` axis
  // entries are reached, or the pixels their taps may read (rows times
  // columns, summed over the ROIs) reach `max_pixels` (at least one ROI);
  // returns the end of the run.
  int64_t build(const Problem<G>& p, const RoiList& list, int64_t j0, size_t capacity,
                int64_t max_pixels = std::numeric_limits<int64_t>::max()) {
    const Shape& s = p.shape;
    roi.clear();
    batch.clear();
    count.clear();
    size_t entries = 0;
    int64_t pixels = 0;
    int64_t j = j0;
    for (; j < list.size && (j == j0 || (entries < capacity && pixels < max_pixels)); ++j) {
      if (tables.size() <= static_cast<size_t>(j - j0)) tables.emplace_back();
      RoiTables<G>& t = tables[j - j0];
      const int64_t k = list.ids[j];
      Roi<G> r = load_roi(p.rois, k);
      bool reads = r.valid && s.height > 0 && s.width > 0;
      AlignRoi<G> a{};
      if (reads) {
        a = align_roi_of(p, r);
        t.build(a, s);
        entries += t.y.samples.size() + t.x.samples.size();
        pixels += static_cast<int64_t>(t.y.taps.size() * t.x.taps.size());
      }
      roi.push_back(k);
      batch.push_back(reads ? r.batch : -1);
      count.push_back(a.count);
    }
    return j;
  }
};

}  // namespace jax_roi
