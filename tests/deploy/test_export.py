"""ONNX / OpenVINO export (dadf_fast.deploy): one exported file computes what DADF.predict
computes at batch 1 and 7, with predict's output names and dtypes; metadata; an uncalibrated
model has maps and scores only; wrong sizes, full folders and a broken verification fail."""
import importlib
import json
import os

import numpy as np
import pytest
import torch

import dadf_fast
from dadf_fast import DADF, export
from dadf_fast.deploy import ExportError
from dadf_fast.utils.io import OutputPathError

EXPORT_MODULE = importlib.import_module("dadf_fast.deploy.export")  # dadf_fast.deploy.export is the function
S = 64
NAMES = ["anomaly_map", "score", "pred_score", "pred_label", "pred_mask"]


def _exporter_or_skip():
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")


def _images(n, seed):
    return torch.randn(n, 3, S, S, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def model():
    """The lite preset (flow + recon + kNN cues), cue-calibrated and threshold-calibrated on
    random images, three of them labelled anomalous with a bright square and its mask."""
    torch.manual_seed(0)
    m = DADF("lite", pretrained=False, input_size=S, depth=1, flow_steps=2).eval()
    m.calibrate_cues(_images(6, 0))
    x = _images(8, 1)
    x[5:, :, 20:40, 20:40] += 3.0
    masks = torch.zeros(8, S, S, dtype=torch.bool)
    masks[5:, 20:40, 20:40] = True
    m.calibrate(x, labels=[0, 0, 0, 0, 0, 1, 1, 1], masks=masks, log=lambda *_: None)
    return m


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory):
    """{format: report} of one export per format of ``model``."""
    _exporter_or_skip()
    out = {}
    onnx_file = None
    for fmt, runtime in (("onnx", "onnxruntime"), ("openvino", "openvino")):
        try:
            importlib.import_module(runtime)
        except ImportError:
            continue
        with _reusing_onnx(onnx_file):
            out[fmt] = export(model, tmp_path_factory.mktemp(fmt) / "out", format=fmt, log=lambda *_: None)
        onnx_file = onnx_file or next((f for f in out[fmt]["files"] if f.endswith(".onnx")), None)
    return out


def _reusing_onnx(onnx_file):
    """While active, ``export`` takes the ONNX file of an earlier export of the same model
    instead of tracing it again (torch.onnx.export takes about half a minute here): the
    conversion to OpenVINO and the verification still run on it. No-op for None."""
    import contextlib
    import shutil
    from unittest import mock

    if onnx_file is None:
        return contextlib.nullcontext()
    return mock.patch("dadf_fast.deploy.export._export_onnx", lambda graph, size, path: shutil.copyfile(onnx_file, path))


def _report(exported, fmt):
    pytest.importorskip({"onnx": "onnxruntime", "openvino": "openvino"}[fmt])
    return exported[fmt]


def _assert_agrees(got, want, calib):
    """Maps within 1e-4 (relative to the map's scale); labels and masks identical except where
    the reference lies within that tolerance of its threshold (a near-threshold tie)."""
    w = {k: v.numpy() for k, v in want.items()}
    assert list(got) == NAMES
    for k in NAMES:
        assert got[k].shape == w[k].shape and got[k].dtype == w[k].dtype, k
    tol = 1e-4 * max(1.0, float(np.abs(w["anomaly_map"]).max()))
    assert np.abs(got["anomaly_map"] - w["anomaly_map"]).max() <= tol
    assert np.abs(got["score"] - w["score"]).max() <= tol
    ties = np.abs(w["score"] - calib["image_threshold"]) <= tol
    assert ((got["pred_label"] == w["pred_label"]) | ties).all()
    pixel_ties = np.abs(w["anomaly_map"] - calib["pixel_threshold"]) <= tol
    assert ((got["pred_mask"] == w["pred_mask"]) | pixel_ties).all()


@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
def test_one_exported_file_agrees_with_predict_at_batch_1_and_7(model, exported, fmt):
    from dadf_fast.deploy import load_runtime

    report = _report(exported, fmt)
    assert report["outputs"] == NAMES and report["calibrated"]
    assert [r["batch"] for r in report["verification"]] == [1, 7]
    assert report["label_agreement"] == 1.0 and report["max_map_diff"] <= 1e-4 * 10
    assert [os.path.basename(p) for p in report["files"]] == (["model.onnx"] if fmt == "onnx"
                                                              else ["model.xml", "model.bin"])
    assert sorted(os.listdir(report["dir"])) == sorted([os.path.basename(p) for p in report["files"]]
                                                       + ["metadata.json"])
    run = load_runtime(report["files"][0], fmt)
    x = _images(7, 7)
    x[3:, :, 8:30, 30:50] += 3.0  # some images above the threshold, some below
    for batch in (x[:1], x):
        _assert_agrees(run(batch), model.predict(batch), model.calibration)


def test_onnx_graph_input_outputs_and_no_custom_ops(exported):
    onnx = pytest.importorskip("onnx")
    proto = onnx.load(_report(exported, "onnx")["files"][0])
    (inp,) = proto.graph.input
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert inp.name == "images" and dims[1:] == [3, S, S] and isinstance(dims[0], str)
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert [o.name for o in proto.graph.output] == NAMES
    types = [o.type.tensor_type.elem_type for o in proto.graph.output]
    assert types == [onnx.TensorProto.FLOAT] * 3 + [onnx.TensorProto.BOOL] * 2
    assert {n.domain for n in proto.graph.node} <= {"", "ai.onnx"}


def test_metadata(model, exported):
    report = _report(exported, "onnx")
    meta = json.loads(open(report["metadata"]).read())
    assert meta["format"] == "onnx" and meta["files"] == ["model.onnx"] and meta["runtime"] == "onnxruntime"
    assert meta["input"]["name"] == "images" and meta["input"]["shape"] == ["batch", 3, S, S]
    assert meta["input_size"] == S
    assert meta["normalization"]["mean"] == [0.485, 0.456, 0.406] and meta["normalization"]["color"] == "RGB"
    assert [o["name"] for o in meta["outputs"]] == NAMES
    assert [o["dtype"] for o in meta["outputs"]][-2:] == ["bool", "bool"]
    assert meta["calibrated"] is True and meta["calibration"] == model.calibration
    assert meta["thresholds"] == {"image": model.calibration["image_threshold"],
                                  "pixel": model.calibration["pixel_threshold"]}
    assert meta["preset"] == "lite" and meta["config"]["score_cues"] == ["flow", "recon", "knn"]
    assert meta["dadf_fast_version"] == dadf_fast.__version__ and len(meta["verification"]) == 2
    ov_meta = json.loads(open(_report(exported, "openvino")["metadata"]).read())
    assert ov_meta["runtime_config"] == {"INFERENCE_PRECISION_HINT": "f32"}


@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
def test_wrong_input_size_is_the_runtimes_error(exported, fmt):
    from dadf_fast.deploy import load_runtime

    run = load_runtime(_report(exported, fmt)["files"][0], fmt)
    with pytest.raises(Exception, match="invalid dimensions" if fmt == "onnx" else "incompatible"):
        run(np.zeros((1, 3, 32, 32), np.float32))


def test_uncalibrated_flow_only_model_exports_maps_and_scores(tmp_path):
    """The paper-style single flow cue, no thresholds: two outputs, a warning, metadata says so."""
    _exporter_or_skip()
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(1)
    m = DADF("lite", pretrained=False, input_size=S, depth=1, flow_steps=2, score_cues=["flow"]).eval()
    lines = []
    report = export(m, tmp_path / "flow", images=_images(3, 3), log=lines.append)
    assert any("not calibrated" in line for line in lines)
    assert report["outputs"] == ["anomaly_map", "score"] and report["label_agreement"] is None
    session = ort.InferenceSession(report["files"][0], providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["anomaly_map", "score"]
    x = _images(2, 4)
    amap, score = session.run(None, {"images": x.numpy()})
    want = m.predict(x)
    assert np.abs(amap - want["anomaly_map"].numpy()).max() <= 1e-4
    assert np.abs(score - want["score"].numpy()).max() <= 1e-4
    meta = json.loads((tmp_path / "flow" / "metadata.json").read_text())
    assert meta["calibrated"] is False and meta["calibration"] is None and meta["thresholds"] is None


def test_out_dir_must_be_new_or_empty(model, tmp_path):
    _exporter_or_skip()
    pytest.importorskip("onnxruntime")
    out = tmp_path / "full"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(OutputPathError, match="already holds files"):
        export(model, out, log=lambda *_: None)
    assert os.listdir(out) == ["keep.txt"]
    with pytest.raises(ValueError, match="format must be one of"):
        export(model, tmp_path / "x", format="tflite")
    assert not (tmp_path / "x").exists()


def test_broken_verification_raises_and_leaves_nothing(model, exported, tmp_path, monkeypatch):
    """A runtime whose maps differ from predict's fails the export, and no file is left (the
    ONNX trace is replaced by a copy of the good export's file, to save the time of a trace)."""
    import shutil

    good = _report(exported, "onnx")["files"][0]
    monkeypatch.setattr(EXPORT_MODULE, "_export_onnx", lambda graph, size, path: shutil.copyfile(good, path))
    real = EXPORT_MODULE.load_runtime

    def off_by_a_bit(path, fmt, threads=None):
        run = real(path, fmt, threads)

        def broken(images):
            out = run(images)
            out["anomaly_map"] = out["anomaly_map"] + 0.01
            return out

        return broken

    monkeypatch.setattr(EXPORT_MODULE, "load_runtime", off_by_a_bit)
    with pytest.raises(ExportError, match="anomaly_map differs by 0.01"):
        export(model, tmp_path / "broken", log=lambda *_: None)
    assert not (tmp_path / "broken").exists()
    (tmp_path / "kept").mkdir()
    with pytest.raises(ExportError):
        export(model, tmp_path / "kept", log=lambda *_: None)
    assert os.listdir(tmp_path / "kept") == []


def test_graph_pieces_give_the_models_numbers():
    """The stacked smoothing is gaussian_smooth map by map, bit for bit; the static-block kNN
    search gives the model's nearest distances to rounding."""
    from dadf_fast.deploy.graph import nearest_distances_graph, smooth_channels
    from dadf_fast.models.cues import nearest_distances
    from dadf_fast.models.postprocess import gaussian_smooth

    maps = torch.rand(3, 2, 40, 40, generator=torch.Generator().manual_seed(0))
    for sigma in (0.0, 1.0, 4.0, 30.0):
        want = torch.cat([gaussian_smooth(maps[:, i:i + 1], sigma) for i in range(2)], 1)
        assert torch.equal(smooth_channels(maps, sigma), want)
    gen = torch.Generator().manual_seed(1)
    memory, queries = torch.randn(300, 24, generator=gen), torch.randn(50, 24, generator=gen)
    queries[:5] = memory[[3, 150, 299, 0, 77]]  # exact matches score 0, as in the model
    got = nearest_distances_graph(queries, memory, block_rows=64)
    torch.testing.assert_close(got, nearest_distances(queries, memory), rtol=1e-5, atol=1e-5)
    assert torch.equal(got[:5], torch.zeros(5))


def test_cli_arguments_and_full_out_folder(model, tmp_path):
    """``dadf-fast export``'s options; a full --out is refused (named --out) before any export."""
    import argparse

    from dadf_fast.cli import export as cli_export

    parser = argparse.ArgumentParser()
    cli_export.add_arguments(parser)
    model.save(tmp_path / "model.pt")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    args = parser.parse_args(["--checkpoint", str(tmp_path / "model.pt"), "--format", "openvino", "--out", str(out),
                              "--images", "a.png", "folder"])
    assert args.format == "openvino" and args.images == ["a.png", "folder"] and not args.overwrite
    with pytest.raises(OutputPathError, match="--out .* already holds files"):
        cli_export.run(args, print_fn=lambda *_: None)
    assert os.listdir(out) == ["keep.txt"]
    with pytest.raises(SystemExit):
        parser.parse_args(["--checkpoint", "m.pt", "--out", "o", "--format", "tflite"])


def test_dadf_fast_export_command(model, exported, tmp_path, capsys):
    """``dadf-fast export`` through the CLI's entry point: the file runs, a second export into
    the same folder is a one-line error (exit 2) that leaves the first one as it was. (The ONNX
    trace of this model is the fixture's; the command's verification runs on it.)"""
    from dadf_fast.cli.commands import main
    from dadf_fast.deploy.runtime import load_runtime

    _exporter_or_skip()
    model.save(tmp_path / "model.pt")
    out = tmp_path / "out"
    onnx_file = next(f for f in _report(exported, "onnx")["files"] if f.endswith(".onnx"))
    with _reusing_onnx(onnx_file):
        assert main(["export", "--checkpoint", str(tmp_path / "model.pt"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "verified at batch 7" in printed and "labels equal 7/7" in printed
    before = (out / "model.onnx").read_bytes()
    x = torch.randn(2, 3, model.input_size, model.input_size, generator=torch.Generator().manual_seed(9))
    got = load_runtime(str(out / "model.onnx"), "onnx")(x.numpy())
    want = model.predict(x)
    np.testing.assert_allclose(got["anomaly_map"], want["anomaly_map"].numpy(), atol=1e-4, rtol=0)
    assert np.array_equal(got["pred_label"], want["pred_label"].numpy())
    assert main(["export", "--checkpoint", str(tmp_path / "model.pt"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "already holds files" in err and len(err.splitlines()) == 1
    assert (out / "model.onnx").read_bytes() == before
