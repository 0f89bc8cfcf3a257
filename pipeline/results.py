"""What every stage writes to metrics/, typed: one frozen pydantic model per result file.

The stages build these models and :meth:`StageResult.write` them; the report (and anything else that
reads a result) goes through :meth:`StageResult.read`, which turns a malformed, incomplete or foreign
file into an :class:`~pipeline.errors.ArtifactError` naming the file, the field and the command that
writes it again. Field names and nesting are those the stages have always written, so ``dvc metrics``
keeps comparing like with like; every result also carries

* ``params_hash``: the hash of the stage's params, the same value its MLflow run is tagged with
  (``tags.params_hash``), which is how the report finds that run;
* ``lineage``: what the numbers were computed from (``experiment``, ``dataset``, ``data_sha256``, and
  for every stage after pretrain the ``pretrain_params_hash`` of the ReLU reference).

Numbers are finite: a quantity that can be undefined (a relative difference to a zero scale, the loss
of a diverged network) is ``Nullable``, and a NaN or infinity given to it becomes ``null`` in the file,
as :func:`pipeline.artifacts.write_json` has always written it. A key that a stage writes only in some
configurations (``train_accuracy`` when the sweep measures the training set, the dtype check of the
converter) is ``Absent`` from the file rather than ``null`` when it has no value.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
)

from .errors import ArtifactError
from .params import DynamicsConfig

# -- value types -----------------------------------------------------------------------------------


def _finite_or_none(value: Any) -> Any:
    """NaN and infinities become None (null in the file), as pipeline.artifacts.write_json writes them."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


#: A number that may be undefined: null in the file, None here; NaN/inf given to it are stored as null.
Nullable = Annotated[float | None, BeforeValidator(_finite_or_none)]
#: A number written as the stage computed it: 4 stays 4 (a grid value of K), 0.05 stays 0.05.
Number = int | float
Count = Annotated[int, Field(ge=0)]
Fraction = Annotated[float, Field(ge=0, le=1)]
LayerKey = Annotated[str, Field(pattern=r"^layer[1-9][0-9]*$")]
Hash = Annotated[str, Field(pattern=r"^[0-9a-f]{16}$")]


def Absent(default: Any = None) -> Any:  # noqa: N802 - reads like a type in field declarations
    """A key the stage writes only when it has a value: left out of the file when None."""
    return Field(default=default, exclude_if=lambda v: v is None)


class Record(BaseModel):
    """Every result and every part of one: frozen, unknown keys refused, no NaN or infinity."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False, protected_namespaces=())


# -- the base class ----------------------------------------------------------------------------------


def lineage_digest(checksums: dict[str, str]) -> str:
    """One sha256 for a mapping of file name -> sha256 (order-free): ``data_sha256`` of a prepared dataset."""
    lines = "".join(f"{name}:{checksums[name]}\n" for name in sorted(checksums))
    return hashlib.sha256(lines.encode()).hexdigest()


PRETRAIN_LINEAGE = ("experiment", "dataset", "data_sha256")
DOWNSTREAM_LINEAGE = (*PRETRAIN_LINEAGE, "pretrain_params_hash")


class StageResult(Record):
    """One result file. Subclasses set ``stage`` (the DVC stage that writes it) and ``lineage_keys``."""

    stage: ClassVar[str]
    per_experiment: ClassVar[bool] = True
    lineage_keys: ClassVar[tuple[str, ...]] = DOWNSTREAM_LINEAGE
    filename: ClassVar[str] = ""  # default: <stage>.json under metrics/<experiment>/

    params_hash: Hash
    lineage: dict[str, str]

    @field_validator("lineage", mode="before")
    @classmethod
    def _one_digest_per_input(cls, value: Any) -> Any:
        """A per-file checksum mapping (``Prepared.meta["sha256"]`` in a model file's lineage) becomes one
        digest of it (:func:`lineage_digest`), so ``Experiment.lineage()`` can be passed as it is."""
        if isinstance(value, dict):
            return {k: lineage_digest(v) if isinstance(v, dict) else v for k, v in value.items()}
        return value

    @field_validator("lineage")
    @classmethod
    def _lineage_complete(cls, value: dict[str, str]) -> dict[str, str]:
        missing = [k for k in cls.lineage_keys if not value.get(k)]
        if missing:
            raise ValueError(f"missing {', '.join(missing)} (needs {', '.join(cls.lineage_keys)})")
        return value

    # -- where it lives and what writes it

    @classmethod
    def path(cls, experiment: str | None = None) -> Path:
        """metrics/<experiment>/<stage>.json (relative to the project root)."""
        return Path("metrics") / str(experiment) / (cls.filename or f"{cls.stage}.json")

    @classmethod
    def command(cls, experiment: str | None = None) -> str:
        """The command that writes the file again."""
        return f"dvc repro {cls.stage}@{experiment}" if cls.per_experiment else f"dvc repro {cls.stage}"

    # -- writing and reading

    def metrics(self) -> dict[str, Any]:
        """The numbers alone (no params hash, no lineage): what goes to MLflow as metrics."""
        return self.model_dump(mode="json", exclude={"params_hash", "lineage"})

    def to_json(self) -> str:
        """As pipeline.artifacts.write_json formats it: strict JSON, indent 2, trailing newline."""
        data = self.model_dump(mode="json")
        data = {k: v for k, v in data.items() if k not in ("params_hash", "lineage")} | {
            "params_hash": data["params_hash"], "lineage": data["lineage"]}  # the metrics first, as before
        return json.dumps(data, indent=2, allow_nan=False) + "\n"

    def write(self, path: str | Path) -> None:
        """Replace ``path`` atomically: a killed stage never leaves half a file."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(self.to_json(), encoding="utf-8")
        os.replace(tmp, path)

    @classmethod
    def read(cls, path: str | Path, experiment: str | None = None, root: str | Path | None = None) -> Self:
        """The result in ``path``; ArtifactError naming the file and the field if it is not one.

        ``root``: the directory ``path`` is relative to (the message names ``path`` as given).
        ``experiment`` (for the rerun command in the message) defaults to the file's directory name.
        """
        path = Path(path)
        fix = f"rerun `{cls.command(experiment or path.parent.name)}`"
        try:
            text = (Path(root or ".") / path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ArtifactError(f"{path.as_posix()}: cannot read it ({type(e).__name__}: {e}); {fix}") from e
        try:
            return cls.model_validate_json(text, strict=True)
        except ValidationError as e:
            raise ArtifactError(f"{path.as_posix()}: {describe(e)}; {fix}") from None

    @classmethod
    def read_optional(cls, path: str | Path, experiment: str | None = None,
                      root: str | Path | None = None) -> Self | None:
        """None when there is no file (the stage has not run); otherwise as :meth:`read`."""
        return cls.read(path, experiment, root) if (Path(root or ".") / path).exists() else None


def _location(loc: tuple) -> str:
    """('settings', 'jitter', '0.05', 'before', 'accuracy') -> settings.jitter[0.05].before.accuracy."""
    out = ""
    for p in loc:
        if isinstance(p, str) and _union_tag(p):
            continue  # pydantic names the member of a union it tried: not part of the file's structure
        out += f"[{p}]" if isinstance(p, int) or "." in p else (f".{p}" if out else p)
    return out or "(top level)"


def _union_tag(part: str) -> bool:
    models: set[str] = set()
    todo = [Record]
    while todo:
        cls = todo.pop()
        models.add(cls.__name__)
        todo.extend(cls.__subclasses__())
    return part in {"int", "float", "str", "bool", "none"} or "[" in part or part in models


def describe(error: ValidationError) -> str:
    """The first problem of a validation error as 'field <path>: <what is wrong>'."""
    first = error.errors()[0]
    kind, msg = first["type"], first["msg"]
    if kind == "json_invalid":
        return f"not valid JSON ({msg.removeprefix('Invalid JSON: ')})"
    if kind == "missing":
        msg = "required field is missing"
    elif kind == "extra_forbidden":
        msg = "unknown field (not written by this version of the stage)"
    elif kind == "value_error":
        msg = msg.removeprefix("Value error, ")
    more = len(error.errors()) - 1
    return f"field {_location(first['loc'])}: {msg[0].lower()}{msg[1:]}" + (
        f" (and {more} more problem{'s' if more > 1 else ''})" if more else "")


# -- pretrain ----------------------------------------------------------------------------------------


class PretrainResult(StageResult):
    """metrics/<exp>/pretrain.json: the ReLU reference every SNN stage compares itself to."""

    stage: ClassVar[str] = "pretrain"
    lineage_keys: ClassVar[tuple[str, ...]] = PRETRAIN_LINEAGE

    test_accuracy: Fraction
    test_loss: Nullable
    train_accuracy: Fraction
    train_loss: Nullable
    val_accuracy: Fraction | None  # null without a validation split
    val_loss: Nullable
    epochs: Count
    parameters: Count

    def deltas(self, values: dict[str, float | None]) -> dict[str, float]:
        """``delta.<metric>`` = value - this reference, for every metric both have (MLflow's delta metrics)."""
        reference = {"test_accuracy": self.test_accuracy, "test_loss": self.test_loss,
                     "train_accuracy": self.train_accuracy, "train_loss": self.train_loss,
                     "val_accuracy": self.val_accuracy, "val_loss": self.val_loss}
        return {f"delta.{k}": v - reference[k] for k, v in values.items()
                if k in reference and v is not None and reference[k] is not None}


# -- convert -----------------------------------------------------------------------------------------


class DtypeCheck(Record):
    """The comparison repeated in the experiment's own dtype (float32 rounding may flip near-ties)."""

    agreement: Fraction
    max_abs_logit_diff: Nullable
    max_rel_logit_diff: Nullable
    snn_accuracy: Fraction


class ConvertResult(StageResult):
    """metrics/<exp>/convert.json: the float64 exactness check of the conversion (SPEC 3.4)."""

    stage: ClassVar[str] = "convert"

    agreement: Fraction
    max_abs_logit_diff: Nullable
    max_rel_logit_diff: Nullable
    causality_violations: Count
    relu_accuracy: Fraction
    snn_accuracy: Fraction
    spikes_per_neuron: float
    latency: float
    clipped_inputs: Count
    windows: tuple[float, ...]
    float32: DtypeCheck | None = Absent()  # the key is the experiment's dtype
    float64: DtypeCheck | None = Absent()

    def in_dtype(self, dtype: str) -> DtypeCheck | None:
        return {"float32": self.float32, "float64": self.float64}[dtype]


# -- finetune ----------------------------------------------------------------------------------------


class FinetuneResult(StageResult):
    """metrics/<exp>/finetune.json: the B1 SNN after exact-gradient training."""

    stage: ClassVar[str] = "finetune"

    test_accuracy: Fraction
    test_loss: Nullable
    val_accuracy: Fraction | None  # null without a validation split
    val_loss: Nullable
    epochs: Count
    mode: Literal["converted", "scratch"]
    # the SNN against the ReLU network it maps back to (ttfs.to_relu), both in float64, on the test set
    equivalent_relu_agreement: Fraction
    equivalent_relu_max_rel_logit_diff: Nullable
    causality_violations: Count
    spikes_per_neuron: float
    latency: float
    windows: tuple[float, ...]


# -- evaluate ----------------------------------------------------------------------------------------


class EquivalentRelu(Record):
    agreement: Fraction
    max_rel_logit_diff: Nullable


class Energy(Record):
    snn_pj: float
    ann_pj: float
    ratio: Nullable
    saving: Nullable


class EnergyAssumptions(Record):
    e_synop_pj: float
    e_mac_pj: float
    first_layer_spiking: bool


class EvaluateResult(StageResult):
    """metrics/<exp>/evaluate.json: the fine-tuned SNN against the ReLU reference on the test set."""

    stage: ClassVar[str] = "evaluate"

    relu_accuracy: Fraction
    snn_accuracy: Fraction
    delta_accuracy: float
    agreement_with_reference: Fraction
    equivalent_relu: EquivalentRelu
    spikes_per_neuron: float
    spikes_per_neuron_per_layer: dict[LayerKey, float]
    hidden_neurons: Count
    causality_violations: Count
    clipped_inputs: Count
    synops_per_sample: float  # SPEC 6: every spike times its neuron's fan-out (ttfs.metrics)
    synops_per_layer: dict[LayerKey, float]
    routed_synops_per_sample: float  # pool winners only: a lower bound, not the SPEC metric
    routed_synops_per_layer: dict[LayerKey, float]
    macs_per_sample: Count
    energy_pj: Energy
    energy_assumptions: EnergyAssumptions
    latency: float
    test_samples: Count


# -- sweep -------------------------------------------------------------------------------------------

KINDS = ("jitter", "time_steps", "weight_bits", "latency_factor")


class Measure(Record):
    """pipeline.sweeps.measure on the test set; jitter: means over the noise seeds, with std and per seed."""

    accuracy: Fraction
    loss: Nullable
    spikes_per_neuron: float
    causality_violations: Number  # a mean over the seeds under jitter
    latency: float
    train_accuracy: Fraction | None = Absent()  # sweep.train_metrics
    accuracy_std: float | None = Absent()  # jitter only
    spikes_per_neuron_std: float | None = Absent()
    train_accuracy_std: float | None = Absent()
    accuracy_per_seed: tuple[float, ...] | None = Absent()


class TightWindows(Measure):
    """The exact SNN with windows tightened to a quantile of the activations (saturation only)."""

    quantile: float
    samples: Count
    windows: tuple[float, ...]


class ConversionWindows(Record):
    """The converted SNN's windows (1 + zeta) X_n and their sum: the baseline of latency reductions."""

    windows: tuple[float, ...]
    latency: float


#: sigma / Delta of a jittered window: ``input`` (when input spikes are jittered), ``layer1``, ...
WindowKey = Annotated[str, Field(pattern=r"^(input|layer[1-9][0-9]*)$")]


class DeltaSnn(Record):
    before_accuracy: float
    finetuned_accuracy: Nullable


class Setting(Record):
    """One grid value of one constraint: measured before and after fine-tuning under it."""

    value: Number
    finetune_epochs: Count
    finetune_lr: float  # SweepParams.finetune_lr_for[kind], else finetune_lr
    before: Measure
    finetuned: Measure | None  # null without fine-tuning
    finetune_train_accuracy: Nullable
    latency: float
    latency_reduction_vs_conversion: float  # conversion latency / this latency: the honest baseline
    latency_reduction_vs_finetuned: float  # against the fine-tuned SNN's kappa-inflated windows: overstated
    windows: tuple[float, ...]
    delta_snn: DeltaSnn
    causality_violations: Number
    sigma_relative_per_layer: dict[WindowKey, float] | None = Absent()  # jitter only: sigma / Delta^(n)
    time_steps_per_window: int | None = Absent()  # time_steps only: K (2^b - 1 for b time bits)

    @property
    def final(self) -> Measure:
        return self.finetuned or self.before


class PerKind(Record):
    jitter: Number | None
    time_steps: Number | None
    weight_bits: Number | None
    latency_factor: Number | None


class Settings(Record):
    """settings.<kind>.<value as written by pipeline.sweeps.fmt>."""

    jitter: dict[str, Setting]
    time_steps: dict[str, Setting]
    weight_bits: dict[str, Setting]
    latency_factor: dict[str, Setting]

    def rows(self, kind: str) -> list[Setting]:
        """The settings of one kind by grid value."""
        return sorted(getattr(self, kind).values(), key=lambda s: s.value)


class SweepResult(StageResult):
    """metrics/<exp>/sweep.json: pipeline.sweeps.assemble, one row per constraint setting."""

    stage: ClassVar[str] = "sweep"

    snn: Measure
    tight_windows: TightWindows
    conversion: ConversionWindows
    time_levels: Literal["steps", "bits"]  # what a time_steps grid value is (SweepParams.time_levels)
    jitter_inputs: bool
    finetune_epochs: Count
    jitter_seeds: Annotated[int, Field(ge=1)]
    tolerance: float
    within_tolerance: PerKind
    settings: Settings


# -- tune --------------------------------------------------------------------------------------------


class TrialCounts(Record):
    budget: Count
    total: Count
    complete: Count
    failed: Count
    excluded: Count
    running: Count


class BaselineNumbers(Record):
    val_accuracy: Nullable
    val_spikes_per_neuron: Nullable
    test_accuracy: Nullable
    test_spikes_per_neuron: Nullable


class TargetSummary(Record):
    """tune.json's <split>_target: the sparsest front trial within the allowed accuracy drop."""

    best_accuracy: float
    met: bool
    accuracy: Nullable
    spikes_per_neuron: Nullable
    l1: Nullable
    trial: int | None


class TuneResult(StageResult):
    """metrics/<exp>/tune.json: pipeline.tuning.metrics_from, the numbers of the L1 study."""

    stage: ClassVar[str] = "tune"

    trials: TrialCounts
    front_size: Count
    baseline: BaselineNumbers | None = Absent()
    val_target: TargetSummary | None = Absent()
    test_target: TargetSummary | None = Absent()


class Objective(Record):
    name: str
    direction: Literal["maximize", "minimize"]


class LogRange(Record):
    low: float
    high: float
    log: bool
    switch: str | None = Absent()


class SearchSpace(Record):
    l1: LogRange
    lr: LogRange | Literal["fixed"]


class Trial(Record):
    """pipeline.tuning.trial_record: one complete trial (``on_front`` only on the baseline record)."""

    number: Count
    baseline: bool
    params: dict[str, float | bool]
    l1: float
    lr: Nullable
    val_accuracy: Nullable
    val_spikes_per_neuron: Nullable
    test_accuracy: Nullable
    test_spikes_per_neuron: Nullable
    on_front: bool | None = Absent()


class Pick(Record):
    trial: Count
    l1: float
    lr: Nullable
    accuracy: Nullable
    spikes_per_neuron: Nullable


class TargetSplit(Record):
    best_accuracy: float
    sparsest_within_drop: Pick
    met: bool


class Target(Record):
    spikes_per_neuron: float
    accuracy_drop: float
    val: TargetSplit | None
    test: TargetSplit | None


class ParetoResult(StageResult):
    """plots/<exp>/pareto.json (tune stage): the study, its baseline, the Pareto front and the target check."""

    stage: ClassVar[str] = "tune"
    filename: ClassVar[str] = "pareto.json"

    study_name: str
    objectives: tuple[Objective, ...]
    search_space: SearchSpace
    trials: TrialCounts
    baseline: Trial | None
    front: tuple[Trial, ...]
    target: Target
    experiment: str

    @classmethod
    def path(cls, experiment: str | None = None) -> Path:
        return Path("plots") / str(experiment) / cls.filename


# -- dynamics ----------------------------------------------------------------------------------------


class DynamicsSetup(DynamicsConfig):
    """The study's settings (params.yaml ``dynamics`` without ``dataset``) and what they came to."""

    widths: list[int]  # a list: the params section validates in Python mode, where strict tuples refuse lists
    train_samples: Count
    val_samples: Count
    classes: Count
    steps_per_epoch: Count
    dtype: Literal["float64"]
    record_epochs: list[int]


class SelectionRun(Record):
    """One grid value of the learning-rate search: validation numbers after ``selection_epochs``."""

    lr: float
    diverged: bool
    val_accuracy: Fraction | None
    val_loss: Nullable
    projections: Count


class Selection(Record):
    """How one network's learning rate was chosen: on the validation split, never on test."""

    chosen_lr: float | None
    split: Literal["val"]
    runs: list[SelectionRun]


class Network(Record):
    """Final numbers of one network of the dynamics study (pipeline.dynamics.summarise).

    Every network: the chosen lr, why and when it stopped, the last record's losses and accuracies on
    the training subset, validation and test subsets. Every network but ReLU: its distance from ReLU at
    the records both have. alpha1: slope projections and B <= 0 neurons. SNNs: causality violations.
    """

    lr: float | None
    stop: Literal["converged", "stalled", "diverged", "epochs"]
    epochs: Count
    steps: Count
    records: Count
    train_accuracy: Fraction | None
    train_loss: Nullable
    val_accuracy: Fraction | None
    val_loss: Nullable
    test_accuracy: Fraction | None
    test_loss: Nullable
    initial_train_accuracy: Fraction | None
    best_train_accuracy: Fraction | None
    best_test_accuracy: Fraction | None
    first_epoch_train_accuracy_90: int | None
    first_epoch_train_accuracy_99: int | None
    common_records_with_relu: int | None = None
    records_within_gap_tolerance: int | None = None
    first_epoch_over_gap_tolerance: int | None = None
    max_train_loss_gap_to_relu: Nullable = None
    max_test_loss_gap_to_relu: Nullable = None
    max_train_accuracy_gap_to_relu: Nullable = None
    cosine_to_relu: Nullable = None
    min_cosine_to_relu: Nullable = None
    projections: int | None = None
    projected_neurons: int | None = None
    nonpositive_slopes_init: int | None = None
    nonpositive_slopes: int | None = None
    min_slope: Nullable = None
    causality_violations: int | None = None

    @model_serializer(mode="wrap")
    def _groups(self, handler: SerializerFunctionWrapHandler) -> dict:
        """The comparison with ReLU only for the other networks, the slope counts only for alpha1, the
        causality violations only for SNNs (a group's key with the value None is written as null)."""
        data = handler(self)
        groups = ((self.common_records_with_relu is None,
                   ("common_records_with_relu", "records_within_gap_tolerance", "first_epoch_over_gap_tolerance",
                    "max_train_loss_gap_to_relu", "max_test_loss_gap_to_relu",
                    "max_train_accuracy_gap_to_relu", "cosine_to_relu", "min_cosine_to_relu")),
                  (self.projections is None, ("projections", "projected_neurons", "nonpositive_slopes_init",
                                              "nonpositive_slopes", "min_slope")),
                  (self.causality_violations is None, ("causality_violations",)))
        drop = {k for absent, keys in groups if absent for k in keys}
        return {k: v for k, v in data.items() if k not in drop}


class Spectra(Record):
    """Jacobian spectra over the hidden layers, medians over samples (pipeline.dynamics.spectra_summary)."""

    product_top_singular_value: Nullable
    product_median_singular_value: Nullable
    square_product_spectral_radius: Nullable
    layer_top_singular_value: tuple[Nullable, ...]
    layer_spectral_radius: tuple[Nullable, ...]
    eigenvalues_outside_unit_circle: Nullable
    max_abs_eigenvalue: Nullable
    cumulative_top_singular_value: tuple[Nullable, ...]
    active_fraction: tuple[float, ...]
    nonpositive_slopes: tuple[int, ...]
    min_positive_slope: tuple[Nullable, ...]
    phase1_spikes: tuple[int, ...]
    samples: Count


class InitCheck(Record):
    """At initialisation B1 and alpha1-smart compute ReLU's softmax (max |log-softmax difference|)."""

    b1_max_log_softmax_diff_to_relu: float
    alpha1_smart_max_log_softmax_diff_to_relu: float


class SmartInit(Record):
    """The ReLU network that alpha1-smart forward-maps: its row sums per layer (hidden ..., readout)."""

    recentred: bool
    row_sum_bounds: list[float]
    row_sum_min: list[float]
    row_sum_max: list[float]


class DynamicsResult(StageResult):
    """metrics/dynamics.json: ReLU, B1 and alpha1 networks, each at its own validation-chosen learning rate
    (pipeline.dynamics)."""

    stage: ClassVar[str] = "dynamics"
    per_experiment: ClassVar[bool] = False
    lineage_keys: ClassVar[tuple[str, ...]] = ("dataset", "data_sha256")

    config: DynamicsSetup
    selection: dict[str, Selection]
    gap_tolerance: float
    networks: dict[str, Network]
    init_spectra: dict[str, Spectra]
    final_spectra: dict[str, Spectra]
    init_check: InitCheck
    smart_init: SmartInit

    @classmethod
    def path(cls, experiment: str | None = None) -> Path:
        return Path("metrics") / "dynamics.json"


# -- the registry --------------------------------------------------------------------------------------

#: stage name -> the model of metrics/<exp>/<stage>.json (metrics/dynamics.json for dynamics).
RESULTS: dict[str, type[StageResult]] = {
    "pretrain": PretrainResult,
    "convert": ConvertResult,
    "finetune": FinetuneResult,
    "evaluate": EvaluateResult,
    "sweep": SweepResult,
    "tune": TuneResult,
    "dynamics": DynamicsResult,
}
#: every result file, the tune stage's plots/<exp>/pareto.json included.
ARTIFACTS: dict[str, type[StageResult]] = RESULTS | {"pareto": ParetoResult}

__all__ = [
    "ARTIFACTS", "KINDS", "RESULTS", "ConvertResult", "DynamicsResult", "EvaluateResult", "FinetuneResult",
    "Nullable", "ParetoResult", "PretrainResult", "StageResult", "SweepResult", "TuneResult", "describe",
]
