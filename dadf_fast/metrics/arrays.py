"""Input conversion and validation shared by the metrics: numpy or torch in, checked numpy
out; every error names the argument."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch


def to_numpy(x: Any, name: str) -> np.ndarray:
    """A numpy array of ``x`` (a tensor is detached and copied to host memory; float16 and
    bfloat16 become float32, which holds both exactly)."""
    if isinstance(x, torch.Tensor):
        x = x.detach()
        if x.dtype in (torch.float16, torch.bfloat16):
            x = x.float()  # numpy has no bfloat16; float32 holds both exactly
        return x.cpu().numpy()
    try:
        return np.asarray(x)
    except (ValueError, TypeError) as e:  # ragged nested lists etc.
        raise ValueError(f"{name} could not be converted to an array: {e}") from None


def score_array(x: Any, name: str) -> np.ndarray:
    """Float array of scores: float32 kept as float32, everything else float64."""
    a = to_numpy(x, name)
    if a.dtype.kind not in "biuf":
        raise ValueError(f"{name} must be numeric, got dtype {a.dtype}")
    if a.dtype == np.float16:
        a = a.astype(np.float32)
    elif a.dtype != np.float32:
        a = a.astype(np.float64)
    if a.size and np.isnan(a).any():
        raise ValueError(f"{name} contains NaN")
    return a


def binary_array(x: Any, name: str) -> np.ndarray:
    """Bool array from bool or 0/1-valued input."""
    a = to_numpy(x, name)
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


def image_stack(a: np.ndarray, name: str) -> np.ndarray:
    """[H,W] -> [1,H,W]; [N,1,H,W] -> [N,H,W]; [N,H,W] unchanged."""
    if a.ndim == 2:
        return a[None]
    if a.ndim == 4 and a.shape[1] == 1:
        return a[:, 0]
    if a.ndim != 3:
        raise ValueError(
            f"{name} must have shape [N,H,W] (or [H,W] or [N,1,H,W]), got {tuple(a.shape)}")
    return a


def map_mask_stack(maps: Any, masks: Any) -> tuple[np.ndarray, np.ndarray]:
    """Stacked maps and masks -> ``(scores [N,H,W], bool [N,H,W])`` of the same shape."""
    m = image_stack(score_array(maps, "maps"), "maps")
    g = image_stack(binary_array(masks, "masks"), "masks")
    if m.shape != g.shape:
        raise ValueError(f"maps and masks must have the same shape, got "
                         f"{tuple(m.shape)} and {tuple(g.shape)}")
    return m, g


def check_fpr_limit(fpr_limit: float) -> float:
    """``fpr_limit`` as a float in (0, 1]."""
    try:
        lim = float(fpr_limit)
    except (TypeError, ValueError):
        raise ValueError(f"fpr_limit must be a number in (0, 1], got {fpr_limit!r}") from None
    if not (0.0 < lim <= 1.0):
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit!r}")
    return lim


def is_map_list(maps: Any) -> bool:
    """True for a list (sequence) of per-image maps, False for one stacked array."""
    return isinstance(maps, Sequence) and not isinstance(maps, (str, bytes))


def map_mask_pairs(maps: Sequence, masks: Any) -> list[tuple[np.ndarray, np.ndarray]]:
    """Lists of per-image maps and masks -> [(map [H_i,W_i], bool mask [H_i,W_i])].

    Scores of all images share one dtype (float32 only if every map is float32), so that
    comparisons across images are exact.
    """
    imgs = image_list(maps)
    if not is_map_list(masks) or len(masks) != len(imgs):
        got = len(masks) if is_map_list(masks) else type(masks).__name__
        raise ValueError(f"masks must be a list with one [H,W] mask per map ({len(imgs)}), "
                         f"got {got}")
    dtype = np.result_type(*imgs) if imgs else np.float64
    pairs = []
    for i, (m, g) in enumerate(zip(imgs, masks)):
        b = binary_array(g, f"masks[{i}]")
        if b.ndim == 3 and b.shape[0] == 1:
            b = b[0]
        if b.shape != m.shape:
            raise ValueError(f"masks[{i}] has shape {tuple(b.shape)}, maps[{i}] has "
                             f"{tuple(m.shape)}")
        pairs.append((m.astype(dtype, copy=False), b))
    if not pairs:
        raise ValueError("maps is an empty list")
    return pairs


def image_list(maps: Any) -> list[np.ndarray]:
    """Anomaly maps as a list of [H,W] float arrays (sizes may differ between images)."""
    if isinstance(maps, (torch.Tensor, np.ndarray)):
        return list(image_stack(score_array(maps, "maps"), "maps"))
    if not isinstance(maps, Sequence):
        raise ValueError("maps must be an array/tensor [N,H,W] or a sequence of [H,W] maps")
    out = []
    for i, mi in enumerate(maps):
        a = score_array(mi, f"maps[{i}]")
        if a.ndim == 3 and a.shape[0] == 1:
            a = a[0]
        if a.ndim != 2:
            raise ValueError(f"maps[{i}] must have shape [H,W], got {tuple(a.shape)}")
        out.append(a)
    return out


def per_image_lists(x: Any, n: int, name: str) -> Sequence:
    """``x`` unchanged; raises unless it is a sequence of ``n`` per-image entries."""
    if isinstance(x, (str, bytes)) or not isinstance(x, Sequence) or len(x) != n:
        got = len(x) if isinstance(x, Sequence) else type(x).__name__
        raise ValueError(f"{name} must be a list with one entry per image ({n}), got {got}")
    return x
