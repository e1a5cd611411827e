"""Modules that own parameters and call :mod:`dadf_fast.ops`."""
from .attention import DualAttention, DualBlock
from .flow import AllInOneCoupling, FlowStage, coupling_subnet
from .reconstructor import Reconstructor, reconstruction_loss, sincos_pos_embed_2d

__all__ = ["DualAttention", "DualBlock", "Reconstructor", "AllInOneCoupling", "FlowStage", "coupling_subnet",
           "reconstruction_loss", "sincos_pos_embed_2d"]
