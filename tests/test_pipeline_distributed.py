"""The pipeline's training loop and stages under torchrun: exact, rank-0 writes, resumable with any world size."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml

from pipeline import checkpoint
from pipeline.errors import ParamsError
from pipeline.params import FinetuneParams, PretrainParams, resolve_device
from pipeline.training import fit
from ttfs import convert
from ttfs.train import TensorBatches
from ttfs.zoo import create_model

ROOT = Path(__file__).resolve().parents[1]
TOL = 1e-10


class _Run:
    """Stands in for an MLflow run where only the training loop is under test."""

    resumed, run_id = True, "stub"

    def log_metrics(self, values: dict, step: int = 0) -> None:
        pass


def _setup(kind: str, epochs: int):
    g = torch.Generator().manual_seed(0)
    y = torch.randint(3, (90,), generator=g)
    x = (torch.rand(90, 1, 12, 12, generator=g) * 0.3 + y.double().reshape(-1, 1, 1, 1) / 3).double()
    torch.manual_seed(0)
    model = create_model("fc2", in_shape=(1, 12, 12), num_classes=3, width=16).double()
    if kind == "relu":  # augmentation draws per global batch: exact across ranks too
        p = PretrainParams(epochs=epochs, batch_size=10, lr=1e-2, decay_steps=7, augment="crop_flip",
                           chance_margin=None)
    else:
        model = convert(model, x[:20], zeta=0.0, dtype=torch.float64)
        p = FinetuneParams(epochs=epochs, batch_size=10, lr=1e-2, l1=1e-3, chance_margin=None)
    return model, TensorBatches(x, y, p.batch_size, seed=0), TensorBatches(x, y, 32, shuffle=False), p


def _worker(rank: int, kind: str, epochs: int, rendezvous: str, ckpt: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=2)
    try:
        model, train, val, p = _setup(kind, epochs)
        fit(model, train, val, p, Path(ckpt), None, _Run(), kind, seed=0)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("kind", ["relu", "snn"])
def test_two_process_epoch_then_one_process_resume_equals_one_process_run(kind, tmp_path):
    """Two gloo processes train epoch 1 (rank 0 checkpoints), one process resumes epochs 2-3: the same model
    (parameters and windows within 1e-10) and curve as one process training all three epochs."""
    model, train, val, p = _setup(kind, 3)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    full = fit(model, train, val, p, tmp_path / "full.pt", None, _Run(), kind, seed=0)
    ckpt = tmp_path / "part.pt"
    mp.spawn(_worker, args=(kind, 1, str(tmp_path / "rendezvous"), str(ckpt)), nprocs=2, join=True)
    assert len(list(tmp_path.glob("part*"))) == 1  # rank 0 alone wrote it
    model2, train2, val2, p2 = _setup(kind, 3)
    resumed = fit(model2, train2, val2, p2, ckpt, checkpoint.load(ckpt), _Run(), kind, seed=0)
    if kind == "snn":
        assert float((model.deltas - initial["deltas"]).abs().max()) > 1e-3, "the windows did not adapt"
    for k, v in model.state_dict().items():
        assert float((model2.state_dict()[k] - v).abs().max()) <= TOL, k
    for a, b in zip(resumed, full, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            assert a[key] == pytest.approx(b[key], rel=1e-10, abs=1e-12), key


def test_torchrun_processes_get_one_gpu_each_and_fail_clearly_without_one():
    assert resolve_device("cpu", local_rank=1) == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ParamsError, match="CUDA is not available"):
            resolve_device("cuda", local_rank=0)
        assert resolve_device("auto", local_rank=1) == torch.device("cpu")
    else:
        assert resolve_device("auto", local_rank=0) == torch.device("cuda:0")
        with pytest.raises(ParamsError, match="needs its own GPU"):
            resolve_device("cuda", local_rank=torch.cuda.device_count())


def _stage_env(tmp_path: Path) -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
            "OMP_NUM_THREADS": "1"}


def _torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]


@pytest.mark.slow
def test_kill_9_of_a_torchrun_pretrain_resumes_with_one_process_to_the_uninterrupted_metrics(tmp_path, tiny_params):
    """Real stages: torchrun --nproc_per_node 2 pretrain, kill -9 after its first checkpoint, resume with one
    process; pretrain.json equals that of an uninterrupted one-process run. A non-training stage under
    torchrun is refused."""
    exp = tiny_params["experiments"]["tiny_fc2"]
    exp.update(dtype="float64")
    exp["pretrain"].update(epochs=150, chance_margin=None, batch_size=15)
    one, two = tmp_path / "one", tmp_path / "two"
    for d in (one, two):
        d.mkdir()
        (d / "params.yaml").write_text(yaml.safe_dump(tiny_params))
    env1, env2 = _stage_env(one), _stage_env(two)
    subprocess.run([sys.executable, "-m", "stages.prepare", "synthetic"], cwd=one, env=env1, check=True,
                   capture_output=True)
    shutil.copytree(one / "data", two / "data")
    refused = subprocess.run(_torchrun("-m", "stages.convert", "tiny_fc2"), cwd=two, env=env2, capture_output=True,
                             text=True)
    assert refused.returncode != 0 and "start it without torchrun" in refused.stderr
    subprocess.run([sys.executable, "-m", "stages.pretrain", "tiny_fc2"], cwd=one, env=env1, check=True,
                   capture_output=True)
    proc = subprocess.Popen(_torchrun("-m", "stages.pretrain", "tiny_fc2"), cwd=two, env=env2,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not list(two.glob("checkpoints/tiny_fc2/pretrain-*.pt")) and time.time() < deadline:
        assert proc.poll() is None, proc.communicate()[1]
        time.sleep(0.05)
    # kill -9 torchrun and both workers (torchrun starts them in sessions of their own)
    workers = psutil.Process(proc.pid).children(recursive=True)
    for p in [psutil.Process(proc.pid), *workers]:
        p.kill()
    proc.communicate()
    psutil.wait_procs(workers, timeout=30)
    assert not (two / "metrics/tiny_fc2/pretrain.json").exists(), "the run finished before it was killed"
    resumed = subprocess.run([sys.executable, "-m", "stages.pretrain", "tiny_fc2"], cwd=two, env=env2,
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming after epoch" in resumed.stderr
    a = json.loads((one / "metrics/tiny_fc2/pretrain.json").read_text())
    b = json.loads((two / "metrics/tiny_fc2/pretrain.json").read_text())
    for key in ("test_accuracy", "train_accuracy", "val_accuracy"):
        assert a[key] == b[key], key
    for key in ("test_loss", "train_loss"):
        assert a[key] == pytest.approx(b[key], rel=1e-10), key


def test_parallel_jobs_and_torchrun_processes_share_the_cores(monkeypatch, tiny_params):
    from pipeline import params as P
    from pipeline.runner import Experiment
    from pipeline.threads import available_cores

    before = torch.get_num_threads()
    exp = P.Params.model_validate(tiny_params).experiment("tiny_fc2")
    vgg = Experiment("vgg", exp.model_copy(update={"model": P.ModelParams(name="vgg16")}))
    try:
        for var in ("TTFS_JOBS", "TTFS_THREADS", "OMP_NUM_THREADS", "LOCAL_WORLD_SIZE"):
            monkeypatch.delenv(var, raising=False)
        assert vgg.use_threads("pretrain").intra_op == available_cores()  # one job: every core
        monkeypatch.setenv("TTFS_JOBS", "2")
        assert vgg.use_threads("pretrain").intra_op == max(1, available_cores() // 2)  # split over 2 jobs
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
        assert vgg.use_threads("pretrain").intra_op == max(1, available_cores() // 4) == torch.get_num_threads()
        monkeypatch.setenv("TTFS_JOBS", "two")
        with pytest.raises(ParamsError, match="TTFS_JOBS='two'"):
            vgg.use_threads("pretrain")
    finally:
        torch.set_num_threads(before)


@pytest.mark.slow
def test_sweep_stage_under_torchrun_equals_the_one_process_sweep(tmp_path, tiny_params):
    """The sweep's fine-tuning under every constraint runs data-parallel under torchrun: sweep.json equals the
    one-process sweep's (float64), and rank 0 alone records the MLflow runs."""
    exp = tiny_params["experiments"]["tiny_fc2"]
    exp.update(dtype="float64")
    exp["sweep"] = {"jitter": [0.05], "jitter_seeds": 2, "time_steps": [4], "weight_bits": [3], "latency_factor": [2],
                    "finetune_epochs": 1, "finetune_lr": 1e-3, "finetune_lr_for": {"weight_bits": 3e-4},
                    "batch_size": 16}
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    (one / "params.yaml").write_text(yaml.safe_dump(tiny_params))
    env1 = _stage_env(one)
    for stage in ("prepare synthetic", "pretrain tiny_fc2", "convert tiny_fc2", "finetune tiny_fc2"):
        subprocess.run([sys.executable, "-m", f"stages.{stage.split()[0]}", stage.split()[1]], cwd=one, env=env1,
                       check=True, capture_output=True)
    shutil.copytree(one, two, ignore=shutil.ignore_patterns("mlflow.db", "mlartifacts"))
    env2 = _stage_env(two)
    subprocess.run([sys.executable, "-m", "stages.finetune", "tiny_fc2"], cwd=two, env=env2, check=True,
                   capture_output=True)  # the reference runs in two's own MLflow store (up to date: re-logged)
    single = subprocess.run([sys.executable, "-m", "stages.sweep", "tiny_fc2"], cwd=one, env=env1,
                            capture_output=True, text=True)
    assert single.returncode == 0, single.stderr
    parallel = subprocess.run(_torchrun("-m", "stages.sweep", "tiny_fc2"), cwd=two, env=env2, capture_output=True,
                              text=True)
    assert parallel.returncode == 0, parallel.stderr
    a = json.loads((one / "metrics/tiny_fc2/sweep.json").read_text())
    b = json.loads((two / "metrics/tiny_fc2/sweep.json").read_text())
    for kind, settings in a["settings"].items():
        for value, setting in settings.items():
            other = b["settings"][kind][value]
            assert other["finetuned"]["accuracy"] == setting["finetuned"]["accuracy"], (kind, value)
            assert other["finetuned"]["loss"] == pytest.approx(setting["finetuned"]["loss"], rel=TOL), (kind, value)
            assert other["finetune_lr"] == setting["finetune_lr"]
    from mlflow import MlflowClient

    client = MlflowClient(env2["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([client.get_experiment_by_name("tiny_fc2").experiment_id])
    sweeps = [r for r in runs if r.data.tags.get("role") == "sweep"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == sweeps[0].info.run_id]
    assert len(sweeps) == 1 and len(children) == 4  # rank 0 only: one parent, one run per setting
