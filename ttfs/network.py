"""The SNN container: an input encoder, a chain of layers, and the chained coding windows (SPEC 2.1)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import InputEncoder, SpikingNeurons


@dataclass
class SpikeRecord:
    """Everything one forward pass produced: logits, spike times of every hidden layer, windows.

    Counters are computed from the recorded times on demand, so a training step pays nothing for them.
    """

    logits: Tensor
    input_times: Tensor
    times: list[Tensor]  # spike times of each hidden neuron layer (silent = t_max)
    layer_inputs: list[Tensor]  # spike times arriving at each neuron layer (after pooling/flatten)
    boundaries: Tensor  # t_min^(0), t_min^(1), ..., t_min^(N)
    raw_inputs: Tensor | None = None
    encoder: InputEncoder | None = None

    def clipped_inputs(self) -> int:
        """Input values that fell outside [p, q] and were clipped to the window edge."""
        if self.raw_inputs is None or self.encoder is None:
            return 0
        return int(self.encoder.clipped(self.raw_inputs))

    def t_min(self, n: int) -> Tensor:
        """Start of the window of neuron layer n (1-based, hidden layers 1..N-1)."""
        return self.boundaries[n]

    def t_max(self, n: int) -> Tensor:
        return self.boundaries[n + 1]

    def activations(self) -> list[Tensor]:
        """x^(n) = t_max^(n) - t^(n) of the hidden layers (equal to the ReLU activations for B1)."""
        return [self.t_max(n) - t for n, t in enumerate(self.times, start=1)]

    def spikes_per_layer(self) -> Tensor:
        """Number of spikes emitted by each hidden layer over the batch."""
        return torch.stack([(t < self.t_max(n)).sum() for n, t in enumerate(self.times, start=1)])

    def neurons_per_layer(self) -> Tensor:
        return torch.tensor([t[0].numel() for t in self.times])

    def causality_violations(self) -> Tensor:
        """Spikes of each hidden layer before its own window opens (t < t_min): must be 0 when exact."""
        return torch.stack([(t < self.t_min(n)).sum() for n, t in enumerate(self.times, start=1)])

    def l1(self) -> Tensor:
        """Sum of |x| over hidden activations, averaged over the batch (the L1 sparsity penalty)."""
        batch = self.logits.shape[0]
        return sum(x.sum() for x in self.activations()) / batch


class SNN(nn.Module):
    """A time-to-first-spike network: encoder, spiking layers and a non-spiking readout.

    ``deltas`` holds the window widths Delta^(0) (input) .. Delta^(N-1) (last hidden layer); windows
    chain from ``t_start``. The readout layer N reads its potentials at t_min^(N) = t_max^(N-1).
    Calling the module takes raw inputs (the ReLU network's inputs) and returns logits; :meth:`run`
    returns a :class:`SpikeRecord` as well.
    """

    def __init__(self, encoder: InputEncoder, layers: list[nn.Module], deltas: Tensor, t_start: float = 0.0):
        super().__init__()
        self.encoder = encoder
        self.layers = nn.ModuleList(layers)
        neuron_layers = [m for m in layers if isinstance(m, SpikingNeurons)]
        if not neuron_layers:
            raise ValueError("an SNN needs at least one neuron layer (the readout)")
        if isinstance(layers[-1], SpikingNeurons) is False:
            raise ValueError(f"the last layer must be the readout neuron layer, got {type(layers[-1]).__name__}")
        deltas = torch.as_tensor(deltas)
        if not deltas.is_floating_point():
            deltas = deltas.to(torch.get_default_dtype())
        if deltas.shape != (len(neuron_layers),):
            raise ValueError(
                f"need one window width per input/hidden layer ({len(neuron_layers)}), got {tuple(deltas.shape)}"
            )
        if not bool((deltas > 0).all()):
            raise ValueError(f"window widths must be positive, got {deltas.tolist()}")
        self.register_buffer("deltas", deltas.clone())
        self.register_buffer("t_start", torch.tensor(float(t_start), dtype=deltas.dtype))
        # Optional hardware constraints on emitted spikes (ttfs.constraints); None = exact network.
        self.spike_constraints: nn.Module | None = None
        self._edges_key: tuple | None = None
        self._edges: tuple[Tensor, list[Tensor], list[Tensor]] | None = None

    @property
    def neuron_layers(self) -> list[SpikingNeurons]:
        return [m for m in self.layers if isinstance(m, SpikingNeurons)]

    @property
    def parameterisation(self) -> str:
        return self.layers[-1].parameterisation  # the readout; all neuron layers share it

    def boundaries(self) -> Tensor:
        """t_min^(0), t_min^(1) = t_max^(0), ..., t_min^(N) = t_max^(N-1) (the readout time)."""
        return self.t_start + F.pad(self.deltas.cumsum(0), (1, 0))

    def _window_edges(self) -> tuple[Tensor, list[Tensor], list[Tensor]]:
        """boundaries(), its elements and the window widths, recomputed only when the windows change.

        A training step reads every edge several times; in-place changes of ``deltas``/``t_start``
        bump their version counters, which invalidates the cache.
        """
        key = (self.deltas.data_ptr(), self.deltas._version, self.t_start.data_ptr(), self.t_start._version,
               self.deltas.dtype, self.deltas.device)
        if self._edges_key != key:
            b = self.boundaries()
            self._edges = (b, list(b.unbind()), list(self.deltas.unbind()))
            self._edges_key = key
        return self._edges

    def latency(self) -> Tensor:
        """t_min^(N) - t_min^(0): time from the first input spike window to the readout."""
        return self.deltas.sum()

    def encode(self, z: Tensor) -> Tensor:
        _, edges, widths = self._window_edges()
        return self.encoder(z, edges[1], widths[0])

    def run(self, z: Tensor) -> SpikeRecord:
        """Forward pass from raw inputs, keeping every hidden layer's spike times."""
        t = self.encode(z)
        record = self.propagate(t)
        record.raw_inputs, record.encoder = z, self.encoder
        return record

    def run_times(self, t0: Tensor) -> SpikeRecord:
        """Forward pass from input spike times t0 in [t_min^(0), t_max^(0)] (silent = t_max^(0))."""
        return self.propagate(t0)

    def propagate(self, t0: Tensor) -> SpikeRecord:
        boundaries, b, _ = self._window_edges()
        times: list[Tensor] = []
        inputs: list[Tensor] = []
        constrain = self.spike_constraints
        if constrain is not None:
            t0 = constrain(t0, b[0], b[1])
        n = 1
        t = t0
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            if not isinstance(layer, SpikingNeurons):
                t = layer(t)
                continue
            inputs.append(t)
            if i == last:
                logits = layer.readout(t, b[n - 1], b[n])
                return SpikeRecord(logits, t0, times, inputs, boundaries)
            t = layer(t, b[n - 1], b[n], b[n + 1])
            if constrain is not None:
                t = constrain(t, b[n], b[n + 1])
            times.append(t)
            n += 1
        raise AssertionError("unreachable: the constructor checks the readout is last")

    def forward(self, z: Tensor) -> Tensor:
        return self.run(z).logits

    @torch.no_grad()
    def adapt_windows(self, record: SpikeRecord, kappa: float = 10.0) -> None:
        """SPEC 2.8: Delta^(n) <- max(Delta^(n), kappa * max_batch x^(n)) for every hidden layer.

        The B1 function does not depend on the windows, so this keeps spikes causal without changing
        what the network computes. alpha1 windows enter its function, and windows under hardware
        constraints are set explicitly (SPEC 2.8): both are left alone.
        """
        if self.parameterisation != "b1" or self.spike_constraints is not None:
            return
        b = record.boundaries
        for n, t in enumerate(record.times, start=1):
            # max_batch x = t_max - min_batch t
            self.deltas[n].clamp_(min=(b[n + 1] - t.detach().amin()).mul_(kappa))

    def phase1_spikes(self, record: SpikeRecord) -> Tensor:
        """Per hidden layer, alpha1 neurons whose potential reaches threshold during phase 1 (0 for B1)."""
        b = record.boundaries
        counts = [
            layer.phase1_spikes(t_in, b[n - 1], b[n]).sum()
            for n, (layer, t_in) in enumerate(zip(self.neuron_layers[:-1], record.layer_inputs, strict=False), 1)
        ]
        return torch.stack(counts) if counts else torch.zeros(0, dtype=torch.long)

    def relu_parameters(self) -> list[tuple[Tensor, Tensor]]:
        """(w, b) of the equivalent ReLU network, layer by layer (reverse map, SPEC 2.3)."""
        widths = self.deltas.detach().tolist() + [0.0]
        return [layer.relu_equivalent(widths[n], widths[n + 1]) for n, layer in enumerate(self.neuron_layers)]
