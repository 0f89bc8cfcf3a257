"""The alpha1 parameterisation (SPEC 2.3-2.4): exact conversion, reverse map, silent B <= 0 neurons,
phase-1 spikes, a hand-computed example, and a training trajectory that departs from the ReLU one."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ttfs
from ttfs.convert import _alpha1_rescale, _Flatten, _Neurons, _Pool, fold
from ttfs.jacobian import (
    alpha1_standard_snn,
    cosine_similarity_to_relu,
    equivalent_relu_parameters,
    glorot_relu_mlp,
)

F64 = torch.float64
MARGIN = 0.5  # convert()'s default alpha1_margin


def eval_ops(ops: list, x: torch.Tensor) -> torch.Tensor:
    """Evaluate folded ReLU-space ops (the output of ttfs.convert.fold) on scaled inputs x."""
    for op in ops:
        if isinstance(op, _Flatten):
            x = x.flatten(1)
        elif isinstance(op, _Pool):
            s = op.sign.reshape(1, -1, 1, 1)
            x = s * F.max_pool2d(s * x, op.kernel_size, op.stride)
        else:
            assert isinstance(op, _Neurons)
            if op.is_conv:
                y = F.conv2d(x, op.weight, stride=op.stride, padding=op.padding)
                y = y + (op.bias[:, 0, None, None] if op.region_index is None else op.bias[:, op.region_index])
            else:
                y = x @ op.weight.t() + op.bias[:, 0]
            x = torch.relu(y) if op.relu else y
    return x


def readout_row_sums_after_rescale(model: nn.Module, in_shape: tuple[int, ...], p=0.0, q=1.0,
                                   input_delta: float = 1.0) -> torch.Tensor:
    c = in_shape[0]
    ops = fold(model, in_shape, torch.full((c,), float(p), dtype=F64), torch.full((c,), float(q), dtype=F64),
               input_delta)
    _alpha1_rescale(ops, MARGIN)
    return ops[-1].weight.flatten(1).sum(1)


def make_readout_safe(model: nn.Module, in_shape, **kw) -> None:
    """Scale the readout (weights and bias) so that its row sums stay <= 1/2 after alpha1's hidden
    rescaling (which multiplies readout weights by factors >= 1). Scales the logits by a positive factor."""
    top = float(readout_row_sums_after_rescale(model, in_shape, **kw).max())
    last = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))][-1]
    if top > 0.5:
        with torch.no_grad():
            last.weight.mul_(0.5 / top)
            last.bias.mul_(0.5 / top)
    assert float(readout_row_sums_after_rescale(model, in_shape, **kw).max()) < 1


def fc_net(widths, seed):
    torch.manual_seed(seed)
    mods: list[nn.Module] = []
    for k, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        mods.append(nn.Linear(a, b))
        if k < len(widths) - 2:
            mods.append(nn.ReLU())
    model = nn.Sequential(*mods).to(F64)
    with torch.no_grad():  # biases of both signs and weights large enough to need rescaling
        for m in model:
            if isinstance(m, nn.Linear):
                m.weight.mul_(2.0)
                m.bias.uniform_(-0.3, 0.3)
    return model


def assert_logits_close(got: torch.Tensor, ref: torch.Tensor, rel: float = 1e-9) -> None:
    err = float((got - ref).abs().max())
    scale = float(ref.abs().max())
    assert scale > 0
    assert err <= rel * scale, f"max |diff| {err:.3g} vs logit scale {scale:.3g}"


# ------------------------------------------------------------------------------------------------
# conversion and reverse map
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "widths, seed, in_range, input_delta",
    [
        ([6, 9, 4], 0, (0.0, 1.0), 1.0),
        ([10, 16, 16, 3], 1, (0.0, 1.0), 1.0),
        ([8, 12, 7, 12, 5], 2, (-1.0, 2.0), 0.5),
        ([5, 20, 20, 20, 2], 3, (0.0, 1.0), 2.0),
    ],
)
def test_alpha1_conversion_reproduces_relu_logits(widths, seed, in_range, input_delta):
    model = fc_net(widths, seed)
    make_readout_safe(model, (widths[0],), p=in_range[0], q=in_range[1], input_delta=input_delta)
    g = torch.Generator().manual_seed(seed)
    z = in_range[0] + (in_range[1] - in_range[0]) * torch.rand(200, widths[0], generator=g, dtype=F64)
    snn = ttfs.convert(model, z, in_range=in_range, input_delta=input_delta, parameterisation="alpha1")
    assert snn.parameterisation == "alpha1"
    with torch.no_grad():
        record = snn.run(z)
        ref = model(z)
    assert_logits_close(record.logits, ref)
    assert bool((record.logits.argmax(1) == ref.argmax(1)).all())
    assert int(record.causality_violations().sum()) == 0
    # alpha1 weights are not the ReLU weights: W = alpha w / (1 - sum_k w_k) and B = alpha + sum W != 1
    first = snn.neuron_layers[0]
    assert float((first.slope(z).detach() - 1).abs().max()) > 1e-3
    # the hidden activations x = t_max - t equal the ReLU activations of the rescaled network
    assert all(bool((x >= 0).all()) for x in record.activations())


def test_alpha1_rescale_keeps_the_function():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(3, 4, 2), nn.ReLU(),
                          nn.Flatten(), nn.Linear(36, 9), nn.ReLU(), nn.Linear(9, 3)).to(F64)
    with torch.no_grad():
        for m in model:
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.add_(0.15)  # positive row sums, above 1 - margin for most neurons
    p, q = torch.zeros(2, dtype=F64), torch.ones(2, dtype=F64)
    ops = fold(model, (2, 11, 11), p, q)
    before = copy.deepcopy(ops)
    _alpha1_rescale(ops, MARGIN)
    x = torch.rand(17, 2, 11, 11, dtype=F64)
    ref = eval_ops(before, x)
    torch.testing.assert_close(ref, model(x).detach(), rtol=0, atol=1e-12)  # the evaluator is right
    torch.testing.assert_close(eval_ops(ops, x), ref, rtol=0, atol=1e-12 * float(ref.abs().max()))
    neurons_before = [op for op in before if isinstance(op, _Neurons)]
    neurons = [op for op in ops if isinstance(op, _Neurons)]
    for old, new in zip(neurons_before[:-1], neurons[:-1], strict=True):
        old_sum, new_sum = old.weight.flatten(1).sum(1), new.weight.flatten(1).sum(1)
        assert bool((new_sum <= 1 - MARGIN + 1e-12).all())
        rescaled = old_sum > 1 - MARGIN
        assert bool(rescaled.any())  # the test exercises the rescaling (and the conv->flatten->linear path)
        torch.testing.assert_close(new_sum[rescaled], torch.full_like(new_sum[rescaled], 1 - MARGIN))
        torch.testing.assert_close(new.weight[~rescaled], old.weight[~rescaled], rtol=0, atol=0)
    # and the alpha1 SNN built from it computes the same function
    make_readout_safe(model, (2, 11, 11))
    snn = ttfs.convert(model, x, parameterisation="alpha1")
    with torch.no_grad():
        assert_logits_close(snn(x), model(x))


def test_alpha1_reverse_map_reproduces_relu():
    model = fc_net([7, 11, 11, 4], 5)
    make_readout_safe(model, (7,))
    z = torch.rand(100, 7, dtype=F64)
    snn = ttfs.convert(model, z, parameterisation="alpha1")
    with torch.no_grad():
        ref = model(z)
        back = ttfs.to_relu(snn)
        assert_logits_close(back(z), ref)
        # relu_parameters by hand: x -> ReLU(w x + b) ... w x + b
        x = z
        params = snn.relu_parameters()
        for k, (w, b) in enumerate(params):
            y = x @ w.t() + b[:, 0]
            x = torch.relu(y) if k < len(params) - 1 else y
        assert_logits_close(x, ref)
    # the reverse-mapped weights are those of the rescaled ReLU network, not the original ones
    ops = fold(model, (7,), torch.zeros(7, dtype=F64), torch.ones(7, dtype=F64))
    _alpha1_rescale(ops, MARGIN)
    for (w, b), op in zip(params, [o for o in ops if isinstance(o, _Neurons)], strict=True):
        torch.testing.assert_close(w, op.weight, rtol=1e-12, atol=1e-13)
        torch.testing.assert_close(b, op.bias, rtol=1e-12, atol=1e-12)


def test_nonpositive_slopes_are_silent_and_counted():
    layer = ttfs.SpikingLinear(4, 5, "alpha1").to(F64)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([
            [-1.0, -0.5, 0.2, 0.3],   # sum -1: B = 0
            [-2.0, 0.5, -0.5, 0.0],   # B = -1
            [0.5, 0.5, -0.2, 0.1],    # B = 1.9
            [-0.5, -0.4, 0.0, 0.0],   # B = 0.1
            [1.0, 1.0, 1.0, 1.0],     # B = 5
        ], dtype=F64))
        layer.bias.copy_(torch.full((5, 1), -3.0, dtype=F64))  # low threshold: every rising neuron fires
    t_in = torch.rand(50, 4, dtype=F64)  # input window [0, 1], this layer's window [1, 2]
    t = layer(t_in, torch.tensor(0.0, dtype=F64), torch.tensor(1.0, dtype=F64), torch.tensor(2.0, dtype=F64))
    assert bool((t[:, :2] == 2.0).all())  # B <= 0: silent for every input, whatever the threshold
    assert bool((t[:, 2:] < 2.0).all())
    assert layer.nonpositive_slopes(t_in) == 2
    assert ttfs.SpikingLinear(4, 5, "b1").nonpositive_slopes(t_in.float()) == 0
    with pytest.raises(ValueError, match="slope B <= 0"):
        layer.relu_equivalent(1.0, 1.0)


def test_alpha1_conv_with_padding_raises():
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding="same"), nn.ReLU(), nn.Flatten(),
                          nn.Linear(2 * 5 * 5, 2)).to(F64)
    z = torch.rand(4, 1, 5, 5, dtype=F64)
    with pytest.raises(ValueError, match="padding"):
        ttfs.convert(model, z, parameterisation="alpha1")
    explicit = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Flatten(),
                             nn.Linear(2 * 5 * 5, 2)).to(F64)
    with pytest.raises(ValueError, match="padding"):
        ttfs.convert(explicit, z, parameterisation="alpha1")
    layer = ttfs.SpikingConv2d(1, 2, 3, padding="same", parameterisation="alpha1")
    with pytest.raises(ValueError, match="padding"):
        layer.relu_equivalent(1.0, 1.0)
    ttfs.convert(model, z)  # B1 handles 'same' padding


def test_alpha1_valid_conv_conversion_is_exact():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 3, 2), nn.ReLU(),
                          nn.Flatten(), nn.Linear(27, 3)).to(F64)
    make_readout_safe(model, (2, 10, 10))
    z = torch.rand(40, 2, 10, 10, dtype=F64)
    snn = ttfs.convert(model, z, parameterisation="alpha1")
    with torch.no_grad():
        assert_logits_close(snn(z), model(z))
        assert_logits_close(ttfs.to_relu(snn)(z), model(z))


# ------------------------------------------------------------------------------------------------
# phase-1 spikes and a hand-computed example
# ------------------------------------------------------------------------------------------------
def hand_network(parameterisation: str, t_start: float = 0.0) -> ttfs.SNN:
    """3 inputs -> 2 hidden neurons -> 1 readout; windows [0,1] (input), [1,2] (hidden), readout at 2."""
    hidden = ttfs.SpikingLinear(3, 2, parameterisation).to(F64)
    readout = ttfs.SpikingLinear(2, 1, parameterisation).to(F64)
    with torch.no_grad():
        hidden.weight.copy_(torch.tensor([[4.0, -6.0, 2.5], [4.0, -6.0, 2.5]], dtype=F64))
        readout.weight.copy_(torch.tensor([[0.5, -0.25]], dtype=F64))
        if parameterisation == "alpha1":
            hidden.bias.copy_(torch.tensor([[1.0], [1.2]], dtype=F64))  # thresholds theta
            readout.bias.copy_(torch.tensor([[0.5]], dtype=F64))
        else:
            hidden.bias.copy_(torch.tensor([[0.3], [-0.95]], dtype=F64))  # D (= ReLU bias)
            readout.bias.copy_(torch.tensor([[0.1]], dtype=F64))
    encoder = ttfs.InputEncoder((3,)).to(F64)
    return ttfs.SNN(encoder, [hidden, readout], torch.tensor([1.0, 1.0], dtype=F64), t_start).to(F64)


# input values x = (0.9, 0.7, 0.2) -> spike times t0 = t_max0 - x = (0.1, 0.3, 0.8)
HAND_Z = torch.tensor([[0.9, 0.7, 0.2]], dtype=F64)


@pytest.mark.parametrize("t_start", [0.0, 5.0])
def test_hand_computed_alpha1_example_with_a_phase1_spike(t_start):
    """alpha = 1, W = (4, -6, 2.5) for both hidden neurons, inputs at 0.1, 0.3, 0.8 (t_start = 0):

    V(t) = t on [0, 0.1]                      -> V(0.1) = 0.1
    slope 1 + 4 = 5 on [0.1, 0.3]             -> V(0.3) = 0.1 + 5 * 0.2 = 1.1   (peak)
    slope 5 - 6 = -1 on [0.3, 0.8]            -> V(0.8) = 1.1 - 0.5 = 0.6
    slope B = -1 + 2.5 = 1.5 on [0.8, ...)    -> V(1) = 0.6 + 0.3 = 0.9
    closed form: V(1) = 1 * 1 + 4 * 0.9 - 6 * 0.7 + 2.5 * 0.2 = 0.9.   ✓

    neuron 1, theta = 1.0: V(1) = 0.9 < 1, closed form t = 1 + (1.0 - 0.9) / 1.5 = 16/15, x = 2 - t = 14/15,
      but V already reached 1.0 at t = 0.28 (0.1 + 5 (t - 0.1) = 1): a phase-1 spike, must be reported.
    neuron 2, theta = 1.2 > peak 1.1: no phase-1 crossing, t = 1 + (1.2 - 0.9) / 1.5 = 1.2, x = 0.8.
    readout (W = (0.5, -0.25), B = 1.25, theta = 0.5): V(2) = 1 * 1 + 0.5 * 14/15 - 0.25 * 0.8 = 19/15,
      logit = (19/15 - 1/2) / 1.25 = 46/75.
    Shifting every time by t_start changes nothing.
    """
    snn = hand_network("alpha1", t_start)
    with torch.no_grad():
        record = snn.run(HAND_Z)
    expected_t = torch.tensor([[16 / 15, 1.2]], dtype=F64) + t_start
    torch.testing.assert_close(record.times[0], expected_t, rtol=0, atol=1e-14)
    torch.testing.assert_close(record.activations()[0], torch.tensor([[14 / 15, 0.8]], dtype=F64), rtol=0,
                               atol=1e-14)
    torch.testing.assert_close(record.logits, torch.tensor([[46 / 75]], dtype=F64), rtol=0, atol=1e-14)
    assert snn.phase1_spikes(record).tolist() == [1]
    mask = snn.neuron_layers[0].phase1_spikes(record.layer_inputs[0], record.t_min(0), record.t_min(1))
    assert mask.tolist() == [[True, False]]
    assert int(record.causality_violations().sum()) == 0  # the closed form alone would not notice it


def test_hand_computed_b1_example_reports_no_phase1_spikes():
    """B1: t = t_max - ReLU(W x + D). Neuron 1: 4 * 0.9 - 6 * 0.7 + 2.5 * 0.2 + 0.3 = 0.2 -> t = 1.8.
    Neuron 2: -0.1 - 0.95 = -1.05 -> silent (t = t_max = 2). Readout: 0.5 * 0.2 - 0.25 * 0 + 0.1 = 0.2."""
    snn = hand_network("b1")
    with torch.no_grad():
        record = snn.run(HAND_Z)
    torch.testing.assert_close(record.times[0], torch.tensor([[1.8, 2.0]], dtype=F64), rtol=0, atol=1e-14)
    torch.testing.assert_close(record.logits, torch.tensor([[0.2]], dtype=F64), rtol=0, atol=1e-14)
    assert snn.phase1_spikes(record).tolist() == [0]
    assert record.spikes_per_layer().tolist() == [1]


def test_phase1_spikes_on_random_layers_match_a_time_grid():
    """Brute force: the potential sampled densely in phase 1 crosses theta iff phase1_spikes says so."""
    g = torch.Generator().manual_seed(11)
    layer = ttfs.SpikingLinear(5, 30, "alpha1").to(F64)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(30, 5, generator=g, dtype=F64) * 3)
        layer.bias.copy_(torch.rand(30, 1, generator=g, dtype=F64) * 3)
    t_in = torch.rand(40, 5, generator=g, dtype=F64)
    t_in[:, 0] = 1.0  # one silent input (arrives at t_min)
    t0, t1 = torch.tensor(0.0, dtype=F64), torch.tensor(1.0, dtype=F64)
    mask = layer.phase1_spikes(t_in, t0, t1)
    grid = torch.linspace(0, 1, 20001, dtype=F64)
    arrived = (grid[None, :, None] - t_in[:, None, :]).clamp(min=0)  # (batch, grid, inputs)
    v = grid[None, :, None] + arrived @ layer.weight.detach().t()  # alpha = 1
    brute = (v >= layer.bias.detach()[:, 0]).any(dim=1)
    assert 0 < int(mask.sum()) < mask.numel()
    # a crossing that only grazes theta between grid points could differ; none does for this seed
    assert torch.equal(mask, brute)


def test_phase1_spikes_of_a_conv_layer_match_a_time_grid():
    """Same brute force for a 'valid' alpha1 convolution (several output positions per sample)."""
    g = torch.Generator().manual_seed(12)
    layer = ttfs.SpikingConv2d(2, 3, 2, parameterisation="alpha1").to(F64)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(3, 2, 2, 2, generator=g, dtype=F64) * 3)
        layer.bias.copy_(torch.rand(3, 1, generator=g, dtype=F64) * 3)
    t_in = torch.rand(10, 2, 4, 4, generator=g, dtype=F64)
    t0, t1 = torch.tensor(0.0, dtype=F64), torch.tensor(1.0, dtype=F64)
    mask = layer.phase1_spikes(t_in, t0, t1)  # (batch, 3, 3, 3)
    patches = F.unfold(t_in, 2).transpose(1, 2)  # (batch, 9 positions, 8 taps)
    grid = torch.linspace(0, 1, 20001, dtype=F64)
    arrived = (grid[None, None, :, None] - patches[:, :, None, :]).clamp(min=0)  # (b, pos, grid, taps)
    v = grid[None, None, :, None] + arrived @ layer.weight.detach().reshape(3, -1).t()  # (b, pos, grid, out)
    brute = (v >= layer.bias.detach()[:, 0]).any(dim=2).transpose(1, 2).reshape(mask.shape)
    assert 0 < int(mask.sum()) < mask.numel()
    assert torch.equal(mask, brute)


def test_b1_converted_network_reports_zero_phase1_spikes():
    model = fc_net([6, 8, 8, 3], 4)
    z = torch.rand(64, 6, dtype=F64)
    snn = ttfs.convert(model, z)
    with torch.no_grad():
        assert snn.phase1_spikes(snn.run(z)).tolist() == [0, 0]


# ------------------------------------------------------------------------------------------------
# training trajectories: alpha1 departs from the ReLU trajectory, B1 does not
# ------------------------------------------------------------------------------------------------
def test_alpha1_training_trajectory_departs_from_relu():
    widths = [20, 30, 30, 5]
    g = torch.Generator().manual_seed(0)
    data = torch.rand(512, widths[0], generator=g, dtype=F64)
    teacher = torch.randn(widths[0], widths[-1], generator=g, dtype=F64)
    labels = (data @ teacher).argmax(1)
    base = glorot_relu_mlp(widths, g)
    make_readout_safe(base, (widths[0],))
    alpha1 = ttfs.convert(base, data, parameterisation="alpha1")
    # The ReLU reference starts from the alpha1 network's reverse map (the rescaled ReLU network: same
    # function, same w), so both start from the same point; the B1 control is converted from it.
    relu = nn.Sequential()
    params = alpha1.relu_parameters()
    for k, (w, b) in enumerate(params):
        lin = nn.Linear(w.shape[1], w.shape[0], dtype=F64)
        with torch.no_grad():
            lin.weight.copy_(w)
            lin.bias.copy_(b[:, 0])
        relu.append(lin)
        if k < len(params) - 1:
            relu.append(nn.ReLU())
    b1 = ttfs.convert(relu, data)
    assert cosine_similarity_to_relu(alpha1, relu, include_bias=True) == pytest.approx(1.0, abs=1e-13)
    assert cosine_similarity_to_relu(b1, relu, include_bias=True) == pytest.approx(1.0, abs=1e-13)

    models = {"relu": relu, "alpha1": alpha1, "b1": b1}
    # lr 1e-4 keeps every alpha1 slope B > 0 here, so the plain reverse map (snn.relu_parameters) exists
    # throughout; at 5e-4 or 1e-3 some alpha1 readout slopes cross 0 within 200 steps (the neuron dies).
    opts = {k: torch.optim.Adam(m.parameters(), lr=1e-4) for k, m in models.items()}
    first_loss = {}
    for _ in range(200):
        idx = torch.randint(0, data.shape[0], (32,), generator=g)
        for k, m in models.items():
            opts[k].zero_grad()
            loss = F.cross_entropy(m(data[idx]), labels[idx])
            loss.backward()
            opts[k].step()
            first_loss.setdefault(k, float(loss.detach()))
    with torch.no_grad():
        final_loss = {k: float(F.cross_entropy(m(data), labels)) for k, m in models.items()}
    cos_alpha1 = cosine_similarity_to_relu(alpha1, relu)
    # the helper used snn.relu_parameters() (no B <= 0 neuron): check against it by hand
    w_snn = torch.cat([w.reshape(-1) for w, _ in alpha1.relu_parameters()])
    w_relu = torch.cat([m.weight.detach().reshape(-1) for m in relu if isinstance(m, nn.Linear)])
    assert cos_alpha1 == pytest.approx(float(w_snn @ w_relu / (w_snn.norm() * w_relu.norm())), abs=1e-14)
    cos_b1 = cosine_similarity_to_relu(b1, relu)
    print(f"\ncosine similarity to the ReLU weights after 200 Adam steps: alpha1 {cos_alpha1:.10f} "
          f"(1 - cos = {1 - cos_alpha1:.3e}), B1 {cos_b1:.15f} (1 - cos = {1 - cos_b1:.3e}); "
          f"losses {first_loss} -> {final_loss}")
    assert final_loss["alpha1"] < first_loss["alpha1"] and final_loss["relu"] < first_loss["relu"]
    assert cos_b1 > 1 - 1e-9  # B1 follows the ReLU trajectory step for step
    assert cos_alpha1 < 1 - 1e-6  # alpha1 does not
    assert cos_alpha1 < cos_b1


def test_equivalent_relu_parameters_cover_dead_alpha1_neurons():
    """alpha1 neurons with B <= 0 compute constants (x = 0 hidden, logit -1 readout): w = 0 reproduces them."""
    g = torch.Generator().manual_seed(2)
    z = torch.rand(64, 10, generator=g, dtype=F64)
    snn = alpha1_standard_snn([10, 24, 24, 6], z, g)
    with torch.no_grad():
        snn.neuron_layers[-1].weight[0] = -1.0  # make sure one readout neuron is dead too
        record = snn.run(z)
    assert sum(layer.nonpositive_slopes(x) for layer, x in zip(snn.neuron_layers, record.layer_inputs,
                                                               strict=True)) >= 3
    with pytest.raises(ValueError, match="slope B <= 0"):
        snn.relu_parameters()
    params = equivalent_relu_parameters(snn)
    x = z
    for k, (w, b) in enumerate(params):
        y = x @ w.t() + b[:, 0]
        x = torch.relu(y) if k < len(params) - 1 else y
    assert_logits_close(x, record.logits)
    torch.testing.assert_close(record.logits[:, 0], torch.full((64,), -1.0, dtype=F64), rtol=0, atol=0)
