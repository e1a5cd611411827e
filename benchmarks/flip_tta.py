"""Flip test-time augmentation of the flow and reconstruction cues, on the models that
``benchmarks/accuracy.py`` kept (issue 17, an experiment; nothing of it is in the model).

The flows train on the images and their mirror images, so the likelihood of a mirrored test
image is an equally valid view of it: averaging the four views' maps (identity, horizontal,
vertical, both; each flipped back) lowers the maps' noise at four times the flow's
inference cost.  The kNN cue stays on the image as given (its memory holds unflipped
patches).

1. ``maps``: per category, the smoothed (sigma 4), uncalibrated flow and reconstruction maps
   of every view, for the training images (fit's own hold-out draw re-made), the held-out
   and the test images: ``<out>/<set>_s<seed>_<category>.npz``.
2. ``score``: with the cue maps of ``benchmarks/rescore.py maps`` (``--maps``; the identity
   view must equal its flow map, checked), image / pixel AUROC over the seeds given of the
   default rule, of the rule with the four views averaged (``tta4``; each view-mean cue
   calibrated on the training images' view means), with identity + horizontal (``tta2``),
   ``pix_tta4``: the image score of the default's map, the anomaly map of ``tta4``; and
   ``tta4_defaultcal``: ``tta4``'s maps with the identity view's calibration.

    python benchmarks/flip_tta.py maps --run RUN --set dev --seed 0 --category coins --out TTA
    python benchmarks/flip_tta.py score --tta TTA --maps MAPS --set dev --seeds 0 1 2 --categories coins coin
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
SIGMA = 4.0
VIEWS = [(), (3,), (2,), (2, 3)]   # identity, horizontal, vertical, both


@torch.no_grad()
def view_maps(model, images) -> dict:
    """``{flow<v>, recon<v>: [N, S, S]}`` for every view ``v`` of :data:`VIEWS`, flipped back."""
    from dadf_fast import ops
    from dadf_fast.models import cues
    from dadf_fast.models.inputs import model_input
    from dadf_fast.models.postprocess import gaussian_smooth

    size = model.input_size
    out = {f"{k}{i}": [] for k in ("flow", "recon") for i in range(len(VIEWS))}
    for chunk in torch.split(images, 8):
        for i, dims in enumerate(VIEWS):
            x = chunk.flip(dims) if dims else chunk
            feats = model.features(model_input(x, model.backbone))
            local, glob = model.reconstruct(feats)
            flow = ops.multiscale_score(model.latents(feats, local, glob), size, backend="torch")[0]
            recon = cues.recon_error_map(feats, local, glob, size)
            if dims:
                flow, recon = flow.flip(dims), recon.flip(dims)
            out[f"flow{i}"].append(flow)
            out[f"recon{i}"].append(recon)
    return {k: gaussian_smooth(torch.cat(v).float(), SIGMA)[:, 0] for k, v in out.items()}


def cmd_maps(args) -> int:
    from torch.utils.data import DataLoader

    from dadf_fast import DADF
    from dadf_fast.data import MVTecAD, collate
    from dadf_fast.models.training import FitConfig, _hold_out

    torch.set_num_threads(args.threads)
    root = os.path.join(args.run, "data", f"seed{args.seed}")
    model = DADF.load(os.path.join(args.run, "dadf", f"seed{args.seed}", args.category, "model.pt"),
                      backend="torch").eval()
    test = MVTecAD(root, args.category, "test")
    batch = next(iter(DataLoader(test, batch_size=len(test), collate_fn=collate)))
    train = MVTecAD(root, args.category, "train")
    images = torch.stack([train[i]["image"] for i in range(len(train))])
    trained, held = _hold_out(images, FitConfig(seed=args.seed), 2, lambda *a: None)
    res = {}
    for split, x in (("calib", trained), ("test", batch["image"]), ("held", held)):
        if x is not None:
            res.update({f"{split}_{k}": v.numpy().astype(np.float16) for k, v in view_maps(model, x).items()})
    os.makedirs(args.out, exist_ok=True)
    np.savez_compressed(os.path.join(args.out, f"{args.set}_s{args.seed}_{args.category.replace('@', '_')}.npz"),
                        **res)
    return 0


# rule name -> (cue weights of the map scored at image level, of the map scored at pixel level)
RULES = {
    "default": ({"flow": 1, "recon": 0.25, "knn": 1}, None),
    "tta4": ({"flow_tta4": 1, "recon_tta4": 0.25, "knn": 1}, None),
    "tta2": ({"flow_tta2": 1, "recon_tta2": 0.25, "knn": 1}, None),
    # image score from the identity view's map (the default's), anomaly map from the four views
    "pix_tta4": ({"flow": 1, "recon": 0.25, "knn": 1}, {"flow_tta4": 1, "recon_tta4": 0.25, "knn": 1}),
    # the four views' map calibrated with the identity view's statistics (the default's calibration)
    "tta4_defaultcal": ({"flow_tta4_dcal": 1, "recon_tta4_dcal": 0.25, "knn": 1}, None),
    "flow": ({"flow": 1}, None),
    "flow_tta4": ({"flow_tta4": 1}, None),
}


def _with_views(d: dict, t: dict, cat: str) -> dict:
    """``d`` (rescore.py's maps) plus the ``_tta4`` / ``_tta2`` view means of ``t`` (this script's)."""
    if not np.array_equal(t["test_flow0"], d["test_flow"]):
        raise SystemExit(f"{cat}: the identity view is not rescore.py's flow map (other models?)")
    for split in ("calib", "test"):
        for cue in ("flow", "recon"):
            views = [t[f"{split}_{cue}{i}"].astype(np.float32) for i in range(len(VIEWS))]
            d[f"{split}_{cue}_tta4"] = np.mean(views, 0)
            d[f"{split}_{cue}_tta2"] = np.mean(views[:2], 0)
            d[f"{split}_{cue}_tta4_dcal"] = d[f"{split}_{cue}" if split == "calib" else f"{split}_{cue}_tta4"]
    return d


def cmd_score(args) -> int:
    """Per category the mean over ``--seeds`` of every rule's image / pixel AUROC; then the
    means, the worst category, and in how many (seed, category) units each rule moved the
    pixel and the image AUROC against the default."""
    sys.path.insert(0, HERE)
    import rescore

    res = {}
    for seed in args.seeds:
        for cat in args.categories:
            name = f"{args.set}_s{seed}_{cat.replace('@', '_')}.npz"
            d = _with_views(rescore.load_maps(args.maps, args.set, seed, cat),
                            dict(np.load(os.path.join(args.tta, name))), cat)
            for rule, (image_rule, pixel_rule) in RULES.items():
                r = rescore.evaluate(d, rescore.combine(d, image_rule))
                if pixel_rule is not None:
                    r["pixel_auroc"] = rescore.evaluate(d, rescore.combine(d, pixel_rule))["pixel_auroc"]
                res[(rule, seed, cat)] = (r["image_auroc"], r["pixel_auroc"])
    print(f"image / pixel AUROC, {args.set}, mean of seeds {args.seeds}")
    print("| rule | " + " | ".join(args.categories) + " | mean | worst | pixel up / down | image up / down |")
    print("| --- |" + " ---: |" * (len(args.categories) + 4))
    for rule in RULES:
        per_cat = np.array([np.mean([res[(rule, s, c)] for s in args.seeds], 0) for c in args.categories])
        diff = np.array([np.subtract(res[(rule, s, c)], res[("default", s, c)])
                         for s in args.seeds for c in args.categories])
        cells = [f"{i:.3f} / {p:.3f}" for i, p in per_cat]
        cells += [f"{per_cat[:, 0].mean():.3f} / {per_cat[:, 1].mean():.3f}",
                  f"{per_cat[:, 0].min():.3f} / {per_cat[:, 1].min():.3f}",
                  f"{(diff[:, 1] > 0).sum()} / {(diff[:, 1] < 0).sum()}",
                  f"{(diff[:, 0] > 0).sum()} / {(diff[:, 0] < 0).sum()}"]
        print(f"| {rule} | " + " | ".join(cells) + " |")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("maps")
    m.add_argument("--run", required=True, help="an accuracy.py --out folder")
    m.add_argument("--set", required=True)
    m.add_argument("--seed", type=int, required=True)
    m.add_argument("--category", required=True)
    m.add_argument("--out", required=True)
    m.add_argument("--threads", type=int, default=1)
    s = sub.add_parser("score")
    s.add_argument("--tta", required=True, help="the maps folder of this script")
    s.add_argument("--maps", required=True, help="rescore.py's maps folder")
    s.add_argument("--set", required=True)
    s.add_argument("--seeds", type=int, nargs="+", required=True)
    s.add_argument("--categories", nargs="+", required=True)
    args = p.parse_args(argv)
    return cmd_maps(args) if args.cmd == "maps" else cmd_score(args)


if __name__ == "__main__":
    sys.exit(main())
