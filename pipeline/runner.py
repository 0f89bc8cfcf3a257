"""The one stage runner: arguments, params, signals, error reporting and exit codes, device, tracking.

A stage is a plain function decorated with :func:`stage`; the decorator turns it into ``main(argv) ->
exit status``. Expected failures (:class:`pipeline.errors.PipelineError`, a diverged training) end
with a one-paragraph message and a non-zero status; SIGTERM and SIGINT end the MLflow run as KILLED
and keep every checkpoint; anything else is a bug and keeps its traceback.

Training stages (``distributed_ok=True``: pretrain, finetune, sweep) run unchanged under
``torchrun --nproc_per_node N``: the runner joins the process group (NCCL on CUDA, gloo on the CPU),
each rank takes its own GPU (``device: auto``/``cuda`` -> ``cuda:$LOCAL_RANK``), training is
data-parallel and exact (:mod:`ttfs.distributed`, :func:`pipeline.training.fit`), and rank 0 alone
writes results, checkpoints, plots and MLflow runs (:attr:`Experiment.main`). Without torchrun nothing
of this runs.
"""

from __future__ import annotations

import argparse
import copy
import functools
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch

from ttfs import SNN, convert, distributed, zoo
from ttfs.train import DivergenceError, TensorBatches

from . import params as P
from .artifacts import Paths, prepared_dir
from .data import Prepared, load_prepared
from .errors import EXIT_INTERRUPTED, ParamsError, PipelineError, raise_interrupt
from .results import PretrainResult, lineage_digest
from .streaming import StreamBatches, Streamed, is_streamed, load_streamed
from .threads import ThreadSetting, configure_threads
from .tracking import REFERENCE, NullRun, StageRun, Tracker, project_root, run_params

EXIT_FAILED, EXIT_PARAMS = 1, 2


@dataclass
class Context:
    """What a stage body receives: its target's name, the validated params and its extra arguments."""

    stage: str
    name: str | None
    params: P.Params
    args: argparse.Namespace

    @cached_property
    def experiment(self) -> Experiment:
        exp = self.params.experiment(self.name)
        return Experiment(self.name, exp, self.params.datasets.get(exp.dataset))


RESUMES = "its MLflow run is marked KILLED and the next run resumes from the last checkpoint"


def stage(name: str, target: str | None = "experiment",
          arguments: Callable[[argparse.ArgumentParser], None] | None = None, on_interrupt: str = RESUMES,
          distributed_ok: bool = False):
    """Decorate ``body(ctx: Context)`` into ``main(argv=None) -> int``, the stage's command line.

    ``target`` names the positional argument (``experiment``, ``dataset`` or None for whole-project
    stages); ``arguments`` adds stage-specific options to the parser; ``on_interrupt`` says what an
    interruption keeps; ``distributed_ok`` lets the stage run under torchrun (see the module docstring).
    """

    def decorate(body: Callable[[Context], Any]) -> Callable[[list[str] | None], int]:
        @functools.wraps(body)
        def main(argv: list[str] | None = None) -> int:
            parser = argparse.ArgumentParser(prog=f"python -m stages.{name}", description=body.__doc__,
                                             formatter_class=argparse.RawDescriptionHelpFormatter)
            if target:
                parser.add_argument("name", help=f"{target} as named in params.yaml")
            parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
            if arguments:
                arguments(parser)
            args = parser.parse_args(argv)
            label = f"{name} {args.name}" if target else name
            previous = signal.signal(signal.SIGTERM, raise_interrupt)
            joined = False
            try:
                params = P.load(args.params)
                if target == "dataset":
                    params.dataset(args.name)
                ctx = Context(name, getattr(args, "name", None), params, args)
                if target == "experiment":
                    params.experiment(args.name)
                if distributed.launched():
                    if not distributed_ok:
                        raise ParamsError(
                            f"stage {name} does not train and runs in one process; start it without torchrun "
                            "(only pretrain, finetune and sweep run data-parallel)")
                    spec = params.experiment(args.name).device
                    joined = distributed.init(P.resolve_device(spec, f"experiments.{args.name}.device",
                                                               distributed.local_rank()))
                if target == "experiment":
                    ctx.experiment.use_threads(name)
                body(ctx)
            except ParamsError as e:
                print(f"invalid params: {e}", file=sys.stderr)
                return EXIT_PARAMS
            except (PipelineError, DivergenceError) as e:
                print(f"{label} failed: {e}", file=sys.stderr)
                return EXIT_FAILED
            except KeyboardInterrupt as e:
                print(f"{label} interrupted ({e or 'SIGINT'}); {on_interrupt}", file=sys.stderr)
                return EXIT_INTERRUPTED
            finally:
                signal.signal(signal.SIGTERM, previous)
                if joined:
                    distributed.leave()
            return 0

        return main

    return decorate


def processes_per_machine() -> int:
    """Training processes sharing this machine's cores: ``TTFS_JOBS`` (the jobs of ``dvc queue start
    --jobs N``) times the torchrun processes per node."""
    jobs = os.environ.get("TTFS_JOBS", "").strip()
    if jobs and not (jobs.isdigit() and int(jobs) >= 1):
        raise ParamsError(f"TTFS_JOBS={jobs!r}: set it to the number of jobs sharing this machine (>= 1)")
    return int(jobs or 1) * int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


def torch_dtype(name: str) -> torch.dtype:
    return {"float32": torch.float32, "float64": torch.float64}[name]


class _Calibration:
    """Re-iterable float64 batches of inputs (convert() reads the first batch, then all of them)."""

    def __init__(self, x: torch.Tensor, batch_size: int, device: torch.device):
        self.x, self.batch_size, self.device = x, batch_size, device

    def __iter__(self):
        for chunk in self.x.split(self.batch_size):
            yield chunk.to(self.device, torch.float64)


class _StreamedCalibration:
    """:class:`_Calibration` of the first ``samples`` streamed training inputs (in index order)."""

    def __init__(self, batches: StreamBatches, samples: int | None):
        self.batches, self.samples = batches, samples

    def __iter__(self):
        left = self.samples if self.samples is not None else len(self.batches.labels)
        for x, _ in self.batches:
            if left <= 0:
                return
            yield x[:left]
            left -= len(x)


@dataclass
class Reference:
    """The experiment's reference ReLU network: its numbers (pretrain.json) and its MLflow run."""

    run_id: str
    result: PretrainResult

    def deltas(self, values: dict[str, float | None]) -> dict[str, float]:
        """``delta.<metric>`` = value - reference, for every metric both have."""
        return self.result.deltas(values)


@dataclass
class Experiment:
    """One experiment's params, resolved device/dtype, output paths, prepared data and tracking."""

    name: str
    params: P.ExperimentParams
    dataset_params: Any = None  # data.datasets.<dataset>: where a streamed dataset's images lie
    threads: ThreadSetting | None = None  # set by use_threads when a stage starts

    @cached_property
    def tracker(self) -> Tracker:
        return Tracker(self.name)

    @cached_property
    def device(self) -> torch.device:
        """The device of this process: under torchrun ``auto``/``cuda`` is the GPU of its LOCAL_RANK."""
        local = distributed.local_rank() if distributed.launched() else None
        return P.resolve_device(self.params.device, f"experiments.{self.name}.device", local)

    @property
    def main(self) -> bool:
        """Whether this process writes outputs: always, except data-parallel ranks other than 0."""
        return distributed.world()[0] == 0

    @property
    def dtype(self) -> torch.dtype:
        return torch_dtype(self.params.dtype)

    @property
    def paths(self) -> Paths:
        return Paths(self.name)

    @cached_property
    def data(self) -> Prepared | Streamed:
        """The prepared dataset: tensors in memory, or an image index streamed from its root (PLACES365)."""
        directory = prepared_dir(self.params.dataset)
        if is_streamed(directory):
            return load_streamed(directory, getattr(self.dataset_params, "root", None))
        return load_prepared(directory)

    @property
    def streamed(self) -> bool:
        return isinstance(self.data, Streamed)

    def shared(self) -> dict:
        """The experiment-level keys every stage depends on (besides its own section)."""
        p = self.params
        return {"dataset": p.dataset, "seed": p.seed, "device": p.device, "dtype": p.dtype, "model": p.model}

    def stage_params(self, section: str) -> dict:
        return P.as_dict({**self.shared(), section: getattr(self.params, section)})

    def params_hash(self, section: str) -> str:
        """The hash of a stage's params: its MLflow run's tag and its result file's ``params_hash``."""
        return P.params_hash(self.stage_params(section))

    def batches(self, split: str, batch_size: int, shuffle: bool,
                dtype: torch.dtype | None = None) -> TensorBatches | StreamBatches:
        """Batches of ``train`` (training only), ``val`` (every choice and curve) or ``test`` (reported once).

        A streamed dataset gives :class:`pipeline.streaming.StreamBatches`; shuffled training batches then
        load only this process's slice under torchrun.
        """
        dtype = dtype or self.dtype
        if self.streamed:
            rank, world = distributed.world() if split == "train" and shuffle else (0, 1)
            return StreamBatches(self.data.dataset(split), batch_size, shuffle=shuffle, seed=self.params.seed,
                                 device=self.device, dtype=dtype, workers=getattr(self.dataset_params, "workers", 0),
                                 rank=rank, world=world)
        x, y = self.data.split(split)
        return TensorBatches(x.to(self.device, dtype), y.to(self.device), batch_size, shuffle=shuffle,
                             seed=self.params.seed, device=self.device, dtype=dtype)

    def fresh_model(self) -> torch.nn.Module:
        """The experiment's zoo model, freshly initialised from its seed (same seed, same weights)."""
        torch.manual_seed(self.params.seed)
        return zoo.create_model(self.params.model.name, in_shape=self.data.in_shape,
                                num_classes=self.data.num_classes, **self.params.model.kwargs())

    def calibrated_snn(self, relu: torch.nn.Module, samples: int | None, zeta: float, batch_size: int) -> SNN:
        """B1 SNN of ``relu`` in float64, windows (1 + zeta) X_n from the first ``samples`` training inputs."""
        relu64 = copy.deepcopy(relu).to(self.device, torch.float64)
        if self.streamed:
            calibration = _StreamedCalibration(self.batches("train", batch_size, False, torch.float64), samples)
        else:
            x = self.data.train_x if samples is None else self.data.train_x[:samples]
            calibration = _Calibration(x, batch_size, self.device)
        return convert(relu64, calibration, in_range=self.data.in_range, zeta=zeta, dtype=torch.float64)

    def use_threads(self, stage: str) -> ThreadSetting:
        """Set torch's CPU threads for ``stage`` (pipeline/threads.py); its MLflow runs are tagged with them."""
        section = getattr(self.params, stage, None)
        batch_size = getattr(section, "batch_size", None) or getattr(section, "eval_batch_size", None) or 1000
        self.threads = configure_threads(self.params.model.name, batch_size, workers=processes_per_machine(),
                                         requested=self.params.threads)
        if self.main:
            print(f"{stage} {self.name}: {self.threads.intra_op} CPU thread(s) per process ({self.threads.reason})",
                  file=sys.stderr)
        return self.threads

    def lineage(self) -> dict[str, str]:
        """Input identity recorded in model files and results (deterministic: checksums, never run ids)."""
        return {"experiment": self.name, "dataset": self.params.dataset,
                "data_sha256": lineage_digest(self.data.meta["sha256"])}

    def tags(self, role: str) -> dict[str, str]:
        threads = {k: str(v) for k, v in self.threads.as_dict().items()} if self.threads else {}
        return {"role": role, "dataset": self.params.dataset, "model": self.params.model.name,
                "device": str(self.device)} | threads

    def track(self, stage: str, role: str, resume: str | None = None, **tags: str) -> StageRun | NullRun:
        """The MLflow run of ``stage`` on this experiment, tagged with its params hash (a NullRun off rank 0)."""
        if not self.main:
            return NullRun()
        stage_params = self.stage_params(stage)
        tags = self.tags(role) | {"params_hash": self.params_hash(stage), **tags}
        if distributed.world()[1] > 1:
            tags["world_size"] = str(distributed.world()[1])
        mlrun = self.tracker.run(f"{stage}@{self.name}", run_params(stage_params, stage), tags, resume=resume)
        if not mlrun.resumed:
            source = (project_root() / prepared_dir(self.params.dataset)).as_posix()
            mlrun.log_dataset(self.params.dataset, self.lineage()["data_sha256"], source)
        return mlrun

    def reference(self, pretrain_hash: str) -> Reference:
        """The reference ReLU network of this experiment: numbers from pretrain.json, run id from MLflow.

        A fresh or different tracking store (a new MLFLOW_TRACKING_URI, a deleted run) must not leave SNN
        runs without a reference, so the pretrain outputs are logged again as a run tagged restored.
        """
        paths = self.paths
        result = PretrainResult.read(paths.metrics("pretrain"), self.name)
        run_id = self.tracker.find_reference(pretrain_hash)
        if run_id is None:
            tags = self.tags(REFERENCE) | {"params_hash": pretrain_hash,
                                           "restored_from": str(paths.metrics("pretrain"))}
            with self.tracker.run(f"pretrain@{self.name}", run_params(self.stage_params("pretrain"), "pretrain"),
                                  tags) as mlrun:
                mlrun.log_metrics({f"final.{k}": v for k, v in result.metrics().items()})
                mlrun.log_headline(result.metrics())
                mlrun.log_artifact(paths.relu, "model")
            run_id = mlrun.run_id
        return Reference(run_id, result)


def link_reference(mlrun: StageRun, reference: Reference, values: dict[str, float]) -> dict[str, float]:
    """Tag the run with its reference ReLU run and log value - reference for every shared metric."""
    deltas = reference.deltas(values)
    mlrun.set_tags({"reference_run_id": reference.run_id,
                    "mlflow.note.content": f"Compared with its reference ReLU network: [run {reference.run_id}]"
                                           f"(#/experiments/{mlrun.experiment_id}/runs/{reference.run_id})."})
    mlrun.log_metrics(deltas)
    return deltas
