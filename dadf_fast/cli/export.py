"""``dadf-fast export``: a trained checkpoint to a verified ONNX or OpenVINO graph.

``dadf-fast export --checkpoint model.pt --format onnx|openvino --out DIR [--overwrite]
[--images FILES_OR_DIR ...]`` runs :func:`dadf_fast.deploy.export.export` (what is exported,
the files, the verification: see there) and prints its report in a few lines.
"""
from __future__ import annotations

import os


def add_arguments(p) -> None:
    from dadf_fast.deploy.export import FORMATS

    p.add_argument("--checkpoint", required=True, help="model.pt written by train (a DADF checkpoint)")
    p.add_argument("--format", default="onnx", choices=list(FORMATS),
                   help="onnx: DIR/model.onnx; openvino: DIR/model.xml + model.bin (default: onnx)")
    p.add_argument("--out", required=True,
                   help="output folder (model files and metadata.json); it must be new or empty unless --overwrite")
    p.add_argument("--overwrite", action="store_true", help="replace the export files of an --out folder")
    p.add_argument("--images", nargs="+", default=None,
                   help="image files or folders the export is verified on (default: bundled photographs)")


def _format_report(r: dict) -> list[str]:
    lines = [f"exported {r['format']} to {r['dir']}: " + ", ".join(r["files"]) + f" (+ {r['metadata']})",
             "outputs: " + ", ".join(r["outputs"]) + ("" if r["calibrated"] else " (uncalibrated: no verdicts)")]
    for row in r["verification"]:
        line = (f"verified at batch {row['batch']}: max |map diff| {row['max_map_diff']:.2e}, "
                f"max |score diff| {row['max_score_diff']:.2e} (tolerance {row['tolerance']:.1e})")
        if r["calibrated"]:
            line += (f", labels equal {row['labels_equal']}/{row['batch']} ({row['label_ties']} near-threshold), "
                     f"pred_mask mismatch {row['mask_mismatch_fraction']:.2e}")
        lines.append(line)
    lines.append("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in r["seconds"].items()))
    return lines


def run(args, print_fn=print) -> dict:
    """The command: ``args`` from :func:`add_arguments` (``args.cleanup``, when the CLI gives
    one, keeps the ``--out`` lock and the input protection for the whole command)."""
    import contextlib

    from dadf_fast.deploy.export import export
    from dadf_fast.utils.io import prepare_output_dir, protect_inputs

    images = list(args.images) if args.images else None
    existed = os.path.exists(args.out)
    try:
        with contextlib.ExitStack() as stack:
            # --out is checked (and named as --out in errors) before the checkpoint is read
            stack.enter_context(prepare_output_dir(args.out, overwrite=args.overwrite, what="--out"))
            stack.enter_context(protect_inputs([args.checkpoint, *(images or [])]))
            try:
                report = export(args.checkpoint, args.out, format=args.format, images=images,
                                overwrite=args.overwrite, log=print_fn)
            except ImportError as exc:  # a missing optional dependency: one line (the CLI prints RuntimeErrors)
                raise RuntimeError(str(exc)) from exc
    except BaseException:
        if not existed and os.path.isdir(args.out) and not os.listdir(args.out):
            os.rmdir(args.out)  # a failed export leaves no folder it created
        raise
    for line in _format_report(report):
        print_fn(line)
    return report


__all__ = ["add_arguments", "run"]
