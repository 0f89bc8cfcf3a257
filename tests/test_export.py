"""Export/import of a converted SNN (ttfs.export): exact round trip, documented fields, clear errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import ttfs
from ttfs import export

DOC = Path(__file__).resolve().parents[1] / "docs" / "export_format.md"


def random_bn(channels: int, dims: int) -> nn.Module:
    bn = nn.BatchNorm2d(channels) if dims == 2 else nn.BatchNorm1d(channels)
    with torch.no_grad():
        bn.weight.uniform_(-1.5, 1.5)
        bn.bias.normal_()
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
    return bn


def b1_conv_snn(dtype: torch.dtype = torch.float64, in_range=(0.0, 1.0)) -> tuple[ttfs.SNN, torch.Tensor]:
    """Conv + FC net with per-region thresholds ('same' padding after BN) and negative pool signs."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding="same"), random_bn(4, 2), nn.ReLU(), random_bn(4, 2), nn.MaxPool2d(2),
        nn.Conv2d(4, 5, 5, padding=2), nn.ReLU(), random_bn(5, 2), nn.Conv2d(5, 3, 3), nn.ReLU(), nn.Flatten(),
        random_bn(12, 1), nn.Linear(12, 7), nn.ReLU(), nn.Dropout(), nn.Linear(7, 3),
    ).double().eval()
    z = torch.rand(16, 2, 8, 8, dtype=torch.float64)
    snn = ttfs.convert(model, z, in_range=in_range, dtype=dtype)
    convs = [m for m in snn.layers if isinstance(m, ttfs.SpikingConv2d)]
    pools = [m for m in snn.layers if isinstance(m, ttfs.MinTimePool2d)]
    assert any(c.region_index is not None for c in convs)
    assert any(p.sign is not None and bool((p.sign < 0).any()) for p in pools)
    return snn, z.to(dtype)


def alpha1_snn() -> tuple[ttfs.SNN, torch.Tensor]:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(27, 6),
                          nn.ReLU(), nn.Linear(6, 3)).double().eval()
    with torch.no_grad():
        model[-1].weight.mul_(0.05)
    z = torch.rand(16, 2, 8, 8, dtype=torch.float64)
    return ttfs.convert(model, z, parameterisation="alpha1"), z


def assert_identical(a: ttfs.SNN, b: ttfs.SNN, z: torch.Tensor) -> None:
    assert type(a) is type(b)
    assert [type(m) for m in a.layers] == [type(m) for m in b.layers]
    assert repr(a) == repr(b)
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        assert sa[key].dtype == sb[key].dtype, key
        assert torch.equal(sa[key], sb[key]), key
    for ma, mb in zip(a.neuron_layers, b.neuron_layers, strict=True):
        assert (ma.parameterisation, ma.alpha) == (mb.parameterisation, mb.alpha)
        assert ma.bias.requires_grad and mb.weight.requires_grad
    with torch.no_grad():
        ra, rb = a.run(z), b.run(z)
    assert len(ra.times) == len(rb.times)
    for ta, tb in zip(ra.times, rb.times, strict=True):
        assert torch.equal(ta, tb)
    assert torch.equal(ra.logits, rb.logits)
    assert torch.equal(a.boundaries(), b.boundaries())


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_round_trip_b1_conv_regions_and_signs(tmp_path, dtype) -> None:
    snn, z = b1_conv_snn(dtype)
    with torch.no_grad():
        snn.t_start.fill_(0.75)
    export.save(snn, tmp_path / "model")
    loaded = export.load(tmp_path / "model")
    assert loaded.deltas.dtype == dtype
    assert_identical(snn, loaded, z)


def test_round_trip_per_channel_range(tmp_path) -> None:
    snn, z = b1_conv_snn(in_range=([-0.1, 0.05], [1.0, 1.3]))
    assert snn.encoder.p.ndim == 3
    export.save(snn, tmp_path)
    loaded = export.load(tmp_path)
    assert_identical(snn, loaded, z)
    meta = json.loads((tmp_path / "model.json").read_text())
    assert meta["input"]["p"] == [-0.1, 0.05] and meta["input"]["q"] == [1.0, 1.3]


def test_round_trip_alpha1(tmp_path) -> None:
    snn, z = alpha1_snn()
    export.save(snn, tmp_path)
    loaded = export.load(tmp_path)
    assert loaded.parameterisation == "alpha1"
    assert_identical(snn, loaded, z)
    # in memory, without files
    assert_identical(snn, export.from_dict(*export.to_dict(snn)), z)


def _keys(obj, found: set[str]) -> set[str]:
    if isinstance(obj, dict):
        for k, v in obj.items():
            found.add(k)
            _keys(v, found)
    elif isinstance(obj, list):
        for v in obj:
            _keys(v, found)
    return found


def test_json_contains_the_documented_fields(tmp_path) -> None:
    snn, _ = b1_conv_snn()
    export.save(snn, tmp_path)
    meta = json.loads((tmp_path / "model.json").read_text())  # valid JSON (no NaN, no torch objects)
    assert meta["format"] == "ttfs-snn" and meta["version"] == 1 and meta["dtype"] == "float64"
    assert meta["parameterisation"] == "b1" and meta["arrays_file"] == "arrays.npz"
    assert set(meta["input"]) == {"in_shape", "p", "q", "t_min", "t_max", "delta"}
    assert meta["input"]["in_shape"] == [2, 8, 8]
    windows = meta["windows"]
    assert set(windows) == {"t_start", "deltas", "boundaries", "t_read", "latency"}
    np.testing.assert_allclose(windows["boundaries"], windows["t_start"] + np.r_[0, np.cumsum(windows["deltas"])])
    assert windows["t_read"] == windows["boundaries"][-1]
    assert [s["kind"] for s in meta["layers"]] == ["conv2d", "pool", "conv2d", "conv2d", "flatten", "dense", "dense"]
    assert meta["n_neuron_layers"] == 5

    with np.load(tmp_path / "arrays.npz", allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    referenced = set()
    n = 0
    for i, spec in enumerate(meta["layers"]):
        assert spec["index"] == i
        common = {"kind", "index", "in_shape", "out_shape"}
        if spec["kind"] == "pool":
            assert set(spec) == common | {"kernel", "stride", "sign"}
            assert set(spec["sign"]) <= {1, -1} and len(spec["sign"]) == spec["in_shape"][0]
            continue
        if spec["kind"] == "flatten":
            assert set(spec) == common
            assert spec["out_shape"] == [int(np.prod(spec["in_shape"]))]
            continue
        n += 1
        neuron = common | {"neuron_layer", "role", "parameterisation", "alpha", "A", "regions", "weight", "bias",
                           "theta", "B", "region_index", "t_min_in", "t_min", "t_max", "delta", "t_read"}
        conv = {"kernel", "stride", "padding"} if spec["kind"] == "conv2d" else set()
        assert set(spec) == neuron | conv
        assert spec["neuron_layer"] == n and spec["A"] == 0.0 and spec["parameterisation"] == "b1"
        readout = i == len(meta["layers"]) - 1
        assert spec["role"] == ("readout" if readout else "hidden")
        b = windows["boundaries"]
        assert (spec["t_min_in"], spec["t_min"]) == (b[n - 1], b[n])
        assert spec["t_max"] == (None if readout else b[n + 1])
        assert spec["t_read"] == (b[n] if readout else None)
        for key in ("weight", "bias", "theta", "B", "region_index"):
            if spec[key] is not None:
                assert spec[key] in arrays
                referenced.add(spec[key])
        bias, theta = arrays[spec["bias"]], arrays[spec["theta"]]
        assert bias.shape == theta.shape == (spec["out_shape"][0], spec["regions"])
        delta = 0.0 if readout else spec["delta"]
        np.testing.assert_array_equal(theta, delta - bias)  # B1: theta = Delta - D, readout -D
        np.testing.assert_array_equal(arrays[spec["B"]], np.ones(spec["out_shape"]))
        if spec["region_index"] is not None:
            index = arrays[spec["region_index"]]
            assert index.dtype == np.int64 and index.shape == tuple(spec["out_shape"][1:])
            assert spec["regions"] == index.max() + 1 > 1
        if spec["kind"] == "conv2d":
            assert arrays[spec["weight"]].shape == (spec["out_shape"][0], spec["in_shape"][0], *spec["kernel"])
        else:
            assert arrays[spec["weight"]].shape == (spec["out_shape"][0], spec["in_shape"][0])
    assert referenced == set(arrays)  # no unreferenced arrays

    doc = DOC.read_text()
    for key in sorted(_keys(meta, set())):
        assert f"`{key}`" in doc, f"field {key!r} is not documented in {DOC.name}"


def test_alpha1_fields(tmp_path) -> None:
    snn, _ = alpha1_snn()
    meta, arrays = export.to_dict(snn)
    for spec, layer in zip([s for s in meta["layers"] if s["kind"] in ("dense", "conv2d")], snn.neuron_layers,
                           strict=True):
        assert spec["parameterisation"] == "alpha1" and spec["A"] == spec["alpha"] == 1.0
        np.testing.assert_array_equal(arrays[spec["theta"]], layer.bias.detach().numpy())
        weight = arrays[spec["weight"]]
        slope = spec["alpha"] + weight.reshape(weight.shape[0], -1).sum(1)
        b = arrays[spec["B"]]
        np.testing.assert_allclose(b, np.broadcast_to(slope.reshape(-1, *(1,) * (b.ndim - 1)), b.shape), rtol=1e-14)


# ------------------------------------------------------------------------------------------------
# errors
# ------------------------------------------------------------------------------------------------
@pytest.fixture
def saved(tmp_path) -> Path:
    snn, _ = b1_conv_snn()
    return export.save(snn, tmp_path / "snn")


def _edit_json(path: Path, edit) -> None:
    meta = json.loads((path / "model.json").read_text())
    edit(meta)
    (path / "model.json").write_text(json.dumps(meta))


def _edit_arrays(path: Path, edit) -> None:
    with np.load(path / "arrays.npz") as npz:
        arrays = {k: npz[k] for k in npz.files}
    edit(arrays)
    np.savez(path / "arrays.npz", **arrays)


def test_missing_files(saved, tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="not a directory"):
        export.load(tmp_path / "nowhere")
    (saved / "arrays.npz").unlink()
    with pytest.raises(FileNotFoundError, match="arrays.npz is missing"):
        export.load(saved)
    (saved / "model.json").unlink()
    with pytest.raises(FileNotFoundError, match="model.json is missing"):
        export.load(saved)


def test_bad_json_and_header(saved) -> None:
    text = (saved / "model.json").read_text()
    (saved / "model.json").write_text(text[: len(text) // 2])
    with pytest.raises(ValueError, match="not valid JSON"):
        export.load(saved)
    (saved / "model.json").write_text(text)
    _edit_json(saved, lambda m: m.update(version=2))
    with pytest.raises(ValueError, match="unsupported format version 2"):
        export.load(saved)
    _edit_json(saved, lambda m: m.update(version=1, format="onnx"))
    with pytest.raises(ValueError, match="format: is 'onnx'"):
        export.load(saved)
    (saved / "model.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="JSON object"):
        export.load(saved)


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda m: m.pop("windows"), "windows: field is missing"),
        (lambda m: m["layers"][2].pop("theta"), "layers[2].theta: field is missing"),
        (lambda m: m["layers"][1].update(kind="avgpool"), "layers[1].kind: expected one of dense, conv2d, pool, flatten"),
        (lambda m: m["layers"][0].update(out_shape=[4, 7, 7]), "layers[0].out_shape: is [4, 7, 7]"),
        (lambda m: m["layers"][1].update(sign=[1, 1]), "layers[1].sign: expected 4 signs"),
        (lambda m: m["layers"][5].update(role="readout"), "layers[5].role"),
        (lambda m: m["windows"]["deltas"].pop(), "windows.deltas: expected 5 window widths"),
        (lambda m: m["layers"][3].update(t_min=123.0), "layers[3].t_min: is 123.0"),
        (lambda m: m.update(dtype="float16"), "dtype: expected one of float32, float64, got 'float16'"),
    ],
)
def test_bad_metadata(saved, edit, message) -> None:
    _edit_json(saved, edit)
    with pytest.raises(ValueError, match=re.escape(message)):
        export.load(saved)


def test_bad_arrays(saved) -> None:
    _edit_arrays(saved, lambda a: a.pop("layers.5.weight"))
    with pytest.raises(ValueError, match=re.escape("layers[5].weight: array 'layers.5.weight' is missing")):
        export.load(saved)
    _edit_arrays(saved, lambda a: a.update({"layers.5.weight": np.zeros((7, 11))}))
    with pytest.raises(ValueError, match=re.escape("has shape (7, 11), expected (7, 12)")):
        export.load(saved)
    _edit_arrays(saved, lambda a: a.update({"layers.5.weight": np.zeros((7, 12)),
                                            "layers.6.theta": a["layers.6.theta"] + 1.0}))
    with pytest.raises(ValueError, match="disagree with its raw bias"):
        export.load(saved)
    (saved / "arrays.npz").write_bytes(b"not a zip archive")
    with pytest.raises(ValueError, match="not a readable .npz"):
        export.load(saved)


def test_unsupported_layer_is_refused() -> None:
    snn, _ = alpha1_snn()
    snn.layers.insert(1, nn.Identity())
    with pytest.raises(ValueError, match="Identity"):
        export.to_dict(snn)
