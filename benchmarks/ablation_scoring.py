"""Scoring/recipe ablation on the demo data (the scoring table of docs/accuracy.md).

Usage: python benchmarks/ablation_scoring.py CATEGORY EPOCHS_RECON EPOCHS_FLOW LR_FLOW DEPTH HFLIP VFLIP

Trains DADF lite on one demo category (data generated with dadf_fast.data.synthetic.make_dataset
under /tmp/exp/demo) and prints image AUROC (max and top-1% mean) and pixel AUROC for several
ways of turning the flow latents / reconstruction errors into a map, raw and smoothed (sigma 4).
"""
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from dadf_fast import metrics
from dadf_fast.data import MVTecAD
from dadf_fast.models import DADF
from dadf_fast.models.postprocess import gaussian_smooth

ROOT = "/tmp/exp/demo"


def per_scale_maps(model, images):
    """Per scale: the NLL map ``0.5 mean_c z^2`` and the reconstruction error map, ``[N, 1, h, w]`` each."""
    nll, rec = [], []
    with torch.no_grad():
        for chunk in torch.split(images, 8):
            feats = model.features(chunk)
            local, glob = model.reconstructor(feats)
            zs = [flow(x)[0] for flow, x in zip(model.flows, model.flow_inputs(feats, local, glob))]
            nll.append([0.5 * (z ** 2).mean(1, keepdim=True) for z in zs])
            rec.append([((f - lo) ** 2).mean(1, keepdim=True) + ((f - gl) ** 2).mean(1, keepdim=True)
                        for f, lo, gl in zip(feats, local, glob)])
    scales = range(len(nll[0]))
    return [torch.cat([b[s] for b in nll]) for s in scales], [torch.cat([b[s] for b in rec]) for s in scales]


def upsample(t):
    return F.interpolate(t, size=(256, 256), mode="bilinear", align_corners=False)


def standardised(test, train):
    """Mean over scales of each scale's map standardised by its training-set mean and std."""
    return sum(upsample((t - tr.mean()) / tr.std()) for t, tr in zip(test, train)) / len(test)


def main(argv):
    cat, e1, e2, lr, depth, hflip, vflip = argv[0], int(argv[1]), int(argv[2]), float(argv[3]), int(argv[4]), \
        bool(int(argv[5])), bool(int(argv[6]))
    torch.set_num_threads(2)
    if not os.path.exists(os.path.join(ROOT, "brick")):
        from dadf_fast.data.synthetic import make_dataset

        make_dataset(ROOT, seed=0)
    torch.manual_seed(0)
    model = DADF("lite", depth=depth, flow_norm="image")  # the rows of docs/accuracy.md predate the channel norm
    train, test = MVTecAD(ROOT, cat, "train"), MVTecAD(ROOT, cat, "test")
    start = time.time()
    res = model.fit(train, recipe="paper", epochs_recon=e1, epochs_flow=e2, lr_flow=lr, grad_clip=1.0,
                    progress=False, hflip=hflip, vflip=vflip, calibration_fraction=0.0)
    print("fit", time.time() - start, res["seconds"], res["loss_recon"][-1], res["loss_flow"])

    train_images = torch.stack([train[i]["image"] for i in range(len(train))])
    images = torch.stack([test[i]["image"] for i in range(len(test))])
    masks = torch.stack([test[i]["mask"] for i in range(len(test))])[:, 0].numpy() > 0.5
    labels = np.array([test[i]["label"] for i in range(len(test))])
    train_nll, train_rec = per_scale_maps(model, train_images)
    nll, rec = per_scale_maps(model, images)

    def report(name, amap):
        for sigma in (0, 4):
            a = gaussian_smooth(amap, sigma)[:, 0]
            flat = a.flatten(1)
            k = max(1, flat.shape[1] // 100)
            print(f"{cat} {name:22s} s{sigma} img-max {metrics.auroc(flat.max(1).values.numpy(), labels):.3f} "
                  f"img-top1% {metrics.auroc(flat.topk(k, 1).values.mean(1).numpy(), labels):.3f} "
                  f"px {metrics.pixel_auroc(a.numpy(), masks):.3f}")

    report("paper exp", 1 - sum(upsample(torch.exp(-n)) for n in nll) / 3)
    report("nll std", standardised(nll, train_nll))
    report("rec std", standardised(rec, train_rec))
    report("nll+rec std", standardised(nll, train_nll) + standardised(rec, train_rec))
    report("nll std s2,3", standardised(nll[1:], train_nll[1:]))
    report("nll std s3", standardised(nll[2:], train_nll[2:]))
    report("nll std s2", standardised(nll[1:2], train_nll[1:2]))
    report("paper exp s2,3", 1 - sum(upsample(torch.exp(-n)) for n in nll[1:]) / 2)
    report("nll+rec s2,3", standardised(nll[1:], train_nll[1:]) + standardised(rec[1:], train_rec[1:]))


if __name__ == "__main__":
    main(sys.argv[1:])
