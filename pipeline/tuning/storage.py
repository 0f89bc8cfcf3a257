"""Where a study lives, and the storage-wide lock that makes the shared trial budget exact.

A journal file (default; any number of processes on one machine) or an RDB URL (``postgresql://``
for several machines). The lock is an ``flock`` on a file next to the journal (or sqlite database),
or a PostgreSQL advisory lock; other databases have none, and are for one process at a time.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import optuna
from optuna.storages import BaseStorage

from ..errors import PipelineError
from ..params import ParamsError
from ..tracking import project_root

ENV_STORAGE = "TTFS_OPTUNA_STORAGE"
OBJECTIVES = ("val_accuracy", "val_spikes_per_neuron")
DIRECTIONS = ("maximize", "minimize")


class StudyNotFoundError(PipelineError, LookupError):
    """--export-only or --reclaim for a study that the storage does not hold."""


@dataclass(frozen=True)
class StorageSpec:
    """Where the study lives: ``journal`` (a file path) or ``rdb`` (an SQLAlchemy URL)."""

    kind: Literal["journal", "rdb"]
    target: str  # absolute journal path, or the URL

    @property
    def dialect(self) -> str:
        return self.target.split(":", 1)[0].split("+", 1)[0] if self.kind == "rdb" else "journal"

    @property
    def lock_file_base(self) -> str | None:
        """The file next to which flock files go (journal, sqlite file); None for a server."""
        if self.kind == "journal":
            return self.target
        db = self.target.split(":///", 1)[1] if self.dialect == "sqlite" and ":///" in self.target else ""
        return db if db and db != ":memory:" else None

    @property
    def has_lock(self) -> bool:
        return self.lock_file_base is not None or self.dialect == "postgresql"

    def display(self) -> str:
        """The target with any password masked (safe for logs, MLflow and output files)."""
        if self.kind == "journal":
            return self.target
        head, sep, rest = self.target.partition("://")
        creds, at, host = rest.rpartition("@")
        if at and ":" in creds:
            creds = creds.split(":", 1)[0] + ":***"
        return f"{head}{sep}{creds}{at}{host}"


def resolve_storage(arg: str | None, experiment: str) -> StorageSpec:
    """``--storage`` > $TTFS_OPTUNA_STORAGE > <repo>/optuna/<experiment>.journal.

    A value with ``://`` is an RDB URL (``postgresql://user@host:5432/db``, ``sqlite:////abs/file.db``:
    one process only); ``file://`` or a plain path is a journal file, made absolute against the project
    root (DVC's temporary experiment copies would otherwise lose it).
    """
    value = arg or os.environ.get(ENV_STORAGE) or str(project_root() / "optuna" / f"{experiment}.journal")
    if value.startswith("file://"):
        value = value.removeprefix("file://")
    elif "://" in value:
        return StorageSpec("rdb", _with_driver(value))
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = project_root() / path
    return StorageSpec("journal", str(path))


def _with_driver(url: str) -> str:
    """``postgresql://`` -> ``postgresql+psycopg2://`` unless psycopg 3 is installed: SQLAlchemy 2.1 picks
    psycopg 3 for a bare ``postgresql://``, while this project ships psycopg2-binary."""
    if url.startswith("postgres://"):  # Heroku-style alias that SQLAlchemy no longer accepts
        url = "postgresql://" + url.removeprefix("postgres://")
    if url.startswith("postgresql://") and importlib.util.find_spec("psycopg") is None \
            and importlib.util.find_spec("psycopg2") is not None:
        return "postgresql+psycopg2://" + url.removeprefix("postgresql://")
    return url


def _lock_key(name: str) -> int:
    """A signed 64-bit advisory-lock key derived from ``name``."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


_ENGINES: dict[str, Any] = {}


@contextlib.contextmanager
def storage_lock(spec: StorageSpec, name: str) -> Iterator[None]:
    """Exclusive, storage-wide lock named ``name`` (no-op where none exists: see ``has_lock``).

    Not reentrant: a process holding it must not take it again.
    """
    base = spec.lock_file_base
    if base is not None:
        path = Path(f"{base}.{_lock_key(name) & 0xFFFFFFFF:08x}.lock")
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a+") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)  # released when the file closes, even on a crash
            yield
    elif spec.dialect == "postgresql":
        import sqlalchemy
        from sqlalchemy.pool import NullPool

        engine = _ENGINES.get(spec.target)
        if engine is None:
            engine = _ENGINES[spec.target] = sqlalchemy.create_engine(spec.target, poolclass=NullPool)
        with engine.connect() as conn:  # a session-level lock: released when this connection closes
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": _lock_key(name)})
            try:
                yield
            finally:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": _lock_key(name)})
    else:
        yield


def open_storage(spec: StorageSpec) -> BaseStorage:
    """The storage object itself (its public BaseStorage methods are used on foreign trials)."""
    if spec.kind == "journal":
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        Path(spec.target).parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(spec.target))
    if spec.dialect == "sqlite" or not spec.has_lock:
        why = "is for one process" if spec.dialect == "sqlite" else "has no lock to share the trial budget"
        print(f"warning: {spec.dialect} study storage {why}: use the journal file (one machine) or postgresql:// "
              "(several) for parallel workers", file=sys.stderr)
    with storage_lock(spec, "optuna-schema"):  # concurrent first connections race to create the tables
        return optuna.storages.RDBStorage(spec.target, engine_kwargs={"pool_pre_ping": True})


def budget_lock(spec: StorageSpec, study_name: str) -> contextlib.AbstractContextManager[None]:
    """The lock under which a study is set up, trials are counted and asked for, and trials reclaimed."""
    return storage_lock(spec, f"budget:{study_name}")


def study_exists(storage: BaseStorage, name: str) -> bool:
    try:
        storage.get_study_id_from_name(name)
    except KeyError:
        return False
    return True


def load_study(storage: BaseStorage, name: str, sampler: optuna.samplers.BaseSampler | None = None) -> optuna.Study:
    """The existing study ``name``; StudyNotFoundError (listing what the storage holds) otherwise."""
    if not study_exists(storage, name):
        names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
        raise StudyNotFoundError(f"no study {name!r} in the storage (it holds: {', '.join(names) or 'none'}); "
                                 "same params.yaml and models as the workers? --study-name picks one")
    study = optuna.load_study(study_name=name, storage=storage, sampler=sampler)
    check_directions(study)
    return study


def create_study(storage: BaseStorage, name: str, sampler: optuna.samplers.BaseSampler) -> optuna.Study:
    study = optuna.create_study(storage=storage, study_name=name, directions=list(DIRECTIONS), sampler=sampler,
                                load_if_exists=True)
    check_directions(study)
    return study


def check_directions(study: optuna.Study) -> None:
    if [d.name.lower() for d in study.directions] != list(DIRECTIONS):
        raise ParamsError(f"study {study.study_name!r} exists with directions {study.directions}, "
                          f"expected {DIRECTIONS}")
