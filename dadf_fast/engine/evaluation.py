"""Evaluation on a labelled test set and prediction on image files."""
from __future__ import annotations

import json
import os
from collections import defaultdict

import numpy as np
import torch

from dadf_fast import metrics
from dadf_fast.utils.io import atomic_write_text
from dadf_fast.data import collate, denormalize, load_image


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


RESOLUTIONS = ("original", "input")


def _upsample(amap: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """``[S, S]`` map -> float32 ``[H, W]``, bilinear with align_corners=False (how the
    official MVTec scripts bring a model's map to the ground truth's size)."""
    if tuple(amap.shape) == tuple(size):
        return amap.numpy()
    up = torch.nn.functional.interpolate(amap[None, None].float(), size=tuple(size), mode="bilinear",
                                         align_corners=False)
    return up[0, 0].numpy()


def _output_stems(paths: list, defects: list) -> list:
    """One collision-free file stem per image, unique inside each output folder (one per
    defect): MVTec stems are unique there already and stay as they are."""
    from dadf_fast.utils.io import unique_output_stems

    stems = [None] * len(paths)
    for d in sorted(set(defects)):
        idx = [i for i, dd in enumerate(defects) if dd == d]
        for i, stem in zip(idx, unique_output_stems([paths[i] for i in idx])):
            stems[i] = stem
    return stems


def _spro_per_defect(maps, defects, loco_masks, loco_sat, result, warn) -> None:
    """MVTec LOCO's headline: AU-sPRO of each defect type together with the good images,
    and their mean (``result["spro_per_defect"]``, ``result["spro"]``)."""
    if not all(np.isfinite(s).all() for s in loco_sat):
        result["notes"].append("spro not computed: the category has no defects_config.json "
                               "(saturation thresholds unknown)")
        return
    good = [i for i, d in enumerate(defects) if d == "good"]
    per = {}
    for d in sorted(set(defects) - {"good"}):
        idx = good + [i for i, dd in enumerate(defects) if dd == d]
        ms = [[m for m in loco_masks[i] if m.any()] for i in idx]
        ss = [[s for m, s in zip(loco_masks[i], loco_sat[i]) if m.any()] for i in idx]
        dropped = sum(len(loco_masks[i]) for i in idx) - sum(len(m) for m in ms)
        if dropped:
            # only at resolution="input": a region smaller than a pixel of the resized grid
            result["regions_dropped"][d] = dropped
            warn(f"{dropped} ground truth region(s) of {d!r} vanish at the input size and are "
                 f"left out of its sPRO; resolution='original' keeps every region")
        if not any(ms):
            result["notes"].append(f"spro of {d!r} not computed: no ground truth region")
            continue
        per[d] = metrics.spro([maps[i] for i in idx], ms, ss, fpr_limit=SPRO_FPR_LIMIT)
    if per:
        result["spro_per_defect"] = per
        result["spro"] = float(np.mean(list(per.values())))


SPRO_FPR_LIMIT = 0.05
AUPRO_FPR_LIMIT = 0.3


def evaluate(model, test_data, batch_size: int = 8, out_dir: str | None = None, category: str = "category",
             heatmaps: bool = True, tiff: bool = True, smooth_sigma: float | None = None, device=None,
             log=None, num_workers: int = 0, resolution: str = "original", overwrite: bool = False,
             distributed: bool | None = None) -> dict | None:
    """Metrics of ``model`` on a labelled test dataset (items with image, mask, label, defect, path).

    Args:
        resolution: ``"original"`` (default, the official protocol): each ``[S, S]`` map is
            upsampled (bilinear, align_corners=False) to its image's original ``H x W`` and
            compared with the ground truth read at full size (``test_data.ground_truth(i)``,
            which the package's datasets provide); LOCO saturation areas come from the
            full-size masks, exactly the official rule. ``"input"``: maps and masks at the
            model's input size (masks resized with nearest neighbour; a LOCO saturation area
            is the official one scaled by the pixel-count ratio and capped at the resized
            region's area; a region that vanishes in the resize is left out, with a warning
            and a count in ``regions_dropped``).

    Returns a dict with ``image_auroc``, ``pixel_auroc``, ``aupro`` (when masks exist),
    ``per_defect`` image AUROC (each defect against the good images), ``n_images``,
    ``skipped`` (unreadable test files left out), ``resolution`` and ``notes``. MVTec LOCO
    adds the official headline: ``spro_per_defect`` (AU-sPRO up to FPR 0.05 of each defect
    type with the good images), ``spro`` (their mean) and ``image_auroc_mean`` (the mean of
    ``per_defect``). With ``out_dir``: PNG overlays (input size) under
    ``<out>/heatmaps/<defect>/``, raw float32 ``.tiff`` maps at the evaluation resolution in
    the MVTec layout ``<out>/<category>/test/<defect>/<name>.tiff`` (names made unique inside
    each folder: ``a.png`` and ``a.jpg`` give ``a_png``/``a_jpg``), and ``<out>/metrics.json``.
    ``out_dir`` follows the package's output rules (docs/usage.md), checked before any scoring:
    it must be new or empty unless ``overwrite``, it is locked for the run, and no output
    folder may be one that holds the test images (the next run would take the maps for
    test images).

    ``distributed``: inside a ``torchrun`` launch (``None``: when ``torch.distributed`` is
    initialised with 2+ processes), each rank scores its contiguous share of the batches (the
    batches of one process) and rank 0 gathers them, computes the metrics, writes every output
    and returns the result; the other ranks return None. The metrics equal one process's to
    the bit when every process runs as many threads as that process did (the CPU kernels'
    rounding depends on the thread count).
    """
    import contextlib

    from dadf_fast.utils.distributed import all_ranks, resolve
    from dadf_fast.utils.io import prepare_output_dir

    if resolution not in RESOLUTIONS:
        raise ValueError(f"resolution must be 'original' or 'input', got {resolution!r}")
    ranks = resolve(distributed)
    with contextlib.ExitStack() as stack:
        def prepare():  # rank 0 alone checks, locks and writes out_dir
            if out_dir and ranks[0] == 0:
                stack.enter_context(prepare_output_dir(out_dir, overwrite=overwrite, what="out_dir"))
                _refuse_output_among_inputs(out_dir, category, test_data)

        all_ranks(prepare, "checking out_dir") if ranks[1] > 1 else prepare()
        return _evaluate(model, test_data, batch_size, out_dir, category, heatmaps, tiff, smooth_sigma, device,
                         log, num_workers, resolution, ranks)


def _refuse_output_among_inputs(out_dir, category: str, test_data) -> None:
    """Raise when a folder ``evaluate`` writes into holds test images of ``test_data``."""
    from dadf_fast.utils.io import OutputPathError

    records = getattr(test_data, "records", None)
    if not records:
        return
    input_dirs = {os.path.realpath(os.path.dirname(str(r.path))) for r in records}
    for d in sorted({r.defect for r in records}):
        for target in (os.path.join(out_dir, category, "test", d), os.path.join(out_dir, "heatmaps", d)):
            if os.path.realpath(target) in input_dirs:
                raise OutputPathError(f"out_dir {out_dir} would put maps into {target}, which holds test "
                                      f"images; choose an output folder apart from the dataset")


def _evaluate(model, test_data, batch_size, out_dir, category, heatmaps, tiff, smooth_sigma, device, log,
              num_workers, resolution, ranks=(0, 1)) -> dict | None:
    import warnings

    from dadf_fast.utils.distributed import all_ranks

    if resolution == "original" and not callable(getattr(test_data, "ground_truth", None)):
        raise TypeError(f"resolution='original' reads the ground truth at full size through "
                        f"test_data.ground_truth(index), which {type(test_data).__name__} lacks "
                        f"(MVTecAD, MVTecLOCO and FolderDataset have it); pass resolution='input'")

    def warn(msg):
        warnings.warn(msg, stacklevel=3)
        if log is not None:
            log(msg)

    def read_ground_truth():
        # read (and so check) every full-size ground truth before the first image is scored
        # (rank 0 alone: it computes the metrics)
        if resolution != "original" or ranks[0] != 0:
            return None
        gts = []
        for i in range(len(test_data)):
            try:
                gts.append(test_data.ground_truth(i))
            except ValueError as err:
                raise type(err)(f"{err} (metrics at the model's input size need no full-size ground "
                                f"truth: resolution='input', --resolution input)") from None
        return gts

    gts = all_ranks(read_ground_truth, "reading the ground truth") if ranks[1] > 1 else read_ground_truth()
    # maps/masks at the evaluation resolution (float32 / bool, one array per image, sizes may
    # differ); maps_in/masks_in at the input size, for the overlays
    maps, masks, maps_in, masks_in = [], [], [], []
    scores, labels, defects, paths, images, loco_masks, loco_sat = [], [], [], [], [], [], []
    loco = False
    for item in _scored_items(model, test_data, batch_size, smooth_sigma, device, num_workers,
                              bool(out_dir and heatmaps), resolution, ranks):
        scores.append(item["score"])
        labels.append(item["label"])
        defects.append(item["defect"])
        paths.append(item["path"])
        loco = loco or item["loco"]
        if "image" in item:
            images.append(item["image"])
        maps_in.append(item["map"])
        masks_in.append(item["mask"])
        if resolution == "original":
            gt = gts[len(maps)]
            maps.append(_upsample(torch.from_numpy(item["map"]), gt["size"]))
            masks.append(gt["mask"])
            if "masks" in gt:
                loco_masks.append(list(gt["masks"]))
                loco_sat.append(np.asarray(gt["saturation"], dtype=np.float64))
        else:
            maps.append(item["map"])
            masks.append(item["mask"])
            if "loco_masks" in item:
                loco_masks.append(item["loco_masks"])
                loco_sat.append(item["saturation"])
    if ranks[0] != 0:
        return None
    scores = np.array(scores)
    labels = np.asarray(labels)
    result = {"n_images": int(len(labels)), "skipped": [str(p) for p in getattr(test_data, "skipped", [])],
              "resolution": resolution, "notes": [], "regions_dropped": {}}
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
        if loco and result["per_defect"]:
            result["image_auroc_mean"] = float(np.mean(list(result["per_defect"].values())))
    kept = np.flatnonzero(known)
    if any(masks[i].any() for i in kept):
        km, kg = [maps[i] for i in kept], [masks[i] for i in kept]
        result["pixel_auroc"] = metrics.pixel_auroc(km, kg)
        result["aupro"] = metrics.aupro(km, kg, fpr_limit=AUPRO_FPR_LIMIT)
    if loco and any(len(m) for m in loco_masks):
        _spro_per_defect(maps, defects, loco_masks, loco_sat, result, warn)
    _decisions(model, smooth_sigma, scores[kept], labels[kept], [maps[i] for i in kept], [masks[i] for i in kept],
               result)
    if not result["regions_dropped"]:
        del result["regions_dropped"]
    if out_dir:
        vmin, vmax = float(np.percentile(maps_in, 1)), float(np.percentile(maps_in, 99.9))
        images = np.stack(images) if images else None
        stems = _output_stems(paths, defects)
        for i in range(len(paths)):
            if tiff:
                from dadf_fast.engine.visualize import map_path, save_tiff

                save_tiff(map_path(out_dir, category, defects[i], paths[i], "tiff", stem=stems[i]), maps[i])
            if heatmaps:
                from dadf_fast.engine.visualize import overlay_panel, save_png

                panel = overlay_panel(images[i], maps_in[i], masks_in[i] if labels[i] >= 0 else None, vmin, vmax)
                save_png(os.path.join(out_dir, "heatmaps", defects[i], f"{stems[i]}.png"), panel)
        atomic_write_text(os.path.join(out_dir, "metrics.json"), json.dumps(result, indent=2) + "\n")
    result["_scores"] = scores
    result["_labels"] = labels
    result["_defects"] = defects
    return result


def _scored_items(model, test_data, batch_size, smooth_sigma, device, num_workers, with_images: bool,
                  resolution: str, ranks=(0, 1)):
    """Per test image, in dataset order: ``{"map"}`` (float32 ``[S, S]``), ``score``, ``label``,
    ``defect``, ``path``, ``mask`` (bool ``[S, S]``), the display ``image`` (uint8) when asked,
    and the LOCO masks at the input size.  On ``ranks = (rank, size)``, each rank scores its
    contiguous share of the batches (the same batches as one process) and rank 0 receives
    every item; the others get none."""
    from torch.utils.data import DataLoader, Subset

    rank, size = ranks
    n = len(test_data)
    if size > 1:
        from dadf_fast.utils.distributed import shard_batches

        test_data = Subset(test_data, shard_batches(n, batch_size, rank, size))
    loader = DataLoader(test_data, batch_size=batch_size, shuffle=False, collate_fn=collate, num_workers=num_workers)
    items = []
    for batch in loader:
        amap, score = score_images(model, batch["image"], batch_size, smooth_sigma, device)
        shown = denormalize(batch["image"]) if with_images else None
        for b in range(amap.shape[0]):
            item = {"map": amap[b, 0].numpy(), "score": score[b].numpy(), "label": int(batch["label"][b]),
                    "defect": batch["defect"][b], "path": batch["path"][b], "mask": batch["mask"][b, 0].numpy() > 0.5,
                    "loco": "masks" in batch}
            if shown is not None:
                item["image"] = shown[b]
            if "masks" in batch and resolution == "input":
                item["loco_masks"] = list(batch["masks"][b].numpy() > 0.5)
                item["saturation"] = batch["saturation"][b].numpy().astype(np.float64)
            items.append(item)
    if size == 1:
        return items
    from dadf_fast.utils.distributed import gather

    shares = gather(items)
    return [it for share in shares for it in share] if rank == 0 else []


def _decisions(model, smooth_sigma, scores, labels, maps, masks, result) -> None:
    """The calibrated thresholds' image F1 / precision / recall and pixel F1 on the test set,
    beside the F1-optimal thresholds chosen on the test set itself (``result["decisions"]``);
    a note instead when the model has no thresholds or the maps are smoothed otherwise."""
    from dadf_fast.models.thresholds import binary_counts, f1_optimal_binned, f1_optimal_threshold

    calib = getattr(model, "calibration", None)
    if len(scores) == 0 or len(set(labels.tolist())) < 2:
        return
    if calib is None:
        result["notes"].append("the model has no decision thresholds (not calibrated): no F1 at them")
        return
    if smooth_sigma is not None and smooth_sigma != model.config.get("smooth_sigma"):
        result["notes"].append("maps smoothed otherwise than at calibration: the thresholds do not apply")
        return
    dec = {"calibration_method": calib["method"], "image_threshold": calib["image_threshold"],
           "pixel_threshold": calib["pixel_threshold"]}
    got = binary_counts(torch.from_numpy(scores >= calib["image_threshold"]), torch.from_numpy(labels == 1))
    dec.update({f"image_{k}": v for k, v in got.items()})
    best = f1_optimal_threshold(torch.from_numpy(scores), torch.from_numpy(labels == 1))
    dec.update(oracle_image_threshold=best["threshold"], oracle_image_f1=best["f1"])
    if any(m.any() for m in masks):
        tp = fp = fn = 0
        for m, g in zip(maps, masks):
            p = m >= calib["pixel_threshold"]
            tp, fp, fn = tp + int((p & g).sum()), fp + int((p & ~g).sum()), fn + int((~p & g).sum())
        dec["pixel_f1"] = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
        best = f1_optimal_binned(maps, masks)
        dec.update(oracle_pixel_threshold=best["threshold"], oracle_pixel_f1=best["f1"])
    result["decisions"] = dec


def format_table(result: dict, title: str = "") -> str:
    """A short terminal table: overall metrics, and image AUROC (and LOCO sPRO) per defect type."""
    rows = [f"{title}" if title else ""]
    names = {"image_auroc": "image_auroc", "image_auroc_mean": "image_auroc (mean over defect types)",
             "pixel_auroc": "pixel_auroc", "aupro": "aupro", "spro": "spro (mean over defect types)"}
    for key, name in names.items():
        if key in result:
            rows.append(f"  {name:<12} {result[key]:.4f}")
    per = result.get("per_defect", {})
    spro = result.get("spro_per_defect", {})
    if per or spro:
        rows.append("  per defect (image AUROC vs good" + (", sPRO with good):" if spro else "):"))
        counts = defaultdict(int)
        for d in result.get("_defects", []):
            counts[d] += 1
        for d in sorted(set(per) | set(spro)):
            img = f"{per[d]:.4f}" if d in per else "   -  "
            sp = f"  sPRO {spro[d]:.4f}" if d in spro else ""
            rows.append(f"    {d:<18} {img}{sp}  ({counts.get(d, 0)} images)")
    dec = result.get("decisions")
    if dec:
        rows.append(f"  at the calibrated thresholds ({dec['calibration_method']}): image F1 {dec['image_f1']:.4f} "
                    f"(precision {dec['image_precision']:.4f}, recall {dec['image_recall']:.4f})"
                    + (f", pixel F1 {dec['pixel_f1']:.4f}" if "pixel_f1" in dec else ""))
        rows.append(f"  F1-optimal on this test set: image F1 {dec['oracle_image_f1']:.4f} at "
                    f"{dec['oracle_image_threshold']:.5g} (calibrated: {dec['image_threshold']:.5g})"
                    + (f", pixel F1 {dec['oracle_pixel_f1']:.4f} at {dec['oracle_pixel_threshold']:.5g} "
                       f"(calibrated: {dec['pixel_threshold']:.5g})" if "oracle_pixel_f1" in dec else ""))
    if "resolution" in result:
        rows.append(f"  metrics at the {result['resolution']} resolution")
    for note in result.get("notes", []):
        rows.append(f"  note: {note}")
    if result.get("skipped"):
        rows.append(f"  skipped unreadable test images: {len(result['skipped'])}")
    return "\n".join(r for r in rows if r)


def public(result: dict) -> dict:
    """The result without the private arrays (for JSON / printing)."""
    return {k: v for k, v in result.items() if not k.startswith("_")}


PREDICTIONS_CSV = "predictions.csv"


@torch.no_grad()
def predict_files(model, paths, batch_size: int = 8, out_dir: str | None = None, smooth_sigma: float | None = None,
                  overwrite: bool = False, distributed: bool | None = None) -> list | None:
    """Score arbitrary image files.  Returns ``[{"path", "score"}]`` in input order, with
    ``pred_score`` and ``pred_label`` for a calibrated model (its thresholds; none when
    ``smooth_sigma`` changes the maps' scale).  With ``out_dir`` also writes, per image, a
    ``<stem>.png`` overlay, a ``<stem>.tiff`` raw map and (calibrated) a ``<stem>_mask.png``
    predicted mask (255 = anomalous, at the model's input size), and ``predictions.csv`` (path,
    score, pred_score, pred_label: 1 anomalous, 0 normal; the last two empty without
    thresholds) once all are scored; stems are made unique (``a.png`` and
    ``a.jpg`` give ``a_png``/``a_jpg``, the same name in two folders ``a``/``a_1``).
    ``out_dir`` is checked before any scoring: a folder that already holds files is refused
    unless ``overwrite``, and no output may replace an input (``OutputPathError``).

    ``distributed`` (``None``: when ``torch.distributed`` is initialised with 2+ processes):
    each rank scores its contiguous share of the batches and writes those images' files; rank 0
    checks ``out_dir`` first, gathers the rows, writes ``predictions.csv`` and returns them (the
    other ranks return None)."""
    import contextlib
    import csv
    import io

    from dadf_fast.utils.distributed import all_ranks, gather, resolve, shard_batches
    from dadf_fast.utils.io import check_not_input, prepare_output_dir, protect_inputs, unique_output_stems

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    paths = [os.fspath(p) for p in paths]
    rank, size = resolve(distributed)
    s = model.input_size
    device = next(model.parameters()).device
    out = []
    with contextlib.ExitStack() as stack:
        targets = []
        if out_dir:
            def prepare():  # rank 0 checks and locks out_dir, the others wait for its verdict
                if rank == 0:
                    stack.enter_context(prepare_output_dir(out_dir, overwrite=overwrite, what="out_dir"))
                    for t in [*(t for group in targets for t in group), os.path.join(out_dir, PREDICTIONS_CSV)]:
                        check_not_input(t)  # all of them before the first image is scored

            stack.enter_context(protect_inputs(paths))
            targets = [[os.path.join(out_dir, f"{stem}{ext}") for ext in (".png", ".tiff", "_mask.png")]
                       for stem in unique_output_stems(paths)]
            all_ranks(prepare, "checking out_dir") if size > 1 else prepare()
        for start in shard_batches(len(paths), batch_size, rank, size)[::batch_size]:
            chunk = paths[start:start + batch_size]
            batch = torch.stack([load_image(p, s) for p in chunk])
            pred = {k: v.cpu() for k, v in model.predict(batch.to(device), smooth_sigma=smooth_sigma).items()}
            for i, p in enumerate(chunk):
                row = {"path": str(p), "score": float(pred["score"][i])}
                if "pred_label" in pred:
                    row.update(pred_score=float(pred["pred_score"][i]), pred_label=bool(pred["pred_label"][i]))
                out.append(row)
                if out_dir:
                    from dadf_fast.engine.visualize import overlay_panel, save_png, save_tiff

                    png, tiff, mask = targets[start + i]
                    amap = pred["anomaly_map"][i, 0].numpy()
                    save_png(png, overlay_panel(denormalize(batch[i]), amap))
                    save_tiff(tiff, amap)
                    if "pred_mask" in pred:
                        save_png(mask, pred["pred_mask"][i, 0].numpy().astype(np.uint8) * 255)
        if size > 1:
            out = [row for part in gather(out) for row in part]
            if rank != 0:
                return None
        if out_dir:
            text = io.StringIO()
            writer = csv.writer(text, lineterminator="\n")
            writer.writerow(["path", "score", "pred_score", "pred_label"])
            for r in out:
                writer.writerow([r["path"], f"{r['score']:.6g}", f"{r['pred_score']:.6g}" if "pred_score" in r else "",
                                 int(r["pred_label"]) if "pred_label" in r else ""])
            atomic_write_text(os.path.join(out_dir, PREDICTIONS_CSV), text.getvalue())
    return out
