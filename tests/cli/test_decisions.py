"""Verdicts on the command line: ``train`` sets thresholds (held-out normals or --val-dir),
``predict`` writes predictions.csv and masks and counts OK/NG, ``test`` reports F1 at the
calibrated thresholds beside the test set's own F1-optimal ones."""
import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dadf_fast import DADF
from dadf_fast.cli.commands import main
from dadf_fast.data.synthetic import load_source

SIZE = 64
TRAIN = ["--no-pretrained", "--input-size", str(SIZE), "--epochs-recon", "1", "--iters-flow", "2", "--quiet",
         "--backend", "torch"]


def _crops(folder, n, offset, defect=False):
    """``n`` brick crops as PNG files (with a dark square on each when ``defect``), and their masks."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    photo = load_source("brick")
    masks = []
    for i in range(n):
        y, x = 11 * (i + offset), 13 * (i + offset)
        img = photo[y:y + SIZE, x:x + SIZE].copy()
        mask = np.zeros((SIZE, SIZE), np.uint8)
        if defect:
            img[20:34, 24:40] = 10
            mask[20:34, 24:40] = 255
        Image.fromarray(img).save(folder / f"img{i:02d}.png")
        masks.append(mask)
    return folder, masks


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("dec")
    _crops(root / "normal", 10, 0)
    val, _ = _crops(root / "val", 5, 10)
    _, vmasks = _crops(root / "val_bad", 2, 15, defect=True)
    (root / "val_masks").mkdir()
    for i, m in enumerate(vmasks):  # anomalous validation images beside the normal ones
        Path(root / "val_bad" / f"img{i:02d}.png").rename(val / f"bad{i}.png")
        Image.fromarray(m).save(root / "val_masks" / f"bad{i}.png")
    _crops(root / "test", 3, 20)
    test_masks = root / "test_masks"
    test_masks.mkdir()
    for i, m in enumerate(_crops(root / "tmp_bad", 3, 25, defect=True)[1]):
        Path(root / "tmp_bad" / f"img{i:02d}.png").rename(root / "test" / f"bad{i}.png")
        Image.fromarray(m).save(test_masks / f"bad{i}.png")
    return root


def test_train_holds_out_and_predict_writes_verdicts(data, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--normal-dir", str(data / "normal"), "--out", str(out), *TRAIN]) == 0
    printed = capsys.readouterr().out
    assert "trained on 8 images (2 held out for the thresholds)" in printed
    assert "thresholds (normal-quantile)" in printed
    model = DADF.load(out / "model.pt")
    assert model.calibration["n_normal"] == 2

    pred = tmp_path / "pred"
    assert main(["predict", "--checkpoint", str(out / "model.pt"), str(data / "test"), "--out", str(pred)]) == 0
    printed = capsys.readouterr().out
    with open(pred / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6 and list(rows[0]) == ["path", "score", "pred_score", "pred_label"]
    # the verdicts are predict's, at the stored thresholds
    from dadf_fast.data import load_image

    imgs = torch.stack([load_image(r["path"], SIZE) for r in rows])
    ref = model.predict(imgs)
    assert [int(r["pred_label"]) for r in rows] == ref["pred_label"].int().tolist()
    assert [float(r["pred_score"]) for r in rows] == pytest.approx(ref["pred_score"].tolist(), abs=1e-5)
    ng = int(ref["pred_label"].sum())
    assert f"{6 - ng} OK, {ng} NG (of 6 images)" in printed
    stem = Path(rows[0]["path"]).stem
    mask = np.asarray(Image.open(pred / f"{stem}_mask.png"))
    assert mask.shape == (SIZE, SIZE) and set(np.unique(mask)) <= {0, 255}
    assert np.array_equal(mask > 0, ref["pred_mask"][0, 0].numpy())


def test_val_dir_thresholds_and_test_report(data, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--normal-dir", str(data / "normal"), "--out", str(out), "--val-dir", str(data / "val"),
                 "--val-mask-dir", str(data / "val_masks"), *TRAIN]) == 0
    printed = capsys.readouterr().out
    assert "trained on 10 images;" in printed and "thresholds (f1)" in printed
    calib = DADF.load(out / "model.pt").calibration
    assert (calib["method"], calib["n_normal"], calib["n_anomalous"]) == ("f1", 5, 2)

    assert main(["test", "--checkpoint", str(out / "model.pt"), "--test-dir", str(data / "test"),
                 "--mask-dir", str(data / "test_masks"), "--resolution", "input"]) == 0
    printed = capsys.readouterr().out
    assert "at the calibrated thresholds (f1): image F1" in printed
    assert "F1-optimal on this test set: image F1" in printed and "pixel F1" in printed


def test_threshold_options_are_checked(data, tmp_path, capsys):
    assert main(["train", "--normal-dir", str(data / "normal"), "--out", str(tmp_path / "a"),
                 "--calibration-fraction", "1.5", *TRAIN]) == 2
    assert "expected a number >= 0 and < 1" in capsys.readouterr().err
    assert main(["train", "--normal-dir", str(data / "normal"), "--out", str(tmp_path / "b"),
                 "--val-mask-dir", str(data / "val_masks"), *TRAIN]) == 2
    assert "--val-mask-dir needs --val-dir" in capsys.readouterr().err
    assert main(["train", "--normal-dir", str(data / "normal"), "--out", str(tmp_path / "c"), "--method", "knn",
                 "--val-dir", str(data / "val"), *TRAIN]) == 2
    assert "for --method dadf" in capsys.readouterr().err


def test_calibrate_command_sets_thresholds_anew(data, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--normal-dir", str(data / "normal"), "--out", str(out), "--calibration-fraction", "0",
                 *TRAIN]) == 0
    assert DADF.load(out / "model.pt").calibration is None
    before = (out / "model.pt").read_bytes()
    capsys.readouterr()
    recal = tmp_path / "recal"
    assert main(["calibrate", "--checkpoint", str(out / "model.pt"), "--val-dir", str(data / "val"),
                 "--val-mask-dir", str(data / "val_masks"), "--out", str(recal)]) == 0
    printed = capsys.readouterr().out
    assert "thresholds before: none" in printed and "(f1 on 5 normal and 2 anomalous images)" in printed
    model = DADF.load(recal / "model.pt")
    assert model.calibration["method"] == "f1"
    assert (out / "model.pt").read_bytes() == before  # the input checkpoint is never changed
    # the same weights: only the thresholds differ
    ref = DADF.load(out / "model.pt")
    assert all(torch.equal(a, b) for a, b in zip(ref.state_dict().values(), model.state_dict().values()))
    # normal images only: synthetic defects on them; a full --out is refused
    assert main(["calibrate", "--checkpoint", str(recal / "model.pt"), "--val-dir", str(data / "normal"),
                 "--out", str(tmp_path / "recal2")]) == 0
    assert DADF.load(tmp_path / "recal2" / "model.pt").calibration["method"] == "f1-synthetic"
    assert main(["calibrate", "--checkpoint", str(out / "model.pt"), "--val-dir", str(data / "val"),
                 "--out", str(recal)]) == 2
    assert "already holds files" in capsys.readouterr().err
