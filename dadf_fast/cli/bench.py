"""``dadf-fast bench``: the end-to-end benchmark suite.

For each preset and batch size it times, on random images:

* ``infer``: ``model.predict(images)`` (backbone -> transformer -> flows -> scoring), with the
  per-stage split (``backbone_ms``, ``transformer_ms``, ``flows_ms`` = flow-input concat +
  flows of the scored scales, ``scoring_ms`` = ``multiscale_score`` + smoothing) measured by
  timing the stages one by one;
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
  captured at the row's batch size (:class:`dadf_fast.CUDAGraphInference`).

``dtype="bfloat16"``/``"float16"`` runs every variant in mixed precision,
``DADF(dtype=...)`` (autocast; float32 weights, images, flow epilogue and scoring).

Numbers are medians of ``reps`` timed calls after ``warmup`` untimed calls, with device
synchronisation, the timed calls of the variants interleaved; ``ratio`` is images/s against the ``torch`` row of the same preset, batch and
task, measured in the same run.  Memory: ``peak_mb`` is ``torch.cuda.max_memory_allocated``
on GPU, and on CPU the process's peak resident set size during the row (``VmHWM``, reset per
row where Linux allows it; otherwise the process peak so far, which only grows).
Timing does not depend on weight values, so every preset runs with random weights
(``pretrained=False``).  CPU timings are only meaningful on an otherwise idle machine: the
table header prints the load average.
"""
from __future__ import annotations

import math
import os
import statistics
import time

import torch

VARIANTS = ("torch", "compile", "auto", "auto-compile", "auto-graph")
DEFAULT_VARIANTS = ("torch", "compile", "auto")
TASKS = ("infer", "stage1", "stage2")
SPLIT = ("backbone_ms", "transformer_ms", "flows_ms", "scoring_ms")
COLUMNS = ("preset", "device", "dtype", "batch", "task", "variant", "seconds", "images_per_s", "ratio",
           *SPLIT, "peak_mb", "compile_s", "ops", "note")


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_fn(fn, device, warmup: int = 1, reps: int = 3) -> float:
    """Median seconds of ``fn()`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


# ----------------------------------------------------------------------------- memory
def _reset_peak(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        return
    try:  # Linux >= 4.0: "5" resets the peak RSS (VmHWM) of the process
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _peak_mb(device) -> float:
    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    except Exception:  # pragma: no cover - non-POSIX
        return float("nan")


def load_note() -> str:
    """``"load 0.42"`` (1-minute load average) or ``""`` where unknown."""
    try:
        return f"load {os.getloadavg()[0]:.2f}"
    except (OSError, AttributeError):
        return ""


# ----------------------------------------------------------------------------- the timed functions
def _infer_stages(model, x, device) -> dict:
    """One inference with each stage timed separately (the computation of ``DADF._infer``)."""
    with model.autocast(device.type):
        return _infer_stages_timed(model, x, device)


def _infer_stages_timed(model, x, device) -> dict:
    from dadf_fast import ops
    from dadf_fast.models.postprocess import gaussian_smooth
    from dadf_fast.utils.precision import autocast_off

    out = {}
    t0 = time.perf_counter()
    feats = model.features(x)
    _sync(device)
    t1 = time.perf_counter()
    local, glob = model.reconstructor(feats)
    _sync(device)
    t2 = time.perf_counter()
    zs = [model.flows[s](model.flow_inputs(feats[s:s + 1], local[s:s + 1], glob[s:s + 1])[0], compute_logdet=False)[0]
          for s in model.config["score_scales"]]
    _sync(device)
    t3 = time.perf_counter()
    with autocast_off(device):
        amap, score = ops.multiscale_score(zs, model.input_size,
                                           backend=ops.module_backend("multiscale_score", model.backend))
        if model.config["smooth_sigma"]:
            amap = gaussian_smooth(amap, model.config["smooth_sigma"])
            score = amap.flatten(1).amax(1)
    _sync(device)
    t4 = time.perf_counter()
    out["backbone_ms"], out["transformer_ms"] = 1e3 * (t1 - t0), 1e3 * (t2 - t1)
    out["flows_ms"], out["scoring_ms"] = 1e3 * (t3 - t2), 1e3 * (t4 - t3)
    return out


def _split(model, x, device, warmup, reps) -> dict:
    with torch.no_grad():
        for _ in range(warmup):
            _infer_stages(model, x, device)
        runs = [_infer_stages(model, x, device) for _ in range(reps)]
    return {k: statistics.median(r[k] for r in runs) for k in SPLIT}


def _make_task(model, task, variant, x, cache):
    """``(step_fn, params_to_restore)`` for one (task, variant) on batch ``x``."""
    from dadf_fast.nn import reconstruction_loss

    compiling = variant in ("compile", "auto-compile")
    # on GPU, auto-compile also takes torch.compile's CUDA-graph mode (launch overhead)
    compile_mode = "reduce-overhead" if variant == "auto-compile" and x.device.type == "cuda" else None
    if task == "infer":
        if variant == "auto-graph":
            from dadf_fast.models.graphs import CUDAGraphInference

            graph = CUDAGraphInference(model, x.shape[0])
            return (lambda: graph(x)), None
        if not compiling:
            return (lambda: model.predict(x)), None

        def infer(images):
            with model.autocast(images.device.type):
                return model._infer(model.features(images))

        compiled = torch.compile(infer, mode=compile_mode)

        def run():
            with torch.no_grad():
                return compiled(x)

        return run, None

    if task == "stage1":
        feats = cache["feats"]
        module = model.reconstructor
        params = [p for p in module.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95))

        def loss_fn(f):
            with model.autocast(x.device.type):
                local, glob = model.reconstructor(f)
                return reconstruction_loss(f, local, glob)

        arg = feats
    else:
        inputs = cache["inputs"]
        module = model.flows
        params = [p for p in module.parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, lr=1e-3, weight_decay=1e-5)
        def loss_fn(inp):
            with model.autocast(x.device.type):
                return model.flow_loss(inp)

        arg = inputs
    if compiling:
        loss_fn = torch.compile(loss_fn)

    def step():
        module.train()
        loss = loss_fn(arg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    return step, module


def _resolved_ops(backend, device, dtype) -> str:
    from dadf_fast.ops import selected_backend

    names = ("dual_attention", "affine_coupling", "flow_nll", "multiscale_score")
    out = []
    for op in names:
        # mixed precision: only the attention sees the reduced dtype; the flow epilogue,
        # NLL and scoring ops receive float32
        op_dtype = dtype if op == "dual_attention" else torch.float32
        try:
            out.append(f"{op}={selected_backend(op, backend, device, op_dtype)}")
        except Exception as exc:  # an explicit backend that cannot run
            out.append(f"{op}=unavailable({type(exc).__name__})")
    return "/".join(out)


# ----------------------------------------------------------------------------- the suite
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
            ``auto`` (on CUDA also ``auto-compile`` and ``auto-graph``), ``quick``:
            ``("torch", "auto")``.  ``"torch"`` is always run first (the ratio base).
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
    from dadf_fast import DADF

    dev = torch.device(device)
    presets = [preset] if isinstance(preset, str) else list(preset)
    if quick:
        presets = [p for p in presets if p == "lite"] or ["lite"]
    if batch_sizes is None:
        batch_sizes = [1, 8] if dev.type == "cpu" else [1, 8, 32]
    if quick:
        batch_sizes = list(batch_sizes)[:2]
    default = list(DEFAULT_VARIANTS) + (["auto-compile", "auto-graph"] if dev.type == "cuda" else [])
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
    _print_header(print_fn)
    rows = []
    for pname in presets:
        torch.manual_seed(0)
        model = DADF(pname, pretrained=False, input_size=input_size, dtype=tdtype, **(model_kwargs or {}))
        model = model.to(device=dev).eval()
        snapshot = {k: v.detach().clone() for k, v in model.state_dict().items()}
        for bs in batch_sizes:
            x = torch.randn(bs, 3, input_size, input_size, device=dev)
            cache = {}
            with torch.no_grad(), model.autocast(dev.type):
                model.set_backend("torch")
                cache["feats"] = [f.detach() for f in model.features(x)]
                local, glob = model.reconstructor(cache["feats"])
                cache["inputs"] = [t.detach() for t in model.flow_inputs(cache["feats"], local, glob)]
                del local, glob
            for task in tasks:
                task_rows = _run_task(model, pname, task, variants, x, cache, dev, tdtype, reps, warmup, split)
                if task != "infer":
                    model.load_state_dict(snapshot)
                    model.eval()
                base = task_rows[0]["images_per_s"]  # the torch row
                for row in task_rows:
                    ok = base and not math.isnan(base) and not math.isnan(row["images_per_s"])
                    row["ratio"] = row["images_per_s"] / base if ok else float("nan")
                    rows.append(row)
                    _print_row(row, print_fn)
                if csv:  # written after every task, so a run cut short keeps what it measured
                    write_csv(rows, csv)
            del cache, x
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


def _error_note(variant, exc) -> str:
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    what = {"compile": "compile failed", "auto-compile": "compile failed", "auto-graph": "capture failed"}.get(
        variant, "failed")
    return f"{what}: {type(exc).__name__}: {msg[:160]}"


def _run_task(model, pname, task, variants, x, cache, dev, tdtype, reps, warmup, split) -> list:
    """One row per variant.  Each variant is prepared and warmed up (compile time and peak
    memory measured there), then the timed calls are interleaved across the variants
    (rep 1 of each, rep 2 of each, ...) so that a drift of the machine hits all of them alike."""
    import torch._dynamo

    bs = x.shape[0]
    rows, fns = [], {}
    if task != "infer":  # CUDA graphs are captured for inference only
        variants = [v for v in variants if v != "auto-graph"]
    for variant in variants:
        backend = "torch" if variant in ("torch", "compile") else "auto"
        model.set_backend(backend)
        row = dict(preset=pname, device=str(dev), dtype=str(tdtype).replace("torch.", ""), batch=bs, task=task,
                   variant=variant, seconds=float("nan"), images_per_s=float("nan"), ratio=float("nan"),
                   **{k: float("nan") for k in SPLIT}, peak_mb=float("nan"), compile_s=float("nan"),
                   ops=_resolved_ops(backend, dev, tdtype), note="")
        if variant in ("compile", "auto-compile"):
            row["ops"] = "torch.compile(" + row["ops"] + ")"
        elif variant == "auto-graph":
            row["ops"] = "cuda-graph(" + row["ops"] + ")"
        rows.append(row)
        _reset_peak(dev)
        try:
            fn, _ = _make_task(model, task, variant, x, cache)

            def call(fn=fn, backend=backend):
                model.set_backend(backend)  # (compiled code guards on it: keep it fixed per variant)
                return fn()

            if variant in ("compile", "auto-compile", "auto-graph"):  # compile / capture time
                t0 = time.perf_counter()
                call()
                _sync(dev)
                row["compile_s"] = time.perf_counter() - t0
            for _ in range(warmup):
                call()
            _sync(dev)
            row["peak_mb"] = _peak_mb(dev)
            fns[variant] = call
        except Exception as exc:  # a failing variant is a row note, not a crash of the suite
            row["note"] = _error_note(variant, exc)
    times = {v: [] for v in fns}
    for _ in range(reps):
        for variant, call in list(fns.items()):
            try:
                t0 = time.perf_counter()
                call()
                _sync(dev)
                times[variant].append(time.perf_counter() - t0)
            except Exception as exc:
                rows[variants.index(variant)]["note"] = _error_note(variant, exc)
                del fns[variant]
    for row in rows:
        v = row["variant"]
        if v in fns and times[v]:
            row["seconds"] = statistics.median(times[v])
            row["images_per_s"] = bs / row["seconds"]
            if task == "infer" and split and v in ("torch", "auto"):
                model.set_backend(v)
                try:
                    row.update(_split(model, x, dev, warmup=0, reps=reps))
                except Exception as exc:
                    row["note"] = _error_note(v, exc)
    if "compile" in variants or "auto-compile" in variants:
        torch._dynamo.reset()
    return rows


# ----------------------------------------------------------------------------- outputs
def _fmt(v, spec):
    width = int(spec.split(".")[0] or 0)
    return "-".rjust(width) if isinstance(v, float) and math.isnan(v) else format(v, spec)


def _print_header(print_fn=print) -> None:
    print_fn(f"{'preset':<7}{'batch':>6} {'task':<7}{'variant':<13}{'img/s':>9}{'ms/batch':>10}{'vs torch':>9}"
             f"{'backbone':>10}{'transf.':>9}{'flows':>9}{'scoring':>9}{'peak MB':>9}  note")


def _print_row(r, print_fn=print) -> None:
    first = "capture" if r["variant"] == "auto-graph" else "compile"
    note = r["note"] or (f"{first} {r['compile_s']:.1f} s" if not math.isnan(r["compile_s"]) else "")
    print_fn(f"{r['preset']:<7}{r['batch']:>6} {r['task']:<7}{r['variant']:<13}{_fmt(r['images_per_s'], '9.2f')}"
             f"{_fmt(1e3 * r['seconds'], '10.1f')}{_fmt(r['ratio'], '8.2f')}x"
             f"{_fmt(r['backbone_ms'], '10.1f')}{_fmt(r['transformer_ms'], '9.1f')}"
             f"{_fmt(r['flows_ms'], '9.1f')}{_fmt(r['scoring_ms'], '9.1f')}{_fmt(r['peak_mb'], '9.0f')}  {note}")


def write_csv(rows, path) -> None:
    import csv as _csv

    from dadf_fast.utils.io import atomic_open

    with atomic_open(path, "w") as f:
        w = _csv.DictWriter(f, fieldnames=list(COLUMNS))
        w.writeheader()
        w.writerows({k: r.get(k, "") for k in COLUMNS} for r in rows)


def write_plot(rows, path, title: str = "") -> None:
    """Bar plot: images/s per (preset, batch, task) and variant; inference stage split beside it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(dict.fromkeys((r["preset"], r["batch"], r["task"]) for r in rows))
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    by = {(r["preset"], r["batch"], r["task"], r["variant"]): r for r in rows}
    infer = [r for r in rows if r["task"] == "infer" and not math.isnan(r["backbone_ms"])]
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 1.1 * len(groups) + 6), 4.8),
                             gridspec_kw={"width_ratios": [max(2, len(groups)), max(1, len(infer))]})
    ax = axes[0]
    width = 0.8 / max(1, len(variants))
    for j, v in enumerate(variants):
        vals = [by.get((*g, v), {}).get("images_per_s", float("nan")) for g in groups]
        xs = [i + (j - (len(variants) - 1) / 2) * width for i in range(len(groups))]
        bars = ax.bar(xs, [0 if math.isnan(y) else y for y in vals], width, label=v)
        for b, g in zip(bars, groups):
            r = by.get((*g, v))
            if r and not math.isnan(r["ratio"]) and v != "torch":
                ax.annotate(f"{r['ratio']:.2f}x", (b.get_x() + b.get_width() / 2, b.get_height()),
                            ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([f"{p}\nb{b} {t}" for p, b, t in groups], fontsize=8)
    ax.set_ylabel("images / s")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.set_title("throughput (ratio vs torch)", fontsize=9)
    ax = axes[1]
    bottom = [0.0] * len(infer)
    for k in SPLIT:
        vals = [r[k] / r["batch"] for r in infer]
        ax.bar(range(len(infer)), vals, 0.6, bottom=bottom, label=k.replace("_ms", ""))
        bottom = [a + b for a, b in zip(bottom, vals)]
    ax.set_xticks(range(len(infer)))
    ax.set_xticklabels([f"{r['preset']} b{r['batch']}\n{r['variant']}" for r in infer], fontsize=8)
    ax.set_ylabel("inference ms / image")
    ax.legend(fontsize=8)
    ax.set_title("where inference time goes", fontsize=9)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    from dadf_fast.utils.io import atomic_open

    fmt = os.path.splitext(os.fspath(path))[1].lstrip(".").lower() or "png"
    with atomic_open(path, "wb") as f:
        fig.savefig(f, dpi=110, format=fmt)
    plt.close(fig)


# ----------------------------------------------------------------------------- FLOPs (roofline)
def stage_flops(preset: str = "lite", input_size: int = 256) -> dict:
    """Matmul/conv FLOPs per image of each stage (``torch.utils.flop_counter``, batch 1, the
    official computation; elementwise work is not counted).  ``flows`` counts the flows as
    FrEIA computes them, and ``flows_dense_perm`` is the part of it spent in FrEIA's dense
    permutation convolutions (counted analytically: the reference and the fast path apply the
    permutation as a gather, which has no FLOPs); ``stage1_train``/``stage2_train`` are forward + backward of the stage loss."""
    from torch.utils.flop_counter import FlopCounterMode

    from dadf_fast import DADF
    from dadf_fast.nn import reconstruction_loss

    torch.manual_seed(0)
    model = DADF(preset, pretrained=False, input_size=input_size, backend="torch").eval()
    x = torch.randn(1, 3, input_size, input_size)

    def count(fn):
        with FlopCounterMode(display=False) as fc:
            fn()
        return fc.get_total_flops()

    out = {}
    with torch.no_grad():
        feats = model.features(x)
        out["backbone"] = count(lambda: model.features(x))
        out["transformer"] = count(lambda: model.reconstructor(feats))
        local, glob = model.reconstructor(feats)
        inputs = model.flow_inputs(feats, local, glob)
        scored = model.config["score_scales"]
        out["flows_dense_perm"] = sum(2 * model.flows[s].channels ** 2 * inputs[s].shape[2] * inputs[s].shape[3]
                                      * len(model.flows[s].steps) for s in scored)
        out["flows"] = (count(lambda: [model.flows[s](inputs[s], compute_logdet=False) for s in scored])
                        + out["flows_dense_perm"])
    f1 = [f.clone() for f in feats]
    out["stage1_train"] = count(lambda: reconstruction_loss(f1, *model.reconstructor(f1)).backward())
    out["stage2_train"] = count(lambda: model.flow_loss(inputs).backward())
    return out


def coupling_bytes(preset: str = "lite", input_size: int = 256, itemsize: int = 4) -> list:
    """Bytes per image the fused coupling epilogue must move per step and scale: read x
    ``[C,H,W]`` and a ``[2*(C//2),H,W]``, write y ``[C,H,W]`` (g, b, perm are negligible)."""
    from dadf_fast.models.presets import PRESETS

    name = PRESETS[preset]["backbone"]
    channels = {"efficientnet_lite0": (24, 40, 112), "wide_resnet50_2": (256, 512, 1024)}.get(name)
    out = []
    for c, s in zip(channels, (4, 8, 16)):
        cc, p = 3 * c, (input_size // s) ** 2
        out.append(dict(scale=s, channels=cc, pixels=p, bytes=itemsize * p * (cc + 2 * (cc // 2) + cc)))
    return out


# ----------------------------------------------------------------------------- command line
def add_arguments(p) -> None:
    from dadf_fast.cli.argtypes import nonnegative_int, positive_int

    p.add_argument("--preset", nargs="+", default=["lite"], choices=["lite", "paper"],
                   help="preset(s) to run (default: lite)")
    p.add_argument("--batch-sizes", type=positive_int, nargs="+", default=None,
                   help="default: 1 8 on CPU, 1 8 32 on GPU")
    p.add_argument("--quick", action="store_true",
                   help="lite only, batch 1 and 8, 2 reps, torch and auto only (about a minute on a 2-core CPU)")
    p.add_argument("--variants", nargs="+", default=None, choices=list(VARIANTS),
                   help="default: torch compile auto (quick: torch auto)")
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
           "VARIANTS", "TASKS", "add_arguments", "main"]
