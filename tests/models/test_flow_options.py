"""DADF's flow options ``flow_subnet`` (DADF's depthwise or FastFlow's full convolutions) and
``flow_input`` (``cat(F, R_l, R_g)`` or the features alone): shapes, the fast backend against
the reference, training, and checkpoints written before the options existed."""
import pytest
import torch
import torch.nn as nn

from dadf_fast import DADF
from dadf_fast.nn import FlowStage, conv_subnet


def _tiny(**kw):
    torch.manual_seed(0)
    kw.setdefault("score_cues", ("flow",))
    return DADF("lite", pretrained=False, input_size=64, depth=1, flow_steps=2, **kw).eval()


def test_conv_subnet_is_fastflows():
    """Alternating 3x3 / 1x1 full convolutions, hidden width = input width (ratio 1)."""
    stage = FlowStage(10, 8, steps=4, subnet="conv")
    for i, step in enumerate(stage.steps):
        first, act, last = step.subnet
        k = 3 if i % 2 == 0 else 1
        assert isinstance(act, nn.ReLU)
        assert (first.in_channels, first.out_channels, first.groups, first.kernel_size) == (5, 5, 1, (k, k))
        assert (last.in_channels, last.out_channels, last.kernel_size) == (5, 10, (k, k))
    assert conv_subnet(6, 8, 3, hidden_ratio=0.5)[0].out_channels == 3
    with pytest.raises(ValueError, match="subnet must be one of"):
        FlowStage(4, 8, subnet="mlp")


@pytest.mark.parametrize("flow_input,width", [("concat", 3), ("features", 1)])
def test_flow_input_sets_the_flow_width(flow_input, width):
    m = _tiny(flow_input=flow_input, flow_subnet="conv")
    assert [f.channels for f in m.flows] == [width * c for c in m.backbone.channels]
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    feats = m.features(x)
    local, glob = m.reconstruct(feats)
    ins = m.flow_inputs(feats, local, glob)
    if flow_input == "features":
        assert all(a is b for a, b in zip(ins, feats))
    else:
        assert all(torch.equal(i, torch.cat((f, rl, rg), 1)) for i, f, rl, rg in zip(ins, feats, local, glob))
    with torch.no_grad():
        out = m.predict(x)
    assert out["anomaly_map"].shape == (2, 1, 64, 64) and torch.isfinite(out["score"]).all()


def test_conv_subnet_fast_equals_reference():
    fast, slow = _tiny(flow_subnet="conv"), _tiny(flow_subnet="conv", backend="torch")
    slow.load_state_dict(fast.state_dict())
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        a, b = fast.predict(x), slow.predict(x)
    torch.testing.assert_close(a["anomaly_map"], b["anomaly_map"], rtol=1e-5, atol=1e-5)
    fast.train()
    slow.train()
    la, lb = fast(x, stage=2)["loss_flow"], slow(x, stage=2)["loss_flow"]
    la.backward()
    lb.backward()
    torch.testing.assert_close(la, lb, rtol=1e-5, atol=1e-5)
    for (name, pa), (_, pb) in zip(fast.flows.named_parameters(), slow.flows.named_parameters()):
        if pa.grad is not None or pb.grad is not None:
            torch.testing.assert_close(pa.grad, pb.grad, rtol=1e-4, atol=5e-5, msg=lambda m, n=name: f"{n}: {m}")


def test_options_are_validated_and_saved(tmp_path):
    with pytest.raises(ValueError, match="flow_subnet must be one of"):
        _tiny(flow_subnet="dense")
    with pytest.raises(ValueError, match="flow_input must be one of"):
        _tiny(flow_input="errors")
    m = _tiny(flow_subnet="conv", flow_input="features")
    m.save(tmp_path / "m.pt")
    back = DADF.load(tmp_path / "m.pt")
    assert (back.config["flow_subnet"], back.config["flow_input"]) == ("conv", "features")
    for k, v in m.state_dict().items():
        assert torch.equal(back.state_dict()[k], v)


def test_checkpoint_without_the_options_loads_as_dadfs_flows(tmp_path):
    m = _tiny(flow_subnet="depthwise", flow_input="concat")
    m.save(tmp_path / "m.pt")
    payload = torch.load(tmp_path / "m.pt", weights_only=True)
    del payload["config"]["flow_subnet"], payload["config"]["flow_input"]
    torch.save(payload, tmp_path / "old.pt")
    old = DADF.load(tmp_path / "old.pt")
    assert (old.config["flow_subnet"], old.config["flow_input"]) == ("depthwise", "concat")
    assert old.flows[0].channels == 3 * old.backbone.channels[0]
