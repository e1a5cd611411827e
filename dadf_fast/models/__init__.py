"""The detector: DADF, its backbone and presets."""
from dadf_fast.models.backbone import Backbone
from dadf_fast.models.checkpoint import CheckpointError
from dadf_fast.models.dadf import DADF
from dadf_fast.models.graphs import CUDAGraphInference
from dadf_fast.models.inputs import NonFiniteOutputError
from dadf_fast.models.presets import PRESETS

__all__ = ["DADF", "Backbone", "PRESETS", "CUDAGraphInference", "CheckpointError", "NonFiniteOutputError"]
