"""``dadf_fast.integrations.accelerate`` on FrEIA 0.2 models: every place a block is held
(``SequenceINN.module_list``, ``GraphINN.node_list`` and ``module_list``, plain containers) is
rewired, the function and its gradients are FrEIA's, and what is not converted is named."""
from __future__ import annotations

import copy
import inspect
import warnings

import FrEIA.framework as Ff
import FrEIA.modules as Fm
import pytest
import torch
import torch.nn as nn
from FrEIA.modules.base import InvertibleModule

from dadf_fast.integrations import AccelerationReport, accelerate
from dadf_fast.nn.all_in_one import AllInOneBlock

C, H, W = 6, 5, 4
TOL = {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=1e-5, atol=1e-5)}


def conv_subnet(c_in, c_out):
    return nn.Sequential(nn.Conv2d(c_in, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, c_out, 1))


def _perturb(model: nn.Module) -> nn.Module:
    """Move every trainable parameter off its init (offsets start at zero, the scale at a
    constant), so that a wrong offset or scale path cannot match by accident."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.2 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model


def sequence(steps=3, **kwargs) -> Ff.SequenceINN:
    inn = Ff.SequenceINN(C, H, W)
    for _ in range(steps):
        inn.append(Fm.AllInOneBlock, subnet_constructor=conv_subnet, affine_clamping=1.7, **kwargs)
    return _perturb(inn)


def graph(steps=3) -> Ff.GraphINN:
    nodes = [Ff.InputNode(C, H, W, name="in")]
    for i in range(steps):
        nodes.append(Ff.Node(nodes[-1], Fm.AllInOneBlock, {"subnet_constructor": conv_subnet}, name=f"step{i}"))
    nodes.append(Ff.OutputNode(nodes[-1], name="out"))
    return _perturb(Ff.GraphINN(nodes))


def _run(model, x, rev=False):
    z, ld = model(x, rev=rev)
    return z, ld


def assert_same_function(orig: nn.Module, fast: nn.Module, dtype, rev_too=True):
    """Outputs, log-jacobians, and gradients w.r.t. the input and every trainable parameter."""
    orig, fast = orig.to(dtype), fast.to(dtype)
    x = torch.randn(3, C, H, W, dtype=dtype)
    grads = []
    for model in (orig, fast):
        model.zero_grad(set_to_none=True)
        xi = x.clone().requires_grad_(True)
        z, ld = _run(model, xi)
        (0.5 * (z ** 2).sum() - ld.sum()).backward()
        named = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
        grads.append((z.detach(), ld.detach(), xi.grad, named))
    (z0, ld0, gx0, gp0), (z1, ld1, gx1, gp1) = grads
    torch.testing.assert_close(z1, z0, **TOL[dtype])
    torch.testing.assert_close(ld1, ld0, **TOL[dtype])
    torch.testing.assert_close(gx1, gx0, **TOL[dtype])
    assert gp1.keys() == gp0.keys() and len(gp0) > 0
    for name in gp0:
        torch.testing.assert_close(gp1[name], gp0[name], **TOL[dtype], msg=lambda m, n=name: f"grad of {n}: {m}")
    if rev_too:
        with torch.no_grad():
            torch.testing.assert_close(_run(fast, z0, rev=True)[0], _run(orig, z0, rev=True)[0], **TOL[dtype])


@pytest.mark.parametrize("backend", ["torch", "cpp"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_sequence_inn(backend, dtype, require_backend):
    require_backend(backend)
    orig = sequence()
    fast = copy.deepcopy(orig)
    report = accelerate(fast, backend=backend)
    assert report.replaced == ["module_list.0", "module_list.1", "module_list.2"]
    assert report.left == [] and report.already_fast == [] and bool(report)
    assert all(type(m) is AllInOneBlock for m in fast.module_list)
    assert_same_function(orig, fast, dtype)


@pytest.mark.parametrize("backend", ["torch", "cpp"])
def test_compiled_accelerated_model_matches_eager(backend, require_backend):
    """``torch.compile`` traces the accelerated blocks (the cpp op through its fake kernel and
    registered autograd): forward and input gradient equal the eager accelerated model's."""
    require_backend(backend)
    fast = sequence().double()
    accelerate(fast, backend=backend)
    x = torch.randn(2, C, H, W, dtype=torch.float64)
    ld(fast, x)  # the first resolution of a backend imports its kernel module: eagerly, once
    compiled = torch.compile(fast, backend="aot_eager")
    (z0, l0, g0), (z1, l1, g1) = ld(fast, x), ld(compiled, x)
    torch.testing.assert_close(z1, z0, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(l1, l0, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g1, g0, rtol=1e-12, atol=1e-12)


def ld(model, x):
    """``(z, log-jacobian, d loss / d x)`` of the flow's NLL-style loss."""
    xi = x.clone().requires_grad_(True)
    z, logdet = model(xi)
    (0.5 * (z ** 2).sum() - logdet.sum()).backward()
    return z.detach(), logdet.detach(), xi.grad


def test_graph_inn_node_and_module_list_both_rewired():
    orig = graph()
    fast = copy.deepcopy(orig)
    report = accelerate(fast, backend="torch")
    assert len(report.replaced) == 3
    blocks = [n.module for n in fast.node_list if n.module is not None]
    assert len(blocks) == 3 and all(type(b) is AllInOneBlock for b in blocks)
    # the graph's forward runs node.module; module_list is what .parameters()/.to() see
    assert all(a is b for a, b in zip(blocks, fast.module_list))
    assert_same_function(orig, fast, torch.float64)


def test_plain_container_and_shared_block():
    block = _perturb(Fm.AllInOneBlock([(C, H, W)], subnet_constructor=conv_subnet))
    model = nn.ModuleDict({"a": block, "seq": nn.Sequential(nn.Identity(), block)})
    orig_out = block([torch.ones(2, C, H, W)])[0][0]
    report = accelerate(model)
    assert report.replaced == ["a"]  # one block, held twice
    assert type(model["a"]) is AllInOneBlock and model["seq"][1] is model["a"]
    torch.testing.assert_close(model["a"]([torch.ones(2, C, H, W)])[0][0], orig_out, rtol=1e-5, atol=1e-5)


def test_state_dict_unchanged_and_twice_is_a_no_op():
    orig = graph()
    fast = copy.deepcopy(orig)
    accelerate(fast)
    sd0, sd1 = orig.state_dict(), fast.state_dict()
    assert list(sd1) == list(sd0)
    for k in sd0:
        assert torch.equal(sd1[k], sd0[k]), k
    blocks = list(fast.module_list)
    again = accelerate(fast)
    assert again.replaced == [] and again.left == [] and len(again.already_fast) == 3 and bool(again)
    assert all(a is b for a, b in zip(blocks, fast.module_list))
    assert "3 already fast" in str(again)


def test_checkpoints_load_both_ways():
    """A checkpoint of another original (other permutations, other weights) loads into the
    accelerated model, which then computes that original's function, and back."""
    fast = graph()
    accelerate(fast)
    torch.manual_seed(5)
    other = graph()
    fast.load_state_dict(other.state_dict())
    assert_same_function(other, fast, torch.float64)
    third = graph()
    third.load_state_dict(fast.state_dict())
    assert_same_function(third, fast, torch.float64)


def test_parameters_are_the_same_objects():
    """The new blocks hold the original parameter tensors: an optimizer built before the call
    keeps training the accelerated model."""
    model = graph()
    before = [id(p) for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    accelerate(model)
    assert [id(p) for p in model.parameters()] == before
    z, ld = model(torch.randn(2, C, H, W))
    (0.5 * (z ** 2).sum() - ld.sum()).backward()
    assert all(p.grad is not None for g in opt.param_groups for p in g["params"] if p.requires_grad)


def test_training_mode_and_dtype_kept():
    orig = sequence().double().eval()
    accelerate(orig)
    assert all(not m.training for m in orig.modules())
    assert all(p.dtype == torch.float64 for p in orig.parameters())


class OverridingBlock(Fm.AllInOneBlock):
    def _affine(self, x, a, rev=False):  # a different coupling: must not be converted
        return super()._affine(x, 2 * a, rev)


class PlainSubclass(Fm.AllInOneBlock):
    """A subclass that changes nothing the block computes."""


def _clone_class(module_name: str):
    """FrEIA's block module executed again as ``module_name``: the same code in a class object
    that is not FrEIA's (like a reloaded module, or another vendored copy), found by duck typing."""
    import FrEIA.modules.all_in_one_block as src

    ns = {"__name__": module_name, "__package__": "FrEIA.modules"}  # its relative imports resolve to FrEIA
    with warnings.catch_warnings():  # FrEIA's docstring has an invalid escape sequence
        warnings.simplefilter("ignore", DeprecationWarning)
        code = compile(inspect.getsource(src), f"<{module_name}>", "exec")
    exec(code, ns)
    assert not issubclass(ns["AllInOneBlock"], Fm.AllInOneBlock)
    return ns["AllInOneBlock"]


class AllInOneBlock_lacking(InvertibleModule):  # noqa: N801
    pass


AllInOneBlock_lacking.__name__ = "AllInOneBlock"


def test_left_blocks_are_named_with_their_reason(monkeypatch):
    dims = [(C, H, W)]
    hooked = Fm.AllInOneBlock(dims, subnet_constructor=conv_subnet)
    hooked.register_forward_hook(lambda *a: None)
    refused = Fm.AllInOneBlock(dims, subnet_constructor=conv_subnet)
    model = nn.ModuleDict({
        "ok": Fm.AllInOneBlock(dims, subnet_constructor=conv_subnet),
        "hooked": hooked,
        "overriding": OverridingBlock(dims, subnet_constructor=conv_subnet),
        "subclass": PlainSubclass(dims, subnet_constructor=conv_subnet),
        "reloaded": _clone_class("FrEIA.modules.all_in_one_block")(dims, subnet_constructor=conv_subnet),
        "vendored": _clone_class("vendored.flow")(dims, subnet_constructor=conv_subnet),
        "lacking": AllInOneBlock_lacking(dims),
        "refused": refused,
    })
    real = AllInOneBlock.unsupported_reason
    monkeypatch.setattr(AllInOneBlock, "unsupported_reason",
                        staticmethod(lambda b, backend="auto": "option X is not run" if b is refused else real(b, backend)))
    kept = dict(model.items())
    report = accelerate(model)
    assert report.replaced == ["ok", "subclass", "reloaded"]
    left = dict(report.left)
    assert list(left) == ["hooked", "overriding", "vendored", "lacking", "refused"]
    assert "1 forward hook" in left["hooked"]
    assert "_affine" in left["overriding"] and "overridden" in left["overriding"]
    assert "vendored.flow" in left["vendored"]
    assert "is not FrEIA 0.2's" in left["lacking"]
    assert left["refused"] == "option X is not run"
    for name in left:  # left exactly as they were
        assert model[name] is kept[name]
    assert not report and "5 left" in str(report) and "refused: option X is not run" in str(report)


def test_explicit_backend_leaves_blocks_it_cannot_run():
    model = nn.ModuleList([Fm.AllInOneBlock([(C, H, W)], subnet_constructor=conv_subnet, gin_block=True),
                           Fm.AllInOneBlock([(C, H, W)], subnet_constructor=conv_subnet)])
    report = accelerate(model, backend="cpp")
    assert report.replaced == ["1"] and report.left[0][0] == "0" and "gin_block=True" in report.left[0][1]


def test_model_without_flow_blocks():
    report = accelerate(nn.Sequential(nn.Linear(3, 3), nn.ReLU()))
    assert report == AccelerationReport()
    assert not report
    assert str(report) == "accelerate: the model has no FrEIA AllInOneBlock (nothing replaced)"


def test_the_model_itself_is_a_block():
    block = Fm.AllInOneBlock([(C, H, W)], subnet_constructor=conv_subnet)
    report = accelerate(block)
    assert report.replaced == [] and report.left[0][0] == "" and "from_freia" in report.left[0][1]
    assert "<the model itself>" in str(report)


def test_bad_arguments():
    with pytest.raises(ValueError, match="backend must be one of"):
        accelerate(nn.Linear(2, 2), backend="fast")
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        accelerate({"a": 1})
