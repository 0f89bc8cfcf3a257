"""One trial: fine-tune the converted SNN with the trial's L1 strength, measure it, tell the study.

Each trial is one nested MLflow run (tags ``optuna_study``, ``optuna_trial``, ``optuna_state``,
``baseline``, ``reference_run_id``), whose id is stored in the trial's ``mlflow_run_id`` user
attribute. The run is closed only after the study was told, with the state the study recorded: a trial
Optuna fails (an exception, a divergence, a NaN objective) leaves its run FAILED, never RUNNING.
Only validation numbers reach the sampler; the test numbers are user attributes, for the report.
"""

from __future__ import annotations

import copy
import math
import os
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna
import torch
from optuna.trial import TrialState

from ttfs.metrics import spike_statistics
from ttfs.train import DivergenceError, TensorBatches, evaluate, train_epoch

from ..artifacts import load_snn
from ..params import ParamsError, TuneParams
from ..runner import Experiment, Reference, link_reference
from ..tracking import StageRun, Tracker
from ..tracking import run_params as tracked_params
from ..training import optimizer_for
from .space import suggest

ROLE_TRIAL = "tune_trial"
RUN_ID = "mlflow_run_id"  # trial user attribute
WORKER = "worker"  # trial user attribute: <host>:<pid>
EXCLUDED = "ttfs_excluded"  # trial user attribute of a reclaimed trial (workers.py): stale | reclaimed | interrupted


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def train_indices(n: int, train_subset: int | None, seed: int) -> torch.Tensor:
    """The trials' training images: a seeded subset of the training split (``None``: all of it)."""
    if train_subset is not None and train_subset > n:
        raise ParamsError(f"tune.train_subset: {train_subset} exceeds the {n} images of the training split")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order if train_subset is None else order[:train_subset]


class TrialRunner:
    """Everything a worker needs once: the converted SNN, the train/validation/test tensors.

    Trials are compared on the prepared validation split (held out at ``prepare``, never trained on);
    built before the study is touched, so that a bad ``train_subset`` or a missing model fails first.
    """

    def __init__(self, exp: Experiment, tp: TuneParams):
        self.exp, self.tp = exp, tp
        self.finetune = exp.params.finetune
        data = exp.data
        train_idx = train_indices(len(data.train_x), tp.train_subset, exp.params.seed)
        if not len(data.val_y):
            raise ParamsError(f"data.datasets.{exp.params.dataset}.val_size: 0 leaves tuning nothing to compare "
                              "trials on; hold out a validation split")
        snn, self.lineage = load_snn(exp.paths.converted)
        self.start = snn.to(exp.device, exp.dtype)
        self.train = self._put(data.train_x[train_idx], data.train_y[train_idx])
        self.val = self._put(*data.split("val"))
        self.test = self._put(data.test_x, data.test_y)
        self.batch_size = tp.batch_size or self.finetune.batch_size

    def _put(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x.to(self.exp.device, self.exp.dtype), y.to(self.exp.device)

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train[1]), "validation": len(self.val[1]), "test": len(self.test[1])}

    def run(self, l1: float, lr: float, on_epoch: Callable[[int, dict], None] | None = None) -> dict:
        """Fine-tune a copy of the converted SNN; validation and test accuracy and spikes per neuron.

        Every trial sees the same batches in the same order (the experiment seed): differences between
        trials come from their hyperparameters only. Raises DivergenceError.
        """
        snn = copy.deepcopy(self.start)
        torch.manual_seed(self.exp.params.seed)  # dropout and anything else drawing from the global RNG
        p = self.finetune.model_copy(update={"lr": lr, "l1": l1, "epochs": self.tp.epochs})
        batches = TensorBatches(*self.train, self.batch_size, shuffle=True, seed=self.exp.params.seed,
                                device=self.exp.device)
        opt, scheduler = optimizer_for(snn, p, len(batches))
        for epoch in range(1, self.tp.epochs + 1):
            stats = train_epoch(snn, batches, opt, l1=l1, kappa=p.kappa, adapt_windows=p.adapt_windows,
                                nonpositive_bias=p.nonpositive_bias, scheduler=scheduler)
            if on_epoch is not None:
                on_epoch(epoch, stats)
        out: dict[str, Any] = {}
        for split, tensors in (("val", self.val), ("test", self.test)):
            batches_eval = TensorBatches(*tensors, self.finetune.eval_batch_size, shuffle=False,
                                         device=self.exp.device)
            acc = evaluate(snn, batches_eval)
            spikes = spike_statistics(snn, batches_eval, split=split)
            if not (math.isfinite(acc["loss"]) and math.isfinite(spikes["spikes_per_neuron"])):
                raise DivergenceError(f"{split} loss {acc['loss']} after fine-tuning with l1={l1}, lr={lr}")
            out |= {f"{split}_accuracy": acc["accuracy"], f"{split}_loss": acc["loss"],
                    f"{split}_spikes_per_neuron": spikes["spikes_per_neuron"],
                    f"{split}_spikes_per_neuron_per_layer": spikes["spikes_per_neuron_per_layer"],
                    f"{split}_causality_violations": spikes["causality_violations"],
                    f"{split}_synops_per_sample": spikes["synops_per_sample"]}
        return out


@dataclass
class Context:
    """What running a trial needs: the experiment, the study, MLflow."""

    exp: Experiment
    tp: TuneParams
    study: optuna.Study
    tracker: Tracker
    parent_id: str
    reference: Reference | None
    runner: TrialRunner
    stage_params: dict


def close_trial_run(tracker: Tracker, run_id: str | None, status: str, state: str, error: str | None = None) -> None:
    """Terminate a trial's MLflow run (FINISHED, FAILED or KILLED), tagged with its Optuna state."""
    if not run_id:
        return
    try:
        tracker.client.set_tag(run_id, "optuna_state", state)
        if error:
            tracker.client.set_tag(run_id, "error", error[:5000])
        tracker.client.set_terminated(run_id, status)
    except Exception as e:  # a run of another tracking store (another machine): nothing to close here
        print(f"warning: could not close MLflow run {run_id} ({type(e).__name__}: {e})", file=sys.stderr)


def mlflow_run(tracker: Tracker, stage: str, params: dict, tags: dict, resume: str | None = None) -> StageRun:
    """An MLflow run of the tune stage, without Tracker.run's closing of runs whose creating process is
    gone: the parent run outlives the worker that created it, and a dead worker's trial run is closed
    when its trial is reclaimed (workers.py), from any host."""
    return StageRun(tracker, stage, params, tags, resume)


def run_trial(ctx: Context, trial: optuna.Trial) -> TrialState:
    """Run one trial as one nested MLflow run and tell the study its result; returns the told state.

    A divergence fails the trial and returns; any other exception fails it and propagates. A
    KeyboardInterrupt (Ctrl-C, SIGTERM) propagates untouched: the caller gives the trial back.
    """
    l1, lr = suggest(trial, ctx.tp, ctx.exp.params.finetune.lr)
    baseline = l1 == 0.0
    tags = ctx.exp.tags(ROLE_TRIAL) | {
        "mlflow.parentRunId": ctx.parent_id, "mlflow.runName": f"trial-{trial.number:04d}",
        "optuna_study": ctx.study.study_name, "optuna_trial": str(trial.number), "optuna_state": "RUNNING",
        "baseline": str(baseline).lower()}
    # the finetune section unprefixed, with the values this trial trains with (lr, l1, epochs, batch size),
    # so that a trial lines up with the finetune and reference runs in MLflow's compare view
    trained = {"lr": lr, "l1": l1, "epochs": ctx.tp.epochs,
               "batch_size": ctx.tp.batch_size or ctx.exp.params.finetune.batch_size}
    run_params = tracked_params(ctx.stage_params, "finetune", trained) | {"samples": ctx.runner.sizes(),
                                     "trial": {"number": trial.number, "l1": l1, "lr": lr, "baseline": baseline,
                                               **{f"param.{k}": v for k, v in trial.params.items()}}}
    mlrun = mlflow_run(ctx.tracker, f"tune@{ctx.exp.name}", run_params, tags)
    for key, value in {RUN_ID: mlrun.run_id, "l1": l1, "lr": lr}.items():
        trial.set_user_attr(key, value)
    values, attrs, error = None, {}, None
    try:
        result = ctx.runner.run(l1, lr, lambda epoch, stats: mlrun.log_metrics(
            {f"running_train_{k}": v for k, v in stats.items()}, step=epoch))
        mlrun.log_metrics(result, step=ctx.tp.epochs)
        if ctx.reference is not None:
            link_reference(mlrun, ctx.reference, {"test_accuracy": result["test_accuracy"]})
        attrs = {k: result[k] for k in ("test_accuracy", "test_spikes_per_neuron", "val_loss", "test_loss")}
        values = [result["val_accuracy"], result["val_spikes_per_neuron"]]
    except DivergenceError as e:
        error = f"DivergenceError: {e}"
    except Exception as e:
        tell(ctx, trial, None, {}, mlrun.run_id, f"{type(e).__name__}: {e}")
        raise
    state = tell(ctx, trial, values, attrs, mlrun.run_id, error)
    if state == TrialState.COMPLETE:
        print(f"trial {trial.number}: l1={l1:.3g} lr={lr:.3g} -> val accuracy {values[0]:.4f}, "
              f"spikes/neuron {values[1]:.4f}", file=sys.stderr, flush=True)
    else:
        print(f"trial {trial.number} (l1={l1:.3g}, lr={lr:.3g}) failed: {error or f'objective {values}'}",
              file=sys.stderr, flush=True)
    return state


def tell(ctx: Context, trial: optuna.Trial, values: list[float] | None, attrs: dict, run_id: str,
         error: str | None) -> TrialState:
    """Record ``attrs``, tell the study (FAIL without values; Optuna also fails NaN values), then close the
    MLflow run with the state the study recorded."""
    try:
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        if values is not None:
            frozen = ctx.study.tell(trial, values, skip_if_finished=True)
        else:
            frozen = ctx.study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
        reclaimed = bool(frozen.user_attrs.get(EXCLUDED))
    except optuna.exceptions.UpdateFinishedTrialError:
        reclaimed = True
    if reclaimed:  # while it ran (its worker looked dead): the retry carries the point
        print(f"warning: trial {trial.number} was reclaimed while it ran; its result is dropped", file=sys.stderr)
        close_trial_run(ctx.tracker, run_id, "FAILED", "FAIL", f"reclaimed while running; {error or 'result dropped'}")
        return TrialState.FAIL
    if frozen.state == TrialState.COMPLETE:
        close_trial_run(ctx.tracker, run_id, "FINISHED", "COMPLETE")
    else:
        close_trial_run(ctx.tracker, run_id, "FAILED", frozen.state.name, error or f"objective values {values}")
    return frozen.state
