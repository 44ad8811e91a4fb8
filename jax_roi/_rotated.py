"""roi_align_rotated: RoI Align over oriented boxes (detectron2's
ROIAlignRotated, mmcv's roi_align_rotated). It binds the single-map
primitives of _roi.py with op="rotated"."""

from . import _checks
from ._roi import pooled


def roi_align_rotated(features, rois, output_size, spatial_scale=1.0, sampling_ratio=-1,
                      aligned=True, *, clockwise=False, layout="NCHW", implementation=None):
    """RoI Align over rotated boxes: each bin's bilinear samples, averaged.

    Args:
      features: ``[N, C, H, W]`` (``layout="NCHW"``) or ``[N, H, W, C]``
        (``layout="NHWC"``), float32, float64, bfloat16 or float16.
      rois: ``[K, 6]`` rows ``(batch_index, cx, cy, w, h, angle)``, or
        ``[N, L, 5]`` boxes ``(cx, cy, w, h, angle)`` per image, in image
        coordinates; ``angle`` in degrees. A positive angle turns the box
        counter-clockwise as drawn on screen (y pointing down), as in
        detectron2. (mmcv passes radians: convert with ``angle * 180 / pi``.)
      output_size: ``PH`` or ``(PH, PW)``: bins along the box's height and width.
      spatial_scale: feature-map size over image size.
      sampling_ratio: samples per bin along each axis; ``<= 0`` chooses
        ``ceil(box_size / output_size)`` per ROI.
      aligned: shift the centre by half a pixel (detectron2 always does);
        ``False`` also makes sizes at least one pixel.
      clockwise: turn boxes clockwise for positive angles (mmcv's flag).
      layout, implementation: as for :func:`roi_align`.

    Returns:
      ``[K, C, PH, PW]`` (NCHW) or ``[K, PH, PW, C]`` (NHWC); ``[N, L, ...]``
      for per-image boxes. Sample ``(iy, ix)`` of bin ``(ph, pw)`` sits at
      ``yy, xx`` in the box's frame (``yy`` down its height from ``-h/2``,
      ``xx`` across its width from ``-w/2``) and reads the map at
      ``y = yy*cos(a) - xx*sin(a) + cy``, ``x = yy*sin(a) + xx*cos(a) + cx``.

    Peers: equals detectron2's ``ROIAlignRotated`` (which is always
    ``aligned=True``) and mmcv's ``roi_align_rotated`` with angles converted
    to degrees. With angle 0 it equals :func:`roi_align` on the box
    ``(cx - w/2, cy - h/2, cx + w/2, cy + h/2)``.

    Linear in ``features``: derivatives of every order and mode, with a
    deterministic backward kernel. With respect to ``rois`` (centre, size
    and angle): the exact derivative almost everywhere, forward and reverse
    mode, as for :func:`roi_align`. Bad data: a ROI with a batch index
    outside ``[0, N)``, a non-finite coordinate or (``aligned=True``) a
    negative width or height gives zeros and no gradient; a huge box costs
    no more than the map.
    """
    layout = _checks.choice("layout", layout, _checks.LAYOUTS)
    features = _checks.features_array(features, layout)
    rois = _checks.rois_array(rois, features, _checks.ROTATED_BOX)
    return pooled(features, rois, op="rotated",
                  output_size=_checks.output_size_pair(output_size),
                  spatial_scale=_checks.spatial_scale_value(spatial_scale),
                  sampling_ratio=_checks.sampling_ratio_value(sampling_ratio),
                  aligned=_checks.aligned_value(aligned),
                  clockwise=_checks.flag_value("clockwise", clockwise), layout=layout,
                  implementation=_checks.implementation_value(implementation))
