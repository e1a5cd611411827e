"""dadf-fast: DADF industrial anomaly detection with fused Triton and C++/CUDA kernels."""
__version__ = "0.1.0"

from . import ops, reference
from ._backends import BackendUnavailable, backends
from .model import DADF, CheckpointError, CUDAGraphInference, NonFiniteOutputError

__all__ = ["DADF", "CUDAGraphInference", "ops", "reference", "backends", "BackendUnavailable",
           "CheckpointError", "NonFiniteOutputError", "__version__"]
