"""Public op: fused self + memorial attention (validation and backend dispatch)."""
from __future__ import annotations

from .. import reference
from ._dispatch import Op, check_float, check_same, lazy


def _dtype_reasons(backend, device_type, dtype):
    import torch

    if backend == "triton" and dtype not in (torch.float32, torch.float16, torch.bfloat16):
        return f"the Triton dual-attention kernel supports float32, float16 and bfloat16, not {dtype}"
    if backend == "triton" and device_type == "cpu" and dtype == torch.bfloat16:
        return "the Triton interpreter has no bfloat16"
    return None


OP = Op(
    name="dual_attention",
    backends={
        "torch": lambda: reference.dual_attention,
        "triton": lazy("dadf_fast.kernels.dual_attention", "dual_attention_triton", "the Triton dual-attention kernel"),
    },
    dtype_reasons=_dtype_reasons,
)


def dual_attention(qx, kx, vx, qm, vm, scale=None, backend="auto"):
    """Self-attention of the input tokens and memorial attention of the memory tokens,
    sharing the input keys (see :func:`dadf_fast.reference.dual_attention`).

    Args:
        qx, kx, vx, qm, vm: ``[B, H, N, D]`` tensors (any strides), same dtype and device.
        scale: softmax scale, default ``1/sqrt(D)``.
        backend: ``"auto"``, ``"torch"`` or ``"triton"``.
    Returns:
        ``(ox, om)``, each ``[B, H, N, D]``.
    """
    names = ("qx", "kx", "vx", "qm", "vm")
    tensors = (qx, kx, vx, qm, vm)
    for n, t in zip(names, tensors):
        check_float(n, t)
        if t.dim() != 4:
            raise ValueError(f"dual_attention: {n} must be 4-D [B, H, N, D], got shape {tuple(t.shape)}")
        check_same(n, t, "qx", qx)
        if t.shape != qx.shape:
            raise ValueError(
                f"dual_attention: {n} has shape {tuple(t.shape)} but qx has {tuple(qx.shape)}; "
                "all five inputs must be [B, H, N, D] with the same sizes"
            )
    if scale is not None and not (float(scale) > 0):
        raise ValueError(f"dual_attention: scale must be a positive number or None, got {scale!r}")
    _, impl = OP.select(backend, qx.device, qx.dtype)
    return impl(qx, kx, vx, qm, vm, scale)
