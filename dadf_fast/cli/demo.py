"""``dadf-fast demo``: the whole job on the embedded default, offline, on a CPU.

Builds a small MVTec-layout dataset from photographs bundled with scikit-image (synthetic
scratches, foreign-material patches and spots with exact masks, and normal validation
images for the decision thresholds), trains the lite preset with the lite recipe on each
category, evaluates, prints image AUROC, pixel AUROC, AUPRO and the calibrated verdicts'
F1, and writes heatmaps.
"""
from __future__ import annotations

import json
import os
import time

import numpy as np
import torch

# per-category training budget of the demo: the lite recipe's (4 reconstruction epochs, a
# fixed number of flow steps; a couple of CPU minutes per category on 2 cores)
DEMO_EPOCHS_RECON = 4
DEMO_EPOCHS_FLOW = None  # None: the lite recipe's flow steps (training.LITE_FLOW_ITERS)
# normal validation images per category for the decision thresholds, cut from a region of
# each photo that neither the training nor the test crops touch: crops held out of the
# training images at random share their pixels and would set the thresholds far too low
# (synthetic.validation_region); with them, nothing is held out of the 40 training images
DEMO_N_VAL = 8


def run_demo(out: str = "runs/demo", categories=None, seed: int = 0, device: str = "cpu", backend: str = "auto",
             progress: bool = True, epochs_recon: int = DEMO_EPOCHS_RECON, epochs_flow: int | None = DEMO_EPOCHS_FLOW,
             log=print, dtype: str = "float32", overwrite: bool = False) -> dict:
    """Build the demo data under ``out/data``, train and evaluate each category into
    ``out/<category>``, write ``out/demo_metrics.json``; returns that summary.  ``out`` is
    checked first: a folder that already holds files is refused unless ``overwrite``."""
    from dadf_fast.utils.io import prepare_output_dir
    from dadf_fast.data.synthetic import DEMO_CATEGORIES

    categories = list(categories or DEMO_CATEGORIES)
    unknown = [c for c in categories if c not in DEMO_CATEGORIES]
    if unknown:
        raise ValueError(f"unknown demo categories {unknown}; choose from {list(DEMO_CATEGORIES)}")
    with prepare_output_dir(out, overwrite=overwrite, what="out"):
        return _run(out, categories, seed, device, backend, progress, epochs_recon, epochs_flow, log, dtype, overwrite)


def _run(out, categories, seed, device, backend, progress, epochs_recon, epochs_flow, log, dtype, overwrite) -> dict:
    from dadf_fast.models import DADF
    from dadf_fast.utils.io import atomic_write_text
    from dadf_fast.data import FolderDataset, MVTecAD
    from dadf_fast.engine.evaluation import evaluate, format_table, public
    from dadf_fast.data.synthetic import make_dataset

    t_start = time.perf_counter()
    data_root = os.path.join(out, "data")
    make_dataset(data_root, categories=categories, seed=seed, n_val=DEMO_N_VAL)
    log(f"demo dataset: {data_root} ({', '.join(categories)})")
    results = {}
    for cat in categories:
        t0 = time.perf_counter()
        torch.manual_seed(seed)
        model = DADF("lite", backend=backend, dtype=dtype).to(device)
        train = MVTecAD(data_root, cat, "train")
        test = MVTecAD(data_root, cat, "test")
        val = FolderDataset(os.path.join(data_root, cat, "val", "good"), image_size=model.input_size)
        model.fit(train, recipe="lite", epochs_recon=epochs_recon, epochs_flow=epochs_flow, seed=seed,
                  out_dir=os.path.join(out, cat), overwrite=overwrite, progress=progress, log=lambda *a: None,
                  val_images=val)
        # the category folder already holds this run's model.pt (the demo's --out was checked above)
        res = evaluate(model, test, out_dir=os.path.join(out, cat), category=cat, overwrite=True)
        res["seconds"] = time.perf_counter() - t0
        log(format_table(res, f"{cat}: trained on {len(train)} images, {len(test)} test images, "
                              f"{res['seconds']:.0f} s"))
        results[cat] = public(res)
    keys = ("image_auroc", "pixel_auroc", "aupro")
    mean = {k: float(np.mean([r[k] for r in results.values()])) for k in keys}
    summary = {"categories": results, "mean": mean, "seconds": time.perf_counter() - t_start}
    atomic_write_text(os.path.join(out, "demo_metrics.json"), json.dumps(summary, indent=2) + "\n")
    log(f"mean over {len(results)} categories: image AUROC {mean['image_auroc']:.4f}, "
        f"pixel AUROC {mean['pixel_auroc']:.4f}, AUPRO {mean['aupro']:.4f}  ({summary['seconds']:.0f} s)")
    log(f"heatmaps: {os.path.join(out, '<category>', 'heatmaps')}")
    return summary
