"""Exact time-to-first-spike networks in the B1 parameterisation (Stanojevic et al., 2024)."""

from .convert import SUPPORTED_LAYERS, UnsupportedLayerError, convert, to_relu
from .layers import InputEncoder, MinTimePool2d, SpikingConv2d, SpikingLinear, SpikingNeurons
from .network import SNN, SpikeRecord

__all__ = [
    "SNN", "SUPPORTED_LAYERS", "InputEncoder", "MinTimePool2d", "SpikeRecord", "SpikingConv2d",
    "SpikingLinear", "SpikingNeurons", "UnsupportedLayerError", "convert", "to_relu",
]
