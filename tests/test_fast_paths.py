"""Whole modules on the fast backends against the reference backend (tiny shapes; Triton in
its interpreter on CPU)."""
import copy

import pytest
import torch

from dadf_fast import DADF
from dadf_fast.nn import FlowStage


FAST = [b for b in ("triton", "cpp")]


@pytest.mark.parametrize("backend", FAST)
def test_flow_stage_matches_reference_forward_and_backward(backend, require_backend):
    require_backend(backend)
    torch.manual_seed(0)
    ref = FlowStage(7, (5, 3), steps=3, backend="torch")
    with torch.no_grad():
        for p in ref.parameters():
            if p.requires_grad:
                p.add_(0.3 * torch.randn_like(p))
    fast = copy.deepcopy(ref)
    fast.set_backend(backend)
    x = torch.randn(2, 7, 5, 3)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    z_r, ld_r = ref(x1)
    z_f, ld_f = fast(x2)
    torch.testing.assert_close(z_f, z_r, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ld_f, ld_r, atol=1e-4, rtol=1e-5)
    w = torch.randn_like(z_r)
    ((z_r * w).sum() + ld_r.sum()).backward()
    ((z_f * w).sum() + ld_f.sum()).backward()
    torch.testing.assert_close(x2.grad, x1.grad, atol=1e-5, rtol=1e-5)
    for (name, pr), pf in zip(ref.named_parameters(), fast.parameters()):
        if pr.requires_grad:
            torch.testing.assert_close(pf.grad, pr.grad, atol=1e-4, rtol=1e-5, msg=name)
    torch.testing.assert_close(fast.reverse(z_f.detach()), ref.norm(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", FAST)
def test_tiny_dadf_matches_reference(backend, require_backend):
    require_backend(backend)
    torch.manual_seed(0)
    ref = DADF("lite", pretrained=False, input_size=32, depth=1, flow_steps=2, backend="torch",
               score_scales=(0, 1, 2), smooth_sigma=0)
    fast = copy.deepcopy(ref).set_backend(backend)
    x = torch.randn(2, 3, 32, 32)
    a, b = ref.predict(x), fast.predict(x)
    torch.testing.assert_close(b["anomaly_map"], a["anomaly_map"], atol=1e-4, rtol=0)
    torch.testing.assert_close(b["score"], a["score"], atol=1e-4, rtol=0)
    ref.train(), fast.train()
    la, lb = ref(x), fast(x)
    torch.testing.assert_close(lb["loss_flow"], la["loss_flow"], rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(lb["loss_recon"], la["loss_recon"], rtol=1e-5, atol=1e-5)


def test_flow_stage_compiles_with_triton_backend(require_backend):
    require_backend("triton")
    torch.manual_seed(0)
    stage = FlowStage(6, (4, 4), steps=2, backend="triton")
    x = torch.randn(2, 6, 4, 4)
    eager = stage(x)  # first call resolves the backend outside the traced region
    compiled = torch.compile(stage, fullgraph=True, backend="aot_eager")
    z, ld = compiled(x)
    torch.testing.assert_close(z, eager[0])
    torch.testing.assert_close(ld, eager[1])
