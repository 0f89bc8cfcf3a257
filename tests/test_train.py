"""Training a B1 SNN with exact spike-time gradients follows the ReLU network's trajectory."""

import copy

import pytest
import torch
from conftest import synthetic
from torch import nn

import ttfs
from ttfs.train import DivergenceError, TensorBatches, evaluate, exponential_decay, train_epoch


def relu_parameters(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().reshape(p.shape[0], -1) for p in model.parameters()]


def snn_parameters(snn: ttfs.SNN) -> list[torch.Tensor]:
    flat = []
    for w, b in snn.relu_parameters():
        flat += [w.reshape(w.shape[0], -1), b[:, 0]]
    return [t.reshape(t.shape[0], -1) for t in flat]


def lockstep(model: nn.Module, steps: int, batch_size: int, l1: float, shape, nonpositive_bias: bool = False,
             lean: bool = True, **convert_kw):
    inputs, labels = synthetic(steps * batch_size, shape, 5, seed=1)
    snn = ttfs.convert(copy.deepcopy(model), inputs[:256], **convert_kw)
    relu_opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    snn_opt = torch.optim.Adam(snn.parameters(), lr=5e-3)
    # one epoch = `steps` steps on identical batches (same seed, same order)
    train_epoch(model, TensorBatches(inputs, labels, batch_size, seed=3), relu_opt, l1=l1,
                nonpositive_bias=nonpositive_bias, scheduler=exponential_decay(relu_opt, 0.9, 50))
    train_epoch(snn, TensorBatches(inputs, labels, batch_size, seed=3), snn_opt, l1=l1,
                nonpositive_bias=nonpositive_bias, scheduler=exponential_decay(snn_opt, 0.9, 50), lean=lean)
    return snn


@pytest.mark.parametrize("lean", [True, False], ids=["lean", "general"])
@pytest.mark.parametrize("l1", [0.0, 1e-3])
def test_b1_fc_trajectory_equals_relu(l1, lean):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 24), nn.ReLU(), nn.Linear(24, 24), nn.ReLU(),
                          nn.Linear(24, 5)).double()
    initial = [p.detach().clone() for p in model.parameters()]
    snn = lockstep(model, steps=200, batch_size=8, l1=l1, shape=(1, 4, 4), lean=lean)
    moved = max((p.detach() - q).abs().max() for p, q in zip(model.parameters(), initial, strict=True))
    assert moved > 1e-2  # the networks really trained
    for relu_p, snn_p in zip(relu_parameters(model), snn_parameters(snn), strict=True):
        assert (relu_p - snn_p).abs().max() <= 1e-8


@pytest.mark.parametrize("lean", [True, False], ids=["lean", "general"])
@pytest.mark.parametrize("l1", [0.0, 1e-3])
def test_b1_conv_trajectory_equals_relu(l1, lean):
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(1, 3, 3, padding="same"), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(3, 4, 3),
                          nn.ReLU(), nn.Flatten(), nn.Linear(16, 5)).double()
    snn = lockstep(model, steps=200, batch_size=8, l1=l1, shape=(1, 8, 8), lean=lean)
    for relu_p, snn_p in zip(relu_parameters(model), snn_parameters(snn), strict=True):
        assert (relu_p - snn_p).abs().max() <= 1e-8


@pytest.mark.parametrize("lean", [True, False], ids=["lean", "general"])
@pytest.mark.parametrize("conv", [False, True])
def test_b1_trajectory_with_nonpositive_biases_equals_relu(conv, lean):
    torch.manual_seed(5)
    if conv:
        model = nn.Sequential(nn.Conv2d(1, 3, 3, padding="same"), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(3, 4, 3),
                              nn.ReLU(), nn.Flatten(), nn.Linear(16, 5)).double()
        shape = (1, 8, 8)
    else:
        model = nn.Sequential(nn.Flatten(), nn.Linear(16, 24), nn.ReLU(), nn.Linear(24, 5)).double()
        shape = (1, 4, 4)
    with torch.no_grad():  # start with positive biases: the projection must act from the first step on
        for m in model:
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                m.bias.uniform_(0.05, 0.2)
    readout_bias = model[-1].bias.detach().clone()
    snn = lockstep(model, steps=200, batch_size=8, l1=0.0, shape=shape, nonpositive_bias=True, lean=lean)
    hidden = [m for m in model if isinstance(m, (nn.Linear, nn.Conv2d))][:-1]
    assert all(float(m.bias.detach().max()) <= 0.0 for m in hidden)
    assert all(bool((m.bias == 0).any()) for m in hidden)  # the constraint was active, not vacuous
    assert not torch.equal(model[-1].bias, readout_bias)  # the readout trains freely
    for relu_p, snn_p in zip(relu_parameters(model), snn_parameters(snn), strict=True):
        assert (relu_p - snn_p).abs().max() <= 1e-8


@pytest.mark.parametrize("lean", [True, False], ids=["lean", "general"])
def test_adaptive_windows_keep_spikes_causal_and_never_shrink(lean):
    torch.manual_seed(2)
    inputs, labels = synthetic(400, (1, 4, 4), 5, seed=2)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 20), nn.ReLU(), nn.Linear(20, 5)).double()
    snn = ttfs.convert(model, inputs[:8], zeta=0.0)  # deliberately tight initial windows
    before = snn.deltas.clone()
    opt = torch.optim.Adam(snn.parameters(), lr=0.05)
    train_epoch(snn, TensorBatches(inputs, labels, 8), opt, kappa=10.0, lean=lean)
    assert bool((snn.deltas >= before).all())
    assert bool((snn.deltas[1:] > before[1:]).any())
    record = snn.run(inputs)
    assert int(record.causality_violations().sum()) == 0


def test_divergence_is_reported():
    inputs, labels = synthetic(64, (1, 4, 4), 5, seed=3)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 5))  # float32 overflows to inf/NaN quickly
    snn = ttfs.convert(model, inputs.float())
    opt = torch.optim.SGD(snn.parameters(), lr=1e38)
    with pytest.raises(DivergenceError, match="lower the learning rate"):
        for _ in range(3):
            train_epoch(snn, TensorBatches(inputs.float(), labels, 8), opt)


def test_evaluate_matches_relu_after_conversion():
    inputs, labels = synthetic(200, (1, 4, 4), 5, seed=4)
    torch.manual_seed(4)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 5)).double()
    train_epoch(model, TensorBatches(inputs, labels, 16), torch.optim.Adam(model.parameters(), 1e-2))
    snn = ttfs.convert(model, inputs)
    relu_metrics = evaluate(model, TensorBatches(inputs, labels, 50, shuffle=False))
    snn_metrics = evaluate(snn, TensorBatches(inputs, labels, 50, shuffle=False))
    assert snn_metrics["accuracy"] == relu_metrics["accuracy"]
    assert snn_metrics["loss"] == pytest.approx(relu_metrics["loss"], rel=1e-12)
