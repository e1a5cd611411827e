"""Public op: fused self + memorial attention (validation and backend dispatch)."""
from __future__ import annotations

from dadf_fast import reference
from dadf_fast.ops._dispatch import Op, check_float, check_number, check_same, lazy


def _dtype_reasons(backend, device_type, dtype):
    import torch

    if backend == "triton" and dtype not in (torch.float32, torch.float16, torch.bfloat16):
        return f"the Triton dual-attention kernel supports float32, float16 and bfloat16, not {dtype}"
    if backend == "triton" and device_type == "cpu" and dtype == torch.bfloat16:
        return "the Triton interpreter has no bfloat16"
    return None


# the Triton kernels' largest head dim (dadf_fast.kernels.triton.dual_attention.MAX_HEAD_DIM; not
# imported from there: importing a kernel module imports triton)
TRITON_MAX_HEAD_DIM = 256


def _limit_reasons(backend, head_dim):
    if backend == "triton" and head_dim > TRITON_MAX_HEAD_DIM:
        return f"the Triton dual-attention kernel supports head dims up to {TRITON_MAX_HEAD_DIM}, got D={head_dim}"
    return None


OP = Op(
    name="dual_attention",
    backends={
        "torch": lambda: reference.dual_attention,
        "triton": lazy("dadf_fast.kernels.triton.dual_attention", "dual_attention_triton", "the Triton dual-attention kernel"),
    },
    dtype_reasons=_dtype_reasons,
    limit_reasons=_limit_reasons,
)


def dual_attention(qx, kx, vx, qm, vm, scale=None, backend="auto"):
    """Self-attention of the input tokens and memorial attention of the memory tokens,
    sharing the input keys (see :func:`dadf_fast.reference.dual_attention`).

    Args:
        qx, kx, vx, qm, vm: ``[B, H, N, D]`` tensors (any strides), same dtype and device.
        scale: softmax scale, a finite number > 0 (default ``1/sqrt(D)``).
        backend: ``"auto"``, ``"torch"`` or ``"triton"``.
    Returns:
        ``(ox, om)``, each ``[B, H, N, D]`` (empty when B, H or N is 0).  D must be >= 1:
        with no features the scores and the default scale are undefined.
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
    if qx.shape[-1] == 0:
        raise ValueError(f"dual_attention: the head dim D (last dim of qx, ...) must be >= 1, got shape {tuple(qx.shape)}")
    if scale is not None:
        scale = check_number("dual_attention", "scale", scale, positive=True)
    _, impl = OP.select(backend, qx.device, qx.dtype, key=qx.shape[-1])
    return impl(qx, kx, vx, qm, vm, scale)
