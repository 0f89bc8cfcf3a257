"""MLflow bookkeeping: one MLflow experiment per pipeline experiment, one run per stage execution.

Run ids never enter DVC-tracked files (they would change dvc.lock on every identical rerun): the
reference ReLU run is found again by its tags (role=reference, params_hash). Storage paths are
absolute, because ``dvc exp run --temp``/``--queue`` execute in a throwaway copy of the repository.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
import warnings
from pathlib import Path
from typing import Any

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # offline machines: no phoning home per run

from mlflow import MlflowClient  # noqa: E402
from mlflow.entities import Metric, Param, RunTag  # noqa: E402

from .params import flatten  # noqa: E402

REFERENCE = "reference"
#: The headline metrics, logged under these names on every reference and SNN run that has them, so that
#: the MLflow runs table and compare view line a ReLU run up with its SNN runs (README "Looking at results").
HEADLINE = ("test_accuracy", "test_loss", "spikes_per_neuron", "agreement", "energy_ratio", "latency")
# MLflow 3 opens an experiment in its GenAI (traces) view unless it is marked as model development
EXPERIMENT_KIND, MODEL_DEVELOPMENT = "mlflow.experimentKind", "custom_model_development"
_BATCH = 900  # MLflow accepts at most 1000 entries per log_batch


def project_root() -> Path:
    """The repository root; for DVC's temporary experiment copies (.dvc/tmp/exps/...) the real one."""
    cwd = Path.cwd().resolve()
    parts = cwd.parts
    for i in range(len(parts) - 3):
        if parts[i: i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    return cwd


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{project_root() / 'mlflow.db'}"


def artifact_location(uri: str, experiment: str) -> str | None:
    """Next to a sqlite database: <db dir>/mlartifacts/<experiment>; a server decides for itself."""
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts" / experiment).as_uri()
    return None


#: Section keys that are the shared hyperparameter under another name: a sweep setting fine-tunes for
#: ``finetune_epochs`` at ``finetune_lr``, logged as ``epochs`` and ``lr`` like the finetune run's.
ALIASES = {"sweep": {"finetune_lr": "lr", "finetune_epochs": "epochs"}}


def run_params(stage_params: dict, section: str, override: dict | None = None) -> dict:
    """The params to log on a stage's run: the experiment-level keys and the stage section's own keys
    without the section prefix (``lr``, not ``pretrain.lr``), so that runs of different stages share
    names; a section key that clashes with an experiment-level one keeps its prefix. Keys of
    :data:`ALIASES` take the shared name; ``override`` (unprefixed) replaces values last, e.g. a trial's
    own ``lr``."""
    own = stage_params.get(section)
    if not isinstance(own, dict):
        return dict(stage_params) | (override or {})
    shared = {k: v for k, v in stage_params.items() if k != section}
    aliases = ALIASES.get(section, {})
    named = {aliases.get(k, k): v for k, v in own.items()}
    return shared | {(f"{section}.{k}" if k in shared else k): v for k, v in named.items()} | (override or {})


def registered_model_name(experiment: str) -> str:
    """The model registry entry of an experiment's final SNN."""
    return f"{experiment}-snn"


def git_commit(root: Path) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


class Tracker:
    """Thin wrapper over MlflowClient for one pipeline experiment."""

    def __init__(self, experiment: str):
        self.uri = tracking_uri()
        self.client = MlflowClient(self.uri)
        self.name = experiment
        found = self.client.get_experiment_by_name(experiment)
        if found is None:
            self.experiment_id = self.client.create_experiment(
                experiment, artifact_location(self.uri, experiment), tags={EXPERIMENT_KIND: MODEL_DEVELOPMENT})
        else:
            self.experiment_id = found.experiment_id
            if found.lifecycle_stage == "deleted":
                self.client.restore_experiment(found.experiment_id)
            if found.tags.get(EXPERIMENT_KIND) != MODEL_DEVELOPMENT:
                self.client.set_experiment_tag(self.experiment_id, EXPERIMENT_KIND, MODEL_DEVELOPMENT)

    def find_reference(self, params_hash: str) -> str | None:
        """Id of the latest finished reference (ReLU pretrain) run with these params, if any."""
        runs = self.client.search_runs(
            [self.experiment_id],
            f"tags.role = '{REFERENCE}' and tags.params_hash = '{params_hash}' and attributes.status = 'FINISHED'",
            max_results=1, order_by=["attributes.start_time DESC"],
        )
        return runs[0].info.run_id if runs else None

    def run(self, stage: str, params: dict, tags: dict[str, str], resume: str | None = None) -> StageRun:
        self.close_orphans(stage)
        return StageRun(self, stage, params, tags, resume)

    def close_orphans(self, stage: str) -> list[str]:
        """Mark KILLED the RUNNING runs of ``stage`` whose process on this host is gone (kill -9, power loss).

        Runs of other hosts are left alone: their process cannot be checked from here.
        """
        runs = self.client.search_runs(
            [self.experiment_id], f"tags.dvc_stage = '{stage}' and attributes.status = 'RUNNING'", max_results=100)
        closed = []
        for run in runs:
            tags = run.data.tags
            if tags.get("host") == socket.gethostname() and not _alive(int(tags.get("pid", "0") or 0)):
                self.client.set_tag(run.info.run_id, "orphaned", "process gone; closed by the next run of the stage")
                self.client.set_terminated(run.info.run_id, "KILLED")
                closed.append(run.info.run_id)
        return closed


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class StageRun:
    """Context manager for one stage execution; an exception marks the run FAILED (KILLED on Ctrl-C)."""

    def __init__(self, tracker: Tracker, stage: str, params: dict, tags: dict[str, str], resume: str | None):
        self.client = tracker.client
        self.experiment_id = tracker.experiment_id
        self.stage = stage
        root = project_root()
        tags = {
            "git_commit": (commit := git_commit(root)),
            "mlflow.source.git.commit": commit,
            "dvc_stage": stage,
            "mlflow.runName": stage + (f" ({os.environ['DVC_EXP_NAME']})" if os.environ.get("DVC_EXP_NAME") else ""),
            "host": socket.gethostname(),
            "pid": str(os.getpid()),
            "mlflow.source.name": f"stages/{stage.split('@')[0]}.py",
            **({"dvc_exp_name": os.environ["DVC_EXP_NAME"]} if os.environ.get("DVC_EXP_NAME") else {}),
            **({"profile": os.environ["TTFS_PROFILE"]} if os.environ.get("TTFS_PROFILE") else {}),
            **tags,
        }
        self.run_id = None
        if resume:
            try:
                if self.client.get_run(resume).info.experiment_id == tracker.experiment_id:
                    self.run_id = resume
                    self.client.update_run(resume, "RUNNING")
            except Exception:  # a different/emptied tracking store: start a new run
                self.run_id = None
        self.resumed = self.run_id is not None
        if self.run_id is None:
            run = self.client.create_run(tracker.experiment_id, tags=tags, run_name=tags["mlflow.runName"])
            self.run_id = run.info.run_id
            flat = flatten(params)
            self.log_batch(params=[Param(k, str(v)[:6000]) for k, v in flat.items()])
        else:
            self.log_batch(tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_batch(self, metrics=(), params=(), tags=()) -> None:
        metrics, params, tags = list(metrics), list(params), list(tags)
        for i in range(0, max(len(metrics), len(params), len(tags), 1), _BATCH):
            self.client.log_batch(self.run_id, metrics[i: i + _BATCH], params[i: i + _BATCH], tags[i: i + _BATCH])

    def log_metrics(self, values: dict[str, Any], step: int = 0) -> None:
        """Numeric leaves of ``values`` (nested dicts flattened, lists indexed) as metrics at ``step``."""
        now = int(time.time() * 1000)
        flat: dict[str, Any] = {}
        for key, value in flatten(values).items():
            if isinstance(value, (list, tuple)):
                flat.update({f"{key}.{i}": v for i, v in enumerate(value)})
            else:
                flat[key] = value
        metrics = [Metric(k, float(v), now, step) for k, v in flat.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)]
        self.log_batch(metrics=metrics)

    def log_headline(self, values: dict[str, Any], step: int = 0) -> dict[str, float]:
        """The :data:`HEADLINE` metrics among ``values`` (None and unknown names dropped), at ``step``."""
        headline = {k: float(v) for k, v in values.items()
                    if k in HEADLINE and isinstance(v, (int, float)) and not isinstance(v, bool)}
        self.log_metrics(headline, step=step)
        return headline

    def log_dataset(self, name: str, digest: str, source: str, context: str = "train") -> None:
        """The prepared dataset as a run input (the Inputs of the run page), identified by its checksum."""
        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.entities import DatasetInput, InputTag

        with warnings.catch_warnings():  # a local path matches the local artifact source twice: harmless
            warnings.simplefilter("ignore", UserWarning)
            src = resolve_dataset_source(source)
        dataset = MetaDataset(source=src, name=name, digest=digest[:36])  # MLflow stores at most 36 characters
        self.client.log_inputs(self.run_id, [DatasetInput(dataset._to_mlflow_entity(),
                                                          [InputTag("mlflow.data.context", context)])])

    def register_model(self, name: str, artifact_path: str, description: str = "") -> str:
        """A new version of registered model ``name`` whose source is this run's artifact ``artifact_path``;
        returns the version number."""
        from mlflow.exceptions import MlflowException

        try:
            self.client.create_registered_model(name, description=description or None)
        except MlflowException as e:
            if e.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        source = f"{self.client.get_run(self.run_id).info.artifact_uri.rstrip('/')}/{artifact_path}"
        version = self.client.create_model_version(name, source, run_id=self.run_id,
                                                   tags={"dvc_stage": self.stage})
        return version.version

    def set_tags(self, tags: dict[str, Any]) -> None:
        self.log_batch(tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def __enter__(self) -> StageRun:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            status = "FINISHED"
        elif issubclass(exc_type, KeyboardInterrupt):
            status = "KILLED"
        else:
            status = "FAILED"
            self.set_tags({"error": f"{exc_type.__name__}: {exc}"[:5000]})
        self.client.set_terminated(self.run_id, status)


class NullRun:
    """A :class:`StageRun` that records nothing: the MLflow run of a data-parallel rank other than 0."""

    run_id = None
    experiment_id = None
    resumed = False

    def log_batch(self, metrics=(), params=(), tags=()) -> None:
        pass

    def log_metrics(self, values: dict[str, Any], step: int = 0) -> None:
        pass

    def log_headline(self, values: dict[str, Any], step: int = 0) -> dict[str, float]:
        return {}

    def log_dataset(self, name: str, digest: str, source: str, context: str = "train") -> None:
        pass

    def register_model(self, name: str, artifact_path: str, description: str = "") -> str:
        return ""

    def set_tags(self, tags: dict[str, Any]) -> None:
        pass

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        pass

    def __enter__(self) -> NullRun:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        return None
