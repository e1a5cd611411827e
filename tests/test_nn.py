"""nn modules: FrEIA drop-in coupling, flow stage inversion, dual attention and the reconstructor."""
import math

import pytest
import torch

from dadf_fast.nn import AllInOneCoupling, DualAttention, DualBlock, FlowStage, Reconstructor, coupling_subnet

FrEIA_modules = pytest.importorskip("FrEIA.modules")


@pytest.mark.parametrize("c", [2, 5, 8])
@pytest.mark.parametrize("kernel", [3, 1])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_allinone_coupling_is_a_freia_drop_in(c, kernel, dtype, tol):
    blk = FrEIA_modules.AllInOneBlock([(c, 6, 5)], subnet_constructor=lambda ci, co: coupling_subnet(ci, co, kernel),
                                      affine_clamping=2.0)
    with torch.no_grad():
        blk.global_scale.add_(0.3 * torch.randn_like(blk.global_scale))
        blk.global_offset.normal_()
        for p in blk.subnet.parameters():
            p.normal_(0, 0.5)
    blk = blk.to(dtype)
    mod = AllInOneCoupling(c, kernel_size=kernel, backend="torch").to(dtype)
    mod.load_state_dict(blk.state_dict())  # FrEIA names, including w_perm / w_perm_inv
    assert torch.equal(mod.perm, blk.w_perm.reshape(c, c).argmax(1))
    x = torch.randn(2, c, 6, 5, dtype=dtype, requires_grad=True)
    (y_ref,), ld_ref = blk([x])
    y, ld = mod(x)
    torch.testing.assert_close(y, y_ref, atol=tol, rtol=tol)
    torch.testing.assert_close(ld, ld_ref, atol=tol * 10, rtol=tol)
    # gradients of every parameter and of the input agree too
    loss_ref = (y_ref ** 2).sum() + ld_ref.sum()
    loss = (y ** 2).sum() + ld.sum()
    g_ref = torch.autograd.grad(loss_ref, [x, blk.global_scale, blk.global_offset, *blk.subnet.parameters()])
    g = torch.autograd.grad(loss, [x, mod.global_scale, mod.global_offset, *mod.subnet.parameters()])
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b, atol=tol * 100, rtol=tol * 10)
    (x_ref,), ldr_ref = blk([y_ref.detach()], rev=True)
    xr, ldr = mod(y.detach(), rev=True)
    torch.testing.assert_close(xr, x_ref, atol=tol * 10, rtol=tol)
    torch.testing.assert_close(ldr, ldr_ref, atol=tol * 10, rtol=tol)
    # and our state dict loads back into FrEIA
    blk2 = FrEIA_modules.AllInOneBlock([(c, 6, 5)], subnet_constructor=lambda ci, co: coupling_subnet(ci, co, kernel))
    blk2.to(dtype).load_state_dict(mod.state_dict())
    torch.testing.assert_close(blk2([x])[0][0], y, atol=tol, rtol=tol)


def test_allinone_coupling_soft_permutation_uses_dense_path():
    import numpy as np

    torch.manual_seed(0)
    np.random.seed(0)  # FrEIA draws the rotation with scipy (numpy's global RNG)
    blk = FrEIA_modules.AllInOneBlock([(6, 4, 4)], subnet_constructor=lambda ci, co: coupling_subnet(ci, co, 3),
                                      permute_soft=True).double()
    mod = AllInOneCoupling(6, kernel_size=3).double()
    mod.load_state_dict(blk.state_dict())
    assert mod.permute_soft
    x = torch.randn(2, 6, 4, 4, dtype=torch.float64)
    (y_ref,), ld_ref = blk([x])
    y, ld = mod(x)
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(ld, ld_ref)
    xr, _ = mod(y, rev=True)
    # FrEIA stores the rotation and its transpose in float32, so the inverse is exact only
    # to float32 rounding even in a float64 block
    torch.testing.assert_close(xr, x, atol=1e-6, rtol=1e-6)
    mod.backend = "cpp"
    with pytest.raises(RuntimeError, match="soft permutation"):
        mod(x)


def test_allinone_coupling_rejects_one_channel():
    with pytest.raises(ValueError, match="at least 2 channels"):
        AllInOneCoupling(1)


def test_flow_stage_inverts_and_logdet_matches_jacobian():
    torch.manual_seed(0)
    stage = FlowStage(5, (3, 2), steps=4, backend="torch").double()
    with torch.no_grad():
        for p in stage.parameters():
            if p.requires_grad and p.dim() == 4:
                p.normal_(0, 0.5)
    x = torch.randn(1, 5, 3, 2, dtype=torch.float64)
    z, ld = stage(x)
    torch.testing.assert_close(stage.reverse(z), stage.norm(x))
    # log-det of the coupling steps (LayerNorm excluded, as in DADF's loss) by brute force
    def steps(u):
        for s in stage.steps:
            u, _ = s(u)
        return u
    u = stage.norm(x).detach()
    jac = torch.autograd.functional.jacobian(steps, u).reshape(30, 30)
    torch.testing.assert_close(ld[0], torch.linalg.slogdet(jac)[1])


def test_flow_stage_bad_input():
    stage = FlowStage(4, 8, steps=2)
    with pytest.raises(ValueError, match=r"\[B, 4, 8, 8\]"):
        stage(torch.randn(2, 4, 8, 7))


def test_dual_attention_module_matches_manual_computation():
    torch.manual_seed(0)
    mod = DualAttention(12, 3, backend="torch").double()
    x = torch.randn(2, 7, 12, dtype=torch.float64)
    m = torch.randn(2, 7, 12, dtype=torch.float64)
    ox, om = mod(x, m)

    def heads(t):
        return t.view(2, 7, 3, 4).transpose(1, 2)

    wq, wk, wv = mod.qkv.weight.chunk(3)
    bq, bk, bv = mod.qkv.bias.chunk(3)
    qx, kx, vx = (heads(x @ w.T + b) for w, b in ((wq, bq), (wk, bk), (wv, bv)))
    qm, vm = heads(m @ wq.T + bq), heads(m @ wv.T + bv)
    sx = torch.softmax(qx @ kx.transpose(-1, -2) / math.sqrt(4), -1) @ vx
    sm = torch.softmax(qm @ kx.transpose(-1, -2) / math.sqrt(4), -1) @ vm
    torch.testing.assert_close(ox, mod.proj(sx.transpose(1, 2).reshape(2, 7, 12)))
    torch.testing.assert_close(om, mod.proj(sm.transpose(1, 2).reshape(2, 7, 12)))


def test_dual_block_shares_weights_between_streams():
    torch.manual_seed(0)
    blk = DualBlock(16, 4, backend="torch")
    x = torch.randn(2, 5, 16)
    # memory tokens equal to the input: both streams then compute the same thing
    ox, om = blk(x, x.clone())
    torch.testing.assert_close(ox, om)


def test_reconstructor_shapes_and_memory_path():
    rec = Reconstructor((3, 5, 7), ((16, 16), (8, 8), (4, 4)), (4, 2, 1), embed_dim=8, depth=2, num_heads=2,
                        backend="torch")
    feats = [torch.randn(2, 3, 16, 16), torch.randn(2, 5, 8, 8), torch.randn(2, 7, 4, 4)]
    local, glob = rec(feats)
    assert [t.shape for t in local] == [f.shape for f in feats]
    assert [t.shape for t in glob] == [f.shape for f in feats]
    # the global reconstruction depends on the input only through the memorial attention keys
    feats2 = [f + 1 for f in feats]
    _, glob2 = rec(feats2)
    assert not torch.allclose(glob[0], glob2[0])


def test_reconstructor_rejects_mismatched_grids():
    with pytest.raises(ValueError, match="same token grid"):
        Reconstructor((3, 5), ((16, 16), (16, 16)), (4, 2))


@pytest.mark.parametrize("k", [1, 3])
def test_depthwise_conv_matches_grouped_conv(k):
    import torch.nn.functional as F

    from dadf_fast.nn.flow import DepthwiseConv2d

    torch.manual_seed(0)
    conv = DepthwiseConv2d(5, k)
    x = torch.randn(2, 5, 6, 4, requires_grad=True)
    y = conv(x)
    y_ref = F.conv2d(x, conv.weight, conv.bias, padding=k // 2, groups=5)
    torch.testing.assert_close(y, y_ref)
    g = torch.autograd.grad(y.square().sum(), [x, conv.weight, conv.bias])
    g_ref = torch.autograd.grad(y_ref.square().sum(), [x, conv.weight, conv.bias])
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b)
    assert set(conv.state_dict()) == {"weight", "bias"}
