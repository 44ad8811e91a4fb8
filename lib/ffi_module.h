// The registrations() dict a Python module hands to jax.ffi.register_ffi_target.
#pragma once

#include "nanobind/nanobind.h"
#include "xla/ffi/api/ffi.h"

#define JAX_ROI_CAPSULE(fn) nanobind::capsule(reinterpret_cast<void*>(fn))

// Keys are the kernels' names; Python prefixes them to make target names.
#define JAX_ROI_REGISTRATIONS(Prefix)                                        \
  [] {                                                                       \
    nanobind::dict targets;                                                  \
    targets["align_avg_forward"] = JAX_ROI_CAPSULE(Prefix##AlignAvgForward);   \
    targets["align_avg_backward"] = JAX_ROI_CAPSULE(Prefix##AlignAvgBackward); \
    targets["align_max_forward"] = JAX_ROI_CAPSULE(Prefix##AlignMaxForward);   \
    targets["align_max_backward"] = JAX_ROI_CAPSULE(Prefix##AlignMaxBackward); \
    targets["pool_forward"] = JAX_ROI_CAPSULE(Prefix##PoolForward);            \
    targets["pool_backward"] = JAX_ROI_CAPSULE(Prefix##PoolBackward);          \
    targets["align_avg_levels_forward"] =                                    \
        JAX_ROI_CAPSULE(Prefix##AlignAvgLevelsForward);                      \
    targets["align_avg_levels_backward"] =                                   \
        JAX_ROI_CAPSULE(Prefix##AlignAvgLevelsBackward);                     \
    targets["align_max_levels_forward"] =                                    \
        JAX_ROI_CAPSULE(Prefix##AlignMaxLevelsForward);                      \
    targets["align_max_levels_backward"] =                                   \
        JAX_ROI_CAPSULE(Prefix##AlignMaxLevelsBackward);                     \
    return targets;                                                          \
  }

#define JAX_ROI_FFI_API_VERSION nanobind::make_tuple(XLA_FFI_API_MAJOR, XLA_FFI_API_MINOR)

// The handlers' ABI: operands, results and attributes of every target. It is
// part of every target name, so a serialized export made with another ABI
// finds no handler instead of binding to a wrong one. Raise it whenever a
// handler's signature or an attribute's meaning changes.
#define JAX_ROI_ABI_VERSION 1
