"""The DADF detector: shapes, training signal, save/load and bad input."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dadf_fast import DADF
from dadf_fast.models.backbone import lite0_state_dict


@pytest.fixture(scope="module")
def lite():
    torch.manual_seed(0)
    m = DADF("lite", input_size=64, backend="torch").eval()
    m.calibrate_cues(torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(5)))  # what fit() does last
    return m


def test_lite0_weights_classify_a_real_cat_photo():
    """The packaged efficientnet_lite0 weights, mapped onto timm, recognise scikit-image's cat."""
    timm = pytest.importorskip("timm")
    skdata = pytest.importorskip("skimage.data")
    model = timm.create_model("efficientnet_lite0", pretrained=False).eval()
    model.load_state_dict(lite0_state_dict())
    img = torch.tensor(np.asarray(skdata.chelsea())).permute(2, 0, 1).float()[None] / 255
    img = F.interpolate(img, size=(224, 224), mode="bilinear", antialias=True)
    img = (img - torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    with torch.no_grad():
        top = model(img).argmax(1).item()
    assert top in range(281, 286), f"predicted ImageNet class {top}, expected a domestic cat (281-285)"


def test_lite_preset_shapes_and_ranges(lite):
    x = torch.randn(2, 3, 64, 64)
    out = lite.predict(x)
    assert out["anomaly_map"].shape == (2, 1, 64, 64)
    assert out["score"].shape == (2,)
    amap = out["anomaly_map"]
    # the sum of the three calibrated cues: each normal calibration image peaks near 1 per cue
    assert lite.config["score_cues"] == ["flow", "recon", "knn"] and torch.isfinite(amap).all()
    torch.testing.assert_close(out["score"], amap.flatten(1).max(1).values)
    flow_only = DADF("lite", input_size=64, backend="torch", score_cues=("flow",)).eval()
    fmap = flow_only.predict(x)["anomaly_map"]
    assert float(fmap.min()) >= 0 and float(fmap.max()) <= 1  # the flows' likelihood map
    assert [tuple(f.shape[1:]) for f in lite.features(x)] == [(24, 16, 16), (40, 8, 8), (112, 4, 4)]


def test_scaled_down_paper_configuration():
    torch.manual_seed(0)
    model = DADF("paper", pretrained=False, input_size=64, embed_dim=32, depth=1, num_heads=4, flow_steps=2,
                 backend="torch")
    assert model.config["backbone"] == "wide_resnet50_2"
    assert model.backbone.channels == (256, 512, 1024)
    model.train()
    out = model(torch.randn(1, 3, 64, 64))
    assert set(out) == {"loss_recon", "loss_flow", "loss"}
    assert all(torch.isfinite(v) for v in out.values())
    model.eval()
    pred = model.predict(torch.randn(1, 3, 64, 64))
    assert pred["anomaly_map"].shape == (1, 1, 64, 64)


def test_training_losses_decrease():
    torch.manual_seed(0)
    model = DADF("lite", input_size=64, depth=1, flow_steps=2, backend="torch")
    x = torch.randn(4, 3, 64, 64)
    model.train()
    opt = torch.optim.AdamW(model.reconstructor.parameters(), lr=1e-3)
    first = None
    for _ in range(8):
        loss = model(x, stage=1)["loss"]
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert model(x, stage=1)["loss"].item() < 0.95 * first
    opt = torch.optim.Adam(model.flows.parameters(), lr=1e-3)
    first = None
    for _ in range(8):
        loss = model(x, stage=2)["loss"]
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert model(x, stage=2)["loss"].item() < first
    # stage 2 does not touch the transformer or the backbone
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.backbone.parameters())


def test_save_load_round_trip_gives_identical_outputs(lite, tmp_path):
    path = tmp_path / "sub" / "model.pt"
    lite.save(path)
    assert path.exists() and not list(path.parent.glob("*.tmp"))
    loaded = DADF.load(path, backend="torch")
    x = torch.randn(2, 3, 64, 64)
    a, b = lite.predict(x), loaded.predict(x)
    assert torch.equal(a["anomaly_map"], b["anomaly_map"])
    assert torch.equal(a["score"], b["score"])
    assert loaded.config == lite.config


@pytest.mark.parametrize("images,match", [
    (torch.randn(3, 64, 64), "4-D"),
    (torch.randn(1, 1, 64, 64), "3 \\(RGB\\) channels"),
    (torch.randn(1, 3, 32, 32), "must be 64x64"),
    (torch.randn(1, 3, 64, 80), "must be 64x64"),
    (torch.full((1, 3, 64, 64), float("nan")), "NaN"),
    (torch.zeros(1, 3, 64, 64, dtype=torch.uint8), "float"),
])
def test_bad_images_are_rejected(lite, images, match):
    with pytest.raises((ValueError, TypeError), match=match):
        lite.predict(images)


def test_bad_configuration_is_rejected():
    with pytest.raises(ValueError, match="not a timm model name"):
        DADF("lite", backbone="no_such_backbone_xyz", pretrained=False)
    with pytest.raises(ValueError, match="preset"):
        DADF("huge")
    with pytest.raises(ValueError, match="multiple of 16"):
        DADF("lite", input_size=100, pretrained=False)


def test_corrupt_and_foreign_checkpoints(tmp_path):
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x80\x02not a checkpoint at all")
    with pytest.raises(ValueError, match="not a dadf-fast checkpoint"):
        DADF.load(corrupt)
    foreign = tmp_path / "foreign.pt"
    torch.save({"model": {"w": torch.zeros(2)}}, foreign)
    with pytest.raises(ValueError, match="not a dadf-fast checkpoint"):
        DADF.load(foreign)
    with pytest.raises(FileNotFoundError):
        DADF.load(tmp_path / "missing.pt")


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_checkpoint_loading_never_runs_code(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    torch.save({"format": "dadf-fast", "payload": _Evil()}, path)
    with pytest.raises(ValueError, match="not a dadf-fast checkpoint.*never unpickles"):
        DADF.load(path)
    assert "must never run" not in capsys.readouterr().out


def test_local_backbone_weights_file(tmp_path):
    from dadf_fast.models.backbone import Backbone

    ref = Backbone("resnet18", pretrained=False)
    path = tmp_path / "resnet18.pth"
    torch.save(ref.body.state_dict(), path)
    bb = Backbone("resnet18", pretrained=True, weights=str(path))
    for (k, a), (_, b) in zip(ref.body.state_dict().items(), bb.body.state_dict().items()):
        assert torch.equal(a, b), k
    torch.save({"nothing": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match="does not fit"):
        Backbone("resnet18", pretrained=True, weights=str(path))
