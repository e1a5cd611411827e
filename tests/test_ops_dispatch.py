"""Backend selection, availability reports and input validation of the public ops."""
import pytest
import torch

import dadf_fast
from dadf_fast import ops, reference
from dadf_fast._backends import BackendUnavailable


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
