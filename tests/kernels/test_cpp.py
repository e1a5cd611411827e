"""The C++ backend's own checks: the extension is built from the current sources and is what
``auto`` runs on CPU, every CPU instruction-set copy agrees, and bad inputs passed straight to
the registered ``torch.ops.dadf_fast`` ops raise clear Python exceptions instead of crashing.
The ops' contracts on this backend: tests/ops/.

These tests require the extension to build and load (it is compiled on first use and
cached, see docs/install.md): in CI a silent fallback to the reference must not pass.  Set
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
from dadf_fast import ops
from dadf_fast.kernels.cpp import stale_reason as _cpp_stale_reason
from dadf_fast.kernels.cpp.source_hash import source_hash
from samples import coupling_inputs as _coupling_inputs, score_inputs

if os.environ.get("DADF_FAST_ALLOW_NO_EXT", "0") not in ("", "0"):
    if not dadf_fast.backends()["cpp"]["cpu"]["available"]:
        pytest.skip("C++ extension not built (DADF_FAST_ALLOW_NO_EXT=1)", allow_module_level=True)

# registers the fake kernels and autograd; raises ImportError with the reason when missing or stale
from dadf_fast.kernels.cpp import ops as cpp  # noqa: E402,F401

OPS = torch.ops.dadf_fast
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DTYPES = [torch.float32, torch.float64]
BAD_INPUT = (RuntimeError, ValueError, TypeError, IndexError)


def coupling_inputs(shape, dtype=torch.float64):
    return _coupling_inputs(shape, dtype)


# ---------------------------------------------------------------------------------------
# The extension is built, current and what "auto" picks on CPU
# ---------------------------------------------------------------------------------------


def test_extension_is_built_current_and_selected():
    info = dadf_fast.backends()["cpp"]["cpu"]
    assert info["available"], info["reason"]
    from dadf_fast.kernels.cpp import load_extension

    C, _ = load_extension()
    assert C.SOURCE_HASH == source_hash(), "dadf_fast._C was built from other sources than csrc/"
    assert isinstance(C.WITH_CUDA, bool)
    for name in ("affine_coupling", "flow_nll", "multiscale_score"):
        for dtype in DTYPES:
            assert ops.selected_backend(name, "auto", "cpu", dtype) == "cpp"
    for name in ("affine_coupling_fwd", "affine_coupling_bwd", "flow_nll_fwd", "flow_nll_bwd", "multiscale_score"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"dadf_fast::{name}", "CPU")


def test_stale_and_disabled_extension_are_reported():
    assert "stale" in _cpp_stale_reason(types.SimpleNamespace(SOURCE_HASH="0000000000000000"))
    assert _cpp_stale_reason(types.SimpleNamespace(SOURCE_HASH=source_hash())) is None
    # A fresh interpreter with the cpp backend switched off: the package still imports,
    # backends() says why, "auto" falls back to the reference and "cpp" raises.
    script = textwrap.dedent(
        """
        import torch, dadf_fast
        from dadf_fast import ops
        info = dadf_fast.backends()["cpp"]["cpu"]
        assert not info["available"], info
        assert info["reason"] == "the cpp backend is disabled by DADF_FAST_NO_EXT=1", info
        assert ops.selected_backend("flow_nll", "auto", "cpu", torch.float32) == "torch"
        try:
            ops.flow_nll(torch.ones(2, 3), torch.zeros(2), backend="cpp")
        except dadf_fast.BackendUnavailable as exc:
            assert "DADF_FAST_NO_EXT" in str(exc), str(exc)
        else:
            raise AssertionError("backend='cpp' did not raise")
        print("OK")
        """
    )
    env = dict(os.environ, DADF_FAST_NO_EXT="1")
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120,
                         env=env)
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-2000:]


def test_auto_on_cpu_runs_the_cpp_kernels_bit_for_bit():
    """What ``auto`` gives on CPU is what ``backend="cpp"`` gives, to the bit; and the
    inference fast path (no log-det) leaves the raw op's log-det output empty."""
    for dtype in DTYPES:
        x, a, g, b, perm = coupling_inputs((2, 11, 7, 5), dtype)
        for reverse in (False, True):
            auto = ops.affine_coupling(x, a, g, b, perm, reverse=reverse)
            explicit = ops.affine_coupling(x, a, g, b, perm, reverse=reverse, backend="cpp")
            assert all(torch.equal(u, v) for u, v in zip(auto, explicit))
        z, ld = torch.randn(3, 5, 7, dtype=dtype), torch.randn(3, dtype=dtype)
        assert torch.equal(ops.flow_nll(z, ld), ops.flow_nll(z, ld, backend="cpp"))
        zs = score_inputs([(5, 7, 9), (3, 4, 5)], 3, dtype)
        for reduce in ("max", "mean"):
            auto = ops.multiscale_score(zs, (30, 17), reduce)
            explicit = ops.multiscale_score(zs, (30, 17), reduce, backend="cpp")
            assert all(torch.equal(u, v) for u, v in zip(auto, explicit))
    _, empty = OPS.affine_coupling_fwd(x, a, g, b, perm, 1.5, 0.3, False, False)
    assert empty.shape == (0,)


def _python_files_called(fn) -> set:
    """The files of the Python functions that ``fn()`` calls."""
    seen = set()

    def profile(frame, event, arg):
        if event == "call":
            seen.add(frame.f_code.co_filename)

    sys.setprofile(profile)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return seen


def test_no_grad_calls_skip_the_python_autograd_layer():
    """Without autograd (no_grad, inference_mode, or no input requiring grad) the cpp coupling
    goes straight to the kernel, past torch's Python autograd kernel of the op, with the same
    results to the bit; with inputs requiring grad it goes through the registered autograd
    formula, and gradients flow."""
    from dadf_fast.kernels.cpp import ops as cpp_ops

    autograd_layer = os.path.join("_library", "autograd.py")
    x, a, g, b, perm = coupling_inputs((6, 9), torch.float32)
    ref = cpp_ops.affine_coupling(x, a, g, b, perm, 1.5, 0.3, False)
    leaf = a.clone().requires_grad_()
    for ctx, a_in in ((torch.no_grad, leaf), (torch.inference_mode, leaf), (torch.enable_grad, a)):
        got = []
        with ctx():
            files = _python_files_called(lambda: got.extend(cpp_ops.affine_coupling(x, a_in, g, b, perm, 1.5, 0.3,
                                                                                   False)))
        assert not any(f.endswith(autograd_layer) for f in files), ctx
        assert all(torch.equal(u, v) for u, v in zip(got, ref))
    out = []
    files = _python_files_called(lambda: out.extend(cpp_ops.affine_coupling(x, leaf, g, b, perm, 1.5, 0.3, False)))
    assert any(f.endswith(autograd_layer) for f in files)
    y, logdet = out
    assert y.requires_grad and logdet.requires_grad
    assert all(torch.equal(u, v) for u, v in zip((y.detach(), logdet.detach()), ref))
    (y.sum() + logdet.sum()).backward()
    assert leaf.grad is not None and bool(leaf.grad.abs().sum() > 0)


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
        basis = torch.randn(5, 61)
        memory = torch.randn(2500, 5) @ basis + 0.1 * torch.randn(2500, 61)
        queries = torch.cat((torch.randn(1100, 5) @ basis, memory[:30]))
        torch.testing.assert_close(cpp.nearest_distances(queries, memory),
                                   reference.nearest_distances(queries, memory), atol=1e-5, rtol=1e-5)
        print("OK")
        """
    )
    for isa in ("default", "avx2"):
        env = dict(os.environ, DADF_FAST_CPU_ISA=isa)
        out = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0 and "OK" in out.stdout, (isa, out.stderr[-2000:])


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
