"""The measurements of ``dadf-fast bench``: what one row times, and how.

A row is one (preset, batch, task, variant).  Tasks: ``infer`` (``model.predict``, plus the
per-stage split timed through :meth:`dadf_fast.DADF.infer`'s stage hook), ``stage1`` and
``stage2`` (one training step of each stage on cached inputs).  Variants: see
:data:`VARIANTS` and :mod:`dadf_fast.cli.bench`; the exported-runtime variants
(:data:`RUNTIME_VARIANTS`) time the model exported by :func:`dadf_fast.deploy.export.export`
(one verified ONNX export per model, reused for every batch size, and its OpenVINO
conversion), inference only.
"""
from __future__ import annotations

import statistics
import time

import torch

from dadf_fast.utils.measure import peak_memory_mb, reset_peak_memory, sync

VARIANTS = ("torch", "compile", "auto", "auto-compile", "auto-graph", "onnxruntime", "openvino", "openvino-bf16")
DEFAULT_VARIANTS = ("torch", "compile", "auto")
# variant -> export format: the exported graph in ONNX Runtime / OpenVINO on the CPU (float32, the
# threads torch has), part of the default variants on CPU
RUNTIME_VARIANTS = {"onnxruntime": "onnx", "openvino": "openvino", "openvino-bf16": "openvino"}
# asked for by name only: OpenVINO 2026.4's bfloat16 hung in infer on the lite graph on an AMX
# Xeon (docs/benchmarks.md), and a default run must not hang
EXPLICIT_ONLY = ("openvino-bf16",)
TASKS = ("infer", "stage1", "stage2")
# the column of each of DADF.INFERENCE_STAGES, in the model's order
STAGE_COLUMNS = {"features": "backbone_ms", "reconstruct": "transformer_ms", "latents": "flows_ms",
                 "score": "scoring_ms"}
SPLIT = tuple(STAGE_COLUMNS.values())
COLUMNS = ("preset", "device", "dtype", "batch", "task", "variant", "seconds", "images_per_s", "ratio",
           *SPLIT, "peak_mb", "compile_s", "ops", "note")


def time_inference_stages(model, images, device) -> tuple[dict, dict]:
    """One inference (``model.infer`` under the model's autocast) with the device synchronised
    and the clock read after each stage.

    Returns ``({column: ms}, output)``: milliseconds per stage under the names of
    :data:`STAGE_COLUMNS`, and the model's output dict (``anomaly_map [B,1,S,S]``,
    ``score [B]``).  Raises ``RuntimeError`` when the stages the model ran are not those of
    :data:`STAGE_COLUMNS`, so a stage added to the model cannot go untimed.
    """
    marks = []

    def after_stage(name):
        sync(device)
        marks.append((name, time.perf_counter()))

    with model.autocast(torch.device(device).type):
        sync(device)
        start = time.perf_counter()
        out = model.infer(images, after_stage=after_stage)
    ran = tuple(name for name, _ in marks)
    if ran != tuple(STAGE_COLUMNS):
        raise RuntimeError(f"the model ran the inference stages {ran}, the bench times {tuple(STAGE_COLUMNS)}; "
                           "update dadf_fast.cli.bench_tasks.STAGE_COLUMNS")
    ms, before = {}, start
    for name, t in marks:
        ms[STAGE_COLUMNS[name]] = 1e3 * (t - before)
        before = t
    return ms, out


def median_stage_split(model, images, device, warmup: int, reps: int) -> dict:
    """Per-stage milliseconds (:data:`SPLIT` keys), the median of ``reps`` timed inferences."""
    with torch.no_grad():
        for _ in range(warmup):
            time_inference_stages(model, images, device)
        runs = [time_inference_stages(model, images, device)[0] for _ in range(reps)]
    return {k: statistics.median(r[k] for r in runs) for k in SPLIT}


class RuntimeMissing(ImportError):
    """The runtime of an exported-runtime variant (or the exporter) is not installed."""


def exported_file(model, fmt: str, x, exports: dict) -> str:
    """The file of ``model`` exported as ``fmt``, made on first use and kept in ``exports``
    (``{"tmp": a TemporaryDirectory, fmt: path}``; the caller cleans ``tmp`` up, else it goes
    when collected).  OpenVINO is converted from the ONNX export (one trace per model)."""
    import os
    import tempfile

    from dadf_fast.deploy.export import export, onnx_to_openvino

    if "tmp" not in exports:
        exports["tmp"] = tempfile.TemporaryDirectory(prefix="dadf-bench-export-")
    folder = exports["tmp"].name
    if "onnx" not in exports:
        report = export(model, os.path.join(folder, "onnx"), format="onnx", images=x.detach().float().cpu(),
                        log=lambda *_: None)
        exports["onnx"] = report["files"][0]
    if fmt == "openvino" and fmt not in exports:
        xml = os.path.join(folder, "model.xml")
        onnx_to_openvino(exports["onnx"], xml)
        exports[fmt] = xml
    return exports[fmt]


def runtime_task(model, variant, x, exports: dict):
    """``run()`` of an exported-runtime variant on batch ``x``, with torch's thread count."""
    from dadf_fast.deploy.runtime import load_runtime, missing_runtime

    fmt = RUNTIME_VARIANTS[variant]
    for need in ([fmt] if fmt == "onnx" else ["onnx", fmt]):  # the OpenVINO file is converted from the ONNX
        missing = missing_runtime(need)
        if missing:
            raise RuntimeMissing(missing)
    precision = "bf16" if variant == "openvino-bf16" else "f32"
    if precision == "bf16":  # before the export (a minute on the lite model), not after it
        from dadf_fast.deploy.runtime import openvino_bf16_unsupported

        reason = openvino_bf16_unsupported()
        if reason:
            raise RuntimeMissing(reason)
    run = load_runtime(exported_file(model, fmt, x, exports), fmt, threads=torch.get_num_threads(),
                       precision=precision)
    return lambda: run(x)


def make_task(model, task, variant, x, cache):
    """``step_fn`` for one (task, variant) on batch ``x``; ``cache`` holds the backbone
    features (``feats``) and flow inputs (``inputs``) of ``x`` for the training tasks, and
    ``exports`` (a dict shared by the batch sizes of a model) its exported files."""
    from dadf_fast.nn import reconstruction_loss

    if variant in RUNTIME_VARIANTS:
        return runtime_task(model, variant, x, cache.setdefault("exports", {}))
    compiling = variant in ("compile", "auto-compile")
    # on GPU, auto-compile also takes torch.compile's CUDA-graph mode (launch overhead)
    compile_mode = "reduce-overhead" if variant == "auto-compile" and x.device.type == "cuda" else None
    if task == "infer":
        if variant == "auto-graph":
            from dadf_fast.models.graphs import CUDAGraphInference

            graph = CUDAGraphInference(model, x.shape[0])
            return lambda: graph(x)
        if not compiling:
            return lambda: model.predict(x)

        def infer(images):
            with model.autocast(images.device.type):
                return model.infer(images)

        compiled = torch.compile(infer, mode=compile_mode)

        def run():
            with torch.no_grad():
                return compiled(x)

        return run

    if task == "stage1":
        module, arg = model.reconstructor, cache["feats"]
        opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-4, betas=(0.9, 0.95))

        def loss_fn(f):
            with model.autocast(x.device.type):
                local, glob = model.reconstruct(f)
                return reconstruction_loss(f, local, glob)
    else:
        module, arg = model.flows, cache["inputs"]
        opt = torch.optim.Adam([p for p in module.parameters() if p.requires_grad], lr=1e-3, weight_decay=1e-5)

        def loss_fn(inp):
            with model.autocast(x.device.type):
                return model.flow_loss(inp)

    if compiling:
        loss_fn = torch.compile(loss_fn)

    def step():
        module.train()
        loss = loss_fn(arg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    return step


def resolved_ops(backend, device, dtype, head_dim: int | None = None) -> str:
    """``"dual_attention=triton/affine_coupling=cpp/..."``: the backend each op runs on
    (``head_dim``: the model's attention head dim, which decides whether Triton can run it)."""
    from dadf_fast.ops import selected_backend

    names = ("dual_attention", "affine_coupling", "flow_nll", "multiscale_score")
    out = []
    for op in names:
        # mixed precision: only the attention sees the reduced dtype; the flow epilogue,
        # NLL and scoring ops receive float32
        op_dtype = dtype if op == "dual_attention" else torch.float32
        try:
            sizes = {"head_dim": head_dim} if op == "dual_attention" and head_dim is not None else {}
            out.append(f"{op}={selected_backend(op, backend, device, op_dtype, **sizes)}")
        except Exception as exc:  # an explicit backend that cannot run
            out.append(f"{op}=unavailable({type(exc).__name__})")
    return "/".join(out)


def error_note(variant, exc) -> str:
    """The row note of a variant that failed with ``exc`` (or was skipped: its runtime is missing)."""
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if isinstance(exc, RuntimeMissing):
        return f"skipped: {msg}"
    if variant in RUNTIME_VARIANTS:
        what = "export failed"
    else:
        what = {"compile": "compile failed", "auto-compile": "compile failed",
                "auto-graph": "capture failed"}.get(variant, "failed")
    return f"{what}: {type(exc).__name__}: {msg[:160]}"


def _head_dim(model) -> int | None:
    from dadf_fast.nn import DualAttention

    return next((m.head_dim for m in model.modules() if isinstance(m, DualAttention)), None)


def _empty_row(pname, task, variant, backend, x, dev, tdtype, head_dim=None) -> dict:
    row = dict(preset=pname, device=str(dev), dtype=str(tdtype).replace("torch.", ""), batch=x.shape[0], task=task,
               variant=variant, seconds=float("nan"), images_per_s=float("nan"), ratio=float("nan"),
               **{k: float("nan") for k in SPLIT}, peak_mb=float("nan"), compile_s=float("nan"),
               ops=resolved_ops(backend, dev, tdtype, head_dim), note="")
    if variant in ("compile", "auto-compile"):
        row["ops"] = "torch.compile(" + row["ops"] + ")"
    elif variant == "auto-graph":
        row["ops"] = "cuda-graph(" + row["ops"] + ")"
    elif variant in RUNTIME_VARIANTS:
        precision = ", bfloat16 inference precision" if variant == "openvino-bf16" else ""
        row["ops"] = f"{variant}(exported float32 graph{precision}, CPU, {torch.get_num_threads()} threads)"
    return row


def run_task(model, pname, task, variants, x, cache, dev, tdtype, reps, warmup, split) -> list:
    """One row per variant.  Each variant is prepared and warmed up (compile time and peak
    memory measured there), then the timed calls are interleaved across the variants
    (rep 1 of each, rep 2 of each, ...) so that a drift of the machine hits all of them alike.
    A variant that fails becomes its row's note, not a crash of the suite."""
    import torch._dynamo

    bs = x.shape[0]
    rows, calls = [], {}
    if task != "infer":  # CUDA graphs and exported graphs are inference only
        variants = [v for v in variants if v != "auto-graph" and v not in RUNTIME_VARIANTS]
    for variant in variants:
        backend = "torch" if variant in ("torch", "compile") else "auto"
        model.set_backend(backend)
        row = _empty_row(pname, task, variant, backend, x, dev, tdtype, _head_dim(model))
        rows.append(row)
        reset_peak_memory(dev)
        try:
            t0 = time.perf_counter()  # an exported-runtime variant exports and loads in make_task
            fn = make_task(model, task, variant, x, cache)

            def call(fn=fn, backend=backend):
                model.set_backend(backend)  # (compiled code guards on it: keep it fixed per variant)
                return fn()

            if variant in ("compile", "auto-compile", "auto-graph", *RUNTIME_VARIANTS):  # compile / capture / export
                if variant not in RUNTIME_VARIANTS:
                    t0 = time.perf_counter()
                call()
                sync(dev)
                row["compile_s"] = time.perf_counter() - t0
            for _ in range(warmup):
                call()
            sync(dev)
            row["peak_mb"] = peak_memory_mb(dev)
            calls[variant] = call
        except Exception as exc:
            row["note"] = error_note(variant, exc)
    times = {v: [] for v in calls}
    for _ in range(reps):
        for variant, call in list(calls.items()):
            try:
                t0 = time.perf_counter()
                call()
                sync(dev)
                times[variant].append(time.perf_counter() - t0)
            except Exception as exc:
                rows[variants.index(variant)]["note"] = error_note(variant, exc)
                del calls[variant]
    for row in rows:
        v = row["variant"]
        if v in calls and times[v]:
            row["seconds"] = statistics.median(times[v])
            row["images_per_s"] = bs / row["seconds"]
            if task == "infer" and split and v in ("torch", "auto"):
                model.set_backend(v)
                try:
                    row.update(median_stage_split(model, x, dev, warmup=0, reps=reps))
                except Exception as exc:
                    row["note"] = error_note(v, exc)
    if "compile" in variants or "auto-compile" in variants:
        torch._dynamo.reset()
    return rows
