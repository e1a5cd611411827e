"""Fused Triton epilogue of one FrEIA ``AllInOneBlock`` step.

After its subnet, a FrEIA step scales the subnet output by ``a_scale`` (0.1), soft-clamps
with tanh, exponentiates, multiply-adds onto the second half, concatenates, applies the
global affine, permutes the channels with a dense ``C x C`` 1x1 convolution and reduces the
log-determinant: several passes over memory.  Here the whole epilogue is one pass:

* grid over (pixel block, output-channel block, batch); for output channel ``i`` the source
  channel is ``j = perm[i]``: if ``j < C1`` it is a copy of ``x[:, j]``, else the x2 channel
  ``k = j - C1`` transformed with ``s = clamp*tanh(a_scale*a[:, k])`` and
  ``t = a_scale*a[:, C2 + k]``; then ``* g[j] + b[j]``, and the value is stored directly at
  output channel ``i`` (the permutation is an index gather, never a matmul);
* the log-determinant ``sum s + H*W*sum log g`` is reduced deterministically: every program
  writes the sum of ``s`` over its tile into its own slot of a partial buffer
  ``[B, n_channel_blocks, n_pixel_blocks]`` (no atomics), and the host side sums that buffer
  with ``torch.sum``, a fixed-order reduction for a fixed shape, so the result is bitwise
  identical run to run.

Backward is one more pass (nothing is saved but the inputs: ``u``, ``exp(s)`` and ``tanh``
are recomputed from ``x`` and ``a``); the per-channel ``dg``/``db`` reductions go through
partial buffers ``[B, n_pixel_blocks, C]`` the same way.  ``reverse=True`` is the exact
inverse (for sampling and tests), with its own backward.

All arithmetic is float32 whatever the storage dtype (float16/bfloat16 are loaded, upcast,
and the result rounded once on store).  Only Triton features present in both Triton 3.6 and
3.8 are used (no ``tl.math.tanh``/libdevice: tanh is built from ``exp``).

The public entry is :func:`affine_coupling_triton`, which calls the ``torch.library``
custom op ``dadf_fast_triton::affine_coupling`` (fake implementation for
``torch.compile``/meta tensors and autograd registered).  On CPU tensors it runs only under
``TRITON_INTERPRET=1`` (set before triton is imported).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from dadf_fast.kernels.triton.common import INTERPRET, device_guard, next_power_of_2, require

__all__ = ["affine_coupling_triton", "launch_config"]


def launch_config(channels: int, pixels: int) -> tuple[int, int, int]:
    """``(BLOCK_C, BLOCK_P, num_warps)`` for a ``channels x pixels`` plane.

    On a GPU a tile holds about 2048 elements (16 per thread at 4 warps), long in the
    contiguous pixel direction so that every gathered channel row is a coalesced load.  Under
    the interpreter tiles are small so that tests with tiny shapes still cover several
    channel and pixel blocks (and so the partial-sum paths)."""
    if INTERPRET:
        return min(4, next_power_of_2(channels)), min(8, next_power_of_2(pixels)), 1
    block_p = min(256, max(16, next_power_of_2(pixels)))
    block_c = max(1, min(next_power_of_2(channels), 2048 // block_p))
    return block_c, block_p, 4


@triton.jit
def _tanh(z):
    # tanh from exp (libdevice/tl.math tanh differ between Triton versions and the
    # interpreter); e = exp(-2|z|) is in (0, 1], so no overflow for any z.  Near 0 the
    # (1 - e) cancels, so |z| < 0.125 uses the odd series to z^7 (next term < 2e-9 relative).
    az = tl.abs(z)
    e = tl.exp(-2.0 * az)
    r = (1.0 - e) / (1.0 + e)
    z2 = az * az
    series = az * (1.0 + z2 * (-1.0 / 3.0 + z2 * (2.0 / 15.0 + z2 * (-17.0 / 315.0))))
    r = tl.where(az < 0.125, series, r)
    return tl.where(z < 0, -r, r)


@triton.jit
def _pix_offsets(offs_p, W, sh, sw, FLAT: tl.constexpr):
    # Element offsets of flat pixel indices inside one (H, W) plane.  FLAT: the plane is
    # contiguous (stride_w == 1, stride_h == W), so offsets are the indices themselves and
    # loads vectorise; otherwise (channels_last, transposed, sliced...) go through (h, w).
    if FLAT:
        off = offs_p.to(tl.int64)
    else:
        off = (offs_p // W).to(tl.int64) * sh + (offs_p % W).to(tl.int64) * sw
    return off


@triton.jit
def _coupling_fwd_kernel(
    x_ptr, a_ptr, g_ptr, b_ptr, perm_ptr, y_ptr, part_ptr,
    C, C1, C2, H, W,
    sxb, sxc, sxh, sxw,
    sab, sac, sah, saw,
    clamp, a_scale,
    REVERSE: tl.constexpr, X_FLAT: tl.constexpr, A_FLAT: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):
    """Forward (``REVERSE=False``): reads x at channel ``j=perm[i]``, writes y at channel i.
    Inverse (``REVERSE=True``): reads y at channel i, writes x at channel ``perm[i]``.
    Output tensors are contiguous ``[B, C, H, W]``; inputs take any strides."""
    pid_p = tl.program_id(0)
    pid_c = tl.program_id(1)
    pid_b = tl.program_id(2).to(tl.int64)
    n_cb = tl.num_programs(1)
    n_pb = tl.num_programs(0)
    HW = H * W

    offs_i = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    cmask = offs_i < C
    pmask = offs_p < HW
    j = tl.load(perm_ptr + offs_i, mask=cmask, other=0)  # int64 source channel
    # perm values are not checked on the host for GPU tensors (a sync per call): an
    # out-of-range entry must not address memory; its row becomes NaN and so does the
    # log-det (as the CUDA kernel of the cpp backend does)
    valid = cmask & (j >= 0) & (j < C)
    j = tl.where(valid, j, 0)
    is2 = (j >= C1) & valid
    k = tl.where(is2, j - C1, 0)
    g = tl.load(g_ptr + j, mask=valid, other=1.0).to(tl.float32)
    bb = tl.load(b_ptr + j, mask=valid, other=0.0).to(tl.float32)

    m = cmask[:, None] & pmask[None, :]
    mv = valid[:, None] & pmask[None, :]
    m2 = is2[:, None] & pmask[None, :]
    pix_x = _pix_offsets(offs_p, W, sxh, sxw, X_FLAT)
    pix_a = _pix_offsets(offs_p, W, sah, saw, A_FLAT)
    a_base = a_ptr + pid_b * sab
    a_s = tl.load(a_base + k[:, None] * sac + pix_a[None, :], mask=m2, other=0.0).to(tl.float32)
    a_t = tl.load(a_base + (k + C2)[:, None] * sac + pix_a[None, :], mask=m2, other=0.0).to(tl.float32)
    s = clamp * _tanh(a_scale * a_s)
    s = tl.where(m2, s, 0.0)
    t = a_scale * a_t

    offs_out_pix = offs_p.to(tl.int64)
    if REVERSE:
        v = tl.load(x_ptr + pid_b * sxb + offs_i.to(tl.int64)[:, None] * sxc + pix_x[None, :],
                    mask=m, other=0.0).to(tl.float32)
        u = (v - bb[:, None]) / g[:, None]
        out = tl.where(m2, (u - t) * tl.exp(-s), u)
        # scatter to channel perm[i]; the host NaN-fills y, so a channel no valid entry
        # reaches stays NaN
        tl.store(y_ptr + (pid_b * C + j)[:, None] * HW + offs_out_pix[None, :],
                 out.to(y_ptr.dtype.element_ty), mask=mv)
    else:
        xv = tl.load(x_ptr + pid_b * sxb + j[:, None] * sxc + pix_x[None, :], mask=mv, other=0.0).to(tl.float32)
        u = tl.where(m2, xv * tl.exp(s) + t, xv)
        out = u * g[:, None] + bb[:, None]
        out = tl.where(valid[:, None], out, float("nan"))
        tl.store(y_ptr + (pid_b * C + offs_i.to(tl.int64))[:, None] * HW + offs_out_pix[None, :],
                 out.to(y_ptr.dtype.element_ty), mask=m)

    # One float32 partial per program, in its own slot: no atomics, fixed-order host sum.
    part = tl.sum(tl.sum(s, axis=1), axis=0)
    n_bad = tl.sum((cmask & (valid == 0)).to(tl.int32), axis=0)
    part = tl.where(n_bad > 0, float("nan"), part)
    tl.store(part_ptr + (pid_b * n_cb + pid_c) * n_pb + pid_p, part)


@triton.jit
def _coupling_bwd_kernel(
    gout_ptr, dlog_ptr, x_ptr, a_ptr, g_ptr, b_ptr, perm_ptr,
    gin_ptr, da_ptr, pg_ptr, pb_ptr,
    C, C1, C2, H, W,
    sob, soc, soh, sow,
    sxb, sxc, sxh, sxw,
    sab, sac, sah, saw,
    clamp, a_scale,
    REVERSE: tl.constexpr, O_FLAT: tl.constexpr, X_FLAT: tl.constexpr, A_FLAT: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):
    """Backward of :func:`_coupling_fwd_kernel`.

    Forward direction (``x -> y``), with ``v = u*g + b`` and ``dv[:, perm[i]] = dy[:, i]``:
      ``du = dv*g``; ``dx1 = du1``; ``dx2 = du2*exp(s)``;
      ``ds = du2*x2*exp(s) + dlogdet``; ``dt = du2``; ``da_s = ds*clamp*(1-tanh^2)*a_scale``;
      ``da_t = dt*a_scale``; partials ``pg[j] = sum dv*u``, ``pb[j] = sum dv``.
    Reverse direction (``y -> x``), ``u = (v - b)/g``, ``x2 = (u2 - t)*exp(-s)``:
      ``du2 = dx2*exp(-s)``; ``dt = -du2``; ``ds = -dx2*x2 - dlogdet``; ``dv = du/g``
      (stored at ``dy[:, i]``); partials ``pg[j] = sum du*u``, ``pb[j] = sum du``.
    ``gout`` is dy (forward) or dx (reverse), ``gin`` the gradient of the op's first input.
    ``x_ptr`` is the op's first input (x forward, y reverse)."""
    pid_p = tl.program_id(0)
    pid_c = tl.program_id(1)
    pid_b = tl.program_id(2).to(tl.int64)
    n_pb = tl.num_programs(0)
    HW = H * W

    offs_i = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    cmask = offs_i < C
    pmask = offs_p < HW
    offs_i64 = offs_i.to(tl.int64)

    j = tl.load(perm_ptr + offs_i, mask=cmask, other=0)
    # out-of-range perm entries (GPU tensors are not checked on the host): no access
    # through them; their dg/db slots keep the host's NaN fill
    valid = cmask & (j >= 0) & (j < C)
    j = tl.where(valid, j, 0)
    is2 = (j >= C1) & valid
    k = tl.where(is2, j - C1, 0)
    g = tl.load(g_ptr + j, mask=valid, other=1.0).to(tl.float32)
    bb = tl.load(b_ptr + j, mask=valid, other=0.0).to(tl.float32)
    dlog = tl.load(dlog_ptr + pid_b).to(tl.float32)

    m = valid[:, None] & pmask[None, :]
    m2 = is2[:, None] & pmask[None, :]
    pix_x = _pix_offsets(offs_p, W, sxh, sxw, X_FLAT)
    pix_a = _pix_offsets(offs_p, W, sah, saw, A_FLAT)
    pix_o = _pix_offsets(offs_p, W, soh, sow, O_FLAT)
    a_base = a_ptr + pid_b * sab
    a_s = tl.load(a_base + k[:, None] * sac + pix_a[None, :], mask=m2, other=0.0).to(tl.float32)
    a_t = tl.load(a_base + (k + C2)[:, None] * sac + pix_a[None, :], mask=m2, other=0.0).to(tl.float32)
    th = _tanh(a_scale * a_s)
    s = clamp * th
    t = a_scale * a_t
    dsda = clamp * (1.0 - th * th) * a_scale

    out_pix = offs_p.to(tl.int64)
    if REVERSE:
        v = tl.load(x_ptr + pid_b * sxb + offs_i64[:, None] * sxc + pix_x[None, :], mask=m, other=0.0).to(tl.float32)
        u = (v - bb[:, None]) / g[:, None]
        e_neg = tl.exp(-s)
        x2 = (u - t) * e_neg
        dxr = tl.load(gout_ptr + pid_b * sob + j[:, None] * soc + pix_o[None, :], mask=m, other=0.0).to(tl.float32)
        du = tl.where(m2, dxr * e_neg, dxr)
        ds = -dxr * x2 - dlog
        dt = -du
        dv = du / g[:, None]
        tl.store(gin_ptr + (pid_b * C + offs_i64)[:, None] * HW + out_pix[None, :],
                 dv.to(gin_ptr.dtype.element_ty), mask=m)
        acc_u = du
    else:
        xv = tl.load(x_ptr + pid_b * sxb + j[:, None] * sxc + pix_x[None, :], mask=m, other=0.0).to(tl.float32)
        e = tl.exp(s)
        u = tl.where(m2, xv * e + t, xv)
        dv = tl.load(gout_ptr + pid_b * sob + offs_i64[:, None] * soc + pix_o[None, :],
                     mask=m, other=0.0).to(tl.float32)
        du = dv * g[:, None]
        dx = tl.where(m2, du * e, du)
        ds = du * xv * e + dlog
        dt = du
        tl.store(gin_ptr + (pid_b * C + j)[:, None] * HW + out_pix[None, :],
                 dx.to(gin_ptr.dtype.element_ty), mask=m)
        acc_u = dv

    da_s = ds * dsda
    da_t = dt * a_scale
    da_base = da_ptr + pid_b * (2 * C2) * HW
    tl.store(da_base + k[:, None] * HW + out_pix[None, :], da_s.to(da_ptr.dtype.element_ty), mask=m2)
    tl.store(da_base + (k + C2)[:, None] * HW + out_pix[None, :], da_t.to(da_ptr.dtype.element_ty), mask=m2)

    # Per-channel partials of this (batch, pixel block), one slot each: no atomics.
    pu = tl.sum(tl.where(m, acc_u * u, 0.0), axis=1)
    pd = tl.sum(tl.where(m, acc_u, 0.0), axis=1)
    slot = (pid_b * n_pb + pid_p) * C + j
    tl.store(pg_ptr + slot, pu, mask=valid)
    tl.store(pb_ptr + slot, pd, mask=valid)


# --------------------------------------------------------------------------- launchers


def _guard(x, a, g, b, perm, gout=None, dlogdet=None):
    """Refuse inputs the kernels would read out of bounds.

    The public op validates everything once (:func:`dadf_fast.ops.affine_coupling`); this
    guard is for ``torch.ops.dadf_fast_triton.*`` called directly: the kernels index ``a``,
    ``g``, ``b``, ``perm`` (and the gradients) by x's sizes and read ``perm`` as int64, so a
    smaller tensor, another index dtype or another device would address memory the op does
    not own.  Values of ``perm`` need no check: the kernels mask out-of-range entries."""
    op = "dadf_fast_triton::affine_coupling"
    require(x.dim() == 4, op, f"x must be [B, C, H, W], got shape {tuple(x.shape)}")
    bsz, c, h, w = x.shape
    want = (bsz, 2 * (c // 2), h, w)
    require(tuple(a.shape) == want, op, f"a must have shape {list(want)}, got {tuple(a.shape)}")
    for n, t in (("g", g), ("b", b), ("perm", perm)):
        require(tuple(t.shape) == (c,), op, f"{n} must have shape [{c}], got {tuple(t.shape)}")
    require(perm.dtype == torch.int64, op, f"perm must be int64, got {perm.dtype}", TypeError)
    if gout is not None:
        require(gout.shape == x.shape, op, f"the output gradient must have x's shape {tuple(x.shape)}, "
                f"got {tuple(gout.shape)}")
        require(tuple(dlogdet.shape) == (bsz,), op, f"the log-det gradient must have shape [{bsz}], "
                f"got {tuple(dlogdet.shape)}")
    for n, t in (("a", a), ("g", g), ("b", b), ("perm", perm), ("grad", gout), ("logdet grad", dlogdet)):
        if t is not None:
            require(t.device == x.device, op, f"{n} is on {t.device} but x is on {x.device}")


def _flat(t):
    """Whether each (H, W) plane of ``t`` is contiguous (then pixel offsets are flat)."""
    _, _, h, w = t.shape
    return (w == 1 or t.stride(3) == 1) and (h == 1 or t.stride(2) == w)


def _log_g_term(g, hw):
    return hw * torch.log(g.float()).sum()


def _forward(x, a, g, b, perm, clamp, a_scale, reverse):
    _guard(x, a, g, b, perm)
    with device_guard(x):
        return _forward_launch(x, a, g, b, perm, clamp, a_scale, reverse)


def _forward_launch(x, a, g, b, perm, clamp, a_scale, reverse):
    bsz, c, h, w = x.shape
    c2 = c // 2
    c1 = c - c2
    hw = h * w
    # reverse scatters into channel perm[i]: NaN-filled so a bad perm (unchecked on GPU)
    # cannot leave uninitialised memory in y (reverse is for sampling and tests)
    if reverse:
        y = torch.full((bsz, c, h, w), float("nan"), device=x.device, dtype=x.dtype)
    else:
        y = torch.empty((bsz, c, h, w), device=x.device, dtype=x.dtype)
    block_c, block_p, warps = launch_config(c, hw)
    n_cb, n_pb = triton.cdiv(c, block_c), triton.cdiv(hw, block_p)
    # every slot is written by exactly one program, so no memset is needed
    part = torch.empty((bsz, n_cb, n_pb), device=x.device, dtype=torch.float32)
    if bsz > 0 and hw > 0:
        g_c, b_c, perm_c = g.contiguous(), b.contiguous(), perm.contiguous()
        _coupling_fwd_kernel[(n_pb, n_cb, bsz)](
            x, a, g_c, b_c, perm_c, y, part,
            c, c1, c2, h, w,
            *x.stride(), *a.stride(),
            float(clamp), float(a_scale),
            REVERSE=bool(reverse), X_FLAT=_flat(x), A_FLAT=_flat(a),
            BLOCK_C=block_c, BLOCK_P=block_p, num_warps=warps,
        )
    # Deterministic: torch.sum over a buffer of fixed shape reduces in a fixed order.
    logdet = part.sum(dim=(1, 2)) + _log_g_term(g, hw)
    if reverse:
        logdet = -logdet
    return y, logdet.to(x.dtype)


def _backward(gout, dlogdet, x, a, g, b, perm, clamp, a_scale, reverse):
    _guard(x, a, g, b, perm, gout, dlogdet)
    with device_guard(x):
        return _backward_launch(gout, dlogdet, x, a, g, b, perm, clamp, a_scale, reverse)


def _backward_launch(gout, dlogdet, x, a, g, b, perm, clamp, a_scale, reverse):
    bsz, c, h, w = x.shape
    c2 = c // 2
    c1 = c - c2
    hw = h * w
    gin = torch.empty((bsz, c, h, w), device=x.device, dtype=x.dtype)
    da = torch.empty((bsz, 2 * c2, h, w), device=x.device, dtype=a.dtype)
    block_c, block_p, warps = launch_config(c, hw)
    n_cb, n_pb = triton.cdiv(c, block_c), triton.cdiv(hw, block_p)
    # each (batch, pixel block, channel) slot is written exactly once when perm is a
    # bijection; the NaN fill makes dg/db NaN when it is not (small: C per pixel block)
    pg = torch.full((bsz, n_pb, c), float("nan"), device=x.device, dtype=torch.float32)
    pb = torch.full((bsz, n_pb, c), float("nan"), device=x.device, dtype=torch.float32)
    dlog32 = dlogdet.float().contiguous()
    if bsz > 0 and hw > 0:
        _coupling_bwd_kernel[(n_pb, n_cb, bsz)](
            gout, dlog32, x, a, g.contiguous(), b.contiguous(), perm.contiguous(),
            gin, da, pg, pb,
            c, c1, c2, h, w,
            *gout.stride(), *x.stride(), *a.stride(),
            float(clamp), float(a_scale),
            REVERSE=bool(reverse), O_FLAT=_flat(gout), X_FLAT=_flat(x), A_FLAT=_flat(a),
            BLOCK_C=block_c, BLOCK_P=block_p, num_warps=warps,
        )
    g32 = g.float()
    sum_u = pg.sum(dim=(0, 1))  # fixed-order reductions of the partial buffers
    sum_d = pb.sum(dim=(0, 1))
    dlog_g = hw * dlog32.sum() / g32  # d(H*W*sum log g)/dg, times sum_b dlogdet
    if reverse:
        dg = -(sum_u / g32) - dlog_g
        db = -(sum_d / g32)
    else:
        dg = sum_u + dlog_g
        db = sum_d
    return gin, da, dg.to(g.dtype), db.to(b.dtype)


# ------------------------------------------------------------------- torch.library ops


@torch.library.custom_op("dadf_fast_triton::affine_coupling", mutates_args=())
def _coupling_op(x: torch.Tensor, a: torch.Tensor, g: torch.Tensor, b: torch.Tensor, perm: torch.Tensor,
                 clamp: float, a_scale: float, reverse: bool) -> tuple[torch.Tensor, torch.Tensor]:
    return _forward(x, a, g, b, perm, clamp, a_scale, reverse)


@_coupling_op.register_fake
def _coupling_fake(x, a, g, b, perm, clamp, a_scale, reverse):
    return x.new_empty(x.shape), x.new_empty(x.shape[:1])


@torch.library.custom_op("dadf_fast_triton::affine_coupling_backward", mutates_args=())
def _coupling_bwd_op(gout: torch.Tensor, dlogdet: torch.Tensor, x: torch.Tensor, a: torch.Tensor, g: torch.Tensor,
                     b: torch.Tensor, perm: torch.Tensor, clamp: float, a_scale: float,
                     reverse: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return _backward(gout, dlogdet, x, a, g, b, perm, clamp, a_scale, reverse)


@_coupling_bwd_op.register_fake
def _coupling_bwd_fake(gout, dlogdet, x, a, g, b, perm, clamp, a_scale, reverse):
    return x.new_empty(x.shape), a.new_empty(a.shape), g.new_empty(g.shape), b.new_empty(b.shape)


def _setup_context(ctx, inputs, output):
    x, a, g, b, perm, clamp, a_scale, reverse = inputs
    ctx.save_for_backward(x, a, g, b, perm)
    ctx.args = (float(clamp), float(a_scale), bool(reverse))


def _coupling_autograd(ctx, gy, glogdet):
    x, a, g, b, perm = ctx.saved_tensors
    clamp, a_scale, reverse = ctx.args
    if gy is None:
        gy = torch.zeros_like(x)
    if glogdet is None:
        glogdet = x.new_zeros(x.shape[:1])
    dx, da, dg, db = _coupling_bwd_op(gy, glogdet, x, a, g, b, perm, clamp, a_scale, reverse)
    return dx, da, dg, db, None, None, None, None


_coupling_op.register_autograd(_coupling_autograd, setup_context=_setup_context)


def affine_coupling_triton(x, a, g, b, perm, clamp: float = 2.0, a_scale: float = 0.1, reverse: bool = False):
    """Fused coupling + global affine + hard permutation (and log-determinant) in Triton.

    Same function as :func:`dadf_fast.reference.affine_coupling`; returns
    ``(y [B, C, H, W] contiguous, logdet [B])`` in ``x``'s dtype.  Differentiable in ``x``,
    ``a``, ``g`` and ``b`` (both directions).  Inputs may have any strides.

    The inputs are those :func:`dadf_fast.ops.affine_coupling` has validated (call that for
    checked arguments).  ``perm`` must be an int64 permutation of ``0..C-1``; an
    out-of-range entry is never dereferenced: its output row (forward) or the channel it
    should fill (reverse) is NaN, and so are the log-det and dg/db.  Non-finite values in
    ``x`` stay in the channel they are permuted to."""
    return torch.ops.dadf_fast_triton.affine_coupling(x, a, g, b, perm, float(clamp), float(a_scale), bool(reverse))
