"""Accuracy harness: DADF (lite preset) against a PatchCore-style kNN baseline and anomalib's
FastFlow on MVTec-layout data built from photographs the demo does NOT use.

    python benchmarks/accuracy.py                              # all three methods, the default set
    python benchmarks/accuracy.py --methods knn                # one baseline only (fast)
    python benchmarks/accuracy.py --categories coins --methods dadf --epochs-recon 1 --epochs-flow 1
    python benchmarks/accuracy.py --set dev --seeds 0 1 2 --jobs 2 --threads 1
    python benchmarks/accuracy.py --json runs/accuracy/results.json
    python benchmarks/accuracy.py --merge A/results.json B/results.json   # seeds run apart, one report

Categories come from a named set (``--set``): ``old`` is the original four scikit-image
photos (``HARNESS_CATEGORIES``); ``dev`` and ``validation`` are
``HARNESS_DEV`` / ``HARNESS_VALIDATION`` of ``dadf_fast.data.synthetic`` (or ``.harness``) once
they exist (the default is ``dev`` when it exists, else ``old``).  ``validation`` is kept aside: no
tuning decision may look at its numbers.  For each seed and category it writes a synthetic
MVTec-AD-layout dataset with :func:`dadf_fast.data.synthetic.make_dataset` (train / test crops
from disjoint regions; defects with exact masks, ``--defects``; the ``old`` set's default is
scratch / patch / spot, the others' ``HARNESS_DEFECTS`` or ``ALL_DEFECT_TYPES``), then for each
method, with fixed seeds:

* ``dadf``: ``DADF("lite")`` trained with ``recipe`` (default ``lite``, the recipe's
  default epochs unless ``--epochs-recon`` / ``--epochs-flow``);
* ``knn``: :class:`dadf_fast.models.knn.KNNDetector` (same efficientnet_lite0 features,
  strides 8/16, full memory bank unless ``--coreset-ratio``, sigma-4 smoothing);
* ``fastflow``: anomalib's ``FastflowModel`` on the same features and ImageNet weights
  (``fastflow_baseline.FastFlowBaseline``: 8 steps, Adam 1e-3, batch 8, ``--fastflow-epochs``
  75, raw anomalib map, score = its max);

evaluates it with :func:`dadf_fast.engine.evaluation.evaluate` and reports image AUROC, pixel
AUROC and AUPRO per category, seed and method, their mean over seeds, the mean over
categories, each method's worst category, image AUROC per defect type, and the "bar check"
(DADF ahead of both baselines on the mean, on how many categories, and its largest shortfall
per category, which must stay <= ``BAR_SHORTFALL``).  ``--jobs N`` runs the (seed, category)
units in N processes with ``--threads`` torch threads each; the numbers are those of the
serial run with the same ``--threads``.  The last thing printed is markdown for
docs/accuracy.md; all results go to ``--json`` (default ``<out>/results.json``).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from collections.abc import Mapping

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
METHODS = ("dadf", "knn", "fastflow")
BASELINES = ("knn", "fastflow")
METRICS = ("image_auroc", "pixel_auroc", "aupro")
BAR_METRICS = ("image_auroc", "pixel_auroc")
SETS = ("old", "dev", "validation")
BAR_SHORTFALL = 0.02   # DADF may trail the better baseline by at most this on any category
NAMES = {"dadf": "DADF lite", "knn": "kNN (PatchCore-style)", "fastflow": "FastFlow (anomalib)"}


def _synthetic():
    from dadf_fast.data import synthetic

    return synthetic


def _registry(attr: str, default=None):
    """``attr`` of ``dadf_fast.data.synthetic``, else of ``dadf_fast.data.harness`` (where the
    harness registry may live), else ``default``: the harness runs before and after they exist."""
    value = getattr(_synthetic(), attr, None)
    if value is None:
        try:
            from dadf_fast.data import harness
        except ImportError:
            return default
        value = getattr(harness, attr, None)
    return default if value is None else value


def category_sets() -> dict:
    """Set name -> its categories (a tuple of names, or a mapping name -> source spec), for
    the sets this checkout has (``dev`` / ``validation`` only once the registry defines them)."""
    sets = {"old": HARNESS_CATEGORIES}
    for name, attr in (("dev", "HARNESS_DEV"), ("validation", "HARNESS_VALIDATION")):
        cats = _registry(attr)
        if cats:
            sets[name] = cats
    return sets


def default_set() -> str:
    return "dev" if "dev" in category_sets() else "old"


def default_defects(set_name: str) -> tuple:
    """The old set keeps its three defect types (its recorded numbers); the new sets use all."""
    old = tuple(_synthetic().DEFECT_TYPES)
    if set_name == "old":
        return old
    return tuple(_registry("HARNESS_DEFECTS", _registry("ALL_DEFECT_TYPES", old)))


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--set", choices=SETS, default=None,
                   help="category set (default: dev where synthetic.py has HARNESS_DEV, else old)")
    p.add_argument("--categories", nargs="+", default=None, help="categories (default: the set's)")
    p.add_argument("--defects", nargs="+", default=None,
                   help="defect types (default: the old set's scratch/patch/spot; all types for dev/validation)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--recipe", default="lite", choices=["lite", "paper"], help="DADF training recipe (default: lite)")
    p.add_argument("--epochs-recon", type=int, default=None, help="DADF stage-1 epochs (default: the recipe's)")
    p.add_argument("--epochs-flow", type=int, default=None, help="DADF stage-2 epochs (default: the recipe's)")
    p.add_argument("--iters-flow", type=int, default=None, help="DADF stage-2 optimiser steps (default: the recipe's)")
    p.add_argument("--calibration-fraction", type=float, default=0.2,
                   help="DADF: normal images held out of training for the decision thresholds (default: fit's, 0.2; "
                        "0 trains on all, as before issue 15)")
    p.add_argument("--flow-norm", default=None, choices=["image", "channel"],
                   help="DADF flow-input norm (default: the lite preset's, channel)")
    p.add_argument("--no-flips", action="store_true",
                   help="DADF: train without the mirror images (fit(hflip=False, vflip=False); the recipe's default is with)")
    p.add_argument("--coreset-ratio", type=float, default=1.0, help="kNN memory-bank fraction (default: 1.0)")
    p.add_argument("--fastflow-epochs", type=int, default=75, help="FastFlow epochs (default: 75)")
    p.add_argument("--seed", type=int, default=0, help="data and training seed (default: 0)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="several seeds (replaces --seed)")
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--n-train", type=int, default=40)
    p.add_argument("--n-test-good", type=int, default=10)
    p.add_argument("--n-test-defect", type=int, default=20)
    p.add_argument("--out", default="runs/accuracy", help="data and checkpoints go here (default: runs/accuracy)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the checkpoints of an earlier run under --out (refused otherwise)")
    p.add_argument("--json", help="write all results as JSON here (default: <out>/results.json)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--backend", default="auto", help="DADF kernel backend (default: auto)")
    p.add_argument("--jobs", type=int, default=1, help="(seed, category) units run in parallel processes (default: 1)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads per job (default: torch's; with --jobs N: cores / N)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--merge", nargs="+", metavar="RESULTS_JSON",
                   help="train nothing: join the results.json of earlier runs of one set (other seeds or methods "
                        "run apart) and report them as one run")
    return p


def _names(cats) -> list:
    return [str(c) for c in (cats.keys() if isinstance(cats, Mapping) else cats)]


def _resolve(args) -> argparse.Namespace:
    """Fill in the set, categories, seeds and defects; raise SystemExit naming a bad option."""
    sets = category_sets()
    args.set = args.set or default_set()
    if args.set not in sets:
        raise SystemExit(f"--set {args.set}: dadf_fast.data has no HARNESS_{args.set.upper()} yet "
                         f"(available sets: {', '.join(sets)})")
    if args.categories is None:
        args.categories = _names(sets[args.set])
    args.seeds = list(args.seeds) if args.seeds else [args.seed]
    if len(set(args.seeds)) != len(args.seeds):
        raise SystemExit(f"--seeds must not repeat a seed, got {args.seeds}")
    syn = _synthetic()
    known_defects = tuple(_registry("ALL_DEFECT_TYPES", syn.DEFECT_TYPES))
    args.defects = list(args.defects) if args.defects else list(default_defects(args.set))
    bad = [d for d in args.defects if d not in known_defects]
    if bad:
        raise SystemExit(f"--defects: unknown defect types {bad}; choose from {', '.join(known_defects)}")
    for opt in ("jobs", "threads", "fastflow_epochs", "n_train"):
        v = getattr(args, opt)
        if v is not None and v < 1:
            raise SystemExit(f"--{opt.replace('_', '-')} must be >= 1, got {v}")
    if args.epochs_recon is not None and args.epochs_recon < 0 or args.epochs_flow is not None and args.epochs_flow < 0:
        raise SystemExit("epochs must be >= 0")
    known = set(syn.available_sources())
    for cats in sets.values():
        known |= set(_names(cats))
    listing = _registry("harness_categories")
    if callable(listing):
        known |= set(listing())
    # "<photo>@<scale>" names a crop scale of a known photo (synthetic.py's convention)
    bad = [c for c in args.categories if c not in known and c.split("@")[0] not in known]
    if bad:
        raise SystemExit(f"--categories: unknown or unavailable categories {bad}; known: {', '.join(sorted(known))}")
    demo = [c for c in args.categories if c in syn.DEMO_CATEGORIES]
    if demo:
        print(f"note: {demo} are demo categories; the harness is meant for photos the demo does not use",
              file=sys.stderr)
    if args.set == "validation":
        print("note: the validation set is held out: no tuning decision may look at these numbers", file=sys.stderr)
    return args


def _dataset_spec(category: str, set_name: str):
    """What make_dataset gets for ``category``: its name, or ``{name: source}`` when the
    set's registry is a mapping."""
    cats = category_sets().get(set_name, ())
    if isinstance(cats, Mapping) and category in cats:
        return {category: cats[category]}
    return [category]


def _fastflow_class():
    here = os.path.dirname(os.path.abspath(__file__))
    if here not in sys.path:
        sys.path.insert(0, here)
    from fastflow_baseline import FastFlowBaseline

    return FastFlowBaseline


def _fit(method: str, train, args, seed: int, out_dir: str):
    """A fitted detector and the training details."""
    from dadf_fast import DADF
    from dadf_fast.models.knn import KNNDetector

    torch.manual_seed(seed)
    if method == "dadf":
        model = DADF("lite", input_size=args.image_size, backend=args.backend, flow_norm=args.flow_norm).to(args.device)
        res = model.fit(train, recipe=args.recipe, epochs_recon=args.epochs_recon, epochs_flow=args.epochs_flow,
                        iters_flow=args.iters_flow,
                        seed=seed, out_dir=out_dir, overwrite=args.overwrite, progress=not args.quiet,
                        log=lambda *a: None, calibration_fraction=args.calibration_fraction,
                        **({"hflip": False, "vflip": False} if args.no_flips else {}))
        info = {"recipe": args.recipe, "epochs_recon": len(res["loss_recon"]), "epochs_flow": len(res["loss_flow"]),
                "final_loss_flow": res["loss_flow"][-1] if res["loss_flow"] else None}
    elif method == "knn":
        model = KNNDetector(input_size=args.image_size, coreset_ratio=args.coreset_ratio,
                            seed=seed).to(args.device)
        res = model.fit(train, out_dir=out_dir, overwrite=args.overwrite, progress=not args.quiet,
                        log=lambda *a: None)
        info = {"memory_size": res["memory_size"], "coreset_ratio": args.coreset_ratio}
    else:
        model = _fastflow_class()(input_size=args.image_size, seed=seed).to(args.device)
        res = model.fit(train, epochs=args.fastflow_epochs, progress=not args.quiet, log=lambda *a: None)
        info = {"epochs": args.fastflow_epochs, "steps": res["steps"], "final_loss": res["loss"][-1]}
    return model, info


def make_unit_data(args, seed: int, category: str) -> None:
    """Write one unit's dataset (``<out>/data/seed<seed>/<category>``); a category whose data
    cannot be made (e.g. a photo too flat for one of ``--defects``) raises ``SystemExit`` naming
    it, the seed and the reason."""
    from dadf_fast.data.synthetic import make_dataset

    try:
        make_dataset(os.path.join(args.out, "data", f"seed{seed}"), categories=_dataset_spec(category, args.set),
                     n_train=args.n_train, n_test_good=args.n_test_good, n_test_defect=args.n_test_defect,
                     image_size=args.image_size, seed=seed, defects=tuple(args.defects))
    except ValueError as exc:
        raise SystemExit(f"--categories: no data for {category} at seed {seed}: {exc} (leave the category out, or "
                         "choose --defects it can hold)") from exc


def run_unit(args, seed: int, category: str) -> dict:
    """Training and evaluation of every method on one category at one seed, on the data
    :func:`make_unit_data` wrote: ``{method: evaluate's public result + fit_seconds,
    eval_seconds, data_seconds and training details}``.  Runs the same way in the main process
    and in a ``--jobs`` worker."""
    from dadf_fast.data import MVTecAD
    from dadf_fast.engine.evaluation import evaluate, public

    if args.threads:
        torch.set_num_threads(args.threads)
    # one root per seed; make_dataset draws each category from (seed, name) alone, so a unit
    # writes exactly what a run over all categories writes
    root = os.path.join(args.out, "data", f"seed{seed}")
    data_s = args.data_seconds[f"{seed}/{category}"]  # run() made every unit's data up front
    if "fastflow" in args.methods:
        _fastflow_class()  # imports anomalib (seconds) before any fit is timed
    train = MVTecAD(root, category, "train", image_size=args.image_size)
    test = MVTecAD(root, category, "test", image_size=args.image_size)
    out = {}
    for method in args.methods:
        t0 = time.perf_counter()
        model, info = _fit(method, train, args, seed, os.path.join(args.out, method, f"seed{seed}", category))
        fit_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        res = public(evaluate(model, test, category=category, device=args.device))
        eval_s = time.perf_counter() - t0
        res.update(fit_seconds=fit_s, eval_seconds=eval_s, data_seconds=data_s, **info)
        out[method] = res
        print(f"{method:<8} {category:<18} seed {seed:<3} image AUROC {res.get('image_auroc', math.nan):.4f}  "
              f"pixel AUROC {res.get('pixel_auroc', math.nan):.4f}  AUPRO {res.get('aupro', math.nan):.4f}  "
              f"fit {fit_s:6.1f} s  eval {eval_s:5.1f} s", flush=True)
        del model
    return out


def _run_units(args, units: list) -> list:
    if args.jobs == 1 or len(units) == 1:
        return [run_unit(args, s, c) for s, c in units]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    jobs = min(args.jobs, len(units))
    if not args.threads:
        args.threads = max(1, (os.cpu_count() or 1) // jobs)
    # spawn, not fork: a forked child inherits torch's OpenMP pool in an undefined state
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(run_unit, args, s, c) for s, c in units]
        return [f.result() for f in futures]


def _mean(values) -> float:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return float(np.mean(vals)) if vals else math.nan


def _over_seeds(per_seed: list) -> dict:
    """One category's results averaged over seeds (``<metric>_std`` across seeds, per-defect means)."""
    out = {}
    for k in METRICS:
        vals = [r[k] for r in per_seed if k in r]
        if vals:
            out[k] = float(np.mean(vals))
            out[f"{k}_std"] = float(np.std(vals))
    for k in ("fit_seconds", "eval_seconds"):
        out[k] = float(np.mean([r[k] for r in per_seed]))
    defects = sorted({d for r in per_seed for d in r.get("per_defect", {})})
    out["per_defect"] = {d: _mean([r.get("per_defect", {}).get(d) for r in per_seed]) for d in defects}
    out["n_seeds"] = len(per_seed)
    return out


def bar_check(results: dict) -> dict | None:
    """DADF against the better of the baselines present, per category (means over seeds):
    whether it is ahead on the mean, the fraction of categories where it is ahead, its largest
    shortfall (with the category) and whether that is <= ``BAR_SHORTFALL``; None without DADF
    or without a baseline."""
    bases = [b for b in BASELINES if b in results]
    if "dadf" not in results or not bases:
        return None
    cats = list(results["dadf"])
    out = {"baselines": bases, "shortfall_limit": BAR_SHORTFALL}
    ahead_all = {c: True for c in cats}
    for k in BAR_METRICS:
        best = {c: max(results[b][c].get(k, math.nan) for b in bases) for c in cats}
        mine = {c: results["dadf"][c].get(k, math.nan) for c in cats}
        short = {c: best[c] - mine[c] for c in cats if not (math.isnan(best[c]) or math.isnan(mine[c]))}
        if not short:
            continue
        ahead = {c: s < 0 for c, s in short.items()}
        for c in cats:
            ahead_all[c] = ahead_all[c] and ahead.get(c, False)
        worst = max(short, key=short.get)
        dadf_mean = _mean(mine.values())
        base_means = {b: _mean(results[b][c].get(k) for c in cats) for b in bases}
        out[k] = {"dadf_mean": dadf_mean, "baseline_means": base_means,
                  "beats_mean": bool(dadf_mean > max(base_means.values())),
                  "fraction_ahead": sum(ahead.values()) / len(ahead),
                  "largest_shortfall": float(short[worst]), "shortfall_category": worst,
                  # 1e-9: a shortfall of exactly the limit passes despite float rounding
                  "shortfall_ok": bool(short[worst] <= BAR_SHORTFALL + 1e-9)}
    out["fraction_ahead_both"] = sum(ahead_all.values()) / len(cats) if cats else math.nan
    checked = [out[k] for k in BAR_METRICS if k in out]
    out["passed"] = bool(checked) and all(v["beats_mean"] and v["shortfall_ok"] for v in checked)
    return out


def summarise(runs: dict, categories: list, seeds: list) -> dict:
    """From ``runs[method][category][str(seed)]``: per-category means over seeds
    (``results``), means over categories (``mean``), worst categories, per-defect image AUROC
    and the bar check."""
    results = {m: {c: _over_seeds([per[c][str(s)] for s in seeds]) for c in categories} for m, per in runs.items()}
    mean, worst, per_defect = {}, {}, {}
    for m, per_cat in results.items():
        mean[m] = {k: _mean(r.get(k) for r in per_cat.values()) for k in METRICS}
        mean[m]["fit_seconds"] = float(sum(r["fit_seconds"] for per in runs[m].values() for r in per.values()))
        mean[m]["eval_seconds"] = float(sum(r["eval_seconds"] for per in runs[m].values() for r in per.values()))
        worst[m] = {}
        for k in BAR_METRICS:
            have = {c: r[k] for c, r in per_cat.items() if k in r}
            if have:
                c = min(have, key=have.get)
                worst[m][k] = {"category": c, "value": have[c]}
        defects = sorted({d for r in per_cat.values() for d in r["per_defect"]})
        per_defect[m] = {d: _mean(r["per_defect"].get(d) for r in per_cat.values()) for d in defects}
    return {"results": results, "mean": mean, "worst": worst, "per_defect": per_defect, "bar": bar_check(results)}


def run(args) -> dict:
    args = _resolve(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    units = [(s, c) for s in args.seeds for c in args.categories]
    t0 = time.perf_counter()
    print(f"set {args.set}: {', '.join(args.categories)}; seeds {args.seeds}; defects {', '.join(args.defects)}; "
          f"{args.n_train} train, {args.n_test_good} good + {args.n_test_defect} defective test images each, "
          f"{args.image_size} px; {len(units)} units on {args.jobs} job(s)", flush=True)
    # every unit's data first, in this process (seconds each): a category that cannot hold the
    # defects stops the run here, not after the other units have trained for an hour
    made = {}
    for s, c in units:
        t1 = time.perf_counter()
        make_unit_data(args, s, c)
        made[f"{s}/{c}"] = time.perf_counter() - t1
    args.data_seconds = made
    outs = _run_units(args, units)
    runs = {m: {c: {} for c in args.categories} for m in args.methods}
    for (s, c), out in zip(units, outs):
        for m, res in out.items():
            runs[m][c][str(s)] = res
    report = {"set": args.set, "categories": list(args.categories), "seeds": list(args.seeds),
              "defects": list(args.defects), "methods": list(args.methods), "runs": runs,
              **summarise(runs, args.categories, args.seeds), "wall_seconds": time.perf_counter() - t0}
    report["settings"] = {k: v for k, v in vars(args).items() if k not in ("json", "quiet", "data_seconds")}
    report["machine"] = {"torch": torch.__version__, "threads": args.threads or torch.get_num_threads(), "jobs": args.jobs,
                         "python": platform.python_version(), "processor": platform.processor() or platform.machine()}
    return report


def merge(paths: list) -> dict:
    """One report from the ``results.json`` of several runs of the same set (seeds or methods
    run apart): their runs joined, then summarised as if one run had produced them.  Raises
    SystemExit when the files mix sets, categories or defect types, hold a (method, category,
    seed) twice, or leave a method without some seed on some category."""
    reports = []
    for path in paths:
        try:
            with open(path) as fh:
                reports.append(json.load(fh))
        except (OSError, ValueError) as exc:
            raise SystemExit(f"--merge: cannot read {path}: {exc}") from None
    first = reports[0]
    for path, r in zip(paths, reports):
        for key in ("set", "defects"):
            if r[key] != first[key]:
                raise SystemExit(f"--merge: {path} has {key} {r[key]!r}, {paths[0]} {first[key]!r}")
        if sorted(r["categories"]) != sorted(first["categories"]):
            raise SystemExit(f"--merge: {path} has categories {r['categories']}, {paths[0]} {first['categories']}")
    runs = {}
    for path, r in zip(paths, reports):
        for m, per in r["runs"].items():
            for c, by_seed in per.items():
                have = runs.setdefault(m, {}).setdefault(c, {})
                for s, res in by_seed.items():
                    if s in have:
                        raise SystemExit(f"--merge: {m} on {c} at seed {s} is in {path} and an earlier file")
                    have[s] = res
    runs = {m: runs[m] for m in METHODS if m in runs}
    categories, seeds = list(first["categories"]), sorted({int(s) for per in runs.values() for c in per.values()
                                                            for s in c})
    missing = [f"{m}/{c}/seed {s}" for m in runs for c in categories for s in seeds if str(s) not in runs[m].get(c, {})]
    if missing:
        raise SystemExit(f"--merge: every method needs every seed on every category; missing {', '.join(missing)}")
    return {"set": first["set"], "categories": categories, "seeds": seeds, "defects": first["defects"],
            "methods": list(runs), "runs": runs, **summarise(runs, categories, seeds), "merged_from": list(paths)}


def _fmt(v, std=None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:.3f}" if std is None else f"{v:.3f} ± {std:.3f}"


def markdown(report: dict) -> str:
    """The results as markdown: per category and method (mean ± std over seeds), the means,
    per seed (with several seeds), the worst categories, image AUROC per defect type and the
    bar check."""
    several = len(report["seeds"]) > 1
    head = "| category | method | image AUROC | pixel AUROC | AUPRO | fit (s) | eval (s) |"
    rows = [head, "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for cat in report["categories"]:
        for m, per_cat in report["results"].items():
            r = per_cat[cat]
            vals = " | ".join(_fmt(r.get(k), r.get(f"{k}_std") if several else None) for k in METRICS)
            rows.append(f"| {cat} | {NAMES[m]} | {vals} | {r['fit_seconds']:.0f} | {r['eval_seconds']:.0f} |")
    for m, mm in report["mean"].items():
        rows.append(f"| **mean** | {NAMES[m]} | " + " | ".join(f"**{_fmt(mm[k])}**" for k in METRICS)
                    + f" | {mm['fit_seconds']:.0f} | {mm['eval_seconds']:.0f} |")
    if several:
        rows += ["", "| category | method | seed | image AUROC | pixel AUROC | AUPRO |",
                 "| --- | --- | ---: | ---: | ---: | ---: |"]
        for cat in report["categories"]:
            for m, per_cat in report["runs"].items():
                for s in report["seeds"]:
                    r = per_cat[cat][str(s)]
                    rows.append(f"| {cat} | {NAMES[m]} | {s} | " + " | ".join(_fmt(r.get(k)) for k in METRICS) + " |")
    rows += ["", "| method | worst image AUROC | worst pixel AUROC |", "| --- | --- | --- |"]
    for m, w in report["worst"].items():
        cells = [f"{_fmt(w[k]['value'])} ({w[k]['category']})" if k in w else "n/a" for k in BAR_METRICS]
        rows.append(f"| {NAMES[m]} | " + " | ".join(cells) + " |")
    defects = sorted({d for pd in report["per_defect"].values() for d in pd})
    if defects:
        methods = list(report["per_defect"])
        rows += ["", "| defect (image AUROC) | " + " | ".join(NAMES[m] for m in methods) + " |",
                 "| --- |" + " ---: |" * len(methods)]
        for d in defects:
            rows.append(f"| {d} | " + " | ".join(_fmt(report["per_defect"][m].get(d)) for m in methods) + " |")
    bar = report.get("bar")
    if bar:
        rows += ["", f"Bar check (DADF against the better of {' / '.join(NAMES[b] for b in bar['baselines'])}, "
                     f"shortfall limit {bar['shortfall_limit']}): **{'passed' if bar['passed'] else 'FAILED'}**", ""]
        for k in BAR_METRICS:
            if k in bar:
                b = bar[k]
                rows.append(f"- {k}: DADF mean {_fmt(b['dadf_mean'])} vs "
                            + ", ".join(f"{NAMES[n]} {_fmt(v)}" for n, v in b["baseline_means"].items())
                            + f" ({'ahead' if b['beats_mean'] else 'BEHIND'}); ahead on "
                            f"{b['fraction_ahead']:.0%} of categories; largest shortfall "
                            f"{b['largest_shortfall']:+.3f} ({b['shortfall_category']})")
        rows.append(f"- ahead on both image and pixel AUROC: {bar['fraction_ahead_both']:.0%} of categories")
    return "\n".join(rows)


def _epochs(v) -> str:
    return "recipe default" if v is None else str(v)


def _print_summary(report: dict) -> None:
    """A trained run's means and worst categories, and its settings as a markdown comment."""
    print()
    for m, mm in report["mean"].items():
        w = report["worst"][m]
        worst = ", ".join(f"{k} {_fmt(w[k]['value'])} ({w[k]['category']})" for k in BAR_METRICS if k in w)
        print(f"mean {m:<8} over {len(report['categories'])} categories x {len(report['seeds'])} seed(s): "
              f"image AUROC {mm['image_auroc']:.4f}  pixel AUROC {mm['pixel_auroc']:.4f}  AUPRO {mm['aupro']:.4f}  "
              f"(fit {mm['fit_seconds']:.0f} s, eval {mm['eval_seconds']:.0f} s); worst: {worst}")
    s = report["settings"]
    print()
    print(f"<!-- benchmarks/accuracy.py: set {s['set']}, seeds {' '.join(map(str, s['seeds']))}, defects "
          f"{'/'.join(s['defects'])}, {s['n_train']} train / {s['n_test_good']} good / {s['n_test_defect']} defective "
          f"test images per category at {s['image_size']} px; DADF recipe {s['recipe']} (epochs recon/flow: "
          f"{_epochs(s['epochs_recon'])}/{_epochs(s['epochs_flow'])}, flow steps {_epochs(s['iters_flow'])}, flow norm "
          f"{s['flow_norm'] or 'preset'}); kNN coreset ratio {s['coreset_ratio']}; FastFlow {s['fastflow_epochs']} "
          f"epochs; torch {report['machine']['torch']}, {report['machine']['threads']} threads x {s['jobs']} job(s), "
          f"wall {report['wall_seconds']:.0f} s -->")


def main(argv=None) -> int:
    args = _build_parser().parse_args(argv)
    if args.merge:  # nothing trained: the merged report goes to --json only when asked
        report, path = merge(args.merge), args.json
    else:
        report, path = run(args), args.json or os.path.join(args.out, "results.json")
        _print_summary(report)
    print(markdown(report))
    if path:
        from dadf_fast.utils.io import atomic_write_text

        atomic_write_text(path, json.dumps(report, indent=2) + "\n")
        print(f"\nresults written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
