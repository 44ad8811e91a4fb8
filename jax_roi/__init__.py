"""ROI Pooling and ROI Align for JAX, as XLA custom calls with CPU and CUDA
kernels and an exact pure-JAX implementation for every other platform."""

from ._ffi import export_disabled_checks
from ._pyramid import level_indices, multi_scale_roi_align
from ._roi import roi_align, roi_pool

__all__ = ["roi_align", "roi_pool", "multi_scale_roi_align", "level_indices",
           "export_disabled_checks"]
__version__ = "0.2.0"
