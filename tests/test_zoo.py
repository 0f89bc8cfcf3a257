"""The model zoo: registry behaviour, architectures of SPEC 7, and exact conversion of every model."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import ttfs
from ttfs import zoo
from ttfs.zoo import UnknownModelError, create_model, list_models, model_defaults, register_model

SPEC_MODELS = {"fc2", "fc16", "lenet5", "vgg16", "vgg16_mnist", "vgg16_places365"}

# Tiny instances of every registered model (fast on CPU); every registered model must have one.
SMALL = {
    "fc2": dict(in_shape=(1, 6, 6), width=16),
    "fc16": dict(in_shape=(1, 6, 6), width=12),  # all 15 hidden layers, narrow
    "lenet5": dict(in_shape=(1, 28, 28)),
    "vgg16": dict(in_shape=(3, 32, 32), width_multiplier=1 / 16),
    "vgg16_mnist": dict(in_shape=(1, 28, 28), width_multiplier=1 / 16),
    "vgg16_places365": dict(in_shape=(3, 32, 32), width_multiplier=1 / 32),
    "resnet20": dict(in_shape=(3, 16, 16), width_multiplier=1 / 4),
    "resnet18_cifar": dict(in_shape=(3, 16, 16), width_multiplier=1 / 32),
    "resnet_small": dict(in_shape=(1, 12, 12), width_multiplier=1 / 4, block="bottleneck"),
    "vgg_fmnist": dict(in_shape=(1, 12, 12), widths=[4, 4, "P", 8, "P"], dense=[16]),
}
ALLOWED = (
    nn.Linear, nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d, nn.Flatten, nn.Dropout,
    zoo.BasicBlock, zoo.Bottleneck, nn.AdaptiveAvgPool2d,  # the ResNets
)


def randomise_batch_norm(model: nn.Module, gen: torch.Generator) -> None:
    """Random affine parameters (some negative scales) and running statistics for every BN layer."""
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            n = m.num_features
            sign = torch.where(torch.rand(n, generator=gen) < 0.25, -1.0, 1.0)
            with torch.no_grad():
                m.weight.copy_(sign * (0.5 + torch.rand(n, generator=gen)))
                m.bias.copy_(0.2 * torch.randn(n, generator=gen))
                m.running_mean.copy_(0.2 * torch.randn(n, generator=gen))
                m.running_var.copy_(0.5 + 1.5 * torch.rand(n, generator=gen))


def small(name: str, **extra) -> nn.Sequential:
    return create_model(name, **{**SMALL[name], **extra})


# -- registry ----------------------------------------------------------------------------------------


def test_registry_has_the_spec_models_sorted():
    names = list_models()
    assert SPEC_MODELS <= set(names)
    assert names == sorted(names)
    assert list_models("vgg16*") == sorted(n for n in names if n.startswith("vgg16"))


def test_every_registered_model_has_a_small_test_config():
    assert set(list_models()) == set(SMALL)


def test_unknown_name_lists_registered_names():
    with pytest.raises(KeyError) as info:
        create_model("resnet50")
    message = str(info.value)
    assert "resnet50" in message
    assert all(name in message for name in list_models())
    with pytest.raises(ValueError):
        create_model("resnet50")
    assert isinstance(info.value, UnknownModelError)


def test_unknown_kwargs_are_named():
    with pytest.raises(TypeError, match="widht") as info:
        create_model("fc2", widht=3, colour="red")
    assert "colour" in str(info.value)
    with pytest.raises(TypeError, match="width_multiplier"):
        create_model("lenet5", width_multiplier=0.5)


def test_register_model_decorator(monkeypatch):
    monkeypatch.setattr(zoo, "_MODELS", dict(zoo._MODELS))

    @register_model
    def tiny_test_net(*, in_shape=(3,), num_classes: int = 2, batch_norm: bool = False, dropout: float = 0.0):
        return nn.Sequential(nn.Linear(in_shape[0], num_classes))

    assert "tiny_test_net" in list_models()
    model = create_model("tiny_test_net", num_classes=5)
    assert model[0].out_features == 5
    assert model.config["name"] == "tiny_test_net" and model.config["num_classes"] == 5
    assert model_defaults("tiny_test_net")["num_classes"] == 2

    register_model(name="alias_net")(tiny_test_net)
    assert create_model("alias_net")[0].out_features == 2
    with pytest.raises(ValueError, match="already registered"):

        @register_model(name="tiny_test_net")
        def other(**kw):  # pragma: no cover - never built
            return nn.Sequential()


def test_config_records_resolved_arguments():
    model = create_model("vgg16", width_multiplier=0.25, in_shape=[3, 32, 32])
    assert model.config["name"] == "vgg16"
    assert model.config["width_multiplier"] == 0.25
    assert model.config["in_shape"] == (3, 32, 32)
    assert model.config["num_classes"] == 10


# -- architectures -----------------------------------------------------------------------------------


def affine(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


@pytest.mark.parametrize("batch_norm", [False, True])
@pytest.mark.parametrize("name", list_models())
def test_forward_shape_layers_and_init(name, batch_norm):
    model = small(name, num_classes=7, batch_norm=batch_norm, dropout=0.1)
    assert isinstance(model, nn.Sequential)
    assert all(isinstance(m, ALLOWED) for m in model), [type(m).__name__ for m in model]
    assert any(isinstance(m, nn.Dropout) for m in model)
    assert any(isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) for m in model) == batch_norm
    x = torch.rand(3, *model.config["in_shape"])
    assert model(x).shape == (3, 7)
    model.eval()
    assert model(x).shape == (3, 7)
    for m in affine(model):  # Glorot uniform, zero biases
        fan_in = m.weight[0].numel()
        fan_out = m.weight.shape[0] * (m.weight[0, 0].numel() if m.weight.ndim == 4 else 1)
        bound = math.sqrt(6.0 / (fan_in + fan_out))
        assert float(m.weight.detach().abs().max()) <= bound
        assert float(m.weight.detach().abs().max()) > 0.5 * bound  # not a narrower init
        assert m.bias is None or not m.bias.any()


def conv_params(c_in: int, cfg) -> tuple[int, int]:
    total, c = 0, c_in
    for item in cfg:
        if item != "P":
            total += 9 * c * item + item
            c = item
    return total, c


def dense_shapes(model: nn.Module) -> list[tuple[int, int]]:
    return [(m.in_features, m.out_features) for m in model if isinstance(m, nn.Linear)]


def parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_full_size_fc_and_lenet5_architectures():
    with torch.device("meta"):
        fc2 = create_model("fc2")
        fc16 = create_model("fc16")
        lenet = create_model("lenet5")
    assert dense_shapes(fc2) == [(784, 340), (340, 10)]
    assert dense_shapes(fc16) == [(784, 340)] + [(340, 340)] * 14 + [(340, 10)]
    convs = [m for m in lenet if isinstance(m, nn.Conv2d)]
    assert [(m.out_channels, m.kernel_size) for m in convs] == [(6, (5, 5)), (16, (5, 5)), (120, (5, 5))]
    assert [m.padding for m in convs] == [(2, 2), (0, 0), (0, 0)]
    assert dense_shapes(lenet) == [(120, 84), (84, 10)]
    expected = (25 * 6 + 6) + (6 * 25 * 16 + 16) + (16 * 25 * 120 + 120) + (120 * 84 + 84) + (84 * 10 + 10)
    assert parameters(lenet) == expected


def test_lenet5_batch_norm_precedes_relu():
    model = create_model("lenet5", batch_norm=True)
    kinds = [type(m) for m in model]
    for i, kind in enumerate(kinds):
        if kind in (nn.BatchNorm1d, nn.BatchNorm2d):
            assert kinds[i - 1] in (nn.Conv2d, nn.Linear) and kinds[i + 1] is nn.ReLU


def test_full_size_vgg16_cifar_matches_public_model():
    cfg = [64, 64, "P", 128, 128, "P", 256, 256, 256, "P", 512, 512, 512, "P", 512, 512, 512, "P"]
    with torch.device("meta"):
        model = create_model("vgg16")
    convs, linears = affine(model)[:13], affine(model)[13:]
    assert [m.out_channels for m in convs] == [c for c in cfg if c != "P"]
    assert all(m.kernel_size == (3, 3) and m.padding == (1, 1) for m in convs)
    assert [(m.in_features, m.out_features) for m in linears] == [(512, 512), (512, 10)]
    assert sum(isinstance(m, nn.MaxPool2d) for m in model) == 5
    conv_total, _ = conv_params(3, cfg)
    bn = 2 * (sum(c for c in cfg if c != "P") + 512)
    assert parameters(model) == conv_total + (512 * 512 + 512) + (512 * 10 + 10) + bn
    # conv -> ReLU -> BN, and the public model's dropout rates
    kinds = [type(m) for m in model]
    assert all(kinds[i + 1] is nn.ReLU and kinds[i + 2] is nn.BatchNorm2d
               for i, k in enumerate(kinds) if k is nn.Conv2d)
    assert [m.p for m in model if isinstance(m, nn.Dropout)] == [0.3] + [0.4] * 7 + [0.5, 0.5]
    no_dropout = create_model("vgg16", dropout=0.0, width_multiplier=1 / 64)
    assert not any(isinstance(m, nn.Dropout) for m in no_dropout)


def test_full_size_vgg16_mnist_and_places365():
    with torch.device("meta"):
        mnist = create_model("vgg16_mnist")
        places = create_model("vgg16_places365")
    mnist_cfg = [64, 64, 128, 128, "P", 256, 256, 256, "P", 512, 512, 512, "P", 512, 512, 512, "P"]
    assert [m.out_channels for m in affine(mnist)[:13]] == [c for c in mnist_cfg if c != "P"]
    # 28 -> 14 -> 7 -> 3 -> 1
    assert dense_shapes(mnist) == [(512, 512), (512, 512), (512, 10)]
    assert mnist[0].in_channels == 1
    assert [(m.in_features, m.out_features) for m in affine(places)[13:]] == [
        (512 * 7 * 7, 4096), (4096, 4096), (4096, 365)]
    conv_total, _ = conv_params(3, [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512])
    dense = (25088 * 4096 + 4096) + (4096 * 4096 + 4096) + (4096 * 365 + 365)
    assert parameters(places) == conv_total + dense


def test_full_size_vgg_fmnist_is_the_probe_network():
    """benchmarks/fmnist_vgg_probe.py's network: conv -> BN -> ReLU, three pools, dense 256 without BN."""
    with torch.device("meta"):
        model = create_model("vgg_fmnist")
    assert [m.out_channels for m in affine(model)[:6]] == [32, 32, 64, 64, 128, 128]
    assert dense_shapes(model) == [(128 * 3 * 3, 256), (256, 10)]
    assert sum(isinstance(m, nn.MaxPool2d) for m in model) == 3
    kinds = [type(m) for m in model]
    assert all(kinds[i + 1] is nn.BatchNorm2d and kinds[i + 2] is nn.ReLU
               for i, k in enumerate(kinds) if k is nn.Conv2d)
    assert not any(k is nn.BatchNorm1d for k in kinds)


def test_flatten_size_follows_in_shape():
    model = create_model("vgg16_places365", in_shape=(3, 64, 48), width_multiplier=1 / 64)
    first_dense = affine(model)[13]
    assert first_dense.in_features == 8 * 2 * 1  # 512/64 channels, 64x48 / 32
    assert model(torch.rand(2, 3, 64, 48)).shape == (2, 365)
    lenet = create_model("lenet5", in_shape=(3, 36, 36))  # 36 -> 18 -> 14 -> 7 -> 3
    assert affine(lenet)[3].in_features == 120 * 3 * 3
    assert lenet(torch.rand(2, 3, 36, 36)).shape == (2, 10)


def test_width_multiplier_scales_hidden_widths_only():
    model = create_model("vgg16", width_multiplier=0.25, num_classes=100)
    assert [m.out_channels for m in affine(model)[:2]] == [16, 16]
    assert [m.out_features for m in affine(model)[13:]] == [128, 100]


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("vgg16", dict(in_shape=(3, 16, 16))),  # 5 pools need at least 32x32
        ("vgg16", dict(width_multiplier=0)),
        ("vgg16", dict(bn_position="middle")),
        ("lenet5", dict(in_shape=(1, 8, 8))),
        ("lenet5", dict(in_shape=(28, 28))),
        ("fc2", dict(dropout=1.0)),
        ("fc16", dict(depth=0)),
        ("fc2", dict(num_classes=0)),
        ("vgg_fmnist", dict(widths=["P"])),
        ("vgg_fmnist", dict(widths=[8, "M"])),
        ("vgg_fmnist", dict(dense=[0])),
    ],
)
def test_invalid_arguments(name, kwargs):
    with pytest.raises(ValueError):
        create_model(name, **kwargs)


# -- exact conversion --------------------------------------------------------------------------------


@pytest.mark.parametrize("batch_norm", [False, True])
@pytest.mark.parametrize("name", list_models())
def test_conversion_is_exact(name, batch_norm):
    gen = torch.Generator().manual_seed(sum(map(ord, name)) + batch_norm)
    torch.manual_seed(gen.initial_seed())
    model = small(name, batch_norm=batch_norm, dropout=0.2).double()
    randomise_batch_norm(model, gen)
    model.eval()
    x = torch.rand(12, *model.config["in_shape"], generator=gen, dtype=torch.float64)
    snn = ttfs.convert(model, x)
    with torch.no_grad():
        ref = model(x)
        record = snn.run(x)
    assert record.logits.dtype == torch.float64
    assert float(ref.std(0).max()) > 1e-6, "the input must reach the logits for the test to mean anything"
    scale = float(ref.abs().max())
    assert float((record.logits - ref).abs().max()) <= 1e-9 * scale
    assert bool((record.logits.argmax(1) == ref.argmax(1)).all())
    assert int(record.causality_violations().sum()) == 0
    assert int(record.spikes_per_layer().sum()) > 0
    projections = [g for layer in snn.neuron_layers for g in layer.input_groups if g.kind == "conv2d"]
    assert len(snn.neuron_layers) + len(projections) == len(affine(model))


def test_vgg16_bn_before_relu_converts_exactly():
    gen = torch.Generator().manual_seed(3)
    torch.manual_seed(3)
    model = create_model("vgg16", width_multiplier=1 / 16, bn_position="before").double()
    kinds = [type(m) for m in model]
    assert all(kinds[i + 1] is nn.BatchNorm2d and kinds[i + 2] is nn.ReLU
               for i, k in enumerate(kinds) if k is nn.Conv2d)
    randomise_batch_norm(model, gen)
    model.eval()
    x = torch.rand(8, 3, 32, 32, generator=gen, dtype=torch.float64)
    snn = ttfs.convert(model, x)
    with torch.no_grad():
        ref, out = model(x), snn(x)
    assert float((out - ref).abs().max()) <= 1e-9 * float(ref.abs().max())
