"""Backend declarations, the dispatcher, the kernels' own guards, and input validation of
the public ops (validated once, in :mod:`dadf_fast.ops`)."""
import os

import pytest
import torch

import dadf_fast
from dadf_fast import ops, reference
from dadf_fast.kernels import registry
from dadf_fast.kernels.registry import BackendUnavailable
from dadf_fast.kernels.spec import Call, Limit, dtype_limit
from dadf_fast.ops import _dispatch

CPU = torch.device("cpu")


def _coupling_args(c=5, bsz=2, h=3, w=4, dtype=torch.float32):
    return (torch.randn(bsz, c, h, w, dtype=dtype), torch.randn(bsz, 2 * (c // 2), h, w, dtype=dtype),
            torch.rand(c, dtype=dtype) + 0.5, torch.randn(c, dtype=dtype), torch.randperm(c))


def _attention_args(d, n=4, dtype=torch.float32):
    return [torch.randn(1, 2, n, d, dtype=dtype) for _ in range(5)]


def _backend_or_skip(op_name, backend, dtype=torch.float32):
    """A backend of the op that cannot run here is skipped outside CI and fails under CI
    (where the extension and interpreter must work)."""
    op = {o.name: o for o in ops.OPS}[op_name]
    assert backend in op.backends, f"test bug: {op_name} has no {backend} backend to parametrize over"
    r = op.reason(backend, CPU, dtype)
    if r:
        if os.environ.get("CI"):
            pytest.fail(f"backend {backend!r} must run {op_name} in CI: {r}")
        pytest.skip(r)


@pytest.fixture
def fresh_cache():
    ops.clear_backend_cache()
    yield
    ops.clear_backend_cache()


@pytest.fixture
def triton_first_on_cpu(monkeypatch, fresh_cache):
    """CPU with the CUDA auto order's preference for triton (its interpreter stands in for
    a GPU), so that auto's choice between triton and the next backend can be tested here."""
    _backend_or_skip("dual_attention", "triton")
    monkeypatch.setitem(_dispatch.AUTO_ORDER, "cpu", ("triton", "cpp", "torch"))


# ------------------------------------------------------------------ declarations


def test_backends_report_is_generated_from_the_declarations():
    rep = dadf_fast.backends()
    assert list(rep) == ["torch", "triton", "cpp"]
    for name, entry in rep.items():
        decl = registry.DECLARATIONS[name]
        assert entry["limitations"] == list(dict.fromkeys(lim.sentence for s in decl.ops for lim in s.limits))
        assert entry["ops"] == [s.op for s in decl.ops]
        for dev in ("cpu", "cuda"):
            reason = decl.device_reason(dev)
            assert entry[dev] == {"available": reason is None, "reason": reason or "available"}
    assert rep["torch"]["cpu"]["available"] and rep["torch"]["limitations"] == []
    assert set(rep["torch"]["ops"]) == {"dual_attention", "affine_coupling", "flow_nll", "multiscale_score",
                                        "nearest_distances"}
    assert set(rep["triton"]["ops"]) == {"dual_attention", "affine_coupling"}
    assert set(rep["cpp"]["ops"]) == {"affine_coupling", "flow_nll", "multiscale_score", "nearest_distances"}
    assert "dual_attention: head dims up to 256" in rep["triton"]["limitations"]
    assert "the C++ CPU kernels take float32 and float64 only" in rep["cpp"]["limitations"]
    for name in ("triton", "cpp"):
        assert registry.SOFT_PERMUTATION_REASON in rep[name]["limitations"]
        # a limit shared by several ops is listed once
        assert len(rep[name]["limitations"]) == len(set(rep[name]["limitations"]))
    if not torch.cuda.is_available():
        assert not rep["triton"]["cuda"]["available"]
        assert "CUDA" in rep["triton"]["cuda"]["reason"]
        assert rep["cpp"]["cuda"]["reason"] != "available"


def test_limitations_markdown_lists_the_same_sentences():
    lines = registry.limitations_markdown().splitlines()
    assert lines[0] == "- `torch`: none"
    assert "  - dual_attention: head dims up to 256" in lines
    assert lines.index("- `cpp`:") > lines.index("- `triton`:")
    assert lines[lines.index("- `cpp`:") + 1:] == [f"  - {s}" for s in dadf_fast.backends()["cpp"]["limitations"]]


def test_every_declared_op_is_a_public_op():
    assert registry.OP_NAMES == tuple(op.name for op in ops.OPS)
    for decl in registry.DECLARATIONS.values():
        assert {s.op for s in decl.ops} <= set(registry.OP_NAMES)
    assert registry.BACKEND_NAMES == ("torch", "triton", "cpp")


def test_a_limit_reads_the_call_and_says_what_it_got():
    lim = Limit("at most 8 wide", ("width",), lambda call: call.get("width") > 8)
    assert lim.reason(Call("op", "cpu", torch.float32, (("width", 8),))) is None
    assert lim.reason(Call("op", "cpu", torch.float32, (("width", 9),))) == "at most 8 wide (got width=9)"
    # a query that does not say the width is answered as within the limit
    assert lim.reason(Call("op", "cpu", torch.float32)) is None


def test_dtype_limit_restricts_only_its_device_types():
    lim = dtype_limit("cpu: float32 only", {"cpu": (torch.float32,)})
    assert lim.reason(Call("op", "cpu", torch.float32)) is None
    assert lim.reason(Call("op", "cpu", torch.float16)) == "cpu: float32 only (got device=cpu, dtype=torch.float16)"
    assert lim.reason(Call("op", "cuda", torch.float16)) is None


@pytest.mark.parametrize("backend,op,device,dtype,attrs,fragment", [
    ("triton", "dual_attention", "cuda", torch.float32, {"head_dim": 257}, "head dims up to 256 (got head_dim=257)"),
    ("triton", "dual_attention", "cpu", torch.bfloat16, {"head_dim": 16}, "no bfloat16"),
    ("triton", "affine_coupling", "cuda", torch.float64, {}, "not float64"),
    ("triton", "affine_coupling", "cuda", torch.float32, {"permutation": "soft"}, "soft permutations"),
    ("cpp", "flow_nll", "cpu", torch.float16, {}, "float32 and float64 only"),
    ("cpp", "affine_coupling", "cpu", torch.float32, {"permutation": "soft"}, "soft permutations"),
    ("triton", "affine_coupling", "cpu", torch.float32, {"ndim": 2}, "4-D [B, C, H, W] inputs only"),
    ("triton", "affine_coupling", "cuda", torch.float16, {"ndim": 2}, "(got ndim=2)"),
    ("cpp", "affine_coupling", "cuda", torch.float32, {"ndim": 2}, "on CUDA: 4-D [B, C, H, W] inputs only"),
])
def test_declared_limits_reject_these_calls(backend, op, device, dtype, attrs, fragment):
    decl = registry.DECLARATIONS[backend]
    s = decl.support(op)
    broken = [lim.reason(Call(op, device, dtype, tuple(attrs.items()))) for lim in s.limits]
    assert any(r and fragment in r for r in broken), broken


@pytest.mark.parametrize("backend,op,device,dtype,attrs", [
    ("triton", "dual_attention", "cuda", torch.bfloat16, {"head_dim": 256}),
    ("triton", "dual_attention", "cuda", torch.float16, {"head_dim": 180}),
    ("triton", "affine_coupling", "cpu", torch.float16, {"permutation": "hard"}),
    ("cpp", "flow_nll", "cuda", torch.float16, {}),
    ("cpp", "multiscale_score", "cpu", torch.float64, {}),
    ("cpp", "affine_coupling", "cpu", torch.float64, {"permutation": "hard", "ndim": 2}),
    ("cpp", "affine_coupling", "cuda", torch.float16, {"permutation": "hard", "ndim": 4}),
    ("triton", "affine_coupling", "cuda", torch.bfloat16, {"permutation": "hard", "ndim": 4}),
])
def test_declared_limits_accept_these_calls(backend, op, device, dtype, attrs):
    s = registry.DECLARATIONS[backend].support(op)
    assert [lim.reason(Call(op, device, dtype, tuple(attrs.items()))) for lim in s.limits] == [None] * len(s.limits)


def test_public_ops_pass_every_attribute_their_limits_read(monkeypatch, fresh_cache):
    """The dispatcher can only apply (and cache by) what the op tells it: each public op must
    describe its call with every attribute a declared limit of that op reads."""
    seen = {}
    real = _dispatch.Op.select

    def spy(self, backend, device, dtype, **attrs):
        seen[self.name] = set(attrs)
        return real(self, backend, device, dtype, **attrs)

    monkeypatch.setattr(_dispatch.Op, "select", spy)
    ops.dual_attention(*_attention_args(8), backend="torch")
    ops.affine_coupling(*_coupling_args(), backend="torch")
    ops.flow_nll(torch.randn(2, 3), torch.zeros(2), backend="torch")
    ops.multiscale_score([torch.randn(2, 3, 4, 4)], 8, backend="torch")
    ops.nearest_distances(torch.randn(3, 4), torch.randn(5, 4), backend="torch")
    assert set(seen) == set(registry.OP_NAMES)
    for decl in registry.DECLARATIONS.values():
        for s in decl.ops:
            for lim in s.limits:
                missing = set(lim.reads) - {"device", "dtype"} - seen[s.op]
                assert not missing, f"{decl.name} {s.op}: limit {lim.sentence!r} reads {missing}, not passed"
    assert seen["dual_attention"] == {"head_dim"}


# ------------------------------------------------------------------ dispatcher


def test_torch_backend_is_the_reference():
    x, a, g, b, perm = _coupling_args()
    y, ld = ops.affine_coupling(x, a, g, b, perm, backend="torch")
    y_ref, ld_ref = reference.affine_coupling(x, a, g, b, perm)
    assert torch.equal(y, y_ref) and torch.equal(ld, ld_ref)
    z = torch.randn(3, 4, 2, 2)
    assert torch.equal(ops.flow_nll(z, torch.ones(3), backend="torch"), reference.flow_nll(z, torch.ones(3)))


def test_unknown_backend_and_op_are_rejected():
    z = torch.randn(3, 4)
    with pytest.raises(ValueError, match="backend must be one of"):
        ops.flow_nll(z, torch.zeros(3), backend="cuda-magic")
    with pytest.raises(ValueError, match="backend must be one of"):
        ops.flow_nll(z, torch.zeros(3), backend=["cpp"])
    with pytest.raises(ValueError, match="op must be one of"):
        ops.selected_backend("flow_nl", "auto", "cpu", torch.float32)


def test_unimplemented_backend_raises_with_reason():
    z = torch.randn(3, 4)
    with pytest.raises(BackendUnavailable, match="does not implement flow_nll"):
        ops.flow_nll(z, torch.zeros(3), backend="triton")


def test_triton_on_cpu_without_interpreter_says_why(monkeypatch, fresh_cache):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    q = torch.randn(1, 1, 4, 8)
    with pytest.raises(BackendUnavailable, match="TRITON_INTERPRET"):
        ops.dual_attention(q, q, q, q, q, backend="triton")


def test_auto_on_cpu_never_picks_triton():
    for op in ops.OPS:
        assert ops.selected_backend(op.name, "auto", "cpu", torch.float32) in ("cpp", "torch")


def test_auto_skips_a_backend_whose_limit_rejects_the_inputs(triton_first_on_cpu):
    """D=300 is beyond the Triton kernels' head dim: auto runs the next candidate (torch, as
    cpp has no attention) instead of choosing triton and failing in the kernel."""
    small, big = _attention_args(16), _attention_args(300)
    assert ops.selected_backend("dual_attention", "auto", "cpu", torch.float32, head_dim=16) == "triton"
    assert ops.selected_backend("dual_attention", "auto", "cpu", torch.float32, head_dim=300) == "torch"
    for args in (small, big):
        got = ops.dual_attention(*args)
        want = reference.dual_attention(*args)
        for p, q in zip(got, want):
            torch.testing.assert_close(p, q, atol=2e-5, rtol=1e-4)
    # the call itself resolved per head dim (the public op passes it)
    chosen = {dict(key[3:])["head_dim"]: hit.backend for key, hit in ops.OPS[0]._cache.items() if key[0] == "auto"}
    assert chosen == {16: "triton", 300: "torch"}


def test_auto_passes_fibres_on_from_the_4d_only_triton_kernel(triton_first_on_cpu):
    """x [N, C]: auto skips triton (declared 4-D only) for the next candidate that runs it."""
    attrs = dict(permutation="hard")
    assert ops.selected_backend("affine_coupling", "auto", "cpu", torch.float32, ndim=4, **attrs) == "triton"
    op = {o.name: o for o in ops.OPS}["affine_coupling"]
    nxt = "torch" if op.reason("cpp", CPU, torch.float32, ndim=2, **attrs) else "cpp"
    assert ops.selected_backend("affine_coupling", "auto", "cpu", torch.float32, ndim=2, **attrs) == nxt
    x, a, g, b, perm = (t[:, :, 0, 0] if t.dim() == 4 else t for t in _coupling_args(c=6, bsz=5))
    got = ops.affine_coupling(x, a, g, b, perm)
    want = reference.affine_coupling(x, a, g, b, perm)
    for p, q in zip(got, want):
        torch.testing.assert_close(p, q, atol=1e-5, rtol=1e-5)
    with pytest.raises(BackendUnavailable, match=r"backend 'triton' cannot run .*4-D \[B, C, H, W\] inputs only"):
        ops.affine_coupling(x, a, g, b, perm, backend="triton")


def test_explicit_backend_raises_with_the_declared_reason(triton_first_on_cpu):
    with pytest.raises(BackendUnavailable, match=r"backend 'triton' cannot run .*head dims up to 256 \(got head_dim=300\)"):
        ops.dual_attention(*_attention_args(300), backend="triton")
    with pytest.raises(BackendUnavailable, match="head_dim=300"):
        ops.selected_backend("dual_attention", "triton", "cpu", torch.float32, head_dim=300)
    with pytest.raises(BackendUnavailable, match="not float64"):
        ops.affine_coupling(*_coupling_args(dtype=torch.float64), backend="triton")


def test_explicit_cpp_on_half_cpu_tensors_says_why(require_backend, fresh_cache):
    require_backend("cpp")
    with pytest.raises(BackendUnavailable, match="C\\+\\+ CPU kernels take float32 and float64 only"):
        ops.flow_nll(torch.randn(2, 3).half(), torch.zeros(2).half(), backend="cpp")
    # auto runs float16 on CPU with the reference instead
    got = ops.flow_nll(torch.ones(2, 3).half(), torch.zeros(2).half())
    assert torch.equal(got, torch.full((2,), 1.5, dtype=torch.float16))


def test_no_backend_fits_lists_every_reason(monkeypatch, fresh_cache):
    # float16 on CPU, auto restricted to cpp: one message with cpp's limit and a line for
    # each other backend
    monkeypatch.setitem(_dispatch.AUTO_ORDER, "cpu", ("cpp",))
    with pytest.raises(BackendUnavailable) as info:
        ops.flow_nll(torch.randn(2, 3).half(), torch.zeros(2).half())
    msg = str(info.value)
    assert msg.startswith("flow_nll: no backend can run device=cpu, dtype=torch.float16")
    lines = msg.splitlines()[1:]
    assert [line.split(":")[0].strip() for line in lines] == ["cpp", "torch", "triton"]
    assert "float32 and float64 only" in lines[0] or "failed to build" in lines[0] or "DADF_FAST_NO_EXT" in lines[0]
    assert "not a candidate of 'auto'" in lines[1]
    assert "not a candidate of 'auto'" in lines[2]


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible")
def test_auto_on_cuda_without_a_gpu_lists_every_reason(fresh_cache):
    with pytest.raises(BackendUnavailable) as info:
        ops.selected_backend("dual_attention", "auto", "cuda", torch.float16, head_dim=64)
    lines = str(info.value).splitlines()
    assert lines[0] == "dual_attention: no backend can run device=cuda, dtype=torch.float16, head_dim=64:"
    assert lines[1] == "  triton: no CUDA device is visible"
    assert lines[2] == "  cpp: the 'cpp' backend does not implement dual_attention"
    assert lines[3] == "  torch: no CUDA device is visible"


def test_cache_key_includes_the_limit_inputs(triton_first_on_cpu, monkeypatch):
    op = ops.OPS[0]
    assert op.name == "dual_attention"
    assert op.select("auto", CPU, torch.float32, head_dim=64).backend == "triton"
    assert op.select("auto", CPU, torch.float32, head_dim=257).backend == "torch"
    assert op.select("auto", CPU, torch.float32, head_dim=64).backend == "triton"
    assert ("auto", "cpu", torch.float32, ("head_dim", 64)) in op._cache
    assert ("auto", "cpu", torch.float32, ("head_dim", 257)) in op._cache
    # a cached resolution is a lookup: nothing is asked again (what torch.compile traces)
    monkeypatch.setattr(_dispatch.Op, "_resolve", lambda *a: pytest.fail("resolved twice"))
    assert op.select("auto", CPU, torch.float32, head_dim=257).backend == "torch"
    ops.clear_backend_cache()
    assert op._cache == {}


def test_module_backend():
    assert ops.module_backend("dual_attention", "cpp") == "auto"
    assert ops.module_backend("flow_nll", "triton") == "auto"
    assert ops.module_backend("affine_coupling", "cpp") == "cpp"
    assert ops.module_backend("affine_coupling", "triton") == "triton"
    assert ops.module_backend("multiscale_score", "torch") == "torch"


def test_compute_logdet_option_reaches_only_backends_declaring_it(fresh_cache):
    assert registry.DECLARATIONS["cpp"].support("affine_coupling").options == ("compute_logdet",)
    assert registry.DECLARATIONS["torch"].support("affine_coupling").options == ()
    args = _coupling_args()
    y, ld = ops.affine_coupling(*args, backend="torch", compute_logdet=False)
    assert ld is None and torch.equal(y, reference.affine_coupling(*args)[0])


# ------------------------------------------------------------------ the Triton kernels' own guards


def test_triton_common_helpers():
    _backend_or_skip("dual_attention", "triton")
    from dadf_fast.kernels.triton.common import next_power_of_2

    assert [next_power_of_2(n) for n in (0, 1, 2, 3, 16, 17, 180)] == [1, 1, 2, 4, 16, 32, 256]


def test_triton_registered_ops_refuse_out_of_bounds_inputs():
    """``torch.ops.dadf_fast_triton.*`` called directly (not through the validating public
    op) still refuses inputs the kernels would read out of bounds."""
    _backend_or_skip("affine_coupling", "triton")
    x, a, g, b, perm = _coupling_args(c=4)
    coupling = torch.ops.dadf_fast_triton.affine_coupling
    with pytest.raises(ValueError, match="a must have shape"):
        coupling(x, a[:, :1], g, b, perm, 2.0, 0.1, False)
    with pytest.raises(ValueError, match="g must have shape"):
        coupling(x, a, g[:3], b, perm, 2.0, 0.1, False)
    with pytest.raises(TypeError, match="perm must be int64"):
        coupling(x, a, g, b, perm.int(), 2.0, 0.1, False)
    attention = torch.ops.dadf_fast_triton.dual_attention
    q = _attention_args(300)
    with pytest.raises(ValueError, match="head dim must be in"):
        attention(*q, 1.0)
    q = _attention_args(8)
    with pytest.raises(ValueError, match="vm has shape"):
        attention(*q[:4], q[4][:, :, :3], 1.0)


# ------------------------------------------------------------------ input validation (once, in ops)


@pytest.mark.parametrize("bad,match", [
    (lambda x, a, g, b, p: (x[0], a, g, b, p), "4-D"),
    (lambda x, a, g, b, p: (x[0], a[0], g, b, p), r"4-D \[B, C, H, W\] or 2-D \[N, C\], got shape \(5, 3, 4\)"),
    (lambda x, a, g, b, p: (x[:, :, 0, 0], a, g, b, p), r"a must have shape \[2, 4\]"),
    (lambda x, a, g, b, p: (x[:, :, 0, 0], a[:, :, 0, 0].t(), g, b, p), r"a must have shape \[2, 4\]"),
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
