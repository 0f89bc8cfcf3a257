"""Hardware constraints: jitter, time steps, weight bits and latency act as documented."""

import pytest
import torch
from torch import nn

import ttfs
from ttfs.constraints import (
    FakeQuantise,
    SpikeTimeConstraints,
    clamp_hidden_biases,
    constrain_spike_times,
    quantise_weights,
    reduce_latency,
    set_input_window,
    tighten_windows,
    time_steps_for,
)
from ttfs.train import TensorBatches, train_epoch


@pytest.fixture
def network():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 20), nn.ReLU(), nn.Linear(20, 20), nn.ReLU(),
                          nn.Linear(20, 4)).double()
    inputs = torch.rand(200, 1, 4, 4, dtype=torch.float64)
    return model, ttfs.convert(model, inputs), inputs


def test_saturation_only_keeps_the_exact_function_when_windows_are_wide(network):
    model, snn, inputs = network
    constrain_spike_times(snn)
    with torch.no_grad():
        assert (snn(inputs) - model(inputs)).abs().max() <= 1e-12


def test_jitter_moves_only_spiking_neurons_and_stays_in_the_window(network):
    _, snn, inputs = network
    t_min, t_max = torch.tensor(1.0, dtype=torch.float64), torch.tensor(3.0, dtype=torch.float64)
    times = torch.full((20000,), 2.0, dtype=torch.float64)
    times[::2] = t_max  # silent
    jittered = SpikeTimeConstraints(jitter=0.1, seed=0)(times, t_min, t_max)
    assert torch.equal(jittered[::2], times[::2])
    assert float(jittered[1::2].std()) == pytest.approx(0.1, rel=0.05)
    assert abs(float(jittered[1::2].mean()) - 2.0) < 0.005

    exact = snn.run(inputs)
    constrain_spike_times(snn, jitter=0.05, seed=1)
    noisy = snn.run(inputs)
    b = noisy.boundaries
    for n, t in enumerate(noisy.times, start=1):
        assert bool(((t >= b[n]) & (t <= b[n + 1])).all())
    assert not torch.equal(noisy.logits, exact.logits)
    constrain_spike_times(snn, jitter=0.05, seed=1)
    assert torch.equal(snn.run(inputs).logits, noisy.logits)  # a seed reproduces the jitter


def test_time_steps_snap_to_the_grid_and_converge_with_k(network):
    model, snn, inputs = network
    errors = []
    for k in (4, 16, 256):
        constrain_spike_times(snn, time_steps=k)
        record = snn.run(inputs)
        b = record.boundaries
        for n, t in enumerate([record.input_times, *record.times]):
            step = (b[n + 1] - b[n]) / k
            position = (t - b[n]) / step
            assert (position - position.round()).abs().max() <= 1e-9
            assert bool((t >= b[n]).all())
        with torch.no_grad():
            errors.append(float((record.logits - model(inputs)).abs().max()))
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 0.05 * errors[0]


def distinct_times(constraints: SpikeTimeConstraints) -> tuple[torch.Tensor, int]:
    """(every time a densely filled window [1, 3] is quantised to, the number of spike times among them)."""
    t_min, t_max = torch.tensor(1.0, dtype=torch.float64), torch.tensor(3.0, dtype=torch.float64)
    times = torch.linspace(1.0, 3.0, 200_001, dtype=torch.float64)
    quantised = constraints(times, t_min, t_max).unique()
    return quantised, int((quantised < t_max).sum())


@pytest.mark.parametrize("k", [2, 4, 16])
def test_k_time_steps_give_k_spike_times_plus_silence(k):
    values, spiking = distinct_times(SpikeTimeConstraints(time_steps=k))
    assert spiking == k and values.numel() == k + 1  # k = 0..K-1, and t_max = silent
    assert torch.allclose(values, 1.0 + torch.arange(k + 1, dtype=torch.float64) * 2.0 / k)


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_b_time_bits_give_2b_minus_1_spike_times_plus_silence(bits):
    # the authors' b-bit fake quantisation of [t_min, t_max]: 2^b grid points, both ends included
    k = time_steps_for(bits, "bits")
    assert k == 2**bits - 1
    values, spiking = distinct_times(SpikeTimeConstraints(time_steps=k))
    assert spiking == 2**bits - 1 and values.numel() == 2**bits
    assert torch.allclose(values, torch.linspace(1.0, 3.0, 2**bits, dtype=torch.float64))


def test_time_bits_on_a_network_snap_every_window_to_2b_points(network):
    _, snn, inputs = network
    constrain_spike_times(snn, time_bits=3)
    assert snn.spike_constraints.levels == 7
    record = snn.run(inputs)
    b = record.boundaries
    for n, t in enumerate([record.input_times, *record.times]):
        position = (t - b[n]) / ((b[n + 1] - b[n]) / 7)
        assert (position - position.round()).abs().max() <= 1e-9
        assert t.unique().numel() <= 8 and bool(((t >= b[n]) & (t <= b[n + 1])).all())
    assert time_steps_for(16, "steps") == 16


def test_jitter_spares_the_input_spikes_unless_asked(network):
    _, snn, inputs = network
    exact = snn.run(inputs)
    constrain_spike_times(snn, jitter=0.1, seed=0)  # default: hidden outputs only, as the authors' code
    noisy = snn.run(inputs)
    assert torch.equal(noisy.input_times, exact.input_times)
    assert all(not torch.equal(a, c) for a, c in zip(noisy.times, exact.times, strict=True))
    constrain_spike_times(snn, jitter=0.1, seed=0, jitter_inputs=True)
    both = snn.run(inputs)
    spiking = exact.input_times < exact.boundaries[1]
    assert bool((both.input_times[spiking] != exact.input_times[spiking]).all())
    assert torch.equal(both.input_times[~spiking], exact.input_times[~spiking])  # silent stays silent
    assert "jitter_inputs=True" in repr(snn.spike_constraints)


def test_weight_quantisation_levels_and_straight_through_gradient(network):
    _, snn, inputs = network
    quantise_weights(snn, bits=4)
    for layer in snn.neuron_layers:
        assert layer.weight.unique().numel() <= 2**4 - 1
    labels = torch.randint(0, 4, (len(inputs),))
    opt = torch.optim.Adam(snn.parameters(), lr=1e-2)
    before = [p.detach().clone() for p in snn.parameters()]
    train_epoch(snn, TensorBatches(inputs, labels, 20), opt)
    assert any(not torch.equal(p, q) for p, q in zip(snn.parameters(), before, strict=True))
    quantise_weights(snn, None)
    assert all(not hasattr(layer, "parametrizations") for layer in snn.neuron_layers)


def test_input_window_change_is_exact_and_latency_reduction_saturates(network):
    model, snn, inputs = network
    set_input_window(snn, 0.25)
    with torch.no_grad():
        assert (snn(inputs) - model(inputs)).abs().max() <= 1e-12
    latency = float(snn.latency())
    reduce_latency(snn, 4.0)
    assert float(snn.latency()) == pytest.approx(latency / 4)
    record = snn.run(inputs)
    assert int(record.causality_violations().sum()) == 0  # saturated, not early


def test_tight_windows_from_quantile(network):
    _, snn, inputs = network
    tighten_windows(snn, inputs, quantile=0.9)
    record = snn.run(inputs)
    saturated = [(x >= snn.deltas[n] - 1e-12).double().mean() for n, x in enumerate(record.activations(), 1)]
    assert all(0.0 < float(s) < 0.3 for s in saturated)


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda snn: constrain_spike_times(snn, jitter=-0.1), "jitter sigma must be >= 0"),
        (lambda snn: constrain_spike_times(snn, time_steps=1), "time_steps must be >= 2"),
        (lambda snn: constrain_spike_times(snn, time_bits=1), r"time_bits must be in \[2, 24\]"),
        (lambda snn: constrain_spike_times(snn, time_steps=4, time_bits=2), "not both"),
        (lambda snn: time_steps_for(4, "levels"), "'steps' or 'bits'"),
        (lambda snn: quantise_weights(snn, bits=1), "bit-width must be >= 2"),
        (lambda snn: reduce_latency(snn, 0.5), "factor must be >= 1"),
    ],
)
def test_bad_constraint_values_are_rejected(network, call, message):
    with pytest.raises(ValueError, match=message):
        call(network[1])


def test_fake_quantise_percentile_range_clips_outliers():
    weight = torch.cat([torch.linspace(-1, 1, 999), torch.tensor([50.0])]).double()
    quantised = FakeQuantise(bits=3, percentile=99.0)(weight)
    assert quantised.abs().max() <= 1.0 + 1e-9
    assert quantised.unique().numel() <= 7


def test_nonpositive_biases_silence_neurons_without_input(network):
    model, snn, inputs = network
    with torch.no_grad():
        for layer in snn.neuron_layers:
            layer.bias.add_(0.5)  # every hidden neuron would fire spontaneously
    silent_input = torch.zeros(3, 1, 4, 4, dtype=torch.float64)
    assert int(snn.run(silent_input).spikes_per_layer().sum()) > 0
    readout = snn.neuron_layers[-1].bias.detach().clone()
    clamp_hidden_biases(snn)
    assert int(snn.run(silent_input).spikes_per_layer().sum()) == 0
    assert torch.equal(snn.neuron_layers[-1].bias, readout)
    assert int(snn.run(inputs).spikes_per_layer().sum()) > 0  # real inputs still make spikes


def test_nonpositive_biases_refuse_batch_norm_and_alpha1(network):
    _, _, inputs = network
    with pytest.raises(ValueError, match="batch_norm to false"):
        clamp_hidden_biases(nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2)))
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4)).double()
    with torch.no_grad():
        model[-1].weight.mul_(0.01)  # inside alpha1's convertible range
    alpha1 = ttfs.convert(model, inputs, parameterisation="alpha1")
    with pytest.raises(ValueError, match="B1 networks"):
        clamp_hidden_biases(alpha1)


def test_jitter_of_a_batch_slice_is_that_slice_of_the_global_batch_jitter():
    """A data-parallel process (batch_slice set) draws the noise one process would draw for the global batch."""
    from ttfs.constraints import SpikeTimeConstraints

    t = torch.rand(6, 5, dtype=torch.float64)
    t_min, t_max = torch.zeros((), dtype=torch.float64), torch.full((), 2.0, dtype=torch.float64)
    whole = SpikeTimeConstraints(jitter=0.1, seed=3)(t, t_min, t_max)
    part = SpikeTimeConstraints(jitter=0.1, seed=3)
    part.batch_slice = (2, 5, 6)
    assert torch.equal(part(t[2:5], t_min, t_max), whole[2:5])
