"""The pure-torch reference against FrEIA 0.2, brute-force Jacobians and explicit formulas."""
import math

import pytest
import torch
import torch.nn.functional as F

from dadf_fast import reference
from dadf_fast.nn import coupling_subnet

FrEIA_modules = pytest.importorskip("FrEIA.modules")


def _freia_block(c, kernel=3, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    blk = FrEIA_modules.AllInOneBlock([(c, 5, 7)], subnet_constructor=lambda ci, co: coupling_subnet(ci, co, kernel),
                                      affine_clamping=2.0, permute_soft=False)
    with torch.no_grad():  # move away from the identity-ish init so every term matters
        blk.global_scale.add_(torch.randn_like(blk.global_scale))
        blk.global_offset.normal_()
        for p in blk.subnet.parameters():
            p.normal_(0, 0.5)
    return blk.to(dtype)


def _freia_args(blk, x):
    """The op's arguments equivalent to FrEIA block ``blk`` on input x."""
    c = x.shape[1]
    c1 = c - c // 2
    a = blk.subnet(x[:, :c1])
    g = blk.global_scale_activation(blk.global_scale).reshape(c)
    b = blk.global_offset.reshape(c)
    perm = blk.w_perm.reshape(c, c).argmax(dim=1)
    return a, g, b, perm


@pytest.mark.parametrize("c", [2, 3, 7, 10])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_affine_coupling_matches_freia(c, dtype, tol):
    blk = _freia_block(c, dtype=dtype)
    x = torch.randn(3, c, 5, 7, dtype=dtype)
    (y_ref,), ld_ref = blk([x])
    a, g, b, perm = _freia_args(blk, x)
    y, ld = reference.affine_coupling(x, a, g, b, perm)
    torch.testing.assert_close(y, y_ref, atol=tol, rtol=tol)
    torch.testing.assert_close(ld, ld_ref, atol=tol * 10, rtol=tol)
    # reverse: FrEIA inverts y; the reference inverts given the same subnet output
    (x_ref,), ldr_ref = blk([y_ref], rev=True)
    xr, ldr = reference.affine_coupling(y_ref, a, g, b, perm, reverse=True)
    torch.testing.assert_close(xr, x_ref, atol=tol * 10, rtol=tol)
    torch.testing.assert_close(xr, x, atol=tol * 10, rtol=tol)
    torch.testing.assert_close(ldr, ldr_ref, atol=tol * 10, rtol=tol)


def test_affine_coupling_logdet_is_log_abs_det_jacobian():
    torch.manual_seed(1)
    c, h, w = 5, 2, 3
    x = torch.randn(1, c, h, w, dtype=torch.float64)
    a = torch.randn(1, 2 * (c // 2), h, w, dtype=torch.float64) * 5  # large enough to hit the tanh clamp
    g = torch.rand(c, dtype=torch.float64) + 0.5
    b = torch.randn(c, dtype=torch.float64)
    perm = torch.randperm(c)
    _, ld = reference.affine_coupling(x, a, g, b, perm)
    jac = torch.autograd.functional.jacobian(lambda t: reference.affine_coupling(t, a, g, b, perm)[0], x)
    jac = jac.reshape(c * h * w, c * h * w)
    sign, logabs = torch.linalg.slogdet(jac)
    assert sign != 0
    torch.testing.assert_close(ld[0], logabs, atol=1e-9, rtol=1e-9)


def test_affine_coupling_permutation_semantics():
    """Output channel i takes channel perm[i] (checked with a = 0, g = 1, b = 0: identity coupling)."""
    c = 6
    x = torch.arange(c, dtype=torch.float64).view(1, c, 1, 1).expand(2, c, 3, 3).contiguous()
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    y, ld = reference.affine_coupling(x, torch.zeros(2, c, 3, 3, dtype=torch.float64), torch.ones(c, dtype=torch.float64),
                                      torch.zeros(c, dtype=torch.float64), perm)
    assert y[0, :, 0, 0].tolist() == [3.0, 0.0, 5.0, 1.0, 4.0, 2.0]
    assert ld.tolist() == [0.0, 0.0]


def _explicit_attention(q, k, v, scale):
    b, h, n, d = q.shape
    out = torch.empty_like(q)
    for bi in range(b):
        for hi in range(h):
            s = (q[bi, hi] @ k[bi, hi].T) * scale
            p = torch.exp(s - s.max(dim=1, keepdim=True).values)
            p = p / p.sum(dim=1, keepdim=True)
            out[bi, hi] = p @ v[bi, hi]
    return out


@pytest.mark.parametrize("scale", [None, 0.3])
def test_dual_attention_explicit_formula_noncontiguous(scale):
    b, n, h, d = 2, 9, 3, 5
    qkv = torch.randn(b, 2, n, 3, h, d, dtype=torch.float64)
    qx, kx, vx = (qkv[:, 0, :, i].transpose(1, 2) for i in range(3))
    qm, vm = qkv[:, 1, :, 0].transpose(1, 2), qkv[:, 1, :, 2].transpose(1, 2)
    assert not qx.is_contiguous()
    ox, om = reference.dual_attention(qx, kx, vx, qm, vm, scale=scale)
    sc = 1 / math.sqrt(d) if scale is None else scale
    torch.testing.assert_close(ox, _explicit_attention(qx, kx, vx, sc))
    torch.testing.assert_close(om, _explicit_attention(qm, kx, vm, sc))


def test_flow_nll_formula():
    z = torch.randn(4, 3, 5, 2, dtype=torch.float64)
    ld = torch.randn(4, dtype=torch.float64)
    want = torch.tensor([0.5 * sum(v * v for v in z[i].flatten().tolist()) - ld[i].item() for i in range(4)],
                        dtype=torch.float64)
    torch.testing.assert_close(reference.flow_nll(z, ld), want)


def test_multiscale_score_formula():
    zs = [torch.randn(2, 4, 8, 8, dtype=torch.float64), torch.randn(2, 6, 4, 4, dtype=torch.float64)]
    amap, score = reference.multiscale_score(zs, 16)
    assert amap.shape == (2, 1, 16, 16) and score.shape == (2,)
    # same-size scale: no interpolation, so the map is exactly 1 - exp(-0.5 mean z^2)
    amap1, _ = reference.multiscale_score(zs[:1], (8, 8))
    torch.testing.assert_close(amap1[:, 0], 1 - torch.exp(-0.5 * (zs[0] ** 2).mean(1)))
    # two scales: mean of the two upsampled likelihoods
    p = [F.interpolate(torch.exp(-0.5 * (z ** 2).mean(1, keepdim=True)), size=(16, 16), mode="bilinear",
                       align_corners=False) for z in zs]
    torch.testing.assert_close(amap, 1 - (p[0] + p[1]) / 2)
    torch.testing.assert_close(score, amap.flatten(1).max(1).values)
    assert float(amap.min()) >= 0 and float(amap.max()) <= 1
    _, mean_score = reference.multiscale_score(zs, 16, reduce="mean")
    torch.testing.assert_close(mean_score, amap.flatten(1).mean(1))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_permutation_gather_equals_freia_dense_conv_bit_for_bit(dtype):
    """The reference permutes with a gather; FrEIA with a dense 1x1 conv by its 0/1 ``w_perm``.
    On finite input the two are the same numbers (torch.equal), forward and reverse."""
    blk = _freia_block(7, dtype=dtype)
    v = torch.randn(3, 7, 5, 7, dtype=dtype) * 100
    c = v.shape[1]
    perm = blk.w_perm.reshape(c, c).argmax(dim=1)
    zeros_a = torch.zeros(3, 2 * (c // 2), 5, 7, dtype=dtype)  # s = t = 0: coupling is the identity
    ones, zeros = torch.ones(c, dtype=dtype), torch.zeros(c, dtype=dtype)
    y, _ = reference.affine_coupling(v, zeros_a, ones, zeros, perm)
    assert torch.equal(y, F.conv2d(v, blk.w_perm))
    assert torch.equal(reference.permutation_matrix(perm, dtype), blk.w_perm.reshape(c, c))
    xr, _ = reference.affine_coupling(v, zeros_a, ones, zeros, perm, reverse=True)
    assert torch.equal(xr, F.conv2d(v, blk.w_perm_inv))


def test_permutation_non_finite_values_stay_local_unlike_the_dense_conv():
    """The contract (see ops.affine_coupling): an inf goes where the permutation sends it;
    FrEIA's dense conv would turn the other channels of that pixel into NaN (0 * inf)."""
    c = 4
    perm = torch.tensor([2, 0, 3, 1])
    v = torch.arange(1.0, 1.0 + c).view(1, c, 1, 1).repeat(1, 1, 2, 2)
    v[0, 3, 1, 0] = float("inf")
    a = torch.zeros(1, 4, 2, 2)
    y, ld = reference.affine_coupling(v, a, torch.ones(c), torch.zeros(c), perm)
    assert y[0, :, 1, 0].tolist() == [3.0, 1.0, float("inf"), 2.0]
    assert y[0, :, 0, 0].tolist() == [3.0, 1.0, 4.0, 2.0]
    assert ld.tolist() == [0.0]
    dense = F.conv2d(v, reference.permutation_matrix(perm)[:, :, None, None])
    assert bool(torch.isnan(dense[0, :, 1, 0]).any())  # what the contract rules out


def test_flow_nll_and_score_reduced_precision_are_float32_then_rounded():
    z = torch.randn(2, 70000).half()
    got = reference.flow_nll(z, torch.zeros(2, dtype=torch.float16))
    assert got.dtype == torch.float16 and bool(torch.isfinite(got).all())
    torch.testing.assert_close(got, (0.5 * z.double().pow(2).sum(1)).half(), rtol=1e-3, atol=0)
    # the map: float32 arithmetic rounded once to float16 is float64's map rounded to float16
    # (float16 intermediates were off by up to 2 ulp)
    zs = [torch.randn(2, 8, 4, 4).half() * 3, torch.randn(2, 5, 3, 3).half() * 3]
    amap, score = reference.multiscale_score(zs, 7)
    amap64, score64 = reference.multiscale_score([z.double() for z in zs], 7)
    assert amap.dtype == torch.float16 and score.dtype == torch.float16
    assert torch.equal(amap, amap64.half()) and torch.equal(score, score64.half())
