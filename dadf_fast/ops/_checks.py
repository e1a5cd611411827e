"""Argument checks shared by the public ops (each op validates its inputs once, here in
:mod:`dadf_fast.ops`, before any backend sees them)."""
from __future__ import annotations

import torch

from dadf_fast.utils.checks import check_flag, check_number

__all__ = ["check_flag", "check_float", "check_number", "check_same"]


def check_float(name: str, t) -> None:
    """Raise unless ``t`` is a floating-point tensor."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")


def check_same(name: str, t: torch.Tensor, ref_name: str, ref: torch.Tensor) -> None:
    """Raise unless ``t`` has the device and dtype of ``ref``."""
    if t.device != ref.device:
        raise ValueError(f"{name} is on {t.device} but {ref_name} is on {ref.device}")
    if t.dtype != ref.dtype:
        raise TypeError(f"{name} has dtype {t.dtype} but {ref_name} has {ref.dtype}")
