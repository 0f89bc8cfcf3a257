"""Optuna tuning of L1 against sparsity: shared budget across processes, one MLflow run per trial, export.

A toy experiment (synthetic 8x8 data, FC2 of width 24) goes through the real prepare, pretrain and convert
stages once per module; the tests then run ``python -m stages.tune`` worker processes against a journal
file and against a PostgreSQL server started for the test, with MLflow tracking in a per-test sqlite file.
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlflow
import optuna
import pytest
from optuna.trial import TrialState

from pipeline import tuning

ROOT = Path(__file__).resolve().parents[1]
EXP = "toy"
BUDGET = 6

PARAMS = f"""
data:
  datasets:
    synthetic: {{train_size: 480, test_size: 160, shape: [1, 8, 8], classes: 4, noise: 0.15, seed: 0}}
experiments:
  {EXP}:
    dataset: synthetic
    model: {{name: fc2, width: 24}}
    seed: 0
    device: cpu
    dtype: float32
    pretrain: {{epochs: 4, batch_size: 16, lr: 0.005, eval_batch_size: 256}}
    convert: {{batch_size: 256}}
    finetune: {{epochs: 1, batch_size: 16, lr: 0.001, eval_batch_size: 256}}
    evaluate: {{}}
    sweep: {{}}
tune:
  {EXP}:
    n_trials: {BUDGET}
    epochs: 1
    train_subset: 200
    val_size: 120
    l1_min: 1.0e-4
    l1_max: 0.1
    n_startup_trials: 2
    heartbeat_interval: 1.0
    stale_after: 120.0
    wait_timeout: 120.0
"""


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A project directory with prepared data, a pretrained ReLU network and its converted SNN."""
    root = tmp_path_factory.mktemp("tune")
    (root / "params.yaml").write_text(PARAMS)
    old_cwd, old_uri = Path.cwd(), os.environ.get("MLFLOW_TRACKING_URI")
    os.chdir(root)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'setup.db'}"
    try:
        from stages import convert, prepare, pretrain

        assert prepare.main(["synthetic"]) == 0
        assert pretrain.main([EXP]) == 0
        assert convert.main([EXP]) == 0
    finally:
        os.chdir(old_cwd)
        if old_uri is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = old_uri
    return root


@pytest.fixture
def session(workspace, tmp_path, monkeypatch):
    """cwd = the workspace, MLflow tracking in a fresh copy of the set-up database (one per test)."""
    db = tmp_path / "mlflow.db"
    shutil.copy(workspace / "setup.db", db)
    uri = f"sqlite:///{db}"
    monkeypatch.chdir(workspace)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv(tuning.ENV_STORAGE, raising=False)
    monkeypatch.delenv(tuning.ENV_PARENT_RUN, raising=False)
    for f in ("pareto.json", "pareto.png", "pareto.html", "tune_trials.csv"):  # no export of an earlier test
        (workspace / "plots" / EXP / f).unlink(missing_ok=True)
    (workspace / "metrics" / EXP / "tune.json").unlink(missing_ok=True)
    return uri


def launch(args: list[str], uri: str, cwd: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}
    env |= {"MLFLOW_TRACKING_URI": uri, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
            "PYTHONPATH": str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")}
    return subprocess.Popen([sys.executable, "-m", "stages.tune", EXP, *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_all(procs: list[subprocess.Popen], timeout: float = 240) -> list[str]:
    deadline = time.monotonic() + timeout
    outputs = []
    for p in procs:
        try:
            out, _ = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        outputs.append(out)
    for p, out in zip(procs, outputs, strict=True):
        assert p.returncode == 0, out
    return outputs


def the_study(storage: str, workspace: Path) -> optuna.Study:
    spec = tuning.resolve_storage(storage, EXP)
    summaries = optuna.get_all_study_summaries(tuning.open_storage(spec))
    assert len(summaries) == 1, [s.study_name for s in summaries]
    return optuna.load_study(study_name=summaries[0].study_name, storage=tuning.open_storage(spec))


def check_study_and_runs(study: optuna.Study, uri: str) -> None:
    """Budget met exactly, no duplicated numbers, one baseline, one nested MLflow run per trial."""
    trials = study.get_trials(deepcopy=False)
    numbers = [t.number for t in trials]
    assert sorted(numbers) == list(range(BUDGET)), numbers
    assert all(t.state == TrialState.COMPLETE for t in trials), [t.state for t in trials]
    baselines = [t for t in trials if not t.params["l1_enabled"]]
    assert len(baselines) == 1 and baselines[0].user_attrs["baseline"] is True
    assert "l1" not in baselines[0].params and baselines[0].user_attrs["l1"] == 0.0
    assert all(t.params["l1_enabled"] and 1e-4 <= t.params["l1"] <= 0.1 for t in trials if t is not baselines[0])

    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name(EXP)
    parents = client.search_runs([experiment.experiment_id], f"tags.role = '{tuning.ROLE_STUDY}'")
    assert len(parents) == 1, [p.info.run_id for p in parents]
    parent = parents[0].info.run_id
    assert study.user_attrs["mlflow_parent_run_id"] == parent
    runs = client.search_runs([experiment.experiment_id], f"tags.role = '{tuning.ROLE_TRIAL}'", max_results=1000)
    per_trial = collections.Counter(int(r.data.tags["optuna_trial"]) for r in runs)
    assert per_trial == collections.Counter(numbers), per_trial
    by_number = {int(r.data.tags["optuna_trial"]): r for r in runs}
    reference = client.search_runs([experiment.experiment_id], "tags.role = 'reference'")
    assert reference
    for t in trials:
        run = by_number[t.number]
        assert run.data.tags["mlflow.parentRunId"] == parent
        assert run.data.tags["optuna_state"] == "COMPLETE" and run.info.status == "FINISHED"
        assert run.data.tags["reference_run_id"] == reference[0].info.run_id
        assert t.user_attrs["mlflow_run_id"] == run.info.run_id
        assert run.data.metrics["val_accuracy"] == pytest.approx(t.values[0])
        assert run.data.metrics["val_spikes_per_neuron"] == pytest.approx(t.values[1])


def check_export(workspace: Path, study: optuna.Study) -> dict:
    out = workspace / "plots" / EXP
    doc = json.loads((out / "pareto.json").read_text())
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = (out / "pareto.html").read_text()
    assert 'id="pareto-front"' in html and "plotly" in html.lower()
    assert (out / "tune_trials.csv").read_text().count("\n") == BUDGET + 1
    metrics = json.loads((workspace / "metrics" / EXP / "tune.json").read_text())
    front = doc["front"]
    assert front and doc["trials"]["budget"] == BUDGET and doc["trials"]["complete"] == BUDGET
    assert doc["study_name"] == study.study_name and doc["baseline"]["l1"] == 0.0
    points = [(r["val_accuracy"], r["val_spikes_per_neuron"]) for r in front]
    for i, a in enumerate(points):  # non-dominated
        assert not any(tuning.dominates(b, a) for j, b in enumerate(points) if j != i)
    for t in study.get_trials(states=(TrialState.COMPLETE,)):  # and complete: every trial is covered
        v = tuple(t.values)
        assert v in points or any(tuning.dominates(p, v) for p in points)
    assert {r["number"] for r in front} == {t.number for t in study.best_trials}
    assert all(r["test_accuracy"] is not None for r in front)
    assert "datetime" not in json.dumps(doc) and "run_id" not in json.dumps(doc)
    assert metrics["front_size"] == len(front) and metrics["trials"]["complete"] == BUDGET
    return doc


# -- the process-level guarantees --------------------------------------------------------------------


def test_two_workers_share_one_journal_file(session, workspace, tmp_path):
    storage = str(tmp_path / "optuna" / "toy.journal")
    procs = [launch(["--worker", "--storage", storage], session, workspace) for _ in range(2)]
    outputs = wait_all(procs)
    study = the_study(storage, workspace)
    check_study_and_runs(study, session)
    per_worker = collections.Counter(t.user_attrs["worker"] for t in study.trials)
    print(f"trials per worker process: {sorted(per_worker.values())}")  # usually both take part
    assert sum(per_worker.values()) == BUDGET and len(per_worker) <= 2, outputs

    params, tunes = tuning.load_params("params.yaml")
    tuning.tune(EXP, params, tunes, storage=storage, export_only=True)
    check_export(workspace, study)
    client = mlflow.MlflowClient(session)
    parent = client.get_run(study.user_attrs["mlflow_parent_run_id"])
    assert parent.info.status == "FINISHED" and "front_size" in parent.data.metrics


def _pg_binaries() -> bool:
    return any(Path(d, "initdb").exists() for d in map(str, Path("/usr/lib/postgresql").glob("*/bin"))) or \
        shutil.which("initdb") is not None


@pytest.fixture
def postgres_url():
    """A real PostgreSQL server on a free localhost port (scripts/postgres_for_tests.sh), stopped after."""
    if not _pg_binaries():
        pytest.skip("PostgreSQL server binaries not installed (apt-get install -y postgresql)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # as root the server runs as `postgres`, which must reach the directory: /tmp, not pytest's 0700 tmp_path
    directory = tempfile.mkdtemp(prefix="ttfs-pg-", dir="/tmp" if os.geteuid() == 0 else None)
    script = ROOT / "scripts" / "postgres_for_tests.sh"
    done = subprocess.run(["bash", str(script), "start", directory, str(port), "optuna"], capture_output=True,
                          text=True, timeout=120)
    if done.returncode == 3:
        shutil.rmtree(directory, ignore_errors=True)
        pytest.skip(done.stderr.strip())
    assert done.returncode == 0, done.stderr
    try:
        yield done.stdout.strip().splitlines()[-1]
    finally:
        subprocess.run(["bash", str(script), "stop", directory], capture_output=True, timeout=120)
        shutil.rmtree(directory, ignore_errors=True)


def test_stage_and_worker_share_one_postgresql_study(session, workspace, postgres_url):
    """The DVC stage's process (runs trials, waits, exports) plus one --worker, on PostgreSQL."""
    procs = [launch(["--storage", postgres_url], session, workspace),
             launch(["--worker", "--storage", postgres_url], session, workspace)]
    wait_all(procs)
    study = the_study(postgres_url, workspace)
    check_study_and_runs(study, session)
    check_export(workspace, study)
    client = mlflow.MlflowClient(session)
    assert client.get_run(study.user_attrs["mlflow_parent_run_id"]).info.status == "FINISHED"


# -- pieces ------------------------------------------------------------------------------------------


def test_storage_resolution(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(tuning.ENV_STORAGE, raising=False)
    default = tuning.resolve_storage(None, "exp")
    assert default == tuning.StorageSpec("journal", str(tmp_path / "optuna" / "exp.journal"))
    monkeypatch.setenv(tuning.ENV_STORAGE, "studies/x.journal")
    assert tuning.resolve_storage(None, "exp").target == str(tmp_path / "studies" / "x.journal")
    url = "postgresql://user:secret@db.example:5432/optuna"
    spec = tuning.resolve_storage(url, "exp")  # the argument beats the environment
    assert spec.kind == "rdb" and spec.dialect == "postgresql"
    assert spec.target == url.replace("postgresql://", "postgresql+psycopg2://")  # SQLAlchemy 2.1 wants psycopg 3
    assert spec.display() == "postgresql+psycopg2://user:***@db.example:5432/optuna"
    assert tuning.resolve_storage("file:///abs/s.journal", "exp") == tuning.StorageSpec("journal", "/abs/s.journal")


def test_tune_params_are_validated(tmp_path):
    base = PARAMS.split("\ntune:")[0] + "\n"
    (tmp_path / "p.yaml").write_text(base + f"tune:\n  {EXP}: {{n_trials: '8', l1_max: '1e-3'}}\n")
    _, tunes = tuning.load_params(tmp_path / "p.yaml")
    assert tunes[EXP].n_trials == 8 and tunes[EXP].l1_max == 1e-3  # dvc exp run -S strings are coerced
    for bad, message in ((f"{EXP}: {{l1_min: 1.0, l1_max: 0.1}}", "tune.toy.l1_min"),
                         (f"{EXP}: {{trials: 3}}", "unknown key"),
                         ("other: {}", "no experiment")):
        (tmp_path / "p.yaml").write_text(base + f"tune:\n  {bad}\n")
        with pytest.raises(tuning.P.ParamsError, match=message):
            tuning.load_params(tmp_path / "p.yaml")
    # one place only: a tune section inside an experiment is an unknown key there
    nested = base.replace("    evaluate: {}", "    evaluate: {}\n    tune: {n_trials: 5}")
    (tmp_path / "p.yaml").write_text(nested)
    with pytest.raises(tuning.P.ParamsError, match=f"experiments.{EXP}.tune: unknown key"):
        tuning.load_params(tmp_path / "p.yaml")


def test_budget_stale_trials_and_baseline(tmp_path):
    """The budget counts every trial but reaped ones; a stale trial is failed and its params retried."""
    spec = tuning.StorageSpec("journal", str(tmp_path / "s.journal"))
    tp = tuning.TuneParams(n_trials=3, n_startup_trials=0)
    study, created = tuning.open_study(tuning.open_storage(spec), "s", tuning.make_sampler(tp, 0))
    assert created and not tuning.open_study(tuning.open_storage(spec), "s", tuning.make_sampler(tp, 1))[1]
    for _ in range(2):
        study.enqueue_trial(tuning.baseline_params(tp, 1e-3), user_attrs={"baseline": True}, skip_if_exists=True)
    first = tuning.next_trial(study, spec, tp.n_trials, tp.stale_after)
    assert tuning.suggest(first, tp, 1e-3) == (0.0, 1e-3)  # the enqueued baseline comes first, once
    study.tell(first, [0.9, 0.5])
    second = tuning.next_trial(study, spec, tp.n_trials, tp.stale_after)
    l1, _ = tuning.suggest(second, tp, 1e-3)
    assert second.params["l1_enabled"] and tp.l1_min <= l1 <= tp.l1_max  # sampled trials always use L1
    third = tuning.next_trial(study, spec, tp.n_trials, tp.stale_after)
    tuning.suggest(third, tp, 1e-3)
    assert tuning.next_trial(study, spec, tp.n_trials, tp.stale_after) is None  # budget spent
    # the worker of `second` dies: after stale_after its trial is failed and its params come back
    assert tuning.reap_stale(study, tp.stale_after, now=time.time() + tp.stale_after + 1) == [second.number,
                                                                                             third.number]
    retry = tuning.next_trial(study, spec, tp.n_trials, tp.stale_after)
    assert retry is not None and tuning.suggest(retry, tp, 1e-3)[0] == l1
    assert retry.user_attrs["retry_of"] == second.number
    stale = study.get_trials(states=(TrialState.FAIL,))
    assert [t.user_attrs[tuning.EXCLUDED] for t in stale] == ["stale", "stale"]


def test_summary_front_and_target():
    study = optuna.create_study(directions=list(tuning.DIRECTIONS))
    dist = {"l1_enabled": optuna.distributions.CategoricalDistribution([False, True]),
            "l1": optuna.distributions.FloatDistribution(1e-6, 1e-2, log=True)}
    points = [(None, 0.900, 0.45), (1e-5, 0.901, 0.40), (1e-4, 0.895, 0.18), (1e-3, 0.860, 0.05),
              (3e-4, 0.870, 0.20)]  # the last one is dominated by 1e-4
    for l1, acc, spikes in points:
        params = {"l1_enabled": False} if l1 is None else {"l1_enabled": True, "l1": l1}
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions={k: dist[k] for k in params}, values=[acc, spikes],
            user_attrs={"l1": l1 or 0.0, "lr": 1e-3, "test_accuracy": acc - 0.002, "test_spikes_per_neuron": spikes}))
    summary = tuning.summarise(study, tuning.TuneParams(), budget=5)
    assert [r["number"] for r in summary["front"]] == [3, 2, 1]  # sorted by spikes
    assert summary["baseline"]["number"] == 0 and summary["baseline"]["l1"] == 0.0
    val = summary["target"]["val"]
    assert val["best_accuracy"] == 0.901 and val["sparsest_within_drop"]["trial"] == 2 and val["met"]
    assert summary["target"]["test"]["met"]
    assert not tuning.summarise(study, tuning.TuneParams(target_spikes=0.1), 5)["target"]["val"]["met"]


def test_interrupted_trial_is_given_back(session, workspace, tmp_path):
    """Ctrl-C (or SIGTERM) during a trial: FAIL, excluded from the budget, params enqueued again, run KILLED."""
    from pipeline.runner import Experiment

    class Interrupted:
        def sizes(self):
            return {}

        def run(self, l1, lr, on_epoch=None):
            raise KeyboardInterrupt

    params, tunes = tuning.load_params("params.yaml")
    tp = tunes[EXP]
    spec = tuning.StorageSpec("journal", str(tmp_path / "s.journal"))
    study, _ = tuning.open_study(tuning.open_storage(spec), "s", tuning.make_sampler(tp, 0))
    tracker = tuning.open_tracker(EXP)
    tags = {"role": tuning.ROLE_STUDY, "optuna_study": "s", "optuna_storage": spec.display()}
    parent = tuning.parent_run(tracker, study, None, {}, tags)
    assert tuning.parent_run(tracker, study, None, {}, tags) == parent  # found again by tag
    ctx = tuning.Context(Experiment(EXP, params.experiment(EXP)), tp, spec, study, tracker, parent, None,
                         Interrupted(), {})
    trial = tuning.next_trial(study, spec, tp.n_trials, tp.stale_after)
    with pytest.raises(KeyboardInterrupt):
        tuning.run_trial(ctx, trial)
    failed = study.get_trials(states=(TrialState.FAIL,))
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert [t.user_attrs[tuning.EXCLUDED] for t in failed] == ["interrupted"]
    assert len(waiting) == 1 and waiting[0].user_attrs["retry_of"] == trial.number
    retry = tuning.next_trial(study, spec, tp.n_trials, tp.stale_after)
    assert tuning.suggest(retry, tp, 1e-3)[0] == failed[0].user_attrs["l1"]
    run = tracker.client.get_run(failed[0].user_attrs["mlflow_run_id"])
    assert run.info.status == "KILLED" and run.data.tags["optuna_state"] == "FAIL"


def test_surplus_trial_without_a_lock(tmp_path, monkeypatch):
    """Storages without a lock: a trial that another worker's ask pushed over the budget is given up."""
    import contextlib

    @contextlib.contextmanager
    def no_lock(spec, name):
        yield False

    monkeypatch.setattr(tuning, "storage_lock", no_lock)
    spec = tuning.StorageSpec("journal", str(tmp_path / "s.journal"))
    tp = tuning.TuneParams(n_trials=2)
    study, _ = tuning.open_study(tuning.open_storage(spec), "s", tuning.make_sampler(tp, 0))
    other, _ = tuning.open_study(tuning.open_storage(spec), "s", tuning.make_sampler(tp, 1))
    assert tuning.next_trial(study, spec, tp.n_trials, tp.stale_after).number == 0
    ask = study.ask
    monkeypatch.setattr(study, "ask", lambda: (other.ask(), ask())[1])  # the other worker wins the race
    assert tuning.next_trial(study, spec, tp.n_trials, tp.stale_after) is None
    trials = study.get_trials()
    assert [t.number for t in trials] == [0, 1, 2]
    assert trials[2].state == TrialState.FAIL and trials[2].user_attrs[tuning.EXCLUDED] == "surplus"
    assert len(tuning._counted(trials)) == tp.n_trials


def test_baseline_learning_rate_stays_in_the_tuned_range():
    tuned = tuning.TuneParams(tune_lr=True, lr_min=2e-5, lr_max=1e-4)
    assert tuning.baseline_params(tuned, 1e-3) == {"l1_enabled": False, "lr": 1e-4}
    assert tuning.baseline_params(tuned, 5e-5) == {"l1_enabled": False, "lr": 5e-5}
    assert tuning.baseline_params(tuning.TuneParams(), 1e-3) == {"l1_enabled": False}
