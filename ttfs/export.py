"""Framework-free export and import of a converted SNN (format ``ttfs-snn``, version 2; reads version 1).

An exported network is a directory holding two files:

* ``model.json`` -- metadata: format name and version, dtype, input encoding, the chained coding
  windows, and the layers in execution order (``dense``, ``conv2d``, ``pool``, ``avgpool``, ``flatten``),
  each neuron layer with its delayed input groups (skip connections);
* ``arrays.npz`` -- the NumPy arrays the JSON refers to by name (weights, raw trainable biases,
  physical thresholds, slopes, region maps).

Every field is documented in ``docs/export_format.md``. The format is meant to be read by a simulator in
another language (:mod:`ttfs.simulate` is a NumPy reference one): it stores the physical quantities of
SPEC 2.3 (drive A, slope B, threshold theta, window boundaries) besides the raw parameters from which
:func:`load` rebuilds an identical :class:`ttfs.SNN`.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import reprlib
import struct
import zipfile
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, NoReturn

import numpy as np
import torch
from torch import nn

from .layers import (
    PARAMETERISATIONS,
    SYNAPSE_KINDS,
    InputEncoder,
    InputGroup,
    MeanTimePool2d,
    MinTimePool2d,
    SpikingConv2d,
    SpikingLinear,
    SpikingNeurons,
)
from .network import SNN

FORMAT_NAME = "ttfs-snn"
FORMAT_VERSION = 2
READ_VERSIONS = (1, 2)  # version 1: chains only (no input groups, avgpool, conv groups, pool padding)
META_FILE = "model.json"
ARRAYS_FILE = "arrays.npz"
DTYPES = {"float32": torch.float32, "float64": torch.float64}

__all__ = [
    "FORMAT_NAME", "FORMAT_VERSION", "MAX_BYTES", "MAX_JSON_BYTES", "MAX_LAYERS",
    "from_dict", "load", "read", "save", "to_dict", "validate",
]


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
    source_shapes = [in_shape]  # spike-time shape of layer m = 0 (input), 1, ...: what input groups read
    with torch.no_grad():
        for i, layer in enumerate(snn.layers):
            prefix = f"layers.{i}"
            if isinstance(layer, SpikingNeurons):
                n += 1
                spec, shape = _neuron_layer(layer, i, n, i == last, shape, boundaries, deltas, arrays, prefix)
                spec["inputs"] = [
                    _group(group, k, n, i, source_shapes, spec["out_shape"], boundaries, arrays, prefix)
                    for k, group in enumerate(layer.input_groups)
                ]
                source_shapes.append(shape)
            else:
                spec, shape = _route_layer(layer, f"layer {i}", shape)
                spec = {"kind": spec.pop("kind"), "index": i, **spec}
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
            "groups": layer.groups,
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


def _route_layer(layer: nn.Module, where: str, shape: tuple[int, ...]) -> tuple[dict[str, Any], tuple[int, ...]]:
    """A parameter-free module (pool, avgpool, flatten) of the chain or of an input group's route."""
    if isinstance(layer, nn.Flatten):
        if layer.start_dim != 1 or layer.end_dim != -1:
            raise ValueError(f"{where}: only Flatten(start_dim=1, end_dim=-1) can be exported")
        out = (math.prod(shape),)
        return {"kind": "flatten", "in_shape": list(shape), "out_shape": list(out)}, out
    if not isinstance(layer, (MinTimePool2d, MeanTimePool2d)):
        raise ValueError(f"{where} ({type(layer).__name__}) has no representation in the {FORMAT_NAME} format")
    if len(shape) != 3:
        raise ValueError(f"{where}: pooling needs a (channels, h, w) input, got {shape}")
    kernel, stride = layer.kernel_size, layer.stride
    padding = layer.padding if isinstance(layer, MinTimePool2d) else (0, 0)
    out = (shape[0], *((s + 2 * p - k) // st + 1
                       for s, k, st, p in zip(shape[1:], kernel, stride, padding, strict=True)))
    spec: dict[str, Any] = {"kind": "pool" if isinstance(layer, MinTimePool2d) else "avgpool",
                            "in_shape": list(shape), "out_shape": list(out), "kernel": list(kernel),
                            "stride": list(stride)}
    if isinstance(layer, MinTimePool2d):
        if layer.sign is None:
            sign = [1] * shape[0]
        else:
            sign = [1 if s > 0 else -1 for s in layer.sign.detach().cpu().reshape(-1).tolist()]
            if len(sign) != shape[0]:
                raise ValueError(f"{where}: pooling sign has {len(sign)} channels, the input has {shape[0]}")
        spec.update(padding=list(padding), sign=sign)
    return spec, out


def _group(group: InputGroup, k: int, n: int, i: int, source_shapes: list, out_shape: list, boundaries: torch.Tensor,
           arrays: dict[str, np.ndarray], prefix: str) -> dict[str, Any]:
    """An input group of neuron layer n (at position i): source, delay, route, synapses."""
    where = f"layer {i} input group {k}"
    if not 0 <= group.source < n:
        raise ValueError(f"{where}: source {group.source} is not an earlier layer (0..{n - 1})")
    shape = source_shapes[group.source]
    route = []
    for module in group.route:
        spec, shape = _route_layer(module, where, shape)
        route.append(spec)
    name = f"{prefix}.inputs.{k}.weight"
    arrays[name] = _np(group.weight)
    delay = _float(boundaries[n]) - _float(boundaries[group.source + 1])  # in double, as a reader computes it
    spec = {"source": group.source, "delay": delay,
            "source_shape": list(source_shapes[group.source]), "route": route, "kind": group.kind,
            "in_shape": list(shape), "weight": name, "trainable": group.trainable}
    if group.kind == "conv2d":
        spec.update(kernel=list(group.weight.shape[2:]), stride=list(group.stride), padding=list(group.padding),
                    groups=group.groups)
    return spec


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
# import: nothing in the files (or passed to from_dict) is trusted
# ---------------------------------------------------------------------------------------------------
MAX_BYTES = 4 << 30
"""Default bound on the arrays of one export, and on one sample's activations in any layer (4 GiB,
three times vgg16_places365 in float64). Sizes are checked from model.json before anything is read."""
MAX_JSON_BYTES = 1 << 20  # vgg16 needs 22 kB; parsed JSON can take 20 times its size in memory
MAX_LAYERS = 4096
_MAX_INT = 2**31 - 1  # bound on integer fields: torch's kernels overflow on larger strides or paddings
_MAX_DIMS = 32  # NumPy's limit on dimensions (before NumPy 2)
_NPY_HEADER = 10_000  # NumPy's own limit on a .npy header (max_header_size)
_MEMBER_SLACK = _NPY_HEADER + 1024  # per array: its .npy header and zip records, name excluded
_ARCHIVE_SLACK = 1 << 17  # end-of-archive records, comment included
_CHUNK = 1 << 20
_KINDS = ("dense", "conv2d", "pool", "avgpool", "flatten")
_ROUTE_KINDS = ("pool", "avgpool", "flatten")
_NEURON_KINDS = ("dense", "conv2d")
# what zipfile, zlib and NumPy's header parser raise on a corrupt archive
_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, RuntimeError, NotImplementedError,
               ValueError, OverflowError, struct.error)


class _Short(reprlib.Repr):
    """repr() for error messages: short whatever the value (deeply nested, a huge int, a long string)."""

    def __init__(self) -> None:
        super().__init__()
        self.maxlevel, self.maxstring, self.maxother = 3, 60, 60

    def repr_int(self, x: int, level: int) -> str:
        if x.bit_length() > 64:  # repr() of an int beyond 4300 digits raises
            return f"<{x.bit_length()}-bit integer>"
        return super().repr_int(x, level)


_show = _Short().repr


class _Field:
    """A value of model.json and its path (``layers[2].kernel``), so that every error names the field."""

    def __init__(self, value: Any, path: str = "") -> None:
        self.value = value
        self.path = path

    def fail(self, problem: str) -> NoReturn:
        raise ValueError(f"{self.path or 'model.json'}: {problem}")

    def __getitem__(self, key: str) -> _Field:
        path = f"{self.path}.{key}" if self.path else key
        if key not in self.mapping():
            raise ValueError(f"{path}: field is missing")
        return _Field(self.value[key], path)

    def mapping(self) -> Mapping[str, Any]:
        if not isinstance(self.value, Mapping):
            self.fail(f"expected a JSON object, got {_show(self.value)}")
        return self.value

    def entries(self, sizes: int | range, what: str) -> list[_Field]:
        """The list's entries, its length checked first (``sizes``: the allowed lengths, or the one)."""
        if not isinstance(self.value, list):
            self.fail(f"expected a list, got {_show(self.value)}")
        sizes = range(sizes, sizes + 1) if isinstance(sizes, int) else sizes
        if len(self.value) not in sizes:
            expected = sizes.start if len(sizes) == 1 else f"{sizes.start} to {sizes.stop - 1}"
            self.fail(f"expected {expected} {what}, got {len(self.value)}")
        return [_Field(v, f"{self.path}[{i}]") for i, v in enumerate(self.value)]

    def integer(self, low: int = 0, high: int = _MAX_INT) -> int:
        v = self.value
        if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= high:
            self.fail(f"expected an integer in [{low}, {high}], got {_show(v)}")
        return v

    def number(self, limit: float) -> float:
        """A finite number of magnitude at most ``limit``, the largest float of the export's dtype."""
        v = self.value
        # compared, not converted: float() of a huge int overflows, and NaN fails every comparison
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not -limit <= v <= limit:
            self.fail(f"expected a finite number of magnitude at most {limit:.6g}, got {_show(v)}")
        return float(v)

    def choice(self, *options: str) -> str:
        if not isinstance(self.value, str) or self.value not in options:
            self.fail(f"expected one of {', '.join(options)}, got {_show(self.value)}")
        return self.value

    def name(self) -> str:
        if not isinstance(self.value, str) or not self.value:
            self.fail(f"expected the name of an array, got {_show(self.value)}")
        return self.value

    def pair(self, low: int) -> tuple[int, int]:
        if not isinstance(self.value, list) or len(self.value) != 2:
            self.fail(f"expected a pair [h, w] of integers >= {low}, got {_show(self.value)}")
        h, w = self.entries(2, "entries")
        return h.integer(low), w.integer(low)

    def shape(self, max_elements: int) -> tuple[int, ...]:
        shape = tuple(d.integer(1) for d in self.entries(range(1, _MAX_DIMS + 1), "dimensions"))
        if math.prod(shape) > max_elements:
            self.fail(f"{list(shape)} has {math.prod(shape)} elements, more than max_bytes allows ({max_elements})")
        return shape

    def derived(self, expected: float | None, limit: float, source: str) -> None:
        """A copy of a window time: null where ``expected`` is None, else equal to it."""
        if expected is None:
            if self.value is not None:
                self.fail(f"expected null, got {_show(self.value)}")
            return
        value = self.number(limit)
        if not math.isclose(value, expected, rel_tol=1e-12, abs_tol=1e-12):
            self.fail(f"is {value!r}, {source} gives {expected!r}")


@dataclass(frozen=True)
class _Expected:
    """An array model.json refers to: the field naming it, and the shape and dtype it implies."""

    field: str
    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


class _Plan:
    """A checked model.json: every field typed and in range, geometry and windows consistent, and the
    arrays it implies (``arrays``: name -> expected shape and dtype), all before any array is read."""

    def __init__(self, meta: Any, max_bytes: int) -> None:
        root = _Field(meta)
        root.mapping()
        fmt, version = root["format"].value, root["version"].value
        if not isinstance(fmt, str) or fmt != FORMAT_NAME:
            root["format"].fail(f"is {_show(fmt)}, expected {FORMAT_NAME!r}")
        if isinstance(version, bool) or not isinstance(version, int) or version not in READ_VERSIONS:
            root["version"].fail(
                f"unsupported format version {_show(version)} (this reader supports versions "
                f"{', '.join(map(str, READ_VERSIONS))})"
            )
        self.version = version
        self.dtype = np.dtype(root["dtype"].choice(*DTYPES))
        self.limit = float(np.finfo(self.dtype).max)
        self.max_bytes = max_bytes
        self.max_elements = max_bytes // self.dtype.itemsize
        self.arrays: dict[str, _Expected] = {}
        self.total = 0
        self.parameterisation = root["parameterisation"].choice(*PARAMETERISATIONS)
        _relative_name(root["arrays_file"])
        specs = root["layers"].entries(range(1, MAX_LAYERS + 1), "layers")
        kinds = [spec["kind"].choice(*(_KINDS if version >= 2 else tuple(k for k in _KINDS if k != "avgpool")))
                 for spec in specs]
        if kinds[-1] not in _NEURON_KINDS:
            root["layers"].fail("the last layer must be the readout (dense or conv2d)")
        n = sum(kind in _NEURON_KINDS for kind in kinds)
        if root["n_neuron_layers"].integer() != n:
            root["n_neuron_layers"].fail(f"is {root['n_neuron_layers'].value}, the layers hold {n} neuron layers")
        self._windows(root["windows"], n)
        shape = self._input(root["input"])
        self.source_shapes = [shape]  # spike-time shapes of layers 0 (input), 1, ..., read by input groups
        self.averaged = False  # an avgpool since the last neuron layer: no spike-time pooling may follow
        neuron = 0
        for i, (spec, kind) in enumerate(zip(specs, kinds, strict=True)):
            neuron += kind in _NEURON_KINDS
            shape = self._layer(spec, kind, i, shape, neuron, i == len(specs) - 1)

    def _windows(self, windows: _Field, n: int) -> None:
        """Positive widths in the dtype, and boundaries, t_read and latency that follow from them."""
        t_start = windows["t_start"].number(self.limit)
        self.deltas = []
        for delta in windows["deltas"].entries(n, "window widths (one per neuron layer)"):
            value = delta.number(self.limit)
            if not self.dtype.type(value) > 0:
                delta.fail(f"window widths must be positive in {self.dtype}, got {value!r}")
            self.deltas.append(value)
        # the exported boundaries are sums in the network's dtype: allow their rounding, nothing more
        tol = 4 * (n + 1) * float(np.finfo(self.dtype).eps) * (abs(t_start) + sum(self.deltas))
        expected = list(itertools.accumulate(self.deltas, initial=t_start))
        self.boundaries = []
        for field, sum_ in zip(windows["boundaries"].entries(n + 1, "boundaries"), expected, strict=True):
            value = field.number(self.limit)
            if not abs(sum_) <= self.limit:
                field.fail(f"t_start + the window widths overflow {self.dtype}")
            if abs(value - sum_) > tol:
                field.fail(f"is {value!r}, t_start + the window widths give {sum_!r}")
            self.boundaries.append(value)
        windows["t_read"].derived(self.boundaries[-1], self.limit, "the last boundary")
        latency = windows["latency"].number(self.limit)
        if abs(latency - sum(self.deltas)) > tol:
            windows["latency"].fail(f"is {latency!r}, the window widths sum to {sum(self.deltas)!r}")

    def _input(self, inp: _Field) -> tuple[int, ...]:
        """The input shape; a range q > p that stays one in the network's dtype (else x = 0 / 0)."""
        shape = inp["in_shape"].shape(self.max_elements)
        p, q = (self._range(inp[key], shape[0]) for key in ("p", "q"))
        if isinstance(p, list) != isinstance(q, list):
            inp["q"].fail("p and q must both be numbers or both be per-channel lists")
        if not np.all(np.asarray(q, self.dtype) > np.asarray(p, self.dtype)):
            inp["q"].fail(f"must exceed p in {self.dtype}, got p={_show(p)}, q={_show(q)}")
        inp["t_min"].derived(self.boundaries[0], self.limit, "windows.t_start")
        inp["t_max"].derived(self.boundaries[1], self.limit, "windows.boundaries[1]")
        inp["delta"].derived(self.deltas[0], self.limit, "windows.deltas[0]")
        return shape

    def _range(self, field: _Field, channels: int) -> float | list[float]:
        if isinstance(field.value, list):
            return [v.number(self.limit) for v in field.entries(channels, "values (one per input channel)")]
        return field.number(self.limit)

    def _layer(
        self, spec: _Field, kind: str, i: int, shape: tuple[int, ...], n: int, readout: bool
    ) -> tuple[int, ...]:
        """Check layer ``i`` (neuron layer ``n`` if it has neurons) fed by ``shape``; its output shape."""
        if spec["index"].integer() != i:
            spec["index"].fail(f"is {spec['index'].value}, the layer is at position {i}")
        in_shape = spec["in_shape"].shape(self.max_elements)
        if in_shape != shape:
            spec["in_shape"].fail(f"is {list(in_shape)}, the previous layer gives {list(shape)}")
        out_shape = self._route_or_neuron(spec, kind, in_shape)
        if kind in _NEURON_KINDS:
            self._neuron(spec, kind, n, readout, in_shape, out_shape)
            self.averaged = False
            self.source_shapes.append(out_shape)
        return out_shape

    def _route_or_neuron(self, spec: _Field, kind: str, in_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The output shape of a layer or route entry, checked against its geometry (and a pool's signs)."""
        out_shape = spec["out_shape"].shape(self.max_elements)
        expected = _geometry(spec, kind, in_shape, out_shape, self.version)
        if out_shape != expected:
            spec["out_shape"].fail(f"is {list(out_shape)}, the layer's geometry gives {list(expected)}")
        if kind == "pool":
            if self.averaged:
                spec["kind"].fail("max-pooling after average pooling is no spike-time operation")
            for sign in spec["sign"].entries(in_shape[0], "signs (one per channel, +1 or -1)"):
                if sign.integer(-1, 1) == 0:
                    sign.fail("expected +1 or -1, got 0")
        elif kind == "avgpool":
            self.averaged = True
        return out_shape

    def _inputs(self, spec: _Field, n: int, out_shape: tuple[int, ...]) -> None:
        """Version 2: the delayed input groups of neuron layer n (each from an earlier layer)."""
        for group in spec["inputs"].entries(range(MAX_LAYERS + 1), "input groups"):
            source = group["source"].integer(0, n - 1)
            group["delay"].derived(self.boundaries[n] - self.boundaries[source + 1], self.limit,
                                   f"windows.boundaries[{n}] - windows.boundaries[{source + 1}]")
            shape = group["source_shape"].shape(self.max_elements)
            if shape != self.source_shapes[source]:
                group["source_shape"].fail(f"is {list(shape)}, layer {source} gives {list(self.source_shapes[source])}")
            saved, self.averaged = self.averaged, False
            for step in group["route"].entries(range(MAX_LAYERS + 1), "route entries"):
                kind = step["kind"].choice(*_ROUTE_KINDS)
                if step["in_shape"].shape(self.max_elements) != shape:
                    step["in_shape"].fail(f"is {step['in_shape'].value}, the route gives {list(shape)}")
                shape = self._route_or_neuron(step, kind, shape)
            self.averaged = saved
            if group["in_shape"].shape(self.max_elements) != shape:
                group["in_shape"].fail(f"is {group['in_shape'].value}, the route gives {list(shape)}")
            kind = group["kind"].choice(*SYNAPSE_KINDS)
            if not isinstance(group["trainable"].value, bool):
                group["trainable"].fail(f"expected true or false, got {_show(group['trainable'].value)}")
            if kind == "scale":
                if shape != out_shape:
                    group["in_shape"].fail(f"is {list(shape)}; a scale group maps it onto the layer's "
                                           f"{list(out_shape)}")
                weight_shape: tuple[int, ...] = (shape[0],)
            elif kind == "dense":
                if len(shape) != 1 or len(out_shape) != 1:
                    group["in_shape"].fail(f"is {list(shape)}; a dense group maps a flat input onto a flat layer")
                weight_shape = (out_shape[0], shape[0])
            else:
                if _geometry(group, "conv2d", shape, out_shape, 2) != out_shape:
                    group["kernel"].fail(f"the group's geometry does not map {list(shape)} onto the layer's "
                                         f"{list(out_shape)}")
                weight_shape = (out_shape[0], shape[0] // self._groups(group, shape[0], out_shape[0]),
                                *group["kernel"].pair(1))
            self._add(group["weight"], weight_shape)

    def _groups(self, spec: _Field, c_in: int, c_out: int) -> int:
        """A convolution's groups (version 2; always 1 in version 1), dividing both channel counts."""
        if self.version < 2:
            return 1
        groups = spec["groups"].integer(1)
        if c_in % groups or c_out % groups:
            spec["groups"].fail(f"is {groups}; it must divide the {c_in} input and {c_out} output channels")
        return groups

    def _neuron(
        self, spec: _Field, kind: str, n: int, readout: bool, in_shape: tuple[int, ...], out_shape: tuple[int, ...]
    ) -> None:
        """Fields the network is built from or that a simulator reads (drive, windows, regions), and the
        arrays of the layer with the shapes its geometry implies."""
        if spec["neuron_layer"].integer() != n:
            spec["neuron_layer"].fail(f"is {spec['neuron_layer'].value}, the layer is neuron layer {n}")
        if spec["role"].choice("hidden", "readout") != ("readout" if readout else "hidden"):
            spec["role"].fail(f"is {spec['role'].value!r}; the last layer, and only it, is the readout")
        if spec["parameterisation"].choice(*PARAMETERISATIONS) != self.parameterisation:
            spec["parameterisation"].fail(f"differs from the network's {self.parameterisation!r}")
        alpha = spec["alpha"].number(self.limit)
        drive = 0.0 if self.parameterisation == "b1" else alpha
        if spec["A"].number(self.limit) != drive:
            spec["A"].fail(f"is {spec['A'].value!r}, the {self.parameterisation} drive is {drive!r}")
        b = self.boundaries
        spec["t_min_in"].derived(b[n - 1], self.limit, f"windows.boundaries[{n - 1}]")
        spec["t_min"].derived(b[n], self.limit, f"windows.boundaries[{n}]")
        spec["t_max"].derived(None if readout else b[n + 1], self.limit, f"windows.boundaries[{n + 1}]")
        spec["delta"].derived(None if readout else self.deltas[n], self.limit, f"windows.deltas[{n}]")
        spec["t_read"].derived(b[n] if readout else None, self.limit, f"windows.boundaries[{n}]")
        regions = spec["regions"].integer(1)
        channels = out_shape[0]
        index = spec["region_index"]
        if kind == "dense":
            if regions != 1:
                spec["regions"].fail(f"is {regions}; a dense layer has exactly one region")
            if index.value is not None:
                index.fail("must be null for a dense layer")
            weight_shape: tuple[int, ...] = (channels, in_shape[0])
        else:
            weight_shape = (channels, in_shape[0] // self._groups(spec, in_shape[0], channels), *spec["kernel"].pair(1))
            if index.value is not None:
                self._add(index, out_shape[1:], np.dtype(np.int64))
            elif regions != 1:
                spec["regions"].fail(f"is {regions} but region_index is null")
        self._add(spec["weight"], weight_shape)
        if self.version >= 2:
            if self.parameterisation != "b1" and spec["inputs"].value:
                spec["inputs"].fail("input groups exist for the b1 parameterisation only")
            self._inputs(spec, n, out_shape)
        self._add(spec["bias"], (channels, regions))
        self._add(spec["theta"], (channels, regions))
        self._add(spec["B"], out_shape)

    def _add(self, field: _Field, shape: tuple[int, ...], dtype: np.dtype | None = None) -> None:
        """Expect the array ``field`` names, within the byte budget (so nothing huge is ever read)."""
        name = field.name()
        if name in self.arrays:
            field.fail(f"array {_show(name)} is already {self.arrays[name].field}; each array has one field")
        expected = _Expected(field.path, shape, dtype or self.dtype)
        self.total += expected.nbytes
        if self.total > self.max_bytes:
            field.fail(f"the arrays up to {_show(name)} {list(shape)} take {self.total} bytes, "
                       f"more than max_bytes={self.max_bytes}")
        self.arrays[name] = expected


def _relative_name(field: _Field) -> None:
    """``arrays_file`` names a file inside the export directory: no absolute path, no ``..``."""
    name = field.value
    if not isinstance(name, str) or not name or "\0" in name or Path(name).is_absolute() or ".." in Path(name).parts:
        field.fail(f"expected a file name inside the export directory, got {_show(name)}")


def _geometry(spec: _Field, kind: str, in_shape: tuple[int, ...], out_shape: tuple[int, ...],
              version: int = FORMAT_VERSION) -> tuple[int, ...]:
    """The output shape that a layer's kind and parameters give (a dense layer may have any width)."""
    if kind == "flatten":
        return (math.prod(in_shape),)
    if kind == "dense":
        if len(in_shape) != 1:
            spec["in_shape"].fail(f"is {list(in_shape)}; a dense layer takes a flat input (flatten first)")
        return out_shape[:1]
    if len(in_shape) != 3:
        spec["in_shape"].fail(f"is {list(in_shape)}; {kind} needs a (channels, height, width) input")
    kernel, stride = spec["kernel"].pair(1), spec["stride"].pair(1)
    if kind == "avgpool" or (kind == "pool" and version < 2):
        padding, channels = (0, 0), in_shape[0]
    elif kind == "pool":
        padding, channels = spec["padding"].pair(0), in_shape[0]
    else:
        padding, channels = spec["padding"].pair(0), out_shape[0]
    size = ((s + 2 * p - k) // st + 1 for s, k, st, p in zip(in_shape[1:], kernel, stride, padding, strict=True))
    return (channels, *size)


def load(path: str | Path, *, max_bytes: int = MAX_BYTES) -> SNN:
    """Rebuild the :class:`ttfs.SNN` written by :func:`save` (same layers, parameters, windows, dtype).

    Raises FileNotFoundError if the directory or one of its two files is missing, and ValueError naming
    the field or array for anything malformed (see :func:`read`).
    """
    meta, arrays = read(path, max_bytes=max_bytes)
    return _build(meta, arrays)


def read(path: str | Path, *, max_bytes: int = MAX_BYTES) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Read and validate (metadata, arrays) from an export directory without building an SNN.

    The files are untrusted: model.json is checked completely first; then the arrays it names are read
    one by one, each only after its zip entry and .npy header match the shape and dtype the JSON implies
    (so a zip bomb is refused before it is decompressed), within ``max_bytes`` in all. No file outside
    the directory is opened. Other members of the archive are not read.
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"no exported SNN at {path}: not a directory")
    meta = _read_json(path)
    plan = _Plan(meta, max_bytes)
    arrays_file = _inside(path, meta["arrays_file"], "arrays_file")
    if not arrays_file.is_file():
        raise FileNotFoundError(f"exported SNN at {path}: array file {meta['arrays_file']} is missing")
    arrays = _read_npz(arrays_file, plan.arrays)
    _check_values(meta, arrays)
    return meta, arrays


def _inside(directory: Path, name: str, field: str) -> Path:
    """``directory / name``, refused (ValueError naming ``field``) if it resolves outside the directory."""
    try:
        root = directory.resolve()
        file = (root / name).resolve()
    except (OSError, RuntimeError) as e:  # RuntimeError: a symlink loop
        raise ValueError(f"{field}: cannot resolve {_show(name)}: {e}") from e
    if file == root or not file.is_relative_to(root):
        raise ValueError(f"{field}: {_show(name)} is not a file inside the export directory {directory}")
    return file


def _read_json(directory: Path) -> Any:
    """model.json, bounded in size; too deep a nesting is invalid JSON, not a RecursionError."""
    file = _inside(directory, META_FILE, META_FILE)
    if not file.is_file():
        raise FileNotFoundError(f"no exported SNN at {directory}: {META_FILE} is missing")
    with open(file, "rb") as f:  # read(n) allocates n bytes up front: ask for what the file holds
        raw = f.read(min(os.fstat(f.fileno()).st_size, MAX_JSON_BYTES) + 1)
    if len(raw) > MAX_JSON_BYTES:
        raise ValueError(f"{file} is larger than {MAX_JSON_BYTES} bytes")
    try:
        return json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise ValueError(f"{file} is not valid JSON: {e}") from e


def _read_npz(file: Path, expected: dict[str, _Expected]) -> dict[str, np.ndarray]:
    """The expected arrays, read lazily from the zip archive ``file``, each checked before its data."""
    # the archive holds those arrays and nothing else: a larger file is junk (or a zip-directory bomb)
    need = _ARCHIVE_SLACK + sum(e.nbytes + _MEMBER_SLACK + 8 * len(name) for name, e in expected.items())
    size = file.stat().st_size
    if size > need:
        raise ValueError(f"arrays_file: {file.name} has {size} bytes, more than the arrays of {META_FILE} need")
    with _unreadable(f"arrays_file: {file.name} is not a readable .npz archive"):
        archive = zipfile.ZipFile(file)
    with archive:
        members: dict[str, zipfile.ZipInfo] = {}
        for info in archive.infolist():
            name = info.filename.removesuffix(".npy")
            if name in members:
                raise ValueError(f"arrays_file: {file.name} holds the array {_show(name)} twice")
            members[name] = info
        return {name: _read_member(archive, members.get(name), name, e) for name, e in expected.items()}


def _read_member(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo | None, name: str, expected: _Expected
) -> np.ndarray:
    """One array: sizes from the zip directory, then the .npy header, then (only then) the data."""
    where = f"{expected.field}: array {_show(name)}"
    if info is None:
        raise ValueError(f"{where} is missing from {Path(archive.filename or ARRAYS_FILE).name}")
    # NumPy writes stored or deflated entries; bzip2/lzma inflate without an output bound
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise ValueError(f"{where} uses zip compression method {info.compress_type} (NumPy uses 0 or 8)")
    if info.file_size > expected.nbytes + _NPY_HEADER:  # from the zip directory, before decompressing
        raise ValueError(
            f"{where}: its zip entry unpacks to {info.file_size} bytes, but a {expected.shape} "
            f"{expected.dtype} array takes {expected.nbytes} (a zip bomb?)"
        )
    with _unreadable(f"{where} is unreadable"):
        f = archive.open(info)
    with f:
        with _unreadable(f"{where} is not a readable .npy array"):
            shape, fortran, dtype = _npy_header(f)
            offset = f.tell()
        if shape != expected.shape:
            raise ValueError(f"{where} has shape {shape}, expected {expected.shape}")
        if dtype.newbyteorder("=") != expected.dtype:
            raise ValueError(f"{where} has dtype {dtype}, expected {expected.dtype}")
        if info.file_size != offset + expected.nbytes:
            raise ValueError(f"{where}: its zip entry holds {info.file_size} bytes, not {offset + expected.nbytes}")
        with _unreadable(f"{where} is unreadable"):
            array = _npy_data(f, shape, fortran, dtype)
    return array.astype(expected.dtype, copy=False)  # native byte order


@contextlib.contextmanager
def _unreadable(message: str) -> Iterator[None]:
    """Turn the many errors of a corrupt zip or .npy header into one ValueError with ``message``."""
    try:
        yield
    except _ZIP_ERRORS as e:
        raise ValueError(f"{message}: {e}") from e


def _npy_header(f: IO[bytes]) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(f, max_header_size=_NPY_HEADER)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(f, max_header_size=_NPY_HEADER)
    raise ValueError(f".npy format version {version} is not supported (1.0 or 2.0)")


def _npy_data(f: IO[bytes], shape: tuple[int, ...], fortran: bool, dtype: np.dtype) -> np.ndarray:
    """The data after a checked header, read in chunks straight into the array (no second copy)."""
    array = np.empty(shape[::-1] if fortran else shape, dtype)
    raw = array.reshape(-1).view(np.uint8)
    for start in range(0, raw.size, _CHUNK):
        chunk = f.read(min(_CHUNK, raw.size - start))
        if start + len(chunk) < min(start + _CHUNK, raw.size):
            raise EOFError(f"the data ends after {start + len(chunk)} of {raw.size} bytes")
        raw[start : start + len(chunk)] = np.frombuffer(chunk, np.uint8)
    return array.T if fortran else array


def validate(meta: dict[str, Any], arrays: Mapping[str, np.ndarray], *, max_bytes: int = MAX_BYTES) -> None:
    """Check that metadata and arrays form a consistent version-1 export; raise ValueError otherwise."""
    plan = _Plan(meta, max_bytes)
    if not isinstance(arrays, Mapping):
        raise ValueError(f"arrays: expected a mapping of names to NumPy arrays, got {type(arrays).__name__}")
    for name, expected in plan.arrays.items():
        where = f"{expected.field}: array {_show(name)}"
        if name not in arrays:
            raise ValueError(f"{where} is missing from the arrays")
        a = arrays[name]
        if not isinstance(a, np.ndarray):
            raise ValueError(f"{where} is a {type(a).__name__}, not a NumPy array")
        if a.shape != expected.shape:
            raise ValueError(f"{where} has shape {a.shape}, expected {expected.shape}")
        if a.dtype != expected.dtype:
            raise ValueError(f"{where} has dtype {a.dtype}, expected {expected.dtype}")
    _check_values(meta, arrays)


def _check_values(meta: dict[str, Any], arrays: Mapping[str, np.ndarray]) -> None:
    """Array contents, once shapes and dtypes are right: finite, region maps in range, thresholds that
    agree with the raw biases."""
    for i, spec in enumerate(meta["layers"]):
        if spec["kind"] not in _NEURON_KINDS:
            continue
        named = [(key, spec[key]) for key in ("weight", "bias", "theta", "B")]
        groups = spec.get("inputs", ()) if meta["version"] >= 2 else ()
        named += [(f"inputs[{k}].weight", g["weight"]) for k, g in enumerate(groups)]
        for key, name in named:
            bad = np.count_nonzero(~np.isfinite(arrays[name]))
            if bad:
                raise ValueError(f"layers[{i}].{key}: array {_show(name)} has {bad} NaN or infinite values")
        name, regions = spec["region_index"], spec["regions"]
        if name is not None:
            low, high = int(arrays[name].min()), int(arrays[name].max())
            if low < 0 or high != regions - 1:
                raise ValueError(
                    f"layers[{i}].region_index: array {_show(name)} holds regions {low}..{high}, "
                    f"expected 0..{regions - 1}"
                )
        _check_theta(spec, arrays[spec["bias"]], arrays[spec["theta"]], f"layers[{i}].theta")


def _check_theta(spec: dict[str, Any], bias: np.ndarray, theta: np.ndarray, where: str) -> None:
    """theta is derived data; refuse a file whose thresholds and raw biases tell different stories."""
    if spec["parameterisation"] == "b1":
        delta = 0.0 if spec["role"] == "readout" else float(spec["delta"])
        expected = delta - bias.astype(np.float64)
    else:
        expected = bias.astype(np.float64)
    tol = (1e-6 if bias.dtype == np.float32 else 1e-12) * (1.0 + np.abs(expected).max(initial=0.0))
    if not np.allclose(theta, expected, rtol=0.0, atol=tol):
        raise ValueError(f"{where}: thresholds theta disagree with its raw bias (corrupt export?)")


def from_dict(meta: dict[str, Any], arrays: Mapping[str, np.ndarray], *, max_bytes: int = MAX_BYTES) -> SNN:
    """Build the :class:`ttfs.SNN` described by (metadata, arrays), e.g. as returned by :func:`to_dict`."""
    validate(meta, arrays, max_bytes=max_bytes)
    return _build(meta, arrays)


def _float64(value: Any) -> torch.Tensor:
    return torch.from_numpy(np.asarray(value, dtype=np.float64))


def _weights(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a))


def _build(meta: dict[str, Any], arrays: Mapping[str, np.ndarray]) -> SNN:
    """The SNN of a validated export (every field and array checked by :class:`_Plan` and co)."""
    dtype = DTYPES[meta["dtype"]]
    inp, windows = meta["input"], meta["windows"]
    encoder = InputEncoder(tuple(inp["in_shape"]), _float64(inp["p"]), _float64(inp["q"]))
    v2 = meta["version"] >= 2
    layers = [_module(spec, arrays, v2) for spec in meta["layers"]]
    for spec, layer in zip(meta["layers"], layers, strict=True):
        if v2 and isinstance(layer, SpikingNeurons):
            layer.set_input_groups([_input_group(g, arrays) for g in spec["inputs"]])
    snn = SNN(encoder, layers, _float64(windows["deltas"]), float(windows["t_start"])).to(dtype)
    with torch.no_grad():
        snn.deltas.copy_(_float64(windows["deltas"]))
        snn.t_start.copy_(_float64(windows["t_start"]))
        for spec, layer in zip(meta["layers"], snn.layers, strict=True):
            if isinstance(layer, SpikingNeurons):
                layer.weight.copy_(_weights(arrays[spec["weight"]]))
                layer.bias.copy_(_weights(arrays[spec["bias"]]))
    return snn


def _input_group(spec: dict[str, Any], arrays: Mapping[str, np.ndarray]) -> InputGroup:
    """An input group of a validated version-2 spec, with its weights."""
    route = [_module(step, arrays, True) for step in spec["route"]]
    conv = spec["kind"] == "conv2d"
    return InputGroup(spec["source"], route, spec["kind"], _weights(arrays[spec["weight"]]), spec["trainable"],
                      tuple(spec["stride"]) if conv else 1, tuple(spec["padding"]) if conv else 0,
                      spec["groups"] if conv else 1)


def _module(spec: dict[str, Any], arrays: Mapping[str, np.ndarray], v2: bool = True) -> nn.Module:
    """The layer (or route entry) of a validated spec, parameters not yet set."""
    kind = spec["kind"]
    if kind == "dense":
        return SpikingLinear(spec["in_shape"][0], spec["out_shape"][0], spec["parameterisation"], spec["alpha"])
    if kind == "conv2d":
        index = spec["region_index"]
        region_index = None if index is None else torch.from_numpy(np.ascontiguousarray(arrays[index], np.int64))
        return SpikingConv2d(
            spec["in_shape"][0],
            spec["out_shape"][0],
            tuple(spec["kernel"]),
            tuple(spec["stride"]),
            tuple(spec["padding"]),
            spec["parameterisation"],
            spec["alpha"],
            region_index,
            spec["groups"] if v2 else 1,
        )
    if kind == "pool":
        sign = torch.tensor(spec["sign"], dtype=torch.float64)
        return MinTimePool2d(tuple(spec["kernel"]), tuple(spec["stride"]), sign, tuple(spec["padding"]) if v2 else 0)
    if kind == "avgpool":
        return MeanTimePool2d(tuple(spec["kernel"]), tuple(spec["stride"]))
    return nn.Flatten()
