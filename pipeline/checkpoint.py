"""Training checkpoints that survive interruptions and DVC's cleanup of stage outputs.

They live in checkpoints/<experiment>/ (no DVC output, so ``dvc repro`` never deletes them) and are
named by a key that hashes the stage's params and input checksums: a changed input never resumes a
stale run. Writes go to a temporary file that replaces the old one atomically, so a kill -9 leaves
either the previous or the new checkpoint, never a torn one. Under torchrun only rank 0 writes and
removes them (every rank holds the same state; all ranks read them, so a run resumes with any number
of processes). Anything else in their place (damage, a
file planted to run code when unpickled) is refused with an ArtifactError: see :func:`load`.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import torch

from ttfs.distributed import world

from . import deps
from .artifacts import load_verified, save_sealed


def path_for(root: Path, experiment: str, stage: str, key: str) -> Path:
    """checkpoints/<experiment>/<stage>-<key>-<code hash>.pt: the code hash (pipeline/deps.py) keeps a
    run killed under other code from being resumed, which would mix two versions of the training code.
    Checkpoints of the same key written by other code (and their sweep settings) are reported and
    removed: the stage starts over."""
    code = deps.code_hash(stage)[:12]
    path = root / "checkpoints" / experiment / f"{stage}-{key}-{code}.pt"
    pattern = rf"{re.escape(stage)}-{re.escape(key)}-([0-9a-f]{{12}})(-.+)?\.pt"
    stale = [p for p in path.parent.glob(f"{stage}-{key}-*.pt")
             if (m := re.fullmatch(pattern, p.name)) and m[1] != code]
    if stale:
        shown = min(stale, key=lambda p: len(p.name)).relative_to(root)
        print(f"checkpoint {shown} was written by other code (a file in `python -m pipeline.deps {stage}` "
              "changed); starting over", file=sys.stderr)
        for p in stale:
            p.unlink(missing_ok=True)
    return path


def save(path: Path, state: dict[str, Any]) -> None:
    if world()[0] != 0:  # data-parallel: the replicas are identical, rank 0 writes
        return
    save_sealed(path, state)


def load(path: Path) -> dict[str, Any] | None:
    """The saved state, or None if there is none.

    A file that fails verification stops the stage instead of being skipped: it is not what we wrote
    (writes are atomic), so someone should look at it; deleting it costs only the epochs it held.
    """
    if not path.is_file():
        return None
    return load_verified(path, f"delete it (the stage then starts over): rm {path}")


def remove(path: Path) -> None:
    if world()[0] != 0:
        return
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
