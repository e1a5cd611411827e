"""Accuracy harness: DADF (lite preset) against a PatchCore-style kNN baseline on
MVTec-layout data built from photographs the demo does NOT use.

    python benchmarks/accuracy.py                              # both methods, all categories
    python benchmarks/accuracy.py --methods knn                # the baseline only (fast)
    python benchmarks/accuracy.py --categories coins --methods dadf --epochs-recon 1 --epochs-flow 1
    python benchmarks/accuracy.py --json runs/accuracy/results.json

For each category (one offline scikit-image photograph, see ``HARNESS_CATEGORIES``) it
writes a synthetic MVTec-AD-layout dataset with :func:`dadf_fast.data.synthetic.make_dataset`
(train / test crops from disjoint regions of the photo; scratches, foreign-material
patches and spots with exact masks), then for each method, with fixed seeds:

* ``dadf``: ``DADF("lite")`` trained with ``recipe`` (default ``lite``, the recipe's
  default epochs unless ``--epochs-recon`` / ``--epochs-flow``);
* ``knn``: :class:`dadf_fast.models.knn.KNNDetector` (same efficientnet_lite0 features,
  strides 8/16, full memory bank unless ``--coreset-ratio``, sigma-4 smoothing);

evaluates it with :func:`dadf_fast.engine.evaluation.evaluate` and reports image AUROC, pixel
AUROC and AUPRO per category and their mean, with the wall time of fitting and of
evaluating.  The last thing printed is a markdown table for docs/accuracy.md.

The categories are deliberately different from the demo's (brick / grass / gravel) and
from the photos the synthetic foreign-material patches are cut from
(``synthetic.PATCH_SOURCES``): so numbers here are not tuned on what the demo shows.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np
import torch

# Offline scikit-image photos, none in DEMO_CATEGORIES or PATCH_SOURCES, whose train region
# (first 60 % of the photo) and test region (the rest) show the same kind of content:
#   coins             - a grid of coins on a dark background (repeated objects)
#   hubble_deep_field - galaxies and stars on black (sparse, colourful texture)
#   moon              - grey lunar surface with small craters (smooth, low-contrast texture)
#   retina            - fundus photo: vessels on red, the dark border of the eye (object)
# Left out: camera (the train region shows the cameraman, the test region only buildings
# and grass, so normal test crops are novel), cell (its one cell lies on the region cut),
# clock (mostly flat grey), cat (the same photo as chelsea, a patch source).
HARNESS_CATEGORIES = ("coins", "hubble_deep_field", "moon", "retina")
METHODS = ("dadf", "knn")
METRICS = ("image_auroc", "pixel_auroc", "aupro")


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--categories", nargs="+", default=list(HARNESS_CATEGORIES),
                   help=f"scikit-image photo names (default: {' '.join(HARNESS_CATEGORIES)})")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--recipe", default="lite", choices=["lite", "paper"], help="DADF training recipe (default: lite)")
    p.add_argument("--epochs-recon", type=int, default=None, help="DADF stage-1 epochs (default: the recipe's)")
    p.add_argument("--epochs-flow", type=int, default=None, help="DADF stage-2 epochs (default: the recipe's)")
    p.add_argument("--iters-flow", type=int, default=None, help="DADF stage-2 optimiser steps (default: the recipe's)")
    p.add_argument("--flow-norm", default=None, choices=["image", "channel"],
                   help="DADF flow-input norm (default: the lite preset's, channel)")
    p.add_argument("--coreset-ratio", type=float, default=1.0, help="kNN memory-bank fraction (default: 1.0)")
    p.add_argument("--seed", type=int, default=0, help="data and training seed (default: 0)")
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--n-train", type=int, default=40)
    p.add_argument("--n-test-good", type=int, default=10)
    p.add_argument("--n-test-defect", type=int, default=20)
    p.add_argument("--out", default="runs/accuracy", help="data and checkpoints go here (default: runs/accuracy)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the checkpoints of an earlier run under --out (refused otherwise)")
    p.add_argument("--json", help="write all results as JSON here")
    p.add_argument("--device", default="cpu")
    p.add_argument("--backend", default="auto", help="DADF kernel backend (default: auto)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def _fit(method: str, train, args, out_dir: str):
    """A fitted detector and the training details."""
    from dadf_fast import DADF
    from dadf_fast.models.knn import KNNDetector

    torch.manual_seed(args.seed)
    if method == "dadf":
        model = DADF("lite", input_size=args.image_size, backend=args.backend, flow_norm=args.flow_norm).to(args.device)
        res = model.fit(train, recipe=args.recipe, epochs_recon=args.epochs_recon, epochs_flow=args.epochs_flow,
                        iters_flow=args.iters_flow,
                        seed=args.seed, out_dir=out_dir, overwrite=args.overwrite, progress=not args.quiet,
                        log=lambda *a: None)
        info = {"recipe": args.recipe, "epochs_recon": len(res["loss_recon"]), "epochs_flow": len(res["loss_flow"]),
                "final_loss_flow": res["loss_flow"][-1] if res["loss_flow"] else None}
    else:
        model = KNNDetector(input_size=args.image_size, coreset_ratio=args.coreset_ratio,
                            seed=args.seed).to(args.device)
        res = model.fit(train, out_dir=out_dir, overwrite=args.overwrite, progress=not args.quiet,
                        log=lambda *a: None)
        info = {"memory_size": res["memory_size"], "coreset_ratio": args.coreset_ratio}
    return model, info


def run(args) -> dict:
    from dadf_fast.data import MVTecAD
    from dadf_fast.engine.evaluation import evaluate, public
    from dadf_fast.data.synthetic import DEMO_CATEGORIES, available_sources, make_dataset

    if args.threads:
        torch.set_num_threads(args.threads)
    offline = available_sources()
    bad = [c for c in args.categories if c not in offline]
    if bad:
        raise SystemExit(f"unknown or unavailable categories {bad}; offline photos: {', '.join(offline)}")
    demo = [c for c in args.categories if c in DEMO_CATEGORIES]
    if demo:
        print(f"note: {demo} are demo categories; the harness is meant for photos the demo does not use",
              file=sys.stderr)
    data_root = os.path.join(args.out, "data")
    t0 = time.perf_counter()
    make_dataset(data_root, categories=args.categories, n_train=args.n_train, n_test_good=args.n_test_good,
                 n_test_defect=args.n_test_defect, image_size=args.image_size, seed=args.seed)
    print(f"data: {data_root} ({', '.join(args.categories)}; {args.n_train} train, {args.n_test_good} good + "
          f"{args.n_test_defect} defective test images each, {args.image_size} px; {time.perf_counter() - t0:.1f} s)")

    results = {m: {} for m in args.methods}
    for cat in args.categories:
        train = MVTecAD(data_root, cat, "train", image_size=args.image_size)
        test = MVTecAD(data_root, cat, "test", image_size=args.image_size)
        for method in args.methods:
            t0 = time.perf_counter()
            model, info = _fit(method, train, args, os.path.join(args.out, method, cat))
            fit_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            res = public(evaluate(model, test, category=cat, device=args.device))
            eval_s = time.perf_counter() - t0
            res.update(fit_seconds=fit_s, eval_seconds=eval_s, **info)
            results[method][cat] = res
            print(f"{method:<5} {cat:<18} image AUROC {res.get('image_auroc', float('nan')):.4f}  "
                  f"pixel AUROC {res.get('pixel_auroc', float('nan')):.4f}  AUPRO {res.get('aupro', float('nan')):.4f}  "
                  f"fit {fit_s:6.1f} s  eval {eval_s:5.1f} s", flush=True)
            del model

    summary = {}
    for method, per_cat in results.items():
        summary[method] = {k: float(np.mean([r[k] for r in per_cat.values() if k in r])) for k in METRICS}
        summary[method]["fit_seconds"] = float(sum(r["fit_seconds"] for r in per_cat.values()))
        summary[method]["eval_seconds"] = float(sum(r["eval_seconds"] for r in per_cat.values()))
    return {
        "categories": list(args.categories),
        "results": results,
        "mean": summary,
        "settings": {k: v for k, v in vars(args).items() if k not in ("json", "quiet")},
        "machine": {"torch": torch.__version__, "threads": torch.get_num_threads(), "python": platform.python_version(),
                    "processor": platform.processor() or platform.machine()},
    }


def markdown(report: dict) -> str:
    """The results as a markdown table (one row per category and method, then the means)."""
    names = {"dadf": "DADF lite", "knn": "kNN (PatchCore-style)"}
    rows = ["| category | method | image AUROC | pixel AUROC | AUPRO | fit (s) | eval (s) |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]

    def fmt(v):
        return "n/a" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.3f}"

    for cat in report["categories"]:
        for method, per_cat in report["results"].items():
            r = per_cat[cat]
            rows.append(f"| {cat} | {names[method]} | " + " | ".join(fmt(r.get(k)) for k in METRICS)
                        + f" | {r['fit_seconds']:.0f} | {r['eval_seconds']:.0f} |")
    for method, m in report["mean"].items():
        rows.append(f"| **mean** | {names[method]} | " + " | ".join(f"**{fmt(m[k])}**" for k in METRICS)
                    + f" | {m['fit_seconds']:.0f} | {m['eval_seconds']:.0f} |")
    return "\n".join(rows)


def _epochs(v) -> str:
    return "recipe default" if v is None else str(v)


def main(argv=None) -> int:
    args = _build_parser().parse_args(argv)
    if args.epochs_recon is not None and args.epochs_recon < 0 or args.epochs_flow is not None and args.epochs_flow < 0:
        raise SystemExit("epochs must be >= 0")
    report = run(args)
    print()
    for method, m in report["mean"].items():
        print(f"mean {method:<5} over {len(report['categories'])} categories: image AUROC {m['image_auroc']:.4f}  "
              f"pixel AUROC {m['pixel_auroc']:.4f}  AUPRO {m['aupro']:.4f}  (fit {m['fit_seconds']:.0f} s, "
              f"eval {m['eval_seconds']:.0f} s)")
    s = report["settings"]
    print()
    print(f"<!-- benchmarks/accuracy.py: seed {s['seed']}, {s['n_train']} train / {s['n_test_good']} good / "
          f"{s['n_test_defect']} defective test images per category at {s['image_size']} px; DADF recipe "
          f"{s['recipe']} (epochs recon/flow: {_epochs(s['epochs_recon'])}/{_epochs(s['epochs_flow'])}, flow steps "
          f"{_epochs(s['iters_flow'])}, flow norm {s['flow_norm'] or 'preset'}); "
          f"kNN coreset ratio {s['coreset_ratio']}; torch "
          f"{report['machine']['torch']}, {report['machine']['threads']} threads -->")
    print(markdown(report))
    if args.json:
        from dadf_fast.utils.io import atomic_write_text

        atomic_write_text(args.json, json.dumps(report, indent=2) + "\n")
        print(f"\nresults written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
