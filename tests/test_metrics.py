"""Metrics of SPEC 6 and the conversion report of SPEC 3.4, checked against hand counts and brute force."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import ttfs
from ttfs import metrics
from ttfs.layers import InputEncoder, MinTimePool2d, SpikingConv2d, SpikingLinear, SpikingNeurons
from ttfs.network import SNN

# -- hand-built networks with known spikes -----------------------------------------------------------


def dense_net(deltas=(1.0, 2.0)) -> SNN:
    """4 inputs -> 3 hidden neurons with zero weights and biases (1, -1, 0.5) -> 2 readouts.

    Hidden neurons 0 and 2 spike for every sample (activations 1 and 0.5), neuron 1 never does.
    """
    hidden, readout = SpikingLinear(4, 3), SpikingLinear(3, 2)
    with torch.no_grad():
        hidden.weight.zero_()
        hidden.bias[:, 0] = torch.tensor([1.0, -1.0, 0.5])
        readout.weight.fill_(1.0)
        readout.bias.zero_()
    return SNN(InputEncoder((4,)), [hidden, readout], torch.tensor(deltas)).double()


# inputs: 9 values > 0 after clipping to [0, 1]; 4 values outside [0, 1]
DENSE_Z = torch.tensor(
    [[0.0, 0.5, 1.0, 2.0], [-1.0, 0.0, 0.0, 0.0], [0.2, 0.2, 0.2, 0.2], [0.0, 0.0, 0.0, 0.0],
     [1.5, -0.5, 0.3, 0.0]],
    dtype=torch.float64,
)


def test_dense_spike_counts_by_hand():
    stats = metrics.spike_statistics(dense_net(), DENSE_Z, split="test")
    assert stats["split"] == "test"
    assert stats["samples"] == 5
    assert stats["hidden_neurons"] == 3 and stats["neurons_per_layer"] == [3]
    assert stats["spikes"] == 10 and stats["spikes_per_layer"] == [10]
    assert stats["spikes_per_neuron"] == pytest.approx(10 / 15)
    assert stats["spikes_per_neuron_per_layer"] == pytest.approx([10 / 15])
    assert stats["causality_violations"] == 0
    assert stats["clipped_inputs"] == 4
    assert stats["input_spikes"] == 9
    assert stats["input_spikes_per_unit"] == pytest.approx(9 / 20)
    # every hidden spike reaches both readouts; every input spike reaches the 3 hidden neurons
    assert stats["synops_total"] == 10 * 2
    assert stats["synops_per_sample"] == pytest.approx(4.0)
    assert stats["synops_per_layer"] == pytest.approx([4.0])
    assert stats["input_synops_total"] == 9 * 3
    assert stats["input_synops_per_sample"] == pytest.approx(27 / 5)
    # no pooling: every spike is routed, the two counts agree
    assert stats["routed_synops_total"] == stats["synops_total"]
    assert stats["routed_synops_per_layer"] == stats["synops_per_layer"]
    assert stats["routed_input_synops_total"] == stats["input_synops_total"]
    assert stats["latency"] == pytest.approx(3.0)


def test_causality_violations_are_counted():
    # hidden window 0.75 < activation 1 of neuron 0: it spikes 0.25 before its window opens
    stats = metrics.spike_statistics(dense_net(deltas=(1.0, 0.75)), DENSE_Z)
    assert stats["causality_violations"] == 5
    assert stats["causality_violations_per_layer"] == [5]
    assert stats["spikes"] == 10


def test_batches_are_accumulated_in_any_format():
    snn = dense_net()
    y = torch.zeros(5, dtype=torch.long)
    expected = metrics.spike_statistics(snn, DENSE_Z)
    formats = [
        [DENSE_Z[:2], DENSE_Z[2:]],
        (DENSE_Z, y),
        [(DENSE_Z[:3], y[:3]), (DENSE_Z[3:], y[3:])],
        DataLoader(TensorDataset(DENSE_Z, y), batch_size=2),
        [DENSE_Z.float()],  # moved to the SNN's dtype
    ]
    for batches in formats:
        assert metrics.spike_statistics(snn, batches) == expected
    with pytest.raises(ValueError, match="no samples"):
        metrics.spike_statistics(snn, [])


def conv_net() -> SNN:
    """1x4x4 -> conv 2@3x3 'same' (channel 0 always spikes, channel 1 never) -> pool 2 -> flatten -> 3."""
    conv, readout = SpikingConv2d(1, 2, 3, padding="same"), SpikingLinear(8, 3)
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias[:, 0] = torch.tensor([1.0, -1.0])
    layers = [conv, MinTimePool2d(2), nn.Flatten(), readout]
    return SNN(InputEncoder((1, 4, 4)), layers, torch.tensor([1.0, 2.0])).double()


def test_conv_fan_out_and_pool_routing_by_hand():
    z = torch.full((2, 1, 4, 4), 0.5, dtype=torch.float64)
    z[1, 0, 0, 0] = 0.0  # a silent corner pixel
    stats = metrics.spike_statistics(conv_net(), z)
    assert stats["neurons_per_layer"] == [32]
    assert stats["spikes"] == 2 * 16
    assert stats["spikes_per_neuron"] == pytest.approx(0.5)
    # SPEC 6: each of the 16 spikes per sample is delivered through its pool window to the 3 readouts
    assert stats["synops_total"] == 2 * 16 * 3
    assert stats["synops_per_sample"] == pytest.approx(48.0)
    # routed: only the winner of each of the 4 pool windows of channel 0 goes on
    assert stats["routed_synops_total"] == 2 * 4 * 3
    assert stats["routed_synops_per_layer"] == pytest.approx([12.0])
    # 3x3 'same' conv on 4x4: corners are read by 4 (output, tap) pairs, edges by 6, the interior by 9;
    # each pair is a synapse into each of the 2 output channels
    all_inputs = 2 * (4 * 4 + 8 * 6 + 4 * 9)
    assert stats["input_synops_total"] == 2 * all_inputs - 2 * 4
    assert stats["input_synops_per_sample"] == pytest.approx((2 * all_inputs - 8) / 2)
    assert stats["routed_input_synops_total"] == stats["input_synops_total"]  # no pool before layer 1


def test_conv_tap_counts_and_fan_out():
    counts = metrics.conv_tap_counts((4, 4), 3, padding="same")
    assert counts.tolist() == [[4, 6, 6, 4], [6, 9, 9, 6], [6, 9, 9, 6], [4, 6, 6, 4]]
    # kernel 2 stride 2 on 5 positions: the last row/column is never read
    counts = metrics.conv_tap_counts((5, 5), 2, stride=2)
    assert counts[4].tolist() == [0] * 5 and counts[:4, :4].eq(1).all()
    fan = metrics.fan_out(conv_net().neuron_layers[0], (1, 4, 4))
    assert fan.shape == (1, 4, 4) and int(fan[0, 0, 0]) == 8 and int(fan[0, 1, 1]) == 18
    assert metrics.fan_out(SpikingLinear(5, 7), (5,)).tolist() == [7] * 5
    # through the 2x2 pool and flatten every conv neuron reaches the 3 readouts
    inputs, hidden = metrics.unit_fan_out(conv_net())
    assert torch.equal(inputs, metrics.fan_out(conv_net().neuron_layers[0], (1, 4, 4)))
    assert hidden.shape == (2, 4, 4) and hidden.eq(3).all()


# -- brute force on converted networks ---------------------------------------------------------------


def random_bn(n: int, gen: torch.Generator) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(n)
    with torch.no_grad():
        bn.weight.copy_(torch.where(torch.arange(n) == 0, -1.0, 1.0) * (0.5 + torch.rand(n, generator=gen)))
        bn.bias.copy_(0.3 * torch.randn(n, generator=gen))
        bn.running_mean.copy_(0.3 * torch.randn(n, generator=gen))
        bn.running_var.copy_(0.5 + torch.rand(n, generator=gen))
    return bn


def relu_conv_model(gen: torch.Generator, leading_pool: bool,
                    pool: tuple[int, int] = (2, 2)) -> tuple[nn.Sequential, tuple[int, int, int]]:
    """Pools (one with a flipped channel), stride remainders, 'same' padding after BN, dense layers.

    ``pool`` = (kernel, stride) of the pool after the first conv: (2, 2) gives 10 -> 5 (then the
    stride-2 conv leaves row/column 4 unread); (3, 2) overlapping windows, 10 -> 4 (row/column 9 in
    no window).
    """
    layers = [nn.MaxPool2d(2)] if leading_pool else []
    layers += [
        nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), random_bn(3, gen), nn.MaxPool2d(*pool),
        nn.Conv2d(3, 4, 2, stride=2), nn.ReLU(), random_bn(4, gen),  # -> 2x2
        nn.Conv2d(4, 3, 3, padding=1), nn.ReLU(),  # per-region thresholds
        nn.Flatten(), nn.Linear(12, 6), nn.ReLU(), nn.Linear(6, 3),
    ]
    model = nn.Sequential(*layers).double().eval()
    return model, ((2, 20, 20) if leading_pool else (2, 10, 10))


def brute_pool(t: torch.Tensor, pool: MinTimePool2d) -> torch.Tensor:
    (kh, kw), (sh, sw) = pool.kernel_size, pool.stride
    b, c, h, w = t.shape
    oh, ow = (h - kh) // sh + 1, (w - kw) // sw + 1
    out = torch.empty(b, c, oh, ow, dtype=t.dtype)
    for n in range(b):
        for ch in range(c):
            latest = pool.sign is not None and float(pool.sign.reshape(-1)[ch]) < 0
            for i in range(oh):
                for j in range(ow):
                    window = [float(t[n, ch, i * sh + a, j * sw + e]) for a in range(kh) for e in range(kw)]
                    out[n, ch, i, j] = max(window) if latest else min(window)
    return out


def brute_fan_out(layer: SpikingNeurons, shape: tuple[int, ...]) -> dict:
    if isinstance(layer, SpikingLinear):
        return {(k,): layer.out_features for k in range(shape[0])}
    c, h, w = shape
    (kh, kw), (sh, sw), (ph, pw) = layer.kernel_size, layer.stride, layer.padding
    oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    count = {(y, x): 0 for y in range(h) for x in range(w)}
    for i in range(oh):
        for j in range(ow):
            for a in range(kh):
                for e in range(kw):
                    y, x = i * sh - ph + a, j * sw - pw + e
                    if 0 <= y < h and 0 <= x < w:
                        count[(y, x)] += 1
    return {(ch, y, x): count[(y, x)] * layer.out_channels
            for ch in range(c) for y in range(h) for x in range(w)}


def _run_by_segment(snn: SNN, z: torch.Tensor) -> tuple:
    """(record, window boundaries, [(modules between neuron layers, neuron layer), ...]) of one run."""
    with torch.no_grad():
        record = snn.run(z)
    segments, between = [], []
    for layer in snn.layers:
        if isinstance(layer, SpikingNeurons):
            segments.append((between, layer))
            between = []
        else:
            between.append(layer)
    return record, record.boundaries.tolist(), segments


def brute_force(snn: SNN, z: torch.Tensor) -> tuple[list[int], list[int], list[int]]:
    """(spikes per hidden layer, routed SynOps per source layer [input, hidden...], MACs per neuron layer).

    Routed: the pool is applied to the spike times first and only the events it lets through count.
    """
    record, b, segments = _run_by_segment(snn, z)
    sources = [record.input_times, *record.times]
    spikes = [sum(v < b[n + 1] for v in t.flatten().tolist()) for n, t in enumerate(record.times, start=1)]
    synops, macs = [], []
    for m, (modules, layer) in enumerate(segments):
        t = sources[m]
        for module in modules:
            t = brute_pool(t, module) if isinstance(module, MinTimePool2d) else t.reshape(len(t), -1)
        fan = brute_fan_out(layer, tuple(t.shape[1:]))
        macs.append(sum(fan.values()))
        total = 0
        for sample in t:
            for index, fo in fan.items():
                if float(sample[index]) < b[m + 1]:
                    total += fo
        synops.append(total)
    return spikes, synops, macs


def unfolded_synapses(modules: list[nn.Module], layer: SpikingNeurons, shape: tuple[int, ...]) -> dict:
    """Synapses of every unit of a spiking layer of shape ``shape`` (no batch), by explicit enumeration.

    Each unit is followed through the routing modules one path at a time (every pool window whose
    rectangle contains it; its flat index through flatten) to the inputs of ``layer`` it reaches, and
    each reached input contributes its synapses into ``layer`` (:func:`brute_fan_out`).
    """
    units = list(itertools.product(*(range(s) for s in shape)))
    reach = {u: [u] for u in units}
    for module in modules:
        if isinstance(module, MinTimePool2d):
            (kh, kw), (sh, sw) = module.kernel_size, module.stride
            c, h, w = shape
            oh, ow = (h - kh) // sh + 1, (w - kw) // sw + 1
            step = {(ch, y, x): [(ch, i, j) for i in range(oh) for j in range(ow)
                                 if i * sh <= y < i * sh + kh and j * sw <= x < j * sw + kw]
                    for ch in range(c) for y in range(h) for x in range(w)}
            shape = (c, oh, ow)
        else:  # flatten, row-major
            step = {v: [(sum(i * math.prod(shape[d + 1:]) for d, i in enumerate(v)),)]
                    for v in itertools.product(*(range(s) for s in shape))}
            shape = (math.prod(shape),)
        reach = {u: [v for r in targets for v in step[r]] for u, targets in reach.items()}
    fan = brute_fan_out(layer, shape)
    return {u: sum(fan[v] for v in targets) for u, targets in reach.items()}


def brute_spec_synops(snn: SNN, z: torch.Tensor) -> tuple[list[int], list[dict]]:
    """SPEC 6 SynOps per source layer [input, hidden...]: every spike times its unit's synapses."""
    record, b, segments = _run_by_segment(snn, z)
    totals, synapses = [], []
    for m, (t, (modules, layer)) in enumerate(zip([record.input_times, *record.times], segments, strict=True)):
        counts = unfolded_synapses(modules, layer, tuple(t.shape[1:]))
        totals.append(sum(counts[u] for sample in t for u in counts if float(sample[u]) < b[m + 1]))
        synapses.append(counts)
    return totals, synapses


@pytest.mark.parametrize("leading_pool,pool", [(False, (2, 2)), (True, (2, 2)), (False, (3, 2))])
def test_synops_and_macs_match_brute_force(leading_pool, pool):
    gen = torch.Generator().manual_seed(11 + leading_pool + pool[0])
    torch.manual_seed(11 + leading_pool + pool[0])
    model, in_shape = relu_conv_model(gen, leading_pool, pool)
    z = torch.rand(5, *in_shape, generator=gen, dtype=torch.float64)
    z[z < 0.3] = 0.0  # silent input pixels
    snn = ttfs.convert(model, z)
    assert any(isinstance(m, MinTimePool2d) and m.sign is not None for m in snn.layers)
    spikes, routed, macs = brute_force(snn, z)
    spec, synapses = brute_spec_synops(snn, z)
    stats = metrics.spike_statistics(snn, [z[:2], z[2:]])
    assert stats["spikes_per_layer"] == spikes
    assert all(0 < s for s in spikes)
    # SPEC 6: every spike times the synapses of its neuron, exactly
    for fan, counts in zip(metrics.unit_fan_out(snn), synapses, strict=True):
        assert {u: int(fan[u]) for u in counts} == counts
    assert stats["input_synops_total"] == spec[0]
    assert stats["synops_total"] == sum(spec[1:])
    assert [round(s * 5) for s in stats["synops_per_layer"]] == spec[1:]
    # the pool-winner count, separately
    assert stats["routed_input_synops_total"] == routed[0]
    assert stats["routed_synops_total"] == sum(routed[1:])
    assert stats["routed_synops_per_layer"] == pytest.approx([s / 5 for s in routed[1:]], rel=1e-12)
    assert stats["synops_total"] > stats["routed_synops_total"]  # pool losers cost synaptic operations too
    if pool == (3, 2):
        hidden = metrics.unit_fan_out(snn)[1]
        assert hidden[:, -1, :].eq(0).all() and int(hidden.max()) > int(hidden[:, 0, 0].max())  # uncovered, overlaps
    # one MAC per synapse = the sum of all fan-outs into each neuron layer
    assert metrics.macs(snn)["per_layer"] == macs
    assert metrics.relu_macs(model, in_shape)["per_layer"] == macs
    assert metrics.macs(snn)["total"] == sum(macs) and metrics.macs(snn)["first_layer"] == macs[0]


def test_macs_with_padding_is_the_conventional_count():
    gen = torch.Generator().manual_seed(5)
    model, in_shape = relu_conv_model(gen, leading_pool=False)
    expected = [3 * 10 * 10 * 2 * 9, 4 * 2 * 2 * 3 * 4, 3 * 2 * 2 * 4 * 9, 12 * 6, 6 * 3]
    assert metrics.relu_macs(model, in_shape, include_padding=True)["per_layer"] == expected
    snn = ttfs.convert(model, torch.rand(4, *in_shape, dtype=torch.float64))
    assert metrics.macs(snn, include_padding=True)["per_layer"] == expected
    assert metrics.macs(snn)["per_layer"][0] < expected[0]  # border taps read padding


def test_synops_equal_macs_when_every_neuron_spikes():
    torch.manual_seed(2)
    model = nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 2, 3, stride=2), nn.ReLU(),
        nn.Flatten(), nn.Linear(2 * 3 * 3, 5), nn.ReLU(), nn.Linear(5, 2),
    ).double()
    for m in model:
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            with torch.no_grad():
                m.weight.uniform_(0.0, 0.1)
                m.bias.fill_(1.0)
    z = 0.1 + torch.rand(4, 1, 8, 8, dtype=torch.float64)
    snn = ttfs.convert(model, z)
    stats = metrics.spike_statistics(snn, z)
    counts = metrics.macs(snn)
    assert stats["spikes_per_neuron"] == 1.0
    assert stats["input_synops_per_sample"] == counts["first_layer"]
    assert stats["synops_per_sample"] == sum(counts["per_layer"][1:])


# -- energy and latency ------------------------------------------------------------------------------


def test_energy_arithmetic():
    stats = {"synops_per_sample": 1000.0, "input_synops_per_sample": 200.0}
    counts = {"per_layer": [300, 4000, 700], "total": 5000, "first_layer": 300}
    e = metrics.energy_estimate(stats, counts)
    assert e["snn_pj"] == pytest.approx(0.9 * 1000 + 4.6 * 300)
    assert e["ann_pj"] == pytest.approx(4.6 * 5000)
    assert e["ratio"] == pytest.approx(e["snn_pj"] / e["ann_pj"])
    assert e["saving"] == pytest.approx(e["ann_pj"] / e["snn_pj"])
    assert e["snn_first_layer_macs"] == 300 and e["ann_macs"] == 5000
    spiking = metrics.energy_estimate(stats, counts, first_layer_spiking=True)
    assert spiking["snn_pj"] == pytest.approx(0.9 * 1200)
    assert spiking["snn_synops"] == 1200 and spiking["snn_first_layer_macs"] == 0
    custom = metrics.energy_estimate(stats, counts, e_synop_pj=1.0, e_mac_pj=2.0)
    assert custom["snn_pj"] == pytest.approx(1000 + 600) and custom["ann_pj"] == pytest.approx(10000)
    silent = metrics.energy_estimate({"synops_per_sample": 0.0, "input_synops_per_sample": 0.0}, counts,
                                     first_layer_spiking=True)
    assert silent["snn_pj"] == 0.0 and silent["saving"] is None


def test_energy_end_to_end_and_json():
    gen = torch.Generator().manual_seed(1)
    model, in_shape = relu_conv_model(gen, leading_pool=False)
    z = torch.rand(6, *in_shape, generator=gen, dtype=torch.float64)
    snn = ttfs.convert(model, z)
    stats, counts = metrics.spike_statistics(snn, z), metrics.macs(snn)
    e = metrics.energy_estimate(stats, counts)
    assert e["snn_pj"] == pytest.approx(0.9 * stats["synops_per_sample"] + 4.6 * counts["per_layer"][0])
    for result in (stats, counts, e, metrics.compare_to_relu(model, snn, z)):
        json.dumps(result, allow_nan=False)


def test_latency_is_the_sum_of_windows():
    snn = dense_net(deltas=(1.0, 2.5))
    assert metrics.latency(snn) == pytest.approx(3.5)
    b = snn.boundaries()
    assert metrics.latency(snn) == pytest.approx(float(b[-1] - b[0]))
    assert isinstance(metrics.latency(snn), float)


# -- compare_to_relu ---------------------------------------------------------------------------------


def test_compare_to_relu_on_converted_network():
    gen = torch.Generator().manual_seed(7)
    model, in_shape = relu_conv_model(gen, leading_pool=False)
    model = nn.Sequential(*model[:-1], nn.Dropout(0.5), model[-1]).train()
    x = torch.rand(20, *in_shape, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (20,), generator=gen)
    snn = ttfs.convert(model, x)
    assert model.training  # convert restores the mode
    report = metrics.compare_to_relu(model, snn, DataLoader(TensorDataset(x, y), batch_size=8), split="val")
    assert model.training  # restored after evaluation in eval mode
    model.eval()
    with torch.no_grad():
        ref = model(x)
    assert report["samples"] == 20 and report["split"] == "val"
    assert report["agreement"] == 1.0
    assert report["relu_logit_scale"] == pytest.approx(float(ref.abs().max()))
    assert report["max_rel_logit_diff"] <= 1e-9
    assert report["max_abs_logit_diff"] <= 1e-9 * report["relu_logit_scale"]
    expected_accuracy = float((ref.argmax(1) == y).double().mean())
    assert report["relu_accuracy"] == pytest.approx(expected_accuracy)
    assert report["snn_accuracy"] == report["relu_accuracy"]
    assert report["causality_violations"] == 0
    stats = metrics.spike_statistics(snn, x)
    assert report["spikes_per_neuron"] == stats["spikes_per_neuron"]
    assert report["spikes_per_neuron_per_layer"] == stats["spikes_per_neuron_per_layer"]
    assert report["latency"] == metrics.latency(snn)

    unlabelled = metrics.compare_to_relu(model, snn, [x[:7], x[7:]])
    assert unlabelled["relu_accuracy"] is None and unlabelled["snn_accuracy"] is None
    assert unlabelled["agreement"] == 1.0 and unlabelled["samples"] == 20


def test_compare_to_relu_detects_a_difference():
    torch.manual_seed(8)  # layer weights come from the global generator
    gen = torch.Generator().manual_seed(8)
    model, in_shape = relu_conv_model(gen, leading_pool=False)
    x = torch.rand(16, *in_shape, generator=gen, dtype=torch.float64)
    snn = ttfs.convert(model, x)
    with torch.no_grad():
        snn.neuron_layers[-1].bias[1] += 0.25
        snn.neuron_layers[-1].bias[2] += 100.0  # class 2 always wins in the SNN
        ref = model(x)
    report = metrics.compare_to_relu(model, snn, x)
    assert report["max_abs_logit_diff"] == pytest.approx(100.0)
    assert report["max_rel_logit_diff"] == pytest.approx(100.0 / float(ref.abs().max()))
    assert report["agreement"] == pytest.approx(float((ref.argmax(1) == 2).double().mean()))
    assert report["agreement"] < 1.0


def test_compare_to_relu_float32():
    gen = torch.Generator().manual_seed(9)
    model, in_shape = relu_conv_model(gen, leading_pool=False)
    model = model.float()
    x = torch.rand(16, *in_shape, generator=gen, dtype=torch.float64)  # moved to each network's dtype
    snn = ttfs.convert(model, x.float())
    assert snn.deltas.dtype == torch.float32
    report = metrics.compare_to_relu(model, snn, x)
    assert report["max_rel_logit_diff"] <= 1e-4
    assert report["agreement"] == 1.0


def test_alpha1_statistics_report_phase1_spikes():
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 2)).double()
    with torch.no_grad():
        for m in model:
            if isinstance(m, nn.Linear):
                m.weight.mul_(0.3)
    x = torch.rand(10, 6, dtype=torch.float64)
    snn = ttfs.convert(model, x, parameterisation="alpha1")
    stats = metrics.spike_statistics(snn, x)
    assert len(stats["phase1_spikes_per_layer"]) == 2
    assert stats["phase1_spikes"] == sum(stats["phase1_spikes_per_layer"])
    with torch.no_grad():
        expected = [int(c) for c in snn.phase1_spikes(snn.run(x))]
    assert stats["phase1_spikes_per_layer"] == expected
    assert math.isfinite(stats["spikes_per_neuron"])
