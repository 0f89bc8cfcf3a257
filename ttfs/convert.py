"""Exact conversion of a trained ReLU network into a TTFS network and back (SPEC 3).

The ReLU network is traced with torch.fx (an nn.Sequential chain or any module with a traceable
``forward``). Conversion folds everything affine into the spiking layers' weights and thresholds: batch
norm before the ReLU into the preceding layer, batch norm after the ReLU into the next one (through
flatten and max-pool, with per-region biases where zero padding meets a folded shift), average pooling
into the next layer's synapses, the input range [p, q] into the first layer, and skip connections into
delayed input groups of the receiving layer (docs/residual.md). All folding happens in float64.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import (
    InputEncoder,
    InputGroup,
    MeanTimePool2d,
    MinTimePool2d,
    SpikingConv2d,
    SpikingLinear,
    SpikingNeurons,
    conv_output_size,
    conv_padding,
)
from .network import SNN
from .relu import ChannelScale, InputRange, RegionBias, ReLUStage, ResidualReLU, SignedMaxPool2d

SUPPORTED_LAYERS = (
    nn.Linear, nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d,
    nn.Flatten, nn.Dropout, nn.Identity, RegionBias, SignedMaxPool2d,
)
"""The modules :func:`convert` folds (inside any container or ``forward`` that torch.fx can trace, with
additions, ``F.relu``, ``torch.flatten`` and the functional pools)."""


class UnsupportedLayerError(TypeError):
    """A layer that has no exact spiking counterpart."""


@dataclass
class _Neurons:
    """An affine layer in ReLU space: y = W x + bias[:, region] (float64)."""

    weight: Tensor
    bias: Tensor  # (out_channels, regions)
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    region_index: Tensor | None = None
    relu: bool = False
    groups: int = 1
    inputs: list[_Group] = field(default_factory=list)  # delayed input groups (residual networks)

    @property
    def is_conv(self) -> bool:
        return self.weight.ndim == 4


@dataclass
class _Group:
    """A delayed input group of a neuron layer (see :class:`ttfs.layers.InputGroup`), float64."""

    source: int
    route: list
    kind: str  # dense, conv2d or scale
    weight: Tensor
    trainable: bool
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    groups: int = 1


@dataclass
class _Pool:
    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    sign: Tensor  # (channels,) of +-1
    padding: tuple[int, int] = (0, 0)  # padded taps are ignored (never win)


@dataclass
class _AvgPool:
    kernel_size: tuple[int, int]
    stride: tuple[int, int]


class _Flatten:
    pass


def _f64(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.detach().to("cpu", torch.float64)


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


# -- any torch.fx-traceable network (residual networks included) -------------------------------------


@dataclass(frozen=True)
class _Term:
    """One path into a value of the traced graph: the activation of layer ``source`` (0 = the input),
    routed (max/average pooling, flatten), scaled per channel, and through at most one weight."""

    source: int
    route: tuple
    shape: tuple[int, ...]  # after the route (and after the weight, if any)
    scale: Tensor | None = None  # per channel (per feature of a flat shape), before the weight; None = 1
    weight: Tensor | None = None
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    groups: int = 1
    node: str = ""  # the fx node of the weight

    @property
    def kind(self) -> str:
        if self.weight is None:
            return "scale"
        return "conv2d" if self.weight.ndim == 4 else "dense"


@dataclass(frozen=True)
class _Value:
    """An affine function of earlier layers' activations: sum of terms + a constant map (float64)."""

    terms: tuple[_Term, ...]
    const: Tensor

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.const.shape)


_RELU = {F.relu, torch.relu, torch.relu_, "relu", "relu_"}
_ADD = {operator.add, operator.iadd, torch.add, "add", "add_", "__add__", "__iadd__"}
_MUL = {operator.mul, operator.imul, torch.mul, "mul", "mul_"}
_FLATTEN = {torch.flatten, "flatten"}
_PASS = {F.dropout, "contiguous", "clone"}
_RESHAPE = {"view", "reshape", torch.reshape}
_BATCH = object()  # the value of x.size(0) in a traced graph: only used to flatten with x.view(x.size(0), -1)


_SUPPORTED_TEXT = ("supported are linear maps (Linear, Conv2d, BatchNorm1d/2d, AvgPool2d, AdaptiveAvgPool2d, "
                   "Flatten, additions, multiplication by a number, Dropout, Identity), ReLU, and MaxPool2d on "
                   "the output of a ReLU")


class _Tracer(fx.Tracer):
    """torch.fx's tracer, keeping this project's ReLU-side modules (:mod:`ttfs.relu`) whole."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, (RegionBias, SignedMaxPool2d)) or super().is_leaf_module(m, qualname)


def _node_text(node: fx.Node) -> str:
    target = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))
    return f"node {node.name!r} ({node.op} {target})"


def _refuse(node: fx.Node, why: str) -> UnsupportedLayerError:
    return UnsupportedLayerError(f"cannot convert {_node_text(node)}: {why}")


class _GraphFolder:
    """Walks a traced graph and folds every linear map into neuron layers with delayed input groups."""

    def __init__(self, model: nn.Module, in_shape: tuple[int, ...], p: Tensor, q: Tensor, input_delta: float):
        try:
            self.module = fx.GraphModule(model, _Tracer().trace(model))
        except Exception as e:  # tracing runs arbitrary user code: any error means "not traceable"
            raise UnsupportedLayerError(
                f"torch.fx cannot trace {type(model).__name__} ({type(e).__name__}: {e}); convert needs a "
                "forward without data-dependent control flow"
            ) from e
        self.in_shape, self.p, self.q, self.input_delta = tuple(in_shape), p, q, input_delta
        self.ops: list = []
        self.n = 0  # neuron layers made so far

    def fold(self) -> list:
        env: dict[fx.Node, object] = {}
        inputs = 0
        for node in self.module.graph.nodes:
            if node.op == "placeholder":
                inputs += 1
                if inputs > 1:
                    raise _refuse(node, "a second input; convert takes networks with one input tensor")
                scale = ((self.q - self.p) / self.input_delta).to(torch.float64)
                const = self.p.to(torch.float64).reshape(-1, *(1,) * (len(self.in_shape) - 1)).expand(self.in_shape)
                env[node] = _Value((_Term(0, (), self.in_shape, scale),), const.clone())
            elif node.op == "output":
                out = node.args[0]
                value = env.get(out) if isinstance(out, fx.Node) else None
                if not isinstance(value, _Value):
                    raise _refuse(node, "the network must return one tensor (the logits)")
                if all(t.weight is None for t in value.terms):
                    raise UnsupportedLayerError(
                        "the network must end with a Linear (or Conv2d) layer producing the logits, "
                        f"but {_node_text(out)} is not one"
                    )
                self._neurons(out, value, relu=False)
                return self.ops
            elif node.op == "get_attr":
                raise _refuse(node, "it reads a parameter or buffer directly; only modules and functions "
                                    "of activations can be converted")
            else:
                env[node] = self._call(node, env)
        raise AssertionError("unreachable: a traced graph ends with its output")

    # -- dispatch ---------------------------------------------------------------------------------
    def _arg(self, node: fx.Node, env, i: int = 0) -> _Value:
        a = node.args[i] if i < len(node.args) else None
        value = env.get(a) if isinstance(a, fx.Node) else None
        if not isinstance(value, _Value):
            raise _refuse(node, f"its argument {i} is not an activation tensor ({a!r})")
        return value

    def _call(self, node: fx.Node, env) -> _Value:
        target = node.target
        if node.op == "call_module":
            return self._module(node, self.module.get_submodule(target), self._arg(node, env))
        if target in _RELU:
            return self._neurons(node, self._arg(node, env), relu=True)
        if target in _ADD:
            operands = [env.get(a) if isinstance(a, fx.Node) else a for a in node.args]
            if len(operands) != 2 or not all(isinstance(v, _Value) for v in operands) or node.kwargs:
                raise _refuse(node, "only the sum of two activation tensors is supported (no constants, no alpha)")
            a, b = operands
            if a.shape != b.shape:
                raise _refuse(node, f"adds shapes {a.shape} and {b.shape} (broadcasting is not supported)")
            return _Value(a.terms + b.terms, a.const + b.const)
        if target in _MUL:
            operands = [env.get(a) if isinstance(a, fx.Node) else a for a in node.args]
            values = [v for v in operands if isinstance(v, _Value)]
            numbers = [v for v in operands if isinstance(v, (int, float)) and not isinstance(v, bool)]
            if len(values) == 1 and len(numbers) == 1 and len(operands) == 2:
                c = torch.tensor(float(numbers[0]), dtype=torch.float64)
                return self._channel_affine(values[0], c.expand(values[0].shape[0]))
            raise _refuse(node, "a multiplication of activations is not a linear map (only activation x number "
                                "is); a TTFS neuron computes ReLU of a weighted sum")
        if target in _FLATTEN:
            start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
            end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
            if start != 1 or end != -1:
                raise _refuse(node, f"flatten(start_dim={start}, end_dim={end}); only start_dim=1, end_dim=-1 keeps "
                                    "the batch dimension")
            return self._flatten(node, self._arg(node, env))
        if target in _PASS:
            return self._arg(node, env)
        if target == "size":
            if tuple(node.args[1:]) != (0,) or node.kwargs:
                raise _refuse(node, "only x.size(0), the batch size (to flatten with x.view(x.size(0), -1))")
            return _BATCH
        if target in _RESHAPE:
            shape = node.args[1:]
            if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
                shape = tuple(shape[0])
            resolved = [env.get(a) if isinstance(a, fx.Node) else a for a in shape]
            if len(resolved) != 2 or resolved[0] is not _BATCH or resolved[1] != -1:
                raise _refuse(node, "only the reshape to (batch, -1), x.view(x.size(0), -1), is supported: it is "
                                    "a flatten")
            return self._flatten(node, self._arg(node, env))
        name = getattr(target, "__name__", "").lstrip("_")
        if name in ("max_pool2d", "avg_pool2d", "adaptive_avg_pool2d"):
            return self._functional_pool(node, self._arg(node, env), name)
        raise _refuse(node, f"it has no exact single-spike counterpart; {_SUPPORTED_TEXT}")

    def _module(self, node: fx.Node, m: nn.Module, value: _Value) -> _Value:
        if isinstance(m, (nn.Dropout, nn.Identity)):
            return value
        if isinstance(m, nn.ReLU):
            return self._neurons(node, value, relu=True)
        if isinstance(m, nn.Linear):
            if value.shape != (m.in_features,):
                raise _refuse(node, f"Linear expects {m.in_features} features, the network carries shape {value.shape}")
            return self._weight(node, value, _f64(m.weight), None if m.bias is None else _f64(m.bias))
        if isinstance(m, nn.Conv2d):
            if len(value.shape) != 3 or value.shape[0] != m.in_channels:
                raise _refuse(node, f"Conv2d expects {m.in_channels} channels, the network carries shape {value.shape}")
            if _pair(m.dilation) != (1, 1) or m.padding_mode != "zeros":
                raise _refuse(node, "Conv2d needs dilation=1 and zero padding")
            try:
                padding = conv_padding(_pair(m.kernel_size), _pair(m.stride), m.padding)
            except ValueError as e:
                raise _refuse(node, str(e)) from e
            return self._weight(node, value, _f64(m.weight), None if m.bias is None else _f64(m.bias),
                                _pair(m.stride), padding, m.groups)
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            if m.running_mean is None:
                raise _refuse(node, "batch norm without running statistics cannot be folded")
            kappa = _f64(m.running_var).add(m.eps).rsqrt()
            if m.weight is not None:
                kappa = kappa * _f64(m.weight)
            beta = torch.zeros_like(kappa) if m.bias is None else _f64(m.bias)
            if kappa.shape[0] != value.shape[0] or len(value.shape) != (3 if isinstance(m, nn.BatchNorm2d) else 1):
                raise _refuse(node, f"{type(m).__name__}({kappa.shape[0]}) does not match the carried shape "
                                    f"{value.shape}")
            return self._channel_affine(value, kappa, beta - _f64(m.running_mean) * kappa)
        if isinstance(m, nn.AvgPool2d):
            return self._avgpool(node, value, m.kernel_size, m.stride, m.padding, m.ceil_mode, m.divisor_override)
        if isinstance(m, nn.AdaptiveAvgPool2d):
            return self._adaptive(node, value, m.output_size)
        if isinstance(m, nn.MaxPool2d):
            return self._maxpool(node, value, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode)
        if isinstance(m, SignedMaxPool2d):  # s * maxpool(s * a): the pool sign of channel c is sign(s_c * scale_c)
            return self._maxpool(node, value, m.kernel_size, m.stride, flip=_f64(m.sign).reshape(-1))
        if isinstance(m, RegionBias):  # a per-position bias (the reverse mapping's 'same'-padding regions)
            if len(value.shape) != 3 or tuple(m.region_index.shape) != value.shape[1:]:
                raise _refuse(node, f"RegionBias of map {tuple(m.region_index.shape)} on the carried shape "
                                    f"{value.shape}")
            return _Value(value.terms, value.const + _f64(m.bias)[:, m.region_index.cpu()])
        if isinstance(m, nn.Flatten):
            if m.start_dim != 1 or m.end_dim != -1:
                raise _refuse(node, "Flatten must flatten all non-batch dimensions (start_dim=1)")
            return self._flatten(node, value)
        raise _refuse(node, f"{type(m).__name__} has no exact single-spike counterpart; {_SUPPORTED_TEXT}")

    # -- linear maps on values --------------------------------------------------------------------
    def _weight(self, node, value: _Value, w: Tensor, b: Tensor | None, stride=(1, 1), padding=(0, 0),
                groups: int = 1) -> _Value:
        conv = w.ndim == 4
        terms = []
        for term in value.terms:
            if term.weight is not None:
                raise _refuse(node, f"it follows {term.node!r} with no ReLU between (two weight layers in a row "
                                    "have no spiking counterpart; a TTFS neuron layer is one weight layer + ReLU)")
            weight = w
            if term.scale is not None:
                if conv:
                    s = term.scale.reshape(groups, -1).repeat_interleave(w.shape[0] // groups, dim=0)
                    weight = w * s[:, :, None, None]
                else:
                    weight = w * term.scale[None, :]
            if conv:
                out_hw = conv_output_size(term.shape[1:], w.shape[2:], stride, padding)
                shape = (w.shape[0], *out_hw)
            else:
                shape = (w.shape[0],)
            terms.append(replace(term, shape=shape, scale=None, weight=weight, stride=stride, padding=padding,
                                 groups=groups, node=node.name))
        if conv:
            const = F.conv2d(value.const[None], w, b, stride=stride, padding=padding, groups=groups)[0]
        else:
            const = F.linear(value.const, w, b)
        return _Value(tuple(terms), const)

    def _channel_affine(self, value: _Value, kappa: Tensor, shift: Tensor | None = None) -> _Value:
        """kappa * value + shift per channel (batch norm in eval mode, a multiplication by a number)."""
        view = (-1, *(1,) * (len(value.shape) - 1))
        terms = []
        for term in value.terms:
            if term.weight is not None:
                terms.append(replace(term, weight=term.weight * kappa.reshape(-1, *(1,) * (term.weight.ndim - 1))))
            else:
                terms.append(replace(term, scale=kappa.clone() if term.scale is None else term.scale * kappa))
        const = value.const * kappa.reshape(view)
        return _Value(tuple(terms), const if shift is None else const + shift.reshape(view))

    def _routed(self, node, value: _Value, op, shape, what: str) -> tuple[_Term, ...]:
        terms = []
        for term in value.terms:
            if term.weight is not None:
                raise _refuse(node, f"{what} between {term.node!r} and its ReLU has no spiking counterpart; place "
                                    "it after the ReLU")
            terms.append(replace(term, route=term.route + (op,), shape=shape))
        return tuple(terms)

    def _functional_pool(self, node: fx.Node, value: _Value, name: str) -> _Value:
        """F.max_pool2d, F.avg_pool2d and F.adaptive_avg_pool2d calls, read like their modules."""
        names = {"max_pool2d": ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"),
                 "avg_pool2d": ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad",
                                "divisor_override"),
                 "adaptive_avg_pool2d": ("output_size",)}[name]
        a = {"stride": None, "padding": 0, "dilation": 1, "ceil_mode": False, "return_indices": False,
             "count_include_pad": True, "divisor_override": None}
        a.update(zip(names, node.args[1:], strict=False))  # trailing arguments may be left to their defaults
        a.update(node.kwargs)
        if name == "adaptive_avg_pool2d":
            return self._adaptive(node, value, a["output_size"])
        if name == "avg_pool2d":
            return self._avgpool(node, value, a["kernel_size"], a["stride"], a["padding"], a["ceil_mode"],
                                 a["divisor_override"])
        if a["return_indices"]:
            raise _refuse(node, "max-pooling indices are no activations")
        return self._maxpool(node, value, a["kernel_size"], a["stride"], a["padding"], a["dilation"], a["ceil_mode"])

    def _adaptive(self, node, value: _Value, output_size) -> _Value:
        if len(value.shape) != 3:
            raise _refuse(node, f"average pooling needs a (channels, h, w) input, the network carries {value.shape}")
        size = tuple(output_size) if isinstance(output_size, (tuple, list)) else (output_size, output_size)
        size = tuple(s if o is None else int(o) for s, o in zip(value.shape[1:], size, strict=True))
        if any(s % o for s, o in zip(value.shape[1:], size, strict=True)):
            raise _refuse(node, f"adaptive average pooling from {value.shape[1:]} to {size}: only output sizes "
                                "that divide the input size (equal, non-overlapping bins) are supported")
        kernel = tuple(s // o for s, o in zip(value.shape[1:], size, strict=True))
        return self._avgpool(node, value, kernel, kernel)

    def _avgpool(self, node, value: _Value, kernel, stride=None, padding=0, ceil_mode=False, divisor=None) -> _Value:
        if len(value.shape) != 3:
            raise _refuse(node, f"average pooling needs a (channels, h, w) input, the network carries {value.shape}")
        if _pair(padding) != (0, 0) or ceil_mode or divisor is not None:
            raise _refuse(node, "average pooling needs padding=0, ceil_mode=False and no divisor_override (a "
                                "padded average is no mean of spike times)")
        kernel = _pair(kernel)
        stride = _pair(stride) if stride else kernel
        const = F.avg_pool2d(value.const[None], kernel, stride)[0]
        return _Value(self._routed(node, value, _AvgPool(kernel, stride), tuple(const.shape), "average pooling"), const)

    def _flatten(self, node, value: _Value) -> _Value:
        if len(value.shape) == 1:
            return value
        per_channel = math.prod(value.shape[1:])
        terms = self._routed(node, value, _Flatten(), (math.prod(value.shape),), "Flatten")
        terms = tuple(t if t.scale is None else replace(t, scale=t.scale.repeat_interleave(per_channel)) for t in terms)
        return _Value(terms, value.const.reshape(-1))

    def _maxpool(self, node, value: _Value, kernel, stride=None, padding=0, dilation=1, ceil_mode=False,
                 flip: Tensor | None = None) -> _Value:
        if _pair(dilation) != (1, 1) or ceil_mode:
            raise _refuse(node, "max-pooling needs dilation=1, ceil_mode=False")
        kernel, padding = _pair(kernel), _pair(padding)
        stride = _pair(stride) if stride else kernel
        if len(value.terms) != 1:
            raise _refuse(node, "max-pooling must act on the output of one ReLU (optionally batch-normed): the max "
                                "of a sum is not a spike-time operation")
        if value.terms[0].weight is not None:
            raise _refuse(node, "MaxPool2d between a Linear/Conv2d and its ReLU has no spiking counterpart; place it "
                                "after the ReLU (max-pooling must act on the output of one ReLU)")
        term = value.terms[0]
        if any(isinstance(op, (_AvgPool, _Flatten)) for op in term.route) or len(value.shape) != 3:
            raise _refuse(node, "max-pooling after average pooling or flatten is not a spike-time operation")
        const = value.const
        if not bool((const == const.flatten(1)[:, :1, None]).all()):
            raise _refuse(node, "max-pooling of a position-dependent shift has no spike-time counterpart")
        sign = torch.ones(value.shape[0], dtype=torch.float64) if term.scale is None else \
            torch.where(term.scale < 0, -1.0, 1.0).double()
        if flip is not None:
            sign = sign * torch.where(flip < 0, -1.0, 1.0).double()
        pooled = F.max_pool2d(const[None], kernel, stride, padding)[0]  # constant per channel: any pool keeps it
        return _Value((replace(term, route=term.route + (_Pool(kernel, stride, sign, padding),),
                               shape=tuple(pooled.shape)),), pooled)

    # -- neuron layers ----------------------------------------------------------------------------
    def _neurons(self, node, value: _Value, relu: bool) -> _Value:
        n = self.n + 1
        primary = next((t for t in value.terms if t.source == n - 1 and t.weight is not None), None)
        if primary is None:
            raise _refuse(node, f"its neuron layer {n} gets no Linear/Conv2d input from neuron layer {n - 1}, the "
                                "one before it in execution order (a ReLU of an unweighted sum, or parallel "
                                "branches, have no chained window)")
        groups = []
        for term in value.terms:
            if term is primary:
                continue
            weight = term.weight
            if weight is None:
                weight = torch.ones(term.shape[0], dtype=torch.float64) if term.scale is None else term.scale
            groups.append(_Group(term.source, list(term.route), term.kind, weight,
                                 term.weight is not None, term.stride, term.padding, term.groups))
        shape = value.shape
        if primary.weight.ndim == 4:
            bias, index = _region_bias(value.const)
        else:
            bias, index = value.const[:, None].clone(), None
        in_shape = self._route_shape(primary)
        self.ops.extend(primary.route)
        self.ops.append(_Neurons(primary.weight, bias, in_shape, shape, primary.stride, primary.padding, index,
                                 relu, primary.groups, groups))
        self.n = n
        return _Value((_Term(n, (), shape),), torch.zeros(shape, dtype=torch.float64))

    def _route_shape(self, term: _Term) -> tuple[int, ...]:
        """Shape entering the weight of ``term``: its source's output shape through its route."""
        neurons = [op for op in self.ops if isinstance(op, _Neurons)]
        shape = self.in_shape if term.source == 0 else neurons[term.source - 1].out_shape
        for op in term.route:
            if isinstance(op, _Flatten):
                shape = (math.prod(shape),)
            else:
                padding = getattr(op, "padding", (0, 0))  # average pools have none
                shape = (shape[0], *conv_output_size(shape[1:], op.kernel_size, op.stride, padding))
        return tuple(shape)


def _region_bias(const: Tensor) -> tuple[Tensor, Tensor | None]:
    """(channels, regions) biases and the (h, w) region map of a per-position bias map (C, H, W)."""
    c = const.shape[0]
    columns, index = torch.unique(const.reshape(c, -1).t(), dim=0, return_inverse=True)
    if columns.shape[0] == 1:
        return columns.t().clone(), None
    return columns.t().contiguous(), index.reshape(const.shape[1:])


def fold(model: nn.Module, in_shape: tuple[int, ...], p: Tensor, q: Tensor, input_delta: float = 1.0) -> list:
    """Trace the ReLU network with torch.fx and fold every affine map into neuron layers (float64).

    Returns the chain of ops :func:`_build` turns into an SNN: neuron layers (with delayed input groups
    in a residual network), min-time pools, average pools and flattens. ``p``/``q`` are per input
    channel; the input range is folded into the first layer's weights and biases (SPEC 3.3).

    Every value of the graph is kept as an affine function of earlier neuron layers' activations (a sum
    of terms, each a routed and scaled activation through at most one Linear/Conv2d, plus a constant
    map). A ReLU turns one into a neuron layer: the term from the layer just before it becomes the
    layer's own weight (its route the chain's pooling/flatten modules), every other term a delayed input
    group (an identity shortcut a fixed per-channel weight, a projection shortcut a trainable one), the
    constant its biases (per region where zero padding makes them position-dependent). Anything else is
    refused with the node's name and the reason.
    """
    return _GraphFolder(model, in_shape, p, q, input_delta).fold()


def _route_module(op) -> nn.Module:
    """The spike-time module of a chain or route op."""
    if isinstance(op, _Pool):
        return MinTimePool2d(op.kernel_size, op.stride, op.sign, op.padding)
    if isinstance(op, _AvgPool):
        return MeanTimePool2d(op.kernel_size, op.stride)
    return nn.Flatten()


def _build(ops: list, encoder: InputEncoder, deltas: Tensor, parameterisation: str, alpha: float) -> SNN:
    layers: list[nn.Module] = []
    widths = deltas.tolist() + [0.0]
    n = 0
    for op in ops:
        if not isinstance(op, _Neurons):
            layers.append(_route_module(op))
        else:
            n += 1
            if op.is_conv:
                c_out, c_in_group, kh, kw = op.weight.shape
                layer: SpikingNeurons = SpikingConv2d(c_in_group * op.groups, c_out, (kh, kw), op.stride, op.padding,
                                                      parameterisation, alpha, op.region_index, op.groups)
            else:
                layer = SpikingLinear(op.weight.shape[1], op.weight.shape[0], parameterisation, alpha)
            layer = layer.double()  # receive the float64 folded values without rounding
            weight, bias = op.weight, op.bias
            if parameterisation == "alpha1":
                if op.inputs or any(isinstance(o, _AvgPool) for o in ops):
                    raise ValueError("alpha1 conversion needs a chain without skip connections or average pooling; "
                                     "use B1")
                weight, bias = _alpha1_forward_map(op, alpha, widths[n - 1], widths[n])
            with torch.no_grad():
                layer.weight.copy_(weight)
                layer.bias.copy_(bias)
            layer.set_input_groups([
                InputGroup(g.source, [_route_module(r) for r in g.route], g.kind, g.weight, g.trainable, g.stride,
                           g.padding, g.groups).double()
                for g in op.inputs
            ])
            layers.append(layer)
    return SNN(encoder, layers, deltas)


def _alpha1_forward_map(op: _Neurons, alpha: float, delta_in: float, delta: float) -> tuple[Tensor, Tensor]:
    """W = alpha w / (1 - sum_k w_k), theta = A Delta_in + B (Delta - b) (SPEC 2.4)."""
    if op.is_conv and op.padding != (0, 0):
        raise ValueError("alpha1 convolutions with zero padding have position-dependent slopes; use 'valid' padding")
    total = op.weight.flatten(1).sum(1)
    if bool((total >= 1).any()):
        raise ValueError(
            f"alpha1 needs sum_k w_ik < 1 for every readout neuron, but {int((total >= 1).sum())} have a larger "
            "sum after the hidden neurons were rescaled into alpha1's safe range (the rescaling moves weight "
            "into the next layer); scale the ReLU network's readout weights down or use B1"
        )
    slope = alpha / (1 - total)
    weight = op.weight * (alpha / (1 - total)).reshape(-1, *(1,) * (op.weight.ndim - 1))
    theta = alpha * delta_in + slope[:, None] * (delta - op.bias)
    return weight, theta


def _alpha1_rescale(ops: list, margin: float) -> None:
    """Make sum_k w_ik <= 1 - margin for hidden neurons via ReLU's positive homogeneity (SPEC 2.4).

    Neuron i's incoming weights and bias are divided by c_i > 0 and the next layer's weights from i are
    multiplied by c_i, which leaves the network function unchanged.
    """
    neuron_ops = [op for op in ops if isinstance(op, _Neurons)]
    for op, nxt in zip(neuron_ops[:-1], neuron_ops[1:], strict=True):
        total = op.weight.flatten(1).sum(1)
        c = torch.where(total > 1 - margin, total / (1 - margin), torch.ones_like(total))
        op.weight = op.weight / c.reshape(-1, *(1,) * (op.weight.ndim - 1))
        op.bias = op.bias / c[:, None]
        per_input = c if nxt.weight.ndim == 4 or len(op.out_shape) == 1 else c.repeat_interleave(
            int(torch.tensor(nxt.in_shape).prod()) // c.numel())
        nxt.weight = nxt.weight * per_input.reshape(1, -1, *(1,) * (nxt.weight.ndim - 2))


@torch.no_grad()
def max_activations(snn: SNN, data: Iterable[Tensor] | Tensor, batch_size: int = 512) -> Tensor:
    """X_n: the largest activation of every hidden layer over ``data`` (raw inputs)."""
    peaks = torch.zeros(len(snn.neuron_layers) - 1, dtype=snn.deltas.dtype, device=snn.deltas.device)
    for z in _batches(data, batch_size):
        record = snn.run(z.to(device=snn.deltas.device, dtype=snn.deltas.dtype))
        if peaks.numel():
            peaks = torch.maximum(peaks, torch.stack([x.amax() for x in record.activations()]))
    return peaks


def _batches(data: Iterable[Tensor] | Tensor, batch_size: int) -> Iterator[Tensor]:
    if isinstance(data, Tensor):
        yield from data.split(batch_size)
    else:
        for item in data:
            yield item[0] if isinstance(item, (tuple, list)) else item


def convert(
    model: nn.Module,
    calibration: Tensor | Iterable,
    in_range: tuple = (0.0, 1.0),
    zeta: float = 0.5,
    input_delta: float = 1.0,
    parameterisation: str = "b1",
    alpha: float = 1.0,
    alpha1_margin: float = 0.5,
    dtype: torch.dtype | None = None,
) -> SNN:
    """Convert a ReLU network into an equivalent TTFS network.

    ``calibration`` (a tensor of raw inputs, or an iterable of input batches or (inputs, labels))
    sets each hidden window to (1 + zeta) * X_n, with X_n the layer's largest activation on it
    (SPEC 2.8). ``in_range`` = (p, q)
    are scalars or per-channel sequences; inputs outside are clipped. The result has the dtype of
    ``model`` unless ``dtype`` is given, and lives on the model's device.
    """
    if not isinstance(calibration, Tensor):
        calibration = list(_batches(calibration, 0))  # a generator can be read only once
        if not calibration:
            raise ValueError("convert needs calibration data to set the coding windows; got no batches")
    first = calibration if isinstance(calibration, Tensor) else calibration[0]
    in_shape = tuple(first.shape[1:])
    params = list(model.parameters())
    device = params[0].device if params else torch.device("cpu")
    dtype = dtype or (params[0].dtype if params else torch.get_default_dtype())
    channels = in_shape[0]
    p = torch.as_tensor(in_range[0], dtype=torch.float64).expand(channels).clone()
    q = torch.as_tensor(in_range[1], dtype=torch.float64).expand(channels).clone()
    if input_delta <= 0 or zeta < 0:
        raise ValueError(f"need input_delta > 0 and zeta >= 0, got {input_delta}, {zeta}")
    was_training = model.training
    model.eval()
    try:
        ops = fold(model, in_shape, p, q, input_delta)
    finally:
        model.train(was_training)
    if parameterisation == "alpha1":
        _alpha1_rescale(ops, alpha1_margin)
    n_hidden = sum(isinstance(op, _Neurons) for op in ops) - 1
    per_channel = not bool((p == p[0]).all() and (q == q[0]).all())
    encoder_range = (p, q) if per_channel else (p[0], q[0])
    with torch.device("cpu"):
        unit_windows = torch.ones(n_hidden + 1, dtype=torch.float64)
        unit_windows[0] = input_delta
        probe = _build(ops, InputEncoder(in_shape, *encoder_range), unit_windows, "b1", alpha).double()
        peaks = max_activations(probe.to(device), calibration).cpu()
        if probe.residual:  # the window rule: a window holds every input entering it (SNN.window_sources)
            x0 = input_delta * max(float(probe.encoder.scaled(z.to(torch.float64)).amax())
                                   for z in _batches(calibration, 512))
            layer_peaks = [torch.tensor(x0, dtype=torch.float64), *peaks.unbind()]
            peaks = torch.stack([torch.stack([layer_peaks[m] for m in ms]).amax() for ms in probe.window_sources()])
        deltas = torch.cat([unit_windows[:1], torch.where(peaks > 0, (1 + zeta) * peaks, torch.ones_like(peaks))])
        snn = _build(ops, InputEncoder(in_shape, *encoder_range), deltas, parameterisation, alpha).double()
    return snn.to(device=device, dtype=dtype)


def to_relu(snn: SNN) -> nn.Module:
    """Reverse mapping: a torch ReLU network computing exactly what ``snn`` computes on raw inputs.

    A chain gives an ``nn.Sequential``; a network with input groups (skip connections) a
    :class:`ttfs.relu.ResidualReLU`, which adds every group's synapses (``nn.Conv2d``/``nn.Linear`` without
    bias, or :class:`ttfs.relu.ChannelScale` for an identity shortcut) applied to the activations of the
    group's source layer, routed through the ReLU-side pooling.
    """
    input_range = InputRange(snn.encoder.p, snn.encoder.q, float(snn.deltas[0]))
    relu_params = snn.relu_parameters()
    stages: list[ReLUStage] = []
    route: list[nn.Module] = []
    n = 0
    for layer in snn.layers:
        if not isinstance(layer, SpikingNeurons):
            route.append(_relu_route(layer))
            continue
        w, b = relu_params[n]
        n += 1
        groups = [(g.source, nn.Sequential(*[_relu_route(m) for m in g.route]), _relu_group(g))
                  for g in layer.input_groups]
        stages.append(ReLUStage(nn.Sequential(*route), _relu_synapses(layer, w, b), groups,
                                relu=n < len(relu_params)))
        route = []
    if not snn.residual:
        modules: list[nn.Module] = [input_range]
        for stage in stages:
            modules += [*stage.route, *stage.synapses] + ([nn.ReLU()] if stage.relu else [])
        return nn.Sequential(*modules).to(device=snn.deltas.device, dtype=snn.deltas.dtype)
    return ResidualReLU(input_range, stages).to(device=snn.deltas.device, dtype=snn.deltas.dtype)


def _relu_synapses(layer: SpikingNeurons, w: Tensor, b: Tensor) -> nn.Sequential:
    """The Linear/Conv2d (with RegionBias where the bias has regions) of a neuron layer's own weights."""
    if isinstance(layer, SpikingConv2d):
        has_regions = layer.region_index is not None
        conv = nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride,
                         layer.padding, bias=not has_regions, groups=layer.groups)
        conv = conv.to(dtype=w.dtype, device=w.device)
        with torch.no_grad():
            conv.weight.copy_(w)
            if not has_regions:
                conv.bias.copy_(b[:, 0])
        return nn.Sequential(conv, RegionBias(b, layer.region_index)) if has_regions else nn.Sequential(conv)
    linear = nn.Linear(layer.in_features, layer.out_features).to(dtype=w.dtype, device=w.device)
    with torch.no_grad():
        linear.weight.copy_(w)
        linear.bias.copy_(b[:, 0])
    return nn.Sequential(linear)


def _relu_group(group: InputGroup) -> nn.Module:
    """The bias-free synapses of an input group as a torch module (B1: the weights are the ReLU weights)."""
    w = group.weight.detach()
    if group.kind == "scale":
        return ChannelScale(w)
    if group.kind == "dense":
        module: nn.Module = nn.Linear(w.shape[1], w.shape[0], bias=False)
    else:
        module = nn.Conv2d(w.shape[1] * group.groups, w.shape[0], tuple(w.shape[2:]), group.stride, group.padding,
                           groups=group.groups, bias=False)
    module = module.to(dtype=w.dtype, device=w.device)
    with torch.no_grad():
        module.weight.copy_(w)
    return module


def _relu_route(layer: nn.Module) -> nn.Module:
    """The ReLU-side module of a spike-time pooling or flatten module."""
    if isinstance(layer, MinTimePool2d):
        if layer.padding != (0, 0) and layer.sign is not None:
            raise ValueError("to_relu has no module for a padded max-pool with flipped channels")
        if layer.sign is None:
            return nn.MaxPool2d(layer.kernel_size, layer.stride, layer.padding)
        return SignedMaxPool2d(layer.kernel_size, layer.stride, layer.sign.reshape(-1))
    if isinstance(layer, MeanTimePool2d):
        return nn.AvgPool2d(layer.kernel_size, layer.stride)
    return layer
