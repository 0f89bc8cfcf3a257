"""The lean training step computes what the general path computes: same logits, windows, trajectories."""

import copy

import pytest
import torch
from torch import nn

import ttfs
from ttfs.network import _HOST_MARGIN, SNN, _Edges
from ttfs.train import DivergenceError, TensorBatches, train_epoch

DTYPES = [torch.float32, torch.float64]


def fc_net(dtype):
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(36, 20), nn.ReLU(), nn.Linear(20, 16), nn.ReLU(),
                         nn.Linear(16, 5)).to(dtype)


def conv_net(dtype, size: int = 12, bn: bool = False):
    """conv 'same' -> pool (fused) -> conv -> pool (odd size: not covering) -> dense -> readout."""
    torch.manual_seed(1)
    layers = [nn.Conv2d(1, 3, 3, padding="same"), nn.ReLU()]
    if bn:  # batch norm after the ReLU: folded into the next conv as per-region biases (SPEC 3.2)
        bn2d = nn.BatchNorm2d(3)
        with torch.no_grad():
            bn2d.weight.uniform_(0.5, 1.5)
            bn2d.bias.normal_()
            bn2d.running_mean.normal_()
        layers.append(bn2d)
    layers += [nn.MaxPool2d(2), nn.Conv2d(3, 4, 3, padding="same" if bn else 0), nn.ReLU(), nn.MaxPool2d(2)]
    side = size // 2 if bn else size // 2 - 2
    side //= 2
    layers += [nn.Flatten(), nn.Linear(4 * side * side, 7), nn.ReLU(), nn.Linear(7, 5)]
    return nn.Sequential(*layers).to(dtype).eval()


def data(n, shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, *shape, generator=g)
    x[x < 0.3] = 0.0  # silent inputs, ties at t_max
    return x.to(dtype), torch.randint(0, 5, (n,), generator=g)


CASES = [("fc", lambda d: fc_net(d), (1, 6, 6)), ("conv", lambda d: conv_net(d, 14), (1, 14, 14)),
         ("conv_bn", lambda d: conv_net(d, 12, bn=True), (1, 12, 12))]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name,build,shape", CASES)
def test_forward_train_equals_run_bit_for_bit(name, build, shape, dtype):
    x, _ = data(32, shape, dtype)
    snn = ttfs.convert(build(dtype), x)
    record = snn.run(x)
    step = snn.forward_train(x, activations=True)
    assert torch.equal(step.logits, record.logits)
    assert len(step.activations) == len(record.times)
    for lean, general in zip(step.activations, record.activations(), strict=True):
        assert torch.equal(lean, general)
    assert torch.equal(step.l1(), record.l1())


@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_pool_gives_the_pooled_spike_times(dtype):
    x, _ = data(16, (1, 14, 14), dtype)
    snn = ttfs.convert(conv_net(dtype, 14), x)
    pools = [m for m in snn.layers if isinstance(m, ttfs.MinTimePool2d)]
    assert len(pools) == 2 and all(p.sign is None for p in pools)
    plan = snn._layer_plan()
    assert [role for _, role, _ in plan.steps] == [1, 1, 0, 1, 2]  # both pools fused, flatten kept
    assert sum(pool is not None for _, _, pool in plan.steps) == 2


def test_negative_scale_pool_is_not_fused_and_stays_exact():
    torch.manual_seed(4)
    model = conv_net(torch.float64, 12, bn=True)
    with torch.no_grad():
        model[2].weight[:2] = -model[2].weight[:2].abs()  # negative BN scale flips the pooling of 2 channels
    x, _ = data(16, (1, 12, 12), torch.float64)
    snn = ttfs.convert(model, x)
    assert any(isinstance(m, ttfs.MinTimePool2d) and m.sign is not None for m in snn.layers)
    assert snn._layer_plan().steps[1][1] == 0  # the signed pool runs as its own module
    assert torch.equal(snn.forward_train(x).logits, snn.run(x).logits)


def reference_windows(snn: SNN, record, kappa):
    """SPEC 2.8 as the original per-layer loop: Delta(n) <- max(Delta(n), kappa * (t_max(n) - min t(n)))."""
    deltas = snn.deltas.clone()
    b = record.boundaries
    for n, t in enumerate(record.times, start=1):
        deltas[n] = torch.maximum(deltas[n], (b[n + 1] - t.detach().amin()) * kappa)
    return deltas


@pytest.mark.parametrize("host", [True, False], ids=["host-check", "tensor-ops"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name,build,shape", CASES)
def test_lean_window_rule_equals_the_reference(name, build, shape, dtype, host):
    x, _ = data(64, shape, dtype)
    snn = ttfs.convert(build(dtype), x[:8], zeta=0.0)  # tight windows: the rule must grow them
    snn.forward_train(x[:8])
    edges = snn._edges
    assert edges.host
    edges.host = host  # False: the path a CUDA network takes, on the CPU
    grew = 0
    for batch in x[8:].split(8):
        expected = reference_windows(snn, copy.deepcopy(snn).run(batch), 10.0)
        before = snn.deltas.clone()
        snn.forward_train(batch, kappa=10.0)
        assert torch.equal(snn.deltas, expected)
        assert snn._edges is edges and not edges.shared  # updated in place, never rebuilt
        assert torch.equal(snn._window_edges(share=False)[0], snn.boundaries())
        grew += not torch.equal(before, snn.deltas)
    assert grew


@pytest.mark.parametrize("kappa", [10.0, 0.1, 3.7])
@pytest.mark.parametrize("dtype", DTYPES)
def test_host_check_never_misses_a_growing_window(dtype, kappa):
    """The CPU shortcut skips the tensor rule only where clamp_ would change nothing (ties and NaN included)."""
    g = torch.Generator().manual_seed(0)
    t_max = 1.0 + 10 * torch.rand(20000, generator=g, dtype=torch.float64)
    earliest = t_max - torch.rand(20000, generator=g, dtype=torch.float64) * t_max
    t_max, earliest = t_max.to(dtype), earliest.to(dtype)
    exact = torch.sub(t_max, earliest).mul_(torch.tensor(kappa, dtype=dtype))
    scale = 1.0 + torch.randn(20000, generator=g, dtype=torch.float64) * 1e-6  # near ties
    scale[1::2] = 1.0 + torch.rand(10000, generator=g, dtype=torch.float64)  # clearly wide windows
    delta = (exact.double() * scale).to(dtype)
    delta[::5] = exact[::5]  # exact ties
    earliest[7] = float("nan")
    exact = torch.sub(t_max, earliest).mul_(torch.tensor(kappa, dtype=dtype))
    grows = delta.clone().clamp_(min=exact) != delta
    grows[7] = True
    may_grow = torch.tensor([not (a - m) * kappa <= d * _HOST_MARGIN
                             for a, m, d in zip(t_max.tolist(), earliest.tolist(), delta.tolist(), strict=True)])
    assert bool(may_grow[grows].all())  # never skips a growth
    clear = ~grows & (delta.double() > 1.00001 * exact.double())
    assert not bool(may_grow[clear].any())  # and skips the clear cases


def test_window_cache_follows_every_change_of_the_windows():
    x, _ = data(16, (1, 6, 6), torch.float64)
    snn = ttfs.convert(fc_net(torch.float64), x)
    first = snn._window_edges()[0]
    assert torch.equal(first, snn.boundaries())
    with torch.no_grad():
        snn.deltas[1] *= 2  # in place: version bump
    assert torch.equal(snn._window_edges()[0], snn.boundaries())
    snn.load_state_dict({**snn.state_dict(), "t_start": torch.tensor(0.5, dtype=torch.float64)})
    assert torch.equal(snn._window_edges()[0], snn.boundaries())
    assert snn._window_edges()[0][0] == 0.5
    snn.float()  # new buffer tensors
    assert snn._window_edges()[0].dtype == torch.float32
    assert torch.equal(snn.forward_train(x.float()).logits, snn.run(x.float()).logits)


def test_records_keep_the_windows_they_were_computed_with():
    x, _ = data(16, (1, 6, 6), torch.float64)
    snn = ttfs.convert(fc_net(torch.float64), x[:2], zeta=0.0)
    record = snn.run(x)
    kept = record.boundaries.clone()
    snn.adapt_windows(record, 10.0)  # grows the windows
    snn.forward_train(x, kappa=10.0)
    assert not torch.equal(snn.boundaries(), kept)
    assert torch.equal(record.boundaries, kept)


@pytest.mark.parametrize("dtype", DTYPES)
def test_lean_and_general_training_are_identical_for_fc(dtype):
    x, y = data(400, (1, 6, 6), dtype)
    snns = [ttfs.convert(fc_net(dtype), x[:8], zeta=0.0) for _ in range(2)]
    for snn, lean in zip(snns, (True, False), strict=True):
        opt = torch.optim.Adam(snn.parameters(), lr=5e-3)
        train_epoch(snn, TensorBatches(x, y, 8, seed=1), opt, l1=1e-3, lean=lean)
    for a, b in zip(snns[0].state_dict().values(), snns[1].state_dict().values(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name,build,shape", CASES[1:])
def test_lean_and_general_training_agree_for_conv(name, build, shape):
    x, y = data(240, shape, torch.float64)
    snns = [ttfs.convert(build(torch.float64), x[:8], zeta=0.0) for _ in range(2)]
    for snn, lean in zip(snns, (True, False), strict=True):
        opt = torch.optim.Adam(snn.parameters(), lr=5e-3)
        train_epoch(snn, TensorBatches(x, y, 8, seed=1), opt, l1=1e-4, lean=lean)
    for a, b in zip(snns[0].state_dict().values(), snns[1].state_dict().values(), strict=True):
        assert (a - b).abs().max() <= 1e-10  # pool ties may route a gradient to another equal input


@pytest.mark.parametrize("wrap", ["tensor_batches", "tqdm", "list"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_lean_epoch_rejects_non_finite_inputs(bad, wrap):
    from tqdm import tqdm

    x, y = data(64, (1, 6, 6), torch.float64)
    snn = ttfs.convert(fc_net(torch.float64), x)
    state = copy.deepcopy(snn.state_dict())
    batches = TensorBatches(x, y, 8)
    wrapped = {"tensor_batches": batches, "tqdm": tqdm(batches, disable=True), "list": list(batches)}[wrap]
    x[17, 0, 2, 3] = bad  # in place: a TensorBatches checks again
    if wrap == "list":
        wrapped[2][0][1, 0, 2, 3] = bad
    with pytest.raises(ValueError, match="NaN or infinite"):
        train_epoch(snn, wrapped, torch.optim.Adam(snn.parameters(), lr=1e-3))
    if wrap != "list":  # checked before the first step: nothing trained
        assert all(torch.equal(a, b) for a, b in zip(state.values(), snn.state_dict().values(), strict=True))


def test_tensor_batches_check_their_inputs_once(monkeypatch):
    x, y = data(64, (1, 6, 6), torch.float64)
    batches = TensorBatches(x, y, 8)
    calls = []
    real = torch.isfinite
    monkeypatch.setattr(torch, "isfinite", lambda t: calls.append(t.shape) or real(t))
    batches.check_finite()
    batches.check_finite()
    assert len(calls) == 1
    x.mul_(1.0)  # an in-place change (version bump) asks for a new check
    batches.check_finite()
    assert len(calls) == 2


def test_lean_step_checks_the_input_shape():
    x, _ = data(8, (1, 6, 6), torch.float64)
    snn = ttfs.convert(fc_net(torch.float64), x)
    with pytest.raises(ValueError, match=r"expected \(batch, 1, 6, 6\)"):
        snn.forward_train(torch.rand(8, 36, dtype=torch.float64))


def test_lean_step_refuses_constraints_and_alpha1():
    x, _ = data(8, (1, 6, 6), torch.float64)
    snn = ttfs.convert(fc_net(torch.float64), x, parameterisation="alpha1")
    assert not snn.lean
    with pytest.raises(ValueError, match="B1 step"):
        snn.forward_train(x)
    # train_epoch falls back to the general path for it
    train_epoch(snn, [(x, torch.zeros(8, dtype=torch.long))], torch.optim.SGD(snn.parameters(), lr=1e-6))


def test_epoch_metrics_match_a_host_side_computation():
    x, y = data(100, (1, 6, 6), torch.float64)  # 100 = 12 batches of 8 and one of 4
    model = fc_net(torch.float64)
    snn = ttfs.convert(copy.deepcopy(model), x)
    for net in (model, snn):
        reference = copy.deepcopy(net)
        opt, ref_opt = (torch.optim.SGD(m.parameters(), lr=0.0) for m in (net, reference))
        stats = train_epoch(net, TensorBatches(x, y, 8, shuffle=False), opt)
        with torch.no_grad():
            logits = reference(x)
        loss = torch.nn.functional.cross_entropy(logits, y).item()
        assert stats["loss"] == pytest.approx(loss, rel=1e-12)
        assert stats["accuracy"] == (logits.argmax(1) == y).double().mean().item()


def test_divergence_still_reported_on_the_lean_path():
    x, y = data(64, (1, 6, 6), torch.float32)
    snn = ttfs.convert(nn.Sequential(nn.Flatten(), nn.Linear(36, 5)), x)
    assert snn.lean
    opt = torch.optim.SGD(snn.parameters(), lr=1e38)
    with pytest.raises(DivergenceError):
        for _ in range(3):
            train_epoch(snn, TensorBatches(x, y, 8), opt)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name,build,shape", CASES)
def test_lean_steps_do_not_synchronise_on_cuda(name, build, shape):
    x, y = data(64, shape, torch.float64)
    snn = ttfs.convert(build(torch.float64), x[:8], zeta=0.0).cuda()
    x, y = x.cuda(), y.cuda()
    assert not _Edges(snn.boundaries(), snn.deltas, snn.t_start).host
    opt = torch.optim.Adam(snn.parameters(), lr=1e-3)
    reference = copy.deepcopy(snn)
    snn.forward_train(x[:8], kappa=10.0)  # first call builds the caches (reads a few values once)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for xb, yb in zip(x.split(8)[1:], y.split(8)[1:], strict=True):
            step = snn.forward_train(xb, activations=True, kappa=10.0)
            loss = torch.nn.functional.cross_entropy(step.logits, yb) + 1e-4 * step.l1()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert not torch.equal(snn.deltas, reference.deltas)  # the windows adapted on the device
    assert torch.equal(snn.forward_train(x).logits, snn.run(x).logits)


def test_copies_and_pickles_rebuild_their_own_caches(tmp_path):
    x, _ = data(16, (1, 6, 6), torch.float64)
    snn = ttfs.convert(fc_net(torch.float64), x[:2], zeta=0.0)
    snn.forward_train(x, kappa=10.0)
    twin = copy.deepcopy(snn)
    assert twin._edges is None and twin._plan is None
    twin.forward_train(x, kappa=10.0)
    assert twin._edges.deltas is twin.deltas
    torch.save(snn, tmp_path / "snn.pt")
    loaded = torch.load(tmp_path / "snn.pt", weights_only=False)
    assert torch.equal(loaded.forward_train(x).logits, snn.run(x).logits)
