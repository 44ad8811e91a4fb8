"""Position-sensitive RoI pooling (R-FCN): ps_roi_align and ps_roi_pool, as
torchvision.ops has them. Output channel c of bin (ph, pw) reads input
channel (c*PH + ph)*PW + pw, so C input channels give C / (PH*PW) output
channels. They bind the single-map primitives of _roi.py."""

from . import _checks
from ._roi import pooled


def _checked(features, rois, output_size, layout):
    layout = _checks.choice("layout", layout, _checks.LAYOUTS)
    features = _checks.features_array(features, layout)
    rois = _checks.rois_array(rois, features)
    output_size = _checks.output_size_pair(output_size)
    _checks.position_sensitive_channels(features, layout, output_size)
    return features, rois, output_size, layout


def ps_roi_align(features, rois, output_size, spatial_scale=1.0, sampling_ratio=-1, *,
                 layout="NCHW", implementation=None):
    """Position-sensitive RoI Align: each bin averages the bilinear samples
    of its own channel.

    Args:
      features: ``[N, C, H, W]`` or ``[N, H, W, C]`` with ``C`` a multiple of
        ``PH*PW``; float32, float64, bfloat16 or float16.
      rois: ``[K, 5]`` rows ``(batch_index, x1, y1, x2, y2)`` or ``[N, L, 4]``.
      output_size, spatial_scale, sampling_ratio, layout, implementation: as
        for :func:`roi_align`. Boxes are always shifted by half a pixel
        (``aligned=True``).

    Returns:
      ``[K, C/(PH*PW), PH, PW]`` (NCHW) or ``[K, PH, PW, C/(PH*PW)]`` (NHWC).
      Output channel ``c`` of bin ``(ph, pw)`` reads input channel
      ``(c*PH + ph)*PW + pw``. A bin with no samples gives 0.

    Peers: equals ``torchvision.ops.ps_roi_align`` (which gives NaN, not 0,
    for a zero-size box with the adaptive grid). Linear in ``features``, as
    :func:`roi_align_rotated`; the derivative with respect to ``rois`` is
    exact almost everywhere, as for :func:`roi_align`.
    """
    features, rois, output_size, layout = _checked(features, rois, output_size, layout)
    return pooled(features, rois, op="ps_align", output_size=output_size,
                  spatial_scale=_checks.spatial_scale_value(spatial_scale),
                  sampling_ratio=_checks.sampling_ratio_value(sampling_ratio), aligned=True,
                  layout=layout, implementation=_checks.implementation_value(implementation))


def ps_roi_pool(features, rois, output_size, spatial_scale=1.0, *, layout="NCHW",
                implementation=None):
    """Position-sensitive RoI Pooling (R-FCN): each bin averages the pixels
    of its own channel.

    Boxes are scaled and rounded to whole pixels (half away from zero) with
    an exclusive end, at least one pixel; bin edges are floored and ceiled
    and clipped to the map. An empty bin gives 0. Shapes and channels are
    those of :func:`ps_roi_align`.

    Peers: the R-FCN definition, as ``torchvision.ops.ps_roi_pool`` computes
    it wherever no bin reaches the last row or column (torchvision's CPU
    forward never reads those; its backward does). Linear in ``features``;
    the derivative with respect to ``rois`` is exactly zero (the boxes are
    rounded to whole pixels).
    """
    features, rois, output_size, layout = _checked(features, rois, output_size, layout)
    return pooled(features, rois, op="ps_pool", output_size=output_size,
                  spatial_scale=_checks.spatial_scale_value(spatial_scale), sampling_ratio=0,
                  aligned=False, layout=layout,
                  implementation=_checks.implementation_value(implementation))
