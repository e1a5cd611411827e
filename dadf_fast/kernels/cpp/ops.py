"""Python side of the compiled extension ``dadf_fast._C`` (the ``cpp`` backend).

Importing this module loads ``dadf_fast._C`` (compiled on first use and cached, see
:mod:`dadf_fast.kernels.cpp.build`; it registers the ``torch.ops.dadf_fast.*`` schemas and
their CPU/CUDA kernels), then registers from Python:

* fake (meta) kernels for every op, so ``torch.compile`` / FakeTensor tracing works;
* autograd formulas for ``affine_coupling_fwd`` and ``flow_nll_fwd`` (backward through the
  C++ ``*_bwd`` kernels) and for ``multiscale_score`` (backward from ATen ops: the adjoint
  of the bilinear upsampling and the elementwise chain rule).

It raises ImportError (with :func:`dadf_fast.backends`'s reason) when the extension is
disabled or fails to build; :mod:`dadf_fast.ops` turns that into ``BackendUnavailable``.

The functions below have the signatures the public ops hand to a backend implementation
(arguments already validated); the C++ kernels check them again with ``TORCH_CHECK``.
"""
from __future__ import annotations

import torch

from dadf_fast.kernels.cpp import load_extension

_C, _reason = load_extension()
if _C is None:
    raise ImportError(_reason)

_ops = torch.ops.dadf_fast
_coupling_fwd = _ops.affine_coupling_fwd.default

# ---------------------------------------------------------------------------------------
# Fake kernels: output metadata only (all real kernels return contiguous tensors).
# ---------------------------------------------------------------------------------------


@torch.library.register_fake("dadf_fast::affine_coupling_fwd")
def _affine_coupling_fwd_fake(x, a, g, b, perm, clamp, a_scale, reverse, compute_logdet):
    # 4-D images or 2-D fibres [N, C] (the CPU kernel; the CUDA kernel rejects 2-D at run time)
    torch._check(x.dim() in (2, 4), lambda: f"affine_coupling_fwd: x must be 4-D or 2-D, got {x.dim()}-D")
    y = x.new_empty(x.shape)
    logdet = x.new_empty((x.shape[0],) if compute_logdet else (0,))
    return y, logdet


@torch.library.register_fake("dadf_fast::affine_coupling_bwd")
def _affine_coupling_bwd_fake(grad_out, grad_logdet, x, a, g, b, perm, clamp, a_scale, reverse):
    return x.new_empty(x.shape), a.new_empty(a.shape), g.new_empty(g.shape), b.new_empty(b.shape)


@torch.library.register_fake("dadf_fast::flow_nll_fwd")
def _flow_nll_fwd_fake(z, logdet):
    torch._check(z.dim() >= 1, lambda: "flow_nll_fwd: z must have a batch dimension")
    return z.new_empty((z.shape[0],))


@torch.library.register_fake("dadf_fast::flow_nll_bwd")
def _flow_nll_bwd_fake(grad, z):
    return z.new_empty(z.shape), z.new_empty((z.shape[0],))


@torch.library.register_fake("dadf_fast::multiscale_score")
def _multiscale_score_fake(zs, H, W, reduce):
    torch._check(len(zs) > 0, lambda: "multiscale_score: zs is empty")
    z0 = zs[0]
    return z0.new_empty((z0.shape[0], 1, H, W)), z0.new_empty((z0.shape[0],))


@torch.library.register_fake("dadf_fast::nearest_index_bounded")
def _nearest_index_bounded_fake(queries, memory, mean, basis, memory_bound_t, memory_sqnorm):
    return queries.new_empty((queries.shape[0],), dtype=torch.long)


# The search with its memory index, as one op: the index is looked up in (or added to) the
# cache of kernels/cpp/knn_index.py on the real tensors, so the op stays opaque to
# torch.compile (no graph break on the cache lookup).
@torch.library.custom_op("dadf_fast::nearest_index", mutates_args=())
def _nearest_index(queries: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
    from dadf_fast.kernels.cpp.knn_index import memory_index

    return _ops.nearest_index_bounded(queries, memory, *memory_index(memory))


@_nearest_index.register_fake
def _nearest_index_fake(queries, memory):
    return queries.new_empty((queries.shape[0],), dtype=torch.long)


# ---------------------------------------------------------------------------------------
# Autograd
# ---------------------------------------------------------------------------------------


def _affine_coupling_setup(ctx, inputs, output):
    x, a, g, b, perm, clamp, a_scale, reverse, compute_logdet = inputs
    ctx.save_for_backward(x, a, g, b, perm)
    ctx.clamp = clamp
    ctx.a_scale = a_scale
    ctx.reverse = reverse
    ctx.compute_logdet = compute_logdet


def _affine_coupling_backward(ctx, grad_y, grad_logdet):
    x, a, g, b, perm = ctx.saved_tensors
    if grad_y is None:
        grad_y = torch.zeros_like(x)
    if not ctx.compute_logdet:
        grad_logdet = None
    gx, ga, gg, gb = _ops.affine_coupling_bwd(grad_y, grad_logdet, x, a, g, b, perm, ctx.clamp, ctx.a_scale, ctx.reverse)
    return gx, ga, gg, gb, None, None, None, None, None


torch.library.register_autograd(
    "dadf_fast::affine_coupling_fwd", _affine_coupling_backward, setup_context=_affine_coupling_setup
)


def _flow_nll_setup(ctx, inputs, output):
    z, logdet = inputs
    ctx.save_for_backward(z)


def _flow_nll_backward(ctx, grad):
    (z,) = ctx.saved_tensors
    gz, gl = _ops.flow_nll_bwd(grad, z)
    return gz, gl


torch.library.register_autograd("dadf_fast::flow_nll_fwd", _flow_nll_backward, setup_context=_flow_nll_setup)


def _multiscale_score_setup(ctx, inputs, output):
    zs, h, w, reduce = inputs
    amap, score = output
    ctx.n_scales = len(zs)
    ctx.size = (h, w)
    ctx.reduce = reduce
    ctx.save_for_backward(*zs, amap, score)


def _float32_map(zs, size, acc):
    """The anomaly map of ``zs`` in ``acc`` precision, as the forward computes it before rounding."""
    total = None
    for z in zs:
        p = torch.exp(-0.5 * z.to(acc).pow(2).mean(dim=1, keepdim=True))
        p = torch.nn.functional.interpolate(p, size=size, mode="bilinear", align_corners=False)
        total = p if total is None else total + p
    return 1.0 - total / len(zs)


def _multiscale_score_backward(ctx, grad_map, grad_score):
    """Gradients of ``map = 1 - mean_s up(p_s)``, ``p_s = exp(-0.5 mean_c z_s^2)`` and of the
    score (max: split evenly over the pixels equal to the max, as ``torch.amax``; mean:
    ``1/(H*W)`` each), computed in float32 (float64 for float64) like the forward."""
    *zs, amap, score = ctx.saved_tensors
    h, w = ctx.size
    acc = torch.float64 if amap.dtype == torch.float64 else torch.float32
    bsz = amap.shape[0]
    g = torch.zeros((bsz, 1, h, w), dtype=acc, device=amap.device) if grad_map is None else grad_map.to(acc)
    if grad_score is not None:
        gs = grad_score.to(acc).view(bsz, 1, 1, 1)
        if ctx.reduce == "max":
            if amap.dtype not in (torch.float32, torch.float64):
                # the forward takes the max of the float32 map and rounds afterwards; ties among
                # the rounded half-precision values are not ties of the max, so find it in float32
                amap = _float32_map(zs, (h, w), acc)
                score = amap.flatten(1).amax(dim=1)
            hit = (amap == score.view(bsz, 1, 1, 1)).to(acc)
            g = g + gs * hit / hit.sum(dim=(1, 2, 3), keepdim=True)
        else:
            g = g + gs / (h * w)
    g_up = g / -ctx.n_scales  # d map / d up(p_s) = -1/S
    grads = []
    for z in zs:
        zf = z.to(acc)
        c, hs, ws = z.shape[1:]
        p = torch.exp(-0.5 * zf.pow(2).mean(dim=1, keepdim=True))
        gp = torch.ops.aten.upsample_bilinear2d_backward(g_up, [h, w], [bsz, 1, hs, ws], False, None, None)
        grads.append((gp * p * zf * (-1.0 / c)).to(z.dtype))  # d p / d z = -p z / C
    return grads, None, None, None


torch.library.register_autograd(
    "dadf_fast::multiscale_score", _multiscale_score_backward, setup_context=_multiscale_score_setup
)


# ---------------------------------------------------------------------------------------
# Backend implementations (the signatures dadf_fast.ops hands over)
# ---------------------------------------------------------------------------------------


def affine_coupling(x, a, g, b, perm, clamp=2.0, a_scale=0.1, reverse=False, compute_logdet=True):
    """One coupling step through ``torch.ops.dadf_fast.affine_coupling_fwd``.

    Returns ``(y, logdet)``; with ``compute_logdet=False`` (inference: scoring needs only z)
    the log-det reduction is skipped and ``logdet`` is None.
    """
    args = (x, a, g, b, perm, float(clamp), float(a_scale), bool(reverse), bool(compute_logdet))
    if _needs_autograd(x, a, g, b):
        y, logdet = _coupling_fwd(*args)
    else:
        # no gradient can flow: skip the Python autograd kernel the op's formula is registered
        # as (it would only redispatch); on CFLOW's thousands of small calls that layer costs
        # a sizeable part of the op's time (as does resolving the overload packet on each call)
        with torch._C._AutoDispatchBelowAutograd():
            y, logdet = _coupling_fwd(*args)
    return y, (logdet if compute_logdet else None)


def _needs_autograd(*tensors) -> bool:
    if torch.compiler.is_compiling():
        return True  # traced graphs keep the plain op (its autograd formula handles no-grad)
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def flow_nll(z, logdet):
    """Per-sample ``0.5 * sum(z^2) - logdet`` through ``torch.ops.dadf_fast.flow_nll_fwd``."""
    return _ops.flow_nll_fwd(z, logdet)


def multiscale_score(zs, size, reduce="max"):
    """``(anomaly_map [B,1,H,W], score [B])`` through ``torch.ops.dadf_fast.multiscale_score``
    (differentiable in ``zs``)."""
    if isinstance(size, int):
        size = (size, size)
    h, w = (int(v) for v in size)
    return _ops.multiscale_score(list(zs), h, w, str(reduce))


def nearest_distances(queries, memory):
    """Distance ``[Q]`` of each row of ``queries [Q, D]`` to its nearest row of ``memory [M, D]``:
    the index from ``torch.ops.dadf_fast.nearest_index`` (exact, pruned search), the distance
    recomputed from it as the reference does (differentiable in both inputs)."""
    index = torch.ops.dadf_fast.nearest_index(queries.detach(), memory.detach())
    return torch.linalg.vector_norm(queries - memory[index], dim=1)


WITH_CUDA = bool(getattr(_C, "WITH_CUDA", False))
SOURCE_HASH = getattr(_C, "SOURCE_HASH", None)

__all__ = ["affine_coupling", "flow_nll", "multiscale_score", "nearest_distances", "WITH_CUDA", "SOURCE_HASH"]
