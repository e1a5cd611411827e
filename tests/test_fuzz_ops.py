"""Property-based fuzz suite of the public ops (``dadf_fast.ops``), with hypothesis.

Every op runs on every backend that implements it (``dadf_fast.backends()``) on random valid
inputs: odd, non-power-of-two and size-1 dims; transposed, sliced, strided and stride-0
expanded views (the bytes around a view are NaN, so a read outside it shows); float32,
float64 and float16 where the backend runs them on CPU; random, identity and reversed
permutations; clamp and a_scale values; forward and reverse.  Outputs and the gradients of
every differentiable input are compared with the reference evaluated in float64 on the same
(dtype-rounded) values; the inputs must come back unchanged.  Random invalid inputs must
raise ValueError/TypeError (BackendUnavailable for a backend that cannot run them) with a
message naming the argument, never crash and never return a value.

An unavailable backend is skipped here, but fails under ``CI`` (the suite must not shrink).

Tolerances.  The allowed max error of an output is the larger of
``TOL[dtype] * max(1, max|truth|)`` and ``K_EAGER`` times the error of the eager reference
run in float32 on contiguous copies, rescaled to the dtype's epsilon: the second term is the
conditioning of the example (a large softmax score or ``exp(clamp)`` amplifies rounding), so
a backend may be as inaccurate as plain torch on a badly conditioned example, never much
more.  Where a backend legitimately rounds differently from the reference, the sum of
|terms| behind each element is added (times ``K_MAG * eps``): dual attention's fused
backward uses another identity (:func:`attention_magnitudes`), and the coupling's
``1 - tanh^2`` cancels at saturation (:func:`coupling_da_magnitude`).

Profiles (registered in tests/conftest.py):

* ``ci`` (default): derandomized, the same examples on every run: 50 examples per op,
  backend and property (8 on the slow Triton interpreter), 4 per invalid-input kind; the
  file takes about 40 s on a 2-core CPU.
* ``deep``: 10 times as many, new random examples on every run (about 6 minutes); a
  failure prints the ``@reproduce_failure`` blob to replay it::

      HYPOTHESIS_PROFILE=deep python -m pytest -q tests/test_fuzz_ops.py
      python -m pytest -q tests/test_fuzz_ops.py --hypothesis-profile=deep   # the same
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

import dadf_fast
from dadf_fast import ops, reference
from dadf_fast.kernels.registry import BackendUnavailable

F16, F32, F64 = torch.float16, torch.float32, torch.float64
TOL = {F64: 1e-10, F32: 1e-5, F16: 2e-3}
EPS = {dt: torch.finfo(dt).eps for dt in (F16, F32, F64)}
K_EAGER = 8
K_MAG = 4

OP_NAMES = ("dual_attention", "affine_coupling", "flow_nll", "multiscale_score")
# dtypes each backend runs on CPU tensors (the contract: float32 everywhere; float64 on the
# torch and cpp backends; float16 where the computation is float32 rounded once: the Triton
# kernels, and the torch reference of the float32-accumulating ops)
DTYPES = {
    ("dual_attention", "torch"): (F32, F64),
    ("dual_attention", "triton"): (F32, F16),
    ("affine_coupling", "torch"): (F32, F64, F16),
    ("affine_coupling", "triton"): (F32, F16),
    ("affine_coupling", "cpp"): (F32, F64),
    ("flow_nll", "torch"): (F32, F64, F16),
    ("flow_nll", "cpp"): (F32, F64),
    ("multiscale_score", "torch"): (F32, F64, F16),
    ("multiscale_score", "cpp"): (F32, F64),
}
# what each backend must refuse with BackendUnavailable on CPU tensors
UNSUPPORTED = {
    ("dual_attention", "triton"): (F64, torch.bfloat16),
    ("affine_coupling", "triton"): (F64, torch.bfloat16),
    ("affine_coupling", "cpp"): (F16, torch.bfloat16),
    ("flow_nll", "cpp"): (F16, torch.bfloat16),
    ("multiscale_score", "cpp"): (F16, torch.bfloat16),
}


def _implementing(op_name):
    report = dadf_fast.backends()
    return [b for b in report if op_name in report[b]["ops"]]


BACKENDS = {op: _implementing(op) for op in OP_NAMES}


def budget(n_ci: int) -> int:
    """Examples for a test worth ``n_ci`` examples in the ci profile, scaled by the profile."""
    return max(1, round(n_ci * settings().max_examples / settings.get_profile("ci").max_examples))


FULL = 50  # torch and cpp: milliseconds per example
SLOW = 8  # the Triton interpreter: up to a second or two per example


def fuzz(backend, cases, check):
    """Run ``check(case)`` on ``cases`` (a strategy), with the example budget of ``backend``."""

    @settings(max_examples=budget(SLOW if backend == "triton" else FULL))
    @given(case=cases)
    def run(case):
        check(case)

    run()


def test_every_backend_of_every_op_is_fuzzed():
    """A backend added to an op must get a row in DTYPES (and so be fuzzed here)."""
    assert {(op, be) for op in OP_NAMES for be in BACKENDS[op]} == set(DTYPES)
    assert set(OP_NAMES) == {op.name for op in ops.OPS}


@pytest.fixture(autouse=True)
def _backend_must_run(request):
    """Skip a test whose ``backend`` cannot run on CPU tensors here; fail under CI."""
    backend = getattr(getattr(request.node, "callspec", None), "params", {}).get("backend")
    if backend is not None:
        request.getfixturevalue("require_backend")(backend)


# ----------------------------------------------------------------------- tensors and layouts


@dataclass(frozen=True)
class Layout:
    """How a logical tensor sits in memory: its dims stored in ``order`` (outermost first),
    dim d taking every ``steps[d]``-th element from ``offsets[d]`` of a NaN-filled buffer
    with ``tails[d]`` more elements after the last one, and the dims in ``expand`` broadcast
    from size 1 (stride 0)."""

    order: tuple
    steps: tuple
    offsets: tuple
    tails: tuple
    expand: tuple

    @staticmethod
    def contiguous(ndim):
        return Layout(tuple(range(ndim)), (1,) * ndim, (0,) * ndim, (0,) * ndim, (False,) * ndim)


@st.composite
def layouts(draw, ndim, expand=True):
    """Contiguous (what shrinking goes to), or random order, steps, offsets, gaps and
    stride-0 dims."""
    if draw(st.booleans()):
        return Layout.contiguous(ndim)

    def per_dim(strategy):
        return tuple(draw(st.lists(strategy, min_size=ndim, max_size=ndim)))

    order = tuple(draw(st.permutations(range(ndim))))
    exp = per_dim(st.booleans()) if expand else (False,) * ndim
    return Layout(order, per_dim(st.integers(1, 3)), per_dim(st.integers(0, 2)), per_dim(st.integers(0, 1)), exp)


@dataclass
class Arg:
    """One tensor argument: its float64 values (already rounded to ``dtype``), the view the
    op receives, and the buffer behind it (to check that nothing was written)."""

    values: torch.Tensor
    view: torch.Tensor
    buffer: torch.Tensor
    n_pad_nan: int

    def unchanged(self) -> bool:
        inside = torch.equal(self.view.detach().double(), self.values)
        if not self.buffer.dtype.is_floating_point:
            return inside
        return inside and int(torch.isnan(self.buffer.detach()).sum()) == self.n_pad_nan


def make_arg(gen, shape, layout, dtype, std=1.0, requires_grad=False, values=None, positive=False):
    """A tensor of ``shape`` and ``dtype`` laid out as ``layout``.

    Values: ``values`` ([shape], float64) when given (broadcast dims must then be constant),
    else ``std * N(0, 1)`` (``exp(std * U(-1, 1))`` when ``positive``) drawn from ``gen``.
    """
    src_shape = [1 if e else n for n, e in zip(shape, layout.expand)]
    if values is None:
        if positive:
            src = torch.exp(std * (2 * torch.rand(src_shape, generator=gen, dtype=F64) - 1))
        else:
            src = std * torch.randn(src_shape, generator=gen, dtype=F64)
    else:
        src = values[tuple(slice(0, 1) if e else slice(None) for e in layout.expand)]
    src = src.to(dtype)
    nd = len(shape)
    span = [off + max(n - 1, 0) * st_ + min(n, 1) + tail
            for n, st_, off, tail in zip(src_shape, layout.steps, layout.offsets, layout.tails)]
    pad = float("nan") if dtype.is_floating_point else -7
    buf = torch.full([max(span[d], 1) for d in layout.order], pad, dtype=dtype)
    inv = tuple(int(i) for i in np.argsort(layout.order))
    idx = tuple(slice(off, off + (n - 1) * st_ + 1, st_) if n > 0 else slice(off, off)
                for n, st_, off in zip(src_shape, layout.steps, layout.offsets))
    buf.permute(inv)[idx].copy_(src)
    n_pad = buf.numel() - src.numel()
    if requires_grad:
        buf.requires_grad_()
    view = buf.permute(inv)[idx].expand(shape)
    assert view.shape == tuple(shape) and nd == view.dim()
    assert view.is_contiguous() or layout != Layout.contiguous(nd)
    return Arg(src.double().expand(shape).contiguous(), view, buf, n_pad)


def leaves(args, dtype):
    """Contiguous leaf copies of the args' values in ``dtype``, requiring grad."""
    return [a.values.to(dtype).contiguous().requires_grad_() for a in args]


def check_close(name, got, truth, eager32, dtype, mag=None):
    """``got`` (the backend, ``dtype``) against ``truth`` (float64 reference); ``eager32`` is
    the float32 reference on contiguous copies (the conditioning of the example).  ``mag``
    (like truth) bounds the sum of |terms| behind each element, for a backend that sums in
    another order or by another identity than the reference: it may be off by
    ``K_MAG * eps * mag`` more."""
    assert got is not None, f"{name}: no gradient (the input is not differentiable through the op)"
    assert got.dtype == dtype, f"{name}: dtype {got.dtype}, expected {dtype}"
    assert tuple(got.shape) == tuple(truth.shape), f"{name}: shape {tuple(got.shape)}, expected {tuple(truth.shape)}"
    if truth.numel() == 0:
        return
    g = got.detach().double()
    assert torch.isfinite(g).all(), f"{name}: non-finite values where the reference is finite"
    diff = (g - truth).abs()
    if mag is not None:
        diff = (diff - K_MAG * EPS[dtype] * mag).clamp_min(0)
    err = diff.max().item()
    floor = TOL[dtype] * max(1.0, truth.abs().max().item())
    cond = K_EAGER * (eager32.detach().double() - truth).abs().max().item() * EPS[dtype] / EPS[F32]
    allowed = max(floor, cond)
    assert err <= allowed, (f"{name} ({dtype}): max error {err:.3g} > allowed {allowed:.3g} "
                            f"(floor {floor:.3g}, eager-conditioning {cond:.3g})")


def grads(outputs, upstream, inputs):
    """Gradients of ``sum(out * up)`` over the outputs and upstreams that are not None
    w.r.t. ``inputs``."""
    loss = sum((o * u).sum() for o, u in zip(outputs, upstream) if o is not None and u is not None)
    return torch.autograd.grad(loss, inputs, allow_unused=True)


def seeds():
    return st.integers(0, 2**31 - 1)


# ----------------------------------------------------------------------------- dual_attention


@st.composite
def attention_cases(draw, backend):
    slow = backend == "triton"
    dtype = draw(st.sampled_from(DTYPES[("dual_attention", backend)]))
    bsz, heads = draw(st.integers(1, 2)), draw(st.integers(1, 2 if slow else 3))
    if draw(st.integers(0, 9)) == 0:  # the widest head dims, with few tokens
        n, d = draw(st.integers(1, 3)), draw(st.integers(200, 256))
    else:
        n, d = draw(st.integers(1, 24 if slow else 40)), draw(st.integers(1, 40 if slow else 64))
    scale = draw(st.one_of(st.none(), st.floats(0.01, 3.0)))
    stds = [draw(st.sampled_from([0.3, 1.0, 2.5])) for _ in range(5)]
    lays = [draw(layouts(4)) for _ in range(5)]
    alias = draw(st.sampled_from(["none", "kx=qx", "kx=vx=qx", "vm=qm"]))
    return dict(dtype=dtype, shape=(bsz, heads, n, d), scale=scale, stds=stds, layouts=lays, alias=alias,
                seed=draw(seeds()))


# which of five drawn tensors each argument (qx, kx, vx, qm, vm) is: the same tensor may be
# passed as several arguments (self-attention with shared q/k/v), its gradient then summing
ALIASES = {"none": (0, 1, 2, 3, 4), "kx=qx": (0, 0, 2, 3, 4), "kx=vx=qx": (0, 0, 0, 3, 4), "vm=qm": (0, 1, 2, 3, 3)}


def attention_magnitudes(ins, up, scale, pick):
    """Sums of |terms| behind ``(ox, om, d_qx, d_kx, d_vx, d_qm, d_vm)`` (float64).

    A fused backward takes ``delta = rowsum(dO * O)`` where the reference takes
    ``rowsum(dP * P)``: equal in exact arithmetic, they round differently, and with one key
    (``P = 1``) the exact ``dS`` is 0 while the fused one is rounding noise of ``|dO||V|``.
    """
    qx, kx, vx, qm, vm = ins
    sc = scale if scale is not None else qx.shape[-1] ** -0.5
    per = {}
    for s, q, v, do in (("x", qx, vx, up[0].double()), ("m", qm, vm, up[1].double())):
        p = torch.softmax(sc * q @ kx.transpose(-1, -2), dim=-1)
        per["o" + s] = p @ v.abs()
        ds = p * (do.abs() @ v.abs().transpose(-1, -2) + (do.abs() * per["o" + s]).sum(-1, keepdim=True))
        per["dq" + s] = sc * ds @ kx.abs()
        per["dk" + s] = sc * ds.transpose(-1, -2) @ q.abs()
        per["dv" + s] = p.transpose(-1, -2) @ do.abs()
    grad = [per["dqx"], per["dkx"] + per["dkm"], per["dvx"], per["dqm"], per["dvm"]]
    # an argument passed several times gets the sum of its gradients
    return [per["ox"], per["om"]] + [sum(grad[j] for j in range(5) if pick[j] == pick[i]) for i in range(5)]


@pytest.mark.parametrize("backend", BACKENDS["dual_attention"])
def test_dual_attention_matches_reference(backend):
    fuzz(backend, attention_cases(backend), lambda case: _dual_attention_matches_reference(backend, case))


def _dual_attention_matches_reference(backend, case):
    dtype, pick = case["dtype"], ALIASES[case["alias"]]
    gen = torch.Generator().manual_seed(case["seed"])
    args = [make_arg(gen, case["shape"], lay, dtype, std, requires_grad=True)
            for lay, std in zip(case["layouts"], case["stds"])]
    up = [torch.randn(case["shape"], generator=gen, dtype=F64).to(dtype) for _ in range(2)]

    views = [args[i].view for i in pick]
    out = ops.dual_attention(*views, scale=case["scale"], backend=backend)
    got = list(out) + list(grads(out, up, views))

    def run_reference(dt):
        ls = leaves(args, dt)
        ins = [ls[i] for i in pick]
        o = reference.dual_attention(*ins, scale=case["scale"])
        return list(o) + list(grads(o, [u.to(dt) for u in up], ins))

    truth, eager = run_reference(F64), run_reference(F32)
    mags = attention_magnitudes([args[i].values for i in pick], up, case["scale"], pick)
    names = ("ox", "om", "d_qx", "d_kx", "d_vx", "d_qm", "d_vm")
    for name, g, t, e, m in zip(names, got, truth, eager, mags):
        check_close(name, g, t, e, dtype, m)
    assert all(a.unchanged() for a in args), "an input was modified"


# ---------------------------------------------------------------------------- affine_coupling


@st.composite
def coupling_cases(draw, backend):
    slow = backend == "triton"
    dtype = draw(st.sampled_from(DTYPES[("affine_coupling", backend)]))
    bsz, c = draw(st.integers(1, 3)), draw(st.integers(2, 9 if slow else 17))
    h, w = draw(st.integers(1, 5 if slow else 7)), draw(st.integers(1, 5 if slow else 7))
    kind = draw(st.sampled_from(["random", "identity", "reversal"]))
    perm = {"random": lambda: draw(st.permutations(range(c))), "identity": lambda: list(range(c)),
            "reversal": lambda: list(range(c))[::-1]}[kind]()
    # float16 stays finite: |x2 * exp(s) + t| and its inverse below ~1e4 with clamp <= 3
    clamp = draw(st.one_of(st.just(2.0), st.floats(0.05, 3.0 if dtype == F16 else 5.0)))
    a_scale = draw(st.one_of(st.just(0.1), st.floats(-1.0, 1.0)))
    return dict(
        dtype=dtype, shape=(bsz, c, h, w), perm=list(perm), perm_layout=draw(layouts(1, expand=False)),
        clamp=clamp, a_scale=a_scale, reverse=draw(st.booleans()), compute_logdet=draw(st.booleans()),
        x_std=draw(st.sampled_from([0.5, 1.0, 4.0])), a_std=draw(st.sampled_from([0.1, 1.0, 10.0, 40.0])),
        g_log_range=draw(st.sampled_from([0.0, 0.5, 1.2])), b_std=draw(st.sampled_from([0.0, 1.0, 3.0])),
        layouts=[draw(layouts(4)), draw(layouts(4)), draw(layouts(1)), draw(layouts(1))], seed=draw(seeds()),
    )


def _coupling_args(case, requires_grad=True):
    gen = torch.Generator().manual_seed(case["seed"])
    bsz, c, h, w = case["shape"]
    dt, (lx, la, lg, lb) = case["dtype"], case["layouts"]
    x = make_arg(gen, (bsz, c, h, w), lx, dt, case["x_std"], requires_grad)
    a = make_arg(gen, (bsz, 2 * (c // 2), h, w), la, dt, case["a_std"], requires_grad)
    g = make_arg(gen, (c,), lg, dt, case["g_log_range"], requires_grad, positive=True)
    b = make_arg(gen, (c,), lb, dt, case["b_std"], requires_grad)
    perm = make_arg(gen, (c,), case["perm_layout"], torch.int64, values=torch.tensor(case["perm"], dtype=F64))
    return x, a, g, b, perm


def coupling_da_magnitude(x, a, g, perm, case, up, y):
    """Sum of |terms| behind ``da`` (float64): the scale half's derivative
    ``clamp * a_scale * (1 - tanh^2) * dL/ds`` cancels where tanh saturates, so its float32
    rounding is ``eps * 2 * clamp * |a_scale| * |dL/ds|`` whichever way a backend computes it."""
    c = x.shape[1]
    c1 = c - c // 2
    clamp, a_scale = case["clamp"], case["a_scale"]
    if case["reverse"]:  # the output's second half is (u2 - t) * exp(-s)
        dl_ds = (up[0].double()[:, c1:] * y[:, c1:]).abs()
    else:  # through the permutation (a gather) and the global scale, to x2 * exp(s)
        du2 = (up[0].double()[:, torch.argsort(perm)] * g.view(1, -1, 1, 1))[:, c1:]
        dl_ds = (du2 * x[:, c1:] * torch.exp(clamp * torch.tanh(a_scale * a[:, :c // 2]))).abs()
    if case["compute_logdet"]:
        dl_ds = dl_ds + up[1].double().abs().view(-1, 1, 1, 1)
    return torch.cat([2 * clamp * abs(a_scale) * dl_ds, torch.zeros_like(dl_ds)], dim=1)


@pytest.mark.parametrize("backend", BACKENDS["affine_coupling"])
def test_affine_coupling_matches_reference(backend):
    fuzz(backend, coupling_cases(backend), lambda case: _affine_coupling_matches_reference(backend, case))


def _affine_coupling_matches_reference(backend, case):
    dtype, (bsz, c, h, w) = case["dtype"], case["shape"]
    x, a, g, b, perm = _coupling_args(case)
    p = perm.view
    gen = torch.Generator().manual_seed(case["seed"] + 1)
    up = [torch.randn(bsz, c, h, w, generator=gen, dtype=F64).to(dtype), torch.randn(bsz, generator=gen, dtype=F64).to(dtype)]
    kw = dict(clamp=case["clamp"], a_scale=case["a_scale"], reverse=case["reverse"])

    views = [t.view for t in (x, a, g, b)]
    y, ld = ops.affine_coupling(*views, p, **kw, backend=backend, compute_logdet=case["compute_logdet"])
    if not case["compute_logdet"]:
        assert ld is None
    got = [y, ld] + list(grads((y, ld), up, views))

    def run_reference(dt):
        ls = leaves((x, a, g, b), dt)
        yr, ldr = reference.affine_coupling(*ls, perm.values.long(), **kw)
        if not case["compute_logdet"]:
            ldr = None
        return [yr, ldr] + list(grads((yr, ldr), [u.to(dt) for u in up], ls))

    truth, eager = run_reference(F64), run_reference(F32)
    mag_da = coupling_da_magnitude(x.values, a.values, g.values, perm.values.long(), case, up, truth[0])
    for name, gt, t, e in zip(("y", "logdet", "dx", "da", "dg", "db"), got, truth, eager):
        if t is None:
            continue
        check_close(name, gt, t, e, dtype, mag_da if name == "da" else None)
    assert all(t.unchanged() for t in (x, a, g, b, perm)), "an input was modified"


@pytest.mark.parametrize("backend", BACKENDS["affine_coupling"])
def test_affine_coupling_reverse_inverts_forward(backend):
    """``reverse(forward(x)) == x`` and the reverse log-det is minus the forward one."""
    fuzz(backend, coupling_cases(backend), lambda case: _affine_coupling_reverse_inverts_forward(backend, case))


def _affine_coupling_reverse_inverts_forward(backend, case):
    dtype = case["dtype"]
    x, a, g, b, perm = _coupling_args(case, requires_grad=False)
    kw = dict(clamp=case["clamp"], a_scale=case["a_scale"], backend=backend)
    y, ld = ops.affine_coupling(x.view, a.view, g.view, b.view, perm.view, **kw)
    x_back, ld_inv = ops.affine_coupling(y, a.view, g.view, b.view, perm.view, reverse=True, **kw)

    # the eager float32 reference's own round trip measures the example's conditioning
    ls = [t.values.float() for t in (x, a, g, b)]
    kr = dict(clamp=case["clamp"], a_scale=case["a_scale"])
    y32, ld32 = reference.affine_coupling(*ls, perm.values.long(), **kr)
    xb32, li32 = reference.affine_coupling(y32, *ls[1:], perm.values.long(), reverse=True, **kr)
    check_close("x_back", x_back, x.values, xb32, dtype)
    ld_truth = reference.affine_coupling(*[t.values for t in (x, a, g, b)], perm.values.long(), **kr)[1]
    check_close("-logdet_reverse", -ld_inv, ld_truth, -li32, dtype)
    check_close("logdet_forward", ld, ld_truth, ld32, dtype)


@pytest.mark.parametrize("backend", BACKENDS["affine_coupling"])
def test_affine_coupling_non_finite_values_stay_local(backend):
    """An inf/NaN in x stays in the one output element it is permuted to, with the
    reference's value there, and never spreads over its pixel's other channels (the
    contract of ``ops.affine_coupling``: the permutation is a gather, not FrEIA's dense
    0/1 convolution); the log-det, a function of a and g, stays finite."""
    fuzz(backend, st.tuples(coupling_cases(backend), st.lists(st.tuples(seeds(), st.sampled_from(
        [float("inf"), float("-inf"), float("nan")])), min_size=1, max_size=3)),
        lambda case: _affine_coupling_non_finite(backend, *case))


def _affine_coupling_non_finite(backend, case, poison):
    dtype, (bsz, c, h, w) = case["dtype"], case["shape"]
    x, a, g, b, perm = _coupling_args(case, requires_grad=False)
    xv = x.view.contiguous()
    for where, value in poison:
        xv.view(-1)[where % xv.numel()] = value
    kw = dict(clamp=case["clamp"], a_scale=case["a_scale"], reverse=case["reverse"])
    y, ld = ops.affine_coupling(xv, a.view, g.view, b.view, perm.view, **kw, backend=backend)
    ins = [xv, a.values, g.values, b.values]
    yt, ldt = reference.affine_coupling(*[t.double() for t in ins], perm.values.long(), **kw)
    ye, lde = reference.affine_coupling(*[t.float() for t in ins], perm.values.long(), **kw)
    bad = ~torch.isfinite(yt)
    assert int(bad.sum()) == int((~torch.isfinite(xv)).sum()), "a non-finite input spread (reference)"
    yd = y.double()
    for what, test in (("NaN", torch.isnan), ("+inf", torch.isposinf), ("-inf", torch.isneginf)):
        assert torch.equal(test(yd), test(yt)), f"{what} positions differ from the reference"
    check_close("y (finite part)", y[~bad], yt[~bad], ye[~bad], dtype)
    check_close("logdet", ld, ldt, lde, dtype)


# ----------------------------------------------------------------------------------- flow_nll


@st.composite
def nll_cases(draw, backend):
    dtype = draw(st.sampled_from(DTYPES[("flow_nll", backend)]))
    bsz = draw(st.integers(1, 4))
    rest = draw(st.lists(st.integers(1, 6), min_size=0, max_size=3))  # [B] too: one value per sample
    shape = (bsz, *rest)
    return dict(dtype=dtype, shape=shape, z_layout=draw(layouts(len(shape))), l_layout=draw(layouts(1)),
                z_std=draw(st.sampled_from([0.1, 1.0, 5.0])), l_std=draw(st.sampled_from([0.0, 10.0, 1000.0])),
                seed=draw(seeds()))


@pytest.mark.parametrize("backend", BACKENDS["flow_nll"])
def test_flow_nll_matches_reference(backend):
    fuzz(backend, nll_cases(backend), lambda case: _flow_nll_matches_reference(backend, case))


def _flow_nll_matches_reference(backend, case):
    dtype, shape = case["dtype"], case["shape"]
    gen = torch.Generator().manual_seed(case["seed"])
    z = make_arg(gen, shape, case["z_layout"], dtype, case["z_std"], requires_grad=True)
    ld = make_arg(gen, shape[:1], case["l_layout"], dtype, case["l_std"], requires_grad=True)
    up = torch.randn(shape[0], generator=gen, dtype=F64).to(dtype)

    out = ops.flow_nll(z.view, ld.view, backend=backend)
    got = [out] + list(grads((out,), (up,), (z.view, ld.view)))

    def run_reference(dt):
        zl, ll = leaves((z, ld), dt)
        o = reference.flow_nll(zl, ll)
        return [o] + list(grads((o,), (up.to(dt),), (zl, ll)))

    truth, eager = run_reference(F64), run_reference(F32)
    for name, g, t, e in zip(("nll", "dz", "dlogdet"), got, truth, eager):
        check_close(name, g, t, e, dtype)
    assert z.unchanged() and ld.unchanged(), "an input was modified"


# --------------------------------------------------------------------------- multiscale_score


@st.composite
def score_cases(draw, backend):
    dtype = draw(st.sampled_from(DTYPES[("multiscale_score", backend)]))
    bsz, n_scales = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    shapes = [(bsz, draw(st.integers(1, 6)), draw(st.integers(1, 9)), draw(st.integers(1, 9))) for _ in range(n_scales)]
    out_size = draw(st.one_of(st.integers(1, 24), st.tuples(st.integers(1, 24), st.integers(1, 24))))
    return dict(dtype=dtype, shapes=shapes, out_size=out_size, reduce=draw(st.sampled_from(["max", "mean"])),
                layouts=[draw(layouts(4)) for _ in shapes], std=draw(st.sampled_from([0.3, 1.0, 3.0])),
                seed=draw(seeds()))


@pytest.mark.parametrize("backend", BACKENDS["multiscale_score"])
def test_multiscale_score_matches_reference(backend):
    fuzz(backend, score_cases(backend), lambda case: _multiscale_score_matches_reference(backend, case))


def _multiscale_score_matches_reference(backend, case):
    dtype = case["dtype"]
    gen = torch.Generator().manual_seed(case["seed"])
    zs = [make_arg(gen, s, lay, dtype, case["std"], requires_grad=True)
          for s, lay in zip(case["shapes"], case["layouts"])]
    amap, score = ops.multiscale_score([z.view for z in zs], case["out_size"], reduce=case["reduce"], backend=backend)
    # gradients through the map, and through the score for reduce="mean"; the max's gradient
    # goes to the arg-max pixel, which a rounding difference may move between near-ties (the
    # max's gradient is checked in float64 in test_ops_dispatch)
    up_map = torch.randn(amap.shape, generator=gen, dtype=F64).to(dtype)
    up_score = torch.randn(score.shape, generator=gen, dtype=F64).to(dtype) if case["reduce"] == "mean" else None
    got = [amap, score] + list(grads((amap, score), (up_map, up_score), [z.view for z in zs]))

    def run_reference(dt):
        zl = leaves(zs, dt)
        m, sc = reference.multiscale_score(zl, case["out_size"], case["reduce"])
        ups = (up_map.to(dt), None if up_score is None else up_score.to(dt))
        return [m, sc] + list(grads((m, sc), ups, zl))

    truth, eager = run_reference(F64), run_reference(F32)
    names = ["anomaly_map", "score"] + [f"dz{i}" for i in range(len(zs))]
    for name, g, t, e in zip(names, got, truth, eager):
        check_close(name, g, t, e, dtype)
    hh, ww = (case["out_size"],) * 2 if isinstance(case["out_size"], int) else case["out_size"]
    assert amap.shape == (case["shapes"][0][0], 1, hh, ww)
    # a mean of upsampled probabilities: the map lies in [0, 1]
    slack = TOL[dtype]
    assert float(amap.detach().min()) >= -slack and float(amap.detach().max()) <= 1 + slack
    assert all(z.unchanged() for z in zs), "an input was modified"


# ------------------------------------------------------------------------------ empty tensors
# Sizes of 0 are valid where the result is well defined (an empty batch, no pixels, no
# tokens): the result must then be the right one, not an error and not garbage.


@pytest.mark.parametrize("backend", BACKENDS["dual_attention"])
@pytest.mark.parametrize("shape", [(0, 2, 5, 8), (1, 0, 5, 8), (2, 1, 0, 8)], ids=["B0", "H0", "N0"])
def test_dual_attention_empty(backend, shape):
    ts = [torch.randn(shape, requires_grad=True) for _ in range(5)]
    ox, om = ops.dual_attention(*ts, backend=backend)
    assert ox.shape == om.shape == shape
    gs = torch.autograd.grad(ox.sum() + om.sum(), ts)
    assert all(g.shape == shape for g in gs)


@pytest.mark.parametrize("backend", BACKENDS["affine_coupling"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "inv"])
@pytest.mark.parametrize("shape", [(0, 5, 3, 2), (2, 5, 0, 3), (3, 4, 2, 0)], ids=["B0", "H0", "W0"])
def test_affine_coupling_empty(backend, reverse, shape):
    bsz, c, h, w = shape
    x, a = torch.randn(shape), torch.randn(bsz, 2 * (c // 2), h, w)
    g, b = torch.tensor([0.5, 2.0, 1.0, 3.0, 1.5][:c]), torch.randn(c)
    y, ld = ops.affine_coupling(x, a, g, b, torch.randperm(c), reverse=reverse, backend=backend)
    assert y.shape == shape
    # no pixels: log|det| is the empty sum, 0 (the global affine contributes H*W*sum log g)
    assert ld.shape == (bsz,) and torch.equal(ld, torch.zeros(bsz))


@pytest.mark.parametrize("backend", BACKENDS["flow_nll"])
def test_flow_nll_empty(backend):
    assert ops.flow_nll(torch.randn(0, 3), torch.randn(0), backend=backend).shape == (0,)
    logdet = torch.tensor([1.5, -2.0])
    assert torch.equal(ops.flow_nll(torch.randn(2, 0, 4), logdet, backend=backend), -logdet)


# ------------------------------------------------------------------------------ invalid inputs
# One corruption of a valid call at a time; the op must raise ValueError or TypeError (or
# BackendUnavailable for a backend that cannot run) whose message names the argument.  A
# corruption is ``f(draw, kw) -> (kw, argument name)``; ``kw`` holds the call's arguments.

NOT_A_NUMBER = [float("nan"), float("inf"), float("-inf"), "0.5", True, [1.0], torch.tensor([1.0, 2.0])]


def names_argument(message: str, name: str) -> bool:
    """Whether ``message`` names ``name`` as an argument (``a must``, ``g has``, ``zs[1] is``,
    ``perm [``...), not as an English word ("must be a real number")."""
    pattern = rf"(?:^|[\s:(`'\"]){re.escape(name)}(?:\s+(?:must|has|have|is|needs|should|given|of)\b|\s*[\[(=:,]|\s*$)"
    return re.search(pattern, message) is not None


def expect_clear_error(call, name, backend_error=False):
    """``call()`` raises ValueError/TypeError (or BackendUnavailable when ``backend_error``)
    naming ``name``; any other exception propagates and fails the test, as does a return."""
    errors = (ValueError, TypeError) + ((BackendUnavailable,) if backend_error else ())
    try:
        out = call()
    except errors as exc:
        assert isinstance(exc, errors) and names_argument(str(exc), name), (
            f"{type(exc).__name__} does not name {name!r}: {exc}")
        return
    pytest.fail(f"bad {name} was accepted and returned {type(out).__name__}")


def _other_float(dtype):
    return F64 if dtype != F64 else F32


def _pick(draw, options):
    return draw(st.sampled_from(list(options)))


def _rank(draw, kw, names):
    n = _pick(draw, names)
    t = kw[n]
    kw[n] = t.flatten(0, 1) if draw(st.booleans()) else t.unsqueeze(0)
    return kw, n


def _dtype(draw, kw, names, dtype):
    n = _pick(draw, names)
    kw[n] = kw[n].to(_other_float(dtype))
    return kw, n


def _not_float(draw, kw, names):
    n = _pick(draw, names)
    kw[n] = kw[n].to(_pick(draw, [torch.int64, torch.int32, torch.bool, torch.complex64]))
    return kw, n


def _not_tensor(draw, kw, names):
    n = _pick(draw, names)
    kw[n] = kw[n].tolist() if draw(st.booleans()) else kw[n].numpy()
    return kw, n


def _device(draw, kw, names):
    n = _pick(draw, names)
    kw[n] = kw[n].to("meta")
    return kw, n


def _each(kw, name, values):
    """One call per bad value of ``name`` (validation is cheap: try them all every time)."""
    return [{**kw, name: v} for v in values], name


def _backend(draw, kw):
    return _each(kw, "backend", ["", "TORCH", "cuda", "numpy", None, 3, ["torch"], ("torch",)])


def _number(draw, kw, name, extra=()):
    return _each(kw, name, NOT_A_NUMBER + list(extra))


# ---- per op: a valid call, and its corruptions


def _attention_call(draw, seed, dtype):
    gen = torch.Generator().manual_seed(seed)
    shape = (draw(st.integers(1, 2)), draw(st.integers(1, 2)), draw(st.integers(1, 5)), draw(st.integers(1, 8)))
    kw = {n: torch.randn(shape, generator=gen, dtype=F64).to(dtype) for n in ("qx", "kx", "vx", "qm", "vm")}
    return kw, ops.dual_attention


ATT = ("qx", "kx", "vx", "qm", "vm")


def _att_shape(draw, kw):
    n = _pick(draw, ATT[1:])
    dim = draw(st.integers(0, 3))
    size = list(kw[n].shape)
    size[dim] += draw(st.integers(1, 3))
    kw[n] = torch.randn(size, dtype=kw[n].dtype)
    return kw, n


def _att_head_dim_0(draw, kw):
    for n in ATT:
        kw[n] = kw[n][..., :0]
    return kw, "D"


ATTENTION_BAD = {
    "rank": lambda d, kw, dt: _rank(d, kw, ATT),
    "shape": lambda d, kw, dt: _att_shape(d, kw),
    "dtype": lambda d, kw, dt: _dtype(d, kw, ATT[1:], dt),
    "not_float": lambda d, kw, dt: _not_float(d, kw, ATT),
    "not_tensor": lambda d, kw, dt: _not_tensor(d, kw, ATT),
    "device": lambda d, kw, dt: _device(d, kw, ATT[1:]),
    "scale": lambda d, kw, dt: _number(d, kw, "scale", [0, 0.0, -1.0, -1e-30]),
    "head_dim_0": lambda d, kw, dt: _att_head_dim_0(d, kw),
    "backend": lambda d, kw, dt: _backend(d, kw),
}


def _coupling_call(draw, seed, dtype):
    gen = torch.Generator().manual_seed(seed)
    bsz, c, h, w = draw(st.integers(1, 2)), draw(st.integers(2, 6)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    kw = dict(x=torch.randn(bsz, c, h, w, generator=gen, dtype=F64).to(dtype),
              a=torch.randn(bsz, 2 * (c // 2), h, w, generator=gen, dtype=F64).to(dtype),
              g=(0.5 + torch.rand(c, generator=gen, dtype=F64)).to(dtype),
              b=torch.randn(c, generator=gen, dtype=F64).to(dtype),
              perm=torch.randperm(c, generator=gen))
    return kw, ops.affine_coupling


def _coup_one_channel(draw, kw):
    bsz, _, h, w = kw["x"].shape
    kw.update(x=kw["x"][:, :1], a=kw["a"][:, :0], g=kw["g"][:1], b=kw["b"][:1], perm=torch.zeros(1, dtype=torch.int64))
    return kw, "x"


def _coup_a_shape(draw, kw):
    size = list(kw["a"].shape)
    dim = draw(st.integers(0, 3))
    size[dim] += draw(st.sampled_from([-1, 1, 2])) if size[dim] > 1 else 1
    kw["a"] = torch.randn(size, dtype=kw["a"].dtype)
    return kw, "a"


def _coup_gb_shape(draw, kw):
    n = _pick(draw, ["g", "b"])
    c = kw[n].shape[0]
    return _each(kw, n, [kw[n][:-1], torch.cat([kw[n], kw[n][:1]]), kw[n][None], kw[n][:, None], kw[n][0]])


def _coup_perm(draw, kw):
    p = kw["perm"]
    c = p.numel()
    bad = [p[:-1], torch.cat([p, p[:1]]), p.view(1, c), p.double(), p.int(), p.float(),
           torch.full((c,), c - 1), torch.where(p == 0, torch.tensor(c), p), torch.where(p == 0, torch.tensor(-1), p),
           [0] * c, [float(i) for i in range(c)], list(range(1, c + 1)), "0" * c, None, p.to(torch.uint8)]
    return _each(kw, "perm", bad)


def _coup_g_not_positive(draw, kw):
    g = kw["g"].clone()
    i = draw(st.integers(0, g.numel() - 1))
    return _each(kw, "g", [torch.where(torch.arange(g.numel()) == i, torch.tensor(v, dtype=g.dtype), g)
                           for v in (0.0, -0.5, -1e-3, float("nan"))])


def _coup_flag(draw, kw):
    n = _pick(draw, ["reverse", "compute_logdet"])
    return _each(kw, n, ["False", "True", None, 2, torch.tensor([True, False])])


AC_T = ("x", "a", "g", "b")
COUPLING_BAD = {
    "rank": lambda d, kw, dt: _rank(d, kw, ["x"]),
    "one_channel": lambda d, kw, dt: _coup_one_channel(d, kw),
    "a_shape": lambda d, kw, dt: _coup_a_shape(d, kw),
    "g_b_shape": lambda d, kw, dt: _coup_gb_shape(d, kw),
    "dtype": lambda d, kw, dt: _dtype(d, kw, AC_T[1:], dt),
    "not_float": lambda d, kw, dt: _not_float(d, kw, AC_T),
    "not_tensor": lambda d, kw, dt: _not_tensor(d, kw, AC_T),
    "device": lambda d, kw, dt: _device(d, kw, AC_T[1:] + ("perm",)),
    "perm": lambda d, kw, dt: _coup_perm(d, kw),
    "clamp": lambda d, kw, dt: _number(d, kw, "clamp", [0, 0.0, -2.0, None]),
    "a_scale": lambda d, kw, dt: _number(d, kw, "a_scale", [None]),
    "g_not_positive": lambda d, kw, dt: _coup_g_not_positive(d, kw),
    "flags": lambda d, kw, dt: _coup_flag(d, kw),
    "backend": lambda d, kw, dt: _backend(d, kw),
}


def _nll_call(draw, seed, dtype):
    gen = torch.Generator().manual_seed(seed)
    bsz = draw(st.integers(1, 4))
    kw = dict(z=torch.randn(bsz, draw(st.integers(1, 5)), generator=gen, dtype=F64).to(dtype),
              logdet=torch.randn(bsz, generator=gen, dtype=F64).to(dtype))
    return kw, ops.flow_nll


def _nll_z_scalar(draw, kw):
    kw["z"] = kw["z"].flatten()[0]
    return kw, "z"


def _nll_logdet_shape(draw, kw):
    ld = kw["logdet"]
    return _each(kw, "logdet", [ld[:-1], torch.cat([ld, ld[:1]]), ld[:, None], ld[0], ld[None]])


NLL_BAD = {
    "z_scalar": lambda d, kw, dt: _nll_z_scalar(d, kw),
    "logdet_shape": lambda d, kw, dt: _nll_logdet_shape(d, kw),
    "dtype": lambda d, kw, dt: _dtype(d, kw, ["logdet"], dt),
    "not_float": lambda d, kw, dt: _not_float(d, kw, ["z", "logdet"]),
    "not_tensor": lambda d, kw, dt: _not_tensor(d, kw, ["z", "logdet"]),
    "device": lambda d, kw, dt: _device(d, kw, ["logdet"]),
    "backend": lambda d, kw, dt: _backend(d, kw),
}


def _score_call(draw, seed, dtype):
    gen = torch.Generator().manual_seed(seed)
    bsz = draw(st.integers(1, 3))
    zs = [torch.randn(bsz, draw(st.integers(1, 4)), draw(st.integers(1, 5)), draw(st.integers(1, 5)),
                      generator=gen, dtype=F64).to(dtype) for _ in range(draw(st.integers(1, 3)))]
    return dict(zs=zs, out_size=draw(st.integers(1, 9))), ops.multiscale_score


def _score_zs_item(draw, kw, dtype):
    """Corrupt one scale ``zs[i]``; the message must name ``zs[i]``."""
    zs = list(kw["zs"])
    i = draw(st.integers(0, len(zs) - 1))
    z = zs[i]
    kind = _pick(draw, ["rank", "batch", "dtype", "device", "not_float", "not_tensor", "empty"])
    if kind in ("batch", "dtype", "device") and len(zs) == 1:
        zs.append(z.clone())  # a mismatch needs a second scale
        i = 1
    zs[i] = {
        "rank": lambda: z[0] if draw(st.booleans()) else z[None],
        "batch": lambda: torch.cat([z, z[:1]]),
        "dtype": lambda: z.to(_other_float(dtype)),
        "device": lambda: z.to("meta"),
        "not_float": lambda: z.long(),
        "not_tensor": lambda: z.tolist(),
        "empty": lambda: _pick(draw, [z[:, :0], z[:, :, :0], z[:, :, :, :0]]),
    }[kind]()
    kw["zs"] = zs
    return kw, f"zs[{i}]"


def _score_zs(draw, kw):
    return _each(kw, "zs", [[], (), kw["zs"][0], None, {"z": kw["zs"][0]}, iter(kw["zs"])])


def _score_size(draw, kw):
    return _each(kw, "out_size", [0, -3, (0, 4), (4, -1), (4,), (2, 3, 4), "ab", "12", 2.5, (2.5, 3), True,
                                  (True, 4), None, (4, None), float("nan"), float("inf"), []])


def _score_reduce(draw, kw):
    return _each(kw, "reduce", ["sum", "MAX", "", None, ["max"], ("max",), max])


SCORE_BAD = {
    "zs_item": lambda d, kw, dt: _score_zs_item(d, kw, dt),
    "zs": lambda d, kw, dt: _score_zs(d, kw),
    "out_size": lambda d, kw, dt: _score_size(d, kw),
    "reduce": lambda d, kw, dt: _score_reduce(d, kw),
    "backend": lambda d, kw, dt: _backend(d, kw),
}

INVALID = {
    "dual_attention": (_attention_call, ATTENTION_BAD),
    "affine_coupling": (_coupling_call, COUPLING_BAD),
    "flow_nll": (_nll_call, NLL_BAD),
    "multiscale_score": (_score_call, SCORE_BAD),
}
# (op, corruption) that fail today: each names the bug it shows; remove the entry once fixed
KNOWN_BAD = {
}


def _invalid_params():
    out = []
    for op_name, (_, bad) in INVALID.items():
        for backend in BACKENDS[op_name]:
            for corruption in bad:
                reason = KNOWN_BAD.get((op_name, corruption))
                marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
                out.append(pytest.param(op_name, corruption, backend, marks=marks, id=f"{op_name}-{corruption}-{backend}"))
    return out


@pytest.mark.parametrize("op_name,corruption,backend", _invalid_params())
def test_invalid_input_raises_a_clear_error(op_name, corruption, backend):
    make_call, bad = INVALID[op_name]
    dtypes = DTYPES[(op_name, backend)]
    # a known failure needs no shrinking (minutes of Triton interpreter): the first example fails
    phases = [Phase.generate] if (op_name, corruption) in KNOWN_BAD else settings().phases

    @settings(max_examples=budget(4), phases=phases)
    @given(data=st.data(), seed=seeds())
    def run(data, seed):
        dtype = data.draw(st.sampled_from(dtypes))
        kw, fn = make_call(data.draw, seed, dtype)
        kws, name = bad[corruption](data.draw, kw, dtype)
        for kw in kws if isinstance(kws, list) else [kws]:
            kw.setdefault("backend", backend)
            expect_clear_error(lambda: fn(**kw), name)

    run()


@pytest.mark.parametrize("op_name,backend,dtype", [(op, be, dt) for (op, be), dts in UNSUPPORTED.items() for dt in dts])
def test_unsupported_dtype_raises_backend_unavailable(op_name, backend, dtype):
    make_call, _ = INVALID[op_name]

    @settings(max_examples=budget(2))
    @given(data=st.data(), seed=seeds())
    def run(data, seed):
        kw, fn = make_call(data.draw, seed, dtype)
        with pytest.raises(BackendUnavailable, match=str(dtype).replace("torch.", "")):
            fn(**kw, backend=backend)

    run()


@pytest.mark.parametrize("op_name", OP_NAMES)
def test_unimplemented_backend_raises_backend_unavailable(op_name):
    make_call, _ = INVALID[op_name]
    missing = sorted(set(dadf_fast.backends()) - set(BACKENDS[op_name]))

    @settings(max_examples=budget(2))
    @given(data=st.data(), seed=seeds())
    def run(data, seed):
        kw, fn = make_call(data.draw, seed, F32)
        for backend in missing:
            with pytest.raises(BackendUnavailable, match=f"{backend!r} backend does not implement {op_name}"):
                fn(**kw, backend=backend)

    run()
