"""The exact overlap-vs-FPR curve sweep shared by AUPRO and sPRO (see :mod:`dadf_fast.metrics`
for how the curve is built and integrated)."""
from __future__ import annotations

import math

import numpy as np


def integrated_overlap(normal_scores: np.ndarray, region_scores: np.ndarray,
                        region_ids: np.ndarray, saturation: np.ndarray,
                        fpr_limit: float, saturate: bool) -> float:
    """Normalised area under the mean-per-region-overlap vs FPR curve, up to fpr_limit.

    Args:
        normal_scores: ``[P]`` scores of all normal pixels (they define the FPR).
        region_scores: ``[Q]`` scores of region pixels (same dtype); a pixel in several
            regions appears once per region.
        region_ids: ``[Q]`` int region index in ``[0, R)`` of each entry.
        saturation: ``[R]`` float, pixels needed for a region's overlap to reach 1.
        saturate: False -> saturation is the region size and the overlap is the plain
            fraction (PRO); True -> overlap = min(1, hits / saturation) (sPRO).

    With F(t) = FPR and O(t) = mean overlap at threshold ``score >= t``, the curve
    (F, O) over all thresholds is a polyline whose only non-vertical segments are those
    at distinct *normal* scores v: from (F(>v), O(>v)) to (F(>=v), O(>=v)). Region
    scores that no normal pixel shares only add vertical segments, of zero area. So the
    area needs one sort of the normal scores (counts of normals >= v), one argsort of
    the (few) region pixels (cumulative overlap) and binary searches between the two:
    exact at every threshold, with ties handled by the >= / > pair.
    """
    n_normal = normal_scores.size
    n_regions = saturation.size

    # Only thresholds with FPR <= fpr_limit, plus the first one past it, shape the area.
    # With k = ceil(limit * P) (+1 for floating safety), every threshold above the k-th
    # largest normal score has FPR < limit and at that score FPR >= limit, so scores below
    # it can be dropped before sorting (a much smaller sort). The region pixels dropped
    # are each region's lowest, so hit counts at the kept thresholds are unchanged.
    k = min(n_normal, math.ceil(fpr_limit * n_normal) + 1)
    cutoff = np.partition(normal_scores, n_normal - k)[n_normal - k]
    normal_kept = np.sort(normal_scores[normal_scores >= cutoff])  # ascending
    keep = region_scores >= cutoff
    reg_scores = region_scores[keep]
    reg_ids = region_ids[keep]

    # FPR at each distinct kept normal value v (ascending): F(>=v) and F(>v).
    n_kept = normal_kept.size
    first = np.flatnonzero(np.r_[True, normal_kept[1:] != normal_kept[:-1]])
    values = normal_kept[first]
    f_ge = (n_kept - first) / n_normal
    f_gt = (n_kept - np.r_[first[1:], n_kept]) / n_normal

    # Mean overlap after the j highest region pixels, j = 0..Q: ovl_top[j].
    order = np.argsort(reg_scores)[::-1]          # descending; ties in any order
    rid = reg_ids[order]
    sat = saturation[rid]
    if saturate:
        # The j-th highest pixel (1-based) of a region raises its overlap from
        # min(j-1, s)/s to min(j, s)/s. Rank within the region: a stable sort of region
        # ids keeps the descending score order inside each region. Ties inside a region
        # make the ranks arbitrary among the tied pixels, but ovl_top is only read at
        # counts that never split a run of equal scores, where the sum is the same.
        by_region = np.argsort(rid, kind="stable")
        r = rid[by_region]
        idx = np.arange(r.size)
        start = np.maximum.accumulate(np.where(np.r_[True, r[1:] != r[:-1]], idx, 0))
        rank = np.empty(r.size, dtype=np.float64)
        rank[by_region] = idx - start             # 0-based rank = j - 1
        gain = (np.minimum(rank + 1.0, sat) - np.minimum(rank, sat)) / sat
    else:
        gain = 1.0 / sat
    ovl_top = np.r_[0.0, np.cumsum(gain / n_regions)]
    # cumulative float sums can overshoot 1 by a few ulps; the true value never does
    np.clip(ovl_top, 0.0, 1.0, out=ovl_top)
    reg_asc = reg_scores[order[::-1]]
    n_reg = reg_asc.size
    o_ge = ovl_top[n_reg - np.searchsorted(reg_asc, values, side="left")]
    o_gt = ovl_top[n_reg - np.searchsorted(reg_asc, values, side="right")]

    # Segments in curve order (descending v): x from f_gt to f_ge, strictly increasing
    # and contiguous (x0 of one segment = x1 of the previous, the first starts at 0).
    x0, x1, y0, y1 = f_gt[::-1], f_ge[::-1], o_gt[::-1], o_ge[::-1]
    n_full = int(np.searchsorted(x1, fpr_limit, side="right"))  # segments ending <= limit
    area = float(np.sum((x1[:n_full] - x0[:n_full]) * (y0[:n_full] + y1[:n_full])) * 0.5)
    if n_full < x1.size and x0[n_full] < fpr_limit:
        # the segment that crosses the limit (x1 > limit > x0): cut it there
        a0, a1, b0, b1 = x0[n_full], x1[n_full], y0[n_full], y1[n_full]
        b_lim = b0 + (b1 - b0) * (fpr_limit - a0) / (a1 - a0)
        area += (fpr_limit - a0) * (b0 + b_lim) * 0.5
    return float(min(1.0, max(0.0, area / fpr_limit)))
