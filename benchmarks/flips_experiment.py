"""The lite default trained with its mirror images (``hflip`` + ``vflip``), one category.

Trains ``DADF("lite")`` on the harness category ``CATEGORY`` (40 normal images, 16 normal and
32 defective test images, seed 0) with the flips of the lite recipe, ``--variant``'s flows
(:data:`ablation_generalise.VARIANTS`), then scores the test set with the cues of
``ablation_generalise`` calibrated on the training images: the flow cue alone, flow + kNN,
kNN alone, the reconstruction cue alone and the default's rule (flow 1, reconstruction 0.25,
kNN 1). Prints one JSON line ``{category: {row: {"image_auroc", "pixel_auroc"}, "fit_s"}}``.
The issue-17 measurements of docs/accuracy.md ("Mirror images") ran it as::

    python benchmarks/flips_experiment.py retina /tmp/flips_retina   # one job per category
"""
import argparse
import json
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ablation_generalise as AG  # noqa: E402

DEFAULT_RULE = (("flow", 1.0), ("recon", 0.25), ("knn", 1.0))


def weighted(test: dict, calib: dict, rule) -> np.ndarray:
    """``sum w * (smooth(test) - mean) / spread`` over ``rule``'s ``(cue, w)`` (the package's rule)."""
    total = 0.0
    for cue, w in rule:
        t, c = AG._smooth(test[cue]), AG._smooth(calib[cue])
        mu = c.mean()
        total = total + w * (t - mu) / (c.flatten(1).amax(1).mean() - mu).clamp_min(1e-12)
    return total.numpy()


def main(argv=None) -> int:
    from torch.utils.data import DataLoader

    from dadf_fast import DADF
    from dadf_fast.data import MVTecAD, collate
    from dadf_fast.data.harness import harness_defects
    from dadf_fast.data.synthetic import make_dataset
    from dadf_fast.models.knn import KNNDetector

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("category")
    p.add_argument("out", help="where the category's data is generated")
    p.add_argument("--variant", default="ff", choices=sorted(AG.VARIANTS))
    p.add_argument("--no-flips", action="store_true", help="train without the mirror images (the previous default)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    cat = args.category
    root = os.path.join(args.out, "data")
    make_dataset(root, categories=[cat], defects=harness_defects(cat), n_train=40, n_test_good=16,
                 n_test_defect=32, seed=0)
    train, test = MVTecAD(root, cat, "train"), MVTecAD(root, cat, "test")
    batch = next(iter(DataLoader(test, batch_size=len(test), collate_fn=collate)))
    timgs, labels = batch["image"], np.asarray(batch["label"])
    masks = (batch["mask"][:, 0].float() > 0.5).numpy()
    tr = torch.stack([train[i]["image"] for i in range(len(train))])

    torch.manual_seed(0)
    knn = KNNDetector(seed=0)
    knn.fit(tr, progress=False, log=None)
    knn_calib = AG.knn_leave_one_out(knn, tr)
    torch.manual_seed(0)
    ctor, fit_kw = AG.VARIANTS[args.variant]
    model = DADF("lite", score_cues=("flow",), **ctor)
    flips = dict(hflip=False, vflip=False) if args.no_flips else dict(hflip=True, vflip=True)
    t0 = time.perf_counter()
    model.fit(tr, recipe="lite", seed=0, progress=False, log=None, calibration_fraction=0.0, **flips, **fit_kw)
    res = {"fit_s": time.perf_counter() - t0}
    model.eval()
    tc, cc = AG.dadf_cues(model, timgs, knn), AG.dadf_cues(model, tr, knn)
    cc["knn"] = knn_calib
    for cues in (("flow",), ("flow", "knn"), ("knn",), ("recon",)):
        res["+".join(cues)] = AG._maps_metrics(AG.combine(tc, cc, cues), labels, masks)
    res["default"] = AG._maps_metrics(weighted(tc, cc, DEFAULT_RULE), labels, masks)
    print(json.dumps({cat: res}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
