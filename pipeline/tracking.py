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
from pathlib import Path
from typing import Any

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # offline machines: no phoning home per run

from mlflow import MlflowClient  # noqa: E402
from mlflow.entities import Metric, Param, RunTag  # noqa: E402

from .params import flatten  # noqa: E402

REFERENCE = "reference"
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
