"""Decision thresholds (:mod:`dadf_fast.models.thresholds`): the F1 search against a brute
force, the calibration rules (labelled, synthetic defects, normal-quantile fallback), the
verdicts, and their life in DADF (predict, checkpoint, fit's held-out images)."""
import numpy as np
import pytest
import torch

from dadf_fast import DADF
from dadf_fast.data.synthetic import load_source
from dadf_fast.data.transforms import normalize
from dadf_fast.models import thresholds as th
from dadf_fast.models.checkpoint import CheckpointError


def _brute_f1(scores, labels):
    """Best F1 over every threshold equal to a sample (flag score >= t), by counting."""
    best = -1.0
    for t in np.unique(scores):
        p = scores >= t
        tp, fp, fn = (p & labels).sum(), (p & ~labels).sum(), (~p & labels).sum()
        best = max(best, 2 * tp / (2 * tp + fp + fn))
    return best


@pytest.mark.parametrize("seed", range(6))
def test_f1_optimal_threshold_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 60))
    labels = rng.random(n) < 0.4
    labels[0], labels[1] = True, False
    # rounded scores: ties between and within classes
    scores = np.round(rng.normal(size=n) + 1.2 * labels, 1)
    got = th.f1_optimal_threshold(torch.from_numpy(scores), torch.from_numpy(labels))
    assert got["f1"] == pytest.approx(_brute_f1(scores, labels), abs=1e-12)
    # the threshold realises that F1 on the data, and sits strictly between two samples (or on the lowest)
    counts = th.binary_counts(torch.from_numpy(scores >= got["threshold"]), torch.from_numpy(labels))
    assert counts["f1"] == pytest.approx(got["f1"], abs=1e-12)
    assert counts["precision"] == pytest.approx(got["precision"])
    assert counts["recall"] == pytest.approx(got["recall"])


def test_f1_threshold_is_the_midpoint_of_a_gap():
    got = th.f1_optimal_threshold(torch.tensor([0.1, 0.2, 0.3, 0.9, 1.0]), torch.tensor([0, 0, 0, 1, 1]))
    assert got["threshold"] == pytest.approx(0.6)
    assert got["f1"] == 1.0
    with pytest.raises(ValueError, match="both classes"):
        th.f1_optimal_threshold(torch.tensor([0.1, 0.2]), torch.tensor([0, 0]))


def test_binary_counts_against_sklearn():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(1)
    p, t = rng.random(200) < 0.3, rng.random(200) < 0.4
    got = th.binary_counts(torch.from_numpy(p), torch.from_numpy(t))
    assert got["f1"] == pytest.approx(metrics.f1_score(t, p))
    assert got["precision"] == pytest.approx(metrics.precision_score(t, p))
    assert got["recall"] == pytest.approx(metrics.recall_score(t, p))


def test_verdicts_put_the_threshold_at_one_half():
    calib = {"image_threshold": 2.0, "pixel_threshold": 1.5, "score_min": 1.0, "score_max": 5.0}
    score = torch.tensor([0.0, 1.0, 2.0, 3.0, 9.0])
    amap = torch.tensor([1.0, 1.5, 2.0]).view(1, 1, 1, 3).expand(5, 1, 1, 3)
    out = th.verdicts(amap, score, calib)
    assert out["pred_score"].tolist() == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])
    assert out["pred_label"].tolist() == [False, False, True, True, True]
    assert out["pred_mask"][0, 0, 0].tolist() == [False, True, True]


class _DiffModel:
    """A stand-in detector whose map is the distance of each pixel to the clean images it
    knows (exact for normal images, > 0 exactly where a synthetic defect changed pixels)."""

    def __init__(self, clean):
        self.clean = clean

    def predict(self, images, batch_size=None):
        d = (images[:, None] - self.clean[None]).abs().amax(2)  # [B, N, S, S]
        amap = d.flatten(2).mean(2).argmin(1)  # the nearest clean image
        amap = d[torch.arange(len(images)), amap][:, None]
        return {"anomaly_map": amap, "score": amap.flatten(1).amax(1)}


def _photos(n, size=64):
    photo = torch.from_numpy(load_source("brick")).permute(2, 0, 1).float() / 255
    crops = [photo[:, 40 * i:40 * i + size, 30 * i:30 * i + size] for i in range(n)]
    return normalize(torch.stack(crops))


def test_synthetic_calibration_separates_defects_from_normals():
    normal = _photos(5)
    calib = th.calibrate_thresholds(_DiffModel(normal), normal, seed=3)
    assert calib["method"] == "f1-synthetic"
    assert (calib["n_normal"], calib["n_anomalous"]) == (5, 5)
    # normal images score 0 and every defect changes pixels: the image threshold lies in the gap,
    # the pixel threshold below the defects' changed pixels
    assert 0 < calib["image_threshold"] < calib["score_max"]
    assert calib["score_min"] == 0.0
    assert 0 < calib["pixel_threshold"]
    defective, masks = th.synthetic_defects(normal, seed=3)
    assert defective.shape == normal.shape and masks.shape == (5, 64, 64)
    assert all(0 < m.float().mean() < 0.1 for m in masks)
    changed = (defective - normal).abs().amax(1) > 1e-6
    assert not bool((changed & ~masks).any())  # nothing outside a mask changed


def test_labelled_calibration_and_fallbacks():
    normal = _photos(5)
    model = _DiffModel(normal)
    bad = normal[:2].clone()
    bad[0, :, 10:20, 10:20] += 3.0
    bad[1, :, 30:34, 30:50] -= 1.0
    images = torch.cat((normal, bad))
    labels = torch.tensor([0, 0, 0, 0, 0, 1, 1])
    masks = torch.zeros(7, 64, 64, dtype=torch.bool)
    masks[5, 10:20, 10:20] = True
    masks[6, 30:34, 30:50] = True
    calib = th.calibrate_thresholds(model, images, labels, masks)
    assert calib["method"] == "f1" and calib["note"] == ""
    assert 0 < calib["image_threshold"] < 1.0  # between the normals' 0 and the smaller defect's change
    assert 0 < calib["pixel_threshold"] < 1.0
    no_masks = th.calibrate_thresholds(model, images, labels)
    assert no_masks["pixel_threshold"] == no_masks["image_threshold"]
    assert "no pixel ground truth" in no_masks["note"]
    lines = []
    few = th.calibrate_thresholds(model, normal[:3], log=lines.append)
    assert few["method"] == "normal-quantile" and "fewer than the 4" in few["note"]
    assert few["image_threshold"] == few["pixel_threshold"] == 0.0
    assert "normal-quantile" in lines[0]


def test_calibration_rejects_bad_labels_and_masks():
    normal = _photos(4)
    model = _DiffModel(normal)
    with pytest.raises(ValueError, match="labels must be 4 values"):
        th.calibrate_thresholds(model, normal, labels=[0, 1, 2, 0])
    with pytest.raises(ValueError, match="all images are labelled anomalous"):
        th.calibrate_thresholds(model, normal, labels=[1, 1, 1, 1])
    with pytest.raises(ValueError, match="labelled normal"):
        th.calibrate_thresholds(model, normal, labels=[0, 0, 0, 1], masks=torch.ones(4, 64, 64))
    with pytest.raises(ValueError, match=r"masks must be \[4, 64, 64\]"):
        th.calibrate_thresholds(model, normal, labels=[0, 0, 0, 1], masks=torch.zeros(4, 32, 32))
    good = th.calibrate_thresholds(model, normal[:2], log=None)
    assert th.check_calibration(dict(good)) == good
    with pytest.raises(ValueError, match=r"x\['image_threshold'\] must be a finite number"):
        th.check_calibration({**good, "image_threshold": float("nan")}, "x")
    with pytest.raises(ValueError, match="lacks"):
        th.check_calibration({"image_threshold": 1.0}, "x")


def _tiny():
    torch.manual_seed(0)
    return DADF("lite", pretrained=False, input_size=64, depth=1, flow_steps=2)


def test_dadf_predict_checkpoint_and_fit_hold_out(tmp_path):
    x = torch.randn(10, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    m = _tiny()
    res = m.fit(x, recipe="lite", epochs_recon=1, iters_flow=2, progress=False, log=None, out_dir=tmp_path / "run")
    # a finished run resumed: the thresholds come back with the weights
    again = _tiny().fit(x, recipe="lite", epochs_recon=1, iters_flow=2, progress=False, log=None,
                        out_dir=tmp_path / "run", resume=True)
    assert again["calibration"] == res["calibration"] and again["resumed_from"].endswith("model.pt")
    # 20 % of 10 held out: 2 normal images, the documented fallback
    assert res["calibration"]["method"] == "normal-quantile" and res["calibration"]["n_normal"] == 2
    assert m.cue_memory.shape[0] == 10 * 8 * 8  # the 8 training images' patches, then the 2 held out (64 px: 8x8)
    out = m.predict(x[:3])
    assert set(out) == {"anomaly_map", "score", "pred_score", "pred_label", "pred_mask"}
    assert torch.equal(out["pred_label"], out["score"] >= m.calibration["image_threshold"])
    assert torch.equal(out["pred_mask"], out["anomaly_map"] >= m.calibration["pixel_threshold"])
    m.save(tmp_path / "m.pt")
    back = DADF.load(tmp_path / "m.pt")
    assert back.calibration == m.calibration
    payload = torch.load(tmp_path / "m.pt", weights_only=True)
    payload["calibration"]["image_threshold"] = float("inf")
    torch.save(payload, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="damaged calibration"):
        DADF.load(tmp_path / "bad.pt")
    # recalibration on labelled images: F1 on them, the verdicts follow
    labels = torch.tensor([0, 0, 0, 0, 1, 1])
    calib = m.calibrate(x[:6], labels=labels, log=None)
    assert calib["method"] == "f1" and m.predict(x[:1])["pred_score"].shape == (1,)
    # refitting without a hold-out drops the thresholds of the earlier weights
    m.fit(x, recipe="lite", epochs_recon=1, iters_flow=2, progress=False, log=None, calibration_fraction=0.0)
    assert m.calibration is None and "pred_label" not in m.predict(x[:1])
    # no hold-out: every image trains, no thresholds
    m2 = _tiny()
    res2 = m2.fit(x, recipe="lite", epochs_recon=1, iters_flow=2, progress=False, log=None, calibration_fraction=0.0)
    assert res2["calibration"] is None and m2.cue_memory.shape[0] == 10 * 64
    assert set(m2.predict(x[:2])) == {"anomaly_map", "score"}
    # validation images: nothing held out, thresholds from them
    m3 = _tiny()
    res3 = m3.fit(x[:6], recipe="lite", epochs_recon=1, iters_flow=2, progress=False, log=None,
                  val_images=x[6:], val_labels=torch.tensor([0, 0, 0, 0]))
    assert m3.cue_memory.shape[0] == 6 * 64 and res3["calibration"]["n_normal"] == 4


def test_binned_pixel_f1_is_the_exact_optimum_on_its_grid():
    rng = np.random.default_rng(4)
    masks = [rng.random((9, 11)) < 0.2 for _ in range(4)]
    maps = [np.round(rng.normal(size=(9, 11)) + 1.5 * g, 2) for g in masks]
    bins = 64
    got = th.f1_optimal_binned(maps, masks, bins=bins)
    lo, hi = min(m.min() for m in maps), max(m.max() for m in maps)
    allm, allg = np.concatenate([m.ravel() for m in maps]), np.concatenate([g.ravel() for g in masks])
    best = 0.0
    for t in np.linspace(lo, hi, bins + 1)[1:-1]:
        c = th.binary_counts(torch.from_numpy(allm >= t), torch.from_numpy(allg))
        best = max(best, c["f1"])
    assert got["f1"] == pytest.approx(best, abs=1e-12)
    c = th.binary_counts(torch.from_numpy(allm >= got["threshold"]), torch.from_numpy(allg))
    assert c["f1"] == pytest.approx(got["f1"], abs=1e-12)
    # a grid this fine comes within a hair of the exact (sorted) optimum
    exact = th.f1_optimal_threshold(torch.from_numpy(allm), torch.from_numpy(allg))["f1"]
    assert got["f1"] <= exact + 1e-12 and got["f1"] >= exact - 0.05
