"""prroi_pool: Precise RoI Pooling (IoU-Net; vacancy/PreciseRoIPooling,
mmcv's PrRoIPool). It binds the single-map primitives of _roi.py with
op="prroi"."""

from . import _checks
from ._roi import pooled


def prroi_pool(features, rois, output_size, spatial_scale=1.0, *, layout="NCHW",
               implementation=None):
    """Precise RoI Pooling: the exact mean of the interpolated map over each bin.

    The map is a continuous function by tent (bilinear) interpolation, zero
    outside: ``f(y, x) = sum of X[i, j] * t(y - i) * t(x - j)`` with
    ``t(u) = max(0, 1 - |u|)``. Each bin's output is the integral of ``f``
    over the bin divided by its area, computed in closed form: no sampling
    grid, no ``sampling_ratio``, and continuous in the box.

    Args:
      features: ``[N, C, H, W]`` (``layout="NCHW"``) or ``[N, H, W, C]``
        (``layout="NHWC"``), float32, float64, bfloat16 or float16.
      rois: ``[K, 5]`` rows ``(batch_index, x1, y1, x2, y2)`` or ``[N, L, 4]``
        boxes per image, in image coordinates. Boxes are scaled by
        ``spatial_scale`` with no half-pixel shift; a box with ``x2 <= x1``
        or ``y2 <= y1`` has bins of zero area and gives 0.
      output_size: ``PH`` or ``(PH, PW)``.
      spatial_scale: feature-map size over image size.
      layout, implementation: as for :func:`roi_align`.

    Returns:
      ``[K, C, PH, PW]`` (NCHW) or ``[K, PH, PW, C]`` (NHWC); ``[N, L, ...]``
      for per-image boxes.

    Derivatives: linear in ``features`` (every order, forward and reverse
    mode, deterministic backward kernel), and the exact derivative with
    respect to ``rois`` (the integral's edges move with the box), forward
    and reverse mode; the batch index and invalid ROIs get 0.

    Peers: equals vacancy/PreciseRoIPooling and mmcv's ``PrRoIPool`` on the
    same inputs (mmcv's wrapper drops the box gradient; this one has it).
    """
    layout = _checks.choice("layout", layout, _checks.LAYOUTS)
    features = _checks.features_array(features, layout)
    rois = _checks.rois_array(rois, features)
    return pooled(features, rois, op="prroi", output_size=_checks.output_size_pair(output_size),
                  spatial_scale=_checks.spatial_scale_value(spatial_scale), sampling_ratio=0,
                  aligned=False, layout=layout,
                  implementation=_checks.implementation_value(implementation))
