"""Training checkpoints that survive interruptions and DVC's cleanup of stage outputs.

They live in checkpoints/<experiment>/ (no DVC output, so ``dvc repro`` never deletes them) and are
named by a key that hashes the stage's params and input checksums: a changed input never resumes a
stale run. Writes go to a temporary file that replaces the old one atomically, so a kill -9 leaves
either the previous or the new checkpoint, never a torn one.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import torch


def path_for(root: Path, experiment: str, stage: str, key: str) -> Path:
    return root / "checkpoints" / experiment / f"{stage}-{key}.pt"


def save(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load(path: Path) -> dict[str, Any] | None:
    """The saved state, or None if there is none; an unreadable file is reported and ignored."""
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # torn by something other than us (disk full, manual copy): start over
        print(f"warning: ignoring unreadable checkpoint {path}: {e}", file=sys.stderr)
        return None


def remove(path: Path) -> None:
    path.unlink(missing_ok=True)


def rng_state(generators: dict[str, torch.Generator]) -> dict[str, Any]:
    """Every random stream training touches: the named generators (batch shuffle, augmentation),
    torch's global RNG (dropout) and CUDA's."""
    state: dict[str, Any] = {name: g.get_state() for name, g in generators.items()}
    state["torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any], generators: dict[str, torch.Generator]) -> None:
    for name, g in generators.items():
        g.set_state(state[name])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
