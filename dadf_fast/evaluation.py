"""Evaluation on a labelled test set and prediction on image files."""
from __future__ import annotations

import json
import os
from collections import defaultdict

import numpy as np
import torch

from . import metrics
from ._io import atomic_write_text
from .data import collate, denormalize, load_rgb


@torch.no_grad()
def score_images(model, images: torch.Tensor, batch_size: int = 8, smooth_sigma: float | None = None,
                 device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Anomaly maps ``[N, 1, S, S]`` and scores ``[N]``: the model's own (its configured
    smoothing included), or, with ``smooth_sigma``, the raw maps smoothed by that sigma
    and the max of the result."""
    device = device or next(model.parameters()).device
    maps, scores = [], []
    for chunk in torch.split(images, batch_size):
        out = model.predict(chunk.to(device), smooth_sigma=smooth_sigma)
        maps.append(out["anomaly_map"].cpu())
        scores.append(out["score"].cpu())
    return torch.cat(maps), torch.cat(scores)


def evaluate(model, test_data, batch_size: int = 8, out_dir: str | None = None, category: str = "category",
             heatmaps: bool = True, tiff: bool = True, smooth_sigma: float | None = None, device=None,
             log=None, num_workers: int = 0) -> dict:
    """Metrics of ``model`` on a labelled test dataset (items with image, mask, label, defect, path).

    Returns a dict with ``image_auroc``, ``pixel_auroc``, ``aupro`` (when masks exist),
    ``spro`` (MVTec LOCO), ``per_defect`` image AUROC (each defect against the good images),
    ``n_images`` and ``skipped`` (unreadable test files left out).  With ``out_dir``: PNG
    overlays under ``<out>/heatmaps``, raw ``.tiff`` maps in the MVTec evaluation layout
    ``<out>/<category>/test/<defect>/<name>.tiff``, and ``<out>/metrics.json``.
    """
    from torch.utils.data import DataLoader

    loader = DataLoader(test_data, batch_size=batch_size, shuffle=False, collate_fn=collate, num_workers=num_workers)
    maps, scores, masks, labels, defects, paths, images, loco_masks, loco_sat = [], [], [], [], [], [], [], [], []
    for batch in loader:
        amap, score = score_images(model, batch["image"], batch_size, smooth_sigma, device)
        maps.append(amap[:, 0].numpy())
        scores.append(score.numpy())
        masks.append(batch["mask"][:, 0].numpy())
        labels += [int(v) for v in batch["label"]]
        defects += list(batch["defect"])
        paths += list(batch["path"])
        if out_dir and heatmaps:
            images.append(denormalize(batch["image"]))
        if "masks" in batch:
            loco_masks += [m.numpy() for m in batch["masks"]]
            loco_sat += [s.numpy() for s in batch["saturation"]]
    maps, scores, masks = np.concatenate(maps), np.concatenate(scores), np.concatenate(masks)
    labels = np.asarray(labels)
    result = {"n_images": int(len(labels)), "skipped": [str(p) for p in getattr(test_data, "skipped", [])]}
    known = labels >= 0
    if known.any() and len(set(labels[known].tolist())) == 2:
        result["image_auroc"] = metrics.auroc(scores[known], labels[known])
        result["per_defect"] = {}
        for d in sorted(set(defects)):
            sel = np.array([dd == d for dd in defects])
            if d == "good" or not sel.any():
                continue
            both = sel | (labels == 0)
            result["per_defect"][d] = metrics.auroc(scores[both], labels[both])
    if masks[known].any():
        result["pixel_auroc"] = metrics.pixel_auroc(maps[known], masks[known] > 0.5)
        result["aupro"] = metrics.aupro(maps[known], masks[known] > 0.5)
    if loco_masks and any(len(m) for m in loco_masks):
        per_img = [[mm > 0.5 for mm in m] for m in loco_masks]
        sat = [[float(v) for v in s] for s in loco_sat]
        if all(np.isfinite(v) for s in sat for v in s):
            result["spro"] = metrics.spro(maps, per_img, sat)
    if out_dir:
        vmin, vmax = float(np.percentile(maps, 1)), float(np.percentile(maps, 99.9))
        images = np.concatenate(images) if images else None
        for i, p in enumerate(paths):
            if tiff:
                from .viz import map_path, save_tiff

                save_tiff(map_path(out_dir, category, defects[i], p, "tiff"), maps[i])
            if heatmaps:
                from .viz import overlay_panel, save_png

                panel = overlay_panel(images[i], maps[i], masks[i] if labels[i] >= 0 else None, vmin, vmax)
                stem = os.path.splitext(os.path.basename(p))[0]
                save_png(os.path.join(out_dir, "heatmaps", defects[i], f"{stem}.png"), panel)
        atomic_write_text(os.path.join(out_dir, "metrics.json"), json.dumps(result, indent=2) + "\n")
    result["_scores"] = scores
    result["_labels"] = labels
    result["_defects"] = defects
    return result


def format_table(result: dict, title: str = "") -> str:
    """A short terminal table: overall metrics and image AUROC per defect type."""
    rows = [f"{title}" if title else ""]
    for key in ("image_auroc", "pixel_auroc", "aupro", "spro"):
        if key in result:
            rows.append(f"  {key:<12} {result[key]:.4f}")
    per = result.get("per_defect", {})
    if per:
        rows.append("  per defect (image AUROC vs good):")
        counts = defaultdict(int)
        for d in result.get("_defects", []):
            counts[d] += 1
        for d, v in per.items():
            rows.append(f"    {d:<18} {v:.4f}  ({counts.get(d, 0)} images)")
    if result.get("skipped"):
        rows.append(f"  skipped unreadable test images: {len(result['skipped'])}")
    return "\n".join(r for r in rows if r)


def public(result: dict) -> dict:
    """The result without the private arrays (for JSON / printing)."""
    return {k: v for k, v in result.items() if not k.startswith("_")}


@torch.no_grad()
def predict_files(model, paths, batch_size: int = 8, out_dir: str | None = None, smooth_sigma: float | None = None) -> list:
    """Score arbitrary image files.  Returns ``[{"path", "score"}]``; with ``out_dir`` also
    writes ``<stem>.png`` overlays and ``<stem>.tiff`` raw maps there."""
    from .data import IMAGENET_MEAN, IMAGENET_STD

    s = model.input_size
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    out = []
    for start in range(0, len(paths), batch_size):
        chunk = paths[start:start + batch_size]
        imgs = []
        for p in chunk:
            img = load_rgb(p).resize((s, s), resample=2)  # bilinear
            t = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
            imgs.append((t - mean) / std)
        batch = torch.stack(imgs)
        amap, score = score_images(model, batch, batch_size, smooth_sigma)
        for i, p in enumerate(chunk):
            out.append({"path": str(p), "score": float(score[i])})
            if out_dir:
                from .viz import overlay_panel, save_png, save_tiff

                stem = os.path.splitext(os.path.basename(p))[0]
                save_png(os.path.join(out_dir, f"{stem}.png"), overlay_panel(denormalize(batch[i]), amap[i, 0].numpy()))
                save_tiff(os.path.join(out_dir, f"{stem}.tiff"), amap[i, 0].numpy())
    return out
