"""Public op: fused self + memorial attention (validation and backend dispatch)."""
from __future__ import annotations

from dadf_fast.ops._checks import check_float, check_number, check_same
from dadf_fast.ops._dispatch import Op

OP = Op("dual_attention")


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
    # the head dim is what the Triton kernels' limit reads (and so part of the cache key)
    impl = OP.select(backend, qx.device, qx.dtype, head_dim=qx.shape[-1]).impl
    return impl(qx, kx, vx, qm, vm, scale)
