"""Dual attention modules: one set of weights serves the input stream and the memory stream."""
from __future__ import annotations

import torch
import torch.nn as nn

from dadf_fast import ops


class DualAttention(nn.Module):
    """Multi-head self-attention (input tokens) + memorial attention (memory queries over
    input keys, memory values), with one qkv projection and one output projection shared
    by both streams.

    Both token sets go through a single qkv GEMM (they are stacked along the token axis);
    the per-head views handed to the attention op are strided views of that GEMM's output,
    not copies.  Memory keys are computed by the shared GEMM but unused, as in DADF.

    Shapes: ``x [B, N, D]``, ``m [B, N, D]`` -> ``(x_out [B, N, D], m_out [B, N, D])``.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, backend: str = "auto"):
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.backend = backend

    def forward(self, x: torch.Tensor, m: torch.Tensor):
        bsz, n, d = x.shape
        if m.shape != x.shape:
            raise ValueError(f"memory tokens must have the input's shape {tuple(x.shape)}, got {tuple(m.shape)}")
        qkv = self.qkv(torch.cat((x, m), dim=1))  # [B, 2N, 3D]
        # [B, stream, N, (q|k|v), H, hd] -> views [B, H, N, hd] with arbitrary strides
        qkv = qkv.view(bsz, 2, n, 3, self.num_heads, self.head_dim)
        qx, kx, vx = (qkv[:, 0, :, i].transpose(1, 2) for i in range(3))
        qm, vm = qkv[:, 1, :, 0].transpose(1, 2), qkv[:, 1, :, 2].transpose(1, 2)
        ox, om = ops.dual_attention(qx, kx, vx, qm, vm, scale=self.scale,
                                    backend=ops.module_backend("dual_attention", self.backend))
        out = torch.cat((ox, om), dim=2).transpose(1, 2).reshape(bsz, 2 * n, d)
        out = self.proj(out)
        return out[:, :n], out[:, n:]


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class DualBlock(nn.Module):
    """Pre-norm transformer block applied to both streams with shared weights:

        s = s + proj(attention(LN1(s)))      (x: self-attention, m: memorial attention)
        s = s + MLP(LN2(s))

    Shapes: ``x [B, N, D]``, ``m [B, N, D]`` -> same.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, backend: str = "auto"):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = DualAttention(dim, num_heads, backend=backend)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, m: torch.Tensor):
        n = x.shape[1]
        ax, am = self.attn(self.norm1(x), self.norm1(m))
        s = torch.cat((x + ax, m + am), dim=1)  # one LN2/MLP pass over both streams
        s = s + self.mlp(self.norm2(s))
        return s[:, :n], s[:, n:]
