"""Flax NNX modules: ``RoIAlign``, ``RoIPool``, the feature-pyramid pooler
``MultiScaleRoIAlign``, ``RoIAlignRotated``, ``PSRoIAlign``, ``PSRoIPool`` and
``PrRoIPool``, thin wrappers of the public functions.

The modules hold no parameters, only their settings (checked and normalised
when the module is built, so a bad one fails there, naming the field), and
work under ``nnx.jit``, ``jax.jit``, ``vmap`` and ``grad`` like the functions
they wrap. Layouts default to NHWC, the layout of Flax convolutions.
"""

from flax import nnx

from . import _checks
from ._pyramid import level_indices, multi_scale_roi_align
from ._position_sensitive import ps_roi_align, ps_roi_pool
from ._precise import prroi_pool
from ._roi import roi_align, roi_pool
from ._rotated import roi_align_rotated


def _set(module, settings):
    for name, value in settings.items():
        setattr(module, name, value)


class RoIAlign(nnx.Module):
    """``jax_roi.roi_align`` as a module: ``RoIAlign(...)(features, rois)``.

    ``features`` is ``[N, H, W, C]`` (or ``[N, C, H, W]`` with
    ``layout="NCHW"``); ``rois`` is ``[K, 5]`` ``(batch_index, x1, y1, x2,
    y2)`` or ``[N, L, 4]`` boxes per image, in image coordinates. Returns
    ``[K, PH, PW, C]`` (``[N, L, PH, PW, C]`` for per-image boxes). See
    :func:`jax_roi.roi_align` for the arithmetic and every argument.
    """

    def __init__(self, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=False,
                 mode="avg", layout="NHWC", implementation=None):
        _set(self, _checks.align_settings(output_size, spatial_scale, sampling_ratio, aligned,
                                          mode, layout, implementation))

    def __call__(self, features, rois):
        return roi_align(features, rois, self.output_size, self.spatial_scale,
                         self.sampling_ratio, self.aligned, mode=self.mode, layout=self.layout,
                         implementation=self.implementation)


class RoIPool(nnx.Module):
    """``jax_roi.roi_pool`` as a module: ``RoIPool(...)(features, rois)``,
    with the shapes of :class:`RoIAlign`."""

    def __init__(self, output_size, spatial_scale=1.0, layout="NHWC", implementation=None):
        _set(self, _checks.pool_settings(output_size, spatial_scale, layout, implementation))

    def __call__(self, features, rois):
        return roi_pool(features, rois, self.output_size, self.spatial_scale, layout=self.layout,
                        implementation=self.implementation)


class RoIAlignRotated(nnx.Module):
    """``jax_roi.roi_align_rotated`` as a module:
    ``RoIAlignRotated(...)(features, rois)`` with ``rois`` ``[K, 6]``
    ``(batch_index, cx, cy, w, h, angle_degrees)`` or ``[N, L, 5]``. Returns
    ``[K, PH, PW, C]`` in NHWC."""

    def __init__(self, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=True,
                 clockwise=False, layout="NHWC", implementation=None):
        _set(self, _checks.rotated_settings(output_size, spatial_scale, sampling_ratio, aligned,
                                            clockwise, layout, implementation))

    def __call__(self, features, rois):
        return roi_align_rotated(features, rois, self.output_size, self.spatial_scale,
                                 self.sampling_ratio, self.aligned, clockwise=self.clockwise,
                                 layout=self.layout, implementation=self.implementation)


class PSRoIAlign(nnx.Module):
    """``jax_roi.ps_roi_align`` as a module: ``PSRoIAlign(...)(features, rois)``.
    ``C`` must be a multiple of ``PH*PW``; returns ``[K, PH, PW, C/(PH*PW)]``
    in NHWC."""

    def __init__(self, output_size, spatial_scale=1.0, sampling_ratio=-1, layout="NHWC",
                 implementation=None):
        _set(self, _checks.ps_align_settings(output_size, spatial_scale, sampling_ratio, layout,
                                             implementation))

    def __call__(self, features, rois):
        return ps_roi_align(features, rois, self.output_size, self.spatial_scale,
                            self.sampling_ratio, layout=self.layout,
                            implementation=self.implementation)


class PSRoIPool(nnx.Module):
    """``jax_roi.ps_roi_pool`` as a module: ``PSRoIPool(...)(features, rois)``,
    with the shapes of :class:`PSRoIAlign`."""

    def __init__(self, output_size, spatial_scale=1.0, layout="NHWC", implementation=None):
        _set(self, _checks.pool_settings(output_size, spatial_scale, layout, implementation))

    def __call__(self, features, rois):
        return ps_roi_pool(features, rois, self.output_size, self.spatial_scale,
                           layout=self.layout, implementation=self.implementation)


class PrRoIPool(nnx.Module):
    """``jax_roi.prroi_pool`` as a module: ``PrRoIPool(output_size,
    spatial_scale)(features, rois)``, with the shapes of :class:`RoIPool`.
    Its output has the exact derivative with respect to ``rois`` as well as
    the features (IoU-Net's box refinement by gradient ascent)."""

    def __init__(self, output_size, spatial_scale=1.0, layout="NHWC", implementation=None):
        _set(self, _checks.pool_settings(output_size, spatial_scale, layout, implementation))

    def __call__(self, features, rois):
        return prroi_pool(features, rois, self.output_size, self.spatial_scale,
                          layout=self.layout, implementation=self.implementation)


class MultiScaleRoIAlign(nnx.Module):
    """``jax_roi.multi_scale_roi_align`` as a module:
    ``MultiScaleRoIAlign(output_size, scales)(features, boxes)``.

    ``features`` is a sequence of maps, finest first, whose scales (map size
    over image size) are ``scales``, consecutive powers of two such as
    ``(1/4, 1/8, 1/16, 1/32)``; ``boxes`` is ``[N, L, 4]`` in image
    coordinates. Returns ``[N, L, PH, PW, C]`` (NHWC) or ``[N, L, C, PH, PW]``.
    Each box is read from the map of its level (``level_indices(boxes)``
    tells which) and equals ``roi_align`` there; one call pools every box.
    """

    def __init__(self, output_size, scales, sampling_ratio=-1, aligned=False,
                 canonical_scale=224, canonical_level=4, mode="avg", layout="NHWC",
                 implementation=None):
        _set(self, _checks.pyramid_settings(output_size, scales, sampling_ratio, aligned,
                                            canonical_scale, canonical_level, mode, layout,
                                            implementation))

    def level_indices(self, boxes):
        """``[N, L]`` int32: the index into ``features`` each box is pooled from."""
        return level_indices(boxes, self.scales, self.canonical_scale, self.canonical_level)

    def __call__(self, features, boxes):
        return multi_scale_roi_align(
            features, boxes, self.output_size, self.scales, self.sampling_ratio, self.aligned,
            self.canonical_scale, self.canonical_level, mode=self.mode, layout=self.layout,
            implementation=self.implementation)
