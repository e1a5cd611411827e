"""``ops.multiscale_score`` (anomaly map ``1 - mean over scales of upsampled exp(-0.5 mean_c
z^2)`` and its max or mean) on every backend and device, and its reference.  Random inputs:
tests/ops/test_fuzz_valid.py."""
import pytest
import torch
import torch.nn.functional as F

from dadf_fast import ops, reference
from samples import (F16, F32, F64, SCORE_CASES, backend_params, check_against_reference, sample, sample_params,
                     score_inputs, tolerance)

OP = "multiscale_score"


@pytest.mark.parametrize("backend,device,dtype,name", sample_params(OP))
def test_matches_reference(backend, device, dtype, name):
    s = sample(OP, name, device, dtype, backend)
    names = ["anomaly_map", "score"] + [f"dz{i}" for i in range(len(s.tensors))]
    (amap, score), _ = check_against_reference(OP, backend, dtype, s, names)
    assert amap.shape == (s.info["batch"], 1) + s.info["size"] and score.shape == (s.info["batch"],)


@pytest.mark.parametrize("backend,device,dtype", backend_params(OP))
@pytest.mark.parametrize("reduce", ["max", "mean"])
def test_score_gradient(backend, device, dtype, reduce):
    """The score alone: max sends its gradient to the arg-max pixel's sources only."""
    scales, size = SCORE_CASES[1]
    zs = [z.requires_grad_() for z in score_inputs(scales, 2, dtype, device)]
    got = torch.autograd.grad(ops.multiscale_score(zs, size, reduce, backend=backend)[1].sum(), zs)
    ref_dtype = F32 if dtype not in (F32, F64) else dtype
    rz = [z.detach().to(ref_dtype).requires_grad_() for z in zs]
    want = torch.autograd.grad(reference.multiscale_score(rz, size, reduce)[1].sum(), rz)
    for g1, g2 in zip(got, want):
        assert g1.dtype == dtype
        torch.testing.assert_close(g1.to(ref_dtype), g2, **tolerance(OP, dtype, grad=True))


@pytest.mark.parametrize("backend,device,dtype", backend_params(OP, devices=("cpu",), dtypes=(F64,)))
@pytest.mark.parametrize("reduce", ["max", "mean"])
def test_gradcheck(backend, device, dtype, reduce):
    zs = [torch.randn(2, 3, 5, 4, dtype=dtype, requires_grad=True),
          torch.randn(2, 2, 3, 3, dtype=dtype, requires_grad=True)]
    assert torch.autograd.gradcheck(lambda *z: ops.multiscale_score(list(z), (7, 6), reduce, backend=backend), zs)


@pytest.mark.parametrize("backend,device,dtype", backend_params(OP, devices=("cpu",), dtypes=(F32,)))
def test_upsampling_is_interpolate_to_float_rounding(backend, device, dtype):
    """One channel with z chosen so that p is a known map: the upsampling is F.interpolate's."""
    p = torch.rand(2, 1, 7, 5) * 0.9 + 0.05
    z = torch.sqrt(-2 * torch.log(p))  # exp(-0.5 z^2) == p
    m, _ = ops.multiscale_score([z], (23, 19), backend=backend)
    want = 1 - F.interpolate(torch.exp(-0.5 * z.square()), size=(23, 19), mode="bilinear", align_corners=False)
    assert (m - want).abs().max().item() <= 2.5e-7


@pytest.mark.parametrize("backend,device,dtype", backend_params(OP, backends=("cpp",), dtypes=(F32,)))
def test_torch_compile_fullgraph(backend, device, dtype):
    """The registered op (fake kernel + autograd) inside ``torch.compile(fullgraph=True)``."""
    import torch._dynamo

    zs = [torch.randn(2, 6, 8, 8, device=device, requires_grad=True), torch.randn(2, 6, 4, 4, device=device)]
    assert ops.selected_backend(OP, backend, device, dtype) == backend

    def step(z0, z1):
        amap, score = ops.multiscale_score([z0, z1], (16, 16), backend=backend)
        return amap, score

    torch._dynamo.reset()
    got = torch.compile(step, fullgraph=True, backend="inductor" if device == "cuda" else "aot_eager")(*zs)
    want = step(*zs)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(torch.autograd.grad(got[0].sum(), zs[0]), torch.autograd.grad(want[0].sum(), zs[0]))
    torch._dynamo.reset()


def test_opcheck_cpp(require_backend):
    require_backend("cpp")
    import dadf_fast.kernels.cpp.ops  # noqa: F401  (registers the fake kernels and autograd)

    zs = [torch.randn(2, 3, 5, 4), torch.randn(2, 2, 3, 3)]
    torch.library.opcheck(torch.ops.dadf_fast.multiscale_score.default, (zs, 11, 9, "max"))
    torch.library.opcheck(torch.ops.dadf_fast.multiscale_score.default, (zs, 4, 6, "mean"))


# ------------------------------------------------------------------ the reference


def test_reference_formula():
    zs = [torch.randn(2, 4, 8, 8, dtype=F64), torch.randn(2, 6, 4, 4, dtype=F64)]
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


def test_reference_float16_is_float32_then_rounded():
    """float32 arithmetic rounded once to float16 is float64's map rounded to float16
    (float16 intermediates were off by up to 2 ulp)."""
    zs = [torch.randn(2, 8, 4, 4).half() * 3, torch.randn(2, 5, 3, 3).half() * 3]
    amap, score = reference.multiscale_score(zs, 7)
    amap64, score64 = reference.multiscale_score([z.double() for z in zs], 7)
    assert amap.dtype == F16 and score.dtype == F16
    assert torch.equal(amap, amap64.half()) and torch.equal(score, score64.half())
