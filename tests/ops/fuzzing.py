"""Shared machinery of the property-based fuzz tests of the public ops (hypothesis):
tests/ops/test_fuzz_valid.py (random valid inputs against the reference) and
tests/ops/test_fuzz_invalid.py (random invalid inputs must raise a clear error).

Tolerances.  The allowed max error of an output is the larger of
``TOL[dtype] * max(1, max|truth|)`` and ``K_EAGER`` times the error of the eager reference
run in float32 on contiguous copies, rescaled to the dtype's epsilon: the second term is the
conditioning of the example (a large softmax score or ``exp(clamp)`` amplifies rounding), so
a backend may be as inaccurate as plain torch on a badly conditioned example, never much
more.  Where a backend legitimately rounds differently from the reference, the sum of
|terms| behind each element is added (times ``K_MAG * eps``): dual attention's fused
backward uses another identity (:func:`attention_magnitudes`), and the coupling's
``1 - tanh^2`` cancels at saturation (:func:`coupling_da_magnitude`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import dadf_fast
from dadf_fast import BackendUnavailable

F16, F32, F64 = torch.float16, torch.float32, torch.float64
TOL = {F64: 1e-10, F32: 1e-5, F16: 2e-3}
EPS = {dt: torch.finfo(dt).eps for dt in (F16, F32, F64)}
K_EAGER = 8
K_MAG = 4

OP_NAMES = ("dual_attention", "affine_coupling", "flow_nll", "multiscale_score", "nearest_distances")
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
    ("nearest_distances", "torch"): (F32, F64),
    ("nearest_distances", "cpp"): (F32, F64),
}
# what each backend must refuse with BackendUnavailable on CPU tensors
UNSUPPORTED = {
    ("dual_attention", "triton"): (F64, torch.bfloat16),
    ("affine_coupling", "triton"): (F64, torch.bfloat16),
    ("affine_coupling", "cpp"): (F16, torch.bfloat16),
    ("flow_nll", "cpp"): (F16, torch.bfloat16),
    ("multiscale_score", "cpp"): (F16, torch.bfloat16),
    ("nearest_distances", "cpp"): (F16, torch.bfloat16),
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

