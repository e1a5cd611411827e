"""Property-based fuzz suite of the public ops on valid inputs (``dadf_fast.ops``), with hypothesis.

Every op runs on every backend that implements it (``dadf_fast.backends()``) on random valid
inputs: odd, non-power-of-two and size-1 dims; transposed, sliced, strided and stride-0
expanded views (the bytes around a view are NaN, so a read outside it shows); float32,
float64 and float16 where the backend runs them on CPU; random, identity and reversed
permutations; clamp and a_scale values; forward and reverse.  Outputs and the gradients of
every differentiable input are compared with the reference evaluated in float64 on the same
(dtype-rounded) values, with the tolerances of tests/ops/fuzzing.py; the inputs must come
back unchanged.  Random invalid inputs: tests/ops/test_fuzz_invalid.py.

An unavailable backend is skipped here, but fails under ``CI`` (the suite must not shrink;
tests/ops/conftest.py).

Profiles (registered in tests/conftest.py):

* ``ci`` (default): derandomized, the same examples on every run: 50 examples per op,
  backend and property (8 on the slow Triton interpreter), 4 per invalid-input kind.
* ``deep``: 10 times as many, new random examples on every run; a failure prints the ``@reproduce_failure`` blob to replay it::

      HYPOTHESIS_PROFILE=deep python -m pytest -q tests/ops/test_fuzz_valid.py tests/ops/test_fuzz_invalid.py
      python -m pytest -q tests/ops/test_fuzz_*.py --hypothesis-profile=deep   # the same
"""
from __future__ import annotations

import pytest
import torch
from hypothesis import strategies as st

import dadf_fast
from dadf_fast import ops, reference
from fuzzing import (BACKENDS, DTYPES, F16, F32, F64, OP_NAMES, TOL, check_close, fuzz, grads, layouts, leaves,
                     make_arg, seeds)


def test_every_backend_of_every_op_is_fuzzed():
    """A backend added to an op must get a row in DTYPES (and so be fuzzed here)."""
    assert {(op, be) for op in OP_NAMES for be in BACKENDS[op]} == set(DTYPES)
    report = dadf_fast.backends()
    assert set(OP_NAMES) == {op for be in report for op in report[be]["ops"]}


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
    c = draw(st.integers(2, 9 if slow else 17))
    # 1-D fibres [N, C] (CFLOW's layout: many rows, one position each) on the backends that
    # take them on CPU; the Triton kernels declare 4-D inputs only
    if not slow and draw(st.booleans()):
        shape = (draw(st.integers(1, 70)), c)
    else:
        h, w = draw(st.integers(1, 5 if slow else 7)), draw(st.integers(1, 5 if slow else 7))
        shape = (draw(st.integers(1, 3)), c, h, w)
    kind = draw(st.sampled_from(["random", "identity", "reversal"]))
    perm = {"random": lambda: draw(st.permutations(range(c))), "identity": lambda: list(range(c)),
            "reversal": lambda: list(range(c))[::-1]}[kind]()
    # float16 stays finite: |x2 * exp(s) + t| and its inverse below ~1e4 with clamp <= 3
    clamp = draw(st.one_of(st.just(2.0), st.floats(0.05, 3.0 if dtype == F16 else 5.0)))
    a_scale = draw(st.one_of(st.just(0.1), st.floats(-1.0, 1.0)))
    return dict(
        dtype=dtype, shape=shape, perm=list(perm), perm_layout=draw(layouts(1, expand=False)),
        clamp=clamp, a_scale=a_scale, reverse=draw(st.booleans()), compute_logdet=draw(st.booleans()),
        x_std=draw(st.sampled_from([0.5, 1.0, 4.0])), a_std=draw(st.sampled_from([0.1, 1.0, 10.0, 40.0])),
        g_log_range=draw(st.sampled_from([0.0, 0.5, 1.2])), b_std=draw(st.sampled_from([0.0, 1.0, 3.0])),
        layouts=[draw(layouts(len(shape))), draw(layouts(len(shape))), draw(layouts(1)), draw(layouts(1))],
        seed=draw(seeds()),
    )


def _coupling_args(case, requires_grad=True):
    gen = torch.Generator().manual_seed(case["seed"])
    bsz, c, *spatial = case["shape"]
    dt, (lx, la, lg, lb) = case["dtype"], case["layouts"]
    x = make_arg(gen, (bsz, c, *spatial), lx, dt, case["x_std"], requires_grad)
    a = make_arg(gen, (bsz, 2 * (c // 2), *spatial), la, dt, case["a_std"], requires_grad)
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
        du2 = (up[0].double()[:, torch.argsort(perm)] * g.view(1, -1, *([1] * (x.dim() - 2))))[:, c1:]
        dl_ds = (du2 * x[:, c1:] * torch.exp(clamp * torch.tanh(a_scale * a[:, :c // 2]))).abs()
    if case["compute_logdet"]:
        dl_ds = dl_ds + up[1].double().abs().view(-1, *([1] * (x.dim() - 1)))
    return torch.cat([2 * clamp * abs(a_scale) * dl_ds, torch.zeros_like(dl_ds)], dim=1)


@pytest.mark.parametrize("backend", BACKENDS["affine_coupling"])
def test_affine_coupling_matches_reference(backend):
    fuzz(backend, coupling_cases(backend), lambda case: _affine_coupling_matches_reference(backend, case))


def _affine_coupling_matches_reference(backend, case):
    dtype, shape = case["dtype"], case["shape"]
    x, a, g, b, perm = _coupling_args(case)
    p = perm.view
    gen = torch.Generator().manual_seed(case["seed"] + 1)
    up = [torch.randn(shape, generator=gen, dtype=F64).to(dtype), torch.randn(shape[0], generator=gen, dtype=F64).to(dtype)]
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
    dtype = case["dtype"]
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


# -------------------------------------------------------------------------- nearest_distances


@st.composite
def knn_cases(draw, backend):
    dtype = draw(st.sampled_from(DTYPES[("nearest_distances", backend)]))
    d = draw(st.integers(1, 40))
    return dict(dtype=dtype, q=draw(st.integers(1, 30)), m=draw(st.integers(1, 60)), d=d,
                q_layout=draw(layouts(2)), m_layout=draw(layouts(2)), std=draw(st.sampled_from([0.01, 1.0, 100.0])),
                offset=draw(st.sampled_from([0.0, 1.0, 1000.0])), seed=draw(seeds()))


@pytest.mark.parametrize("backend", BACKENDS["nearest_distances"])
def test_nearest_distances_matches_reference(backend):
    fuzz(backend, knn_cases(backend), lambda case: _nearest_distances_matches_reference(backend, case))


def _nearest_distances_matches_reference(backend, case):
    dtype = case["dtype"]
    gen = torch.Generator().manual_seed(case["seed"])
    shift = torch.full((case["d"],), case["offset"], dtype=F64)  # far from the origin: cancellation
    qv = case["std"] * torch.randn(case["q"], case["d"], generator=gen, dtype=F64) + shift
    mv = case["std"] * torch.randn(case["m"], case["d"], generator=gen, dtype=F64) + shift
    # every third query is a memory row: distance 0 exactly
    qv[::3] = mv[torch.randint(case["m"], (qv[::3].shape[0],), generator=gen)]
    q = make_arg(gen, qv.shape, case["q_layout"], dtype, values=qv, requires_grad=True)
    m = make_arg(gen, mv.shape, case["m_layout"], dtype, values=mv, requires_grad=True)
    up = torch.randn(case["q"], generator=gen, dtype=F64).to(dtype)

    out = ops.nearest_distances(q.view, m.view, backend=backend)
    got = [out] + list(grads((out,), (up,), (q.view, m.view)))

    def run_reference(dt):
        ql, ml = leaves((q, m), dt)
        o = reference.nearest_distances(ql, ml)
        return [o] + list(grads((o,), (up.to(dt),), (ql, ml)))

    truth, eager = run_reference(F64), run_reference(F32)
    check_close("distances", got[0], truth[0], eager[0], dtype)
    dist = torch.cdist(q.values, m.values, compute_mode="donot_use_mm_for_euclid_dist")
    exact = dist.min(1).values
    check_close("distances (brute force)", got[0], exact, eager[0], dtype)
    # the gradients follow the row found; with two rows (nearly) as near, even equal rows (a
    # stride-0 memory), either is right and its row of dmemory gets the gradient
    if case["m"] > 1:
        two = dist.topk(2, dim=1, largest=False).values
        if ((two[:, 1] - two[:, 0]) < 1e-3 * (1 + two[:, 1])).any():
            return
    for name, g, t, e in zip(("dqueries", "dmemory"), got[1:], truth[1:], eager[1:]):
        check_close(name, g, t, e, dtype)
    assert q.unchanged() and m.unchanged(), "an input was modified"


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


@pytest.mark.parametrize("backend", BACKENDS["nearest_distances"])
def test_nearest_distances_no_queries(backend):
    out = ops.nearest_distances(torch.randn(0, 5), torch.randn(4, 5), backend=backend)
    assert out.shape == (0,) and out.dtype == torch.float32


@pytest.mark.parametrize("backend", BACKENDS["flow_nll"])
def test_flow_nll_empty(backend):
    assert ops.flow_nll(torch.randn(0, 3), torch.randn(0), backend=backend).shape == (0,)
    logdet = torch.tensor([1.5, -2.0])
    assert torch.equal(ops.flow_nll(torch.randn(2, 0, 4), logdet, backend=backend), -logdet)

