"""Fuzzing the export reader: a mutated export is refused with a ValueError, or it loads into a network that runs.

Valid exports of four small networks (b1 conv with 'same' padding, threshold regions, a negative pool
sign and a per-channel input range; alpha1 conv + pool + dense; a float32 b1 MLP with per-feature ranges;
a residual b1 network with identity and projection input groups, a padded max-pool inside a group's
route, average pooling and a grouped convolution)
are changed at random. Three examples in four get hostile mutations of the JSON (deleted keys, values of
another type, negative / zero / huge / NaN numbers, shortened or swapped lists, deep nesting, 5000-digit
integers), of the arrays (NaN / inf / huge elements, other dtypes incl. pickled objects, other shapes,
missing / renamed / extra / swapped arrays) or of the files' bytes (flipped, truncated, appended):
``load`` must raise ValueError (or FileNotFoundError when ``arrays_file`` names a file that is not there)
or return an SNN that runs. The fourth gets only changes that keep the export valid (a flipped pool sign,
any finite weight, unknown keys, a small unreferenced array, a compressed archive): ``load`` must accept
it. A loaded SNN's ``run`` gives logits of the readout's shape, finite unless a mutation put a weight,
bias or alpha beyond finfo(dtype).max ** 0.25 (arithmetic on such values overflows in any framework; the
reader guarantees finite, well-shaped parameters, not finite products). Run with ``-s`` for the counts.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import tempfile
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import ttfs
from ttfs import export

MIN_EXAMPLES = 500
DEEP, BIGINT = "\x00deep\x00", "\x00bigint\x00"  # placeholders replaced in the JSON text

NUMBERS = st.sampled_from(
    [0, 1, -1, 2, -3, 0.0, 0.5, -0.5, 1e-300, 1e300, -1e300, math.nan, math.inf, -math.inf, 2**31, 2**63, 10**30]
)
STRINGS = st.sampled_from(
    ["", "x", "dense", "conv2d", "pool", "flatten", "b1", "alpha1", "float32", "float64", "hidden", "readout",
     "arrays.npz", "model.json", ".", "../arrays.npz", "/etc/passwd", "sub/arrays.npz", "layers.0.weight",
     "layers.0.B"]
)
PLAIN = st.one_of(
    st.none(), st.booleans(), NUMBERS, st.integers(-5, 20), STRINGS, st.lists(st.integers(-2, 10), max_size=4),
    st.lists(NUMBERS, max_size=3), st.dictionaries(st.sampled_from(["kind", "x"]), st.integers(0, 3), max_size=2),
)
VALUES = st.one_of(PLAIN, st.sampled_from([DEEP, BIGINT]))
ELEMENTS = [math.nan, math.inf, -math.inf, 0.0, -1.0, 1e300, -1e300, 1e-300, 3e38, 1e10]
DTYPES = [np.float32, np.float16, np.float64, np.int64, np.int32, np.complex128, np.bool_, ">f8", object]


def _bn(channels: int, dims: int = 2) -> nn.Module:
    bn = nn.BatchNorm2d(channels) if dims == 2 else nn.BatchNorm1d(channels)
    with torch.no_grad():
        bn.weight.copy_(torch.linspace(-1.2, 1.5, channels))  # one negative scale: a pool with sign -1
        bn.bias.normal_()
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
    return bn


@functools.cache
def bases() -> dict[str, tuple[dict[str, Any], dict[str, np.ndarray]]]:
    """(meta, arrays) of the exports that get mutated, built once."""
    torch.manual_seed(0)
    conv = nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), _bn(3), nn.MaxPool2d(2), nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(36, 5), nn.ReLU(), nn.Linear(5, 3),
    ).double().eval()
    b1_conv = ttfs.convert(conv, torch.rand(8, 2, 6, 6, dtype=torch.float64), in_range=([-0.1, 0.0], [1.0, 1.2]))
    alpha = nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(12, 4), nn.ReLU(),
                          nn.Linear(4, 3)).double().eval()
    with torch.no_grad():
        alpha[-1].weight.mul_(0.05)
    alpha1 = ttfs.convert(alpha, torch.rand(8, 2, 6, 6, dtype=torch.float64), parameterisation="alpha1")
    mlp = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), _bn(8, 1), nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 3)).eval()
    dense32 = ttfs.convert(mlp, torch.rand(8, 6), in_range=([0.0] * 6, [1.0] * 5 + [2.0]), dtype=torch.float32)
    assert any(m.region_index is not None for m in b1_conv.neuron_layers)
    assert any(p.sign is not None for p in b1_conv.layers if isinstance(p, ttfs.MinTimePool2d))
    residual = ttfs.convert(_Residual().double().eval(), torch.rand(8, 2, 8, 8, dtype=torch.float64))
    assert {g.kind for layer in residual.neuron_layers for g in layer.input_groups} == {"scale", "conv2d"}
    return {"b1_conv": export.to_dict(b1_conv), "alpha1": export.to_dict(alpha1), "dense32": export.to_dict(dense32),
            "residual": export.to_dict(residual)}


class _Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(2, 4, 3, padding=1)
        self.pool = nn.MaxPool2d(3, 2, 1)
        self.b = nn.Conv2d(4, 4, 3, padding=1, groups=2)
        self.c = nn.Conv2d(4, 3, 3, padding=1)
        self.proj = nn.Conv2d(4, 3, 1, bias=False)
        self.avg = nn.AvgPool2d(2)
        self.head = nn.Linear(3 * 2 * 2, 3)

    def forward(self, x):
        h = self.pool(torch.relu(self.a(x)))
        y = torch.relu(self.b(h) + h)
        z = torch.relu(self.c(y) + self.proj(h))
        return self.head(self.avg(z).flatten(1))


# ------------------------------------------------------------------------------------------------
# mutations
# ------------------------------------------------------------------------------------------------
def _paths(obj: Any, prefix: tuple = ()) -> list[tuple]:
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    found = []
    for key, value in items:
        found.append((*prefix, key))
        found += _paths(value, (*prefix, key))
    return found


def _parent(meta: Any, path: tuple) -> Any:
    for key in path[:-1]:
        meta = meta[key]
    return meta


def mutate_json(data: st.DataObject, meta: dict[str, Any]) -> None:
    path = data.draw(st.sampled_from(_paths(meta)))
    parent, key = _parent(meta, path), path[-1]
    value = parent[key]
    op = data.draw(st.sampled_from(["delete", "replace", "number", "list", "swap"]))
    if op == "delete":
        del parent[key]
    elif op == "number" and isinstance(value, (int, float)) and not isinstance(value, bool):
        finite = math.isfinite(value)
        parent[key] = data.draw(st.sampled_from(
            [value + 1, value - 1, -value, 0, value * 2, value * 1e300, float(value), value + 1e-9]
            + ([int(value), value / 3] if finite else [])
        ))
    elif op == "list" and isinstance(value, list):
        parent[key] = data.draw(st.sampled_from([value[:-1], value + value[-1:], [], value[::-1], [value]]))
    elif op == "swap":
        other = data.draw(st.sampled_from(_paths(meta)))
        if path[: len(other)] != other and other[: len(path)] != path:  # neither inside the other: no cycle
            other_parent = _parent(meta, other)
            parent[key], other_parent[other[-1]] = other_parent[other[-1]], value
    else:
        parent[key] = data.draw(VALUES)


def mutate_arrays(data: st.DataObject, arrays: dict[str, np.ndarray]) -> None:
    name = data.draw(st.sampled_from(sorted(arrays)))
    a = arrays[name]
    op = data.draw(st.sampled_from(["element", "element", "scale", "dtype", "shape", "delete", "rename", "extra",
                                    "swap"]))
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # lossy casts are the point
        if op == "element" and a.size:
            a = a.copy()
            values = [-1, 0, 1, 99, 2**62] if a.dtype.kind in "iu" else ELEMENTS
            a.flat[data.draw(st.integers(0, a.size - 1))] = data.draw(st.sampled_from(values))
            arrays[name] = a
        elif op == "scale":
            arrays[name] = a * data.draw(st.sampled_from([-1, 0, 2, 1e300, 1e-300]))
        elif op == "dtype":
            dtype = data.draw(st.sampled_from(DTYPES))
            arrays[name] = np.array(a.tolist(), dtype=object) if dtype is object else a.astype(dtype)
        elif op == "shape":
            flat = a.reshape(-1)
            arrays[name] = data.draw(st.sampled_from([flat, a.T, a[None], flat[:-1], flat[:0], np.ones((1, 1, 1))]))
        elif op == "delete":
            del arrays[name]
        elif op == "rename":
            arrays[name + "x"] = arrays.pop(name)
        elif op == "extra":
            arrays["extra"] = np.zeros(data.draw(st.sampled_from([1, 1000, 1 << 18])))
        else:
            other = data.draw(st.sampled_from(sorted(arrays)))
            arrays[name], arrays[other] = arrays[other], a


def vary(data: st.DataObject, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
    """A change that keeps the export valid: a flipped pool sign, any finite weight, an unknown key, a
    small unreferenced array. The reader must accept the result."""
    op = data.draw(st.sampled_from(["sign", "weight", "key", "array"]))
    pools = [spec for spec in meta["layers"] if spec["kind"] == "pool"]
    if op == "sign" and pools:
        sign = data.draw(st.sampled_from(pools))["sign"]
        i = data.draw(st.integers(0, len(sign) - 1))
        sign[i] = -sign[i]
    elif op == "weight":
        name = data.draw(st.sampled_from(sorted(k for k in arrays if k.endswith(".weight"))))
        arrays[name] = a = arrays[name].copy()
        finite = [v for v in ELEMENTS if abs(v) <= float(np.finfo(a.dtype).max)]
        a.flat[data.draw(st.integers(0, a.size - 1))] = data.draw(st.sampled_from(finite))
    elif op == "key":
        parent = data.draw(st.sampled_from([meta, meta["input"], meta["windows"], *meta["layers"]]))
        parent[data.draw(st.sampled_from(["comment", "x", "kind2"]))] = data.draw(PLAIN)
    else:
        arrays["notes"] = np.zeros(data.draw(st.integers(1, 1000)))


def write(path: Path, meta: dict[str, Any], arrays: dict[str, np.ndarray], compressed: bool) -> None:
    text = json.dumps(meta)  # NaN and Infinity are written as such: the reader must refuse them
    depth = 100_000
    text = text.replace(json.dumps(DEEP), "[" * depth + "]" * depth).replace(json.dumps(BIGINT), "1" + "0" * 5000)
    (path / "model.json").write_text(text)
    (np.savez_compressed if compressed else np.savez)(path / "arrays.npz", **arrays)


def corrupt(data: st.DataObject, file: Path) -> None:
    raw = bytearray(file.read_bytes())
    op = data.draw(st.sampled_from(["flip", "flip", "truncate", "append"]))
    if op == "flip":
        for _ in range(data.draw(st.integers(1, 4))):
            raw[data.draw(st.integers(0, len(raw) - 1))] ^= data.draw(st.integers(1, 255))
    elif op == "truncate":
        raw = raw[: data.draw(st.integers(0, len(raw) - 1))]
    else:
        raw += data.draw(st.binary(min_size=1, max_size=64))
    file.write_bytes(bytes(raw))


# ------------------------------------------------------------------------------------------------
# the oracle
# ------------------------------------------------------------------------------------------------
def check_runs(snn: ttfs.SNN, meta: dict[str, Any]) -> bool:
    """Run the loaded network; True if its logits are finite (asserted unless parameters are huge)."""
    dtype = snn.deltas.dtype
    z = torch.rand((4, *snn.encoder.in_shape), generator=torch.Generator().manual_seed(0), dtype=dtype) * 1.4 - 0.2
    with torch.no_grad():
        logits = snn.run(z).logits
    assert logits.shape == (4, *meta["layers"][-1]["out_shape"])
    finite = bool(torch.isfinite(logits).all())
    if not finite:
        bound = float(torch.finfo(dtype).max) ** 0.25
        largest = max(max(float(m.weight.detach().abs().max()), float(m.bias.detach().abs().max()), abs(m.alpha))
                      for m in snn.neuron_layers)
        assert largest > bound, f"non-finite logits from parameters within {largest}"
    return finite


def test_mutated_exports_are_refused_or_run() -> None:
    counts: Counter[str] = Counter()

    @settings(max_examples=MIN_EXAMPLES + 50, deadline=None, suppress_health_check=list(HealthCheck))
    @given(data=st.data())
    def fuzz(data: st.DataObject) -> None:
        meta, arrays = copy.deepcopy(bases()[data.draw(st.sampled_from(sorted(bases())), label="base")])
        hostile = data.draw(st.integers(0, 3), label="hostile") > 0  # three in four
        file_op = data.draw(st.sampled_from([None, "compressed", *(["arrays", "json"] if hostile else [])]))
        if hostile:
            n_json, n_arrays = data.draw(st.integers(0, 2)), data.draw(st.integers(0, 2))
            for _ in range(n_json if n_json + n_arrays or file_op in ("arrays", "json") else 1):
                if _paths(meta):
                    mutate_json(data, meta)
            for _ in range(n_arrays):
                if arrays:
                    mutate_arrays(data, arrays)
        else:
            for _ in range(data.draw(st.integers(1, 3))):
                vary(data, meta, arrays)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "snn"
            path.mkdir()
            write(path, meta, arrays, file_op == "compressed")
            if file_op in ("arrays", "json"):
                corrupt(data, path / ("arrays.npz" if file_op == "arrays" else "model.json"))
            counts["tried"] += 1
            try:
                snn = export.load(path)
            except ValueError:
                assert hostile, "a valid export was refused"
                counts["rejected"] += 1
                return
            except FileNotFoundError:  # only for an arrays_file naming a missing file inside the directory
                name = json.loads((path / "model.json").read_text())["arrays_file"]
                assert name != "arrays.npz" and not (path / name).is_file()
                counts["rejected"] += 1
                counts["missing arrays_file"] += 1
                return
            counts["loaded" if hostile else "loaded (valid variations)"] += 1
            if not check_runs(snn, json.loads((path / "model.json").read_text())):
                counts["non-finite logits from huge parameters"] += 1

    fuzz()
    print(f"\nexport fuzz: {dict(counts)}")
    loaded = counts["loaded"] + counts["loaded (valid variations)"]
    assert counts["tried"] >= MIN_EXAMPLES and counts["rejected"] + loaded == counts["tried"]
    assert counts["rejected"] > 0 and counts["loaded"] > 0 and counts["loaded (valid variations)"] > 0
