"""anomalib 2.7's flow models (every one built on ``AllInOneBlock``: FastFlow, CFLOW, UFLOW,
PatchFlow), built offline at small sizes, accelerated: the flow part's outputs and
gradients and the model's anomaly maps are the original's; the model still pickles and
exports.

anomalib is an optional dependency (``pip install -e ".[integrations]"``): without it these
tests skip, except under CI (``CI`` set), where ``.ci/run`` installs it and its absence fails.
"""
from __future__ import annotations

import copy
import importlib.util
import io
import os

import pytest
import torch

if importlib.util.find_spec("anomalib") is None:
    if os.environ.get("CI"):
        raise ImportError("anomalib must be installed under CI: .ci/run installs the [integrations] extra")
    pytest.skip("anomalib is not installed (pip install -e '.[integrations]')", allow_module_level=True)

import timm  # noqa: E402
from anomalib.models.components.flow import AllInOneBlock as AnomalibBlock  # noqa: E402
from anomalib.models.image.cflow.torch_model import CflowModel  # noqa: E402
from anomalib.models.image.cflow.utils import get_logp, positional_encoding_2d  # noqa: E402
from anomalib.models.image.fastflow.torch_model import FastflowModel  # noqa: E402
from anomalib.models.image.patchflow.torch_model import PatchflowModel  # noqa: E402
from anomalib.models.image.uflow.torch_model import UflowModel  # noqa: E402

from dadf_fast.integrations import accelerate  # noqa: E402
from dadf_fast.nn.all_in_one import AllInOneBlock  # noqa: E402

SIZE = 32  # input images SIZE x SIZE: feature maps of 8x8 and below
TOL = {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=1e-5, atol=1e-5)}


@pytest.fixture(scope="module", autouse=True)
def _few_threads():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _offline_timm(monkeypatch):
    """UFLOW's feature extractor hard-codes ``pretrained=True`` (a hub download): build it
    with random weights instead; nothing here needs trained features."""
    real = timm.create_model

    def create(*args, **kwargs):
        kwargs["pretrained"] = False
        return real(*args, **kwargs)

    monkeypatch.setattr(timm, "create_model", create)


def _perturb(model):
    """Flow offsets start at zero: move the flow parameters off their init."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "global_" in name:
                p.add_(0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model


def build(name, monkeypatch):
    torch.manual_seed(0)
    if name == "fastflow":  # 3 scales x 2 steps, alternating 3x3 / 1x1 subnets
        model = FastflowModel((SIZE, SIZE), "resnet18", pre_trained=False, flow_steps=2)
    elif name == "cflow":  # conditional 1-D blocks on [N, C] fibres
        model = CflowModel("resnet18", ["layer1", "layer2"], pre_trained=False, fiber_batch_size=40,
                           condition_vector=16, coupling_blocks=2)
    elif name == "uflow":  # a GraphINN over 3 scales
        _offline_timm(monkeypatch)
        model = UflowModel((SIZE, SIZE), flow_steps=2, backbone="resnet18")
    else:  # PatchFlow: one block whose subnet ends in BatchNorm
        model = PatchflowModel((SIZE, SIZE), "resnet18", pre_trained=False, flow_feature_dim=16, flow_hidden_dim=16)
    return _perturb(model)


MODELS = ["fastflow", "cflow", "uflow", "patchflow"]
N_BLOCKS = {"fastflow": 6, "cflow": 4, "uflow": 6, "patchflow": 1}


def flow_part(name, model, images):
    """The flow part's hidden variables and log-jacobians (a list of each), with gradients."""
    if name == "cflow":
        acts = model.encoder(images)
        zs, lds = [], []
        for layer, decoder in zip(model.pool_layers, model.decoders):
            e = acts[layer]
            b, c, h, w = e.shape
            cond = positional_encoding_2d(model.condition_vector, h, w).to(e)
            cond = cond.unsqueeze(0).expand(b, -1, -1, -1).permute(0, 2, 3, 1).reshape(-1, model.condition_vector)
            z, ld = decoder(e.permute(0, 2, 3, 1).reshape(-1, c), [cond])
            zs.append(z)
            lds.append(ld)
            zs.append(get_logp(c, z, ld))  # CFLOW's per-fibre log-likelihood
        return zs, lds
    model.train()
    z, ld = model(images)
    if name == "patchflow":
        return [z], [ld]
    zs = z if isinstance(z, (list, tuple)) else [z]
    return list(zs), (list(ld) if isinstance(ld, (list, tuple)) else [ld])


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", MODELS)
def test_accelerated_model_is_the_original(name, dtype, monkeypatch):
    orig = build(name, monkeypatch).to(dtype)
    fast = copy.deepcopy(orig)
    report = accelerate(fast)
    assert len(report.replaced) == N_BLOCKS[name] and report.left == [], str(report)
    assert sum(isinstance(m, AnomalibBlock) for m in fast.modules()) == 0
    assert sum(type(m) is AllInOneBlock for m in fast.modules()) == N_BLOCKS[name]
    if name == "uflow":  # the GraphINN runs node.module: it must be the new block too
        assert all(n.module is m for n, m in zip([n for n in fast.flow.node_list if n.module is not None],
                                                  fast.flow.module_list))
        assert sum(type(n.module) is AllInOneBlock for n in fast.flow.node_list) == N_BLOCKS[name]
    assert list(fast.state_dict()) == list(orig.state_dict())

    images = torch.randn(2, 3, SIZE, SIZE, dtype=dtype)
    outs = []
    for model in (orig, fast):
        zs, lds = flow_part(name, model, images)
        loss = sum(0.5 * (z ** 2).sum() for z in zs) - sum(ld.sum() for ld in lds)
        loss.backward()
        outs.append(([z.detach() for z in zs], [ld.detach() for ld in lds], _grads(model)))
    (z0, ld0, g0), (z1, ld1, g1) = outs
    for a, b in zip(z1 + ld1, z0 + ld0, strict=True):
        torch.testing.assert_close(a, b, **TOL[dtype])
    flow_grads = [n for n in g0 if "global_scale" in n or "subnet" in n]
    assert g1.keys() == g0.keys() and len(flow_grads) >= 2 * N_BLOCKS[name]
    # absolute tolerance on the scale of the largest gradient: a parameter whose true gradient
    # is zero (PatchFlow's conv bias before BatchNorm) gets rounding noise of the size of the
    # terms its gradient is summed from, not of its own size
    scale = max(g.abs().max().item() for g in g0.values())
    for n in g0:
        torch.testing.assert_close(g1[n], g0[n], rtol=TOL[dtype]["rtol"], atol=TOL[dtype]["atol"] * max(1.0, scale),
                                   msg=lambda m, n=n: f"gradient of {n}: {m}")

    # the model's own output: anomaly maps and scores (eval mode)
    maps = []
    for model in (orig, fast):
        model.eval()
        with torch.no_grad():
            out = model(images)
        maps.append((out.anomaly_map, out.pred_score))
    torch.testing.assert_close(maps[1][0], maps[0][0], **TOL[dtype])
    torch.testing.assert_close(maps[1][1], maps[0][1], **TOL[dtype])


@pytest.mark.parametrize("name", ["fastflow", "uflow"])
def test_twice_pickle_and_deepcopy(name, monkeypatch):
    model = build(name, monkeypatch).double().eval()
    images = torch.randn(1, 3, SIZE, SIZE, dtype=torch.float64)
    with torch.no_grad():
        ref = model(images).anomaly_map
    assert accelerate(model)
    blocks = [m for m in model.modules() if type(m) is AllInOneBlock]
    again = accelerate(model)
    assert again.replaced == [] and len(again.already_fast) == N_BLOCKS[name]
    assert blocks == [m for m in model.modules() if type(m) is AllInOneBlock]

    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    for clone in (torch.load(buf, weights_only=False), copy.deepcopy(model)):
        if name == "uflow":  # the clone's graph runs the clone's blocks
            assert all(a is b for a, b in zip([n.module for n in clone.flow.node_list if n.module is not None],
                                              clone.flow.module_list))
        with torch.no_grad():
            torch.testing.assert_close(clone(images).anomaly_map, ref, rtol=1e-10, atol=1e-10)


def test_csflow_has_no_allinone_blocks():
    """CS-Flow's GraphINN holds its own coupling blocks: nothing to replace, and the report says so."""
    from anomalib.models.image.csflow.torch_model import CrossScaleFlow

    flow = CrossScaleFlow(input_dims=(3, 256, 256), n_coupling_blocks=2, clamp=3, cross_conv_hidden_channels=8)
    report = accelerate(flow)
    assert not report and report.replaced == report.left == report.already_fast == []
    assert "no FrEIA AllInOneBlock" in str(report)


def test_lightning_to_torch_export(tmp_path):
    from anomalib.models import Fastflow
    from anomalib.pre_processing import PreProcessor
    from torchvision.transforms.v2 import Resize

    module = Fastflow(backbone="resnet18", pre_trained=False, flow_steps=2,
                      pre_processor=PreProcessor(transform=Resize((SIZE, SIZE))), post_processor=False,
                      evaluator=False, visualizer=False)
    report = accelerate(module)
    assert len(report.replaced) == 6 and report.replaced[0].startswith("model.fast_flow_blocks.0.")
    module.eval()
    images = torch.rand(1, 3, SIZE, SIZE)
    with torch.no_grad():
        ref = module.model(images).anomaly_map
    path = module.to_torch(tmp_path)
    loaded = torch.load(path, weights_only=False)["model"]
    assert type(loaded.model.fast_flow_blocks[0][0]) is AllInOneBlock
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(images).anomaly_map, ref, rtol=1e-6, atol=1e-6)


def _engine_fit(root, out, accelerated: bool, steps_from=None):
    """One epoch of anomalib's ``Engine().fit`` of a small FastFlow on the images in ``root``;
    returns the trained flow blocks' state dict."""
    import lightning
    from anomalib.data import Folder
    from anomalib.engine import Engine
    from anomalib.models import Fastflow
    from anomalib.pre_processing import PreProcessor
    from torchvision.transforms.v2 import Resize

    lightning.seed_everything(0, verbose=False)
    module = Fastflow(backbone="resnet18", pre_trained=False, flow_steps=2,
                      pre_processor=PreProcessor(transform=Resize((SIZE, SIZE))), post_processor=False,
                      evaluator=False, visualizer=False)
    if steps_from is not None:
        module.load_state_dict(steps_from)
    if accelerated:
        report = accelerate(module, backend="torch")
        assert len(report.replaced) == 6
    start = copy.deepcopy(module.state_dict())
    data = Folder(name="tiny", root=root, normal_dir="good", abnormal_dir="bad", train_batch_size=2,
                  eval_batch_size=2, num_workers=0, seed=0)
    engine = Engine(max_epochs=1, accelerator="cpu", devices=1, logger=False, default_root_dir=str(out),
                    enable_progress_bar=False, enable_model_summary=False)
    engine.fit(model=module, datamodule=data)
    if accelerated:
        assert all(type(b) is AllInOneBlock for stage in module.model.fast_flow_blocks for b in stage)
    return start, module.state_dict()


def test_engine_fit_trains_the_accelerated_model_like_the_original(tmp_path):
    """anomalib's own training loop (Engine, Lightning, Folder data) on an accelerated FastFlow
    takes the same steps as on the original: from the same weights, with the same data order,
    the trained flow weights agree."""
    from PIL import Image

    rng = torch.Generator().manual_seed(0)
    for sub, n in (("good", 6), ("bad", 2)):
        (tmp_path / "data" / sub).mkdir(parents=True)
        for i in range(n):
            pixels = torch.randint(0, 256, (SIZE, SIZE, 3), generator=rng, dtype=torch.uint8).numpy()
            Image.fromarray(pixels).save(tmp_path / "data" / sub / f"{i}.png")
    start, plain = _engine_fit(tmp_path / "data", tmp_path / "plain", accelerated=False)
    _, fast = _engine_fit(tmp_path / "data", tmp_path / "fast", accelerated=True, steps_from=start)
    flow_keys = [k for k in plain if k.startswith("model.fast_flow_blocks.") and plain[k].is_floating_point()]
    moved = [k for k in flow_keys if not torch.equal(plain[k], start[k])]
    assert len(moved) >= 12, "the flow weights did not train"
    for k in flow_keys:
        torch.testing.assert_close(fast[k], plain[k], rtol=1e-5, atol=1e-6, msg=k)
