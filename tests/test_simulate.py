"""The reference event-driven simulator (ttfs.simulate) reproduces the closed-form spike times.

The simulator only reads the exported arrays and integrates the piecewise-linear potential of SPEC 2.3
event by event; the closed form lives in ttfs.layers. Agreement is checked in float64 at 1e-9.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ttfs
from ttfs import export
from ttfs.simulate import connectivity, simulate, simulate_snn

TOL = 1e-9


def random_bn(channels: int, dims: int) -> nn.Module:
    bn = nn.BatchNorm2d(channels) if dims == 2 else nn.BatchNorm1d(channels)
    with torch.no_grad():
        bn.weight.uniform_(-1.5, 1.5)  # some negative scales
        bn.bias.normal_()
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
    return bn


def b1_model(arch: str) -> tuple[nn.Module, tuple[int, ...]]:
    if arch == "fc":
        layers = [nn.Linear(6, 10), random_bn(10, 1), nn.ReLU(), random_bn(10, 1), nn.Linear(10, 8), nn.ReLU(),
                  random_bn(8, 1), nn.Linear(8, 4)]
        return nn.Sequential(*layers), (6,)
    if arch == "same3_pool_same5":  # BN before and after ReLU, 'same' k3 and k5, max-pool, valid k3
        layers = [nn.Conv2d(2, 4, 3, padding="same"), random_bn(4, 2), nn.ReLU(), random_bn(4, 2), nn.MaxPool2d(2),
                  nn.Conv2d(4, 5, 5, padding="same"), nn.ReLU(), random_bn(5, 2), nn.Conv2d(5, 3, 3), nn.ReLU(),
                  nn.Flatten(), random_bn(12, 1), nn.Linear(12, 7), nn.ReLU(), nn.Dropout(), nn.Linear(7, 3)]
        return nn.Sequential(*layers), (2, 8, 8)
    if arch == "valid5_pool_same3":
        layers = [nn.Conv2d(3, 4, 5), nn.ReLU(), random_bn(4, 2), nn.MaxPool2d(2), nn.Conv2d(4, 4, 3, padding="same"),
                  random_bn(4, 2), nn.ReLU(), nn.Flatten(), nn.Linear(36, 6), nn.ReLU(), nn.Linear(6, 3)]
        return nn.Sequential(*layers), (3, 10, 10)
    if arch == "stride2_same5":
        layers = [nn.Conv2d(2, 3, 3, stride=2, padding=1), nn.ReLU(), random_bn(3, 2),
                  nn.Conv2d(3, 4, 5, padding=2), random_bn(4, 2), nn.ReLU(), random_bn(4, 2), nn.MaxPool2d(2, 1),
                  nn.Flatten(), nn.Linear(4 * 3 * 3, 5)]
        return nn.Sequential(*layers), (2, 8, 8)
    raise ValueError(arch)


def inputs(shape: tuple[int, ...], batch: int = 10, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    z = torch.rand(batch, *shape, generator=g, dtype=torch.float64)
    u = torch.rand(batch, *shape, generator=g, dtype=torch.float64)
    z[u < 0.15] = 0.0  # silent input pixels
    z[u > 0.95] = 1.3  # clipped: spike at t_min^(0)
    return z


def closed_form(snn: ttfs.SNN, z: torch.Tensor):
    with torch.no_grad():
        return snn.run(z)


def assert_times_match(sim_times: list[np.ndarray], record, skip_masks=None) -> None:
    assert len(sim_times) == len(record.times)
    for n, (ts, tc) in enumerate(zip(sim_times, record.times, strict=True), start=1):
        tc = tc.numpy()
        assert ts.shape == tc.shape
        t_max = float(record.t_max(n))
        keep = np.ones(tc.shape, dtype=bool) if skip_masks is None else ~skip_masks[n - 1]
        np.testing.assert_array_equal(ts[keep] == t_max, tc[keep] == t_max, err_msg=f"silent masks, layer {n}")
        err = np.abs(ts[keep] - tc[keep]).max(initial=0.0)
        assert err <= TOL, f"layer {n}: max |t_sim - t_closed| = {err}"


def assert_logits_match(sim_logits: np.ndarray, logits: torch.Tensor) -> None:
    ref = logits.numpy()
    scale = max(1.0, float(np.abs(ref).max()))
    err = float(np.abs(sim_logits - ref).max())
    assert err <= TOL * scale, f"max |logit_sim - logit_closed| = {err} (scale {scale})"


# ------------------------------------------------------------------------------------------------
# B1
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("arch", ["fc", "same3_pool_same5", "valid5_pool_same3", "stride2_same5"])
def test_b1_simulator_matches_closed_form(arch: str, seed: int) -> None:
    torch.manual_seed(seed)
    model, shape = b1_model(arch)
    model = model.double().eval()
    z = inputs(shape, seed=seed)
    in_range = (-0.2, 1.1) if seed else (0.0, 1.0)
    snn = ttfs.convert(model, z, in_range=in_range)
    if seed:
        with torch.no_grad():
            snn.t_start.fill_(-3.25)  # windows need not start at 0
    record = closed_form(snn, z)
    assert int(record.causality_violations().sum()) == 0
    with torch.no_grad():
        assert torch.allclose(record.logits, model(z.clamp(*in_range)), rtol=0, atol=1e-9)
    sim = simulate_snn(snn, z)
    assert_times_match(sim["times"], record)
    assert_logits_match(sim["logits"], record.logits)
    np.testing.assert_array_equal(sim["spikes"], record.spikes_per_layer().numpy())
    assert sim["causality_violations"].tolist() == [0] * len(record.times)
    assert sim["phase1_spikes"].tolist() == [0] * len(record.times)
    # non-trivial: the network has both spiking and silent neurons
    fired = sum(int(s) for s in sim["spikes"])
    total = sum(t.size for t in sim["times"])
    assert 0 < fired < total


def test_b1_causality_violations_fire_at_window_start() -> None:
    torch.manual_seed(3)
    model, shape = b1_model("fc")
    model = model.double().eval()
    z = inputs(shape, batch=16)
    snn = ttfs.convert(model, z)
    n = len(snn.neuron_layers) - 1  # last hidden layer
    with torch.no_grad():
        snn.deltas[n] *= 0.4  # window too narrow: its largest activations violate causality
    record = closed_form(snn, z)
    violations = record.causality_violations()
    assert int(violations[-1]) > 0 and int(violations[:-1].sum()) == 0
    sim = simulate_snn(snn, z)
    np.testing.assert_array_equal(sim["causality_violations"], violations.numpy())
    t_min = float(record.t_min(n))
    # the simulator fires them at t_min, where the closed form extrapolates a spike before t_min
    expected = [t.numpy() for t in record.times[:-1]] + [np.maximum(record.times[-1].numpy(), t_min)]
    for ts, te in zip(sim["times"], expected, strict=True):
        assert np.abs(ts - te).max() <= TOL
    # and the readout sees the clamped activations: logits = W min(x, Delta) + D
    readout = snn.neuron_layers[-1]
    x = torch.clamp(record.activations()[-1], max=float(snn.deltas[n]))
    with torch.no_grad():
        logits = x @ readout.weight.t() + readout.bias[:, 0]
    assert_logits_match(sim["logits"], logits)


def manual_snn(parameterisation: str, w_hidden, theta_or_d, w_out, out_bias, deltas) -> ttfs.SNN:
    hidden = ttfs.SpikingLinear(len(w_hidden[0]), len(w_hidden), parameterisation)
    readout = ttfs.SpikingLinear(len(w_hidden), 1, parameterisation)
    snn = ttfs.SNN(ttfs.InputEncoder((len(w_hidden[0]),)), [hidden, readout], torch.tensor(deltas)).double()
    with torch.no_grad():
        hidden.weight.copy_(torch.tensor(w_hidden, dtype=torch.float64))
        hidden.bias.copy_(torch.tensor(theta_or_d, dtype=torch.float64)[:, None])
        readout.weight.copy_(torch.tensor([w_out], dtype=torch.float64))
        readout.bias.fill_(out_bias)
    return snn


def test_b1_hand_computed() -> None:
    # inputs x = (0.8, 0.2) -> t0 = (0.2, 0.8); window widths 1, 0.5
    snn = manual_snn("b1", [[1.0, -2.0], [1.0, -2.0], [-1.0, 0.0]], [0.3, 0.5, 0.1], [1.0, 1.0, 1.0], 0.25,
                     [1.0, 0.5])
    sim = simulate_snn(snn, torch.tensor([[0.8, 0.2]], dtype=torch.float64))
    # V(t_min = 1) = 0.8 - 0.4 = 0.4 for the first two; theta = 0.5 - D = (0.2, 0.0, 0.4)
    # neuron 0: 1 + (0.2 - 0.4) < 1 -> violation, fires at t_min = 1; neuron 1: also a violation (fires at 1)
    # neuron 2: V = -0.8 -> crossing at 1 + 1.2 >= t_max = 1.5: silent
    np.testing.assert_allclose(sim["times"][0], [[1.0, 1.0, 1.5]], rtol=0, atol=1e-15)
    assert sim["causality_violations"].tolist() == [2]
    # readout at t_read = 1.5: x = (0.5, 0.5, 0) -> logit = 1.0 + 0.25
    np.testing.assert_allclose(sim["logits"], [[1.25]], rtol=0, atol=1e-15)


# ------------------------------------------------------------------------------------------------
# alpha1
# ------------------------------------------------------------------------------------------------
def alpha1_model(arch: str) -> tuple[nn.Module, tuple[int, ...]]:
    if arch == "fc3":
        layers = [nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 3)]
        shape: tuple[int, ...] = (6,)
    elif arch == "fc_bn":
        layers = [nn.Linear(5, 12), random_bn(12, 1), nn.ReLU(), random_bn(12, 1), nn.Linear(12, 9), nn.ReLU(),
                  nn.Linear(9, 7), nn.ReLU(), nn.Linear(7, 4)]
        shape = (5,)
    elif arch == "conv_valid":
        layers = [nn.Conv2d(2, 3, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(3, 4, 3, stride=2), nn.ReLU(),
                  nn.Flatten(), nn.Linear(16, 4)]
        shape = (2, 12, 12)
    else:
        raise ValueError(arch)
    model = nn.Sequential(*layers).double().eval()
    with torch.no_grad():
        model[-1].weight.mul_(0.05)  # readout row sums < 1 (alpha1 needs them)
    return model, shape


def alpha1_snn(arch: str, seed: int) -> tuple[ttfs.SNN, torch.Tensor]:
    torch.manual_seed(seed)
    model, shape = alpha1_model(arch)
    z = inputs(shape, batch=12, seed=seed)
    snn = ttfs.convert(model, z, parameterisation="alpha1")
    with torch.no_grad():
        assert torch.allclose(snn(z), model(z.clamp(0, 1)), rtol=0, atol=1e-9)
    return snn, z


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("arch", ["fc3", "fc_bn", "conv_valid"])
def test_alpha1_simulator_matches_closed_form(arch: str, seed: int) -> None:
    snn, z = alpha1_snn(arch, seed)
    record = closed_form(snn, z)
    assert int(snn.phase1_spikes(record).sum()) == 0
    sim = simulate_snn(snn, z)
    assert_times_match(sim["times"], record)
    assert_logits_match(sim["logits"], record.logits)
    assert sim["phase1_spikes"].tolist() == [0] * len(record.times)
    assert sim["causality_violations"].tolist() == [0] * len(record.times)
    assert 0 < int(sim["spikes"].sum()) < sum(t.size for t in sim["times"])


@pytest.mark.parametrize("arch", ["fc3", "fc_bn", "conv_valid"])
def test_alpha1_phase1_spikes_detected(arch: str) -> None:
    snn, z = alpha1_snn(arch, 0)
    n = len(snn.neuron_layers) - 1  # lower the thresholds of the last hidden layer
    layer = snn.neuron_layers[n - 1]
    with torch.no_grad():
        g = torch.Generator().manual_seed(5)
        frac = torch.rand(layer.bias.shape, generator=g, dtype=torch.float64) * 1.5
        slope = layer.alpha + layer.weight.flatten(1).sum(1)
        layer.bias.sub_(frac * slope[:, None] * snn.deltas[n])
    record = closed_form(snn, z)
    closed = snn.phase1_spikes(record)
    sim = simulate_snn(snn, z)
    assert 0 < int(closed[-1]) < record.times[-1].numel()
    np.testing.assert_array_equal(sim["phase1_spikes"], closed.numpy())
    np.testing.assert_array_equal(sim["causality_violations"], record.causality_violations().numpy())
    mask = sim["phase1_mask"][-1]
    assert int(mask.sum()) == int(closed[-1])
    # phase-1 neurons fire at their true crossing time in [t_min_in, t_min); all others as in closed form
    t = sim["times"][-1][mask]
    assert np.all((t >= float(record.t_min(n - 1))) & (t < float(record.t_min(n))))
    assert_times_match(sim["times"], record, skip_masks=[np.zeros_like(m) for m in sim["phase1_mask"][:-1]] + [mask])


def test_alpha1_hand_computed_crossing_and_falling_back() -> None:
    # inputs z = (0.8, 0.5, 0.2) -> t0 = (0.2, 0.5, 0.8); hidden window [1, 2), readout at t_read = 2
    w = [3.0, -6.0, 4.0]
    snn = manual_snn("alpha1", [w, w, w, w], [1.3, 1.5, 0.1, -0.5], [0.1, 0.2, 0.05, 0.05], 2.0, [1.0, 1.0])
    z = torch.tensor([[0.8, 0.5, 0.2]], dtype=torch.float64)
    sim = simulate_snn(snn, z)
    # slopes 1, 4, -2, 2 on [0, .2), [.2, .5), [.5, .8), [.8, 2): V(.2) = .2, V(.5) = 1.4, V(.8) = .8, V(1) = 1.2
    # theta 1.3: crosses at .2 + 1.1 / 4 = .475 (phase 1), then falls back; the closed form says 1.05
    # theta 1.5: never in phase 1; 1 + .3 / 2 = 1.15.  theta .1: .1 (phase 1).  theta -.5: fires at t_min_in 0
    np.testing.assert_allclose(sim["times"][0], [[0.475, 1.15, 0.1, 0.0]], rtol=0, atol=1e-14)
    np.testing.assert_array_equal(sim["phase1_mask"][0], [[True, False, True, True]])
    assert sim["phase1_spikes"].tolist() == [3]
    assert sim["causality_violations"].tolist() == [2]  # V(t_min) = 1.2 > theta for the last two
    record = closed_form(snn, z)
    assert snn.phase1_spikes(record).tolist() == [3]
    assert record.causality_violations().tolist() == [2]
    np.testing.assert_allclose(record.times[0].numpy(), [[1.05, 1.15, 0.45, 0.15]], rtol=0, atol=1e-14)
    # readout from t_min_in = 1 (early spikes act from 1): slope 1.2 on [1, 1.15), 1.4 on [1.15, 2)
    # V(2) = .18 + 1.19 = 1.37 -> logit (1.37 - 2) / 1.4
    np.testing.assert_allclose(sim["logits"], [[(1.37 - 2.0) / 1.4]], rtol=0, atol=1e-14)


# ------------------------------------------------------------------------------------------------
# the simulator's own machinery, and that the comparisons above can fail
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kernel,stride,padding", [((3, 3), (1, 1), (1, 1)), ((3, 5), (2, 1), (1, 2)),
                                                    ((5, 5), (2, 2), (0, 0))])
def test_connectivity_is_the_convolution(kernel, stride, padding) -> None:
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(4, 3, *kernel, generator=g, dtype=torch.float64)
    x = torch.randn(2, 3, 9, 8, generator=g, dtype=torch.float64)
    y = F.conv2d(x, weight, stride=stride, padding=padding)
    spec = {"kind": "conv2d", "weight": "w", "in_shape": [3, 9, 8], "out_shape": list(y.shape[1:]),
            "kernel": list(kernel), "stride": list(stride), "padding": list(padding)}
    m = connectivity(spec, {"w": weight.numpy()})
    np.testing.assert_allclose(x.reshape(2, -1).numpy() @ m, y.reshape(2, -1).numpy(), rtol=0, atol=1e-12)


def test_simulate_reads_saved_files_and_detects_tampering(tmp_path) -> None:
    torch.manual_seed(0)
    model, shape = b1_model("same3_pool_same5")
    z = inputs(shape, batch=6)
    snn = ttfs.convert(model.double().eval(), z)
    record = closed_form(snn, z)
    export.save(snn, tmp_path)
    meta, arrays = export.read(tmp_path)
    t0 = snn.encode(z).detach().numpy()
    sim = simulate(meta, arrays, t0)
    assert_times_match(sim["times"], record)
    assert_logits_match(sim["logits"], record.logits)

    # a threshold off by 1e-6 is seen
    tampered = dict(arrays)
    name = meta["layers"][0]["theta"]
    tampered[name] = arrays[name].copy()
    tampered[name][0, 0] += 1e-6
    with pytest.raises(AssertionError):
        assert_times_match(simulate(meta, tampered, t0)["times"], record)
    # so is a flipped pooling sign
    pool = next(s for s in meta["layers"] if s["kind"] == "pool")
    original = list(pool["sign"])
    pool["sign"] = [-s for s in original]
    with pytest.raises(AssertionError):
        assert_times_match(simulate(meta, arrays, t0)["times"], record)
    pool["sign"] = original


def test_simulate_rejects_bad_inputs() -> None:
    snn = manual_snn("b1", [[1.0, -2.0]], [0.3], [1.0], 0.0, [1.0, 1.0])
    meta, arrays = export.to_dict(snn)
    with pytest.raises(ValueError, match="expected"):
        simulate(meta, arrays, np.zeros((2, 3)))
    with pytest.raises(ValueError, match="version"):
        simulate({**meta, "version": 99}, arrays, np.zeros((2, 2)))
