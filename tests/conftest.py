"""Shared fixtures for the pipeline tests."""

from __future__ import annotations

import copy

import pytest
import torch

# One value per constraint, one epoch: every code path of the sweep stage at toy cost.
TINY_SWEEP = {"jitter": [0, 0.05], "jitter_seeds": 2, "time_steps": [4], "weight_bits": [4], "latency_factor": [2],
              "finetune_epochs": 1, "batch_size": 16}

TINY_PARAMS = {
    "data": {"datasets": {"synthetic": {"train_size": 256, "test_size": 128, "shape": [1, 28, 28], "classes": 4}}},
    "experiments": {
        "tiny_fc2": {
            "dataset": "synthetic", "seed": 0, "device": "cpu", "dtype": "float32",
            "model": {"name": "fc2", "width": 32},
            "pretrain": {"epochs": 2, "batch_size": 16, "lr": 1e-3},
            "convert": {},
            "finetune": {"mode": "converted", "epochs": 1, "batch_size": 16, "lr": 1e-4},
            "evaluate": {"batch_size": 128},
            "sweep": TINY_SWEEP,
        },
    },
}


@pytest.fixture
def tiny_params() -> dict:
    """A valid params.yaml mapping: one synthetic dataset, one tiny FC2 experiment (a fresh copy)."""
    return copy.deepcopy(TINY_PARAMS)


def synthetic(n: int, shape: tuple[int, ...], classes: int, seed: int):
    """``n`` float64 images near one random prototype per class (noise 0.3, clipped to [0, 1]), int64 labels."""
    g = torch.Generator().manual_seed(seed)
    prototypes = torch.rand(classes, *shape, generator=g)
    labels = torch.randint(0, classes, (n,), generator=g)
    inputs = (prototypes[labels] + 0.3 * torch.rand(n, *shape, generator=g)).clamp(0, 1)
    return inputs.double(), labels
