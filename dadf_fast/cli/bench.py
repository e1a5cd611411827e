"""``dadf-fast bench``: the end-to-end benchmark suite.

For each preset and batch size it times, on random images:

* ``infer``: ``model.predict(images)`` (backbone -> transformer -> flows -> scoring), with the
  per-stage split (``backbone_ms``, ``transformer_ms``, ``flows_ms`` = flow-input concat +
  flows of the scored scales, ``scoring_ms`` = ``multiscale_score`` + smoothing) measured on
  the model's own stages (:data:`dadf_fast.DADF.INFERENCE_STAGES`, run by
  :meth:`dadf_fast.DADF.infer` with a device sync and a clock read after each);
* ``stage1``: one stage-1 training step on cached backbone features (reconstructor forward,
  reconstruction loss, backward, AdamW step);
* ``stage2``: one stage-2 training step on cached flow inputs (``flow_loss`` forward,
  backward, Adam step);

for the variants

* ``torch``: ``backend="torch"``, the reference computation (permutation as a gather);
* ``compile``: ``torch.compile`` of the reference model's inference function and stage loss
  functions (the optimizer step stays eager); a failure to compile becomes the row's note;
* ``auto``: ``backend="auto"``, the fastest backends available (C++ on CPU; Triton/CUDA on GPU);
* ``auto-compile``: ``torch.compile`` of the ``auto`` model (``mode="reduce-overhead"`` on GPU,
  i.e. with CUDA graphs; the custom ops are traced through their fake kernels);
* ``auto-graph`` (inference, CUDA only): the ``auto`` model replayed from a CUDA graph
  captured at the row's batch size (:class:`dadf_fast.CUDAGraphInference`);
* ``onnxruntime`` and ``openvino`` (inference; default on CPU): the same model exported by
  :func:`dadf_fast.export` (one float32 graph with a dynamic batch: the ONNX export, and
  OpenVINO's conversion of it), run on the CPU by ONNX Runtime / OpenVINO with as many
  threads as torch uses, on the same images; the export and load time is the row's
  ``compile_s``.  Without the runtime (``pip install 'dadf-fast[deploy]'``) the row is
  skipped, its note saying why.

``dtype="bfloat16"``/``"float16"`` runs every variant in mixed precision,
``DADF(dtype=...)`` (autocast; float32 weights, images, flow epilogue and scoring).

Numbers are medians of ``reps`` timed calls after ``warmup`` untimed calls, with device
synchronisation, the timed calls of the variants interleaved; ``ratio`` is images/s against
the ``torch`` row of the same preset, batch and task, measured in the same run.  Memory:
``peak_mb`` is ``torch.cuda.max_memory_allocated`` on GPU, and on CPU the process's peak
resident set size during the row (``VmHWM``, reset per row where Linux allows it; otherwise
the process peak so far, which only grows).
Timing does not depend on weight values, so every preset runs with random weights
(``pretrained=False``).  CPU timings are only meaningful on an otherwise idle machine: the
table header prints the load average.

This module holds the suite and its command line; :mod:`dadf_fast.cli.bench_tasks` what a row
measures, :mod:`dadf_fast.cli.bench_report` the table, CSV and plot,
:mod:`dadf_fast.cli.bench_flops` the FLOPs and bytes per image.
"""
from __future__ import annotations

import math
import os

import torch

from dadf_fast.cli.bench_flops import coupling_bytes, stage_flops
from dadf_fast.cli.bench_report import print_header, print_row, write_csv, write_plot
from dadf_fast.cli.bench_tasks import (COLUMNS, DEFAULT_VARIANTS, EXPLICIT_ONLY, RUNTIME_VARIANTS, SPLIT, TASKS, VARIANTS,
                                       run_task)
from dadf_fast.utils.measure import load_note, time_fn


# ----------------------------------------------------------------------------- the suite
# images of the calibration (and kNN memory) of a benchmarked model whose score has several cues
CALIBRATION_IMAGES = 40


def run_bench(preset="lite", batch_sizes=None, quick: bool = False, csv: str | None = None,
              device: str = "cpu", backends=None, print_fn=print, plot: str | None = None,
              json_path: str | None = None, tasks=TASKS, dtype: str = "float32", reps: int | None = None,
              warmup: int | None = None, input_size: int = 256, split: bool = True,
              model_kwargs: dict | None = None, threads: int | None = None, overwrite: bool = False) -> list:
    """Run the suite and return one dict per row (keys: :data:`COLUMNS`).

    Args:
        preset: ``"lite"``, ``"paper"`` or a list of them (``quick``: lite only).
        batch_sizes: default ``[1, 8]`` on CPU, ``[1, 8, 32]`` on GPU (``quick``: the first two).
        backends: the variants, a subset of :data:`VARIANTS`; default ``torch``, ``compile``,
            ``auto`` (on CPU also ``onnxruntime`` and ``openvino``, on CUDA ``auto-compile``
            and ``auto-graph``; ``openvino-bf16`` only when named), ``quick``: ``("torch", "auto")``.  ``"torch"`` is always run first (the ratio base).
        tasks: subset of ``("infer", "stage1", "stage2")``.
        dtype: ``"float32"``, ``"bfloat16"`` or ``"float16"``: the model's compute precision
            (``DADF(dtype=...)``, mixed precision; weights and images stay float32).
        reps, warmup: timed and untimed calls per row (default 5/1, ``quick`` 2/1).
        input_size: image side (256 in the presets; smaller only for tests).
        split: time the inference stages one by one (backbone/transformer/flows/scoring).
        model_kwargs: extra :class:`dadf_fast.DADF` arguments (e.g. ``depth=1`` in tests).
        csv, json_path, plot: output files (a CSV table, a JSON list of rows, a PNG bar plot),
            checked before anything runs: distinct, writable, and not existing unless ``overwrite``.
    """
    from dadf_fast.models import DADF

    dev = torch.device(device)
    presets = [preset] if isinstance(preset, str) else list(preset)
    if quick:
        presets = [p for p in presets if p == "lite"] or ["lite"]
    if batch_sizes is None:
        batch_sizes = [1, 8] if dev.type == "cpu" else [1, 8, 32]
    if quick:
        batch_sizes = list(batch_sizes)[:2]
    default = list(DEFAULT_VARIANTS) + (["auto-compile", "auto-graph"] if dev.type == "cuda" else
                                        [v for v in RUNTIME_VARIANTS if v not in EXPLICIT_ONLY])
    variants = list(backends) if backends is not None else (["torch", "auto"] if quick else default)
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variants {unknown}; choose from {VARIANTS}")
    variants = ["torch"] + [v for v in variants if v != "torch"]
    bad_tasks = [t for t in tasks if t not in TASKS]
    if bad_tasks:
        raise ValueError(f"unknown tasks {bad_tasks}; choose from {TASKS}")
    tdtype = getattr(torch, dtype, None)
    if not isinstance(tdtype, torch.dtype) or not tdtype.is_floating_point:
        raise ValueError(f"dtype must be a floating dtype name (float32, bfloat16, float16), got {dtype!r}")
    reps = reps if reps is not None else (2 if quick else 5)
    warmup = warmup if warmup is not None else 1
    for name, value, low in (("reps", reps, 1), ("warmup", warmup, 0), ("input_size", input_size, 32)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    if not batch_sizes or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in batch_sizes):
        raise ValueError(f"batch_sizes must be ints >= 1, got {batch_sizes!r}")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads must be None or an int >= 1, got {threads!r}")
    _check_outputs({"csv": csv, "json_path": json_path, "plot": plot}, overwrite)
    if threads:
        torch.set_num_threads(int(threads))

    header = (f"dadf-fast bench: device={dev} dtype={dtype} torch={torch.__version__} threads={torch.get_num_threads()} "
              f"reps={reps} warmup={warmup} {load_note()}").rstrip()
    print_fn(header)
    print_header(print_fn)
    rows = []
    for pname in presets:
        torch.manual_seed(0)
        model = DADF(pname, pretrained=False, input_size=input_size, dtype=tdtype, **(model_kwargs or {}))
        model = model.to(device=dev).eval()
        if model.config["score_cues"] != ["flow"]:
            # the kNN cue's memory and the cue calibration come from the normal training images:
            # as many random images as a typical fit has (its nearest-neighbour search then costs
            # what it costs after a real fit)
            gen = torch.Generator().manual_seed(0)
            model.calibrate_cues(torch.randn(CALIBRATION_IMAGES, 3, input_size, input_size, generator=gen).to(dev))
        snapshot = {k: v.detach().clone() for k, v in model.state_dict().items()}
        exports = {}  # the model's exported files, shared by its batch sizes (dynamic batch)
        for bs in batch_sizes:
            x = torch.randn(bs, 3, input_size, input_size, device=dev)
            cache = {"exports": exports}
            with torch.no_grad(), model.autocast(dev.type):
                model.set_backend("torch")
                cache["feats"] = [f.detach() for f in model.features(x)]
                local, glob = model.reconstruct(cache["feats"])
                cache["inputs"] = [t.detach() for t in model.flow_inputs(cache["feats"], local, glob)]
                del local, glob
            for task in tasks:
                task_rows = run_task(model, pname, task, variants, x, cache, dev, tdtype, reps, warmup, split)
                if task != "infer":
                    model.load_state_dict(snapshot)
                    model.eval()
                base = task_rows[0]["images_per_s"]  # the torch row
                for row in task_rows:
                    ok = base and not math.isnan(base) and not math.isnan(row["images_per_s"])
                    row["ratio"] = row["images_per_s"] / base if ok else float("nan")
                    rows.append(row)
                    print_row(row, print_fn)
                if csv:  # written after every task, so a run cut short keeps what it measured
                    write_csv(rows, csv)
            del cache, x
        if "tmp" in exports:
            exports["tmp"].cleanup()
        del model
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    if json_path:
        import json

        from dadf_fast.utils.io import atomic_open

        with atomic_open(json_path, "w") as f:
            json.dump({"header": header, "rows": rows}, f, indent=1, default=str)
    if plot:
        write_plot(rows, plot, title=header)
    return rows


def _check_outputs(files: dict, overwrite: bool) -> None:
    """Every output file (``{argument name: path or None}``) is usable before the (long) suite
    runs: see :func:`dadf_fast.utils.io.prepare_output_file`."""
    from dadf_fast.utils.io import OutputPathError, prepare_output_file

    given = {k: os.fspath(v) for k, v in files.items() if v}
    seen = {}
    for name, path in given.items():
        key = os.path.normcase(os.path.abspath(path))
        if key in seen:
            raise OutputPathError(f"{name} and {seen[key]} name the same file {path}; give each its own")
        seen[key] = name
        prepare_output_file(path, overwrite=overwrite, what=name)


# ----------------------------------------------------------------------------- command line
def add_arguments(p) -> None:
    from dadf_fast.cli.argtypes import nonnegative_int, positive_int

    p.add_argument("--preset", nargs="+", default=["lite"], choices=["lite", "paper"],
                   help="preset(s) to run (default: lite)")
    p.add_argument("--batch-sizes", type=positive_int, nargs="+", default=None,
                   help="default: 1 8 on CPU, 1 8 32 on GPU")
    p.add_argument("--quick", action="store_true",
                   help="lite only, batch 1 and 8, 2 reps, torch and auto only (the shortest run)")
    p.add_argument("--variants", nargs="+", default=None, choices=list(VARIANTS),
                   help="default: torch compile auto, and on CPU onnxruntime openvino (quick: torch auto)")
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--reps", type=positive_int, default=None, help="timed calls per row (default 5, quick 2)")
    p.add_argument("--warmup", type=nonnegative_int, default=None, help="untimed calls per row (default 1)")
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--no-split", action="store_true", help="skip the per-stage inference split")
    p.add_argument("--flops", action="store_true", help="also print FLOPs per image of each stage")
    p.add_argument("--csv", help="write the rows as CSV here (an existing file is refused unless --overwrite)")
    p.add_argument("--json", help="write the rows as JSON here (an existing file is refused unless --overwrite)")
    p.add_argument("--plot", help="write a PNG bar plot here (an existing file is refused unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace existing --csv/--json/--plot files")
    p.add_argument("--device", default="cpu")


def main(args, print_fn=print) -> list:
    # every output path is checked before the first measurement, not after the whole suite
    _check_outputs({"--csv": args.csv, "--json": args.json, "--plot": args.plot}, args.overwrite)
    if args.flops:
        for pname in args.preset:
            fl = stage_flops(pname)
            print_fn(f"FLOPs/image ({pname}, matmul+conv, reference): "
                     + ", ".join(f"{k} {v / 1e9:.3f} G" for k, v in fl.items()))
    return run_bench(preset=args.preset, batch_sizes=args.batch_sizes, quick=args.quick, csv=args.csv,
                     device=args.device, backends=args.variants, plot=args.plot, json_path=args.json,
                     tasks=tuple(args.tasks), dtype=args.dtype, reps=args.reps, warmup=args.warmup,
                     split=not args.no_split, threads=args.threads, print_fn=print_fn,
                     overwrite=args.overwrite)


__all__ = ["run_bench", "time_fn", "write_csv", "write_plot", "stage_flops", "coupling_bytes", "COLUMNS",
           "SPLIT", "VARIANTS", "RUNTIME_VARIANTS", "TASKS", "add_arguments", "main"]
