"""Export/import of a converted SNN (ttfs.export): exact round trip, documented fields, clear errors."""

from __future__ import annotations

import copy
import io
import json
import math
import re
import struct
import time
import tracemalloc
import zipfile
import zlib
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
    assert meta["format"] == "ttfs-snn" and meta["version"] == 2 and meta["dtype"] == "float64"
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
            assert set(spec) == common | {"kernel", "stride", "padding", "sign"}
            assert set(spec["sign"]) <= {1, -1} and len(spec["sign"]) == spec["in_shape"][0]
            continue
        if spec["kind"] == "flatten":
            assert set(spec) == common
            assert spec["out_shape"] == [int(np.prod(spec["in_shape"]))]
            continue
        n += 1
        neuron = common | {"neuron_layer", "role", "parameterisation", "alpha", "A", "regions", "weight", "bias",
                           "theta", "B", "region_index", "t_min_in", "t_min", "t_max", "delta", "t_read", "inputs"}
        conv = {"kernel", "stride", "padding", "groups"} if spec["kind"] == "conv2d" else set()
        assert set(spec) == neuron | conv
        assert spec["inputs"] == []  # a chain: no delayed input groups
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
    _edit_json(saved, lambda m: m.update(version=3))
    with pytest.raises(ValueError, match="unsupported format version 3"):
        export.load(saved)
    _edit_json(saved, lambda m: m.update(version=2, format="onnx"))
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
        (lambda m: m["layers"][1].update(kind="maxpool"), "layers[1].kind: expected one of dense, conv2d, pool"),
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


# ------------------------------------------------------------------------------------------------
# untrusted files: paths, sizes, zip bombs, non-finite values, malformed fields
# ------------------------------------------------------------------------------------------------
@pytest.fixture
def no_zip(monkeypatch):
    """Fail the test if anything opens a zip archive (np.load of an .npz does too)."""

    def refuse(*args, **kwargs):
        raise AssertionError("the archive was opened")

    monkeypatch.setattr(zipfile, "ZipFile", refuse)


@pytest.mark.parametrize("where", ["../../etc/passwd", "../outside.npz", "absolute"])
def test_arrays_file_outside_the_directory_is_refused_unopened(saved, where, no_zip) -> None:
    outside = saved.parent / "outside.npz"
    (saved / "arrays.npz").rename(outside)  # a valid archive, just not inside the export
    name = str(outside) if where == "absolute" else where
    _edit_json(saved, lambda m: m.update(arrays_file=name))
    with pytest.raises(ValueError, match=r"^arrays_file: expected a file name inside the export directory"):
        export.load(saved)


@pytest.mark.parametrize("which", ["arrays.npz", "model.json"])
def test_symlink_leaving_the_directory_is_refused(saved, which) -> None:
    outside = saved.parent / f"outside-{which}"
    (saved / which).rename(outside)
    (saved / which).symlink_to(outside)
    field = "arrays_file" if which == "arrays.npz" else "model.json"
    with pytest.raises(ValueError, match=rf"^{field}: '?{which}'? is not a file inside the export directory"):
        export.load(saved)


def test_symlink_inside_the_directory_is_followed(saved) -> None:
    (saved / "arrays.npz").rename(saved / "data.npz")
    (saved / "arrays.npz").symlink_to("data.npz")
    export.load(saved)


def _zip(path: Path, members: list[tuple[str, bytes, int, int, int]]) -> None:
    """A zip archive written by hand: (name, stored bytes, crc, declared uncompressed size, method)."""
    local, central = b"", b""
    for name, data, crc, size, method in members:
        head = struct.pack("<HHHHHIII", 20, 0, method, 0, 0, crc, len(data), size)
        central += struct.pack("<IH", 0x02014B50, 20) + head + struct.pack(
            "<HHHHHII", len(name), 0, 0, 0, 0, 0, len(local)) + name.encode()
        local += struct.pack("<I", 0x04034B50) + head + struct.pack("<HH", len(name), 0) + name.encode() + data
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(members), len(members), len(central), len(local), 0)
    path.write_bytes(local + central + end)


def _stored(name: str, array: np.ndarray) -> tuple[str, bytes, int, int, int]:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, array)
    data = buf.getvalue()
    return f"{name}.npy", data, zlib.crc32(data), len(data), zipfile.ZIP_STORED


def _bomb(name: str, n_bytes: int) -> tuple[str, bytes, int, int, int]:
    """A deflated .npy of ``n_bytes`` zeros (float64) that compresses about 1000:1, with a valid CRC."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": (n_bytes // 8,)})
    chunk = bytes(1 << 24)
    z = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = z.compress(header.getvalue()) + z.flush(zlib.Z_FULL_FLUSH)
    block = z.compress(chunk) + z.flush(zlib.Z_FULL_FLUSH)  # after a full flush every block is identical
    crc = zlib.crc32(header.getvalue())
    for _ in range(n_bytes // len(chunk)):
        crc = zlib.crc32(chunk, crc)
    data = head + block * (n_bytes // len(chunk)) + z.flush()
    return f"{name}.npy", data, crc, len(header.getvalue()) + n_bytes, zipfile.ZIP_DEFLATED


def _rezip(path: Path, replace: str, member) -> None:
    with np.load(path / "arrays.npz") as npz:
        arrays = {k: npz[k] for k in npz.files}
    _zip(path / "arrays.npz", [member if k == replace else _stored(k, a) for k, a in arrays.items()])


def _peak_bytes(fn) -> int:
    tracemalloc.start()
    try:
        fn()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


def _header_claims(name: str, shape: tuple[int, ...]) -> tuple[str, bytes, int, int, int]:
    """A stored entry whose .npy header declares ``shape`` (float64) but which holds 24 bytes of data."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f8", "fortran_order": False, "shape": shape})
    data = buf.getvalue() + bytes(24)
    return f"{name}.npy", data, zlib.crc32(data), len(data), zipfile.ZIP_STORED


def _directory_claims(name: str, array: np.ndarray, size: int) -> tuple[str, bytes, int, int, int]:
    """A stored entry of ``array`` whose zip directory declares ``size`` bytes uncompressed."""
    name, data, crc, _, method = _stored(name, array)
    return name, data, crc, size, method


THETA = "layers[6].theta: array 'layers.6.theta'"


@pytest.mark.parametrize(
    "make,message",
    [
        # 1.0 MB on disk, 1 GiB inflated: far more than the archive of this network can hold
        (lambda: _bomb("layers.6.theta", 1 << 30), "arrays_file: arrays.npz has "),  # ... more than its arrays need
        # 64 kB on disk, 64 MiB inflated: the zip directory says so, and the JSON expects 24 bytes
        (lambda: _bomb("layers.6.theta", 1 << 26), f"{THETA}: its zip entry unpacks to 67108992 bytes"),
        # the .npy header claims 1 GiB (a reader trusting it allocates that), the zip directory 152 bytes
        (lambda: _header_claims("layers.6.theta", (1 << 27,)), f"{THETA} has shape (134217728,), expected (3, 1)"),
        # the zip directory claims 3 GiB for a stored entry of 152 bytes
        (lambda: _directory_claims("layers.6.theta", np.zeros((3, 1)), 3 << 30),
         f"{THETA}: its zip entry unpacks to 3221225472 bytes"),
    ],
)
def test_zip_bombs_are_refused_before_inflating(saved, make, message) -> None:
    _rezip(saved, "layers.6.theta", make())
    assert (saved / "arrays.npz").stat().st_size < 1_100_000
    start = time.perf_counter()

    def load():
        with pytest.raises(ValueError, match="^" + re.escape(message)):
            export.load(saved)

    assert _peak_bytes(load) < 16 << 20  # a reader that inflates first peaks at 1 GiB (64 MiB)
    assert time.perf_counter() - start < 2.0


def test_huge_shapes_in_the_json_are_refused_before_reading(saved, no_zip) -> None:
    _edit_json(saved, lambda m: m["input"].update(in_shape=[2, 10**6, 10**6]))
    with pytest.raises(ValueError, match=r"^input\.in_shape: \[2, 1000000, 1000000\] has 2000000000000 elements"):
        export.load(saved)


def test_max_bytes_bounds_the_arrays(saved) -> None:
    with pytest.raises(ValueError, match=r"^layers\[\d\]\.\w+: the arrays up to .* more than max_bytes=4096"):
        export.load(saved, max_bytes=4096)
    export.load(saved, max_bytes=1 << 20)


@pytest.mark.parametrize(
    "archive,message",
    [
        ("duplicate", "holds the array 'layers.0.weight' twice"),
        ("bzip2", "uses zip compression method 12"),
        ("junk", "more than the arrays of model.json need"),
        ("pickle", "has dtype object, expected float64"),
        ("float32", "has dtype float32, expected float64"),
        ("truncated", "not a readable .npz archive"),
    ],
)
def test_bad_archives(saved, archive, message) -> None:
    path = saved / "arrays.npz"
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    if archive == "duplicate":
        with zipfile.ZipFile(path, "a") as z, pytest.warns(UserWarning, match="Duplicate name"):
            z.writestr("layers.0.weight.npy", path.read_bytes()[:10])
    elif archive == "bzip2":
        with zipfile.ZipFile(path, "w", zipfile.ZIP_BZIP2) as z:
            for k, a in arrays.items():
                z.writestr(f"{k}.npy", _stored(k, a)[1])
    elif archive == "junk":
        np.savez(path, **arrays, junk=np.zeros(1 << 17))
    elif archive in ("pickle", "float32"):
        bad = np.empty(arrays["layers.0.weight"].shape, object if archive == "pickle" else np.float32)
        bad[...] = arrays["layers.0.weight"]
        np.savez(path, **{**arrays, "layers.0.weight": bad})
    else:
        path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ValueError, match=re.escape(message)):
        export.load(saved)


def test_byte_order_and_fortran_order_of_other_writers_are_read_exactly(saved) -> None:
    snn = export.load(saved)
    with np.load(saved / "arrays.npz") as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays = {k: np.asfortranarray(a.astype(a.dtype.newbyteorder(">"))) for k, a in arrays.items()}
    np.savez(saved / "arrays.npz", **arrays)
    assert_identical(snn, export.load(saved), b1_conv_snn()[1])


@pytest.mark.parametrize(
    "array,value,field",
    [
        ("layers.0.weight", np.nan, "layers[0].weight"),
        ("layers.5.weight", np.inf, "layers[5].weight"),
        ("layers.0.B", np.nan, "layers[0].B"),
        ("layers.6.B", -np.inf, "layers[6].B"),
        ("layers.2.bias", np.nan, "layers[2].bias"),
        ("layers.6.theta", np.inf, "layers[6].theta"),
    ],
)
def test_non_finite_arrays_are_refused(saved, array, value, field) -> None:
    def poison(arrays):
        arrays[array] = arrays[array].copy()
        arrays[array].flat[1] = value

    _edit_arrays(saved, poison)
    with pytest.raises(ValueError, match=rf"^{re.escape(field)}: array '{re.escape(array)}' has 1 NaN or infinite"):
        export.load(saved)


@pytest.mark.parametrize(
    "edit,field",
    [
        (lambda m: m["windows"]["deltas"].__setitem__(1, math.nan), "windows.deltas[1]"),
        (lambda m: m["windows"].update(t_start=math.inf), "windows.t_start"),
        (lambda m: m["windows"]["boundaries"].__setitem__(2, -math.inf), "windows.boundaries[2]"),
        (lambda m: m["windows"].update(latency=math.nan), "windows.latency"),
        (lambda m: m["input"].update(p=math.nan), "input.p"),
        (lambda m: m["input"].update(q=[1.0, math.inf]), "input.q[1]"),
        (lambda m: m["layers"][0].update(alpha=math.nan), "layers[0].alpha"),
        (lambda m: m["layers"][3].update(t_max=math.inf), "layers[3].t_max"),
    ],
)
def test_non_finite_json_numbers_are_refused(saved, edit, field) -> None:
    _edit_json(saved, edit)  # json.dumps writes NaN / Infinity, which Python's json reads back
    with pytest.raises(ValueError, match=rf"^{re.escape(field)}: expected a finite number"):
        export.load(saved)


def _set(path: str, value):
    """An edit of model.json setting the field at ``path`` (``layers[2].kernel``) to ``value``."""
    *parents, last = re.findall(r"\w+", path)

    def edit(meta):
        obj = meta
        for key in parents:
            obj = obj[int(key)] if key.isdigit() else obj[key]
        obj[int(last) if last.isdigit() else last] = value

    return edit


def _flatten_to_pool(meta) -> None:
    """Replace the flatten before the dense layers by an identity pool: the dense layer gets a 3-d input."""
    meta["layers"][4].update(kind="pool", out_shape=[3, 2, 2], kernel=[1, 1], stride=[1, 1], padding=[0, 0],
                            sign=[1, 1, 1])
    meta["layers"][5].update(in_shape=[3, 2, 2])


@pytest.mark.parametrize(
    "edit,message",
    [
        (_set("version", "1"), "version: unsupported format version '1'"),
        (_set("version", True), "version: unsupported format version True"),
        (_set("dtype", ["float64"]), "dtype: expected one of float32, float64, got ['float64']"),
        (_set("parameterisation", 5), "parameterisation: expected one of b1, alpha1, got 5"),
        (_set("n_neuron_layers", 4), "n_neuron_layers: is 4, the layers hold 5 neuron layers"),
        (_set("n_neuron_layers", "5"), "n_neuron_layers: expected an integer"),
        (_set("arrays_file", 7), "arrays_file: expected a file name inside the export directory, got 7"),
        (_set("arrays_file", ""), "arrays_file: expected a file name"),
        (_set("input", []), "input: expected a JSON object, got []"),
        (_set("input.in_shape", "2x8x8"), "input.in_shape: expected a list, got '2x8x8'"),
        (_set("input.in_shape", [2, 8, 8.0]), "input.in_shape[2]: expected an integer in [1, 2147483647], got 8.0"),
        (_set("input.in_shape", []), "input.in_shape: expected 1 to 32 dimensions, got 0"),
        (_set("input.p", "0"), "input.p: expected a finite number of magnitude at most 1.79769e+308, got '0'"),
        (_set("input.p", [0.0, 0.0, 0.0]), "input.p: expected 2 values (one per input channel), got 3"),
        (_set("input.q", [1.0, 1.0]), "input.q: p and q must both be numbers or both be per-channel lists"),
        (_set("input.q", -1.0), "input.q: must exceed p in float64"),
        (_set("input.t_max", 2.0), "input.t_max: is 2.0, windows.boundaries[1] gives 1.0"),
        (_set("windows.deltas", 5), "windows.deltas: expected a list, got 5"),
        (_set("windows.deltas[2]", -1.0), "windows.deltas[2]: window widths must be positive in float64, got -1.0"),
        (_set("windows.boundaries[2]", 1e300), "windows.boundaries[2]: is 1e+300, t_start + the window widths give"),
        (_set("windows.t_read", None), "windows.t_read: expected a finite number"),
        (_set("layers", {}), "layers: expected a list, got {}"),
        (_set("layers", []), "layers: expected 1 to 4096 layers, got 0"),
        (_set("layers[0]", "conv2d"), "layers[0]: expected a JSON object, got 'conv2d'"),
        (_set("layers[0].kind", None),
         "layers[0].kind: expected one of dense, conv2d, pool, avgpool, flatten, got None"),
        (_set("layers[6].kind", "pool"), "layers: the last layer must be the readout (dense or conv2d)"),
        (_set("layers[0].index", 3), "layers[0].index: is 3, the layer is at position 0"),
        (_set("layers[0].in_shape", [2, 8]), "layers[0].in_shape: is [2, 8], the previous layer gives [2, 8, 8]"),
        (_set("layers[0].kernel", -3), "layers[0].kernel: expected a pair [h, w] of integers >= 1, got -3"),
        (_set("layers[0].kernel", [3, 0]), "layers[0].kernel[1]: expected an integer in [1, 2147483647], got 0"),
        (_set("layers[0].stride", [0, 0]), "layers[0].stride[0]: expected an integer in [1, 2147483647], got 0"),
        (_set("layers[0].stride", [2**40, 1]), "layers[0].stride[0]: expected an integer in [1, 2147483647]"),
        (_set("layers[0].padding", [-1, 1]), "layers[0].padding[0]: expected an integer in [0, 2147483647], got -1"),
        (_set("layers[0].padding", [1, 1, 1]), "layers[0].padding: expected a pair [h, w] of integers >= 0"),
        (_set("layers[0].neuron_layer", 2), "layers[0].neuron_layer: is 2, the layer is neuron layer 1"),
        (_set("layers[0].role", ["hidden"]), "layers[0].role: expected one of hidden, readout, got ['hidden']"),
        (_set("layers[0].parameterisation", "alpha1"), "layers[0].parameterisation: differs from the network's 'b1'"),
        (_set("layers[0].alpha", "1"), "layers[0].alpha: expected a finite number"),
        (_set("layers[0].A", 1.0), "layers[0].A: is 1.0, the b1 drive is 0.0"),
        (_set("layers[0].regions", 0), "layers[0].regions: expected an integer in [1, 2147483647], got 0"),
        (_set("layers[0].region_index", 5), "layers[0].region_index: expected the name of an array, got 5"),
        (_set("layers[0].weight", None), "layers[0].weight: expected the name of an array, got None"),
        (_set("layers[0].B", "layers.0.weight"),
         "layers[0].B: array 'layers.0.weight' is already layers[0].weight; each array has one field"),
        (_set("layers[0].t_min", "1.0"), "layers[0].t_min: expected a finite number"),
        (_set("layers[0].t_read", 1.0), "layers[0].t_read: expected null, got 1.0"),
        (_set("layers[1].kernel", [9, 9]), "layers[1].out_shape: is [4, 4, 4], the layer's geometry gives [4, 0, 0]"),
        (_set("layers[1].sign", [1, 2, 1, 1]), "layers[1].sign[1]: expected an integer in [-1, 1], got 2"),
        (_set("layers[1].sign", [1, 0, 1, 1]), "layers[1].sign[1]: expected +1 or -1, got 0"),
        (_set("layers[1].sign", [True, 1, 1, 1]), "layers[1].sign[0]: expected an integer in [-1, 1], got True"),
        (_set("layers[2].regions", 15), "layers[2].bias: array 'layers.2.bias' has shape (5, 16), expected (5, 15)"),
        (_set("layers[2].region_index", None), "layers[2].regions: is 16 but region_index is null"),
        (_set("layers[4].out_shape", [60]), "layers[4].out_shape: is [60], the layer's geometry gives [12]"),
        (_flatten_to_pool, "layers[5].in_shape: is [3, 2, 2]; a dense layer takes a flat input (flatten first)"),
        (_set("layers[5].region_index", "layers.2.region_index"),
         "layers[5].region_index: must be null for a dense layer"),
        (_set("layers[6].delta", 1.0), "layers[6].delta: expected null, got 1.0"),
    ],
)
def test_malformed_fields_name_the_field(saved, edit, message) -> None:
    _edit_json(saved, edit)
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        export.load(saved)


def test_region_index_values_are_checked(saved) -> None:
    def edit(arrays):
        arrays["layers.2.region_index"] = arrays["layers.2.region_index"].copy()
        arrays["layers.2.region_index"][0, 0] = -1

    _edit_arrays(saved, edit)
    with pytest.raises(ValueError, match=re.escape(
            "layers[2].region_index: array 'layers.2.region_index' holds regions -1..15, expected 0..15")):
        export.load(saved)


def test_dense_layer_has_one_region(saved) -> None:
    """A dense layer with a region map and two thresholds per neuron used to pass validation (and then
    fail with a RuntimeError when the (7, 2) bias was copied into the (7, 1) parameter)."""
    _edit_json(saved, lambda m: m["layers"][5].update(regions=2, region_index="layers.5.region_index"))

    def edit(arrays):
        arrays.update({k: np.repeat(arrays[k], 2, axis=1) for k in ("layers.5.bias", "layers.5.theta")})
        arrays["layers.5.region_index"] = np.array(1)

    _edit_arrays(saved, edit)
    with pytest.raises(ValueError, match=re.escape("layers[5].regions: is 2; a dense layer has exactly one region")):
        export.load(saved)


def test_deeply_nested_json_is_a_value_error(saved) -> None:
    depth = 100_000
    (saved / "model.json").write_text('{"format": "ttfs-snn", "layers": ' + "[" * depth + "]" * depth + "}")
    with pytest.raises(ValueError, match="not valid JSON"):
        export.load(saved)


def test_deep_self_referential_and_huge_values_in_memory() -> None:
    snn, _ = b1_conv_snn()
    meta, arrays = export.to_dict(snn)
    deep: list = []
    for _ in range(100_000):
        deep = [deep]
    meta["layers"][0]["kernel"] = deep
    message = "layers[0].kernel: expected a pair [h, w] of integers >= 1, got [[[[...]]]]"
    with pytest.raises(ValueError, match=re.escape(message)):
        export.from_dict(meta, arrays)
    meta["layers"][0]["kernel"] = [3, 3]
    meta["windows"]["t_start"] = 10**5000
    with pytest.raises(ValueError, match=re.escape("windows.t_start: expected a finite number of magnitude at most")):
        export.from_dict(meta, arrays)
    meta["windows"]["t_start"] = 0.0
    meta["input"] = meta
    with pytest.raises(ValueError, match=re.escape("input.in_shape: field is missing")):
        export.from_dict(meta, arrays)


def test_float32_export_needs_values_that_fit_float32(tmp_path) -> None:
    snn, _ = b1_conv_snn(torch.float32)
    path = export.save(snn, tmp_path / "f32")
    original = json.loads((path / "model.json").read_text())
    for edit, message in [
        (_set("layers[0].alpha", 1e300), "layers[0].alpha: expected a finite number of magnitude at most 3.40282e+38"),
        (lambda m: m["input"].update(p=1.0, q=1.0 + 1e-10), "input.q: must exceed p in float32"),
        (_set("windows.deltas[2]", 1e-50), "windows.deltas[2]: window widths must be positive in float32, got 1e-50"),
    ]:
        _edit_json(path, lambda m: m.update(copy.deepcopy(original)))
        _edit_json(path, edit)
        with pytest.raises(ValueError, match="^" + re.escape(message)):
            export.load(path)
