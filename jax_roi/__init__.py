"""RoI pooling for JAX (RoI Align, RoI Pool, rotated, position-sensitive and
Precise RoI pooling), as XLA custom calls with CPU and CUDA kernels and an exact
pure-JAX implementation for every other platform."""

from ._ffi import export_disabled_checks
from ._position_sensitive import ps_roi_align, ps_roi_pool
from ._precise import prroi_pool
from ._pyramid import level_indices, multi_scale_roi_align
from ._roi import roi_align, roi_pool
from ._rotated import roi_align_rotated

__all__ = ["roi_align", "roi_pool", "roi_align_rotated", "ps_roi_align", "ps_roi_pool",
           "prroi_pool", "multi_scale_roi_align", "level_indices", "export_disabled_checks"]
__version__ = "0.4.35"
