// The CPU kernels of one op, as the backend (roi_kernels_cpu.h) drives
// them. Each op's file specialises CpuKernel<op> with:
//   Tables<G>, tabulate(pool, p, list, tables): what one call tabulates
//     once for all its threads (NoCallTables: nothing);
//   Scratch<G>: the buffers one thread reuses (with bytes() and forget(),
//     kept by each thread between calls: reused_scratch.h; the tables too);
//   kNchwSplit: what NCHW forward splits among threads, calling forward_nchw
//     with output channels [i0, i1) (kChannels) or with bins [i0, i1) of a
//     part of the ROIs (kBins: it stages them bin-major, [PH*PW, K, C],
//     in a buffer the driver then transposes);
//   kNchwFromChannelsLast: NCHW forward on a small map copies it
//     channels-last (channels_last_copy.h) and calls
//     forward_from_channels_last(q, list, copy, out, scratch) with the ROIs
//     split, q being the problem on the copy;
//   backward_writes_block(channels_last): backward writes every element
//     of its block in that layout (else the block is zeroed before it adds
//     to it);
//   kNhwcBackwardRowBands: NHWC backward blocks are row bands of an image
//     (gradient_blocks.h), not channel ranges (the tap kernels' from
//     CallTapTables, which then finds their taps' rows). The bands revisit
//     every ROI, so they need the call's tables: where tabulate leaves the
//     tables' `shared` false (too many taps to keep), the images split by
//     channels instead;
//   forward_nchw(p, list, tables, i0, i1, features, out, argmax, scratch):
//     the listed ROIs' outputs as kNchwSplit says, the call's tables
//     tabulated;
//   forward_nhwc(p, list, tables, features, out, argmax, scratch): every
//     channel of the listed ROIs (a part of the tabulated list);
//   backward(p, block, tables, grad_out, argmax, grad, scratch): the
//     block's ROIs' (all of one image, all valid) contributions to its
//     input channels and rows of a zeroed gradient, in list order.
// argmax is null for the linear ops.
#pragma once

#include "../problem.h"
#include "gradient_blocks.h"

namespace jax_roi {

template <Op op>
struct CpuKernel;

enum class NchwSplit { kChannels, kBins };

// For kernels that tabulate per thread, as they go.
struct NoCallTables {
  template <typename G>
  struct Tables {};
  template <typename Pool, typename G, typename List>
  static void tabulate(Pool&, const Problem<G>&, const List&, Tables<G>&) {}
};

}  // namespace jax_roi
