// Kernel bodies as functions of one output element. A CUDA grid-stride loop
// and the serial CUDA-logic loop call the same functions; only the gradient
// `Add` differs (atomic on the GPU, a plain add in serial).
//
// Each op specialises Elements<op> (in its family's file) with
//   forward(problem, i, features, out, argmax)
//   backward(problem, i, grad_out, argmax, grad_features, add)
// argmax is unused (and may be null) for the linear ops.
#pragma once

#include "../dtypes.h"
#include "../problem.h"

namespace jax_roi {

template <Op op>
struct Elements;

template <typename T, typename G>
JAX_ROI_HOST_DEVICE G interpolate(const T* features, const Plane& p, const Bilinear<G>& w) {
  return w.w00 * to_acc(features[p.at(w.y0, w.x0)]) +
         w.w01 * to_acc(features[p.at(w.y0, w.x1)]) +
         w.w10 * to_acc(features[p.at(w.y1, w.x0)]) +
         w.w11 * to_acc(features[p.at(w.y1, w.x1)]);
}

template <typename G, typename Add>
JAX_ROI_HOST_DEVICE void scatter_bilinear(G* grad, const Plane& p, const Bilinear<G>& w,
                                          G scale, const Add& add) {
  add(grad + p.at(w.y0, w.x0), scale * w.w00);
  add(grad + p.at(w.y0, w.x1), scale * w.w01);
  add(grad + p.at(w.y1, w.x0), scale * w.w10);
  add(grad + p.at(w.y1, w.x1), scale * w.w11);
}

// The mean of a bin's bilinear samples, and its adjoint. A Bin has `valid`,
// `plane`, sample ranges `ys` and `xs`, `count`, and sample(iy, ix, shape).
template <typename T, typename G, typename Bin>
JAX_ROI_HOST_DEVICE G average_of_samples(const Bin& bin, const Shape& s, const T* features) {
  G sum = G(0);
  if (!bin.valid) return sum;
  for (int64_t iy = bin.ys.lo; iy < bin.ys.hi; ++iy) {
    for (int64_t ix = bin.xs.lo; ix < bin.xs.hi; ++ix) {
      Bilinear<G> w = bin.sample(iy, ix, s);
      if (w.inside) sum += interpolate(features, bin.plane, w);
    }
  }
  return sum / bin.count;
}

template <typename G, typename Bin, typename Add>
JAX_ROI_HOST_DEVICE void scatter_to_samples(const Bin& bin, const Shape& s, G grad_out,
                                            G* grad_features, const Add& add) {
  if (!bin.valid) return;
  G g = grad_out / bin.count;
  for (int64_t iy = bin.ys.lo; iy < bin.ys.hi; ++iy) {
    for (int64_t ix = bin.xs.lo; ix < bin.xs.hi; ++ix) {
      Bilinear<G> w = bin.sample(iy, ix, s);
      if (w.inside) scatter_bilinear(grad_features, bin.plane, w, g, add);
    }
  }
}

}  // namespace jax_roi
