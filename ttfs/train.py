"""Exact-gradient training of ReLU networks and TTFS networks with one set of plain functions.

Gradients of an SNN flow through its closed-form spike times (no surrogate); silent neurons get zero
gradient. For B1 this is gradient descent on the ReLU network itself, step for step.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .constraints import clamp_hidden_biases
from .layers import NONFINITE_INPUT
from .network import SNN

if TYPE_CHECKING:
    from .distributed import Replicas


class DivergenceError(RuntimeError):
    """The training loss became NaN or infinite."""


@dataclass
class StepOutput:
    logits: Tensor
    activations: list[Tensor]


def forward_with_activations(model: nn.Module, z: Tensor, need_activations: bool = True) -> StepOutput:
    """Logits and hidden activations (x = t_max - t for an SNN, ReLU outputs for a ReLU network)."""
    if isinstance(model, SNN):
        record = model.run(z)
        return StepOutput(record.logits, record.activations() if need_activations else [])
    if not need_activations:
        return StepOutput(model(z), [])
    activations: list[Tensor] = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: activations.append(out))
             for m in model.modules() if isinstance(m, nn.ReLU)]
    try:
        logits = model(z)
    finally:
        for h in hooks:
            h.remove()
    return StepOutput(logits, activations)


class TensorBatches:
    """Mini-batches from in-memory tensors, shuffled by a seeded generator, moved to ``device``.

    Iterating twice gives two different shuffles; the generator state (``generator.get_state()``) is all
    a checkpoint needs to resume the same sequence.
    """

    def __init__(self, inputs: Tensor, labels: Tensor, batch_size: int, shuffle: bool = True, seed: int = 0,
                 device: torch.device | str = "cpu", dtype: torch.dtype | None = None):
        if len(inputs) != len(labels):
            raise ValueError(f"{len(inputs)} inputs but {len(labels)} labels")
        self.inputs, self.labels = inputs, labels
        self.batch_size, self.shuffle = int(batch_size), shuffle
        self.device, self.dtype = torch.device(device), dtype
        self.generator = torch.Generator().manual_seed(seed)
        self._finite: tuple | None = None  # (data_ptr, version) of the inputs last found finite

    def check_finite(self) -> None:
        """Raise ValueError if the inputs hold NaN or inf: one pass, repeated only after the inputs changed."""
        key = (self.inputs.data_ptr(), self.inputs._version)
        if self._finite != key:
            if self.inputs.is_floating_point() and not bool(torch.isfinite(self.inputs).all()):
                raise ValueError(NONFINITE_INPUT)
            self._finite = key

    def __len__(self) -> int:
        return -(-len(self.inputs) // self.batch_size)

    def __iter__(self):
        n = len(self.inputs)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        inputs = self.inputs.to(self.device, self.dtype or self.inputs.dtype)
        labels = self.labels.to(self.device)
        for idx in order.to(self.device).split(self.batch_size):
            yield inputs[idx], labels[idx]


def _tensor_batches(batches) -> TensorBatches | None:
    """The TensorBatches behind ``batches``, seen through progress bars (tqdm's ``iterable``); else None."""
    for _ in range(4):
        if isinstance(batches, TensorBatches):
            return batches
        batches = getattr(batches, "iterable", None)
    return None


def crop_flip(x: Tensor, generator: torch.Generator, pad: int = 4) -> Tensor:
    """Random shifts of up to ``pad`` pixels (zero fill) and horizontal flips, one draw per sample."""
    n, _, h, w = x.shape
    offsets = torch.randint(0, 2 * pad + 1, (2, n), generator=generator).to(x.device)
    flip = (torch.rand(n, generator=generator) < 0.5).to(x.device)
    rows = offsets[0, :, None] + torch.arange(h, device=x.device)
    cols = offsets[1, :, None] + torch.arange(w, device=x.device)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    padded = F.pad(x, (pad, pad, pad, pad))
    return padded[torch.arange(n, device=x.device)[:, None, None], :, rows[:, :, None], cols[:, None, :]].permute(
        0, 3, 1, 2)


def l1_penalty(activations: list[Tensor]) -> Tensor:
    """sum |x| over hidden activations, averaged over the batch (activations are >= 0)."""
    batch = activations[0].shape[0]
    return sum(x.sum() for x in activations) / batch


def train_epoch(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    optimizer: torch.optim.Optimizer,
    *,
    l1: float = 0.0,
    kappa: float = 10.0,
    adapt_windows: bool = True,
    nonpositive_bias: bool = False,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    lean: bool = True,
    replicas: Replicas | None = None,
) -> dict[str, float]:
    """One pass over ``batches``; returns mean loss and accuracy. Raises DivergenceError on NaN/inf.

    For an SNN the windows follow the adaptive rule of SPEC 2.8 after every optimiser step.
    ``nonpositive_bias`` projects hidden biases onto b <= 0 after every step
    (:func:`ttfs.constraints.clamp_hidden_biases`).

    A B1 SNN without hardware constraints takes the lean step (:meth:`ttfs.SNN.forward_train`, the same
    numbers as :meth:`ttfs.SNN.run`) with no per-step host synchronisation. Its inputs are checked for
    NaN/inf (a ValueError, as :meth:`ttfs.SNN.run` raises) once, before the epoch, when ``batches`` is a
    :class:`TensorBatches` (possibly in a tqdm progress bar); other iterables are checked on the device
    batch by batch and a bad batch raises at the end of the epoch.
    ``lean=False`` takes the general path (a :class:`ttfs.SpikeRecord` per step). Loss and accuracy
    (and the inputs' check) are kept on the device and reduced once per epoch, for every model.

    ``replicas`` (:class:`ttfs.distributed.Replicas`) trains one process of a data-parallel group:
    ``batches`` are then this process's slices of the global batches (:func:`ttfs.distributed.shard`),
    the step is the global batch's step (see :mod:`ttfs.distributed`) and the returned loss and
    accuracy are those of the whole epoch over all processes.
    """
    if replicas is not None:
        return _train_epoch_replicated(model, batches, optimizer, replicas, l1=l1, kappa=kappa,
                                       adapt_windows=adapt_windows, nonpositive_bias=nonpositive_bias,
                                       scheduler=scheduler, lean=lean)
    model.train()
    is_snn = isinstance(model, SNN)
    use_lean = lean and is_snn and model.lean
    adapt = is_snn and adapt_windows
    # Per-step results stay on the model's device and are reduced once per epoch: no host sync per step.
    losses: list[Tensor] = []
    predictions: list[Tensor] = []
    labels: list[Tensor] = []
    input_sums: list[Tensor] = []
    probe = use_lean
    if use_lean and (source := _tensor_batches(batches)) is not None:
        source.check_finite()
        probe = False
    for z, y in batches:
        if use_lean:
            step = model.forward_train(z, activations=bool(l1), kappa=kappa if adapt else None)
            logits = step.logits
            loss = F.cross_entropy(logits, y)
            if l1:
                loss = loss + l1 * step.l1()
            if probe:
                input_sums.append(z.sum())  # NaN/inf in the inputs make it non-finite
        elif is_snn:
            step = model.run(z)
            logits = step.logits
            loss = F.cross_entropy(logits, y)
            if l1:
                loss = loss + l1 * step.l1()
        else:
            out = forward_with_activations(model, z, need_activations=bool(l1))
            logits = out.logits
            loss = F.cross_entropy(logits, y)
            if l1:
                loss = loss + l1 * l1_penalty(out.activations)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if nonpositive_bias:
            clamp_hidden_biases(model)
        if scheduler is not None:
            scheduler.step()
        if adapt and not use_lean:  # the lean step adapted the windows in its forward pass
            model.adapt_windows(step, kappa)
        losses.append(loss.detach())
        predictions.append(logits.detach().argmax(1))
        labels.append(y)
    if not losses:
        return {"loss": 0.0, "accuracy": 0.0}
    if input_sums and not bool(torch.isfinite(torch.stack(input_sums).sum(dtype=torch.float64))):
        raise ValueError(NONFINITE_INPUT)
    sizes = torch.tensor([len(t) for t in labels], dtype=torch.float64, device=losses[0].device)
    seen = float(sizes.sum())
    mean_loss = float((torch.stack(losses).to(torch.float64) * sizes).sum()) / seen
    correct = int((torch.cat(predictions) == torch.cat(labels).to(predictions[0].device)).sum())
    return _epoch_result(mean_loss, correct / seen)


def _epoch_result(mean_loss: float, accuracy: float) -> dict[str, float]:
    """An epoch's mean loss and accuracy; DivergenceError if the loss is NaN or infinite."""
    if not math.isfinite(mean_loss):
        raise DivergenceError(
            f"training loss became {mean_loss}; lower the learning rate or the L1 strength, or check the data"
        )
    return {"loss": mean_loss, "accuracy": accuracy}


def _train_epoch_replicated(model, batches, optimizer, replicas: Replicas, *, l1, kappa, adapt_windows,
                            nonpositive_bias, scheduler, lean) -> dict[str, float]:
    """:func:`train_epoch` of one data-parallel process (``replicas``)."""
    model.train()
    is_snn = isinstance(model, SNN)
    use_lean = lean and is_snn and model.lean
    adapt = is_snn and adapt_windows
    totals: list[Tensor] = []
    correct: list[Tensor] = []
    seen = 0
    probes: list[Tensor] = []  # streamed inputs: sums, non-finite if an input is; checked after the epoch's reduction
    source = _tensor_batches(batches)
    if source is not None:  # every process holds all inputs: one check, the same answer everywhere
        source.check_finite()
    for z, y in batches:
        if source is None and z.is_floating_point():
            probes.append(z.sum(dtype=torch.float64))
        loss, total, logits, record = replicas.step(z, y, l1, kappa if adapt and use_lean else None, use_lean)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # DDP averages the gradients over the processes
        optimizer.step()
        if nonpositive_bias:
            clamp_hidden_biases(model)
        if scheduler is not None:
            scheduler.step()
        if adapt and not use_lean:
            model.adapt_windows(record, kappa)
        totals.append(total)
        correct.append((logits.detach().argmax(1) == y).sum())
        seen += len(y)
    if not totals:
        return {"loss": 0.0, "accuracy": 0.0}
    device = totals[0].device
    probe = torch.stack(probes).sum() if probes else torch.zeros((), dtype=torch.float64, device=device)
    sums = replicas.sum(torch.stack([torch.stack(totals).to(torch.float64).sum(),
                                     torch.stack(correct).sum().to(torch.float64),
                                     torch.tensor(float(seen), dtype=torch.float64, device=device),
                                     probe.to(device)]))
    if not bool(torch.isfinite(sums[3])):  # every process sees it: all raise the same error
        raise ValueError(NONFINITE_INPUT)
    mean_loss = float(sums[0] / sums[2])
    return _epoch_result(mean_loss, float(sums[1] / sums[2]))


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]],
             replicas: Replicas | None = None) -> dict[str, float]:
    """Mean cross-entropy and accuracy on ``batches`` (eval mode).

    ``replicas``: ``batches`` are this process's slices (:func:`ttfs.distributed.shard`); the sums are
    reduced over the processes, so every process returns the numbers of the whole set.
    """
    was_training = model.training
    model.eval()
    loss_sum, correct, seen = 0.0, 0, 0
    for z, y in batches:
        if not len(y):  # an empty slice
            continue
        logits = model(z)
        loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
        correct += int((logits.argmax(1) == y).sum())
        seen += len(y)
    model.train(was_training)
    if replicas is not None:
        loss_sum, correct, seen = replicas.sum(torch.tensor([loss_sum, correct, seen], dtype=torch.float64,
                                                            device=replicas.device)).tolist()
    return {"loss": loss_sum / max(seen, 1), "accuracy": correct / max(seen, 1)}


def exponential_decay(optimizer: torch.optim.Optimizer, factor: float = 0.9, every: int = 5000):
    """The paper's schedule: multiply the learning rate by ``factor`` every ``every`` steps."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: factor ** (step // every))


def cosine_decay(optimizer: torch.optim.Optimizer, total_steps: int):
    """Cosine annealing from the optimiser's rate to 0 over ``total_steps`` steps (then 0).

    A LambdaLR like :func:`exponential_decay`, so a checkpoint's scheduler state (the step count) resumes
    either schedule.
    """
    total = max(int(total_steps), 1)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total)
                                                                                         / total)))
