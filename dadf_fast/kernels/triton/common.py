"""Helpers shared by the Triton kernel modules (importing this imports Triton)."""
from __future__ import annotations

import contextlib

import torch

from dadf_fast.kernels.triton import interpret

# @triton.jit decides when a kernel is defined whether it runs in the interpreter, so block
# sizes follow the flag as it was when the kernel modules were imported, not as it is now
INTERPRET = interpret()


def next_power_of_2(n: int) -> int:
    """The smallest power of two >= ``n`` (1 for ``n <= 1``)."""
    return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()


def device_guard(t: torch.Tensor):
    """Launch on ``t``'s GPU, not on whichever one is current."""
    if t.device.type == "cuda":
        return torch.cuda.device(t.device)
    return contextlib.nullcontext()


def require(ok: bool, op: str, message: str, exc=ValueError) -> None:
    """Raise ``exc(f"{op}: {message}")`` unless ``ok``: the kernels' guards against inputs
    that would make them address memory they do not own."""
    if not ok:
        raise exc(f"{op}: {message}")
