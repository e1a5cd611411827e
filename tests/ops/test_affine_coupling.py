"""``ops.affine_coupling`` on every backend and device, and its reference.

Truths: ``dadf_fast.reference.affine_coupling`` (FrEIA semantics, the permutation as a
gather), itself checked against FrEIA 0.2's ``AllInOneBlock``, a brute-force Jacobian and the
permutation's definition.  Random inputs: tests/ops/test_fuzz_valid.py.
"""
import gc
import importlib
import re

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from dadf_fast import BackendUnavailable, ops, reference
from dadf_fast.nn import coupling_subnet
from samples import (F32, F64, backend_params, check_against_reference, coupling_inputs, implementing, sample,
                     sample_params)

OP = "affine_coupling"
NAMES = ("y", "logdet", "dx", "da", "dg", "db")
CPU_F32 = backend_params(OP, devices=("cpu",), dtypes=(F32,))


# (backend, device) whose kernels take 4-D inputs only: each declares it, so a 2-D fibre
# sample must raise BackendUnavailable with the limit's words (auto passes such inputs on)
FOUR_D_ONLY = {("triton", "cpu"), ("triton", "cuda"), ("cpp", "cuda")}
FOUR_D_ONLY_WORDS = "4-D [B, C, H, W] inputs only"


@pytest.mark.parametrize("backend,device,dtype,name", sample_params(OP))
def test_matches_reference(backend, device, dtype, name):
    s = sample(OP, name, device, dtype, backend)
    if s.tensors[0].dim() == 2 and (backend, device) in FOUR_D_ONLY:
        args, kw = s.build(s.tensors)
        with pytest.raises(BackendUnavailable, match=re.escape(FOUR_D_ONLY_WORDS) + r".*\(got .*ndim=2\)"):
            ops.affine_coupling(*args, **kw, backend=backend)
        return
    y, _ = check_against_reference(OP, backend, dtype, s, NAMES)
    assert y[0].is_contiguous()


@pytest.mark.parametrize("backend,device,dtype", backend_params(OP, dtypes=(F32, F64)))
def test_reverse_inverts_forward_and_negates_logdet(backend, device, dtype):
    x, a, g, b, perm = coupling_inputs((2, 7, 5, 3) if backend == "triton" else (2, 11, 7, 5), dtype, device)
    kw = dict(clamp=1.5, a_scale=0.3, backend=backend)
    y, ld = ops.affine_coupling(x, a, g, b, perm, **kw)
    x_back, ld_back = ops.affine_coupling(y, a, g, b, perm, reverse=True, **kw)
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == F32 else dict(atol=1e-11, rtol=1e-11)
    torch.testing.assert_close(x_back, x, **tol)
    torch.testing.assert_close(ld_back, -ld, **tol)


@pytest.mark.parametrize("backend,device,dtype", backend_params(OP, devices=("cpu",), dtypes=(F64,)))
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("shape", [(2, 5, 3, 4), (1, 2, 2, 1), (3, 4, 1, 3), (5, 7), (1, 2), (70, 3)])
def test_gradcheck(backend, device, dtype, reverse, shape):
    x, a, g, b, perm = coupling_inputs(shape, dtype, a_std=2.0)
    inputs = [t.clone().requires_grad_() for t in (x, a, g, b)]

    def fn(x, a, g, b):
        return ops.affine_coupling(x, a, g, b, perm, 2.0, 0.1, reverse, backend=backend)

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize("backend,device,dtype", backend_params(OP, devices=("cpu",), dtypes=(F32, F64)))
@pytest.mark.parametrize("reverse", [False, True])
def test_gradient_through_y_only(backend, device, dtype, reverse):
    """Only y is used: the log-det's gradient arrives as None."""
    x, a, g, b, perm = coupling_inputs((2, 13, 9, 7) if backend != "triton" else (2, 7, 5, 3), dtype)
    gy = torch.randn_like(x)

    def grads(fn, **kw):
        ins = [t.clone().requires_grad_() for t in (x, a, g, b)]
        y, _ = fn(*ins, perm, 2.0, 0.1, reverse, **kw)
        return torch.autograd.grad((y * gy).sum(), ins)

    tol = dict(atol=1e-4, rtol=1e-5) if dtype == F32 else dict(atol=1e-11, rtol=1e-11)
    torch.testing.assert_close(grads(ops.affine_coupling, backend=backend), grads(reference.affine_coupling), **tol)


# ------------------------------------------------------------------ compute_logdet=False

LOGDET_BACKENDS = implementing(OP) + ["auto"]


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("backend", LOGDET_BACKENDS)
def test_without_logdet_same_y(backend, reverse):
    """``compute_logdet=False``, the inference fast path: the same y, no log-det."""
    x, a, g, b, perm = coupling_inputs((2, 7, 3, 5), seed=1)
    y, ld = ops.affine_coupling(x, a, g, b, perm, clamp=1.5, reverse=reverse, backend=backend)
    y2, none = ops.affine_coupling(x, a, g, b, perm, clamp=1.5, reverse=reverse, backend=backend, compute_logdet=False)
    assert ld.shape == (2,) and none is None
    torch.testing.assert_close(y2, y, atol=0, rtol=0)


@pytest.mark.parametrize("backend", LOGDET_BACKENDS)
def test_without_logdet_has_gradients(backend):
    x, a, g, b, perm = coupling_inputs((2, 7, 3, 5), seed=1)
    ins = [t.clone().requires_grad_() for t in (x, a, g, b)]
    y_ref, _ = reference.affine_coupling(*ins, perm)
    want = torch.autograd.grad(y_ref.square().sum(), ins)
    ins = [t.clone().requires_grad_() for t in (x, a, g, b)]
    y, none = ops.affine_coupling(*ins, perm, backend=backend, compute_logdet=False)
    assert none is None
    got = torch.autograd.grad(y.square().sum(), ins)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("backend", [b for b in LOGDET_BACKENDS if b != "triton"])
@pytest.mark.parametrize("reverse", [False, True])
def test_fibres_without_logdet_same_y(backend, reverse):
    x, a, g, b, perm = coupling_inputs((11, 9), seed=2)
    y, ld = ops.affine_coupling(x, a, g, b, perm, reverse=reverse, backend=backend)
    y2, none = ops.affine_coupling(x, a, g, b, perm, reverse=reverse, backend=backend, compute_logdet=False)
    assert ld.shape == (11,) and none is None
    torch.testing.assert_close(y2, y, atol=0, rtol=0)


# ------------------------------------------------------------------ fibres [N, C]


@pytest.mark.parametrize("backend", ["torch", "cpp", "auto"])
def test_fibre_logdet_is_per_row_sum_over_channels(require_backend, backend):
    """Hand-computed: C = 2, one coupled channel: logdet[n] = clamp*tanh(a_scale*a[n, 0]) +
    log g0 + log g1; y[n] = perm of (x0*g0 + b0, (x1*exp(s) + a_scale*a[n, 1])*g1 + b1)."""
    require_backend(backend)
    x = torch.tensor([[1.0, 2.0], [-1.0, 0.5]], dtype=F64)
    a = torch.tensor([[3.0, 4.0], [-2.0, 1.0]], dtype=F64)
    g, b = torch.tensor([2.0, 0.75], dtype=F64), torch.tensor([0.25, -1.0], dtype=F64)
    perm = torch.tensor([1, 0])
    y, ld = ops.affine_coupling(x, a, g, b, perm, clamp=2.0, a_scale=0.1, backend=backend)
    for n in range(2):
        s = 2.0 * np.tanh(0.1 * a[n, 0].item())
        y1 = (x[n, 1].item() * np.exp(s) + 0.1 * a[n, 1].item()) * 0.75 - 1.0
        y0 = x[n, 0].item() * 2.0 + 0.25
        assert y[n].tolist() == pytest.approx([y1, y0], abs=1e-12)
        assert ld[n].item() == pytest.approx(s + np.log(2.0) + np.log(0.75), abs=1e-12)


@pytest.mark.parametrize("reverse", [False, True])
def test_cpp_fibres_equal_the_one_pixel_image_view(require_backend, reverse):
    """x [N, C] and its [N, C, 1, 1] view run the same fibre kernel: bitwise equal results."""
    require_backend("cpp")
    x, a, g, b, perm = coupling_inputs((37, 19), seed=3)
    dy, dl = torch.randn(37, 19), torch.randn(37)
    out = []
    for view in (lambda t: t, lambda t: t[..., None, None]):
        ins = [t.clone().requires_grad_() for t in (x, a, g, b)]
        y, ld = ops.affine_coupling(view(ins[0]), view(ins[1]), *ins[2:], perm, reverse=reverse, backend="cpp")
        grads = torch.autograd.grad((y.reshape(37, 19) * dy).sum() + (ld * dl).sum(), ins)
        out.append((y.reshape(37, 19), ld, *grads))
    for p, q in zip(*out):
        assert torch.equal(p, q)


def test_auto_runs_fibres_on_cpp_and_refuses_them_on_4d_only_backends(require_backend):
    require_backend("cpp")
    assert ops.selected_backend(OP, "auto", "cpu", F32, permutation="hard", ndim=2) == "cpp"
    # the 4-D-only declarations, read on any machine (their devices need not be present here)
    from dadf_fast.kernels.registry import DECLARATIONS
    from dadf_fast.kernels.spec import Call

    for backend, device in sorted(FOUR_D_ONLY):
        limits = DECLARATIONS[backend].support(OP).limits
        for ndim, refused in ((2, True), (4, False)):
            reasons = [lim.reason(Call(OP, device, F32, (("permutation", "hard"), ("ndim", ndim)))) for lim in limits]
            assert any(r and FOUR_D_ONLY_WORDS in r for r in reasons) == refused, (backend, device, ndim, reasons)
    cpu_cpp = [lim.reason(Call(OP, "cpu", F32, (("ndim", 2),))) for lim in DECLARATIONS["cpp"].support(OP).limits]
    assert cpu_cpp == [None] * len(cpu_cpp)


# ------------------------------------------------------------------ perm validated once


@pytest.fixture
def count_sorts(monkeypatch):
    """Counts the op's sort-checks of perm (torch.sort calls)."""
    calls = []
    real = torch.sort

    def counting(*args, **kw):
        calls.append(1)
        return real(*args, **kw)

    monkeypatch.setattr(torch, "sort", counting)
    return calls


def test_unchanged_perm_is_checked_once(count_sorts):
    x, a, g, b, perm = coupling_inputs((3, 6), seed=4)
    for _ in range(3):
        ops.affine_coupling(x, a, g, b, perm, backend="torch")
    assert len(count_sorts) == 1
    ops.affine_coupling(x, a, g, b, perm.clone(), backend="torch")  # another tensor: checked
    assert len(count_sorts) == 2


def test_modified_perm_is_checked_again(count_sorts):
    x, a, g, b, _ = coupling_inputs((3, 6), seed=4)
    perm = torch.tensor([2, 0, 1, 5, 4, 3])
    y0, _ = ops.affine_coupling(x, a, g, b, perm, backend="torch")
    perm[0], perm[1] = 0, 2  # still a permutation: checked again, and used
    y1, _ = ops.affine_coupling(x, a, g, b, perm, backend="torch")
    assert len(count_sorts) == 2
    torch.testing.assert_close(y1[:, 0], y0[:, 1], atol=0, rtol=0)
    perm[3] = 0  # channel 0 twice
    with pytest.raises(ValueError, match="perm must be a permutation"):
        ops.affine_coupling(x, a, g, b, perm, backend="torch")
    view = perm[:]  # a write through a view bumps the shared version counter
    perm[3] = 5
    ops.affine_coupling(x, a, g, b, perm, backend="torch")
    view[4] = 5
    with pytest.raises(ValueError, match="perm must be a permutation"):
        ops.affine_coupling(x, a, g, b, perm, backend="torch")


def test_a_freed_perm_leaves_no_verdict_behind():
    """A verdict dies with its tensor, so a new tensor that reuses the id (and even the
    memory) is checked on its own."""
    op_module = importlib.import_module("dadf_fast.ops.affine_coupling")  # the name is the function

    x, a, g, b, _ = coupling_inputs((2, 4), seed=5)
    perm = torch.tensor([3, 1, 0, 2])
    ops.affine_coupling(x, a, g, b, perm, backend="torch")
    key = id(perm)
    assert key in op_module._CHECKED
    del perm
    gc.collect()
    assert key not in op_module._CHECKED
    with pytest.raises(ValueError, match="perm must be a permutation"):
        ops.affine_coupling(x, a, g, b, torch.tensor([3, 3, 0, 2]), backend="torch")


def test_inference_tensor_perm_is_checked_every_call(count_sorts):
    x, a, g, b, _ = coupling_inputs((2, 4), seed=5)
    with torch.inference_mode():
        perm = torch.tensor([3, 1, 0, 2])
    for _ in range(2):
        ops.affine_coupling(x, a, g, b, perm, backend="torch")
    assert len(count_sorts) == 2


# ------------------------------------------------------------------ determinism

DETERMINISM_SHAPE = {"triton": (2, 10, 5, 3), "cpp": (3, 40, 33, 31)}  # several blocks per sample


@pytest.mark.parametrize("backend,device,dtype", backend_params(OP, backends=("triton", "cpp"), dtypes=(F32,)))
def test_deterministic_bitwise(backend, device, dtype):
    """Log-det and dg/db are reduced over pixels through per-block partials summed in a fixed
    order: two runs (on CPU with 1 and then 2 threads) agree bit for bit."""
    x, a, g, b, perm = coupling_inputs(DETERMINISM_SHAPE[backend], dtype, device, a_std=8.0)
    ins = [t.clone().requires_grad_() for t in (x, a, g, b)]
    gy, gl = torch.randn_like(x), torch.randn(x.shape[0], device=device)
    results = []
    old = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            y, ld = ops.affine_coupling(*ins, perm, backend=backend)
            gr = torch.autograd.grad((y * gy).sum() + (ld * gl).sum(), ins)
            results.append((y, ld) + tuple(gr))
    finally:
        torch.set_num_threads(old)
    for r1, r2 in zip(*results):
        assert torch.equal(r1, r2)


def test_cpp_fibres_deterministic_bitwise(require_backend):
    """Fibres: dg/db are summed per block of fibres (a size set by the shape) in a fixed
    order, so 1 and 2 threads agree bit for bit (2000 x 41: several blocks, several tasks)."""
    require_backend("cpp")
    x, a, g, b, perm = coupling_inputs((2000, 41), a_std=8.0)
    gy, gl = torch.randn_like(x), torch.randn(2000)
    results = []
    old = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            for reverse in (False, True):
                ins = [t.clone().requires_grad_() for t in (x, a, g, b)]
                y, ld = ops.affine_coupling(*ins, perm, reverse=reverse, backend="cpp")
                gr = torch.autograd.grad((y * gy).sum() + (ld * gl).sum(), ins)
                results.append((y, ld) + tuple(gr))
    finally:
        torch.set_num_threads(old)
    for r1, r2 in zip(results[:2], results[2:]):
        for p, q in zip(r1, r2):
            assert torch.equal(p, q)


# ------------------------------------------------------------------ against FrEIA


def _dadf_subnet(cin, cout):
    return nn.Sequential(nn.Conv2d(cin, cin, 3, padding=1, groups=cin), nn.LeakyReLU(0.1), nn.Conv2d(cin, cout, 1))


@pytest.mark.parametrize("backend,device,dtype", CPU_F32)
@pytest.mark.parametrize("c", [3, 10])
def test_matches_freia_allinoneblock(backend, device, dtype, c):
    """The op with FrEIA's subnet output, activated global scale and hard permutation equals
    ``AllInOneBlock`` (values, log-det and the gradients of x and every block parameter)."""
    freia = pytest.importorskip("FrEIA.modules", reason="FrEIA (the test extra) is the truth here")
    bsz, h, w = 2, 5, 3
    np.random.seed(c)  # FrEIA draws its hard permutation with numpy
    blk = freia.AllInOneBlock([(c, h, w)], subnet_constructor=_dadf_subnet, affine_clamping=2.0, permute_soft=False)
    with torch.no_grad():  # move off the identity init so every term matters
        blk.global_scale.add_(0.5 * torch.randn_like(blk.global_scale))
        blk.global_offset.normal_()
        blk.subnet[2].weight.mul_(20.0)
    c1 = c - c // 2
    x = torch.randn(bsz, c, h, w, requires_grad=True)
    dy, dl = torch.randn(bsz, c, h, w), torch.randn(bsz)

    (y_ref,), ld_ref = blk((x,), rev=False, jac=True)
    params = [x, blk.global_scale, blk.global_offset, *blk.subnet.parameters()]
    g_ref = torch.autograd.grad((y_ref * dy).sum() + (ld_ref * dl).sum(), params)

    a = blk.subnet(x[:, :c1])
    g = 0.1 * F.softplus(blk.global_scale.view(c), beta=0.5)
    b = blk.global_offset.view(c)
    perm = blk.w_perm[:, :, 0, 0].argmax(dim=1)
    y, ld = ops.affine_coupling(x, a, g, b, perm, clamp=blk.clamp, backend=backend)
    got = torch.autograd.grad((y * dy).sum() + (ld * dl).sum(), params)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ld, ld_ref, rtol=1e-5, atol=1e-5)
    for p, q in zip(got, g_ref):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-5)

    # inverse: FrEIA's rev pass recovers x1 itself; here x1 is known, so a is the same
    with torch.no_grad():
        (x_rev,), ld_rev = blk((y_ref,), rev=True, jac=True)
        x_inv, ld_inv = ops.affine_coupling(y_ref, a, g, b, perm, clamp=blk.clamp, reverse=True, backend=backend)
    torch.testing.assert_close(x_inv, x_rev, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x_inv, x.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ld_inv, ld_rev, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ errors and dispatch


@pytest.mark.parametrize("backend", implementing(OP))
def test_single_channel_rejected(backend):
    x, a = torch.randn(2, 1, 5, 3), torch.randn(2, 0, 5, 3)
    g, b, perm = torch.ones(1), torch.zeros(1), torch.zeros(1, dtype=torch.int64)
    with pytest.raises(ValueError, match="at least 2 channels"):
        ops.affine_coupling(x, a, g, b, perm, backend=backend)


@pytest.mark.parametrize("backend", implementing(OP))
def test_bad_arguments_are_named(backend):
    """Validated once, in the op, before any backend runs (random corruptions of every
    argument: test_fuzz_invalid.py)."""
    x, a, g, b, _ = coupling_inputs((2, 5, 5, 3))
    with pytest.raises(ValueError, match="a must have shape"):
        ops.affine_coupling(x, a[:, :1], g, b, torch.arange(5), backend=backend)
    with pytest.raises(TypeError, match="int64"):
        ops.affine_coupling(x, a, g, b, torch.arange(5, dtype=torch.int32), backend=backend)
    for bad in ([0, 1, 2, 3, 5], [0, 1, 2, 3, -1], [0, 1, 2, 3, 3]):
        with pytest.raises(ValueError, match="perm must be a permutation"):
            ops.affine_coupling(x, a, g, b, torch.tensor(bad), backend=backend)
    with pytest.raises(ValueError, match="clamp"):
        ops.affine_coupling(x, a, g, b, torch.arange(5), clamp=0.0, backend=backend)


@pytest.mark.parametrize("backend,shape", [(b, s) for b in implementing(OP) for s in [(2, 5, 5, 3), (9, 5)]
                                           if len(s) == 4 or (b, "cpu") not in FOUR_D_ONLY])
def test_validate_args_false_gives_the_same_result(backend, shape):
    x, a, g, b, perm = coupling_inputs(shape, dtype=F64 if backend != "triton" else F32)
    for reverse in (False, True):
        want = ops.affine_coupling(x, a, g, b, perm, clamp=1.9, reverse=reverse, backend=backend)
        got = ops.affine_coupling(x, a, g, b, perm, clamp=1.9, reverse=reverse, backend=backend, validate_args=False)
        assert torch.equal(want[0], got[0]) and torch.equal(want[1], got[1])


@pytest.mark.parametrize("backend", implementing(OP))
def test_validate_args_false_still_checks_layout_shape_and_dtype(backend):
    """What a user's subnet returns is checked on every call: a of another shape or dtype."""
    x, a, g, b, perm = coupling_inputs((2, 5, 5, 3))
    with pytest.raises(ValueError, match="a must have shape"):
        ops.affine_coupling(x, a[:, :2], g, b, perm, backend=backend, validate_args=False)
    with pytest.raises(TypeError, match="a has dtype torch.float64 but x has torch.float32"):
        ops.affine_coupling(x, a.double(), g, b, perm, backend=backend, validate_args=False)
    with pytest.raises(ValueError, match="x must be 4-D"):
        ops.affine_coupling(x[0], a[0], g, b, perm, backend=backend, validate_args=False)
    with pytest.raises(TypeError, match="validate_args must be True or False"):
        ops.affine_coupling(x, a, g, b, perm, backend=backend, validate_args=0)


def test_blocks_validate_once_not_per_call(monkeypatch):
    """The nn modules call the op with validate_args=False (their perm is checked when set or
    loaded, their clamp at construction): the per-call sort-check and g > 0 check do not run."""
    from dadf_fast.nn import AllInOneBlock, AllInOneCoupling
    mod = importlib.import_module("dadf_fast.ops.affine_coupling")  # the module, not the op it exports
    calls = []
    monkeypatch.setattr(mod, "_check_args", lambda *args: calls.append(args))
    blk = AllInOneBlock([(6,)], subnet_constructor=lambda ci, co: nn.Linear(ci, co))
    step = AllInOneCoupling(6)
    with torch.no_grad():
        blk((torch.randn(4, 6),))
        step(torch.randn(2, 6, 3, 3))
    assert calls == []
    with pytest.raises(ValueError, match="affine_clamping must be a finite number > 0"):
        AllInOneCoupling(6, affine_clamping=0.0)


def test_triton_refuses_float64_and_auto_never_picks_the_interpreter():
    with pytest.raises(BackendUnavailable, match="float32"):
        ops.affine_coupling(*coupling_inputs((2, 4, 5, 3), F64), backend="triton")
    assert ops.selected_backend(OP, "auto", "cpu", F32) != "triton"


@pytest.mark.gpu
def test_auto_selects_triton_on_cuda():
    for dt in (torch.float32, torch.float16, torch.bfloat16):
        assert ops.selected_backend(OP, "auto", "cuda", dt) == "triton"


# ------------------------------------------------------------------ torch.library / torch.compile


def test_opcheck_cpp(require_backend):
    require_backend("cpp")
    import dadf_fast.kernels.cpp.ops  # noqa: F401  (registers the fake kernels and autograd)

    ops_ = torch.ops.dadf_fast
    x, a, g, b, perm = coupling_inputs((2, 5, 3, 4), F64)
    grad_inputs = [t.clone().requires_grad_() for t in (x, a, g, b)]
    for reverse in (False, True):
        torch.library.opcheck(ops_.affine_coupling_fwd.default, (*grad_inputs, perm, 2.0, 0.1, reverse, True))
    torch.library.opcheck(ops_.affine_coupling_fwd.default, (x, a, g, b, perm, 2.0, 0.1, False, False))
    torch.library.opcheck(ops_.affine_coupling_bwd.default,
                          (torch.randn_like(x), torch.randn(2, dtype=x.dtype), x, a, g, b, perm, 2.0, 0.1, False))
    torch.library.opcheck(ops_.affine_coupling_bwd.default,
                          (torch.randn_like(x), None, x, a, g, b, perm, 2.0, 0.1, True))
    # fibres [N, C]
    x, a, g, b, perm = coupling_inputs((7, 5), F64)
    grad_inputs = [t.clone().requires_grad_() for t in (x, a, g, b)]
    for reverse in (False, True):
        torch.library.opcheck(ops_.affine_coupling_fwd.default, (*grad_inputs, perm, 2.0, 0.1, reverse, True))
    torch.library.opcheck(ops_.affine_coupling_fwd.default, (x, a, g, b, perm, 2.0, 0.1, True, False))
    torch.library.opcheck(ops_.affine_coupling_bwd.default,
                          (torch.randn_like(x), torch.randn(7, dtype=x.dtype), x, a, g, b, perm, 2.0, 0.1, True))


def test_opcheck_triton(require_backend):
    require_backend("triton")
    import dadf_fast.kernels.triton.affine_coupling  # noqa: F401  (registers the custom op)

    x, a, g, b, perm = coupling_inputs((1, 3, 2, 3))
    ins = [t.requires_grad_() for t in (x, a, g, b)]
    for reverse in (False, True):
        torch.library.opcheck(torch.ops.dadf_fast_triton.affine_coupling.default, (*ins, perm, 2.0, 0.1, reverse))


def _compile_matches_eager(backend, x, a, g, b, perm, compiler):
    """A forward + inverse step through ``ops.affine_coupling(backend=...)`` compiled with
    ``fullgraph=True`` gives eager's loss and gradients."""
    import torch._dynamo

    def step(x, a, g, b, perm):
        y, ld = ops.affine_coupling(x, a, g, b, perm, backend=backend)
        z, ld2 = ops.affine_coupling(y, a, g, b, perm, reverse=True, backend=backend)
        return 0.5 * (y * y).sum() - ld.sum() + (z * z).sum() + ld2.sum()

    # eager first: it also resolves the backend (the dispatcher's first resolution may import
    # the kernel module, which Dynamo does not trace; later calls are a cache lookup)
    leaves_e = [t.detach().requires_grad_() for t in (x, a, g, b)]
    loss_e = step(*leaves_e, perm)
    grads_e = torch.autograd.grad(loss_e, leaves_e)
    torch._dynamo.reset()
    compiled = torch.compile(step, fullgraph=True, backend=compiler)
    leaves = [t.detach().requires_grad_() for t in (x, a, g, b)]
    loss = compiled(*leaves, perm)
    grads = torch.autograd.grad(loss, leaves)
    torch.testing.assert_close(loss, loss_e, rtol=1e-5, atol=1e-5)
    for p, q in zip(grads, grads_e):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-5)
    torch._dynamo.reset()


@pytest.mark.parametrize("backend,device,dtype", backend_params(OP, backends=("triton", "cpp"), dtypes=(F32,)))
def test_torch_compile_fullgraph(backend, device, dtype):
    """``ops.affine_coupling(backend=...)`` forward and inverse inside
    ``torch.compile(fullgraph=True)`` (the custom op's fake kernel and registered autograd);
    ``aot_eager`` on CPU (Inductor's C++ code generation is slow on a 2-core machine)."""

    x, a, g, b, perm = coupling_inputs((2, 5, 5, 3), dtype, device)
    # resolve the backend eagerly: the dispatcher's lazy loader imports the kernel module on
    # first use, and Dynamo does not trace importlib
    assert ops.selected_backend(OP, backend, device, dtype) == backend

    _compile_matches_eager(backend, x, a, g, b, perm, "inductor" if device == "cuda" else "aot_eager")


def test_torch_compile_fullgraph_fibres(require_backend):
    """x [N, C] through the cpp op inside ``torch.compile(fullgraph=True)`` (the fake kernel
    takes 2-D), forward, inverse and gradients against eager."""
    require_backend("cpp")

    x, a, g, b, perm = coupling_inputs((9, 7), seed=6)
    assert ops.selected_backend(OP, "cpp", "cpu", F32, permutation="hard", ndim=2) == "cpp"

    _compile_matches_eager("cpp", x, a, g, b, perm, "aot_eager")


# ------------------------------------------------------------------ the reference


def _freia_block(c, dtype=F64, seed=0):
    freia = pytest.importorskip("FrEIA.modules", reason="FrEIA (the test extra) is the truth here")
    torch.manual_seed(seed)
    blk = freia.AllInOneBlock([(c, 5, 7)], subnet_constructor=lambda ci, co: coupling_subnet(ci, co, 3),
                              affine_clamping=2.0, permute_soft=False)
    with torch.no_grad():  # move away from the identity-ish init so every term matters
        blk.global_scale.add_(torch.randn_like(blk.global_scale))
        blk.global_offset.normal_()
        for p in blk.subnet.parameters():
            p.normal_(0, 0.5)
    return blk.to(dtype)


@pytest.mark.parametrize("c", [2, 3, 7, 10])
@pytest.mark.parametrize("dtype,tol", [(F64, 1e-10), (F32, 1e-5)])
def test_reference_matches_freia(c, dtype, tol):
    blk = _freia_block(c, dtype=dtype)
    x = torch.randn(3, c, 5, 7, dtype=dtype)
    (y_ref,), ld_ref = blk([x])
    a = blk.subnet(x[:, :c - c // 2])
    g = blk.global_scale_activation(blk.global_scale).reshape(c)
    b = blk.global_offset.reshape(c)
    perm = blk.w_perm.reshape(c, c).argmax(dim=1)
    y, ld = reference.affine_coupling(x, a, g, b, perm)
    torch.testing.assert_close(y, y_ref, atol=tol, rtol=tol)
    torch.testing.assert_close(ld, ld_ref, atol=tol * 10, rtol=tol)
    # reverse: FrEIA inverts y; the reference inverts given the same subnet output
    (x_ref,), ldr_ref = blk([y_ref], rev=True)
    xr, ldr = reference.affine_coupling(y_ref, a, g, b, perm, reverse=True)
    torch.testing.assert_close(xr, x_ref, atol=tol * 10, rtol=tol)
    torch.testing.assert_close(xr, x, atol=tol * 10, rtol=tol)
    torch.testing.assert_close(ldr, ldr_ref, atol=tol * 10, rtol=tol)


def test_reference_logdet_is_log_abs_det_jacobian():
    torch.manual_seed(1)
    c, h, w = 5, 2, 3
    x = torch.randn(1, c, h, w, dtype=F64)
    a = torch.randn(1, 2 * (c // 2), h, w, dtype=F64) * 5  # large enough to hit the tanh clamp
    g = torch.rand(c, dtype=F64) + 0.5
    b = torch.randn(c, dtype=F64)
    perm = torch.randperm(c)
    _, ld = reference.affine_coupling(x, a, g, b, perm)
    jac = torch.autograd.functional.jacobian(lambda t: reference.affine_coupling(t, a, g, b, perm)[0], x)
    sign, logabs = torch.linalg.slogdet(jac.reshape(c * h * w, c * h * w))
    assert sign != 0
    torch.testing.assert_close(ld[0], logabs, atol=1e-9, rtol=1e-9)


def test_reference_permutation_semantics():
    """Output channel i takes channel perm[i] (checked with a = 0, g = 1, b = 0: identity coupling)."""
    c = 6
    x = torch.arange(c, dtype=F64).view(1, c, 1, 1).expand(2, c, 3, 3).contiguous()
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    y, ld = reference.affine_coupling(x, torch.zeros(2, c, 3, 3, dtype=F64), torch.ones(c, dtype=F64),
                                      torch.zeros(c, dtype=F64), perm)
    assert y[0, :, 0, 0].tolist() == [3.0, 0.0, 5.0, 1.0, 4.0, 2.0]
    assert ld.tolist() == [0.0, 0.0]


@pytest.mark.parametrize("dtype", [F64, F32])
def test_reference_permutation_gather_equals_freia_dense_conv_bit_for_bit(dtype):
    """The reference permutes with a gather; FrEIA with a dense 1x1 conv by its 0/1 ``w_perm``.
    On finite input the two are the same numbers (torch.equal), forward and reverse."""
    blk = _freia_block(7, dtype=dtype)
    v = torch.randn(3, 7, 5, 7, dtype=dtype) * 100
    c = v.shape[1]
    perm = blk.w_perm.reshape(c, c).argmax(dim=1)
    zeros_a = torch.zeros(3, 2 * (c // 2), 5, 7, dtype=dtype)  # s = t = 0: coupling is the identity
    ones, zeros = torch.ones(c, dtype=dtype), torch.zeros(c, dtype=dtype)
    y, _ = reference.affine_coupling(v, zeros_a, ones, zeros, perm)
    assert torch.equal(y, F.conv2d(v, blk.w_perm))
    assert torch.equal(reference.permutation_matrix(perm, dtype), blk.w_perm.reshape(c, c))
    xr, _ = reference.affine_coupling(v, zeros_a, ones, zeros, perm, reverse=True)
    assert torch.equal(xr, F.conv2d(v, blk.w_perm_inv))


def test_reference_non_finite_values_stay_local_unlike_the_dense_conv():
    """The contract (see ops.affine_coupling): an inf goes where the permutation sends it;
    FrEIA's dense conv would turn the other channels of that pixel into NaN (0 * inf).  Every
    backend against this: test_fuzz_valid.py::test_affine_coupling_non_finite_values_stay_local."""
    c = 4
    perm = torch.tensor([2, 0, 3, 1])
    v = torch.arange(1.0, 1.0 + c).view(1, c, 1, 1).repeat(1, 1, 2, 2)
    v[0, 3, 1, 0] = float("inf")
    y, ld = reference.affine_coupling(v, torch.zeros(1, 4, 2, 2), torch.ones(c), torch.zeros(c), perm)
    assert y[0, :, 1, 0].tolist() == [3.0, 1.0, float("inf"), 2.0]
    assert y[0, :, 0, 0].tolist() == [3.0, 1.0, 4.0, 2.0]
    assert ld.tolist() == [0.0]
    dense = F.conv2d(v, reference.permutation_matrix(perm)[:, :, None, None])
    assert bool(torch.isnan(dense[0, :, 1, 0]).any())  # what the contract rules out
