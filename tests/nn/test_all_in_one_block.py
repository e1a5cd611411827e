"""dadf_fast.nn.AllInOneBlock against FrEIA 0.2's AllInOneBlock: every option, forward and
reverse, every gradient, state dicts both ways, FrEIA's containers, pickling, conversion of
existing blocks, bad arguments.  FrEIA's block (with its state dict copied in) is the truth."""
import copy
import io
import pickle

import numpy as np
import pytest
import torch
import torch.nn as nn

from dadf_fast.kernels.registry import BackendUnavailable
from dadf_fast.nn import AllInOneBlock

FrEIA_modules = pytest.importorskip("FrEIA.modules")
FrEIA_framework = pytest.importorskip("FrEIA.framework")

pytestmark = pytest.mark.usefixtures("one_thread")

SPATIAL = {0: (), 1: (5,), 2: (4, 3), 3: (2, 3, 2)}


class Subnet:
    """A picklable subnet constructor for ``rank`` spatial dims: a 3-wide layer, tanh, a 1-wide
    layer (Linear layers for 1-D data).  ``gain`` scales the last layer so that the coupling's
    tanh clamp is exercised."""

    def __init__(self, rank: int, gain: float = 4.0):
        self.rank, self.gain = rank, gain

    def __call__(self, c_in, c_out):
        if self.rank == 0:
            first, last = nn.Linear(c_in, 8), nn.Linear(8, c_out)
        else:
            conv = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[self.rank - 1]
            first, last = conv(c_in, 8, 3, padding=1), conv(8, c_out, 1)
        with torch.no_grad():
            last.weight.mul_(self.gain)
        return nn.Sequential(first, nn.Tanh(), last)


# (name, channels, rank, condition channels, options): every option value, curated products
CASES = [
    ("fastflow", 6, 2, 0, {}),
    ("cflow", 7, 0, 3, {}),
    ("sigmoid-prepermute", 5, 2, 0, dict(global_affine_type="SIGMOID", reverse_permutation=True)),
    ("exp-prepermute-cond-1d", 6, 0, 2, dict(global_affine_type="EXP", reverse_permutation=True,
                                             global_affine_init=0.7)),
    ("soft", 6, 2, 0, dict(permute_soft=True)),
    ("soft-sigmoid-cond-prepermute-1d", 5, 0, 2, dict(permute_soft=True, global_affine_type="SIGMOID",
                                                      reverse_permutation=True, global_affine_init=2.0)),
    ("gin-exp", 6, 2, 0, dict(gin_block=True, global_affine_type="EXP")),
    ("gin-soft-cond-1d", 7, 0, 2, dict(gin_block=True, permute_soft=True)),
    ("householder", 6, 2, 0, dict(learned_householder_permutation=2)),
    ("householder-sigmoid-prepermute-cond-1d", 5, 0, 3,
     dict(learned_householder_permutation=2, global_affine_type="SIGMOID", reverse_permutation=True)),
    ("householder-gin-exp-prepermute", 6, 2, 0,
     dict(learned_householder_permutation=2, gin_block=True, global_affine_type="EXP", reverse_permutation=True,
          permute_soft=True)),
    ("conv1d-cond", 5, 1, 2, dict(affine_clamping=1.5)),
    ("conv3d-prepermute", 6, 3, 0, dict(reverse_permutation=True, global_affine_type="SIGMOID")),
]
TORCH_ONLY = ("gin_block", "permute_soft", "learned_householder_permutation")


def make_pair(channels, rank, cond, opts, dtype, backend, seed=0):
    """FrEIA's block (weights moved off their initial values) and the fast block with its state
    dict loaded strictly."""
    torch.manual_seed(seed)
    np.random.seed(seed)  # FrEIA draws permutations with numpy
    dims_in = [(channels, *SPATIAL[rank])]
    dims_c = [(cond, *SPATIAL[rank])] if cond else []
    ref = FrEIA_modules.AllInOneBlock(dims_in, dims_c=dims_c, subnet_constructor=Subnet(rank), **opts)
    with torch.no_grad():
        ref.global_scale.add_(0.3 * torch.randn_like(ref.global_scale))
        ref.global_offset.normal_()
    ref = ref.to(dtype)
    fast = AllInOneBlock(dims_in, dims_c=dims_c, subnet_constructor=Subnet(rank), backend=backend, **opts).to(dtype)
    fast.load_state_dict(ref.state_dict(), strict=True)
    return ref, fast


def inputs(channels, rank, cond, dtype, n=3):
    x = (1.5 * torch.randn(n, channels, *SPATIAL[rank], dtype=dtype)).requires_grad_()
    c = [torch.randn(n, cond, *SPATIAL[rank], dtype=dtype).requires_grad_()] if cond else []
    return x, c


def assert_close(actual, expected, tol, what):
    assert (actual is None) == (expected is None), f"{what}: gradient None on one side only"
    if expected is None:
        return
    scale = max(1.0, float(expected.detach().abs().max()))
    torch.testing.assert_close(actual, expected, rtol=tol, atol=tol * scale, msg=lambda m: f"{what}: {m}")


def run_and_grads(block, x, c, rev, weights):
    (y,), ld = block([x], c=c, rev=rev)
    loss = (y * weights[0]).sum() + (ld * weights[1]).sum()
    params = [p for _, p in block.named_parameters()]
    wrt = [x, *c] + [p for p in params if p.requires_grad]
    grads = torch.autograd.grad(loss, wrt, allow_unused=True)
    return y, ld, grads


@pytest.mark.parametrize("backend", ["torch", "cpp"])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)], ids=["f64", "f32"])
@pytest.mark.parametrize("name,channels,rank,cond,opts", CASES, ids=[c[0] for c in CASES])
def test_matches_freia(name, channels, rank, cond, opts, dtype, tol, backend, require_backend):
    require_backend(backend)
    torch_only = any(opts.get(k) for k in TORCH_ONLY)
    if backend == "cpp" and torch_only:
        # an explicit fused backend refuses, naming the option; auto runs plain torch
        with pytest.raises(BackendUnavailable, match="gin_block|soft permutation|householder"):
            make_pair(channels, rank, cond, opts, dtype, backend)
        backend = "auto"
    ref, fast = make_pair(channels, rank, cond, opts, dtype, backend)
    assert (fast.torch_only_reason() is not None) == torch_only
    assert list(fast.state_dict()) == list(ref.state_dict())
    for rev in (False, True):
        x, c = inputs(channels, rank, cond, dtype)
        if rev:  # invert outputs of the forward direction (values in the range the block makes)
            with torch.no_grad():
                x = ref([x], c=c)[0][0].requires_grad_()
        weights = (torch.randn(x.shape, dtype=dtype), torch.randn(x.shape[0], dtype=dtype))
        y_r, ld_r, g_r = run_and_grads(ref, x, c, rev, weights)
        y_f, ld_f, g_f = run_and_grads(fast, x, c, rev, weights)
        assert_close(y_f, y_r, tol, f"rev={rev} y")
        assert_close(ld_f, ld_r, tol, f"rev={rev} log-det")
        names = ["x"] + [f"c{i}" for i in range(len(c))] + [n for n, p in ref.named_parameters() if p.requires_grad]
        assert len(g_f) == len(g_r) == len(names)
        for n, a, b in zip(names, g_f, g_r):
            assert_close(a, b, tol * 10, f"rev={rev} grad {n}")
    # the round trip: forward then reverse gives the input back
    x, c = inputs(channels, rank, cond, dtype)
    (y,), ld = fast([x], c=c)
    (xr,), ldr = fast([y], c=c, rev=True)
    inv_tol = 1e-4 if opts.get("permute_soft") else tol * 100  # FrEIA stores rotations in float32
    assert_close(xr, x, inv_tol, "inverse")
    assert_close(ldr, -ld, inv_tol, "inverse log-det")


def test_state_dict_loads_back_into_freia():
    for opts in ({}, dict(learned_householder_permutation=2), dict(permute_soft=True, global_affine_type="EXP")):
        torch.manual_seed(1)
        fast = AllInOneBlock([(5, 4, 3)], subnet_constructor=Subnet(2), **opts).double()
        with torch.no_grad():
            fast.global_offset.normal_()
        ref = FrEIA_modules.AllInOneBlock([(5, 4, 3)], subnet_constructor=Subnet(2), **opts).double()
        assert list(ref.state_dict()) == list(fast.state_dict())
        assert {k: v.shape for k, v in ref.state_dict().items()} == {k: v.shape for k, v in fast.state_dict().items()}
        ref.load_state_dict(fast.state_dict(), strict=True)
        x = torch.randn(2, 5, 4, 3, dtype=torch.float64)
        torch.testing.assert_close(fast([x])[0][0], ref([x])[0][0], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(fast([x])[1], ref([x])[1], rtol=1e-12, atol=1e-12)


def _same_outputs(a, b, x, c=()):
    (ya,), la = a([x], c=list(c))
    (yb,), lb = b([x], c=list(c))
    assert torch.equal(ya, yb) and torch.equal(la, lb)


@pytest.mark.parametrize("opts", [{}, dict(learned_householder_permutation=2, reverse_permutation=True),
                                  dict(permute_soft=True, global_affine_type="SIGMOID")], ids=["hard", "hh", "soft"])
def test_pickle_save_load_and_deepcopy(opts):
    torch.manual_seed(2)
    block = AllInOneBlock([(6,)], dims_c=[(2,)], subnet_constructor=Subnet(0), **opts)
    x, c = torch.randn(4, 6), torch.randn(4, 2)
    block([x], c=[c], rev=True)  # a call first: nothing of it may stay behind in the module
    buf = io.BytesIO()
    torch.save(block, buf)
    buf.seek(0)
    copies = [torch.load(buf, weights_only=False), pickle.loads(pickle.dumps(block)), copy.deepcopy(block)]
    for other in copies:
        assert type(other) is AllInOneBlock
        _same_outputs(block, other, x, [c])
        assert torch.equal(other.perm, block.perm)


def test_sequence_inn_with_conditions_equals_freia():
    torch.manual_seed(3)
    ref = FrEIA_framework.SequenceINN(6, 4, 4)
    fast = FrEIA_framework.SequenceINN(6, 4, 4)
    for i, opts in enumerate([{}, dict(global_affine_type="SIGMOID"), dict(reverse_permutation=True)]):
        cond = dict(cond=0, cond_shape=(2, 4, 4)) if i == 1 else {}
        ref.append(FrEIA_modules.AllInOneBlock, subnet_constructor=Subnet(2), **cond, **opts)
        fast.append(AllInOneBlock, subnet_constructor=Subnet(2), **cond, **opts)
    ref, fast = ref.double(), fast.double()
    fast.load_state_dict(ref.state_dict(), strict=True)
    x, c = torch.randn(3, 6, 4, 4, dtype=torch.float64), torch.randn(3, 2, 4, 4, dtype=torch.float64)
    z_r, ld_r = ref(x, c=[c])
    z_f, ld_f = fast(x, c=[c])
    torch.testing.assert_close(z_f, z_r, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(ld_f, ld_r, rtol=1e-10, atol=1e-10)
    x_f, _ = fast(z_f, c=[c], rev=True)
    torch.testing.assert_close(x_f, x, rtol=1e-10, atol=1e-10)
    assert fast(x, c=[c], jac=False)[1].shape == (3,)  # SequenceINN adds the log-det even then


def _graph(block_class, cond_dims):
    nodes = [FrEIA_framework.InputNode(5, name="in")]
    cond = FrEIA_framework.ConditionNode(*cond_dims, name="cond")
    for i in range(3):
        kwargs = dict(subnet_constructor=Subnet(0), global_affine_type=("SOFTPLUS", "EXP", "SOFTPLUS")[i],
                      reverse_permutation=i == 2)
        nodes.append(FrEIA_framework.Node(nodes[-1], block_class, kwargs, conditions=cond if i != 1 else None,
                                          name=f"block{i}"))
    nodes.append(FrEIA_framework.OutputNode(nodes[-1], name="out"))
    return FrEIA_framework.GraphINN(nodes + [cond])


def test_graph_inn_with_conditions_equals_freia():
    torch.manual_seed(4)
    ref = _graph(FrEIA_modules.AllInOneBlock, (3,)).double()
    fast = _graph(AllInOneBlock, (3,)).double()
    fast.load_state_dict(ref.state_dict(), strict=True)
    x, c = torch.randn(7, 5, dtype=torch.float64), torch.randn(7, 3, dtype=torch.float64)
    z_r, ld_r = ref(x, c=[c])
    z_f, ld_f = fast(x, c=[c])
    torch.testing.assert_close(z_f, z_r, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(ld_f, ld_r, rtol=1e-10, atol=1e-10)
    x_r, ldr_r = ref(z_r, c=[c], rev=True)
    x_f, ldr_f = fast(z_r, c=[c], rev=True)
    torch.testing.assert_close(x_f, x_r, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(ldr_f, ldr_r, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(x_f, x, rtol=1e-10, atol=1e-10)


def test_in_place_change_of_w_perm_is_followed():
    """The index permutation is derived when w_perm changes, not per call: an in-place write
    (as load_state_dict or a user does) is seen through the tensor's version counter."""
    torch.manual_seed(5)
    ref, fast = make_pair(6, 2, 0, {}, torch.float64, "auto")
    new_perm = torch.tensor([3, 0, 5, 1, 4, 2])
    w = torch.zeros(6, 6, dtype=torch.float64)
    w[torch.arange(6), new_perm] = 1
    with torch.no_grad():
        for blk in (ref, fast):
            blk.w_perm.copy_(w.view(6, 6, 1, 1))
            blk.w_perm_inv.copy_(w.t().reshape(6, 6, 1, 1))
    x = torch.randn(2, 6, 4, 3, dtype=torch.float64)
    (y,), _ = fast([x])
    assert torch.equal(fast.perm, new_perm) and fast.torch_only_reason() is None
    torch.testing.assert_close(y, ref([x])[0][0], rtol=1e-12, atol=1e-12)
    # a rotation written in place: the dense path, FrEIA's values
    q = torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64))[0]
    with torch.no_grad():
        for blk in (ref, fast):
            blk.w_perm.copy_(q.view(6, 6, 1, 1))
            blk.w_perm_inv.copy_(q.t().reshape(6, 6, 1, 1))
    (y,), ld = fast([x])
    assert "soft permutation" in fast.torch_only_reason()
    torch.testing.assert_close(y, ref([x])[0][0], rtol=1e-12, atol=1e-12)


def test_global_affine_kept_between_no_grad_calls_follows_every_change():
    """Without autograd the activated global scale is kept between calls; every way the
    parameters change (in-place write, load_state_dict, a new Parameter, a dtype move,
    inference mode) must give FrEIA's output again, never the kept one."""
    ref, fast = make_pair(6, 0, 2, {}, torch.float64, "auto", seed=9)
    x, c = torch.randn(5, 6, dtype=torch.float64), [torch.randn(5, 2, dtype=torch.float64)]

    def check(tol=1e-12):
        with torch.no_grad():
            (y0,), l0 = ref([x.to(ref.global_scale.dtype)], c=[t.to(ref.global_scale.dtype) for t in c])
            for _ in range(2):  # the second call reads what the first kept
                (y1,), l1 = fast([x.to(fast.global_scale.dtype)], c=[t.to(fast.global_scale.dtype) for t in c])
                torch.testing.assert_close(y1, y0, rtol=tol, atol=tol)
                torch.testing.assert_close(l1, l0, rtol=tol, atol=tol)

    check()
    assert fast._global_cache is not None  # kept (else this test would prove nothing)
    with torch.no_grad():
        for blk in (ref, fast):
            blk.global_scale.add_(0.7)
            blk.global_offset.mul_(-2.0)
    check()
    state = {k: v.clone() for k, v in ref.state_dict().items()}
    state["global_scale"].normal_()
    ref.load_state_dict(state)
    fast.load_state_dict(state)
    check()
    fresh = torch.randn_like(ref.global_scale)
    ref.global_scale = nn.Parameter(fresh.clone())
    fast.global_scale = nn.Parameter(fresh.clone())
    check()
    ref.float()
    fast.float()
    check(tol=1e-5)
    with torch.inference_mode():
        (y1,), l1 = fast([x.float()], c=[c[0].float()])
        (y0,), l0 = ref([x.float()], c=[c[0].float()])
    torch.testing.assert_close(y1, y0, rtol=1e-5, atol=1e-5)
    # with autograd the activation is recomputed (and gets its gradient)
    fast([x.float()], c=[c[0].float()])[1].sum().backward()
    assert fast.global_scale.grad is not None and fast.global_scale.grad.abs().sum() > 0
    assert pickle.loads(pickle.dumps(fast))._global_cache is None


def test_explicit_backend_refuses_a_loaded_soft_permutation():
    torch.manual_seed(6)
    soft = FrEIA_modules.AllInOneBlock([(6, 3, 3)], subnet_constructor=Subnet(2), permute_soft=True)
    fast = AllInOneBlock([(6, 3, 3)], subnet_constructor=Subnet(2), backend="cpp")
    fast.load_state_dict(soft.state_dict())
    with pytest.raises(BackendUnavailable, match="backend 'cpp'.*soft permutation"):
        fast([torch.randn(2, 6, 3, 3)])


def _freia_block(**opts):
    return FrEIA_modules.AllInOneBlock([(6, 4, 4)], subnet_constructor=Subnet(2), **opts)


@pytest.mark.parametrize("opts", [{}, dict(global_affine_type="SIGMOID", reverse_permutation=True),
                                  dict(global_affine_type="EXP", gin_block=True),
                                  dict(learned_householder_permutation=2)], ids=["default", "sigmoid", "gin", "hh"])
def test_from_freia_shares_weights_and_computes_the_same(opts):
    torch.manual_seed(7)
    ref = _freia_block(**opts).double()
    with torch.no_grad():
        ref.global_scale.add_(0.2)
        ref.global_offset.normal_()
    assert AllInOneBlock.unsupported_reason(ref) is None
    state = torch.get_rng_state()
    fast = AllInOneBlock.from_freia(ref)
    assert torch.equal(torch.get_rng_state(), state)  # converting draws no random numbers
    assert fast.subnet is ref.subnet and fast.global_scale is ref.global_scale
    assert list(fast.state_dict()) == list(ref.state_dict())
    x = torch.randn(2, 6, 4, 4, dtype=torch.float64)
    for rev in (False, True):
        (y_r,), l_r = ref([x], rev=rev)
        (y_f,), l_f = fast([x], rev=rev)
        torch.testing.assert_close(y_f, y_r, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(l_f, l_r, rtol=1e-10, atol=1e-10)


def test_from_freia_anomalib_block():
    flow = pytest.importorskip("anomalib.models.components.flow")
    torch.manual_seed(8)
    ref = flow.AllInOneBlock([(5,)], dims_c=[(3,)], subnet_constructor=Subnet(0), global_affine_type="SIGMOID",
                             reverse_permutation=True).double()
    fast = AllInOneBlock.from_freia(ref, backend="cpp")
    assert fast.global_affine_type == "SIGMOID" and fast.backend == "cpp"
    x, c = torch.randn(9, 5, dtype=torch.float64), torch.randn(9, 3, dtype=torch.float64)
    for rev in (False, True):
        (y_r,), l_r = ref([x], c=[c], rev=rev)
        (y_f,), l_f = fast([x], c=[c], rev=rev)
        torch.testing.assert_close(y_f, y_r, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(l_f, l_r, rtol=1e-10, atol=1e-10)


class _Overridden(FrEIA_modules.AllInOneBlock):
    def forward(self, x, c=[], rev=False, jac=True):
        return super().forward(x, c, rev, jac)


def test_unsupported_reason_names_what_cannot_be_converted():
    reason = AllInOneBlock.unsupported_reason
    assert "forward" in reason(_Overridden([(4, 2, 2)], subnet_constructor=Subnet(2)))
    assert "not an nn.Module" in reason(object())
    assert "not FrEIA" in reason(nn.Linear(2, 2))
    assert "already" in reason(AllInOneBlock([(4,)], subnet_constructor=Subnet(0)))
    blk = _freia_block()
    blk.global_scale_activation = torch.sigmoid  # none of FrEIA's three activations
    assert "global_scale_activation" in reason(blk)
    assert "gin_block" in reason(_freia_block(gin_block=True), backend="cpp")
    assert reason(_freia_block(gin_block=True), backend="auto") is None
    with pytest.raises(ValueError, match="cannot convert.*global_scale_activation"):
        AllInOneBlock.from_freia(blk)


@pytest.mark.parametrize("kwargs,match", [
    (dict(dims_in=[(4, 3, 3), (4, 3, 3)]), "dims_in"),
    (dict(dims_in=[(4, 1, 1, 1, 1)]), "dims_in"),
    (dict(dims_in=[(0, 3)]), "dims_in"),
    (dict(dims_c=[(2, 5, 5)]), "dims_c"),
    (dict(subnet_constructor=None), "subnet_constructor"),
    (dict(affine_clamping=float("nan")), "affine_clamping"),
    (dict(gin_block="yes"), "gin_block"),
    (dict(global_affine_type="softplus"), "global_affine_type"),
    (dict(global_affine_type="SIGMOID", global_affine_init=10.0), "global_affine_init"),
    (dict(global_affine_init=0.0), "global_affine_init"),
    (dict(permute_soft=1), "permute_soft"),
    (dict(learned_householder_permutation=-1), "learned_householder_permutation"),
    (dict(reverse_permutation=None), "reverse_permutation"),
    (dict(backend="cuda"), "backend"),
])
def test_bad_constructor_arguments_name_the_argument(kwargs, match):
    args = dict(dims_in=[(4, 3, 3)], subnet_constructor=Subnet(2))
    args.update(kwargs)
    with pytest.raises((ValueError, TypeError), match=match):
        AllInOneBlock(**args)


def test_bad_call_arguments_name_the_argument():
    blk = AllInOneBlock([(4, 3, 3)], dims_c=[(2, 3, 3)], subnet_constructor=Subnet(2))
    x, c = torch.randn(2, 4, 3, 3), torch.randn(2, 2, 3, 3)
    with pytest.raises(TypeError, match="x must be a list or tuple of one tensor"):
        blk(x, c=[c])
    with pytest.raises(ValueError, match=r"x\[0\] must be \[N, 4\]"):
        blk([torch.randn(2, 5, 3, 3)], c=[c])
    with pytest.raises(ValueError, match="c: the conditions must have 2 channels"):
        blk([x], c=[])
    with pytest.raises(ValueError, match="c: each condition"):
        blk([x], c=[torch.randn(2, 2, 4, 4)])
    with pytest.raises(TypeError, match="rev must be a bool"):
        blk([x], c=[c], rev="yes")
    plain = AllInOneBlock([(4, 3, 3)], subnet_constructor=Subnet(2))
    with pytest.raises(ValueError, match="built without conditions"):
        plain([x], c=[c])


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")  # the empty subnet output layer
def test_one_channel_runs_plain_torch_and_equals_freia():
    """C = 1 leaves nothing to couple (the fused op needs 2 channels): auto runs FrEIA's
    computation in torch, an explicit fused backend refuses naming the reason."""
    ref, fast = make_pair(1, 0, 0, {}, torch.float64, "auto")
    assert "one channel" in fast.torch_only_reason()
    x = torch.randn(4, 1, dtype=torch.float64)
    for rev in (False, True):
        (y_r,), l_r = ref([x], rev=rev)
        (y_f,), l_f = fast([x], rev=rev)
        torch.testing.assert_close(y_f, y_r, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(l_f, l_r, rtol=1e-12, atol=1e-12)
    with pytest.raises(BackendUnavailable, match="one channel"):
        AllInOneBlock([(1,)], subnet_constructor=Subnet(0), backend="cpp")


def test_allinone_coupling_pickles():
    """DADF's light step (same shared code) holds no lambda either: it pickles, and a state
    dict loaded into the copy still re-derives its permutation."""
    from dadf_fast.nn import AllInOneCoupling

    step = AllInOneCoupling(5, kernel_size=3)
    other = pickle.loads(pickle.dumps(step))
    x = torch.randn(2, 5, 3, 3)
    assert torch.equal(step(x)[0], other(x)[0])
    fresh = AllInOneCoupling(5, kernel_size=3)
    other.load_state_dict(fresh.state_dict())
    assert torch.equal(other.perm, fresh.perm)
