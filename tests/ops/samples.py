"""Sample inputs for the op tests: one ``sample_inputs(op, device, dtype, backend)`` per op.

Every test file of ``tests/ops`` parametrises over :func:`backend_params` (each backend that
implements the op x device x the dtypes that backend runs there; ``cuda`` marked ``gpu``) and
over the sample names :func:`sample_names` gives for that backend and device.  Sizes are odd
and not powers of two; the edge cases are size-1 dims, ragged tiles, non-contiguous views and
stride-0 gradients.  The Triton interpreter (Triton on CPU tensors) gets only the tiny cases:
it runs every tile step in numpy.

:func:`check_against_reference` runs a sample through ``dadf_fast.ops.<op>`` and through
``dadf_fast.reference.<op>`` (in float32 for 16-bit dtypes, on the same rounded values) and
compares the outputs and the gradient of every differentiable input.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import pytest
import torch

import dadf_fast
from dadf_fast import ops, reference

F16, BF16, F32, F64 = torch.float16, torch.bfloat16, torch.float32, torch.float64
OP_NAMES = ("dual_attention", "affine_coupling", "flow_nll", "multiscale_score")

# dtypes each backend runs on CPU tensors in these tests: float32 everywhere, float64 on the
# torch and cpp backends, float16 on the Triton kernels (float32 inside, rounded once)
CPU_DTYPES = {
    ("dual_attention", "torch"): (F32, F64),
    ("dual_attention", "triton"): (F32, F16),
    ("affine_coupling", "torch"): (F32, F64),
    ("affine_coupling", "triton"): (F32, F16),
    ("affine_coupling", "cpp"): (F32, F64),
    ("flow_nll", "torch"): (F32, F64),
    ("flow_nll", "cpp"): (F32, F64),
    ("multiscale_score", "torch"): (F32, F64),
    ("multiscale_score", "cpp"): (F32, F64),
}
# the contract on GPU: float32, float16 and bfloat16 on every backend; the torch attention
# (the reference, with 16-bit intermediates) is held to the 16-bit kernel's bound only in
# test_dual_attention.py's eager comparisons
CUDA_DTYPES = (F32, F16, BF16)
CUDA_ONLY_F32 = {("dual_attention", "torch")}

# outputs compared against the reference; 16-bit outputs against the float32 reference on the
# same rounded inputs, so the error is the kernel's final rounding (2^-11 for float16, 2^-8
# for bfloat16) plus float32 noise
TOLERANCE = {
    F64: dict(atol=1e-10, rtol=1e-10),
    F32: dict(atol=1e-5, rtol=1e-5),
    F16: dict(atol=1e-4, rtol=1e-3),
    BF16: dict(atol=1e-3, rtol=1e-2),
}
# per op, where it differs: attention sums blockwise (online softmax) in another order than
# the reference, and its 16-bit kernels round P and dS to 16 bits before the tensor-core dots;
# the coupling's gradients sum over pixels (dg, db) in another order
OP_TOLERANCE = {
    ("dual_attention", F32): dict(atol=2e-5, rtol=1e-4),
    ("dual_attention", F16): dict(atol=1.5e-3, rtol=1.5e-3),
    ("dual_attention", BF16): dict(atol=2e-2, rtol=2e-2),
    ("multiscale_score", F32): dict(atol=1e-6, rtol=1e-6),
}
GRAD_TOLERANCE = {
    ("affine_coupling", F32): dict(atol=1e-4, rtol=1e-5),
    ("multiscale_score", F32): dict(atol=1e-6, rtol=1e-5),
}


def tolerance(op: str, dtype: torch.dtype, grad: bool = False) -> dict:
    if grad and (op, dtype) in GRAD_TOLERANCE:
        return GRAD_TOLERANCE[(op, dtype)]
    return OP_TOLERANCE.get((op, dtype), TOLERANCE[dtype])


def short(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def implementing(op: str) -> list[str]:
    """The backends that implement ``op`` (``dadf_fast.backends()``)."""
    report = dadf_fast.backends()
    return [b for b in report if op in report[b]["ops"]]


def is_interpreter(backend: str, device: str) -> bool:
    return backend == "triton" and device == "cpu"


def backend_params(op: str, backends=None, devices=("cpu", "cuda"), dtypes=None) -> list:
    """``pytest.param(backend, device, dtype)`` for every backend implementing ``op`` (or the
    given subset), device and dtype that backend runs there (or the given subset)."""
    out = []
    for backend in implementing(op):
        if backends is not None and backend not in backends:
            continue
        for device in devices:
            if device == "cpu":
                run = CPU_DTYPES[(op, backend)]
            else:
                run = (F32,) if (op, backend) in CUDA_ONLY_F32 else CUDA_DTYPES
            for dtype in run:
                if dtypes is not None and dtype not in dtypes:
                    continue
                marks = [pytest.mark.gpu] if device == "cuda" else []
                out.append(pytest.param(backend, device, dtype, marks=marks, id=f"{backend}-{device}-{short(dtype)}"))
    return out


def sample_params(op: str, **filters) -> list:
    """``backend_params`` times the sample names of each (backend, device)."""
    out = []
    for p in backend_params(op, **filters):
        backend, device, dtype = p.values
        for name in sample_names(op, backend, device, dtype):
            out.append(pytest.param(backend, device, dtype, name, marks=p.marks, id=f"{p.id}-{name}"))
    return out


@dataclass
class Sample:
    """One call of an op.  ``tensors`` are the differentiable inputs (possibly strided views);
    ``build(tensors)`` gives the ``(args, kwargs)`` of both the public op and the reference;
    ``upstream`` holds one gradient per output (None: that output is not differentiated)."""

    name: str
    tensors: list
    build: Callable
    upstream: list
    info: dict = field(default_factory=dict)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(gen, *shape, std=1.0):
    return std * torch.randn(*shape, generator=gen)


# ---------------------------------------------------------------------------- affine_coupling

# (name, (B, C, H, W), a_std, layout, clamp, a_scale, tiny): a_std 8 saturates tanh for some
# entries; "tiny" cases also run in the Triton interpreter
COUPLING_CASES = [
    ("c2", (2, 2, 5, 3), 8.0, "contiguous", 2.0, 0.1, True),
    ("c3", (2, 3, 5, 3), 8.0, "contiguous", 2.0, 0.1, True),
    ("c7", (2, 7, 5, 3), 8.0, "contiguous", 2.0, 0.1, True),
    ("c10", (2, 10, 5, 3), 8.0, "contiguous", 2.0, 0.1, True),  # several channel blocks per sample
    ("strided", (2, 9, 5, 3), 8.0, "strided", 2.0, 0.1, True),
    ("options", (2, 11, 7, 5), 3.0, "contiguous", 1.5, 0.3, False),
    ("1x2x1x1", (1, 2, 1, 1), 3.0, "contiguous", 2.0, 0.1, False),
    ("2x3x5x4", (2, 3, 5, 4), 3.0, "contiguous", 2.0, 0.1, False),
    ("3x9x11x13", (3, 9, 11, 13), 3.0, "contiguous", 2.0, 0.1, False),
    ("2x13x9x7", (2, 13, 9, 7), 3.0, "contiguous", 2.0, 0.1, False),
    ("1x72x16x16", (1, 72, 16, 16), 3.0, "contiguous", 2.0, 0.1, False),
    ("2x33x6x7", (2, 33, 6, 7), 3.0, "contiguous", 2.0, 0.1, False),
    # 1-D fibres x [N, C] (CFLOW's layout); "tiny" ones reach the Triton interpreter, where
    # the declared 4-D-only limit must refuse them (test_affine_coupling.py)
    ("fib1x2", (1, 2), 8.0, "contiguous", 2.0, 0.1, True),
    ("fib7x3", (7, 3), 8.0, "contiguous", 2.0, 0.1, True),
    ("fib-strided", (5, 9), 8.0, "strided", 2.0, 0.1, True),
    ("fib13x10", (13, 10), 3.0, "contiguous", 1.5, 0.3, False),
    ("fib33x65", (33, 65), 3.0, "contiguous", 2.0, 0.1, False),
    ("fib1x255", (1, 255), 3.0, "contiguous", 2.0, 0.1, False),
    # several grad_g/grad_b partial rows (blocks of fibres) and T-to-double flushes in the cpp kernel
    ("fib301x41", (301, 41), 3.0, "contiguous", 1.9, 0.1, False),
    ("fib-strided67x21", (67, 21), 3.0, "strided", 1.9, 0.1, False),
]


def coupling_inputs(shape, dtype=F32, device="cpu", a_std=3.0, seed=0):
    """x, raw subnet output a, g > 0, b, perm (contiguous); ``shape`` is ``(B, C, H, W)``
    or ``(N, C)`` (fibres)."""
    gen = _gen(seed)
    bsz, c, *spatial = shape
    x = _randn(gen, bsz, c, *spatial)
    a = _randn(gen, bsz, 2 * (c // 2), *spatial, std=a_std)
    g = 0.5 + torch.rand(c, generator=gen)
    b = _randn(gen, c)
    perm = torch.randperm(c, generator=gen)
    return (*[t.to(device=device, dtype=dtype) for t in (x, a, g, b)], perm.to(device))


def _strided_coupling(x, a, g, b, perm):
    """The same values as views: x a channel slice of a wider channels-last tensor (fibres:
    of a wider [N, C + 3], so rows have gaps), a with transposed storage, g, b and perm
    strided."""
    if x.dim() == 2:
        n, c = x.shape
        x_nc = torch.zeros(n, c + 3, dtype=x.dtype, device=x.device)[:, 2:2 + c]
        x_nc.copy_(x)
        a_nc = a.t().contiguous().t()
    else:
        bsz, c, h, w = x.shape
        x_nc = torch.zeros(bsz, c + 3, h, w, dtype=x.dtype, device=x.device).contiguous(
            memory_format=torch.channels_last)[:, 2:2 + c]
        x_nc.copy_(x)
        a_nc = a.transpose(2, 3).contiguous().transpose(2, 3)
    g_nc = torch.stack([g, g + 1], 1)[:, 0]
    b_nc = torch.stack([b - 1, b], 1)[:, 1]
    perm_nc = torch.stack([perm, perm], 1)[:, 1]
    assert not any(t.is_contiguous() for t in (x_nc, a_nc, g_nc, b_nc, perm_nc))
    return x_nc, a_nc, g_nc, b_nc, perm_nc


def affine_coupling_samples(device, dtype, backend=None, names=None):
    for name, shape, a_std, layout, clamp, a_scale, tiny in COUPLING_CASES:
        if is_interpreter(backend, device) and not tiny:
            continue
        for reverse in (False, True):
            full = f"{name}-{'inv' if reverse else 'fwd'}"
            if names is not None and full not in names:
                continue
            x, a, g, b, perm = coupling_inputs(shape, dtype, device, a_std, seed=shape[1])
            gen = _gen(1)
            dy = _randn(gen, *shape).to(device=device, dtype=dtype)
            dl = _randn(gen, shape[0]).to(device=device, dtype=dtype)
            if layout == "strided":
                x, a, g, b, perm = _strided_coupling(x, a, g, b, perm)
                dy = (dy[:, :, :1] if len(shape) == 4 else dy[:, :1]).expand(shape)  # a stride-0 gradient

            def build(ts, perm=perm, clamp=clamp, a_scale=a_scale, reverse=reverse):
                return (*ts, perm), dict(clamp=clamp, a_scale=a_scale, reverse=reverse)

            yield Sample(full, [x, a, g, b], build, [dy, dl],
                         dict(perm=perm, clamp=clamp, a_scale=a_scale, reverse=reverse))


# ----------------------------------------------------------------------------- dual_attention

# (name, (B, H, N, D), layout, scale).  D = 16: one exact chunk; 20: one chunk padded to 32
# (column masks); 48: two chunks 32 + 16.  N = 1: one key; 17: a ragged block; 64: 2 x 2 blocks.
ATTENTION_CASES = [(f"N{n}-D{d}", (1, 2, n, d), "contiguous", None) for n in (1, 17, 64) for d in (16, 20, 48)] + [
    ("qkv", (2, 2, 17, 20), "qkv", None),
    ("strided", (2, 2, 17, 20), "strided", None),
    ("scale-default", (1, 1, 17, 20), "contiguous", None),
    ("scale0.3", (1, 1, 17, 20), "contiguous", 0.3),
    ("scale1.7", (1, 1, 17, 20), "contiguous", 1.7),
]
ATTENTION_NAMES = ("qx", "kx", "vx", "qm", "vm")


def attention_inputs(shape, dtype=F32, layout="contiguous", device="cpu", seed=0):
    """Five ``[B, H, N, D]`` tensors in the requested memory layout.

    * ``contiguous``: plain ``[B, H, N, D]``.
    * ``qkv``: strided views of ``[B, N, 3, H, D]`` projections (what a fused qkv Linear
      produces), one projection for the input stream and one for the memory stream.
    * ``strided``: the last dimension is not unit-stride and rows have gaps (a transposed,
      sliced buffer).
    """
    gen = _gen(seed)
    B, H, N, D = shape

    def r(*s):
        return torch.randn(*s, generator=gen).to(device=device, dtype=dtype)

    if layout == "contiguous":
        return [r(B, H, N, D) for _ in range(5)]
    if layout == "qkv":
        px, pm = r(B, N, 3, H, D), r(B, N, 3, H, D)
        qx, kx, vx = (px[:, :, i].transpose(1, 2) for i in range(3))
        return [qx, kx, vx, pm[:, :, 0].transpose(1, 2), pm[:, :, 2].transpose(1, 2)]
    if layout == "strided":
        return [r(B, H, D + 3, 2 * N)[:, :, 1:D + 1, ::2].transpose(-1, -2) for _ in range(5)]
    raise ValueError(f"layout must be contiguous, qkv or strided, got {layout!r}")


def dual_attention_samples(device, dtype, backend=None, names=None):
    for name, shape, layout, scale in ATTENTION_CASES:
        if names is not None and name not in names:
            continue
        if scale is not None and dtype in (F16, BF16):
            # an explicit scale is checked in float32/float64: a scale above 1 sharpens the
            # softmax and scales up the 16-bit rounding of P and dS (random scales in 16 bits:
            # the fuzz tests, whose tolerance follows the example's conditioning)
            continue
        ts = attention_inputs(shape, dtype, layout, device, seed=sum(shape))
        if layout != "contiguous":
            assert not any(t.is_contiguous() for t in ts)
        gen = _gen(1)
        up = [_randn(gen, *shape).to(device=device, dtype=dtype) for _ in range(2)]

        def build(ts, scale=scale):
            return tuple(ts), dict(scale=scale)

        yield Sample(name, ts, build, up, dict(scale=scale))


# ----------------------------------------------------------------------------------- flow_nll

NLL_CASES = [("1x1", (1, 1)), ("2x3", (2, 3)), ("3x5x7x9", (3, 5, 7, 9)), ("2x72x33x17", (2, 72, 33, 17)),
             ("1x40000", (1, 40000)), ("strided", (4, 6, 5, 9))]


def flow_nll_samples(device, dtype, backend=None, names=None):
    for name, shape in NLL_CASES:
        if names is not None and name not in names:
            continue
        gen = _gen(len(shape))
        z = _randn(gen, *shape).to(device=device, dtype=dtype)
        ld = _randn(gen, shape[0], std=10.0).to(device=device, dtype=dtype)
        up = _randn(gen, shape[0]).to(device=device, dtype=dtype)
        if name == "strided":
            z = z.transpose(1, 3)
            ld = torch.stack([ld, ld], 1)[:, 0]
            assert not z.is_contiguous() and not ld.is_contiguous()
        yield Sample(name, [z, ld], lambda ts: (tuple(ts), {}), [up])


# --------------------------------------------------------------------------- multiscale_score

# (per-scale (C, h, w), out size)
SCORE_CASES = [
    ([(5, 7, 9), (3, 4, 5), (4, 13, 11)], (13, 11)),
    ([(5, 7, 9), (3, 4, 5), (4, 13, 11)], (30, 17)),  # not a multiple of any feature size
    ([(6, 16, 16), (10, 8, 8), (28, 4, 4)], (64, 64)),  # the usual strides-4/8/16 layout
    ([(3, 7, 9)], (7, 9)),  # same size: a copy
    ([(3, 7, 9), (2, 5, 3)], (3, 2)),  # downsampling
    ([(1, 1, 1), (2, 1, 3)], (5, 4)),  # single-pixel maps
]


def score_inputs(scales, batch, dtype=F32, device="cpu", seed=0):
    gen = _gen(seed)
    return [_randn(gen, batch, c, h, w).to(device=device, dtype=dtype) for c, h, w in scales]


def multiscale_score_samples(device, dtype, backend=None, names=None):
    """The score's gradient is taken for ``reduce="mean"`` only: the max sends its gradient
    to the arg-max pixel, which rounding may move between (near-)ties; the max's gradient
    has its own test."""
    cases = [(f"case{i}-{reduce}-b{batch}", scales, size, reduce, batch)
             for i, (scales, size) in enumerate(SCORE_CASES) for reduce in ("max", "mean") for batch in (1, 3)]
    cases.append(("strided-int-size", [(9, 5, 8), (6, 4, 4)], 17, "max", 2))
    for name, scales, size, reduce, batch in cases:
        if names is not None and name not in names:
            continue
        zs = score_inputs(scales, batch, dtype, device, seed=len(name))
        if name == "strided-int-size":
            zs = [zs[0].transpose(2, 3), torch.stack([zs[1], zs[1]], -1)[..., 0]]
            assert not any(z.is_contiguous() for z in zs)
        hh, ww = (size, size) if isinstance(size, int) else size
        gen = _gen(2)
        up_map = _randn(gen, batch, 1, hh, ww).to(device=device, dtype=dtype)
        up_score = _randn(gen, batch).to(device=device, dtype=dtype) if reduce == "mean" else None

        def build(ts, size=size, reduce=reduce):
            return (list(ts), size), dict(reduce=reduce)

        yield Sample(name, zs, build, [up_map, up_score], dict(size=(hh, ww), batch=batch))


SAMPLERS = {
    "dual_attention": dual_attention_samples,
    "affine_coupling": affine_coupling_samples,
    "flow_nll": flow_nll_samples,
    "multiscale_score": multiscale_score_samples,
}


def sample_inputs(op: str, device, dtype, backend=None, names=None):
    """The samples of ``op`` on ``device`` in ``dtype`` (only the tiny ones when ``backend``
    runs in the Triton interpreter), optionally only those called ``names``."""
    return SAMPLERS[op](device, dtype, backend, names)


def sample_names(op: str, backend=None, device="cpu", dtype=F32) -> list[str]:
    return [s.name for s in sample_inputs(op, "cpu", dtype if dtype != BF16 else F32,
                                          backend if device == "cpu" else None)]


def sample(op: str, name: str, device="cpu", dtype=F32, backend=None) -> Sample:
    (s,) = sample_inputs(op, device, dtype, backend, names=(name,))
    return s


# ------------------------------------------------------------------------------- the checks


def _outputs(out):
    return list(out) if isinstance(out, (tuple, list)) else [out]


def run_with_grads(fn, s: Sample, dtype=None, **kw):
    """Outputs of ``fn`` on the sample (inputs cast to ``dtype`` when given, contiguous copies
    then; the views themselves otherwise) and the gradients of ``sum(out * upstream)``."""
    if dtype is None:
        leaves = [t.detach().requires_grad_() for t in s.tensors]
    else:
        leaves = [t.detach().to(dtype).requires_grad_() for t in s.tensors]
    args, kwargs = s.build(leaves)
    out = _outputs(fn(*args, **kwargs, **kw))
    ups = [None if u is None else u.to(out[0].dtype) for u in s.upstream]
    loss = sum((o * u).sum() for o, u in zip(out, ups) if u is not None)
    return [o.detach() for o in out], list(torch.autograd.grad(loss, leaves))


def check_against_reference(op: str, backend: str, dtype, s: Sample, names=None):
    """The op on ``backend`` against the reference (float32 for 16-bit dtypes): every output
    and the gradient of every differentiable input, with dtype, shape and tolerance."""
    got_out, got_grads = run_with_grads(getattr(ops, op), s, backend=backend)
    ref_dtype = F32 if dtype in (F16, BF16) else dtype
    want_out, want_grads = run_with_grads(getattr(reference, op), s, dtype=ref_dtype)
    names = names or ([f"out{i}" for i in range(len(want_out))] + [f"d{i}" for i in range(len(want_grads))])
    pairs = [(g, w, False) for g, w in zip(got_out, want_out)] + [(g, w, True) for g, w in zip(got_grads, want_grads)]
    for name, (got, want, is_grad) in zip(names, pairs):
        assert got.dtype == dtype, f"{name}: dtype {got.dtype}, expected {dtype}"
        assert got.shape == want.shape, f"{name}: shape {tuple(got.shape)}, expected {tuple(want.shape)}"
        assert bool(torch.isfinite(got).all()), f"{name}: non-finite values"
        torch.testing.assert_close(got.to(ref_dtype), want, **tolerance(op, dtype, is_grad),
                                   msg=lambda m, name=name: f"{name}: {m}")
    return got_out, got_grads
