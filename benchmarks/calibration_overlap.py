"""Why thresholds calibrated on held-out crops flag every new normal image (issue 15).

On a photo category, every image is a random crop of one photo.  This trains the default
``DADF("lite")`` (no hold-out: ``calibration_fraction=0``) on 40 crops of the top half of a
demo photo's train region and scores three kinds of normal crops the model never trained on:

- ``same half``: other crops of the top half (what ``fit``'s random hold-out is on such data:
  they share most of their pixels with training crops);
- ``other half``: crops of the train region's bottom half (same columns of the photo, no
  pixel shared with a training crop);
- ``test region``: crops of the test region (another part of the photo, as the test images).

If the calibration failure were a shift between the photo's regions, ``other half`` would
score like ``same half``; if it is the shared pixels, like ``test region``.

    python benchmarks/calibration_overlap.py --categories brick grass gravel --threads 2
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import torch


def run(category: str, n_train: int, n_eval: int, seed: int) -> dict:
    from PIL import Image

    from dadf_fast import DADF
    from dadf_fast.data.synthetic import _crop_side, _random_crop, load_source, split_regions
    from dadf_fast.data.transforms import image_tensor

    src = load_source(category)
    train_box, test_box = split_regions(src.shape)
    base = _crop_side(test_box)
    mid = (train_box[0] + train_box[2]) // 2
    if mid - train_box[0] < base:
        raise SystemExit(f"{category}: the train region's halves ({mid - train_box[0]} px) do not hold a "
                         f"{base} px crop")
    top = (train_box[0], train_box[1], mid, train_box[3])
    bottom = (mid, train_box[1], train_box[2], train_box[3])
    rng = np.random.default_rng(seed)

    def crops(box, n):
        return torch.stack([image_tensor(Image.fromarray(_random_crop(src, box, base, rng, 256)[0]), 256)
                            for _ in range(n)])

    train = crops(top, n_train)
    kinds = {"same half": crops(top, n_eval), "other half": crops(bottom, n_eval),
             "test region": crops(test_box, n_eval)}
    torch.manual_seed(seed)
    model = DADF("lite")
    model.fit(train, recipe="lite", seed=seed, progress=False, log=None, calibration_fraction=0)
    out = {}
    for kind, x in kinds.items():
        s = model.predict(x, batch_size=8)["score"].numpy()
        out[kind] = {"median": float(np.median(s)), "min": float(s.min()), "max": float(s.max())}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--categories", nargs="+", default=["brick", "grass", "gravel"],
                   help="photos (dadf_fast.data.synthetic.available_sources) whose train region is taller than "
                        "two crops")
    p.add_argument("--n-train", type=int, default=40)
    p.add_argument("--n-eval", type=int, default=10, help="normal crops of each kind")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", help="write the medians here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    res = {}
    print("median (min-max) image score of normal crops the model never trained on")
    print(f"{'category':<10} {'same half':>18} {'other half':>18} {'test region':>18}")
    for cat in args.categories:
        res[cat] = run(cat, args.n_train, args.n_eval, args.seed)
        cells = [f"{r['median']:.2f} ({r['min']:.2f}-{r['max']:.2f})" for r in res[cat].values()]
        print(f"{cat:<10} " + " ".join(f"{c:>18}" for c in cells), flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(res, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
