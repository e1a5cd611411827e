"""Rescore trained DADF models with other cue rules, without retraining (issue 17).

``benchmarks/accuracy.py`` keeps every model it trains (``<out>/dadf/seed<S>/<category>/model.pt``)
and its data (``<out>/data/seed<S>``).  This script reloads them and asks what another way
of combining DADF's score cues would have scored, on the same models and images:

1. ``maps``: per category, the smoothed (sigma 4), uncalibrated cue maps of the test images,
   of the normal images the model was trained on (``fit``'s own hold-out draw, checked
   against the model's kNN memory; the kNN maps leave-one-out, as ``fit`` calibrates) and of
   the held-out images (since the hold-out joined the kNN memory: the kNN maps over all the
   normal images, leave-one-out, for ``calib_`` and ``held_``), saved as ``<maps>/<set>_s<S>_<category>.npz``.  Cues:

   - ``flow`` (the model's flow cue), ``flow0/1/2`` (each scale's ``1 - exp(-0.5 mean_c z^2)``);
   - ``recon`` (the reconstruction error), ``knn`` (the model's patch distance);
   - ``knn4``: the patch distance on an embedding that adds the stride-4 features (2x2 then
     3x3 average-pooled onto the stride-8 grid; 24 + 152 dims), memory from the same images.

   ``knnall`` (for models trained before the hold-out joined the kNN memory): adds
   ``<maps>/<set>_s<S>_<category>_knnall.npz``, the kNN maps against the memory of every
   normal image (trained and held out; ``calib_knnall`` leave-one-out over all of them), what
   ``fit`` has done since 2026-12-03; ``score`` reads it beside the maps (rule ``knnall``).

2. ``score``: every rule of ``--rules`` (a cue -> weight dict; each cue calibrated as
   :mod:`dadf_fast.models.cues` does: minus its mean on the training images, divided by their
   mean per-image maximum above it), image / pixel AUROC per category, averaged over the
   seeds given, against the baselines of accuracy.py's ``results.json`` files; image AUROC
   per defect type.

    python benchmarks/rescore.py maps --run runs/acc --set dev --seed 1 --maps /tmp/maps --jobs 2
    python benchmarks/rescore.py score --maps /tmp/maps --set dev --seeds 0 1 \\
        --results A/results.json B/results.json --rules default knn0.5
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import numpy as np
import torch

SIGMA = 4.0
RULES = {
    "default": {"flow": 1.0, "recon": 0.25, "knn": 1.0},       # the lite preset before 2026-12-03
    "knn0.5": {"flow": 1.0, "recon": 0.25, "knn": 0.5},
    "knn0.25": {"flow": 1.0, "recon": 0.25, "knn": 0.25},
    "knn0.75": {"flow": 1.0, "recon": 0.25, "knn": 0.75},
    "knn1.5": {"flow": 1.0, "recon": 0.25, "knn": 1.5},
    "knn4": {"flow": 1.0, "recon": 0.25, "knn4": 1.0},
    "knnall": {"flow": 1.0, "recon": 0.25, "knnall": 1.0},     # the hold-out in the kNN memory (default since)
    "knn4_0.5": {"flow": 1.0, "recon": 0.25, "knn4": 0.5},
    "flow": {"flow": 1.0},
    "knn": {"knn": 1.0},
    "recon": {"recon": 1.0},
    "flow0": {"flow0": 1.0}, "flow1": {"flow1": 1.0}, "flow2": {"flow2": 1.0},
    "scales": {"flow0": 1.0, "flow1": 1.0, "flow2": 1.0, "recon": 0.25, "knn": 1.0},
    "scales/3": {"flow0": 1 / 3, "flow1": 1 / 3, "flow2": 1 / 3, "recon": 0.25, "knn": 1.0},
}


def _sets():
    from dadf_fast.data.harness import HARNESS_DEV, HARNESS_VALIDATION

    return {"dev": tuple(HARNESS_DEV), "validation": tuple(HARNESS_VALIDATION)}


def _embedding4(feats) -> torch.Tensor:
    """``[B, 24 + 152, S/8, S/8]``: the stride-4 map pooled onto the stride-8 grid, then the
    kNN cue's own embedding."""
    import torch.nn.functional as F

    from dadf_fast.models import cues

    f4 = F.avg_pool2d(F.avg_pool2d(feats[0].float(), 2), 3, stride=1, padding=1)
    return torch.cat((f4, cues.patch_embedding(feats)), 1)


@torch.no_grad()
def _maps(model, images, memory=None, memory4=None) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """Smoothed cue maps ``{cue: [N, S, S]}`` of ``images``, and their two embeddings; without
    memories the kNN maps are leave-one-out among ``images``."""
    from dadf_fast import ops
    from dadf_fast.models import cues
    from dadf_fast.models.inputs import model_input
    from dadf_fast.models.postprocess import gaussian_smooth

    size = model.input_size
    raw = {k: [] for k in ("flow", "flow0", "flow1", "flow2", "recon")}
    emb, emb4 = [], []
    for chunk in torch.split(images, 8):
        feats = model.features(model_input(chunk, model.backbone))
        local, glob = model.reconstruct(feats)
        zs = model.latents(feats, local, glob)
        raw["flow"].append(ops.multiscale_score(zs, size, backend="torch")[0])
        for s, z in enumerate(zs):
            raw[f"flow{s}"].append(ops.multiscale_score([z], size, backend="torch")[0])
        raw["recon"].append(cues.recon_error_map(feats, local, glob, size))
        emb.append(cues.patch_embedding(feats))
        emb4.append(_embedding4(feats))
    emb, emb4 = torch.cat(emb), torch.cat(emb4)
    out = {k: torch.cat(v) for k, v in raw.items() if v}
    if memory is None:
        out["knn"], out["knn4"] = cues.knn_leave_one_out(emb, size), cues.knn_leave_one_out(emb4, size)
    else:
        out["knn"] = cues.knn_map(emb, memory, size, backend="torch")
        out["knn4"] = cues.knn_map(emb4, memory4, size, backend="torch")
    return {k: gaussian_smooth(v.float(), SIGMA)[:, 0] for k, v in out.items()}, emb, emb4


def _load(run: str, seed: int, category: str):
    """``(model, test batch, training images [40, 3, S, S])`` of one unit of an accuracy.py run."""
    from torch.utils.data import DataLoader

    from dadf_fast import DADF
    from dadf_fast.data import MVTecAD, collate

    torch.set_num_threads(1)
    root = os.path.join(run, "data", f"seed{seed}")
    model = DADF.load(os.path.join(run, "dadf", f"seed{seed}", category, "model.pt"), backend="torch").eval()
    test = MVTecAD(root, category, "test")
    batch = next(iter(DataLoader(test, batch_size=len(test), collate_fn=collate)))
    train = MVTecAD(root, category, "train")
    return model, batch, torch.stack([train[i]["image"] for i in range(len(train))])


def dump_category(run: str, seed: int, category: str, path: str) -> None:
    """Write one category's cue maps (module docstring) to ``path`` (npz, float16 maps)."""
    from dadf_fast.models import cues
    from dadf_fast.models.training import FitConfig, _hold_out

    model, batch, images = _load(run, seed, category)
    trained, held = _hold_out(images, FitConfig(seed=seed), 2, lambda *a: None)
    n, held_maps = trained.shape[0], {}
    calib, emb, emb4 = _maps(model, trained)
    if held is not None and model.cue_memory.shape[0] > n * emb.shape[-2:].numel():
        # models since 2026-12-03 (cues.fit_calibration): the held-out images joined the kNN memory
        # and its leave-one-out calibration; the other cues are calibrated on the trained images
        both, emb, emb4 = _maps(model, torch.cat((trained, held)))
        calib = {k: (v if k.startswith("knn") else v[:n]) for k, v in both.items()}
        held_maps = {k: v[n:] for k, v in both.items()}  # kNN: each without its own patches
    memory, memory4 = cues.flatten_patches(emb), cues.flatten_patches(emb4)
    if model.cue_memory.shape != memory.shape or (model.cue_memory - memory).abs().max() > 1e-3:
        raise RuntimeError(f"{category}: the model's kNN memory is not that of the re-drawn training images "
                           "(another calibration_fraction or seed than fit's defaults?)")
    test_maps = _maps(model, batch["image"], memory, memory4)[0]
    if held is not None and not held_maps:
        held_maps = _maps(model, held, memory, memory4)[0]
    np.savez_compressed(
        path, labels=np.asarray(batch["label"]), masks=(batch["mask"][:, 0].float() > 0.5).numpy(),
        defects=np.array(list(batch["defect"])),
        **{f"test_{k}": v.numpy().astype(np.float16) for k, v in test_maps.items()},
        **{f"calib_{k}": v.numpy().astype(np.float16) for k, v in calib.items()},
        **{f"held_{k}": v.numpy().astype(np.float16) for k, v in held_maps.items()})


def dump_knn_all(run: str, seed: int, category: str, path: str) -> None:
    """Write ``test_knnall`` / ``calib_knnall`` (module docstring) of one category to ``path``."""
    from dadf_fast.models import cues
    from dadf_fast.models.inputs import model_input
    from dadf_fast.models.postprocess import gaussian_smooth

    model, batch, images = _load(run, seed, category)

    def emb(x):
        with torch.no_grad():
            return torch.cat([cues.patch_embedding(model.features(model_input(c, model.backbone)))
                              for c in torch.split(x, 8)])

    e_train, size = emb(images), model.input_size
    test_map = cues.knn_map(emb(batch["image"]), cues.flatten_patches(e_train), size, backend="torch")
    calib = cues.knn_leave_one_out(e_train, size)
    smooth = lambda m: gaussian_smooth(m.float(), SIGMA)[:, 0].numpy().astype(np.float16)  # noqa: E731
    np.savez_compressed(path, test_knnall=smooth(test_map), calib_knnall=smooth(calib))


def combine(d: dict, rule: dict, split: str = "test") -> np.ndarray:
    """Sum over ``rule``'s cues of weight x (map - mean) / spread, calibrated on ``calib_*``."""
    from dadf_fast.models.cues import calibration

    total = 0.0
    for cue, w in rule.items():
        mean, spread = calibration(torch.from_numpy(d[f"calib_{cue}"].astype(np.float32))[:, None])
        total = total + w * (d[f"{split}_{cue}"].astype(np.float32) - mean) / spread
    return total


def evaluate(d: dict, amap: np.ndarray) -> dict:
    """Image and pixel AUROC of the maps ``amap [N, S, S]``, and image AUROC per defect type."""
    from dadf_fast import metrics

    scores, labels = amap.reshape(len(amap), -1).max(1), d["labels"]
    out = {"image_auroc": metrics.auroc(scores, labels), "pixel_auroc": metrics.pixel_auroc(amap, d["masks"])}
    good = scores[labels == 0]
    for kind in sorted(set(d["defects"].tolist()) - {"good"}):
        pos = scores[d["defects"] == kind]
        out[kind] = metrics.auroc(np.r_[pos, good], np.r_[np.ones(len(pos)), np.zeros(len(good))])
    return out


def _maps_path(maps: str, name: str, seed: int, category: str) -> str:
    return os.path.join(maps, f"{name}_s{seed}_{category.replace('@', '_')}.npz")


def load_maps(maps: str, name: str, seed: int, category: str) -> dict:
    """The saved maps of one category and seed, with its ``_knnall`` side file where there is one."""
    path = _maps_path(maps, name, seed, category)
    d = dict(np.load(path))
    if os.path.exists(path.replace(".npz", "_knnall.npz")):
        d.update(np.load(path.replace(".npz", "_knnall.npz")))
    return d


def cmd_maps(args) -> int:
    os.makedirs(args.maps, exist_ok=True)
    suffix = "_knnall.npz" if args.cmd == "knnall" else ".npz"
    target = lambda c: _maps_path(args.maps, args.set, args.seed, c).replace(".npz", suffix)  # noqa: E731
    todo = [c for c in (args.categories or _sets()[args.set]) if not os.path.exists(target(c))]
    procs, failed = [], []
    for cat in todo:
        while len(procs) >= args.jobs:
            procs = _reap(procs, failed)
        cmd = [sys.executable, __file__, "_" + args.cmd, args.run, str(args.seed), cat, target(cat)]
        procs.append((cat, subprocess.Popen(cmd)))
    while procs:
        procs = _reap(procs, failed)
    if failed:
        print(f"failed: {' '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


def _reap(procs, failed):
    import time

    while True:
        left = []
        for cat, p in procs:
            if p.poll() is None:
                left.append((cat, p))
            elif p.returncode:
                failed.append(cat)
            else:
                print(f"{cat}: maps written", flush=True)
        if len(left) < len(procs):
            return left
        time.sleep(1)


def _baselines(paths) -> dict:
    """``{(method, seed, category): (image, pixel)}`` from accuracy.py result files."""
    out = {}
    for path in paths:
        report = json.load(open(path))
        for method, cats in report["runs"].items():
            for cat, seeds in cats.items():
                for seed, r in seeds.items():
                    out[(method, int(seed), cat)] = (r["image_auroc"], r["pixel_auroc"])
    return out


def cmd_score(args) -> int:
    cats = args.categories or _sets()[args.set]
    base = _baselines(args.results or [])
    rules = {r: RULES[r] for r in args.rules}
    res = {}
    for seed in args.seeds:
        for cat in cats:
            d = load_maps(args.maps, args.set, seed, cat)
            for name, rule in rules.items():
                res[(name, seed, cat)] = evaluate(d, combine(d, rule))

    def mean_over_seeds(get):
        return np.mean([get(s) for s in args.seeds], axis=0)

    rows = []
    for method in ("fastflow", "knn"):
        if all((method, s, c) in base for s in args.seeds for c in cats):
            rows.append((method, {c: mean_over_seeds(lambda s: base[(method, s, c)]) for c in cats}))
    for name in rules:
        rows.append((name, {c: mean_over_seeds(lambda s: (res[(name, s, c)]["image_auroc"],
                                                          res[(name, s, c)]["pixel_auroc"])) for c in cats}))
    best = {c: np.max([v[c] for m, v in rows if m in ("fastflow", "knn")], axis=0) for c in cats} \
        if len(rows) > len(rules) else None
    print(f"image / pixel AUROC, mean over seeds {args.seeds}")
    print("| rule | " + " | ".join(cats) + " | mean | worst | ahead image / pixel | largest shortfall |")
    print("|---" * (len(cats) + 5) + "|")
    for name, v in rows:
        cells = [f"{v[c][0]:.3f} / {v[c][1]:.3f}" for c in cats]
        mean = np.mean([v[c] for c in cats], axis=0)
        worst = np.min([v[c] for c in cats], axis=0)
        tail = " | |"
        if best is not None and name not in ("fastflow", "knn"):
            ahead = [sum(v[c][i] > best[c][i] + 1e-9 for c in cats) for i in (0, 1)]
            short = max(max(best[c][0] - v[c][0], best[c][1] - v[c][1]) for c in cats)
            tail = f" | {ahead[0]}/{len(cats)}, {ahead[1]}/{len(cats)} | {short:.3f} |"
        print(f"| {name} | " + " | ".join(cells) + f" | {mean[0]:.3f} / {mean[1]:.3f} | {worst[0]:.3f} / {worst[1]:.3f}" + tail)
    print("\nimage AUROC per defect type (mean over categories and seeds)")
    for name in rules:
        kinds = sorted({k for (n, s, c), r in res.items() if n == name for k in r} - {"image_auroc", "pixel_auroc"})
        per = {k: np.mean([r[k] for (n, s, c), r in res.items() if n == name and k in r]) for k in kinds}
        print(f"{name}: " + ", ".join(f"{k} {v:.3f}" for k, v in per.items()))
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in (["_maps"], ["_knnall"]):
        (dump_category if argv[0] == "_maps" else dump_knn_all)(argv[1], int(argv[2]), argv[3], argv[4])
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("maps", help="write the cue maps of accuracy.py's trained DADF models")
    k = sub.add_parser("knnall", help="add the kNN maps with every normal image in the memory")
    for q in (m, k):
        q.add_argument("--run", required=True, help="accuracy.py's --out of the run")
        q.add_argument("--seed", type=int, required=True)
        q.add_argument("--jobs", type=int, default=1)
    s = sub.add_parser("score", help="score rules from the saved maps")
    s.add_argument("--seeds", type=int, nargs="+", required=True)
    s.add_argument("--rules", nargs="+", default=["default"], choices=sorted(RULES))
    s.add_argument("--results", nargs="*", help="accuracy.py results.json files holding the baselines")
    for q in (m, k, s):
        q.add_argument("--set", choices=("dev", "validation"), required=True)
        q.add_argument("--categories", nargs="+", default=None)
        q.add_argument("--maps", required=True, help="folder of the maps")
    args = p.parse_args(argv)
    return cmd_score(args) if args.cmd == "score" else cmd_maps(args)


if __name__ == "__main__":
    sys.exit(main())
