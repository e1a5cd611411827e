"""The detector: DADF, its backbone and presets."""
from .backbone import Backbone
from .checkpoint import CheckpointError
from .dadf import DADF
from .graphs import CUDAGraphInference
from .inputs import NonFiniteOutputError
from .presets import PRESETS

__all__ = ["DADF", "Backbone", "PRESETS", "CUDAGraphInference", "CheckpointError", "NonFiniteOutputError"]
