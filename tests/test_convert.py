"""Conversion is exact: converted SNN logits equal the ReLU logits (float64, 1e-9 of the logit scale)."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import ttfs

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def random_bn(channels: int, dims: int, negative: bool = True) -> nn.Module:
    bn = nn.BatchNorm2d(channels) if dims == 2 else nn.BatchNorm1d(channels)
    with torch.no_grad():
        low = -1.5 if negative else 0.5
        bn.weight.uniform_(low, 1.5)
        bn.bias.normal_()
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
    return bn


def conv_net(kernel: int, padding: str, bn_before: bool, bn_after: bool, pool: bool) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(2, 4, kernel, padding=padding)]
    if bn_before:
        layers.append(random_bn(4, 2))
    layers.append(nn.ReLU())
    if bn_after:
        layers.append(random_bn(4, 2))
    size = 14 if padding == "same" else 14 - kernel + 1
    if pool:
        layers.append(nn.MaxPool2d(2))
        size //= 2
    layers += [nn.Conv2d(4, 3, kernel, padding=padding), nn.ReLU()]
    if bn_after:
        layers.append(random_bn(3, 2))
    size = size if padding == "same" else size - kernel + 1
    layers += [nn.Flatten(), nn.Linear(3 * size * size, 6), nn.ReLU(), nn.Dropout(0.3), nn.Linear(6, 4)]
    return nn.Sequential(*layers).eval()


def fc_net(widths: list[int], bn_before: bool, bn_after: bool) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Flatten()]
    for w_in, w_out in zip(widths[:-2], widths[1:-1], strict=True):
        layers.append(nn.Linear(w_in, w_out))
        if bn_before:
            layers.append(random_bn(w_out, 1))
        layers.append(nn.ReLU())
        if bn_after:
            layers.append(random_bn(w_out, 1))
    layers.append(nn.Linear(widths[-2], widths[-1]))
    return nn.Sequential(*layers).eval()


def assert_exact(model: nn.Module, x: torch.Tensor, **kw) -> ttfs.SNN:
    snn = ttfs.convert(model, x, **kw)
    with torch.no_grad():
        reference = model(x)
        record = snn.run(x)
        back = ttfs.to_relu(snn)(x)
    scale = reference.abs().max()
    assert (record.logits - reference).abs().max() <= 1e-9 * scale
    assert torch.equal(record.logits.argmax(1), reference.argmax(1))
    assert int(record.causality_violations().sum()) == 0
    assert (back - reference).abs().max() <= 1e-9 * scale
    return snn


@pytest.mark.parametrize("kernel", [3, 5])
@pytest.mark.parametrize("padding", ["same", "valid"])
@pytest.mark.parametrize("bn_before,bn_after", [(False, False), (True, False), (False, True), (True, True)])
def test_conv_conversion_exact(kernel, padding, bn_before, bn_after):
    torch.manual_seed(kernel * 7 + len(padding) + 2 * bn_before + bn_after)
    model = conv_net(kernel, padding, bn_before, bn_after, pool=True).double()
    assert_exact(model, torch.rand(32, 2, 14, 14, dtype=torch.float64))


def test_same_padding_after_bn_creates_border_regions():
    torch.manual_seed(3)
    model = conv_net(3, "same", bn_before=False, bn_after=True, pool=False).double()
    snn = assert_exact(model, torch.rand(16, 2, 14, 14, dtype=torch.float64))
    second_conv = snn.neuron_layers[1]
    # interior, 4 edges and 4 corners of a 3x3 'same' convolution
    assert second_conv.bias.shape[1] == 9
    assert int(second_conv.region_index.unique().numel()) == 9


def test_negative_bn_scale_flips_pooling():
    torch.manual_seed(4)
    model = conv_net(3, "valid", bn_before=False, bn_after=True, pool=True).double()
    with torch.no_grad():
        model[2].weight[:2] = -model[2].weight[:2].abs()
    snn = assert_exact(model, torch.rand(16, 2, 14, 14, dtype=torch.float64))
    pool = next(m for m in snn.layers if isinstance(m, ttfs.MinTimePool2d))
    assert pool.sign is not None and int((pool.sign < 0).sum()) >= 2


@settings(max_examples=25, deadline=None)
@given(
    widths=st.lists(st.integers(1, 12), min_size=2, max_size=4),
    bn_before=st.booleans(),
    bn_after=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_fc_conversion_exact_hypothesis(widths, bn_before, bn_after, seed):
    torch.manual_seed(seed)
    model = fc_net([9, *widths, 3], bn_before, bn_after).double()
    assert_exact(model, torch.rand(20, 1, 3, 3, dtype=torch.float64))


@settings(max_examples=15, deadline=None)
@given(
    kernel=st.sampled_from([1, 3, 5]),
    padding=st.sampled_from(["same", "valid"]),
    stride=st.sampled_from([1, 2]),
    seed=st.integers(0, 2**16),
)
def test_conv_stride_and_kernels_hypothesis(kernel, padding, stride, seed):
    if padding == "same" and stride != 1:
        padding = kernel // 2  # explicit symmetric padding with a stride
    torch.manual_seed(seed)
    conv = nn.Conv2d(2, 3, kernel, stride=stride, padding=padding)
    out = conv(torch.zeros(1, 2, 9, 9)).shape[-1]
    model = nn.Sequential(random_bn(2, 2), conv, nn.ReLU(), random_bn(3, 2), nn.Flatten(),
                          nn.Linear(3 * out * out, 4)).eval()
    # a batch norm on the raw input is folded like one after a ReLU
    model = (model[1:] if padding == "valid" else model).eval()
    assert_exact(model.double(), torch.rand(12, 2, 9, 9, dtype=torch.float64))


def test_input_range_fold_per_channel_and_clipping():
    torch.manual_seed(5)
    model = conv_net(3, "same", True, True, pool=True).double()
    x = torch.randn(24, 2, 14, 14, dtype=torch.float64).clamp(-2.5, 2.5)
    snn = assert_exact(model, x, in_range=([-3.0, -2.5], [3.0, 2.5]), input_delta=2.0)
    assert snn.run(x).clipped_inputs() == 0
    outside = x.clone()
    outside[0, 0, 0, 0] = 10.0
    assert snn.run(outside).clipped_inputs() == 1


@pytest.mark.parametrize("device", DEVICES)
def test_float32_within_1e4(device):
    torch.manual_seed(6)
    model = conv_net(5, "same", True, True, pool=True).to(device)
    x = torch.rand(64, 2, 14, 14, device=device)
    snn = ttfs.convert(model, x)
    assert snn.deltas.dtype == torch.float32
    with torch.no_grad():
        assert (snn(x) - model(x)).abs().max() <= 1e-4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_float64_exact():
    torch.manual_seed(7)
    model = conv_net(3, "same", True, True, pool=True).double().cuda()
    assert_exact(model, torch.rand(32, 2, 14, 14, dtype=torch.float64, device="cuda"))


def test_unsupported_layer_names_itself_and_alternatives():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))
    with pytest.raises(ttfs.UnsupportedLayerError, match=r"Tanh.*supported are.*Linear"):
        ttfs.convert(model, torch.rand(4, 1, 2, 2))


@pytest.mark.parametrize(
    "model,message",
    [
        (nn.Sequential(nn.Flatten(), nn.Linear(5, 3), nn.ReLU(), nn.Linear(3, 2)), "expects 5 features"),
        (nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.ReLU()), "must end with a Linear"),
        (nn.Sequential(nn.Conv2d(1, 2, 1), nn.MaxPool2d(2), nn.ReLU(), nn.Flatten(), nn.Linear(2, 2)),
         "MaxPool2d between"),
    ],
)
def test_structural_errors_are_clear(model, message):
    with pytest.raises((ValueError, TypeError), match=message):
        ttfs.convert(model, torch.rand(4, 1, 2, 2))


def test_bad_inputs_are_rejected():
    snn = ttfs.convert(fc_net([4, 3, 2], False, False), torch.rand(8, 1, 2, 2))
    with pytest.raises(ValueError, match=r"expected \(batch, 1, 2, 2\)"):
        snn(torch.rand(8, 4))
    bad = torch.rand(8, 1, 2, 2)
    bad[3, 0, 1, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinite"):
        snn(bad)
    with pytest.raises(ValueError, match="q > p"):
        ttfs.convert(fc_net([4, 3, 2], False, False), torch.rand(8, 1, 2, 2), in_range=(1.0, 0.0))
