"""The ``dadf-fast`` command line: train, test, predict, calibrate, export, demo, bench."""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys

from dadf_fast.cli.argtypes import fraction, input_size, nonnegative_int, positive_int, seed_int, sigma
from dadf_fast.cli.distributed import check_inputs

from dadf_fast.cli.errors import EXPECTED_ERRORS, UserError


OUT_RULE = ("must be a new or empty folder unless --overwrite; outputs never replace an input file, "
            "and one folder takes one run at a time")


def _add_common(p, checkpoint=False):
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")
    p.add_argument("--batch-size", type=positive_int, default=8, help="batch size (default: 8)")
    p.add_argument("--workers", type=nonnegative_int, default=0,
                   help="data-loading worker processes for test (default: 0; training caches features once)")
    p.add_argument("--backend", default="auto", choices=["auto", "torch", "triton", "cpp"],
                   help="kernel backend (default: auto)")


def _add_data(p, required=True):
    g = p.add_argument_group("data (MVTec AD / MVTec LOCO AD root + --category, or plain folders)")
    g.add_argument("--data", help="dataset root (MVTec AD or MVTec LOCO AD layout)")
    g.add_argument("--category", help="category folder under --data, e.g. bottle (train: also 'all' or a "
                                      "comma-separated list, one model per category in --out/<category>)")
    g.add_argument("--normal-dir", help="plain folder of normal training images (instead of --data)")
    g.add_argument("--test-dir", help="plain folder of test images")
    g.add_argument("--mask-dir", help="plain folder of test masks (<stem>.png or <stem>_mask.png)")


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the command, the problem, where help is), like
    every other error of the CLI; ``--help`` still prints the full usage."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="dadf-fast", description="DADF anomaly detection with fast kernels")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a detector on normal images")
    _add_data(p)
    p.add_argument("--out", required=True,
                   help=f"output folder (checkpoints: stage1.pt, model.pt); it {OUT_RULE} (or --resume)")
    p.add_argument("--preset", default="lite", choices=["lite", "paper"])
    p.add_argument("--method", default="dadf", choices=["dadf", "knn"],
                   help="detector (default: dadf; knn: PatchCore-style nearest-neighbour baseline, "
                        "ignores --recipe/--epochs-*)")
    p.add_argument("--recipe", default=None, choices=["paper", "lite"],
                   help="training recipe (default: lite for the lite preset, paper otherwise)")
    p.add_argument("--epochs-recon", type=positive_int, default=None, help="stage-1 (reconstruction) epochs")
    p.add_argument("--epochs-flow", type=positive_int, default=None, help="stage-2 (flow) epochs")
    p.add_argument("--iters-flow", type=positive_int, default=None,
                   help="stage-2 optimiser steps (replaces --epochs-flow; the lite recipe's default: 375)")
    p.add_argument("--no-flips", action="store_true",
                   help="train on the images as given only (the lite recipe also trains on their mirror "
                        "images; turn that off when a mirrored part is a defect)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="compute precision (mixed precision on GPU: bfloat16; saved in the checkpoint)")
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--input-size", type=input_size, default=256, help="image side, a multiple of 16 (default: 256)")
    p.add_argument("--no-pretrained", action="store_true", help="random backbone weights")
    p.add_argument("--backbone-weights", help="local backbone weights file (no network needed)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last completed stage (same settings and data only)")
    p.add_argument("--overwrite", action="store_true",
                   help="train anew in a folder that holds files (its stage1.pt and model.pt are removed first)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    g = p.add_argument_group("decision thresholds (docs/usage.md)")
    g.add_argument("--val-dir", help="folder of validation images for the thresholds (normal ones, and anomalous "
                                     "ones marked by --val-mask-dir); nothing is then held out of training")
    g.add_argument("--val-mask-dir", help="masks for --val-dir (<stem>.png or <stem>_mask.png; a nonzero mask marks "
                                          "an anomalous image)")
    g.add_argument("--calibration-fraction", type=fraction, default=None,
                   help="fraction of the normal training images held out for the thresholds when no --val-dir "
                        "(default: 0.2; 0: none held out, no thresholds)")
    _add_common(p)

    p = sub.add_parser("test", help="evaluate a trained detector on a labelled test set")
    p.add_argument("--checkpoint", required=True, help="model.pt written by train")
    _add_data(p)
    p.add_argument("--out", help=f"folder for heatmaps, .tiff maps and metrics.json; it {OUT_RULE}")
    p.add_argument("--overwrite", action="store_true", help="write into an --out folder that already holds files")
    p.add_argument("--smooth", type=sigma, default=None, help="Gaussian sigma for the maps (default: model's)")
    p.add_argument("--resolution", default="original", choices=["original", "input"],
                   help="metrics and .tiff maps at each image's original size (default; the official "
                        "protocol) or at the model's input size")
    _add_common(p)

    p = sub.add_parser("predict", help="score image files")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("images", nargs="+", help="image files or folders")
    p.add_argument("--out", help=f"folder for overlays <stem>.png and maps <stem>.tiff; it {OUT_RULE}")
    p.add_argument("--overwrite", action="store_true", help="write into an --out folder that already holds files")
    p.add_argument("--smooth", type=sigma, default=None, help="Gaussian sigma for the maps (default: model's)")
    _add_common(p)

    p = sub.add_parser("demo", help="build a small dataset from bundled photos, train, evaluate (CPU, minutes)")
    p.add_argument("--out", default="runs/demo", help=f"output folder (default: runs/demo); it {OUT_RULE}")
    p.add_argument("--overwrite", action="store_true", help="run again in an --out folder that holds files")
    p.add_argument("--categories", nargs="+", default=None, help="demo categories (default: all)")
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="compute precision (default: float32)")
    p.add_argument("--quiet", action="store_true")
    _add_common(p)

    p = sub.add_parser("calibrate", help="set a trained detector's decision thresholds anew on validation images")
    p.add_argument("--checkpoint", required=True, help="model.pt written by train (a DADF checkpoint)")
    p.add_argument("--val-dir", required=True,
                   help="folder of images of the new conditions: normal ones, and anomalous ones marked by "
                        "--val-mask-dir (without masks all count as normal: synthetic defects are drawn on them)")
    p.add_argument("--val-mask-dir", help="masks for --val-dir (<stem>.png or <stem>_mask.png)")
    p.add_argument("--out", required=True,
                   help=f"folder for the recalibrated model.pt (the input checkpoint is never changed); it {OUT_RULE}")
    p.add_argument("--overwrite", action="store_true", help="write into an --out folder that already holds files")
    p.add_argument("--seed", type=seed_int, default=0, help="the synthetic defects' seed")
    _add_common(p)

    p = sub.add_parser("export", help="export a trained detector to one verified ONNX or OpenVINO graph")
    from dadf_fast.cli.export import add_arguments as _export_arguments

    _export_arguments(p)

    p = sub.add_parser("bench", help="benchmark suite: inference and training-step throughput of the backends")
    from dadf_fast.cli.bench import add_arguments as _bench_arguments

    _bench_arguments(p)
    return parser


def _datasets(args, split, image_size):
    from dadf_fast import data

    if args.data:
        if not args.category:
            cats = data.list_categories(args.data) if os.path.isdir(args.data) else []
            raise UserError(f"--category is required with --data (categories in {args.data}: {', '.join(cats) or 'none'})")
        loco = os.path.isdir(os.path.join(args.data, args.category, "validation"))
        cls = data.MVTecLOCO if loco else data.MVTecAD
        return cls(args.data, args.category, split=split, image_size=image_size)
    if split == "train":
        if not args.normal_dir:
            raise UserError("give --data and --category (MVTec layout) or --normal-dir (plain folder)")
        return data.FolderDataset(normal_dir=args.normal_dir, split="train", image_size=image_size)
    if not args.test_dir:
        raise UserError("give --data and --category (MVTec layout) or --test-dir (plain folder)")
    return data.FolderDataset(test_dir=args.test_dir, mask_dir=args.mask_dir, split="test", image_size=image_size)


def _prepare_out(args, inputs=(), resume=None) -> None:
    """Check and lock ``--out`` (when given) for the rest of the command, before any work (see
    :func:`dadf_fast.utils.io.prepare_output_dir`), and keep ``inputs`` from being overwritten.
    Under torchrun (``args.ranks``), rank 0 alone checks and locks, and every rank gets its verdict."""
    from dadf_fast.cli.distributed import prepare_out
    from dadf_fast.utils.io import prepare_output_dir, protect_inputs

    def prepare():
        if args.out is not None:
            args.cleanup.enter_context(prepare_output_dir(args.out, overwrite=args.overwrite, resume=resume,
                                                          what="--out"))

    prepare_out(args, prepare)
    args.cleanup.enter_context(protect_inputs(inputs))


def _sharded(args) -> bool:
    """True when this command splits its work over the ranks of a torchrun launch."""
    return getattr(args, "ranks", (0, 1))[1] > 1


def _dataset_files(dataset) -> list:
    """The files a dataset reads (images and masks)."""
    return [p for r in getattr(dataset, "records", []) for p in [r.path, *r.mask_paths]]


def cmd_train(args):
    import torch

    from dadf_fast.models import DADF

    if args.resume and args.overwrite:
        raise UserError("--resume and --overwrite contradict each other: continue the run in --out, or start anew")
    if args.resume and args.method == "knn":
        raise UserError("--resume is for --method dadf: the kNN baseline fits in one pass (--overwrite fits again)")
    if args.method == "knn" and (args.val_dir or args.val_mask_dir or args.calibration_fraction is not None):
        raise UserError("--val-dir, --val-mask-dir and --calibration-fraction are for --method dadf: the kNN "
                        "baseline has no decision thresholds")
    categories = _train_categories(args)
    if categories is not None:
        from dadf_fast.cli.distributed import train_many

        return train_many(args, categories, cmd_train, _prepare_out)
    if args.method == "knn" and _sharded(args):
        raise UserError("--method knn fits in one pass and is not data-parallel: run it without torchrun "
                        "(or spread categories over processes with --category all)")
    torch.manual_seed(args.seed)
    recipe = args.recipe or ("lite" if args.preset == "lite" else "paper")
    train = _datasets(args, "train", args.input_size)
    val, val_files = _validation(args, args.input_size) if args.method == "dadf" else ({}, [])
    check_inputs(args, [r.path for r in getattr(train, "records", [])] or range(len(train)), "training images")
    _prepare_out(args, inputs=[*_dataset_files(train), *val_files, args.backbone_weights],
                 resume=args.resume if args.method == "dadf" else None)
    if args.method == "knn":
        from dadf_fast.models.training import clear_checkpoints

        if args.overwrite:
            clear_checkpoints(args.out)
        from dadf_fast.models.knn import KNNDetector
        from dadf_fast.models.presets import PRESETS

        model = KNNDetector(PRESETS[args.preset]["backbone"], pretrained=not args.no_pretrained,
                            input_size=args.input_size, seed=args.seed,
                            backbone_weights=args.backbone_weights).to(args.device)
        res = model.fit(train, out_dir=args.out, overwrite=args.overwrite, batch_size=args.batch_size,
                        progress=not args.quiet)
        print(f"kNN memory bank of {res['memory_size']} patches from {len(train)} images; "
              f"checkpoint: {os.path.join(args.out, 'model.pt')}")
        print(json.dumps(res["seconds"]))
        return
    model = DADF(args.preset, pretrained=not args.no_pretrained, input_size=args.input_size, backend=args.backend,
                 backbone_weights=args.backbone_weights, dtype=args.dtype).to(args.device)
    res = model.fit(train, recipe=recipe, epochs_recon=args.epochs_recon, epochs_flow=args.epochs_flow,
                    iters_flow=args.iters_flow, calibration_fraction=args.calibration_fraction,
                    **({"hflip": False, "vflip": False} if args.no_flips else {}),
                    batch_size_recon=args.batch_size, seed=args.seed, out_dir=args.out, resume=args.resume,
                    overwrite=args.overwrite, progress=not args.quiet, distributed=_sharded(args), **val)
    calib = res.get("calibration")
    held = calib["n_normal"] if calib and not val else 0
    print(f"trained on {len(train) - held} images" + (f" ({held} held out for the thresholds)" if held else "")
          + f"; checkpoint: {os.path.join(args.out, 'model.pt')}")
    if calib:
        print(f"thresholds ({calib['method']}): image {calib['image_threshold']:.5g}, pixel "
              f"{calib['pixel_threshold']:.5g}" + (f"; {calib['note']}" if calib["note"] else ""))
    print(json.dumps(res["seconds"]))


def _train_categories(args):
    """The categories of ``--category all`` or ``--category a,b`` (None for one category)."""
    if not args.data or not args.category or (args.category != "all" and "," not in args.category):
        return None
    from dadf_fast import data

    found = data.list_categories(args.data) if os.path.isdir(args.data) else []
    if args.category == "all":
        if not found:
            raise UserError(f"--category all: no categories in {args.data}")
        return found
    wanted = [c.strip() for c in args.category.split(",") if c.strip()]
    unknown = [c for c in wanted if c not in found]
    if unknown:
        raise UserError(f"--category: {', '.join(unknown)} not in {args.data} (categories: {', '.join(found) or 'none'})")
    if len(set(wanted)) != len(wanted):
        raise UserError(f"--category names a category twice: {args.category}")
    return wanted


def _validation(args, size) -> tuple[dict, list]:
    """``fit``'s validation arguments from ``--val-dir`` / ``--val-mask-dir`` (empty without),
    and the files they read."""
    if args.val_mask_dir and not args.val_dir:
        raise UserError("--val-mask-dir needs --val-dir (the images the masks belong to)")
    if not args.val_dir:
        return {}, []
    import torch

    from dadf_fast import data

    val = data.FolderDataset(test_dir=args.val_dir, mask_dir=args.val_mask_dir, split="test", image_size=size)
    items = [val[i] for i in range(len(val))]
    labels = torch.tensor([max(int(it["label"]), 0) for it in items])  # no masks: all normal
    masks = torch.stack([it["mask"][0] > 0.5 for it in items]) if args.val_mask_dir else None
    return ({"val_images": torch.stack([it["image"] for it in items]), "val_labels": labels, "val_masks": masks},
            _dataset_files(val))


def _load(args):
    from dadf_fast.models.knn import load_detector

    return load_detector(args.checkpoint, backend=args.backend, map_location=args.device)


def cmd_test(args):
    from dadf_fast.engine.evaluation import evaluate, format_table, public

    model = _load(args)
    test = _datasets(args, "test", model.input_size)
    check_inputs(args, [r.path for r in getattr(test, "records", [])] or range(len(test)), "test images")
    _prepare_out(args, inputs=[args.checkpoint, *_dataset_files(test)])
    res = evaluate(model, test, batch_size=args.batch_size, out_dir=args.out, category=args.category or "folder",
                   num_workers=args.workers, smooth_sigma=args.smooth, resolution=args.resolution,
                   overwrite=args.overwrite, distributed=_sharded(args))
    if res is None:  # another rank than 0 under torchrun: rank 0 reports
        return None
    print(format_table(res, f"{args.category or args.test_dir}: {res['n_images']} test images"))
    if args.out:
        print(f"heatmaps, maps and metrics.json written under {args.out}")
    return public(res)


def cmd_predict(args):
    from dadf_fast.data import expand_image_paths
    from dadf_fast.engine.evaluation import predict_files

    try:
        # the same rule as train/test: hidden files (macOS ._x.png) and folders named x.png are no images
        paths = expand_image_paths(args.images, "images")
    except ValueError as exc:
        raise UserError(str(exc).removeprefix("images: ")) from None
    check_inputs(args, paths, "images")
    _prepare_out(args, inputs=[args.checkpoint, *paths])
    model = _load(args)
    rows = predict_files(model, paths, batch_size=args.batch_size, out_dir=args.out,
                         smooth_sigma=args.smooth, overwrite=args.overwrite, distributed=_sharded(args))
    if rows is None:  # another rank than 0 under torchrun: rank 0 reports
        return
    calibrated = all("pred_label" in r for r in rows)
    for r in rows:
        verdict = f"  {'NG' if r['pred_label'] else 'OK'}  {r['pred_score']:.3f}" if calibrated else ""
        print(f"{r['score']:.5f}{verdict}  {r['path']}")
    if calibrated:
        ng = sum(r["pred_label"] for r in rows)
        print(f"{len(rows) - ng} OK, {ng} NG (of {len(rows)} images)")
    elif not hasattr(model, "calibration"):
        print("no verdicts: the kNN baseline has no decision thresholds")
    elif model.calibration is None:
        print("no verdicts: the model has no decision thresholds (train it with held-out or --val-dir images)")
    else:
        print("no verdicts: --smooth changes the maps' scale, the model's thresholds do not apply")
    if args.out:
        print("predictions.csv, overlays, maps" + (" and masks" if calibrated else "") + f" written under {args.out}")


def cmd_demo(args):
    from dadf_fast.cli.demo import run_demo

    _prepare_out(args)
    run_demo(args.out, categories=args.categories, seed=args.seed, device=args.device, backend=args.backend,
             progress=not args.quiet, dtype=args.dtype, overwrite=args.overwrite)


def cmd_bench(args):
    from dadf_fast.cli.bench import main

    main(args)


def cmd_calibrate(args):
    """Recalibrate a checkpoint's thresholds (``DADF.calibrate``) and write it to ``--out``."""
    model = _load(args)
    if not hasattr(model, "calibrate_cues"):
        raise UserError(f"{args.checkpoint} is a kNN baseline checkpoint: it has no decision thresholds")
    val, val_files = _validation(args, model.input_size)
    _prepare_out(args, inputs=[args.checkpoint, *val_files])
    old = model.calibration
    calib = model.calibrate(val["val_images"].to(args.device), val["val_labels"], val["val_masks"],
                            batch_size=args.batch_size, seed=args.seed, log=lambda *a: None)
    path = os.path.join(args.out, "model.pt")
    model.save(path, extra={"recalibrated_from": os.path.abspath(args.checkpoint)})
    before = (f"image {old['image_threshold']:.5g}, pixel {old['pixel_threshold']:.5g} ({old['method']})"
              if old else "none")
    print(f"thresholds before: {before}")
    print(f"thresholds now: image {calib['image_threshold']:.5g}, pixel {calib['pixel_threshold']:.5g} "
          f"({calib['method']} on {calib['n_normal']} normal and {calib['n_anomalous']} anomalous images)"
          + (f"; {calib['note']}" if calib["note"] else ""))
    print(f"recalibrated checkpoint: {path}")


def cmd_export(args):
    from dadf_fast.cli.export import run

    run(args)


COMMANDS = {"calibrate": cmd_calibrate, "export": cmd_export, "train": cmd_train, "test": cmd_test, "predict": cmd_predict, "demo": cmd_demo, "bench": cmd_bench}


def _run(args) -> None:
    """One command, in this process or as one rank of a torchrun launch."""
    from dadf_fast.cli.distributed import SHARDED, on_ranks
    from dadf_fast.utils.distributed import world

    if world()[1] == 1:
        return COMMANDS[args.command](args)
    if args.command not in SHARDED:
        raise UserError(f"{args.command} runs in one process: launch it without torchrun (under torchrun: "
                        f"{', '.join(SHARDED)})")
    if args.command == "train" and _train_categories(args) is not None:
        return cmd_train(args)  # categories spread over the ranks (it joins the process group itself)
    return on_ranks(args, COMMANDS[args.command])


def main(argv=None) -> int:
    """Run one command; returns the exit code (0, 2 for any usage or user error, 130 when
    interrupted), also for argparse's usage errors."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse has printed the usage error (or the help)
        return exc.code if isinstance(exc.code, int) else 2
    try:
        # what a command takes for its run (the --out lock, protected inputs) is released here
        with contextlib.ExitStack() as args.cleanup:
            _run(args)
    except UserError as exc:
        print(f"dadf-fast {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"dadf-fast {args.command}: interrupted", file=sys.stderr)
        return 130
    except EXPECTED_ERRORS as exc:
        if os.environ.get("DADF_FAST_DEBUG"):
            raise
        print(f"dadf-fast {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
