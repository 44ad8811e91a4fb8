// The CPU kernels of one op, as the backend (roi_kernels_cpu.h) drives
// them. Each op's file specialises CpuKernel<op> with:
//   Scratch<G>: the buffers one thread reuses from call to call;
//   kNhwcChunksPerThread: how finely NHWC forward splits the ROIs;
//   forward_nchw(p, list, c0, c1, features, out, argmax, scratch):
//     output channels [c0, c1) of the listed ROIs;
//   forward_nhwc(p, list, features, out, argmax, scratch): every channel
//     of the listed ROIs;
//   backward(p, list, c0, c1, grad_out, argmax, grad, scratch): the listed
//     ROIs' (all of one image) contributions to input channels [c0, c1)
//     of a zeroed gradient, in list order.
// argmax is null for the linear ops.
#pragma once

#include "../problem.h"

namespace jax_roi {

template <Op op>
struct CpuKernel;

}  // namespace jax_roi
