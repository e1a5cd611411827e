"""The MVTec LOCO AD saturation rule of sPRO, shared by the LOCO dataset (which reads the
thresholds with the ground truth) and the sPRO metric."""
from __future__ import annotations

import math


def saturation_area(area: int, threshold: float, relative: bool) -> float:
    """Pixels at which a region's sPRO saturates, by the official MVTec LOCO AD rule.

    Args:
        area: the region's pixel count (at the resolution the metric is computed at).
        threshold: ``saturation_threshold`` of the region's ``defects_config.json`` entry.
        relative: its ``relative_saturation``.

    Returns:
        ``int(threshold * area)`` for a relative threshold (truncated to whole pixels),
        ``min(threshold, area)`` for an absolute one (a region smaller than the threshold
        saturates when fully covered). One deviation: a relative area that truncates to
        0 pixels becomes 1 (the region saturates with its first detected pixel), where the
        official code divides by zero and its sPRO becomes NaN.
    """
    area = int(area)
    if area <= 0:
        raise ValueError(f"area must be a pixel count >= 1, got {area}")
    t = float(threshold)
    if not (t > 0.0 and math.isfinite(t)):
        raise ValueError(f"threshold must be a finite number > 0, got {threshold!r}")
    if relative:
        return float(max(1, int(t * area)))
    return float(min(t, float(area)))
