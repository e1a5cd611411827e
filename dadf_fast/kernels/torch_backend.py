"""The ``torch`` backend: :mod:`dadf_fast.reference` itself, plain torch on any device, no
limits.  It is the truth the other backends are tested against and what ``"auto"`` takes
when no fused kernel fits."""
from __future__ import annotations

from dadf_fast.kernels.spec import Backend, OpSupport


def unavailable_reason(device_type: str) -> str | None:
    """Why plain torch cannot run on ``device_type`` tensors here (None when it can)."""
    if device_type == "cuda":
        import torch

        if not torch.cuda.is_available():
            return "no CUDA device is visible"
    return None


BACKEND = Backend(
    name="torch",
    devices=None,
    availability=unavailable_reason,
    ops=(
        OpSupport("dual_attention", "dadf_fast.reference:dual_attention"),
        OpSupport("affine_coupling", "dadf_fast.reference:affine_coupling"),
        OpSupport("flow_nll", "dadf_fast.reference:flow_nll"),
        OpSupport("multiscale_score", "dadf_fast.reference:multiscale_score"),
        OpSupport("nearest_distances", "dadf_fast.reference:nearest_distances"),
    ),
)
