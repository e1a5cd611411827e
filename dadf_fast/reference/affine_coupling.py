"""Reference affine coupling step with FrEIA 0.2 ``AllInOneBlock`` semantics.

One step, given the subnet output ``a`` for the first half:

    x1, x2 = x[:, :C - C//2], x[:, C - C//2:]
    a      = a_scale * a
    s      = clamp * tanh(a[:, :C//2]);  t = a[:, C//2:]
    u      = cat(x1, x2 * exp(s) + t)
    y      = (u * g + b)[:, perm]            (output channel i takes channel perm[i])
    logdet = sum_{c,h,w} s + H*W * sum_c log g

The same step applies to 1-D fibres ``x [N, C]`` (CFLOW's layout, a ``[N, C, 1, 1]`` input
without the two unit dimensions): there the log-det of row n is ``sum_c s + sum_c log g``.

FrEIA applies the permutation as a dense 1x1 convolution with the 0/1 matrix
:func:`permutation_matrix`.  On finite input that convolution *is* the gather (each output
is one input times 1 plus zeros), so the gather here gives FrEIA's values exactly; on
non-finite input the convolution's ``0 * inf = NaN`` spreads one bad value over all channels
of its pixel, which is an artefact of the implementation, not of the maths.  The contract of
every backend is the gather: a non-finite value stays in the channel it is permuted to.
"""
import torch


def permutation_matrix(perm, dtype=torch.float32):
    """``[C, C]`` 0/1 matrix ``W`` with ``W[i, perm[i]] = 1`` (output channel i takes perm[i]);
    FrEIA's ``w_perm`` as a matrix."""
    c = perm.numel()
    w = torch.zeros(c, c, dtype=dtype, device=perm.device)
    w[torch.arange(c, device=perm.device), perm] = 1
    return w


def affine_coupling(x, a, g, b, perm, clamp=2.0, a_scale=0.1, reverse=False):
    """One affine coupling step with global affine and hard permutation.

    Args:
        x: ``[B, C, H, W]`` or ``[N, C]`` input (``reverse=True``: the step's output y).
        a: ``[B, 2*(C//2), H, W]`` (``[N, 2*(C//2)]`` for 2-D x) raw subnet output (of the
            first ``C - C//2`` channels of the step's *input*; in reverse the caller recovers
            them first).
        g, b: ``[C]`` activated global scale (> 0) and offset.
        perm: ``[C]`` int64 permutation, output channel i takes channel ``perm[i]``.

    float16/bfloat16 inputs are computed in float32 and rounded once to the input dtype (as
    the Triton and CUDA kernels do).  Non-finite values in ``x`` stay local: see the module
    docstring.

    Returns:
        ``(y, logdet)``: ``y`` of x's shape; ``logdet [B]`` (``[N]``) is ``log|det dy/dx|``
        per sample (reverse: the exact inverse and minus the forward log-determinant).
    """
    dtype = x.dtype
    if dtype in (torch.float16, torch.bfloat16):
        x, a, g, b = x.float(), a.float(), g.float(), b.float()
    c = x.shape[1]
    c2 = c // 2
    c1 = c - c2
    # broadcast g, b over the trailing (pixel) dims: none for [N, C], (H, W) for 4-D
    spatial = x.shape[2:]
    n_pixels = spatial.numel()
    pixel_dims = tuple(range(1, x.dim()))
    a = a * a_scale
    s = clamp * torch.tanh(a[:, :c2])
    t = a[:, c2:]
    g4 = g.view(1, c, *(1 for _ in spatial))
    b4 = b.view(1, c, *(1 for _ in spatial))
    log_g = n_pixels * torch.log(g).sum()
    if not reverse:
        x1, x2 = x[:, :c1], x[:, c1:]
        u = torch.cat((x1, x2 * torch.exp(s) + t), dim=1)
        y = (u * g4 + b4).index_select(1, perm)
        logdet = s.sum(dim=pixel_dims) + log_g
    else:
        # the inverse permutation: channel perm[i] of the step's pre-permutation value is x[:, i]
        u = (x.index_select(1, torch.argsort(perm)) - b4) / g4
        u1, u2 = u[:, :c1], u[:, c1:]
        y = torch.cat((u1, (u2 - t) * torch.exp(-s)), dim=1)
        logdet = -s.sum(dim=pixel_dims) - log_g
    return y.to(dtype), logdet.to(dtype)
