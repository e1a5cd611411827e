"""Reference dual attention: self-attention of the input tokens and memorial attention of
the memory tokens over the input keys."""
import math

import torch


def dual_attention(qx, kx, vx, qm, vm, scale=None):
    """Self-attention and memorial attention that share the input keys.

    Args:
        qx, kx, vx: queries, keys and values of the input tokens, ``[B, H, N, D]``.
        qm, vm: queries and values of the memory tokens, ``[B, H, M, D]`` with ``M == N``
            (values are indexed by the input keys, so the memory has as many tokens).
        scale: softmax scale, default ``1/sqrt(D)``.

    Returns:
        ``(ox, om)``: ``softmax(qx kx^T * scale) vx`` and ``softmax(qm kx^T * scale) vm``,
        each ``[B, H, N, D]``.  Two N x N score matrices are materialised per head.
    """
    if scale is None:
        scale = 1.0 / math.sqrt(qx.shape[-1])
    ox = torch.softmax(torch.matmul(qx, kx.transpose(-2, -1)) * scale, dim=-1) @ vx
    om = torch.softmax(torch.matmul(qm, kx.transpose(-2, -1)) * scale, dim=-1) @ vm
    return ox, om
