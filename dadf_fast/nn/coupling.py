"""The maths shared by the FrEIA-style coupling modules (:class:`dadf_fast.nn.AllInOneBlock`
and DADF's lighter :class:`dadf_fast.nn.AllInOneCoupling`): the global affine activations, the
call of :func:`dadf_fast.ops.affine_coupling` (with the subnet's input recovered in reverse),
and the plain-torch step for what the fused op does not compute (dense or learned channel
mixing, GIN).

Tensors are ``[N, C, *S]``: channels on dim 1, any number (0 to 3) of spatial dims ``S``, as
FrEIA 0.2's ``AllInOneBlock`` takes them.  The channel split is ``C - C//2`` / ``C//2``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from dadf_fast import ops

GLOBAL_AFFINE_TYPES = ("SOFTPLUS", "SIGMOID", "EXP")

# FrEIA scales the raw subnet output by this before the clamp (part of the block's function)
A_SCALE = 0.1


def global_affine_raw_init(kind: str, init: float) -> float:
    """The raw (pre-activation) global scale whose activation is ``init``; a ValueError names
    ``global_affine_init`` when no finite raw value maps to it."""
    init = float(init)
    ok = {"SOFTPLUS": 0.0 < init < 140.0, "SIGMOID": 0.0 < init < 10.0, "EXP": 0.0 < init < math.inf}[kind]
    if not ok:
        ranges = {"SOFTPLUS": "(0, 140)", "SIGMOID": "(0, 10)", "EXP": "(0, inf)"}
        raise ValueError(f"global_affine_init must lie in {ranges[kind]} for global_affine_type={kind!r} "
                         f"(the activated global scale), got {init}")
    if kind == "SOFTPLUS":  # 0.1 * softplus_{beta=0.5}(raw) = init
        return 2.0 * math.log(math.expm1(5.0 * init))
    if kind == "SIGMOID":  # 10 * sigmoid(raw - 2) = init
        return 2.0 - math.log(10.0 / init - 1.0)
    return math.log(init)


def global_affine_activation(raw: torch.Tensor, kind: str) -> torch.Tensor:
    """FrEIA 0.2's global scale activation ``kind`` of the raw parameter (any shape)."""
    if kind == "SOFTPLUS":
        return 0.1 * F.softplus(raw, beta=0.5)
    if kind == "SIGMOID":
        return 10 * torch.sigmoid(raw - 2.0)
    if kind == "EXP":
        return torch.exp(raw)
    raise ValueError(f"global_affine_type must be one of {GLOBAL_AFFINE_TYPES}, got {kind!r}")


def random_rotation(channels: int) -> torch.Tensor:
    """A random ``[C, C]`` rotation from SO(C) (float32), FrEIA's soft permutation; drawn with
    scipy from numpy's global RNG, as FrEIA does."""
    from scipy.stats import special_ortho_group

    return torch.tensor(special_ortho_group.rvs(channels), dtype=torch.float32)


def permutation_matrix(perm: torch.Tensor) -> torch.Tensor:
    """``[C, C]`` float32 0/1 matrix with ``W[i, perm[i]] = 1``: output channel i takes input
    channel ``perm[i]`` (FrEIA's ``w_perm``)."""
    c = perm.numel()
    w = torch.zeros(c, c)
    w[torch.arange(c), perm.cpu()] = 1.0
    return w


def hard_permutation_index(w: torch.Tensor) -> torch.Tensor | None:
    """The index vector ``perm`` (CPU int64) of a ``[C, C, 1...]`` mixing matrix when it is
    exactly a 0/1 permutation matrix, None otherwise (a soft or learned mixing).  Called when
    the matrix is set or loaded, never per forward call."""
    c = w.shape[0]
    m = w.detach().reshape(c, c).cpu()
    idx = m.argmax(dim=1)
    if not torch.equal(torch.sort(idx).values, torch.arange(c)):
        return None
    if not torch.equal(permutation_matrix(idx).to(m.dtype), m):
        return None
    return idx


def mix_channels(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Channel mixing ``y[:, i] = sum_j W[i, j] x[:, j]`` of ``x [N, C, *S]``.

    ``w`` is either an int64 index vector ``perm`` (a hard permutation: a gather, which gives
    FrEIA's values exactly on finite input, without its ``C^2`` products per position) or a
    ``[C, C, 1...]`` float matrix, applied as FrEIA does (a linear map or 1x1 convolution
    selected by the number of spatial dims)."""
    if w.dtype == torch.int64:
        return x.index_select(1, w)
    c = w.shape[0]
    m = w.reshape(c, c, *([1] * (x.dim() - 2))).to(x.dtype)
    return (F.linear, F.conv1d, F.conv2d, F.conv3d)[x.dim() - 2](x, m)


def _op_layout(t: torch.Tensor) -> torch.Tensor:
    """``[N, C, *S]`` as a layout ``ops.affine_coupling`` takes (views for contiguous input):
    ``[N, C]`` as is (the op's row layout), ``[N, C, L]`` as ``[N, C, L, 1]``, ``[N, C, D, H, W]``
    as ``[N, C, D, H*W]``.  The op's log-det sums over every non-batch dim either way."""
    if t.dim() == 3:
        return t.unsqueeze(-1)
    if t.dim() == 5:
        return t.flatten(3)
    return t


def fused_coupling(x, cond, subnet, g, b, perm, perm_inv, clamp, rev, backend, compute_logdet=True):
    """One FrEIA coupling step (coupling, global affine ``u * g + b``, hard permutation) by
    :func:`dadf_fast.ops.affine_coupling`.

    Args:
        x: ``[N, C, *S]`` (0 to 3 spatial dims).  cond: tuple of condition tensors
            ``[N, C_k, *S]`` concatenated to the subnet's input (may be empty).
        subnet: ``f([N, C - C//2 + sum C_k, *S]) -> [N, 2*(C//2), *S]``.
        g, b: ``[C]`` activated global scale and offset.  perm, perm_inv: int64 ``[C]``.
        rev: the inverse step (``x`` is then the step's output).
    The op runs with ``validate_args=False``: the calling module validated ``perm`` when it was
    set or loaded, ``clamp`` at construction, and ``g`` is an activation's output (> 0).
    Returns:
        ``(y [N, C, *S], logdet [N])`` (``logdet`` None with ``compute_logdet=False``).
    """
    c1 = x.shape[1] - x.shape[1] // 2
    if not rev:
        x1 = x[:, :c1]
    else:
        # the first half of the step's input, recovered from its output: y[:, i] = v[:, perm[i]]
        shape = (-1,) + (1,) * (x.dim() - 2)
        x1 = (x.index_select(1, perm_inv[:c1]) - b[:c1].view(shape)) / g[:c1].view(shape)
    a = subnet(torch.cat((x1, *cond), 1) if cond else x1)
    if a.dtype != x.dtype:
        # mixed precision: the subnet ran in bfloat16/float16 under autocast, the epilogue
        # (exp, log-det) runs on the float32 input
        a = a.to(x.dtype)
    if x.dim() in (2, 4):  # layouts the op takes as they are (CFLOW's thousands of small calls: no views)
        return ops.affine_coupling(x, a, g, b, perm, clamp, A_SCALE, rev, backend, compute_logdet, False)
    y, logdet = ops.affine_coupling(_op_layout(x), _op_layout(a), g, b, perm, clamp=clamp, a_scale=A_SCALE,
                                    reverse=rev, backend=backend, compute_logdet=compute_logdet,
                                    validate_args=False)
    return y.view(x.shape), logdet


def torch_coupling(x, cond, subnet, scale, offset, w, w_inv, clamp, rev, gin=False, pre_permute=False):
    """FrEIA 0.2's ``AllInOneBlock`` step in plain torch, for what the fused op cannot run.

    Args:
        x: ``[N, C, *S]``.  cond: tuple of condition tensors (may be empty).  subnet: as in
            :func:`fused_coupling`.
        scale, offset: activated global scale and offset broadcastable to ``x``
            (``[1, C, 1...]``); ``scale=None`` for GIN (unit scale, no log-det term).
        w, w_inv: the mixing after the step and its inverse: int64 index vectors or
            ``[C, C, 1...]`` matrices (:func:`mix_channels`).
        gin: GIN coupling (the log-scales centred per sample: volume preserving).
        pre_permute: FrEIA's ``reverse_permutation``: mix by ``w_inv`` before the coupling.
    Returns:
        ``(y [N, C, *S], logdet [N])``, in reverse the inverse and minus the log-det.
    """
    dims = tuple(range(1, x.dim()))
    c2 = x.shape[1] // 2
    if rev:
        x = mix_channels(x, w_inv) - offset
        if scale is not None:
            x = x / scale
    elif pre_permute:
        x = mix_channels(x, w_inv)
    x1, x2 = torch.split(x, [x.shape[1] - c2, c2], dim=1)
    a = subnet(torch.cat((x1, *cond), 1) if cond else x1) * A_SCALE
    s = clamp * torch.tanh(a[:, :c2])
    if gin:
        s = s - s.mean(dim=dims, keepdim=True)
    if not rev:
        x2 = x2 * torch.exp(s) + a[:, c2:]
        logdet = s.sum(dim=dims)
    else:
        x2 = (x2 - a[:, c2:]) * torch.exp(-s)
        logdet = -s.sum(dim=dims)
    out = torch.cat((x1, x2), 1)
    if not rev:
        out = mix_channels((out if scale is None else out * scale) + offset, w)
    elif pre_permute:
        out = mix_channels(out, w)
    if scale is not None:
        n_positions = out[0, :1].numel()
        logdet = logdet + (-n_positions if rev else n_positions) * torch.log(scale).sum()
    return out, logdet


__all__ = ["GLOBAL_AFFINE_TYPES", "A_SCALE", "global_affine_raw_init", "global_affine_activation", "random_rotation",
           "permutation_matrix", "hard_permutation_index", "mix_channels", "fused_coupling", "torch_coupling"]
