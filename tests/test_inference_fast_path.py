"""``compute_logdet=False``: the inference fast path returns the same outputs and no log-det."""
import copy
import os

import pytest
import torch

import dadf_fast
from dadf_fast import DADF, ops
from dadf_fast.nn import AllInOneCoupling, FlowStage

BACKENDS = ["torch", "triton", "cpp", "auto"]


def _skip_unavailable(backend):
    """Skip an unavailable backend here; in CI (``CI`` set) fail instead: there the
    extension and the Triton interpreter must work."""
    if backend == "auto":
        return
    entry = dadf_fast.backends()[backend]["cpu"]
    if entry["available"]:
        return
    if os.environ.get("CI"):
        pytest.fail(f"backend {backend!r} must be available in CI: {entry['reason']}")
    pytest.skip(entry["reason"])


def _coupling_inputs(c=7, bsz=2, h=3, w=5):
    torch.manual_seed(1)
    x = torch.randn(bsz, c, h, w)
    a = 3 * torch.randn(bsz, 2 * (c // 2), h, w)
    g = torch.rand(c) + 0.5
    b = torch.randn(c)
    perm = torch.randperm(c)
    return x, a, g, b, perm


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("backend", BACKENDS)
def test_op_without_logdet_same_y(backend, reverse):
    _skip_unavailable(backend)
    x, a, g, b, perm = _coupling_inputs()
    y, ld = ops.affine_coupling(x, a, g, b, perm, clamp=1.5, reverse=reverse, backend=backend)
    y2, none = ops.affine_coupling(x, a, g, b, perm, clamp=1.5, reverse=reverse, backend=backend,
                                   compute_logdet=False)
    assert ld.shape == (2,) and none is None
    torch.testing.assert_close(y2, y, atol=0, rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_op_without_logdet_has_gradients(backend):
    _skip_unavailable(backend)
    x, a, g, b, perm = _coupling_inputs()
    ins = [t.clone().requires_grad_() for t in (x, a, g, b)]
    y_ref, _ = ops.affine_coupling(*ins, perm, backend="torch")
    y_ref.square().sum().backward()
    want = [t.grad for t in ins]
    ins = [t.clone().detach().requires_grad_() for t in (x, a, g, b)]
    y, none = ops.affine_coupling(*ins, perm, backend=backend, compute_logdet=False)
    assert none is None
    y.square().sum().backward()
    for got, exp in zip((t.grad for t in ins), want):
        torch.testing.assert_close(got, exp, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_modules_without_logdet_same_z(backend):
    _skip_unavailable(backend)
    torch.manual_seed(0)
    stage = FlowStage(7, (5, 3), steps=3, backend=backend)
    with torch.no_grad():
        for p in stage.parameters():
            if p.requires_grad:
                p.add_(0.3 * torch.randn_like(p))
    x = torch.randn(2, 7, 5, 3)
    z, ld = stage(x)
    z2, none = stage(x, compute_logdet=False)
    assert ld.shape == (2,) and none is None
    torch.testing.assert_close(z2, z, atol=0, rtol=0)
    step = stage.steps[0]
    y, _ = step(stage.norm(x))
    y2, none = step(stage.norm(x), compute_logdet=False)
    assert none is None
    torch.testing.assert_close(y2, y, atol=0, rtol=0)
    y3, none = step(y, rev=True, compute_logdet=False)
    assert none is None


def test_soft_permutation_without_logdet():
    pytest.importorskip("scipy")
    torch.manual_seed(0)
    blk = AllInOneCoupling(6, permute_soft=True, backend="torch")
    x = torch.randn(2, 6, 3, 3)
    y, ld = blk(x)
    y2, none = blk(x, compute_logdet=False)
    assert none is None and ld.shape == (2,)
    torch.testing.assert_close(y2, y, atol=0, rtol=0)


@pytest.mark.parametrize("backend", ["cpp", "triton"])
def test_dadf_inference_fast_path_matches_reference(backend):
    _skip_unavailable(backend)
    torch.manual_seed(0)
    ref = DADF("lite", pretrained=False, input_size=32, depth=1, flow_steps=2, backend="torch")
    fast = copy.deepcopy(ref).set_backend(backend)
    x = torch.randn(2, 3, 32, 32)
    a, b = ref.predict(x), fast.predict(x)
    torch.testing.assert_close(b["anomaly_map"], a["anomaly_map"], atol=1e-4, rtol=0)
    torch.testing.assert_close(b["score"], a["score"], atol=1e-4, rtol=0)
