"""``ops.flow_nll`` (per-sample ``0.5 * sum z^2 - logdet``) on every backend and device, and
its reference.  Random inputs: tests/ops/test_fuzz_valid.py."""
import pytest
import torch

from dadf_fast import ops, reference
from samples import F16, F32, F64, backend_params, check_against_reference, sample, sample_params

OP = "flow_nll"
NAMES = ("nll", "dz", "dlogdet")


@pytest.mark.parametrize("backend,device,dtype,name", sample_params(OP))
def test_matches_reference(backend, device, dtype, name):
    check_against_reference(OP, backend, dtype, sample(OP, name, device, dtype, backend), NAMES)


@pytest.mark.parametrize("backend,device,dtype", backend_params(OP, devices=("cpu",), dtypes=(F64,)))
def test_gradcheck(backend, device, dtype):
    s = sample(OP, "strided", device, dtype, backend)
    ins = [t.detach().requires_grad_() for t in s.tensors]
    assert torch.autograd.gradcheck(lambda z, ld: ops.flow_nll(z, ld, backend=backend), ins)


@pytest.mark.parametrize("backend,device,dtype", backend_params(OP, devices=("cpu",), dtypes=(F32,)))
def test_deterministic_across_thread_counts(backend, device, dtype):
    z, ld = torch.randn(3, 70001), torch.randn(3)
    old = torch.get_num_threads()
    try:
        out = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            out.append(ops.flow_nll(z, ld, backend=backend))
    finally:
        torch.set_num_threads(old)
    assert torch.equal(out[0], out[1])


@pytest.mark.parametrize("backend,device,dtype", backend_params(OP, backends=("cpp",), dtypes=(F32,)))
def test_torch_compile_fullgraph(backend, device, dtype):
    """The registered op (fake kernel + autograd) inside ``torch.compile(fullgraph=True)``."""
    import torch._dynamo

    z = torch.randn(3, 4, 5, device=device, requires_grad=True)
    ld = torch.randn(3, device=device, requires_grad=True)
    assert ops.selected_backend(OP, backend, device, dtype) == backend

    def step(z, ld):
        return ops.flow_nll(z, ld, backend=backend).square().sum()

    torch._dynamo.reset()
    got = torch.compile(step, fullgraph=True, backend="inductor" if device == "cuda" else "aot_eager")(z, ld)
    want = step(z, ld)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(torch.autograd.grad(got, (z, ld)), torch.autograd.grad(want, (z, ld)))
    torch._dynamo.reset()


def test_opcheck_cpp(require_backend):
    require_backend("cpp")
    import dadf_fast.kernels.cpp.ops  # noqa: F401  (registers the fake kernels and autograd)

    z = torch.randn(3, 4, 5, dtype=F64, requires_grad=True)
    ld = torch.randn(3, dtype=F64, requires_grad=True)
    torch.library.opcheck(torch.ops.dadf_fast.flow_nll_fwd.default, (z, ld))
    torch.library.opcheck(torch.ops.dadf_fast.flow_nll_bwd.default, (torch.randn(3, dtype=F64), z.detach()))


# ------------------------------------------------------------------ the reference


def test_reference_formula():
    z = torch.randn(4, 3, 5, 2, dtype=F64)
    ld = torch.randn(4, dtype=F64)
    want = torch.tensor([0.5 * sum(v * v for v in z[i].flatten().tolist()) - ld[i].item() for i in range(4)], dtype=F64)
    torch.testing.assert_close(reference.flow_nll(z, ld), want)


def test_reference_float16_is_float32_then_rounded():
    z = torch.randn(2, 70000).half()
    got = reference.flow_nll(z, torch.zeros(2, dtype=F16))
    assert got.dtype == F16 and bool(torch.isfinite(got).all())
    torch.testing.assert_close(got, (0.5 * z.double().pow(2).sum(1)).half(), rtol=1e-3, atol=0)
