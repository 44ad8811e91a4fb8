// The registrations() dict a Python module hands to jax.ffi.register_ffi_target.
#pragma once

#include "nanobind/nanobind.h"
#include "xla/ffi/api/ffi.h"

#define JAX_ROI_CAPSULE(fn) nanobind::capsule(reinterpret_cast<void*>(fn))

// Target names are shared by every platform; each module registers them
// for its own platform.
#define JAX_ROI_REGISTRATIONS(Prefix)                                                     \
  [] {                                                                                    \
    nanobind::dict targets;                                                               \
    targets["jax_roi_align_avg_forward"] = JAX_ROI_CAPSULE(Prefix##AlignAvgForward);      \
    targets["jax_roi_align_avg_backward"] = JAX_ROI_CAPSULE(Prefix##AlignAvgBackward);    \
    targets["jax_roi_align_max_forward"] = JAX_ROI_CAPSULE(Prefix##AlignMaxForward);      \
    targets["jax_roi_align_max_backward"] = JAX_ROI_CAPSULE(Prefix##AlignMaxBackward);    \
    targets["jax_roi_pool_forward"] = JAX_ROI_CAPSULE(Prefix##PoolForward);               \
    targets["jax_roi_pool_backward"] = JAX_ROI_CAPSULE(Prefix##PoolBackward);             \
    return targets;                                                                       \
  }

#define JAX_ROI_FFI_API_VERSION nanobind::make_tuple(XLA_FFI_API_MAJOR, XLA_FFI_API_MINOR)
