"""Normalizing-flow modules: a FrEIA ``AllInOneBlock``-compatible coupling step and the
per-scale flow stage of DADF."""
from __future__ import annotations

import torch
import torch.nn as nn

from dadf_fast import ops
from dadf_fast.kernels.registry import SOFT_PERMUTATION_REASON, BackendUnavailable
from dadf_fast.utils.checks import check_number
from dadf_fast.nn.coupling import (fused_coupling, global_affine_activation, global_affine_raw_init,
                                   hard_permutation_index, permutation_matrix, random_rotation, torch_coupling)

# FrEIA's SOFTPLUS global affine: g = 0.1 * softplus_{beta=0.5}(raw), raw initialised so g = 1.
_GLOBAL_SCALE_INIT = global_affine_raw_init("SOFTPLUS", 1.0)


class DepthwiseConv2d(nn.Conv2d):
    """Depthwise ``nn.Conv2d`` (same parameters and state dict).  A 1x1 depthwise conv is a
    per-channel scale and shift; torch runs it as one tiny conv per group plus a concat,
    so it is evaluated as a single ``addcmul`` instead (the same function)."""

    def __init__(self, channels: int, kernel_size: int):
        super().__init__(channels, channels, kernel_size, padding=kernel_size // 2, groups=channels)

    def forward(self, x):
        if self.kernel_size == (1, 1):
            w = self.weight.view(1, -1, 1, 1)
            if self.bias is None:
                return x * w
            return torch.addcmul(self.bias.view(1, -1, 1, 1), x, w)
        return super().forward(x)


def coupling_subnet(in_channels: int, out_channels: int, kernel_size: int) -> nn.Sequential:
    """DADF's coupling subnet: depthwise kxk conv -> LeakyReLU(0.1) -> 1x1 conv."""
    return nn.Sequential(
        DepthwiseConv2d(in_channels, kernel_size),
        nn.LeakyReLU(0.1),
        nn.Conv2d(in_channels, out_channels, 1),
    )


def conv_subnet(in_channels: int, out_channels: int, kernel_size: int, hidden_ratio: float = 1.0) -> nn.Sequential:
    """FastFlow's coupling subnet: full kxk conv to ``hidden_ratio * in_channels`` -> ReLU -> kxk conv.

    Every output position mixes all input channels of its kxk neighbourhood (the depthwise
    subnet mixes channels only in its 1x1 layer): about ``k^2 * C`` times the depthwise
    subnet's weights, which small-data flows can afford (docs/accuracy.md)."""
    hidden = max(1, int(in_channels * hidden_ratio))
    return nn.Sequential(
        nn.Conv2d(in_channels, hidden, kernel_size, padding=kernel_size // 2),
        nn.ReLU(),
        nn.Conv2d(hidden, out_channels, kernel_size, padding=kernel_size // 2),
    )


FLOW_SUBNETS = ("depthwise", "conv")


class AllInOneCoupling(nn.Module):
    """DADF's light coupling step: FrEIA 0.2's ``AllInOneBlock`` function on ``[B, C, H, W]``
    inputs (default global affine ``SOFTPLUS``, no conditioning, no GIN, no householder, no
    pre-permutation), called as ``step(x) -> (y, logdet)``.  For FrEIA's full contract (its
    call convention, every option, SequenceINN/GraphINN) use :class:`dadf_fast.nn.AllInOneBlock`;
    both compute through :mod:`dadf_fast.nn.coupling`.

    Parameters and buffers carry FrEIA's names (``global_scale``, ``global_offset``,
    ``w_perm``, ``w_perm_inv``, ``subnet.*``), so a FrEIA block's ``state_dict`` loads as is.
    A hard permutation is also kept as an index vector ``perm`` (derived from ``w_perm``
    whenever it is loaded) for the gather-based fast backends.

    Args:
        channels: C (>= 2).
        subnet_constructor: ``f(c_in, c_out) -> nn.Module``; default: DADF's subnet with
            ``kernel_size``.
        affine_clamping: the tanh clamp.  permute_soft: dense random rotation instead of a
            hard permutation (always runs the dense torch path).
    Forward: ``(x [B,C,H,W], rev=False, compute_logdet=True) -> (y [B,C,H,W], logdet [B])``;
    with ``compute_logdet=False`` logdet is None (and the fast backends skip computing it).
    """

    def __init__(self, channels: int, subnet_constructor=None, kernel_size: int = 3, affine_clamping: float = 2.0,
                 permute_soft: bool = False, backend: str = "auto"):
        super().__init__()
        if channels < 2:
            raise ValueError(f"AllInOneCoupling needs at least 2 channels to split, got channels={channels}")
        self.channels = channels
        self.splits = (channels - channels // 2, channels // 2)
        # the fused op runs without re-validating its numbers (validate_args=False): check once here
        self.clamp = check_number("AllInOneCoupling", "affine_clamping", affine_clamping, positive=True)
        self.permute_soft = bool(permute_soft)
        self.backend = backend
        if subnet_constructor is None:
            self.subnet = coupling_subnet(self.splits[0], 2 * self.splits[1], kernel_size)
        else:
            self.subnet = subnet_constructor(self.splits[0], 2 * self.splits[1])
        self.global_scale = nn.Parameter(torch.full((1, channels, 1, 1), _GLOBAL_SCALE_INIT))
        self.global_offset = nn.Parameter(torch.zeros(1, channels, 1, 1))
        if permute_soft:
            w = random_rotation(channels)
            perm = torch.arange(channels)
        else:
            perm = torch.randperm(channels)
            w = permutation_matrix(perm)
        self.w_perm = nn.Parameter(w.view(channels, channels, 1, 1).clone(), requires_grad=False)
        self.w_perm_inv = nn.Parameter(w.t().reshape(channels, channels, 1, 1).clone(), requires_grad=False)
        self.register_buffer("perm", perm, persistent=False)
        self.register_buffer("perm_inv", torch.argsort(perm), persistent=False)

    def _load_from_state_dict(self, *args, **kwargs):
        # a method, not a state-dict hook holding a lambda: the module stays picklable
        super()._load_from_state_dict(*args, **kwargs)
        self._sync_perm()

    def _sync_perm(self) -> None:
        """Derive the index permutation from ``w_perm`` (after a state-dict load)."""
        idx = hard_permutation_index(self.w_perm)
        self.permute_soft = idx is None
        if self.permute_soft:
            idx = torch.arange(self.channels)
        self.perm.copy_(idx.to(self.perm.device))
        self.perm_inv.copy_(torch.argsort(idx).to(self.perm.device))

    def scale_and_offset(self):
        """Activated global scale ``g`` and offset ``b``, each ``[C]``."""
        g = global_affine_activation(self.global_scale, "SOFTPLUS")
        return g.reshape(self.channels), self.global_offset.reshape(self.channels)

    def _check_input(self, x):
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise ValueError(f"AllInOneCoupling expects [B, {self.channels}, H, W], got {tuple(x.shape)}")

    def forward(self, x, rev: bool = False, compute_logdet: bool = True):
        self._check_input(x)
        g, b = self.scale_and_offset()
        if self.permute_soft:
            if self.backend not in ("auto", "torch"):
                raise BackendUnavailable(f"AllInOneCoupling: backend {self.backend!r}: {SOFT_PERMUTATION_REASON}")
            # FrEIA's computation with the dense (soft) channel mixing w_perm
            y, logdet = torch_coupling(x, (), self.subnet, g.view(1, -1, 1, 1), b.view(1, -1, 1, 1), self.w_perm,
                                       self.w_perm_inv, self.clamp, rev)
            return y, (logdet if compute_logdet else None)
        return fused_coupling(x, (), self.subnet, g, b, self.perm, self.perm_inv, self.clamp, rev,
                              ops.module_backend("affine_coupling", self.backend), compute_logdet=compute_logdet)


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channels of every position of ``[B, C, H, W]`` (one ``[C]`` affine).

    Unlike a LayerNorm over ``[C, H, W]`` (DADF's flow-input norm), a position's output does not
    depend on the rest of the image, and the affine has ``2C`` parameters instead of ``2CHW``
    (docs/accuracy_history.md: with a few dozen training images the per-activation affine overfits and
    the image-wide statistics move every position's likelihood when part of a normal image looks
    unusual).  Computed in NCHW, float32 statistics for reduced-precision inputs.
    """

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x):
        xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        var, mean = torch.var_mean(xf, dim=1, keepdim=True, correction=0)
        y = (xf - mean) * torch.rsqrt(var + self.eps)
        y = y * self.weight[:, None, None] + self.bias[:, None, None]
        # like F.layer_norm under autocast: float32 out, so the flow runs on float32 inputs
        return y if torch.is_autocast_enabled(x.device.type) else y.to(x.dtype)


FLOW_NORMS = ("image", "channel")


class FlowStage(nn.Module):
    """One scale's discriminative flow: an input normalisation then ``steps`` coupling steps
    (subnet kernel 3 on even steps, 1 on odd steps; ``subnet="depthwise"`` is DADF's
    :func:`coupling_subnet`, ``"conv"`` FastFlow's :func:`conv_subnet` with hidden ratio 1).

    ``norm="image"`` is DADF's ``LayerNorm([C, H, W])``; ``norm="channel"`` normalises each
    position over its channels (:class:`ChannelLayerNorm`, the lite preset's choice).

    Forward: ``(x [B, C, H, W], compute_logdet=True) -> (z [B, C, H, W], logdet [B])``;
    with ``compute_logdet=False`` (inference) logdet is None.
    """

    def __init__(self, channels: int, size, steps: int = 8, clamp: float = 2.0, backend: str = "auto",
                 norm: str = "image", subnet: str = "depthwise"):
        super().__init__()
        if norm not in FLOW_NORMS:
            raise ValueError(f"norm must be one of {FLOW_NORMS}, got {norm!r}")
        if subnet not in FLOW_SUBNETS:
            raise ValueError(f"subnet must be one of {FLOW_SUBNETS}, got {subnet!r}")
        make = coupling_subnet if subnet == "depthwise" else conv_subnet
        h, w = (size, size) if isinstance(size, int) else size
        self.channels, self.size = channels, (int(h), int(w))
        self.norm = nn.LayerNorm([channels, h, w]) if norm == "image" else ChannelLayerNorm(channels)
        self.steps = nn.ModuleList(
            AllInOneCoupling(channels, lambda c_in, c_out, k=3 if i % 2 == 0 else 1: make(c_in, c_out, k),
                             affine_clamping=clamp, backend=backend)
            for i in range(steps)
        )

    def set_backend(self, backend: str) -> None:
        for s in self.steps:
            s.backend = backend

    def forward(self, x, compute_logdet: bool = True):
        if x.dim() != 4 or tuple(x.shape[1:]) != (self.channels, *self.size):
            raise ValueError(f"FlowStage expects [B, {self.channels}, {self.size[0]}, {self.size[1]}], got {tuple(x.shape)}")
        if torch.is_autocast_enabled(x.device.type) and x.dtype != torch.float32:
            # the flow's input norm and coupling epilogue are float32 islands under mixed
            # precision (the subnets alone run in the low precision)
            x = x.float()
        z = self.norm(x)
        if not compute_logdet:
            for step in self.steps:
                z, _ = step(z, compute_logdet=False)
            return z, None
        logdet = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        for step in self.steps:
            z, ld = step(z)
            logdet = logdet + ld
        return z, logdet

    def reverse(self, z):
        """Invert the coupling steps (the LayerNorm is not invertible): ``z -> normalised input``."""
        for step in reversed(self.steps):
            z, _ = step(z, rev=True)
        return z


__all__ = ["AllInOneCoupling", "ChannelLayerNorm", "FlowStage", "FLOW_NORMS", "FLOW_SUBNETS", "coupling_subnet",
           "conv_subnet", "SOFT_PERMUTATION_REASON"]
