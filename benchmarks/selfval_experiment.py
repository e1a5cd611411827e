"""Experiment for issue 17: calibrate DADF's cues on held-out normal images and choose the cue
weights per category by self-validation (held-out normals with synthetic defects).

Per category: the flows and the reconstruction train on the training images minus every
``--holdout-every``-th one; the kNN memory keeps all of them.  Saved (smoothed maps, npz):
the test maps, the fit images' maps (in-sample calibration), the held-out normals' maps and
the maps of synthetic defects drawn on the held-out normals (kNN of those against the other
images' patches).  ``--analyse DIR`` then compares combination rules offline.

    python benchmarks/selfval_experiment.py --categories retina coins --jobs 2 --maps /tmp/sv
    python benchmarks/selfval_experiment.py --analyse /tmp/sv
"""
from __future__ import annotations

import argparse
import itertools
import os
import subprocess
import sys
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

SV_DEFECTS = ("scratch", "spot", "colour", "blur", "missing", "contamination", "crack", "patch")


def synthetic_defects(images: torch.Tensor, per_image: int, seed: int):
    from dadf_fast.data.defects import make_defect
    from dadf_fast.data.synthetic import load_source
    from dadf_fast.data.transforms import denormalize, normalize

    rng = np.random.default_rng(seed + 12345)
    foreign = load_source("chelsea")
    out, masks, kinds, src = [], [], [], []
    k = 0
    for i, img in enumerate(images):
        clean = denormalize(img)
        for _ in range(per_image):
            d = SV_DEFECTS[k % len(SV_DEFECTS)]
            k += 1
            try:
                bad, mask = make_defect(clean, d, rng, foreign=foreign)
            except ValueError:
                continue
            out.append(normalize(torch.from_numpy(bad).permute(2, 0, 1).float() / 255))
            masks.append(mask)
            kinds.append(d)
            src.append(i)
    return torch.stack(out), np.stack(masks), kinds, np.array(src)


def run_category(cat: str, args) -> None:
    from torch.utils.data import DataLoader

    from ablation_generalise import VARIANTS, dadf_cues, _smooth
    from dadf_fast import DADF
    from dadf_fast.data import MVTecAD, collate
    from dadf_fast.data.harness import harness_defects
    from dadf_fast.data.synthetic import make_dataset
    from dadf_fast.models import cues as C
    from dadf_fast.models.inputs import model_input
    from dadf_fast.models.knn import KNNDetector

    torch.set_num_threads(args.threads)
    root = os.path.join(args.out, "data")
    make_dataset(root, categories=[cat], defects=harness_defects(cat), n_train=40, n_test_good=16,
                 n_test_defect=32, seed=args.seed)
    train, test = MVTecAD(root, cat, "train"), MVTecAD(root, cat, "test")
    batch = next(iter(DataLoader(test, batch_size=len(test), collate_fn=collate)))
    timgs = batch["image"]
    train_imgs = torch.stack([train[i]["image"] for i in range(len(train))])
    n = len(train_imgs)
    ho = np.arange(args.holdout_every - 1, n, args.holdout_every)
    fit_idx = np.setdiff1d(np.arange(n), ho)

    torch.manual_seed(args.seed)
    knn = KNNDetector(seed=args.seed)
    knn.fit(train_imgs, progress=False, log=None)
    emb = torch.cat([knn.embed(model_input(c, knn.backbone)) for c in torch.split(train_imgs, 8)])
    knn_loo = C.knn_leave_one_out(emb, train_imgs.shape[-1])[:, 0]

    ctor, fit_kw = VARIANTS[args.variant]
    torch.manual_seed(args.seed)
    model = DADF("lite", score_cues=("flow",), **ctor)
    t0 = time.perf_counter()
    model.fit(train_imgs[fit_idx], recipe="lite", seed=args.seed, progress=False, log=None,
              calibration_fraction=0.0, **fit_kw)
    fit_s = time.perf_counter() - t0
    model.eval()

    syn, syn_masks, syn_kinds, syn_src = synthetic_defects(train_imgs[ho], args.per_image, args.seed)
    test_c = dadf_cues(model, timgs, knn)
    fit_c = dadf_cues(model, train_imgs[fit_idx], knn)
    fit_c["knn"] = knn_loo[fit_idx]
    ho_c = dadf_cues(model, train_imgs[ho], knn)
    ho_c["knn"] = knn_loo[ho]
    syn_c = dadf_cues(model, syn, knn)
    # kNN of a synthetic image against the other training images (its clean source excluded)
    h, w = emb.shape[-2:]
    flat = C.flatten_patches(emb).view(n, h * w, -1)
    semb = torch.cat([knn.embed(model_input(c, knn.backbone)) for c in torch.split(syn, 8)])
    maps = []
    for j in range(len(syn)):
        src = int(ho[syn_src[j]])
        others = torch.cat((flat[:src], flat[src + 1:])).flatten(0, 1)
        maps.append(C.nearest_distances(C.flatten_patches(semb[j:j + 1]), others).view(1, 1, h, w))
    syn_c["knn"] = C.upsample(torch.cat(maps), train_imgs.shape[-1])[:, 0]

    os.makedirs(args.maps, exist_ok=True)
    f16 = lambda v: _smooth(v).numpy().astype(np.float16)  # noqa: E731
    np.savez_compressed(
        os.path.join(args.maps, f"{cat.replace('@', '_')}.npz"), fit_s=fit_s,
        labels=np.asarray(batch["label"]), masks=(batch["mask"][:, 0].float() > 0.5).numpy(),
        defects=np.array(list(batch["defect"])), syn_masks=syn_masks, syn_kinds=np.array(syn_kinds),
        **{f"test_{k}": f16(v) for k, v in test_c.items()}, **{f"fit_{k}": f16(v) for k, v in fit_c.items()},
        **{f"ho_{k}": f16(v) for k, v in ho_c.items()}, **{f"syn_{k}": f16(v) for k, v in syn_c.items()})


# ----------------------------------------------------------------------------- offline analysis

CUES = ("flow", "recon", "knn")
GRID = [w for w in itertools.product((0, 0.25, 0.5, 1), (0, 0.25), (0, 0.25, 0.5, 1)) if w[0] or w[2]]


def _stats(maps):
    from dadf_fast.models.cues import calibration

    return calibration(torch.from_numpy(maps.astype(np.float64)))


def _combine(d, prefix, calib, weights):
    total = 0.0
    for cue, w in zip(CUES, weights):
        if w:
            mu, s = calib[cue]
            total = total + w * (d[f"{prefix}_{cue}"].astype(np.float32) - mu) / s
    return total


def _metrics(maps, labels, masks):
    from ablation_generalise import _maps_metrics

    m = _maps_metrics(maps, labels, masks)
    return m["image_auroc"], m["pixel_auroc"]


def analyse(path: str) -> None:
    files = sorted(f for f in os.listdir(path) if f.endswith(".npz"))
    rules = {}
    for f in files:
        d = np.load(os.path.join(path, f))
        cal_fit = {c: _stats(d[f"fit_{c}"]) for c in CUES}
        cal_ho = {c: _stats(d[f"ho_{c}"]) if c != "knn" else _stats(np.concatenate([d["fit_knn"], d["ho_knn"]]))
                  for c in CUES}
        labels, masks = d["labels"], d["masks"]
        nho = len(d["ho_flow"])
        sv_labels = np.r_[np.zeros(nho), np.ones(len(d["syn_flow"]))]
        sv_masks = np.concatenate([np.zeros_like(d["syn_masks"][:nho]), d["syn_masks"]])

        def sv_score(calib, w):
            m = np.concatenate([_combine(d, "ho", calib, w), _combine(d, "syn", calib, w)])
            a, p = _metrics(m, sv_labels, sv_masks)
            return a + p

        row = {}
        for name, calib in (("fit", cal_fit), ("ho", cal_ho)):
            for w in ((1, 0, 0), (0, 0, 1), (1, 0, 1), (1, 0.25, 1)):
                row[f"{name}:{w}"] = _metrics(_combine(d, "test", calib, w), labels, masks)
            best = max(GRID, key=lambda w: sv_score(calib, w))
            row[f"{name}:selfval"] = _metrics(_combine(d, "test", calib, best), labels, masks)
            row[f"{name}:selfval_w"] = best
        rules[f[:-4]] = row
    cats = list(rules)
    keys = [k for k in rules[cats[0]] if not k.endswith("_w")]
    print("| rule | " + " | ".join(cats) + " | mean | worst |")
    for k in keys:
        vals = [rules[c][k] for c in cats]
        cells = " | ".join(f"{a:.3f}/{b:.3f}" for a, b in vals)
        print(f"| {k} | {cells} | {np.mean([v[0] for v in vals]):.3f}/{np.mean([v[1] for v in vals]):.3f} | "
              f"{min(v[0] for v in vals):.3f}/{min(v[1] for v in vals):.3f} |")
    for name in ("fit", "ho"):
        print(name, "self-validated weights:", {c: rules[c][f"{name}:selfval_w"] for c in cats})


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--categories", nargs="+")
    p.add_argument("--variant", default="ff")
    p.add_argument("--holdout-every", type=int, default=5)
    p.add_argument("--per-image", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--out", default="/tmp/selfval_data")
    p.add_argument("--maps", default="/tmp/selfval_maps")
    p.add_argument("--analyse")
    args = p.parse_args(argv)
    if args.analyse:
        analyse(args.analyse)
        return 0
    if len(args.categories) == 1:
        run_category(args.categories[0], args)
        return 0
    pending, running = list(args.categories), []
    t0 = time.perf_counter()
    while pending or running:
        while pending and len(running) < args.jobs:
            cat = pending.pop(0)
            cmd = [sys.executable, __file__, "--categories", cat] + [
                x for k, v in vars(args).items() if k not in ("categories", "jobs", "analyse")
                for x in (f"--{k.replace('_', '-')}", str(v))]
            running.append((cat, subprocess.Popen(cmd)))
        time.sleep(2)
        for item in list(running):
            if item[1].poll() is not None:
                running.remove(item)
                print(f"done {item[0]} rc={item[1].returncode} ({time.perf_counter() - t0:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
