"""From scores to decisions: calibrated image / pixel thresholds, and the verdicts they give.

A detector's ``anomaly_map`` and ``score`` are unbounded and their scale differs per
category and per training run.  A *calibration* turns them into decisions, with anomalib's
names:

* ``pred_score [B]``: the score min-max normalised on the calibration set, shifted so that
  the image threshold sits at 0.5, clipped to [0, 1]:
  ``clip((score - image_threshold) / (score_max - score_min) + 0.5, 0, 1)``;
* ``pred_label [B]`` (bool): ``score >= image_threshold``;
* ``pred_mask [B, 1, S, S]`` (bool): ``anomaly_map >= pixel_threshold``.

How the thresholds are chosen (:func:`calibrate_thresholds`), best evidence first:

1. ``"f1"``: labelled validation images with at least :data:`MIN_F1_IMAGES` normal and one
   anomalous image: the F1-optimal image threshold over their scores, and with masks the
   F1-optimal pixel threshold over their map pixels;
2. ``"f1-synthetic"``: normal images only (at least :data:`MIN_F1_IMAGES`): each gets
   :data:`SYNTHETIC_PER_IMAGE` synthetic defects (:func:`dadf_fast.data.defects.make_defect`,
   the eight types in turn) with exact masks, and the thresholds are F1-optimal on the
   normal images plus their defective copies;
3. ``"normal-quantile"`` (fewer images than that, the documented fallback): the
   :data:`NORMAL_QUANTILE` quantile of the normal images' scores; the pixel threshold is
   the same value (the score is the map's maximum, so a flagged image has a flagged pixel).

An F1-optimal threshold sits halfway between the lowest flagged and the highest unflagged
score (not on a sample), so the margin on either side of it is the same.  Where masks are
missing (labelled images without ground truth), the pixel threshold is the image threshold.

The result is a plain dict (floats, ints, strings: it is stored in the checkpoint as is);
:func:`verdicts` applies it with plain tensor ops, so the exported graph computes exactly
what ``predict`` does.
"""
from __future__ import annotations

import numpy as np
import torch

__all__ = ["CALIBRATION_FRACTION", "MIN_F1_IMAGES", "NORMAL_QUANTILE", "SYNTHETIC_PER_IMAGE", "SYNTHETIC_DEFECTS",
           "binary_counts", "calibrate_thresholds", "check_calibration", "f1_optimal_binned", "f1_optimal_threshold",
           "synthetic_defects", "verdicts", "VERDICT_KEYS"]

CALIBRATION_FRACTION = 0.2      # of the normal training images, held out by fit for the thresholds
MIN_F1_IMAGES = 4               # fewer normal images: the normal-quantile fallback
NORMAL_QUANTILE = 0.99
SYNTHETIC_PER_IMAGE = 1         # one defective copy per normal image: a balanced set, like anomalib's
SYNTHETIC_DEFECTS = ("scratch", "spot", "colour", "blur", "missing", "contamination", "crack", "patch")
VERDICT_KEYS = ("pred_score", "pred_label", "pred_mask")
_ENTRIES = {"image_threshold": float, "pixel_threshold": float, "score_min": float, "score_max": float,
            "method": str, "n_normal": int, "n_anomalous": int, "note": str}
METHODS = ("f1", "f1-synthetic", "normal-quantile")


def f1_optimal_threshold(scores, labels) -> dict:
    """The threshold on ``scores [N]`` that maximises F1 for the binary ``labels [N]`` (the
    positive class is 1; "flagged" means ``score >= threshold``).

    Returns ``{"threshold", "f1", "precision", "recall"}`` at that threshold.  The threshold is
    the midpoint between the lowest flagged and the highest unflagged score; among equally good
    cuts the one flagging fewest samples wins.  Works for millions of samples (pixels): one sort.
    """
    s = torch.as_tensor(scores).flatten().double()
    y = torch.as_tensor(labels).flatten().bool()
    if s.numel() != y.numel():
        raise ValueError(f"scores and labels differ in length ({s.numel()} vs {y.numel()})")
    positives = int(y.sum())
    if positives == 0 or positives == y.numel():
        raise ValueError("an F1-optimal threshold needs both classes among the labels")
    order = torch.argsort(s, descending=True, stable=True)
    s, y = s[order], y[order]
    tp = torch.cumsum(y.double(), 0)
    flagged = torch.arange(1, s.numel() + 1, dtype=torch.float64)
    # only cuts between distinct values are realisable by a threshold
    last_of_run = torch.ones_like(y)
    last_of_run[:-1] = s[:-1] != s[1:]
    f1 = torch.where(last_of_run, 2 * tp / (flagged + positives), torch.zeros_like(tp))
    k = int(torch.argmax(f1))  # first maximum: fewest flagged
    low_flagged = float(s[k])
    threshold = low_flagged if k + 1 == s.numel() else 0.5 * (low_flagged + float(s[k + 1]))
    return {"threshold": threshold, "f1": float(f1[k]), "precision": float(tp[k] / flagged[k]),
            "recall": float(tp[k] / positives)}


def f1_optimal_binned(maps, masks, bins: int = 4096) -> dict:
    """:func:`f1_optimal_threshold` over the pixels of ``maps`` and boolean ``masks`` (lists of
    equally shaped arrays, image by image), for test sets too large to sort (MVTec at full
    resolution: ~10^8 pixels): the candidate thresholds are ``bins`` equally spaced values
    between the smallest and the largest pixel, so the optimum is found to within
    ``(max - min) / bins``; the counts are exact for those candidates.
    Returns ``{"threshold", "f1", "precision", "recall"}``."""
    lo = min(float(np.min(m)) for m in maps)
    hi = max(float(np.max(m)) for m in maps)
    edges = np.linspace(lo, hi, bins + 1)[1:-1] if hi > lo else np.array([lo])
    pos = np.zeros(len(edges) + 1, np.int64)
    neg = np.zeros(len(edges) + 1, np.int64)
    for m, g in zip(maps, masks):
        idx = np.searchsorted(edges, np.asarray(m, np.float64).ravel(), side="right")
        g = np.asarray(g, bool).ravel()
        pos += np.bincount(idx[g], minlength=len(pos))
        neg += np.bincount(idx[~g], minlength=len(neg))
    positives = int(pos.sum())
    if positives == 0 or neg.sum() == 0:
        raise ValueError("an F1-optimal threshold needs both classes among the mask pixels")
    # flagged at candidate k (value >= edges[k]): every bin above k
    tp = np.cumsum(pos[::-1])[::-1][1:]
    fp = np.cumsum(neg[::-1])[::-1][1:]
    f1 = np.where(tp > 0, 2 * tp / np.maximum(tp + fp + positives, 1), 0.0)
    k = int(np.argmax(f1))
    return {"threshold": float(edges[k]), "f1": float(f1[k]), "precision": float(tp[k] / max(tp[k] + fp[k], 1)),
            "recall": float(tp[k] / positives)}


def binary_counts(pred, target) -> dict:
    """``{"f1", "precision", "recall"}`` of boolean predictions against boolean targets
    (precision of no flagged sample and recall of no positive are 0 by convention)."""
    p = torch.as_tensor(pred).flatten().bool()
    t = torch.as_tensor(target).flatten().bool()
    tp = int((p & t).sum())
    fp = int((p & ~t).sum())
    fn = int((~p & t).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
    return {"f1": f1, "precision": precision, "recall": recall}


def synthetic_defects(images: torch.Tensor, seed: int = 0, per_image: int = SYNTHETIC_PER_IMAGE,
                      return_sources: bool = False):
    """Defective copies of normal model-ready ``images [N, 3, S, S]`` (ImageNet-normalised):
    ``(defective [M, 3, S, S], masks [M, S, S] bool)``, ``per_image`` per image, the types of
    :data:`SYNTHETIC_DEFECTS` in turn (``patch`` material from a bundled photo).  An image too
    flat for a type gets the next type instead.  ``return_sources``: also ``sources [M]``, the
    index of the image each copy was made from."""
    from dadf_fast.data.defects import make_defect
    from dadf_fast.data.synthetic import load_source
    from dadf_fast.data.transforms import denormalize, normalize

    rng = np.random.default_rng(seed + 12345)
    foreign = load_source("chelsea")
    out, masks, sources, k = [], [], [], 0
    for i, img in enumerate(images):
        clean = denormalize(img.detach().float().cpu())
        for _ in range(per_image):
            for _attempt in range(len(SYNTHETIC_DEFECTS)):
                kind = SYNTHETIC_DEFECTS[k % len(SYNTHETIC_DEFECTS)]
                k += 1
                try:
                    bad, mask = make_defect(clean, kind, rng, foreign=foreign)
                    break
                except ValueError:  # too flat for a texture-changing type
                    continue
            else:  # pragma: no cover - scratch and spot draw on any image
                continue
            out.append(normalize(torch.from_numpy(bad).permute(2, 0, 1).float() / 255))
            masks.append(torch.from_numpy(mask))
            sources.append(i)
    got = torch.stack(out).to(images.device, images.dtype), torch.stack(masks)
    return (*got, torch.tensor(sources)) if return_sources else got


def _model_predict(model, batch_size):
    def predict(images, sources):
        out = model.predict(images, batch_size=batch_size)
        return out["score"].detach().float().cpu(), out["anomaly_map"].detach().float().cpu()
    return predict


def calibrate_thresholds(model, images: torch.Tensor, labels=None, masks=None, seed: int = 0,
                         batch_size: int = 8, log=None, predict=None) -> dict:
    """Choose the image and pixel thresholds of ``model`` (anything with ``predict`` returning
    ``anomaly_map [B,1,S,S]`` and ``score [B]``) on calibration ``images [N, 3, S, S]``
    (model-ready, on the model's device), following the module's rules.

    Args:
        labels: ``[N]`` 0 (normal) / 1 (anomalous); None: all normal.
        masks: ``[N, S, S]`` (or ``[N, 1, S, S]``) ground truth of the anomalous images; None:
            no pixel ground truth.
        seed: the synthetic defects' seed.
        predict: ``(images [M, 3, S, S], sources [M]) -> (score [M], anomaly_map [M, 1, S, S])``
            (float32, CPU), where ``sources[m]`` is the calibration image that ``images[m]`` is or
            was made from; None: ``model.predict``.  (``fit`` scores its held-out images, whose
            patches are in the kNN memory, each without its own patches:
            :func:`dadf_fast.models.cues.predict_leaving_self_out`.)
    Returns the calibration dict (:data:`_ENTRIES`); ``log`` receives one line saying which
    method was used and, for a fallback, why.
    """
    log = log or (lambda *_: None)
    predict = predict or _model_predict(model, batch_size)
    n = int(images.shape[0]) if isinstance(images, torch.Tensor) and images.dim() == 4 else 0
    if n == 0:
        raise ValueError("calibration needs at least one image [N, 3, S, S], got none")
    if labels is None:
        labels = torch.zeros(n, dtype=torch.long)
    labels = torch.as_tensor(labels).flatten().cpu()
    if labels.numel() != n or not bool(((labels == 0) | (labels == 1)).all()):
        raise ValueError(f"labels must be {n} values, 0 (normal) or 1 (anomalous), got {labels.tolist()!r}")
    labels = labels.bool()
    if masks is not None:
        masks = torch.as_tensor(masks).cpu().bool().reshape(n, -1)
        if masks.shape[1] != images.shape[-1] * images.shape[-2]:
            raise ValueError(f"masks must be [{n}, {images.shape[-2]}, {images.shape[-1]}], got {tuple(masks.shape)}")
        if bool(masks[~labels].any()):
            raise ValueError("masks mark defective pixels in an image labelled normal (label 0)")
    n_normal, n_anom = int((~labels).sum()), int(labels.sum())
    note = ""
    if n_anom and n_normal >= MIN_F1_IMAGES:
        method = "f1"
        scores, maps = predict(images, torch.arange(n))
        if masks is None:
            note = "no pixel ground truth: the pixel threshold is the image threshold"
    elif n_normal >= MIN_F1_IMAGES:
        method = "f1-synthetic"
        if n_anom:
            note = f"{n_anom} labelled anomalous image(s) set aside: F1 needs {MIN_F1_IMAGES} normal ones"
        normal = images[~labels.to(images.device)]
        defective, dmasks, sources = synthetic_defects(normal, seed=seed, return_sources=True)
        normal_idx = torch.nonzero(~labels).flatten()
        sources = torch.cat((normal_idx, normal_idx[sources]))
        scores, maps = predict(torch.cat((normal, defective)), sources)
        labels = torch.cat((torch.zeros(n_normal, dtype=torch.bool), torch.ones(len(defective), dtype=torch.bool)))
        masks = torch.cat((torch.zeros(n_normal, dmasks[0].numel(), dtype=torch.bool), dmasks.reshape(len(dmasks), -1)))
        n_anom = len(defective)
    else:
        method = "normal-quantile"
        if n_normal == 0:
            raise ValueError("calibration needs normal images (label 0): all images are labelled anomalous")
        note = (f"{n_normal} normal image(s): fewer than the {MIN_F1_IMAGES} an F1 threshold needs; "
                f"thresholds at the normal scores' {NORMAL_QUANTILE} quantile")
        scores, maps = predict(images, torch.arange(n))
    if method == "normal-quantile":
        image_thr = float(torch.quantile(scores[~labels].double(), NORMAL_QUANTILE))
        pixel_thr = image_thr
    else:
        image_thr = f1_optimal_threshold(scores, labels)["threshold"]
        if masks is None:
            pixel_thr = image_thr
        else:
            pixel_thr = f1_optimal_threshold(maps.flatten(1), masks)["threshold"]
    calib = {"image_threshold": image_thr, "pixel_threshold": pixel_thr, "score_min": float(scores.min()),
             "score_max": float(scores.max()), "method": method, "n_normal": n_normal, "n_anomalous": n_anom,
             "note": note}
    log(f"calibration: {method} on {n_normal} normal and {n_anom} anomalous image(s): image threshold "
        f"{image_thr:.5g}, pixel threshold {pixel_thr:.5g}" + (f" ({note})" if note else ""))
    return check_calibration(calib)


def check_calibration(calib, where: str = "calibration") -> dict:
    """``calib`` checked to hold every entry of a calibration (finite numbers, a known method)."""
    if not isinstance(calib, dict):
        raise ValueError(f"{where} must be a dict of thresholds, got {type(calib).__name__}")
    missing = [k for k in _ENTRIES if k not in calib]
    if missing:
        raise ValueError(f"{where} lacks {missing}")
    out = {}
    for key, kind in _ENTRIES.items():
        val = calib[key]
        if kind is float:
            if isinstance(val, bool) or not isinstance(val, (int, float)) or not np.isfinite(val):
                raise ValueError(f"{where}[{key!r}] must be a finite number, got {val!r}")
        elif not isinstance(val, kind) or isinstance(val, bool):
            raise ValueError(f"{where}[{key!r}] must be a {kind.__name__}, got {val!r}")
        out[key] = kind(val)
    if out["method"] not in METHODS:
        raise ValueError(f"{where}['method'] must be one of {METHODS}, got {out['method']!r}")
    return out


def verdicts(anomaly_map: torch.Tensor, score: torch.Tensor, calib: dict) -> dict:
    """``{"pred_score" [B], "pred_label" [B] bool, "pred_mask" [B, 1, S, S] bool}`` of a
    detector's output under calibration ``calib`` (plain tensor ops: exportable)."""
    span = max(calib["score_max"] - calib["score_min"], 1e-12)
    pred_score = ((score - calib["image_threshold"]) / span + 0.5).clamp(0.0, 1.0)
    return {"pred_score": pred_score, "pred_label": score >= calib["image_threshold"],
            "pred_mask": anomaly_map >= calib["pixel_threshold"]}
