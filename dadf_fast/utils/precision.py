"""Precision contexts shared by the ops, the modules and the detector."""
from __future__ import annotations

import contextlib

import torch


def autocast_off(device: torch.device):
    """Context for the float32-accumulating ops (coupling epilogue, NLL, scoring): their
    contract is float32 in, float32 out, so under a mixed-precision ``torch.autocast`` region
    (``DADF(dtype="bf16")``) the reference bodies must not be recast (the dense permutation
    conv of the torch coupling would otherwise round ``x`` to bfloat16)."""
    if torch.is_autocast_enabled(device.type):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16}
DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def parse_dtype(dtype) -> torch.dtype:
    """A compute precision given as a torch dtype or a name (``"float32"``, ``"bf16"``, ...)."""
    if isinstance(dtype, torch.dtype) and dtype in DTYPE_NAMES:
        return dtype
    if isinstance(dtype, str) and dtype.lower() in _DTYPES:
        return _DTYPES[dtype.lower()]
    raise ValueError(f"dtype must be one of {sorted(_DTYPES)} (or the torch dtype), got {dtype!r}")
