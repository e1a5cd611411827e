"""Fused depthwise ``k x k`` convolution + bias + LeakyReLU in Triton (forward and backward).

This is the first half of DADF's coupling subnet (depthwise conv -> LeakyReLU(0.1) -> 1x1
conv): ``y = leaky_relu(conv2d(x1, weight, bias, padding=k//2, groups=C1), slope)``, with the
activation applied in registers instead of a second pass over the conv output.

Backward is one kernel too.  It saves nothing extra: the LeakyReLU mask is read from the
op's own output ``y`` (``y > 0`` exactly when the pre-activation is ``> 0``, for any
``slope >= 0``), and ``y`` is kept alive anyway by the following 1x1 conv's weight gradient.
``dz = dy * mask`` is recomputed at the ``k x k`` neighbourhood of each pixel (cache hits),
giving ``dx`` (a transposed depthwise conv) in the same pass as the weight and bias
partials.  Weight/bias gradients are reduced deterministically: every program writes its
per-channel partial sums into its own slot of a buffer ``[B, n_pixel_blocks, C, k*k]``
(no atomics) which is then summed with ``torch.sum`` (fixed order for a fixed shape).

Entry: :func:`depthwise_conv_leaky_relu`, a ``torch.library`` custom op
``dadf_fast_triton::depthwise_conv_leaky_relu`` with fake implementation and autograd.
Whether it pays over cuDNN's depthwise conv + a separate LeakyReLU can only be measured on a
GPU: see ``benchmarks/coupling.py`` (the ``subnet-half`` rows).
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

__all__ = ["depthwise_conv_leaky_relu", "launch_config"]

_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _np2(n: int) -> int:
    return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()


def launch_config(channels: int, pixels: int) -> tuple[int, int, int]:
    """``(BLOCK_C, BLOCK_P, num_warps)``; tiny tiles under the interpreter so that tests cover
    several channel and pixel blocks."""
    if _INTERPRET:
        return min(4, _np2(channels)), min(8, _np2(pixels)), 1
    block_p = min(256, max(16, _np2(pixels)))
    block_c = max(1, min(_np2(channels), 1024 // block_p))
    return block_c, block_p, 4


@triton.jit
def _dw_fwd_kernel(
    x_ptr, w_ptr, bias_ptr, y_ptr,
    C, H, W,
    sxb, sxc, sxh, sxw,
    slope,
    HAS_BIAS: tl.constexpr, KSIZE: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):
    pid_p = tl.program_id(0)
    pid_c = tl.program_id(1)
    pid_b = tl.program_id(2).to(tl.int64)
    HW = H * W
    PAD = KSIZE // 2

    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    cmask = offs_c < C
    pmask = offs_p < HW
    hh = offs_p // W
    ww = offs_p % W
    c64 = offs_c.to(tl.int64)
    x_base = x_ptr + pid_b * sxb + c64[:, None] * sxc

    acc = tl.zeros((BLOCK_C, BLOCK_P), dtype=tl.float32)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_c, mask=cmask, other=0.0).to(tl.float32)[:, None]
    for di in tl.static_range(KSIZE):
        for dj in tl.static_range(KSIZE):
            hi = hh + (di - PAD)
            wi = ww + (dj - PAD)
            ok = pmask & (hi >= 0) & (hi < H) & (wi >= 0) & (wi < W)
            wv = tl.load(w_ptr + offs_c * (KSIZE * KSIZE) + (di * KSIZE + dj), mask=cmask, other=0.0).to(tl.float32)
            pix = hi.to(tl.int64) * sxh + wi.to(tl.int64) * sxw
            xv = tl.load(x_base + pix[None, :], mask=cmask[:, None] & ok[None, :], other=0.0).to(tl.float32)
            acc += wv[:, None] * xv
    out = tl.where(acc > 0, acc, acc * slope)
    m = cmask[:, None] & pmask[None, :]
    dst = y_ptr + (pid_b * C + c64)[:, None] * HW + offs_p.to(tl.int64)[None, :]
    tl.store(dst, out.to(y_ptr.dtype.element_ty), mask=m)


@triton.jit
def _dw_bwd_kernel(
    gy_ptr, y_ptr, x_ptr, w_ptr,
    dx_ptr, pw_ptr, pbias_ptr,
    C, H, W,
    sgb, sgc, sgh, sgw,
    syb, syc, syh, syw,
    sxb, sxc, sxh, sxw,
    slope,
    KSIZE: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):
    """dz = gy * (y > 0 ? 1 : slope);  dx[p] = sum_d w[d] * dz[p - d];
    pw[c, d] = sum_p dz[p] * x[p + d];  pbias[c] = sum_p dz[p]   (d: tap offset)."""
    pid_p = tl.program_id(0)
    pid_c = tl.program_id(1)
    pid_b = tl.program_id(2).to(tl.int64)
    n_pb = tl.num_programs(0)
    HW = H * W
    PAD = KSIZE // 2
    KK = KSIZE * KSIZE

    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    cmask = offs_c < C
    pmask = offs_p < HW
    hh = offs_p // W
    ww = offs_p % W
    c64 = offs_c.to(tl.int64)
    m = cmask[:, None] & pmask[None, :]
    gy_base = gy_ptr + pid_b * sgb + c64[:, None] * sgc
    y_base = y_ptr + pid_b * syb + c64[:, None] * syc
    x_base = x_ptr + pid_b * sxb + c64[:, None] * sxc

    h64 = hh.to(tl.int64)
    w64 = ww.to(tl.int64)
    gy = tl.load(gy_base + (h64 * sgh + w64 * sgw)[None, :], mask=m, other=0.0).to(tl.float32)
    yv = tl.load(y_base + (h64 * syh + w64 * syw)[None, :], mask=m, other=0.0).to(tl.float32)
    dz = tl.where(yv > 0, gy, gy * slope)
    dz = tl.where(m, dz, 0.0)

    slot = ((pid_b * n_pb + pid_p) * C + c64) * KK
    tl.store(pbias_ptr + (pid_b * n_pb + pid_p) * C + c64, tl.sum(dz, axis=1), mask=cmask)

    dx = tl.zeros((BLOCK_C, BLOCK_P), dtype=tl.float32)
    for di in tl.static_range(KSIZE):
        for dj in tl.static_range(KSIZE):
            # weight gradient: x at p + d
            hi = hh + (di - PAD)
            wi = ww + (dj - PAD)
            ok = pmask & (hi >= 0) & (hi < H) & (wi >= 0) & (wi < W)
            mk = cmask[:, None] & ok[None, :]
            xv = tl.load(x_base + (hi.to(tl.int64) * sxh + wi.to(tl.int64) * sxw)[None, :],
                         mask=mk, other=0.0).to(tl.float32)
            tl.store(pw_ptr + slot + (di * KSIZE + dj), tl.sum(dz * xv, axis=1), mask=cmask)
            # input gradient: dz at p - d
            ho = hh - (di - PAD)
            wo = ww - (dj - PAD)
            ok2 = pmask & (ho >= 0) & (ho < H) & (wo >= 0) & (wo < W)
            mk2 = cmask[:, None] & ok2[None, :]
            ho64 = ho.to(tl.int64)
            wo64 = wo.to(tl.int64)
            go = tl.load(gy_base + (ho64 * sgh + wo64 * sgw)[None, :], mask=mk2, other=0.0).to(tl.float32)
            yo = tl.load(y_base + (ho64 * syh + wo64 * syw)[None, :], mask=mk2, other=0.0).to(tl.float32)
            dzo = tl.where(yo > 0, go, go * slope)
            wv = tl.load(w_ptr + offs_c * KK + (di * KSIZE + dj), mask=cmask, other=0.0).to(tl.float32)
            dx += wv[:, None] * dzo
    dst = dx_ptr + (pid_b * C + c64)[:, None] * HW + offs_p.to(tl.int64)[None, :]
    tl.store(dst, dx.to(dx_ptr.dtype.element_ty), mask=m)


def _forward(x, weight, bias, slope):
    bsz, c, h, w = x.shape
    k = weight.shape[-1]
    hw = h * w
    y = torch.empty((bsz, c, h, w), device=x.device, dtype=x.dtype)
    block_c, block_p, warps = launch_config(c, hw)
    if bsz > 0 and hw > 0 and c > 0:
        grid = (triton.cdiv(hw, block_p), triton.cdiv(c, block_c), bsz)
        _dw_fwd_kernel[grid](
            x, weight.contiguous(), bias.contiguous() if bias is not None else weight, y,
            c, h, w, *x.stride(), float(slope),
            HAS_BIAS=bias is not None, KSIZE=k, BLOCK_C=block_c, BLOCK_P=block_p, num_warps=warps,
        )
    return y


def _backward(gy, y, x, weight, slope):
    bsz, c, h, w = x.shape
    k = weight.shape[-1]
    hw = h * w
    dx = torch.empty((bsz, c, h, w), device=x.device, dtype=x.dtype)
    block_c, block_p, warps = launch_config(c, hw)
    n_pb = triton.cdiv(hw, block_p)
    # every slot is written by exactly one program (no memset needed)
    pw = torch.empty((bsz, n_pb, c, k * k), device=x.device, dtype=torch.float32)
    pbias = torch.empty((bsz, n_pb, c), device=x.device, dtype=torch.float32)
    if bsz > 0 and hw > 0 and c > 0:
        grid = (n_pb, triton.cdiv(c, block_c), bsz)
        _dw_bwd_kernel[grid](
            gy, y, x, weight.contiguous(), dx, pw, pbias,
            c, h, w, *gy.stride(), *y.stride(), *x.stride(), float(slope),
            KSIZE=k, BLOCK_C=block_c, BLOCK_P=block_p, num_warps=warps,
        )
    # fixed-order sums of the per-program partials (deterministic)
    dw = pw.sum(dim=(0, 1)).view(c, 1, k, k).to(weight.dtype)
    dbias = pbias.sum(dim=(0, 1)).to(weight.dtype)
    return dx, dw, dbias


@torch.library.custom_op("dadf_fast_triton::depthwise_conv_leaky_relu", mutates_args=())
def _dw_op(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, negative_slope: float) -> torch.Tensor:
    return _forward(x, weight, bias, negative_slope)


@_dw_op.register_fake
def _dw_fake(x, weight, bias, negative_slope):
    return x.new_empty(x.shape)


@torch.library.custom_op("dadf_fast_triton::depthwise_conv_leaky_relu_backward", mutates_args=())
def _dw_bwd_op(gy: torch.Tensor, y: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
               negative_slope: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _backward(gy, y, x, weight, negative_slope)


@_dw_bwd_op.register_fake
def _dw_bwd_fake(gy, y, x, weight, negative_slope):
    return x.new_empty(x.shape), weight.new_empty(weight.shape), weight.new_empty(weight.shape[:1])


def _dw_setup(ctx, inputs, output):
    x, weight, bias, slope = inputs
    ctx.save_for_backward(x, weight, output)
    ctx.slope = float(slope)
    ctx.has_bias = bias is not None


def _dw_autograd(ctx, gy):
    x, weight, y = ctx.saved_tensors
    dx, dw, dbias = _dw_bwd_op(gy, y, x, weight, ctx.slope)
    return dx, dw, (dbias if ctx.has_bias else None), None


_dw_op.register_autograd(_dw_autograd, setup_context=_dw_setup)


def depthwise_conv_leaky_relu(x1, weight, bias=None, negative_slope: float = 0.1):
    """``leaky_relu(conv2d(x1, weight, bias, padding=k//2, groups=C1), negative_slope)`` fused.

    Args:
        x1: ``[B, C1, H, W]`` (any strides, e.g. a channel slice of a larger tensor).
        weight: ``[C1, 1, k, k]`` depthwise filter, k odd.  bias: ``[C1]`` or None.
        negative_slope: LeakyReLU slope, ``>= 0`` (0 is ReLU).
    Returns:
        ``[B, C1, H, W]`` contiguous, dtype of ``x1``.  Differentiable in x1, weight, bias.
    """
    if not isinstance(x1, torch.Tensor) or x1.dim() != 4:
        raise ValueError(f"depthwise_conv_leaky_relu: x1 must be [B, C1, H, W], got {getattr(x1, 'shape', x1)}")
    c = x1.shape[1]
    if weight.dim() != 4 or weight.shape[0] != c or weight.shape[1] != 1 or weight.shape[2] != weight.shape[3]:
        raise ValueError(f"depthwise_conv_leaky_relu: weight must be [{c}, 1, k, k], got {tuple(weight.shape)}")
    if weight.shape[-1] % 2 != 1:
        raise ValueError(f"depthwise_conv_leaky_relu: kernel size must be odd for 'same' padding, got {weight.shape[-1]}")
    if bias is not None and tuple(bias.shape) != (c,):
        raise ValueError(f"depthwise_conv_leaky_relu: bias must be [{c}], got {tuple(bias.shape)}")
    for n, t in (("weight", weight), ("bias", bias)):
        if t is None:
            continue
        if t.device != x1.device:
            raise ValueError(f"depthwise_conv_leaky_relu: {n} is on {t.device} but x1 is on {x1.device}")
        if t.dtype != x1.dtype:
            raise TypeError(f"depthwise_conv_leaky_relu: {n} has dtype {t.dtype} but x1 has {x1.dtype}")
    if not negative_slope >= 0:
        raise ValueError(
            "depthwise_conv_leaky_relu: negative_slope must be >= 0 (the backward reads the "
            f"activation mask from the output), got {negative_slope}")
    return torch.ops.dadf_fast_triton.depthwise_conv_leaky_relu(x1, weight, bias, float(negative_slope))
