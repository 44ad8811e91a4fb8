"""Argument checks shared by every entry point: each error names the
argument and what was expected, at trace time."""

import math
import numbers

import jax.numpy as jnp
import numpy as np

FEATURE_DTYPES = (jnp.float32, jnp.float64, jnp.bfloat16, jnp.float16)
LAYOUTS = ("NCHW", "NHWC")
ALIGN_MODES = ("avg", "max")
IMPLEMENTATIONS = (None, "kernel", "xla")

# Argmax indices are int32.
_INT32_LIMIT = 2**31


def choice(name, value, options):
    if not isinstance(value, str) or value not in options:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, options))}; got {value!r}")
    return value


def implementation_value(implementation):
    if implementation not in IMPLEMENTATIONS or isinstance(implementation, bool):
        raise ValueError(
            "implementation must be None (the kernel where the platform has one, pure JAX "
            f"elsewhere), 'kernel' or 'xla'; got {implementation!r}")
    return implementation


def features_array(features, layout):
    features = jnp.asarray(features)
    if features.dtype not in FEATURE_DTYPES:
        raise TypeError(
            "features must have dtype float32, float64, bfloat16 or float16; "
            f"got {features.dtype}")
    if features.ndim != 4:
        raise ValueError(
            f"features must have rank 4 ({'[N, C, H, W]' if layout == 'NCHW' else '[N, H, W, C]'}"
            f" for layout={layout!r}); got shape {features.shape}")
    return features


def geometry_dtype(feature_dtype):
    """Box arithmetic runs in float64 for float64 features, float32 otherwise."""
    return jnp.float64 if feature_dtype == jnp.float64 else jnp.float32


BOX = ("x1", "y1", "x2", "y2")
ROTATED_BOX = ("cx", "cy", "w", "h", "angle")


def rois_array(rois, features, coordinates=BOX):
    """ROIs as [K, 1 + len(coordinates)] rows (batch_index, coordinates...) or
    [N, L, len(coordinates)] per image, in the geometry dtype."""
    rois = jnp.asarray(rois)
    n = len(coordinates)
    names = ", ".join(coordinates)
    if not jnp.issubdtype(rois.dtype, jnp.floating):
        raise TypeError(f"rois must have a floating dtype; got {rois.dtype}")
    if rois.ndim == 2 and rois.shape[1] == n + 1:
        pass
    elif rois.ndim == 3 and rois.shape[2] == n:
        if rois.shape[0] != features.shape[0]:
            raise ValueError(
                f"rois of shape [N, L, {n}] need N equal to the batch size of features "
                f"({features.shape[0]}); got shape {rois.shape}")
    else:
        raise ValueError(
            f"rois must have shape [K, {n + 1}] (batch_index, {names}) or [N, L, {n}] "
            f"({names} per image); got shape {rois.shape}")
    return rois.astype(geometry_dtype(features.dtype))


def position_sensitive_channels(features, layout, output_size):
    """The ps ops split the channels among the bins: C must be a multiple of PH*PW."""
    channels = features.shape[1] if layout == "NCHW" else features.shape[3]
    bins = output_size[0] * output_size[1]
    if channels % bins:
        raise ValueError(
            f"features must have a channel count that is a multiple of PH*PW = {bins} for "
            f"output_size={output_size} (each output channel has one input channel per "
            f"bin); got {channels} channels")


def output_size_pair(output_size):
    if isinstance(output_size, numbers.Integral) and not isinstance(output_size, bool):
        pair = (int(output_size), int(output_size))
    elif (isinstance(output_size, (tuple, list)) and len(output_size) == 2
          and all(isinstance(v, numbers.Integral) and not isinstance(v, bool)
                  for v in output_size)):
        pair = (int(output_size[0]), int(output_size[1]))
    else:
        raise TypeError(f"output_size must be an int or a pair of ints (PH, PW); got {output_size!r}")
    if min(pair) <= 0:
        raise ValueError(f"output_size must be positive; got {output_size!r}")
    return pair


def spatial_scale_value(spatial_scale):
    if isinstance(spatial_scale, bool) or not isinstance(spatial_scale, (numbers.Real, np.ndarray)):
        raise TypeError(
            f"spatial_scale must be a Python float (a static value); got {type(spatial_scale).__name__}")
    value = float(spatial_scale)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"spatial_scale must be finite and > 0; got {spatial_scale!r}")
    return value


def sampling_ratio_value(sampling_ratio):
    if isinstance(sampling_ratio, bool) or not isinstance(sampling_ratio, numbers.Integral):
        raise TypeError(
            f"sampling_ratio must be an int (<= 0 for the adaptive grid); got {sampling_ratio!r}")
    value = int(sampling_ratio)
    if value * value >= _INT32_LIMIT:
        raise ValueError(f"sampling_ratio must be below 46341; got {value}")
    return value


def flag_value(name, value):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool; got {value!r}")
    return bool(value)


def aligned_value(aligned):
    return flag_value("aligned", aligned)


def spatial_size(features, layout):
    _, *rest = features.shape
    return (rest[1], rest[2]) if layout == "NCHW" else (rest[0], rest[1])


def check_argmax_range(features, layout, op):
    """The max modes record their winner in int32: keep it representable."""
    height, width = spatial_size(features, layout)
    # roi_align "max" counts samples in a window at most about (2H+6) x (2W+6).
    area = height * width if op == "pool" else (2 * height + 6) * (2 * width + 6)
    if area >= _INT32_LIMIT:
        raise ValueError(
            f"features' spatial size {height} x {width} is too large for the int32 argmax "
            f"of {'roi_pool' if op == 'pool' else 'roi_align mode=max'}")


# ----------------------------------------------------------- pyramids

MAX_LEVELS = 8  # kMaxLevels in lib/elements/pyramid.h


def pyramid_levels(scales):
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


def canonical_scale_value(canonical_scale):
    if (isinstance(canonical_scale, bool) or not isinstance(canonical_scale, numbers.Real)
            or not (math.isfinite(canonical_scale) and canonical_scale > 0)):
        raise ValueError(
            f"canonical_scale must be a finite number > 0 (the box size, in image pixels, "
            f"that maps to canonical_level); got {canonical_scale!r}")
    return float(canonical_scale)


def canonical_level_value(canonical_level):
    if isinstance(canonical_level, bool) or not isinstance(canonical_level, numbers.Integral):
        raise TypeError(f"canonical_level must be an int; got {canonical_level!r}")
    return int(canonical_level)


def pyramid_maps(features, num_scales, layout):
    """The maps of a pyramid, checked to share batch size, channels and dtype."""
    # One array is not a pyramid, even though it has a length.
    if isinstance(features, (str, bytes)) or hasattr(features, "shape") \
            or not hasattr(features, "__len__"):
        raise TypeError(
            f"features must be a sequence of {num_scales} feature maps, finest first; "
            f"got {type(features).__name__}")
    if len(features) != num_scales:
        raise ValueError(
            f"features must hold one map per scale ({num_scales} scales); got {len(features)}")
    maps = [features_array(f, layout) for f in features]
    channel_axis = 1 if layout == "NCHW" else 3
    first = maps[0].shape
    for i, f in enumerate(maps):
        if f.shape[0] != first[0] or f.shape[channel_axis] != first[channel_axis]:
            raise ValueError(
                f"features must share their batch size and channel count; map 0 has shape "
                f"{first} and map {i} has shape {f.shape} (layout={layout!r})")
        if f.dtype != maps[0].dtype:
            raise TypeError(f"features must share one dtype; got {maps[0].dtype} and {f.dtype}")
    return maps


def pyramid_boxes(boxes, maps):
    boxes = jnp.asarray(boxes)
    n = maps[0].shape[0]
    if boxes.ndim != 3 or boxes.shape[2] != 4 or boxes.shape[0] != n:
        raise ValueError(
            f"boxes must have shape [N, L, 4] (x1, y1, x2, y2 per image) with N = {n}, "
            f"the batch size of features; got shape {boxes.shape}")
    if not jnp.issubdtype(boxes.dtype, jnp.floating):
        raise TypeError(f"boxes must have a floating dtype; got {boxes.dtype}")
    return boxes.astype(geometry_dtype(maps[0].dtype))


# ------------------------------------------------------ module settings

def align_settings(output_size, spatial_scale, sampling_ratio, aligned, mode, layout,
                   implementation):
    """roi_align's settings, checked and normalised (the Flax modules' fields)."""
    return dict(output_size=output_size_pair(output_size),
                spatial_scale=spatial_scale_value(spatial_scale),
                sampling_ratio=sampling_ratio_value(sampling_ratio),
                aligned=aligned_value(aligned), mode=choice("mode", mode, ALIGN_MODES),
                layout=choice("layout", layout, LAYOUTS),
                implementation=implementation_value(implementation))


def rotated_settings(output_size, spatial_scale, sampling_ratio, aligned, clockwise, layout,
                     implementation):
    settings = align_settings(output_size, spatial_scale, sampling_ratio, aligned, "avg", layout,
                              implementation)
    del settings["mode"]
    return dict(settings, clockwise=flag_value("clockwise", clockwise))


def ps_align_settings(output_size, spatial_scale, sampling_ratio, layout, implementation):
    settings = align_settings(output_size, spatial_scale, sampling_ratio, True, "avg", layout,
                              implementation)
    del settings["mode"], settings["aligned"]
    return settings


def pool_settings(output_size, spatial_scale, layout, implementation):
    return dict(output_size=output_size_pair(output_size),
                spatial_scale=spatial_scale_value(spatial_scale),
                layout=choice("layout", layout, LAYOUTS),
                implementation=implementation_value(implementation))


def pyramid_settings(output_size, scales, sampling_ratio, aligned, canonical_scale,
                     canonical_level, mode, layout, implementation):
    settings = align_settings(output_size, 1.0, sampling_ratio, aligned, mode, layout,
                              implementation)
    del settings["spatial_scale"]  # one per level
    return dict(settings, scales=tuple(2.0 ** -k for k in pyramid_levels(scales)),
                canonical_scale=canonical_scale_value(canonical_scale),
                canonical_level=canonical_level_value(canonical_level))
