"""The MLflow run behind each result, found by the params hash the result file carries.

Every stage tags its run with ``dvc_stage`` (``<stage>@<experiment>``) and ``params_hash``, and writes
the same hash into its result file; the report looks the run up by both, in the MLflow experiment of
the pipeline experiment, and prints its id as a link to the run's page in the MLflow UI (:func:`ui_base`).
Nothing is created in the tracking store: a missing sqlite file is not opened. An unreadable store
degrades every id to n/a with the reason.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

NA = "n/a"


@dataclass(frozen=True)
class RunKey:
    """What identifies a stage's run: MLflow experiment, ``tags.dvc_stage`` and ``tags.params_hash``."""

    experiment: str
    dvc_stage: str
    params_hash: str


#: Where ``mlflow ui`` / ``mlflow server`` listens unless told otherwise: the base of the report's run links.
DEFAULT_UI = "http://127.0.0.1:5000"
#: Environment variable with the base URL of the MLflow UI the report links to (see :func:`ui_base`).
ENV_UI = "TTFS_MLFLOW_UI"


def ui_base(tracking_uri: str | None) -> str:
    """The MLflow UI the run links point at: $TTFS_MLFLOW_UI, else the tracking URI when it is a server
    (http/https: the tracking server serves the UI), else ``mlflow ui``'s default address."""
    explicit = os.getenv(ENV_UI)
    if explicit:
        return explicit.rstrip("/")
    if tracking_uri and tracking_uri.startswith(("http://", "https://")):
        return tracking_uri.rstrip("/")
    return DEFAULT_UI


@dataclass(frozen=True)
class RunRef:
    run_id: str | None
    note: str = ""
    experiment_id: str | None = None

    def url(self, base: str) -> str | None:
        """The run's page in the MLflow UI at ``base`` (None without a run)."""
        if not self.run_id or self.experiment_id is None:
            return None
        return f"{base}/#/experiments/{self.experiment_id}/runs/{self.run_id}"

    def text(self, base: str | None = None) -> str:
        """The run id (a Markdown link to its MLflow page when ``base`` is given), and the note."""
        url = self.url(base) if base else None
        head = NA if not self.run_id else (f"[`{self.run_id}`]({url})" if url else f"`{self.run_id}`")
        return head + (f" ({self.note})" if self.note else "")


NO_RUN = RunRef(None)


def default_tracking_uri(root: Path) -> str:
    """As pipeline.tracking: $MLFLOW_TRACKING_URI, else <root>/mlflow.db."""
    return os.getenv("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(root).resolve() / 'mlflow.db'}"


def _missing_database(uri: str, root: Path) -> str | None:
    if not uri.startswith("sqlite:///"):
        return None
    db = Path(uri.removeprefix("sqlite:///"))
    if db.is_file():
        return None
    if db.resolve().is_relative_to(root.resolve()):
        db = db.resolve().relative_to(root.resolve())  # no machine-specific path in the report
    return f"no MLflow tracking database at {db.as_posix()}"


def _lookup(client, experiment_ids: dict[str, str | None], key: RunKey) -> RunRef:
    """The latest FINISHED top-level run with the key's tags; else the latest one, with its state."""
    if key.experiment not in experiment_ids:
        found = client.get_experiment_by_name(key.experiment)
        experiment_ids[key.experiment] = None if found is None else found.experiment_id
    exp_id = experiment_ids[key.experiment]
    if exp_id is None:
        return NO_RUN
    runs = client.search_runs([exp_id], f"tags.dvc_stage = '{key.dvc_stage}' and tags.params_hash = "
                                        f"'{key.params_hash}'", max_results=200,
                              order_by=["attributes.start_time DESC"])
    runs = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    finished = [r for r in runs if r.info.status == "FINISHED"]
    if finished:
        return RunRef(finished[0].info.run_id, experiment_id=exp_id)
    return RunRef(runs[0].info.run_id, f"latest run, {runs[0].info.status}", exp_id) if runs else NO_RUN


def find_runs(uri: str | None, keys: dict[tuple[str, str], RunKey],
              root: Path) -> tuple[dict[tuple[str, str], RunRef], str | None]:
    """({(experiment, stage): RunRef}, why ids are missing or None); ``uri`` None: not looked up."""
    if uri is None:
        return {}, "run ids not looked up (--no-mlflow)"
    problem = _missing_database(uri, root)
    if problem:
        return {}, problem
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException
    from sqlalchemy.exc import SQLAlchemyError

    experiment_ids: dict[str, str | None] = {}
    try:
        client = MlflowClient(uri)
        return {k: _lookup(client, experiment_ids, key) for k, key in keys.items()}, None
    except (MlflowException, SQLAlchemyError, OSError) as e:
        return {}, f"MLflow tracking store not readable ({type(e).__name__}: {str(e)[:200]})"
