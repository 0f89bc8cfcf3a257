"""Two gloo processes train exactly like one process with the same global batches (float64).

Each case trains one network twice from the same initial state: once in this process with
:func:`ttfs.train.train_epoch` (global batch B), once in two processes spawned with
torch.multiprocessing (gloo, each training on its slice of every global batch through
:class:`ttfs.distributed.Replicas`). Parameters and windows must agree within 1e-10 on both ranks.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import synthetic
from torch import nn

import ttfs
from ttfs.distributed import Replicas, shard
from ttfs.train import TensorBatches, exponential_decay, train_epoch

TOL = 1e-10
WORLD = 2


def build(case: dict) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """The case's initial network (ReLU or its B1 SNN, float64) and its training data."""
    torch.manual_seed(case["seed"])
    if case["conv"]:
        relu = nn.Sequential(nn.Conv2d(1, 3, 3, padding="same"), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(3, 4, 3),
                             nn.ReLU(), nn.Flatten(), nn.Linear(16, 5)).double()
        shape = (1, 8, 8)
    else:
        relu = nn.Sequential(nn.Flatten(), nn.Linear(16, 24), nn.ReLU(), nn.Linear(24, 24), nn.ReLU(),
                             nn.Linear(24, 5)).double()
        shape = (1, 4, 4)
    x, y = synthetic(case["samples"], shape, 5, seed=1)
    if case["snn"]:
        # zeta 0: windows start at the calibration set's largest activations, so kappa * max x grows them
        return ttfs.convert(relu, x[:64], zeta=0.0, dtype=torch.float64), x, y
    return relu, x, y


def train(case: dict, model: nn.Module, x, y, replicas: Replicas | None = None) -> list[dict]:
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    scheduler = exponential_decay(opt, 0.9, 7)
    stats = []
    for _ in range(case["epochs"]):
        batches = TensorBatches(x, y, case["batch"], seed=3)
        if replicas is not None:
            batches = shard(batches, replicas)
        stats.append(train_epoch(model, batches, opt, l1=case["l1"], scheduler=scheduler, lean=case["lean"],
                                 nonpositive_bias=case.get("nonpositive_bias", False), replicas=replicas))
    return stats


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _worker(rank: int, case: dict, rendezvous: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=WORLD)
    try:
        model, x, y = build(case)
        replicas = Replicas(model)
        stats = train(case, model, x, y, replicas)
        replicas.close()
        torch.save({"state": state(model), "stats": stats}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def two_processes(case: dict, tmp: Path) -> list[dict]:
    mp.spawn(_worker, args=(case, str(tmp / "rendezvous"), str(tmp)), nprocs=WORLD, join=True)
    return [torch.load(tmp / f"rank{r}.pt") for r in range(WORLD)]


CASES = {
    # 31 samples, global batch 6: slices of 3 + 3, the last batch 1 + 0 (an empty slice)
    "relu_fc_l1": dict(snn=False, conv=False, lean=True, l1=1e-3, samples=31, batch=6, epochs=2, seed=0),
    "relu_conv": dict(snn=False, conv=True, lean=True, l1=0.0, samples=40, batch=8, epochs=2, seed=1),
    # odd global batch: slices of 4 + 3, so the per-slice mean would be wrong
    "snn_fc_lean_l1": dict(snn=True, conv=False, lean=True, l1=1e-3, samples=49, batch=7, epochs=2, seed=0,
                           nonpositive_bias=True),
    "snn_conv_lean": dict(snn=True, conv=True, lean=True, l1=1e-3, samples=31, batch=6, epochs=2, seed=1),
    "snn_conv_general": dict(snn=True, conv=True, lean=False, l1=0.0, samples=35, batch=7, epochs=2, seed=1),
}


@pytest.mark.parametrize("name", list(CASES))
def test_two_gloo_processes_equal_one_process(name, tmp_path):
    case = CASES[name]
    model, x, y = build(case)
    initial = state(model)
    single = copy.deepcopy(model)
    single_stats = train(case, single, x, y)
    expected = state(single)
    ranks = two_processes(case, tmp_path)
    moved = max(float((expected[k] - initial[k]).abs().max()) for k in initial)
    assert moved > 1e-3, "the network did not train"
    if case["snn"]:
        assert float((expected["deltas"] - initial["deltas"]).abs().max()) > 1e-3, "the windows did not adapt"
    worst = 0.0
    for r, got in enumerate(ranks):
        assert got["state"].keys() == expected.keys()
        for k, v in expected.items():
            diff = float((got["state"][k] - v).abs().max())
            worst = max(worst, diff)
            assert diff <= TOL, f"rank {r}: {k} differs by {diff:.3g}"
        for mine, theirs in zip(got["stats"], single_stats, strict=True):
            assert theirs["loss"] == pytest.approx(mine["loss"], rel=1e-12, abs=1e-12)
            assert theirs["accuracy"] == mine["accuracy"]
    print(f"{name}: max |2 processes - 1 process| = {worst:.3g} (moved {moved:.3g})")


def test_replicas_need_a_process_group():
    with pytest.raises(RuntimeError, match="torchrun"):
        Replicas(nn.Linear(2, 2))


def test_shard_splits_every_global_batch_in_order():
    x, y = torch.arange(10.0)[:, None], torch.arange(10)
    batches = TensorBatches(x, y, 4, shuffle=False)
    parts = [[b[1].tolist() for b in shard(batches, r, 3)] for r in range(3)]
    assert parts == [[[0, 1], [4, 5], [8]], [[2], [6], [9]], [[3], [7], []]]
    with pytest.raises(ValueError, match="rank 3 outside"):
        shard(batches, 3, 3)




def _nan_worker(rank: int, rendezvous: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=WORLD)
    try:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 3)).double()
        x = torch.rand(8, 4, dtype=torch.float64)
        if rank == 1:
            x[5, 2] = float("nan")  # only rank 1's slice is bad
        batches = [(x[i:i + 2], torch.zeros(2, dtype=torch.long)) for i in range(0, 8, 2)]  # not TensorBatches
        replicas = Replicas(model)
        try:
            train_epoch(model, batches, torch.optim.SGD(model.parameters(), lr=0.1), replicas=replicas)
        except ValueError as e:
            Path(out, f"rank{rank}.txt").write_text(str(e))
    finally:
        dist.destroy_process_group()


def test_a_non_finite_input_on_one_rank_fails_the_epoch_on_every_rank(tmp_path):
    mp.spawn(_nan_worker, args=(str(tmp_path / "rendezvous"), str(tmp_path)), nprocs=WORLD, join=True)
    for rank in range(WORLD):
        assert "NaN or infinite" in (tmp_path / f"rank{rank}.txt").read_text()
