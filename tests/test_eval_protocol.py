"""The official evaluation protocols: maps and metrics at each image's original size, the MVTec
LOCO AD headline (AU-sPRO per defect type with the good images, and their mean), and output
names that never collide.

The reference below re-implements the official MVTec LOCO AD evaluation independently and
by brute force, as it is publicly described: it reads the written .tiff maps (asserting, as the
official script does, that each has its ground truth's size), reads the ground-truth files and
``defects_config.json`` itself, and for every threshold computes each region's
``min(1, hits / saturation)`` with ``saturation = min(t, area)`` (absolute) or ``int(t * area)``
(relative), the FPR over the pixels outside every region of the images involved, then
integrates the curve with the trapezoid rule up to FPR 0.05 and divides by 0.05. The images
(40x56) are not the model's input size (32), so the resolution matters.
"""
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from dadf_fast import data as D
from dadf_fast.engine.evaluation import evaluate, format_table

H0, W0, S = 40, 56, 32
LIMIT = 0.05
CONFIG = [
    {"defect_name": "missing", "pixel_value": 255, "saturation_threshold": 40, "relative_saturation": False},
    {"defect_name": "colour", "pixel_value": 254, "saturation_threshold": 0.45, "relative_saturation": True},
    {"defect_name": "extra", "pixel_value": 253, "saturation_threshold": 3, "relative_saturation": False},
    {"defect_name": "shape", "pixel_value": 252, "saturation_threshold": 1.0, "relative_saturation": True},
]


class QueueModel(torch.nn.Module):
    """Stands in for a detector: returns the given ``[S, S]`` maps in call order (the
    evaluation reads the dataset in order) and their max as the image score."""

    def __init__(self, maps):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.maps = [torch.as_tensor(m, dtype=torch.float32) for m in maps]
        self.input_size = S

    def predict(self, images, smooth_sigma=None):
        out = torch.stack(self.maps[:len(images)])[:, None]
        del self.maps[:len(images)]
        return {"anomaly_map": out, "score": out.flatten(1).amax(1)}


def _save(path: Path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def _rect(rng, h=H0, w=W0):
    m = np.zeros((h, w), bool)
    y, x = rng.integers(0, h - 6), rng.integers(0, w - 8)
    # at least 4 pixels: int(0.45 * area) >= 1 (the official code divides by a zero area)
    m[y:y + rng.integers(2, 6), x:x + rng.integers(2, 8)] = True
    return m


def _make_loco(root: Path, seed: int) -> Path:
    """good/ (3), logical_anomalies/ (2), structural_anomalies/ (2); each anomalous image has
    1-3 masks of random defects (small and large regions, so both saturation rules bite)."""
    rng = np.random.default_rng(seed)
    cat = root / "box"
    img = np.zeros((H0, W0, 3), np.uint8)
    for split in ("train", "validation"):
        _save(cat / split / "good" / "000.png", img)
    for i in range(3):
        _save(cat / "test" / "good" / f"{i:03d}.png", img)
    for dtype in ("logical_anomalies", "structural_anomalies"):
        for i in range(2):
            _save(cat / "test" / dtype / f"{i:03d}.png", img)
            for j in range(int(rng.integers(1, 4))):
                entry = CONFIG[int(rng.integers(0, len(CONFIG)))]
                _save(cat / "ground_truth" / dtype / f"{i:03d}" / f"{j:03d}.png",
                      (_rect(rng) * entry["pixel_value"]).astype(np.uint8))
    (cat / "defects_config.json").write_text(json.dumps(CONFIG))
    return root


def _random_maps(rng, n):
    maps = rng.random((n, S, S)).astype(np.float32)
    maps[:, 8:20, 10:30] += 0.4   # some structure, so that regions get found at low FPR
    return maps


# ------------------------------------------------------------------ independent reference

def _official_auc_spro(images, limit=LIMIT):
    """images: list of (map float64 [H, W], [(region bool [H, W], saturation area)])."""
    normal = np.concatenate([m[~np.any([r for r, _ in ch], axis=0)] if ch else m.ravel()
                             for m, ch in images])
    regions = [(m[r], s) for m, ch in images for r, s in ch]
    points = [(0.0, 0.0)]
    for t in np.unique(np.concatenate([m.ravel() for m, _ in images]))[::-1]:
        fpr = np.count_nonzero(normal >= t) / normal.size
        spro = np.mean([min(1.0, np.count_nonzero(px >= t) / s) for px, s in regions])
        points.append((fpr, spro))
        if fpr > limit:
            break
    area = 0.0
    for (x0, y0), (x1, y1) in zip(points[:-1], points[1:]):
        if x1 <= limit:
            area += (x1 - x0) * (y0 + y1) / 2
        else:
            area += (limit - x0) * (y0 + y0 + (y1 - y0) * (limit - x0) / (x1 - x0)) / 2
            break
    return area / limit


def _official_saturation(region, entry):
    area = int(region.sum())
    t = entry["saturation_threshold"]
    return int(t * area) if entry["relative_saturation"] else min(t, area)


def _read_official(cat: Path, out: Path, dtype: str):
    """What the official script reads for one defect type: good + that type's images."""
    by_value = {e["pixel_value"]: e for e in json.loads((cat / "defects_config.json").read_text())}
    images = []
    for sub in ("good", dtype):
        for img in sorted((cat / "test" / sub).glob("*.png")):
            amap = tifffile.imread(out / "box" / "test" / sub / f"{img.stem}.tiff").astype(np.float64)
            channels = []
            gt = cat / "ground_truth" / sub / img.stem
            for f in sorted(gt.glob("*.png")) if gt.is_dir() else []:
                arr = np.asarray(Image.open(f))
                assert arr.shape == amap.shape, "the official script's size check"
                channels.append((arr > 0, _official_saturation(arr > 0, by_value[int(arr.max())])))
            images.append((amap, channels))
    return images


def _pairwise_auroc(pos, neg):
    return float(np.mean([1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg]))


def _bilinear(m, h, w):
    """align_corners=False bilinear resize, written out."""
    def axis(n_out, n_in):
        src = np.maximum((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0.0)
        i0 = np.minimum(np.floor(src).astype(int), n_in - 1)
        return i0, np.minimum(i0 + 1, n_in - 1), src - i0
    y0, y1, wy = axis(h, m.shape[0])
    x0, x1, wx = axis(w, m.shape[1])
    m = m.astype(np.float64)
    top = m[y0][:, x0] * (1 - wx) + m[y0][:, x1] * wx
    bottom = m[y1][:, x0] * (1 - wx) + m[y1][:, x1] * wx
    return top * (1 - wy[:, None]) + bottom * wy[:, None]


# ------------------------------------------------------------------ tests

@pytest.mark.parametrize("seed", [0, 1])
def test_loco_spro_per_defect_type_equals_the_official_algorithm(tmp_path, seed):
    root = _make_loco(tmp_path / "loco", seed)
    test = D.MVTecLOCO(root, "box", "test", image_size=S)
    maps = _random_maps(np.random.default_rng(100 + seed), len(test))
    out = tmp_path / "out"
    res = evaluate(QueueModel(maps), test, batch_size=3, out_dir=str(out), category="box", heatmaps=False)

    # the maps are written at each image's original size, bilinearly upsampled
    for i, p in enumerate(test.paths):
        tif = tifffile.imread(out / "box" / "test" / test.records[i].defect / f"{Path(p).stem}.tiff")
        assert tif.shape == (H0, W0) and tif.dtype == np.float32
        np.testing.assert_allclose(tif, _bilinear(maps[i], H0, W0), atol=1e-5)

    cat = root / "box"
    ref = {d: _official_auc_spro(_read_official(cat, out, d))
           for d in ("logical_anomalies", "structural_anomalies")}
    assert res["resolution"] == "original"
    assert set(res["spro_per_defect"]) == set(ref)
    for d, v in ref.items():
        assert res["spro_per_defect"][d] == pytest.approx(v, abs=1e-12), d
    assert res["spro"] == pytest.approx(np.mean(list(ref.values())), abs=1e-12)

    # image AUROC per defect type (against the good images) and their mean
    scores = maps.reshape(len(maps), -1).max(1)
    defects = np.array([r.defect for r in test.records])
    good = scores[defects == "good"]
    per = {d: _pairwise_auroc(scores[defects == d], good) for d in ref}
    assert res["per_defect"] == pytest.approx(per, abs=1e-12)
    assert res["image_auroc_mean"] == pytest.approx(np.mean(list(per.values())), abs=1e-12)

    saved = json.loads((out / "metrics.json").read_text())
    assert saved["spro_per_defect"] == res["spro_per_defect"] and saved["resolution"] == "original"
    table = format_table(res)
    assert "logical_anomalies" in table and f"sPRO {res['spro_per_defect']['logical_anomalies']:.4f}" in table


def test_loco_spro_at_the_input_resolution(tmp_path):
    root = _make_loco(tmp_path / "loco", 2)
    test = D.MVTecLOCO(root, "box", "test", image_size=S)
    maps = _random_maps(np.random.default_rng(7), len(test))
    out = tmp_path / "out"
    res = evaluate(QueueModel(maps), test, out_dir=str(out), category="box", heatmaps=False,
                   resolution="input")
    assert res["resolution"] == "input"
    assert json.loads((out / "metrics.json").read_text())["resolution"] == "input"
    assert tifffile.imread(next((out / "box" / "test").rglob("*.tiff"))).shape == (S, S)
    # documented rule: the official area (full-size mask) times the pixel ratio, capped at the
    # area of the resized mask; a region that vanishes in the resize is left out
    by_value = {e["pixel_value"]: e for e in CONFIG}
    for d in ("logical_anomalies", "structural_anomalies"):
        images = []
        for i, rec in enumerate(test.records):
            if rec.defect not in ("good", d):
                continue
            channels = []
            for f in rec.mask_paths:
                full = np.asarray(Image.open(f))
                small = np.asarray(Image.fromarray(full).resize((S, S), Image.NEAREST)) > 0
                if small.any():
                    sat = _official_saturation(full > 0, by_value[int(full.max())]) * S * S / (H0 * W0)
                    channels.append((small, min(sat, small.sum())))
            images.append((maps[i].astype(np.float64), channels))
        assert res["spro_per_defect"][d] == pytest.approx(_official_auc_spro(images), abs=1e-6), d
    with pytest.raises(ValueError, match="resolution must be 'original' or 'input', got 'full'"):
        evaluate(QueueModel(maps), test, resolution="full")


def test_mvtec_metrics_and_maps_at_original_size(tmp_path):
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(5)
    cat = tmp_path / "mvtec" / "widget"
    img = np.zeros((H0, W0, 3), np.uint8)
    _save(cat / "train/good/000.png", img)
    for i in range(2):
        _save(cat / f"test/good/{i:03d}.png", img)
        _save(cat / f"test/crack/{i:03d}.png", img)
        mask = _rect(rng) | _rect(rng)
        _save(cat / f"ground_truth/crack/{i:03d}_mask.png", (mask * 255).astype(np.uint8))
    test = D.MVTecAD(tmp_path / "mvtec", "widget", "test", image_size=S)
    maps = _random_maps(rng, len(test))
    out = tmp_path / "out"
    res = evaluate(QueueModel(maps), test, out_dir=str(out), category="widget")
    full_maps, full_masks = [], []
    for rec in test.records:
        full_maps.append(tifffile.imread(out / "widget" / "test" / rec.defect / f"{rec.path.stem}.tiff"))
        m = np.zeros((H0, W0), bool)
        for f in rec.mask_paths:
            m |= np.asarray(Image.open(f)) > 0
        full_masks.append(m)
    assert all(m.shape == (H0, W0) for m in full_maps)
    flat = np.concatenate([m.ravel() for m in full_maps])
    assert res["pixel_auroc"] == pytest.approx(
        roc_auc_score(np.concatenate([g.ravel() for g in full_masks]), flat), abs=1e-12)
    from dadf_fast.metrics import aupro

    assert res["aupro"] == pytest.approx(aupro(np.stack(full_maps), np.stack(full_masks)), abs=1e-12)
    assert len(list((out / "heatmaps").rglob("*.png"))) == len(test)


def test_outputs_of_images_sharing_a_stem_do_not_collide(tmp_path):
    folder = tmp_path / "imgs"
    for name in ("a.png", "a.jpg", "b.png"):
        _save(folder / name, np.zeros((H0, W0, 3), np.uint8))
    test = D.FolderDataset(test_dir=folder, split="test", image_size=S)
    assert [Path(p).name for p in test.paths] == ["a.jpg", "a.png", "b.png"]
    maps = _random_maps(np.random.default_rng(3), 3)
    out = tmp_path / "out"
    res = evaluate(QueueModel(maps), test, out_dir=str(out), category="folder")
    assert res["n_images"] == 3
    tiffs = sorted(p.name for p in (out / "folder" / "test" / "unknown").iterdir())
    assert tiffs == ["a_jpg.tiff", "a_png.tiff", "b.tiff"]
    assert sorted(p.name for p in (out / "heatmaps" / "unknown").iterdir()) == ["a_jpg.png", "a_png.png", "b.png"]
    for stem, m in zip(["a_jpg", "a_png", "b"], maps):
        np.testing.assert_allclose(tifffile.imread(out / "folder" / "test" / "unknown" / f"{stem}.tiff"),
                                   _bilinear(m, H0, W0), atol=1e-5)


def test_original_resolution_needs_full_size_ground_truth():
    class Plain(torch.utils.data.Dataset):
        def __len__(self):
            return 1

        def __getitem__(self, i):
            return {"image": torch.zeros(3, S, S), "mask": torch.zeros(1, S, S), "label": 0,
                    "defect": "good", "path": "x.png"}

    with pytest.raises(TypeError, match=r"ground_truth\(index\).*Plain.*resolution='input'"):
        evaluate(QueueModel(np.zeros((1, S, S))), Plain())
    res = evaluate(QueueModel(np.zeros((1, S, S))), Plain(), resolution="input")
    assert res["n_images"] == 1 and res["resolution"] == "input"


def test_cli_test_passes_resolution(monkeypatch, tmp_path):
    from dadf_fast.cli import commands as cli
    from dadf_fast.engine import evaluation

    folder = tmp_path / "imgs"
    _save(folder / "a.png", np.zeros((H0, W0, 3), np.uint8))
    seen = {}

    def fake_evaluate(model, test, **kw):
        seen.update(kw)
        return {"n_images": len(test), "skipped": []}

    monkeypatch.setattr(cli, "_load", lambda args: QueueModel([]))
    monkeypatch.setattr(evaluation, "evaluate", fake_evaluate)
    assert cli.main(["test", "--checkpoint", "m.pt", "--test-dir", str(folder), "--resolution", "input"]) == 0
    assert seen["resolution"] == "input"
    assert cli.main(["test", "--checkpoint", "m.pt", "--test-dir", str(folder)]) == 0
    assert seen["resolution"] == "original"
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["test", "--checkpoint", "m.pt", "--resolution", "full"])


def _tiny_mvtec(root: Path, rng, mask_shape=(H0, W0)) -> Path:
    cat = root / "widget"
    img = np.zeros((H0, W0, 3), np.uint8)
    _save(cat / "train/good/000.png", img)
    _save(cat / "test/good/000.png", img)
    _save(cat / "test/crack/000.png", img)
    mask = np.zeros(mask_shape, bool)
    mask[2:9, 3:11] = True
    _save(cat / "ground_truth/crack/000_mask.png", (mask * 255).astype(np.uint8))
    return cat


def test_evaluate_out_dir_follows_the_output_rules(tmp_path):
    from dadf_fast.utils.io import OutputPathError

    rng = np.random.default_rng(7)
    _tiny_mvtec(tmp_path / "mvtec", rng)
    test = D.MVTecAD(tmp_path / "mvtec", "widget", "test", image_size=S)
    out = tmp_path / "out"
    evaluate(QueueModel(_random_maps(rng, 2)), test, out_dir=str(out), category="widget")
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    # an earlier evaluation is not replaced without overwrite ...
    with pytest.raises(OutputPathError, match="already holds files"):
        evaluate(QueueModel(_random_maps(rng, 2)), test, out_dir=str(out), category="widget")
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    # ... and with overwrite it is
    evaluate(QueueModel(_random_maps(rng, 2)), test, out_dir=str(out), category="widget", overwrite=True)
    assert (out / "metrics.json").read_bytes() != before[out / "metrics.json"]
    # maps are never written among the test images (the next run would take them for images)
    n_files = len(list((tmp_path / "mvtec").rglob("*")))
    with pytest.raises(OutputPathError, match="holds test images"):
        evaluate(QueueModel(_random_maps(rng, 2)), test, out_dir=str(tmp_path / "mvtec"), category="widget",
                 overwrite=True)
    assert len(list((tmp_path / "mvtec").rglob("*"))) == n_files


def test_a_mask_of_another_size_is_reported_before_any_scoring(tmp_path):
    rng = np.random.default_rng(8)
    _tiny_mvtec(tmp_path / "mvtec", rng, mask_shape=(H0 // 2, W0))
    test = D.MVTecAD(tmp_path / "mvtec", "widget", "test", image_size=S)

    class NeverScores(QueueModel):
        def predict(self, *a, **k):
            raise AssertionError("scored before the ground truth was checked")

    with pytest.raises(ValueError, match=r"000_mask\.png.*resolution='input'"):
        evaluate(NeverScores(np.zeros((2, S, S))), test)
    # at the input size the mask is resized like the image and the evaluation runs
    res = evaluate(QueueModel(_random_maps(rng, 2)), test, resolution="input")
    assert res["n_images"] == 2 and "pixel_auroc" in res
