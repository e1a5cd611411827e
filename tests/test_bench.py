"""The benchmark suite runs end to end on a tiny configuration (no timing assertions)."""
import csv
import math

import pytest

from dadf_fast.cli.bench import COLUMNS, SPLIT, TASKS, run_bench


def test_quick_bench_rows_csv_and_plot(tmp_path):
    lines = []
    out_csv, out_png, out_json = tmp_path / "b.csv", tmp_path / "b.png", tmp_path / "b.json"
    rows = run_bench("lite", batch_sizes=[1, 2], quick=True, reps=1, warmup=0, input_size=64,
                     model_kwargs=dict(depth=1, flow_steps=2), csv=str(out_csv), plot=str(out_png),
                     json_path=str(out_json), print_fn=lines.append)
    # 2 batch sizes x 3 tasks x (torch, auto)
    assert len(rows) == 2 * len(TASKS) * 2
    assert {r["variant"] for r in rows} == {"torch", "auto"}
    for r in rows:
        assert set(r) == set(COLUMNS)
        assert r["note"] == "", r["note"]
        assert r["images_per_s"] > 0 and r["seconds"] > 0
        assert r["ratio"] > 0 and math.isfinite(r["ratio"])
        if r["variant"] == "torch":
            assert r["ratio"] == 1.0
        if r["task"] == "infer":
            assert all(r[k] >= 0 for k in SPLIT)
        assert "affine_coupling=" in r["ops"]
    assert any("vs torch" in line for line in lines)
    with open(out_csv, newline="") as f:
        read = list(csv.DictReader(f))
    assert tuple(read[0]) == COLUMNS and len(read) == len(rows)
    assert all(float(r["ratio"]) > 0 for r in read)
    assert out_png.stat().st_size > 0 and out_json.stat().st_size > 0


def test_failing_variant_is_a_row_note(monkeypatch):
    import dadf_fast.cli.bench as bench

    def boom(*a, **k):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(bench.torch, "compile", boom)
    rows = run_bench("lite", batch_sizes=[1], backends=("torch", "compile"), tasks=("infer", "stage2"), reps=1,
                     warmup=0, input_size=64, model_kwargs=dict(depth=1, flow_steps=2), print_fn=lambda *_: None)
    comp = [r for r in rows if r["variant"] == "compile"]
    assert len(comp) == 2 and all(r["note"].startswith("compile failed") for r in comp)
    assert all(r["images_per_s"] > 0 for r in rows if r["variant"] == "torch")


def test_bad_arguments():
    with pytest.raises(ValueError, match="variants"):
        run_bench(backends=("jax",), print_fn=lambda *_: None)
    with pytest.raises(ValueError, match="tasks"):
        run_bench(tasks=("fit",), print_fn=lambda *_: None)


def test_stage_flops_and_coupling_bytes():
    from dadf_fast.cli.bench import coupling_bytes, stage_flops

    fl = stage_flops("lite", input_size=64)
    assert all(fl[k] > 0 for k in ("backbone", "transformer", "flows", "stage1_train", "stage2_train"))
    assert 0 < fl["flows_dense_perm"] < fl["flows"]
    rows = coupling_bytes("lite", input_size=64)
    assert [r["channels"] for r in rows] == [72, 120, 336]
    assert rows[0]["bytes"] == 4 * 16 * 16 * (72 + 72 + 72)


def test_cli_parses_bench_options():
    from dadf_fast.cli.commands import build_parser

    args = build_parser().parse_args(["bench", "--quick", "--preset", "lite", "paper", "--variants", "torch", "auto",
                                      "--csv", "x.csv", "--plot", "x.png", "--dtype", "bfloat16"])
    assert args.quick and args.preset == ["lite", "paper"] and args.variants == ["torch", "auto"]
    assert args.plot == "x.png" and args.dtype == "bfloat16"


def test_mixed_precision_rows_and_graph_variant_on_cpu():
    """``dtype="bfloat16"`` benches the autocast model (float32 inputs); a CUDA-graph row on a
    CPU becomes a note, and training tasks have no graph row."""
    rows = run_bench("lite", batch_sizes=[2], backends=("torch", "auto", "auto-graph"), tasks=("infer", "stage2"),
                     reps=1, warmup=0, input_size=64, dtype="bfloat16", model_kwargs=dict(depth=1, flow_steps=2),
                     print_fn=lambda *_: None)
    assert [(r["task"], r["variant"]) for r in rows] == [("infer", "torch"), ("infer", "auto"), ("infer", "auto-graph"),
                                                         ("stage2", "torch"), ("stage2", "auto")]
    assert all(r["dtype"] == "bfloat16" for r in rows)
    graph = rows[2]
    assert graph["note"].startswith("capture failed") and "CUDA" in graph["note"]
    for r in rows[:2] + rows[3:]:
        assert r["note"] == "" and r["images_per_s"] > 0
    # the flow epilogue ops run in float32 under mixed precision: the C++ kernels are chosen
    assert "affine_coupling=cpp" in rows[1]["ops"]


def _tiny_model(backend):
    import torch

    from dadf_fast import DADF

    torch.manual_seed(0)
    m = DADF("lite", pretrained=False, input_size=64, depth=1, flow_steps=2, smooth_sigma=1.0,
             backend=backend).eval()
    m.calibrate_cues(torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(5)))  # what fit() does last
    return m


@pytest.mark.parametrize("backend", ["torch", "auto"])
def test_timed_stages_are_predict(backend):
    """The per-stage timing runs the model's own computation: its output is predict's, exactly."""
    import torch

    from dadf_fast.cli.bench_tasks import time_inference_stages

    model = _tiny_model(backend)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ms, timed = time_inference_stages(model, x, torch.device("cpu"))
    want = model.predict(x)
    assert torch.equal(timed["anomaly_map"], want["anomaly_map"])
    assert torch.equal(timed["score"], want["score"])
    assert timed["anomaly_map"].shape == (2, 1, 64, 64)
    assert tuple(ms) == SPLIT and all(v >= 0 for v in ms.values())


def test_bench_times_every_stage_the_model_composes(monkeypatch):
    """STAGE_COLUMNS names exactly the stages ``DADF.infer`` runs, in order, and each stage name
    is the model method that runs: replacing a method shows up in what forward/predict run."""
    import torch

    from dadf_fast import DADF
    from dadf_fast.cli.bench_tasks import STAGE_COLUMNS, time_inference_stages

    assert tuple(STAGE_COLUMNS) == DADF.INFERENCE_STAGES
    model = _tiny_model("torch")
    x = torch.randn(1, 3, 64, 64)
    called = []
    for name in DADF.INFERENCE_STAGES:
        real = getattr(model, name)
        monkeypatch.setattr(model, name, lambda *a, _real=real, _name=name, **k: called.append(_name) or _real(*a, **k))
    hooked = []
    model.predict(x)
    assert tuple(called) == DADF.INFERENCE_STAGES
    with torch.no_grad():
        model.infer(x, after_stage=hooked.append)
    assert tuple(hooked) == DADF.INFERENCE_STAGES

    # a model whose inference runs one more stage is refused, not timed partially
    def extra_stage(images, smooth_sigma=None, after_stage=None):
        out = DADF.infer(model, images, smooth_sigma, after_stage)
        after_stage("calibrate")
        return out

    monkeypatch.setattr(model, "infer", extra_stage)
    with torch.no_grad(), pytest.raises(RuntimeError, match="calibrate"):
        time_inference_stages(model, x, torch.device("cpu"))


def _runtime_available(module):
    import importlib

    try:
        for m in ("onnx", "onnxscript", module):
            importlib.import_module(m)
    except ImportError:
        return False
    return True


def test_exported_runtime_rows_beside_the_torch_rows():
    """The onnxruntime and openvino rows time the model's export (made once, reused by the
    second batch size) on the same images, inference only; a missing runtime is a skip note."""
    lines = []
    rows = run_bench("lite", batch_sizes=[1, 3], backends=("torch", "onnxruntime", "openvino"),
                     tasks=("infer", "stage2"), reps=1, warmup=0, input_size=64, split=False,
                     model_kwargs=dict(depth=1, flow_steps=2), print_fn=lines.append)
    assert [(r["batch"], r["task"], r["variant"]) for r in rows] == [
        (b, t, v) for b in (1, 3) for t, vs in (("infer", ("torch", "onnxruntime", "openvino")), ("stage2", ("torch",)))
        for v in vs]
    for r in rows:
        if r["variant"] == "torch":
            assert r["note"] == "" and r["images_per_s"] > 0
            continue
        if not _runtime_available("onnxruntime" if r["variant"] == "onnxruntime" else "openvino"):
            assert r["note"].startswith("skipped: ") and math.isnan(r["images_per_s"])
            continue
        assert r["note"] == "", r["note"]
        assert r["images_per_s"] > 0 and r["ratio"] > 0 and r["compile_s"] > 0
        assert r["ops"].startswith(r["variant"] + "(exported float32 graph")
    assert any("export+load" in line for line in lines)


def test_missing_runtime_is_a_skipped_row(monkeypatch):
    import dadf_fast.deploy.runtime as runtime

    monkeypatch.setattr(runtime, "missing_runtime", lambda fmt: f"no {fmt} here")
    rows = run_bench("lite", batch_sizes=[1], backends=("torch", "onnxruntime", "openvino"), tasks=("infer",),
                     reps=1, warmup=0, input_size=64, split=False, model_kwargs=dict(depth=1, flow_steps=2),
                     print_fn=lambda *_: None)
    assert [r["note"] for r in rows] == ["", "skipped: no onnx here", "skipped: no onnx here"]


def test_openvino_bf16_row_is_asked_for_by_name_and_says_why_it_cannot_run(monkeypatch):
    """``openvino-bf16`` is never in the default variants (OpenVINO's bfloat16 hung on the lite
    graph on an AMX CPU); where OpenVINO reports no BF16 it is a skipped row with the reason,
    never a float32 run under a bfloat16 name."""
    import dadf_fast.deploy.runtime as runtime
    from dadf_fast.cli.bench_tasks import EXPLICIT_ONLY, RUNTIME_VARIANTS

    assert "openvino-bf16" in RUNTIME_VARIANTS and "openvino-bf16" in EXPLICIT_ONLY
    monkeypatch.setattr(runtime, "missing_runtime", lambda fmt: None)
    monkeypatch.setattr(runtime, "openvino_bf16_unsupported", lambda: "no BF16 on this CPU (test)")
    rows = run_bench("lite", batch_sizes=[1], backends=("torch", "openvino-bf16"), tasks=("infer",),
                     reps=1, warmup=0, input_size=64, split=False, model_kwargs=dict(depth=1, flow_steps=2),
                     print_fn=lambda *_: None)
    assert [r["variant"] for r in rows] == ["torch", "openvino-bf16"]
    assert rows[1]["note"] == "skipped: no BF16 on this CPU (test)" and math.isnan(rows[1]["images_per_s"])
    assert "bfloat16 inference precision" in rows[1]["ops"]


def test_runtime_precision_is_checked():
    from dadf_fast.deploy.runtime import load_runtime

    with pytest.raises(ValueError, match="precision must be one of"):
        load_runtime("model.xml", "openvino", precision="fp16")
    with pytest.raises(ValueError, match="OpenVINO setting"):
        load_runtime("model.onnx", "onnx", precision="bf16")
