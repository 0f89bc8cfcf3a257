"""Pipeline building blocks in-process: resumable training, divergence, checkpoints, model files, tracking."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pipeline import artifacts, checkpoint, tracking
from pipeline.errors import ArtifactError, TrainingFailed
from pipeline.params import FinetuneParams, PretrainParams
from pipeline.training import check_learning, fit
from ttfs import convert
from ttfs.train import DivergenceError, TensorBatches, crop_flip
from ttfs.zoo import create_model

ROOT = Path(__file__).resolve().parents[1]


class _Run:
    """Stands in for an MLflow run where only the training loop is under test."""

    resumed, run_id = True, "stub"

    def __init__(self):
        self.logged: list[tuple[int, dict]] = []

    def log_metrics(self, values: dict, step: int = 0) -> None:
        self.logged.append((step, values))


def _data(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(3, (n,), generator=g)
    x = torch.rand(n, 1, 12, 12, generator=g) * 0.3 + y.float().reshape(-1, 1, 1, 1) / 3
    return x, y


def _setup(epochs: int, seed: int = 0):
    x, y = _data()
    torch.manual_seed(seed)
    model = create_model("fc2", in_shape=(1, 12, 12), num_classes=3, width=16, dropout=0.2)
    p = PretrainParams(epochs=epochs, batch_size=8, lr=1e-2, decay_steps=7, augment="crop_flip", chance_margin=None)
    return model, TensorBatches(x, y, 8, seed=seed), TensorBatches(x, y, 32, shuffle=False), p


def test_resume_from_a_checkpoint_equals_an_uninterrupted_run(tmp_path):
    model, train, test, p = _setup(epochs=3)
    full = fit(model, train, test, p, tmp_path / "a.pt", None, _Run(), "full")
    # interrupted after epoch 1: a fresh process rebuilds everything, then resumes from the checkpoint
    model1, train1, test1, p1 = _setup(epochs=1)
    fit(model1, train1, test1, p1, tmp_path / "b.pt", None, _Run(), "part")
    model2, train2, test2, p2 = _setup(epochs=3)
    resumed = fit(model2, train2, test2, p2, tmp_path / "b.pt", checkpoint.load(tmp_path / "b.pt"), _Run(), "rest")
    assert resumed == full
    for a, b in zip(model.state_dict().values(), model2.state_dict().values(), strict=True):
        assert torch.equal(a, b)


class _Interrupted(TensorBatches):
    """Stops the run (as a kill would) when its second epoch starts."""

    epochs = 0

    def __iter__(self):
        self.epochs += 1
        if self.epochs == 2:
            raise KeyboardInterrupt
        yield from super().__iter__()


def test_cosine_nesterov_recipe_resumes_exactly(tmp_path):
    """The fmnist_vgg recipe (SGD + Nesterov, cosine over the run, 2-pixel shifts): a run killed after
    epoch 1 resumes to the uninterrupted run's curve and weights; the rate ends at 0."""
    recipe = dict(optimizer="sgd", nesterov=True, schedule="cosine", crop_padding=2, weight_decay=5e-4)
    model, train, test, p = _setup(epochs=3)
    p = p.model_copy(update=recipe)
    full = fit(model, train, test, p, tmp_path / "a.pt", None, _Run(), "full")
    assert full[-1]["lr"] == pytest.approx(0.0, abs=1e-12) and full[0]["lr"] < p.lr
    model1, _, test1, _ = _setup(epochs=3)
    x, y = _data()
    with pytest.raises(KeyboardInterrupt):
        fit(model1, _Interrupted(x, y, 8, seed=0), test1, p, tmp_path / "b.pt", None, _Run(), "killed")
    model2, train2, test2, _ = _setup(epochs=3)
    resumed = fit(model2, train2, test2, p, tmp_path / "b.pt", checkpoint.load(tmp_path / "b.pt"), _Run(), "rest")
    assert resumed == full
    for a, b in zip(model.state_dict().values(), model2.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_nesterov_needs_sgd():
    with pytest.raises(ValueError, match="nesterov"):
        PretrainParams(nesterov=True)


def test_snn_resume_restores_adapted_windows(tmp_path):
    x, y = _data()
    relu = create_model("fc2", in_shape=(1, 12, 12), num_classes=3, width=16)
    p = FinetuneParams(epochs=2, batch_size=8, lr=1e-2, chance_margin=None)
    snn = convert(relu, x)
    history = fit(snn, TensorBatches(x, y, 8), TensorBatches(x, y, 32, shuffle=False), p, tmp_path / "c.pt", None,
                  _Run(), "snn")
    state = checkpoint.load(tmp_path / "c.pt")
    assert torch.equal(state["model"]["deltas"], snn.deltas) and state["history"] == history


class _Exploding(TensorBatches):
    """Finite inputs in the first epoch, infinite ones afterwards: the loss turns NaN in epoch 2."""

    epochs = 0

    def __iter__(self):
        self.epochs += 1
        for x, y in super().__iter__():
            yield (x if self.epochs == 1 else x * float("inf")), y


def test_divergence_keeps_the_last_checkpoint_and_fails_the_run(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    model, _, test, p = _setup(epochs=3)
    x, y = _data()
    train = _Exploding(x, y, 8)
    path = tmp_path / "ckpt.pt"
    tracker = tracking.Tracker("diverging")
    with pytest.raises(DivergenceError), tracker.run("pretrain@diverging", {}, {"role": "reference"}) as run:
        fit(model, train, test, p, path, None, run, "diverging")
    state = checkpoint.load(path)
    assert len(state["history"]) == 1 and state["run_id"] == run.run_id
    failed = tracker.client.get_run(run.run_id)
    assert failed.info.status == "FAILED" and failed.data.tags["error"].startswith("DivergenceError")


def test_checkpoint_writes_are_atomic(tmp_path):
    path = tmp_path / "x" / "c.pt"
    checkpoint.save(path, {"epoch": 1})
    checkpoint.save(path, {"epoch": 2})
    assert checkpoint.load(path) == {"epoch": 2}
    assert [p.name for p in path.parent.iterdir()] == ["c.pt"]  # no temporary files left behind
    path.write_bytes(path.read_bytes()[:5])  # damaged by something else: the stage stops and says what to do
    with pytest.raises(ArtifactError, match=f"{path} is truncated or damaged .*delete it"):
        checkpoint.load(path)


def test_crop_flip_shifts_and_mirrors_deterministically():
    x = torch.arange(2 * 2 * 5 * 5, dtype=torch.float32).reshape(2, 2, 5, 5)
    a = crop_flip(x, torch.Generator().manual_seed(0), pad=2)
    b = crop_flip(x, torch.Generator().manual_seed(0), pad=2)
    assert a.shape == x.shape and torch.equal(a, b)
    assert torch.equal(crop_flip(x, torch.Generator().manual_seed(0), pad=0).flip(-1).sort(-1).values,
                       x.sort(-1).values)  # with no padding only the mirroring remains


def test_model_files_are_deterministic_and_round_trip(tmp_path):
    x, _ = _data()
    relu = create_model("lenet5", in_shape=(1, 28, 28), batch_norm=True)
    relu.eval()
    artifacts.save_relu(tmp_path / "a.pt", relu, {"k": 1})
    artifacts.save_relu(tmp_path / "b.pt", relu, {"k": 1})
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b.pt").read_bytes()
    loaded, lineage = artifacts.load_relu(tmp_path / "a.pt")
    z = torch.rand(4, 1, 28, 28)
    assert lineage == {"k": 1} and torch.equal(loaded(z), relu(z))
    snn = convert(relu, torch.rand(16, 1, 28, 28))
    artifacts.save_snn(tmp_path / "s.pt", snn, {"k": 2})
    artifacts.save_snn(tmp_path / "t.pt", snn, {"k": 2})
    assert (tmp_path / "s.pt").read_bytes() == (tmp_path / "t.pt").read_bytes()
    loaded_snn, _ = artifacts.load_snn(tmp_path / "s.pt")
    assert torch.equal(loaded_snn(z), snn(z)) and torch.equal(loaded_snn.deltas, snn.deltas)


def test_tracking_paths_are_absolute_and_survive_dvc_temp_copies(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    copy = tmp_path / ".dvc" / "tmp" / "exps" / "standalone" / "tmpabc"
    copy.mkdir(parents=True)
    monkeypatch.chdir(copy)
    assert tracking.project_root() == tmp_path.resolve()
    assert tracking.tracking_uri() == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")
    assert tracking.tracking_uri() == "http://tracking.example:5000"
    assert tracking.artifact_location("http://tracking.example:5000", "e") is None
    location = tracking.artifact_location(f"sqlite:///{tmp_path}/db/mlflow.db", "fmnist_fc2")
    assert location == (tmp_path / "db" / "mlartifacts" / "fmnist_fc2").as_uri()
    assert os.path.isabs(location.removeprefix("file://"))


def test_a_run_that_is_not_learning_fails_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    """lr 1e10 keeps the loss finite (no NaN) but is hopeless: it must fail, not end as a success."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    model, train, test, _ = _setup(epochs=2)
    p = PretrainParams(epochs=2, batch_size=8, lr=1e10, decay_steps=7)
    tracker = tracking.Tracker("hopeless")
    with pytest.raises(TrainingFailed, match="not learning|diverged"), \
            tracker.run("pretrain@hopeless", {}, {"role": "reference"}) as run:
        fit(model, train, test, p, tmp_path / "ckpt.pt", None, run, "hopeless")
    assert not (tmp_path / "ckpt.pt").exists()  # the failed epoch wrote no checkpoint
    assert tracker.client.get_run(run.run_id).info.status == "FAILED"


@pytest.mark.parametrize(("row", "message"), [
    ({"epoch": 1, "train_loss": 100.0, "train_accuracy": 0.9}, "diverged"),
    ({"epoch": 2, "train_loss": 1.0, "train_accuracy": 0.26}, "not learning"),
])
def test_learning_check_thresholds_are_params(row, message):
    with pytest.raises(TrainingFailed, match=message):
        check_learning(row, PretrainParams(), 4, "x")
    check_learning(row, PretrainParams(max_loss_factor=1000, chance_margin=None), 4, "x")


def test_runs_orphaned_by_kill_9_are_closed_by_the_next_run(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    script = ("import os, signal; from pipeline import tracking; "
              "run = tracking.Tracker('orphans').run('pretrain@orphans', {}, {'role': 'reference'}); "
              "print(run.run_id, flush=True); os.kill(os.getpid(), signal.SIGKILL)")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    orphan = out.stdout.split()[0]
    tracker = tracking.Tracker("orphans")
    assert tracker.client.get_run(orphan).info.status == "RUNNING"
    with tracker.run("pretrain@orphans", {}, {"role": "reference"}) as run:
        assert tracker.client.get_run(run.run_id).info.status == "RUNNING"  # our own live run is not touched
    assert tracker.client.get_run(orphan).info.status == "KILLED"
    assert "process gone" in tracker.client.get_run(orphan).data.tags["orphaned"]


def test_sigterm_ends_the_stage_with_its_run_killed_and_the_checkpoint_kept(tmp_path, tiny_params):
    """A real stage process gets SIGTERM mid-training: message, exit 130, MLflow run KILLED, checkpoint kept."""
    import yaml

    tiny_params["experiments"]["tiny_fc2"]["pretrain"].update(epochs=200, chance_margin=None)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
           "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "stages.prepare", "synthetic"], cwd=tmp_path, env=env, check=True,
                   capture_output=True)
    proc = subprocess.Popen([sys.executable, "-m", "stages.pretrain", "tiny_fc2"], cwd=tmp_path, env=env,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not list((tmp_path / "checkpoints").glob("tiny_fc2/pretrain-*.pt")) and time.time() < deadline:
        assert proc.poll() is None, proc.communicate()[1]
        time.sleep(0.2)
    assert list((tmp_path / "checkpoints").glob("tiny_fc2/pretrain-*.pt")), "no checkpoint within 300 s"
    time.sleep(0.5)  # well inside the next epoch
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted (SIGTERM)" in err and "Traceback" not in err
    assert list((tmp_path / "checkpoints").glob("tiny_fc2/pretrain-*.pt"))
    client = tracking.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("tiny_fc2").experiment_id])
    assert [r.info.status for r in runs] == ["KILLED"]


def test_mlflow_runs_open_in_the_training_view_named_and_linked_to_their_reference(tmp_path, monkeypatch):
    from pipeline.results import PretrainResult
    from pipeline.runner import Reference, link_reference

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    tracker = tracking.Tracker("views")
    exp = tracker.client.get_experiment(tracker.experiment_id)
    assert exp.tags[tracking.EXPERIMENT_KIND] == tracking.MODEL_DEVELOPMENT  # not MLflow 3's GenAI view
    ref = PretrainResult(params_hash="0" * 16, lineage={"experiment": "views", "dataset": "d", "data_sha256": "s"},
                         test_accuracy=0.9, test_loss=0.3, train_accuracy=0.95, train_loss=0.2, val_accuracy=0.91,
                         val_loss=0.29, epochs=1, parameters=10)
    with tracker.run("finetune@views", {}, {"role": "snn"}) as run:
        link_reference(run, Reference("abc123", ref), {"test_accuracy": 0.92})
    got = tracker.client.get_run(run.run_id)
    assert got.info.run_name == "finetune@views"
    assert got.data.tags["mlflow.source.git.commit"] == got.data.tags["git_commit"]
    assert f"#/experiments/{tracker.experiment_id}/runs/abc123" in got.data.tags["mlflow.note.content"]
    assert got.data.metrics["delta.test_accuracy"] == pytest.approx(0.02)


def test_training_steps_never_see_a_validation_or_test_image(tmp_path, tiny_params, monkeypatch):
    """pretrain and finetune (real stages) feed train_epoch training images only; validation and test
    images are only ever evaluated."""
    import yaml

    from pipeline import data as D
    from pipeline import training
    from stages import convert, finetune, prepare, pretrain

    seen: list[torch.Tensor] = []
    real_epoch = training.train_epoch

    def recording(model, batches, *args, **kwargs):
        def record():
            for x, y in batches:
                seen.append(x.detach().flatten(1).to(torch.float64).clone())
                yield x, y
        return real_epoch(model, record(), *args, **kwargs)

    monkeypatch.setattr(training, "train_epoch", recording)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    tiny_params["experiments"]["tiny_fc2"]["pretrain"].update(epochs=1)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params))
    assert prepare.main(["synthetic"]) == 0
    for stage in (pretrain, convert, finetune):
        assert stage.main(["tiny_fc2"]) == 0
    prepared = D.load_prepared(tmp_path / "data/prepared/synthetic")
    rows = {s: {tuple(r) for r in prepared.split(s)[0].flatten(1).to(torch.float64).tolist()} for s in D.SPLITS}
    trained = {tuple(r) for r in torch.cat(seen).tolist()}
    assert trained and trained <= rows["train"]
    assert not trained & rows["val"] and not trained & rows["test"]


def test_stages_set_their_threads_and_tag_their_runs_with_them(tmp_path, tiny_params, monkeypatch):
    """The thread policy runs in every experiment stage (fc2: one thread), the ``threads`` param
    overrides it, and the MLflow run records what was used."""
    import yaml

    from stages import prepare, pretrain

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.delenv("TTFS_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        tiny_params["experiments"]["tiny_fc2"]["pretrain"].update(epochs=1)
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params))
        assert prepare.main(["synthetic"]) == 0
        assert pretrain.main(["tiny_fc2"]) == 0
        assert torch.get_num_threads() == 1
        tiny_params["experiments"]["tiny_fc2"]["threads"] = 2
        tiny_params["experiments"]["tiny_fc2"]["pretrain"].update(epochs=2)
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params))
        assert pretrain.main(["tiny_fc2"]) == 0
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    tracker = tracking.Tracker("tiny_fc2")
    runs = tracker.client.search_runs([tracker.experiment_id], order_by=["attributes.start_time ASC"])
    assert [(r.data.tags["threads.intra_op"], r.data.tags["threads.source"]) for r in runs] == \
        [("1", "policy"), ("2", "param")]
