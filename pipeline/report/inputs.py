"""What the report reads: params.yaml (typed) and every result file (typed), once.

An absent file is None (its stage has not run); a file that is there but is not a valid result raises
:class:`~pipeline.errors.ArtifactError` naming the file and the field, and the report is not written.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .. import params as P
from ..results import (
    ConvertResult,
    DynamicsResult,
    EvaluateResult,
    FinetuneResult,
    ParetoResult,
    PretrainResult,
    StageResult,
    SweepResult,
    TuneResult,
)

STAGES = ("pretrain", "convert", "finetune", "evaluate", "sweep", "tune")


@dataclass(frozen=True)
class ExperimentInputs:
    """One experiment's params and results; a result is None when its file does not exist."""

    name: str
    params: P.ExperimentParams
    tuned: bool  # params.yaml has a tune section for it
    pretrain: PretrainResult | None
    convert: ConvertResult | None
    finetune: FinetuneResult | None
    evaluate: EvaluateResult | None
    sweep: SweepResult | None
    tune: TuneResult | None
    pareto: ParetoResult | None

    def result(self, stage: str) -> StageResult | None:
        return getattr(self, stage)

    @property
    def l1(self) -> bool:
        return self.params.pretrain.l1 > 0 or self.params.finetune.l1 > 0

    @property
    def has_results(self) -> bool:
        return any(self.result(s) is not None for s in (*STAGES, "pareto"))

    def missing_stages(self) -> list[str]:
        """Stages without a result file (tune only where params.yaml asks for it)."""
        return [s for s in STAGES if self.result(s) is None and (s != "tune" or self.tuned)]

    def params_hash(self, stage: str) -> str | None:
        """The params hash of the stage's result (tune: tune.json, else pareto.json)."""
        result = self.result(stage) or (self.pareto if stage == "tune" else None)
        return None if result is None else result.params_hash


@dataclass(frozen=True)
class Inputs:
    params: P.Params
    experiments: tuple[ExperimentInputs, ...]
    dynamics: DynamicsResult | None


def _read(model: type[StageResult], root: Path, experiment: str | None = None):
    return model.read_optional(model.path(experiment), experiment, root=root)


def load(params: P.Params, root: str | Path) -> Inputs:
    root = Path(root)
    experiments = tuple(
        ExperimentInputs(
            name=name, params=ep, tuned=name in params.tune,
            pretrain=_read(PretrainResult, root, name), convert=_read(ConvertResult, root, name),
            finetune=_read(FinetuneResult, root, name), evaluate=_read(EvaluateResult, root, name),
            sweep=_read(SweepResult, root, name), tune=_read(TuneResult, root, name),
            pareto=_read(ParetoResult, root, name))
        for name, ep in params.experiments.items())
    return Inputs(params, experiments, _read(DynamicsResult, root))
