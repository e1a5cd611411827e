"""Training, resume, divergence handling, evaluation outputs and the CLI on tiny data."""
import json
from pathlib import Path
import os

import numpy as np
import pytest
import torch

from dadf_fast import DADF
from dadf_fast.cli.commands import main
from dadf_fast.data import MVTecAD
from dadf_fast.engine.evaluation import evaluate
from dadf_fast.data.synthetic import make_dataset
from dadf_fast.models.training import TrainingDiverged


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("mvtec")
    make_dataset(root, categories=["brick"], n_train=6, n_test_good=3, n_test_defect=3, image_size=64, seed=0)
    return str(root)


def _model():
    torch.manual_seed(0)
    return DADF("lite", input_size=64, depth=1, flow_steps=2, backend="torch")


FAST = dict(epochs_recon=2, epochs_flow=2, progress=False, log=lambda *a: None)


def test_fit_checkpoints_resume_and_determinism(tiny_root, tmp_path):
    train = MVTecAD(tiny_root, "brick", "train", image_size=64)
    m1 = _model()
    res = m1.fit(train, out_dir=str(tmp_path / "a"), **FAST)
    assert len(res["loss_recon"]) == 2 and len(res["loss_flow"]) == 2
    assert (tmp_path / "a" / "stage1.pt").exists() and (tmp_path / "a" / "model.pt").exists()
    # same seed, same data: identical weights
    m2 = _model()
    m2.fit(train, out_dir=str(tmp_path / "b"), **FAST)
    for (k, a), (_, b) in zip(m1.state_dict().items(), m2.state_dict().items()):
        assert torch.equal(a, b), k
    # resume with everything done: nothing trains, the weights come from model.pt
    m3 = _model()
    res3 = m3.fit(train, out_dir=str(tmp_path / "a"), resume=True, **FAST)
    assert res3["loss_recon"] == [] and res3["loss_flow"] == []
    assert torch.equal(m3.flows[0].norm.weight, m1.flows[0].norm.weight)
    # interrupted after stage 1: resume trains only stage 2 and matches the uninterrupted run
    os.remove(tmp_path / "b" / "model.pt")
    m4 = _model()
    res4 = m4.fit(train, out_dir=str(tmp_path / "b"), resume=True, **FAST)
    assert res4["loss_recon"] == [] and len(res4["loss_flow"]) == 2
    assert res4["resumed_from"].endswith("stage1.pt")
    for p4, p1 in zip(m4.reconstructor.parameters(), m1.reconstructor.parameters()):
        assert torch.equal(p4, p1)


def test_nan_loss_stops_training_and_keeps_last_checkpoint(tiny_root, tmp_path, monkeypatch):
    train = MVTecAD(tiny_root, "brick", "train", image_size=64)
    model = _model()
    monkeypatch.setattr(model, "flow_loss", lambda inputs: torch.tensor(float("nan"), requires_grad=True))
    with pytest.raises(TrainingDiverged, match="stage 2 loss became nan.*stage1.pt"):
        model.fit(train, out_dir=str(tmp_path), **FAST)
    assert DADF.read_checkpoint(tmp_path / "stage1.pt")["stage_done"] == 1
    assert not (tmp_path / "model.pt").exists()


def test_evaluate_writes_maps_heatmaps_and_metrics(tiny_root, tmp_path):
    train = MVTecAD(tiny_root, "brick", "train", image_size=64)
    test = MVTecAD(tiny_root, "brick", "test", image_size=64)
    model = _model()
    model.fit(train, **FAST)
    res = evaluate(model, test, out_dir=str(tmp_path), category="brick")
    for key in ("image_auroc", "pixel_auroc", "aupro"):
        assert 0.0 <= res[key] <= 1.0
    assert set(res["per_defect"]) == {"scratch", "patch", "spot"}
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["image_auroc"] == res["image_auroc"] and saved["n_images"] == len(test)
    tiffs = sorted((tmp_path / "brick" / "test").rglob("*.tiff"))
    assert len(tiffs) == len(test)
    import tifffile

    arr = tifffile.imread(tiffs[0])
    assert arr.shape == (64, 64) and arr.dtype == np.float32
    assert len(list((tmp_path / "heatmaps").rglob("*.png"))) == len(test)


def test_cli_train_test_predict(tiny_root, tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["train", "--data", tiny_root, "--category", "brick", "--out", str(out), "--input-size", "64",
               "--epochs-recon", "1", "--epochs-flow", "1", "--quiet", "--backend", "torch"])
    assert rc == 0 and (out / "model.pt").exists()
    rc = main(["test", "--checkpoint", str(out / "model.pt"), "--data", tiny_root, "--category", "brick",
               "--out", str(tmp_path / "eval")])
    assert rc == 0
    text = capsys.readouterr().out
    assert "image_auroc" in text and "per defect" in text
    img = next(Path(tiny_root).rglob("test/good/*.png"))
    rc = main(["predict", "--checkpoint", str(out / "model.pt"), str(img), "--out", str(tmp_path / "pred")])
    assert rc == 0
    assert (tmp_path / "pred" / (img.stem + ".png")).exists()
    lines = capsys.readouterr().out.strip().splitlines()
    line = next(row for row in lines if row.endswith(img.name))
    assert float(line.split()[0]) >= 0 and (tmp_path / "pred" / "predictions.csv").exists()


@pytest.mark.parametrize("argv,needle", [
    (["train", "--data", "/no/such/root", "--category", "x", "--out", "/tmp/x"], "/no/such/root"),
    (["train", "--out", "/tmp/x"], "--normal-dir"),
    (["test", "--checkpoint", "/no/such/model.pt", "--test-dir", "/tmp"], "/no/such/model.pt"),
    (["predict", "--checkpoint", "/no/such/model.pt", "/no/such/image.png"], "/no/such/image.png"),
])
def test_cli_user_errors_are_one_line(argv, needle, capsys):
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert needle in err and "Traceback" not in err and len(err.splitlines()) == 1


def test_cli_unknown_category_lists_available(tiny_root, capsys):
    rc = main(["train", "--data", tiny_root, "--category", "bottle", "--out", "/tmp/never"])
    err = capsys.readouterr().err
    assert rc == 2 and "brick" in err


def test_held_out_early_stopping_keeps_the_best_epoch(tiny_root):
    train = MVTecAD(tiny_root, "brick", "train", image_size=64)
    model = _model()
    logs = []
    model.fit(train, epochs_recon=1, epochs_flow=3, val_fraction=0.34, progress=False, log=logs.append)
    kept = [m for m in logs if "kept epoch" in m]
    assert len(kept) == 1
    epoch, best = kept[0].split("kept epoch ")[1].split(" (lowest held-out loss ")
    assert 1 <= int(epoch) <= 3 and np.isfinite(float(best.rstrip(")")))


def _loco_from_mvtec(mvtec_root, dst):
    """An MVTec LOCO AD layout built from the tiny MVTec data: every defect becomes the
    defect type 'logical', its mask file ground_truth/logical/<id>/000.png (pixel value 255)."""
    import shutil

    from PIL import Image

    src = Path(mvtec_root) / "brick"
    cat = Path(dst) / "brick"
    shutil.copytree(src / "train" / "good", cat / "train" / "good")
    shutil.copytree(src / "train" / "good", cat / "validation" / "good")
    shutil.copytree(src / "test" / "good", cat / "test" / "good")
    (cat / "test" / "logical").mkdir(parents=True)
    n = 0
    for defect_dir in sorted((src / "test").iterdir()):
        if defect_dir.name == "good":
            continue
        for img in sorted(defect_dir.glob("*.png")):
            stem = f"{n:03d}"
            shutil.copy(img, cat / "test" / "logical" / f"{stem}.png")
            mask = np.asarray(Image.open(src / "ground_truth" / defect_dir.name / f"{img.stem}_mask.png")) > 0
            (cat / "ground_truth" / "logical" / stem).mkdir(parents=True)
            Image.fromarray((mask * 255).astype(np.uint8)).save(cat / "ground_truth" / "logical" / stem / "000.png")
            n += 1
    (cat / "defects_config.json").write_text(json.dumps([
        {"defect_name": "logical", "pixel_value": 255, "saturation_threshold": 1.0, "relative_saturation": True}]))
    return str(dst)


def test_evaluate_mvtec_loco_reports_spro(tiny_root, tmp_path):
    from dadf_fast import metrics
    from dadf_fast.data import MVTecLOCO

    root = _loco_from_mvtec(tiny_root, tmp_path / "loco")
    test = MVTecLOCO(root, "brick", "test", image_size=64)
    model = _model()
    model.fit(MVTecLOCO(root, "brick", "train", image_size=64), **FAST)
    res = evaluate(model, test)
    assert 0.0 <= res["spro"] <= 1.0
    # relative saturation 1.0 = the whole region: sPRO equals AUPRO at the same FPR limit
    maps = model.predict(torch.stack([test[i]["image"] for i in range(len(test))]))["anomaly_map"][:, 0]
    masks = torch.stack([test[i]["mask"][0] for i in range(len(test))]) > 0.5
    assert res["spro"] == pytest.approx(metrics.aupro(maps, masks, fpr_limit=0.05), abs=1e-6)


def test_demo_calibrates_on_its_own_validation_images(tmp_path, monkeypatch):
    """The demo's thresholds come from the validation region's images (crops held out of the
    training images at random share their pixels), and every training image is trained on."""
    import dadf_fast.data.synthetic as syn
    from dadf_fast.cli import demo

    made = {}

    def small(root, categories, seed, n_val):
        made["n_val"] = n_val
        return make_dataset(root, categories=categories, n_train=5, n_test_good=2, n_test_defect=2,
                            image_size=64, seed=seed, defects=["spot"], n_val=n_val)

    monkeypatch.setattr(syn, "make_dataset", small)
    import dadf_fast.models as models

    real = models.DADF
    monkeypatch.setattr(models, "DADF", lambda preset, **kw: real(preset, depth=1, flow_steps=2, **kw))
    summary = demo.run_demo(str(tmp_path / "d"), categories=["brick"], epochs_recon=1, epochs_flow=1,
                            progress=False, log=lambda *a: None)
    assert made["n_val"] == demo.DEMO_N_VAL == 8
    model = DADF.load(str(tmp_path / "d" / "brick" / "model.pt"))
    calib = model.calibration
    assert calib["method"] == "f1-synthetic" and calib["n_normal"] == 8, calib
    # nothing held out: the kNN memory holds the patches of all 5 training images
    assert model.cue_memory.shape[0] == 5 * (model.input_size // 8) ** 2   # one patch per stride-8 cell
    assert "decisions" in summary["categories"]["brick"]
