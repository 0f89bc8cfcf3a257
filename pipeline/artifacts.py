"""Where each stage's outputs live and how models, metrics and curves are written.

Everything written here is a DVC output, so it must be a pure function of the inputs: no timestamps,
run ids or host names, and files are replaced atomically so a killed stage never leaves half a file.
Model files (and checkpoints, pipeline/checkpoint.py) carry a digest of their content and are read back
with ``weights_only=True`` only: a damaged, stale or planted file is an ArtifactError naming the file and
the fix, never silently different weights, a traceback or code run by the unpickler.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import pickle
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ttfs import SNN, export, zoo

from .errors import ArtifactError, ChecksumError

DIGEST = "content_sha256"
PRODUCERS = {"relu.pt": "pretrain", "snn_converted.pt": "convert", "snn.pt": "finetune"}


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


def atomic_write(path: Path, data: bytes) -> None:
    """Write to a temporary file, flush it to disk and rename it over ``path``: a kill -9 leaves the
    previous file or the new one, never a torn one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


@contextmanager
def _interruptions_deferred() -> Iterator[None]:
    """Hold SIGTERM and SIGINT until the block ends: an interruption raised inside torch.save's zip
    writer surfaces as its RuntimeError instead of KeyboardInterrupt, so the stage would report a
    crash (exit 1) instead of an interruption (exit 130). A held signal is raised again on exit, to
    the handlers that were in place. (Masking with pthread_sigmask would not do: it covers one thread,
    and the kernel hands a process-wide SIGTERM to any of torch's threads.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    previous = {s: signal.signal(s, lambda signum, _frame: held.append(signum))
                for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if held:
            signal.raise_signal(held[0])


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
    atomic_write(path, (json.dumps(_clean(data), indent=2, allow_nan=False) + "\n").encode())


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def write_csv(path: Path, rows: list[dict], columns: tuple[str, ...] | list[str]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: row.get(k) for k in columns})
    atomic_write(path, buf.getvalue().encode())


def digest(value: Any) -> str:
    """sha256 of a canonical encoding of what torch.load gives back (tensors by dtype, shape and bytes):
    independent of pickle and zip layout, so it checks the content itself, wherever the damage is."""
    h = hashlib.sha256()
    _feed(h, value)
    return h.hexdigest()


def _feed(h, value: Any) -> None:
    if isinstance(value, torch.Tensor):
        t = value.detach().to("cpu").contiguous()
        h.update(f"T{t.dtype}{list(t.shape)}:".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(value, dict):
        h.update(f"D{len(value)}:".encode())
        for k, v in value.items():
            _feed(h, k)
            _feed(h, v)
    elif isinstance(value, (list, tuple)):
        h.update(f"{'L' if isinstance(value, list) else 'U'}{len(value)}:".encode())
        for v in value:
            _feed(h, v)
    elif isinstance(value, str):
        h.update(f"S{len(value.encode())}:".encode() + value.encode())
    elif value is None or isinstance(value, (bool, int)):
        h.update(f"{value!r};".encode())
    elif isinstance(value, float):
        h.update(f"F{value.hex()};".encode())
    else:  # torch.load(weights_only=True) could not read it back either
        raise TypeError(f"cannot store a {type(value).__name__} in a pipeline file")


def sealed(payload: dict) -> dict:
    """``payload`` with the digest of its content, for :func:`load_verified`."""
    return {**payload, DIGEST: digest(payload)}


def load_verified(path: Path, fix: str) -> dict:
    """The payload of a file written as :func:`sealed`, after checking its digest.

    ``weights_only=True`` refuses anything but tensors and plain data, so a planted pickle cannot run
    code. Every failure is an ArtifactError naming ``path`` and ``fix`` (what to do about it).
    """
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as e:
        raise ArtifactError(f"{path} is missing; {fix}") from e
    except pickle.UnpicklingError as e:
        raise ArtifactError(f"{path} is damaged or holds objects other than tensors and plain data (refused: "
                            f"loading them could run code); {fix}") from e
    except Exception as e:  # torn zip, bad record, I/O error: torch raises all kinds
        raise ArtifactError(f"{path} is truncated or damaged ({type(e).__name__}); {fix}") from e
    if not isinstance(payload, dict) or DIGEST not in payload:
        raise ArtifactError(f"{path} has no content checksum (written by an older version of the pipeline, or "
                            f"not by the pipeline); {fix}")
    expected = payload.pop(DIGEST)
    if digest(payload) != expected:
        raise ChecksumError(f"{path}: content checksum mismatch (damaged or modified since it was written); {fix}")
    return payload


def save_sealed(path: Path, payload: dict) -> None:
    """Write ``payload`` with its digest (see :func:`load_verified`), atomically, with SIGTERM and SIGINT
    held until the file is in place."""
    with _interruptions_deferred():
        buf = io.BytesIO()
        torch.save(sealed(payload), buf)
        atomic_write(path, buf.getvalue())


def _load(path: Path, fmt: str) -> dict:
    """A verified model file of format ``fmt``; the fix names the stage that writes it."""
    path = Path(path)
    stage = PRODUCERS.get(path.name)
    rerun = f"`dvc repro -f {stage}@{path.parent.name}`" if stage else "the stage that wrote it"
    fix = f"restore it with `dvc checkout {path}` or regenerate it with {rerun}"
    payload = load_verified(path, fix)
    if payload.get("format") != fmt:
        raise ArtifactError(f"{path} is not a {fmt} file (format {payload.get('format')!r}); {fix}")
    return payload


def _cpu_state(model: nn.Module) -> dict:
    """Detached, contiguous CPU copies: torch.save writes whole storages, so views must not leak in."""
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}


def save_relu(path: Path, model: nn.Module, lineage: dict) -> None:
    save_sealed(path, {"format": "ttfs-relu", "config": dict(model.config), "state_dict": _cpu_state(model),
                 "lineage": lineage})


def load_relu(path: Path) -> tuple[nn.Module, dict]:
    """(model in eval mode, lineage) from a file written by :func:`save_relu`."""
    payload = _load(path, "ttfs-relu")
    config = dict(payload["config"])
    model = zoo.create_model(config.pop("name"), **config)
    model.load_state_dict(payload["state_dict"])
    return model.eval(), payload["lineage"]


def save_snn(path: Path, snn: SNN, lineage: dict) -> None:
    """The SNN in the framework-free ttfs-snn layout (metadata + named arrays) inside one file."""
    meta, arrays = export.to_dict(snn)
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)).clone() for k, v in arrays.items()}
    save_sealed(path, {"format": "ttfs-snn", "meta": meta, "arrays": tensors, "lineage": lineage})


def load_snn(path: Path) -> tuple[SNN, dict]:
    payload = _load(path, "ttfs-snn")
    arrays = {k: v.numpy() for k, v in payload["arrays"].items()}
    return export.from_dict(payload["meta"], arrays), payload["lineage"]
