"""The Triton backend: fused kernels for ``dual_attention`` and ``affine_coupling``.

This package declares what the kernels run (:data:`BACKEND`, read by the dispatcher and by
``dadf_fast.backends()``) without importing Triton; the kernel modules beside it do.  Triton
runs on CUDA tensors, and on CPU tensors only under ``TRITON_INTERPRET=1`` (its exact but
slow interpreter, set before triton is imported).
"""
from __future__ import annotations

import functools
import os

import torch

from dadf_fast.kernels.spec import SOFT_PERMUTATION, Backend, Limit, OpSupport, dtype_limit

# dual_attention holds a head's columns on chip in one or two power-of-two chunks of at most
# 256 columns together (dual_attention.py, _head_chunks): wider float32 accumulators per
# query block would not fit the registers the block sizes are chosen for
MAX_HEAD_DIM = 256


def interpret() -> bool:
    """Whether ``TRITON_INTERPRET`` asks for Triton's interpreter."""
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
        if not torch.cuda.is_available():
            return "no CUDA device is visible"
        return None
    if device_type == "cpu":
        if interpret():
            return None
        return "Triton runs on CPU tensors only under TRITON_INTERPRET=1 (set before triton is imported)"
    return f"Triton does not support {device_type!r} tensors"


# the kernels load any of these storage dtypes and compute in float32
FLOAT_DTYPES = dtype_limit(
    "the Triton kernels take float32, float16 and bfloat16 tensors, not float64",
    {dev: (torch.float32, torch.float16, torch.bfloat16) for dev in ("cuda", "cpu")},
)
INTERPRETER_NO_BFLOAT16 = Limit(
    "CPU tensors run in Triton's interpreter (TRITON_INTERPRET=1), which has no bfloat16",
    ("device", "dtype"),
    lambda call: call.device == "cpu" and call.dtype == torch.bfloat16,
)
HEAD_DIM = Limit(
    f"dual_attention: head dims up to {MAX_HEAD_DIM}",
    ("head_dim",),
    lambda call: call.get("head_dim") > MAX_HEAD_DIM,
)
# the coupling kernel tiles [B, C, P] rows of P = H*W pixels; a 2-D [N, C] input would be
# P = 1, a degenerate tiling (one element per program row), so it is declared, not run
COUPLING_4D_ONLY = Limit(
    "affine_coupling: 4-D [B, C, H, W] inputs only (2-D [N, C] fibres run on the cpp or torch backend)",
    ("ndim",),
    lambda call: call.get("ndim") != 4,
)

BACKEND = Backend(
    name="triton",
    devices=("cuda", "cpu"),
    availability=unavailable_reason,
    ops=(
        OpSupport("dual_attention", "dadf_fast.kernels.triton.dual_attention:dual_attention_triton",
                  limits=(FLOAT_DTYPES, INTERPRETER_NO_BFLOAT16, HEAD_DIM)),
        OpSupport("affine_coupling", "dadf_fast.kernels.triton.affine_coupling:affine_coupling_triton",
                  limits=(SOFT_PERMUTATION, FLOAT_DTYPES, INTERPRETER_NO_BFLOAT16, COUPLING_4D_ONLY)),
    ),
)
