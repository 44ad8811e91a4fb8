// One kernel as a module lists it for Python: its name and FFI handler.
#pragma once

#include <string>

namespace jax_roi {

struct KernelEntry {
  std::string name;  // the target's name without its prefix
  void* handler;     // an XLA_FFI_Handler*
};

}  // namespace jax_roi
