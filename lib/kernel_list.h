// Every kernel, named once. Each op below has the FFI targets
// <name>_forward and <name>_backward; each max op (not linear: its forward
// also records the winners, argmax) also <name>_values_forward, the forward
// without them that calls which are not differentiated run; each box op
// also <name>_box_jvp and <name>_box_vjp (the derivative with respect to
// the ROIs, forward and reverse mode); each level op (a feature pyramid)
// <name>_levels_forward, <name>_levels_backward, <name>_levels_box_jvp and
// <name>_levels_box_vjp, and each level max op <name>_levels_values_forward.
// The handlers (ffi_handlers.h), the registrations every module hands to
// Python and the names Python lowers to all come from these lists.
#pragma once

#define JAX_ROI_OPS(X)     \
  X(align_avg, kAlignAvg)  \
  X(align_max, kAlignMax)  \
  X(pool, kPool)           \
  X(rotated, kRotated)     \
  X(ps_align, kPsAlign)    \
  X(ps_pool, kPsPool)      \
  X(prroi, kPrPool)

// The ops of JAX_ROI_OPS that have a derivative with respect to the ROIs
// (has_box_derivative in problem.h).
#define JAX_ROI_BOX_OPS(X) \
  X(align_avg, kAlignAvg)  \
  X(align_max, kAlignMax)  \
  X(rotated, kRotated)     \
  X(ps_align, kPsAlign)    \
  X(prroi, kPrPool)

#define JAX_ROI_LEVEL_OPS(X) \
  X(align_avg, kAlignAvg)    \
  X(align_max, kAlignMax)
