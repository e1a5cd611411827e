"""The dual-attention reconstruction transformer (DADF stage 2 of the model)."""
from __future__ import annotations

import torch
import torch.nn as nn

from dadf_fast.utils.precision import autocast_off
from dadf_fast.nn.attention import DualBlock


def sincos_pos_embed_2d(dim: int, grid_h: int, grid_w: int) -> torch.Tensor:
    """Fixed 2-D sine-cosine position embedding, ``[grid_h * grid_w, dim]`` (row-major tokens).

    Half of the channels encode the row, half the column; each half is sin/cos of the
    coordinate at geometrically spaced frequencies (as in MAE).  ``dim`` must be divisible
    by 4.
    """
    if dim % 4 != 0:
        raise ValueError(f"position embedding dim must be divisible by 4, got {dim}")
    quarter = dim // 4
    omega = 1.0 / (10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter))
    ys, xs = torch.meshgrid(
        torch.arange(grid_h, dtype=torch.float64), torch.arange(grid_w, dtype=torch.float64), indexing="ij"
    )

    def enc(pos):
        ang = pos.reshape(-1, 1) * omega[None]
        return torch.cat((torch.sin(ang), torch.cos(ang)), dim=1)

    return torch.cat((enc(ys), enc(xs)), dim=1).float()


class Reconstructor(nn.Module):
    """Dual-attention transformer that reconstructs multi-scale backbone features.

    Each scale ``s`` (``[B, C_s, H_s, W_s]``) is patch-embedded to ``E`` channels with patch
    size ``p_s`` so that all scales share one ``gh x gw`` token grid; the scales are
    concatenated along channels (token dim ``D = S*E``).  A learned memory of ``gh*gw``
    tokens runs through the same blocks as the input (memorial attention).  A final shared
    LayerNorm and per-scale linear decoders un-patchify both streams.

    Args:
        in_channels: channels per scale, e.g. ``(24, 40, 112)``.
        feature_sizes: ``(H_s, W_s)`` per scale, e.g. ``((64, 64), (32, 32), (16, 16))``.
        patch_sizes: per scale, e.g. ``(4, 2, 1)``.
    Forward: list of features -> ``(local_recs, global_recs)``, each a list shaped like the input.
    """

    def __init__(self, in_channels, feature_sizes, patch_sizes=(4, 2, 1), embed_dim=64, depth=4, num_heads=4,
                 mlp_ratio=4.0, backend="auto"):
        super().__init__()
        if not (len(in_channels) == len(feature_sizes) == len(patch_sizes)):
            raise ValueError("in_channels, feature_sizes and patch_sizes must have one entry per scale")
        grids = {(h // p, w // p) for (h, w), p in zip(feature_sizes, patch_sizes)}
        for (h, w), p in zip(feature_sizes, patch_sizes):
            if h % p or w % p:
                raise ValueError(f"feature size {(h, w)} is not divisible by patch size {p}")
        if len(grids) != 1:
            raise ValueError(f"all scales must give the same token grid, got {sorted(grids)}")
        self.grid = grids.pop()
        self.in_channels = tuple(in_channels)
        self.feature_sizes = tuple(tuple(s) for s in feature_sizes)
        self.patch_sizes = tuple(patch_sizes)
        dim = embed_dim * len(in_channels)
        self.dim = dim
        n_tokens = self.grid[0] * self.grid[1]
        self.patch_embed = nn.ModuleList(nn.Conv2d(c, embed_dim, p, stride=p) for c, p in zip(in_channels, patch_sizes))
        self.memory = nn.Parameter(torch.zeros(1, n_tokens, dim))
        nn.init.trunc_normal_(self.memory, std=0.02)
        self.register_buffer("pos_embed", sincos_pos_embed_2d(dim, *self.grid)[None], persistent=False)
        self.blocks = nn.ModuleList(DualBlock(dim, num_heads, mlp_ratio, backend=backend) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.decoders = nn.ModuleList(nn.Linear(dim, c * p * p) for c, p in zip(in_channels, patch_sizes))
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(mod):
        if isinstance(mod, nn.Linear):
            nn.init.xavier_uniform_(mod.weight)
            if mod.bias is not None:
                nn.init.zeros_(mod.bias)
        elif isinstance(mod, nn.LayerNorm):
            nn.init.ones_(mod.weight)
            nn.init.zeros_(mod.bias)

    def set_backend(self, backend: str) -> None:
        for blk in self.blocks:
            blk.attn.backend = backend

    def _unpatchify(self, tokens, scale):
        bsz = tokens.shape[0]
        gh, gw = self.grid
        c, p = self.in_channels[scale], self.patch_sizes[scale]
        t = tokens.view(bsz, gh, gw, c, p, p).permute(0, 3, 1, 4, 2, 5)
        return t.reshape(bsz, c, gh * p, gw * p)

    def forward(self, feats):
        # Mixed precision (DADF(dtype="bf16")): the patch embedding and the decoders run in
        # float32.  Both are one GEMM per scale (cheap next to the blocks), but their rounding
        # reaches the reconstructions the flows score: with them in bf16 the demo's image
        # AUROC drops 5.5 points, with them in float32 it is within 0.2 of float32
        # (docs/accuracy_history.md).  The blocks (attention, MLPs) stay in the autocast dtype.
        with autocast_off(feats[0].device):
            x = torch.cat([emb(f.float()).flatten(2) for emb, f in zip(self.patch_embed, feats)], dim=1)
        x = x.transpose(1, 2) + self.pos_embed
        m = (self.memory + self.pos_embed).expand(x.shape[0], -1, -1)
        for blk in self.blocks:
            x, m = blk(x, m)
        n = x.shape[1]
        local, glob = [], []
        with autocast_off(x.device):
            s = self.norm(torch.cat((x, m), dim=1).float())
            for i, dec in enumerate(self.decoders):
                r = dec(s)
                local.append(self._unpatchify(r[:, :n], i))
                glob.append(self._unpatchify(r[:, n:], i))
        return local, glob


def reconstruction_loss(feats, local, glob):
    """Stage-1 loss: sum over scales of ``MSE(R_l, F) + MSE(R_g, F)`` (accumulated in float32
    when the maps are bfloat16/float16, as under ``DADF(dtype="bf16")``)."""
    total = 0.0
    for f, rl, rg in zip(feats, local, glob):
        f, rl, rg = (t.float() if t.dtype in (torch.float16, torch.bfloat16) else t for t in (f, rl, rg))
        total = total + torch.mean((rl - f) ** 2) + torch.mean((rg - f) ** 2)
    return total


__all__ = ["Reconstructor", "sincos_pos_embed_2d", "reconstruction_loss"]
