"""Evaluation metrics of a TTFS network (SPEC 6) and the conversion report of SPEC 3.4.

Definitions (per sample unless a name says ``total``):

* **Spike.** A hidden neuron spikes when its time is before the end of its window, t < t_max^(n)
  (a silent neuron carries exactly t_max^(n)); an input unit spikes when t^(0) < t_max^(0), i.e.
  x > 0. Every neuron spikes at most once.
* **Spikes per neuron** (the paper's sparsity): hidden spikes / (samples x hidden neurons); input and
  readout layers excluded; a conv unit is one neuron per position and channel; silent neurons count 0.
* **Fan-out into a neuron layer** (:func:`fan_out`) of a unit of that layer's input: its number of
  synapses there. A dense layer gives every input ``out_features`` synapses. A convolution gives input
  position (h, w) of any channel ``out_channels`` x (number of (output position, kernel tap) pairs that
  read (h, w)); taps that read zero padding are no synapses, so border units have a smaller fan-out,
  and positions no output reads (stride remainders) have none. Weights that happen to be 0 still count.
* **Fan-out of a neuron** (:func:`unit_fan_out`): the synapses of a spiking neuron in the unfolded
  connectivity, through the min-time pooling and flatten between it and the next neuron layer:
  the sum, over every pool window that contains the neuron, of that window's fan-out into the next
  neuron layer (with non-overlapping windows the fan-out of its one window; 0 for a position no window
  covers). Each (pool window, synapse) path counts once, so with overlapping windows a neuron that
  reaches one target through two windows has two synapses to it.
* **Input groups** (residual networks): a neuron's spikes also travel, delayed, along every input
  group that reads its layer; its fan-out is the sum over the chain and all those groups (each counted
  like the chain: through the group's route, its synapses into the receiving layer). An identity
  shortcut (kind ``scale``) is one synapse per unit; average pooling, folded into the next weights,
  routes back like a pool (each (window, synapse) path counts once).
* **SynOps** (SPEC 6): sum over the spikes of the fan-out of the spiking neuron. A spike costs its
  synaptic operations whether or not it wins its pool window: hardware delivers every spike along
  all its synapses (pooling is the min of the arrival times at the target, decided there).
  ``synops`` sums hidden layers 1..N-1 (fan-out into layers 2..N, readout included);
  ``input_synops`` counts the spikes of the input encoding into layer 1 the same way and is reported
  separately.
* **Routed SynOps**: what would be left if pooling were done before the synapses, by a router that
  forwards only the winner of each pool window (the earliest spike; the latest for channels whose
  pooling sign is flipped, which then fires only if every input of the window spiked): the sum over
  the events arriving at the next neuron layer of their fan-out into it (:func:`fan_out`). A lower
  bound for pooled networks; equal to SynOps without pooling. Average pooling cannot be routed (a
  mean of spike times is no spike): every spike entering an average pool is counted with its synapses.
  Input groups are routed the same way. Not the SPEC metric: reported under its own name
  (``routed_synops``).
* **MACs** of the equivalent ReLU network: one multiply-accumulate per synapse, i.e. the sum of the
  fan-outs of all units into each neuron layer (zero-padding taps excluded unless
  ``include_padding``); pooling, batch norm (folded) and ReLU cost none.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import (
    InputGroup,
    MeanTimePool2d,
    MinTimePool2d,
    SpikingConv2d,
    SpikingLinear,
    SpikingNeurons,
    conv_padding,
)
from .network import SNN, SpikeRecord

__all__ = [
    "E_MAC_PJ", "E_SYNOP_PJ", "compare_to_relu", "conv_tap_counts", "energy_estimate", "fan_out", "latency",
    "macs", "relu_macs", "spike_statistics", "unit_fan_out",
]

#: Energy of one 32-bit float addition (a synaptic operation) and one 32-bit float multiply-accumulate
#: (4 pJ multiply + 0.9 pJ add is usually rounded to 4.6 pJ) in 45 nm CMOS, Horowitz, ISSCC 2014.
E_SYNOP_PJ = 0.9
E_MAC_PJ = 4.6


# -- geometry ----------------------------------------------------------------------------------------


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _conv_geometry(in_hw, kernel_size, stride, padding, dilation):
    """(kernel, stride, padding, dilation, (out_h, out_w)) with padding resolved to a pair."""
    kernel, stride, dilation = _pair(kernel_size), _pair(stride), _pair(dilation)
    pad = conv_padding(kernel, stride, padding) if isinstance(padding, str) else _pair(padding)
    out = tuple(
        max((size + 2 * p - d * (k - 1) - 1) // s + 1, 0)
        for size, k, s, p, d in zip(in_hw, kernel, stride, pad, dilation, strict=True)
    )
    return kernel, stride, pad, dilation, out


def conv_tap_counts(in_hw: Sequence[int], kernel_size, stride=1, padding=0, dilation=1) -> Tensor:
    """(H, W) int64 map: for each input position, how many (output position, kernel tap) pairs read it.

    ``padding`` may be an int, a pair, 'valid' or 'same' (odd kernels, stride 1). Computed by folding
    a block of ones back onto the input, i.e. the transposed convolution of ones.
    """
    h, w = (int(s) for s in in_hw)
    kernel, stride, pad, dilation, out = _conv_geometry((h, w), kernel_size, stride, padding, dilation)
    if min(out) < 1:
        return torch.zeros(h, w, dtype=torch.long)
    ones = torch.ones(1, kernel[0] * kernel[1], out[0] * out[1], dtype=torch.float64)
    counts = F.fold(ones, (h, w), kernel, dilation=dilation, padding=pad, stride=stride)[0, 0]
    return counts.round().to(torch.long)


def fan_out(layer: SpikingNeurons, in_shape: Sequence[int]) -> Tensor:
    """Number of synapses from each unit of an input of shape ``in_shape`` (no batch) into ``layer``."""
    in_shape = tuple(int(s) for s in in_shape)
    if isinstance(layer, SpikingLinear):
        return torch.full(in_shape, layer.out_features, dtype=torch.long)
    if isinstance(layer, SpikingConv2d):
        counts = conv_tap_counts(in_shape[1:], layer.kernel_size, layer.stride, layer.padding)
        return (counts * (layer.out_channels // layer.groups)).expand(in_shape).clone()
    if isinstance(layer, InputGroup):
        if layer.kind == "dense":
            return torch.full(in_shape, layer.weight.shape[0], dtype=torch.long)
        if layer.kind == "scale":
            return torch.ones(in_shape, dtype=torch.long)
        counts = conv_tap_counts(in_shape[1:], layer.weight.shape[2:], layer.stride, layer.padding)
        return (counts * (layer.weight.shape[0] // layer.groups)).expand(in_shape).clone()
    raise TypeError(f"no fan-out rule for {type(layer).__name__}")


# -- data handling -----------------------------------------------------------------------------------


def _iter_batches(batches) -> Iterator[tuple[Tensor, Tensor | None]]:
    """(inputs, labels or None) from a tensor, one (inputs, labels) pair, or an iterable of either.

    A 2-sequence of tensors whose second element is 1-d with the first's batch size is one labelled
    batch; any other sequence is a sequence of batches.
    """
    if isinstance(batches, Tensor):
        yield batches, None
        return
    if (
        isinstance(batches, (tuple, list)) and len(batches) == 2
        and all(isinstance(b, Tensor) for b in batches)
        and batches[1].ndim == 1 and batches[0].ndim >= 2 and len(batches[0]) == len(batches[1])
    ):
        yield batches[0], batches[1]
        return
    for item in batches:
        if isinstance(item, Tensor):
            yield item, None
        elif isinstance(item, (tuple, list)) and item:
            yield item[0], (item[1] if len(item) > 1 else None)
        else:
            raise TypeError(
                f"a batch must be a tensor or an (inputs, labels) pair, got {type(item).__name__}"
            )


def _to(x: Tensor, ref: Tensor) -> Tensor:
    return x.to(device=ref.device, dtype=ref.dtype)


# -- spike statistics --------------------------------------------------------------------------------


def _segments(snn: SNN) -> list[list[nn.Module]]:
    """The routing modules (pooling, flatten) in front of each neuron layer, in call order."""
    segments: list[list[nn.Module]] = []
    between: list[nn.Module] = []
    for layer in snn.layers:
        if isinstance(layer, SpikingNeurons):
            segments.append(between)
            between = []
        else:
            between.append(layer)
    return segments


def _route_back(module: nn.Module, fan: Tensor, in_shape: Sequence[int]) -> Tensor:
    """Fan-out of every unit of ``module``'s input, from the fan-out of every unit of its output.

    Routing is linear in the paths it opens: a unit reaches every output that reads it, so its
    fan-out is the sum of theirs (a transposed sum-pool, i.e. ``fold``, for a pool; a reshape for
    flatten).
    """
    in_shape = tuple(int(s) for s in in_shape)
    if isinstance(module, nn.Flatten):
        return fan.reshape(in_shape)
    if isinstance(module, (MinTimePool2d, MeanTimePool2d)):
        channels, taps = in_shape[0], module.kernel_size[0] * module.kernel_size[1]
        cols = fan.to(torch.float64).reshape(channels, 1, -1).expand(-1, taps, -1).reshape(1, channels * taps, -1)
        padding = module.padding if isinstance(module, MinTimePool2d) else (0, 0)
        folded = F.fold(cols, in_shape[1:], module.kernel_size, stride=module.stride, padding=padding)[0]
        return folded.round().to(torch.long)
    raise TypeError(f"no fan-out rule for {type(module).__name__} between neuron layers")


def _sources(record: SpikeRecord) -> list[Tensor]:
    """Spike times of every spiking layer: the input encoding, then hidden layers 1..N-1."""
    return [record.input_times, *record.times]


@torch.no_grad()
def unit_fan_out(snn: SNN, record: SpikeRecord | None = None) -> list[Tensor]:
    """Fan-out of every neuron (module docstring), per spiking layer: the input, then hidden 1..N-1.

    Each map has the shape of the layer's spike times without the batch dimension (int64, on the
    SNN's device). ``record``: any :class:`SpikeRecord` of ``snn`` (only its shapes are used); by
    default one zero input is run without the spike-time constraints (which could draw noise).
    """
    if record is None:
        saved, snn.spike_constraints = snn.spike_constraints, None
        try:
            record = snn.run(torch.zeros(1, *snn.encoder.in_shape, dtype=snn.deltas.dtype, device=snn.deltas.device))
        finally:
            snn.spike_constraints = saved
    maps = []
    sources = _sources(record)
    for source, modules, layer in zip(sources, _segments(snn), snn.neuron_layers, strict=True):
        maps.append(_through(list(modules), layer, source).to(source.device))
    for layer in snn.neuron_layers:
        for group in layer.input_groups:
            maps[group.source] = maps[group.source] + _through(list(group.route), group, sources[group.source]).to(
                maps[group.source].device)
    return maps


def _through(modules: list[nn.Module], synapses: nn.Module, source: Tensor) -> Tensor:
    """Fan-out of every unit of ``source`` through the routing ``modules`` into ``synapses``."""
    t, shapes = source[:1], []
    for module in modules:
        shapes.append(t.shape[1:])
        t = module(t)
    fan = fan_out(synapses, t.shape[1:])
    for module, shape in zip(reversed(modules), reversed(shapes), strict=True):
        fan = _route_back(module, fan, shape)
    return fan


class _SpikeCounter:
    """Accumulates spike counts, causality violations and SynOps over SpikeRecords of one SNN."""

    def __init__(self, snn: SNN):
        self.snn = snn
        self.layers = snn.neuron_layers
        self.alpha1 = snn.parameterisation != "b1"
        self.samples = 0
        self.neurons: list[int] | None = None
        hidden = len(self.layers) - 1
        self.spikes = [0] * hidden
        self.violations = [0] * hidden
        self.phase1 = [0] * hidden
        # by source layer: 0 = the input encoding, n = hidden layer n
        self.synops = [0] * len(self.layers)
        self.routed = [0] * len(self.layers)
        self.input_spikes = 0
        self.clipped = 0
        self._unit_fan: list[Tensor] | None = None
        self._routed_fan: list[tuple[int, nn.Module, Tensor]] | None = None
        self.early = 0

    def _count_synops(self, record: SpikeRecord) -> None:
        """SPEC SynOps (every spike x the neuron's fan-out) and routed SynOps (events reaching the next layer)."""
        sources = _sources(record)
        if self._unit_fan is None:
            self._unit_fan = unit_fan_out(self.snn, record)
            # every path into a neuron layer: the chain from layer m = n - 1, and each input group. A router
            # can forward the winners of max-pooling only: spikes entering an average pool all travel on.
            paths = [(m, list(modules), layer) for m, (modules, layer) in enumerate(zip(_segments(self.snn),
                                                                                        self.layers, strict=True))]
            paths += [(g.source, list(g.route), g) for layer in self.layers for g in layer.input_groups]
            self._routed_fan = []
            for m, modules, synapses in paths:
                cut = next((i for i, module in enumerate(modules) if isinstance(module, MeanTimePool2d)), len(modules))
                routed = nn.Sequential(*modules[:cut])
                fan = _through(modules[cut:], synapses, routed(sources[m][:1])).to(sources[m].device)
                self._routed_fan.append((m, routed, fan))
        b = record.boundaries
        for m, source in enumerate(sources):
            self.synops[m] += int(((source < b[m + 1]) * self._unit_fan[m]).sum())
        for m, routed, fan in self._routed_fan:
            # silent = t_max of the source layer, also after max-pooling and flatten
            self.routed[m] += int(((routed(sources[m]) < b[m + 1]) * fan).sum())

    def add(self, record: SpikeRecord) -> None:
        self.samples += record.logits.shape[0]
        if self.neurons is None:
            self.neurons = [int(n) for n in record.neurons_per_layer().tolist()] if record.times else []
        for n, t in enumerate(record.times):
            self.spikes[n] += int((t < record.t_max(n + 1)).sum())
            self.violations[n] += int((t < record.t_min(n + 1)).sum())
        if self.alpha1 and record.times:
            counts = self.snn.phase1_spikes(record)
            self.phase1 = [a + int(b) for a, b in zip(self.phase1, counts, strict=True)]
        self._count_synops(record)
        if record.group_sources:
            self.early += int(record.early_arrivals().sum())
        self.input_spikes += int((record.input_times < record.boundaries[1]).sum())
        clipped = record.clipped_inputs  # a method (a field in earlier versions of SpikeRecord)
        self.clipped += int(clipped() if callable(clipped) else clipped)

    def result(self, split: str | None = None) -> dict:
        if self.samples == 0:
            raise ValueError("no samples: the batches were empty")
        s = self.samples
        neurons = self.neurons or []
        hidden = sum(neurons)
        input_units = math.prod(self.snn.encoder.in_shape)
        synops, routed = self.synops[1:], self.routed[1:]
        return {
            "split": split,
            "samples": s,
            "hidden_neurons": hidden,
            "neurons_per_layer": list(neurons),
            "spikes": sum(self.spikes),
            "spikes_per_layer": list(self.spikes),
            "spikes_per_neuron": sum(self.spikes) / (s * hidden) if hidden else 0.0,
            "spikes_per_neuron_per_layer": [k / (s * n) for k, n in zip(self.spikes, neurons, strict=True)],
            "causality_violations": sum(self.violations),
            "causality_violations_per_layer": list(self.violations),
            "early_arrivals": self.early,
            "phase1_spikes": sum(self.phase1),
            "phase1_spikes_per_layer": list(self.phase1),
            "clipped_inputs": self.clipped,
            "input_spikes": self.input_spikes,
            "input_spikes_per_unit": self.input_spikes / (s * input_units),
            "synops_total": sum(synops),
            "synops_per_sample": sum(synops) / s,
            "synops_per_layer": [k / s for k in synops],
            "input_synops_total": self.synops[0],
            "input_synops_per_sample": self.synops[0] / s,
            "routed_synops_total": sum(routed),
            "routed_synops_per_sample": sum(routed) / s,
            "routed_synops_per_layer": [k / s for k in routed],
            "routed_input_synops_total": self.routed[0],
            "routed_input_synops_per_sample": self.routed[0] / s,
            "latency": latency(self.snn),
        }


@torch.no_grad()
def spike_statistics(snn: SNN, batches, split: str | None = None) -> dict:
    """Spike counts, causality violations and SynOps of ``snn`` over all samples of ``batches``.

    ``batches``: a tensor of raw inputs, an (inputs, labels) pair, or an iterable of tensors or
    (inputs, labels) pairs (labels are ignored); inputs are moved to the SNN's device and dtype.
    ``split`` is only recorded in the result. Definitions in the module docstring. Returns a dict of
    plain numbers:

    ``split``, ``samples``, ``hidden_neurons`` (per sample), ``neurons_per_layer``, ``spikes`` and
    ``spikes_per_layer`` (totals over all samples), ``spikes_per_neuron`` and
    ``spikes_per_neuron_per_layer``, ``causality_violations`` (+ ``_per_layer``; spikes before their
    window), ``early_arrivals`` (delayed input-group spikes arriving before their receiving layer
    integrates, :meth:`ttfs.SpikeRecord.early_arrivals`; 0 for a chain), ``phase1_spikes`` (+
    ``_per_layer``; alpha1 threshold crossings before t_min, 0 for B1),
    ``clipped_inputs`` (total), ``input_spikes`` (total) and ``input_spikes_per_unit``,
    ``synops_total``, ``synops_per_sample`` and ``synops_per_layer`` (SPEC 6: every spike times the
    fan-out of its neuron; per sample, by source hidden layer), ``input_synops_total`` and
    ``input_synops_per_sample`` (the same for the input spikes), the pool-winner counts
    ``routed_synops_total``, ``routed_synops_per_sample``, ``routed_synops_per_layer``,
    ``routed_input_synops_total`` and ``routed_input_synops_per_sample``, and ``latency``.
    """
    counter = _SpikeCounter(snn)
    ref = snn.deltas
    for z, _ in _iter_batches(batches):
        counter.add(snn.run(_to(z, ref)))
    return counter.result(split)


# -- MACs and energy ---------------------------------------------------------------------------------


def _layer_macs(kind: str, in_shape: Sequence[int], out_units: int, kernel=None, stride=None, padding=None,
                dilation=1, groups: int = 1, include_padding: bool = False) -> int:
    if kind == "linear":
        return math.prod(in_shape) * out_units
    c_in = int(in_shape[0]) // groups
    if include_padding:
        k, _, _, _, out = _conv_geometry(in_shape[1:], kernel, stride, padding, dilation)
        return out_units * c_in * k[0] * k[1] * out[0] * out[1]
    return out_units * c_in * int(conv_tap_counts(in_shape[1:], kernel, stride, padding, dilation).sum())


def _summary(per_layer: list[int]) -> dict:
    return {"per_layer": per_layer, "total": sum(per_layer), "first_layer": per_layer[0] if per_layer else 0}


@torch.no_grad()
def macs(snn: SNN, include_padding: bool = False) -> dict:
    """Multiply-accumulates per sample of the ReLU network equivalent to ``snn``, per neuron layer.

    Returns ``{"per_layer": [...], "total": int, "first_layer": int}`` over neuron layers 1..N (readout
    included). One MAC per synapse (zero-padding taps excluded unless ``include_padding``, which gives
    the conventional C_out·H_out·W_out·C_in·k_h·k_w).
    """
    z = torch.zeros(1, *snn.encoder.in_shape, dtype=snn.deltas.dtype, device=snn.deltas.device)
    record = snn.run(z)
    sources = _sources(record)
    per_layer = []
    for layer, t in zip(snn.neuron_layers, record.layer_inputs, strict=True):
        if isinstance(layer, SpikingConv2d):
            count = _layer_macs("conv", t.shape[1:], layer.out_channels, layer.kernel_size, layer.stride,
                                layer.padding, groups=layer.groups, include_padding=include_padding)
        elif isinstance(layer, SpikingLinear):
            count = _layer_macs("linear", t.shape[1:], layer.out_features)
        else:
            raise TypeError(f"no MAC rule for {type(layer).__name__}")
        for group in layer.input_groups:  # one MAC per synapse of every input group
            shape = group.route(sources[group.source]).shape[1:]
            if group.kind == "conv2d":
                count += _layer_macs("conv", shape, group.weight.shape[0], tuple(group.weight.shape[2:]), group.stride,
                                     group.padding, groups=group.groups, include_padding=include_padding)
            elif group.kind == "dense":
                count += _layer_macs("linear", shape, group.weight.shape[0])
            else:
                count += math.prod(shape)
        per_layer.append(count)
    return _summary(per_layer)


@torch.no_grad()
def relu_macs(model: nn.Module, in_shape: Sequence[int], include_padding: bool = False) -> dict:
    """MACs per sample of every Linear/Conv2d of a torch ReLU network, in call order (see :func:`macs`).

    Runs one zero input of shape (1, *in_shape) through ``model`` (in eval mode) to find the shapes.
    """
    per_layer: list[int] = []

    def hook(module, inputs, _output):
        x = inputs[0]
        if isinstance(module, nn.Linear):
            per_layer.append(_layer_macs("linear", x.shape[1:], module.out_features))
        else:
            per_layer.append(_layer_macs("conv", x.shape[1:], module.out_channels, module.kernel_size,
                                         module.stride, module.padding, module.dilation, module.groups,
                                         include_padding))

    affine = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    handles = [m.register_forward_hook(hook) for m in affine]
    params = list(model.parameters()) + list(model.buffers())
    ref = next((p for p in params if p.is_floating_point()), torch.zeros(()))
    was_training = model.training
    model.eval()
    try:
        model(torch.zeros(1, *in_shape, dtype=ref.dtype, device=ref.device))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return _summary(per_layer)


def energy_estimate(stats: Mapping, macs: Mapping, first_layer_spiking: bool = False,
                    e_synop_pj: float = E_SYNOP_PJ, e_mac_pj: float = E_MAC_PJ) -> dict:
    """Compute energy per sample of the SNN vs its ReLU network (SPEC 6), in picojoules.

    Assumptions: 45 nm CMOS, 32-bit floating point, compute only (no memory access, data movement,
    neuron-state updates, leak or spike routing/control), numbers from Horowitz, "Computing's energy
    problem (and what we can do about it)", ISSCC 2014: a synaptic operation of the SNN is one
    addition, 0.9 pJ; a MAC of the ANN is 4.6 pJ. Every SynOp is one addition of a weight to a
    potential (the B1 neuron's constant-slope phase is free).

    * SNN = 0.9 pJ x SynOps of the hidden layers (``stats["synops_per_sample"]``), plus the first
      layer: if ``first_layer_spiking`` the input is spike-encoded and adds 0.9 pJ x
      ``stats["input_synops_per_sample"]``; otherwise (default, as usual for analog-input images)
      the first layer is a non-spiking MAC layer, 4.6 pJ x ``macs["first_layer"]``. These are the
      SynOps of SPEC 6, every spike times its neuron's fan-out, not the pool-winner
      (``routed_synops``) count: a spike that loses its pool window was still delivered along its
      synapses, and counting only winners would flatter the SNN.
    * ANN = 4.6 pJ x ``macs["total"]`` (all layers, readout included).

    ``stats`` is the dict of :func:`spike_statistics`, ``macs`` that of :func:`macs`. Returns
    ``snn_pj``, ``ann_pj``, ``ratio`` (= snn_pj / ann_pj), ``saving`` (= ann_pj / snn_pj, None if the
    SNN costs 0), ``snn_synops``, ``snn_first_layer_macs``, ``ann_macs``, ``e_synop_pj``,
    ``e_mac_pj``, ``first_layer_spiking``.
    """
    synops = float(stats["synops_per_sample"])
    first_macs = 0
    if first_layer_spiking:
        synops += float(stats["input_synops_per_sample"])
    else:
        first_macs = int(macs["first_layer"])
    snn_pj = e_synop_pj * synops + e_mac_pj * first_macs
    ann_pj = e_mac_pj * int(macs["total"])
    return {
        "snn_pj": float(snn_pj),
        "ann_pj": float(ann_pj),
        "ratio": float(snn_pj / ann_pj) if ann_pj else None,
        "saving": float(ann_pj / snn_pj) if snn_pj else None,
        "snn_synops": synops,
        "snn_first_layer_macs": first_macs,
        "ann_macs": int(macs["total"]),
        "e_synop_pj": float(e_synop_pj),
        "e_mac_pj": float(e_mac_pj),
        "first_layer_spiking": bool(first_layer_spiking),
    }


def latency(snn: SNN) -> float:
    """t_min^(N) - t_min^(0): from the opening of the input window to the readout (in units of tau_c)."""
    return float(snn.latency())


# -- the conversion report ---------------------------------------------------------------------------


@torch.no_grad()
def compare_to_relu(
    relu_model: nn.Module, snn: SNN, batches: Iterable | Tensor, split: str | None = None
) -> dict:
    """Verification report of SPEC 3.4: the SNN against the ReLU network it should equal.

    Both run on every batch (the ReLU network in eval mode, on its own device and dtype; the SNN on
    its own). Returns plain numbers: ``samples``; ``relu_accuracy`` and ``snn_accuracy`` (None unless
    every batch has labels); ``agreement`` (fraction of samples with equal argmax);
    ``max_abs_logit_diff`` = max |logit_SNN - logit_ReLU|; ``relu_logit_scale`` = max |logit_ReLU|;
    ``max_rel_logit_diff`` = their ratio (None if the scale is 0 and the difference is not);
    ``causality_violations`` (+ ``_per_layer``), ``phase1_spikes``, ``spikes_per_neuron`` (+
    ``_per_layer``), ``clipped_inputs``, ``latency`` and ``split``.
    """
    counter = _SpikeCounter(snn)
    params = [p for p in list(relu_model.parameters()) + list(relu_model.buffers()) if p.is_floating_point()]
    relu_ref = params[0] if params else snn.deltas
    samples = agree = relu_correct = snn_correct = 0
    labelled = True
    max_diff = scale = 0.0
    was_training = relu_model.training
    relu_model.eval()
    try:
        for z, y in _iter_batches(batches):
            record = snn.run(_to(z, snn.deltas))
            counter.add(record)
            ref = relu_model(_to(z, relu_ref)).detach().to("cpu", torch.float64)
            out = record.logits.detach().to("cpu", torch.float64)
            if ref.shape != out.shape:
                raise ValueError(
                    f"the ReLU network gives logits {tuple(ref.shape)}, the SNN {tuple(out.shape)}"
                )
            samples += out.shape[0]
            agree += int((out.argmax(1) == ref.argmax(1)).sum())
            if out.numel():
                max_diff = max(max_diff, float((out - ref).abs().max()))
                scale = max(scale, float(ref.abs().max()))
            if y is None:
                labelled = False
            else:
                y = y.to("cpu")
                relu_correct += int((ref.argmax(1) == y).sum())
                snn_correct += int((out.argmax(1) == y).sum())
    finally:
        relu_model.train(was_training)
    stats = counter.result(split)
    if scale > 0:
        rel = max_diff / scale
    else:
        rel = 0.0 if max_diff == 0 else None
    return {
        "split": split,
        "samples": samples,
        "relu_accuracy": relu_correct / samples if labelled else None,
        "snn_accuracy": snn_correct / samples if labelled else None,
        "agreement": agree / samples,
        "max_abs_logit_diff": max_diff,
        "relu_logit_scale": scale,
        "max_rel_logit_diff": rel,
        "causality_violations": stats["causality_violations"],
        "causality_violations_per_layer": stats["causality_violations_per_layer"],
        "early_arrivals": stats["early_arrivals"],
        "phase1_spikes": stats["phase1_spikes"],
        "spikes_per_neuron": stats["spikes_per_neuron"],
        "spikes_per_neuron_per_layer": stats["spikes_per_neuron_per_layer"],
        "clipped_inputs": stats["clipped_inputs"],
        "latency": stats["latency"],
    }
