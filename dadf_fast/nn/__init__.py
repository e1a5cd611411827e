"""Modules that own parameters and call :mod:`dadf_fast.ops`."""
from dadf_fast.nn.all_in_one import AllInOneBlock
from dadf_fast.nn.attention import DualAttention, DualBlock
from dadf_fast.nn.flow import (FLOW_NORMS, FLOW_SUBNETS, AllInOneCoupling, ChannelLayerNorm, FlowStage,
                               conv_subnet, coupling_subnet)
from dadf_fast.nn.reconstructor import Reconstructor, reconstruction_loss, sincos_pos_embed_2d

__all__ = ["DualAttention", "DualBlock", "Reconstructor", "AllInOneBlock", "AllInOneCoupling", "ChannelLayerNorm",
           "FlowStage", "FLOW_NORMS", "FLOW_SUBNETS", "conv_subnet", "coupling_subnet", "reconstruction_loss", "sincos_pos_embed_2d"]
