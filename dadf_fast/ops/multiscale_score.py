"""Public op: multi-scale anomaly map and image score from flow latents."""
from __future__ import annotations

import torch

from dadf_fast.ops._checks import check_float, check_same
from dadf_fast.ops._dispatch import Op
from dadf_fast.utils.precision import autocast_off

REDUCTIONS = ("max", "mean")
OP = Op("multiscale_score")


def _size_value(v, out_size) -> int:
    import numbers

    # bool is an int to Python and "16" iterates to ("1", "6"): both are mistakes, not sizes
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or isinstance(v, str):
        raise TypeError(f"out_size must be a positive int or a pair (H, W) of positive ints, got {out_size!r}")
    if isinstance(v, numbers.Integral):
        n = int(v)
    elif float(v).is_integer():
        n = int(v)
    else:
        raise ValueError(f"out_size must hold whole numbers, got {out_size!r} (a fraction would be truncated)")
    if n <= 0:
        raise ValueError(f"out_size must be positive, got {out_size!r}")
    return n


def normalize_size(out_size) -> tuple[int, int]:
    """``out_size`` (an int, or a pair of ints) as ``(H, W)``; raise a TypeError/ValueError
    naming out_size for anything else (bool, str, fractions, non-positive, wrong length)."""
    if isinstance(out_size, torch.Tensor):
        out_size = out_size.tolist()
    if isinstance(out_size, (str, bytes)) or not isinstance(out_size, (list, tuple, torch.Size)):
        return (_size_value(out_size, out_size),) * 2
    if len(out_size) != 2:
        raise ValueError(f"out_size must be an int or a pair (H, W), got {out_size!r} ({len(out_size)} values)")
    return _size_value(out_size[0], out_size), _size_value(out_size[1], out_size)


def multiscale_score(zs, out_size, reduce="max", backend="auto"):
    """Anomaly map ``1 - mean_s upsample(exp(-0.5 mean_c z_s^2))`` and image score.

    Args:
        zs: non-empty list of ``[B, C_s, h_s, w_s]`` latents (same B, dtype, device).
        out_size: a positive int or a pair ``(H, W)`` of positive ints.  reduce: ``"max"`` or ``"mean"`` of the map.
        backend: ``"auto"``, ``"torch"`` or ``"cpp"``.
    Returns:
        ``(anomaly_map [B, 1, H, W], score [B])``.
    """
    if isinstance(zs, torch.Tensor) or not isinstance(zs, (list, tuple)):
        raise TypeError("multiscale_score: zs must be a list of [B, C, h, w] tensors")
    if len(zs) == 0:
        raise ValueError("multiscale_score: zs is empty; pass at least one scale")
    for i, z in enumerate(zs):
        check_float(f"zs[{i}]", z)
        if z.dim() != 4:
            raise ValueError(f"multiscale_score: zs[{i}] must be 4-D [B, C, h, w], got shape {tuple(z.shape)}")
        check_same(f"zs[{i}]", z, "zs[0]", zs[0])
        if z.shape[0] != zs[0].shape[0]:
            raise ValueError(f"multiscale_score: zs[{i}] has batch {z.shape[0]} but zs[0] has {zs[0].shape[0]}")
        if z.numel() == 0:
            raise ValueError(f"multiscale_score: zs[{i}] is empty (shape {tuple(z.shape)})")
    size = normalize_size(out_size)
    if not isinstance(reduce, str) or reduce not in REDUCTIONS:
        raise ValueError(f"multiscale_score: reduce must be one of {REDUCTIONS}, got {reduce!r}")
    impl = OP.select(backend, zs[0].device, zs[0].dtype).impl
    with autocast_off(zs[0].device):
        return impl(list(zs), size, reduce)
