"""Evaluation metrics: image/pixel AUROC, AUPRO (MVTec AD) and sPRO (MVTec LOCO AD).

Pure functions of arrays: every function accepts numpy arrays or torch tensors (any
device; they are copied to host memory) and returns a Python ``float``. Nothing here
imports the model or ``dadf_fast.nn``.

All three metrics are computed *exactly*, over every distinct threshold, with one sort
of the scores (O(n log n)) instead of a fixed grid of thresholds, so they are both
faster and more accurate than the usual threshold loops. A whole MVTec category (tens
of millions of pixels) takes seconds.

Conventions
-----------
* Larger score = more anomalous.
* Labels and masks must be binary: ``bool`` or numbers that are all 0 or 1. Masks
  scaled to 0/255, or soft masks after interpolation, are rejected rather than
  guessed at; binarise them with ``mask > 0`` (or a threshold of your choice) first.
* float32 scores stay float32 (sorting them is faster and converting to float64 would
  not change any comparison); every other numeric dtype becomes float64. NaN scores
  raise ``ValueError``; +-inf are allowed and simply sort first/last.
* Invalid input raises ``ValueError`` naming the offending argument. In particular
  AUROC with only one class present raises (rather than returning nan), because a
  silent nan in a results table is easy to miss.

Curve integration (AUPRO, sPRO)
-------------------------------
The curve starts at (FPR, overlap) = (0, 0) (threshold above every score) and has one
point per distinct score value, for the threshold ``score >= t``. It is integrated with
the trapezoid rule from FPR 0 to ``fpr_limit``; the last segment is cut at exactly
``fpr_limit`` by linear interpolation. The area is divided by ``fpr_limit``, so a
perfect detector scores 1. Vertical segments (thresholds that only change the
overlap) have zero width and do not affect the area.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from scipy import ndimage

__all__ = ["auroc", "pixel_auroc", "aupro", "spro", "saturation_area", "saturation_thresholds"]


# ----------------------------------------------------------------------------------------
# input conversion and validation
# ----------------------------------------------------------------------------------------
def _to_numpy(x: Any, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach()
        if x.dtype in (torch.float16, torch.bfloat16):
            x = x.float()  # numpy has no bfloat16; float32 holds both exactly
        return x.cpu().numpy()
    try:
        return np.asarray(x)
    except (ValueError, TypeError) as e:  # ragged nested lists etc.
        raise ValueError(f"{name} could not be converted to an array: {e}") from None


def _scores(x: Any, name: str) -> np.ndarray:
    """Float array of scores: float32 kept as float32, everything else float64."""
    a = _to_numpy(x, name)
    if a.dtype.kind not in "biuf":
        raise ValueError(f"{name} must be numeric, got dtype {a.dtype}")
    if a.dtype == np.float16:
        a = a.astype(np.float32)
    elif a.dtype != np.float32:
        a = a.astype(np.float64)
    if a.size and np.isnan(a).any():
        raise ValueError(f"{name} contains NaN")
    return a


def _binary(x: Any, name: str) -> np.ndarray:
    """Bool array from bool or 0/1-valued input."""
    a = _to_numpy(x, name)
    if a.dtype == np.bool_:
        return a
    if a.dtype.kind not in "iuf":
        raise ValueError(f"{name} must be binary (bool or 0/1), got dtype {a.dtype}")
    # O(n) check instead of np.unique (which would sort tens of millions of pixels)
    if not ((a == 0) | (a == 1)).all():
        raise ValueError(
            f"{name} must be binary (bool or values 0/1); got other values "
            f"(e.g. 0/255 masks: pass mask > 0)")
    return a != 0


def _image_stack(a: np.ndarray, name: str) -> np.ndarray:
    """[H,W] -> [1,H,W]; [N,1,H,W] -> [N,H,W]; [N,H,W] unchanged."""
    if a.ndim == 2:
        return a[None]
    if a.ndim == 4 and a.shape[1] == 1:
        return a[:, 0]
    if a.ndim != 3:
        raise ValueError(
            f"{name} must have shape [N,H,W] (or [H,W] or [N,1,H,W]), got {tuple(a.shape)}")
    return a


def _check_fpr_limit(fpr_limit: float) -> float:
    try:
        lim = float(fpr_limit)
    except (TypeError, ValueError):
        raise ValueError(f"fpr_limit must be a number in (0, 1], got {fpr_limit!r}") from None
    if not (0.0 < lim <= 1.0):
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit!r}")
    return lim


def _is_map_list(maps: Any) -> bool:
    return isinstance(maps, Sequence) and not isinstance(maps, (str, bytes))


def _map_mask_pairs(maps: Sequence, masks: Any) -> list[tuple[np.ndarray, np.ndarray]]:
    """Lists of per-image maps and masks -> [(map [H_i,W_i], bool mask [H_i,W_i])].

    Scores of all images share one dtype (float32 only if every map is float32), so that
    comparisons across images are exact.
    """
    imgs = _image_list(maps)
    if not _is_map_list(masks) or len(masks) != len(imgs):
        got = len(masks) if _is_map_list(masks) else type(masks).__name__
        raise ValueError(f"masks must be a list with one [H,W] mask per map ({len(imgs)}), "
                         f"got {got}")
    dtype = np.result_type(*imgs) if imgs else np.float64
    pairs = []
    for i, (m, g) in enumerate(zip(imgs, masks)):
        b = _binary(g, f"masks[{i}]")
        if b.ndim == 3 and b.shape[0] == 1:
            b = b[0]
        if b.shape != m.shape:
            raise ValueError(f"masks[{i}] has shape {tuple(b.shape)}, maps[{i}] has "
                             f"{tuple(m.shape)}")
        pairs.append((m.astype(dtype, copy=False), b))
    if not pairs:
        raise ValueError("maps is an empty list")
    return pairs


# ----------------------------------------------------------------------------------------
# AUROC
# ----------------------------------------------------------------------------------------
def auroc(scores: Any, labels: Any) -> float:
    """Exact area under the ROC curve.

    Args:
        scores: any shape, e.g. image scores ``[N]`` or anomaly maps ``[N,H,W]``.
        labels: same shape as ``scores``, binary (1/True = anomalous = positive).

    Returns:
        ROC AUC in [0, 1], identical to ``sklearn.metrics.roc_auc_score`` including ties
        (a tied positive/negative pair counts one half).

    Raises:
        ValueError: shape mismatch, non-binary labels, NaN scores, or only one class.

    It is the Mann-Whitney statistic: for every positive, count the negatives strictly
    below it plus half the negatives equal to it. With both classes sorted this is two
    binary searches per positive; the counts are summed in int64, so the only rounding
    is the final division. Only ``np.sort`` is needed (no argsort), which is what
    makes tens of millions of pixels take about a second.
    """
    s = _scores(scores, "scores")
    y = _binary(labels, "labels")
    if s.shape != y.shape:
        raise ValueError(f"scores and labels must have the same shape, got "
                         f"{tuple(s.shape)} and {tuple(y.shape)}")
    s = s.ravel()
    y = y.ravel()
    return _auroc_pos_neg(s[y], s[~y])


def _auroc_pos_neg(pos: np.ndarray, neg: np.ndarray) -> float:
    """Mann-Whitney AUROC of positive scores ``pos`` against negative scores ``neg``."""
    pos = np.sort(pos)
    neg = np.sort(neg)
    if pos.size == 0 or neg.size == 0:
        raise ValueError(
            "auroc needs both classes in labels (at least one 0 and one 1); got only "
            + ("0s" if pos.size == 0 else "1s"))
    below = np.searchsorted(neg, pos, side="left")     # negatives < positive
    upto = np.searchsorted(neg, pos, side="right")     # negatives <= positive
    # 2U = sum(2*below + ties) = sum(below + upto), exact in int64 (< 2^63 for any
    # array that fits in memory).
    twice_u = int(below.sum(dtype=np.int64)) + int(upto.sum(dtype=np.int64))
    return twice_u / (2.0 * pos.size * neg.size)


def pixel_auroc(maps: Any, masks: Any) -> float:
    """Pixel-level AUROC over all pixels of all images.

    Args:
        maps: anomaly maps ``[N,H,W]`` (or ``[H,W]`` / ``[N,1,H,W]``), or a list of N
            ``[H_i,W_i]`` maps (sizes may differ between images, e.g. at each image's
            original resolution).
        masks: binary ground truth of the same shape (a list of ``[H_i,W_i]`` masks when
            ``maps`` is a list).
    """
    if _is_map_list(maps):
        pairs = _map_mask_pairs(maps, masks)
        return _auroc_pos_neg(np.concatenate([m[g] for m, g in pairs]),
                              np.concatenate([m[~g] for m, g in pairs]))
    m = _image_stack(_scores(maps, "maps"), "maps")
    g = _image_stack(_binary(masks, "masks"), "masks")
    if m.shape != g.shape:
        raise ValueError(f"maps and masks must have the same shape, got "
                         f"{tuple(m.shape)} and {tuple(g.shape)}")
    return auroc(m, g)


# ----------------------------------------------------------------------------------------
# the shared exact overlap-curve sweep (AUPRO and sPRO)
# ----------------------------------------------------------------------------------------
def _integrated_overlap(normal_scores: np.ndarray, region_scores: np.ndarray,
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
    # it can be dropped before sorting (a 3x-20x smaller sort). The region pixels dropped
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


# ----------------------------------------------------------------------------------------
# AUPRO (MVTec AD)
# ----------------------------------------------------------------------------------------
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
    lim = _check_fpr_limit(fpr_limit)
    if _is_map_list(maps):
        return _aupro_list(_map_mask_pairs(maps, masks), lim)
    m = _image_stack(_scores(maps, "maps"), "maps")
    g = _image_stack(_binary(masks, "masks"), "masks")
    if m.shape != g.shape:
        raise ValueError(f"maps and masks must have the same shape, got "
                         f"{tuple(m.shape)} and {tuple(g.shape)}")
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
    return _integrated_overlap(normal_scores, m[g], region_ids, sizes, lim, saturate=False)


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
    return _integrated_overlap(normal_scores, np.concatenate(region_parts),
                               np.concatenate(id_parts),
                               np.concatenate(sizes).astype(np.float64), lim, saturate=False)


# ----------------------------------------------------------------------------------------
# sPRO (MVTec LOCO AD)
# ----------------------------------------------------------------------------------------
def _image_list(maps: Any) -> list[np.ndarray]:
    """Anomaly maps as a list of [H,W] float arrays (sizes may differ between images)."""
    if isinstance(maps, (torch.Tensor, np.ndarray)):
        return list(_image_stack(_scores(maps, "maps"), "maps"))
    if not isinstance(maps, Sequence):
        raise ValueError("maps must be an array/tensor [N,H,W] or a sequence of [H,W] maps")
    out = []
    for i, mi in enumerate(maps):
        a = _scores(mi, f"maps[{i}]")
        if a.ndim == 3 and a.shape[0] == 1:
            a = a[0]
        if a.ndim != 2:
            raise ValueError(f"maps[{i}] must have shape [H,W], got {tuple(a.shape)}")
        out.append(a)
    return out


def _per_image_lists(x: Any, n: int, name: str) -> Sequence:
    if isinstance(x, (str, bytes)) or not isinstance(x, Sequence) or len(x) != n:
        got = len(x) if isinstance(x, Sequence) else type(x).__name__
        raise ValueError(f"{name} must be a list with one entry per image ({n}), got {got}")
    return x


def spro(maps: Any, masks_per_image: Sequence[Sequence[Any]],
         saturation: Sequence[Sequence[float]] | None,
         fpr_limit: float = 0.05) -> float:
    """Normalised area under the saturated-PRO (sPRO) curve, MVTec LOCO AD definition.

    Args:
        maps: anomaly maps ``[N,H,W]`` array/tensor, or a list of N ``[H,W]`` maps.
        masks_per_image: list of N lists; image i's list holds its ground-truth masks,
            each binary ``[H,W]`` (same size as ``maps[i]``), one region per mask file
            (a mask may be disconnected; masks may overlap). An empty list = good image.
        saturation: list of N lists of floats, parallel to ``masks_per_image``: the
            absolute number of pixels at which each region's overlap saturates. Use
            :func:`saturation_thresholds` to get them from ``defects_config.json``.
            ``None`` means each region's area (no saturation: plain per-region overlap).
            Values are used as given (not capped at the region area).
        fpr_limit: upper FPR integration limit in (0, 1], default 0.05.

    Returns:
        A float in [0, 1]: integral of the mean sPRO over FPR in [0, fpr_limit], divided
        by fpr_limit. At threshold t a region's sPRO = min(1, hits / saturation), hits =
        its pixels with score >= t; the mean is over all regions of all images. FPR =
        fraction of normal pixels with score >= t, where the normal pixels are those of
        every image that lie inside none of that image's regions.

    Raises:
        ValueError: malformed or mismatched inputs, an empty mask, saturation <= 0,
            fpr_limit outside (0, 1], no region at all, or no normal pixel.
    """
    lim = _check_fpr_limit(fpr_limit)
    imgs = _image_list(maps)
    n = len(imgs)
    masks_per_image = _per_image_lists(masks_per_image, n, "masks_per_image")
    if saturation is not None:
        saturation = _per_image_lists(saturation, n, "saturation")

    normal_parts, region_parts, id_parts, sats = [], [], [], []
    for i, (m, masks) in enumerate(zip(imgs, masks_per_image)):
        if isinstance(masks, (torch.Tensor, np.ndarray)):
            masks = list(masks) if masks.ndim == 3 else [masks]
        if not isinstance(masks, Sequence):
            raise ValueError(f"masks_per_image[{i}] must be a list of [H,W] masks")
        if saturation is not None:
            sat_i = saturation[i]
            sat_i = _to_numpy(sat_i, f"saturation[{i}]").reshape(-1)
            if sat_i.size != len(masks):
                raise ValueError(f"saturation[{i}] has {sat_i.size} values but image {i} "
                                 f"has {len(masks)} masks")
        inside_any = np.zeros(m.shape, dtype=bool)
        for j, mk in enumerate(masks):
            b = _binary(mk, f"masks_per_image[{i}][{j}]")
            if b.shape != m.shape:
                raise ValueError(f"masks_per_image[{i}][{j}] has shape {tuple(b.shape)}, "
                                 f"maps[{i}] has {tuple(m.shape)}")
            area = int(b.sum())
            if area == 0:
                raise ValueError(f"masks_per_image[{i}][{j}] is empty (a region needs "
                                 f"at least one pixel)")
            s = float(area) if saturation is None else float(sat_i[j])
            if not (s > 0.0 and math.isfinite(s)):
                raise ValueError(f"saturation[{i}][{j}] must be a finite number > 0, got {s}")
            inside_any |= b
            region_parts.append(m[b])
            id_parts.append(np.full(area, len(sats), dtype=np.int64))
            sats.append(s)
        normal_parts.append(m[~inside_any])

    if not sats:
        raise ValueError("spro needs at least one ground-truth region (all images are good)")
    normal_scores = np.concatenate(normal_parts)
    if normal_scores.size == 0:
        raise ValueError("spro needs normal pixels (every pixel is inside a region)")
    # float32 and float64 maps in one list: compare everything in float64
    dtype = np.result_type(normal_scores, *region_parts)
    return _integrated_overlap(normal_scores.astype(dtype, copy=False),
                               np.concatenate(region_parts).astype(dtype, copy=False),
                               np.concatenate(id_parts), np.asarray(sats, dtype=np.float64),
                               lim, saturate=True)


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


def saturation_thresholds(masks_per_image: Sequence[Sequence[Any]],
                          defect_names_per_image: Sequence[Any] | None,
                          defects_config: Sequence[Mapping[str, Any]]) -> list[list[float]]:
    """Absolute sPRO saturation thresholds from MVTec LOCO's ``defects_config.json``.

    Args:
        masks_per_image: as for :func:`spro`; a mask's area is its count of non-zero
            pixels, so raw LOCO mask files (0 / the defect's pixel value) work too.
        defect_names_per_image: list of N entries identifying the defect of each mask:
            either a list (one per mask) of defect names (``str``) or pixel values
            (``int``), or a single name / pixel value for all masks of that image.
            ``None``: read the pixel value from each (raw, non-binarised) mask, which
            must hold exactly one non-zero value.
        defects_config: the parsed JSON, a list of dicts with keys ``"defect_name"``,
            ``"pixel_value"``, ``"saturation_threshold"``, ``"relative_saturation"``.

    Returns:
        List of N lists of floats, parallel to ``masks_per_image``: for a relative
        defect ``int(saturation_threshold * area)``, for an absolute one
        ``min(saturation_threshold, area)`` (see :func:`saturation_area`). Areas are
        counted at the masks' resolution: pass full-size masks for the official metric.
    """
    by_key: dict[Any, Mapping[str, Any]] = {}
    for k, d in enumerate(defects_config):
        try:
            by_key[("name", str(d["defect_name"]))] = d
            by_key[("value", int(d["pixel_value"]))] = d
            float(d["saturation_threshold"]), bool(d["relative_saturation"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"defects_config[{k}] needs defect_name, pixel_value, "
                             f"saturation_threshold and relative_saturation ({e!r})") from None

    n = len(masks_per_image)
    if defect_names_per_image is not None:
        defect_names_per_image = _per_image_lists(defect_names_per_image, n,
                                                  "defect_names_per_image")
    out: list[list[float]] = []
    for i, masks in enumerate(masks_per_image):
        if isinstance(masks, (torch.Tensor, np.ndarray)):
            masks = list(masks) if masks.ndim == 3 else [masks]
        ids = None
        if defect_names_per_image is not None:
            ids = defect_names_per_image[i]
            if isinstance(ids, (str, int, np.integer)):
                ids = [ids] * len(masks)
            if len(ids) != len(masks):
                raise ValueError(f"defect_names_per_image[{i}] has {len(ids)} entries but "
                                 f"image {i} has {len(masks)} masks")
        row = []
        for j, mk in enumerate(masks):
            a = _to_numpy(mk, f"masks_per_image[{i}][{j}]")
            area = int(np.count_nonzero(a))
            if ids is None:
                values = np.unique(a[a != 0])
                if values.size != 1:
                    raise ValueError(f"masks_per_image[{i}][{j}]: cannot read the defect's "
                                     f"pixel value (found {values.size} non-zero values); "
                                     f"pass defect_names_per_image")
                key = ("value", int(values[0]))
            elif isinstance(ids[j], str):
                key = ("name", ids[j])
            else:
                key = ("value", int(ids[j]))
            if key not in by_key:
                what = "name" if key[0] == "name" else "pixel value"
                hint = ("; binary masks need defect_names_per_image"
                        if ids is None and key[1] == 1 else "")
                raise ValueError(f"defect {what} {key[1]!r} of masks_per_image[{i}][{j}] is "
                                 f"not in defects_config{hint}")
            d = by_key[key]
            if area == 0:
                raise ValueError(f"masks_per_image[{i}][{j}] is empty (a region needs "
                                 f"at least one pixel)")
            row.append(saturation_area(area, d["saturation_threshold"],
                                       bool(d["relative_saturation"])))
        out.append(row)
    return out
