"""Backend selection, availability reports and input validation of the public ops."""
import os

import pytest
import torch

import dadf_fast
from dadf_fast import ops, reference
from dadf_fast.kernels.registry import BackendUnavailable


def _coupling_args(c=5, bsz=2, h=3, w=4, dtype=torch.float32):
    return (torch.randn(bsz, c, h, w, dtype=dtype), torch.randn(bsz, 2 * (c // 2), h, w, dtype=dtype),
            torch.rand(c, dtype=dtype) + 0.5, torch.randn(c, dtype=dtype), torch.randperm(c))


def test_backends_report_shape():
    rep = dadf_fast.backends()
    assert set(rep) == {"torch", "triton", "cpp"}
    for name, entry in rep.items():
        for dev in ("cpu", "cuda"):
            assert isinstance(entry[dev]["available"], bool)
            assert entry[dev]["reason"]
    assert rep["torch"]["cpu"]["available"]
    assert any("soft permutation" in note for note in rep["cpp"]["limitations"])
    assert any("soft permutation" in note for note in rep["triton"]["limitations"])
    assert set(rep["torch"]["ops"]) == {"dual_attention", "affine_coupling", "flow_nll", "multiscale_score"}
    if not torch.cuda.is_available():
        assert not rep["triton"]["cuda"]["available"]
        assert "CUDA" in rep["triton"]["cuda"]["reason"]


def test_torch_backend_is_the_reference():
    x, a, g, b, perm = _coupling_args()
    y, ld = ops.affine_coupling(x, a, g, b, perm, backend="torch")
    y_ref, ld_ref = reference.affine_coupling(x, a, g, b, perm)
    assert torch.equal(y, y_ref) and torch.equal(ld, ld_ref)
    z = torch.randn(3, 4, 2, 2)
    assert torch.equal(ops.flow_nll(z, torch.ones(3), backend="torch"), reference.flow_nll(z, torch.ones(3)))


def test_unknown_backend_is_rejected():
    z = torch.randn(3, 4)
    with pytest.raises(ValueError, match="backend must be one of"):
        ops.flow_nll(z, torch.zeros(3), backend="cuda-magic")


def test_unimplemented_backend_raises_with_reason():
    z = torch.randn(3, 4)
    with pytest.raises(BackendUnavailable, match="does not implement flow_nll"):
        ops.flow_nll(z, torch.zeros(3), backend="triton")


def test_triton_on_cpu_without_interpreter_says_why(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    ops.clear_backend_cache()
    q = torch.randn(1, 1, 4, 8)
    with pytest.raises(BackendUnavailable, match="TRITON_INTERPRET"):
        ops.dual_attention(q, q, q, q, q, backend="triton")


def test_cpp_on_cuda_tensors_reason_when_no_gpu():
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    reason = dadf_fast.backends()["cpp"]["cuda"]["reason"]
    assert reason != "available"


def test_auto_on_cpu_never_picks_triton():
    for op in ops.OPS:
        assert ops.selected_backend(op.name, "auto", "cpu", torch.float32) in ("cpp", "torch")


@pytest.mark.parametrize("bad,match", [
    (lambda x, a, g, b, p: (x[0], a, g, b, p), "4-D"),
    (lambda x, a, g, b, p: (x, a[:, :1], g, b, p), "a must have shape"),
    (lambda x, a, g, b, p: (x, a, g[:2], b, p), "g must have shape"),
    (lambda x, a, g, b, p: (x, a, g, b, p[:3]), "perm must have shape"),
    (lambda x, a, g, b, p: (x, a, g, b, torch.zeros(5, dtype=torch.long)), "permutation"),
    (lambda x, a, g, b, p: (x, a, g, b, p.int()), "int64"),
    (lambda x, a, g, b, p: (x.long(), a, g, b, p), "floating-point"),
    (lambda x, a, g, b, p: (x, a.double(), g, b, p), "dtype"),
])
def test_affine_coupling_bad_inputs(bad, match):
    args = bad(*_coupling_args())
    with pytest.raises((ValueError, TypeError), match=match):
        ops.affine_coupling(*args)


def test_affine_coupling_rejects_single_channel():
    with pytest.raises(ValueError, match="at least 2 channels"):
        ops.affine_coupling(torch.randn(1, 1, 2, 2), torch.randn(1, 0, 2, 2), torch.ones(1), torch.zeros(1),
                            torch.zeros(1, dtype=torch.long))


def test_dual_attention_bad_inputs():
    q = torch.randn(1, 2, 4, 8)
    with pytest.raises(ValueError, match="4-D"):
        ops.dual_attention(q[0], q, q, q, q)
    with pytest.raises(ValueError, match="same sizes"):
        ops.dual_attention(q, q, q, q, torch.randn(1, 2, 5, 8))
    with pytest.raises(ValueError, match="scale"):
        ops.dual_attention(q, q, q, q, q, scale=-1.0)


def test_flow_nll_and_score_bad_inputs():
    with pytest.raises(ValueError, match="logdet must have shape"):
        ops.flow_nll(torch.randn(3, 4), torch.zeros(2))
    with pytest.raises(ValueError, match="empty"):
        ops.multiscale_score([], 8)
    with pytest.raises(ValueError, match="batch"):
        ops.multiscale_score([torch.randn(2, 3, 4, 4), torch.randn(3, 3, 2, 2)], 8)
    with pytest.raises(TypeError, match="floating-point"):
        ops.multiscale_score([torch.ones(2, 3, 4, 4, dtype=torch.long)], 8)
    with pytest.raises(ValueError, match="reduce"):
        ops.multiscale_score([torch.randn(2, 3, 4, 4)], 8, reduce="median")
    with pytest.raises(ValueError, match="out_size"):
        ops.multiscale_score([torch.randn(2, 3, 4, 4)], 0)


# ------------------------------------------------------------------ issue #14: op contracts


def _backend_or_skip(op_name, backend, dtype=torch.float32):
    """A backend of the op that cannot run here is skipped outside CI and fails under CI
    (where the extension and interpreter must work)."""
    from dadf_fast.ops import _BY_NAME

    op = _BY_NAME[op_name]
    assert backend in op.backends, f"test bug: {op_name} has no {backend} backend to parametrize over"
    r = op.reason(backend, torch.device("cpu"), dtype)
    if r:
        if os.environ.get("CI"):
            pytest.fail(f"backend {backend!r} must run {op_name} in CI: {r}")
        pytest.skip(r)


@pytest.mark.parametrize("backend", ["torch", "cpp", "triton"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "inv"])
def test_affine_coupling_non_finite_values_stay_in_their_channel(backend, reverse):
    """The permutation is a gather: inf/nan placed in chosen (channel, pixel) entries appear
    exactly at the permuted entries; every other element and the log-det are unchanged."""
    _backend_or_skip("affine_coupling", backend)
    c, bsz, h, w = 5, 2, 3, 4
    x, a, g, b, _ = _coupling_args(c=c, bsz=bsz, h=h, w=w)
    perm = torch.tensor([3, 0, 4, 1, 2])
    # (sample, input channel, h, w, value): channel 0 is passive (x1), 4 is coupled (x2)
    bad = [(0, 0, 1, 2, float("inf")), (1, 4, 0, 0, float("nan")), (1, 1, 2, 3, float("-inf"))]
    xb = x.clone()
    for n, ch, i, j, v in bad:
        xb[n, ch, i, j] = v
    y_clean, ld_clean = ops.affine_coupling(x, a, g, b, perm, reverse=reverse, backend=backend)
    y, ld = ops.affine_coupling(xb, a, g, b, perm, reverse=reverse, backend=backend)
    inv = {int(p): i for i, p in enumerate(perm)}
    expect_bad = torch.zeros_like(y, dtype=torch.bool)
    for n, ch, i, j, v in bad:
        # forward: input channel ch lands at output channel inv[ch]; reverse: input (a step
        # output) channel ch came from channel perm[ch]
        out_ch = perm[ch] if reverse else inv[ch]
        got = y[n, out_ch, i, j]
        if v != v:
            assert torch.isnan(got)
        else:  # g > 0, exp(+-s) > 0: the sign of the infinity survives
            assert got == v
        expect_bad[n, out_ch, i, j] = True
    assert int((~torch.isfinite(y)).sum()) == len(bad)
    assert torch.equal(y[~expect_bad], y_clean[~expect_bad])
    assert torch.equal(ld, ld_clean) and bool(torch.isfinite(ld).all())


def test_affine_coupling_accepts_perm_as_int_sequence():
    x, a, g, b, perm = _coupling_args()
    want = ops.affine_coupling(x, a, g, b, perm, backend="torch")
    for seq in (perm.tolist(), tuple(perm.tolist())):
        got = ops.affine_coupling(x, a, g, b, seq, backend="torch")
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    with pytest.raises(TypeError, match="perm"):
        ops.affine_coupling(x, a, g, b, [0, 1, 2, 3.0, 4])
    with pytest.raises(TypeError, match="perm"):
        ops.affine_coupling(x, a, g, b, [0, 1, 2, 3, True])
    with pytest.raises(ValueError, match="perm"):
        ops.affine_coupling(x, a, g, b, [0, 1, 2, 3, 9])
    with pytest.raises(TypeError, match="perm"):
        ops.affine_coupling(x, a, g, b, "01234")


@pytest.mark.parametrize("kw,exc,match", [
    ({"reverse": "False"}, TypeError, "reverse"),
    ({"reverse": 1}, TypeError, "reverse"),
    ({"compute_logdet": "yes"}, TypeError, "compute_logdet"),
    ({"clamp": "2"}, TypeError, "clamp"),
    ({"clamp": True}, TypeError, "clamp"),
    ({"clamp": float("inf")}, ValueError, "clamp"),
    ({"clamp": 0.0}, ValueError, "clamp"),
    ({"a_scale": float("nan")}, ValueError, "a_scale"),
    ({"a_scale": "0.1"}, TypeError, "a_scale"),
])
def test_affine_coupling_rejects_bad_scalar_arguments(kw, exc, match):
    with pytest.raises(exc, match=match):
        ops.affine_coupling(*_coupling_args(), **kw)


def test_dual_attention_zero_head_dim_and_bad_scale():
    q0 = torch.randn(1, 2, 3, 0)
    with pytest.raises(ValueError, match="head dim D"):
        ops.dual_attention(q0, q0, q0, q0, q0)
    q = torch.randn(1, 2, 3, 4)
    for bad, exc in (("0.5", TypeError), (True, TypeError), (float("inf"), ValueError), (float("nan"), ValueError)):
        with pytest.raises(exc, match="scale"):
            ops.dual_attention(q, q, q, q, q, scale=bad)
    # zero tokens is a valid (empty) input
    e = torch.randn(1, 2, 0, 4)
    ox, om = ops.dual_attention(e, e, e, e, e)
    assert ox.shape == (1, 2, 0, 4) and om.shape == (1, 2, 0, 4)


def test_dual_attention_auto_skips_triton_beyond_its_head_dim(monkeypatch):
    from dadf_fast.kernels.triton.dual_attention import MAX_HEAD_DIM
    from dadf_fast.ops import _dispatch
    from dadf_fast.ops.dual_attention import OP, TRITON_MAX_HEAD_DIM

    assert TRITON_MAX_HEAD_DIM == MAX_HEAD_DIM
    _backend_or_skip("dual_attention", "triton")
    # pretend CPU prefers triton (as CUDA does), then ask with a head dim the kernel lacks
    monkeypatch.setitem(_dispatch.AUTO_ORDER, "cpu", ("triton", "torch"))
    ops.clear_backend_cache()
    try:
        cpu = torch.device("cpu")
        assert OP.select("auto", cpu, torch.float32, key=64)[0] == "triton"
        assert OP.select("auto", cpu, torch.float32, key=MAX_HEAD_DIM + 1)[0] == "torch"
        with pytest.raises(BackendUnavailable, match="head dims up to"):
            OP.select("triton", cpu, torch.float32, key=MAX_HEAD_DIM + 1)
    finally:
        ops.clear_backend_cache()


@pytest.mark.parametrize("backend", ["torch", "cpp"])
def test_flow_nll_one_dimensional_z_is_one_value_per_sample(backend):
    _backend_or_skip("flow_nll", backend)
    z = torch.tensor([1.0, -2.0, 3.0])
    ld = torch.tensor([0.5, 1.0, -1.0])
    got = ops.flow_nll(z, ld, backend=backend)
    torch.testing.assert_close(got, torch.tensor([0.0, 1.0, 5.5]), rtol=0, atol=0)


def test_flow_nll_float16_accumulates_in_float32():
    z = torch.randn(2, 70000).half()
    ld = torch.tensor([3.0, -2.0]).half()
    got = ops.flow_nll(z, ld, backend="torch")
    assert got.dtype == torch.float16
    want = (0.5 * z.double().pow(2).sum(1) - ld.double()).half()  # ~35000: fits in float16
    assert bool(torch.isfinite(got).all())
    torch.testing.assert_close(got, want, rtol=1e-3, atol=0)
    zg = z.clone().requires_grad_()
    ops.flow_nll(zg, ld, backend="torch").sum().backward()
    assert zg.grad.dtype == torch.float16 and torch.equal(zg.grad, z)


@pytest.mark.parametrize("out_size,want", [
    (16, (16, 16)), ((16, 8), (16, 8)), ([5, 3], (5, 3)), (16.0, (16, 16)), (torch.Size([4, 6]), (4, 6)),
])
def test_multiscale_score_out_size_accepted(out_size, want):
    m, s = ops.multiscale_score([torch.randn(2, 3, 4, 4)], out_size)
    assert m.shape == (2, 1) + want and s.shape == (2,)


@pytest.mark.parametrize("out_size,exc", [
    ("16", TypeError), ((16.9, 8), ValueError), (16.5, ValueError), (True, TypeError), ((True, 4), TypeError),
    ((4, "8"), TypeError), ((4, 4, 4), ValueError), ((0, 4), ValueError), (None, TypeError),
])
def test_multiscale_score_out_size_rejected(out_size, exc):
    with pytest.raises(exc, match="out_size"):
        ops.multiscale_score([torch.randn(2, 3, 4, 4)], out_size)


@pytest.mark.parametrize("backend", ["torch", "cpp"])
def test_multiscale_score_has_a_gradient_on_every_backend(backend):
    _backend_or_skip("multiscale_score", backend)
    from dadf_fast import reference

    zs = [torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True),
          torch.randn(2, 5, 2, 3, dtype=torch.float64, requires_grad=True)]
    gm = torch.randn(2, 1, 8, 7, dtype=torch.float64)
    gs = torch.randn(2, dtype=torch.float64)
    for reduce in ("max", "mean"):
        m, s = ops.multiscale_score(zs, (8, 7), reduce=reduce, backend=backend)
        assert m.requires_grad and s.requires_grad
        got = torch.autograd.grad((m * gm).sum() + (s * gs).sum(), zs)
        rm, rs = reference.multiscale_score(zs, (8, 7), reduce=reduce)
        want = torch.autograd.grad((rm * gm).sum() + (rs * gs).sum(), zs)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
