"""Spiking layers with closed-form spike times (SPEC 2.3-2.6).

Spike times flow between layers. A silent neuron carries t = t_max of its layer (activation 0) and
emits no spike. Every neuron layer integrates its inputs during phase 1 ([t_min_in, t_min)) and fires
during phase 2 ([t_min, t_max)); the closed form of that dynamics is

    V(t_min) = A * (t_min - t_min_in) + sum_j W_ij x_j,      x_j = t_min - t_j
    t_i      = t_min + (theta_i - V(t_min)) / B_i,           clipped at t_max (silent)

Two parameterisations share the layers:

* ``"b1"`` (default): A = 0, B = 1, theta = Delta - D with D trainable. Then t = t_max - ReLU(Wx + D):
  the layer *is* a ReLU layer read in time, gradients included.
* ``"alpha1"``: no phase switch, constant drive A = alpha, slope at threshold B = alpha + sum_j W_ij
  (silent inputs arrive at t_min), theta trainable.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

PARAMETERISATIONS = ("b1", "alpha1")
NONFINITE_INPUT = "input contains NaN or infinite values; clean or impute the data before encoding"


class SpikingNeurons(nn.Module):
    """Base of layers that own neurons, a coding window and per-neuron (or per-region) thresholds.

    ``bias`` holds D for B1 (the equivalent ReLU bias, threshold = Delta - D) and the threshold theta
    itself for alpha1. It has shape (channels, regions); ``region_index`` (out_h, out_w) picks the region
    of each output position of a convolution ('same' padding after a folded batch norm gives border
    positions their own bias, SPEC 3.2).
    """

    def __init__(self, out_channels: int, regions: int, parameterisation: str, alpha: float):
        super().__init__()
        if parameterisation not in PARAMETERISATIONS:
            raise ValueError(
                f"unknown parameterisation {parameterisation!r}; choose one of {PARAMETERISATIONS}"
            )
        self.parameterisation = parameterisation
        self.alpha = float(alpha)
        self.bias = nn.Parameter(torch.zeros(out_channels, regions))
        self.register_buffer("region_index", None)

    @property
    def input_groups(self) -> tuple[InputGroup, ...] | nn.ModuleList:
        """The delayed synapse groups from earlier layers (skip connections); empty for a chain layer.

        The layer's own ``weight`` is input group 0: the spikes of the module before it in the chain,
        undelayed. A residual network's layers add groups (:class:`InputGroup`), each reading the
        spikes of an earlier neuron layer (or of the input) delayed into this layer's integration window.
        """
        return self._modules.get("inputs") or ()

    def set_input_groups(self, groups: list[InputGroup]) -> None:
        if groups and not self.is_b1:
            raise ValueError("input groups (skip connections) exist for the B1 parameterisation only")
        if groups:
            self.inputs = nn.ModuleList(groups)
        else:
            self._modules.pop("inputs", None)

    # -- implemented by subclasses -------------------------------------------------------------
    def integrate(self, x: Tensor) -> Tensor:
        """sum_j W_ij x_j for every neuron (no bias)."""
        raise NotImplementedError

    def affine(self, x: Tensor) -> Tensor:
        """sum_j W_ij x_j + bias_i (one fused kernel where possible: this is the B1 hot path)."""
        return self.integrate(x) + self.per_neuron(self.bias)

    def per_neuron(self, p: Tensor) -> Tensor:
        """Broadcast a (channels, regions) parameter to the layer's output shape (without batch)."""
        raise NotImplementedError

    def patches(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Inputs seen by each output position, (batch, positions, taps), and the weights (out, taps)."""
        raise NotImplementedError

    # -- shared dynamics -------------------------------------------------------------------------
    @property
    def is_b1(self) -> bool:
        return self.parameterisation == "b1"

    def slope(self, like: Tensor) -> Tensor:
        """Slope B of the potential at threshold, per neuron, broadcastable to the layer output."""
        if self.is_b1:
            return torch.ones((), dtype=like.dtype, device=like.device)
        ones = torch.ones_like(like[:1])
        return self.alpha + self.integrate(ones)[0]

    def drive(self) -> float:
        """Constant input current A during phase 1."""
        return 0.0 if self.is_b1 else self.alpha

    def threshold(self, delta: Tensor | float) -> Tensor:
        """Firing threshold theta per neuron for a window of width ``delta`` (0 for the readout)."""
        if self.is_b1:
            return delta - self.per_neuron(self.bias)
        return self.per_neuron(self.bias)

    def activation(self, t_in: Tensor, t_min_in: Tensor, t_min: Tensor, t_max: Tensor | None,
                   extra: Tensor | None = None) -> Tensor:
        """t_max - t_unclipped: the equivalent ReLU pre-activation, from the closed-form spike time.

        ``extra`` is the potential the input groups add at t_min (:meth:`InputGroup.forward`, summed;
        B1 only). An alpha1 neuron with slope B <= 0 never rises to threshold in phase 2: it is silent
        (returned as -1, counted by :meth:`nonpositive_slopes`).
        """
        x = t_min - t_in
        if self.is_b1:
            # A = 0, B = 1, theta = Delta - D:  t_max - t = V - theta + Delta = Wx + D (+ the groups' sum).
            return self.affine(x) if extra is None else self.affine(x) + extra
        slope = self.slope(x)
        rising = slope > 0
        potential = self.drive() * (t_min - t_min_in) + self.integrate(x)
        value = (potential - self.per_neuron(self.bias)) / torch.where(rising, slope, 1.0)
        if t_max is not None:  # hidden layer: t_max - t = Delta - (theta - V) / B
            value = value + (t_max - t_min)
        return torch.where(rising, value, -1.0)

    def forward(self, t_in: Tensor, t_min_in: Tensor, t_min: Tensor, t_max: Tensor,
                extra: Tensor | None = None) -> Tensor:
        """Spike times of this layer; silent neurons get exactly t_max."""
        return t_max - F.relu(self.activation(t_in, t_min_in, t_min, t_max, extra))

    def readout(self, t_in: Tensor, t_min_in: Tensor, t_min: Tensor, extra: Tensor | None = None) -> Tensor:
        """Logits of a non-spiking output layer: its potentials at t_read = t_min, in ReLU units."""
        return self.activation(t_in, t_min_in, t_min, None, extra)

    def nonpositive_slopes(self, like: Tensor) -> int:
        """Number of neurons (per sample) whose alpha1 slope B <= 0 makes them silent; 0 for B1."""
        if self.is_b1:
            return 0
        return int((self.slope(like) <= 0).sum())

    def phase1_spikes(self, t_in: Tensor, t_min_in: Tensor, t_min: Tensor) -> Tensor:
        """Mask of alpha1 neurons whose potential reaches threshold before t_min (a spike in phase 1).

        The potential is piecewise linear with breakpoints at the input spike times, so it reaches
        theta in [t_min_in, t_min] iff it does so at a breakpoint or at t_min. B1 has no threshold in
        phase 1: its early spikes are causality violations (t < t_min), counted by the network.
        """
        x = t_min - t_in
        theta = self.per_neuron(self.bias)
        if self.is_b1:
            return torch.zeros_like(self.integrate(x), dtype=torch.bool)
        crossed = self.drive() * (t_min - t_min_in) + self.integrate(x) > theta
        patches, weight = self.patches(x)  # (batch, positions, taps), (out, taps)
        order = patches.argsort(dim=-1, descending=True)  # earliest arrival first
        arrival = t_min - patches.gather(-1, order)  # (b, l, k)
        w = weight.t()[order]  # (b, l, k, out)
        cum_w = w.cumsum(dim=2)
        cum_wt = (w * arrival.unsqueeze(-1)).cumsum(dim=2)
        v = self.drive() * (arrival - t_min_in).unsqueeze(-1) + arrival.unsqueeze(-1) * cum_w - cum_wt
        in_phase1 = (arrival < t_min).unsqueeze(-1)
        theta_l = theta.expand(crossed.shape[1:]).reshape(crossed.shape[1], -1).t()  # (positions, out)
        early = ((v >= theta_l[:, None]) & in_phase1).any(dim=2) | (theta_l <= 0)  # (batch, positions, out)
        return crossed | early.transpose(1, 2).reshape(crossed.shape)
    has_padding = False

    def relu_equivalent(self, delta_in: float, delta: float) -> tuple[Tensor, Tensor]:
        """(w, b) of the equivalent ReLU layer, b shaped like ``bias`` (reverse map of SPEC 2.3).

        ``delta`` is this layer's window width (0 for the readout), ``delta_in`` the previous layer's.
        """
        weight, bias = self.weight.detach(), self.bias.detach()
        if self.is_b1:
            return weight.clone(), bias.clone()
        if self.has_padding:
            raise ValueError(
                "an alpha1 convolution with zero padding has position-dependent slopes B; it has no "
                "equivalent ReLU convolution (use 'valid' padding or the B1 parameterisation)"
            )
        slope = self.alpha + weight.flatten(1).sum(1)
        if bool((slope <= 0).any()):
            raise ValueError(
                f"{int((slope <= 0).sum())} alpha1 neurons have slope B <= 0 and no ReLU equivalent"
            )
        w = weight / slope.reshape(-1, *(1,) * (weight.ndim - 1))
        b = delta - (bias - self.alpha * delta_in) / slope[:, None]
        return w, b


class SpikingLinear(SpikingNeurons):
    """Fully connected spiking layer (hidden) or readout."""

    def __init__(self, in_features: int, out_features: int, parameterisation: str = "b1", alpha: float = 1.0):
        super().__init__(out_features, 1, parameterisation, alpha)
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        nn.init.xavier_uniform_(self.weight)

    def integrate(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight)

    def affine(self, x: Tensor) -> Tensor:
        # bias is (out, 1): a view, not bias[:, 0], whose backward allocates and scatters a zero tensor
        return F.linear(x, self.weight, self.bias.view(-1))

    def per_neuron(self, p: Tensor) -> Tensor:
        return p[:, 0]

    def patches(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x.unsqueeze(1), self.weight

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, {self.parameterisation}"


class SpikingConv2d(SpikingNeurons):
    """2-d convolutional spiking layer with stride, 'same'/'valid'/explicit zero padding.

    Zero padding is a silent input (x = 0), exactly as zero padding of the ReLU network's activations.
    ``groups`` as in ``torch.nn.Conv2d`` (B1 only).
    """

    groups = 1  # instances set their own; the class value serves layers pickled before groups existed

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | str = 0,
        parameterisation: str = "b1",
        alpha: float = 1.0,
        region_index: Tensor | None = None,
        groups: int = 1,
    ):
        regions = 1 if region_index is None else int(region_index.max()) + 1
        super().__init__(out_channels, regions, parameterisation, alpha)
        if groups < 1 or in_channels % groups or out_channels % groups:
            raise ValueError(f"groups={groups} must divide in_channels={in_channels} and out_channels={out_channels}")
        if groups != 1 and parameterisation != "b1":
            raise ValueError("grouped convolutions are supported for the B1 parameterisation only")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.groups = int(groups)
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride)
        self.padding = conv_padding(self.kernel_size, self.stride, padding)
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, *self.kernel_size))
        nn.init.xavier_uniform_(self.weight)
        if region_index is not None:
            self.region_index = region_index.to(torch.long)

    def integrate(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight, stride=self.stride, padding=self.padding, groups=self.groups)

    def affine(self, x: Tensor) -> Tensor:
        if self.region_index is None:  # bias is (out, 1); a view keeps the backward free of a scatter
            return F.conv2d(x, self.weight, self.bias.view(-1), stride=self.stride, padding=self.padding,
                            groups=self.groups)
        return self.integrate(x) + self.bias[:, self.region_index]

    def per_neuron(self, p: Tensor) -> Tensor:
        if self.region_index is None:
            return p[:, 0, None, None]
        return p[:, self.region_index]

    def patches(self, x: Tensor) -> tuple[Tensor, Tensor]:
        cols = F.unfold(x, self.kernel_size, padding=self.padding, stride=self.stride)
        return cols.transpose(1, 2), self.weight.reshape(self.out_channels, -1)

    @property
    def has_padding(self) -> bool:
        return self.padding != (0, 0)

    def output_size(self, in_size: tuple[int, int]) -> tuple[int, int]:
        return conv_output_size(in_size, self.kernel_size, self.stride, self.padding)

    def extra_repr(self) -> str:
        regions = self.bias.shape[1]
        grouped = f", groups={self.groups}" if self.groups != 1 else ""
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}{grouped}, regions={regions}, {self.parameterisation}"
        )


class MinTimePool2d(nn.Module):
    """Max-pooling of activations as pooling of spike times (SPEC 2.6).

    Channels with ``sign`` +1 take the earliest spike (max of activations); channels with sign -1 take
    the latest (min of activations), needed when a batch norm with negative scale sits between the ReLU
    and the max-pool. Creates no neurons and no window. ``padding`` positions are ignored (as torch's
    max-pooling pads with -inf: a window's padded taps never win).
    """

    padding = (0, 0)  # the class value serves layers pickled before padding existed

    def __init__(self, kernel_size: int | tuple[int, int], stride: int | tuple[int, int] | None = None,
                 sign: Tensor | None = None, padding: int | tuple[int, int] = 0):
        super().__init__()
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride if stride is not None else kernel_size)
        self.padding = _pair(padding)
        self.sign: Tensor | None
        if sign is not None and bool((sign < 0).any()):
            self.register_buffer("sign", sign.sign().to(torch.get_default_dtype()).reshape(1, -1, 1, 1))
        else:
            self.sign = None

    def forward(self, t: Tensor) -> Tensor:
        if self.sign is None:
            return -F.max_pool2d(-t, self.kernel_size, self.stride, self.padding)
        s = self.sign.to(t.dtype)
        return -s * F.max_pool2d(-s * t, self.kernel_size, self.stride, self.padding)

    def extra_repr(self) -> str:
        negative = 0 if self.sign is None else int((self.sign < 0).sum())
        padded = f", padding={self.padding}" if self.padding != (0, 0) else ""
        return f"kernel_size={self.kernel_size}, stride={self.stride}{padded}, negative_channels={negative}"


class MeanTimePool2d(nn.Module):
    """Average pooling (AvgPool2d without padding, AdaptiveAvgPool2d with dividing sizes), in time.

    Averaging is linear: the mean of the spike times is t_max - mean(x), so the next layer's potential
    at t_min is exactly sum_i W_i mean_window(x). It is no spike operation: physically every input of a
    window has its own synapse, of weight W_i / (kh * kw), into the next neuron layer (the pool is folded
    into that layer's weights; the event-driven simulator and the export treat it so). Creates no
    neurons and no window, and must be followed by a neuron layer (or flatten, then one).
    """

    def __init__(self, kernel_size: int | tuple[int, int], stride: int | tuple[int, int] | None = None):
        super().__init__()
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride if stride is not None else kernel_size)

    def forward(self, t: Tensor) -> Tensor:
        return F.avg_pool2d(t, self.kernel_size, self.stride)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}"


SYNAPSE_KINDS = ("dense", "conv2d", "scale")


class InputGroup(nn.Module):
    """A delayed synapse group of a neuron layer: the spikes of an earlier layer reach it late.

    ``source`` is the neuron layer number m of the sending layer (0 = the input encoding). Its spikes,
    routed through ``route`` (min-time pooling, average pooling, flatten: spike-time modules of the
    chain) and delayed by t_min^(n) - t_max^(m) (the widths of the windows in between), arrive in the
    integration window [t_min^(n-1), t_min^(n)) of the receiving layer n, where they contribute
    sum_j W_ij x_j with x_j = t_max^(m) - t_j (exactly the activation of the earlier layer: a skip
    connection). ``kind``: ``"dense"`` (weight (out, in)), ``"conv2d"`` (weight (out, in / groups, kh, kw),
    ``stride``, ``padding``, ``groups``) or ``"scale"`` (one weight per channel, or per feature of a flat
    input: an identity shortcut, scaled by a batch norm folded after a ReLU). ``trainable`` weights are
    parameters (a projection shortcut's 1x1 convolution); fixed ones (identity) are buffers, as in the
    ReLU network, where an identity shortcut has no parameters.
    """

    def __init__(self, source: int, route: list[nn.Module], kind: str, weight: Tensor, trainable: bool = True,
                 stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] = 0, groups: int = 1):
        super().__init__()
        if kind not in SYNAPSE_KINDS:
            raise ValueError(f"unknown synapse kind {kind!r}; choose one of {SYNAPSE_KINDS}")
        if source < 0:
            raise ValueError(f"source must be a neuron layer number >= 0, got {source}")
        self.source = int(source)
        self.route = nn.Sequential(*route)
        self.kind = kind
        self.stride = _pair(stride)
        self.padding = _pair(padding)
        self.groups = int(groups)
        self.trainable = bool(trainable)
        if trainable:
            self.weight = nn.Parameter(weight.detach().clone())
        else:
            self.register_buffer("weight", weight.detach().clone())

    def integrate(self, x: Tensor) -> Tensor:
        """sum_j W_ij x_j over this group's synapses, for the routed activations x."""
        if self.kind == "dense":
            return F.linear(x, self.weight)
        if self.kind == "conv2d":
            return F.conv2d(x, self.weight, stride=self.stride, padding=self.padding, groups=self.groups)
        return x * self.weight.reshape(-1, *(1,) * (x.ndim - 2))

    def forward(self, t_source: Tensor, t_max_source: Tensor) -> Tensor:
        """Potential added at the receiving layer's t_min by the spikes ``t_source`` of layer ``source``."""
        return self.integrate(t_max_source - self.route(t_source))

    def extra_repr(self) -> str:
        conv = self.kind == "conv2d"
        geometry = f", stride={self.stride}, padding={self.padding}, groups={self.groups}" if conv else ""
        return (f"source={self.source}, {self.kind}, weight={tuple(self.weight.shape)}{geometry}, "
                f"trainable={self.trainable}")


class InputEncoder(nn.Module):
    """Maps raw inputs z to input spike times t0 = t_max0 - x * Delta0 with x = clip((z - p) / (q - p)).

    ``p`` and ``q`` are scalars or per-channel values. Values outside [p, q] are clipped (they saturate
    at the window edge) and counted by :meth:`clipped`; non-finite values raise.
    """

    def __init__(self, in_shape: tuple[int, ...], p: float | Tensor = 0.0, q: float | Tensor = 1.0):
        super().__init__()
        self.in_shape = tuple(int(s) for s in in_shape)
        # float64 whatever the default dtype: the module's dtype is set by .to(), never by rounding here
        p_t = torch.as_tensor(p, dtype=torch.float64)
        q_t = torch.as_tensor(q, dtype=torch.float64)
        if bool((q_t <= p_t).any()):
            raise ValueError(f"input range needs q > p, got p={p}, q={q}")
        shape = (-1,) + (1,) * (len(self.in_shape) - 1) if p_t.ndim else ()
        self.register_buffer("p", p_t.reshape(shape))
        self.register_buffer("q", q_t.reshape(shape))
        self.unit_range = bool((p_t == 0).all() and (q_t == 1).all())

    def check_shape(self, z: Tensor) -> None:
        if z.shape[1:] != self.in_shape:
            raise ValueError(
                f"input has shape {tuple(z.shape)}, expected (batch, {', '.join(map(str, self.in_shape))})"
            )

    def check(self, z: Tensor) -> None:
        self.check_shape(z)
        # One reduction decides for almost every batch; the elementwise test only runs if it is not finite.
        if not math.isfinite(z.sum().item()) and not bool(torch.isfinite(z).all()):
            raise ValueError(NONFINITE_INPUT)

    def scaled(self, z: Tensor) -> Tensor:
        """x in [0, 1]."""
        if self.unit_range:
            return z.clamp(0.0, 1.0)
        return ((z - self.p) / (self.q - self.p)).clamp(0.0, 1.0)

    def clipped(self, z: Tensor) -> Tensor:
        """Number of input values outside [p, q] (they were clipped to the window edge)."""
        return ((z < self.p) | (z > self.q)).sum()

    def forward(self, z: Tensor, t_max: Tensor, delta: Tensor) -> Tensor:
        self.check(z)
        return torch.addcmul(t_max, self.scaled(z), delta, value=-1)

    def extra_repr(self) -> str:
        return f"in_shape={self.in_shape}"


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def conv_padding(kernel: tuple[int, int], stride: tuple[int, int], padding) -> tuple[int, int]:
    """Explicit symmetric zero padding; 'same' needs odd kernels (symmetric padding) and stride 1."""
    if padding == "valid":
        return (0, 0)
    if padding == "same":
        if any(k % 2 == 0 for k in kernel) or stride != (1, 1):
            raise ValueError(f"'same' padding needs odd kernel sizes and stride 1, got {kernel}, {stride}")
        return (kernel[0] // 2, kernel[1] // 2)
    return _pair(padding)


def conv_output_size(size: tuple[int, int], kernel, stride, padding) -> tuple[int, int]:
    return tuple(
        math.floor((s + 2 * p - k) / st) + 1 for s, k, st, p in zip(size, kernel, stride, padding, strict=True)
    )
