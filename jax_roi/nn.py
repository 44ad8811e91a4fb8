"""Flax NNX modules for jax_roi: ``RoIAlign``, ``RoIPool`` and the
feature-pyramid pooler ``MultiScaleRoIAlign``.

The modules hold no parameters, only their static settings, so they are
plain ``nnx.Module``s and work under ``nnx.jit``, ``jax.jit``, ``vmap`` and
``grad`` like the functions they wrap. Layouts default to NHWC, the layout of
Flax convolutions.
"""

import math
import numbers

import jax.numpy as jnp
import numpy as np
from flax import nnx

from . import _checks
from ._levels import MAX_LEVELS, LevelStatic, roi_align_levels
from .ops import roi_align, roi_pool


# ---------------------------------------------------------------- settings

def _align_settings(output_size, spatial_scale, sampling_ratio, aligned, mode, layout):
    """Checked, normalised roi_align settings (errors name the argument)."""
    return dict(
        output_size=_checks.output_size_pair(output_size),
        spatial_scale=_checks.spatial_scale_value(spatial_scale),
        sampling_ratio=_checks.sampling_ratio_value(sampling_ratio),
        aligned=_checks.aligned_value(aligned),
        mode=_checks.choice("mode", mode, _checks.ALIGN_MODES),
        layout=_checks.choice("layout", layout, _checks.LAYOUTS))


def _pool_settings(output_size, spatial_scale, layout):
    return dict(
        output_size=_checks.output_size_pair(output_size),
        spatial_scale=_checks.spatial_scale_value(spatial_scale),
        layout=_checks.choice("layout", layout, _checks.LAYOUTS))


def _pyramid_levels(scales):
    """The level k of each map (scale ``2**-k``), checked to be consecutive
    powers of two, finest first."""
    if isinstance(scales, (str, bytes)) or not hasattr(scales, "__len__") or len(scales) == 0:
        raise ValueError(
            f"scales must be a non-empty sequence of map scales, finest first, "
            f"e.g. (1/4, 1/8, 1/16, 1/32); got {scales!r}")
    levels = []
    for scale in scales:
        if isinstance(scale, bool) or not isinstance(scale, (numbers.Real, np.ndarray)):
            raise TypeError(f"scales must hold Python floats; got {scale!r} in {scales!r}")
        value = float(scale)
        exponent = math.log2(value) if math.isfinite(value) and value > 0 else math.nan
        if not math.isfinite(exponent) or abs(exponent - round(exponent)) > 1e-9:
            raise ValueError(
                f"scales must be powers of two (such as 1/4 or 1/8); got {scale!r} in {scales!r}")
        levels.append(-round(exponent))
    if len(scales) > MAX_LEVELS:
        raise ValueError(f"scales may name at most {MAX_LEVELS} maps; got {len(scales)}")
    if len(set(levels)) != len(levels):
        raise ValueError(f"scales must be distinct; got {scales!r}")
    if levels != list(range(levels[0], levels[0] + len(levels))):
        raise ValueError(
            "scales must be consecutive powers of two, finest first, each half the one "
            f"before (e.g. (1/4, 1/8, 1/16, 1/32)); got {scales!r}")
    return tuple(levels)


def _pyramid_settings(output_size, scales, sampling_ratio, aligned, canonical_scale,
                      canonical_level, mode, layout):
    levels = _pyramid_levels(scales)
    if (isinstance(canonical_scale, bool) or not isinstance(canonical_scale, numbers.Real)
            or not (math.isfinite(canonical_scale) and canonical_scale > 0)):
        raise ValueError(
            f"canonical_scale must be a finite number > 0 (the box size, in image pixels, "
            f"that maps to canonical_level); got {canonical_scale!r}")
    if isinstance(canonical_level, bool) or not isinstance(canonical_level, numbers.Integral):
        raise TypeError(f"canonical_level must be an int; got {canonical_level!r}")
    settings = _align_settings(output_size, 1.0, sampling_ratio, aligned, mode, layout)
    del settings["spatial_scale"]  # one per level
    return dict(settings, scales=tuple(2.0 ** -k for k in levels), levels=levels,
                canonical_scale=float(canonical_scale), canonical_level=int(canonical_level))


# ------------------------------------------------------- the pyramid pooler

def _pyramid_inputs(features, boxes, settings):
    scales, layout = settings["scales"], settings["layout"]
    # One array is not a pyramid, even though it has a length.
    if isinstance(features, (str, bytes)) or hasattr(features, "shape") \
            or not hasattr(features, "__len__"):
        raise TypeError(
            f"features must be a sequence of {len(scales)} feature maps, finest first; "
            f"got {type(features).__name__}")
    if len(features) != len(scales):
        raise ValueError(
            f"features must hold one map per scale ({len(scales)} for scales={scales}); "
            f"got {len(features)}")
    maps = [_checks.features_array(f, layout) for f in features]
    channel_axis = 1 if layout == "NCHW" else 3
    first = maps[0].shape
    for i, f in enumerate(maps):
        if f.shape[0] != first[0] or f.shape[channel_axis] != first[channel_axis]:
            raise ValueError(
                f"features must share their batch size and channel count; map 0 has shape "
                f"{first} and map {i} has shape {f.shape} (layout={layout!r})")
        if f.dtype != maps[0].dtype:
            raise TypeError(f"features must share one dtype; got {maps[0].dtype} and {f.dtype}")
    boxes = jnp.asarray(boxes)
    if boxes.ndim != 3 or boxes.shape[2] != 4 or boxes.shape[0] != first[0]:
        raise ValueError(
            f"boxes must have shape [N, L, 4] (x1, y1, x2, y2 per image) with N = {first[0]}, "
            f"the batch size of features; got shape {boxes.shape}")
    if not jnp.issubdtype(boxes.dtype, jnp.floating):
        raise TypeError(f"boxes must have a floating dtype; got {boxes.dtype}")
    return maps, boxes.astype(_checks.geometry_dtype(maps[0].dtype))


def _level_indices(boxes, settings):
    """Index into the maps of each box's level: ``floor(canonical_level +
    log2(sqrt(area) / canonical_scale) + 1e-6)`` clamped to the levels present.
    Boxes of zero, negative or NaN area go to the finest map."""
    levels = settings["levels"]
    width = boxes[..., 2] - boxes[..., 0]
    height = boxes[..., 3] - boxes[..., 1]
    area = width * height
    size = jnp.sqrt(jnp.where(area > 0, area, 0))  # NaN -> 0 -> level -inf
    level = jnp.floor(settings["canonical_level"]
                      + jnp.log2(size / settings["canonical_scale"]) + 1e-6)
    level = jnp.clip(level, levels[0], levels[-1])
    return (level - levels[0]).astype(jnp.int32)


def _box_levels(boxes, settings):
    """_level_indices for boxes given by a user, of any shape [..., 4]."""
    boxes = jnp.asarray(boxes)
    if boxes.shape[-1:] != (4,):
        raise ValueError(
            f"boxes must have a last dimension of 4 (x1, y1, x2, y2); got shape {boxes.shape}")
    if not jnp.issubdtype(boxes.dtype, jnp.floating):
        boxes = boxes.astype(jnp.float32)
    return _level_indices(boxes, settings)


def _multi_scale_roi_align(features, boxes, settings):
    """Each box pooled once, by roi_align on its own level's map, in one
    kernel call that reads every map in place (see _levels.py)."""
    maps, boxes = _pyramid_inputs(features, boxes, settings)
    layout, mode = settings["layout"], settings["mode"]
    if mode == "max":
        for level_map in maps:
            _checks.check_argmax_range(level_map, layout, "align_max")
    static = LevelStatic(
        op="align_" + mode, map_shapes=tuple(tuple(m.shape) for m in maps),
        output_size=settings["output_size"], spatial_scales=settings["scales"],
        sampling_ratio=settings["sampling_ratio"], aligned=settings["aligned"], layout=layout)
    return roi_align_levels(maps, boxes, _level_indices(boxes, settings), static)


# ------------------------------------------------------------------ modules

class RoIAlign(nnx.Module):
    """``jax_roi.roi_align`` as a module: ``RoIAlign(...)(features, rois)``.

    ``features`` is ``[N, H, W, C]`` (or ``[N, C, H, W]`` with
    ``layout="NCHW"``); ``rois`` is ``[K, 5]`` ``(batch_index, x1, y1, x2,
    y2)`` or ``[N, L, 4]`` boxes per image, in image coordinates. Returns
    ``[K, PH, PW, C]`` (``[N, L, PH, PW, C]`` for per-image boxes). See
    :func:`jax_roi.roi_align` for the arithmetic and every argument.
    """

    def __init__(self, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=False,
                 mode="avg", layout="NHWC"):
        s = _align_settings(output_size, spatial_scale, sampling_ratio, aligned, mode, layout)
        self.output_size = s["output_size"]
        self.spatial_scale = s["spatial_scale"]
        self.sampling_ratio = s["sampling_ratio"]
        self.aligned = s["aligned"]
        self.mode = s["mode"]
        self.layout = s["layout"]

    def __call__(self, features, rois):
        return roi_align(features, rois, self.output_size, self.spatial_scale,
                         self.sampling_ratio, self.aligned, mode=self.mode, layout=self.layout)


class RoIPool(nnx.Module):
    """``jax_roi.roi_pool`` as a module: ``RoIPool(...)(features, rois)``,
    with the shapes of :class:`RoIAlign`."""

    def __init__(self, output_size, spatial_scale=1.0, layout="NHWC"):
        s = _pool_settings(output_size, spatial_scale, layout)
        self.output_size = s["output_size"]
        self.spatial_scale = s["spatial_scale"]
        self.layout = s["layout"]

    def __call__(self, features, rois):
        return roi_pool(features, rois, self.output_size, self.spatial_scale, layout=self.layout)


class MultiScaleRoIAlign(nnx.Module):
    """ROI Align over a feature pyramid, each box read from one level.

    ``MultiScaleRoIAlign(output_size, scales)(features, boxes)``: ``features``
    is a sequence of maps, finest first, whose scales (map size over image
    size) are ``scales``, consecutive powers of two such as
    ``(1/4, 1/8, 1/16, 1/32)``; ``boxes`` is ``[N, L, 4]`` ``(x1, y1, x2,
    y2)`` in image coordinates. Returns ``[N, L, PH, PW, C]`` (NHWC) or
    ``[N, L, C, PH, PW]`` (NCHW).

    The map of scale ``2**-k`` is level ``k``. A box of area ``A`` goes to
    level ``floor(canonical_level + log2(sqrt(A) / canonical_scale) + 1e-6)``,
    clamped to the levels present, and its result equals
    ``roi_align(features[i], ..., spatial_scale=scales[i])`` on that level's
    map, with this module's ``sampling_ratio``, ``aligned`` and ``mode``.
    ``canonical_scale`` is the box size (in image pixels) that maps to
    ``canonical_level``: 224 and 4 suit ImageNet-sized objects; smaller
    images want a smaller ``canonical_scale``. Boxes of zero, negative or
    NaN area go to the finest level; ``level_indices(boxes)`` tells which map
    each box is read from.

    One kernel call pools every box from its own level's map, reading the
    maps in place: work and memory grow with the number of boxes, not with
    boxes x levels, forward and backward. At most eight levels.
    """

    def __init__(self, output_size, scales, sampling_ratio=-1, aligned=False,
                 canonical_scale=224, canonical_level=4, mode="avg", layout="NHWC"):
        s = _pyramid_settings(output_size, scales, sampling_ratio, aligned, canonical_scale,
                              canonical_level, mode, layout)
        self.output_size = s["output_size"]
        self.scales = s["scales"]
        self.sampling_ratio = s["sampling_ratio"]
        self.aligned = s["aligned"]
        self.canonical_scale = s["canonical_scale"]
        self.canonical_level = s["canonical_level"]
        self.mode = s["mode"]
        self.layout = s["layout"]

    def _settings(self):
        return _pyramid_settings(self.output_size, self.scales, self.sampling_ratio, self.aligned,
                                 self.canonical_scale, self.canonical_level, self.mode,
                                 self.layout)

    def level_indices(self, boxes):
        """``[N, L]`` int32: the index into ``features`` each box is pooled from."""
        return _box_levels(boxes, self._settings())

    def __call__(self, features, boxes):
        return _multi_scale_roi_align(features, boxes, self._settings())
