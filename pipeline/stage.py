"""What every stage entry point shares: argument parsing, params, error reporting, device and data.

Expected failures (bad params, missing or corrupt data, divergence, a conversion that is not exact)
end the process with a one-paragraph message and a non-zero status instead of a traceback; anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import copy
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import torch

from ttfs import SNN, convert, zoo
from ttfs.train import DivergenceError, TensorBatches

from . import params as P
from .artifacts import Paths, prepared_dir, read_json
from .data import Prepared, load_prepared
from .errors import ConversionError, PipelineError  # noqa: F401 (stages/convert.py imports ConversionError from here)
from .tracking import REFERENCE, StageRun, Tracker

EXIT_PARAMS, EXIT_FAILED, EXIT_INTERRUPTED = 2, 1, 130


def run(stage: str, body: Callable[[str, P.Params], None], argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m stages.{stage}", description=body.__doc__)
    parser.add_argument("name", help="experiment (dataset for prepare) as named in params.yaml")
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    args = parser.parse_args(argv)
    try:
        body(args.name, P.load(args.params))
    except P.ParamsError as e:
        print(f"invalid params: {e}", file=sys.stderr)
        return EXIT_PARAMS
    except (PipelineError, DivergenceError, NotImplementedError) as e:
        print(f"{stage} {args.name} failed: {type(e).__name__}: {e}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print(f"{stage} {args.name} interrupted; the next run resumes from the last checkpoint", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


def torch_dtype(name: str) -> torch.dtype:
    return {"float32": torch.float32, "float64": torch.float64}[name]


class _Calibration:
    """Re-iterable float64 batches of inputs (convert() reads the first batch, then all of them)."""

    def __init__(self, x: torch.Tensor, batch_size: int, device: torch.device):
        self.x, self.batch_size, self.device = x, batch_size, device

    def __iter__(self):
        for chunk in self.x.split(self.batch_size):
            yield chunk.to(self.device, torch.float64)


@dataclass
class Experiment:
    """One experiment's params, resolved device/dtype, output paths and (lazily) its prepared data."""

    name: str
    params: P.ExperimentParams

    @classmethod
    def from_params(cls, name: str, all_params: P.Params) -> Experiment:
        return cls(name, all_params.experiment(name))

    @cached_property
    def device(self) -> torch.device:
        return P.resolve_device(self.params.device, f"experiments.{self.name}.device")

    @property
    def dtype(self) -> torch.dtype:
        return torch_dtype(self.params.dtype)

    @property
    def paths(self) -> Paths:
        return Paths(self.name)

    @cached_property
    def data(self) -> Prepared:
        return load_prepared(prepared_dir(self.params.dataset))

    def shared(self) -> dict:
        """The experiment-level keys every stage depends on (besides its own section)."""
        p = self.params
        return {"dataset": p.dataset, "seed": p.seed, "device": p.device, "dtype": p.dtype, "model": p.model}

    def stage_params(self, section: str) -> dict:
        return P.as_dict({**self.shared(), section: getattr(self.params, section)})

    def batches(self, split: str, batch_size: int, shuffle: bool, dtype: torch.dtype | None = None) -> TensorBatches:
        x, y = (self.data.train_x, self.data.train_y) if split == "train" else (self.data.test_x, self.data.test_y)
        dtype = dtype or self.dtype
        return TensorBatches(x.to(self.device, dtype), y.to(self.device), batch_size, shuffle=shuffle,
                             seed=self.params.seed, device=self.device, dtype=dtype)

    def fresh_model(self) -> torch.nn.Module:
        """The experiment's zoo model, freshly initialised from its seed (same seed, same weights)."""
        torch.manual_seed(self.params.seed)
        return zoo.create_model(self.params.model.name, in_shape=self.data.in_shape,
                                num_classes=self.data.num_classes, **self.params.model.kwargs())

    def calibrated_snn(self, relu: torch.nn.Module, samples: int | None, zeta: float, batch_size: int) -> SNN:
        """B1 SNN of ``relu`` in float64, windows (1 + zeta) X_n from the first ``samples`` training inputs."""
        x = self.data.train_x if samples is None else self.data.train_x[:samples]
        relu64 = copy.deepcopy(relu).to(self.device, torch.float64)
        return convert(relu64, _Calibration(x, batch_size, self.device), in_range=self.data.in_range, zeta=zeta,
                       dtype=torch.float64)

    def lineage(self) -> dict:
        """Input identity recorded in model files (deterministic: checksums, never run ids)."""
        return {"experiment": self.name, "dataset": self.params.dataset, "data_sha256": self.data.meta["sha256"]}

    def tags(self, role: str) -> dict:
        return {"role": role, "dataset": self.params.dataset, "model": self.params.model.name,
                "device": str(self.device)}


def reference_run(tracker: Tracker, exp: Experiment, pretrain_hash: str) -> tuple[str, dict]:
    """(run id, final metrics) of the experiment's reference ReLU run, registering it if the store lacks it.

    A fresh or different tracking store (a new MLFLOW_TRACKING_URI, a deleted run) must not leave SNN
    runs without a reference, so the pretrain outputs are logged again as a run tagged restored.
    """
    run_id = tracker.find_reference(pretrain_hash)
    if run_id is None:
        paths = exp.paths
        tags = exp.tags(REFERENCE) | {"params_hash": pretrain_hash, "restored_from": str(paths.metrics("pretrain"))}
        with tracker.run(f"pretrain@{exp.name}", exp.stage_params("pretrain"), tags) as mlrun:
            mlrun.log_metrics({f"final.{k}": v for k, v in read_json(paths.metrics("pretrain")).items()})
            mlrun.log_artifact(paths.relu, "model")
        run_id = mlrun.run_id
    metrics = tracker.client.get_run(run_id).data.metrics
    return run_id, {k.removeprefix("final."): v for k, v in metrics.items() if k.startswith("final.")}


def log_deltas(mlrun: StageRun, reference: tuple[str, dict], values: dict[str, float]) -> dict[str, float]:
    """Tag the run with its reference and log value - reference for every metric both have."""
    run_id, ref = reference
    deltas = {f"delta.{k}": v - ref[k] for k, v in values.items() if k in ref and v is not None}
    mlrun.set_tags({"reference_run_id": run_id})
    mlrun.log_metrics(deltas)
    return deltas
