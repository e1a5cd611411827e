"""Issue 15's bar: do the label-free thresholds decide as well as thresholds chosen on the
test set itself?

Per category (one process each, ``--jobs`` at a time, ``--threads`` torch threads each): the
default ``DADF("lite")`` trained with the default ``fit`` (lite recipe; 20 % of the normal
images held out, thresholds F1-optimal on them plus one synthetic defect each), then scored
on the test set.  Reported: image F1 / precision / recall at the calibrated image threshold,
the best image F1 any threshold reaches on the test set (the oracle), their ratio (the bar:
>= 0.9), pixel F1 at the calibrated pixel threshold against the oracle's, and image /
pixel AUROC.

    python benchmarks/decisions.py --jobs 2 --json /tmp/dec.json                 # the harness (dev + validation)
    python benchmarks/decisions.py --demo --jobs 2                                 # the demo data
    python benchmarks/decisions.py --n-val 8 --jobs 2      # thresholds from 8 validation images of their own region

``--n-val N``: the data gets N normal validation images per category (``make_dataset(n_val=N)``:
crops of a region of the photo that neither the training nor the test crops touch, fresh
renderings of a procedural category) and ``fit`` calibrates on them (``val_images``, as
``dadf-fast train --val-dir``) instead of holding training images out; as ``dadf-fast demo``
does.  Crops held out of the training images share their pixels (docs/accuracy.md, "Decisions").
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))


def run_category(cat: str, args) -> dict:
    from torch.utils.data import DataLoader

    from dadf_fast import DADF
    from dadf_fast.data import MVTecAD, collate
    from dadf_fast.data.synthetic import make_dataset
    from dadf_fast.engine.evaluation import _decisions
    from dadf_fast.metrics import auroc, pixel_auroc

    torch.set_num_threads(args.threads)
    root = os.path.join(args.out, "data")
    notes = []

    def make(n_val):
        if args.demo:
            return make_dataset(root, categories=[cat], seed=args.seed, n_val=n_val)
        from dadf_fast.data.harness import harness_defects

        return make_dataset(root, categories=[cat], defects=harness_defects(cat), n_train=args.n_train,
                            n_test_good=args.n_test_good, n_test_defect=args.n_test_defect, seed=args.seed,
                            n_val=n_val)

    n_val = args.n_val
    try:
        make(n_val)
    except ValueError as e:   # a photo too small for a third region (coins, text): say so, use the hold-out
        if not n_val or "validation band" not in str(e):
            raise
        notes.append(f"no validation region ({e}): fit's hold-out instead")
        n_val = 0
        make(0)
    train = MVTecAD(root, cat, "train")
    test = MVTecAD(root, cat, "test")
    batch = next(iter(DataLoader(test, batch_size=len(test), collate_fn=collate)))
    labels = np.asarray(batch["label"])
    masks = (batch["mask"][:, 0].float() > 0.5).numpy()
    train_imgs = torch.stack([train[i]["image"] for i in range(len(train))])
    torch.manual_seed(args.seed)
    model = DADF("lite")
    fit_kw = dict(iters_flow=3, epochs_recon=1) if args.smoke else {}
    if n_val:
        from dadf_fast.data import FolderDataset

        fit_kw["val_images"] = FolderDataset(os.path.join(root, cat, "val", "good"), image_size=model.input_size)
    t0 = time.perf_counter()
    res = model.fit(train_imgs, recipe="lite", seed=args.seed, progress=False, log=None,
                    calibration_fraction=args.calibration_fraction, **fit_kw)
    fit_s = time.perf_counter() - t0
    out = model.predict(batch["image"], batch_size=8)
    scores, maps = out["score"].numpy(), out["anomaly_map"][:, 0].numpy()
    if args.save_maps:
        # the calibration set as fit saw it (the same seeded hold-out and synthetic defects),
        # and the test set: for trying other threshold rules offline
        from dadf_fast.models.thresholds import synthetic_defects
        from dadf_fast.models.training import FitConfig, _hold_out

        cfg = FitConfig.for_recipe("lite", seed=args.seed, calibration_fraction=args.calibration_fraction)
        _, held = _hold_out(train_imgs, cfg, 2, lambda *a: None)
        bad, bmasks = synthetic_defects(held, seed=args.seed)
        cal = model.predict(torch.cat((held, bad)), batch_size=8)
        os.makedirs(args.save_maps, exist_ok=True)
        np.savez_compressed(os.path.join(args.save_maps, f"{cat.replace('@', '_')}.npz"),
                            test_scores=scores, test_maps=maps.astype(np.float16), labels=labels, masks=masks,
                            cal_scores=cal["score"].numpy(), cal_maps=cal["anomaly_map"][:, 0].numpy().astype(np.float16),
                            cal_labels=np.r_[np.zeros(len(held)), np.ones(len(bad))],
                            cal_masks=np.concatenate((np.zeros((len(held),) + bmasks.shape[1:], bool), bmasks.numpy())),
                            calibration=json.dumps(res["calibration"]))
    result = {"notes": notes}
    _decisions(model, None, scores, labels, list(maps), list(masks), result)
    dec = result.get("decisions", {})
    recal = {}
    if args.recalibrate:
        # the "first shift of a new line": K normal images of the test distribution, no labels,
        # recalibrate (synthetic defects on them), then decide on the other test images
        normal_idx = np.flatnonzero(labels == 0)[:args.recalibrate]
        rest = np.setdiff1d(np.arange(len(labels)), normal_idx)
        model.calibrate(batch["image"][normal_idx], seed=args.seed, log=None)
        out = model.predict(batch["image"][rest], batch_size=8)
        r2 = {"notes": []}
        _decisions(model, None, out["score"].numpy(), labels[rest], list(out["anomaly_map"][:, 0].numpy()),
                   list(masks[rest]), r2)
        recal = dict(r2.get("decisions", {}), n_images=int(len(normal_idx)), method=model.calibration["method"])
    return {"category": cat, "fit_s": fit_s, "calibration": res["calibration"], "decisions": dec, "recalibrated": recal,
            "image_auroc": auroc(scores, labels), "pixel_auroc": pixel_auroc(list(maps), list(masks)),
            "notes": result["notes"]}


def _child(cat: str, args, path: str) -> subprocess.Popen:
    cmd = [sys.executable, os.path.abspath(__file__), "--categories", cat, "--jobs", "1", "--json", path,
           "--threads", str(args.threads), "--seed", str(args.seed), "--out", os.path.join(args.out, cat),
           "--n-train", str(args.n_train), "--n-test-good", str(args.n_test_good),
           "--n-test-defect", str(args.n_test_defect), "--calibration-fraction", str(args.calibration_fraction),
           "--n-val", str(args.n_val)]
    cmd += ["--demo"] if args.demo else []
    cmd += ["--recalibrate", str(args.recalibrate)] if args.recalibrate else []
    cmd += ["--save-maps", args.save_maps] if args.save_maps else []
    cmd += ["--smoke"] if args.smoke else []
    return subprocess.Popen(cmd)


def summary(results: list) -> str:
    rows = [f"{'category':<22} {'method':<16} {'img F1':>7} {'oracle':>7} {'ratio':>6} {'prec':>6} {'rec':>6} "
            f"{'pix F1':>7} {'oracle':>7} {'ratio':>6} {'imgAUC':>7} {'pixAUC':>7}"]
    ratios, pratios = [], []
    for r in results:
        d = r["decisions"]
        if not d:
            rows.append(f"{r['category']:<22} (no decisions: {'; '.join(r['notes'])})")
            continue
        ratio = d["image_f1"] / d["oracle_image_f1"]
        pratio = d["pixel_f1"] / d["oracle_pixel_f1"]
        ratios.append(ratio)
        pratios.append(pratio)
        rows.append(f"{r['category']:<22} {d['calibration_method']:<16} {d['image_f1']:7.3f} "
                    f"{d['oracle_image_f1']:7.3f} {ratio:6.3f} {d['image_precision']:6.3f} {d['image_recall']:6.3f} "
                    f"{d['pixel_f1']:7.3f} {d['oracle_pixel_f1']:7.3f} {pratio:6.3f} {r['image_auroc']:7.3f} "
                    f"{r['pixel_auroc']:7.3f}")
        rows += [f"    note: {n}" for n in r["notes"]]
    recal = [r for r in results if r.get("recalibrated")]
    if recal:
        rows.append(f"recalibrated on {recal[0]['recalibrated']['n_images']} normal test images, decided on the rest:")
        rr = []
        for r in recal:
            d = r["recalibrated"]
            rr.append(d["image_f1"] / d["oracle_image_f1"])
            rows.append(f"{r['category']:<22} {d['method']:<16} {d['image_f1']:7.3f} {d['oracle_image_f1']:7.3f} "
                        f"{rr[-1]:6.3f} {d['image_precision']:6.3f} {d['image_recall']:6.3f} {d['pixel_f1']:7.3f} "
                        f"{d['oracle_pixel_f1']:7.3f} {d['pixel_f1'] / d['oracle_pixel_f1']:6.3f}")
        rows.append(f"recalibrated image F1 ratio: mean {np.mean(rr):.3f}, min {np.min(rr):.3f}, >= 0.9 on "
                    f"{sum(x >= 0.9 for x in rr)} of {len(rr)}")
    if ratios:
        rows.append(f"image F1 ratio: mean {np.mean(ratios):.3f}, min {np.min(ratios):.3f}, >= 0.9 on "
                    f"{sum(x >= 0.9 for x in ratios)} of {len(ratios)}; pixel F1 ratio: mean {np.mean(pratios):.3f}, "
                    f"min {np.min(pratios):.3f}")
    return "\n".join(rows)


def main(argv=None) -> int:
    from dadf_fast.data.harness import HARNESS_DEV, HARNESS_VALIDATION
    from dadf_fast.data.synthetic import DEMO_CATEGORIES

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--categories", nargs="+", default=None,
                   help="default: the harness's development and validation categories (with --demo: the demo's)")
    p.add_argument("--demo", action="store_true", help="the demo's data (dadf-fast demo) instead of the harness's")
    p.add_argument("--calibration-fraction", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-train", type=int, default=40)
    p.add_argument("--n-test-good", type=int, default=16)
    p.add_argument("--n-test-defect", type=int, default=32)
    p.add_argument("--n-val", type=int, default=0, metavar="N",
                   help="N normal validation images of their own region per category, calibrated on instead of a "
                        "hold-out of the training images (default 0: fit's hold-out)")
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=os.path.join(tempfile.gettempdir(), "decisions"))
    p.add_argument("--json")
    p.add_argument("--recalibrate", type=int, default=0, metavar="K",
                   help="also recalibrate on K normal test images (no labels) and decide on the rest")
    p.add_argument("--save-maps", help="write each category's calibration-set and test scores and maps here (npz)")
    p.add_argument("--smoke", action="store_true", help="1 epoch / 3 steps of training: checks the script runs")
    args = p.parse_args(argv)
    if args.save_maps and args.n_val:
        p.error("--save-maps re-draws fit's hold-out of the training images; with --n-val there is none")
    if args.categories is None:
        args.categories = list(DEMO_CATEGORIES) if args.demo else [*HARNESS_DEV, *HARNESS_VALIDATION]
    if args.jobs > 1 or (args.json is None and len(args.categories) > 1):
        sys.path.insert(0, HERE)
        from category_jobs import run_categories

        results = run_categories(args.categories, args.jobs, lambda cat, path: _child(cat, args, path))
    else:
        results = [run_category(c, args) for c in args.categories]
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)
    print(summary(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
