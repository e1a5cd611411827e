"""Running an exported DADF in its runtime: ONNX Runtime (CPU) or OpenVINO (CPU).

:func:`load_runtime` returns a callable ``run(images) -> {output name: numpy array}`` taking
model-ready float32 images ``[B, 3, S, S]`` (numpy or a CPU tensor).  The export verifies its
file through it, and ``dadf-fast bench`` times it.

OpenVINO is compiled with ``INFERENCE_PRECISION_HINT=f32``: on CPUs with bfloat16 units
(AVX-512 BF16, AMX) its default is bfloat16, which moved the maps by about 0.05 (measured on
the lite preset).  A user of ``model.xml`` must pass the same setting (:data:`OPENVINO_CONFIG`,
also in ``metadata.json``); OpenVINO does not read it from the file.  ``precision="bf16"``
asks for OpenVINO's bfloat16 inference precision (what ``dadf-fast bench``'s
``openvino-bf16`` row times); it is refused, with the reason, on a CPU whose OpenVINO plugin
reports no BF16 capability (OpenVINO would silently run float32 there).
"""
from __future__ import annotations

import numpy as np

RUNTIMES = {"onnx": "onnxruntime", "openvino": "openvino"}
OPENVINO_CONFIG = {"INFERENCE_PRECISION_HINT": "f32"}
PRECISIONS = ("f32", "bf16")


def openvino_bf16_unsupported() -> str | None:
    """Why OpenVINO cannot run bfloat16 on this CPU (None when its CPU plugin reports BF16)."""
    ov = require("openvino", "running an OpenVINO export")
    caps = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    if "BF16" in caps:
        return None
    return f"OpenVINO's CPU plugin reports no BF16 capability here (OPTIMIZATION_CAPABILITIES {list(caps)})"


def require(module: str, what: str):
    """Import ``module`` (a runtime or exporter dependency) or raise one ImportError saying how
    to install it for ``what``."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f"{what} needs the {module} package ({exc}); install it with "
                          "pip install 'dadf-fast[deploy]'") from exc


def missing_runtime(fmt: str) -> str | None:
    """Why the runtime of ``fmt`` (``"onnx"``/``"openvino"``) cannot be imported here, or None."""
    try:
        require(RUNTIMES[fmt], f"the {fmt} runtime")
    except ImportError as exc:
        return str(exc)
    return None


def _as_array(images) -> np.ndarray:
    if hasattr(images, "detach"):
        images = images.detach().cpu().numpy()
    return np.ascontiguousarray(images, dtype=np.float32)


def load_runtime(path, fmt: str, threads: int | None = None, precision: str = "f32"):
    """``run(images) -> {name: array}`` for the exported file ``path`` (``model.onnx`` or
    ``model.xml``) of format ``fmt``, on the CPU with ``threads`` threads (None: the runtime's
    default); ``precision`` (OpenVINO only) ``"f32"`` or ``"bf16"``."""
    path = str(path)
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision != "f32" and fmt != "openvino":
        raise ValueError(f"precision={precision!r} is an OpenVINO setting; the {fmt} runtime runs float32")
    if fmt == "onnx":
        ort = require("onnxruntime", "running an ONNX export")
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = int(threads)
            opts.inter_op_num_threads = 1
        session = ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])
        input_name = session.get_inputs()[0].name
        names = [o.name for o in session.get_outputs()]

        def run(images):
            return dict(zip(names, session.run(None, {input_name: _as_array(images)})))

        return run
    if fmt == "openvino":
        ov = require("openvino", "running an OpenVINO export")
        config = dict(OPENVINO_CONFIG)
        if precision == "bf16":
            reason = openvino_bf16_unsupported()
            if reason:
                raise RuntimeError(reason)
            config["INFERENCE_PRECISION_HINT"] = "bf16"
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        compiled = ov.Core().compile_model(path, "CPU", config)
        request = compiled.create_infer_request()
        names = [o.get_any_name() for o in compiled.outputs]

        def run(images):
            request.infer({0: _as_array(images)})
            # copies: the request's output buffers are reused by the next call
            return {n: np.array(request.get_output_tensor(i).data) for i, n in enumerate(names)}

        return run
    raise ValueError(f"format must be one of {tuple(RUNTIMES)}, got {fmt!r}")


__all__ = ["RUNTIMES", "OPENVINO_CONFIG", "PRECISIONS", "load_runtime", "missing_runtime", "openvino_bf16_unsupported",
           "require"]
