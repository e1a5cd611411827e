"""Exact image and pixel AUROC (the Mann-Whitney statistic, ties counted one half)."""
from __future__ import annotations

from typing import Any

import numpy as np

from dadf_fast.metrics.arrays import binary_array, is_map_list, map_mask_pairs, map_mask_stack, score_array


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
    is the final division. Only ``np.sort`` is needed (no argsort, which is slower on
    tens of millions of pixels).
    """
    s = score_array(scores, "scores")
    y = binary_array(labels, "labels")
    if s.shape != y.shape:
        raise ValueError(f"scores and labels must have the same shape, got "
                         f"{tuple(s.shape)} and {tuple(y.shape)}")
    s = s.ravel()
    y = y.ravel()
    return auroc_of_classes(s[y], s[~y])


def auroc_of_classes(pos: np.ndarray, neg: np.ndarray) -> float:
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
    if is_map_list(maps):
        pairs = map_mask_pairs(maps, masks)
        return auroc_of_classes(np.concatenate([m[g] for m, g in pairs]),
                              np.concatenate([m[~g] for m, g in pairs]))
    m, g = map_mask_stack(maps, masks)
    return auroc(m, g)
