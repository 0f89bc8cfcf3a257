"""Data-parallel training over several processes (torchrun / DistributedDataParallel) that stays exact.

N processes with a global batch of B samples take the same optimiser steps as one process with batch B:

- every process iterates the same global batches in the same order (the same seeded permutation) and
  trains on its slice of each (:func:`shard`: ``torch.tensor_split``, slices differ by at most one
  sample, a slice may be empty when a batch has fewer samples than processes);
- the loss of a slice is its *sum* times N / B_global, so DDP's averaging over the N processes yields
  the global batch mean exactly, whatever the slice sizes (the cross-entropy and the L1 penalty; a mean
  over the local slice averaged over processes is the global mean only for equal slices);
- the adaptive windows of SPEC 2.8 grow from the earliest spike of the *global* batch: each process's
  per-layer earliest spike times are all-reduced with MIN before the rule is applied
  (max_batch x = t_max - min_batch t, and t_max is the same on every replica), so the windows, and with
  them every rounding that depends on them, stay identical on all replicas;
- the hidden-bias projection (b <= 0) depends on the parameters only, which DDP keeps identical.

What stays rank-dependent: dropout masks (drawn per slice) and batch-norm statistics in training mode
(per slice on the CPU; :class:`torch.nn.SyncBatchNorm` on CUDA computes them over the global batch).

    group = Replicas(model)                      # after torch.distributed.init_process_group
    train_epoch(model, shard(batches, group), optimizer, replicas=group)
    group.close()

Nothing here runs when training is a single process: :func:`ttfs.train.train_epoch` without
``replicas`` is the plain loop.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from .network import SNN


def world() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) when no process group is initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def launched() -> bool:
    """Whether this process was started by torchrun (or another launcher setting WORLD_SIZE > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def init(device: torch.device | str | None = None) -> bool:
    """Join the process group torchrun describes (env:// rendezvous); False when not launched by it.

    The backend follows the device: NCCL for CUDA, gloo for the CPU.
    """
    if not launched():
        return False
    if dist.is_initialized():
        return True
    device = torch.device(device or "cpu")
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend)
    return True


def leave() -> None:
    """Leave the process group :func:`init` joined (at the end of a torchrun process)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def shard(batches: Iterable[tuple[Tensor, Tensor]], rank: int | Replicas, world_size: int | None = None
          ) -> Iterator[tuple[Tensor, Tensor]]:
    """This process's slice of each global batch (``torch.tensor_split`` into ``world_size`` parts).

    Every process must iterate the same global batches in the same order (same seed).
    """
    if isinstance(rank, Replicas):
        rank, world_size = rank.rank, rank.world
    return _Sharded(batches, rank, world_size)


class _Sharded:
    def __init__(self, batches, rank: int, world_size: int):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside a world of {world_size} processes")
        self.iterable, self.rank, self.world = batches, rank, world_size

    def __len__(self) -> int:
        return len(self.iterable)

    def __iter__(self):
        for x, y in self.iterable:
            yield x.tensor_split(self.world)[self.rank], y.tensor_split(self.world)[self.rank]


class _Step(nn.Module):
    """The training forward that DDP wraps: the model's loss on a slice, scaled for the global mean."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, z: Tensor, y: Tensor, scale: Tensor, l1: float, kappa: float | None, lean: bool):
        from .train import forward_with_activations  # (ttfs.train imports this module lazily)

        model = self.model
        record = None
        if isinstance(model, SNN) and lean:
            step = model.forward_train(z, activations=bool(l1), kappa=kappa)
            logits, acts = step.logits, step.activations
        elif isinstance(model, SNN):
            record = model.run(z)
            logits = record.logits
            acts = record.activations() if l1 else []
        else:
            out = forward_with_activations(model, z, need_activations=bool(l1))
            logits, acts = out.logits, out.activations
        total = F.cross_entropy(logits, y, reduction="sum")
        if l1:
            total = total + l1 * sum(a.sum() for a in acts)
        return total * scale, total.detach(), logits, record


class Replicas:
    """This process's replica of ``model`` in the data-parallel group (see the module docstring).

    Wraps the training forward in :class:`torch.nn.parallel.DistributedDataParallel` (gradients averaged
    over the processes during the backward pass) and makes an SNN's adaptive windows follow the global
    batch. Parameters and buffers are broadcast from rank 0 once, here. :meth:`close` undoes the window
    hook.
    """

    def __init__(self, model: nn.Module):
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError("Replicas need an initialised process group: start the run with torchrun "
                               "(or call torch.distributed.init_process_group first)")
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.model = model
        self.device = next(model.parameters()).device
        has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
        if has_bn and self.device.type == "cuda":
            self.model = model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        ids = [self.device.index] if self.device.type == "cuda" else None
        # An SNN's windows are buffers kept equal by the MIN reduction; batch-norm running statistics
        # on the CPU are per slice and follow rank 0.
        self.ddp = nn.parallel.DistributedDataParallel(_Step(model), device_ids=ids,
                                                       forward_sync_buffers=has_bn and self.device.type != "cuda")
        if isinstance(model, SNN):
            model.window_reduction = self.min

    def close(self) -> None:
        if isinstance(self.model, SNN):
            self.model.window_reduction = None

    def min(self, t: Tensor) -> Tensor:
        """Element-wise minimum over the processes (in place on a copy)."""
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return t

    def sum(self, t: Tensor) -> Tensor:
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def step(self, z: Tensor, y: Tensor, l1: float, kappa: float | None, lean: bool):
        """(loss to backpropagate, local loss sum, logits, SpikeRecord or None) of one slice.

        The global batch size, and where this slice starts in it, come from one all-gather of the slice
        sizes; an SNN's spike-time constraints draw their jitter for the global batch and keep this
        slice's part (:class:`ttfs.constraints.SpikeTimeConstraints`).
        """
        gathered = [torch.zeros(1, dtype=torch.int64, device=self.device) for _ in range(self.world)]
        dist.all_gather(gathered, torch.tensor([len(y)], dtype=torch.int64, device=self.device))
        sizes = torch.cat(gathered)
        dtype = z.dtype if z.is_floating_point() else torch.get_default_dtype()
        scale = (self.world / sizes.sum().to(torch.float64)).to(dtype)  # on the device: no host sync
        constraints = getattr(self.model, "spike_constraints", None)
        if constraints is not None:  # the slice's place in the global batch: host ints, read only here
            counts = sizes.tolist()
            start = sum(counts[:self.rank])
            constraints.batch_slice = (start, start + len(y), sum(counts))
        try:
            return self.ddp(z, y, scale, l1, kappa, lean)
        finally:
            if constraints is not None:
                constraints.batch_slice = None


__all__ = ["Replicas", "init", "launched", "leave", "local_rank", "shard", "world"]
