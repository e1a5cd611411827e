"""Export a DADF detector to ONNX or OpenVINO, verified against ``DADF.predict``.

:func:`export` writes the whole inference of a model (backbone, dual-attention transformer,
flows with the permutation as a gather and no log-det, every score cue, the Gaussian
smoothing, the cue calibration and, for a calibrated model, the thresholds) as ONE graph
(:class:`dadf_fast.deploy.graph.InferenceGraph`), traced by ``torch.onnx.export(dynamo=True)``
from a float32, ``backend="torch"`` copy of the model (so none of the package's
``torch.library`` kernels is in the graph; a node outside the standard ONNX domain is an
:class:`ExportError`).

The graph takes what ``DADF.predict`` takes and returns what it returns:

* input ``images``: float32 ``[batch, 3, S, S]``, ``batch`` dynamic, S the model's
  ``input_size``; RGB scaled to [0, 1] then ImageNet-normalised (``metadata.json`` holds the
  mean, std and resize rule; :func:`dadf_fast.data.transforms.load_image` does all of it);
* outputs ``anomaly_map`` float32 ``[batch, 1, S, S]``, ``score`` float32 ``[batch]``, and
  for a calibrated model ``pred_score`` float32 ``[batch]``, ``pred_label`` bool ``[batch]``
  and ``pred_mask`` bool ``[batch, 1, S, S]`` (:mod:`dadf_fast.models.thresholds`).

An uncalibrated model (``model.calibration is None``) is exported with ``anomaly_map`` and
``score`` only, with a printed warning and ``"calibrated": false`` in the metadata: a
threshold invented at export time would give labels nobody validated, and a graph with
placeholder verdicts could not be told apart from a calibrated one.  Calibrate first
(``model.calibrate(...)``, or ``fit``) for the verdicts.

Files, in a folder that must be new or empty unless ``overwrite`` (as for every command):
``model.onnx`` (weights inside; ``model.onnx.data`` beside it only past ONNX's 2 GB limit), or
``model.xml`` + ``model.bin`` for OpenVINO (converted from the ONNX graph, weights kept in
float32), and ``metadata.json``.  They are written in a hidden staging folder inside the
output folder and moved into place only after the verification passed; a failed export
leaves nothing behind (a folder it created is removed again).

Verification, always: the written file runs in its runtime (ONNX Runtime's CPU provider, or
OpenVINO on the CPU with ``INFERENCE_PRECISION_HINT=f32``, see :mod:`dadf_fast.deploy.runtime`)
at batch 1 and batch 7 from the same file, on ``images`` or on seven bundled photographs
resized to the input size, and is compared with ``model.predict`` (float32, on the CPU, the
model's kernels): the anomaly maps and scores within ``1e-4 * max(1, max |map|)``, identical
``pred_label`` and ``pred_mask`` except where the reference score / pixel lies within that
tolerance of its threshold (a near-threshold tie; counted and reported).  Anything else raises
:class:`ExportError` naming what differs.

A wrong input size is refused by the runtime itself (not by this package), e.g. for a 64 x 64
model fed 32 x 32 images (measured with onnxruntime 1.32 and OpenVINO 2026.4):

* ONNX Runtime: ``InvalidArgument: [ONNXRuntimeError] : 2 : INVALID_ARGUMENT : Got invalid
  dimensions for input: images for the following indices index: 2 Got: 32 Expected: 64
  index: 3 Got: 32 Expected: 64 Please fix either the inputs/outputs or the model.``
* OpenVINO: ``RuntimeError: Exception from src/inference/src/cpp/infer_request.cpp:...
  Can't set the input tensor with index: 0, because the model input (shape=[?,3,64,64]) and
  the tensor (shape=(1.3.32.32)) are incompatible``.

The graph does not check its input for NaN/Inf and never raises ``NonFiniteOutputError``
as ``predict`` does: a NaN image gives NaN maps.
"""
from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
import time
import warnings

import numpy as np
import torch

from dadf_fast.deploy.graph import InferenceGraph
from dadf_fast.deploy.runtime import OPENVINO_CONFIG, RUNTIMES, load_runtime, require
from dadf_fast.utils.io import atomic_write_text

FORMATS = tuple(RUNTIMES)
INPUT_NAME = "images"
OPSET = 18
VERIFY_BATCHES = (1, 7)
MAP_RTOL = 1e-4
# bundled photographs (skimage.data, offline) the verification runs on when no images are given
VERIFY_SOURCES = ("astronaut", "brick", "camera", "chelsea", "coffee", "grass", "rocket")
MODEL_FILES = {"onnx": ("model.onnx",), "openvino": ("model.xml", "model.bin")}
METADATA = "metadata.json"
# what an export writes: the outputs of another format left by an earlier export are removed
# when a new one replaces them (overwrite), so metadata.json always describes the folder
KNOWN_FILES = ("model.onnx", "model.onnx.data", "model.xml", "model.bin", METADATA)


class ExportError(RuntimeError):
    """The model could not be exported, or the exported file does not compute what
    ``DADF.predict`` computes."""


def exportable_copy(model):
    """A float32, CPU, eval-mode, ``backend="torch"`` deep copy of ``model`` (the model is
    untouched)."""
    m = copy.deepcopy(model).cpu().float().eval()
    m.set_dtype("float32")
    return m.set_backend("torch")


def _resolve_model(model):
    from dadf_fast.models import DADF

    if isinstance(model, (str, os.PathLike)):
        return DADF.load(model, backend="auto", map_location="cpu"), os.fspath(model)
    if not isinstance(model, DADF):
        raise TypeError(f"model must be a DADF or the path of a DADF checkpoint, got {type(model).__name__}")
    return model, "in-memory model"


def _image_files(items) -> list:
    from dadf_fast.data import expand_image_paths

    return expand_image_paths(items, "images")


def verification_images(size: int, images=None) -> torch.Tensor:
    """Model-ready float32 images ``[N, 3, size, size]`` for the verification: ``images`` (a
    tensor of model-ready images, or image files and folders, loaded and resized as
    ``dadf-fast predict`` does), else the :data:`VERIFY_SOURCES` photographs resized."""
    from dadf_fast.data.transforms import image_tensor, load_image

    if images is None:
        from PIL import Image

        from dadf_fast.data.synthetic import load_source

        return torch.stack([image_tensor(Image.fromarray(load_source(s)), size) for s in VERIFY_SOURCES])
    if isinstance(images, torch.Tensor):
        from dadf_fast.models.inputs import check_images

        check_images(images, size)
        if images.shape[0] == 0:
            raise ValueError("images is an empty batch: the verification needs at least one image")
        return images.detach().float().cpu()
    if isinstance(images, (str, os.PathLike)):
        images = [images]
    return torch.stack([load_image(p, size) for p in _image_files(images)])


def _batch(images: torch.Tensor, n: int) -> torch.Tensor:
    """``n`` images, the given ones repeated in turn when there are fewer."""
    return images[torch.arange(n) % images.shape[0]]


def compare(got: dict, want: dict, calibration: dict | None, names) -> dict:
    """How the runtime's outputs ``got`` (numpy) agree with ``predict``'s ``want`` (tensors):
    the row of the report, with ``problems`` (empty when they agree)."""
    problems = [f"the runtime's outputs are {list(got)}, expected {list(names)}"] if list(got) != list(names) else []
    w = {k: v.detach().cpu().numpy() for k, v in want.items()}
    for k in names:
        if k in got and (got[k].shape != w[k].shape or got[k].dtype != w[k].dtype):
            problems.append(f"{k} is {got[k].dtype} {got[k].shape}, predict gives {w[k].dtype} {w[k].shape}")
    if problems:
        return {"problems": problems}
    wmap = w["anomaly_map"]
    tol = MAP_RTOL * max(1.0, float(np.abs(wmap).max()))
    row = {"batch": int(wmap.shape[0]), "tolerance": tol,
           "max_map_diff": float(np.abs(got["anomaly_map"] - wmap).max()),
           "max_score_diff": float(np.abs(got["score"] - w["score"]).max())}
    for key in ("map", "score"):
        if not row[f"max_{key}_diff"] <= tol:  # also catches NaN
            problems.append(f"{'anomaly_map' if key == 'map' else 'score'} differs by {row[f'max_{key}_diff']:.3g} "
                            f"(tolerance {tol:.3g})")
    if calibration is not None:
        lab, mask = got["pred_label"] != w["pred_label"], got["pred_mask"] != w["pred_mask"]
        label_ties = np.abs(w["score"] - calibration["image_threshold"]) <= tol
        pixel_ties = np.abs(wmap - calibration["pixel_threshold"]) <= tol
        row.update(labels_equal=int((~lab).sum()), label_ties=int((lab & label_ties).sum()),
                   mask_mismatch_fraction=float(mask.mean()), mask_ties=int((mask & pixel_ties).sum()),
                   max_pred_score_diff=float(np.abs(got["pred_score"] - w["pred_score"]).max()))
        if (lab & ~label_ties).any():
            problems.append(f"pred_label differs for {int((lab & ~label_ties).sum())} of {lab.size} images")
        if (mask & ~pixel_ties).any():
            problems.append(f"pred_mask differs at {int((mask & ~pixel_ties).sum())} pixels away from the threshold")
    row["problems"] = problems
    return row


def _metadata(model, fmt, files, names, source, verification) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    from dadf_fast.data.transforms import IMAGENET_MEAN, IMAGENET_STD

    try:  # the installed distribution's version (the package root imports this module: no import of it here)
        package_version = version("dadf-fast")
    except PackageNotFoundError:  # pragma: no cover - a source tree that is not installed
        package_version = "unknown"

    s = model.input_size
    shapes = {"anomaly_map": ["batch", 1, s, s], "score": ["batch"], "pred_score": ["batch"],
              "pred_label": ["batch"], "pred_mask": ["batch", 1, s, s]}
    dtypes = {"pred_label": "bool", "pred_mask": "bool"}
    calib = None if model.calibration is None else dict(model.calibration)
    return {
        "format": fmt, "files": list(files), "runtime": RUNTIMES[fmt],
        "runtime_config": dict(OPENVINO_CONFIG) if fmt == "openvino" else {},
        "dadf_fast_version": package_version, "torch_version": torch.__version__, "onnx_opset": OPSET,
        "source": source,
        "input": {"name": INPUT_NAME, "shape": ["batch", 3, s, s], "dtype": "float32", "layout": "NCHW",
                  "dynamic_axes": {"0": "batch"}},
        "input_size": s,
        "normalization": {"color": "RGB", "scale": "pixel values / 255 (uint8 to [0, 1]; 16-bit images / 65535)",
                          "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
                          "formula": "(x / 255 - mean) / std per channel",
                          "resize": f"bilinear to {s} x {s} (PIL), as dadf_fast.data.transforms.load_image"},
        "outputs": [{"name": n, "shape": shapes[n], "dtype": dtypes.get(n, "float32")} for n in names],
        "calibrated": calib is not None,
        "calibration": calib,
        "thresholds": None if calib is None else {"image": calib["image_threshold"], "pixel": calib["pixel_threshold"]},
        "preset": model.config["preset"],
        "config": dict(model.config),
        "verification": verification,
    }


def _export_onnx(graph, size: int, path: str) -> None:
    require("onnxscript", "exporting to ONNX")
    onnx = require("onnx", "exporting to ONNX")
    example = torch.zeros(2, 3, size, size)  # batch 2: a batch of 1 would be specialised
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(graph, (example,), dynamo=True, input_names=[INPUT_NAME],
                                        output_names=list(graph.output_names), opset_version=OPSET, verbose=False,
                                        dynamic_shapes={"images": {0: torch.export.Dim("batch", min=1)}})
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        raise ExportError(f"torch.onnx.export failed on the DADF graph: {type(exc).__name__}: {first}") from exc
    foreign = sorted({n.domain for n in program.model_proto.graph.node} - {"", "ai.onnx"})
    if foreign:
        raise ExportError(f"the ONNX graph holds nodes outside the standard ONNX domain {foreign}: "
                          "a custom op was traced instead of the torch computation")
    program.save(path)  # one file; the weights go to model.onnx.data only past ONNX's 2 GB limit
    onnx.checker.check_model(path)


def onnx_to_openvino(onnx_path, xml_path) -> None:
    """Convert an exported ``model.onnx`` to OpenVINO's ``model.xml`` + ``model.bin`` (no
    verification: :func:`export` verifies)."""
    ov = require("openvino", "exporting to OpenVINO")
    # weights stay float32 (save_model's default compresses them to float16)
    ov.save_model(ov.convert_model(onnx_path), xml_path, compress_to_fp16=False)


def _verify(path, fmt, model, names, images, threads) -> list:
    run = load_runtime(path, fmt, threads)
    rows = []
    for n in VERIFY_BATCHES:
        x = _batch(images, n)
        row = compare(run(x), model.predict(x), model.calibration, names)
        if row["problems"]:
            raise ExportError(f"the {fmt} export does not compute what model.predict does at batch {n}: "
                              + "; ".join(row["problems"]))
        del row["problems"]
        rows.append(row)
    return rows


def export(model, out_dir, format: str = "onnx", images=None, overwrite: bool = False, threads: int | None = None,
           log=print) -> dict:
    """Export ``model`` (a :class:`~dadf_fast.models.DADF`, or the path of its checkpoint) to
    ``out_dir`` as ``format`` (``"onnx"`` or ``"openvino"``), verified (see the module
    docstring).

    Args:
        images: the verification images: a tensor of model-ready images ``[N, 3, S, S]``, or
            image files / folders; None: bundled photographs.
        overwrite: allow an ``out_dir`` that already holds files (its export files are replaced).
        threads: the runtime's CPU threads during the verification (None: its default).
        log: prints progress and the warning of an uncalibrated model.
    Returns:
        the report: ``format``, ``dir``, ``files`` (paths), ``metadata`` (path), ``calibrated``,
        ``outputs``, ``verification`` (one row per batch size: ``max_map_diff``,
        ``max_score_diff``, ``tolerance``, and for a calibrated model ``labels_equal``,
        ``label_ties``, ``mask_mismatch_fraction``, ``mask_ties``, ``max_pred_score_diff``),
        ``max_map_diff``, ``label_agreement`` (fraction, None uncalibrated) and ``seconds``.
    """
    from dadf_fast.utils.io import prepare_output_dir

    t0 = time.perf_counter()
    if not isinstance(format, str) or format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    for module in ("onnx", "onnxscript", RUNTIMES[format]):
        require(module, f"export(format={format!r})")
    model, source = _resolve_model(model)
    if "knn" in model.config["score_cues"] and model.cue_memory.shape[0] == 0:
        raise ValueError("model: its kNN cue has an empty memory; fit() or calibrate_cues() it before exporting")
    imgs = verification_images(model.input_size, images)
    if model.calibration is None:
        log("warning: the model is not calibrated (no thresholds): the export outputs anomaly_map and score only; "
            "calibrate it (DADF.calibrate, or fit) for pred_score, pred_label and pred_mask")
    existed = os.path.exists(os.fspath(out_dir))
    try:
        with prepare_output_dir(out_dir, overwrite=overwrite, what="out_dir") as folder:
            report = _export_into(model, format, imgs, folder.path, source, threads, log)
    except BaseException:
        if not existed and os.path.isdir(os.fspath(out_dir)) and not os.listdir(os.fspath(out_dir)):
            os.rmdir(os.fspath(out_dir))  # the folder this export created, left empty by the failure
        raise
    report.update(dir=os.fspath(out_dir), metadata=os.path.join(os.fspath(out_dir), METADATA))
    report["seconds"]["total"] = time.perf_counter() - t0
    return report


def _export_into(model, fmt, images, folder, source, threads, log) -> dict:
    """Export, convert and verify in a staging folder inside ``folder``, then move the files
    into ``folder`` (the staging folder is removed in any case)."""
    staging = tempfile.mkdtemp(prefix=".export-", dir=folder)
    try:
        report = _export_staged(model, fmt, images, staging, source, threads, log)
        written = [os.path.basename(p) for p in report["files"]]
        for name in KNOWN_FILES:  # an earlier export's files (overwrite)
            if name not in written and os.path.isfile(os.path.join(folder, name)):
                os.unlink(os.path.join(folder, name))
        for name in written:
            os.replace(os.path.join(staging, name), os.path.join(folder, name))
        meta = report.pop("_metadata")
        meta["files"] = written
        atomic_write_text(os.path.join(folder, METADATA), json.dumps(meta, indent=1) + "\n")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    report["files"] = [os.path.join(folder, n) for n in written]
    return report


def _export_staged(model, fmt, images, staging, source, threads, log) -> dict:
    seconds = {}
    t = time.perf_counter()
    work = exportable_copy(model)
    graph = InferenceGraph(work, model.calibration).eval()
    names = graph.output_names
    onnx_path = os.path.join(staging, "model.onnx")
    log(f"exporting {model.config['preset']} DADF (input {model.input_size}) to ONNX (opset {OPSET}) ...")
    _export_onnx(graph, model.input_size, onnx_path)
    seconds["export"] = time.perf_counter() - t
    path = onnx_path
    if fmt == "openvino":
        t = time.perf_counter()
        path = os.path.join(staging, "model.xml")
        onnx_to_openvino(onnx_path, path)
        seconds["convert"] = time.perf_counter() - t
    files = [os.path.join(staging, f) for f in MODEL_FILES[fmt]]
    if fmt == "onnx" and os.path.isfile(onnx_path + ".data"):
        files.append(onnx_path + ".data")
    t = time.perf_counter()
    # the reference: predict of the same float32 model on its own kernels (the graph is traced already)
    work.set_backend("torch" if model.backend == "torch" else "auto")
    rows = _verify(path, fmt, work, names, images, threads)
    seconds["verify"] = time.perf_counter() - t
    meta = _metadata(model, fmt, files, names, source, rows)
    calibrated = model.calibration is not None
    agree = (sum(r["labels_equal"] for r in rows) / sum(r["batch"] for r in rows)) if calibrated else None
    return {"format": fmt, "files": files, "calibrated": calibrated, "outputs": list(names), "verification": rows,
            "max_map_diff": max(r["max_map_diff"] for r in rows), "label_agreement": agree, "seconds": seconds,
            "_metadata": meta}


__all__ = ["export", "ExportError", "exportable_copy", "onnx_to_openvino", "verification_images", "compare", "FORMATS", "INPUT_NAME",
           "OPSET", "VERIFY_BATCHES", "MAP_RTOL", "METADATA"]
