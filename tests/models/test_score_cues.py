"""DADF's score cues (``score_cues``): the flows' likelihood, the dual-attention
reconstruction error and the kNN patch distance, calibrated on the normal training images
(:mod:`dadf_fast.models.cues`), against direct computations."""
import pytest
import torch
import torch.nn.functional as F

from dadf_fast import DADF, reference
from dadf_fast.models import cues
from dadf_fast.models.postprocess import gaussian_smooth

ALL = ("flow", "recon", "knn")


def _tiny(**kw):
    torch.manual_seed(0)
    return DADF("lite", pretrained=False, input_size=64, depth=1, flow_steps=2, **kw)


@pytest.fixture(scope="module")
def images():
    return torch.randn(5, 3, 64, 64, generator=torch.Generator().manual_seed(3))


@pytest.fixture(scope="module")
def fitted(images):
    m = _tiny(score_cues=ALL)
    m.fit(images, recipe="lite", epochs_recon=1, iters_flow=2, progress=False, log=None, calibration_fraction=0.0)
    return m.eval()


def test_cues_are_validated():
    assert cues.check_cues(["knn", "flow"]) == ("flow", "knn")
    for bad in ([], ["flow", "flow"], ["nll"], "flow", None):
        with pytest.raises(ValueError, match="score_cues must be a non-empty subset"):
            cues.check_cues(bad)
    with pytest.raises(ValueError, match="score_cues"):
        _tiny(score_cues=("pixels",))


def test_flow_cue_alone_is_the_old_model():
    """No calibration buffers, the same state dict keys and the same map as before the option."""
    m = _tiny(score_cues=("flow",))
    assert m.config["score_cues"] == ["flow"]
    assert not any(k.startswith("cue_") for k in m.state_dict())
    assert m.calibrate_cues(torch.randn(2, 3, 64, 64)) == {}


def _brute_knn(query_emb, bank_emb):
    q = query_emb.permute(0, 2, 3, 1).reshape(-1, query_emb.shape[1]).double()
    b = bank_emb.permute(0, 2, 3, 1).reshape(-1, bank_emb.shape[1]).double()
    d = ((q[:, None, :] - b[None, :, :]) ** 2).sum(-1).min(1).values.sqrt()
    return d.view(query_emb.shape[0], 1, *query_emb.shape[-2:]).float()


def test_calibration_and_memory(fitted, images):
    m = fitted
    feats = m.features(images)
    emb = cues.patch_embedding(feats)
    assert m.cue_memory.shape == (5 * 8 * 8, m.backbone.channels[1] + m.backbone.channels[2])
    torch.testing.assert_close(m.cue_memory, emb.permute(0, 2, 3, 1).reshape(-1, emb.shape[1]))
    # recompute every cue's training maps directly, then its (mean, spread)
    sigma = m.config["smooth_sigma"]
    with torch.no_grad():
        local, glob = m.reconstruct(feats)
        zs = m.latents(feats, local, glob)
        flow = reference.multiscale_score(zs, 64)[0]
        recon = sum(F.interpolate(((f - rl) ** 2).mean(1, keepdim=True) + ((f - rg) ** 2).mean(1, keepdim=True),
                                  size=(64, 64), mode="bilinear", align_corners=False)
                    for f, rl, rg in zip(feats, local, glob)) / 3
        loo = torch.cat([_brute_knn(emb[i:i + 1], torch.cat((emb[:i], emb[i + 1:]))) for i in range(5)])
        knn = F.interpolate(loo, size=(64, 64), mode="bilinear", align_corners=False)
    for i, raw in enumerate((flow, recon, knn)):
        sm = gaussian_smooth(raw, sigma).double()
        mean = sm.mean()
        spread = sm.flatten(1).amax(1).mean() - mean
        assert float(m.cue_mean[i]) == pytest.approx(float(mean), rel=1e-4, abs=1e-6), ALL[i]
        assert float(m.cue_spread[i]) == pytest.approx(float(spread), rel=1e-3), ALL[i]


def test_map_is_the_sum_of_calibrated_cues(fitted, images):
    m = fitted
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(9))
    out = m.predict(x)
    from dadf_fast.models.inputs import model_input

    xi = model_input(x, m.backbone)
    with torch.no_grad():
        feats = m.features(xi)
        local, glob = m.reconstruct(feats)
        zs = m.latents(feats, local, glob)
        raw = cues.cue_maps(m, zs, feats, local, glob, m.config["smooth_sigma"])
        bank = cues.patch_embedding(m.features(images))
        knn = F.interpolate(_brute_knn(cues.patch_embedding(feats), bank), size=(64, 64), mode="bilinear",
                            align_corners=False)
    torch.testing.assert_close(raw["knn"], gaussian_smooth(knn, m.config["smooth_sigma"]), rtol=1e-4, atol=1e-4)
    assert m.config["cue_weights"] == [1.0, 0.25, 1.0]  # the lite preset's
    want = sum(w * (raw[c] - m.cue_mean[i]) / m.cue_spread[i] for i, (c, w) in enumerate(zip(ALL, (1.0, 0.25, 1.0))))
    torch.testing.assert_close(out["anomaly_map"], want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out["score"], want.flatten(1).amax(1), rtol=1e-5, atol=1e-5)


def test_checkpoint_round_trip_with_any_memory_size(fitted, tmp_path):
    fitted.save(tmp_path / "m.pt")
    back = DADF.load(tmp_path / "m.pt")
    assert back.config["score_cues"] == list(ALL)
    for k, v in fitted.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k
    fresh = _tiny(score_cues=ALL)  # an empty memory: load_state_dict takes the file's length
    fresh.load_state_dict(fitted.state_dict())
    assert torch.equal(fresh.cue_memory, fitted.cue_memory)
    with pytest.raises(RuntimeError, match="empty memory"):
        _tiny(score_cues=ALL).eval().predict(torch.randn(1, 3, 64, 64))


def test_checkpoint_without_score_cues_loads_as_flow_only(tmp_path):
    m = _tiny(score_cues=("flow",))
    m.save(tmp_path / "m.pt")
    payload = torch.load(tmp_path / "m.pt", weights_only=True)
    del payload["config"]["score_cues"]
    torch.save(payload, tmp_path / "old.pt")
    assert DADF.load(tmp_path / "old.pt").config["score_cues"] == ["flow"]


def test_cue_weights(fitted, images):
    """The map is the weighted sum of the calibrated cues; weights are checked and saved."""
    m = _tiny(score_cues=ALL, cue_weights=(1.0, 0.25, 2))
    assert m.config["cue_weights"] == [1.0, 0.25, 2.0]
    m.load_state_dict(fitted.state_dict())
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    from dadf_fast.models.inputs import model_input

    with torch.no_grad():
        xi = model_input(x, m.backbone)
        feats = m.features(xi)
        local, glob = m.reconstruct(feats)
        raw = cues.cue_maps(m, m.latents(feats, local, glob), feats, local, glob, m.config["smooth_sigma"])
    want = sum(w * (raw[c] - m.cue_mean[i]) / m.cue_spread[i] for i, (c, w) in enumerate(zip(ALL, (1.0, 0.25, 2.0))))
    torch.testing.assert_close(m.predict(x)["anomaly_map"], want, rtol=1e-5, atol=1e-5)
    for bad in ((1.0, 1.0), (1.0, 0.0, 1.0), (1.0, float("nan"), 1.0), "1,1,1"):
        with pytest.raises(ValueError, match="cue_weights"):
            _tiny(score_cues=ALL, cue_weights=bad)
    assert _tiny(score_cues=("flow", "knn")).config["cue_weights"] == [1.0, 1.0]
