"""``flax.linen`` versions of the modules in :mod:`jax_roi.nn`, with the same
fields and the same arithmetic: ``RoIAlign``, ``RoIPool`` and
``MultiScaleRoIAlign``. They have no parameters or state, so ``init``
returns empty variables and ``apply`` just pools. Layouts default to NHWC,
the layout of Flax convolutions.
"""

from typing import Any, Sequence, Union

from flax import linen as nn

from . import nn as _nnx
from .ops import roi_align, roi_pool

OutputSize = Union[int, Sequence[int]]


class RoIAlign(nn.Module):
    """``jax_roi.roi_align`` as a linen module, called ``module(features, rois)``.
    Shapes and arguments as in :class:`jax_roi.nn.RoIAlign`."""
    output_size: OutputSize
    spatial_scale: float = 1.0
    sampling_ratio: int = -1
    aligned: bool = False
    mode: str = "avg"
    layout: str = "NHWC"

    def __post_init__(self):
        # Bad settings fail where the module is built, naming the field.
        _nnx._align_settings(self.output_size, self.spatial_scale, self.sampling_ratio,
                             self.aligned, self.mode, self.layout)
        super().__post_init__()

    def __call__(self, features, rois):
        return roi_align(features, rois, self.output_size, self.spatial_scale,
                         self.sampling_ratio, self.aligned, mode=self.mode, layout=self.layout)


class RoIPool(nn.Module):
    """``jax_roi.roi_pool`` as a linen module, called ``module(features, rois)``."""
    output_size: OutputSize
    spatial_scale: float = 1.0
    layout: str = "NHWC"

    def __post_init__(self):
        _nnx._pool_settings(self.output_size, self.spatial_scale, self.layout)
        super().__post_init__()

    def __call__(self, features, rois):
        return roi_pool(features, rois, self.output_size, self.spatial_scale,
                        layout=self.layout)


class MultiScaleRoIAlign(nn.Module):
    """ROI Align over a feature pyramid, called ``module(features, boxes)``
    with maps finest first and ``[N, L, 4]`` boxes in image coordinates.
    Level rule, shapes and exactness as in :class:`jax_roi.nn.MultiScaleRoIAlign`."""
    output_size: OutputSize
    scales: Sequence[float]
    sampling_ratio: int = -1
    aligned: bool = False
    canonical_scale: float = 224
    canonical_level: int = 4
    mode: str = "avg"
    layout: str = "NHWC"

    def __post_init__(self):
        self._settings()
        super().__post_init__()

    def _settings(self) -> Any:
        return _nnx._pyramid_settings(self.output_size, self.scales, self.sampling_ratio,
                                      self.aligned, self.canonical_scale, self.canonical_level,
                                      self.mode, self.layout)

    def level_indices(self, boxes):
        """``[N, L]`` int32: the index into ``features`` each box is pooled from."""
        return _nnx._box_levels(boxes, self._settings())

    def __call__(self, features, boxes):
        return _nnx._multi_scale_roi_align(features, boxes, self._settings())
