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
