"""Residual networks (any torch.fx-traceable ReLU network) convert exactly to B1 TTFS with delayed input groups.

float64 throughout: SNN logits equal the ReLU logits within 1e-9 of the logit scale, 100 % argmax agreement,
no causality violation and no early arrival; the event-driven simulator reproduces the closed form from the
exported files alone; SynOps count every group's fan-out (brute force); export version 2 round-trips and
version-1 files still load; training follows the ReLU network's trajectory.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import ttfs
from ttfs import export
from ttfs.layers import InputGroup, MeanTimePool2d
from ttfs.simulate import simulate
from ttfs.train import TensorBatches, train_epoch

F64 = torch.float64


def random_bn(channels: int, negative: bool = True) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(channels)
    with torch.no_grad():
        bn.weight.uniform_(-1.5 if negative else 0.5, 1.5)
        bn.bias.normal_(0, 0.5)
        bn.running_mean.normal_(0, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    return bn


class Block(nn.Module):
    """conv-BN-ReLU-conv-BN + shortcut (identity, or 1x1 conv + BN when the shape changes), ReLU.

    ``bn_after`` puts a batch norm after the block's ReLU (it folds into the next layer and scales the
    next identity shortcut: a ``scale`` group with weights other than 1).
    """

    def __init__(self, c_in: int, c_out: int, stride: int, bn_after: bool = False, groups: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = random_bn(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False, groups=groups)
        self.bn2 = random_bn(c_out)
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), random_bn(c_out))
        self.post = random_bn(c_out, negative=False) if bn_after else nn.Identity()

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.post(F.relu(y + self.shortcut(x)))


class ResidualCNN(nn.Module):
    """A hand-written forward: stem, max-pool, identity block, projection block, avg pool, projection block,
    global average pooling, linear readout."""

    def __init__(self, width: int = 4, bn_after: bool = False, groups: int = 1, classes: int = 5):
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.stem_bn = random_bn(width)
        # after the ReLU, before the max-pool: negative scales flip pooling channels and the identity shortcut
        self.stem_post = random_bn(width) if bn_after else nn.Identity()
        self.pool = nn.MaxPool2d(2)
        self.block1 = Block(width, width, 1, bn_after, groups)
        self.block2 = Block(width, 2 * width, 2, bn_after, groups)
        self.avg = nn.AvgPool2d(2)
        self.block3 = Block(2 * width, 3 * width, 1, bn_after=False)
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(3 * width, classes)

    def forward(self, x):
        x = self.pool(self.stem_post(F.relu(self.stem_bn(self.stem(x)))))
        x = self.avg(self.block2(self.block1(x)))
        return self.head(torch.flatten(self.global_pool(self.block3(x)), 1))


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def assert_exact(model: nn.Module, x: torch.Tensor, **kw) -> tuple[ttfs.SNN, float]:
    model = model.to(F64).eval()
    snn = ttfs.convert(model, x, **kw)
    with torch.no_grad():
        reference = model(x)
        record = snn.run(x)
        back = ttfs.to_relu(snn)(x)  # the reverse mapping (a ResidualReLU for a network with input groups)
    diff = rel_diff(record.logits, reference)
    assert diff <= 1e-9
    assert rel_diff(back, reference) <= 1e-9
    assert torch.equal(record.logits.argmax(1), reference.argmax(1))
    assert int(record.causality_violations().sum()) == 0
    assert int(record.early_arrivals().sum()) == 0
    return snn, diff


def groups_of(snn: ttfs.SNN) -> list[InputGroup]:
    return [g for layer in snn.neuron_layers for g in layer.input_groups]


@pytest.mark.parametrize("bn_after", [False, True])
@pytest.mark.parametrize("conv_groups", [1, 2])
def test_residual_cnn_with_identity_and_projection_shortcuts_is_exact(bn_after, conv_groups):
    torch.manual_seed(3 + bn_after + 2 * conv_groups)
    x = torch.rand(24, 3, 16, 16, dtype=F64)
    snn, _ = assert_exact(ResidualCNN(4, bn_after, conv_groups), x, in_range=(0.0, 1.0))
    kinds = sorted(g.kind for g in groups_of(snn))
    assert kinds == ["conv2d", "conv2d", "scale"]  # two projection shortcuts, one identity
    identity = next(g for g in groups_of(snn) if g.kind == "scale")
    assert not identity.trainable and "weight" in dict(identity.named_buffers())
    assert bool((identity.weight == 1).all()) != bn_after  # a batch norm after the ReLU scales the shortcut
    assert any(isinstance(m, MeanTimePool2d) for m in snn.layers)
    assert not snn.lean  # residual networks train through run(), not forward_train


@settings(max_examples=20, deadline=None)
@given(
    width=st.integers(1, 4),
    stride=st.sampled_from([1, 2]),
    project=st.booleans(),
    bn_before=st.booleans(),
    bn_after=st.booleans(),
    pool=st.sampled_from(["none", "avg", "max", "global"]),
    input_skip=st.booleans(),
    seed=st.integers(0, 10_000),
)
def test_random_residual_networks_are_exact(width, stride, project, bn_before, bn_after, pool, input_skip, seed):
    torch.manual_seed(seed)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            c = width if not project and stride == 1 else width + 1
            self.a = nn.Conv2d(2, width, 3, padding=1)
            self.bn_a = random_bn(width) if bn_before else nn.Identity()
            self.post = random_bn(width) if bn_after else nn.Identity()
            self.b = nn.Conv2d(width, c, 3, stride=stride, padding=1)
            self.bn_b = random_bn(c) if bn_before else nn.Identity()
            self.short = nn.Identity() if c == width and stride == 1 else nn.Conv2d(width, c, 1, stride)
            self.c = nn.Conv2d(c, c, 1)
            self.input_short = nn.Conv2d(2, c, 1, stride) if input_skip else None
            side = 8 // stride
            if pool == "avg":
                self.pool, side = nn.AvgPool2d(2), side // 2
            elif pool == "max":
                self.pool, side = nn.MaxPool2d(2), side // 2
            elif pool == "global":
                self.pool, side = nn.AdaptiveAvgPool2d((1, 1)), 1
            else:
                self.pool = nn.Identity()
            self.head = nn.Linear(c * side * side, 3)

        def forward(self, x):
            h = self.post(F.relu(self.bn_a(self.a(x))))
            y = F.relu(self.bn_b(self.b(h)) + self.short(h))
            z = self.c(y) + y
            if self.input_short is not None:
                z = z + self.input_short(x)
            return self.head(self.pool(F.relu(z)).flatten(1))

    assert_exact(Net(), torch.rand(16, 2, 8, 8, dtype=F64), in_range=(-0.5, 1.5))


def random_bn_stats(model: nn.Module) -> nn.Module:
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.3)
                m.running_mean.normal_(0, 0.3)
                m.running_var.uniform_(0.5, 2.0)
    return model


def test_torchvision_resnet18_is_exact():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = random_bn_stats(torchvision.models.resnet18(num_classes=10))
    snn, _ = assert_exact(model, torch.rand(4, 3, 32, 32, dtype=F64))
    assert len(snn.neuron_layers) == 18  # 17 convolutions with their ReLU, the fc readout
    assert [g.kind for g in groups_of(snn)] == ["scale"] * 2 + ["conv2d", "scale"] * 3  # 8 blocks, 3 with projections


@pytest.mark.parametrize("block", ["BasicBlock", "Bottleneck"])
def test_tiny_torchvision_resnets_are_exact(block):
    resnet = pytest.importorskip("torchvision.models.resnet")
    torch.manual_seed(1)
    model = random_bn_stats(_toy_resnet(resnet, getattr(resnet, block)))
    snn, _ = assert_exact(model, torch.rand(3, 3, 32, 32, dtype=F64))
    assert "conv2d" in [g.kind for g in groups_of(snn)] and "scale" in [g.kind for g in groups_of(snn)]


def _toy_resnet(resnet, block) -> nn.Module:
    """torchvision's ResNet with its own BasicBlock/Bottleneck and forward, at 4 to 16 channels."""

    class Toy(resnet.ResNet):
        def __init__(self):
            nn.Module.__init__(self)
            self._norm_layer = nn.BatchNorm2d
            self.inplanes, self.dilation, self.groups, self.base_width = 4, 1, 1, 64
            self.conv1 = nn.Conv2d(3, 4, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(4)
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            self.layer1 = self._make_layer(block, 4, 2)
            self.layer2 = self._make_layer(block, 8, 1, stride=2)
            self.layer3 = self._make_layer(block, 8, 1, stride=2)
            self.layer4 = self._make_layer(block, 16, 1, stride=2)
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
            self.fc = nn.Linear(16 * block.expansion, 7)

    return Toy()


class Gate(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)
        self.out = nn.Linear(4, 2)

    def forward(self, x):
        x = x.flatten(1)
        return self.out(F.relu(self.a(x)) * torch.sigmoid(self.b(x)))


class Product(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)
        self.out = nn.Linear(4, 2)

    def forward(self, x):
        h = F.relu(self.a(x.flatten(1)))
        return self.out(h * self.b(h))


class Parallel(Product):
    def forward(self, x):
        x = x.flatten(1)
        return self.out(F.relu(self.a(x)) + F.relu(self.b(x)))


class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(1, 2, 3)
        self.b = nn.Conv2d(2, 2, 1)

    def forward(self, x):
        return F.max_pool2d(self.b(F.relu(self.a(x))), 2).flatten(1)


class Tanh(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 3)
        self.act = nn.Tanh()
        self.out = nn.Linear(3, 2)

    def forward(self, x):
        return self.out(self.act(self.a(x.flatten(1))))


class MaxOfSum(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(1, 2, 1)
        self.b = nn.Conv2d(2, 2, 1)
        self.pool = nn.MaxPool2d(2)
        self.out = nn.Linear(2, 2)

    def forward(self, x):
        h = F.relu(self.a(x))
        return self.out(F.relu(self.pool(self.b(h) + h)).flatten(1))


@pytest.mark.parametrize("model,message", [
    (Gate(), r"node 'sigmoid' \(call_function sigmoid\): it has no exact single-spike counterpart"),
    (Product(), r"node 'mul' \(call_function mul\): a multiplication of activations is not a linear map"),
    (Tanh(), r"node 'act' \(call_module act\): Tanh has no exact single-spike counterpart; supported are"),
    (Branchy(), r"node 'max_pool2d' \(call_function .*max_pool2d\): MaxPool2d between a Linear/Conv2d and its ReLU"),
    (MaxOfSum(), r"node 'pool' \(call_module pool\): max-pooling must act on the output of one ReLU"),
    (Parallel(), r"node 'relu_1' \(call_function relu\): its neuron layer 2 gets no Linear/Conv2d input from "
                 r"neuron layer 1"),
])
def test_unsupported_nodes_are_refused_by_name(model, message):
    with pytest.raises(ttfs.UnsupportedLayerError, match=message):
        ttfs.convert(model, torch.rand(4, 1, 2, 2) if not isinstance(model, (Branchy, MaxOfSum))
                     else torch.rand(4, 1, 6, 6))


def test_untraceable_forward_is_refused():
    class Dynamic(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 2)

        def forward(self, x):
            return self.a(x.flatten(1)) if x.sum() > 0 else -self.a(x.flatten(1))

    with pytest.raises(ttfs.UnsupportedLayerError, match="torch.fx cannot trace Dynamic"):
        ttfs.convert(Dynamic(), torch.rand(4, 1, 2, 2))


def test_simulator_reproduces_residual_network_from_the_files_alone(tmp_path):
    torch.manual_seed(5)
    x = torch.rand(3, 3, 16, 16, dtype=F64)
    snn, _ = assert_exact(ResidualCNN(2, bn_after=True, groups=2), x, in_range=(-0.2, 1.1))
    export.save(snn, tmp_path)
    with torch.no_grad():
        t0 = snn.encode(x).numpy()
        record = snn.run(x)
    del snn
    meta, arrays = export.read(tmp_path)
    out = simulate(meta, arrays, t0)
    assert len(out["times"]) == len(record.times)
    for sim, closed in zip(out["times"], record.times, strict=True):
        closed = closed.numpy()
        assert np.abs(sim - closed).max() <= 1e-9
        np.testing.assert_array_equal(sim == closed.max(), closed == closed.max())  # silent exactly
    assert np.abs(out["logits"] - record.logits.numpy()).max() <= 1e-9 * np.abs(record.logits.numpy()).max()
    assert int(out["causality_violations"].sum()) == 0


def _brute_fan_out(snn: ttfs.SNN, record) -> list[torch.Tensor]:
    """Synapses of every unit of every spiking layer, from Jacobians of the receiving layers' inputs with all
    weights set to 1 (no cancellation: an entry is nonzero iff a synapse path exists). No max-pooling in the
    network tested, so every synapse is one path."""
    net = copy.deepcopy(snn)
    with torch.no_grad():
        for p in list(net.parameters()) + [g.weight for g in groups_of(net)]:
            p.fill_(1.0)
    sources = [record.input_times[:1], *(t[:1] for t in record.times)]
    fans = [torch.zeros(s.shape[1:], dtype=torch.long) for s in sources]
    chain, m = [], 0  # m: the neuron layer feeding the chain (0 = the input)
    for module in net.layers:
        if isinstance(module, ttfs.SpikingNeurons):
            route = nn.Sequential(*chain)
            fans[m] += _count(lambda x, r=route, s=module: s.integrate(r(-x)), sources[m])
            for g in module.input_groups:
                fans[g.source] += _count(lambda x, g=g: g.integrate(-g.route(x)), sources[g.source])
            chain, m = [], m + 1
        else:
            chain.append(module)
    return fans


def _count(fn, like: torch.Tensor) -> torch.Tensor:
    jac = torch.autograd.functional.jacobian(fn, torch.zeros_like(like))  # out (1, *o) x in (1, *i)
    jac = jac.reshape(-1, like.numel())
    return (jac != 0).sum(0).reshape(like.shape[1:])


def test_synops_count_every_groups_fan_out():
    torch.manual_seed(2)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(2, 3, 3, padding=1)
            self.b = nn.Conv2d(3, 3, 3, padding=1)
            self.c = nn.Conv2d(3, 4, 3, stride=2, padding=1)
            self.proj = nn.Conv2d(3, 4, 1, stride=2)
            self.head = nn.Linear(4 * 2 * 2, 3)

        def forward(self, x):
            h = F.relu(self.a(x))
            y = F.relu(self.b(h) + h)
            z = F.relu(self.c(y) + self.proj(h))
            return self.head(F.avg_pool2d(z, 2).flatten(1))

    x = torch.rand(6, 2, 8, 8, dtype=F64)
    snn, _ = assert_exact(Net(), x)
    with torch.no_grad():
        record = snn.run(x)
    fans = _brute_fan_out(snn, record)
    b = record.boundaries
    expected = [int(((t < b[m + 1]) * fan).sum()) for m, (t, fan) in
                enumerate(zip([record.input_times, *record.times], fans, strict=True))]
    stats = ttfs.metrics.spike_statistics(snn, x)
    assert stats["input_synops_total"] == expected[0]
    assert stats["synops_total"] == sum(expected[1:])
    assert [round(v * 6) for v in stats["synops_per_layer"]] == expected[1:]
    # the skip from layer 1 adds fan-out: layer 1 feeds layer 2 (3x3 conv), layer 2's identity and layer 3's projection
    chain_only = ttfs.metrics.fan_out(snn.neuron_layers[1], record.times[0].shape[1:])
    assert bool((fans[1] > chain_only).all())
    assert stats["early_arrivals"] == 0
    # no max-pooling: nothing can be routed away (an average pool passes every spike on)
    assert stats["routed_synops_total"] == stats["synops_total"]
    assert stats["routed_input_synops_total"] == stats["input_synops_total"]


def test_export_version2_round_trip_and_version1_still_loads(tmp_path):
    torch.manual_seed(4)
    x = torch.rand(5, 3, 16, 16, dtype=F64)
    snn, _ = assert_exact(ResidualCNN(3, bn_after=True), x)
    export.save(snn, tmp_path / "v2")
    back = export.load(tmp_path / "v2")
    with torch.no_grad():
        a, b = snn.run(x), back.run(x)
    assert torch.equal(a.logits, b.logits)
    assert all(torch.equal(s, t) for s, t in zip(a.times, b.times, strict=True))
    assert [(g.source, g.kind, g.trainable) for g in groups_of(back)] == \
        [(g.source, g.kind, g.trainable) for g in groups_of(snn)]
    meta = json.loads((tmp_path / "v2" / "model.json").read_text())
    assert meta["version"] == 2
    groups = [(spec["neuron_layer"], g) for spec in meta["layers"] if "inputs" in spec for g in spec["inputs"]]
    bounds = meta["windows"]["boundaries"]
    assert [g["delay"] for _, g in groups] == [bounds[n] - bounds[g["source"] + 1] for n, g in groups]
    assert all(g["delay"] > 0 for n, g in groups if g["source"] < n - 1)

    # a version-1 file (a chain, written before version 2) loads into the same network
    chain = ttfs.convert(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                                       nn.Linear(2 * 3 * 3, 3)).double(), torch.rand(8, 1, 8, 8, dtype=F64))
    meta, arrays = export.to_dict(chain)
    meta["version"] = 1
    for spec in meta["layers"]:
        for key in ("inputs", "groups", "padding") if spec["kind"] != "conv2d" else ("inputs", "groups"):
            spec.pop(key, None)
    (tmp_path / "v1").mkdir()
    (tmp_path / "v1" / "model.json").write_text(json.dumps(meta))
    np.savez(tmp_path / "v1" / "arrays.npz", **arrays)
    old = export.load(tmp_path / "v1")
    z = torch.rand(4, 1, 8, 8, dtype=F64)
    with torch.no_grad():
        assert torch.equal(old(z), chain(z))
    out = simulate(meta, arrays, chain.encode(z).numpy())
    assert np.abs(out["logits"] - chain(z).detach().numpy()).max() <= 1e-12


def test_export_refuses_inconsistent_groups(tmp_path):
    torch.manual_seed(4)
    snn, _ = assert_exact(ResidualCNN(2), torch.rand(4, 3, 16, 16, dtype=F64))
    meta, arrays = export.to_dict(snn)
    spec = next(s for s in meta["layers"] if s.get("inputs"))
    i = spec["index"]
    bad = copy.deepcopy(meta)
    next(s for s in bad["layers"] if s["index"] == i)["inputs"][0]["delay"] += 0.5
    with pytest.raises(ValueError, match=rf"layers\[{i}\].inputs\[0\].delay: is"):
        export.validate(bad, arrays)
    bad = copy.deepcopy(meta)
    next(s for s in bad["layers"] if s["index"] == i)["inputs"][0]["source"] = spec["neuron_layer"]
    with pytest.raises(ValueError, match=rf"layers\[{i}\].inputs\[0\].source: expected an integer"):
        export.validate(bad, arrays)
    bad = copy.deepcopy(meta)
    bad["version"] = 1
    with pytest.raises(ValueError, match=r"layers\[\d+\].kind: expected one of dense, conv2d, pool, flatten"):
        export.validate(bad, arrays)  # average pooling needs version 2


class TrainableResidual(nn.Module):
    """No batch norm (its training statistics are no fixed affine map); one bias per neuron layer."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(1, 3, 3, padding=1)
        self.b = nn.Conv2d(3, 3, 3, padding=1)
        self.c = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.proj = nn.Conv2d(3, 4, 1, stride=2, bias=False)
        self.head = nn.Linear(4, 5)

    def forward(self, x):
        h = F.relu(self.a(x))
        y = F.relu(self.b(h) + h)
        z = F.relu(self.c(y) + self.proj(h))
        return self.head(F.adaptive_avg_pool2d(z, 1).flatten(1))


def test_residual_training_follows_the_relu_trajectory():
    torch.manual_seed(0)
    steps, batch = 200, 8
    g = torch.Generator().manual_seed(1)
    prototypes = torch.rand(5, 1, 8, 8, generator=g, dtype=F64)
    labels = torch.randint(0, 5, (steps * batch,), generator=g)
    inputs = (prototypes[labels] + 0.3 * torch.rand(steps * batch, 1, 8, 8, generator=g, dtype=F64)).clamp(0, 1)
    model = TrainableResidual().double()
    initial = model.a.weight.detach().clone()
    snn = ttfs.convert(copy.deepcopy(model), inputs[:256])
    relu_opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    snn_opt = torch.optim.Adam(snn.parameters(), lr=5e-3)
    relu_stats = train_epoch(model, TensorBatches(inputs, labels, batch, seed=3), relu_opt)
    snn_stats = train_epoch(snn, TensorBatches(inputs, labels, batch, seed=3), snn_opt)
    a, b, c, head = snn.neuron_layers
    pairs = [(a.weight, model.a.weight), (a.bias[:, 0], model.a.bias), (b.weight, model.b.weight),
             (b.bias[:, 0], model.b.bias), (c.weight, model.c.weight), (c.bias[:, 0], model.c.bias),
             (c.input_groups[0].weight, model.proj.weight), (head.weight, model.head.weight),
             (head.bias[:, 0], model.head.bias)]
    assert sum(p.numel() for p in snn.parameters()) == sum(p.numel() for p in model.parameters())
    for s, r in pairs:
        assert s.shape == r.shape
        assert float((s.detach() - r.detach()).abs().max()) <= 1e-8
    assert float((model.a.weight.detach() - initial).abs().max()) > 0.01  # it trained
    assert abs(relu_stats["loss"] - snn_stats["loss"]) <= 1e-8
    identity = b.input_groups[0]
    assert identity.kind == "scale" and bool((identity.weight == 1).all())  # a buffer: never trained
    with torch.no_grad():
        record = snn.run(inputs[:256])
        assert rel_diff(record.logits, model(inputs[:256])) <= 1e-9
    assert int(record.causality_violations().sum()) == 0 and int(record.early_arrivals().sum()) == 0


def test_reverse_mapping_of_chains_and_residual_networks():
    torch.manual_seed(6)
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2), nn.Conv2d(4, 4, 3, groups=2),
                          nn.ReLU(), nn.MaxPool2d(3, 1, 1), nn.Flatten(), nn.Linear(4 * 2 * 2, 3)).double()
    x = torch.rand(16, 2, 8, 8, dtype=F64)
    snn, _ = assert_exact(model, x)  # includes to_relu(snn)(x) == model(x)
    assert isinstance(ttfs.to_relu(snn), nn.Sequential)
    residual, _ = assert_exact(TrainableResidual(), torch.rand(4, 1, 8, 8, dtype=F64))
    back = ttfs.to_relu(residual)
    assert isinstance(back, ttfs.relu.ResidualReLU)
    assert [stage.sources for stage in back.stages] == [[], [1], [1], []]
    assert sum(p.numel() for p in back.parameters()) == sum(p.numel() for p in residual.parameters())
    with pytest.raises(ValueError, match="input groups"):
        ttfs.jacobian.layer_jacobians(residual, torch.rand(2, 1, 8, 8, dtype=F64))


def test_weight_quantisation_covers_projection_shortcuts():
    torch.manual_seed(7)
    snn, _ = assert_exact(TrainableResidual(), torch.rand(8, 1, 8, 8, dtype=F64))
    ttfs.constraints.quantise_weights(snn, 2)
    projection = snn.neuron_layers[2].input_groups[0]
    assert projection.kind == "conv2d" and len(torch.unique(projection.weight)) <= 4  # 2 bits: at most 4 levels
    identity = snn.neuron_layers[1].input_groups[0]
    assert bool((identity.weight == 1).all())


def test_tightened_windows_hold_every_input_entering_them():
    torch.manual_seed(8)
    x = torch.rand(32, 1, 8, 8, dtype=F64)
    snn, _ = assert_exact(TrainableResidual(), x)
    ttfs.constraints.tighten_windows(snn, x, quantile=1.0)
    assert snn.window_sources() == [[1], [1, 2], [3]]  # layer 3's projection reads layer 1 in window 2
    with torch.no_grad():
        record = snn.run(x)
    peaks = [float(a.max()) for a in record.activations()]
    assert float(snn.deltas[2]) == float(torch.tensor(max(peaks[0], peaks[1])).float())  # quantiles in float32
    assert int(record.early_arrivals().sum()) == 0


def test_input_window_change_rescales_groups_that_read_the_input():
    torch.manual_seed(9)

    class InputSkip(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(2, 3, 3, padding=1)
            self.b = nn.Conv2d(3, 3, 3, padding=1)
            self.skip = nn.Conv2d(2, 3, 1)
            self.head = nn.Linear(3 * 6 * 6, 4)

        def forward(self, x):
            h = F.relu(self.a(x))
            return self.head(F.relu(self.b(h) + self.skip(x)).flatten(1))

    x = torch.rand(16, 2, 6, 6, dtype=F64)
    snn, _ = assert_exact(InputSkip(), x)
    assert [g.source for g in groups_of(snn)] == [0]
    with torch.no_grad():
        before = snn(x)
        ttfs.constraints.set_input_window(snn, 0.25)
        after = snn.run(x)
    assert rel_diff(after.logits, before) <= 1e-12
    assert int(after.early_arrivals().sum()) == 0 and int(after.causality_violations().sum()) == 0


def test_layer_jacobians_of_a_chain_with_average_pooling_are_the_relu_ones():
    torch.manual_seed(10)
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(8, 5),
                          nn.ReLU(), nn.Linear(5, 3)).double()
    x = torch.rand(3, 1, 4, 4, dtype=F64)
    snn, _ = assert_exact(model, x)
    jacobians = ttfs.jacobian.layer_jacobians(snn, x)
    h = model[1](model[0](x))
    for i in range(3):  # d relu(W2 avgpool(h)) / d h of the ReLU network, per sample
        expected = torch.autograd.functional.jacobian(lambda a: model[5](model[4](model[3](model[2](a)))), h[i:i + 1])
        assert torch.allclose(jacobians[1][i], expected.reshape(5, -1), rtol=0, atol=1e-12)


def test_lean_step_equals_run_for_chains_with_padded_max_pool_and_average_pool():
    torch.manual_seed(11)
    model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2, 1),
                          nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(),
                          nn.Linear(4 * 2 * 2, 3)).double()
    x = torch.rand(8, 1, 8, 8, dtype=F64)
    snn, _ = assert_exact(model, x)
    assert snn.lean
    step = snn.forward_train(x, activations=True)
    record = snn.run(x)
    assert torch.equal(step.logits, record.logits)
    assert all(torch.equal(a, b) for a, b in zip(step.activations, record.activations(), strict=True))


def test_adaptive_windows_take_every_input_entering_a_window():
    torch.manual_seed(12)
    x = torch.rand(16, 1, 8, 8, dtype=F64)
    snn, _ = assert_exact(TrainableResidual(), x)
    with torch.no_grad():
        snn.deltas[1:] = 1e-3  # too narrow for everything: every window must grow
        record = snn.run(x)
    peaks = [float(a.max()) for a in record.activations()]
    snn.adapt_windows(record, kappa=10.0)
    assert snn.window_sources() == [[1], [1, 2], [3]]
    expected = [10 * peaks[0], 10 * max(peaks[0], peaks[1]), 10 * peaks[2]]
    assert snn.deltas[1:].tolist() == pytest.approx(expected, rel=1e-12)
    with torch.no_grad():
        after = snn.run(x)
    assert int(after.early_arrivals().sum()) == 0 and int(after.causality_violations().sum()) == 0
    assert int(record.early_arrivals().sum()) > 0  # before: layer 1's spikes reached layer 3 before it integrated


def test_zoo_resnet_goes_through_the_pipelines_building_blocks(tmp_path):
    """pretrain (fit) -> model file -> convert -> SNN file -> fine-tune (fit) -> the evaluate stage's checks."""
    from pipeline import artifacts
    from pipeline.params import FinetuneParams, PretrainParams
    from pipeline.training import fit

    class Run:
        resumed, run_id = True, "stub"

        def log_metrics(self, values, step=0):
            pass

    g = torch.Generator().manual_seed(0)
    y = torch.randint(3, (64,), generator=g)
    x = torch.rand(64, 1, 12, 12, generator=g) * 0.3 + y.float().reshape(-1, 1, 1, 1) / 3
    torch.manual_seed(0)
    relu = ttfs.create_model("resnet_small", in_shape=(1, 12, 12), num_classes=3, width_multiplier=0.25)
    pre = PretrainParams(epochs=1, batch_size=8, lr=1e-2, chance_margin=None)
    fit(relu, TensorBatches(x, y, 8), TensorBatches(x, y, 32, shuffle=False), pre, tmp_path / "r.pt", None, Run(), "r")
    relu.eval()
    artifacts.save_relu(tmp_path / "relu.pt", relu, {})
    relu, _ = artifacts.load_relu(tmp_path / "relu.pt")
    snn = ttfs.convert(relu, x)
    artifacts.save_snn(tmp_path / "snn.pt", snn, {})
    snn, _ = artifacts.load_snn(tmp_path / "snn.pt")
    report = ttfs.metrics.compare_to_relu(relu, snn, (x, y))
    assert report["agreement"] == 1.0 and report["max_rel_logit_diff"] <= 1e-4  # float32, SPEC 3.4
    assert report["causality_violations"] == 0 and report["early_arrivals"] == 0
    fine = FinetuneParams(epochs=1, batch_size=8, lr=1e-3, chance_margin=None)
    fit(snn, TensorBatches(x, y, 8), TensorBatches(x, y, 32, shuffle=False), fine, tmp_path / "s.pt", None, Run(), "s")
    equivalent = ttfs.metrics.compare_to_relu(ttfs.to_relu(snn), snn, (x, y))
    assert equivalent["agreement"] == 1.0 and equivalent["max_rel_logit_diff"] <= 1e-4
    stats = ttfs.metrics.spike_statistics(snn, x)
    energy = ttfs.metrics.energy_estimate(stats, ttfs.metrics.macs(snn))
    assert stats["synops_per_sample"] > 0 and energy["ratio"] > 0


def test_view_flatten_and_functional_ops_of_a_hand_written_forward():
    torch.manual_seed(13)

    class Hand(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(1, 3, 3)
            self.bn = random_bn(3)
            self.b = nn.Linear(3 * 2 * 2, 4)
            self.c = nn.Linear(4, 2)

        def forward(self, x):
            h = torch.relu(self.a(x))
            h = F.avg_pool2d(self.bn(h), 2)  # batch norm after the ReLU, folded through the average
            h = F.dropout(h.view(h.size(0), -1), 0.5, training=False)
            return self.c(F.relu(self.b(h)) * 0.5)

    assert_exact(Hand(), torch.rand(8, 1, 6, 6, dtype=F64))

    class Reshape(Hand):
        def forward(self, x):
            return self.c(F.relu(self.b(torch.relu(self.a(x)).reshape(2, -1))))

    with pytest.raises(ttfs.UnsupportedLayerError, match=r"node 'reshape' .*only the reshape to \(batch, -1\)"):
        ttfs.convert(Reshape(), torch.rand(2, 1, 6, 6))


def test_float32_residual_export_round_trips():
    torch.manual_seed(14)
    x = torch.rand(8, 3, 16, 16)
    snn = ttfs.convert(ResidualCNN(2).eval(), x)  # float32
    with torch.no_grad():  # widths of very different magnitudes: float32 differences of boundaries round
        snn.deltas[1:] = torch.tensor([0.1234567, 3333.3, 7.77, 0.0031, 1234.5, 0.9, 77.7])
    meta, arrays = export.to_dict(snn)
    back = export.from_dict(meta, arrays)
    with torch.no_grad():
        assert torch.equal(back(x), snn(x))
    bounds = meta["windows"]["boundaries"]
    delays = [(spec["neuron_layer"], g) for spec in meta["layers"] for g in spec.get("inputs", ())]
    assert delays and all(g["delay"] == bounds[n] - bounds[g["source"] + 1] for n, g in delays)
