"""Public op: per-sample flow negative log-likelihood."""
from __future__ import annotations

import torch

from dadf_fast import reference
from dadf_fast.ops._dispatch import Op, autocast_off, check_float, check_same, lazy


def _dtype_reasons(backend, device_type, dtype):
    if backend == "cpp" and device_type == "cpu" and dtype not in (torch.float32, torch.float64):
        return f"the C++ CPU kernels support float32 and float64, not {dtype}"
    return None


OP = Op(
    name="flow_nll",
    backends={"torch": lambda: reference.flow_nll, "cpp": lazy("dadf_fast.kernels.cpp.ops", "flow_nll", "the C++ flow_nll op")},
    dtype_reasons=_dtype_reasons,
)


def flow_nll(z, logdet, backend="auto"):
    """``0.5 * sum(z^2) - logdet`` per sample, accumulated in float32 (float64 for float64
    inputs) and returned in z's dtype.

    Args:
        z: ``[B, ...]`` latent; a 1-D ``[B]`` z is one value per sample (``0.5 z^2 - logdet``).
        logdet: ``[B]``, same dtype and device as z.
        backend: ``"auto"``, ``"torch"`` or ``"cpp"``.
    Returns:
        ``[B]``.
    """
    check_float("z", z)
    check_float("logdet", logdet)
    check_same("logdet", logdet, "z", z)
    if z.dim() < 1:
        raise ValueError(f"flow_nll: z must be [B, ...] with a batch dimension, got a {z.dim()}-D tensor")
    if tuple(logdet.shape) != (z.shape[0],):
        raise ValueError(f"flow_nll: logdet must have shape [{z.shape[0]}] (one per sample of z), got {tuple(logdet.shape)}")
    _, impl = OP.select(backend, z.device, z.dtype)
    with autocast_off(z.device):
        return impl(z, logdet)
