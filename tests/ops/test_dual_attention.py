"""``ops.dual_attention`` on every backend and device, and its reference.

Tolerances (tests/ops/samples.py): float32 kernels accumulate blockwise (online softmax) in
another order than the reference's one softmax, so results differ by a few float32 ulps per
reduction (``atol=2e-5, rtol=1e-4``).  float16 is compared with the float32 reference on the
same rounded inputs: the error is the kernel's own, the final rounding to float16 plus the
rounding of P and dS to float16 before the tensor-core dots, whose per-term errors average
out in float32 sums (``atol=rtol=1.5e-3``, about 2x headroom); the eager reference evaluated
in float16 is less accurate than that (test_float16_at_least_as_accurate_as_eager_float16).
Random inputs: tests/ops/test_fuzz_valid.py; kernel internals: tests/kernels/test_triton.py.
"""
import math

import pytest
import torch

from dadf_fast import BackendUnavailable, ops, reference
from samples import (ATTENTION_NAMES, F16, F32, attention_inputs, backend_params, check_against_reference,
                     sample, sample_params)

OP = "dual_attention"
NAMES = ("ox", "om") + tuple("d" + n for n in ATTENTION_NAMES)


@pytest.mark.parametrize("backend,device,dtype,name", sample_params(OP))
def test_matches_reference(backend, device, dtype, name):
    check_against_reference(OP, backend, dtype, sample(OP, name, device, dtype, backend), NAMES)


@pytest.mark.parametrize("backend,device,dtype", backend_params(OP, dtypes=(F32,)))
def test_default_scale_is_inverse_sqrt_head_dim(backend, device, dtype):
    ts = attention_inputs((1, 2, 17, 20), dtype, device=device)
    a = ops.dual_attention(*ts, backend=backend)
    b = ops.dual_attention(*ts, scale=1 / math.sqrt(20), backend=backend)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, atol=0, rtol=0)


@pytest.mark.parametrize("backend,device,dtype", backend_params(OP, backends=("triton",), dtypes=(F16,)))
def test_float16_at_least_as_accurate_as_eager_float16(backend, device, dtype):
    s = sample(OP, "N64-D48", device, dtype, backend)
    got, want = check_against_reference(OP, backend, dtype, s, NAMES)
    eager = [t.detach().clone().requires_grad_() for t in s.tensors]
    e_out = reference.dual_attention(*eager)
    e_all = list(e_out) + list(torch.autograd.grad(e_out, eager, s.upstream))
    r32 = [t.detach().float().requires_grad_() for t in s.tensors]
    r_out = reference.dual_attention(*r32)
    truth = list(r_out) + list(torch.autograd.grad(r_out, r32, [u.float() for u in s.upstream]))

    def worst(xs):
        return max(((x.float() - w).abs() / (1e-3 + w.abs())).max().item() for x, w in zip(xs, truth))

    assert worst(list(got[0]) + list(got[1])) <= worst(e_all)


@pytest.mark.parametrize("backend,device,dtype", backend_params(OP, dtypes=(F32,)))
def test_gradient_through_one_output_only(backend, device, dtype):
    ts = [t.requires_grad_() for t in attention_inputs((1, 2, 17, 16), dtype, device=device)]
    ox, om = ops.dual_attention(*ts, backend=backend)
    g = torch.autograd.grad(ox.square().sum(), ts, allow_unused=True)
    rt = [t.detach().requires_grad_() for t in ts]
    rox, _ = reference.dual_attention(*rt)
    rg = torch.autograd.grad(rox.square().sum(), rt, allow_unused=True)
    for name, a, b in zip(ATTENTION_NAMES, g, rg):
        if b is None:
            assert a is None or a.abs().max() == 0, name
        else:
            torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("backend,device,dtype", backend_params(OP, dtypes=(F32,)))
def test_deterministic(backend, device, dtype):
    ts = [t.requires_grad_() for t in attention_inputs((1, 2, 33, 20), dtype, device=device)]
    up = [torch.randn(1, 2, 33, 20, device=device) for _ in range(2)]

    def run():
        out = ops.dual_attention(*ts, backend=backend)
        return list(out) + list(torch.autograd.grad(out, ts, up))

    for x, y in zip(run(), run()):
        assert torch.equal(x, y)


# ------------------------------------------------------------------ errors and dispatch


def test_triton_refuses_what_its_kernel_cannot_run():
    """The op's dispatch knows the kernel's head-dim limit (so auto picks torch there): an
    explicit ``triton`` says why, as it does for float64."""
    big = [torch.randn(1, 1, 4, 264) for _ in range(5)]
    with pytest.raises(BackendUnavailable, match="head dims up to 256"):
        ops.dual_attention(*big, backend="triton")
    with pytest.raises(BackendUnavailable):
        ops.dual_attention(*[torch.randn(1, 1, 4, 16, dtype=torch.float64) for _ in range(5)], backend="triton")


@pytest.mark.parametrize("backend,device,dtype", backend_params(OP, devices=("cpu",), dtypes=(F32,)))
def test_mismatched_head_dim_rejected(backend, device, dtype):
    ts = attention_inputs((1, 1, 4, 16), dtype)
    with pytest.raises(ValueError, match="vm"):
        ops.dual_attention(*ts[:4], ts[4][..., :8], backend=backend)


@pytest.mark.gpu
def test_auto_picks_triton_on_cuda():
    assert ops.selected_backend(OP, "auto", "cuda", torch.bfloat16) == "triton"
    assert ops.selected_backend(OP, "auto", "cuda", torch.float32) == "triton"


# ------------------------------------------------------------------ torch.library / torch.compile


@pytest.fixture
def triton_runs(require_backend):
    require_backend("triton")
    import dadf_fast.kernels.triton.dual_attention  # noqa: F401  (registers the custom ops)


def test_opcheck_forward(triton_runs):
    ts = [t.requires_grad_() for t in attention_inputs((1, 2, 17, 20))]
    torch.library.opcheck(torch.ops.dadf_fast_triton.dual_attention.default, (*ts, 0.25))


def test_opcheck_backward(triton_runs):
    ts = attention_inputs((1, 2, 17, 20), layout="qkv")
    ox, om, lse = torch.ops.dadf_fast_triton.dual_attention(*ts, 0.25)
    dout = [torch.randn(1, 2, 17, 20) for _ in range(2)]
    torch.library.opcheck(torch.ops.dadf_fast_triton.dual_attention_backward.default, (*dout, *ts, ox, om, lse, 0.25))


def _dual_block(dim, heads, backend):
    from dadf_fast.nn.attention import DualBlock

    return DualBlock(dim, heads, backend=backend)


TRITON_CPU_F32 = backend_params(OP, backends=("triton",), devices=("cpu",), dtypes=(F32,))


@pytest.mark.parametrize("backend,device,dtype", TRITON_CPU_F32)
def test_torch_compile_fullgraph_dual_block(backend, device, dtype):
    """torch.compile(fullgraph=True, aot_eager) traces a DualBlock through the custom op
    (dynamo + fake tensors + AOTAutograd forward/backward).  Inductor: the GPU test below
    (its C++ code generation is slow on a 2-core CPU)."""
    torch.manual_seed(0)
    blk = _dual_block(40, 2, backend)
    ref = _dual_block(40, 2, "torch")
    ref.load_state_dict(blk.state_dict())
    x, m = torch.randn(1, 17, 40), torch.randn(1, 17, 40)
    # an eager call first resolves the backend (its first resolution may import the kernel
    # module, which Dynamo does not trace); traced calls then find it in the dispatch cache
    blk(x, m)
    cx, cm = torch.compile(blk, fullgraph=True, backend="aot_eager")(x, m)
    rx, rm = ref(x, m)
    torch.testing.assert_close(cx, rx, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(cm, rm, atol=1e-4, rtol=1e-4)
    (cx.square().sum() + cm.sum()).backward()
    (rx.square().sum() + rm.sum()).backward()
    for (name, p), q in zip(blk.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-4, rtol=1e-4, msg=name)


@pytest.mark.gpu
def test_gpu_torch_compile_inductor():
    torch.manual_seed(0)
    blk = _dual_block(96, 4, "auto").cuda().to(torch.bfloat16)
    x = torch.randn(2, 64, 96, device="cuda", dtype=torch.bfloat16)
    m = torch.randn(2, 64, 96, device="cuda", dtype=torch.bfloat16)
    ex, em = blk(x, m)
    cx, cm = torch.compile(blk, fullgraph=True)(x, m)
    torch.testing.assert_close(cx, ex, atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(cm, em, atol=2e-2, rtol=2e-2)
    (cx.float().sum() + cm.float().square().sum()).backward()


# ------------------------------------------------------------------ 16-bit on GPU, FlashAttention style


def _run_both(ts):
    torch.manual_seed(1)
    ts = [t.detach().requires_grad_() for t in ts]
    B, H, N, D = ts[0].shape
    dout = [torch.randn(B, H, N, D, device=ts[0].device).to(ts[0].dtype) for _ in range(2)]
    out = ops.dual_attention(*ts, backend="triton")
    got = list(out) + list(torch.autograd.grad(out, ts, dout))
    rt = [t.detach().float().requires_grad_() for t in ts]
    rout = reference.dual_attention(*rt)
    want = list(rout) + list(torch.autograd.grad(rout, rt, [d.float() for d in dout]))
    eager = [t.detach().clone().requires_grad_() for t in ts]
    e_out = reference.dual_attention(*eager)
    e_all = list(e_out) + list(torch.autograd.grad(e_out, eager, dout))
    return got, want, e_all


def assert_like_eager(got, want, e_all):
    """The kernel's error against the float32 reference must be within 2x (+ a small floor) of
    the error of the eager reference run in the same 16-bit dtype, per output and gradient,
    and small in relative Frobenius norm."""
    for name, a, e, w in zip(NAMES, got, e_all, want):
        assert torch.isfinite(a).all(), name
        err = (a.float() - w).abs().max().item()
        eager_err = (e.float() - w).abs().max().item()
        assert err <= 2 * eager_err + 1e-3, f"{name}: error {err:.3g}, eager 16-bit error {eager_err:.3g}"
        assert ((a.float() - w).norm() / w.norm()).item() < 1e-2, name


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=["bf16", "f16", "f32"])
def test_gpu_paper_shape(dtype):
    """Paper preset attention: H = 8, N = 256, D = 180 (B reduced to 2)."""
    got, want, e_all = _run_both(attention_inputs((2, 8, 256, 180), dtype, "qkv", "cuda"))
    if dtype == torch.float32:
        for name, a, w in zip(NAMES, got, want):
            torch.testing.assert_close(a, w, atol=2e-5, rtol=1e-4, msg=name)
    else:
        assert_like_eager(got, want, e_all)


@pytest.mark.gpu
@pytest.mark.parametrize("N,D", [(1, 16), (17, 20), (100, 48), (129, 64), (77, 128), (65, 256)])
def test_gpu_bf16_shapes(N, D):
    assert_like_eager(*_run_both(attention_inputs((2, 2, N, D), torch.bfloat16, "qkv", "cuda")))


# ------------------------------------------------------------------ the reference


def _explicit_attention(q, k, v, scale):
    b, h, n, d = q.shape
    out = torch.empty_like(q)
    for bi in range(b):
        for hi in range(h):
            s = (q[bi, hi] @ k[bi, hi].T) * scale
            p = torch.exp(s - s.max(dim=1, keepdim=True).values)
            p = p / p.sum(dim=1, keepdim=True)
            out[bi, hi] = p @ v[bi, hi]
    return out


@pytest.mark.parametrize("scale", [None, 0.3])
def test_reference_explicit_formula_noncontiguous(scale):
    b, n, h, d = 2, 9, 3, 5
    qkv = torch.randn(b, 2, n, 3, h, d, dtype=torch.float64)
    qx, kx, vx = (qkv[:, 0, :, i].transpose(1, 2) for i in range(3))
    qm, vm = qkv[:, 1, :, 0].transpose(1, 2), qkv[:, 1, :, 2].transpose(1, 2)
    assert not qx.is_contiguous()
    ox, om = reference.dual_attention(qx, kx, vx, qm, vm, scale=scale)
    sc = 1 / math.sqrt(d) if scale is None else scale
    torch.testing.assert_close(ox, _explicit_attention(qx, kx, vx, sc))
    torch.testing.assert_close(om, _explicit_attention(qm, kx, vm, sc))

