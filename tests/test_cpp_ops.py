"""The C++ extension (``dadf_fast._C``, CPU kernels) against the pure-torch reference.

These tests require the extension to be built and current (``pip install
--no-build-isolation -e .``): in CI a silent fallback to the reference must not pass.  Set
DADF_FAST_ALLOW_NO_EXT=1 to skip them instead on a machine without a compiler.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import types

import pytest
import torch

import dadf_fast
from dadf_fast import ops, reference
from dadf_fast.kernels.cpp import stale_reason as _cpp_stale_reason
from dadf_fast.kernels.cpp.source_hash import source_hash

if os.environ.get("DADF_FAST_ALLOW_NO_EXT", "0") not in ("", "0"):
    if not dadf_fast.backends()["cpp"]["cpu"]["available"]:
        pytest.skip("C++ extension not built (DADF_FAST_ALLOW_NO_EXT=1)", allow_module_level=True)

from dadf_fast.kernels.cpp import ops as cpp  # noqa: E402  (raises ImportError with the reason when missing/stale)

OPS = torch.ops.dadf_fast
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DTYPES = [torch.float32, torch.float64]
BAD_INPUT = (RuntimeError, ValueError, TypeError, IndexError)


def tol(dtype):
    return {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 1e-11, "rtol": 1e-11}


def coupling_inputs(shape, dtype=torch.float64, a_std=3.0):
    b, c, h, w = shape
    x = torch.randn(b, c, h, w, dtype=dtype)
    a = a_std * torch.randn(b, 2 * (c // 2), h, w, dtype=dtype)  # a_scale 0.1: s covers tanh's range
    g = (0.5 + torch.rand(c, dtype=dtype)).requires_grad_(False)
    bias = torch.randn(c, dtype=dtype)
    perm = torch.randperm(c)
    return x, a, g, bias, perm


# ---------------------------------------------------------------------------------------
# The extension is built, current and what "auto" picks on CPU
# ---------------------------------------------------------------------------------------


def test_extension_is_built_current_and_selected():
    info = dadf_fast.backends()["cpp"]["cpu"]
    assert info["available"], info["reason"]
    import dadf_fast._C as C

    assert C.SOURCE_HASH == source_hash(), "dadf_fast._C was built from other sources than csrc/"
    assert isinstance(C.WITH_CUDA, bool)
    for name in ("affine_coupling", "flow_nll", "multiscale_score"):
        for dtype in DTYPES:
            assert ops.selected_backend(name, "auto", "cpu", dtype) == "cpp"
    for name in ("affine_coupling_fwd", "affine_coupling_bwd", "flow_nll_fwd", "flow_nll_bwd", "multiscale_score"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"dadf_fast::{name}", "CPU")


def test_stale_and_missing_extension_are_reported():
    assert "stale" in _cpp_stale_reason(types.SimpleNamespace(SOURCE_HASH="0000000000000000"))
    assert _cpp_stale_reason(types.SimpleNamespace(SOURCE_HASH=source_hash())) is None
    # A fresh interpreter where dadf_fast._C cannot be imported: the package still imports,
    # backends() says why, "auto" falls back to the reference and "cpp" raises.
    script = textwrap.dedent(
        """
        import sys, importlib.abc
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name == "dadf_fast._C":
                    raise ImportError("blocked for the test")
        sys.meta_path.insert(0, Block())
        import torch, dadf_fast
        from dadf_fast import ops
        info = dadf_fast.backends()["cpp"]["cpu"]
        assert not info["available"] and "not built" in info["reason"], info
        assert ops.selected_backend("flow_nll", "auto", "cpu", torch.float32) == "torch"
        try:
            ops.flow_nll(torch.ones(2, 3), torch.zeros(2), backend="cpp")
        except dadf_fast.BackendUnavailable as exc:
            assert "not built" in str(exc)
        else:
            raise AssertionError("backend='cpp' did not raise")
        print("OK")
        """
    )
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-2000:]


# ---------------------------------------------------------------------------------------
# affine_coupling
# ---------------------------------------------------------------------------------------

COUPLING_SHAPES = [(1, 2, 1, 1), (2, 3, 5, 4), (2, 7, 5, 3), (3, 9, 11, 13), (1, 72, 16, 16), (2, 33, 6, 7)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", COUPLING_SHAPES)
@pytest.mark.parametrize("reverse", [False, True])
def test_affine_coupling_matches_reference(dtype, shape, reverse):
    x, a, g, b, perm = coupling_inputs(shape, dtype)
    y_ref, ld_ref = reference.affine_coupling(x, a, g, b, perm, 2.0, 0.1, reverse)
    y, ld = cpp.affine_coupling(x, a, g, b, perm, 2.0, 0.1, reverse)
    torch.testing.assert_close(y, y_ref, **tol(dtype))
    torch.testing.assert_close(ld, ld_ref, **tol(dtype))
    # the public op picks the C++ kernel and gives the same
    y2, ld2 = ops.affine_coupling(x, a, g, b, perm, reverse=reverse)
    assert torch.equal(y2, y) and torch.equal(ld2, ld)


@pytest.mark.parametrize("dtype", DTYPES)
def test_affine_coupling_round_trip_and_options(dtype):
    x, a, g, b, perm = coupling_inputs((2, 11, 7, 5), dtype)
    y, ld = cpp.affine_coupling(x, a, g, b, perm, clamp=1.5, a_scale=0.3)
    y_ref, ld_ref = reference.affine_coupling(x, a, g, b, perm, clamp=1.5, a_scale=0.3)
    torch.testing.assert_close(y, y_ref, **tol(dtype))
    torch.testing.assert_close(ld, ld_ref, **tol(dtype))
    x_back, ld_back = cpp.affine_coupling(y, a, g, b, perm, clamp=1.5, a_scale=0.3, reverse=True)
    torch.testing.assert_close(x_back, x, **tol(dtype))
    torch.testing.assert_close(ld_back, -ld, **tol(dtype))
    # inference fast path: same y, no log-det
    y_fast, none = cpp.affine_coupling(x, a, g, b, perm, clamp=1.5, a_scale=0.3, compute_logdet=False)
    assert none is None and torch.equal(y_fast, y)
    _, empty = OPS.affine_coupling_fwd(x, a, g, b, perm, 1.5, 0.3, False, False)
    assert empty.shape == (0,)


def test_affine_coupling_non_contiguous_inputs():
    b_, c, h, w = 2, 9, 6, 5
    x, a, g, b, perm = coupling_inputs((b_, c, h, w))
    x_nc = x.to(memory_format=torch.channels_last)
    a_nc = torch.randn(b_, 2 * (c // 2), w, h, dtype=x.dtype).transpose(2, 3)  # strided view
    g_nc = torch.stack([g, g + 1], dim=1)[:, 0]  # stride 2
    b_nc = torch.randn(2 * c, dtype=x.dtype)[::2]
    perm_nc = torch.stack([perm, perm], dim=1)[:, 1]
    assert not (x_nc.is_contiguous() or a_nc.is_contiguous() or g_nc.is_contiguous() or perm_nc.is_contiguous())
    for reverse in (False, True):
        want = reference.affine_coupling(x_nc, a_nc, g_nc, b_nc, perm_nc, reverse=reverse)
        got = cpp.affine_coupling(x_nc, a_nc, g_nc, b_nc, perm_nc, reverse=reverse)
        torch.testing.assert_close(got, want, **tol(x.dtype))


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("shape", [(2, 5, 3, 4), (1, 2, 2, 1), (3, 4, 1, 3)])
def test_affine_coupling_gradcheck(reverse, shape):
    x, a, g, b, perm = coupling_inputs(shape, torch.float64, a_std=2.0)
    inputs = [t.clone().requires_grad_() for t in (x, a, g, b)]

    def fn(x, a, g, b):
        return cpp.affine_coupling(x, a, g, b, perm, 2.0, 0.1, reverse)

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reverse", [False, True])
def test_affine_coupling_grads_match_reference(dtype, reverse):
    x, a, g, b, perm = coupling_inputs((2, 13, 9, 7), dtype)
    gy = torch.randn_like(x)
    gl = torch.randn(x.shape[0], dtype=dtype)

    def grads(fn, use_logdet=True):
        ins = [t.clone().requires_grad_() for t in (x, a, g, b)]
        y, ld = fn(*ins, perm, 2.0, 0.1, reverse)
        loss = (y * gy).sum() + ((ld * gl).sum() if use_logdet else 0)
        return torch.autograd.grad(loss, ins)

    t = {"atol": 1e-4, "rtol": 1e-5} if dtype == torch.float32 else tol(dtype)
    torch.testing.assert_close(grads(cpp.affine_coupling), grads(reference.affine_coupling), **t)
    # only y used: the log-det gradient arrives as None
    torch.testing.assert_close(grads(cpp.affine_coupling, False), grads(reference.affine_coupling, False), **t)


def test_affine_coupling_grad_without_logdet_output():
    x, a, g, b, perm = coupling_inputs((2, 6, 4, 3))
    ins = [t.clone().requires_grad_() for t in (x, a, g, b)]
    y, _ = cpp.affine_coupling(*ins, perm, compute_logdet=False)
    got = torch.autograd.grad(y.square().sum(), ins)
    ref_ins = [t.clone().requires_grad_() for t in (x, a, g, b)]
    y_ref, _ = reference.affine_coupling(*ref_ins, perm)
    want = torch.autograd.grad(y_ref.square().sum(), ref_ins)
    torch.testing.assert_close(got, want, **tol(x.dtype))


def test_affine_coupling_deterministic_across_thread_counts():
    x, a, g, b, perm = coupling_inputs((3, 40, 33, 31), torch.float32)
    ins = [t.clone().requires_grad_() for t in (x, a, g, b)]
    gy = torch.randn_like(x)
    results = []
    old = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            y, ld = cpp.affine_coupling(*ins, perm)
            gr = torch.autograd.grad((y * gy).sum() + ld.sum(), ins)
            results.append((y, ld) + tuple(gr))
    finally:
        torch.set_num_threads(old)
    for r1, r2 in zip(*results):
        assert torch.equal(r1, r2)


def test_every_cpu_instruction_set_copy_agrees():
    """The CPU kernels exist as baseline / AVX2 / AVX-512 copies picked at run time; force
    the narrower ones in a subprocess each and compare against the reference (this process
    runs the widest the machine has)."""
    script = textwrap.dedent(
        """
        import torch
        from dadf_fast import reference
        from dadf_fast.kernels.cpp import ops as cpp
        torch.manual_seed(0)
        x = torch.randn(2, 13, 9, 7); a = 3 * torch.randn(2, 12, 9, 7)
        g = 0.5 + torch.rand(13); b = torch.randn(13); perm = torch.randperm(13)
        for reverse in (False, True):
            ins = [t.clone().requires_grad_() for t in (x, a, g, b)]
            y, ld = cpp.affine_coupling(*ins, perm, reverse=reverse)
            gr = torch.autograd.grad(y.square().sum() + ld.sum(), ins)
            rins = [t.clone().requires_grad_() for t in (x, a, g, b)]
            yr, ldr = reference.affine_coupling(*rins, perm, reverse=reverse)
            grr = torch.autograd.grad(yr.square().sum() + ldr.sum(), rins)
            torch.testing.assert_close((y, ld), (yr, ldr), atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(gr, grr, atol=1e-4, rtol=1e-5)
        zs = [torch.randn(2, 300, 9, 7), torch.randn(2, 5, 4, 3)]
        for reduce in ("max", "mean"):
            torch.testing.assert_close(cpp.multiscale_score(zs, (37, 29), reduce),
                                       reference.multiscale_score(zs, (37, 29), reduce), atol=1e-6, rtol=1e-6)
        z = torch.randn(3, 70001); ld = torch.randn(3)
        torch.testing.assert_close(cpp.flow_nll(z, ld), reference.flow_nll(z, ld), atol=1e-5, rtol=1e-5)
        print("OK")
        """
    )
    for isa in ("default", "avx2"):
        env = dict(os.environ, DADF_FAST_CPU_ISA=isa)
        out = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0 and "OK" in out.stdout, (isa, out.stderr[-2000:])


# ---------------------------------------------------------------------------------------
# flow_nll
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (2, 3), (3, 5, 7, 9), (2, 72, 33, 17), (1, 40000)])
def test_flow_nll_matches_reference(dtype, shape):
    z = torch.randn(*shape, dtype=dtype)
    ld = 10 * torch.randn(shape[0], dtype=dtype)
    got = cpp.flow_nll(z, ld)
    torch.testing.assert_close(got, reference.flow_nll(z, ld), **tol(dtype))
    assert torch.equal(ops.flow_nll(z, ld), got)


def test_flow_nll_non_contiguous_and_grads():
    z = torch.randn(4, 9, 5, 6, dtype=torch.float64).transpose(1, 3)
    ld = torch.randn(8, dtype=torch.float64)[::2]
    assert not z.is_contiguous() and not ld.is_contiguous()
    torch.testing.assert_close(cpp.flow_nll(z, ld), reference.flow_nll(z, ld), **tol(z.dtype))
    zg, lg = z.clone().requires_grad_(), ld.clone().requires_grad_()
    assert torch.autograd.gradcheck(cpp.flow_nll, (zg, lg))
    w = torch.randn(4, dtype=torch.float64)
    got = torch.autograd.grad((cpp.flow_nll(zg, lg) * w).sum(), (zg, lg))
    want = torch.autograd.grad((reference.flow_nll(zg, lg) * w).sum(), (zg, lg))
    torch.testing.assert_close(got, want, **tol(z.dtype))


# ---------------------------------------------------------------------------------------
# multiscale_score
# ---------------------------------------------------------------------------------------

SCORE_CASES = [
    # (per-scale (C, h, w), out size)
    ([(5, 7, 9), (3, 4, 5), (4, 13, 11)], (13, 11)),
    ([(5, 7, 9), (3, 4, 5), (4, 13, 11)], (30, 17)),  # not a multiple of any feature size
    ([(6, 16, 16), (10, 8, 8), (28, 4, 4)], (64, 64)),  # the usual strides-4/8/16 layout
    ([(3, 7, 9)], (7, 9)),  # same size: a copy
    ([(3, 7, 9), (2, 5, 3)], (3, 2)),  # downsampling
    ([(1, 1, 1), (2, 1, 3)], (5, 4)),  # single-pixel maps
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", range(len(SCORE_CASES)))
@pytest.mark.parametrize("reduce", ["max", "mean"])
@pytest.mark.parametrize("batch", [1, 3])
def test_multiscale_score_matches_reference(dtype, case, reduce, batch):
    scales, size = SCORE_CASES[case]
    zs = [torch.randn(batch, c, h, w, dtype=dtype) for c, h, w in scales]
    m_ref, s_ref = reference.multiscale_score(zs, size, reduce)
    m, s = cpp.multiscale_score(zs, size, reduce)
    t = {"atol": 1e-6, "rtol": 1e-6} if dtype == torch.float32 else tol(dtype)
    assert m.shape == (batch, 1) + size and s.shape == (batch,)
    torch.testing.assert_close(m, m_ref, **t)
    torch.testing.assert_close(s, s_ref, **t)
    m2, s2 = ops.multiscale_score(zs, size, reduce)
    assert torch.equal(m2, m) and torch.equal(s2, s)


def test_multiscale_score_non_contiguous_and_int_size():
    zs = [torch.randn(2, 9, 8, 5).transpose(2, 3), torch.randn(2, 6, 4, 4, 2)[..., 0]]
    assert not any(z.is_contiguous() for z in zs)
    torch.testing.assert_close(cpp.multiscale_score(zs, 17), reference.multiscale_score(zs, 17), atol=1e-6, rtol=1e-6)


def test_multiscale_score_upsampling_is_interpolate_to_float_rounding():
    """One channel with z chosen so that p is a known map: the upsampling is F.interpolate's."""
    p = torch.rand(2, 1, 7, 5) * 0.9 + 0.05
    z = torch.sqrt(-2 * torch.log(p))  # exp(-0.5 z^2) == p
    m, _ = cpp.multiscale_score([z], (23, 19))
    want = 1 - torch.nn.functional.interpolate(torch.exp(-0.5 * z.square()), size=(23, 19), mode="bilinear", align_corners=False)
    assert (m - want).abs().max().item() <= 2.5e-7


# ---------------------------------------------------------------------------------------
# torch.library: opcheck and torch.compile
# ---------------------------------------------------------------------------------------


def test_opcheck_all_ops():
    x, a, g, b, perm = coupling_inputs((2, 5, 3, 4))
    grad_inputs = [t.clone().requires_grad_() for t in (x, a, g, b)]
    for reverse in (False, True):
        torch.library.opcheck(OPS.affine_coupling_fwd.default, (*grad_inputs, perm, 2.0, 0.1, reverse, True))
    torch.library.opcheck(OPS.affine_coupling_fwd.default, (x, a, g, b, perm, 2.0, 0.1, False, False))
    torch.library.opcheck(
        OPS.affine_coupling_bwd.default, (torch.randn_like(x), torch.randn(2, dtype=x.dtype), x, a, g, b, perm, 2.0, 0.1, False)
    )
    torch.library.opcheck(OPS.affine_coupling_bwd.default, (torch.randn_like(x), None, x, a, g, b, perm, 2.0, 0.1, True))
    z = torch.randn(3, 4, 5, dtype=torch.float64, requires_grad=True)
    ld = torch.randn(3, dtype=torch.float64, requires_grad=True)
    torch.library.opcheck(OPS.flow_nll_fwd.default, (z, ld))
    torch.library.opcheck(OPS.flow_nll_bwd.default, (torch.randn(3, dtype=torch.float64), z.detach()))
    zs = [torch.randn(2, 3, 5, 4), torch.randn(2, 2, 3, 3)]
    torch.library.opcheck(OPS.multiscale_score.default, (zs, 11, 9, "max"))
    torch.library.opcheck(OPS.multiscale_score.default, (zs, 4, 6, "mean"))


def test_torch_compile_fullgraph_traces_through_the_ops():
    x, a, g, b, perm = coupling_inputs((2, 6, 8, 8), torch.float32)

    def step(x, a, g, b, perm):
        y, ld = cpp.affine_coupling(x, a, g, b, perm)
        y2, ld2 = cpp.affine_coupling(y, a, g, b, perm, reverse=True)
        nll = cpp.flow_nll(y, ld)
        amap, score = cpp.multiscale_score([y, y2[:, :, ::2, ::2]], (16, 16))
        return nll, amap, score, ld2

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    ins = [t.clone().requires_grad_() for t in (x, a, g, b)]
    got = compiled(*ins, perm)
    want = step(*ins, perm)
    torch.testing.assert_close(got, want)
    grads = torch.autograd.grad(got[0].sum(), ins)
    want_grads = torch.autograd.grad(want[0].sum(), ins)
    torch.testing.assert_close(grads, want_grads)


# ---------------------------------------------------------------------------------------
# Bad inputs straight into the C++ ops: clear Python exceptions, never a crash
# ---------------------------------------------------------------------------------------


def _coupling_call(**over):
    x, a, g, b, perm = coupling_inputs((2, 5, 3, 4), torch.float32)
    args = dict(x=x, a=a, g=g, b=b, perm=perm, clamp=2.0, a_scale=0.1, reverse=False, compute_logdet=True)
    args.update(over)
    return OPS.affine_coupling_fwd(*args.values())


@pytest.mark.parametrize(
    "over, match",
    [
        (dict(x=torch.randn(2, 5, 3)), "4-D"),
        (dict(x=torch.randn(2, 1, 3, 4), a=torch.randn(2, 0, 3, 4), g=torch.ones(1), b=torch.zeros(1), perm=torch.arange(1)), "at least 2 channels"),
        (dict(a=torch.randn(3, 4, 3, 4)), "a must have shape"),  # batch mismatch
        (dict(a=torch.randn(2, 5, 3, 4)), "a must have shape"),
        (dict(a=torch.randn(2, 4, 4, 3)), "a must have shape"),
        (dict(g=torch.ones(4)), "g must have shape"),
        (dict(b=torch.zeros(5, 1)), "b must have shape"),
        (dict(perm=torch.tensor([0, 1, 2, 3, 9])), "out of range"),
        (dict(perm=torch.tensor([0, 1, 2, 3, -1])), "out of range"),
        (dict(perm=torch.tensor([0, 1, 1, 3, 4])), "not a permutation"),
        (dict(perm=torch.arange(5, dtype=torch.int32)), "int64"),
        (dict(perm=torch.arange(4)), "perm must have shape"),
        (dict(x=torch.randint(0, 3, (2, 5, 3, 4))), "floating-point"),
        (dict(a=torch.randn(2, 4, 3, 4, dtype=torch.float64)), "dtype"),
        (dict(x=torch.randn(2, 5, 3, 4).half(), a=torch.randn(2, 4, 3, 4).half(), g=torch.ones(5).half(), b=torch.zeros(5).half()), "float32 and float64"),
        (dict(clamp=0.0), "clamp"),
    ],
)
def test_affine_coupling_bad_inputs_raise(over, match):
    with pytest.raises(BAD_INPUT, match=match):
        _coupling_call(**over)


def test_affine_coupling_bwd_bad_inputs_raise():
    x, a, g, b, perm = coupling_inputs((2, 5, 3, 4), torch.float32)
    with pytest.raises(BAD_INPUT, match="grad_out"):
        OPS.affine_coupling_bwd(torch.randn(2, 5, 3, 3), None, x, a, g, b, perm, 2.0, 0.1, False)
    with pytest.raises(BAD_INPUT, match="grad_logdet"):
        OPS.affine_coupling_bwd(torch.randn_like(x), torch.randn(3), x, a, g, b, perm, 2.0, 0.1, False)
    with pytest.raises(BAD_INPUT, match="out of range"):
        OPS.affine_coupling_bwd(torch.randn_like(x), None, x, a, g, b, torch.tensor([4, 3, 2, 1, 5]), 2.0, 0.1, True)


@pytest.mark.parametrize(
    "z, ld, match",
    [
        (torch.randn(3, 4), torch.randn(2), "logdet must have shape"),
        (torch.randn(3, 4), torch.randn(3, 1), "logdet must have shape"),
        (torch.tensor(1.0), torch.randn(1), "batch dimension"),
        (torch.randint(0, 4, (3, 4)), torch.randn(3), "floating-point"),
        (torch.randn(3, 4), torch.randint(0, 4, (3,)), "floating-point"),
        (torch.randn(3, 4), torch.randn(3, dtype=torch.float64), "dtype"),
        (torch.randn(3, 4).bfloat16(), torch.randn(3).bfloat16(), "float32 and float64"),
    ],
)
def test_flow_nll_bad_inputs_raise(z, ld, match):
    with pytest.raises(BAD_INPUT, match=match):
        OPS.flow_nll_fwd(z, ld)


def test_flow_nll_bwd_bad_inputs_raise():
    with pytest.raises(BAD_INPUT, match="grad must have shape"):
        OPS.flow_nll_bwd(torch.randn(2), torch.randn(3, 4))


@pytest.mark.parametrize(
    "zs, h, w, reduce, match",
    [
        ([], 8, 8, "max", "empty"),
        ([torch.randn(2, 3, 4, 4), torch.randn(3, 3, 2, 2)], 8, 8, "max", "batch"),
        ([torch.randn(2, 3, 4)], 8, 8, "max", "4-D"),
        ([torch.randint(0, 3, (2, 3, 4, 4))], 8, 8, "max", "floating-point"),
        ([torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4, dtype=torch.float64)], 8, 8, "max", "dtype"),
        ([torch.randn(2, 0, 4, 4)], 8, 8, "max", "empty"),
        ([torch.randn(2, 3, 4, 4)], 0, 8, "max", "positive"),
        ([torch.randn(2, 3, 4, 4)], 8, -1, "max", "positive"),
        ([torch.randn(2, 3, 4, 4)], 8, 8, "median", "reduce"),
        ([torch.randn(2, 3, 4, 4).half()], 8, 8, "max", "float32 and float64"),
    ],
)
def test_multiscale_score_bad_inputs_raise(zs, h, w, reduce, match):
    with pytest.raises(BAD_INPUT, match=match):
        OPS.multiscale_score(zs, h, w, reduce)


# ---------------------------------------------------------------------------------------
# multiscale_score backward (issue #14: the cpp backend had none)
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("reduce", ["max", "mean"])
def test_multiscale_score_gradcheck(reduce):
    zs = [torch.randn(2, 3, 5, 4, dtype=torch.float64, requires_grad=True),
          torch.randn(2, 2, 3, 3, dtype=torch.float64, requires_grad=True)]
    assert torch.autograd.gradcheck(lambda *z: cpp.multiscale_score(list(z), (7, 6), reduce), zs)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduce", ["max", "mean"])
def test_multiscale_score_grads_match_reference(dtype, reduce):
    scales, size = SCORE_CASES[1]
    zs = [torch.randn(2, c, h, w, dtype=dtype, requires_grad=True) for c, h, w in scales]
    wm = torch.randn(2, 1, *size, dtype=dtype)
    ws = torch.randn(2, dtype=dtype)

    def loss(out):
        return (out[0] * wm).sum() + (out[1] * ws).sum()

    got = torch.autograd.grad(loss(ops.multiscale_score(zs, size, reduce, backend="cpp")), zs)
    want = torch.autograd.grad(loss(reference.multiscale_score(zs, size, reduce)), zs)
    t = {"atol": 1e-6, "rtol": 1e-5} if dtype == torch.float32 else tol(dtype)
    for g1, g2 in zip(got, want):
        assert g1.dtype == dtype
        torch.testing.assert_close(g1, g2, **t)
    # the score alone: max sends its gradient to the arg-max pixel's sources only
    got_s = torch.autograd.grad(ops.multiscale_score(zs, size, reduce, backend="cpp")[1].sum(), zs)
    want_s = torch.autograd.grad(reference.multiscale_score(zs, size, reduce)[1].sum(), zs)
    for g1, g2 in zip(got_s, want_s):
        torch.testing.assert_close(g1, g2, **t)
