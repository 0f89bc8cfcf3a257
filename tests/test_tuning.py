"""Optuna tuning of L1 against sparsity: shared budget across processes, one MLflow run per trial, export.

A toy experiment (synthetic 8x8 data, FC2 of width 24) goes through the real prepare, pretrain and convert
stages once per module; the tests then run ``python -m stages.tune`` worker processes against a journal
file and against a PostgreSQL server started for the test, with MLflow tracking in a per-test sqlite file.
Workers are killed (SIGKILL, SIGTERM) mid-trial to check that no trial and no MLflow run is left behind.
"""

from __future__ import annotations

import collections
import functools
import json
import math
import os
import queue
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import mlflow
import optuna
import pytest
import torch
from optuna.trial import TrialState

from pipeline import params as P
from pipeline import tuning
from pipeline.runner import Experiment
from pipeline.tracking import Tracker
from pipeline.tuning import objective, session, space, storage, workers

ROOT = Path(__file__).resolve().parents[1]
EXP = "toy"
BUDGET = 6

PARAMS = f"""
data:
  datasets:
    synthetic: {{train_size: 600, val_size: 120, test_size: 160, shape: [1, 8, 8], classes: 4, noise: 0.15, seed: 0}}
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
    l1_min: 1.0e-4
    l1_max: 0.1
    n_startup_trials: 2
    heartbeat_interval: 1.0
    stale_after: 120.0
    wait_timeout: 120.0
"""


def variant(workspace: Path, name: str, **tune: object) -> str:
    """A params file next to params.yaml with some tune keys replaced; returns its name."""
    text = PARAMS
    for key, value in tune.items():
        old = next(line for line in text.splitlines() if line.strip().startswith(f"{key}:"))
        text = text.replace(old, f"    {key}: {value}")
    (workspace / name).write_text(text)
    return name


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
def session_uri(workspace, tmp_path, monkeypatch):
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


def child_env(uri: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}
    return env | {"MLFLOW_TRACKING_URI": uri, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                  "PYTHONPATH": str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")}


def launch(args: list[str], uri: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "stages.tune", EXP, *args], cwd=cwd, env=child_env(uri),
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


def open_the_study(target: str) -> optuna.Study:
    """The one study in the storage ``target`` (a fresh storage object: sees other processes' writes)."""
    store = storage.open_storage(tuning.resolve_storage(target, EXP))
    summaries = optuna.get_all_study_summaries(store)
    assert len(summaries) == 1, [s.study_name for s in summaries]
    return optuna.load_study(study_name=summaries[0].study_name, storage=store)


def wait_for_running_trial(target: str, number: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Poll the study until trial ``number`` runs with its MLflow run opened (then its worker can be killed)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the worker ended before trial {number} ran: {proc.communicate()[0]}")
        try:
            t = {t.number: t for t in open_the_study(target).get_trials(deepcopy=False)}.get(number)
        except AssertionError:  # no study yet
            t = None
        if t is not None and t.state == TrialState.RUNNING and objective.RUN_ID in t.user_attrs:
            time.sleep(0.3)  # into the training, away from the writes around its start (a SIGKILL during a
            return  # journal write leaves Optuna's journal lock file behind: 30 s until others break it)
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"trial {number} never ran: {proc.communicate()[0]}")


def mlflow_runs(uri: str) -> list:
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name(EXP)
    return client.search_runs([experiment.experiment_id], "", max_results=1000)


def check_study_and_runs(study: optuna.Study, uri: str, target: str) -> None:
    """Budget met exactly, no duplicated numbers, one baseline, one nested MLflow run per trial."""
    trials = study.get_trials(deepcopy=False)
    numbers = [t.number for t in trials]
    assert sorted(numbers) == list(range(BUDGET)), numbers
    assert all(t.state == TrialState.COMPLETE for t in trials), [t.state for t in trials]
    baselines = [t for t in trials if t.user_attrs.get(space.BASELINE)]
    assert len(baselines) == 1 and baselines[0].params == {} and baselines[0].user_attrs["l1"] == 0.0
    sampled = [t for t in trials if t is not baselines[0]]
    assert all(set(t.params) == {"l1"} and 1e-4 <= t.params["l1"] <= 0.1 for t in sampled), [t.params for t in sampled]
    assert study.metric_names == ["val_accuracy", "val_spikes_per_neuron"]

    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name(EXP)
    parents = client.search_runs([experiment.experiment_id], f"tags.role = '{tuning.session.ROLE_STUDY}'")
    assert len(parents) == 1, [p.info.run_id for p in parents]
    parent = parents[0].info.run_id
    assert study.user_attrs[session.PARENT_RUN] == parent
    assert parents[0].data.tags["optuna_study"] == study.study_name
    assert parents[0].data.tags["optuna_storage"] == tuning.resolve_storage(target, EXP).display()
    runs = client.search_runs([experiment.experiment_id], f"tags.role = '{objective.ROLE_TRIAL}'", max_results=1000)
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
        assert t.user_attrs[objective.RUN_ID] == run.info.run_id
        assert run.data.metrics["val_accuracy"] == pytest.approx(t.values[0])
        assert run.data.metrics["val_spikes_per_neuron"] == pytest.approx(t.values[1])
        # shared hyperparameters unprefixed, with the values the trial trained with (compare view)
        assert float(run.data.params["lr"]) == pytest.approx(t.user_attrs["lr"])
        assert float(run.data.params["l1"]) == pytest.approx(t.user_attrs["l1"])
        assert {"seed", "epochs", "batch_size", "model.name"} <= set(run.data.params)
        assert not any(k.startswith("finetune.") for k in run.data.params), sorted(run.data.params)


def check_export(workspace: Path, study: optuna.Study, budget: int = BUDGET) -> dict:
    out = workspace / "plots" / EXP
    doc = json.loads((out / "pareto.json").read_text())
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = (out / "pareto.html").read_text()
    assert 'id="pareto-front"' in html and "plotly" in html.lower()
    assert (out / "tune_trials.csv").read_text().count("\n") == budget + 1
    metrics = json.loads((workspace / "metrics" / EXP / "tune.json").read_text())
    front = doc["front"]
    assert front and doc["trials"]["budget"] == budget and doc["trials"]["complete"] == budget
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
    assert metrics["front_size"] == len(front) and metrics["trials"]["complete"] == budget
    return doc


# -- the process-level guarantees --------------------------------------------------------------------


def test_two_workers_share_one_journal_file(session_uri, workspace, tmp_path):
    target = str(tmp_path / "optuna" / "toy.journal")
    procs = [launch(["--worker", "--storage", target], session_uri, workspace) for _ in range(2)]
    outputs = wait_all(procs)
    study = open_the_study(target)
    check_study_and_runs(study, session_uri, target)
    per_worker = collections.Counter(t.user_attrs[objective.WORKER] for t in study.trials)
    print(f"trials per worker process: {sorted(per_worker.values())}")  # usually both take part
    assert sum(per_worker.values()) == BUDGET and len(per_worker) <= 2, outputs

    tuning.tune(EXP, P.load("params.yaml"), storage=target, export_only=True)
    check_export(workspace, study)
    client = mlflow.MlflowClient(session_uri)
    parent = client.get_run(study.user_attrs[session.PARENT_RUN])
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


def test_stage_and_worker_share_one_postgresql_study(session_uri, workspace, postgres_url):
    """The DVC stage's process (runs trials, waits, exports) plus one --worker, on PostgreSQL."""
    procs = [launch(["--storage", postgres_url], session_uri, workspace),
             launch(["--worker", "--storage", postgres_url], session_uri, workspace)]
    wait_all(procs)
    study = open_the_study(postgres_url)
    check_study_and_runs(study, session_uri, postgres_url)
    check_export(workspace, study)
    client = mlflow.MlflowClient(session_uri)
    assert client.get_run(study.user_attrs[session.PARENT_RUN]).info.status == "FINISHED"


def test_killed_worker_is_awaited_with_a_progress_line_then_reclaimed(session_uri, workspace, tmp_path):
    """SIGKILL mid-trial leaves a RUNNING trial. The stage says what it waits for, until when, and how to
    reclaim it; the printed command fails the trial, closes its MLflow run and re-enqueues its params;
    the stage runs them and the study ends with exactly n_trials counted trials and no MLflow run RUNNING."""
    params = variant(workspace, "kill.yaml", n_trials=2, epochs=50, train_subset="null")  # ~2 s trials
    target = str(tmp_path / "kill.journal")
    dead = launch(["--worker", "--params", params, "--storage", target], session_uri, workspace)
    wait_for_running_trial(target, 1, dead)
    dead.kill()
    dead.wait()
    killed = open_the_study(target).trials[1]
    assert killed.state == TrialState.RUNNING, "the trial ended before the kill: make it longer"

    stage = launch(["--params", params, "--storage", target], session_uri, workspace)
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(line) for line in stage.stdout], daemon=True)
    reader.start()
    seen, deadline = [], time.monotonic() + 90
    while not any("waiting for trial 1" in line for line in seen):
        try:
            seen.append(lines.get(timeout=max(0.1, deadline - time.monotonic())))
        except queue.Empty:
            stage.kill()
            raise AssertionError("the stage never said what it waits for:\n" + "".join(seen)) from None
    line = next(line for line in seen if "waiting for trial 1" in line)
    host = killed.user_attrs[objective.WORKER].rpartition(":")[0]
    assert f"(worker pid {dead.pid} on host {host}, last heartbeat " in line and ") until " in line, line
    command = line.split("reclaim it now with: ", 1)[1].strip()
    assert command.startswith(f"python -m stages.tune {EXP} --params kill.yaml --storage ") and \
        command.endswith("--reclaim 1"), command
    argv = shlex.split(command)
    done = subprocess.run([sys.executable, *argv[1:]], cwd=workspace, env=child_env(session_uri),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    stage.wait(timeout=180)
    reader.join(timeout=10)
    rest = "".join(seen) + "".join(lines.get_nowait() for _ in range(lines.qsize()))
    print(rest)  # shown with pytest -s
    assert stage.returncode == 0, rest

    study = open_the_study(target)
    trials = study.get_trials(deepcopy=False)
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE], rest
    assert trials[1].user_attrs[workers.EXCLUDED] == "reclaimed"
    assert trials[2].user_attrs[workers.RETRY_OF] == 1 and trials[2].params == trials[1].params
    assert len(workers.counted(trials)) == 2
    runs = mlflow_runs(session_uri)
    assert not [r.info.run_id for r in runs if r.info.status == "RUNNING"]
    dead_run = next(r for r in runs if r.info.run_id == trials[1].user_attrs[objective.RUN_ID])
    assert dead_run.info.status == "FAILED" and "reclaimed by" in dead_run.data.tags["error"]
    assert dead_run.data.tags["optuna_state"] == "FAIL"
    doc = check_export(workspace, study, budget=2)
    assert doc["trials"]["excluded"] == 1 and doc["trials"]["failed"] == 0


def test_sigterm_fails_the_trial_kills_its_run_and_exits_130(session_uri, workspace, tmp_path):
    params = variant(workspace, "term.yaml", epochs=50, train_subset="null")
    target = str(tmp_path / "term.journal")
    worker = launch(["--worker", "--params", params, "--storage", target], session_uri, workspace)
    wait_for_running_trial(target, 0, worker)
    worker.send_signal(signal.SIGTERM)
    out, _ = worker.communicate(timeout=60)
    assert worker.returncode == 130, out
    assert "interrupted (SIGTERM)" in out
    trials = open_the_study(target).get_trials(deepcopy=False)
    assert trials[0].state == TrialState.FAIL and trials[0].user_attrs[workers.EXCLUDED] == "interrupted"
    assert trials[1].state == TrialState.WAITING and trials[1].user_attrs[workers.RETRY_OF] == 0
    assert trials[1].user_attrs[space.BASELINE] is True  # the baseline comes back as the baseline
    run = mlflow.MlflowClient(session_uri).get_run(trials[0].user_attrs[objective.RUN_ID])
    assert run.info.status == "KILLED" and "interrupted by SIGTERM" in run.data.tags["error"]
    assert not [r.info.run_id for r in mlflow_runs(session_uri)
                if r.info.status == "RUNNING" and r.data.tags.get("role") == objective.ROLE_TRIAL]


def test_params_error_creates_no_study_and_no_run(session_uri, workspace, tmp_path, capsys):
    """A tune section that only the data can refute (a subset larger than the training split) fails before any
    side effect."""
    from stages import tune as stage

    params = variant(workspace, "bad.yaml", train_subset=100000)
    target = tmp_path / "bad.journal"
    previous = signal.getsignal(signal.SIGTERM)
    try:
        assert stage.main([EXP, "--params", params, "--storage", str(target)]) == 2
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert "tune.train_subset: 100000 exceeds the" in capsys.readouterr().err
    assert not target.exists() or not optuna.get_all_study_summaries(storage.open_storage(
        tuning.resolve_storage(str(target), EXP)))
    assert not [r for r in mlflow_runs(session_uri) if r.data.tags.get("role") == session.ROLE_STUDY]


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
    assert spec.kind == "rdb" and spec.dialect == "postgresql" and spec.has_lock
    assert spec.target == url.replace("postgresql://", "postgresql+psycopg2://")  # SQLAlchemy 2.1 wants psycopg 3
    assert spec.display() == "postgresql+psycopg2://user:***@db.example:5432/optuna"
    assert tuning.resolve_storage("file:///abs/s.journal", "exp") == tuning.StorageSpec("journal", "/abs/s.journal")
    assert tuning.resolve_storage("sqlite:////abs/s.db", "exp").lock_file_base == "/abs/s.db"
    assert not tuning.resolve_storage("mysql://u@h/db", "exp").has_lock


def test_tune_params_are_validated(tmp_path):
    base = PARAMS.split("\ntune:")[0] + "\n"
    (tmp_path / "p.yaml").write_text(base + f"tune:\n  {EXP}: {{n_trials: '8', l1_max: '1e-3'}}\n")
    tunes = P.load(tmp_path / "p.yaml").tune
    assert tunes[EXP].n_trials == 8 and tunes[EXP].l1_max == 1e-3  # dvc exp run -S strings are coerced
    for bad, message in ((f"{EXP}: {{l1_min: 1.0, l1_max: 0.1}}", "tune.toy.l1_min"),
                         (f"{EXP}: {{trials: 3}}", "unknown key"),
                         ("other: {}", "no experiment")):
        (tmp_path / "p.yaml").write_text(base + f"tune:\n  {bad}\n")
        with pytest.raises(P.ParamsError, match=message):
            P.load(tmp_path / "p.yaml")
    # one place only: a tune section inside an experiment is an unknown key there
    nested = base.replace("    evaluate: {}", "    evaluate: {}\n    tune: {n_trials: 5}")
    (tmp_path / "p.yaml").write_text(nested)
    with pytest.raises(P.ParamsError, match=f"experiments.{EXP}.tune: unknown key"):
        P.load(tmp_path / "p.yaml")


def _shared(tmp_path, tp, tracker=None) -> workers.Shared:
    spec = tuning.StorageSpec("journal", str(tmp_path / "s.journal"))
    store = storage.open_storage(spec)
    study = storage.create_study(store, "s", space.make_sampler(tp, 0))
    return workers.Shared(study, store, spec, tracker, f"python -m stages.tune {EXP} --reclaim")


def test_budget_baseline_and_stale_trials(tmp_path):
    """The budget counts every trial but reclaimed ones; a stale trial is failed and its params retried."""
    tp = P.TuneParams(n_trials=3, n_startup_trials=0)
    shared = _shared(tmp_path, tp)
    study = shared.study
    study.enqueue_trial(space.baseline_params(tp, 1e-3), user_attrs={space.BASELINE: True})
    first = workers.next_trial(shared, tp.n_trials, tp.stale_after)
    assert space.suggest(first, tp, 1e-3) == (0.0, 1e-3) and first.params == {}  # the enqueued baseline first
    study.tell(first, [0.9, 0.5])
    second = workers.next_trial(shared, tp.n_trials, tp.stale_after)
    l1, _ = space.suggest(second, tp, 1e-3)
    assert set(second.params) == {"l1"} and tp.l1_min <= l1 <= tp.l1_max  # sampled trials: l1 only
    third = workers.next_trial(shared, tp.n_trials, tp.stale_after)
    space.suggest(third, tp, 1e-3)
    assert workers.next_trial(shared, tp.n_trials, tp.stale_after) is None  # budget spent
    # the worker of `second` dies: its heartbeat stops; after stale_after its trial is failed, its params back
    second.set_user_attr(workers.HEARTBEAT, time.time() - tp.stale_after - 1)
    retry = workers.next_trial(shared, tp.n_trials, tp.stale_after)
    assert retry is not None and space.suggest(retry, tp, 1e-3)[0] == l1
    assert retry.user_attrs[workers.RETRY_OF] == second.number
    stale = study.get_trials(states=(TrialState.FAIL,))
    assert [(t.number, t.user_attrs[workers.EXCLUDED]) for t in stale] == [(second.number, "stale")]
    assert len(workers.counted(study.get_trials())) == tp.n_trials
    assert workers.next_trial(shared, tp.n_trials, tp.stale_after) is None


def test_summary_front_and_target():
    study = optuna.create_study(directions=list(tuning.storage.DIRECTIONS))
    dist = optuna.distributions.FloatDistribution(1e-6, 1e-2, log=True)
    points = [(None, 0.900, 0.45), (1e-5, 0.901, 0.40), (1e-4, 0.895, 0.18), (1e-3, 0.860, 0.05),
              (3e-4, 0.870, 0.20)]  # the last one is dominated by 1e-4
    for l1, acc, spikes in points:
        params = {} if l1 is None else {"l1": l1}
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions={k: dist for k in params}, values=[acc, spikes],
            user_attrs={"l1": l1 or 0.0, "lr": 1e-3, "test_accuracy": acc - 0.002, "test_spikes_per_neuron": spikes,
                        **({space.BASELINE: True} if l1 is None else {})}))
    summary = tuning.summarise(study, P.TuneParams(), budget=5)
    assert [r["number"] for r in summary["front"]] == [3, 2, 1]  # sorted by spikes
    assert summary["baseline"]["number"] == 0 and summary["baseline"]["l1"] == 0.0
    val = summary["target"]["val"]
    assert val["best_accuracy"] == 0.901 and val["sparsest_within_drop"]["trial"] == 2 and val["met"]
    assert summary["target"]["test"]["met"]
    assert not tuning.summarise(study, P.TuneParams(target_spikes=0.1), 5)["target"]["val"]["met"]


class FakeRunner:
    """Stands in for TrialRunner: ``outcome`` is a result dict to return or an exception to raise."""

    def __init__(self, outcome):
        self.outcome = outcome

    def sizes(self):
        return {}

    def run(self, l1, lr, on_epoch=None):
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        return self.outcome


def _context(tmp_path, outcome) -> tuple[workers.Shared, objective.Context]:
    params = P.load("params.yaml")
    tp = params.tuning(EXP)
    tracker = Tracker(EXP)
    shared = _shared(tmp_path, tp, tracker)
    tags = {"role": session.ROLE_STUDY, "optuna_study": "s", "optuna_storage": shared.spec.display()}
    parent = session.parent_run(tracker, shared.study, None, {}, tags)
    assert session.parent_run(tracker, shared.study, None, {}, tags) == parent  # found again by tag
    session.set_up(shared.study, EXP, tp, 1e-3, parent, owner=True)
    ctx = objective.Context(Experiment(EXP, params.experiment(EXP)), tp, shared.study, tracker, parent, None,
                            FakeRunner(outcome), {})
    return shared, ctx


def test_failed_trial_closes_its_mlflow_run_as_failed(session_uri, tmp_path):
    """NaN objective (Optuna fails the trial) and an exception in the objective: FAIL, run FAILED, not RUNNING."""
    nan = {k: 0.5 for k in ("val_accuracy", "test_accuracy", "test_spikes_per_neuron", "val_loss", "test_loss")}
    shared, ctx = _context(tmp_path, nan | {"val_spikes_per_neuron": math.nan})
    trial = workers.next_trial(shared, ctx.tp.n_trials, ctx.tp.stale_after)
    assert objective.run_trial(ctx, trial) == TrialState.FAIL
    ctx.runner = FakeRunner(RuntimeError("boom"))
    second = workers.next_trial(shared, ctx.tp.n_trials, ctx.tp.stale_after)
    with pytest.raises(RuntimeError, match="boom"):
        workers.run_guarded(shared, ctx, second)
    trials = shared.study.get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.FAIL]
    assert not any(t.user_attrs.get(workers.EXCLUDED) for t in trials)  # a failed point counts, like a divergence
    runs = [ctx.tracker.client.get_run(t.user_attrs[objective.RUN_ID]) for t in trials]
    assert [r.info.status for r in runs] == ["FAILED", "FAILED"]
    assert [r.data.tags["optuna_state"] for r in runs] == ["FAIL", "FAIL"]
    assert "RuntimeError: boom" in runs[1].data.tags["error"]


def test_interrupted_trial_is_given_back(session_uri, tmp_path):
    """Ctrl-C (or SIGTERM) during a trial: FAIL, excluded from the budget, params enqueued again, run KILLED."""
    shared, ctx = _context(tmp_path, KeyboardInterrupt("SIGTERM"))
    trial = workers.next_trial(shared, ctx.tp.n_trials, ctx.tp.stale_after)
    with pytest.raises(KeyboardInterrupt):
        workers.run_guarded(shared, ctx, trial)
    failed = shared.study.get_trials(states=(TrialState.FAIL,))
    waiting = shared.study.get_trials(states=(TrialState.WAITING,))
    assert [t.user_attrs[workers.EXCLUDED] for t in failed] == ["interrupted"]
    assert len(waiting) == 1 and waiting[0].user_attrs[workers.RETRY_OF] == trial.number
    assert waiting[0].user_attrs[space.BASELINE] is True
    run = ctx.tracker.client.get_run(failed[0].user_attrs[objective.RUN_ID])
    assert run.info.status == "KILLED" and run.data.tags["optuna_state"] == "FAIL"
    assert "interrupted by SIGTERM" in run.data.tags["error"]


def test_reclaim_command(session_uri, workspace, tmp_path, capsys):
    """--reclaim-stale takes the trials that missed 3 heartbeats; --reclaim N any running trial, nothing else."""
    params = P.load("params.yaml")
    tp = params.tuning(EXP)
    with pytest.raises(tuning.StudyNotFoundError, match="no such journal file"):
        tuning.reclaim(EXP, params, [3], storage=str(tmp_path / "none.journal"), study_name="s")
    assert not (tmp_path / "none.journal").exists()
    shared = _shared(tmp_path, tp)
    silent, alive = (workers.next_trial(shared, tp.n_trials, tp.stale_after) for _ in range(2))
    silent.set_user_attr(workers.HEARTBEAT, time.time() - workers.MISSED_BEATS * tp.heartbeat_interval - 1)
    reclaim = functools.partial(tuning.reclaim, EXP, params, storage=shared.spec.target, study_name="s")
    assert reclaim(None) == [silent.number]
    assert reclaim([alive.number]) == [alive.number]  # named explicitly: reclaimed although it beat just now
    assert "if its worker is alive, it keeps running and its result is dropped" in capsys.readouterr().err
    with pytest.raises(tuning.ReclaimError, match=f"trial {silent.number} is FAIL, not RUNNING"):
        reclaim([silent.number])
    trials = shared.study.get_trials()
    assert [t.user_attrs.get(workers.EXCLUDED) for t in trials] == ["reclaimed", "reclaimed", None, None]
    assert [t.user_attrs.get(workers.RETRY_OF) for t in trials] == [None, None, silent.number, alive.number]


def test_result_of_a_trial_reclaimed_while_it_ran_is_dropped(session_uri, tmp_path):
    shared, ctx = _context(tmp_path, None)
    result = {k: 0.5 for k in ("val_accuracy", "val_spikes_per_neuron", "test_accuracy", "test_spikes_per_neuron",
                               "val_loss", "test_loss")}

    class ReclaimedMeanwhile(FakeRunner):
        def run(self, l1, lr, on_epoch=None):  # another process judged this worker dead
            with shared.lock():
                assert workers.reclaim_locked(shared, 0, "reclaimed", "reclaimed by a test")
            return result

    ctx.runner = ReclaimedMeanwhile(result)
    trial = workers.next_trial(shared, ctx.tp.n_trials, ctx.tp.stale_after)
    assert workers.run_guarded(shared, ctx, trial) == TrialState.FAIL
    first, retry = shared.study.get_trials()
    assert first.state == TrialState.FAIL and first.values is None and retry.state == TrialState.WAITING
    run = ctx.tracker.client.get_run(first.user_attrs[objective.RUN_ID])
    assert run.info.status == "FAILED" and "reclaimed while running" in run.data.tags["error"]


def test_baseline_learning_rate_stays_in_the_tuned_range():
    tuned = P.TuneParams(tune_lr=True, lr_min=2e-5, lr_max=1e-4)
    assert space.baseline_params(tuned, 1e-3) == {"lr": 1e-4}
    assert space.baseline_params(tuned, 5e-5) == {"lr": 5e-5}
    assert space.baseline_params(P.TuneParams(), 1e-3) == {}


def test_trials_are_chosen_on_validation_only(workspace, monkeypatch):
    """The objective values the sampler and the Pareto pick see do not move when the test labels are
    scrambled: selection reads the validation split only (test numbers are reported beside them)."""
    monkeypatch.chdir(workspace)
    params = P.load("params.yaml")
    exp = Experiment(EXP, params.experiment(EXP))
    runner = objective.TrialRunner(exp, params.tuning(EXP))
    clean = runner.run(l1=1e-3, lr=1e-3)
    x, y = runner.test
    runner.test = (x, y[torch.randperm(len(y), generator=torch.Generator().manual_seed(1))])
    scrambled = runner.run(l1=1e-3, lr=1e-3)
    for key in tuning.OBJECTIVES:
        assert scrambled[key] == clean[key]
    assert scrambled["test_accuracy"] != clean["test_accuracy"]
    train = {tuple(r) for r in runner.train[0].flatten(1).tolist()}
    assert not train & {tuple(r) for r in runner.val[0].flatten(1).tolist()}


def test_the_study_keeps_its_trials_when_finetune_takes_an_l1_from_its_front(workspace, monkeypatch):
    """Writing a trial's L1 into ``finetune`` (what the front is for) must not start a new study; a key
    trials inherit (weight decay, or the rate when it is not tuned) must."""
    monkeypatch.chdir(workspace)
    params = P.load("params.yaml")

    def name(**finetune) -> str:
        exp = Experiment(EXP, params.experiment(EXP).model_copy(
            update={"finetune": params.experiment(EXP).finetune.model_copy(update=finetune)}))
        return space.study_name_for(exp, params.tuning(EXP), "converted-sha")

    base = name()
    assert name(l1=3.3e-5) == base and name(epochs=7) == base
    assert name(weight_decay=1e-4) != base
    tp = params.tuning(EXP)
    assert (name(lr=2e-4) == base) is tp.tune_lr
