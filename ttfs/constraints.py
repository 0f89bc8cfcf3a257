"""Hardware constraints (SPEC 5): spike-time jitter, time steps per window, weight bit-width, latency.

Each constraint works for evaluation and for fine-tuning (gradients pass straight through the
rounding steps). Spike-time constraints act on every emitted spike in this order:

1. jitter: t <- t + N(0, sigma^2) for spiking neurons; silent neurons stay silent. By default only
   the outputs of hidden layers are jittered, as in the authors' code (its noise is added to the
   spike times each layer computes, never to the input encoding); ``jitter_inputs=True`` jitters
   the input spikes too;
2. saturation: t is clipped into its window [t_min, t_max]; a spike pushed to t_max is lost
   (silent), a spike before t_min is registered at t_min (the activation saturates at Delta);
3. time quantisation, input spikes included: the window is divided into K steps of Delta / K and t
   snaps to the *nearest* grid point t_min + k Delta / K, k = 0..K (ties away from zero); landing on
   t_max (k = K) means silent. A spike can therefore take K distinct times, k = 0..K-1, plus silence.
   Rounding cannot move a spike before t_min because saturation came first.

   K is given directly (``time_steps``) or as a bit-width b (``time_bits``), K = 2^b - 1. The
   authors' code fake-quantises spike times to b bits over [t_min, t_max]: 2^b grid points with
   both ends included, i.e. 2^b - 1 steps, the top point being t_max (silence). So b bits give
   2^b - 1 spike times plus silence, 2^b codes in all; K steps give K spike times plus silence.

Weights are fake-quantised per layer, symmetric and uniform: scale = range / (2^(b-1) - 1) with the
range the largest |W| (or a percentile of |W|), W_q = clip(round(W / scale)) * scale. Thresholds
(biases) keep full precision. Latency is reduced by shrinking the windows (a factor, or a quantile of
the activations); values above the new Delta saturate.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from .network import SNN


def _straight_through(value: Tensor, rounded: Tensor) -> Tensor:
    """Forward: ``rounded``; backward: identity (the straight-through estimator)."""
    return value + (rounded - value).detach()


#: Largest time bit-width: 2^24 steps already reach the resolution of a float32 window.
MAX_TIME_BITS = 24


def time_steps_for(value: int, time_levels: str = "steps") -> int:
    """Steps K per window of a time-quantisation setting: ``value`` itself for ``"steps"``, or
    2^value - 1 for ``"bits"`` (b bits code 2^b - 1 spike times plus silence, as the authors' code)."""
    if time_levels == "steps":
        return int(value)
    if time_levels == "bits":
        if not 2 <= value <= MAX_TIME_BITS:
            raise ValueError(f"time_bits must be in [2, {MAX_TIME_BITS}], got {value}")
        return 2 ** int(value) - 1
    raise ValueError(f"time_levels must be 'steps' or 'bits', got {time_levels!r}")


class SpikeTimeConstraints(nn.Module):
    """Jitter, saturation and time quantisation applied to the spikes of every window.

    ``input_start``: t_min^(0), the start of the input window. A call whose window starts there
    quantises the input encoding but does not jitter it (the input window is the only one that
    starts at t_min^(0): every later one starts a positive width after it). None: every call is a
    layer's output and is jittered. :func:`constrain_spike_times` sets it from ``jitter_inputs``.

    ``batch_slice`` = (start, stop, global batch size): the samples of a global batch that this call
    sees, set by :class:`ttfs.distributed.Replicas` for one data-parallel step. The noise is then drawn
    for the whole global batch and sliced, so N processes draw what one process would (exact jitter
    across world sizes).
    """

    def __init__(self, jitter: float = 0.0, time_steps: int | None = None, seed: int | None = None,
                 input_start: float | None = None):
        super().__init__()
        if jitter < 0:
            raise ValueError(f"jitter sigma must be >= 0, got {jitter}")
        if time_steps is not None and time_steps < 2:
            raise ValueError(f"time_steps must be >= 2 (steps per window), got {time_steps}")
        self.jitter = float(jitter)
        self.time_steps = time_steps
        self.input_start = None if input_start is None else float(input_start)
        self.generator: torch.Generator | None = None
        self.seed = seed
        self.batch_slice: tuple[int, int, int] | None = None

    @property
    def levels(self) -> int | None:
        """Distinct spike times a window can hold (silence not counted): K, or None without quantisation."""
        return self.time_steps

    def reseed(self, seed: int, device: torch.device | str = "cpu") -> None:
        """Make the jitter reproducible (one generator per evaluation seed)."""
        self.generator = torch.Generator(device=device).manual_seed(seed)

    def _jittered(self, t: Tensor, t_min: Tensor, t_max: Tensor) -> Tensor:
        if self.generator is None and self.seed is not None:
            self.reseed(self.seed, t.device)
        if self.batch_slice is None:
            noise = torch.randn(t.shape, generator=self.generator, device=t.device, dtype=t.dtype)
        else:
            start, stop, total = self.batch_slice
            noise = torch.randn((total, *t.shape[1:]), generator=self.generator, device=t.device,
                                dtype=t.dtype)[start:stop]
        moved = t < t_max  # silent neurons stay silent
        if self.input_start is not None:
            moved = moved & (t_min > self.input_start)  # a tensor test: no host sync per layer
        return torch.where(moved, t + self.jitter * noise, t)

    def forward(self, t: Tensor, t_min: Tensor, t_max: Tensor) -> Tensor:
        if self.jitter > 0:
            t = self._jittered(t, t_min, t_max)
        t = torch.minimum(torch.maximum(t, t_min), t_max)
        if self.time_steps is not None:
            step = (t_max - t_min) / self.time_steps
            k = torch.round((t - t_min) / step)
            t = _straight_through(t, t_min + k * step)
            t = torch.where(k >= self.time_steps, t_max, t)  # exactly silent, not t_max +- rounding
        return t

    def extra_repr(self) -> str:
        return f"jitter={self.jitter}, time_steps={self.time_steps}, jitter_inputs={self.input_start is None}"


class FakeQuantise(nn.Module):
    """b-bit symmetric uniform fake quantisation with a straight-through gradient (a parametrization)."""

    def __init__(self, bits: int, percentile: float = 100.0):
        super().__init__()
        if bits < 2:
            raise ValueError(f"weight bit-width must be >= 2, got {bits}")
        if not 0 < percentile <= 100:
            raise ValueError(f"weight range percentile must be in (0, 100], got {percentile}")
        self.bits = int(bits)
        self.percentile = float(percentile)

    def scale(self, weight: Tensor) -> Tensor:
        magnitude = weight.detach().abs()
        if self.percentile < 100:
            value_range = torch.quantile(magnitude.flatten().float(), self.percentile / 100).to(weight.dtype)
        else:
            value_range = magnitude.max()
        levels = 2 ** (self.bits - 1) - 1
        return torch.clamp(value_range, min=torch.finfo(weight.dtype).tiny) / levels

    def forward(self, weight: Tensor) -> Tensor:
        scale = self.scale(weight)
        levels = 2 ** (self.bits - 1) - 1
        return _straight_through(weight, torch.clamp(torch.round(weight / scale), -levels, levels) * scale)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, percentile={self.percentile}"


def quantise_weights(snn: SNN, bits: int | None, percentile: float = 100.0) -> SNN:
    """Fake-quantise the weights of every neuron layer in place (``bits=None`` removes it).

    Trainable input groups (projection shortcuts) are synapses too and are quantised the same way, each
    group with its own range; fixed identity shortcuts (buffers) are left exact.
    """
    groups = [g for layer in snn.neuron_layers for g in layer.input_groups if g.trainable]
    for layer in [*snn.neuron_layers, *groups]:
        if parametrize.is_parametrized(layer, "weight"):
            parametrize.remove_parametrizations(layer, "weight", leave_parametrized=False)
        if bits is not None:
            parametrize.register_parametrization(layer, "weight", FakeQuantise(bits, percentile))
    return snn


def constrain_spike_times(snn: SNN, jitter: float = 0.0, time_steps: int | None = None,
                          seed: int | None = None, *, time_bits: int | None = None,
                          jitter_inputs: bool = False) -> SNN:
    """Attach spike-time constraints to ``snn`` in place; with no jitter and no steps only saturation.

    Time quantisation: ``time_steps`` K, or ``time_bits`` b (K = 2^b - 1, module docstring), not
    both. ``jitter_inputs``: jitter the input spikes as well (default: hidden outputs only, as the
    authors' code); the input window is recognised by its start ``snn.t_start`` as it is now, so
    attach again after moving it. ``snn.spike_constraints = None`` returns to the exact network.
    """
    if time_bits is not None:
        if time_steps is not None:
            raise ValueError("give time_steps or time_bits, not both")
        time_steps = time_steps_for(time_bits, "bits")
    input_start = None if jitter_inputs else float(snn.t_start)
    snn.spike_constraints = SpikeTimeConstraints(jitter, time_steps, seed, input_start)
    return snn


def set_input_window(snn: SNN, delta0: float) -> None:
    """Change Delta^(0) and rescale the first layer's weights so the network function is unchanged.

    Input groups that read the input spikes (a skip connection from the input, source 0) are rescaled too.
    """
    if delta0 <= 0:
        raise ValueError(f"input window must be positive, got {delta0}")
    first = snn.neuron_layers[0]
    if first.parameterisation != "b1":
        raise ValueError("input-window rescaling is defined for B1 networks")
    readers = [first, *(g for layer in snn.neuron_layers for g in layer.input_groups if g.source == 0)]
    with torch.no_grad():
        ratio = snn.deltas[0] / delta0
        for synapses in readers:
            weight = synapses.weight if not parametrize.is_parametrized(synapses, "weight") else \
                synapses.parametrizations.weight.original
            weight.mul_(ratio)
        snn.deltas[0] = delta0


@torch.no_grad()
def activation_quantiles(snn: SNN, data: Iterable | Tensor, quantile: float, batch_size: int = 1000) -> Tensor:
    """Per hidden layer, the ``quantile`` of its positive activations on ``data`` (raw inputs)."""
    per_layer: list[list[Tensor]] = [[] for _ in snn.neuron_layers[:-1]]
    batches = data.split(batch_size) if isinstance(data, Tensor) else (
        b[0] if isinstance(b, (tuple, list)) else b for b in data)
    saved, snn.spike_constraints = snn.spike_constraints, None
    try:
        for z in batches:
            for values, x in zip(per_layer, snn.run(z.to(snn.deltas.device, snn.deltas.dtype)).activations(),
                                 strict=True):
                values.append(x[x > 0].float().cpu())
    finally:
        snn.spike_constraints = saved
    result = []
    for values in per_layer:
        positive = torch.cat(values)
        if positive.numel() > 2**24:  # torch.quantile's input limit; a random subset is plenty
            positive = positive[torch.randperm(positive.numel(), generator=torch.Generator().manual_seed(0))[:2**24]]
        result.append(torch.quantile(positive, quantile) if positive.numel() else torch.tensor(1.0))
    return torch.stack(result).to(snn.deltas.dtype)


def tighten_windows(snn: SNN, data: Iterable | Tensor, quantile: float = 0.999) -> None:
    """Set every hidden window Delta^(n) to a high quantile of its activations (for K time steps).

    In a residual network a window also holds the delayed spikes of the input groups of the next layer
    (:meth:`ttfs.SNN.window_sources`): it gets the largest of those layers' quantiles (Delta^(0) for the
    input).
    """
    if not 0 < quantile <= 1:
        raise ValueError(f"quantile must be in (0, 1], got {quantile}")
    widths = activation_quantiles(snn, data, quantile)
    if snn.residual:
        per_layer = [snn.deltas[0].to(widths.dtype), *widths.unbind()]
        widths = torch.stack([torch.stack([per_layer[m] for m in ms]).amax() for ms in snn.window_sources()])
    with torch.no_grad():
        snn.deltas[1:] = torch.where(widths > 0, widths, snn.deltas[1:])
    if snn.spike_constraints is None:
        constrain_spike_times(snn)


def reduce_latency(snn: SNN, factor: float) -> None:
    """Shrink every window (the input window too, exactly) by ``factor``; activations above saturate."""
    if factor < 1:
        raise ValueError(f"latency reduction factor must be >= 1, got {factor}")
    set_input_window(snn, float(snn.deltas[0]) / factor)
    with torch.no_grad():
        snn.deltas[1:] /= factor
    if snn.spike_constraints is None:
        constrain_spike_times(snn)


@torch.no_grad()
def clamp_hidden_biases(model: nn.Module) -> None:
    """Project every hidden layer's bias onto b <= 0: no neuron fires while all its inputs are silent.

    Hardware without spontaneous spikes needs this, and it makes networks sparser (docs/sparsity.md).
    For a B1 SNN the bias is D, the ReLU-equivalent bias, so projecting the ReLU network's biases and
    the SNN's after every step keeps the two trainings on one trajectory (exactly so when the input
    window starts at 0, p = 0; with p != 0 the SNN's first layer holds b + p * sum(W) instead of b).
    The readout keeps its bias: it does not spike. Models with batch norm are refused (its shift is
    a bias the projection would miss); fold it first (:func:`ttfs.convert`).
    """
    if isinstance(model, SNN):
        if model.parameterisation != "b1":
            raise ValueError(f"non-positive biases are defined for B1 networks, got {model.parameterisation}")
        hidden = model.neuron_layers[:-1]
    else:
        if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
            raise ValueError("non-positive biases need a model without batch norm: set batch_norm to false")
        hidden = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))][:-1]
    for layer in hidden:
        if layer.bias is not None:
            layer.bias.clamp_(max=0.0)


__all__ = [
    "MAX_TIME_BITS", "FakeQuantise", "SpikeTimeConstraints", "activation_quantiles", "clamp_hidden_biases",
    "constrain_spike_times", "quantise_weights", "reduce_latency", "set_input_window", "tighten_windows",
    "time_steps_for",
]
