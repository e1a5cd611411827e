"""Triton affine-coupling epilogue and depthwise+LeakyReLU kernels.

Without a GPU these run in Triton's interpreter on CPU tensors (conftest sets
``TRITON_INTERPRET=1``), so every shape is tiny.  Truths: ``dadf_fast.reference`` (FrEIA
semantics, the permutation as a gather), FrEIA 0.2's own ``AllInOneBlock``, and
``F.leaky_relu(F.conv2d(..., groups=C1))``.
"""
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from dadf_fast import ops, reference
from dadf_fast.kernels.registry import BackendUnavailable
from dadf_fast.kernels.triton import unavailable_reason as triton_reason

HAS_CUDA = torch.cuda.is_available()
pytestmark = pytest.mark.skipif(
    triton_reason("cuda" if HAS_CUDA else "cpu") is not None,
    reason=f"Triton cannot run here: {triton_reason('cuda' if HAS_CUDA else 'cpu')}",
)

if triton_reason("cuda" if HAS_CUDA else "cpu") is None:
    from dadf_fast.kernels.triton.affine_coupling import affine_coupling_triton

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]
B, H, W = 2, 5, 3


def _inputs(c, device, dtype=torch.float32, bsz=B, h=H, w=W, a_std=8.0):
    """x, raw subnet output a (large enough that tanh saturates for some entries), g > 0, b, perm."""
    x = torch.randn(bsz, c, h, w)
    a = a_std * torch.randn(bsz, 2 * (c // 2), h, w)
    g = torch.rand(c) + 0.5
    b = torch.randn(c)
    perm = torch.randperm(c)
    cast = [t.to(device=device, dtype=dtype) for t in (x, a, g, b)]
    return (*cast, perm.to(device))


def _grads(fn, x, a, g, b, perm, reverse, dy, dl):
    leaves = [t.detach().requires_grad_() for t in (x, a, g, b)]
    y, ld = fn(*leaves, perm, 2.0, 0.1, reverse)
    grads = torch.autograd.grad((y * dy).sum() + (ld * dl).sum(), leaves)
    return y.detach(), ld.detach(), grads


def _triton(x, a, g, b, perm, clamp, a_scale, reverse):
    return ops.affine_coupling(x, a, g, b, perm, clamp=clamp, a_scale=a_scale, reverse=reverse, backend="triton")


# ----------------------------------------------------------------- against the reference


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "inv"])
@pytest.mark.parametrize("c", [2, 3, 7, 10])
def test_matches_reference_values_and_grads(c, reverse, device):
    x, a, g, b, perm = _inputs(c, device)
    dy = torch.randn(B, c, H, W, device=device)
    dl = torch.randn(B, device=device)
    y, ld, gr = _grads(_triton, x, a, g, b, perm, reverse, dy, dl)
    yr, ldr, grr = _grads(reference.affine_coupling, x, a, g, b, perm, reverse, dy, dl)
    assert y.shape == (B, c, H, W) and y.is_contiguous() and ld.shape == (B,)
    torch.testing.assert_close(y, yr, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ld, ldr, rtol=1e-5, atol=1e-5)
    for name, got, want in zip(("dx", "da", "dg", "db"), gr, grr):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("device", DEVICES)
def test_round_trip_and_logdet_sign(device):
    x, a, g, b, perm = _inputs(7, device)
    y, ld = _triton(x, a, g, b, perm, 2.0, 0.1, False)
    x_back, ld_inv = _triton(y, a, g, b, perm, 2.0, 0.1, True)
    torch.testing.assert_close(x_back, x, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ld_inv, -ld, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_deterministic_bitwise(device):
    """Log-det and dg/db go through per-program partial buffers and a fixed-order sum:
    two runs agree bit for bit."""
    c = 10
    x, a, g, b, perm = _inputs(c, device)  # several channel and pixel blocks per sample
    dy = torch.randn(B, c, H, W, device=device)
    dl = torch.randn(B, device=device)
    r1 = _grads(_triton, x, a, g, b, perm, False, dy, dl)
    r2 = _grads(_triton, x, a, g, b, perm, False, dy, dl)
    assert torch.equal(r1[0], r2[0]) and torch.equal(r1[1], r2[1])
    for u, v in zip(r1[2], r2[2]):
        assert torch.equal(u, v)


@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous_inputs_and_grads(device):
    c = 7
    x, a, g, b, perm = _inputs(c, device)
    # x: a channel slice of a wider tensor, then channels_last; a: spatially transposed
    # storage; g, b: strided views; dy: an expanded (stride-0) gradient.
    x_nc = torch.randn(B, c + 3, H, W, device=device).contiguous(memory_format=torch.channels_last)[:, 2:2 + c]
    x_nc.copy_(x)
    a_nc = a.transpose(2, 3).contiguous().transpose(2, 3)
    g_nc = torch.stack([g, g], 1)[:, 0]
    b_nc = torch.stack([b, b], 1)[:, 1]
    assert not (x_nc.is_contiguous() or a_nc.is_contiguous() or g_nc.is_contiguous() or b_nc.is_contiguous())
    dy = torch.randn(1, c, 1, W, device=device).expand(B, c, H, W)
    dl = torch.randn(B, device=device)
    for reverse in (False, True):
        y, ld, gr = _grads(_triton, x_nc, a_nc, g_nc, b_nc, perm, reverse, dy, dl)
        yr, ldr, grr = _grads(reference.affine_coupling, x, a, g, b, perm, reverse, dy, dl)
        torch.testing.assert_close(y, yr, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ld, ldr, rtol=1e-5, atol=1e-5)
        for got, want in zip(gr, grr):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def _half_dtypes():
    out = [pytest.param("cpu", torch.float16, id="cpu-float16")]
    out += [pytest.param("cuda", dt, marks=pytest.mark.gpu, id=f"cuda-{str(dt)[6:]}")
            for dt in (torch.float16, torch.bfloat16)]
    return out


@pytest.mark.parametrize("device,dtype", _half_dtypes())
def test_half_precision_against_float32_reference(device, dtype):
    """Half inputs, compared with the float32 reference run on the same (upcast) values.

    The kernel upcasts every load to float32, computes in float32 and rounds each output once
    to the storage dtype (the dg/db/logdet reductions accumulate in float32 too), so the only
    error beyond float32 noise is that final rounding: unit roundoff 2^-11 ~= 4.9e-4 for
    float16 (rtol 1e-3) and 2^-8 ~= 3.9e-3 for bfloat16 (rtol 1e-2).  The small atol covers
    float16 subnormals near zero."""
    tol = {torch.float16: (1e-3, 1e-4), torch.bfloat16: (1e-2, 1e-3)}[dtype]
    c = 7
    x, a, g, b, perm = _inputs(c, device, dtype)
    dy = torch.randn(B, c, H, W, device=device).to(dtype)
    dl = torch.randn(B, device=device).to(dtype)
    for reverse in (False, True):
        y, ld, gr = _grads(_triton, x, a, g, b, perm, reverse, dy, dl)
        assert y.dtype == dtype and ld.dtype == dtype and all(t.dtype == dtype for t in gr)
        up = [t.float() for t in (x, a, g, b)]
        yr, ldr, grr = _grads(reference.affine_coupling, *up, perm, reverse, dy.float(), dl.float())
        torch.testing.assert_close(y.float(), yr, rtol=tol[0], atol=tol[1])
        torch.testing.assert_close(ld.float(), ldr, rtol=tol[0], atol=tol[1])
        for got, want in zip(gr, grr):
            torch.testing.assert_close(got.float(), want, rtol=tol[0], atol=tol[1])


# ------------------------------------------------------------------------ against FrEIA


def _dadf_subnet(cin, cout):
    return nn.Sequential(nn.Conv2d(cin, cin, 3, padding=1, groups=cin), nn.LeakyReLU(0.1), nn.Conv2d(cin, cout, 1))


@pytest.mark.parametrize("c", [3, 10])
def test_matches_freia_allinoneblock(c):
    from FrEIA.modules import AllInOneBlock

    np.random.seed(c)  # FrEIA draws its hard permutation with numpy
    blk = AllInOneBlock([(c, H, W)], subnet_constructor=_dadf_subnet, affine_clamping=2.0, permute_soft=False)
    with torch.no_grad():  # move off the identity init so every term matters
        blk.global_scale.add_(0.5 * torch.randn_like(blk.global_scale))
        blk.global_offset.normal_()
        blk.subnet[2].weight.mul_(20.0)
    c1 = c - c // 2
    x = torch.randn(B, c, H, W, requires_grad=True)
    dy = torch.randn(B, c, H, W)
    dl = torch.randn(B)

    (y_ref,), ld_ref = blk((x,), rev=False, jac=True)
    params = [x, blk.global_scale, blk.global_offset, *blk.subnet.parameters()]
    g_ref = torch.autograd.grad((y_ref * dy).sum() + (ld_ref * dl).sum(), params)

    a = blk.subnet(x[:, :c1])
    g = 0.1 * F.softplus(blk.global_scale.view(c), beta=0.5)
    b = blk.global_offset.view(c)
    perm = blk.w_perm[:, :, 0, 0].argmax(dim=1)
    y, ld = ops.affine_coupling(x, a, g, b, perm, clamp=blk.clamp, backend="triton")
    got = torch.autograd.grad((y * dy).sum() + (ld * dl).sum(), params)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ld, ld_ref, rtol=1e-5, atol=1e-5)
    for p, q in zip(got, g_ref):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-5)

    # inverse: FrEIA's rev pass recovers x1 itself; here x1 is known, so a is the same
    with torch.no_grad():
        (x_rev,), ld_rev = blk((y_ref,), rev=True, jac=True)
        x_inv, ld_inv = ops.affine_coupling(y_ref, a, g, b, perm, clamp=blk.clamp, reverse=True, backend="triton")
    torch.testing.assert_close(x_inv, x_rev, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x_inv, x.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ld_inv, ld_rev, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------- edges, dispatch


def test_single_channel_rejected():
    x = torch.randn(B, 1, H, W)
    a = torch.randn(B, 0, H, W)
    g, b, perm = torch.ones(1), torch.zeros(1), torch.zeros(1, dtype=torch.int64)
    with pytest.raises(ValueError, match="at least 2 channels"):
        ops.affine_coupling(x, a, g, b, perm, backend="triton")
    with pytest.raises(ValueError, match="C >= 2"):
        affine_coupling_triton(x, a, g, b, perm)


def test_bad_shapes_rejected():
    x, a, g, b, perm = _inputs(4, "cpu")
    with pytest.raises(ValueError, match="a must have shape"):
        affine_coupling_triton(x, a[:, :2], g, b, perm)
    with pytest.raises(TypeError, match="int64"):
        affine_coupling_triton(x, a, g, b, perm.int())


def test_empty_batch():
    x, a, g, b, perm = _inputs(4, "cpu", bsz=0)
    y, ld = affine_coupling_triton(x, a, g, b, perm)
    assert y.shape == (0, 4, H, W) and ld.shape == (0,)


def test_backend_selection_reasons():
    from dadf_fast.ops.affine_coupling import OP

    assert "float32" in OP.reason("triton", torch.device("cpu"), torch.float64)
    with pytest.raises(BackendUnavailable):
        ops.affine_coupling(*_inputs(4, "cpu", torch.float64), backend="triton")
    # auto never picks the interpreter for CPU tensors
    assert ops.selected_backend("affine_coupling", "auto", "cpu", torch.float32) != "triton"


@pytest.mark.gpu
def test_auto_selects_triton_on_cuda():
    for dt in (torch.float32, torch.float16, torch.bfloat16):
        assert ops.selected_backend("affine_coupling", "auto", "cuda", dt) == "triton"


# ---------------------------------------------------------- torch.library / torch.compile


def test_opcheck_coupling():
    x, a, g, b, perm = _inputs(3, "cpu", bsz=1, h=2, w=3)
    for t in (x, a, g, b):
        t.requires_grad_()
    for reverse in (False, True):
        torch.library.opcheck(torch.ops.dadf_fast_triton.affine_coupling.default,
                              (x, a, g, b, perm, 2.0, 0.1, reverse))


def _compile_and_compare(step, device, c=5):
    import torch._dynamo

    x, a, g, b, perm = _inputs(c, device)
    torch._dynamo.reset()
    compiled = torch.compile(step, fullgraph=True, backend="inductor" if device == "cuda" else "aot_eager")
    leaves = [t.detach().requires_grad_() for t in (x, a, g, b)]
    loss = compiled(*leaves, perm)
    grads = torch.autograd.grad(loss, leaves)
    leaves_e = [t.detach().requires_grad_() for t in (x, a, g, b)]
    loss_e = step(*leaves_e, perm)
    grads_e = torch.autograd.grad(loss_e, leaves_e)
    torch.testing.assert_close(loss, loss_e, rtol=1e-5, atol=1e-5)
    for p, q in zip(grads, grads_e):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-5)
    torch._dynamo.reset()


# On CPU the graphs are compiled with ``aot_eager`` (Dynamo capture, fake tensors and AOT
# autograd, without Inductor's C++ codegen, which costs about a minute on 2 cores); on CUDA
# with Inductor.


@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_fullgraph_kernel_entry(device):
    """The custom op (fake impl + registered autograd) traces into one graph, fwd and inverse."""

    def step(x, a, g, b, perm):
        y, ld = affine_coupling_triton(x, a, g, b, perm, 2.0, 0.1, False)
        z, ld2 = affine_coupling_triton(y, a, g, b, perm, 2.0, 0.1, True)
        return 0.5 * (y * y).sum() - ld.sum() + (z * z).sum() + ld2.sum()

    _compile_and_compare(step, device)


@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_fullgraph_public_op(device):
    """``ops.affine_coupling(backend="triton")`` inside ``torch.compile(fullgraph=True)``."""
    x = torch.randn(1, 2, 1, 1, device=device)
    # resolve the backend once eagerly: the dispatcher's lazy loader imports the kernel
    # module on first use, and Dynamo does not trace importlib.
    assert ops.selected_backend("affine_coupling", "triton", device, x.dtype) == "triton"

    def step(x, a, g, b, perm):
        y, ld = ops.affine_coupling(x, a, g, b, perm, backend="triton")
        return 0.5 * (y * y).sum() - ld.sum()

    _compile_and_compare(step, device)


# ------------------------------------------------------- GPU code generation without a GPU

_AOT_SCRIPT = r'''
import itertools, os, sys
os.environ.pop("TRITON_INTERPRET", None)
try:
    import triton
    from triton.compiler import ASTSource
    from triton.backends.compiler import GPUTarget
    import dadf_fast.kernels.triton.affine_coupling as K
    target = GPUTarget("cuda", 90, 32)

    def source(fn, types, consts):
        sig = {n: ("constexpr" if n in consts else types(n)) for n in fn.arg_names}
        # divisibility-by-16 hints, as the JIT gives aligned pointers and strides
        div = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(fn.arg_names)
               if n.endswith("_ptr") and n not in consts}
        return ASTSource(fn=fn, signature=sig, constexprs=consts, attrs=div)
except Exception as exc:  # Triton-internal API of another version
    print(f"AOT API unavailable: {type(exc).__name__}: {exc}")
    sys.exit(3)

def coupling_types(dt):
    def types(n):
        if n == "perm_ptr":
            return "*i64"
        if n in ("part_ptr", "pg_ptr", "pb_ptr", "dlog_ptr"):
            return "*fp32"
        if n.endswith("_ptr"):
            return "*" + dt
        return "fp32" if n in ("clamp", "a_scale") else "i64" if n.startswith("s") else "i32"
    return types

jobs = []
for dt, rev in itertools.product(("fp32", "bf16"), (False, True)):
    jobs.append((K._coupling_fwd_kernel, coupling_types(dt),
                 dict(REVERSE=rev, X_FLAT=rev, A_FLAT=not rev, BLOCK_C=8, BLOCK_P=256)))
    jobs.append((K._coupling_bwd_kernel, coupling_types(dt),
                 dict(REVERSE=rev, O_FLAT=True, X_FLAT=not rev, A_FLAT=rev, BLOCK_C=8, BLOCK_P=256)))
for fn, types, consts in jobs:
    try:
        src = source(fn, types, consts)
    except Exception as exc:
        print(f"AOT API unavailable: {type(exc).__name__}: {exc}")
        sys.exit(3)
    compiled = triton.compile(src, target=target, options={"num_warps": 4})
    assert "cubin" in compiled.asm, fn.__name__
print(f"compiled {len(jobs)} variants for sm_90")
'''


@pytest.mark.skipif(HAS_CUDA, reason="with a GPU the kernels are compiled and run by the other tests")
def test_kernels_compile_for_sm90_without_gpu(tmp_path):
    """The interpreter runs kernels as Python, so it cannot catch GPU code-generation errors;
    compile every kernel (both directions, float32/bfloat16/float16, flat and strided
    pixel paths) ahead of time for sm_90 (H200) with Triton's own compiler and ptxas."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, TRITON_CACHE_DIR=str(tmp_path / "triton-cache"))
    env.pop("TRITON_INTERPRET", None)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-c", _AOT_SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    if proc.returncode == 3:
        pytest.skip(proc.stdout.strip())
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ------------------------------------------------------------- perm bounds (issue #14)


def test_entry_point_checks_perm_on_the_host():
    x, a, g, b, _ = _inputs(5, "cpu")
    for bad in (torch.tensor([0, 1, 2, 3, 5]), torch.tensor([0, 1, 2, 3, -1])):
        with pytest.raises(ValueError, match=r"perm\[4\] = -?\d+ is out of range"):
            affine_coupling_triton(x, a, g, b, bad)
    with pytest.raises(ValueError, match="perm must be a permutation"):
        affine_coupling_triton(x, a, g, b, torch.tensor([0, 1, 2, 3, 3]))
    with pytest.raises(TypeError, match="perm must be a torch.Tensor"):
        affine_coupling_triton(x, a, g, b, [0, 1, 2, 3, 4])
    with pytest.raises(ValueError, match="clamp"):
        affine_coupling_triton(x, a, g, b, torch.arange(5), clamp=0.0)


@pytest.mark.parametrize("bad_entry", [99, -3, 2**40])
def test_kernel_guards_out_of_range_perm_entries(bad_entry):
    """What runs on GPU, where the host check is skipped: the custom op called directly with
    an out-of-range entry reads nothing through it; that row (forward) or the channel it
    should fill (reverse) is NaN, as are the log-det and dg/db of that channel, and
    everything else equals the reference under the valid permutation."""
    x, a, g, b, _ = _inputs(5, "cpu")
    good = torch.tensor([2, 0, 3, 1, 4])
    bad = good.clone()
    bad[4] = bad_entry  # row 4 should read channel 4
    op = torch.ops.dadf_fast_triton.affine_coupling

    y, ld = op(x, a, g, b, bad, 2.0, 0.1, False)
    y_ref, _ = reference.affine_coupling(x, a, g, b, good)
    assert bool(torch.isnan(y[:, 4]).all()) and bool(torch.isnan(ld).all())
    torch.testing.assert_close(y[:, :4], y_ref[:, :4], rtol=1e-5, atol=1e-5)

    xr, ldr = op(y_ref, a, g, b, bad, 2.0, 0.1, True)
    assert bool(torch.isnan(xr[:, 4]).all()) and bool(torch.isnan(ldr).all())  # channel 4 is never reached
    torch.testing.assert_close(xr[:, :4], x[:, :4], rtol=1e-5, atol=1e-5)

    leaves = [t.clone().requires_grad_() for t in (g, b)]
    y, ld = op(x, a, *leaves, bad, 2.0, 0.1, False)
    dg, db = torch.autograd.grad((y[:, :4]).sum() + ld.sum() * 0, leaves)
    ref_leaves = [t.clone().requires_grad_() for t in (g, b)]
    y_ref, _ = reference.affine_coupling(x, a, *ref_leaves, good)
    dg_ref, db_ref = torch.autograd.grad(y_ref[:, :4].sum(), ref_leaves)
    assert bool(torch.isnan(dg[4])) and bool(torch.isnan(db[4]))
    torch.testing.assert_close(dg[:4], dg_ref[:4], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(db[:4], db_ref[:4], rtol=1e-5, atol=1e-5)
