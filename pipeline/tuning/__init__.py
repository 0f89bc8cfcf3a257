"""Optuna tuning of the L1 strength (and optionally the learning rate) against sparsity (docs/tuning.md).

A two-objective study (maximise validation accuracy, minimise validation spikes per neuron) whose
trials fine-tune the experiment's converted B1 SNN with an L1 penalty on the hidden activations.
Several processes share one study and run exactly ``n_trials`` trials together. Modules:

* storage: where the study lives (journal file or RDB URL) and the storage-wide lock.
* space: the study's identity (name), the sampler, the search space and the L1 = 0 baseline.
* objective: one trial as one nested MLflow run, told to the study.
* workers: the shared budget, heartbeats, reclaiming a dead worker's trial, waiting for others.
* export: the Pareto front, the target check, the trials CSV and the plots.
* session: one process of a session (``tune``) and the explicit ``reclaim`` command.

Only Optuna's public API is used.
"""

from ..params import TuneParams
from . import export, objective, session, space, storage, workers
from .export import dominates, metrics_from, summarise, target_check, trial_record
from .session import ENV_PARENT_RUN, ReclaimError, reclaim, tune
from .space import code_hash
from .storage import DIRECTIONS, ENV_STORAGE, OBJECTIVES, StorageSpec, StudyNotFoundError, resolve_storage

__all__ = ["DIRECTIONS", "ENV_PARENT_RUN", "ENV_STORAGE", "OBJECTIVES", "ReclaimError", "StorageSpec",
           "StudyNotFoundError", "TuneParams", "code_hash", "dominates", "export", "metrics_from", "objective",
           "reclaim", "resolve_storage", "session", "space", "storage", "summarise", "target_check", "trial_record",
           "tune", "workers"]
