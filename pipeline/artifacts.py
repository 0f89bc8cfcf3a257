"""Where each stage's outputs live and how models, metrics and curves are written.

Everything written here is a DVC output, so it must be a pure function of the inputs: no timestamps,
run ids or host names, and files are replaced atomically so a killed stage never leaves half a file.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ttfs import SNN, export, zoo


@dataclass(frozen=True)
class Paths:
    experiment: str

    @property
    def models(self) -> Path:
        return Path("models") / self.experiment

    @property
    def relu(self) -> Path:
        return self.models / "relu.pt"

    @property
    def converted(self) -> Path:
        return self.models / "snn_converted.pt"

    @property
    def snn(self) -> Path:
        return self.models / "snn.pt"

    def metrics(self, stage: str) -> Path:
        return Path("metrics") / self.experiment / f"{stage}.json"

    def plot(self, name: str) -> Path:
        return Path("plots") / self.experiment / name


def prepared_dir(dataset: str) -> Path:
    return Path("data") / "prepared" / dataset


def _atomic_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _clean(value: Any) -> Any:
    """JSON-safe copy: non-finite floats become null (strict JSON, which `dvc metrics` parses)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def write_json(path: Path, data: dict) -> None:
    _atomic_bytes(path, (json.dumps(_clean(data), indent=2, allow_nan=False) + "\n").encode())


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def write_csv(path: Path, rows: list[dict], columns: tuple[str, ...] | list[str]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: row.get(k) for k in columns})
    _atomic_bytes(path, buf.getvalue().encode())


def _save(path: Path, payload: dict) -> None:
    buf = io.BytesIO()
    torch.save(payload, buf)
    _atomic_bytes(path, buf.getvalue())


def _cpu_state(model: nn.Module) -> dict:
    """Detached, contiguous CPU copies: torch.save writes whole storages, so views must not leak in."""
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}


def save_relu(path: Path, model: nn.Module, lineage: dict) -> None:
    _save(path, {"format": "ttfs-relu", "config": dict(model.config), "state_dict": _cpu_state(model),
                 "lineage": lineage})


def load_relu(path: Path) -> tuple[nn.Module, dict]:
    """(model in eval mode, lineage) from a file written by :func:`save_relu`."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    config = dict(payload["config"])
    model = zoo.create_model(config.pop("name"), **config)
    model.load_state_dict(payload["state_dict"])
    return model.eval(), payload["lineage"]


def save_snn(path: Path, snn: SNN, lineage: dict) -> None:
    """The SNN in the framework-free ttfs-snn layout (metadata + named arrays) inside one file."""
    meta, arrays = export.to_dict(snn)
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)).clone() for k, v in arrays.items()}
    _save(path, {"format": "ttfs-snn", "meta": meta, "arrays": tensors, "lineage": lineage})


def load_snn(path: Path) -> tuple[SNN, dict]:
    payload = torch.load(path, map_location="cpu", weights_only=True)
    arrays = {k: v.numpy() for k, v in payload["arrays"].items()}
    return export.from_dict(payload["meta"], arrays), payload["lineage"]
