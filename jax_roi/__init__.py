"""ROI Pooling and ROI Align for JAX, as XLA custom calls with CPU and CUDA kernels."""

from .ops import roi_align, roi_pool

__all__ = ["roi_align", "roi_pool"]
__version__ = "0.1.0"
