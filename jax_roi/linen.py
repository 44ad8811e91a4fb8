"""``flax.linen`` versions of the modules in :mod:`jax_roi.nnx`, with the same
fields and the same arithmetic: ``RoIAlign``, ``RoIPool``,
``MultiScaleRoIAlign``, ``RoIAlignRotated``, ``PSRoIAlign``, ``PSRoIPool`` and
``PrRoIPool``, thin wrappers of the public functions. They have no
parameters or state, so ``init`` returns empty variables and ``apply`` just
pools. Layouts default to NHWC, the layout of Flax convolutions.
"""

from typing import Optional, Sequence, Union

from flax import linen as nn

from . import _checks
from ._pyramid import level_indices, multi_scale_roi_align
from ._position_sensitive import ps_roi_align, ps_roi_pool
from ._precise import prroi_pool
from ._roi import roi_align, roi_pool
from ._rotated import roi_align_rotated

OutputSize = Union[int, Sequence[int]]


class RoIAlign(nn.Module):
    """``jax_roi.roi_align`` as a linen module, called ``module(features, rois)``.
    Shapes and arguments as in :class:`jax_roi.nnx.RoIAlign`."""
    output_size: OutputSize
    spatial_scale: float = 1.0
    sampling_ratio: int = -1
    aligned: bool = False
    mode: str = "avg"
    layout: str = "NHWC"
    implementation: Optional[str] = None

    def __post_init__(self):
        # Bad settings fail where the module is built, naming the field.
        _checks.align_settings(self.output_size, self.spatial_scale, self.sampling_ratio,
                               self.aligned, self.mode, self.layout, self.implementation)
        super().__post_init__()

    def __call__(self, features, rois):
        return roi_align(features, rois, self.output_size, self.spatial_scale,
                         self.sampling_ratio, self.aligned, mode=self.mode, layout=self.layout,
                         implementation=self.implementation)


class RoIPool(nn.Module):
    """``jax_roi.roi_pool`` as a linen module, called ``module(features, rois)``."""
    output_size: OutputSize
    spatial_scale: float = 1.0
    layout: str = "NHWC"
    implementation: Optional[str] = None

    def __post_init__(self):
        _checks.pool_settings(self.output_size, self.spatial_scale, self.layout,
                              self.implementation)
        super().__post_init__()

    def __call__(self, features, rois):
        return roi_pool(features, rois, self.output_size, self.spatial_scale,
                        layout=self.layout, implementation=self.implementation)


class RoIAlignRotated(nn.Module):
    """``jax_roi.roi_align_rotated`` as a linen module, called
    ``module(features, rois)``; as :class:`jax_roi.nnx.RoIAlignRotated`."""
    output_size: OutputSize
    spatial_scale: float = 1.0
    sampling_ratio: int = -1
    aligned: bool = True
    clockwise: bool = False
    layout: str = "NHWC"
    implementation: Optional[str] = None

    def __post_init__(self):
        _checks.rotated_settings(self.output_size, self.spatial_scale, self.sampling_ratio,
                                 self.aligned, self.clockwise, self.layout, self.implementation)
        super().__post_init__()

    def __call__(self, features, rois):
        return roi_align_rotated(features, rois, self.output_size, self.spatial_scale,
                                 self.sampling_ratio, self.aligned, clockwise=self.clockwise,
                                 layout=self.layout, implementation=self.implementation)


class PSRoIAlign(nn.Module):
    """``jax_roi.ps_roi_align`` as a linen module; as :class:`jax_roi.nnx.PSRoIAlign`."""
    output_size: OutputSize
    spatial_scale: float = 1.0
    sampling_ratio: int = -1
    layout: str = "NHWC"
    implementation: Optional[str] = None

    def __post_init__(self):
        _checks.ps_align_settings(self.output_size, self.spatial_scale, self.sampling_ratio,
                                  self.layout, self.implementation)
        super().__post_init__()

    def __call__(self, features, rois):
        return ps_roi_align(features, rois, self.output_size, self.spatial_scale,
                            self.sampling_ratio, layout=self.layout,
                            implementation=self.implementation)


class PSRoIPool(nn.Module):
    """``jax_roi.ps_roi_pool`` as a linen module; as :class:`jax_roi.nnx.PSRoIPool`."""
    output_size: OutputSize
    spatial_scale: float = 1.0
    layout: str = "NHWC"
    implementation: Optional[str] = None

    def __post_init__(self):
        _checks.pool_settings(self.output_size, self.spatial_scale, self.layout,
                              self.implementation)
        super().__post_init__()

    def __call__(self, features, rois):
        return ps_roi_pool(features, rois, self.output_size, self.spatial_scale,
                           layout=self.layout, implementation=self.implementation)


class PrRoIPool(nn.Module):
    """``jax_roi.prroi_pool`` as a linen module; as :class:`jax_roi.nnx.PrRoIPool`."""
    output_size: OutputSize
    spatial_scale: float = 1.0
    layout: str = "NHWC"
    implementation: Optional[str] = None

    def __post_init__(self):
        _checks.pool_settings(self.output_size, self.spatial_scale, self.layout,
                              self.implementation)
        super().__post_init__()

    def __call__(self, features, rois):
        return prroi_pool(features, rois, self.output_size, self.spatial_scale,
                          layout=self.layout, implementation=self.implementation)


class MultiScaleRoIAlign(nn.Module):
    """``jax_roi.multi_scale_roi_align`` as a linen module, called
    ``module(features, boxes)`` with maps finest first and ``[N, L, 4]``
    boxes in image coordinates; as :class:`jax_roi.nnx.MultiScaleRoIAlign`."""
    output_size: OutputSize
    scales: Sequence[float]
    sampling_ratio: int = -1
    aligned: bool = False
    canonical_scale: float = 224
    canonical_level: int = 4
    mode: str = "avg"
    layout: str = "NHWC"
    implementation: Optional[str] = None

    def __post_init__(self):
        _checks.pyramid_settings(self.output_size, self.scales, self.sampling_ratio,
                                 self.aligned, self.canonical_scale, self.canonical_level,
                                 self.mode, self.layout, self.implementation)
        super().__post_init__()

    def level_indices(self, boxes):
        """``[N, L]`` int32: the index into ``features`` each box is pooled from."""
        return level_indices(boxes, self.scales, self.canonical_scale, self.canonical_level)

    def __call__(self, features, boxes):
        return multi_scale_roi_align(
            features, boxes, self.output_size, self.scales, self.sampling_ratio, self.aligned,
            self.canonical_scale, self.canonical_level, mode=self.mode, layout=self.layout,
            implementation=self.implementation)
