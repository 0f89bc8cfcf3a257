"""The epoch loop shared by pretrain (ReLU) and finetune (B1 SNN): checkpointed, resumable, tracked.

A resumed run restores model, optimiser, scheduler and every RNG stream from the checkpoint of the
last finished epoch, so it ends with exactly the metrics of an uninterrupted run with the same seed.

Under torchrun (a process group with more than one process) the same loop trains data-parallel
(:mod:`ttfs.distributed`): every process draws the same global batches (and augments them the same
way), trains on its slice, and takes the one-process step of the global batch; rank 0 alone writes
checkpoints and MLflow metrics. The checkpoint holds only global state (the batch order and
augmentation streams are the global ones), so a run resumes with any number of processes.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import torch
import torch._dynamo  # noqa: F401  (see below)
from torch import nn
from tqdm import tqdm

from ttfs.distributed import Replicas, shard, world
from ttfs.train import TensorBatches, cosine_decay, crop_flip, evaluate, exponential_decay, train_epoch

from . import checkpoint
from .errors import TrainingFailed
from .params import FinetuneParams, PretrainParams
from .tracking import StageRun

# torch._dynamo is imported above, at start-up, rather than lazily by the first optimizer a stage creates:
# a SIGTERM whose KeyboardInterrupt was raised inside that lazy import was lost (a tune worker then ran all
# its trials and exited 0; tests/test_tuning.py::test_sigterm_fails_the_trial_kills_its_run_and_exits_130).
CURVE_COLUMNS = ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr")


def optimizer_for(model: nn.Module, p: PretrainParams | FinetuneParams, steps_per_epoch: int):
    """The optimiser and its schedule: the paper's step decay (x lr_decay every decay_steps steps), or a
    cosine over the run's ``p.epochs * steps_per_epoch`` steps."""
    if p.optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=p.lr, weight_decay=p.weight_decay)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=p.lr, momentum=0.9, nesterov=p.nesterov,
                              weight_decay=p.weight_decay)
    if p.schedule == "cosine":
        return opt, cosine_decay(opt, p.epochs * steps_per_epoch)
    return opt, exponential_decay(opt, p.lr_decay, p.decay_steps)


class Augmented:
    """Training batches passed through :func:`crop_flip` (shifts of up to ``pad`` pixels) with their own
    seeded generator."""

    def __init__(self, batches: TensorBatches, seed: int, pad: int):
        self.batches = self.iterable = batches  # (``iterable``: found by ttfs.train's input check)
        self.generator = torch.Generator().manual_seed(seed + 1)
        self.pad = pad

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        for x, y in self.batches:
            yield crop_flip(x, self.generator, self.pad), y


def fit(
    model: nn.Module,
    train: TensorBatches,
    val: TensorBatches,
    p: PretrainParams | FinetuneParams,
    ckpt_path: Path,
    state: dict | None,
    run: StageRun,
    desc: str,
    seed: int = 0,
) -> list[dict]:
    """Train for ``p.epochs`` epochs from ``state`` (a loaded checkpoint) or from scratch; returns the curve.

    ``seed`` seeds the augmentation stream (if ``p.augment`` asks for one). After every epoch the validation
    metrics go to MLflow and a checkpoint is written. DivergenceError from
    :func:`ttfs.train.train_epoch` propagates; the previous epoch's checkpoint stays in place.
    """
    opt, scheduler = optimizer_for(model, p, len(train))
    augmented = Augmented(train, seed, p.crop_padding) if p.augment == "crop_flip" else None
    generators = {"batches": train.generator} | ({"augment": augmented.generator} if augmented else {})
    history: list[dict] = []
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        checkpoint.restore_rng(state["rng"], generators)
        history = state["history"]
        print(f"{desc}: resuming after epoch {len(history)} from {ckpt_path}", file=sys.stderr)
        if not run.resumed:  # the checkpoint's run is gone (other tracking store): replay its curve
            for row in history:
                run.log_metrics(_metrics(row), step=row["epoch"])
    kwargs = {"l1": p.l1, "nonpositive_bias": p.nonpositive_bias}
    if isinstance(p, FinetuneParams):
        kwargs |= {"kappa": p.kappa, "adapt_windows": p.adapt_windows}
    rank, world_size = world()
    replicas = Replicas(model) if world_size > 1 and len(history) < p.epochs else None
    try:
        for epoch in range(len(history) + 1, p.epochs + 1):
            source = augmented or train
            if replicas is not None and not getattr(train, "sharded", False):  # (streamed: loads its slice)
                source = shard(source, replicas)
            batches = tqdm(source, total=len(train), desc=f"{desc} epoch {epoch}/{p.epochs}", unit="batch",
                           mininterval=2.0, leave=False, file=sys.stderr, disable=rank != 0)
            stats = train_epoch(model, batches, opt, scheduler=scheduler, replicas=replicas, **kwargs)
            _finish_epoch(model, val, p, epoch, stats, opt, scheduler, generators, history, ckpt_path, run, desc,
                          int(train.labels.max()) + 1, rank, replicas)
    finally:
        if replicas is not None:
            replicas.close()
    return history


def _finish_epoch(model, val, p, epoch: int, stats: dict, opt, scheduler, generators, history: list[dict],
                  ckpt_path: Path, run: StageRun, desc: str, classes: int, rank: int,
                  replicas: Replicas | None) -> None:
    """Validation, metrics, learning check and checkpoint after one epoch (identical on every rank;
    data-parallel: each rank validates its slice of every batch, the sums are reduced)."""
    if not len(val.labels):
        val_stats = {"loss": None, "accuracy": None}
    elif replicas is None:
        val_stats = evaluate(model, val)
    else:
        own = val.slice(replicas.rank, replicas.world) if hasattr(val, "slice") else shard(val, replicas)
        val_stats = evaluate(model, own, replicas)
    row = {"epoch": epoch, "train_loss": stats["loss"], "train_accuracy": stats["accuracy"],
           "val_loss": val_stats["loss"], "val_accuracy": val_stats["accuracy"],
           "lr": opt.param_groups[0]["lr"]}
    run.log_metrics(_metrics(row), step=epoch)
    check_learning(row, p, classes, desc)
    history.append(row)
    if rank == 0:
        print(f"{desc} epoch {epoch}/{p.epochs}: train loss {row['train_loss']:.4f} "
              f"acc {row['train_accuracy']:.4f}"
              + (f" | val loss {row['val_loss']:.4f} acc {row['val_accuracy']:.4f}" if row["val_loss"] is not None
                 else ""), file=sys.stderr, flush=True)
    checkpoint.save(ckpt_path, {  # rank 0 only
        "model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": scheduler.state_dict(),
        "rng": checkpoint.rng_state(generators), "history": history, "run_id": run.run_id,
    })


def check_learning(row: dict, p: PretrainParams | FinetuneParams, classes: int, desc: str) -> None:
    """Fail a run that is not learning, before its checkpoint replaces the last good one."""
    limit = p.max_loss_factor * math.log(classes)
    if row["train_loss"] > limit:
        raise TrainingFailed(
            f"{desc}: training loss {row['train_loss']:.4g} in epoch {row['epoch']} is above {limit:.4g} "
            f"(max_loss_factor {p.max_loss_factor:g} x ln {classes} classes): the run diverged; lower the learning "
            "rate (the previous outputs and checkpoint are kept)")
    chance = 1 / classes
    if p.chance_margin is not None and row["epoch"] >= p.chance_epochs and \
            row["train_accuracy"] <= chance + p.chance_margin:
        raise TrainingFailed(
            f"{desc}: training accuracy {row['train_accuracy']:.4f} after epoch {row['epoch']} is at chance "
            f"({chance:.4f} + chance_margin {p.chance_margin:g}): the run is not learning; check the learning rate "
            "and the data (the previous outputs and checkpoint are kept)")


#: MLflow names of the per-epoch training numbers: the running mean over the epoch's batches while the
#: weights change, not the trained network on the training split (``final.train_accuracy``, the report's
#: "train accuracy"); one name, one meaning.
RUNNING = {"train_loss": "running_train_loss", "train_accuracy": "running_train_accuracy"}


def _metrics(row: dict) -> dict:
    return {(RUNNING[k] if k in RUNNING else k): v for k, v in row.items() if k != "epoch"}
