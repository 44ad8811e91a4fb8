// The derivative with respect to the ROIs on the CPU; the arithmetic is the
// element functions' (elements/box_derivative.h). Threads take whole ROIs:
// each ROI's output tangent is written, and its cotangent summed, by one
// thread in one order, so results do not depend on the thread count.
//
// A linear op's box taps are the same for every channel of a bin, so a ROI
// tabulates them once (BoxTap: the pixel, its bin and dw) and every channel
// reuses them: in NHWC a tap runs over a pixel's contiguous channels (a dot
// product, vectorised); an NCHW map's pixels under the ROI are first copied
// channels-last into a small window, so it runs the same way. A max
// mode's taps are each element's winner, visited element by element.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "../elements/all_elements.h"
#include "channels_last_copy.h"
#include "isa_dispatch.h"
#include "native_vector.h"

namespace jax_roi {

template <typename G>
struct BoxTap {
  int64_t pixel;  // y * W + x
  int64_t bin;    // ph * PW + pw
  G dw[kMaxCoords];
};

template <typename G>
struct BoxScratch {
  std::vector<BoxTap<G>> taps;
  std::vector<G> acc, row, window, rows;
  const void* window_image = nullptr;  // the image `window` holds whole, if any
};

// NCHW: the pixels a ROI's taps read, copied channels-last (as NHWC has
// them) so that each tap's channels are contiguous. Bounded in size; a
// bigger window is read in place.
struct ChannelsLastWindow {
  int64_t y0, x0, width;  // the window's corner in the map, and its width
  bool gathered;
  int64_t at(int64_t pixel, int64_t map_width) const {
    return (pixel / map_width - y0) * width + (pixel % map_width - x0);
  }
};

struct CpuBoxDerivative {
  // The box taps of every bin of ROI r (valid, on a map with pixels).
  template <Op op, typename G>
  static void tabulate(const Problem<G>& p, const Roi<G>& r, std::vector<BoxTap<G>>& taps) {
    const Shape& s = p.shape;
    taps.clear();
    for (int64_t ph = 0; ph < s.pooled_h; ++ph) {
      for (int64_t pw = 0; pw < s.pooled_w; ++pw) {
        Elements<op>::bin_box_taps(p, r, ph, pw, [&](int64_t y, int64_t x, const G* dw) {
          BoxTap<G> t;
          t.pixel = y * s.width + x;
          t.bin = ph * s.pooled_w + pw;
          std::copy(dw, dw + kMaxCoords, t.dw);
          taps.push_back(t);
        });
      }
    }
  }

  // The input channel output channel c of bin b reads (problem.h's rule).
  template <Op op>
  static int64_t input_of(const Shape& s, int64_t c, int64_t b) {
    return input_channel(op, s, OutputElement{0, c, b / s.pooled_w, b % s.pooled_w});
  }

  // sum of g[c] * x[c] for c < n, in vectors of `bytes`. Product c joins
  // partial sum c % parts (the last chunk zero-padded), and the partials are
  // added pairwise, halving: the same operations in the same order, so the
  // same bits, at every vector width (a vector's lanes hold consecutive
  // partials).
  static constexpr int64_t kDotPartialBytes = 128;  // two AVX-512 vectors
  template <int bytes, typename T, typename G>
  static JAX_ROI_ALWAYS_INLINE G dot(const G* g, const T* x, int64_t n) {
    constexpr int64_t lanes = native_lanes<G, bytes>;
    constexpr int64_t parts = kDotPartialBytes / int64_t(sizeof(G)), vectors = parts / lanes;
    static_assert(parts % lanes == 0 && (vectors & (vectors - 1)) == 0 && (lanes & (lanes - 1)) == 0,
                  "the halvings need powers of two");
    NativeVector<G, bytes> acc[vectors] = {};
    auto add_chunk = [&](const G* gc, const auto* xc) JAX_ROI_INLINE_LAMBDA {
      for (int64_t v = 0; v < vectors; ++v)
        acc[v] += load_native<G, bytes>(gc + v * lanes) * load_native<G, bytes>(xc + v * lanes);
    };
    int64_t c = 0;
    for (; c + parts <= n; c += parts) add_chunk(g + c, x + c);
    if (c < n) {
      G g_rest[parts] = {}, x_rest[parts] = {};
      for (int64_t j = 0; c + j < n; ++j) g_rest[j] = g[c + j], x_rest[j] = to_acc(x[c + j]);
      add_chunk(g_rest, x_rest);
    }
    for (int64_t half = vectors / 2; half > 0; half /= 2)  // the halvings across vectors
      for (int64_t v = 0; v < half; ++v) acc[v] += acc[v + half];
    G partial[lanes];
    for (int64_t j = 0; j < lanes; ++j) partial[j] = acc[0][j];
    for (int64_t half = lanes / 2; half > 0; half /= 2)  // and within one
      for (int64_t j = 0; j < half; ++j) partial[j] += partial[j + half];
    return partial[0];
  }

  // ROI k's output tangent: its C_out * PH * PW elements, contiguous in
  // either layout.
  template <Op op, typename T, typename G>
  static void jvp_roi(const Problem<G>& p, int64_t k, const T* features, const int32_t* argmax,
                      const G* tangents, T* out, BoxScratch<G>& scratch) {
    with_native_isa([&](auto) JAX_ROI_INLINE_LAMBDA {
      const Shape& s = p.shape;
      const int64_t bins = s.pooled_h * s.pooled_w, C = s.out_channels, per_roi = C * bins;
      if constexpr (!is_linear(op)) {
        for (int64_t i = k * per_roi; i < (k + 1) * per_roi; ++i)
          out[i] = box_jvp_element<op>(p, i, features, argmax, tangents);
      } else {
        std::vector<G>& acc = scratch.acc;
        acc.assign(per_roi, G(0));
        const Roi<G> r = load_roi(p.rois, k);
        if (r.valid && s.height > 0 && s.width > 0) {
          tabulate<op>(p, r, scratch.taps);
          // The ROI's tangent, zero past its coordinates (a [N, L, 4] row has 4).
          G t[kMaxCoords] = {};
          std::copy_n(tangents + roi_coords_at(p.rois, k), p.rois.coords, t);
          const T* image = features + r.batch * s.channels * s.height * s.width;
          const int64_t plane = s.height * s.width;
          G* __restrict__ sum = acc.data();
          const ChannelsLastWindow win = gather_window<op>(s, image, scratch);
          if (win.gathered) {  // NCHW through the window: acc is [bins, C]
            for (const BoxTap<G>& tap : scratch.taps) {
              const G w = rate(tap, t);
              const G* __restrict__ x = scratch.window.data() + win.at(tap.pixel, s.width) * C;
              G* __restrict__ dst = sum + tap.bin * C;
              for (int64_t c = 0; c < C; ++c) dst[c] += w * x[c];
            }
            T* dst = out + k * per_roi;  // [C, bins]
            for (int64_t c = 0; c < C; ++c)
              for (int64_t b = 0; b < bins; ++b) dst[c * bins + b] = from_acc<T>(sum[b * C + c]);
            return;
          }
          if (!s.channels_last) {  // acc is [C, bins]: a tap adds to every channel's sum
            const int64_t step = input_of<op>(s, 1, 0) * plane;
            for (const BoxTap<G>& tap : scratch.taps) {
              const G w = rate(tap, t);
              const T* __restrict__ x = image + input_of<op>(s, 0, tap.bin) * plane + tap.pixel;
              G* __restrict__ dst = sum + tap.bin;
              for (int64_t c = 0; c < C; ++c) dst[c * bins] += w * to_acc(x[c * step]);
            }
          } else {  // acc is [bins, C]
            for (const BoxTap<G>& tap : scratch.taps) {
              const G w = rate(tap, t);
              const T* __restrict__ x = image + tap.pixel * s.channels + input_of<op>(s, 0, tap.bin);
              G* __restrict__ dst = sum + tap.bin * C;
              const int64_t step = input_of<op>(s, 1, 0);
              if (step == 1)
                for (int64_t c = 0; c < C; ++c) dst[c] += w * to_acc(x[c]);
              else
                for (int64_t c = 0; c < C; ++c) dst[c] += w * to_acc(x[c * step]);
            }
          }
        }
        T* dst = out + k * per_roi;
        for (int64_t i = 0; i < per_roi; ++i) dst[i] = from_acc<T>(acc[i]);
      }
    });
  }

  // ROI k's cotangent.
  template <Op op, typename T, typename G>
  static void vjp_roi(const Problem<G>& p, int64_t k, const T* features, const int32_t* argmax,
                      const T* grad_out, G* cotangents, BoxScratch<G>& scratch) {
    with_native_isa([&](auto bytes) JAX_ROI_INLINE_LAMBDA {
      const Shape& s = p.shape;
      const int64_t bins = s.pooled_h * s.pooled_w, C = s.out_channels, per_roi = C * bins;
      G d[kMaxCoords] = {};
      if constexpr (!is_linear(op)) {
        for (int64_t i = k * per_roi; i < (k + 1) * per_roi; ++i)
          add_box_vjp_element<op>(p, i, features, argmax, grad_out, d);
      } else {
        const Roi<G> r = load_roi(p.rois, k);
        if (r.valid && s.height > 0 && s.width > 0) {
          tabulate<op>(p, r, scratch.taps);
          const T* image = features + r.batch * s.channels * s.height * s.width;
          const T* g = grad_out + k * per_roi;
          const ChannelsLastWindow win = gather_window<op>(s, image, scratch);
          if (win.gathered) {
            vjp_window<decltype(bytes)::value>(s, win, scratch, g, d);
          } else if (!s.channels_last) {
            vjp_channels_outermost<op>(s, scratch, image, g, d);
          } else if (!is_position_sensitive(op)) {
            vjp_pixel_rows<decltype(bytes)::value>(s, scratch, image, g, d);
          } else {  // NHWC, position-sensitive: each tap reads every bins-th channel
            for (const BoxTap<G>& tap : scratch.taps) {
              const T* x = image + tap.pixel * s.channels + tap.bin;
              G sum = G(0);
              for (int64_t c = 0; c < C; ++c) sum += to_acc(g[tap.bin * C + c]) * to_acc(x[c * bins]);
              add_scaled(d, sum, tap);
            }
          }
        }
      }
      store_roi_cotangent(p.rois, k, d, cotangents);
    });
  }

 private:
  static constexpr int64_t kWindowElements = int64_t(1) << 18;

  // Copies the window of pixels a ROI's taps read into scratch.window,
  // channels-last, for NCHW maps (not position-sensitive: a bin's channels
  // are the map's); `gathered` is false otherwise, or when it is too big.
  // A small image is copied whole, once for all its ROIs (they come image
  // by image).
  template <Op op, typename T, typename G>
  static ChannelsLastWindow gather_window(const Shape& s, const T* image, BoxScratch<G>& scratch) {
    ChannelsLastWindow win{0, 0, 0, false};
    if (s.channels_last || is_position_sensitive(op) || scratch.taps.empty()) return win;
    const int64_t plane = s.height * s.width, C = s.channels;
    if (plane * C <= kWindowElements) {
      if (scratch.window_image != image) {
        scratch.window.resize(plane * C);
        copy_pixels_channels_last(image, C, plane, 0, plane, scratch.window.data());
        scratch.window_image = image;
      }
      return ChannelsLastWindow{0, 0, s.width, true};
    }
    scratch.window_image = nullptr;
    int64_t y0 = s.height, y1 = -1, x0 = s.width, x1 = -1;
    for (const BoxTap<G>& tap : scratch.taps) {
      const int64_t y = tap.pixel / s.width, x = tap.pixel % s.width;
      y0 = std::min(y0, y), y1 = std::max(y1, y), x0 = std::min(x0, x), x1 = std::max(x1, x);
    }
    const int64_t wh = y1 - y0 + 1, ww = x1 - x0 + 1;
    if (wh * ww * C > kWindowElements) return win;
    scratch.window.resize(wh * ww * C);
    G* __restrict__ dst = scratch.window.data();
    for (int64_t c0 = 0; c0 < C; c0 += 16) {  // as copy_pixels_channels_last does
      const int64_t c1 = std::min(C, c0 + 16);
      for (int64_t y = 0; y < wh; ++y)
        for (int64_t x = 0; x < ww; ++x)
          for (int64_t c = c0; c < c1; ++c)
            dst[(y * ww + x) * C + c] = to_acc(image[c * plane + (y0 + y) * s.width + x0 + x]);
    }
    return ChannelsLastWindow{y0, x0, ww, true};
  }

  // NCHW through the window: per tap, a dot product of the bin's gradient
  // (gathered [bins, C]) and the pixel's channels.
  template <int bytes, typename T, typename G>
  static JAX_ROI_ALWAYS_INLINE void vjp_window(const Shape& s, const ChannelsLastWindow& win,
                                               BoxScratch<G>& scratch, const T* g, G* d) {
    const int64_t bins = s.pooled_h * s.pooled_w, C = s.out_channels;
    scratch.rows.resize(bins * C);
    G* __restrict__ rows = scratch.rows.data();
    for (int64_t c = 0; c < C; ++c)
      for (int64_t b = 0; b < bins; ++b) rows[b * C + c] = to_acc(g[c * bins + b]);
    for (const BoxTap<G>& tap : scratch.taps)
      add_scaled(d, dot<bytes>(rows + tap.bin * C, scratch.window.data() + win.at(tap.pixel, s.width) * C, C),
                 tap);
  }

  template <typename G>
  static JAX_ROI_ALWAYS_INLINE G rate(const BoxTap<G>& tap, const G* t) {
    G w = G(0);
    for (int j = 0; j < kMaxCoords; ++j) w += tap.dw[j] * t[j];
    return w;
  }

  template <typename G>
  static JAX_ROI_ALWAYS_INLINE void add_scaled(G* d, G v, const BoxTap<G>& tap) {
    for (int j = 0; j < kMaxCoords; ++j) d[j] += v * tap.dw[j];
  }

  // NCHW: per tap, the sum over channels of grad * pixel, channel by channel.
  template <Op op, typename T, typename G>
  static JAX_ROI_ALWAYS_INLINE void vjp_channels_outermost(const Shape& s, BoxScratch<G>& scratch,
                                                           const T* image, const T* g, G* d) {
    const int64_t bins = s.pooled_h * s.pooled_w, plane = s.height * s.width;
    const std::vector<BoxTap<G>>& taps = scratch.taps;
    scratch.acc.assign(taps.size(), G(0));
    G* __restrict__ acc = scratch.acc.data();
    for (int64_t c = 0; c < s.out_channels; ++c) {
      const T* gc = g + c * bins;  // [C, bins]
      for (size_t i = 0; i < taps.size(); ++i)
        acc[i] += to_acc(gc[taps[i].bin]) *
                  to_acc(image[input_of<op>(s, c, taps[i].bin) * plane + taps[i].pixel]);
    }
    for (size_t i = 0; i < taps.size(); ++i) add_scaled(d, acc[i], taps[i]);
  }

  // NHWC: per tap, a dot product of the bin's gradient row and the pixel's channels.
  template <int bytes, typename T, typename G>
  static JAX_ROI_ALWAYS_INLINE void vjp_pixel_rows(const Shape& s, BoxScratch<G>& scratch,
                                                   const T* image, const T* g, G* d) {
    const int64_t C = s.out_channels;
    scratch.row.resize(C);
    G* row = scratch.row.data();
    int64_t loaded = -1;
    for (const BoxTap<G>& tap : scratch.taps) {
      if (tap.bin != loaded) {  // the taps come bin by bin
        for (int64_t c = 0; c < C; ++c) row[c] = to_acc(g[tap.bin * C + c]);
        loaded = tap.bin;
      }
      add_scaled(d, dot<bytes>(row, image + tap.pixel * s.channels, C), tap);
    }
  }
};

}  // namespace jax_roi
