"""``DADF(dtype="bf16")`` (autocast mixed precision), the per-position flow norm, and
fixed-batch CUDA-graph inference.

Mixed precision is checked on the CPU (autocast also exists there): the float32 islands
(flow input norm, coupling epilogue, log-det, NLL, scoring) must really be float32, and the
maps must stay close to float32's.  The CUDA-graph replay is a GPU test.
"""
import pytest
import torch
import torch.nn as nn

from dadf_fast import DADF, ops
from dadf_fast.nn import AllInOneCoupling, ChannelLayerNorm, FlowStage, reconstruction_loss


def _tiny(**kw):
    torch.manual_seed(0)
    return DADF("lite", pretrained=False, input_size=64, depth=1, flow_steps=2, **kw).eval()


@pytest.fixture(scope="module")
def images():
    return torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def test_dtype_names_and_errors():
    assert _tiny(dtype="bf16").config["dtype"] == "bfloat16"
    assert _tiny(dtype=torch.float16).compute_dtype is torch.float16
    assert _tiny().config["dtype"] == "float32"
    with pytest.raises(ValueError, match="dtype must be one of"):
        _tiny(dtype="int8")
    with pytest.raises(ValueError, match="dtype must be one of"):
        _tiny(dtype=torch.float64)


def test_bf16_keeps_float32_islands(images):
    m = _tiny(dtype="bf16")
    with torch.no_grad(), m.autocast("cpu"):
        feats = m.features(images)
        local, glob = m.reconstructor(feats)
        inputs = m.flow_inputs(feats, local, glob)
        assert feats[1].dtype == torch.bfloat16  # the backbone runs in bf16
        # the reconstructor's embedding and decoders are float32 (docs/accuracy.md), its blocks bf16
        assert local[1].dtype == glob[1].dtype == torch.float32
        z, logdet = m.flows[1](inputs[1])
        assert z.dtype == logdet.dtype == torch.float32
        assert reconstruction_loss(feats, local, glob).dtype == torch.float32
    out = m.predict(images)
    assert out["anomaly_map"].dtype == out["score"].dtype == torch.float32


def test_bf16_reconstructor_blocks_run_in_bf16(images):
    m = _tiny(dtype="bf16")
    seen = []
    m.reconstructor.blocks[0].register_forward_hook(lambda mod, inp, out: seen.append(out[0].dtype))
    m.reconstructor.blocks[0].mlp.register_forward_hook(lambda mod, inp, out: seen.append(out.dtype))
    with torch.no_grad(), m.autocast("cpu"):
        m.reconstructor(m.features(images))
    assert torch.bfloat16 in seen, seen


def test_bf16_maps_close_to_float32(images):
    m = _tiny()
    ref = m.predict(images)
    m.set_dtype("bf16")
    got = m.predict(images)
    # bf16 has 8 mantissa bits: the maps (in [0, 1]) move by ~1e-3, never by a lot
    assert torch.allclose(got["anomaly_map"], ref["anomaly_map"], atol=2e-2)
    assert (got["anomaly_map"] - ref["anomaly_map"]).abs().max() > 0  # bf16 really ran
    assert torch.allclose(got["score"], ref["score"], atol=2e-2)


def test_bf16_torch_and_auto_agree(images):
    """Under autocast both backends run the same bf16 subnets and float32 epilogues."""
    fast = _tiny(dtype="bf16")
    slow = _tiny(dtype="bf16", backend="torch")
    slow.load_state_dict(fast.state_dict())
    a, b = fast.predict(images), slow.predict(images)
    torch.testing.assert_close(a["anomaly_map"], b["anomaly_map"], atol=2e-3, rtol=0)


def test_bf16_training_step_and_fit(images):
    m = _tiny(dtype="bf16").train()
    out = m(images)
    assert out["loss_recon"].dtype == out["loss_flow"].dtype == torch.float32
    out["loss"].backward()
    grads = [p.grad for n, p in m.named_parameters() if p.requires_grad and not n.startswith("backbone")
             and ("flows.0" not in n)]  # scale 0 is not scored by lite: no gradient there
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert all(p.dtype == torch.float32 for p in m.parameters())  # weights stay float32
    res = _tiny(dtype="bf16").fit(images, recipe="lite", epochs_recon=1, epochs_flow=1, progress=False,
                                  log=lambda *a: None)
    assert len(res["loss_flow"]) == 1 and torch.isfinite(torch.tensor(res["loss_flow"])).all()


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


def test_dtype_survives_save_load(tmp_path):
    m = _tiny(dtype="bf16")
    m.save(tmp_path / "m.pt")
    assert DADF.load(tmp_path / "m.pt").config["dtype"] == "bfloat16"


# ----------------------------------------------------------------------------- flow norm
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


def test_flow_norm_option_and_presets():
    assert isinstance(DADF("lite", pretrained=False, input_size=64).flows[1].norm, ChannelLayerNorm)
    assert isinstance(DADF("lite", pretrained=False, input_size=64, flow_norm="image").flows[1].norm, nn.LayerNorm)
    from dadf_fast.models.presets import PRESETS

    assert PRESETS["paper"]["flow_norm"] == "image"  # the official computation
    with pytest.raises(ValueError, match="flow_norm"):
        DADF("lite", pretrained=False, input_size=64, flow_norm="batch")
    with pytest.raises(ValueError, match="norm must be one of"):
        FlowStage(4, 8, norm="group")


def test_checkpoint_without_flow_norm_loads_as_image(tmp_path):
    """Checkpoints written before ``flow_norm`` existed used the [C, H, W] LayerNorm."""
    m = _tiny(flow_norm="image")
    m.save(tmp_path / "m.pt")
    payload = torch.load(tmp_path / "m.pt", weights_only=True)
    del payload["config"]["flow_norm"]
    torch.save(payload, tmp_path / "old.pt")
    old = DADF.load(tmp_path / "old.pt")
    assert old.config["flow_norm"] == "image" and isinstance(old.flows[0].norm, nn.LayerNorm)


def test_channel_norm_flow_fast_equals_reference(images):
    fast = _tiny()
    slow = _tiny(backend="torch")
    with torch.no_grad():
        for name, p in fast.flows.named_parameters():
            if "perm" not in name:  # keep the permutations hard permutations
                p.add_(0.05 * torch.randn_like(p))
    slow.load_state_dict(fast.state_dict())
    torch.testing.assert_close(fast.predict(images)["anomaly_map"], slow.predict(images)["anomaly_map"],
                               atol=1e-4, rtol=0)


# ----------------------------------------------------------------------------- CUDA graphs
def test_graph_inference_needs_cuda():
    from dadf_fast import CUDAGraphInference

    with pytest.raises(ValueError, match="CUDA device"):
        CUDAGraphInference(_tiny(), 2)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "bf16"])
def test_graph_inference_equals_predict(dtype):
    from dadf_fast import CUDAGraphInference

    m = _tiny(dtype=dtype).cuda()
    x = torch.randn(4, 3, 64, 64, device="cuda")
    graph = CUDAGraphInference(m, 4)
    ref = m.predict(x)
    got = graph(x)
    torch.testing.assert_close(got["anomaly_map"], ref["anomaly_map"], atol=1e-5, rtol=0)
    x2 = torch.randn(4, 3, 64, 64, device="cuda")
    got2 = graph(x2)  # new data through the same graph; earlier outputs are not overwritten
    torch.testing.assert_close(got2["score"], m.predict(x2)["score"], atol=1e-5, rtol=0)
    assert not torch.equal(got["score"], got2["score"])
    with pytest.raises(ValueError, match="batch of 4"):
        graph(x[:2])


@pytest.mark.gpu
def test_bf16_on_gpu_close_to_float32():
    m = _tiny().cuda()
    x = torch.randn(4, 3, 64, 64, device="cuda")
    ref = m.predict(x)
    got = m.set_dtype("bf16").predict(x)
    assert got["anomaly_map"].dtype == torch.float32
    assert torch.allclose(got["anomaly_map"], ref["anomaly_map"], atol=2e-2)


# ----------------------------------------------------------------------------- the lite recipe
def test_lite_recipe_counts_flow_steps_not_epochs():
    from dadf_fast.models.training import LITE_FLOW_ITERS, FitConfig

    cfg = FitConfig.for_recipe("lite")
    assert cfg.iters_flow == LITE_FLOW_ITERS and cfg.lr_flow == 2e-3
    # an explicit epoch count replaces the recipe's step count
    assert FitConfig.for_recipe("lite", epochs_flow=3).iters_flow is None
    assert FitConfig.for_recipe("paper").iters_flow is None
    m = _tiny()
    imgs = torch.randn(5, 3, 64, 64)
    # 5 images at batch 2: 3 steps per epoch, so 7 steps -> 3 epochs
    res = m.fit(imgs, recipe="lite", epochs_recon=1, iters_flow=7, batch_size_flow=2, progress=False,
                log=lambda *a: None)
    assert len(res["loss_flow"]) == 3


@pytest.mark.parametrize("field,value", [("epochs_flow", -1), ("iters_flow", 2.5), ("batch_size_flow", 0),
                                         ("lr_flow", 0.0), ("grad_clip", -1.0), ("val_fraction", 1.0)])
def test_fit_config_rejects_bad_values(field, value):
    from dadf_fast.models.training import FitConfig

    with pytest.raises(ValueError, match=f"FitConfig.{field} must be"):
        FitConfig(**{field: value})


def test_cli_train_parses_dtype_and_flow_steps():
    from dadf_fast.cli.commands import build_parser

    args = build_parser().parse_args(["train", "--out", "x", "--dtype", "bfloat16", "--iters-flow", "50"])
    assert args.dtype == "bfloat16" and args.iters_flow == 50
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--out", "x", "--dtype", "int8"])
