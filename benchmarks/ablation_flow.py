"""Flow-stage ablation used for docs/accuracy.md: flow-input norm, learning rate, scored
scales and training length, with the metrics tracked along one training run.

    python benchmarks/ablation_flow.py --norm channel --lr 2e-3 --evals 48 96 144
    python benchmarks/ablation_flow.py --cats retina --scales 0 1 2 --evals 96 144 --sigmas 2 4 6 8

For each category (the accuracy harness's photos and the demo's textures, data from
:func:`dadf_fast.data.synthetic.make_dataset`, seed 0) the backbone features and a stage-1
reconstructor (``--epochs-recon``, default 4 as the lite recipe) are computed once and cached under ``--out`` as the
flow inputs ``cat(F, R_l, R_g)`` of the train and test images.  A variant then only trains the
flows (Adam, weight decay 1e-5, batch 16, gradient clipping 1.0, seed 0, as
:func:`dadf_fast.models.training.fit`) and evaluates image / pixel AUROC at the epochs of
``--evals`` (scoring as ``DADF.score``: ``multiscale_score`` of the scored scales, Gaussian
smoothing, image score = max).  The shuffling order differs from ``fit``'s (which draws
stage 1's order from the same generator first), so numbers match the harness's only
closely, not exactly.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn

HARNESS = ("coins", "hubble_deep_field", "moon", "retina")
DEMO = ("brick", "grass", "gravel")


def _cache(cat: str, out: str, epochs_recon: int = 4) -> dict:
    from dadf_fast import DADF
    from dadf_fast.data import MVTecAD
    from dadf_fast.data.synthetic import make_dataset

    path = os.path.join(out, f"{cat}_recon{epochs_recon}.pt")
    if os.path.exists(path):
        return torch.load(path, weights_only=False)
    root = os.path.join(out, "data")
    if not os.path.isdir(os.path.join(root, cat)):
        make_dataset(root, categories=[cat], seed=0)
    train, test = MVTecAD(root, cat, "train"), MVTecAD(root, cat, "test")
    torch.manual_seed(0)
    model = DADF("lite", flow_norm="image")
    model.fit(train, recipe="lite", epochs_recon=epochs_recon, epochs_flow=0, progress=False, log=lambda *a: None,
              calibration_fraction=0.0)
    model.eval()

    def flow_inputs(ds):
        imgs = torch.stack([ds[i]["image"] for i in range(len(ds))])
        outs = []
        with torch.no_grad():
            for chunk in torch.split(imgs, 8):
                f = model.features(chunk)
                local, glob = model.reconstructor(f)
                outs.append(model.flow_inputs(f, local, glob))
        return [torch.cat([o[s] for o in outs]) for s in range(3)]

    data = dict(train=flow_inputs(train), test=flow_inputs(test),
                masks=torch.stack([test[i]["mask"] for i in range(len(test))]),
                labels=torch.tensor([int(test[i]["label"]) for i in range(len(test))]))
    torch.save(data, path)
    return data


def _variant(args, data: dict, cat: str) -> dict:
    from dadf_fast import DADF, metrics, ops
    from dadf_fast.models.postprocess import gaussian_smooth

    torch.manual_seed(0)
    model = DADF("lite", pretrained=False, flow_norm=args.norm)
    flows = model.flows
    params = list(flows.parameters())
    opt = torch.optim.Adam(params, lr=args.lr, weight_decay=1e-5)
    gen = torch.Generator().manual_seed(0)
    train, n = data["train"], data["train"][0].shape[0]
    labels, masks = data["labels"].numpy(), data["masks"][:, 0].numpy()
    res = {}

    def evaluate(sigma):
        flows.eval()
        with torch.no_grad():
            zs = [flows[s](data["test"][s], compute_logdet=False)[0] for s in args.scales]
            amap = gaussian_smooth(ops.multiscale_score(zs, 256)[0], sigma)
        flows.train()
        return metrics.auroc(amap.flatten(1).amax(1).numpy(), labels), metrics.pixel_auroc(amap[:, 0].numpy(), masks)

    flows.train()
    for epoch in range(1, max(args.evals) + 1):
        for idx in torch.split(torch.randperm(n, generator=gen), 16):
            loss = sum(ops.flow_nll(*flows[s](train[s][idx])) for s in args.scales).mean()
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
        if epoch in args.evals:
            res[epoch] = {sigma: evaluate(sigma) for sigma in args.sigmas}
    return res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cats", nargs="+", default=list(HARNESS + DEMO))
    p.add_argument("--norm", default="channel", choices=["image", "channel"])
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--scales", type=int, nargs="+", default=[1, 2])
    p.add_argument("--evals", type=int, nargs="+", default=[48, 96, 144], help="epochs (3 steps each) to score at")
    p.add_argument("--sigmas", type=float, nargs="+", default=[4.0], help="smoothing sigmas to score with")
    p.add_argument("--out", default="runs/ablation_flow", help="data and cached flow inputs")
    p.add_argument("--epochs-recon", type=int, default=4, help="stage-1 epochs of the cached reconstructor")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    table = {}
    for cat in args.cats:
        data = _cache(cat, args.out, args.epochs_recon)
        t0 = time.perf_counter()
        table[cat] = _variant(args, data, cat)
        print(f"{cat:<18} " + "  ".join(f"e{e} s{s:g}: {i:.3f}/{px:.3f}" for e, r in table[cat].items()
                                        for s, (i, px) in r.items()) + f"  ({time.perf_counter() - t0:.0f} s)",
              flush=True)
    for name, group in (("harness", HARNESS), ("demo", DEMO)):
        cats = [c for c in args.cats if c in group]
        for e in sorted(args.evals):
            for s in args.sigmas:
                if cats:
                    img = np.mean([table[c][e][s][0] for c in cats])
                    pix = np.mean([table[c][e][s][1] for c in cats])
                    print(f"mean {name} ({len(cats)}) epoch {e} sigma {s:g}: image AUROC {img:.3f}  pixel AUROC {pix:.3f}")
    print(f"settings: norm={args.norm} lr={args.lr} scales={args.scales} epochs_recon={args.epochs_recon}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
