"""``DADF(dtype="bf16")`` (autocast mixed precision), the per-position flow norm option, and
fixed-batch CUDA-graph inference.

Mixed precision is checked on the CPU (autocast also exists there): the float32 islands
(flow input norm, coupling epilogue, log-det, NLL, scoring) must really be float32, and the
maps must stay close to float32's.  The CUDA-graph replay is a GPU test.  The flow modules
under autocast: tests/nn/test_flow_backends.py.
"""
import pytest
import torch
import torch.nn as nn

from dadf_fast import DADF
from dadf_fast.nn import ChannelLayerNorm, FlowStage, reconstruction_loss


def _tiny(**kw):
    torch.manual_seed(0)
    kw.setdefault("score_cues", ("flow",))  # the flows' own map: the precision of the flows
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
        # the reconstructor's embedding and decoders are float32 (docs/accuracy_history.md), its blocks bf16
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
    # bf16 has 8 mantissa bits: the maps (in [0, 1]) move by bf16 rounding, never by a lot
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


def test_dtype_survives_save_load(tmp_path):
    m = _tiny(dtype="bf16")
    m.save(tmp_path / "m.pt")
    assert DADF.load(tmp_path / "m.pt").config["dtype"] == "bfloat16"


def test_flow_norm_option_and_presets():
    assert isinstance(DADF("lite", pretrained=False, input_size=64, flow_norm="channel").flows[1].norm, ChannelLayerNorm)
    assert isinstance(DADF("lite", pretrained=False, input_size=64).flows[1].norm, nn.LayerNorm)
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
