"""Ablation for issue 17 (accuracy that generalises): DADF variants and score cues against
FastFlow (anomalib, same lite0 features) and kNN on the wider harness
(:data:`dadf_fast.data.harness.HARNESS_DEV`, every defect type).

Per category (one process each, ``--jobs`` at a time, one torch thread each), on the same
data:

* the baselines: ``fastflow`` (:mod:`fastflow_baseline`, anomalib's model and recipe) and
  ``knn`` (:class:`dadf_fast.models.knn.KNNDetector`);
* each DADF variant of ``--variants`` (see :data:`VARIANTS`: flow subnet, flow input, norm,
  scored scales, schedule), trained once, then scored several ways from its cue maps:

  - ``flow``: DADF's own map (the flows' likelihood, smoothed);
  - ``flow+recon``: plus the dual-attention reconstruction error ``|F - R_l|^2 + |F - R_g|^2``;
  - ``flow+knn``: plus the nearest-neighbour patch distance;
  - ``flow+recon+knn``: all three.

  Cues are combined after calibration on the normal training images: each map minus its
  mean pixel value, divided by (mean per-image max - mean pixel value) on those images
  (kNN distances of a training image are measured against the other images' patches).

    python benchmarks/ablation_generalise.py --jobs 2 --json /tmp/abl.json
    python benchmarks/ablation_generalise.py --categories coin fabric --variants lite ff
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

from dadf_fast.models import cues as cue_maps

HERE = os.path.dirname(os.path.abspath(__file__))

# name -> (DADF constructor overrides, fit overrides); every variant is built with the flow
# cue alone (score_cues=("flow",)): this script computes and combines the cues itself
_FF_FIT = dict(iters_flow=375, batch_size_flow=8, lr_flow=1e-3, grad_clip=1.0)
VARIANTS = {
    # the lite preset and recipe before issue 17: depthwise flows on cat(F, R_l, R_g), per-position
    # norm, strides 8/16, 432 steps at Adam 2e-3, batch 16, clipping 1
    "lite_v1": (dict(flow_norm="channel", flow_subnet="depthwise", flow_input="concat", score_scales=(1, 2),
                     smooth_sigma=4.0),
                dict(iters_flow=432, batch_size_flow=16, lr_flow=2e-3, grad_clip=1.0)),
    # FastFlow's flows inside DADF: full-conv subnets on the features alone, [C,H,W] LayerNorm,
    # all three scales, anomalib's schedule (Adam 1e-3, batch 8, 375 steps) with gradient-norm
    # clipping 1, both stages on the images and their mirror images (the lite recipe's flips):
    # the lite preset and recipe now
    "ff": (dict(flow_subnet="conv", flow_input="features", flow_norm="image", score_scales=(0, 1, 2),
                smooth_sigma=4.0), _FF_FIT),
    # the same without the mirror images (the default before 2026-12-03; docs/accuracy.md)
    "ff_noflip": (dict(flow_subnet="conv", flow_input="features", flow_norm="image", score_scales=(0, 1, 2),
                       smooth_sigma=4.0), dict(_FF_FIT, hflip=False, vflip=False)),
    # one factor of lite_v1 at a time on top of "ff" (what made the old flows weaker; measured
    # before the lite recipe had its flips, which they now get too):
    # the flow input cat(F, R_l, R_g),
    "ff_concat": (dict(flow_subnet="conv", flow_input="concat", flow_norm="image", score_scales=(0, 1, 2),
                       smooth_sigma=4.0), _FF_FIT),
    # the depthwise subnets,
    "ff_depthwise": (dict(flow_subnet="depthwise", flow_input="features", flow_norm="image", score_scales=(0, 1, 2),
                          smooth_sigma=4.0), _FF_FIT),
    # the per-position (channel) norm,
    "ff_channelnorm": (dict(flow_subnet="conv", flow_input="features", flow_norm="channel", score_scales=(0, 1, 2),
                            smooth_sigma=4.0), _FF_FIT),
    # the scored scales 8/16 (the stride-4 flow is neither trained nor scored),
    "ff_s816": (dict(flow_subnet="conv", flow_input="features", flow_norm="image", score_scales=(1, 2),
                     smooth_sigma=4.0), _FF_FIT),
    # lite_v1's schedule (432 steps at Adam 2e-3, batch 16)
    "ff_v1schedule": (dict(flow_subnet="conv", flow_input="features", flow_norm="image", score_scales=(0, 1, 2),
                           smooth_sigma=4.0), dict(iters_flow=432, batch_size_flow=16, lr_flow=2e-3, grad_clip=1.0)),
}
CUE_SETS = (("flow",), ("flow", "recon"), ("flow", "knn"), ("flow", "recon", "knn"), ("recon",), ("knn",))
SIGMA = 4.0


def _maps_metrics(maps: np.ndarray, labels: np.ndarray, masks: np.ndarray) -> dict:
    from dadf_fast import metrics

    scores = maps.reshape(len(maps), -1).max(1)
    return {"image_auroc": metrics.auroc(scores, labels), "pixel_auroc": metrics.pixel_auroc(maps, masks)}


def _per_defect(maps, labels, defects) -> dict:
    from dadf_fast import metrics

    scores = maps.reshape(len(maps), -1).max(1)
    good = scores[labels == 0]
    out = {}
    for d in sorted(set(defects) - {"good"}):
        pos = scores[np.array([x == d for x in defects])]
        out[d] = metrics.auroc(np.concatenate([pos, good]), np.r_[np.ones(len(pos)), np.zeros(len(good))])
    return out


@torch.no_grad()
def dadf_cues(model, images: torch.Tensor, knn, batch: int = 8) -> dict:
    """Raw cue maps ``[N, S, S]`` (unsmoothed) of ``images``: flow, recon, knn."""
    from dadf_fast.models.inputs import model_input

    out = {"flow": [], "recon": [], "knn": []}
    size = model.input_size
    for chunk in torch.split(images, batch):
        x = model_input(chunk, model.backbone)
        feats = model.features(x)
        local, glob = model.reconstruct(feats)
        zs = model.latents(feats, local, glob)
        out["flow"].append(model.score(zs, smooth_sigma=0.0)["anomaly_map"][:, 0])
        out["recon"].append(cue_maps.recon_error_map(feats, local, glob, size)[:, 0])
        out["knn"].append(knn(chunk, smooth_sigma=0.0)["anomaly_map"][:, 0])
    return {k: torch.cat(v) for k, v in out.items()}


@torch.no_grad()
def knn_leave_one_out(knn, images: torch.Tensor) -> torch.Tensor:
    """kNN maps ``[N, S, S]`` of training images against the memory of the *other* training images."""
    from dadf_fast.models.inputs import model_input

    emb = torch.cat([knn.embed(model_input(c, knn.backbone)) for c in torch.split(images, 8)])
    return cue_maps.knn_leave_one_out(emb, images.shape[-1])[:, 0]


def _smooth(m: torch.Tensor) -> torch.Tensor:
    from dadf_fast.models.postprocess import gaussian_smooth

    return gaussian_smooth(m[:, None], SIGMA)[:, 0]


def combine(test: dict, calib: dict, cues) -> np.ndarray:
    """Sum of the calibrated, smoothed cue maps of ``cues``."""
    total = 0.0
    for k in cues:
        t, c = _smooth(test[k]), _smooth(calib[k])
        mu = c.mean()
        spread = c.flatten(1).amax(1).mean() - mu
        total = total + (t - mu) / spread.clamp_min(1e-12)
    return total.numpy()


def run_category(cat: str, args) -> dict:
    from dadf_fast import DADF
    from dadf_fast.data import MVTecAD
    from dadf_fast.data.harness import harness_defects
    from dadf_fast.data.synthetic import make_dataset
    from dadf_fast.models.knn import KNNDetector

    torch.set_num_threads(args.threads)
    root = os.path.join(args.out, "data")
    make_dataset(root, categories=[cat], defects=harness_defects(cat), n_train=args.n_train,
                 n_test_good=args.n_test_good, n_test_defect=args.n_test_defect, seed=args.seed)
    train = MVTecAD(root, cat, "train")
    test = MVTecAD(root, cat, "test")
    from torch.utils.data import DataLoader
    from dadf_fast.data import collate

    batch = next(iter(DataLoader(test, batch_size=len(test), collate_fn=collate)))
    timgs = batch["image"]
    labels = np.asarray(batch["label"])
    masks = (batch["mask"][:, 0].float() > 0.5).numpy()
    defects = list(batch["defect"])
    train_imgs = torch.stack([train[i]["image"] for i in range(len(train))])
    res = {"category": cat, "baselines": {}, "dadf": {}}

    torch.manual_seed(args.seed)
    knn = KNNDetector(seed=args.seed)
    t0 = time.perf_counter()
    knn.fit(train_imgs, progress=False, log=None)
    knn_fit = time.perf_counter() - t0
    kmaps = knn.predict(timgs)["anomaly_map"][:, 0].numpy()
    res["baselines"]["knn"] = dict(_maps_metrics(kmaps, labels, masks), fit_s=knn_fit,
                                   per_defect=_per_defect(kmaps, labels, defects))
    knn_calib = knn_leave_one_out(knn, train_imgs)

    if "fastflow" in args.baselines:
        sys.path.insert(0, HERE)
        from fastflow_baseline import FastFlowBaseline

        torch.manual_seed(args.seed)
        ff = FastFlowBaseline(seed=args.seed)
        t0 = time.perf_counter()
        ff.fit(train_imgs, progress=False, log=lambda *a: None, **({"epochs": 1} if args.smoke else {}))
        ff_fit = time.perf_counter() - t0
        fmaps = ff.predict(timgs)["anomaly_map"][:, 0].numpy()
        res["baselines"]["fastflow"] = dict(_maps_metrics(fmaps, labels, masks), fit_s=ff_fit,
                                            per_defect=_per_defect(fmaps, labels, defects))
        del ff

    for name in args.variants:
        ctor, fit_kw = VARIANTS[name]
        torch.manual_seed(args.seed)
        model = DADF("lite", score_cues=("flow",), **ctor)
        t0 = time.perf_counter()
        if args.smoke:
            fit_kw = dict(fit_kw, iters_flow=3, epochs_recon=1)
        model.fit(train_imgs, recipe="lite", seed=args.seed, progress=False, log=None,
                  calibration_fraction=0.0, **fit_kw)
        fit_s = time.perf_counter() - t0
        model.eval()
        test_c = dadf_cues(model, timgs, knn)
        calib = dadf_cues(model, train_imgs, knn)
        calib["knn"] = knn_calib
        row = {"fit_s": fit_s}
        if args.save_maps:
            # smoothed cue maps (float16) for trying other combinations offline
            os.makedirs(args.save_maps, exist_ok=True)
            np.savez_compressed(
                os.path.join(args.save_maps, f"{cat.replace('@', '_')}_{name}.npz"),
                labels=labels, masks=masks, defects=np.array(defects),
                **{f"test_{k}": _smooth(v).numpy().astype(np.float16) for k, v in test_c.items()},
                **{f"calib_{k}": _smooth(v).numpy().astype(np.float16) for k, v in calib.items()},
                **({"test_fastflow": fmaps.astype(np.float16)} if "fastflow" in args.baselines else {}))
        for cues in CUE_SETS:
            maps = combine(test_c, calib, cues)
            row["+".join(cues)] = dict(_maps_metrics(maps, labels, masks), per_defect=_per_defect(maps, labels, defects))
        res["dadf"][name] = row
        del model
    return res


def _child(cat: str, args, path: str) -> subprocess.Popen:
    cmd = [sys.executable, os.path.abspath(__file__), "--categories", cat, "--jobs", "1", "--json", path,
           "--variants", *args.variants, "--baselines", *args.baselines, "--out", args.out, "--seed", str(args.seed),
           "--threads", str(args.threads), "--n-train", str(args.n_train), "--n-test-good", str(args.n_test_good),
           "--n-test-defect", str(args.n_test_defect)] + (["--smoke"] if args.smoke else []) \
        + (["--save-maps", args.save_maps] if args.save_maps else [])
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL)


def summary(results: list, variants) -> str:
    lines = []
    methods = [("fastflow", lambda r: r["baselines"].get("fastflow")), ("knn", lambda r: r["baselines"]["knn"])]
    for v in variants:
        for cues in CUE_SETS:
            key = "+".join(cues)
            methods.append((f"{v}:{key}", lambda r, v=v, key=key: r["dadf"][v][key]))
    cats = [r["category"] for r in results]
    lines.append("| method | " + " | ".join(cats) + " | mean | worst |")
    lines.append("| --- |" + " ---: |" * (len(cats) + 2))
    for name, get in methods:
        vals = [get(r) for r in results]
        if any(v is None for v in vals):
            continue
        img = [v["image_auroc"] for v in vals]
        pix = [v["pixel_auroc"] for v in vals]
        cells = [f"{a:.3f}/{b:.3f}" for a, b in zip(img, pix)]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | **{np.mean(img):.3f}/{np.mean(pix):.3f}** | "
                     f"{min(img):.3f}/{min(pix):.3f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    from dadf_fast.data.harness import HARNESS_DEV

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--categories", nargs="+", default=list(HARNESS_DEV))
    p.add_argument("--variants", nargs="+", default=["ff"], choices=sorted(VARIANTS))
    p.add_argument("--baselines", nargs="*", default=["fastflow"], choices=["fastflow"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-train", type=int, default=40)
    p.add_argument("--n-test-good", type=int, default=16)
    p.add_argument("--n-test-defect", type=int, default=32)
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=os.path.join(tempfile.gettempdir(), "ablation_generalise"))
    p.add_argument("--json")
    p.add_argument("--save-maps", help="write each category's smoothed cue maps here (npz)")
    p.add_argument("--smoke", action="store_true", help="1 epoch / 3 steps of training: checks the script runs")
    args = p.parse_args(argv)
    if args.jobs > 1 or (args.json is None and len(args.categories) > 1):
        sys.path.insert(0, HERE)
        from category_jobs import run_categories

        results = run_categories(args.categories, args.jobs, lambda cat, path: _child(cat, args, path))
    else:
        results = [run_category(c, args) for c in args.categories]
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)
    print(summary(results, args.variants))
    return 0


if __name__ == "__main__":
    sys.exit(main())
