"""Framework-free export and import of a converted SNN (format ``ttfs-snn``, version 1).

An exported network is a directory holding two files:

* ``model.json`` -- metadata: format name and version, dtype, input encoding, the chained coding
  windows, and the layers in execution order (``dense``, ``conv2d``, ``pool``, ``flatten``);
* ``arrays.npz`` -- the NumPy arrays the JSON refers to by name (weights, raw trainable biases,
  physical thresholds, slopes, region maps).

Every field is documented in ``docs/export_format.md``. The format is meant to be read by a simulator in
another language (:mod:`ttfs.simulate` is a NumPy reference one): it stores the physical quantities of
SPEC 2.3 (drive A, slope B, threshold theta, window boundaries) besides the raw parameters from which
:func:`load` rebuilds an identical :class:`ttfs.SNN`.
"""

from __future__ import annotations

import json
import math
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .layers import InputEncoder, MinTimePool2d, SpikingConv2d, SpikingLinear, SpikingNeurons
from .network import SNN

FORMAT_NAME = "ttfs-snn"
FORMAT_VERSION = 1
META_FILE = "model.json"
ARRAYS_FILE = "arrays.npz"
DTYPES = {"float32": torch.float32, "float64": torch.float64}

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "from_dict", "load", "read", "save", "to_dict", "validate"]


# ---------------------------------------------------------------------------------------------------
# export
# ---------------------------------------------------------------------------------------------------
def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy().copy()


def _float(t: torch.Tensor | float) -> float:
    return float(t.detach().cpu()) if isinstance(t, torch.Tensor) else float(t)


def to_dict(snn: SNN) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Describe ``snn`` as (metadata, arrays): a JSON-serialisable dict and named NumPy arrays.

    Arrays keep the SNN's dtype (region maps are int64). The metadata refers to arrays by name
    (``"layers.<i>.<what>"``, ``i`` the position in ``snn.layers``).
    """
    dtype_name = str(snn.deltas.dtype).removeprefix("torch.")
    if dtype_name not in DTYPES:
        raise ValueError(f"cannot export an SNN of dtype {snn.deltas.dtype}; supported: {sorted(DTYPES)}")
    boundaries = snn.boundaries().detach().cpu()
    deltas = snn.deltas.detach().cpu()
    encoder = snn.encoder
    in_shape = tuple(int(s) for s in encoder.in_shape)
    arrays: dict[str, np.ndarray] = {}
    layers: list[dict[str, Any]] = []
    shape = in_shape
    n = 0  # neuron layer number, 1-based
    last = len(snn.layers) - 1
    with torch.no_grad():
        for i, layer in enumerate(snn.layers):
            prefix = f"layers.{i}"
            if isinstance(layer, SpikingNeurons):
                n += 1
                spec, shape = _neuron_layer(layer, i, n, i == last, shape, boundaries, deltas, arrays, prefix)
            elif isinstance(layer, MinTimePool2d):
                spec, shape = _pool_layer(layer, i, shape)
            elif isinstance(layer, nn.Flatten):
                if layer.start_dim != 1 or layer.end_dim != -1:
                    raise ValueError(f"layer {i}: only Flatten(start_dim=1, end_dim=-1) can be exported")
                out = (math.prod(shape),)
                spec = {"kind": "flatten", "index": i, "in_shape": list(shape), "out_shape": list(out)}
                shape = out
            else:
                raise ValueError(
                    f"layer {i} ({type(layer).__name__}) has no representation in the {FORMAT_NAME} format"
                )
            layers.append(spec)
    meta: dict[str, Any] = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "dtype": dtype_name,
        "parameterisation": snn.parameterisation,
        "arrays_file": ARRAYS_FILE,
        "input": {
            "in_shape": list(in_shape),
            "p": _range_value(encoder.p),
            "q": _range_value(encoder.q),
            "t_min": _float(boundaries[0]),
            "t_max": _float(boundaries[1]),
            "delta": _float(deltas[0]),
        },
        "windows": {
            "t_start": _float(snn.t_start),
            "deltas": [float(d) for d in deltas.tolist()],
            "boundaries": [float(b) for b in boundaries.tolist()],
            "t_read": _float(boundaries[-1]),
            "latency": _float(snn.latency()),
        },
        "n_neuron_layers": n,
        "layers": layers,
    }
    return meta, arrays


def _range_value(v: torch.Tensor) -> float | list[float]:
    v = v.detach().cpu()
    return float(v) if v.ndim == 0 else [float(x) for x in v.reshape(-1).tolist()]


def _neuron_layer(
    layer: SpikingNeurons,
    i: int,
    n: int,
    readout: bool,
    shape: tuple[int, ...],
    boundaries: torch.Tensor,
    deltas: torch.Tensor,
    arrays: dict[str, np.ndarray],
    prefix: str,
) -> tuple[dict[str, Any], tuple[int, ...]]:
    role = "readout" if readout else "hidden"
    if isinstance(layer, SpikingLinear):
        if shape != (layer.in_features,):
            raise ValueError(f"layer {i}: dense layer expects ({layer.in_features},) inputs, got {shape}")
        out: tuple[int, ...] = (layer.out_features,)
        spec: dict[str, Any] = {"kind": "dense", "index": i, "neuron_layer": n, "role": role}
    elif isinstance(layer, SpikingConv2d):
        if len(shape) != 3 or shape[0] != layer.in_channels:
            raise ValueError(
                f"layer {i}: conv2d expects {layer.in_channels} input channels, got shape {shape}"
            )
        out = (layer.out_channels, *layer.output_size(shape[1:]))
        spec = {
            "kind": "conv2d",
            "index": i,
            "neuron_layer": n,
            "role": role,
            "kernel": list(layer.kernel_size),
            "stride": list(layer.stride),
            "padding": list(layer.padding),
        }
    else:
        raise ValueError(
            f"layer {i} ({type(layer).__name__}) has no representation in the {FORMAT_NAME} format"
        )
    bias = layer.bias.detach().cpu()
    if readout:
        delta = None
        theta = -bias if layer.is_b1 else bias.clone()
    else:
        delta = deltas[n]
        theta = delta - bias if layer.is_b1 else bias.clone()
    ones = torch.ones((1, *shape), dtype=layer.bias.dtype, device=layer.bias.device)
    slope = layer.slope(ones).detach().cpu().expand(out)
    arrays[f"{prefix}.weight"] = _np(layer.weight)
    arrays[f"{prefix}.bias"] = _np(bias)
    arrays[f"{prefix}.theta"] = _np(theta)
    arrays[f"{prefix}.B"] = _np(slope)
    region_name = None
    if layer.region_index is not None:
        region_name = f"{prefix}.region_index"
        arrays[region_name] = _np(layer.region_index).astype(np.int64)
    spec.update(
        parameterisation=layer.parameterisation,
        alpha=float(layer.alpha),
        A=float(layer.drive()),
        in_shape=list(shape),
        out_shape=list(out),
        regions=int(bias.shape[1]),
        weight=f"{prefix}.weight",
        bias=f"{prefix}.bias",
        theta=f"{prefix}.theta",
        B=f"{prefix}.B",
        region_index=region_name,
        t_min_in=_float(boundaries[n - 1]),
        t_min=_float(boundaries[n]),
        t_max=None if readout else _float(boundaries[n + 1]),
        delta=None if delta is None else _float(delta),
        t_read=_float(boundaries[n]) if readout else None,
    )
    return spec, out


def _pool_layer(
    layer: MinTimePool2d, i: int, shape: tuple[int, ...]
) -> tuple[dict[str, Any], tuple[int, ...]]:
    if len(shape) != 3:
        raise ValueError(f"layer {i}: pooling needs a (channels, h, w) input, got {shape}")
    kernel, stride = layer.kernel_size, layer.stride
    out = (shape[0], *((s - k) // st + 1 for s, k, st in zip(shape[1:], kernel, stride, strict=True)))
    if layer.sign is None:
        sign = [1] * shape[0]
    else:
        sign = [1 if s > 0 else -1 for s in layer.sign.detach().cpu().reshape(-1).tolist()]
        if len(sign) != shape[0]:
            raise ValueError(f"layer {i}: pooling sign has {len(sign)} channels, the input has {shape[0]}")
    spec = {
        "kind": "pool",
        "index": i,
        "in_shape": list(shape),
        "out_shape": list(out),
        "kernel": list(kernel),
        "stride": list(stride),
        "sign": sign,
    }
    return spec, out


def save(snn: SNN, path: str | Path) -> Path:
    """Write ``snn`` to the directory ``path`` (created if needed) as model.json + arrays.npz."""
    path = Path(path)
    meta, arrays = to_dict(snn)
    path.mkdir(parents=True, exist_ok=True)
    with open(path / META_FILE, "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=1, allow_nan=False)
        f.write("\n")
    np.savez(path / ARRAYS_FILE, **arrays)
    return path


# ---------------------------------------------------------------------------------------------------
# import
# ---------------------------------------------------------------------------------------------------
def load(path: str | Path) -> SNN:
    """Rebuild the :class:`ttfs.SNN` written by :func:`save` (same layers, parameters, windows, dtype).

    Raises FileNotFoundError if the directory or one of its two files is missing, and ValueError naming
    the problem for a malformed file (bad JSON, other format or version, missing field or array, wrong
    array shape, inconsistent thresholds).
    """
    meta, arrays = read(path)
    return from_dict(meta, arrays)


def read(path: str | Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Read and validate (metadata, arrays) from an export directory without building an SNN."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"no exported SNN at {path}: not a directory")
    meta_file = path / META_FILE
    if not meta_file.is_file():
        raise FileNotFoundError(f"no exported SNN at {path}: {META_FILE} is missing")
    try:
        with open(meta_file, encoding="utf-8") as f:
            meta = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{meta_file} is not valid JSON: {e}") from e
    _check_header(meta, str(meta_file))
    arrays_file = path / _field(meta, "arrays_file", "the top level")
    if not arrays_file.is_file():
        raise FileNotFoundError(f"exported SNN at {path}: array file {arrays_file.name} is missing")
    try:
        with np.load(arrays_file, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        raise ValueError(f"{arrays_file} is not a readable .npz archive: {e}") from e
    validate(meta, arrays)
    return meta, arrays


def _check_header(meta: Any, where: str = "model.json") -> None:
    if not isinstance(meta, dict):
        raise ValueError(f"{where}: expected a JSON object at the top level, got {type(meta).__name__}")
    fmt = meta.get("format")
    if fmt != FORMAT_NAME:
        raise ValueError(f"{where}: format is {fmt!r}, expected {FORMAT_NAME!r}")
    version = meta.get("version")
    if version != FORMAT_VERSION:
        raise ValueError(
            f"{where}: unsupported format version {version!r} (this reader supports version {FORMAT_VERSION})"
        )


def _field(d: Mapping[str, Any], key: str, where: str) -> Any:
    if not isinstance(d, Mapping) or key not in d:
        raise ValueError(f"model.json: field {key!r} is missing in {where}")
    return d[key]


def _array(
    arrays: Mapping[str, np.ndarray],
    name: Any,
    what: str,
    shape: tuple[int, ...] | None = None,
    integer: bool = False,
) -> np.ndarray:
    if not isinstance(name, str) or name not in arrays:
        raise ValueError(f"array {name!r} ({what}) is missing from {ARRAYS_FILE}")
    a = np.asarray(arrays[name])
    if shape is not None and tuple(a.shape) != tuple(shape):
        raise ValueError(f"array {name!r} ({what}) has shape {tuple(a.shape)}, expected {tuple(shape)}")
    kind = "iu" if integer else "f"
    if a.dtype.kind not in kind:
        raise ValueError(
            f"array {name!r} ({what}) has dtype {a.dtype}, expected {'integer' if integer else 'float'}"
        )
    return a


def validate(meta: dict[str, Any], arrays: Mapping[str, np.ndarray]) -> None:
    """Check that metadata and arrays form a consistent version-1 export; raise ValueError otherwise."""
    _check_header(meta)
    dtype = _field(meta, "dtype", "the top level")
    if dtype not in DTYPES:
        raise ValueError(f"model.json: dtype {dtype!r} is not one of {sorted(DTYPES)}")
    inp = _field(meta, "input", "the top level")
    shape = tuple(_field(inp, "in_shape", "input"))
    for key in ("p", "q", "t_min", "t_max", "delta"):
        _field(inp, key, "input")
    windows = _field(meta, "windows", "the top level")
    deltas = _field(windows, "deltas", "windows")
    boundaries = _field(windows, "boundaries", "windows")
    _field(windows, "t_start", "windows")
    layers = _field(meta, "layers", "the top level")
    if not isinstance(layers, list) or not layers:
        raise ValueError("model.json: 'layers' must be a non-empty list")
    n_neuron = sum(1 for s in layers if isinstance(s, dict) and s.get("kind") in ("dense", "conv2d"))
    if len(deltas) != n_neuron or len(boundaries) != n_neuron + 1:
        raise ValueError(
            f"model.json: {n_neuron} neuron layers need {n_neuron} window widths and {n_neuron + 1} "
            f"boundaries, got {len(deltas)} and {len(boundaries)}"
        )
    n = 0
    for i, spec in enumerate(layers):
        where = f"layer {i}"
        kind = _field(spec, "kind", where)
        in_shape = tuple(_field(spec, "in_shape", where))
        if in_shape != shape:
            raise ValueError(
                f"model.json: {where} has in_shape {list(in_shape)}, the previous layer gives {list(shape)}"
            )
        out_shape = tuple(_field(spec, "out_shape", where))
        expected = _output_shape(spec, kind, in_shape, where)
        if expected is not None and out_shape != expected:
            raise ValueError(
                f"model.json: {where} has out_shape {list(out_shape)}, its geometry gives {list(expected)}"
            )
        if kind in ("dense", "conv2d"):
            n += 1
            for key in (
                "role",
                "parameterisation",
                "alpha",
                "A",
                "regions",
                "t_min_in",
                "t_min",
                "t_max",
                "delta",
            ):
                _field(spec, key, where)
            window = [boundaries[n - 1], boundaries[n], boundaries[n + 1] if n < n_neuron else None]
            for key, value in zip(("t_min_in", "t_min", "t_max"), window, strict=True):
                if (value is None) != (spec[key] is None) or (
                    value is not None and not math.isclose(spec[key], value, rel_tol=1e-12, abs_tol=1e-12)
                ):
                    raise ValueError(f"model.json: {where} has {key}={spec[key]}, the windows give {value}")
            readout = i == len(layers) - 1
            if spec["role"] != ("readout" if readout else "hidden"):
                raise ValueError(
                    f"model.json: {where} has role {spec['role']!r}; only the last layer is the readout"
                )
            regions = int(spec["regions"])
            channels = out_shape[0]
            if kind == "dense":
                w_shape: tuple[int, ...] = (out_shape[0], in_shape[0])
            else:
                kernel = tuple(_field(spec, "kernel", where))
                for key in ("stride", "padding"):
                    _field(spec, key, where)
                w_shape = (channels, in_shape[0], *kernel)
            _array(arrays, _field(spec, "weight", where), f"{where} weight", w_shape)
            bias = _array(arrays, _field(spec, "bias", where), f"{where} bias", (channels, regions))
            theta = _array(arrays, _field(spec, "theta", where), f"{where} theta", (channels, regions))
            _array(arrays, _field(spec, "B", where), f"{where} slope B", out_shape)
            region_name = _field(spec, "region_index", where)
            if region_name is not None:
                index = _array(arrays, region_name, f"{where} region_index", out_shape[1:], integer=True)
                if index.min() < 0 or index.max() != regions - 1:
                    raise ValueError(f"array {region_name!r}: region indices must cover 0..{regions - 1}")
            elif regions != 1:
                raise ValueError(f"model.json: {where} has {regions} regions but no region_index array")
            _check_theta(spec, bias, theta, where)
        elif kind == "pool":
            for key in ("kernel", "stride"):
                _field(spec, key, where)
            sign = _field(spec, "sign", where)
            if len(sign) != in_shape[0] or any(s not in (1, -1) for s in sign):
                raise ValueError(f"model.json: {where} needs one sign (+1 or -1) per channel ({in_shape[0]})")
        elif kind != "flatten":
            raise ValueError(f"model.json: {where} has unknown kind {kind!r} (dense, conv2d, pool, flatten)")
        shape = out_shape
    if layers[-1].get("kind") not in ("dense", "conv2d"):
        raise ValueError("model.json: the last layer must be the readout (dense or conv2d)")


def _output_shape(
    spec: dict[str, Any], kind: str, in_shape: tuple[int, ...], where: str
) -> tuple[int, ...] | None:
    """The output shape implied by a layer's geometry (None for dense: any width is consistent)."""
    if kind == "flatten":
        return (math.prod(in_shape),)
    if kind == "dense":
        if len(in_shape) != 1:
            raise ValueError(
                f"model.json: {where} is dense but its input has shape {list(in_shape)} (flatten first)"
            )
        return None
    if kind not in ("conv2d", "pool"):
        return None
    if len(in_shape) != 3:
        raise ValueError(f"model.json: {where} ({kind}) needs a (channels, h, w) input, got {list(in_shape)}")
    kernel = _field(spec, "kernel", where)
    stride = _field(spec, "stride", where)
    padding = _field(spec, "padding", where) if kind == "conv2d" else [0, 0]
    channels = int(_field(spec, "out_shape", where)[0]) if kind == "conv2d" else in_shape[0]
    size = [
        (s + 2 * p - k) // st + 1 for s, k, st, p in zip(in_shape[1:], kernel, stride, padding, strict=True)
    ]
    return (channels, *size)


def _check_theta(spec: dict[str, Any], bias: np.ndarray, theta: np.ndarray, where: str) -> None:
    """theta is derived data; refuse a file whose thresholds and raw biases tell different stories."""
    if spec["parameterisation"] == "b1":
        delta = 0.0 if spec["role"] == "readout" else float(spec["delta"])
        expected = delta - bias.astype(np.float64)
    else:
        expected = bias.astype(np.float64)
    tol = (1e-6 if bias.dtype == np.float32 else 1e-12) * (1.0 + np.abs(expected).max(initial=0.0))
    if not np.allclose(theta, expected, rtol=0.0, atol=tol):
        raise ValueError(f"model.json: {where} thresholds theta disagree with its raw bias (corrupt export?)")


def from_dict(meta: dict[str, Any], arrays: Mapping[str, np.ndarray]) -> SNN:
    """Build the :class:`ttfs.SNN` described by (metadata, arrays), e.g. as returned by :func:`to_dict`."""
    validate(meta, arrays)
    dtype = DTYPES[meta["dtype"]]
    inp, windows = meta["input"], meta["windows"]
    layers: list[nn.Module] = []
    encoder = InputEncoder(tuple(inp["in_shape"]), torch.tensor(inp["p"], dtype=torch.float64),
                           torch.tensor(inp["q"], dtype=torch.float64))
    for spec in meta["layers"]:
        kind = spec["kind"]
        if kind == "dense":
            layers.append(
                SpikingLinear(
                    spec["in_shape"][0], spec["out_shape"][0], spec["parameterisation"], spec["alpha"]
                )
            )
        elif kind == "conv2d":
            index = spec["region_index"]
            region_index = (
                None if index is None else torch.from_numpy(np.asarray(arrays[index], np.int64))
            )
            layers.append(
                SpikingConv2d(
                    spec["in_shape"][0],
                    spec["out_shape"][0],
                    tuple(spec["kernel"]),
                    tuple(spec["stride"]),
                    tuple(spec["padding"]),
                    spec["parameterisation"],
                    spec["alpha"],
                    region_index,
                )
            )
        elif kind == "pool":
            layers.append(
                MinTimePool2d(
                    tuple(spec["kernel"]),
                    tuple(spec["stride"]),
                    torch.tensor(spec["sign"], dtype=torch.float64),
                )
            )
        else:
            layers.append(nn.Flatten())
    snn = SNN(encoder, layers, torch.tensor(windows["deltas"], dtype=torch.float64), windows["t_start"])
    snn = snn.to(dtype)
    with torch.no_grad():
        snn.deltas.copy_(torch.tensor(windows["deltas"], dtype=torch.float64))
        snn.t_start.copy_(torch.tensor(windows["t_start"], dtype=torch.float64))
        for spec, layer in zip(meta["layers"], snn.layers, strict=True):
            if isinstance(layer, SpikingNeurons):
                layer.weight.copy_(torch.from_numpy(np.asarray(arrays[spec["weight"]])))
                layer.bias.copy_(torch.from_numpy(np.asarray(arrays[spec["bias"]])))
    return snn
