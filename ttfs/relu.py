"""Small ReLU-side modules that the reverse mapping needs beyond torch.nn (and that convert() accepts).

A converted SNN can carry things a plain Linear/Conv2d network cannot express: per-region biases
(from batch norm folded through 'same' padding), pooling that takes the minimum for channels with a
negative batch-norm scale, and the clipping of inputs to [p, q]. These modules express them exactly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class InputRange(nn.Module):
    """z -> clip((z - p) / (q - p), 0, 1) * scale: the input scaling a converted SNN applies."""

    def __init__(self, p: Tensor, q: Tensor, scale: float = 1.0):
        super().__init__()
        self.register_buffer("p", p.clone())
        self.register_buffer("q", q.clone())
        self.scale = float(scale)

    def forward(self, z: Tensor) -> Tensor:
        return ((z - self.p) / (self.q - self.p)).clamp(0.0, 1.0) * self.scale


class RegionBias(nn.Module):
    """Adds bias[c, region_index[h, w]] to a (batch, c, h, w) tensor."""

    def __init__(self, bias: Tensor, region_index: Tensor):
        super().__init__()
        self.bias = nn.Parameter(bias.clone())
        self.register_buffer("region_index", region_index.clone().to(torch.long))

    def forward(self, y: Tensor) -> Tensor:
        return y + self.bias[:, self.region_index]


class SignedMaxPool2d(nn.Module):
    """Max-pooling for channels with sign +1, min-pooling for channels with sign -1."""

    def __init__(self, kernel_size, stride, sign: Tensor):
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride
        self.register_buffer("sign", sign.clone().reshape(1, -1, 1, 1))

    def forward(self, a: Tensor) -> Tensor:
        s = self.sign.to(a.dtype)
        return s * F.max_pool2d(s * a, self.kernel_size, self.stride)


class ChannelScale(nn.Module):
    """x * weight per channel (per feature of a flat input): an identity shortcut, possibly batch-norm scaled."""

    def __init__(self, weight: Tensor):
        super().__init__()
        self.register_buffer("weight", weight.detach().clone())

    def forward(self, x: Tensor) -> Tensor:
        return x * self.weight.reshape(-1, *(1,) * (x.ndim - 2))


class ReLUStage(nn.Module):
    """One neuron layer of a :class:`ResidualReLU`: route -> synapses, plus the input groups, then ReLU."""

    def __init__(self, route: nn.Sequential, synapses: nn.Sequential, groups: list[tuple[int, nn.Module, nn.Module]],
                 relu: bool = True):
        super().__init__()
        self.route = route
        self.synapses = synapses
        self.sources = [int(source) for source, _, _ in groups]
        self.group_routes = nn.ModuleList([r for _, r, _ in groups])
        self.group_synapses = nn.ModuleList([m for _, _, m in groups])
        self.relu = relu


class ResidualReLU(nn.Module):
    """The ReLU network equivalent to an SNN with input groups (:func:`ttfs.to_relu` of a residual SNN).

    Activation 0 is the scaled input; stage n computes relu(synapses(route(h_{n-1})) + sum over its
    groups of group_synapses(group_route(h_source))), the last stage without the ReLU (the logits).
    """

    def __init__(self, input_range: InputRange, stages: list[ReLUStage]):
        super().__init__()
        self.input_range = input_range
        self.stages = nn.ModuleList(stages)

    def forward(self, z: Tensor) -> Tensor:
        acts = [self.input_range(z)]
        for stage in self.stages:
            y = stage.synapses(stage.route(acts[-1]))
            for source, route, synapses in zip(stage.sources, stage.group_routes, stage.group_synapses, strict=True):
                y = y + synapses(route(acts[source]))
            acts.append(F.relu(y) if stage.relu else y)
        return acts[-1]
