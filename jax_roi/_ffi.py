"""Loads the compiled kernel modules and registers their XLA FFI targets."""

import jax
from jax import export as _export
import jaxlib

from . import _jax_roi_cpu

# The kernels speak the XLA FFI API version of the headers they were built
# against; these jaxlib releases speak the same one.
SUPPORTED_JAXLIB = ((0, 9, 1), (0, 12, 0))


def _version_tuple(text):
    parts = []
    for piece in text.split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def _check_jaxlib():
    found = _version_tuple(jaxlib.__version__)
    low, high = SUPPORTED_JAXLIB
    if not low <= found < high:
        raise ImportError(
            f"jax_roi was built for jaxlib >= {'.'.join(map(str, low))}, "
            f"< {'.'.join(map(str, high))} (XLA FFI API "
            f"{'.'.join(map(str, _jax_roi_cpu.ffi_api_version))}), but jaxlib "
            f"{jaxlib.__version__} is installed: install a jaxlib in that range or "
            "rebuild jax_roi against this one (pip install --force-reinstall .)")


# Target names carry the handlers' ABI version (lib/ffi_module.h), so an
# exported artifact only ever binds to handlers of the ABI it was made with.
TARGET_PREFIX = f"jax_roi_v{_jax_roi_cpu.abi_version}_"


# Every kernel's name, as lib/kernel_list.h lists them.
KERNELS = tuple(_jax_roi_cpu.registrations())


def target(kernel):
    """The custom-call target name of a kernel, e.g. "align_avg_forward"."""
    if kernel not in KERNELS:
        raise ValueError(f"jax_roi: no kernel named {kernel!r}; the kernels are {KERNELS}")
    return TARGET_PREFIX + kernel


def register(registrations, platform, prefix=TARGET_PREFIX):
    """Registers a module's kernels as targets named prefix + kernel name."""
    for kernel, capsule in registrations.items():
        name = prefix + kernel
        try:
            jax.ffi.register_ffi_target(name, capsule, platform=platform)
        except Exception as err:  # a handler ABI this jaxlib rejects
            raise ImportError(
                f"jax_roi: jaxlib {jaxlib.__version__} rejected the {platform} "
                f"kernel {name!r}: {err}") from err


_check_jaxlib()
register(_jax_roi_cpu.registrations(), "cpu")

try:  # built only where a CUDA compiler was found
    from . import _jax_roi_cuda
except ImportError:
    _jax_roi_cuda = None
else:
    register(_jax_roi_cuda.registrations(), "CUDA")

#: Platforms with a lowering to the compiled kernels.
KERNEL_PLATFORMS = ("cpu",) + (("cuda",) if _jax_roi_cuda is not None else ())

#: Platforms whose kernels return a 16-bit feature gradient in its own dtype
#: (summed in float32 and narrowed by the kernel); elsewhere it comes back in
#: float32 and the lowering converts it.
NARROWING_PLATFORMS = ("cpu",)

# Lets XLA split a call that carries num_batch_dims along its leading
# dimension, on every platform at once (see _sharding.py for which calls do).
for _kernel in KERNELS:
    jax.ffi.register_ffi_target_as_batch_partitionable(target(_kernel))


def export_disabled_checks():
    """The ``disabled_checks`` that let ``jax.export`` serialize jax_roi's kernels.

    ``jax.export`` refuses custom calls it does not know to be stable. jax_roi's
    targets are versioned by their ABI, and a deserialized artifact runs
    wherever a jax_roi with the same ABI is imported (same machine type:
    CPU, or CUDA)::

        exported = jax.export.export(jax.jit(f), platforms=["cpu"],
                                     disabled_checks=jax_roi.export_disabled_checks())(x)

    Functions called with ``implementation="xla"`` need none: they contain no
    custom call and run on every platform.
    """
    return [_export.DisabledSafetyCheck.custom_call(target(kernel))
            for kernel in KERNELS]
