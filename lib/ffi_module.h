// What every kernel module hands to Python: registrations(), a dict of the
// kernels' FFI handlers by name (Python prefixes the names to make target
// names), and the versions they speak.
#pragma once

#include <vector>

#include "kernel_entry.h"
#include "nanobind/nanobind.h"
#include "xla/ffi/api/ffi.h"

namespace jax_roi {

inline nanobind::dict registrations_of(const std::vector<KernelEntry>& entries) {
  nanobind::dict targets;
  for (const auto& entry : entries)
    targets[entry.name.c_str()] = nanobind::capsule(entry.handler);
  return targets;
}

}  // namespace jax_roi

#define JAX_ROI_FFI_API_VERSION nanobind::make_tuple(XLA_FFI_API_MAJOR, XLA_FFI_API_MINOR)

// The handlers' ABI: operands, results and attributes of every target. It is
// part of every target name, so a serialized export made with another ABI
// finds no handler instead of binding to a wrong one. Raise it whenever a
// handler's signature or an attribute's meaning changes.
#define JAX_ROI_ABI_VERSION 2
