"""The SNN container: an input encoder, a chain of layers, and the chained coding windows (SPEC 2.1)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import InputEncoder, MinTimePool2d, SpikingNeurons


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
    # (receiving neuron layer n, source layer m) of every delayed input group (residual networks)
    group_sources: tuple[tuple[int, int], ...] = ()

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

    def early_arrivals(self) -> Tensor:
        """Per neuron layer 1..N: delayed group spikes arriving before the layer integrates (0 when exact).

        A spike of layer m reaches layer n at t + t_min^(n) - t_max^(m); it is early if that is before
        t_min^(n-1), i.e. if its activation exceeds the width Delta^(n-1) of the window it lands in
        (the window rule of SPEC 2.8 takes every input entering a window into account). Chain layers: 0.
        """
        counts = [torch.zeros((), dtype=torch.long, device=self.boundaries.device) for _ in range(len(self.times) + 1)]
        sources = [self.input_times, *self.times]
        b = self.boundaries
        for n, m in self.group_sources:
            x = b[m + 1] - sources[m]
            counts[n - 1] = counts[n - 1] + (x > b[n] - b[n - 1]).sum()  # wider than the window it lands in
        return torch.stack(counts)


@dataclass
class LeanStep:
    """What :meth:`SNN.forward_train` returns: logits and the hidden activations (if asked for)."""

    logits: Tensor
    activations: list[Tensor]

    def l1(self) -> Tensor:
        """Sum of |x| over hidden activations, averaged over the batch (as :meth:`SpikeRecord.l1`)."""
        return sum(x.sum() for x in self.activations) / self.logits.shape[0]


class _Edges:
    """Cached window boundaries of an SNN: the tensor, its elements (views) and the widths (views of deltas).

    Valid while ``deltas``/``t_start`` are the same tensors at the same version. :meth:`update` re-chains
    the boundaries in place after the adaptive rule grew the windows, so the element views stay valid
    and nothing is re-split; it is only used while the tensor has not been handed out (``shared``).

    On the CPU (float32/float64, ``host``) the hidden windows and t_max are mirrored as Python floats:
    the adaptive rule then first checks on the host whether any window can grow, and only runs the
    tensor update (which decides exactly) when one might.
    """

    __slots__ = ("boundaries", "edges", "widths", "tail", "hidden_t_max", "hidden_deltas", "deltas", "t_start",
                 "keys", "shared", "start_zero", "unit_input", "kappa", "host", "host_deltas", "host_t_max")

    def __init__(self, boundaries: Tensor, deltas: Tensor, t_start: Tensor):
        self.boundaries = boundaries
        self.edges = list(boundaries.unbind())
        self.widths = list(deltas.unbind())
        self.tail = boundaries[1:]
        self.hidden_t_max = boundaries[2:]  # t_max^(n) of the hidden layers n = 1..N-1
        self.hidden_deltas = deltas[1:]
        self.deltas, self.t_start = deltas, t_start
        self.keys = self._keys(deltas, t_start)
        self.shared = False
        self.kappa: tuple[float, Tensor] | None = None
        cpu = deltas.device.type == "cpu" and t_start.device.type == "cpu"
        # Values known without a device sync on the CPU only: an exact 0 start adds nothing, and an
        # input window of exactly 1 makes t_max - 1 * x a plain subtraction (the same rounding).
        self.start_zero = cpu and not bool(t_start)
        self.unit_input = cpu and bool(deltas[0] == 1)
        self.host = cpu and deltas.dtype in (torch.float32, torch.float64)
        self._mirror()

    def _mirror(self) -> None:
        if self.host:
            self.host_deltas = self.hidden_deltas.tolist()
            self.host_t_max = self.hidden_t_max.tolist()

    @staticmethod
    def _keys(deltas: Tensor, t_start: Tensor) -> tuple:
        return deltas._version, t_start._version, deltas.data_ptr(), t_start.data_ptr()

    def valid(self, deltas: Tensor, t_start: Tensor) -> bool:
        return (deltas is self.deltas and t_start is self.t_start
                and (deltas._version, t_start._version, deltas.data_ptr(), t_start.data_ptr()) == self.keys)

    def kappa_tensor(self, kappa: float) -> Tensor:
        """kappa as a 0-d tensor of the windows' dtype and device (a Python scalar costs a conversion per op)."""
        if self.kappa is None or self.kappa[0] != kappa:
            self.kappa = (kappa, torch.tensor(kappa, dtype=self.deltas.dtype, device=self.deltas.device))
        return self.kappa[1]

    def update(self) -> None:
        """boundaries = t_start + [0, cumsum(deltas)], written into the cached tensor (as SNN.boundaries)."""
        torch.cumsum(self.deltas, 0, out=self.tail)
        if not self.start_zero:
            self.tail.add_(self.t_start)
        self.keys = self._keys(self.deltas, self.t_start)
        self._mirror()


_HOST_MARGIN = 1.0 - 1e-6  # see SNN._grow_windows_host


def _latest(t: Tensor) -> Tensor:
    """The earliest spike of an empty slice (a data-parallel process without samples): +inf, no growth."""
    return torch.full((), float("inf"), dtype=t.dtype, device=t.device)


class _Plan:
    """The layer list read once for the lean step: (module, role, pool) per step.

    role 0 = no neurons (flatten, a pool not fused), 1 = hidden neuron layer, 2 = readout. ``pool`` is a
    :class:`MinTimePool2d` without sign flips that directly follows a hidden layer: it is fused into that
    layer's step (pooling the activations, see :meth:`SNN.forward_train`) and has no entry of its own.
    """

    __slots__ = ("modules", "steps", "b1")

    def __init__(self, modules: tuple[nn.Module, ...]):
        last = len(modules) - 1
        steps: list[tuple[nn.Module, int, MinTimePool2d | None]] = []
        skip = False
        for i, m in enumerate(modules):
            if skip:
                skip = False
                continue
            if not isinstance(m, SpikingNeurons):
                steps.append((m, 0, None))
            elif i == last:
                steps.append((m, 2, None))
            else:
                after = modules[i + 1]
                pool = after if isinstance(after, MinTimePool2d) and after.sign is None else None
                steps.append((m, 1, pool))
                skip = pool is not None
        self.modules = modules
        self.steps = tuple(steps)
        self.b1 = modules[-1].parameterisation == "b1"


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
        # Data-parallel training (ttfs.distributed.Replicas): reduces the per-layer earliest spike times
        # over the processes (MIN) before the adaptive window rule; None = one process.
        self.window_reduction: Callable[[Tensor], Tensor] | None = None
        self._edges: _Edges | None = None
        self._plan: _Plan | None = None

    def __getstate__(self):
        state = super().__getstate__()
        state["_edges"] = state["_plan"] = None  # caches: rebuilt on use (a copy gets its own)
        state["window_reduction"] = None  # belongs to a running process group, not to the network
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        self.__dict__.pop("_edges_key", None)  # the cache key of older versions
        self.__dict__.setdefault("window_reduction", None)
        self._edges = self._plan = None

    @property
    def neuron_layers(self) -> list[SpikingNeurons]:
        return [m for m in self.layers if isinstance(m, SpikingNeurons)]

    @property
    def parameterisation(self) -> str:
        return self.layers[-1].parameterisation  # the readout; all neuron layers share it

    def boundaries(self) -> Tensor:
        """t_min^(0), t_min^(1) = t_max^(0), ..., t_min^(N) = t_max^(N-1) (the readout time)."""
        return self.t_start + F.pad(self.deltas.cumsum(0), (1, 0))

    def _window_edges(self, share: bool = True) -> tuple[Tensor, list[Tensor], list[Tensor]]:
        """boundaries(), its elements and the window widths, recomputed only when the windows change.

        A training step reads every edge several times; in-place changes of ``deltas``/``t_start``
        bump their version counters, which invalidates the cache (a few attribute reads per call).
        ``share`` marks the boundaries tensor as handed out (to a :class:`SpikeRecord`): the adaptive
        window update then replaces it instead of updating it in place.
        """
        e = self._current_edges()
        if share:
            e.shared = True
        return e.boundaries, e.edges, e.widths

    def _current_edges(self) -> _Edges:
        deltas, t_start = self.deltas, self.t_start
        e = self._edges
        if e is None or not e.valid(deltas, t_start):
            e = self._edges = _Edges(self.boundaries(), deltas, t_start)
        return e

    def _layer_plan(self) -> _Plan:
        """The cached :class:`_Plan`, rebuilt if the layer list was changed."""
        modules = tuple(self.layers._modules.values())
        plan = self._plan
        if plan is None or plan.modules != modules:  # tuple comparison of modules is by identity
            plan = self._plan = _Plan(modules)
        return plan

    @property
    def residual(self) -> bool:
        """Whether some neuron layer has delayed input groups (skip connections)."""
        return any(layer.input_groups for layer in self.neuron_layers)

    def window_sources(self) -> list[list[int]]:
        """Per hidden window n = 1..N-1: the layers whose spikes enter it (the window rule, SPEC 2.8).

        Window n holds the spikes of layer n and, delayed, those of every source of an input group of
        layer n + 1 (they arrive in n + 1's integration window [t_min^(n), t_max^(n))); each must fit:
        Delta^(n) >= x. Source 0 is the input encoding. A chain network has [[1], [2], ...].
        """
        layers = self.neuron_layers
        return [sorted({n, *(g.source for g in layers[n].input_groups)}) for n in range(1, len(layers))]

    @property
    def lean(self) -> bool:
        """Whether the lean training step (:meth:`forward_train`) applies: B1 without hardware constraints.

        A residual network (input groups) takes the general path (:meth:`run`).
        """
        return self.spike_constraints is None and self._layer_plan().b1 and not self.residual

    def latency(self) -> Tensor:
        """t_min^(N) - t_min^(0): time from the first input spike window to the readout."""
        return self.deltas.sum()

    def encode(self, z: Tensor) -> Tensor:
        _, edges, widths = self._window_edges(share=False)
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
        sources = [t0]  # spike times of layers 0..n-1, read by input groups
        group_sources: list[tuple[int, int]] = []
        for i, layer in enumerate(self.layers):
            if not isinstance(layer, SpikingNeurons):
                t = layer(t)
                continue
            inputs.append(t)
            extra = None
            for group in layer.input_groups:
                part = group(sources[group.source], b[group.source + 1])
                extra = part if extra is None else extra + part
                group_sources.append((n, group.source))
            if i == last:
                logits = layer.readout(t, b[n - 1], b[n], extra)
                return SpikeRecord(logits, t0, times, inputs, boundaries, group_sources=tuple(group_sources))
            t = layer(t, b[n - 1], b[n], b[n + 1], extra)
            if constrain is not None:
                t = constrain(t, b[n], b[n + 1])
            times.append(t)
            sources.append(t)
            n += 1
        raise AssertionError("unreachable: the constructor checks the readout is last")

    def forward(self, z: Tensor) -> Tensor:
        return self.run(z).logits

    def forward_train(self, z: Tensor, activations: bool = False, kappa: float | None = None) -> LeanStep:
        """The lean B1 training forward: logits and (optionally) the hidden activations.

        Computes what :meth:`run` computes for a B1 network without constraints, the same numbers bit
        for bit (logits, spike times of every layer's input), without the per-call bookkeeping: no
        :class:`SpikeRecord`, no finiteness check of the inputs (the caller checks them on the device,
        see :func:`ttfs.train.train_epoch`), the layer plan and the window edges cached.

        A min-time pool after a hidden layer takes the earliest spike, min_i (t_max - y_i), which is
        t_max - max_i y_i exactly (rounding is monotone): the pool is applied to the activations y and
        the layer's spike times are formed after pooling, saving two full-size operations per pool
        forward and backward. (Where several inputs of a pool tie, the gradient goes to the largest y,
        as in the ReLU network.)

        ``activations`` returns x^(n) = t_max^(n) - t^(n) of every hidden layer (the L1 penalty).
        ``kappa`` applies the adaptive window rule of SPEC 2.8 (:meth:`adapt_windows`) to this pass's
        spike times right away: the windows then are what ``adapt_windows`` after the optimiser step
        would make them (the optimiser does not touch the windows, the backward pass does not read
        them). Use :meth:`run` for anything else (alpha1, constraints, statistics, spike times).
        """
        plan = self._layer_plan()
        if self.spike_constraints is not None or not plan.b1:
            raise ValueError("forward_train is the unconstrained B1 step; use run() for alpha1 or constraints")
        e = self._current_edges()
        b = e.edges
        encoder = self.encoder
        encoder.check_shape(z)
        if e.unit_input:  # t_max - 1 * x, the same rounding as addcmul
            t = torch.sub(b[1], encoder.scaled(z))
        else:
            t = torch.addcmul(b[1], encoder.scaled(z), e.widths[0], value=-1)
        acts: list[Tensor] = []
        earliest: list = []  # per hidden layer: min spike time (a float on the CPU, else a 0-d tensor)
        adapt = kappa is not None
        reduce = self.window_reduction
        host = e.host and reduce is None
        pending: Tensor | None = None  # the last hidden layer's spike times, its activation still to be taken
        n = 1
        for layer, role, pool in plan.steps:
            if role == 0:
                if pending is not None:
                    acts.append(b[n] - pending)
                    pending = None
                t = layer(t)
                continue
            x = b[n] - t  # t_min - t_in
            if pending is not None:
                acts.append(x)  # t_max^(n-1) - t^(n-1): the previous layer's activation, already computed
                pending = None
            if role == 2:
                if adapt and earliest:
                    if reduce is not None:
                        self._grow_windows(e, [reduce(torch.stack(earliest))], e.hidden_t_max, kappa)
                    elif host:
                        self._grow_windows_host(e, earliest, kappa)
                    else:
                        self._grow_windows(e, earliest, e.hidden_t_max, kappa)
                return LeanStep(layer.affine(x), acts)
            y = F.relu(layer.affine(x))
            t_max = b[n + 1]
            if pool is None:
                t = t_max - y  # t_max - ReLU(Wx + D): SpikingNeurons.forward for B1
                if adapt:
                    m = t.detach().amin() if reduce is None or t.numel() else _latest(t)
                    earliest.append(m.item() if host else m)
                if activations:
                    pending = t
            else:
                t = t_max - F.max_pool2d(y, pool.kernel_size, pool.stride, pool.padding)  # == pool(t_max - y)
                if adapt:  # min(t_max - y) = t_max - max(y); the pooled times hold it if the pool covers y
                    covers = pool.stride == pool.kernel_size and pool.padding == (0, 0) \
                        and y.shape[-2] % pool.kernel_size[0] == 0 \
                        and y.shape[-1] % pool.kernel_size[1] == 0
                    m = (t.detach().amin() if covers else t_max - y.detach().amax()) if reduce is None or t.numel() \
                        else _latest(t)
                    earliest.append(m.item() if host else m)
                if activations:
                    acts.append(t_max - (t_max - y))
            n += 1
        raise AssertionError("unreachable: the constructor checks the readout is last")

    def adapt_windows(self, record: SpikeRecord, kappa: float = 10.0) -> None:
        """SPEC 2.8: Delta^(n) <- max(Delta^(n), kappa * max_batch x^(n)) for every hidden layer.

        The B1 function does not depend on the windows, so this keeps spikes causal without changing
        what the network computes. alpha1 windows enter its function, and windows under hardware
        constraints are set explicitly (SPEC 2.8): both are left alone.

        All layers at once and on the device (no host synchronisation), from the record's spike times
        and windows: max_batch x = t_max - min_batch t exactly (rounding is monotone). Then t_min/t_max
        are re-chained. (The lean training step does this inside :meth:`forward_train`.)
        """
        if self.spike_constraints is not None or not self._layer_plan().b1 or not record.times:
            return
        reduce = self.window_reduction  # data-parallel: the earliest spikes over every process
        if self.residual:  # a window holds every input entering it (window_sources)
            b = record.boundaries
            times = [record.input_times, *record.times]
            earliest = torch.stack([t.detach().amin() if reduce is None or t.numel() else _latest(t) for t in times])
            if reduce is not None:
                earliest = reduce(earliest)
            peaks = b[1:len(times) + 1] - earliest
            need = torch.stack([peaks[list(ms)].amax() for ms in self.window_sources()])
            self._grow_windows(self._current_edges(), [-need], torch.zeros_like(need), kappa)
            return
        earliest = [t.detach().amin() if reduce is None or t.numel() else _latest(t) for t in record.times]
        t_max = record.boundaries[2:len(earliest) + 2]
        if reduce is not None:
            earliest = [reduce(torch.stack(earliest))]
        self._grow_windows(self._current_edges(), earliest, t_max, kappa)

    @classmethod
    def _grow_windows_host(cls, e: _Edges, earliest: list[float], kappa: float) -> None:
        """:meth:`_grow_windows` on the CPU, skipped when no window can grow (the common case).

        kappa * (t_max - earliest) is evaluated in double precision; float32 rounding moves it by
        less than 2.5e-7 of its value, so a value below delta * (1 - 1e-6) cannot grow a float32 or
        float64 window. Anything else (growth, a near tie, NaN) goes to the exact tensor rule.
        """
        for m, t_max, delta in zip(earliest, e.host_t_max, e.host_deltas, strict=True):
            if not (t_max - m) * kappa <= delta * _HOST_MARGIN:
                earliest_t = torch.tensor(earliest, dtype=e.deltas.dtype)
                cls._grow_windows(e, [earliest_t], e.hidden_t_max, kappa)
                return

    @staticmethod
    def _grow_windows(e: _Edges, earliest: list[Tensor], t_max: Tensor, kappa: float) -> None:
        """Delta^(n) <- max(Delta^(n), kappa * (t_max^(n) - earliest^(n))) for the hidden layers, then re-chain."""
        with torch.no_grad():
            first = earliest[0] if len(earliest) == 1 else torch.stack(earliest)
            e.hidden_deltas.clamp_(min=torch.sub(t_max, first).mul_(e.kappa_tensor(kappa)))
            if not e.shared:  # nobody holds the boundaries tensor: re-chain it in place, the views stay valid
                e.update()

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
