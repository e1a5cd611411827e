"""AUPRO, the MVTec AD per-region-overlap metric."""
from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

from dadf_fast.metrics.arrays import check_fpr_limit, is_map_list, map_mask_pairs, map_mask_stack
from dadf_fast.metrics.overlap import integrated_overlap


def aupro(maps: Any, masks: Any, fpr_limit: float = 0.3) -> float:
    """Normalised area under the per-region-overlap (PRO) curve, MVTec AD definition.

    Args:
        maps: anomaly maps ``[N,H,W]`` (or ``[H,W]`` / ``[N,1,H,W]``), larger = more
            anomalous; or a list of N ``[H_i,W_i]`` maps of possibly different sizes.
        masks: binary ground truth, same shape (a list of masks for a list of maps).
        fpr_limit: upper FPR integration limit in (0, 1], default 0.3.

    Returns:
        A float in [0, 1]: integral of PRO over FPR in [0, fpr_limit], divided by
        fpr_limit. For a threshold t, FPR = fraction of all normal pixels (mask 0, over
        all images) with score >= t, and PRO = mean over all ground-truth regions of the
        fraction of the region's pixels with score >= t. Regions are the 8-connected
        components of each image's mask (diagonal neighbours belong to the same region);
        every region weighs the same regardless of size.

    Raises:
        ValueError: shape mismatch, non-binary masks, NaN maps, fpr_limit outside
            (0, 1], no anomalous pixel at all, or no normal pixel at all.
    """
    lim = check_fpr_limit(fpr_limit)
    if is_map_list(maps):
        return _aupro_list(map_mask_pairs(maps, masks), lim)
    m, g = map_mask_stack(maps, masks)
    # One label call for the whole stack: a 3x3x3 structure whose only non-zero slice is
    # the middle one is 8-connectivity inside each image and none across images.
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = True
    labels, n_regions = ndimage.label(g, structure=structure)
    if n_regions == 0:
        raise ValueError("aupro needs at least one anomalous region in masks (all are 0)")
    normal_scores = m[~g]
    if normal_scores.size == 0:
        raise ValueError("aupro needs normal pixels in masks (all are 1), FPR is undefined")
    region_ids = labels[g].astype(np.int64) - 1   # same C order as m[g]
    sizes = np.bincount(region_ids, minlength=n_regions).astype(np.float64)
    return integrated_overlap(normal_scores, m[g], region_ids, sizes, lim, saturate=False)


def _aupro_list(pairs: list[tuple[np.ndarray, np.ndarray]], lim: float) -> float:
    """AUPRO of per-image (map, mask) pairs; images are labelled one at a time, so sizes
    may differ and no stacked copy of all maps is made."""
    eight = np.ones((3, 3), dtype=bool)
    normal_parts, region_parts, id_parts, sizes = [], [], [], []
    n_regions = 0
    for m, g in pairs:
        normal_parts.append(m[~g])
        labels, k = ndimage.label(g, structure=eight)
        if k:
            region_parts.append(m[g])
            id_parts.append(labels[g].astype(np.int64) - 1 + n_regions)
            sizes.append(np.bincount(labels[g] - 1, minlength=k))
            n_regions += k
    if n_regions == 0:
        raise ValueError("aupro needs at least one anomalous region in masks (all are 0)")
    normal_scores = np.concatenate(normal_parts)
    if normal_scores.size == 0:
        raise ValueError("aupro needs normal pixels in masks (all are 1), FPR is undefined")
    return integrated_overlap(normal_scores, np.concatenate(region_parts),
                               np.concatenate(id_parts),
                               np.concatenate(sizes).astype(np.float64), lim, saturate=False)
