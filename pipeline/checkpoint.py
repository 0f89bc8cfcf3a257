"""Training checkpoints that survive interruptions and DVC's cleanup of stage outputs.

They live in checkpoints/<experiment>/ (no DVC output, so ``dvc repro`` never deletes them) and are
named by a key that hashes the stage's params and input checksums: a changed input never resumes a
stale run. Writes go to a temporary file that replaces the old one atomically, so a kill -9 leaves
either the previous or the new checkpoint, never a torn one. Anything else in their place (damage, a
file planted to run code when unpickled) is refused with an ArtifactError: see :func:`load`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from .artifacts import load_verified, sealed


def path_for(root: Path, experiment: str, stage: str, key: str) -> Path:
    return root / "checkpoints" / experiment / f"{stage}-{key}.pt"


def save(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        torch.save(sealed(state), f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load(path: Path) -> dict[str, Any] | None:
    """The saved state, or None if there is none.

    A file that fails verification stops the stage instead of being skipped: it is not what we wrote
    (writes are atomic), so someone should look at it; deleting it costs only the epochs it held.
    """
    if not path.is_file():
        return None
    return load_verified(path, f"delete it (the stage then starts over): rm {path}")


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
