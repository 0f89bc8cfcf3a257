"""Exact time-to-first-spike networks in the B1 parameterisation (Stanojevic et al., 2024)."""

from . import constraints, export, jacobian, metrics, relu, simulate, train, zoo
from .convert import SUPPORTED_LAYERS, UnsupportedLayerError, convert, to_relu
from .layers import InputEncoder, MinTimePool2d, SpikingConv2d, SpikingLinear, SpikingNeurons
from .network import SNN, SpikeRecord
from .zoo import create_model, list_models

__all__ = [
    "SNN", "SUPPORTED_LAYERS", "InputEncoder", "MinTimePool2d", "SpikeRecord", "SpikingConv2d",
    "SpikingLinear", "SpikingNeurons", "UnsupportedLayerError", "constraints", "convert", "create_model",
    "export", "jacobian", "list_models", "metrics", "relu", "simulate", "to_relu", "train", "zoo",
]
