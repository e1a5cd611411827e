"""Fused Triton dual attention (``dadf_fast.kernels.triton.dual_attention``) against the reference.

On a machine without a GPU the kernels run in Triton's interpreter on CPU tensors
(``TRITON_INTERPRET=1``, set by conftest.py before triton is imported).  The interpreter
runs every tile step in numpy, so the shapes here are tiny (B, H <= 2, N <= 100); the cost
is the number of tile steps, not the tile size.  GPU-only checks (bfloat16, the paper shape,
inductor) are marked ``gpu``.

Tolerances
----------
float32: the kernels accumulate in float32 in a different order than the reference
(blockwise online softmax vs. one softmax), so results differ by a few float32 ulps per
reduction: ``atol=2e-5, rtol=1e-4`` (observed max error ~1e-6 on O(1) values).

float16: the reference runs in float32 on the *same* float16-rounded inputs, so the error
measured is the kernel's own: the final rounding of outputs/gradients to float16 (half an
ulp = 2^-11 ~ 4.9e-4 relative) plus the rounding of the probabilities (and dS) to float16
before the P@V / dS@K tensor-core dots, whose per-term 2^-11 relative errors average out in
the float32 sums.  Observed max errors are ~1e-3 on gradients of magnitude ~2 and ~4e-4 on
outputs of magnitude ~1, hence ``atol=rtol=1.5e-3`` (about 2x headroom).  For scale: the
eager reference evaluated in float16 is about 2-3x *less* accurate than this
(test_float16_at_least_as_accurate_as_eager_float16).
"""
import math

import pytest
import torch

from dadf_fast import ops
from dadf_fast.kernels.registry import BackendUnavailable
from dadf_fast.kernels.triton import unavailable_reason as triton_reason
from dadf_fast.reference import dual_attention as reference

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
_REASON = triton_reason(DEVICE)
pytestmark = pytest.mark.skipif(_REASON is not None, reason=f"Triton cannot run here: {_REASON}")

if _REASON is None:
    from dadf_fast.kernels.triton import dual_attention as K
else:  # pragma: no cover
    K = None

TOL = {
    torch.float32: dict(atol=2e-5, rtol=1e-4),
    torch.float16: dict(atol=1.5e-3, rtol=1.5e-3),
}
NAMES = ("qx", "kx", "vx", "qm", "vm")


@pytest.fixture
def config_override():
    """Force block sizes for the duration of a test."""
    old = K._CONFIG_OVERRIDE

    def set_(cfg):
        K._CONFIG_OVERRIDE = cfg

    yield set_
    K._CONFIG_OVERRIDE = old


def make_inputs(B, H, N, D, dtype, layout="contiguous", device=DEVICE):
    """Five ``[B, H, N, D]`` tensors in the requested memory layout, requiring grad.

    * ``contiguous``: plain ``[B, H, N, D]``.
    * ``qkv``: strided views of ``[B, N, 3, H, D]`` projections (what a fused qkv Linear
      produces), one projection for the input stream and one for the memory stream.
    * ``strided``: the last dimension is not unit-stride and rows have gaps (a transposed,
      sliced buffer), to exercise fully general strides.
    """
    if layout == "contiguous":
        ts = [torch.randn(B, H, N, D, device=device).to(dtype).requires_grad_() for _ in range(5)]
        return ts
    if layout == "qkv":
        px = torch.randn(B, N, 3, H, D, device=device).to(dtype).requires_grad_()
        pm = torch.randn(B, N, 3, H, D, device=device).to(dtype).requires_grad_()
        qx, kx, vx = (px[:, :, i].transpose(1, 2) for i in range(3))
        qm, vm = pm[:, :, 0].transpose(1, 2), pm[:, :, 2].transpose(1, 2)
        return [qx, kx, vx, qm, vm]
    if layout == "strided":
        out = []
        for _ in range(5):
            base = torch.randn(B, H, D + 3, 2 * N, device=device).to(dtype).requires_grad_()
            out.append(base[:, :, 1:D + 1, ::2].transpose(-1, -2))  # [B, H, N, D], stride_d = 2N
        return out
    raise ValueError(layout)


def run_both(ts, scale=None, backend="triton"):
    """Outputs and the five input gradients of the Triton op and of the float32 reference
    evaluated on the same (possibly 16-bit-rounded) input values."""
    torch.manual_seed(1)
    B, H, N, D = ts[0].shape
    grads_out = [torch.randn(B, H, N, D, device=ts[0].device).to(ts[0].dtype) for _ in range(2)]
    out = ops.dual_attention(*ts, scale=scale, backend=backend)
    g = torch.autograd.grad(out, ts, grads_out)
    rt = [t.detach().float().requires_grad_() for t in ts]
    rout = reference(*rt, scale=scale)
    rg = torch.autograd.grad(rout, rt, [x.float() for x in grads_out])
    return list(out) + list(g), list(rout) + list(rg)


def assert_match(got, want, dtype, names=("ox", "om") + tuple("d" + n for n in NAMES)):
    tol = TOL[dtype]
    for name, a, b in zip(names, got, want):
        assert a.shape == b.shape, name
        assert a.dtype == dtype, name
        assert torch.isfinite(a).all(), name
        err = (a.float() - b).abs().max().item()
        assert torch.allclose(a.float(), b, **tol), f"{name}: max abs error {err:.3g} (tol {tol})"


# --------------------------------------------------------------------------- correctness grid
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["f32", "f16"])
@pytest.mark.parametrize("N", [1, 17, 64])
@pytest.mark.parametrize("D", [16, 20, 48])
def test_forward_and_gradients_match_reference(dtype, N, D):
    # D = 16: one exact chunk; D = 20: one chunk padded to 32 (column masks);
    # D = 48: two chunks 32 + 16.  N = 1: single key; N = 17: ragged block; N = 64: 2 x 2 blocks.
    ts = make_inputs(1, 2, N, D, dtype)
    got, want = run_both(ts)
    assert_match(got, want, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["f32", "f16"])
@pytest.mark.parametrize("layout", ["qkv", "strided"])
def test_non_contiguous_inputs(dtype, layout):
    ts = make_inputs(2, 2, 17, 20, dtype, layout)
    assert not any(t.is_contiguous() for t in ts)
    got, want = run_both(ts)
    assert_match(got, want, dtype)


def test_qkv_views_are_read_in_place(monkeypatch):
    """The strided views of a [B, N, 3, H, D] projection reach the kernel as they are."""
    ts = [t.detach() for t in make_inputs(1, 2, 17, 20, torch.float32, "qkv")]
    seen = {}
    launcher = K._dual_attn_fwd_kernel

    class Spy:
        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                seen["ptrs"] = [a.data_ptr() for a in args[:5]]
                return launcher[grid](*args, **kwargs)

            return launch

    monkeypatch.setattr(K, "_dual_attn_fwd_kernel", Spy())
    ops.dual_attention(*ts, backend="triton")
    assert seen["ptrs"] == [t.data_ptr() for t in ts]


@pytest.mark.parametrize("scale", [None, 0.3, 1.7])
def test_scale(scale):
    ts = make_inputs(1, 1, 17, 20, torch.float32)
    got, want = run_both(ts, scale=scale)
    assert_match(got, want, torch.float32)


def test_default_scale_is_inverse_sqrt_head_dim():
    ts = [t.detach() for t in make_inputs(1, 2, 17, 20, torch.float32)]
    a = ops.dual_attention(*ts, backend="triton")
    b = ops.dual_attention(*ts, scale=1 / math.sqrt(20), backend="triton")
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, atol=0, rtol=0)


@pytest.mark.parametrize("N,D", [(17, 40), (33, 16)])
def test_small_blocks_ragged_multiblock(config_override, N, D):
    """16 x 16 blocks: N = 17 and 33 end in a 1-row block; D = 40 = 32 + 16 with the second
    chunk column-masked (the same structure as the paper's D = 180 = 128 + 64 - 12)."""
    config_override({"all": dict(BLOCK_M=16, BLOCK_N=16)})
    ts = make_inputs(2, 1, N, D, torch.float16)
    got, want = run_both(ts)
    assert_match(got, want, torch.float16)


@pytest.mark.parametrize("D", [48, 180])
def test_gpu_block_table_in_interpreter(config_override, D):
    """The block sizes the GPU table picks for 16-bit inputs, run by the interpreter on a
    ragged N (so every kernel exercises its row masks with the real tile shapes)."""
    da, db = K._head_chunks(D)
    config_override({k: K._gpu_config(da + db, k, torch.float16) for k in ("fwd", "dkdv", "dq")})
    ts = make_inputs(1, 1, 70, D, torch.float16)
    got, want = run_both(ts)
    assert_match(got, want, torch.float16)


def test_head_dim_chunks():
    assert K._head_chunks(16) == (16, 0)
    assert K._head_chunks(8) == (16, 0)
    assert K._head_chunks(20) == (32, 0)
    assert K._head_chunks(48) == (32, 16)
    assert K._head_chunks(64) == (64, 0)
    assert K._head_chunks(180) == (128, 64)
    assert K._head_chunks(256) == (256, 0)
    for d in range(1, 257):
        da, db = K._head_chunks(d)
        assert da + db >= d and da >= 16 and (db == 0 or db >= 16)
        assert da + db <= max(16, 1 << (d - 1).bit_length())


def test_float16_at_least_as_accurate_as_eager_float16():
    ts = make_inputs(1, 2, 64, 48, torch.float16)
    got, want = run_both(ts)
    eager = [t.detach().clone().requires_grad_() for t in ts]
    torch.manual_seed(1)
    grads_out = [torch.randn(t.shape, device=t.device).to(torch.float16) for t in ts[:2]]
    e_out = reference(*eager)
    e_g = torch.autograd.grad(e_out, eager, grads_out)
    eager_all = list(e_out) + list(e_g)

    def worst(xs):
        return max(((x.float() - w).abs() / (1e-3 + w.abs())).max().item() for x, w in zip(xs, want))

    assert worst(got) <= worst(eager_all)


# --------------------------------------------------------------------------- autograd details
def test_gradient_through_one_output_only():
    ts = make_inputs(1, 2, 17, 16, torch.float32)
    ox, om = ops.dual_attention(*ts, backend="triton")
    g = torch.autograd.grad(ox.square().sum(), ts, allow_unused=True)
    rt = [t.detach().requires_grad_() for t in ts]
    rox, _ = reference(*rt)
    rg = torch.autograd.grad(rox.square().sum(), rt, allow_unused=True)
    for name, a, b in zip(NAMES, g, rg):
        if b is None:
            assert a is None or a.abs().max() == 0, name
        else:
            torch.testing.assert_close(a, b, **TOL[torch.float32], msg=name)


def test_saves_no_attention_matrix():
    """Backward keeps inputs, outputs and the row log-sum-exp: nothing of size N x N."""
    B, H, N, D = 1, 2, 64, 16
    ts = make_inputs(B, H, N, D, torch.float32)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(tuple(t.shape)) or t, lambda t: t):
        ops.dual_attention(*ts, backend="triton")
    assert saved, "nothing saved for backward?"
    assert all(math.prod(s) <= B * H * N * D for s in saved), saved
    assert (2, B, H, N) in saved  # the lse of both streams


def test_output_layout_merges_heads_as_a_view():
    ts = [t.detach() for t in make_inputs(2, 2, 17, 20, torch.float32)]
    ox, om = ops.dual_attention(*ts, backend="triton")
    assert ox.shape == om.shape == (2, 2, 17, 20)
    assert ox.transpose(1, 2).is_contiguous() and om.transpose(1, 2).is_contiguous()


def test_deterministic():
    ts = make_inputs(1, 2, 33, 20, torch.float32)
    a, _ = run_both(ts)
    b, _ = run_both(ts)
    for x, y in zip(a, b):
        assert torch.equal(x, y)


# --------------------------------------------------------------------------- dispatch and errors
def test_errors():
    ts = [t.detach() for t in make_inputs(1, 1, 4, 16, torch.float32)]
    big = [torch.randn(1, 1, 4, 264, device=DEVICE) for _ in range(5)]
    # the op's dispatch knows the kernel's limit (so auto would pick torch): explicit triton says why
    with pytest.raises(BackendUnavailable, match="head dims up to 256"):
        ops.dual_attention(*big, backend="triton")
    with pytest.raises(ValueError, match="head dim"):
        K.dual_attention_triton(*big)
    with pytest.raises(BackendUnavailable):
        ops.dual_attention(*[t.double() for t in ts], backend="triton")
    with pytest.raises(ValueError):
        K.dual_attention_triton(ts[0], ts[1], ts[2], ts[3], ts[4][..., :8])


def test_empty_batch():
    ts = [torch.randn(0, 2, 5, 16, device=DEVICE, requires_grad=True) for _ in range(5)]
    ox, om = ops.dual_attention(*ts, backend="triton")
    assert ox.shape == (0, 2, 5, 16)
    (ox.sum() + om.sum()).backward()
    assert ts[0].grad.shape == ts[0].shape


# --------------------------------------------------------------------------- torch.library / compile
def test_opcheck_forward():
    ts = make_inputs(1, 2, 17, 20, torch.float32)
    torch.library.opcheck(torch.ops.dadf_fast_triton.dual_attention.default, (*ts, 0.25))


def test_opcheck_backward():
    ts = [t.detach() for t in make_inputs(1, 2, 17, 20, torch.float32, "qkv")]
    ox, om, lse = torch.ops.dadf_fast_triton.dual_attention(*ts, 0.25)
    dout = [torch.randn(1, 2, 17, 20, device=DEVICE) for _ in range(2)]
    torch.library.opcheck(
        torch.ops.dadf_fast_triton.dual_attention_backward.default, (*dout, *ts, ox, om, lse, 0.25)
    )


def _dual_block(dim, heads, backend):
    from dadf_fast.nn.attention import DualBlock

    return DualBlock(dim, heads, backend=backend)


@pytest.mark.parametrize("compile_backend", ["aot_eager"])
def test_torch_compile_dual_block(compile_backend):
    """torch.compile(fullgraph=True) traces a DualBlock through the custom op (dynamo +
    fake tensors + AOTAutograd forward/backward).  Inductor codegen is exercised in the GPU
    test; on the 2-core CPU it costs ~40 s of C++ compilation."""
    torch.manual_seed(0)
    blk = _dual_block(40, 2, "triton").to(DEVICE)
    ref = _dual_block(40, 2, "torch").to(DEVICE)
    ref.load_state_dict(blk.state_dict())
    x = torch.randn(1, 17, 40, device=DEVICE)
    m = torch.randn(1, 17, 40, device=DEVICE)
    compiled = torch.compile(blk, fullgraph=True, backend=compile_backend)
    cx, cm = compiled(x, m)
    rx, rm = ref(x, m)
    torch.testing.assert_close(cx, rx, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(cm, rm, atol=1e-4, rtol=1e-4)
    (cx.square().sum() + cm.sum()).backward()
    (rx.square().sum() + rm.sum()).backward()
    for (name, p), q in zip(blk.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-4, rtol=1e-4, msg=name)


# --------------------------------------------------------------------------- GPU only
@pytest.mark.gpu
def test_auto_picks_triton_on_cuda():
    assert ops.selected_backend("dual_attention", "auto", "cuda", torch.bfloat16) == "triton"
    assert ops.selected_backend("dual_attention", "auto", "cuda", torch.float32) == "triton"


def assert_like_eager(ts, got, want):
    """16-bit GPU check in the FlashAttention style: the kernel's error against the float32
    reference must be within 2x (+ a small floor) of the error of the eager reference run in
    the same 16-bit dtype, per output and gradient, and small in relative Frobenius norm."""
    torch.manual_seed(1)
    B, H, N, D = ts[0].shape
    dout = [torch.randn(B, H, N, D, device=ts[0].device).to(ts[0].dtype) for _ in range(2)]
    eager = [t.detach().clone().requires_grad_() for t in ts]
    e_out = reference(*eager)
    e_all = list(e_out) + list(torch.autograd.grad(e_out, eager, dout))
    names = ("ox", "om") + tuple("d" + n for n in NAMES)
    for name, a, e, w in zip(names, got, e_all, want):
        assert torch.isfinite(a).all(), name
        err = (a.float() - w).abs().max().item()
        eager_err = (e.float() - w).abs().max().item()
        assert err <= 2 * eager_err + 1e-3, f"{name}: error {err:.3g}, eager 16-bit error {eager_err:.3g}"
        assert ((a.float() - w).norm() / w.norm()).item() < 1e-2, name


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=["bf16", "f16", "f32"])
def test_gpu_paper_shape(dtype):
    """Paper preset attention: H = 8, N = 256, D = 180 (B reduced to 2)."""
    ts = make_inputs(2, 8, 256, 180, dtype, "qkv")
    got, want = run_both(ts)
    if dtype == torch.float32:
        assert_match(got, want, dtype)
    else:
        assert_like_eager(ts, got, want)


@pytest.mark.gpu
@pytest.mark.parametrize("N,D", [(1, 16), (17, 20), (100, 48), (129, 64), (77, 128), (65, 256)])
def test_gpu_bf16_shapes(N, D):
    ts = make_inputs(2, 2, N, D, torch.bfloat16, "qkv")
    got, want = run_both(ts)
    assert_like_eager(ts, got, want)


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
