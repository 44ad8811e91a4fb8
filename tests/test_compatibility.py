"""A jaxlib outside the range the kernels were built for is refused at import
with a message that says what to do, rather than crashing later."""

import jaxlib
import pytest

from jax_roi import _ffi


@pytest.mark.parametrize("version", ["0.8.0", "0.9.0", "0.12.0", "1.0.0"])
def test_incompatible_jaxlib_is_refused_with_a_clear_error(monkeypatch, version):
    monkeypatch.setattr(jaxlib, "__version__", version)
    with pytest.raises(ImportError, match=rf"jaxlib {version} is installed.*rebuild jax_roi"):
        _ffi._check_jaxlib()


def test_installed_jaxlib_is_accepted():
    _ffi._check_jaxlib()
    assert _ffi.KERNEL_PLATFORMS[0] == "cpu"


def test_rejected_registration_becomes_an_import_error(monkeypatch):
    def reject(*args, **kwargs):
        raise RuntimeError("handler's API version is incompatible")

    monkeypatch.setattr(_ffi.jax.ffi, "register_ffi_target", reject)
    with pytest.raises(ImportError, match=f"rejected the cpu kernel '{_ffi.TARGET_PREFIX}probe'"):
        _ffi.register({"probe": object()}, "cpu")


def test_target_names_come_from_the_kernel_list():
    # Python builds target names only for kernels lib/kernel_list.h names.
    assert _ffi.target("rotated_forward") == _ffi.TARGET_PREFIX + "rotated_forward"
    assert {"ps_align_backward", "align_max_levels_forward"} <= set(_ffi.KERNELS)
    with pytest.raises(ValueError, match="no kernel named 'rotated_levels_forward'"):
        _ffi.target("rotated_levels_forward")
