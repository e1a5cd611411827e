"""Public op: per-sample flow negative log-likelihood."""
from __future__ import annotations

from dadf_fast.ops._checks import check_float, check_same
from dadf_fast.ops._dispatch import Op
from dadf_fast.utils.precision import autocast_off

OP = Op("flow_nll")


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
    impl = OP.select(backend, z.device, z.dtype).impl
    with autocast_off(z.device):
        return impl(z, logdet)
