"""Deployment: a DADF exported to ONNX or OpenVINO as one verified graph (:func:`export`).

The exporters and runtimes are optional dependencies (``pip install 'dadf-fast[deploy]'``),
imported only when an export or a runtime is asked for.
"""
from dadf_fast.deploy.export import FORMATS, ExportError, export
from dadf_fast.deploy.runtime import load_runtime

__all__ = ["export", "ExportError", "FORMATS", "load_runtime"]
