"""dadf-fast: DADF industrial anomaly detection with fused Triton and C++/CUDA kernels."""
__version__ = "0.1.0"

from dadf_fast import ops, reference
from dadf_fast.kernels.registry import BackendUnavailable, backends
from dadf_fast.models import DADF, CheckpointError, CUDAGraphInference, NonFiniteOutputError
from dadf_fast.deploy import ExportError, export  # noqa: F401  (dadf_fast.export; onnx/openvino load lazily)

__all__ = ["DADF", "CUDAGraphInference", "ops", "reference", "backends", "BackendUnavailable",
           "CheckpointError", "NonFiniteOutputError", "__version__"]
