"""Flow modules (FlowStage, AllInOneCoupling, ChannelLayerNorm) on the fast backends against
the reference backend, without the log-det, and under autocast (tiny shapes; Triton in its
interpreter on CPU).  An unavailable backend is skipped here and fails under CI."""
import copy

import pytest
import torch
import torch.nn as nn

from dadf_fast import ops
from dadf_fast.nn import AllInOneCoupling, ChannelLayerNorm, FlowStage

FAST = ["triton", "cpp"]


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


@pytest.mark.parametrize("backend", ["torch", "triton", "cpp", "auto"])
def test_modules_without_logdet_same_z(backend, require_backend):
    require_backend(backend)
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


def test_coupling_op_ignores_autocast():
    """The dense-permutation reference coupling is a conv: autocast must not recast it."""
    torch.manual_seed(0)
    blk = AllInOneCoupling(6, backend="torch")
    x = torch.randn(2, 6, 5, 7)
    ref = blk(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, logdet = blk(x)
    assert y.dtype == logdet.dtype == torch.float32
    # only the subnet ran in bf16; the epilogue saw the same float32 x
    torch.testing.assert_close(y, ref[0], atol=5e-2, rtol=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        nll = ops.flow_nll(y, logdet, backend="torch")
    assert nll.dtype == torch.float32


def test_channel_layer_norm_matches_layernorm_over_channels():
    torch.manual_seed(0)
    cn = ChannelLayerNorm(7)
    with torch.no_grad():
        cn.weight.normal_()
        cn.bias.normal_()
    ln = nn.LayerNorm(7)
    ln.load_state_dict(cn.state_dict())
    x = torch.randn(2, 7, 5, 3, dtype=torch.float64) * 3 + 1
    cn, ln = cn.double(), ln.double()
    torch.testing.assert_close(cn(x), ln(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2))
    # a position's output does not depend on the rest of the image
    x2 = x.clone()
    x2[:, :, 0, 0] += 10
    torch.testing.assert_close(cn(x2)[:, :, 1:], cn(x)[:, :, 1:])
