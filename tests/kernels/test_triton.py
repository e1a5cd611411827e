"""The Triton backend's internals: block sizes and head-dim chunks, what the kernels save and
read, the kernel entry points' own checks, the device-side guard on ``perm``, and GPU code
generation without a GPU.  The ops' contracts on this backend: tests/ops/.

Without a GPU the kernels run in Triton's interpreter on CPU tensors (tests/conftest.py sets
``TRITON_INTERPRET=1``), so every shape is tiny.  Triton must run here under CI.
"""
import math
import os
import subprocess
import sys

import pytest
import torch

from dadf_fast import ops, reference
from samples import F16, F32, Sample, attention_inputs, check_against_reference, coupling_inputs

HAS_CUDA = torch.cuda.is_available()
DEVICE = "cuda" if HAS_CUDA else "cpu"
B, H, W = 2, 5, 3


@pytest.fixture(autouse=True)
def _triton_runs(require_backend):
    require_backend("triton", DEVICE)


@pytest.fixture
def K():
    from dadf_fast.kernels.triton import dual_attention

    return dual_attention


@pytest.fixture
def coupling():
    from dadf_fast.kernels.triton.affine_coupling import affine_coupling_triton

    return affine_coupling_triton


@pytest.fixture
def config_override(K):
    """Force the attention block sizes for the duration of a test."""
    old = K._CONFIG_OVERRIDE

    def set_(cfg):
        K._CONFIG_OVERRIDE = cfg

    yield set_
    K._CONFIG_OVERRIDE = old


def _attention_matches_reference(shape, dtype):
    ts = attention_inputs(shape, dtype, device=DEVICE)
    up = [torch.randn(shape, device=DEVICE).to(dtype) for _ in range(2)]
    check_against_reference("dual_attention", "triton", dtype, Sample("case", ts, lambda t: (tuple(t), {}), up))


# ------------------------------------------------------------------ dual attention: tiles


@pytest.mark.parametrize("N,D", [(17, 40), (33, 16)])
def test_attention_small_blocks_ragged_multiblock(config_override, N, D):
    """16 x 16 blocks: N = 17 and 33 end in a 1-row block; D = 40 = 32 + 16 with the second
    chunk column-masked (the same structure as the paper's D = 180 = 128 + 64 - 12)."""
    config_override({"all": dict(BLOCK_M=16, BLOCK_N=16)})
    _attention_matches_reference((2, 1, N, D), F16)


@pytest.mark.parametrize("D", [48, 180])
def test_attention_gpu_block_table_in_interpreter(K, config_override, D):
    """The block sizes the GPU table picks for 16-bit inputs, run by the interpreter on a
    ragged N (so every kernel exercises its row masks with the real tile shapes)."""
    da, db = K._head_chunks(D)
    config_override({k: K._gpu_config(da + db, k, torch.float16) for k in ("fwd", "dkdv", "dq")})
    _attention_matches_reference((1, 1, 70, D), F16)


def test_attention_head_dim_chunks(K):
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


# ------------------------------------------------------------------ dual attention: memory


def test_attention_qkv_views_are_read_in_place(K, monkeypatch):
    """The strided views of a [B, N, 3, H, D] projection reach the kernel as they are."""
    ts = attention_inputs((1, 2, 17, 20), F32, "qkv", DEVICE)
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


def test_attention_saves_no_attention_matrix():
    """Backward keeps inputs, outputs and the row log-sum-exp: nothing of size N x N."""
    b, h, n, d = 1, 2, 64, 16
    ts = [t.requires_grad_() for t in attention_inputs((b, h, n, d), F32, device=DEVICE)]
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(tuple(t.shape)) or t, lambda t: t):
        ops.dual_attention(*ts, backend="triton")
    assert saved, "nothing saved for backward?"
    assert all(math.prod(s) <= b * h * n * d for s in saved), saved
    assert (2, b, h, n) in saved  # the lse of both streams


def test_attention_output_layout_merges_heads_as_a_view():
    ox, om = ops.dual_attention(*attention_inputs((2, 2, 17, 20), F32, device=DEVICE), backend="triton")
    assert ox.shape == om.shape == (2, 2, 17, 20)
    assert ox.transpose(1, 2).is_contiguous() and om.transpose(1, 2).is_contiguous()


# ------------------------------------------------------------------ coupling: the raw custom op


@pytest.mark.parametrize("bad_entry", [99, -3, 2**40])
def test_coupling_kernel_guards_out_of_range_perm_entries(coupling, bad_entry):
    """What runs on GPU, where the host check is skipped: the custom op called directly with
    an out-of-range entry reads nothing through it; that row (forward) or the channel it
    should fill (reverse) is NaN, as are the log-det and dg/db of that channel, and
    everything else equals the reference under the valid permutation."""
    x, a, g, b, _ = coupling_inputs((B, 5, H, W), a_std=8.0)
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


def test_coupling_kernel_entry_compiles_fullgraph(coupling):
    """The custom op (fake impl + registered autograd) called through the kernel entry traces
    into one graph, forward and inverse (``aot_eager``: no Inductor C++ codegen on 2 cores)."""
    import torch._dynamo

    x, a, g, b, perm = coupling_inputs((B, 5, H, W), device=DEVICE, a_std=8.0)

    def step(x, a, g, b, perm):
        y, ld = coupling(x, a, g, b, perm, 2.0, 0.1, False)
        z, ld2 = coupling(y, a, g, b, perm, 2.0, 0.1, True)
        return 0.5 * (y * y).sum() - ld.sum() + (z * z).sum() + ld2.sum()

    torch._dynamo.reset()
    compiled = torch.compile(step, fullgraph=True, backend="inductor" if HAS_CUDA else "aot_eager")
    leaves = [t.detach().requires_grad_() for t in (x, a, g, b)]
    loss = compiled(*leaves, perm)
    grads = torch.autograd.grad(loss, leaves)
    leaves_e = [t.detach().requires_grad_() for t in (x, a, g, b)]
    loss_e = step(*leaves_e, perm)
    torch.testing.assert_close(loss, loss_e, rtol=1e-5, atol=1e-5)
    for p, q in zip(grads, torch.autograd.grad(loss_e, leaves_e)):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-5)
    torch._dynamo.reset()


# ------------------------------------------------------------------ GPU code generation without a GPU

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
def test_coupling_kernels_compile_for_sm90_without_gpu(tmp_path):
    """The interpreter runs kernels as Python, so it cannot catch GPU code-generation errors;
    compile every coupling kernel (both directions, float32/bfloat16, flat and strided pixel
    paths) ahead of time for sm_90 (H200) with Triton's own compiler and ptxas."""
    env = dict(os.environ, TRITON_CACHE_DIR=str(tmp_path / "triton-cache"))
    env.pop("TRITON_INTERPRET", None)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-c", _AOT_SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    if proc.returncode == 3:
        pytest.skip(proc.stdout.strip())
    assert proc.returncode == 0, proc.stdout + proc.stderr
