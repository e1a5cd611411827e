"""fit's hold-out (the normal images kept out of training for the decision thresholds) joins
the kNN cue's memory and calibration, and each held-out image is scored without its own
patches when the thresholds are chosen (:func:`dadf_fast.models.cues.fit_calibration`).
Checked against memories and maps built directly from the images."""
import copy

import pytest
import torch
import torch.nn.functional as F

from dadf_fast import DADF
from dadf_fast.models import cues, thresholds
from dadf_fast.models.postprocess import gaussian_smooth
from dadf_fast.models.training import FitConfig, _hold_out

S = 64


def _tiny():
    torch.manual_seed(0)
    return DADF("lite", pretrained=False, input_size=S, depth=1, flow_steps=2)


@pytest.fixture(scope="module")
def run():
    x = torch.randn(20, 3, S, S, generator=torch.Generator().manual_seed(11))
    m = _tiny()
    res = m.fit(x, recipe="lite", epochs_recon=1, iters_flow=2, progress=False, log=None)
    trained, held = _hold_out(x, FitConfig(seed=0), 2, lambda *a: None)  # fit's own draw
    return m.eval(), res, trained, held


def _emb(m, images):
    with torch.no_grad():
        return cues.patch_embedding(m.features(images))


def _without(m, held_index, trained, held):
    """A copy of ``m`` whose memory is built from every normal image but held-out image ``held_index``."""
    keep = torch.cat((trained, held[:held_index], held[held_index + 1:]))
    other = copy.deepcopy(m)
    other.cue_memory = cues.flatten_patches(_emb(m, keep))
    return other


def test_memory_holds_every_normal_image(run):
    m, res, trained, held = run
    assert (len(trained), len(held)) == (16, 4)
    want = cues.flatten_patches(_emb(m, torch.cat((trained, held))))
    assert m.cue_memory.shape == (20 * 8 * 8, want.shape[1])
    torch.testing.assert_close(m.cue_memory, want)


def test_knn_calibration_is_leave_one_out_over_all_normal_images(run):
    """The kNN cue's (mean, spread) from the 20 images' leave-one-out maps; the flow cue's
    from the 16 trained images only (the flows never saw the 4)."""
    m, res, trained, held = run
    sigma = m.config["smooth_sigma"]
    emb = _emb(m, torch.cat((trained, held)))
    loo = []
    for i in range(20):
        others = cues.flatten_patches(torch.cat((emb[:i], emb[i + 1:]))).double()
        q = cues.flatten_patches(emb[i:i + 1]).double()
        loo.append(torch.cdist(q, others).min(1).values.view(1, 1, 8, 8).float())
    knn = gaussian_smooth(F.interpolate(torch.cat(loo), size=(S, S), mode="bilinear", align_corners=False), sigma)
    mean, spread = knn.double().mean(), knn.double().flatten(1).amax(1).mean() - knn.double().mean()
    k = m.config["score_cues"].index("knn")
    assert float(m.cue_mean[k]) == pytest.approx(float(mean), rel=1e-4)
    assert float(m.cue_spread[k]) == pytest.approx(float(spread), rel=1e-3)
    # the kNN cue over the 16 trained images alone would give another mean: the 4 count
    only16 = knn[:16].double().mean()
    assert abs(float(only16) - float(mean)) > 1e-4 * abs(float(mean))
    f = m.config["score_cues"].index("flow")
    with torch.no_grad():
        feats = m.features(trained)
        local, glob = m.reconstruct(feats)
        flow = cues.cue_maps(m, m.latents(feats, local, glob), feats, local, glob, sigma)["flow"]
    assert float(m.cue_mean[f]) == pytest.approx(float(flow.double().mean()), rel=1e-4)


def test_held_out_images_are_scored_without_their_own_patches(run):
    m, res, trained, held = run
    defective, _, sources = thresholds.synthetic_defects(held, seed=0, return_sources=True)
    assert sources.tolist() == [0, 1, 2, 3]
    images = torch.cat((held, defective))
    got_s, got_m = cues.predict_leaving_self_out(m, images, torch.cat((torch.arange(4), sources)), n_held=4)
    for row in range(8):
        other = _without(m, row % 4, trained, held)
        want = other.predict(images[row:row + 1])
        torch.testing.assert_close(got_m[row:row + 1], want["anomaly_map"], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got_s[row:row + 1], want["score"], rtol=1e-5, atol=1e-5)
    # against the full memory a held-out image finds itself: its kNN distance is 0, its score lower
    assert bool((m.predict(held)["score"] < got_s[:4]).all())
    assert torch.equal(m.cue_memory, cues.flatten_patches(_emb(m, torch.cat((trained, held)))))  # restored


def test_thresholds_are_those_of_the_leave_self_out_scores(run):
    """fit's thresholds: F1-optimal on the held-out images and their synthetic defects, each
    scored by a model whose memory lacks it (built here image by image)."""
    m, res, trained, held = run
    calib = res["calibration"]
    assert calib["method"] == "f1-synthetic" and calib["n_normal"] == 4 and calib == m.calibration
    defective, dmasks, sources = thresholds.synthetic_defects(held, seed=0, return_sources=True)
    images, src = torch.cat((held, defective)), torch.cat((torch.arange(4), sources))
    scores = torch.cat([_without(m, int(s), trained, held).predict(images[i:i + 1])["score"] for i, s in enumerate(src)])
    labels = torch.tensor([0] * 4 + [1] * 4)
    want = thresholds.f1_optimal_threshold(scores, labels)["threshold"]
    assert calib["image_threshold"] == pytest.approx(want, rel=1e-5)
    assert (calib["score_min"], calib["score_max"]) == pytest.approx((float(scores.min()), float(scores.max())), rel=1e-5)


def test_sources_are_checked(run):
    m, res, trained, held = run
    with pytest.raises(ValueError, match="sources must give"):
        cues.predict_leaving_self_out(m, held, torch.tensor([0, 1, 2, 4]), n_held=4)
    with pytest.raises(ValueError, match="sources must give"):
        cues.predict_leaving_self_out(m, held, torch.tensor([0, 1]), n_held=4)


def test_calibrate_thresholds_passes_each_images_source():
    """``predict`` receives, for each scored image, the calibration image it is or was made from."""
    seen = []

    def predict(images, sources):
        seen.append(sources.clone())
        return images.flatten(1).std(1), images.mean(1, keepdim=True)

    x = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    assert thresholds.calibrate_thresholds(None, x, seed=1, predict=predict)["method"] == "f1-synthetic"
    assert seen[-1].tolist() == list(range(6)) * 2  # the normal images, then one defective copy of each
    assert thresholds.calibrate_thresholds(None, x, labels=[0, 1, 0, 0, 0, 0], seed=1, predict=predict)["method"] == "f1"
    assert seen[-1].tolist() == list(range(6))


def test_without_the_knn_cue_the_hold_out_only_sets_thresholds():
    x = torch.randn(20, 3, S, S, generator=torch.Generator().manual_seed(11))
    torch.manual_seed(0)
    m = DADF("lite", pretrained=False, input_size=S, depth=1, flow_steps=2, score_cues=("flow", "recon"))
    res = m.fit(x, recipe="lite", epochs_recon=1, iters_flow=2, progress=False, log=None)
    assert not hasattr(m, "cue_memory") and res["calibration"]["method"] == "f1-synthetic"
    trained, held = _hold_out(x, FitConfig(seed=0), 1, lambda *a: None)
    defective, _ = thresholds.synthetic_defects(held, seed=0)
    scores = m.predict(torch.cat((held, defective)))["score"]
    want = thresholds.f1_optimal_threshold(scores, torch.tensor([0] * 4 + [1] * 4))["threshold"]
    assert res["calibration"]["image_threshold"] == pytest.approx(want, rel=1e-5)
