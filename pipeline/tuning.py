"""Optuna tuning of the L1 strength (and optionally the learning rate) against sparsity.

A two-objective study (maximise validation accuracy, minimise spikes per neuron on the validation split)
whose trials fine-tune the experiment's converted B1 SNN with an L1 penalty on the hidden activations.
The search space is a categorical switch ``l1_enabled`` with the strength ``l1`` (log scale) conditional
on it, because a log-scale float cannot hold 0: the baseline (L1 = 0) is the one enqueued trial with
``l1_enabled = False``; every sampled trial has ``l1_enabled = True`` (a PartialFixedSampler around the
configured sampler), so the budget is never spent on repeating the baseline.

Several processes share one study (SPEC 10): a journal file (default, one machine) or an RDB URL such
as ``postgresql://`` (several machines). Who does what:

* The study is created by exactly one process (``create_study`` without ``load_if_exists`` succeeds
  once; the others get DuplicatedStudyError and load it). That process enqueues the baseline, creates
  the MLflow parent run and records its id in the study's user attributes, then marks the study ready.
* The trial budget is shared: a process asks for a trial only while holding a storage-wide lock (an
  ``flock`` next to the journal file or sqlite database, a PostgreSQL advisory lock) and only if the
  study holds fewer than ``n_trials`` counted trials. N workers together run exactly ``n_trials``.
  Other RDBs have no lock: a surplus trial is detected by its number, marked and failed instead.
* Each trial is one nested MLflow run (tags ``optuna_study``, ``optuna_trial``, ``optuna_state``,
  ``reference_run_id``); the run id is stored in the trial's user attributes.
* A running trial writes a heartbeat every ``heartbeat_interval`` s. A trial silent for ``stale_after``
  s (its worker was killed) is failed, marked ``ttfs_excluded = stale`` (not counted against the
  budget) and its parameters are enqueued again, so a crash loses no point of the search.

Only validation numbers reach the sampler; each trial also records its test accuracy and spikes per
neuron as user attributes, which are reported for the Pareto front and never used for selection.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import hashlib
import math
import os
import random
import socket
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from ttfs.metrics import spike_statistics
from ttfs.train import DivergenceError, TensorBatches, evaluate, train_epoch

from . import deps
from . import params as P
from .artifacts import _atomic_bytes, load_snn, write_csv, write_json
from .data import sha256_file
from .params import TuneParams
from .runner import Experiment, Reference, link_reference
from .tracking import StageRun, Tracker, project_root
from .training import optimizer_for

ENV_STORAGE = "TTFS_OPTUNA_STORAGE"
ENV_PARENT_RUN = "TTFS_MLFLOW_PARENT_RUN_ID"
OBJECTIVES = ("val_accuracy", "val_spikes_per_neuron")
DIRECTIONS = ("maximize", "minimize")
ROLE_STUDY, ROLE_TRIAL = "tune_study", "tune_trial"
EXCLUDED = "ttfs_excluded"  # user attr: stale | interrupted | surplus; not counted against the budget
READY = "ready"
TRIAL_COLUMNS = ("number", "baseline", "on_front", "l1", "lr", "val_accuracy", "val_spikes_per_neuron",
                 "test_accuracy", "test_spikes_per_neuron")


# -- params ------------------------------------------------------------------------------------------


def load_params(path: str | Path = "params.yaml") -> tuple[P.Params, dict[str, TuneParams]]:
    """The pipeline params and their ``tune`` sections."""
    params = P.load(path)
    return params, dict(params.tune)


# -- storage -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StorageSpec:
    """Where the study lives: ``journal`` (a file path) or ``rdb`` (an SQLAlchemy URL)."""

    kind: Literal["journal", "rdb"]
    target: str  # absolute journal path, or the URL

    @property
    def dialect(self) -> str:
        return self.target.split(":", 1)[0].split("+", 1)[0] if self.kind == "rdb" else "journal"

    def display(self) -> str:
        """The target with any password masked (safe for logs, MLflow and output files)."""
        if self.kind == "journal":
            return self.target
        head, sep, rest = self.target.partition("://")
        creds, at, host = rest.rpartition("@")
        if at and ":" in creds:
            creds = creds.split(":", 1)[0] + ":***"
        return f"{head}{sep}{creds}{at}{host}"


def default_storage(experiment: str) -> str:
    return str(project_root() / "optuna" / f"{experiment}.journal")


def resolve_storage(arg: str | None, experiment: str) -> StorageSpec:
    """``--storage`` > $TTFS_OPTUNA_STORAGE > <repo>/optuna/<experiment>.journal.

    A value with ``://`` is an RDB URL (``postgresql://user@host:5432/db``, ``sqlite:////abs/file.db``:
    one process only); ``file://`` or a plain path is a journal file, made absolute against the project
    root (DVC's temporary experiment copies would otherwise lose it).
    """
    value = arg or os.environ.get(ENV_STORAGE) or default_storage(experiment)
    if value.startswith("file://"):
        value = value.removeprefix("file://")
    elif "://" in value:
        return StorageSpec("rdb", _with_driver(value))
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = project_root() / path
    return StorageSpec("journal", str(path))


def _with_driver(url: str) -> str:
    """``postgresql://`` -> ``postgresql+psycopg2://`` unless psycopg 3 is installed: SQLAlchemy 2.1 picks
    psycopg 3 for a bare ``postgresql://``, while this project ships psycopg2-binary."""
    if url.startswith("postgres://"):  # Heroku-style alias that SQLAlchemy no longer accepts
        url = "postgresql://" + url.removeprefix("postgres://")
    if url.startswith("postgresql://"):
        import importlib.util

        if importlib.util.find_spec("psycopg") is None and importlib.util.find_spec("psycopg2") is not None:
            return "postgresql+psycopg2://" + url.removeprefix("postgresql://")
    return url


@contextlib.contextmanager
def _flock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


_ENGINES: dict[str, Any] = {}


def _lock_key(name: str) -> int:
    """A signed 64-bit advisory-lock key derived from ``name``."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


@contextlib.contextmanager
def _pg_advisory_lock(url: str, name: str) -> Iterator[None]:
    """A PostgreSQL session-level advisory lock on its own connection (released when it closes)."""
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    engine = _ENGINES.get(url)
    if engine is None:
        engine = _ENGINES[url] = sqlalchemy.create_engine(url, poolclass=NullPool)
    with engine.connect() as conn:
        conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": _lock_key(name)})
        try:
            yield
        finally:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": _lock_key(name)})


@contextlib.contextmanager
def storage_lock(spec: StorageSpec, name: str) -> Iterator[bool]:
    """Exclusive, storage-wide lock named ``name``; yields False (no lock) where none is implemented."""
    if spec.kind == "journal":
        with _flock(Path(f"{spec.target}.{_lock_key(name) & 0xFFFFFFFF:08x}.lock")):
            yield True
    elif spec.dialect == "postgresql":
        with _pg_advisory_lock(spec.target, name):
            yield True
    elif spec.dialect == "sqlite":
        db = spec.target.split(":///", 1)[1] if ":///" in spec.target else ""
        if db and db != ":memory:":
            with _flock(Path(f"{db}.{_lock_key(name) & 0xFFFFFFFF:08x}.lock")):
                yield True
        else:
            yield False
    else:
        yield False


def open_storage(spec: StorageSpec) -> optuna.storages.BaseStorage:
    if spec.kind == "journal":
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        Path(spec.target).parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(spec.target))
    if spec.dialect == "sqlite":
        print("warning: sqlite study storage is for one process; use the journal file (one machine) or "
              "postgresql:// (several) for parallel workers", file=sys.stderr)
    # Concurrent first connections race to create the schema: serialise them where a lock exists,
    # and retry elsewhere.
    for attempt in range(6):
        try:
            with storage_lock(spec, "optuna-schema"):
                return optuna.storages.RDBStorage(spec.target, engine_kwargs={"pool_pre_ping": True})
        except Exception as e:  # sqlalchemy errors of the losing creator
            if attempt == 5:
                raise
            print(f"warning: opening {spec.display()} failed ({type(e).__name__}), retrying", file=sys.stderr)
            time.sleep(0.5 + random.random() * 2 ** attempt)
    raise AssertionError("unreachable")


# -- the study ---------------------------------------------------------------------------------------


def code_hash() -> str:
    """The tune stage's code hash (pipeline/deps.py): part of the study identity, so that when DVC reruns
    the stage because that code changed, a new study starts instead of re-exporting old trials."""
    return deps.code_hash("tune")


def study_name_for(exp: Experiment, tp: TuneParams, converted_sha256: str) -> str:
    """<experiment>-<hash of everything a trial's result depends on> (not the budget, not the device)."""
    p = exp.params
    identity = {"dataset": p.dataset, "model": P.as_dict(p.model), "seed": p.seed, "dtype": p.dtype,
                "finetune": P.as_dict(p.finetune), "tune": tp.study_identity(), "converted": converted_sha256,
                "code": code_hash()}
    return f"{exp.name}-{P.params_hash(identity)}"


def make_sampler(tp: TuneParams, seed: int) -> optuna.samplers.BaseSampler:
    """The configured sampler with ``l1_enabled`` fixed to True (only the enqueued baseline has False)."""
    with warnings.catch_warnings():  # group= and PartialFixedSampler are "experimental" (stable for years)
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if tp.sampler == "tpe":
            base: optuna.samplers.BaseSampler = optuna.samplers.TPESampler(
                seed=seed, n_startup_trials=tp.n_startup_trials, multivariate=True, group=True,
                constant_liar=True)
        elif tp.sampler == "random":
            base = optuna.samplers.RandomSampler(seed=seed)
        else:
            base = optuna.samplers.NSGAIISampler(seed=seed)
        return optuna.samplers.PartialFixedSampler({"l1_enabled": True}, base)


def baseline_params(tp: TuneParams, finetune_lr: float) -> dict:
    """L1 = 0 at the fine-tuning learning rate, clipped into the tuned range when the rate is tuned."""
    return {"l1_enabled": False, **({"lr": min(max(finetune_lr, tp.lr_min), tp.lr_max)} if tp.tune_lr else {})}


def suggest(trial: optuna.Trial, tp: TuneParams, finetune_lr: float) -> tuple[float, float]:
    """(l1, lr) of a trial: the search space."""
    enabled = trial.suggest_categorical("l1_enabled", [False, True])
    l1 = trial.suggest_float("l1", tp.l1_min, tp.l1_max, log=True) if enabled else 0.0
    lr = trial.suggest_float("lr", tp.lr_min, tp.lr_max, log=True) if tp.tune_lr else finetune_lr
    return l1, lr


class StudyNotFoundError(LookupError):
    """--export-only for a study that the storage does not hold."""


def open_study(storage, name: str, sampler, create: bool = True) -> tuple[optuna.Study, bool]:
    """(study, created): exactly one of several concurrent callers gets created=True."""
    try:
        if not create:
            raise optuna.exceptions.DuplicatedStudyError
        study = optuna.create_study(storage=storage, study_name=name, directions=list(DIRECTIONS),
                                    sampler=sampler, load_if_exists=False)
        return study, True
    except optuna.exceptions.DuplicatedStudyError:
        try:
            study = optuna.load_study(study_name=name, storage=storage, sampler=sampler)
        except KeyError:
            names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
            raise StudyNotFoundError(f"no study {name!r} in the storage (it holds: {', '.join(names) or 'none'}); "
                                     "same params.yaml and models as the workers? --study-name picks one") from None
    if [d.name.lower() for d in study.directions] != list(DIRECTIONS):
        raise P.ParamsError(f"study {name!r} exists with directions {study.directions}, expected {DIRECTIONS}")
    return study, False


def ensure_baseline(study: optuna.Study, spec: StorageSpec, tp: TuneParams, finetune_lr: float) -> None:
    """Enqueue the L1 = 0 trial unless the study has one (in any state but excluded)."""
    with storage_lock(spec, f"budget:{study.study_name}"):
        if not any(t.params.get("l1_enabled") is False or t.user_attrs.get("baseline")
                   for t in _counted(study.get_trials(deepcopy=False))):
            study.enqueue_trial(baseline_params(tp, finetune_lr), user_attrs={"baseline": True})


def wait_ready(study: optuna.Study, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not study.user_attrs.get(READY):
        if time.monotonic() > deadline:
            print(f"warning: study {study.study_name} was never marked ready by its creator; going on",
                  file=sys.stderr)
            return
        time.sleep(0.5)


def _counted(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    return [t for t in trials if not t.user_attrs.get(EXCLUDED)]


def reap_stale(study: optuna.Study, stale_after: float, now: float | None = None) -> list[int]:
    """Fail RUNNING trials without a heartbeat for ``stale_after`` s and enqueue their params again."""
    now = time.time() if now is None else now
    reaped = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        beat = t.user_attrs.get("heartbeat")
        limit = stale_after
        if beat is None:  # died between ask and its first heartbeat: only a naive local start time is
            beat = t.datetime_start.timestamp() if t.datetime_start else now  # known, so allow for time zones
            limit = stale_after + 86400
        if now - float(beat) <= limit:
            continue
        try:
            study._storage.set_trial_user_attr(t._trial_id, EXCLUDED, "stale")
            study.tell(t.number, state=TrialState.FAIL)
        except (RuntimeError, ValueError):  # finished meanwhile
            continue
        retry_attrs = {"retry_of": t.number, **({"baseline": True} if t.user_attrs.get("baseline") else {})}
        study.enqueue_trial(dict(t.params), user_attrs=retry_attrs)
        print(f"warning: trial {t.number} had no heartbeat for {now - float(beat):.0f} s: failed, params "
              f"enqueued again", file=sys.stderr)
        reaped.append(t.number)
    return reaped


def next_trial(study: optuna.Study, spec: StorageSpec, n_trials: int, stale_after: float) -> optuna.Trial | None:
    """A new (or enqueued) trial if the shared budget allows one, else None (see the module docstring)."""
    with storage_lock(spec, f"budget:{study.study_name}") as locked:
        reap_stale(study, stale_after)
        trials = _counted(study.get_trials(deepcopy=False))
        waiting = {t.number for t in trials if t.state == TrialState.WAITING}
        if len(trials) >= n_trials and not waiting:
            return None
        trial = study.ask()
        trial.set_user_attr("heartbeat", time.time())
    if not locked and trial.number not in waiting:
        before = [t for t in _counted(study.get_trials(deepcopy=False)) if t.number < trial.number]
        if len(before) >= n_trials:  # another worker took the last slot between our count and ask
            trial.set_user_attr(EXCLUDED, "surplus")
            study.tell(trial, state=TrialState.FAIL)
            return None
    return trial


@contextlib.contextmanager
def heartbeat(trial: optuna.Trial, interval: float) -> Iterator[None]:
    """Record time.time() in the trial's user attrs every ``interval`` s while the block runs."""
    stop = threading.Event()

    def beat():
        while not stop.wait(interval):
            try:
                trial.set_user_attr("heartbeat", time.time())
            except Exception as e:  # storage hiccup or reaped: the next beat retries, the tell decides
                print(f"warning: heartbeat of trial {trial.number} failed: {e}", file=sys.stderr)

    trial.set_user_attr("heartbeat", time.time())
    thread = threading.Thread(target=beat, name=f"heartbeat-{trial.number}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


# -- one trial ---------------------------------------------------------------------------------------


def split_indices(n: int, val_size: int, train_subset: int | None, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, validation) indices into the training split: a seeded permutation, validation first."""
    if val_size >= n:
        raise P.ParamsError(f"tune.val_size: {val_size} leaves no training samples out of {n}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    val, rest = order[:val_size], order[val_size:]
    return (rest if train_subset is None else rest[:train_subset]), val


class TrialRunner:
    """Everything a worker needs once: the converted SNN, the train/validation/test tensors."""

    def __init__(self, exp: Experiment, tp: TuneParams):
        self.exp, self.tp = exp, tp
        self.finetune = exp.params.finetune
        snn, self.lineage = load_snn(exp.paths.converted)
        self.start = snn.to(exp.device, exp.dtype)
        data = exp.data
        train_idx, val_idx = split_indices(len(data.train_x), tp.val_size, tp.train_subset, exp.params.seed)
        self.train = self._put(data.train_x[train_idx], data.train_y[train_idx])
        self.val = self._put(data.train_x[val_idx], data.train_y[val_idx])
        self.test = self._put(data.test_x, data.test_y)
        self.batch_size = tp.batch_size or self.finetune.batch_size

    def _put(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x.to(self.exp.device, self.exp.dtype), y.to(self.exp.device)

    def _eval_batches(self, split: tuple[torch.Tensor, torch.Tensor]) -> TensorBatches:
        return TensorBatches(*split, self.finetune.eval_batch_size, shuffle=False, device=self.exp.device)

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
        opt, scheduler = optimizer_for(snn, p)
        batches = TensorBatches(*self.train, self.batch_size, shuffle=True, seed=self.exp.params.seed,
                                device=self.exp.device)
        for epoch in range(1, self.tp.epochs + 1):
            stats = train_epoch(snn, batches, opt, l1=l1, kappa=p.kappa, adapt_windows=p.adapt_windows,
                                nonpositive_bias=p.nonpositive_bias, scheduler=scheduler)
            if on_epoch is not None:
                on_epoch(epoch, stats)
        out: dict[str, Any] = {}
        for split, tensors in (("val", self.val), ("test", self.test)):
            batches_eval = self._eval_batches(tensors)
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


# -- MLflow ------------------------------------------------------------------------------------------


def open_tracker(experiment: str, attempts: int = 5) -> Tracker:
    """Tracker(experiment), retried: concurrent first calls race to create the MLflow experiment."""
    for attempt in range(attempts):
        try:
            return Tracker(experiment)
        except Exception as e:
            if attempt == attempts - 1:
                raise
            print(f"warning: opening the MLflow experiment failed ({type(e).__name__}), retrying", file=sys.stderr)
            time.sleep(0.2 + random.random() * 2 ** attempt)
    raise AssertionError("unreachable")


def _usable_parent(tracker: Tracker, run_id: str | None) -> bool:
    if not run_id:
        return False
    try:
        info = tracker.client.get_run(run_id).info
    except Exception:  # not in this tracking store (another machine's store)
        return False
    return info.experiment_id == tracker.experiment_id and info.lifecycle_stage == "active"


def _study_runs(tracker: Tracker, study_name: str, storage: str) -> list:
    query = (f"tags.role = '{ROLE_STUDY}' and tags.optuna_study = '{study_name}' "
             f"and tags.optuna_storage = '{storage}'")
    runs = tracker.client.search_runs([tracker.experiment_id], query, max_results=100)
    return sorted(runs, key=lambda r: (r.info.start_time, r.info.run_id))


def parent_run(tracker: Tracker, study: optuna.Study, explicit: str | None, stage_params: dict,
               tags: dict) -> str:
    """Id of the study's MLflow parent run in this tracking store, created if it has none.

    Order: ``explicit`` (--parent-run-id / $TTFS_MLFLOW_PARENT_RUN_ID), the id the study's creator
    recorded, a run tagged with the study name and storage (``tags``), a new run. Two processes
    creating one at the same time both look again afterwards and keep the earliest (start time, run
    id); the other is deleted.
    """
    for candidate in (explicit, study.user_attrs.get("mlflow_parent_run_id")):
        if _usable_parent(tracker, candidate):
            return candidate
    storage = tags["optuna_storage"]
    found = _study_runs(tracker, study.study_name, storage)
    if found:
        return found[0].info.run_id
    mine = StageRun(tracker, f"tune@{tracker.name}", stage_params, tags, None).run_id
    winner = _study_runs(tracker, study.study_name, storage)[0].info.run_id
    if winner != mine:
        tracker.client.delete_run(mine)
    return winner


# -- the worker loop ---------------------------------------------------------------------------------


@dataclass
class Context:
    """One process's view of a tuning session."""

    exp: Experiment
    tp: TuneParams
    spec: StorageSpec
    study: optuna.Study
    tracker: Tracker
    parent_id: str
    reference: Reference | None
    runner: TrialRunner
    stage_params: dict

    def budget(self) -> int:
        return int(self.study.user_attrs.get("n_trials", self.tp.n_trials))


def run_trial(ctx: Context, trial: optuna.Trial) -> TrialState:
    """Run one trial as one nested MLflow run and tell the study its result."""
    l1, lr = suggest(trial, ctx.tp, ctx.exp.params.finetune.lr)
    baseline = l1 == 0.0
    trial.set_user_attr("l1", l1)
    trial.set_user_attr("lr", lr)
    trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
    tags = ctx.exp.tags(ROLE_TRIAL) | {
        "mlflow.parentRunId": ctx.parent_id, "mlflow.runName": f"trial-{trial.number:04d}",
        "optuna_study": ctx.study.study_name, "optuna_trial": str(trial.number), "optuna_state": "RUNNING",
        "baseline": str(baseline).lower()}
    run_params = ctx.stage_params | {"samples": ctx.runner.sizes(),
                                     "trial": {"number": trial.number, "l1": l1, "lr": lr, "baseline": baseline,
                                               **{f"param.{k}": v for k, v in trial.params.items()}}}
    run_id = None
    state, values, error = TrialState.FAIL, None, None
    try:
        with ctx.tracker.run(f"tune@{ctx.exp.name}", run_params, tags) as mlrun:
            run_id = mlrun.run_id
            trial.set_user_attr("mlflow_run_id", run_id)

            def on_epoch(epoch: int, stats: dict) -> None:
                mlrun.log_metrics({f"train_{k}": v for k, v in stats.items()}, step=epoch)

            with heartbeat(trial, ctx.tp.heartbeat_interval):
                result = ctx.runner.run(l1, lr, on_epoch)
            for key in ("test_accuracy", "test_spikes_per_neuron", "val_loss", "test_loss"):
                trial.set_user_attr(key, result[key])
            mlrun.log_metrics(result, step=ctx.tp.epochs)
            if ctx.reference is not None:
                link_reference(mlrun, ctx.reference, {"test_accuracy": result["test_accuracy"]})
            values = [result["val_accuracy"], result["val_spikes_per_neuron"]]
            mlrun.set_tags({"optuna_state": "COMPLETE"})
            state = TrialState.COMPLETE
    except DivergenceError as e:
        error = e
    except KeyboardInterrupt:  # not the point's fault: give it back to the study, like a stale trial
        with contextlib.suppress(Exception):
            trial.set_user_attr(EXCLUDED, "interrupted")
            _finish(ctx, trial, TrialState.FAIL, None, run_id)
            retry_attrs = {"retry_of": trial.number, **({"baseline": True} if baseline else {})}
            ctx.study.enqueue_trial(dict(trial.params), user_attrs=retry_attrs)
        raise
    except BaseException:
        _finish(ctx, trial, TrialState.FAIL, None, run_id)
        raise
    _finish(ctx, trial, state, values, run_id)
    if error is not None:
        print(f"trial {trial.number} (l1={l1:.3g}, lr={lr:.3g}) failed: {error}", file=sys.stderr)
    else:
        print(f"trial {trial.number}: l1={l1:.3g} lr={lr:.3g} -> val accuracy {values[0]:.4f}, "
              f"spikes/neuron {values[1]:.4f}", file=sys.stderr, flush=True)
    return state


def _finish(ctx: Context, trial: optuna.Trial, state: TrialState, values, run_id: str | None) -> None:
    try:
        if values is not None:
            ctx.study.tell(trial, values, state=state)
        else:
            ctx.study.tell(trial, state=state)
    except (RuntimeError, ValueError) as e:  # reaped as stale meanwhile: its retry carries the point
        print(f"warning: trial {trial.number} could not be told ({e})", file=sys.stderr)
        state = TrialState.FAIL
        if run_id:
            ctx.tracker.client.set_tag(run_id, "optuna_state", "FAIL (stale)")
        return
    if run_id and state != TrialState.COMPLETE:
        with contextlib.suppress(Exception):
            ctx.tracker.client.set_tag(run_id, "optuna_state", state.name)


def work(ctx: Context, serve: bool) -> int:
    """Run trials while the shared budget allows; returns how many this process ran.

    ``serve``: when the budget is spent, stay (polling, reaping stale trials, running their retries)
    until no trial is running anywhere or ``wait_timeout`` passes: what the exporting process does.
    """
    done = 0
    waited_since = None
    while True:
        trial = next_trial(ctx.study, ctx.spec, ctx.budget(), ctx.tp.stale_after)
        if trial is not None:
            run_trial(ctx, trial)
            done += 1
            waited_since = None
            continue
        if not serve:
            return done
        running = ctx.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if not running:
            return done
        waited_since = waited_since or time.monotonic()
        if time.monotonic() - waited_since > ctx.tp.wait_timeout:
            print(f"warning: {len(running)} trial(s) still running after {ctx.tp.wait_timeout:.0f} s; "
                  f"exporting without them", file=sys.stderr)
            return done
        time.sleep(min(5.0, ctx.tp.heartbeat_interval))


# -- the Pareto front and its export -----------------------------------------------------------------


def dominates(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """a dominates b for (accuracy: max, spikes: min)."""
    return a[0] >= b[0] and a[1] <= b[1] and (a[0] > b[0] or a[1] < b[1])


def trial_record(t: FrozenTrial) -> dict:
    """A trial as plain data (no timestamps, run ids or host names: a DVC output)."""
    ua = t.user_attrs
    return {
        "number": t.number,
        "baseline": not t.params.get("l1_enabled", True),
        "params": dict(sorted(t.params.items())),
        "l1": ua.get("l1", t.params.get("l1", 0.0)),
        "lr": ua.get("lr", t.params.get("lr")),
        "val_accuracy": t.values[0] if t.values else None,
        "val_spikes_per_neuron": t.values[1] if t.values else None,
        "test_accuracy": ua.get("test_accuracy"),
        "test_spikes_per_neuron": ua.get("test_spikes_per_neuron"),
    }


def summarise(study: optuna.Study, tp: TuneParams, budget: int) -> dict:
    """The Pareto front (``study.best_trials``) and the target check, as plain data."""
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    front = sorted(study.best_trials if complete else [], key=lambda t: (t.values[1], -t.values[0], t.number))
    front_numbers = {t.number for t in front}
    records = [trial_record(t) | {"on_front": t.number in front_numbers} for t in complete]
    records.sort(key=lambda r: r["number"])
    baselines = [r for r in records if r["baseline"]]
    out: dict[str, Any] = {
        "study_name": study.study_name,
        "objectives": [{"name": n, "direction": d} for n, d in zip(OBJECTIVES, DIRECTIONS, strict=True)],
        "search_space": {"l1": {"low": tp.l1_min, "high": tp.l1_max, "log": True, "switch": "l1_enabled"},
                         "lr": ({"low": tp.lr_min, "high": tp.lr_max, "log": True} if tp.tune_lr else "fixed")},
        "trials": {"budget": budget, "total": len(trials), "complete": len(complete),
                   "failed": sum(t.state == TrialState.FAIL and not t.user_attrs.get(EXCLUDED) for t in trials),
                   "excluded": sum(bool(t.user_attrs.get(EXCLUDED)) for t in trials),
                   "running": sum(t.state == TrialState.RUNNING for t in trials)},
        "baseline": baselines[0] if baselines else None,
        "front": [trial_record(t) for t in front],
    }
    out["target"] = target_check(out["front"], records, tp)
    out["all_trials"] = records
    return out


def target_check(front: list[dict], records: list[dict], tp: TuneParams) -> dict:
    """Does the front reach ``target_spikes`` within ``target_accuracy_drop`` of the best accuracy?

    The trial is picked on validation (what was tuned): the sparsest front trial whose validation
    accuracy is within the drop of the best validation accuracy over all trials. Its test numbers are
    then checked the same way against the best test accuracy on the front, without choosing on test.
    """
    out: dict[str, Any] = {"spikes_per_neuron": tp.target_spikes, "accuracy_drop": tp.target_accuracy_drop,
                           "val": None, "test": None}
    done = [r for r in records if r.get("val_accuracy") is not None]
    if not done or not front:
        return out
    best = max(r["val_accuracy"] for r in done)
    within = [r for r in front if r["val_accuracy"] >= best - tp.target_accuracy_drop - 1e-12]
    pick = min(within, key=lambda r: (r["val_spikes_per_neuron"], r["number"]))
    chosen = {"trial": pick["number"], "l1": pick["l1"], "lr": pick["lr"]}
    out["val"] = {"best_accuracy": best, "sparsest_within_drop": chosen | {
        "accuracy": pick["val_accuracy"], "spikes_per_neuron": pick["val_spikes_per_neuron"]},
        "met": bool(pick["val_spikes_per_neuron"] <= tp.target_spikes)}
    tested = [r["test_accuracy"] for r in front if r.get("test_accuracy") is not None]
    if tested and pick.get("test_accuracy") is not None:
        best_test = max(tested)
        out["test"] = {"best_accuracy": best_test, "sparsest_within_drop": chosen | {
            "accuracy": pick["test_accuracy"], "spikes_per_neuron": pick["test_spikes_per_neuron"]},
            "met": bool(pick["test_spikes_per_neuron"] <= tp.target_spikes
                        and pick["test_accuracy"] >= best_test - tp.target_accuracy_drop - 1e-12)}
    return out


def plot_png(path: Path, summary: dict, title: str) -> None:
    from . import plots

    plt = plots.plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    trials = summary["all_trials"]
    front = summary["front"]
    if trials:
        ax.scatter([r["val_spikes_per_neuron"] for r in trials], [100 * r["val_accuracy"] for r in trials],
                   s=18, color="0.65", label="trials", zorder=2)
    if front:
        xs = [r["val_spikes_per_neuron"] for r in front]
        ys = [100 * r["val_accuracy"] for r in front]
        ax.step(xs, ys, where="post", color="tab:red", alpha=0.6, zorder=3)
        ax.scatter(xs, ys, s=30, color="tab:red", label="Pareto front", zorder=4)
        for r in front:
            if not r["baseline"]:
                ax.annotate(f"{r['l1']:.1e}", (r["val_spikes_per_neuron"], 100 * r["val_accuracy"]),
                            textcoords="offset points", xytext=(4, -10), fontsize=7, color="tab:red")
    if summary["baseline"]:
        b = summary["baseline"]
        ax.scatter([b["val_spikes_per_neuron"]], [100 * b["val_accuracy"]], marker="*", s=160, color="black",
                   label="baseline (L1 = 0)", zorder=5)
    target = summary["target"]
    if target.get("val"):
        ax.axhline(100 * (target["val"]["best_accuracy"] - target["accuracy_drop"]), color="tab:blue",
                   linestyle="--", linewidth=1, label=f"best - {100 * target['accuracy_drop']:g} pt")
    ax.axvline(target["spikes_per_neuron"], color="tab:green", linestyle=":", linewidth=1,
               label=f"{target['spikes_per_neuron']:g} spikes/neuron")
    ax.set(xlabel="spikes per neuron (validation)", ylabel="accuracy % (validation)", title=title)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    plots._save(fig, path)


def plot_html(path: Path, study: optuna.Study, title: str) -> None:
    """Interactive front (optuna.visualization); plotly.js is embedded so the file works offline."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if complete:
        fig = optuna.visualization.plot_pareto_front(
            study, target_names=["validation accuracy", "spikes per neuron (validation)"])
    else:
        import plotly.graph_objects as go

        fig = go.Figure()
    fig.update_layout(title=title)
    html = fig.to_html(include_plotlyjs=True, full_html=True, div_id="pareto-front")
    _atomic_bytes(path, html.encode())


def export(study: optuna.Study, tp: TuneParams, budget: int, experiment: str, out_dir: Path,
           metrics_path: Path) -> dict:
    """pareto.json, pareto.png, pareto.html, tune_trials.csv in ``out_dir``; the summary metrics json."""
    summary = summarise(study, tp, budget)
    front_doc = {k: v for k, v in summary.items() if k != "all_trials"} | {"experiment": experiment}
    write_json(out_dir / "pareto.json", front_doc)
    write_csv(out_dir / "tune_trials.csv", summary["all_trials"], TRIAL_COLUMNS)
    title = f"{experiment}: accuracy vs spikes per neuron"
    plot_png(out_dir / "pareto.png", summary, title)
    plot_html(out_dir / "pareto.html", study, title)
    metrics = metrics_from(summary)
    write_json(metrics_path, metrics)
    return metrics


def metrics_from(summary: dict) -> dict:
    """The flat numbers of `dvc metrics show` (and the parent MLflow run)."""
    m: dict[str, Any] = {"trials": summary["trials"], "front_size": len(summary["front"])}
    if summary["baseline"]:
        b = summary["baseline"]
        m["baseline"] = {k: b[k] for k in ("val_accuracy", "val_spikes_per_neuron", "test_accuracy",
                                           "test_spikes_per_neuron")}
    for split in ("val", "test"):
        t = summary["target"].get(split)
        if t:
            pick = t["sparsest_within_drop"] or {}
            m[f"{split}_target"] = {"best_accuracy": t["best_accuracy"], "met": t["met"],
                                    "accuracy": pick.get("accuracy"),
                                    "spikes_per_neuron": pick.get("spikes_per_neuron"),
                                    "l1": pick.get("l1"), "trial": pick.get("trial")}
    return m


# -- the whole session -------------------------------------------------------------------------------


def tune(name: str, params: P.Params, tunes: dict[str, TuneParams], *, storage: str | None = None,
         worker: bool = False, export_only: bool = False, study_name: str | None = None,
         parent_run_id: str | None = None, seed: int | None = None) -> dict | None:
    """One process of a tuning session; returns the exported metrics (None for a pure worker).

    Default (the DVC stage): join or create the study, run trials while the budget allows, wait for
    the other workers, export. ``worker``: run trials only. ``export_only``: wait and export only.
    """
    if name not in tunes:
        raise P.ParamsError(f"tune.{name}: no tune section for experiment {name!r} "
                            f"(sections: {', '.join(tunes) or 'none'})")
    exp = Experiment(name, params.experiment(name))
    tp = tunes[name]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = resolve_storage(storage, name)
    converted_sha = sha256_file(exp.paths.converted)
    study_name = study_name or study_name_for(exp, tp, converted_sha)
    if seed is None:  # the stage is reproducible; extra workers must not replay its proposals
        seed = tp.seed if not worker else tp.seed + 1 + (os.getpid() * 7919 + time.time_ns()) % 1_000_003
    study, created = open_study(open_storage(spec), study_name, make_sampler(tp, seed), create=not export_only)
    print(f"tune {name}: study {study_name} on {spec.display()} ({'created' if created else 'joined'}, "
          f"sampler seed {seed})", file=sys.stderr, flush=True)
    stage_params = exp.stage_params("finetune") | {"tune": P.as_dict(tp), "study": study_name,
                                                   "storage": spec.display()}
    tracker = open_tracker(name)
    study_tags = exp.tags(ROLE_STUDY) | {"optuna_study": study_name, "optuna_storage": spec.display().replace("'", "_"),
                                         "mlflow.runName": f"tune-{name}"}
    explicit_parent = parent_run_id or os.environ.get(ENV_PARENT_RUN)
    if created:
        study.set_user_attr("experiment", name)
        study.set_user_attr("objectives", list(OBJECTIVES))
        study.set_user_attr("n_trials", tp.n_trials)
        ensure_baseline(study, spec, tp, exp.params.finetune.lr)
        parent = parent_run(tracker, study, explicit_parent, stage_params, study_tags)
        study.set_user_attr("mlflow_parent_run_id", parent)
        study.set_user_attr(READY, True)
    else:
        wait_ready(study)
        if not worker and not export_only:  # the stage's process owns the budget, and repairs a lost baseline
            if study.user_attrs.get("n_trials") != tp.n_trials:
                study.set_user_attr("n_trials", tp.n_trials)
            ensure_baseline(study, spec, tp, exp.params.finetune.lr)
        parent = parent_run(tracker, study, explicit_parent, stage_params, study_tags)
    try:
        _, lineage = load_snn(exp.paths.converted)
        reference = exp.reference(lineage["pretrain_params_hash"])
    except Exception as e:  # another machine without the pretrain outputs: trials run untagged
        print(f"warning: no reference run ({type(e).__name__}: {e}); trials are not tagged with one",
              file=sys.stderr)
        reference = None
    ctx = Context(exp, tp, spec, study, tracker, parent, reference,
                  TrialRunner(exp, tp) if not export_only else None, stage_params)  # type: ignore[arg-type]
    if export_only:
        _wait_idle(ctx)
    else:
        ran = work(ctx, serve=not worker)
        print(f"tune {name}: this process ran {ran} trial(s)", file=sys.stderr)
    if worker:
        return None
    paths = exp.paths
    metrics = export(study, tp, ctx.budget(), name, paths.plot(""), paths.metrics("tune"))
    with tracker.run(f"tune@{name}", stage_params, study_tags, resume=parent) as mlrun:
        mlrun.log_metrics(metrics)
        if reference is not None:
            mlrun.set_tags({"reference_run_id": reference.run_id})
        for f in ("pareto.json", "pareto.png", "pareto.html", "tune_trials.csv"):
            mlrun.log_artifact(paths.plot(f), "tune")
    t = metrics.get("val_target") or {}
    print(f"tune {name}: {metrics['trials']['complete']} complete trials, front of {metrics['front_size']}; "
          f"sparsest within {100 * tp.target_accuracy_drop:g} pt of the best validation accuracy: "
          f"{t.get('spikes_per_neuron')} spikes/neuron (target {tp.target_spikes}: "
          f"{'met' if t.get('met') else 'not met'})", file=sys.stderr)
    return metrics


def _wait_idle(ctx: Context) -> None:
    start = time.monotonic()
    while True:
        with storage_lock(ctx.spec, f"budget:{ctx.study.study_name}"):
            reap_stale(ctx.study, ctx.tp.stale_after)
        if not ctx.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            return
        if time.monotonic() - start > ctx.tp.wait_timeout:
            print("warning: trials still running; exporting what is complete", file=sys.stderr)
            return
        time.sleep(min(5.0, ctx.tp.heartbeat_interval))
