"""One process of a tuning session, and the explicit reclaim of a dead worker's trial.

Order matters: every input is checked (params, the converted model, the data split) before the
first side effect, so a bad input leaves no empty study and no MLflow run behind. Then, under the
study's lock, the study is created or joined and set up idempotently (objective names, budget,
baseline, the MLflow parent run, recorded on both sides), trials run, and the stage's process waits
for the others and exports.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import warnings

import optuna

from .. import params as P
from ..artifacts import load_snn
from ..data import sha256_file
from ..errors import ArtifactError, PipelineError
from ..params import TuneParams
from ..runner import Experiment
from ..tracking import Tracker
from .export import export
from .objective import Context, TrialRunner, mlflow_run, worker_name
from .space import BASELINE, baseline_params, make_sampler, study_name_for
from .storage import (
    OBJECTIVES,
    StorageSpec,
    StudyNotFoundError,
    budget_lock,
    create_study,
    load_study,
    open_storage,
    resolve_storage,
    study_exists,
)
from .workers import MISSED_BEATS, Shared, budget, counted, last_beat, reclaim_locked, running, work

ENV_PARENT_RUN = "TTFS_MLFLOW_PARENT_RUN_ID"
ROLE_STUDY = "tune_study"
PARENT_RUN = "mlflow_parent_run_id"  # study user attribute


class ReclaimError(PipelineError):
    """--reclaim N for a trial that is not running."""


def check_inputs(name: str, params: P.Params, storage: str | None,
                 study_name: str | None) -> tuple[Experiment, TuneParams, StorageSpec, str]:
    """Everything the session needs that can be wrong, checked without touching the study or MLflow."""
    tp = params.tuning(name)
    exp = Experiment(name, params.experiment(name))
    spec = resolve_storage(storage, name)
    converted = exp.paths.converted
    if not converted.is_file():
        raise ArtifactError(f"{converted}: no converted SNN to tune; run `dvc repro convert@{name}` first")
    return exp, tp, spec, study_name or study_name_for(exp, tp, sha256_file(converted))


def _open(spec: StorageSpec, create: bool):
    if not create and spec.kind == "journal" and not os.path.exists(spec.target):
        raise StudyNotFoundError(f"{spec.target}: no such journal file (--storage points to the workers' storage?)")
    return open_storage(spec)


def parent_run(tracker: Tracker, study: optuna.Study, explicit: str | None, stage_params: dict, tags: dict) -> str:
    """The study's MLflow parent run in this tracking store; call under the study's lock.

    ``explicit`` (--parent-run-id / $TTFS_MLFLOW_PARENT_RUN_ID), else the one recorded in the study,
    else one tagged with the study name and storage, else a new one (tagged so).
    """
    for candidate in (explicit, study.user_attrs.get(PARENT_RUN)):
        if candidate:
            try:
                info = tracker.client.get_run(candidate).info
            except Exception:  # not in this tracking store (another machine's store)
                continue
            if info.experiment_id == tracker.experiment_id and info.lifecycle_stage == "active":
                return candidate
    query = " and ".join(f"tags.{k} = '{tags[k]}'" for k in ("role", "optuna_study", "optuna_storage"))
    found = tracker.client.search_runs([tracker.experiment_id], query, max_results=1,
                                       order_by=["attributes.start_time ASC"])
    if found:
        return found[0].info.run_id
    return mlflow_run(tracker, f"tune@{tracker.name}", stage_params, tags).run_id


def set_up(study: optuna.Study, name: str, tp: TuneParams, finetune_lr: float, parent: str, owner: bool) -> None:
    """Idempotent, under the study's lock: objective names, budget, the baseline, the parent run id."""
    if study.metric_names != list(OBJECTIVES):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(list(OBJECTIVES))
    attrs = study.user_attrs
    if "experiment" not in attrs:
        study.set_user_attr("experiment", name)
    if (owner or "n_trials" not in attrs) and attrs.get("n_trials") != tp.n_trials:
        study.set_user_attr("n_trials", tp.n_trials)  # the stage's process owns the budget; workers follow it
    if PARENT_RUN not in attrs:
        study.set_user_attr(PARENT_RUN, parent)
    if not any(t.user_attrs.get(BASELINE) for t in counted(study.get_trials(deepcopy=False))):
        study.enqueue_trial(baseline_params(tp, finetune_lr), user_attrs={BASELINE: True})


def tune(name: str, params: P.Params, *, storage: str | None = None, worker: bool = False,
         export_only: bool = False, study_name: str | None = None, parent_run_id: str | None = None,
         seed: int | None = None, reclaim_hint: str | None = None) -> dict | None:
    """One process of a tuning session; returns the exported metrics (None for a pure worker).

    Default (the DVC stage): join or create the study, run trials while the budget allows, wait for
    the other workers, export. ``worker``: run trials only. ``export_only``: wait and export only.
    """
    exp, tp, spec, study_name = check_inputs(name, params, storage, study_name)
    runner = None if export_only else TrialRunner(exp, tp)  # the model, the data, the validation split
    lineage = runner.lineage if runner is not None else load_snn(exp.paths.converted)[1]
    if seed is None:  # the stage is reproducible; extra workers must not replay its proposals
        seed = tp.seed if not worker else tp.seed + 1 + (os.getpid() * 7919 + time.time_ns()) % 1_000_003
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    stage_params = exp.stage_params("finetune") | {"tune": P.as_dict(tp), "study": study_name,
                                                   "storage": spec.display()}
    params_hash = P.params_hash(exp.stage_params("finetune") | {"tune": P.as_dict(tp)})
    study_tags = exp.tags(ROLE_STUDY) | {"optuna_study": study_name, "mlflow.runName": f"tune@{name}",
                                         "optuna_storage": spec.display().replace("'", "_"),
                                         "params_hash": params_hash}
    # -- side effects from here on
    storage_obj = _open(spec, create=not export_only)
    with budget_lock(spec, study_name):
        created = not study_exists(storage_obj, study_name)
        sampler = make_sampler(tp, seed)
        study = load_study(storage_obj, study_name, sampler) if export_only else \
            create_study(storage_obj, study_name, sampler)
        tracker = exp.tracker  # under the lock: first calls would race to create the MLflow experiment
        parent = parent_run(tracker, study, parent_run_id or os.environ.get(ENV_PARENT_RUN), stage_params,
                            study_tags)
        if not export_only:
            set_up(study, name, tp, exp.params.finetune.lr, parent, owner=not worker)
        try:
            reference = exp.reference(lineage["pretrain_params_hash"])
        except Exception as e:  # another machine without the pretrain outputs: trials run untagged
            print(f"warning: no reference run ({type(e).__name__}: {e}); trials are not tagged with one",
                  file=sys.stderr)
            reference = None
    print(f"tune {name}: study {study_name} on {spec.display()} ({'created' if created else 'joined'}, "
          f"sampler seed {seed})", file=sys.stderr, flush=True)
    shared = Shared(study, storage_obj, spec, tracker, reclaim_hint or f"python -m stages.tune {name} --reclaim")
    ctx = None if runner is None else Context(exp, tp, study, tracker, parent, reference, runner, stage_params)
    try:
        ran = work(shared, tp, ctx, wait=not worker)
    except BaseException as e:
        if not worker:  # the stage's process owns the parent run: say it stopped
            with contextlib.suppress(Exception):
                tracker.client.set_terminated(parent, "KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED")
        raise
    if ctx is not None:
        print(f"tune {name}: this process ran {ran} trial(s)", file=sys.stderr)
    if worker:
        return None
    paths = exp.paths
    metrics = export(study, tp, budget(shared, tp.n_trials), name, paths.plot(""), paths.metrics("tune"),
                     params_hash, lineage)
    with mlflow_run(tracker, f"tune@{name}", stage_params, study_tags, resume=parent) as mlrun:
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


def reclaim(name: str, params: P.Params, numbers: list[int] | None, *, storage: str | None = None,
            study_name: str | None = None) -> list[int]:
    """Fail running trials (``numbers``, or None: all that missed MISSED_BEATS heartbeats), close their
    MLflow runs, enqueue their params again. Returns the reclaimed numbers."""
    exp, tp, spec, study_name = check_inputs(name, params, storage, study_name)
    storage_obj = _open(spec, create=False)
    study = load_study(storage_obj, study_name)
    with budget_lock(spec, study_name):
        shared = Shared(study, storage_obj, spec, exp.tracker, "")
        now, orphaned = time.time(), MISSED_BEATS * tp.heartbeat_interval
        if numbers is None:
            targets = [t for t in running(shared) if now - last_beat(t) > orphaned]
            if not targets:
                print(f"tune {name}: no running trial has missed {MISSED_BEATS} heartbeats "
                      f"({orphaned:g} s); nothing to reclaim", file=sys.stderr)
        else:
            trials = {t.number: t for t in study.get_trials(deepcopy=False)}
            for n in numbers:
                if n not in trials or trials[n].state != optuna.trial.TrialState.RUNNING:
                    state = trials[n].state.name if n in trials else "not in the study"
                    raise ReclaimError(f"--reclaim {n}: trial {n} is {state}, not RUNNING; nothing to reclaim")
            targets = [trials[n] for n in numbers]
        done = []
        for t in targets:
            age = now - last_beat(t)
            if age <= orphaned:
                print(f"warning: trial {t.number} beat {age:.0f} s ago: if its worker is alive, it keeps running and "
                      "its result is dropped", file=sys.stderr)
            who = t.user_attrs.get("worker", "?")
            if reclaim_locked(shared, t.number, "reclaimed", f"reclaimed by {worker_name()}; its worker {who} last "
                              f"beat {age:.0f} s before"):
                done.append(t.number)
    return done
