// Every kernel, named once. Each op below has the FFI targets
// <name>_forward and <name>_backward; each level op also
// <name>_levels_forward and <name>_levels_backward (a feature pyramid).
// The handlers (ffi_handlers.h), the registrations every module hands to
// Python and the names Python lowers to all come from these lists.
#pragma once

#define JAX_ROI_OPS(X)     \
  X(align_avg, kAlignAvg)  \
  X(align_max, kAlignMax)  \
  X(pool, kPool)           \
  X(rotated, kRotated)     \
  X(ps_align, kPsAlign)    \
  X(ps_pool, kPsPool)

#define JAX_ROI_LEVEL_OPS(X) \
  X(align_avg, kAlignAvg)    \
  X(align_max, kAlignMax)
