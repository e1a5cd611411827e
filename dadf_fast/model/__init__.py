"""The detector: DADF, its backbone and presets."""
from .backbone import Backbone
from .dadf import DADF
from .graphs import CUDAGraphInference
from .presets import PRESETS

__all__ = ["DADF", "Backbone", "PRESETS", "CUDAGraphInference"]
