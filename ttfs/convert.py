"""Exact conversion of a trained ReLU network into a TTFS network and back (SPEC 3).

Conversion folds everything affine into the spiking layers' weights and thresholds: batch norm before
the ReLU into the preceding layer, batch norm after the ReLU into the next one (through flatten and
max-pool, with per-region biases where 'same' zero padding meets a folded shift), and the input range
[p, q] into the first layer. All folding happens in float64.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import (
    InputEncoder,
    MinTimePool2d,
    SpikingConv2d,
    SpikingLinear,
    SpikingNeurons,
    conv_output_size,
    conv_padding,
)
from .network import SNN
from .relu import InputRange, RegionBias, SignedMaxPool2d

SUPPORTED_LAYERS = (
    nn.Linear, nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d, nn.Flatten, nn.Dropout,
    nn.Identity, RegionBias, SignedMaxPool2d,
)


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

    @property
    def is_conv(self) -> bool:
        return self.weight.ndim == 4


@dataclass
class _Pool:
    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    sign: Tensor  # (channels,) of +-1


class _Flatten:
    pass


def leaves(model: nn.Module) -> Iterator[nn.Module]:
    """The model's layers in execution order; only nn.Sequential containers are looked into."""
    if isinstance(model, nn.Sequential):
        for child in model:
            yield from leaves(child)
    elif isinstance(model, SUPPORTED_LAYERS):
        yield model
    else:
        names = ", ".join(t.__name__ for t in SUPPORTED_LAYERS)
        raise UnsupportedLayerError(
            f"cannot convert layer {type(model).__name__}: supported are {names}, inside nn.Sequential "
            "containers (a custom container's forward order is unknown)"
        )


def _f64(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.detach().to("cpu", torch.float64)


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _regions(weight: Tensor, in_hw: tuple[int, int], stride, padding, shift: Tensor, bias: Tensor):
    """Per-region biases for a conv whose input carries a per-channel shift under zero padding."""
    c_in = weight.shape[1]
    shift_image = shift.reshape(1, c_in, 1, 1).expand(1, c_in, *in_hw)
    bias_map = F.conv2d(shift_image, weight, stride=stride, padding=padding)[0] + bias[:, None, None]
    taps = F.unfold(torch.ones(1, 1, *in_hw, dtype=weight.dtype), weight.shape[2:], padding=padding, stride=stride)
    patterns, index = torch.unique(taps[0].t(), dim=0, return_inverse=True)
    out_hw = bias_map.shape[1:]
    index = index.reshape(out_hw)
    first = torch.stack([(index.flatten() == r).nonzero()[0, 0] for r in range(len(patterns))])
    region_bias = bias_map.flatten(1)[:, first]
    if bool((region_bias == region_bias[:, :1]).all()):
        return region_bias[:, :1].clone(), None
    assert torch.allclose(region_bias[:, index], bias_map, rtol=0, atol=1e-12 * (1 + bias_map.abs().max()))
    return region_bias, index


def fold(model: nn.Module, in_shape: tuple[int, ...], p: Tensor, q: Tensor, input_delta: float = 1.0) -> list:
    """Walk the ReLU network and fold every affine map into the neuron layers (float64).

    ``p``/``q`` are per input channel. The SNN carries activations a and the next affine layer of the
    ReLU network sees ``scale * a + shift`` per channel; folding absorbs that pair.
    """
    shape = tuple(in_shape)
    scale = ((q - p) / input_delta).to(torch.float64)
    shift = p.to(torch.float64).clone()
    ops: list = []
    open_layer: _Neurons | None = None  # last affine layer whose ReLU has not come yet

    def need_identity(what: str) -> None:
        if open_layer is not None:
            raise UnsupportedLayerError(
                f"{what} between a Linear/Conv2d and its ReLU has no spiking counterpart; place it after the ReLU"
            )

    for layer in leaves(model):
        if isinstance(layer, (nn.Dropout, nn.Identity)):
            continue
        if isinstance(layer, nn.Linear):
            need_identity("a second Linear")
            if len(shape) != 1 or shape[0] != layer.in_features:
                raise ValueError(f"Linear expects {layer.in_features} features, the network carries shape {shape}")
            w = _f64(layer.weight)
            b = torch.zeros(layer.out_features, dtype=torch.float64) if layer.bias is None else _f64(layer.bias)
            open_layer = _Neurons(w * scale, (b + w @ shift)[:, None], shape, (layer.out_features,))
        elif isinstance(layer, nn.Conv2d):
            need_identity("a second Conv2d")
            if len(shape) != 3 or shape[0] != layer.in_channels:
                raise ValueError(f"Conv2d expects {layer.in_channels} channels, the network carries shape {shape}")
            if layer.groups != 1 or _pair(layer.dilation) != (1, 1) or layer.padding_mode != "zeros":
                raise UnsupportedLayerError("Conv2d needs groups=1, dilation=1 and zero padding")
            stride = _pair(layer.stride)
            padding = conv_padding(_pair(layer.kernel_size), stride, layer.padding)
            w = _f64(layer.weight)
            b = torch.zeros(layer.out_channels, dtype=torch.float64) if layer.bias is None else _f64(layer.bias)
            bias, index = _regions(w, shape[1:], stride, padding, shift, b)
            out_hw = conv_output_size(shape[1:], _pair(layer.kernel_size), stride, padding)
            open_layer = _Neurons(w * scale[None, :, None, None], bias, shape, (layer.out_channels, *out_hw),
                                  stride, padding, index)
        elif isinstance(layer, RegionBias):
            if open_layer is None or open_layer.bias.shape[1] != 1:
                raise UnsupportedLayerError("RegionBias must directly follow a bias-free Conv2d")
            open_layer.bias = open_layer.bias + _f64(layer.bias)
            open_layer.region_index = layer.region_index.detach().cpu().clone()
        elif isinstance(layer, (nn.BatchNorm1d, nn.BatchNorm2d)):
            if layer.running_mean is None:
                raise ValueError(f"{type(layer).__name__} without running statistics cannot be folded")
            kappa = _f64(layer.running_var).add(layer.eps).rsqrt()
            beta = torch.zeros_like(kappa) if layer.bias is None else _f64(layer.bias)
            if layer.weight is not None:
                kappa = kappa * _f64(layer.weight)
            bn_shift = beta - _f64(layer.running_mean) * kappa
            carried = open_layer.out_shape if open_layer is not None else shape
            if kappa.shape[0] != carried[0]:
                raise ValueError(f"{type(layer).__name__}({kappa.shape[0]}) does not match carried shape {carried}")
            if open_layer is not None:  # before the ReLU: fold into the preceding layer
                open_layer.weight = open_layer.weight * kappa.reshape(-1, *(1,) * (open_layer.weight.ndim - 1))
                open_layer.bias = open_layer.bias * kappa[:, None] + bn_shift[:, None]
            else:  # after the ReLU: the next layer sees kappa * a + shift
                scale, shift = scale * kappa, shift * kappa + bn_shift
        elif isinstance(layer, nn.ReLU):
            if open_layer is None:
                raise UnsupportedLayerError("a ReLU must follow a Linear or Conv2d (optionally batch-normed)")
            open_layer.relu = True
            ops.append(open_layer)
            open_layer = None
            shape = ops[-1].out_shape
            scale, shift = torch.ones(shape[0], dtype=torch.float64), torch.zeros(shape[0], dtype=torch.float64)
        elif isinstance(layer, (nn.MaxPool2d, SignedMaxPool2d)):
            need_identity("MaxPool2d")
            if isinstance(layer, nn.MaxPool2d) and (
                _pair(layer.padding) != (0, 0) or _pair(layer.dilation) != (1, 1) or layer.ceil_mode
            ):
                raise UnsupportedLayerError("MaxPool2d needs padding=0, dilation=1, ceil_mode=False")
            if len(shape) != 3:
                raise ValueError(f"MaxPool2d needs a (channels, h, w) input, the network carries shape {shape}")
            kernel = _pair(layer.kernel_size)
            stride = _pair(layer.stride if layer.stride is not None else layer.kernel_size)
            sign = torch.where(scale < 0, -1.0, 1.0).double()
            if isinstance(layer, SignedMaxPool2d):
                sign = sign * _f64(layer.sign).reshape(-1)
            ops.append(_Pool(kernel, stride, sign))
            shape = (shape[0], *conv_output_size(shape[1:], kernel, stride, (0, 0)))
        elif isinstance(layer, nn.Flatten):
            need_identity("Flatten")
            if layer.start_dim != 1 or layer.end_dim != -1:
                raise UnsupportedLayerError("Flatten must flatten all non-batch dimensions (start_dim=1)")
            if len(shape) > 1:
                per_channel = int(torch.tensor(shape[1:]).prod())
                scale, shift = scale.repeat_interleave(per_channel), shift.repeat_interleave(per_channel)
                shape = (int(torch.tensor(shape).prod()),)
                ops.append(_Flatten())
    if open_layer is None:
        raise UnsupportedLayerError("the network must end with a Linear (or Conv2d) layer producing the logits")
    ops.append(open_layer)
    return ops


def _build(ops: list, encoder: InputEncoder, deltas: Tensor, parameterisation: str, alpha: float) -> SNN:
    layers: list[nn.Module] = []
    widths = deltas.tolist() + [0.0]
    n = 0
    for op in ops:
        if isinstance(op, _Pool):
            layers.append(MinTimePool2d(op.kernel_size, op.stride, op.sign))
        elif isinstance(op, _Flatten):
            layers.append(nn.Flatten())
        else:
            n += 1
            if op.is_conv:
                c_out, c_in, kh, kw = op.weight.shape
                layer: SpikingNeurons = SpikingConv2d(c_in, c_out, (kh, kw), op.stride, op.padding,
                                                      parameterisation, alpha, op.region_index)
            else:
                layer = SpikingLinear(op.weight.shape[1], op.weight.shape[0], parameterisation, alpha)
            layer = layer.double()  # receive the float64 folded values without rounding
            weight, bias = op.weight, op.bias
            if parameterisation == "alpha1":
                weight, bias = _alpha1_forward_map(op, alpha, widths[n - 1], widths[n])
            with torch.no_grad():
                layer.weight.copy_(weight)
                layer.bias.copy_(bias)
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
        deltas = torch.cat([unit_windows[:1], torch.where(peaks > 0, (1 + zeta) * peaks, torch.ones_like(peaks))])
        snn = _build(ops, InputEncoder(in_shape, *encoder_range), deltas, parameterisation, alpha).double()
    return snn.to(device=device, dtype=dtype)


def to_relu(snn: SNN) -> nn.Sequential:
    """Reverse mapping: a torch ReLU network computing exactly what ``snn`` computes on raw inputs."""
    modules: list[nn.Module] = [InputRange(snn.encoder.p, snn.encoder.q, float(snn.deltas[0]))]
    relu_params = snn.relu_parameters()
    n = 0
    last = len(snn.layers) - 1
    for i, layer in enumerate(snn.layers):
        if isinstance(layer, SpikingNeurons):
            w, b = relu_params[n]
            n += 1
            if isinstance(layer, SpikingConv2d):
                has_regions = layer.region_index is not None
                conv = nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride,
                                 layer.padding, bias=not has_regions)
                conv = conv.to(dtype=w.dtype, device=w.device)
                with torch.no_grad():
                    conv.weight.copy_(w)
                    if not has_regions:
                        conv.bias.copy_(b[:, 0])
                modules.append(conv)
                if has_regions:
                    modules.append(RegionBias(b, layer.region_index))
            else:
                linear = nn.Linear(layer.in_features, layer.out_features).to(dtype=w.dtype, device=w.device)
                with torch.no_grad():
                    linear.weight.copy_(w)
                    linear.bias.copy_(b[:, 0])
                modules.append(linear)
            if i != last:
                modules.append(nn.ReLU())
        elif isinstance(layer, MinTimePool2d):
            if layer.sign is None:
                modules.append(nn.MaxPool2d(layer.kernel_size, layer.stride))
            else:
                modules.append(SignedMaxPool2d(layer.kernel_size, layer.stride, layer.sign.reshape(-1)))
        else:
            modules.append(layer)
    return nn.Sequential(*modules).to(device=snn.deltas.device, dtype=snn.deltas.dtype)
