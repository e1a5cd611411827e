"""The Triton backend: fused kernels for ``dual_attention`` and ``affine_coupling``.

Importing this package does not import Triton; the kernel modules beside it do.  Triton runs
on CUDA tensors, and on CPU tensors only under ``TRITON_INTERPRET=1`` (its exact but slow
interpreter, set before triton is imported).
"""
from __future__ import annotations

import functools
import os


def interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@functools.lru_cache(maxsize=None)
def _triton_import_error() -> str | None:
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception as exc:  # ImportError, or a broken install
        return f"Triton is not importable ({type(exc).__name__}: {exc})"
    return None


def unavailable_reason(device_type: str) -> str | None:
    """Why Triton cannot run on ``device_type`` tensors (None when it can)."""
    err = _triton_import_error()
    if err:
        return err
    if device_type == "cuda":
        import torch

        if not torch.cuda.is_available():
            return "no CUDA device is visible"
        return None
    if device_type == "cpu":
        if interpret():
            return None
        return "Triton runs on CPU tensors only under TRITON_INTERPRET=1 (set before triton is imported)"
    return f"Triton does not support {device_type!r} tensors"
