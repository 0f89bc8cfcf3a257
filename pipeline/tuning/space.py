"""What the study searches: its identity (name), the sampler, the search space and the baseline.

Sampled trials have exactly two params, ``l1`` (log scale) and ``lr`` (log scale, only with
``tune_lr``). The baseline (L1 = 0, which a log-scale float cannot hold) is the one enqueued trial
with the user attribute ``baseline = True``: it suggests no ``l1`` at all, only ``lr`` when the rate is
tuned, so no switch parameter clutters the sampler, the importances or the contour plots.
"""

from __future__ import annotations

import warnings

import optuna

from .. import deps
from .. import params as P
from ..params import TuneParams
from ..runner import Experiment

BASELINE = "baseline"  # trial user attribute: True on the L1 = 0 trial (and on its retries)

def code_hash() -> str:
    """The tune stage's code hash (pipeline/deps.py: its import closure): part of the study identity, so
    that when DVC reruns the stage because that code changed, a new study starts instead of re-exporting
    trials computed by the old code."""
    return deps.code_hash("tune")


def study_name_for(exp: Experiment, tp: TuneParams, converted_sha256: str) -> str:
    """<experiment>-<hash of everything a trial's result depends on> (not the budget, not the device)."""
    p = exp.params
    identity = {"dataset": p.dataset, "model": P.as_dict(p.model), "seed": p.seed, "dtype": p.dtype,
                "finetune": tp.inherited_finetune(p.finetune), "tune": tp.study_identity(),
                "converted": converted_sha256, "code": code_hash()}
    return f"{exp.name}-{P.params_hash(identity)}"


def make_sampler(tp: TuneParams, seed: int) -> optuna.samplers.BaseSampler:
    if tp.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if tp.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    with warnings.catch_warnings():  # multivariate, group and constant_liar are "experimental"
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=tp.n_startup_trials, multivariate=True,
                                          group=True, constant_liar=True)


def baseline_params(tp: TuneParams, finetune_lr: float) -> dict:
    """The enqueued baseline's params: none, or the fine-tuning rate clipped into the tuned range."""
    return {"lr": min(max(finetune_lr, tp.lr_min), tp.lr_max)} if tp.tune_lr else {}


def suggest(trial: optuna.Trial, tp: TuneParams, finetune_lr: float) -> tuple[float, float]:
    """(l1, lr) of a trial: the search space."""
    l1 = 0.0 if trial.user_attrs.get(BASELINE) else trial.suggest_float("l1", tp.l1_min, tp.l1_max, log=True)
    lr = trial.suggest_float("lr", tp.lr_min, tp.lr_max, log=True) if tp.tune_lr else finetune_lr
    return l1, lr
